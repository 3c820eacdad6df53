//! The `KvsCluster` custom resource: what a user asks for (spec) and what the operator saw (status).
//!
//! The schema is derived from these types and is the only validation a user meets before the
//! operator runs, so bounds and cross-field rules live here as schema attributes and CEL rules
//! (enforced by the API server) rather than as checks in the reconcile loop. No I/O happens here;
//! `crdgen` prints [`crd_yaml`] and `crds/kvscluster.yaml` is that output, never hand-edited.

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    ValidationRule,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most members a cluster may have. Raft gains nothing from more voters than this, and the
/// bound keeps every per-ordinal scan in the operator small.
pub const MAX_REPLICAS: i32 = 9;

/// The longest cluster name: the StatefulSet's pods carry a `controller-revision-hash` label of
/// the name plus 11 characters, and labels are at most 63.
pub const MAX_NAME_LENGTH: usize = 52;

/// The annotation that asks for a rolling restart (`kubectl kvs restart` sets it to the time):
/// copied into the pod template, so every pod becomes outdated and the roll restarts them one
/// at a time, followers first, the leader last, each ready before the next.
pub const RESTARTED_AT: &str = "kvs.io/restartedAt";

/// The annotation that asks for leadership to move to the member on the pod it names; the
/// operator removes it once done (or refused) and records an Event.
pub const SWITCHOVER_TO: &str = "kvs.io/switchover-to";

/// Default RESP port when `resp.enabled` is set without a port.
pub const DEFAULT_RESP_PORT: i32 = 6379;

/// A Raft-replicated kvs cluster: pods, their storage and their Raft membership, kept together.
// Printer columns repeat `type_` by nature; clippy reads them as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kvs.io",
    version = "v1alpha1",
    kind = "KvsCluster",
    namespaced,
    status = "KvsClusterStatus",
    shortname = "kvs",
    doc = "A kvs cluster: its pods, volumes and Raft membership, kept in step by kvs-operator",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.hibernate || !self.storage.inMemory", "message": "an in-memory cluster cannot hibernate: stopping every pod would lose its data"},
]))]
pub struct KvsClusterSpec {
    /// Number of Raft members (and pods). Odd numbers tolerate the same failures as the next
    /// even number with less traffic.
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// The kvs-node container image; the operator's default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resource requests and limits of the kvs-node container. Unset: a request of 250m CPU and
    /// 512Mi memory with a 1Gi memory limit, so pods are not first to be evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where a member keeps its state: a volume of `size`, or `inMemory`.
    pub storage: StorageSpec,
    /// The node's tuning flags; unset fields keep the node's defaults.
    #[serde(default)]
    pub config: NodeConfig,
    /// The Redis-protocol (RESP) face.
    #[serde(default)]
    pub resp: RespSpec,
    /// Where pods may run.
    #[serde(default)]
    pub placement: Placement,
    /// Restrict the peer port to members of this cluster.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Stop every action (status is still reported).
    #[serde(default)]
    pub paused: bool,
    /// Stop every pod, keeping the volumes and the Raft membership; set back to `false`, the
    /// same cluster resumes with all its keys. In-memory clusters cannot hibernate.
    #[serde(default)]
    pub hibernate: bool,
    /// Secrets for pulling the node image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Labels and annotations added to every pod.
    #[serde(default)]
    pub pod_metadata: PodMetadata,
}

/// Labels and annotations of the pods, besides the operator's own (which win on a clash: they
/// select the pods).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodMetadata {
    /// Added to every pod's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Added to every pod's annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Storage of each member: a PersistentVolumeClaim, or memory only.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.inMemory || has(self.size)", "message": "storage.size is required unless storage.inMemory is set"},
    {"rule": "!self.inMemory || !has(self.size)", "message": "storage.size cannot be set for an in-memory cluster"},
    {"rule": "!has(self.size) || (isQuantity(string(self.size)) && quantity(string(self.size)).compareTo(quantity('512Mi')) >= 0)", "message": "storage.size must be a quantity of at least 512Mi: the Raft log's smallest disk budget (64Mi) with room for its journals and two snapshots (docs/storage.md)"},
    {"rule": "self.inMemory == oldSelf.inMemory", "message": "storage.inMemory cannot change: a cluster moves between memory and volumes only through a backup"},
    {"rule": "(has(self.storageClassName) ? self.storageClassName : '') == (has(oldSelf.storageClassName) ? oldSelf.storageClassName : '')", "message": "storage.storageClassName cannot change: volumes are not moved between classes"},
    {"rule": "!has(self.size) || !has(oldSelf.size) || !isQuantity(string(self.size)) || !isQuantity(string(oldSelf.size)) || quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) >= 0", "message": "storage.size cannot shrink: a volume only grows"},
]))]
pub struct StorageSpec {
    /// Keep state in memory only: a restarted pod is a new member, and losing a majority of
    /// members at once loses the data.
    #[serde(default)]
    pub in_memory: bool,
    /// Size of each member's volume, e.g. `1Gi`; at least `512Mi`. The node's log gets an eighth
    /// of it as its disk budget (`--log-disk-bytes`, 64Mi to 1Gi); docs/storage.md says what
    /// state a volume holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Storage class of the volumes; the cluster default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Keep the volumes when the KvsCluster is deleted (a new KvsCluster of the same name adopts
    /// them). Volumes of members removed by scaling down are always deleted.
    #[serde(default)]
    pub retain_on_delete: bool,
}

/// The node's tuning flags (`kvs-node --help`); every field maps to one flag.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
// Each rule is one the node checks at start-up, with the node's defaults for unset fields, so a
// spec the node would refuse is refused at admission instead of as a crash-looping pod.
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.electionTimeoutMs) ? self.electionTimeoutMs : 1000) >= 3 * (has(self.heartbeatIntervalMs) ? self.heartbeatIntervalMs : 200)", "message": "electionTimeoutMs must be at least 3 x heartbeatIntervalMs (the node's defaults are 1000 and 200)"},
    {"rule": "(has(self.maxKeyBytes) ? self.maxKeyBytes : 4096) + (has(self.maxValueBytes) ? self.maxValueBytes : 1048576) <= (has(self.maxBatchBytes) ? self.maxBatchBytes : 4194304)", "message": "maxKeyBytes + maxValueBytes must fit in maxBatchBytes (the node's defaults are 4096, 1Mi and 4Mi)"},
    {"rule": "(has(self.maxBatchOps) ? self.maxBatchOps : 128) * ((has(self.maxKeyBytes) ? self.maxKeyBytes : 4096) + (has(self.maxValueBytes) ? self.maxValueBytes : 1048576) + 64) + 65536 <= 268435456", "message": "the largest reply, maxBatchOps x (maxKeyBytes + maxValueBytes + 64) + 64Ki, must fit in the node's 256Mi reply bound (the node's defaults are 128, 4096 and 1Mi)"},
    {"rule": "!has(self.quotaBytes) || isQuantity(string(self.quotaBytes))", "message": "config.quotaBytes must be a quantity, e.g. 700Mi"},
]))]
pub struct NodeConfig {
    /// `--election-timeout-ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 60000))]
    pub election_timeout_ms: Option<u32>,
    /// `--heartbeat-interval-ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 30000))]
    pub heartbeat_interval_ms: Option<u32>,
    /// `--request-timeout-ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 600000))]
    pub request_timeout_ms: Option<u32>,
    /// `--max-key-bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_key_bytes: Option<u32>,
    /// `--max-value-bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 67108864))]
    pub max_value_bytes: Option<u32>,
    /// `--max-batch-ops`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_batch_ops: Option<u32>,
    /// `--shutdown-grace-ms`; the pod's termination grace period is derived from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 300000))]
    pub shutdown_grace_ms: Option<u32>,
    /// `--max-batch-bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 268435456))]
    pub max_batch_bytes: Option<u32>,
    /// `--quota-bytes`, the memory the stored keys and values may take, e.g. `700Mi`. Unset: 70%
    /// of `resources.limits.memory`, or (no limit) the node's default, half of its cgroup's
    /// memory limit or of the host's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<Quantity>,
    /// `--snapshot-every`: log entries between snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 100000000))]
    pub snapshot_every: Option<u32>,
    /// `--read-policy`: how a leader confirms it still leads before a linearizable read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_policy: Option<ReadPolicy>,
}

/// `--read-policy` of the node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPolicy {
    /// A quorum acknowledges a heartbeat sent after the read arrived (the node's default).
    ReadIndex,
    /// A quorum acknowledgement within the leader lease suffices; relies on bounded clock drift.
    Lease,
}

impl ReadPolicy {
    /// The flag's value.
    pub fn flag(self) -> &'static str {
        match self {
            ReadPolicy::ReadIndex => "read-index",
            ReadPolicy::Lease => "lease",
        }
    }
}

/// The Redis-protocol face of every member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.port != 7379 && self.port != 7380", "message": "resp.port must differ from the node's client port 7379 and peer port 7380"},
]))]
pub struct RespSpec {
    /// Serve RESP (`--resp-listen`).
    #[serde(default)]
    pub enabled: bool,
    /// The RESP port of pods and of the client Service.
    #[serde(default = "default_resp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// `--resp-allow-flush`: accept FLUSHALL and FLUSHDB.
    #[serde(default)]
    pub allow_flush: bool,
    /// `--resp-serializable-reads`: serve RESP reads from the local replica.
    #[serde(default)]
    pub serializable_reads: bool,
    /// `--resp-idle-timeout-ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000, max = 86400000))]
    pub idle_timeout_ms: Option<u32>,
    /// `--resp-request-timeout-ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 3600000))]
    pub request_timeout_ms: Option<u32>,
}

impl Default for RespSpec {
    fn default() -> Self {
        RespSpec {
            enabled: false,
            port: DEFAULT_RESP_PORT,
            allow_flush: false,
            serializable_reads: false,
            idle_timeout_ms: None,
            request_timeout_ms: None,
        }
    }
}

fn default_resp_port() -> i32 {
    DEFAULT_RESP_PORT
}

/// Scheduling of the pods; copied into the pod template as given.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Pod affinity and anti-affinity. Unset: members prefer distinct nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// The pods' PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node labels the pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// How pods spread over zones or nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
}

/// The optional NetworkPolicy of a cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create a NetworkPolicy that lets only this cluster's pods reach the peer port (client
    /// and RESP ports stay open).
    #[serde(default)]
    pub enabled: bool,
}

/// What the operator last saw of the cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KvsClusterStatus {
    /// One word for where the cluster is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The Raft cluster's ID, recorded once when the cluster is formed or adopted.
    #[serde(default, rename = "clusterID", skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Members of the Raft cluster (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Members that are healthy and caught up.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The pod of the current leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// One entry per member, by ordinal.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Ready (what kstatus, Flux and Argo read: members match the spec and all are ready; the
    /// last reconcile error when one failed), Available, Progressing, Degraded, QuorumLost.
    /// Keyed by `type`, so each condition is merged on its own.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The label selector of the pods, for the scale subresource (HPA, `kubectl scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One member as the operator saw it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The pod at the member's address.
    pub pod: String,
    /// The member's node ID.
    pub id: String,
    /// `voter` or `learner`.
    pub role: String,
    /// Its pod answers as this member and follows a leader.
    pub healthy: bool,
    /// Log entries behind the leader.
    #[serde(default)]
    pub lag: i64,
    /// When the operator first saw it unhealthy (RFC 3339); cleared when healthy again. A
    /// member unhealthy for longer than the operator's timeout is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since: Option<String>,
}

/// Where the cluster is, in one word.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Pods are starting; no Raft cluster yet.
    Creating,
    /// Membership equals spec and every member is healthy.
    Running,
    /// Members are being added or removed.
    Scaling,
    /// Pods are being restarted onto a new image or configuration.
    Upgrading,
    /// A failed member is being replaced.
    Recovering,
    /// Some members are unhealthy; a majority serves.
    Degraded,
    /// No majority of voters is reachable: the operator waits.
    QuorumLost,
    /// `spec.paused` is set.
    Paused,
    /// `spec.hibernate` is set: no pods run, the volumes and membership are kept.
    Hibernated,
}

/// The CRD: the derived schema plus the rules on the object's name, which the derive cannot
/// place at the root.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = KvsCluster::crd();
    let name_rule = ValidationRule {
        rule: format!(
            "self.metadata.name.size() <= {MAX_NAME_LENGTH} && \
             self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
        ),
        message: Some(format!(
            "metadata.name must be at most {MAX_NAME_LENGTH} characters of lowercase letters, \
             digits and '-', starting with a letter and ending with a letter or digit: it names \
             the StatefulSet (whose revision label adds 11 characters to 63), pods and Services"
        )),
        ..ValidationRule::default()
    };
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|validation| validation.open_api_v3_schema.as_mut())
        {
            schema
                .x_kubernetes_validations
                .get_or_insert_default()
                .push(name_rule.clone());
            known_formats_only(schema);
        }
    }
    crd
}

/// Replaces the unsigned formats schemars writes (`uint32`, `uint64`), which the API server does
/// not know and warns about, with `int64`; their `minimum` keeps them non-negative.
fn known_formats_only(schema: &mut JSONSchemaProps) {
    if schema
        .format
        .as_deref()
        .is_some_and(|format| format.starts_with("uint"))
    {
        schema.format = Some("int64".into());
    }
    for child in schema.properties.iter_mut().flat_map(BTreeMap::values_mut) {
        known_formats_only(child);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(items)) => known_formats_only(items),
        Some(JSONSchemaPropsOrArray::Schemas(all)) => all.iter_mut().for_each(known_formats_only),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut schema.additional_properties {
        known_formats_only(values);
    }
}

/// The CRD as YAML, exactly what `crdgen` prints and `crds/kvscluster.yaml` holds.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&crd()).expect("a CRD is plain data and always serializes to YAML")
}

/// Specs and clusters for the tests of every module.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A spec of `replicas` members on 1Gi volumes of class `fast`, or in memory.
    pub(crate) fn spec(replicas: i32, durable: bool) -> KvsClusterSpec {
        let storage = if durable {
            StorageSpec {
                size: Some(Quantity("1Gi".into())),
                storage_class_name: Some("fast".into()),
                ..StorageSpec::default()
            }
        } else {
            StorageSpec {
                in_memory: true,
                ..StorageSpec::default()
            }
        };
        KvsClusterSpec {
            replicas,
            image: None,
            resources: None,
            storage,
            config: NodeConfig::default(),
            resp: RespSpec::default(),
            placement: Placement::default(),
            network_policy: NetworkPolicySpec::default(),
            paused: false,
            hibernate: false,
            image_pull_secrets: Vec::new(),
            pod_metadata: PodMetadata::default(),
        }
    }

    /// The cluster `orders` in namespace `shop`, as read from the API server (generation 1).
    pub(crate) fn cluster(spec: KvsClusterSpec) -> KvsCluster {
        let mut cluster = KvsCluster::new("orders", spec);
        cluster.metadata.namespace = Some("shop".into());
        cluster.metadata.uid = Some("8d7f5a9e-0000-4000-8000-000000000001".into());
        cluster.metadata.generation = Some(1);
        cluster
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cel::extractors::This;
    use serde_json::Value;
    use serde_json::json;

    use super::*;

    #[test]
    fn the_checked_in_crd_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/kvscluster.yaml");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == crd_yaml(),
            "crds/kvscluster.yaml is stale: run `cargo run -p kvs-operator --bin crdgen > crds/kvscluster.yaml`"
        );
    }

    /// One CEL rule of the generated CRD and the schema node it sits on.
    struct Rule {
        /// Property names from the root; `[]` steps into every item of a list.
        path: Vec<String>,
        rule: String,
        message: String,
    }

    /// Every `x-kubernetes-validations` rule of the generated CRD's schema.
    fn every_rule() -> Vec<Rule> {
        fn walk(schema: &Value, path: &mut Vec<String>, rules: &mut Vec<Rule>) {
            for rule in schema["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                rules.push(Rule {
                    path: path.clone(),
                    rule: rule["rule"].as_str().expect("a rule").to_owned(),
                    message: rule["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
            for (name, child) in schema["properties"].as_object().into_iter().flatten() {
                path.push(name.clone());
                walk(child, path, rules);
                path.pop();
            }
            if schema["items"].is_object() {
                path.push("[]".into());
                walk(&schema["items"], path, rules);
                path.pop();
            }
        }
        let crd = serde_json::to_value(crd()).expect("the CRD serializes");
        let mut rules = Vec::new();
        walk(
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            &mut Vec::new(),
            &mut rules,
        );
        rules
    }

    /// The object with the schema's defaults filled in, as the API server does before it
    /// validates.
    fn with_defaults(schema: &Value, value: &mut Value) {
        if let (Some(properties), Some(object)) =
            (schema["properties"].as_object(), value.as_object_mut())
        {
            for (name, child) in properties {
                if !object.contains_key(name)
                    && let Some(default) = child.get("default")
                {
                    object.insert(name.clone(), default.clone());
                }
                if let Some(field) = object.get_mut(name) {
                    with_defaults(child, field);
                }
            }
        }
        if let Some(items) = value.as_array_mut() {
            for item in items {
                with_defaults(&schema["items"], item);
            }
        }
    }

    /// JSON as CEL sees a Kubernetes object: integers are `int`.
    fn cel_value(value: &Value) -> cel::Value {
        match value {
            Value::Null => cel::Value::Null,
            Value::Bool(b) => cel::Value::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => cel::Value::Int(i),
                None => cel::Value::Float(n.as_f64().unwrap_or_default()),
            },
            Value::String(text) => cel::Value::String(Arc::new(text.clone())),
            Value::Array(items) => {
                cel::Value::List(Arc::new(items.iter().map(cel_value).collect()))
            }
            Value::Object(fields) => {
                let map: std::collections::HashMap<String, cel::Value> = fields
                    .iter()
                    .map(|(name, field)| (name.clone(), cel_value(field)))
                    .collect();
                cel::Value::from(map)
            }
        }
    }

    /// The values at `path` in `object` paired with those at the same place in `old`.
    fn at<'v>(
        path: &[String],
        object: &'v Value,
        old: Option<&'v Value>,
    ) -> Vec<(&'v Value, Option<&'v Value>)> {
        let Some((step, rest)) = path.split_first() else {
            return vec![(object, old)];
        };
        if step == "[]" {
            return object
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .flat_map(|(index, item)| at(rest, item, old.and_then(|old| old.get(index))))
                .collect();
        }
        match object.get(step) {
            Some(child) => at(rest, child, old.and_then(|old| old.get(step))),
            None => Vec::new(),
        }
    }

    /// A CEL context with Kubernetes' quantity functions.
    fn kubernetes_context() -> cel::Context<'static, 'static> {
        let mut context = cel::Context::default();
        let parse = |text: &str| crate::quantity::bytes(&Quantity(text.into()));
        context
            .add_function("isQuantity", move |text: Arc<String>| {
                parse(&text).is_some()
            })
            .expect("isQuantity");
        context
            .add_function("quantity", move |text: Arc<String>| {
                parse(&text).map(|n| n as i64).ok_or_else(|| {
                    cel::ExecutionError::function_error(
                        "quantity",
                        format!("not a quantity: {text}"),
                    )
                })
            })
            .expect("quantity");
        context
            .add_function("compareTo", |This(a): This<i64>, b: i64| a.cmp(&b) as i64)
            .expect("compareTo");
        context
    }

    /// The rules of the generated CRD that refuse `object` (updating `old`, when given), each
    /// evaluated wherever its schema node has a value, as the API server would; a transition
    /// rule (one that reads `oldSelf`) only where the old object has a value too.
    fn refusals<'r>(rules: &'r [Rule], object: &Value, old: Option<&Value>) -> Vec<&'r Rule> {
        let crd = serde_json::to_value(crd()).expect("the CRD serializes");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let defaulted = |value: &Value| {
            let mut value = value.clone();
            with_defaults(schema, &mut value);
            value
        };
        let object = defaulted(object);
        let old = old.map(defaulted);
        rules
            .iter()
            .filter(|rule| {
                let program = cel::Program::compile(&rule.rule)
                    .unwrap_or_else(|err| panic!("{} does not compile: {err}", rule.rule));
                let transition = rule.rule.contains("oldSelf");
                at(&rule.path, &object, old.as_ref())
                    .into_iter()
                    .any(|(value, old)| {
                        if transition && old.is_none() {
                            return false;
                        }
                        let mut context = kubernetes_context();
                        context.add_variable_from_value("self", cel_value(value));
                        if let Some(old) = old {
                            context.add_variable_from_value("oldSelf", cel_value(old));
                        }
                        program.execute(&context) != Ok(cel::Value::Bool(true))
                    })
            })
            .collect()
    }

    /// A KvsCluster named `name` with `spec`.
    fn object(name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "kvs.io/v1alpha1", "kind": "KvsCluster",
            "metadata": {"name": name}, "spec": spec,
        })
    }

    fn durable(extra: Value) -> Value {
        let mut spec = json!({"replicas": 3, "storage": {"size": "1Gi"}});
        merge(&mut spec, extra);
        object("orders", spec)
    }

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(into), Value::Object(from)) => {
                for (name, value) in from {
                    merge(into.entry(name).or_insert(Value::Null), value);
                }
            }
            (into, from) => *into = from,
        }
    }

    /// Every CEL rule of the generated CRD, evaluated on specs the node accepts and on specs it
    /// (or a safe operator) would refuse — including changes, for the transition rules. Each
    /// rule must refuse some example, so a rule added without a case here fails this test.
    #[test]
    fn every_cel_rule_accepts_what_the_node_accepts_and_refuses_the_rest() {
        let rules = every_rule();
        let name = |length: usize| "a".repeat(length);
        let accepted: Vec<(Value, Option<Value>)> = vec![
            (durable(json!({})), None),
            (durable(json!({"storage": {"size": "512Mi"}})), None),
            (
                durable(json!({"storage": {"size": 1_073_741_824u64}})),
                None,
            ),
            (
                object(
                    "cache",
                    json!({"replicas": 1, "storage": {"inMemory": true}}),
                ),
                None,
            ),
            (
                object(
                    &name(52),
                    json!({"replicas": 1, "storage": {"inMemory": true}}),
                ),
                None,
            ),
            (
                object(
                    "a-1-b",
                    json!({"replicas": 1, "storage": {"inMemory": true}}),
                ),
                None,
            ),
            (
                durable(json!({"config": {"electionTimeoutMs": 600, "heartbeatIntervalMs": 200}})),
                None,
            ),
            (
                durable(json!({"config": {"heartbeatIntervalMs": 300}})),
                None,
            ),
            (
                durable(json!({"config": {"maxValueBytes": 2_000_000}})),
                None,
            ),
            (
                durable(
                    json!({"config": {"maxValueBytes": 8_388_608, "maxBatchBytes": 16_777_216, "maxBatchOps": 16}}),
                ),
                None,
            ),
            (durable(json!({"config": {"quotaBytes": "700Mi"}})), None),
            (
                durable(json!({"resp": {"enabled": true, "port": 6380}})),
                None,
            ),
            // Growing a volume is not refused at admission.
            (
                durable(json!({"storage": {"size": "2Gi"}})),
                Some(durable(json!({}))),
            ),
            (
                durable(
                    json!({"image": format!("registry.example/kvs-node@sha256:{}", "ab".repeat(32))}),
                ),
                None,
            ),
            (durable(json!({"replicas": 5})), Some(durable(json!({})))),
            (
                durable(json!({"hibernate": true})),
                Some(durable(json!({}))),
            ),
            (
                durable(json!({"storage": {"storageClassName": "fast"}})),
                Some(durable(json!({"storage": {"storageClassName": "fast"}}))),
            ),
        ];
        for (object, old) in &accepted {
            let refused: Vec<&str> = refusals(&rules, object, old.as_ref())
                .iter()
                .map(|rule| rule.rule.as_str())
                .collect();
            assert!(
                refused.is_empty(),
                "{object} (from {old:?}) refused by {refused:#?}"
            );
        }
        let refused: Vec<(Value, Option<Value>, &str)> = vec![
            (
                durable(json!({"storage": {"size": "256Mi"}})),
                None,
                "at least 512Mi",
            ),
            (
                durable(json!({"storage": {"size": "500M"}})),
                None,
                "at least 512Mi",
            ),
            (
                durable(json!({"storage": {"size": "lots"}})),
                None,
                "at least 512Mi",
            ),
            (
                object("orders", json!({"replicas": 3, "storage": {}})),
                None,
                "storage.size is required",
            ),
            (
                durable(json!({"storage": {"inMemory": true}})),
                None,
                "cannot be set",
            ),
            (
                object(
                    &name(53),
                    json!({"replicas": 1, "storage": {"inMemory": true}}),
                ),
                None,
                "at most 52",
            ),
            (
                object(
                    "Orders",
                    json!({"replicas": 1, "storage": {"inMemory": true}}),
                ),
                None,
                "at most 52",
            ),
            (
                object(
                    "1orders",
                    json!({"replicas": 1, "storage": {"inMemory": true}}),
                ),
                None,
                "at most 52",
            ),
            (
                durable(json!({"config": {"electionTimeoutMs": 500, "heartbeatIntervalMs": 200}})),
                None,
                "3 x heartbeatIntervalMs",
            ),
            (
                durable(json!({"config": {"heartbeatIntervalMs": 400}})),
                None,
                "3 x heartbeatIntervalMs",
            ),
            (
                durable(json!({"config": {"electionTimeoutMs": 300}})),
                None,
                "3 x heartbeatIntervalMs",
            ),
            (
                durable(json!({"config": {"maxValueBytes": 4_194_304}})),
                None,
                "maxBatchBytes",
            ),
            (
                durable(json!({"config": {"maxKeyBytes": 65_536, "maxBatchBytes": 1_000_000}})),
                None,
                "maxBatchBytes",
            ),
            (
                durable(json!({"config": {"maxBatchOps": 1000}})),
                None,
                "reply",
            ),
            (
                durable(json!({"config": {"quotaBytes": "plenty"}})),
                None,
                "quotaBytes",
            ),
            (
                durable(json!({"resp": {"enabled": true, "port": 7379}})),
                None,
                "7379",
            ),
            (
                durable(json!({"resp": {"enabled": true, "port": 7380}})),
                None,
                "7379",
            ),
            (
                durable(json!({"storage": {"size": "512Mi"}})),
                Some(durable(json!({}))),
                "cannot shrink",
            ),
            (
                object(
                    "cache",
                    json!({"replicas": 3, "storage": {"inMemory": true}, "hibernate": true}),
                ),
                None,
                "cannot hibernate",
            ),
            (
                object(
                    "orders",
                    json!({"replicas": 3, "storage": {"inMemory": true}}),
                ),
                Some(durable(json!({}))),
                "inMemory cannot change",
            ),
            (
                durable(json!({"storage": {"storageClassName": "slow"}})),
                Some(durable(json!({"storage": {"storageClassName": "fast"}}))),
                "storageClassName cannot change",
            ),
            (
                durable(json!({"storage": {"storageClassName": "fast"}})),
                Some(durable(json!({}))),
                "storageClassName cannot change",
            ),
        ];
        let mut used = std::collections::BTreeSet::new();
        for (object, old, says) in &refused {
            let by = refusals(&rules, object, old.as_ref());
            assert!(
                by.iter().any(|rule| rule.message.contains(says)),
                "{object} (from {old:?}) must be refused with {says:?}, refused by: {:#?}",
                by.iter().map(|rule| &rule.message).collect::<Vec<_>>()
            );
            used.extend(
                by.iter()
                    .filter(|rule| rule.message.contains(says))
                    .map(|rule| rule.rule.clone()),
            );
        }
        let untested: Vec<&str> = rules
            .iter()
            .map(|rule| rule.rule.as_str())
            .filter(|rule| !used.contains(*rule))
            .collect();
        assert!(
            untested.is_empty(),
            "rules no example refuses: {untested:#?}"
        );
    }

    /// HPA and `kubectl scale` tooling find the pods of a scale subresource by its selector.
    #[test]
    fn the_scale_subresource_names_the_pods_selector() {
        let crd = serde_json::to_value(crd()).expect("the CRD serializes");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(
            version["subresources"]["scale"]["labelSelectorPath"],
            ".status.selector"
        );
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"];
        assert_eq!(status["properties"]["selector"]["type"], "string");
    }

    /// The API server warns about every format it does not know (`uint32`, `uint64`, ...).
    #[test]
    fn every_format_is_one_the_api_server_knows() {
        fn formats(node: &Value, path: &str, found: &mut Vec<String>) {
            if let Some(format) = node.get("format").and_then(Value::as_str)
                && !["int32", "int64", "float", "double", "date-time", "byte"].contains(&format)
            {
                found.push(format!("{path}: {format}"));
            }
            for (name, child) in node["properties"].as_object().into_iter().flatten() {
                formats(child, &format!("{path}.{name}"), found);
            }
            for nested in ["items", "additionalProperties"] {
                if node[nested].is_object() {
                    formats(&node[nested], &format!("{path}.{nested}"), found);
                }
            }
        }
        let crd = serde_json::to_value(crd()).expect("the CRD serializes");
        let mut found = Vec::new();
        formats(
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            "$",
            &mut found,
        );
        assert!(found.is_empty(), "{found:#?}");
    }

    /// Conditions are merged by `type` (server-side apply, kstatus), not replaced as a whole.
    #[test]
    fn conditions_are_a_list_keyed_by_type() {
        let crd = serde_json::to_value(crd()).expect("the CRD serializes");
        let conditions = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
        assert!(
            conditions["items"]["required"]
                .as_array()
                .is_some_and(|required| required.contains(&json!("type"))),
            "a list-map key must be required: {conditions}"
        );
    }

    #[test]
    fn the_crd_has_the_scale_and_status_subresources() {
        let crd = serde_json::to_value(crd()).expect("the CRD serializes");
        let subresources = &crd["spec"]["versions"][0]["subresources"];
        assert_eq!(subresources["scale"]["specReplicasPath"], ".spec.replicas");
        assert_eq!(
            subresources["scale"]["statusReplicasPath"],
            ".status.replicas"
        );
        assert!(subresources["status"].is_object());
    }

    /// Kubernetes accepts only structural schemas: every node has a type (or says it is
    /// int-or-string or free-form), and no `$ref` or type-less combinators remain.
    #[test]
    fn the_schema_is_structural() {
        let crd = serde_json::to_value(crd()).expect("the CRD serializes");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut problems = Vec::new();
        check_structural(schema, "$", &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }

    fn check_structural(node: &Value, path: &str, problems: &mut Vec<String>) {
        let Some(object) = node.as_object() else {
            return;
        };
        let free_form = object.contains_key("x-kubernetes-int-or-string")
            || object.contains_key("x-kubernetes-preserve-unknown-fields");
        if !object.contains_key("type") && !free_form {
            problems.push(format!("{path}: no type"));
        }
        for forbidden in ["$ref", "oneOf", "anyOf", "allOf", "definitions", "$defs"] {
            if object.contains_key(forbidden) {
                problems.push(format!("{path}: {forbidden}"));
            }
        }
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for (name, child) in properties {
                check_structural(child, &format!("{path}.{name}"), problems);
            }
        }
        for nested in ["items", "additionalProperties"] {
            if let Some(child) = object.get(nested) {
                check_structural(child, &format!("{path}.{nested}"), problems);
            }
        }
    }

    #[test]
    fn a_minimal_manifest_parses_with_defaults() {
        let cluster: KvsCluster = serde_yaml::from_str(
            "apiVersion: kvs.io/v1alpha1\nkind: KvsCluster\nmetadata: {name: a}\n\
             spec: {replicas: 3, storage: {size: 1Gi}}\n",
        )
        .expect("a valid manifest");
        assert_eq!(cluster.spec.resp.port, DEFAULT_RESP_PORT);
        assert!(!cluster.spec.paused && !cluster.spec.storage.in_memory);
    }
}
