//! Power loss and clock faults end to end: a short campaign of power cuts (one node or a
//! minority, and every node at once) loses no acknowledged write, and the same campaign on a
//! build that skips the log's fsyncs does — the power nemesis can fail; a short campaign of clock
//! offsets and steps under lease reads finds no anomaly.

use std::time::Duration;

use kvs_tests::jepsen::campaign;
use kvs_tests::jepsen::campaign::CampaignOptions;
use kvs_tests::jepsen::campaign::Report;
use kvs_tests::jepsen::nemesis::Nemesis;
use kvs_tests::jepsen::workload::WorkloadOptions;

async fn campaign_of(nemesis: Nemesis, seed: u64, secs: u64, skip_fsync: bool) -> Report {
    let (bins, failpoint_bins) = tokio::task::spawn_blocking(move || {
        let failpoint_bins = skip_fsync.then(kvs_tests::failpoint_binaries);
        (kvs_tests::binaries(), failpoint_bins)
    })
    .await
    .expect("binaries are built");
    let report_dir = tempfile::tempdir().expect("a report dir");
    let options = CampaignOptions {
        phases: vec![nemesis],
        phase_time: Duration::from_secs(secs),
        seed,
        nodes: 3,
        workload: WorkloadOptions::default(),
        report_dir: report_dir.path().to_path_buf(),
        failpoint_binaries: failpoint_bins,
        // Built beside the node by the same `cargo build --workspace --bins`.
        powerfs: Some(bins.node.with_file_name("powerfs")),
        skip_fsync,
    };
    campaign::run(bins, &options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "finds an open bug: the last acknowledged write is lost when every node loses its \
            power after the run (docs/correctness.md, 'Power loss: powerfs'); un-ignore with the fix"]
async fn power_cuts_of_one_node_and_of_every_node_lose_no_acknowledged_write() {
    let report = campaign_of(Nemesis::Power, 99, 20, false).await;
    let summary = report.summary();
    let events = &report.phases[0].events;
    assert!(report.ops() > 0, "the workload ran:\n{summary}");
    assert!(
        events
            .iter()
            .any(|e| e.contains("cut the power of nodes [0, 1, 2]")),
        "every node lost its power at least once: {events:#?}"
    );
    assert!(
        report.passed(),
        "anomalies found:\n{summary}\n{:#?}",
        report.phases
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_on_a_build_that_skips_fsync_are_found_to_lose_writes() {
    let report = campaign_of(Nemesis::Power, 2, 40, true).await;
    let summary = report.summary();
    assert!(report.ops() > 0, "the workload ran:\n{summary}");
    assert!(
        !report.passed(),
        "writes never fsynced survived every power cut, so the nemesis cannot see a missing \
         fsync:\n{summary}"
    );
    eprintln!("{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_offsets_and_steps_under_lease_reads_find_no_anomaly() {
    let report = campaign_of(Nemesis::Clock, 99, 20, false).await;
    let summary = report.summary();
    let events = &report.phases[0].events;
    assert!(report.ops() > 0, "the workload ran:\n{summary}");
    assert!(
        events.iter().any(|e| e.contains(" ms")),
        "a clock was moved: {events:#?}"
    );
    assert!(
        report.passed(),
        "anomalies found:\n{summary}\n{:#?}",
        report.phases
    );
}
