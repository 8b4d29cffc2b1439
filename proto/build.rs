//! Compiles the .proto files with protox (pure Rust) so that no system
//! `protoc` is needed, then hands the descriptors to prost-build.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/log/v1/log.proto",
    "proto/grpc/health/v1/health.proto",
    "proto/google/rpc/status.proto",
    "proto/google/rpc/error_details.proto",
    "proto/grpc/reflection/v1/reflection.proto",
    "proto/grpc/reflection/v1alpha/reflection.proto",
];

const RAFT_PROTO: &str = "proto/proglog/raft/v1/raft.proto";
const FORWARD_PROTO: &str = "proto/proglog/raft/v1/forward.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by the reflection service: every file above and everything they import.
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    // `Bytes` lets the server hand record values to storage without copying.
    prost_build::Config::new()
        .out_dir(&out)
        .bytes(["."])
        .compile_fds(fds)?;
    // Raft's peer messages: not a gRPC service, so kept out of the reflection descriptors.
    println!("cargo:rerun-if-changed={RAFT_PROTO}");
    println!("cargo:rerun-if-changed={FORWARD_PROTO}");
    let raft = protox::compile([RAFT_PROTO, FORWARD_PROTO], ["proto"])?;
    prost_build::Config::new()
        .out_dir(&out)
        .bytes(["."])
        .compile_fds(raft)?;
    Ok(())
}
