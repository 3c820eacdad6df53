//! `kvs-node-failpoints`: `kvs-node` built with the `failpoints` feature for fault-injection
//! tests, under a name of its own so that it never takes the place of the `kvs-node` that is
//! shipped and benchmarked. Built on request only (`required-features`), in the same target
//! directory, so it shares every compiled dependency with the usual build.

use std::process::ExitCode;

#[path = "../main.rs"]
mod kvs_node_main;

fn main() -> ExitCode {
    kvs_node_main::main()
}
