//! `POST /api/v1/db/{db_id}/query/watch`: a read-only query kept up to date over SSE.
//!
//! The statement is validated and evaluated before the stream starts (so bad SQL is a plain
//! `400`), after subscribing to the document's change events so no commit falls between. Its
//! read set (tables, from the SQLite authorizer at prepare time) decides which commits matter:
//! a commit that wrote none of them costs a set intersection and nothing else. A relevant
//! commit marks the watch dirty; while a re-evaluation is running further commits only keep it
//! dirty (coalescing). Re-evaluations are ordinary reads on the document's actor, at most a few
//! per document at once (`DocHandle::background_permit`), so writes are never starved. An
//! `update` is sent only when the result hash changes. The stream's task ends as soon as the
//! client goes away.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::{broadcast, mpsc};

use super::classify::{self, Class, ReadSet};
use super::exec::{self, Limits};
use crate::auth::{Action, Authorized};
use crate::error::{ApiError, Json as ApiJson};
use crate::registry::{DocError, DocHandle};
use crate::server::AppState;

static NEXT_WATCH_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct WatchOptions {
    heartbeat_seconds: Option<u64>,
    max_rows: Option<usize>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WatchBody {
    sql: String,
    #[serde(default)]
    args: Option<Json>,
    #[serde(default)]
    options: Option<WatchOptions>,
}

/// One evaluation of the watched statement.
struct Evaluated {
    columns: Json,
    rows: Json,
    hash: String,
    reads: ReadSet,
}

/// A deterministic hash of the canonical JSON of `[columns, rows]` (object keys sorted).
pub fn result_hash(columns: &Json, rows: &Json) -> String {
    let bytes = serde_json::to_vec(&json!([columns, rows])).unwrap_or_default();
    blake3::hash(&bytes).to_hex()[..32].to_owned()
}

async fn evaluate(
    doc: &DocHandle,
    sql: Arc<str>,
    args: Arc<Option<Json>>,
    limits: Limits,
) -> Result<Evaluated, DocError> {
    doc.read(move |conn| {
        let (mut stmt, class, reads) =
            classify::prepare_with_reads(conn, &sql).map_err(super::classify_error)?;
        if class != Class::Read {
            return Err(ApiError::bad_request(
                "not_read_only",
                "only read-only statements can be watched",
            )
            .into());
        }
        exec::bind(&mut stmt, args.as_ref().as_ref())?;
        let mut budget = limits.max_bytes;
        let mut result = exec::run(conn, stmt, true, &limits, &mut budget)?;
        let columns = result["columns"].take();
        let rows = result["rows"].take();
        let hash = result_hash(&columns, &rows);
        Ok(Evaluated {
            columns,
            rows,
            hash,
            reads,
        })
    })
    .await
}

pub(super) async fn watch_route(
    State(state): State<AppState>,
    auth: Authorized,
    headers: HeaderMap,
    ApiJson(body): ApiJson<WatchBody>,
) -> Result<Response, ApiError> {
    auth.require(Action::QueryRead)?;
    let options = body.options.unwrap_or_default();
    let heartbeat = match options.heartbeat_seconds {
        None => 15,
        Some(s) if (1..=3600).contains(&s) => s,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_options",
                "heartbeat_seconds must be between 1 and 3600",
            ));
        }
    };
    let limits = super::limits(
        &state,
        Some(super::Options {
            max_rows: options.max_rows,
            timeout_ms: options.timeout_ms,
        }),
    )?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let doc = state.registry.get(auth.db()?).await?;
    // Subscribe first: a commit between the first evaluation and the subscription is not lost.
    let events = doc.subscribe();
    let sql: Arc<str> = Arc::from(body.sql);
    let args = Arc::new(body.args);
    let first = evaluate(&doc, sql.clone(), args.clone(), limits).await?;

    let watch_id = NEXT_WATCH_ID.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Event>(16);
    let task = WatchTask {
        watch_id,
        seq: 0,
        last_hash: first.hash.clone(),
        reads: first.reads.clone(),
        sql,
        args,
        limits,
        tx,
        state: state.clone(),
    };
    let _count = doc.watch_started();
    state.metrics.active_watches.inc();
    tokio::spawn(async move {
        let _count = _count;
        task.run(doc, events, first, resume, Duration::from_secs(heartbeat))
            .await;
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>))
    });
    let mut response = Sse::new(stream).into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct WatchTask {
    watch_id: u64,
    seq: u64,
    last_hash: String,
    reads: ReadSet,
    sql: Arc<str>,
    args: Arc<Option<Json>>,
    limits: Limits,
    tx: mpsc::Sender<Event>,
    state: AppState,
}

impl WatchTask {
    fn result_event(&mut self, kind: &str, e: &Evaluated) -> Event {
        self.seq += 1;
        Event::default().event(kind).id(e.hash.clone()).data(
            json!({
                "watch_id": self.watch_id,
                "seq": self.seq,
                "result_hash": e.hash,
                "columns": e.columns,
                "rows": e.rows,
            })
            .to_string(),
        )
    }

    fn error_event(&self, e: DocError) -> Event {
        let api = ApiError::from(e);
        Event::default().event("error").data(
            json!({"watch_id": self.watch_id, "code": api.code, "message": api.message})
                .to_string(),
        )
    }

    fn heartbeat(&self) -> Event {
        Event::default().event("heartbeat").data(
            json!({"watch_id": self.watch_id, "seq": self.seq, "time": crate::time_fmt::rfc3339(time::OffsetDateTime::now_utc())})
                .to_string(),
        )
    }

    fn touches(&self, tables: &[String]) -> bool {
        tables
            .iter()
            .any(|t| self.reads.contains(&t.to_ascii_lowercase()))
    }

    async fn run(
        mut self,
        doc: crate::registry::DocGuard,
        mut events: broadcast::Receiver<crate::registry::ChangeEvent>,
        first: Evaluated,
        resume: Option<String>,
        heartbeat: Duration,
    ) {
        let metrics = self.state.metrics.clone();
        let shutdown = self.state.shutdown.clone();
        let opening = if resume.as_deref() == Some(first.hash.as_str()) {
            // The client already has this result: say nothing until it changes.
            metrics.watch_suppressed.inc();
            self.heartbeat()
        } else {
            self.result_event("snapshot", &first)
        };
        if self.tx.send(opening).await.is_err() {
            metrics.active_watches.dec();
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut dirty = false;
        let mut inflight: Option<tokio::task::JoinHandle<Result<Evaluated, DocError>>> = None;
        loop {
            if dirty && inflight.is_none() {
                dirty = false;
                metrics.watch_reevaluations.inc();
                let handle: DocHandle = (*doc).clone();
                let (sql, args, limits) = (self.sql.clone(), self.args.clone(), self.limits);
                inflight = Some(tokio::spawn(async move {
                    let _permit = handle.background_permit().await;
                    evaluate(&handle, sql, args, limits).await
                }));
            }
            let event = tokio::select! {
                () = self.tx.closed() => break,
                () = shutdown.cancelled() => break,
                _ = tick.tick() => Some(self.heartbeat()),
                change = events.recv() => match change {
                    Ok(change) => {
                        if self.touches(&change.tables_written) {
                            dirty = true;
                        }
                        None
                    }
                    // Missed events: assume the worst and re-evaluate.
                    Err(broadcast::error::RecvError::Lagged(_)) => { dirty = true; None }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                done = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    match done {
                        Ok(Ok(e)) if e.hash == self.last_hash => {
                            metrics.watch_suppressed.inc();
                            None
                        }
                        Ok(Ok(e)) => {
                            self.last_hash = e.hash.clone();
                            self.reads = e.reads.clone();
                            Some(self.result_event("update", &e))
                        }
                        Ok(Err(err)) => Some(self.error_event(err)),
                        Err(join) => Some(self.error_event(DocError::Commit(join.to_string()))),
                    }
                }
            };
            if let Some(event) = event
                && self.tx.send(event).await.is_err()
            {
                break;
            }
        }
        if let Some(task) = inflight {
            task.abort();
        }
        metrics.active_watches.dec();
    }
}
