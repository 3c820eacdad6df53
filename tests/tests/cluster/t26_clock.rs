//! Clocks: expiry is judged by cluster time, not by the clock of whichever node serves a read, and
//! a leader whose clock is far from the voters' stamps nothing. One node runs under libfaketime
//! (Debian's `faketime`: the wall clock shifted, the monotonic clock left alone).

use std::collections::BTreeMap;
use std::time::Duration;

use kvs_client::proto::GetRequest;
use kvs_client::proto::PutRequest;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::exit;
use kvs_tests::wait_until;

/// How far the shifted node's wall clock runs ahead of the others'.
const SHIFT_S: i64 = 5;

/// Options that run the node in `seat` with its wall clock `SHIFT_S` seconds ahead.
fn shifted(seat: usize) -> ClusterOptions {
    let env = vec![
        (
            "LD_PRELOAD".to_string(),
            kvs_tests::jepsen::clock::libfaketime()
                .unwrap_or_else(|e| panic!("{e}"))
                .display()
                .to_string(),
        ),
        ("FAKETIME".to_string(), format!("+{SHIFT_S}s")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ];
    ClusterOptions {
        node_env: BTreeMap::from([(seat, env)]),
        ..ClusterOptions::default()
    }
}

async fn found(cluster: &Cluster, i: usize, key: &str, serializable: bool) -> bool {
    let request = GetRequest {
        key: key.as_bytes().to_vec().into(),
        serializable,
    };
    cluster
        .kv(i)
        .get(request)
        .await
        .unwrap_or_else(|status| panic!("get on node {i}: {status}"))
        .into_inner()
        .found
}

/// Waits until node `i`'s status shows a clock offset of about `expected_s` seconds.
async fn wait_skew_shown(cluster: &Cluster, i: usize, expected_s: i64) {
    let expected_ms = expected_s * 1000;
    wait_until(
        Duration::from_secs(30),
        "the node's status shows the measured clock skew",
        || async {
            cluster
                .status(i)
                .await
                .is_ok_and(|s| (s.clock_skew_ms - expected_ms).abs() < 1000)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_clock_runs_ahead_sees_a_key_while_the_leader_serves_it() {
    let cluster = Cluster::start(3, shifted(2)).await;
    let leader = cluster.leader().await;
    assert_ne!(leader, 2, "the shifted node does not lead");
    let ttl_ms = 4_000;
    let request = PutRequest {
        key: b"ttl".to_vec().into(),
        value: b"v".to_vec().into(),
        ttl_ms: Some(ttl_ms),
        ..PutRequest::default()
    };
    cluster
        .kv(leader)
        .put(request)
        .await
        .expect("put with a TTL");
    // Within the TTL by every clock but the shifted one, which is past it.
    wait_until(
        Duration::from_secs(10),
        "the shifted follower applied the write",
        || found(&cluster, 2, "ttl", false),
    )
    .await;
    assert!(
        found(&cluster, leader, "ttl", false).await,
        "the leader still serves the key: the test ran within its TTL"
    );
    assert!(
        found(&cluster, 2, "ttl", true).await,
        "a serializable read on the shifted follower judges expiry by cluster time too"
    );
    wait_until(
        Duration::from_secs(30),
        "the key expires for the leader and then for the shifted follower",
        || async {
            !found(&cluster, leader, "ttl", false).await && !found(&cluster, 2, "ttl", false).await
        },
    )
    .await;

    // Both sides measure the skew and show it.
    wait_skew_shown(&cluster, leader, SHIFT_S).await;
    wait_skew_shown(&cluster, 2, -SHIFT_S).await;
    let text = cluster.kvsctl_at(2, ["status"]).await;
    assert!(
        text.success() && text.stdout.contains("clock skew:"),
        "kvsctl status shows the skew: {text}"
    );
    let writes = cluster.kvsctl(["put", "after", "v"]).await;
    assert!(
        writes.success(),
        "one follower far off does not stop writes: {writes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_clock_is_far_from_the_voters_refuses_to_stamp_writes() {
    // Node 0 bootstraps and leads: its clock is the one far off.
    let cluster = Cluster::start(3, shifted(0)).await;
    assert_eq!(cluster.leader().await, 0);
    wait_skew_shown(&cluster, 0, -SHIFT_S).await;
    let refused = cluster.kvsctl_at(0, ["put", "k", "v"]).await;
    assert_eq!(refused.code, Some(exit::NOT_APPLIED), "{refused}");
    assert!(
        refused.stderr.contains("clock skew"),
        "the refusal says why: {refused}"
    );
    let status = cluster.kvsctl_at(0, ["-o", "json", "status"]).await.json();
    assert!(
        status["alarms"]
            .as_array()
            .is_some_and(|a| a.contains(&serde_json::json!("CLOCK_SKEW"))),
        "the leader raises the CLOCK_SKEW alarm: {status}"
    );
    let read = cluster.kvsctl(["get", "k"]).await;
    assert!(read.success(), "reads still work: {read}");
}
