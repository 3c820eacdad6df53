//! The connections the gRPC servers accept: at most `--max-grpc-connections` at once, and an
//! accept loop that backs off when accepting fails.
//!
//! tonic's own listener stream hands every accept error to the server, which retries at once:
//! when the process is out of file descriptors (EMFILE) the listener stays readable and the
//! loop spins a core while the condition lasts, as hyper's and axum's accept loops learned to
//! avoid. Here an error other than one about the single connection being accepted waits,
//! doubling up to a second, before the next accept. And a connection holds a slot for as long
//! as it is open: at the cap, new connections wait in the kernel's backlog instead of each
//! taking a descriptor and a task.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use futures::Stream;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tonic::transport::server::Connected;
use tonic::transport::server::TcpConnectInfo;

/// The first wait after a failed accept; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// An accepted connection and the slot it holds until it closes.
pub(crate) struct Connection {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
}

/// Accepts connections from `listener`, at most `max_connections` open at once, with Nagle's
/// algorithm off (a gRPC reply goes out as several small writes; with Nagle each after the
/// first waits for the peer's delayed ACK). The stream never yields an error.
pub(crate) fn accept(
    listener: TcpListener,
    max_connections: usize,
) -> impl Stream<Item = io::Result<Connection>> {
    let slots = Arc::new(Semaphore::new(max_connections));
    futures::stream::unfold(
        (listener, slots, MIN_BACKOFF),
        |(listener, slots, mut backoff)| async move {
            let slot = slots.clone().acquire_owned().await.ok()?;
            loop {
                match listener.accept().await {
                    Ok((io, _)) => {
                        let _ = io.set_nodelay(true);
                        let connection = Connection { io, _slot: slot };
                        return Some((Ok(connection), (listener, slots, MIN_BACKOFF)));
                    }
                    Err(e) if about_one_connection(&e) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, wait_ms = backoff.as_millis() as u64, "accepting a connection failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        },
    )
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
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
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
        let mut accepted = std::pin::pin!(accept(listener, 1));
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
                let mut accepted = std::pin::pin!(accept(listener, 1024));
                while let Some(Ok(connection)) = accepted.next().await {
                    held.push(connection);
                }
            })
            .await;
        });
    }
}
