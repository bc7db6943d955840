//! Thin tonic handlers: authenticate, translate protobuf to domain calls, translate
//! the answer back. No SQL and no business rules live here.

pub mod auth;
pub mod chat;
pub(crate) mod convert;
pub mod push;
