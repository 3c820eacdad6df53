//! The one mapping from node errors to gRPC statuses (the table in `docs/api.md`).
//!
//! UNAVAILABLE is reserved for requests that were surely not applied, so clients may retry them
//! anywhere; DEADLINE_EXCEEDED and UNKNOWN mean a write may have been applied. Every status a
//! node generates carries the `kvs-node` metadata so a forwarding node can tell it from a broken
//! connection; UNAVAILABLE carries `kvs-leader` with the leader's client address when known.

use kvs_client::proto::LEADER_HEADER;
use tonic::Code;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::auth::Denied;
use crate::error::Error;
use crate::error::Refusal;
use crate::identity::Mismatch;
use crate::raft::forward::ORIGIN_HEADER;

/// How the gRPC face words a refusal: the reason after the position of the op it refused
/// (`op 2: value is not an integer or out of range`), in a status and in a Batch reply's `error`.
pub(crate) fn refusal_text(refusal: &Refusal) -> String {
    match refusal {
        Refusal::NotAnInteger { op } | Refusal::Overflow { op } | Refusal::ValueTooLarge { op } => {
            format!("op {op}: {refusal}")
        }
        _ => refusal.to_string(),
    }
}

/// Maps a node error to the status a client sees; `leader` is the current leader hint.
pub(crate) fn to_status(err: Error, leader: Option<String>) -> Status {
    if let Error::Forwarded(status) = err {
        return status;
    }
    let code = match &err {
        Error::NotLeader { .. }
        | Error::NoQuorum(_)
        | Error::NotMember
        | Error::ShuttingDown
        | Error::ReadTimeout(_)
        | Error::ClockSkew { .. }
        | Error::Busy(_) => Code::Unavailable,
        Error::WriteTimeout(_) => Code::DeadlineExceeded,
        Error::QuotaExceeded { .. } | Error::TooManyBackups(_) | Error::DiskFull { .. } => {
            Code::ResourceExhausted
        }
        Error::OutcomeUnknown(_) => Code::Unknown,
        // The outcome is lost for good: DATA_LOSS, which clients do not retry.
        Error::OutcomeLost(_) => Code::DataLoss,
        Error::KeyTooLarge { .. }
        | Error::ValueTooLarge { .. }
        | Error::TooManyOps { .. }
        | Error::BatchTooLarge { .. }
        | Error::InvalidArgument(_)
        | Error::Refused {
            refusal: Refusal::ValueTooLarge { .. },
            ..
        } => Code::InvalidArgument,
        Error::CompareFailed | Error::Refused { .. } | Error::Membership(_) => {
            Code::FailedPrecondition
        }
        Error::PeerIdentity(
            Mismatch::NoCertificate { .. } | Mismatch::CertificateForAnother { .. },
        ) => Code::PermissionDenied,
        Error::PeerIdentity(_) => Code::FailedPrecondition,
        Error::Denied(Denied::NotPermitted { .. }) => Code::PermissionDenied,
        Error::Denied(_) => Code::Unauthenticated,
        Error::Config(_)
        | Error::AuthFile(_)
        | Error::Io { .. }
        | Error::Fatal(_)
        | Error::Demo(_)
        | Error::Storage(_) => Code::Internal,
        Error::Forwarded(_) => unreachable!("returned above"),
    };
    let message = match &err {
        // Internal detail goes to the log, not to the client.
        Error::Io { .. }
        | Error::Fatal(_)
        | Error::Config(_)
        | Error::AuthFile(_)
        | Error::Storage(_) => {
            tracing::error!(error = %err, "internal error");
            "internal error; see the node's log".to_string()
        }
        Error::Refused { refusal, .. } => format!("refused: {}", refusal_text(refusal)),
        _ => err.to_string(),
    };
    let hint = match &err {
        Error::NotLeader { leader: Some(l) } => Some(l.clone()),
        _ if code == Code::Unavailable => leader,
        _ => None,
    };
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(ORIGIN_HEADER, MetadataValue::from_static("1"));
    if let Some(value) = hint.and_then(|h| MetadataValue::try_from(h).ok()) {
        status.metadata_mut().insert(LEADER_HEADER, value);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_op_it_refused() {
        let status = to_status(
            Error::Refused {
                refusal: Refusal::NotAnInteger { op: 2 },
                index: 5,
            },
            None,
        );
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "refused: op 2: value is not an integer or out of range"
        );
    }

    #[test]
    fn a_value_grown_past_the_limit_is_an_invalid_argument() {
        let status = to_status(
            Error::Refused {
                refusal: Refusal::ValueTooLarge { op: 0 },
                index: 5,
            },
            None,
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "refused: op 0: string exceeds maximum allowed size"
        );
    }

    #[test]
    fn io_detail_stays_in_the_log() {
        let status = to_status(
            Error::io("backup failed", std::io::Error::other("disk on fire")),
            None,
        );
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error; see the node's log");
    }
}
