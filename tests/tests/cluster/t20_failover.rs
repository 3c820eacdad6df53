//! Failover: when the leader dies, a new one is elected, writes resume, and nothing that was
//! acknowledged is lost.

use std::time::Duration;

use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::Writer;
use kvs_tests::wait_until;

use crate::term;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_sigkill_of_the_leader() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
    let old = cluster.leader().await;
    let writer = Writer::spawn(cluster.cli(), "failover");
    writer.wait_acked(10, Duration::from_secs(60)).await;
    let old_term = term(&cluster, old).await;

    cluster.kill(old);
    let new = cluster.leader().await;
    assert!(
        term(&cluster, new).await > old_term,
        "the survivors elected a leader in a new term"
    );
    let resumed = writer.acked() + 10;
    writer
        .wait_acked(
            resumed,
            cluster.options().leader_timeout() + Duration::from_secs(30),
        )
        .await;

    let log = writer.stop().await;
    assert!(
        log.other.is_empty(),
        "unexpected kvsctl failures:\n{}",
        log.failures()
    );
    for i in cluster.running() {
        cluster.assert_writes_durable(i, &log).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_never_serves_a_stale_read_after_resuming() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    let old = cluster.leader().await;
    let old_term = term(&cluster, old).await;
    cluster.pause(old);
    let new = cluster.leader().await;
    assert!(
        term(&cluster, new).await > old_term,
        "the others elected a leader in a new term"
    );
    cluster
        .kvsctl_at(new, ["put", "during-pause", "v"])
        .await
        .ok();

    cluster.resume(old);
    // The resumed node may still believe it leads; a linearizable read must not trust that.
    wait_until(
        cluster.options().leader_timeout(),
        "the resumed node serves the write made while it was paused",
        || async {
            match cluster.get(old, "during-pause").await {
                Ok(Some(value)) => value == "v",
                Ok(None) => panic!("stale read: the resumed node answered that the key is absent"),
                Err(_) => false,
            }
        },
    )
    .await;
}
