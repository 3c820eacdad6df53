//! The replicated state — keyspace, client sessions and cluster time — and its reads. Two
//! things are done to it, each in its own module: applying a committed [`Command`] ([`apply`]),
//! and encoding or decoding it as a snapshot ([`encoding`]).
//!
//! Apply is a pure function of the state and the entry: time is the entry's stamp (never below
//! the last applied one), never a local clock, so every replica reaches the same state.
//!
//! Expired keys stay stored until something touches them: reads and compares judge expiry
//! against the time they are given, an op that touches an expired key removes or overwrites it,
//! and the leader proposes purges of the rest ([`StateData::expired_keys`]).

use std::fmt;

use bytes::Bytes;

use crate::error::Refusal;
use crate::store::command::Command;
use crate::store::command::Outcome;
use crate::store::command::SessionStamp;
use crate::store::command::WriteId;
use crate::store::keyspace::EntryRef;
use crate::store::keyspace::Keyspace;
use crate::store::sessions::Dedup;
use crate::store::sessions::Sessions;

mod apply;
mod encoding;
#[cfg(test)]
pub(crate) use encoding::SNAPSHOT_FORMAT;
#[cfg(test)]
mod harness;

pub(crate) use encoding::EncodingCheck;

/// Everything a replica's state machine holds besides its log position.
///
/// `clone()` is cheap (O(shards)) and independent of later writes: it is how a snapshot is taken.
#[derive(Clone, Default)]
pub(crate) struct StateData {
    keyspace: Keyspace,
    sessions: Sessions,
    /// Cluster time of the last applied entry: never goes backwards.
    last_stamp_ms: u64,
}

impl StateData {
    /// Applies the entry at `log_index`. A write the client already made is answered with its
    /// first outcome and not applied again; this comes before the memory quota, so a retry of an
    /// applied write always gets its outcome. Then the quota the leader stamped is checked: a
    /// batch that would add data past it is refused (see `store::sessions` for the rest).
    pub(crate) fn apply(&mut self, log_index: u64, cmd: &Command) -> Outcome {
        let now_ms = cmd.stamp_ms.max(self.last_stamp_ms);
        self.last_stamp_ms = now_ms;
        if let Some(id) = cmd.write_id {
            match self.sessions.check(id, &cmd.session) {
                Dedup::New => {}
                Dedup::Duplicate(outcome) => return outcome,
                Dedup::Refuse(refusal) => return Outcome::Refused(refusal),
            }
        }
        let quota = cmd.session.quota_bytes;
        if quota > 0 && cmd.batch.adds_data() {
            let used = self.memory_used();
            if used >= quota {
                return Outcome::Refused(Refusal::QuotaExceeded { used, quota });
            }
        }
        let mut outcome =
            apply::run_batch(&mut self.keyspace, &cmd.batch, now_ms, cmd.max_value_bytes);
        if let Outcome::Applied(applied) = &mut outcome {
            applied.index = log_index;
        }
        if let Some(id) = cmd.write_id {
            self.sessions
                .record(id, &cmd.session, log_index, outcome.clone());
        }
        outcome
    }

    /// What the sessions say of write `id`, carrying `stamp`, if it were applied now; changes
    /// nothing. The leader asks before it refuses a write for a reason of its own (a full disk),
    /// so that a retry of a write already applied gets its outcome rather than the refusal.
    pub(crate) fn dedup(&self, id: WriteId, stamp: &SessionStamp) -> Dedup {
        self.sessions.check(id, stamp)
    }

    /// The value and expiry (0 = none) of `key`, unless absent or expired at `now_ms`. Pass
    /// cluster time — the local clock, but never below [`StateData::last_stamp_ms`].
    pub(crate) fn get(&self, key: &[u8], now_ms: u64) -> Option<(Bytes, u64)> {
        live(&self.keyspace, key, now_ms).map(|e| (e.value_bytes(), e.expires_at_ms()))
    }

    /// Up to `limit` keys stored but expired at `now_ms`: what the leader proposes to purge.
    pub(crate) fn expired_keys(&self, now_ms: u64, limit: usize) -> Vec<Bytes> {
        self.keyspace
            .with_expiry()
            .filter(|e| is_expired(e.expires_at_ms(), now_ms))
            .take(limit)
            .map(|e| e.key_bytes())
            .collect()
    }

    /// Every key live at `now_ms` with its value and expiry (0 = none), in no particular order.
    pub(crate) fn live_entries(&self, now_ms: u64) -> impl Iterator<Item = EntryRef<'_>> {
        self.keyspace
            .iter()
            .filter(move |e| !is_expired(e.expires_at_ms(), now_ms))
    }

    /// Cluster time of the last applied entry.
    pub(crate) fn last_stamp_ms(&self) -> u64 {
        self.last_stamp_ms
    }

    /// Number of stored keys, counting expired keys not purged yet (as Redis DBSIZE does).
    pub(crate) fn len(&self) -> usize {
        self.keyspace.len()
    }

    /// One step of a SCAN over the keys live at `now_ms` that `keep` accepts: see
    /// [`Keyspace::scan`].
    pub(crate) fn scan(
        &self,
        cursor: u64,
        count: usize,
        now_ms: u64,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> (u64, Vec<Bytes>) {
        self.keyspace.scan(cursor, count, |e| {
            !is_expired(e.expires_at_ms(), now_ms) && keep(e.key())
        })
    }
}

impl StateData {
    /// Bytes of stored keys and values, without per-key overhead.
    pub(crate) fn bytes_used(&self) -> usize {
        self.keyspace.bytes_used()
    }

    /// Approximate memory the state takes, as the quota counts it: keys and values with a
    /// per-key overhead (`docs/architecture.md`, "The keyspace and its memory"), plus sessions.
    pub(crate) fn memory_used(&self) -> u64 {
        const PER_KEY_OVERHEAD: u64 = 96;
        (self.keyspace.bytes_used() + self.sessions.bytes_used()) as u64
            + self.keyspace.len() as u64 * PER_KEY_OVERHEAD
    }
}

/// A summary: the state itself may be gigabytes.
impl fmt::Debug for StateData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateData")
            .field("keys", &self.keyspace.len())
            .field("payload_bytes", &self.keyspace.bytes_used())
            .field("clients", &self.sessions.len())
            .field("session_bytes", &self.sessions.bytes_used())
            .field("last_stamp_ms", &self.last_stamp_ms)
            .finish()
    }
}

/// Whether an expiry (0 = none) has passed at `now_ms`; a key expiring exactly now is expired.
fn is_expired(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms != 0 && expires_at_ms <= now_ms
}

/// The entry of `key` if it is stored and not expired at `now_ms`.
fn live<'k>(keyspace: &'k Keyspace, key: &[u8], now_ms: u64) -> Option<EntryRef<'k>> {
    keyspace
        .get(key)
        .filter(|e| !is_expired(e.expires_at_ms(), now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::command::Op;
    use crate::store::command::PutExpiry;
    use crate::store::data::harness::Replica;
    use crate::store::data::harness::incr;
    use crate::store::data::harness::key;
    use crate::store::data::harness::ops;
    use crate::store::data::harness::put;
    use crate::store::data::harness::put_with;

    #[test]
    fn a_key_expiring_exactly_now_is_gone() {
        let mut r = Replica::new();
        r.apply(100, ops(vec![put_with("a", "1", PutExpiry::At(200))]));
        assert_eq!(r.value("a", 199), Some(("1".to_owned(), 200)));
        assert_eq!(r.value("a", 200), None);
        assert_eq!(r.data.len(), 1, "stored until purged");
        assert_eq!(r.data.expired_keys(199, 10), Vec::<Bytes>::new());
        assert_eq!(r.data.expired_keys(200, 10), [key("a")]);
    }

    #[test]
    fn a_retried_write_applies_once_and_gets_the_first_outcome() {
        let mut r = Replica::new();
        let id = Some(WriteId {
            client_id: 9,
            sequence: 3,
        });
        let first = r.apply_as(1, id, ops(vec![incr("n", 1)]));
        let retry = r.apply_as(2, id, ops(vec![incr("n", 1)]));
        assert_eq!(retry, first);
        assert_eq!(r.value("n", 2), Some(("1".to_owned(), 0)));

        let refused = r.apply_as(
            3,
            Some(WriteId {
                client_id: 9,
                sequence: 4,
            }),
            ops(vec![put("t", "x"), incr("t", 1)]),
        );
        assert_eq!(
            r.apply_as(
                4,
                Some(WriteId {
                    client_id: 9,
                    sequence: 4
                }),
                ops(vec![])
            ),
            refused,
            "refusals are remembered too"
        );

        let never_applied = r.apply_as(
            5,
            Some(WriteId {
                client_id: 9,
                sequence: 2,
            }),
            ops(vec![incr("n", 1)]),
        );
        assert!(
            matches!(never_applied, Outcome::Applied(_)),
            "an older sequence never applied nor forgotten is new: {never_applied}"
        );
        assert_eq!(r.value("n", 5), Some(("2".to_owned(), 0)));
    }

    #[test]
    fn a_retry_of_an_applied_write_gets_its_outcome_past_the_quota() {
        let mut r = Replica::new();
        let id = Some(WriteId {
            client_id: 4,
            sequence: 1,
        });
        let roomy = SessionStamp {
            acked_below: 1,
            quota_bytes: 1 << 20,
            ..SessionStamp::default()
        };
        let first = r.apply_stamped(1, id, roomy, ops(vec![put("k", "v")]));
        assert!(matches!(first, Outcome::Applied(_)), "{first}");

        let full = SessionStamp {
            quota_bytes: 1,
            ..roomy
        };
        let retry = r.apply_stamped(2, id, full, ops(vec![put("k", "v")]));
        assert_eq!(
            retry, first,
            "a duplicate is answered before the quota is checked"
        );

        let next = Some(WriteId {
            client_id: 4,
            sequence: 2,
        });
        let refused = r.apply_stamped(3, next, full, ops(vec![put("k2", "v")]));
        assert!(
            matches!(
                refused,
                Outcome::Refused(Refusal::QuotaExceeded { quota: 1, .. })
            ),
            "{refused}"
        );
        assert_eq!(r.value("k2", 3), None);
        let delete = r.apply_stamped(4, next, full, ops(vec![Op::Delete { key: key("k") }]));
        assert!(
            matches!(delete, Outcome::Applied(_)),
            "a refused write is not remembered, and deletes pass a full quota: {delete}"
        );
    }

    /// Issue 15 item 5: sessions are memory every replica holds, so they count in the quota even
    /// when no key is stored.
    #[test]
    fn remembered_outcomes_count_toward_the_quota() {
        let mut r = Replica::new();
        let roomy = SessionStamp {
            acked_below: 1,
            ..SessionStamp::default()
        };
        for client_id in 1..=64 {
            let write = Some(WriteId {
                client_id,
                sequence: 1,
            });
            let deleted = r.apply_stamped(
                client_id,
                write,
                roomy,
                ops(vec![Op::Delete { key: key("absent") }]),
            );
            assert!(matches!(deleted, Outcome::Applied(_)), "{deleted}");
        }
        let held = r.data.sessions.bytes_used() as u64;
        assert!(held > 0);
        assert_eq!(r.data.memory_used(), held, "no key is stored");

        let quota = held - 1;
        let write = Some(WriteId {
            client_id: 65,
            sequence: 1,
        });
        let stamp = SessionStamp {
            quota_bytes: quota,
            ..roomy
        };
        let refused = r.apply_stamped(65, write, stamp, ops(vec![put("k", "v")]));
        assert_eq!(
            refused,
            Outcome::Refused(Refusal::QuotaExceeded { used: held, quota })
        );
    }

    #[test]
    fn a_dedup_lookup_answers_as_apply_would_and_changes_nothing() {
        let mut r = Replica::new();
        let stamp = SessionStamp {
            acked_below: 1,
            ..SessionStamp::default()
        };
        let id = WriteId {
            client_id: 6,
            sequence: 1,
        };
        let first = r.apply_stamped(1, Some(id), stamp, ops(vec![incr("n", 1)]));
        assert_eq!(r.data.dedup(id, &stamp), Dedup::Duplicate(first));
        let next = WriteId {
            client_id: 6,
            sequence: 2,
        };
        assert_eq!(r.data.dedup(next, &stamp), Dedup::New);
        assert_eq!(r.data.dedup(next, &stamp), Dedup::New, "nothing recorded");
        assert_eq!(r.value("n", 2), Some(("1".to_owned(), 0)));
    }

    #[test]
    fn cluster_time_never_goes_backwards() {
        let mut r = Replica::new();
        r.apply(100, ops(vec![]));
        r.apply(50, ops(vec![put_with("a", "1", PutExpiry::At(80))]));
        assert_eq!(r.data.last_stamp_ms(), 100);
        assert_eq!(r.data.len(), 0, "expiry 80 is past at cluster time 100");
    }

    #[test]
    fn scan_skips_expired_keys() {
        let mut r = Replica::new();
        r.apply(
            1,
            ops(vec![
                put("live", "1"),
                put_with("dying", "1", PutExpiry::At(5)),
            ]),
        );
        assert_eq!(r.data.scan(0, 10, 4, |_| true).1.len(), 2);
        assert_eq!(r.data.scan(0, 10, 5, |_| true), (0, vec![key("live")]));
        assert_eq!(
            r.data.scan(0, 10, 4, |k| k == b"dying"),
            (0, vec![key("dying")])
        );
        assert_eq!(r.data.bytes_used(), 11);
    }
}
