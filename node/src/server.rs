//! Wires a node together and owns every task it runs.
//!
//! [`run`] takes listeners that are already bound, so tests and the demo can bind port 0 and
//! learn the port, and so a bad address fails before anything starts. It returns only after a
//! clean shutdown: requests drained, leadership handed off, servers and Raft stopped.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kvs_client::proto::cluster_server::ClusterServer;
use kvs_client::proto::kv_server::KvServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;

use crate::announce::Serving;
use crate::auth;
use crate::auth::Gate;
use crate::config::NodeConfig;
use crate::deadline::Deadline;
use crate::error::Error;
use crate::error::Result;
use crate::fault;
use crate::fault::Faults;
use crate::grpc;
use crate::grpc::auth::AuthorizeLayer;
use crate::grpc::cluster::ClusterService;
use crate::grpc::health;
use crate::grpc::kv::KvService;
use crate::grpc::peer::PeerService;
use crate::identity::Identity;
use crate::identity::StoredIdentity;
use crate::identity::new_node_id;
use crate::identity::node_id_string;
use crate::raft::Raft;
use crate::raft::network::PeerNetwork;
use crate::raft::peer_proto::peer_server::PeerServer;
use crate::raft::read_index::ReadIndexRunners;
use crate::replica::Replica;
use crate::replica::read;
use crate::store::compaction::Request;
use crate::store::data_dir::DataDir;
use crate::store::disk_log::DiskLog;
use crate::store::entry::MemberAddr;
use crate::store::mem_log::MemLog;
use crate::store::snapshot_file::SnapshotFiles;
use crate::store::state_machine::StateMachine;
use crate::tls::Tls;
use crate::tls::TlsFiles;

/// The sockets a node serves on.
pub struct Listeners {
    /// Client API (and peer API when `peer` is `None`).
    pub client: TcpListener,
    /// Separate peer API, if configured.
    pub peer: Option<TcpListener>,
    /// The Redis protocol (RESP) face, if configured.
    pub resp: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses the configuration names.
    pub async fn bind(config: &NodeConfig) -> Result<Self> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::io(format!("cannot listen on {addr}"), e))
        };
        Ok(Self {
            client: bind(config.listen).await?,
            peer: match config.peer_listen {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            },
            resp: match config.resp_listen {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            },
        })
    }

    /// The addresses this node tells the others and its clients: as configured, or else the
    /// ones it listens on.
    fn advertised(&self, config: &NodeConfig) -> Result<MemberAddr> {
        let client_addr = Self::local_addr(&self.client)?;
        let peer_addr = match &self.peer {
            Some(l) => Self::local_addr(l)?,
            None => client_addr,
        };
        let advertised_client = config
            .advertise
            .clone()
            .unwrap_or_else(|| client_addr.to_string());
        Ok(MemberAddr {
            peer_addr: match (&config.peer_advertise, &self.peer) {
                (Some(a), _) => a.clone(),
                (None, Some(_)) => peer_addr.to_string(),
                (None, None) => advertised_client.clone(),
            },
            addr: advertised_client,
        })
    }

    fn local_addr(listener: &TcpListener) -> Result<SocketAddr> {
        listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the listen address", e))
    }
}

/// Runs a node until `shutdown` resolves, then stops it gracefully within the grace period:
/// open storage → build the replica → spawn its owned task set → await shutdown → drain →
/// hand leadership off → stop the tasks → stop Raft.
pub async fn run(
    listeners: Listeners,
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    config.validate()?;
    let gate = Arc::new(Gate::for_file(config.auth_file.as_deref())?);
    let advertised = listeners.advertised(&config)?;
    // The data directory stays locked until the node has stopped.
    let tls = PortTls::load(&config)?;
    let (storage, _data_dir) = Storage::open(&config)?;
    let (replica, read_rounds) = build_replica(&config, advertised.clone(), storage, &tls).await?;
    if config.bootstrap {
        let init = replica.initialize().await?;
        tracing::info!(
            cluster_id = init.cluster_id,
            created = init.initialized,
            "bootstrap"
        );
    }
    let tasks = Tasks::spawn(listeners, &replica, read_rounds, gate, tls);
    announce(replica.identity().node_id(), &advertised);

    // A node whose Raft core died can serve nothing right: it stops at once and exits non-zero,
    // so its supervisor restarts it (recovery from its data directory, or a clear refusal).
    tokio::select! {
        () = shutdown => {}
        cause = replica.core_stopped() => {
            tracing::error!(%cause, "the Raft core stopped; exiting");
            tasks.stop(&Deadline::after(FATAL_GRACE)).await;
            return Err(Error::Fatal(cause));
        }
    }
    tracing::info!("shutting down");
    let grace = Deadline::after(config.shutdown_grace());
    replica.drain_and_hand_off(&grace).await;
    tasks.stop(&grace).await;
    if grace.run(replica.raft().shutdown()).await.is_err() {
        tracing::warn!("raft did not stop within the grace period");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long the tasks of a node whose Raft core died get to stop before it exits.
const FATAL_GRACE: Duration = Duration::from_secs(2);

/// The TLS of each port that has it, read from the files the flags name.
struct PortTls {
    /// The client port's, also the RESP port's and what forwarded requests are sent with.
    client: Option<Arc<Tls>>,
    peer: Option<Arc<Tls>>,
}

impl PortTls {
    fn load(config: &NodeConfig) -> Result<Self> {
        let load = |port: &'static str, files: Option<TlsFiles>| {
            files
                .map(|files| Tls::load(port, files))
                .transpose()
                .map_err(|why| Error::Config(format!("TLS of the {port} port: {why}")))
        };
        Ok(Self {
            client: load("client", config.tls.client())?,
            peer: load("peer", config.tls.peer())?,
        })
    }
}

/// Starts Raft on the opened storage and builds the replica around it.
async fn build_replica(
    config: &NodeConfig,
    advertised: MemberAddr,
    storage: Storage,
    tls: &PortTls,
) -> Result<(Arc<Replica>, ReadIndexRunners)> {
    let Storage {
        identity,
        state,
        log,
    } = storage;
    let faults = Arc::new(match &config.fault_control_file {
        Some(path) => {
            tracing::warn!(path = %path.display(), "fault injection enabled (testing only)");
            Faults::controlled()
        }
        None => Faults::inert(),
    });
    let peers = PeerNetwork::new(
        identity.clone(),
        config.max_message_bytes(),
        Duration::from_millis(config.heartbeat_interval_ms.max(500)),
        faults,
        tls.peer.clone(),
    );
    let node_id = identity.node_id();
    let raft_config = Arc::new(config.raft_config()?);
    let raft = match log {
        Log::Memory(log) => {
            Raft::new(node_id, raft_config, peers.clone(), log, state.clone()).await
        }
        Log::Disk(log) => Raft::new(node_id, raft_config, peers.clone(), log, state.clone()).await,
    }
    .map_err(|e| Error::Fatal(e.to_string()))?;
    Ok(Replica::new(
        config.clone(),
        advertised,
        identity,
        raft,
        state,
        peers,
        tls.client.clone(),
    ))
}

/// Every task a node runs besides Raft's own: the gRPC servers, the RESP face, health
/// reporting, expiry purges, log compaction, read-index rounds, the fault-control watcher and
/// the auth-file watcher. All of them stop when `stop` is sent, and none outlives
/// [`Tasks::stop`].
struct Tasks {
    set: JoinSet<()>,
    stop: watch::Sender<bool>,
}

impl Tasks {
    fn spawn(
        listeners: Listeners,
        replica: &Arc<Replica>,
        read_rounds: ReadIndexRunners,
        gate: Arc<Gate>,
        tls: PortTls,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut set = JoinSet::new();
        let config = replica.config();
        let (reporter, health_service) = tonic_health::server::health_reporter();
        set.spawn(health::report(replica.clone(), reporter, stopped()));
        set.spawn(purge_expired(replica.clone(), stopped()));
        set.spawn(compact_log(replica.clone(), stopped()));
        set.spawn(read::run_rounds(read_rounds, replica.clone(), stopped()));
        if let Some(path) = config.fault_control_file.clone() {
            set.spawn(fault::watch(replica.faults().clone(), path, stopped()));
        }
        if let Some(path) = config.auth_file.clone() {
            set.spawn(auth::watch(gate.clone(), path, stopped()));
        }
        if let Some(listener) = listeners.resp {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving RESP");
            }
            set.spawn(crate::resp::serve(
                listener,
                replica.clone(),
                gate.clone(),
                tls.client.clone(),
                stopped(),
            ));
        }
        let reloaded: Vec<_> = tls.client.iter().chain(&tls.peer).cloned().collect();
        if !reloaded.is_empty() {
            set.spawn(crate::tls::watch(reloaded, stopped()));
        }

        let max_message = config.max_message_bytes();
        let peer_service = PeerServer::new(PeerService::new(replica.clone()))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let incoming =
            |listener, tls| grpc::incoming::accept(listener, config.max_grpc_connections, tls);
        let kv_service = || {
            KvServer::new(KvService::new(replica.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(config.max_reply_bytes)
        };
        let cluster_service = || ClusterServer::new(ClusterService::new(replica.clone()));
        let client_router = grpc_server(config)
            .layer(AuthorizeLayer::new(gate))
            .add_service(health_service)
            .add_service(kv_service())
            .add_service(cluster_service());
        match listeners.peer {
            None => set.spawn(serve(
                client_router
                    .add_service(peer_service)
                    .serve_with_incoming_shutdown(
                        incoming(listeners.client, tls.client),
                        stopped(),
                    ),
            )),
            Some(peer_listener) => {
                set.spawn(serve(client_router.serve_with_incoming_shutdown(
                    incoming(listeners.client, tls.client),
                    stopped(),
                )));
                // The client API here is for requests followers forward (`raft::forward`): they
                // checked the caller already, so the peer port is open to the nodes alone.
                set.spawn(serve(
                    grpc_server(config)
                        .layer(AuthorizeLayer::new(Arc::new(Gate::open())))
                        .add_service(peer_service)
                        .add_service(kv_service())
                        .add_service(cluster_service())
                        .serve_with_incoming_shutdown(incoming(peer_listener, tls.peer), stopped()),
                ))
            }
        };
        Self { set, stop }
    }

    /// Tells every task to stop and waits for them within `grace`; any still running then is
    /// aborted.
    async fn stop(mut self, grace: &Deadline) {
        let _ = self.stop.send(true);
        let all_done = async {
            while let Some(done) = self.set.join_next().await {
                if let Err(e) = done {
                    tracing::warn!(error = %e, "task failed");
                }
            }
        };
        if grace.run(all_done).await.is_err() {
            tracing::warn!(
                still_running = self.set.len(),
                "tasks did not stop within the grace period"
            );
            self.set.abort_all();
        }
    }
}

/// Runs a gRPC server to its end, reporting how it ended.
async fn serve(server: impl Future<Output = std::result::Result<(), tonic::transport::Error>>) {
    if let Err(e) = server.await {
        tracing::warn!(error = %e, "server stopped with an error");
    }
}

/// A gRPC server with the node's limits (docs/configuration.md): streams per connection and
/// HTTP/2 and TCP keepalives, so a dead peer's connection is noticed and dropped; and every call
/// on a connection TLS did not admit refused.
fn grpc_server(
    config: &NodeConfig,
) -> Server<
    tower::layer::util::Stack<InterceptorLayer<RefuseUnverified>, tower::layer::util::Identity>,
> {
    let keepalive = Duration::from_millis(config.grpc_keepalive_ms);
    Server::builder()
        .max_concurrent_streams(Some(config.max_grpc_streams))
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        .tcp_keepalive(Some(keepalive))
        .layer(InterceptorLayer::new(
            grpc::incoming::refuse_unverified as RefuseUnverified,
        ))
}

/// The interceptor that refuses calls on connections TLS did not admit.
type RefuseUnverified =
    fn(tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status>;

/// While this node leads, deletes expired keys a few at a time until `stop` resolves.
async fn purge_expired(replica: Arc<Replica>, stop: impl Future<Output = ()>) {
    const PER_ROUND: usize = 64;
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = replica.purge_expired(PER_ROUND).await {
            tracing::debug!(error = %e, "purging expired keys");
        }
    }
}

/// Asks Raft for the snapshots and purges the state machine's compaction rule calls for
/// (`store::compaction`), until `stop` resolves.
async fn compact_log(replica: Arc<Replica>, stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let requests = tokio::select! {
            _ = &mut stop => return,
            requests = replica.compaction_requests() => requests,
        };
        for request in requests {
            // While a snapshot is being built a request for another is ignored; entries applied
            // meanwhile ask again, so nothing is lost by not waiting for the outcome here.
            let asked = match request {
                Request::Snapshot => replica.raft().trigger().snapshot().await,
                Request::PurgeUpto(upto) => replica.raft().trigger().purge_log(upto).await,
            };
            if let Err(e) = asked {
                tracing::debug!(error = %e, ?request, "asking Raft to compact the log");
            }
        }
    }
}

/// A node's state and where it lives.
struct Storage {
    identity: Identity,
    state: StateMachine,
    log: Log,
}

enum Log {
    Memory(MemLog),
    Disk(DiskLog),
}

impl Storage {
    /// Opens the data directory (or nothing, in memory): identity first, so a node that fails
    /// later still has one stable ID. The directory comes back too, locked for as long as the
    /// caller holds it.
    fn open(config: &NodeConfig) -> Result<(Storage, Option<DataDir>)> {
        if config.in_memory {
            let storage = Storage {
                identity: Identity::new(new_node_id()),
                state: StateMachine::in_memory(config.snapshot_rule()),
                log: Log::Memory(MemLog::default()),
            };
            return Ok((storage, None));
        }
        let dir = DataDir::open(&config.data_dir)?;
        let stored = match dir.load_identity()? {
            Some(stored) => stored,
            None => {
                let fresh = StoredIdentity {
                    node_id: new_node_id(),
                    cluster_id: None,
                };
                dir.write_identity(&fresh)?;
                fresh
            }
        };
        let fail = |what: &str, e: std::io::Error| {
            Error::Storage(format!("{what} in {}: {e}", dir.path().display()))
        };
        let files = SnapshotFiles::new(dir.snapshot_dir())
            .map_err(|e| fail("cannot open the snapshots", e))?;
        let state = StateMachine::open(files, config.snapshot_rule())
            .map_err(|e| fail("cannot load the snapshot", e))?;
        let log = DiskLog::open(
            &dir.raft_dir(),
            &dir.path().join("log-watermark"),
            config.log_disk_bytes,
        )
        .map_err(|e| fail("cannot open the Raft log", e))?;
        tracing::info!(data_dir = %dir.path().display(), node_id = node_id_string(stored.node_id), "opened data directory");
        let storage = Storage {
            identity: Identity::stored(stored, dir.save_identity()),
            state,
            log: Log::Disk(log),
        };
        Ok((storage, Some(dir)))
    }
}

/// Prints the one line on stdout that tells a supervisor (the demo, test harnesses) the node is
/// serving and who it is; logs go to stderr.
fn announce(node_id: u64, advertised: &MemberAddr) {
    let serving = Serving {
        node_id,
        client: advertised.addr.clone(),
        peer: advertised.peer_addr.clone(),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{serving}");
    let _ = out.flush();
}
