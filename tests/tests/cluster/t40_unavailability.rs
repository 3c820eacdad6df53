//! Unavailability: without a quorum a write fails in bounded time, and its exit code is honest —
//! 3 only when it surely was not applied, 4 when it may have been appended.

use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::KvsctlOutput;
use kvs_tests::exit;
use kvs_tests::wait_until;

use crate::MARGIN;

/// `kvsctl put k v` on node `i` with the nodes' request timeout as its overall deadline, checked
/// to return within that deadline plus a margin.
async fn put_bounded(cluster: &Cluster, i: usize) -> KvsctlOutput {
    let deadline = cluster.options().request_timeout;
    let timeout = format!("{}ms", deadline.as_millis());
    let out = cluster
        .kvsctl_at(i, ["--timeout", timeout.as_str(), "put", "k", "v"])
        .await;
    assert!(
        out.elapsed <= deadline + MARGIN,
        "took longer than {deadline:?} + {MARGIN:?}: {out}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_leader_that_lost_its_followers_fails_in_bounded_time() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
    let leader = cluster.leader().await;
    for i in (0..3).filter(|&i| i != leader) {
        cluster.kill(i);
    }
    let out = put_bounded(&cluster, leader).await;
    assert!(
        matches!(out.code, Some(exit::NOT_APPLIED | exit::UNKNOWN)),
        "expected exit 3 or 4: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_follower_whose_leader_is_gone_is_not_applied() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
    let leader = cluster.leader().await;
    let survivor = (0..3).find(|&i| i != leader).expect("a follower");
    for i in (0..3).filter(|&i| i != survivor) {
        cluster.kill(i);
    }
    // The survivor cannot forward to a dead leader nor win an election alone: nothing can have
    // been appended anywhere.
    let out = put_bounded(&cluster, survivor).await;
    assert_eq!(out.code, Some(exit::NOT_APPLIED), "{out}");
}

/// Starts three nodes and kills both followers; returns the cluster and the isolated leader.
async fn isolate_the_leader() -> (Cluster, usize) {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
    let leader = cluster.leader().await;
    for i in (0..3).filter(|&i| i != leader) {
        cluster.kill(i);
    }
    (cluster, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_steps_down() {
    let (cluster, leader) = isolate_the_leader().await;
    let own_id = cluster.node(leader).id().to_string();
    let bound = cluster.options().election_timeout * 4 + MARGIN;
    wait_until(
        bound,
        "the isolated leader stops claiming leadership",
        || async {
            cluster
                .node_info(leader)
                .await
                .is_ok_and(|info| info.leader != own_id)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_soon_refuses_writes_as_not_applied() {
    let (cluster, leader) = isolate_the_leader().await;
    // Right after the loss a write may still be appended (exit 4); once the leader knows it is
    // cut off it must refuse up front (exit 3). Never may a write succeed.
    let bound =
        cluster.options().election_timeout * 4 + cluster.options().request_timeout * 2 + MARGIN;
    wait_until(bound, "a put to the isolated leader exits 3", || async {
        let out = put_bounded(&cluster, leader).await;
        assert!(
            matches!(out.code, Some(exit::NOT_APPLIED | exit::UNKNOWN)),
            "expected exit 3 or 4: {out}"
        );
        out.code == Some(exit::NOT_APPLIED)
    })
    .await;
}
