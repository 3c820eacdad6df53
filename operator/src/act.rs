//! Carries out one planned step.
//!
//! Owned objects are written with server-side apply under one field manager, so applying the
//! same objects again changes nothing and a field the operator owns is put back if someone edits
//! it. Membership calls go through `kvs-client` and are idempotent on the node's side; whatever
//! happens, the next reconcile re-reads the membership, so a step cut short is simply planned
//! again. Every step that changes something is also an Event on the KvsCluster.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use kvs_client::Client as KvsClient;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{KvsCluster, KvsClusterStatus, SWITCHOVER_TO};
use crate::error::{Error, Result};
use crate::observe::Resolver;
use crate::plan::{Plan, Step, Wait};
use crate::resources::Blueprint;

/// The field manager of everything the operator writes.
pub(crate) const FIELD_MANAGER: &str = "kvs-operator";

/// Everything a step may touch.
pub(crate) struct Actor<'a> {
    pub(crate) client: &'a kube::Client,
    pub(crate) recorder: &'a Recorder,
    pub(crate) resolver: &'a dyn Resolver,
    pub(crate) blueprint: &'a Blueprint<'a>,
    /// A client for the cluster's pods; `None` when there are no pods yet.
    pub(crate) kvs: Option<&'a KvsClient>,
}

impl Actor<'_> {
    /// Applies the owned objects (unless paused) and carries out the step. Returns the cluster
    /// ID when the step formed the Raft cluster, so the status records it at once.
    pub(crate) async fn act(&self, plan: &Plan) -> Result<Option<String>> {
        if let Some(replicas) = plan.replicas {
            self.apply_workload(replicas).await?;
        }
        let formed = self.carry_out(&plan.step).await?;
        if plan.step.acts() {
            let type_ = match plan.step {
                Step::FinishSwitchover {
                    refused: Some(_), ..
                } => EventType::Warning,
                _ => EventType::Normal,
            };
            self.event(type_, &plan.step).await;
        }
        Ok(formed)
    }

    async fn apply_workload(&self, replicas: u32) -> Result<()> {
        let blueprint = self.blueprint;
        self.apply(&blueprint.headless_service()).await?;
        self.apply(&blueprint.client_service()).await?;
        // An optional object can only have become unwanted through a spec change, so it is
        // deleted once per new generation rather than on every pass.
        let cluster = blueprint.cluster;
        let spec_changed = cluster.status.as_ref().and_then(|s| s.observed_generation)
            != cluster.metadata.generation;
        let budget_name = blueprint.names.statefulset();
        match blueprint.disruption_budget() {
            Some(budget) => self.apply(&budget).await?,
            None if spec_changed => self.delete::<PodDisruptionBudget>(budget_name).await?,
            None => {}
        }
        match blueprint.network_policy() {
            Some(policy) => self.apply(&policy).await?,
            None if spec_changed => {
                let name = blueprint.names.headless_service();
                self.delete::<NetworkPolicy>(&name).await?;
            }
            None => {}
        }
        self.apply(&blueprint.statefulset(replicas)).await
    }

    async fn carry_out(&self, step: &Step) -> Result<Option<String>> {
        match step {
            Step::Initialize { pod } => {
                let ordinal = self.ordinal(pod)?;
                let dial = self.resolver.resolve(&self.blueprint.names, ordinal).dial;
                let formed = self.kvs()?.initialize(&dial).await?;
                return Ok(Some(formed.cluster_id));
            }
            Step::AddLearner { address, .. } => {
                self.kvs()?.add_learner(address).await?;
            }
            Step::Promote { id, .. } => self.kvs()?.promote(id).await?,
            Step::TransferLeadership { to, .. } => {
                self.kvs()?.transfer_leader(Some(to)).await?;
            }
            Step::RemoveMember { id, .. } => self.kvs()?.remove(id).await?,
            Step::Recycle { pod, ordinal } => {
                // The claim first: it is only released once the pod is gone, and then the
                // StatefulSet controller recreates the pod with a fresh one.
                self.delete_claim(*ordinal).await?;
                self.delete::<Pod>(pod).await?;
            }
            Step::DeleteClaim { ordinal } => self.delete_claim(*ordinal).await?,
            Step::RestartPod { pod } | Step::RecreatePod { pod } => {
                self.delete::<Pod>(pod).await?;
            }
            Step::Wait(
                Wait::NoQuorum | Wait::ForeignCluster { .. } | Wait::UpgradeUnsafe { .. },
            ) => {
                self.event(EventType::Warning, step).await;
            }
            Step::FinishSwitchover { .. } => self.clear_switchover().await?,
            Step::Paused
            | Step::Hibernate
            | Step::CreateWorkload
            | Step::ScaleStatefulSet { .. }
            | Step::Adopt { .. }
            | Step::Wait(_) => {}
        }
        Ok(None)
    }

    /// Removes the switchover request, so it is carried out once.
    async fn clear_switchover(&self) -> Result<()> {
        let cluster = self.blueprint.cluster;
        let api: Api<KvsCluster> =
            Api::namespaced(self.client.clone(), self.blueprint.names.namespace());
        let patch = serde_json::json!({"metadata": {"annotations": {SWITCHOVER_TO: null}}});
        api.patch(
            &cluster.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        Ok(())
    }

    /// Tells the user about a cluster that cannot survive a disruption, once per spec change.
    pub(crate) async fn warn_small_cluster(&self, cluster: &KvsCluster) {
        let spec_changed = cluster.status.as_ref().and_then(|s| s.observed_generation)
            != cluster.metadata.generation;
        if cluster.spec.replicas <= 2 && spec_changed {
            let note = format!(
                "{} member(s): losing any one stops the cluster, so no PodDisruptionBudget can \
                 protect it; use 3 or more members for availability",
                cluster.spec.replicas
            );
            self.publish(EventType::Warning, "NoDisruptionBudget", note)
                .await;
        }
    }

    fn kvs(&self) -> Result<&KvsClient> {
        self.kvs.ok_or(kvs_client::Error::NoEndpoints.into())
    }

    fn ordinal(&self, pod: &str) -> Result<u32> {
        self.blueprint
            .names
            .ordinal_of(pod)
            .ok_or_else(|| Error::Unidentified(pod.to_owned()))
    }

    async fn delete_claim(&self, ordinal: u32) -> Result<()> {
        if self.blueprint.cluster.spec.storage.in_memory {
            return Ok(());
        }
        let name = self.blueprint.names.claim(ordinal);
        self.delete::<PersistentVolumeClaim>(&name).await
    }

    async fn apply<K>(&self, object: &K) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.blueprint.names.namespace());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&object.name_any(), &params, &Patch::Apply(object))
            .await?;
        Ok(())
    }

    /// Deletes an object; one already gone is fine.
    async fn delete<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.blueprint.names.namespace());
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn event(&self, type_: EventType, step: &Step) {
        self.publish(type_, step.reason(), step.message()).await;
    }

    async fn publish(&self, type_: EventType, reason: &str, note: String) {
        publish(self.recorder, self.blueprint.cluster, type_, reason, note).await;
    }
}

/// Records an Event on `object` (a KvsCluster or a KvsBackup). Events are for people; failing to
/// record one never fails a reconcile.
pub(crate) async fn publish<K>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) where
    K: kube::Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: reason.to_owned(),
        secondary: None,
    };
    let reference = object.object_ref(&());
    if let Err(err) = recorder.publish(&event, &reference).await {
        tracing::warn!(%err, reason, "could not record an event");
    }
}

/// Writes the status with server-side apply under the operator's field manager.
pub(crate) async fn apply_status(
    client: &kube::Client,
    cluster: &KvsCluster,
    status: &KvsClusterStatus,
) -> Result<()> {
    let namespace = cluster
        .namespace()
        .ok_or_else(|| Error::Unidentified(cluster.name_any()))?;
    let api: Api<KvsCluster> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": KvsCluster::api_version(&()),
        "kind": KvsCluster::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&cluster.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}
