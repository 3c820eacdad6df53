//! Generated types of the peer protocol (`proto/peer.proto`): the identity envelope and the
//! messages that carry openraft's own types, encoded by `network`.

#![allow(missing_docs, unreachable_pub, clippy::all)]

tonic::include_proto!("kvs.peer.v1");
