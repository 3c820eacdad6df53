//! `kvsctl snapshot save|status|restore`: backups as local files or as objects (`s3://`,
//! `file://`, through [`kvs_client::object`]).
//!
//! A backup is only ever trusted after its checksums were verified: `save` writes a file to
//! `FILE.part` and renames it only after reading it back (an object is checked as it streams and
//! its upload completed only then), `restore` reads the whole backup once before it writes a
//! single key.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use kvs_client::backup::{BackupEntry, BackupSummary, read_backup};
use kvs_client::object::{BackupLocation, StoreOptions};
use kvs_client::{Client, Error, proto};
use tokio::sync::mpsc;

use crate::Failure;

/// Keys per restore batch; nodes accept 128 by default.
const RESTORE_BATCH_KEYS: usize = 128;
/// Key and value bytes per restore batch (a single larger key goes alone).
const RESTORE_BATCH_BYTES: usize = 1024 * 1024;

/// Where a backup is: a local file, or an object named by a URL.
pub(crate) enum Backup {
    File(PathBuf),
    Object(BackupLocation),
}

impl Backup {
    /// `target` as given on the command line; object stores are configured by the standard
    /// AWS variables.
    pub(crate) fn new(target: &Path) -> Result<Self, Error> {
        match target.to_str() {
            Some(url) if BackupLocation::is_url(url) => Ok(Self::Object(BackupLocation::parse(
                url,
                &StoreOptions::from_env(),
            )?)),
            _ => Ok(Self::File(target.to_owned())),
        }
    }

    /// The backup as a user names it.
    pub(crate) fn name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Object(location) => location.url().to_owned(),
        }
    }

    /// Reads and checks the whole backup, handing each key to `on_entry`.
    pub(crate) async fn read(
        &self,
        on_entry: impl FnMut(BackupEntry) -> Result<(), Error> + Send + 'static,
    ) -> Result<BackupSummary, Error> {
        match self {
            Self::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || check(&path, on_entry))
                    .await
                    .expect("the check does not panic")
            }
            Self::Object(location) => location.read(on_entry).await,
        }
    }

    /// Streams a backup from the leader; returns what it holds once verified. The progress
    /// bar is drawn only when `progress` is set and standard error is a terminal.
    pub(crate) async fn save(
        &self,
        client: &Client,
        progress: bool,
    ) -> Result<BackupSummary, Failure> {
        let bar = if progress {
            ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{spinner} {bytes}/{total_bytes} {wide_bar} {bytes_per_sec}, {eta} left",
                )
                .expect("a valid template"),
            )
        } else {
            ProgressBar::hidden()
        };
        let saved = match self {
            Self::File(path) => save_file(client, path, &bar).await,
            Self::Object(location) => {
                location
                    .save(client, |received, expected| {
                        bar.set_length(expected);
                        bar.set_position(received);
                    })
                    .await
            }
        };
        bar.finish_and_clear();
        Ok(saved?)
    }
}

fn io_error(path: &Path, what: &str, err: std::io::Error) -> Error {
    Error::Io(format!("cannot {what} {}: {err}", path.display()))
}

/// Reads and checks the backup at `path`, handing each key to `on_entry`.
fn check(
    path: &Path,
    on_entry: impl FnMut(BackupEntry) -> Result<(), Error>,
) -> Result<BackupSummary, Error> {
    let file = File::open(path).map_err(|e| io_error(path, "open", e))?;
    read_backup(BufReader::with_capacity(1 << 20, file), on_entry).map_err(|err| match err {
        Error::InvalidBackup(why) => Error::InvalidBackup(format!("{}: {why}", path.display())),
        other => other,
    })
}

/// Streams a backup from the leader into `path` through `PATH.part`.
async fn save_file(
    client: &Client,
    path: &Path,
    bar: &ProgressBar,
) -> Result<BackupSummary, Error> {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let result = save_to(client, &part, bar).await.and_then(|()| {
        let summary = check(&part, |_| Ok(()))?;
        std::fs::rename(&part, path).map_err(|e| io_error(path, "rename the backup to", e))?;
        sync_parent(path)?;
        Ok(summary)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Makes the rename of `path` durable: until its directory is fsynced, a power loss can undo
/// the rename of a backup already reported saved.
fn sync_parent(path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "sync the directory", e))
}

async fn save_to(client: &Client, part: &Path, bar: &ProgressBar) -> Result<(), Error> {
    let mut snapshot = client.snapshot().await?;
    bar.set_length(snapshot.expected_bytes());
    let mut out = BufWriter::new(File::create(part).map_err(|e| io_error(part, "create", e))?);
    while let Some(chunk) = snapshot.chunk().await? {
        out.write_all(&chunk)
            .map_err(|e| io_error(part, "write", e))?;
        bar.inc(chunk.len() as u64);
    }
    let file = out
        .into_inner()
        .map_err(|e| io_error(part, "write", e.into_error()))?;
    file.sync_all().map_err(|e| io_error(part, "sync", e))
}

/// Loads every key of `backup` into the (empty) cluster; returns the backup's summary and how
/// many keys were written (keys already expired are skipped).
pub(crate) async fn restore(
    client: &Client,
    backup: &Backup,
) -> Result<(BackupSummary, u64), Failure> {
    let summary = backup.read(|_| Ok(())).await?;
    // A linearizable count: any node's plain count may be a lagging replica's 0.
    let status = client.linearizable_status().await?;
    if status.keys > 0 {
        return Err(Failure::NotEmpty { keys: status.keys });
    }
    // Full batches travel to the writer; memory stays within a few batches whatever the size
    // of the backup. The last, partial batch is taken once the whole backup was read.
    let (tx, mut batches) = mpsc::channel::<Vec<proto::Op>>(2);
    let batcher = Arc::new(Mutex::new(Batcher::default()));
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let reader = backup.read({
        let batcher = batcher.clone();
        move |entry| {
            if entry.expires_at_ms != 0 && entry.expires_at_ms <= now_ms {
                return Ok(());
            }
            let full = batcher.lock().expect("no reader panicked").add(entry);
            match full {
                Some(full) => tx
                    .blocking_send(full)
                    .map_err(|_| Error::Io("the restore stopped".into())),
                None => Ok(()),
            }
        }
    });
    let mut written = 0u64;
    let send = async |ops: Vec<proto::Op>, written: &mut u64| {
        let keys = ops.len() as u64;
        client
            .batch(proto::BatchRequest {
                ops,
                restore: true,
                ..Default::default()
            })
            .await
            .map_err(|source| {
                // Refused before any key was written (credentials, a role too small): nothing
                // to undo.
                if *written == 0 && source.is_definitely_not_applied() {
                    Failure::Client(source)
                } else {
                    Failure::PartlyRestored {
                        written: *written,
                        total: summary.keys,
                        source,
                    }
                }
            })?;
        *written += keys;
        Ok::<(), Failure>(())
    };
    let writer = async {
        while let Some(ops) = batches.recv().await {
            send(ops, &mut written).await?;
        }
        Ok::<(), Failure>(())
    };
    let (read, wrote) = tokio::join!(reader, writer);
    wrote?;
    read?;
    // The last, partial batch goes only once the trailer was read and checked.
    let last = batcher.lock().expect("no reader panicked").take();
    if !last.is_empty() {
        send(last, &mut written).await?;
    }
    Ok((summary, written))
}

/// Collects put operations into batches within the nodes' default limits.
#[derive(Default)]
struct Batcher {
    ops: Vec<proto::Op>,
    bytes: usize,
}

impl Batcher {
    /// Adds a key; returns the batch it completed, if any.
    fn add(&mut self, entry: BackupEntry) -> Option<Vec<proto::Op>> {
        let size = entry.key.len() + entry.value.len();
        let full =
            (!self.ops.is_empty() && self.bytes + size > RESTORE_BATCH_BYTES).then(|| self.take());
        self.bytes += size;
        self.ops.push(proto::Op {
            op: Some(proto::op::Op::Put(proto::PutOp {
                key: entry.key,
                value: entry.value,
                expires_at_ms: (entry.expires_at_ms != 0).then_some(entry.expires_at_ms),
                ..Default::default()
            })),
        });
        full.or_else(|| (self.ops.len() >= RESTORE_BATCH_KEYS).then(|| self.take()))
    }

    fn take(&mut self) -> Vec<proto::Op> {
        self.bytes = 0;
        std::mem::take(&mut self.ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value_len: usize) -> BackupEntry {
        BackupEntry {
            key: key.to_owned().into(),
            value: vec![b'v'; value_len].into(),
            expires_at_ms: 0,
        }
    }

    #[test]
    fn batches_stay_within_the_default_limits() {
        let mut batcher = Batcher::default();
        let mut sizes = Vec::new();
        for i in 0..300 {
            if let Some(batch) = batcher.add(entry(&format!("k{i}"), 10)) {
                sizes.push(batch.len());
            }
        }
        assert_eq!(sizes, vec![128, 128]);
        assert_eq!(batcher.ops.len(), 44);

        let mut batcher = Batcher::default();
        assert!(batcher.add(entry("a", 700 * 1024)).is_none());
        let first = batcher.add(entry("b", 700 * 1024)).expect("a full batch");
        assert_eq!(first.len(), 1);
        assert_eq!(batcher.ops.len(), 1);
    }
}
