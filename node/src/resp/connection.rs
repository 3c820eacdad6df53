//! One client connection: read requests, run them in order, write the replies.
//!
//! Pipelining falls out of the loop's shape: every complete request already received is run
//! before the replies are written and more is read, so a client that sends a thousand commands
//! at once gets a thousand replies in order, with a few large writes instead of a thousand
//! small ones. Every wait is bounded by the idle timeout — a client that stops sending, stops
//! reading its replies, or vanishes without a FIN frees its connection when it runs out — and
//! what a connection buffers is bounded by the frame limits plus one read and one flush
//! threshold of replies.

use std::time::Duration;

use bytes::Buf;
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::resp::command::Session;
use crate::resp::frame::Frame;
use crate::resp::frame::Limits;
use crate::resp::frame::Parsed;
use crate::resp::frame::parse_request;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Replies are written out once this many bytes are pending, even mid-pipeline.
const FLUSH_AT: usize = 256 * 1024;

/// Serves `stream` until the client leaves, sends bad RESP, says QUIT, or idles past `idle`.
pub(crate) async fn serve(
    mut stream: TcpStream,
    mut session: Session,
    limits: Limits,
    idle: Duration,
) {
    let _ = stream.set_nodelay(true);
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::new();
    loop {
        loop {
            match parse_request(&input, &limits) {
                Ok(Parsed::Request { args, len }) => {
                    input.advance(len);
                    if args.is_empty() {
                        continue;
                    }
                    session.execute(args).await.encode(&mut output);
                    if session.closing {
                        let _ = write(&mut stream, &mut output, idle).await;
                        return;
                    }
                    if output.len() >= FLUSH_AT && !write(&mut stream, &mut output, idle).await {
                        return;
                    }
                }
                Ok(Parsed::Incomplete) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "closing a RESP connection");
                    Frame::Error(format!("ERR {e}")).encode(&mut output);
                    let _ = write(&mut stream, &mut output, idle).await;
                    return;
                }
            }
        }
        if !output.is_empty() && !write(&mut stream, &mut output, idle).await {
            return;
        }
        input.reserve(READ_CHUNK);
        match tokio::time::timeout(idle, stream.read_buf(&mut input)).await {
            Ok(Ok(n)) if n > 0 => {}
            // Closed, failed, or idle past the timeout.
            _ => return,
        }
    }
}

/// Writes and clears `output`, within `idle`; false when the client is gone or not reading.
async fn write(stream: &mut TcpStream, output: &mut BytesMut, idle: Duration) -> bool {
    let written = tokio::time::timeout(idle, stream.write_all(output)).await;
    output.clear();
    matches!(written, Ok(Ok(())))
}
