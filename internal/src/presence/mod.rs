//! Presence: who is in a room of a document right now. In memory only (a restart forgets it),
//! never opening the document. Heartbeats join and refresh members, which expire after the
//! room's TTL (swept every second, and whenever their room is touched); a member may be bound to
//! a live SSE, WebSocket or MQTT connection ([`connections`]) and then leaves the moment it
//! closes. Subscribers get a `snapshot`, then `join`, `update` and `leave` events.
//!
//! Routes, under `/api/v1/db/{db_id}` (the resource of every scope check is the room):
//! `POST /presence/{room}/heartbeat`, `DELETE /presence/{room}/{member}`,
//! `GET /presence/{room}`, `PUT /presence/{room}/_config`, `GET /presence/{room}/stream` (SSE).
//!
//! `machine.rs` is the pure state (time passed in), `service.rs` the shared, locked state with
//! its event channels and sweep, `connections.rs` the registry of live connections.

pub mod connections;
pub mod machine;
pub mod service;

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::{Access, Action, Authorized, ResourceFrom, Route};
use crate::error::{ApiError, Json as ApiJson, Path, Query};
use crate::state::AppState;
pub use service::{Presence, sweeper};

/// Longest member name, in bytes.
pub const MAX_MEMBER_BYTES: usize = 128;
/// Longest room name, in bytes.
pub const MAX_ROOM_BYTES: usize = 256;
/// Largest member state, as compact JSON.
pub const MAX_STATE_BYTES: usize = 4096;
/// Longest room TTL a client may set.
pub const MAX_TTL_SECS: u64 = 86_400;
/// Heartbeat events on an otherwise quiet presence stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

const WRITE: Access = Access::Db {
    actions: &[Action::PresenceWrite],
    resource: ResourceFrom::Path("room"),
};
const READ: Access = Access::Db {
    actions: &[Action::PresenceRead],
    resource: ResourceFrom::Path("room"),
};

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/presence/{room}/heartbeat",
            WRITE,
            post(heartbeat),
        ),
        Route::new(
            Method::DELETE,
            "/api/v1/db/{db_id}/presence/{room}/{member}",
            WRITE,
            delete(leave),
        ),
        Route::new(
            Method::PUT,
            "/api/v1/db/{db_id}/presence/{room}/_config",
            WRITE,
            put(config),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/presence/{room}",
            READ,
            get(list),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/presence/{room}/stream",
            READ,
            get(stream),
        )
        .with_query_token(),
    ]
}

/// Room names: 1 to 256 bytes of UTF-8 without control characters, `+` or `#` (topic-like; a
/// `/` is sent percent-encoded as `%2F`).
pub fn validate_room(room: &str) -> Result<(), ApiError> {
    if room.is_empty()
        || room.len() > MAX_ROOM_BYTES
        || room.chars().any(|c| c.is_control() || c == '+' || c == '#')
    {
        return Err(ApiError::bad_request(
            "invalid_room",
            format!("a room is 1 to {MAX_ROOM_BYTES} bytes without control characters, '+' or '#'"),
        ));
    }
    Ok(())
}

/// Member names: 1 to 128 bytes of UTF-8 without control characters; `heartbeat`, `stream` and
/// names starting with `_` are reserved (they are the room's own routes).
pub fn validate_member(member: &str) -> Result<(), ApiError> {
    if member.is_empty()
        || member.len() > MAX_MEMBER_BYTES
        || member.chars().any(char::is_control)
        || member.starts_with('_')
        || matches!(member, "heartbeat" | "stream")
    {
        return Err(ApiError::bad_request(
            "invalid_member",
            format!(
                "a member is 1 to {MAX_MEMBER_BYTES} bytes without control characters, not \
                 starting with '_', and not \"heartbeat\" or \"stream\""
            ),
        ));
    }
    Ok(())
}

/// The room the scope was checked against (percent-decoded), validated.
fn room_of(auth: &Authorized) -> Result<&str, ApiError> {
    let room = auth
        .resource
        .as_deref()
        .ok_or_else(|| ApiError::internal("presence route without a room"))?;
    validate_room(room)?;
    Ok(room)
}

/// Present in the body, even as `null` (`Some(Null)`), or absent (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `POST /presence/{room}/heartbeat`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// 1 to 128 bytes; not `heartbeat`, `stream` or starting with `_`.
    pub member: String,
    /// Any JSON value (at most 4096 bytes compact); absent keeps the stored state (`null` for
    /// a new member).
    #[serde(default, deserialize_with = "present")]
    pub state: Option<Value>,
    /// A live connection of the same caller (`connection_id` of an SSE stream or WebSocket,
    /// `mqtt:{client_id}`): the member leaves (`disconnected`) when it closes.
    #[serde(default)]
    pub connection_id: Option<String>,
}

impl HeartbeatBody {
    /// The checks a heartbeat makes before it touches presence state.
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        validate_member(&self.member)?;
        if let Some(s) = &self.state {
            let size = serde_json::to_vec(s).map_err(ApiError::internal)?.len();
            if size > MAX_STATE_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "state_too_large",
                    format!("state is {size} bytes as JSON; at most {MAX_STATE_BYTES} are allowed"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HeartbeatAnswer {
    pub member: String,
    /// RFC 3339: when the member expires without another heartbeat.
    pub expires_at: String,
}

async fn heartbeat(
    State(state): State<AppState>,
    auth: Authorized,
    ApiJson(body): ApiJson<HeartbeatBody>,
) -> Result<Response, ApiError> {
    let room = room_of(&auth)?;
    body.check()?;
    let conn = match &body.connection_id {
        None => None,
        Some(id) => Some(state.connections.find(&auth.actor(), id).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_connection",
                "no open connection of this caller has that connection_id",
            )
        })?),
    };
    let view =
        state
            .presence
            .heartbeat(auth.db()?.as_str(), room, &body.member, body.state, conn)?;
    Ok(axum::Json(HeartbeatAnswer {
        member: view.member,
        expires_at: crate::time_fmt::from_unix_ms(view.expires_ms),
    })
    .into_response())
}

#[derive(Deserialize)]
struct MemberPath {
    member: String,
}

async fn leave(
    State(state): State<AppState>,
    auth: Authorized,
    Path(path): Path<MemberPath>,
) -> Result<Response, ApiError> {
    let room = room_of(&auth)?;
    validate_member(&path.member)?;
    if state
        .presence
        .leave(auth.db()?.as_str(), room, &path.member)
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_member",
            "no such member in this room",
        ))
    }
}

async fn list(State(state): State<AppState>, auth: Authorized) -> Result<Response, ApiError> {
    let room = room_of(&auth)?;
    let members: Vec<Value> = state
        .presence
        .list(auth.db()?.as_str(), room)
        .iter()
        .map(service::view_json)
        .collect();
    Ok(axum::Json(json!({ "members": members })).into_response())
}

/// `PUT /presence/{room}/_config`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    /// Seconds a member stays without a heartbeat: 1 to 86400.
    pub ttl_secs: u64,
}

impl RoomConfig {
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        if !(1..=MAX_TTL_SECS).contains(&self.ttl_secs) {
            return Err(ApiError::bad_request(
                "invalid_ttl",
                format!("ttl_secs must be between 1 and {MAX_TTL_SECS}"),
            ));
        }
        Ok(())
    }
}

async fn config(
    State(state): State<AppState>,
    auth: Authorized,
    ApiJson(body): ApiJson<RoomConfig>,
) -> Result<Response, ApiError> {
    let room = room_of(&auth)?;
    body.check()?;
    state
        .presence
        .set_ttl(auth.db()?.as_str(), room, body.ttl_secs)?;
    Ok(axum::Json(json!({"room": room, "ttl_secs": body.ttl_secs})).into_response())
}

fn snapshot_frame(connection_id: &str, members: &[machine::View], ttl_ms: i64) -> bytes::Bytes {
    let members: Vec<Value> = members.iter().map(service::view_json).collect();
    crate::pubsub::sse_event(
        "snapshot",
        None,
        &json!({
            "connection_id": connection_id,
            "ttl_secs": ttl_ms / 1000,
            "members": members,
        })
        .to_string(),
    )
}

async fn stream(
    State(state): State<AppState>,
    auth: Authorized,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let room = room_of(&auth)?.to_owned();
    for (k, _) in &params {
        if !crate::auth::is_credential_key(k) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("unknown parameter {k:?}"),
            ));
        }
    }
    let db = auth.db()?.as_str().to_owned();
    let sub = state.presence.subscribe(&db, &room)?;
    let conn = state.connections.register(auth.actor(), "sse");
    let connection_id = conn.id().to_owned();
    let first = snapshot_frame(&connection_id, &sub.members, sub.ttl_ms);
    let invalidated = auth.invalidated(&state);

    struct Live {
        state: AppState,
        db: String,
        room: String,
        connection_id: String,
        rx: tokio::sync::broadcast::Receiver<bytes::Bytes>,
        first: Option<bytes::Bytes>,
        tick: tokio::time::Interval,
        ended: bool,
        // Dropped with the stream: the room is unpinned and the connection announced closed.
        _pin: service::Pin,
        _conn: connections::ConnectionGuard,
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let live = Live {
        state: state.clone(),
        db,
        room,
        connection_id: connection_id.clone(),
        rx: sub.rx,
        first: Some(first),
        tick,
        ended: false,
        _pin: sub.pin,
        _conn: conn,
    };
    let events = futures_util::stream::unfold(live, |mut live| async move {
        if let Some(first) = live.first.take() {
            return Some((Ok::<_, Infallible>(first), live));
        }
        if live.ended {
            return None;
        }
        let shutdown = live.state.shutdown.clone();
        let frame = tokio::select! {
            got = live.rx.recv() => match got {
                Ok(frame) => frame,
                // Fell behind: a fresh snapshot replaces the member list.
                Err(RecvError::Lagged(_)) => {
                    match live.state.presence.resubscribe(&live.db, &live.room) {
                        Some((members, ttl_ms, rx)) => {
                            live.rx = rx;
                            snapshot_frame(&live.connection_id, &members, ttl_ms)
                        }
                        None => return None,
                    }
                }
                Err(RecvError::Closed) => return None,
            },
            _ = live.tick.tick() => crate::pubsub::sse_event(
                "heartbeat",
                None,
                &json!({"time": crate::time_fmt::rfc3339(time::OffsetDateTime::now_utc())})
                    .to_string(),
            ),
            () = shutdown.cancelled() => {
                live.ended = true;
                crate::pubsub::sse_event(
                    "error",
                    None,
                    &json!({"code": "shutting_down", "message": "the server is shutting down"})
                        .to_string(),
                )
            }
        };
        Some((Ok(frame), live))
    });
    let events = crate::auth::until_invalid(events, invalidated, |reason| {
        Ok(crate::pubsub::sse_event(
            "error",
            None,
            &json!({"code": reason.ended_code(), "message": reason.message()}).to_string(),
        ))
    });
    let mut response = Response::new(axum::body::Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&connection_id) {
        headers.insert(connections::HEADER, v);
    }
    Ok(response)
}
