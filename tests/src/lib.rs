//! A multi-process test harness for kvs: it runs the real `kvs-node` and `kvsctl` binaries as a
//! user would — processes, ports, signals — and gives tests the vocabulary of raft-rs's test
//! cluster: [`Cluster::start`], [`Cluster::kill`], [`Cluster::terminate`], [`Cluster::pause`],
//! [`Cluster::leader`], [`Cluster::add_node`], [`Cluster::kvsctl`].
//!
//! The harness is there to make a test fail with a clear message, so where a test cannot go on
//! (a node that never announces itself, a leader that is never elected, a stale binary) it
//! panics with what it saw instead of handing back an error every test would unwrap. Every wait
//! is bounded; every child process is killed and reaped when its owner drops, and when a test
//! fails the tail of every node's log is printed.

mod binaries;
mod cluster;
pub mod jepsen;
mod kvsctl;
pub mod powerfs;
mod process;
mod redis_server;
mod s3_server;
mod wait;
mod writer;

pub use binaries::Binaries;
pub use binaries::binaries;
pub use binaries::failpoint_binaries;
pub use binaries::failpoint_node;
pub use cluster::ClientTls;
pub use cluster::Cluster;
pub use cluster::ClusterOptions;
pub use cluster::HarnessUser;
pub use cluster::Node;
pub use cluster::NodeChannel;
pub use kvsctl::Kvsctl;
pub use kvsctl::KvsctlOutput;
pub use kvsctl::exit;
pub use process::free_port;
pub use redis_server::RawResp;
pub use redis_server::RedisServer;
pub use redis_server::array_elements;
pub use redis_server::multibulk;
pub use s3_server::S3Server;
pub use wait::holds_for;
pub use wait::wait_for;
pub use wait::wait_until;
pub use writer::WriteLog;
pub use writer::Writer;
