//! Jepsen-style checking end to end: a short campaign of every nemesis finds nothing, the fault
//! layer does what the nemeses rely on, and the checker does flag a real anomaly when reads are
//! allowed to be stale.

use std::time::Duration;

use kvs_client::Action;
use kvs_client::Client;
use kvs_client::Expect;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::jepsen::campaign;
use kvs_tests::jepsen::campaign::CampaignOptions;
use kvs_tests::jepsen::history::Call;
use kvs_tests::jepsen::history::Outcome;
use kvs_tests::jepsen::history::Return;
use kvs_tests::jepsen::linearizability::Verdict;
use kvs_tests::jepsen::linearizability::check;
use kvs_tests::jepsen::nemesis::Nemesis;
use kvs_tests::jepsen::workload::Recorder;
use kvs_tests::jepsen::workload::WorkloadOptions;
use kvs_tests::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_campaign_of_every_nemesis_finds_no_anomaly() {
    let bins = tokio::task::spawn_blocking(kvs_tests::binaries)
        .await
        .expect("binaries are built");
    let report_dir = tempfile::tempdir().expect("a report dir");
    let options = CampaignOptions {
        // `jepsen --nemesis all` in miniature: each nemesis alone on a cluster of its own, then
        // all of them mixed; long enough for at least one fault per phase. Failpoints need the
        // failpoint build: t98 runs that nemesis; power cuts and clock faults need powerfs
        // volumes and libfaketime: t99 runs them.
        phases: Nemesis::ALL
            .into_iter()
            .filter(|n| !n.needs_failpoints() && !n.needs_power_supply() && !n.needs_clocks())
            .collect(),
        phase_time: Duration::from_secs(10),
        seed: 97,
        nodes: 3,
        workload: WorkloadOptions::default(),
        report_dir: report_dir.path().to_path_buf(),
        failpoint_binaries: None,
        powerfs: None,
        skip_fsync: false,
    };
    let report = campaign::run(bins, &options).await;
    let summary = report.summary();
    eprintln!("{summary}");
    for phase in &report.phases {
        assert!(
            phase.counts.total() > 0,
            "{} ran no workload:\n{summary}",
            phase.nemesis
        );
        assert!(
            !phase.events.is_empty(),
            "{} injected no fault:\n{summary}",
            phase.nemesis
        );
    }
    assert!(
        report.passed(),
        "anomalies found:\n{summary}\n{:#?}",
        report.phases
    );
    let last = summary.lines().last().expect("a summary");
    assert_eq!(last, format!("ops={} anomalies=0 lost=0", report.ops()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_layer_slows_links_and_loses_requests() {
    let options = ClusterOptions {
        fault_control: true,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).await;
    let leader = cluster.leader().await;
    let client_options = kvs_client::ClientOptions {
        timeout: Duration::from_secs(1),
        attempt_timeout: Duration::from_secs(1),
        ..kvs_client::ClientOptions::default()
    };
    let at_leader = Client::connect(vec![cluster.node(leader).address()], client_options.clone())
        .expect("a client");

    // A write commits only once a follower has it, and every link of the leader is slow (though
    // not slower than the heartbeat interval, openraft's deadline for one message).
    let delay = Duration::from_millis(150);
    cluster.slow_down(&[leader], delay, Duration::ZERO);
    cluster.faults_in_force().await;
    let started = tokio::time::Instant::now();
    at_leader
        .put("slow".to_string(), "1".to_string(), None)
        .await
        .expect("a slow write still commits");
    let took = started.elapsed();
    assert!(
        took >= delay,
        "the write took {took:?}, less than the link delay"
    );

    // Every request lost: nobody answers, so the client cannot know; the node never served it.
    cluster.drop_requests(100);
    cluster.faults_in_force().await;
    let everywhere = Client::connect(cluster.endpoints(), client_options).expect("a client");
    let lost = everywhere
        .put("lost".to_string(), "1".to_string(), None)
        .await;
    assert!(
        matches!(lost, Err(ref e) if e.is_outcome_unknown()),
        "an unanswered write ends unknown: {lost:?}"
    );
    cluster.heal();
    cluster.faults_in_force().await;
    let found = cluster.get(leader, "lost").await.expect("a read");
    assert_eq!(found, None, "a write lost on arrival was applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_reads_from_an_isolated_old_leader_are_flagged() {
    let options = ClusterOptions {
        fault_control: true,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).await;
    let old = cluster.leader().await;
    let majority: Vec<String> = (0..3)
        .filter(|&i| i != old)
        .map(|i| cluster.node(i).address())
        .collect();
    let client_options = WorkloadOptions::default().client_options();
    let writer = Client::connect(majority, client_options.clone()).expect("a client");
    let reader =
        Client::connect(vec![cluster.node(old).address()], client_options).expect("a client");
    let recorder = Recorder::new();
    let key = WorkloadOptions::key(0);

    let first = recorder.run(&writer, 0, &key, Call::Put(1), false).await;
    assert_eq!(first, Outcome::Ok(Return::Put));
    wait_until(
        Duration::from_secs(10),
        "the leader has applied the first write",
        || async {
            reader
                .get(key.clone(), true)
                .await
                .is_ok_and(|kv| kv.is_some_and(|kv| kv.value == "1"))
        },
    )
    .await;

    cluster.isolate(old);
    cluster.faults_in_force().await;
    wait_until(
        cluster.options().leader_timeout(),
        "the majority elects a new leader",
        || async { cluster.try_leader().await.is_some_and(|l| l != old) },
    )
    .await;
    let second = recorder.run(&writer, 0, &key, Call::Put(2), false).await;
    assert_eq!(
        second,
        Outcome::Ok(Return::Put),
        "the majority takes writes"
    );
    // The old leader still answers from its own, now stale, state.
    let stale = recorder.run(&reader, 1, &key, Call::Get, true).await;
    assert_eq!(stale, Outcome::Ok(Return::Get(Some(1))));
    cluster.heal();

    let history = recorder.history();
    let anomalies = check(&history);
    assert_eq!(anomalies.len(), 1, "{anomalies:#?}");
    let Verdict::NotLinearizable(violation) = &anomalies[0].verdict else {
        panic!("expected a linearizability violation: {anomalies:#?}");
    };
    // The acknowledged second write, and the read after it that still saw the first.
    let calls: Vec<Call> = violation.operations.iter().map(|op| op.call).collect();
    assert_eq!(calls, vec![Call::Put(2), Call::Get]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_after_its_reply_was_dropped_is_applied_once() {
    let options = ClusterOptions {
        fault_control: true,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).await;
    let client_options = kvs_client::ClientOptions {
        timeout: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(1),
        ..kvs_client::ClientOptions::default()
    };
    let client = Client::connect(cluster.endpoints(), client_options).expect("a client");

    // Every reply lost: the client cannot know, though the write was applied.
    cluster.drop_replies(100);
    cluster.faults_in_force().await;
    let put = swap_in_one(&client, "dropped", Expect::Absent).await;
    assert!(
        matches!(put, Err(ref e) if e.is_outcome_unknown()),
        "a write whose every reply is lost ends unknown: {put:?}"
    );
    // Half the replies lost: each compare-and-swap is retried under the same write ID until an
    // answer gets through, and that answer must be the first application's, never a failed
    // compare against the value the swap itself wrote.
    cluster.drop_replies(50);
    cluster.faults_in_force().await;
    let keys: Vec<String> = (0..10).map(|i| format!("once-{i}")).collect();
    for key in &keys {
        let swapped = swap_in_one(&client, key, Expect::Absent).await;
        assert!(
            !matches!(swapped, Err(kvs_client::Error::CompareFailed)),
            "{key}: a retry saw its own first application as a failed compare"
        );
    }
    cluster.heal();
    let leader = cluster.leader().await;
    for key in &keys {
        let value = cluster.get(leader, key.clone()).await.expect("a read");
        assert_eq!(value.as_deref(), Some(b"1".as_slice()), "{key} was swapped");
    }
    let dropped = cluster.get(leader, "dropped").await.expect("a read");
    assert_eq!(
        dropped.as_deref(),
        Some(b"1".as_slice()),
        "the unacknowledged write was applied"
    );
}

/// A compare-and-swap of `key` from `expect` to "1".
async fn swap_in_one(client: &Client, key: &str, expect: Expect) -> Result<(), kvs_client::Error> {
    client
        .compare_and_swap(key.to_string(), expect, Action::Set("1".into()))
        .await
}
