//! Compiles `chat/v1/*.proto` with protox (pure Rust, no system `protoc`) and writes the
//! descriptor set next to the generated code so the server can serve reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "chat/v1/auth.proto",
        "chat/v1/chat.proto",
        "chat/v1/push.proto",
        "chat/v1/types.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("chat_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The `Connect` RPC would clash with the generated `connect(dst)` constructor;
        // clients build a `Channel` and call `new` instead.
        .build_transport(false)
        // Small per-stream buffers (see src/codec.rs).
        .codec_path("crate::codec::CompactCodec")
        .compile_fds(fds)?;
    Ok(())
}
