//! TLS on every port (issue 17): the client and RESP ports refuse plaintext and certificates from
//! a foreign CA, the peer port admits only peers certified by the peer CA and only as the member
//! their certificate names, and certificates rotated on disk take effect without a restart
//! while writes go on. Every certificate is made here with rcgen; all nodes run on 127.0.0.1,
//! so the node certificates name that address.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use kvs_node::identity::parse_node_id;
use kvs_node::peer_proto::Envelope;
use kvs_node::peer_proto::PeerMessage;
use kvs_node::peer_proto::peer_client::PeerClient;
use kvs_tests::ClientTls;
use kvs_tests::Cluster;
use kvs_tests::ClusterOptions;
use kvs_tests::Writer;
use kvs_tests::exit;
use kvs_tests::wait_until;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;

use crate::MARGIN;
use crate::other_than;

/// A certificate authority made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key, both PEM; good for
    /// serving and for client authentication alike.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "kvs test");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `contents` to `path` the way a rotation does: whole, by renaming a new file over it.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).expect("write a TLS file");
    std::fs::rename(&tmp, path).expect("rename a TLS file");
}

/// The TLS files of one test: the client side (node server certificate, kvsctl's client
/// certificate, both from the client CA) and the peer side (from the peer CA).
struct Pki {
    dir: tempfile::TempDir,
    client_ca: Ca,
    peer_ca: Ca,
}

impl Pki {
    fn new() -> Self {
        let pki = Pki {
            dir: tempfile::tempdir().expect("a directory for certificates"),
            client_ca: Ca::new("kvs client CA"),
            peer_ca: Ca::new("kvs peer CA"),
        };
        pki.write_client(&pki.client_ca, &pki.client_ca.pem);
        pki.write_peer(&pki.peer_ca, &pki.peer_ca.pem);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).to_str().expect("UTF-8 paths").to_string()
    }

    /// The node's client-port certificate and kvsctl's, from `ca`, with `bundle` as the CA
    /// file both sides trust.
    fn write_client(&self, ca: &Ca, bundle: &str) {
        replace(&self.path("client-ca.pem"), bundle);
        let (cert, key) = ca.issue(&["127.0.0.1"]);
        replace(&self.path("server.key"), &key);
        replace(&self.path("server.pem"), &cert);
        let (cert, key) = ca.issue(&["kvsctl"]);
        replace(&self.path("kvsctl.key"), &key);
        replace(&self.path("kvsctl.pem"), &cert);
    }

    /// The peer certificate every node uses (their peer addresses are all on 127.0.0.1), from
    /// `ca`, with `bundle` as the peer CA file.
    fn write_peer(&self, ca: &Ca, bundle: &str) {
        replace(&self.path("peer-ca.pem"), bundle);
        let (cert, key) = ca.issue(&["127.0.0.1"]);
        replace(&self.path("peer.key"), &key);
        replace(&self.path("peer.pem"), &cert);
    }

    /// Node flags: TLS with client certificates on the client and RESP ports, mutual TLS on
    /// the peer port.
    fn node_args(&self) -> Vec<String> {
        [
            ("--cert-file", "server.pem"),
            ("--key-file", "server.key"),
            ("--trusted-ca-file", "client-ca.pem"),
            ("--peer-cert-file", "peer.pem"),
            ("--peer-key-file", "peer.key"),
            ("--peer-trusted-ca-file", "peer-ca.pem"),
        ]
        .into_iter()
        .flat_map(|(flag, file)| [flag.to_string(), self.path_str(file)])
        .chain(["--client-cert-auth".to_string()])
        .collect()
    }

    fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca: self.path("client-ca.pem"),
            cert: self.path("kvsctl.pem"),
            key: self.path("kvsctl.key"),
        }
    }

    /// Options for a cluster with TLS everywhere, RESP included.
    fn options(&self) -> ClusterOptions {
        ClusterOptions {
            separate_peer_port: true,
            resp: true,
            extra_args: self.node_args(),
            client_tls: Some(self.client_tls()),
            ..ClusterOptions::default()
        }
    }

    /// Writes `files` (name, PEM) into a directory of their own and returns kvsctl flags naming
    /// them in order: `--cacert`, `--cert`, `--key`.
    fn kvsctl_flags(&self, tag: &str, ca: &str, cert: &str, key: &str) -> Vec<String> {
        let mut flags = Vec::new();
        for (flag, contents) in [("--cacert", ca), ("--cert", cert), ("--key", key)] {
            let path = self.path(&format!("{tag}{flag}.pem"));
            std::fs::write(&path, contents).expect("write");
            flags.extend([flag.to_string(), path.to_str().expect("UTF-8").to_string()]);
        }
        flags
    }
}

/// Runs `redis-cli` with `args` against `addr`, bounded; returns (success, stdout + stderr).
async fn redis_cli(addr: &str, tls: &[String], args: &[&str]) -> (bool, String) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let run = tokio::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(tls)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("redis-cli finishes")
        .expect("run redis-cli (apt-get install redis-tools)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Issue 17 "must show" 1 and 4: plaintext and foreign certificates are refused on the client
/// and RESP ports, the right certificates work with kvsctl and redis-cli.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_resp_ports_serve_only_tls_with_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let cluster = Cluster::start(3, pki.options()).await;

    let put = cluster.kvsctl(["put", "tls-key", "v1"]).await;
    assert!(put.success(), "{put}");
    let get = cluster.kvsctl(["get", "tls-key"]).await;
    assert!(get.success() && get.stdout.contains("v1"), "{get}");

    let plaintext = cluster
        .cli()
        .with_args(Vec::new())
        .run(["put", "plain", "v"])
        .await;
    assert_eq!(plaintext.code, Some(exit::NOT_APPLIED), "{plaintext}");

    let stranger = Ca::new("a stranger's CA");
    let (cert, key) = stranger.issue(&["kvsctl"]);
    let foreign_client = pki.kvsctl_flags("foreign-client", &pki.client_ca.pem, &cert, &key);
    let refused = cluster
        .cli()
        .with_args(foreign_client)
        .run(["put", "foreign", "v"])
        .await;
    assert_eq!(refused.code, Some(exit::NOT_APPLIED), "{refused}");

    let (cert, key) = pki.client_ca.issue(&["kvsctl"]);
    let wrong_ca = pki.kvsctl_flags("wrong-ca", &stranger.pem, &cert, &key);
    let unverified = cluster
        .cli()
        .with_args(wrong_ca)
        .run(["put", "unverified", "v"])
        .await;
    assert_eq!(unverified.code, Some(exit::NOT_APPLIED), "{unverified}");
    assert!(
        unverified.stderr.to_lowercase().contains("certificate"),
        "a TLS failure should say so: {unverified}"
    );
    for key in ["plain", "foreign", "unverified"] {
        let get = cluster.kvsctl(["get", key]).await;
        assert!(
            get.success() && get.stdout.trim().is_empty(),
            "{key}: {get}"
        );
    }

    let resp = cluster.node(0).resp_address().expect("RESP is served");
    let redis_tls: Vec<String> = std::iter::once("--tls".to_string())
        .chain(pki.client_tls().kvsctl_args())
        .collect();
    let (ok, out) = redis_cli(&resp, &redis_tls, &["SET", "resp-key", "r1"]).await;
    assert!(ok && out.contains("OK"), "redis-cli --tls SET: {out}");
    let (ok, out) = redis_cli(&resp, &redis_tls, &["GET", "resp-key"]).await;
    assert!(ok && out.contains("r1"), "redis-cli --tls GET: {out}");
    let (_, out) = redis_cli(&resp, &[], &["SET", "resp-plain", "r"]).await;
    assert!(!out.contains("OK"), "plaintext RESP was served: {out}");
    let get = cluster.kvsctl(["get", "resp-plain"]).await;
    assert!(get.success() && get.stdout.trim().is_empty(), "{get}");
}

/// A vote over the peer port from the test process, with TLS from `tls` (or plaintext),
/// claiming to come from `from` for `to`: the node's answer, or why there was none. An empty
/// payload: the connection and the certificate are judged before the payload is read.
async fn send_as_peer(
    peer_addr: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    cluster_id: String,
    from: u64,
    to: u64,
) -> Result<tonic::Status, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{peer_addr}"))
        .expect("URI")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let endpoint = match tls {
        Some(tls) => endpoint.tls_config(tls).expect("TLS config"),
        None => endpoint,
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("not connected: {e:?}"))?;
    let message = PeerMessage {
        envelope: Some(Envelope {
            cluster_id,
            from,
            to,
            format: kvs_node::PEER_FORMAT,
        }),
        payload: Bytes::new(),
        sent_at_ms: 0,
    };
    match PeerClient::new(channel).vote(message).await {
        Ok(_) => Ok(tonic::Status::ok("admitted")),
        Err(status) => Ok(status),
    }
}

/// Issue 17 "must show" 1 (peer part): a node whose peer certificate comes from another CA
/// cannot become a member; a connection without a peer-CA certificate never reaches the Raft
/// core (plaintext is told to use TLS, another CA's certificate fails the handshake), so a
/// forged vote cannot move the cluster's term; and a peer-CA certificate that names another
/// host cannot speak for a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_admitted_only_with_a_peer_ca_certificate_naming_its_own_address() {
    let pki = Pki::new();
    let mut options = pki.options();
    // Seat 3 runs with a peer certificate of its own CA (env flags; the command line has none
    // for it).
    let rogue_ca = Ca::new("rogue peer CA");
    let (cert, key) = rogue_ca.issue(&["127.0.0.1"]);
    for (name, contents) in [
        ("rogue-peer.pem", &cert),
        ("rogue-peer.key", &key),
        ("rogue-ca.pem", &rogue_ca.pem),
    ] {
        std::fs::write(pki.path(name), contents).expect("write");
    }
    options.extra_args = strip_peer_files(&pki.node_args());
    for seat in 0..4 {
        let (cert, key, ca) = if seat == 3 {
            ("rogue-peer.pem", "rogue-peer.key", "rogue-ca.pem")
        } else {
            ("peer.pem", "peer.key", "peer-ca.pem")
        };
        options.node_env.insert(
            seat,
            vec![
                ("KVS_PEER_CERT_FILE".into(), pki.path_str(cert)),
                ("KVS_PEER_KEY_FILE".into(), pki.path_str(key)),
                ("KVS_PEER_TRUSTED_CA_FILE".into(), pki.path_str(ca)),
            ],
        );
    }
    let mut cluster = Cluster::start(3, options).await;
    let leader = cluster.leader().await;
    let before = cluster.status(leader).await.expect("status");

    // The rogue node: its client certificate is fine, so the leader learns its identity and
    // adds it as a learner, but no replication reaches it.
    let rogue = cluster.start_node().await;
    let address = cluster.node(rogue).address();
    let add = cluster
        .kvsctl_at(
            leader,
            ["--timeout", "10s", "member", "add", address.as_str()],
        )
        .await;
    assert!(!add.success(), "the rogue node caught up: {add}");
    let info = cluster.node_info(rogue).await.expect("rogue node info");
    assert!(
        info.cluster_id.is_empty() && !info.is_member && info.applied_index == 0,
        "the rogue node received the cluster's log: {info:?}"
    );

    // Forged votes with a huge term: refused at the handshake (no certificate, or one from
    // another CA), so the term stays.
    let follower = other_than(&cluster, leader);
    let peer_addr = cluster.node(follower).peer_address();
    let to = parse_node_id(cluster.node(follower).id()).expect("node ID");
    let from = parse_node_id(cluster.node(leader).id()).expect("node ID");
    let (cert, key) = rogue_ca.issue(&["127.0.0.1"]);
    let rogue_tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.peer_ca.pem))
        .identity(tonic::transport::Identity::from_pem(cert, key));
    let plaintext = send_as_peer(&peer_addr, None, before.cluster_id.clone(), from, to)
        .await
        .expect("a plaintext client is answered, to be told to use TLS");
    assert_eq!(
        plaintext.code(),
        tonic::Code::Unauthenticated,
        "{plaintext:?}"
    );
    let foreign = send_as_peer(
        &peer_addr,
        Some(rogue_tls),
        before.cluster_id.clone(),
        from,
        to,
    )
    .await;
    if let Ok(status) = foreign {
        // A failure of the client's own transport (it carries its cause), never a status the
        // node sent.
        assert!(
            std::error::Error::source(&status).is_some(),
            "a peer with another CA's certificate got an answer from the node: {status:?}"
        );
    }

    // A peer-CA certificate naming another host ("localhost", not the leader's 127.0.0.1)
    // cannot speak as the leader.
    let (cert, key) = pki.peer_ca.issue(&["localhost"]);
    let other_name = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.peer_ca.pem))
        .identity(tonic::transport::Identity::from_pem(cert, key));
    let status = send_as_peer(
        &peer_addr,
        Some(other_name),
        before.cluster_id.clone(),
        from,
        to,
    )
    .await
    .expect("a peer-CA certificate connects");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let reject = status
        .metadata()
        .get("kvs-peer-reject")
        .and_then(|v| v.to_str().ok());
    assert_eq!(reject, Some("certificate-for-another"), "{status:?}");

    let after = cluster.status(leader).await.expect("status");
    assert_eq!(
        (after.term, after.leader.as_str()),
        (before.term, before.leader.as_str()),
        "the refused peers moved the cluster"
    );
    let put = cluster.kvsctl(["put", "after-forgery", "v"]).await;
    assert!(put.success(), "{put}");
    cluster.kill(rogue);
}

/// The node flags without the peer ones (given per seat in the environment instead).
fn strip_peer_files(args: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg.starts_with("--peer-") {
            args.next();
        } else {
            kept.push(arg.clone());
        }
    }
    kept
}

/// How many times each node has logged a TLS reload.
fn reloads(cluster: &Cluster) -> Vec<usize> {
    (0..cluster.len())
        .map(|i| {
            std::fs::read_to_string(cluster.node(i).log_path())
                .unwrap_or_default()
                .matches("reloaded the TLS certificates")
                .count()
        })
        .collect()
}

/// Waits until every node has logged a reload beyond the counts in `was`.
async fn wait_reloaded(cluster: &Cluster, was: Vec<usize>, what: &str) {
    wait_until(Duration::from_secs(30) + MARGIN, what, || async {
        reloads(cluster)
            .iter()
            .zip(&was)
            .all(|(now, was)| now > was)
    })
    .await;
}

/// Issue 17 "must show" 1 (rotation): a new CA is added to the bundles, then every certificate
/// is replaced by one from the new CA, on disk, while a writer keeps writing: no write fails,
/// the leader stays, and new connections are made with the new certificates (a client that
/// trusts only the new CA is served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_on_disk_take_effect_without_a_restart_or_a_failed_write() {
    let pki = Pki::new();
    let cluster = Cluster::start(3, pki.options()).await;
    let leader = cluster.leader().await;
    let before = cluster.status(leader).await.expect("status");
    let writer = Writer::spawn(cluster.cli(), "rotate");
    writer.wait_acked(5, Duration::from_secs(60)).await;

    // First the bundles gain the new CAs, then the certificates move to them.
    let (client_ca, peer_ca) = (Ca::new("kvs client CA 2"), Ca::new("kvs peer CA 2"));
    let was = reloads(&cluster);
    let client_bundle = format!("{}{}", pki.client_ca.pem, client_ca.pem);
    let peer_bundle = format!("{}{}", pki.peer_ca.pem, peer_ca.pem);
    replace(&pki.path("client-ca.pem"), &client_bundle);
    replace(&pki.path("peer-ca.pem"), &peer_bundle);
    wait_reloaded(&cluster, was, "every node reloaded the new bundles").await;
    let acked = writer.acked();
    writer.wait_acked(acked + 3, Duration::from_secs(60)).await;

    let was = reloads(&cluster);
    pki.write_client(&client_ca, &client_bundle);
    pki.write_peer(&peer_ca, &peer_bundle);
    wait_reloaded(&cluster, was, "every node reloaded the new certificates").await;
    let acked = writer.acked();
    writer.wait_acked(acked + 5, Duration::from_secs(60)).await;

    // Only the new CA trusted, only a new client certificate: served.
    let (cert, key) = client_ca.issue(&["kvsctl"]);
    let new_only = pki.kvsctl_flags("new-only", &client_ca.pem, &cert, &key);
    for i in 0..cluster.len() {
        let put = cluster
            .cli_at(i)
            .with_args(new_only.clone())
            .run(["put", "rotated", "v"])
            .await;
        assert!(put.success(), "node {i} after the rotation: {put}");
    }

    let log = writer.stop().await;
    assert!(
        log.not_applied.is_empty() && log.unknown.is_empty() && log.other.is_empty(),
        "writes failed during the rotation:\n{}",
        log.failures()
    );
    let after = cluster.status(leader).await.expect("status");
    assert_eq!(
        (after.term, after.leader.as_str()),
        (before.term, before.leader.as_str()),
        "the rotation cost the cluster its leader"
    );
    cluster.assert_writes_durable(leader, &log).await;
}
