//! The control loop: `reconcile` and `error_policy` over every `KvsCluster`, and the operator's
//! own leader election.
//!
//! A reconcile is observe → plan → act → status, with no state kept between reconciles beyond
//! what the status records, so any instance can pick up where another stopped. Only the holder
//! of the Lease reconciles; an instance that loses it stops and returns an error, so its
//! process restarts as a follower instead of racing the new leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::utils::{Predicate, PredicateConfig};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube_lease_manager::LeaseManagerBuilder;

use crate::act::{Actor, apply_status, publish};
use crate::backup::{self, KvsBackup};
use crate::crd::{KvsCluster, KvsClusterStatus};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::observe::{Observer, Resolver};
use crate::plan::{Settings, Step, plan_next_step, status_of, with_failure};
use crate::resources::{Blueprint, MANAGED_BY_SELECTOR};

/// The node image used when a KvsCluster names none.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/kvs-io/kvs-node:", env!("CARGO_PKG_VERSION"));

/// Requeue while a step is under way: membership changes are seconds apart.
const REQUEUE_PROGRESSING: Duration = Duration::from_secs(2);
/// Requeue of a steady cluster, to notice failures that change no Kubernetes object.
const REQUEUE_STEADY: Duration = Duration::from_secs(30);
/// Pause after a failed reconcile; it doubles with each failure in a row.
const REQUEUE_FAILED: Duration = Duration::from_secs(5);
/// The longest pause after failures: a fixed cluster is noticed within this.
const REQUEUE_FAILED_MAX: Duration = Duration::from_secs(300);
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
    /// Failed reconciles in a row, by KvsCluster (namespace/name); cleared by a success.
    failures: Mutex<HashMap<String, u32>>,
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
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        // The map only holds counters: one left by a panicking thread is still a counter.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more failed reconcile of `cluster` and returns how many in a row.
    fn count_failure(&self, cluster: &KvsCluster) -> u32 {
        let mut failures = self.failures();
        let count = failures.entry(failure_key(cluster)).or_default();
        *count = count.saturating_add(1);
        *count
    }

    fn forget_failures(&self, cluster: &KvsCluster) {
        self.failures().remove(&failure_key(cluster));
    }
}

fn failure_key(cluster: &KvsCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
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
    let (reader, writer) = reflector::store();
    let clusters = watcher(clusters, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let managed = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    let clusters = Controller::for_stream(changes_worth_a_reconcile(clusters), reader)
        .owns(statefulsets, managed)
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

/// The KvsClusters whose spec (generation) or annotations (switchover, restart) changed. The
/// operator's own status patches change neither, so they no longer trigger a reconcile each:
/// under load that loop was a reconcile per status write.
fn changes_worth_a_reconcile(
    clusters: impl Stream<Item = Result<watcher::Event<KvsCluster>, watcher::Error>> + Send,
) -> impl Stream<Item = Result<KvsCluster, watcher::Error>> + Send {
    clusters.applied_objects().predicate_filter(
        predicates::generation.combine(predicates::annotations),
        PredicateConfig::default(),
    )
}

/// Observe, plan one step, carry it out, record the status. This is what [`run`] calls for
/// every change and requeue; end-to-end tests call it directly.
///
/// A failure is recorded where users look before it is returned: `Ready=False` with the error's
/// reason and message in the status, and a Warning Event.
pub async fn reconcile(cluster: Arc<KvsCluster>, context: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let (status, outcome) = plan_and_act(&cluster, &context).await;
    let generation = cluster.metadata.generation;
    let failure = outcome
        .as_ref()
        .err()
        .map(|err| (err.reason(), err.to_string()));
    let status = match &failure {
        None => status,
        Some((reason, message)) => {
            // Without an observation the last status stands, with the error added.
            let mut status = status
                .or_else(|| cluster.status.clone())
                .unwrap_or_default();
            // The generation is only observed once a reconcile of it succeeded, so what it asks
            // for once (deleting an object it no longer wants) is asked for again.
            status.observed_generation =
                cluster.status.as_ref().and_then(|s| s.observed_generation);
            Some(with_failure(
                status,
                Timestamp::now(),
                generation,
                reason,
                message.clone(),
            ))
        }
    };
    let written = match &status {
        Some(status) => apply_status(&context.client, &cluster, status).await,
        None => Ok(()),
    };
    if let Some((reason, message)) = failure {
        publish(
            &context.recorder,
            cluster.as_ref(),
            EventType::Warning,
            reason,
            message,
        )
        .await;
    }
    let step = outcome?;
    written?;
    context.metrics.reconciled(step.reason(), started.elapsed());
    context.forget_failures(&cluster);
    Ok(Action::requeue(if step.progressing() {
        REQUEUE_PROGRESSING
    } else {
        REQUEUE_STEADY
    }))
}

/// The status to record (when there was something to observe) and the step carried out.
async fn plan_and_act(
    cluster: &KvsCluster,
    context: &Context,
) -> (Option<KvsClusterStatus>, Result<Step>) {
    let Some(blueprint) = Blueprint::new(cluster, &context.default_image) else {
        return (None, Err(Error::Unidentified(cluster.name_any())));
    };
    let observer = Observer {
        client: &context.client,
        resolver: context.resolver.as_ref(),
        names: &blueprint.names,
    };
    let (observed, kvs) = match observer.observe(cluster, Timestamp::now()).await {
        Ok(observed) => observed,
        Err(err) => return (None, Err(err)),
    };
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
        actor.warn_small_cluster(cluster).await;
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
    status.selector = Some(blueprint.names.selector_string());
    (Some(status), acted.map(|_| plan.step))
}

/// A failed reconcile is logged, counted and retried after a pause that doubles with each
/// failure in a row (see [`backoff`]).
pub(crate) fn error_policy(
    cluster: Arc<KvsCluster>,
    error: &Error,
    context: Arc<Context>,
) -> Action {
    let failures = context.count_failure(&cluster);
    tracing::warn!(cluster = cluster.name_any(), %error, failures, "reconcile failed");
    context.metrics.failed();
    Action::requeue(backoff(failures))
}

/// The pause after the `failures`-th failed reconcile in a row: [`REQUEUE_FAILED`], doubled for
/// each further failure, at most [`REQUEUE_FAILED_MAX`].
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    REQUEUE_FAILED
        .saturating_mul(1 << doublings)
        .min(REQUEUE_FAILED_MAX)
}

#[cfg(test)]
mod fake_kvs;
#[cfg(test)]
mod tests;
