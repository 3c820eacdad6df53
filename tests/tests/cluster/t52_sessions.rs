//! Client sessions under load and eviction: a `Client` shared by many tasks never reports an
//! outcome as unknown for a write it merely retried, every acknowledged write is readable, and a
//! retry from a session the cluster evicted is never applied again.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kvs_client::Client;
use kvs_client::ClientOptions;
use kvs_client::proto::BatchRequest;
use kvs_client::proto::IncrementOp;
use kvs_client::proto::Op;
use kvs_client::proto::WriteId;
use kvs_client::proto::op;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use tokio::time::Instant;

/// How long the writers run: the minute.
const WRITE_FOR: Duration = Duration::from_secs(60);
/// Keys each task cycles over, so the final read is of a bounded set.
const KEYS_PER_TASK: u64 = 16;

/// What one task wrote and was acknowledged: its key slots' last acknowledged values, and the
/// errors it saw.
struct TaskLog {
    last_acked: BTreeMap<String, String>,
    errors: Vec<String>,
    writes: u64,
}

/// Writes `put` in a closed loop through `client` for [`WRITE_FOR`].
async fn write_loop(client: Client, task: usize) -> TaskLog {
    let mut log = TaskLog {
        last_acked: BTreeMap::new(),
        errors: Vec::new(),
        writes: 0,
    };
    let until = Instant::now() + WRITE_FOR;
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let key = format!("t{task}/{}", n % KEYS_PER_TASK);
        let value = n.to_string();
        match client.put(key.clone(), value.clone(), None).await {
            Ok(()) => {
                log.writes += 1;
                log.last_acked.insert(key, value);
            }
            Err(err) => {
                log.errors.push(err.to_string());
                // The key's value is unknown from here on; it is not checked.
                log.last_acked.remove(&key);
            }
        }
    }
    log
}

/// Runs `tasks` tasks over `clients` (task t uses client t % clients.len()), then checks that
/// none saw an error and that every key holds its task's last acknowledged value.
async fn shared_clients_write_without_errors(
    cluster: &Cluster,
    clients: Vec<Client>,
    tasks: usize,
) {
    let running: Vec<_> = (0..tasks)
        .map(|task| tokio::spawn(write_loop(clients[task % clients.len()].clone(), task)))
        .collect();
    let mut logs = Vec::new();
    for task in running {
        logs.push(task.await.expect("writer task panicked"));
    }
    let errors: Vec<&String> = logs.iter().flat_map(|log| &log.errors).collect();
    let writes: u64 = logs.iter().map(|log| log.writes).sum();
    assert!(
        errors.is_empty(),
        "{} of {} writes failed; the first: {:?}",
        errors.len(),
        writes + errors.len() as u64,
        &errors[..errors.len().min(5)]
    );
    assert!(writes > 0, "no write was acknowledged");

    let reader = Client::connect(cluster.endpoints(), ClientOptions::default()).expect("client");
    for (key, value) in logs.iter().flat_map(|log| &log.last_acked) {
        let read = reader
            .get(key.clone(), false)
            .await
            .unwrap_or_else(|e| panic!("reading {key}: {e}"));
        assert_eq!(
            read.map(|kv| kv.value),
            Some(Bytes::from(value.clone())),
            "{key} lost its last acknowledged write"
        );
    }
}

fn durable() -> ClusterOptions {
    ClusterOptions {
        durable: true,
        ..ClusterOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_tasks_sharing_one_client_see_no_errors() {
    let cluster = Cluster::start(3, durable()).await;
    cluster.leader().await;
    let client = Client::connect(cluster.endpoints(), ClientOptions::default()).expect("client");
    shared_clients_write_without_errors(&cluster, vec![client], 64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_shared_by_eight_tasks_each_over_all_members_see_no_errors() {
    let cluster = Cluster::start(3, durable()).await;
    cluster.leader().await;
    let endpoints = cluster.endpoints();
    let clients = (0..8)
        .map(|c| {
            // Each client starts at a different member.
            let mut mine = endpoints.clone();
            mine.rotate_left(c % endpoints.len());
            Client::connect(mine, ClientOptions::default()).expect("client")
        })
        .collect();
    shared_clients_write_without_errors(&cluster, clients, 64).await;
}

fn increment(client_id: u64, sequence: u64) -> BatchRequest {
    BatchRequest {
        ops: vec![Op {
            op: Some(op::Op::Increment(IncrementOp {
                key: Bytes::from_static(b"evicted"),
                delta: 1,
            })),
        }],
        write_id: Some(WriteId {
            client_id,
            sequence,
            acked_below: sequence,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_from_an_evicted_session_is_answered_session_expired() {
    const MAX_SESSIONS: u64 = 4;
    let options = ClusterOptions {
        max_sessions: Some(MAX_SESSIONS),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).await;
    let leader = cluster.leader().await;
    let evicted = rand::random::<u64>();
    cluster
        .kv(leader)
        .batch(increment(evicted, 1))
        .await
        .expect("the first increment");
    // As many newer clients as the cluster keeps sessions for push the first one out.
    for _ in 0..MAX_SESSIONS {
        let other = Client::connect(cluster.endpoints(), ClientOptions::default()).expect("client");
        other
            .put("other", "x", None)
            .await
            .expect("another client's write");
    }

    let retry = cluster
        .kv(leader)
        .batch(increment(evicted, 1))
        .await
        .expect_err("a retry from an evicted session is not answered as applied");
    assert_eq!(retry.code(), tonic::Code::DataLoss, "{retry:?}");
    assert!(
        retry.message().contains("session expired, outcome unknown"),
        "{retry:?}"
    );
    let value = cluster.get(leader, "evicted").await.expect("read");
    assert_eq!(
        value.as_deref(),
        Some(&b"1"[..]),
        "the retry was applied again"
    );

    // The client's next write was never applied: it opens a session again.
    let next = cluster
        .kv(leader)
        .batch(increment(evicted, 2))
        .await
        .expect("a newer write of the evicted client")
        .into_inner();
    assert_eq!(next.results.first().map(|r| r.integer), Some(2), "{next:?}");
}

/// Past the tombstones (kept for the last `--max-sessions` evictions) a client the cluster has
/// forgotten altogether is still never applied again when its watermark says it had a session,
/// and a `Client` answered "session expired" goes on under a fresh id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_a_session_forgotten_past_its_tombstone_is_never_applied() {
    const MAX_SESSIONS: u64 = 2;
    let options = ClusterOptions {
        max_sessions: Some(MAX_SESSIONS),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(3, options).await;
    let leader = cluster.leader().await;
    let forgotten = rand::random::<u64>();
    cluster
        .kv(leader)
        .batch(increment(forgotten, 1))
        .await
        .expect("the first increment");
    let evicted = Client::connect(cluster.endpoints(), ClientOptions::default()).expect("client");
    evicted
        .put("mine", "1", None)
        .await
        .expect("the evicted client's first write");
    // Enough newer clients to evict both and then drop both tombstones.
    for _ in 0..3 * MAX_SESSIONS {
        let other = Client::connect(cluster.endpoints(), ClientOptions::default()).expect("client");
        other
            .put("other", "x", None)
            .await
            .expect("another client's write");
    }

    let next = cluster
        .kv(leader)
        .batch(increment(forgotten, 2))
        .await
        .expect_err("a write of a forgotten session is not applied");
    assert_eq!(next.code(), tonic::Code::DataLoss, "{next:?}");
    assert!(
        next.message().contains("session expired, outcome unknown"),
        "{next:?}"
    );
    let value = cluster.get(leader, "evicted").await.expect("read");
    assert_eq!(
        value.as_deref(),
        Some(&b"1"[..]),
        "the forgotten client's write was applied"
    );

    let expired = evicted
        .put("mine", "2", None)
        .await
        .expect_err("the evicted client's session is forgotten");
    assert!(
        matches!(expired, kvs_client::Error::OutcomeUnknown { .. }),
        "{expired:?}"
    );
    evicted
        .put("mine", "3", None)
        .await
        .expect("the client goes on under a fresh id");
    let value = cluster.get(leader, "mine").await.expect("read");
    assert_eq!(value.as_deref(), Some(&b"3"[..]));
}
