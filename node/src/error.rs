//! The one error type of kvs-node.
//!
//! Variants say what went wrong and, for a write, whether it may have been applied: that
//! distinction is what clients build safe retries on. They are mapped to gRPC statuses in one
//! place per face: `grpc::status` for gRPC, `resp::status` for RESP.

use std::sync::Arc;

use crate::identity::Mismatch;

/// Errors of a kvs node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// This node is not the leader and could not forward; nothing was applied.
    #[error("not the leader{}", leader_suffix(.leader))]
    NotLeader {
        /// The leader's client address, when known.
        leader: Option<String>,
    },
    /// The leader cannot reach a quorum; nothing was applied.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// This node is not a member of a cluster (yet); nothing was applied.
    #[error("this node is not a member of a cluster")]
    NotMember,
    /// The change cannot be made right now (another membership change is in progress); nothing
    /// was applied and a retry may succeed.
    #[error("busy: {0}")]
    Busy(String),
    /// The node is shutting down and takes no new requests; nothing was applied.
    #[error("node is shutting down")]
    ShuttingDown,
    /// A read could not be served in time; reads never change anything.
    #[error("read timed out after {0} ms")]
    ReadTimeout(u64),
    /// A write was proposed but its outcome was not learned in time: it may have been applied.
    #[error("write outcome unknown after {0} ms: it may have been applied")]
    WriteTimeout(u64),
    /// A write's outcome is unknown for another reason (leader change, lost connection).
    #[error("write outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A key exceeds `--max-key-bytes`.
    #[error("key is {len} bytes, more than the limit of {max} bytes")]
    KeyTooLarge {
        /// The key's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value exceeds `--max-value-bytes`.
    #[error("value is {len} bytes, more than the limit of {max} bytes")]
    ValueTooLarge {
        /// The value's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A batch has more ops (compares included) than `--max-batch-ops`.
    #[error("batch has {ops} operations, more than the limit of {max}")]
    TooManyOps {
        /// The batch's op count.
        ops: usize,
        /// The limit.
        max: usize,
    },
    /// A batch carries more bytes than the batch byte limit.
    #[error("batch carries {bytes} bytes, more than the limit of {max} bytes")]
    BatchTooLarge {
        /// The batch's payload bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The memory quota is used up; writes that add data are refused until space is freed.
    #[error("memory quota exceeded: {used} of {quota} bytes used; delete keys to free space")]
    QuotaExceeded {
        /// Approximate bytes used.
        used: u64,
        /// The quota (`--quota-bytes`).
        quota: u64,
    },
    /// A request is malformed.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A compare-and-swap compare did not hold; nothing was applied.
    #[error("compare failed")]
    CompareFailed,
    /// The state machine refused the whole batch; nothing was applied.
    #[error("refused: {0}")]
    Refused(String),
    /// A membership change is not possible as asked.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// A peer message was not meant for this node.
    #[error("peer message rejected: {0}")]
    PeerIdentity(#[from] Mismatch),
    /// The leader answered a forwarded request with this status; passed through unchanged.
    #[error("{}", .0.message())]
    Forwarded(tonic::Status),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An I/O error (binding listeners and the like).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: Arc<std::io::Error>,
    },
    /// The demo cluster could not be started.
    #[error("demo: {0}")]
    Demo(String),
    /// The node's stored state cannot be opened or read; it does not start rather than serve
    /// wrong data.
    #[error("{0}")]
    Storage(String),
    /// Raft stopped (storage failure or shutdown).
    #[error("raft stopped: {0}")]
    Fatal(String),
}

fn leader_suffix(leader: &Option<String>) -> String {
    match leader {
        Some(l) => format!("; leader is at {l}"),
        None => "; no leader is known".to_string(),
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
