//! The keyspace: byte keys mapped to byte values with an optional absolute expiry.
//!
//! Shaped by two needs.
//!
//! **Snapshots must not stall writes.** The map is split into [`SHARDS`] shards, each behind an
//! `Arc`. Cloning a [`Keyspace`] clones the vector of `Arc`s — O(shards), no entry data — and
//! gives a point-in-time view that another task can encode while this one keeps applying. A write
//! calls `Arc::make_mut` on its one shard, so after a clone only the shards written to are
//! copied, and such a copy bumps each entry's reference count instead of copying its bytes.
//!
//! **Appends are amortized.** A value grown by APPEND gets room to grow into, by Redis's rule for
//! strings (as much again as its length, at most 1 MiB more), and the next append writes into
//! that room in place when nothing else shares the entry. An entry shared with a snapshot or a
//! reply in flight is copied once, with new room, so a series of appends copies each byte a
//! bounded number of times instead of copying the whole value every time. The room is not
//! counted in [`Keyspace::bytes_used`]: only appended values have it, at most their own length.
//!
//! **Memory per key.** An entry is one `Arc<[u8]>` holding a header (LEB128 of the key's length,
//! a has-room bit and a has-expiry bit: one byte for keys under 32 bytes), the absolute expiry
//! only if the key has one, the value's length only if it has room to grow, the key and the
//! value. Per key that costs:
//! - the table slot: 16 bytes (the `Arc<[u8]>` fat pointer) and 1 control byte, divided by the
//!   load factor, which hashbrown keeps between 7/16 and 7/8: 19 to 39 bytes;
//! - the allocation: `Arc` counts 16 + header 1 (+ 8 with an expiry) + the allocator's own
//!   header and rounding (glibc: 8 + 0..15): about 32 bytes.
//!
//! So about 50 to 70 bytes per key beyond its key and value bytes. Keys without an expiry — most
//! keys — pay nothing for expiry support; an expiry in the slot would cost every key 8 bytes,
//! 16 MB at 1M keys (~244 keys per shard sit in 512-bucket tables), and changing an expiry copies
//! the entry instead. Keeping the key length in the slot instead would round the slot up to 24.
//!
//! The shard is chosen by the top bits of a SipHash-1-3 hash with fixed keys. SipHash-1-3 is a
//! specified function, so every node on every platform and version computes the same hash: a
//! SCAN cursor (a shard index) issued by one node is valid on any other.

use std::iter;
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry as TableEntry;
use siphasher::sip::SipHasher13;

/// Number of shards: a power of two, enough that one shard's copy after a snapshot is small even
/// with many millions of keys, few enough that cloning the shard vector stays cheap.
const SHARDS: usize = 1 << SHARD_BITS;
const SHARD_BITS: u32 = 12;

/// The SipHash keys. Changing them changes which shard a key lives in, and so what a SCAN
/// cursor means: never change them.
const HASH_KEYS: (u64, u64) = (0x6b76_735f_6b65_7973, 0x7368_6172_645f_7631);

type Shard = HashTable<Entry>;

/// The map of keys to values and expiries; see the module doc for its layout.
///
/// `clone()` is the snapshot operation: O([`SHARDS`]) and independent of later writes.
#[derive(Clone)]
pub(crate) struct Keyspace {
    shards: Vec<Arc<Shard>>,
    /// Per shard, how many of its keys have an expiry: finding expired keys visits only those
    /// shards, and none at all while no key has an expiry.
    expiring: Vec<u32>,
    len: usize,
    bytes_used: usize,
}

/// One stored key: `data` is the header (LEB128 of `key length << 2 | has room << 1 | has
/// expiry`), the absolute expiry in cluster ms (8 bytes, little-endian) if it has one, the value's
/// length (8 bytes, little-endian) if it has room to grow, the key, the value, then the room.
#[derive(Clone)]
struct Entry {
    data: Arc<[u8]>,
}

/// A borrowed view of one stored key.
#[derive(Clone, Copy)]
pub(crate) struct EntryRef<'a> {
    entry: &'a Entry,
}

impl Default for Keyspace {
    fn default() -> Self {
        // All shards start as the same empty table; the first write to each copies it.
        let empty = Arc::new(Shard::new());
        Keyspace {
            shards: vec![empty; SHARDS],
            expiring: vec![0; SHARDS],
            len: 0,
            bytes_used: 0,
        }
    }
}

impl Keyspace {
    /// The stored entry for `key`, whatever its expiry: judging expiry is the caller's business.
    pub(crate) fn get(&self, key: &[u8]) -> Option<EntryRef<'_>> {
        let hash = key_hash(key);
        self.shards[shard_index(hash)]
            .find(table_hash(hash), |e| e.key() == key)
            .map(|entry| EntryRef { entry })
    }

    /// Stores `key` with `value` and `expires_at_ms` (0 = none), replacing any previous entry.
    pub(crate) fn insert(&mut self, key: &[u8], value: &[u8], expires_at_ms: u64) {
        let hash = key_hash(key);
        let index = shard_index(hash);
        let entry = Entry::new(key, value, expires_at_ms);
        let shard = Arc::make_mut(&mut self.shards[index]);
        match shard.entry(table_hash(hash), |e| e.key() == key, rehash) {
            TableEntry::Occupied(mut occupied) => {
                self.bytes_used -= occupied.get().payload_len();
                self.expiring[index] -= u32::from(occupied.get().has_expiry());
                *occupied.get_mut() = entry;
            }
            TableEntry::Vacant(vacant) => {
                vacant.insert(entry);
                self.len += 1;
            }
        }
        self.expiring[index] += u32::from(expires_at_ms != 0);
        self.bytes_used += key.len() + value.len();
    }

    /// Changes the expiry of a stored key; false when the key is not stored.
    pub(crate) fn set_expiry(&mut self, key: &[u8], expires_at_ms: u64) -> bool {
        let hash = key_hash(key);
        let index = shard_index(hash);
        // Look before writing: an unchanged key must not copy a shard shared with a snapshot.
        match self.shards[index].find(table_hash(hash), |e| e.key() == key) {
            None => return false,
            Some(entry) if entry.expires_at_ms() == expires_at_ms => return true,
            Some(_) => {}
        }
        let shard = Arc::make_mut(&mut self.shards[index]);
        match shard.find_mut(table_hash(hash), |e| e.key() == key) {
            Some(entry) => {
                self.expiring[index] -= u32::from(entry.has_expiry());
                self.expiring[index] += u32::from(expires_at_ms != 0);
                *entry = Entry::new(entry.key(), entry.value(), expires_at_ms);
                true
            }
            None => false,
        }
    }

    /// Appends `suffix` to the value of a stored key and gives it `expires_at_ms`, growing the
    /// value in place when it has room and nothing shares it (see the module doc); false when
    /// the key is not stored.
    pub(crate) fn append(&mut self, key: &[u8], suffix: &[u8], expires_at_ms: u64) -> bool {
        if suffix.is_empty() {
            return self.set_expiry(key, expires_at_ms);
        }
        let hash = key_hash(key);
        let index = shard_index(hash);
        let shard = Arc::make_mut(&mut self.shards[index]);
        let Some(entry) = shard.find_mut(table_hash(hash), |e| e.key() == key) else {
            return false;
        };
        self.expiring[index] -= u32::from(entry.has_expiry());
        self.expiring[index] += u32::from(expires_at_ms != 0);
        entry.append(suffix, expires_at_ms);
        self.bytes_used += suffix.len();
        true
    }

    /// Removes a stored key; false when it was not stored.
    pub(crate) fn remove(&mut self, key: &[u8]) -> bool {
        let hash = key_hash(key);
        let index = shard_index(hash);
        // Look before writing: removing an absent key must not copy a shard.
        if self.shards[index]
            .find(table_hash(hash), |e| e.key() == key)
            .is_none()
        {
            return false;
        }
        let shard = Arc::make_mut(&mut self.shards[index]);
        let Ok(occupied) = shard.find_entry(table_hash(hash), |e| e.key() == key) else {
            return false;
        };
        let (removed, _) = occupied.remove();
        self.expiring[index] -= u32::from(removed.has_expiry());
        self.len -= 1;
        self.bytes_used -= removed.payload_len();
        // hashbrown never shrinks by itself; give memory back once a shard is three quarters
        // empty, to half full, so that inserts and removes around one size do not resize.
        if shard.len() * 4 < shard.capacity() {
            shard.shrink_to(shard.len() * 2, rehash);
        }
        true
    }

    /// Number of stored keys, expired or not.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Sum of the stored keys' and values' lengths: the payload, without per-key overhead.
    pub(crate) fn bytes_used(&self) -> usize {
        self.bytes_used
    }

    /// Every stored entry that has an expiry, in shard order; shards without one are skipped.
    pub(crate) fn with_expiry(&self) -> impl Iterator<Item = EntryRef<'_>> {
        self.shards
            .iter()
            .zip(&self.expiring)
            .filter(|(_, expiring)| **expiring > 0)
            .flat_map(|(shard, _)| shard.iter())
            .filter(|entry| entry.has_expiry())
            .map(|entry| EntryRef { entry })
    }

    /// Every stored entry, in shard order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = EntryRef<'_>> {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter())
            .map(|entry| EntryRef { entry })
    }

    /// One step of a cursor scan: the keys (among those `keep` accepts) of whole shards from
    /// shard `cursor` on, until at least `count` are collected, and the cursor to continue
    /// with — 0 once every shard has been visited.
    ///
    /// The cursor is a shard index, not a table position, so it survives tables growing or
    /// shrinking between steps: a key stored for the whole scan is returned exactly once.
    pub(crate) fn scan(
        &self,
        cursor: u64,
        count: usize,
        mut keep: impl FnMut(&EntryRef<'_>) -> bool,
    ) -> (u64, Vec<Bytes>) {
        let mut keys = Vec::new();
        let Ok(start) = usize::try_from(cursor) else {
            return (0, keys);
        };
        for (index, shard) in self.shards.iter().enumerate().skip(start) {
            keys.extend(
                shard
                    .iter()
                    .map(|entry| EntryRef { entry })
                    .filter(|e| keep(e))
                    .map(|e| e.key_bytes()),
            );
            let next = index + 1;
            if keys.len() >= count && next < SHARDS {
                return (next as u64, keys);
            }
        }
        (0, keys)
    }
}

impl<'a> EntryRef<'a> {
    pub(crate) fn key(&self) -> &'a [u8] {
        self.entry.key()
    }

    pub(crate) fn value(&self) -> &'a [u8] {
        self.entry.value()
    }

    /// Absolute expiry in cluster ms; 0 means none.
    pub(crate) fn expires_at_ms(&self) -> u64 {
        self.entry.expires_at_ms()
    }

    /// The key, sharing the entry's allocation instead of copying it.
    pub(crate) fn key_bytes(&self) -> Bytes {
        let layout = self.entry.layout();
        Bytes::from_owner(Arc::clone(&self.entry.data)).slice(layout.key_start..layout.value_start)
    }

    /// The value, sharing the entry's allocation instead of copying it.
    pub(crate) fn value_bytes(&self) -> Bytes {
        let layout = self.entry.layout();
        Bytes::from_owner(Arc::clone(&self.entry.data)).slice(layout.value_start..layout.value_end)
    }
}

/// Where the parts of an entry's data lie.
struct Layout {
    /// Where the expiry starts, if the entry has one.
    expiry_start: Option<usize>,
    /// Where the value's length starts, if the entry has room to grow.
    value_len_start: Option<usize>,
    key_start: usize,
    value_start: usize,
    value_end: usize,
}

/// Room given to a value grown by an append, as Redis's `sdsMakeRoomFor` gives it: as much
/// again as the value's length, at most this much.
const MAX_ROOM: usize = 1024 * 1024;

impl Entry {
    fn new(key: &[u8], value: &[u8], expires_at_ms: u64) -> Entry {
        Entry::build(key, &[value], expires_at_ms, None)
    }

    /// An entry holding `key` and the concatenation of `value`, with `room` spare bytes after
    /// it when `Some` (which also stores the value's length), in one allocation filled in place.
    fn build(key: &[u8], value: &[&[u8]], expires_at_ms: u64, room: Option<usize>) -> Entry {
        let has_expiry = expires_at_ms != 0;
        let mut header = [0u8; MAX_HEADER_BYTES];
        let word = key.len() << 2 | usize::from(room.is_some()) << 1 | usize::from(has_expiry);
        let header_len = write_header(word, &mut header);
        let expiry = expires_at_ms.to_le_bytes();
        let expiry = if has_expiry { &expiry[..] } else { &[] };
        let value_len: usize = value.iter().map(|part| part.len()).sum();
        let value_len_field = (value_len as u64).to_le_bytes();
        let value_len_field = if room.is_some() {
            &value_len_field[..]
        } else {
            &[]
        };
        let total = header_len
            + expiry.len()
            + value_len_field.len()
            + key.len()
            + value_len
            + room.unwrap_or(0);
        let mut data: Arc<[u8]> = iter::repeat_n(0u8, total).collect();
        let buf = Arc::get_mut(&mut data).expect("a fresh Arc has no other owner");
        let mut at = 0;
        let fixed = [&header[..header_len], expiry, value_len_field, key];
        for part in fixed.into_iter().chain(value.iter().copied()) {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Entry { data }
    }

    /// Appends `suffix` and sets the expiry: in place when the entry has room, keeps its expiry
    /// layout and is not shared; otherwise into a new entry with room to grow.
    fn append(&mut self, suffix: &[u8], expires_at_ms: u64) {
        let layout = self.layout();
        let new_end = layout.value_end + suffix.len();
        let same_expiry_layout = layout.expiry_start.is_some() == (expires_at_ms != 0);
        if let (Some(len_at), true) = (layout.value_len_start, same_expiry_layout)
            && let Some(data) = Arc::get_mut(&mut self.data)
            && new_end <= data.len()
        {
            data[layout.value_end..new_end].copy_from_slice(suffix);
            let value_len = (new_end - layout.value_start) as u64;
            data[len_at..len_at + 8].copy_from_slice(&value_len.to_le_bytes());
            if let Some(at) = layout.expiry_start {
                data[at..at + 8].copy_from_slice(&expires_at_ms.to_le_bytes());
            }
            return;
        }
        let value_len = new_end - layout.value_start;
        *self = Entry::build(
            self.key(),
            &[self.value(), suffix],
            expires_at_ms,
            Some(value_len.min(MAX_ROOM)),
        );
    }

    fn layout(&self) -> Layout {
        let (word, header_len) = read_header(&self.data);
        let (key_len, has_room, has_expiry) = (word >> 2, word & 2 == 2, word & 1 == 1);
        let expiry_start = has_expiry.then_some(header_len);
        let after_expiry = header_len + if has_expiry { 8 } else { 0 };
        let value_len_start = has_room.then_some(after_expiry);
        let key_start = after_expiry + if has_room { 8 } else { 0 };
        let value_start = key_start + key_len;
        let value_end = match value_len_start {
            Some(at) => {
                let bytes = self.data[at..at + 8].try_into().expect("8 bytes");
                value_start + u64::from_le_bytes(bytes) as usize
            }
            None => self.data.len(),
        };
        Layout {
            expiry_start,
            value_len_start,
            key_start,
            value_start,
            value_end,
        }
    }

    fn key(&self) -> &[u8] {
        let layout = self.layout();
        &self.data[layout.key_start..layout.value_start]
    }

    fn value(&self) -> &[u8] {
        let layout = self.layout();
        &self.data[layout.value_start..layout.value_end]
    }

    fn has_expiry(&self) -> bool {
        self.layout().expiry_start.is_some()
    }

    fn expires_at_ms(&self) -> u64 {
        self.layout().expiry_start.map_or(0, |at| {
            let bytes = self.data[at..at + 8].try_into().expect("8 bytes");
            u64::from_le_bytes(bytes)
        })
    }

    /// Key and value bytes, as counted by [`Keyspace::bytes_used`].
    fn payload_len(&self) -> usize {
        let layout = self.layout();
        layout.value_end - layout.key_start
    }
}

/// LEB128 of a `usize` takes at most 10 bytes.
const MAX_HEADER_BYTES: usize = 10;

/// Writes `word` as LEB128 into `out`, returning how many bytes it took.
fn write_header(mut word: usize, out: &mut [u8; MAX_HEADER_BYTES]) -> usize {
    let mut written = 0;
    loop {
        let low = (word & 0x7f) as u8;
        word >>= 7;
        if word == 0 {
            out[written] = low;
            return written + 1;
        }
        out[written] = low | 0x80;
        written += 1;
    }
}

/// Reads the LEB128 header word at the start of an entry's data: (word, bytes it took). The
/// data was written by [`Entry::new`], so it is well formed.
fn read_header(data: &[u8]) -> (usize, usize) {
    let mut word = 0usize;
    for (i, byte) in data.iter().take(MAX_HEADER_BYTES).enumerate() {
        word |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (word, i + 1);
        }
    }
    unreachable!("an entry always starts with a complete header")
}

fn key_hash(key: &[u8]) -> u64 {
    SipHasher13::new_with_keys(HASH_KEYS.0, HASH_KEYS.1).hash(key)
}

fn shard_index(hash: u64) -> usize {
    (hash >> (u64::BITS - SHARD_BITS)) as usize
}

/// The hash a shard's table sees. The shard bits are the same for every key of a shard, so they
/// are rotated to the middle, away from the low bits hashbrown probes with and the top 7 bits it
/// keeps as a tag.
fn table_hash(hash: u64) -> u64 {
    hash.rotate_left(32)
}

fn rehash(entry: &Entry) -> u64 {
    table_hash(key_hash(entry.key()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn contents(keyspace: &Keyspace) -> BTreeMap<Vec<u8>, (Vec<u8>, u64)> {
        keyspace
            .iter()
            .map(|e| (e.key().to_vec(), (e.value().to_vec(), e.expires_at_ms())))
            .collect()
    }

    #[test]
    fn stores_reads_and_removes() {
        let mut keyspace = Keyspace::default();
        keyspace.insert(b"a", b"1", 0);
        keyspace.insert(b"b", b"22", 500);
        let a = keyspace.get(b"a").expect("a is stored");
        assert_eq!(
            (a.key(), a.value(), a.expires_at_ms()),
            (&b"a"[..], &b"1"[..], 0)
        );
        let b = keyspace.get(b"b").expect("b is stored");
        assert_eq!(
            (b.value_bytes(), b.key_bytes(), b.expires_at_ms()),
            (Bytes::from("22"), Bytes::from("b"), 500)
        );
        assert_eq!((keyspace.len(), keyspace.bytes_used()), (2, 5));

        keyspace.insert(b"a", b"one", 7);
        assert_eq!(
            keyspace.get(b"a").map(|e| (e.value(), e.expires_at_ms())),
            Some((&b"one"[..], 7))
        );
        assert_eq!((keyspace.len(), keyspace.bytes_used()), (2, 7));

        assert!(keyspace.set_expiry(b"a", 0));
        assert!(!keyspace.set_expiry(b"zz", 1));
        assert_eq!(keyspace.get(b"a").map(|e| e.expires_at_ms()), Some(0));

        assert!(keyspace.remove(b"a"));
        assert!(!keyspace.remove(b"a"));
        assert!(keyspace.get(b"a").is_none());
        assert_eq!((keyspace.len(), keyspace.bytes_used()), (1, 3));
    }

    #[test]
    fn empty_and_long_keys_and_values_are_kept_apart() {
        let mut keyspace = Keyspace::default();
        let long_key = vec![b'k'; 300];
        keyspace.insert(b"", b"", 0);
        keyspace.insert(&long_key, b"v", 0);
        keyspace.insert(b"k", &long_key, 0);
        assert_eq!(keyspace.get(b"").map(|e| e.value()), Some(&b""[..]));
        assert_eq!(keyspace.get(&long_key).map(|e| e.value()), Some(&b"v"[..]));
        assert_eq!(
            keyspace.get(&long_key).map(|e| e.key_bytes()),
            Some(Bytes::from(long_key.clone()))
        );
        assert_eq!(
            keyspace.get(b"k").map(|e| e.value_bytes()),
            Some(Bytes::from(long_key))
        );
    }

    #[test]
    fn header_round_trips() {
        for word in [0, 1, 127, 128, 300, 16_383, 16_384, usize::MAX] {
            let mut buf = [0u8; MAX_HEADER_BYTES];
            let written = write_header(word, &mut buf);
            assert_eq!(read_header(&buf[..written]), (word, written), "word {word}");
        }
    }

    #[test]
    fn a_series_of_appends_copies_the_value_a_logarithmic_number_of_times() {
        let mut keyspace = Keyspace::default();
        keyspace.insert(b"k", b"", 0);
        let mut expected = Vec::new();
        let mut moves = 0;
        let mut at = keyspace.get(b"k").map(|e| e.value().as_ptr());
        for i in 0..10_000u32 {
            let suffix = i.to_le_bytes();
            assert!(keyspace.append(b"k", &suffix, 0));
            expected.extend_from_slice(&suffix);
            let now = keyspace.get(b"k").map(|e| e.value().as_ptr());
            moves += usize::from(now != at);
            at = now;
        }
        assert_eq!(keyspace.get(b"k").map(|e| e.value()), Some(&expected[..]));
        assert_eq!(keyspace.bytes_used(), 1 + expected.len());
        assert!(moves < 30, "the value moved {moves} times in 10000 appends");
    }

    #[test]
    fn an_append_never_changes_what_a_snapshot_or_a_reply_holds() {
        let mut keyspace = Keyspace::default();
        keyspace.insert(b"k", b"ab", 0);
        assert!(keyspace.append(b"k", b"cd", 0));
        let snapshot = keyspace.clone();
        let reply = keyspace.get(b"k").map(|e| e.value_bytes());
        assert!(keyspace.append(b"k", b"ef", 9));
        assert!(keyspace.append(b"k", b"gh", 0));
        assert!(!keyspace.append(b"missing", b"x", 0));
        assert_eq!(
            keyspace.get(b"k").map(|e| (e.value(), e.expires_at_ms())),
            Some((&b"abcdefgh"[..], 0))
        );
        assert_eq!(snapshot.get(b"k").map(|e| e.value()), Some(&b"abcd"[..]));
        assert_eq!(reply, Some(Bytes::from_static(b"abcd")));
        assert_eq!((keyspace.bytes_used(), snapshot.bytes_used()), (9, 5));
        assert!(keyspace.set_expiry(b"k", 5));
        assert_eq!(
            keyspace.get(b"k").map(|e| (e.value(), e.expires_at_ms())),
            Some((&b"abcdefgh"[..], 5))
        );
    }

    #[test]
    fn expiries_are_kept_with_keys_of_every_header_length() {
        let mut keyspace = Keyspace::default();
        let keys: Vec<Vec<u8>> = [0, 1, 63, 64, 200, 10_000].map(|n| vec![b'k'; n]).into();
        for (i, key) in keys.iter().enumerate() {
            let expiry = [0, 1, u64::MAX][i % 3];
            keyspace.insert(key, b"value", expiry);
            assert_eq!(
                keyspace
                    .get(key)
                    .map(|e| (e.key(), e.value(), e.expires_at_ms())),
                Some((&key[..], &b"value"[..], expiry))
            );
        }
        for (i, key) in keys.iter().enumerate() {
            let expiry = [7, 0, 1 << 40][i % 3];
            assert!(keyspace.set_expiry(key, expiry));
            let entry = keyspace.get(key).expect("stored");
            assert_eq!(
                (entry.value(), entry.expires_at_ms()),
                (&b"value"[..], expiry)
            );
            assert_eq!(entry.key_bytes(), Bytes::from(key.clone()));
        }
        let payload: usize = keys.iter().map(|k| k.len() + b"value".len()).sum();
        assert_eq!(keyspace.bytes_used(), payload);
    }

    #[test]
    fn a_clone_is_unaffected_by_later_writes() {
        let mut keyspace = Keyspace::default();
        for i in 0..2_000u32 {
            keyspace.insert(&i.to_be_bytes(), &i.to_le_bytes(), u64::from(i));
        }
        let snapshot = keyspace.clone();
        let before = contents(&snapshot);

        for i in 0..1_000u32 {
            keyspace.insert(&i.to_be_bytes(), b"changed", 0);
            keyspace.set_expiry(&(i + 1_000).to_be_bytes(), 1);
        }
        for i in 1_500..2_000u32 {
            keyspace.remove(&i.to_be_bytes());
        }
        keyspace.insert(b"new", b"key", 0);

        assert_eq!(contents(&snapshot), before);
        assert_eq!((snapshot.len(), snapshot.bytes_used()), (2_000, 16_000));
        assert_eq!(keyspace.len(), 1_501);
    }

    #[test]
    fn a_value_handed_out_outlives_its_entry() {
        let mut keyspace = Keyspace::default();
        keyspace.insert(b"k", b"value", 0);
        let value = keyspace.get(b"k").map(|e| e.value_bytes());
        keyspace.remove(b"k");
        keyspace.insert(b"k", b"other", 0);
        assert_eq!(value, Some(Bytes::from("value")));
    }

    #[test]
    fn scan_returns_every_key_once_while_shards_grow() {
        let mut keyspace = Keyspace::default();
        for i in 0..20_000u32 {
            keyspace.insert(format!("old-{i}").as_bytes(), b"v", 0);
        }
        let mut seen: HashMap<Bytes, usize> = HashMap::new();
        let (mut cursor, mut steps, mut added) = (0, 0, 0u32);
        loop {
            let (next, keys) = keyspace.scan(cursor, 50, |_| true);
            for key in keys {
                *seen.entry(key).or_default() += 1;
            }
            // Grow every shard's table between steps: ~100k new keys over the scan.
            for _ in 0..200 {
                keyspace.insert(format!("new-{added}").as_bytes(), b"v", 0);
                added += 1;
            }
            steps += 1;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert!(
            steps > 100,
            "a step returns about 50 keys, not everything: {steps} steps"
        );
        assert!(seen.values().all(|&n| n == 1), "no key is returned twice");
        for i in 0..20_000u32 {
            assert!(
                seen.contains_key(format!("old-{i}").as_bytes()),
                "old-{i} was not returned"
            );
        }
    }

    #[test]
    fn scan_skips_what_the_filter_rejects_and_ends_with_cursor_zero() {
        let mut keyspace = Keyspace::default();
        for i in 0..100u32 {
            keyspace.insert(&i.to_be_bytes(), b"v", u64::from(i % 2));
        }
        let (next, keys) = keyspace.scan(0, usize::MAX, |e| e.expires_at_ms() == 0);
        assert_eq!((next, keys.len()), (0, 50));
        assert_eq!(keyspace.scan(SHARDS as u64, 10, |_| true), (0, vec![]));
        assert_eq!(keyspace.scan(u64::MAX, 10, |_| true), (0, vec![]));
    }

    #[test]
    fn removing_most_keys_gives_memory_back() {
        let mut keyspace = Keyspace::default();
        let keys: Vec<Vec<u8>> = (0..400_000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        for key in &keys {
            keyspace.insert(key, b"", 0);
        }
        let capacity = |k: &Keyspace| k.shards.iter().map(|s| s.capacity()).sum::<usize>();
        let full = capacity(&keyspace);
        for key in &keys[1_000..] {
            keyspace.remove(key);
        }
        assert!(
            capacity(&keyspace) * 4 < full,
            "{} of {full}",
            capacity(&keyspace)
        );
        assert!(keys[..1_000].iter().all(|k| keyspace.get(k).is_some()));
    }

    #[derive(Debug, Clone)]
    enum ModelOp {
        Insert(Vec<u8>, Vec<u8>, u64),
        Remove(Vec<u8>),
        SetExpiry(Vec<u8>, u64),
        Get(Vec<u8>),
    }

    fn expiry() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..3, Just(u64::MAX)]
    }

    fn model_op() -> impl Strategy<Value = ModelOp> {
        let key = prop::collection::vec(0u8..4, 0..3);
        let value = prop::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            (key.clone(), value, expiry()).prop_map(|(k, v, e)| ModelOp::Insert(k, v, e)),
            key.clone().prop_map(ModelOp::Remove),
            (key.clone(), expiry()).prop_map(|(k, e)| ModelOp::SetExpiry(k, e)),
            key.prop_map(ModelOp::Get),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreemap(ops in prop::collection::vec(model_op(), 1..200)) {
            let mut keyspace = Keyspace::default();
            let mut model: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = BTreeMap::new();
            for op in ops {
                match op {
                    ModelOp::Insert(k, v, e) => {
                        keyspace.insert(&k, &v, e);
                        model.insert(k, (v, e));
                    }
                    ModelOp::Remove(k) => prop_assert_eq!(keyspace.remove(&k), model.remove(&k).is_some()),
                    ModelOp::SetExpiry(k, e) => {
                        let expected = model.get_mut(&k).map(|entry| entry.1 = e).is_some();
                        prop_assert_eq!(keyspace.set_expiry(&k, e), expected);
                    }
                    ModelOp::Get(k) => prop_assert_eq!(
                        keyspace.get(&k).map(|e| (e.value().to_vec(), e.expires_at_ms())),
                        model.get(&k).cloned()
                    ),
                }
                prop_assert_eq!(keyspace.len(), model.len());
            }
            let bytes: usize = model.iter().map(|(k, (v, _))| k.len() + v.len()).sum();
            prop_assert_eq!(keyspace.bytes_used(), bytes);
            prop_assert_eq!(contents(&keyspace), model.clone());
            let with_expiry: BTreeSet<Vec<u8>> =
                keyspace.with_expiry().map(|e| e.key().to_vec()).collect();
            let expected: BTreeSet<Vec<u8>> =
                model.into_iter().filter(|(_, (_, e))| *e != 0).map(|(k, _)| k).collect();
            prop_assert_eq!(with_expiry, expected);
        }
    }
}
