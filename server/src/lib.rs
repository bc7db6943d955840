//! The chat server as a library: `server::start` runs it on a listener, so tests and
//! the `chat-server` binary start it the same way.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod bus;
pub mod chat;
pub mod config;
pub mod directory;
pub mod domain;
pub mod error;
pub mod hub;
pub mod metrics;
pub mod presence;
pub mod push;
pub mod ratelimit;
pub mod redis_link;
pub mod server;
pub mod session;
pub mod store;

pub use config::Config;
pub use server::{BusLayer, Running, ServeError, start, start_with};
