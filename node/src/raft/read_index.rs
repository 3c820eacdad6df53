//! Linearizable reads: the leader confirms that it still leads (ReadIndex: a quorum
//! acknowledges a heartbeat sent after the read arrived; LeaseRead: a quorum acknowledged one
//! within the leader lease) and names the log index a read must see; any member that has applied
//! up to that index may then serve the read from its own state. Followers ask the leader for the
//! index over the peer API, so a read never moves key-value data across the network twice.
//!
//! Confirmations are batched per node (`read_batch`): concurrent reads on the leader, its
//! followers' `ReadIndex` requests included, share one confirmation; concurrent reads on a
//! follower share one `ReadIndex` request to the leader.

use std::sync::Arc;

use futures::FutureExt;
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;

use crate::config::ReadPolicy as ConfiguredPolicy;
use crate::error::Error;
use crate::peer_proto::ReadIndexResponse;
use crate::raft::read_batch::ReadRounds;
use crate::raft::read_batch::RoundRunner;
use crate::raft::read_batch::read_rounds;
use crate::replica::Deadline;
use crate::replica::Leadership;
use crate::replica::Replica;

type RoundOutcome = Result<u64, Error>;

/// The read-index rounds of one node: confirmed here while it leads, asked of the leader while
/// it follows. Two queues, so a node that has just lost leadership never asks itself.
#[derive(Debug)]
pub(crate) struct ReadIndexRounds {
    as_leader: ReadRounds<RoundOutcome>,
    via_leader: ReadRounds<RoundOutcome>,
}

/// Runs the rounds of [`ReadIndexRounds`]; see [`ReadIndexRunners::run`].
#[derive(Debug)]
pub(crate) struct ReadIndexRunners {
    as_leader: RoundRunner<RoundOutcome>,
    via_leader: RoundRunner<RoundOutcome>,
}

impl ReadIndexRounds {
    pub(crate) fn new() -> (Self, ReadIndexRunners) {
        let (as_leader, as_leader_runner) = read_rounds();
        let (via_leader, via_leader_runner) = read_rounds();
        (
            Self {
                as_leader,
                via_leader,
            },
            ReadIndexRunners {
                as_leader: as_leader_runner,
                via_leader: via_leader_runner,
            },
        )
    }

    /// The index a linearizable read arriving now must observe, confirmed by this node as
    /// leader. What the peer `ReadIndex` RPC answers.
    pub(crate) async fn leader_index(&self, deadline: &Deadline) -> Result<u64, Error> {
        join(&self.as_leader, deadline).await
    }
}

impl ReadIndexRunners {
    /// Runs both queues' rounds for `replica` until `stop` resolves.
    pub(crate) async fn run(self, replica: Arc<Replica>, stop: impl Future<Output = ()>) {
        let stop = stop.shared();
        let as_leader = {
            let replica = replica.clone();
            move || {
                let replica = replica.clone();
                async move { confirm_leadership(&replica, &round_deadline(&replica)).await }
            }
        };
        let via_leader = move || {
            let replica = replica.clone();
            async move { ask_leader(&replica).await }
        };
        tokio::join!(
            self.as_leader.run(as_leader, stop.clone()),
            self.via_leader.run(via_leader, stop),
        );
    }
}

/// Waits until this node has applied everything a linearizable read started now must see.
pub(crate) async fn await_linearizable(
    replica: &Replica,
    deadline: &Deadline,
) -> Result<(), Error> {
    let rounds = match replica.leadership() {
        Leadership::Here => &replica.read_index.as_leader,
        Leadership::There { .. } => &replica.read_index.via_leader,
        Leadership::Unknown => return Err(replica.not_leader()),
    };
    let index = join(rounds, deadline).await?;
    match deadline.run(applied_at_least(replica, index)).await {
        Ok(true) => Ok(()),
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

async fn join(rounds: &ReadRounds<RoundOutcome>, deadline: &Deadline) -> Result<u64, Error> {
    match deadline.run(rounds.next_round()).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => Err(Error::ShuttingDown),
        Err(()) => Err(Error::ReadTimeout(deadline.total_ms())),
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
        Ok((read_log_id, _applied)) => Ok(read_log_id.index()),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
            Err(replica.not_leader())
        }
        Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e))) => {
            Err(Error::NoQuorum(e.to_string()))
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
    if replica.peers.faults().blocks(leader) {
        return Err(unreachable());
    }
    let mut client = replica.peers.client(&peer_addr).ok_or_else(unreachable)?;
    let mut req = tonic::Request::new(replica.peers.message(leader, bytes::Bytes::new()));
    req.set_timeout(deadline.remaining());
    let held = replica.peers.faults().hold(leader);
    let call = async move {
        held.await;
        client.read_index(req).await
    };
    match deadline.run(call).await {
        Ok(Ok(resp)) => {
            let ReadIndexResponse { index } = resp.into_inner();
            Ok(index)
        }
        Ok(Err(status)) => {
            tracing::debug!(%status, "leader refused read index");
            Err(unreachable())
        }
        Err(()) => Err(Error::ReadTimeout(deadline.total_ms())),
    }
}
