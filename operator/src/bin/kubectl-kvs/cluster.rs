//! `status`, `switchover`, `restart` and `hibernate`: what a KvsCluster reports, and the
//! annotations and spec field that ask the operator for a switchover, a rolling restart or
//! hibernation.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kvs_operator::crd::{KvsCluster, RESTARTED_AT, SWITCHOVER_TO};
use kvs_operator::resources::Names;
use serde::Serialize;
use serde_json::{Value, json};

/// How many of a cluster's most recent Events `status` shows.
const LAST_EVENTS: usize = 10;

/// `hibernate`'s argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Switch {
    On,
    Off,
}

/// The KvsClusters of one namespace.
pub(crate) struct Clusters {
    client: kube::Client,
    namespace: String,
    api: Api<KvsCluster>,
}

/// What `status` shows.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Status {
    name: String,
    namespace: String,
    phase: Option<String>,
    #[serde(rename = "clusterID")]
    cluster_id: Option<String>,
    replicas: i32,
    ready_replicas: i32,
    leader: Option<String>,
    members: Vec<Member>,
    conditions: Vec<Condition>,
    events: Vec<EventLine>,
}

#[derive(Debug, Serialize)]
struct Member {
    pod: String,
    id: String,
    role: String,
    leader: bool,
    healthy: bool,
    lag: i64,
    /// The image the pod runs: its version.
    image: Option<String>,
}

#[derive(Debug, Serialize)]
struct Condition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    reason: String,
    message: String,
}

#[derive(Debug, Serialize)]
struct EventLine {
    #[serde(rename = "type")]
    type_: Option<String>,
    reason: Option<String>,
    note: Option<String>,
    time: Option<String>,
}

/// What a verb that asks the operator for something reports.
#[derive(Debug, Serialize)]
pub(crate) struct Requested {
    name: String,
    namespace: String,
    requested: String,
}

impl Clusters {
    pub(crate) fn new(client: kube::Client, namespace: &str) -> Self {
        Clusters {
            api: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_owned(),
        }
    }

    /// The cluster's status, its pods' images and its last Events. Pods and Events the user may
    /// not list are left out rather than failing the whole report.
    pub(crate) async fn status(&self, name: &str) -> anyhow::Result<Status> {
        let cluster = self.api.get(name).await?;
        let names = Names::new(name, &self.namespace);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let pods = pods
            .list(&ListParams::default().labels(&names.selector_string()))
            .await
            .map(|list| list.items)
            .unwrap_or_default();
        let image_of = |pod_name: &str| {
            pods.iter()
                .find(|pod| pod.metadata.name.as_deref() == Some(pod_name))
                .and_then(|pod| pod.spec.as_ref())
                .and_then(|spec| spec.containers.first())
                .and_then(|container| container.image.clone())
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = format!("regarding.kind=KvsCluster,regarding.name={name}");
        let mut events: Vec<Event> = events
            .list(&ListParams::default().fields(&selector))
            .await
            .map(|list| list.items)
            .unwrap_or_default();
        events
            .retain(|event| event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name));
        let when = |event: &Event| {
            event
                .event_time
                .as_ref()
                .map(|time| time.0.to_string())
                .or_else(|| {
                    event
                        .deprecated_last_timestamp
                        .as_ref()
                        .map(|time| time.0.to_string())
                })
                .unwrap_or_default()
        };
        events.sort_by_key(when);
        let events = events
            .iter()
            .rev()
            .take(LAST_EVENTS)
            .rev()
            .map(|event| EventLine {
                type_: event.type_.clone(),
                reason: event.reason.clone(),
                note: event.note.clone(),
                time: Some(when(event)).filter(|time| !time.is_empty()),
            })
            .collect();
        let status = cluster.status.unwrap_or_default();
        let leader = status.leader.clone();
        Ok(Status {
            name: name.to_owned(),
            namespace: self.namespace.clone(),
            phase: status.phase.map(|phase| format!("{phase:?}")),
            cluster_id: status.cluster_id,
            replicas: status.replicas,
            ready_replicas: status.ready_replicas,
            members: status
                .members
                .into_iter()
                .map(|member| Member {
                    leader: leader.as_deref() == Some(member.pod.as_str()),
                    image: image_of(&member.pod),
                    pod: member.pod,
                    id: member.id,
                    role: member.role,
                    healthy: member.healthy,
                    lag: member.lag,
                })
                .collect(),
            leader,
            conditions: status
                .conditions
                .into_iter()
                .map(|condition| Condition {
                    type_: condition.type_,
                    status: condition.status,
                    reason: condition.reason,
                    message: condition.message,
                })
                .collect(),
            events,
        })
    }

    /// Asks for leadership on `pod`'s member; the operator removes the request once done.
    pub(crate) async fn switchover(&self, name: &str, pod: &str) -> anyhow::Result<Requested> {
        let names = Names::new(name, &self.namespace);
        anyhow::ensure!(
            names.ordinal_of(pod).is_some(),
            "{pod} is not a pod of KvsCluster {name} (its pods are {name}-0, {name}-1, ...)"
        );
        self.annotate(name, SWITCHOVER_TO, pod).await?;
        Ok(self.requested(name, format!("switchover to {pod}")))
    }

    /// Asks for a rolling restart, stamped with the current time.
    pub(crate) async fn restart(&self, name: &str) -> anyhow::Result<Requested> {
        let now = Timestamp::now().to_string();
        self.annotate(name, RESTARTED_AT, &now).await?;
        Ok(self.requested(name, format!("rolling restart at {now}")))
    }

    /// Sets `spec.hibernate`.
    pub(crate) async fn hibernate(&self, name: &str, state: Switch) -> anyhow::Result<Requested> {
        let on = state == Switch::On;
        self.patch(name, json!({"spec": {"hibernate": on}})).await?;
        let what = if on { "hibernation" } else { "resume" };
        Ok(self.requested(name, what.to_owned()))
    }

    async fn annotate(&self, name: &str, key: &str, value: &str) -> anyhow::Result<()> {
        self.patch(name, json!({"metadata": {"annotations": {key: value}}}))
            .await
    }

    async fn patch(&self, name: &str, patch: Value) -> anyhow::Result<()> {
        self.api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    fn requested(&self, name: &str, requested: String) -> Requested {
        Requested {
            name: name.to_owned(),
            namespace: self.namespace.clone(),
            requested,
        }
    }
}

impl Status {
    pub(crate) fn render(&self, json: bool) -> String {
        if json {
            return json_line(self);
        }
        let mut out = String::new();
        let or_none = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "KvsCluster {}/{}", self.namespace, self.name);
        let _ = writeln!(
            out,
            "Phase: {}   Ready: {}/{}   Leader: {}   Cluster ID: {}",
            or_none(&self.phase),
            self.ready_replicas,
            self.replicas,
            or_none(&self.leader),
            or_none(&self.cluster_id)
        );
        let _ = writeln!(out, "\nMEMBER\tID\tROLE\tHEALTHY\tLAG\tIMAGE");
        for member in &self.members {
            let role = if member.leader {
                format!("{} (leader)", member.role)
            } else {
                member.role.clone()
            };
            let _ = writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}",
                member.pod,
                member.id,
                role,
                member.healthy,
                member.lag,
                or_none(&member.image)
            );
        }
        let _ = writeln!(out, "\nCONDITION\tSTATUS\tREASON\tMESSAGE");
        for condition in &self.conditions {
            let _ = writeln!(
                out,
                "{}\t{}\t{}\t{}",
                condition.type_, condition.status, condition.reason, condition.message
            );
        }
        if !self.events.is_empty() {
            let _ = writeln!(out, "\nEVENT\tREASON\tMESSAGE");
            for event in &self.events {
                let _ = writeln!(
                    out,
                    "{}\t{}\t{}",
                    or_none(&event.type_),
                    or_none(&event.reason),
                    or_none(&event.note)
                );
            }
        }
        out
    }
}

impl Requested {
    pub(crate) fn render(&self, json: bool) -> String {
        if json {
            return json_line(self);
        }
        format!(
            "{} requested for KvsCluster {}/{}\n",
            self.requested, self.namespace, self.name
        )
    }
}

fn json_line(value: &impl Serialize) -> String {
    let mut line = serde_json::to_string(value).expect("plain data serializes");
    line.push('\n');
    line
}
