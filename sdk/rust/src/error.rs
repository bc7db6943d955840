//! The SDK's error type.

use tonic::Code;

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server address could not be parsed.
    #[error("INVALID_ARGUMENT: invalid server address {0:?}")]
    InvalidAddress(String),
    /// The connection could not be made.
    #[error("UNAVAILABLE: cannot reach the server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
    /// The call needs a logged-in client.
    #[error("UNAUTHENTICATED: not logged in")]
    NotLoggedIn,
    /// The session's stream has ended.
    #[error("UNAVAILABLE: the session has ended")]
    SessionClosed,
    /// A reconnecting session is between connections; the call needs a live one.
    #[error("UNAVAILABLE: not connected to a server (reconnecting)")]
    NotConnected,
    /// A reconnecting session's outbox already holds this many unsent messages.
    #[error("RESOURCE_EXHAUSTED: {0} messages are already waiting to be sent")]
    OutboxFull(usize),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The gRPC status code this error corresponds to.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidAddress(_) => Code::InvalidArgument,
            Error::Transport(_) | Error::SessionClosed | Error::NotConnected => Code::Unavailable,
            Error::OutboxFull(_) => Code::ResourceExhausted,
            Error::Status(s) => s.code(),
            Error::NotLoggedIn => Code::Unauthenticated,
            Error::Protocol(_) => Code::Internal,
        }
    }

    /// Worth retrying with the same request (and the same `client_msg_id`).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Unknown
        )
    }
}

pub use chat_proto::code_name;
