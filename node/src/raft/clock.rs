//! Wall clocks of the members and how far apart they are.
//!
//! Expiry is judged by cluster time, which the leader stamps from its wall clock, so a leader
//! whose clock runs far ahead would push cluster time forward for good. Every peer message
//! carries its sender's wall clock (`PeerMessage.sent_at_ms`); this module turns them into the
//! offset of each member's clock from this node's: from a reply, against the midpoint of the
//! request's round trip (off by at most half of it), and from a request, against its arrival
//! (off by the message's transit). [`ClusterClock`] keeps the time a node hands out monotonic.
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
    /// Measured over a round trip: bounded by the round trip, so a one-way measure (which a
    /// slow or held message skews) does not replace it while it is recent.
    round_trip: bool,
}

impl ClockOffsets {
    /// A reply from `peer` stamped `peer_ms`, to a request this node sent at `sent_ms` and whose
    /// reply arrived at `received_ms` (this node's clock). A stamp of 0 is a peer that does not
    /// tell its clock.
    pub(crate) fn reply(&self, peer: u64, sent_ms: u64, peer_ms: u64, received_ms: u64) {
        let midpoint = sent_ms / 2 + received_ms / 2;
        self.record(peer, peer_ms, midpoint, true);
    }

    /// A request from `peer` stamped `peer_ms`, arrived at `received_ms` (this node's clock).
    pub(crate) fn request(&self, peer: u64, peer_ms: u64, received_ms: u64) {
        self.record(peer, peer_ms, received_ms, false);
    }

    fn record(&self, peer: u64, peer_ms: u64, local_ms: u64, round_trip: bool) {
        if peer_ms == 0 {
            return;
        }
        let mut samples = lock::lock(&self.samples);
        if !round_trip
            && samples
                .get(&peer)
                .is_some_and(|s| s.round_trip && s.taken.elapsed() <= SAMPLE_TTL)
        {
            return;
        }
        let sample = Sample {
            offset_ms: peer_ms as i64 - local_ms as i64,
            taken: Instant::now(),
            round_trip,
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
    fn a_reply_is_judged_against_the_middle_of_its_round_trip_and_outranks_a_request() {
        let clocks = ClockOffsets::default();
        clocks.reply(2, 1_000, 6_050, 1_100);
        clocks.request(3, 900, 1_000);
        clocks.request(4, 0, 1_000);
        clocks.request(2, 1_000, 9_000);
        let now = clocks.current();
        assert_eq!(now, HashMap::from([(2, 5_000), (3, -100)]));
        assert_eq!(largest_offset(&now), Some(5_000));
    }
}
