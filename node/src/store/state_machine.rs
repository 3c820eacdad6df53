//! The state machine openraft drives: applies committed commands to [`StateData`] and builds and
//! installs snapshots of it.
//!
//! Reads are served straight from the shared state (behind a short-held lock, never across an
//! await). A snapshot is a copy-on-write clone of the keyspace taken under that lock in O(shards)
//! and encoded afterwards on the builder's own task, so building a snapshot never stalls writes.

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
use crate::raft::TypeConfig;
use crate::store::command::COMMAND_FORMAT;
use crate::store::data::StateData;
use crate::store::snapshot_file::SnapshotFiles;

/// What the state machine holds besides the data: where it is in the log.
#[derive(Default)]
struct Applied {
    data: StateData,
    last_applied: Option<LogIdOf<TypeConfig>>,
    last_membership: StoredMembershipOf<TypeConfig>,
    /// The newest snapshot of an in-memory node. A durable node keeps it only in its file and
    /// reads it when a follower needs it, so the encoded copy does not double the node's memory.
    snapshot: Option<SnapshotOf<TypeConfig, Bytes>>,
}

/// A handle on the state machine; clones share it. Reads go through [`StateMachine::read`].
#[derive(Clone, Default)]
pub(crate) struct StateMachine {
    inner: Arc<RwLock<Applied>>,
    /// Where snapshots are kept on a durable node; `None` in memory.
    files: Option<SnapshotFiles>,
}

impl StateMachine {
    /// A state machine that keeps its snapshots in `files`, starting from the newest one there.
    pub(crate) fn open(files: SnapshotFiles) -> io::Result<Self> {
        let mut applied = Applied::default();
        if let Some((meta, bytes)) = files.load_latest()? {
            applied.data = StateData::decode(&mut bytes.as_ref()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("snapshot in {}: {e}", files.dir().display()),
                )
            })?;
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership.clone();
            tracing::info!(last_log_id = ?meta.last_log_id, keys = applied.data.len(), "loaded snapshot");
        }
        Ok(Self {
            inner: Arc::new(RwLock::new(applied)),
            files: Some(files),
        })
    }

    /// Keeps `snapshot` as the current one before anything relies on it (a log purge, a
    /// restart): durably in a file on a durable node, in memory otherwise.
    async fn keep(&self, snapshot: SnapshotOf<TypeConfig, Bytes>) -> io::Result<()> {
        let Some(files) = self.files.clone() else {
            self.inner
                .write()
                .expect("state machine lock poisoned")
                .snapshot = Some(snapshot);
            return Ok(());
        };
        tokio::task::spawn_blocking(move || files.save(&snapshot.meta, &snapshot.snapshot))
            .await
            .map_err(io::Error::other)?
    }

    /// Runs `f` on the current state with the index of the last applied entry.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&StateData, u64) -> T) -> T {
        let applied = self.inner.read().expect("state machine lock poisoned");
        f(
            &applied.data,
            applied.last_applied.map_or(0, |id| id.index()),
        )
    }

    /// A copy of the state, independent of later writes, and the log id of the last entry it
    /// includes. O(shards): see [`StateData`].
    pub(crate) fn copy(&self) -> (StateData, Option<LogIdOf<TypeConfig>>) {
        let applied = self.inner.read().expect("state machine lock poisoned");
        (applied.data.clone(), applied.last_applied)
    }

    /// Cluster time as the last applied entry stamped it.
    pub(crate) fn last_stamp_ms(&self) -> u64 {
        self.read(|data, _| data.last_stamp_ms())
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Bytes;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Bytes>, io::Error> {
        let (data, meta) = {
            let applied = self.inner.read().expect("state machine lock poisoned");
            let meta = SnapshotMetaOf::<TypeConfig> {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
            };
            (applied.data.clone(), meta)
        };
        let encoded = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            data.encode(&mut buf).map(|()| Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)??;
        let snapshot = SnapshotOf::<TypeConfig, Bytes> {
            meta,
            snapshot: encoded,
        };
        failpoint!("snapshot-build");
        self.keep(snapshot.clone()).await?;
        tracing::info!(last_log_id = ?snapshot.meta.last_log_id, bytes = snapshot.snapshot.len(), "built snapshot");
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Bytes;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let applied = self.inner.read().expect("state machine lock poisoned");
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            failpoint!("apply");
            let log_id = entry.log_id();
            let outcome = {
                let mut applied = self.inner.write().expect("state machine lock poisoned");
                applied.last_applied = Some(log_id);
                match &entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(cmd) => {
                        if cmd.format != COMMAND_FORMAT {
                            return Err(invalid(format!(
                                "log entry {log_id} has command format {} but this binary knows only {COMMAND_FORMAT}; \
                                 upgrade this node",
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
                }
            };
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
        snapshot: Bytes,
    ) -> Result<(), io::Error> {
        let data = tokio::task::spawn_blocking({
            let snapshot = snapshot.clone();
            move || StateData::decode(&mut snapshot.as_ref())
        })
        .await
        .map_err(io::Error::other)??;
        failpoint!("snapshot-install");
        self.keep(SnapshotOf::<TypeConfig, Bytes> {
            meta: meta.clone(),
            snapshot,
        })
        .await?;
        let mut applied = self.inner.write().expect("state machine lock poisoned");
        applied.data = data;
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Bytes>>, io::Error> {
        let Some(files) = self.files.clone() else {
            return Ok(self
                .inner
                .read()
                .expect("state machine lock poisoned")
                .snapshot
                .clone());
        };
        let latest = tokio::task::spawn_blocking(move || files.load_latest())
            .await
            .map_err(io::Error::other)??;
        Ok(latest.map(|(meta, snapshot)| SnapshotOf::<TypeConfig, Bytes> { meta, snapshot }))
    }
}
