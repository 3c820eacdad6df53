//! Disk space: when the disks under the data directories fill (equal volumes fill together),
//! writes that add data are refused with the NOSPACE alarm before a snapshot or log write fails,
//! so every node stays up, reads and deletes work, and writes come back once space returns.
//!
//! Each node's data directory is a small tmpfs of its own, which needs root (CI runs as root).

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kvs_client::proto::PutRequest;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::exit;
use kvs_tests::wait_until;

const DISK: &str = "64m";
const RESERVE_BYTES: u64 = 16 * 1024 * 1024;
const VALUE_BYTES: usize = 256 * 1024;

/// Small tmpfs mounts, unmounted when dropped.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn tmpfs(dirs: Vec<PathBuf>) -> Mounts {
        let mut mounts = Mounts(Vec::new());
        for dir in dirs {
            std::fs::create_dir_all(&dir).expect("create a mount point");
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={DISK}"), "tmpfs"])
                .arg(&dir)
                .output()
                .expect("run mount");
            assert!(
                out.status.success(),
                "this test mounts a {DISK} tmpfs per node and needs root for it (CI runs as \
                 root): mount {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            mounts.0.push(dir);
        }
        mounts
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
    }
}

fn data_dirs(root: &Path, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| root.join(format!("data{i}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_disk_refuses_writes_that_add_data_and_the_cluster_stays_readable() {
    let root = tempfile::tempdir().expect("a directory for the data directories");
    let _mounts = Mounts::tmpfs(data_dirs(root.path(), 3));
    let options = ClusterOptions {
        durable: true,
        data_root: Some(root.path().to_path_buf()),
        snapshot_every: Some(20),
        extra_args: vec!["--disk-reserve-bytes".into(), RESERVE_BYTES.to_string()],
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(3, options).await;
    let leader = cluster.leader().await;
    let value = vec![b'v'; VALUE_BYTES];
    let mut stored = 0;
    let refusal = loop {
        let request = PutRequest {
            key: format!("fill{stored}").into_bytes().into(),
            value: value.clone().into(),
            ..PutRequest::default()
        };
        match cluster.kv(leader).put(request).await {
            Ok(_) => stored += 1,
            Err(status) => break status,
        }
        assert!(
            stored < 400,
            "{stored} values of {VALUE_BYTES} bytes on {DISK} disks were never refused"
        );
    };
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "refused as not applied: {refusal:?}"
    );
    assert!(
        refusal.message().contains("NOSPACE"),
        "the refusal says why: {refusal:?}"
    );
    assert!(stored > 0, "the first write was refused: {refusal:?}");

    // Free space moves a little as snapshots replace each other and the log is compacted, so a
    // write may pass again now and then; kvsctl sees the same refusal once it is back.
    let small = "v".repeat(64 * 1024);
    let mut passed = 0;
    let refused = loop {
        let out = cluster.kvsctl(["put", "one-more", small.as_str()]).await;
        if !out.success() {
            break out;
        }
        passed += 1;
        assert!(passed < 100, "kvsctl writes were never refused again");
    };
    assert_eq!(refused.code, Some(exit::NOT_APPLIED), "{refused}");
    assert!(
        refused.stderr.contains("NOSPACE"),
        "the refusal says why: {refused}"
    );
    // The alarm is raised while free space is short; a compaction since the refusal may have
    // freed some, so each check that misses it fills the disk again first.
    wait_until(
        Duration::from_secs(60),
        "the leader's status shows the NOSPACE alarm",
        || async {
            let status = cluster.kvsctl_at(leader, ["-o", "json", "status"]).await;
            let alarmed = status.success()
                && status.json()["alarms"]
                    .as_array()
                    .is_some_and(|a| a.contains(&serde_json::json!("NOSPACE")));
            if !alarmed {
                let _ = cluster.kvsctl(["put", "one-more", small.as_str()]).await;
            }
            alarmed
        },
    )
    .await;
    for i in 0..3 {
        assert_eq!(cluster.exited(i), None, "node {i} is still running");
        let read = cluster.kvsctl_at(i, ["get", "fill0"]).await;
        assert!(read.success(), "reads still work on node {i}: {read}");
    }
    for key in 0..stored / 2 {
        let out = cluster.kvsctl(["del", &format!("fill{key}")]).await;
        assert!(out.success(), "deletes still work: {out}");
    }
    wait_until(
        Duration::from_secs(60),
        "writes come back once deletes and a snapshot freed space",
        || async { cluster.kvsctl(["put", "after", "v"]).await.success() },
    )
    .await;
    for i in 0..3 {
        assert_eq!(cluster.exited(i), None, "node {i} is still running");
    }
}
