//! Applying one batch to the keyspace. A batch is atomic: its ops run against a staged overlay
//! of the keys they touch — later ops see what earlier ones wrote — and the overlay is committed
//! only when every op succeeded, so a refused batch changes nothing.
//!
//! An op whose result would be longer than the limit stamped on the entry is refused, whatever
//! made it long (a put, an append, an increment), so every replica refuses the same ops. Appends
//! to a stored value are staged as the suffix alone and committed by growing the stored value
//! (see `store::keyspace`), never by copying the whole value.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::Refusal;
use crate::store::command::Batch;
use crate::store::command::BatchOutcome;
use crate::store::command::Compare;
use crate::store::command::Op;
use crate::store::command::OpResult;
use crate::store::command::Outcome;
use crate::store::command::PutExpiry;
use crate::store::data::is_expired;
use crate::store::data::live;
use crate::store::integer::parse_i64;
use crate::store::keyspace::Keyspace;

/// Runs `batch` at cluster time `now_ms`; `max_value_bytes` is the entry's value limit (0 for
/// none).
pub(super) fn run_batch(
    keyspace: &mut Keyspace,
    batch: &Batch,
    now_ms: u64,
    max_value_bytes: u64,
) -> Outcome {
    let succeeded = batch.compares.iter().all(|c| holds(keyspace, c, now_ms));
    let ops = if succeeded {
        &batch.ops
    } else {
        &batch.else_ops
    };
    let mut overlay = Overlay {
        keyspace,
        now_ms,
        max_value_bytes: match usize::try_from(max_value_bytes) {
            Ok(0) | Err(_) => usize::MAX,
            Ok(max) => max,
        },
        staged: BTreeMap::new(),
        cleared: false,
    };
    let results = ops
        .iter()
        .enumerate()
        .map(|(index, op)| overlay.run(index, op, batch.return_previous))
        .collect::<Result<Vec<_>, _>>();
    let results = match results {
        Ok(results) => results,
        Err(refusal) => return Outcome::Refused(refusal),
    };
    let Overlay {
        staged, cleared, ..
    } = overlay;
    if cleared {
        *keyspace = Keyspace::default();
    }
    for (key, staged) in staged {
        match staged {
            Staged::Absent => {
                keyspace.remove(key);
            }
            Staged::Stored { expires_at_ms } => {
                keyspace.set_expiry(key, expires_at_ms);
            }
            Staged::Extended {
                suffix,
                expires_at_ms,
            } => {
                keyspace.append(key, &suffix, expires_at_ms);
            }
            Staged::Written {
                value,
                expires_at_ms,
            } => keyspace.insert(key, &value, expires_at_ms),
        }
    }
    Outcome::Applied(BatchOutcome {
        succeeded,
        results,
        ..BatchOutcome::default()
    })
}

fn holds(keyspace: &Keyspace, compare: &Compare, now_ms: u64) -> bool {
    match compare {
        Compare::ValueEquals { key, value } => {
            live(keyspace, key, now_ms).is_some_and(|e| e.value() == value.as_ref())
        }
        Compare::Exists { key, exists } => live(keyspace, key, now_ms).is_some() == *exists,
        Compare::Expired { key } => keyspace
            .get(key)
            .is_some_and(|e| is_expired(e.expires_at_ms(), now_ms)),
    }
}

/// A key as the running batch sees it.
enum Staged<'c> {
    /// Absent: deleted, never stored, or expired (then committing removes it).
    Absent,
    /// The stored, unexpired value, possibly with a new expiry.
    Stored { expires_at_ms: u64 },
    /// The stored, unexpired value followed by `suffix` (what appends of the batch added),
    /// possibly with a new expiry.
    Extended { suffix: Vec<u8>, expires_at_ms: u64 },
    /// A value written by an earlier op of the batch.
    Written {
        value: Cow<'c, [u8]>,
        expires_at_ms: u64,
    },
}

/// A present key's value as the batch sees it: the stored or written bytes, then what appends
/// added to a stored value.
struct Current<'a> {
    base: &'a [u8],
    suffix: &'a [u8],
    expires_at_ms: u64,
}

impl Current<'_> {
    fn len(&self) -> usize {
        self.base.len() + self.suffix.len()
    }

    /// The whole value; a copy only when appends added to a stored value.
    fn value(&self) -> Cow<'_, [u8]> {
        if self.suffix.is_empty() {
            Cow::Borrowed(self.base)
        } else {
            Cow::Owned([self.base, self.suffix].concat())
        }
    }
}

/// The keys a batch touched, staged over the unchanged keyspace until the batch commits.
struct Overlay<'k, 'c> {
    keyspace: &'k Keyspace,
    now_ms: u64,
    /// Longest value an op may leave behind.
    max_value_bytes: usize,
    staged: BTreeMap<&'c [u8], Staged<'c>>,
    /// A clear ran: keys not staged since are absent.
    cleared: bool,
}

impl<'c> Overlay<'_, 'c> {
    fn run(
        &mut self,
        index: usize,
        op: &'c Op,
        return_previous: bool,
    ) -> Result<OpResult, Refusal> {
        let key: &'c [u8] = match op {
            Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Increment { key, .. }
            | Op::Append { key, .. }
            | Op::Expire { key, .. }
            | Op::Persist { key } => key,
            Op::Clear => {
                self.cleared = true;
                self.staged.clear();
                return Ok(OpResult::default());
            }
        };
        // None when absent; the expiry (0 = none) when present.
        let current_expiry = self.current(key).map(|c| c.expires_at_ms);
        let max_value_bytes = self.max_value_bytes;
        let fits = |len: usize| {
            if len > max_value_bytes {
                Err(Refusal::ValueTooLarge { op: index })
            } else {
                Ok(())
            }
        };
        let previous = if return_previous {
            self.previous(key)
        } else {
            None
        };
        let mut integer = 0;
        match op {
            Op::Put { value, expiry, .. } => {
                fits(value.len())?;
                let expires_at_ms = match *expiry {
                    PutExpiry::At(at_ms) if at_ms <= self.now_ms => None,
                    PutExpiry::At(at_ms) => Some(at_ms),
                    PutExpiry::Clear => Some(0),
                    PutExpiry::Keep => Some(current_expiry.unwrap_or(0)),
                };
                let staged = match expires_at_ms {
                    // Like Redis SET with a past EXAT: the key ends up deleted.
                    None => Staged::Absent,
                    Some(expires_at_ms) => Staged::Written {
                        value: Cow::Borrowed(value),
                        expires_at_ms,
                    },
                };
                self.staged.insert(key, staged);
            }
            Op::Delete { .. } => {
                self.staged.insert(key, Staged::Absent);
            }
            Op::Increment { delta, .. } => {
                let base = match self.current(key) {
                    None => 0,
                    Some(current) => {
                        parse_i64(&current.value()).ok_or(Refusal::NotAnInteger { op: index })?
                    }
                };
                integer = base
                    .checked_add(*delta)
                    .ok_or(Refusal::Overflow { op: index })?;
                let value = integer.to_string().into_bytes();
                fits(value.len())?;
                let value = Cow::Owned(value);
                self.staged.insert(
                    key,
                    Staged::Written {
                        value,
                        expires_at_ms: current_expiry.unwrap_or(0),
                    },
                );
            }
            Op::Append { value: suffix, .. } => {
                let len = self.current(key).map_or(0, |c| c.len()) + suffix.len();
                fits(len)?;
                integer = i64::try_from(len).unwrap_or(i64::MAX);
                self.stage_append(key, suffix, current_expiry);
            }
            Op::Expire { at_ms, .. } => match current_expiry {
                Some(_) if *at_ms > self.now_ms => self.restage_expiry(key, *at_ms),
                // Absent stays absent (an expired key is purged); a past expiry deletes, like
                // Redis EXPIREAT with a past time.
                _ => {
                    self.staged.insert(key, Staged::Absent);
                }
            },
            // Returned above: a clear touches no one key.
            Op::Clear => {}
            Op::Persist { .. } => match current_expiry {
                Some(expiry) => {
                    integer = i64::from(expiry != 0);
                    self.restage_expiry(key, 0);
                }
                None => {
                    self.staged.insert(key, Staged::Absent);
                }
            },
        }
        Ok(OpResult {
            existed: current_expiry.is_some(),
            previous,
            integer,
        })
    }

    /// The value and expiry of `key` as the batch sees it, if present.
    fn current(&self, key: &[u8]) -> Option<Current<'_>> {
        let stored = self.keyspace.get(key).map(|e| e.value());
        match self.staged.get(key) {
            Some(Staged::Absent) => None,
            Some(Staged::Stored { expires_at_ms }) => stored.map(|base| Current {
                base,
                suffix: &[],
                expires_at_ms: *expires_at_ms,
            }),
            Some(Staged::Extended {
                suffix,
                expires_at_ms,
            }) => stored.map(|base| Current {
                base,
                suffix,
                expires_at_ms: *expires_at_ms,
            }),
            Some(Staged::Written {
                value,
                expires_at_ms,
            }) => Some(Current {
                base: value,
                suffix: &[],
                expires_at_ms: *expires_at_ms,
            }),
            None if self.cleared => None,
            None => live(self.keyspace, key, self.now_ms).map(|e| Current {
                base: e.value(),
                suffix: &[],
                expires_at_ms: e.expires_at_ms(),
            }),
        }
    }

    /// Stages `suffix` appended to `key`, present with `expiry` or absent (`None`): a stored
    /// value is extended by the suffix alone, a value written by the batch is rewritten.
    fn stage_append(&mut self, key: &'c [u8], suffix: &'c [u8], expiry: Option<u64>) {
        let Some(expires_at_ms) = expiry else {
            self.staged.insert(
                key,
                Staged::Written {
                    value: Cow::Borrowed(suffix),
                    expires_at_ms: 0,
                },
            );
            return;
        };
        match self.staged.get_mut(key) {
            Some(Staged::Written { value, .. }) => value.to_mut().extend_from_slice(suffix),
            Some(Staged::Extended { suffix: staged, .. }) => staged.extend_from_slice(suffix),
            // Present and not rewritten by the batch: the stored value, maybe re-expired.
            Some(Staged::Stored { .. } | Staged::Absent) | None => {
                self.staged.insert(
                    key,
                    Staged::Extended {
                        suffix: suffix.to_vec(),
                        expires_at_ms,
                    },
                );
            }
        }
    }

    /// The value of `key` as the batch sees it, sharing the stored bytes when unchanged.
    fn previous(&self, key: &[u8]) -> Option<Bytes> {
        match self.staged.get(key) {
            Some(Staged::Absent) => None,
            Some(Staged::Stored { .. }) => self.keyspace.get(key).map(|e| e.value_bytes()),
            Some(Staged::Extended { .. }) => self
                .current(key)
                .map(|c| Bytes::copy_from_slice(&c.value())),
            Some(Staged::Written { value, .. }) => Some(Bytes::copy_from_slice(value)),
            None if self.cleared => None,
            None => live(self.keyspace, key, self.now_ms).map(|e| e.value_bytes()),
        }
    }

    /// Gives `key`, which the caller saw present, a new expiry and keeps its value.
    fn restage_expiry(&mut self, key: &'c [u8], at_ms: u64) {
        match self.staged.get_mut(key) {
            Some(
                Staged::Stored { expires_at_ms }
                | Staged::Extended { expires_at_ms, .. }
                | Staged::Written { expires_at_ms, .. },
            ) => {
                *expires_at_ms = at_ms;
            }
            Some(Staged::Absent) => {}
            None => {
                self.staged.insert(
                    key,
                    Staged::Stored {
                        expires_at_ms: at_ms,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::data::harness::Replica;
    use crate::store::data::harness::dump;
    use crate::store::data::harness::incr;
    use crate::store::data::harness::key;
    use crate::store::data::harness::ops;
    use crate::store::data::harness::put;
    use crate::store::data::harness::put_with;
    use crate::store::data::harness::with_previous;

    fn result(existed: bool, previous: Option<&str>, integer: i64) -> OpResult {
        OpResult {
            existed,
            previous: previous.map(|p| Bytes::copy_from_slice(p.as_bytes())),
            integer,
        }
    }

    #[test]
    fn put_and_delete_report_what_existed() {
        let mut r = Replica::new();
        let results = r.results(
            1,
            with_previous(vec![
                put("a", "1"),
                put("a", "2"),
                Op::Delete { key: key("a") },
                Op::Delete { key: key("a") },
            ]),
        );
        assert_eq!(
            results,
            [
                result(false, None, 0),
                result(true, Some("1"), 0),
                result(true, Some("2"), 0),
                result(false, None, 0)
            ]
        );
        assert_eq!(r.value("a", 1), None);
        assert_eq!(r.data.len(), 0);
    }

    #[test]
    fn previous_values_are_returned_only_when_asked() {
        let mut r = Replica::new();
        r.apply(1, ops(vec![put("a", "1")]));
        assert_eq!(
            r.results(1, ops(vec![put("a", "2")])),
            [result(true, None, 0)]
        );
    }

    #[test]
    fn put_expiry_clear_keep_and_at() {
        let mut r = Replica::new();
        r.apply(10, ops(vec![put_with("a", "1", PutExpiry::At(500))]));
        r.apply(10, ops(vec![put_with("a", "2", PutExpiry::Keep)]));
        assert_eq!(r.value("a", 10), Some(("2".to_owned(), 500)));
        r.apply(10, ops(vec![put_with("a", "3", PutExpiry::Clear)]));
        assert_eq!(r.value("a", 10), Some(("3".to_owned(), 0)));
        r.apply(10, ops(vec![put_with("new", "1", PutExpiry::Keep)]));
        assert_eq!(
            r.value("new", 10),
            Some(("1".to_owned(), 0)),
            "keep on a new key means none"
        );
    }

    #[test]
    fn keep_does_not_revive_the_expiry_of_an_expired_key() {
        let mut r = Replica::new();
        r.apply(10, ops(vec![put_with("a", "1", PutExpiry::At(20))]));
        let results = r.results(20, ops(vec![put_with("a", "2", PutExpiry::Keep)]));
        assert_eq!(results, [result(false, None, 0)]);
        assert_eq!(r.value("a", 1_000), Some(("2".to_owned(), 0)));
    }

    #[test]
    fn a_put_with_a_past_or_present_expiry_deletes_the_key() {
        let mut r = Replica::new();
        r.apply(50, ops(vec![put("a", "1"), put("b", "1")]));
        let results = r.results(
            50,
            ops(vec![
                put_with("a", "2", PutExpiry::At(50)),
                put_with("b", "2", PutExpiry::At(0)),
            ]),
        );
        assert_eq!(results, [result(true, None, 0), result(true, None, 0)]);
        assert_eq!(
            (r.value("a", 50), r.value("b", 50), r.data.len()),
            (None, None, 0)
        );
    }

    #[test]
    fn an_expired_key_touched_by_an_op_counts_as_absent_and_is_purged() {
        let mut r = Replica::new();
        r.apply(
            10,
            ops(vec![
                put_with("a", "old", PutExpiry::At(20)),
                put_with("b", "old", PutExpiry::At(20)),
            ]),
        );
        let results = r.results(
            30,
            with_previous(vec![
                Op::Persist { key: key("a") },
                Op::Delete { key: key("b") },
            ]),
        );
        assert_eq!(results, [result(false, None, 0), result(false, None, 0)]);
        assert_eq!(r.data.len(), 0);
    }

    #[test]
    fn increment_follows_redis() {
        let mut r = Replica::new();
        assert_eq!(
            r.results(1, ops(vec![incr("n", 5)])),
            [result(false, None, 5)]
        );
        assert_eq!(
            r.value("n", 1),
            Some(("5".to_owned(), 0)),
            "a new counter has no expiry"
        );
        assert_eq!(
            r.results(1, ops(vec![incr("n", -7)])),
            [result(true, None, -2)]
        );
        assert_eq!(r.value("n", 1), Some(("-2".to_owned(), 0)));

        r.apply(
            1,
            ops(vec![Op::Expire {
                key: key("n"),
                at_ms: 100,
            }]),
        );
        r.apply(1, ops(vec![incr("n", 1)]));
        assert_eq!(
            r.value("n", 1),
            Some(("-1".to_owned(), 100)),
            "an existing counter keeps its expiry"
        );

        assert_eq!(
            r.results(100, ops(vec![incr("n", 3)])),
            [result(false, None, 3)],
            "expired counts as 0"
        );
        assert_eq!(r.value("n", 100), Some(("3".to_owned(), 0)));
    }

    #[test]
    fn increment_of_a_non_integer_or_past_the_range_is_refused() {
        let mut r = Replica::new();
        r.apply(
            1,
            ops(vec![
                put("text", "abc"),
                put("max", &i64::MAX.to_string()),
                put("min", &i64::MIN.to_string()),
            ]),
        );
        assert_eq!(
            r.apply(1, ops(vec![incr("max", -1), incr("text", 1)])),
            Outcome::Refused(Refusal::NotAnInteger { op: 1 })
        );
        assert_eq!(
            r.apply(1, ops(vec![incr("max", 1)])),
            Outcome::Refused(Refusal::Overflow { op: 0 })
        );
        assert_eq!(
            r.apply(1, ops(vec![incr("min", -1)])),
            Outcome::Refused(Refusal::Overflow { op: 0 })
        );
        assert_eq!(r.value("max", 1), Some((i64::MAX.to_string(), 0)));
    }

    #[test]
    fn append_extends_and_keeps_the_expiry() {
        let mut r = Replica::new();
        assert_eq!(
            r.results(
                1,
                ops(vec![Op::Append {
                    key: key("a"),
                    value: key("ab")
                }])
            ),
            [result(false, None, 2)]
        );
        r.apply(
            1,
            ops(vec![Op::Expire {
                key: key("a"),
                at_ms: 50,
            }]),
        );
        assert_eq!(
            r.results(
                1,
                with_previous(vec![Op::Append {
                    key: key("a"),
                    value: key("cde")
                }])
            ),
            [result(true, Some("ab"), 5)]
        );
        assert_eq!(r.value("a", 1), Some(("abcde".to_owned(), 50)));
    }

    #[test]
    fn an_op_whose_result_is_longer_than_the_stamped_limit_is_refused() {
        let append = |v: &str| Op::Append {
            key: key("a"),
            value: key(v),
        };
        let mut r = Replica::new();
        r.max_value_bytes = 5;
        r.apply(1, ops(vec![put("a", "")]));
        assert_eq!(
            r.results(1, ops(vec![append("abc"), append("de")])),
            [result(true, None, 3), result(true, None, 5)]
        );
        for batch in [
            vec![append("f")],
            vec![put("b", "1"), append("f")],
            vec![put("a", "123456")],
            vec![Op::Delete { key: key("a") }, append("12"), append("3456")],
        ] {
            let refused = batch.len() - 1;
            assert_eq!(
                r.apply(2, ops(batch)),
                Outcome::Refused(Refusal::ValueTooLarge { op: refused }),
            );
        }
        assert_eq!(r.value("a", 2), Some(("abcde".to_owned(), 0)));
        assert_eq!(r.value("b", 2), None, "a refused batch changes nothing");

        r.max_value_bytes = 0;
        r.apply(3, ops(vec![append("fgh")]));
        assert_eq!(
            r.value("a", 3),
            Some(("abcdefgh".to_owned(), 0)),
            "entries without a limit apply as before"
        );
    }

    #[test]
    fn appends_in_one_batch_see_each_other_and_keep_expiries() {
        let append = |v: &str| Op::Append {
            key: key("a"),
            value: key(v),
        };
        let mut r = Replica::new();
        r.apply(1, ops(vec![put_with("a", "x", PutExpiry::At(90))]));
        let results = r.results(
            1,
            with_previous(vec![
                append("y"),
                Op::Expire {
                    key: key("a"),
                    at_ms: 80,
                },
                append("z"),
            ]),
        );
        assert_eq!(
            results,
            [
                result(true, Some("x"), 2),
                result(true, Some("xy"), 0),
                result(true, Some("xy"), 3)
            ]
        );
        assert_eq!(r.value("a", 1), Some(("xyz".to_owned(), 80)));
    }

    #[test]
    fn expire_and_persist() {
        let mut r = Replica::new();
        r.apply(10, ops(vec![put("a", "1"), put("b", "1")]));
        let results = r.results(
            10,
            ops(vec![
                Op::Expire {
                    key: key("a"),
                    at_ms: 11,
                },
                Op::Expire {
                    key: key("nope"),
                    at_ms: 11,
                },
            ]),
        );
        assert_eq!(results, [result(true, None, 0), result(false, None, 0)]);
        assert_eq!(r.value("a", 10), Some(("1".to_owned(), 11)));
        assert_eq!(r.value("nope", 10), None, "expire does not create a key");

        r.apply(10, ops(vec![Op::Persist { key: key("a") }]));
        assert_eq!(r.value("a", 1_000), Some(("1".to_owned(), 0)));

        r.apply(
            10,
            ops(vec![Op::Expire {
                key: key("b"),
                at_ms: 10,
            }]),
        );
        assert_eq!(
            r.data.len(),
            1,
            "an expiry at the present deletes the key at once"
        );
    }

    #[test]
    fn persist_reports_whether_it_removed_an_expiry() {
        let mut r = Replica::new();
        r.apply(
            10,
            ops(vec![
                put("plain", "1"),
                put_with("ttl", "1", PutExpiry::At(99)),
            ]),
        );
        let persist = |k: &str| Op::Persist { key: key(k) };
        assert_eq!(
            r.results(
                10,
                ops(vec![persist("plain"), persist("ttl"), persist("nope")])
            ),
            [
                result(true, None, 0),
                result(true, None, 1),
                result(false, None, 0)
            ]
        );
    }

    #[test]
    fn clear_empties_the_keyspace_and_later_ops_of_the_batch_start_from_nothing() {
        let mut r = Replica::new();
        r.apply(10, ops(vec![put("a", "1"), put("b", "2")]));
        let results = r.results(
            10,
            with_previous(vec![put("c", "3"), Op::Clear, incr("a", 5), put("d", "4")]),
        );
        assert_eq!(
            results[2],
            result(false, None, 5),
            "a is gone after the clear"
        );
        assert_eq!(r.value("a", 10), Some(("5".to_owned(), 0)));
        assert_eq!(r.value("d", 10), Some(("4".to_owned(), 0)));
        assert_eq!((r.value("b", 10), r.value("c", 10)), (None, None));
        assert_eq!(r.data.len(), 2);
    }

    #[test]
    fn compares_judge_expiry_at_the_entry_stamp() {
        let mut r = Replica::new();
        r.apply(
            10,
            ops(vec![put_with("a", "1", PutExpiry::At(20)), put("b", "2")]),
        );
        let holds = |r: &mut Replica, stamp_ms, compare: Compare| match r.apply(
            stamp_ms,
            Batch {
                compares: vec![compare],
                ..Batch::default()
            },
        ) {
            Outcome::Applied(outcome) => outcome.succeeded,
            refused => panic!("{refused}"),
        };
        let equals = |k: &str, v: &str| Compare::ValueEquals {
            key: key(k),
            value: key(v),
        };
        let exists = |k: &str, exists| Compare::Exists {
            key: key(k),
            exists,
        };
        let expired = |k: &str| Compare::Expired { key: key(k) };

        assert!(holds(&mut r, 19, equals("a", "1")));
        assert!(!holds(&mut r, 19, equals("a", "2")));
        assert!(holds(&mut r, 19, exists("a", true)));
        assert!(!holds(&mut r, 19, expired("a")));
        assert!(holds(&mut r, 19, exists("c", false)));
        assert!(!holds(&mut r, 19, expired("c")));
        assert!(
            !holds(&mut r, 19, expired("b")),
            "a key without expiry never expires"
        );

        assert!(!holds(&mut r, 20, equals("a", "1")));
        assert!(holds(&mut r, 20, exists("a", false)));
        assert!(holds(&mut r, 20, expired("a")));
    }

    #[test]
    fn the_else_branch_runs_when_a_compare_fails() {
        let mut r = Replica::new();
        let cas = |expected: &str, new: &str| Batch {
            compares: vec![Compare::ValueEquals {
                key: key("a"),
                value: key(expected),
            }],
            ops: vec![put("a", new)],
            else_ops: vec![put("failed", expected)],
            return_previous: false,
        };
        r.apply(1, ops(vec![put("a", "1")]));
        assert_eq!(
            r.apply(1, cas("1", "2")),
            Outcome::Applied(BatchOutcome {
                index: 2,
                succeeded: true,
                results: vec![result(true, None, 0)]
            })
        );
        assert_eq!(
            r.apply(1, cas("1", "3")),
            Outcome::Applied(BatchOutcome {
                index: 3,
                succeeded: false,
                results: vec![result(false, None, 0)]
            })
        );
        assert_eq!(
            (r.value("a", 1), r.value("failed", 1)),
            (Some(("2".to_owned(), 0)), Some(("1".to_owned(), 0)))
        );
    }

    #[test]
    fn later_ops_see_earlier_ones_of_the_same_batch() {
        let mut r = Replica::new();
        let results = r.results(
            1,
            with_previous(vec![
                put("x", "1"),
                incr("x", 1),
                Op::Append {
                    key: key("x"),
                    value: key("0"),
                },
                Op::Expire {
                    key: key("x"),
                    at_ms: 9,
                },
                incr("x", 1),
                Op::Delete { key: key("x") },
                incr("x", 1),
            ]),
        );
        assert_eq!(
            results,
            [
                result(false, None, 0),
                result(true, Some("1"), 2),
                result(true, Some("2"), 2),
                result(true, Some("20"), 0),
                result(true, Some("20"), 21),
                result(true, Some("21"), 0),
                result(false, None, 1),
            ]
        );
        assert_eq!(r.value("x", 1), Some(("1".to_owned(), 0)));
    }

    #[test]
    fn a_refused_batch_changes_nothing() {
        let mut r = Replica::new();
        r.apply(
            10,
            ops(vec![put("a", "1"), put_with("old", "v", PutExpiry::At(20))]),
        );
        let snapshot = r.data.clone();
        let batch = ops(vec![
            put("a", "2"),
            put("b", "2"),
            Op::Delete { key: key("old") },
            put("x", "1"),
            incr("x", 1),
            Op::Append {
                key: key("x"),
                value: key("z"),
            },
            incr("x", 1),
        ]);
        assert_eq!(
            r.apply(30, batch),
            Outcome::Refused(Refusal::NotAnInteger { op: 6 })
        );
        assert_eq!(
            dump(&r.data).0,
            dump(&snapshot).0,
            "the keyspace is untouched, expired key included"
        );
        assert_eq!(r.data.last_stamp_ms(), 30);
    }
}
