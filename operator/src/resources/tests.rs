//! Snapshots of every owned object: a change to what the operator applies shows up as a diff
//! of `operator/snapshots/*.yaml` in review. `KVS_UPDATE_SNAPSHOTS=1` rewrites them.

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;
use std::collections::BTreeMap;

use super::*;
use crate::crd::fixtures::{cluster, spec};
use crate::crd::{NodeConfig, RespSpec, StorageSpec};

fn assert_snapshot(name: &str, value: &impl Serialize) {
    let actual = serde_yaml::to_string(value).expect("objects serialize");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("snapshots")
        .join(format!("{name}.yaml"));
    if std::env::var_os("KVS_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &actual).expect("snapshot written");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from what the builders produce (KVS_UPDATE_SNAPSHOTS=1 rewrites it):\n{actual}",
        path.display()
    );
}

#[test]
fn durable_cluster_objects() {
    let cluster = cluster(spec(3, true));
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("namespaced with a uid");
    assert_snapshot("durable-statefulset", &blueprint.statefulset(3));
    assert_snapshot("headless-service", &blueprint.headless_service());
    assert_snapshot("client-service", &blueprint.client_service());
    assert_snapshot("disruption-budget", &blueprint.disruption_budget());
}

#[test]
fn in_memory_cluster_with_resp_tuning_and_network_policy() {
    let mut spec = spec(3, true);
    spec.image = Some("registry.example/kvs:1.2.3".into());
    spec.storage = StorageSpec {
        in_memory: true,
        ..StorageSpec::default()
    };
    spec.resp = RespSpec {
        enabled: true,
        port: 6380,
        ..RespSpec::default()
    };
    spec.config = NodeConfig {
        election_timeout_ms: Some(1500),
        heartbeat_interval_ms: Some(300),
        shutdown_grace_ms: Some(25_000),
        ..NodeConfig::default()
    };
    spec.network_policy.enabled = true;
    let cluster = cluster(spec);
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("namespaced with a uid");
    assert_snapshot("in-memory-statefulset", &blueprint.statefulset(1));
    assert_snapshot("resp-client-service", &blueprint.client_service());
    assert_snapshot("network-policy", &blueprint.network_policy());
}

#[test]
fn one_or_two_members_get_no_disruption_budget() {
    for replicas in [1, 2] {
        let cluster = cluster(spec(replicas, true));
        let blueprint = Blueprint::new(&cluster, "kvs:test").expect("namespaced with a uid");
        assert_eq!(blueprint.disruption_budget(), None);
    }
}

#[test]
fn pods_never_bootstrap_and_outlive_their_drain() {
    let cluster = cluster(spec(3, true));
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("namespaced with a uid");
    let statefulset = blueprint.statefulset(3);
    let pod = statefulset
        .spec
        .and_then(|spec| spec.template.spec)
        .expect("a pod template");
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(
        args.iter().all(|arg| !arg.contains("bootstrap")),
        "{args:?}"
    );
    assert!(args.contains(&"--data-dir=/var/lib/kvs".to_owned()));
    assert!(pod.termination_grace_period_seconds > Some(10));
}

#[test]
fn names_round_trip_ordinals_as_numbers() {
    let names = Names::new("orders", "shop");
    assert_eq!(names.ordinal_of("orders-10"), Some(10));
    assert_eq!(names.ordinal_of("orders-01"), None);
    assert_eq!(names.ordinal_of("orders-x"), None);
    assert_eq!(names.ordinal_of("orders-extra-1"), None);
    assert_eq!(names.claim_ordinal(&names.claim(7)), Some(7));
    assert_eq!(names.pod_host(2), "orders-2.orders-peers.shop.svc");
}

#[test]
fn the_log_gets_an_eighth_of_the_volume_within_the_nodes_bounds() {
    let names = Names::new("orders", "shop");
    let budget_for = |size: &str| {
        let mut spec = spec(3, true);
        spec.storage.size = Some(Quantity(size.into()));
        let args = node_container(&spec, &names, "kvs:test")
            .args
            .unwrap_or_default();
        args.iter()
            .find_map(|arg| arg.strip_prefix("--log-disk-bytes="))
            .map(|n| n.parse::<u64>().expect("a byte count"))
    };
    assert_eq!(budget_for("1Gi"), Some(128 << 20));
    assert_eq!(
        budget_for("512Mi"),
        Some(64 << 20),
        "never below the node's minimum"
    );
    assert_eq!(budget_for("100Gi"), Some(1 << 30), "at most 1 GiB");
    assert_eq!(budget_for("2G"), Some(250_000_000));
    let in_memory = node_container(&spec(3, false), &names, "kvs:test")
        .args
        .unwrap_or_default();
    assert!(
        in_memory
            .iter()
            .all(|arg| !arg.starts_with("--log-disk-bytes")),
        "{in_memory:?}"
    );
}

fn pod_spec(statefulset: &StatefulSet) -> &PodSpec {
    statefulset
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("a pod template")
}

/// With no placement or resources given, members prefer distinct nodes (losing a node then
/// costs one member) and the pods are Burstable, not BestEffort (first to be evicted).
#[test]
fn pods_default_to_one_member_per_node_and_to_requested_resources() {
    let cluster = cluster(spec(3, true));
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("namespaced with a uid");
    let statefulset = blueprint.statefulset(3);
    let pod = pod_spec(&statefulset);
    let preferred = pod
        .affinity
        .as_ref()
        .and_then(|affinity| affinity.pod_anti_affinity.as_ref())
        .and_then(|anti| {
            anti.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .expect("a preferred pod anti-affinity");
    let term = &preferred[0].pod_affinity_term;
    assert_eq!(term.topology_key, "kubernetes.io/hostname");
    assert_eq!(
        term.label_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone()),
        Some(blueprint.names.selector())
    );
    let resources = pod.containers[0].resources.as_ref().expect("resources");
    let requests = resources.requests.as_ref().expect("requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));

    // What the spec gives is used as given.
    let mut given = spec(3, true);
    given.placement.affinity = Some(Default::default());
    given.resources = Some(Default::default());
    let cluster = crate::crd::fixtures::cluster(given);
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("namespaced with a uid");
    let statefulset = blueprint.statefulset(3);
    let pod = pod_spec(&statefulset);
    assert_eq!(pod.affinity, Some(Default::default()));
    assert_eq!(pod.containers[0].resources, Some(Default::default()));
}

#[test]
fn pull_secrets_pod_metadata_and_priority_reach_the_pod_template() {
    let mut spec = spec(3, true);
    spec.image_pull_secrets = vec![k8s_openapi::api::core::v1::LocalObjectReference {
        name: "registry".into(),
    }];
    spec.pod_metadata.labels = BTreeMap::from([
        ("team".to_owned(), "orders".to_owned()),
        // The selector's labels are the operator's: a pod label cannot take a pod out of it.
        ("app.kubernetes.io/name".to_owned(), "other".to_owned()),
    ]);
    spec.pod_metadata.annotations =
        BTreeMap::from([("example.com/scrape".to_owned(), "true".to_owned())]);
    spec.placement.priority_class_name = Some("critical".into());
    let cluster = cluster(spec);
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("namespaced with a uid");
    let statefulset = blueprint.statefulset(3);
    let template = &statefulset.spec.as_ref().expect("a spec").template;
    let metadata = template.metadata.as_ref().expect("pod metadata");
    let labels = metadata.labels.as_ref().expect("labels");
    assert_eq!(labels["team"], "orders");
    assert_eq!(labels["app.kubernetes.io/name"], "kvs");
    assert_eq!(
        metadata
            .annotations
            .as_ref()
            .map(|a| a["example.com/scrape"].as_str()),
        Some("true")
    );
    let pod = pod_spec(&statefulset);
    assert_eq!(pod.priority_class_name.as_deref(), Some("critical"));
    assert_eq!(
        pod.image_pull_secrets.as_ref().map(|s| s[0].name.as_str()),
        Some("registry")
    );
}

fn quota_arg(spec: &crate::crd::KvsClusterSpec) -> Option<String> {
    let names = Names::new("orders", "shop");
    node_container(spec, &names, "kvs:test")
        .args
        .unwrap_or_default()
        .into_iter()
        .find_map(|arg| arg.strip_prefix("--quota-bytes=").map(str::to_owned))
}

/// The node's quota comes from the container's memory limit, not the host's memory: with a 2Gi
/// limit on a large host, NOSPACE must fire before the OOM kill.
#[test]
fn the_quota_is_seventy_percent_of_the_memory_limit_unless_given() {
    let mut limited = spec(3, true);
    limited.resources = Some(ResourceRequirements {
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("2Gi".into()),
        )])),
        ..ResourceRequirements::default()
    });
    assert_eq!(
        quota_arg(&limited).as_deref(),
        Some(((2u64 << 30) * 7 / 10).to_string().as_str())
    );
    // The default resources have a limit too.
    assert_eq!(
        quota_arg(&spec(3, true)).as_deref(),
        Some(((1u64 << 30) * 7 / 10).to_string().as_str())
    );
    // Given explicitly, the spec's quota wins.
    limited.config.quota_bytes = Some(Quantity("512Mi".into()));
    assert_eq!(
        quota_arg(&limited).as_deref(),
        Some((512u64 << 20).to_string().as_str())
    );
    // No limit: the node's own default (half its cgroup limit or memory).
    limited.config.quota_bytes = None;
    limited.resources = Some(ResourceRequirements::default());
    assert_eq!(quota_arg(&limited), None);
}

/// `kvs.io/restartedAt` on the KvsCluster reaches the pod template, so changing it makes every
/// pod outdated and the planner's roll restarts them one at a time, the leader last.
#[test]
fn a_restart_request_changes_the_pod_template() {
    let mut cluster = cluster(spec(3, true));
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("namespaced with a uid");
    let before = blueprint.statefulset(3);
    cluster.metadata.annotations = Some(BTreeMap::from([(
        crate::crd::RESTARTED_AT.to_owned(),
        "2026-12-03T17:00:00Z".to_owned(),
    )]));
    let blueprint = Blueprint::new(&cluster, "kvs:test").expect("namespaced with a uid");
    let after = blueprint.statefulset(3);
    let template = |set: &StatefulSet| set.spec.as_ref().expect("a spec").template.clone();
    assert_ne!(template(&before), template(&after));
    let annotations = template(&after).metadata.and_then(|m| m.annotations);
    assert_eq!(
        annotations
            .as_ref()
            .map(|a| a[crate::crd::RESTARTED_AT].as_str()),
        Some("2026-12-03T17:00:00Z")
    );
}
