//! The systems kvs-bench drives, each through the API its own users call: kvs and etcd over
//! gRPC, kvs's RESP port and redis-server over RESP with the `redis` crate. One connection type
//! runs the same operations on all of them, so only the wire differs between targets.
//!
//! etcd can be driven two ways: through the KV subset this program compiles itself, and through
//! the `etcd-client` crate, the Rust client etcd's users run, with its own protos and channel.
//! `tests/bench/run.sh` runs both in the same round, so a defect in either client shows as two
//! readings of one system that disagree.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use kvs_client::proto as kvs;
use kvs_client::proto::kv_client::KvClient;
use redis::aio::MultiplexedConnection;
use tonic::transport::{Channel, Endpoint};

use crate::workload::Op;

/// Generated types of the etcd KV subset in `proto/etcd.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod etcd {
    tonic::include_proto!("etcdserverpb");
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longer than any server-side deadline, so a stuck server shows as errors, not as a hang.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which system is measured, and through which API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum System {
    /// kvs through its `kvs.v1.Kv` gRPC API.
    Kvs,
    /// etcd through its v3 `etcdserverpb.KV` gRPC API.
    Etcd,
    /// etcd through the `etcd-client` crate: the same API, another client.
    EtcdClient,
    /// kvs through its RESP port (`--resp-listen`).
    KvsResp,
    /// redis-server over RESP.
    Redis,
}

impl System {
    /// The name the command line uses for it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Kvs => "kvs",
            System::Etcd => "etcd",
            System::EtcdClient => "etcd-client",
            System::KvsResp => "kvs-resp",
            System::Redis => "redis",
        }
    }
}

/// One client's handle on a connection that several clients may share.
pub(crate) enum Conn {
    Kvs {
        kv: KvClient<Channel>,
        client_id: u64,
        sequence: u64,
        serializable: bool,
    },
    Etcd {
        kv: etcd::kv_client::KvClient<Channel>,
        serializable: bool,
    },
    EtcdClient {
        /// Boxed: the crate's client is several times the size of the other variants.
        kv: Box<etcd_client::KvClient>,
        serializable: bool,
    },
    /// Requests of the clients sharing it go out as they come and replies return in order; each
    /// client still has at most one request in flight.
    Resp(MultiplexedConnection),
}

impl Conn {
    /// Opens one connection to `endpoint` (host:port). Reads are linearizable unless
    /// `serializable`; on RESP that is kvs's `READONLY`, which redis-server refuses.
    pub(crate) async fn connect(
        system: System,
        endpoint: &str,
        serializable: bool,
    ) -> anyhow::Result<Conn> {
        match system {
            System::Kvs | System::Etcd => {
                let channel = Endpoint::from_shared(format!("http://{endpoint}"))
                    .with_context(|| format!("endpoint {endpoint}"))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REPLY_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {endpoint}"))?;
                Ok(match system {
                    System::Kvs => Conn::Kvs {
                        kv: KvClient::new(channel),
                        client_id: rand::random(),
                        sequence: 0,
                        serializable,
                    },
                    _ => Conn::Etcd {
                        kv: etcd::kv_client::KvClient::new(channel),
                        serializable,
                    },
                })
            }
            System::EtcdClient => {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_timeout(REPLY_TIMEOUT);
                let client = etcd_client::Client::connect([endpoint], Some(options))
                    .await
                    .with_context(|| format!("cannot connect to {endpoint}"))?;
                Ok(Conn::EtcdClient {
                    kv: Box::new(client.kv_client()),
                    serializable,
                })
            }
            System::KvsResp | System::Redis => {
                let client = redis::Client::open(format!("redis://{endpoint}/"))
                    .with_context(|| format!("endpoint {endpoint}"))?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(REPLY_TIMEOUT)
                    .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .with_context(|| format!("cannot connect to {endpoint}"))?;
                if serializable {
                    redis::cmd("READONLY")
                        .query_async::<()>(&mut conn)
                        .await
                        .with_context(|| format!("READONLY on {endpoint}"))?;
                }
                Ok(Conn::Resp(conn))
            }
        }
    }

    /// A client of its own on the same connection (kvs deduplicates writes per client).
    pub(crate) fn fork(&self) -> Self {
        match self {
            Conn::Kvs {
                kv, serializable, ..
            } => Conn::Kvs {
                kv: kv.clone(),
                client_id: rand::random(),
                sequence: 0,
                serializable: *serializable,
            },
            Conn::Etcd { kv, serializable } => Conn::Etcd {
                kv: kv.clone(),
                serializable: *serializable,
            },
            Conn::EtcdClient { kv, serializable } => Conn::EtcdClient {
                kv: kv.clone(),
                serializable: *serializable,
            },
            Conn::Resp(conn) => Conn::Resp(conn.clone()),
        }
    }

    /// Runs `op` and waits for its answer; kvs writes carry a write ID as its client library's do.
    pub(crate) async fn run(&mut self, op: Op) -> anyhow::Result<()> {
        match self {
            Conn::Kvs {
                kv,
                client_id,
                sequence,
                serializable,
            } => {
                let mut write_id = || {
                    *sequence += 1;
                    Some(kvs::WriteId {
                        client_id: *client_id,
                        sequence: *sequence,
                        // One write at a time: every earlier one was answered.
                        acked_below: *sequence,
                    })
                };
                match op {
                    Op::Get(key) => {
                        let serializable = *serializable;
                        kv.get(kvs::GetRequest { key, serializable }).await?;
                    }
                    Op::Put(key, value) => {
                        kv.put(kvs::PutRequest {
                            key,
                            value,
                            write_id: write_id(),
                            ..Default::default()
                        })
                        .await?;
                    }
                    Op::PutMany(keys, value) => {
                        let ops = keys
                            .into_iter()
                            .map(|key| kvs::Op {
                                op: Some(kvs::op::Op::Put(kvs::PutOp {
                                    key,
                                    value: value.clone(),
                                    ..Default::default()
                                })),
                            })
                            .collect();
                        let reply = kv
                            .batch(kvs::BatchRequest {
                                ops,
                                write_id: write_id(),
                                ..Default::default()
                            })
                            .await?
                            .into_inner();
                        anyhow::ensure!(reply.error.is_empty(), "batch refused: {}", reply.error);
                    }
                }
            }
            Conn::Etcd { kv, serializable } => match op {
                Op::Get(key) => {
                    kv.range(etcd::RangeRequest {
                        key,
                        serializable: *serializable,
                        ..Default::default()
                    })
                    .await?;
                }
                Op::Put(key, value) => {
                    kv.put(etcd_put(key, value)).await?;
                }
                Op::PutMany(keys, value) => {
                    let success = keys
                        .into_iter()
                        .map(|key| etcd::RequestOp {
                            request: Some(etcd::request_op::Request::RequestPut(etcd_put(
                                key,
                                value.clone(),
                            ))),
                        })
                        .collect();
                    kv.txn(etcd::TxnRequest { success }).await?;
                }
            },
            Conn::EtcdClient { kv, serializable } => match op {
                Op::Get(key) => {
                    let options =
                        serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                    kv.get(key.to_vec(), options).await?;
                }
                Op::Put(key, value) => {
                    kv.put(key.to_vec(), value.to_vec(), None).await?;
                }
                Op::PutMany(keys, value) => {
                    let puts: Vec<_> = keys
                        .into_iter()
                        .map(|key| etcd_client::TxnOp::put(key.to_vec(), value.to_vec(), None))
                        .collect();
                    kv.txn(etcd_client::Txn::new().and_then(puts)).await?;
                }
            },
            Conn::Resp(conn) => {
                let (name, keys, value) = match op {
                    Op::Get(key) => ("GET", vec![key], None),
                    Op::Put(key, value) => ("SET", vec![key], Some(value)),
                    Op::PutMany(keys, value) => ("MSET", keys, Some(value)),
                };
                let mut cmd = redis::cmd(name);
                for key in &keys {
                    cmd.arg(&key[..]);
                    if let Some(value) = &value {
                        cmd.arg(&value[..]);
                    }
                }
                cmd.query_async::<()>(conn).await?;
            }
        }
        Ok(())
    }
}

fn etcd_put(key: Bytes, value: Bytes) -> etcd::PutRequest {
    etcd::PutRequest {
        key,
        value,
        ..Default::default()
    }
}
