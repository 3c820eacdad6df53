//! The kvsctl contract, checked by running the built binary against fake nodes: outputs, JSON
//! shapes and exit codes (0 ok, 1 compare failed, 2 usage, 3 not applied, 4 outcome unknown).

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;

use crate::fake::{FakeNode, Scripted, client, dead_address};

/// What one kvsctl run did.
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {:?}", self.stdout()))
    }

    fn assert_exit(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "stdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr
        );
        self
    }
}

/// A kvsctl command line under construction: global flags first, then each run's arguments.
#[derive(Default)]
struct Kvsctl {
    flags: Vec<String>,
    env: Vec<(String, String)>,
}

impl Kvsctl {
    fn at(endpoints: &str) -> Self {
        Kvsctl::default().flags(&["--endpoints", endpoints])
    }

    fn flags(mut self, flags: &[&str]) -> Self {
        self.flags.extend(flags.iter().map(|&flag| flag.to_owned()));
        self
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs kvsctl (without any inherited `KVSCTL_ENDPOINTS`), bounded in time.
    async fn run(&self, args: &[&str]) -> Run {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvsctl"))
            .args(&self.flags)
            .args(args)
            .env_remove("KVSCTL_ENDPOINTS")
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), output)
            .await
            .expect("kvsctl finished in time")
            .expect("kvsctl ran");
        Run {
            code: output.status.code().expect("kvsctl exited by itself"),
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn put_get_del_print_like_etcdctl() {
    let node = FakeNode::start().await;
    let ctl = Kvsctl::at(node.address());
    assert_eq!(
        ctl.run(&["put", "k", "v"]).await.assert_exit(0).stdout(),
        "OK\n"
    );
    assert_eq!(ctl.run(&["get", "k"]).await.assert_exit(0).stdout(), "v\n");
    assert_eq!(ctl.run(&["get", "nope"]).await.assert_exit(0).stdout(), "");
    assert_eq!(ctl.run(&["del", "k"]).await.assert_exit(0).stdout(), "1\n");
    assert_eq!(ctl.run(&["del", "k"]).await.assert_exit(0).stdout(), "0\n");
}

#[tokio::test]
async fn json_output_shapes() {
    let node = FakeNode::start().await;
    let ctl = Kvsctl::at(node.address()).flags(&["-o", "json"]);
    assert_eq!(
        ctl.run(&["put", "k", "v"]).await.assert_exit(0).json(),
        json!({"ok": true})
    );
    assert_eq!(
        ctl.run(&["get", "k"]).await.assert_exit(0).json(),
        json!({"key": "k", "value": "v"})
    );
    assert_eq!(
        ctl.run(&["get", "nope"]).await.assert_exit(0).json(),
        Value::Null
    );
    assert_eq!(
        ctl.run(&["cas", "k", "--expect", "v", "w"])
            .await
            .assert_exit(0)
            .json(),
        json!({"succeeded": true})
    );
    assert_eq!(
        ctl.run(&["cas", "k", "--expect", "v", "x"])
            .await
            .assert_exit(1)
            .json(),
        json!({"succeeded": false})
    );
    assert_eq!(
        ctl.run(&["del", "k"]).await.assert_exit(0).json(),
        json!({"deleted": 1})
    );
}

#[tokio::test]
async fn binary_values_are_printed_raw_or_as_base64() {
    let node = FakeNode::start().await;
    client(&[node.address()], Duration::from_secs(5))
        .put("bin", vec![0xff, b'A'], None)
        .await
        .unwrap();
    let ctl = Kvsctl::at(node.address());
    let raw = ctl.run(&["get", "bin"]).await;
    assert_eq!(raw.assert_exit(0).stdout, [0xff, b'A', b'\n']);
    let json = ctl.run(&["-o", "json", "get", "bin"]).await;
    let json = json.assert_exit(0).json();
    assert_eq!(json["value_base64"], "/0E=");
    assert_eq!(json["value"], "\u{fffd}A");
}

#[tokio::test]
async fn a_failed_compare_exits_1_with_a_message() {
    let node = FakeNode::start().await;
    let ctl = Kvsctl::at(node.address());
    let swap = ctl.run(&["cas", "k", "--expect-absent", "one"]).await;
    assert_eq!(swap.assert_exit(0).stdout(), "OK\n");
    let failed = ctl.run(&["cas", "k", "--expect-absent", "--delete"]).await;
    failed.assert_exit(1);
    assert_eq!(failed.stdout(), "");
    assert!(
        failed.stderr.starts_with("Error: compare failed"),
        "{}",
        failed.stderr
    );
    assert_eq!(node.value("k").as_deref(), Some(&b"one"[..]));
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        &["get"][..],
        &["--endpoints", "no-port", "get", "k"],
        &["--timeout", "10", "get", "k"],
        &["cas", "k", "--expect", "a", "--expect-absent", "b"],
        &["member", "frobnicate"],
    ] {
        Kvsctl::default().run(args).await.assert_exit(2);
    }
}

#[tokio::test]
async fn unavailable_exits_3_with_the_error_on_stderr() {
    let dead = dead_address();
    let run = Kvsctl::at(&dead)
        .run(&["--timeout", "300ms", "put", "k", "v"])
        .await;
    run.assert_exit(3);
    assert!(
        run.stderr.starts_with("Error: unavailable"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_refusal_exits_3_with_the_server_message() {
    let node = FakeNode::start().await;
    node.script([Scripted::fail(Code::InvalidArgument, "value is too large")]);
    let run = Kvsctl::at(node.address()).run(&["put", "k", "v"]).await;
    run.assert_exit(3);
    assert_eq!(run.stderr.trim_end(), "Error: value is too large");
}

#[tokio::test]
async fn a_write_of_unknown_outcome_exits_4() {
    let node = FakeNode::start().await;
    node.always(Scripted::fail(Code::Unknown, "leader changed"));
    let run = Kvsctl::at(node.address())
        .run(&["--timeout", "400ms", "put", "k", "v"])
        .await;
    run.assert_exit(4);
    assert!(
        run.stderr.contains("may have been applied"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn errors_name_the_leader() {
    let node = FakeNode::start().await;
    let gone = dead_address();
    node.always(Scripted::not_leader(&gone));
    let run = Kvsctl::at(node.address())
        .run(&["--timeout", "300ms", "del", "k"])
        .await;
    run.assert_exit(3);
    assert!(run.stderr.contains(&gone), "{}", run.stderr);
}

#[tokio::test]
async fn global_flags_after_the_command_and_endpoints_from_the_environment() {
    let node = FakeNode::start().await;
    client(&[node.address()], Duration::from_secs(5))
        .put("k", "v", None)
        .await
        .unwrap();
    let endpoints = format!("{},{}", dead_address(), node.address());
    let run = Kvsctl::default()
        .env("KVSCTL_ENDPOINTS", &endpoints)
        .run(&["get", "k", "-o", "json", "--timeout", "2s"])
        .await;
    assert_eq!(run.assert_exit(0).json(), json!({"key": "k", "value": "v"}));
}

#[tokio::test]
async fn member_list_as_table_and_json() {
    let node = FakeNode::start().await;
    let ctl = Kvsctl::at(node.address());
    let table = ctl.run(&["member", "list"]).await;
    let table = table.assert_exit(0).stdout();
    let header = table.lines().next().unwrap();
    for column in [
        "ID",
        "ADDRESS",
        "PEER ADDRESS",
        "ROLE",
        "LEADER",
        "MATCHED",
        "LAG",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(table.contains(&node.node_id()));

    let json = ctl.run(&["member", "list", "-o", "json"]).await;
    let json = json.assert_exit(0).json();
    let member = &json["members"][0];
    assert_eq!(
        keys(member),
        BTreeSet::from([
            "id",
            "address",
            "peer_address",
            "role",
            "is_leader",
            "matched_index",
            "lag"
        ])
    );
    assert_eq!(member["id"], node.node_id());
    assert_eq!(member["role"], "voter");
    assert_eq!(member["is_leader"], true);
}

#[tokio::test]
async fn member_add_promotes_once_the_learner_caught_up() {
    let node = FakeNode::start().await;
    let ctl = Kvsctl::at(node.address()).flags(&["-o", "json"]);
    let run = ctl.run(&["member", "add", "127.0.0.1:9"]).await;
    let member = run.assert_exit(0).json();
    assert_eq!(member["role"], "voter");
    assert_eq!(member["address"], "127.0.0.1:9");
    let listings = node
        .seen()
        .iter()
        .filter(|s| s.method == "list_members")
        .count();
    assert!(
        listings >= 3,
        "waited for the lag to shrink ({listings} listings)"
    );
    assert!(node.seen().iter().any(|s| s.method == "promote_member"));

    let learner = ctl
        .run(&["member", "add", "127.0.0.1:8", "--learner"])
        .await;
    assert_eq!(learner.assert_exit(0).json()["role"], "learner");
    let promotions = node
        .seen()
        .iter()
        .filter(|s| s.method == "promote_member")
        .count();
    assert_eq!(promotions, 1);
}

#[tokio::test]
async fn member_promote_and_remove_print_ok() {
    let node = FakeNode::start().await;
    let learner = client(&[node.address()], Duration::from_secs(5))
        .add_learner("127.0.0.1:9")
        .await
        .unwrap();
    let ctl = Kvsctl::at(node.address());
    let promote = ctl.run(&["member", "promote", &learner.id]).await;
    assert_eq!(promote.assert_exit(0).stdout(), "OK\n");
    let remove = ctl.run(&["member", "remove", &learner.id]).await;
    assert_eq!(remove.assert_exit(0).stdout(), "OK\n");
    let again = ctl.run(&["member", "remove", &learner.id]).await;
    again.assert_exit(3);
}

#[tokio::test]
async fn status_json_shape() {
    let node = FakeNode::start().await;
    let ctl = Kvsctl::at(node.address());
    let run = ctl.run(&["-o", "json", "status"]).await;
    let status = run.assert_exit(0).json();
    assert_eq!(
        keys(&status),
        BTreeSet::from([
            "cluster_id",
            "leader",
            "term",
            "commit_index",
            "applied_index",
            "alarms",
            "keys",
            "clock_skew_ms",
            "data_dir_bytes",
            "data_dir_free_bytes"
        ])
    );
    assert_eq!(status["leader"], node.node_id());
    assert_eq!(status["term"], 3);
    let text = ctl.run(&["status"]).await;
    assert!(text.assert_exit(0).stdout().contains(&node.node_id()));
}

#[tokio::test]
async fn endpoint_status_reports_every_endpoint_and_exits_3_if_one_is_down() {
    let node = FakeNode::start().await;
    let dead = dead_address();
    let endpoints = format!("{},{dead}", node.address());
    let run = Kvsctl::at(&endpoints)
        .run(&["-o", "json", "endpoint", "status"])
        .await;
    let statuses = run.assert_exit(3).json();
    let statuses = statuses.as_array().expect("a JSON array");
    assert_eq!(statuses.len(), 2);
    assert_eq!(
        keys(&statuses[0]),
        BTreeSet::from([
            "endpoint",
            "node_id",
            "cluster_id",
            "address",
            "peer_address",
            "is_member",
            "role",
            "durable",
            "applied_index",
            "leader",
        ])
    );
    assert_eq!(statuses[0]["endpoint"], node.address());
    assert_eq!(statuses[0]["node_id"], node.node_id());
    assert_eq!(keys(&statuses[1]), BTreeSet::from(["endpoint", "error"]));
    assert_eq!(statuses[1]["endpoint"], dead);

    let healthy = Kvsctl::at(node.address())
        .run(&["endpoint", "status"])
        .await;
    assert!(healthy.assert_exit(0).stdout().contains(&node.node_id()));
}
