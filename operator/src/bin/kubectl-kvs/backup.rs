//! `kubectl kvs backup CLUSTER` (create a KvsBackup and wait for its outcome, printing each
//! phase) and `kubectl kvs backups CLUSTER` (list a cluster's backups, oldest first).

use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use kvs_operator::backup::{BackupPhase, Destination, KvsBackup, KvsBackupSpec};

/// How often a running backup's status is read.
const POLL: Duration = Duration::from_secs(1);

/// Where `backup` puts the object.
#[derive(Debug, clap::Args)]
pub(crate) struct BackupArgs {
    /// The KvsCluster to back up.
    cluster: String,
    /// `s3://BUCKET/PREFIX`; the object is PREFIX/CLUSTER/BACKUP.kvs.
    #[arg(long)]
    url: String,
    /// The store's URL, for S3-compatible stores.
    #[arg(long)]
    endpoint: Option<String>,
    /// The store's region.
    #[arg(long)]
    region: Option<String>,
    /// A Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    #[arg(long)]
    credentials_secret: Option<String>,
    /// The KvsBackup's name; CLUSTER-YYYYMMDDHHMMSS when unset.
    #[arg(long)]
    name: Option<String>,
    /// Stop waiting after this long (the backup goes on).
    #[arg(long, default_value = "1h", value_parser = humantime_secs)]
    timeout: Duration,
}

fn humantime_secs(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text}"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("not a duration: {text} (use s, m or h)")),
    };
    Ok(Duration::from_secs(number * seconds))
}

/// Creates the KvsBackup and waits for it to finish; fails unless it completed.
pub(crate) async fn backup(
    client: Client,
    namespace: &str,
    args: BackupArgs,
) -> anyhow::Result<()> {
    let api: Api<KvsBackup> = Api::namespaced(client, namespace);
    let name = args.name.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            args.cluster,
            Timestamp::now().strftime("%Y%m%d%H%M%S")
        )
    });
    let backup = KvsBackup::new(
        &name,
        KvsBackupSpec {
            cluster: args.cluster.clone(),
            destination: Destination {
                url: args.url,
                endpoint: args.endpoint,
                region: args.region,
                credentials_secret: args.credentials_secret,
            },
        },
    );
    api.create(&PostParams::default(), &backup)
        .await
        .with_context(|| format!("creating KvsBackup {name}"))?;
    println!("kvsbackup/{name} created");
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut shown = None;
    loop {
        let current = api
            .get(&name)
            .await
            .with_context(|| format!("reading KvsBackup {name}"))?;
        let status = current.status.unwrap_or_default();
        if status.phase != shown {
            shown = status.phase;
            match status.phase {
                Some(BackupPhase::Completed) => {
                    println!(
                        "Completed: {} keys, {} bytes, checksum {} at {}",
                        status.keys.unwrap_or(0),
                        status.bytes.unwrap_or(0),
                        status.checksum.unwrap_or_default(),
                        status.url.unwrap_or_default()
                    );
                    return Ok(());
                }
                Some(BackupPhase::Failed) => {
                    bail!(
                        "kvsbackup/{name} failed: {}",
                        status.error.unwrap_or_default()
                    )
                }
                Some(phase) => println!("{phase:?}…"),
                None => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "kvsbackup/{name} did not finish within {:?}; it goes on",
                args.timeout
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Lists the KvsBackups of `cluster`, oldest first.
pub(crate) async fn backups(client: Client, namespace: &str, cluster: &str) -> anyhow::Result<()> {
    let api: Api<KvsBackup> = Api::namespaced(client, namespace);
    let mut list: Vec<KvsBackup> = api
        .list(&ListParams::default())
        .await
        .context("listing KvsBackups")?
        .items
        .into_iter()
        .filter(|backup| backup.spec.cluster == cluster)
        .collect();
    list.sort_by_key(|backup| backup.creation_timestamp().map(|t| t.0));
    println!(
        "{:<40} {:<10} {:>10} {:>14} {:<16} URL",
        "NAME", "PHASE", "KEYS", "BYTES", "CHECKSUM"
    );
    for backup in list {
        let status = backup.status.clone().unwrap_or_default();
        let dash = || "-".to_owned();
        println!(
            "{:<40} {:<10} {:>10} {:>14} {:<16} {}",
            backup.name_any(),
            status.phase.map_or_else(dash, |p| format!("{p:?}")),
            status.keys.map_or_else(dash, |k| k.to_string()),
            status.bytes.map_or_else(dash, |b| b.to_string()),
            status.checksum.unwrap_or_else(dash),
            status.url.unwrap_or_else(dash),
        );
    }
    Ok(())
}
