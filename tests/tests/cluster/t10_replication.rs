//! Replication: a write accepted by any node is seen by linearizable reads on every node.

use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;

use crate::other_than;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_a_follower_is_read_back_on_every_node() {
    let cluster = Cluster::start(3, ClusterOptions::default()).await;
    let leader = cluster.leader().await;
    let follower = other_than(&cluster, leader);

    let put = cluster
        .kvsctl_at(follower, ["put", "greeting", "hello"])
        .await;
    assert_eq!(put.ok().trim_end(), "OK", "{put}");

    for i in 0..cluster.len() {
        let get = cluster.kvsctl_at(i, ["get", "greeting"]).await;
        assert_eq!(get.ok(), "hello\n", "node {i}: {get}");
    }
    let absent = cluster.kvsctl_at(follower, ["get", "never-written"]).await;
    assert_eq!(absent.ok(), "", "an absent key prints nothing: {absent}");
}
