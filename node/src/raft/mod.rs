//! Consensus wiring: openraft's type configuration for kvs, the peer network client, leader
//! forwarding, batched read index rounds and (for tests only) fault injection on peer links.
//!
//! openraft decides; this module only adapts it to kvs's identity rules and transport.

pub(crate) mod fault;
pub(crate) mod forward;
pub(crate) mod network;
pub(crate) mod read_batch;
pub(crate) mod read_index;

use std::fmt;

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

pub(crate) type Raft = openraft::Raft<TypeConfig, crate::store::state_machine::StateMachine>;
