//! Compiles `proto/kvs.proto` with protox (pure Rust), so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["kvs.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".kvs.v1")
        .compile_fds(fds)?;
    Ok(())
}
