//! Drives the replicated state in tests: a log that applies batches at increasing indexes,
//! builders for ops and batches, and a dump of the whole state to compare states by.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::store::command::Batch;
use crate::store::command::COMMAND_FORMAT;
use crate::store::command::Command;
use crate::store::command::Op;
use crate::store::command::OpResult;
use crate::store::command::Outcome;
use crate::store::command::PutExpiry;
use crate::store::command::SessionStamp;
use crate::store::command::WriteId;
use crate::store::data::StateData;

pub(super) fn put(key: &str, value: &str) -> Op {
    put_with(key, value, PutExpiry::Clear)
}

pub(super) fn put_with(key: &str, value: &str, expiry: PutExpiry) -> Op {
    Op::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        expiry,
    }
}

pub(super) fn key(key: &str) -> Bytes {
    Bytes::copy_from_slice(key.as_bytes())
}

pub(super) fn incr(k: &str, delta: i64) -> Op {
    Op::Increment { key: key(k), delta }
}

pub(super) fn ops(ops: Vec<Op>) -> Batch {
    Batch {
        ops,
        ..Batch::default()
    }
}

pub(super) fn with_previous(ops: Vec<Op>) -> Batch {
    Batch {
        ops,
        return_previous: true,
        ..Batch::default()
    }
}

/// A state machine driven like a log: each apply gets the next index.
pub(super) struct Replica {
    pub(super) data: StateData,
    pub(super) index: u64,
    /// The value limit stamped on every entry; 0 for none.
    pub(super) max_value_bytes: u64,
}

impl Replica {
    pub(super) fn new() -> Replica {
        Replica {
            data: StateData::default(),
            index: 0,
            max_value_bytes: 0,
        }
    }

    pub(super) fn apply(&mut self, stamp_ms: u64, batch: Batch) -> Outcome {
        self.apply_as(stamp_ms, None, batch)
    }

    pub(super) fn apply_as(
        &mut self,
        stamp_ms: u64,
        write_id: Option<WriteId>,
        batch: Batch,
    ) -> Outcome {
        self.apply_stamped(stamp_ms, write_id, SessionStamp::default(), batch)
    }

    pub(super) fn apply_stamped(
        &mut self,
        stamp_ms: u64,
        write_id: Option<WriteId>,
        session: SessionStamp,
        batch: Batch,
    ) -> Outcome {
        self.index += 1;
        let cmd = Command {
            format: COMMAND_FORMAT,
            stamp_ms,
            write_id,
            batch,
            max_value_bytes: self.max_value_bytes,
            session,
        };
        self.data.apply(self.index, &cmd)
    }

    /// The results of a batch that must have been applied.
    pub(super) fn results(&mut self, stamp_ms: u64, batch: Batch) -> Vec<OpResult> {
        match self.apply(stamp_ms, batch) {
            Outcome::Applied(outcome) => outcome.results,
            refused => panic!("expected the batch to apply, got {refused}"),
        }
    }

    pub(super) fn value(&self, k: &str, now_ms: u64) -> Option<(String, u64)> {
        self.data
            .get(k.as_bytes(), now_ms)
            .map(|(v, e)| (String::from_utf8_lossy(&v).into_owned(), e))
    }
}

pub(super) type Dump = (
    BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    Vec<(u64, u64, u64, Vec<(u64, Outcome)>)>,
    Vec<(u64, u64, u64)>,
    usize,
    u64,
);

pub(super) fn dump(data: &StateData) -> Dump {
    let keys = data
        .keyspace
        .iter()
        .map(|e| (e.key().to_vec(), (e.value().to_vec(), e.expires_at_ms())))
        .collect();
    let mut sessions: Vec<_> = data
        .sessions
        .iter()
        .map(|(client, s)| {
            (
                client,
                s.last_index(),
                s.floor(),
                s.remembered().map(|(q, o)| (q, o.clone())).collect(),
            )
        })
        .collect();
    sessions.sort_by_key(|s| s.0);
    let tombstones = data.sessions.tombstones().collect();
    (
        keys,
        sessions,
        tombstones,
        data.sessions.bytes_used(),
        data.last_stamp_ms,
    )
}
