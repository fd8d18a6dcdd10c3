//! Black-box tests: the real server over TCP. Each capability adds a module here.

mod auth;
mod blob_parts;
mod blobs;
mod blobs_s3;
mod connections;
mod dashboard;
mod identity;
mod leases;
mod oidc;
mod openapi;
mod pubsub;
mod query;
mod runtime;
mod schemathesis;
mod security;
mod sql_policy;
mod streams;
mod sync;
mod sync_client;
mod watch;
mod webhooks;
