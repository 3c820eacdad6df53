//! Identity: a new node at a reused address is a new node — the cluster never mistakes it for
//! the member that used to live there, and it refuses messages meant for that member.

use std::time::Duration;

use bytes::Bytes;
use kvs_node::identity::parse_node_id;
use kvs_node::peer_proto::Envelope;
use kvs_node::peer_proto::PeerMessage;
use kvs_node::peer_proto::peer_client::PeerClient;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::holds_for;

use crate::other_than;

/// Starts a cluster, replaces one follower by a fresh process on the same address, and returns
/// `(cluster, leader, seat, old node ID)`.
async fn replace_a_follower() -> (Cluster, usize, usize, String) {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
    let leader = cluster.leader().await;
    let seat = other_than(&cluster, leader);
    let old_id = cluster.node(seat).id().to_string();
    cluster.kill(seat);
    cluster.restart(seat).await;
    assert_ne!(
        cluster.node(seat).id(),
        old_id,
        "a restarted in-memory node must get a new ID"
    );
    (cluster, leader, seat, old_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_at_a_reused_address_is_not_taken_for_the_old_member() {
    let (cluster, leader, seat, old_id) = replace_a_follower().await;
    let new_id = cluster.node(seat).id().to_string();
    for k in 0..5 {
        let key = format!("after-restart-{k}");
        cluster
            .kvsctl_at(leader, ["put", key.as_str(), "v"])
            .await
            .ok();
    }

    let endpoints = cluster
        .kvsctl_at(seat, ["-o", "json", "endpoint", "status"])
        .await
        .json();
    let entry = &endpoints[0];
    assert_eq!(entry["node_id"], new_id.as_str(), "{endpoints}");
    assert_eq!(entry["is_member"], false, "{endpoints}");

    let commit = cluster
        .status(leader)
        .await
        .expect("leader status")
        .commit_index;
    let what = "the old ID stays a lagging member, the new ID stays out, the new node stays empty";
    holds_for(cluster.options().election_timeout * 3, what, || async {
        let (Ok(members), Ok(info)) =
            (cluster.members(leader).await, cluster.node_info(seat).await)
        else {
            return false;
        };
        let old_lags = members
            .iter()
            .any(|m| m.id == old_id && m.matched_index < commit);
        let new_absent = members.iter().all(|m| m.id != new_id);
        old_lags
            && new_absent
            && !info.is_member
            && info.applied_index == 0
            && info.cluster_id.is_empty()
    })
    .await;

    let list = cluster
        .kvsctl_at(leader, ["-o", "json", "member", "list"])
        .await
        .json();
    let members = list["members"].as_array().expect("a members array");
    let old = members.iter().find(|m| m["id"] == old_id.as_str());
    let old = old.unwrap_or_else(|| panic!("old member missing: {list}"));
    assert!(
        old["lag"].as_u64().is_some_and(|lag| lag > 0),
        "the old member is not lagging: {list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_message_for_the_former_node_id_is_rejected() {
    let (cluster, leader, seat, old_id) = replace_a_follower().await;
    let cluster_id = cluster
        .status(leader)
        .await
        .expect("leader status")
        .cluster_id;
    let mut peer = PeerClient::connect(format!("http://{}", cluster.node(seat).peer_address()))
        .await
        .expect("connect to the new node's peer port");
    let message = PeerMessage {
        envelope: Some(Envelope {
            cluster_id,
            from: parse_node_id(cluster.node(leader).id()).expect("a node ID"),
            to: parse_node_id(&old_id).expect("a node ID"),
            format: kvs_node::PEER_FORMAT,
        }),
        payload: Bytes::new(),
        sent_at_ms: 0,
    };
    let call = tokio::time::timeout(Duration::from_secs(10), peer.append_entries(message)).await;
    let status = call
        .expect("bounded")
        .expect_err("a message for the old ID must be rejected");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let reject = status
        .metadata()
        .get("kvs-peer-reject")
        .and_then(|v| v.to_str().ok());
    assert_eq!(reject, Some("wrong-node"), "{status:?}");
}
