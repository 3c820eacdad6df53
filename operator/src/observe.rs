//! Reads everything the plan decides on into one [`Observation`].
//!
//! Kubernetes objects (StatefulSet, pods, claims) come from the API server; who runs at each pod
//! comes from the pods themselves (`NodeInfo`, one attempt each, bounded), and the membership from
//! the leader. Pods are dialed through a [`Resolver`], which maps an ordinal to the address the
//! node advertises (what members are matched by) and the address the operator dials: the same in
//! a cluster, different when tests run nodes on loopback.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kvs_client::{Client as KvsClient, ClientOptions};

use crate::crd::{KvsCluster, MAX_REPLICAS, SWITCHOVER_TO};
use crate::error::{Error, Result};
use crate::plan::{Identity, MemberView, Observation, PodView};
use crate::resources::{CLIENT_PORT, Names};

/// The label the StatefulSet controller puts on a pod: the template revision it runs.
const REVISION_LABEL: &str = "controller-revision-hash";

/// How long one `NodeInfo` or membership read may take before the pod counts as not answering.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// The two addresses of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAddress {
    /// What the node advertises (`--advertise`) and members are recorded under.
    pub advertised: String,
    /// Where the operator reaches it.
    pub dial: String,
}

/// Maps a pod of a cluster to its addresses.
///
/// Members are matched to pods by advertised address, so distinct ordinals must resolve to
/// distinct advertised addresses — for every ordinal a member could sit at, including ones beyond
/// the pods that exist. A resolver that gives two ordinals one address is refused by
/// [`Error::AmbiguousAddress`](crate::Error::AmbiguousAddress) instead of being trusted.
pub trait Resolver: Send + Sync + 'static {
    /// The addresses of the pod at `ordinal` of the cluster named by `names`.
    fn resolve(&self, names: &Names, ordinal: u32) -> PodAddress;
}

/// Pods reached by their stable DNS names, as inside a Kubernetes cluster.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterDns;

impl Resolver for ClusterDns {
    fn resolve(&self, names: &Names, ordinal: u32) -> PodAddress {
        let address = format!("{}:{CLIENT_PORT}", names.pod_host(ordinal));
        PodAddress {
            advertised: address.clone(),
            dial: address,
        }
    }
}

/// The kvs client options of the operator: short, since a slow pod must not stall a reconcile.
pub(crate) fn client_options() -> ClientOptions {
    ClientOptions {
        timeout: ASK_TIMEOUT,
        attempt_timeout: ASK_TIMEOUT,
        ..ClientOptions::default()
    }
}

/// What the operator needs to observe a cluster.
pub(crate) struct Observer<'a> {
    pub(crate) client: &'a kube::Client,
    pub(crate) resolver: &'a dyn Resolver,
    pub(crate) names: &'a Names,
}

impl Observer<'_> {
    /// Reads the cluster's objects, asks every pod who it is and the leader for the membership.
    pub(crate) async fn observe(
        &self,
        cluster: &KvsCluster,
        now: Timestamp,
    ) -> Result<(Observation, Option<KvsClient>)> {
        let ordinals = ordinals_by_address(self.resolver, self.names)?;
        let namespace = self.names.namespace();
        let statefulsets: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let selector = ListParams::default().labels(&self.names.selector_string());

        let statefulset = statefulsets.get_opt(self.names.statefulset()).await?;
        let update_revision = statefulset
            .as_ref()
            .and_then(|set| set.status.as_ref())
            .and_then(|status| status.update_revision.clone());
        let mut pod_views: Vec<PodView> = pods
            .list(&selector)
            .await?
            .items
            .iter()
            .filter_map(|pod| self.pod_view(pod, update_revision.as_deref()))
            .collect();
        pod_views.sort_by_key(|pod| pod.ordinal);
        let claim_list = claims.list(&selector).await?.items;
        let ordinals_of = |terminating_only: bool| {
            let mut found: Vec<u32> = claim_list
                .iter()
                .filter(|claim| !terminating_only || claim.metadata.deletion_timestamp.is_some())
                .filter_map(|claim| self.names.claim_ordinal(&claim.name_any()))
                .collect();
            found.sort_unstable();
            found
        };
        let claim_ordinals = ordinals_of(false);
        let terminating_claims = ordinals_of(true);

        let dials: Vec<String> = pod_views
            .iter()
            .map(|pod| self.resolver.resolve(self.names, pod.ordinal).dial)
            .collect();
        let kvs = (!dials.is_empty())
            .then(|| KvsClient::connect(dials.clone(), client_options()))
            .transpose()?;
        let membership = match &kvs {
            Some(kvs) => {
                let identities =
                    futures::future::join_all(dials.iter().map(|dial| kvs.node_info(dial))).await;
                for (pod, info) in pod_views.iter_mut().zip(identities) {
                    pod.identity = match info {
                        Ok(info) if !pod.terminating => Some(Identity {
                            leader_known: info.is_member && !info.leader.is_empty(),
                            node_id: info.node_id,
                            cluster_id: info.cluster_id,
                        }),
                        Ok(_) => None,
                        Err(err) => {
                            tracing::debug!(pod = pod.name, %err, "pod did not answer NodeInfo");
                            None
                        }
                    };
                }
                // Only a member can name the leader; asking pods that are none would only
                // spend the whole deadline on retries.
                if pod_views
                    .iter()
                    .any(|pod| pod.identity.as_ref().is_some_and(|i| i.leader_known))
                {
                    self.membership(kvs, &ordinals).await
                } else {
                    None
                }
            }
            None => None,
        };

        let status = cluster.status.as_ref();
        Ok((
            Observation {
                now,
                recorded_cluster_id: status.and_then(|status| status.cluster_id.clone()),
                unhealthy_since: status
                    .iter()
                    .flat_map(|status| &status.members)
                    .filter_map(|member| {
                        let since = member.unhealthy_since.as_deref()?.parse().ok()?;
                        Some((member.id.clone(), since))
                    })
                    .collect(),
                statefulset_replicas: statefulset
                    .as_ref()
                    .and_then(|set| set.spec.as_ref())
                    .and_then(|spec| spec.replicas)
                    .map(|replicas| u32::try_from(replicas).unwrap_or(0)),
                pods: pod_views,
                claims: claim_ordinals,
                terminating_claims,
                switchover_to: cluster.annotations().get(SWITCHOVER_TO).cloned(),
                membership,
            },
            kvs,
        ))
    }

    fn pod_view(&self, pod: &Pod, update_revision: Option<&str>) -> Option<PodView> {
        let name = pod.name_any();
        let ordinal = self.names.ordinal_of(&name)?;
        let revision = pod.labels().get(REVISION_LABEL).map(String::as_str);
        let status = pod.status.as_ref();
        Some(PodView {
            ordinal,
            address: self.resolver.resolve(self.names, ordinal).advertised,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            outdated: matches!((revision, update_revision), (Some(have), Some(want)) if have != want),
            ready: status.is_some_and(|status| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|condition| condition.type_ == "Ready" && condition.status == "True")
            }),
            pending: status.and_then(|status| status.phase.as_deref()) == Some("Pending"),
            identity: None,
            name,
        })
    }

    /// The leader's view of the membership, with each member placed at its pod's ordinal.
    async fn membership(
        &self,
        kvs: &KvsClient,
        ordinals: &BTreeMap<String, u32>,
    ) -> Option<Vec<MemberView>> {
        let members = match kvs.member_list().await {
            Ok(members) => members,
            Err(err) => {
                tracing::info!(%err, "no leader answered the membership");
                return None;
            }
        };
        Some(
            members
                .into_iter()
                .map(|member| MemberView {
                    ordinal: ordinals.get(&member.address).copied(),
                    voter: member.role == kvs_client::proto::Role::Voter as i32,
                    leader: member.is_leader,
                    matched_index: member.matched_index,
                    lag: member.lag,
                    id: member.id,
                    address: member.address,
                })
                .collect(),
        )
    }
}

/// The ordinal of every advertised address a member may have. Members may sit beyond the spec
/// (a scale-down under way), never beyond twice the bound.
fn ordinals_by_address(resolver: &dyn Resolver, names: &Names) -> Result<BTreeMap<String, u32>> {
    let mut ordinals = BTreeMap::new();
    for ordinal in 0..MAX_REPLICAS as u32 * 2 {
        let address = resolver.resolve(names, ordinal).advertised;
        if let Some(first) = ordinals.insert(address.clone(), ordinal) {
            return Err(Error::AmbiguousAddress {
                address,
                first,
                second: ordinal,
            });
        }
    }
    Ok(ordinals)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten seats, then the same ten again.
    struct Aliasing;

    impl Resolver for Aliasing {
        fn resolve(&self, _: &Names, ordinal: u32) -> PodAddress {
            let address = format!("127.0.0.1:{}", 7000 + ordinal % 10);
            PodAddress {
                advertised: address.clone(),
                dial: address,
            }
        }
    }

    #[test]
    fn pods_in_a_cluster_have_one_address_each() {
        let names = Names::new("orders", "shop");
        let ordinals = ordinals_by_address(&ClusterDns, &names).expect("distinct DNS names");
        let pod_3 = ClusterDns.resolve(&names, 3).advertised;
        assert_eq!(ordinals.get(&pod_3), Some(&3));
    }

    #[test]
    fn a_resolver_that_gives_two_ordinals_one_address_is_refused() {
        let names = Names::new("orders", "shop");
        let refused = ordinals_by_address(&Aliasing, &names);
        assert!(
            matches!(
                refused,
                Err(Error::AmbiguousAddress { ref address, first: 0, second: 10 })
                    if address == "127.0.0.1:7000"
            ),
            "{refused:?}"
        );
    }
}
