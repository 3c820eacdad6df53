//! `kubectl kvs`: the kubectl plugin of kvs-operator (installed as `kubectl-kvs` on PATH).
//! This file holds the backup verbs only; the day-two verbs join them here.

mod backup;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-kvs",
    about = "Manage kvs clusters run by kvs-operator"
)]
struct Cli {
    /// The namespace; the kubeconfig's when unset.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back a cluster up now: create a KvsBackup and wait for it, printing its progress.
    Backup(backup::BackupArgs),
    /// List a cluster's backups, oldest first.
    Backups {
        /// The KvsCluster.
        cluster: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the Kubernetes API: {e}"))?;
    let namespace = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_owned());
    match cli.command {
        Command::Backup(args) => backup::backup(client, &namespace, args).await,
        Command::Backups { cluster } => backup::backups(client, &namespace, &cluster).await,
    }
}
