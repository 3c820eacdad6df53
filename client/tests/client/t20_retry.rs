//! Leader following and safe retries: where a failed attempt goes next, which failures are
//! retried, and what the caller is told when the deadline passes.

use std::time::{Duration, Instant};

use kvs_client::Error;
use tonic::Code;

use crate::fake::{
    FakeNode, Scripted, client, client_with, dead_address, start_connection_dropper,
};

#[tokio::test]
async fn the_leader_named_by_a_follower_is_followed_and_remembered() {
    let follower = FakeNode::start().await;
    let leader = FakeNode::start().await;
    follower.always(Scripted::not_leader(leader.address()));
    // The client knows only the follower; the hint is its way to the leader.
    let client = client(&[follower.address()], Duration::from_secs(5));
    client.put("k", "v", None).await.unwrap();
    client.put("k2", "v", None).await.unwrap();
    assert_eq!(leader.value("k").as_deref(), Some(&b"v"[..]));
    assert_eq!(
        follower.write_ids("put").len(),
        1,
        "the second put went straight to the leader"
    );
    assert_eq!(leader.write_ids("put").len(), 2);
}

#[tokio::test]
async fn unavailable_without_a_hint_moves_to_the_next_endpoint() {
    let first = FakeNode::start().await;
    let second = FakeNode::start().await;
    first.always(Scripted::fail(Code::Unavailable, "no quorum"));
    let client = client(&[first.address(), second.address()], Duration::from_secs(5));
    client.put("k", "v", None).await.unwrap();
    assert_eq!(second.value("k").as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn a_refused_connection_moves_to_the_next_endpoint() {
    let dead = dead_address();
    let node = FakeNode::start().await;
    let client = client(&[&dead, node.address()], Duration::from_secs(5));
    client.put("k", "v", None).await.unwrap();
    assert_eq!(node.value("k").as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn unavailable_is_retried_until_the_node_recovers() {
    let node = FakeNode::start().await;
    node.script((0..3).map(|_| Scripted::fail(Code::Unavailable, "electing")));
    let client = client(&[node.address()], Duration::from_secs(5));
    client.put("k", "v", None).await.unwrap();
    assert_eq!(node.write_ids("put").len(), 4);
}

#[tokio::test]
async fn a_retried_write_reuses_its_write_id() {
    let node = FakeNode::start().await;
    node.script([Scripted::ApplyThenFail(Code::Unknown)]);
    let client = client(&[node.address()], Duration::from_secs(5));
    client.put("k", "v", None).await.unwrap();
    client.put("k", "w", None).await.unwrap();
    let ids = node.write_ids("put");
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], ids[1], "the retry is the same logical write");
    assert_eq!(
        ids[2].sequence,
        ids[1].sequence + 1,
        "a new write gets the next sequence"
    );
}

#[tokio::test]
async fn a_write_that_may_have_applied_ends_outcome_unknown_at_the_deadline() {
    let node = FakeNode::start().await;
    node.always(Scripted::fail(Code::Unknown, "leader changed"));
    let client = client(&[node.address()], Duration::from_millis(400));
    let err = client.put("k", "v", None).await.unwrap_err();
    assert!(matches!(err, Error::OutcomeUnknown { .. }), "{err:?}");
    assert!(err.is_outcome_unknown());
    let ids = node.write_ids("put");
    assert!(ids.len() > 1, "retried within the deadline");
    assert!(ids.iter().all(|id| *id == ids[0]));
}

#[tokio::test]
async fn an_earlier_maybe_is_not_forgotten_by_later_unavailables() {
    let node = FakeNode::start().await;
    node.script([Scripted::fail(Code::DeadlineExceeded, "commit timed out")]);
    node.always(Scripted::fail(Code::Unavailable, "no quorum"));
    let client = client(&[node.address()], Duration::from_millis(400));
    let err = client.delete("k").await.unwrap_err();
    assert!(matches!(err, Error::OutcomeUnknown { .. }), "{err:?}");
}

#[tokio::test]
async fn unavailable_until_the_deadline_is_definitely_not_applied_and_names_the_leader() {
    let node = FakeNode::start().await;
    let gone = dead_address();
    node.always(Scripted::not_leader(&gone));
    // The named leader is gone, so attempts alternate between it and the node; keep them short.
    let client = client_with(
        &[node.address()],
        Duration::from_millis(600),
        Duration::from_millis(100),
    );
    let err = client.put("k", "v", None).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_definitely_not_applied());
    assert_eq!(err.leader_hint(), Some(gone.as_str()));
    assert!(err.to_string().contains(&gone), "names the leader: {err}");
}

#[tokio::test]
async fn a_connection_dropped_after_sending_leaves_a_write_unknown() {
    let (address, dropper) = start_connection_dropper().await;
    let client = client(&[&address], Duration::from_millis(800));
    let err = client.put("k", "v", None).await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    // The same failure on a read cannot have changed anything.
    let err = client.get("k", false).await.unwrap_err();
    assert!(err.is_definitely_not_applied(), "{err:?}");
    dropper.abort();
}

#[tokio::test]
async fn a_stalled_node_is_abandoned_after_the_attempt_timeout() {
    let stalled = FakeNode::start().await;
    let healthy = FakeNode::start().await;
    stalled.always(Scripted::Stall(Duration::from_secs(30)));
    let client = client_with(
        &[stalled.address(), healthy.address()],
        Duration::from_secs(5),
        Duration::from_millis(200),
    );
    client.put("k", "v", None).await.unwrap();
    assert_eq!(healthy.value("k").as_deref(), Some(&b"v"[..]));
    assert_eq!(
        stalled.write_ids("put"),
        healthy.write_ids("put"),
        "the write moved on with its WriteId"
    );
}

#[tokio::test]
async fn reads_retry_anything_transient_and_never_end_unknown() {
    let node = FakeNode::start().await;
    node.script([
        Scripted::fail(Code::Unknown, "connection to the leader broke"),
        Scripted::fail(Code::DeadlineExceeded, "read index timed out"),
    ]);
    let client = client(&[node.address()], Duration::from_secs(5));
    assert_eq!(client.get("k", false).await.unwrap(), None);

    node.always(Scripted::fail(Code::Unknown, "still broken"));
    let impatient = crate::fake::client(&[node.address()], Duration::from_millis(300));
    let err = impatient.get("k", false).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn a_refusal_is_returned_at_once_with_the_server_message() {
    let node = FakeNode::start().await;
    node.script([Scripted::fail(
        Code::InvalidArgument,
        "key is 5000 bytes, more than the limit of 4096 bytes",
    )]);
    let client = client(&[node.address()], Duration::from_secs(5));
    let err = client.put("k", "v", None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "key is 5000 bytes, more than the limit of 4096 bytes"
    );
    assert!(err.is_definitely_not_applied());
    assert_eq!(node.write_ids("put").len(), 1);
}

#[tokio::test]
async fn membership_changes_are_retried_on_unavailable_only() {
    let node = FakeNode::start().await;
    node.script([Scripted::fail(
        Code::Unavailable,
        "another change in progress",
    )]);
    let client = client(&[node.address()], Duration::from_secs(5));
    client.add_learner("127.0.0.1:9").await.unwrap();

    node.script([Scripted::fail(Code::DeadlineExceeded, "timed out")]);
    let started = Instant::now();
    let err = client.promote("00000000000000a1").await.unwrap_err();
    assert!(matches!(err, Error::OutcomeUnknown { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
    let promotes = node
        .seen()
        .iter()
        .filter(|s| s.method == "promote_member")
        .count();
    assert_eq!(promotes, 1);
}
