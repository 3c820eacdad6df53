//! Wall clocks of the members and how far apart they are.
//!
//! Expiry is judged by cluster time, which the leader stamps from its wall clock, so a leader
//! whose clock runs far ahead would push cluster time forward for good. Every peer message
//! carries its sender's wall clock (`PeerMessage.sent_at_ms`, taken as it is sent); this module
//! turns them into the offset of each member's clock from this node's, against the message's
//! arrival: off by the message's transit only, never by how long the peer took to answer (an
//! fsync), as a round trip's midpoint would be. Replies count before requests: a request may be
//! held after it was stamped (fault injection), a reply never is. [`ClusterClock`] keeps the time a node hands out monotonic.
//! [`clock_agrees`] decides, without I/O, whether this node's
//! clock agrees with a majority of the voters, which it must before it stamps.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use crate::lock;

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Cluster time as this node hands it out: never behind any time it handed out before, so a
/// wall clock stepping back holds it still instead of making expired keys live again.
#[derive(Debug, Default)]
pub(crate) struct ClusterClock {
    issued: AtomicU64,
}

impl ClusterClock {
    /// The time to hand out now: `wall_ms` (this node's wall clock), but never below `floor_ms`
    /// (the stamp of the last applied entry) nor below any time handed out before.
    pub(crate) fn now(&self, wall_ms: u64, floor_ms: u64) -> u64 {
        let now = wall_ms.max(floor_ms);
        self.issued.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

/// An offset measured longer ago than this says nothing about the clock now.
const SAMPLE_TTL: Duration = Duration::from_secs(10);

/// The latest measured offset of each member's wall clock from this node's.
#[derive(Debug, Default)]
pub(crate) struct ClockOffsets {
    samples: Mutex<HashMap<u64, Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The member's clock minus this node's, in milliseconds.
    offset_ms: i64,
    taken: Instant,
    /// Measured on a reply: a measure on a request (which a held message skews) does not replace
    /// it while it is recent.
    from_reply: bool,
}

impl ClockOffsets {
    /// A reply from `peer` stamped `peer_ms` that arrived at `received_ms` (this node's clock). A
    /// stamp of 0 is a peer that does not tell its clock.
    pub(crate) fn reply(&self, peer: u64, peer_ms: u64, received_ms: u64) {
        self.record(peer, peer_ms, received_ms, true);
    }

    /// A request from `peer` stamped `peer_ms` that arrived at `received_ms` (this node's clock).
    pub(crate) fn request(&self, peer: u64, peer_ms: u64, received_ms: u64) {
        self.record(peer, peer_ms, received_ms, false);
    }

    fn record(&self, peer: u64, peer_ms: u64, local_ms: u64, from_reply: bool) {
        if peer_ms == 0 {
            return;
        }
        let mut samples = lock::lock(&self.samples);
        if !from_reply
            && samples
                .get(&peer)
                .is_some_and(|s| s.from_reply && s.taken.elapsed() <= SAMPLE_TTL)
        {
            return;
        }
        let sample = Sample {
            offset_ms: peer_ms as i64 - local_ms as i64,
            taken: Instant::now(),
            from_reply,
        };
        samples.insert(peer, sample);
    }

    /// The offsets measured recently, by member.
    pub(crate) fn current(&self) -> HashMap<u64, i64> {
        lock::lock(&self.samples)
            .iter()
            .filter(|(_, s)| s.taken.elapsed() <= SAMPLE_TTL)
            .map(|(&peer, s)| (peer, s.offset_ms))
            .collect()
    }
}

/// Whether the clock of node `me` agrees, within `max_skew_ms`, with a majority of `voters`:
/// itself (if a voter) and every voter whose recent offset (`offsets`) is within the bound. A
/// voter not measured recently does not count as agreeing.
pub(crate) fn clock_agrees(
    me: u64,
    voters: &[u64],
    offsets: &HashMap<u64, i64>,
    max_skew_ms: u64,
) -> bool {
    let agreeing = voters
        .iter()
        .filter(|&&v| {
            v == me
                || offsets
                    .get(&v)
                    .is_some_and(|offset| offset.unsigned_abs() <= max_skew_ms)
        })
        .count();
    agreeing * 2 > voters.len()
}

/// The recent offset farthest from zero, if any was measured.
pub(crate) fn largest_offset(offsets: &HashMap<u64, i64>) -> Option<i64> {
    offsets.values().copied().max_by_key(|o| o.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_stepping_back_holds_cluster_time_still() {
        let clock = ClusterClock::default();
        assert_eq!(clock.now(1_000, 0), 1_000);
        assert_eq!(clock.now(400, 0), 1_000);
        assert_eq!(clock.now(400, 1_200), 1_200);
        assert_eq!(clock.now(1_500, 0), 1_500);
    }

    #[test]
    fn a_leader_far_from_both_followers_disagrees_with_the_majority() {
        let offsets = HashMap::from([(2, -5_000), (3, -5_020)]);
        assert!(!clock_agrees(1, &[1, 2, 3], &offsets, 1000));
    }

    #[test]
    fn one_follower_far_off_leaves_a_majority_that_agrees() {
        let offsets = HashMap::from([(2, 5_000), (3, 40)]);
        assert!(clock_agrees(1, &[1, 2, 3], &offsets, 1000));
    }

    #[test]
    fn an_unmeasured_voter_does_not_count_as_agreeing() {
        assert!(!clock_agrees(1, &[1, 2, 3], &HashMap::new(), 1000));
        assert!(clock_agrees(1, &[1], &HashMap::new(), 1000));
    }

    #[test]
    fn a_reply_outranks_a_request_and_an_unstamped_message_says_nothing() {
        let clocks = ClockOffsets::default();
        clocks.reply(2, 6_050, 1_050);
        clocks.request(3, 900, 1_000);
        clocks.request(4, 0, 1_000);
        clocks.request(2, 1_000, 9_000);
        let now = clocks.current();
        assert_eq!(now, HashMap::from([(2, 5_000), (3, -100)]));
        assert_eq!(largest_offset(&now), Some(5_000));
    }
}
