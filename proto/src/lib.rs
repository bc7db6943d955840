//! The generated `chat.v1` API: protobuf messages, tonic client stubs and server traits.
//!
//! `proto/chat/v1/*.proto` is the single source of the API; this crate only compiles it.
#![allow(missing_docs, unreachable_pub, clippy::all)]

pub mod chat {
    pub mod v1 {
        tonic::include_proto!("chat.v1");
    }
}

pub use chat::v1;

/// Encoded `FileDescriptorSet` of the API, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));
