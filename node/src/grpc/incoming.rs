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
}
