//! Rust client for the chat platform.
//!
//! [`Client`] wraps the generated stubs with authentication, idempotent sends that
//! retry with the same `client_msg_id`, history, read marks and presence.
//! [`Session`] is one live `Connect` stream: a single ordered stream of typed
//! [`Event`]s, de-duplicated by (conversation, seq), with the per-conversation
//! [`Cursors`] a later session resumes from.
//! [`ReconnectingSession`] outlasts its streams: it reconnects with backoff over a list of
//! server addresses, resumes from its cursors, re-sends unacknowledged messages with the
//! same `client_msg_id`, and shows one de-duplicated stream of [`ReconnectEvent`]s, with
//! the [`ConnectionState`] changes among them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod cursors;
mod error;
mod reconnecting;
mod session;

pub use chat_proto::v1 as proto;
pub use client::{Client, Credentials, HistoryPage, Page, Target, new_client_msg_id};
pub use cursors::Cursors;
pub use error::{Error, code_name};
pub use reconnecting::{
    ConnectionState, ReconnectEvent, ReconnectOptions, ReconnectingSession, SessionSender,
};
pub use session::{Event, Session, SessionOptions};
