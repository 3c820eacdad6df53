//! The failpoint nemesis: arms a failpoint of the node's failpoint build (`kvs-node` built with
//! the `failpoints` feature, see `node/src/failpoint.rs`) so that the node crashes — aborts, like
//! a power cut — or stalls at one step of its storage path: log append, log fsync, apply,
//! snapshot build or snapshot install. A node that crashed is restarted on its data directory
//! when the fault heals, and must come back with every write it acknowledged.

use kvs_node::failpoint::Action;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use crate::Cluster;

/// The failpoints of the node's failpoint build.
pub const NAMES: [&str; 5] = [
    "log-append",
    "log-fsync",
    "apply",
    "snapshot-build",
    "snapshot-install",
];

/// Arms a random failpoint on `node`: a crash two times in three, else a stall of 0.1–1 s each
/// time the node passes it. Returns what it did.
pub(super) fn arm(cluster: &Cluster, node: usize, rng: &mut StdRng) -> String {
    let name = NAMES.choose(rng).expect("not empty");
    let action = if rng.random_bool(2.0 / 3.0) {
        Action::Crash
    } else {
        Action::Stall(rng.random_range(100..1000))
    };
    cluster.arm_failpoint(node, name, action);
    format!("failpoint {name} {action} on node {node}")
}

/// Disarms every failpoint and restarts `node` if it crashed; returns what happened.
pub(super) async fn heal(cluster: &mut Cluster, node: usize) -> String {
    cluster.heal();
    // A node may also die just after it disarmed: a thread already past the failpoint.
    let crashed = match cluster.in_force_or_exited(node).await {
        Some(status) => Some(status),
        None => cluster.exited(node),
    };
    match crashed {
        Some(status) => {
            cluster.restart(node).await;
            format!("healed; node {node} had crashed ({status}) and was restarted")
        }
        None => "healed".to_string(),
    }
}
