//! `POST /api/v1/db/{db_id}/query/watch`: a read-only query kept up to date over SSE.
//!
//! Shape: per document one [`Hub`] with one dispatcher task reading the document's change
//! events; watches of the same statement (same SQL, args and bounds) share one [`Group`], which
//! evaluates once for all of them and publishes the result on a `tokio::sync::watch` channel.
//! So a commit costs one dispatcher wake-up plus a read-set intersection per group — watches on
//! other tables are not woken at all — and a thousand identical watches cost one evaluation.
//!
//! The statement is validated and evaluated before the stream starts (bad SQL is a plain `400`),
//! after its group is registered with the hub, so no commit falls between. A group's read set
//! (tables, from the SQLite authorizer at prepare time) decides which commits matter; a relevant
//! commit marks it dirty (`Notify`: further commits while it evaluates collapse into one more
//! evaluation). Evaluations are ordinary reads on the document's actor, at most a few per
//! document at once (`DocHandle::background_permit`), so writes are never starved. A group
//! publishes only results whose hash changed. A member's task ends as soon as its client goes.

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
use std::collections::HashMap;
use std::sync::{Mutex, Weak};

use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::classify::{self, Class, ReadSet};
use super::exec::{self, Limits};
use crate::auth::{Action, Authorized};
use crate::error::{ApiError, Json as ApiJson};
use crate::registry::{DbId, DocError, DocHandle};
use crate::state::AppState;

static NEXT_WATCH_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchOptions {
    heartbeat_seconds: Option<u64>,
    max_rows: Option<usize>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchBody {
    pub(crate) sql: String,
    #[serde(default)]
    pub(crate) args: Option<Json>,
    #[serde(default)]
    options: Option<WatchOptions>,
}

impl WatchBody {
    /// The checks `query/watch` makes before it opens the document: the heartbeat period and
    /// the bounds of each evaluation.
    pub(crate) fn check(&self, config: &crate::Config) -> Result<(u64, Limits), ApiError> {
        let options = self.options.unwrap_or_default();
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
            config,
            Some(super::Options {
                max_rows: options.max_rows,
                timeout_ms: options.timeout_ms,
            }),
        )?;
        Ok((heartbeat, limits))
    }
}

/// One evaluation of the watched statement.
#[derive(Debug)]
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
    // A plain query: evaluations of several groups dirtied by one commit share a read
    // transaction when they wait in the mailbox together.
    doc.query(move |conn| {
        let mut prepared = classify::prepare(conn, &sql).map_err(super::classify_error)?;
        if prepared.class != Class::Read {
            return Err(ApiError::bad_request(
                "not_read_only",
                "only read-only statements can be watched",
            )
            .into());
        }
        exec::bind(&mut prepared.stmt, args.as_ref().as_ref())?;
        let reads = std::mem::take(&mut prepared.reads);
        let mut budget = limits.max_bytes;
        let mut result = exec::run(conn, prepared, &limits, &mut budget)?;
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

/// The placeholder code of a group whose first evaluation is still running.
const PENDING: &str = "pending";

/// What a group publishes: the latest result, or why it could not be computed.
type Latest = Arc<Result<Evaluated, (&'static str, String)>>;

/// Identifies statements that can share evaluations.
#[derive(Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    sql: Arc<str>,
    args: String,
    max_rows: usize,
    timeout_ms: u128,
}

/// Watches of one statement on one document.
struct Group {
    /// `None` until the first evaluation: every commit counts then.
    reads: Mutex<Option<ReadSet>>,
    dirty: Notify,
    latest: watch::Sender<Latest>,
}

impl Group {
    fn cares(&self, tables: &[String]) -> bool {
        match &*self.reads.lock().unwrap_or_else(|p| p.into_inner()) {
            None => true,
            Some(reads) => tables
                .iter()
                .any(|t| reads.contains(&t.to_ascii_lowercase())),
        }
    }
}

/// The watch groups of one document and the task that routes its commits to them.
struct Hub {
    groups: Mutex<HashMap<GroupKey, Weak<Group>>>,
    stop: CancellationToken,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Per-document hubs, kept while any watch of the document lives.
#[derive(Default)]
pub struct Hubs {
    hubs: Mutex<HashMap<DbId, Weak<Hub>>>,
}

impl Hubs {
    fn get(&self, db_id: &DbId, doc: &DocHandle) -> Arc<Hub> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hub) = hubs.get(db_id).and_then(Weak::upgrade) {
            return hub;
        }
        hubs.retain(|_, h| h.strong_count() > 0);
        let hub = Arc::new(Hub {
            groups: Mutex::default(),
            stop: CancellationToken::new(),
        });
        hubs.insert(db_id.clone(), Arc::downgrade(&hub));
        // Subscribed now, before any group of this hub evaluates: no commit is missed.
        tokio::spawn(dispatch(
            Arc::downgrade(&hub),
            hub.stop.clone(),
            doc.subscribe(),
        ));
        hub
    }
}

/// Routes each commit to the groups whose read set it touched.
async fn dispatch(
    hub: Weak<Hub>,
    stop: CancellationToken,
    mut events: broadcast::Receiver<crate::registry::ChangeEvent>,
) {
    loop {
        let change = tokio::select! {
            () = stop.cancelled() => return,
            change = events.recv() => change,
        };
        let Some(hub) = hub.upgrade() else { return };
        let groups: Vec<Arc<Group>> = hub
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        match change {
            Ok(change) => {
                for g in groups.iter().filter(|g| g.cares(&change.tables_written)) {
                    g.dirty.notify_one();
                }
            }
            // Missed commits: assume the worst.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                for g in &groups {
                    g.dirty.notify_one();
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Re-evaluates a group whenever it is dirty, until its last member leaves.
async fn evaluate_group(
    group: Arc<Group>,
    doc: DocHandle,
    key: GroupKey,
    args: Arc<Option<Json>>,
    limits: Limits,
    metrics: Arc<crate::ops::metrics::Metrics>,
) {
    loop {
        tokio::select! {
            () = group.latest.closed() => return,
            () = group.dirty.notified() => {}
        }
        metrics.watch_reevaluations.inc();
        let result = {
            let _permit = doc.background_permit().await;
            evaluate(&doc, key.sql.clone(), args.clone(), limits).await
        };
        let latest: Latest = match result {
            Ok(e) => {
                *group.reads.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.reads.clone());
                let same = matches!(&**group.latest.borrow(), Ok(prev) if prev.hash == e.hash);
                if same {
                    metrics.watch_suppressed.inc();
                    continue;
                }
                Arc::new(Ok(e))
            }
            Err(e) => {
                let api = ApiError::from(e);
                Arc::new(Err((api.code, api.message)))
            }
        };
        group.latest.send_replace(latest);
    }
}

pub(super) async fn watch_route(
    State(state): State<AppState>,
    auth: Authorized,
    headers: HeaderMap,
    ApiJson(body): ApiJson<WatchBody>,
) -> Result<Response, ApiError> {
    auth.require(Action::QueryRead)?;
    let (heartbeat, limits) = body.check(&state.config)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let db_id = auth.db()?.clone();
    let doc = state.registry.get(&db_id).await?;
    let sql: Arc<str> = Arc::from(body.sql);
    let args = Arc::new(body.args);
    let key = GroupKey {
        sql: sql.clone(),
        args: serde_json::to_string(&*args).unwrap_or_default(),
        max_rows: limits.max_rows,
        timeout_ms: limits.timeout.as_millis(),
    };
    let hub = state.watch_hubs.get(&db_id, &doc);
    // Look up or register the group under one lock: two first watchers of the same statement
    // racing here must end in the same group (a group the map forgot is never dispatched to, so
    // its members would never see an update).
    let (group, created) = {
        let mut groups = hub.groups.lock().unwrap_or_else(|p| p.into_inner());
        match groups.get(&key).and_then(Weak::upgrade) {
            Some(group) => (group, false),
            None => {
                let (latest_tx, _) =
                    watch::channel::<Latest>(Arc::new(Err((PENDING, String::new()))));
                let group = Arc::new(Group {
                    reads: Mutex::new(None),
                    dirty: Notify::new(),
                    latest: latest_tx,
                });
                groups.insert(key.clone(), Arc::downgrade(&group));
                (group, true)
            }
        }
    };
    let (group, latest) = match created {
        false => {
            // The group may still be computing its first result (another client just created
            // it): wait for it, and answer its failure as this request's failure.
            let mut latest = group.latest.subscribe();
            let failed = {
                let ready = tokio::time::timeout(
                    limits.timeout + Duration::from_secs(5),
                    latest.wait_for(|l| !matches!(&**l, Err((PENDING, _)))),
                )
                .await;
                match ready {
                    Ok(Ok(l)) => match &**l {
                        Err((code, message)) => Some((*code, message.clone())),
                        Ok(_) => None,
                    },
                    _ => Some((
                        "timeout",
                        "the watch's first evaluation did not finish".to_owned(),
                    )),
                }
            };
            if let Some((code, message)) = failed {
                return Err(ApiError::bad_request(code, message));
            }
            (group, latest)
        }
        true => {
            // Evaluate once up front: invalid SQL is refused before the stream starts. The
            // hub is already subscribed, so a commit during this evaluation is not lost
            // (the group is registered first and, with no read set yet, any commit dirties it).
            let first = match evaluate(&doc, sql.clone(), args.clone(), limits).await {
                Ok(first) => first,
                Err(e) => {
                    hub.groups
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    let api = ApiError::from(e);
                    group
                        .latest
                        .send_replace(Arc::new(Err((api.code, api.message.clone()))));
                    return Err(api);
                }
            };
            *group.reads.lock().unwrap_or_else(|p| p.into_inner()) = Some(first.reads.clone());
            group.latest.send_replace(Arc::new(Ok(first)));
            let latest = group.latest.subscribe();
            tokio::spawn(evaluate_group(
                group.clone(),
                (*doc).clone(),
                key,
                args,
                limits,
                state.metrics.clone(),
            ));
            (group, latest)
        }
    };

    let watch_id = NEXT_WATCH_ID.fetch_add(1, Ordering::Relaxed);
    let invalidated = auth.invalidated(&state);
    let (tx, mut rx) = mpsc::channel::<Event>(16);
    let member = Member {
        watch_id,
        seq: 0,
        last_hash: String::new(),
        tx,
        state: state.clone(),
    };
    let count = doc.watch_started();
    state.metrics.active_watches.inc();
    tokio::spawn(async move {
        // Held for the stream's lifetime: the document stays open, the hub and group live.
        let _keep = (doc, hub, group, count);
        member
            .run(latest, resume, Duration::from_secs(heartbeat))
            .await;
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>))
    });
    // A revoked or expired token ends the watch with an `error` event (its member task then
    // sees the stream gone and leaves).
    let stream = crate::auth::until_invalid(stream, invalidated, move |reason| {
        Ok(crate::pubsub::token_ended_event(reason, Some(watch_id)))
    });
    let mut response = Sse::new(stream).into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One client's watch.
struct Member {
    watch_id: u64,
    seq: u64,
    last_hash: String,
    tx: mpsc::Sender<Event>,
    state: AppState,
}

impl Member {
    fn result_event(&mut self, kind: &str, e: &Evaluated) -> Event {
        self.seq += 1;
        self.last_hash = e.hash.clone();
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

    fn error_event(&self, code: &str, message: &str) -> Event {
        Event::default()
            .event("error")
            .data(json!({"watch_id": self.watch_id, "code": code, "message": message}).to_string())
    }

    fn heartbeat(&self) -> Event {
        Event::default().event("heartbeat").data(
            json!({
                "watch_id": self.watch_id,
                "seq": self.seq,
                "time": crate::time_fmt::rfc3339(time::OffsetDateTime::now_utc()),
            })
            .to_string(),
        )
    }

    /// The event for the group's latest result, if this member has not seen it.
    fn event_for(&mut self, latest: &Latest, first: bool) -> Option<Event> {
        match &**latest {
            Ok(e) if e.hash == self.last_hash => None,
            Ok(e) => Some(self.result_event(if first { "snapshot" } else { "update" }, e)),
            Err((code, message)) => Some(self.error_event(code, message)),
        }
    }

    async fn run(
        mut self,
        mut latest: watch::Receiver<Latest>,
        resume: Option<String>,
        heartbeat: Duration,
    ) {
        let metrics = self.state.metrics.clone();
        let shutdown = self.state.shutdown.clone();
        let current = latest.borrow_and_update().clone();
        let opening = match (&*current, resume) {
            (Ok(e), Some(resume)) if resume == e.hash => {
                // The client already has this result: say nothing until it changes.
                metrics.watch_suppressed.inc();
                self.last_hash = resume;
                Some(self.heartbeat())
            }
            _ => self.event_for(&current, true),
        };
        if let Some(opening) = opening
            && self.tx.send(opening).await.is_err()
        {
            metrics.active_watches.dec();
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        loop {
            let event = tokio::select! {
                () = self.tx.closed() => break,
                () = shutdown.cancelled() => break,
                _ = tick.tick() => Some(self.heartbeat()),
                changed = latest.changed() => match changed {
                    Ok(()) => {
                        let current = latest.borrow_and_update().clone();
                        self.event_for(&current, false)
                    }
                    Err(_) => break,
                },
            };
            if let Some(event) = event
                && self.tx.send(event).await.is_err()
            {
                break;
            }
        }
        metrics.active_watches.dec();
    }
}
