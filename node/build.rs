//! Compiles `proto/peer.proto` with protox (pure Rust), so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["peer.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".kvs.peer.v1")
        .compile_fds(fds)?;
    Ok(())
}
