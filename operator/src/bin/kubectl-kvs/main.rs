//! `kubectl kvs`: a kubectl plugin for KvsClusters (kubectl runs `kubectl-kvs` from PATH).
//!
//! It talks to the API server the way kubectl does — the kubeconfig (`KUBECONFIG`, its current
//! context and namespace) or, in a pod, the service account — and only reads KvsClusters, their
//! pods and Events, patches a KvsCluster's spec and annotations or creates a KvsBackup: the
//! operator does the work,
//! so the plugin needs no access to the kvs nodes. One module per verb family: `cluster`
//! (status, switchover, restart, hibernate) and `backup` (backup, backups).

mod backup;
mod cluster;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

/// Inspect and operate kvs clusters run by kvs-operator.
#[derive(Debug, Parser)]
#[command(name = "kubectl kvs", version)]
struct Cli {
    /// The namespace; the kubeconfig context's namespace when omitted.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// For people.
    Text,
    /// One JSON object, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Members, roles, leader, lag, versions, conditions and the last events of a cluster.
    Status {
        /// The KvsCluster.
        name: String,
    },
    /// Move leadership to the member on POD (annotation `kvs.io/switchover-to`).
    Switchover {
        /// The KvsCluster.
        name: String,
        /// The pod whose member should lead.
        pod: String,
    },
    /// Restart every member one at a time, the leader last (annotation `kvs.io/restartedAt`).
    Restart {
        /// The KvsCluster.
        name: String,
    },
    /// Stop every pod keeping volumes and membership (`on`), or resume (`off`).
    Hibernate {
        /// The KvsCluster.
        name: String,
        /// `on` or `off`.
        state: cluster::Switch,
    },
    /// Back a cluster up now: create a KvsBackup and wait for it, printing its progress.
    Backup(backup::BackupArgs),
    /// List a cluster's backups, oldest first.
    Backups {
        /// The KvsCluster.
        cluster: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (set KUBECONFIG or run in a pod)")?;
    let namespace = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let clusters = cluster::Clusters::new(client.clone(), &namespace);
    let json = cli.output == Output::Json;
    let printed = match cli.command {
        Command::Status { name } => clusters.status(&name).await?.render(json),
        Command::Switchover { name, pod } => clusters.switchover(&name, &pod).await?.render(json),
        Command::Restart { name } => clusters.restart(&name).await?.render(json),
        Command::Hibernate { name, state } => clusters.hibernate(&name, state).await?.render(json),
        Command::Backup(args) => return backup::backup(client, &namespace, args).await,
        Command::Backups { cluster } => {
            return backup::backups(client, &namespace, &cluster).await;
        }
    };
    print!("{printed}");
    Ok(())
}
