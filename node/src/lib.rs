//! kvs-node: one member of a kvs cluster — a Raft group member whose state machine is an
//! in-memory map of byte keys to byte values, serving the `kvs.v1` gRPC API.
//!
//! The binary is thin: it parses [`NodeConfig`], binds [`Listeners`] and calls [`run`]; `demo`
//! supervises a local cluster of such processes.

mod backup;
mod config;
pub mod demo;
mod drain;
mod error;
mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
mod grpc;
pub mod identity;
mod kv;
mod membership;
mod raft;
mod replica;
mod resp;
mod server;
mod store;

/// Generated types of the peer protocol (`proto/peer.proto`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod peer_proto {
    tonic::include_proto!("kvs.peer.v1");
}

pub use config::NodeConfig;
pub use config::ReadPolicy;
pub use error::Error;
pub use error::Result;
pub use raft::network::PEER_FORMAT;
pub use server::Listeners;
pub use server::run;
