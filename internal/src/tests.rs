//! Black-box tests: the real server over TCP. Each capability adds a module here.

mod auth;
mod leases;
mod pubsub;
mod query;
mod runtime;
mod streams;
mod watch;
mod webhooks;
