//! State and storage of a node, knowing nothing of gRPC or RESP: the replicated command format,
//! the keyspace and its state machine, and the Raft log.

pub(crate) mod command;
pub(crate) mod data;
pub(crate) mod data_dir;
pub(crate) mod disk_log;
pub(crate) mod entry;
#[cfg(test)]
mod fixtures;
pub(crate) mod integer;
pub(crate) mod keyspace;
pub(crate) mod log;
pub(crate) mod record;
pub(crate) mod sessions;
pub(crate) mod snapshot;
pub(crate) mod snapshot_file;
pub(crate) mod state_machine;
