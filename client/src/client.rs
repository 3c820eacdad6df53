//! The client: one cheap-to-clone handle to a cluster.
//!
//! Every method is one logical request with one overall deadline, carried out by the single call
//! loop in [`Client::call`]: try the current node, and on a failure let `retry` decide whether
//! to go again and `routing` where. Writes get their `WriteId` before the loop, so every retry
//! of a write is the same write to the cluster and is applied at most once; clones share one
//! [`WriteSession`], which keeps the cluster remembering every write still in flight.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::credentials::Credentials;
use crate::endpoint::{Dial, wants_tls};
use crate::error::{Error, Result};
use crate::kv::{self, Action, Expect, KeyValue};
use crate::proto;
use crate::proto::cluster_client::ClusterClient;
use crate::proto::kv_client::KvClient;
use crate::retry::{Attempts, CallKind, Failure, Next};
use crate::routing::{Routing, Target};
use crate::session::{WriteSession, WriteTicket};
use crate::tls::TlsOptions;

/// How long calls may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// The overall deadline of one call, retries included.
    pub timeout: Duration,
    /// How long one attempt at one node may take (connecting included) before the next is
    /// tried; capped by what is left of `timeout`.
    pub attempt_timeout: Duration,
    /// Who to call as, on a cluster with users; `None` sends no credentials.
    pub credentials: Option<Credentials>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            credentials: None,
        }
    }
}

impl ClientOptions {
    /// Checks that calls can be made at all under these options.
    pub fn validate(&self) -> Result<()> {
        if self.timeout.is_zero() {
            return Err(Error::InvalidOptions("the timeout must be more than zero"));
        }
        if self.attempt_timeout.is_zero() {
            return Err(Error::InvalidOptions(
                "the attempt timeout must be more than zero",
            ));
        }
        Ok(())
    }
}

/// The status of one configured endpoint, as [`Client::endpoint_status`] found it.
#[derive(Debug)]
pub struct EndpointStatus {
    /// The endpoint, as `host:port`.
    pub endpoint: String,
    /// What the node said about itself, or why it could not be asked.
    pub info: Result<proto::NodeInfoResponse>,
}

/// A handle to a kvs cluster. Clones share connections and the write session (sequence and
/// watermark): build one and use it from as many tasks as you like.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    routing: Routing,
    options: ClientOptions,
    session: Arc<WriteSession>,
}

/// Where a call may go.
enum Route {
    /// The current node, then wherever routing leads until the deadline.
    Failover,
    /// This node only, one attempt.
    Pinned(Target),
}

impl Client {
    /// A client for the cluster reachable at `endpoints` (`host:port`, optionally prefixed by
    /// `http://`). Connections are made on first use, so this succeeds while nodes are down; it
    /// must be called within a Tokio runtime.
    pub fn connect(endpoints: Vec<String>, options: ClientOptions) -> Result<Self> {
        Self::connect_with_tls(endpoints, options, None)
    }

    /// As [`Client::connect`], speaking TLS to every node with `tls` when it is given (and with
    /// the system's roots when only some endpoint says `https://`).
    pub fn connect_with_tls(
        endpoints: Vec<String>,
        options: ClientOptions,
        tls: Option<TlsOptions>,
    ) -> Result<Self> {
        options.validate()?;
        let tls = tls.or_else(|| {
            endpoints
                .iter()
                .any(|e| wants_tls(e))
                .then(TlsOptions::default)
        });
        let dial = Dial::new(options.attempt_timeout, tls.map(|tls| tls.config()))?;
        let routing = Routing::new(&endpoints, dial)?;
        Ok(Client {
            inner: Arc::new(Inner {
                routing,
                options,
                session: WriteSession::new(),
            }),
        })
    }

    /// Reads `key`. A `serializable` read is served by whichever node answers, from its local
    /// state, and may be stale; otherwise the read is linearizable.
    pub async fn get(&self, key: impl Into<Bytes>, serializable: bool) -> Result<Option<KeyValue>> {
        let key = key.into();
        let request = proto::GetRequest {
            key: key.clone(),
            serializable,
        };
        let response = self
            .call(Route::Failover, CallKind::Read, request, async |ch, r| {
                kv_client(ch).get(r).await
            })
            .await?;
        Ok(KeyValue::from_response(key, response))
    }

    /// Sets `key` to `value`, expiring after `ttl` if given.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let ticket = self.begin_write().await?;
        let request = proto::PutRequest {
            key: key.into(),
            value: value.into(),
            write_id: Some(ticket.write_id()),
            ttl_ms: ttl.map(kv::ttl_ms),
            return_previous: false,
        };
        self.write(&ticket, request, async |ch, r| kv_client(ch).put(r).await)
            .await?;
        Ok(())
    }

    /// Deletes `key`; true when it existed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool> {
        let ticket = self.begin_write().await?;
        let request = proto::DeleteRequest {
            key: key.into(),
            write_id: Some(ticket.write_id()),
            return_previous: false,
        };
        let response = self
            .write(&ticket, request, async |ch, r| {
                kv_client(ch).delete(r).await
            })
            .await?;
        Ok(response.deleted)
    }

    /// Applies `action` to `key` if it holds what `expect` says; [`Error::CompareFailed`] when it
    /// does not.
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Bytes>,
        expect: Expect,
        action: Action,
    ) -> Result<()> {
        let ticket = self.begin_write().await?;
        let request = proto::CompareAndSwapRequest {
            key: key.into(),
            expect: Some(expect.into()),
            action: Some(action.into()),
            write_id: Some(ticket.write_id()),
        };
        match self
            .write(&ticket, request, async |ch, r| {
                kv_client(ch).compare_and_swap(r).await
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Refused {
                code: Code::FailedPrecondition,
                ..
            }) => Err(Error::CompareFailed),
            Err(err) => Err(err),
        }
    }

    /// Runs an atomic conditional batch. The client sets `write_id`; a batch the cluster refused
    /// as a whole is [`Error::BatchRefused`].
    pub async fn batch(&self, mut batch: proto::BatchRequest) -> Result<proto::BatchResponse> {
        let ticket = self.begin_write().await?;
        batch.write_id = Some(ticket.write_id());
        let response = self
            .write(&ticket, batch, async |ch, r| kv_client(ch).batch(r).await)
            .await?;
        if response.error.is_empty() {
            Ok(response)
        } else {
            Err(Error::BatchRefused(response.error))
        }
    }

    /// The cluster's status, as the answering node sees it.
    pub async fn status(&self) -> Result<proto::StatusResponse> {
        self.status_of(false).await
    }

    /// The status of a node that has applied everything committed when it was asked, so its
    /// `keys` is the cluster's count (a lagging replica's plain status may say 0 of a cluster
    /// that holds data).
    pub async fn linearizable_status(&self) -> Result<proto::StatusResponse> {
        self.status_of(true).await
    }

    async fn status_of(&self, linearizable: bool) -> Result<proto::StatusResponse> {
        self.call(
            Route::Failover,
            CallKind::Read,
            proto::StatusRequest { linearizable },
            async |ch, r| ClusterClient::new(ch).status(r).await,
        )
        .await
    }

    /// Starts streaming a consistent point-in-time backup from the leader (see
    /// [`crate::backup`]): it holds every write acknowledged before this call. The deadline
    /// bounds getting the stream, not reading it.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut stream = self
            .call(
                Route::Failover,
                CallKind::Read,
                proto::SnapshotRequest {},
                async |ch, mut r| {
                    r.metadata_mut().remove("grpc-timeout");
                    ClusterClient::new(ch).snapshot(r).await
                },
            )
            .await?;
        let first = stream.message().await.map_err(broken_stream)?;
        Ok(Snapshot {
            expected_bytes: first.as_ref().map_or(0, |chunk| chunk.expected_bytes),
            first: first.map(|chunk| chunk.data),
            stream,
        })
    }

    /// The cluster's members, with the leader's view of their replication.
    pub async fn member_list(&self) -> Result<Vec<proto::Member>> {
        let response = self
            .call(
                Route::Failover,
                CallKind::Read,
                proto::ListMembersRequest {},
                async |ch, r| ClusterClient::new(ch).list_members(r).await,
            )
            .await?;
        Ok(response.members)
    }

    /// Adds the node serving clients at `address` (`host:port`) as a learner.
    pub async fn add_learner(&self, address: &str) -> Result<proto::Member> {
        let request = proto::AddLearnerRequest {
            address: address.to_owned(),
        };
        let response = self
            .call(Route::Failover, CallKind::Admin, request, async |ch, r| {
                ClusterClient::new(ch).add_learner(r).await
            })
            .await?;
        response.member.ok_or(Error::MalformedResponse(
            "AddLearner answered without the member",
        ))
    }

    /// Makes the learner `id` a voter.
    pub async fn promote(&self, id: &str) -> Result<()> {
        let request = proto::PromoteMemberRequest { id: id.to_owned() };
        self.call(Route::Failover, CallKind::Admin, request, async |ch, r| {
            ClusterClient::new(ch).promote_member(r).await
        })
        .await?;
        Ok(())
    }

    /// Removes the member `id` (moving leadership away first if it leads). Removing a voter is
    /// refused, surely not applied, unless the voters that remain include a healthy majority
    /// (answering the leader and [caught up](crate::membership::caught_up)).
    pub async fn remove(&self, id: &str) -> Result<()> {
        self.remove_member(id, false).await
    }

    /// Removes a member even when the voters that remain do not include a healthy majority
    /// (which [`Client::remove`] refuses): the cluster may then be unable to commit until enough
    /// of them come back.
    pub async fn force_remove(&self, id: &str) -> Result<()> {
        self.remove_member(id, true).await
    }

    async fn remove_member(&self, id: &str, force: bool) -> Result<()> {
        let request = proto::RemoveMemberRequest {
            id: id.to_owned(),
            force,
        };
        self.call(Route::Failover, CallKind::Admin, request, async |ch, r| {
            ClusterClient::new(ch).remove_member(r).await
        })
        .await?;
        Ok(())
    }

    /// Moves leadership to the voter `to`, or to the most up-to-date other voter; returns the
    /// new leader's ID.
    pub async fn transfer_leader(&self, to: Option<&str>) -> Result<String> {
        let request = proto::TransferLeaderRequest {
            to: to.unwrap_or_default().to_owned(),
        };
        let response = self
            .call(Route::Failover, CallKind::Admin, request, async |ch, r| {
                ClusterClient::new(ch).transfer_leader(r).await
            })
            .await?;
        Ok(response.leader)
    }

    /// Who the node at `endpoint` is; asks that node only, once.
    pub async fn node_info(&self, endpoint: &str) -> Result<proto::NodeInfoResponse> {
        self.node_info_at(self.inner.routing.pinned(endpoint)?)
            .await
    }

    /// Forms a one-member cluster at the node at `endpoint` if it has no state (asks that node
    /// only, once); otherwise returns its existing cluster ID.
    pub async fn initialize(&self, endpoint: &str) -> Result<proto::InitializeResponse> {
        let target = self.inner.routing.pinned(endpoint)?;
        self.call(
            Route::Pinned(target),
            CallKind::Admin,
            proto::InitializeRequest {},
            async |ch, r| ClusterClient::new(ch).initialize(r).await,
        )
        .await
    }

    /// What every configured endpoint says about itself, asked concurrently, in the order the
    /// endpoints were given.
    pub async fn endpoint_status(&self) -> Vec<EndpointStatus> {
        let asks = self
            .inner
            .routing
            .configured()
            .into_iter()
            .map(|target| async move {
                EndpointStatus {
                    endpoint: target.address().to_owned(),
                    info: self.node_info_at(target).await,
                }
            });
        futures::future::join_all(asks).await
    }

    async fn node_info_at(&self, target: Target) -> Result<proto::NodeInfoResponse> {
        self.call(
            Route::Pinned(target),
            CallKind::Read,
            proto::NodeInfoRequest {},
            async |ch, r| ClusterClient::new(ch).node_info(r).await,
        )
        .await
    }

    /// The identity of a new logical write, held until the returned ticket drops; retries of
    /// that write reuse it. Waits, within the call's timeout, while the client has as many
    /// writes in flight as the cluster remembers for one client; past the timeout nothing was
    /// sent.
    async fn begin_write(&self) -> Result<WriteTicket> {
        tokio::time::timeout(self.inner.options.timeout, self.inner.session.begin())
            .await
            .map_err(|_| Error::Unavailable {
                message: format!(
                    "more than {} writes of this client were in flight for the whole timeout",
                    crate::MAX_IN_FLIGHT
                ),
                leader: None,
            })
    }

    /// Makes the attempts of the write holding `ticket`, and tells its session what the
    /// cluster said of it (`session`): an answer from the state machine makes the client id
    /// known, a "session expired" one moves the session to a fresh id.
    async fn write<Req: Clone, Resp>(
        &self,
        ticket: &WriteTicket,
        request: Req,
        rpc: impl AsyncFn(Channel, tonic::Request<Req>) -> Result<Response<Resp>, Status>,
    ) -> Result<Resp> {
        let result = self
            .call(Route::Failover, CallKind::Write, request, rpc)
            .await;
        match &result {
            Ok(_)
            | Err(Error::Refused {
                code: Code::FailedPrecondition,
                ..
            }) => ticket.answered(),
            Err(Error::OutcomeUnknown { message, .. })
                if message.contains(crate::SESSION_EXPIRED) =>
            {
                ticket.session_expired();
            }
            Err(_) => {}
        }
        result
    }

    /// Makes attempts until one succeeds, the retry rules say stop, or the deadline passes.
    async fn call<Req: Clone, Resp>(
        &self,
        route: Route,
        kind: CallKind,
        request: Req,
        rpc: impl AsyncFn(Channel, tonic::Request<Req>) -> Result<Response<Resp>, Status>,
    ) -> Result<Resp> {
        let options = &self.inner.options;
        let deadline = Instant::now() + options.timeout;
        let mut attempts = Attempts::new(kind);
        let mut target = match &route {
            Route::Failover => self.inner.routing.current(),
            Route::Pinned(target) => target.clone(),
        };
        loop {
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(options.attempt_timeout);
            let mut attempt = tonic::Request::new(request.clone());
            // Tell the node too, so it stops working on an answer nobody will wait for.
            attempt.set_timeout(budget);
            if let Some(credentials) = &options.credentials {
                credentials.authorize(attempt.metadata_mut());
            }
            let failure = match tokio::time::timeout(budget, rpc(target.channel(), attempt)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => Failure::from_status(target.address(), &status),
                Err(_elapsed) => Failure::timed_out(target.address(), budget),
            };
            let (leader, pause) = match attempts.record(failure) {
                Next::Stop(err) => return Err(err),
                Next::Retry { leader, pause } => (leader, pause),
            };
            // Spread retries of many clients so a recovering cluster is not hit all at once.
            let pause = pause.mul_f64(rand::random_range(0.5..=1.0));
            if matches!(route, Route::Pinned(_)) || Instant::now() + pause >= deadline {
                return Err(attempts.give_up());
            }
            tracing::debug!(
                address = target.address(),
                ?leader,
                ?pause,
                "retrying after a failed attempt"
            );
            tokio::time::sleep(pause).await;
            target = self.inner.routing.after_failure(&target, leader.as_deref());
        }
    }
}

/// A backup streaming from the leader, as [`Client::snapshot`] started it.
pub struct Snapshot {
    expected_bytes: u64,
    first: Option<Bytes>,
    stream: tonic::Streaming<proto::SnapshotChunk>,
}

impl Snapshot {
    /// About how many bytes the backup will have.
    pub fn expected_bytes(&self) -> u64 {
        self.expected_bytes
    }

    /// The next piece of the backup file, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        Ok(self
            .stream
            .message()
            .await
            .map_err(broken_stream)?
            .map(|chunk| chunk.data))
    }
}

/// The key-value API over `channel`, taking replies of any size: a write's reply arrives after
/// the write applied, so a reply refused for its size would turn an applied write into an error.
/// The node bounds its replies (`--max-reply-bytes`).
fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(usize::MAX)
}

/// A backup stream that broke: nothing was changed, the backup is just incomplete.
fn broken_stream(status: Status) -> Error {
    Error::Unavailable {
        message: format!("the backup stream broke: {}", status.message()),
        leader: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[tokio::test]
    async fn futures_can_be_spawned() {
        let client = Client::connect(vec!["127.0.0.1:1".into()], ClientOptions::default()).unwrap();
        assert_send(&client.get("k", false));
        assert_send(&client.put("k", "v", None));
        assert_send(&client.endpoint_status());
    }

    #[tokio::test]
    async fn clones_share_the_sequence_and_the_watermark() {
        let client = Client::connect(vec!["127.0.0.1:1".into()], ClientOptions::default()).unwrap();
        let first = client.begin_write().await.unwrap();
        let second = client.clone().begin_write().await.unwrap();
        assert_eq!(first.write_id().client_id, second.write_id().client_id);
        assert_eq!(second.write_id().sequence, first.write_id().sequence + 1);
        assert_eq!(second.write_id().acked_below, first.write_id().sequence);
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let options = ClientOptions {
            attempt_timeout: Duration::ZERO,
            ..ClientOptions::default()
        };
        assert!(matches!(options.validate(), Err(Error::InvalidOptions(_))));
    }
}
