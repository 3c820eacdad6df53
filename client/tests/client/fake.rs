//! An in-process stand-in for a kvs node: both gRPC services over a real socket on
//! `127.0.0.1:0`, backed by a plain map, with failures scripted per test and every request
//! recorded so a test can assert what the client actually sent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use kvs_client::proto::cluster_server::{Cluster, ClusterServer};
use kvs_client::proto::kv_server::{Kv, KvServer};
use kvs_client::proto::{self, Role, WriteId};
use kvs_client::{Client, ClientOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

/// The fake cluster clock: expiry times are this plus the TTL.
pub(crate) const CLUSTER_NOW_MS: u64 = 1_000_000;

/// What the fake does with a request instead of simply serving it.
#[derive(Clone, Debug)]
pub(crate) enum Scripted {
    /// Answer with this status and change nothing.
    Fail {
        code: Code,
        message: String,
        leader: Option<String>,
    },
    /// Serve the request, then answer with this code as if the reply was lost.
    ApplyThenFail(Code),
    /// Wait this long, then fail with UNAVAILABLE (by then the client has given up on it).
    Stall(Duration),
}

impl Scripted {
    pub(crate) fn fail(code: Code, message: &str) -> Self {
        Scripted::Fail {
            code,
            message: message.to_owned(),
            leader: None,
        }
    }

    /// UNAVAILABLE naming `leader` in the `kvs-leader` metadata.
    pub(crate) fn not_leader(leader: &str) -> Self {
        Scripted::Fail {
            code: Code::Unavailable,
            message: "not the leader".to_owned(),
            leader: Some(leader.to_owned()),
        }
    }
}

/// One request the fake received.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Seen {
    pub(crate) method: &'static str,
    pub(crate) write_id: Option<WriteId>,
}

#[derive(Debug, Default)]
struct State {
    address: String,
    node_id: String,
    store: BTreeMap<Bytes, (Bytes, u64)>,
    script: VecDeque<Scripted>,
    always: Option<Scripted>,
    seen: Vec<Seen>,
    members: Vec<proto::Member>,
}

/// A running fake node; stops when dropped.
pub(crate) struct FakeNode {
    address: String,
    state: Arc<Mutex<State>>,
    server: JoinHandle<()>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Service(Arc<Mutex<State>>);

impl FakeNode {
    /// Starts a fake node that is the leader of a one-member cluster.
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address").to_string();
        let node_id = format!("{:016x}", listener.local_addr().unwrap().port());
        let state = Arc::new(Mutex::new(State {
            address: address.clone(),
            node_id: node_id.clone(),
            members: vec![proto::Member {
                id: node_id,
                address: address.clone(),
                peer_address: "127.0.0.1:1".to_owned(),
                role: Role::Voter.into(),
                is_leader: true,
                matched_index: 10,
                lag: 0,
            }],
            ..State::default()
        }));
        let service = Service(state.clone());
        let server = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(KvServer::new(service.clone()))
                .add_service(ClusterServer::new(service))
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
            result.expect("fake server failed");
        });
        FakeNode {
            address,
            state,
            server,
        }
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn node_id(&self) -> String {
        self.lock().node_id.clone()
    }

    /// Scripts the next requests, in order.
    pub(crate) fn script(&self, steps: impl IntoIterator<Item = Scripted>) {
        self.lock().script.extend(steps);
    }

    /// Does this to every request once the script has run out.
    pub(crate) fn always(&self, step: Scripted) {
        self.lock().always = Some(step);
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// The write IDs of the requests to `method`, in order.
    pub(crate) fn write_ids(&self, method: &str) -> Vec<WriteId> {
        self.seen()
            .into_iter()
            .filter(|seen| seen.method == method)
            .filter_map(|seen| seen.write_id)
            .collect()
    }

    pub(crate) fn value(&self, key: &str) -> Option<Bytes> {
        self.lock()
            .store
            .get(key.as_bytes())
            .map(|(value, _)| value.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake state")
    }
}

/// An address nothing listens on: connecting to it is refused.
pub(crate) fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local address").to_string()
}

/// A server that accepts connections, takes what the client sends, and closes the connection
/// without answering: a node that died after the request was sent.
pub(crate) async fn start_connection_dropper() -> (String, JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address").to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = [0u8; 4096];
            // Read until the client has been quiet for a moment: its request is in by then.
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(100), socket.read(&mut buffer)).await
            {
                if n == 0 {
                    break;
                }
            }
        }
    });
    (address, task)
}

/// A client of `endpoints` with short deadlines, so failing tests fail fast.
pub(crate) fn client(endpoints: &[&str], timeout: Duration) -> Client {
    client_with(endpoints, timeout, Duration::from_secs(1))
}

pub(crate) fn client_with(
    endpoints: &[&str],
    timeout: Duration,
    attempt_timeout: Duration,
) -> Client {
    Client::connect(
        endpoints.iter().map(|&e| e.to_owned()).collect(),
        ClientOptions {
            timeout,
            attempt_timeout,
            ..ClientOptions::default()
        },
    )
    .expect("valid endpoints")
}

impl Service {
    /// Records the request and says what the script wants done with it.
    fn begin(&self, method: &'static str, write_id: Option<WriteId>) -> Option<Scripted> {
        let mut state = self.0.lock().expect("fake state");
        state.seen.push(Seen { method, write_id });
        state.script.pop_front().or_else(|| state.always.clone())
    }

    /// Runs `serve` unless the script says otherwise.
    async fn handle<T>(
        &self,
        method: &'static str,
        write_id: Option<WriteId>,
        serve: impl FnOnce(&mut State) -> Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        match self.begin(method, write_id) {
            None => serve(&mut self.0.lock().expect("fake state")).map(Response::new),
            Some(Scripted::Fail {
                code,
                message,
                leader,
            }) => {
                let mut status = Status::new(code, message);
                if let Some(leader) = leader {
                    status
                        .metadata_mut()
                        .insert(proto::LEADER_HEADER, leader.parse().expect("ascii address"));
                }
                Err(status)
            }
            Some(Scripted::ApplyThenFail(code)) => {
                let _ = serve(&mut self.0.lock().expect("fake state"));
                Err(Status::new(code, "the reply was lost"))
            }
            Some(Scripted::Stall(duration)) => {
                tokio::time::sleep(duration).await;
                Err(Status::unavailable("stalled"))
            }
        }
    }
}

#[tonic::async_trait]
impl Kv for Service {
    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let request = request.into_inner();
        self.handle("get", None, |state| {
            Ok(match state.store.get(&request.key) {
                Some((value, expires_at_ms)) => proto::GetResponse {
                    found: true,
                    value: value.clone(),
                    expires_at_ms: *expires_at_ms,
                    index: 1,
                },
                None => proto::GetResponse::default(),
            })
        })
        .await
    }

    async fn put(
        &self,
        request: Request<proto::PutRequest>,
    ) -> Result<Response<proto::PutResponse>, Status> {
        let request = request.into_inner();
        self.handle("put", request.write_id, |state| {
            let expires = request.ttl_ms.map_or(0, |ttl| CLUSTER_NOW_MS + ttl);
            state.store.insert(request.key, (request.value, expires));
            Ok(proto::PutResponse::default())
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let request = request.into_inner();
        self.handle("delete", request.write_id, |state| {
            Ok(proto::DeleteResponse {
                deleted: state.store.remove(&request.key).is_some(),
                ..Default::default()
            })
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        request: Request<proto::CompareAndSwapRequest>,
    ) -> Result<Response<proto::CompareAndSwapResponse>, Status> {
        use proto::compare_and_swap_request::{Action, Expect};
        let request = request.into_inner();
        self.handle("compare_and_swap", request.write_id, |state| {
            let current = state.store.get(&request.key).map(|(value, _)| value);
            let holds = match request.expect {
                Some(Expect::ExpectValue(expected)) => current == Some(&expected),
                Some(Expect::ExpectAbsent(_)) => current.is_none(),
                None => return Err(Status::invalid_argument("no expect")),
            };
            if !holds {
                return Err(Status::failed_precondition("compare failed"));
            }
            match request.action {
                Some(Action::NewValue(value)) => {
                    state.store.insert(request.key, (value, 0));
                }
                Some(Action::Delete(_)) => {
                    state.store.remove(&request.key);
                }
                None => return Err(Status::invalid_argument("no action")),
            }
            Ok(proto::CompareAndSwapResponse { index: 1 })
        })
        .await
    }

    /// Serves puts, deletes and increments without compares: enough to see a batch refused.
    async fn batch(
        &self,
        request: Request<proto::BatchRequest>,
    ) -> Result<Response<proto::BatchResponse>, Status> {
        use proto::op::Op;
        let request = request.into_inner();
        self.handle("batch", request.write_id, |state| {
            let mut next = state.store.clone();
            let mut results = Vec::new();
            for op in request.ops.into_iter().filter_map(|op| op.op) {
                match op {
                    Op::Put(put) => {
                        next.insert(put.key, (put.value, 0));
                    }
                    Op::Delete(delete) => {
                        next.remove(&delete.key);
                    }
                    Op::Increment(increment) => {
                        let current = match next.get(&increment.key) {
                            None => 0,
                            Some((value, _)) => {
                                match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                                    Some(current) => current,
                                    None => {
                                        return Ok(proto::BatchResponse {
                                            error: "value is not an integer".to_owned(),
                                            ..Default::default()
                                        });
                                    }
                                }
                            }
                        };
                        let integer: i64 = current + increment.delta;
                        next.insert(increment.key, (integer.to_string().into(), 0));
                        results.push(proto::OpResult {
                            integer,
                            ..Default::default()
                        });
                    }
                    _ => return Err(Status::unimplemented("not in the fake")),
                }
            }
            state.store = next;
            Ok(proto::BatchResponse {
                index: 1,
                succeeded: true,
                results,
                ..Default::default()
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl Cluster for Service {
    type SnapshotStream = futures::stream::Empty<Result<proto::SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        _: Request<proto::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented(
            "backups are tested against real nodes",
        ))
    }

    async fn node_info(
        &self,
        _: Request<proto::NodeInfoRequest>,
    ) -> Result<Response<proto::NodeInfoResponse>, Status> {
        self.handle("node_info", None, |state| {
            Ok(proto::NodeInfoResponse {
                node_id: state.node_id.clone(),
                cluster_id: "c".repeat(32),
                address: state.address.clone(),
                peer_address: "127.0.0.1:1".to_owned(),
                is_member: true,
                role: "voter".to_owned(),
                durable: true,
                applied_index: 10,
                leader: state.node_id.clone(),
            })
        })
        .await
    }

    async fn initialize(
        &self,
        _: Request<proto::InitializeRequest>,
    ) -> Result<Response<proto::InitializeResponse>, Status> {
        self.handle("initialize", None, |_| {
            Ok(proto::InitializeResponse {
                cluster_id: "c".repeat(32),
                initialized: true,
            })
        })
        .await
    }

    async fn status(
        &self,
        _: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        self.handle("status", None, |state| {
            Ok(proto::StatusResponse {
                cluster_id: "c".repeat(32),
                leader: state.node_id.clone(),
                term: 3,
                commit_index: 10,
                applied_index: 10,
                node_id: state.node_id.clone(),
                alarms: Vec::new(),
                keys: 0,
                clock_skew_ms: 0,
                data_dir_bytes: None,
                data_dir_free_bytes: None,
            })
        })
        .await
    }

    /// Each listing shows new learners 40 entries further along, as if they were replicating.
    async fn list_members(
        &self,
        _: Request<proto::ListMembersRequest>,
    ) -> Result<Response<proto::ListMembersResponse>, Status> {
        self.handle("list_members", None, |state| {
            for member in &mut state.members {
                if member.role() == Role::Learner {
                    member.matched_index += 40;
                    member.lag = member.lag.saturating_sub(40);
                }
            }
            Ok(proto::ListMembersResponse {
                members: state.members.clone(),
            })
        })
        .await
    }

    async fn add_learner(
        &self,
        request: Request<proto::AddLearnerRequest>,
    ) -> Result<Response<proto::AddLearnerResponse>, Status> {
        let address = request.into_inner().address;
        self.handle("add_learner", None, |state| {
            let member = proto::Member {
                id: format!("{:016x}", state.members.len() + 0xa0),
                address,
                peer_address: "127.0.0.1:2".to_owned(),
                role: Role::Learner.into(),
                is_leader: false,
                matched_index: 0,
                // Behind far enough that kvsctl must watch it catch up over several listings.
                lag: kvs_client::membership::MAX_CAUGHT_UP_LAG + 100,
            };
            state.members.push(member.clone());
            Ok(proto::AddLearnerResponse {
                member: Some(member),
            })
        })
        .await
    }

    async fn promote_member(
        &self,
        request: Request<proto::PromoteMemberRequest>,
    ) -> Result<Response<proto::PromoteMemberResponse>, Status> {
        let id = request.into_inner().id;
        self.handle("promote_member", None, |state| {
            let member = state
                .members
                .iter_mut()
                .find(|member| member.id == id)
                .ok_or_else(|| Status::not_found(format!("no member {id}")))?;
            member.role = Role::Voter.into();
            Ok(proto::PromoteMemberResponse {})
        })
        .await
    }

    async fn remove_member(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::RemoveMemberResponse>, Status> {
        let id = request.into_inner().id;
        self.handle("remove_member", None, |state| {
            let before = state.members.len();
            state.members.retain(|member| member.id != id);
            if state.members.len() == before {
                return Err(Status::not_found(format!("no member {id}")));
            }
            Ok(proto::RemoveMemberResponse {})
        })
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<proto::TransferLeaderRequest>,
    ) -> Result<Response<proto::TransferLeaderResponse>, Status> {
        let to = request.into_inner().to;
        self.handle("transfer_leader", None, |state| {
            Ok(proto::TransferLeaderResponse {
                leader: if to.is_empty() {
                    state.node_id.clone()
                } else {
                    to
                },
            })
        })
        .await
    }
}
