//! Rust client for the chat platform.
//!
//! [`Client`] wraps the generated stubs with authentication, idempotent sends that
//! retry with the same `client_msg_id`, history, read marks and presence.
//! [`Session`] is one live `Connect` stream: a single ordered stream of typed
//! [`Event`]s, de-duplicated by (conversation, seq), with the per-conversation
//! [`Cursors`] a later session resumes from.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod cursors;
mod error;
mod session;

pub use chat_proto::v1 as proto;
pub use client::{Client, Credentials, HistoryPage, Page, Target};
pub use cursors::Cursors;
pub use error::{Error, code_name};
pub use session::{Event, Session, SessionOptions};
