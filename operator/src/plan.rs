//! The decision: from what the user asked for and what the operator saw, the one next step.
//!
//! [`plan_next_step`] is a pure function of ([`KvsClusterSpec`], [`Observation`]) — no Kubernetes
//! client, no gRPC, no clock (the time is part of the observation) — so every rule below is a
//! unit test, and an operator that restarts between any two steps re-plans from live state and
//! continues. It returns one step at a time because every step changes what the next must be
//! (a membership change has to be seen committed before the next one is safe).
//!
//! Pods are matched to Raft members by address (a member's address is its pod's stable DNS name),
//! then the ID the pod reports is compared with the member's: that is how a wiped or restarted
//! pod is told apart from the member that used to live there. The rules, in order:
//! 1. form the Raft cluster once (Initialize on pod-0) or adopt the one the pods already report;
//! 2. never touch membership without a healthy majority of voters;
//! 3. make sure every member has its pod;
//! 4. remove members whose pod now reports another identity, or that stayed unhealthy too long;
//! 5. remove members beyond `spec.replicas`, highest ordinal first, moving leadership away first;
//! 6. promote a caught-up learner;
//! 7. recycle pods that hold a removed identity (a removed identity never rejoins);
//! 8. shrink the StatefulSet and delete volumes of ordinals that hold no member;
//! 9. grow by one member at a time: raise replicas, wait for `NodeInfo`, add as learner;
//! 10. restart outdated pods one at a time, followers first, the leader after a transfer.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kvs_client::membership;

use crate::crd::{KvsClusterSpec, KvsClusterStatus, MAX_REPLICAS, MemberStatus, Phase};

/// Thresholds of the rules; the defaults are what the operator runs with. How far behind a
/// member may be and still count as caught up is not one of them: the operator follows the rule
/// `kvsctl member add` follows, [`kvs_client::membership::caught_up`].
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// A member of an in-memory cluster unhealthy for this long is removed and its pod rejoins
    /// as a new member.
    pub failure_timeout: Duration,
    /// The same for a durable cluster, whose member keeps its data while down: replacing it
    /// copies everything again, so it is given longer (a node drain or pool upgrade).
    pub durable_failure_timeout: Duration,
}

impl Settings {
    /// How long a member may stay unhealthy before it is given up.
    pub fn failure_timeout_for(&self, durable: bool) -> Duration {
        if durable {
            self.durable_failure_timeout
        } else {
            self.failure_timeout
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            failure_timeout: Duration::from_secs(300),
            durable_failure_timeout: Duration::from_secs(1800),
        }
    }
}

/// Everything the plan looks at, read fresh for every reconcile.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Observation {
    pub(crate) now: Timestamp,
    /// `status.clusterID`: set once the Raft cluster is formed or adopted.
    pub(crate) recorded_cluster_id: Option<String>,
    /// `status.members[].unhealthySince`, by member ID.
    pub(crate) unhealthy_since: BTreeMap<String, Timestamp>,
    /// The StatefulSet's `spec.replicas`, when it exists.
    pub(crate) statefulset_replicas: Option<u32>,
    /// The cluster's pods, by ordinal.
    pub(crate) pods: Vec<PodView>,
    /// Ordinals that have a data volume claim (terminating ones included).
    pub(crate) claims: Vec<u32>,
    /// Ordinals whose claim is being deleted.
    pub(crate) terminating_claims: Vec<u32>,
    /// The pod the KvsCluster's `kvs.io/switchover-to` annotation names.
    pub(crate) switchover_to: Option<String>,
    /// The Raft membership as the leader sees it; `None` when no leader answered.
    pub(crate) membership: Option<Vec<MemberView>>,
}

/// One pod and who answers at its address.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PodView {
    pub(crate) ordinal: u32,
    pub(crate) name: String,
    /// The address the node advertises: members are matched to pods by it.
    pub(crate) address: String,
    /// Being deleted.
    pub(crate) terminating: bool,
    /// Runs an older pod template than the StatefulSet's current one.
    pub(crate) outdated: bool,
    /// The kubelet reports it Ready (its readiness probe passes).
    pub(crate) ready: bool,
    /// Not yet running (phase Pending): unscheduled, or waiting for its volume.
    pub(crate) pending: bool,
    /// What the node answered to `NodeInfo`; `None` when it did not answer.
    pub(crate) identity: Option<Identity>,
}

/// The part of a node's `NodeInfo` the plan uses.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Identity {
    pub(crate) node_id: String,
    /// Empty until the node formed or joined a cluster.
    pub(crate) cluster_id: String,
    /// The node follows (or is) a leader.
    pub(crate) leader_known: bool,
}

/// One Raft member.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MemberView {
    pub(crate) id: String,
    pub(crate) address: String,
    /// The ordinal of the pod whose address this is; `None` for an address that is not one of
    /// this cluster's pods.
    pub(crate) ordinal: Option<u32>,
    pub(crate) voter: bool,
    pub(crate) leader: bool,
    /// The highest log index the leader knows this member holds.
    pub(crate) matched_index: u64,
    /// Log entries this member is behind the leader.
    pub(crate) lag: u64,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Plan {
    /// The StatefulSet's replicas to apply with the owned objects; `None`: apply nothing.
    pub(crate) replicas: Option<u32>,
    pub(crate) step: Step,
}

/// The one next step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    /// `spec.paused`: touch nothing.
    Paused,
    /// `spec.hibernate`: scale the StatefulSet to zero pods; claims and membership stay.
    Hibernate,
    /// Create the StatefulSet, Services and budget.
    CreateWorkload,
    /// Change the StatefulSet's replicas (the plan's `replicas`).
    ScaleStatefulSet { from: u32, to: u32 },
    /// Form the Raft cluster on this pod.
    Initialize { pod: String },
    /// Record a cluster the pods already belong to.
    Adopt { cluster_id: String },
    /// Add the node at this pod as a learner.
    AddLearner { pod: String, address: String },
    /// Make a caught-up learner a voter.
    Promote { pod: String, id: String },
    /// Move leadership from `from` to `to` before `from` is removed or restarted.
    TransferLeadership {
        from: String,
        to: String,
        because: Transfer,
    },
    /// Remove a member.
    RemoveMember {
        id: String,
        pod: Option<String>,
        because: Removal,
    },
    /// Delete a pod that holds a removed identity, and its volume, so it returns as a new node.
    Recycle { pod: String, ordinal: u32 },
    /// Delete the volume claim of an ordinal that holds no member.
    DeleteClaim { ordinal: u32 },
    /// Delete an outdated pod so it restarts on the current template.
    RestartPod { pod: String },
    /// Remove the switchover annotation: leadership is where it asked, or (`refused`) it
    /// cannot be.
    FinishSwitchover {
        pod: String,
        refused: Option<String>,
    },
    /// Delete a pod stuck Pending on a claim that is gone or going, so the StatefulSet
    /// controller recreates it with a new claim.
    RecreatePod { pod: String },
    /// Nothing to do until the world changes.
    Wait(Wait),
}

/// Why leadership moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transfer {
    ScaleDown,
    Upgrade,
    /// The user asked for it (`kvs.io/switchover-to`).
    Switchover,
}

/// Why a member is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Beyond `spec.replicas`, or at an address that is not one of this cluster's pods.
    ScaleDown,
    /// Its pod now reports another node ID (wiped volume, in-memory restart).
    Replaced,
    /// Unhealthy for longer than the failure timeout.
    Failed,
}

/// What the plan waits for.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Wait {
    /// A pod that must answer `NodeInfo` before the next step.
    PodStarting { pod: String },
    /// No majority of voters is healthy (or no leader answered).
    NoQuorum,
    /// A pod reports a cluster other than the recorded one.
    ForeignCluster { pod: String, cluster_id: String },
    /// A learner is catching up.
    LearnerCatchingUp { pod: String },
    /// A member is unhealthy but within the failure timeout.
    MemberRecovering { pod: String },
    /// An outdated pod is not restarted: the cluster is in memory and its restart would lose
    /// the majority, and with it the data.
    UpgradeUnsafe { pod: String },
    /// No cluster is recorded or reported, but a claim beyond ordinal 0 exists: it may hold a
    /// cluster, so none is formed.
    RetainedClaims { ordinal: u32 },
    /// `spec.hibernate`: no pods run.
    Hibernated,
    /// Membership and pods match the spec.
    Steady,
}

/// Decides the one next step. Pure: see the module docs for the rules.
pub(crate) fn plan_next_step(
    spec: &KvsClusterSpec,
    observed: &Observation,
    settings: &Settings,
) -> Plan {
    if spec.paused {
        return Plan {
            replicas: None,
            step: Step::Paused,
        };
    }
    let Some(current) = observed.statefulset_replicas else {
        // Retained volumes of an earlier cluster of this name come back with their pods, so the
        // cluster they hold can be adopted with its majority present.
        let initial = observed
            .claims
            .iter()
            .max()
            .map_or(1, |highest| highest + 1);
        return Plan {
            replicas: Some(initial.min(MAX_REPLICAS as u32)),
            step: Step::CreateWorkload,
        };
    };
    let keep = |step| Plan {
        replicas: Some(current),
        step,
    };
    if !spec.storage.in_memory
        && let Some(stuck) = observed.pods.iter().find(|pod| {
            pod.pending
                && !pod.terminating
                && (!observed.claims.contains(&pod.ordinal)
                    || observed.terminating_claims.contains(&pod.ordinal))
        })
    {
        return keep(Step::RecreatePod {
            pod: stuck.name.clone(),
        });
    }
    let scale = |to| Plan {
        replicas: Some(to),
        step: Step::ScaleStatefulSet { from: current, to },
    };
    if spec.hibernate {
        // Stopping every pod at once is safe for durable members (their log is on disk), and
        // the membership is left as it is, so waking up is only starting the pods again.
        return Plan {
            replicas: Some(0),
            step: if current == 0 {
                Step::Wait(Wait::Hibernated)
            } else {
                Step::Hibernate
            },
        };
    }

    let cluster_id = match &observed.recorded_cluster_id {
        Some(id) => id,
        None => return keep(form_cluster(observed)),
    };
    let desired = spec.replicas.clamp(1, MAX_REPLICAS) as u32;
    if current == 0 {
        // Waking from hibernation: every member's pod comes back at once, on its own volume.
        let members = observed
            .claims
            .iter()
            .max()
            .map_or(0, |highest| highest + 1);
        return scale(members.max(desired).min(MAX_REPLICAS as u32));
    }
    if let Some((pod, identity)) = observed
        .answering()
        .find(|(_, identity)| !identity.cluster_id.is_empty() && identity.cluster_id != *cluster_id)
    {
        return keep(Step::Wait(Wait::ForeignCluster {
            pod: pod.name.clone(),
            cluster_id: identity.cluster_id.clone(),
        }));
    }
    let Some(members) = &observed.membership else {
        return keep(Step::Wait(Wait::NoQuorum));
    };
    let cluster = Cluster {
        members,
        observed,
        settings,
        durable: !spec.storage.in_memory,
    };
    if !cluster.has_quorum() {
        return keep(Step::Wait(Wait::NoQuorum));
    }

    // Every member needs its pod; nothing is decided about a member that cannot answer yet.
    let needed = members
        .iter()
        .filter_map(|member| member.ordinal)
        .map(|ordinal| ordinal + 1)
        .max()
        .unwrap_or(0);
    if needed > current {
        return scale(needed);
    }
    if let Some(step) = cluster.replace_failed() {
        return keep(step);
    }
    if let Some(step) = cluster.switchover() {
        return keep(step);
    }
    if let Some(step) = cluster.shrink_membership(desired) {
        return keep(step);
    }
    if let Some(step) = cluster.settle_learner() {
        return keep(step);
    }
    if let Some(step) = cluster.recycle_removed(desired, cluster_id) {
        return keep(step);
    }
    let floor = desired.max(needed);
    if current > floor {
        return scale(floor);
    }
    if let Some(&ordinal) = observed
        .claims
        .iter()
        .find(|&&ordinal| ordinal >= current && cluster.member_at(ordinal).is_none())
    {
        return keep(Step::DeleteClaim { ordinal });
    }
    if let Some(unhealthy) = cluster.first_unhealthy() {
        return keep(Step::Wait(Wait::MemberRecovering { pod: unhealthy }));
    }
    if let Some(ordinal) = (0..desired).find(|&ordinal| cluster.member_at(ordinal).is_none()) {
        if ordinal >= current {
            return scale(ordinal + 1);
        }
        return keep(cluster.join(ordinal));
    }
    keep(cluster.roll(!spec.storage.in_memory))
}

/// Initialize pod-0, or adopt the cluster some pod already belongs to.
fn form_cluster(observed: &Observation) -> Step {
    if let Some((_, identity)) = observed
        .answering()
        .find(|(_, identity)| !identity.cluster_id.is_empty())
    {
        return Step::Adopt {
            cluster_id: identity.cluster_id.clone(),
        };
    }
    // Retained claims beyond ordinal 0 may hold a cluster whose pods have not answered yet, and
    // any silent pod may belong to one: forming a cluster now could put a second dataset behind
    // the same Service.
    if let Some(silent) = observed
        .pods
        .iter()
        .find(|pod| pod.terminating || pod.identity.is_none())
    {
        return Step::Wait(Wait::PodStarting {
            pod: silent.name.clone(),
        });
    }
    if let Some(&ordinal) = observed.claims.iter().find(|&&ordinal| ordinal > 0) {
        return Step::Wait(Wait::RetainedClaims { ordinal });
    }
    match observed.answering_at(0) {
        Ok(pod) => Step::Initialize {
            pod: pod.name.clone(),
        },
        Err(wait) => Step::Wait(wait),
    }
}

impl Observation {
    pub(crate) fn pod(&self, ordinal: u32) -> Option<&PodView> {
        self.pods.iter().find(|pod| pod.ordinal == ordinal)
    }

    /// The pod at `ordinal` when it answers `NodeInfo`, or what to wait for.
    fn answering_at(&self, ordinal: u32) -> Result<&PodView, Wait> {
        match self.pod(ordinal) {
            Some(pod) if !pod.terminating && pod.identity.is_some() => Ok(pod),
            Some(pod) => Err(Wait::PodStarting {
                pod: pod.name.clone(),
            }),
            None => Err(Wait::PodStarting {
                pod: format!("the pod of ordinal {ordinal}"),
            }),
        }
    }

    fn answering(&self) -> impl Iterator<Item = (&PodView, &Identity)> {
        self.pods
            .iter()
            .filter(|pod| !pod.terminating)
            .filter_map(|pod| pod.identity.as_ref().map(|identity| (pod, identity)))
    }
}

/// The membership joined with the pods, and the rules that need both.
struct Cluster<'a> {
    members: &'a [MemberView],
    observed: &'a Observation,
    settings: &'a Settings,
    durable: bool,
}

impl Cluster<'_> {
    /// The pod at a member's address.
    fn pod_of(&self, member: &MemberView) -> Option<&PodView> {
        self.observed
            .pods
            .iter()
            .find(|pod| pod.address == member.address)
    }

    fn member_at(&self, ordinal: u32) -> Option<&MemberView> {
        self.members
            .iter()
            .find(|member| member.ordinal == Some(ordinal))
    }

    fn pod_name(&self, member: &MemberView) -> Option<String> {
        self.pod_of(member).map(|pod| pod.name.clone())
    }

    /// Its pod answers as this member and follows a leader.
    fn healthy(&self, member: &MemberView) -> bool {
        member_healthy(member, &self.observed.pods)
    }

    fn ready(&self, member: &MemberView) -> bool {
        member_ready(member, &self.observed.pods)
    }

    fn voters(&self) -> impl Iterator<Item = &MemberView> {
        self.members.iter().filter(|member| member.voter)
    }

    /// Whether a majority of the voters is healthy.
    fn has_quorum(&self) -> bool {
        majority(self.voters(), |member| self.healthy(member))
    }

    /// Whether a majority of healthy voters remains once `leaving` is gone.
    fn quorum_without(&self, leaving: &MemberView) -> bool {
        let remaining = self.voters().filter(|member| member.id != leaving.id);
        majority(remaining, |member| self.healthy(member))
    }

    /// Whether the others keep a majority of the unchanged voter set while `member` is down.
    fn survives_loss_of(&self, member: &MemberView) -> bool {
        majority(self.voters(), |other| {
            other.id != member.id && self.healthy(other)
        })
    }

    fn leader(&self) -> Option<&MemberView> {
        self.members.iter().find(|member| member.leader)
    }

    fn first_unhealthy(&self) -> Option<String> {
        self.members
            .iter()
            .filter(|member| !self.ready(member))
            .map(|member| {
                self.pod_name(member)
                    .unwrap_or_else(|| member.address.clone())
            })
            .next()
    }

    /// Rule 4: a member whose pod reports another ID is gone for good; one that stayed
    /// unhealthy past the timeout is given up. Its pod then rejoins as a new learner.
    fn replace_failed(&self) -> Option<Step> {
        for member in self.members {
            let Some(pod) = self.pod_of(member) else {
                continue;
            };
            let replaced = !pod.terminating
                && pod
                    .identity
                    .as_ref()
                    .is_some_and(|identity| identity.node_id != member.id);
            // The kubelet must agree: an operator that merely cannot reach a pod gives up
            // nothing.
            let failed = !self.healthy(member)
                && !pod.ready
                && self.unhealthy_for(member) >= self.settings.failure_timeout_for(self.durable);
            let because = if replaced {
                Removal::Replaced
            } else if failed {
                Removal::Failed
            } else {
                continue;
            };
            if member.voter && !self.quorum_without(member) {
                continue;
            }
            return Some(Step::RemoveMember {
                id: member.id.clone(),
                pod: Some(pod.name.clone()),
                because,
            });
        }
        None
    }

    fn unhealthy_for(&self, member: &MemberView) -> Duration {
        let Some(since) = self.observed.unhealthy_since.get(&member.id) else {
            return Duration::ZERO;
        };
        let elapsed = self.observed.now.duration_since(*since);
        Duration::try_from(elapsed).unwrap_or(Duration::ZERO)
    }

    /// A switchover the user asked for: hand leadership to that pod's member if it is a ready
    /// voter, then clear the request; refuse it (and clear it) otherwise.
    fn switchover(&self) -> Option<Step> {
        let pod = self.observed.switchover_to.as_ref()?;
        let finish = |refused: Option<String>| Step::FinishSwitchover {
            pod: pod.clone(),
            refused,
        };
        let Some(target) = self
            .members
            .iter()
            .find(|member| self.pod_name(member).as_ref() == Some(pod))
        else {
            return Some(finish(Some(format!(
                "{pod} holds no member of this cluster"
            ))));
        };
        if target.leader {
            return Some(finish(None));
        }
        if !target.voter || !self.ready(target) {
            return Some(finish(Some(format!(
                "{pod} is not a ready voter (only a healthy, caught-up voter can lead)"
            ))));
        }
        let Some(leader) = self.leader() else {
            return Some(Step::Wait(Wait::NoQuorum));
        };
        Some(Step::TransferLeadership {
            from: leader.id.clone(),
            to: target.id.clone(),
            because: Transfer::Switchover,
        })
    }

    /// Rule 5: the highest ordinal beyond the spec leaves first; a leader hands over first.
    fn shrink_membership(&self, desired: u32) -> Option<Step> {
        let leaving = self
            .members
            .iter()
            .filter(|member| member.ordinal.is_none_or(|ordinal| ordinal >= desired))
            .max_by_key(|member| member.ordinal.map_or(u64::MAX, u64::from))?;
        if leaving.leader {
            let to = self.successor(desired)?;
            return Some(Step::TransferLeadership {
                from: leaving.id.clone(),
                to: to.id.clone(),
                because: Transfer::ScaleDown,
            });
        }
        if leaving.voter && !self.quorum_without(leaving) {
            return None;
        }
        Some(Step::RemoveMember {
            id: leaving.id.clone(),
            pod: self.pod_name(leaving),
            because: Removal::ScaleDown,
        })
    }

    /// The voter that should lead next: ready, staying, lowest ordinal.
    fn successor(&self, desired: u32) -> Option<&MemberView> {
        self.voters()
            .filter(|member| !member.leader && self.ready(member))
            .filter(|member| member.ordinal.is_some_and(|ordinal| ordinal < desired))
            .min_by_key(|member| member.ordinal)
    }

    /// Rule 6: at most one learner exists; promote it once caught up.
    fn settle_learner(&self) -> Option<Step> {
        let learner = self.members.iter().find(|member| !member.voter)?;
        let pod = self
            .pod_name(learner)
            .unwrap_or_else(|| learner.address.clone());
        if self.ready(learner) {
            Some(Step::Promote {
                pod,
                id: learner.id.clone(),
            })
        } else {
            Some(Step::Wait(Wait::LearnerCatchingUp { pod }))
        }
    }

    /// Rule 7: a pod inside the spec that answers with this cluster's ID but is no member holds
    /// a removed identity.
    fn recycle_removed(&self, desired: u32, cluster_id: &str) -> Option<Step> {
        self.observed
            .answering()
            .filter(|(pod, _)| pod.ordinal < desired)
            .find(|(pod, identity)| {
                identity.cluster_id == cluster_id
                    && self.member_at(pod.ordinal).is_none()
                    && self
                        .members
                        .iter()
                        .all(|member| member.id != identity.node_id)
            })
            .map(|(pod, _)| Step::Recycle {
                pod: pod.name.clone(),
                ordinal: pod.ordinal,
            })
    }

    /// Rule 9: the pod at `ordinal` exists in the StatefulSet; add it once it answers.
    fn join(&self, ordinal: u32) -> Step {
        match self.observed.answering_at(ordinal) {
            Ok(pod) => Step::AddLearner {
                pod: pod.name.clone(),
                address: pod.address.clone(),
            },
            Err(wait) => Step::Wait(wait),
        }
    }

    /// Rule 10: one outdated pod at a time, highest ordinal first, the leader last. A durable
    /// member comes back as itself; an in-memory one comes back as a new node, so it is only
    /// restarted while the others keep a majority.
    fn roll(&self, durable: bool) -> Step {
        let outdated = |member: &&MemberView| self.pod_of(member).is_some_and(|pod| pod.outdated);
        if let Some(follower) = self
            .members
            .iter()
            .filter(|member| !member.leader)
            .filter(outdated)
            .max_by_key(|member| member.ordinal)
            && let Some(pod) = self.pod_name(follower)
        {
            if !durable && !self.survives_loss_of(follower) {
                return Step::Wait(Wait::UpgradeUnsafe { pod });
            }
            return Step::RestartPod { pod };
        }
        if let Some(leader) = self.leader().filter(outdated)
            && let Some(to) = self
                .voters()
                .filter(|member| !member.leader && self.ready(member))
                .min_by_key(|member| member.ordinal)
        {
            return Step::TransferLeadership {
                from: leader.id.clone(),
                to: to.id.clone(),
                because: Transfer::Upgrade,
            };
        }
        // A lone voter has no one to hand over to: a durable one restarts in place (the
        // cluster stops for that moment, as the missing budget warned); an in-memory one would
        // come back empty.
        if let Some(leader) = self.leader().filter(outdated)
            && self.voters().count() == 1
            && let Some(pod) = self.pod_name(leader)
        {
            if durable {
                return Step::RestartPod { pod };
            }
            return Step::Wait(Wait::UpgradeUnsafe { pod });
        }
        Step::Wait(Wait::Steady)
    }
}

/// A member is healthy when the pod at its address answers with its ID and follows a leader.
fn member_healthy(member: &MemberView, pods: &[PodView]) -> bool {
    pods.iter()
        .find(|pod| pod.address == member.address)
        .filter(|pod| !pod.terminating)
        .and_then(|pod| pod.identity.as_ref())
        .is_some_and(|identity| identity.node_id == member.id && identity.leader_known)
}

/// Whether more than half of `voters` are `up`: the quorum rule of Raft, and so of every
/// membership decision here. No voters have no majority.
fn majority<'m>(
    voters: impl Iterator<Item = &'m MemberView>,
    up: impl Fn(&MemberView) -> bool,
) -> bool {
    let (total, up_count) = voters.fold((0, 0), |(total, up_count), member| {
        (total + 1, up_count + usize::from(up(member)))
    });
    up_count * 2 > total
}

/// A member is ready when it is healthy and has caught up with the leader: only then is a
/// learner promoted, a leader handed to it, or the next outdated pod restarted.
fn member_ready(member: &MemberView, pods: &[PodView]) -> bool {
    member_healthy(member, pods) && membership::caught_up(member.matched_index, member.lag)
}

impl Step {
    fn phase(&self) -> Phase {
        match self {
            Step::Paused => Phase::Paused,
            Step::Hibernate | Step::Wait(Wait::Hibernated) => Phase::Hibernated,
            Step::FinishSwitchover { .. }
            | Step::TransferLeadership {
                because: Transfer::Switchover,
                ..
            } => Phase::Running,
            Step::CreateWorkload | Step::Initialize { .. } | Step::Adopt { .. } => Phase::Creating,
            Step::ScaleStatefulSet { .. }
            | Step::AddLearner { .. }
            | Step::Promote { .. }
            | Step::DeleteClaim { .. }
            | Step::TransferLeadership {
                because: Transfer::ScaleDown,
                ..
            }
            | Step::RemoveMember {
                because: Removal::ScaleDown,
                ..
            }
            | Step::Wait(Wait::LearnerCatchingUp { .. } | Wait::PodStarting { .. }) => {
                Phase::Scaling
            }
            Step::RemoveMember { .. } | Step::Recycle { .. } | Step::RecreatePod { .. } => {
                Phase::Recovering
            }
            Step::RestartPod { .. }
            | Step::TransferLeadership {
                because: Transfer::Upgrade,
                ..
            } => Phase::Upgrading,
            Step::Wait(Wait::NoQuorum) => Phase::QuorumLost,
            Step::Wait(
                Wait::ForeignCluster { .. }
                | Wait::MemberRecovering { .. }
                | Wait::UpgradeUnsafe { .. },
            ) => Phase::Degraded,
            Step::Wait(Wait::RetainedClaims { .. }) => Phase::Creating,
            Step::Wait(Wait::Steady) => Phase::Running,
        }
    }

    /// A CamelCase reason for conditions and events.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Step::Paused => "Paused",
            Step::Hibernate => "Hibernating",
            Step::Wait(Wait::Hibernated) => "Hibernated",
            Step::FinishSwitchover { refused: None, .. } => "SwitchedOver",
            Step::FinishSwitchover {
                refused: Some(_), ..
            } => "SwitchoverRefused",
            Step::CreateWorkload => "CreatingWorkload",
            Step::ScaleStatefulSet { .. } => "ScalingStatefulSet",
            Step::Initialize { .. } => "Initializing",
            Step::Adopt { .. } => "AdoptingCluster",
            Step::AddLearner { .. } => "AddingLearner",
            Step::Promote { .. } => "PromotingLearner",
            Step::TransferLeadership { .. } => "TransferringLeadership",
            Step::RemoveMember {
                because: Removal::ScaleDown,
                ..
            } => "RemovingMember",
            Step::RemoveMember {
                because: Removal::Replaced,
                ..
            } => "ReplacingMember",
            Step::RemoveMember {
                because: Removal::Failed,
                ..
            } => "RemovingFailedMember",
            Step::Recycle { .. } => "RecyclingRemovedIdentity",
            Step::DeleteClaim { .. } => "DeletingVolumeClaim",
            Step::RestartPod { .. } => "RestartingOutdatedPod",
            Step::RecreatePod { .. } => "RecreatingStuckPod",
            Step::Wait(Wait::PodStarting { .. }) => "WaitingForPod",
            Step::Wait(Wait::NoQuorum) => "NoQuorum",
            Step::Wait(Wait::ForeignCluster { .. }) => "ForeignCluster",
            Step::Wait(Wait::LearnerCatchingUp { .. }) => "LearnerCatchingUp",
            Step::Wait(Wait::MemberRecovering { .. }) => "MemberUnhealthy",
            Step::Wait(Wait::UpgradeUnsafe { .. }) => "UpgradeUnsafe",
            Step::Wait(Wait::RetainedClaims { .. }) => "RetainedClaims",
            Step::Wait(Wait::Steady) => "Steady",
        }
    }

    /// What a user reads in `kubectl describe`.
    pub(crate) fn message(&self) -> String {
        match self {
            Step::Paused => "spec.paused is set; no action is taken".to_owned(),
            Step::Hibernate => {
                "spec.hibernate is set: stopping every pod; volumes and membership are kept"
                    .to_owned()
            }
            Step::Wait(Wait::Hibernated) => {
                "hibernated: no pods run; set spec.hibernate to false to resume".to_owned()
            }
            Step::FinishSwitchover { pod, refused: None } => format!("{pod} leads, as asked"),
            Step::FinishSwitchover {
                pod,
                refused: Some(why),
            } => format!("switchover to {pod} refused: {why}"),
            Step::CreateWorkload => "creating the StatefulSet and Services".to_owned(),
            Step::ScaleStatefulSet { from, to } => {
                format!("scaling the StatefulSet from {from} to {to} pods")
            }
            Step::Initialize { pod } => format!("forming the Raft cluster on {pod}"),
            Step::Adopt { cluster_id } => format!("adopting existing cluster {cluster_id}"),
            Step::AddLearner { pod, address } => format!("adding {pod} ({address}) as a learner"),
            Step::Promote { pod, id } => format!("promoting learner {id} on {pod} to voter"),
            Step::TransferLeadership { from, to, .. } => {
                format!("moving leadership from {from} to {to}")
            }
            Step::RemoveMember { id, pod, because } => {
                let pod = pod.as_deref().unwrap_or("no pod");
                let why = match because {
                    Removal::ScaleDown => "beyond spec.replicas",
                    Removal::Replaced => "its pod now reports another node ID",
                    Removal::Failed => "unhealthy for longer than the failure timeout",
                };
                format!("removing member {id} ({pod}): {why}")
            }
            Step::Recycle { pod, .. } => {
                format!("deleting {pod} and its volume: it holds a removed member's identity")
            }
            Step::DeleteClaim { ordinal } => {
                format!("deleting the volume claim of ordinal {ordinal}: it holds no member")
            }
            Step::RestartPod { pod } => format!("restarting {pod} onto the current template"),
            Step::RecreatePod { pod } => format!(
                "deleting {pod}: it is Pending on a volume claim that is gone or being deleted, \
                 so it is recreated with a new one"
            ),
            Step::Wait(Wait::PodStarting { pod }) => format!("waiting for {pod} to answer"),
            Step::Wait(Wait::NoQuorum) => {
                "no majority of voters is healthy; waiting (an in-memory cluster that lost a \
                 majority must be recreated from a backup)"
                    .to_owned()
            }
            Step::Wait(Wait::ForeignCluster { pod, cluster_id }) => {
                format!("{pod} belongs to another cluster ({cluster_id}); not touching it")
            }
            Step::Wait(Wait::LearnerCatchingUp { pod }) => {
                format!("waiting for learner {pod} to catch up")
            }
            Step::Wait(Wait::MemberRecovering { pod }) => {
                format!("waiting for member {pod} to recover")
            }
            Step::Wait(Wait::UpgradeUnsafe { pod }) => format!(
                "{pod} runs an outdated template but restarting it would lose the in-memory \
                 cluster's majority (or, alone, all its data); scale to 3 or more members first"
            ),
            Step::Wait(Wait::RetainedClaims { ordinal }) => format!(
                "no pod reports a cluster, but the volume claim of ordinal {ordinal} exists and \
                 may hold one; not forming a new cluster (delete the claims beyond ordinal 0 if \
                 they hold nothing)"
            ),
            Step::Wait(Wait::Steady) => "membership matches the spec".to_owned(),
        }
    }

    /// Whether the step changes anything (worth an event and a quick requeue).
    pub(crate) fn acts(&self) -> bool {
        !matches!(self, Step::Paused | Step::Wait(_))
    }

    /// Whether the step changes something or waits on something that moves by itself.
    pub(crate) fn progressing(&self) -> bool {
        self.acts()
            || matches!(
                self,
                Step::Wait(Wait::PodStarting { .. } | Wait::LearnerCatchingUp { .. })
            )
    }
}

/// The status the operator reports for what it observed and decided. Pure, like the plan.
pub(crate) fn status_of(
    observed: &Observation,
    plan: &Plan,
    previous: Option<&KvsClusterStatus>,
    generation: Option<i64>,
) -> KvsClusterStatus {
    let cluster_id = match &plan.step {
        Step::Adopt { cluster_id } => Some(cluster_id.clone()),
        _ => observed.recorded_cluster_id.clone(),
    };
    let members: Vec<&MemberView> = observed.membership.iter().flatten().collect();
    let no_quorum = plan.step == Step::Wait(Wait::NoQuorum);
    let asleep = matches!(plan.step, Step::Hibernate | Step::Wait(Wait::Hibernated));
    // The failure timer stands still without a quorum or while hibernating: members that are
    // not back when it returns (after a node-pool upgrade, say) get the whole timeout from then.
    let unhealthy_since = |id: &str| {
        let since = observed.unhealthy_since.get(id).copied();
        since
            .filter(|_| !no_quorum && !asleep)
            .unwrap_or(observed.now)
            .to_string()
    };
    let mut member_statuses: Vec<MemberStatus> = members
        .iter()
        .map(|member| {
            let healthy = member_healthy(member, &observed.pods);
            MemberStatus {
                pod: pod_name_at(observed, member),
                id: member.id.clone(),
                role: if member.voter { "voter" } else { "learner" }.to_owned(),
                healthy,
                lag: i64::try_from(member.lag).unwrap_or(i64::MAX),
                unhealthy_since: (!healthy).then(|| unhealthy_since(&member.id)),
            }
        })
        .collect();
    if observed.membership.is_none() {
        // No leader to ask: the last known members stay listed, none of them healthy, so the
        // status still says who the cluster is made of.
        member_statuses = previous
            .map(|status| status.members.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|member| MemberStatus {
                healthy: false,
                unhealthy_since: Some(unhealthy_since(&member.id)),
                ..member
            })
            .collect();
    }
    let ready = members
        .iter()
        .filter(|member| member_ready(member, &observed.pods))
        .count();
    let leader = members
        .iter()
        .find(|member| member.leader)
        .map(|member| pod_name_at(observed, member));
    let degraded = member_statuses.iter().any(|member| !member.healthy);
    let phase = match plan.step.phase() {
        Phase::Paused => Phase::Paused,
        _ if cluster_id.is_none() => Phase::Creating,
        Phase::Running if degraded => Phase::Degraded,
        phase => phase,
    };
    let previous_conditions = previous
        .map(|status| status.conditions.as_slice())
        .unwrap_or_default();
    let condition = |kind: &str, holds: bool, reason: &str, message: String| {
        condition(
            previous_conditions,
            observed.now,
            generation,
            kind,
            holds,
            reason,
            message,
        )
    };
    let reason = plan.step.reason();
    // Steady means membership matches the spec and no pod is outdated; every member must also
    // be ready now, not just healthy.
    let all_ready = plan.step == Step::Wait(Wait::Steady)
        && cluster_id.is_some()
        && !degraded
        && ready == member_statuses.len();
    let conditions = vec![
        if all_ready {
            condition(
                READY,
                true,
                "MembersReady",
                format!("{ready} of {} members ready", member_statuses.len()),
            )
        } else {
            condition(READY, false, reason, plan.step.message())
        },
        condition(
            "Available",
            leader.is_some() && !no_quorum,
            if leader.is_some() {
                "LeaderElected"
            } else {
                "NoLeader"
            },
            match &leader {
                Some(pod) => format!("{pod} leads {} members", members.len()),
                None => "no leader is known".to_owned(),
            },
        ),
        condition(
            "Progressing",
            plan.step.progressing(),
            reason,
            plan.step.message(),
        ),
        condition(
            "Degraded",
            degraded,
            if degraded {
                "MemberUnhealthy"
            } else {
                "AllMembersHealthy"
            },
            format!("{ready} of {} members ready", member_statuses.len()),
        ),
        condition("QuorumLost", no_quorum, reason, plan.step.message()),
    ];
    KvsClusterStatus {
        phase: Some(phase),
        cluster_id,
        replicas: member_statuses.len() as i32,
        ready_replicas: ready as i32,
        leader,
        members: member_statuses,
        conditions,
        selector: previous.and_then(|s| s.selector.clone()),
        observed_generation: generation.or(previous.and_then(|s| s.observed_generation)),
    }
}

/// The condition that says whether the cluster is what the spec asks for.
pub(crate) const READY: &str = "Ready";

/// `status` with a failed reconcile in its `Ready` condition: False, with the error's reason and
/// message, until a reconcile succeeds again.
pub(crate) fn with_failure(
    mut status: KvsClusterStatus,
    now: Timestamp,
    generation: Option<i64>,
    reason: &str,
    message: String,
) -> KvsClusterStatus {
    let ready = condition(
        &status.conditions,
        now,
        generation,
        READY,
        false,
        reason,
        message,
    );
    status
        .conditions
        .retain(|condition| condition.type_ != READY);
    status.conditions.insert(0, ready);
    status
}

fn pod_name_at(observed: &Observation, member: &MemberView) -> String {
    observed
        .pods
        .iter()
        .find(|pod| pod.address == member.address)
        .map(|pod| pod.name.clone())
        .unwrap_or_else(|| member.address.clone())
}

/// A condition that keeps its last transition time while its status does not change.
fn condition(
    previous: &[Condition],
    now: Timestamp,
    generation: Option<i64>,
    kind: &str,
    holds: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if holds { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|condition| condition.type_ == kind && condition.status == status)
        .map_or(Time(now), |condition| {
            condition.last_transition_time.clone()
        });
    Condition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests;
