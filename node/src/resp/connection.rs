//! One client connection: read requests, run them in order, write the replies.
//!
//! Pipelining falls out of the loop's shape: every complete request already received is run
//! before the replies are written and more is read, so a client that sends a thousand commands
//! at once gets a thousand replies in order, with a few large writes instead of a thousand
//! small ones.
//!
//! Every wait is bounded. Between requests, by the idle timeout: a client that stops sending,
//! stops reading its replies, or vanishes without a FIN frees its connection when it runs out.
//! Within a request, by the request timeout, counted from the request's first byte: a client
//! trickling a request byte by byte cannot hold its slot and buffer for longer than that, however
//! often a byte arrives.
//!
//! What a connection buffers is bounded too: one request by the frame limits, replies by the
//! reply limit. A reply is measured before it is encoded (its values are shared with the store
//! until then); one that would take the pending replies past the limit is replaced by an error
//! and the connection is closed, as Redis closes a client past its output buffer limit.

use std::time::Duration;

use bytes::Buf;
use bytes::BytesMut;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::resp::command::Session;
use crate::resp::frame::Frame;
use crate::resp::frame::Limits;
use crate::resp::frame::Parsed;
use crate::resp::frame::RequestParser;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Replies are written out once this many bytes are pending, even mid-pipeline.
const FLUSH_AT: usize = 256 * 1024;

/// How long a connection may wait, and how much it may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) limits: Limits,
    /// Longest wait for a request to start or for the client to take its replies.
    pub(crate) idle: Duration,
    /// Longest time from a request's first byte to its last.
    pub(crate) request: Duration,
    /// Most bytes of replies pending on the connection.
    pub(crate) max_reply_bytes: usize,
}

/// Serves `stream` until the client leaves, sends bad RESP, says QUIT, idles past the idle
/// timeout, takes longer than the request timeout to send a request, or asks for more replies
/// than the reply limit.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut session: Session,
    bounds: Bounds,
) {
    let idle = bounds.idle;
    let mut parser = RequestParser::new(bounds.limits);
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::new();
    // When the first byte of the request being received arrived.
    let mut request_started: Option<Instant> = None;
    let mut last_read = Instant::now();
    loop {
        loop {
            match parser.parse(&input) {
                Ok(Parsed::Request { args, len }) => {
                    input.advance(len);
                    request_started = None;
                    if args.is_empty() {
                        continue;
                    }
                    let reply = session.execute(args).await;
                    let size = reply.encoded_len();
                    if output.len().saturating_add(size) > bounds.max_reply_bytes {
                        tracing::debug!(
                            size,
                            max = bounds.max_reply_bytes,
                            "closing a RESP connection past its reply limit"
                        );
                        reply_limit_error(size, bounds.max_reply_bytes).encode(&mut output);
                        let _ = write(&mut stream, &mut output, idle).await;
                        return;
                    }
                    reply.encode(&mut output);
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
        let wait = if input.is_empty() {
            idle
        } else {
            let started = *request_started.get_or_insert(last_read);
            let Some(left) = bounds.request.checked_sub(started.elapsed()) else {
                tracing::debug!("closing a RESP connection: a request took too long to arrive");
                return;
            };
            left.min(idle)
        };
        input.reserve(READ_CHUNK);
        match tokio::time::timeout(wait, stream.read_buf(&mut input)).await {
            Ok(Ok(n)) if n > 0 => last_read = Instant::now(),
            // Closed, failed, idle past the timeout, or a request too slow to arrive.
            _ => return,
        }
    }
}

/// What a client past the reply limit is told before its connection is closed.
fn reply_limit_error(size: usize, max: usize) -> Frame {
    Frame::Error(format!(
        "ERR reply of {size} bytes exceeds this connection's reply limit of {max} bytes \
         (--max-reply-bytes); closing the connection"
    ))
}

/// Writes and clears `output`, within `idle`; false when the client is gone or not reading.
async fn write(
    stream: &mut (impl AsyncWrite + Unpin),
    output: &mut BytesMut,
    idle: Duration,
) -> bool {
    // A TLS stream may hold the last records until flushed.
    let written = tokio::time::timeout(idle, async {
        stream.write_all(output).await?;
        stream.flush().await
    })
    .await;
    output.clear();
    matches!(written, Ok(Ok(())))
}
