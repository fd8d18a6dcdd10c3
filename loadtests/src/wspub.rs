//! `publish-ws`: acknowledged durable publishes per second over WebSockets, pipelined.
//!
//! 1. Opens `--concurrency` WebSockets on `GET /api/v1/db/{db}/events/ws` (bearer token in the
//!    `Authorization` header), each on its own TCP connection with `TCP_NODELAY`, 64 being
//!    opened at a time; a connection that cannot be opened is an error and the run goes on
//!    with the others.
//! 2. Every connection keeps up to `--window` publish frames in flight:
//!    `{"type":"publish","ref":N,"topic":"bench/{connection}","payload_base64":"…"}` with a
//!    fixed `--payload-bytes` payload (encoded once), and reads the replies. An
//!    `{"type":"ack","ref":N,…}` frees a slot; its latency is the time from just before its
//!    frame was queued for sending until the ack was read (matched by `ref`). An
//!    `{"type":"error",…}` frame counts as an error of kind `error_{code}` (and frees the slot
//!    of its `ref`).
//! 3. Acks read during `--warmup` are not counted; acks read during `--duration` are (their
//!    number over the duration is the rate). At the end of the duration no more frames are
//!    sent; the acks still outstanding are waited for (at most 10 s, each at most
//!    `--timeout-ms` after it was sent), then every socket is closed.
//!
//! Every phase is bounded and the whole run has an overall deadline.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use hyper::header::{AUTHORIZATION, HeaderValue};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::pubsub::base64_encode;
use crate::sse::{ErrorLog, nofile_soft_limit, resolve};
use crate::{Config, round};

/// Command-line name of this mode.
pub const NAME: &str = "publish-ws";
/// One line for `--help`.
pub const ABOUT: &str =
    "pipelined publishes over N WebSockets (events/ws): acknowledged publishes/s, ack latency";

pub const DEFAULT_WINDOW: usize = 64;
pub const MAX_WINDOW: usize = 65_536;
pub const DEFAULT_PAYLOAD_BYTES: usize = 1024;
/// The server's largest payload.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Connections being opened at once.
pub const OPEN_PARALLELISM: usize = 64;
/// How long outstanding acks are waited for after the timed phase.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing a socket may take.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of the mode (the rest comes from the common flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsPubConfig {
    /// Publishes in flight per connection.
    pub window: usize,
    /// Payload size before base64.
    pub payload_bytes: usize,
}

type Ws = WebSocketStream<TcpStream>;

// ---------------------------------------------------------------------------------------------
// Frames

/// The payload: `len` bytes of a fixed filler.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Builds one connection's publish frames: everything but the `ref` is fixed, so a frame is two
/// copies and a number.
pub struct FrameBuilder {
    /// `,"topic":…,"payload_base64":"…"}`.
    tail: String,
}

const FRAME_HEAD: &str = r#"{"type":"publish","ref":"#;

impl FrameBuilder {
    /// Frames for topic `bench/{conn}` with the given (already encoded) payload.
    pub fn new(conn: usize, payload_base64: &str) -> Self {
        Self {
            tail: format!(r#","topic":"bench/{conn}","payload_base64":"{payload_base64}"}}"#),
        }
    }

    /// The frame with `ref` = `reference`.
    pub fn frame(&self, reference: u64) -> String {
        let mut s = String::with_capacity(FRAME_HEAD.len() + 20 + self.tail.len());
        s.push_str(FRAME_HEAD);
        let _ = write!(s, "{reference}");
        s.push_str(&self.tail);
        s
    }
}

/// A text frame from the server, as far as this mode cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ack {
        reference: u64,
        id: i64,
        duplicate: bool,
    },
    Error {
        /// `None` when the frame has no numeric `ref` (e.g. `shutting_down`).
        reference: Option<u64>,
        code: String,
        message: String,
    },
    /// Any other frame type (`pong`, `message`, ...): ignored.
    Other(String),
}

/// Parses a server frame; `Err` describes what is wrong with it.
pub fn parse_reply(text: &str) -> Result<Reply, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text:.200}"))?;
    let kind = v
        .get("type")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("no type: {text:.200}"))?;
    let reference = v.get("ref").and_then(serde_json::Value::as_u64);
    match kind {
        "ack" => Ok(Reply::Ack {
            reference: reference
                .ok_or_else(|| format!("ack without a numeric ref: {text:.200}"))?,
            id: v
                .get("id")
                .and_then(serde_json::Value::as_i64)
                .ok_or_else(|| format!("ack without an id: {text:.200}"))?,
            duplicate: v
                .get("duplicate")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        }),
        "error" => {
            let field = |k: &str| {
                v.get(k)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            let code = field("code");
            Ok(Reply::Error {
                reference,
                code: if code.is_empty() {
                    "unknown".to_owned()
                } else {
                    code
                },
                message: field("message"),
            })
        }
        other => Ok(Reply::Other(other.to_owned())),
    }
}

/// The publishes in flight on one connection, oldest first: `(ref, sent at)`.
#[derive(Default)]
pub struct InFlight(VecDeque<(u64, Instant)>);

impl InFlight {
    pub fn push(&mut self, reference: u64, sent: Instant) {
        self.0.push_back((reference, sent));
    }

    /// Removes `reference` and returns when it was sent. Acks come back in order, so this is
    /// nearly always the oldest; anything else is searched for.
    pub fn take(&mut self, reference: u64) -> Option<Instant> {
        if self.0.front().is_some_and(|(r, _)| *r == reference) {
            return self.0.pop_front().map(|(_, t)| t);
        }
        let i = self.0.iter().position(|(r, _)| *r == reference)?;
        self.0.remove(i).map(|(_, t)| t)
    }

    pub fn oldest(&self) -> Option<(u64, Instant)> {
        self.0.front().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

/// Auto-resizing, 3 significant figures (like the driver's).
fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is valid")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    if h.record(micros).is_err() {
        h.saturating_record(micros);
    }
}

/// The fixed timeline shared by every connection (also by `publish-nats`' publishers).
#[derive(Clone, Copy)]
pub struct Timeline {
    /// End of the warm-up: acks from here on are counted.
    pub start: Instant,
    /// End of the timed phase: no frame is sent after this.
    pub deadline: Instant,
    /// Outstanding acks are not waited for after this.
    pub drain_until: Instant,
    /// Per-publish (and per-send) time limit.
    pub timeout: Duration,
}

impl Timeline {
    /// Warm-up from now, then the timed phase, then at most [`DRAIN_TIMEOUT`] of drain.
    pub fn starting_now(warmup: Duration, duration: Duration, timeout: Duration) -> Self {
        let start = Instant::now() + warmup;
        let deadline = start + duration;
        Self {
            start,
            deadline,
            drain_until: deadline + DRAIN_TIMEOUT,
            timeout,
        }
    }
}

/// Numbers of one connection, or of all of them once merged.
pub struct Stats {
    /// Ack latency (µs) of every counted ack.
    pub hist: Histogram<u64>,
    /// Acks read during the timed phase.
    pub acked: u64,
    /// Acks read at any time.
    pub acks_total: u64,
    /// Acks read after the timed phase (drain).
    pub acks_after_deadline: u64,
    /// Frames (publishes) sent, warm-up included.
    pub sent: u64,
    /// Acks that said `duplicate: true` (none expected: no dedupe key is sent).
    pub duplicates: u64,
    /// When the last connection finished (drained or failed).
    pub finished: Option<Instant>,
    pub errors: ErrorLog,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            hist: new_histogram(),
            acked: 0,
            acks_total: 0,
            acks_after_deadline: 0,
            sent: 0,
            duplicates: 0,
            finished: None,
            errors: ErrorLog::default(),
        }
    }

    pub fn merge(&mut self, other: Self) {
        // Both auto-resize, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.acked += other.acked;
        self.acks_total += other.acks_total;
        self.acks_after_deadline += other.acks_after_deadline;
        self.sent += other.sent;
        self.duplicates += other.duplicates;
        self.finished = self.finished.max(other.finished);
        self.errors.merge(other.errors);
    }
}

/// Opens one WebSocket on its own TCP connection; `Err` is (error kind, message).
async fn open(target: &Target, request: Request) -> Result<Ws, (String, String)> {
    let tcp = tokio::time::timeout(target.timeout, TcpStream::connect(target.addr))
        .await
        .map_err(|_| ("connect".to_owned(), "connect timed out".to_owned()))?
        .map_err(|e| ("connect".to_owned(), e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(
        target.timeout,
        tokio_tungstenite::client_async(request, tcp),
    )
    .await
    {
        Err(_) => Err(("handshake".to_owned(), "no upgrade in time".to_owned())),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(WsError::Http(resp))) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((
                format!("status_{}", resp.status().as_u16()),
                format!("upgrade answered {}: {body}", resp.status()),
            ))
        }
        Ok(Err(e)) => Err(("handshake".to_owned(), e.to_string())),
    }
}

/// Where and how to connect.
struct Target {
    addr: std::net::SocketAddr,
    /// `ws://…/api/v1/db/{db}/events/ws`.
    url: String,
    auth: HeaderValue,
    timeout: Duration,
}

impl Target {
    fn request(&self) -> anyhow::Result<Request> {
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .context("WebSocket URL")?;
        req.headers_mut().insert(AUTHORIZATION, self.auth.clone());
        Ok(req)
    }
}

/// Sends frames while the window has room, until the timed phase ends or the reader gives up.
/// Returns the sink (for closing), the number of frames sent, and the error that stopped it.
async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    frames: FrameBuilder,
    window: Arc<Semaphore>,
    sent_tx: mpsc::UnboundedSender<(u64, Instant)>,
    tl: Timeline,
) -> (SplitSink<Ws, Message>, u64, Option<(&'static str, String)>) {
    let mut next_ref: u64 = 0;
    let max_batch = window.available_permits().max(1);
    loop {
        // Wait for a free slot, then take every other free one: one flush per batch.
        let first = tokio::select! {
            p = window.acquire() => p,
            () = tokio::time::sleep_until(tl.deadline.into()) => break,
        };
        let Ok(first) = first else {
            // Closed by the reader: the connection is done.
            break;
        };
        first.forget();
        let mut batch = 1;
        while batch < max_batch {
            match window.try_acquire() {
                Ok(p) => {
                    p.forget();
                    batch += 1;
                }
                Err(_) => break,
            }
        }
        if Instant::now() >= tl.deadline {
            break;
        }
        let send = async {
            for _ in 0..batch {
                let reference = next_ref;
                next_ref += 1;
                let text = frames.frame(reference);
                // Registered before it is sent, so the reader always knows the ref of an ack.
                if sent_tx.send((reference, Instant::now())).is_err() {
                    return Ok(false);
                }
                sink.feed(Message::Text(text.into())).await?;
            }
            sink.flush().await.map(|()| true)
        };
        match tokio::time::timeout(tl.timeout, send).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => break,
            Ok(Err(e)) => return (sink, next_ref, Some(("ws_send", e.to_string()))),
            Err(_) => {
                let msg = format!("sending {batch} frames took longer than {:?}", tl.timeout);
                return (sink, next_ref, Some(("send_timeout", msg)));
            }
        }
    }
    (sink, next_ref, None)
}

/// Reads replies until every frame the writer sent is answered, the connection fails, a
/// publish times out or the drain time is up. Closes `window` when it stops early, so the
/// writer stops too.
async fn read_loop(
    mut stream: SplitStream<Ws>,
    window: Arc<Semaphore>,
    mut sent_rx: mpsc::UnboundedReceiver<(u64, Instant)>,
    tl: Timeline,
) -> Stats {
    let mut stats = Stats::new();
    let mut inflight = InFlight::default();
    let mut writer_done = false;
    // Why the loop ended early, if it did.
    let mut stopped: Option<(&'static str, String)> = None;
    loop {
        if writer_done && inflight.is_empty() {
            break;
        }
        let limit = match inflight.oldest() {
            Some((_, sent)) => (sent + tl.timeout).min(tl.drain_until),
            None => tl.drain_until,
        };
        let frame = tokio::select! {
            e = sent_rx.recv(), if !writer_done => {
                match e {
                    Some((r, t)) => inflight.push(r, t),
                    None => writer_done = true,
                }
                continue;
            }
            f = stream.next() => f,
            () = tokio::time::sleep_until(limit.into()) => {
                stopped = Some(match inflight.oldest() {
                    Some((r, sent)) if Instant::now() >= sent + tl.timeout => (
                        "ack_timeout",
                        format!("no ack for ref {r} within {:?}", tl.timeout),
                    ),
                    _ => ("drain_timeout", format!("acks still missing {DRAIN_TIMEOUT:?} after the timed phase")),
                });
                break;
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                stats
                    .errors
                    .add("bad_reply", 1, || "a binary frame".to_owned());
                continue;
            }
            Some(Ok(Message::Close(c))) => {
                stopped = Some(("ws_closed", format!("the server closed the socket: {c:?}")));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                stopped = Some(("ws_error", e.to_string()));
                break;
            }
            None => {
                stopped = Some(("ws_closed", "the connection ended".to_owned()));
                break;
            }
        };
        let now = Instant::now();
        // Every frame the writer sent is in the channel before it went out.
        while let Ok((r, t)) = sent_rx.try_recv() {
            inflight.push(r, t);
        }
        match parse_reply(text.as_str()) {
            Ok(Reply::Ack {
                reference,
                duplicate,
                ..
            }) => {
                let Some(sent) = inflight.take(reference) else {
                    stats.errors.add("unknown_ref", 1, || {
                        format!("ack for ref {reference}, which is not in flight")
                    });
                    continue;
                };
                window.add_permits(1);
                stats.acks_total += 1;
                stats.duplicates += u64::from(duplicate);
                if now >= tl.deadline {
                    stats.acks_after_deadline += 1;
                } else if now >= tl.start {
                    stats.acked += 1;
                    record(&mut stats.hist, now.saturating_duration_since(sent));
                }
            }
            Ok(Reply::Error {
                reference,
                code,
                message,
            }) => {
                if let Some(r) = reference
                    && inflight.take(r).is_some()
                {
                    window.add_permits(1);
                }
                stats
                    .errors
                    .add(&format!("error_{code}"), 1, || format!("{code}: {message}"));
            }
            Ok(Reply::Other(_)) => {}
            Err(e) => stats.errors.add("bad_reply", 1, || e),
        }
    }
    if let Some((kind, msg)) = stopped {
        window.close();
        stats.errors.add(kind, 1, || msg);
        // Whatever the writer managed to send is lost.
        while let Ok((r, t)) = sent_rx.try_recv() {
            inflight.push(r, t);
        }
        let n = inflight.len() as u64;
        stats.errors.add("unacked", n, || {
            format!("{n} publishes on one connection were never acknowledged")
        });
    }
    stats.finished = Some(Instant::now());
    stats
}

/// Runs one open connection through the timeline and closes it.
async fn connection(
    ws: Ws,
    idx: usize,
    payload_b64: Arc<str>,
    window: usize,
    tl: Timeline,
) -> Stats {
    let (sink, stream) = ws.split();
    let slots = Arc::new(Semaphore::new(window));
    let (sent_tx, sent_rx) = mpsc::unbounded_channel();
    let frames = FrameBuilder::new(idx, &payload_b64);
    drop(payload_b64);
    let writer = write_loop(sink, frames, Arc::clone(&slots), sent_tx, tl);
    let reader = read_loop(stream, slots, sent_rx, tl);
    let ((mut sink, sent, send_error), mut stats) = tokio::join!(writer, reader);
    stats.sent = sent;
    if let Some((kind, msg)) = send_error {
        stats.errors.add(kind, 1, || msg);
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
    stats
}

// ---------------------------------------------------------------------------------------------
// The benchmark

pub struct Outcome {
    pub stats: Stats,
    /// Connections that opened.
    pub open: usize,
    pub open_s: f64,
    /// From the end of the timed phase until the last connection finished.
    pub drain_s: f64,
}

/// Time allowed for opening every connection.
pub fn open_timeout(connections: usize) -> Duration {
    Duration::from_secs(30)
        + Duration::from_millis(20) * u32::try_from(connections).unwrap_or(u32::MAX)
}

/// An upper bound on the whole run, from the per-phase bounds (a safety net: every phase
/// has its own).
fn overall_deadline(cfg: &Config) -> Duration {
    open_timeout(cfg.run.concurrency)
        + cfg.run.warmup
        + cfg.run.duration
        + cfg.timeout
        + DRAIN_TIMEOUT
        + CLOSE_TIMEOUT
        + Duration::from_secs(30)
}

/// Runs the mode and prints its report; the JSON object is the last line of stdout.
pub async fn run(cfg: Config, wc: WsPubConfig) -> anyhow::Result<ExitCode> {
    let deadline = overall_deadline(&cfg);
    Box::pin(drive(NAME, &cfg, wc, deadline, phases(&cfg, wc))).await
}

/// What every publish mode does around its `phases` (also `publish-nats`): checks the file
/// descriptor limit, runs them under `deadline`, prints errors, the table and the JSON line;
/// fails when nothing was acknowledged.
pub async fn drive(
    name: &str,
    cfg: &Config,
    wc: WsPubConfig,
    deadline: Duration,
    phases: impl Future<Output = anyhow::Result<Outcome>>,
) -> anyhow::Result<ExitCode> {
    if let Some(soft) = nofile_soft_limit() {
        let need = (cfg.run.concurrency + 64) as u64;
        ensure!(
            soft >= need,
            "{} connections need about {need} file descriptors but the soft RLIMIT_NOFILE is \
             {soft}; raise it (ulimit -n) or open fewer connections",
            cfg.run.concurrency
        );
    }
    eprintln!(
        "loadtests: {name} against {} with {} connections, window {}, {} B payloads for {:?} \
         (warm-up {:?}; overall deadline {deadline:?})",
        cfg.target.base,
        cfg.run.concurrency,
        wc.window,
        wc.payload_bytes,
        cfg.run.duration,
        cfg.run.warmup
    );
    let outcome = match tokio::time::timeout(deadline, phases).await {
        Ok(r) => r?,
        Err(_) => bail!("the run did not finish within its overall deadline of {deadline:?}"),
    };
    for (kind, sample) in &outcome.stats.errors.samples {
        eprintln!("loadtests: first {kind} error: {sample}");
    }
    let j = report(name, cfg, wc, &outcome);
    print_table(name, &j, &outcome);
    // The JSON object is always the last line of stdout.
    println!("{j}");
    if outcome.stats.acked == 0 {
        eprintln!("loadtests: {name}: no publish was acknowledged in the timed phase");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn phases(cfg: &Config, wc: WsPubConfig) -> anyhow::Result<Outcome> {
    let base = cfg
        .target
        .base
        .strip_prefix("http://")
        .context("the base URL is not http://")?;
    let mut auth = HeaderValue::try_from(format!("Bearer {}", cfg.token))
        .context("the token contains characters not allowed in a header")?;
    auth.set_sensitive(true);
    let target = Arc::new(Target {
        addr: resolve(&cfg.target.host, cfg.target.port).await?,
        url: format!("ws://{base}/api/v1/db/{}/events/ws", cfg.db),
        auth,
        timeout: cfg.timeout,
    });
    // Fail early on a malformed URL rather than once per connection.
    target.request()?;
    let n = cfg.run.concurrency;
    let mut stats = Stats::new();

    // 1. Open the connections.
    eprintln!("loadtests: opening {n} WebSockets");
    let open_start = Instant::now();
    let gate = Arc::new(Semaphore::new(OPEN_PARALLELISM));
    let mut opening = JoinSet::new();
    for idx in 0..n {
        let (target, gate) = (Arc::clone(&target), Arc::clone(&gate));
        opening.spawn(async move {
            let _permit = gate.acquire().await;
            let request = target
                .request()
                .map_err(|e| ("build".to_owned(), format!("{e:#}")))?;
            open(&target, request).await.map(|ws| (idx, ws))
        });
    }
    let mut sockets = Vec::with_capacity(n);
    let opened_in_time = tokio::time::timeout(open_timeout(n), async {
        while let Some(r) = opening.join_next().await {
            match r {
                Ok(Ok(s)) => sockets.push(s),
                Ok(Err((kind, msg))) => stats.errors.add(&kind, 1, || msg),
                Err(e) => stats.errors.add("open_task", 1, || e.to_string()),
            }
        }
    })
    .await;
    if opened_in_time.is_err() {
        let late = opening.len() as u64;
        opening.abort_all();
        stats.errors.add("open_timeout", late, || {
            format!("a WebSocket did not open within {:?}", open_timeout(n))
        });
    }
    let opened = sockets.len();
    let open_s = open_start.elapsed().as_secs_f64();
    eprintln!("loadtests:   {opened}/{n} WebSockets open in {open_s:.2} s");
    if opened == 0 {
        return Ok(Outcome {
            stats,
            open: opened,
            open_s,
            drain_s: 0.0,
        });
    }

    // 2. Warm-up and the timed phase, then the drain.
    let tl = Timeline::starting_now(cfg.run.warmup, cfg.run.duration, cfg.timeout);
    let deadline = tl.deadline;
    if !cfg.run.warmup.is_zero() {
        eprintln!("loadtests: warming up for {:?}", cfg.run.warmup);
    }
    let payload_b64: Arc<str> = base64_encode(&payload(wc.payload_bytes)).into();
    let mut tasks = JoinSet::new();
    for (idx, ws) in sockets {
        tasks.spawn(connection(ws, idx, Arc::clone(&payload_b64), wc.window, tl));
    }
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(s) => stats.merge(s),
            Err(e) => stats.errors.add("connection_task", 1, || e.to_string()),
        }
    }
    let drain_s = stats
        .finished
        .map_or(0.0, |f| f.saturating_duration_since(deadline).as_secs_f64());
    eprintln!(
        "loadtests:   {} frames sent, {} acknowledged ({} in the timed phase), drained in \
         {drain_s:.2} s",
        stats.sent, stats.acks_total, stats.acked
    );
    Ok(Outcome {
        stats,
        open: opened,
        open_s,
        drain_s,
    })
}

/// The JSON report of `publish-ws`, and of `publish-nats` (`name`), which has the same fields.
pub fn report(name: &str, cfg: &Config, wc: WsPubConfig, o: &Outcome) -> serde_json::Value {
    let s = &o.stats;
    let secs = cfg.run.duration.as_secs_f64();
    let rate = round(s.acked as f64 / secs, 1);
    let q = |p: f64| {
        if s.hist.is_empty() {
            0.0
        } else {
            round(s.hist.value_at_quantile(p) as f64 / 1000.0, 3)
        }
    };
    serde_json::json!({
        "scenario": name,
        "concurrency": cfg.run.concurrency,
        "window": wc.window,
        "payload_bytes": wc.payload_bytes,
        "duration_s": round(secs, 3),
        "acks": s.acked,
        "rps": rate,
        "messages_per_s": rate,
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "max_ms": if s.hist.is_empty() { 0.0 } else { round(s.hist.max() as f64 / 1000.0, 3) },
        "errors": s.errors.total,
        "error_kinds": s.errors.kinds,
        // Extras.
        "connections_open": o.open,
        "warmup_s": round(cfg.run.warmup.as_secs_f64(), 3),
        "sent": s.sent,
        "acks_total": s.acks_total,
        "acks_after_deadline": s.acks_after_deadline,
        "duplicates": s.duplicates,
        "open_s": round(o.open_s, 3),
        "drain_s": round(o.drain_s, 3),
    })
}

/// The human table of [`report`].
pub fn print_table(name: &str, j: &serde_json::Value, o: &Outcome) {
    let num = |key: &str, decimals: usize| format!("{:.decimals$}", j[key].as_f64().unwrap_or(0.0));
    let cols = [
        ("scenario", name.to_owned()),
        ("connections", j["concurrency"].to_string()),
        ("window", j["window"].to_string()),
        ("payload_B", j["payload_bytes"].to_string()),
        ("duration_s", num("duration_s", 2)),
        ("acks", j["acks"].to_string()),
        ("msg/s", num("rps", 1)),
        ("p50_ms", num("p50_ms", 3)),
        ("p90_ms", num("p90_ms", 3)),
        ("p99_ms", num("p99_ms", 3)),
        ("max_ms", num("max_ms", 3)),
        ("errors", j["errors"].to_string()),
    ];
    crate::print_columns(&cols);
    println!(
        "{} of {} connections open; {} publishes sent, {} acknowledged ({} after the timed phase, \
         drained in {:.2} s)",
        o.open,
        j["concurrency"],
        o.stats.sent,
        o.stats.acks_total,
        o.stats.acks_after_deadline,
        o.drain_s
    );
    if !o.stats.errors.kinds.is_empty() {
        println!("errors by kind:");
        for (kind, n) in &o.stats.errors.kinds {
            println!("  {kind:<24} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_the_publish_json() {
        let b64 = base64_encode(&payload(5));
        assert_eq!(b64, "AAECAwQ=");
        let fb = FrameBuilder::new(3, &b64);
        for reference in [0, 7, u64::MAX] {
            let text = fb.frame(reference);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                v,
                serde_json::json!({
                    "type": "publish",
                    "ref": reference,
                    "topic": "bench/3",
                    "payload_base64": "AAECAwQ=",
                })
            );
        }
        assert_eq!(
            fb.frame(12),
            r#"{"type":"publish","ref":12,"topic":"bench/3","payload_base64":"AAECAwQ="}"#
        );
        // An empty payload is still a valid frame.
        let v: serde_json::Value =
            serde_json::from_str(&FrameBuilder::new(0, "").frame(1)).unwrap();
        assert_eq!(v["payload_base64"], "");
        assert_eq!(payload(1024).len(), 1024);
        assert_eq!(payload(300)[251..253], [0, 1]);
    }

    #[test]
    fn replies_are_parsed() {
        // As the server writes them (serde_json sorts the keys).
        assert_eq!(
            parse_reply(r#"{"duplicate":false,"id":42,"ref":7,"type":"ack"}"#),
            Ok(Reply::Ack {
                reference: 7,
                id: 42,
                duplicate: false
            })
        );
        assert_eq!(
            parse_reply(r#"{"type":"ack","ref":0,"id":-1,"duplicate":true}"#),
            Ok(Reply::Ack {
                reference: 0,
                id: -1,
                duplicate: true
            })
        );
        assert_eq!(
            parse_reply(r#"{"code":"invalid_topic","message":"bad topic","ref":9,"type":"error"}"#),
            Ok(Reply::Error {
                reference: Some(9),
                code: "invalid_topic".to_owned(),
                message: "bad topic".to_owned()
            })
        );
        assert_eq!(
            parse_reply(r#"{"type":"error","code":"shutting_down","message":"bye"}"#),
            Ok(Reply::Error {
                reference: None,
                code: "shutting_down".to_owned(),
                message: "bye".to_owned()
            })
        );
        assert_eq!(
            parse_reply(r#"{"type":"error"}"#),
            Ok(Reply::Error {
                reference: None,
                code: "unknown".to_owned(),
                message: String::new()
            })
        );
        assert_eq!(
            parse_reply(r#"{"type":"pong"}"#),
            Ok(Reply::Other("pong".to_owned()))
        );
        for bad in [
            "not json",
            "[]",
            r#"{"ref":1}"#,
            r#"{"type":"ack","ref":"r1","id":1}"#,
            r#"{"type":"ack","ref":1}"#,
        ] {
            assert!(parse_reply(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn in_flight_matches_by_ref() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut f = InFlight::default();
        assert!(f.is_empty());
        for r in 0..4 {
            f.push(r, at(r));
        }
        assert_eq!(f.oldest(), Some((0, at(0))));
        assert_eq!(f.take(0), Some(at(0)));
        // Out of order and unknown refs.
        assert_eq!(f.take(2), Some(at(2)));
        assert_eq!(f.take(2), None);
        assert_eq!(f.take(99), None);
        assert_eq!(f.len(), 2);
        assert_eq!(f.oldest(), Some((1, at(1))));
        assert_eq!(f.take(1), Some(at(1)));
        assert_eq!(f.take(3), Some(at(3)));
        assert!(f.is_empty());
    }
}
