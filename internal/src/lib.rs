//! Patchwork: a multi-tenant document-database service. Every document is one SQLite database
//! named by a `db_id`.
//!
//! # Layout: the request path through the tree
//!
//! ```text
//! request ─▶ router.rs (layers: panic→500, request id, trace, metrics, body limit)
//!         ─▶ auth/      who is calling (token, or a web session via identity/), what they may do
//!         ─▶ runtime/, ops/, query/, pubsub/, streams/, leases/, webhooks/: one module per
//!            capability, each owning its routes (declared with their access), SQL and tests
//!         ─▶ registry/  DbId → the document's actor (opened lazily, evicted when idle)
//!         ─▶ registry/actor.rs  one OS thread per document owns the SQLite connection;
//!                       group commit; change events published after each commit
//!         ─▶ SQLite (sqlite.rs opens, migrations.rs migrates)
//!         ─▶ events out (registry/events.rs: per-document broadcast)
//! ```
//!
//! `server.rs` builds the [`server::AppState`] and serves it with graceful shutdown;
//! `config.rs` holds the embedded defaults; `error.rs` is the one JSON error shape.

pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod identity;
pub mod leases;
pub mod migrations;
pub mod ops;
pub mod pubsub;
pub mod query;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod server;
pub mod sqlite;
pub mod streams;
pub mod time_fmt;
pub mod tokens_cli;
pub mod webhooks;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use config::Config;
pub use server::{App, AppState, Opened, serve};
