//! The `KvsCluster` custom resource: what a user asks for (spec) and what the operator saw (status).
//!
//! The schema is derived from these types and is the only validation a user meets before the
//! operator runs, so bounds and cross-field rules live here as schema attributes and CEL rules
//! (enforced by the API server) rather than as checks in the reconcile loop. No I/O happens here;
//! `crdgen` prints [`crd_yaml`] and `crds/kvscluster.yaml` is that output, never hand-edited.

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
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
        status_replicas_path = ".status.replicas"
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
pub struct KvsClusterSpec {
    /// Number of Raft members (and pods). Odd numbers tolerate the same failures as the next
    /// even number with less traffic.
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// The kvs-node container image; the operator's default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resource requests and limits of the kvs-node container.
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
}

/// Storage of each member: a PersistentVolumeClaim, or memory only.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.inMemory || has(self.size)", "message": "storage.size is required unless storage.inMemory is set"},
    {"rule": "!self.inMemory || !has(self.size)", "message": "storage.size cannot be set for an in-memory cluster"},
    {"rule": "!has(self.size) || (isQuantity(string(self.size)) && quantity(string(self.size)).compareTo(quantity('512Mi')) >= 0)", "message": "storage.size must be a quantity of at least 512Mi: the Raft log's smallest disk budget (64Mi) with room for its journals and two snapshots (docs/storage.md)"},
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
#[schemars(extend("x-kubernetes-validations" = [{"rule": "!has(self.heartbeatIntervalMs) || !has(self.electionTimeoutMs) || self.heartbeatIntervalMs < self.electionTimeoutMs", "message": "heartbeatIntervalMs must be less than electionTimeoutMs"}]))]
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
}

/// The Redis-protocol face of every member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RespSpec {
    /// Serve RESP (`--resp-listen`).
    #[serde(default)]
    pub enabled: bool,
    /// The RESP port of pods and of the client Service.
    #[serde(default = "default_resp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for RespSpec {
    fn default() -> Self {
        RespSpec {
            enabled: false,
            port: DEFAULT_RESP_PORT,
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
    /// Pod affinity and anti-affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
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
    pub lag: u64,
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
}

/// The CRD as YAML, exactly what `crdgen` prints and `crds/kvscluster.yaml` holds.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&KvsCluster::crd())
        .expect("a CRD is plain data and always serializes to YAML")
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

    /// The messages of the CEL rules the generated CRD puts on `spec.storage` that refuse
    /// `storage`, evaluated as the API server would, with Kubernetes' quantity functions.
    fn storage_refusals(storage: Value) -> Vec<String> {
        let crd = serde_json::to_value(KvsCluster::crd()).expect("the CRD serializes");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["storage"];
        let rules = schema["x-kubernetes-validations"]
            .as_array()
            .expect("storage has CEL rules");
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
            .add_variable("self", storage)
            .expect("storage as a CEL value");
        rules
            .iter()
            .filter(|rule| {
                let program = cel::Program::compile(rule["rule"].as_str().expect("a rule"))
                    .expect("the rule compiles");
                let verdict = program.execute(&context);
                verdict != Ok(cel::Value::Bool(true))
            })
            .map(|rule| rule["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn storage_rules_refuse_a_volume_too_small_for_the_log_and_its_snapshots() {
        for accepted in [
            json!({"inMemory": false, "size": "512Mi"}),
            json!({"inMemory": false, "size": "1Gi"}),
            json!({"inMemory": false, "size": 1_073_741_824u64}),
            json!({"inMemory": true}),
        ] {
            assert_eq!(
                storage_refusals(accepted.clone()),
                Vec::<String>::new(),
                "{accepted}"
            );
        }
        for (refused, says) in [
            (
                json!({"inMemory": false, "size": "256Mi"}),
                "at least 512Mi",
            ),
            (json!({"inMemory": false, "size": "500M"}), "at least 512Mi"),
            (json!({"inMemory": false, "size": "lots"}), "at least 512Mi"),
            (json!({"inMemory": false}), "storage.size is required"),
            (json!({"inMemory": true, "size": "1Gi"}), "cannot be set"),
        ] {
            let refusals = storage_refusals(refused.clone());
            assert!(
                refusals.iter().any(|m| m.contains(says)),
                "{refused} must be refused with {says:?}: {refusals:?}"
            );
        }
    }

    /// Conditions are merged by `type` (server-side apply, kstatus), not replaced as a whole.
    #[test]
    fn conditions_are_a_list_keyed_by_type() {
        let crd = serde_json::to_value(KvsCluster::crd()).expect("the CRD serializes");
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
        let crd = serde_json::to_value(KvsCluster::crd()).expect("the CRD serializes");
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
        let crd = serde_json::to_value(KvsCluster::crd()).expect("the CRD serializes");
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
