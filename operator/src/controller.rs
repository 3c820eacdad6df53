//! The control loop: `reconcile` and `error_policy` over every `KvsCluster`, and the operator's
//! own leader election.
//!
//! A reconcile is observe → plan → act → status, with no state kept between reconciles beyond
//! what the status records, so any instance can pick up where another stopped. Only the holder
//! of the Lease reconciles; an instance that loses it stops and returns an error, so its
//! process restarts as a follower instead of racing the new leader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube_lease_manager::LeaseManagerBuilder;

use crate::act::{Actor, apply_status};
use crate::backup::{self, KvsBackup};
use crate::crd::KvsCluster;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::observe::{Observer, Resolver};
use crate::plan::{Settings, plan_next_step, status_of};
use crate::resources::Blueprint;

/// The node image used when a KvsCluster names none.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/kvs-io/kvs-node:", env!("CARGO_PKG_VERSION"));

/// Requeue while a step is under way: membership changes are seconds apart.
const REQUEUE_PROGRESSING: Duration = Duration::from_secs(2);
/// Requeue of a steady cluster, to notice failures that change no Kubernetes object.
const REQUEUE_STEADY: Duration = Duration::from_secs(30);
/// Pause after a failed reconcile.
const REQUEUE_FAILED: Duration = Duration::from_secs(5);
/// Lease timing: held for 15 s, renewed 5 s before it expires.
const LEASE_SECONDS: u64 = 15;
const LEASE_GRACE_SECONDS: u64 = 5;

/// How the operator runs.
pub struct Config {
    /// The node image of clusters whose spec names none.
    pub default_image: String,
    /// The planner's thresholds.
    pub settings: Settings,
    /// Take this Lease before reconciling; `None` reconciles at once (one instance, or tests).
    pub lease: Option<LeaseConfig>,
    /// Reconcile the KvsClusters of this namespace only, so a namespaced Role is all the
    /// operator needs; `None` watches every namespace.
    pub watch_namespace: Option<String>,
    /// Where pods are dialed.
    pub resolver: Arc<dyn Resolver>,
    /// The metrics every reconcile updates.
    pub metrics: Arc<Metrics>,
}

/// The operator's Lease.
pub struct LeaseConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This instance's identity in the Lease (its pod name in a cluster).
    pub identity: String,
}

/// What every reconcile shares: the API client, the event recorder, the settings, the resolver
/// and the metrics.
pub struct Context {
    pub(crate) client: kube::Client,
    pub(crate) recorder: Recorder,
    pub(crate) default_image: String,
    pub(crate) settings: Settings,
    pub(crate) resolver: Arc<dyn Resolver>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Context {
    /// The context of the operator configured by `config`.
    pub fn new(client: kube::Client, config: &Config) -> Self {
        let reporter = Reporter {
            controller: "kvs-operator".into(),
            instance: config.lease.as_ref().map(|lease| lease.identity.clone()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            default_image: config.default_image.clone(),
            settings: config.settings.clone(),
            resolver: config.resolver.clone(),
            metrics: config.metrics.clone(),
        }
    }
}

/// Reconciles KvsClusters (in `config.watch_namespace`, or every namespace) until `shutdown`
/// completes (or the Lease is lost).
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<()> {
    let context = Arc::new(Context::new(client.clone(), &config));
    let Some(lease) = config.lease else {
        run_controller(client, context, config.watch_namespace.as_deref(), shutdown).await;
        return Ok(());
    };
    let manager = LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await?;
    let (mut leading, watching) = manager.watch().await;
    tokio::pin!(shutdown);
    tracing::info!(
        lease = lease.name,
        namespace = lease.namespace,
        "waiting for the lease"
    );
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            () = &mut shutdown => {
                drop(leading);
                return release(watching).await;
            }
            changed = leading.changed() => {
                if changed.is_err() {
                    return release(watching).await.and(Err(Error::LeadershipLost));
                }
            }
        }
    }
    tracing::info!("holding the lease; reconciling");
    let mut watch_loss = leading.clone();
    let lost = async move {
        while watch_loss.changed().await.is_ok() {
            if !*watch_loss.borrow_and_update() {
                return;
            }
        }
    };
    // Dropping `stop` is what tells the controller to finish its reconciles and return.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = run_controller(
        client,
        context,
        config.watch_namespace.as_deref(),
        async move {
            let _ = stopped.await;
        },
    );
    tokio::pin!(controller);
    let mut controller_done = false;
    let lost_lease = tokio::select! {
        () = &mut shutdown => false,
        () = lost => true,
        () = &mut controller => {
            controller_done = true;
            false
        }
    };
    drop(stop);
    if !controller_done {
        controller.await;
    }
    // The lease task releases the Lease once every receiver is gone.
    drop(leading);
    release(watching).await?;
    if lost_lease {
        return Err(Error::LeadershipLost);
    }
    Ok(())
}

async fn release(
    watching: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) -> Result<()> {
    match watching.await {
        Ok(result) => result.map(drop).map_err(Error::from),
        Err(err) => {
            tracing::warn!(%err, "the lease task ended abnormally");
            Ok(())
        }
    }
}

async fn run_controller(
    client: kube::Client,
    context: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (clusters, statefulsets, backups): (Api<KvsCluster>, Api<StatefulSet>, Api<KvsBackup>) =
        match namespace {
            Some(namespace) => (
                Api::namespaced(client.clone(), namespace),
                Api::namespaced(client.clone(), namespace),
                Api::namespaced(client, namespace),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client),
            ),
        };
    let shutdown = shutdown.shared();
    let clusters = Controller::new(clusters, watcher::Config::default())
        .owns(statefulsets, watcher::Config::default())
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, context.clone())
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "reconcile request not handled");
            }
        });
    let backups = Controller::new(backups, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(backup::reconcile, backup_error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "backup reconcile request not handled");
            }
        });
    futures::join!(clusters, backups);
}

/// A backup whose status could not be written is retried after a pause.
fn backup_error_policy(backup: Arc<KvsBackup>, error: &Error, context: Arc<Context>) -> Action {
    tracing::warn!(backup = backup.name_any(), %error, "backup reconcile failed");
    context.metrics.failed();
    Action::requeue(REQUEUE_FAILED)
}

/// Observe, plan one step, carry it out, record the status. This is what [`run`] calls for
/// every change and requeue; end-to-end tests call it directly.
pub async fn reconcile(cluster: Arc<KvsCluster>, context: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let blueprint = Blueprint::new(&cluster, &context.default_image)
        .ok_or_else(|| Error::Unidentified(cluster.name_any()))?;
    let observer = Observer {
        client: &context.client,
        resolver: context.resolver.as_ref(),
        names: &blueprint.names,
    };
    let (observed, kvs) = observer.observe(&cluster, Timestamp::now()).await?;
    let plan = plan_next_step(&cluster.spec, &observed, &context.settings);
    tracing::info!(
        cluster = cluster.name_any(),
        namespace = blueprint.names.namespace(),
        step = ?plan.step,
        "planned"
    );
    let actor = Actor {
        client: &context.client,
        recorder: &context.recorder,
        resolver: context.resolver.as_ref(),
        blueprint: &blueprint,
        kvs: kvs.as_ref(),
    };
    if plan.replicas.is_some() {
        actor.warn_small_cluster(&cluster).await;
    }
    let acted = actor.act(&plan).await;
    let mut status = status_of(
        &observed,
        &plan,
        cluster.status.as_ref(),
        cluster.metadata.generation,
    );
    if let Ok(Some(formed)) = &acted {
        status.cluster_id = Some(formed.clone());
    }
    apply_status(&context.client, &cluster, &status).await?;
    acted?;
    context
        .metrics
        .reconciled(plan.step.reason(), started.elapsed());
    Ok(Action::requeue(if plan.step.progressing() {
        REQUEUE_PROGRESSING
    } else {
        REQUEUE_STEADY
    }))
}

/// A failed reconcile is logged, counted and retried after a pause.
pub(crate) fn error_policy(
    cluster: Arc<KvsCluster>,
    error: &Error,
    context: Arc<Context>,
) -> Action {
    tracing::warn!(cluster = cluster.name_any(), %error, "reconcile failed");
    context.metrics.failed();
    Action::requeue(REQUEUE_FAILED)
}

#[cfg(test)]
mod fake_kvs;
#[cfg(test)]
mod tests;
