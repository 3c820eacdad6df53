//! Failpoints: the failpoint build of the node crashes where a power cut would hurt most, and
//! nothing acknowledged is lost; a short campaign of failpoint crashes and stalls finds nothing.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use kvs_client::proto::GetRequest;
use kvs_node::failpoint::Action;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::Writer;
use kvs_tests::jepsen::campaign;
use kvs_tests::jepsen::campaign::CampaignOptions;
use kvs_tests::jepsen::nemesis::Nemesis;
use kvs_tests::jepsen::workload::WorkloadOptions;
use kvs_tests::wait_until;
use nix::sys::signal::Signal;

async fn failpoint_build() -> &'static kvs_tests::Binaries {
    match tokio::task::spawn_blocking(kvs_tests::failpoint_binaries).await {
        Ok(bins) => bins,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_crashing_at_log_fsync_loses_no_acknowledged_write_and_comes_back() {
    let options = ClusterOptions {
        durable: true,
        fault_control: true,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start_with(failpoint_build().await, 3, options).await;
    let writer = Writer::spawn(cluster.cli(), "fsync");
    writer.wait_acked(20, Duration::from_secs(60)).await;
    let leader = cluster.leader().await;
    let id = cluster.node(leader).id().to_string();

    cluster.arm_failpoint(leader, "log-fsync", Action::Crash);
    let status = cluster
        .wait_exit(leader, Duration::from_secs(30))
        .await
        .expect("the leader crashes at its next log fsync");
    assert_eq!(
        status.signal(),
        Some(Signal::SIGABRT as i32),
        "a crash aborts like a power cut: {status}"
    );
    let log_text = std::fs::read_to_string(cluster.node(leader).log_path()).expect("node log");
    assert!(
        log_text.contains("failpoint") && log_text.contains("log-fsync"),
        "the node says which failpoint crashed it"
    );
    // The others elect a new leader and go on taking writes.
    let acked = writer.acked();
    writer.wait_acked(acked + 10, Duration::from_secs(60)).await;

    cluster.heal();
    cluster.restart(leader).await;
    assert_eq!(
        cluster.node(leader).id(),
        id,
        "the crashed node comes back as the same member, from its data directory"
    );
    let log = writer.stop().await;
    assert!(log.other.is_empty(), "{}", log.failures());
    let (last_key, last_value) = log.acked.last().expect("acknowledged writes").clone();
    wait_until(
        Duration::from_secs(30),
        "the restarted node has caught up with the last acknowledged write",
        || async {
            let request = GetRequest {
                key: last_key.clone().into(),
                serializable: true,
            };
            cluster
                .kv(leader)
                .get(request)
                .await
                .is_ok_and(|r| r.get_ref().value == last_value.as_bytes())
        },
    )
    .await;
    cluster.assert_writes_durable(leader, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_campaign_of_failpoint_crashes_and_stalls_finds_no_anomaly() {
    let bins = failpoint_build().await;
    let report_dir = tempfile::tempdir().expect("a report dir");
    let options = CampaignOptions {
        phases: vec![Nemesis::Failpoint],
        phase_time: Duration::from_secs(16),
        seed: 98,
        nodes: 3,
        workload: WorkloadOptions::default(),
        report_dir: report_dir.path().to_path_buf(),
        failpoint_binaries: Some(bins),
    };
    let report = campaign::run(bins, &options).await;
    let summary = report.summary();
    let events = &report.phases[0].events;
    assert!(report.ops() > 0, "the workload ran:\n{summary}");
    assert!(
        events.iter().any(|e| e.contains("failpoint")),
        "failpoints were armed: {events:#?}"
    );
    assert!(
        report.passed(),
        "anomalies found:\n{summary}\n{:#?}",
        report.phases
    );
}
