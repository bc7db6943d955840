//! The end-to-end suite on PostgreSQL: the same modules as `sqlite.rs`, each test on a
//! database of its own on the test server (see `chat_tests::db`).

const STORE: chat_tests::StoreKind = chat_tests::StoreKind::Postgres;

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
