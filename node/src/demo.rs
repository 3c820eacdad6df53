//! `kvs-node demo`: a local multi-node cluster in one command, no Kubernetes needed.
//!
//! The demo is a supervisor of real `kvs-node` processes — the same binary, started with the same
//! flags a user would pass — so what it shows is what a deployment does. Node 0 bootstraps, the
//! others join through the membership API one at a time. Each child watches its stdin, which the
//! demo holds open: if the demo dies, even by SIGKILL, the pipe closes and the nodes shut down.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use kvs_client::proto;
use kvs_client::proto::cluster_client::ClusterClient;
use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::io::BufReader;
use tokio::process::Child;
use tokio::process::Command;
use tonic::transport::Channel;

use crate::announce::Serving;
use crate::error::Error;
use crate::error::Result;
use crate::identity::node_id_string;

/// Flags of `kvs-node demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How many nodes to run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,
    /// Client port of node 0; node i listens on base-port + i, and serves RESP (Redis clients)
    /// on base-port + 100 + i.
    #[arg(long, default_value_t = 7379)]
    pub base_port: u16,
    /// Directory for the nodes' data and logs: node i keeps its state in DIR/node-i and logs
    /// to DIR/node-i.log. Running the demo again on the same directory resumes the cluster.
    #[arg(long, default_value = "kvs-demo")]
    pub dir: PathBuf,
    /// Keep all state in memory: nothing survives the demo.
    #[arg(long)]
    pub in_memory: bool,
}

/// A child node of the demo.
struct DemoNode {
    child: Child,
    id: String,
    addr: String,
    resp: String,
}

/// Node i serves RESP on its client port plus this.
const RESP_PORT_OFFSET: u16 = 100;

const START_TIMEOUT: Duration = Duration::from_secs(20);
const GRACE_MS: u64 = 5000;

fn demo_err(msg: impl Into<String>) -> Error {
    Error::Demo(msg.into())
}

/// Runs the demo until `shutdown` resolves, then stops every node.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("cannot find the kvs-node executable", e))?;
    let ports: Vec<u16> = (0..args.nodes)
        .map(|i| {
            args.base_port
                .checked_add(i)
                .filter(|port| port.checked_add(RESP_PORT_OFFSET).is_some())
                .ok_or_else(|| demo_err("--base-port is too high for that many nodes"))
        })
        .collect::<Result<_>>()?;
    let log_dir = args.dir.clone();
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| Error::io(format!("cannot create {}", log_dir.display()), e))?;

    let mut nodes = Vec::new();
    let started = start_all(&exe, &ports, &log_dir, args.in_memory, &mut nodes).await;
    let formed = match started {
        Ok(()) => form_cluster(&nodes).await,
        Err(e) => Err(e),
    };
    if let Err(e) = formed {
        stop_all(&mut nodes).await;
        return Err(e);
    }
    print_summary(&nodes, &log_dir, args.in_memory);

    let mut shutdown = std::pin::pin!(shutdown);
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = watch.tick() => report_exits(&mut nodes),
        }
    }
    println!("stopping {} nodes...", nodes.len());
    stop_all(&mut nodes).await;
    println!("stopped");
    Ok(())
}

async fn start_all(
    exe: &PathBuf,
    ports: &[u16],
    log_dir: &std::path::Path,
    in_memory: bool,
    nodes: &mut Vec<DemoNode>,
) -> Result<()> {
    for (i, port) in ports.iter().enumerate() {
        let log_path = log_dir.join(format!("node-{i}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("cannot create {}", log_path.display()), e))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--shutdown-grace-ms")
            .arg(GRACE_MS.to_string())
            .arg("--exit-with-parent")
            .arg("--resp-listen")
            .arg(format!("127.0.0.1:{}", port + RESP_PORT_OFFSET))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        if in_memory {
            cmd.arg("--in-memory");
        } else {
            cmd.arg("--data-dir").arg(log_dir.join(format!("node-{i}")));
        }
        if i == 0 {
            cmd.arg("--bootstrap");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("cannot start kvs-node", e))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| demo_err("no stdout from child"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let line = match line {
            Ok(Ok(Some(line))) => line,
            _ => {
                let _ = child.start_kill();
                return Err(demo_err(format!(
                    "node {i} did not start on port {port} (is the port free?); see {}",
                    log_path.display()
                )));
            }
        };
        let serving: Serving = line
            .parse()
            .map_err(|why| demo_err(format!("unexpected first line from node {i}: {why}")))?;
        nodes.push(DemoNode {
            child,
            id: node_id_string(serving.node_id),
            addr: format!("127.0.0.1:{port}"),
            resp: format!("127.0.0.1:{}", port + RESP_PORT_OFFSET),
        });
    }
    Ok(())
}

async fn cluster_client(addr: &str) -> Result<ClusterClient<Channel>> {
    let channel = crate::raft::network::endpoint(addr, Duration::from_secs(2))
        .map_err(|e| demo_err(e.to_string()))?
        .connect()
        .await
        .map_err(|e| demo_err(format!("cannot connect to {addr}: {e}")))?;
    Ok(ClusterClient::new(channel))
}

/// Polls `check` every 100 ms until it returns `Some`, for at most [`START_TIMEOUT`].
async fn poll<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let wait = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(START_TIMEOUT, wait)
        .await
        .map_err(|_| demo_err(format!("timed out waiting for {what}")))
}

async fn form_cluster(nodes: &[DemoNode]) -> Result<()> {
    let first = &nodes[0];
    let mut leader = cluster_client(&first.addr).await?;
    // A resumed cluster may elect any member; node 0 forwards to whoever leads.
    poll("a leader", || {
        let mut c = leader.clone();
        async move {
            let status = c
                .status(proto::StatusRequest::default())
                .await
                .ok()?
                .into_inner();
            (!status.leader.is_empty()).then_some(())
        }
    })
    .await?;
    for node in &nodes[1..] {
        let req = proto::AddLearnerRequest {
            address: node.addr.clone(),
        };
        leader
            .add_learner(req)
            .await
            .map_err(|s| demo_err(format!("adding {}: {}", node.addr, s.message())))?;
        poll("the new node to catch up", || {
            let mut c = leader.clone();
            async move {
                let members = c
                    .list_members(proto::ListMembersRequest {})
                    .await
                    .ok()?
                    .into_inner();
                members
                    .members
                    .iter()
                    .any(|m| m.id == node.id && m.lag == 0)
                    .then_some(())
            }
        })
        .await?;
        leader
            .promote_member(proto::PromoteMemberRequest {
                id: node.id.clone(),
            })
            .await
            .map_err(|s| demo_err(format!("promoting {}: {}", node.addr, s.message())))?;
    }
    Ok(())
}

fn print_summary(nodes: &[DemoNode], log_dir: &std::path::Path, in_memory: bool) {
    let endpoints: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    let endpoints = endpoints.join(",");
    if in_memory {
        println!(
            "kvs demo: {} nodes on 127.0.0.1, in memory (all data is gone when the demo stops)",
            nodes.len()
        );
    } else {
        println!(
            "kvs demo: {} nodes on 127.0.0.1, data in {} (kept after the demo stops; delete it to start afresh)",
            nodes.len(),
            log_dir.display()
        );
    }
    for (i, node) in nodes.iter().enumerate() {
        println!(
            "  node {i}  id {}  client {}  resp {}",
            node.id, node.addr, node.resp
        );
    }
    println!("logs:      {}/node-*.log", log_dir.display());
    println!("endpoints: {endpoints}");
    println!();
    println!("try:");
    println!("  kvsctl --endpoints {endpoints} put greeting hello");
    println!("  kvsctl --endpoints {endpoints} get greeting");
    println!("  kvsctl --endpoints {endpoints} member list");
    if let Some((_, port)) = nodes.first().and_then(|n| n.resp.rsplit_once(':')) {
        println!("  redis-cli -p {port} set greeting hello");
    }
    println!();
    println!("Ctrl-C stops the cluster.");
}

fn report_exits(nodes: &mut [DemoNode]) {
    for node in nodes.iter_mut() {
        if let Ok(Some(status)) = node.child.try_wait() {
            eprintln!("node {} ({}) exited: {status}", node.id, node.addr);
        }
    }
}

async fn stop_all(nodes: &mut [DemoNode]) {
    for node in nodes.iter() {
        if let Some(pid) = node.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for node in nodes.iter_mut() {
        let grace = Duration::from_millis(GRACE_MS + 1000);
        if tokio::time::timeout(grace, node.child.wait())
            .await
            .is_err()
        {
            eprintln!("node {} did not stop in time; killing it", node.id);
            let _ = node.child.kill().await;
        }
    }
}
