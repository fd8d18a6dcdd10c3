//! `GET /events/ws`: subscribe, unsubscribe and publish over one WebSocket, one JSON object per
//! text frame. Scope checks happen per frame (the route admits `pub.subscribe` or `pub.publish`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message as Frame, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::hub::{self, Delivery, Filters, Subscription};
use super::{SubscriberCount, check_filters, parse_message_map, publish_messages, start_position};
use crate::auth::Authorized;
use crate::error::ApiError;
use crate::server::AppState;

/// Largest client frame.
const MAX_FRAME: usize = 2 * 1024 * 1024;

pub async fn upgrade(
    State(state): State<AppState>,
    auth: Authorized,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // Open (or create) the document now, so an overloaded server answers with a plain error.
    let doc = state.registry.get(auth.db()?).await?;
    Ok(ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| async move {
            let _doc = doc;
            let _count = SubscriberCount::new(state.metrics.clone());
            Session {
                state,
                auth,
                subs: Vec::new(),
            }
            .run(socket)
            .await;
        }))
}

struct Session {
    state: AppState,
    auth: Authorized,
    subs: Vec<(Filters, JoinHandle<()>)>,
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

impl Session {
    async fn run(mut self, mut socket: WebSocket) {
        let (tx, mut rx) = mpsc::channel::<Delivery>(hub::QUEUE);
        let shutdown = self.state.shutdown.clone();
        loop {
            let reply: Option<String> = tokio::select! {
                frame = socket.recv() => match frame {
                    Some(Ok(Frame::Text(text))) => Some(self.handle(text.as_str(), &tx).await),
                    Some(Ok(Frame::Binary(_))) => Some(error_frame(None, "invalid_frame", "frames must be JSON text")),
                    Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => None,
                    Some(Ok(Frame::Close(_))) | Some(Err(_)) | None => break,
                },
                delivery = rx.recv() => match delivery {
                    Some(Delivery::Message(m)) => Some(format!("{{\"type\":\"message\",{}", &m.json()[1..])),
                    Some(Delivery::Heartbeat) => None,
                    Some(Delivery::SlowConsumer) => {
                        let _ = socket.send(Frame::Text(error_frame(None, "slow_consumer", "the subscriber fell too far behind; resubscribe with since_id").into())).await;
                        break;
                    }
                    Some(Delivery::Closed) | None => {
                        let _ = socket.send(Frame::Text(error_frame(None, "shutting_down", "the server is shutting down").into())).await;
                        break;
                    }
                },
                () = shutdown.cancelled() => {
                    let _ = socket.send(Frame::Text(error_frame(None, "shutting_down", "the server is shutting down").into())).await;
                    break;
                }
            };
            if let Some(reply) = reply {
                let send = tokio::time::timeout(
                    Duration::from_secs(10),
                    socket.send(Frame::Text(reply.into())),
                );
                if !matches!(send.await, Ok(Ok(()))) {
                    break;
                }
            }
        }
        for (_, task) in self.subs {
            task.abort();
        }
        let _ = socket.send(Frame::Close(None)).await;
    }

    async fn handle(&mut self, text: &str, tx: &mpsc::Sender<Delivery>) -> String {
        let frame: Json = match serde_json::from_str(text) {
            Ok(Json::Object(map)) => Json::Object(map),
            _ => return error_frame(None, "invalid_frame", "each frame must be a JSON object"),
        };
        let reference = frame.get("ref").cloned();
        let result = match frame.get("type").and_then(Json::as_str) {
            Some("ping") => Ok(json!({"type": "pong"}).to_string()),
            Some("subscribe") => self.subscribe(&frame, tx).await,
            Some("unsubscribe") => self.unsubscribe(&frame),
            Some("publish") => self.publish(&frame).await,
            _ => Err(ApiError::bad_request(
                "invalid_frame",
                "type must be subscribe, unsubscribe, publish or ping",
            )),
        };
        result.unwrap_or_else(|e| error_frame(reference.as_ref(), e.code, &e.message))
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
        };
        let tx = tx.clone();
        let task = tokio::spawn(async move {
            let _doc = doc;
            if let Err(e) = subscription.run(tx).await {
                super::log_subscription_error(&e);
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

    async fn publish(&mut self, frame: &Json) -> Result<String, ApiError> {
        let Json::Object(map) = frame else {
            return Err(ApiError::bad_request("invalid_frame", "expected an object"));
        };
        let message = parse_message_map(map, &["type", "ref"])?;
        let mut published =
            publish_messages(&self.state, &self.auth, vec![message], Vec::new()).await?;
        let one = published
            .pop()
            .ok_or_else(|| ApiError::internal("publish returned nothing"))?;
        Ok(json!({"type": "ack", "ref": frame.get("ref"), "id": one.id, "duplicate": one.duplicate}).to_string())
    }
}
