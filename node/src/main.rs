//! The `kvs-node` binary: parse flags, bind, run until SIGTERM or Ctrl-C.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use clap::Subcommand;
use kvs_node::Listeners;
use kvs_node::NodeConfig;
use kvs_node::demo::DemoArgs;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::SignalKind;
use tokio::signal::unix::signal;

/// A kvs node: one member of a Raft-replicated key-value cluster.
#[derive(Debug, Parser)]
#[command(name = "kvs-node", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    node: NodeConfig,
    /// Exit when standard input closes (used by `demo` so nodes die with it).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a local cluster of N nodes on 127.0.0.1 in the foreground.
    Demo(DemoArgs),
}

/// Resolves on SIGTERM or SIGINT, or when stdin closes if `watch_stdin`.
async fn shutdown_signal(watch_stdin: bool) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    let stdin_closed = async {
        if !watch_stdin {
            return std::future::pending().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = stdin_closed => {}
    }
}

#[tokio::main]
pub(crate) async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Demo(args)) => kvs_node::demo::run(args, shutdown_signal(false)).await,
        None => match cli.node.validate() {
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            Ok(()) => match Listeners::bind(&cli.node).await {
                Ok(listeners) => {
                    kvs_node::run(listeners, cli.node, shutdown_signal(cli.exit_with_parent)).await
                }
                Err(e) => Err(e),
            },
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Like a bad flag: the node cannot start as configured.
        Err(e @ kvs_node::Error::AuthFile(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
