//! A linearizability checker for histories of registers, one register per key.
//!
//! Linearizability is compositional (Herlihy & Wing's locality, the "P-compositionality" porcupine
//! and Knossos exploit): a history is linearizable iff its sub-history on every key is, so each
//! key is searched on its own. The search is Wing & Gong's, with Lowe's memoisation as porcupine
//! does it: the calls and returns of one key form a time-ordered linked list; the search
//! linearizes the earliest call the register model accepts, lifts it (and its return) out of the
//! list, and backtracks when it meets the return of a call it has not linearized. A configuration
//! (which operations are linearized, register state) seen before is never explored again.
//!
//! Indeterminate (`Info`) operations return at "the end of time": they may take effect at any
//! point after their invocation, or never. Reaching the return of one means every operation with
//! a known answer has been placed, so the history is linearizable. Reads whose outcome is unknown
//! and operations that definitely failed change nothing and are dropped up front.
//!
//! When a key is not linearizable, the checker shrinks its history to a minimal sub-history that
//! is still not linearizable (delta debugging, keeping every value a remaining operation observed
//! written by a remaining operation), which is what a person needs to read.

use std::collections::HashSet;
use std::time::Duration;
use std::time::Instant;

use super::history::Call;
use super::history::History;
use super::history::Operation;
use super::history::Outcome;
use super::history::Return;
use super::history::Value;

/// The register: its value, or absent.
type State = Option<Value>;

/// Configurations one search may explore before it gives up undecided.
const SEARCH_STEPS: u64 = 2_000_000;
/// How long shrinking a non-linearizable key may take; the smallest failing history found by
/// then is reported.
const SHRINK_TIME: Duration = Duration::from_secs(20);

/// What the checker found on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations, consistent with real time, explains every answer.
    Linearizable,
    /// No order does; a minimal sub-history that shows it.
    NotLinearizable(Vec<Operation>),
    /// The search ran out of its step budget.
    Undecided,
}

/// A key whose history is not (or could not be shown to be) linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// The key.
    pub key: String,
    /// What was found.
    pub verdict: Verdict,
}

/// Checks every key of `history`; returns the keys that are not shown linearizable.
pub fn check(history: &History) -> Vec<Anomaly> {
    history
        .by_key()
        .into_iter()
        .filter_map(|(key, ops)| match check_key(&ops) {
            Verdict::Linearizable => None,
            verdict => Some(Anomaly { key, verdict }),
        })
        .collect()
}

/// Checks the operations of one key, shrinking a failure to a minimal sub-history.
pub fn check_key(operations: &[Operation]) -> Verdict {
    let relevant: Vec<Operation> = operations
        .iter()
        .filter(|op| matters(op))
        .cloned()
        .collect();
    match search(&relevant, SEARCH_STEPS) {
        Search::Linearizable => Verdict::Linearizable,
        Search::Exhausted => Verdict::Undecided,
        Search::NotLinearizable => Verdict::NotLinearizable(shrink(relevant)),
    }
}

/// Failed operations did nothing, and a read nobody saw the answer of constrains nothing.
fn matters(op: &Operation) -> bool {
    match op.outcome {
        Outcome::Ok(_) => true,
        Outcome::Fail => false,
        Outcome::Info => op.is_write(),
    }
}

/// The register model: the state after `call` takes effect in `state` and answers `answer`
/// (`None`: an answer nobody saw), or `None` when that answer is impossible in `state`.
fn step(state: State, call: Call, answer: Option<Return>) -> Option<State> {
    match (call, answer) {
        (Call::Get, None) => Some(state),
        (Call::Get, Some(Return::Get(read))) => (read == state).then_some(state),
        (Call::Put(value), None | Some(Return::Put)) => Some(Some(value)),
        (Call::Delete, None) => Some(None),
        (Call::Delete, Some(Return::Delete { existed })) => {
            (existed == state.is_some()).then_some(None)
        }
        (Call::Cas { expect, new }, None) => Some(if state == expect { Some(new) } else { state }),
        (Call::Cas { expect, new }, Some(Return::Cas { swapped })) => {
            match (state == expect, swapped) {
                (true, true) => Some(Some(new)),
                (false, false) => Some(state),
                _ => None,
            }
        }
        _ => None,
    }
}

enum Search {
    Linearizable,
    NotLinearizable,
    Exhausted,
}

const NIL: usize = usize::MAX;

/// The time-ordered calls and returns of one key as a doubly linked list that entries can be
/// lifted out of and put back into (dancing links). Entry `2i` is the call of operation `i`,
/// `2i + 1` its return; the head sentinel is the last slot.
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl Entries {
    fn new(ops: &[Operation]) -> Self {
        let n = ops.len();
        let mut order: Vec<(Duration, bool, usize)> = Vec::with_capacity(2 * n);
        for (i, op) in ops.iter().enumerate() {
            let returned = match op.outcome {
                Outcome::Info => Duration::MAX,
                _ => op.complete,
            };
            // On equal times a call sorts first: the two operations count as concurrent, which
            // can only make the checker more lenient, never report a false anomaly.
            order.push((op.invoke, false, 2 * i));
            order.push((returned, true, 2 * i + 1));
        }
        order.sort();
        let head = 2 * n;
        let mut next = vec![NIL; 2 * n + 1];
        let mut prev = vec![NIL; 2 * n + 1];
        let mut last = head;
        for &(_, _, entry) in &order {
            next[last] = entry;
            prev[entry] = last;
            last = entry;
        }
        Entries { next, prev, head }
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    /// Takes call `e` and its return out of the list.
    fn lift(&mut self, e: usize) {
        self.unlink(e);
        self.unlink(e + 1);
    }

    /// Puts call `e` and its return back, undoing [`Entries::lift`].
    fn unlift(&mut self, e: usize) {
        self.relink(e + 1);
        self.relink(e);
    }
}

/// Wing & Gong's search with Lowe's memoisation over one key's operations.
fn search(ops: &[Operation], budget: u64) -> Search {
    let answer = |op: &Operation| match op.outcome {
        Outcome::Ok(answer) => Some(answer),
        Outcome::Fail | Outcome::Info => None,
    };
    let mut entries = Entries::new(ops);
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut entry = entries.first();
    let mut steps = 0u64;
    while entry != NIL {
        steps += 1;
        if steps > budget {
            return Search::Exhausted;
        }
        let i = entry / 2;
        if entry.is_multiple_of(2) {
            if let Some(after) = step(state, ops[i].call, answer(&ops[i])) {
                linearized[i / 64] |= 1 << (i % 64);
                if seen.insert((linearized.clone(), after)) {
                    stack.push((entry, state));
                    state = after;
                    entries.lift(entry);
                    entry = entries.first();
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            entry = entries.next[entry];
        } else {
            if ops[i].outcome == Outcome::Info {
                // Only operations that may never take effect are left.
                return Search::Linearizable;
            }
            let Some((call, before)) = stack.pop() else {
                return Search::NotLinearizable;
            };
            let j = call / 2;
            linearized[j / 64] &= !(1 << (j % 64));
            state = before;
            entries.unlift(call);
            entry = entries.next[call];
        }
    }
    Search::Linearizable
}

/// Shrinks a non-linearizable history: removes chunks of operations, halving the chunk size,
/// while what is left stays well formed and not linearizable.
fn shrink(mut ops: Vec<Operation>) -> Vec<Operation> {
    let started = Instant::now();
    let fails = |candidate: &[Operation]| {
        well_formed(candidate)
            && matches!(
                search(candidate, SEARCH_STEPS / 10),
                Search::NotLinearizable
            )
    };
    let mut chunk = (ops.len() / 2).max(1);
    loop {
        let mut removed = false;
        let mut start = 0;
        while start < ops.len() {
            if started.elapsed() > SHRINK_TIME {
                return ops;
            }
            let end = (start + chunk).min(ops.len());
            let candidate: Vec<Operation> =
                ops[..start].iter().chain(&ops[end..]).cloned().collect();
            if fails(&candidate) {
                ops = candidate;
                removed = true;
            } else {
                start = end;
            }
        }
        if !removed {
            if chunk == 1 {
                return ops;
            }
            chunk = (chunk / 2).max(1);
        }
    }
}

/// Every value an operation observed is written by an operation of the history: a sub-history
/// without the write a read saw is "not linearizable" for a reason nobody needs to be told.
fn well_formed(ops: &[Operation]) -> bool {
    let written: HashSet<Value> = ops.iter().filter_map(Operation::written).collect();
    ops.iter()
        .filter_map(Operation::observed)
        .all(|value| written.contains(&value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation on key `k` from `from` to `to` (tenths of a second); `to = None` for info.
    fn op(
        process: usize,
        from: u64,
        to: Option<u64>,
        call: Call,
        answer: Option<Return>,
    ) -> Operation {
        let outcome = match (to, answer) {
            (None, _) => Outcome::Info,
            (Some(_), Some(answer)) => Outcome::Ok(answer),
            (Some(_), None) => Outcome::Fail,
        };
        Operation {
            process,
            key: "k".into(),
            call,
            invoke: Duration::from_millis(100 * from),
            complete: Duration::from_millis(100 * to.unwrap_or(from + 1)),
            outcome,
        }
    }

    fn put(p: usize, from: u64, to: u64, v: Value) -> Operation {
        op(p, from, Some(to), Call::Put(v), Some(Return::Put))
    }

    fn get(p: usize, from: u64, to: u64, v: Option<Value>) -> Operation {
        op(p, from, Some(to), Call::Get, Some(Return::Get(v)))
    }

    fn linearizable(ops: &[Operation]) -> bool {
        check_key(ops) == Verdict::Linearizable
    }

    #[test]
    fn sequential_reads_of_the_last_write_are_linearizable() {
        let ops = [
            get(0, 0, 1, None),
            put(0, 2, 3, 1),
            get(1, 4, 5, Some(1)),
            put(1, 6, 7, 2),
            get(0, 8, 9, Some(2)),
        ];
        assert!(linearizable(&ops));
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        let old = [put(0, 0, 1, 1), put(0, 2, 6, 2), get(1, 3, 4, Some(1))];
        let new = [put(0, 0, 1, 1), put(0, 2, 6, 2), get(1, 3, 4, Some(2))];
        assert!(linearizable(&old));
        assert!(linearizable(&new));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not_linearizable() {
        let ops = [
            put(0, 0, 1, 1),
            put(0, 2, 3, 2),
            get(1, 4, 5, Some(1)),
            get(2, 4, 5, Some(2)),
        ];
        match check_key(&ops) {
            Verdict::NotLinearizable(minimal) => {
                // The other read and nothing else can go: all three remaining ops are needed.
                assert_eq!(
                    minimal,
                    vec![ops[0].clone(), ops[1].clone(), ops[2].clone()]
                );
            }
            other => panic!("expected an anomaly, got {other:?}"),
        }
    }

    #[test]
    fn reads_that_go_back_in_time_are_not_linearizable() {
        // Two writes overlap, so either order is fine — but not both orders at once.
        let ops = [
            put(0, 0, 10, 1),
            put(1, 0, 10, 2),
            get(2, 1, 2, Some(1)),
            get(2, 3, 4, Some(2)),
            get(2, 5, 6, Some(1)),
        ];
        assert!(!linearizable(&ops));
    }

    #[test]
    fn a_read_of_a_value_never_written_is_not_linearizable() {
        assert!(!linearizable(&[put(0, 0, 1, 1), get(1, 2, 3, Some(7))]));
    }

    #[test]
    fn an_indeterminate_write_may_take_effect_late() {
        // The write's answer was lost; a read long after it still may see it.
        let ops = [
            op(0, 0, None, Call::Put(1), None),
            get(1, 5, 6, None),
            get(1, 7, 8, Some(1)),
        ];
        assert!(linearizable(&ops));
    }

    #[test]
    fn an_indeterminate_write_may_never_take_effect() {
        let ops = [
            put(0, 0, 1, 1),
            op(1, 2, None, Call::Put(2), None),
            get(2, 5, 6, Some(1)),
        ];
        assert!(linearizable(&ops));
    }

    #[test]
    fn an_indeterminate_write_cannot_take_effect_before_it_was_invoked() {
        let ops = [get(0, 0, 1, Some(1)), op(1, 2, None, Call::Put(1), None)];
        assert!(!linearizable(&ops));
    }

    #[test]
    fn an_indeterminate_write_takes_effect_at_most_once() {
        // Seen, overwritten, then seen again: that would be the same write applied twice.
        let ops = [
            op(0, 0, None, Call::Put(1), None),
            get(1, 2, 3, Some(1)),
            put(1, 4, 5, 2),
            get(1, 6, 7, Some(1)),
        ];
        assert!(!linearizable(&ops));
    }

    #[test]
    fn failed_operations_never_took_effect() {
        let ops = [op(0, 0, Some(1), Call::Put(1), None), get(1, 2, 3, Some(1))];
        assert!(!linearizable(&ops));
        let unseen = [op(0, 0, Some(1), Call::Put(1), None), get(1, 2, 3, None)];
        assert!(linearizable(&unseen));
    }

    #[test]
    fn compare_and_swap_answers_must_match_the_register() {
        let swapped = |expect, new| Call::Cas { expect, new };
        let ok = [
            put(0, 0, 1, 1),
            op(
                0,
                2,
                Some(3),
                swapped(Some(1), 2),
                Some(Return::Cas { swapped: true }),
            ),
            op(
                1,
                4,
                Some(5),
                swapped(Some(1), 3),
                Some(Return::Cas { swapped: false }),
            ),
            get(1, 6, 7, Some(2)),
        ];
        assert!(linearizable(&ok));
        let double_swap = [
            put(0, 0, 1, 1),
            op(
                0,
                2,
                Some(3),
                swapped(Some(1), 2),
                Some(Return::Cas { swapped: true }),
            ),
            op(
                1,
                4,
                Some(5),
                swapped(Some(1), 3),
                Some(Return::Cas { swapped: true }),
            ),
        ];
        assert!(!linearizable(&double_swap));
        let indeterminate = [
            op(0, 0, None, swapped(None, 5), None),
            get(1, 2, 3, Some(5)),
            op(
                1,
                4,
                Some(5),
                swapped(None, 6),
                Some(Return::Cas { swapped: false }),
            ),
        ];
        assert!(linearizable(&indeterminate));
    }

    #[test]
    fn delete_answers_must_match_the_register() {
        let delete = |existed| Some(Return::Delete { existed });
        let ops = [
            put(0, 0, 1, 1),
            op(0, 2, Some(3), Call::Delete, delete(true)),
            op(1, 4, Some(5), Call::Delete, delete(false)),
            get(1, 6, 7, None),
        ];
        assert!(linearizable(&ops));
        let phantom = [op(0, 0, Some(1), Call::Delete, delete(true))];
        assert!(!linearizable(&phantom));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = put(0, 0, 1, 9);
        other.key = "other".into();
        let history = History {
            operations: vec![
                put(0, 0, 1, 1),
                other,
                put(0, 2, 3, 2),
                get(1, 4, 5, Some(1)),
            ],
        };
        let anomalies = check(&history);
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].key, "k");
    }

    #[test]
    fn many_concurrent_indeterminate_writes_are_decided_quickly() {
        // Ten writes whose answers were lost, then reads that pin down a plausible order.
        let mut ops: Vec<Operation> = (0..10)
            .map(|i| op(i, 0, None, Call::Put(i as Value), None))
            .collect();
        ops.push(get(30, 5, 6, Some(3)));
        ops.push(get(30, 7, 8, Some(7)));
        let started = Instant::now();
        assert!(linearizable(&ops));
        ops.push(get(30, 9, 10, Some(3)));
        assert!(!linearizable(&ops));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_long_history_with_one_stale_read_shrinks_to_the_stale_read() {
        let mut ops = Vec::new();
        for i in 0..300u64 {
            ops.push(put(0, 4 * i, 4 * i + 1, i + 1));
            ops.push(get(1, 4 * i + 2, 4 * i + 3, Some(i + 1)));
        }
        assert!(linearizable(&ops));
        // Deep in the run a read returns the value of the write before the last one.
        ops[401] = get(1, 4 * 200 + 2, 4 * 200 + 3, Some(200));
        match check_key(&ops) {
            Verdict::NotLinearizable(minimal) => {
                assert_eq!(
                    minimal,
                    vec![ops[398].clone(), ops[400].clone(), ops[401].clone()],
                    "the write read, the write that overwrote it, and the stale read"
                );
            }
            other => panic!("expected an anomaly, got {other:?}"),
        }
    }
}
