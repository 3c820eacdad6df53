//! The connections the gRPC servers accept: at most `--max-grpc-connections` at once, and an
//! accept loop that backs off when accepting fails.
//!
//! tonic's own listener stream hands every accept error to the server, which retries at once:
//! when the process is out of file descriptors (EMFILE) the listener stays readable and the
//! loop spins a core while the condition lasts, as hyper's and axum's accept loops learned to
//! avoid. Here an error other than one about the single connection being accepted waits,
//! doubling up to a second, before the next accept. And a connection holds a slot for as long
//! as it is open: at the cap, new connections wait in the kernel's backlog instead of each
//! taking a descriptor and a task. On a TLS port the handshake is made here too, bounded in
//! time, so a connection that never completes one cannot hold a slot for long.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use futures::Stream;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::tls::HANDSHAKE_TIMEOUT;
use crate::tls::Material;
use crate::tls::TLS_ONLY;
use crate::tls::Tls;
use crate::tls::speaks_plaintext;

/// The first wait after a failed accept; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// An accepted connection (its TLS session made, on a TLS port) and the slot it holds until it
/// closes.
pub(crate) struct Connection {
    io: Io,
    info: ConnectInfo,
    _slot: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a call's handler knows of the connection it came on (`ConnectInfo::of`).
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectInfo {
    pub(crate) remote: Option<SocketAddr>,
    /// The certificate the other side presented, verified against the port's CA in the
    /// handshake (TLS ports requiring one only).
    pub(crate) certificate: Option<Arc<CertificateDer<'static>>>,
    /// Why every call on this connection is refused: a plaintext client on a TLS port, or a
    /// client certificate the port does not accept ([`refuse_unverified`]).
    pub(crate) refused: Option<Arc<str>>,
}

/// Refuses every call on a connection the TLS layer did not admit (UNAUTHENTICATED, with the
/// reason): its client then fails at once with a message that says what to fix, and knows its
/// request was not applied.
pub(crate) fn refuse_unverified(
    request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    match request
        .extensions()
        .get::<ConnectInfo>()
        .and_then(|c| c.refused.as_deref())
    {
        Some(why) => Err(tonic::Status::unauthenticated(why)),
        None => Ok(request),
    }
}

impl ConnectInfo {
    /// The connection `request` came on.
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Self {
        request
            .extensions()
            .get::<ConnectInfo>()
            .cloned()
            .unwrap_or_default()
    }
}

/// Accepts connections from `listener`, at most `max_connections` open at once, with Nagle's
/// algorithm off (a gRPC reply goes out as several small writes; with Nagle each after the
/// first waits for the peer's delayed ACK). With `tls`, a connection is yielded once its
/// handshake is made; handshakes run side by side, each within [`HANDSHAKE_TIMEOUT`] and holding
/// a slot, and one that fails closes its connection. The stream never yields an error.
pub(crate) fn accept(
    listener: TcpListener,
    max_connections: usize,
    tls: Option<Arc<Tls>>,
) -> impl Stream<Item = io::Result<Connection>> {
    let accepting = Accepting {
        listener,
        slots: Arc::new(Semaphore::new(max_connections)),
        backoff: MIN_BACKOFF,
        tls,
        handshakes: FuturesUnordered::new(),
    };
    futures::stream::unfold(accepting, |mut a| async move {
        loop {
            tokio::select! {
                Some(made) = a.handshakes.next(), if !a.handshakes.is_empty() => {
                    if let Some(connection) = made {
                        return Some((Ok(connection), a));
                    }
                }
                taken = take(&a.listener, &a.slots, &mut a.backoff) => {
                    let (io, slot) = taken?;
                    match &a.tls {
                        None => {
                            let info = ConnectInfo { remote: io.peer_addr().ok(), ..ConnectInfo::default() };
                            let connection = Connection { io: Io::Plain(io), info, _slot: slot };
                            return Some((Ok(connection), a));
                        }
                        Some(tls) => a.handshakes.push(
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tls.material(), io, slot))
                                .map(|made| made.unwrap_or_else(|_| {
                                    tracing::debug!("TLS handshake timed out");
                                    None
                                }))
                                .boxed(),
                        ),
                    }
                }
            }
        }
    })
}

struct Accepting {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    backoff: Duration,
    tls: Option<Arc<Tls>>,
    handshakes: FuturesUnordered<BoxFuture<'static, Option<Connection>>>,
}

/// The next accepted connection and its slot, waiting for a slot first; `None` only once the
/// slots are closed.
async fn take(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    backoff: &mut Duration,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((io, _)) => {
                let _ = io.set_nodelay(true);
                *backoff = MIN_BACKOFF;
                return Some((io, slot));
            }
            Err(e) if about_one_connection(&e) => continue,
            Err(e) => {
                tracing::warn!(error = %e, wait_ms = backoff.as_millis() as u64, "accepting a connection failed");
                tokio::time::sleep(*backoff).await;
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Makes the TLS session of an accepted connection with `material`, or drops the connection;
/// the caller bounds it by [`HANDSHAKE_TIMEOUT`].
/// A plaintext client, or one whose certificate `material` does not accept after the handshake,
/// is kept only to be refused every call ([`refuse_unverified`]).
async fn handshake(
    material: Arc<Material>,
    io: TcpStream,
    slot: OwnedSemaphorePermit,
) -> Option<Connection> {
    let remote = io.peer_addr().ok();
    if speaks_plaintext(&io).await {
        tracing::debug!(?remote, "plaintext client on a TLS port");
        let info = ConnectInfo {
            remote,
            certificate: None,
            refused: Some(TLS_ONLY.into()),
        };
        return Some(Connection {
            io: Io::Plain(io),
            info,
            _slot: slot,
        });
    }
    let failed = |why: String| {
        tracing::debug!(?remote, %why, "TLS handshake failed");
        None
    };
    let tls = match material.acceptor().accept(io).await {
        Ok(tls) => tls,
        Err(e) => return failed(e.to_string()),
    };
    let chain = tls.get_ref().1.peer_certificates();
    let refused = material.verify_client(chain).err();
    if let Some(why) = &refused {
        tracing::debug!(?remote, %why, "refusing a client certificate");
    }
    let certificate = chain
        .and_then(|chain| chain.first())
        .map(|leaf| Arc::new(leaf.clone().into_owned()));
    Some(Connection {
        io: Io::Tls(Box::new(tls)),
        info: ConnectInfo {
            remote,
            certificate,
            refused: refused.map(Arc::from),
        },
        _slot: slot,
    })
}

/// Errors that concern only the connection being accepted (it was reset before it was taken):
/// the next accept may succeed at once.
fn about_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

impl Connected for Connection {
    type ConnectInfo = ConnectInfo;

    fn connect_info(&self) -> ConnectInfo {
        self.info.clone()
    }
}

/// Forwards a poll to the plain or TLS stream underneath.
macro_rules! on_io {
    ($self:ident, $io:ident => $call:expr) => {
        match &mut $self.io {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $call
            }
            Io::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_io!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_io!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use nix::sys::resource::Resource;
    use nix::sys::resource::getrlimit;
    use nix::sys::resource::setrlimit;

    use super::*;

    /// At the cap, the next connection is not taken until an open one closes.
    #[tokio::test]
    async fn a_connection_past_the_cap_waits_for_a_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = std::pin::pin!(accept(listener, 1, None));
        let _a = TcpStream::connect(addr).await.expect("connect");
        let first = accepted
            .next()
            .await
            .expect("open")
            .expect("never an error");
        let _b = TcpStream::connect(addr).await.expect("connect (backlog)");
        let waiting = tokio::time::timeout(Duration::from_millis(300), accepted.next()).await;
        assert!(
            waiting.is_err(),
            "a second connection was taken past the cap"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(10), accepted.next())
            .await
            .expect("taken once the first closed");
        assert!(matches!(second, Some(Ok(_))));
    }

    /// Set in the child process that [`an_accept_loop_out_of_descriptors_sleeps_instead_of_spinning`]
    /// starts from this same test binary.
    const CHILD_ENV: &str = "KVS_TEST_ACCEPT_CHILD";

    /// While the process is out of file descriptors the listener stays readable and every accept
    /// fails with EMFILE: the loop must wait between attempts instead of spinning a core. A
    /// child (this test binary, run again) serves `accept` with a descriptor limit just above
    /// what it has open; this process fills it with connections, then reads the CPU time the
    /// child burns over a few seconds. Spinning takes a whole core (or whatever the scheduler
    /// gives it); waiting takes next to none.
    #[test]
    fn an_accept_loop_out_of_descriptors_sleeps_instead_of_spinning() {
        if std::env::var_os(CHILD_ENV).is_some() {
            return serve_with_few_descriptors();
        }
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "grpc::incoming::tests::an_accept_loop_out_of_descriptors_sleeps_instead_of_spinning",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the child");
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        // The child exits on its own within a minute, so this read ends.
        let (addr, limit) = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                // libtest's "test … " may come first on the same line.
                let mut words = line.split_once("listening ")?.1.split(' ');
                let addr: std::net::SocketAddr = words.next()?.parse().ok()?;
                let limit: usize = words.next()?.parse().ok()?;
                Some((addr, limit))
            })
            .expect("the child reports its address");
        let _connections: Vec<std::net::TcpStream> = (0..64)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect (backlog)"))
            .collect();
        let open = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| fds.count());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while open() < limit {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never ran out of descriptors ({} open, limit {limit})",
                open()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let cpu = || {
            // utime and stime, fields 14 and 15, in USER_HZ (100 a second on Linux).
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
            let after_name = &stat[stat.rfind(')').expect("(comm)") + 2..];
            let fields: Vec<u64> = after_name
                .split(' ')
                .skip(11)
                .take(2)
                .map(|f| f.parse().expect("a number"))
                .collect();
            Duration::from_millis((fields[0] + fields[1]) * 10)
        };
        let (cpu_before, started) = (cpu(), std::time::Instant::now());
        std::thread::sleep(Duration::from_secs(3));
        let (used, elapsed) = (cpu() - cpu_before, started.elapsed());
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            used < elapsed / 10,
            "the accept loop used {used:?} of CPU in {elapsed:?} while out of descriptors"
        );
    }

    /// The child's side: serve `accept` with room for only a few more descriptors, holding every
    /// connection, for at most a minute.
    fn serve_with_few_descriptors() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let open = std::fs::read_dir("/proc/self/fd").expect("fds").count() as u64;
            let limit = open + 4;
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
            setrlimit(Resource::RLIMIT_NOFILE, limit, hard).expect("setrlimit");
            println!("listening {addr} {limit}");
            let mut held = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(60), async {
                let mut accepted = std::pin::pin!(accept(listener, 1024, None));
                while let Some(Ok(connection)) = accepted.next().await {
                    held.push(connection);
                }
            })
            .await;
        });
    }
}
