//! Backups: the leader streams a consistent copy of every live key in the backup file format of
//! `kvs_client::backup`, for `kvsctl snapshot save`.
//!
//! The copy is the state machine's copy-on-write clone taken after a linearizable read barrier,
//! so it holds every write acknowledged before the request, and writes go on undisturbed while
//! it streams. It is encoded on a blocking thread into a small bounded channel of chunks: a slow
//! reader holds the encoder back instead of making the node buffer the backup.

use std::io;
use std::io::Write;

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
            let mut out = ChunkSender {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK_BYTES),
            };
            let written = (|| {
                let mut writer = BackupWriter::new(&mut out, &header)?;
                for entry in data.live_entries(now) {
                    writer.entry(entry.key(), entry.value(), entry.expires_at_ms())?;
                }
                writer.finish()?.flush()
            })();
            if let Err(err) = written {
                // A reader that went away is the only likely cause and needs no answer.
                let _ = tx.blocking_send(Err(Error::io("backup failed", err)));
            }
        });
        Ok(Backup {
            expected_bytes,
            chunks,
        })
    }
}

/// Cuts what is written into chunks and sends them, waiting while the channel is full.
struct ChunkSender {
    tx: mpsc::Sender<Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(chunk.into()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader went away"))
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
