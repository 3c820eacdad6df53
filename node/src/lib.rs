//! kvs-node: one member of a kvs cluster — a Raft group member whose state machine is an
//! in-memory map of byte keys to byte values, serving the `kvs.v1` gRPC API.
//!
//! The binary is thin: it parses [`NodeConfig`], binds [`Listeners`] and calls [`run`]; `demo`
//! supervises a local cluster of such processes.

mod announce;
mod auth;
mod config;
mod deadline;
pub mod demo;
mod error;
pub mod failpoint;
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
mod grpc;
pub mod identity;
mod lock;
mod memory_limit;
mod raft;
mod replica;
mod resp;
mod server;
mod store;
mod tls;

pub use announce::Serving;
pub use auth::AuthFileError;
pub use auth::Denied;
pub use auth::Role;
pub use config::NodeConfig;
pub use config::ReadPolicy;
pub use error::Error;
pub use error::Refusal;
pub use error::Result;
pub use raft::network::PEER_FORMAT;
pub use raft::peer_proto;
pub use server::Listeners;
pub use server::run;
