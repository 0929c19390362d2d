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

    // The KV service cutover serves: as the generated one, except that an answer may be
    // etcd's own encoding, passed on undecoded (`crate::codec::Answer`).
    let method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::proto::etcdserverpb::{input}"))
            .output_type(output)
            .codec_path("crate::codec::LeanCodec")
            .build()
    };
    let answer = |m: &str| format!("crate::codec::Answer<crate::proto::etcdserverpb::{m}>");
    let kv = tonic_build::manual::Service::builder()
        .name("KV")
        .package("etcdserverpb")
        .method(method("range", "Range", "RangeRequest", &answer("RangeResponse")))
        .method(method("put", "Put", "PutRequest", &answer("PutResponse")))
        .method(method(
            "delete_range",
            "DeleteRange",
            "DeleteRangeRequest",
            &answer("DeleteRangeResponse"),
        ))
        .method(method("txn", "Txn", "TxnRequest", &answer("TxnResponse")))
        .method(method(
            "compact",
            "Compact",
            "CompactionRequest",
            "crate::proto::etcdserverpb::CompactionResponse",
        ))
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_server(true)
        .compile(&[kv]);
    Ok(())
}
