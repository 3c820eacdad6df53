//! Backups the operator runs: a `KvsBackup` is carried out once — the leader's snapshot is
//! streamed into object storage with the same code as `kvsctl snapshot save s3://…`
//! ([`kvs_client::object`]) — and its outcome recorded in its status.
//!
//! A backup's phase only moves forward (Pending → Running → Completed or Failed) and a finished
//! backup is never run again, so its status is the whole record. A backup found Running when a
//! reconcile starts was cut off by an operator restart: it is marked Failed, never resumed,
//! because its upload was never completed and so left no object at its URL.

pub mod crd;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use kvs_client::backup::BackupSummary;
use kvs_client::object::{BackupLocation, StoreOptions};
use kvs_client::{Client as KvsClient, ClientOptions};

use crate::act::publish;
use crate::controller::Context;
use crate::crd::KvsCluster;
use crate::error::{Error, Result};
use crate::resources::Names;

pub use crd::{BackupPhase, Destination, KvsBackup, KvsBackupSpec, KvsBackupStatus};

/// The field manager of the status the operator writes.
const FIELD_MANAGER: &str = "kvs-operator";
/// The Secret keys a destination's credentials are read from.
const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Bound on each call to the cluster (the stream itself runs as long as data keeps coming).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a backup that has not run yet, or records that one was cut off; a finished backup is
/// left alone.
pub async fn reconcile(backup: Arc<KvsBackup>, context: Arc<Context>) -> Result<Action> {
    let namespace = backup
        .namespace()
        .ok_or_else(|| Error::Unidentified(backup.name_any()))?;
    let status = backup.status.clone().unwrap_or_default();
    match status.phase {
        Some(BackupPhase::Completed | BackupPhase::Failed) => return Ok(Action::await_change()),
        Some(BackupPhase::Running) => {
            let failed = KvsBackupStatus {
                phase: Some(BackupPhase::Failed),
                completed_at: Some(Timestamp::now().to_string()),
                error: Some("interrupted: the operator stopped during the backup".into()),
                ..status
            };
            write_status(&context, &backup, &namespace, &failed).await?;
            return Ok(Action::await_change());
        }
        Some(BackupPhase::Pending) | None => {}
    }
    let url = object_url(
        &backup.spec.destination.url,
        &backup.spec.cluster,
        &backup.name_any(),
    );
    let running = KvsBackupStatus {
        phase: Some(BackupPhase::Running),
        url: Some(url.clone()),
        started_at: Some(Timestamp::now().to_string()),
        ..KvsBackupStatus::default()
    };
    write_status(&context, &backup, &namespace, &running).await?;
    let outcome = take(&context, &backup.spec, &namespace, &url).await;
    let finished = finished_status(running, outcome, Timestamp::now());
    let (type_, reason, note) = match &finished.error {
        None => (
            EventType::Normal,
            "BackupCompleted",
            format!("{} keys saved to {url}", finished.keys.unwrap_or(0)),
        ),
        Some(error) => (EventType::Warning, "BackupFailed", error.clone()),
    };
    write_status(&context, &backup, &namespace, &finished).await?;
    publish(&context.recorder, backup.as_ref(), type_, reason, note).await;
    Ok(Action::await_change())
}

/// `s3://BUCKET/PREFIX` → `s3://BUCKET/PREFIX/CLUSTER/BACKUP.kvs`.
pub(crate) fn object_url(prefix: &str, cluster: &str, backup: &str) -> String {
    format!("{}/{cluster}/{backup}.kvs", prefix.trim_end_matches('/'))
}

/// The status once a run ended.
fn finished_status(
    running: KvsBackupStatus,
    outcome: std::result::Result<BackupSummary, String>,
    now: Timestamp,
) -> KvsBackupStatus {
    let completed_at = Some(now.to_string());
    match outcome {
        Ok(summary) => KvsBackupStatus {
            phase: Some(BackupPhase::Completed),
            bytes: Some(summary.bytes),
            checksum: Some(summary.checksum_hex()),
            keys: Some(summary.keys),
            last_index: Some(summary.header.last_index),
            last_term: Some(summary.header.last_term),
            completed_at,
            ..running
        },
        Err(error) => KvsBackupStatus {
            phase: Some(BackupPhase::Failed),
            completed_at,
            error: Some(error),
            ..running
        },
    }
}

/// Streams the cluster's backup into `url`; the error is the message for the status.
async fn take(
    context: &Context,
    spec: &KvsBackupSpec,
    namespace: &str,
    url: &str,
) -> std::result::Result<BackupSummary, String> {
    let clusters: Api<KvsCluster> = Api::namespaced(context.client.clone(), namespace);
    let cluster = clusters
        .get(&spec.cluster)
        .await
        .map_err(|e| format!("cannot read KvsCluster {}: {e}", spec.cluster))?;
    let kvs = cluster_client(context, &cluster, namespace)?;
    let options = store_options(context, &spec.destination, namespace).await?;
    let location = BackupLocation::parse(url, &options).map_err(|e| e.to_string())?;
    location
        .save(&kvs, |_, _| {})
        .await
        .map_err(|e| e.to_string())
}

/// A client to every pod the cluster's spec asks for, as the operator dials them.
pub(crate) fn cluster_client(
    context: &Context,
    cluster: &KvsCluster,
    namespace: &str,
) -> std::result::Result<KvsClient, String> {
    let names = Names::new(&cluster.name_any(), namespace);
    let dials = (0..cluster.spec.replicas.max(1) as u32)
        .map(|ordinal| context.resolver.resolve(&names, ordinal).dial)
        .collect();
    KvsClient::connect(
        dials,
        ClientOptions {
            timeout: CALL_TIMEOUT,
            ..ClientOptions::default()
        },
    )
    .map_err(|e| e.to_string())
}

/// The store options of a destination, with its Secret's credentials.
pub(crate) async fn store_options(
    context: &Context,
    destination: &Destination,
    namespace: &str,
) -> std::result::Result<StoreOptions, String> {
    let mut options = StoreOptions {
        endpoint: destination.endpoint.clone(),
        region: destination.region.clone(),
        ..StoreOptions::default()
    };
    if let Some(name) = &destination.credentials_secret {
        let secrets: Api<Secret> = Api::namespaced(context.client.clone(), namespace);
        let secret = secrets
            .get(name)
            .await
            .map_err(|e| format!("cannot read Secret {name}: {e}"))?;
        let key = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|data| data.get(key))
                .and_then(|value| String::from_utf8(value.0.clone()).ok())
                .ok_or_else(|| format!("Secret {name} has no key {key}"))
        };
        options.access_key_id = Some(key(ACCESS_KEY_ID)?);
        options.secret_access_key = Some(key(SECRET_ACCESS_KEY)?);
    }
    Ok(options)
}

async fn write_status(
    context: &Context,
    backup: &KvsBackup,
    namespace: &str,
    status: &KvsBackupStatus,
) -> Result<()> {
    let api: Api<KvsBackup> = Api::namespaced(context.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": KvsBackup::api_version(&()),
        "kind": KvsBackup::kind(&()),
        "status": status,
    });
    api.patch_status(
        &backup.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_go_under_the_prefix_by_cluster_and_backup() {
        assert_eq!(
            object_url("s3://b/kvs/", "orders", "nightly-1"),
            "s3://b/kvs/orders/nightly-1.kvs"
        );
        assert_eq!(object_url("s3://b", "o", "n"), "s3://b/o/n.kvs");
    }

    #[test]
    fn a_failed_run_keeps_no_summary_and_says_why() {
        let running = KvsBackupStatus {
            phase: Some(BackupPhase::Running),
            url: Some("s3://b/o/n.kvs".into()),
            ..KvsBackupStatus::default()
        };
        let failed = finished_status(running, Err("leader lost".into()), Timestamp::UNIX_EPOCH);
        assert_eq!(failed.phase, Some(BackupPhase::Failed));
        assert_eq!(failed.error.as_deref(), Some("leader lost"));
        assert_eq!((failed.keys, failed.checksum), (None, None));
        assert_eq!(failed.url.as_deref(), Some("s3://b/o/n.kvs"));
    }
}
