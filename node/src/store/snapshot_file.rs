//! Snapshot files: the latest state-machine snapshot of a durable node, in
//! `<data-dir>/snapshots/snapshot-<index>.snap`.
//!
//! A file is the magic `KVSSNAPF`, the length of the sealed snapshot meta (u32 LE), the meta
//! (a checksummed record, see `record::seal`) and the encoded state, which carries its own
//! format version and checksum. Snapshots are never held in memory whole: a new one — built here
//! or arriving from the leader — is streamed into a temporary file (`*.tmp`), fsynced and only
//! then renamed into place, so a crash leaves the previous snapshot whole; older snapshots are
//! deleted after that. A temporary file is removed when it is dropped unkept, and any left by a
//! crash are removed when the directory is opened.

use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::Read;
use std::io::Seek;
use std::io::SeekFrom;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::alias::SnapshotMetaOf;

use crate::store::data_dir::sync_dir;
use crate::store::entry::TypeConfig;
use crate::store::record::invalid_data;
use crate::store::record::seal;
use crate::store::record::unseal;

const MAGIC: &[u8; 8] = b"KVSSNAPF";
const SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";
/// Buffer of the readers and writers of snapshot files.
const IO_BUFFER_BYTES: usize = 1024 * 1024;

/// Names temporary files uniquely within the process (one process per data directory).
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// The snapshot directory of a durable node.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
}

/// One open snapshot file; the state bytes start at `state_offset`. The open handle stays
/// readable even after a newer snapshot replaces the file.
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    path: PathBuf,
    file: File,
    state_offset: u64,
    /// Not yet kept: removed when dropped.
    temporary: bool,
}

impl SnapshotFiles {
    /// Opens (creating if needed) the snapshot directory and removes the temporary files of
    /// snapshots that were being written or received when the node last stopped.
    pub(crate) fn new(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.to_str().is_some_and(|p| p.ends_with(TEMP_SUFFIX)) {
                tracing::info!(path = %path.display(), "removing an unfinished snapshot");
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Self { dir })
    }

    fn snapshot_paths(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let index = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("snapshot-"))
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(index) = index {
                found.push((index, path));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Starts a snapshot of `meta` in a temporary file: the header is written, the state bytes
    /// are to be appended through [`SnapshotFile::writer`].
    pub(crate) fn create(&self, meta: &SnapshotMetaOf<TypeConfig>) -> io::Result<SnapshotFile> {
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("incoming-{n}{TEMP_SUFFIX}"));
        let header = file_header(meta)?;
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut snapshot = SnapshotFile {
            path,
            file,
            state_offset: header.len() as u64,
            temporary: true,
        };
        snapshot.file.write_all(&header)?;
        Ok(snapshot)
    }

    /// Makes a complete snapshot of `meta` the current one: fsynced, renamed into place and the
    /// older snapshots deleted. A snapshot that is already kept is left as it is.
    pub(crate) fn keep(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
        mut snapshot: SnapshotFile,
    ) -> io::Result<SnapshotFile> {
        if !snapshot.temporary {
            return Ok(snapshot);
        }
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let path = self.dir.join(format!("snapshot-{index:020}{SUFFIX}"));
        snapshot.file.sync_all()?;
        std::fs::rename(&snapshot.path, &path)?;
        snapshot.path = path;
        snapshot.temporary = false;
        sync_dir(&self.dir)?;
        for (older, older_path) in self.snapshot_paths()? {
            if older < index {
                std::fs::remove_file(older_path)?;
            }
        }
        Ok(snapshot)
    }

    /// The newest stored snapshot, if any, with its checked meta. Only the header is read; the
    /// state bytes are checked when decoded.
    pub(crate) fn latest(&self) -> io::Result<Option<(SnapshotMetaOf<TypeConfig>, SnapshotFile)>> {
        let Some((_, path)) = self.snapshot_paths()?.pop() else {
            return Ok(None);
        };
        let file = File::open(&path)?;
        let (meta, state_offset) = read_header(&path, &mut BufReader::new(&file))?;
        Ok(Some((
            meta,
            SnapshotFile {
                path,
                file,
                state_offset,
                temporary: false,
            },
        )))
    }
}

impl SnapshotFile {
    /// A buffered reader of the state bytes, from their start.
    pub(crate) fn state_reader(&self) -> io::Result<impl Read + '_> {
        (&self.file).seek(SeekFrom::Start(self.state_offset))?;
        Ok(BufReader::with_capacity(IO_BUFFER_BYTES, &self.file))
    }

    /// A buffered writer that appends state bytes to a snapshot being created.
    pub(crate) fn writer(&self) -> io::Result<impl Write + '_> {
        (&self.file).seek(SeekFrom::End(0))?;
        Ok(io::BufWriter::with_capacity(IO_BUFFER_BYTES, &self.file))
    }

    /// Another handle on the file (sharing its position), for async I/O.
    pub(crate) fn handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    pub(crate) fn state_offset(&self) -> u64 {
        self.state_offset
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.temporary
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove an unkept snapshot");
        }
    }
}

/// The start of a snapshot file, everything before the state bytes.
pub(crate) fn file_header(meta: &SnapshotMetaOf<TypeConfig>) -> io::Result<Vec<u8>> {
    let sealed_meta = seal(meta);
    let meta_len = u32::try_from(sealed_meta.len()).map_err(io::Error::other)?;
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&meta_len.to_le_bytes());
    header.extend_from_slice(&sealed_meta);
    Ok(header)
}

/// Reads the header of the snapshot file at `path` (named in errors): its checked meta and the
/// offset where its state bytes start.
pub(crate) fn read_header(
    path: &Path,
    r: &mut impl Read,
) -> io::Result<(SnapshotMetaOf<TypeConfig>, u64)> {
    let corrupt = |why: &str| {
        invalid_data(format_args!(
            "snapshot file {} is corrupt: {why}",
            path.display()
        ))
    };
    let mut fixed = [0u8; MAGIC.len() + 4];
    r.read_exact(&mut fixed).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt("truncated header"),
        _ => e,
    })?;
    let (magic, len) = fixed.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let len = u32::from_le_bytes(len.try_into().expect("four bytes"));
    let mut sealed_meta = Vec::new();
    if r.take(u64::from(len)).read_to_end(&mut sealed_meta)? < len as usize {
        return Err(corrupt("truncated meta"));
    }
    let meta = unseal(&sealed_meta, &|| {
        format!("the meta of snapshot file {}", path.display())
    })?;
    Ok((meta, (fixed.len() + sealed_meta.len()) as u64))
}
