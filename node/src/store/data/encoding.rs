//! The snapshot encoding of the replicated state, and a check of an encoding as it streams past.
//!
//! The snapshot codec streams: it reads the state through a cloned, point-in-time
//! [`StateData`] (O(shards) to take, see [`Keyspace`](crate::store::keyspace::Keyspace)) and
//! writes record by record, so the live state keeps applying while a snapshot is written, and
//! decoding never allocates more than the input actually holds. Format version 2, integers
//! little-endian:
//!
//! ```text
//! magic "KVSSNAP\0" | version u16 | last_stamp_ms u64
//! records, each a tag u8:
//!   1 entry:     key (u32 length, bytes) | value (u32 length, bytes) | expires_at_ms u64
//!   3 session:   client_id u64 | last_index u64 | floor u64 | count u32 (0..=MAX_IN_FLIGHT)
//!                | count x (sequence u64 | outcome (u32 length, postcard bytes))
//!   4 tombstone: client_id u64 | last_index u64 | floor u64
//!   0 end
//! trailer: entry count u64 | session count u64 | tombstone count u64
//!          | CRC-32 (IEEE) u32 of every byte before it
//! ```
//!
//! Version 1, still read: no tombstones and no tombstone count; its session record (tag 2) has
//! no floor and a count u8 (1..=64), and the floor is its oldest sequence (`store::sessions`).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::io::Read;
use std::io::Write;

use crate::store::command::Outcome;
use crate::store::data::StateData;
use crate::store::record::invalid_data;
use crate::store::sessions::MAX_IN_FLIGHT;
use crate::store::sessions::REMEMBERED_PER_CLIENT;

const MAGIC: &[u8; 8] = b"KVSSNAP\0";
/// Version of the snapshot format this binary writes and reads.
pub(crate) const SNAPSHOT_FORMAT: u16 = 2;
/// The oldest snapshot format this binary still reads.
const OLDEST_SNAPSHOT_FORMAT: u16 = 1;
const TAG_END: u8 = 0;
const TAG_ENTRY: u8 = 1;
/// A session in format 1.
const TAG_SESSION_V1: u8 = 2;
const TAG_SESSION: u8 = 3;
const TAG_TOMBSTONE: u8 = 4;
/// No key, value or outcome in a snapshot is longer: a longer length is corruption.
const MAX_FIELD_BYTES: u32 = 1 << 30;
/// Room reserved ahead of reading a field; a longer field grows as its bytes actually arrive.
const MAX_FIELD_RESERVE: usize = 64 * 1024;

impl StateData {
    /// Writes the state as a snapshot, record by record: run it on a clone while the original
    /// keeps applying. Give it a buffered writer.
    pub(crate) fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        let mut out = SnapshotWriter {
            inner: w,
            crc: crc32fast::Hasher::new(),
        };
        out.write_all(MAGIC)?;
        out.write_all(&SNAPSHOT_FORMAT.to_le_bytes())?;
        out.write_all(&self.last_stamp_ms.to_le_bytes())?;
        let mut entries = 0u64;
        for entry in self.keyspace.iter() {
            out.write_all(&[TAG_ENTRY])?;
            out.field("key", entry.key())?;
            out.field("value", entry.value())?;
            out.write_all(&entry.expires_at_ms().to_le_bytes())?;
            entries += 1;
        }
        let mut clients = 0u64;
        let mut outcome_buf = Vec::new();
        for (client_id, session) in self.sessions.iter() {
            let remembered = session.remembered();
            let count = u32::try_from(remembered.len()).map_err(|_| {
                io::Error::other(format!(
                    "client {client_id} has {} remembered writes",
                    remembered.len()
                ))
            })?;
            out.write_all(&[TAG_SESSION])?;
            out.write_all(&client_id.to_le_bytes())?;
            out.write_all(&session.last_index().to_le_bytes())?;
            out.write_all(&session.floor().to_le_bytes())?;
            out.write_all(&count.to_le_bytes())?;
            for (sequence, outcome) in remembered {
                outcome_buf.clear();
                outcome_buf =
                    postcard::to_extend(outcome, outcome_buf).map_err(io::Error::other)?;
                out.write_all(&sequence.to_le_bytes())?;
                out.field("outcome", &outcome_buf)?;
            }
            clients += 1;
        }
        let tombstones = self.sessions.tombstones();
        let buried = tombstones.len() as u64;
        for (client_id, last_index, floor) in tombstones {
            out.write_all(&[TAG_TOMBSTONE])?;
            for field in [client_id, last_index, floor] {
                out.write_all(&field.to_le_bytes())?;
            }
        }
        out.write_all(&[TAG_END])?;
        out.write_all(&entries.to_le_bytes())?;
        out.write_all(&clients.to_le_bytes())?;
        out.write_all(&buried.to_le_bytes())?;
        let crc = out.crc.finalize();
        out.inner.write_all(&crc.to_le_bytes())?;
        out.inner.flush()
    }

    /// Reads a snapshot written by [`StateData::encode`]. Any damage — wrong magic, a newer
    /// format, truncation, a checksum mismatch, an impossible length — is an
    /// [`io::ErrorKind::InvalidData`] error saying which. Give it a buffered reader.
    pub(crate) fn decode(r: &mut impl Read) -> io::Result<StateData> {
        let mut input = SnapshotReader {
            inner: r,
            crc: crc32fast::Hasher::new(),
            position: 0,
        };
        let version = check_preamble(&input.array()?)?;
        let mut data = StateData {
            last_stamp_ms: input.u64()?,
            ..StateData::default()
        };
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let (mut entries, mut clients, mut buried) = (0u64, 0u64, 0u64);
        loop {
            match input.array::<1>()?[0] {
                TAG_END => break,
                TAG_ENTRY => {
                    input.field("key", &mut key)?;
                    input.field("value", &mut value)?;
                    let expires_at_ms = input.u64()?;
                    data.keyspace.insert(&key, &value, expires_at_ms);
                    entries += 1;
                }
                TAG_SESSION_V1 if version == 1 => {
                    let client_id = input.u64()?;
                    let last_index = input.u64()?;
                    let count = usize::from(input.array::<1>()?[0]);
                    if count == 0 || count > REMEMBERED_PER_CLIENT {
                        return Err(invalid_snapshot(format!(
                            "client {client_id} has {count} remembered writes, not 1 to {REMEMBERED_PER_CLIENT}"
                        )));
                    }
                    let remembered = input.remembered(client_id, count, 0, &mut value)?;
                    let floor = remembered[0].0;
                    data.sessions
                        .restore(client_id, last_index, floor, remembered);
                    clients += 1;
                }
                TAG_SESSION if version >= 2 => {
                    let client_id = input.u64()?;
                    let last_index = input.u64()?;
                    let floor = input.u64()?;
                    let count = u32::from_le_bytes(input.array()?);
                    if u64::from(count) > MAX_IN_FLIGHT {
                        return Err(invalid_snapshot(format!(
                            "client {client_id} has {count} remembered writes, more than {MAX_IN_FLIGHT}"
                        )));
                    }
                    let remembered =
                        input.remembered(client_id, count as usize, floor, &mut value)?;
                    data.sessions
                        .restore(client_id, last_index, floor, remembered);
                    clients += 1;
                }
                TAG_TOMBSTONE if version >= 2 => {
                    let client_id = input.u64()?;
                    let last_index = input.u64()?;
                    let floor = input.u64()?;
                    data.sessions
                        .restore_tombstone(client_id, last_index, floor);
                    buried += 1;
                }
                tag => {
                    return Err(invalid_snapshot(format!(
                        "unknown record tag {tag} at byte {}",
                        input.position - 1
                    )));
                }
            }
        }
        let stored_entries = input.u64()?;
        let stored_clients = input.u64()?;
        let stored_buried = if version >= 2 { input.u64()? } else { 0 };
        let computed = input.crc.clone().finalize();
        let stored = u32::from_le_bytes(input.array()?);
        if stored != computed {
            return Err(invalid_snapshot(format!(
                "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            )));
        }
        if entries != stored_entries || data.keyspace.len() as u64 != entries {
            return Err(invalid_snapshot(format!(
                "{entries} key records ({} distinct keys) but the trailer says {stored_entries}",
                data.keyspace.len()
            )));
        }
        if clients != stored_clients || data.sessions.len() as u64 != clients {
            return Err(invalid_snapshot(format!(
                "{clients} session records ({} distinct clients) but the trailer says {stored_clients}",
                data.sessions.len()
            )));
        }
        if buried != stored_buried || data.sessions.tombstones().len() as u64 != buried {
            return Err(invalid_snapshot(format!(
                "{buried} tombstone records ({} distinct clients) but the trailer says {stored_buried}",
                data.sessions.tombstones().len()
            )));
        }
        match input.inner.read_exact(&mut [0u8]) {
            Ok(()) => Err(invalid_snapshot(
                "trailing bytes after the snapshot trailer",
            )),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(data),
            Err(e) => Err(e),
        }
    }
}

/// Every way an encoding can be wrong is reported as an invalid snapshot, saying `why`.
fn invalid_snapshot(why: impl fmt::Display) -> io::Error {
    invalid_data(format_args!("invalid snapshot: {why}"))
}

/// Magic and format version.
const PREAMBLE_BYTES: usize = MAGIC.len() + 2;
/// The shortest encoding (of format 1): preamble, stamp, end tag, two counts and the checksum.
const MIN_ENCODED_BYTES: u64 = PREAMBLE_BYTES as u64 + 8 + 1 + 16 + 4;

/// Checks the magic bytes and returns the format version.
fn check_preamble(preamble: &[u8; PREAMBLE_BYTES]) -> io::Result<u16> {
    let (magic, version) = preamble.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(invalid_snapshot("not a kvs snapshot (bad magic bytes)"));
    }
    let version = u16::from_le_bytes(version.try_into().expect("two bytes"));
    if version > SNAPSHOT_FORMAT {
        return Err(invalid_snapshot(format!(
            "snapshot format version {version} is newer than this binary supports ({SNAPSHOT_FORMAT})"
        )));
    }
    if version < OLDEST_SNAPSHOT_FORMAT {
        return Err(invalid_snapshot(format!(
            "unknown snapshot format version {version}"
        )));
    }
    Ok(version)
}

/// Checks an encoded state as it streams past, without decoding it: its preamble, its length and
/// the CRC-32 of its trailer. A snapshot received from a peer passes this before anything installs
/// it, because a snapshot that fails to install stops the node; [`StateData::decode`] still checks
/// everything when it installs.
#[derive(Default)]
pub(crate) struct EncodingCheck {
    preamble: Vec<u8>,
    crc: crc32fast::Hasher,
    /// The last (up to) four bytes seen: the trailer's checksum once the stream ends.
    held_back: Vec<u8>,
    len: u64,
}

impl EncodingCheck {
    /// Takes the next bytes of the stream.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        let room = PREAMBLE_BYTES - self.preamble.len();
        self.preamble
            .extend_from_slice(&bytes[..room.min(bytes.len())]);
        self.len += bytes.len() as u64;
        let keep = bytes.len().min(4);
        let (body, last) = bytes.split_at(bytes.len() - keep);
        // Held-back bytes no longer among the last four are checksummed, in stream order.
        let spill = (self.held_back.len() + keep).saturating_sub(4);
        self.crc.update(&self.held_back[..spill]);
        self.held_back.drain(..spill);
        self.crc.update(body);
        self.held_back.extend_from_slice(last);
    }

    /// Ends the stream: an error says what is wrong with it.
    pub(crate) fn finish(self) -> io::Result<()> {
        if self.len < MIN_ENCODED_BYTES {
            return Err(invalid_snapshot(format!(
                "truncated after {} bytes",
                self.len
            )));
        }
        check_preamble(
            self.preamble
                .as_slice()
                .try_into()
                .expect("a long enough stream has its whole preamble"),
        )?;
        let stored = u32::from_le_bytes(
            self.held_back
                .as_slice()
                .try_into()
                .expect("a long enough stream has held back four bytes"),
        );
        let computed = self.crc.finalize();
        if stored != computed {
            return Err(invalid_snapshot(format!(
                "checksum mismatch after {} bytes (stored {stored:08x}, computed {computed:08x}): \
                 damaged or truncated",
                self.len
            )));
        }
        Ok(())
    }
}

/// Writes through to the caller's writer, checksumming what passes.
struct SnapshotWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for SnapshotWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> SnapshotWriter<W> {
    /// Writes a length-prefixed field.
    fn field(&mut self, what: &str, bytes: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|&len| len <= MAX_FIELD_BYTES)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "a {what} of {} bytes is longer than a snapshot can hold ({MAX_FIELD_BYTES})",
                    bytes.len()
                ))
            })?;
        self.write_all(&len.to_le_bytes())?;
        self.write_all(bytes)
    }
}

/// Reads from the caller's reader, checksumming what passes and counting bytes for messages.
struct SnapshotReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
    position: u64,
}

impl<R: Read> Read for SnapshotReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.crc.update(&buf[..read]);
        self.position += read as u64;
        Ok(read)
    }
}

impl<R: Read> SnapshotReader<R> {
    fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut buf = [0u8; N];
        match self.read_exact(&mut buf) {
            Ok(()) => Ok(buf),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.truncated()),
            Err(e) => Err(e),
        }
    }

    fn u64(&mut self) -> io::Result<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// Reads a length-prefixed field into `buf`, allocating only as its bytes arrive.
    fn field(&mut self, what: &str, buf: &mut Vec<u8>) -> io::Result<()> {
        let len = u32::from_le_bytes(self.array()?);
        if len > MAX_FIELD_BYTES {
            return Err(invalid_snapshot(format!(
                "a {what} length of {len} bytes at byte {} exceeds the limit of {MAX_FIELD_BYTES}",
                self.position - 4
            )));
        }
        buf.clear();
        buf.reserve(MAX_FIELD_RESERVE.min(len as usize));
        let read = self.by_ref().take(u64::from(len)).read_to_end(buf)?;
        if read < len as usize {
            return Err(self.truncated());
        }
        Ok(())
    }

    /// Reads `count` remembered writes of `client_id`: ascending sequences, none below `floor`.
    fn remembered(
        &mut self,
        client_id: u64,
        count: usize,
        floor: u64,
        buf: &mut Vec<u8>,
    ) -> io::Result<VecDeque<(u64, Outcome)>> {
        let mut remembered = VecDeque::with_capacity(count);
        for _ in 0..count {
            let sequence = self.u64()?;
            if sequence < floor || remembered.back().is_some_and(|&(last, _)| sequence <= last) {
                return Err(invalid_snapshot(format!(
                    "remembered writes of client {client_id} are not in ascending order from its floor"
                )));
            }
            self.field("outcome", buf)?;
            let outcome: Outcome = postcard::from_bytes(buf).map_err(|e| {
                invalid_snapshot(format!("undecodable outcome of client {client_id}: {e}"))
            })?;
            remembered.push_back((sequence, outcome));
        }
        Ok(remembered)
    }

    fn truncated(&self) -> io::Error {
        invalid_snapshot(format!("truncated after {} bytes", self.position))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::error::Refusal;
    use crate::store::command::BatchOutcome;
    use crate::store::command::OpResult;
    use crate::store::command::PutExpiry;
    use crate::store::command::SessionStamp;
    use crate::store::command::WriteId;
    use crate::store::data::harness::Replica;
    use crate::store::data::harness::dump;
    use crate::store::data::harness::incr;
    use crate::store::data::harness::key;
    use crate::store::data::harness::ops;
    use crate::store::data::harness::put;
    use crate::store::data::harness::put_with;
    use crate::store::data::harness::with_previous;

    fn encoded(data: &StateData) -> Vec<u8> {
        let mut buf = Vec::new();
        data.encode(&mut buf)
            .expect("encoding into a Vec cannot fail");
        buf
    }

    fn decode_err(bytes: &[u8]) -> String {
        match StateData::decode(&mut &bytes[..]) {
            Ok(_) => panic!("decoding should fail"),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                e.to_string()
            }
        }
    }

    fn sample() -> StateData {
        let mut r = Replica::new();
        r.apply(
            5,
            ops(vec![
                put("a", "1"),
                put_with("b", "", PutExpiry::At(99)),
                put("", "empty key"),
            ]),
        );
        r.apply_as(
            6,
            Some(WriteId {
                client_id: 1,
                sequence: 1,
            }),
            with_previous(vec![put("a", "2")]),
        );
        r.apply_as(
            7,
            Some(WriteId {
                client_id: 2,
                sequence: 8,
            }),
            ops(vec![put("x", "y"), incr("x", 1)]),
        );
        r.data
    }

    #[test]
    fn a_snapshot_round_trips() {
        let data = sample();
        let decoded = StateData::decode(&mut &encoded(&data)[..]).expect("decodes");
        assert_eq!(dump(&decoded), dump(&data));
        assert_eq!(decoded.bytes_used(), data.bytes_used());
        assert_eq!(
            StateData::decode(&mut &encoded(&StateData::default())[..])
                .map(|d| dump(&d))
                .ok(),
            Some(dump(&StateData::default()))
        );
    }

    #[test]
    fn a_snapshot_taken_keeps_its_point_in_time() {
        let mut r = Replica::new();
        r.apply(1, ops(vec![put("a", "1")]));
        let snapshot = r.data.clone();
        r.apply(2, ops(vec![put("a", "2"), put("b", "2")]));
        let decoded = StateData::decode(&mut &encoded(&snapshot)[..]).expect("decodes");
        assert_eq!(decoded.get(b"a", 2).map(|v| v.0), Some(key("1")));
        assert_eq!((decoded.len(), decoded.last_stamp_ms()), (1, 1));
    }

    #[test]
    fn damage_is_named() {
        let good = encoded(&sample());
        assert!(decode_err(b"NOTSNAP\0\x01\0").contains("bad magic"));

        let mut newer = good.clone();
        newer[8..10].copy_from_slice(&7u16.to_le_bytes());
        assert!(
            decode_err(&newer)
                .contains("snapshot format version 7 is newer than this binary supports (2)")
        );

        assert!(decode_err(&good[..good.len() - 1]).contains("truncated"));

        let mut flipped = good.clone();
        let value_at = good
            .windows(9)
            .position(|w| w == b"empty key")
            .expect("the sample holds this value");
        flipped[value_at] ^= 0x20;
        assert!(decode_err(&flipped).contains("checksum mismatch"));

        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_err(&trailing).contains("trailing bytes"));

        let mut huge = good[..18].to_vec();
        huge.push(TAG_ENTRY);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_err(&huge).contains("exceeds the limit"));

        let mut long = good[..18].to_vec();
        long.push(TAG_ENTRY);
        long.extend_from_slice(&MAX_FIELD_BYTES.to_le_bytes());
        long.extend_from_slice(b"only a few bytes");
        assert!(
            decode_err(&long).contains("truncated"),
            "a long length reads only what is there"
        );
    }

    #[test]
    fn every_truncation_and_byte_flip_is_an_error() {
        let good = encoded(&sample());
        for len in 0..good.len() {
            decode_err(&good[..len]);
        }
        for position in 0..good.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[position] ^= mask;
                decode_err(&bad);
            }
        }
    }

    /// Runs the stream check over `bytes` fed in pieces of `piece` bytes.
    fn stream_check(bytes: &[u8], piece: usize) -> io::Result<()> {
        let mut check = EncodingCheck::default();
        bytes.chunks(piece).for_each(|p| check.update(p));
        check.finish()
    }

    #[test]
    fn the_stream_check_passes_an_intact_encoding_in_pieces_of_any_size() {
        let good = encoded(&sample());
        for piece in [1, 2, 3, 4, 5, 7, 64, good.len()] {
            stream_check(&good, piece).unwrap_or_else(|e| panic!("pieces of {piece}: {e}"));
        }
        stream_check(&encoded(&StateData::default()), 3).expect("an empty state");
    }

    #[test]
    fn the_stream_check_refuses_every_truncation_and_byte_flip() {
        let good = encoded(&sample());
        for len in 0..good.len() {
            let err = stream_check(&good[..len], 5).expect_err("truncated");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
        for position in 0..good.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[position] ^= mask;
                stream_check(&bad, 7).expect_err("flipped");
            }
        }
        let mut newer = good.clone();
        newer[8..10].copy_from_slice(&7u16.to_le_bytes());
        let err = stream_check(&newer, 64).expect_err("newer");
        assert!(err.to_string().contains("version 7 is newer"), "{err}");
    }

    fn outcome_strategy() -> impl Strategy<Value = Outcome> {
        let op_result = (
            any::<bool>(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
            any::<i64>(),
        )
            .prop_map(|(existed, previous, integer)| OpResult {
                existed,
                previous: previous.map(Bytes::from),
                integer,
            });
        prop_oneof![
            (
                any::<u64>(),
                any::<bool>(),
                prop::collection::vec(op_result, 0..3)
            )
                .prop_map(|(index, succeeded, results)| Outcome::Applied(
                    BatchOutcome {
                        index,
                        succeeded,
                        results
                    }
                )),
            (0usize..100).prop_map(|op| Outcome::Refused(Refusal::NotAnInteger { op })),
            (any::<u64>(), any::<u64>()).prop_map(
                |(sequence, oldest_remembered)| Outcome::Refused(Refusal::SequenceTooOld {
                    sequence,
                    oldest_remembered
                })
            ),
        ]
    }

    fn state_strategy() -> impl Strategy<Value = StateData> {
        let entry = (
            prop::collection::vec(any::<u8>(), 0..6),
            prop::collection::vec(any::<u8>(), 0..40),
            prop_oneof![Just(0u64), any::<u64>()],
        );
        let write = (0u64..6, 0u64..100, 0u64..4, 0u64..3, outcome_strategy());
        (
            prop::collection::vec(entry, 0..30),
            prop::collection::vec(write, 0..30),
            any::<u64>(),
        )
            .prop_map(|(entries, writes, last_stamp_ms)| {
                let mut data = StateData {
                    last_stamp_ms,
                    ..StateData::default()
                };
                for (key, value, expires_at_ms) in entries {
                    data.keyspace.insert(&key, &value, expires_at_ms);
                }
                for (index, (client_id, sequence, acked_below, max_sessions, outcome)) in
                    writes.into_iter().enumerate()
                {
                    let id = WriteId {
                        client_id,
                        sequence,
                    };
                    let stamp = SessionStamp {
                        acked_below,
                        max_sessions,
                        quota_bytes: 0,
                    };
                    if data.sessions.check(id, &stamp) == crate::store::sessions::Dedup::New {
                        data.sessions.record(id, &stamp, index as u64, outcome);
                    }
                }
                data
            })
    }

    proptest! {
        #[test]
        fn random_states_round_trip(data in state_strategy()) {
            let decoded = StateData::decode(&mut &encoded(&data)[..]);
            prop_assert_eq!(decoded.map(|d| dump(&d)).ok(), Some(dump(&data)));
        }

        #[test]
        fn damaged_encodings_are_errors(data in state_strategy(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), mask in 1u8..=255) {
            let good = encoded(&data);
            let truncated = &good[..cut.index(good.len())];
            prop_assert!(StateData::decode(&mut &truncated[..]).is_err());
            let mut flipped = good.clone();
            flipped[flip.index(good.len())] ^= mask;
            prop_assert!(StateData::decode(&mut &flipped[..]).is_err());
        }
    }
}
