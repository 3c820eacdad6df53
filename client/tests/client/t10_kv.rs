//! The key-value calls against a healthy node.

use std::time::Duration;

use kvs_client::proto::{self, op};
use kvs_client::{Action, Error, Expect};

use crate::fake::{CLUSTER_NOW_MS, FakeNode, client};

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn put_then_get_then_delete() {
    let node = FakeNode::start().await;
    let client = client(&[node.address()], TIMEOUT);
    client.put("k", "v", None).await.unwrap();
    let kv = client
        .get("k", false)
        .await
        .unwrap()
        .expect("the key exists");
    assert_eq!((kv.key.as_ref(), kv.value.as_ref()), (&b"k"[..], &b"v"[..]));
    assert_eq!(kv.expires_at_ms, None);
    assert!(client.delete("k").await.unwrap());
    assert!(!client.delete("k").await.unwrap());
    assert_eq!(client.get("k", true).await.unwrap(), None);
}

#[tokio::test]
async fn a_ttl_is_sent_in_milliseconds() {
    let node = FakeNode::start().await;
    let client = client(&[node.address()], TIMEOUT);
    client
        .put("k", "v", Some(Duration::from_millis(1500)))
        .await
        .unwrap();
    let kv = client.get("k", false).await.unwrap().unwrap();
    assert_eq!(kv.expires_at_ms, Some(CLUSTER_NOW_MS + 1500));
}

#[tokio::test]
async fn compare_and_swap_applies_only_when_the_compare_holds() {
    let node = FakeNode::start().await;
    let client = client(&[node.address()], TIMEOUT);
    client
        .compare_and_swap("k", Expect::Absent, Action::Set("one".into()))
        .await
        .unwrap();
    let failed = client
        .compare_and_swap("k", Expect::Value("zero".into()), Action::Delete)
        .await;
    assert!(matches!(failed, Err(Error::CompareFailed)), "{failed:?}");
    assert_eq!(node.value("k").as_deref(), Some(&b"one"[..]));
    client
        .compare_and_swap("k", Expect::Value("one".into()), Action::Delete)
        .await
        .unwrap();
    assert_eq!(node.value("k"), None);
}

#[tokio::test]
async fn a_refused_batch_is_an_error() {
    let node = FakeNode::start().await;
    let client = client(&[node.address()], TIMEOUT);
    let increment = |key: &str| proto::Op {
        op: Some(op::Op::Increment(proto::IncrementOp {
            key: key.to_owned().into(),
            delta: 5,
        })),
    };
    let done = client
        .batch(proto::BatchRequest {
            ops: vec![increment("n")],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(done.results[0].integer, 5);
    client.put("text", "abc", None).await.unwrap();
    let refused = client
        .batch(proto::BatchRequest {
            ops: vec![increment("text")],
            ..Default::default()
        })
        .await;
    assert!(
        matches!(&refused, Err(Error::BatchRefused(message)) if message.contains("not an integer")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn every_write_carries_a_new_write_id_of_the_same_client() {
    let node = FakeNode::start().await;
    let client = client(&[node.address()], TIMEOUT);
    client.put("a", "1", None).await.unwrap();
    client.delete("a").await.unwrap();
    client.clone().put("b", "2", None).await.unwrap();
    let ids: Vec<_> = node.seen().into_iter().filter_map(|s| s.write_id).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| id.client_id == ids[0].client_id));
    assert_eq!(
        ids.iter()
            .map(|id| id.sequence - ids[0].sequence)
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
}
