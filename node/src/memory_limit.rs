//! The memory this process may use, which the default `--quota-bytes` is half of.
//!
//! In a container the kernel kills the node at its cgroup's memory limit, not at the host's
//! memory: a quota derived from a 64 GiB host for a node limited to 2 GiB would never refuse a
//! write before the OOM kill, and since every replica holds the same data, all would be killed
//! together. So the limit is the tighter of the host's physical memory and the cgroup's limit —
//! cgroup v2 `memory.max`, or v1 `memory.limit_in_bytes` — of the cgroup this process is in.

use std::path::{Path, PathBuf};

/// Where the kernel mounts the cgroup hierarchy.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A v1 limit at or above this is "no limit" (the kernel reports a page-rounded `i64::MAX`).
const V1_UNLIMITED: u64 = 1 << 62;

/// The memory this process may use: the host's physical memory or, when tighter, its cgroup's
/// memory limit; `None` when neither can be read. Read once: the quota is checked on every write.
pub(crate) fn limit() -> Option<u64> {
    static LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let physical = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|meminfo| physical_memory(&meminfo));
        let own_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let cgroup = cgroup_limit(Path::new(CGROUP_ROOT), &own_cgroup);
        tighter(physical, cgroup)
    })
}

fn tighter(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn physical_memory(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The memory limit of the cgroup `own_cgroup` (the text of `/proc/self/cgroup`) names, under
/// the hierarchy mounted at `root`: v2 first, then v1. With a cgroup namespace (containers) the
/// own path is `/` and the files sit at the root; without one they sit under the own path, and
/// the root's files are the fallback.
fn cgroup_limit(root: &Path, own_cgroup: &str) -> Option<u64> {
    let own_path = |controller: &str| {
        own_cgroup.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let named = controllers.split(',').any(|name| name == controller);
            named.then(|| PathBuf::from(path.trim_start_matches('/')))
        })
    };
    let candidates = |base: PathBuf, own: Option<PathBuf>, file: &str| {
        let mut paths: Vec<PathBuf> = own
            .map(|own| base.join(own).join(file))
            .into_iter()
            .collect();
        paths.push(base.join(file));
        paths
    };
    // cgroup v2: one hierarchy, named by the empty controller list.
    for path in candidates(root.to_owned(), own_path(""), "memory.max") {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return match text.trim() {
                "max" => None,
                bytes => bytes.parse().ok(),
            };
        }
    }
    // cgroup v1: the memory controller's own hierarchy.
    for path in candidates(
        root.join("memory"),
        own_path("memory"),
        "memory.limit_in_bytes",
    ) {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text
                .trim()
                .parse()
                .ok()
                .filter(|&bytes: &u64| bytes < V1_UNLIMITED);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch cgroup hierarchy with `files` (path, content), removed when dropped.
    fn hierarchy(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("a scratch directory");
        for (path, content) in files {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("scratch dir");
            std::fs::write(path, content).expect("scratch file");
        }
        root
    }

    #[test]
    fn a_v2_limit_is_read_from_the_own_cgroup_or_the_namespace_root() {
        let root = hierarchy(&[("memory.max", "2147483648\n")]);
        assert_eq!(cgroup_limit(root.path(), "0::/\n"), Some(2 << 30));
        let root = hierarchy(&[
            ("memory.max", "max\n"),
            ("kubepods/pod1/memory.max", "1073741824\n"),
        ]);
        assert_eq!(
            cgroup_limit(root.path(), "0::/kubepods/pod1\n"),
            Some(1 << 30)
        );
        let root = hierarchy(&[("memory.max", "max\n")]);
        assert_eq!(cgroup_limit(root.path(), "0::/\n"), None);
    }

    #[test]
    fn a_v1_limit_is_the_fallback_and_its_huge_value_means_none() {
        let root = hierarchy(&[("memory/docker/abc/memory.limit_in_bytes", "536870912\n")]);
        let own = "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n";
        assert_eq!(cgroup_limit(root.path(), own), Some(512 << 20));
        let root = hierarchy(&[("memory/memory.limit_in_bytes", "9223372036854771712\n")]);
        assert_eq!(cgroup_limit(root.path(), "12:memory:/\n"), None);
        let root = hierarchy(&[]);
        assert_eq!(cgroup_limit(root.path(), ""), None);
    }

    #[test]
    fn the_limit_is_the_tighter_of_host_and_cgroup() {
        let meminfo = "MemTotal:       65536000 kB\nMemFree:  1 kB\n";
        let host = physical_memory(meminfo);
        assert_eq!(host, Some(65_536_000 * 1024));
        assert_eq!(tighter(host, Some(2 << 30)), Some(2 << 30));
        assert_eq!(tighter(host, None), host);
        assert_eq!(tighter(None, Some(1 << 30)), Some(1 << 30));
        assert_eq!(tighter(None, None), None);
    }
}
