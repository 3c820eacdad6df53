//! Durability: with `--data-dir`, no acknowledged write is lost when nodes crash — one at a time
//! or all at once — and a data directory is never shared or silently misread.

use std::time::Duration;

use kvs_client::proto;
use kvs_client::proto::GetRequest;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::Writer;
use kvs_tests::binaries;
use kvs_tests::wait_until;
use rand::Rng;

fn durable() -> ClusterOptions {
    ClusterOptions {
        durable: true,
        ..ClusterOptions::default()
    }
}

/// Waits until every running node serves the same value for every acknowledged key from its
/// own state (a serializable read): the nodes have converged.
async fn assert_converged(cluster: &Cluster, keys: &[String]) {
    for i in cluster.running() {
        wait_until(
            Duration::from_secs(30),
            &format!("node {i} has every acknowledged key"),
            || async {
                let mut kv = cluster.kv(i);
                for key in keys {
                    let req = GetRequest {
                        key: key.clone().into(),
                        serializable: true,
                    };
                    match kv.get(req).await {
                        Ok(resp) if resp.get_ref().found => {}
                        _ => return false,
                    }
                }
                true
            },
        )
        .await;
    }
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
    let keys: Vec<String> = log.acked.iter().map(|(k, _)| k.clone()).collect();
    assert_converged(&cluster, &keys).await;
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
    let keys: Vec<String> = log.acked.iter().map(|(k, _)| k.clone()).collect();
    assert_converged(&cluster, &keys).await;
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

/// The written part of the node's first journal file (fjall preallocates it with zeros).
fn journal(cluster: &Cluster, i: usize) -> (std::path::PathBuf, Vec<u8>, usize) {
    let raft = cluster.data_dir(i).join("raft");
    let path = std::fs::read_dir(&raft)
        .expect("raft dir")
        .map(|e| e.expect("dir entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "jnl"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_is_cut_and_the_node_serves() {
    let mut cluster = Cluster::start(1, durable()).await;
    write_keys(&cluster, "torn", 20).await;
    cluster.kill(0);
    let (path, bytes, written) = journal(&cluster, 0);
    // A crash in the middle of the last write leaves its record half on disk.
    std::fs::write(&path, &bytes[..written - 5]).expect("tear the tail");
    cluster.restart(0).await;
    cluster.leader().await;
    let first = cluster.get(0, "torn0").await.expect("read after recovery");
    assert_eq!(first.as_deref(), Some(b"value".as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_is_refused_with_a_message_naming_it() {
    let mut cluster = Cluster::start(1, durable()).await;
    write_keys(&cluster, "flip", 20).await;
    cluster.kill(0);
    let (path, mut bytes, written) = journal(&cluster, 0);
    bytes[written / 2] ^= 0x55;
    std::fs::write(&path, &bytes).expect("flip a byte");
    let dir = cluster.data_dir(0);
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a node started on a damaged log: {stderr}"
    );
    assert!(
        stderr.contains(&dir.display().to_string()) && !stderr.contains("panicked"),
        "the refusal names the data directory and is no panic: {stderr}"
    );
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
    let sample: Vec<String> = (0..BATCHES)
        .step_by(10)
        .flat_map(|b| (0..WRITERS).map(move |w| key(w, b, b % PER_BATCH)))
        .collect();
    assert_converged(&cluster, &sample).await;
    let log = std::fs::read_to_string(cluster.node(new).log_path()).expect("node log");
    assert!(
        log.contains("installed snapshot"),
        "the new member caught up without a snapshot"
    );
}
