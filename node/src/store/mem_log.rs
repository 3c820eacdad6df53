//! The Raft log, held in memory (`--in-memory`): entries, the vote and the committed log ID.
//!
//! Volatile on purpose: a restarted in-memory node comes back with a new node ID, so losing its
//! vote can never let one seat vote twice. The durable log replaces this behind the same traits.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::LogState;
use openraft::RaftLogReader;
use openraft::alias::EntryOf;
use openraft::alias::LogIdOf;
use openraft::alias::VoteOf;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;

use crate::lock;
use crate::store::entry::TypeConfig;

/// An in-memory Raft log; clones share it (the reader is a clone).
#[derive(Debug, Clone, Default)]
pub(crate) struct MemLog {
    inner: Arc<Mutex<LogInner>>,
}

#[derive(Debug, Default)]
struct LogInner {
    last_purged: Option<LogIdOf<TypeConfig>>,
    entries: BTreeMap<u64, EntryOf<TypeConfig>>,
    committed: Option<LogIdOf<TypeConfig>>,
    vote: Option<VoteOf<TypeConfig>>,
}

impl MemLog {
    fn with<T>(&self, f: impl FnOnce(&mut LogInner) -> T) -> T {
        f(&mut lock::lock(&self.inner))
    }
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        Ok(self.with(|log| log.entries.range(range).map(|(_, e)| e.clone()).collect()))
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.with(|log| log.vote))
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(self.with(|log| {
            let last = log.entries.values().next_back().map(|e| e.log_id());
            LogState {
                last_purged_log_id: log.last_purged,
                last_log_id: last.or(log.last_purged),
            }
        }))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.with(|log| log.vote = Some(*vote));
        Ok(())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        self.with(|log| log.committed = committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.with(|log| log.committed))
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
        self.with(|log| {
            for entry in entries {
                log.entries.insert(entry.index(), entry);
            }
        });
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.with(|log| drop(log.entries.split_off(&from)));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        self.with(|log| {
            log.entries = log.entries.split_off(&(log_id.index() + 1));
            log.last_purged = Some(log_id);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::log::StoreBuilder;
    use openraft::testing::log::Suite;

    use super::*;
    use crate::store::state_machine::StateMachine;

    struct MemStores;

    impl StoreBuilder<TypeConfig, MemLog, StateMachine> for MemStores {
        async fn build(&self) -> Result<((), MemLog, StateMachine), StorageError<TypeConfig>> {
            Ok(((), MemLog::default(), StateMachine::default()))
        }
    }

    /// openraft's own storage conformance suite, run over the log and the state machine.
    #[tokio::test]
    async fn the_stores_pass_openrafts_storage_suite() {
        Suite::test_all(MemStores).await.expect("storage suite");
    }
}
