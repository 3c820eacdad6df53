//! The RESP face: Redis clients and `redis-cli` talk to a kvs node as to a Redis server.
//!
//! It sits beside the gRPC face and calls the same replica: every write is one conditional
//! batch through Raft with this connection's `WriteId`, every read is linearizable unless the
//! connection asked for serializable reads. `frame` is the bounded RESP2 codec, `command` the
//! command families and their dispatcher, `connection` one client's request loop, `status` the
//! one mapping from node errors to RESP error replies. The listener exists only when the node
//! runs with `--resp-listen`; with `--cert-file` it speaks only TLS, with the client port's
//! certificate (and, with `--client-cert-auth`, requires a client certificate as that port does).

mod command;
mod connection;
pub(crate) mod frame;
mod status;

use kvs_client::WriteSession;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::auth::Gate;
use crate::config::NodeConfig;
use crate::replica::Replica;
use crate::resp::command::Session;
use crate::resp::connection::Bounds;
use crate::resp::frame::Frame;
use crate::resp::frame::Limits;
use crate::tls::HANDSHAKE_TIMEOUT;
use crate::tls::Material;
use crate::tls::TLS_ONLY;
use crate::tls::Tls;
use crate::tls::speaks_plaintext;

/// Most connections served at once (Redis's default `maxclients`); more are told so and closed.
const MAX_CONNECTIONS: usize = 10_000;
/// Most arguments in one request.
const MAX_ARGS: usize = 64 * 1024;
/// Longest inline request and longest `*N`/`$N` line (Redis's `PROTO_INLINE_MAX_SIZE`).
const MAX_INLINE: usize = 64 * 1024;
/// Room for framing beyond the largest key or value and the largest batch: a value just over
/// the limit is answered with the limit's own error, not a protocol error.
const SLACK: usize = 64 * 1024;

impl Limits {
    fn of(config: &NodeConfig) -> Self {
        let max_bulk = config.max_value_bytes.max(config.max_key_bytes) + SLACK;
        Limits {
            max_bulk,
            max_args: MAX_ARGS,
            max_request: config.max_batch_bytes.max(max_bulk) + MAX_ARGS * 16 + SLACK,
            max_inline: MAX_INLINE,
        }
    }
}

/// Makes the TLS session of a RESP connection with `material` and serves it. A plaintext
/// client, or one whose certificate the port does not accept, is told so in an error reply and
/// the connection closed.
async fn serve_tls(mut stream: TcpStream, material: &Material, session: Session, bounds: Bounds) {
    let peer = stream.peer_addr().ok();
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    if tokio::time::timeout_at(deadline, speaks_plaintext(&stream))
        .await
        .unwrap_or(false)
    {
        refuse(&mut stream, TLS_ONLY).await;
        return;
    }
    let made = tokio::time::timeout_at(deadline, material.acceptor().accept(stream)).await;
    let mut stream = match made {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "RESP TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(?peer, "RESP TLS handshake timed out");
            return;
        }
    };
    if let Err(why) = material.verify_client(stream.get_ref().1.peer_certificates()) {
        refuse(&mut stream, &why).await;
        return;
    }
    connection::serve(stream, session, bounds).await;
}

/// Sends `why` as an error reply, bounded, before the connection is closed.
async fn refuse(stream: &mut (impl AsyncWrite + Unpin), why: &str) {
    let mut reply = BytesMut::new();
    Frame::Error(format!("ERR {why}")).encode(&mut reply);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&reply).await?;
        stream.flush().await
    })
    .await;
}

/// Serves RESP clients on `listener` until `stop` resolves; then closes every connection (the
/// node has already drained the requests in flight).
pub(crate) async fn serve(
    listener: TcpListener,
    replica: Arc<Replica>,
    gate: Arc<Gate>,
    tls: Option<Arc<Tls>>,
    stop: impl Future<Output = ()>,
) {
    let config = replica.config();
    let bounds = Bounds {
        limits: Limits::of(config),
        idle: Duration::from_millis(config.resp_idle_timeout_ms),
        request: Duration::from_millis(config.resp_request_timeout_ms),
        max_reply_bytes: config.max_reply_bytes,
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut next_id: u64 = 0;
    // One write session for every connection of this listener: connections come and go by the
    // thousand, and a session each would crowd the cluster's session table (`store::sessions`).
    let writes = WriteSession::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (mut stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a RESP connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                next_id += 1;
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let session = Session::new(
                            replica.clone(),
                            gate.clone(),
                            writes.clone(),
                            next_id,
                            peer,
                        );
                        let material = tls.as_ref().map(|tls| tls.material());
                        connections.spawn(async move {
                            match material {
                                None => connection::serve(stream, session, bounds).await,
                                Some(material) => serve_tls(stream, &material, session, bounds).await,
                            }
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        connections.spawn(async move {
                            let mut reply = BytesMut::new();
                            Frame::Error("ERR max number of clients reached".into())
                                .encode(&mut reply);
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                stream.write_all(&reply),
                            )
                            .await;
                        });
                    }
                }
            }
        }
    }
    connections.shutdown().await;
}
