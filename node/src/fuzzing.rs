//! Entry points for fuzzing: one `fn(&[u8])` per decoder that reads bytes a node did not write
//! itself in this process — from a client, a peer, or its own disk after a crash or bit rot.
//!
//! Each runs the decoder on arbitrary bytes and drops the result: an error is the right answer
//! to garbage, a panic, a hang or an unbounded allocation is a bug. The module is public only so
//! the cargo-fuzz crate in `tests/fuzz` (outside the workspace, built with nightly) can reach
//! decoders that are otherwise private; the rest of the node stays private. The unit tests below
//! drive the same functions with proptest on stable, so CI covers them without nightly.
//!
//! Where the node goes on to use a decoded value without another check — applying a client's
//! batch or a replicated entry to the state machine — the entry point does that too, since a
//! value that decodes but cannot be applied is just as much a crash.

use std::path::Path;

use openraft::EntryPayload;
use openraft::alias::EntryOf;
use openraft::alias::LogIdOf;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::VoteOf;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use prost::Message;

use crate::raft::network::decode;
use crate::raft::peer_proto;
use crate::replica::kv::command_of;
use crate::resp::frame::Limits;
use crate::resp::frame::Parsed;
use crate::resp::frame::RequestParser;
use crate::store::command::COMMAND_FORMAT;
use crate::store::command::Command;
use crate::store::data::StateData;
use crate::store::entry::TypeConfig;
use crate::store::record::unseal;
use crate::store::snapshot_file::read_header;

/// Limits far below the node's defaults, so that inputs of a few hundred bytes reach every
/// limit check of the RESP parser.
const RESP_LIMITS: Limits = Limits {
    max_bulk: 64,
    max_args: 8,
    max_request: 256,
    max_inline: 32,
};

/// The cluster time client batches are stamped with.
const STAMP_MS: u64 = 1_700_000_000_000;

/// A RESP connection's input: parses requests off the front as the connection loop does, until
/// one is incomplete or the bytes are refused.
pub fn resp_requests(data: &[u8]) {
    let mut rest = data;
    let mut parser = RequestParser::new(RESP_LIMITS);
    while let Ok(Parsed::Request { len, .. }) = parser.parse(rest) {
        assert!(
            (1..=rest.len()).contains(&len),
            "a request of {len} bytes out of {}",
            rest.len()
        );
        rest = &rest[len..];
    }
}

/// A record of the durable log as stored (format byte, postcard body, CRC32), read as every
/// kind of record the log keeps. The input is also read with its last four bytes replaced by the
/// correct checksum, so the fuzzer explores the decoding behind the checksum rather than the
/// checksum.
pub fn log_record(data: &[u8]) {
    let body = data.split_last_chunk::<4>().map_or(data, |(body, _)| body);
    let mut resealed = body.to_vec();
    resealed.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    for record in [data, &resealed] {
        let what = || "fuzzed record".to_owned();
        if let Ok(entry) = unseal::<EntryOf<TypeConfig>>(record, &what) {
            apply_entries([entry]);
        }
        let _ = unseal::<VoteOf<TypeConfig>>(record, &what);
        let _ = unseal::<Option<LogIdOf<TypeConfig>>>(record, &what);
        let _ = unseal::<LogIdOf<TypeConfig>>(record, &what);
        let _ = unseal::<SnapshotMetaOf<TypeConfig>>(record, &what);
        let _ = unseal::<u64>(record, &what);
    }
}

/// Encoded state-machine state, as a snapshot carries it (from a peer or a snapshot file). A
/// state that decodes must encode again, or the node could not pass it on.
pub fn snapshot_state(data: &[u8]) {
    if let Ok(state) = StateData::decode(&mut &data[..]) {
        state
            .encode(&mut Vec::new())
            .expect("a decoded snapshot encodes again");
    }
}

/// A whole snapshot file, as a durable node loads it at start: header and meta, then the state.
pub fn snapshot_file(data: &[u8]) {
    let mut file = data;
    if read_header(Path::new("fuzzed.snap"), &mut file).is_ok() {
        snapshot_state(file);
    }
}

/// A client's request message, read as each request of the `kvs.v1` API; a batch is also
/// turned into a command and applied, as the leader does.
pub fn client_request(data: &[u8]) {
    use kvs_client::proto;
    let _ = proto::GetRequest::decode(data);
    let _ = proto::PutRequest::decode(data);
    let _ = proto::DeleteRequest::decode(data);
    let _ = proto::CompareAndSwapRequest::decode(data);
    let _ = proto::AddLearnerRequest::decode(data);
    let _ = proto::PromoteMemberRequest::decode(data);
    let _ = proto::RemoveMemberRequest::decode(data);
    let _ = proto::TransferLeaderRequest::decode(data);
    if let Ok(batch) = proto::BatchRequest::decode(data)
        && let Ok(mut command) = command_of(batch, STAMP_MS)
    {
        command.max_value_bytes = 1024 * 1024;
        apply(&command);
    }
}

/// A peer protocol message, read as each message of `kvs.peer.v1`; a payload is then read as
/// [`peer_payload`].
pub fn peer_message(data: &[u8]) {
    let _ = peer_proto::ReadIndexResponse::decode(data);
    if let Ok(message) = peer_proto::PeerMessage::decode(data) {
        peer_payload(&message.payload);
    }
    if let Ok(peer_proto::SnapshotItem {
        item: Some(peer_proto::snapshot_item::Item::Head(head)),
    }) = peer_proto::SnapshotItem::decode(data)
    {
        peer_payload(&head.payload);
    }
}

/// The payload of a peer message: read as every openraft message the peer protocol carries,
/// requests (the replicated entries are applied) and replies alike.
pub fn peer_payload(data: &[u8]) {
    if let Ok(append) = decode::<AppendEntriesRequest<TypeConfig>>(data) {
        apply_entries(append.entries);
    }
    let _ = decode::<VoteRequest<TypeConfig>>(data);
    let _ = decode::<TransferLeaderRequest<TypeConfig>>(data);
    let _ = decode::<(VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>)>(data);
    let _ = decode::<AppendEntriesResponse<TypeConfig>>(data);
    let _ = decode::<VoteResponse<TypeConfig>>(data);
    let _ = decode::<TransferLeaderResponse<TypeConfig>>(data);
    let _ = decode::<SnapshotResponse<TypeConfig>>(data);
}

/// Applies the commands among `entries` as the state machine would (it refuses other formats).
fn apply_entries(entries: impl IntoIterator<Item = EntryOf<TypeConfig>>) {
    for entry in entries {
        if let EntryPayload::Normal(command) = entry.payload
            && command.format == COMMAND_FORMAT
        {
            apply(&command);
        }
    }
}

/// Applies `command` to an empty state, then again without its write ID, so its ops also meet
/// the keys it created.
fn apply(command: &Command) {
    let mut state = StateData::default();
    state.apply(1, command);
    let again = Command {
        write_id: None,
        ..command.clone()
    };
    state.apply(2, &again);
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kvs_client::proto;
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;
    use openraft::vote::leader_id_adv::LeaderId;
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::raft::network::encode;
    use crate::store::command::Batch;
    use crate::store::command::Op;
    use crate::store::command::PutExpiry;
    use crate::store::command::WriteId;
    use crate::store::record::seal;
    use crate::store::snapshot_file::file_header;

    /// Each case takes well under a millisecond; this keeps all of them to a few seconds.
    const CASES: u32 = 256;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..max)
    }

    /// `valid` damaged as storage and networks damage bytes: a few bytes changed, then
    /// possibly cut short.
    fn mutated(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
        (
            valid,
            prop::collection::vec((any::<Index>(), 1u8..), 0..4),
            prop::option::of(any::<Index>()),
        )
            .prop_map(|(mut bytes, flips, cut)| {
                if !bytes.is_empty() {
                    for (at, mask) in flips {
                        let at = at.index(bytes.len());
                        bytes[at] ^= mask;
                    }
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes
            })
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = || bytes(4).prop_map(Bytes::from);
        prop_oneof![
            (key(), key(), any::<u64>()).prop_map(|(key, value, at)| Op::Put {
                key,
                value,
                expiry: PutExpiry::At(at)
            }),
            (key(), any::<i64>()).prop_map(|(key, delta)| Op::Increment { key, delta }),
            (key(), key()).prop_map(|(key, value)| Op::Append { key, value }),
            (key(), any::<u64>()).prop_map(|(key, at_ms)| Op::Expire { key, at_ms }),
            key().prop_map(|key| Op::Delete { key }),
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        (
            any::<u64>(),
            prop::option::of((any::<u64>(), any::<u64>())),
            prop::collection::vec(op(), 0..4),
        )
            .prop_map(|(stamp_ms, write_id, ops)| Command {
                format: COMMAND_FORMAT,
                stamp_ms,
                write_id: write_id.map(|(client_id, sequence)| WriteId {
                    client_id,
                    sequence,
                }),
                batch: Batch {
                    ops,
                    ..Batch::default()
                },
                max_value_bytes: 1024 * 1024,
                session: crate::store::command::SessionStamp::default(),
            })
    }

    fn log_id(index: u64) -> LogIdOf<TypeConfig> {
        LogIdOf::<TypeConfig>::new(LeaderId::new(2, 1).to_committed(), index)
    }

    fn entry(index: u64, command: Command) -> EntryOf<TypeConfig> {
        let mut entry = EntryOf::<TypeConfig>::new_blank(log_id(index));
        entry.payload = EntryPayload::Normal(command);
        entry
    }

    fn state(commands: Vec<Command>) -> Vec<u8> {
        let mut state = StateData::default();
        for (index, command) in commands.iter().enumerate() {
            state.apply(index as u64 + 1, command);
        }
        let mut out = Vec::new();
        state
            .encode(&mut out)
            .expect("encoding into a Vec cannot fail");
        out
    }

    fn snapshot_meta() -> SnapshotMetaOf<TypeConfig> {
        SnapshotMetaOf::<TypeConfig> {
            last_log_id: Some(log_id(7)),
            ..Default::default()
        }
    }

    fn resp_request() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(bytes(8), 1..5).prop_map(|args| {
            let mut out = format!("*{}\r\n", args.len()).into_bytes();
            for arg in args {
                out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                out.extend_from_slice(&arg);
                out.extend_from_slice(b"\r\n");
            }
            out
        })
    }

    fn append_entries(commands: Vec<Command>) -> Bytes {
        let entries = commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, c))
            .collect();
        encode(&AppendEntriesRequest::<TypeConfig> {
            vote: VoteOf::<TypeConfig>::new_committed(2, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        })
    }

    fn batch_request() -> impl Strategy<Value = Vec<u8>> {
        (bytes(6), bytes(6), any::<i64>(), prop::option::of(1u64..)).prop_map(
            |(key, value, delta, ttl_ms)| {
                let op = |op| proto::Op { op: Some(op) };
                proto::BatchRequest {
                    compares: vec![proto::Compare {
                        key: key.clone().into(),
                        target: Some(proto::compare::Target::Exists(false)),
                    }],
                    ops: vec![
                        op(proto::op::Op::Put(proto::PutOp {
                            key: key.clone().into(),
                            value: value.into(),
                            ttl_ms,
                            ..Default::default()
                        })),
                        op(proto::op::Op::Increment(proto::IncrementOp {
                            key: key.into(),
                            delta,
                        })),
                    ],
                    ..Default::default()
                }
                .encode_to_vec()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn resp_requests_never_panic(
            random in bytes(300),
            damaged in mutated(prop::collection::vec(resp_request(), 1..4).prop_map(|r| r.concat())),
        ) {
            resp_requests(&random);
            resp_requests(&damaged);
        }

        #[test]
        fn log_records_never_panic(
            random in bytes(200),
            damaged in mutated(command().prop_map(|c| seal(&entry(3, c)))),
        ) {
            log_record(&random);
            log_record(&damaged);
        }

        #[test]
        fn snapshot_states_never_panic(
            random in bytes(200),
            damaged in mutated(prop::collection::vec(command(), 0..4).prop_map(state)),
        ) {
            snapshot_state(&random);
            snapshot_state(&damaged);
        }

        #[test]
        fn snapshot_files_never_panic(
            random in bytes(200),
            damaged in mutated(prop::collection::vec(command(), 0..4).prop_map(|commands| {
                let mut file = file_header(&snapshot_meta()).expect("a small meta fits");
                file.extend_from_slice(&state(commands));
                file
            })),
        ) {
            snapshot_file(&random);
            snapshot_file(&damaged);
        }

        #[test]
        fn client_requests_never_panic(random in bytes(200), damaged in mutated(batch_request())) {
            client_request(&random);
            client_request(&damaged);
        }

        #[test]
        fn peer_messages_never_panic(
            random in bytes(200),
            damaged in mutated(prop::collection::vec(command(), 0..3).prop_map(|commands| {
                peer_proto::PeerMessage {
                    envelope: Some(peer_proto::Envelope {
                        cluster_id: "0123456789abcdef0123456789abcdef".into(),
                        from: 1,
                        to: 2,
                        format: crate::PEER_FORMAT,
                    }),
                    payload: append_entries(commands),
                    sent_at_ms: 1,
                }
                .encode_to_vec()
            })),
        ) {
            peer_message(&random);
            peer_message(&damaged);
        }

        #[test]
        fn peer_payloads_never_panic(
            random in bytes(200),
            damaged in mutated(prop::collection::vec(command(), 0..3).prop_map(|c| append_entries(c).to_vec())),
        ) {
            peer_payload(&random);
            peer_payload(&damaged);
        }
    }
}
