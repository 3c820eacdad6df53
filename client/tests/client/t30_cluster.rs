//! Cluster administration calls and the calls pinned to one endpoint.

use std::time::{Duration, Instant};

use kvs_client::Error;
use kvs_client::proto::Role;

use crate::fake::{FakeNode, client, dead_address};

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn membership_round_trip() {
    let node = FakeNode::start().await;
    let client = client(&[node.address()], TIMEOUT);
    let learner = client.add_learner("127.0.0.1:9").await.unwrap();
    assert_eq!(learner.role(), Role::Learner);
    client.promote(&learner.id).await.unwrap();
    let members = client.member_list().await.unwrap();
    let promoted = members.iter().find(|m| m.id == learner.id).unwrap();
    assert_eq!(promoted.role(), Role::Voter);
    client.remove(&learner.id).await.unwrap();
    assert_eq!(client.member_list().await.unwrap().len(), 1);
    let err = client.remove(&learner.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Refused {
                code: tonic::Code::NotFound,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(client.transfer_leader(Some("abc")).await.unwrap(), "abc");
}

#[tokio::test]
async fn status_comes_from_any_node() {
    let node = FakeNode::start().await;
    let client = client(&[&dead_address(), node.address()], TIMEOUT);
    let status = client.status().await.unwrap();
    assert_eq!(status.leader, node.node_id());
    assert_eq!(status.term, 3);
}

#[tokio::test]
async fn endpoint_status_asks_every_endpoint_in_order() {
    let node = FakeNode::start().await;
    let dead = dead_address();
    let client = client(&[node.address(), &dead], TIMEOUT);
    let statuses = client.endpoint_status().await;
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[0].endpoint, node.address());
    assert_eq!(statuses[0].info.as_ref().unwrap().node_id, node.node_id());
    assert_eq!(statuses[1].endpoint, dead);
    assert!(statuses[1].info.is_err());
}

#[tokio::test]
async fn calls_to_one_endpoint_do_not_fail_over() {
    let node = FakeNode::start().await;
    let dead = dead_address();
    let client = client(&[node.address()], Duration::from_secs(10));
    let started = Instant::now();
    let err = client.node_info(&dead).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "one attempt only"
    );
    assert_eq!(
        client.node_info(node.address()).await.unwrap().node_id,
        node.node_id()
    );
    assert!(client.initialize(node.address()).await.unwrap().initialized);
    assert!(node.seen().iter().all(|s| s.method != "get"));
}

#[test]
fn bad_endpoints_are_refused_up_front() {
    let err = kvs_client::Client::connect(vec!["no-port".into()], Default::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidEndpoint { .. }), "{err:?}");
    let err = kvs_client::Client::connect(vec![], Default::default()).unwrap_err();
    assert!(matches!(err, Error::NoEndpoints), "{err:?}");
}
