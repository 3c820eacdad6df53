//! Nemeses: the faults a campaign injects into a running cluster, each one applied, held for a
//! while and healed, with quiet periods in between so the cluster can make progress.
//!
//! All choices (which fault, which node, how long) come from the campaign's seeded generator.
//! Kills are `kill -9` of a durable node followed by a restart on the same data directory;
//! pauses are SIGSTOP/SIGCONT; partitions cut peer links through the nodes' test-only fault
//! layer (`--fault-control-file`); failpoints crash or stall a node of the failpoint build
//! (`failpoint.rs`). Whatever the nemesis did is undone when it ends.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::seq::SliceRandom;
use tokio::time::Instant;

use super::failpoint;
use crate::Cluster;

/// Which faults a campaign phase injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nemesis {
    /// No faults: the baseline.
    None,
    /// `kill -9` a node (often the leader) and restart it.
    Kill,
    /// SIGSTOP a node (often the leader), then SIGCONT it.
    Pause,
    /// Isolate the leader, or split the cluster into a majority and a minority.
    Partition,
    /// Drop the replies to half the writes the nodes apply, so clients retry writes that were
    /// applied: each must still take effect once.
    DropReplies,
    /// Crash or stall a node (often the leader) at a failpoint of its storage path; needs the
    /// failpoint build of the node.
    Failpoint,
    /// Any of the above but failpoints, one at a time, chosen at random.
    Mixed,
}

impl Nemesis {
    /// The nemeses `--nemesis all` runs, one phase each: every fault alone, then mixed.
    pub const ALL: [Nemesis; 6] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Partition,
        Nemesis::DropReplies,
        Nemesis::Failpoint,
        Nemesis::Mixed,
    ];

    /// Whether nodes need `--fault-control-file`.
    pub fn needs_fault_control(self) -> bool {
        matches!(
            self,
            Nemesis::Partition | Nemesis::DropReplies | Nemesis::Failpoint | Nemesis::Mixed
        )
    }

    /// Whether nodes must be the failpoint build of `kvs-node`.
    pub fn needs_failpoints(self) -> bool {
        self == Nemesis::Failpoint
    }
}

impl fmt::Display for Nemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Nemesis::None => "none",
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::DropReplies => "drop-replies",
            Nemesis::Failpoint => "failpoint",
            Nemesis::Mixed => "mixed",
        })
    }
}

impl FromStr for Nemesis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Nemesis::None]
            .into_iter()
            .chain(Nemesis::ALL)
            .find(|n| n.to_string() == s)
            .ok_or_else(|| {
                format!(
                    "unknown nemesis {s:?}: none, kill, pause, partition, drop-replies, failpoint, \
                     mixed or all"
                )
            })
    }
}

/// One fault, as applied.
enum Fault {
    Killed(usize),
    Paused(usize),
    /// A failpoint armed on this node.
    Failpoint(usize),
    /// Partitions and dropped replies: undone by healing the fault layer.
    InLayer,
}

/// Injects `nemesis` faults into `cluster` until `until`; returns a line per fault, stamped with
/// the time since `start`. Every fault is healed before it returns.
pub async fn run(
    cluster: &mut Cluster,
    nemesis: Nemesis,
    rng: &mut StdRng,
    start: Instant,
    until: Instant,
) -> Vec<String> {
    let mut events = Vec::new();
    loop {
        let quiet = Duration::from_millis(rng.random_range(1000..2500));
        let hold = Duration::from_millis(rng.random_range(1500..4000));
        if Instant::now() + quiet + hold >= until || nemesis == Nemesis::None {
            break;
        }
        tokio::time::sleep(quiet).await;
        let kind = match nemesis {
            Nemesis::Mixed => *[
                Nemesis::Kill,
                Nemesis::Pause,
                Nemesis::Partition,
                Nemesis::DropReplies,
            ]
            .choose(rng)
            .expect("not empty"),
            other => other,
        };
        let (fault, what) = inject(cluster, kind, rng).await;
        events.push(format!("{:>8.3}s {what}", start.elapsed().as_secs_f64()));
        tokio::time::sleep(hold).await;
        let healed = heal(cluster, fault).await;
        events.push(format!("{:>8.3}s {healed}", start.elapsed().as_secs_f64()));
    }
    tokio::time::sleep_until(until).await;
    events
}

/// A victim: the leader half of the time (when there is one), else any node.
async fn victim(cluster: &Cluster, rng: &mut StdRng) -> usize {
    let leader = cluster.try_leader().await;
    match leader {
        Some(leader) if rng.random_bool(0.5) => leader,
        _ => rng.random_range(0..cluster.len()),
    }
}

async fn inject(cluster: &mut Cluster, kind: Nemesis, rng: &mut StdRng) -> (Fault, String) {
    match kind {
        Nemesis::Kill => {
            let node = victim(cluster, rng).await;
            cluster.kill(node);
            (Fault::Killed(node), format!("kill -9 node {node}"))
        }
        Nemesis::Pause => {
            let node = victim(cluster, rng).await;
            cluster.pause(node);
            (Fault::Paused(node), format!("pause node {node}"))
        }
        Nemesis::Failpoint => {
            let node = victim(cluster, rng).await;
            let what = failpoint::arm(cluster, node, rng);
            (Fault::Failpoint(node), what)
        }
        Nemesis::DropReplies => {
            cluster.drop_replies(50);
            cluster.faults_in_force().await;
            (Fault::InLayer, "drop half the write replies".to_string())
        }
        _ => {
            let leader = cluster.try_leader().await;
            let n = cluster.len();
            let what = match leader {
                Some(leader) if rng.random_bool(0.5) => {
                    cluster.isolate(leader);
                    format!("isolate leader node {leader}")
                }
                _ => {
                    let mut nodes: Vec<usize> = (0..n).collect();
                    let split = (n - 1) / 2;
                    let minority: Vec<usize> = nodes.partial_shuffle(rng, split.max(1)).0.to_vec();
                    let majority: Vec<usize> = (0..n).filter(|i| !minority.contains(i)).collect();
                    cluster.partition(&[minority.clone(), majority.clone()]);
                    format!("partition minority {minority:?} from majority {majority:?}")
                }
            };
            cluster.faults_in_force().await;
            (Fault::InLayer, what)
        }
    }
}

/// Undoes `fault`; says what it did.
async fn heal(cluster: &mut Cluster, fault: Fault) -> String {
    match fault {
        Fault::Killed(node) => cluster.restart(node).await,
        Fault::Paused(node) => cluster.resume(node),
        Fault::Failpoint(node) => return failpoint::heal(cluster, node).await,
        Fault::InLayer => {
            cluster.heal();
            cluster.faults_in_force().await;
        }
    }
    "healed".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for nemesis in [Nemesis::None].into_iter().chain(Nemesis::ALL) {
            assert_eq!(nemesis.to_string().parse(), Ok(nemesis));
        }
        assert!("chaos".parse::<Nemesis>().is_err());
    }
}
