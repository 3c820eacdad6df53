//! Memory quota: past `--quota-bytes` writes that add data are refused as not applied, status
//! raises the NOSPACE alarm, deletes still work and bring writes back, and memory stays bounded.

use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::exit;

const QUOTA: u64 = 256 * 1024;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_quota_are_refused_until_space_is_freed() {
    let options = ClusterOptions {
        quota_bytes: Some(QUOTA),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(1, options).await;
    let rss_at_start = rss_bytes(cluster.node(0).pid());
    let value = "v".repeat(4096);
    let mut stored = Vec::new();
    let refused = loop {
        let key = format!("fill{}", stored.len());
        let out = cluster.kvsctl(["put", key.as_str(), value.as_str()]).await;
        if !out.success() {
            break out;
        }
        stored.push(key);
        assert!(
            stored.len() < 1000,
            "the quota of {QUOTA} bytes was never enforced"
        );
    };
    assert_eq!(refused.code, Some(exit::NOT_APPLIED), "{refused}");
    assert!(
        refused.stderr.contains("quota"),
        "the refusal says why: {refused}"
    );
    assert!(
        stored.len() as u64 * 4096 >= QUOTA / 2,
        "refused too early: {} keys",
        stored.len()
    );

    let status = cluster.kvsctl(["-o", "json", "status"]).await.json();
    assert_eq!(status["alarms"], serde_json::json!(["NOSPACE"]));
    let read = cluster.kvsctl(["get", stored[0].as_str()]).await;
    assert!(read.success(), "reads still work: {read}");

    for key in &stored[..stored.len() / 2] {
        let out = cluster.kvsctl(["del", key.as_str()]).await;
        assert!(out.success(), "deletes still work: {out}");
    }
    let out = cluster.kvsctl(["put", "after", "space"]).await;
    assert!(
        out.success(),
        "writes work again once space is freed: {out}"
    );
    let status = cluster.kvsctl(["-o", "json", "status"]).await.json();
    assert_eq!(status["alarms"], serde_json::json!([]));
    // What the quota bounds is the data: the node grows by far less than its runtime's own
    // slack while the keyspace fills to the quota and empties again.
    let grown = rss_bytes(cluster.node(0).pid()).saturating_sub(rss_at_start);
    assert!(
        grown < 32 << 20,
        "the node grew by {grown} bytes for a {QUOTA}-byte quota"
    );
}
