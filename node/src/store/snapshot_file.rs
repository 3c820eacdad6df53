//! Snapshot files: the latest state-machine snapshot of a durable node, in
//! `<data-dir>/snapshots/snapshot-<index>.snap`.
//!
//! A file is the magic `KVSSNAPF`, the length of the sealed snapshot meta (u32 LE), the meta
//! (a checksummed record, see `disk_log::seal`) and the encoded state, which carries its own
//! format version and checksum. A file is written to a temporary name, fsynced and renamed, so a
//! crash leaves the previous snapshot whole; older snapshots are deleted only after that.

use std::io;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use bytes::Bytes;
use openraft::alias::SnapshotMetaOf;

use crate::raft::TypeConfig;
use crate::store::data_dir::sync_dir;
use crate::store::disk_log::seal;
use crate::store::disk_log::unseal;

const MAGIC: &[u8; 8] = b"KVSSNAPF";
const SUFFIX: &str = ".snap";

/// The snapshot directory of a durable node.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot file {} is corrupt: {why}", path.display()),
    )
}

impl SnapshotFiles {
    pub(crate) fn new(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
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

    /// Durably stores a snapshot and removes the older ones.
    pub(crate) fn save(&self, meta: &SnapshotMetaOf<TypeConfig>, data: &[u8]) -> io::Result<()> {
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let path = self.dir.join(format!("snapshot-{index:020}{SUFFIX}"));
        let tmp = path.with_extension("tmp");
        let header = file_header(meta)?;
        {
            let mut file = io::BufWriter::new(std::fs::File::create(&tmp)?);
            file.write_all(&header)?;
            file.write_all(data)?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        for (older, older_path) in self.snapshot_paths()? {
            if older < index {
                std::fs::remove_file(older_path)?;
            }
        }
        Ok(())
    }

    /// The newest stored snapshot, if any. Its state bytes are checked when decoded.
    pub(crate) fn load_latest(&self) -> io::Result<Option<(SnapshotMetaOf<TypeConfig>, Bytes)>> {
        let Some((_, path)) = self.snapshot_paths()?.pop() else {
            return Ok(None);
        };
        parse_file(&path, std::fs::read(&path)?).map(Some)
    }

    /// Where the newest snapshot is, for messages.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
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

/// Splits the bytes of the snapshot file at `path` (named in errors) into its checked meta and
/// its state bytes, which are checked when decoded.
pub(crate) fn parse_file(
    path: &Path,
    bytes: Vec<u8>,
) -> io::Result<(SnapshotMetaOf<TypeConfig>, Bytes)> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| invalid(path, "bad magic"))?;
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| invalid(path, "truncated header"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(invalid(path, "truncated meta"));
    }
    let (sealed_meta, data) = rest.split_at(len);
    let meta = unseal(sealed_meta, &|| {
        format!("the meta of snapshot file {}", path.display())
    })?;
    let offset = bytes.len() - data.len();
    Ok((meta, Bytes::from(bytes).slice(offset..)))
}
