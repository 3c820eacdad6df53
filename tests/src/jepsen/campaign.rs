//! A campaign: for each nemesis phase, start a fresh durable cluster, run the workload while the
//! nemesis injects faults, heal everything, read every key one last time, and check the history
//! (linearizability per key), the final state (no acknowledged write lost) and the replicas
//! (every node converged to the same state).
//!
//! Undecided searches, keys on which the nodes do not converge and a membership that did not
//! come back whole count as anomalies: the run cannot vouch for them. On any anomaly the minimal offending sub-history of each bad key and
//! the whole history are written to files, and the cluster's logs and data are kept.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kvs_client::Client;
use kvs_client::proto::GetRequest;
use kvs_client::proto::Role;
use kvs_node::failpoint::SKIP_FSYNC_ENV;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use super::clock::Clocks;
use super::convergence::NodeState;
use super::convergence::divergence;
use super::history::Call;
use super::history::Outcome;
use super::history::OutcomeCounts;
use super::history::Return;
use super::history::render;
use super::linearizability::Anomaly;
use super::linearizability::Verdict;
use super::linearizability::check;
use super::lost_writes::lost_writes;
use super::nemesis;
use super::nemesis::Hardware;
use super::nemesis::Nemesis;
use super::power::PowerSupply;
use super::workload::Recorder;
use super::workload::Workload;
use super::workload::WorkloadOptions;
use crate::Binaries;
use crate::Cluster;
use crate::ClusterOptions;

/// How long the nodes get to converge after the run.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the leader gets to list the full membership after the run.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at the final read of each key.
const FINAL_READ_ATTEMPTS: usize = 5;
/// `--snapshot-every` of the nodes in a failpoint phase.
const FAILPOINT_SNAPSHOT_EVERY: u64 = 100;

/// What to run.
#[derive(Clone, Debug)]
pub struct CampaignOptions {
    /// The phases, one nemesis each.
    pub phases: Vec<Nemesis>,
    /// Duration of the workload in each phase.
    pub phase_time: Duration,
    /// Seeds every choice of the workload and the nemeses.
    pub seed: u64,
    /// Nodes per cluster.
    pub nodes: usize,
    /// The workload.
    pub workload: WorkloadOptions,
    /// Where files of offending histories go.
    pub report_dir: PathBuf,
    /// The binaries with the failpoint build of the node, for the phases that need it
    /// ([`Nemesis::needs_failpoints`]) and for `skip_fsync`.
    pub failpoint_binaries: Option<&'static Binaries>,
    /// The `powerfs` tool, for the phases that put the nodes' data on its volumes
    /// ([`Nemesis::needs_power_supply`]).
    pub powerfs: Option<PathBuf>,
    /// Run the power phases on the failpoint build with the log's fsyncs skipped
    /// (`kvs_node::failpoint::SKIP_FSYNC_ENV`): the campaign must then find lost writes.
    pub skip_fsync: bool,
}

/// What one phase found.
#[derive(Debug)]
pub struct PhaseReport {
    /// The phase's nemesis.
    pub nemesis: Nemesis,
    /// Operations by outcome (final reads included).
    pub counts: OutcomeCounts,
    /// Keys not shown linearizable.
    pub anomalies: Vec<Anomaly>,
    /// Acknowledged writes the final state shows were lost, as text.
    pub lost: Vec<String>,
    /// Keys on which the nodes did not converge (or could not be read), as text.
    pub divergence: Vec<String>,
    /// The faults injected, as text.
    pub events: Vec<String>,
    /// Files written for the anomalies, and the kept cluster directory.
    pub files: Vec<PathBuf>,
}

impl PhaseReport {
    /// Anomalies of every kind but lost writes.
    pub fn anomaly_count(&self) -> usize {
        self.anomalies.len() + self.divergence.len()
    }
}

/// What a campaign found.
#[derive(Debug, Default)]
pub struct Report {
    /// One per phase, in order.
    pub phases: Vec<PhaseReport>,
}

impl Report {
    /// Operations recorded.
    pub fn ops(&self) -> usize {
        self.phases.iter().map(|p| p.counts.total()).sum()
    }

    /// Anomalies found (see [`PhaseReport::anomaly_count`]).
    pub fn anomalies(&self) -> usize {
        self.phases.iter().map(PhaseReport::anomaly_count).sum()
    }

    /// Lost writes found.
    pub fn lost(&self) -> usize {
        self.phases.iter().map(|p| p.lost.len()).sum()
    }

    /// No anomaly and no lost write.
    pub fn passed(&self) -> bool {
        self.anomalies() == 0 && self.lost() == 0
    }

    /// The summary table; its last line is `ops=N anomalies=N lost=N`.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{:<13} {:>7} {:>7} {:>7} {:>7} {:>10} {:>6}\n",
            "nemesis", "ops", "ok", "fail", "info", "anomalies", "lost"
        );
        let mut total = OutcomeCounts::default();
        for phase in &self.phases {
            let c = phase.counts;
            total.ok += c.ok;
            total.fail += c.fail;
            total.info += c.info;
            let _ = writeln!(
                out,
                "{:<13} {:>7} {:>7} {:>7} {:>7} {:>10} {:>6}",
                phase.nemesis.to_string(),
                c.total(),
                c.ok,
                c.fail,
                c.info,
                phase.anomaly_count(),
                phase.lost.len()
            );
        }
        let _ = writeln!(
            out,
            "{:<13} {:>7} {:>7} {:>7} {:>7} {:>10} {:>6}",
            "total",
            total.total(),
            total.ok,
            total.fail,
            total.info,
            self.anomalies(),
            self.lost()
        );
        let _ = write!(
            out,
            "ops={} anomalies={} lost={}",
            self.ops(),
            self.anomalies(),
            self.lost()
        );
        out
    }
}

/// Runs every phase of the campaign in turn.
pub async fn run(bins: &'static Binaries, options: &CampaignOptions) -> Report {
    let mut report = Report::default();
    for (index, &nemesis) in options.phases.iter().enumerate() {
        // Each phase has its own stream of choices, fixed by the seed and the phase's place.
        let seed = options.seed.wrapping_mul(31).wrapping_add(index as u64);
        report
            .phases
            .push(run_phase(bins, options, nemesis, seed).await);
    }
    report
}

async fn run_phase(
    bins: &'static Binaries,
    options: &CampaignOptions,
    nemesis: Nemesis,
    seed: u64,
) -> PhaseReport {
    let cluster_options = ClusterOptions {
        durable: true,
        fault_control: nemesis.needs_fault_control(),
        // Snapshots every few seconds of load, behind a log tail short enough that a restarted
        // node needs one: so snapshot building and installing are failpoints passed often.
        snapshot_every: nemesis
            .needs_failpoints()
            .then_some(FAILPOINT_SNAPSHOT_EVERY),
        ..ClusterOptions::default()
    };
    let skip_fsync = options.skip_fsync && nemesis.needs_power_supply();
    let bins = if nemesis.needs_failpoints() || skip_fsync {
        options
            .failpoint_binaries
            .unwrap_or_else(|| panic!("the {nemesis} nemesis needs the failpoint build"))
    } else {
        bins
    };
    // Declared before the cluster, so dropped after it: no node runs on an unmounted volume.
    let mut hardware = Hardware::default();
    let mut cluster_options = cluster_options;
    if nemesis.needs_power_supply() {
        let tool = options
            .powerfs
            .as_deref()
            .unwrap_or_else(|| panic!("the {nemesis} nemesis needs the powerfs tool"));
        let supply =
            PowerSupply::install(tool, options.nodes).unwrap_or_else(|e| panic!("powerfs: {e}"));
        cluster_options.data_root = Some(supply.data_root());
        hardware.power = Some(supply);
    }
    if skip_fsync {
        let env = vec![(SKIP_FSYNC_ENV.to_string(), "1".to_string())];
        cluster_options.node_env = (0..options.nodes).map(|i| (i, env.clone())).collect();
        cluster_options.broken_on_purpose = true;
    }
    if nemesis.needs_clocks() {
        let clocks = Clocks::install(options.nodes).unwrap_or_else(|e| panic!("clocks: {e}"));
        cluster_options.node_env = (0..options.nodes).map(|i| (i, clocks.env(i))).collect();
        // Lease reads lean on bounded clock drift: this is their campaign.
        cluster_options.extra_args = vec!["--read-policy".into(), "lease".into()];
        hardware.clocks = Some(clocks);
    }
    let mut cluster = Cluster::start_with(bins, options.nodes, cluster_options).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let recorder = Recorder::new();
    let start = Instant::now();
    let workload = Workload::spawn(
        cluster.endpoints(),
        &options.workload,
        seed,
        recorder.clone(),
    );
    let mut events = nemesis::run(
        &mut cluster,
        nemesis,
        &mut rng,
        start,
        start + options.phase_time,
        &mut hardware,
    )
    .await;
    workload.stop().await;
    if let Some(supply) = hardware.power.as_mut() {
        let what = nemesis::cut_all_power(&mut cluster, supply).await;
        events.push(format!("{:>8.3}s {what}", start.elapsed().as_secs_f64()));
    }

    // A cluster that lost what its disks never had (power cuts on a build that skips fsync) may
    // never elect a leader again: that is reported, not waited on forever.
    let elected = leader_elected(&cluster).await;
    let finals = if elected {
        final_reads(&cluster, &options.workload, &recorder).await
    } else {
        Vec::new()
    };
    let history = recorder.history();
    let anomalies = check(&history);
    let mut lost = Vec::new();
    let mut diverged = converge(&cluster, &options.workload.key_names()).await;
    if !elected {
        diverged.push("no leader was elected after the faults healed".to_string());
    }
    diverged.extend(membership_gap(&cluster).await);
    for (key, ops) in history.by_key() {
        match finals.iter().find(|(k, _)| *k == key) {
            Some((_, Some(last))) => lost.extend(
                lost_writes(&ops, *last)
                    .into_iter()
                    .map(|op| format!("{op}  (final value {last:?})")),
            ),
            _ => diverged.push(format!("{key}: the final read never succeeded")),
        }
    }

    let mut report = PhaseReport {
        nemesis,
        counts: history.counts(),
        anomalies,
        lost,
        divergence: diverged,
        events,
        files: Vec::new(),
    };
    if report.anomaly_count() > 0 || !report.lost.is_empty() {
        report.files = write_files(&options.report_dir, options.seed, &report, &history);
        report.files.extend(cluster.keep_dir());
    }
    report
}

/// Reads every key once more, linearizably, after the faults healed and the clients stopped;
/// the reads are part of the history. `None` for a key that could not be read.
async fn final_reads(
    cluster: &Cluster,
    workload: &WorkloadOptions,
    recorder: &Arc<Recorder>,
) -> Vec<(String, Option<Option<u64>>)> {
    let client = Client::connect(cluster.endpoints(), workload.client_options())
        .expect("valid endpoints and options");
    let process = workload.clients;
    let mut finals = Vec::new();
    for key in workload.key_names() {
        let mut last = None;
        for _ in 0..FINAL_READ_ATTEMPTS {
            if let Outcome::Ok(Return::Get(value)) =
                recorder.run(&client, process, &key, Call::Get, false).await
            {
                last = Some(value);
                break;
            }
        }
        finals.push((key, last));
    }
    finals
}

/// Waits (bounded by the cluster's leader timeout) for a leader; whether one was elected.
async fn leader_elected(cluster: &Cluster) -> bool {
    let deadline = Instant::now() + cluster.options().leader_timeout();
    loop {
        if cluster.try_leader().await.is_some() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (bounded) until every node holds the same value for every key in its own state;
/// returns the keys still diverging when time runs out.
async fn converge(cluster: &Cluster, keys: &[String]) -> Vec<String> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let mut states = Vec::new();
        let mut unreachable = Vec::new();
        for i in cluster.running() {
            match local_state(cluster, i, keys).await {
                Some(state) => states.push((format!("node{i}"), state)),
                None => unreachable.push(format!("node {i} did not answer local reads")),
            }
        }
        let mut diverged = divergence(&states);
        diverged.extend(unreachable);
        if diverged.is_empty() || Instant::now() >= deadline {
            return diverged;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (bounded) until the leader lists exactly the running nodes, all voters; otherwise says
/// what it lists instead.
async fn membership_gap(cluster: &Cluster) -> Option<String> {
    let expected: BTreeSet<String> = cluster
        .running()
        .into_iter()
        .map(|i| cluster.node(i).id().to_string())
        .collect();
    let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
    loop {
        let listed = match cluster.try_leader().await {
            Some(leader) => cluster.members(leader).await.map_err(|e| e.to_string()),
            None => Err("no leader".to_string()),
        };
        let gap = match listed {
            Ok(members) => {
                let voters: BTreeSet<String> = members
                    .iter()
                    .filter(|m| m.role == Role::Voter as i32)
                    .map(|m| m.id.clone())
                    .collect();
                (voters != expected || members.len() != expected.len()).then(|| {
                    let listed: Vec<_> = members.iter().map(|m| (&m.id, m.role)).collect();
                    format!("membership: expected voters {expected:?}, the leader lists {listed:?}")
                })
            }
            Err(e) => Some(format!("membership: cannot list the members: {e}")),
        };
        if gap.is_none() || Instant::now() >= deadline {
            return gap;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn local_state(cluster: &Cluster, i: usize, keys: &[String]) -> Option<NodeState> {
    let mut state = NodeState::new();
    for key in keys {
        let request = GetRequest {
            key: key.clone().into(),
            serializable: true,
        };
        let mut kv = cluster.kv(i);
        let response = tokio::time::timeout(Duration::from_secs(2), kv.get(request))
            .await
            .ok()?
            .ok()?
            .into_inner();
        let value = response
            .found
            .then(|| std::str::from_utf8(&response.value).ok()?.parse().ok())
            .flatten();
        state.insert(key.clone(), value);
    }
    Some(state)
}

/// Writes the minimal sub-history of each bad key and the whole history; returns the paths.
fn write_files(
    dir: &Path,
    seed: u64,
    report: &PhaseReport,
    history: &super::history::History,
) -> Vec<PathBuf> {
    let stem = format!("jepsen-seed{seed}-{}", report.nemesis);
    let mut files = Vec::new();
    let mut write = |name: String, text: String| {
        let path = dir.join(name);
        match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text)) {
            Ok(()) => files.push(path),
            Err(e) => eprintln!("jepsen: cannot write {}: {e}", path.display()),
        }
    };
    for anomaly in &report.anomalies {
        let text = match &anomaly.verdict {
            Verdict::NotLinearizable(violation) => format!(
                "# key {}: not linearizable; a minimal sub-history that shows it\n\
                 # the register holds {} before the first operation\n{}",
                anomaly.key,
                if violation.starts_unknown {
                    "anything (the window starts mid-run)"
                } else {
                    "nothing (the run's start)"
                },
                render(&violation.operations)
            ),
            Verdict::Undecided => format!(
                "# key {}: the search ran out of steps; see the whole history\n",
                anomaly.key
            ),
            Verdict::Linearizable => continue,
        };
        write(format!("{stem}-{}.txt", anomaly.key), text);
    }
    let mut text = String::new();
    for line in report
        .events
        .iter()
        .chain(&report.divergence)
        .chain(&report.lost)
    {
        let _ = writeln!(text, "# {line}");
    }
    let mut operations = history.operations.clone();
    operations.sort_by_key(|op| (op.invoke, op.process));
    text.push_str(&render(&operations));
    write(format!("{stem}-history.txt"), text);
    files
}
