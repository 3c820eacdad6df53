//! Backups in object storage with `kvsctl snapshot save|status|restore s3://…`, against a real
//! S3-compatible server (moto) on 127.0.0.1: the object is the backup file byte for byte (another
//! S3 client's download of it has the same status), restore seeds a new cluster with the same
//! data, the transfer streams (kvsctl's peak memory stays well under the backup's size), and a
//! damaged or truncated object is refused.

use std::time::Duration;

use kvs_client::proto;
use kvs_client::{Client, ClientOptions};
use kvs_tests::{Cluster, ClusterOptions, Kvsctl, S3Server, exit};

/// Large values: the backup spans many multipart parts (5 MiB each).
const LARGE_VALUES: usize = 128;
const LARGE_VALUE_BYTES: usize = 512 * 1024;
const SMALL_KEYS: usize = 2000;
/// How often kvsctl's peak memory is sampled while it runs.
const RSS_POLL: Duration = Duration::from_millis(20);

fn put(key: String, value: Vec<u8>, ttl: Option<Duration>) -> proto::Op {
    proto::Op {
        op: Some(proto::op::Op::Put(proto::PutOp {
            key: key.into(),
            value: value.into(),
            ttl_ms: ttl.map(|t| t.as_millis() as u64),
            ..Default::default()
        })),
    }
}

async fn write(cluster: &Cluster, ops: Vec<proto::Op>, per_batch: usize) {
    let client = Client::connect(cluster.endpoints(), ClientOptions::default()).expect("client");
    for chunk in ops.chunks(per_batch) {
        client
            .batch(proto::BatchRequest {
                ops: chunk.to_vec(),
                ..Default::default()
            })
            .await
            .expect("the batch is applied");
    }
}

/// Small keys (some with a TTL) and enough large values for a backup of about 64 MiB.
async fn fill(cluster: &Cluster) {
    let small = (0..SMALL_KEYS)
        .map(|i| {
            let ttl = (i % 10 == 0).then_some(Duration::from_secs(3600));
            put(format!("key-{i}"), format!("value-{i}").into_bytes(), ttl)
        })
        .collect();
    write(cluster, small, 100).await;
    let large = (0..LARGE_VALUES)
        .map(|i| {
            let value = (0..LARGE_VALUE_BYTES).map(|j| (i * 31 + j) as u8).collect();
            put(format!("large-{i}"), value, None)
        })
        .collect();
    write(cluster, large, 3).await;
}

/// Runs kvsctl to its end, sampling its peak resident memory (`VmHWM`, which only grows) from
/// `/proc`; returns the output and the last peak seen, in bytes.
async fn run_measured(kvsctl: &Kvsctl, args: &[&str]) -> (std::process::Output, u64) {
    let mut child = kvsctl
        .command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kvsctl");
    let status_file = format!("/proc/{}/status", child.id().expect("running"));
    let mut peak = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(hwm) = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|status| vm_hwm_bytes(&status))
        {
            peak = peak.max(hwm);
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kvsctl {args:?} hangs"
        );
        tokio::time::sleep(RSS_POLL).await;
    }
    (child.wait_with_output().await.expect("output"), peak)
}

fn vm_hwm_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn json(output: &std::process::Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "kvsctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

const SUMMARY_FIELDS: [&str; 6] = [
    "keys",
    "bytes",
    "last_index",
    "last_term",
    "checksum",
    "cluster_id",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_backup_restores_into_a_new_cluster_and_streams() {
    let s3 = S3Server::start().await;
    let url = s3.url("nightly/backup.kvs");
    let source = Cluster::start(1, ClusterOptions::default()).await;
    fill(&source).await;

    let cli = source.cli().with_env(s3.env());
    let (saved, peak) = run_measured(&cli, &["-o", "json", "snapshot", "save", &url]).await;
    let saved = json(&saved);
    eprintln!("snapshot save: kvsctl peaked at {peak} bytes");
    let backup_bytes = saved["bytes"].as_u64().expect("bytes");
    assert!(backup_bytes > 12 * 5 * 1024 * 1024, "{saved}");
    assert_eq!(saved["keys"], (SMALL_KEYS + LARGE_VALUES) as u64, "{saved}");
    let save_peak = peak;
    assert_eq!(
        s3.keys("nightly/").await,
        vec!["nightly/backup.kvs".to_owned()]
    );
    assert_eq!(s3.open_uploads().await, 0);

    let status = cli
        .run(["-o", "json", "snapshot", "status", &url])
        .await
        .json();
    let dir = tempfile::tempdir().expect("tempdir");
    let downloaded = dir.path().join("downloaded.kvs");
    s3.download("nightly/backup.kvs", &downloaded).await;
    let file_status = cli
        .run([
            "-o",
            "json",
            "snapshot",
            "status",
            downloaded.to_str().expect("utf-8"),
        ])
        .await
        .json();
    for field in SUMMARY_FIELDS {
        assert_eq!(status[field], saved[field], "{field}: {status} vs {saved}");
        assert_eq!(file_status[field], saved[field], "{field}: {file_status}");
    }
    drop(source);

    let target = Cluster::start(1, ClusterOptions::default()).await;
    let cli = target.cli().with_env(s3.env());
    // kvsctl's own footprint: the same save of an empty cluster.
    let (empty, baseline) = run_measured(&cli, &["snapshot", "save", &s3.url("empty.kvs")]).await;
    assert!(empty.status.success(), "{empty:?}");
    eprintln!("snapshot save of an empty cluster: kvsctl peaked at {baseline} bytes");
    assert!(
        save_peak < baseline + backup_bytes / 2,
        "kvsctl peaked at {save_peak} bytes saving a backup of {backup_bytes} \
         ({baseline} for an empty one): it must stream"
    );
    let (restored, peak) = run_measured(&cli, &["-o", "json", "snapshot", "restore", &url]).await;
    let restored = json(&restored);
    eprintln!("snapshot restore: kvsctl peaked at {peak} bytes");
    assert_eq!(restored["keys"], saved["keys"], "{restored}");
    assert!(
        peak < baseline + backup_bytes / 2,
        "kvsctl peaked at {peak} bytes restoring a backup of {backup_bytes}: it must stream"
    );
    assert_eq!(cli.run(["get", "key-7"]).await.ok(), "value-7\n");
    let resaved = cli
        .run(["-o", "json", "snapshot", "save", &s3.url("again.kvs")])
        .await
        .json();
    assert_eq!(resaved["keys"], saved["keys"]);
    assert_eq!(
        resaved["checksum"], saved["checksum"],
        "the restored cluster holds exactly the saved keys, values and expiries"
    );
    assert_ne!(resaved["cluster_id"], saved["cluster_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_truncated_object_is_refused() {
    let s3 = S3Server::start().await;
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    let ops = (0..200)
        .map(|i| put(format!("key-{i}"), vec![b'v'; 1000], None))
        .collect();
    write(&cluster, ops, 100).await;
    let cli = cluster.cli().with_env(s3.env());
    cli.run(["snapshot", "save", &s3.url("good.kvs")])
        .await
        .ok();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("good.kvs");
    s3.download("good.kvs", &file).await;
    let bytes = std::fs::read(&file).expect("read");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    let damaged = dir.path().join("damaged.kvs");
    std::fs::write(&damaged, &flipped).expect("write");
    s3.upload(&damaged, "damaged.kvs").await;
    std::fs::write(&damaged, &bytes[..bytes.len() - 100]).expect("write");
    s3.upload(&damaged, "truncated.kvs").await;
    drop(cluster);

    let empty = Cluster::start(1, ClusterOptions::default()).await;
    let cli = empty.cli().with_env(s3.env());
    for (key, why) in [
        ("damaged.kvs", "checksum mismatch"),
        ("truncated.kvs", "truncated"),
    ] {
        for command in ["status", "restore"] {
            let refused = cli.run(["snapshot", command, &s3.url(key)]).await;
            assert_eq!(refused.code, Some(exit::NOT_APPLIED), "{refused}");
            assert!(refused.stderr.contains(why), "{refused}");
        }
    }
    let missing = cli
        .run(["snapshot", "status", &s3.url("missing.kvs")])
        .await;
    assert_eq!(missing.code, Some(exit::NOT_APPLIED), "{missing}");
    let status = empty.kvsctl(["-o", "json", "status"]).await.json();
    assert_eq!(status["keys"], 0, "nothing was restored: {status}");
}
