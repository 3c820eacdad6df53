//! The durable Raft log: entries, vote and commit index in a fjall database under
//! `<data-dir>/raft`, every append and vote fsynced before openraft is told it is done.
//!
//! fjall (an LSM tree with a write-ahead journal) was chosen over redb after measuring fsynced
//! batch appends (`docs/storage.md`); its journal recovery cuts a torn tail left by a crash. On
//! top, every record kvs stores carries its own format byte and CRC32, so a damaged record is
//! reported naming the database and the index — never served.
//!
//! Entries appended lately are also kept decoded in memory ([`RecentEntries`], bounded): the
//! state machine applies, and the leader replicates, each entry soon after it is appended, and
//! reading it back from the journal would decode and checksum it again (what that cost is
//! measured in `docs/storage.md`).
//!
//! Group commit: `append` writes its entries to the journal and returns at once; one thread,
//! the [`Syncer`], fsyncs the journal and only then tells openraft the entries are durable. Every
//! append that arrives while an fsync runs is covered by the next one, so a busy leader pays
//! one fsync per round however many batches and clients it serves, and openraft's core goes on
//! replicating to followers while its own disk syncs (waiting for the fsync inside `append`
//! stalled the core for every sync).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use fjall::AbstractTree;
use fjall::Database;
use fjall::Keyspace;
use fjall::KeyspaceCreateOptions;
use fjall::PersistMode;
use openraft::LogState;
use openraft::RaftLogReader;
use openraft::alias::EntryOf;
use openraft::alias::LogIdOf;
use openraft::alias::VoteOf;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use serde::de::DeserializeOwned;

use crate::failpoint::failpoint;
use crate::lock;
use crate::store::data_dir::sync_dirs_under;
use crate::store::entry::TypeConfig;
use crate::store::entry::entry_bytes;
use crate::store::record::invalid_data;
use crate::store::record::seal;
use crate::store::record::unseal;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// The log's memtable: appended entries stay in memory until it fills and is flushed. Entries
/// are read back only by replication, soon after they are written, and the log is purged behind
/// every snapshot, so fjall's 64 MiB default would only hold (in RSS) what has long been sent.
const MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;

/// fjall's block cache, for the rare reads of entries already flushed (a lagging follower):
/// small, because such a follower soon gets a snapshot instead (fjall's default is 32 MiB).
const BLOCK_CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// How much of the newest log the [`RecentEntries`] cache keeps, by encoded size: enough for
/// apply and replication to find what they read next, small next to the state the node holds.
const RECENT_ENTRY_BYTES: usize = 1024 * 1024;

/// The durable log; clones share the database, the syncer and the cache.
#[derive(Clone)]
pub(crate) struct DiskLog {
    db: Database,
    entries: Keyspace,
    meta: Keyspace,
    path: PathBuf,
    watermark: Watermark,
    syncer: Syncer,
    recent: Arc<Mutex<RecentEntries>>,
    /// Set while [`DiskLog::reclaim`] frees the disk behind a purge.
    reclaiming: Arc<AtomicBool>,
}

/// The newest entries of the log, decoded: always a contiguous run ending at the last entry
/// appended, or empty. The journal stays the truth; this only spares reading it back.
#[derive(Default)]
struct RecentEntries {
    entries: VecDeque<EntryOf<TypeConfig>>,
    bytes: usize,
}

impl RecentEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index())
    }

    /// Adds appended entries; a batch that does not follow the newest starts the run afresh.
    fn extend(&mut self, batch: &[EntryOf<TypeConfig>]) {
        let Some(first) = batch.first() else { return };
        if self
            .entries
            .back()
            .is_some_and(|last| last.index() + 1 != first.index())
        {
            self.entries.clear();
            self.bytes = 0;
        }
        for entry in batch {
            self.bytes += entry_bytes(&entry.payload);
            self.entries.push_back(entry.clone());
        }
        while self.bytes > RECENT_ENTRY_BYTES
            && let Some(old) = self.entries.pop_front()
        {
            self.bytes -= entry_bytes(&old.payload);
        }
    }

    /// Keeps the entries whose index `keep` accepts: a truncation drops a tail, a purge a head.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.entries.retain(|e| keep(e.index()));
        self.bytes = self.entries.iter().map(|e| entry_bytes(&e.payload)).sum();
    }

    /// The entries in `start..end` (`end` exclusive, `None` for all), if the cache holds them all.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<EntryOf<TypeConfig>>> {
        let first = self.first_index()?;
        let last = first + self.entries.len() as u64 - 1;
        let end = end.unwrap_or(last + 1);
        if start < first || start > last + 1 || end > last + 1 {
            return None;
        }
        let (from, to) = ((start - first) as usize, (end.max(start) - first) as usize);
        Some(self.entries.range(from..to).cloned().collect())
    }
}

/// Asks the sync thread for an fsync of everything written so far, and says who to tell.
enum SyncRequest {
    /// Entries up to `last` were appended; `callback` tells openraft once they are durable.
    Append {
        last: u64,
        callback: IOFlushed<TypeConfig>,
    },
    /// Answers once everything written before it is durable (and the watermark of the appends
    /// before it written).
    Barrier(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// How many sync requests may wait for the sync thread. openraft does not bound how many
/// appends await their flush (its `AppendEntries` command waits on no condition, see
/// `Command::condition` in openraft's `engine/command.rs`), so this queue does. Each fsync takes
/// every request queued while the previous one ran, so the queue fills only while one fsync
/// lasts as long as this many appends take to arrive: a stalled disk. Then `append` waits for
/// room — the core's task is parked, no runtime thread blocks — and the node holds this many
/// small requests at most instead of growing without end. It is as deep as openraft's own
/// channels into its core (`Config::notification_channel_size`'s default): a cap on memory
/// against a disk that has stopped, not a pace set for a slow one.
const SYNC_QUEUE: usize = 65_536;

/// The handle of the thread that fsyncs the journal for appends, in the order they came.
///
/// The sync thread waits on nothing but its queue and the disk (it answers through openraft's
/// callback and oneshot channels, which never block), so a sender waiting for room is let in
/// as soon as the fsync under way ends: the bound cannot deadlock.
#[derive(Clone)]
struct Syncer {
    requests: tokio::sync::mpsc::Sender<SyncRequest>,
}

impl Syncer {
    /// Starts the sync thread; it ends when the last handle is dropped.
    fn start(db: Database, path: PathBuf, watermark: Watermark) -> io::Result<Self> {
        let (requests, mut queue) = tokio::sync::mpsc::channel(SYNC_QUEUE);
        std::thread::Builder::new()
            .name("kvs-log-sync".into())
            .spawn(move || Self::run(&db, &path, &watermark, &mut queue))?;
        Ok(Syncer { requests })
    }

    fn run(
        db: &Database,
        path: &Path,
        watermark: &Watermark,
        queue: &mut tokio::sync::mpsc::Receiver<SyncRequest>,
    ) {
        while let Some(first) = queue.blocking_recv() {
            let group: Vec<SyncRequest> = std::iter::once(first)
                .chain(std::iter::from_fn(|| queue.try_recv().ok()))
                .collect();
            let last = group
                .iter()
                .filter_map(|request| match request {
                    SyncRequest::Append { last, .. } => Some(*last),
                    SyncRequest::Barrier(_) => None,
                })
                .max();
            let result = (|| {
                failpoint!("log-fsync");
                let mode = if crate::failpoint::fsync_skipped() {
                    PersistMode::Buffer
                } else {
                    PersistMode::SyncAll
                };
                db.persist(mode).map_err(|e| storage_error(path, e))?;
                match last {
                    Some(last) => watermark.write(last),
                    None => Ok(()),
                }
            })();
            if let Err(e) = &result {
                tracing::error!(error = %e, "syncing the raft log failed");
            }
            for request in group {
                let result = result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| io::Error::new(e.kind(), e.to_string()));
                match request {
                    SyncRequest::Append { callback, .. } => callback.io_completed(result),
                    SyncRequest::Barrier(done) => {
                        let _ = done.send(result);
                    }
                }
            }
        }
    }

    fn gone() -> io::Error {
        io::Error::other("the raft log's sync thread has stopped")
    }

    /// Queues an fsync for entries up to `last`; `callback` hears when it is done.
    async fn append(&self, last: u64, callback: IOFlushed<TypeConfig>) -> io::Result<()> {
        self.requests
            .send(SyncRequest::Append { last, callback })
            .await
            .map_err(|_| Self::gone())
    }

    /// Waits until everything written to the journal so far is durable.
    async fn drain(&self) -> io::Result<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.requests
            .send(SyncRequest::Barrier(done))
            .await
            .map_err(|_| Self::gone())?;
        wait.await.map_err(|_| Self::gone())?
    }
}

/// The highest log index known to be durable, kept in a small file beside the database.
///
/// fjall's journal recovery cannot tell a torn tail from damage in the middle: both end the
/// recovered log early. The watermark can: it is written only after the journal fsync that made
/// an index durable, so a recovered log that ends below it has lost acknowledged entries — the
/// node then refuses to start instead of serving a log with a hole. It is rewritten in place
/// after every group fsync, so the file stays open.
///
/// The rule that keeps the check true across a power loss: the durable watermark never exceeds
/// the durable end of the log. Raising it needs no fsync of its own (the entries are durable
/// first; a watermark that lags after a power loss only makes the check weaker, never wrong).
/// Lowering it, for a truncation, must be durable *before* the entries above it are removed
/// durably: otherwise a power loss can keep the old, higher watermark beside the shortened log,
/// and the node refuses to start over entries that were legitimately truncated.
#[derive(Clone)]
struct Watermark {
    path: PathBuf,
    /// The open file and the length of the record in it.
    file: Arc<Mutex<Option<(File, usize)>>>,
    #[cfg(test)]
    steps: Steps,
}

/// What the log did to its files, in order, for the tests of crash ordering.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// The watermark file was written with this index.
    Watermark(u64),
    /// ... and fsynced.
    WatermarkSynced,
    /// Entries from this index on were removed from the journal (durable at its next fsync).
    Removed(u64),
}

#[cfg(test)]
#[derive(Clone, Default)]
struct Steps(Arc<Mutex<Vec<Step>>>);

#[cfg(test)]
impl Steps {
    fn record(&self, step: Step) {
        lock::lock(&self.0).push(step);
    }

    fn take(&self) -> Vec<Step> {
        std::mem::take(&mut lock::lock(&self.0))
    }
}

impl Watermark {
    fn new(path: &Path) -> Self {
        Watermark {
            path: path.to_path_buf(),
            file: Arc::default(),
            #[cfg(test)]
            steps: Steps::default(),
        }
    }

    fn read(&self) -> io::Result<Option<u64>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match unseal::<u64>(&bytes, &|| format!("log watermark {}", self.path.display())) {
            Ok(index) => Ok(Some(index)),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a damaged log watermark");
                Ok(None)
            }
        }
    }

    /// Records `index` (a raise: durable entries up to it), not fsynced.
    fn write(&self, index: u64) -> io::Result<()> {
        self.write_at(index, false)
    }

    /// Records `index` below the current value and fsyncs it, so no removal that follows can
    /// become durable while the file could still hold a higher value.
    fn lower(&self, index: u64) -> io::Result<()> {
        self.write_at(index, true)
    }

    fn write_at(&self, index: u64, sync: bool) -> io::Result<()> {
        let record = seal(&index);
        let mut file = lock::lock(&self.file);
        if file.is_none() {
            let opened = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            let len = opened.metadata()?.len() as usize;
            *file = Some((opened, len));
        }
        let (f, len) = file.as_mut().expect("opened above");
        f.write_all_at(&record, 0)?;
        if *len != record.len() {
            f.set_len(record.len() as u64)?;
            *len = record.len();
        }
        #[cfg(test)]
        self.steps.record(Step::Watermark(index));
        if sync && !crate::failpoint::fsync_skipped() {
            f.sync_data()?;
            #[cfg(test)]
            self.steps.record(Step::WatermarkSynced);
        }
        Ok(())
    }
}

fn storage_error(path: &Path, e: fjall::Error) -> io::Error {
    io::Error::other(format!("raft log at {}: {e}", path.display()))
}

impl DiskLog {
    /// Opens (or creates) the log in `path`, its journals kept within `journal_bytes` (at least
    /// 64 MiB); recovery of a torn tail happens here, and a log that recovered shorter than
    /// `watermark` says it was is refused.
    pub(crate) fn open(path: &Path, watermark: &Path, journal_bytes: u64) -> io::Result<Self> {
        let db = Database::builder(path)
            .cache_size(BLOCK_CACHE_BYTES)
            .max_journaling_size(journal_bytes)
            .open()
            .map_err(|e| storage_error(path, e))?;
        let entries = db
            .keyspace("entries", || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .map_err(|e| storage_error(path, e))?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(|e| storage_error(path, e))?;
        // fjall makes a new keyspace's folder without fsyncing the folder that lists it: a power
        // cut could then keep the journal but drop the keyspaces it writes to, and with them
        // every acknowledged entry. Every folder of the log is made durable before any entry is
        // written.
        sync_dirs_under(path)?;
        let watermark = Watermark::new(watermark);
        let syncer = Syncer::start(db.clone(), path.to_path_buf(), watermark.clone())?;
        let mut log = DiskLog {
            db,
            entries,
            meta,
            path: path.to_path_buf(),
            watermark,
            syncer,
            recent: Arc::default(),
            reclaiming: Arc::default(),
        };
        log.check_watermark()?;
        Ok(log)
    }

    fn last_index(&mut self) -> io::Result<u64> {
        let state = futures::executor::block_on(self.get_log_state())?;
        Ok(state.last_log_id.map_or(0, |id| id.index))
    }

    fn check_watermark(&mut self) -> io::Result<()> {
        let Some(durable) = self.watermark.read()? else {
            return Ok(());
        };
        let recovered = self.last_index()?;
        if recovered < durable {
            return Err(invalid_data(format_args!(
                "the raft log in {} is damaged: entries up to {durable} were stored durably but only \
                 {recovered} could be read back (a journal file under it is corrupt); refusing to \
                 start with a log that has lost acknowledged entries",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        lock::lock(&self.recent)
    }

    fn err(&self, e: fjall::Error) -> io::Error {
        storage_error(&self.path, e)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &'static [u8]) -> io::Result<Option<T>> {
        match self.meta.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => unseal(&bytes, &|| {
                format!(
                    "{} in {}",
                    String::from_utf8_lossy(key),
                    self.path.display()
                )
            })
            .map(Some),
        }
    }

    fn decode_entry(&self, index: u64, bytes: &[u8]) -> io::Result<EntryOf<TypeConfig>> {
        unseal(bytes, &|| {
            format!("log entry {index} in {}", self.path.display())
        })
    }

    /// Writes a batch to the journal's buffer and the memtable, in place: it only fills
    /// buffers, and handing it to a blocking thread would cost two thread switches per append.
    fn commit(&self, batch: fjall::OwnedWriteBatch) -> io::Result<()> {
        batch.commit().map_err(|e| self.err(e))
    }

    /// Writes a batch and waits until it, and everything written before, is durable: the
    /// sync thread's fsync, so every fsync of the journal happens in one place.
    async fn write_synced(&self, batch: fjall::OwnedWriteBatch) -> io::Result<()> {
        self.commit(batch)?;
        self.syncer.drain().await
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> io::Result<u64> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| invalid_data("raft log key is not 8 bytes"))
}

impl RaftLogReader<TypeConfig> for DiskLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(cached) = self.recent().get(start, end) {
            return Ok(cached);
        }
        let end = match end {
            Some(end) => Bound::Excluded(key(end)),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for guard in self
            .entries
            .range::<[u8; 8], _>((Bound::Included(key(start)), end))
        {
            let (k, v) = guard.into_inner().map_err(|e| self.err(e))?;
            out.push(self.decode_entry(index_of(&k)?, &v)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.read_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for DiskLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogIdOf<TypeConfig>> = self.read_meta(LAST_PURGED)?;
        let last = match self.entries.last_key_value() {
            Some(guard) => {
                let (k, v) = guard.into_inner().map_err(|e| self.err(e))?;
                Some(self.decode_entry(index_of(&k)?, &v)?.log_id())
            }
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let mut batch = self.db.batch();
        batch.insert(&self.meta, VOTE, seal(vote));
        self.write_synced(batch).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        // Not fsynced: after a crash openraft re-learns the commit index from the leader.
        let mut batch = self.db.batch();
        batch.insert(&self.meta, COMMITTED, seal(&committed));
        self.commit(batch)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self
            .read_meta::<Option<LogIdOf<TypeConfig>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        failpoint!("log-append");
        let entries: Vec<_> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.index()) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let mut batch = self.db.batch();
        for entry in &entries {
            batch.insert(&self.entries, key(entry.index()), seal(entry));
        }
        // Written (readable by replication) now; durable when the syncer says so.
        self.commit(batch)?;
        self.recent().extend(&entries);
        self.syncer.append(last, callback).await
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        // Appends still syncing would raise the watermark behind our back: let them finish.
        self.syncer.drain().await?;
        self.recent().retain(|index| index < from);
        // Lower the watermark durably first: entries above the truncation point are about to
        // be legitimately gone (see `Watermark`).
        self.watermark.lower(from.saturating_sub(1))?;
        let mut batch = self.db.batch();
        for guard in self.entries.range::<[u8; 8], _>(key(from)..) {
            batch.remove(&self.entries, guard.key().map_err(|e| self.err(e))?);
        }
        #[cfg(test)]
        self.watermark.steps.record(Step::Removed(from));
        self.write_synced(batch).await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        self.recent().retain(|index| index > log_id.index());
        let mut batch = self.db.batch();
        batch.insert(&self.meta, LAST_PURGED, seal(&log_id));
        for guard in self.entries.range::<[u8; 8], _>(..=key(log_id.index())) {
            batch.remove(&self.entries, guard.key().map_err(|e| self.err(e))?);
        }
        self.commit(batch)?;
        self.reclaim(log_id.index());
        Ok(())
    }
}

impl DiskLog {
    /// Gives back the disk of everything up to `index`, which was just purged, on a thread of
    /// its own so that Raft does not wait for it.
    ///
    /// Tombstones alone free no disk: the tables under them wait for a compaction that a log
    /// written in key order rarely needs. Entries are keyed by index, so every table that holds
    /// only purged entries is dropped whole (RocksDB's DeleteFilesInRange) once the memtable is
    /// flushed; a major compaction then rewrites what is left, which right after a snapshot is
    /// only the short tail kept behind it and the entries since. A journal is released only once every keyspace has flushed what it holds: `meta`
    /// takes a few small writes and would otherwise keep every journal alive until the budget
    /// forces it out, so it is flushed too.
    /// One reclaim runs at a time; a purge that finds one running leaves its range to the next.
    fn reclaim(&self, index: u64) {
        if self.reclaiming.swap(true, Ordering::AcqRel) {
            return;
        }
        let busy = self.reclaiming.clone();
        let (entries, meta, path) = (self.entries.clone(), self.meta.clone(), self.path.clone());
        std::thread::spawn(move || {
            let reclaimed = entries
                .rotate_memtable_and_wait()
                .and_then(|()| Ok(entries.tree.drop_range::<[u8; 8], _>(..=key(index))?))
                .and_then(|()| entries.major_compact())
                .and_then(|()| meta.rotate_memtable().map(drop));
            if let Err(e) = reclaimed {
                tracing::warn!(error = %storage_error(&path, e), "cannot free the disk behind a purge");
            }
            busy.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::log::StoreBuilder;
    use openraft::testing::log::Suite;

    use super::*;
    use crate::store::state_machine::StateMachine;

    struct DiskStores;

    impl StoreBuilder<TypeConfig, DiskLog, StateMachine, tempfile::TempDir> for DiskStores {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, DiskLog, StateMachine), StorageError<TypeConfig>> {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = DiskLog::open(
                &dir.path().join("raft"),
                &dir.path().join("watermark"),
                64 << 20,
            )
            .expect("open log");
            Ok((dir, log, StateMachine::default()))
        }
    }

    /// openraft's own storage conformance suite, run over the durable log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_disk_log_passes_openrafts_storage_suite() {
        Suite::test_all(DiskStores).await.expect("storage suite");
    }

    fn blank(index: u64) -> EntryOf<TypeConfig> {
        use openraft::vote::RaftLeaderId;
        use openraft::vote::leader_id_adv::LeaderId;
        EntryOf::<TypeConfig>::new_blank(LogIdOf::<TypeConfig>::new(
            LeaderId::new(1, 1).to_committed(),
            index,
        ))
    }

    /// An entry carrying one put of `value_bytes`.
    fn put(index: u64, value_bytes: usize) -> EntryOf<TypeConfig> {
        use crate::store::command::Batch;
        use crate::store::command::COMMAND_FORMAT;
        use crate::store::command::Command;
        use crate::store::command::Op;
        use crate::store::command::PutExpiry;
        let cmd = Command {
            format: COMMAND_FORMAT,
            stamp_ms: 0,
            write_id: None,
            session: Default::default(),
            max_value_bytes: 0,
            batch: Batch {
                ops: vec![Op::Put {
                    key: bytes::Bytes::from(format!("k{}", index % 16)),
                    value: bytes::Bytes::from(
                        (0..value_bytes)
                            .map(|_| rand::random::<u8>())
                            .collect::<Vec<_>>(),
                    ),
                    expiry: PutExpiry::Clear,
                }],
                ..Batch::default()
            },
        };
        EntryOf::<TypeConfig>::new_normal(blank(index).log_id(), cmd)
    }

    /// A purge behind a snapshot gives back the disk the purged entries' tables took, not only
    /// their place in the log: with tombstones alone, 48 MiB of purged entries stayed on disk
    /// until a compaction that never came. (Journals are released by their own budget.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purging_frees_the_disk_the_purged_entries_took() {
        const ENTRY_BYTES: usize = 64 * 1024;
        const ENTRIES: u64 = 768;
        let dir = tempfile::tempdir().expect("tempdir");
        let raft_dir = dir.path().join("raft");
        let mut log =
            DiskLog::open(&raft_dir, &dir.path().join("watermark"), 64 << 20).expect("open log");
        for first in (1..=ENTRIES).step_by(64) {
            let batch: Vec<_> = (first..first + 64).map(|i| put(i, ENTRY_BYTES)).collect();
            log.append(batch, IOFlushed::noop()).await.expect("append");
        }
        log.entries.rotate_memtable_and_wait().expect("flush");
        let tables = raft_dir.join("keyspaces");
        let used = || {
            crate::store::data_dir::disk_usage(&tables)
                .expect("usage")
                .used_bytes
        };
        let before = used();
        assert!(
            before >= ENTRIES * ENTRY_BYTES as u64 / 2,
            "{before} bytes in tables"
        );

        // Two purges, as two snapshots would make: the first may find a table busy in a
        // compaction; the second's range covers it again.
        log.purge(put(ENTRIES / 2, 0).log_id())
            .await
            .expect("purge");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while log.reclaiming.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "the reclaim never ended"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        log.purge(put(ENTRIES, 0).log_id()).await.expect("purge");
        while used() > before / 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {before} bytes still in tables 30 s after purging every entry",
                used()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn indexes(got: Option<Vec<EntryOf<TypeConfig>>>) -> Option<Vec<u64>> {
        got.map(|entries| entries.iter().map(|e| e.index()).collect())
    }

    /// A truncation removes entries only after the lowered watermark is on disk: a power loss
    /// in between must not leave a watermark above the log's durable end, or the node would
    /// refuse to start over entries that were truncated on purpose.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncation_makes_the_lowered_watermark_durable_before_removing_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = DiskLog::open(
            &dir.path().join("raft"),
            &dir.path().join("watermark"),
            64 << 20,
        )
        .expect("open log");
        use openraft::type_config::TypeConfigExt;
        let (done, flushed) = TypeConfig::oneshot();
        let callback = IOFlushed::<TypeConfig>::signal(done);
        log.append((1..=10).map(blank), callback)
            .await
            .expect("append");
        flushed.await.expect("flushed").expect("durable");
        log.watermark.steps.take();

        log.truncate_after(Some(blank(5).log_id()))
            .await
            .expect("truncate");
        assert_eq!(
            log.watermark.steps.take(),
            [Step::Watermark(5), Step::WatermarkSynced, Step::Removed(6)]
        );
        assert_eq!(log.watermark.read().expect("read"), Some(5));
    }

    #[test]
    fn recent_entries_answer_only_ranges_they_hold_whole() {
        let mut recent = RecentEntries::default();
        recent.extend(&(5..10).map(blank).collect::<Vec<_>>());
        assert_eq!(indexes(recent.get(5, None)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(recent.get(7, Some(9))), Some(vec![7, 8]));
        assert_eq!(indexes(recent.get(10, None)), Some(vec![]));
        assert_eq!(
            indexes(recent.get(4, Some(6))),
            None,
            "starts before the cache"
        );
        assert_eq!(indexes(recent.get(8, Some(11))), None, "ends after the log");
        assert_eq!(indexes(recent.get(12, None)), None);

        recent.extend(&[blank(20)]);
        assert_eq!(
            indexes(recent.get(20, None)),
            Some(vec![20]),
            "a gap starts afresh"
        );
        assert_eq!(indexes(recent.get(9, None)), None);

        recent.extend(&(21..25).map(blank).collect::<Vec<_>>());
        recent.retain(|index| index < 23);
        assert_eq!(
            indexes(recent.get(20, None)),
            Some(vec![20, 21, 22]),
            "truncated"
        );
        recent.retain(|index| index > 20);
        assert_eq!(indexes(recent.get(21, None)), Some(vec![21, 22]), "purged");
        assert_eq!(indexes(recent.get(20, None)), None);

        let many = 2 * RECENT_ENTRY_BYTES as u64 / 32;
        recent.extend(&(23..23 + many).map(blank).collect::<Vec<_>>());
        assert!(recent.bytes <= RECENT_ENTRY_BYTES);
        assert_eq!(
            indexes(recent.get(23, None)),
            None,
            "the oldest were evicted"
        );
        assert_eq!(indexes(recent.get(22 + many, None)), Some(vec![22 + many]));
    }
}
