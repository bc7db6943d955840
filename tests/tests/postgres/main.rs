//! What only PostgreSQL can show: concurrency across connections and replicas on one
//! database, a database crash under load, history on a large conversation with its
//! query plan, and the partition layout. The behaviour both stores share is proven by
//! `store_conformance` and by the end-to-end suite (`e2e_postgres`).

mod concurrency;
mod crash;
mod history;
mod layout;
