//! The one error type of kvs-operator.
//!
//! A reconcile fails for one of few reasons and the controller treats them all alike (log, count,
//! retry with a pause), so variants only say where the failure came from; the kvs client's own
//! error already tells whether a membership change may have been applied, and the next reconcile
//! re-reads the membership either way.

/// Errors of the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A call to the kvs cluster failed.
    #[error("kvs cluster: {0}")]
    Kvs(#[from] kvs_client::Error),
    /// The KvsCluster has no namespace or uid, so it was not read from the API server.
    #[error("KvsCluster {0} has no namespace or uid")]
    Unidentified(String),
    /// The resolver gives two ordinals one advertised address, so members could not be matched
    /// to pods.
    #[error("pods {first} and {second} resolve to the same address {address}")]
    AmbiguousAddress {
        /// The shared address.
        address: String,
        /// The lower ordinal.
        first: u32,
        /// The higher ordinal.
        second: u32,
    },
    /// The operator's own leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// Another operator instance took the lease.
    #[error("leadership lost to another operator instance")]
    LeadershipLost,
    /// The metrics endpoint could not be served.
    #[error("metrics endpoint: {0}")]
    Metrics(#[source] std::io::Error),
}

impl Error {
    /// A CamelCase reason for the `Ready` condition and the Warning Event of a failed reconcile.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::Kvs(_) => "KvsClusterError",
            Error::Unidentified(_) => "Unidentified",
            Error::AmbiguousAddress { .. } => "AmbiguousAddress",
            Error::Lease(_) | Error::LeadershipLost => "LeaderElection",
            Error::Metrics(_) => "MetricsEndpoint",
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
