//! The Redis side of the RESP tests: a real `redis-server` to compare kvs against, and a raw
//! RESP connection that sends exact bytes and returns each reply's exact bytes, so replies can
//! be compared byte for byte.

use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::process::ChildGuard;
use crate::process::free_port;
use crate::wait::wait_for;

/// How long redis-server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// A `redis-server` on 127.0.0.1 without persistence, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    _child: ChildGuard,
    port: u16,
}

impl RedisServer {
    /// Starts `redis-server` (Debian package redis-server) on a free port and waits until it
    /// answers PING.
    pub async fn start() -> RedisServer {
        let port = free_port();
        let child = ChildGuard::spawn(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server (apt-get install redis-server): {e}")
        });
        let server = RedisServer {
            _child: child,
            port,
        };
        let address = server.address();
        wait_for(START_TIMEOUT, "redis-server answers PING", || {
            let address = address.clone();
            async move {
                let mut conn = RawResp::try_connect(&address).await?;
                conn.send(b"PING\r\n").await;
                (conn.reply().await == b"+PONG\r\n").then_some(())
            }
        })
        .await;
        server
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A RESP connection that speaks bytes: requests are sent as given, replies returned as the
/// exact bytes of one RESP2 reply each.
#[derive(Debug)]
pub struct RawResp {
    stream: TcpStream,
    buffered: Vec<u8>,
}

impl RawResp {
    /// Connects to `address`; panics when it cannot.
    pub async fn connect(address: &str) -> RawResp {
        Self::try_connect(address)
            .await
            .unwrap_or_else(|| panic!("cannot connect to RESP at {address}"))
    }

    async fn try_connect(address: &str) -> Option<RawResp> {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(address))
            .await
            .ok()?
            .ok()?;
        Some(RawResp {
            stream,
            buffered: Vec::new(),
        })
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send to RESP");
    }

    /// Sends `args` as one multibulk request.
    pub async fn send_command<S: AsRef<[u8]>>(&mut self, args: &[S]) {
        self.send(&multibulk(args)).await;
    }

    /// Sends `args` and returns the reply's bytes.
    pub async fn command<S: AsRef<[u8]>>(&mut self, args: &[S]) -> Vec<u8> {
        self.send_command(args).await;
        self.reply().await
    }

    /// The next reply's bytes; panics after [`REPLY_TIMEOUT`] or if the connection closes first.
    pub async fn reply(&mut self) -> Vec<u8> {
        loop {
            if let Some(len) = reply_len(&self.buffered) {
                return self.buffered.drain(..len).collect();
            }
            assert!(
                self.read_more().await > 0,
                "connection closed before a complete reply; got {:?}",
                String::from_utf8_lossy(&self.buffered)
            );
        }
    }

    /// Everything the server sends until it closes the connection (within [`REPLY_TIMEOUT`]).
    pub async fn until_closed(&mut self) -> Vec<u8> {
        while self.read_more().await > 0 {}
        std::mem::take(&mut self.buffered)
    }

    /// Closes the sending half, as a client that has nothing more to say.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    async fn read_more(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(REPLY_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no reply within {REPLY_TIMEOUT:?}"))
            .unwrap_or(0);
        self.buffered.extend_from_slice(&chunk[..n]);
        n
    }
}

/// `args` as a RESP multibulk request.
pub fn multibulk<S: AsRef<[u8]>>(args: &[S]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The length of the complete RESP2 reply at the front of `buf`, if it is complete.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let after_line = line_end + 2;
    let number = || {
        std::str::from_utf8(&buf[1..line_end])
            .ok()?
            .parse::<i64>()
            .ok()
    };
    match buf.first()? {
        b'+' | b'-' | b':' => Some(after_line),
        b'$' => match number()? {
            n if n < 0 => Some(after_line),
            n => {
                let end = after_line + usize::try_from(n).ok()? + 2;
                (buf.len() >= end).then_some(end)
            }
        },
        b'*' => {
            let mut at = after_line;
            for _ in 0..number()?.max(0) {
                at += reply_len(&buf[at..])?;
            }
            Some(at)
        }
        _ => None,
    }
}

/// Elements of an array reply, each as its own bytes; `None` when `reply` is not an array.
pub fn array_elements(reply: &[u8]) -> Option<Vec<Vec<u8>>> {
    if reply.first() != Some(&b'*') {
        return None;
    }
    let line_end = reply.windows(2).position(|w| w == b"\r\n")?;
    let count: i64 = std::str::from_utf8(&reply[1..line_end])
        .ok()?
        .parse()
        .ok()?;
    let mut at = line_end + 2;
    let mut elements = Vec::new();
    for _ in 0..count.max(0) {
        let len = reply_len(&reply[at..])?;
        elements.push(reply[at..at + len].to_vec());
        at += len;
    }
    Some(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lengths_cover_nested_replies_and_wait_for_the_rest() {
        let reply = b"*3\r\n$1\r\na\r\n*1\r\n:5\r\n$-1\r\n+OK\r\n";
        assert_eq!(reply_len(reply), Some(reply.len() - 5));
        for cut in 0..reply.len() - 5 {
            assert_eq!(reply_len(&reply[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            array_elements(b"*2\r\n$1\r\nb\r\n$1\r\na\r\n"),
            Some(vec![b"$1\r\nb\r\n".to_vec(), b"$1\r\na\r\n".to_vec()])
        );
    }
}
