//! Integration tests of kvs-client and kvsctl against in-process fake nodes, grouped by area as
//! modules of this one test binary so it links once.

mod fake;
mod t10_kv;
mod t20_retry;
mod t30_cluster;
#[cfg(feature = "cli")]
mod t40_kvsctl;
