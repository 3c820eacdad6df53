//! The data directory: what makes a durable node the same node after a restart.
//!
//! Layout (format 1):
//! - `FORMAT` — `kvs-data 1`; a directory of a newer format is refused, never guessed at.
//! - `LOCK` — held with an exclusive file lock while a node runs, so a second process on the
//!   same directory fails at once instead of corrupting it.
//! - `identity` — this node's ID and, once known, its cluster's ID (written atomically).
//! - `raft/` — the Raft log, vote and commit index (see `disk_log`).
//! - `snapshots/` — the latest state-machine snapshot (see `snapshot_file`).

use std::fs::File;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use crate::error::Error;
use crate::identity::SaveIdentity;
use crate::identity::StoredIdentity;

/// Bytes an unprivileged process may still write on the file system holding `path`.
pub(crate) fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// The data directory format this binary writes and reads.
pub(crate) const DATA_DIR_FORMAT: u32 = 1;

const FORMAT_FILE: &str = "FORMAT";
const FORMAT_PREFIX: &str = "kvs-data ";
const LOCK_FILE: &str = "LOCK";
const IDENTITY_FILE: &str = "identity";

/// An open, locked data directory.
#[derive(Debug)]
pub(crate) struct DataDir {
    path: PathBuf,
    /// Held for the life of the node; the lock is released when the file is closed.
    _lock: File,
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()), e)
}

impl DataDir {
    /// Opens (creating if needed) and locks the data directory at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(path)
            .map_err(|e| io_error(path, "cannot create data directory", e))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, "cannot open", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Config(format!(
                    "data directory {} is in use by another kvs-node process; give this node its own \
                     --data-dir, or run it with --in-memory",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_error(&lock_path, "cannot lock", e));
            }
        }
        let dir = DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        };
        dir.check_format()?;
        Ok(dir)
    }

    fn check_format(&self) -> Result<(), Error> {
        let format_path = self.path.join(FORMAT_FILE);
        match std::fs::read_to_string(&format_path) {
            Ok(text) => {
                let version = text
                    .trim()
                    .strip_prefix(FORMAT_PREFIX)
                    .and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "{} does not look like a kvs data directory ({} says {:?})",
                            self.path.display(),
                            format_path.display(),
                            text.trim()
                        ))
                    })?;
                if version != DATA_DIR_FORMAT {
                    return Err(Error::Config(format!(
                        "data directory {} has format {version}, but this kvs-node reads only format \
                         {DATA_DIR_FORMAT}; use a kvs-node release that matches it",
                        self.path.display()
                    )));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let has_state = ["raft", "snapshots", IDENTITY_FILE]
                    .iter()
                    .any(|name| self.path.join(name).exists());
                if has_state {
                    return Err(Error::Config(format!(
                        "data directory {} has state but no {FORMAT_FILE} file; refusing to guess its format",
                        self.path.display()
                    )));
                }
                write_atomically(
                    &format_path,
                    format!("{FORMAT_PREFIX}{DATA_DIR_FORMAT}\n").as_bytes(),
                )
            }
            Err(e) => Err(io_error(&format_path, "cannot read", e)),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn raft_dir(&self) -> PathBuf {
        self.path.join("raft")
    }

    pub(crate) fn snapshot_dir(&self) -> PathBuf {
        self.path.join("snapshots")
    }

    /// The identity stored here, if the node has run here before.
    pub(crate) fn load_identity(&self) -> Result<Option<StoredIdentity>, Error> {
        let path = self.path.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, "cannot read", e)),
        };
        text.parse()
            .map(Some)
            .map_err(|text| Error::Config(format!("{} is damaged: {text}", path.display())))
    }

    /// Writes the identity file here durably (read back by [`DataDir::load_identity`]).
    pub(crate) fn write_identity(&self, identity: &StoredIdentity) -> Result<(), Error> {
        write_identity(&self.path.join(IDENTITY_FILE), identity)
    }

    /// [`DataDir::write_identity`] for the node's [`Identity`](crate::identity::Identity), which
    /// rewrites the file when the node joins a cluster.
    pub(crate) fn save_identity(&self) -> SaveIdentity {
        let path = self.path.join(IDENTITY_FILE);
        std::sync::Arc::new(move |identity: &StoredIdentity| {
            write_identity(&path, identity).map_err(|e| std::io::Error::other(e.to_string()))
        })
    }
}

fn write_identity(path: &Path, identity: &StoredIdentity) -> Result<(), Error> {
    write_atomically(path, identity.to_string().as_bytes())
}

/// Replaces `path` with `contents` so that a crash leaves either the old or the new file.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    };
    write().map_err(|e| io_error(path, "cannot write", e))
}

/// What a data directory takes on disk and the room left on its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiskUsage {
    /// Space allocated to the directory's files, as `du` counts it.
    pub(crate) used_bytes: u64,
    /// Space an unprivileged writer may still take on the directory's filesystem.
    pub(crate) free_bytes: u64,
}

/// Measures `dir` (the data directory: a few dozen files, so walking it is cheap).
pub(crate) fn disk_usage(dir: &Path) -> std::io::Result<DiskUsage> {
    fn allocated(path: &Path) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)?;
        let mut bytes = meta.blocks() * 512;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                // A file removed while it is walked (a purged journal) is simply not counted.
                match allocated(&entry?.path()) {
                    Ok(n) => bytes += n,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(bytes)
    }
    Ok(DiskUsage {
        used_bytes: allocated(dir)?,
        free_bytes: free_bytes(dir)?,
    })
}

/// Makes a rename or a new file in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes every entry of `dir` and of the folders below it durable, deepest first, then `dir`
/// itself.
pub(crate) fn sync_dirs_under(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_dirs_under(&entry.path())?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_the_files_under_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = disk_usage(dir.path()).expect("usage");
        assert!(empty.free_bytes > 0);
        std::fs::create_dir(dir.path().join("raft")).expect("mkdir");
        std::fs::write(dir.path().join("raft/0.jnl"), vec![7u8; 1 << 20]).expect("write");
        let used = disk_usage(dir.path()).expect("usage").used_bytes;
        assert!(
            used >= empty.used_bytes + (1 << 20),
            "a 1 MiB file two levels down must be counted: {} then {used}",
            empty.used_bytes
        );
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let _first = DataDir::open(tmp.path()).expect("first open");
        let err = DataDir::open(tmp.path()).expect_err("second open");
        assert!(
            err.to_string().contains("in use by another kvs-node"),
            "{err}"
        );
    }

    #[test]
    fn identity_survives_a_reopen() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stored = StoredIdentity {
            node_id: 0x0123_4567_89ab_cdef,
            cluster_id: Some("0123456789abcdef0123456789abcdef".into()),
        };
        {
            let dir = DataDir::open(tmp.path()).expect("open");
            assert_eq!(dir.load_identity().expect("load"), None);
            dir.write_identity(&stored).expect("save");
        }
        let dir = DataDir::open(tmp.path()).expect("reopen");
        assert_eq!(dir.load_identity().expect("load"), Some(stored));
    }

    #[test]
    fn a_newer_format_is_refused_clearly() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join(FORMAT_FILE), "kvs-data 2\n").expect("write");
        let err = DataDir::open(tmp.path()).expect_err("newer format");
        assert!(err.to_string().contains("has format 2"), "{err}");
    }
}
