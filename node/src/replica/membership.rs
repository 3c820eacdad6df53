//! Membership operations of a replica: who is in the cluster, and the safe way to change it.
//!
//! Members are added by address: the leader dials the new node, reads its self-reported identity
//! and addresses, and stores those — so the member list always says what the node itself says,
//! and a node that belongs to another cluster is refused. Removing the leader moves leadership to
//! another voter first, so the cluster keeps serving throughout.

use std::collections::BTreeSet;
use std::time::Duration;

use kvs_client::proto;
use openraft::ChangeMembers;
use openraft::Instant as _;
use openraft::ServerState;
use openraft::alias::CommittedLeaderIdOf;
use openraft::errors::ChangeMembershipError;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;

use crate::deadline::Deadline;
use crate::error::Error;
use crate::error::Result;
use crate::identity::node_id_string;
use crate::identity::parse_node_id;
use crate::replica::Leadership;
use crate::replica::Replica;
use crate::store::data_dir::disk_usage;
use crate::store::entry::MemberAddr;
use crate::store::entry::TypeConfig;

impl Replica {
    /// What this node is; answered by members and non-members alike.
    pub(crate) fn node_info(&self) -> proto::NodeInfoResponse {
        let metrics = self.metrics();
        let me = self.identity.node_id();
        let membership = metrics.membership_config.membership();
        let role = if membership.voter_ids().any(|id| id == me) {
            "voter"
        } else if membership.get_node(&me).is_some() {
            "learner"
        } else {
            "none"
        };
        proto::NodeInfoResponse {
            node_id: node_id_string(me),
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            address: self.advertised.addr.clone(),
            peer_address: self.advertised.peer_addr.clone(),
            is_member: role != "none",
            role: role.into(),
            durable: !self.config.in_memory,
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            leader: self.leader_id().map(node_id_string).unwrap_or_default(),
        }
    }

    /// This node's view of the cluster.
    pub(crate) fn status(&self) -> proto::StatusResponse {
        let metrics = self.metrics();
        let disk = (!self.config.in_memory)
            .then(|| disk_usage(&self.config.data_dir))
            .and_then(|usage| {
                usage
                    .inspect_err(
                        |e| tracing::warn!(error = %e, "cannot measure the data directory"),
                    )
                    .ok()
            });
        proto::StatusResponse {
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            leader: self.leader_id().map(node_id_string).unwrap_or_default(),
            term: metrics.current_term,
            commit_index: metrics.local_committed.map_or(0, |id| id.index),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            node_id: node_id_string(self.identity.node_id()),
            alarms: self.alarms(),
            keys: self.state.read(|data, _| data.len() as u64),
            clock_skew_ms: self.largest_clock_offset_ms().unwrap_or(0),
            data_dir_bytes: disk.map(|d| d.used_bytes),
            data_dir_free_bytes: disk.map(|d| d.free_bytes),
        }
    }

    /// This node's view of the cluster once it has applied everything committed when the call
    /// arrived: its key count is then the cluster's, not a lagging replica's.
    pub(crate) async fn linearizable_status(&self) -> Result<proto::StatusResponse> {
        let (_guard, deadline) = self.admit()?;
        crate::replica::read::await_linearizable(self, &deadline).await?;
        Ok(self.status())
    }

    /// The alarms this node raises (see `StatusResponse.alarms`).
    fn alarms(&self) -> Vec<String> {
        let mut alarms = Vec::new();
        if self.memory_used() >= self.config.quota_bytes() || self.check_disk_space().is_err() {
            alarms.push("NOSPACE".to_string());
        }
        if matches!(self.leadership(), Leadership::Here) && !self.clock_agrees() {
            alarms.push("CLOCK_SKEW".to_string());
        }
        alarms
    }

    /// Forms a one-member cluster if this node has no state; otherwise reports the cluster it has.
    pub(crate) async fn initialize(&self) -> Result<proto::InitializeResponse> {
        let deadline = Deadline::after(self.config.request_timeout());
        let _serial = self.init_lock.lock().await;
        let initialized = deadline
            .run(self.raft.is_initialized())
            .await
            .map_err(|()| Error::Busy("timed out reading the Raft state".into()))?
            .map_err(|e| Error::Fatal(e.to_string()))?;
        if initialized || self.identity.cluster_id().is_some() {
            return match self.identity.cluster_id() {
                Some(cluster_id) => Ok(proto::InitializeResponse {
                    cluster_id,
                    initialized: false,
                }),
                None => Err(Error::Membership(
                    "this node already has Raft state but no cluster ID".into(),
                )),
            };
        }
        let cluster_id = self.identity.create_cluster();
        let members = [(self.identity.node_id(), self.advertised.clone())]
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>();
        deadline
            .run(self.raft.initialize(members))
            .await
            .map_err(|()| Error::WriteTimeout(deadline.total_ms()))?
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot initialize");
                Error::Membership("this node already holds Raft state of a cluster".into())
            })?;
        tracing::info!(cluster_id, "initialized a new cluster");
        Ok(proto::InitializeResponse {
            cluster_id,
            initialized: true,
        })
    }

    /// Every member with its replication progress; served by the leader, who alone knows it.
    pub(crate) async fn list_members(&self) -> Result<proto::ListMembersResponse> {
        let (_guard, deadline) = self.admit()?;
        match self.leadership() {
            Leadership::Here => Ok(self.members_here()),
            Leadership::There { addr, .. } => {
                let mut client = self.forwarder.cluster(&addr, &deadline).await?;
                self.forwarder
                    .relay(
                        &addr,
                        &deadline,
                        false,
                        client.list_members(proto::ListMembersRequest {}),
                    )
                    .await
            }
            Leadership::Unknown => Err(self.not_leader()),
        }
    }

    fn members_here(&self) -> proto::ListMembersResponse {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let last_index = metrics.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, addr)| {
                let matched_index = if *id == self.identity.node_id() {
                    last_index
                } else {
                    metrics
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(id).copied().flatten())
                        .map_or(0, |log_id| log_id.index)
                };
                proto::Member {
                    id: node_id_string(*id),
                    address: addr.addr.clone(),
                    peer_address: addr.peer_addr.clone(),
                    role: if voters.contains(id) {
                        proto::Role::Voter
                    } else {
                        proto::Role::Learner
                    } as i32,
                    is_leader: metrics.current_leader == Some(*id),
                    matched_index,
                    lag: last_index.saturating_sub(matched_index),
                }
            })
            .collect();
        proto::ListMembersResponse { members }
    }

    /// Adds the node at `address` as a learner, under the addresses it reports itself.
    pub(crate) async fn add_learner(&self, address: String) -> Result<proto::AddLearnerResponse> {
        let (_guard, deadline) = self.admit()?;
        if let Some(leader) = self.leader_elsewhere()? {
            let mut client = self.forwarder.cluster(&leader, &deadline).await?;
            let req = proto::AddLearnerRequest { address };
            return self
                .forwarder
                .relay(&leader, &deadline, true, client.add_learner(req))
                .await;
        }
        let info = self.dial_node_info(&address, &deadline).await?;
        if info.address != address {
            return Err(Error::Membership(format!(
                "the node at {address} advertises its address as {}; add it by that address",
                info.address
            )));
        }
        let id = parse_node_id(&info.node_id).ok_or_else(|| {
            Error::Membership(format!(
                "the node at {address} reported a malformed ID {:?}",
                info.node_id
            ))
        })?;
        let own_cluster = self.identity.cluster_id().unwrap_or_default();
        if !info.cluster_id.is_empty() && info.cluster_id != own_cluster {
            return Err(Error::Membership(format!(
                "the node at {address} belongs to cluster {}, not {own_cluster}",
                info.cluster_id
            )));
        }
        let membership = self.membership();
        if let Some((other, _)) = membership
            .nodes()
            .find(|(other, a)| a.addr == address && **other != id)
        {
            return Err(Error::Membership(format!(
                "address {address} belongs to member {}; remove that member first",
                node_id_string(*other)
            )));
        }
        let node = MemberAddr {
            addr: info.address.clone(),
            peer_addr: info.peer_address.clone(),
        };
        if membership.get_node(&id).is_none() {
            self.change(
                ChangeMembers::AddNodes([(id, node)].into_iter().collect()),
                true,
                &deadline,
            )
            .await?;
        }
        // The change is committed, but the metrics that list members may lag a moment behind.
        self.raft
            .wait(Some(deadline.remaining()))
            .metrics(
                |m| m.membership_config.get_node(&id).is_some(),
                "new learner listed",
            )
            .await
            .map_err(|_| Error::WriteTimeout(deadline.total_ms()))?;
        let member = self
            .members_here()
            .members
            .into_iter()
            .find(|m| m.id == info.node_id);
        Ok(proto::AddLearnerResponse { member })
    }

    /// Makes a learner a voter.
    pub(crate) async fn promote(&self, id: String) -> Result<()> {
        let (_guard, deadline) = self.admit()?;
        if let Some(leader) = self.leader_elsewhere()? {
            let mut client = self.forwarder.cluster(&leader, &deadline).await?;
            let req = proto::PromoteMemberRequest { id };
            return self
                .forwarder
                .relay(&leader, &deadline, true, client.promote_member(req))
                .await
                .map(drop);
        }
        let node_id = self.known_member(&id)?;
        if self.membership().voter_ids().any(|v| v == node_id) {
            return Ok(());
        }
        self.change(
            ChangeMembers::AddVoterIds([node_id].into()),
            true,
            &deadline,
        )
        .await
    }

    /// Removes a member entirely; the leader hands leadership off before removing itself.
    /// Unless `force`, a voter is removed only if the voters that remain include a healthy
    /// majority (see [`remaining_voters_healthy`]): otherwise the cluster could not commit after
    /// the change, and every write would hang.
    pub(crate) async fn remove(&self, id: String, force: bool) -> Result<()> {
        let (_guard, deadline) = self.admit()?;
        let node_id = parse_node_id(&id)
            .ok_or_else(|| Error::InvalidArgument(format!("malformed member ID {id:?}")))?;
        if node_id == self.identity.node_id() && matches!(self.leadership(), Leadership::Here) {
            if !force {
                self.check_remaining_voters(node_id)?;
            }
            self.hand_off_leadership(None, &deadline).await?;
        }
        if let Some(leader) = self.leader_elsewhere()? {
            let mut client = self.forwarder.cluster(&leader, &deadline).await?;
            let req = proto::RemoveMemberRequest { id, force };
            return self
                .forwarder
                .relay(&leader, &deadline, true, client.remove_member(req))
                .await
                .map(drop);
        }
        let membership = self.membership();
        if membership.get_node(&node_id).is_none() {
            return Ok(());
        }
        if membership.voter_ids().any(|v| v == node_id) {
            if membership.voter_ids().count() == 1 {
                return Err(Error::Membership("cannot remove the last voter".into()));
            }
            if !force {
                self.check_remaining_voters(node_id)?;
            }
            self.change(
                ChangeMembers::RemoveVoters([node_id].into()),
                false,
                &deadline,
            )
            .await
        } else {
            self.change(
                ChangeMembers::RemoveNodes([node_id].into()),
                false,
                &deadline,
            )
            .await
        }
    }

    /// Refuses removing the voter `removed` unless the voters left include a healthy majority,
    /// as this leader sees them: itself, and each follower that acknowledged it within the
    /// leader lease. A follower behind on the log still counts: under writes every follower
    /// lags a little, and what a change must not do is leave a configuration whose majority
    /// cannot answer at all.
    fn check_remaining_voters(&self, removed: u64) -> Result<()> {
        let me = self.identity.node_id();
        let lease = Duration::from_millis(self.config.election_timeout_ms * 2);
        let metrics = self.metrics();
        let healthy = |id: u64| {
            id == me
                || metrics
                    .heartbeat
                    .as_ref()
                    .and_then(|acked| acked.get(&id).copied().flatten())
                    .is_some_and(|acked| acked.elapsed() <= lease)
        };
        let voters: BTreeSet<u64> = metrics.membership_config.membership().voter_ids().collect();
        remaining_voters_healthy(&voters, removed, healthy)
    }

    /// Moves leadership to `to` (or the most up-to-date other voter) and waits until it moved.
    pub(crate) async fn transfer_leader(
        &self,
        to: String,
    ) -> Result<proto::TransferLeaderResponse> {
        let (_guard, deadline) = self.admit()?;
        let to = match to.as_str() {
            "" => None,
            id => Some(self.known_member(id)?),
        };
        if let Some(leader) = self.leader_elsewhere()? {
            let mut client = self.forwarder.cluster(&leader, &deadline).await?;
            let req = proto::TransferLeaderRequest {
                to: to.map(node_id_string).unwrap_or_default(),
            };
            return self
                .forwarder
                .relay(&leader, &deadline, true, client.transfer_leader(req))
                .await;
        }
        let leader = self.hand_off_leadership(to, &deadline).await?;
        Ok(proto::TransferLeaderResponse {
            leader: node_id_string(leader),
        })
    }

    /// Transfers leadership away from this node; returns the new leader.
    pub(crate) async fn hand_off_leadership(
        &self,
        to: Option<u64>,
        deadline: &Deadline,
    ) -> Result<u64> {
        let me = self.identity.node_id();
        let target = match to {
            Some(id) => id,
            None => self
                .most_caught_up_voter()
                .ok_or_else(|| Error::Membership("no other voter to hand leadership to".into()))?,
        };
        if target == me {
            return Ok(me);
        }
        if !self.membership().voter_ids().any(|v| v == target) {
            return Err(Error::Membership(format!(
                "{} is not a voter",
                node_id_string(target)
            )));
        }
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| Error::Fatal(e.to_string()))?;
        let moved = self
            .raft
            .wait(Some(deadline.remaining()))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me) && m.state != ServerState::Leader,
                "leadership moved",
            )
            .await
            .map_err(|_| {
                Error::NoQuorum("leadership did not move within the request deadline".into())
            })?;
        Ok(moved.current_leader.unwrap_or(target))
    }

    fn most_caught_up_voter(&self) -> Option<u64> {
        let me = self.identity.node_id();
        let metrics = self.metrics();
        let replication = metrics.replication.unwrap_or_default();
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != me)
            .max_by_key(|id| replication.get(id).copied().flatten().map(|l| l.index))
    }

    /// `Some(leader addresses)` when another node leads; `Err` when no leader is known.
    fn leader_elsewhere(&self) -> Result<Option<MemberAddr>> {
        match self.leadership() {
            Leadership::Here => Ok(None),
            Leadership::There { addr, .. } => Ok(Some(addr)),
            Leadership::Unknown => Err(self.not_leader()),
        }
    }

    fn known_member(&self, id: &str) -> Result<u64> {
        let node_id = parse_node_id(id)
            .ok_or_else(|| Error::InvalidArgument(format!("malformed member ID {id:?}")))?;
        if self.membership().get_node(&node_id).is_none() {
            return Err(Error::Membership(format!("{id} is not a member")));
        }
        Ok(node_id)
    }

    async fn dial_node_info(
        &self,
        address: &str,
        deadline: &Deadline,
    ) -> Result<proto::NodeInfoResponse> {
        let unreachable =
            |why: String| Error::Membership(format!("cannot reach a kvs node at {address}: {why}"));
        let channel = deadline
            .run(
                self.forwarder
                    .dial(address, deadline.remaining().min(Duration::from_secs(2))),
            )
            .await
            .map_err(|()| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let mut client = proto::cluster_client::ClusterClient::new(channel);
        match deadline
            .run(client.node_info(proto::NodeInfoRequest {}))
            .await
        {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(unreachable(status.message().to_string())),
            Err(()) => Err(unreachable("timed out".into())),
        }
    }

    async fn change(
        &self,
        change: ChangeMembers<u64, MemberAddr>,
        retain: bool,
        deadline: &Deadline,
    ) -> Result<()> {
        let changed = deadline
            .run(self.raft.change_membership(change, retain))
            .await
            .map_err(|()| Error::WriteTimeout(deadline.total_ms()))?;
        match changed {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    leader: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                tracing::debug!(error = %e, "membership change refused");
                Err(change_refused(e))
            }
            Err(RaftError::APIError(e)) => {
                tracing::warn!(error = %e, "membership change failed after it was proposed");
                Err(Error::OutcomeUnknown(
                    "leadership changed while the membership change was in flight".into(),
                ))
            }
            Err(RaftError::Fatal(e)) => Err(Error::Fatal(e.to_string())),
        }
    }
}

/// Why openraft refused a membership change, in kvs's words (its own text names internal log
/// IDs and types).
fn change_refused(e: ChangeMembershipError<CommittedLeaderIdOf<TypeConfig>, u64>) -> Error {
    match e {
        ChangeMembershipError::InProgress(_) => {
            Error::Busy("another membership change is in progress".into())
        }
        ChangeMembershipError::UncommittedLeaderLog(_) => {
            Error::Busy("the new leader has not committed an entry of its term yet".into())
        }
        ChangeMembershipError::EmptyMembership(_) => {
            Error::Membership("the change would leave the cluster without voters".into())
        }
        ChangeMembershipError::LearnerNotFound(e) => Error::Membership(format!(
            "node {} is not a learner of this cluster; add it before promoting it",
            node_id_string(e.node_id)
        )),
        ChangeMembershipError::UnsupportedMembershipTransition(_) => {
            Error::Membership("this change cannot be made in one step".into())
        }
        ChangeMembershipError::NodeMetadataChanged(_) => Error::Membership(
            "a member's addresses cannot change; remove it and add it again".into(),
        ),
    }
}

/// Whether the voters left after removing `removed` include a healthy majority, `healthy`
/// telling which are; a refusal naming the ones that are not otherwise. A change that leaves a
/// configuration without a healthy majority commits (the old configuration still has one) and
/// then the cluster cannot commit anything more until enough voters come back.
fn remaining_voters_healthy(
    voters: &BTreeSet<u64>,
    removed: u64,
    healthy: impl Fn(u64) -> bool,
) -> Result<()> {
    let remaining: Vec<u64> = voters.iter().copied().filter(|v| *v != removed).collect();
    let (up, down): (Vec<u64>, Vec<u64>) = remaining.iter().partition(|v| healthy(**v));
    if up.len() > remaining.len() / 2 {
        return Ok(());
    }
    let names = |ids: &[u64]| {
        ids.iter()
            .map(|id| node_id_string(*id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::Membership(format!(
        "removing {} would leave {} voters of which only {} are healthy (answering the leader), not \
         a majority: the cluster could not commit; healthy: [{}]; \
         down or lagging: [{}]; bring them back first, or force the removal",
        node_id_string(removed),
        remaining.len(),
        up.len(),
        names(&up),
        names(&down),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voter_is_removed_only_if_the_rest_have_a_healthy_majority() {
        let voters = BTreeSet::from([1, 2, 3]);
        let three_down = |id: u64| id != 3;
        assert!(
            matches!(
                remaining_voters_healthy(&voters, 2, three_down),
                Err(Error::Membership(_))
            ),
            "{{1, 3}} with 3 down cannot commit"
        );
        assert!(
            remaining_voters_healthy(&voters, 3, three_down).is_ok(),
            "removing the dead voter leaves {{1, 2}}, both up"
        );
        assert!(remaining_voters_healthy(&voters, 2, |_| true).is_ok());

        let five = BTreeSet::from([1, 2, 3, 4, 5]);
        let four_five_down = |id: u64| id <= 3;
        assert!(
            remaining_voters_healthy(&five, 5, four_five_down).is_ok(),
            "3 of 4 up"
        );
        assert!(
            remaining_voters_healthy(&five, 3, four_five_down).is_err(),
            "2 of 4 up is no majority"
        );
    }

    #[test]
    fn the_refusal_names_the_voters_that_are_down() {
        let voters = BTreeSet::from([1, 2, 3]);
        let Err(Error::Membership(message)) = remaining_voters_healthy(&voters, 2, |id| id != 3)
        else {
            panic!("refused");
        };
        assert!(
            message.contains(&format!("down or lagging: [{}]", node_id_string(3))),
            "{message}"
        );
    }
}
