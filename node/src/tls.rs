//! TLS for the node's ports: the material each port serves and dials with, re-read from its
//! files while the node runs, and the one rule for who a peer certificate speaks for.
//!
//! Certificates are rotated on disk (by hand, by cert-manager, by Kubernetes swapping a Secret's
//! symlinks), so a node must pick them up without a restart, which would cost the cluster a
//! leader. [`Tls::reload`] compares each file's modification time and length with what it last
//! read and rebuilds the material when one changed; a file that does not make valid material is
//! logged and the material in use kept, so a half-written rotation never takes a port down.
//! Connections already open keep the session they made; every new handshake, inbound or
//! outbound, takes the material current at that moment.
//!
//! rustls with the ring provider only: no OpenSSL, and the same stack the operator's Kubernetes
//! client uses.

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::SystemTime;

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::UnixTime;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerified;
use rustls::server::danger::ClientCertVerifier;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::TlsConnector;

use crate::lock;

/// How long a TLS handshake may take, inbound or outbound, before the connection is dropped: a
/// client that connects and sends nothing must not hold a connection slot.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The files one port's TLS is made from, as the flags name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// The port's certificate chain (PEM), leaf first.
    pub(crate) cert: PathBuf,
    /// Its private key (PEM).
    pub(crate) key: PathBuf,
    /// The CA bundle (PEM) that the other side's certificates must chain to: required of
    /// connecting clients when `require_client_cert`, and of the servers this node dials.
    pub(crate) ca: Option<PathBuf>,
    /// Whether and how connecting clients must present a certificate from `ca`.
    pub(crate) client_auth: ClientAuth,
}

/// Whether a port requires client certificates, and where it checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// Any client may connect.
    None,
    /// The handshake fails without a certificate from the CA (the peer port: peers need no
    /// explanation).
    InHandshake,
    /// The handshake takes any certificate whose key the client holds, and the connection is
    /// verified right after it ([`Material::verify_client`]): one that fails is refused every
    /// call with a message, where a failed handshake would leave the client with a broken
    /// connection whose request may or may not have been read (TLS 1.3 clients learn of the
    /// refusal only after sending).
    AfterHandshake,
}

/// The TLS of one port, kept current with its files.
pub(crate) struct Tls {
    /// The port's name in logs ("client", "peer").
    port: &'static str,
    files: TlsFiles,
    state: Mutex<State>,
}

struct State {
    /// The files' stamps when last read, in the order of [`TlsFiles::paths`].
    stamps: Vec<Option<Stamp>>,
    material: Arc<Material>,
}

/// A file's modification time and length, read through symlinks.
type Stamp = (SystemTime, u64);

/// What handshakes are made with.
pub(crate) struct Material {
    acceptor: TlsAcceptor,
    /// Present when there is a CA to verify the servers this node dials.
    connector: Option<TlsConnector>,
    /// With [`ClientAuth::AfterHandshake`], what a client's certificate is verified with.
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl Material {
    /// What the next inbound handshake uses.
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Checks the certificate chain a client presented (leaf first) when the port verifies it
    /// after the handshake; the reason it is refused otherwise.
    pub(crate) fn verify_client(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<(), String> {
        let Some(verifier) = &self.client_verifier else {
            return Ok(());
        };
        let Some((leaf, intermediates)) = chain.and_then(|chain| chain.split_first()) else {
            return Err("this port requires a client certificate".into());
        };
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("the client certificate is refused: {e}"))
    }
}

/// The client verifier of [`ClientAuth::AfterHandshake`]: in the handshake it checks only that
/// the client holds the key of the certificate it presents (the signatures), and asks for a
/// certificate without requiring one.
#[derive(Debug)]
struct KeyHeldOnly(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for KeyHeldOnly {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.ca.as_deref());
        paths
    }

    fn stamps(&self) -> Vec<Option<Stamp>> {
        self.paths()
            .into_iter()
            .map(|path| {
                let meta = std::fs::metadata(path).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }

    /// Reads the files and builds the material, or says which file is wrong and why.
    fn build(&self) -> Result<Material, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("{}: no private key read: {e}", self.key.display()))?;
        let roots = match &self.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: not a CA certificate: {e}", ca.display()))?;
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let verifier = match (&roots, self.client_auth) {
            (Some(roots), ClientAuth::InHandshake | ClientAuth::AfterHandshake) => Some(
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| format!("the client CA: {e}"))?,
            ),
            _ => None,
        };
        let (server, client_verifier) = match (verifier, self.client_auth) {
            (Some(verifier), ClientAuth::AfterHandshake) => (
                server.with_client_cert_verifier(Arc::new(KeyHeldOnly(verifier.clone()))),
                Some(verifier),
            ),
            (Some(verifier), _) => (server.with_client_cert_verifier(verifier), None),
            (None, _) => (server.with_no_client_auth(), None),
        };
        let mut server = server
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                format!(
                    "{} and {} do not make a certificate and its key: {e}",
                    self.cert.display(),
                    self.key.display()
                )
            })?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let connector = match roots {
            Some(roots) => {
                let mut client = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| e.to_string())?;
                client.alpn_protocols = vec![b"h2".to_vec()];
                Some(TlsConnector::from(Arc::new(client)))
            }
            None => None,
        };
        Ok(Material {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector,
            client_verifier,
        })
    }
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

impl Tls {
    /// Reads the port's files; a node whose files are wrong at start does not start.
    pub(crate) fn load(port: &'static str, files: TlsFiles) -> Result<Arc<Self>, String> {
        let stamps = files.stamps();
        let material = Arc::new(files.build()?);
        Ok(Arc::new(Self {
            port,
            files,
            state: Mutex::new(State { stamps, material }),
        }))
    }

    /// The material the next handshake is made with.
    pub(crate) fn material(&self) -> Arc<Material> {
        lock::lock(&self.state).material.clone()
    }

    /// What the next outbound handshake uses, if this port has a CA to verify servers with.
    pub(crate) fn connector(&self) -> Option<TlsConnector> {
        self.material().connector.clone()
    }

    /// Re-reads the files if one changed since they were last read. New material replaces the
    /// old only if it builds; either way the change is logged once.
    pub(crate) fn reload(&self) {
        let stamps = self.files.stamps();
        if lock::lock(&self.state).stamps == stamps {
            return;
        }
        let built = self.files.build();
        let mut state = lock::lock(&self.state);
        state.stamps = stamps;
        match built {
            Ok(material) => {
                state.material = Arc::new(material);
                tracing::info!(port = self.port, "reloaded the TLS certificates");
            }
            Err(why) => tracing::warn!(
                port = self.port,
                %why,
                "the TLS files changed but do not make valid material; keeping the previous"
            ),
        }
    }
}

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Whether the client on `io` opened with something other than a TLS handshake (a plaintext
/// client on a TLS port), looking without taking. An error counts as TLS: the handshake then
/// fails on its own. Waits for the client's first byte: callers bound it, with the handshake,
/// by [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn speaks_plaintext(io: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(io.peek(&mut first).await, Ok(1) if first[0] != TLS_HANDSHAKE_RECORD)
}

/// What a plaintext client on a TLS port is told.
pub(crate) const TLS_ONLY: &str =
    "this port speaks TLS only: connect with TLS (kvsctl --cacert, https://, redis-cli --tls)";

/// Reloads each port's TLS when its files change ([`Tls::reload`]) until `stop` resolves.
pub(crate) async fn watch(ports: Vec<Arc<Tls>>, stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        for tls in &ports {
            tls.reload();
        }
    }
}

/// Connects to `addr` (`host:port`) and makes a TLS session with `connector`, verifying that
/// the server's certificate names `host`; all within `timeout` plus [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn connect(
    connector: TlsConnector,
    addr: &str,
    timeout: Duration,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let host = host_of(addr).ok_or_else(|| invalid(format!("{addr} is not host:port")))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| invalid(format!("{host} is not a host name or address: {e}")))?;
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))??;
    tcp.set_nodelay(true)?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake timed out"))?
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The host of a `host:port` address, IPv6 brackets removed.
pub(crate) fn host_of(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// Whether `cert` proves the identity of the member whose peer address is `peer_addr`: one of
/// its subject alternative names (DNS or IP) is that address's host. The certificate's chain was
/// verified in the handshake; this is the name check a client makes of a server, made of a peer.
pub(crate) fn names_host_of(cert: &CertificateDer<'_>, peer_addr: &str) -> bool {
    let Some(host) = host_of(peer_addr) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(host) else {
        return false;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(cert) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(names: &[&str]) -> CertificateDer<'static> {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        rcgen::generate_simple_self_signed(names)
            .expect("a certificate")
            .cert
            .der()
            .clone()
    }

    #[test]
    fn a_certificate_speaks_for_the_member_whose_peer_host_it_names() {
        let cert = cert_for(&["kvs-1.kvs-peer", "10.0.0.7"]);
        assert!(names_host_of(&cert, "kvs-1.kvs-peer:7380"));
        assert!(names_host_of(&cert, "10.0.0.7:7380"));
        assert!(!names_host_of(&cert, "kvs-2.kvs-peer:7380"));
        assert!(!names_host_of(&cert, "10.0.0.8:7380"));
        assert!(
            !names_host_of(&cert, "kvs-1:7380"),
            "a name is matched whole"
        );
        assert!(!names_host_of(&cert, "not an address"));
    }

    #[test]
    fn an_ipv6_peer_address_is_matched_without_its_brackets() {
        let cert = cert_for(&["::1"]);
        assert!(names_host_of(&cert, "[::1]:7380"));
        assert!(!names_host_of(&cert, "127.0.0.1:7380"));
    }

    /// Writes a fresh self-signed certificate and key for `name` into `dir`.
    fn write_pair(dir: &Path, name: &str) -> TlsFiles {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: Some(dir.join("tls.crt")),
            client_auth: ClientAuth::AfterHandshake,
        };
        std::fs::write(&files.cert, made.cert.pem()).expect("write cert");
        std::fs::write(&files.key, made.signing_key.serialize_pem()).expect("write key");
        files
    }

    #[test]
    fn a_bad_new_file_keeps_the_material_in_use_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().expect("dir");
        let files = write_pair(dir.path(), "a.example");
        let tls = Tls::load("test", files.clone()).expect("loads");
        let first = tls.material();

        std::fs::write(&files.cert, "not a certificate, and of another length").expect("write");
        tls.reload();
        assert!(
            Arc::ptr_eq(&first, &tls.material()),
            "a bad file replaced the material in use"
        );

        write_pair(dir.path(), "b.example");
        tls.reload();
        assert!(
            !Arc::ptr_eq(&first, &tls.material()),
            "valid new files were not taken"
        );
    }

    #[test]
    fn files_that_do_not_make_material_fail_the_load_naming_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let mut files = write_pair(dir.path(), "a.example");
        files.key = dir.path().join("missing.key");
        let why = Tls::load("test", files).err().expect("refused");
        assert!(why.contains("missing.key"), "{why}");
    }
}
