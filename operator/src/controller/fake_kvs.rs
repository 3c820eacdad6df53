//! A stand-in for a kvs cluster in controller tests: one gRPC `Cluster` service per pod on
//! loopback, sharing one membership. It answers what the operator asks and records every
//! membership call, so a test can assert exactly which changes a reconcile made.

use std::sync::{Arc, Mutex, MutexGuard};

use kvs_client::proto::cluster_server::{Cluster, ClusterServer};
use kvs_client::proto::*;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::observe::{PodAddress, Resolver};
use crate::resources::Names;

/// The shared state of the fake cluster.
#[derive(Debug, Default)]
pub(super) struct Raft {
    pub(super) members: Vec<Member>,
    /// The node ID serving at each ordinal.
    pub(super) nodes: Vec<String>,
    /// Membership calls in the order they were made.
    pub(super) calls: Vec<String>,
}

/// Fake pods, each serving `Cluster` on its own loopback port.
pub(super) struct FakeCluster {
    pub(super) raft: Arc<Mutex<Raft>>,
    dials: Vec<String>,
    _servers: JoinSet<()>,
}

pub(super) const CLUSTER_ID: &str = "0123456789abcdef0123456789abcdef";

impl FakeCluster {
    /// `voters` members at ordinals 0.., pod-0 leading.
    pub(super) async fn start(names: &Names, voters: u32) -> Self {
        let raft = Arc::new(Mutex::new(Raft::default()));
        let mut servers = JoinSet::new();
        let mut dials = Vec::new();
        for ordinal in 0..voters {
            let id = format!("{:016x}", 0xa0 + ordinal);
            {
                let mut state = lock(&raft);
                state.nodes.push(id.clone());
                state.members.push(Member {
                    id,
                    address: format!("{}:7379", names.pod_host(ordinal)),
                    peer_address: String::new(),
                    role: Role::Voter as i32,
                    is_leader: ordinal == 0,
                    matched_index: 10,
                    lag: 0,
                });
            }
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("loopback has free ports");
            dials.push(listener.local_addr().expect("bound").to_string());
            let node = FakeNode {
                ordinal: ordinal as usize,
                raft: raft.clone(),
            };
            servers.spawn(async move {
                let served = tonic::transport::Server::builder()
                    .add_service(ClusterServer::new(node))
                    .serve_with_incoming(TcpListenerStream::new(listener))
                    .await;
                served.expect("the fake node serves until the test ends");
            });
        }
        FakeCluster {
            raft,
            dials,
            _servers: servers,
        }
    }

    pub(super) fn resolver(&self) -> LoopbackResolver {
        LoopbackResolver {
            dials: self.dials.clone(),
        }
    }

    pub(super) fn calls(&self) -> Vec<String> {
        lock(&self.raft).calls.clone()
    }
}

fn lock(raft: &Mutex<Raft>) -> MutexGuard<'_, Raft> {
    raft.lock().expect("no fake node panicked")
}

/// Advertised addresses are the pods' DNS names; the operator dials the loopback ports.
pub(super) struct LoopbackResolver {
    dials: Vec<String>,
}

impl Resolver for LoopbackResolver {
    fn resolve(&self, names: &Names, ordinal: u32) -> PodAddress {
        PodAddress {
            advertised: format!("{}:7379", names.pod_host(ordinal)),
            dial: self
                .dials
                .get(ordinal as usize)
                .cloned()
                .unwrap_or_else(|| "127.0.0.1:1".into()),
        }
    }
}

struct FakeNode {
    ordinal: usize,
    raft: Arc<Mutex<Raft>>,
}

impl FakeNode {
    /// Records a call these scenarios never expect, and refuses it.
    fn unsupported(&self, call: String) -> Status {
        lock(&self.raft).calls.push(call);
        Status::unimplemented("not needed by these scenarios")
    }
}

#[tonic::async_trait]
impl Cluster for FakeNode {
    type SnapshotStream = tokio_stream::Empty<Result<SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(self.unsupported("Snapshot".into()))
    }

    async fn node_info(
        &self,
        _: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        let raft = lock(&self.raft);
        let node_id = raft.nodes[self.ordinal].clone();
        let member = raft.members.iter().find(|m| m.id == node_id);
        let leader = raft.members.iter().find(|m| m.is_leader);
        Ok(Response::new(NodeInfoResponse {
            node_id: node_id.clone(),
            cluster_id: CLUSTER_ID.into(),
            address: member.map(|m| m.address.clone()).unwrap_or_default(),
            peer_address: String::new(),
            is_member: member.is_some(),
            role: if member.is_some() { "voter" } else { "none" }.into(),
            durable: false,
            applied_index: 10,
            leader: leader.map(|m| m.id.clone()).unwrap_or_default(),
        }))
    }

    async fn initialize(
        &self,
        _: Request<InitializeRequest>,
    ) -> Result<Response<InitializeResponse>, Status> {
        lock(&self.raft).calls.push("Initialize".into());
        Ok(Response::new(InitializeResponse {
            cluster_id: CLUSTER_ID.into(),
            initialized: false,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Err(Status::unimplemented(
            "the operator does not ask for status",
        ))
    }

    async fn list_members(
        &self,
        _: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let members = lock(&self.raft).members.clone();
        Ok(Response::new(ListMembersResponse { members }))
    }

    async fn add_learner(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<AddLearnerResponse>, Status> {
        let address = request.into_inner().address;
        Err(self.unsupported(format!("AddLearner {address}")))
    }

    async fn promote_member(
        &self,
        request: Request<PromoteMemberRequest>,
    ) -> Result<Response<PromoteMemberResponse>, Status> {
        let id = request.into_inner().id;
        Err(self.unsupported(format!("Promote {id}")))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let id = request.into_inner().id;
        let mut raft = lock(&self.raft);
        raft.calls.push(format!("Remove {id}"));
        raft.members.retain(|m| m.id != id);
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let to = request.into_inner().to;
        let mut raft = lock(&self.raft);
        raft.calls.push(format!("TransferLeader {to}"));
        for member in &mut raft.members {
            member.is_leader = member.id == to;
        }
        Ok(Response::new(TransferLeaderResponse { leader: to }))
    }
}
