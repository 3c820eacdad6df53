//! Node configuration: command-line flags (each also read from a `KVS_*` environment variable),
//! validated before anything starts so a bad flag is a clear message, never a half-started node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::error::Error;
use crate::error::Result;
use crate::memory_limit;
use crate::store::compaction::SnapshotRule;
use crate::tls::ClientAuth;
use crate::tls::TlsFiles;

/// How one kvs node runs. `docs/configuration.md` lists every flag.
#[derive(Debug, Clone, Args)]
pub struct NodeConfig {
    /// Address to serve the client gRPC API on (and peer RPCs too, without --peer-listen).
    #[arg(long, env = "KVS_LISTEN", default_value = "127.0.0.1:7379")]
    pub listen: SocketAddr,

    /// Separate address for peer (Raft) RPCs.
    #[arg(long, env = "KVS_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,

    /// Client address other nodes and clients use to reach this node (host:port). Required when
    /// listening on 0.0.0.0 or ::; defaults to the listen address.
    #[arg(long, env = "KVS_ADVERTISE")]
    pub advertise: Option<String>,

    /// Peer address other nodes use to reach this node (host:port); defaults to the peer listen
    /// address, or to the client advertise address when one port serves both.
    #[arg(long, env = "KVS_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,

    /// Form a new one-member cluster if this node has no state yet (bare metal, demo).
    #[arg(long, env = "KVS_BOOTSTRAP")]
    pub bootstrap: bool,

    /// Directory of this node's durable state (Raft log, snapshots, identity). One node per
    /// directory: a second process on the same directory is refused.
    #[arg(
        long,
        env = "KVS_DATA_DIR",
        default_value = "kvs-data",
        conflicts_with = "in_memory"
    )]
    pub data_dir: PathBuf,

    /// Keep all state in memory instead: nothing survives the process, and a restarted node is
    /// a new member.
    #[arg(long, env = "KVS_IN_MEMORY")]
    pub in_memory: bool,

    /// Election timeout: a follower that hears no leader for between this and twice this
    /// starts an election.
    #[arg(long, env = "KVS_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    pub election_timeout_ms: u64,

    /// Interval between the leader's heartbeats.
    #[arg(long, env = "KVS_HEARTBEAT_INTERVAL_MS", default_value_t = 200)]
    pub heartbeat_interval_ms: u64,

    /// How a leader confirms it still leads before a linearizable read: `read-index` has a quorum
    /// acknowledge a heartbeat sent after the read arrived; `lease` accepts a quorum
    /// acknowledgement from within the leader lease (2 x election timeout), which saves the round
    /// trip but is only safe while clocks run at nearly the same rate (docs/configuration.md).
    #[arg(long, env = "KVS_READ_POLICY", value_enum, default_value_t = ReadPolicy::ReadIndex)]
    pub read_policy: ReadPolicy,

    /// Deadline for every request this node serves; nothing waits longer.
    #[arg(long, env = "KVS_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,

    /// Largest key accepted.
    #[arg(long, env = "KVS_MAX_KEY_BYTES", default_value_t = 4096)]
    pub max_key_bytes: usize,

    /// Largest value accepted.
    #[arg(long, env = "KVS_MAX_VALUE_BYTES", default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,

    /// Most operations (compares included) in one batch.
    #[arg(long, env = "KVS_MAX_BATCH_OPS", default_value_t = 128)]
    pub max_batch_ops: usize,

    /// Most key and value bytes in one batch.
    #[arg(long, env = "KVS_MAX_BATCH_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_batch_bytes: usize,

    /// On SIGTERM: how long to finish in-flight requests and hand leadership off before exiting.
    #[arg(long, env = "KVS_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// Memory quota for stored keys and values (approximate: payload plus per-key overhead).
    /// Past it, writes that add data are refused (RESOURCE_EXHAUSTED) while reads and deletes
    /// still work. Default: half of the memory the node may use: its cgroup's memory limit
    /// (`memory.max`, or v1 `memory.limit_in_bytes`) when set and below physical memory.
    #[arg(long, env = "KVS_QUOTA_BYTES")]
    pub quota_bytes: Option<u64>,

    /// Client sessions the cluster tracks (what makes a retried write apply once); past it the
    /// session whose last write is oldest is evicted, and a retry from it is answered "session
    /// expired, outcome unknown". The leader stamps its value into each write, so every replica
    /// evicts alike.
    #[arg(long, env = "KVS_MAX_SESSIONS", default_value_t = 100_000)]
    pub max_sessions: u64,
    /// Disk space kept free under --data-dir beyond what the next snapshot needs (about the size
    /// of the stored data). When free space falls below both together the node raises the
    /// NOSPACE alarm and refuses writes that add data (RESOURCE_EXHAUSTED) while reads and
    /// deletes still work, until space returns.
    #[arg(long, env = "KVS_DISK_RESERVE_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub disk_reserve_bytes: u64,

    /// A leader whose wall clock differs by more than this from a majority of the voters (as
    /// measured on peer traffic) refuses writes (UNAVAILABLE) instead of stamping them with its
    /// clock, and raises the CLOCK_SKEW alarm.
    #[arg(long, env = "KVS_MAX_CLOCK_SKEW_MS", default_value_t = 1000)]
    pub max_clock_skew_ms: u64,

    /// While the state is smaller than half of --log-disk-bytes, also snapshot it every N
    /// applied entries and purge the log behind it (docs/storage.md gives the whole rule); a
    /// lagging or new member then catches up from the snapshot.
    #[arg(long, env = "KVS_SNAPSHOT_EVERY", default_value_t = 20_000)]
    pub snapshot_every: u64,

    /// Disk budget of the Raft log's journals: past it the log flushes and releases the oldest
    /// journal. A snapshot is also taken once the log since the last one reaches half of this
    /// (or half the state's size, if larger). At least 64 MiB.
    #[arg(long, env = "KVS_LOG_DISK_BYTES", default_value_t = 128 << 20)]
    pub log_disk_bytes: u64,

    /// Address to serve the Redis protocol (RESP2) on; no RESP listener without it.
    #[arg(long, env = "KVS_RESP_LISTEN")]
    pub resp_listen: Option<SocketAddr>,

    /// Allow RESP FLUSHDB and FLUSHALL, which empty the whole replicated keyspace.
    #[arg(long, env = "KVS_RESP_ALLOW_FLUSH")]
    pub resp_allow_flush: bool,

    /// Users and roles: one user a line, `NAME ROLE sha256:HEX` (ROLE admin, readwrite or
    /// readonly). Every client call must then carry a user's credentials; the file is re-read
    /// when it changes. Needs --peer-listen, so the peer API is not reachable on the client port.
    #[arg(long, env = "KVS_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// Serve RESP reads from this node's local state without ReadIndex (may be stale), as if
    /// every connection had sent READONLY.
    #[arg(long, env = "KVS_RESP_SERIALIZABLE_READS")]
    pub resp_serializable_reads: bool,

    /// A RESP connection that neither sends a request nor takes its replies for this long is
    /// closed.
    #[arg(long, env = "KVS_RESP_IDLE_TIMEOUT_MS", default_value_t = 300_000)]
    pub resp_idle_timeout_ms: u64,

    /// A RESP request must arrive in full within this long of its first byte, or the
    /// connection is closed.
    #[arg(long, env = "KVS_RESP_REQUEST_TIMEOUT_MS", default_value_t = 60_000)]
    pub resp_request_timeout_ms: u64,

    /// Most bytes of replies one RESP connection may have pending (Redis's client output
    /// buffer limit); a reply past it is refused and the connection closed. Also the largest
    /// gRPC reply message, so it must hold the largest reply a batch can get: at least
    /// --max-batch-ops x (--max-key-bytes + --max-value-bytes + 64) + 64 KiB.
    #[arg(long, env = "KVS_MAX_REPLY_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_reply_bytes: usize,
    /// Most gRPC connections (client and peer ports each) open at once; more wait in the
    /// listen backlog until one closes.
    #[arg(long, env = "KVS_MAX_GRPC_CONNECTIONS", default_value_t = 1024)]
    pub max_grpc_connections: usize,

    /// Most concurrent gRPC calls (HTTP/2 streams) on one connection.
    #[arg(long, env = "KVS_MAX_GRPC_STREAMS", default_value_t = 256)]
    pub max_grpc_streams: u32,

    /// HTTP/2 ping and TCP keepalive interval on gRPC connections; a connection whose ping goes
    /// unanswered this long again is closed.
    #[arg(long, env = "KVS_GRPC_KEEPALIVE_MS", default_value_t = 10_000)]
    pub grpc_keepalive_ms: u64,

    /// Most backups (`kvsctl snapshot save`) streamed at once; more are refused with
    /// RESOURCE_EXHAUSTED. Each holds a copy of the state and a thread while it streams.
    #[arg(long, env = "KVS_MAX_BACKUPS", default_value_t = 2)]
    pub max_backups: usize,

    /// A backup stream whose reader takes nothing for this long is dropped, releasing its state
    /// copy and thread.
    #[arg(long, env = "KVS_BACKUP_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub backup_idle_timeout_ms: u64,

    /// TLS on the client, RESP and peer ports (etcd's flag names).
    #[command(flatten)]
    pub tls: TlsFlags,

    /// TESTING ONLY — never in production. Re-read this file every 20 ms and drop all peer
    /// traffic to and from the nodes it names (`block <node-id>` lines), to simulate network
    /// partitions; delay calls to peers (`delay <node-id> <ms> [<jitter-ms>]`); lose a share of
    /// client requests (`drop-requests <percent>`) and drop the replies to a share of applied
    /// writes (`drop-replies <percent>`); in a build with the `failpoints` feature,
    /// `failpoint <name> crash|stall <ms>` arms a failpoint. Without this flag no fault injection
    /// code runs.
    #[arg(long, env = "KVS_FAULT_CONTROL_FILE")]
    pub fault_control_file: Option<PathBuf>,
}

/// How a leader confirms its leadership for linearizable reads (`--read-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadPolicy {
    /// A quorum acknowledges a heartbeat sent after the read arrived (one round per batch).
    ReadIndex,
    /// A quorum acknowledgement within the leader lease suffices; relies on bounded clock drift.
    Lease,
}

/// The most a value may be configured to: replication messages must stay bounded.
const MAX_VALUE_LIMIT: usize = 64 * 1024 * 1024;

/// Room in a reply for one op's result besides its previous value (field tags, lengths, the
/// integer).
const REPLY_BYTES_PER_OP: usize = 64;
/// Room in a reply for everything besides the ops' results (index, flags, a refusal's words).
const REPLY_FRAMING_BYTES: usize = 64 * 1024;

/// The smallest journal budget the log's storage engine (fjall) accepts.
const MIN_LOG_DISK_BYTES: u64 = 64 << 20;

impl NodeConfig {
    /// Checks every flag and the flags against each other.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if !self.in_memory && self.data_dir.as_os_str().is_empty() {
            return bad("--data-dir must not be empty".into());
        }
        if self.listen.ip().is_unspecified() && self.advertise.is_none() {
            return bad(format!(
                "--listen {} is a wildcard address; pass --advertise HOST:PORT so others can reach this node",
                self.listen
            ));
        }
        if let Some(peer) = self.peer_listen
            && peer.ip().is_unspecified()
            && self.peer_advertise.is_none()
        {
            return bad(format!(
                "--peer-listen {peer} is a wildcard address; pass --peer-advertise HOST:PORT"
            ));
        }
        if self.auth_file.is_some() && self.peer_listen.is_none() {
            return bad(
                "--auth-file needs --peer-listen: on the client port, the peer API would let \
                 anyone write past the users"
                    .into(),
            );
        }
        for (flag, addr) in [
            ("--advertise", &self.advertise),
            ("--peer-advertise", &self.peer_advertise),
        ] {
            if let Some(addr) = addr {
                check_host_port(flag, addr)?;
            }
        }
        for (flag, value) in [
            ("--max-grpc-connections", self.max_grpc_connections as u64),
            ("--max-grpc-streams", u64::from(self.max_grpc_streams)),
            ("--grpc-keepalive-ms", self.grpc_keepalive_ms),
            ("--backup-idle-timeout-ms", self.backup_idle_timeout_ms),
        ] {
            if value == 0 {
                return bad(format!("{flag} must be more than 0"));
            }
        }
        if self.heartbeat_interval_ms == 0
            || self.election_timeout_ms < 3 * self.heartbeat_interval_ms
        {
            return bad(format!(
                "--election-timeout-ms ({}) must be at least 3 x --heartbeat-interval-ms ({}), which must be > 0",
                self.election_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.request_timeout_ms < 100 {
            return bad(format!(
                "--request-timeout-ms ({}) must be at least 100",
                self.request_timeout_ms
            ));
        }
        if self.max_key_bytes == 0 || self.max_value_bytes > MAX_VALUE_LIMIT {
            return bad(format!(
                "--max-key-bytes must be > 0 and --max-value-bytes at most {MAX_VALUE_LIMIT}"
            ));
        }
        if self.max_clock_skew_ms == 0 {
            return bad("--max-clock-skew-ms must be > 0".into());
        }
        if self.snapshot_every < 10 {
            return bad(format!(
                "--snapshot-every ({}) must be at least 10",
                self.snapshot_every
            ));
        }
        if self.log_disk_bytes < MIN_LOG_DISK_BYTES {
            return bad(format!(
                "--log-disk-bytes ({}) must be at least {MIN_LOG_DISK_BYTES} (64 MiB)",
                self.log_disk_bytes
            ));
        }
        if self.max_batch_ops == 0 {
            return bad("--max-batch-ops must be > 0".into());
        }
        if self.max_batch_bytes < self.max_key_bytes + self.max_value_bytes {
            return bad(format!(
                "--max-batch-bytes ({}) must hold at least one largest key and value ({})",
                self.max_batch_bytes,
                self.max_key_bytes + self.max_value_bytes
            ));
        }
        if self.max_sessions == 0 {
            return bad("--max-sessions must be > 0".into());
        }
        if self.resp_idle_timeout_ms < 1000 {
            return bad(format!(
                "--resp-idle-timeout-ms ({}) must be at least 1000",
                self.resp_idle_timeout_ms
            ));
        }
        if self.resp_request_timeout_ms < 100 {
            return bad(format!(
                "--resp-request-timeout-ms ({}) must be at least 100",
                self.resp_request_timeout_ms
            ));
        }
        self.tls.validate(self.peer_listen.is_some())?;
        // Every gRPC reply is one message of at most --max-reply-bytes, and a write's reply is
        // sent after the write applied: a limit some reply can pass would fail an applied write.
        if self.max_reply_bytes < self.largest_reply_bytes() {
            return bad(format!(
                "--max-reply-bytes ({}) must hold the largest reply, a batch of --max-batch-ops ({}) \
                 ops each returning a previous value: at least {} bytes (--max-batch-ops x \
                 (--max-key-bytes + --max-value-bytes + {REPLY_BYTES_PER_OP}) + {REPLY_FRAMING_BYTES})",
                self.max_reply_bytes,
                self.max_batch_ops,
                self.largest_reply_bytes()
            ));
        }
        Ok(())
    }

    /// The memory quota: `--quota-bytes`, or half of the memory this process may use — its
    /// cgroup's limit when tighter than physical memory (8 GiB if neither is known).
    pub(crate) fn quota_bytes(&self) -> u64 {
        self.quota_bytes
            .unwrap_or_else(|| memory_limit::limit().map_or(8 << 30, |total| total / 2))
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// When the log is folded into a snapshot.
    pub(crate) fn snapshot_rule(&self) -> SnapshotRule {
        SnapshotRule::new(self.snapshot_every, self.log_disk_bytes)
    }

    /// The largest reply any request can get: a batch of `--max-batch-ops` ops, each
    /// returning a previous value as large as a key and value together, plus framing.
    /// Validation keeps `--max-reply-bytes` at least this.
    pub(crate) fn largest_reply_bytes(&self) -> usize {
        self.max_batch_ops
            .saturating_mul(self.max_key_bytes + self.max_value_bytes + REPLY_BYTES_PER_OP)
            .saturating_add(REPLY_FRAMING_BYTES)
    }

    /// The largest gRPC message this node must accept: a full batch plus framing.
    pub(crate) fn max_message_bytes(&self) -> usize {
        self.max_batch_bytes + 64 * 1024 + self.max_batch_ops * 64
    }

    /// The openraft configuration these flags describe.
    pub(crate) fn raft_config(&self) -> Result<openraft::Config> {
        openraft::Config {
            cluster_name: "kvs".into(),
            election_timeout_min: self.election_timeout_ms,
            election_timeout_max: self.election_timeout_ms * 2,
            heartbeat_interval: self.heartbeat_interval_ms,
            install_snapshot_timeout: self.request_timeout_ms.max(2000),
            max_payload_entries: 256,
            // Snapshots are asked for by the node's own rule (`store::compaction`), which looks at
            // bytes as well as entries.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            // Keep a short tail behind the snapshot so briefly lagging followers need no snapshot.
            max_in_snapshot_log_to_keep: self.snapshot_rule().tail_entries,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Config(e.to_string()))
    }
}

fn check_host_port(flag: &str, addr: &str) -> Result<()> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(())
        }
        _ => Err(Error::Config(format!("{flag} {addr:?} is not HOST:PORT"))),
    }
}

/// The TLS flags (docs/configuration.md, docs/operations.md): the client port's certificate,
/// shared by the RESP port, and the peer port's, with etcd's names.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsFlags {
    /// Certificate chain (PEM) of the client and RESP ports; with it they speak only TLS.
    #[arg(long, env = "KVS_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "KVS_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM) of client certificates (with --client-cert-auth) and of the other
    /// members' client ports, which this node verifies when it forwards a request to the leader.
    #[arg(long, env = "KVS_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse client and RESP connections without a certificate from --trusted-ca-file.
    #[arg(long, env = "KVS_CLIENT_CERT_AUTH")]
    pub client_cert_auth: bool,
    /// Certificate chain (PEM) of the peer port, also presented when this node dials a peer. Its
    /// subject alternative names must include the host of this node's peer address.
    #[arg(long, env = "KVS_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file.
    #[arg(long, env = "KVS_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA bundle (PEM) every peer's certificate must come from, both ways: mutual TLS is always
    /// required on the peer port.
    #[arg(long, env = "KVS_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
}

impl TlsFlags {
    /// The client port's TLS files, if it has TLS.
    pub(crate) fn client(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.cert_file.clone()?,
            key: self.key_file.clone()?,
            ca: self.trusted_ca_file.clone(),
            client_auth: if self.client_cert_auth {
                ClientAuth::AfterHandshake
            } else {
                ClientAuth::None
            },
        })
    }

    /// The peer port's TLS files, if it has TLS.
    pub(crate) fn peer(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.peer_cert_file.clone()?,
            key: self.peer_key_file.clone()?,
            ca: Some(self.peer_trusted_ca_file.clone()?),
            client_auth: ClientAuth::InHandshake,
        })
    }

    fn validate(&self, own_peer_port: bool) -> Result<()> {
        let bad = |msg: &str| Err(Error::Config(msg.into()));
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad("--cert-file and --key-file go together");
        }
        if self.cert_file.is_none() && (self.trusted_ca_file.is_some() || self.client_cert_auth) {
            return bad("--trusted-ca-file and --client-cert-auth need --cert-file and --key-file");
        }
        if self.cert_file.is_some() && self.trusted_ca_file.is_none() {
            return bad(
                "--cert-file needs --trusted-ca-file: members verify each other's client port with it \
                 when they forward a request to the leader",
            );
        }
        let peer = [
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        ];
        if peer.iter().any(|f| f.is_some()) && !peer.iter().all(|f| f.is_some()) {
            return bad(
                "--peer-cert-file, --peer-key-file and --peer-trusted-ca-file go together: \
                 the peer port always verifies both sides",
            );
        }
        if (self.cert_file.is_some() || self.peer_cert_file.is_some()) && !own_peer_port {
            return bad("TLS needs --peer-listen: the peer API gets a port of its own");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        node: NodeConfig,
    }

    fn config(args: &[&str]) -> NodeConfig {
        Flags::try_parse_from(std::iter::once("kvs-node").chain(args.iter().copied()))
            .expect("the flags parse")
            .node
    }

    /// A reply limit that a full batch returning previous values could pass is refused at
    /// start, naming the bound; one that holds it, and the defaults, are accepted.
    #[test]
    fn a_reply_limit_below_the_largest_batch_reply_is_refused() {
        let small = [
            "--in-memory",
            "--max-value-bytes",
            "65536",
            "--max-batch-ops",
            "8",
            "--max-reply-bytes",
            "200000",
        ];
        let largest = 8 * (4096 + 65536 + 64) + 64 * 1024;
        let refused = config(&small).validate().expect_err("refused");
        let message = refused.to_string();
        assert!(
            message.contains("--max-reply-bytes (200000)")
                && message.contains(&format!("at least {largest} bytes")),
            "{message}"
        );
        let mut enough = small;
        let largest = largest.to_string();
        enough[6] = &largest;
        config(&enough)
            .validate()
            .expect("a limit that holds the largest reply");
        config(&["--in-memory"]).validate().expect("the defaults");
    }

    /// TLS flags that cannot work together are refused before anything starts (exit 2), each
    /// with a message naming the flags; complete sets are accepted.
    #[test]
    fn incomplete_tls_flags_are_refused_naming_what_is_missing() {
        let peer = ["--peer-listen", "127.0.0.1:7380"];
        let client = ["--cert-file", "c.pem", "--key-file", "c.key"];
        let refused = |args: &[&str], says: &str| {
            let Err(Error::Config(msg)) = config(args).validate() else {
                panic!("{args:?} was accepted");
            };
            assert!(msg.contains(says), "{args:?}: {msg}");
        };
        refused(&["--cert-file", "c.pem"], "--key-file");
        refused(
            &[&peer[..], &["--key-file", "c.key"]].concat(),
            "--cert-file",
        );
        refused(&[&peer[..], &client[..]].concat(), "--trusted-ca-file");
        refused(&["--client-cert-auth"], "--cert-file");
        refused(&["--trusted-ca-file", "ca.pem"], "--cert-file");
        refused(
            &[
                &peer[..],
                &["--peer-cert-file", "p.pem", "--peer-key-file", "p.key"],
            ]
            .concat(),
            "--peer-trusted-ca-file",
        );
        let whole = [
            &client[..],
            &["--trusted-ca-file", "ca.pem", "--client-cert-auth"],
        ]
        .concat();
        refused(&whole, "--peer-listen");
        assert!(config(&[&peer[..], &whole[..]].concat()).validate().is_ok());
        let peer_tls = [
            "--peer-cert-file",
            "p.pem",
            "--peer-key-file",
            "p.key",
            "--peer-trusted-ca-file",
            "pca.pem",
        ];
        assert!(
            config(&[&peer[..], &peer_tls[..]].concat())
                .validate()
                .is_ok()
        );
    }
}
