//! Raft snapshot data as the state machine and the peer network hand it to each other: the
//! encoded state, in memory on an in-memory node and as a snapshot file on a durable one.
//!
//! A durable node never holds a whole encoded snapshot in memory: it builds one by encoding
//! straight into a file, sends one by reading the file a chunk at a time as the peer stream takes
//! them, receives one by writing chunks to a temporary file, and installs one by decoding from the
//! file through a buffered reader. A received snapshot is checked as it streams (see
//! [`EncodingCheck`]) before openraft sees it, so a damaged transfer is refused and the current
//! state and snapshot stay as they were.

use std::io;
use std::io::SeekFrom;

use bytes::Bytes;
use bytes::BytesMut;
use futures::StreamExt;
use futures::TryStreamExt;
use futures::stream;
use futures::stream::BoxStream;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncSeekExt;
use tokio::io::AsyncWriteExt;

use crate::store::data::EncodingCheck;
use crate::store::snapshot_file::SnapshotFile;

/// Largest snapshot an in-memory node accepts from a peer: it holds the whole encoding until
/// it is installed. A durable node writes it to disk and has no such limit.
const MAX_IN_MEMORY_SNAPSHOT_BYTES: usize = 8 * 1024 * 1024 * 1024;

/// The encoded state of one snapshot.
#[derive(Debug)]
pub(crate) enum SnapshotData {
    /// An in-memory node's snapshot.
    Memory(Bytes),
    /// A durable node's snapshot file.
    File(SnapshotFile),
}

impl SnapshotData {
    /// The encoded state in chunks of at most `chunk_bytes`, each read only when the stream is
    /// polled for it, so a sender holds one chunk at a time.
    pub(crate) fn into_chunks(self, chunk_bytes: usize) -> BoxStream<'static, io::Result<Bytes>> {
        match self {
            SnapshotData::Memory(data) => stream::iter(
                (0..data.len())
                    .step_by(chunk_bytes)
                    .map(move |at| Ok(data.slice(at..(at + chunk_bytes).min(data.len())))),
            )
            .boxed(),
            SnapshotData::File(file) => {
                let open = async move {
                    let mut handle = tokio::fs::File::from_std(file.handle()?);
                    handle.seek(SeekFrom::Start(file.state_offset())).await?;
                    Ok::<_, io::Error>(handle)
                };
                stream::once(open)
                    .map_ok(move |handle| {
                        stream::try_unfold(handle, move |mut handle| async move {
                            let mut chunk = BytesMut::with_capacity(chunk_bytes);
                            while chunk.len() < chunk_bytes {
                                if handle.read_buf(&mut chunk).await? == 0 {
                                    break;
                                }
                            }
                            Ok((!chunk.is_empty()).then(|| (chunk.freeze(), handle)))
                        })
                    })
                    .try_flatten()
                    .boxed()
            }
        }
    }
}

/// Collects a snapshot arriving from the leader until it is complete and checked.
pub(crate) struct SnapshotReceiver {
    sink: Sink,
    check: EncodingCheck,
}

enum Sink {
    Memory(BytesMut),
    File {
        /// Removed if the receiver is dropped before [`SnapshotReceiver::finish`].
        file: SnapshotFile,
        writer: tokio::fs::File,
    },
}

impl SnapshotReceiver {
    pub(crate) fn in_memory() -> Self {
        Self {
            sink: Sink::Memory(BytesMut::new()),
            check: EncodingCheck::default(),
        }
    }

    /// Receives into `file`, a snapshot file just created (header written, no state bytes yet).
    pub(crate) fn into_file(file: SnapshotFile) -> io::Result<Self> {
        let writer = tokio::fs::File::from_std(file.handle()?);
        Ok(Self {
            sink: Sink::File { file, writer },
            check: EncodingCheck::default(),
        })
    }

    /// Takes the next chunk of the encoded state.
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.check.update(chunk);
        match &mut self.sink {
            Sink::Memory(data) if data.len() + chunk.len() <= MAX_IN_MEMORY_SNAPSHOT_BYTES => {
                data.extend_from_slice(chunk);
                Ok(())
            }
            Sink::Memory(_) => Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!(
                    "a snapshot over {MAX_IN_MEMORY_SNAPSHOT_BYTES} bytes is too large for an in-memory node"
                ),
            )),
            Sink::File { writer, .. } => writer.write_all(chunk).await,
        }
    }

    /// Ends the transfer: the snapshot if it arrived whole (fsynced, on a durable node), or an
    /// [`io::ErrorKind::InvalidData`] error saying what is wrong with it.
    pub(crate) async fn finish(self) -> io::Result<SnapshotData> {
        self.check.finish()?;
        match self.sink {
            Sink::Memory(data) => Ok(SnapshotData::Memory(data.freeze())),
            Sink::File { file, mut writer } => {
                writer.flush().await?;
                writer.sync_all().await?;
                Ok(SnapshotData::File(file))
            }
        }
    }
}
