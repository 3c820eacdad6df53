//! The RESP face, driven by what Redis users already have: raw RESP, `redis-cli` and the `redis`
//! crate. The differential test runs one script against a real `redis-server` and against kvs
//! (through a follower and through the leader) and compares the replies byte for byte.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::RawResp;
use kvs_tests::RedisServer;
use kvs_tests::array_elements;
use kvs_tests::holds_for;
use kvs_tests::multibulk;
use kvs_tests::wait_until;
use tokio::io::AsyncWriteExt;

use crate::MARGIN;
use crate::other_than;

fn resp_options() -> ClusterOptions {
    ClusterOptions {
        resp: true,
        resp_allow_flush: true,
        ..ClusterOptions::default()
    }
}

fn resp_address(cluster: &Cluster, i: usize) -> String {
    cluster
        .node(i)
        .resp_address()
        .expect("the cluster serves RESP")
}

/// The commands every target runs, in order; the first empties the database.
const SCRIPT: &[&[&str]] = &[
    &["FLUSHALL"],
    &["PING"],
    &["ping", "hello"],
    &["ECHO", "hi there"],
    &["SELECT", "0"],
    &["GET", "missing"],
    &["SET", "k1", "v1"],
    &["GET", "k1"],
    &["SET", "k1", "v2", "XX", "GET"],
    &["SET", "k1", "v3", "NX"],
    &["SET", "k1", "v3", "nx", "get"],
    &["SET", "new", "v", "NX", "GET"],
    &["GET", "new"],
    &["SET", "new2", "v", "XX"],
    &["SET", "new2", "v", "XX", "GET"],
    &["SET", "k1", "v", "EX", "100"],
    &["TTL", "k1"],
    &["SET", "k1", "v4", "KEEPTTL"],
    &["TTL", "k1"],
    &["SET", "k1", "v", "PX", "100000", "KEEPTTL"],
    &["SET", "k1", "v", "EX", "1", "EX", "100"],
    &["SET", "k1", "v", "EX", "0"],
    &["SET", "k1", "v", "PX", "-1"],
    &["SET", "k1", "v", "EX", "abc"],
    &["SET", "k1", "v", "EX"],
    &["SET", "k1", "v", "NX", "XX"],
    &["SET", "k1", "v", "BOGUS"],
    &["SET", "k1", "v", "EX", "9223372036854775807"],
    &["SET", "past", "v", "EXAT", "1"],
    &["GET", "past"],
    &["SET", "k1", "v5", "PXAT", "4102444800000"],
    &["GET", "k1"],
    &["PERSIST", "k1"],
    &["PERSIST", "k1"],
    &["PERSIST", "missing"],
    &["TTL", "k1"],
    &["PTTL", "k1"],
    &["TTL", "missing"],
    &["PTTL", "missing"],
    &["SETNX", "k2", "a"],
    &["SETNX", "k2", "b"],
    &["GETSET", "k2", "c"],
    &["GETSET", "k3", "x"],
    &["GETDEL", "k3"],
    &["GETDEL", "k3"],
    &["APPEND", "k4", "hello"],
    &["APPEND", "k4", " world"],
    &["STRLEN", "k4"],
    &["STRLEN", "missing"],
    &["INCR", "n"],
    &["INCRBY", "n", "10"],
    &["DECR", "n"],
    &["DECRBY", "n", "20"],
    &["INCRBY", "n", "abc"],
    &["INCRBY", "n", "1.5"],
    &["INCR", "k4"],
    &["SET", "big", "9223372036854775807"],
    &["INCR", "big"],
    &["DECRBY", "n", "-9223372036854775808"],
    &["SET", "spaced", " 1"],
    &["INCR", "spaced"],
    &["MSET", "a", "1", "b", "2", "c", "3"],
    &["MSET", "a", "1", "b"],
    &["MGET", "a", "b", "missing", "c"],
    &["MSETNX", "a", "9", "z", "9"],
    &["GET", "z"],
    &["MSETNX", "y", "1", "z", "2"],
    &["EXISTS", "a", "b", "missing", "a"],
    &["DEL", "a", "missing", "a"],
    &["UNLINK", "b", "c"],
    &["TYPE", "y"],
    &["TYPE", "missing"],
    &["EXPIRE", "y", "100"],
    &["TTL", "y"],
    &["EXPIRE", "missing", "100"],
    &["PEXPIRE", "y", "200000"],
    &["TTL", "y"],
    &["EXPIREAT", "y", "4102444800"],
    &["EXPIRE", "y", "-1"],
    &["EXISTS", "y"],
    &["EXPIRE", "z", "abc"],
    &["EXPIRE", "z", "10", "BOGUS"],
    &["EXPIRE", "z", "9223372036854775807"],
    &["PEXPIREAT", "z", "0"],
    &["EXISTS", "z"],
    &["SET", "key:1", "a"],
    &["SET", "key:2", "b"],
    &["SET", "other", "c"],
    &["DBSIZE"],
    &["KEYS", "*"],
    &["KEYS", "key:?"],
    &["KEYS", "*[0-9]"],
    &["KEYS", "nomatch*"],
    &["SCAN", "0", "COUNT", "1000"],
    &["SCAN", "0", "MATCH", "key:*", "COUNT", "1000"],
    &["SCAN", "abc"],
    &["SCAN", "0", "COUNT", "0"],
    &["SCAN", "0", "COUNT"],
    &["GET"],
    &["GET", "a", "b"],
    &["SET", "k"],
    &["MGET"],
    &["DEL"],
    &["TTL"],
    &["FOO"],
    &["foo", "a", "b"],
    &["CLIENT", "SETNAME", "myname"],
    &["CLIENT", "GETNAME"],
    &["CLIENT", "SETNAME", "bad name"],
    &["CLIENT"],
    &["CLIENT", "FOO"],
    &["CLIENT", "GETNAME", "x"],
    // A node without --auth-file answers AUTH as a redis-server without a password does.
    &["AUTH", "pw"],
    &["AUTH", "default", "pw"],
    &["AUTH", "a", "b", "c"],
    &["AUTH"],
    &["ECHO"],
    &["PING", "a", "b"],
    &["SELECT", "x"],
    &["FLUSHDB", "bogus"],
    &["FLUSHDB"],
    &["DBSIZE"],
    &["QUIT"],
];

/// Runs [`SCRIPT`] on a fresh connection to `address`, one request at a time; replies of
/// KEYS and SCAN are put in a canonical order (their order is unspecified in Redis too).
async fn run_script(address: &str) -> Vec<Vec<u8>> {
    let mut conn = RawResp::connect(address).await;
    let mut replies = Vec::new();
    for command in SCRIPT {
        let reply = conn.command(command).await;
        replies.push(canonical(command[0], reply));
    }
    replies
}

fn canonical(command: &str, reply: Vec<u8>) -> Vec<u8> {
    let sorted = |reply: &[u8]| {
        let mut keys = array_elements(reply).expect("an array reply");
        keys.sort();
        let mut out = format!("*{}\r\n", keys.len()).into_bytes();
        keys.iter().for_each(|k| out.extend_from_slice(k));
        out
    };
    match command.to_ascii_uppercase().as_str() {
        "KEYS" => sorted(&reply),
        "SCAN" if reply.starts_with(b"*2\r\n") => {
            let parts = array_elements(&reply).expect("a two-element array");
            let mut out = b"*2\r\n".to_vec();
            out.extend_from_slice(&parts[0]);
            out.extend_from_slice(&sorted(&parts[1]));
            out
        }
        _ => reply,
    }
}

fn show(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).escape_debug().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_replies_as_redis_server_does_on_a_follower_and_on_the_leader() {
    let cluster = Cluster::start(3, resp_options()).await;
    let redis = RedisServer::start().await;
    let leader = cluster.leader().await;
    let follower = other_than(&cluster, leader);

    let expected = run_script(&redis.address()).await;
    for (role, i) in [("follower", follower), ("leader", leader)] {
        let got = run_script(&resp_address(&cluster, i)).await;
        let differences: Vec<String> = SCRIPT
            .iter()
            .zip(expected.iter().zip(&got))
            .filter(|(_, (want, got))| want != got)
            .map(|(command, (want, got))| {
                format!(
                    "{command:?}\n    redis: {}\n    kvs:   {}",
                    show(want),
                    show(got)
                )
            })
            .collect();
        assert!(
            differences.is_empty(),
            "kvs through the {role} differs from redis-server:\n{}",
            differences.join("\n")
        );
    }
}

/// The script as `redis-cli` reads it from a pipe: one command per line, each argument quoted.
fn cli_script() -> String {
    SCRIPT
        .iter()
        .filter(|c| !matches!(c[0], "KEYS" | "SCAN" | "QUIT"))
        .map(|command| {
            let args: Vec<String> = command
                .iter()
                .map(|a| format!("\"{}\"", a.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            args.join(" ") + "\n"
        })
        .collect()
}

async fn redis_cli(port: u16, script: &str) -> String {
    let mut child = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run redis-cli (apt-get install redis-tools)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(script.as_bytes())
        .await
        .expect("feed redis-cli");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("redis-cli finishes")
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("HOST:PORT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_the_redis_crate_work_unchanged() {
    let cluster = Cluster::start(3, resp_options()).await;
    let redis = RedisServer::start().await;
    let leader = cluster.leader().await;
    let follower = other_than(&cluster, leader);
    let kvs = resp_address(&cluster, follower);

    let script = cli_script();
    let want = redis_cli(redis.port(), &script).await;
    let got = redis_cli(port_of(&kvs), &script).await;
    let lines = want.lines().zip(got.lines());
    for (n, (want, got)) in lines.enumerate() {
        assert_eq!(got, want, "redis-cli output line {n} differs");
    }
    assert_eq!(got.lines().count(), want.lines().count(), "kvs:\n{got}");

    // Commands exempt from byte equality still answer in the shape clients expect.
    let info = redis_cli(port_of(&kvs), "INFO replication\n").await;
    assert!(
        info.contains("role:slave") && info.contains("kvs_leader:"),
        "{info}"
    );
    let mut conn = RawResp::connect(&kvs).await;
    assert!(conn.command(&["COMMAND", "COUNT"]).await.starts_with(b":"));
    assert!(conn.command(&["HELLO", "2"]).await.starts_with(b"*14\r\n"));
    assert_eq!(
        conn.command(&["HELLO", "3"]).await,
        b"-NOPROTO unsupported protocol version\r\n"
    );
    assert_eq!(conn.command(&["WAIT", "1", "100"]).await, b":1\r\n");
    assert_eq!(conn.command(&["READONLY"]).await, b"+OK\r\n");
    assert!(conn.command(&["CLIENT", "ID"]).await.starts_with(b":"));

    // The redis crate, as an application would use it.
    let url = format!("redis://{kvs}/");
    let values = tokio::task::spawn_blocking(move || -> redis::RedisResult<_> {
        let client = redis::Client::open(url)?;
        let mut con = client.get_connection()?;
        redis::cmd("SET")
            .arg("lib")
            .arg("one")
            .query::<()>(&mut con)?;
        let (a, b, n): (String, Option<String>, i64) = redis::pipe()
            .cmd("GET")
            .arg("lib")
            .cmd("GET")
            .arg("absent")
            .cmd("INCRBY")
            .arg("libcount")
            .arg(5)
            .query(&mut con)?;
        let err = redis::cmd("INCR").arg("lib").query::<i64>(&mut con);
        Ok((a, b, n, err.map_err(|e| e.to_string())))
    })
    .await
    .expect("the client thread")
    .expect("the redis crate talks to kvs");
    assert_eq!((values.0.as_str(), values.1, values.2), ("one", None, 5));
    assert!(
        values
            .3
            .is_err_and(|e| e.contains("value is not an integer or out of range")),
        "INCR of a non-integer is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_clients_on_every_node_see_linearizable_results() {
    const PER_CLIENT: usize = 60;
    const PIPELINE: usize = 20;
    let cluster = Cluster::start(3, resp_options()).await;
    cluster.leader().await;
    let addresses: Vec<String> = (0..cluster.len())
        .map(|i| resp_address(&cluster, i))
        .collect();

    // Concurrent pipelined INCRs from one client per node: each sees a distinct value, and
    // together they see exactly 1..=total.
    let clients = addresses.iter().map(|address| {
        let url = format!("redis://{address}/");
        tokio::task::spawn_blocking(move || -> redis::RedisResult<Vec<i64>> {
            let mut con = redis::Client::open(url)?.get_connection()?;
            let mut seen = Vec::new();
            for _ in 0..PER_CLIENT / PIPELINE {
                let mut pipe = redis::pipe();
                for _ in 0..PIPELINE {
                    pipe.cmd("INCR").arg("counter");
                }
                seen.extend(pipe.query::<Vec<i64>>(&mut con)?);
            }
            Ok(seen)
        })
    });
    let mut all = Vec::new();
    for client in futures::future::join_all(clients).await {
        let seen = client.expect("client thread").expect("INCRs succeed");
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "one client's increments are seen in its order: {seen:?}"
        );
        all.extend(seen);
    }
    let total = (PER_CLIENT * addresses.len()) as i64;
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(
        distinct,
        (1..=total).collect(),
        "every INCR saw a distinct count"
    );

    // After the acknowledgements, every node reads the final count.
    for address in &addresses {
        let mut conn = RawResp::connect(address).await;
        assert_eq!(
            conn.command(&["GET", "counter"]).await,
            format!("${}\r\n{total}\r\n", total.to_string().len()).into_bytes(),
            "read on {address}"
        );
    }

    // A write acknowledged by one node is seen at once by a read on another.
    let mut writer = RawResp::connect(&addresses[0]).await;
    let mut readers = Vec::new();
    for address in &addresses[1..] {
        readers.push(RawResp::connect(address).await);
    }
    for round in 0..10 {
        let value = format!("v{round}");
        assert_eq!(writer.command(&["SET", "reg", &value]).await, b"+OK\r\n");
        for reader in &mut readers {
            let read = reader.command(&["GET", "reg"]).await;
            assert_eq!(
                read,
                multibulk_value(&value),
                "a stale read after round {round}"
            );
        }
    }

    // Pipelining on one connection keeps request order, writes and reads mixed.
    let mut conn = RawResp::connect(&addresses[1]).await;
    let mut pipelined = Vec::new();
    for i in 0..50 {
        pipelined.extend(multibulk(&["SET", "p", &i.to_string()]));
        pipelined.extend(multibulk(&["GET", "p"]));
    }
    conn.send(&pipelined).await;
    for i in 0..50 {
        assert_eq!(conn.reply().await, b"+OK\r\n");
        assert_eq!(conn.reply().await, multibulk_value(&i.to_string()));
    }
}

fn multibulk_value(value: &str) -> Vec<u8> {
    format!("${}\r\n{value}\r\n", value.len()).into_bytes()
}

/// DBSIZE as node `address` holds it locally (READONLY), without a quorum round trip.
async fn local_dbsize(address: &str) -> Vec<u8> {
    let mut conn = RawResp::connect(address).await;
    conn.command(&["READONLY"]).await;
    conn.command(&["DBSIZE"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_on_every_replica_and_across_a_leader_failover() {
    let mut cluster = Cluster::start(3, resp_options()).await;
    let leader = cluster.leader().await;
    let addresses: Vec<String> = (0..cluster.len())
        .map(|i| resp_address(&cluster, i))
        .collect();
    let mut conn = RawResp::connect(&addresses[leader]).await;
    assert_eq!(
        conn.command(&["SET", "long", "v", "EX", "300"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        conn.command(&["SET", "short", "v", "PX", "1500"]).await,
        b"+OK\r\n"
    );
    for address in &addresses {
        let mut reader = RawResp::connect(address).await;
        assert_eq!(reader.command(&["GET", "short"]).await, b"$1\r\nv\r\n");
    }
    let expiry = Duration::from_millis(1500) + MARGIN;
    for address in &addresses {
        wait_until(expiry, &format!("short expires on {address}"), || async {
            let mut reader = RawResp::connect(address).await;
            reader.command(&["GET", "short"]).await == b"$-1\r\n"
        })
        .await;
    }
    // The leader purges it with a replicated delete: every replica's own state drops it.
    for address in &addresses {
        wait_until(MARGIN, &format!("short is purged on {address}"), || async {
            local_dbsize(address).await == b":1\r\n"
        })
        .await;
    }

    assert_eq!(
        conn.command(&["SET", "fail", "v", "PX", "3000"]).await,
        b"+OK\r\n"
    );
    cluster.kill(leader);
    let new_leader = cluster.leader().await;
    let survivors: Vec<&String> = cluster
        .running()
        .into_iter()
        .map(|i| &addresses[i])
        .collect();
    for address in &survivors {
        let mut reader = RawResp::connect(address).await;
        let ttl = reader.command(&["TTL", "long"]).await;
        let ttl: i64 = String::from_utf8_lossy(&ttl[1..ttl.len() - 2])
            .parse()
            .expect("an integer TTL");
        assert!(
            (250..=300).contains(&ttl),
            "long keeps its TTL on {address}: {ttl}"
        );
    }
    for address in &survivors {
        wait_until(
            expiry + Duration::from_secs(2),
            &format!("fail expires on {address}"),
            || async {
                let mut reader = RawResp::connect(address).await;
                reader.command(&["GET", "fail"]).await == b"$-1\r\n"
            },
        )
        .await;
    }
    holds_for(
        Duration::from_secs(1),
        "an expired key stays expired after failover",
        || async {
            for address in &survivors {
                let mut reader = RawResp::connect(address).await;
                if reader.command(&["GET", "fail"]).await != b"$-1\r\n" {
                    return false;
                }
            }
            true
        },
    )
    .await;
    for address in &survivors {
        wait_until(
            MARGIN,
            &format!("the new leader purges fail on {address}"),
            || async { local_dbsize(address).await == b":1\r\n" },
        )
        .await;
    }
    assert!(cluster.node(new_leader).is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_resp_gets_an_error_and_a_close_never_a_crash_or_a_hang() {
    let cluster = Cluster::start(
        1,
        ClusterOptions {
            resp: true,
            ..ClusterOptions::default()
        },
    )
    .await;
    let redis = RedisServer::start().await;
    let kvs = resp_address(&cluster, 0);

    // Where Redis has words for the error, kvs uses the same ones.
    let mut too_long_inline = vec![b'a'; 70 * 1024];
    too_long_inline.push(b' ');
    let shared: Vec<Vec<u8>> = vec![
        b"*abc\r\n".to_vec(),
        b"*1\r\n+PING\r\n".to_vec(),
        b"*1\r\n$-5\r\n".to_vec(),
        b"*1\r\n$999999999999\r\n".to_vec(),
        b"SET \"abc\r\n".to_vec(),
        b"SET \"a\"b c\r\n".to_vec(),
        b"*1\r\n$4\r\nPING\r\n*2\r\n:1\r\n".to_vec(),
        too_long_inline,
    ];
    for bytes in &shared {
        let mut want = RawResp::connect(&redis.address()).await;
        want.send(bytes).await;
        let want = want.until_closed().await;
        let mut got = RawResp::connect(&kvs).await;
        got.send(bytes).await;
        let got = got.until_closed().await;
        assert_eq!(
            show(&got),
            show(&want),
            "for {:?}",
            show(&bytes[..bytes.len().min(40)])
        );
    }

    // A bulk larger than any value kvs accepts is refused before it is sent in full.
    let mut conn = RawResp::connect(&kvs).await;
    conn.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$200000000\r\n")
        .await;
    assert_eq!(
        conn.until_closed().await,
        b"-ERR Protocol error: invalid bulk length\r\n"
    );

    // A truncated request followed by a close is dropped without a reply.
    let mut conn = RawResp::connect(&kvs).await;
    conn.send(b"*2\r\n$3\r\nGET\r\n$5\r\nab").await;
    conn.shutdown_write().await;
    assert_eq!(conn.until_closed().await, b"");

    // Garbage of every kind: each connection ends, and the node keeps serving.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..100 {
        let mut garbage = Vec::new();
        for _ in 0..(round % 40 + 1) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let byte = [
                b'*',
                b'$',
                b'\r',
                b'\n',
                b'1',
                b'-',
                b'"',
                b'a',
                b' ',
                (seed >> 8) as u8,
            ][(seed % 10) as usize];
            garbage.push(byte);
        }
        let mut conn = RawResp::connect(&kvs).await;
        conn.send(&garbage).await;
        conn.shutdown_write().await;
        conn.until_closed().await;
    }
    let mut conn = RawResp::connect(&kvs).await;
    assert_eq!(conn.command(&["PING"]).await, b"+PONG\r\n");

    // Without --resp-allow-flush the keyspace cannot be flushed.
    let refused = conn.command(&["FLUSHALL"]).await;
    assert!(
        refused.starts_with(b"-ERR FLUSHALL is disabled"),
        "{}",
        show(&refused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_stop_at_the_value_limit_and_snapshots_still_build_on_every_node() {
    const LIMIT: usize = 1024 * 1024;
    let cluster = Cluster::start(
        3,
        ClusterOptions {
            snapshot_every: Some(10),
            max_value_bytes: Some(LIMIT),
            ..resp_options()
        },
    )
    .await;
    let leader = cluster.leader().await;
    let mut conn = RawResp::connect(&resp_address(&cluster, other_than(&cluster, leader))).await;
    assert_eq!(conn.command(&["SET", "big", ""]).await, b"+OK\r\n");
    let chunk = "x".repeat(900 * 1024);
    assert_eq!(
        conn.command(&["APPEND", "big", chunk.as_str()]).await,
        format!(":{}\r\n", chunk.len()).into_bytes()
    );
    assert_eq!(
        conn.command(&["APPEND", "big", chunk.as_str()]).await,
        b"-ERR string exceeds maximum allowed size\r\n"
    );
    assert_eq!(
        conn.command(&["APPEND", "big", chunk.as_str()]).await,
        b"-ERR string exceeds maximum allowed size\r\n"
    );
    assert_eq!(
        conn.command(&["STRLEN", "big"]).await,
        format!(":{}\r\n", chunk.len()).into_bytes(),
        "a refused append changes nothing"
    );
    // Enough further entries for every node to build a snapshot holding the value.
    for i in 0..30 {
        assert_eq!(
            conn.command(&["SET", &format!("k{i}"), "v"]).await,
            b"+OK\r\n"
        );
    }
    for i in 0..cluster.len() {
        wait_until(
            MARGIN * 4,
            &format!("node {i} builds a snapshot after the appends"),
            || async {
                std::fs::read_to_string(cluster.node(i).log_path())
                    .is_ok_and(|log| log.contains("built snapshot"))
            },
        )
        .await;
    }
    for i in 0..cluster.len() {
        assert!(cluster.node(i).is_running(), "node {i} is still running");
        let status = cluster.status(i).await.expect("status");
        assert_eq!(status.keys, 31, "node {i}: {status:?}");
        let mut reader = RawResp::connect(&resp_address(&cluster, i)).await;
        assert_eq!(
            reader.command(&["STRLEN", "big"]).await,
            format!(":{}\r\n", chunk.len()).into_bytes()
        );
    }
}

/// The most memory the node's process ever held (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_past_the_limit_closes_the_connection_and_memory_stays_bounded() {
    let cluster = Cluster::start(
        1,
        ClusterOptions {
            resp: true,
            ..ClusterOptions::default()
        },
    )
    .await;
    let address = resp_address(&cluster, 0);
    let mut conn = RawResp::connect(&address).await;
    let value = "x".repeat(1024 * 1024);
    assert_eq!(
        conn.command(&["SET", "big", value.as_str()]).await,
        b"+OK\r\n"
    );
    // About 2 GiB of reply, eight times the default reply limit.
    let mut mget = vec!["MGET"];
    mget.extend(std::iter::repeat_n("big", 2000));
    conn.send_command(&mget).await;
    let reply = conn.until_closed().await;
    let text = String::from_utf8_lossy(&reply[..reply.len().min(300)]).into_owned();
    assert!(
        text.starts_with("-ERR reply of ")
            && text.ends_with("(--max-reply-bytes); closing the connection\r\n"),
        "{text}"
    );
    let peak = peak_rss_kib(cluster.node(0).pid());
    assert!(peak < 1024 * 1024, "the node held {peak} KiB at its peak");
    let mut again = RawResp::connect(&address).await;
    assert_eq!(again.command(&["STRLEN", "big"]).await, b":1048576\r\n");
    assert_eq!(again.command(&["KEYS", "*"]).await, b"*1\r\n$3\r\nbig\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_client_is_disconnected_after_the_request_timeout() {
    use tokio::io::AsyncReadExt;
    const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
    let cluster = Cluster::start(
        1,
        ClusterOptions {
            resp: true,
            resp_request_timeout: Some(REQUEST_TIMEOUT),
            ..ClusterOptions::default()
        },
    )
    .await;
    let address = resp_address(&cluster, 0);
    let mut conn = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    // One byte every 100 ms: far more often than the idle timeout, and the request would take
    // many request timeouts to arrive.
    let request = multibulk(&["SET", "k", &"v".repeat(200)]);
    let mut closed = false;
    for byte in &request[..request.len() - 1] {
        if conn.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!("unexpected reply {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    assert!(
        closed,
        "the connection outlived a request trickled for 20 s"
    );
    let mut fresh = RawResp::connect(&address).await;
    assert_eq!(fresh.command(&["PING"]).await, b"+PONG\r\n");
}
