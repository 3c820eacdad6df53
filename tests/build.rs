//! Compiles the etcd KV subset kvs-bench speaks (`proto/etcd.proto`) with protox: no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["etcd.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".etcdserverpb")
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
