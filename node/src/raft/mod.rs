//! Consensus wiring: openraft's type configuration for kvs, the peer network client, the members'
//! clock offsets, leader forwarding, batched read index rounds and (for tests only) fault
//! injection on peer links.
//!
//! openraft decides; this module only adapts it to kvs's identity rules and transport.

pub(crate) mod clock;
pub(crate) mod forward;
pub(crate) mod network;
pub mod peer_proto;
pub(crate) mod read_batch;
pub(crate) mod read_index;

use crate::store::entry::TypeConfig;
use crate::store::state_machine::StateMachine;

/// A running openraft node of kvs.
pub(crate) type Raft = openraft::Raft<TypeConfig, StateMachine>;
