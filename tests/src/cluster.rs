//! A cluster of real `kvs-node` processes on 127.0.0.1, driven the way an operator would: node 0
//! bootstraps, the others are added with `kvsctl member add`, faults are signals.
//!
//! Each node gets explicit ports picked up front, so a node started again comes back on the same
//! address, and the harness also waits for the node's `serving` line to learn its ID. Clusters
//! are serialized through a process-wide lock: tests are multi-process and timing-sensitive, so
//! two clusters must never compete for the CPU of one test run.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use kvs_client::Credentials;
use kvs_client::Password;
use kvs_client::proto::GetRequest;
use kvs_client::proto::ListMembersRequest;
use kvs_client::proto::Member;
use kvs_client::proto::NodeInfoRequest;
use kvs_client::proto::NodeInfoResponse;
use kvs_client::proto::Role;
use kvs_client::proto::StatusRequest;
use kvs_client::proto::StatusResponse;
use kvs_client::proto::cluster_client::ClusterClient;
use kvs_client::proto::kv_client::KvClient;
use kvs_node::failpoint;
use kvs_node::fault::Delay;
use kvs_node::fault::FaultSet;
use kvs_node::identity::node_id_string;
use nix::sys::signal::Signal;
use tempfile::TempDir;
use tokio::sync::Mutex;
use tokio::sync::OwnedMutexGuard;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::binaries::Binaries;
use crate::binaries::binaries;
use crate::kvsctl::Kvsctl;
use crate::kvsctl::KvsctlOutput;
use crate::process::NodeProcess;
use crate::process::free_port;
use crate::process::log_path;
use crate::process::log_tail;
use crate::process::spawn_node;
use crate::wait::wait_for;
use crate::wait::wait_until;
use crate::writer::WriteLog;

/// How long a node may take from spawn to its `serving` line (a debug build on a busy box).
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one status/info call made while polling; a paused node must not stall a poll.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest gRPC message the harness sends or accepts (values up to the 1 MiB default and more).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// The channel of the harness's raw clients: a node's, with the harness user's credentials.
pub type NodeChannel = InterceptedService<Channel, HarnessUser>;

/// Adds the harness user's credentials, if any, to every call of a raw client.
#[derive(Debug, Clone)]
pub struct HarnessUser(Option<Credentials>);

impl Interceptor for HarnessUser {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(credentials) => credentials.call(request),
            None => Ok(request),
        }
    }
}

/// One cluster at a time per test process (see the module docs).
static SERIAL: LazyLock<Arc<Mutex<()>>> = LazyLock::new(|| Arc::new(Mutex::new(())));

/// Node flags for every node of a cluster. The defaults suit a loaded two-core CI machine.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `--election-timeout-ms`.
    pub election_timeout: Duration,
    /// `--heartbeat-interval-ms`.
    pub heartbeat_interval: Duration,
    /// `--request-timeout-ms`.
    pub request_timeout: Duration,
    /// `--shutdown-grace-ms`; the node's default when `None`.
    pub shutdown_grace: Option<Duration>,
    /// `--max-key-bytes`; the node's default when `None`.
    pub max_key_bytes: Option<usize>,
    /// `--max-value-bytes`; the node's default when `None`.
    pub max_value_bytes: Option<usize>,
    /// `--max-batch-ops`; the node's default when `None`.
    pub max_batch_ops: Option<usize>,
    /// Serve peers on a port of their own (`--peer-listen`) instead of the client port.
    pub separate_peer_port: bool,
    /// Serve the Redis protocol on a port of its own (`--resp-listen`); see [`Node::resp_address`].
    pub resp: bool,
    /// `--resp-allow-flush`.
    pub resp_allow_flush: bool,
    /// `--resp-request-timeout-ms`; the node's default when `None`.
    pub resp_request_timeout: Option<Duration>,
    /// Keep each node's state in a data directory of its own (`--data-dir`) instead of
    /// `--in-memory`, so a restarted node is the same member with the same data.
    pub durable: bool,
    /// `--snapshot-every`; the node's default when `None`.
    pub snapshot_every: Option<u64>,
    /// `--quota-bytes`; the node's default when `None`.
    pub quota_bytes: Option<u64>,
    /// `--max-sessions`; the node's default when `None`.
    pub max_sessions: Option<u64>,
    /// `--log-disk-bytes`; the node's default when `None`.
    pub log_disk_bytes: Option<u64>,
    /// Run every node with `--fault-control-file` (testing only), so that
    /// [`Cluster::partition`] can cut peer links.
    pub fault_control: bool,
    /// Flags added to every node's command line after the harness's own.
    pub extra_args: Vec<String>,
    /// The user (name, password) the harness calls as — its probes and its `kvsctl` runs — on
    /// a cluster whose nodes run with `--auth-file` (passed in `extra_args`).
    pub harness_user: Option<(String, String)>,
    /// Environment variables added to the process of the node in seat `i`: e.g. libfaketime's,
    /// to run one node with its wall clock off.
    pub node_env: BTreeMap<usize, Vec<(String, String)>>,
    /// Where the nodes' data directories (`data<i>`) are made when `durable`; the cluster's own
    /// temporary directory when `None`. A test mounts small file systems there to fill a disk.
    pub data_root: Option<PathBuf>,
    /// The nodes' client ports speak TLS: the harness's own connections and every `kvsctl` run
    /// use this material. The node flags go in `extra_args`.
    pub client_tls: Option<ClientTls>,
    /// The nodes run a build broken on purpose (one that skips fsync), so their crashes and
    /// panics are the expected outcome: the teardown does not fail the test for them.
    pub broken_on_purpose: bool,
}

/// The files a client speaks TLS to a node's client port with.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA bundle (PEM) the nodes' certificates come from.
    pub ca: PathBuf,
    /// The client certificate and its key (PEM), for nodes with `--client-cert-auth`.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientTls {
    /// `kvsctl`'s flags for this material.
    pub fn kvsctl_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_str().expect("test paths are UTF-8").to_string();
        vec![
            "--cacert".into(),
            path(&self.ca),
            "--cert".into(),
            path(&self.cert),
            "--key".into(),
            path(&self.key),
        ]
    }

    /// tonic's configuration of this material.
    pub fn tonic_config(&self) -> tonic::transport::ClientTlsConfig {
        let read = |p: &Path| std::fs::read(p).expect("read a TLS file");
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&self.ca)))
            .identity(tonic::transport::Identity::from_pem(
                read(&self.cert),
                read(&self.key),
            ))
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            election_timeout: Duration::from_millis(1500),
            heartbeat_interval: Duration::from_millis(300),
            request_timeout: Duration::from_millis(5000),
            shutdown_grace: None,
            max_key_bytes: None,
            max_value_bytes: None,
            max_batch_ops: None,
            separate_peer_port: false,
            resp: false,
            resp_allow_flush: false,
            resp_request_timeout: None,
            durable: false,
            snapshot_every: None,
            quota_bytes: None,
            max_sessions: None,
            log_disk_bytes: None,
            fault_control: false,
            extra_args: Vec::new(),
            harness_user: None,
            node_env: BTreeMap::new(),
            data_root: None,
            client_tls: None,
            broken_on_purpose: false,
        }
    }
}

impl ClusterOptions {
    /// The node's own default grace when the flag is not passed.
    const NODE_DEFAULT_GRACE: Duration = Duration::from_secs(10);

    /// How long an election may take, generously: several election rounds plus start-up.
    pub fn leader_timeout(&self) -> Duration {
        self.election_timeout * 10 + Duration::from_secs(10)
    }

    /// The shutdown grace period nodes run with.
    pub fn grace(&self) -> Duration {
        self.shutdown_grace.unwrap_or(Self::NODE_DEFAULT_GRACE)
    }

    /// The data directory of seat `index` in a cluster whose own directory is `dir`.
    fn data_dir(&self, dir: &Path, index: usize) -> PathBuf {
        self.data_root
            .as_deref()
            .unwrap_or(dir)
            .join(format!("data{index}"))
    }

    fn node_args(&self, node: &Node, bootstrap: bool, dir: &Path, index: usize) -> Vec<OsString> {
        let data_dir = self.data_dir(dir, index);
        let mut args: Vec<String> = vec!["--listen".into(), node.address()];
        if node.peer_port.is_some() {
            args.extend(["--peer-listen".into(), node.peer_address()]);
        }
        if let Some(resp) = node.resp_address() {
            args.extend(["--resp-listen".into(), resp]);
        }
        if self.resp_allow_flush {
            args.push("--resp-allow-flush".into());
        }
        if bootstrap {
            args.push("--bootstrap".into());
        }
        if self.fault_control {
            let file = fault_file(dir, index);
            let file = file.to_str().expect("test directories are UTF-8");
            args.extend(["--fault-control-file".into(), file.into()]);
        }
        if self.durable {
            let dir = data_dir.to_str().expect("test directories are UTF-8");
            args.extend(["--data-dir".into(), dir.into()]);
        } else {
            args.push("--in-memory".into());
        }
        let ms = |d: Duration| d.as_millis().to_string();
        args.extend(["--election-timeout-ms".into(), ms(self.election_timeout)]);
        args.extend([
            "--heartbeat-interval-ms".into(),
            ms(self.heartbeat_interval),
        ]);
        args.extend(["--request-timeout-ms".into(), ms(self.request_timeout)]);
        let optional = [
            ("--max-key-bytes", self.max_key_bytes.map(|n| n.to_string())),
            (
                "--max-value-bytes",
                self.max_value_bytes.map(|n| n.to_string()),
            ),
            ("--max-batch-ops", self.max_batch_ops.map(|n| n.to_string())),
            (
                "--snapshot-every",
                self.snapshot_every.map(|n| n.to_string()),
            ),
            ("--quota-bytes", self.quota_bytes.map(|n| n.to_string())),
            ("--max-sessions", self.max_sessions.map(|n| n.to_string())),
            (
                "--log-disk-bytes",
                self.log_disk_bytes.map(|n| n.to_string()),
            ),
            ("--shutdown-grace-ms", self.shutdown_grace.map(ms)),
            (
                "--resp-request-timeout-ms",
                self.resp_request_timeout.map(ms),
            ),
        ];
        for (flag, value) in optional {
            if let Some(value) = value {
                args.extend([flag.into(), value]);
            }
        }
        args.extend(self.extra_args.iter().cloned());
        args.into_iter().map(OsString::from).collect()
    }
}

/// One seat of the cluster: fixed addresses and the process currently (or last) running there.
#[derive(Debug)]
pub struct Node {
    client_port: u16,
    peer_port: Option<u16>,
    resp_port: Option<u16>,
    process: Option<NodeProcess>,
    /// Whether the test has seen the current process exit (see [`Cluster::exited`]): an exit the
    /// test never looked at is a crash the teardown reports.
    exit_seen: bool,
    /// ID of the current process, or of the last one after it stopped (0 before the first).
    node_id: u64,
    /// `node_id` as every interface shows it, for [`Node::id`].
    id: String,
    /// Processes started at this seat so far; names the log files.
    generation: u32,
    logs: Vec<PathBuf>,
    channel: Channel,
}

impl Node {
    fn new(
        client_port: u16,
        peer_port: Option<u16>,
        resp_port: Option<u16>,
        request_timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://127.0.0.1:{client_port}"))
            .expect("a valid URI")
            .connect_timeout(PROBE_TIMEOUT)
            .timeout(request_timeout * 2 + Duration::from_secs(5));
        let channel = match tls {
            Some(tls) => endpoint
                .tls_config(tls.tonic_config())
                .expect("a usable TLS configuration"),
            None => endpoint,
        }
        .connect_lazy();
        Self {
            client_port,
            peer_port,
            resp_port,
            process: None,
            exit_seen: false,
            node_id: 0,
            id: String::new(),
            generation: 0,
            logs: Vec::new(),
            channel,
        }
    }

    /// The client address, `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The peer address: its own port with `separate_peer_port`, else the client address.
    pub fn peer_address(&self) -> String {
        self.peer_port
            .map_or_else(|| self.address(), |port| format!("127.0.0.1:{port}"))
    }

    /// The RESP address, `127.0.0.1:PORT`, when the cluster serves RESP.
    pub fn resp_address(&self) -> Option<String> {
        self.resp_port.map(|port| format!("127.0.0.1:{port}"))
    }

    /// The node ID (16 hex digits) of the running process, or of the last one.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The process ID of the node running at this seat.
    pub fn pid(&self) -> u32 {
        self.process
            .as_ref()
            .expect("the node is running")
            .child
            .pid()
    }

    /// The log (stderr) of the process that runs, or last ran, at this seat.
    pub fn log_path(&self) -> &Path {
        self.logs.last().expect("a node has run at this seat")
    }

    /// Whether a process is running (or paused) at this seat.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    async fn launch(
        &mut self,
        bins: &Binaries,
        options: &ClusterOptions,
        dir: &Path,
        index: usize,
        bootstrap: bool,
    ) {
        assert!(self.process.is_none(), "node {index} is already running");
        self.generation += 1;
        let log = log_path(dir, index, self.generation);
        self.logs.push(log.clone());
        let args = options.node_args(self, bootstrap, dir, index);
        let env = options.node_env.get(&index).map_or(&[][..], Vec::as_slice);
        let process = spawn_node(&bins.node, &args, env, &log, ANNOUNCE_TIMEOUT)
            .await
            .unwrap_or_else(|msg| panic!("node {index}: {msg}"));
        assert_eq!(
            (
                process.serving.client.as_str(),
                process.serving.peer.as_str()
            ),
            (self.address().as_str(), self.peer_address().as_str()),
            "node {index} announced other addresses than it was told to listen on"
        );
        self.node_id = process.serving.node_id;
        self.id = node_id_string(self.node_id);
        self.process = Some(process);
        self.exit_seen = false;
    }

    /// What is wrong with this seat at the end of a test that passed: a process that exited
    /// without the test asking or looking, or a log that shows a panic.
    fn defects(&mut self) -> Vec<String> {
        let mut defects = Vec::new();
        if let Some(process) = self.process.as_mut()
            && let Some(status) = process.child.try_wait()
            && !self.exit_seen
        {
            defects.push(format!("exited on its own ({status})"));
        }
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(line) = text.lines().find(|line| line.contains("panicked at")) {
                defects.push(format!("{}: {line}", log.display()));
            }
        }
        defects
    }
}

/// A running test cluster. Dropping it kills every node; if the test is failing, the tail of
/// every node's log is printed first and the directory holding the logs is kept.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    options: ClusterOptions,
    bins: &'static Binaries,
    /// Removed when the cluster drops, unless kept.
    dir: Option<TempDir>,
    path: PathBuf,
    /// What the nodes' fault layers have been told.
    faults: std::sync::Mutex<FaultPlan>,
    _serial: OwnedMutexGuard<()>,
}

impl Cluster {
    /// Starts `n` nodes: node 0 with `--bootstrap`, the rest added one by one with
    /// `kvsctl member add`; returns once all `n` are voters.
    pub async fn start(n: usize, options: ClusterOptions) -> Cluster {
        let bins = match tokio::task::spawn_blocking(binaries).await {
            Ok(bins) => bins,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        Cluster::start_with(bins, n, options).await
    }

    /// [`Cluster::start`] with binaries the caller found (the `jepsen` command runs the ones
    /// next to itself instead of building them).
    pub async fn start_with(bins: &'static Binaries, n: usize, options: ClusterOptions) -> Cluster {
        assert!(n >= 1, "a cluster has at least one node");
        let serial = SERIAL.clone().lock_owned().await;
        let dir = tempfile::Builder::new()
            .prefix(&format!("kvs-{}-", test_name()))
            .tempdir()
            .expect("create a temp dir for node logs");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            options,
            bins,
            path: dir.path().to_path_buf(),
            dir: Some(dir),
            faults: Default::default(),
            _serial: serial,
        };
        for _ in 0..n {
            cluster.nodes.push(cluster.new_seat());
        }
        if let Some((_, password)) = &cluster.options.harness_user {
            std::fs::write(cluster.harness_password_file(), password)
                .expect("write the harness user's password file");
        }
        let (bins, options, dir) = (cluster.bins, &cluster.options, cluster.dir_path());
        let launches = cluster
            .nodes
            .iter_mut()
            .enumerate()
            .map(|(i, node)| node.launch(bins, options, &dir, i, i == 0));
        futures::future::join_all(launches).await;

        let first = cluster.nodes[0].id().to_string();
        wait_until(
            cluster.options.leader_timeout(),
            "node 0 leads its one-member cluster",
            || async {
                cluster
                    .node_info(0)
                    .await
                    .is_ok_and(|info| info.leader == first)
            },
        )
        .await;
        for i in 1..n {
            cluster.join(i).await;
        }
        cluster
    }

    fn new_seat(&self) -> Node {
        let peer_port = self.options.separate_peer_port.then(free_port);
        let resp_port = self.options.resp.then(free_port);
        Node::new(
            free_port(),
            peer_port,
            resp_port,
            self.options.request_timeout,
            self.options.client_tls.as_ref(),
        )
    }

    /// The data directory node `i` runs with when the cluster is `durable`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.options.data_dir(&self.dir_path(), i)
    }

    fn dir_path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The options every node runs with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Number of seats, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: a cluster has at least one seat.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Seat `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Indices of the seats with a running process.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// The running seat whose process has this node ID.
    pub fn index_of(&self, node_id: &str) -> Option<usize> {
        self.running()
            .into_iter()
            .find(|&i| self.nodes[i].id == node_id)
    }

    /// Client addresses of the running nodes.
    pub fn endpoints(&self) -> Vec<String> {
        self.running()
            .into_iter()
            .map(|i| self.nodes[i].address())
            .collect()
    }

    // ------------------------------------------------------------------ faults

    /// SIGKILL node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        let mut process = self.nodes[i]
            .process
            .take()
            .unwrap_or_else(|| panic!("node {i} is not running"));
        process.child.kill();
    }

    /// SIGTERM node `i` and wait for it to exit, at most the grace period plus a margin; panics
    /// if it does not exit by then. Returns its exit status.
    pub async fn terminate(&mut self, i: usize) -> ExitStatus {
        let bound = self.options.grace() + Duration::from_secs(5);
        let process = self.nodes[i]
            .process
            .as_mut()
            .unwrap_or_else(|| panic!("node {i} is not running"));
        process.child.signal(Signal::SIGTERM).expect("signal node");
        let status = process.child.wait_exit(bound).await;
        let mut process = self.nodes[i].process.take().expect("checked above");
        match status {
            Some(status) => status,
            None => {
                process.child.kill();
                panic!("node {i} did not exit within {bound:?} of SIGTERM");
            }
        }
    }

    /// SIGSTOP node `i`: it keeps its sockets but answers nothing.
    pub fn pause(&self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
    }

    /// SIGCONT node `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, Signal::SIGCONT);
    }

    fn signal(&self, i: usize, signal: Signal) {
        let process = self.nodes[i]
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is not running"));
        process
            .child
            .signal(signal)
            .unwrap_or_else(|e| panic!("{signal} to node {i}: {e}"));
    }

    /// Starts a new process at seat `i` (killing the old one if running), on the same addresses.
    /// In memory it comes back as a new node with a new ID that is not a member of anything
    /// until added; with `durable` it is the same member, recovered from its data directory.
    pub async fn restart(&mut self, i: usize) {
        if self.nodes[i].is_running() {
            self.kill(i);
        }
        let (bins, dir) = (self.bins, self.dir_path());
        self.nodes[i]
            .launch(bins, &self.options, &dir, i, false)
            .await;
    }

    /// Deletes the data directory of stopped node `i`: restarted, it is a new node with a new ID
    /// that is no member until added.
    pub fn wipe(&self, i: usize) {
        assert!(!self.nodes[i].is_running(), "node {i} is running");
        let dir = self.data_dir(i);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            panic!("cannot wipe {}: {e}", dir.display());
        }
    }

    /// Cuts the peer links between `groups` (node indices; nodes in no group are cut off from
    /// everyone): each node drops peer traffic to and from every node outside its own group.
    /// Needs [`ClusterOptions::fault_control`]; takes effect within the nodes' 20 ms poll (see
    /// [`Cluster::faults_in_force`]), and holds across restarts until [`Cluster::heal`].
    pub fn partition(&self, groups: &[Vec<usize>]) {
        let n = self.nodes.len();
        let blocked = (0..n)
            .map(|i| {
                let group = groups.iter().find(|g| g.contains(&i));
                (0..n)
                    .filter(|j| *j != i && group.is_none_or(|g| !g.contains(j)))
                    .collect()
            })
            .collect();
        self.change_faults(|plan| plan.blocked = blocked);
    }

    /// Cuts node `i` off from every other node.
    pub fn isolate(&self, i: usize) {
        let rest: Vec<usize> = (0..self.nodes.len()).filter(|&j| j != i).collect();
        self.partition(&[vec![i], rest]);
    }

    /// Cuts every peer link between a node of `a` and a node of `b`, and only those (a bridge:
    /// a node in neither side still sees both); replaces any earlier partition.
    pub fn cut(&self, a: &[usize], b: &[usize]) {
        let blocked = (0..self.nodes.len())
            .map(|i| match (a.contains(&i), b.contains(&i)) {
                (true, _) => b.to_vec(),
                (_, true) => a.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        self.change_faults(|plan| plan.blocked = blocked);
    }

    /// Slows down every peer link of the `nodes`: each end holds every Raft message, read-index
    /// request and forwarded write it sends over such a link for `delay` plus up to `jitter`.
    /// Needs [`ClusterOptions::fault_control`].
    pub fn slow_down(&self, nodes: &[usize], delay: Duration, jitter: Duration) {
        let n = self.nodes.len();
        let slow = |i: usize, j: usize| i != j && (nodes.contains(&i) || nodes.contains(&j));
        let delayed = (0..n)
            .map(|i| (0..n).filter(|&j| slow(i, j)).collect())
            .collect();
        self.change_faults(|plan| {
            plan.delayed = delayed;
            plan.delay = Delay {
                base: delay,
                jitter,
            };
        });
    }

    /// Makes every node lose `percent` of the client reads and writes it receives, before it
    /// serves or forwards them: nothing answers those, so clients time out and retry. Needs
    /// [`ClusterOptions::fault_control`].
    pub fn drop_requests(&self, percent: u8) {
        self.change_faults(|plan| plan.drop_requests = percent);
    }

    /// Makes every node answer `percent` of the writes it applies with UNKNOWN instead of their
    /// result, as if the reply were lost; clients then retry them. Needs
    /// [`ClusterOptions::fault_control`].
    pub fn drop_replies(&self, percent: u8) {
        self.change_faults(|plan| plan.drop_replies = percent);
    }

    /// Arms failpoint `name` on node `i` (see `docs/correctness.md`). Needs
    /// [`ClusterOptions::fault_control`] and the failpoint build of the node
    /// ([`crate::failpoint_binaries`]); holds across restarts until [`Cluster::heal`].
    pub fn arm_failpoint(&self, i: usize, name: &str, action: failpoint::Action) {
        self.change_faults(|plan| {
            plan.failpoints
                .resize(self.nodes.len(), failpoint::Armed::new());
            plan.failpoints[i].insert(name.to_string(), action);
        });
    }

    /// Restores every peer link, request and reply, and disarms every failpoint.
    pub fn heal(&self) {
        self.change_faults(|plan| *plan = FaultPlan::default());
    }

    /// How node `i`'s process ended, if it died on its own (a crash failpoint, say); it is then
    /// reaped, and keeps its seat until [`Cluster::restart`].
    pub fn exited(&mut self, i: usize) -> Option<ExitStatus> {
        let node = &mut self.nodes[i];
        let status = node.process.as_mut()?.child.try_wait();
        node.exit_seen |= status.is_some();
        status
    }

    /// Waits up to `within` for node `i`'s process to die on its own; how it ended, if it did.
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> Option<ExitStatus> {
        let node = &mut self.nodes[i];
        let status = node.process.as_mut()?.child.wait_exit(within).await;
        node.exit_seen |= status.is_some();
        status
    }

    /// Waits (bounded) until node `i` has put the faults last asked for in force, or has died;
    /// how it ended if it died.
    pub async fn in_force_or_exited(&mut self, i: usize) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.exited(i) {
                return Some(status);
            }
            if self.in_force(i) {
                return None;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {i} neither put its faults in force nor died within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether node `i` has put the faults last asked for in force.
    fn in_force(&self, i: usize) -> bool {
        let plan = self.faults.lock().expect("fault plan lock poisoned");
        let path = fault_file(&self.dir_path(), i).with_extension("in-force");
        std::fs::read_to_string(path).ok().as_ref() == plan.texts.get(i)
    }

    /// Waits (bounded) until every running node has put the faults last asked for in force; a
    /// paused node never does, so call it while none is paused.
    pub async fn faults_in_force(&self) {
        wait_until(
            Duration::from_secs(10),
            "every running node has the asked-for faults in force",
            || async { self.running().into_iter().all(|i| self.in_force(i)) },
        )
        .await;
    }

    fn change_faults(&self, change: impl FnOnce(&mut FaultPlan)) {
        assert!(
            self.options.fault_control,
            "fault injection needs ClusterOptions::fault_control"
        );
        let mut plan = self.faults.lock().expect("fault plan lock poisoned");
        change(&mut plan);
        plan.texts.clear();
        let ids: Vec<u64> = self.nodes.iter().map(|node| node.node_id).collect();
        for i in 0..self.nodes.len() {
            let text = plan.for_node(i, &ids).to_string();
            // Written aside and renamed, so a node never reads half a file.
            let path = fault_file(&self.dir_path(), i);
            let partial = path.with_extension("partial");
            std::fs::write(&partial, &text).expect("write a fault control file");
            std::fs::rename(&partial, &path).expect("move a fault control file into place");
            plan.texts.push(text);
        }
    }

    /// Keeps the directory of node logs and data after the cluster is dropped; returns it.
    pub fn keep_dir(&mut self) -> Option<PathBuf> {
        self.dir.take().map(TempDir::keep)
    }

    // ------------------------------------------------------------- membership

    /// Starts a fresh node on new ports without adding it; returns its index.
    pub async fn start_node(&mut self) -> usize {
        let seat = self.new_seat();
        self.nodes.push(seat);
        let i = self.nodes.len() - 1;
        let (bins, dir) = (self.bins, self.dir_path());
        self.nodes[i]
            .launch(bins, &self.options, &dir, i, false)
            .await;
        i
    }

    /// Starts a fresh node and adds it as a voter; returns its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.start_node().await;
        self.join(i).await;
        i
    }

    /// Adds running node `i` with `kvsctl member add` on the leader and waits until the leader
    /// lists it as a voter.
    pub async fn join(&mut self, i: usize) {
        let leader = self.leader().await;
        let address = self.nodes[i].address();
        // Adding waits for the node to catch up: allow more than kvsctl's default deadline.
        let args = ["--timeout", "60s", "member", "add", address.as_str()];
        let out = self.kvsctl_at(leader, args).await;
        assert!(out.success(), "adding node {i} ({address}): {out}");
        let id = self.nodes[i].id().to_string();
        wait_until(
            Duration::from_secs(30),
            &format!("node {i} is a voter"),
            || async {
                let Some(leader) = self.try_leader().await else {
                    return false;
                };
                self.members(leader).await.is_ok_and(|members| {
                    members
                        .iter()
                        .any(|m| m.id == id && m.role == Role::Voter as i32)
                })
            },
        )
        .await;
    }

    // ------------------------------------------------------------------ probes

    /// The leader, if a running node claims leadership at the highest term any running node
    /// reports. Nodes are asked concurrently, each bounded, so a paused node cannot stall this.
    pub async fn try_leader(&self) -> Option<usize> {
        let statuses =
            futures::future::join_all(self.running().into_iter().map(|i| self.status(i))).await;
        let statuses: Vec<StatusResponse> = statuses.into_iter().flatten().collect();
        let term = statuses.iter().map(|s| s.term).max()?;
        statuses
            .iter()
            .filter(|s| s.term == term && !s.leader.is_empty() && s.leader == s.node_id)
            .find_map(|s| self.index_of(&s.node_id))
    }

    /// Waits (bounded by [`ClusterOptions::leader_timeout`]) for a leader and returns it.
    pub async fn leader(&self) -> usize {
        wait_for(self.options.leader_timeout(), "a leader is elected", || {
            self.try_leader()
        })
        .await
    }

    /// `Cluster.Status` on node `i`, bounded.
    pub async fn status(&self, i: usize) -> Result<StatusResponse, tonic::Status> {
        let mut client = self.cluster_client(i);
        probe(client.status(StatusRequest::default())).await
    }

    /// `Cluster.NodeInfo` on node `i`, bounded.
    pub async fn node_info(&self, i: usize) -> Result<NodeInfoResponse, tonic::Status> {
        let mut client = self.cluster_client(i);
        probe(client.node_info(NodeInfoRequest {})).await
    }

    /// `Cluster.ListMembers` on node `i`, bounded.
    pub async fn members(&self, i: usize) -> Result<Vec<Member>, tonic::Status> {
        let mut client = self.cluster_client(i);
        probe(client.list_members(ListMembersRequest {}))
            .await
            .map(|r| r.members)
    }

    /// A raw `kvs.v1.Kv` client for node `i`, calling as the harness user if there is one.
    pub fn kv(&self, i: usize) -> KvClient<NodeChannel> {
        KvClient::new(self.node_channel(i))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// A raw `kvs.v1.Cluster` client for node `i`, calling as the harness user if there is one.
    pub fn cluster_client(&self, i: usize) -> ClusterClient<NodeChannel> {
        ClusterClient::new(self.node_channel(i))
    }

    fn node_channel(&self, i: usize) -> NodeChannel {
        let credentials = self.options.harness_user.as_ref().map(|(user, password)| {
            Credentials::new(user.as_str(), Password::new(password.as_str()))
                .expect("a valid harness user")
        });
        InterceptedService::new(self.nodes[i].channel.clone(), HarnessUser(credentials))
    }

    /// The file holding the harness user's password, for `kvsctl --password-file`.
    fn harness_password_file(&self) -> PathBuf {
        self.path.join("harness-password")
    }

    /// A linearizable get on node `i`: `None` when the key is absent.
    pub async fn get(
        &self,
        i: usize,
        key: impl Into<Bytes>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let request = GetRequest {
            key: key.into(),
            serializable: false,
        };
        let response = self.kv(i).get(request).await?.into_inner();
        Ok(response.found.then_some(response.value))
    }

    /// Checks with linearizable gets on node `i` that every acknowledged put of `log` is there
    /// with its value, and every put reported "not applied" is absent.
    pub async fn assert_writes_durable(&self, i: usize, log: &WriteLog) {
        let read = |key: String| async move {
            let what = format!("a linearizable get of {key} on node {i} succeeds");
            wait_for(Duration::from_secs(20), &what, || {
                let key = key.clone();
                async move { self.get(i, key).await.ok() }
            })
            .await
        };
        for (key, value) in &log.acked {
            let found = read(key.clone()).await;
            assert_eq!(
                found.as_deref(),
                Some(value.as_bytes()),
                "acknowledged put of {key} is lost or wrong on node {i}"
            );
        }
        for (key, out) in &log.not_applied {
            let found = read(key.clone()).await;
            assert_eq!(
                found, None,
                "put of {key} was reported not applied but is there: {out}"
            );
        }
    }

    // ------------------------------------------------------------------ kvsctl

    /// A `kvsctl` pointed at every running node (as the harness user, if there is one).
    pub fn cli(&self) -> Kvsctl {
        self.as_harness_user(
            Kvsctl::new(self.bins.kvsctl.clone(), self.endpoints()).with_args(self.kvsctl_args()),
        )
    }

    /// A `kvsctl` pointed at node `i` only (as the harness user, if there is one).
    pub fn cli_at(&self, i: usize) -> Kvsctl {
        self.as_harness_user(
            Kvsctl::new(self.bins.kvsctl.clone(), vec![self.nodes[i].address()])
                .with_args(self.kvsctl_args()),
        )
    }

    fn as_harness_user(&self, cli: Kvsctl) -> Kvsctl {
        match &self.options.harness_user {
            Some((user, _)) => cli.as_user(user, &self.harness_password_file()),
            None => cli,
        }
    }

    /// The flags every `kvsctl` run gets besides its endpoints: the client TLS material.
    fn kvsctl_args(&self) -> Vec<String> {
        self.options
            .client_tls
            .as_ref()
            .map(ClientTls::kvsctl_args)
            .unwrap_or_default()
    }

    /// Runs `kvsctl --endpoints <every running node> args…`.
    pub async fn kvsctl<I, S>(&self, args: I) -> KvsctlOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cli().run(args).await
    }

    /// Runs `kvsctl --endpoints <node i> args…`.
    pub async fn kvsctl_at<I, S>(&self, i: usize, args: I) -> KvsctlOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cli_at(i).run(args).await
    }
}

impl Drop for Cluster {
    /// A passing test still fails here if a node crashed or panicked during it (unless the
    /// nodes run a build broken on purpose, [`ClusterOptions::broken_on_purpose`]): every seat is
    /// checked (see [`Node::defects`]). On failure, the tail of every log is printed and the
    /// directory holding them is kept.
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let defects: Vec<String> = if panicking || self.options.broken_on_purpose {
            Vec::new()
        } else {
            self.nodes
                .iter_mut()
                .enumerate()
                .flat_map(|(i, node)| {
                    let id = node.id.clone();
                    node.defects()
                        .into_iter()
                        .map(move |defect| format!("node {i} ({id}): {defect}"))
                })
                .collect()
        };
        if !panicking && defects.is_empty() {
            return;
        }
        for (i, node) in self.nodes.iter().enumerate() {
            for log in &node.logs {
                eprintln!(
                    "===== node {i} ({}) — last lines of {} =====",
                    node.id,
                    log.display()
                );
                eprintln!("{}", log_tail(log, LOG_TAIL_LINES));
            }
        }
        if let Some(dir) = self.dir.take() {
            eprintln!("===== node logs kept in {} =====", dir.keep().display());
        }
        if !defects.is_empty() {
            panic!(
                "the test passed, but a node crashed or panicked:\n{}",
                defects.join("\n")
            );
        }
    }
}

async fn probe<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(PROBE_TIMEOUT, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("harness probe timed out")),
    }
}

/// The faults the harness has asked each node for, by seat; [`FaultPlan::for_node`] turns them
/// into what one node's control file says.
#[derive(Debug, Default)]
struct FaultPlan {
    /// Per node, the nodes it is cut off from.
    blocked: Vec<Vec<usize>>,
    /// Percent of applied writes whose replies are dropped.
    drop_replies: u8,
    /// Percent of client requests lost on arrival.
    drop_requests: u8,
    /// Per node, the nodes its calls to are held for `delay`.
    delayed: Vec<Vec<usize>>,
    /// How long a call over a slowed-down link is held.
    delay: Delay,
    /// Per node, the failpoints armed.
    failpoints: Vec<failpoint::Armed>,
    /// The control file last written for each node.
    texts: Vec<String>,
}

impl FaultPlan {
    /// The faults of node `i`, with the node at seat `j` named `ids[j]`.
    fn for_node(&self, i: usize, ids: &[u64]) -> FaultSet {
        let peers = |by_node: &[Vec<usize>]| {
            let seats = by_node.get(i).cloned().unwrap_or_default();
            seats.into_iter().map(|j| ids[j])
        };
        FaultSet {
            blocked: peers(&self.blocked).collect(),
            delays: peers(&self.delayed).map(|id| (id, self.delay)).collect(),
            drop_requests: self.drop_requests,
            drop_replies: self.drop_replies,
            failpoints: self.failpoints.get(i).cloned().unwrap_or_default(),
        }
    }
}

/// The fault control file of node `index`.
fn fault_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("faults{index}"))
}

/// The running test's name (libtest names the thread after it), usable in a file name.
fn test_name() -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("test");
    let name = name.rsplit("::").next().unwrap_or(name);
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect()
}
