//! The standard `grpc.health.v1` service, used as the Kubernetes readiness probe.
//!
//! A node reports SERVING only when it can actually serve: its Raft core runs, it is a member, it
//! knows a leader, it is not shutting down, and it has applied everything it knows to be
//! committed. Both the overall
//! status ("") and `kvs.v1.Kv` follow that rule.

use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::replica::Replica;

const SERVICES: [&str; 2] = ["", "kvs.v1.Kv"];

fn serving(replica: &Replica) -> bool {
    let me = replica.identity().node_id();
    // Looked at on every change of the metrics, so read in place rather than copied.
    let (member, caught_up) = replica.with_metrics(|metrics| {
        (
            metrics.membership_config.get_node(&me).is_some(),
            metrics.last_applied.map(|l| l.index) >= metrics.local_committed.map(|l| l.index),
        )
    });
    replica.core_running()
        && member
        && replica.leader_id().is_some()
        && caught_up
        && !replica.is_draining()
}

/// Keeps the reported status current until `stop` resolves.
pub(crate) async fn report(
    replica: Arc<Replica>,
    reporter: HealthReporter,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut metrics = replica.raft().metrics();
    let mut last = None;
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        let now = serving(&replica);
        if last != Some(now) {
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for service in SERVICES {
                reporter.set_service_status(service, status).await;
            }
            last = Some(now);
        }
        tokio::select! {
            _ = &mut stop => break,
            changed = metrics.changed() => if changed.is_err() { break },
            // Draining is not a Raft metric; look again now and then.
            _ = tick.tick() => {}
        }
    }
    for service in SERVICES {
        reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
}
