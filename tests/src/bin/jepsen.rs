//! `jepsen`: a fault-injection campaign against real `kvs-node` processes, checked for
//! linearizability, lost writes and convergence. Exits 0 if and only if nothing was found.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use clap::Parser;
use kvs_tests::Binaries;
use kvs_tests::jepsen::campaign;
use kvs_tests::jepsen::campaign::CampaignOptions;
use kvs_tests::jepsen::nemesis::Nemesis;
use kvs_tests::jepsen::workload::WorkloadOptions;

/// Run concurrent clients against a local kvs cluster while a nemesis kills, pauses,
/// partitions, slows down, removes and re-adds nodes and drops requests and replies; check the
/// history. The last line printed is `ops=N anomalies=N lost=N`.
#[derive(Debug, Parser)]
#[command(name = "jepsen")]
struct Args {
    /// Total workload time in seconds (`all` splits it evenly between its phases).
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// `none`, `kill`, `pause`, `partition`, `delay`, `drop-replies`, `drop-requests`,
    /// `membership`, `failpoint`, `power`, `clock`, `mixed`, or `all` (each alone, then mixed).
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Seeds every random choice of the workload and the nemeses.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The `kvs-node` binary (default: the one next to this executable); `kvsctl` is taken from
    /// the same directory.
    #[arg(long)]
    kvs_node: Option<PathBuf>,
    /// The failpoint build of the node, for the `failpoint` nemesis (default: the
    /// `kvs-node-failpoints` next to this executable, built or rebuilt there when missing or
    /// older than its sources).
    #[arg(long)]
    kvs_node_failpoints: Option<PathBuf>,
    /// The `powerfs` tool, for the `power` nemesis (default: the one next to this executable).
    #[arg(long)]
    powerfs: Option<PathBuf>,
    /// Testing the tester: run the `power` nemesis on the failpoint build with the raft log's
    /// fsyncs skipped; the campaign must then report lost writes.
    #[arg(long)]
    skip_fsync: bool,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// Deadline of one client operation, retries included, in milliseconds; shorter deadlines
    /// leave more operations indeterminate.
    #[arg(long, default_value_t = 4000)]
    op_timeout_ms: u64,
    /// Serve reads from each node's local state without consensus — deliberately unsafe, to
    /// show that the checker catches the stale reads this allows under partitions.
    #[arg(long)]
    serializable_reads: bool,
    /// Where offending histories are written.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("kvs-jepsen"))]
    report_dir: PathBuf,
}

fn binaries(kvs_node: Option<PathBuf>) -> anyhow::Result<&'static Binaries> {
    let node = match kvs_node {
        Some(path) => path,
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .with_file_name("kvs-node"),
    };
    let kvsctl = node.with_file_name("kvsctl");
    for binary in [&node, &kvsctl] {
        if !binary.is_file() {
            bail!(
                "{} not found (build with `cargo build --workspace --bins`)",
                binary.display()
            );
        }
    }
    // One set of binaries for the life of the process, as the harness expects.
    Ok(Box::leak(Box::new(Binaries { node, kvsctl })))
}

/// `usual` with the failpoint build of the node: `path`, or the one next to this executable.
fn failpoint_binaries(
    usual: &Binaries,
    path: Option<PathBuf>,
) -> anyhow::Result<&'static Binaries> {
    let node = match path {
        Some(path) if path.is_file() => path,
        Some(path) => bail!("{} not found", path.display()),
        None => {
            let exe = std::env::current_exe().context("cannot find this executable")?;
            let dir = exe.parent().context("this executable is in no directory")?;
            kvs_tests::failpoint_node(dir).map_err(anyhow::Error::msg)?
        }
    };
    Ok(Box::leak(Box::new(Binaries {
        node,
        kvsctl: usual.kvsctl.clone(),
    })))
}

/// The `powerfs` tool: `path`, or the one next to this executable.
fn powerfs(path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match path {
        Some(path) => path,
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .with_file_name("powerfs"),
    };
    if !path.is_file() {
        bail!(
            "{} not found (build with `cargo build -p kvs-tests --bins`)",
            path.display()
        );
    }
    Ok(path)
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let phases = match args.nemesis.as_str() {
        "all" => Nemesis::ALL.to_vec(),
        name => vec![name.parse::<Nemesis>().map_err(anyhow::Error::msg)?],
    };
    if args.nodes < 3 || args.clients == 0 || args.keys == 0 || args.time == 0 {
        bail!("need --nodes >= 3 and positive --clients, --keys and --time");
    }
    if args.op_timeout_ms < 100 {
        bail!("--op-timeout-ms must be at least 100");
    }
    let bins = binaries(args.kvs_node)?;
    let failpoint_binaries = if phases
        .iter()
        .any(|n| n.needs_failpoints() || (args.skip_fsync && n.needs_power_supply()))
    {
        Some(failpoint_binaries(bins, args.kvs_node_failpoints)?)
    } else {
        None
    };
    let powerfs = if phases.iter().any(|n| n.needs_power_supply()) {
        Some(powerfs(args.powerfs)?)
    } else {
        None
    };
    let options = CampaignOptions {
        phase_time: Duration::from_secs(args.time) / phases.len() as u32,
        phases,
        seed: args.seed,
        nodes: args.nodes,
        workload: WorkloadOptions {
            clients: args.clients,
            keys: args.keys,
            timeout: Duration::from_millis(args.op_timeout_ms),
            serializable_reads: args.serializable_reads,
        },
        report_dir: args.report_dir,
        failpoint_binaries,
        powerfs,
        skip_fsync: args.skip_fsync,
    };
    let report = campaign::run(bins, &options).await;
    for phase in &report.phases {
        println!("== {} ==", phase.nemesis);
        for line in phase
            .events
            .iter()
            .chain(&phase.divergence)
            .chain(&phase.lost)
        {
            println!("  {line}");
        }
        for file in &phase.files {
            println!("  offending history / logs kept in {}", file.display());
        }
    }
    println!("{}", report.summary());
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
