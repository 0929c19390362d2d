//! Compiles the hand-written etcd v3 protocol in proto/ (and cutover's own persisted
//! record, proto/cutover/) into Rust.
//! protox parses the .proto files in-process, so building the crate needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/etcdserverpb/rpc.proto",
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/cutover/record.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `bytes::Bytes` makes cloning a request for a retry a reference-count bump.
        .bytes(".")
        // prost's encoding with small starting buffers (src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
