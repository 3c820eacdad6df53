//! `kvs-operator`: reconciles KvsClusters in every namespace (or one, `--watch-namespace`).
//!
//! With only `KUBECONFIG` set (or in a pod, its service account) and no flags it runs as a
//! developer expects: all namespaces, its Lease in the kubeconfig's namespace, the built-in node
//! image, metrics on localhost only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Parser};
use kvs_operator::Settings;
use kvs_operator::controller::{self, Config, DEFAULT_IMAGE, LeaseConfig};
use kvs_operator::metrics::{self, Metrics};
use kvs_operator::observe::ClusterDns;
use tracing_subscriber::EnvFilter;

/// Kubernetes operator for kvs clusters.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Serve Prometheus metrics at http://ADDR/metrics (in a pod: 0.0.0.0:9464).
    #[arg(
        long,
        env = "KVS_OPERATOR_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    metrics_addr: SocketAddr,
    /// Take a Lease before reconciling, so only one instance acts.
    #[arg(long, env = "KVS_OPERATOR_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease; the kubeconfig's (or service account's) namespace by default.
    #[arg(long, env = "KVS_OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Reconcile KvsClusters of this namespace only (a namespaced Role then suffices); all
    /// namespaces when unset.
    #[arg(long, env = "KVS_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, env = "KVS_OPERATOR_LEASE_NAME", default_value = "kvs-operator")]
    lease_name: String,
    /// Node image of KvsClusters that name none.
    #[arg(long, env = "KVS_OPERATOR_DEFAULT_IMAGE", default_value = DEFAULT_IMAGE)]
    default_image: String,
    /// Seconds a member of an in-memory cluster may stay unhealthy (and its pod not Ready)
    /// before it is replaced; the timer stands still while the cluster has no quorum.
    #[arg(long, env = "KVS_OPERATOR_FAILURE_TIMEOUT_SECS", default_value_t = 300)]
    failure_timeout_secs: u64,
    /// The same for durable clusters, whose down members keep their data.
    #[arg(
        long,
        env = "KVS_OPERATOR_DURABLE_FAILURE_TIMEOUT_SECS",
        default_value_t = 1800
    )]
    durable_failure_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (set KUBECONFIG or run in a pod)")?;
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("kvs-operator-{}", std::process::id()));
    let lease = args.leader_election.then(|| LeaseConfig {
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        name: args.lease_name.clone(),
        identity,
    });
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_addr))?;
    let config = Config {
        default_image: args.default_image,
        settings: Settings {
            failure_timeout: Duration::from_secs(args.failure_timeout_secs),
            durable_failure_timeout: Duration::from_secs(args.durable_failure_timeout_secs),
        },
        lease,
        watch_namespace: args
            .watch_namespace
            .filter(|namespace| !namespace.is_empty()),
        resolver: Arc::new(ClusterDns),
        metrics: metrics.clone(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(metrics::serve(listener, metrics, wait_for(stopped.clone())));
    let result = controller::run(client, config, shutdown_signal()).await;
    let _ = stop.send(true);
    serving.await.context("metrics task")??;
    result.context("operator stopped")
}

async fn wait_for(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stopped| *stopped).await;
}

/// SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
