//! The peer network client: how this node sends Raft messages to the others.
//!
//! Every message travels in an identity envelope (sender's cluster ID, sender and target node
//! IDs) that the receiver checks before it lets openraft see the message. Payloads are openraft's
//! own types encoded with postcard, so this layer never re-models the protocol. Append batches are
//! cut by bytes (openraft only caps them by count), so large values replicate without hitting
//! message limits; the receiver's limit is set to fit the largest batch the node accepts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use openraft::EntryPayload;
use openraft::RaftNetworkFactory;
use openraft::alias::SnapshotOf;
use openraft::alias::VoteOf;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::RPCOption;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::identity::Identity;
use crate::peer_proto::Envelope;
use crate::peer_proto::PeerMessage;
use crate::peer_proto::SnapshotItem;
use crate::peer_proto::peer_client::PeerClient;
use crate::peer_proto::snapshot_item::Item;
use crate::raft::MemberAddr;
use crate::raft::TypeConfig;
use crate::raft::fault::Faults;
use crate::store::snapshot::SnapshotData;

/// Version of the peer payload encoding (postcard of openraft 0.10 messages).
pub const PEER_FORMAT: u32 = 1;

/// Snapshot data is streamed in chunks of this size.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

pub(crate) fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(postcard::to_allocvec(value).expect("openraft messages always serialize"))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Builds an endpoint for a `host:port` address with the node's timeouts and message limits.
pub(crate) fn endpoint(
    addr: &str,
    connect_timeout: Duration,
) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// Creates a connection per target for openraft's replication tasks.
#[derive(Clone)]
pub(crate) struct PeerNetwork {
    identity: Identity,
    max_message_bytes: usize,
    connect_timeout: Duration,
    faults: Arc<Faults>,
}

impl PeerNetwork {
    pub(crate) fn new(
        identity: Identity,
        max_message_bytes: usize,
        connect_timeout: Duration,
        faults: Arc<Faults>,
    ) -> Self {
        Self {
            identity,
            max_message_bytes,
            connect_timeout,
            faults,
        }
    }

    /// The injected faults (inert outside tests).
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A client for `addr` with this node's limits; connects lazily.
    pub(crate) fn client(&self, addr: &str) -> Option<PeerClient<Channel>> {
        let channel = endpoint(addr, self.connect_timeout).ok()?.connect_lazy();
        Some(
            PeerClient::new(channel)
                .max_decoding_message_size(self.max_message_bytes)
                .max_encoding_message_size(self.max_message_bytes),
        )
    }

    /// Wraps a payload in this node's identity envelope, addressed to `to`.
    pub(crate) fn message(&self, to: u64, payload: Bytes) -> PeerMessage {
        PeerMessage {
            envelope: Some(Envelope {
                cluster_id: self.identity.cluster_id().unwrap_or_default(),
                from: self.identity.node_id(),
                to,
                format: PEER_FORMAT,
            }),
            payload,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &MemberAddr) -> PeerConnection {
        PeerConnection {
            network: self.clone(),
            target,
            client: self.client(&node.peer_addr),
            addr: node.peer_addr.clone(),
        }
    }
}

/// One target's connection, owned by one openraft replication task.
pub(crate) struct PeerConnection {
    network: PeerNetwork,
    target: u64,
    addr: String,
    client: Option<PeerClient<Channel>>,
}

type Rpc<T> = Result<T, RPCError<TypeConfig>>;

fn unreachable(msg: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

/// Maps a failed call: peers that are down, refuse the identity or time out are "unreachable"
/// (openraft backs off); anything else is a network error it may retry at once.
fn status_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::FailedPrecondition
        | tonic::Code::DeadlineExceeded => unreachable(status.message()),
        _ => RPCError::Network(NetworkError::from_string(status.message())),
    }
}

impl PeerConnection {
    fn client(&self) -> Rpc<PeerClient<Channel>> {
        if self.network.faults.blocks(self.target) {
            return Err(unreachable(format!(
                "link to {} cut by fault injection",
                self.addr
            )));
        }
        self.client
            .clone()
            .ok_or_else(|| unreachable(format!("bad peer address {:?}", self.addr)))
    }

    fn request<T: Serialize>(&self, body: &T, ttl: Duration) -> tonic::Request<PeerMessage> {
        let mut req = tonic::Request::new(self.network.message(self.target, encode(body)));
        req.set_timeout(ttl);
        req
    }

    async fn call<Req, Resp, F, Fut>(&self, body: &Req, option: &RPCOption, f: F) -> Rpc<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(PeerClient<Channel>, tonic::Request<PeerMessage>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<PeerMessage>, tonic::Status>>,
    {
        let ttl = option.hard_ttl();
        let call = f(self.client()?, self.request(body, ttl));
        let held = self.network.faults.hold(self.target);
        let reply = tokio::time::timeout(ttl, async move {
            held.await;
            call.await
        })
        .await
        .map_err(|_| unreachable(format!("no reply from {} within {ttl:?}", self.addr)))?
        .map_err(status_error)?;
        decode(&reply.into_inner().payload).map_err(|e| {
            RPCError::Network(NetworkError::from_string(format!(
                "bad reply from {}: {e}",
                self.addr
            )))
        })
    }
}

/// A rough upper bound of an entry's encoded size: replication cuts batches by it, and the
/// durable log bounds its cache of recent entries by it.
pub(crate) fn entry_bytes(
    payload: &EntryPayload<crate::store::command::Command, u64, MemberAddr>,
) -> usize {
    match payload {
        EntryPayload::Blank => 32,
        EntryPayload::Normal(cmd) => cmd.encoded_len_hint(),
        EntryPayload::Membership(m) => {
            64 + m
                .nodes()
                .map(|(_, n)| 32 + n.addr.len() + n.peer_addr.len())
                .sum::<usize>()
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<TypeConfig>> {
        // Cut the batch so the encoded request stays well within the receiver's message limit;
        // the first entry always goes (the receiver's limit fits the largest single entry).
        let budget = self.network.max_message_bytes / 2;
        let mut used = 0;
        let keep = rpc
            .entries
            .iter()
            .position(|e| {
                used += entry_bytes(&e.payload);
                used > budget
            })
            .map_or(rpc.entries.len(), |cut| cut.max(1));
        let truncated = keep < rpc.entries.len();
        if truncated {
            rpc.entries.truncate(keep);
        }
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        let resp: AppendEntriesResponse<TypeConfig> = self
            .call(&rpc, &option, |mut c, r| async move {
                c.append_entries(r).await
            })
            .await?;
        Ok(match resp {
            AppendEntriesResponse::Success if truncated => {
                AppendEntriesResponse::PartialSuccess(last_sent)
            }
            other => other,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<TypeConfig>> {
        self.call(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<TypeConfig>> {
        self.call(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<TransferLeaderResponse<TypeConfig>> {
        self.call(&req, &option, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let client = self
            .client()
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let head = self
            .network
            .message(self.target, encode(&(vote, &snapshot.meta)));
        let held = self.network.faults.hold(self.target);
        let send = send_snapshot(client, head, snapshot.snapshot, self.addr.clone());
        let send = async move {
            held.await;
            send.await
        };
        let ttl = option.hard_ttl().max(Duration::from_secs(60));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = tokio::time::timeout(ttl, send) => res.map_err(|_| {
                StreamingError::Unreachable(Unreachable::from_string(format!("snapshot to {} timed out", self.addr)))
            })?,
        }
    }
}

/// Streams a snapshot: its head, then the data in chunks, never one giant message. A chunk is
/// read only when the stream has room for it, so the sender holds one chunk plus the HTTP/2
/// send window.
async fn send_snapshot(
    mut client: PeerClient<Channel>,
    head: PeerMessage,
    data: SnapshotData,
    addr: String,
) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
    let (items, stream) = tokio::sync::mpsc::channel(1);
    // Reads chunks as the stream takes them. A chunk that cannot be read must not end the stream
    // as if it were complete: the call is dropped instead, which resets the stream.
    let feed = async move {
        let mut chunks = data.into_chunks(SNAPSHOT_CHUNK_BYTES);
        let mut item = Some(Item::Head(head));
        while let Some(next) = item.take() {
            if items.send(SnapshotItem { item: Some(next) }).await.is_err() {
                break; // the call ended early; its answer says why
            }
            item = chunks.next().await.transpose()?.map(Item::Chunk);
        }
        Ok::<_, std::io::Error>(())
    };
    let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(stream));
    tokio::pin!(call);
    let reply = tokio::select! {
        reply = &mut call => reply,
        fed = feed => match fed {
            Ok(()) => call.await,
            Err(e) => {
                return Err(StreamingError::Network(NetworkError::from_string(format!(
                    "cannot read the snapshot to send to {addr}: {e}"
                ))));
            }
        },
    }
    .map_err(|s| match status_error(s) {
        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
        other => StreamingError::Network(NetworkError::from_string(other)),
    })?;
    decode::<SnapshotResponse<TypeConfig>>(&reply.into_inner().payload).map_err(|e| {
        StreamingError::Network(NetworkError::from_string(format!(
            "bad reply from {addr}: {e}"
        )))
    })
}
