//! The systems kvs-bench drives, each through its own gRPC API: one connection type per system,
//! the same two operations on both.

use bytes::Bytes;
use kvs_client::proto as kvs;
use kvs_client::proto::kv_client::KvClient;
use tonic::Status;
use tonic::transport::Channel;

/// Generated types of the etcd KV subset in `proto/etcd.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// Which system is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum System {
    /// kvs through its `kvs.v1.Kv` gRPC API.
    Kvs,
    /// etcd through its v3 `etcdserverpb.KV` gRPC API.
    Etcd,
}

/// One client's handle on a shared connection.
pub(crate) enum Conn {
    Kvs {
        kv: KvClient<Channel>,
        client_id: u64,
        sequence: u64,
    },
    Etcd(etcd::kv_client::KvClient<Channel>),
}

impl Conn {
    pub(crate) fn new(system: System, channel: Channel) -> Self {
        match system {
            System::Kvs => Conn::Kvs {
                kv: KvClient::new(channel),
                client_id: rand::random(),
                sequence: 0,
            },
            System::Etcd => Conn::Etcd(etcd::kv_client::KvClient::new(channel)),
        }
    }

    /// A fresh client identity on the same connection (kvs deduplicates writes per client).
    pub(crate) fn fork(&self) -> Self {
        match self {
            Conn::Kvs { kv, .. } => Conn::Kvs {
                kv: kv.clone(),
                client_id: rand::random(),
                sequence: 0,
            },
            Conn::Etcd(kv) => Conn::Etcd(kv.clone()),
        }
    }

    /// Sets `key` to `value`; for kvs as its client library does, with a write ID.
    pub(crate) async fn put(&mut self, key: Bytes, value: Bytes) -> Result<(), Status> {
        match self {
            Conn::Kvs {
                kv,
                client_id,
                sequence,
            } => {
                *sequence += 1;
                kv.put(kvs::PutRequest {
                    key,
                    value,
                    write_id: Some(kvs::WriteId {
                        client_id: *client_id,
                        sequence: *sequence,
                    }),
                    ..Default::default()
                })
                .await?;
            }
            Conn::Etcd(kv) => {
                kv.put(etcd::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Reads `key`, linearizably unless `serializable`.
    pub(crate) async fn get(&mut self, key: Bytes, serializable: bool) -> Result<(), Status> {
        match self {
            Conn::Kvs { kv, .. } => {
                kv.get(kvs::GetRequest { key, serializable }).await?;
            }
            Conn::Etcd(kv) => {
                kv.range(etcd::RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }
}
