//! The backup file: a point-in-time copy of a cluster's keys, as `kvsctl snapshot save` writes
//! it and `kvsctl snapshot status` / `restore` read it.
//!
//! It lives in the client library because the tools that read it run without any node: the
//! node streams this format, kvsctl stores it byte for byte and checks it here.
//!
//! Layout (integers little endian):
//! ```text
//! "KVSBACKP"  format:u16  last_index:u64  last_term:u64  taken_at_ms:u64
//! cluster_id_len:u16  cluster_id
//! per key:    1:u8  key_len:u32  key  value_len:u32  value  expires_at_ms:u64 (0 = never)
//! trailer:    0:u8  keys:u64  checksum:u64  crc32:u32
//! ```
//! `crc32` covers every byte before it, so any damage is found. `checksum` is the sum of an
//! xxh3 hash of each key's record, which does not depend on the order of the keys: two backups of
//! the same data have the same checksum whatever cluster, log position or hash order they came
//! from — which is how a save → restore → save round trip is compared.

use std::io::{self, Read, Write};

use bytes::Bytes;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"KVSBACKP";
/// The version of the layout above.
pub const BACKUP_FORMAT: u16 = 1;
const TAG_KEY: u8 = 1;
const TAG_END: u8 = 0;
/// Bytes a key costs in the file besides its key and value.
pub const PER_KEY_BYTES: u64 = 1 + 4 + 4 + 8;
/// Longest key or value the reader accepts: far above any node's limit, low enough that a
/// corrupt length cannot make it allocate without bound.
const MAX_FIELD_BYTES: u32 = 256 * 1024 * 1024;

/// Where the backed-up state stood in its cluster's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupHeader {
    /// The ID of the cluster the backup was taken from.
    pub cluster_id: String,
    /// Index of the last log entry the copied state includes.
    pub last_index: u64,
    /// Term of that entry.
    pub last_term: u64,
    /// Cluster time when the copy was taken, in milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
}

/// One key of a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupEntry {
    /// The key.
    pub key: Bytes,
    /// Its value.
    pub value: Bytes,
    /// When it expires, in milliseconds since the Unix epoch; 0 for never.
    pub expires_at_ms: u64,
}

/// What a checked backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    /// Where it came from.
    pub header: BackupHeader,
    /// Number of keys.
    pub keys: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// The order-independent checksum of the keys, values and expiries.
    pub checksum: u64,
}

impl BackupSummary {
    /// The checksum as kvsctl prints it: 16 hex digits.
    pub fn checksum_hex(&self) -> String {
        format!("{:016x}", self.checksum)
    }
}

fn entry_hash(key: &[u8], value: &[u8], expires_at_ms: u64) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(value);
    hasher.update(&expires_at_ms.to_le_bytes());
    hasher.digest()
}

/// Writes a backup: the header at once, then [`BackupWriter::entry`] per key, then
/// [`BackupWriter::finish`].
pub struct BackupWriter<W: Write> {
    out: Crc<W>,
    keys: u64,
    checksum: u64,
}

impl<W: Write> BackupWriter<W> {
    /// Starts a backup of the state `header` describes.
    pub fn new(out: W, header: &BackupHeader) -> io::Result<Self> {
        let mut out = Crc::new(out);
        let cluster_id = header.cluster_id.as_bytes();
        let cluster_id_len = u16::try_from(cluster_id.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cluster ID too long"))?;
        out.write_all(MAGIC)?;
        out.write_all(&BACKUP_FORMAT.to_le_bytes())?;
        out.write_all(&header.last_index.to_le_bytes())?;
        out.write_all(&header.last_term.to_le_bytes())?;
        out.write_all(&header.taken_at_ms.to_le_bytes())?;
        out.write_all(&cluster_id_len.to_le_bytes())?;
        out.write_all(cluster_id)?;
        Ok(Self {
            out,
            keys: 0,
            checksum: 0,
        })
    }

    /// Adds one key.
    pub fn entry(&mut self, key: &[u8], value: &[u8], expires_at_ms: u64) -> io::Result<()> {
        let len = |field: &[u8]| {
            u32::try_from(field.len())
                .ok()
                .filter(|len| *len <= MAX_FIELD_BYTES)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "field too long"))
        };
        self.out.write_all(&[TAG_KEY])?;
        self.out.write_all(&len(key)?.to_le_bytes())?;
        self.out.write_all(key)?;
        self.out.write_all(&len(value)?.to_le_bytes())?;
        self.out.write_all(value)?;
        self.out.write_all(&expires_at_ms.to_le_bytes())?;
        self.keys += 1;
        self.checksum = self
            .checksum
            .wrapping_add(entry_hash(key, value, expires_at_ms));
        Ok(())
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[TAG_END])?;
        self.out.write_all(&self.keys.to_le_bytes())?;
        self.out.write_all(&self.checksum.to_le_bytes())?;
        let crc = self.out.crc.clone().finalize();
        self.out.inner.write_all(&crc.to_le_bytes())?;
        Ok(self.out.inner)
    }
}

/// Reads and checks a whole backup, handing each key to `on_entry` as it goes; returns what the
/// backup holds. Every kind of damage is an [`Error::InvalidBackup`]; nothing a caller acted on
/// is trustworthy until this returns `Ok` (so restore checks the file once before it writes).
pub fn read_backup(
    input: impl Read,
    mut on_entry: impl FnMut(BackupEntry) -> Result<()>,
) -> Result<BackupSummary> {
    let mut input = Crc::new(input);
    let bad = |why: &str| Error::InvalidBackup(why.to_owned());
    let mut magic = [0u8; 8];
    read_exact(&mut input, &mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a kvs backup (bad magic)"));
    }
    let format = u16::from_le_bytes(read_array(&mut input)?);
    if format != BACKUP_FORMAT {
        return Err(Error::InvalidBackup(format!(
            "backup format {format} is not supported by this kvsctl (it reads format {BACKUP_FORMAT})"
        )));
    }
    let last_index = u64::from_le_bytes(read_array(&mut input)?);
    let last_term = u64::from_le_bytes(read_array(&mut input)?);
    let taken_at_ms = u64::from_le_bytes(read_array(&mut input)?);
    let cluster_id_len = u16::from_le_bytes(read_array(&mut input)?);
    let cluster_id = String::from_utf8(read_vec(&mut input, u32::from(cluster_id_len))?)
        .map_err(|_| bad("the cluster ID is not UTF-8"))?;
    let header = BackupHeader {
        cluster_id,
        last_index,
        last_term,
        taken_at_ms,
    };
    let (mut keys, mut checksum) = (0u64, 0u64);
    loop {
        let [tag] = read_array(&mut input)?;
        match tag {
            TAG_KEY => {
                let key_len = u32::from_le_bytes(read_array(&mut input)?);
                let key = read_vec(&mut input, key_len)?;
                let value_len = u32::from_le_bytes(read_array(&mut input)?);
                let value = read_vec(&mut input, value_len)?;
                let expires_at_ms = u64::from_le_bytes(read_array(&mut input)?);
                keys += 1;
                checksum = checksum.wrapping_add(entry_hash(&key, &value, expires_at_ms));
                on_entry(BackupEntry {
                    key: key.into(),
                    value: value.into(),
                    expires_at_ms,
                })?;
            }
            TAG_END => break,
            _ => return Err(bad("damaged record (unknown tag)")),
        }
    }
    let stored_keys = u64::from_le_bytes(read_array(&mut input)?);
    let stored_checksum = u64::from_le_bytes(read_array(&mut input)?);
    let computed_crc = input.crc.clone().finalize();
    let stored_crc = u32::from_le_bytes(read_array(&mut input.inner)?);
    if stored_crc != computed_crc {
        return Err(Error::InvalidBackup(format!(
            "checksum mismatch: the file's CRC32 is {stored_crc:08x} but its contents give {computed_crc:08x}"
        )));
    }
    if stored_keys != keys || stored_checksum != checksum {
        return Err(Error::InvalidBackup(format!(
            "checksum mismatch: the trailer records {stored_keys} keys with checksum \
             {stored_checksum:016x}, the file holds {keys} with {checksum:016x}"
        )));
    }
    if input.inner.read(&mut [0u8; 1]).map_err(io_error)? != 0 {
        return Err(bad("unexpected bytes after the end of the backup"));
    }
    Ok(BackupSummary {
        header,
        keys,
        bytes: input.count + 4,
        checksum,
    })
}

fn io_error(err: io::Error) -> Error {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        Error::InvalidBackup("truncated: the file ends before the backup does".into())
    } else {
        Error::Io(err.to_string())
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<()> {
    input.read_exact(buf).map_err(io_error)
}

fn read_array<const N: usize>(input: &mut impl Read) -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    read_exact(input, &mut buf)?;
    Ok(buf)
}

fn read_vec(input: &mut impl Read, len: u32) -> Result<Vec<u8>> {
    if len > MAX_FIELD_BYTES {
        return Err(Error::InvalidBackup(format!(
            "damaged record (a length of {len} bytes)"
        )));
    }
    let mut buf = Vec::new();
    let read = input
        .take(u64::from(len))
        .read_to_end(&mut buf)
        .map_err(io_error)?;
    if read != len as usize {
        return Err(io_error(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(buf)
}

/// Passes bytes through, keeping their CRC32 and count.
struct Crc<T> {
    inner: T,
    crc: crc32fast::Hasher,
    count: u64,
}

impl<T> Crc<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            crc: crc32fast::Hasher::new(),
            count: 0,
        }
    }
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        self.count += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.crc.update(&buf[..read]);
        self.count += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;

    fn header() -> BackupHeader {
        BackupHeader {
            cluster_id: "c0ffee".into(),
            last_index: 42,
            last_term: 3,
            taken_at_ms: 1_700_000_000_000,
        }
    }

    fn backup(entries: &[(&str, &str, u64)]) -> Vec<u8> {
        let mut writer = BackupWriter::new(Vec::new(), &header()).expect("header");
        for (key, value, expires) in entries {
            writer
                .entry(key.as_bytes(), value.as_bytes(), *expires)
                .expect("entry");
        }
        writer.finish().expect("trailer")
    }

    fn read_all(bytes: &[u8]) -> Result<(BackupSummary, Vec<BackupEntry>)> {
        let mut entries = Vec::new();
        let summary = read_backup(bytes, |e| {
            entries.push(e);
            Ok(())
        })?;
        Ok((summary, entries))
    }

    #[test]
    fn a_backup_reads_back_whole() {
        let bytes = backup(&[("a", "1", 0), ("b", "", 1_800_000_000_000)]);
        let (summary, entries) = read_all(&bytes).expect("valid");
        assert_eq!(summary.header, header());
        assert_eq!(summary.keys, 2);
        assert_eq!(summary.bytes, bytes.len() as u64);
        assert_eq!(entries[1].key, Bytes::from_static(b"b"));
        assert_eq!(entries[1].expires_at_ms, 1_800_000_000_000);
    }

    #[test]
    fn the_checksum_depends_on_the_data_not_its_order_or_origin() {
        let one = read_all(&backup(&[("a", "1", 0), ("b", "2", 0)])).expect("valid");
        let mut other_header = header();
        other_header.last_index = 7;
        let mut writer = BackupWriter::new(Vec::new(), &other_header).expect("header");
        writer.entry(b"b", b"2", 0).expect("entry");
        writer.entry(b"a", b"1", 0).expect("entry");
        let two = read_all(&writer.finish().expect("trailer")).expect("valid");
        assert_eq!(one.0.checksum, two.0.checksum);
        let changed = read_all(&backup(&[("a", "1", 0), ("b", "3", 0)])).expect("valid");
        assert_ne!(one.0.checksum, changed.0.checksum);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let bytes = backup(&[("key", "value", 0), ("k2", "v2", 5)]);
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x40;
            assert!(
                matches!(read_all(&flipped), Err(Error::InvalidBackup(_))),
                "byte {i}"
            );
            assert!(
                matches!(read_all(&bytes[..i]), Err(Error::InvalidBackup(_))),
                "truncated at {i}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(read_all(&longer), Err(Error::InvalidBackup(_))));
    }

    #[test]
    fn a_newer_format_is_named() {
        let mut bytes = backup(&[]);
        bytes[8] = 9;
        let err = read_all(&bytes).expect_err("newer format");
        assert!(err.to_string().contains("backup format 9"), "{err}");
    }

    /// A backup of random keys, and the same bytes with a few bytes changed and possibly cut.
    fn backup_and_damage() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let field = || prop::collection::vec(any::<u8>(), 0..8);
        (
            prop::collection::vec((field(), field(), any::<u64>()), 0..6),
            prop::collection::vec((any::<Index>(), 1u8..), 0..4),
            prop::option::of(any::<Index>()),
        )
            .prop_map(|(entries, flips, cut)| {
                let mut writer = BackupWriter::new(Vec::new(), &header()).expect("header");
                for (key, value, expires) in &entries {
                    writer.entry(key, value, *expires).expect("entry");
                }
                let valid = writer.finish().expect("trailer");
                let mut damaged = valid.clone();
                for (at, mask) in flips {
                    let at = at.index(damaged.len());
                    damaged[at] ^= mask;
                }
                if let Some(cut) = cut {
                    damaged.truncate(cut.index(damaged.len() + 1));
                }
                (valid, damaged)
            })
    }

    proptest! {
        // The same entry point as the cargo-fuzz target `backup` (tests/fuzz), on stable.
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes_are_refused_as_a_damaged_backup(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            prop_assert!(matches!(read_all(&bytes), Err(Error::InvalidBackup(_))));
        }

        #[test]
        fn a_damaged_backup_is_refused((valid, damaged) in backup_and_damage()) {
            let read = read_all(&damaged);
            if damaged == valid {
                prop_assert!(read.is_ok());
            } else {
                prop_assert!(matches!(read, Err(Error::InvalidBackup(_))), "{:?}", read);
            }
        }
    }
}
