//! The one mapping from node errors to RESP error replies (the RESP table in `docs/api.md`).
//!
//! Redis clients decide what to do from an error's first word, so the prefix carries the same
//! distinction the gRPC codes do:
//! - `TRYAGAIN`: surely not applied (no leader, no quorum, not a member, shutting down, a read
//!   that timed out); retry, on any node. The text names the leader's client address when known.
//! - `UNCERTAIN`: a write's outcome was not learned; it may have been applied.
//! - `ERR`: the request was refused as asked (bad arguments, a limit, an increment of a
//!   non-integer) or the node failed; internal detail goes to the log, not to the client.

use tonic::Code;

use crate::auth::Denied;
use crate::error::Error;
use crate::resp::frame::Frame;

/// The error reply for `err`; `leader` is the current leader hint.
pub(crate) fn error_reply(err: Error, leader: Option<String>) -> Frame {
    let hint = || match &leader {
        Some(l) => format!("; leader is at {l}"),
        None => String::new(),
    };
    let text = match err {
        Error::InvalidArgument(message) => format!("ERR {message}"),
        // Redis words the reason alone, without the op it refused.
        Error::Refused { refusal, .. } => format!("ERR {refusal}"),
        Error::NotLeader { .. } => format!("TRYAGAIN {err}"),
        Error::NoQuorum(_)
        | Error::NotMember
        | Error::ShuttingDown
        | Error::ReadTimeout(_)
        | Error::ClockSkew { .. }
        | Error::Busy(_) => format!("TRYAGAIN {err}{}", hint()),
        Error::WriteTimeout(_) | Error::OutcomeUnknown(_) | Error::OutcomeLost(_) => {
            format!("UNCERTAIN {err}")
        }
        Error::Forwarded(status) => match status.code() {
            Code::Unavailable => format!("TRYAGAIN {}{}", status.message(), hint()),
            Code::DeadlineExceeded | Code::Unknown | Code::DataLoss => {
                format!("UNCERTAIN {}", status.message())
            }
            Code::Internal => "ERR internal error; see the leader's log".into(),
            _ => format!("ERR {}", status.message()),
        },
        // Redis answers writes past maxmemory with -OOM.
        Error::QuotaExceeded { .. } => format!("OOM {err}"),
        Error::DiskFull { .. } => format!("NOSPACE {err}"),
        Error::KeyTooLarge { .. }
        | Error::ValueTooLarge { .. }
        | Error::TooManyOps { .. }
        | Error::BatchTooLarge { .. }
        | Error::CompareFailed
        | Error::Membership(_)
        | Error::TooManyBackups(_)
        | Error::PeerIdentity(_) => format!("ERR {err}"),
        // Redis's own words, which clients match on.
        Error::Denied(Denied::NoCredentials) => "NOAUTH Authentication required.".into(),
        Error::Denied(Denied::WrongCredentials) => {
            "WRONGPASS invalid username-password pair or user is disabled.".into()
        }
        Error::Denied(Denied::NotPermitted { user, action, .. }) => {
            format!("NOPERM User {user} has no permissions to run the '{action}' command")
        }
        Error::Config(_)
        | Error::AuthFile(_)
        | Error::Io { .. }
        | Error::Fatal(_)
        | Error::Demo(_)
        | Error::Storage(_) => {
            tracing::error!(error = %err, "internal error");
            "ERR internal error; see the node's log".into()
        }
    };
    Frame::Error(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Refusal;

    fn text(err: Error, leader: Option<&str>) -> String {
        match error_reply(err, leader.map(String::from)) {
            Frame::Error(text) => text,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn the_prefix_tells_whether_a_write_may_have_been_applied() {
        assert_eq!(
            text(Error::NoQuorum("lost".into()), Some("10.0.0.1:7379")),
            "TRYAGAIN no quorum: lost; leader is at 10.0.0.1:7379"
        );
        assert_eq!(
            text(
                Error::NotLeader {
                    leader: Some("a:1".into())
                },
                None
            ),
            "TRYAGAIN not the leader; leader is at a:1"
        );
        assert!(text(Error::WriteTimeout(5000), None).starts_with("UNCERTAIN "));
        assert!(
            text(Error::Forwarded(tonic::Status::unknown("lost")), None).starts_with("UNCERTAIN ")
        );
    }

    #[test]
    fn refusals_read_as_redis_words_them() {
        assert_eq!(
            text(
                Error::Refused {
                    refusal: Refusal::NotAnInteger { op: 3 },
                    index: 9
                },
                None
            ),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            text(
                Error::Refused {
                    refusal: Refusal::Overflow { op: 0 },
                    index: 9
                },
                None
            ),
            "ERR increment or decrement would overflow"
        );
        assert_eq!(
            text(Error::InvalidArgument("syntax error".into()), None),
            "ERR syntax error"
        );
    }

    #[test]
    fn internal_detail_stays_in_the_log() {
        assert_eq!(
            text(Error::Fatal("disk on fire".into()), None),
            "ERR internal error; see the node's log"
        );
    }
}
