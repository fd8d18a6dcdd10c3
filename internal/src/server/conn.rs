//! The HTTP/1.1 accept loop (in place of `axum::serve`, which has no timeouts and no caps):
//!
//! - **connection caps**: at most `max_connections` open connections, and at most
//!   `max_connections_per_ip` per client IP (the TCP peer; IPv6 per /64; peers in
//!   `trusted_proxies` only count against the total). A connection over a cap gets a minimal
//!   JSON `503` written without reading anything, and is closed at once. WebSockets count until
//!   their socket closes.
//! - **header read timeout**: a new connection, or one whose next request head has started to
//!   arrive, must deliver the complete head within `header_read_timeout_secs`.
//! - **idle timeout**: a keep-alive connection with no request in flight and no bytes arriving
//!   is closed after `http_idle_timeout_secs`. A request is in flight from its parsed head until
//!   its response body is dropped (fully written or abandoned), so SSE streams are never idle;
//!   upgraded WebSockets leave this machinery altogether.
//! - **request body timeout**: while a handler waits for more of the request body and none
//!   arrives for `request_body_timeout_secs`, the connection is closed. Only time the server
//!   spends *asking* counts: a stream producer whose body waits for its consumer is not slow.
//! - **response write timeout**: while the socket accepts none of the response bytes waiting to
//!   be written for `response_write_timeout_secs`, the connection is closed. A client that stops
//!   reading (an SSE subscriber that never reads, a slow-read attack) would otherwise hold its
//!   connection, and whatever its response still has queued, for as long as it likes; a slow
//!   but live reader is not cut (any byte accepted restarts the wait).
//! - **accept back-off**: a failing `accept` (`EMFILE`, `ENFILE`, `ENOBUFS`, …) sleeps, 10 ms
//!   doubling to 1 s, instead of spinning.
//! - **graceful shutdown**: when `stop` is cancelled the listener is closed, idle connections
//!   are closed, in-flight requests finish, and [`run`] returns once every connection is done.
//!
//! hyper's own `header_read_timeout` is not used: it is restarted whenever a connection goes
//! idle, so it would also cut keep-alive connections after the (short) header timeout.
//! The timers live in one watchdog per connection ([`Activity`]): the IO, service and body
//! wrappers only store time stamps, and the watchdog reads them when its one timer fires (at
//! the nearest deadline, or after the shortest timeout to look again), so a request costs no
//! wake-up of the connection task.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use crate::conn_limits::{ConnLimits, Refused, Slot};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::ops::metrics::{Metrics, ReasonLabel};

/// Longest request target (path and query) that reaches the router; longer → JSON `414`.
pub const MAX_URI_BYTES: usize = 32 * 1024;
/// Largest request head (request line and header fields) that reaches the router; larger →
/// JSON `431`.
pub const MAX_HEAD_BYTES: usize = 48 * 1024;
/// hyper's cap on a request head while it is read (bounds the memory of a slow client). Past it,
/// or past 100 header fields, hyper itself answers `431` with an empty body and closes the
/// connection; likewise its `400` for an unparseable request line or header. Those answers are
/// written before any service runs, so they cannot carry the JSON error shape; only heads
/// between [`MAX_HEAD_BYTES`] and this size (and targets over [`MAX_URI_BYTES`]) can.
const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The connection settings in effect (the config's, `max_connections` already lowered to the
/// descriptor budget).
#[derive(Clone, Copy, Debug)]
pub struct ConnSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

/// The answer written to a connection over a cap (without reading its request).
fn refusal(message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {"code": "too_many_connections", "message": message}})
        .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Why the watchdog closed a connection (the metric's `reason` label).
#[derive(Clone, Copy, Debug)]
enum Timeout {
    Header,
    Idle,
    Body,
    Write,
}

impl Timeout {
    fn label(self) -> &'static str {
        match self {
            Timeout::Header => "header",
            Timeout::Idle => "idle",
            Timeout::Body => "body",
            Timeout::Write => "write",
        }
    }
}

const NONE: u64 = u64::MAX;

/// What one connection is doing, for its watchdog. Times are milliseconds since `base`.
struct Activity {
    base: Instant,
    /// Requests whose head was parsed and whose response body is not yet dropped.
    in_flight: AtomicUsize,
    /// Whether any request has started (before that, the wait is bounded by the header timeout).
    served: AtomicBool,
    /// When the connection last became idle: accepted, or a response finished.
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived while idle (`NONE`: none yet).
    head_started: AtomicU64,
    /// Since when a handler has been waiting for request body bytes that have not come
    /// (`NONE`: not waiting).
    body_wait_since: AtomicU64,
    /// Since when the socket has refused response bytes, none accepted since (`NONE`: the
    /// last write went through).
    write_blocked_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            body_wait_since: AtomicU64::new(NONE),
            write_blocked_since: AtomicU64::new(NONE),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == NONE
        {
            self.head_started.store(self.now_ms(), Ordering::Release);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        self.head_started.store(NONE, Ordering::Release);
    }

    fn request_ended(&self) {
        self.idle_since.store(self.now_ms(), Ordering::Release);
        self.body_wait_since.store(NONE, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// A handler asked for request body bytes and got none yet (`waiting`), or got some.
    fn body_waiting(&self, waiting: bool) {
        if !waiting {
            self.body_wait_since.store(NONE, Ordering::Release);
        } else if self.body_wait_since.load(Ordering::Acquire) == NONE {
            self.body_wait_since.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A write to the socket was refused (`blocked`), or accepted bytes.
    fn write_blocked(&self, blocked: bool) {
        let since = self.write_blocked_since.load(Ordering::Acquire);
        if !blocked {
            if since != NONE {
                self.write_blocked_since.store(NONE, Ordering::Release);
            }
        } else if since == NONE {
            self.write_blocked_since
                .store(self.now_ms(), Ordering::Release);
        }
    }

    /// The moment the connection is to be closed, if nothing changes: the nearer of the
    /// request-side deadline and the write stall's.
    fn deadline(&self, settings: &ConnSettings) -> Option<(Instant, Timeout)> {
        let request = self.request_deadline(settings);
        let since = self.write_blocked_since.load(Ordering::Acquire);
        if since == NONE {
            return request;
        }
        let write = (
            self.base + Duration::from_millis(since) + settings.write_timeout,
            Timeout::Write,
        );
        Some(match request {
            Some(r) if r.0 <= write.0 => r,
            _ => write,
        })
    }

    /// The header, idle or body deadline; `None` while a request is in flight and not starved
    /// of its body.
    fn request_deadline(&self, settings: &ConnSettings) -> Option<(Instant, Timeout)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            let since = self.body_wait_since.load(Ordering::Acquire);
            return (since != NONE).then(|| {
                (
                    self.base + Duration::from_millis(since) + settings.body_timeout,
                    Timeout::Body,
                )
            });
        }
        let head = self.head_started.load(Ordering::Acquire);
        let (from, after, why) = if head != NONE {
            (head, settings.header_read_timeout, Timeout::Header)
        } else if !self.served.load(Ordering::Acquire) {
            let since = self.idle_since.load(Ordering::Acquire);
            (since, settings.header_read_timeout, Timeout::Header)
        } else {
            let since = self.idle_since.load(Ordering::Acquire);
            (since, settings.idle_timeout, Timeout::Idle)
        };
        Some((self.base + Duration::from_millis(from) + after, why))
    }

    /// Resolves when the connection has been idle, slow with a request head, silent while its
    /// body is awaited, or unable to write its response, for too long. Nothing wakes it but its
    /// own timer: it sleeps until the nearest deadline, but never longer than the shortest
    /// timeout, so a deadline that appears meanwhile (a head starting, a request ending, a body
    /// wait, a write stall) is never overslept — each starts after the last look and so ends
    /// after the next one.
    async fn expired(&self, settings: &ConnSettings) -> Timeout {
        let look_again = settings
            .header_read_timeout
            .min(settings.idle_timeout)
            .min(settings.body_timeout)
            .min(settings.write_timeout);
        let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
        loop {
            let now = Instant::now();
            let wake = match self.deadline(settings) {
                Some((at, why)) if at <= now => return why,
                Some((at, _)) => at.min(now + look_again),
                None => now + look_again,
            };
            timer.as_mut().reset(wake);
            timer.as_mut().await;
        }
    }
}

/// The socket, reporting arriving bytes to the watchdog and holding the connection's slot.
struct WatchedIo {
    tcp: TcpStream,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.activity.write_blocked(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.activity.write_blocked(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Marks a request in flight until dropped (with its response body).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that keeps its request in flight until hyper drops it.
pub struct TrackedBody {
    inner: Body,
    _in_flight: Option<InFlight>,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that tells the watchdog while its handler waits for bytes that do not come.
pub struct WatchedBody {
    inner: Incoming,
    activity: Arc<Activity>,
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.activity.body_waiting(polled.is_pending());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.activity.body_waiting(false);
    }
}

/// The router as one connection's hyper service: adds `ConnectInfo<SocketAddr>`, answers
/// oversized heads itself, tracks requests in flight.
struct ConnService {
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

/// A request target or head the router does not see (see [`MAX_URI_BYTES`]).
fn oversized<B>(req: &Request<B>) -> Option<ApiError> {
    let uri = req.uri();
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3);
    if uri_len > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        ));
    }
    // Request line ("METHOD SP target SP HTTP/1.1 CRLF") and "name: value CRLF" per field.
    let head = req.method().as_str().len()
        + uri_len
        + 12
        + req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    (head > MAX_HEAD_BYTES).then(|| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request head is larger than {MAX_HEAD_BYTES} bytes"),
        )
    })
}

enum Answer {
    Routed(RouteFuture<Infallible>),
    Ready(Option<Response<Body>>),
}

pub struct ServiceFuture {
    answer: Answer,
    in_flight: Option<InFlight>,
}

impl Future for ServiceFuture {
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = match &mut this.answer {
            Answer::Routed(routed) => match Pin::new(routed).poll(cx) {
                Poll::Ready(Ok(response)) => response,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            Answer::Ready(response) => response
                .take()
                .unwrap_or_else(|| ApiError::internal("response polled twice").into_response()),
        };
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody {
            inner,
            _in_flight: in_flight,
        })))
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> ServiceFuture {
        let in_flight = InFlight::start(self.activity.clone());
        let answer = match oversized(&req) {
            Some(e) => Answer::Ready(Some(e.into_response())),
            None => {
                let activity = self.activity.clone();
                let mut req = req.map(|inner| WatchedBody { inner, activity });
                req.extensions_mut().insert(ConnectInfo(self.peer));
                // `Router` is always ready; `call` needs no `poll_ready` first.
                Answer::Routed(tower::Service::call(&mut self.router.clone(), req))
            }
        };
        ServiceFuture {
            answer,
            in_flight: Some(in_flight),
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Accepts and serves connections on `listener` until `stop` is cancelled; then closes the
/// listener, lets every connection finish its in-flight requests (idle ones close at once), and
/// returns when all are done. The caller bounds that wait with the shutdown grace.
pub async fn run(
    listener: TcpListener,
    router: Router,
    settings: ConnSettings,
    metrics: Arc<Metrics>,
    trusted_proxies: &[crate::config::ProxyNet],
    stop: CancellationToken,
) {
    let limits = ConnLimits::new(
        settings.max_connections,
        settings.max_connections_per_ip,
        trusted_proxies,
        metrics.http_connections.clone(),
    );
    let refused_total = refusal("the server has too many open connections; try again later");
    let refused_per_ip = refusal("too many open connections from this address");
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .header_read_timeout(None)
        .max_header_size(HYPER_MAX_HEAD_BYTES);
    let (close_tx, close_rx) = watch::channel(());
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut last_warned: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE), buffers (ENOBUFS/ENOMEM) or the like: the
                // pending connection stays in the backlog; try again after a pause.
                metrics.accept_errors.inc();
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64,
                        "accept failed; backing off");
                    last_warned = Some(Instant::now());
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let slot = match limits.try_acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                metrics
                    .connections_refused
                    .get_or_create(&ReasonLabel {
                        reason: refused.label(),
                    })
                    .inc();
                tracing::debug!(%peer, cap = refused.label(), "connection refused");
                let answer = match refused {
                    Refused::Total => &refused_total,
                    Refused::PerIp => &refused_per_ip,
                };
                // A fresh socket's send buffer takes this at once; never wait for the client.
                let _ = tcp.try_write(answer);
                drop(tcp);
                continue;
            }
        };
        // Without TCP_NODELAY every small SSE event waits for the peer's delayed ACK (14–40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(WatchedIo {
            tcp,
            activity: activity.clone(),
            _slot: slot,
        });
        let service = ConnService {
            router: router.clone(),
            peer,
            activity: activity.clone(),
        };
        let conn = builder.serve_connection(io, service).with_upgrades();
        let (stop, metrics, close_rx) = (stop.clone(), metrics.clone(), close_rx.clone());
        tokio::spawn(async move {
            let mut conn = pin!(conn);
            let mut watchdog = pin!(activity.expired(&settings));
            let mut draining = false;
            loop {
                tokio::select! {
                    biased;
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::trace!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    why = &mut watchdog => {
                        metrics.connection_timeouts
                            .get_or_create(&ReasonLabel { reason: why.label() })
                            .inc();
                        tracing::debug!(%peer, timeout = why.label(), "closing connection");
                        break;
                    }
                    () = stop.cancelled(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(close_rx);
        });
    }
    drop(listener);
    drop(close_rx);
    close_tx.closed().await;
}
