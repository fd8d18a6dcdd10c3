//! Query API: `POST /api/v1/db/{db_id}/query/exec` and `/query/batch`.
//!
//! The scope a statement needs is decided by SQLite ([`classify`]): a read-only statement runs
//! on the actor's read path in one round trip; anything else is re-prepared inside the next group
//! commit, where its class is checked against the token before it runs.

pub mod caller;
pub mod classify;
pub mod exec;
pub mod value;
pub mod watch;

#[cfg(test)]
mod policy_fuzz;

use std::time::Duration;

use axum::extract::State;
use axum::http::Method;
use axum::response::IntoResponse;
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use classify::{Class, ClassifyError};
use exec::Limits;

use crate::auth::{Access, Action, Authorized, ResourceFrom, Route};
use crate::error::{ApiError, Json as ApiJson};
use crate::ops::metrics::Metrics;
use crate::registry::DocError;
use crate::state::AppState;

const QUERY: Access = Access::Db {
    actions: &[Action::QueryRead, Action::QueryWrite, Action::QueryAdmin],
    resource: ResourceFrom::None,
};

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/query/exec",
            QUERY,
            post(exec_route),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/query/batch",
            QUERY,
            post(batch_route),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/query/watch",
            Access::Db {
                actions: &[Action::QueryRead],
                resource: ResourceFrom::None,
            },
            post(watch::watch_route),
        )
        .with_query_token(),
    ]
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct Options {
    pub(crate) max_rows: Option<usize>,
    pub(crate) timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecBody {
    pub(crate) sql: String,
    #[serde(default)]
    pub(crate) args: Option<Json>,
    #[serde(default)]
    pub(crate) options: Option<Options>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    #[serde(default)]
    pub(crate) args: Option<Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchBody {
    pub(crate) statements: Vec<Statement>,
    #[serde(default)]
    pub(crate) options: Option<Options>,
}

impl BatchBody {
    /// The checks `query/batch` makes before it opens the document.
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        if self.statements.is_empty() {
            return Err(ApiError::bad_request(
                "empty_batch",
                "statements must not be empty",
            ));
        }
        if self.statements.len() > 1_000 {
            return Err(ApiError::bad_request(
                "batch_too_large",
                "at most 1000 statements per batch",
            ));
        }
        Ok(())
    }
}

/// Configured bounds, lowered (never raised) by the request's options.
pub(crate) fn limits(c: &crate::Config, options: Option<Options>) -> Result<Limits, ApiError> {
    let o = options.unwrap_or_default();
    if o.max_rows == Some(0) || o.timeout_ms == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_options",
            "max_rows and timeout_ms must be at least 1",
        ));
    }
    Ok(Limits {
        timeout: Duration::from_millis(
            o.timeout_ms
                .map_or(c.query_timeout_ms, |t| t.min(c.query_timeout_ms)),
        ),
        max_rows: o
            .max_rows
            .map_or(c.query_max_rows, |r| r.min(c.query_max_rows)),
        max_bytes: c.query_max_result_bytes,
    })
}

pub(crate) fn classify_error(e: ClassifyError) -> ApiError {
    match e {
        ClassifyError::Refused(why) => {
            ApiError::forbidden(why).with_details(json!({"reason": "refused_statement"}))
        }
        ClassifyError::Multiple => ApiError::bad_request("multiple_statements", e.to_string()),
        ClassifyError::Empty => ApiError::bad_request("empty_statement", e.to_string()),
        ClassifyError::Sql(e) => exec::sql_error(e),
    }
}

fn count(metrics: &Metrics, class: Class) {
    metrics
        .query_statements
        .get_or_create(&crate::ops::metrics::ReasonLabel {
            reason: class.label(),
        })
        .inc();
}

fn note_timeout(metrics: &Metrics, e: &DocError) {
    if let DocError::Api(api) = e
        && api.status == axum::http::StatusCode::GATEWAY_TIMEOUT
    {
        metrics.query_timeouts.inc();
    }
}

enum ReadOutcome {
    /// The answer's JSON text.
    Done(String),
    NeedsWrite,
}

/// An answer already serialized by [`exec::run_text`].
fn json_text(text: String) -> axum::response::Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response()
}

async fn exec_route(
    State(state): State<AppState>,
    auth: Authorized,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<ExecBody>,
) -> Result<axum::response::Response, ApiError> {
    let limits = limits(&state.config, body.options)?;
    let fences = crate::leases::parse_fences(&headers)?;
    let doc = state.registry.get(auth.db()?).await?;
    let metrics = state.metrics.clone();
    let sql = std::sync::Arc::<str>::from(body.sql);
    let args = std::sync::Arc::new(body.args);

    // Read-only statements: one round trip on the read path.
    let (read_auth, read_sql, read_args, read_metrics) =
        (auth.clone(), sql.clone(), args.clone(), metrics.clone());
    let outcome = if !fences.is_empty() {
        // A fenced statement is checked inside the write transaction.
        ReadOutcome::NeedsWrite
    } else {
        doc.query(move |conn| {
            let mut prepared = classify::prepare(conn, &read_sql).map_err(classify_error)?;
            if prepared.class != Class::Read {
                return Ok(ReadOutcome::NeedsWrite);
            }
            read_auth.require(Action::QueryRead)?;
            count(&read_metrics, prepared.class);
            exec::bind(&mut prepared.stmt, read_args.as_ref().as_ref())?;
            let mut budget = limits.max_bytes;
            let caller = caller::Caller::of(&read_auth);
            caller::as_caller(caller.as_ref(), || {
                exec::run_text(conn, prepared, &limits, &mut budget).map(ReadOutcome::Done)
            })
        })
        .await
        .inspect_err(|e| note_timeout(&metrics, e))?
    };
    if let ReadOutcome::Done(result) = outcome {
        return Ok(json_text(result));
    }
    // Everything else joins the next group commit; the class is checked again there, before
    // the statement runs (the schema may have changed in between).
    let write_metrics = metrics.clone();
    let result = doc
        .write(move |conn| {
            let mut prepared = classify::prepare(conn, &sql).map_err(classify_error)?;
            auth.require(prepared.class.action())?;
            crate::leases::check_fences(conn, &fences)?;
            count(&write_metrics, prepared.class);
            exec::bind(&mut prepared.stmt, args.as_ref().as_ref())?;
            let mut budget = limits.max_bytes;
            // This write's statements (and the triggers they fire) see their own caller.
            let caller = caller::Caller::of(&auth);
            caller::as_caller(caller.as_ref(), || {
                exec::run_text(conn, prepared, &limits, &mut budget)
            })
        })
        .await
        .inspect_err(|e| note_timeout(&metrics, e))?;
    Ok(json_text(result))
}

/// Adds the failing statement's index to an error.
fn at(index: usize, e: impl Into<DocError>) -> DocError {
    match e.into() {
        DocError::Api(api) => DocError::Api(api.clone().with_details(match api.details {
            Some(Json::Object(mut m)) => {
                m.insert("index".into(), json!(index));
                Json::Object(m)
            }
            _ => json!({"index": index}),
        })),
        other => other,
    }
}

async fn batch_route(
    State(state): State<AppState>,
    auth: Authorized,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<axum::response::Response, ApiError> {
    let limits = limits(&state.config, body.options)?;
    let fences = crate::leases::parse_fences(&headers)?;
    body.check()?;
    let doc = state.registry.get(auth.db()?).await?;
    let metrics = state.metrics.clone();
    let write_metrics = metrics.clone();
    let statements = body.statements;
    let results = doc
        .write(move |conn| {
            // Every statement that can be prepared now is classified and its scope checked
            // before any runs. One that depends on an earlier one (a table it creates) is
            // prepared and checked at its turn; a refusal then rolls the whole batch back.
            for (i, s) in statements.iter().enumerate() {
                match classify::prepare(conn, &s.sql) {
                    Ok(prepared) => auth
                        .require(prepared.class.action())
                        .map_err(|e| at(i, e))?,
                    Err(ClassifyError::Sql(_)) => {}
                    Err(e) => return Err(at(i, classify_error(e))),
                }
            }
            crate::leases::check_fences(conn, &fences)?;
            let mut budget = limits.max_bytes;
            let mut results = Vec::with_capacity(statements.len());
            let caller = caller::Caller::of(&auth);
            let _caller = caller::Scope::enter(caller);
            for (i, s) in statements.iter().enumerate() {
                let mut prepared =
                    classify::prepare(conn, &s.sql).map_err(|e| at(i, classify_error(e)))?;
                auth.require(prepared.class.action())
                    .map_err(|e| at(i, e))?;
                count(&write_metrics, prepared.class);
                exec::bind(&mut prepared.stmt, s.args.as_ref()).map_err(|e| at(i, e))?;
                results.push(
                    exec::run_text(conn, prepared, &limits, &mut budget).map_err(|e| at(i, e))?,
                );
            }
            Ok(results)
        })
        .await
        .inspect_err(|e| note_timeout(&metrics, e))?;
    // The answers are JSON text already: joined, not parsed again.
    Ok(json_text(format!(
        "{{\"results\":[{}]}}",
        results.join(",")
    )))
}
