//! The harness's own promise: a test that passes while one of its nodes crashed or panicked is
//! not green. Each case breaks a node behind the harness's back, then drops the cluster as a
//! passing test would and expects the teardown to fail.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use nix::sys::signal::Signal;
use nix::sys::wait::Id;
use nix::sys::wait::WaitPidFlag;
use nix::sys::wait::waitid;
use nix::unistd::Pid;

/// Drops `cluster` as the end of a passing test does; the teardown's panic message, if any.
fn teardown_failure(cluster: Cluster) -> Option<String> {
    let dropped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(cluster)));
    dropped.err().map(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// SIGKILLs the node at seat 0 behind the harness's back and waits until it has exited, without
/// reaping it (`WNOWAIT`), so the harness still finds the exit to report.
async fn kill_unseen(cluster: &Cluster) {
    let pid = Pid::from_raw(i32::try_from(cluster.node(0).pid()).expect("PIDs fit in i32"));
    nix::sys::signal::kill(pid, Signal::SIGKILL).expect("kill the node");
    let exited = tokio::task::spawn_blocking(move || {
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    });
    tokio::time::timeout(Duration::from_secs(10), exited)
        .await
        .expect("the node dies within 10 s")
        .expect("the wait does not panic")
        .expect("waitid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_died_unseen_fails_the_test() {
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    kill_unseen(&cluster).await;

    let failure = teardown_failure(cluster).expect("the teardown fails");
    assert!(
        failure.contains("node 0") && failure.contains("exited on its own"),
        "{failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_logged_a_panic_fails_the_test() {
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    let log = cluster.node(0).log_path().to_path_buf();
    let mut text = std::fs::read_to_string(&log).expect("node log");
    text.push_str("thread 'tokio-runtime-worker' panicked at node/src/somewhere.rs:1:1:\n");
    std::fs::write(&log, text).expect("write node log");

    let failure = teardown_failure(cluster).expect("the teardown fails");
    assert!(
        failure.contains("panicked at node/src/somewhere.rs"),
        "{failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_exit_the_test_awaited_passes() {
    let mut cluster = Cluster::start(1, ClusterOptions::default()).await;
    kill_unseen(&cluster).await;
    let status = cluster.wait_exit(0, Duration::from_secs(10)).await;
    assert!(status.is_some(), "the node exits");
    assert_eq!(teardown_failure(cluster), None);
}
