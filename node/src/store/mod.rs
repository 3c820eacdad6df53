//! State and storage of a node: the log entry and replicated command formats, the keyspace and
//! its state machine, snapshots, the Raft log (durable or in memory) and the data directory.
//!
//! The floor below Raft's wiring: nothing here names `raft`, the replica or a face, so the
//! storage can be read, tested and fuzzed without a network (docs/architecture.md).

pub(crate) mod command;
pub(crate) mod compaction;
pub(crate) mod data;
pub(crate) mod data_dir;
pub(crate) mod disk_log;
pub(crate) mod entry;
#[cfg(test)]
mod fixtures;
pub(crate) mod integer;
pub(crate) mod keyspace;
pub(crate) mod mem_log;
pub(crate) mod record;
pub(crate) mod sessions;
pub(crate) mod snapshot;
pub(crate) mod snapshot_file;
pub(crate) mod state_machine;
