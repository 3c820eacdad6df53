//! The `kvs.peer.v1.Peer` service: Raft messages from other members, admitted only when their
//! identity envelope is addressed to this very node of this very cluster, and its sender is
//! believable.
//!
//! Peers are not authenticated (that is TLS's job), so anyone who knows the public node and
//! cluster IDs can write an envelope. What can be checked without credentials is checked, before
//! openraft sees the message and before a fresh node adopts a cluster ID from it: the payload
//! decodes; the sender is a member of this node's configuration (a node without one yet takes
//! replication from anyone of its cluster: that is how it joins) and, where its peer address is an
//! IP address, the connection comes from that address; the vote inside speaks for the sender
//! the envelope names; and the term it carries is within reach of this node's own, so one forged
//! message cannot push the cluster's term to where it can never be raised again.

use std::sync::Arc;

use futures::StreamExt;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::SnapshotOf;
use openraft::alias::StoredMembershipOf;
use openraft::alias::VoteOf;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::VoteRequest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;
use tonic::metadata::MetadataValue;

use crate::error::Error;
use crate::fault::Faults;
use crate::grpc::status::to_status;
use crate::identity::Identity;
use crate::identity::Mismatch;
use crate::raft::clock::ClockOffsets;
use crate::raft::clock::wall_clock_ms;
use crate::raft::network::PEER_FORMAT;
use crate::raft::network::decode;
use crate::raft::network::encode;
use crate::raft::peer_proto::Envelope;
use crate::raft::peer_proto::PeerMessage;
use crate::raft::peer_proto::ReadIndexResponse;
use crate::raft::peer_proto::SnapshotItem;
use crate::raft::peer_proto::peer_server::Peer;
use crate::raft::peer_proto::snapshot_item::Item;
use crate::replica::Replica;
use crate::store::entry::MemberAddr;
use crate::store::entry::TypeConfig;
use crate::store::snapshot::SnapshotData;

/// Serves peer RPCs for a replica.
pub(crate) struct PeerService {
    replica: Arc<Replica>,
}

/// Whether a message may make a node without a cluster join the sender's cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Adopt {
    /// Replication from a leader: the way a newly added node learns its cluster.
    FromLeader,
    Never,
}

/// How far past this node's own term a message's term may be. A real cluster raises its term by
/// one per election; the bound only stops a forged term from taking the cluster to where no
/// later term fits in a `u64`.
const MAX_TERM_STEP: u64 = 1 << 32;

/// What a message says about who sent it: the vote it carries (openraft's messages that have
/// one), checked by [`check_sender`].
trait Claims {
    fn vote(&self) -> Option<&VoteOf<TypeConfig>>;
}

impl Claims for VoteRequest<TypeConfig> {
    fn vote(&self) -> Option<&VoteOf<TypeConfig>> {
        Some(&self.vote)
    }
}

impl Claims for AppendEntriesRequest<TypeConfig> {
    fn vote(&self) -> Option<&VoteOf<TypeConfig>> {
        Some(&self.vote)
    }
}

impl Claims for TransferLeaderRequest<TypeConfig> {
    fn vote(&self) -> Option<&VoteOf<TypeConfig>> {
        Some(self.from_leader())
    }
}

/// This node's knowledge of a message's sender.
#[derive(Debug)]
enum Known<'a> {
    /// This node has no configuration yet (it has not joined).
    NoConfiguration,
    NotMember,
    Member(&'a MemberAddr),
}

/// Whether a message whose envelope names `from`, that came over a connection from `remote`,
/// carrying `vote`, is believable to a node that knows the sender as `known` and is at
/// `current_term`. A pure function of what the node knows, so every rule is tested alone.
fn check_sender(
    from: u64,
    remote: Option<std::net::IpAddr>,
    vote: Option<&VoteOf<TypeConfig>>,
    known: Known<'_>,
    current_term: u64,
    adopt: Adopt,
) -> Result<(), Mismatch> {
    let term = vote.map(|v| v.leader_id().term);
    if let Some(vote) = vote
        && vote.leader_id().node_id != from
    {
        return Err(Mismatch::WrongSender {
            envelope: from,
            message: vote.leader_id().node_id,
        });
    }
    if let Some(term) = term
        && term
            > current_term
                .saturating_add(MAX_TERM_STEP)
                .min(u64::MAX - MAX_TERM_STEP)
    {
        return Err(Mismatch::TermOutOfReach {
            term,
            current: current_term,
        });
    }
    match known {
        Known::NoConfiguration => Ok(()),
        // A leader may have been added after what this node's log holds: a node that was away,
        // or a new learner replaying the log from its start through old configurations, learns
        // of it only from its replication. So replication is admitted from a non-member; votes
        // and everything else are not (authenticating leaders is the peer TLS's job).
        Known::NotMember if adopt == Adopt::FromLeader => Ok(()),
        Known::NotMember => Err(Mismatch::NotMember { from }),
        Known::Member(addr) => {
            let expected = addr
                .peer_addr
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.ip().to_canonical());
            match (expected, remote.map(|ip| ip.to_canonical())) {
                (Some(expected), Some(actual))
                    if expected != actual && !(expected.is_loopback() && actual.is_loopback()) =>
                {
                    Err(Mismatch::WrongAddress {
                        from,
                        expected: addr.peer_addr.clone(),
                        actual,
                    })
                }
                _ => Ok(()),
            }
        }
    }
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
        Req: DeserializeOwned + Claims,
        Resp: Serialize,
        E: std::fmt::Display,
        Fut: std::future::Future<Output = Result<Resp, E>>,
    {
        let remote = request.remote_addr();
        let msg = request.into_inner();
        let req: Req = Judge::of(&self.replica).admit(&msg, remote, adopt)?;
        let resp = f(req)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(reply(encode(&resp))))
    }
}

/// A reply to a peer, stamped with this node's wall clock.
fn reply(payload: bytes::Bytes) -> PeerMessage {
    PeerMessage {
        envelope: None,
        payload,
        sent_at_ms: wall_clock_ms(),
    }
}

/// What a peer message is judged against: this node's identity, its injected faults, and what
/// it knows of the cluster (read once per message).
struct Judge<'r> {
    identity: &'r Identity,
    faults: &'r Faults,
    clocks: &'r ClockOffsets,
    membership: Arc<StoredMembershipOf<TypeConfig>>,
    current_term: u64,
}

impl<'r> Judge<'r> {
    fn of(replica: &'r Replica) -> Self {
        let (membership, current_term) =
            replica.with_metrics(|m| (m.membership_config.clone(), m.current_term));
        Judge {
            identity: replica.identity(),
            faults: replica.faults(),
            clocks: replica.clocks(),
            membership,
            current_term,
        }
    }

    /// Lets `msg` through only if it is addressed to this node of this cluster, in a payload
    /// format this node reads, over a link fault injection has not cut, from a believable
    /// sender ([`check_sender`]); answers its decoded payload. Only a message that passed every
    /// check may make a fresh node adopt the sender's cluster ID.
    fn admit<Req: DeserializeOwned + Claims>(
        &self,
        msg: &PeerMessage,
        remote: Option<std::net::SocketAddr>,
        adopt: Adopt,
    ) -> Result<Req, Status> {
        let envelope = self.check_envelope(msg, adopt)?;
        let req: Req = decode(&msg.payload)
            .map_err(|e| Status::invalid_argument(format!("bad peer payload: {e}")))?;
        self.admit_sender(envelope, remote, req.vote(), adopt)?;
        Ok(req)
    }

    /// The envelope of `msg` if it could be for this node; adopts nothing.
    fn check_envelope<'m>(
        &self,
        msg: &'m PeerMessage,
        adopt: Adopt,
    ) -> Result<&'m Envelope, Status> {
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
        if self.faults.blocks(envelope.from) {
            return Err(Status::unavailable("link cut by fault injection"));
        }
        self.clocks
            .request(envelope.from, msg.sent_at_ms, wall_clock_ms());
        self.identity
            .check(
                &envelope.cluster_id,
                envelope.to,
                adopt == Adopt::FromLeader,
            )
            .map_err(|mismatch| refusal(mismatch, envelope.from))?;
        Ok(envelope)
    }

    /// Checks the sender of a message whose envelope and payload passed, then admits it (a
    /// fresh node may join the sender's cluster here).
    fn admit_sender(
        &self,
        envelope: &Envelope,
        remote: Option<std::net::SocketAddr>,
        vote: Option<&VoteOf<TypeConfig>>,
        adopt: Adopt,
    ) -> Result<(), Status> {
        let known = match self.membership.get_node(&envelope.from) {
            Some(addr) => Known::Member(addr),
            None if self.membership.membership().nodes().next().is_none() => Known::NoConfiguration,
            None => Known::NotMember,
        };
        check_sender(
            envelope.from,
            remote.map(|a| a.ip()),
            vote,
            known,
            self.current_term,
            adopt,
        )
        .and_then(|()| {
            self.identity.admit(
                &envelope.cluster_id,
                envelope.to,
                adopt == Adopt::FromLeader,
            )
        })
        .map_err(|mismatch| refusal(mismatch, envelope.from))
    }
}

/// The status a refused peer message gets, with the reason's code in `kvs-peer-reject`.
fn refusal(mismatch: Mismatch, from: u64) -> Status {
    tracing::warn!(%mismatch, from, "rejected peer message");
    let code = mismatch.code();
    let mut status = to_status(Error::PeerIdentity(mismatch), None);
    status
        .metadata_mut()
        .insert("kvs-peer-reject", MetadataValue::from_static(code));
    status
}

/// The head of a snapshot stream: the leader's vote and the snapshot's meta.
#[derive(serde::Deserialize)]
struct SnapshotHead(VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>);

impl Claims for SnapshotHead {
    fn vote(&self) -> Option<&VoteOf<TypeConfig>> {
        Some(&self.0)
    }
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
        let (refuse, refused) = tokio::sync::oneshot::channel();
        let replica = self.replica.clone();
        let remote = request.remote_addr();
        let requests = request.into_inner().scan(Some(refuse), move |refuse, msg| {
            let req =
                msg.and_then(|msg| Judge::of(&replica).admit(&msg, remote, Adopt::FromLeader));
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
                Ok(result) => Ok(reply(encode(&result))),
                Err(fatal) => Err(Status::unavailable(fatal.to_string())),
            });
        let refused = futures::stream::once(refused)
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
        let remote = request.remote_addr();
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
        let SnapshotHead(vote, meta) =
            Judge::of(&self.replica).admit(&head, remote, Adopt::FromLeader)?;
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
        Ok(Response::new(reply(encode(&resp))))
    }

    async fn read_index(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let remote = request.remote_addr();
        let msg = request.into_inner();
        let judge = Judge::of(&self.replica);
        let envelope = judge.check_envelope(&msg, Adopt::Never)?;
        judge.admit_sender(envelope, remote, None, Adopt::Never)?;
        let (_guard, deadline) = self.replica.admit().map_err(|e| to_status(e, None))?;
        let point = self
            .replica
            .leader_read_point(&deadline)
            .await
            .map_err(|e| to_status(e, self.replica.leader_hint()))?;
        Ok(Response::new(ReadIndexResponse {
            index: point.index,
            cluster_time_ms: point.cluster_time_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;

    use openraft::Membership;
    use openraft::StoredMembership;

    use super::*;
    use crate::raft::network::encode;

    const LEADER: u64 = 1;
    const FOLLOWER: u64 = 2;
    const STRANGER: u64 = 9;

    fn member(peer_addr: &str) -> MemberAddr {
        MemberAddr {
            addr: "127.0.0.1:1".into(),
            peer_addr: peer_addr.into(),
        }
    }

    fn vote(term: u64, node: u64) -> VoteOf<TypeConfig> {
        VoteOf::<TypeConfig>::new(term, node)
    }

    fn ip(s: &str) -> Option<std::net::IpAddr> {
        Some(s.parse().expect("an IP address"))
    }

    /// The forged vote of the issue: a term no later election could exceed.
    #[test]
    fn a_vote_with_a_term_out_of_reach_is_refused() {
        let addr = member("127.0.0.1:7000");
        let forged = vote(u64::MAX, LEADER);
        assert_eq!(
            check_sender(
                LEADER,
                ip("127.0.0.1"),
                Some(&forged),
                Known::Member(&addr),
                5,
                Adopt::Never
            ),
            Err(Mismatch::TermOutOfReach {
                term: u64::MAX,
                current: 5
            })
        );
        let far = vote(5 + MAX_TERM_STEP + 1, LEADER);
        assert!(matches!(
            check_sender(
                LEADER,
                None,
                Some(&far),
                Known::NoConfiguration,
                5,
                Adopt::FromLeader
            ),
            Err(Mismatch::TermOutOfReach { .. })
        ));
        let next = vote(6, LEADER);
        assert_eq!(
            check_sender(
                LEADER,
                ip("127.0.0.1"),
                Some(&next),
                Known::Member(&addr),
                5,
                Adopt::Never
            ),
            Ok(())
        );
    }

    #[test]
    fn a_vote_from_a_node_outside_the_configuration_is_refused() {
        let candidate = vote(6, STRANGER);
        assert_eq!(
            check_sender(
                STRANGER,
                None,
                Some(&candidate),
                Known::NotMember,
                5,
                Adopt::Never
            ),
            Err(Mismatch::NotMember { from: STRANGER })
        );
        let stale = vote(5, STRANGER);
        assert_eq!(
            check_sender(
                STRANGER,
                None,
                Some(&stale),
                Known::NotMember,
                5,
                Adopt::FromLeader
            ),
            Ok(()),
            "replication from a leader a new learner's old configurations do not hold yet"
        );
        assert_eq!(
            check_sender(STRANGER, None, None, Known::NotMember, 5, Adopt::Never),
            Err(Mismatch::NotMember { from: STRANGER }),
            "a read-index request"
        );
        assert_eq!(
            check_sender(
                STRANGER,
                None,
                Some(&candidate),
                Known::NotMember,
                5,
                Adopt::FromLeader
            ),
            Ok(()),
            "a leader elected in a newer term may have been added while this node was away"
        );
    }

    #[test]
    fn a_message_must_come_from_its_members_address_and_speak_for_its_sender() {
        let addr = member("10.0.0.1:7000");
        let own = vote(5, LEADER);
        assert!(matches!(
            check_sender(
                LEADER,
                ip("10.0.0.2"),
                Some(&own),
                Known::Member(&addr),
                5,
                Adopt::FromLeader
            ),
            Err(Mismatch::WrongAddress { .. })
        ));
        assert_eq!(
            check_sender(
                LEADER,
                ip("::ffff:10.0.0.1"),
                Some(&own),
                Known::Member(&addr),
                5,
                Adopt::FromLeader
            ),
            Ok(())
        );
        let named = member("kvs-0.kvs:7000");
        assert_eq!(
            check_sender(
                LEADER,
                ip("10.0.0.2"),
                Some(&own),
                Known::Member(&named),
                5,
                Adopt::FromLeader
            ),
            Ok(()),
            "a host name cannot be checked without resolving it"
        );
        let someone_else = vote(5, FOLLOWER);
        assert_eq!(
            check_sender(
                LEADER,
                ip("10.0.0.1"),
                Some(&someone_else),
                Known::Member(&addr),
                5,
                Adopt::Never
            ),
            Err(Mismatch::WrongSender {
                envelope: LEADER,
                message: FOLLOWER
            })
        );
    }

    fn envelope(to: u64) -> Option<Envelope> {
        Some(Envelope {
            cluster_id: "c1".into(),
            from: LEADER,
            to,
            format: PEER_FORMAT,
        })
    }

    /// A fresh node joins the cluster of the first leader that replicates to it, but only with a
    /// message that passes every check: garbage with a valid envelope leaves it without a cluster.
    #[test]
    fn a_fresh_node_adopts_no_cluster_id_from_a_message_that_does_not_decode() {
        let identity = Identity::new(FOLLOWER);
        let faults = Faults::inert();
        let clocks = ClockOffsets::default();
        let judge = Judge {
            identity: &identity,
            faults: &faults,
            clocks: &clocks,
            membership: Arc::new(StoredMembership::default()),
            current_term: 0,
        };
        let garbage = PeerMessage {
            sent_at_ms: 0,
            envelope: envelope(FOLLOWER),
            payload: bytes::Bytes::from_static(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
        };
        let refused = judge
            .admit::<AppendEntriesRequest<TypeConfig>>(&garbage, None, Adopt::FromLeader)
            .expect_err("garbage");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert_eq!(identity.cluster_id(), None);

        let forged = PeerMessage {
            sent_at_ms: 0,
            envelope: envelope(FOLLOWER),
            payload: encode(&VoteRequest::<TypeConfig>::new(
                vote(u64::MAX, LEADER),
                None,
            )),
        };
        judge
            .admit::<VoteRequest<TypeConfig>>(&forged, None, Adopt::FromLeader)
            .expect_err("a term out of reach");
        assert_eq!(identity.cluster_id(), None);

        let append = AppendEntriesRequest::<TypeConfig> {
            vote: VoteOf::<TypeConfig>::new_committed(1, LEADER),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        let replication = PeerMessage {
            sent_at_ms: 0,
            envelope: envelope(FOLLOWER),
            payload: encode(&append),
        };
        judge
            .admit::<AppendEntriesRequest<TypeConfig>>(&replication, None, Adopt::FromLeader)
            .expect("a leader's replication");
        assert_eq!(identity.cluster_id().as_deref(), Some("c1"));
    }

    #[test]
    fn a_member_is_known_by_the_configuration() {
        let membership = Membership::<u64, MemberAddr>::new(
            vec![BTreeSet::from([LEADER])],
            BTreeMap::from([(LEADER, member("127.0.0.1:7000"))]),
        )
        .expect("a valid configuration");
        let identity = Identity::new(FOLLOWER);
        identity.create_cluster();
        let cluster_id = identity.cluster_id().expect("created");
        let faults = Faults::inert();
        let clocks = ClockOffsets::default();
        let judge = Judge {
            identity: &identity,
            faults: &faults,
            clocks: &clocks,
            membership: Arc::new(StoredMembership::new(None, membership)),
            current_term: 3,
        };
        let message = |from: u64| PeerMessage {
            sent_at_ms: 0,
            envelope: Some(Envelope {
                cluster_id: cluster_id.clone(),
                from,
                to: FOLLOWER,
                format: PEER_FORMAT,
            }),
            payload: encode(&VoteRequest::<TypeConfig>::new(vote(4, from), None)),
        };
        judge
            .admit::<VoteRequest<TypeConfig>>(&message(LEADER), None, Adopt::Never)
            .expect("a member's vote");
        let refused = judge
            .admit::<VoteRequest<TypeConfig>>(&message(STRANGER), None, Adopt::Never)
            .expect_err("a stranger's vote");
        assert_eq!(
            refused
                .metadata()
                .get("kvs-peer-reject")
                .and_then(|v| v.to_str().ok()),
            Some("not-member")
        );
    }
}
