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
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::failpoint_build;

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
async fn a_node_whose_log_fsync_fails_reports_not_serving_and_exits_with_the_cause() {
    let options = ClusterOptions {
        durable: true,
        fault_control: true,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start_with(failpoint_build().await, 3, options).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        cluster.node(follower).address()
    ))
    .expect("a node address")
    .connect()
    .await
    .expect("connect to the follower");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = watch.message().await.expect("a status").expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);

    cluster.arm_failpoint(follower, "log-fsync", Action::Fail);
    // The next write makes the follower fsync what it appended.
    let writes = async {
        for i in 0..50 {
            let _ = cluster.kvsctl(["put", &format!("k{i}"), "v"]).await;
        }
    };
    let status_seen = async {
        let mut last = ServingStatus::Serving;
        while let Ok(Some(update)) = watch.message().await {
            last = update.status();
            if last != ServingStatus::Serving {
                break;
            }
        }
        last
    };
    let (_, seen) = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join(writes, status_seen),
    )
    .await
    .expect("the follower's health changes within a minute");
    assert_eq!(
        seen,
        ServingStatus::NotServing,
        "a node whose Raft core died reports NOT_SERVING before it exits"
    );
    let status = cluster
        .wait_exit(follower, Duration::from_secs(30))
        .await
        .expect("the node exits once its Raft core died");
    assert_eq!(
        status.code(),
        Some(1),
        "it exits non-zero on its own: {status}"
    );
    let log_text = std::fs::read_to_string(cluster.node(follower).log_path()).expect("node log");
    let last_line = log_text.lines().last().unwrap_or_default();
    assert!(
        last_line.contains("raft stopped") && last_line.contains("Input/output error"),
        "the last log line names the cause: {last_line:?}"
    );
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
        powerfs: None,
        skip_fsync: false,
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
