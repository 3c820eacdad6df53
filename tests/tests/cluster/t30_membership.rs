//! Membership: the cluster grows and shrinks under writes — including removing the leader —
//! and `member list` always ends up showing exactly the members that were asked for.

use std::collections::BTreeSet;
use std::time::Duration;

use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::Writer;
use kvs_tests::wait_until;

/// What `kvsctl -o json member list` reports: `(id, address, role)` per member.
async fn member_list(cluster: &Cluster) -> Option<BTreeSet<(String, String, String)>> {
    let out = cluster.kvsctl(["-o", "json", "member", "list"]).await;
    if !out.success() {
        return None;
    }
    let list = out.json();
    let members = list["members"].as_array()?;
    let field =
        |m: &serde_json::Value, name: &str| m[name].as_str().unwrap_or_default().to_string();
    Some(
        members
            .iter()
            .map(|m| (field(m, "id"), field(m, "address"), field(m, "role")))
            .collect(),
    )
}

/// Waits until `member list` shows exactly `seats` as voters at their addresses.
async fn assert_members(cluster: &Cluster, seats: &[usize]) {
    let expected: BTreeSet<_> = seats
        .iter()
        .map(|&i| {
            (
                cluster.node(i).id().to_string(),
                cluster.node(i).address(),
                "voter".to_string(),
            )
        })
        .collect();
    let what = format!("`member list` shows exactly {expected:?}");
    wait_until(Duration::from_secs(30), &what, || async {
        member_list(cluster).await.as_ref() == Some(&expected)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_to_five_and_shrinks_to_three_under_writes() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
    let writer = Writer::spawn(cluster.cli(), "membership");
    writer.wait_acked(5, Duration::from_secs(60)).await;

    let fourth = cluster.add_node().await;
    let fifth = cluster.add_node().await;
    assert_members(&cluster, &[0, 1, 2, fourth, fifth]).await;
    writer
        .wait_acked(writer.acked() + 5, Duration::from_secs(60))
        .await;

    let leader = cluster.leader().await;
    let follower = (0..3).find(|&i| i != leader).expect("an original follower");
    for removed in [leader, follower] {
        let id = cluster.node(removed).id().to_string();
        let out = cluster.kvsctl(["member", "remove", id.as_str()]).await;
        assert!(out.success(), "removing node {removed}: {out}");
        // A removed node is retired, as an operator would.
        cluster.kill(removed);
    }
    let remaining = cluster.running();
    assert_eq!(remaining.len(), 3);
    assert_members(&cluster, &remaining).await;

    let new_leader = cluster.leader().await;
    writer
        .wait_acked(writer.acked() + 5, Duration::from_secs(60))
        .await;
    let log = writer.stop().await;
    assert!(
        log.other.is_empty(),
        "unexpected kvsctl failures:\n{}",
        log.failures()
    );
    cluster.assert_writes_durable(new_leader, &log).await;
}

/// With one voter of three down, removing another would leave two voters of which one is down:
/// a configuration that cannot commit. `member remove` refuses it (exit 3, nothing changed) and
/// writes go on; `--force` attempts the change anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_voter_that_would_leave_no_healthy_majority_is_refused() {
    let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
    let leader = cluster.leader().await;
    let mut followers = (0..3).filter(|&i| i != leader);
    let (kept, stopped) = (
        followers.next().expect("a follower"),
        followers.next().expect("another follower"),
    );
    cluster.kill(stopped);
    let alive = cluster.cli_at(leader);
    let kept_id = cluster.node(kept).id().to_string();

    // A voter counts as answering while it acknowledged the leader within the leader's lease
    // (two election timeouts): let that pass for the stopped one.
    tokio::time::sleep(cluster.options().election_timeout * 2 + Duration::from_secs(1)).await;
    let refused = alive.run(["member", "remove", kept_id.as_str()]).await;
    assert_eq!(
        refused.code,
        Some(kvs_tests::exit::NOT_APPLIED),
        "{refused}"
    );
    assert!(refused.text().contains("not a majority"), "{refused}");
    assert_members(&cluster, &[0, 1, 2]).await;
    let put = alive.run(["put", "after-refusal", "v"]).await;
    assert!(put.success(), "writes go on after the refusal: {put}");

    // The forced change cannot complete while the stopped voter is down (the new configuration
    // needs it), so the command ends outcome-unknown or applied, never refused.
    let forced = alive
        .run([
            "--timeout",
            "3s",
            "member",
            "remove",
            kept_id.as_str(),
            "--force",
        ])
        .await;
    assert_ne!(
        forced.code,
        Some(kvs_tests::exit::NOT_APPLIED),
        "--force skips the check: {forced}"
    );
    assert!(!forced.text().contains("not a majority"), "{forced}");
}
