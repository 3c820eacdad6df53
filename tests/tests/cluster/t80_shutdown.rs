//! Graceful shutdown: SIGTERM of the leader hands leadership off within the grace period and
//! clients never see an outcome-unknown error.

use std::time::Duration;
use std::time::Instant;

use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::Writer;

use crate::term;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_leader_hands_off_without_unknown_outcomes() {
    let grace = Duration::from_secs(5);
    let options = ClusterOptions {
        shutdown_grace: Some(grace),
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(3, options).await;
    let old = cluster.leader().await;
    let writer = Writer::spawn(cluster.cli(), "shutdown");
    writer.wait_acked(10, Duration::from_secs(60)).await;
    let old_term = term(&cluster, old).await;

    let started = Instant::now();
    let status = cluster.terminate(old).await;
    let took = started.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "the leader's exit on SIGTERM: {status}"
    );
    // Reaping is polled, so allow a little over the grace period itself.
    assert!(
        took <= grace + Duration::from_secs(1),
        "took {took:?}, grace is {grace:?}"
    );

    let new = cluster.leader().await;
    assert!(
        term(&cluster, new).await > old_term,
        "another member leads, in a new term"
    );
    writer
        .wait_acked(writer.acked() + 10, Duration::from_secs(60))
        .await;
    let log = writer.stop().await;
    assert!(
        log.failures().is_empty(),
        "every write should succeed across a graceful hand-off:\n{}",
        log.failures()
    );
    cluster.assert_writes_durable(new, &log).await;
}
