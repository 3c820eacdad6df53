//! The nodes' power supply for the `power` nemesis: each node's data directory is a powerfs
//! volume of its own (`crate::powerfs`), so cutting a node's power is `kill -9` plus throwing
//! away everything its disk had not fsynced, and the node restarts on what is left.

use std::path::Path;
use std::path::PathBuf;

use tempfile::TempDir;

use crate::powerfs::PowerFsProcess;

/// One powerfs volume per node seat, mounted as `data<i>` under a directory of their own.
#[derive(Debug)]
pub struct PowerSupply {
    // Dropped first: the volumes are unmounted before their directory is removed.
    volumes: Vec<PowerFsProcess>,
    dir: TempDir,
}

impl PowerSupply {
    /// Mounts a volume for each of `seats` node seats with the `powerfs` tool at `binary`.
    pub fn install(binary: &Path, seats: usize) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("kvs-power-")
            .tempdir()
            .map_err(|e| format!("cannot make a directory for the volumes: {e}"))?;
        let volumes = (0..seats)
            .map(|i| PowerFsProcess::mount(binary, &dir.path().join(format!("data{i}"))))
            .collect::<Result<_, _>>()?;
        Ok(Self { volumes, dir })
    }

    /// Where the nodes' data directories are (`ClusterOptions::data_root`).
    pub fn data_root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Cuts the power of seat `i`'s disk; its node must be dead already.
    pub fn cut(&mut self, i: usize) -> Result<(), String> {
        self.volumes[i].cut()
    }
}
