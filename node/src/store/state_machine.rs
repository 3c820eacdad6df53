//! The state machine openraft drives: applies committed commands to [`StateData`] and builds and
//! installs snapshots of it.
//!
//! Reads are served straight from the shared state (behind a short-held lock, never across an
//! await). A snapshot is a copy-on-write clone of the keyspace taken under that lock in O(shards)
//! and encoded afterwards on the builder's own task, so building a snapshot never stalls writes.
//! A durable node's snapshots are files from end to end (see [`SnapshotData`]).

use std::io;
use std::sync::Arc;
use std::sync::RwLock;

use bytes::Bytes;
use futures::Stream;
use futures::TryStreamExt;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use openraft::alias::LogIdOf;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::SnapshotOf;
use openraft::alias::StoredMembershipOf;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;

use crate::failpoint::failpoint;
use crate::lock;
use crate::store::command::COMMAND_FORMAT;
use crate::store::command::OLDEST_COMMAND_FORMAT;
use crate::store::compaction::Compaction;
use crate::store::compaction::LogSince;
use crate::store::compaction::SnapshotRule;
use crate::store::data::StateData;
use crate::store::entry::TypeConfig;
use crate::store::entry::entry_bytes;
use crate::store::record::invalid_data;
use crate::store::snapshot::SnapshotData;
use crate::store::snapshot::SnapshotReceiver;
use crate::store::snapshot_file::SnapshotFiles;

/// What the state machine holds besides the data: where it is in the log.
#[derive(Default)]
struct Applied {
    data: StateData,
    last_applied: Option<LogIdOf<TypeConfig>>,
    last_membership: StoredMembershipOf<TypeConfig>,
    /// The log applied since the state was last snapshotted (or installed, or loaded).
    since_snapshot: LogSince,
    /// The newest snapshot of an in-memory node. A durable node keeps it only in its file and
    /// reads it when a follower needs it, so the encoded copy does not double the node's memory.
    snapshot: Option<(SnapshotMetaOf<TypeConfig>, Bytes)>,
}

/// A handle on the state machine; clones share it. Reads go through [`StateMachine::read`].
#[derive(Clone, Default)]
pub(crate) struct StateMachine {
    inner: Arc<RwLock<Applied>>,
    /// Where snapshots are kept on a durable node; `None` in memory.
    files: Option<SnapshotFiles>,
    /// Says when the log has grown enough to be folded into a snapshot.
    compaction: Arc<Compaction>,
}

impl StateMachine {
    /// An empty state machine that keeps its snapshots in memory.
    pub(crate) fn in_memory(rule: SnapshotRule) -> Self {
        Self {
            compaction: Arc::new(Compaction::new(rule)),
            ..Self::default()
        }
    }

    /// A state machine that keeps its snapshots in `files`, starting from the newest one there.
    pub(crate) fn open(files: SnapshotFiles, rule: SnapshotRule) -> io::Result<Self> {
        let mut applied = Applied::default();
        if let Some((meta, file)) = files.latest()? {
            applied.data = StateData::decode(&mut file.state_reader()?).map_err(|e| {
                io::Error::new(e.kind(), format!("snapshot {}: {e}", file.path().display()))
            })?;
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership.clone();
            tracing::info!(last_log_id = ?meta.last_log_id, keys = applied.data.len(), "loaded snapshot");
        }
        Ok(Self {
            inner: Arc::new(RwLock::new(applied)),
            files: Some(files),
            compaction: Arc::new(Compaction::new(rule)),
        })
    }

    /// Keeps `snapshot` as the current one before anything relies on it (a log purge, a
    /// restart): durably in its file on a durable node, in memory otherwise.
    async fn keep(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> io::Result<SnapshotData> {
        match (self.files.clone(), snapshot) {
            (None, SnapshotData::Memory(bytes)) => {
                lock::write(&self.inner).snapshot = Some((meta.clone(), bytes.clone()));
                Ok(SnapshotData::Memory(bytes))
            }
            (Some(files), SnapshotData::File(file)) => {
                let meta = meta.clone();
                let kept = tokio::task::spawn_blocking(move || files.keep(&meta, file))
                    .await
                    .map_err(io::Error::other)??;
                Ok(SnapshotData::File(kept))
            }
            (_, _) => Err(io::Error::other(
                "snapshot storage mismatch: a durable node keeps snapshots in files, an in-memory \
                 node in memory",
            )),
        }
    }

    /// Where a snapshot streamed from the leader is collected: a temporary file in the snapshot
    /// directory on a durable node, memory otherwise.
    pub(crate) fn receive_snapshot(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
    ) -> io::Result<SnapshotReceiver> {
        match &self.files {
            Some(files) => SnapshotReceiver::into_file(files.create(meta)?),
            None => Ok(SnapshotReceiver::in_memory()),
        }
    }

    /// Runs `f` on the current state with the index of the last applied entry.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&StateData, u64) -> T) -> T {
        let applied = lock::read(&self.inner);
        f(
            &applied.data,
            applied.last_applied.map_or(0, |id| id.index()),
        )
    }

    /// A copy of the state, independent of later writes, and the log id of the last entry it
    /// includes. O(shards): see [`StateData`].
    pub(crate) fn copy(&self) -> (StateData, Option<LogIdOf<TypeConfig>>) {
        let applied = lock::read(&self.inner);
        (applied.data.clone(), applied.last_applied)
    }

    /// When a snapshot is due (see [`Compaction`]).
    pub(crate) fn compaction(&self) -> &Compaction {
        &self.compaction
    }

    /// Cluster time as the last applied entry stamped it.
    pub(crate) fn last_stamp_ms(&self) -> u64 {
        self.read(|data, _| data.last_stamp_ms())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let (data, meta, folded) = {
            let mut applied = lock::write(&self.inner);
            let folded = std::mem::take(&mut applied.since_snapshot);
            let meta = SnapshotMetaOf::<TypeConfig> {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
            };
            (applied.data.clone(), meta, folded)
        };
        let files = self.files.clone();
        let encode_meta = meta.clone();
        let encoded = tokio::task::spawn_blocking(move || match files {
            Some(files) => {
                let file = files.create(&encode_meta)?;
                data.encode(&mut file.writer()?)?;
                Ok(SnapshotData::File(file))
            }
            None => {
                let mut buf = Vec::new();
                data.encode(&mut buf)?;
                Ok::<_, io::Error>(SnapshotData::Memory(Bytes::from(buf)))
            }
        })
        .await
        .map_err(io::Error::other)??;
        failpoint!("snapshot-build");
        let snapshot = self.keep(&meta, encoded).await?;
        tracing::info!(last_log_id = ?meta.last_log_id, "built snapshot");
        if let Some(last) = meta.last_log_id {
            self.compaction.snapshot_built(last.index(), folded);
        }
        Ok(SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let applied = lock::read(&self.inner);
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            failpoint!("apply");
            let log_id = entry.log_id();
            let (outcome, since, state_bytes) = {
                let mut applied = lock::write(&self.inner);
                applied.last_applied = Some(log_id);
                applied.since_snapshot.add(entry_bytes(&entry.payload));
                let outcome = match &entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(cmd) => {
                        if !(OLDEST_COMMAND_FORMAT..=COMMAND_FORMAT).contains(&cmd.format) {
                            return Err(invalid_data(format_args!(
                                "log entry {log_id} has command format {} but this binary knows only \
                                 {OLDEST_COMMAND_FORMAT} to {COMMAND_FORMAT}; upgrade this node",
                                cmd.format
                            )));
                        }
                        Some(applied.data.apply(log_id.index(), cmd))
                    }
                    EntryPayload::Membership(m) => {
                        applied.last_membership =
                            StoredMembershipOf::<TypeConfig>::new(Some(log_id), m.clone());
                        None
                    }
                };
                let state_bytes = applied.data.bytes_used() as u64;
                (outcome, applied.since_snapshot, state_bytes)
            };
            self.compaction.check(since, state_bytes);
            if let Some(responder) = responder {
                responder.send(
                    outcome.unwrap_or(crate::store::command::Outcome::Applied(Default::default())),
                );
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let (data, snapshot) = tokio::task::spawn_blocking(move || {
            let data = match &snapshot {
                SnapshotData::Memory(bytes) => StateData::decode(&mut bytes.as_ref()),
                SnapshotData::File(file) => StateData::decode(&mut file.state_reader()?),
            }?;
            Ok::<_, io::Error>((data, snapshot))
        })
        .await
        .map_err(io::Error::other)??;
        failpoint!("snapshot-install");
        self.keep(meta, snapshot).await?;
        let mut applied = lock::write(&self.inner);
        applied.data = data;
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        applied.since_snapshot = LogSince::default();
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        let latest = match self.files.clone() {
            None => lock::read(&self.inner)
                .snapshot
                .clone()
                .map(|(meta, bytes)| (meta, SnapshotData::Memory(bytes))),
            Some(files) => tokio::task::spawn_blocking(move || files.latest())
                .await
                .map_err(io::Error::other)??
                .map(|(meta, file)| (meta, SnapshotData::File(file))),
        };
        Ok(
            latest
                .map(|(meta, snapshot)| SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot }),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use futures::StreamExt;
    use openraft::vote::RaftLeaderId;

    use super::*;
    use crate::store::command::Batch;
    use crate::store::command::Command;
    use crate::store::command::Op;
    use crate::store::command::PutExpiry;

    const NOW: u64 = 1_700_000_000_000;

    fn log_id(index: u64) -> LogIdOf<TypeConfig> {
        let leader = openraft::vote::leader_id_adv::LeaderId::<u64, u64>::new(2, 1);
        LogIdOf::<TypeConfig>::new(leader.to_committed(), index)
    }

    fn durable(dir: &Path) -> StateMachine {
        StateMachine::open(
            SnapshotFiles::new(dir.to_path_buf()).expect("snapshot dir"),
            SnapshotRule::default(),
        )
        .expect("open")
    }

    /// Writes `keys` keys named `{prefix}{i}` as if entries up to `index` had been applied.
    fn write(sm: &StateMachine, prefix: &str, keys: usize, index: u64) {
        let mut applied = lock::write(&sm.inner);
        let ops = (0..keys)
            .map(|i| Op::Put {
                key: Bytes::from(format!("{prefix}{i}")),
                value: Bytes::from(format!("value {i} of {prefix}").repeat(8)),
                expiry: PutExpiry::Clear,
            })
            .collect();
        let cmd = Command {
            format: COMMAND_FORMAT,
            stamp_ms: NOW,
            write_id: None,
            batch: Batch {
                ops,
                ..Batch::default()
            },
            max_value_bytes: 0,
            session: crate::store::command::SessionStamp::default(),
        };
        applied.data.apply(index, &cmd);
        applied.last_applied = Some(log_id(index));
    }

    fn value(sm: &StateMachine, key: &str) -> Option<Bytes> {
        sm.read(|data, _| data.get(key.as_bytes(), NOW).map(|(v, _)| v))
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The chunks a leader would send of its current snapshot, read from its file.
    async fn sent_chunks(leader: &mut StateMachine) -> (SnapshotMetaOf<TypeConfig>, Vec<Bytes>) {
        let snapshot = leader
            .get_current_snapshot()
            .await
            .expect("read snapshot")
            .expect("a snapshot exists");
        assert!(matches!(snapshot.snapshot, SnapshotData::File(_)));
        let chunks = snapshot
            .snapshot
            .into_chunks(4096)
            .map(|c| c.expect("readable"))
            .collect()
            .await;
        (snapshot.meta, chunks)
    }

    /// Streams `chunks` through the receiving path of `follower`: what openraft would be handed.
    async fn receive(
        follower: &StateMachine,
        meta: &SnapshotMetaOf<TypeConfig>,
        chunks: &[Bytes],
    ) -> io::Result<SnapshotData> {
        let mut receiver = follower.receive_snapshot(meta)?;
        for chunk in chunks {
            receiver.write(chunk).await?;
        }
        receiver.finish().await
    }

    /// A leader with 2,000 keys and a snapshot of them, and a follower with a state of its own.
    async fn leader_and_follower(
        leader_dir: &Path,
        follower_dir: &Path,
    ) -> (StateMachine, StateMachine) {
        let mut leader = durable(leader_dir);
        write(&leader, "key", 2000, 500);
        leader.build_snapshot().await.expect("leader snapshot");
        let mut follower = durable(follower_dir);
        write(&follower, "old", 10, 40);
        follower.build_snapshot().await.expect("follower snapshot");
        (leader, follower)
    }

    #[tokio::test]
    async fn a_snapshot_streamed_into_a_file_round_trips_and_survives_a_restart() {
        let (leader_dir, follower_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut leader, mut follower) =
            leader_and_follower(leader_dir.path(), follower_dir.path()).await;
        let (meta, chunks) = sent_chunks(&mut leader).await;
        assert!(chunks.len() > 10, "sent in {} chunks", chunks.len());

        let received = receive(&follower, &meta, &chunks).await.expect("received");
        follower
            .install_snapshot(&meta, received)
            .await
            .expect("installed");

        assert_eq!(value(&follower, "key1999"), value(&leader, "key1999"));
        assert_eq!(
            value(&follower, "old0"),
            None,
            "the snapshot replaces the old state"
        );
        assert_eq!(
            follower.read(|data, index| (data.len(), index)),
            (2000, 500)
        );
        assert_eq!(
            files_in(follower_dir.path()),
            [format!("snapshot-{:020}.snap", 500)],
            "the received file replaced the older snapshot and no temporary file is left"
        );
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(log_id(500)));

        drop(follower);
        let restarted = durable(follower_dir.path());
        assert_eq!(
            restarted.read(|data, index| (data.len(), index)),
            (2000, 500)
        );
        assert_eq!(value(&restarted, "key7"), value(&leader, "key7"));
    }

    #[tokio::test]
    async fn a_truncated_or_damaged_stream_is_refused_and_changes_nothing() {
        let (leader_dir, follower_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut leader, mut follower) =
            leader_and_follower(leader_dir.path(), follower_dir.path()).await;
        let (meta, chunks) = sent_chunks(&mut leader).await;
        let before = files_in(follower_dir.path());

        let truncated = &chunks[..chunks.len() - 1];
        let mut damaged = chunks.clone();
        let mut middle = damaged[chunks.len() / 2].to_vec();
        middle[100] ^= 0x04;
        damaged[chunks.len() / 2] = Bytes::from(middle);
        for (what, stream) in [("truncated", truncated), ("damaged", &damaged[..])] {
            // Refused before openraft could try to install it (a failed install stops the node).
            let err = receive(&follower, &meta, stream).await.expect_err(what);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
            assert_eq!(
                follower.read(|data, index| (data.len(), index)),
                (10, 40),
                "{what}"
            );
            assert!(value(&follower, "old3").is_some(), "{what}");
            assert_eq!(
                files_in(follower_dir.path()),
                before,
                "{what}: files untouched"
            );
            let current = follower.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(current.meta.last_log_id, Some(log_id(40)), "{what}");
        }
    }

    #[tokio::test]
    async fn an_interrupted_transfer_leaves_no_file_behind_and_a_crash_leftover_is_removed() {
        let (leader_dir, follower_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut leader, follower) =
            leader_and_follower(leader_dir.path(), follower_dir.path()).await;
        let (meta, chunks) = sent_chunks(&mut leader).await;
        let before = files_in(follower_dir.path());

        let mut receiver = follower.receive_snapshot(&meta).expect("receiver");
        receiver.write(&chunks[0]).await.expect("first chunk");
        assert_eq!(files_in(follower_dir.path()).len(), before.len() + 1);
        drop(receiver);
        assert_eq!(files_in(follower_dir.path()), before);

        std::fs::write(
            follower_dir.path().join("incoming-7.tmp"),
            b"half a snapshot",
        )
        .unwrap();
        drop(follower);
        let restarted = durable(follower_dir.path());
        assert_eq!(files_in(follower_dir.path()), before);
        assert_eq!(restarted.read(|data, _| data.len()), 10);
    }

    #[tokio::test]
    async fn an_in_memory_node_streams_and_installs_from_memory() {
        let leader_dir = tempfile::tempdir().unwrap();
        let mut leader = durable(leader_dir.path());
        write(&leader, "key", 300, 90);
        leader.build_snapshot().await.expect("leader snapshot");
        let (meta, chunks) = sent_chunks(&mut leader).await;

        let mut follower = StateMachine::default();
        let received = receive(&follower, &meta, &chunks).await.expect("received");
        follower
            .install_snapshot(&meta, received)
            .await
            .expect("installed");
        assert_eq!(follower.read(|data, index| (data.len(), index)), (300, 90));
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        let SnapshotData::Memory(bytes) = current.snapshot else {
            panic!("an in-memory node keeps its snapshot in memory");
        };
        assert_eq!(bytes.len(), chunks.iter().map(Bytes::len).sum::<usize>());
    }
}
