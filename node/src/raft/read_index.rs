//! The read-index rounds of one node: concurrent linearizable reads share one confirmation of
//! leadership (as leader, its followers' `ReadIndex` requests included) or one `ReadIndex`
//! request to the leader (as follower). What a round does is the replica's (`replica::read`);
//! this module only queues reads into rounds (`read_batch`) and hands out their outcome.

use futures::FutureExt;

use crate::deadline::Deadline;
use crate::error::Error;
use crate::raft::read_batch::ReadRounds;
use crate::raft::read_batch::RoundRunner;
use crate::raft::read_batch::read_rounds;

/// Where a linearizable read stands once its round is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadPoint {
    /// The log index the read must observe.
    pub(crate) index: u64,
    /// The leader's cluster time at the read point, which the read judges expiry by; 0 when the
    /// leader did not tell it.
    pub(crate) cluster_time_ms: u64,
}

/// What one round answers.
pub(crate) type RoundOutcome = Result<ReadPoint, Error>;

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

    /// Where a linearizable read arriving now stands, confirmed by this node as leader. What the
    /// peer `ReadIndex` RPC answers.
    pub(crate) async fn leader_point(&self, deadline: &Deadline) -> RoundOutcome {
        join(&self.as_leader, deadline).await
    }

    /// Where a linearizable read arriving now stands, asked of the leader in a round shared with
    /// this follower's concurrent reads.
    pub(crate) async fn point_via_leader(&self, deadline: &Deadline) -> RoundOutcome {
        join(&self.via_leader, deadline).await
    }
}

impl ReadIndexRunners {
    /// Runs both queues' rounds until `stop` resolves: `confirm` confirms this node's leadership
    /// for one round, `ask_leader` asks the leader for one round of a follower's reads.
    pub(crate) async fn run<C, CF, A, AF>(
        self,
        confirm: C,
        ask_leader: A,
        stop: impl Future<Output = ()>,
    ) where
        C: FnMut() -> CF,
        CF: Future<Output = RoundOutcome>,
        A: FnMut() -> AF,
        AF: Future<Output = RoundOutcome>,
    {
        let stop = stop.shared();
        tokio::join!(
            self.as_leader.run(confirm, stop.clone()),
            self.via_leader.run(ask_leader, stop),
        );
    }
}

async fn join(rounds: &ReadRounds<RoundOutcome>, deadline: &Deadline) -> RoundOutcome {
    match deadline.run(rounds.next_round()).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => Err(Error::ShuttingDown),
        Err(()) => Err(Error::ReadTimeout(deadline.total_ms())),
    }
}
