//! The planner against a simulated cluster: a `World` that plays the StatefulSet controller,
//! the kubelet and Raft just enough to answer the plan's questions. Every loop iteration
//! observes afresh and plans with no memory but the status, which is exactly what an operator
//! restarted after every step does.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::crd::fixtures::spec;
use crate::crd::{KvsClusterSpec, Phase};

const CLUSTER: &str = "c0ffee00c0ffee00c0ffee00c0ffee00";

#[derive(Clone, Debug)]
struct SimPod {
    node_id: String,
    outdated: bool,
    /// Answers `NodeInfo` (a crashed or still starting node does not).
    up: bool,
}

#[derive(Clone, Debug)]
struct SimMember {
    id: String,
    ordinal: u32,
    voter: bool,
}

/// A toy of Kubernetes plus Raft; only what the plan observes.
#[derive(Clone, Debug)]
struct World {
    durable: bool,
    now: Timestamp,
    status: Option<KvsClusterStatus>,
    replicas: Option<u32>,
    pods: BTreeMap<u32, SimPod>,
    /// Durable volumes by ordinal, holding the node ID created on them.
    claims: BTreeMap<u32, String>,
    /// Which nodes belong to which cluster (a node learns it when it joins).
    node_cluster: BTreeMap<String, String>,
    members: Vec<SimMember>,
    leader: Option<String>,
    next_id: u64,
    /// The KvsCluster's `kvs.io/switchover-to` annotation.
    switchover: Option<String>,
}

fn address(ordinal: u32) -> String {
    format!("kvs-{ordinal}.kvs-peers.db.svc:7379")
}

fn pod_name(ordinal: u32) -> String {
    format!("kvs-{ordinal}")
}

impl World {
    fn new(durable: bool) -> Self {
        World {
            durable,
            now: Timestamp::from_second(1_800_000_000).expect("a valid timestamp"),
            status: None,
            replicas: None,
            pods: BTreeMap::new(),
            claims: BTreeMap::new(),
            node_cluster: BTreeMap::new(),
            members: Vec::new(),
            leader: None,
            next_id: 0,
            switchover: None,
        }
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{:016x}", self.next_id)
    }

    fn healthy(&self, member: &SimMember) -> bool {
        self.pods
            .get(&member.ordinal)
            .is_some_and(|pod| pod.up && pod.node_id == member.id)
    }

    fn has_quorum(&self) -> bool {
        let voters: Vec<_> = self.members.iter().filter(|m| m.voter).collect();
        let healthy = voters.iter().filter(|m| self.healthy(m)).count();
        !voters.is_empty() && healthy * 2 > voters.len()
    }

    fn observe(&self) -> Observation {
        let leader_known = self.leader.is_some() && self.has_quorum();
        Observation {
            now: self.now,
            recorded_cluster_id: self.status.as_ref().and_then(|s| s.cluster_id.clone()),
            unhealthy_since: self
                .status
                .iter()
                .flat_map(|s| &s.members)
                .filter_map(|m| {
                    let since = m.unhealthy_since.as_ref()?.parse().ok()?;
                    Some((m.id.clone(), since))
                })
                .collect(),
            statefulset_replicas: self.replicas,
            pods: self
                .pods
                .iter()
                .map(|(&ordinal, pod)| PodView {
                    ordinal,
                    name: pod_name(ordinal),
                    address: address(ordinal),
                    terminating: false,
                    outdated: pod.outdated,
                    ready: pod.up,
                    pending: false,
                    identity: pod.up.then(|| {
                        let member = self.members.iter().any(|m| m.id == pod.node_id);
                        Identity {
                            node_id: pod.node_id.clone(),
                            cluster_id: self
                                .node_cluster
                                .get(&pod.node_id)
                                .cloned()
                                .unwrap_or_default(),
                            leader_known: leader_known && member,
                        }
                    }),
                })
                .collect(),
            claims: self.claims.keys().copied().collect(),
            terminating_claims: Vec::new(),
            switchover_to: self.switchover.clone(),
            membership: leader_known.then(|| {
                self.members
                    .iter()
                    .map(|m| MemberView {
                        id: m.id.clone(),
                        address: address(m.ordinal),
                        ordinal: Some(m.ordinal),
                        voter: m.voter,
                        leader: self.leader.as_deref() == Some(&m.id),
                        // Members here keep up with the leader; tests that want one behind
                        // edit the observation.
                        matched_index: 1,
                        lag: 0,
                    })
                    .collect()
            }),
        }
    }

    /// The StatefulSet controller and kubelet: pods for every ordinal below replicas.
    fn settle(&mut self) {
        let replicas = self.replicas.unwrap_or(0);
        self.pods.retain(|&ordinal, _| ordinal < replicas);
        for ordinal in 0..replicas {
            if self.pods.contains_key(&ordinal) {
                continue;
            }
            let node_id = match (self.durable, self.claims.get(&ordinal)) {
                (true, Some(id)) => id.clone(),
                _ => self.new_id(),
            };
            if self.durable {
                self.claims.insert(ordinal, node_id.clone());
            }
            self.pods.insert(
                ordinal,
                SimPod {
                    node_id,
                    outdated: false,
                    up: true,
                },
            );
        }
        // Raft elects a healthy voter when it can.
        let leader_ok = self
            .leader
            .as_ref()
            .and_then(|id| self.members.iter().find(|m| &m.id == id))
            .is_some_and(|m| m.voter && self.healthy(m));
        if !leader_ok {
            self.leader = if self.has_quorum() {
                self.members
                    .iter()
                    .find(|m| m.voter && self.healthy(m))
                    .map(|m| m.id.clone())
            } else {
                None
            };
        }
        self.now += Duration::from_secs(10);
    }

    fn apply(&mut self, plan: &Plan) {
        if let Some(replicas) = plan.replicas {
            self.replicas = Some(replicas);
        }
        match &plan.step {
            Step::Initialize { pod } => {
                let pod = &self.pods[&ordinal_of(pod)];
                assert!(self.node_cluster.is_empty(), "initialized twice");
                let id = pod.node_id.clone();
                // The operator records the ID Initialize returns right away.
                self.status.get_or_insert_default().cluster_id = Some(CLUSTER.to_owned());
                self.node_cluster.insert(id.clone(), CLUSTER.to_owned());
                self.members.push(SimMember {
                    id: id.clone(),
                    ordinal: 0,
                    voter: true,
                });
                self.leader = Some(id);
            }
            Step::AddLearner { pod, .. } => {
                let ordinal = ordinal_of(pod);
                let id = self.pods[&ordinal].node_id.clone();
                assert!(
                    self.members.iter().all(|m| m.voter),
                    "a second learner was added"
                );
                self.node_cluster.insert(id.clone(), CLUSTER.to_owned());
                self.members.push(SimMember {
                    id,
                    ordinal,
                    voter: false,
                });
            }
            Step::Promote { id, .. } => {
                let member = self.members.iter_mut().find(|m| &m.id == id);
                member.expect("promoted a member").voter = true;
            }
            Step::TransferLeadership { to, .. } => self.leader = Some(to.clone()),
            Step::RemoveMember { id, .. } => {
                assert_ne!(
                    self.leader.as_ref(),
                    Some(id),
                    "removed the leader directly"
                );
                self.members.retain(|m| &m.id != id);
            }
            Step::Recycle { ordinal, .. } => {
                self.pods.remove(ordinal);
                self.claims.remove(ordinal);
            }
            Step::DeleteClaim { ordinal } => {
                assert!(!self.pods.contains_key(ordinal), "deleted a claim in use");
                self.claims.remove(ordinal);
            }
            Step::RestartPod { pod } | Step::RecreatePod { pod } => {
                self.pods.remove(&ordinal_of(pod));
            }
            Step::FinishSwitchover { .. } => self.switchover = None,
            Step::Paused
            | Step::CreateWorkload
            | Step::Hibernate
            | Step::ScaleStatefulSet { .. }
            | Step::Adopt { .. }
            | Step::Wait(_) => {}
        }
    }

    /// One reconcile: observe, plan, record status, act, let the world move.
    fn reconcile(&mut self, spec: &KvsClusterSpec, act: bool) -> Plan {
        let observed = self.observe();
        let plan = plan_next_step(spec, &observed, &Settings::default());
        self.status = Some(status_of(&observed, &plan, self.status.as_ref(), Some(1)));
        if act {
            self.apply(&plan);
        }
        self.settle();
        plan
    }

    /// Reconciles until the plan says steady; every step keeps a quorum.
    fn converge(&mut self, spec: &KvsClusterSpec) -> Vec<Step> {
        let mut steps = Vec::new();
        for _ in 0..200 {
            let plan = self.reconcile(spec, true);
            // An unsafe upgrade waits for the user, not for the world.
            if matches!(
                plan.step,
                Step::Wait(Wait::Steady | Wait::UpgradeUnsafe { .. } | Wait::Hibernated)
            ) {
                return steps;
            }
            // A restart of a durable member of a one- or two-member cluster stops it for a
            // moment: no budget can prevent that, which the PDB warning tells the user.
            let voters = self.members.iter().filter(|m| m.voter).count();
            let brief = self.durable && voters <= 2 && matches!(plan.step, Step::RestartPod { .. });
            let asleep = matches!(plan.step, Step::Hibernate) || self.replicas == Some(0);
            if !self.members.is_empty() && !brief && !asleep {
                assert!(self.has_quorum(), "quorum lost after {:?}", plan.step);
            }
            steps.push(plan.step);
        }
        panic!("did not converge: {steps:#?}");
    }

    fn member_ordinals(&self) -> Vec<u32> {
        let mut ordinals: Vec<u32> = self.members.iter().map(|m| m.ordinal).collect();
        ordinals.sort_unstable();
        ordinals
    }

    fn assert_matches_spec(&self, replicas: u32) {
        assert_eq!(self.member_ordinals(), (0..replicas).collect::<Vec<_>>());
        assert!(self.members.iter().all(|m| m.voter && self.healthy(m)));
        assert_eq!(self.replicas, Some(replicas));
        if self.durable {
            assert_eq!(
                self.claims.keys().copied().collect::<Vec<_>>(),
                (0..replicas).collect::<Vec<_>>()
            );
        }
        let status = self.status.as_ref().expect("a status");
        assert_eq!(status.replicas, replicas as i32);
        assert_eq!(status.cluster_id.as_deref(), Some(CLUSTER));
    }

    /// A new image: every running pod is on an older template.
    fn outdate_all(&mut self) {
        for pod in self.pods.values_mut() {
            pod.outdated = true;
        }
    }

    fn leader_ordinal(&self) -> u32 {
        let leader = self.leader.as_ref().expect("a leader");
        self.members
            .iter()
            .find(|m| &m.id == leader)
            .expect("leader is a member")
            .ordinal
    }
}

fn ordinal_of(pod: &str) -> u32 {
    pod.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("pod names end in their ordinal")
}

fn running(replicas: i32, durable: bool) -> World {
    let mut world = World::new(durable);
    world.converge(&spec(replicas, durable));
    world.assert_matches_spec(replicas as u32);
    world
}

fn names(steps: &[Step]) -> Vec<&'static str> {
    steps.iter().map(Step::reason).collect()
}

#[test]
fn a_new_cluster_starts_with_one_pod_initializes_it_and_grows_one_member_at_a_time() {
    let mut world = World::new(true);
    let steps = world.converge(&spec(3, true));
    assert_eq!(
        names(&steps),
        [
            "CreatingWorkload",
            "Initializing",
            "ScalingStatefulSet",
            "AddingLearner",
            "PromotingLearner",
            "ScalingStatefulSet",
            "AddingLearner",
            "PromotingLearner",
        ]
    );
    assert_eq!(steps[0], Step::CreateWorkload);
    world.assert_matches_spec(3);
}

#[test]
fn scale_up_waits_for_node_info_before_adding_a_learner() {
    let mut world = running(1, true);
    let plan = world.reconcile(&spec(2, true), true);
    assert_eq!(plan.step, Step::ScaleStatefulSet { from: 1, to: 2 });
    world.pods.get_mut(&1).expect("pod 1 was created").up = false;
    let plan = world.reconcile(&spec(2, true), true);
    assert_eq!(
        plan.step,
        Step::Wait(Wait::PodStarting {
            pod: "kvs-1".into()
        })
    );
    world.pods.get_mut(&1).expect("pod 1").up = true;
    let plan = world.reconcile(&spec(2, true), true);
    assert_eq!(plan.step.reason(), "AddingLearner");
}

#[test]
fn a_learner_is_promoted_only_once_caught_up() {
    let mut world = running(1, true);
    world.reconcile(&spec(2, true), true);
    world.reconcile(&spec(2, true), true);
    let behind = membership::MAX_CAUGHT_UP_LAG + 1;
    // Too far behind; and level with a log so short that it has acknowledged nothing yet.
    for (matched_index, lag) in [(1, behind), (0, 0)] {
        let mut observed = world.observe();
        let learner = observed
            .membership
            .as_mut()
            .and_then(|members| members.iter_mut().find(|m| !m.voter))
            .expect("a learner");
        learner.matched_index = matched_index;
        learner.lag = lag;
        let plan = plan_next_step(&spec(2, true), &observed, &Settings::default());
        assert_eq!(
            plan.step,
            Step::Wait(Wait::LearnerCatchingUp {
                pod: "kvs-1".into()
            }),
            "matched index {matched_index}, lag {lag}"
        );
    }
    let plan = world.reconcile(&spec(2, true), true);
    assert_eq!(plan.step.reason(), "PromotingLearner");
}

#[test]
fn scale_down_removes_the_highest_ordinal_then_shrinks_then_deletes_its_volume() {
    let mut world = running(5, true);
    world.leader = Some(world.members[0].id.clone());
    let steps = world.converge(&spec(3, true));
    assert_eq!(
        steps,
        [
            Step::RemoveMember {
                id: world_id(&steps, 0),
                pod: Some("kvs-4".into()),
                because: Removal::ScaleDown
            },
            Step::RemoveMember {
                id: world_id(&steps, 1),
                pod: Some("kvs-3".into()),
                because: Removal::ScaleDown
            },
            Step::ScaleStatefulSet { from: 5, to: 3 },
            Step::DeleteClaim { ordinal: 3 },
            Step::DeleteClaim { ordinal: 4 },
        ]
    );
    world.assert_matches_spec(3);
}

fn world_id(steps: &[Step], index: usize) -> String {
    match &steps[index] {
        Step::RemoveMember { id, .. } => id.clone(),
        other => panic!("expected a removal, got {other:?}"),
    }
}

#[test]
fn ordinals_are_compared_as_numbers() {
    let mut world = running(1, false);
    let mut observed = world.observe();
    let members = observed.membership.as_mut().expect("membership");
    for ordinal in [2, 10] {
        members.push(MemberView {
            id: format!("{ordinal:016x}"),
            address: address(ordinal),
            ordinal: Some(ordinal),
            voter: false,
            leader: false,
            matched_index: 1,
            lag: 0,
        });
    }
    observed.statefulset_replicas = Some(11);
    let plan = plan_next_step(&spec(1, false), &observed, &Settings::default());
    assert_eq!(
        plan.step,
        Step::RemoveMember {
            id: format!("{:016x}", 10),
            pod: None,
            because: Removal::ScaleDown
        }
    );
    world.status = None;
}

#[test]
fn the_leader_hands_over_before_it_is_removed() {
    let mut world = running(3, true);
    world.leader = Some(
        world
            .members
            .iter()
            .find(|m| m.ordinal == 2)
            .expect("kvs-2")
            .id
            .clone(),
    );
    let plan = world.reconcile(&spec(2, true), true);
    assert!(matches!(
        plan.step,
        Step::TransferLeadership {
            because: Transfer::ScaleDown,
            ..
        }
    ));
    assert_eq!(world.leader_ordinal(), 0);
    world.converge(&spec(2, true));
    world.assert_matches_spec(2);
}

#[test]
fn scaling_to_one_and_back_keeps_the_cluster() {
    let mut world = running(3, true);
    world.converge(&spec(1, true));
    world.assert_matches_spec(1);
    world.converge(&spec(3, true));
    world.assert_matches_spec(3);
}

#[test]
fn a_wiped_middle_member_is_removed_and_rejoins_as_a_new_learner() {
    let mut world = running(3, true);
    let old = world.pods[&1].node_id.clone();
    // The volume is replaced: a new identity at the same address.
    let new = world.new_id();
    world.pods.get_mut(&1).expect("kvs-1").node_id = new.clone();
    world.claims.insert(1, new.clone());
    let steps = world.converge(&spec(3, true));
    assert_eq!(
        steps[0],
        Step::RemoveMember {
            id: old,
            pod: Some("kvs-1".into()),
            because: Removal::Replaced
        }
    );
    assert_eq!(names(&steps[1..]), ["AddingLearner", "PromotingLearner"]);
    world.assert_matches_spec(3);
    assert!(world.members.iter().any(|m| m.id == new));
}

#[test]
fn an_in_memory_restart_of_any_member_is_a_replacement() {
    let mut world = running(3, false);
    world.pods.remove(&0);
    world.settle();
    let steps = world.converge(&spec(3, false));
    assert_eq!(
        names(&steps),
        ["ReplacingMember", "AddingLearner", "PromotingLearner"]
    );
    world.assert_matches_spec(3);
}

#[test]
fn a_member_unhealthy_past_the_timeout_is_removed_and_its_pod_recycled() {
    let mut world = running(3, true);
    world.pods.get_mut(&1).expect("kvs-1").up = false;
    let spec = spec(3, true);
    let mut waits = 0;
    let plan = loop {
        let plan = world.reconcile(&spec, true);
        if plan.step.acts() {
            break plan;
        }
        assert_eq!(plan.step.reason(), "MemberUnhealthy");
        waits += 1;
    };
    // 10 s per reconcile in this world, 300 s timeout.
    assert!(waits >= 29, "removed after only {waits} reconciles");
    assert_eq!(plan.step.reason(), "RemovingFailedMember");
    // The node comes back with its old, removed identity: it must not rejoin as itself.
    world.pods.get_mut(&1).expect("kvs-1").up = true;
    let steps = world.converge(&spec);
    assert_eq!(
        names(&steps),
        [
            "RecyclingRemovedIdentity",
            "AddingLearner",
            "PromotingLearner"
        ]
    );
    world.assert_matches_spec(3);
}

#[test]
fn a_stale_retained_claim_is_deleted_before_its_pod_starts() {
    let mut world = running(2, true);
    // A volume left behind at ordinal 2 by a removed member.
    world.claims.insert(2, "00000000deadbeef".into());
    let steps = world.converge(&spec(3, true));
    assert_eq!(steps[0], Step::DeleteClaim { ordinal: 2 });
    assert_eq!(steps[1], Step::ScaleStatefulSet { from: 2, to: 3 });
    world.assert_matches_spec(3);
    assert!(world.members.iter().all(|m| m.id != "00000000deadbeef"));
}

#[test]
fn rolling_upgrade_restarts_followers_one_at_a_time_and_the_leader_last() {
    let mut world = running(3, true);
    world.leader = Some(
        world
            .members
            .iter()
            .find(|m| m.ordinal == 1)
            .expect("kvs-1")
            .id
            .clone(),
    );
    world.outdate_all();
    let steps = world.converge(&spec(3, true));
    assert_eq!(
        steps.iter().map(|s| s.message()).collect::<Vec<_>>()[..2],
        [
            "restarting kvs-2 onto the current template".to_owned(),
            "restarting kvs-0 onto the current template".to_owned()
        ]
    );
    assert!(matches!(
        steps[2],
        Step::TransferLeadership {
            because: Transfer::Upgrade,
            ..
        }
    ));
    assert_eq!(
        steps[3],
        Step::RestartPod {
            pod: "kvs-1".into()
        }
    );
    assert_eq!(steps.len(), 4);
    world.assert_matches_spec(3);
}

#[test]
fn an_upgrade_waits_for_a_restarted_member_to_come_back() {
    let mut world = running(3, true);
    world.outdate_all();
    let plan = world.reconcile(&spec(3, true), true);
    assert_eq!(plan.step.reason(), "RestartingOutdatedPod");
    // The restarted pod is recreated but not answering yet.
    let restarted = ordinal_of(match &plan.step {
        Step::RestartPod { pod } => pod,
        _ => unreachable!("checked above"),
    });
    world.pods.get_mut(&restarted).expect("recreated").up = false;
    let plan = world.reconcile(&spec(3, true), true);
    assert_eq!(plan.step.reason(), "MemberUnhealthy");
}

#[test]
fn nothing_is_done_without_quorum() {
    let mut world = running(3, true);
    world.pods.get_mut(&1).expect("kvs-1").up = false;
    world.pods.get_mut(&2).expect("kvs-2").up = false;
    world.settle();
    for _ in 0..100 {
        let plan = world.reconcile(&spec(5, true), true);
        assert_eq!(plan.step, Step::Wait(Wait::NoQuorum));
    }
    let status = world.status.as_ref().expect("status");
    assert_eq!(status.phase, Some(Phase::QuorumLost));
    // The members are still listed, none healthy.
    assert_eq!(status.replicas, 3);
    assert!(status.members.iter().all(|member| !member.healthy));
    let quorum_lost = status.conditions.iter().find(|c| c.type_ == "QuorumLost");
    assert_eq!(quorum_lost.map(|c| c.status.as_str()), Some("True"));
}

#[test]
fn two_of_three_members_healthy_is_degraded_but_keeps_working() {
    let mut world = running(3, true);
    world.pods.get_mut(&2).expect("kvs-2").up = false;
    let plan = world.reconcile(&spec(3, true), true);
    assert_eq!(plan.step.reason(), "MemberUnhealthy");
    let status = world.status.as_ref().expect("status");
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(status.ready_replicas, 2);
    // Scaling up waits until the member is back rather than adding a fourth seat now.
    let plan = world.reconcile(&spec(5, true), true);
    assert_eq!(plan.step.reason(), "MemberUnhealthy");
}

#[test]
fn paused_touches_nothing() {
    let mut world = running(3, true);
    let mut paused = spec(1, true);
    paused.paused = true;
    let plan = world.reconcile(&paused, true);
    assert_eq!(
        plan,
        Plan {
            replicas: None,
            step: Step::Paused
        }
    );
    world.assert_matches_spec(3);
}

#[test]
fn an_existing_cluster_is_adopted_not_initialized_again() {
    let mut world = running(3, true);
    // The KvsCluster was deleted with retained volumes and created again.
    world.status = None;
    world.replicas = None;
    world.settle();
    let steps = world.converge(&spec(3, true));
    assert_eq!(steps[0], Step::CreateWorkload);
    assert_eq!(
        steps[1],
        Step::Adopt {
            cluster_id: CLUSTER.into()
        }
    );
    assert_eq!(steps.len(), 2);
    world.assert_matches_spec(3);
}

#[test]
fn an_in_memory_cluster_is_not_restarted_below_its_majority() {
    let mut world = running(2, false);
    world.outdate_all();
    let plan = world.reconcile(&spec(2, false), true);
    assert_eq!(plan.step.reason(), "UpgradeUnsafe");
}

#[test]
fn a_pod_of_another_cluster_is_left_alone() {
    let mut world = running(1, true);
    world
        .node_cluster
        .insert(world.pods[&0].node_id.clone(), "another".into());
    let plan = world.reconcile(&spec(1, true), true);
    assert!(matches!(plan.step, Step::Wait(Wait::ForeignCluster { .. })));
}

#[test]
fn deleting_a_pod_by_hand_never_shrinks_the_cluster() {
    let mut world = running(3, true);
    world.pods.remove(&1);
    let steps = world.converge(&spec(3, true));
    assert!(steps.iter().all(|step| !step.acts()), "{steps:?}");
    world.assert_matches_spec(3);
}

#[derive(Clone, Debug)]
enum Event {
    Scale(i32),
    /// The operator stops after planning and never carries the step out.
    Crash,
    Wipe(u32),
    Outdate,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (1..=5i32).prop_map(Event::Scale),
        Just(Event::Crash),
        (0..5u32).prop_map(Event::Wipe),
        Just(Event::Outdate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever happens between reconciles — a new spec, a crash before acting, a wiped volume,
    /// a new image — the cluster keeps its quorum at every step and ends exactly as specified.
    #[test]
    fn every_history_converges_to_the_spec(
        durable in any::<bool>(),
        events in proptest::collection::vec(event(), 1..12),
    ) {
        let mut world = running(3, durable);
        let mut replicas = 3;
        for event in events {
            match event {
                Event::Scale(to) => replicas = to,
                Event::Crash => {
                    world.reconcile(&spec(replicas, durable), false);
                }
                Event::Wipe(ordinal) => {
                    let new = world.new_id();
                    if let Some(pod) = world.pods.get_mut(&ordinal) {
                        pod.node_id = new.clone();
                        if durable {
                            world.claims.insert(ordinal, new);
                        }
                    }
                    world.settle();
                }
                Event::Outdate => world.outdate_all(),
            }
            // A wipe can take a majority only when it hits one of two members.
            if world.has_quorum() {
                world.reconcile(&spec(replicas, durable), true);
            }
        }
        if world.has_quorum() {
            world.converge(&spec(replicas, durable));
            world.assert_matches_spec(replicas as u32);
        }
    }
}

fn condition<'a>(world: &'a World, kind: &str) -> &'a Condition {
    let status = world.status.as_ref().expect("a status");
    status
        .conditions
        .iter()
        .find(|condition| condition.type_ == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {:?}", status.conditions))
}

#[test]
fn ready_holds_only_while_every_member_the_spec_asks_for_is_ready() {
    let mut world = running(3, true);
    let ready = condition(&world, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "MembersReady")
    );

    // Asked for more members than there are: not Ready, and the reason says why.
    world.reconcile(&spec(5, true), false);
    let ready = condition(&world, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ScalingStatefulSet")
    );

    // A member down: not Ready either.
    let mut world = running(3, true);
    world.pods.get_mut(&2).expect("kvs-2").up = false;
    world.reconcile(&spec(3, true), true);
    let ready = condition(&world, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "MemberUnhealthy")
    );
}

#[test]
fn a_one_member_durable_cluster_restarts_in_place_onto_a_new_image() {
    let mut world = running(1, true);
    world.outdate_all();
    let steps = world.converge(&spec(1, true));
    assert_eq!(names(&steps), ["RestartingOutdatedPod"]);
    assert!(world.pods.values().all(|pod| !pod.outdated));
    world.assert_matches_spec(1);
}

#[test]
fn a_one_member_in_memory_cluster_reports_its_upgrade_as_unsafe() {
    let mut world = running(1, false);
    world.outdate_all();
    let plan = world.reconcile(&spec(1, false), true);
    assert_eq!(plan.step.reason(), "UpgradeUnsafe");
    let status = world.status.as_ref().expect("a status");
    assert_ne!(status.phase, Some(Phase::Running), "the image is old");
}

/// A node-pool upgrade takes a majority down for longer than the failure timeout; members not
/// yet back when the quorum returns are given the whole timeout again, counted from then.
#[test]
fn the_failure_timer_restarts_when_the_quorum_returns() {
    let mut world = running(3, true);
    for ordinal in [1, 2] {
        world.pods.get_mut(&ordinal).expect("a pod").up = false;
    }
    world.settle();
    // 400 reconciles 10 s apart: far past any failure timeout.
    for _ in 0..400 {
        world.reconcile(&spec(3, true), true);
    }
    world.pods.get_mut(&1).expect("kvs-1").up = true;
    world.settle();
    let plan = world.reconcile(&spec(3, true), true);
    assert_eq!(plan.step.reason(), "MemberUnhealthy", "{plan:?}");
}

/// Only a member the kubelet also reports not Ready is given up: an operator that merely cannot
/// reach a pod must not wipe it.
#[test]
fn a_member_whose_pod_the_kubelet_reports_ready_is_not_removed() {
    let world = running(3, true);
    let mut observed = world.observe();
    let since = observed.now - Duration::from_secs(3600);
    let member = observed.membership.as_ref().expect("members")[2].id.clone();
    observed.unhealthy_since.insert(member, since);
    let pod = observed
        .pods
        .iter_mut()
        .find(|pod| pod.ordinal == 2)
        .expect("kvs-2");
    pod.identity = None;
    pod.ready = true;
    let plan = plan_next_step(&spec(3, true), &observed, &Settings::default());
    assert_eq!(plan.step.reason(), "MemberUnhealthy");
    let pod = observed
        .pods
        .iter_mut()
        .find(|pod| pod.ordinal == 2)
        .expect("kvs-2");
    pod.ready = false;
    let plan = plan_next_step(&spec(3, true), &observed, &Settings::default());
    assert_eq!(plan.step.reason(), "RemovingFailedMember");
}

#[test]
fn durable_members_are_given_longer_than_in_memory_ones() {
    let settings = Settings::default();
    assert!(settings.failure_timeout_for(true) > settings.failure_timeout_for(false));
}

/// kubernetes#74374: the StatefulSet controller recreated a recycled pod while its claim was
/// still terminating (or already gone); such a pod stays Pending forever unless deleted again.
#[test]
fn a_pod_pending_on_a_missing_or_terminating_claim_is_deleted_again() {
    let world = running(3, true);
    let mut observed = world.observe();
    if let Some(members) = observed.membership.as_mut() {
        members.retain(|member| member.ordinal != Some(2));
    }
    let pod = observed
        .pods
        .iter_mut()
        .find(|pod| pod.ordinal == 2)
        .expect("kvs-2");
    pod.identity = None;
    pod.pending = true;
    observed.terminating_claims = vec![2];
    let plan = plan_next_step(&spec(3, true), &observed, &Settings::default());
    assert_eq!(
        plan.step,
        Step::RecreatePod {
            pod: "kvs-2".into()
        }
    );
    observed.terminating_claims.clear();
    observed.claims.retain(|&ordinal| ordinal != 2);
    let plan = plan_next_step(&spec(3, true), &observed, &Settings::default());
    assert_eq!(plan.step.reason(), "RecreatingStuckPod");
    // A pending pod whose claim is fine is only waited for.
    observed.claims.push(2);
    let plan = plan_next_step(&spec(3, true), &observed, &Settings::default());
    assert_ne!(plan.step.reason(), "RecreatingStuckPod");
}

/// A KvsCluster re-created over retained claims whose pod-0 lost its volume: pod-0 answers
/// first with no cluster, but the others' volumes hold one. Initializing pod-0 then would put
/// two datasets behind one Service; the others are waited for and their cluster adopted.
#[test]
fn pod_zero_is_not_initialized_while_other_claims_exist_or_pods_are_silent() {
    let mut world = running(3, true);
    world.status = None;
    world.replicas = None;
    let fresh = world.new_id();
    world.pods.get_mut(&0).expect("kvs-0").node_id = fresh.clone();
    world.claims.insert(0, fresh);
    let plan = world.reconcile(&spec(3, true), true);
    assert_eq!(plan.step, Step::CreateWorkload);
    // The pods are back; 1 and 2 are slower to answer than the fresh pod-0.
    for ordinal in [1, 2] {
        world.pods.get_mut(&ordinal).expect("a pod").up = false;
    }
    for _ in 0..3 {
        let plan = world.reconcile(&spec(3, true), true);
        assert!(
            matches!(plan.step, Step::Wait(Wait::PodStarting { .. })),
            "{plan:?}"
        );
    }
    for ordinal in [1, 2] {
        world.pods.get_mut(&ordinal).expect("a pod").up = true;
    }
    world.settle();
    let plan = world.reconcile(&spec(3, true), true);
    assert_eq!(plan.step.reason(), "AdoptingCluster");
}

#[test]
fn a_switchover_moves_leadership_to_the_named_pod_then_is_finished() {
    let mut world = running(3, true);
    assert_eq!(world.leader_ordinal(), 0);
    world.switchover = Some("kvs-2".into());
    let steps = world.converge(&spec(3, true));
    assert_eq!(
        names(&steps),
        ["TransferringLeadership", "SwitchedOver"],
        "{steps:?}"
    );
    assert_eq!(world.leader_ordinal(), 2);
    assert_eq!(world.switchover, None);
}

#[test]
fn a_switchover_to_a_pod_that_is_no_ready_voter_is_refused() {
    let mut world = running(3, true);
    world.switchover = Some("kvs-7".into());
    let plan = world.reconcile(&spec(3, true), true);
    assert!(
        matches!(
            &plan.step,
            Step::FinishSwitchover {
                refused: Some(_),
                ..
            }
        ),
        "{plan:?}"
    );
    assert_eq!(plan.step.reason(), "SwitchoverRefused");
    assert_eq!(world.switchover, None);
    assert_eq!(world.leader_ordinal(), 0);
}

#[test]
fn hibernation_stops_every_pod_and_resumes_the_same_cluster() {
    let mut world = running(3, true);
    let members: Vec<String> = world.members.iter().map(|m| m.id.clone()).collect();
    let mut hibernating = spec(3, true);
    hibernating.hibernate = true;
    let steps = world.converge(&hibernating);
    assert_eq!(names(&steps), ["Hibernating"]);
    assert!(world.pods.is_empty());
    assert_eq!(world.claims.len(), 3, "the volumes are kept");
    let status = world.status.as_ref().expect("a status");
    assert_eq!(status.phase, Some(Phase::Hibernated));
    assert_eq!(status.replicas, 3, "the members are still listed");
    // A long sleep is no failure.
    for _ in 0..400 {
        world.reconcile(&hibernating, true);
    }
    let steps = world.converge(&spec(3, true));
    assert_eq!(names(&steps), ["ScalingStatefulSet"]);
    world.assert_matches_spec(3);
    let after: Vec<String> = world.members.iter().map(|m| m.id.clone()).collect();
    assert_eq!(after, members, "the same members, not new ones");
}
