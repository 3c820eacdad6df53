//! Backup and restore with `kvsctl snapshot`: a save through a follower streams a consistent
//! copy from the leader, `status` checks it offline and refuses damaged files, and `restore`
//! seeds a new cluster with exactly the same keys — the round trip's checksums match.

use std::time::Duration;

use kvs_client::proto;
use kvs_client::{Client, ClientOptions};
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::exit;
use kvs_tests::wait_until;

use crate::other_than;

const KEYS: usize = 3000;

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

/// Small keys, a few with a TTL, binary values, and values large enough to span many chunks.
async fn fill(cluster: &Cluster) {
    let client = Client::connect(cluster.endpoints(), ClientOptions::default()).expect("client");
    let mut ops: Vec<proto::Op> = (0..KEYS)
        .map(|i| {
            let ttl = (i % 10 == 0).then_some(Duration::from_secs(3600));
            put(format!("key-{i}"), format!("value-{i}").into_bytes(), ttl)
        })
        .collect();
    ops.push(put("binary".into(), vec![0, 255, 10, 13, 0], None));
    for i in 0..4 {
        ops.push(put(
            format!("large-{i}"),
            vec![b'a' + i as u8; 300_000],
            None,
        ));
    }
    for chunk in ops.chunks(100) {
        client
            .batch(proto::BatchRequest {
                ops: chunk.to_vec(),
                ..Default::default()
            })
            .await
            .expect("the batch is applied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster_with_the_same_checksum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.kvs");
    let file_arg = file.to_str().expect("utf-8 path");
    let options = ClusterOptions {
        durable: true,
        ..ClusterOptions::default()
    };
    let source = Cluster::start(3, options.clone()).await;
    fill(&source).await;

    let follower = other_than(&source, source.leader().await);
    let saved = source
        .cli_at(follower)
        .run(["-o", "json", "snapshot", "save", file_arg])
        .await
        .json();
    let stored_keys = (KEYS + 5) as u64;
    assert_eq!(saved["keys"], stored_keys, "{saved}");
    assert!(!dir.path().join("backup.kvs.part").exists());
    let source_status = source.kvsctl(["-o", "json", "status"]).await.json();
    assert_eq!(saved["cluster_id"], source_status["cluster_id"]);

    let status = source
        .kvsctl(["-o", "json", "snapshot", "status", file_arg])
        .await
        .json();
    for field in ["keys", "bytes", "last_index", "last_term", "checksum"] {
        assert_eq!(status[field], saved[field], "{field}: {status} vs {saved}");
    }
    let file_len = std::fs::metadata(&file).expect("the backup exists").len();
    assert_eq!(status["bytes"], file_len);
    assert!(status["last_index"].as_u64() > Some(KEYS as u64 / 100));
    assert!(status["last_term"].as_u64() >= Some(1));

    let bytes = std::fs::read(&file).expect("read the backup");
    let damaged = dir.path().join("damaged.kvs");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    std::fs::write(&damaged, &flipped).expect("write");
    let refused = source
        .kvsctl(["snapshot", "status", damaged.to_str().expect("utf-8")])
        .await;
    assert_eq!(refused.code, Some(exit::NOT_APPLIED), "{refused}");
    assert!(refused.stderr.contains("checksum mismatch"), "{refused}");
    std::fs::write(&damaged, &bytes[..bytes.len() - 100]).expect("write");
    let refused = source
        .kvsctl(["snapshot", "status", damaged.to_str().expect("utf-8")])
        .await;
    assert_eq!(refused.code, Some(exit::NOT_APPLIED), "{refused}");
    assert!(refused.stderr.contains("truncated"), "{refused}");
    drop(source);

    let target = Cluster::start(1, options).await;
    let damaged_restore = target
        .kvsctl(["snapshot", "restore", damaged.to_str().expect("utf-8")])
        .await;
    assert_eq!(
        damaged_restore.code,
        Some(exit::NOT_APPLIED),
        "{damaged_restore}"
    );
    let restored = target
        .kvsctl(["-o", "json", "snapshot", "restore", file_arg])
        .await
        .json();
    assert_eq!(restored["keys"], stored_keys, "{restored}");
    let again = target.kvsctl(["snapshot", "restore", file_arg]).await;
    assert_eq!(again.code, Some(exit::NOT_APPLIED), "{again}");
    assert!(again.stderr.contains("empty cluster"), "{again}");

    assert_eq!(target.kvsctl(["get", "key-7"]).await.ok(), "value-7\n");
    let resaved = target
        .kvsctl([
            "-o",
            "json",
            "snapshot",
            "save",
            dir.path().join("again.kvs").to_str().expect("utf-8"),
        ])
        .await
        .json();
    assert_eq!(resaved["keys"], saved["keys"]);
    assert_eq!(
        resaved["checksum"], saved["checksum"],
        "the restored cluster holds exactly the saved keys, values and expiries"
    );
    assert_ne!(resaved["cluster_id"], saved["cluster_id"]);
}

/// `restore` decides that the cluster is empty from a linearizable count: a follower that has
/// not yet received the latest write still answers that the cluster holds it, and the restore
/// through that follower is refused before it writes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_through_a_lagging_follower_into_a_non_empty_cluster_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.kvs");
    let file_arg = file.to_str().expect("utf-8 path");
    let options = ClusterOptions {
        fault_control: true,
        request_timeout: Duration::from_secs(20),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).await;
    cluster.kvsctl(["put", "saved", "v"]).await.ok();
    cluster.kvsctl(["snapshot", "save", file_arg]).await.ok();
    cluster.kvsctl(["del", "saved"]).await.ok();
    let leader = cluster.leader().await;
    let follower = other_than(&cluster, leader);
    wait_until(
        Duration::from_secs(30),
        "the follower holds no key",
        || async {
            cluster
                .status(follower)
                .await
                .is_ok_and(|status| status.keys == 0)
        },
    )
    .await;

    // Everything the follower sends or receives over peer links is now held a while: the write
    // below commits without it, and it holds no key for that while. (Short enough that the
    // follower's read-index round to the leader fits one attempt of the client.)
    cluster.slow_down(&[follower], Duration::from_millis(250), Duration::ZERO);
    cluster.faults_in_force().await;
    cluster.cli_at(leader).run(["put", "live", "v"]).await.ok();
    let lagging = cluster.status(follower).await.expect("follower status");
    assert_eq!(lagging.keys, 0, "the follower lags: the test needs it to");

    let refused = cluster
        .cli_at(follower)
        .run(["--timeout", "30s", "snapshot", "restore", file_arg])
        .await;
    assert_eq!(refused.code, Some(exit::NOT_APPLIED), "{refused}");
    assert!(refused.text().contains("empty cluster"), "{refused}");
    cluster.heal();
    let saved = cluster.get(leader, "saved").await;
    assert!(matches!(saved, Ok(None)), "nothing was restored: {saved:?}");
}

/// A node streams at most `--max-backups` backups at once: while one stream is held open
/// unread, `snapshot save` is refused (exit 3, surely nothing started) naming the flag, and once
/// the held stream is dropped a backup works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_past_max_backups_is_refused_until_one_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.kvs");
    let file_arg = file.to_str().expect("utf-8 path");
    let options = ClusterOptions {
        extra_args: vec!["--max-backups".into(), "1".into()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(1, options).await;
    // Far more than the encoder's chunks ahead and the HTTP/2 windows hold: the held stream's
    // encoder cannot finish while nobody reads.
    let client = Client::connect(cluster.endpoints(), ClientOptions::default()).expect("client");
    for i in 0..16 {
        client
            .batch(proto::BatchRequest {
                ops: vec![put(format!("large-{i}"), vec![b'x'; 900_000], None)],
                ..Default::default()
            })
            .await
            .expect("the batch is applied");
    }

    let held = client.snapshot().await.expect("the first backup starts");
    let refused = cluster.kvsctl(["snapshot", "save", file_arg]).await;
    assert_eq!(refused.code, Some(exit::NOT_APPLIED), "{refused}");
    assert!(refused.stderr.contains("--max-backups"), "{refused}");
    assert!(!file.exists(), "a refused backup leaves no file");

    drop(held);
    drop(client);
    wait_until(
        Duration::from_secs(30),
        "a backup is served once the held one is dropped",
        || async { cluster.kvsctl(["snapshot", "save", file_arg]).await.code == Some(exit::OK) },
    )
    .await;
    let status = cluster
        .kvsctl(["-o", "json", "snapshot", "status", file_arg])
        .await
        .json();
    assert_eq!(status["keys"], 16, "{status}");
}
