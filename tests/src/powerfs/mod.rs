//! powerfs: a FUSE file system that keeps every write in memory and, on a power cut, throws away
//! whatever was not fsynced — file contents, new and removed directory entries, renames — as
//! LazyFS does for etcd's robustness tests. `kill -9` keeps the kernel's page cache, so only a
//! file system like this one shows whether a node really fsyncs what it acknowledges.
//!
//! What survives a cut is decided by [`Volume`] (`volume.rs`), which does no I/O; this module
//! serves it to the kernel. The kernel is told to cache no names or attributes, so after a cut
//! every lookup sees the volume as it is. The `powerfs` binary mounts one volume per directory
//! and cuts its power on SIGUSR1; [`PowerFsProcess`] drives it from the harness.

mod process;
mod volume;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;
use std::time::SystemTime;

use fuser::Errno;
use fuser::FileAttr;
use fuser::FileHandle;
use fuser::FileType;
use fuser::Filesystem;
use fuser::FopenFlags;
use fuser::Generation;
use fuser::INodeNo;
use fuser::LockOwner;
use fuser::MountOption;
use fuser::OpenFlags;
use fuser::RenameFlags;
use fuser::ReplyAttr;
use fuser::ReplyCreate;
use fuser::ReplyData;
use fuser::ReplyDirectory;
use fuser::ReplyEmpty;
use fuser::ReplyEntry;
use fuser::ReplyOpen;
use fuser::ReplyStatfs;
use fuser::ReplyWrite;
use fuser::Request;
use fuser::TimeOrNow;
use fuser::WriteFlags;

pub use process::PowerFsProcess;
pub use volume::Refusal;
pub use volume::Volume;

/// Nothing is cached by the kernel: a cut must show at the next lookup.
const NO_CACHE: Duration = Duration::ZERO;
/// Block size reported to `stat` and `statfs`.
const BLOCK: u32 = 4096;
/// The size `statfs` reports, so that a program sizing itself to its volume sees a roomy disk.
const REPORTED_BYTES: u64 = 64 << 30;

impl From<Refusal> for Errno {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound => Errno::ENOENT,
            Refusal::Exists => Errno::EEXIST,
            Refusal::NotDir => Errno::ENOTDIR,
            Refusal::IsDir => Errno::EISDIR,
            Refusal::NotEmpty => Errno::ENOTEMPTY,
        }
    }
}

/// A volume shared by the FUSE session and whoever cuts its power.
#[derive(Clone, Debug, Default)]
pub struct PowerFs {
    volume: Arc<Mutex<Volume>>,
}

impl PowerFs {
    /// An empty volume.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cuts the power: everything not fsynced is gone.
    pub fn cut(&self) {
        self.volume().cut();
    }

    /// Mounts the volume on `dir` (an empty directory) until the session is dropped.
    pub fn mount(&self, dir: &Path) -> std::io::Result<fuser::BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options.extend([
            MountOption::FSName("powerfs".into()),
            MountOption::DefaultPermissions,
        ]);
        fuser::spawn_mount(self.clone(), dir, &config)
    }

    fn volume(&self) -> MutexGuard<'_, Volume> {
        // A panic in one request must not take the whole volume with it.
        self.volume.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn attr(volume: &Volume, ino: u64, req: &Request) -> Result<FileAttr, Errno> {
        let inode = volume.inode(ino)?;
        let size = inode.size();
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: inode.mtime,
            mtime: inode.mtime,
            ctime: inode.mtime,
            crtime: inode.mtime,
            kind: if inode.is_dir() {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: inode.perm,
            nlink: if inode.is_dir() { 2 } else { 1 },
            uid: req.uid(),
            gid: req.gid(),
            rdev: 0,
            flags: 0,
            blksize: BLOCK,
        })
    }

    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        dir: bool,
    ) -> Result<(u64, FileAttr), Errno> {
        let mut volume = self.volume();
        let perm = u16::try_from(mode & 0o7777).unwrap_or(0o644);
        let ino = volume.create(parent.0, name, perm, dir)?;
        Ok((ino, Self::attr(&volume, ino, req)?))
    }
}

impl Filesystem for PowerFs {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let volume = self.volume();
        match volume
            .lookup(parent.0, name)
            .map_err(Errno::from)
            .and_then(|ino| Self::attr(&volume, ino, req))
        {
            Ok(attr) => reply.entry(&NO_CACHE, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match Self::attr(&self.volume(), ino.0, req) {
            Ok(attr) => reply.attr(&NO_CACHE, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut volume = self.volume();
        let changed = (|| {
            if let Some(len) = size {
                volume.truncate(ino.0, len)?;
            }
            if let Some(mode) = mode {
                volume.chmod(ino.0, u16::try_from(mode & 0o7777).unwrap_or(0o644))?;
            }
            Ok::<_, Refusal>(())
        })();
        match changed
            .map_err(Errno::from)
            .and_then(|()| Self::attr(&volume, ino.0, req))
        {
            Ok(attr) => reply.attr(&NO_CACHE, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.make(req, parent, name, mode, true) {
            Ok((_, attr)) => reply.entry(&NO_CACHE, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            reply.error(Errno::EPERM);
            return;
        }
        match self.make(req, parent, name, mode, false) {
            Ok((_, attr)) => reply.entry(&NO_CACHE, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        // The kernel looks the name up first and opens an existing file instead, so a name
        // taken here is a race it reports as EEXIST.
        let made = self
            .make(req, parent, name, mode, false)
            .and_then(|(ino, attr)| {
                self.volume().open(ino)?;
                Ok(attr)
            });
        match made {
            Ok(attr) => reply.created(
                &NO_CACHE,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.volume().open(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e.into()),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.volume().release(ino.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) flushes nothing to stable storage: that is fsync's job.
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.volume().read(ino.0, offset, size as usize) {
            Ok(bytes) => reply.data(bytes),
            Err(e) => reply.error(e.into()),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.volume().write(ino.0, offset, data) {
            Ok(()) => reply.written(u32::try_from(data.len()).expect("FUSE writes are small")),
            Err(e) => reply.error(e.into()),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.volume().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.volume().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.volume().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.volume().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            reply.error(Errno::EINVAL);
            return;
        }
        match self.volume().rename(parent.0, name, newparent.0, newname) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let volume = self.volume();
        let entries = match volume.list(ino.0) {
            Ok(entries) => entries,
            Err(e) => {
                reply.error(e.into());
                return;
            }
        };
        let dots = [(".".into(), ino.0), ("..".into(), ino.0)];
        let all = dots.into_iter().chain(entries);
        for (i, (name, child)) in all.enumerate().skip(offset as usize) {
            let kind = match volume.inode(child) {
                Ok(inode) if inode.is_dir() => FileType::Directory,
                _ => FileType::RegularFile,
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let volume = self.volume();
        let blocks = REPORTED_BYTES / u64::from(BLOCK);
        let used = volume.used_bytes().div_ceil(u64::from(BLOCK)).min(blocks);
        let files = 1 << 20;
        let free_files = files - volume.inode_count().min(files);
        reply.statfs(
            blocks,
            blocks - used,
            blocks - used,
            files,
            free_files,
            BLOCK,
            255,
            BLOCK,
        );
    }
}

#[cfg(test)]
mod tests {
    //! The rules of `volume.rs` through a real mount and the kernel: programs use plain
    //! `std::fs`. Needs `/dev/fuse` and root, as the cluster tests' CI has.

    use std::fs::File;
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;

    fn mounted() -> (PowerFs, tempfile::TempDir, fuser::BackgroundSession) {
        let dir = tempfile::tempdir().unwrap();
        let fs = PowerFs::new();
        let session = fs
            .mount(dir.path())
            .expect("mount powerfs (needs /dev/fuse and root)");
        (fs, dir, session)
    }

    fn sync_dir(dir: &Path) {
        File::open(dir).unwrap().sync_all().unwrap();
    }

    #[test]
    fn through_the_kernel_a_write_without_fsync_is_lost_and_one_with_it_kept() {
        let (fs, dir, _session) = mounted();
        let path = dir.path().join("log");
        let mut file = File::create(&path).unwrap();
        sync_dir(dir.path());
        file.write_all(b"synced").unwrap();
        file.sync_data().unwrap();
        file.write_all(b", then lost").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"synced, then lost");
        fs.cut();
        assert_eq!(std::fs::read(&path).unwrap(), b"synced");

        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b" twice").unwrap();
        file.sync_all().unwrap();
        drop(file);
        fs.cut();
        assert_eq!(std::fs::read(&path).unwrap(), b"synced twice");
    }

    #[test]
    fn through_the_kernel_a_rename_without_a_directory_fsync_is_lost_and_one_with_it_kept() {
        let (fs, dir, _session) = mounted();
        let (tmp, current) = (dir.path().join("tmp"), dir.path().join("current"));
        let replace = |contents: &[u8]| {
            let mut file = File::create(&tmp).unwrap();
            file.write_all(contents).unwrap();
            file.sync_all().unwrap();
            std::fs::rename(&tmp, &current).unwrap();
        };
        replace(b"first");
        fs.cut();
        assert!(!current.exists(), "the rename was never made durable");
        assert!(!tmp.exists(), "nor was the file's creation");

        replace(b"first");
        sync_dir(dir.path());
        replace(b"second");
        assert_eq!(std::fs::read(&current).unwrap(), b"second");
        fs.cut();
        assert_eq!(std::fs::read(&current).unwrap(), b"first");

        replace(b"second");
        sync_dir(dir.path());
        fs.cut();
        assert_eq!(std::fs::read(&current).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["current"]);
    }

    #[test]
    fn through_the_kernel_directories_and_unlinks_follow_their_directory_fsync() {
        let (fs, dir, _session) = mounted();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        sync_dir(dir.path());
        let file = sub.join("f");
        std::fs::write(&file, b"x").unwrap();
        File::open(&file).unwrap().sync_all().unwrap();
        sync_dir(&sub);
        std::fs::remove_file(&file).unwrap();
        fs.cut();
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"x",
            "the unlink was not synced"
        );
        std::fs::remove_file(&file).unwrap();
        sync_dir(&sub);
        fs.cut();
        assert!(!file.exists());
        assert!(sub.is_dir());
    }
}
