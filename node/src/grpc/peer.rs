//! The `kvs.peer.v1.Peer` service: Raft messages from other members, admitted only when their
//! identity envelope is addressed to this very node of this very cluster.

use std::sync::Arc;

use futures::StreamExt;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::SnapshotOf;
use openraft::alias::VoteOf;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;
use tonic::metadata::MetadataValue;

use crate::error::Error;
use crate::grpc::status::to_status;
use crate::raft::network::PEER_FORMAT;
use crate::raft::network::decode;
use crate::raft::network::encode;
use crate::raft::peer_proto::PeerMessage;
use crate::raft::peer_proto::ReadIndexResponse;
use crate::raft::peer_proto::SnapshotItem;
use crate::raft::peer_proto::peer_server::Peer;
use crate::raft::peer_proto::snapshot_item::Item;
use crate::replica::Replica;
use crate::store::entry::TypeConfig;
use crate::store::snapshot::SnapshotData;

/// Serves peer RPCs for a replica.
pub(crate) struct PeerService {
    replica: Arc<Replica>,
}

/// Whether a message may make a node without a cluster join the sender's cluster.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Adopt {
    /// Replication from a leader: the way a newly added node learns its cluster.
    FromLeader,
    Never,
}

impl PeerService {
    pub(crate) fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    /// Admits, decodes, runs `f` on openraft and encodes its answer.
    async fn handle<Req, Resp, E, Fut>(
        &self,
        request: Request<PeerMessage>,
        adopt: Adopt,
        f: impl FnOnce(Req) -> Fut,
    ) -> Result<Response<PeerMessage>, Status>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: std::fmt::Display,
        Fut: std::future::Future<Output = Result<Resp, E>>,
    {
        let msg = request.into_inner();
        admit(&self.replica, &msg, adopt)?;
        let req: Req = decode(&msg.payload)
            .map_err(|e| Status::invalid_argument(format!("bad peer payload: {e}")))?;
        let resp = f(req)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(PeerMessage {
            envelope: None,
            payload: encode(&resp),
        }))
    }
}

/// Lets `msg` through only if it is addressed to this node of this cluster, in a payload format
/// this node reads, over a link fault injection has not cut.
fn admit(replica: &Replica, msg: &PeerMessage, adopt: Adopt) -> Result<(), Status> {
    let envelope = msg
        .envelope
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("peer message without an envelope"))?;
    if envelope.format != PEER_FORMAT {
        return Err(Status::failed_precondition(format!(
            "peer payload format {} is not supported (this node speaks {PEER_FORMAT})",
            envelope.format
        )));
    }
    if replica.faults().blocks(envelope.from) {
        return Err(Status::unavailable("link cut by fault injection"));
    }
    replica
        .identity()
        .admit(
            &envelope.cluster_id,
            envelope.to,
            adopt == Adopt::FromLeader,
        )
        .map_err(|mismatch| {
            tracing::warn!(%mismatch, from = envelope.from, "rejected peer message");
            let code = mismatch.code();
            let mut status = to_status(Error::PeerIdentity(mismatch), None);
            status
                .metadata_mut()
                .insert("kvs-peer-reject", MetadataValue::from_static(code));
            status
        })
}

/// A snapshot that arrived damaged is the sender's to fix; one this node cannot store (disk full,
/// too large for memory) makes the sender back off and retry later.
fn receive_error(e: std::io::Error) -> Status {
    tracing::warn!(error = %e, "refused a snapshot from the leader");
    match e.kind() {
        std::io::ErrorKind::InvalidData => Status::invalid_argument(e.to_string()),
        _ => Status::unavailable(format!("cannot receive the snapshot: {e}")),
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn vote(&self, request: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.handle(request, Adopt::Never, |req| self.replica.raft().vote(req))
            .await
    }

    async fn pre_vote(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        self.handle(request, Adopt::Never, |req| {
            self.replica.raft().pre_vote(req)
        })
        .await
    }

    async fn append_entries(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        self.handle(request, Adopt::FromLeader, |req| {
            self.replica.raft().append_entries(req)
        })
        .await
    }

    type StreamAppendStream = futures::stream::BoxStream<'static, Result<PeerMessage, Status>>;

    /// openraft's pipelined replication: requests flow into `Raft::stream_append`, which answers
    /// each once its entries are stored. The first message refused (wrong envelope, fault
    /// injection, bad payload) ends the input, and the call ends with its status once the
    /// requests before it are answered.
    async fn stream_append(
        &self,
        request: Request<Streaming<PeerMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let (refuse, refusal) = tokio::sync::oneshot::channel();
        let replica = self.replica.clone();
        let requests = request.into_inner().scan(Some(refuse), move |refuse, msg| {
            let req = msg.and_then(|msg| {
                admit(&replica, &msg, Adopt::FromLeader)?;
                decode(&msg.payload)
                    .map_err(|e| Status::invalid_argument(format!("bad peer payload: {e}")))
            });
            std::future::ready(match req {
                Ok(req) => Some(req),
                Err(status) => {
                    if let Some(refuse) = refuse.take() {
                        let _ = refuse.send(status);
                    }
                    None
                }
            })
        });
        let replies = self
            .replica
            .raft()
            .stream_append(requests)
            .map(|result| match result {
                Ok(result) => Ok(PeerMessage {
                    envelope: None,
                    payload: encode(&result),
                }),
                Err(fatal) => Err(Status::unavailable(fatal.to_string())),
            });
        let refused = futures::stream::once(refusal)
            .filter_map(|status| std::future::ready(status.ok().map(Err)));
        Ok(Response::new(replies.chain(refused).boxed()))
    }

    async fn transfer_leader(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        self.handle(request, Adopt::Never, |req| {
            self.replica.raft().handle_transfer_leader(req)
        })
        .await
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotItem>>,
    ) -> Result<Response<PeerMessage>, Status> {
        let mut items = request.into_inner();
        let head = match items.next().await {
            Some(Ok(SnapshotItem {
                item: Some(Item::Head(head)),
            })) => head,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(Status::invalid_argument(
                    "snapshot stream must start with its head",
                ));
            }
        };
        admit(&self.replica, &head, Adopt::FromLeader)?;
        let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) = decode(&head.payload)
            .map_err(|e| Status::invalid_argument(format!("bad snapshot head: {e}")))?;
        // Dropped unfinished (a broken stream, a refusal), the receiver removes what it wrote.
        let mut receiver = self
            .replica
            .receive_snapshot(&meta)
            .map_err(receive_error)?;
        let (started, mut bytes) = (std::time::Instant::now(), 0);
        while let Some(item) = items.next().await {
            match item?.item {
                Some(Item::Chunk(chunk)) => {
                    bytes += chunk.len();
                    receiver.write(&chunk).await.map_err(receive_error)?;
                }
                _ => return Err(Status::invalid_argument("a snapshot stream has one head")),
            }
        }
        let snapshot = SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: receiver.finish().await.map_err(receive_error)?,
        };
        tracing::info!(last_log_id = ?snapshot.meta.last_log_id, bytes, seconds = started.elapsed().as_secs_f64(), "received snapshot");
        let resp = self
            .replica
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(PeerMessage {
            envelope: None,
            payload: encode(&resp),
        }))
    }

    async fn read_index(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let msg = request.into_inner();
        admit(&self.replica, &msg, Adopt::Never)?;
        let (_guard, deadline) = self.replica.admit().map_err(|e| to_status(e, None))?;
        let index = self
            .replica
            .leader_read_index(&deadline)
            .await
            .map_err(|e| to_status(e, self.replica.leader_hint()))?;
        Ok(Response::new(ReadIndexResponse { index }))
    }
}
