//! Linearizable reads: the leader confirms that it still leads (ReadIndex: a quorum
//! acknowledges a heartbeat sent after the read arrived; LeaseRead: a quorum acknowledged one
//! within the leader lease) and names the log index a read must see and the cluster time it
//! judges expiry by; any member that has applied up to that index may then serve the read from
//! its own state, whatever its own clock says. Followers ask the leader for the
//! index over the peer API, so a read never moves key-value data across the network twice.
//!
//! Confirmations are batched per node (`raft::read_index`): concurrent reads on the leader, its
//! followers' `ReadIndex` requests included, share one confirmation; concurrent reads on a
//! follower share one `ReadIndex` request to the leader.

use std::sync::Arc;

use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;

use crate::config::ReadPolicy as ConfiguredPolicy;
use crate::deadline::Deadline;
use crate::error::Error;
use crate::raft::peer_proto::ReadIndexResponse;
use crate::raft::read_index::ReadIndexRunners;
use crate::raft::read_index::ReadPoint;
use crate::raft::read_index::RoundOutcome;
use crate::replica::Leadership;
use crate::replica::Replica;

/// Runs this node's read-index rounds for `replica` until `stop` resolves.
pub(crate) async fn run_rounds(
    runners: ReadIndexRunners,
    replica: Arc<Replica>,
    stop: impl Future<Output = ()>,
) {
    let confirm = {
        let replica = replica.clone();
        move || {
            let replica = replica.clone();
            async move { confirm_leadership(&replica, &round_deadline(&replica)).await }
        }
    };
    let ask = move || {
        let replica = replica.clone();
        async move { ask_leader(&replica).await }
    };
    runners.run(confirm, ask, stop).await;
}

impl Replica {
    /// Where a linearizable read arriving now stands (index and cluster time), confirmed by this
    /// node as leader: what the peer `ReadIndex` RPC answers a follower.
    pub(crate) async fn leader_read_point(&self, deadline: &Deadline) -> Result<ReadPoint, Error> {
        self.read_index.leader_point(deadline).await
    }
}

/// Waits until this node has applied everything a linearizable read started now must see; where
/// the read stands.
pub(crate) async fn await_linearizable(
    replica: &Replica,
    deadline: &Deadline,
) -> Result<ReadPoint, Error> {
    let point = match replica.leadership() {
        Leadership::Here => replica.read_index.leader_point(deadline).await?,
        Leadership::There { .. } => replica.read_index.point_via_leader(deadline).await?,
        Leadership::Unknown => return Err(replica.not_leader()),
    };
    match deadline.run(applied_at_least(replica, point.index)).await {
        Ok(true) => Ok(point),
        Ok(false) => Err(Error::ShuttingDown),
        Err(()) => Err(Error::ReadTimeout(deadline.total_ms())),
    }
}

/// Waits until the state machine has applied `index`; false if Raft stopped first. Reads
/// openraft's metrics in place: `Raft::wait` copies them on every check, on every read.
async fn applied_at_least(replica: &Replica, index: u64) -> bool {
    let mut metrics = replica.raft.metrics();
    loop {
        let applied = metrics
            .borrow_and_update()
            .last_applied
            .map(|id| id.index());
        if applied.is_some_and(|applied| applied >= index) {
            return true;
        }
        if metrics.changed().await.is_err() {
            return false;
        }
    }
}

/// A round serves reads with deadlines of their own; it gets the node's request deadline.
fn round_deadline(replica: &Replica) -> Deadline {
    Deadline::after(replica.config.request_timeout())
}

/// One confirmation by this node as leader, under the configured read policy.
async fn confirm_leadership(replica: &Replica, deadline: &Deadline) -> RoundOutcome {
    let read = move |policy| async move {
        deadline
            .run(replica.raft.get_read_log_id(policy))
            .await
            .map_err(|()| Error::ReadTimeout(deadline.total_ms()))
    };
    let mut outcome = match replica.config.read_policy {
        ConfiguredPolicy::ReadIndex => read(ReadPolicy::ReadIndex).await?,
        ConfiguredPolicy::Lease => read(ReadPolicy::LeaseRead).await?,
    };
    // openraft refuses a lease read at once when no quorum acknowledged a heartbeat within the
    // lease (just after an election, or while followers are slow); a quorum round still can.
    if let Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) = outcome
        && replica.config.read_policy == ConfiguredPolicy::Lease
    {
        outcome = read(ReadPolicy::ReadIndex).await?;
    }
    match outcome {
        Ok((read_log_id, _applied)) => Ok(ReadPoint {
            index: read_log_id.index(),
            cluster_time_ms: replica.leader_read_time_ms(),
        }),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
            Err(replica.not_leader())
        }
        Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e))) => {
            tracing::debug!(error = %e, "leadership not confirmed");
            Err(Error::NoQuorum(
                "this leader could not confirm its leadership with a quorum".into(),
            ))
        }
        Err(RaftError::Fatal(e)) => Err(Error::Fatal(e.to_string())),
    }
}

/// One `ReadIndex` request to the leader for a follower's batch of reads.
async fn ask_leader(replica: &Replica) -> RoundOutcome {
    let deadline = round_deadline(replica);
    let (leader, peer_addr) = match replica.leadership() {
        Leadership::There { id, addr } => (id, addr.peer_addr),
        // Elected since these reads were queued: confirm here, within this same round.
        Leadership::Here => return confirm_leadership(replica, &deadline).await,
        Leadership::Unknown => return Err(replica.not_leader()),
    };
    let unreachable = || Error::NotLeader {
        leader: replica.leader_hint(),
    };
    if replica.faults().blocks(leader) {
        return Err(unreachable());
    }
    let mut client = replica
        .peers
        .leader_client(&peer_addr)
        .ok_or_else(unreachable)?;
    let mut req = tonic::Request::new(replica.peers.message(leader, bytes::Bytes::new()));
    req.set_timeout(deadline.remaining());
    let held = replica.faults().hold(leader);
    let call = async move {
        held.await;
        client.read_index(req).await
    };
    match deadline.run(call).await {
        Ok(Ok(resp)) => {
            let ReadIndexResponse {
                index,
                cluster_time_ms,
            } = resp.into_inner();
            Ok(ReadPoint {
                index,
                cluster_time_ms,
            })
        }
        Ok(Err(status)) => {
            tracing::debug!(%status, "leader refused read index");
            Err(unreachable())
        }
        Err(()) => Err(Error::ReadTimeout(deadline.total_ms())),
    }
}
