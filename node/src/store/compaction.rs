//! When to fold the log into a snapshot.
//!
//! A snapshot rewrites the whole state, and only a snapshot lets the log behind it be purged, so
//! the rule trades write amplification against the log's size. openraft's own policy counts
//! entries only: with a large state that rewrites gigabytes for every few megabytes of log, and
//! with large values it lets the log grow without bound. The rule here looks at bytes:
//!
//! - a snapshot is due once the log applied since the last one holds half the state's size or
//!   half of `--log-disk-bytes`, whichever is larger, so the log stays within the larger of the
//!   two and a snapshot is never written for less than half its own size of new log;
//! - a state smaller than half of `--log-disk-bytes` is cheap to rewrite, so it is also
//!   snapshotted every `--snapshot-every` entries, which keeps catch-up short.
//!
//! Behind a snapshot Raft keeps a short tail of the log, so a follower that lags a little needs
//! no snapshot. openraft counts that tail in entries; here it is also held to an eighth of
//! `--log-disk-bytes` (by the log's average entry size), so large values cannot make it large.
//!
//! Every replica applies the same rule to its own log; snapshots are not replicated decisions.

use tokio::sync::Notify;

/// The rule's settings, from `--snapshot-every` and `--log-disk-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotRule {
    pub(crate) every_entries: u64,
    pub(crate) log_disk_bytes: u64,
    /// The most entries kept behind a snapshot (openraft's `max_in_snapshot_log_to_keep`).
    pub(crate) tail_entries: u64,
}

impl Default for SnapshotRule {
    /// The flags' defaults.
    fn default() -> Self {
        SnapshotRule::new(20_000, 128 << 20)
    }
}

impl SnapshotRule {
    pub(crate) fn new(every_entries: u64, log_disk_bytes: u64) -> Self {
        SnapshotRule {
            every_entries,
            log_disk_bytes,
            tail_entries: (every_entries / 10).min(1_000),
        }
    }

    /// Where to purge the log behind a snapshot that ends at `last_index` and folded in `since`,
    /// when openraft's tail of [`SnapshotRule::tail_entries`] would hold more than an eighth of
    /// the budget; `None` leaves the purge to openraft.
    pub(crate) fn purge_upto(&self, last_index: u64, since: LogSince) -> Option<u64> {
        let average = (since.bytes / since.entries.max(1)).max(1);
        let tail = (self.log_disk_bytes / 8 / average).min(self.tail_entries);
        (tail < self.tail_entries).then(|| last_index.saturating_sub(tail))
    }

    /// Whether a snapshot is due, given what was applied since the last one and the state's
    /// size now.
    pub(crate) fn due(&self, since: LogSince, state_bytes: u64) -> bool {
        let half_budget = self.log_disk_bytes / 2;
        since.bytes >= (state_bytes / 2).max(half_budget)
            || (state_bytes < half_budget && since.entries >= self.every_entries)
    }
}

/// The log applied since the last snapshot was taken (or installed, or loaded at start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LogSince {
    pub(crate) entries: u64,
    /// Encoded size of those entries, by [`crate::store::entry::entry_bytes`].
    pub(crate) bytes: u64,
}

impl LogSince {
    pub(crate) fn add(&mut self, bytes: usize) {
        self.entries += 1;
        self.bytes += bytes as u64;
    }
}

/// What the store asks of Raft, which it cannot reach itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// Build a snapshot.
    Snapshot,
    /// Purge the log up to and including this index (behind a snapshot).
    PurgeUpto(u64),
}

/// The rule and the signals the state machine raises; a task above the store (which alone can
/// reach Raft) waits on them and asks Raft to act.
#[derive(Debug, Default)]
pub(crate) struct Compaction {
    pub(crate) rule: SnapshotRule,
    wake: Notify,
    snapshot_due: std::sync::atomic::AtomicBool,
    purge_upto: std::sync::Mutex<Option<u64>>,
}

impl Compaction {
    pub(crate) fn new(rule: SnapshotRule) -> Self {
        Compaction {
            rule,
            ..Compaction::default()
        }
    }

    /// Called after each apply: wakes the waiting task if a snapshot is due. Wake-ups coalesce,
    /// so this is cheap to call for every entry.
    pub(crate) fn check(&self, since: LogSince, state_bytes: u64) {
        if self.rule.due(since, state_bytes) {
            self.snapshot_due
                .store(true, std::sync::atomic::Ordering::Release);
            self.wake.notify_one();
        }
    }

    /// Called once a snapshot ending at `last_index` that folded in `since` is kept.
    pub(crate) fn snapshot_built(&self, last_index: u64, since: LogSince) {
        if let Some(upto) = self.rule.purge_upto(last_index, since) {
            *crate::lock::lock(&self.purge_upto) = Some(upto);
            self.wake.notify_one();
        }
    }

    /// Resolves with what Raft should do next, once there is something.
    pub(crate) async fn next(&self) -> Vec<Request> {
        loop {
            self.wake.notified().await;
            let mut requests = Vec::new();
            if self
                .snapshot_due
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                requests.push(Request::Snapshot);
            }
            if let Some(upto) = crate::lock::lock(&self.purge_upto).take() {
                requests.push(Request::PurgeUpto(upto));
            }
            if !requests.is_empty() {
                return requests;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn rule() -> SnapshotRule {
        SnapshotRule::new(1_000, 128 * MIB)
    }

    fn since(entries: u64, bytes: u64) -> LogSince {
        LogSince { entries, bytes }
    }

    #[test]
    fn a_small_state_is_snapshotted_by_entry_count() {
        assert!(!rule().due(since(999, MIB), 10 * MIB));
        assert!(rule().due(since(1_000, MIB), 10 * MIB));
    }

    #[test]
    fn a_log_of_large_values_is_bounded_by_half_the_budget_whatever_the_count() {
        assert!(!rule().due(since(10, 63 * MIB), 10 * MIB));
        assert!(rule().due(since(10, 64 * MIB), 10 * MIB));
    }

    #[test]
    fn a_large_state_waits_for_half_its_size_of_log() {
        let state = 3 * 1024 * MIB;
        // The entry count alone, or the budget alone, would rewrite 3 GiB for a small log.
        assert!(!rule().due(since(1_000_000, 64 * MIB), state));
        assert!(!rule().due(since(1_000_000, state / 2 - 1), state));
        assert!(rule().due(since(10, state / 2), state));
    }

    #[test]
    fn the_tail_behind_a_snapshot_is_held_to_an_eighth_of_the_budget() {
        // Small entries: openraft's tail of 100 entries is far below 16 MiB; it decides.
        assert_eq!(rule().purge_upto(5_000, since(1_000, 1_000 * 100)), None);
        // 1 MiB entries: 100 of them would be 100 MiB; 16 are kept.
        assert_eq!(rule().purge_upto(5_000, since(64, 64 * MIB)), Some(4_984));
        // Huge entries: nothing is kept behind the snapshot.
        assert_eq!(rule().purge_upto(5_000, since(2, 64 * MIB)), Some(5_000));
    }

    #[tokio::test]
    async fn requests_wake_the_waiter_once_for_many_checks() {
        let compaction = Compaction::new(rule());
        let quiet = std::time::Duration::from_millis(50);
        compaction.check(since(1, 1), 0);
        let woke = tokio::time::timeout(quiet, compaction.next()).await;
        assert!(woke.is_err(), "not due yet, yet the waiter woke: {woke:?}");
        for _ in 0..10 {
            compaction.check(since(1_000, 1), 0);
        }
        compaction.snapshot_built(5_000, since(64, 64 * MIB));
        assert_eq!(
            compaction.next().await,
            vec![Request::Snapshot, Request::PurgeUpto(4_984)]
        );
        let again = tokio::time::timeout(quiet, compaction.next()).await;
        assert!(again.is_err(), "every request was answered once: {again:?}");
    }
}
