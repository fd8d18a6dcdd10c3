//! Patchwork: a multi-tenant document-database service. Every document is one SQLite database
//! named by a `db_id`.
//!
//! # Layout: the request path through the tree
//!
//! ```text
//! request ─▶ router.rs (layers: panic→500, request id, trace, metrics, body limit)
//!         ─▶ auth/      who is calling (token, or a web session via identity/), what they may do
//!         ─▶ runtime/, ops/, query/, pubsub/, streams/, leases/, webhooks/, identity/,
//!            presence/: one module per capability, each owning its routes (declared with their
//!            access), SQL and tests
//!         ─▶ registry/  DbId → the document's actor (opened lazily, evicted when idle)
//!         ─▶ registry/actor.rs  one OS thread per document owns the SQLite connection;
//!                       group commit; change events published after each commit
//!         ─▶ SQLite (sqlite.rs opens, migrations.rs migrates)
//!         ─▶ events out (registry/events.rs: per-document broadcast)
//! ```
//!
//! `state.rs` builds the [`state::AppState`] every handler reaches (the bottom floor: capability
//! modules depend on it, never on `server.rs`); `server.rs` serves the router with graceful
//! shutdown (`server/conn.rs`: the accept loop); `config.rs` holds the embedded defaults;
//! `error.rs` is the one JSON error shape; `audit.rs` the audit log.

pub mod audit;
pub mod auth;
pub mod backup;
pub mod blobs;
pub mod config;
pub mod conn_limits;
pub mod error;
/// Entry points for the `json_bodies` fuzz target (`fuzz/`).
pub mod fuzzing;
pub mod identity;
pub mod invites;
pub mod leases;
pub mod media;
pub mod migrations;
pub mod mqtt;
pub mod ops;
pub mod pow;
pub mod presence;
pub mod pubsub;
pub mod query;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod schema;
pub mod server;
pub mod sqlite;
pub mod state;
pub mod streams;
pub mod sweep;
pub mod sync;
pub mod time_fmt;
pub mod tokens_cli;
pub mod webhooks;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use config::Config;
pub use server::{Listeners, serve};
pub use state::{App, AppState, Opened};
