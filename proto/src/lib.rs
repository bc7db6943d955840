//! The generated `chat.v1` API: protobuf messages, tonic client stubs and server traits.
//!
//! `proto/chat/v1/*.proto` is the single source of the API; this crate only compiles it.
#![allow(missing_docs, unreachable_pub, clippy::all)]

pub mod codec;

pub mod chat {
    pub mod v1 {
        tonic::include_proto!("chat.v1");
    }
}

pub use chat::v1;

/// Encoded `FileDescriptorSet` of the API, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));

/// The canonical name of a gRPC status code (`NOT_FOUND`, ...), as the `error` frame's
/// `code` field and the CLI print it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The status code with this canonical name; `Unknown` for a name it does not know.
pub fn code_from_name(name: &str) -> tonic::Code {
    (0..=16)
        .map(tonic::Code::from_i32)
        .find(|c| code_name(*c) == name)
        .unwrap_or(tonic::Code::Unknown)
}
