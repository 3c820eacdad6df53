//! The `KvsBackup` custom resource: one backup of one KvsCluster into object storage, run by
//! the operator. Like `KvsCluster`, the schema is derived from these types and
//! `crds/kvsbackup.yaml` is `crdgen kvsbackup`'s output, never hand-edited.

use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A backup of a KvsCluster into object storage.
// Printer columns repeat `type_` by nature; clippy reads them as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kvs.io",
    version = "v1alpha1",
    kind = "KvsBackup",
    namespaced,
    status = "KvsBackupStatus",
    shortname = "kvsbackup",
    doc = "A backup of a KvsCluster into object storage, taken by kvs-operator",
    derive = "PartialEq",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.keys"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.bytes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KvsBackupSpec {
    /// The KvsCluster (in this namespace) to back up.
    pub cluster: String,
    /// Where the backup goes.
    pub destination: Destination,
}

/// An object store location and how to reach it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// `s3://BUCKET/PREFIX`: a backup is stored at `PREFIX/CLUSTER/BACKUP.kvs`. In a restore,
    /// the object's full URL.
    #[schemars(regex(pattern = r"^s3://[^/]+(/.*)?$"))]
    pub url: String,
    /// The store's URL, for S3-compatible stores other than AWS (`http://` is allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region; `us-east-1` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A Secret in this namespace with keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// Where a backup stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupPhase {
    /// Not started yet.
    Pending,
    /// Streaming from the leader into the store.
    Running,
    /// The object is complete and checked.
    Completed,
    /// It failed; no object was left at its URL.
    Failed,
}

/// What the operator did with a backup.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KvsBackupStatus {
    /// Where the backup stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// The object's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The object's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The backup's content checksum, as `kvsctl snapshot status` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Number of keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// Index of the last log entry the backup includes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_index: Option<u64>,
    /// Term of that entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_term: Option<u64>,
    /// When the operator started it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it completed or failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The KvsBackup CRD as YAML, as `crdgen kvsbackup` prints it.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&KvsBackup::crd()).expect("a CRD serializes to YAML")
}
