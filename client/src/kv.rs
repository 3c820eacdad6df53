//! The typed face of key-value requests and answers.
//!
//! The wire types use proto3 conventions (an expiry of 0 means "none", oneofs as `Option`s);
//! these types say the same thing in Rust so callers cannot build a request the server would
//! have to reject as malformed.

use std::time::Duration;

use bytes::Bytes;

use crate::proto;
use crate::proto::compare_and_swap_request as cas;

/// A key with its value, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// When the key expires, in milliseconds of cluster time since the Unix epoch; `None` when
    /// it does not.
    pub expires_at_ms: Option<u64>,
}

impl KeyValue {
    /// The key-value a Get answered with, or `None` when the key is absent.
    pub(crate) fn from_response(key: Bytes, response: proto::GetResponse) -> Option<Self> {
        response.found.then(|| KeyValue {
            key,
            value: response.value,
            expires_at_ms: (response.expires_at_ms != 0).then_some(response.expires_at_ms),
        })
    }
}

/// What a compare-and-swap expects the key to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key exists with exactly this value.
    Value(Bytes),
    /// The key does not exist.
    Absent,
}

impl From<Expect> for cas::Expect {
    fn from(expect: Expect) -> Self {
        match expect {
            Expect::Value(value) => cas::Expect::ExpectValue(value),
            Expect::Absent => cas::Expect::ExpectAbsent(true),
        }
    }
}

/// What a compare-and-swap does when its compare holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set the key to this value (clearing any expiry).
    Set(Bytes),
    /// Delete the key.
    Delete,
}

impl From<Action> for cas::Action {
    fn from(action: Action) -> Self {
        match action {
            Action::Set(value) => cas::Action::NewValue(value),
            Action::Delete => cas::Action::Delete(true),
        }
    }
}

/// A TTL in whole milliseconds, rounded up so that a short TTL never becomes "expires at once".
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_ms(Duration::from_secs(2)), 2000);
        assert_eq!(ttl_ms(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_ms(Duration::from_nanos(1)), 1);
        assert_eq!(ttl_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn absent_keys_and_zero_expiry_are_none() {
        let absent = proto::GetResponse::default();
        assert_eq!(KeyValue::from_response("k".into(), absent), None);
        let found = proto::GetResponse {
            found: true,
            value: "v".into(),
            ..Default::default()
        };
        let kv = KeyValue::from_response("k".into(), found).unwrap();
        assert_eq!(kv.value, "v");
        assert_eq!(kv.expires_at_ms, None);
    }
}
