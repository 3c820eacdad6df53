//! Backups: the leader streams a consistent copy of every live key in the backup file format of
//! `kvs_client::backup`, for `kvsctl snapshot save`.
//!
//! The copy is the state machine's copy-on-write clone taken after a linearizable read barrier,
//! so it holds every write acknowledged before the request, and writes go on undisturbed while
//! it streams. It is encoded on a blocking thread into a small bounded channel of chunks: a slow
//! reader holds the encoder back instead of making the node buffer the backup.
//!
//! Each backup pins a copy of the state and a blocking thread while it streams, so at most
//! `--max-backups` stream at once (more are refused, RESOURCE_EXHAUSTED), and a stream whose
//! reader takes nothing for `--backup-idle-timeout-ms` is dropped: without both, a few hundred
//! unread streams exhaust the blocking pool that snapshots need.

use std::io;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use kvs_client::backup::BackupHeader;
use kvs_client::backup::BackupWriter;
use kvs_client::backup::PER_KEY_BYTES;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::error::Result;
use crate::replica::Leadership;
use crate::replica::Replica;

/// Size of the chunks the backup is sent in: far below any message limit.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks encoded ahead of the reader.
const CHUNKS_AHEAD: usize = 4;

/// A backup being streamed.
pub(crate) struct Backup {
    /// About how many bytes the backup will have (exact unless keys expire meanwhile).
    pub(crate) expected_bytes: u64,
    /// The chunks; an error ends the stream.
    pub(crate) chunks: mpsc::Receiver<Result<Bytes>>,
}

impl Replica {
    /// Starts streaming a backup of the state as of now. Only the leader serves it.
    pub(crate) async fn backup(&self) -> Result<Backup> {
        if !matches!(self.leadership(), Leadership::Here) {
            return Err(self.not_leader());
        }
        let slot = self
            .backups
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TooManyBackups(self.config.max_backups))?;
        let idle = Duration::from_millis(self.config.backup_idle_timeout_ms);
        let runtime = tokio::runtime::Handle::current();
        let now = self.read(false, |_, _, now| now).await?;
        let (data, last_applied) = self.state.copy();
        let header = BackupHeader {
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            last_index: last_applied.map_or(0, |id| id.index),
            last_term: last_applied.map_or(0, |id| id.leader_id.term),
            taken_at_ms: now,
        };
        let expected_bytes = 64
            + header.cluster_id.len() as u64
            + data.bytes_used() as u64
            + data.len() as u64 * PER_KEY_BYTES;
        let (tx, chunks) = mpsc::channel(CHUNKS_AHEAD);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let mut out = ChunkSender {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK_BYTES),
                idle,
                runtime,
            };
            let written = (|| {
                let mut writer = BackupWriter::new(&mut out, &header)?;
                for entry in data.live_entries(now) {
                    writer.entry(entry.key(), entry.value(), entry.expires_at_ms())?;
                }
                writer.finish()?.flush()
            })();
            match written {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                    tracing::warn!(error = %err, "dropped a backup stream");
                }
                // A reader that went away is the only likely cause and needs no answer.
                Err(err) => {
                    let _ = out.send_within(Err(Error::io("backup failed", err)));
                }
            }
        });
        Ok(Backup {
            expected_bytes,
            chunks,
        })
    }
}

/// Cuts what is written into chunks and sends them, waiting while the channel is full — for
/// at most `idle`: a reader that takes nothing that long is given up.
struct ChunkSender {
    tx: mpsc::Sender<Result<Bytes>>,
    buf: Vec<u8>,
    idle: Duration,
    /// The runtime whose timer bounds the wait (this runs on one of its blocking threads).
    runtime: tokio::runtime::Handle,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.send_within(Ok(chunk.into()))
    }

    fn send_within(&self, item: Result<Bytes>) -> io::Result<()> {
        let sent = self
            .runtime
            .block_on(tokio::time::timeout(self.idle, self.tx.send(item)));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the reader went away",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the reader took nothing for {} ms", self.idle.as_millis()),
            )),
        }
    }
}

impl Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup whose reader stops taking chunks is given up after the idle timeout, so its
    /// thread and state copy are released.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sender_whose_reader_takes_nothing_gives_up_after_the_idle_timeout() {
        let (tx, _unread) = mpsc::channel(1);
        let runtime = tokio::runtime::Handle::current();
        let sending = tokio::task::spawn_blocking(move || {
            let mut out = ChunkSender {
                tx,
                buf: Vec::new(),
                idle: Duration::from_millis(200),
                runtime,
            };
            (0..3)
                .try_for_each(|_| out.write_all(&vec![0; CHUNK_BYTES]))
                .map_err(|e| e.kind())
        });
        let given_up = tokio::time::timeout(Duration::from_secs(30), sending)
            .await
            .expect("the sender gives up")
            .expect("no panic");
        assert_eq!(given_up, Err(io::ErrorKind::TimedOut));
    }
}
