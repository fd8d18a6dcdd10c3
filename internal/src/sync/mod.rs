//! Sync: every committed write transaction that changed user tables has a version (its
//! `commit_seq`) and a changeset kept in the document ([`log`], written by the actor inside the
//! group commit). Routes (`sync.read`):
//!
//! - `GET /sync/status` → `{version, oldest_version, tables, tables_without_primary_key}`;
//! - `GET /sync/changes?since=V[&format=changeset|json][&live=true]` → every change after V, as
//!   one combined changeset or as JSON rows; `410 version_gone` below what is kept; `live=true`
//!   is SSE, one `changes` event per version (`id` = version, `Last-Event-ID` resumes);
//! - `GET /sync/snapshot` → a consistent copy of the user tables ([`snapshot`]);
//! - `POST /sync/changes` (`sync.write`) → a client's changeset applied ([`push`]).

pub mod client;
pub mod log;
pub mod push;
pub mod snapshot;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rusqlite::session::{Changegroup, ChangesetIter};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use crate::auth::{Access, Action, Authorized, ResourceFrom, Route};
use crate::error::{ApiError, Json as ApiJson};
use crate::registry::{DbId, DocError};
use crate::state::AppState;

const SYNC_READ: Access = Access::Db {
    actions: &[Action::SyncRead],
    resource: ResourceFrom::None,
};

/// The media type of a changeset body.
pub const CHANGESET_TYPE: &str = "application/vnd.sqlite3-changeset";
/// Most versions one `GET /sync/changes` answers (a client far behind asks again from the
/// `Patch-Version` it got, or takes a snapshot).
const MAX_VERSIONS_PER_ANSWER: i64 = 10_000;

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/sync/status",
            SYNC_READ,
            get(status),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/sync/changes",
            SYNC_READ,
            get(changes),
        )
        .with_query_token(),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/sync/changes",
            Access::Db {
                actions: &[Action::SyncWrite],
                resource: ResourceFrom::None,
            },
            axum::routing::post(push::push),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/sync/snapshot",
            SYNC_READ,
            get(snapshot::snapshot),
        ),
    ]
}

fn meta_int(conn: &Connection, key: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row(
            "SELECT CAST(value AS INTEGER) FROM _patchwork_meta WHERE key = ?1",
            [key],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten()
        .unwrap_or(0))
}

/// The document's version and the oldest `since` that can be served.
fn versions(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    Ok((meta_int(conn, "commit_seq")?, meta_int(conn, "sync_since")?))
}

async fn status(
    State(state): State<AppState>,
    auth: Authorized,
) -> Result<ApiJson<Json>, ApiError> {
    let doc = state.registry.get(auth.db()?).await?;
    let answer = doc
        .read(|conn| {
            let (version, oldest) = versions(conn)?;
            let mut stmt = conn.prepare(
                "SELECT s.name, EXISTS (SELECT 1 FROM pragma_table_info(s.name) AS c WHERE c.pk > 0)
                   FROM sqlite_schema AS s WHERE s.type = 'table' ORDER BY s.name",
            )?;
            let mut tables = Vec::new();
            let mut without_pk = Vec::new();
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))?;
            for row in rows {
                let (name, has_pk) = row?;
                if !log::synced(&name) {
                    continue;
                }
                if has_pk {
                    tables.push(name);
                } else {
                    without_pk.push(name);
                }
            }
            Ok(json!({
                "version": version,
                "oldest_version": oldest,
                "tables": tables,
                "tables_without_primary_key": without_pk,
            }))
        })
        .await?;
    Ok(ApiJson(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    since: Option<u64>,
    #[serde(default)]
    format: Format,
    #[serde(default)]
    live: bool,
    /// Accepted here for `EventSource` (the auth layer reads it), under both names the auth
    /// layer takes.
    #[serde(default, rename = "access_token")]
    _access_token: Option<String>,
    #[serde(default, rename = "token")]
    _token: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Changeset,
    Json,
}

/// One version's whole changeset.
type VersionChanges = (i64, Vec<u8>);

/// The changesets of the versions after `since` (at most `limit`), each whole (its parts
/// joined), in order; and the document's version. `Err` with `410` below what is kept.
fn load_changes(
    conn: &Connection,
    db: &DbId,
    since: i64,
    limit: i64,
) -> Result<(Vec<VersionChanges>, i64), DocError> {
    let (version, oldest) = versions(conn)?;
    if since < oldest {
        return Err(ApiError::new(
            axum::http::StatusCode::GONE,
            "version_gone",
            format!("changes before version {oldest} are no longer kept; take a snapshot"),
        )
        .with_details(json!({
            "oldest_version": oldest,
            "snapshot": format!("/api/v1/db/{db}/sync/snapshot"),
        }))
        .into());
    }
    if since > version {
        return Err(ApiError::bad_request(
            "invalid_since",
            format!("since={since} is ahead of the document's version {version}"),
        )
        .into());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT version, changeset FROM _patchwork_sync_changes
          WHERE version > ?1 AND version IN (
                SELECT DISTINCT version FROM _patchwork_sync_changes WHERE version > ?1
                 ORDER BY version LIMIT ?2)
          ORDER BY version, part",
    )?;
    let mut rows = stmt.query(params![since, limit])?;
    let mut out: Vec<VersionChanges> = Vec::new();
    while let Some(row) = rows.next()? {
        let v: i64 = row.get(0)?;
        let part: Vec<u8> = row.get(1)?;
        match out.last_mut() {
            Some((last, bytes)) if *last == v => bytes.extend_from_slice(&part),
            _ => out.push((v, part)),
        }
    }
    // A partial answer is at the last version it holds.
    let upto = if out.len() as i64 >= limit {
        out.last().map_or(version, |(v, _)| *v)
    } else {
        version
    };
    Ok((out, upto))
}

/// One combined changeset of `changes` (SQLite's changegroup: later changes to a row fold
/// into earlier ones).
fn combine(changes: &[VersionChanges]) -> rusqlite::Result<Vec<u8>> {
    let mut group = Changegroup::new()?;
    for (_, cs) in changes {
        group.add_stream(&mut cs.as_slice())?;
    }
    let mut out = Vec::new();
    group.output_strm(&mut out)?;
    Ok(out)
}

/// The JSON rows of one version's changeset: `{version, table, op, pk, old?, new?}`, with
/// column names from the current schema (`cN` for a column it no longer has).
fn json_rows(
    conn: &Connection,
    version: i64,
    changeset: &[u8],
    names: &mut HashMap<String, Vec<String>>,
    out: &mut Vec<Json>,
) -> rusqlite::Result<()> {
    let mut input: &[u8] = changeset;
    let reader: &mut dyn Read = &mut input;
    let mut iter = ChangesetIter::start_strm(&reader)?;
    use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator as _;
    while let Some(item) = iter.next()? {
        let op = item.op()?;
        let table = op.table_name().to_owned();
        let ncols = usize::try_from(op.number_of_columns()).unwrap_or(0);
        let kind = op.code();
        let pk_flags = item.pk()?.to_vec();
        if !names.contains_key(&table) {
            let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
            let cols = stmt
                .query_map([&table], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            names.insert(table.clone(), cols);
        }
        let cols = &names[&table];
        let name = |i: usize| cols.get(i).cloned().unwrap_or_else(|| format!("c{i}"));
        let (op_name, has_old, has_new) = match kind {
            rusqlite::hooks::Action::SQLITE_INSERT => ("insert", false, true),
            rusqlite::hooks::Action::SQLITE_DELETE => ("delete", true, false),
            _ => ("update", true, true),
        };
        let mut pk = Map::new();
        let mut old = Map::new();
        let mut new = Map::new();
        for i in 0..ncols {
            let old_v = if has_old {
                item.old_value(i).ok()
            } else {
                None
            };
            let new_v = if has_new {
                item.new_value(i).ok()
            } else {
                None
            };
            if pk_flags.get(i).copied().unwrap_or(0) != 0 {
                // A primary key column: in `new` for inserts, in `old` otherwise.
                if let Some(v) = old_v.or(new_v) {
                    pk.insert(name(i), crate::query::value::to_json(v));
                }
            }
            if let Some(v) = old_v {
                old.insert(name(i), crate::query::value::to_json(v));
            }
            if let Some(v) = new_v {
                new.insert(name(i), crate::query::value::to_json(v));
            }
        }
        let mut row = json!({"version": version, "table": table, "op": op_name, "pk": pk});
        if has_old {
            row["old"] = Json::Object(old);
        }
        if has_new {
            row["new"] = Json::Object(new);
        }
        out.push(row);
    }
    Ok(())
}

fn patch_version(v: i64) -> (header::HeaderName, HeaderValue) {
    (
        header::HeaderName::from_static("patch-version"),
        HeaderValue::from(v),
    )
}

async fn changes(
    State(state): State<AppState>,
    auth: Authorized,
    headers: HeaderMap,
    query: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let db = auth.db()?.clone();
    // `Last-Event-ID` (a reconnecting EventSource) resumes like `since`.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let since = match (query.since, query.live.then_some(resume).flatten()) {
        (_, Some(resumed)) => resumed,
        (Some(since), None) => since,
        (None, None) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "since is required (0 for everything kept)",
            ));
        }
    };
    let since = i64::try_from(since)
        .map_err(|_| ApiError::bad_request("invalid_query", "since is too large"))?;
    let doc = state.registry.get(&db).await?;
    if query.live {
        return Ok(live(state, auth, db, doc, since, query.format)
            .await?
            .into_response());
    }
    let format = query.format;
    let read_db = db.clone();
    let (body, upto, content_type) = doc
        .read(move |conn| {
            let (changes, upto) = load_changes(conn, &read_db, since, MAX_VERSIONS_PER_ANSWER)?;
            Ok(match format {
                Format::Changeset => (combine(&changes)?, upto, CHANGESET_TYPE),
                Format::Json => {
                    let mut names = HashMap::new();
                    let mut rows = Vec::new();
                    for (v, cs) in &changes {
                        json_rows(conn, *v, cs, &mut names, &mut rows)?;
                    }
                    let body = serde_json::to_vec(&json!({"version": upto, "changes": rows}))
                        .map_err(ApiError::internal)?;
                    (body, upto, "application/json")
                }
            })
        })
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            patch_version(upto),
        ],
        body,
    )
        .into_response())
}

/// `live=true`: what is kept after `since`, then each new version as it commits, one SSE
/// `changes` event per version (`id` = version).
async fn live(
    state: AppState,
    auth: Authorized,
    db: DbId,
    guard: crate::registry::DocGuard,
    since: i64,
    format: Format,
) -> Result<Response, ApiError> {
    // Subscribed before the first read: no commit falls between the backlog and live events.
    let mut commits = guard.subscribe();
    let doc: crate::registry::DocHandle = (*guard).clone();
    let read = move |doc: crate::registry::DocHandle, db: DbId, after: i64| async move {
        doc.read(move |conn| {
            let (changes, _) = load_changes(conn, &db, after, 1_000)?;
            let mut events = Vec::with_capacity(changes.len());
            let mut names = HashMap::new();
            for (v, cs) in &changes {
                let data = match format {
                    Format::Changeset => json!({
                        "version": v,
                        "changeset_base64": base64::Engine::encode(
                            &base64::engine::general_purpose::STANDARD, cs),
                    }),
                    Format::Json => {
                        let mut rows = Vec::new();
                        json_rows(conn, *v, cs, &mut names, &mut rows)?;
                        json!({"version": v, "changes": rows})
                    }
                };
                events.push((*v, data));
            }
            Ok(events)
        })
        .await
    };
    // The first read answers errors (410, 400) as a plain response, before the stream starts.
    let first = read(doc.clone(), db.clone(), since).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        // Held while the stream lives: the document stays open.
        let _guard = guard;
        let mut last = since;
        let mut batch = first;
        loop {
            for (v, data) in batch.drain(..) {
                last = v;
                let event = Event::default()
                    .event("changes")
                    .id(v.to_string())
                    .data(data.to_string());
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            // Wait for a commit (or a lag, which only means several happened).
            tokio::select! {
                got = commits.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = got {
                        return;
                    }
                }
                () = tx.closed() => return,
                () = shutdown.cancelled() => return,
            }
            batch = match read(doc.clone(), db.clone(), last).await {
                Ok(batch) => batch,
                Err(e) => {
                    let e = ApiError::from(e);
                    let _ = tx
                        .send(
                            Event::default()
                                .event("error")
                                .data(json!({"code": e.code, "message": e.message}).to_string()),
                        )
                        .await;
                    return;
                }
            };
        }
    });
    let events = tokio_stream_from(rx);
    let invalidated = auth.invalidated(&state);
    let events = crate::auth::until_invalid(events, invalidated, |reason| {
        Ok(Event::default()
            .event("error")
            .data(json!({"code": reason.ended_code(), "message": reason.message()}).to_string()))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Event>,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok)))
}
