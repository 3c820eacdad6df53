//! kvs-bench: closed-loop load against kvs, etcd and redis-server, with HDR latency
//! histograms, so all are measured by the same program in the same way.
//!
//! `--clients` tasks share `--conns` connections (HTTP/2 for gRPC targets, TCP for RESP ones)
//! spread round robin over `--endpoints`; each task sends one request, waits for the answer,
//! records its latency and sends the next, for `--duration` seconds or `--ops` operations in
//! all. `--load` instead writes every key once, in batches. `tests/bench/run.sh` runs it side
//! by side with etcd and redis-server, `tests/bench/curves.sh` sweeps clients, value sizes and
//! key counts; `docs/benchmarks.md` has the results.

mod keys;
mod target;
mod workload;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use serde_json::json;

use crate::keys::{Distribution, KeyChooser};
use crate::target::{Conn, System};
use crate::workload::{Until, Workload};

/// Closed-loop load generator for kvs, etcd and redis-server.
#[derive(Debug, Parser)]
#[command(name = "kvs-bench")]
struct Args {
    /// The system to load, and through which API.
    #[arg(long, value_enum, default_value_t = System::Kvs)]
    target: System,
    /// Client endpoints (host:port), comma-separated; connections are spread over all.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrent closed-loop clients, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Connections the clients share (at most one per client).
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// How long to run, in seconds (ignored with --ops and --load).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Stop after this many operations instead of after --duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Write every key of the key space once, in batches, instead of the timed mix.
    #[arg(long)]
    load: bool,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Fraction of operations that are reads (0 = all writes, 1 = all reads).
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Serializable (possibly stale, local) reads instead of linearizable ones.
    #[arg(long)]
    serializable: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, to 3 significant figures.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// What the clients measured.
struct Tally {
    latency_us: Histogram<u64>,
    /// Operations answered, or keys written for a load.
    ops: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            latency_us: latency_histogram(),
            ops: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn add(&mut self, other: Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms of the same shape add");
        self.ops += other.ops;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.read_ratio) || args.clients == 0 || args.conns == 0 {
        eprintln!("kvs-bench: --read-ratio must be in 0..=1 and --clients, --conns above 0");
        return std::process::ExitCode::from(2);
    }
    match run(&args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kvs-bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let mut conns = Vec::with_capacity(args.conns);
    for i in 0..args.conns.min(args.clients) {
        let endpoint = &args.endpoints[i % args.endpoints.len()];
        conns.push(Conn::connect(args.target, endpoint, args.serializable).await?);
    }
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let keys = args.keys.max(1);
    let started = Instant::now();
    let workload = Arc::new(if args.load {
        Workload::load(keys, value)
    } else {
        let until = match args.ops {
            Some(ops) => Until::Ops(ops),
            None => Until::Deadline(started + Duration::from_secs(args.duration)),
        };
        let chooser = KeyChooser::new(args.distribution, keys);
        Workload::mixed(chooser, args.read_ratio, until, value)
    });
    let clients: Vec<_> = (0..args.clients)
        .map(|i| tokio::spawn(client(conns[i % conns.len()].fork(), workload.clone())))
        .collect();
    let progress = progress_line(workload.clone(), started);
    let mut tally = Tally::new();
    for client in clients {
        tally.add(client.await.context("a client panicked")?);
    }
    progress.abort();
    let seconds = started.elapsed().as_secs_f64();
    if let Some(err) = &tally.first_error {
        eprintln!(
            "kvs-bench: {} operations failed; the first: {err}",
            tally.errors
        );
    }
    report(args, conns.len(), &tally, seconds);
    Ok(())
}

async fn client(mut conn: Conn, workload: Arc<Workload>) -> Tally {
    let mut tally = Tally::new();
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    while let Some(op) = workload.next(&mut rng) {
        let keys = op.keys();
        let sent = Instant::now();
        match conn.run(op).await {
            Ok(()) => {
                let micros = sent.elapsed().as_micros().max(1) as u64;
                tally.latency_us.saturating_record(micros);
                tally.ops += keys;
            }
            Err(err) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }
    tally
}

/// Once a second on a terminal: operations so far and the current rate.
fn progress_line(workload: Arc<Workload>, started: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = workload.issued();
            eprint!(
                "\r{:>6.1}s {now:>10} ops {:>9} ops/s ",
                started.elapsed().as_secs_f64(),
                now - last
            );
            last = now;
        }
    })
}

/// The result as a table or one JSON object. Latencies are per request: for a load, per batch.
fn report(args: &Args, conns: usize, tally: &Tally, seconds: f64) {
    let latency_us = &tally.latency_us;
    let ms = |q: f64| latency_us.value_at_quantile(q) as f64 / 1000.0;
    let rate = tally.ops as f64 / seconds;
    let target = args.target.name();
    if args.json {
        let report = json!({
            "target": target,
            "workload": if args.load { "load" } else { "mixed" },
            "clients": args.clients,
            "conns": conns,
            "read_ratio": args.read_ratio,
            "serializable": args.serializable,
            "distribution": format!("{:?}", args.distribution).to_lowercase(),
            "value_size": args.value_size,
            "keys": args.keys,
            "ops": tally.ops,
            "errors": tally.errors,
            "seconds": seconds,
            "ops_per_sec": rate,
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "max_ms": latency_us.max() as f64 / 1000.0,
        });
        println!("{report}");
    } else {
        println!(
            "{:<8} {:>7} {:>5} {:>10} {:>7} {:>10} {:>8} {:>8} {:>9} {:>8}",
            "target",
            "clients",
            "conns",
            "ops",
            "errors",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        println!(
            "{:<8} {:>7} {:>5} {:>10} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>9.2} {:>8.2}",
            target,
            args.clients,
            conns,
            tally.ops,
            tally.errors,
            rate,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            latency_us.max() as f64 / 1000.0
        );
    }
}
