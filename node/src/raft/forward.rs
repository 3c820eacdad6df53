//! Leader forwarding: a follower sends a request it cannot serve to the leader and relays the
//! answer, so any member answers any request.
//!
//! The request goes to the leader's peer address, where every node serves the client API too,
//! outside the users and roles of `--auth-file`: the follower has already checked the caller, and
//! the leader must not need the caller's password (the peer port is the nodes' own, guarded by
//! mTLS). Hints for clients still name the leader's client address.
//!
//! The one subtle part is what a failure means. A connection that could not be made means the
//! request surely was not applied; a status the leader generated is relayed as it is (it already
//! says whether the request may have been applied); a connection that broke after the request
//! was sent means the outcome is unknown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use kvs_client::proto::cluster_client::ClusterClient;
use kvs_client::proto::kv_client::KvClient;
use tonic::transport::Channel;

use crate::deadline::Deadline;
use crate::error::Error;
use crate::lock;
use crate::raft::network;
use crate::store::entry::MemberAddr;
use crate::tls::Tls;

/// Metadata a node puts on every status it generates itself, so a forwarding node can tell a
/// leader's answer from a transport failure.
pub(crate) const ORIGIN_HEADER: &str = "kvs-node";

/// Cached connections to leaders' peer ports.
pub(crate) struct Forwarder {
    channels: Mutex<HashMap<String, Channel>>,
    max_message_bytes: usize,
    /// The leader's reply to a forwarded write comes after the write applied, so the limit on
    /// it is the largest reply (`--max-reply-bytes`), not the request limit.
    max_reply_bytes: usize,
    /// The peer port's TLS: forwarded calls go to the leader's peer port, which admits only
    /// members' peer certificates.
    peer_tls: Option<Arc<Tls>>,
    /// The client port's TLS, for calls to other members' client ports ([`Forwarder::dial`]).
    client_tls: Option<Arc<Tls>>,
}

impl Forwarder {
    pub(crate) fn new(
        max_message_bytes: usize,
        max_reply_bytes: usize,
        peer_tls: Option<Arc<Tls>>,
        client_tls: Option<Arc<Tls>>,
    ) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            max_message_bytes,
            max_reply_bytes,
            peer_tls,
            client_tls,
        }
    }

    /// A new connection to the client API at `addr` (a member's client port), over TLS when
    /// this node's client port has it (presenting this node's certificate, verifying the
    /// other's with --trusted-ca-file).
    pub(crate) async fn dial(
        &self,
        addr: &str,
        connect_timeout: Duration,
    ) -> Result<Channel, tonic::transport::Error> {
        network::channel(addr, connect_timeout, self.client_tls.as_ref()).await
    }

    async fn channel(&self, leader: &MemberAddr, deadline: &Deadline) -> Result<Channel, Error> {
        let addr = leader.peer_addr.as_str();
        if let Some(ch) = lock::lock(&self.channels).get(addr) {
            return Ok(ch.clone());
        }
        let not_reached = |why: String| {
            tracing::debug!(addr, why, "cannot reach leader");
            Error::NotLeader {
                leader: Some(leader.addr.clone()),
            }
        };
        let connect_timeout = deadline.remaining().min(Duration::from_secs(2));
        let ch = network::channel(addr, connect_timeout, self.peer_tls.as_ref())
            .await
            .map_err(|e| not_reached(e.to_string()))?;
        lock::lock(&self.channels).insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn forget(&self, leader: &MemberAddr) {
        lock::lock(&self.channels).remove(&leader.peer_addr);
    }

    pub(crate) async fn kv(
        &self,
        leader: &MemberAddr,
        deadline: &Deadline,
    ) -> Result<KvClient<Channel>, Error> {
        Ok(KvClient::new(self.channel(leader, deadline).await?)
            .max_decoding_message_size(self.max_reply_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub(crate) async fn cluster(
        &self,
        leader: &MemberAddr,
        deadline: &Deadline,
    ) -> Result<ClusterClient<Channel>, Error> {
        Ok(ClusterClient::new(self.channel(leader, deadline).await?))
    }

    /// Runs one forwarded call within the deadline and classifies its failure.
    /// `may_apply` tells whether the call changes state (a write) or not (reads, lookups).
    pub(crate) async fn relay<T, F>(
        &self,
        leader: &MemberAddr,
        deadline: &Deadline,
        may_apply: bool,
        call: F,
    ) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut timed = std::pin::pin!(call);
        match deadline.run(&mut timed).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) if status.metadata().contains_key(ORIGIN_HEADER) => {
                Err(Error::Forwarded(status))
            }
            Ok(Err(status)) => {
                self.forget(leader);
                if may_apply {
                    Err(Error::OutcomeUnknown(format!(
                        "connection to the leader at {} failed: {}",
                        leader.addr,
                        status.message()
                    )))
                } else {
                    Err(Error::NotLeader {
                        leader: Some(leader.addr.clone()),
                    })
                }
            }
            Err(()) if may_apply => Err(Error::WriteTimeout(deadline.total_ms())),
            Err(()) => Err(Error::ReadTimeout(deadline.total_ms())),
        }
    }
}
