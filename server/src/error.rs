//! The server's error type and its one mapping to a gRPC status.
//!
//! Every failure a client can cause has its own arm with a clear status; store and
//! internal failures are logged here and reach the client as UNAVAILABLE or INTERNAL
//! without leaking details.

use tonic::codegen::http;
use tonic::{Code, Status};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl ChatError {
    pub fn code(&self) -> Code {
        match self {
            ChatError::InvalidArgument(_) => Code::InvalidArgument,
            ChatError::NotFound(_) => Code::NotFound,
            ChatError::AlreadyExists(_) => Code::AlreadyExists,
            ChatError::Unauthenticated(_) => Code::Unauthenticated,
            ChatError::RateLimited(_) => Code::ResourceExhausted,
            ChatError::FailedPrecondition(_) => Code::FailedPrecondition,
            ChatError::Unavailable(_) => Code::Unavailable,
            ChatError::Store(e) if e.is_transient() => Code::Unavailable,
            ChatError::Store(_) | ChatError::Unexpected(_) => Code::Internal,
        }
    }

    /// The message a client may see: internal details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            ChatError::Store(e) if e.is_transient() => "storage is unavailable, retry".into(),
            ChatError::Store(_) | ChatError::Unexpected(_) => "internal error".into(),
            other => other.to_string(),
        }
    }
}

impl From<ChatError> for Status {
    fn from(e: ChatError) -> Status {
        let code = e.code();
        metrics::counter!(crate::metrics::REJECTED, "code" => code_name(code)).increment(1);
        if matches!(code, Code::Internal | Code::Unavailable) {
            tracing::error!(error = %e, "request failed");
        }
        Status::new(code, e.public_message())
    }
}

/// How tonic's protobuf codec starts the message of a request that does not decode
/// (invalid UTF-8 in a string, a malformed message), plain and as sent in the
/// percent-encoded `grpc-message` header.
const DECODE_ERROR: &str = "failed to decode";
const DECODE_ERROR_IN_HEADER: &[u8] = b"failed%20to%20decode";

/// tonic answers a request that does not decode with INTERNAL; for this API it is the
/// client's bad input, so INVALID_ARGUMENT (an INTERNAL would page an operator).
pub fn decode_error_as_invalid_argument(status: Status) -> Status {
    if status.code() == Code::Internal && status.message().starts_with(DECODE_ERROR) {
        Status::invalid_argument(status.message())
    } else {
        status
    }
}

/// The same rule for a response tonic already wrote (unary and server-streaming calls,
/// whose request is decoded before a handler runs); used as a response layer.
pub fn decode_errors_are_invalid_argument<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let internal = headers.get("grpc-status").is_some_and(|s| s == "13");
    let decode = headers
        .get("grpc-message")
        .is_some_and(|m| m.as_bytes().starts_with(DECODE_ERROR_IN_HEADER));
    if internal && decode {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    response
}

pub use chat_proto::code_name;
