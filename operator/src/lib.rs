//! kvs-operator: runs kvs clusters on Kubernetes and keeps their pods and Raft membership in step.
//!
//! A reconcile observes (`observe`), decides one step (`plan`, pure) and carries it out (`act`);
//! `controller` runs that loop for every `KvsCluster`. The split exists so that the decisions —
//! which are what can lose a quorum or data — are tested without Kubernetes or a network.

mod act;
pub mod backup;
pub mod controller;
pub mod crd;
mod error;
pub mod metrics;
pub mod observe;
mod plan;
pub mod quantity;
pub mod resources;

pub use error::{Error, Result};
pub use plan::Settings;
