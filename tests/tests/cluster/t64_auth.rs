//! Users and roles (`--auth-file`, issue 17): on gRPC, RESP and kvsctl, a call without
//! credentials, with a wrong password or from a role too small is refused with the documented
//! code; every admin call is refused to `readwrite`; the right credentials work, through a
//! follower too; no password or hash reaches a log; a changed file takes effect without a
//! restart; a plaintext password keeps the node from starting.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use kvs_client::Credentials;
use kvs_client::Password;
use kvs_client::proto;
use kvs_client::proto::cluster_client::ClusterClient;
use kvs_client::proto::kv_client::KvClient;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::KvsctlOutput;
use kvs_tests::RawResp;
use kvs_tests::exit;
use kvs_tests::wait_until;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::other_than;

/// A user of the test's auth file.
struct User {
    name: &'static str,
    role: &'static str,
    password: &'static str,
}

const ADMIN: User = User {
    name: "root",
    role: "admin",
    password: "admin-pw-7f3a9c0d",
};
const WRITER: User = User {
    name: "writer",
    role: "readwrite",
    password: "writer-pw-2b8d1e55",
};
const READER: User = User {
    name: "reader",
    role: "readonly",
    password: "reader-pw-5c0f44aa",
};
/// The user `AUTH password` (one argument) logs in as.
const DEFAULT: User = User {
    name: "default",
    role: "readonly",
    password: "default-pw-91ab7c3e",
};
const USERS: [&User; 4] = [&ADMIN, &WRITER, &READER, &DEFAULT];

/// The hex SHA-256 of `password`, as an operator makes it (`printf %s PW | sha256sum`).
fn sha256_hex(password: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(password.as_bytes())
        .expect("write the password");
    let out = child.wait_with_output().expect("sha256sum's output");
    String::from_utf8(out.stdout).expect("hex")[..64].to_owned()
}

/// The auth file's text for `users`.
fn auth_file(users: &[&User]) -> String {
    let mut text = String::from("# kvs users: NAME ROLE sha256:HEX\n\n");
    for user in users {
        text.push_str(&format!(
            "{} {} sha256:{}\n",
            user.name,
            user.role,
            sha256_hex(user.password)
        ));
    }
    text
}

/// The auth file and every user's password file, in a directory of their own.
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn new(users: &[&User]) -> Secrets {
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = Secrets { dir };
        secrets.write_auth_file(users);
        for user in USERS {
            std::fs::write(secrets.password_file(user), format!("{}\n", user.password))
                .expect("write a password file");
        }
        secrets
    }

    fn auth_file(&self) -> PathBuf {
        self.dir.path().join("users")
    }

    fn write_auth_file(&self, users: &[&User]) {
        // Written beside it and renamed, as a Kubernetes Secret volume swaps its files.
        let next = self.dir.path().join("users.next");
        std::fs::write(&next, auth_file(users)).expect("write the auth file");
        std::fs::rename(&next, self.auth_file()).expect("replace the auth file");
    }

    fn password_file(&self, user: &User) -> PathBuf {
        self.dir.path().join(format!("{}.password", user.name))
    }
}

fn options(secrets: &Secrets) -> ClusterOptions {
    ClusterOptions {
        separate_peer_port: true,
        resp: true,
        resp_allow_flush: true,
        extra_args: vec![
            "--auth-file".into(),
            secrets.auth_file().to_str().expect("UTF-8").into(),
        ],
        harness_user: Some((ADMIN.name.into(), ADMIN.password.into())),
        // The node's own debug lines too, so the look for secrets in the logs sees them.
        node_env: (0..3)
            .map(|seat| {
                let filter = "info,kvs_node=debug,openraft=warn";
                (seat, vec![("RUST_LOG".to_owned(), filter.to_owned())])
            })
            .collect(),
        ..ClusterOptions::default()
    }
}

fn channel(cluster: &Cluster, i: usize) -> Channel {
    Endpoint::from_shared(format!("http://{}", cluster.node(i).address()))
        .expect("a valid URI")
        .timeout(Duration::from_secs(30))
        .connect_lazy()
}

fn credentials(user: &User, password: &str) -> Credentials {
    Credentials::new(user.name, Password::new(password)).expect("valid credentials")
}

fn kv_as(
    cluster: &Cluster,
    i: usize,
    user: &User,
) -> KvClient<InterceptedService<Channel, Credentials>> {
    KvClient::with_interceptor(channel(cluster, i), credentials(user, user.password))
}

fn cluster_as(
    cluster: &Cluster,
    i: usize,
    user: &User,
) -> ClusterClient<InterceptedService<Channel, Credentials>> {
    ClusterClient::with_interceptor(channel(cluster, i), credentials(user, user.password))
}

fn put_request(key: &str, value: &str) -> proto::PutRequest {
    proto::PutRequest {
        key: key.to_owned().into(),
        value: value.to_owned().into(),
        ..Default::default()
    }
}

fn get_request(key: &str) -> proto::GetRequest {
    proto::GetRequest {
        key: key.to_owned().into(),
        serializable: false,
    }
}

fn clear_batch() -> proto::BatchRequest {
    proto::BatchRequest {
        ops: vec![proto::Op {
            op: Some(proto::op::Op::Clear(proto::ClearOp {})),
        }],
        ..Default::default()
    }
}

/// The code of a call's failure; panics if it succeeded.
fn code_of<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(answer) => panic!("{what} succeeded: {answer:?}"),
        Err(status) => status.code(),
    }
}

/// Every kvsctl run of a test, kept for the final look for secrets.
#[derive(Default)]
struct Runs(Vec<KvsctlOutput>);

impl Runs {
    fn keep(&mut self, out: KvsctlOutput) -> &KvsctlOutput {
        self.0.push(out);
        self.0.last().expect("just pushed")
    }
}

/// kvsctl refused `out` as not applied, for the reason `why`.
fn assert_refused(out: &KvsctlOutput, why: &str) {
    assert_eq!(out.code, Some(exit::NOT_APPLIED), "{out}");
    assert!(out.stderr.contains(why), "expected {why:?}: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn users_and_roles_are_enforced_on_grpc_resp_and_kvsctl() {
    let secrets = Secrets::new(&USERS);
    let cluster = Cluster::start(3, options(&secrets)).await;
    let leader = cluster.leader().await;
    let follower = other_than(&cluster, leader);
    let mut runs = Runs::default();

    // gRPC: no credentials, a wrong password, a role too small.
    let mut anonymous = KvClient::new(channel(&cluster, follower));
    let no_credentials = anonymous.get(get_request("k")).await;
    assert_eq!(
        code_of("get without credentials", no_credentials),
        Code::Unauthenticated
    );
    let status = ClusterClient::new(channel(&cluster, follower))
        .status(proto::StatusRequest::default())
        .await;
    assert_eq!(
        code_of("status without credentials", status),
        Code::Unauthenticated
    );
    ClusterClient::new(channel(&cluster, follower))
        .node_info(proto::NodeInfoRequest {})
        .await
        .expect("NodeInfo is open: it is how clients find the leader");
    let mut wrong = KvClient::with_interceptor(
        channel(&cluster, follower),
        credentials(&WRITER, READER.password),
    );
    let put = wrong.put(put_request("k", "v")).await;
    assert_eq!(
        code_of("put with a wrong password", put),
        Code::Unauthenticated
    );
    let put = kv_as(&cluster, follower, &READER)
        .put(put_request("k", "v"))
        .await;
    assert_eq!(code_of("put by readonly", put), Code::PermissionDenied);
    kv_as(&cluster, follower, &READER)
        .get(get_request("k"))
        .await
        .expect("readonly reads");

    // The right credentials work, through a follower too (forwarded to the leader).
    kv_as(&cluster, follower, &WRITER)
        .put(put_request("k", "v1"))
        .await
        .expect("readwrite writes through a follower");
    let got = kv_as(&cluster, leader, &READER)
        .get(get_request("k"))
        .await
        .expect("readonly reads on the leader")
        .into_inner();
    assert_eq!(&got.value[..], b"v1");

    // Every admin call is refused to readwrite, on the follower and on the leader.
    let members = cluster_as(&cluster, leader, &WRITER)
        .list_members(proto::ListMembersRequest {})
        .await
        .expect("readwrite lists the members")
        .into_inner()
        .members;
    let member = members
        .iter()
        .find(|m| m.id == cluster.node(follower).id())
        .expect("the follower is a member")
        .id
        .clone();
    for i in [follower, leader] {
        let mut admin_calls = cluster_as(&cluster, i, &WRITER);
        let refused = [
            (
                "Initialize",
                code_of(
                    "",
                    admin_calls.initialize(proto::InitializeRequest {}).await,
                ),
            ),
            (
                "AddLearner",
                code_of(
                    "",
                    admin_calls
                        .add_learner(proto::AddLearnerRequest {
                            address: "127.0.0.1:1".into(),
                        })
                        .await,
                ),
            ),
            (
                "PromoteMember",
                code_of(
                    "",
                    admin_calls
                        .promote_member(proto::PromoteMemberRequest { id: member.clone() })
                        .await,
                ),
            ),
            (
                "RemoveMember",
                code_of(
                    "",
                    admin_calls
                        .remove_member(proto::RemoveMemberRequest {
                            id: member.clone(),
                            force: false,
                        })
                        .await,
                ),
            ),
            (
                "TransferLeader",
                code_of(
                    "",
                    admin_calls
                        .transfer_leader(proto::TransferLeaderRequest { to: member.clone() })
                        .await
                        .map(|_| ()),
                ),
            ),
            (
                "Snapshot",
                code_of(
                    "",
                    admin_calls
                        .snapshot(proto::SnapshotRequest {})
                        .await
                        .map(|_| ()),
                ),
            ),
            (
                "Batch with Clear",
                code_of("", kv_as(&cluster, i, &WRITER).batch(clear_batch()).await),
            ),
            (
                "Batch as a restore",
                code_of(
                    "",
                    kv_as(&cluster, i, &WRITER)
                        .batch(proto::BatchRequest {
                            restore: true,
                            ..Default::default()
                        })
                        .await,
                ),
            ),
        ];
        for (call, code) in refused {
            assert_eq!(
                code,
                Code::PermissionDenied,
                "{call} by readwrite on node {i}"
            );
        }
    }
    assert_eq!(cluster.members(leader).await.expect("members").len(), 3);
    let got = kv_as(&cluster, leader, &READER)
        .get(get_request("k"))
        .await
        .expect("a read")
        .into_inner();
    assert!(got.found, "the refused clear cleared nothing");

    // kvsctl: the same, with exit 3 and a clear message.
    let backup = secrets.dir.path().join("backup.kvs");
    let backup = backup.to_str().expect("UTF-8");
    let writer = cluster
        .cli_at(follower)
        .as_user(WRITER.name, &secrets.password_file(&WRITER));
    let reader = cluster
        .cli_at(follower)
        .as_user(READER.name, &secrets.password_file(&READER));
    for args in [
        vec!["member", "add", "127.0.0.1:1"],
        vec!["member", "promote", member.as_str()],
        vec!["member", "remove", member.as_str()],
        vec!["snapshot", "save", backup],
    ] {
        let out = runs.keep(writer.run(&args).await);
        assert_refused(out, "permission denied");
    }
    let out = runs.keep(reader.run(["put", "k", "v2"]).await);
    assert_refused(out, "permission denied");
    let out = runs.keep(
        cluster
            .cli_at(follower)
            .as_user(WRITER.name, &secrets.password_file(&READER))
            .run(["get", "k"])
            .await,
    );
    assert_refused(out, "not authenticated");
    runs.keep(writer.run(["put", "k", "v2"]).await).ok();
    let out = runs.keep(reader.run(["get", "k"]).await);
    assert_eq!(out.ok().trim(), "v2");

    // Restore: a backup the admin took, into the cluster the admin emptied, refused to
    // readwrite and allowed to admin.
    runs.keep(cluster.kvsctl(["snapshot", "save", backup]).await)
        .ok();
    kv_as(&cluster, leader, &ADMIN)
        .batch(clear_batch())
        .await
        .expect("admin clears the keyspace");
    let out = runs.keep(writer.run(["snapshot", "restore", backup]).await);
    assert_refused(out, "permission denied");
    runs.keep(cluster.kvsctl(["snapshot", "restore", backup]).await)
        .ok();
    let out = runs.keep(reader.run(["get", "k"]).await);
    assert_eq!(out.ok().trim(), "v2");

    // RESP, on a follower.
    let resp = cluster.node(follower).resp_address().expect("RESP");
    let mut conn = RawResp::connect(&resp).await;
    assert_eq!(
        conn.command(&["GET", "k"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(
        conn.command(&["AUTH", WRITER.name, READER.password]).await,
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(
        conn.command(&["SET", "r", "1"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(
        conn.command(&["AUTH", WRITER.name, WRITER.password]).await,
        b"+OK\r\n"
    );
    assert_eq!(conn.command(&["SET", "r", "1"]).await, b"+OK\r\n");
    for flush in ["FLUSHDB", "FLUSHALL"] {
        let expected = format!(
            "-NOPERM User writer has no permissions to run the '{}' command\r\n",
            flush.to_lowercase()
        );
        assert_eq!(conn.command(&[flush]).await, expected.as_bytes(), "{flush}");
    }
    let listed = String::from_utf8(conn.command(&["CLIENT", "LIST"]).await).expect("UTF-8");
    assert!(listed.contains("user=writer"), "{listed}");

    let mut default = RawResp::connect(&resp).await;
    assert_eq!(
        default.command(&["AUTH", DEFAULT.password]).await,
        b"+OK\r\n"
    );
    assert_eq!(default.command(&["GET", "r"]).await, b"$1\r\n1\r\n");
    assert_eq!(
        default.command(&["SET", "r", "2"]).await,
        b"-NOPERM User default has no permissions to run the 'set' command\r\n"
    );

    let mut admin = RawResp::connect(&resp).await;
    let hello = admin.command(&["HELLO", "2"]).await;
    assert!(
        hello.starts_with(b"-NOAUTH HELLO must be called"),
        "{hello:?}"
    );
    let hello = admin
        .command(&["HELLO", "2", "AUTH", ADMIN.name, ADMIN.password])
        .await;
    assert!(
        hello.starts_with(b"*"),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    let info = String::from_utf8(admin.command(&["INFO"]).await).expect("UTF-8");
    let cli = redis_cli_as(&resp, &WRITER, &["SET", "cli", "1"]).await;
    assert_eq!(cli.trim(), "OK", "redis-cli --user --pass");
    let cli = redis_cli_as(&resp, &READER, &["SET", "cli", "2"]).await;
    assert!(cli.contains("NOPERM"), "redis-cli as readonly: {cli}");
    assert_eq!(admin.command(&["FLUSHALL"]).await, b"+OK\r\n");
    assert_eq!(admin.command(&["DBSIZE"]).await, b":0\r\n");

    // No password and no hash anywhere in what the run wrote.
    let mut written: Vec<(String, String)> = (0..cluster.len())
        .map(|i| {
            let log = cluster.node(i).log_path();
            let text = std::fs::read_to_string(log).expect("a node's log");
            (log.display().to_string(), text)
        })
        .collect();
    written.extend(runs.0.iter().map(|out| (format!("{out}"), out.text())));
    written.push(("INFO".into(), info));
    written.push(("redis-cli".into(), cli));
    written.push(("CLIENT LIST".into(), listed));
    for user in USERS {
        for secret in [user.password.to_owned(), sha256_hex(user.password)] {
            for (source, text) in &written {
                assert!(
                    !text.contains(&secret),
                    "{source} shows a secret of {}",
                    user.name
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_auth_file_takes_effect_without_a_restart() {
    let secrets = Secrets::new(&[&ADMIN, &WRITER]);
    let cluster = Cluster::start(1, options(&secrets)).await;
    kv_as(&cluster, 0, &WRITER)
        .put(put_request("k", "v"))
        .await
        .expect("the writer writes");

    secrets.write_auth_file(&[&ADMIN]);
    wait_until(
        Duration::from_secs(30),
        "the removed user is refused",
        || async {
            let put = kv_as(&cluster, 0, &WRITER).put(put_request("k", "v")).await;
            matches!(put, Err(status) if status.code() == Code::Unauthenticated)
        },
    )
    .await;
    kv_as(&cluster, 0, &ADMIN)
        .put(put_request("k", "v2"))
        .await
        .expect("the admin still writes");
    assert!(cluster.node(0).is_running(), "the node was not restarted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plaintext_password_keeps_the_node_from_starting() {
    let bins = tokio::task::spawn_blocking(kvs_tests::binaries)
        .await
        .expect("binaries");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("users");
    let plaintext = "hunter2-plaintext-0c1d";
    std::fs::write(
        &file,
        format!(
            "# admins\n{} admin sha256:{}\nalice readwrite {plaintext}\n",
            ADMIN.name,
            sha256_hex(ADMIN.password)
        ),
    )
    .expect("write the auth file");
    let out = run_node(&bins.node, &file).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("line 3") && stderr.contains("plaintext"),
        "{stderr}"
    );
    for text in [&stderr, &stdout] {
        assert!(!text.contains(plaintext), "the password is echoed: {text}");
        assert!(
            !text.contains(&sha256_hex(ADMIN.password)),
            "a hash is echoed: {text}"
        );
    }
}

/// Runs one command with `redis-cli --user --pass` against `address`; its output.
async fn redis_cli_as(address: &str, user: &User, command: &[&str]) -> String {
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let run = tokio::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port, "--no-auth-warning"])
        .args(["--user", user.name, "--pass", user.password])
        .args(command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("redis-cli finishes")
        .expect("run redis-cli (apt-get install redis-tools)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `kvs-node` with the auth file `file` until it exits (bounded).
async fn run_node(node: &Path, file: &Path) -> std::process::Output {
    let run = tokio::process::Command::new(node)
        .args([
            "--in-memory",
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .arg("--auth-file")
        .arg(file)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the node exits within a minute")
        .expect("run kvs-node")
}
