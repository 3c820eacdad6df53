//! The peer network client: how this node sends Raft messages to the others.
//!
//! Every message travels in an identity envelope (sender's cluster ID, sender and target node
//! IDs) that the receiver checks before it lets openraft see the message. Payloads are openraft's
//! own types encoded with postcard, so this layer never re-models the protocol. Append batches are
//! cut by bytes (openraft only caps them by count), so large values replicate without hitting
//! message limits; the receiver's limit is set to fit the largest batch the node accepts.
//!
//! Replication runs over one long-lived `StreamAppend` call per follower: openraft's replication
//! task hands over an endless stream of AppendEntries requests and reads the follower's replies
//! as they come, so the next batch leaves as soon as the leader has it instead of after the
//! previous batch's reply, and a batch costs one message instead of one HTTP/2 request and
//! response. Heartbeats, single requests, stay unary calls.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use openraft::RaftNetworkFactory;
use openraft::alias::EntryOf;
use openraft::alias::SnapshotOf;
use openraft::alias::VoteOf;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::RPCOption;
use openraft::network::stream_append_sequential;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Streaming;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use hyper_util::rt::TokioIo;

use crate::fault::Faults;
use crate::identity::Identity;
use crate::raft::clock::ClockOffsets;
use crate::raft::clock::wall_clock_ms;
use crate::raft::peer_proto::Envelope;
use crate::raft::peer_proto::PeerMessage;
use crate::raft::peer_proto::SnapshotItem;
use crate::raft::peer_proto::peer_client::PeerClient;
use crate::raft::peer_proto::snapshot_item::Item;
use crate::store::entry::MemberAddr;
use crate::store::entry::TypeConfig;
use crate::store::entry::entry_bytes;
use crate::store::snapshot::SnapshotData;
use crate::tls::Tls;

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

/// A channel to `addr` (`host:port`) that connects on first use; over TLS when `tls` is given,
/// each connection made with the material current when it is made, so a broken connection
/// re-established after a certificate rotation uses the new certificates.
pub(crate) fn lazy_channel(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<&Arc<Tls>>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = endpoint(addr, connect_timeout)?;
    Ok(match tls {
        None => endpoint.connect_lazy(),
        Some(tls) => {
            endpoint.connect_with_connector_lazy(tls_connector(tls, addr, connect_timeout))
        }
    })
}

/// A channel to `addr` (`host:port`), connected before it is returned; TLS as in
/// [`lazy_channel`].
pub(crate) async fn channel(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<&Arc<Tls>>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = endpoint(addr, connect_timeout)?;
    match tls {
        None => endpoint.connect().await,
        Some(tls) => {
            endpoint
                .connect_with_connector(tls_connector(tls, addr, connect_timeout))
                .await
        }
    }
}

/// Makes tonic's connections to `addr` over TLS with `tls`'s current material.
fn tls_connector(tls: &Arc<Tls>, addr: &str, connect_timeout: Duration) -> TlsConnect {
    TlsConnect {
        tls: tls.clone(),
        addr: addr.to_string(),
        connect_timeout,
    }
}

/// tonic's connector for a TLS channel (`tls_connector`).
#[derive(Clone)]
struct TlsConnect {
    tls: Arc<Tls>,
    addr: String,
    connect_timeout: Duration,
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower::Service<tonic::codegen::http::Uri> for TlsConnect {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = futures::future::BoxFuture<'static, std::io::Result<TlsIo>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let TlsConnect {
            tls,
            addr,
            connect_timeout,
        } = self.clone();
        Box::pin(async move {
            let connector = tls.connector().ok_or_else(|| {
                std::io::Error::other("no CA to verify the server's certificate with")
            })?;
            crate::tls::connect(connector, &addr, connect_timeout)
                .await
                .map(TokioIo::new)
        })
    }
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

/// Creates a connection per target for openraft's replication tasks, and keeps one to the
/// leader for this node's read-index requests.
#[derive(Clone)]
pub(crate) struct PeerNetwork {
    identity: Identity,
    max_message_bytes: usize,
    connect_timeout: Duration,
    faults: Arc<Faults>,
    /// The peer port's TLS, presented and verified on every connection to a peer.
    tls: Option<Arc<Tls>>,
    /// The leader's peer address and the client every read-index round sends on: one
    /// connection for all rounds (a connection per round would use up local ports), replaced
    /// when the leader moves. A broken connection is re-established by the channel itself.
    leader_link: Arc<std::sync::Mutex<Option<LeaderLink>>>,
    /// Measured from the wall clocks on replies (and, by the peer service, on requests).
    clocks: Arc<ClockOffsets>,
}

/// The leader's peer address and the client on the connection kept to it.
type LeaderLink = (String, PeerClient<Channel>);

impl PeerNetwork {
    pub(crate) fn new(
        identity: Identity,
        max_message_bytes: usize,
        connect_timeout: Duration,
        faults: Arc<Faults>,
        tls: Option<Arc<Tls>>,
    ) -> Self {
        Self {
            identity,
            max_message_bytes,
            connect_timeout,
            faults,
            tls,
            leader_link: Arc::default(),
            clocks: Arc::default(),
        }
    }

    /// The injected faults (inert outside tests) this network applies.
    pub(crate) fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// The peer port's TLS, which calls to other members' peer ports present and verify.
    pub(crate) fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    /// How far the members' clocks are from this node's.
    pub(crate) fn clocks(&self) -> &ClockOffsets {
        &self.clocks
    }

    /// The client for the leader at `addr`, on the connection kept for it.
    pub(crate) fn leader_client(&self, addr: &str) -> Option<PeerClient<Channel>> {
        let mut link = crate::lock::lock(&self.leader_link);
        if let Some((linked, client)) = link.as_ref()
            && linked == addr
        {
            return Some(client.clone());
        }
        let client = self.client(addr)?;
        *link = Some((addr.to_string(), client.clone()));
        Some(client)
    }

    /// A client for `addr` with this node's limits; connects lazily.
    pub(crate) fn client(&self, addr: &str) -> Option<PeerClient<Channel>> {
        let channel = lazy_channel(addr, self.connect_timeout, self.tls.as_ref()).ok()?;
        Some(
            PeerClient::new(channel)
                .max_decoding_message_size(self.max_message_bytes)
                .max_encoding_message_size(self.max_message_bytes),
        )
    }

    /// Wraps a payload in this node's identity envelope, addressed to `to`, stamped with this
    /// node's wall clock.
    pub(crate) fn message(&self, to: u64, payload: Bytes) -> PeerMessage {
        PeerMessage {
            envelope: Some(Envelope {
                cluster_id: self.identity.cluster_id().unwrap_or_default(),
                from: self.identity.node_id(),
                to,
                format: PEER_FORMAT,
            }),
            payload,
            sent_at_ms: wall_clock_ms(),
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
            streams: true,
        }
    }
}

/// One target's connection, owned by one openraft replication task.
pub(crate) struct PeerConnection {
    network: PeerNetwork,
    target: u64,
    addr: String,
    client: Option<PeerClient<Channel>>,
    /// Cleared once the target answered UNIMPLEMENTED to `StreamAppend` (an older version):
    /// from then on appends go as unary calls.
    streams: bool,
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
        .map_err(status_error)?
        .into_inner();
        let clocks = &self.network.clocks;
        clocks.reply(self.target, reply.sent_at_ms, wall_clock_ms());
        decode_reply(&reply.payload, &self.addr)
    }
}

/// A peer's reply payload, or a network error naming the peer that sent something unreadable.
fn decode_reply<T: DeserializeOwned>(payload: &[u8], addr: &str) -> Rpc<T> {
    decode(payload).map_err(|e| {
        RPCError::Network(NetworkError::from_string(format!(
            "bad reply from {addr}: {e}"
        )))
    })
}

/// How many of `entries` one request carries so that it stays well within the receiver's
/// message limit: at least one (the receiver's limit fits the largest single entry).
fn entries_that_fit(entries: &[EntryOf<TypeConfig>], budget: usize) -> usize {
    let mut used = 0;
    entries
        .iter()
        .position(|e| {
            used += entry_bytes(&e.payload);
            used > budget
        })
        .map_or(entries.len(), |cut| cut.max(1))
}

/// `rpc` as consecutive requests that each fit `budget`, every one carrying the leader's vote and
/// commit; the follower acknowledges each.
fn split_by_bytes(
    mut rpc: AppendEntriesRequest<TypeConfig>,
    budget: usize,
) -> Vec<AppendEntriesRequest<TypeConfig>> {
    let mut pieces = Vec::with_capacity(1);
    loop {
        let keep = entries_that_fit(&rpc.entries, budget);
        if keep == rpc.entries.len() {
            pieces.push(rpc);
            return pieces;
        }
        let rest = AppendEntriesRequest {
            vote: rpc.vote,
            prev_log_id: Some(rpc.entries[keep - 1].log_id),
            entries: rpc.entries.split_off(keep),
            leader_commit: rpc.leader_commit,
        };
        pieces.push(rpc);
        rpc = rest;
    }
}

/// The replies of one `StreamAppend` call, in the order of its requests.
type AppendReplies<'s> = BoxStream<'s, Rpc<StreamAppendResult<TypeConfig>>>;

/// Reads a `StreamAppend` call's replies for openraft, and ends the call as unreachable when a
/// request has waited more than one to two `ttl`s for its reply (a paused or overloaded
/// follower), or when fault injection cut the link.
struct Replies {
    replies: Streaming<PeerMessage>,
    addr: String,
    /// The follower, whose clock its replies tell.
    target: u64,
    clocks: Arc<ClockOffsets>,
    ttl: Duration,
    /// Requests handed to the call so far, and replies read.
    sent: Arc<AtomicU64>,
    received: u64,
    /// Set by the request side when it stopped because fault injection blocks the target.
    cut: Arc<AtomicBool>,
    /// Fires every `ttl`; `stalled_at` is the reply count at the previous firing if a request was
    /// outstanding then.
    watchdog: std::pin::Pin<Box<tokio::time::Sleep>>,
    stalled_at: Option<u64>,
    ended: bool,
}

impl Replies {
    async fn next(mut self) -> Option<(Rpc<StreamAppendResult<TypeConfig>>, Self)> {
        if self.ended {
            return None;
        }
        let item = loop {
            tokio::select! {
                reply = self.replies.next() => break match reply {
                    Some(Ok(msg)) => {
                        self.received += 1;
                        self.clocks.reply(self.target, msg.sent_at_ms, wall_clock_ms());
                        match decode_reply(&msg.payload, &self.addr) {
                            Ok(result) => return Some((Ok(result), self)),
                            Err(e) => Err(e),
                        }
                    }
                    Some(Err(status)) => Err(status_error(status)),
                    None if self.cut.load(Ordering::Relaxed) => {
                        Err(unreachable(format!("link to {} cut by fault injection", self.addr)))
                    }
                    None => return None,
                },
                () = &mut self.watchdog => {
                    let outstanding = self.sent.load(Ordering::Relaxed) > self.received;
                    if outstanding && self.stalled_at == Some(self.received) {
                        break Err(unreachable(format!(
                            "no reply from {} within {:?}",
                            self.addr, self.ttl
                        )));
                    }
                    self.stalled_at = outstanding.then_some(self.received);
                    let next = tokio::time::Instant::now() + self.ttl;
                    self.watchdog.as_mut().reset(next);
                }
            }
        };
        self.ended = true;
        Some((item, self))
    }
}

impl PeerConnection {
    /// Opens a `StreamAppend` call fed by `input`, each request split to fit the receiver's
    /// message limit, held and cut as fault injection says.
    async fn open_stream<S>(&mut self, input: S, option: RPCOption) -> Rpc<AppendReplies<'static>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let mut client = self.client()?;
        let ttl = option.hard_ttl();
        let target = self.target;
        let budget = self.network.max_message_bytes / 2;
        let envelope = self.network.message(target, Bytes::new()).envelope;
        let faults = self.network.faults.clone();
        let sent = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let requests = {
            let (sent, cut) = (sent.clone(), cut.clone());
            input
                .flat_map(move |rpc| futures::stream::iter(split_by_bytes(rpc, budget)))
                .then(move |piece| {
                    let faults = faults.clone();
                    async move {
                        faults.hold(target).await;
                        (!faults.blocks(target)).then_some(piece)
                    }
                })
                .take_while(move |piece| {
                    if piece.is_none() {
                        cut.store(true, Ordering::Relaxed);
                    }
                    std::future::ready(piece.is_some())
                })
                .filter_map(std::future::ready)
                .map(move |piece| {
                    sent.fetch_add(1, Ordering::Relaxed);
                    PeerMessage {
                        envelope: envelope.clone(),
                        payload: encode(&piece),
                        sent_at_ms: wall_clock_ms(),
                    }
                })
        };
        let opened = tokio::time::timeout(ttl, client.stream_append(requests))
            .await
            .map_err(|_| unreachable(format!("no reply from {} within {ttl:?}", self.addr)))?;
        let replies = match opened {
            Ok(replies) => replies.into_inner(),
            Err(status) => {
                if status.code() == tonic::Code::Unimplemented {
                    tracing::info!(peer = %self.addr, "peer has no StreamAppend; replicating with AppendEntries calls");
                    self.streams = false;
                }
                return Err(status_error(status));
            }
        };
        let replies = Replies {
            replies,
            addr: self.addr.clone(),
            target,
            clocks: self.network.clocks.clone(),
            ttl,
            sent,
            received: 0,
            cut,
            watchdog: Box::pin(tokio::time::sleep(ttl)),
            stalled_at: None,
            ended: false,
        };
        Ok(futures::stream::unfold(replies, Replies::next).boxed())
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Rpc<AppendReplies<'s>>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + openraft::OptionalSend
            + Unpin
            + 'static,
    {
        // openraft's heartbeats come as one-request streams: a unary call is cheaper than a
        // stream for them.
        if input.size_hint().1 == Some(1) || !self.streams {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            let replies: AppendReplies<'s> = self.open_stream(input, option).await?;
            Ok(replies)
        })
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<TypeConfig>> {
        let keep = entries_that_fit(&rpc.entries, self.network.max_message_bytes / 2);
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

#[cfg(test)]
mod tests {
    use openraft::alias::LogIdOf;
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;
    use openraft::vote::leader_id_adv::LeaderId;

    use super::*;

    fn log_id(index: u64) -> LogIdOf<TypeConfig> {
        LogIdOf::<TypeConfig>::new(LeaderId::<u64, u64>::new(2, 1).to_committed(), index)
    }

    fn request(first: u64, count: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: VoteOf::<TypeConfig>::new_committed(2, 1),
            prev_log_id: Some(log_id(first - 1)),
            entries: (first..first + count)
                .map(|i| EntryOf::<TypeConfig>::new_blank(log_id(i)))
                .collect(),
            leader_commit: Some(log_id(first + count - 1)),
        }
    }

    /// What `split_by_bytes` made of a request: (prev index, entry indexes) per piece.
    fn shape(pieces: &[AppendEntriesRequest<TypeConfig>]) -> Vec<(u64, Vec<u64>)> {
        pieces
            .iter()
            .map(|p| {
                let prev = p.prev_log_id.map(|id| id.index()).unwrap_or_default();
                (prev, p.entries.iter().map(|e| e.log_id.index()).collect())
            })
            .collect()
    }

    /// Read-index rounds to the same leader share one connection: a connection per round
    /// would leave a socket in TIME_WAIT per read and exhaust local ports.
    #[tokio::test]
    async fn rounds_to_the_leader_share_one_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicU64::new(0));
        let incoming = {
            let accepted = accepted.clone();
            futures::stream::unfold(listener, move |listener| {
                let accepted = accepted.clone();
                async move {
                    let conn = listener.accept().await.map(|(conn, _)| conn);
                    accepted.fetch_add(1, Ordering::Relaxed);
                    Some((conn, listener))
                }
            })
        };
        // Any gRPC server will do: the calls are answered UNIMPLEMENTED over a real connection.
        let (_, health) = tonic_health::server::health_reporter();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming),
        );
        let network = PeerNetwork::new(
            Identity::new(1),
            1024 * 1024,
            Duration::from_secs(5),
            Arc::new(Faults::inert()),
            None,
        );
        for _ in 0..20 {
            let mut client = network.leader_client(&addr).expect("client");
            let reply = client.read_index(network.message(2, Bytes::new())).await;
            assert_eq!(
                reply.expect_err("no peer service").code(),
                tonic::Code::Unimplemented
            );
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
        server.abort();
    }

    #[test]
    fn a_request_is_split_into_consecutive_pieces_that_fit() {
        // A blank entry counts 32 bytes: three fit in 100.
        let pieces = split_by_bytes(request(5, 10), 100);
        assert_eq!(
            shape(&pieces),
            [
                (4, vec![5, 6, 7]),
                (7, vec![8, 9, 10]),
                (10, vec![11, 12, 13]),
                (13, vec![14]),
            ]
        );
        for piece in &pieces {
            assert_eq!(piece.leader_commit, Some(log_id(14)));
            assert_eq!(piece.vote, VoteOf::<TypeConfig>::new_committed(2, 1));
        }
    }

    #[test]
    fn an_entry_larger_than_the_budget_goes_alone_and_a_fitting_request_whole() {
        assert_eq!(
            shape(&split_by_bytes(request(1, 2), 10)),
            [(0, vec![1]), (1, vec![2])]
        );
        assert_eq!(shape(&split_by_bytes(request(1, 2), 64)), [(0, vec![1, 2])]);
        let heartbeat = AppendEntriesRequest {
            entries: Vec::new(),
            ..request(3, 1)
        };
        assert_eq!(shape(&split_by_bytes(heartbeat, 10)), [(2, vec![])]);
    }
}
