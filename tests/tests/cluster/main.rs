//! End-to-end tests of kvs: real `kvs-node` processes driven through `kvsctl` and the gRPC API,
//! one module per area. Clusters are multi-process and timing-sensitive, so the harness runs one
//! at a time (and `tests/run.sh` runs this binary with `--test-threads=1`).

mod t01_harness;
mod t05_contracts;
mod t10_replication;
mod t20_failover;
mod t23_footprint;
mod t25_durability;
mod t26_clock;
mod t27_quota;
mod t28_backup;
mod t29_disk;
mod t30_membership;
mod t40_unavailability;
mod t50_cas;
mod t52_sessions;
mod t60_identity;
mod t62_tls;
mod t64_auth;
mod t70_limits;
mod t80_shutdown;
mod t90_resp;
mod t94_object_backup;
mod t95_operator;
mod t96_chart;
mod t97_jepsen;
mod t98_failpoints;
mod t99_power;

use std::time::Duration;

/// Slack on top of a configured bound for process start-up, scheduling and retries.
const MARGIN: Duration = Duration::from_secs(5);

/// The failpoint build of the binaries (`kvs-node-failpoints` as the node), built on first use.
async fn failpoint_build() -> &'static kvs_tests::Binaries {
    match tokio::task::spawn_blocking(kvs_tests::failpoint_binaries).await {
        Ok(bins) => bins,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The Raft term node `i` is in.
async fn term(cluster: &kvs_tests::Cluster, i: usize) -> u64 {
    cluster
        .status(i)
        .await
        .unwrap_or_else(|status| panic!("status of node {i}: {status}"))
        .term
}

/// The index of some running node other than `than`.
fn other_than(cluster: &kvs_tests::Cluster, than: usize) -> usize {
    cluster
        .running()
        .into_iter()
        .find(|&i| i != than)
        .expect("another node is running")
}
