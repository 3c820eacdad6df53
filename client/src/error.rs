//! The one error type of kvs-client.
//!
//! What a caller must decide after a failed write is whether it may have been applied, so every
//! variant is defined by that answer: [`Error::OutcomeUnknown`] is the only "maybe", everything
//! else except [`Error::MalformedResponse`] is known to have changed nothing. The server's own
//! message is kept verbatim, because it is what an operator needs to read.

/// Errors of the kvs client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An endpoint is not `host:port` (optionally prefixed by `http://`).
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The client was given no endpoints at all.
    #[error("no endpoints given")]
    NoEndpoints,
    /// [`ClientOptions`](crate::ClientOptions) that cannot work, e.g. a zero timeout.
    #[error("invalid client options: {0}")]
    InvalidOptions(&'static str),
    /// The credentials cannot be used (an unreadable password file, a bad user name).
    #[error("invalid credentials: {0}")]
    InvalidCredentials(String),
    /// A compare-and-swap compare did not hold; nothing was applied.
    #[error("compare failed: the key did not hold the expected value")]
    CompareFailed,
    /// The cluster refused a batch as a whole (e.g. an increment of a non-integer); nothing of it
    /// was applied.
    #[error("batch refused: {0}")]
    BatchRefused(String),
    /// No node served the request before the deadline (no leader, no quorum, unreachable):
    /// nothing was applied.
    #[error("unavailable: {message}{}", leader_suffix(.message, .leader.as_deref()))]
    Unavailable {
        /// What the last attempt reported.
        message: String,
        /// The leader's client address, when the last node to answer named one.
        leader: Option<String>,
    },
    /// A node refused the request (invalid argument, not found, ...): nothing was applied.
    #[error("{}", refusal_text(*.code, .message))]
    Refused {
        /// The gRPC status code the node answered with.
        code: tonic::Code,
        /// The node's message.
        message: String,
    },
    /// A write (or membership change) may or may not have been applied: an attempt timed out or
    /// lost its connection after the request was sent, and no later attempt settled it before
    /// the deadline.
    #[error(
        "outcome unknown, the request may have been applied: {message}{}",
        leader_suffix(.message, .leader.as_deref())
    )]
    OutcomeUnknown {
        /// What the last attempt reported.
        message: String,
        /// The leader's client address, when the last node to answer named one.
        leader: Option<String>,
    },
    /// A node answered successfully but with a response this client cannot use; the request was
    /// most likely applied.
    #[error("malformed response from the server: {0}")]
    MalformedResponse(&'static str),
    /// A backup file is damaged, truncated or not a backup at all.
    #[error("invalid backup: {0}")]
    InvalidBackup(String),
    /// A backup URL that names no object this client can reach.
    #[error("invalid backup location {url:?}: {reason}")]
    InvalidLocation {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a local file failed.
    #[error("{0}")]
    Io(String),
    /// The TLS material given cannot be used (unreadable files, a certificate without its key,
    /// PEM that does not parse); nothing was sent.
    #[error("invalid TLS configuration: {0}")]
    InvalidTls(String),
}

impl Error {
    /// True when the request is known to have changed nothing, so it is safe to try again as a
    /// new request.
    pub fn is_definitely_not_applied(&self) -> bool {
        !matches!(
            self,
            Error::OutcomeUnknown { .. } | Error::MalformedResponse(_)
        )
    }

    /// True when the request may have been applied: check the cluster before acting on it.
    pub fn is_outcome_unknown(&self) -> bool {
        !self.is_definitely_not_applied()
    }

    /// The leader's client address (`host:port`), when the cluster named one.
    pub fn leader_hint(&self) -> Option<&str> {
        match self {
            Error::Unavailable { leader, .. } | Error::OutcomeUnknown { leader, .. } => {
                leader.as_deref()
            }
            _ => None,
        }
    }
}

/// Names the leader unless the server's message already does (nodes often say "leader is at X").
fn leader_suffix(message: &str, leader: Option<&str>) -> String {
    match leader {
        Some(leader) if !message.contains(leader) => format!(" (leader is at {leader})"),
        _ => String::new(),
    }
}

fn refusal_text(code: tonic::Code, message: &str) -> String {
    let message = if message.is_empty() {
        code.description()
    } else {
        message
    };
    match code {
        tonic::Code::Unauthenticated => format!("not authenticated: {message}"),
        tonic::Code::PermissionDenied => format!("permission denied: {message}"),
        _ => message.to_owned(),
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unknown_outcomes_may_have_been_applied() {
        let unknown = Error::OutcomeUnknown {
            message: "timed out".into(),
            leader: None,
        };
        assert!(unknown.is_outcome_unknown());
        assert!(Error::CompareFailed.is_definitely_not_applied());
        assert!(
            Error::Refused {
                code: tonic::Code::InvalidArgument,
                message: "key too large".into()
            }
            .is_definitely_not_applied()
        );
    }

    #[test]
    fn leader_is_named_once() {
        let named = Error::Unavailable {
            message: "not the leader; leader is at 127.0.0.2:7379".into(),
            leader: Some("127.0.0.2:7379".into()),
        };
        assert_eq!(
            named.to_string(),
            "unavailable: not the leader; leader is at 127.0.0.2:7379"
        );
        let unnamed = Error::Unavailable {
            message: "no quorum".into(),
            leader: Some("127.0.0.2:7379".into()),
        };
        assert_eq!(
            unnamed.to_string(),
            "unavailable: no quorum (leader is at 127.0.0.2:7379)"
        );
    }

    #[test]
    fn refusal_keeps_the_server_message() {
        let refused = Error::Refused {
            code: tonic::Code::InvalidArgument,
            message: "key is 300 bytes, more than the limit of 256 bytes".into(),
        };
        assert_eq!(
            refused.to_string(),
            "key is 300 bytes, more than the limit of 256 bytes"
        );
    }
}
