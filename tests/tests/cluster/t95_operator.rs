//! The operator end to end: the real `reconcile` of `kvs-operator` drives real `kvs-node`
//! processes through a KvsCluster's life — 3 → 5 → 3 → 1 → 3 members under continuous writes,
//! then a middle member whose data is wiped, then a new image — and every acknowledged write
//! survives. The fake API server records every kind of request it serves, so the operator's RBAC
//! can be checked against what it really calls.
//!
//! The harness (`start_operator`, `Operator::converge`/`until`, the fake API server of
//! `fake_api`, also served over HTTP for `kubectl kvs`) is private to this module and so shared
//! with its child modules such as `t95_operator/backup.rs`.
//!
//! Kubernetes is played in-process: a small fake API server (a `tower` service given to
//! `kube::Client::new`) stores the objects the operator applies, patches and deletes, and this
//! test acts as the StatefulSet controller and kubelet — one `kvs-node` process per pod of the
//! applied StatefulSet, killed when its pod is deleted. Nodes run in memory and listen on
//! loopback; the operator's resolver seam maps each ordinal to that node's address, so the same
//! matching code runs as in a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use kvs_client::{Client, ClientOptions};
use kvs_operator::Settings;
use kvs_operator::controller::{self, Config, Context};
use kvs_operator::crd::{KvsCluster, KvsClusterSpec, Phase};
use kvs_operator::metrics::Metrics;
use kvs_operator::observe::{ClusterDns, PodAddress, Resolver};
use kvs_operator::resources::Names;
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub(crate) mod backup;
mod fake_api;

use fake_api::{SharedStore, fake_api, lock};

pub(super) const NAMESPACE: &str = "shop";
pub(super) const NAME: &str = "orders";
pub(super) const CLUSTER_PATH: &str = "/apis/kvs.io/v1alpha1/namespaces/shop/kvsclusters/orders";
const STATEFULSET_PATH: &str = "/apis/apps/v1/namespaces/shop/statefulsets/orders";
const PODS_PATH: &str = "/api/v1/namespaces/shop/pods";
/// Pods the test may ever run (the CRD allows 9 members).
const SEATS: usize = 9;
/// How long one change of the spec may take to be carried out.
const CONVERGE: Duration = Duration::from_secs(120);

/// Every kind of request `reconcile` makes over the scenario, as RBAC names it: (verb, API group,
/// resource), sorted. The chart's RBAC is compared with this list. Not in it, because this
/// scenario never makes them: deleting PersistentVolumeClaims (clusters on disk only), the
/// controller's list and watch of KvsClusters and StatefulSets (the test calls `reconcile`
/// directly), and the operator's Lease.
pub(crate) const RECONCILE_CALLS: &[(&str, &str, &str)] = &[
    ("create", "events.k8s.io", "events"),
    ("delete", "", "pods"),
    ("delete", "networking.k8s.io", "networkpolicies"),
    ("delete", "policy", "poddisruptionbudgets"),
    ("get", "apps", "statefulsets"),
    ("list", "", "persistentvolumeclaims"),
    ("list", "", "pods"),
    ("patch", "", "services"),
    ("patch", "apps", "statefulsets"),
    ("patch", "events.k8s.io", "events"),
    ("patch", "kvs.io", "kvsclusters/status"),
    ("patch", "networking.k8s.io", "networkpolicies"),
    ("patch", "policy", "poddisruptionbudgets"),
];

/// Ordinal k is the node on the k-th reserved loopback port. The operator also resolves
/// ordinals no pod can have here (to recognise members beyond the spec); those keep their
/// in-cluster DNS names, which nothing on this machine answers, so every ordinal still has an
/// address of its own.
pub(super) struct Loopback {
    pub(super) ports: Vec<u16>,
}

impl Resolver for Loopback {
    fn resolve(&self, names: &Names, ordinal: u32) -> PodAddress {
        let Some(port) = self.ports.get(ordinal as usize) else {
            return ClusterDns.resolve(names, ordinal);
        };
        let address = format!("127.0.0.1:{port}");
        PodAddress {
            advertised: address.clone(),
            dial: address,
        }
    }
}

/// The StatefulSet controller and kubelet: one `kvs-node` per pod of the applied StatefulSet.
struct Kubelet {
    store: SharedStore,
    ports: Vec<u16>,
    processes: BTreeMap<u32, Child>,
    node: std::path::PathBuf,
}

impl Kubelet {
    /// Makes the world match the StatefulSet: its revision in its status, a pod (and process)
    /// for every ordinal below its replicas, none beyond, and no process whose pod was deleted.
    async fn sync(&mut self) {
        let (replicas, revision) = {
            let mut store = lock(&self.store);
            let Some(set) = store.objects.get_mut(STATEFULSET_PATH) else {
                return;
            };
            let template = set["spec"]["template"].to_string();
            let mut hasher = DefaultHasher::new();
            template.hash(&mut hasher);
            let revision = format!("{}-{:x}", NAME, hasher.finish());
            set["status"] = json!({"replicas": 0, "updateRevision": revision.clone()});
            (
                set["spec"]["replicas"].as_u64().unwrap_or(0) as u32,
                revision,
            )
        };
        let pods: BTreeSet<u32> = (0..SEATS as u32)
            .filter(|k| lock(&self.store).objects.contains_key(&pod_path(*k)))
            .collect();
        for k in 0..SEATS as u32 {
            let wanted = k < replicas;
            if (!pods.contains(&k) || !wanted)
                && let Some(mut child) = self.processes.remove(&k)
            {
                let _ = child.kill().await;
            }
            if !wanted {
                lock(&self.store).objects.remove(&pod_path(k));
                continue;
            }
            if !pods.contains(&k) {
                let pod = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {
                        "name": format!("{NAME}-{k}"), "namespace": NAMESPACE,
                        "labels": {"app.kubernetes.io/name": "kvs",
                                   "app.kubernetes.io/instance": NAME,
                                   "controller-revision-hash": revision},
                    },
                });
                lock(&self.store).objects.insert(pod_path(k), pod);
            }
            if !self.processes.contains_key(&k) {
                self.processes.insert(k, self.start(k));
            }
        }
    }

    fn start(&self, ordinal: u32) -> Child {
        let address = format!("127.0.0.1:{}", self.ports[ordinal as usize]);
        Command::new(&self.node)
            .args(["--listen", &address, "--advertise", &address, "--in-memory"])
            .args([
                "--election-timeout-ms",
                "600",
                "--heartbeat-interval-ms",
                "100",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("kvs-node starts")
    }
}

fn pod_path(ordinal: u32) -> String {
    format!("{PODS_PATH}/{NAME}-{ordinal}")
}

/// Writes numbered keys until stopped; returns the ones the cluster acknowledged.
fn spawn_writer(
    client: Client,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0u64.. {
            if *stop.borrow_and_update() {
                break;
            }
            if client
                .put(format!("key-{i}"), i.to_string(), None)
                .await
                .is_ok()
            {
                acked.push(i);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked
    })
}

struct Operator {
    store: SharedStore,
    context: Arc<Context>,
    kubelet: Kubelet,
}

impl Operator {
    fn set_spec(&self, change: impl FnOnce(&mut KvsClusterSpec)) {
        let mut store = lock(&self.store);
        let object = store
            .objects
            .get_mut(CLUSTER_PATH)
            .expect("the KvsCluster exists");
        let mut cluster: KvsCluster =
            serde_json::from_value(object.clone()).expect("a valid KvsCluster");
        change(&mut cluster.spec);
        let generation = cluster.metadata.generation.unwrap_or(0) + 1;
        cluster.metadata.generation = Some(generation);
        *object = serde_json::to_value(cluster).expect("serializes");
    }

    fn cluster(&self) -> KvsCluster {
        let object = lock(&self.store).objects[CLUSTER_PATH].clone();
        serde_json::from_value(object).expect("a valid KvsCluster")
    }

    /// Reconciles (with the kubelet catching up in between) until the status shows the spec's
    /// members all healthy on the current revision.
    async fn converge(&mut self, what: &str) -> KvsCluster {
        self.until(what, |operator, cluster| operator.converged(cluster))
            .await
    }

    /// Reconciles (with the kubelet catching up in between) until `done` holds.
    async fn until(
        &mut self,
        what: &str,
        done: impl Fn(&Operator, &KvsCluster) -> bool,
    ) -> KvsCluster {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            self.kubelet.sync().await;
            let cluster = self.cluster();
            if let Err(err) = controller::reconcile(Arc::new(cluster), self.context.clone()).await {
                eprintln!("reconcile failed (retrying): {err}");
            }
            self.kubelet.sync().await;
            let cluster = self.cluster();
            if done(self, &cluster) {
                return cluster;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not converged within {CONVERGE:?}; status: {:#?}",
                cluster.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn converged(&self, cluster: &KvsCluster) -> bool {
        let Some(status) = &cluster.status else {
            return false;
        };
        let store = lock(&self.store);
        let revision = &store.objects[STATEFULSET_PATH]["status"]["updateRevision"];
        let current = (0..cluster.spec.replicas as u32).all(|k| {
            store.objects.get(&pod_path(k)).is_some_and(|pod| {
                &pod["metadata"]["labels"]["controller-revision-hash"] == revision
            })
        });
        status.phase == Some(Phase::Running)
            && status.replicas == cluster.spec.replicas
            && status.ready_replicas == cluster.spec.replicas
            && status
                .members
                .iter()
                .all(|m| m.role == "voter" && m.healthy)
            && current
    }
}

/// An operator over the fake API server holding the KvsCluster `orders` of `spec`, with this
/// test as its kubelet; also returns the nodes' ports and the fake API server's task.
async fn start_operator(
    spec: serde_json::Value,
) -> (Operator, Vec<u16>, tokio::task::JoinHandle<()>) {
    let bins = tokio::task::spawn_blocking(kvs_tests::binaries)
        .await
        .expect("binaries are built");
    let ports: Vec<u16> = (0..SEATS).map(|_| kvs_tests::free_port()).collect();
    let store = SharedStore::default();
    let (client, server) = fake_api(store.clone());
    let config = Config {
        default_image: "kvs:1".into(),
        settings: Settings::default(),
        lease: None,
        watch_namespace: None,
        resolver: Arc::new(Loopback {
            ports: ports.clone(),
        }),
        metrics: Arc::new(Metrics::default()),
    };
    let mut cluster = KvsCluster::new(NAME, serde_json::from_value(spec).expect("a valid spec"));
    cluster.metadata.namespace = Some(NAMESPACE.into());
    cluster.metadata.uid = Some("uid-kvscluster".into());
    cluster.metadata.generation = Some(1);
    lock(&store).objects.insert(
        CLUSTER_PATH.into(),
        serde_json::to_value(&cluster).expect("serializes"),
    );
    let operator = Operator {
        store: store.clone(),
        context: Arc::new(Context::new(client, &config)),
        kubelet: Kubelet {
            store: store.clone(),
            ports: ports.clone(),
            processes: BTreeMap::new(),
            node: bins.node.clone(),
        },
    };
    (operator, ports, server)
}

#[tokio::test]
async fn the_operator_scales_replaces_and_upgrades_without_losing_writes() {
    let (mut operator, ports, server) =
        start_operator(json!({"replicas": 3, "storage": {"inMemory": true}})).await;
    let store = operator.store.clone();

    let formed = operator.converge("forming 3 members").await;
    let cluster_id = formed
        .status
        .and_then(|s| s.cluster_id)
        .expect("a cluster ID");

    let endpoints = ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let writes = Client::connect(endpoints, ClientOptions::default()).expect("a client");
    let (stop, stopped) = watch::channel(false);
    let writer = spawn_writer(writes.clone(), stopped);

    for replicas in [5, 3, 1, 3] {
        operator.set_spec(|spec| spec.replicas = replicas);
        operator.converge(&format!("scaling to {replicas}")).await;
    }

    // Wipe the middle member: its process restarts empty, a new node at the same address.
    let middle = operator
        .cluster()
        .status
        .expect("a status")
        .members
        .into_iter()
        .find(|m| m.pod == format!("{NAME}-1"))
        .expect("pod 1 holds a member")
        .id;
    let mut old = operator.kubelet.processes.remove(&1).expect("pod 1 runs");
    let _ = old.kill().await;
    operator.converge("replacing the wiped member").await;
    let members = operator.cluster().status.expect("a status").members;
    assert!(members.iter().all(|m| m.id != middle), "{members:?}");

    operator.set_spec(|spec| {
        spec.image = Some("kvs:2".into());
        spec.network_policy.enabled = true;
    });
    let upgraded = operator.converge("rolling out a new image").await;

    stop.send(true).expect("the writer runs");
    let acked = writer.await.expect("the writer does not panic");
    let status = upgraded.status.expect("a status");
    assert_eq!(status.cluster_id.as_deref(), Some(cluster_id.as_str()));
    let pods: BTreeSet<&str> = status.members.iter().map(|m| m.pod.as_str()).collect();
    assert_eq!(pods, BTreeSet::from(["orders-0", "orders-1", "orders-2"]));
    assert!(
        status
            .leader
            .as_deref()
            .is_some_and(|leader| pods.contains(leader))
    );
    assert_eq!(status.observed_generation, upgraded.metadata.generation);
    let holds = |kind: &str| {
        status
            .conditions
            .iter()
            .find(|condition| condition.type_ == kind)
            .map(|condition| condition.status.as_str())
    };
    assert_eq!(holds("Available"), Some("True"));
    for settled in ["Progressing", "Degraded", "QuorumLost"] {
        assert_eq!(holds(settled), Some("False"), "{settled}: {status:#?}");
    }
    assert!(
        acked.len() > 10,
        "too few writes were acknowledged: {}",
        acked.len()
    );
    for i in acked {
        let read = writes.get(format!("key-{i}"), false).await.expect("a read");
        let value = read.map(|kv| kv.value);
        assert_eq!(
            value.as_deref(),
            Some(i.to_string().as_bytes()),
            "key-{i} lost"
        );
    }
    let served = lock(&store).served.clone();
    let served: Vec<(&str, &str, &str)> = served
        .iter()
        .map(|call| (call.verb, call.group.as_str(), call.resource.as_str()))
        .collect();
    assert_eq!(
        served, RECONCILE_CALLS,
        "the kinds of API request reconcile made"
    );
    server.abort();
}

/// Runs `kubectl kvs ARGS` against the fake API server at `url`, through a kubeconfig as kubectl
/// would read it; returns its standard output.
async fn kubectl_kvs(url: &str, args: &[&str]) -> String {
    let plugin = kvs_tests::binaries().node.with_file_name("kubectl-kvs");
    assert!(
        plugin.is_file(),
        "{} is missing: `cargo build -p kvs-operator --bins` builds it",
        plugin.display()
    );
    let home = tempfile::tempdir().expect("a scratch directory");
    let kubeconfig = home.path().join("config");
    let config = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
         clusters: [{{name: fake, cluster: {{server: \"{url}\"}}}}]\n\
         users: [{{name: fake, user: {{}}}}]\n\
         contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: {NAMESPACE}}}}}]\n"
    );
    std::fs::write(&kubeconfig, config).expect("kubeconfig written");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(&plugin)
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", home.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output(),
    )
    .await
    .expect("kubectl kvs finishes")
    .expect("kubectl kvs runs");
    assert!(
        output.status.success(),
        "kubectl kvs {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Day two on one cluster: `kubectl kvs status` and `switchover` through a kubeconfig, a
/// rolling restart asked for with `kubectl kvs restart`, and a refused StatefulSet patch shown
/// in the Ready condition.
#[tokio::test]
async fn switchover_restart_and_errors_through_kubectl_kvs() {
    let (mut operator, _ports, server) =
        start_operator(json!({"replicas": 3, "storage": {"inMemory": true}})).await;
    let (url, http) = fake_api::serve_http(operator.store.clone()).await;
    let formed = operator.converge("forming 3 members").await;
    let leader = formed.status.and_then(|s| s.leader).expect("a leader");

    let status: serde_json::Value =
        serde_json::from_str(&kubectl_kvs(&url, &["-o", "json", "status", NAME]).await)
            .expect("JSON status");
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    assert_eq!(status["leader"], leader.as_str());
    assert_eq!(status["phase"], "Running");
    let ready = status["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition");
    assert_eq!(ready["status"], "True", "{status}");

    // Switchover to a member that does not lead.
    let target = (0..3)
        .map(|k| format!("{NAME}-{k}"))
        .find(|pod| *pod != leader)
        .expect("a follower");
    kubectl_kvs(&url, &["switchover", NAME, &target]).await;
    let asked = operator.cluster();
    assert_eq!(
        asked
            .metadata
            .annotations
            .as_ref()
            .map(|a| a["kvs.io/switchover-to"].as_str()),
        Some(target.as_str())
    );
    let switched = operator
        .until("switching over", |_, cluster| {
            let done = cluster
                .metadata
                .annotations
                .as_ref()
                .is_none_or(|a| !a.contains_key("kvs.io/switchover-to"));
            done && cluster.status.as_ref().and_then(|s| s.leader.as_deref()) == Some(&target)
        })
        .await;
    assert_eq!(
        switched.metadata.generation,
        Some(1),
        "the spec is unchanged"
    );

    // A rolling restart: every pod onto a new template revision, one at a time.
    let revision = |operator: &Operator| {
        lock(&operator.store).objects[STATEFULSET_PATH]["status"]["updateRevision"].clone()
    };
    let before = revision(&operator);
    kubectl_kvs(&url, &["restart", NAME]).await;
    operator.kubelet.sync().await;
    operator.converge("restarting every member").await;
    operator.kubelet.sync().await;
    assert_ne!(revision(&operator), before, "the pod template changed");

    // A patch the API server refuses is in Ready=False with its message.
    lock(&operator.store).refuse_patches_of = Some(STATEFULSET_PATH.into());
    let cluster = operator.cluster();
    let failed = controller::reconcile(Arc::new(cluster), operator.context.clone()).await;
    assert!(failed.is_err());
    let status = operator.cluster().status.expect("a status");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "KubernetesApiError");
    assert!(ready.message.contains("Forbidden"), "{ready:?}");
    lock(&operator.store).refuse_patches_of = None;
    operator.converge("recovering from the refusal").await;

    http.abort();
    server.abort();
}
