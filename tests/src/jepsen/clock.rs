//! The nodes' wall clocks for the `clock` nemesis: every node runs under libfaketime (Debian's
//! `faketime`) reading its offset from a file of its own, so the nemesis can put one node's
//! wall clock ahead, put the leader's ahead, step one backwards, or skew one beyond the bound the
//! nodes are configured with, and set them all right again. The monotonic clock is left alone
//! (`FAKETIME_DONT_FAKE_MONOTONIC=1`): timeouts, elections and leases run on it, as on a host
//! whose NTP steps the wall clock.

use std::path::Path;
use std::path::PathBuf;

use tempfile::TempDir;

/// How often (seconds) libfaketime re-reads a node's offset file: a step takes effect within it.
pub const REREAD_S: u64 = 1;

/// libfaketime's preload library, from Debian's `faketime` package (tests/run.sh installs it).
pub fn libfaketime() -> Result<PathBuf, String> {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|lib| lib.exists())
        .ok_or_else(|| {
            "libfaketime.so.1 not found: install Debian's faketime package (tests/run.sh does)"
                .to_string()
        })
}

/// One offset file per node seat.
#[derive(Debug)]
pub struct Clocks {
    library: PathBuf,
    dir: TempDir,
    seats: usize,
}

impl Clocks {
    /// Offset files for `seats` node seats, every clock right.
    pub fn install(seats: usize) -> Result<Self, String> {
        let library = libfaketime()?;
        let dir = tempfile::Builder::new()
            .prefix("kvs-clocks-")
            .tempdir()
            .map_err(|e| format!("cannot make a directory for the clocks: {e}"))?;
        let clocks = Self {
            library,
            dir,
            seats,
        };
        for i in 0..seats {
            clocks.set(i, 0)?;
        }
        Ok(clocks)
    }

    fn file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("clock{i}"))
    }

    /// The environment of seat `i`'s node.
    pub fn env(&self, i: usize) -> Vec<(String, String)> {
        let path = |p: &Path| p.display().to_string();
        vec![
            ("LD_PRELOAD".into(), path(&self.library)),
            ("FAKETIME_TIMESTAMP_FILE".into(), path(&self.file(i))),
            ("FAKETIME_CACHE_DURATION".into(), REREAD_S.to_string()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }

    /// Sets seat `i`'s wall clock `offset_ms` milliseconds off the host's (negative: behind).
    pub fn set(&self, i: usize, offset_ms: i64) -> Result<(), String> {
        let file = self.file(i);
        let sign = if offset_ms < 0 { '-' } else { '+' };
        let abs = offset_ms.unsigned_abs();
        let spec = format!("{sign}{}.{:03}s\n", abs / 1000, abs % 1000);
        // Written whole and renamed, so libfaketime never reads half a line.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, spec)
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| format!("{}: {e}", file.display()))
    }

    /// Sets every clock right.
    pub fn reset(&self) -> Result<(), String> {
        (0..self.seats).try_for_each(|i| self.set(i, 0))
    }
}
