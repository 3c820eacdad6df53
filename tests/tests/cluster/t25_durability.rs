//! Durability: with `--data-dir`, no acknowledged write is lost when nodes crash — one at a time
//! or all at once — and a data directory is never shared or silently misread.

use std::time::Duration;

use kvs_client::proto;
use kvs_client::proto::GetRequest;
use kvs_node::failpoint::Action;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::Writer;
use kvs_tests::binaries;
use kvs_tests::wait_until;
use rand::Rng;

use crate::failpoint_build;

fn durable() -> ClusterOptions {
    ClusterOptions {
        durable: true,
        ..ClusterOptions::default()
    }
}

/// Waits until every running node serves, from its own state (a serializable read), exactly the
/// acknowledged value of every key in `expected`: the nodes have converged on the writes.
async fn assert_converged(cluster: &Cluster, expected: &[(String, String)]) {
    for i in cluster.running() {
        let mut last_difference = String::new();
        let converged = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match first_difference(cluster, i, expected).await {
                    None => return,
                    Some(difference) => last_difference = difference,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(
            converged.is_ok(),
            "node {i} has not converged within 30 s: {last_difference}"
        );
    }
}

/// The first key node `i` does not serve with its expected value, said for a message.
async fn first_difference(
    cluster: &Cluster,
    i: usize,
    expected: &[(String, String)],
) -> Option<String> {
    let mut kv = cluster.kv(i);
    for (key, value) in expected {
        let req = GetRequest {
            key: key.clone().into(),
            serializable: true,
        };
        match kv.get(req).await {
            Ok(resp) if resp.get_ref().found && resp.get_ref().value == value.as_bytes() => {}
            Ok(resp) => {
                let resp = resp.into_inner();
                return Some(format!(
                    "{key}: found {} with {:?}, expected {value:?}",
                    resp.found,
                    String::from_utf8_lossy(&resp.value)
                ));
            }
            Err(status) => return Some(format!("{key}: {status}")),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_killing_all_nodes_at_once() {
    let mut cluster = Cluster::start(3, durable()).await;
    let writer = Writer::spawn(cluster.cli(), "all-at-once");
    writer.wait_acked(30, Duration::from_secs(60)).await;
    for i in 0..3 {
        cluster.kill(i);
    }
    let log = writer.stop().await;
    for i in 0..3 {
        cluster.restart(i).await;
    }
    let leader = cluster.leader().await;
    cluster.assert_writes_durable(leader, &log).await;
    assert_converged(&cluster, &log.acked).await;
}

/// How long nodes are killed under load, and how often.
const CRASH_RUN: Duration = Duration::from_secs(60);
const CRASH_EVERY: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_crashes_under_load_lose_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, durable()).await;
    let ids: Vec<String> = (0..3).map(|i| cluster.node(i).id().to_string()).collect();
    let writer = Writer::spawn(cluster.cli(), "crash");
    writer.wait_acked(10, Duration::from_secs(60)).await;
    let mut rng = rand::rng();
    let started = std::time::Instant::now();
    let mut kills = 0;
    while started.elapsed() < CRASH_RUN {
        let next_kill = tokio::time::Instant::now() + CRASH_EVERY;
        let victim = rng.random_range(0..3);
        kills += 1;
        cluster.kill(victim);
        cluster.restart(victim).await;
        assert_eq!(
            cluster.node(victim).id(),
            ids[victim],
            "a restarted durable node keeps its ID"
        );
        writer
            .wait_acked(
                writer.acked() + 5,
                cluster.options().leader_timeout() + Duration::from_secs(30),
            )
            .await;
        tokio::time::sleep_until(next_kill).await;
    }
    let log = writer.stop().await;
    eprintln!(
        "{kills} kills in {:?}, {} writes acknowledged",
        started.elapsed(),
        log.acked.len()
    );
    assert!(
        log.other.is_empty(),
        "unexpected kvsctl failures:\n{}",
        log.failures()
    );
    let leader = cluster.leader().await;
    cluster.assert_writes_durable(leader, &log).await;
    assert_converged(&cluster, &log.acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_data_dir_is_refused_at_once() {
    let cluster = Cluster::start(1, durable()).await;
    let dir = cluster.data_dir(0);
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new(&binaries().node)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", kvs_tests::free_port()))
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .await
        .expect("run kvs-node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second node on {} started: {stderr}",
        dir.display()
    );
    assert!(
        stderr.contains(&dir.display().to_string()) && stderr.contains("in use"),
        "the refusal names the data directory: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once"
    );
}

/// The written part of the node's newest journal file, the one its last writes went to (fjall
/// numbers its journals and preallocates each with zeros).
fn journal(cluster: &Cluster, i: usize) -> (std::path::PathBuf, Vec<u8>, usize) {
    let raft = cluster.data_dir(i).join("raft");
    let number = |path: &std::path::Path| -> u64 {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        stem.parse()
            .unwrap_or_else(|_| panic!("journal {} is not numbered", path.display()))
    };
    let path = std::fs::read_dir(&raft)
        .expect("raft dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .max_by_key(|p| number(p))
        .expect("a journal file");
    let bytes = std::fs::read(&path).expect("read journal");
    let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    (path, bytes, written)
}

async fn write_keys(cluster: &Cluster, prefix: &str, n: usize) {
    for k in 0..n {
        let out = cluster
            .kvsctl(["put", &format!("{prefix}{k}"), "value"])
            .await;
        assert!(out.success(), "{out}");
    }
}

/// Starts kvs-node on node `i`'s data directory (the node is stopped) and waits for it to give up.
async fn start_refused(cluster: &Cluster, i: usize) -> String {
    let dir = cluster.data_dir(i);
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(&binaries().node)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", kvs_tests::free_port()))
            .arg("--data-dir")
            .arg(&dir)
            .output(),
    )
    .await
    .expect("the node gives up instead of hanging")
    .expect("run kvs-node");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "a node started on a damaged log: {stderr}"
    );
    assert!(
        stderr.contains(&dir.display().to_string()) && !stderr.contains("panicked"),
        "the refusal names the data directory and is no panic: {stderr}"
    );
    stderr
}

/// A power cut in the middle of a write tears the journal inside an entry that was never
/// acknowledged (its fsync had not returned): the node cuts it off, starts, and serves every
/// acknowledged write; of the writes in flight, the torn one is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_unacknowledged_entry_is_cut_and_the_node_serves() {
    let options = ClusterOptions {
        durable: true,
        fault_control: true,
        ..durable()
    };
    let mut cluster = Cluster::start_with(failpoint_build().await, 1, options).await;
    write_keys(&cluster, "acked", 20).await;
    let (_, _, acked_bytes) = journal(&cluster, 0);

    // From now on appends reach the journal file but their fsync never returns: nothing more is
    // acknowledged. Values large enough to leave the journal's write buffer.
    cluster.arm_failpoint(0, "log-fsync", Action::Stall(60_000));
    assert_eq!(
        cluster.in_force_or_exited(0).await,
        None,
        "the stall is armed"
    );
    // Random letters: the log compresses what it stores, and these stay large.
    // (Under the 128 KiB a single command-line argument may hold.)
    const VALUE_BYTES: usize = 100 * 1024;
    let value = || -> String {
        rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(VALUE_BYTES)
            .map(char::from)
            .collect()
    };
    let mut in_flight = Vec::new();
    for k in 0..4 {
        let cli = cluster.cli();
        let (key, value) = (format!("unacked{k}"), value());
        in_flight.push(tokio::spawn(async move {
            cli.run(["--timeout", "60s", "put", key.as_str(), value.as_str()])
                .await
        }));
        // One at a time, so the journal holds them in this order.
        let grown = acked_bytes + (k + 1) * VALUE_BYTES / 2;
        wait_until(
            Duration::from_secs(30),
            &format!("unacked{k} reaches the journal file"),
            || async { journal(&cluster, 0).2 > grown },
        )
        .await;
    }
    cluster.kill(0);
    for put in in_flight {
        let out = put.await.expect("kvsctl task");
        assert!(
            !out.success(),
            "a write whose fsync never returned was acknowledged: {out}"
        );
    }

    let (path, bytes, written) = journal(&cluster, 0);
    std::fs::write(&path, &bytes[..written - VALUE_BYTES / 4]).expect("tear the last entry");
    cluster.heal();
    cluster.restart(0).await;
    cluster.leader().await;
    for k in 0..20 {
        let value = cluster.get(0, format!("acked{k}")).await.expect("read");
        assert_eq!(value.as_deref(), Some(b"value".as_slice()), "acked{k}");
    }
    let mut kept = Vec::new();
    for k in 0..4 {
        kept.push(
            cluster
                .get(0, format!("unacked{k}"))
                .await
                .expect("read")
                .is_some(),
        );
    }
    assert_eq!(
        kept,
        [true, true, true, false],
        "whole entries after the last acknowledged one are kept, the torn one is lost"
    );
}

/// A journal cut short below the watermark lost entries that were acknowledged: the node refuses
/// to start instead of serving a past the clients were told is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_below_its_watermark_is_refused() {
    let mut cluster = Cluster::start(1, durable()).await;
    write_keys(&cluster, "cut", 20).await;
    cluster.kill(0);
    let (path, bytes, written) = journal(&cluster, 0);
    std::fs::write(&path, &bytes[..written / 2]).expect("cut the journal");
    let stderr = start_refused(&cluster, 0).await;
    assert!(
        stderr.contains("lost acknowledged entries"),
        "the watermark check refuses it: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_is_refused_with_a_message_naming_it() {
    let mut cluster = Cluster::start(1, durable()).await;
    write_keys(&cluster, "flip", 20).await;
    cluster.kill(0);
    let (path, mut bytes, written) = journal(&cluster, 0);
    bytes[written / 2] ^= 0x55;
    std::fs::write(&path, &bytes).expect("flip a byte");
    start_refused(&cluster, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_after_compactions_catches_up_from_a_snapshot() {
    const WRITERS: usize = 4;
    const BATCHES: usize = 250;
    const PER_BATCH: usize = 100;
    const KEYS: u64 = (WRITERS * BATCHES * PER_BATCH) as u64;
    let options = ClusterOptions {
        durable: true,
        snapshot_every: Some(100),
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(3, options).await;
    let key = |w: usize, b: usize, k: usize| format!("snap-{w}-{b}-{k}");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut kv = cluster.kv(w % 3);
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    let ops = (0..PER_BATCH)
                        .map(|k| proto::Op {
                            op: Some(proto::op::Op::Put(proto::PutOp {
                                key: key(w, b, k).into(),
                                value: format!("{b}-{k}").into(),
                                ..Default::default()
                            })),
                        })
                        .collect();
                    let batch = proto::BatchRequest {
                        ops,
                        ..Default::default()
                    };
                    kv.batch(batch).await.expect("batch");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let new = cluster.add_node().await;
    wait_until(
        Duration::from_secs(60),
        &format!("the new member holds all {KEYS} keys"),
        || async {
            cluster
                .status(new)
                .await
                .is_ok_and(|status| status.keys == KEYS)
        },
    )
    .await;
    let sample: Vec<(String, String)> = (0..BATCHES)
        .step_by(10)
        .flat_map(|b| {
            let k = b % PER_BATCH;
            (0..WRITERS).map(move |w| (key(w, b, k), format!("{b}-{k}")))
        })
        .collect();
    assert_converged(&cluster, &sample).await;
    let log = std::fs::read_to_string(cluster.node(new).log_path()).expect("node log");
    assert!(
        log.contains("installed snapshot"),
        "the new member caught up without a snapshot"
    );
}
