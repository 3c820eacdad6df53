//! Reconciles against a mocked Kubernetes API: every request the operator makes is recorded and
//! answered by a small scripted API server, and the test asserts the exact sequence of calls and
//! the exact objects and status it wrote.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::fake_kvs::FakeCluster;
use super::*;
use crate::crd::{Phase, fixtures};
use crate::observe::PodAddress;
use crate::resources::{Blueprint, Names};

/// Pods that never answer: nothing listens on port 1 of loopback.
struct Unreachable;

impl Resolver for Unreachable {
    fn resolve(&self, names: &Names, ordinal: u32) -> PodAddress {
        PodAddress {
            advertised: format!("{}:7379", names.pod_host(ordinal)),
            dial: "127.0.0.1:1".into(),
        }
    }
}

/// One request the operator made.
#[derive(Debug)]
struct Call {
    method: Method,
    path: String,
    body: Value,
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What the fake API server holds.
#[derive(Default)]
struct ApiState {
    /// The KvsCluster, which a status patch answers with.
    cluster: Value,
    statefulset: Option<Value>,
    pods: Vec<Value>,
    claims: Vec<Value>,
    /// A request line (`PATCH /apis/...`) the server refuses as invalid.
    refuse: Option<&'static str>,
}

fn not_found() -> (StatusCode, Value) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "not found"
    });
    (StatusCode::NOT_FOUND, status)
}

fn answer(state: &ApiState, method: &Method, path: &str, body: &Value) -> (StatusCode, Value) {
    let list = |kind: &str, items: &[Value]| json!({"kind": kind, "apiVersion": "v1", "metadata": {}, "items": items});
    if state.refuse == Some(format!("{method} {path}").as_str()) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "Invalid", "code": 422, "message": REFUSAL
        });
        return (StatusCode::UNPROCESSABLE_ENTITY, status);
    }
    match (method.as_str(), path) {
        ("GET", "/apis/apps/v1/namespaces/shop/statefulsets/orders") => match &state.statefulset {
            Some(set) => (StatusCode::OK, set.clone()),
            None => not_found(),
        },
        ("GET", "/api/v1/namespaces/shop/pods") => (StatusCode::OK, list("PodList", &state.pods)),
        ("GET", "/api/v1/namespaces/shop/persistentvolumeclaims") => (
            StatusCode::OK,
            list("PersistentVolumeClaimList", &state.claims),
        ),
        ("DELETE", _) => not_found(),
        ("PATCH", "/apis/kvs.io/v1alpha1/namespaces/shop/kvsclusters/orders") => {
            (StatusCode::OK, state.cluster.clone())
        }
        ("PATCH", path) if path.ends_with("/status") => {
            let mut cluster = state.cluster.clone();
            cluster["status"] = body["status"].clone();
            (StatusCode::OK, cluster)
        }
        // Apply, event creation and status patches answer with what was sent.
        _ => (StatusCode::OK, body.clone()),
    }
}

/// Runs one reconcile against the fake API and returns every call it made, in order.
async fn reconcile_against(cluster: KvsCluster, state: ApiState) -> (Vec<Call>, Result<Action>) {
    reconcile_with(cluster, state, Arc::new(Unreachable)).await
}

async fn reconcile_with(
    cluster: KvsCluster,
    mut state: ApiState,
    resolver: Arc<dyn Resolver>,
) -> (Vec<Call>, Result<Action>) {
    state.cluster = serde_json::to_value(&cluster).expect("serializes");
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    let server = tokio::spawn(async move {
        while let Some((request, reply)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request bodies are complete");
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (status, answer) = answer(&state, &method, &path, &body);
            let response = Response::builder()
                .status(status)
                .body(Body::from(answer.to_string().into_bytes()))
                .expect("a valid response");
            reply.send_response(response);
            let call = Call { method, path, body };
            recorded.lock().expect("no test thread panicked").push(call);
        }
    });
    let config = Config {
        default_image: "kvs:test".into(),
        settings: Settings::default(),
        lease: None,
        watch_namespace: None,
        resolver,
        metrics: Arc::new(Metrics::default()),
    };
    let context = Arc::new(Context::new(client, &config));
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        reconcile(Arc::new(cluster), context),
    )
    .await
    .expect("a reconcile finishes within its bounded waits");
    server.abort();
    let calls = std::mem::take(&mut *calls.lock().expect("no test thread panicked"));
    (calls, result)
}

fn cluster(replicas: i32) -> KvsCluster {
    fixtures::cluster(fixtures::spec(replicas, false))
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

fn body_of<'a>(calls: &'a [Call], line: &str) -> &'a Value {
    &calls
        .iter()
        .find(|call| call.line() == line)
        .unwrap_or_else(|| panic!("no {line}"))
        .body
}

const REFUSAL: &str = "StatefulSet.apps \"orders\" is invalid: spec: Forbidden: updates to \
                       statefulset spec for fields other than 'replicas' are forbidden";
const STATUS: &str = "PATCH /apis/kvs.io/v1alpha1/namespaces/shop/kvsclusters/orders/status";
const STATEFULSET: &str = "PATCH /apis/apps/v1/namespaces/shop/statefulsets/orders";
const OBSERVE: [&str; 3] = [
    "GET /apis/apps/v1/namespaces/shop/statefulsets/orders",
    "GET /api/v1/namespaces/shop/pods",
    "GET /api/v1/namespaces/shop/persistentvolumeclaims",
];
const APPLY: [&str; 5] = [
    "PATCH /api/v1/namespaces/shop/services/orders-peers",
    "PATCH /api/v1/namespaces/shop/services/orders",
    "PATCH /apis/policy/v1/namespaces/shop/poddisruptionbudgets/orders",
    "DELETE /apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/orders-peers",
    STATEFULSET,
];

#[tokio::test]
async fn a_new_cluster_gets_its_objects_with_one_pod_an_event_and_a_status() {
    let cluster = cluster(3);
    let (calls, result) = reconcile_against(cluster.clone(), ApiState::default()).await;
    assert!(result.is_ok(), "{result:?}");
    let mut expected: Vec<&str> = OBSERVE.to_vec();
    expected.extend(APPLY);
    expected.push("POST /apis/events.k8s.io/v1/namespaces/shop/events");
    expected.push(STATUS);
    assert_eq!(lines(&calls), expected);

    // The StatefulSet applied is exactly the builder's, at one pod.
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("an identified cluster");
    let statefulset = serde_json::to_value(blueprint.statefulset(1)).expect("serializes");
    assert_eq!(body_of(&calls, STATEFULSET), &statefulset);
    let event = body_of(&calls, "POST /apis/events.k8s.io/v1/namespaces/shop/events");
    assert_eq!(event["reason"], "CreatingWorkload");
    assert_eq!(event["type"], "Normal");

    let status = &body_of(&calls, STATUS)["status"];
    assert_eq!(status["phase"], json!(Phase::Creating));
    assert_eq!(status["replicas"], 0);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/instance=orders,app.kubernetes.io/name=kvs"
    );
    assert!(status.get("clusterID").is_none());
    let progressing = status["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == "Progressing"))
        .expect("a Progressing condition");
    assert_eq!(progressing["status"], "True");
    assert_eq!(progressing["reason"], "CreatingWorkload");
}

#[tokio::test]
async fn a_paused_cluster_is_only_observed_and_reported() {
    let mut cluster = cluster(3);
    cluster.spec.paused = true;
    let (calls, result) = reconcile_against(cluster, ApiState::default()).await;
    assert!(result.is_ok(), "{result:?}");
    let mut expected: Vec<&str> = OBSERVE.to_vec();
    expected.push(STATUS);
    assert_eq!(lines(&calls), expected);
    assert_eq!(body_of(&calls, STATUS)["status"]["phase"], "Paused");
}

#[tokio::test]
async fn a_small_cluster_gets_no_budget_and_a_warning() {
    let (calls, result) = reconcile_against(cluster(2), ApiState::default()).await;
    assert!(result.is_ok(), "{result:?}");
    let warning = calls
        .iter()
        .find(|call| call.body["reason"] == "NoDisruptionBudget")
        .expect("a warning event");
    assert_eq!(warning.body["type"], "Warning");
    assert!(lines(&calls).contains(
        &"DELETE /apis/policy/v1/namespaces/shop/poddisruptionbudgets/orders".to_owned()
    ));
}

#[tokio::test]
async fn a_pod_that_does_not_answer_is_waited_for_without_initializing_anything() {
    let cluster = cluster(3);
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("an identified cluster");
    let state = ApiState {
        cluster: Value::Null,
        statefulset: Some(serde_json::to_value(blueprint.statefulset(1)).expect("serializes")),
        pods: vec![pod(0)],
        claims: Vec::new(),
        refuse: None,
    };
    let (calls, result) = reconcile_against(cluster, state).await;
    assert!(result.is_ok(), "{result:?}");
    let mut expected: Vec<&str> = OBSERVE.to_vec();
    expected.extend(APPLY);
    expected.push(STATUS);
    assert_eq!(lines(&calls), expected);
    // Replicas stay where they are; no event for a wait.
    assert_eq!(body_of(&calls, STATEFULSET)["spec"]["replicas"], 1);
    let status = &body_of(&calls, STATUS)["status"];
    assert_eq!(status["phase"], "Creating");
    let progressing = status["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == "Progressing"))
        .expect("a Progressing condition");
    assert_eq!(progressing["reason"], "WaitingForPod");
    assert_eq!(progressing["message"], "waiting for orders-0 to answer");
}

fn pod(ordinal: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("orders-{ordinal}"), "namespace": "shop"},
    })
}

fn claim(ordinal: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": format!("data-orders-{ordinal}"), "namespace": "shop"},
    })
}

fn event_reasons(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|call| call.path.ends_with("/events"))
        .map(|call| call.body["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// 3 → 2 on a durable cluster, one reconcile per step with the test playing the StatefulSet
/// controller in between: remove the member, then shrink the StatefulSet, then delete the
/// claim — each visible as exactly one change.
#[tokio::test]
async fn scaling_down_removes_the_member_then_the_pod_then_its_volume() {
    let mut cluster = fixtures::cluster(fixtures::spec(2, true));
    cluster.status = Some(crate::crd::KvsClusterStatus {
        cluster_id: Some(super::fake_kvs::CLUSTER_ID.into()),
        observed_generation: Some(1),
        ..Default::default()
    });
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("an identified cluster");
    let names = blueprint.names.clone();
    let kvs = FakeCluster::start(&names, 3).await;
    let resolver: Arc<dyn Resolver> = Arc::new(kvs.resolver());
    let state = |replicas: u32, pods: u32, claims: u32| ApiState {
        cluster: Value::Null,
        statefulset: Some(
            serde_json::to_value(blueprint.statefulset(replicas)).expect("serializes"),
        ),
        pods: (0..pods).map(pod).collect(),
        claims: (0..claims).map(claim).collect(),
        refuse: None,
    };

    // 1: the member at the highest ordinal leaves the Raft cluster; nothing else changes.
    let (calls, result) = reconcile_with(cluster.clone(), state(3, 3, 3), resolver.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(kvs.calls(), ["Remove 00000000000000a2"]);
    assert_eq!(body_of(&calls, STATEFULSET)["spec"]["replicas"], 3);
    assert_eq!(event_reasons(&calls), ["RemovingMember"]);
    let status = &body_of(&calls, STATUS)["status"];
    assert_eq!(status["phase"], "Scaling");
    assert_eq!(status["leader"], "orders-0");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));

    // 2: only once the removal is seen does the StatefulSet shrink.
    let (calls, result) = reconcile_with(cluster.clone(), state(3, 3, 3), resolver.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(kvs.calls().len(), 1, "no further membership change");
    assert_eq!(body_of(&calls, STATEFULSET)["spec"]["replicas"], 2);
    assert_eq!(event_reasons(&calls), ["ScalingStatefulSet"]);
    assert_eq!(body_of(&calls, STATUS)["status"]["replicas"], 2);

    // 3: the pod is gone; its volume holds a dead identity and is deleted.
    let (calls, result) = reconcile_with(cluster.clone(), state(2, 2, 3), resolver.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(lines(&calls).contains(
        &"DELETE /api/v1/namespaces/shop/persistentvolumeclaims/data-orders-2".to_owned()
    ));
    assert_eq!(event_reasons(&calls), ["DeletingVolumeClaim"]);

    // 4: steady: objects re-applied unchanged, no event, Running; with the spec already
    // observed, no optional object is deleted again (two members get no budget).
    let (calls, result) = reconcile_with(cluster.clone(), state(2, 2, 2), resolver).await;
    assert!(result.is_ok(), "{result:?}");
    let mut expected: Vec<String> = OBSERVE.iter().map(|line| line.to_string()).collect();
    expected.extend(
        APPLY
            .iter()
            .filter(|line| !line.contains("/poddisruptionbudgets/") && !line.starts_with("DELETE"))
            .map(|line| line.to_string()),
    );
    expected.push(STATUS.to_owned());
    assert_eq!(lines(&calls), expected);
    let status = &body_of(&calls, STATUS)["status"];
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["readyReplicas"], 2);
    assert_eq!(kvs.calls().len(), 1);
}

/// A KvsCluster created over pods that already hold a cluster (retained volumes) records that
/// cluster and never initializes another.
#[tokio::test]
async fn pods_that_already_hold_a_cluster_are_adopted() {
    let cluster = cluster(3);
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("an identified cluster");
    let kvs = FakeCluster::start(&blueprint.names, 3).await;
    let state = ApiState {
        cluster: Value::Null,
        statefulset: Some(serde_json::to_value(blueprint.statefulset(3)).expect("serializes")),
        pods: (0..3).map(pod).collect(),
        claims: Vec::new(),
        refuse: None,
    };
    let (calls, result) = reconcile_with(cluster.clone(), state, Arc::new(kvs.resolver())).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(kvs.calls().is_empty(), "{:?}", kvs.calls());
    assert_eq!(event_reasons(&calls), ["AdoptingCluster"]);
    let status = &body_of(&calls, STATUS)["status"];
    assert_eq!(status["clusterID"], super::fake_kvs::CLUSTER_ID);
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["leader"], "orders-0");
}

/// A step the API server refuses is visible on the KvsCluster: `Ready=False` with the error as
/// reason and message, and a Warning Event; the reconcile still fails, so it is retried.
#[tokio::test]
async fn a_failed_reconcile_is_reported_in_ready_and_in_a_warning_event() {
    let cluster = cluster(3);
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("an identified cluster");
    let state = ApiState {
        cluster: Value::Null,
        statefulset: Some(serde_json::to_value(blueprint.statefulset(1)).expect("serializes")),
        pods: vec![pod(0)],
        claims: Vec::new(),
        refuse: Some(STATEFULSET),
    };
    let (calls, result) = reconcile_against(cluster, state).await;
    assert!(result.is_err(), "{result:?}");
    let warning = calls
        .iter()
        .find(|call| call.path.ends_with("/events") && call.body["type"] == "Warning")
        .expect("a warning event");
    assert_eq!(warning.body["reason"], "KubernetesApiError");
    assert!(
        warning.body["note"]
            .as_str()
            .is_some_and(|note| note.contains("Forbidden")),
        "{warning:?}"
    );
    let status = &body_of(&calls, STATUS)["status"];
    let ready = status["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "KubernetesApiError");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("Forbidden")),
        "{ready}"
    );
}

#[test]
fn failures_back_off_exponentially_up_to_a_ceiling() {
    let waits: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
}

/// Only spec and annotation changes reconcile: the operator's own status writes do not.
#[tokio::test]
async fn status_writes_do_not_trigger_reconciles() {
    use futures::StreamExt;
    let first = cluster(3);
    let mut status_only = first.clone();
    status_only.status = Some(crate::crd::KvsClusterStatus {
        ready_replicas: 3,
        ..Default::default()
    });
    let mut new_spec = status_only.clone();
    new_spec.metadata.generation = Some(2);
    let mut annotated = new_spec.clone();
    annotated.metadata.annotations =
        Some([("kvs.io/switchover-to".to_owned(), "orders-1".to_owned())].into());
    let events = [first, status_only, new_spec, annotated]
        .into_iter()
        .map(|cluster| Ok(kube::runtime::watcher::Event::Apply(cluster)));
    let passed: Vec<KvsCluster> = changes_worth_a_reconcile(futures::stream::iter(events))
        .filter_map(|result| async move { result.ok() })
        .collect()
        .await;
    let generations: Vec<Option<i64>> = passed.iter().map(|c| c.metadata.generation).collect();
    assert_eq!(generations, [Some(1), Some(2), Some(2)]);
}

/// A switchover to the member that already leads is finished: the request is removed from the
/// KvsCluster (a merge patch, so nothing else of it changes) and an Event says so.
#[tokio::test]
async fn a_finished_switchover_removes_its_annotation_and_records_an_event() {
    let mut cluster = fixtures::cluster(fixtures::spec(3, true));
    cluster.status = Some(crate::crd::KvsClusterStatus {
        cluster_id: Some(super::fake_kvs::CLUSTER_ID.into()),
        observed_generation: Some(1),
        ..Default::default()
    });
    cluster.metadata.annotations =
        Some([(crate::crd::SWITCHOVER_TO.to_owned(), "orders-0".to_owned())].into());
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("an identified cluster");
    let kvs = FakeCluster::start(&blueprint.names, 3).await;
    let state = ApiState {
        cluster: Value::Null,
        statefulset: Some(serde_json::to_value(blueprint.statefulset(3)).expect("serializes")),
        pods: (0..3).map(pod).collect(),
        claims: (0..3).map(claim).collect(),
        refuse: None,
    };
    let (calls, result) = reconcile_with(cluster, state, Arc::new(kvs.resolver())).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(kvs.calls().is_empty(), "{:?}", kvs.calls());
    let patch = body_of(
        &calls,
        "PATCH /apis/kvs.io/v1alpha1/namespaces/shop/kvsclusters/orders",
    );
    assert_eq!(
        patch,
        &json!({"metadata": {"annotations": {"kvs.io/switchover-to": null}}})
    );
    assert_eq!(event_reasons(&calls), ["SwitchedOver"]);
}
