//! The one error type of kvs-node.
//!
//! Variants say what went wrong and, for a write, whether it may have been applied: that
//! distinction is what clients build safe retries on. They are mapped to gRPC statuses in one
//! place per face: `grpc::status` for gRPC, `resp::status` for RESP.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;

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
    /// The cluster no longer remembers the outcome of this write (its session expired, or it is
    /// older than its session remembers): it may have been applied, and asking again cannot
    /// tell, so clients do not retry it.
    #[error("write outcome unknown: {0}")]
    OutcomeLost(String),
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
    /// As many backups as `--max-backups` allows are streaming; nothing was started.
    #[error(
        "{0} backups are already streaming from this node (--max-backups); retry when one has finished"
    )]
    TooManyBackups(usize),
    /// Free space under the data directory is short of what the next snapshot needs plus
    /// `--disk-reserve-bytes`; writes that add data are refused until space returns.
    #[error(
        "NOSPACE: {free} bytes free in the data directory, fewer than the {needed} the next \
         snapshot and the reserve need; delete keys or free disk space"
    )]
    DiskFull {
        /// Bytes free for this node under its data directory.
        free: u64,
        /// What the next snapshot needs plus the reserve.
        needed: u64,
    },
    /// This leader's wall clock differs from a majority of the voters' by more than
    /// `--max-clock-skew-ms`, so it stamps no write until they agree; nothing was applied.
    #[error(
        "clock skew: this leader's clock differs from a majority of the voters by more than \
         {max_ms} ms{}; writes are refused until the clocks agree",
        offset_suffix(.offset_ms)
    )]
    ClockSkew {
        /// The measured offset farthest from zero (a member's clock minus the leader's).
        offset_ms: Option<i64>,
        /// The bound (`--max-clock-skew-ms`).
        max_ms: u64,
    },
    /// A request is malformed.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A compare-and-swap compare did not hold; nothing was applied.
    #[error("compare failed")]
    CompareFailed,
    /// The state machine refused the whole batch; nothing was applied.
    #[error("refused: {refusal}")]
    Refused {
        /// Why.
        refusal: Refusal,
        /// The log index of the refused entry.
        index: u64,
    },
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
    /// The caller may not make this request (users and roles, `--auth-file`).
    #[error(transparent)]
    Denied(#[from] crate::auth::Denied),
    /// The `--auth-file` cannot be used.
    #[error(transparent)]
    AuthFile(#[from] crate::auth::AuthFileError),
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

/// Why the state machine refused a whole batch; nothing of it was applied. Part of the
/// replicated state (sessions remember outcomes, snapshots carry them), so it lives here, below
/// the store. Its `Display` is the reason alone, in Redis's words where Redis has them; each
/// face adds its own framing (`grpc::status`, `resp::status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Op `op` incremented a value that is not a decimal i64.
    NotAnInteger {
        /// The refused op's position among the ops that ran.
        op: usize,
    },
    /// Op `op` would overflow an i64.
    Overflow {
        /// The refused op's position among the ops that ran.
        op: usize,
    },
    /// Op `op` would make a value longer than the limit the leader stamped on the entry
    /// (`--max-value-bytes`).
    ValueTooLarge {
        /// The refused op's position among the ops that ran.
        op: usize,
    },
    /// The write's sequence is older than what the node still remembers for that client, so
    /// whether it was applied before cannot be told.
    SequenceTooOld {
        /// The write's sequence.
        sequence: u64,
        /// The oldest sequence still remembered for its client.
        oldest_remembered: u64,
    },
    /// The client's session was evicted (more clients than `--max-sessions`) and this write is
    /// not newer than what the session had seen, or the session is forgotten altogether and the
    /// client's watermark says it had one, so it may have been applied before: it is not
    /// applied again, and its outcome cannot be told (`store::sessions`).
    SessionExpired {
        /// The write's sequence.
        sequence: u64,
    },
    /// The client has more writes unanswered than a session remembers; nothing was applied.
    TooManyInFlight {
        /// The write's sequence.
        sequence: u64,
        /// The client's watermark: its lowest sequence not yet answered.
        acked_below: u64,
        /// The most sequences a session keeps at or above its watermark.
        limit: u64,
    },
    /// The memory quota (stored data plus sessions) is used up; nothing was applied.
    QuotaExceeded {
        /// Approximate bytes used.
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// The write was applied at `index`, but its reply carried previous values too large to
    /// remember, so a retry cannot be answered with it: read the keys instead.
    ReplyNotKept {
        /// The log index the write was applied at.
        index: u64,
    },
}

impl Refusal {
    /// Whether the refusal says the write's outcome can no longer be told (it may have been
    /// applied), rather than that it was refused and not applied.
    pub(crate) fn is_outcome_lost(&self) -> bool {
        matches!(
            self,
            Refusal::SequenceTooOld { .. }
                | Refusal::SessionExpired { .. }
                | Refusal::ReplyNotKept { .. }
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotAnInteger { .. } => f.write_str("value is not an integer or out of range"),
            Refusal::Overflow { .. } => f.write_str("increment or decrement would overflow"),
            Refusal::ValueTooLarge { .. } => f.write_str("string exceeds maximum allowed size"),
            Refusal::SequenceTooOld {
                sequence,
                oldest_remembered,
            } => write!(
                f,
                "write sequence {sequence} is older than the oldest this cluster remembers for \
                 the client ({oldest_remembered}); whether it was applied cannot be told"
            ),
            Refusal::SessionExpired { sequence } => write!(
                f,
                "{}: the cluster evicted this client's session, so whether write sequence \
                 {sequence} was applied cannot be told",
                kvs_client::SESSION_EXPIRED
            ),
            Refusal::TooManyInFlight {
                sequence,
                acked_below,
                limit,
            } => write!(
                f,
                "too many writes in flight for this client: sequence {sequence} is {limit} or \
                 more past its oldest unanswered write ({acked_below})"
            ),
            Refusal::QuotaExceeded { used, quota } => write!(
                f,
                "memory quota exceeded: {used} of {quota} bytes used; delete keys to free space"
            ),
            Refusal::ReplyNotKept { index } => write!(
                f,
                "the write was applied at index {index}, but its reply held previous values too \
                 large to remember; read the keys to learn their state"
            ),
        }
    }
}

fn leader_suffix(leader: &Option<String>) -> String {
    match leader {
        Some(l) => format!("; leader is at {l}"),
        None => "; no leader is known".to_string(),
    }
}

fn offset_suffix(offset_ms: &Option<i64>) -> String {
    match offset_ms {
        Some(ms) => format!(" (a member's clock is {ms:+} ms from it)"),
        None => " (no member's clock measured recently)".to_string(),
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
