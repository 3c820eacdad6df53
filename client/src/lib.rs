//! Typed async client for kvs.

/// Generated protobuf and gRPC types of the `kvs.v1` package.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    tonic::include_proto!("kvs.v1");
}
