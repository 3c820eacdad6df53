//! kvs-bench: closed-loop load against kvs or etcd through their gRPC APIs, with HDR latency
//! histograms, so both are measured by the same program in the same way.
//!
//! `--clients` tasks share `--conns` HTTP/2 connections spread round robin over `--endpoints`;
//! each task sends one request, waits for the answer, records its latency and sends the next,
//! for `--duration` seconds or `--ops` operations in all. `tests/bench/run.sh` runs it side by
//! side with etcd; `docs/benchmarks.md` has the results.

mod keys;
mod target;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tonic::transport::Endpoint;

use crate::keys::{Distribution, KeyChooser};
use crate::target::{Conn, System};

/// Closed-loop load generator for kvs and etcd.
#[derive(Debug, Parser)]
#[command(name = "kvs-bench")]
struct Args {
    /// The system to load.
    #[arg(long, value_enum, default_value_t = System::Kvs)]
    target: System,
    /// Client endpoints (host:port), comma-separated; connections are spread over all.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// HTTP/2 connections the clients share.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// How long to run, in seconds (ignored with --ops).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Stop after this many operations instead of after --duration.
    #[arg(long)]
    ops: Option<u64>,
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

/// What one client measured.
struct Tally {
    latency_us: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
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
            eprintln!("kvs-bench: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let mut conns = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let endpoint = &args.endpoints[i % args.endpoints.len()];
        let channel = Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|e| format!("endpoint {endpoint}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
        conns.push(Conn::new(args.target, channel));
    }
    let chooser = Arc::new(KeyChooser::new(args.distribution, args.keys.max(1)));
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            let conn = conns[i % conns.len()].fork();
            let (chooser, value, done) = (chooser.clone(), value.clone(), done.clone());
            let (ops, read_ratio, serializable) = (args.ops, args.read_ratio, args.serializable);
            tokio::spawn(async move {
                client(
                    conn,
                    &chooser,
                    value,
                    &done,
                    ops,
                    deadline,
                    read_ratio,
                    serializable,
                )
                .await
            })
        })
        .collect();
    let progress = progress_line(done.clone(), started);
    let mut latency_us = latency_histogram();
    let (mut errors, mut first_error) = (0, None);
    for client in clients {
        let tally = client
            .await
            .map_err(|e| format!("a client panicked: {e}"))?;
        latency_us
            .add(&tally.latency_us)
            .expect("histograms of the same shape add");
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    progress.abort();
    let seconds = started.elapsed().as_secs_f64();
    if let Some(err) = &first_error {
        eprintln!("kvs-bench: {errors} operations failed; the first: {err}");
    }
    report(args, &latency_us, errors, seconds);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn client(
    mut conn: Conn,
    chooser: &KeyChooser,
    value: Bytes,
    done: &AtomicU64,
    ops: Option<u64>,
    deadline: Instant,
    read_ratio: f64,
    serializable: bool,
) -> Tally {
    let mut tally = Tally {
        latency_us: latency_histogram(),
        errors: 0,
        first_error: None,
    };
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    loop {
        let more = match ops {
            Some(ops) => done.fetch_add(1, Ordering::Relaxed) < ops,
            None => {
                done.fetch_add(1, Ordering::Relaxed);
                Instant::now() < deadline
            }
        };
        if !more {
            return tally;
        }
        let key = Bytes::from(format!("bench-{:012}", chooser.next(&mut rng)));
        let read = rng.random_bool(read_ratio);
        let sent = Instant::now();
        let result = if read {
            conn.get(key, serializable).await
        } else {
            conn.put(key, value.clone()).await
        };
        match result {
            Ok(()) => {
                let micros = sent.elapsed().as_micros().max(1) as u64;
                tally.latency_us.saturating_record(micros);
            }
            Err(status) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| status.to_string());
            }
        }
    }
}

/// Once a second on a terminal: operations so far and the current rate.
fn progress_line(done: Arc<AtomicU64>, started: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = done.load(Ordering::Relaxed);
            eprint!(
                "\r{:>6.1}s {now:>10} ops {:>9} ops/s ",
                started.elapsed().as_secs_f64(),
                now - last
            );
            last = now;
        }
    })
}

fn report(args: &Args, latency_us: &Histogram<u64>, errors: u64, seconds: f64) {
    let ms = |q: f64| latency_us.value_at_quantile(q) as f64 / 1000.0;
    let ops = latency_us.len();
    let rate = ops as f64 / seconds;
    let target = format!("{:?}", args.target).to_lowercase();
    if args.json {
        let report = json!({
            "target": target,
            "clients": args.clients,
            "conns": args.conns,
            "read_ratio": args.read_ratio,
            "serializable": args.serializable,
            "value_size": args.value_size,
            "keys": args.keys,
            "ops": ops,
            "errors": errors,
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
            "{:<6} {:>7} {:>10} {:>7} {:>10} {:>8} {:>8} {:>9} {:>8}",
            "target", "clients", "ops", "errors", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        println!(
            "{:<6} {:>7} {:>10} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>9.2} {:>8.2}",
            target,
            args.clients,
            ops,
            errors,
            rate,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            latency_us.max() as f64 / 1000.0
        );
    }
}
