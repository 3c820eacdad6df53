//! The binaries under test: built once per test process, found in the target directory, and
//! refused when older than the sources they are built from — a stale binary would make every
//! test report on code that no longer exists.
//!
//! The failpoint build of the node (feature `failpoints`) is a binary of its own name,
//! `kvs-node-failpoints`, so that `kvs-node` — the binary that is benchmarked and shipped — never
//! carries failpoints. It is built in the same target directory with the workspace's feature set,
//! so it shares every compiled dependency: only `fail` and `kvs-node` itself are compiled again
//! (a target directory of its own compiled all ~225 dependencies a second time, far too slow).

use std::ffi::OsStr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// Paths of the binaries the harness runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `kvs-node` server.
    pub node: PathBuf,
    /// The `kvsctl` command-line client.
    pub kvsctl: PathBuf,
}

/// Source directories (relative to the workspace root) each binary is built from. `kvsctl`'s own
/// `main` is excluded from the node's set so editing the CLI does not make the node look stale.
const NODE_SOURCES: &[&str] = &["node/src", "node/proto", "client/src", "client/proto"];
const KVSCTL_SOURCES: &[&str] = &["client/src", "client/proto"];
const NODE_EXCLUDES: &[&str] = &["client/src/bin"];

/// Builds the workspace binaries once per test process and returns their paths.
///
/// The profile is `debug` unless `KVS_TEST_PROFILE=release`. Panics when the build fails or a
/// binary is older than its newest source file.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    match BINARIES.get_or_init(build_and_find) {
        Ok(binaries) => binaries,
        Err(msg) => panic!("{msg}"),
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives inside the workspace")
        .to_path_buf()
}

/// [`binaries`] with the failpoint build of the node (see the module docs) as `node`; built
/// once per test process, on first use only.
pub fn failpoint_binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    let usual = binaries();
    let built = BINARIES.get_or_init(|| {
        let target = target_dir(
            &workspace_root(),
            std::env::var_os("CARGO_TARGET_DIR").as_deref(),
        );
        Ok(Binaries {
            node: failpoint_node(&target.join(profile()?))?,
            kvsctl: usual.kvsctl.clone(),
        })
    });
    match built {
        Ok(binaries) => binaries,
        Err(msg) => panic!("{msg}"),
    }
}

/// The failpoint build of the node in `profile_dir` (`<target>/debug`, `<target>/release`, …),
/// built there with cargo (quick when it is up to date) and refused when older than its sources.
pub fn failpoint_node(profile_dir: &Path) -> Result<PathBuf, String> {
    let root = workspace_root();
    let (Some(target), Some(profile)) = (
        profile_dir.parent(),
        profile_dir.file_name().and_then(OsStr::to_str),
    ) else {
        return Err(format!(
            "kvs-tests: {} is not a profile directory of a target directory",
            profile_dir.display()
        ));
    };
    let cargo_profile = if profile == "debug" { "dev" } else { profile };
    // `--workspace` resolves dependency features as the usual build does, so none is rebuilt.
    let mut args = [
        "build",
        "--workspace",
        "--features",
        "kvs-node/failpoints",
        "--bin",
        FAILPOINT_NODE,
        "--profile",
        cargo_profile,
        "--target-dir",
    ]
    .map(OsStr::new)
    .to_vec();
    args.push(target.as_os_str());
    cargo_build(&root, &args)?;
    let node = profile_dir.join(FAILPOINT_NODE);
    check_fresh(&node, &root, NODE_SOURCES, NODE_EXCLUDES)?;
    Ok(node)
}

/// The name of the failpoint build of the node.
const FAILPOINT_NODE: &str = "kvs-node-failpoints";

/// Runs `cargo args…` in the workspace root; on failure, the tail of its output.
fn cargo_build(root: &Path, args: &[&OsStr]) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(&cargo);
    build.current_dir(root).args(args);
    // `cargo test` describes the test's own package in these variables; a build script that
    // watches one (ring's watches CARGO_MANIFEST_DIR) would see it change between this build and
    // the user's own, and each would rebuild everything above it again.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(describes_test_package) {
            build.env_remove(name);
        }
    }
    eprintln!("kvs-tests: building binaries: {build:?}");
    let output = build
        .output()
        .map_err(|e| format!("kvs-tests: could not run {cargo:?} to build the binaries: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "kvs-tests: `cargo {}` failed ({}); refusing to test old binaries. Last lines of its \
             output:\n{}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr), 40)
        ));
    }
    Ok(())
}

fn build_and_find() -> Result<Binaries, String> {
    let root = workspace_root();
    let profile = profile()?;
    let mut args: Vec<&OsStr> = ["build", "--workspace", "--bins"].map(OsStr::new).to_vec();
    if profile == "release" {
        args.push("--release".as_ref());
    }
    cargo_build(&root, &args)?;
    let dir = target_dir(&root, std::env::var_os("CARGO_TARGET_DIR").as_deref()).join(profile);
    let binaries = Binaries {
        node: dir.join("kvs-node"),
        kvsctl: dir.join("kvsctl"),
    };
    check_fresh(&binaries.node, &root, NODE_SOURCES, NODE_EXCLUDES)?;
    check_fresh(&binaries.kvsctl, &root, KVSCTL_SOURCES, &[])?;
    Ok(binaries)
}

/// Whether `cargo test` set this variable to describe the package under test.
fn describes_test_package(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(name, "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE")
}

fn profile() -> Result<&'static str, String> {
    match std::env::var("KVS_TEST_PROFILE").as_deref() {
        Err(_) | Ok("" | "debug" | "dev") => Ok("debug"),
        Ok("release") => Ok("release"),
        Ok(other) => Err(format!(
            "kvs-tests: KVS_TEST_PROFILE={other:?} is neither `debug` nor `release`"
        )),
    }
}

/// The cargo target directory: `CARGO_TARGET_DIR` (relative to the workspace root, where the
/// harness runs cargo) or `<root>/target`.
fn target_dir(root: &Path, from_env: Option<&OsStr>) -> PathBuf {
    match from_env {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// Fails when `binary` is missing or older than the newest `.rs`/`.proto` file under `dirs`.
fn check_fresh(binary: &Path, root: &Path, dirs: &[&str], excludes: &[&str]) -> Result<(), String> {
    let built = std::fs::metadata(binary)
        .and_then(|m| m.modified())
        .map_err(|e| {
            format!(
                "kvs-tests: binary {} not found after the build: {e}",
                binary.display()
            )
        })?;
    let excludes: Vec<PathBuf> = excludes.iter().map(|d| root.join(d)).collect();
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    for dir in dirs {
        newest_source(&root.join(dir), &excludes, &mut newest);
    }
    match newest {
        Some((source, modified)) if modified > built => Err(format!(
            "kvs-tests: {} is older than {} — the build did not refresh it (is CARGO_TARGET_DIR \
             pointing elsewhere, or did the build fail?); refusing to test a stale binary",
            binary.display(),
            source.display()
        )),
        _ => Ok(()),
    }
}

fn newest_source(dir: &Path, excludes: &[PathBuf], newest: &mut Option<(PathBuf, SystemTime)>) {
    if excludes.iter().any(|e| e == dir) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            newest_source(&path, excludes, newest);
            continue;
        }
        let is_source = matches!(
            path.extension().and_then(OsStr::to_str),
            Some("rs" | "proto")
        );
        let Ok(modified) = meta.modified() else {
            continue;
        };
        if is_source && newest.as_ref().is_none_or(|(_, t)| modified > *t) {
            *newest = Some((path, modified));
        }
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::time::Duration;

    use super::*;

    fn touch(path: &Path, at: SystemTime) {
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create dirs");
        let file = File::create(path).expect("create file");
        file.set_modified(at).expect("set mtime");
    }

    #[test]
    fn target_dir_follows_cargo_target_dir() {
        let root = Path::new("/ws");
        assert_eq!(target_dir(root, None), Path::new("/ws/target"));
        assert_eq!(
            target_dir(root, Some(OsStr::new(""))),
            Path::new("/ws/target")
        );
        assert_eq!(
            target_dir(root, Some(OsStr::new("out"))),
            Path::new("/ws/out")
        );
        assert_eq!(
            target_dir(root, Some(OsStr::new("/abs/t"))),
            Path::new("/abs/t")
        );
    }

    #[test]
    fn a_binary_older_than_a_source_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let bin = root.path().join("target/debug/kvs-node");
        touch(
            &root.path().join("node/src/lib.rs"),
            now - Duration::from_secs(60),
        );
        touch(&bin, now - Duration::from_secs(30));
        assert_eq!(
            check_fresh(&bin, root.path(), NODE_SOURCES, NODE_EXCLUDES),
            Ok(())
        );

        touch(&root.path().join("client/proto/kvs.proto"), now);
        let err = check_fresh(&bin, root.path(), NODE_SOURCES, NODE_EXCLUDES).expect_err("stale");
        assert!(err.contains("kvs.proto"), "{err}");
    }

    #[test]
    fn only_sources_the_binary_is_built_from_count() {
        let root = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let bin = root.path().join("target/debug/kvs-node");
        touch(&bin, now - Duration::from_secs(30));
        touch(&root.path().join("client/src/bin/kvsctl.rs"), now);
        touch(&root.path().join("node/src/notes.txt"), now);
        assert_eq!(
            check_fresh(&bin, root.path(), NODE_SOURCES, NODE_EXCLUDES),
            Ok(())
        );
    }

    #[test]
    fn a_missing_binary_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let err = check_fresh(&root.path().join("nope"), root.path(), NODE_SOURCES, &[])
            .expect_err("missing");
        assert!(err.contains("not found"), "{err}");
    }
}
