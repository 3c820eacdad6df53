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
//! When a key is not linearizable, the checker shrinks its history to a small sub-history that
//! still cannot be linearized — using only cuts that keep it evidence against the whole history:
//! a window between two quiescent points (no operation with a known answer in flight), checked
//! from an unknown register state when it does not start with the run, keeping the indeterminate
//! writes still pending at its start; then, inside it, delta debugging removes operations that
//! do not change the register (reads, compare-and-swaps whose compare failed), since dropping a
//! constraint can never turn a linearizable history into one that is not.

use std::collections::HashSet;
use std::time::Duration;
use std::time::Instant;

use super::history::Call;
use super::history::History;
use super::history::Operation;
use super::history::Outcome;
use super::history::Return;
use super::history::Value;

/// The register as the search knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum State {
    /// Holds this value, or is absent.
    Known(Option<Value>),
    /// Could hold anything: the start of a window cut from the middle of a run.
    Unknown,
}

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
    /// No order does; a small sub-history that shows it.
    NotLinearizable(Violation),
    /// The search ran out of its step budget.
    Undecided,
}

/// A sub-history that cannot be linearized, which proves the whole history cannot be either.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The operations, by invocation time.
    pub operations: Vec<Operation>,
    /// The sub-history starts in the middle of the run, so the register may hold anything
    /// before its first operation (otherwise it starts absent).
    pub starts_unknown: bool,
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
    let mut relevant: Vec<Operation> = relevant;
    relevant.sort_by_key(|op| (op.invoke, op.process));
    match search(&relevant, State::Known(None), SEARCH_STEPS) {
        Search::Linearizable => Verdict::Linearizable,
        Search::Exhausted => Verdict::Undecided,
        Search::NotLinearizable => Verdict::NotLinearizable(shrink(&relevant)),
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
/// (`None`: an answer nobody saw), or `None` when that answer is impossible in `state`. From an
/// unknown state every answer is possible, and what is learnt from it becomes the state.
fn step(state: State, call: Call, answer: Option<Return>) -> Option<State> {
    let State::Known(state) = state else {
        return Some(match (call, answer) {
            (Call::Get, Some(Return::Get(read))) => State::Known(read),
            (Call::Put(value), _) => State::Known(Some(value)),
            (Call::Delete, _) => State::Known(None),
            (Call::Cas { new, .. }, Some(Return::Cas { swapped: true })) => State::Known(Some(new)),
            _ => State::Unknown,
        });
    };
    known_step(state, call, answer).map(State::Known)
}

fn known_step(state: Option<Value>, call: Call, answer: Option<Return>) -> Option<Option<Value>> {
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
fn search(ops: &[Operation], initial: State, budget: u64) -> Search {
    let answer = |op: &Operation| match op.outcome {
        Outcome::Ok(answer) => Some(answer),
        Outcome::Fail | Outcome::Info => None,
    };
    let mut entries = Entries::new(ops);
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = initial;
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

/// Shrinks a non-linearizable history (sorted by invocation) to a small violation; see the
/// module docs for why every cut keeps it a proof.
fn shrink(ops: &[Operation]) -> Violation {
    let started = Instant::now();
    let fails = |from: usize, ops: &[Operation]| {
        let initial = if from == 0 {
            State::Known(None)
        } else {
            State::Unknown
        };
        matches!(
            search(ops, initial, SEARCH_STEPS / 10),
            Search::NotLinearizable
        )
    };
    let cuts = quiescent_cuts(ops);
    // The shortest failing prefix, then the latest start that still fails: both are monotone.
    let end = first_failing(&cuts, |&to| fails(0, &window(ops, 0, to))).unwrap_or(ops.len());
    let starts: Vec<usize> = cuts.iter().copied().filter(|&c| c < end).rev().collect();
    let from = first_failing(&starts, |&from| fails(from, &window(ops, from, end))).unwrap_or(0);
    let mut kept = window(ops, from, end);

    let mut chunk = (kept.len() / 2).max(1);
    loop {
        let mut removed = false;
        let mut start = 0;
        while start < kept.len() && started.elapsed() < SHRINK_TIME {
            let end = (start + chunk).min(kept.len());
            let only_reads = kept[start..end].iter().all(changes_nothing);
            let candidate: Vec<Operation> =
                kept[..start].iter().chain(&kept[end..]).cloned().collect();
            if only_reads && fails(from, &candidate) {
                kept = candidate;
                removed = true;
            } else {
                start = end;
            }
        }
        if started.elapsed() >= SHRINK_TIME || (!removed && chunk == 1) {
            break;
        }
        if !removed {
            chunk = (chunk / 2).max(1);
        }
    }
    Violation {
        operations: kept,
        starts_unknown: from > 0,
    }
}

/// The first candidate (in the order given) for which `fails` holds, assuming that once it
/// holds it holds for every later candidate.
fn first_failing(candidates: &[usize], fails: impl Fn(&usize) -> bool) -> Option<usize> {
    let first = candidates.partition_point(|c| !fails(c));
    candidates.get(first).copied()
}

/// Indices `i` of `ops` (sorted by invocation; `ops.len()` included) where the history can be
/// cut: every operation with a known answer invoked before `ops[i]` completed before it.
fn quiescent_cuts(ops: &[Operation]) -> Vec<usize> {
    let mut cuts = vec![0];
    let mut busy_until = Duration::ZERO;
    for (i, op) in ops.iter().enumerate() {
        if i > 0 && busy_until < op.invoke {
            cuts.push(i);
        }
        if op.outcome != Outcome::Info {
            busy_until = busy_until.max(op.complete);
        }
    }
    cuts.push(ops.len());
    cuts
}

/// The operations invoked in `ops[from..to]`, plus the indeterminate ones invoked earlier, which
/// may still take effect inside the window.
fn window(ops: &[Operation], from: usize, to: usize) -> Vec<Operation> {
    ops[..from]
        .iter()
        .filter(|op| op.outcome == Outcome::Info)
        .chain(&ops[from..to])
        .cloned()
        .collect()
}

/// Operations that leave the register as they found it, whatever they answered.
fn changes_nothing(op: &Operation) -> bool {
    matches!(
        (op.call, op.outcome),
        (Call::Get, _)
            | (
                Call::Cas { .. },
                Outcome::Ok(Return::Cas { swapped: false })
            )
    )
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
            Verdict::NotLinearizable(violation) => {
                // Whatever the register held before, two overlapping reads with no write
                // between them cannot see two values.
                assert_eq!(violation.operations, vec![ops[2].clone(), ops[3].clone()]);
                assert!(violation.starts_unknown);
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
    fn a_violation_from_the_start_keeps_the_initial_state() {
        // Absent at the start: a delete cannot find a value no write put there.
        let delete = op(
            0,
            0,
            Some(1),
            Call::Delete,
            Some(Return::Delete { existed: true }),
        );
        match check_key(&[delete.clone(), put(1, 2, 3, 1)]) {
            Verdict::NotLinearizable(violation) => {
                assert_eq!(violation.operations, vec![delete]);
                assert!(!violation.starts_unknown);
            }
            other => panic!("expected an anomaly, got {other:?}"),
        }
    }

    #[test]
    fn indeterminate_writes_pending_at_a_cut_stay_in_the_window() {
        // The lost-answer write of 1 may land after the write of 2, so the read of 1 is fine.
        let ops = [
            op(0, 0, None, Call::Put(1), None),
            put(1, 2, 3, 2),
            get(1, 4, 5, Some(1)),
        ];
        assert!(linearizable(&ops));
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
            Verdict::NotLinearizable(violation) => {
                assert_eq!(
                    violation.operations,
                    vec![ops[400].clone(), ops[401].clone()],
                    "the write that completed, and the read after it that did not see it"
                );
                assert!(violation.starts_unknown);
            }
            other => panic!("expected an anomaly, got {other:?}"),
        }
    }
}
