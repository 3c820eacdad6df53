//! Whether a failed attempt may be tried again, and what to tell the caller when it may not.
//!
//! This is the part of the client that decides, kept free of I/O so it can be tested as plain
//! functions: the call loop in `client` feeds it one [`Failure`] per attempt and does what the
//! returned [`Next`] says.
//!
//! The rules follow the wire contract. UNAVAILABLE means "definitely not applied", so anything may
//! be retried on it. DEADLINE_EXCEEDED, UNKNOWN, CANCELLED, ABORTED and transport errors after
//! sending mean "may have been applied": reads retry them freely, writes retry them too because
//! they carry a `WriteId` the cluster deduplicates, but once one happened a write that then runs
//! out of time ends as [`Error::OutcomeUnknown`]. DATA_LOSS says the cluster no longer remembers
//! a write's outcome (its session expired, or it is older than the session keeps): that cannot
//! change on a retry, so it ends the call at once as [`Error::OutcomeUnknown`], and so does
//! OUT_OF_RANGE (a message too large), which a reply can get after its write applied. Membership
//! changes carry no `WriteId`, so they are only retried on UNAVAILABLE. Every other code is a
//! refusal and is returned at once.

use std::time::Duration;

use tonic::{Code, Status};

use crate::error::Error;
use crate::proto::LEADER_HEADER;

/// What a call may do to the cluster, which decides how it is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// Changes nothing.
    Read,
    /// A key-value write carrying a `WriteId`, so a retry is applied at most once.
    Write,
    /// A membership change without a `WriteId`.
    Admin,
}

/// One failed attempt, as far as retrying cares.
#[derive(Debug)]
pub(crate) struct Failure {
    address: String,
    code: Code,
    message: String,
    leader: Option<String>,
}

impl Failure {
    /// A status from `address`, carrying the leader hint the node sent along.
    pub(crate) fn from_status(address: &str, status: &Status) -> Self {
        let leader = status
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|leader| !leader.is_empty())
            .map(str::to_owned);
        let message = if status.message().is_empty() {
            status.code().description().to_owned()
        } else {
            status.message().to_owned()
        };
        Failure {
            address: address.to_owned(),
            code: status.code(),
            message,
            leader,
        }
    }

    /// `address` did not answer within the attempt's time budget.
    pub(crate) fn timed_out(address: &str, after: Duration) -> Self {
        Failure {
            address: address.to_owned(),
            code: Code::DeadlineExceeded,
            message: format!("no answer within {after:?}"),
            leader: None,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug)]
pub(crate) enum Next {
    /// Try again after `pause`.
    Retry {
        /// The leader's client address, when the failed node named one: try there next.
        leader: Option<String>,
        /// How long to wait first.
        pause: Duration,
    },
    /// Give up with this error.
    Stop(Error),
}

/// The attempts of one call so far.
#[derive(Debug)]
pub(crate) struct Attempts {
    kind: CallKind,
    failed: u32,
    maybe_applied: bool,
    last: Option<Failure>,
    /// The latest leader any node named: the last failure may be at a node that names none.
    leader: Option<String>,
}

impl Attempts {
    pub(crate) fn new(kind: CallKind) -> Self {
        Attempts {
            kind,
            failed: 0,
            maybe_applied: false,
            last: None,
            leader: None,
        }
    }

    /// Records a failed attempt and says whether to try again.
    pub(crate) fn record(&mut self, failure: Failure) -> Next {
        let maybe = self.kind != CallKind::Read && may_have_applied(failure.code);
        self.maybe_applied |= maybe;
        self.failed += 1;
        if failure.leader.is_some() {
            self.leader.clone_from(&failure.leader);
        }
        if retryable(self.kind, failure.code) {
            let next = Next::Retry {
                leader: failure.leader.clone(),
                pause: backoff(self.failed),
            };
            self.last = Some(failure);
            return next;
        }
        Next::Stop(if maybe {
            Error::OutcomeUnknown {
                message: failure.describe(),
                leader: self.leader.clone(),
            }
        } else {
            // A refusal settles the call even after an attempt that may have been applied: the
            // retry carried the same WriteId, so the cluster answered with the first result.
            Error::Refused {
                code: failure.code,
                message: failure.message,
            }
        })
    }

    /// The error to return when no more attempts will be made (the deadline passed, or the call
    /// may only be tried once): "outcome unknown" if any attempt may have been applied.
    pub(crate) fn give_up(self) -> Error {
        let message = match &self.last {
            Some(last) if self.failed > 1 => {
                format!(
                    "{} (gave up after {} attempts)",
                    last.describe(),
                    self.failed
                )
            }
            Some(last) => last.describe(),
            None => "the deadline passed before any attempt".to_owned(),
        };
        let leader = self.leader;
        if self.maybe_applied {
            Error::OutcomeUnknown { message, leader }
        } else {
            Error::Unavailable { message, leader }
        }
    }
}

impl Failure {
    fn describe(&self) -> String {
        format!("{}: {}", self.address, self.message)
    }
}

/// Codes after which the request may have been applied: it was sent, and no answer says
/// otherwise. OUT_OF_RANGE is gRPC's "message too large", which a reply gets after its write
/// applied as well as a request before it, so it says nothing about the write.
fn may_have_applied(code: Code) -> bool {
    matches!(
        code,
        Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal
            | Code::DataLoss
            | Code::OutOfRange
    )
}

/// Whether another attempt is safe and may help. INTERNAL and DATA_LOSS are not transient, so
/// they are not retried even though they leave a write's outcome unknown.
fn retryable(kind: CallKind, code: Code) -> bool {
    match code {
        Code::Unavailable => true,
        Code::DeadlineExceeded | Code::Unknown | Code::Cancelled | Code::Aborted => {
            kind != CallKind::Admin
        }
        _ => false,
    }
}

/// The pause before the `failed`-th retry: short at first (a new leader is usually known within
/// one election), doubling up to half a second.
fn backoff(failed: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_millis(500);
    FIRST
        .saturating_mul(1 << failed.saturating_sub(1).min(10))
        .min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code) -> Failure {
        Failure::from_status("n1:7379", &Status::new(code, "boom"))
    }

    fn stops_with(next: Next) -> Error {
        match next {
            Next::Stop(err) => err,
            Next::Retry { .. } => panic!("expected a stop, got a retry"),
        }
    }

    #[test]
    fn unavailable_is_retried_by_every_kind_and_ends_not_applied() {
        for kind in [CallKind::Read, CallKind::Write, CallKind::Admin] {
            let mut attempts = Attempts::new(kind);
            assert!(matches!(
                attempts.record(status(Code::Unavailable)),
                Next::Retry { .. }
            ));
            let err = attempts.give_up();
            assert!(err.is_definitely_not_applied(), "{kind:?}: {err}");
        }
    }

    #[test]
    fn a_write_that_may_have_been_applied_ends_outcome_unknown() {
        let mut attempts = Attempts::new(CallKind::Write);
        assert!(matches!(
            attempts.record(status(Code::Unknown)),
            Next::Retry { .. }
        ));
        // A later "definitely not applied" does not undo the earlier maybe.
        assert!(matches!(
            attempts.record(status(Code::Unavailable)),
            Next::Retry { .. }
        ));
        assert!(matches!(attempts.give_up(), Error::OutcomeUnknown { .. }));
    }

    #[test]
    fn a_timed_out_attempt_counts_as_maybe_applied() {
        let mut attempts = Attempts::new(CallKind::Write);
        attempts.record(Failure::timed_out("n1:7379", Duration::from_secs(1)));
        assert!(attempts.give_up().is_outcome_unknown());
    }

    #[test]
    fn reads_retry_anything_transient_and_never_end_unknown() {
        let mut attempts = Attempts::new(CallKind::Read);
        for code in [Code::DeadlineExceeded, Code::Unknown, Code::Cancelled] {
            assert!(matches!(attempts.record(status(code)), Next::Retry { .. }));
        }
        assert!(matches!(attempts.give_up(), Error::Unavailable { .. }));
        let internal = stops_with(Attempts::new(CallKind::Read).record(status(Code::Internal)));
        assert!(internal.is_definitely_not_applied());
    }

    #[test]
    fn admin_calls_are_not_retried_once_they_may_have_been_applied() {
        let err = stops_with(Attempts::new(CallKind::Admin).record(status(Code::DeadlineExceeded)));
        assert!(matches!(err, Error::OutcomeUnknown { .. }));
    }

    #[test]
    fn refusals_stop_at_once_with_the_server_message() {
        for kind in [CallKind::Read, CallKind::Write, CallKind::Admin] {
            for code in [
                Code::InvalidArgument,
                Code::FailedPrecondition,
                Code::NotFound,
            ] {
                let err = stops_with(Attempts::new(kind).record(status(code)));
                assert!(
                    matches!(&err, Error::Refused { code: c, message } if *c == code && message == "boom"),
                    "{kind:?} {code:?}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn a_lost_outcome_is_not_retried_and_ends_unknown() {
        // DATA_LOSS: the cluster no longer remembers the write's outcome (its session expired,
        // or it is below the watermark); asking again cannot tell more.
        for kind in [CallKind::Write, CallKind::Admin] {
            let err = stops_with(Attempts::new(kind).record(status(Code::DataLoss)));
            assert!(err.is_outcome_unknown(), "{kind:?}: {err:?}");
        }
    }

    #[test]
    fn a_message_too_large_leaves_a_write_unknown_and_a_read_refused() {
        // OUT_OF_RANGE: a reply too large to send or take, which may follow an applied write.
        for kind in [CallKind::Write, CallKind::Admin] {
            let err = stops_with(Attempts::new(kind).record(status(Code::OutOfRange)));
            assert!(err.is_outcome_unknown(), "{kind:?}: {err:?}");
        }
        let read = stops_with(Attempts::new(CallKind::Read).record(status(Code::OutOfRange)));
        assert!(read.is_definitely_not_applied(), "{read:?}");
    }

    #[test]
    fn a_refusal_after_a_maybe_settles_the_write() {
        let mut attempts = Attempts::new(CallKind::Write);
        attempts.record(status(Code::Unknown));
        let err = stops_with(attempts.record(status(Code::FailedPrecondition)));
        assert!(err.is_definitely_not_applied());
    }

    #[test]
    fn leader_hint_is_read_from_metadata() {
        let mut with_hint = Status::unavailable("not the leader");
        with_hint
            .metadata_mut()
            .insert(LEADER_HEADER, "127.0.0.2:7379".parse().unwrap());
        let mut attempts = Attempts::new(CallKind::Write);
        let next = attempts.record(Failure::from_status("n1:7379", &with_hint));
        assert!(matches!(next, Next::Retry { leader: Some(l), .. } if l == "127.0.0.2:7379"));
        assert_eq!(attempts.give_up().leader_hint(), Some("127.0.0.2:7379"));
        let next = Attempts::new(CallKind::Write).record(status(Code::Unavailable));
        assert!(matches!(next, Next::Retry { leader: None, .. }));
    }

    #[test]
    fn the_latest_leader_hint_outlives_failures_that_name_none() {
        let mut named = Status::unavailable("not the leader");
        named
            .metadata_mut()
            .insert(LEADER_HEADER, "127.0.0.2:7379".parse().unwrap());
        let mut attempts = Attempts::new(CallKind::Read);
        attempts.record(Failure::from_status("n1:7379", &named));
        attempts.record(status(Code::Unavailable));
        assert_eq!(attempts.give_up().leader_hint(), Some("127.0.0.2:7379"));
    }

    #[test]
    fn backoff_doubles_from_short_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(20));
        assert_eq!(backoff(2), Duration::from_millis(40));
        assert_eq!(backoff(3), Duration::from_millis(80));
        assert_eq!(backoff(10), Duration::from_millis(500));
        assert_eq!(backoff(u32::MAX), Duration::from_millis(500));
    }
}
