//! Compare-and-swap and write identity: contended increments are counted exactly, and a write
//! retried under the same write ID is applied once.

use bytes::Bytes;
use kvs_client::proto::BatchRequest;
use kvs_client::proto::IncrementOp;
use kvs_client::proto::Op;
use kvs_client::proto::WriteId;
use kvs_client::proto::op;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::Kvsctl;
use kvs_tests::KvsctlOutput;
use kvs_tests::exit;

use crate::other_than;

const CLIENTS: usize = 8;
const INCREMENTS_PER_CLIENT: u64 = 3;
const ATTEMPTS_PER_CLIENT: usize = 30;

/// Read-then-CAS increments until `INCREMENTS_PER_CLIENT` succeed or attempts run out; returns
/// the successful CAS count, or the first run that was neither a success nor a failed compare.
async fn increment(kvsctl: Kvsctl) -> Result<u64, KvsctlOutput> {
    let mut succeeded = 0;
    for _ in 0..ATTEMPTS_PER_CLIENT {
        if succeeded == INCREMENTS_PER_CLIENT {
            break;
        }
        let read = kvsctl.run(["get", "counter"]).await;
        let Some(current) = read
            .success()
            .then(|| read.stdout.trim().parse::<u64>().ok())
            .flatten()
        else {
            return Err(read);
        };
        let (expect, new) = (current.to_string(), (current + 1).to_string());
        let cas = kvsctl
            .run(["cas", "counter", "--expect", expect.as_str(), new.as_str()])
            .await;
        match cas.code {
            Some(exit::OK) => succeeded += 1,
            Some(exit::COMPARE_FAILED) => {}
            _ => return Err(cas),
        }
    }
    Ok(succeeded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_cas_increments_are_counted_exactly() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    cluster.kvsctl(["put", "counter", "0"]).await.ok();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(increment(cluster.cli_at(c % cluster.len()))))
        .collect();
    let mut total = 0;
    for client in clients {
        match client.await.expect("client task panicked") {
            Ok(succeeded) => total += succeeded,
            Err(out) => panic!("a CAS client saw neither success nor a failed compare: {out}"),
        }
    }
    assert!(total > 0, "no CAS ever succeeded");

    let read = cluster.kvsctl(["get", "counter"]).await;
    assert_eq!(
        read.ok().trim(),
        total.to_string(),
        "counter vs successful CAS calls"
    );
}

fn increment_request(client_id: u64, sequence: u64) -> BatchRequest {
    BatchRequest {
        ops: vec![Op {
            op: Some(op::Op::Increment(IncrementOp {
                key: Bytes::from_static(b"visits"),
                delta: 1,
            })),
        }],
        write_id: Some(WriteId {
            client_id,
            sequence,
            // A client that sends no watermark: the rule before watermarks.
            acked_below: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_after_a_lost_reply_is_applied_once() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    let leader = cluster.leader().await;
    let follower = other_than(&cluster, leader);
    let client_id = rand::random::<u64>();

    let first = cluster
        .kv(leader)
        .batch(increment_request(client_id, 1))
        .await;
    let first = first.expect("first increment").into_inner();
    // The "retry" goes to another node, as a client whose reply was lost would do.
    let retry = cluster
        .kv(follower)
        .batch(increment_request(client_id, 1))
        .await;
    let retry = retry.expect("retried increment").into_inner();
    let visits = cluster.get(leader, "visits").await.expect("read visits");
    assert_eq!(
        visits.as_deref(),
        Some(&b"1"[..]),
        "the retried increment was applied twice"
    );
    assert_eq!(
        retry, first,
        "a retry must be answered with the first result"
    );

    let next = cluster
        .kv(leader)
        .batch(increment_request(client_id, 2))
        .await;
    let next = next.expect("next increment").into_inner();
    assert_eq!(next.results.first().map(|r| r.integer), Some(2), "{next:?}");
}
