//! Limits: oversized keys, values and batches are refused with a message naming the limit, and
//! values right at the limit replicate under load.

use std::time::Duration;

use bytes::Bytes;
use kvs_client::proto::BatchRequest;
use kvs_client::proto::Op;
use kvs_client::proto::PutOp;
use kvs_client::proto::PutRequest;
use kvs_client::proto::op;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::Writer;
use kvs_tests::exit;

use crate::other_than;

const DEFAULT_MAX_KEY: usize = 4096;
const DEFAULT_MAX_VALUE: usize = 1024 * 1024;
const DEFAULT_MAX_BATCH_OPS: usize = 128;

/// Whether `text` names a byte or count limit, in bytes or in KiB/MiB.
fn names_limit(text: &str, limit: usize) -> bool {
    let mut forms = vec![limit.to_string()];
    if limit.is_multiple_of(1024) {
        forms.extend([
            format!("{} KiB", limit / 1024),
            format!("{}KiB", limit / 1024),
        ]);
    }
    if limit.is_multiple_of(1024 * 1024) {
        forms.extend([
            format!("{} MiB", limit >> 20),
            format!("{}MiB", limit >> 20),
        ]);
    }
    forms.iter().any(|form| text.contains(form.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_the_limit_is_refused_and_one_at_the_limit_accepted() {
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    let too_long = "k".repeat(DEFAULT_MAX_KEY + 1);
    let out = cluster.kvsctl(["put", too_long.as_str(), "v"]).await;
    assert_eq!(out.code, Some(exit::NOT_APPLIED), "{out}");
    assert!(
        names_limit(&out.text(), DEFAULT_MAX_KEY),
        "the message does not name the limit: {out}"
    );

    let longest = "k".repeat(DEFAULT_MAX_KEY);
    cluster.kvsctl(["put", longest.as_str(), "v"]).await.ok();
    let get = cluster.kvsctl(["get", longest.as_str()]).await;
    assert_eq!(get.ok(), "v\n", "{get}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_configured_limit_is_refused_by_kvsctl() {
    let options = ClusterOptions {
        max_value_bytes: Some(1000),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(1, options).await;
    let out = cluster
        .kvsctl(["put", "k", "x".repeat(1001).as_str()])
        .await;
    assert_eq!(out.code, Some(exit::NOT_APPLIED), "{out}");
    assert!(
        names_limit(&out.text(), 1000),
        "the message does not name the limit: {out}"
    );
    cluster
        .kvsctl(["put", "k", "x".repeat(1000).as_str()])
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_default_limit_is_refused_as_invalid() {
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    let request = PutRequest {
        key: Bytes::from_static(b"big"),
        value: Bytes::from(vec![b'x'; DEFAULT_MAX_VALUE + 1]),
        ..Default::default()
    };
    let status = cluster
        .kv(0)
        .put(request)
        .await
        .expect_err("an oversized value is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        names_limit(status.message(), DEFAULT_MAX_VALUE),
        "{status:?}"
    );
    assert_eq!(cluster.get(0, "big").await.expect("read"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_op_limit_is_refused_as_invalid() {
    let cluster = Cluster::start(1, ClusterOptions::default()).await;
    let put = |i: usize| Op {
        op: Some(op::Op::Put(PutOp {
            key: Bytes::from(format!("b{i}")),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        })),
    };
    let request = BatchRequest {
        ops: (0..=DEFAULT_MAX_BATCH_OPS).map(put).collect(),
        ..Default::default()
    };
    let status = cluster
        .kv(0)
        .batch(request)
        .await
        .expect_err("an oversized batch is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        names_limit(status.message(), DEFAULT_MAX_BATCH_OPS),
        "{status:?}"
    );
    assert_eq!(
        cluster.get(0, "b0").await.expect("read"),
        None,
        "part of the batch was applied"
    );
}

/// A 1 MiB value whose bytes depend on `n`, so values cannot be confused.
fn big_value(n: usize) -> Bytes {
    (0..DEFAULT_MAX_VALUE)
        .map(|i| (i % 251) as u8 ^ n as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_at_the_limit_replicate_under_load() {
    const BIG_VALUES: usize = 20;
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    let leader = cluster.leader().await;
    let follower = other_than(&cluster, leader);
    let writer = Writer::spawn(cluster.cli(), "small");
    writer.wait_acked(1, Duration::from_secs(30)).await;
    let before = writer.acked();

    for n in 0..BIG_VALUES {
        // Spread over every node: followers forward the full value to the leader.
        let request = PutRequest {
            key: Bytes::from(format!("big-{n}")),
            value: big_value(n),
            ..Default::default()
        };
        let put = cluster.kv(n % cluster.len()).put(request).await;
        put.unwrap_or_else(|status| panic!("put of 1 MiB value {n}: {status:?}"));
    }
    // Small writes went on while the big ones replicated, not only before or after them.
    let during = writer.acked() - before;
    assert!(
        during >= 5,
        "only {during} small writes were acknowledged while {BIG_VALUES} big values replicated"
    );
    let log = writer.stop().await;
    assert!(
        log.failures().is_empty(),
        "small writes failed beside big ones:\n{}",
        log.failures()
    );

    for n in 0..BIG_VALUES {
        let value = cluster.get(follower, format!("big-{n}")).await;
        let value =
            value.unwrap_or_else(|status| panic!("get of big-{n} on a follower: {status:?}"));
        assert!(
            value == Some(big_value(n)),
            "big-{n} read back wrong from a follower"
        );
    }
    cluster.assert_writes_durable(follower, &log).await;
}

/// A write's reply comes after the write applied, so every reply must fit: a batch of
/// `--max-batch-ops` puts returning previous values of `--max-value-bytes` each is far past the
/// request limit (`--max-batch-bytes` plus framing) and the client library's default message
/// limit, yet comes back whole, also forwarded by a follower; and a `--max-reply-bytes` that
/// could not hold it is refused at start (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_returning_the_largest_previous_values_gets_its_whole_reply() {
    const OPS: usize = 8;
    let options = ClusterOptions {
        max_batch_ops: Some(OPS),
        extra_args: vec![
            "--max-batch-bytes".into(),
            (2 * DEFAULT_MAX_VALUE).to_string(),
        ],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).await;
    let follower = other_than(&cluster, cluster.leader().await);
    let client = kvs_client::Client::connect(
        vec![cluster.node(follower).address()],
        kvs_client::ClientOptions::default(),
    )
    .expect("client");
    let put = |i: usize, value: Bytes| Op {
        op: Some(op::Op::Put(PutOp {
            key: Bytes::from(format!("big-{i}")),
            value,
            ..Default::default()
        })),
    };
    for i in 0..OPS {
        client
            .batch(BatchRequest {
                ops: vec![put(i, big_value(i))],
                ..Default::default()
            })
            .await
            .expect("a largest value is stored");
    }
    let reply = client
        .batch(BatchRequest {
            ops: (0..OPS).map(|i| put(i, Bytes::from_static(b"v"))).collect(),
            return_previous: true,
            ..Default::default()
        })
        .await
        .expect("the applied batch's whole reply");
    assert_eq!(reply.results.len(), OPS);
    for (i, result) in reply.results.iter().enumerate() {
        assert!(
            result.previous.as_ref() == Some(&big_value(i)),
            "op {i}: the previous value comes back whole"
        );
    }
    drop(cluster);

    let small_reply = 4 * DEFAULT_MAX_VALUE;
    let refusing = tokio::process::Command::new(&kvs_tests::binaries().node)
        .args(["--in-memory", "--listen"])
        .arg(format!("127.0.0.1:{}", kvs_tests::free_port()))
        .args(["--max-batch-ops", &OPS.to_string()])
        .args(["--max-reply-bytes", &small_reply.to_string()])
        .kill_on_drop(true)
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(60), refusing)
        .await
        .expect("the node exits at once")
        .expect("run kvs-node");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(exit::USAGE), "{stderr}");
    assert!(
        stderr.contains(&format!("--max-reply-bytes ({small_reply})")),
        "{stderr}"
    );
}
