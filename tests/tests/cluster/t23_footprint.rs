//! Disk footprint: a durable node's data directory stays within the sizing rule of
//! `docs/storage.md` however much is written through it, and `kvsctl status` reports it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use kvs_client::Client;
use kvs_client::ClientOptions;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;

const MIB: u64 = 1 << 20;
/// The smallest journal budget a node accepts.
const LOG_DISK_BYTES: u64 = 64 * MIB;
const VALUE_BYTES: usize = 64 * 1024;
/// A bounded key space: the state stays at `KEYS * VALUE_BYTES` = 16 MiB.
const KEYS: usize = 256;
/// Written in all: many times the journal budget.
const WRITTEN_BYTES: u64 = 6 * LOG_DISK_BYTES;
const WRITERS: usize = 4;

/// Bytes allocated to the files under `dir`, as `du` counts them.
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0; // removed while walked: a released journal
    };
    let mut bytes = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for entry in entries.flatten() {
            bytes += allocated(&entry.path());
        }
    }
    bytes
}

/// The sizing rule of `docs/storage.md` for a state of `state` bytes: four times the journal
/// budget and three times the state (journals, the log since the last snapshot and its tail,
/// and two snapshots: the current one and the one being built).
fn rule_bound(state: u64) -> u64 {
    4 * LOG_DISK_BYTES + 3 * state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directories_stay_within_the_sizing_rule_under_sustained_writes() {
    let options = ClusterOptions {
        durable: true,
        log_disk_bytes: Some(LOG_DISK_BYTES),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).await;
    let leader = cluster.leader().await;
    let written = Arc::new(AtomicU64::new(0));
    // A client per writer, each following the leader and retrying as applications do: what is
    // measured is the disk, not the availability of a loaded 2-core box.
    let client_options = ClientOptions {
        timeout: std::time::Duration::from_secs(60),
        attempt_timeout: std::time::Duration::from_secs(15),
        ..ClientOptions::default()
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client =
                Client::connect(cluster.endpoints(), client_options.clone()).expect("a client");
            let written = written.clone();
            tokio::spawn(async move {
                let mut n = w;
                while written.load(Ordering::Relaxed) < WRITTEN_BYTES {
                    // Random bytes, so the storage engine's compression cannot shrink them.
                    let value: Vec<u8> = (0..VALUE_BYTES).map(|_| rand::random()).collect();
                    client
                        .put(format!("key-{}", n % KEYS), value, None)
                        .await
                        .expect("every write succeeds");
                    written.fetch_add(VALUE_BYTES as u64, Ordering::Relaxed);
                    n += WRITERS;
                }
            })
        })
        .collect();

    let state = (KEYS * VALUE_BYTES) as u64;
    let bound = rule_bound(state);
    let mut largest = vec![0u64; cluster.len()];
    let sample = |largest: &mut Vec<u64>| {
        for (i, seen) in largest.iter_mut().enumerate() {
            *seen = (*seen).max(allocated(&cluster.data_dir(i)));
        }
    };
    for writer in writers {
        while !writer.is_finished() {
            sample(&mut largest);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        writer.await.expect("writer task");
    }
    sample(&mut largest);
    eprintln!(
        "wrote {} MiB; largest data directories (MiB): {:?}; bound {} MiB",
        written.load(Ordering::Relaxed) / MIB,
        largest.iter().map(|b| b / MIB).collect::<Vec<_>>(),
        bound / MIB
    );
    for (i, seen) in largest.iter().enumerate() {
        assert!(
            *seen <= bound,
            "node {i}'s data directory reached {} MiB, past the sizing rule's {} MiB, after {} MiB \
             were written",
            seen / MIB,
            bound / MIB,
            WRITTEN_BYTES / MIB
        );
    }

    let status = cluster
        .kvsctl_at(leader, ["-o", "json", "status"])
        .await
        .json();
    let reported = status["data_dir_bytes"]
        .as_u64()
        .expect("status reports the data directory's size");
    let measured = allocated(&cluster.data_dir(leader));
    assert!(
        reported.abs_diff(measured) <= 64 * MIB,
        "status says {reported} bytes, the directory holds {measured}"
    );
    assert!(
        status["data_dir_free_bytes"].as_u64().unwrap_or(0) > 0,
        "status reports the free space: {status}"
    );
}
