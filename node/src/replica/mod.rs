//! One replica of the cluster's state: the core every face of the node (gRPC, RESP) calls.
//!
//! It owns the routing decision for each request — serve here, propose here, or forward to the
//! leader — and holds every request to the node's deadline, so a face only decodes, calls and
//! encodes. `Replica` is built by [`Replica::new`] and its fields are private: everything that
//! needs them `impl`s it in this folder — `kv` (writes and reads), `read` (linearizable reads),
//! `cluster_time` (the time expiry is judged by), `membership`, `backup`, `drain` (graceful
//! stop) — and faces use its methods.

pub(crate) mod backup;
pub(crate) mod cluster_time;
pub(crate) mod drain;
pub(crate) mod kv;
pub(crate) mod membership;
pub(crate) mod read;

use std::sync::Arc;
use std::time::Duration;

use openraft::Instant as _;
use openraft::RaftMetrics;
use openraft::ServerState;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::StoredMembershipOf;
use openraft::async_runtime::WatchReceiver;

use crate::config::NodeConfig;
use crate::deadline::Deadline;
use crate::error::Error;
use crate::error::Result;
use crate::fault::Faults;
use crate::identity::Identity;
use crate::raft::Raft;
use crate::raft::clock::ClusterClock;
use crate::raft::forward::Forwarder;
use crate::raft::network::PeerNetwork;
use crate::raft::read_index::ReadIndexRounds;
use crate::raft::read_index::ReadIndexRunners;
use crate::replica::drain::Drain;
use crate::replica::drain::RequestGuard;
use crate::store::compaction;
use crate::store::entry::MemberAddr;
use crate::store::entry::TypeConfig;
use crate::store::snapshot::SnapshotReceiver;
use crate::store::state_machine::StateMachine;
use crate::tls::Tls;

/// Everything a request handler needs; shared by all faces, which reach it only through its
/// methods.
pub(crate) struct Replica {
    raft: Raft,
    state: StateMachine,
    identity: Identity,
    config: NodeConfig,
    /// This node's own advertised addresses.
    advertised: MemberAddr,
    peers: PeerNetwork,
    /// Test-only fault injection (inert without `--fault-control-file`), shared with `peers`.
    faults: Arc<Faults>,
    forwarder: Forwarder,
    /// Linearizable reads wait here for a read-index round they share with concurrent reads.
    read_index: ReadIndexRounds,
    drain: Drain,
    /// Bounds the writes being proposed at once, so overload slows clients down instead of
    /// growing queues without limit.
    proposals: tokio::sync::Semaphore,
    /// Serializes Initialize calls.
    init_lock: tokio::sync::Mutex<()>,
    /// One permit per backup that may stream at once (`--max-backups`).
    backups: Arc<tokio::sync::Semaphore>,
    /// The cluster time this node hands out (`cluster_time`).
    cluster_clock: ClusterClock,
}

/// Why the Raft core stopped, if it stopped for a reason other than a shutdown.
fn core_failure(metrics: &RaftMetrics<TypeConfig>) -> Option<String> {
    match &metrics.running_state {
        Ok(()) | Err(openraft::errors::Fatal::Stopped) => None,
        Err(fatal) => Some(fatal.to_string()),
    }
}

/// Writes a leader proposes at once; more wait (within their deadline) for a slot.
const MAX_PROPOSALS_IN_FLIGHT: usize = 4096;

/// Who leads, as this node knows it.
#[derive(Debug, Clone)]
pub(crate) enum Leadership {
    /// This node leads.
    Here,
    /// Another member leads; its addresses.
    There { id: u64, addr: MemberAddr },
    /// No leader is known.
    Unknown,
}

impl Replica {
    /// The core of a node around its running Raft, and the read-index rounds it needs run
    /// (`read::run_rounds`) for as long as it serves.
    pub(crate) fn new(
        config: NodeConfig,
        advertised: MemberAddr,
        identity: Identity,
        raft: Raft,
        state: StateMachine,
        peers: PeerNetwork,
        client_tls: Option<Arc<Tls>>,
    ) -> (Arc<Self>, ReadIndexRunners) {
        let (read_index, runners) = ReadIndexRounds::new();
        let faults = peers.faults().clone();
        let replica = Replica {
            backups: Arc::new(tokio::sync::Semaphore::new(config.max_backups)),
            identity,
            forwarder: Forwarder::new(
                config.max_message_bytes(),
                config.max_reply_bytes,
                peers.tls().cloned(),
                client_tls,
            ),
            raft,
            state,
            config,
            advertised,
            peers,
            faults,
            read_index,
            drain: Drain::default(),
            proposals: tokio::sync::Semaphore::new(MAX_PROPOSALS_IN_FLIGHT),
            init_lock: tokio::sync::Mutex::new(()),
            cluster_clock: ClusterClock::default(),
        };
        (Arc::new(replica), runners)
    }

    /// The running Raft node.
    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The configuration the node runs with.
    pub(crate) fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Who this node is and which cluster it belongs to.
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This node's own advertised addresses.
    pub(crate) fn advertised(&self) -> &MemberAddr {
        &self.advertised
    }

    /// The injected faults (inert outside tests).
    pub(crate) fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// How many keys this replica holds, expired ones not yet purged included.
    pub(crate) fn key_count(&self) -> usize {
        self.state.read(|data, _| data.len())
    }

    /// Resolves with what Raft should do next to keep the log compact: a snapshot, a purge.
    pub(crate) async fn compaction_requests(&self) -> Vec<compaction::Request> {
        self.state.compaction().next().await
    }

    /// Starts receiving a snapshot the leader sends; what it wrote is removed if it is dropped
    /// unfinished.
    pub(crate) fn receive_snapshot(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
    ) -> std::io::Result<SnapshotReceiver> {
        self.state.receive_snapshot(meta)
    }

    /// Admits a request and gives it the node's deadline.
    pub(crate) fn admit(&self) -> Result<(RequestGuard, Deadline)> {
        Ok((
            self.drain.enter()?,
            Deadline::after(self.config.request_timeout()),
        ))
    }

    /// A copy of openraft's current metrics.
    pub(crate) fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Runs `f` on openraft's current metrics without copying them: the request path asks who
    /// leads on every request, and a copy of the metrics is a dozen allocations.
    pub(crate) fn with_metrics<T>(&self, f: impl FnOnce(&RaftMetrics<TypeConfig>) -> T) -> T {
        let metrics = self.raft.metrics();
        let current = metrics.borrow_watched();
        f(&current)
    }

    /// Resolves when the Raft core has stopped other than by shutdown (a storage error, a
    /// panic), with the cause: from then on this node can commit, apply and lead nothing.
    pub(crate) async fn core_stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(cause) = core_failure(&metrics.borrow_watched()) {
                return cause;
            }
            if metrics.changed().await.is_err() {
                return "the Raft core ended unexpectedly (panicked)".into();
            }
        }
    }

    /// Whether the Raft core still runs (it stops on a storage error or a panic).
    pub(crate) fn core_running(&self) -> bool {
        self.with_metrics(|metrics| metrics.running_state.is_ok())
    }

    pub(crate) fn membership(&self) -> Arc<StoredMembershipOf<TypeConfig>> {
        self.with_metrics(|metrics| metrics.membership_config.clone())
    }

    pub(crate) fn is_member(&self) -> bool {
        self.membership()
            .get_node(&self.identity.node_id())
            .is_some()
    }

    /// Who leads, as far as this node can tell. A leader that has not heard from a quorum within
    /// its lease (an election timeout's worth) is no leader for clients: it cannot commit, and
    /// the rest of the cluster may well have elected another.
    pub(crate) fn leadership(&self) -> Leadership {
        let me = self.identity.node_id();
        self.with_metrics(|metrics| match metrics.current_leader {
            Some(id) if id == me && metrics.state == ServerState::Leader => {
                match self.lease_lost(metrics) {
                    None => Leadership::Here,
                    Some(_) => Leadership::Unknown,
                }
            }
            Some(id) if id != me => match metrics.membership_config.get_node(&id) {
                Some(addr) => Leadership::There {
                    id,
                    addr: addr.clone(),
                },
                None => Leadership::Unknown,
            },
            _ => Leadership::Unknown,
        })
    }

    /// The leader's node ID, when one is known (see [`Replica::leadership`]).
    pub(crate) fn leader_id(&self) -> Option<u64> {
        match self.leadership() {
            Leadership::Here => Some(self.identity.node_id()),
            Leadership::There { id, .. } => Some(id),
            Leadership::Unknown => None,
        }
    }

    /// The leader's client address, for hints in errors.
    pub(crate) fn leader_hint(&self) -> Option<String> {
        match self.leadership() {
            Leadership::Here => Some(self.advertised.addr.clone()),
            Leadership::There { addr, .. } => Some(addr.addr),
            Leadership::Unknown => None,
        }
    }

    /// The error for "not the leader and cannot forward": nothing was applied.
    pub(crate) fn not_leader(&self) -> Error {
        if !self.is_member() {
            return Error::NotMember;
        }
        let metrics = self.metrics();
        if metrics.state == ServerState::Leader
            && let Some(reason) = self.lease_lost(&metrics)
        {
            return Error::NoQuorum(reason);
        }
        Error::NotLeader {
            leader: self.leader_hint(),
        }
    }

    /// Why this leader's quorum lease has run out, if it has: no quorum acknowledged it within
    /// the maximum election timeout (openraft's own lease, after which it refuses proposals).
    fn lease_lost(&self, metrics: &RaftMetrics<TypeConfig>) -> Option<String> {
        let me = self.identity.node_id();
        if metrics
            .membership_config
            .membership()
            .voter_ids()
            .all(|v| v == me)
        {
            return None;
        }
        let lease = Duration::from_millis(self.config.election_timeout_ms * 2);
        match &metrics.last_quorum_acked {
            Some(acked) if acked.elapsed() <= lease => None,
            Some(acked) => Some(format!(
                "this leader has not heard from a quorum for {} ms",
                acked.elapsed().as_millis()
            )),
            None => Some("this leader has not been acknowledged by a quorum yet".into()),
        }
    }
}
