//! Typed async client for kvs.
//!
//! [`Client`] speaks the gRPC API in `proto/kvs.proto` to a cluster: it follows the leader,
//! retries what is safe to retry within one deadline, and gives every write a `WriteId` so a
//! retried write is applied at most once. Clones of a `Client` share one [`WriteSession`], which
//! tells the cluster which of its writes are still in flight (the watermark), so a client shared
//! by many tasks never has a write it merely retried refused as too old. When a write's fate cannot be known, the error says so
//! ([`Error::OutcomeUnknown`]) instead of guessing. The `kvsctl` binary (feature `cli`) is a thin
//! shell over this library; embedders build without it and get no CLI dependencies.

pub mod backup;
mod client;
mod credentials;
mod endpoint;
mod error;
mod kv;
pub mod membership;
#[cfg(feature = "object-store")]
pub mod object;
mod retry;
mod routing;
mod session;
mod tls;

pub use client::{Client, ClientOptions, EndpointStatus, Snapshot};
pub use credentials::{Credentials, Password};
pub use error::{Error, Result};
pub use kv::{Action, Expect, KeyValue};
pub use session::{MAX_IN_FLIGHT, SESSION_EXPIRED, WriteSession, WriteTicket};
pub use tls::TlsOptions;

/// The wire contract of `proto/kvs.proto`: the generated protobuf and gRPC types of the `kvs.v1`
/// package, and the response metadata that travels beside them.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    tonic::include_proto!("kvs.v1");

    /// The response metadata key under which a node names the leader's client address
    /// (`host:port`). A node writes it on UNAVAILABLE when it knows the leader; the client reads
    /// it to send the next attempt there, and reports it with an error that gives up.
    pub const LEADER_HEADER: &str = "kvs-leader";
}
