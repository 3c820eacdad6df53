//! The Kubernetes objects a `KvsCluster` owns, built as plain values.
//!
//! Pure builders, so what the operator applies is reviewed as snapshots (`operator/snapshots/`)
//! rather than discovered in a cluster. The shapes encode the safety rules of the operator:
//! - the StatefulSet uses `Parallel` pod management (a missing middle pod never blocks the
//!   others) and `OnDelete` updates (the operator, not the StatefulSet controller, decides when a
//!   pod restarts, one member at a time);
//! - nodes never bootstrap themselves (no `--bootstrap`): only the operator initializes pod-0, so
//!   a wiped pod can never start a second cluster;
//! - the headless Service publishes not-ready addresses, because a new pod must be dialable to
//!   become a member before it can ever be ready;
//! - the termination grace period outlasts the node's own drain (`--shutdown-grace-ms`), so a
//!   leader hands over before it is killed.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, GRPCAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction,
    VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{KvsCluster, KvsClusterSpec, RESTARTED_AT};
use crate::quantity;

/// The client gRPC port of every node.
pub const CLIENT_PORT: i32 = 7379;
/// The node-to-node port.
pub const PEER_PORT: i32 = 7380;
/// Where a durable node keeps its state.
pub const DATA_DIR: &str = "/var/lib/kvs";
/// The node's default `--shutdown-grace-ms`.
const NODE_SHUTDOWN_GRACE_MS: u32 = 10_000;
/// Time beyond the node's drain before the kubelet kills it.
const TERMINATION_SLACK_SECONDS: i64 = 10;
/// Name of the data volume claim template; claims are `data-{statefulset}-{ordinal}`.
const DATA_VOLUME: &str = "data";
/// The uid and gid the node runs as.
const NODE_USER: i64 = 65532;

/// The label selector of every object the operator manages: its watches see nothing else.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=kvs-operator";

/// Names of the objects of one cluster, derived from its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    cluster: String,
    namespace: String,
}

impl Names {
    /// The names of the cluster `cluster` in `namespace`.
    pub fn new(cluster: &str, namespace: &str) -> Self {
        Names {
            cluster: cluster.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// The namespace of every object.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The StatefulSet, the client Service and the PodDisruptionBudget.
    pub fn statefulset(&self) -> &str {
        &self.cluster
    }

    /// The headless Service that gives pods their stable DNS names.
    pub fn headless_service(&self) -> String {
        format!("{}-peers", self.cluster)
    }

    /// The pod at `ordinal`.
    pub fn pod(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }

    /// The ordinal of a pod of this cluster, from its name.
    pub fn ordinal_of(&self, pod: &str) -> Option<u32> {
        let rest = pod.strip_prefix(&self.cluster)?.strip_prefix('-')?;
        // Only canonical numbers: "01" is no pod of a StatefulSet.
        rest.parse()
            .ok()
            .filter(|ordinal: &u32| ordinal.to_string() == rest)
    }

    /// The data volume claim of the pod at `ordinal`.
    pub fn claim(&self, ordinal: u32) -> String {
        format!("{DATA_VOLUME}-{}", self.pod(ordinal))
    }

    /// The ordinal of a data claim of this cluster, from its name.
    pub fn claim_ordinal(&self, claim: &str) -> Option<u32> {
        self.ordinal_of(claim.strip_prefix(DATA_VOLUME)?.strip_prefix('-')?)
    }

    /// The stable DNS name of the pod at `ordinal`, as the node advertises it.
    pub fn pod_host(&self, ordinal: u32) -> String {
        format!(
            "{}.{}.{}.svc",
            self.pod(ordinal),
            self.headless_service(),
            self.namespace
        )
    }

    /// Labels on every owned object; the selector is the first two.
    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector();
        labels.insert("app.kubernetes.io/managed-by".into(), "kvs-operator".into());
        labels
    }

    /// The labels that select this cluster's pods.
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "kvs".to_owned()),
            (
                "app.kubernetes.io/instance".to_owned(),
                self.cluster.clone(),
            ),
        ])
    }

    /// The label selector string of this cluster's pods, for list calls.
    pub fn selector_string(&self) -> String {
        self.selector()
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn meta(&self, name: &str, owner: &OwnerReference) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// Everything a cluster's objects are built from.
pub(crate) struct Blueprint<'a> {
    pub(crate) cluster: &'a KvsCluster,
    pub(crate) names: Names,
    pub(crate) default_image: &'a str,
    owner: OwnerReference,
}

impl<'a> Blueprint<'a> {
    /// `None` when the cluster has no namespace or uid yet (it was not read from the API).
    pub(crate) fn new(cluster: &'a KvsCluster, default_image: &'a str) -> Option<Self> {
        Some(Blueprint {
            names: Names::new(&cluster.name_any(), &cluster.namespace()?),
            owner: cluster.controller_owner_ref(&())?,
            cluster,
            default_image,
        })
    }

    /// The StatefulSet at `replicas` pods.
    pub(crate) fn statefulset(&self, replicas: u32) -> StatefulSet {
        let spec = &self.cluster.spec;
        let names = &self.names;
        let durable = !spec.storage.in_memory;
        let claims = durable.then(|| {
            let size = spec
                .storage
                .size
                .clone()
                .map(|size| BTreeMap::from([("storage".to_owned(), size)]));
            vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.into()),
                    labels: Some(names.selector()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: size,
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]
        });
        let container = node_container(spec, names, self.default_image);
        let placement = &spec.placement;
        let grace_ms = spec
            .config
            .shutdown_grace_ms
            .unwrap_or(NODE_SHUTDOWN_GRACE_MS);
        StatefulSet {
            metadata: names.meta(names.statefulset(), &self.owner),
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas as i32),
                service_name: Some(names.headless_service()),
                pod_management_policy: Some("Parallel".into()),
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("OnDelete".into()),
                    rolling_update: None,
                }),
                selector: LabelSelector {
                    match_labels: Some(names.selector()),
                    match_expressions: None,
                },
                // The operator deletes the claims of removed members itself, after their
                // removal is committed; the whole set's claims follow `retainOnDelete`.
                persistent_volume_claim_retention_policy: durable.then(|| {
                    StatefulSetPersistentVolumeClaimRetentionPolicy {
                        when_deleted: Some(
                            if spec.storage.retain_on_delete {
                                "Retain"
                            } else {
                                "Delete"
                            }
                            .into(),
                        ),
                        when_scaled: Some("Retain".into()),
                    }
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels(spec, names)),
                        annotations: pod_annotations(self.cluster),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![container],
                        termination_grace_period_seconds: Some(
                            i64::from(grace_ms.div_ceil(1000)) + TERMINATION_SLACK_SECONDS,
                        ),
                        automount_service_account_token: Some(false),
                        enable_service_links: Some(false),
                        security_context: Some(PodSecurityContext {
                            run_as_non_root: Some(true),
                            run_as_user: Some(NODE_USER),
                            run_as_group: Some(NODE_USER),
                            fs_group: Some(NODE_USER),
                            seccomp_profile: Some(runtime_default_seccomp()),
                            ..PodSecurityContext::default()
                        }),
                        affinity: Some(
                            placement
                                .affinity
                                .clone()
                                .unwrap_or_else(|| one_member_per_node(names)),
                        ),
                        priority_class_name: placement.priority_class_name.clone(),
                        image_pull_secrets: non_empty(spec.image_pull_secrets.clone()),
                        tolerations: non_empty(placement.tolerations.clone()),
                        node_selector: (!placement.node_selector.is_empty())
                            .then(|| placement.node_selector.clone()),
                        topology_spread_constraints: non_empty(
                            placement.topology_spread_constraints.clone(),
                        ),
                        ..PodSpec::default()
                    }),
                },
                volume_claim_templates: claims,
                ..StatefulSetSpec::default()
            }),
            status: None,
        }
    }

    /// The headless Service behind the pods' stable DNS names; it lists pods before they are
    /// ready, since a pod becomes ready only after it was dialed and added as a member.
    pub(crate) fn headless_service(&self) -> Service {
        let port = |name: &str, number| ServicePort {
            name: Some(name.into()),
            port: number,
            target_port: Some(IntOrString::String(name.into())),
            ..ServicePort::default()
        };
        Service {
            metadata: self.names.meta(&self.names.headless_service(), &self.owner),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                publish_not_ready_addresses: Some(true),
                selector: Some(self.names.selector()),
                ports: Some(vec![port("client", CLIENT_PORT), port("peer", PEER_PORT)]),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    /// The Service clients use: ready members only, gRPC and (when enabled) RESP.
    pub(crate) fn client_service(&self) -> Service {
        let mut ports = vec![ServicePort {
            name: Some("client".into()),
            port: CLIENT_PORT,
            target_port: Some(IntOrString::String("client".into())),
            ..ServicePort::default()
        }];
        if self.cluster.spec.resp.enabled {
            ports.push(ServicePort {
                name: Some("resp".into()),
                port: self.cluster.spec.resp.port,
                target_port: Some(IntOrString::String("resp".into())),
                ..ServicePort::default()
            });
        }
        Service {
            metadata: self.names.meta(self.names.statefulset(), &self.owner),
            spec: Some(ServiceSpec {
                selector: Some(self.names.selector()),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    /// At most one member down by choice; `None` for one or two members, where any voluntary
    /// disruption already loses the majority (the operator warns instead).
    pub(crate) fn disruption_budget(&self) -> Option<PodDisruptionBudget> {
        (self.cluster.spec.replicas >= 3).then(|| PodDisruptionBudget {
            metadata: self.names.meta(self.names.statefulset(), &self.owner),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(self.names.selector()),
                    match_expressions: None,
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            status: None,
        })
    }

    /// When enabled: only this cluster's pods reach the peer port; client and RESP ports stay
    /// open to everyone (clients authenticate at a higher layer, if at all).
    pub(crate) fn network_policy(&self) -> Option<NetworkPolicy> {
        let spec = &self.cluster.spec;
        if !spec.network_policy.enabled {
            return None;
        }
        let port = |number| NetworkPolicyPort {
            port: Some(IntOrString::Int(number)),
            protocol: Some("TCP".into()),
            end_port: None,
        };
        let mut open = vec![port(CLIENT_PORT)];
        if spec.resp.enabled {
            open.push(port(spec.resp.port));
        }
        Some(NetworkPolicy {
            metadata: self.names.meta(&self.names.headless_service(), &self.owner),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(self.names.selector()),
                    match_expressions: None,
                }),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(vec![
                    NetworkPolicyIngressRule {
                        from: Some(vec![NetworkPolicyPeer {
                            pod_selector: Some(LabelSelector {
                                match_labels: Some(self.names.selector()),
                                match_expressions: None,
                            }),
                            ..NetworkPolicyPeer::default()
                        }]),
                        ports: Some(vec![port(PEER_PORT)]),
                    },
                    NetworkPolicyIngressRule {
                        from: None,
                        ports: Some(open),
                    },
                ]),
                ..NetworkPolicySpec::default()
            }),
        })
    }
}

/// The kvs-node container of every pod of a cluster: image, flags, ports, probes, security
/// context and (when durable) the data volume's mount.
///
/// Public because its command line is a contract with `kvs-node`, which the operator must not
/// link: kvs-tests parses these arguments with the node's own flag definitions.
pub fn node_container(spec: &KvsClusterSpec, names: &Names, default_image: &str) -> Container {
    let volume_mounts = (!spec.storage.in_memory).then(|| {
        vec![VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        }]
    });
    Container {
        name: "kvs-node".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| default_image.to_owned()),
        ),
        args: Some(node_args(spec, names)),
        env: Some(vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(container_ports(spec)),
        readiness_probe: Some(Probe {
            grpc: Some(GRPCAction {
                port: CLIENT_PORT,
                service: None,
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        // The process is up; whether it serves is readiness's business, and a node that
        // waits to join must not be killed for it.
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("client".into()),
                host: None,
            }),
            initial_delay_seconds: Some(5),
            period_seconds: Some(10),
            failure_threshold: Some(6),
            ..Probe::default()
        }),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        volume_mounts,
        ..Container::default()
    }
}

/// The Raft log's disk budget on a volume of `volume` bytes: an eighth of it, within what the
/// node accepts (64 MiB) and what a log needs (1 GiB). docs/storage.md's sizing rule leaves the
/// rest to snapshots.
pub fn log_disk_bytes(volume: u64) -> u64 {
    (volume / 8).clamp(64 << 20, 1 << 30)
}

/// The node's command line: addresses from the pod's stable name, storage, tuning.
fn node_args(spec: &KvsClusterSpec, names: &Names) -> Vec<String> {
    // `$(POD_NAME)` is expanded by the kubelet from the env var of that name.
    let host = format!(
        "$(POD_NAME).{}.{}.svc",
        names.headless_service(),
        names.namespace
    );
    let mut args = vec![
        format!("--listen=0.0.0.0:{CLIENT_PORT}"),
        format!("--advertise={host}:{CLIENT_PORT}"),
        format!("--peer-listen=0.0.0.0:{PEER_PORT}"),
        format!("--peer-advertise={host}:{PEER_PORT}"),
    ];
    if spec.storage.in_memory {
        args.push("--in-memory".into());
    } else {
        args.push(format!("--data-dir={DATA_DIR}"));
        if let Some(volume) = spec.storage.size.as_ref().and_then(quantity::bytes) {
            args.push(format!("--log-disk-bytes={}", log_disk_bytes(volume)));
        }
    }
    let resp = &spec.resp;
    if resp.enabled {
        args.push(format!("--resp-listen=0.0.0.0:{}", resp.port));
        if resp.allow_flush {
            args.push("--resp-allow-flush".into());
        }
        if resp.serializable_reads {
            args.push("--resp-serializable-reads".into());
        }
    }
    let config = &spec.config;
    let mut tuning = vec![
        ("election-timeout-ms", config.election_timeout_ms),
        ("heartbeat-interval-ms", config.heartbeat_interval_ms),
        ("request-timeout-ms", config.request_timeout_ms),
        ("max-key-bytes", config.max_key_bytes),
        ("max-value-bytes", config.max_value_bytes),
        ("max-batch-ops", config.max_batch_ops),
        ("max-batch-bytes", config.max_batch_bytes),
        ("shutdown-grace-ms", config.shutdown_grace_ms),
        ("snapshot-every", config.snapshot_every),
    ];
    if resp.enabled {
        tuning.push(("resp-idle-timeout-ms", resp.idle_timeout_ms));
        tuning.push(("resp-request-timeout-ms", resp.request_timeout_ms));
    }
    args.extend(
        tuning
            .into_iter()
            .filter_map(|(flag, value)| value.map(|value| format!("--{flag}={value}"))),
    );
    if let Some(policy) = config.read_policy {
        args.push(format!("--read-policy={}", policy.flag()));
    }
    if let Some(quota) = quota_bytes(spec) {
        args.push(format!("--quota-bytes={quota}"));
    }
    args
}

/// The share of the container's memory limit the node's quota defaults to: the rest is the
/// node's own working memory (Raft log cache, connections, snapshots being built).
const QUOTA_PERCENT_OF_LIMIT: u64 = 70;

/// `--quota-bytes`: the spec's `config.quotaBytes`, else 70% of the container's memory limit
/// (the default resources have one), else none — the node then takes half its cgroup's limit.
/// Without it the quota would follow the host's memory, and a node would be OOM-killed before
/// its NOSPACE alarm could fire.
fn quota_bytes(spec: &KvsClusterSpec) -> Option<u64> {
    if let Some(quota) = &spec.config.quota_bytes {
        return quantity::bytes(quota);
    }
    let resources = spec.resources.clone().unwrap_or_else(default_resources);
    let limit = resources.limits?.get("memory").and_then(quantity::bytes)?;
    let share = u128::from(limit) * u128::from(QUOTA_PERCENT_OF_LIMIT) / 100;
    Some(u64::try_from(share).unwrap_or(u64::MAX))
}

/// The pod annotations: the spec's, and the restart request, whose change rolls the pods.
fn pod_annotations(cluster: &KvsCluster) -> Option<BTreeMap<String, String>> {
    let mut annotations = cluster.spec.pod_metadata.annotations.clone();
    if let Some(at) = cluster.annotations().get(RESTARTED_AT) {
        annotations.insert(RESTARTED_AT.to_owned(), at.clone());
    }
    (!annotations.is_empty()).then_some(annotations)
}

/// The pod labels: the spec's, then the operator's, which win because they select the pods.
fn pod_labels(spec: &KvsClusterSpec, names: &Names) -> BTreeMap<String, String> {
    let mut labels = spec.pod_metadata.labels.clone();
    labels.extend(names.labels());
    labels
}

/// The default placement: members prefer distinct nodes, so losing a node costs one member;
/// preferred rather than required, so a cluster larger than the node count still schedules.
fn one_member_per_node(names: &Names) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(names.selector()),
                            match_expressions: None,
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// The default resources: requested, so pods are Burstable rather than BestEffort (evicted
/// first under memory pressure), with a memory limit the node's quota is derived from.
fn default_resources() -> ResourceRequirements {
    let quantity = |text: &str| Quantity(text.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity("250m")),
            ("memory".to_owned(), quantity("512Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), quantity("1Gi"))])),
        ..ResourceRequirements::default()
    }
}

fn container_ports(spec: &KvsClusterSpec) -> Vec<ContainerPort> {
    let port = |name: &str, number| ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let mut ports = vec![port("client", CLIENT_PORT), port("peer", PEER_PORT)];
    if spec.resp.enabled {
        ports.push(port("resp", spec.resp.port));
    }
    ports
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

#[cfg(test)]
mod tests;
