//! Streams: the non-durable byte relay of the legacy Patchwork service, on its legacy routes
//! (`/public/...`, `/p/...`, `/u/{user}/...`) and canonically under
//! `/api/v1/db/{db_id}/streams/...`. Never opens a document: channels live in memory
//! ([`relay`]). Behaviour follows `shared/spec/legacy-streams.md` with its listed fixes: true
//! streaming, a clean `504` instead of silent loss, `Patch-Method` for responders, `Patch-Status`
//! keeping headers, no `301` for `/./`, capped waiting parties.

pub mod headers;
pub mod relay;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::auth::{Access, Action, Authorized, ResourceFrom, Route};
use crate::error::ApiError;
use crate::state::AppState;
use relay::{ChannelKey, Delivery, Family, Relay, RelayError, Reply, RequestOffer};

async fn gone() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "gone",
        "legacy hooks (/h, /r) are not carried over: receive webhooks with the webhook inbox \
         (/api/v1/db/{db_id}/webhooks/...) and use /u/{user}/... stream routes with a token",
    )
}

/// `/h`, `/h/...`, `/r`, `/r/...`: anonymous, rate limited per client IP, always `410`.
pub fn legacy_gone_routes() -> Vec<Route> {
    ["/h", "/h/{*rest}", "/r", "/r/{*rest}"]
        .into_iter()
        .map(|path| Route::any(path, Access::Anonymous, any(gone)))
        .collect()
}

/// The middleware checks `stream.read` or `stream.write` on the document; the handler checks
/// the action for the role against the channel's resource ([`Mode::resource`]), which is the
/// same string on every route family (a path parameter is not: `/u/{user}/queue/x` and
/// `/streams/queue/x/next` name one channel with different `{*rest}`s).
const STREAM: Access = Access::Db {
    actions: &[Action::StreamRead, Action::StreamWrite],
    resource: ResourceFrom::Handler,
};

/// Relayed bodies are whatever a sender chose, served from the dashboard's origin: a relayed
/// HTML page must not run as a page of this site (it could read a signed-in person's CSRF token
/// and act for them), nor set or clear this site's cookies. So every relay response is
/// sandboxed (`Content-Security-Policy: sandbox`: an opaque origin, no script), never sniffed,
/// and loses any `Set-Cookie` / `Clear-Site-Data` a sender forwarded.
async fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.remove(header::SET_COOKIE);
    h.remove("clear-site-data");
    h.append(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

pub fn routes() -> Vec<Route> {
    let relay = |handler| {
        axum::routing::MethodRouter::layer(handler, axum::middleware::map_response(harden))
    };
    let mut routes = legacy_gone_routes();
    for path in ["/public/", "/public/{*rest}"] {
        routes.push(Route::any(path, Access::Anonymous, relay(any(public))));
    }
    for path in ["/p/", "/p/{*rest}"] {
        routes.push(Route::any(path, Access::Anonymous, relay(any(p))));
    }
    for path in ["/u/{db_id}/", "/u/{db_id}/{*rest}"] {
        routes.push(Route::any(path, STREAM, relay(any(user))).with_query_token());
    }
    for kind in ["queue", "pubsub", "req", "res"] {
        let path: &'static str = match kind {
            "queue" => "/api/v1/db/{db_id}/streams/queue/{*rest}",
            "pubsub" => "/api/v1/db/{db_id}/streams/pubsub/{*rest}",
            "req" => "/api/v1/db/{db_id}/streams/req/{*rest}",
            _ => "/api/v1/db/{db_id}/streams/res/{*rest}",
        };
        routes.push(Route::any(path, STREAM, relay(any(canonical))).with_query_token());
    }
    routes
}

/// Stream settings.
#[derive(Clone, Copy, Debug)]
pub struct StreamConfig {
    pub public_enabled: bool,
    pub wait_timeout: Duration,
    pub switch_timeout: Duration,
}

/// Everything the relay handlers share.
pub struct Streams {
    pub relay: Arc<Relay>,
    pub config: StreamConfig,
}

impl Streams {
    pub fn new(config: &crate::Config) -> Self {
        Self {
            relay: Relay::new(relay::Caps {
                per_channel: config.stream_max_waiters_per_channel,
                total: config.stream_max_waiters_total,
            }),
            config: StreamConfig {
                public_enabled: config.streams_public,
                wait_timeout: Duration::from_secs(config.stream_wait_timeout_secs),
                switch_timeout: Duration::from_secs(config.stream_switch_timeout_secs),
            },
        }
    }
}

/// Which side of which exchange a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Queue(String),
    Pubsub(String),
    Req(String),
    Res(String),
}

impl Mode {
    /// The resource a token's `resource_prefix` is checked against: the channel's path with
    /// its mode prefix, as the legacy routes spell it after `/u/{user}/` — `queue/{t}`,
    /// `pubsub/{t}`, a plain legacy channel's name, `req/{id}` for requesters and `res/{id}`
    /// for responders. Derived from the channel (after path cleaning and, canonically, the
    /// `/next` suffix), so every route family that reaches a channel checks the same string.
    fn resource(&self) -> String {
        match self {
            Mode::Queue(name) | Mode::Pubsub(name) => name.clone(),
            Mode::Req(id) => format!("req/{id}"),
            Mode::Res(id) => format!("res/{id}"),
        }
    }
}

/// Errors in the legacy routes' own style (plain text) or the contract's JSON.
fn fail(legacy: bool, status: StatusCode, code: &'static str, text: &str) -> Response {
    if legacy {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text.to_owned(),
        )
            .into_response()
    } else {
        ApiError::new(status, code, text).into_response()
    }
}

fn relay_error(ctx: &Ctx, e: RelayError) -> Response {
    ctx.state.metrics.stream_refused.inc();
    ApiError::overloaded(e.to_string()).into_response()
}

fn timeout_error(what: &str) -> Response {
    ApiError::timeout(format!(
        "{what}; nothing was consumed on your behalf, retry"
    ))
    .into_response()
}

struct Ctx {
    state: AppState,
    auth: Option<Authorized>,
    namespace: String,
    family: Family,
    legacy: bool,
}

async fn public(State(state): State<AppState>, auth: Authorized, req: Request) -> Response {
    anonymous(state, auth, Family::Main, req, "/public/").await
}

async fn p(State(state): State<AppState>, auth: Authorized, req: Request) -> Response {
    anonymous(state, auth, Family::P, req, "/p/").await
}

async fn anonymous(
    state: AppState,
    _auth: Authorized,
    family: Family,
    req: Request,
    prefix: &str,
) -> Response {
    if !state.streams.config.public_enabled {
        return ApiError::unauthorized(
            "anonymous stream routes are switched off; use /u/{user}/... with a token",
        )
        .into_response();
    }
    // Proof of work, when `pow_streams_difficulty` asks for it (428 with a challenge).
    let difficulty = crate::pow::difficulty(&state, crate::pow::Group::Streams);
    if let Err(e) = state.pow.require(req.headers(), difficulty) {
        return e.into_response();
    }
    // `/public/x` lives in the document's main channel space; `/p/x` keeps its own channels.
    let rest = req
        .uri()
        .path()
        .strip_prefix(prefix)
        .unwrap_or("")
        .to_owned();
    let ctx = Ctx {
        state,
        auth: None,
        namespace: "public".into(),
        family,
        legacy: true,
    };
    legacy_dispatch(ctx, &rest, req).await
}

async fn user(State(state): State<AppState>, auth: Authorized, req: Request) -> Response {
    let Ok(db) = auth.db().cloned() else {
        return ApiError::internal("stream route without db_id").into_response();
    };
    let prefix = format!("/u/{db}/");
    let rest = req
        .uri()
        .path()
        .strip_prefix(&prefix)
        .unwrap_or("")
        .to_owned();
    let ctx = Ctx {
        state,
        auth: Some(auth),
        namespace: db.to_string(),
        family: Family::Main,
        legacy: true,
    };
    legacy_dispatch(ctx, &rest, req).await
}

/// Mode selection of the legacy routes (§1.4).
async fn legacy_dispatch(ctx: Ctx, rest: &str, req: Request) -> Response {
    let rest = headers::clean(rest);
    let query = query_pairs(&req);
    let has_pubsub = query.contains_key("pubsub");
    let mode = if let Some(id) = rest.strip_prefix("req/").or((rest == "req").then_some("")) {
        Mode::Req(id.to_owned())
    } else if let Some(id) = rest.strip_prefix("res/").or((rest == "res").then_some("")) {
        Mode::Res(id.to_owned())
    } else if rest.starts_with("pubsub/") || has_pubsub {
        Mode::Pubsub(rest.clone())
    } else if rest.starts_with("_/") && ctx.namespace != "public" {
        return ApiError::not_found("no such stream endpoint").into_response();
    } else {
        Mode::Queue(rest.clone())
    };
    run(ctx, mode, query, req).await
}

async fn canonical(State(state): State<AppState>, auth: Authorized, req: Request) -> Response {
    let Ok(db) = auth.db().cloned() else {
        return ApiError::internal("stream route without db_id").into_response();
    };
    let base = format!("/api/v1/db/{db}/streams/");
    let tail = req
        .uri()
        .path()
        .strip_prefix(&base)
        .unwrap_or("")
        .to_owned();
    let (kind, rest) = tail.split_once('/').unwrap_or((tail.as_str(), ""));
    let rest = headers::clean(rest);
    let query = query_pairs(&req);
    let mode = match kind {
        "queue" => {
            // `GET .../queue/{topic}/next` receives from `queue/{topic}`.
            let topic = if req.method() == Method::GET {
                rest.strip_suffix("/next").unwrap_or(&rest).to_owned()
            } else {
                rest.clone()
            };
            if query.contains_key("pubsub") {
                Mode::Pubsub(format!("queue/{topic}"))
            } else {
                Mode::Queue(format!("queue/{topic}"))
            }
        }
        "pubsub" => Mode::Pubsub(format!("pubsub/{rest}")),
        "req" => Mode::Req(rest.clone()),
        _ => Mode::Res(rest.clone()),
    };
    let ctx = Ctx {
        state,
        auth: Some(auth),
        namespace: db.to_string(),
        family: Family::Main,
        legacy: false,
    };
    run(ctx, mode, query, req).await
}

fn query_pairs(req: &Request) -> HashMap<String, String> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .map(|q| q.0.into_iter().collect())
        .unwrap_or_default()
}

impl Ctx {
    fn key(&self, name: String) -> ChannelKey {
        ChannelKey {
            namespace: self.namespace.clone(),
            family: self.family,
            name,
        }
    }

    /// Token routes: the refusal if the caller lacks `action` for this channel.
    fn refused(&self, action: Action, resource: &str) -> Option<Response> {
        let auth = self.auth.as_ref()?;
        auth.resource(action, resource)
            .err()
            .map(IntoResponse::into_response)
    }

    /// Resolves when the party's token stops being valid (never for anonymous parties).
    fn invalidated(&self) -> crate::auth::Invalidated {
        match &self.auth {
            Some(auth) => auth.invalidated(&self.state),
            None => Box::pin(std::future::pending()),
        }
    }

    /// Waits for `rx` until `deadline`, ending early if the party's token stops being valid.
    async fn wait<T>(&self, deadline: tokio::time::Instant, rx: oneshot::Receiver<T>) -> Waited<T> {
        tokio::select! {
            // A hand-over that already happened wins over a revocation noticed at the same time.
            biased;
            got = tokio::time::timeout_at(deadline, rx) => match got {
                Ok(Ok(value)) => Waited::Got(value),
                _ => Waited::TimedOut,
            },
            reason = self.invalidated() => Waited::Invalid(reason),
        }
    }

    fn note_waiting(&self) {
        self.state
            .metrics
            .stream_waiting
            .set(self.state.streams.relay.waiting() as i64);
    }
}

async fn run(ctx: Ctx, mode: Mode, query: HashMap<String, String>, req: Request) -> Response {
    let legacy = ctx.legacy;
    let body_param = query.get("body").filter(|b| !b.is_empty()).cloned();
    let resource = mode.resource();
    let result = match mode {
        Mode::Queue(name) | Mode::Pubsub(name)
            if req.method() == Method::GET && body_param.is_none() =>
        {
            if let Some(r) = ctx.refused(Action::StreamRead, &resource) {
                return r;
            }
            consume(&ctx, name, req).await
        }
        Mode::Queue(name) if matches!(*req.method(), Method::GET | Method::POST | Method::PUT) => {
            if let Some(r) = ctx.refused(Action::StreamWrite, &resource) {
                return r;
            }
            produce(&ctx, name, body_param, req).await
        }
        Mode::Pubsub(name) if matches!(*req.method(), Method::GET | Method::POST | Method::PUT) => {
            if let Some(r) = ctx.refused(Action::StreamWrite, &resource) {
                return r;
            }
            publish(&ctx, name, body_param, req).await
        }
        Mode::Queue(_) | Mode::Pubsub(_) => {
            return fail(
                legacy,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            );
        }
        Mode::Req(id) | Mode::Res(id) if id.is_empty() => {
            return fail(
                legacy,
                StatusCode::BAD_REQUEST,
                "channel_id_required",
                "Channel ID required",
            );
        }
        Mode::Req(id) => {
            if let Some(r) = ctx.refused(Action::StreamWrite, &resource) {
                return r;
            }
            request(&ctx, id, req).await
        }
        Mode::Res(id) => {
            if let Some(r) = ctx.refused(Action::StreamRead, &resource) {
                return r;
            }
            let switch = query.get("switch").is_some_and(|v| v == "true" || v == "1");
            match (req.method().clone(), switch) {
                (Method::POST | Method::PUT, true) => switch_responder(&ctx, id, req).await,
                (Method::POST | Method::PUT, false) => blind_responder(&ctx, id, req).await,
                (Method::GET, false) => observe(&ctx, id).await,
                _ => {
                    return fail(
                        legacy,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        "Method not allowed",
                    );
                }
            }
        }
    };
    ctx.note_waiting();
    result
}

/// A body that tells the sender whether the receiver read it to the end. With a known length
/// the last byte counts as the end (hyper stops polling a body once `Content-Length` bytes are
/// out); otherwise the end of the stream does.
struct Tracked<S> {
    inner: S,
    done: Option<oneshot::Sender<bool>>,
    remaining: Option<u64>,
}

impl<S> Tracked<S> {
    fn new(inner: S, done: oneshot::Sender<bool>, len: Option<u64>) -> Self {
        Self {
            inner,
            done: Some(done),
            remaining: len,
        }
    }

    fn finish(&mut self, ok: bool) {
        if let Some(done) = self.done.take() {
            let _ = done.send(ok);
        }
    }
}

impl<S, E> Stream for Tracked<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.remaining == Some(0) {
            self.finish(true);
            return std::task::Poll::Ready(None);
        }
        let item = std::task::ready!(self.inner.poll_next_unpin(cx));
        match &item {
            None => self.finish(true),
            Some(Err(_)) => self.finish(false),
            Some(Ok(chunk)) => {
                if let Some(left) = self.remaining.as_mut() {
                    *left = left.saturating_sub(chunk.len() as u64);
                    if *left == 0 {
                        self.finish(true);
                    }
                }
            }
        }
        std::task::Poll::Ready(item)
    }
}

/// The message a producer offers: headers for the consumer and its body.
fn message(req: Request, body_param: Option<String>) -> (HeaderMap, Body, oneshot::Receiver<bool>) {
    let (parts, body) = req.into_parts();
    let mut headers = headers::forwarded(&parts.headers, false);
    if let Ok(v) = HeaderValue::from_str(&patch_uri(&parts.uri)) {
        headers.insert("patch-uri", v);
    }
    let (body, len) = match body_param {
        Some(text) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            let len = text.len() as u64;
            (Body::from(text), Some(len))
        }
        // Forward the length only when it is the true length of what is sent (hyper enforces
        // the request's Content-Length while reading it).
        None => (body, content_length(&parts.headers)),
    };
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let (done_tx, done_rx) = oneshot::channel();
    let tracked = Tracked::new(body.into_data_stream(), done_tx, len);
    (headers, Body::from_stream(tracked), done_rx)
}

/// The path and query as sent, minus credential parameters (`token` / `access_token` in any
/// percent-encoded spelling, [`crate::auth::is_credential_key`]): a `/u/` producer's credential
/// must never reach the consumer through `Patch-Uri`.
fn patch_uri(uri: &axum::http::Uri) -> String {
    let path = uri.path();
    let kept = uri
        .query()
        .map(crate::auth::strip_query_credentials)
        .unwrap_or_default();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{kept}")
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn respond(d: Delivery) -> Response {
    let mut r = Response::new(d.body);
    *r.status_mut() = d.status;
    *r.headers_mut() = d.headers;
    r
}

/// How a party's wait ended.
enum Waited<T> {
    Got(T),
    /// The wait timeout passed (or the other side went away).
    TimedOut,
    /// The party's token was revoked or expired meanwhile: `401`, nothing consumed.
    Invalid(crate::auth::AuthFailure),
}

fn deadline(after: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + after
}

async fn consume(ctx: &Ctx, name: String, _req: Request) -> Response {
    let relay = &ctx.state.streams.relay;
    let (rx, guard) = match relay.consume(&ctx.key(name), false) {
        Ok(x) => x,
        Err(e) => return relay_error(ctx, e),
    };
    ctx.note_waiting();
    let delivery = ctx
        .wait(deadline(ctx.state.streams.config.wait_timeout), rx)
        .await;
    drop(guard);
    match delivery {
        Waited::Got(d) => respond(d),
        Waited::TimedOut => {
            ctx.state.metrics.stream_timeouts.inc();
            timeout_error("no producer arrived within the wait timeout")
        }
        Waited::Invalid(reason) => reason.ended_error().into_response(),
    }
}

/// After handing over a body: the producer's answer once the consumer has read it all.
async fn finished(done: oneshot::Receiver<bool>) -> Response {
    match done.await {
        Ok(true) => StatusCode::OK.into_response(),
        _ => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "peer_disconnected",
            "the receiver went away before reading the whole message",
        )
        .into_response(),
    }
}

async fn produce(ctx: &Ctx, name: String, body_param: Option<String>, req: Request) -> Response {
    let relay = &ctx.state.streams.relay;
    let key = ctx.key(name);
    let status_from_producer = headers::patch_status(req.headers());
    let (headers, body, done) = message(req, body_param);
    let mut delivery = Delivery {
        status: StatusCode::OK,
        headers,
        body,
    };
    let deadline = deadline(ctx.state.streams.config.wait_timeout);
    loop {
        let slot = match relay.produce(&key) {
            Ok(Ok(slot)) => slot,
            Ok(Err((rx, guard))) => {
                ctx.note_waiting();
                let slot = ctx.wait(deadline, rx).await;
                drop(guard);
                match slot {
                    Waited::Got(slot) => slot,
                    Waited::TimedOut => {
                        ctx.state.metrics.stream_timeouts.inc();
                        return timeout_error("no consumer arrived within the wait timeout");
                    }
                    Waited::Invalid(reason) => return reason.ended_error().into_response(),
                }
            }
            Err(e) => return relay_error(ctx, e),
        };
        // A double-clutch requester honours the answer's Patch-Status; queue consumers do not.
        delivery.status = if slot.honour_status {
            status_from_producer
        } else {
            StatusCode::OK
        };
        match slot.tx.send(delivery) {
            Ok(()) => return finished(done).await,
            // That consumer went away between matching and hand-over: next one.
            Err(back) => delivery = back,
        }
    }
}

async fn publish(ctx: &Ctx, name: String, body_param: Option<String>, req: Request) -> Response {
    let relay = &ctx.state.streams.relay;
    let slots = relay.take_all_consumers(&ctx.key(name));
    if slots.is_empty() {
        // Nobody waiting: delivered to nobody, at once.
        return StatusCode::OK.into_response();
    }
    let (headers, body, _done) = message(req, body_param);
    let mut senders = Vec::with_capacity(slots.len());
    for slot in slots {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            );
        let d = Delivery {
            status: StatusCode::OK,
            headers: headers.clone(),
            body: Body::from_stream(stream),
        };
        if slot.tx.send(d).is_ok() {
            senders.push(tx);
        }
    }
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                for tx in &senders {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                }
                return ApiError::bad_request(
                    "upload_failed",
                    "the message body could not be read",
                )
                .into_response();
            }
        };
        // Every subscriber gets every chunk; a slow one slows the publish, a gone one is dropped.
        let mut alive = Vec::with_capacity(senders.len());
        for tx in senders {
            if tx.send(Ok(chunk.clone())).await.is_ok() {
                alive.push(tx);
            }
        }
        senders = alive;
    }
    drop(senders);
    StatusCode::OK.into_response()
}

fn rr_key(ctx: &Ctx, id: &str) -> ChannelKey {
    ctx.key(format!("\u{0}rr/{id}"))
}

async fn request(ctx: &Ctx, id: String, req: Request) -> Response {
    let relay = &ctx.state.streams.relay;
    let key = rr_key(ctx, &id);
    let (parts, body) = req.into_parts();
    let uri = patch_uri(&parts.uri);
    let (reply_tx, reply_rx) = oneshot::channel();
    let guard = match relay.request(&key, |waiter_id| RequestOffer {
        id: waiter_id,
        method: parts.method.to_string(),
        uri,
        headers: parts.headers.clone(),
        body,
        reply: reply_tx,
    }) {
        Ok(g) => g,
        Err(e) => return relay_error(ctx, e),
    };
    ctx.note_waiting();
    let reply = ctx
        .wait(deadline(ctx.state.streams.config.wait_timeout), reply_rx)
        .await;
    drop(guard);
    match reply {
        Waited::Got(Reply::Response(d)) => respond(d),
        Waited::Got(Reply::Switch(answer)) => {
            // Double clutch: wait on the answer channel like a consumer, honouring Patch-Status.
            let (rx, guard) = match relay.consume(&answer, true) {
                Ok(x) => x,
                Err(e) => return relay_error(ctx, e),
            };
            let delivery = ctx
                .wait(deadline(ctx.state.streams.config.switch_timeout), rx)
                .await;
            drop(guard);
            match delivery {
                Waited::Got(d) => respond(d),
                Waited::Invalid(reason) => reason.ended_error().into_response(),
                Waited::TimedOut => {
                    ctx.state.metrics.stream_timeouts.inc();
                    ApiError::timeout(format!(
                        "Double clutch timeout: no answer was published on {:?} in time",
                        answer.name
                    ))
                    .into_response()
                }
            }
        }
        Waited::TimedOut => {
            ctx.state.metrics.stream_timeouts.inc();
            timeout_error("no responder answered within the wait timeout")
        }
        Waited::Invalid(reason) => reason.ended_error().into_response(),
    }
}

/// Waits for the next request on `id`.
async fn next_request(ctx: &Ctx, key: &ChannelKey) -> Result<RequestOffer, Response> {
    match ctx.state.streams.relay.respond(key) {
        Ok(Ok(offer)) => Ok(offer),
        Ok(Err((rx, guard))) => {
            ctx.note_waiting();
            let offer = ctx
                .wait(deadline(ctx.state.streams.config.wait_timeout), rx)
                .await;
            drop(guard);
            match offer {
                Waited::Got(offer) => Ok(offer),
                Waited::TimedOut => {
                    ctx.state.metrics.stream_timeouts.inc();
                    Err(timeout_error(
                        "no requester arrived within the wait timeout",
                    ))
                }
                Waited::Invalid(reason) => Err(reason.ended_error().into_response()),
            }
        }
        Err(e) => Err(relay_error(ctx, e)),
    }
}

/// The request as a response to a responder that sees it.
fn request_as_response(
    offer: RequestOffer,
    keep_prefix: bool,
) -> (Response, oneshot::Sender<Reply>, u64) {
    let mut headers = headers::forwarded(&offer.headers, keep_prefix);
    if let Ok(v) = HeaderValue::from_str(&offer.uri) {
        headers.insert("patch-uri", v);
    }
    if let Ok(v) = HeaderValue::from_str(&offer.method) {
        headers.insert("patch-method", v);
    }
    if let Some(len) = offer.headers.get(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, len.clone());
    }
    if keep_prefix {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    let response = respond(Delivery {
        status: StatusCode::OK,
        headers,
        body: offer.body,
    });
    (response, offer.reply, offer.id)
}

/// `GET /res/{id}`: observe the next request (the requester then waits for a response).
async fn observe(ctx: &Ctx, id: String) -> Response {
    let key = rr_key(ctx, &id);
    let offer = match next_request(ctx, &key).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let (response, reply, waiter_id) = request_as_response(offer, false);
    ctx.state
        .streams
        .relay
        .await_response(&key, waiter_id, reply);
    response
}

/// `POST|PUT /res/{id}`: answer the longest-waiting requester blindly.
async fn blind_responder(ctx: &Ctx, id: String, req: Request) -> Response {
    let relay = &ctx.state.streams.relay;
    let key = rr_key(ctx, &id);
    let status = headers::patch_status(req.headers());
    let (parts, body) = req.into_parts();
    let offer = match next_request(ctx, &key).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    // The request itself is discarded; its requester now waits for a response.
    relay.await_response(&key, offer.id, offer.reply);
    drop(offer.body);
    let Some(requester) = relay.take_awaiting(&key) else {
        return ApiError::new(
            StatusCode::BAD_GATEWAY,
            "peer_disconnected",
            "the requester went away",
        )
        .into_response();
    };
    let mut headers = HeaderMap::new();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("text/plain"));
    headers.insert(header::CONTENT_TYPE, content_type);
    for (name, value) in headers::forwarded(&parts.headers, false).iter() {
        // Only the responder's Patch-H-* headers (and its Content-Type) reach the requester.
        let patch = format!("patch-h-{}", name.as_str());
        if parts.headers.contains_key(patch.as_str()) {
            headers.insert(name.clone(), value.clone());
        }
    }
    let len = content_length(&parts.headers);
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let (done_tx, done_rx) = oneshot::channel();
    let tracked = Tracked::new(body.into_data_stream(), done_tx, len);
    let d = Delivery {
        status,
        headers,
        body: Body::from_stream(tracked),
    };
    if requester.send(Reply::Response(d)).is_err() {
        return ApiError::new(
            StatusCode::BAD_GATEWAY,
            "peer_disconnected",
            "the requester went away",
        )
        .into_response();
    }
    finished(done_rx).await
}

/// `POST|PUT /res/{id}?switch=true`: take the next request and tell its requester to wait for
/// the answer on the channel named by this body.
async fn switch_responder(ctx: &Ctx, id: String, req: Request) -> Response {
    let legacy = ctx.legacy;
    let body = match axum::body::to_bytes(req.into_body(), 1024).await {
        Ok(b) => b,
        Err(_) => {
            return fail(
                legacy,
                StatusCode::BAD_REQUEST,
                "invalid_channel",
                "Channel name too long",
            );
        }
    };
    let name = String::from_utf8_lossy(&body).trim().to_owned();
    if name.is_empty() {
        return fail(
            legacy,
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            "Channel name required",
        );
    }
    if name.contains(['/', '?']) {
        return fail(
            legacy,
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            "Invalid channel name",
        );
    }
    let key = rr_key(ctx, &id);
    let offer = match next_request(ctx, &key).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let (response, reply, _) = request_as_response(offer, true);
    let _ = reply.send(Reply::Switch(ctx.key(name)));
    response
}
