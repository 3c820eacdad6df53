//! Client sessions: what makes a retried write apply once.
//!
//! A client numbers its writes (`WriteId { client_id, sequence }`). For each client the state
//! machine remembers the outcome of its [`REMEMBERED_PER_CLIENT`] highest sequences, so a retry
//! of one of them is answered with the first outcome instead of being applied again. A sequence
//! below the oldest remembered one cannot be judged — it may have been applied and forgotten — and
//! is refused; a sequence not remembered but above that is new (clients may skip numbers).
//!
//! Sessions are part of the replicated state, so everything here is deterministic: when more than
//! [`MAX_CLIENTS`] clients are tracked, every replica evicts the same client, the one whose last
//! write has the lowest log index.
//!
//! Like the keyspace, the table is split into shards behind `Arc`s (and each client's session
//! behind its own `Arc`), so cloning it for a snapshot is O(shards) and a later write copies only
//! the shard and the session it touches.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::store::command::Outcome;
use crate::store::command::WriteId;

/// Outcomes remembered per client.
pub(crate) const REMEMBERED_PER_CLIENT: usize = 64;

/// Clients tracked at most; past this the least recently writing client is forgotten.
pub(crate) const MAX_CLIENTS: usize = 100_000;

const SHARDS: usize = 256;

/// What the sessions say about a write before it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dedup {
    /// Not seen: apply it.
    New,
    /// Already applied: answer with this outcome, apply nothing.
    Duplicate(Outcome),
    /// Older than anything remembered for the client: whether it was applied cannot be told.
    TooOld { oldest_remembered: u64 },
}

/// The remembered writes of every tracked client.
#[derive(Clone)]
pub(crate) struct Sessions {
    shards: Vec<Arc<SessionShard>>,
    clients: usize,
}

#[derive(Clone, Default)]
struct SessionShard {
    clients: BTreeMap<u64, Arc<ClientSession>>,
    /// (last log index, client id) of every client of the shard: the eviction order.
    by_last_index: BTreeSet<(u64, u64)>,
}

/// One client's remembered writes.
#[derive(Clone, Default)]
pub(crate) struct ClientSession {
    /// Log index of the client's most recent write.
    last_index: u64,
    /// (sequence, outcome), ascending by sequence; never empty once recorded.
    remembered: VecDeque<(u64, Outcome)>,
}

impl Default for Sessions {
    fn default() -> Self {
        let empty = Arc::new(SessionShard::default());
        Sessions {
            shards: vec![empty; SHARDS],
            clients: 0,
        }
    }
}

impl Sessions {
    /// Whether `id` is new, a duplicate, or too old to tell.
    pub(crate) fn check(&self, id: WriteId) -> Dedup {
        let Some(session) = self.shards[shard_index(id.client_id)]
            .clients
            .get(&id.client_id)
        else {
            return Dedup::New;
        };
        let Some(&(oldest, _)) = session.remembered.front() else {
            return Dedup::New;
        };
        if id.sequence < oldest {
            return Dedup::TooOld {
                oldest_remembered: oldest,
            };
        }
        match session.position(id.sequence) {
            Ok(i) => Dedup::Duplicate(session.remembered[i].1.clone()),
            Err(_) => Dedup::New,
        }
    }

    /// Remembers the outcome of write `id`, applied at `log_index`.
    pub(crate) fn record(&mut self, id: WriteId, log_index: u64, outcome: Outcome) {
        let shard = Arc::make_mut(&mut self.shards[shard_index(id.client_id)]);
        let is_new = !shard.clients.contains_key(&id.client_id);
        let session = Arc::make_mut(shard.clients.entry(id.client_id).or_default());
        if !is_new {
            shard
                .by_last_index
                .remove(&(session.last_index, id.client_id));
        }
        session.last_index = log_index;
        match session.position(id.sequence) {
            Ok(i) => session.remembered[i].1 = outcome,
            Err(i) => session.remembered.insert(i, (id.sequence, outcome)),
        }
        if session.remembered.len() > REMEMBERED_PER_CLIENT {
            session.remembered.pop_front();
        }
        shard.by_last_index.insert((log_index, id.client_id));
        if is_new {
            self.clients += 1;
            if self.clients > MAX_CLIENTS {
                self.evict_least_recent();
            }
        }
    }

    /// Number of tracked clients.
    pub(crate) fn len(&self) -> usize {
        self.clients
    }

    /// Every tracked client with its session, in a deterministic order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &ClientSession)> {
        self.shards
            .iter()
            .flat_map(|shard| shard.clients.iter())
            .map(|(&client_id, session)| (client_id, &**session))
    }

    /// Forgets the client whose last write has the lowest log index (ties, which a log does not
    /// produce, go to the lowest client id).
    fn evict_least_recent(&mut self) {
        let oldest = self
            .shards
            .iter()
            .enumerate()
            .filter_map(|(index, shard)| shard.by_last_index.first().map(|&key| (key, index)))
            .min();
        let Some(((last_index, client_id), index)) = oldest else {
            return;
        };
        let shard = Arc::make_mut(&mut self.shards[index]);
        shard.by_last_index.remove(&(last_index, client_id));
        shard.clients.remove(&client_id);
        self.clients -= 1;
    }
}

impl ClientSession {
    /// Log index of the client's most recent write.
    pub(crate) fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The remembered (sequence, outcome) pairs, ascending by sequence.
    pub(crate) fn remembered(&self) -> impl ExactSizeIterator<Item = (u64, &Outcome)> {
        self.remembered
            .iter()
            .map(|(sequence, outcome)| (*sequence, outcome))
    }

    fn position(&self, sequence: u64) -> Result<usize, usize> {
        self.remembered.binary_search_by_key(&sequence, |&(s, _)| s)
    }
}

/// Spreads client ids (often small or sequential) over the shards.
fn shard_index(client_id: u64) -> usize {
    (client_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (u64::BITS - SHARDS.trailing_zeros()))
        as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Refusal;
    use crate::store::command::BatchOutcome;

    fn id(client_id: u64, sequence: u64) -> WriteId {
        WriteId {
            client_id,
            sequence,
        }
    }

    /// An outcome that says which sequence it belongs to.
    fn outcome(sequence: u64) -> Outcome {
        Outcome::Refused(Refusal::Overflow {
            op: usize::try_from(sequence).expect("small test sequence"),
        })
    }

    #[test]
    fn an_unknown_client_is_new() {
        assert_eq!(Sessions::default().check(id(1, 1)), Dedup::New);
    }

    #[test]
    fn a_retry_gets_the_first_outcome() {
        let mut sessions = Sessions::default();
        let applied = Outcome::Applied(BatchOutcome {
            index: 10,
            succeeded: true,
            results: vec![],
        });
        sessions.record(id(7, 1), 10, applied.clone());
        assert_eq!(sessions.check(id(7, 1)), Dedup::Duplicate(applied));
        assert_eq!(
            sessions.check(id(8, 1)),
            Dedup::New,
            "other clients are apart"
        );
    }

    #[test]
    fn higher_sequences_and_gaps_are_new_and_lower_ones_too_old() {
        let mut sessions = Sessions::default();
        for (index, sequence) in [(1, 5), (2, 7), (3, 9)] {
            sessions.record(id(1, sequence), index, outcome(sequence));
        }
        assert_eq!(sessions.check(id(1, 10)), Dedup::New);
        assert_eq!(
            sessions.check(id(1, 6)),
            Dedup::New,
            "a gap inside the window"
        );
        assert_eq!(sessions.check(id(1, 7)), Dedup::Duplicate(outcome(7)));
        assert_eq!(
            sessions.check(id(1, 4)),
            Dedup::TooOld {
                oldest_remembered: 5
            }
        );

        sessions.record(id(1, 6), 4, outcome(6));
        let remembered: Vec<u64> = sessions
            .iter()
            .flat_map(|(_, s)| s.remembered().map(|(q, _)| q))
            .collect();
        assert_eq!(remembered, [5, 6, 7, 9], "kept in sequence order");
    }

    #[test]
    fn only_the_newest_sequences_are_remembered() {
        let mut sessions = Sessions::default();
        let total = REMEMBERED_PER_CLIENT as u64 + 10;
        for sequence in 1..=total {
            sessions.record(id(1, sequence), sequence, outcome(sequence));
        }
        let oldest = total - REMEMBERED_PER_CLIENT as u64 + 1;
        assert_eq!(
            sessions.check(id(1, oldest)),
            Dedup::Duplicate(outcome(oldest))
        );
        assert_eq!(
            sessions.check(id(1, oldest - 1)),
            Dedup::TooOld {
                oldest_remembered: oldest
            }
        );
        assert_eq!(
            sessions.check(id(1, total)),
            Dedup::Duplicate(outcome(total))
        );
    }

    #[test]
    fn past_the_limit_the_client_with_the_oldest_last_write_is_evicted() {
        let mut sessions = Sessions::default();
        // Client c writes at index 2c + 1; client 0 writes again, last of all.
        for client in 0..MAX_CLIENTS as u64 {
            sessions.record(id(client, 1), 2 * client + 1, outcome(1));
        }
        sessions.record(id(0, 2), 2 * MAX_CLIENTS as u64, outcome(2));
        assert_eq!(sessions.len(), MAX_CLIENTS);

        sessions.record(id(u64::MAX, 1), 2 * MAX_CLIENTS as u64 + 1, outcome(1));
        assert_eq!(sessions.len(), MAX_CLIENTS);
        assert_eq!(
            sessions.check(id(1, 1)),
            Dedup::New,
            "client 1 had the oldest last write"
        );
        assert_eq!(
            sessions.check(id(0, 1)),
            Dedup::Duplicate(outcome(1)),
            "client 0 wrote recently"
        );
        assert_eq!(sessions.check(id(2, 1)), Dedup::Duplicate(outcome(1)));
        assert_eq!(
            sessions.check(id(u64::MAX, 1)),
            Dedup::Duplicate(outcome(1))
        );
    }

    #[test]
    fn a_clone_is_unaffected_by_later_records() {
        let mut sessions = Sessions::default();
        sessions.record(id(1, 1), 1, outcome(1));
        let snapshot = sessions.clone();
        sessions.record(id(1, 2), 2, outcome(2));
        sessions.record(id(2, 1), 3, outcome(1));
        assert_eq!(snapshot.check(id(1, 2)), Dedup::New);
        assert_eq!(snapshot.len(), 1);
        assert_eq!(
            snapshot
                .iter()
                .map(|(_, s)| s.last_index())
                .collect::<Vec<_>>(),
            [1]
        );
    }
}
