//! Durable pub/sub: publish (committed before the answer, group-committed), subscribe over SSE
//! and WebSocket with replay and MQTT wildcards, retention. Publishing, storage, matching and
//! fan-out live here so every transport (HTTP, WebSocket, MQTT) goes through the same path.
//!
//! Routes: `POST /messages`, `POST /messages/batch`, `GET /events/stream` (SSE),
//! `GET /events/ws`, `GET|PUT /messages/retention` — all under `/api/v1/db/{db_id}`.

pub mod hub;
pub mod retention;
pub mod sql;
pub mod topic;
pub mod ws;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Map, Value as Json, json};
use tokio::sync::mpsc;

use crate::auth::{Access, Action, Authorized, ResourceFrom, Route};
use crate::error::{ApiError, Json as ApiJson, Query};
use crate::registry::DocError;
use crate::state::AppState;
use hub::{Delivery, Start, Subscription};
use sql::{NewMessage, Published};

/// Largest decoded payload.
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// Most messages in one batch.
pub const MAX_BATCH: usize = 1_000;

const PUBLISH: Access = Access::Db {
    actions: &[Action::PubPublish],
    resource: ResourceFrom::Handler,
};
const SUBSCRIBE: Access = Access::Db {
    actions: &[Action::PubSubscribe],
    resource: ResourceFrom::Handler,
};
const RETENTION: Access = Access::Db {
    actions: &[Action::QueryAdmin],
    resource: ResourceFrom::None,
};

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/messages",
            PUBLISH,
            post(publish),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/messages/batch",
            PUBLISH,
            post(publish_batch),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/events/stream",
            SUBSCRIBE,
            get(stream),
        )
        .with_query_token(),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/events/ws",
            Access::Db {
                actions: &[Action::PubSubscribe, Action::PubPublish],
                resource: ResourceFrom::Handler,
            },
            get(ws::upgrade),
        )
        .with_query_token(),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/messages/retention",
            RETENTION,
            get(retention::get_rules),
        ),
        Route::new(
            Method::PUT,
            "/api/v1/db/{db_id}/messages/retention",
            RETENTION,
            put(retention::put_rules),
        ),
    ]
}

/// Parses one message object of a publish request (exactly one payload field).
pub fn parse_message(v: &Json) -> Result<NewMessage, ApiError> {
    let bad = |m: &str| ApiError::bad_request("invalid_message", m.to_owned());
    let Json::Object(map) = v else {
        return Err(bad("a message must be a JSON object"));
    };
    parse_message_map(map, &[])
}

/// As [`parse_message`], allowing `extra` keys (the WebSocket frame's `type` and `ref`).
pub fn parse_message_map(map: &Map<String, Json>, extra: &[&str]) -> Result<NewMessage, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_message", m);
    for key in map.keys() {
        if !matches!(
            key.as_str(),
            "topic"
                | "payload"
                | "payload_base64"
                | "payload_text"
                | "content_type"
                | "dedupe_key"
                | "retain"
        ) && !extra.contains(&key.as_str())
        {
            return Err(bad(format!("unknown field {key:?}")));
        }
    }
    let topic = match map.get("topic") {
        Some(Json::String(t)) => t.clone(),
        _ => return Err(bad("topic is required and must be a string".into())),
    };
    topic::validate_topic(&topic).map_err(|e| ApiError::bad_request("invalid_topic", e))?;
    let given: Vec<&str> = ["payload", "payload_base64", "payload_text"]
        .into_iter()
        .filter(|k| map.contains_key(*k))
        .collect();
    if given.len() != 1 {
        return Err(bad(
            "exactly one of payload, payload_base64, payload_text is required".into(),
        ));
    }
    let (payload, default_type) = match given[0] {
        "payload" => (
            serde_json::to_vec(&map["payload"]).map_err(ApiError::internal)?,
            "application/json",
        ),
        "payload_text" => match &map["payload_text"] {
            Json::String(s) => (s.clone().into_bytes(), "text/plain; charset=utf-8"),
            _ => return Err(bad("payload_text must be a string".into())),
        },
        _ => match &map["payload_base64"] {
            Json::String(s) => (
                base64_simd::STANDARD.decode_to_vec(s).map_err(|_| {
                    bad("payload_base64 is not valid base64 (standard alphabet, padded)".into())
                })?,
                "application/octet-stream",
            ),
            _ => return Err(bad("payload_base64 must be a string".into())),
        },
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(ApiError::too_large(format!(
            "the payload is {} bytes; at most {MAX_PAYLOAD} are allowed",
            payload.len()
        )));
    }
    let content_type = match map.get("content_type") {
        None | Some(Json::Null) => default_type.to_owned(),
        Some(Json::String(s)) if !s.is_empty() && s.len() <= 255 && !s.contains(['\r', '\n']) => {
            s.clone()
        }
        Some(_) => {
            return Err(bad(
                "content_type must be a non-empty string of at most 255 bytes".into(),
            ));
        }
    };
    let dedupe_key = match map.get("dedupe_key") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if !s.is_empty() && s.len() <= 255 => Some(s.clone()),
        Some(_) => return Err(bad("dedupe_key must be a string of 1 to 255 bytes".into())),
    };
    let retain = match map.get("retain") {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(_) => return Err(bad("retain must be a boolean".into())),
    };
    Ok(NewMessage {
        topic,
        content_type,
        payload,
        dedupe_key,
        retain,
    })
}

/// The one publish path (HTTP, WebSocket, MQTT): checks each topic against the token, then
/// stores every message in one savepoint of the next group commit, answering after the commit.
pub async fn publish_messages(
    state: &AppState,
    auth: &Authorized,
    messages: Vec<NewMessage>,
    fences: Vec<(String, i64)>,
) -> Result<Vec<Published>, ApiError> {
    for m in &messages {
        auth.resource(Action::PubPublish, &m.topic)?;
    }
    let doc = state.registry.get(auth.db()?).await?;
    let producer = auth.token_id().map(str::to_owned);
    let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
    let count = messages.len();
    let published = doc
        .write_announcing(move |conn, announce| {
            crate::leases::check_fences(conn, &fences)?;
            let mut out = Vec::with_capacity(messages.len());
            for m in &messages {
                let (published, stored) = sql::insert(conn, m, producer.as_deref())?;
                if let Some(stored) = stored {
                    announce.push(stored);
                }
                out.push(published);
            }
            Ok(out)
        })
        .await
        .map_err(ApiError::from)?;
    state.metrics.publishes.inc_by(count as u64);
    state.metrics.published_bytes.inc_by(bytes as u64);
    state.metrics.publish_batch.observe(count as f64);
    Ok(published)
}

async fn publish(
    State(state): State<AppState>,
    auth: Authorized,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Json>,
) -> Result<Response, ApiError> {
    let fences = crate::leases::parse_fences(&headers)?;
    let message = parse_message(&body)?;
    let mut published = publish_messages(&state, &auth, vec![message], fences).await?;
    let one = published
        .pop()
        .ok_or_else(|| ApiError::internal("publish returned nothing"))?;
    Ok((StatusCode::CREATED, axum::Json(one)).into_response())
}

async fn publish_batch(
    State(state): State<AppState>,
    auth: Authorized,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Json>,
) -> Result<Response, ApiError> {
    let fences = crate::leases::parse_fences(&headers)?;
    let messages = parse_batch(&body)?;
    let results = publish_messages(&state, &auth, messages, fences).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"results": results}))).into_response())
}

/// Parses the body of `POST /messages/batch`: `{"messages": [...]}`, 1 to [`MAX_BATCH`].
pub fn parse_batch(body: &Json) -> Result<Vec<NewMessage>, ApiError> {
    let Json::Object(map) = body else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "expected {\"messages\": [...]}",
        ));
    };
    if map.keys().any(|k| k != "messages") {
        return Err(ApiError::bad_request(
            "invalid_body",
            "only \"messages\" is allowed",
        ));
    }
    let Some(Json::Array(items)) = map.get("messages") else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "messages must be an array",
        ));
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("messages must hold 1 to {MAX_BATCH} messages"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| parse_message(m).map_err(|e| e.with_details(json!({"index": i}))))
        .collect()
}

/// Validates subscription filters for the token: every topic a filter can match must be allowed
/// (a scope prefix must be a prefix of the filter's literal part).
pub fn check_filters(auth: &Authorized, filters: &[String]) -> Result<(), ApiError> {
    if filters.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_topic",
            "at least one topic filter is required",
        ));
    }
    for f in filters {
        topic::validate_filter(f).map_err(|e| ApiError::bad_request("invalid_topic", e))?;
        auth.resource(Action::PubSubscribe, topic::literal_prefix(f))
            .map_err(|_| ApiError::forbidden(format!("the token may not subscribe to {f:?}")))?;
    }
    Ok(())
}

/// `since_id` / `tail` / `Last-Event-ID` → where to start.
pub fn start_position(
    since_id: Option<i64>,
    tail: Option<usize>,
    last_event_id: Option<&str>,
) -> Result<Start, ApiError> {
    match (since_id, tail) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_query",
            "give since_id or tail, not both",
        )),
        (Some(n), None) if n >= 0 => Ok(Start::After(n)),
        (Some(_), None) => Err(ApiError::bad_request(
            "invalid_query",
            "since_id must be >= 0",
        )),
        (None, Some(n)) if n <= 1000 => Ok(Start::Tail(n)),
        (None, Some(_)) => Err(ApiError::bad_request(
            "invalid_query",
            "tail must be at most 1000",
        )),
        (None, None) => match last_event_id {
            Some(id) => id
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(Start::After)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID must be a message id",
                    )
                }),
            None => Ok(Start::Live),
        },
    }
}

/// One SSE event: `event:`, optional `id:`, one `data:` line (`data` is compact JSON, which
/// has no raw line breaks), blank line.
pub(crate) fn sse_event(event: &str, id: Option<i64>, data: &str) -> bytes::Bytes {
    let mut out = String::with_capacity(event.len() + data.len() + 40);
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.to_string());
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    bytes::Bytes::from(out)
}

/// The SSE bytes of a delivery; a message's are built once and shared by every subscriber.
fn delivery_frame(d: &Delivery) -> bytes::Bytes {
    match d {
        Delivery::Message(m) => m.sse_frame(),
        Delivery::Heartbeat => sse_event(
            "heartbeat",
            None,
            &json!({"time": crate::time_fmt::rfc3339(time::OffsetDateTime::now_utc())}).to_string(),
        ),
        Delivery::SlowConsumer => sse_event(
            "error",
            None,
            &json!({"code": "slow_consumer", "message": "the subscriber fell too far behind; reconnect with Last-Event-ID"})
                .to_string(),
        ),
        Delivery::Failed { code, message } => sse_event(
            "error",
            None,
            &json!({"code": code, "message": message}).to_string(),
        ),
        Delivery::Closed => sse_event(
            "error",
            None,
            &json!({"code": "shutting_down", "message": "the server is shutting down; reconnect with Last-Event-ID"})
                .to_string(),
        ),
    }
}

/// A body frame holds at most this many queued deliveries.
const BATCH_DELIVERIES: usize = 64;

/// The frames of `deliveries` (emptied) as one: the shared frame itself when there is one
/// delivery, their concatenation (in order) otherwise.
fn batch_frame(deliveries: &mut Vec<Delivery>) -> bytes::Bytes {
    if deliveries.len() == 1 {
        return deliveries
            .pop()
            .map(|d| delivery_frame(&d))
            .unwrap_or_default();
    }
    let frames: Vec<bytes::Bytes> = deliveries.drain(..).map(|d| delivery_frame(&d)).collect();
    let mut out = bytes::BytesMut::with_capacity(frames.iter().map(|f| f.len()).sum());
    for f in &frames {
        out.extend_from_slice(f);
    }
    out.freeze()
}

/// The last event of an SSE stream whose token stopped being valid: `error` with code
/// `token_revoked` or `token_expired` (and `watch_id` on a query watch).
pub fn token_ended_event(reason: crate::auth::AuthFailure, watch_id: Option<u64>) -> Event {
    Event::default()
        .event("error")
        .data(token_ended_data(reason, watch_id))
}

fn token_ended_data(reason: crate::auth::AuthFailure, watch_id: Option<u64>) -> String {
    let mut data = json!({"code": reason.ended_code(), "message": reason.message()});
    if let Some(id) = watch_id {
        data["watch_id"] = json!(id);
    }
    data.to_string()
}

/// A gauge guard: counts a live subscriber until dropped.
pub struct SubscriberCount(Arc<crate::ops::metrics::Metrics>);

impl SubscriberCount {
    pub fn new(metrics: Arc<crate::ops::metrics::Metrics>) -> Self {
        metrics.subscribers.inc();
        Self(metrics)
    }
}

impl Drop for SubscriberCount {
    fn drop(&mut self) {
        self.0.subscribers.dec();
    }
}

async fn stream(
    State(state): State<AppState>,
    auth: Authorized,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut filters = Vec::new();
    let (mut since_id, mut tail, mut heartbeat) = (None, None, 15u64);
    let num = |k: &str, v: &str| {
        v.parse::<i64>()
            .map_err(|_| ApiError::bad_request("invalid_query", format!("{k} must be an integer")))
    };
    for (k, v) in &params {
        match k.as_str() {
            "topic" => filters.push(v.clone()),
            "since_id" => since_id = Some(num(k, v)?),
            "tail" => {
                tail = Some(
                    usize::try_from(num(k, v)?)
                        .map_err(|_| ApiError::bad_request("invalid_query", "tail must be >= 0"))?,
                )
            }
            "heartbeat_seconds" => {
                heartbeat = u64::try_from(num(k, v)?)
                    .ok()
                    .filter(|s| *s >= 1)
                    .ok_or_else(|| {
                        ApiError::bad_request("invalid_query", "heartbeat_seconds must be >= 1")
                    })?
                    .min(15);
            }
            // The token, if it came in the query (read by the authorization middleware).
            k if crate::auth::is_credential_key(k) => {}
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown parameter {other:?}"),
                ));
            }
        }
    }
    check_filters(&auth, &filters)?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let start = start_position(since_id, tail, last_event_id)?;
    let doc = state.registry.get(auth.db()?).await?;
    let invalidated = auth.invalidated(&state);
    let auth_actor = auth.actor();
    let (tx, mut rx) = mpsc::channel(hub::QUEUE);
    let subscription = Subscription {
        doc: (*doc).clone(),
        auth,
        filters: Arc::new(Mutex::new(filters)),
        start,
        heartbeat: Some(Duration::from_secs(heartbeat)),
        metrics: state.metrics.clone(),
        shutdown: state.shutdown.clone(),
        wait_when_full: false,
    };
    let count = SubscriberCount::new(state.metrics.clone());
    // Presence can bind a member to this stream (`Patch-Connection-Id`); it closes with the body.
    let connection = state.connections.register(auth_actor, "sse");
    let connection_id = HeaderValue::from_str(connection.id()).ok();
    tokio::spawn(async move {
        // The guard keeps the document open for the subscription's lifetime.
        let _doc = doc;
        let _count = count;
        let failed = tx.clone();
        if let Err(e) = subscription.run(tx).await {
            subscription_failed(e, &failed);
        }
    });
    // The hub wakes a busy subscriber once per batch (hub::COALESCE) and queues the batch's
    // deliveries; the body takes everything queued at once as one frame (one chunk, one write),
    // so the per-frame work of the HTTP stack is paid once per batch, not once per message.
    let mut queued = Vec::new();
    let events = futures_util::stream::poll_fn(move |cx| {
        let _connection = &connection;
        rx.poll_recv_many(cx, &mut queued, BATCH_DELIVERIES)
            .map(|n| (n > 0).then(|| Ok::<_, Infallible>(batch_frame(&mut queued))))
    });
    // A revoked or expired token ends the stream with an `error` event (the subscription task
    // then sees its queue closed and stops).
    let events = crate::auth::until_invalid(events, invalidated, |reason| {
        Ok(sse_event("error", None, &token_ended_data(reason, None)))
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
    if let Some(id) = connection_id {
        headers.insert(crate::presence::connections::HEADER, id);
    }
    Ok(response)
}

/// Logs why a subscription stopped and tells its subscriber (an `error` event or frame), if
/// there is room in its queue.
pub fn subscription_failed(e: DocError, tx: &mpsc::Sender<Delivery>) {
    tracing::warn!(error = %e, "subscription ended with an error");
    let api = ApiError::from(e);
    let _ = tx.try_send(Delivery::Failed {
        code: api.code,
        message: api.message,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_deliveries_are_sent_as_one_frame_in_order() {
        // One delivery: its frame as it is.
        let mut one = vec![Delivery::SlowConsumer];
        let frame = delivery_frame(&Delivery::SlowConsumer);
        assert_eq!(batch_frame(&mut one), frame);
        assert!(one.is_empty());
        // Several: concatenated in order.
        let mut many: Vec<Delivery> = (0..5)
            .map(|i| Delivery::Failed {
                code: "c",
                message: format!("m{i}"),
            })
            .collect();
        many.push(Delivery::SlowConsumer);
        let want: Vec<u8> = many
            .iter()
            .flat_map(|d| delivery_frame(d).to_vec())
            .collect();
        assert_eq!(batch_frame(&mut many), want);
        assert!(many.is_empty());
        let text = String::from_utf8(want).unwrap();
        let order: Vec<usize> = (0..5)
            .map(|i| text.find(&format!("m{i}")).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]));
    }

    /// `payload_base64` takes exactly what the standard padded alphabet encodes (what the
    /// `base64` crate writes, at every length and tail), and refuses the rest: a bad
    /// character, missing padding, a URL-safe character, non-zero bits in the last character.
    #[test]
    fn payload_base64_decodes_standard_padded_base64_only() {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::STANDARD;
        let parse = |b64: &str| {
            let map = json!({"topic": "t", "payload_base64": b64});
            parse_message_map(map.as_object().unwrap(), &[]).map(|m| m.payload)
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            assert_eq!(
                parse(&engine.encode(&bytes)).unwrap(),
                bytes,
                "length {len}"
            );
        }
        for bad in [
            "!!", "QQ", "QQ=", "QR==", "QUI", "QUJ=", "-_8=", "QUJD\n", "QU JD",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.contains("payload_base64"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn sse_events_are_one_data_line_per_line() {
        assert_eq!(
            sse_event("message", Some(5), r#"{"a":1}"#),
            "event: message\nid: 5\ndata: {\"a\":1}\n\n"
        );
        // A line break in data (never in compact JSON) cannot end the event early.
        assert_eq!(
            sse_event("error", None, "a\r\nb"),
            "event: error\ndata: a\ndata: b\n\n"
        );
    }
}
