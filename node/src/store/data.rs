//! The replicated state — keyspace, client sessions and cluster time — and the two things done
//! to it: applying a committed [`Command`], and encoding or decoding it as a snapshot.
//!
//! Apply is a pure function of the state and the entry: time is the entry's stamp (never below
//! the last applied one), never a local clock, so every replica reaches the same state. A batch
//! is atomic: its ops run against a staged overlay of the keys they touch — later ops see what
//! earlier ones wrote — and the overlay is committed only when every op succeeded, so a refused
//! batch changes nothing.
//!
//! Expired keys stay stored until something touches them: reads and compares judge expiry
//! against the time they are given, an op that touches an expired key removes or overwrites it,
//! and the leader proposes purges of the rest ([`StateData::expired_keys`]).
//!
//! The snapshot codec streams: it reads the state through a cloned, point-in-time
//! [`StateData`] (O(shards) to take, see [`Keyspace`]) and writes record by record, so the live
//! state keeps applying while a snapshot is written, and decoding never allocates more than the
//! input actually holds. Format version 1, integers little-endian:
//!
//! ```text
//! magic "KVSSNAP\0" | version u16 | last_stamp_ms u64
//! records, each a tag u8:
//!   1 entry:   key (u32 length, bytes) | value (u32 length, bytes) | expires_at_ms u64
//!   2 session: client_id u64 | last_index u64 | count u8 (1..=64)
//!              | count x (sequence u64 | outcome (u32 length, postcard bytes))
//!   0 end
//! trailer: entry count u64 | session count u64 | CRC-32 (IEEE) u32 of every byte before it
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::io::Read;
use std::io::Write;

use bytes::Bytes;

use crate::store::command::Batch;
use crate::store::command::BatchOutcome;
use crate::store::command::Command;
use crate::store::command::Compare;
use crate::store::command::Op;
use crate::store::command::OpResult;
use crate::store::command::Outcome;
use crate::store::command::PutExpiry;
use crate::store::command::Refusal;
use crate::store::command::WriteId;
use crate::store::keyspace::EntryRef;
use crate::store::keyspace::Keyspace;
use crate::store::sessions::Dedup;
use crate::store::sessions::REMEMBERED_PER_CLIENT;
use crate::store::sessions::Sessions;

/// Everything a replica's state machine holds besides its log position.
///
/// `clone()` is cheap (O(shards)) and independent of later writes: it is how a snapshot is taken.
#[derive(Clone, Default)]
pub(crate) struct StateData {
    keyspace: Keyspace,
    sessions: Sessions,
    /// Cluster time of the last applied entry: never goes backwards.
    last_stamp_ms: u64,
}

impl StateData {
    /// Applies the entry at `log_index`. A write the client already made is answered with its
    /// first outcome and not applied again.
    pub(crate) fn apply(&mut self, log_index: u64, cmd: &Command) -> Outcome {
        let now_ms = cmd.stamp_ms.max(self.last_stamp_ms);
        self.last_stamp_ms = now_ms;
        if let Some(id) = cmd.write_id {
            match self.sessions.check(id) {
                Dedup::New => {}
                Dedup::Duplicate(outcome) => return outcome,
                Dedup::TooOld { oldest_remembered } => {
                    return Outcome::Refused(Refusal::SequenceTooOld {
                        sequence: id.sequence,
                        oldest_remembered,
                    });
                }
            }
        }
        let mut outcome = run_batch(&mut self.keyspace, &cmd.batch, now_ms);
        if let Outcome::Applied(applied) = &mut outcome {
            applied.index = log_index;
        }
        if let Some(id) = cmd.write_id {
            self.sessions.record(id, log_index, outcome.clone());
        }
        outcome
    }

    /// The value and expiry (0 = none) of `key`, unless absent or expired at `now_ms`. Pass
    /// cluster time — the local clock, but never below [`StateData::last_stamp_ms`].
    pub(crate) fn get(&self, key: &[u8], now_ms: u64) -> Option<(Bytes, u64)> {
        live(&self.keyspace, key, now_ms).map(|e| (e.value_bytes(), e.expires_at_ms()))
    }

    /// Up to `limit` keys stored but expired at `now_ms`: what the leader proposes to purge.
    pub(crate) fn expired_keys(&self, now_ms: u64, limit: usize) -> Vec<Bytes> {
        self.keyspace
            .with_expiry()
            .filter(|e| is_expired(e.expires_at_ms(), now_ms))
            .take(limit)
            .map(|e| e.key_bytes())
            .collect()
    }

    /// Every key live at `now_ms` with its value and expiry (0 = none), in no particular order.
    pub(crate) fn live_entries(&self, now_ms: u64) -> impl Iterator<Item = EntryRef<'_>> {
        self.keyspace
            .iter()
            .filter(move |e| !is_expired(e.expires_at_ms(), now_ms))
    }

    /// Cluster time of the last applied entry.
    pub(crate) fn last_stamp_ms(&self) -> u64 {
        self.last_stamp_ms
    }

    /// Number of stored keys, counting expired keys not purged yet (as Redis DBSIZE does).
    pub(crate) fn len(&self) -> usize {
        self.keyspace.len()
    }

    /// One step of a SCAN over the keys live at `now_ms`: see [`Keyspace::scan`].
    pub(crate) fn scan(&self, cursor: u64, count: usize, now_ms: u64) -> (u64, Vec<Bytes>) {
        self.keyspace
            .scan(cursor, count, |e| !is_expired(e.expires_at_ms(), now_ms))
    }
}

impl StateData {
    /// Bytes of stored keys and values, without per-key overhead.
    pub(crate) fn bytes_used(&self) -> usize {
        self.keyspace.bytes_used()
    }
}

/// A summary: the state itself may be gigabytes.
impl fmt::Debug for StateData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateData")
            .field("keys", &self.keyspace.len())
            .field("payload_bytes", &self.keyspace.bytes_used())
            .field("clients", &self.sessions.len())
            .field("last_stamp_ms", &self.last_stamp_ms)
            .finish()
    }
}

/// Whether an expiry (0 = none) has passed at `now_ms`; a key expiring exactly now is expired.
fn is_expired(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms != 0 && expires_at_ms <= now_ms
}

/// The entry of `key` if it is stored and not expired at `now_ms`.
fn live<'k>(keyspace: &'k Keyspace, key: &[u8], now_ms: u64) -> Option<EntryRef<'k>> {
    keyspace
        .get(key)
        .filter(|e| !is_expired(e.expires_at_ms(), now_ms))
}

fn run_batch(keyspace: &mut Keyspace, batch: &Batch, now_ms: u64) -> Outcome {
    let succeeded = batch.compares.iter().all(|c| holds(keyspace, c, now_ms));
    let ops = if succeeded {
        &batch.ops
    } else {
        &batch.else_ops
    };
    let mut overlay = Overlay {
        keyspace,
        now_ms,
        staged: BTreeMap::new(),
        cleared: false,
    };
    let results = ops
        .iter()
        .enumerate()
        .map(|(index, op)| overlay.run(index, op, batch.return_previous))
        .collect::<Result<Vec<_>, _>>();
    let results = match results {
        Ok(results) => results,
        Err(refusal) => return Outcome::Refused(refusal),
    };
    let Overlay {
        staged, cleared, ..
    } = overlay;
    if cleared {
        *keyspace = Keyspace::default();
    }
    for (key, staged) in staged {
        match staged {
            Staged::Absent => {
                keyspace.remove(key);
            }
            Staged::Stored { expires_at_ms } => {
                keyspace.set_expiry(key, expires_at_ms);
            }
            Staged::Written {
                value,
                expires_at_ms,
            } => keyspace.insert(key, &value, expires_at_ms),
        }
    }
    Outcome::Applied(BatchOutcome {
        succeeded,
        results,
        ..BatchOutcome::default()
    })
}

fn holds(keyspace: &Keyspace, compare: &Compare, now_ms: u64) -> bool {
    match compare {
        Compare::ValueEquals { key, value } => {
            live(keyspace, key, now_ms).is_some_and(|e| e.value() == value.as_ref())
        }
        Compare::Exists { key, exists } => live(keyspace, key, now_ms).is_some() == *exists,
        Compare::Expired { key } => keyspace
            .get(key)
            .is_some_and(|e| is_expired(e.expires_at_ms(), now_ms)),
    }
}

/// A key as the running batch sees it.
enum Staged<'c> {
    /// Absent: deleted, never stored, or expired (then committing removes it).
    Absent,
    /// The stored, unexpired value, possibly with a new expiry.
    Stored { expires_at_ms: u64 },
    /// A value written by an earlier op of the batch.
    Written {
        value: Cow<'c, [u8]>,
        expires_at_ms: u64,
    },
}

/// The keys a batch touched, staged over the unchanged keyspace until the batch commits.
struct Overlay<'k, 'c> {
    keyspace: &'k Keyspace,
    now_ms: u64,
    staged: BTreeMap<&'c [u8], Staged<'c>>,
    /// A clear ran: keys not staged since are absent.
    cleared: bool,
}

impl<'c> Overlay<'_, 'c> {
    fn run(
        &mut self,
        index: usize,
        op: &'c Op,
        return_previous: bool,
    ) -> Result<OpResult, Refusal> {
        let key: &'c [u8] = match op {
            Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Increment { key, .. }
            | Op::Append { key, .. }
            | Op::Expire { key, .. }
            | Op::Persist { key } => key,
            Op::Clear => {
                self.cleared = true;
                self.staged.clear();
                return Ok(OpResult::default());
            }
        };
        // None when absent; the expiry (0 = none) when present.
        let current_expiry = self.current(key).map(|(_, expires_at_ms)| expires_at_ms);
        let previous = if return_previous {
            self.previous(key)
        } else {
            None
        };
        let mut integer = 0;
        match op {
            Op::Put { value, expiry, .. } => {
                let expires_at_ms = match *expiry {
                    PutExpiry::At(at_ms) if at_ms <= self.now_ms => None,
                    PutExpiry::At(at_ms) => Some(at_ms),
                    PutExpiry::Clear => Some(0),
                    PutExpiry::Keep => Some(current_expiry.unwrap_or(0)),
                };
                let staged = match expires_at_ms {
                    // Like Redis SET with a past EXAT: the key ends up deleted.
                    None => Staged::Absent,
                    Some(expires_at_ms) => Staged::Written {
                        value: Cow::Borrowed(value),
                        expires_at_ms,
                    },
                };
                self.staged.insert(key, staged);
            }
            Op::Delete { .. } => {
                self.staged.insert(key, Staged::Absent);
            }
            Op::Increment { delta, .. } => {
                let base = match self.current(key) {
                    None => 0,
                    Some((value, _)) => {
                        parse_decimal_i64(value).ok_or(Refusal::NotAnInteger { op: index })?
                    }
                };
                integer = base
                    .checked_add(*delta)
                    .ok_or(Refusal::Overflow { op: index })?;
                let value = Cow::Owned(integer.to_string().into_bytes());
                self.staged.insert(
                    key,
                    Staged::Written {
                        value,
                        expires_at_ms: current_expiry.unwrap_or(0),
                    },
                );
            }
            Op::Append { value: suffix, .. } => {
                let current = self.current(key).map_or(&[][..], |(value, _)| value);
                let mut value = Vec::with_capacity(current.len() + suffix.len());
                value.extend_from_slice(current);
                value.extend_from_slice(suffix);
                integer = i64::try_from(value.len()).unwrap_or(i64::MAX);
                self.staged.insert(
                    key,
                    Staged::Written {
                        value: Cow::Owned(value),
                        expires_at_ms: current_expiry.unwrap_or(0),
                    },
                );
            }
            Op::Expire { at_ms, .. } => match current_expiry {
                Some(_) if *at_ms > self.now_ms => self.restage_expiry(key, *at_ms),
                // Absent stays absent (an expired key is purged); a past expiry deletes, like
                // Redis EXPIREAT with a past time.
                _ => {
                    self.staged.insert(key, Staged::Absent);
                }
            },
            // Returned above: a clear touches no one key.
            Op::Clear => {}
            Op::Persist { .. } => match current_expiry {
                Some(expiry) => {
                    integer = i64::from(expiry != 0);
                    self.restage_expiry(key, 0);
                }
                None => {
                    self.staged.insert(key, Staged::Absent);
                }
            },
        }
        Ok(OpResult {
            existed: current_expiry.is_some(),
            previous,
            integer,
        })
    }

    /// The value and expiry of `key` as the batch sees it, if present.
    fn current(&self, key: &[u8]) -> Option<(&[u8], u64)> {
        match self.staged.get(key) {
            Some(Staged::Absent) => None,
            Some(Staged::Stored { expires_at_ms }) => {
                self.keyspace.get(key).map(|e| (e.value(), *expires_at_ms))
            }
            Some(Staged::Written {
                value,
                expires_at_ms,
            }) => Some((value, *expires_at_ms)),
            None if self.cleared => None,
            None => live(self.keyspace, key, self.now_ms).map(|e| (e.value(), e.expires_at_ms())),
        }
    }

    /// The value of `key` as the batch sees it, sharing the stored bytes when unchanged.
    fn previous(&self, key: &[u8]) -> Option<Bytes> {
        match self.staged.get(key) {
            Some(Staged::Absent) => None,
            Some(Staged::Stored { .. }) => self.keyspace.get(key).map(|e| e.value_bytes()),
            Some(Staged::Written { value, .. }) => Some(Bytes::copy_from_slice(value)),
            None if self.cleared => None,
            None => live(self.keyspace, key, self.now_ms).map(|e| e.value_bytes()),
        }
    }

    /// Gives `key`, which the caller saw present, a new expiry and keeps its value.
    fn restage_expiry(&mut self, key: &'c [u8], at_ms: u64) {
        match self.staged.get_mut(key) {
            Some(Staged::Stored { expires_at_ms } | Staged::Written { expires_at_ms, .. }) => {
                *expires_at_ms = at_ms;
            }
            Some(Staged::Absent) => {}
            None => {
                self.staged.insert(
                    key,
                    Staged::Stored {
                        expires_at_ms: at_ms,
                    },
                );
            }
        }
    }
}

/// Parses a value as Redis's `string2ll` does for INCRBY: an optional `-`, then decimal digits
/// without leading zeros ("0" alone is fine, "-0" is not), no sign `+`, no spaces, within i64.
fn parse_decimal_i64(text: &[u8]) -> Option<i64> {
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text {
        [b'-', digits @ ..] => (true, digits),
        digits => (false, digits),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    // Accumulated as a negative number, which reaches i64::MIN.
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_sub(i64::from(digit - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

// ---- Snapshot codec ----

const MAGIC: &[u8; 8] = b"KVSSNAP\0";
/// Version of the snapshot format this binary writes and reads.
const SNAPSHOT_FORMAT: u16 = 1;
const TAG_END: u8 = 0;
const TAG_ENTRY: u8 = 1;
const TAG_SESSION: u8 = 2;
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
            let count = u8::try_from(remembered.len()).map_err(|_| {
                io::Error::other(format!(
                    "client {client_id} has {} remembered writes",
                    remembered.len()
                ))
            })?;
            out.write_all(&[TAG_SESSION])?;
            out.write_all(&client_id.to_le_bytes())?;
            out.write_all(&session.last_index().to_le_bytes())?;
            out.write_all(&[count])?;
            for (sequence, outcome) in remembered {
                outcome_buf.clear();
                outcome_buf =
                    postcard::to_extend(outcome, outcome_buf).map_err(io::Error::other)?;
                out.write_all(&sequence.to_le_bytes())?;
                out.field("outcome", &outcome_buf)?;
            }
            clients += 1;
        }
        out.write_all(&[TAG_END])?;
        out.write_all(&entries.to_le_bytes())?;
        out.write_all(&clients.to_le_bytes())?;
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
        check_preamble(&input.array()?)?;
        let mut data = StateData {
            last_stamp_ms: input.u64()?,
            ..StateData::default()
        };
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let (mut entries, mut clients) = (0u64, 0u64);
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
                TAG_SESSION => {
                    let client_id = input.u64()?;
                    let last_index = input.u64()?;
                    let count = usize::from(input.array::<1>()?[0]);
                    if count == 0 || count > REMEMBERED_PER_CLIENT {
                        return Err(invalid(format!(
                            "client {client_id} has {count} remembered writes, not 1 to {REMEMBERED_PER_CLIENT}"
                        )));
                    }
                    let mut last_sequence = None;
                    for _ in 0..count {
                        let sequence = input.u64()?;
                        if last_sequence.is_some_and(|last| sequence <= last) {
                            return Err(invalid(format!(
                                "remembered writes of client {client_id} are not in ascending order"
                            )));
                        }
                        last_sequence = Some(sequence);
                        input.field("outcome", &mut value)?;
                        let outcome: Outcome = postcard::from_bytes(&value).map_err(|e| {
                            invalid(format!("undecodable outcome of client {client_id}: {e}"))
                        })?;
                        let id = WriteId {
                            client_id,
                            sequence,
                        };
                        data.sessions.record(id, last_index, outcome);
                    }
                    clients += 1;
                }
                tag => {
                    return Err(invalid(format!(
                        "unknown record tag {tag} at byte {}",
                        input.position - 1
                    )));
                }
            }
        }
        let stored_entries = input.u64()?;
        let stored_clients = input.u64()?;
        let computed = input.crc.clone().finalize();
        let stored = u32::from_le_bytes(input.array()?);
        if stored != computed {
            return Err(invalid(format!(
                "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            )));
        }
        if entries != stored_entries || data.keyspace.len() as u64 != entries {
            return Err(invalid(format!(
                "{entries} key records ({} distinct keys) but the trailer says {stored_entries}",
                data.keyspace.len()
            )));
        }
        if clients != stored_clients || data.sessions.len() as u64 != clients {
            return Err(invalid(format!(
                "{clients} session records ({} distinct clients) but the trailer says {stored_clients}",
                data.sessions.len()
            )));
        }
        match input.inner.read_exact(&mut [0u8]) {
            Ok(()) => Err(invalid(
                "trailing bytes after the snapshot trailer".to_owned(),
            )),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(data),
            Err(e) => Err(e),
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("invalid snapshot: {message}"),
    )
}

/// Magic and format version.
const PREAMBLE_BYTES: usize = MAGIC.len() + 2;
/// The shortest encoding: preamble, stamp, end tag, two counts and the checksum.
const MIN_ENCODED_BYTES: u64 = PREAMBLE_BYTES as u64 + 8 + 1 + 16 + 4;

fn check_preamble(preamble: &[u8; PREAMBLE_BYTES]) -> io::Result<()> {
    let (magic, version) = preamble.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(invalid("not a kvs snapshot (bad magic bytes)".to_owned()));
    }
    let version = u16::from_le_bytes(version.try_into().expect("two bytes"));
    if version > SNAPSHOT_FORMAT {
        return Err(invalid(format!(
            "snapshot format version {version} is newer than this binary supports ({SNAPSHOT_FORMAT})"
        )));
    }
    if version != SNAPSHOT_FORMAT {
        return Err(invalid(format!(
            "unknown snapshot format version {version}"
        )));
    }
    Ok(())
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
            return Err(invalid(format!("truncated after {} bytes", self.len)));
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
            return Err(invalid(format!(
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
            return Err(invalid(format!(
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

    fn truncated(&self) -> io::Error {
        invalid(format!("truncated after {} bytes", self.position))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::store::command::COMMAND_FORMAT;

    fn put(key: &str, value: &str) -> Op {
        put_with(key, value, PutExpiry::Clear)
    }

    fn put_with(key: &str, value: &str, expiry: PutExpiry) -> Op {
        Op::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            expiry,
        }
    }

    fn key(key: &str) -> Bytes {
        Bytes::copy_from_slice(key.as_bytes())
    }

    fn incr(k: &str, delta: i64) -> Op {
        Op::Increment { key: key(k), delta }
    }

    fn ops(ops: Vec<Op>) -> Batch {
        Batch {
            ops,
            ..Batch::default()
        }
    }

    fn with_previous(ops: Vec<Op>) -> Batch {
        Batch {
            ops,
            return_previous: true,
            ..Batch::default()
        }
    }

    /// A state machine driven like a log: each apply gets the next index.
    struct Replica {
        data: StateData,
        index: u64,
    }

    impl Replica {
        fn new() -> Replica {
            Replica {
                data: StateData::default(),
                index: 0,
            }
        }

        fn apply(&mut self, stamp_ms: u64, batch: Batch) -> Outcome {
            self.apply_as(stamp_ms, None, batch)
        }

        fn apply_as(&mut self, stamp_ms: u64, write_id: Option<WriteId>, batch: Batch) -> Outcome {
            self.index += 1;
            let cmd = Command {
                format: COMMAND_FORMAT,
                stamp_ms,
                write_id,
                batch,
            };
            self.data.apply(self.index, &cmd)
        }

        /// The results of a batch that must have been applied.
        fn results(&mut self, stamp_ms: u64, batch: Batch) -> Vec<OpResult> {
            match self.apply(stamp_ms, batch) {
                Outcome::Applied(outcome) => outcome.results,
                refused => panic!("expected the batch to apply, got {refused}"),
            }
        }

        fn value(&self, k: &str, now_ms: u64) -> Option<(String, u64)> {
            self.data
                .get(k.as_bytes(), now_ms)
                .map(|(v, e)| (String::from_utf8_lossy(&v).into_owned(), e))
        }
    }

    fn result(existed: bool, previous: Option<&str>, integer: i64) -> OpResult {
        OpResult {
            existed,
            previous: previous.map(|p| Bytes::copy_from_slice(p.as_bytes())),
            integer,
        }
    }

    #[test]
    fn put_and_delete_report_what_existed() {
        let mut r = Replica::new();
        let results = r.results(
            1,
            with_previous(vec![
                put("a", "1"),
                put("a", "2"),
                Op::Delete { key: key("a") },
                Op::Delete { key: key("a") },
            ]),
        );
        assert_eq!(
            results,
            [
                result(false, None, 0),
                result(true, Some("1"), 0),
                result(true, Some("2"), 0),
                result(false, None, 0)
            ]
        );
        assert_eq!(r.value("a", 1), None);
        assert_eq!(r.data.len(), 0);
    }

    #[test]
    fn previous_values_are_returned_only_when_asked() {
        let mut r = Replica::new();
        r.apply(1, ops(vec![put("a", "1")]));
        assert_eq!(
            r.results(1, ops(vec![put("a", "2")])),
            [result(true, None, 0)]
        );
    }

    #[test]
    fn a_key_expiring_exactly_now_is_gone() {
        let mut r = Replica::new();
        r.apply(100, ops(vec![put_with("a", "1", PutExpiry::At(200))]));
        assert_eq!(r.value("a", 199), Some(("1".to_owned(), 200)));
        assert_eq!(r.value("a", 200), None);
        assert_eq!(r.data.len(), 1, "stored until purged");
        assert_eq!(r.data.expired_keys(199, 10), Vec::<Bytes>::new());
        assert_eq!(r.data.expired_keys(200, 10), [key("a")]);
    }

    #[test]
    fn put_expiry_clear_keep_and_at() {
        let mut r = Replica::new();
        r.apply(10, ops(vec![put_with("a", "1", PutExpiry::At(500))]));
        r.apply(10, ops(vec![put_with("a", "2", PutExpiry::Keep)]));
        assert_eq!(r.value("a", 10), Some(("2".to_owned(), 500)));
        r.apply(10, ops(vec![put_with("a", "3", PutExpiry::Clear)]));
        assert_eq!(r.value("a", 10), Some(("3".to_owned(), 0)));
        r.apply(10, ops(vec![put_with("new", "1", PutExpiry::Keep)]));
        assert_eq!(
            r.value("new", 10),
            Some(("1".to_owned(), 0)),
            "keep on a new key means none"
        );
    }

    #[test]
    fn keep_does_not_revive_the_expiry_of_an_expired_key() {
        let mut r = Replica::new();
        r.apply(10, ops(vec![put_with("a", "1", PutExpiry::At(20))]));
        let results = r.results(20, ops(vec![put_with("a", "2", PutExpiry::Keep)]));
        assert_eq!(results, [result(false, None, 0)]);
        assert_eq!(r.value("a", 1_000), Some(("2".to_owned(), 0)));
    }

    #[test]
    fn a_put_with_a_past_or_present_expiry_deletes_the_key() {
        let mut r = Replica::new();
        r.apply(50, ops(vec![put("a", "1"), put("b", "1")]));
        let results = r.results(
            50,
            ops(vec![
                put_with("a", "2", PutExpiry::At(50)),
                put_with("b", "2", PutExpiry::At(0)),
            ]),
        );
        assert_eq!(results, [result(true, None, 0), result(true, None, 0)]);
        assert_eq!(
            (r.value("a", 50), r.value("b", 50), r.data.len()),
            (None, None, 0)
        );
    }

    #[test]
    fn an_expired_key_touched_by_an_op_counts_as_absent_and_is_purged() {
        let mut r = Replica::new();
        r.apply(
            10,
            ops(vec![
                put_with("a", "old", PutExpiry::At(20)),
                put_with("b", "old", PutExpiry::At(20)),
            ]),
        );
        let results = r.results(
            30,
            with_previous(vec![
                Op::Persist { key: key("a") },
                Op::Delete { key: key("b") },
            ]),
        );
        assert_eq!(results, [result(false, None, 0), result(false, None, 0)]);
        assert_eq!(r.data.len(), 0);
    }

    #[test]
    fn increment_follows_redis() {
        let mut r = Replica::new();
        assert_eq!(
            r.results(1, ops(vec![incr("n", 5)])),
            [result(false, None, 5)]
        );
        assert_eq!(
            r.value("n", 1),
            Some(("5".to_owned(), 0)),
            "a new counter has no expiry"
        );
        assert_eq!(
            r.results(1, ops(vec![incr("n", -7)])),
            [result(true, None, -2)]
        );
        assert_eq!(r.value("n", 1), Some(("-2".to_owned(), 0)));

        r.apply(
            1,
            ops(vec![Op::Expire {
                key: key("n"),
                at_ms: 100,
            }]),
        );
        r.apply(1, ops(vec![incr("n", 1)]));
        assert_eq!(
            r.value("n", 1),
            Some(("-1".to_owned(), 100)),
            "an existing counter keeps its expiry"
        );

        assert_eq!(
            r.results(100, ops(vec![incr("n", 3)])),
            [result(false, None, 3)],
            "expired counts as 0"
        );
        assert_eq!(r.value("n", 100), Some(("3".to_owned(), 0)));
    }

    #[test]
    fn increment_of_a_non_integer_or_past_the_range_is_refused() {
        let mut r = Replica::new();
        r.apply(
            1,
            ops(vec![
                put("text", "abc"),
                put("max", &i64::MAX.to_string()),
                put("min", &i64::MIN.to_string()),
            ]),
        );
        assert_eq!(
            r.apply(1, ops(vec![incr("max", -1), incr("text", 1)])),
            Outcome::Refused(Refusal::NotAnInteger { op: 1 })
        );
        assert_eq!(
            r.apply(1, ops(vec![incr("max", 1)])),
            Outcome::Refused(Refusal::Overflow { op: 0 })
        );
        assert_eq!(
            r.apply(1, ops(vec![incr("min", -1)])),
            Outcome::Refused(Refusal::Overflow { op: 0 })
        );
        assert_eq!(r.value("max", 1), Some((i64::MAX.to_string(), 0)));
    }

    #[test]
    fn decimal_parsing_matches_redis_string2ll() {
        for (text, expected) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("-1", Some(-1)),
            ("1234567890", Some(1_234_567_890)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("", None),
            ("-", None),
            ("-0", None),
            ("00", None),
            ("01", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("1a", None),
            ("1.0", None),
            ("0x10", None),
            ("99999999999999999999999", None),
        ] {
            assert_eq!(parse_decimal_i64(text.as_bytes()), expected, "{text:?}");
        }
    }

    #[test]
    fn append_extends_and_keeps_the_expiry() {
        let mut r = Replica::new();
        assert_eq!(
            r.results(
                1,
                ops(vec![Op::Append {
                    key: key("a"),
                    value: key("ab")
                }])
            ),
            [result(false, None, 2)]
        );
        r.apply(
            1,
            ops(vec![Op::Expire {
                key: key("a"),
                at_ms: 50,
            }]),
        );
        assert_eq!(
            r.results(
                1,
                with_previous(vec![Op::Append {
                    key: key("a"),
                    value: key("cde")
                }])
            ),
            [result(true, Some("ab"), 5)]
        );
        assert_eq!(r.value("a", 1), Some(("abcde".to_owned(), 50)));
    }

    #[test]
    fn expire_and_persist() {
        let mut r = Replica::new();
        r.apply(10, ops(vec![put("a", "1"), put("b", "1")]));
        let results = r.results(
            10,
            ops(vec![
                Op::Expire {
                    key: key("a"),
                    at_ms: 11,
                },
                Op::Expire {
                    key: key("nope"),
                    at_ms: 11,
                },
            ]),
        );
        assert_eq!(results, [result(true, None, 0), result(false, None, 0)]);
        assert_eq!(r.value("a", 10), Some(("1".to_owned(), 11)));
        assert_eq!(r.value("nope", 10), None, "expire does not create a key");

        r.apply(10, ops(vec![Op::Persist { key: key("a") }]));
        assert_eq!(r.value("a", 1_000), Some(("1".to_owned(), 0)));

        r.apply(
            10,
            ops(vec![Op::Expire {
                key: key("b"),
                at_ms: 10,
            }]),
        );
        assert_eq!(
            r.data.len(),
            1,
            "an expiry at the present deletes the key at once"
        );
    }

    #[test]
    fn persist_reports_whether_it_removed_an_expiry() {
        let mut r = Replica::new();
        r.apply(
            10,
            ops(vec![
                put("plain", "1"),
                put_with("ttl", "1", PutExpiry::At(99)),
            ]),
        );
        let persist = |k: &str| Op::Persist { key: key(k) };
        assert_eq!(
            r.results(
                10,
                ops(vec![persist("plain"), persist("ttl"), persist("nope")])
            ),
            [
                result(true, None, 0),
                result(true, None, 1),
                result(false, None, 0)
            ]
        );
    }

    #[test]
    fn clear_empties_the_keyspace_and_later_ops_of_the_batch_start_from_nothing() {
        let mut r = Replica::new();
        r.apply(10, ops(vec![put("a", "1"), put("b", "2")]));
        let results = r.results(
            10,
            with_previous(vec![put("c", "3"), Op::Clear, incr("a", 5), put("d", "4")]),
        );
        assert_eq!(
            results[2],
            result(false, None, 5),
            "a is gone after the clear"
        );
        assert_eq!(r.value("a", 10), Some(("5".to_owned(), 0)));
        assert_eq!(r.value("d", 10), Some(("4".to_owned(), 0)));
        assert_eq!((r.value("b", 10), r.value("c", 10)), (None, None));
        assert_eq!(r.data.len(), 2);
    }

    #[test]
    fn compares_judge_expiry_at_the_entry_stamp() {
        let mut r = Replica::new();
        r.apply(
            10,
            ops(vec![put_with("a", "1", PutExpiry::At(20)), put("b", "2")]),
        );
        let holds = |r: &mut Replica, stamp_ms, compare: Compare| match r.apply(
            stamp_ms,
            Batch {
                compares: vec![compare],
                ..Batch::default()
            },
        ) {
            Outcome::Applied(outcome) => outcome.succeeded,
            refused => panic!("{refused}"),
        };
        let equals = |k: &str, v: &str| Compare::ValueEquals {
            key: key(k),
            value: key(v),
        };
        let exists = |k: &str, exists| Compare::Exists {
            key: key(k),
            exists,
        };
        let expired = |k: &str| Compare::Expired { key: key(k) };

        assert!(holds(&mut r, 19, equals("a", "1")));
        assert!(!holds(&mut r, 19, equals("a", "2")));
        assert!(holds(&mut r, 19, exists("a", true)));
        assert!(!holds(&mut r, 19, expired("a")));
        assert!(holds(&mut r, 19, exists("c", false)));
        assert!(!holds(&mut r, 19, expired("c")));
        assert!(
            !holds(&mut r, 19, expired("b")),
            "a key without expiry never expires"
        );

        assert!(!holds(&mut r, 20, equals("a", "1")));
        assert!(holds(&mut r, 20, exists("a", false)));
        assert!(holds(&mut r, 20, expired("a")));
    }

    #[test]
    fn the_else_branch_runs_when_a_compare_fails() {
        let mut r = Replica::new();
        let cas = |expected: &str, new: &str| Batch {
            compares: vec![Compare::ValueEquals {
                key: key("a"),
                value: key(expected),
            }],
            ops: vec![put("a", new)],
            else_ops: vec![put("failed", expected)],
            return_previous: false,
        };
        r.apply(1, ops(vec![put("a", "1")]));
        assert_eq!(
            r.apply(1, cas("1", "2")),
            Outcome::Applied(BatchOutcome {
                index: 2,
                succeeded: true,
                results: vec![result(true, None, 0)]
            })
        );
        assert_eq!(
            r.apply(1, cas("1", "3")),
            Outcome::Applied(BatchOutcome {
                index: 3,
                succeeded: false,
                results: vec![result(false, None, 0)]
            })
        );
        assert_eq!(
            (r.value("a", 1), r.value("failed", 1)),
            (Some(("2".to_owned(), 0)), Some(("1".to_owned(), 0)))
        );
    }

    #[test]
    fn later_ops_see_earlier_ones_of_the_same_batch() {
        let mut r = Replica::new();
        let results = r.results(
            1,
            with_previous(vec![
                put("x", "1"),
                incr("x", 1),
                Op::Append {
                    key: key("x"),
                    value: key("0"),
                },
                Op::Expire {
                    key: key("x"),
                    at_ms: 9,
                },
                incr("x", 1),
                Op::Delete { key: key("x") },
                incr("x", 1),
            ]),
        );
        assert_eq!(
            results,
            [
                result(false, None, 0),
                result(true, Some("1"), 2),
                result(true, Some("2"), 2),
                result(true, Some("20"), 0),
                result(true, Some("20"), 21),
                result(true, Some("21"), 0),
                result(false, None, 1),
            ]
        );
        assert_eq!(r.value("x", 1), Some(("1".to_owned(), 0)));
    }

    #[test]
    fn a_refused_batch_changes_nothing() {
        let mut r = Replica::new();
        r.apply(
            10,
            ops(vec![put("a", "1"), put_with("old", "v", PutExpiry::At(20))]),
        );
        let snapshot = r.data.clone();
        let batch = ops(vec![
            put("a", "2"),
            put("b", "2"),
            Op::Delete { key: key("old") },
            put("x", "1"),
            incr("x", 1),
            Op::Append {
                key: key("x"),
                value: key("z"),
            },
            incr("x", 1),
        ]);
        assert_eq!(
            r.apply(30, batch),
            Outcome::Refused(Refusal::NotAnInteger { op: 6 })
        );
        assert_eq!(
            dump(&r.data).0,
            dump(&snapshot).0,
            "the keyspace is untouched, expired key included"
        );
        assert_eq!(r.data.last_stamp_ms(), 30);
    }

    #[test]
    fn a_retried_write_applies_once_and_gets_the_first_outcome() {
        let mut r = Replica::new();
        let id = Some(WriteId {
            client_id: 9,
            sequence: 3,
        });
        let first = r.apply_as(1, id, ops(vec![incr("n", 1)]));
        let retry = r.apply_as(2, id, ops(vec![incr("n", 1)]));
        assert_eq!(retry, first);
        assert_eq!(r.value("n", 2), Some(("1".to_owned(), 0)));

        let refused = r.apply_as(
            3,
            Some(WriteId {
                client_id: 9,
                sequence: 4,
            }),
            ops(vec![put("t", "x"), incr("t", 1)]),
        );
        assert_eq!(
            r.apply_as(
                4,
                Some(WriteId {
                    client_id: 9,
                    sequence: 4
                }),
                ops(vec![])
            ),
            refused,
            "refusals are remembered too"
        );

        let too_old = r.apply_as(
            5,
            Some(WriteId {
                client_id: 9,
                sequence: 2,
            }),
            ops(vec![incr("n", 1)]),
        );
        assert_eq!(
            too_old,
            Outcome::Refused(Refusal::SequenceTooOld {
                sequence: 2,
                oldest_remembered: 3
            })
        );
        assert_eq!(r.value("n", 5), Some(("1".to_owned(), 0)));
    }

    #[test]
    fn cluster_time_never_goes_backwards() {
        let mut r = Replica::new();
        r.apply(100, ops(vec![]));
        r.apply(50, ops(vec![put_with("a", "1", PutExpiry::At(80))]));
        assert_eq!(r.data.last_stamp_ms(), 100);
        assert_eq!(r.data.len(), 0, "expiry 80 is past at cluster time 100");
    }

    #[test]
    fn scan_skips_expired_keys() {
        let mut r = Replica::new();
        r.apply(
            1,
            ops(vec![
                put("live", "1"),
                put_with("dying", "1", PutExpiry::At(5)),
            ]),
        );
        assert_eq!(r.data.scan(0, 10, 4).1.len(), 2);
        assert_eq!(r.data.scan(0, 10, 5), (0, vec![key("live")]));
        assert_eq!(r.data.bytes_used(), 11);
    }

    // ---- Snapshot codec ----

    type Dump = (
        BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
        Vec<(u64, u64, Vec<(u64, Outcome)>)>,
        u64,
    );

    fn dump(data: &StateData) -> Dump {
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
                    s.remembered().map(|(q, o)| (q, o.clone())).collect(),
                )
            })
            .collect();
        sessions.sort_by_key(|s| s.0);
        (keys, sessions, data.last_stamp_ms)
    }

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
                .contains("snapshot format version 7 is newer than this binary supports (1)")
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
        let write = (0u64..6, 0u64..100, outcome_strategy());
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
                for (index, (client_id, sequence, outcome)) in writes.into_iter().enumerate() {
                    data.sessions.record(
                        WriteId {
                            client_id,
                            sequence,
                        },
                        index as u64,
                        outcome,
                    );
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
