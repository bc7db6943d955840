//! The end-to-end suite on the embedded store (SQLite). Each test starts its own server
//! on port 0 with its own database and drives it through the Rust SDK (or the `chat`
//! binary) like a user would. `postgres.rs` runs the same modules on PostgreSQL.

const STORE: chat_tests::StoreKind = chat_tests::StoreKind::Sqlite;

mod bad_input;
mod cli;
mod delivery;
mod durability;
mod history;
mod idempotency;
mod lifecycle;
mod lossy_bus;
mod presence;
mod slow_consumer;
