//! Contracts between crates that no compiler checks. The operator writes kvs-node's command line
//! but must never link kvs-node, so a renamed flag, a value the node cannot parse or a port the
//! node does not listen on would only show when a pod crash-loops. Here the arguments of the
//! operator's node container are expanded as the kubelet expands them and parsed, together with
//! the container's variables, by the node's own flag definitions; what they configure is compared
//! with the KvsCluster that asked, and the node must accept it (`NodeConfig::validate`).

use std::net::SocketAddr;

use clap::{CommandFactory, FromArgMatches, Parser};
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kvs_node::NodeConfig;
use kvs_operator::crd::{self, KvsClusterSpec, RespSpec, StorageSpec};
use kvs_operator::observe::{ClusterDns, Resolver};
use kvs_operator::resources::{self, DATA_DIR, Names};

/// kvs-node's flags, flattened as the node's `main` flattens them.
#[derive(Debug, Parser)]
#[command(name = "kvs-node")]
struct NodeFlags {
    #[command(flatten)]
    node: NodeConfig,
}

/// Parses the command line `args` in an environment of `variables` as kvs-node would, and never
/// from this process's environment: a `KVS_*` variable set where the tests run must not stand in
/// for a flag the operator failed to pass.
fn parse(args: &[String], variables: &[(String, String)]) -> Result<NodeConfig, clap::Error> {
    let command = NodeFlags::command().mut_args(|arg| {
        let value = arg
            .get_env()
            .and_then(|name| variables.iter().find(|(var, _)| name == var.as_str()))
            .map(|(_, value)| value.clone());
        let arg = arg.env(None);
        // clap prefers a flag to a variable and a variable to a default, so a variable's value
        // given as the default is read exactly as the variable would be. (clap holds defaults
        // as `&'static str`; a test may leak a few short strings.)
        match value {
            Some(value) => arg.default_value(&*value.leak()),
            None => arg,
        }
    });
    let matches = command
        .try_get_matches_from(std::iter::once("kvs-node".to_owned()).chain(args.iter().cloned()))?;
    Ok(NodeFlags::from_arg_matches(&matches)?.node)
}

/// The container's variables as the kubelet sets them in the pod named `pod`.
fn variables(container: &Container, pod: &str) -> Vec<(String, String)> {
    let env = container.env.as_deref().unwrap_or_default();
    env.iter()
        .map(|var| {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(from))
                    if from
                        .field_ref
                        .as_ref()
                        .is_some_and(|field| field.field_path == "metadata.name") =>
                {
                    pod.to_owned()
                }
                _ => panic!("{}: a source this test cannot resolve", var.name),
            };
            (var.name.clone(), value)
        })
        .collect()
}

/// The container's arguments as the kubelet hands them over: every `$(NAME)` replaced by the
/// variable NAME. The kubelet leaves a reference to an unknown variable as it is, so none may
/// remain.
fn expanded_args(container: &Container, variables: &[(String, String)]) -> Vec<String> {
    let args = container.args.clone().unwrap_or_default();
    let args: Vec<String> = args
        .into_iter()
        .map(|arg| {
            variables.iter().fold(arg, |arg, (name, value)| {
                arg.replace(&format!("$({name})"), value)
            })
        })
        .collect();
    for arg in &args {
        assert!(
            !arg.contains("$("),
            "{arg}: refers to no variable of the container"
        );
    }
    args
}

/// Every variable of the container is there for an argument to refer to or is one the node
/// reads, so a misspelt name cannot pass for configuration that is silently never read.
fn assert_env_is_used(container: &Container) {
    let command = NodeFlags::command();
    let read_by_node: Vec<_> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .collect();
    let args = container.args.clone().unwrap_or_default();
    for var in container.env.as_deref().unwrap_or_default() {
        let referred = args
            .iter()
            .any(|arg| arg.contains(&format!("$({})", var.name)));
        assert!(
            referred || read_by_node.iter().any(|name| *name == var.name.as_str()),
            "{}: neither an argument nor kvs-node uses it",
            var.name
        );
    }
}

/// The container port named `name`.
fn container_port(container: &Container, name: &str) -> Option<u16> {
    container
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|port| port.name.as_deref() == Some(name))
        .map(|port| u16::try_from(port.container_port).expect("a port number"))
}

fn durable(size: &str) -> StorageSpec {
    StorageSpec {
        size: Some(Quantity(size.into())),
        ..StorageSpec::default()
    }
}

fn spec(storage: StorageSpec, resp: RespSpec, config: crd::NodeConfig) -> KvsClusterSpec {
    KvsClusterSpec {
        replicas: 3,
        image: None,
        resources: None,
        storage,
        config,
        resp,
        placement: Default::default(),
        network_policy: Default::default(),
        paused: false,
        hibernate: false,
        image_pull_secrets: Vec::new(),
        pod_metadata: Default::default(),
    }
}

/// Checks the node container of `spec` against the node's flags, for pods 0 and 2.
fn assert_node_accepts(spec: &KvsClusterSpec) {
    let names = Names::new("orders", "shop");
    let container = resources::node_container(spec, &names, "kvs:test");
    assert_env_is_used(&container);
    let defaults = parse(&[], &[]).expect("no flags at all parse");
    for ordinal in [0, 2] {
        let variables = variables(&container, &names.pod(ordinal));
        let args = expanded_args(&container, &variables);
        let node = parse(&args, &variables)
            .unwrap_or_else(|err| panic!("{args:?} with {variables:?}:\n{err}"));
        node.validate()
            .unwrap_or_else(|err| panic!("{args:?}: the node refuses to start: {err}"));

        // Listening on the ports the container declares (the Services target them by name),
        // and advertising the address the operator matches members by.
        let client_port = container_port(&container, "client").expect("a client port");
        let peer_port = container_port(&container, "peer").expect("a peer port");
        assert_eq!(node.listen, SocketAddr::from(([0, 0, 0, 0], client_port)));
        assert_eq!(
            node.peer_listen,
            Some(SocketAddr::from(([0, 0, 0, 0], peer_port)))
        );
        let expected = ClusterDns.resolve(&names, ordinal);
        assert_eq!(node.advertise, Some(expected.advertised));
        assert_eq!(
            node.peer_advertise,
            Some(format!("{}:{peer_port}", names.pod_host(ordinal)))
        );
        assert_eq!(
            node.resp_listen,
            spec.resp
                .enabled
                .then(|| SocketAddr::from(([0, 0, 0, 0], spec.resp.port as u16)))
        );
        assert_eq!(
            node.resp_listen.map(|addr| addr.port()),
            container_port(&container, "resp"),
            "the RESP port is declared where the node listens"
        );
        // Only the operator forms a cluster.
        assert!(!node.bootstrap);

        // State where the volume is mounted, or in memory.
        assert_eq!(node.in_memory, spec.storage.in_memory);
        if !spec.storage.in_memory {
            let mounts = container.volume_mounts.as_deref().unwrap_or_default();
            assert_eq!(node.data_dir.to_str(), Some(DATA_DIR));
            assert!(
                mounts.iter().any(|mount| mount.mount_path == DATA_DIR),
                "{DATA_DIR} is not mounted: {mounts:?}"
            );
        }

        // Every tuning field reaches its flag; an unset one leaves the node's default. Listed
        // without `..`, so a new field of the CRD does not compile until it is checked here.
        let crd::NodeConfig {
            election_timeout_ms,
            heartbeat_interval_ms,
            request_timeout_ms,
            max_key_bytes,
            max_value_bytes,
            max_batch_ops,
            shutdown_grace_ms,
            max_batch_bytes,
            quota_bytes,
            snapshot_every,
            read_policy,
        } = &spec.config;
        let or = |asked: &Option<u32>, default: u64| asked.map_or(default, u64::from);
        let size = |bytes: usize| bytes as u64;
        let settings = [
            (
                "election_timeout_ms",
                node.election_timeout_ms,
                or(election_timeout_ms, defaults.election_timeout_ms),
            ),
            (
                "heartbeat_interval_ms",
                node.heartbeat_interval_ms,
                or(heartbeat_interval_ms, defaults.heartbeat_interval_ms),
            ),
            (
                "request_timeout_ms",
                node.request_timeout_ms,
                or(request_timeout_ms, defaults.request_timeout_ms),
            ),
            (
                "max_key_bytes",
                size(node.max_key_bytes),
                or(max_key_bytes, size(defaults.max_key_bytes)),
            ),
            (
                "max_value_bytes",
                size(node.max_value_bytes),
                or(max_value_bytes, size(defaults.max_value_bytes)),
            ),
            (
                "max_batch_ops",
                size(node.max_batch_ops),
                or(max_batch_ops, size(defaults.max_batch_ops)),
            ),
            (
                "shutdown_grace_ms",
                node.shutdown_grace_ms,
                or(shutdown_grace_ms, defaults.shutdown_grace_ms),
            ),
        ];
        let more = [
            (
                "max_batch_bytes",
                size(node.max_batch_bytes),
                or(max_batch_bytes, size(defaults.max_batch_bytes)),
            ),
            (
                "snapshot_every",
                node.snapshot_every,
                or(snapshot_every, defaults.snapshot_every),
            ),
        ];
        for (setting, got, asked) in settings.into_iter().chain(more) {
            assert_eq!(
                got, asked,
                "{setting}: the node does not run as the spec asks"
            );
        }
        assert_eq!(
            format!("{:?}", node.read_policy),
            format!("{:?}", read_policy.unwrap_or(crd::ReadPolicy::ReadIndex)),
            "read_policy: the node does not run as the spec asks"
        );
        if let Some(quota) = quota_bytes {
            assert_eq!(node.quota_bytes, kvs_operator::quantity::bytes(quota));
        }
        let crd::RespSpec {
            enabled,
            port: _,
            allow_flush,
            serializable_reads,
            idle_timeout_ms,
            request_timeout_ms,
        } = &spec.resp;
        if *enabled {
            assert_eq!(node.resp_allow_flush, *allow_flush);
            assert_eq!(node.resp_serializable_reads, *serializable_reads);
            assert_eq!(
                node.resp_idle_timeout_ms,
                or(idle_timeout_ms, defaults.resp_idle_timeout_ms)
            );
            assert_eq!(
                node.resp_request_timeout_ms,
                or(request_timeout_ms, defaults.resp_request_timeout_ms)
            );
        }
    }
}

#[test]
fn a_minimal_durable_cluster_starts_its_nodes_as_asked() {
    assert_node_accepts(&spec(
        durable("1Gi"),
        RespSpec::default(),
        crd::NodeConfig::default(),
    ));
}

#[test]
fn an_in_memory_cluster_with_resp_starts_its_nodes_as_asked() {
    let storage = StorageSpec {
        in_memory: true,
        ..StorageSpec::default()
    };
    let resp = RespSpec {
        enabled: true,
        ..RespSpec::default()
    };
    assert_node_accepts(&spec(storage, resp, crd::NodeConfig::default()));
}

#[test]
fn a_cluster_with_every_node_setting_starts_its_nodes_as_asked() {
    let resp = RespSpec {
        enabled: true,
        port: 6380,
        allow_flush: true,
        serializable_reads: true,
        idle_timeout_ms: Some(120_000),
        request_timeout_ms: Some(30_000),
    };
    // Every field, listed without `..`: a new one must be given a value here.
    let config = crd::NodeConfig {
        election_timeout_ms: Some(1500),
        heartbeat_interval_ms: Some(300),
        request_timeout_ms: Some(8000),
        max_key_bytes: Some(1024),
        max_value_bytes: Some(2 * 1024 * 1024),
        max_batch_ops: Some(64),
        shutdown_grace_ms: Some(25_000),
        max_batch_bytes: Some(8 * 1024 * 1024),
        quota_bytes: Some(Quantity("700Mi".into())),
        snapshot_every: Some(50_000),
        read_policy: Some(crd::ReadPolicy::Lease),
    };
    assert_node_accepts(&spec(durable("10Gi"), resp, config));
}
