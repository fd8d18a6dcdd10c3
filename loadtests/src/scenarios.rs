//! The scenarios: each one is a small, declarative description of the request
//! every worker sends in a loop.
//!
//! A scenario says which method and path to use (the path may depend on the
//! worker index and the worker's request counter, so e.g. publishes can use
//! unique ids), whether to send the bearer token, extra headers, an optional
//! body (JSON or raw bytes), and which response statuses count as success.
//! Anything else (transport errors, timeouts, other statuses) is an error.
//!
//! A scenario may also have a `setup` hook that runs once, before warm-up and
//! the timed run, with the same shared client. Example for a later scenario
//! that needs a table (the request shape is illustrative):
//!
//! ```text
//! fn setup_items(ctx: &Ctx) -> SetupFuture<'_> {
//!     Box::pin(async move {
//!         let spec = RequestSpec {
//!             method: Method::POST,
//!             path: format!("/api/v1/db/{}/sql", ctx.db),
//!             auth: true,
//!             headers: &[],
//!             body: Body::Json(serde_json::json!({
//!                 "sql": "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, v TEXT)"
//!             })),
//!         };
//!         let reply = ctx.send(&spec).await?;
//!         anyhow::ensure!(reply.status.is_success(), "create table: {}", reply.status);
//!         Ok(())
//!     })
//! }
//!
//! Scenario {
//!     name: "select",
//!     about: "point SELECT by primary key",
//!     method: Method::POST,
//!     path: |ctx, _, _| format!("/api/v1/db/{}/sql", ctx.db),
//!     auth: true,
//!     headers: &[],
//!     body: |_, worker, seq| Body::Json(serde_json::json!({
//!         "sql": "SELECT v FROM items WHERE id = ?",
//!         "params": [(worker as u64 * 1_000_003 + seq) % 1000],
//!     })),
//!     expected: &[200],
//!     setup: Some(setup_items),
//! }
//! ```

use std::future::Future;
use std::pin::Pin;

use hyper::Method;

use crate::driver::{Body, Ctx, RequestSpec};
use crate::pubsub;

/// What a setup hook returns: a boxed future borrowing the context.
pub type SetupFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// A setup hook, run once before the timed run.
pub type SetupFn = for<'a> fn(&'a Ctx) -> SetupFuture<'a>;

/// Builds the request path from the context, the worker index (0-based) and
/// the worker's request counter (0-based, continues from warm-up into the
/// timed run, so `(worker, seq)` is unique within a run).
pub type PathFn = fn(&Ctx, usize, u64) -> String;

/// Builds the request body; see [`PathFn`] for the arguments.
pub type BodyFn = fn(&Ctx, usize, u64) -> Body;

/// One load scenario.
pub struct Scenario {
    /// Name used on the command line.
    pub name: &'static str,
    /// One line for `--help` and the README.
    pub about: &'static str,
    pub method: Method,
    /// Path (starting with `/`) appended to `--url`.
    pub path: PathFn,
    /// Send `Authorization: Bearer {token}`; the token is then required.
    pub auth: bool,
    /// Extra request headers (name, value).
    pub headers: &'static [(&'static str, &'static str)],
    pub body: BodyFn,
    /// Response statuses that count as success.
    pub expected: &'static [u16],
    /// Optional hook run once before warm-up and the timed run.
    pub setup: Option<SetupFn>,
}

fn no_body(_: &Ctx, _: usize, _: u64) -> Body {
    Body::Empty
}

async fn exec_setup(ctx: &Ctx, sql: &str) -> anyhow::Result<()> {
    let spec = RequestSpec {
        method: Method::POST,
        path: format!("/api/v1/db/{}/query/batch", ctx.db),
        auth: true,
        headers: &[],
        body: Body::Json(serde_json::json!({"statements": [{"sql": sql}]})),
    };
    let reply = ctx
        .send(&spec)
        .await
        .map_err(|e| anyhow::anyhow!("setup request failed: {e:?}"))?;
    anyhow::ensure!(reply.status.is_success(), "setup {sql:?}: {}", reply.status);
    Ok(())
}

/// Creates `items` (10,000 rows) and `writes` once.
fn setup_items(ctx: &Ctx) -> SetupFuture<'_> {
    Box::pin(async move {
        exec_setup(
            ctx,
            "CREATE TABLE IF NOT EXISTS writes (id INTEGER PRIMARY KEY, worker, seq, v)",
        )
        .await?;
        exec_setup(
            ctx,
            "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, v TEXT)",
        )
        .await?;
        exec_setup(
            ctx,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10000) \
             INSERT OR IGNORE INTO items (id, v) SELECT x, 'item ' || x FROM c",
        )
        .await
    })
}

/// Every scenario, in the order they are listed in help output.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "healthz",
            about: "GET /healthz (no token)",
            method: Method::GET,
            path: |_, _, _| "/healthz".to_owned(),
            auth: false,
            headers: &[],
            body: no_body,
            expected: &[200],
            setup: None,
        },
        Scenario {
            name: "status",
            about: "GET /api/v1/db/{db}/_status with the bearer token",
            method: Method::GET,
            path: |ctx, _, _| format!("/api/v1/db/{}/_status", ctx.db),
            auth: true,
            headers: &[],
            body: no_body,
            expected: &[200],
            setup: None,
        },
        Scenario {
            name: "select",
            about: "POST query/exec: point SELECT by primary key on a 10,000-row table",
            method: Method::POST,
            path: |ctx, _, _| format!("/api/v1/db/{}/query/exec", ctx.db),
            auth: true,
            headers: &[],
            body: |_, worker, seq| {
                Body::Json(serde_json::json!({
                    "sql": "SELECT v FROM items WHERE id = ?",
                    "args": [(worker as u64 * 1_000_003 + seq) % 10_000 + 1],
                }))
            },
            expected: &[200],
            setup: Some(setup_items),
        },
        Scenario {
            name: "insert",
            about: "POST query/exec: single-row INSERT (group-committed)",
            method: Method::POST,
            path: |ctx, _, _| format!("/api/v1/db/{}/query/exec", ctx.db),
            auth: true,
            headers: &[],
            body: |_, worker, seq| {
                Body::Json(serde_json::json!({
                    "sql": "INSERT INTO writes (worker, seq, v) VALUES (?, ?, 'payload')",
                    "args": [worker, seq],
                }))
            },
            expected: &[200],
            setup: Some(setup_items),
        },
        Scenario {
            name: "publish",
            about: "POST /api/v1/db/{db}/messages: 1 KiB payload to topic bench/{worker} (group-committed)",
            method: Method::POST,
            path: |ctx, _, _| format!("/api/v1/db/{}/messages", ctx.db),
            auth: true,
            headers: &[],
            body: |_, worker, _| {
                Body::Json(serde_json::json!({
                    "topic": format!("bench/{worker}"),
                    "payload_base64": pubsub::STATIC_PAYLOAD_B64.as_str(),
                }))
            },
            expected: &[201],
            setup: None,
        },
        Scenario {
            name: "webhook",
            about: "POST webhooks/bench: a 1 KiB JSON delivery stored in the inbox",
            method: Method::POST,
            path: |ctx, _, _| format!("/api/v1/db/{}/webhooks/bench", ctx.db),
            auth: true,
            headers: &[("x-github-delivery", "bench")],
            body: |_, worker, seq| {
                Body::Json(
                    serde_json::json!({"worker": worker, "seq": seq, "pad": "x".repeat(1000)}),
                )
            },
            expected: &[201],
            setup: None,
        },
        Scenario {
            name: "acquire",
            about: "POST leases/acquire: a fresh resource per request (fence 1 each time)",
            method: Method::POST,
            path: |ctx, _, _| format!("/api/v1/db/{}/leases/acquire", ctx.db),
            auth: true,
            headers: &[],
            body: |_, worker, seq| {
                Body::Json(serde_json::json!({
                    "resource": format!("bench/{worker}/{seq}"),
                    "owner": format!("worker-{worker}"),
                    "ttl_seconds": 60,
                }))
            },
            expected: &[200],
            setup: None,
        },
        Scenario {
            name: "open",
            about: "POST /api/v1/db/{db}-{worker}-{n}/_open: a new document per request",
            method: Method::POST,
            path: |ctx, worker, seq| format!("/api/v1/db/{}-{worker}-{seq}/_open", ctx.db),
            auth: true,
            headers: &[],
            body: no_body,
            expected: &[200],
            setup: None,
        },
    ]
}

/// Names of all scenarios, for error messages.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|s| s.name).collect()
}

/// Looks a scenario up by its command-line name.
pub fn find(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_findable() {
        let names = names();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "duplicate scenario {n}");
            assert_eq!(find(n).map(|s| s.name), Some(*n));
        }
        assert!(find("nope").is_none());
    }

    #[test]
    fn scenarios_are_well_formed() {
        for s in all() {
            assert!(!s.expected.is_empty(), "{} has no expected status", s.name);
            assert!(
                s.expected.iter().all(|c| (100..600).contains(c)),
                "{} has a bogus status",
                s.name
            );
        }
    }
}
