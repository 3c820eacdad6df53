//! Cluster time as this replica sees it, and when it may stamp with it.
//!
//! Expiry is judged by cluster time, never by the clock of whichever node serves a read: the
//! leader stamps each write with its cluster time, a linearizable read judges expiry by the
//! leader's cluster time at its read point (carried back by the read-index round), and a
//! serializable read on a follower by the time of the last entry it applied. Cluster time never
//! goes backwards on a node: a wall clock stepping back holds it where it was instead of making
//! expired keys live again. A leader whose wall clock differs from a majority of the voters by
//! more than `--max-clock-skew-ms` stamps nothing: it would push cluster time forward (or hold it
//! back) for everyone, and for good.

use crate::error::Error;
use crate::error::Result;
use crate::raft::clock;
use crate::raft::clock::wall_clock_ms;
use crate::replica::Leadership;
use crate::replica::Replica;

impl Replica {
    /// This node's cluster time: its wall clock, but never behind what it applied or handed out
    /// before.
    pub(crate) fn cluster_now_ms(&self) -> u64 {
        self.cluster_clock
            .now(wall_clock_ms(), self.state.last_stamp_ms())
    }

    /// The stamp for a write this node proposes as leader; refused (nothing applied) while its
    /// clock disagrees with a majority of the voters.
    pub(crate) fn stamp_ms(&self) -> Result<u64> {
        if !self.clock_agrees() {
            return Err(Error::ClockSkew {
                offset_ms: self.largest_clock_offset_ms(),
                max_ms: self.config.max_clock_skew_ms,
            });
        }
        Ok(self.cluster_now_ms())
    }

    /// The cluster time this leader gives a read point: its cluster time, or — while its clock
    /// disagrees with the voters' — the time of the last applied entry, which a majority
    /// accepted.
    pub(crate) fn leader_read_time_ms(&self) -> u64 {
        if self.clock_agrees() {
            self.cluster_now_ms()
        } else {
            self.state.last_stamp_ms()
        }
    }

    /// The cluster time a serializable read judges expiry by (never below the time of the last
    /// applied entry, which the reader adds): the leader's own; on any other node only what
    /// it applied, so its own clock never decides.
    pub(crate) fn serializable_read_time_ms(&self) -> u64 {
        match self.leadership() {
            Leadership::Here => self.leader_read_time_ms(),
            _ => 0,
        }
    }

    /// Whether this node's wall clock agrees with a majority of the voters (itself included)
    /// within `--max-clock-skew-ms`, as measured on recent peer traffic.
    pub(crate) fn clock_agrees(&self) -> bool {
        let voters: Vec<u64> = self
            .with_metrics(|metrics| metrics.membership_config.membership().voter_ids().collect());
        clock::clock_agrees(
            self.identity.node_id(),
            &voters,
            &self.peers.clocks().current(),
            self.config.max_clock_skew_ms,
        )
    }

    /// The recent offset of another member's clock from this node's farthest from zero (that
    /// member's clock minus this node's), if any was measured.
    pub(crate) fn largest_clock_offset_ms(&self) -> Option<i64> {
        clock::largest_offset(&self.peers.clocks().current())
    }

    /// How far the members' clocks are from this node's, as measured on peer traffic.
    pub(crate) fn clocks(&self) -> &clock::ClockOffsets {
        self.peers.clocks()
    }
}
