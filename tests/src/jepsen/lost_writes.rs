//! Lost writes: an acknowledged write that the final state of its key cannot come after.
//!
//! Values are unique, so the final value of a key names the one operation that wrote it (or, when
//! absent, the deletes that may have removed it). If that operation finished before an
//! acknowledged write began, real time puts the acknowledged write later — and the final state
//! shows no trace of it: the write was lost. This needs no search, so it holds even for keys whose
//! linearizability search is undecided.

use std::time::Duration;

use super::history::Call;
use super::history::Operation;
use super::history::Outcome;
use super::history::Return;
use super::history::Value;

/// The acknowledged writes of one key's `operations` that its `last` value (read once every
/// client had stopped) shows were lost.
pub fn lost_writes(operations: &[Operation], last: Option<Value>) -> Vec<Operation> {
    // When an operation that may have produced the last state finished at the latest.
    let finished = |op: &Operation| match op.outcome {
        Outcome::Info => Duration::MAX,
        _ => op.complete,
    };
    // `None`: absent and never deleted, so the initial state, which precedes everything.
    let producers_finished: Option<Duration> = operations
        .iter()
        .filter(|op| op.outcome != Outcome::Fail)
        .filter(|op| match last {
            Some(value) => op.written() == Some(value),
            None => op.call == Call::Delete,
        })
        .map(finished)
        .max();
    operations
        .iter()
        .filter(|op| acknowledged_write(op))
        .filter(|op| match (last, op.call) {
            (Some(value), _) if op.written() == Some(value) => false,
            (None, Call::Delete) => false,
            _ => producers_finished.is_none_or(|finished| finished < op.invoke),
        })
        .cloned()
        .collect()
}

fn acknowledged_write(op: &Operation) -> bool {
    match op.outcome {
        Outcome::Ok(Return::Put | Return::Delete { .. } | Return::Cas { swapped: true }) => true,
        Outcome::Ok(Return::Get(_) | Return::Cas { swapped: false })
        | Outcome::Fail
        | Outcome::Info => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(from: u64, to: u64, call: Call, outcome: Outcome) -> Operation {
        Operation {
            process: 0,
            key: "k".into(),
            call,
            invoke: Duration::from_secs(from),
            complete: Duration::from_secs(to),
            outcome,
        }
    }

    fn put(from: u64, to: u64, value: Value) -> Operation {
        op(from, to, Call::Put(value), Outcome::Ok(Return::Put))
    }

    #[test]
    fn the_last_write_surviving_loses_nothing() {
        let ops = [put(0, 1, 1), put(2, 3, 2)];
        assert!(lost_writes(&ops, Some(2)).is_empty());
    }

    #[test]
    fn an_older_value_at_the_end_means_the_later_write_was_lost() {
        let ops = [put(0, 1, 1), put(2, 3, 2)];
        assert_eq!(lost_writes(&ops, Some(1)), vec![ops[1].clone()]);
    }

    #[test]
    fn concurrent_writes_may_end_in_either_order() {
        let ops = [put(0, 5, 1), put(1, 4, 2)];
        assert!(lost_writes(&ops, Some(1)).is_empty());
        assert!(lost_writes(&ops, Some(2)).is_empty());
    }

    #[test]
    fn an_absent_key_loses_every_write_after_the_last_delete() {
        let delete = op(
            2,
            3,
            Call::Delete,
            Outcome::Ok(Return::Delete { existed: true }),
        );
        let ops = [put(0, 1, 1), delete.clone(), put(4, 5, 2)];
        assert_eq!(lost_writes(&ops, None), vec![ops[2].clone()]);
        let never_written = [put(0, 1, 1)];
        assert_eq!(
            lost_writes(&never_written, None),
            vec![never_written[0].clone()]
        );
    }

    #[test]
    fn an_indeterminate_write_may_be_the_last_one() {
        let ops = [op(0, 1, Call::Put(1), Outcome::Info), put(2, 3, 2)];
        assert!(lost_writes(&ops, Some(1)).is_empty());
    }
}
