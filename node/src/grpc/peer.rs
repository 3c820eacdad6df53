//! The `kvs.peer.v1.Peer` service: Raft messages from other members, admitted only when their
//! identity envelope is addressed to this very node of this very cluster, and its sender is
//! believable.
//!
//! With peer TLS (`--peer-cert-file`), every connection carries a certificate from the peer CA,
//! and a message is admitted only if that certificate names its sender: one of its subject
//! alternative names is the host of the sender's recorded peer address ([`check_certificate`]). A
//! node that does not know the sender yet (a fresh node being added, a leader added after what
//! its log holds) takes the CA's word. Without peer TLS, anyone who knows the public node and
//! cluster IDs can write an envelope. Either way, what can be checked without credentials is checked, before
//! openraft sees the message and before a fresh node adopts a cluster ID from it: the payload
//! decodes; the sender is a member of this node's configuration (a node without one yet takes
//! replication from anyone of its cluster: that is how it joins) and, where its peer address is an
//! IP address, the connection comes from that address; the vote inside speaks for the sender
//! the envelope names; and the term it carries is within reach of this node's own, so one forged
//! message cannot push the cluster's term to where it can never be raised again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;

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
use crate::grpc::incoming::ConnectInfo;
use crate::grpc::status::to_status;
use crate::identity::Identity;
use crate::identity::Mismatch;
use crate::identity::node_id_string;
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
use crate::tls::names_host_of;

/// Serves peer RPCs for a replica.
pub(crate) struct PeerService {
    replica: Arc<Replica>,
    logged: Arc<LoggedRefusals>,
}

/// The refusals already logged, by sender and reason: a refused peer retries many times a
/// second, and one line per peer and reason says all there is to say.
#[derive(Default)]
struct LoggedRefusals(Mutex<HashSet<(u64, &'static str)>>);

/// Most distinct refusals remembered; past it the memory starts over (and logs again).
const MAX_LOGGED_REFUSALS: usize = 1024;

impl LoggedRefusals {
    /// Whether this refusal is the first of its kind from this sender.
    fn first(&self, from: u64, code: &'static str) -> bool {
        let mut logged = crate::lock::lock(&self.0);
        if logged.len() >= MAX_LOGGED_REFUSALS {
            logged.clear();
        }
        logged.insert((from, code))
    }
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

/// Whether the peer certificate a message came with (verified against the peer CA in the
/// handshake) speaks for its sender `from`, known to this node as `known`: a member's must name
/// the host of its peer address; a sender this node does not know yet needs only a certificate.
fn check_certificate(
    from: u64,
    certificate: Option<&rustls::pki_types::CertificateDer<'_>>,
    known: &Known<'_>,
) -> Result<(), Mismatch> {
    let Some(certificate) = certificate else {
        return Err(Mismatch::NoCertificate { from });
    };
    match known {
        Known::Member(addr) if !names_host_of(certificate, &addr.peer_addr) => {
            Err(Mismatch::CertificateForAnother {
                from,
                peer_addr: addr.peer_addr.clone(),
            })
        }
        _ => Ok(()),
    }
}

impl PeerService {
    pub(crate) fn new(replica: Arc<Replica>) -> Self {
        Self {
            replica,
            logged: Arc::default(),
        }
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
        let connection = ConnectInfo::of(&request);
        let msg = request.into_inner();
        let req: Req = Judge::of(&self.replica, &self.logged).admit(&msg, &connection, adopt)?;
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
    logged: &'r LoggedRefusals,
    /// The peer port has TLS: every sender must be certified ([`check_certificate`]).
    peer_tls: bool,
    faults: &'r Faults,
    clocks: &'r ClockOffsets,
    membership: Arc<StoredMembershipOf<TypeConfig>>,
    current_term: u64,
}

impl<'r> Judge<'r> {
    fn of(replica: &'r Replica, logged: &'r LoggedRefusals) -> Self {
        let (membership, current_term) =
            replica.with_metrics(|m| (m.membership_config.clone(), m.current_term));
        Judge {
            identity: replica.identity(),
            logged,
            peer_tls: replica.config().tls.peer_cert_file.is_some(),
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
        connection: &ConnectInfo,
        adopt: Adopt,
    ) -> Result<Req, Status> {
        let envelope = self.check_envelope(msg, adopt)?;
        self.check_certified(envelope, connection)?;
        let req: Req = decode(&msg.payload)
            .map_err(|e| Status::invalid_argument(format!("bad peer payload: {e}")))?;
        self.admit_sender(envelope, connection, req.vote(), adopt)?;
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
            .map_err(|mismatch| self.refusal(mismatch, envelope.from))?;
        Ok(envelope)
    }

    /// Checks the sender of a message whose envelope and payload passed, then admits it (a
    /// fresh node may join the sender's cluster here).
    fn admit_sender(
        &self,
        envelope: &Envelope,
        connection: &ConnectInfo,
        vote: Option<&VoteOf<TypeConfig>>,
        adopt: Adopt,
    ) -> Result<(), Status> {
        check_sender(
            envelope.from,
            connection.remote.map(|a| a.ip()),
            vote,
            self.known(envelope.from),
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
        .map_err(|mismatch| self.refusal(mismatch, envelope.from))
    }

    /// What this node knows of the node `from`.
    fn known(&self, from: u64) -> Known<'_> {
        match self.membership.get_node(&from) {
            Some(addr) => Known::Member(addr),
            None if self.membership.membership().nodes().next().is_none() => Known::NoConfiguration,
            None => Known::NotMember,
        }
    }

    /// With peer TLS, checks that the connection's certificate speaks for the envelope's sender
    /// ([`check_certificate`]), before anything of the payload is read.
    fn check_certified(&self, envelope: &Envelope, connection: &ConnectInfo) -> Result<(), Status> {
        if !self.peer_tls {
            return Ok(());
        }
        check_certificate(
            envelope.from,
            connection.certificate.as_deref(),
            &self.known(envelope.from),
        )
        .map_err(|mismatch| self.refusal(mismatch, envelope.from))
    }

    /// The status a refused peer message gets, with the reason's code in `kvs-peer-reject`;
    /// logged the first time this sender is refused for this reason.
    fn refusal(&self, mismatch: Mismatch, from: u64) -> Status {
        let code = mismatch.code();
        if self.logged.first(from, code) {
            tracing::warn!(%mismatch, from = node_id_string(from), "rejected peer message");
        } else {
            tracing::debug!(%mismatch, from = node_id_string(from), "rejected peer message");
        }
        refusal(mismatch)
    }
}

/// The status a refused peer message gets, with the reason's code in `kvs-peer-reject`.
fn refusal(mismatch: Mismatch) -> Status {
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
        let logged = self.logged.clone();
        let connection = ConnectInfo::of(&request);
        let requests = request.into_inner().scan(Some(refuse), move |refuse, msg| {
            let req = msg.and_then(|msg| {
                Judge::of(&replica, &logged).admit(&msg, &connection, Adopt::FromLeader)
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
        let connection = ConnectInfo::of(&request);
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
            Judge::of(&self.replica, &self.logged).admit(&head, &connection, Adopt::FromLeader)?;
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
        let connection = ConnectInfo::of(&request);
        let msg = request.into_inner();
        let judge = Judge::of(&self.replica, &self.logged);
        let envelope = judge.check_envelope(&msg, Adopt::Never)?;
        judge.check_certified(envelope, &connection)?;
        judge.admit_sender(envelope, &connection, None, Adopt::Never)?;
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
            logged: &LoggedRefusals::default(),
            peer_tls: false,
        };
        let garbage = PeerMessage {
            sent_at_ms: 0,
            envelope: envelope(FOLLOWER),
            payload: bytes::Bytes::from_static(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
        };
        let refused = judge
            .admit::<AppendEntriesRequest<TypeConfig>>(
                &garbage,
                &ConnectInfo::default(),
                Adopt::FromLeader,
            )
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
            .admit::<VoteRequest<TypeConfig>>(&forged, &ConnectInfo::default(), Adopt::FromLeader)
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
            .admit::<AppendEntriesRequest<TypeConfig>>(
                &replication,
                &ConnectInfo::default(),
                Adopt::FromLeader,
            )
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
            logged: &LoggedRefusals::default(),
            peer_tls: false,
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
            .admit::<VoteRequest<TypeConfig>>(
                &message(LEADER),
                &ConnectInfo::default(),
                Adopt::Never,
            )
            .expect("a member's vote");
        let refused = judge
            .admit::<VoteRequest<TypeConfig>>(
                &message(STRANGER),
                &ConnectInfo::default(),
                Adopt::Never,
            )
            .expect_err("a stranger's vote");
        assert_eq!(
            refused
                .metadata()
                .get("kvs-peer-reject")
                .and_then(|v| v.to_str().ok()),
            Some("not-member")
        );
    }

    fn certificate_for(name: &str) -> rustls::pki_types::CertificateDer<'static> {
        rcgen::generate_simple_self_signed(vec![name.to_string()])
            .expect("a certificate")
            .cert
            .der()
            .clone()
    }

    /// Peer TLS: a member speaks only with a certificate naming its own peer host; a sender this
    /// node does not know yet needs a certificate (the CA's word), and nobody speaks without one.
    #[test]
    fn a_certificate_speaks_only_for_the_member_whose_peer_host_it_names() {
        let addr = member("kvs-1.peer:7380");
        let own = certificate_for("kvs-1.peer");
        let another = certificate_for("kvs-2.peer");
        assert_eq!(
            check_certificate(LEADER, Some(&own), &Known::Member(&addr)),
            Ok(())
        );
        assert_eq!(
            check_certificate(LEADER, Some(&another), &Known::Member(&addr)),
            Err(Mismatch::CertificateForAnother {
                from: LEADER,
                peer_addr: "kvs-1.peer:7380".into()
            })
        );
        assert_eq!(
            check_certificate(LEADER, None, &Known::Member(&addr)),
            Err(Mismatch::NoCertificate { from: LEADER })
        );
        assert_eq!(
            check_certificate(LEADER, Some(&another), &Known::NoConfiguration),
            Ok(())
        );
        assert_eq!(
            check_certificate(LEADER, None, &Known::NoConfiguration),
            Err(Mismatch::NoCertificate { from: LEADER })
        );
    }

    /// A message over a connection whose certificate names another member is refused with
    /// PERMISSION_DENIED before its payload is read, and the refusal is logged once.
    #[test]
    fn a_message_whose_certificate_names_another_member_is_refused() {
        let membership = Membership::<u64, MemberAddr>::new(
            vec![BTreeSet::from([LEADER])],
            BTreeMap::from([(LEADER, member("kvs-1.peer:7000"))]),
        )
        .expect("a valid configuration");
        let identity = Identity::new(FOLLOWER);
        identity.create_cluster();
        let (faults, clocks, logged) = (
            Faults::inert(),
            ClockOffsets::default(),
            LoggedRefusals::default(),
        );
        let judge = Judge {
            identity: &identity,
            faults: &faults,
            clocks: &clocks,
            membership: Arc::new(StoredMembership::new(None, membership)),
            current_term: 3,
            logged: &logged,
            peer_tls: true,
        };
        let forged = PeerMessage {
            sent_at_ms: 0,
            envelope: Some(Envelope {
                cluster_id: identity.cluster_id().expect("created"),
                from: LEADER,
                to: FOLLOWER,
                format: PEER_FORMAT,
            }),
            payload: bytes::Bytes::new(),
        };
        let connection = ConnectInfo {
            remote: None,
            certificate: Some(Arc::new(certificate_for("kvs-2.peer"))),
            refused: None,
        };
        let refused = judge
            .admit::<VoteRequest<TypeConfig>>(&forged, &connection, Adopt::Never)
            .expect_err("another member's certificate");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert_eq!(
            refused
                .metadata()
                .get("kvs-peer-reject")
                .and_then(|v| v.to_str().ok()),
            Some("certificate-for-another")
        );
        assert!(
            !logged.first(LEADER, "certificate-for-another"),
            "logged once"
        );
    }
}
