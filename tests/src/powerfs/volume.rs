//! The volume: every file and directory as the programs see them now, and as they would be found
//! after a power cut — only what was fsynced. It does no I/O, so the rules of what survives are
//! tested without a mount.
//!
//! The rules (LazyFS's model, at its strictest):
//! - a file's contents and size survive as of its last `fsync`/`fdatasync`; every write and
//!   truncation after that is lost;
//! - a directory's entries survive as of its last `fsync`: a file created, renamed or unlinked
//!   since is found as it was then, even if the file itself was fsynced;
//! - what no surviving entry reaches is gone.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::ffi::OsString;
use std::time::SystemTime;

/// The root directory's inode number (FUSE's).
pub(super) const ROOT: u64 = 1;

/// Why an operation on the volume failed, as the errno the caller gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// ENOENT: no such inode or name.
    NotFound,
    /// EEXIST: the name is taken.
    Exists,
    /// ENOTDIR: a directory was expected.
    NotDir,
    /// EISDIR: a file was expected.
    IsDir,
    /// ENOTEMPTY: the directory still has entries.
    NotEmpty,
}

/// A change to a file's contents since its last fsync, replayed onto its synced contents by the
/// next one.
#[derive(Clone, Debug)]
enum Change {
    Write { offset: u64, bytes: Vec<u8> },
    Truncate(u64),
}

impl Change {
    fn apply(&self, data: &mut Vec<u8>) {
        match self {
            Change::Write { offset, bytes } => {
                let start = usize::try_from(*offset).expect("offsets fit in memory");
                let end = start + bytes.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[start..end].copy_from_slice(bytes);
            }
            Change::Truncate(len) => {
                data.resize(usize::try_from(*len).expect("sizes fit in memory"), 0);
            }
        }
    }
}

/// What an inode is.
#[derive(Debug)]
enum Contents {
    /// A regular file: its bytes now, as last fsynced, and the changes in between.
    File {
        data: Vec<u8>,
        synced: Vec<u8>,
        pending: Vec<Change>,
    },
    /// A directory: its entries now and as last fsynced.
    Dir {
        entries: BTreeMap<OsString, u64>,
        synced: BTreeMap<OsString, u64>,
    },
}

/// One file or directory.
#[derive(Debug)]
pub struct Inode {
    /// Permission bits.
    pub perm: u16,
    /// Last change to the contents.
    pub mtime: SystemTime,
    contents: Contents,
    /// Open handles: an unlinked file stays readable while one is open.
    open: u32,
}

impl Inode {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.contents, Contents::Dir { .. })
    }

    /// Its size in bytes (0 for a directory).
    pub fn size(&self) -> u64 {
        match &self.contents {
            Contents::File { data, .. } => data.len() as u64,
            Contents::Dir { .. } => 0,
        }
    }
}

/// The whole volume.
#[derive(Debug)]
pub struct Volume {
    inodes: HashMap<u64, Inode>,
    /// Inode numbers are never reused, so a number the kernel still holds after a cut or an
    /// unlink can only name the inode it named, or nothing.
    next_ino: u64,
}

impl Default for Volume {
    fn default() -> Self {
        Self::new()
    }
}

impl Volume {
    /// An empty volume: the root directory only, which always survives.
    pub fn new() -> Self {
        let root = Inode {
            perm: 0o755,
            mtime: SystemTime::now(),
            contents: Contents::Dir {
                entries: BTreeMap::new(),
                synced: BTreeMap::new(),
            },
            open: 0,
        };
        Self {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
        }
    }

    /// The inode numbered `ino`.
    pub fn inode(&self, ino: u64) -> Result<&Inode, Refusal> {
        self.inodes.get(&ino).ok_or(Refusal::NotFound)
    }

    /// Bytes held by files now, for `statfs`.
    pub fn used_bytes(&self) -> u64 {
        self.inodes.values().map(Inode::size).sum()
    }

    /// Inodes in use, for `statfs`.
    pub fn inode_count(&self) -> u64 {
        self.inodes.len() as u64
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Refusal> {
        match &self.inode(dir)?.contents {
            Contents::Dir { entries, .. } => Ok(entries),
            Contents::File { .. } => Err(Refusal::NotDir),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Refusal> {
        match &mut self.inodes.get_mut(&dir).ok_or(Refusal::NotFound)?.contents {
            Contents::Dir { entries, .. } => Ok(entries),
            Contents::File { .. } => Err(Refusal::NotDir),
        }
    }

    /// The inode `name` in `dir` names.
    pub fn lookup(&self, dir: u64, name: &OsStr) -> Result<u64, Refusal> {
        self.entries(dir)?
            .get(name)
            .copied()
            .ok_or(Refusal::NotFound)
    }

    /// The entries of `dir`, in name order.
    pub fn list(&self, dir: u64) -> Result<Vec<(OsString, u64)>, Refusal> {
        Ok(self
            .entries(dir)?
            .iter()
            .map(|(name, ino)| (name.clone(), *ino))
            .collect())
    }

    /// Creates an empty file (`dir == false`) or directory named `name` in `parent`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        dir: bool,
    ) -> Result<u64, Refusal> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Refusal::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let contents = if dir {
            Contents::Dir {
                entries: BTreeMap::new(),
                synced: BTreeMap::new(),
            }
        } else {
            Contents::File {
                data: Vec::new(),
                synced: Vec::new(),
                pending: Vec::new(),
            }
        };
        let inode = Inode {
            perm,
            mtime: SystemTime::now(),
            contents,
            open: 0,
        };
        self.inodes.insert(ino, inode);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Notes a handle opened on `ino`.
    pub fn open(&mut self, ino: u64) -> Result<(), Refusal> {
        self.inodes.get_mut(&ino).ok_or(Refusal::NotFound)?.open += 1;
        Ok(())
    }

    /// Notes a handle on `ino` closed; frees it if nothing reaches it any more.
    pub fn release(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.open = inode.open.saturating_sub(1);
        }
        self.collect();
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut Inode, Refusal> {
        let inode = self.inodes.get_mut(&ino).ok_or(Refusal::NotFound)?;
        if inode.is_dir() {
            return Err(Refusal::IsDir);
        }
        Ok(inode)
    }

    fn change(&mut self, ino: u64, change: Change) -> Result<(), Refusal> {
        let inode = self.file_mut(ino)?;
        inode.mtime = SystemTime::now();
        if let Contents::File { data, pending, .. } = &mut inode.contents {
            change.apply(data);
            pending.push(change);
        }
        Ok(())
    }

    /// Writes `bytes` at `offset` of file `ino`.
    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<(), Refusal> {
        self.change(
            ino,
            Change::Write {
                offset,
                bytes: bytes.to_vec(),
            },
        )
    }

    /// Cuts or extends file `ino` to `len` bytes.
    pub fn truncate(&mut self, ino: u64, len: u64) -> Result<(), Refusal> {
        self.change(ino, Change::Truncate(len))
    }

    /// Up to `size` bytes of file `ino` from `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: usize) -> Result<&[u8], Refusal> {
        match &self.inode(ino)?.contents {
            Contents::File { data, .. } => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size).min(data.len());
                Ok(&data[start..end])
            }
            Contents::Dir { .. } => Err(Refusal::IsDir),
        }
    }

    /// Sets the permission bits of `ino`.
    pub fn chmod(&mut self, ino: u64, perm: u16) -> Result<(), Refusal> {
        self.inodes.get_mut(&ino).ok_or(Refusal::NotFound)?.perm = perm;
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file, `fsync` of a directory: what `ino` holds now survives a
    /// cut.
    pub fn sync(&mut self, ino: u64) -> Result<(), Refusal> {
        match &mut self.inodes.get_mut(&ino).ok_or(Refusal::NotFound)?.contents {
            Contents::File {
                synced, pending, ..
            } => {
                for change in pending.drain(..) {
                    change.apply(synced);
                }
            }
            Contents::Dir { entries, synced } => synced.clone_from(entries),
        }
        Ok(())
    }

    /// Removes the entry `name` from `parent`: a file (`dir == false`) or an empty directory.
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Refusal> {
        let ino = self.lookup(parent, name)?;
        let inode = self.inode(ino)?;
        match (&inode.contents, dir) {
            (Contents::File { .. }, true) => return Err(Refusal::NotDir),
            (Contents::Dir { .. }, false) => return Err(Refusal::IsDir),
            (Contents::Dir { entries, .. }, true) if !entries.is_empty() => {
                return Err(Refusal::NotEmpty);
            }
            _ => {}
        }
        self.entries_mut(parent)?.remove(name);
        self.collect();
        Ok(())
    }

    /// Moves the entry `name` of `parent` to `new_name` of `new_parent`, replacing what was
    /// there (a file, or an empty directory when the moved one is a directory).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<(), Refusal> {
        let ino = self.lookup(parent, name)?;
        self.entries(new_parent)?;
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            let moved_dir = self.inode(ino)?.is_dir();
            match (&self.inode(target)?.contents, moved_dir) {
                (Contents::Dir { .. }, false) => return Err(Refusal::IsDir),
                (Contents::File { .. }, true) => return Err(Refusal::NotDir),
                (Contents::Dir { entries, .. }, true) if !entries.is_empty() => {
                    return Err(Refusal::NotEmpty);
                }
                _ => {}
            }
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(new_parent)?
            .insert(new_name.to_owned(), ino);
        self.collect();
        Ok(())
    }

    /// The power cut: every file and directory goes back to what it last synced, and what no
    /// surviving entry reaches from the root is gone. No handle survives a cut.
    pub fn cut(&mut self) {
        for inode in self.inodes.values_mut() {
            inode.open = 0;
            match &mut inode.contents {
                Contents::File {
                    data,
                    synced,
                    pending,
                } => {
                    data.clone_from(synced);
                    pending.clear();
                }
                Contents::Dir { entries, synced } => entries.clone_from(synced),
            }
        }
        self.collect();
    }

    /// Frees the inodes that no entry reaches from the root, now or as last synced, and that no
    /// handle holds open.
    fn collect(&mut self) {
        let mut reached = BTreeSet::from([ROOT]);
        let mut queue = vec![ROOT];
        while let Some(ino) = queue.pop() {
            if let Some(Inode {
                contents: Contents::Dir { entries, synced },
                ..
            }) = self.inodes.get(&ino)
            {
                for child in entries.values().chain(synced.values()) {
                    if reached.insert(*child) {
                        queue.push(*child);
                    }
                }
            }
        }
        self.inodes
            .retain(|ino, inode| reached.contains(ino) || inode.open > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn contents(volume: &Volume, dir: u64, file: &str) -> Option<Vec<u8>> {
        let ino = volume.lookup(dir, name(file)).ok()?;
        let size = volume.inode(ino).ok()?.size() as usize;
        Some(volume.read(ino, 0, size).ok()?.to_vec())
    }

    /// A file in the root, its entry synced, its contents not.
    fn durable_empty_file(volume: &mut Volume, file: &str) -> u64 {
        let ino = volume.create(ROOT, name(file), 0o644, false).unwrap();
        volume.sync(ROOT).unwrap();
        ino
    }

    #[test]
    fn a_write_without_fsync_is_lost_and_one_with_it_kept() {
        let mut volume = Volume::new();
        let ino = durable_empty_file(&mut volume, "f");
        volume.write(ino, 0, b"synced").unwrap();
        volume.sync(ino).unwrap();
        volume.write(ino, 6, b" and not").unwrap();
        volume.truncate(ino, 3).unwrap();
        assert_eq!(contents(&volume, ROOT, "f").unwrap(), b"syn");
        volume.cut();
        assert_eq!(contents(&volume, ROOT, "f").unwrap(), b"synced");
    }

    #[test]
    fn a_new_file_needs_its_directory_synced() {
        let mut volume = Volume::new();
        let ino = volume.create(ROOT, name("f"), 0o644, false).unwrap();
        volume.write(ino, 0, b"x").unwrap();
        volume.sync(ino).unwrap();
        volume.cut();
        assert_eq!(contents(&volume, ROOT, "f"), None);
        assert!(volume.inode(ino).is_err(), "an unreachable inode is freed");
    }

    #[test]
    fn a_rename_without_a_directory_fsync_is_lost_and_one_with_it_kept() {
        let mut volume = Volume::new();
        let old = durable_empty_file(&mut volume, "current");
        volume.write(old, 0, b"old").unwrap();
        volume.sync(old).unwrap();
        let new = volume.create(ROOT, name("tmp"), 0o644, false).unwrap();
        volume.write(new, 0, b"new").unwrap();
        volume.sync(new).unwrap();
        volume
            .rename(ROOT, name("tmp"), ROOT, name("current"))
            .unwrap();
        assert_eq!(contents(&volume, ROOT, "current").unwrap(), b"new");
        volume.cut();
        assert_eq!(contents(&volume, ROOT, "current").unwrap(), b"old");
        assert_eq!(contents(&volume, ROOT, "tmp"), None);

        let new = volume.create(ROOT, name("tmp"), 0o644, false).unwrap();
        volume.write(new, 0, b"new").unwrap();
        volume.sync(new).unwrap();
        volume
            .rename(ROOT, name("tmp"), ROOT, name("current"))
            .unwrap();
        volume.sync(ROOT).unwrap();
        volume.cut();
        assert_eq!(contents(&volume, ROOT, "current").unwrap(), b"new");
        assert!(volume.inode(old).is_err(), "the replaced file is freed");
    }

    #[test]
    fn an_unlink_without_a_directory_fsync_is_undone() {
        let mut volume = Volume::new();
        let ino = durable_empty_file(&mut volume, "f");
        volume.write(ino, 0, b"kept").unwrap();
        volume.sync(ino).unwrap();
        volume.remove(ROOT, name("f"), false).unwrap();
        assert_eq!(contents(&volume, ROOT, "f"), None);
        volume.cut();
        assert_eq!(contents(&volume, ROOT, "f").unwrap(), b"kept");
    }

    #[test]
    fn a_subdirectory_survives_only_as_far_as_each_level_was_synced() {
        let mut volume = Volume::new();
        let dir = volume.create(ROOT, name("d"), 0o755, true).unwrap();
        let file = volume.create(dir, name("f"), 0o644, false).unwrap();
        volume.sync(file).unwrap();
        volume.sync(dir).unwrap();
        volume.cut();
        assert_eq!(volume.lookup(ROOT, name("d")), Err(Refusal::NotFound));

        let dir = volume.create(ROOT, name("d"), 0o755, true).unwrap();
        volume.sync(ROOT).unwrap();
        volume.create(dir, name("f"), 0o644, false).unwrap();
        volume.cut();
        let dir = volume.lookup(ROOT, name("d")).unwrap();
        assert_eq!(volume.list(dir).unwrap(), vec![]);
    }

    #[test]
    fn an_unlinked_file_stays_readable_while_open() {
        let mut volume = Volume::new();
        let ino = volume.create(ROOT, name("f"), 0o644, false).unwrap();
        volume.open(ino).unwrap();
        volume.write(ino, 0, b"x").unwrap();
        volume.remove(ROOT, name("f"), false).unwrap();
        assert_eq!(volume.read(ino, 0, 1).unwrap(), b"x");
        volume.release(ino);
        assert!(volume.inode(ino).is_err());
    }

    #[test]
    fn directories_refuse_what_posix_refuses() {
        let mut volume = Volume::new();
        let dir = volume.create(ROOT, name("d"), 0o755, true).unwrap();
        volume.create(dir, name("f"), 0o644, false).unwrap();
        volume.create(ROOT, name("g"), 0o644, false).unwrap();
        assert_eq!(
            volume.create(ROOT, name("d"), 0o755, true),
            Err(Refusal::Exists)
        );
        assert_eq!(volume.remove(ROOT, name("d"), true), Err(Refusal::NotEmpty));
        assert_eq!(volume.remove(ROOT, name("d"), false), Err(Refusal::IsDir));
        assert_eq!(volume.remove(ROOT, name("g"), true), Err(Refusal::NotDir));
        assert_eq!(
            volume.rename(ROOT, name("g"), ROOT, name("d")),
            Err(Refusal::IsDir)
        );
    }
}
