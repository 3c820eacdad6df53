//! The replicated command: what one Raft log entry asks the state machine to do.
//!
//! This is a storage format, not an API: entries outlive the binary that wrote them, so every
//! command carries [`COMMAND_FORMAT`] and a reader refuses a format it does not know rather than
//! guess. One general shape — a conditional batch — covers every write the gRPC and RESP faces
//! need (put, delete, CAS, increments, appends, expiry changes, purges of expired keys), so new
//! commands on those faces add no new log formats.
//!
//! Format 2 appends what the leader stamps besides time: a [`SessionStamp`] (the client's
//! session watermark and the leader's session and memory limits, see `store::sessions`) and the
//! value size limit (`--max-value-bytes`) it runs with. Apply refuses an op whose *result* would
//! be longer than that limit — an append growing a value past it — by the stamped limit, never
//! by the applying node's own flag: replicas may run with different flags, yet all of them must
//! decide the same. A format 1 command decodes with an empty stamp and no limit, which keeps the
//! rules it was applied under. New fields go at the end, read only when the format says they are
//! there: postcard does not describe its fields, so both directions are written by hand.
//!
//! Time: the leader stamps each command with cluster time (`stamp_ms`, never below the last
//! applied stamp), and every expiry is judged against the stamp of the entry being applied, so
//! all replicas decide expiry identically whatever their clocks say.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

use crate::error::Refusal;

/// Version of the command encoding written into every entry: 2 added `session` and
/// `max_value_bytes`.
pub(crate) const COMMAND_FORMAT: u16 = 2;

/// The oldest command format this binary still reads (it has no [`SessionStamp`] and no limit).
pub(crate) const OLDEST_COMMAND_FORMAT: u16 = 1;

/// One replicated write. Its fields are encoded in order, and `session` and `max_value_bytes`
/// only from format 2 on, so entries written before still decode, and re-encode (replicating an
/// old entry) exactly as they were written (see the `Serialize` and `Deserialize` impls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Command {
    /// Always [`COMMAND_FORMAT`] when written by this binary.
    pub(crate) format: u16,
    /// Cluster time in ms since the Unix epoch, assigned by the leader.
    pub(crate) stamp_ms: u64,
    /// Present for client writes: makes a retried write apply once.
    pub(crate) write_id: Option<WriteId>,
    pub(crate) batch: Batch,
    /// Format 2 and later; empty in a decoded format 1 command.
    pub(crate) session: SessionStamp,
    /// The longest value an op may leave behind, as the leader that stamped the entry was
    /// configured; 0 (format 1 entries) means no limit at apply.
    pub(crate) max_value_bytes: u64,
}

/// What a client write carries for the session table besides its [`WriteId`]: the client's
/// watermark, and the limits of the leader that stamped it. Limits travel in the entry so that
/// every replica evicts and refuses alike, whatever its own flags say. Zero means "not sent".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionStamp {
    /// The lowest sequence the client has not yet seen answered (`WriteId.acked_below` in
    /// kvs.proto); 0 from a client that does not send one.
    pub(crate) acked_below: u64,
    /// The stamping leader's `--max-sessions`; 0 = the default.
    pub(crate) max_sessions: u64,
    /// The stamping leader's memory quota, checked at apply after duplicate detection; 0 = none.
    pub(crate) quota_bytes: u64,
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let stamped = self.format >= 2;
        let mut fields = serializer.serialize_struct("Command", 4 + 2 * usize::from(stamped))?;
        fields.serialize_field("format", &self.format)?;
        fields.serialize_field("stamp_ms", &self.stamp_ms)?;
        fields.serialize_field("write_id", &self.write_id)?;
        fields.serialize_field("batch", &self.batch)?;
        if stamped {
            fields.serialize_field("session", &self.session)?;
            fields.serialize_field("max_value_bytes", &self.max_value_bytes)?;
        }
        fields.end()
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const FIELDS: &[&str] = &[
            "format",
            "stamp_ms",
            "write_id",
            "batch",
            "session",
            "max_value_bytes",
        ];
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Command;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a kvs command")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Command, A::Error> {
                use serde::de::Error as _;
                let format: u16 = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::missing_field("format"))?;
                let stamp_ms = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::missing_field("stamp_ms"))?;
                let write_id = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::missing_field("write_id"))?;
                let batch = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::missing_field("batch"))?;
                let (session, max_value_bytes) = if format >= 2 {
                    let session = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::missing_field("session"))?;
                    let max_value_bytes = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::missing_field("max_value_bytes"))?;
                    (session, max_value_bytes)
                } else {
                    (SessionStamp::default(), 0)
                };
                Ok(Command {
                    format,
                    stamp_ms,
                    write_id,
                    batch,
                    session,
                    max_value_bytes,
                })
            }
        }
        deserializer.deserialize_struct("Command", FIELDS, Fields)
    }
}

/// A client's identity for one logical write (see `WriteId` in kvs.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct WriteId {
    pub(crate) client_id: u64,
    pub(crate) sequence: u64,
}

/// An atomic conditional batch: when every compare holds, `ops` run, otherwise `else_ops`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Batch {
    pub(crate) compares: Vec<Compare>,
    pub(crate) ops: Vec<Op>,
    pub(crate) else_ops: Vec<Op>,
    /// Return each touched key's value from before the op.
    pub(crate) return_previous: bool,
}

/// A condition on one key, judged at the entry's stamp (an expired key does not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Compare {
    /// The key exists and its value equals `value`.
    ValueEquals { key: Bytes, value: Bytes },
    /// The key's existence equals `exists`.
    Exists { key: Bytes, exists: bool },
    /// The key is still stored but its expiry has passed: what a purge of expired keys is
    /// conditioned on, so a purge racing with a re-set of the key deletes nothing.
    Expired { key: Bytes },
}

/// What a put does to the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PutExpiry {
    /// The key no longer expires.
    Clear,
    /// Keep the key's current expiry (none if the key is new).
    Keep,
    /// Expire at this absolute cluster time (ms).
    At(u64),
}

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Op {
    Put {
        key: Bytes,
        value: Bytes,
        expiry: PutExpiry,
    },
    Delete {
        key: Bytes,
    },
    /// Adds `delta` to the value read as a decimal i64 (absent counts as 0).
    Increment {
        key: Bytes,
        delta: i64,
    },
    /// Appends to the value (absent counts as empty).
    Append {
        key: Bytes,
        value: Bytes,
    },
    /// Sets an absolute expiry; no effect on an absent key.
    Expire {
        key: Bytes,
        at_ms: u64,
    },
    /// Clears the expiry; no effect on an absent key.
    Persist {
        key: Bytes,
    },
    /// Deletes every key (Redis FLUSHDB).
    Clear,
}

/// What applying a command produced; also what a deduplicated retry is answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    Applied(BatchOutcome),
    /// The batch was refused as a whole; nothing of it was applied.
    Refused(Refusal),
}

/// The result of a batch that was applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BatchOutcome {
    /// The log index the batch was applied at; a deduplicated retry reports the first one.
    pub(crate) index: u64,
    /// True when the compares held and `ops` ran.
    pub(crate) succeeded: bool,
    /// One per op that ran, in order.
    pub(crate) results: Vec<OpResult>,
}

/// The result of one op.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OpResult {
    /// The key existed (unexpired) before the op.
    pub(crate) existed: bool,
    /// The value before the op, when the batch asked for previous values.
    pub(crate) previous: Option<Bytes>,
    /// The new value of an increment; the new length after an append (what Redis APPEND
    /// answers); 1 when a persist removed an expiry (what Redis PERSIST answers).
    pub(crate) integer: i64,
}

impl Batch {
    /// Whether the batch may add data (a put, append or increment on either branch): what a
    /// full memory quota refuses, so deletes and expiries still free space.
    pub(crate) fn adds_data(&self) -> bool {
        self.ops.iter().chain(&self.else_ops).any(|op| {
            matches!(
                op,
                Op::Put { .. } | Op::Append { .. } | Op::Increment { .. }
            )
        })
    }
}

impl Command {
    /// An upper bound of the command's encoded size, cheap to compute: used to cut replication
    /// batches by bytes without encoding them twice.
    pub(crate) fn encoded_len_hint(&self) -> usize {
        let key_value =
            |key: &Bytes, value: Option<&Bytes>| 16 + key.len() + value.map_or(0, |v| v.len());
        let compares = self.batch.compares.iter().map(|c| match c {
            Compare::ValueEquals { key, value } => key_value(key, Some(value)),
            Compare::Exists { key, .. } | Compare::Expired { key } => key_value(key, None),
        });
        let ops = self
            .batch
            .ops
            .iter()
            .chain(&self.batch.else_ops)
            .map(|op| match op {
                Op::Put { key, value, .. } | Op::Append { key, value } => {
                    key_value(key, Some(value)) + 10
                }
                Op::Delete { key }
                | Op::Increment { key, .. }
                | Op::Expire { key, .. }
                | Op::Persist { key } => key_value(key, None) + 10,
                Op::Clear => 16,
            });
        64 + compares.sum::<usize>() + ops.sum::<usize>()
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch({} compares, {} ops, {} else-ops) at {}",
            self.batch.compares.len(),
            self.batch.ops.len(),
            self.batch.else_ops.len(),
            self.stamp_ms
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied(o) => write!(
                f,
                "applied(succeeded: {}, {} results)",
                o.succeeded,
                o.results.len()
            ),
            Outcome::Refused(r) => write!(f, "refused({r:?})"),
        }
    }
}
