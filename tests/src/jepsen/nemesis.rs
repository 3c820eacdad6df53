//! Nemeses: the faults a campaign injects into a running cluster, each one applied, held for a
//! while and healed, with quiet periods in between so the cluster can make progress.
//!
//! All choices (which fault, which node, how long) come from the campaign's seeded generator.
//! Kills are `kill -9` of a durable node followed by a restart on the same data directory;
//! pauses are SIGSTOP/SIGCONT; partitions, slow links and dropped requests and replies go
//! through the nodes' test-only fault layer (`--fault-control-file`); failpoints crash or stall
//! a node of the failpoint build (`failpoint.rs`); power cuts kill nodes and drop what their
//! disks had not fsynced (`power.rs`); clock faults move nodes' wall clocks (`clock.rs`); membership changes use the client library as
//! an operator's tool would. Whatever the nemesis did is undone when it ends: a removed member
//! is added back, so every phase ends with its full membership.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use kvs_client::Client;
use kvs_client::ClientOptions;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::seq::SliceRandom;
use tokio::time::Instant;

use super::clock;
use super::clock::Clocks;
use super::failpoint;
use super::power::PowerSupply;
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
    /// Isolate the leader, split the cluster into a majority and a minority, or bridge two
    /// halves that cannot see each other through one node that sees both.
    Partition,
    /// Slow down the peer links of one node (often the leader) or of every node.
    Delay,
    /// Drop the replies to half the writes the nodes apply, so clients retry writes that were
    /// applied: each must still take effect once.
    DropReplies,
    /// Lose a share of the client requests the nodes receive, before they are served.
    DropRequests,
    /// Remove a member (often the leader) and add it back, with its data or wiped; or move
    /// leadership to another member.
    Membership,
    /// Crash or stall a node (often the leader) at a failpoint of its storage path; needs the
    /// failpoint build of the node.
    Failpoint,
    /// Cut the power of one node, a minority or every node at once — `kill -9` and everything
    /// its disk had not fsynced is lost — then restart them; needs the nodes' data directories on
    /// powerfs volumes (`power.rs`).
    Power,
    /// Put a follower's wall clock ahead, the leader's ahead, step a clock backwards (all within
    /// the nodes' `--max-clock-skew-ms`), or skew a node (the leader half the time) beyond it;
    /// the nodes run under libfaketime (`clock.rs`) and serve lease reads.
    Clock,
    /// Any of the above but failpoints, power cuts and clock faults, one at a time, chosen at
    /// random.
    Mixed,
}

impl Nemesis {
    /// The nemeses `--nemesis all` runs, one phase each: every fault alone, then mixed.
    pub const ALL: [Nemesis; 11] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Partition,
        Nemesis::Delay,
        Nemesis::DropReplies,
        Nemesis::DropRequests,
        Nemesis::Membership,
        Nemesis::Failpoint,
        Nemesis::Power,
        Nemesis::Clock,
        Nemesis::Mixed,
    ];

    /// Whether nodes need `--fault-control-file`.
    pub fn needs_fault_control(self) -> bool {
        matches!(
            self,
            Nemesis::Partition
                | Nemesis::Delay
                | Nemesis::DropReplies
                | Nemesis::DropRequests
                | Nemesis::Failpoint
                | Nemesis::Mixed
        )
    }

    /// Whether nodes must be the failpoint build of `kvs-node`.
    pub fn needs_failpoints(self) -> bool {
        self == Nemesis::Failpoint
    }

    /// Whether nodes need their data directories on powerfs volumes ([`PowerSupply`]).
    pub fn needs_power_supply(self) -> bool {
        self == Nemesis::Power
    }

    /// Whether nodes need to run under libfaketime ([`Clocks`]).
    pub fn needs_clocks(self) -> bool {
        self == Nemesis::Clock
    }

    /// Whether the phase needs more than the usual build and directories: it is left out of
    /// `mixed`.
    fn needs_hardware(self) -> bool {
        self.needs_failpoints() || self.needs_power_supply() || self.needs_clocks()
    }
}

impl fmt::Display for Nemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Nemesis::None => "none",
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::Delay => "delay",
            Nemesis::DropReplies => "drop-replies",
            Nemesis::DropRequests => "drop-requests",
            Nemesis::Membership => "membership",
            Nemesis::Failpoint => "failpoint",
            Nemesis::Power => "power",
            Nemesis::Clock => "clock",
            Nemesis::Mixed => "mixed",
        })
    }
}

impl FromStr for Nemesis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let names = || [Nemesis::None].into_iter().chain(Nemesis::ALL);
        names().find(|n| n.to_string() == s).ok_or_else(|| {
            let known: Vec<String> = names().map(|n| n.to_string()).collect();
            format!("unknown nemesis {s:?}: {} or all", known.join(", "))
        })
    }
}

/// What of the nodes' machines the nemeses can reach besides the processes: their disks' power
/// and their wall clocks, for the phases that need them.
#[derive(Debug, Default)]
pub struct Hardware {
    /// Each node's data directory on a powerfs volume ([`Nemesis::needs_power_supply`]).
    pub power: Option<PowerSupply>,
    /// Each node under libfaketime ([`Nemesis::needs_clocks`]).
    pub clocks: Option<Clocks>,
}

/// One fault, as applied.
enum Fault {
    Killed(usize),
    Paused(usize),
    /// A failpoint armed on this node.
    Failpoint(usize),
    /// These nodes lost their power and are down.
    PoweredOff(Vec<usize>),
    /// A node's wall clock is off.
    ClockOff,
    /// Undone by healing the fault layer.
    InLayer,
    /// A member removed (or maybe removed) and stopped.
    Removed(usize),
    /// Nothing to undo (leadership moved, or the change was refused).
    Done,
}

/// Injects `nemesis` faults into `cluster` until `until`; returns a line per fault, stamped with
/// the time since `start`. Every fault is healed before it returns.
pub async fn run(
    cluster: &mut Cluster,
    nemesis: Nemesis,
    rng: &mut StdRng,
    start: Instant,
    until: Instant,
    hardware: &mut Hardware,
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
            // Any single fault but `Mixed` itself, failpoints (they need another build) and power
            // cuts (they need the volumes).
            Nemesis::Mixed => {
                let singles: Vec<Nemesis> = Nemesis::ALL
                    .into_iter()
                    .filter(|n| *n != Nemesis::Mixed && !n.needs_hardware())
                    .collect();
                *singles.choose(rng).expect("there are single faults")
            }
            other => other,
        };
        let (fault, what) = match (kind, &mut hardware.power, &hardware.clocks) {
            (Nemesis::Power, Some(supply), _) => cut_power(cluster, supply, rng).await,
            (Nemesis::Power, None, _) => panic!("the power nemesis needs the nodes' power supply"),
            (Nemesis::Clock, _, Some(clocks)) => skew_clock(cluster, clocks, rng).await,
            (Nemesis::Clock, _, None) => panic!("the clock nemesis needs the nodes' clocks"),
            _ => inject(cluster, kind, rng).await,
        };
        events.push(format!("{:>8.3}s {what}", start.elapsed().as_secs_f64()));
        tokio::time::sleep(hold).await;
        let healed = heal(cluster, fault, hardware).await;
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
        Nemesis::DropRequests => {
            let percent = rng.random_range(20..=50);
            cluster.drop_requests(percent);
            cluster.faults_in_force().await;
            let what = format!("lose {percent}% of the client requests");
            (Fault::InLayer, what)
        }
        Nemesis::Delay => {
            let nodes = if rng.random_bool(1.0 / 3.0) {
                (0..cluster.len()).collect()
            } else {
                vec![victim(cluster, rng).await]
            };
            // Openraft gives up on a message after a heartbeat interval (300 ms in the harness):
            // the shorter delays slow the links down, the longest one makes them drop messages.
            let delay = Duration::from_millis(*[50, 100, 200, 1000].choose(rng).expect("some"));
            cluster.slow_down(&nodes, delay, delay / 4);
            cluster.faults_in_force().await;
            let what = format!("delay the links of nodes {nodes:?} by {delay:?} + up to 25%");
            (Fault::InLayer, what)
        }
        Nemesis::Membership => change_membership(cluster, rng).await,
        _ => {
            let what = partition(cluster, rng).await;
            cluster.faults_in_force().await;
            (Fault::InLayer, what)
        }
    }
}

/// Cuts the power of one node (the leader half of the time), a minority or every node: each is
/// killed, then its disk loses what it had not fsynced.
async fn cut_power(
    cluster: &mut Cluster,
    supply: &mut PowerSupply,
    rng: &mut StdRng,
) -> (Fault, String) {
    let n = cluster.len();
    let mut nodes: Vec<usize> = match rng.random_range(0..3) {
        0 => vec![victim(cluster, rng).await],
        1 => {
            let mut all: Vec<usize> = (0..n).collect();
            all.shuffle(rng);
            all.truncate(((n - 1) / 2).max(1));
            all
        }
        _ => (0..n).collect(),
    };
    nodes.sort_unstable();
    power_off(cluster, supply, &nodes);
    let what = format!("cut the power of nodes {nodes:?}");
    (Fault::PoweredOff(nodes), what)
}

fn power_off(cluster: &mut Cluster, supply: &mut PowerSupply, nodes: &[usize]) {
    for &node in nodes {
        cluster.kill(node);
    }
    for &node in nodes {
        supply
            .cut(node)
            .unwrap_or_else(|e| panic!("cutting the power of node {node}: {e}"));
    }
}

/// The last fault of a power phase, once the clients have stopped: every node loses its power
/// and restarts, so the final reads show every acknowledged write that a disk did not keep
/// (a write lost earlier in the run may be hidden by later writes to its key).
pub async fn cut_all_power(cluster: &mut Cluster, supply: &mut PowerSupply) -> String {
    let nodes: Vec<usize> = (0..cluster.len()).collect();
    power_off(cluster, supply, &nodes);
    for &node in &nodes {
        cluster.restart(node).await;
    }
    format!("after the run: cut the power of nodes {nodes:?} and restart them")
}

/// What a clock fault within the bound moves a clock by.
const CLOCK_WITHIN_MS: i64 = 600;
/// What a clock fault beyond the bound moves a clock by: three times the nodes' default
/// `--max-clock-skew-ms`.
const CLOCK_BEYOND_MS: i64 = 3000;

/// Puts a follower's clock ahead, the leader's ahead or a clock back, within the bound, or one
/// (the leader half the time) ahead beyond it.
async fn skew_clock(cluster: &Cluster, clocks: &Clocks, rng: &mut StdRng) -> (Fault, String) {
    let leader = cluster.try_leader().await;
    let followers: Vec<usize> = (0..cluster.len()).filter(|&i| Some(i) != leader).collect();
    let follower = *followers.choose(rng).expect("a cluster of at least two");
    let (node, offset, kind) = match rng.random_range(0..4) {
        0 => (follower, CLOCK_WITHIN_MS, "a follower's clock ahead"),
        1 => (
            leader.unwrap_or(follower),
            CLOCK_WITHIN_MS,
            "the leader's clock ahead",
        ),
        2 => (
            victim(cluster, rng).await,
            -CLOCK_WITHIN_MS,
            "a clock stepped back",
        ),
        _ => (
            victim(cluster, rng).await,
            CLOCK_BEYOND_MS,
            "a clock ahead beyond the bound",
        ),
    };
    clocks
        .set(node, offset)
        .unwrap_or_else(|e| panic!("setting the clock of node {node}: {e}"));
    (
        Fault::ClockOff,
        format!("{kind}: node {node} at {offset:+} ms"),
    )
}

/// Isolates the leader, splits off a minority, or bridges two halves through one node.
async fn partition(cluster: &Cluster, rng: &mut StdRng) -> String {
    let leader = cluster.try_leader().await;
    let n = cluster.len();
    let mut nodes: Vec<usize> = (0..n).collect();
    nodes.shuffle(rng);
    match (rng.random_range(0..3), leader) {
        (0, Some(leader)) => {
            cluster.isolate(leader);
            format!("isolate leader node {leader}")
        }
        (1, _) => {
            let (bridge, rest) = nodes.split_first().expect("not empty");
            let (left, right) = rest.split_at(rest.len() / 2);
            cluster.cut(left, right);
            format!("bridge {left:?} and {right:?} through node {bridge} alone")
        }
        _ => {
            let (minority, majority) = nodes.split_at(((n - 1) / 2).max(1));
            cluster.partition(&[minority.to_vec(), majority.to_vec()]);
            format!("partition minority {minority:?} from majority {majority:?}")
        }
    }
}

/// Removes a member (the leader half of the time) and stops it, or moves leadership.
async fn change_membership(cluster: &mut Cluster, rng: &mut StdRng) -> (Fault, String) {
    let admin = admin(cluster);
    if rng.random_bool(1.0 / 3.0) {
        let leader = cluster.try_leader().await;
        let others: Vec<usize> = (0..cluster.len()).filter(|&i| Some(i) != leader).collect();
        let to = *others.choose(rng).expect("a cluster of at least two");
        let what = match admin.transfer_leader(Some(cluster.node(to).id())).await {
            Ok(id) => format!("transfer leadership to node {to}: {id} leads"),
            Err(e) => format!("transfer leadership to node {to} failed: {e}"),
        };
        return (Fault::Done, what);
    }
    let node = victim(cluster, rng).await;
    let id = cluster.node(node).id().to_string();
    let removed = admin.remove(&id).await;
    cluster.kill(node);
    // Wiping makes the node come back under a new ID, which the cluster only takes once the old
    // member is gone; after a failed removal it is not known to be.
    let wiped = removed.is_ok() && rng.random_bool(0.5);
    if wiped {
        cluster.wipe(node);
    }
    let what = match removed {
        Ok(()) if wiped => format!("remove node {node} ({id}), stop it and wipe its data"),
        Ok(()) => format!("remove node {node} ({id}) and stop it, data kept"),
        Err(e) => format!("remove node {node} ({id}) failed ({e}); stop it, data kept"),
    };
    (Fault::Removed(node), what)
}

/// A client for membership changes, patient enough to wait out an election.
fn admin(cluster: &Cluster) -> Client {
    let options = ClientOptions {
        timeout: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    Client::connect(cluster.endpoints(), options).expect("valid endpoints and options")
}

/// Undoes `fault`; says what it did.
async fn heal(cluster: &mut Cluster, fault: Fault, hardware: &Hardware) -> String {
    match fault {
        Fault::Killed(node) => cluster.restart(node).await,
        Fault::Paused(node) => cluster.resume(node),
        Fault::Failpoint(node) => return failpoint::heal(cluster, node).await,
        Fault::PoweredOff(nodes) => {
            for node in nodes {
                cluster.restart(node).await;
            }
        }
        Fault::ClockOff => {
            let clocks = hardware.clocks.as_ref().expect("a clock fault had clocks");
            clocks
                .reset()
                .unwrap_or_else(|e| panic!("setting the clocks right: {e}"));
            // libfaketime takes a new offset on its next re-read of the file.
            tokio::time::sleep(Duration::from_secs(clock::REREAD_S + 1)).await;
        }
        Fault::InLayer => {
            cluster.heal();
            cluster.faults_in_force().await;
        }
        // A wiped node comes back as a new node with a new ID; one with its data as the same
        // node, added back under its old ID (or still a member if the removal failed).
        Fault::Removed(node) => {
            cluster.restart(node).await;
            cluster.join(node).await;
        }
        Fault::Done => {}
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
