//! KvsBackup end to end: the real backup `reconcile` of `kvs-operator` against real `kvs-node`
//! processes and a real S3-compatible server (moto), with Kubernetes played by the fake API
//! server. A backup reaches Completed with the checksum `kvsctl snapshot status` reports for
//! its object; a backup whose leader is killed mid-stream is Failed and leaves no object at all
//! (no complete-looking object, no open multipart upload), and the next backup succeeds.

use std::sync::Arc;
use std::time::Duration;

use kvs_client::proto;
use kvs_client::{Client, ClientOptions};
use kvs_operator::Settings;
use kvs_operator::backup::{self, BackupPhase, KvsBackup};
use kvs_operator::controller::{Config, Context};
use kvs_operator::crd::KvsCluster;
use kvs_operator::metrics::Metrics;
use kvs_tests::{Cluster, ClusterOptions, S3Server, wait_until};
use serde_json::json;

use super::fake_api::{SharedStore, fake_api, lock};
use super::{CLUSTER_PATH, Loopback, NAME, NAMESPACE};

/// Every kind of request the backup `reconcile` makes, as RBAC names it, sorted; the chart's
/// RBAC must grant each (t96).
pub(crate) const BACKUP_CALLS: &[(&str, &str, &str)] = &[
    ("create", "events.k8s.io", "events"),
    ("get", "", "secrets"),
    ("get", "kvs.io", "kvsclusters"),
    ("patch", "kvs.io", "kvsbackups/status"),
];

const BACKUPS_PATH: &str = "/apis/kvs.io/v1alpha1/namespaces/shop/kvsbackups";
const SECRET: &str = "backup-credentials";
/// Small keys the first backup must hold exactly.
const KEYS: usize = 500;
/// Large values added before the backup that loses its leader, so its stream takes a while.
const LARGE_VALUES: usize = 96;
const LARGE_VALUE_BYTES: usize = 512 * 1024;
/// How long one backup may take.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(240);

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

fn put(key: String, value: Vec<u8>) -> proto::Op {
    proto::Op {
        op: Some(proto::op::Op::Put(proto::PutOp {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

/// Creates the KvsBackup `name` in the fake API server.
fn create_backup(store: &SharedStore, s3: &S3Server, name: &str) -> KvsBackup {
    let mut backup: KvsBackup = serde_json::from_value(json!({
        "apiVersion": "kvs.io/v1alpha1", "kind": "KvsBackup",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": format!("uid-{name}")},
        "spec": {"cluster": NAME, "destination": {
            "url": s3.url("kvs"), "endpoint": s3.endpoint(), "region": "us-east-1",
            "credentialsSecret": SECRET,
        }},
    }))
    .expect("a valid KvsBackup");
    backup.metadata.generation = Some(1);
    lock(store).objects.insert(
        format!("{BACKUPS_PATH}/{name}"),
        serde_json::to_value(&backup).expect("serializes"),
    );
    backup
}

fn stored_backup(store: &SharedStore, name: &str) -> KvsBackup {
    let object = lock(store).objects[&format!("{BACKUPS_PATH}/{name}")].clone();
    serde_json::from_value(object).expect("a valid KvsBackup")
}

async fn run_backup(store: &SharedStore, context: &Arc<Context>, backup: KvsBackup) -> KvsBackup {
    let name = backup.metadata.name.clone().expect("named");
    tokio::time::timeout(
        BACKUP_TIMEOUT,
        backup::reconcile(Arc::new(backup), context.clone()),
    )
    .await
    .expect("the backup ends in time")
    .expect("the reconcile records its outcome");
    stored_backup(store, &name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_complete_with_their_checksum_and_a_lost_leader_fails_one_cleanly() {
    let s3 = S3Server::start().await;
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
    write(
        &cluster,
        (0..KEYS)
            .map(|i| put(format!("key-{i}"), format!("value-{i}").into_bytes()))
            .collect(),
        100,
    )
    .await;

    let store = SharedStore::default();
    let (client, server) = fake_api(store.clone());
    let ports = (0..cluster.len())
        .map(|i| {
            let address = cluster.node(i).address();
            address
                .rsplit(':')
                .next()
                .expect("a port")
                .parse()
                .expect("a port")
        })
        .collect();
    let config = Config {
        default_image: "kvs:1".into(),
        settings: Settings::default(),
        lease: None,
        watch_namespace: None,
        resolver: Arc::new(Loopback { ports }),
        metrics: Arc::new(Metrics::default()),
    };
    let context = Arc::new(Context::new(client, &config));
    let mut kvs_cluster = KvsCluster::new(
        NAME,
        serde_json::from_value(json!({"replicas": 3, "storage": {"inMemory": true}}))
            .expect("a valid spec"),
    );
    kvs_cluster.metadata.namespace = Some(NAMESPACE.into());
    kvs_cluster.metadata.uid = Some("uid-kvscluster".into());
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        // "testing", base64.
        "data": {"AWS_ACCESS_KEY_ID": "dGVzdGluZw==", "AWS_SECRET_ACCESS_KEY": "dGVzdGluZw=="},
    });
    {
        let mut store = lock(&store);
        store.objects.insert(
            CLUSTER_PATH.into(),
            serde_json::to_value(&kvs_cluster).expect("serializes"),
        );
        store.objects.insert(
            format!("/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}"),
            secret,
        );
    }

    let first = run_backup(&store, &context, create_backup(&store, &s3, "first")).await;
    let status = first.status.expect("a status");
    assert_eq!(status.phase, Some(BackupPhase::Completed), "{status:?}");
    assert_eq!(status.keys, Some(KEYS as u64));
    let url = status.url.clone().expect("the object's URL");
    assert_eq!(url, s3.url(&format!("kvs/{NAME}/first.kvs")));
    let checked = cluster
        .cli()
        .with_env(s3.env())
        .run(["-o", "json", "snapshot", "status", &url])
        .await
        .json();
    assert_eq!(status.checksum.as_deref(), checked["checksum"].as_str());
    assert_eq!(status.bytes, checked["bytes"].as_u64());
    assert_eq!(status.last_index, checked["last_index"].as_u64());
    assert!(status.started_at.is_some() && status.completed_at.is_some());

    // Enough data that the stream is still running when its leader dies.
    write(
        &cluster,
        (0..LARGE_VALUES)
            .map(|i| put(format!("large-{i}"), vec![i as u8; LARGE_VALUE_BYTES]))
            .collect(),
        3,
    )
    .await;
    let leader = cluster.leader().await;
    let cut = create_backup(&store, &s3, "cut");
    let running = tokio::spawn({
        let (store, context) = (store.clone(), context.clone());
        async move { run_backup(&store, &context, cut).await }
    });
    wait_until(BACKUP_TIMEOUT, "the upload has started", || async {
        s3.open_uploads().await > 0
    })
    .await;
    cluster.kill(leader);
    let cut = running.await.expect("the backup task does not panic");
    let status = cut.status.expect("a status");
    assert_eq!(status.phase, Some(BackupPhase::Failed), "{status:?}");
    assert!(
        status.error.is_some() && status.checksum.is_none(),
        "{status:?}"
    );
    assert_eq!(
        s3.keys(&format!("kvs/{NAME}/")).await,
        vec![format!("kvs/{NAME}/first.kvs")],
        "a failed backup leaves no object"
    );
    assert_eq!(s3.open_uploads().await, 0, "the failed upload was aborted");

    let later = run_backup(&store, &context, create_backup(&store, &s3, "later")).await;
    let status = later.status.expect("a status");
    assert_eq!(status.phase, Some(BackupPhase::Completed), "{status:?}");
    assert_eq!(status.keys, Some((KEYS + LARGE_VALUES) as u64));
    let served = lock(&store).served.clone();
    let served: Vec<(&str, &str, &str)> = served
        .iter()
        .map(|call| (call.verb, call.group.as_str(), call.resource.as_str()))
        .collect();
    assert_eq!(
        served, BACKUP_CALLS,
        "the kinds of API request reconcile made"
    );
    server.abort();
}
