//! The Raft log entry of kvs: openraft's type configuration (what an entry carries, what applying
//! it returns, how members are addressed) and an entry's size as the log and replication count it.
//!
//! It lives with the log format rather than with the Raft wiring because it *is* the stored
//! format: the durable log, snapshots and the state machine are written in these types, and the
//! storage must not depend on the network that happens to carry them.

use std::fmt;

use openraft::EntryPayload;
use serde::Deserialize;
use serde::Serialize;

use crate::store::command::Command;
use crate::store::command::Outcome;

/// Where a member can be reached, as the member itself reported it when it was added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberAddr {
    /// Client (gRPC API) address, `host:port`.
    pub(crate) addr: String,
    /// Peer (Raft) address, `host:port`.
    pub(crate) peer_addr: String,
}

impl fmt::Display for MemberAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (peer {})", self.addr, self.peer_addr)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of kvs.
    pub(crate) TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = MemberAddr,
);

/// A rough upper bound of an entry's encoded size: replication cuts batches by it, and the
/// durable log bounds its cache of recent entries by it.
pub(crate) fn entry_bytes(payload: &EntryPayload<Command, u64, MemberAddr>) -> usize {
    match payload {
        EntryPayload::Blank => 32,
        EntryPayload::Normal(cmd) => cmd.encoded_len_hint(),
        EntryPayload::Membership(m) => {
            64 + m
                .nodes()
                .map(|(_, n)| 32 + n.addr.len() + n.peer_addr.len())
                .sum::<usize>()
        }
    }
}
