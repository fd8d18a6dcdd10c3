//! `GET /events/ws`: subscribe, unsubscribe and publish over one WebSocket, one JSON object per
//! text frame. Scope checks happen per frame (the route admits `pub.subscribe` or `pub.publish`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use futures_util::FutureExt as _;
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::hub::{self, Delivery, Filters, Subscription};
use super::sql::NewMessage;
use super::{SubscriberCount, check_filters, parse_message_map, publish_messages, start_position};
use crate::auth::{Action, Authorized};
use crate::error::ApiError;
use crate::state::AppState;

/// Largest client frame.
const MAX_FRAME: usize = 2 * 1024 * 1024;

/// Bytes tungstenite reads from the socket at a time (see `upgrade`).
const READ_BUFFER: usize = 8 * 1024;

pub async fn upgrade(
    State(state): State<AppState>,
    auth: Authorized,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Not an upgrade: the JSON error shape (axum's rejection is plain text), no document opened.
    let ws = ws?;
    // Open (or create) the document now, so an overloaded server answers with a plain error.
    let doc = state.registry.get(auth.db()?).await?;
    // Presence can bind a member to this socket: `Patch-Connection-Id` on the upgrade, and the
    // answer to a `{"type":"connection"}` frame.
    let connection = state.connections.register(auth.actor(), "ws");
    let connection_id = connection.id().to_owned();
    let mut response = ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        // tungstenite zero-fills this much of its read buffer before every read from the
        // socket (128 KiB by default: a memset of 128 KiB per frame read, ~5% of a publishing
        // server's CPU). Larger frames still arrive, over more reads.
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let _doc = doc;
            let _count = SubscriberCount::new(state.metrics.clone());
            let connection_id = connection.id().to_owned();
            Session {
                state,
                auth,
                subs: Vec::new(),
                connection_id,
            }
            .run(socket)
            .await;
            drop(connection);
        });
    if let Ok(v) = axum::http::HeaderValue::from_str(&connection_id) {
        response
            .headers_mut()
            .insert(crate::presence::connections::HEADER, v);
    }
    Ok(response)
}

struct Session {
    state: AppState,
    auth: Authorized,
    subs: Vec<(Filters, JoinHandle<()>)>,
    /// This socket's id in `state.connections`.
    connection_id: String,
}

fn error_frame(reference: Option<&Json>, code: &str, message: &str) -> String {
    let mut v = json!({"type": "error", "code": code, "message": message});
    if let Some(r) = reference {
        v["ref"] = r.clone();
    }
    v.to_string()
}

fn string_list(v: Option<&Json>) -> Result<Vec<String>, ApiError> {
    match v {
        Some(Json::Array(items)) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad_request("invalid_frame", "topics must be strings"))
            })
            .collect(),
        _ => Err(ApiError::bad_request(
            "invalid_frame",
            "topics must be an array",
        )),
    }
}

/// Publish frames already waiting on the socket are committed together, up to this many…
const MAX_PIPELINED: usize = 256;
/// …or this many bytes of frames.
const MAX_PIPELINED_BYTES: usize = 1024 * 1024;

/// Longest a send to the client may take; a client that stops reading is dropped after it.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A socket event: a frame, a read error, or `None` when the client is gone.
type Received = Option<Result<Frame, axum::Error>>;

fn shutting_down() -> String {
    error_frame(None, "shutting_down", "the server is shutting down")
}

impl Session {
    async fn run(mut self, mut socket: WebSocket) {
        let (tx, mut rx) = mpsc::channel::<Delivery>(hub::QUEUE);
        let shutdown = self.state.shutdown.clone();
        // A revoked or expired token ends the socket: an `error` frame, then a close frame.
        let mut invalidated = self.auth.invalidated(&self.state);
        let mut close: Option<CloseFrame> = None;
        let mut carried: Option<Received> = None;
        // Pings keep proxies and NATs from dropping a quiet socket; a client that answers
        // nothing for three periods is gone (its TCP connection may never say so).
        let period = Duration::from_secs(self.state.config.ws_ping_secs);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let frame = match carried.take() {
                Some(frame) => Some(frame),
                None => tokio::select! {
                    frame = socket.recv() => Some(frame),
                    delivery = rx.recv() => {
                        let reply = match delivery {
                            Some(Delivery::Message(m)) => format!("{{\"type\":\"message\",{}", &m.json()[1..]),
                            Some(Delivery::Heartbeat) => continue,
                            // One subscription stopped; the socket and its others go on.
                            Some(Delivery::Failed { code, message }) => error_frame(None, code, &message),
                            Some(Delivery::SlowConsumer) => {
                                send_all(&mut socket, vec![error_frame(None, "slow_consumer", "the subscriber fell too far behind; resubscribe with since_id")]).await;
                                break;
                            }
                            Some(Delivery::Closed) | None => {
                                send_all(&mut socket, vec![shutting_down()]).await;
                                break;
                            }
                        };
                        if !send_all(&mut socket, vec![reply]).await {
                            break;
                        }
                        None
                    }
                    () = shutdown.cancelled() => {
                        send_all(&mut socket, vec![shutting_down()]).await;
                        break;
                    }
                    _ = ping.tick() => {
                        if last_heard.elapsed() >= period * 3 {
                            close = Some(CloseFrame {
                                code: close_code::AWAY,
                                reason: "no answer to pings".into(),
                            });
                            break;
                        }
                        // Bounded like `send_all`: a client that reads nothing cannot hold the
                        // session in a send that never completes.
                        let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(Frame::Ping(Default::default()))).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            break;
                        }
                        None
                    }
                    reason = &mut invalidated => {
                        send_all(&mut socket, vec![error_frame(None, reason.ended_code(), reason.message())]).await;
                        close = Some(CloseFrame {
                            code: close_code::POLICY,
                            reason: reason.ended_code().into(),
                        });
                        break;
                    }
                },
            };
            let Some(frame) = frame else { continue };
            last_heard = tokio::time::Instant::now();
            let replies = match frame {
                Some(Ok(Frame::Text(text))) => {
                    // Frames the client already sent behind this one are taken now, so a
                    // pipelining publisher's messages share one savepoint and one commit.
                    let mut texts = vec![text];
                    let mut bytes = texts[0].len();
                    while texts.len() < MAX_PIPELINED && bytes < MAX_PIPELINED_BYTES {
                        match socket.recv().now_or_never() {
                            None => break, // nothing is waiting
                            Some(Some(Ok(Frame::Text(text)))) => {
                                bytes += text.len();
                                texts.push(text);
                            }
                            // Close, ping, binary or an error: handled after this batch.
                            Some(other) => {
                                carried = Some(other);
                                break;
                            }
                        }
                    }
                    self.handle_all(&texts, &tx).await
                }
                Some(Ok(Frame::Binary(_))) => {
                    vec![error_frame(
                        None,
                        "invalid_frame",
                        "frames must be JSON text",
                    )]
                }
                Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
                Some(Ok(Frame::Close(_)) | Err(_)) | None => break,
            };
            if !send_all(&mut socket, replies).await {
                break;
            }
        }
        for (_, task) in self.subs {
            task.abort();
        }
        // If the client's Close was read ahead of a burst's answers, those answers could not be
        // sent; this completes the close handshake that was queued when it was read.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            use futures_util::SinkExt as _;
            let _ = socket.flush().await;
            let _ = socket.send(Frame::Close(close)).await;
        })
        .await;
    }

    /// Answers `texts` in order. Consecutive publish frames are stored with one write.
    async fn handle_all(
        &mut self,
        texts: &[axum::extract::ws::Utf8Bytes],
        tx: &mpsc::Sender<Delivery>,
    ) -> Vec<String> {
        let mut replies = Vec::with_capacity(texts.len());
        let mut batch: Vec<(Option<Json>, NewMessage)> = Vec::new();
        for text in texts {
            let frame = match serde_json::from_str(text.as_str()) {
                Ok(Json::Object(map)) => map,
                _ => {
                    self.publish_batch(&mut batch, &mut replies).await;
                    replies.push(error_frame(
                        None,
                        "invalid_frame",
                        "each frame must be a JSON object",
                    ));
                    continue;
                }
            };
            let reference = frame.get("ref").cloned();
            if frame.get("type").and_then(Json::as_str) == Some("publish") {
                let checked = parse_message_map(&frame, &["type", "ref"]).and_then(|m| {
                    self.auth.resource(Action::PubPublish, &m.topic)?;
                    Ok(m)
                });
                match checked {
                    Ok(message) => batch.push((reference, message)),
                    Err(e) => {
                        // Answers stay in frame order.
                        self.publish_batch(&mut batch, &mut replies).await;
                        replies.push(error_frame(reference.as_ref(), e.code, &e.message));
                    }
                }
                continue;
            }
            self.publish_batch(&mut batch, &mut replies).await;
            let frame = Json::Object(frame);
            let result = match frame.get("type").and_then(Json::as_str) {
                Some("ping") => Ok(json!({"type": "pong"}).to_string()),
                Some("connection") => Ok(
                    json!({"type": "connection", "connection_id": self.connection_id}).to_string(),
                ),
                Some("subscribe") => self.subscribe(&frame, tx).await,
                Some("unsubscribe") => self.unsubscribe(&frame),
                _ => Err(ApiError::bad_request(
                    "invalid_frame",
                    "type must be subscribe, unsubscribe, publish, ping or connection",
                )),
            };
            replies.push(
                result.unwrap_or_else(|e| error_frame(reference.as_ref(), e.code, &e.message)),
            );
        }
        self.publish_batch(&mut batch, &mut replies).await;
        replies
    }

    /// Stores the pending publishes in one write and appends their acks (or, if the write
    /// failed, an error for each).
    async fn publish_batch(
        &self,
        batch: &mut Vec<(Option<Json>, NewMessage)>,
        replies: &mut Vec<String>,
    ) {
        if batch.is_empty() {
            return;
        }
        let (refs, messages): (Vec<Option<Json>>, Vec<NewMessage>) =
            std::mem::take(batch).into_iter().unzip();
        match publish_messages(&self.state, &self.auth, messages, Vec::new()).await {
            Ok(published) => {
                for (reference, one) in refs.iter().zip(published) {
                    // Written directly: one ack per message is the hot path of a pipelining
                    // publisher.
                    let reference = reference
                        .as_ref()
                        .map_or_else(|| "null".to_owned(), Json::to_string);
                    replies.push(format!(
                        "{{\"type\":\"ack\",\"ref\":{reference},\"id\":{},\"duplicate\":{}}}",
                        one.id, one.duplicate
                    ));
                }
            }
            Err(e) => {
                for reference in &refs {
                    replies.push(error_frame(reference.as_ref(), e.code, &e.message));
                }
            }
        }
    }

    async fn subscribe(
        &mut self,
        frame: &Json,
        tx: &mpsc::Sender<Delivery>,
    ) -> Result<String, ApiError> {
        let topics = string_list(frame.get("topics"))?;
        check_filters(&self.auth, &topics)?;
        let since_id = frame
            .get("since_id")
            .map(|v| {
                v.as_i64().ok_or_else(|| {
                    ApiError::bad_request("invalid_frame", "since_id must be an integer")
                })
            })
            .transpose()?;
        let tail = frame
            .get("tail")
            .map(|v| {
                v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    ApiError::bad_request("invalid_frame", "tail must be an integer")
                })
            })
            .transpose()?;
        let start = start_position(since_id, tail, None)?;
        let doc = self.state.registry.get(self.auth.db()?).await?;
        let filters: Filters = Arc::new(Mutex::new(topics.clone()));
        let subscription = Subscription {
            doc: (*doc).clone(),
            auth: self.auth.clone(),
            filters: filters.clone(),
            start,
            heartbeat: None,
            metrics: self.state.metrics.clone(),
            shutdown: self.state.shutdown.clone(),
            wait_when_full: false,
        };
        let tx = tx.clone();
        let task = tokio::spawn(async move {
            let _doc = doc;
            let failed = tx.clone();
            if let Err(e) = subscription.run(tx).await {
                super::subscription_failed(e, &failed);
            }
        });
        self.subs.push((filters, task));
        Ok(json!({"type": "subscribed", "topics": topics}).to_string())
    }

    fn unsubscribe(&mut self, frame: &Json) -> Result<String, ApiError> {
        let topics = string_list(frame.get("topics"))?;
        self.subs.retain(|(filters, task)| {
            let mut f = filters.lock().unwrap_or_else(|p| p.into_inner());
            f.retain(|t| !topics.contains(t));
            if f.is_empty() {
                task.abort();
                false
            } else {
                true
            }
        });
        Ok(json!({"type": "unsubscribed", "topics": topics}).to_string())
    }
}

/// Sends `replies` in order with one flush, bounded in time; `false` if the client is gone or
/// stuck.
async fn send_all(socket: &mut WebSocket, replies: Vec<String>) -> bool {
    use futures_util::SinkExt as _;
    let send = async {
        for reply in replies {
            socket.feed(Frame::Text(reply.into())).await?;
        }
        socket.flush().await
    };
    matches!(tokio::time::timeout(SEND_TIMEOUT, send).await, Ok(Ok(())))
}
