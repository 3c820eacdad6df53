//! When a member has caught up with the leader: the rule every tool that changes membership
//! follows.
//!
//! `kvsctl member add` and the operator both promote learners, and the operator also waits for a
//! restarted member to catch up before it restarts the next one. They decide with this one
//! function, on the numbers the leader's member list reports (`matched_index`, `lag`), so a
//! cluster grows the same way whichever of them drives it.

/// The most log entries a member may be behind the leader and still count as caught up.
///
/// A healthy member under steady writes is never level: the lag the leader reports counts the
/// entries it appended but the member has not acknowledged yet, and the leader ships up to 256
/// entries per replication message. A bound far below that window may not be met while writes
/// go on, and a promotion then waits until its deadline for a learner that is fine. 64 entries, a
/// quarter of one message, is met by a member that keeps up, and a member that far behind is
/// level after its next message, so making it a voter delays new writes by one round trip to it
/// at most — not by a catch-up.
pub const MAX_CAUGHT_UP_LAG: u64 = 64;

/// Whether a member counts as caught up: it has acknowledged at least one entry, and it is at
/// most [`MAX_CAUGHT_UP_LAG`] entries behind the leader.
///
/// The first half matters for a young cluster, whose whole log may be shorter than the bound: a
/// learner that never acknowledged anything (unreachable, or still receiving a snapshot) must not
/// become a voter just because there is little to miss.
pub fn caught_up(matched_index: u64, lag: u64) -> bool {
    matched_index > 0 && lag <= MAX_CAUGHT_UP_LAG
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_caught_up_once_it_replicated_and_is_close() {
        assert!(caught_up(90, 0));
        assert!(caught_up(90, MAX_CAUGHT_UP_LAG));
        assert!(!caught_up(90, MAX_CAUGHT_UP_LAG + 1));
    }

    #[test]
    fn a_member_that_acknowledged_nothing_is_not_caught_up_however_short_the_log() {
        assert!(!caught_up(0, 0));
        assert!(!caught_up(0, 3));
    }
}
