//! The gRPC faces of a node: thin adapters that decode a request, call the [`Replica`] and map
//! its errors to statuses in one place ([`status`]).
//!
//! [`Replica`]: crate::replica::Replica

pub(crate) mod auth;
pub(crate) mod cluster;
pub(crate) mod health;
pub(crate) mod incoming;
pub(crate) mod kv;
pub(crate) mod peer;
pub(crate) mod status;
