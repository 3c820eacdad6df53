//! Client sessions: what makes a retried write apply once.
//!
//! A client numbers its writes (`WriteId { client_id, sequence }`) and, if it is a current
//! client, sends with each its *watermark* `acked_below`: the lowest sequence it has not yet seen
//! answered (Raft thesis §6.3, as LogCabin does). For each client the state machine keeps a
//! session: the outcomes it remembers and a *floor* below which it remembers none. The rules,
//! applied in log order and so identically on every replica:
//!
//! - **Watermark.** A write raises its session's floor to its `acked_below`, and outcomes below
//!   the floor are discarded: the client has seen their answers and will not retry them. Every
//!   outcome at or above the floor is kept, so a write overtaken by any number of newer writes of
//!   the same client is still applied once, and its retry gets the first outcome.
//! - **In flight.** A session keeps at most [`MAX_IN_FLIGHT`] sequences at or above its floor: a
//!   write at `floor + MAX_IN_FLIGHT` or beyond is refused, not applied
//!   ([`Refusal::TooManyInFlight`]). The client library never sends one (it waits instead).
//! - **Old clients** send no watermark (0). For them the floor follows the count: the
//!   [`REMEMBERED_PER_CLIENT`] highest sequences are kept, and the floor is one past the highest
//!   sequence forgotten. (Before, anything below the oldest remembered sequence was refused, so
//!   a fresh client's concurrent first writes, reordered on their way through followers, were
//!   refused as "too old" although nothing had been forgotten: the start-up failures of a
//!   shared client.)
//! - **Below the floor** a write may have been applied and forgotten (or acknowledged and then
//!   delayed in the network): it is never applied, and its answer is "outcome unknown"
//!   ([`Refusal::SequenceTooOld`]). A sequence at or above the floor that is not remembered is new.
//! - **Eviction.** Past `max_sessions` tracked clients the session whose last write has the lowest
//!   log index is evicted, leaving a *tombstone*: its client id and its floor, now one past the
//!   highest sequence it ever had applied. A write of an unknown client whose tombstone says it
//!   is below that floor may have been applied before the eviction, so it is never applied: it is
//!   answered [`Refusal::SessionExpired`]. A write at or above it was never applied (nothing of
//!   the client was applied since the eviction), so it is new and opens a session again with
//!   that floor. Tombstones are kept for the last `max_sessions` evictions.
//! - **Forgotten clients.** A write of a client with neither a session nor a tombstone whose
//!   watermark is above 1 comes from a client that has seen answers before (a new client's
//!   writes carry 1 until its first write is answered by the state machine: `kvs_client`'s
//!   `WriteSession`), so its session existed and was forgotten past the tombstone horizon: it is
//!   never applied, and is answered [`Refusal::SessionExpired`]. The client then continues under
//!   a fresh client id. An old client (watermark 0) forgotten that long ago is taken as new —
//!   the one horizon left, documented in `docs/correctness.md`.
//! - **Limits travel in the log.** `max_sessions` is what the leader that stamped the entry was
//!   configured with (`--max-sessions`), carried in the entry, so every replica evicts the same
//!   session at the same index whatever its own flag says.
//!
//! Memory: an outcome with previous values (GETSET, GETDEL, SET … GET, `return_previous`)
//! larger than [`MAX_KEPT_PREVIOUS_BYTES`] in all is remembered as [`Refusal::ReplyNotKept`]:
//! a retry learns that the write was applied and at which index, not the old value, so sessions
//! never pin large values. [`Sessions::bytes_used`] approximates what sessions and tombstones
//! hold; the memory quota counts it.
//!
//! Like the keyspace, the table is split into shards behind `Arc`s (and each client's session
//! behind its own `Arc`), so cloning it for a snapshot is O(shards) and a later write copies only
//! the shard and the session it touches.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::Refusal;
use crate::store::command::Outcome;
use crate::store::command::SessionStamp;
use crate::store::command::WriteId;

/// Outcomes remembered per client that sends no watermark.
pub(crate) const REMEMBERED_PER_CLIENT: usize = 64;

/// Sequences a session keeps at or above its floor (the per-client in-flight limit). The client
/// library keeps its unanswered writes within it (`kvs_client`'s `MAX_IN_FLIGHT`, equal).
pub(crate) const MAX_IN_FLIGHT: u64 = 1024;

/// Clients tracked when the entry names no limit (`--max-sessions` default).
pub(crate) const DEFAULT_MAX_SESSIONS: u64 = 100_000;

/// Previous values an outcome may hold, in all, and still be remembered with them.
pub(crate) const MAX_KEPT_PREVIOUS_BYTES: usize = 1024;

const SHARDS: usize = 256;

/// Approximate bytes of bookkeeping per session, per remembered outcome and per tombstone.
const SESSION_OVERHEAD: usize = 96;
const OUTCOME_OVERHEAD: usize = 48;
const TOMBSTONE_OVERHEAD: usize = 64;

/// What the sessions say about a write before it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dedup {
    /// Not seen: apply it.
    New,
    /// Already applied: answer with this outcome, apply nothing.
    Duplicate(Outcome),
    /// Not applied, now or ever: answer with this refusal and remember nothing.
    Refuse(Refusal),
}

/// The remembered writes of every tracked client, and the tombstones of evicted ones.
#[derive(Clone)]
pub(crate) struct Sessions {
    shards: Vec<Arc<SessionShard>>,
    clients: usize,
    tombstones: Arc<Tombstones>,
    /// Approximate bytes held by sessions and tombstones.
    bytes: usize,
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
    /// Below this sequence nothing is remembered (see the module doc).
    floor: u64,
    /// (sequence, outcome), ascending by sequence, all at or above `floor`.
    remembered: VecDeque<(u64, Outcome)>,
}

/// What is left of evicted sessions.
#[derive(Clone, Default)]
struct Tombstones {
    /// client id → (last log index, floor).
    by_client: BTreeMap<u64, (u64, u64)>,
    /// (last log index, client id): the order tombstones are dropped in.
    by_last_index: BTreeSet<(u64, u64)>,
}

impl Default for Sessions {
    fn default() -> Self {
        let empty = Arc::new(SessionShard::default());
        Sessions {
            shards: vec![empty; SHARDS],
            clients: 0,
            tombstones: Arc::default(),
            bytes: 0,
        }
    }
}

impl Sessions {
    /// Whether write `id`, carrying `stamp`, is new, a duplicate, or to be refused.
    pub(crate) fn check(&self, id: WriteId, stamp: &SessionStamp) -> Dedup {
        let sequence = id.sequence;
        let floor = match self.session(id.client_id) {
            Some(session) => {
                if let Ok(i) = session.position(sequence) {
                    return Dedup::Duplicate(session.remembered[i].1.clone());
                }
                session.floor
            }
            None => match self.tombstones.by_client.get(&id.client_id) {
                Some(&(_, floor)) if sequence < floor => {
                    return Dedup::Refuse(Refusal::SessionExpired { sequence });
                }
                Some(&(_, floor)) => floor,
                // Its watermark says it has seen answers, so it had a session, now forgotten.
                None if stamp.acked_below > 1 => {
                    return Dedup::Refuse(Refusal::SessionExpired { sequence });
                }
                None => 0,
            },
        };
        if sequence < floor.max(stamp.acked_below) {
            return Dedup::Refuse(Refusal::SequenceTooOld {
                sequence,
                oldest_remembered: floor.max(stamp.acked_below),
            });
        }
        let acked_below = floor.max(stamp.acked_below);
        if stamp.acked_below > 0 && sequence - acked_below >= MAX_IN_FLIGHT {
            return Dedup::Refuse(Refusal::TooManyInFlight {
                sequence,
                acked_below,
                limit: MAX_IN_FLIGHT,
            });
        }
        Dedup::New
    }

    /// Remembers the outcome of new write `id`, carrying `stamp`, applied at `log_index`.
    pub(crate) fn record(
        &mut self,
        id: WriteId,
        stamp: &SessionStamp,
        log_index: u64,
        outcome: Outcome,
    ) {
        let outcome = without_large_previous(outcome);
        let revived_floor = self.take_tombstone(id.client_id);
        let shard = Arc::make_mut(&mut self.shards[shard_index(id.client_id)]);
        let is_new = !shard.clients.contains_key(&id.client_id);
        let session = Arc::make_mut(shard.clients.entry(id.client_id).or_default());
        let before = if is_new { 0 } else { session.bytes() };
        if is_new {
            session.floor = revived_floor.unwrap_or(0);
        } else {
            shard
                .by_last_index
                .remove(&(session.last_index, id.client_id));
        }
        session.last_index = log_index;
        match session.position(id.sequence) {
            Ok(i) => session.remembered[i].1 = outcome,
            Err(i) => session.remembered.insert(i, (id.sequence, outcome)),
        }
        if stamp.acked_below > 0 {
            session.raise_floor(stamp.acked_below);
        } else if session.remembered.len() > REMEMBERED_PER_CLIENT {
            let (forgotten, _) = session.remembered[0];
            session.raise_floor(forgotten + 1);
        }
        self.bytes = self.bytes - before + session.bytes();
        shard.by_last_index.insert((log_index, id.client_id));
        if is_new {
            self.clients += 1;
            let max = usize::try_from(max_sessions(stamp)).unwrap_or(usize::MAX);
            while self.clients > max {
                self.evict_least_recent(max);
            }
        }
    }

    /// Number of tracked clients (tombstones not counted).
    pub(crate) fn len(&self) -> usize {
        self.clients
    }

    /// Approximate bytes held by sessions and tombstones.
    pub(crate) fn bytes_used(&self) -> usize {
        self.bytes
    }

    /// Every tracked client with its session, in a deterministic order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &ClientSession)> {
        self.shards
            .iter()
            .flat_map(|shard| shard.clients.iter())
            .map(|(&client_id, session)| (client_id, &**session))
    }

    /// Every tombstone as (client id, last log index, floor), in a deterministic order.
    pub(crate) fn tombstones(&self) -> impl ExactSizeIterator<Item = (u64, u64, u64)> + '_ {
        self.tombstones
            .by_client
            .iter()
            .map(|(&client_id, &(last_index, floor))| (client_id, last_index, floor))
    }

    /// Puts back a session read from a snapshot; `remembered` ascends, all at or above `floor`.
    pub(crate) fn restore(
        &mut self,
        client_id: u64,
        last_index: u64,
        floor: u64,
        remembered: VecDeque<(u64, Outcome)>,
    ) {
        let session = ClientSession {
            last_index,
            floor,
            remembered,
        };
        self.bytes += session.bytes();
        let shard = Arc::make_mut(&mut self.shards[shard_index(client_id)]);
        if let Some(old) = shard.clients.insert(client_id, Arc::new(session)) {
            self.bytes -= old.bytes();
            shard.by_last_index.remove(&(old.last_index, client_id));
        } else {
            self.clients += 1;
        }
        shard.by_last_index.insert((last_index, client_id));
    }

    /// Puts back a tombstone read from a snapshot.
    pub(crate) fn restore_tombstone(&mut self, client_id: u64, last_index: u64, floor: u64) {
        self.bury(client_id, last_index, floor);
    }

    fn session(&self, client_id: u64) -> Option<&ClientSession> {
        self.shards[shard_index(client_id)]
            .clients
            .get(&client_id)
            .map(|s| &**s)
    }

    /// Forgets the client whose last write has the lowest log index (ties, which a log does not
    /// produce, go to the lowest client id), leaving its tombstone; keeps at most `max`
    /// tombstones.
    fn evict_least_recent(&mut self, max: usize) {
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
        let session = shard
            .clients
            .remove(&client_id)
            .expect("the eviction order names tracked clients");
        self.clients -= 1;
        self.bytes -= session.bytes();
        let floor = session
            .remembered
            .back()
            .map_or(session.floor, |&(sequence, _)| sequence + 1)
            .max(session.floor);
        self.bury(client_id, last_index, floor);
        while self.tombstones.by_client.len() > max.max(1) {
            let tombstones = Arc::make_mut(&mut self.tombstones);
            let (_, client_id) = tombstones
                .by_last_index
                .pop_first()
                .expect("tombstones are indexed both ways");
            tombstones.by_client.remove(&client_id);
            self.bytes -= TOMBSTONE_OVERHEAD;
        }
    }

    fn bury(&mut self, client_id: u64, last_index: u64, floor: u64) {
        let tombstones = Arc::make_mut(&mut self.tombstones);
        if let Some((old_index, _)) = tombstones.by_client.insert(client_id, (last_index, floor)) {
            tombstones.by_last_index.remove(&(old_index, client_id));
        } else {
            self.bytes += TOMBSTONE_OVERHEAD;
        }
        tombstones.by_last_index.insert((last_index, client_id));
    }

    /// Removes the client's tombstone, if it has one, returning its floor.
    fn take_tombstone(&mut self, client_id: u64) -> Option<u64> {
        if !self.tombstones.by_client.contains_key(&client_id) {
            return None;
        }
        let tombstones = Arc::make_mut(&mut self.tombstones);
        let (last_index, floor) = tombstones.by_client.remove(&client_id)?;
        tombstones.by_last_index.remove(&(last_index, client_id));
        self.bytes -= TOMBSTONE_OVERHEAD;
        Some(floor)
    }
}

impl ClientSession {
    /// Log index of the client's most recent write.
    pub(crate) fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Below this sequence nothing is remembered.
    pub(crate) fn floor(&self) -> u64 {
        self.floor
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

    fn raise_floor(&mut self, floor: u64) {
        self.floor = self.floor.max(floor);
        while self
            .remembered
            .front()
            .is_some_and(|&(sequence, _)| sequence < self.floor)
        {
            self.remembered.pop_front();
        }
    }

    fn bytes(&self) -> usize {
        SESSION_OVERHEAD
            + self
                .remembered
                .iter()
                .map(|(_, outcome)| OUTCOME_OVERHEAD + outcome_bytes(outcome))
                .sum::<usize>()
    }
}

/// The session limit an entry was stamped with.
fn max_sessions(stamp: &SessionStamp) -> u64 {
    match stamp.max_sessions {
        0 => DEFAULT_MAX_SESSIONS,
        max => max,
    }
}

/// Bytes an outcome holds beyond its fixed size.
fn outcome_bytes(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Applied(applied) => applied
            .results
            .iter()
            .map(|r| 24 + r.previous.as_ref().map_or(0, |p| p.len()))
            .sum(),
        Outcome::Refused(_) => 0,
    }
}

/// The outcome as a session keeps it: without previous values past
/// [`MAX_KEPT_PREVIOUS_BYTES`] (see the module doc).
fn without_large_previous(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Applied(applied)
            if applied
                .results
                .iter()
                .map(|r| r.previous.as_ref().map_or(0, |p| p.len()))
                .sum::<usize>()
                > MAX_KEPT_PREVIOUS_BYTES =>
        {
            Outcome::Refused(Refusal::ReplyNotKept {
                index: applied.index,
            })
        }
        outcome => outcome,
    }
}

/// Spreads client ids (often small or sequential) over the shards.
fn shard_index(client_id: u64) -> usize {
    (client_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (u64::BITS - SHARDS.trailing_zeros()))
        as usize
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::command::BatchOutcome;
    use crate::store::command::OpResult;

    fn id(client_id: u64, sequence: u64) -> WriteId {
        WriteId {
            client_id,
            sequence,
        }
    }

    /// A client that sends no watermark, under the default limits.
    const OLD: SessionStamp = SessionStamp {
        acked_below: 0,
        max_sessions: 0,
        quota_bytes: 0,
    };

    fn acked_below(acked_below: u64) -> SessionStamp {
        SessionStamp { acked_below, ..OLD }
    }

    fn limited(acked_below: u64, max_sessions: u64) -> SessionStamp {
        SessionStamp {
            acked_below,
            max_sessions,
            quota_bytes: 0,
        }
    }

    /// An outcome that says which sequence it belongs to.
    fn outcome(sequence: u64) -> Outcome {
        Outcome::Applied(BatchOutcome {
            index: sequence,
            succeeded: true,
            results: vec![],
        })
    }

    #[test]
    fn an_unknown_client_is_new() {
        assert_eq!(Sessions::default().check(id(1, 1), &OLD), Dedup::New);
        assert_eq!(
            Sessions::default().check(id(1, 1), &acked_below(1)),
            Dedup::New
        );
    }

    #[test]
    fn a_retry_gets_the_first_outcome() {
        let mut sessions = Sessions::default();
        sessions.record(id(7, 1), &OLD, 10, outcome(1));
        assert_eq!(sessions.check(id(7, 1), &OLD), Dedup::Duplicate(outcome(1)));
        assert_eq!(
            sessions.check(id(8, 1), &OLD),
            Dedup::New,
            "other clients are apart"
        );
    }

    /// The session rule of the watermark: a write overtaken by any number of newer writes of its
    /// client (as many as the in-flight limit lets a client have unanswered) is still new when it
    /// arrives, is applied once, and its retry gets the remembered outcome.
    #[test]
    fn a_write_overtaken_by_newer_ones_of_its_client_is_applied_once() {
        let mut sessions = Sessions::default();
        // Sequence 1 is slow; 2 ..= MAX_IN_FLIGHT overtake it, each sent while 1 is unanswered.
        for sequence in 2..MAX_IN_FLIGHT {
            assert_eq!(sessions.check(id(5, sequence), &acked_below(1)), Dedup::New);
            sessions.record(
                id(5, sequence),
                &acked_below(1),
                sequence,
                outcome(sequence),
            );
        }
        assert_eq!(
            sessions.check(id(5, 1), &acked_below(1)),
            Dedup::New,
            "never applied, so new however many writes overtook it"
        );
        sessions.record(id(5, 1), &acked_below(1), MAX_IN_FLIGHT, outcome(1));
        assert_eq!(
            sessions.check(id(5, 1), &acked_below(1)),
            Dedup::Duplicate(outcome(1)),
            "its retry is answered with the first outcome"
        );
        assert_eq!(
            sessions.check(id(5, 2), &acked_below(1)),
            Dedup::Duplicate(outcome(2))
        );

        // Once the client has seen every answer up to 1000, those outcomes are dropped, and a
        // stale copy of one of them is never applied.
        sessions.record(id(5, 2000), &acked_below(1000), 5000, outcome(2000));
        let remembered = sessions
            .iter()
            .map(|(_, s)| s.remembered().len())
            .sum::<usize>();
        assert_eq!(remembered, (1000..MAX_IN_FLIGHT).count() + 1);
        assert_eq!(
            sessions.check(id(5, 999), &acked_below(1000)),
            Dedup::Refuse(Refusal::SequenceTooOld {
                sequence: 999,
                oldest_remembered: 1000
            })
        );
        assert_eq!(
            sessions.check(id(5, 1000), &acked_below(1000)),
            Dedup::Duplicate(outcome(1000))
        );
    }

    #[test]
    fn a_client_past_its_in_flight_limit_is_refused() {
        let mut sessions = Sessions::default();
        sessions.record(id(3, 10), &acked_below(10), 1, outcome(10));
        let past = 10 + MAX_IN_FLIGHT;
        assert_eq!(
            sessions.check(id(3, past), &acked_below(10)),
            Dedup::Refuse(Refusal::TooManyInFlight {
                sequence: past,
                acked_below: 10,
                limit: MAX_IN_FLIGHT
            })
        );
        assert_eq!(
            sessions.check(id(3, past - 1), &acked_below(10)),
            Dedup::New
        );
        assert_eq!(
            sessions.check(id(3, past), &acked_below(11)),
            Dedup::New,
            "the limit moves with the watermark"
        );
    }

    /// A fresh client's concurrent first writes reach the leader in any order (each forwarded
    /// by a follower on its own): none of them is too old while nothing has been forgotten.
    #[test]
    fn without_a_watermark_writes_applied_out_of_order_are_new_until_forgotten() {
        let mut sessions = Sessions::default();
        for (index, sequence) in [(1, 4), (2, 7), (3, 2)] {
            assert_eq!(sessions.check(id(1, sequence), &OLD), Dedup::New);
            sessions.record(id(1, sequence), &OLD, index, outcome(sequence));
        }
        for sequence in [1, 3, 5, 6] {
            assert_eq!(
                sessions.check(id(1, sequence), &OLD),
                Dedup::New,
                "{sequence}"
            );
        }
        assert_eq!(sessions.check(id(1, 4), &OLD), Dedup::Duplicate(outcome(4)));
    }

    #[test]
    fn without_a_watermark_the_newest_sequences_are_remembered() {
        let mut sessions = Sessions::default();
        let total = REMEMBERED_PER_CLIENT as u64 + 10;
        for sequence in 1..=total {
            sessions.record(id(1, sequence), &OLD, sequence, outcome(sequence));
        }
        let oldest = total - REMEMBERED_PER_CLIENT as u64 + 1;
        assert_eq!(
            sessions.check(id(1, oldest), &OLD),
            Dedup::Duplicate(outcome(oldest))
        );
        assert_eq!(
            sessions.check(id(1, oldest - 1), &OLD),
            Dedup::Refuse(Refusal::SequenceTooOld {
                sequence: oldest - 1,
                oldest_remembered: oldest
            })
        );
        assert_eq!(sessions.check(id(1, total + 5), &OLD), Dedup::New);
    }

    #[test]
    fn a_retry_from_an_evicted_session_is_never_applied() {
        let mut sessions = Sessions::default();
        let limit = limited(1, 3);
        // Client c writes sequences 1 and 2 at indexes 2c and 2c + 1; client 4 evicts client 1.
        for client in 1..=4 {
            for sequence in 1..=2 {
                sessions.record(
                    id(client, sequence),
                    &limit,
                    2 * client + sequence - 1,
                    outcome(sequence),
                );
            }
        }
        assert_eq!(sessions.len(), 3);
        for sequence in [1, 2] {
            assert_eq!(
                sessions.check(id(1, sequence), &limit),
                Dedup::Refuse(Refusal::SessionExpired { sequence }),
                "a retry of an applied write"
            );
        }
        assert_eq!(
            sessions.check(id(2, 2), &limit),
            Dedup::Duplicate(outcome(2)),
            "client 2 was not evicted"
        );

        // A newer write of the evicted client was never applied: it opens a session again, and
        // the older sequences stay unknown.
        assert_eq!(sessions.check(id(1, 3), &limit), Dedup::New);
        sessions.record(id(1, 3), &limit, 20, outcome(3));
        assert_eq!(
            sessions.check(id(1, 2), &limit),
            Dedup::Refuse(Refusal::SequenceTooOld {
                sequence: 2,
                oldest_remembered: 3
            })
        );
        assert_eq!(
            sessions.tombstones().len(),
            1,
            "client 2's, evicted by client 1"
        );
    }

    /// Past the tombstone horizon: a client the table does not know whose watermark says it has
    /// seen answers before had a session that was forgotten, so its write is never applied.
    #[test]
    fn a_client_forgotten_past_its_tombstone_is_never_applied() {
        let mut sessions = Sessions::default();
        let limit = limited(2, 1);
        sessions.record(id(1, 1), &limited(1, 1), 1, outcome(1));
        // Clients 2 and 3 evict client 1, then client 2, so client 1's tombstone is dropped.
        sessions.record(id(2, 1), &limited(1, 1), 2, outcome(1));
        sessions.record(id(3, 1), &limited(1, 1), 3, outcome(1));
        assert_eq!(
            sessions.tombstones().map(|(c, _, _)| c).collect::<Vec<_>>(),
            [2]
        );
        for sequence in [1, 2] {
            assert_eq!(
                sessions.check(id(1, sequence), &limit),
                Dedup::Refuse(Refusal::SessionExpired { sequence }),
                "sequence {sequence}"
            );
        }
    }

    #[test]
    fn a_new_client_with_a_watermark_of_one_is_new() {
        let sessions = Sessions::default();
        for (sequence, watermark) in [(1, 1), (5, 1), (1, 0), (9, 0)] {
            assert_eq!(
                sessions.check(id(4, sequence), &acked_below(watermark)),
                Dedup::New,
                "sequence {sequence}, watermark {watermark}"
            );
        }
        assert_eq!(
            sessions.check(id(4, 2), &acked_below(2)),
            Dedup::Refuse(Refusal::SessionExpired { sequence: 2 })
        );
    }

    #[test]
    fn tombstones_are_bounded_by_the_session_limit() {
        let mut sessions = Sessions::default();
        let limit = limited(1, 2);
        for client in 1..=10 {
            sessions.record(id(client, 1), &limit, client, outcome(1));
        }
        assert_eq!(sessions.len(), 2);
        let buried: Vec<u64> = sessions.tombstones().map(|(client, _, _)| client).collect();
        assert_eq!(buried, [7, 8], "the most recently evicted");
        assert_eq!(
            sessions.bytes_used(),
            sessions.iter().map(|(_, s)| s.bytes()).sum::<usize>() + 2 * TOMBSTONE_OVERHEAD
        );
    }

    #[test]
    fn large_previous_values_are_not_kept() {
        let mut sessions = Sessions::default();
        let with_previous = |len: usize| {
            Outcome::Applied(BatchOutcome {
                index: 9,
                succeeded: true,
                results: vec![OpResult {
                    existed: true,
                    previous: Some(Bytes::from(vec![b'x'; len])),
                    integer: 0,
                }],
            })
        };
        sessions.record(
            id(1, 1),
            &acked_below(1),
            9,
            with_previous(MAX_KEPT_PREVIOUS_BYTES),
        );
        sessions.record(
            id(1, 2),
            &acked_below(1),
            10,
            with_previous(MAX_KEPT_PREVIOUS_BYTES + 1),
        );
        assert_eq!(
            sessions.check(id(1, 1), &acked_below(1)),
            Dedup::Duplicate(with_previous(MAX_KEPT_PREVIOUS_BYTES))
        );
        assert_eq!(
            sessions.check(id(1, 2), &acked_below(1)),
            Dedup::Duplicate(Outcome::Refused(Refusal::ReplyNotKept { index: 9 }))
        );
        assert!(sessions.bytes_used() < 2 * MAX_KEPT_PREVIOUS_BYTES + 4 * SESSION_OVERHEAD);
    }

    #[test]
    fn a_clone_is_unaffected_by_later_records() {
        let mut sessions = Sessions::default();
        sessions.record(id(1, 1), &OLD, 1, outcome(1));
        let snapshot = sessions.clone();
        sessions.record(id(1, 2), &OLD, 2, outcome(2));
        sessions.record(id(2, 1), &limited(0, 1), 3, outcome(1));
        assert_eq!(snapshot.check(id(1, 2), &OLD), Dedup::New);
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot.tombstones().len(), 0);
        assert_eq!(
            snapshot
                .iter()
                .map(|(_, s)| s.last_index())
                .collect::<Vec<_>>(),
            [1]
        );
    }
}
