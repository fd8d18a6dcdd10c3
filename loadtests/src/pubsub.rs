//! `sse-fanout`: publish-to-delivery latency of durable pub/sub with many SSE subscribers.
//!
//! 1. Opens `--subscribers` SSE streams on `GET /events/stream?topic=bench/%23`, each on its own
//!    HTTP/1 connection, 64 at a time, and waits for every `200` head.
//! 2. Warm-up: publishes a marked message to `bench/warmup` (again every second) until every
//!    open stream has received one, so every subscription is live before the timed phase.
//! 3. Publishes `--rate` messages per second for `--duration` seconds to `bench/{n}`, on a fixed
//!    schedule (message k is due at start + k / rate) with up to `--concurrency` publishes in
//!    flight, so a slow publish does not slow the rate down (up to that many in flight).
//!    Each 1 KiB payload starts with its send time (µs since the run's epoch), its sequence
//!    number and a per-run nonce, little-endian u64s; every subscriber records
//!    `now - send time` for every message it receives.
//! 4. Drain: waits (at most 10 s) until every subscriber still open has every acknowledged
//!    message.
//!
//! With `--server-pid`, the server's `VmRSS` is read from `/proc/PID/status` before the
//! subscribers open, every 500 ms throughout (peak), after the drain (end) and 1 s after the
//! streams are closed. Every phase is bounded and the whole run has an overall deadline.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use tokio::sync::{Semaphore, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::driver::{Body, Ctx, Failure, Reply, RequestSpec};
use crate::sse::{
    AbortOnDrop, ErrorLog, OpenStage, OpenStream, SseParser, StreamKinds, StreamRequest, lock,
    next_events, nofile_soft_limit, open_stream,
};
use crate::{Config, round};

/// Command-line name of this mode.
pub const NAME: &str = "sse-fanout";
/// One line for `--help`.
pub const ABOUT: &str =
    "N SSE subscribers on bench/#, steady publish rate: delivery latency, server RSS";

pub const DEFAULT_SUBSCRIBERS: usize = 1000;
pub const MAX_SUBSCRIBERS: usize = 10_000;
pub const DEFAULT_RATE: u32 = 1000;
pub const MAX_RATE: u32 = 100_000;
/// Publishes in flight at most (`--concurrency`) unless given.
pub const DEFAULT_PUBLISHERS: usize = 32;
/// Size of every published payload (before base64).
pub const PAYLOAD_LEN: usize = 1024;

/// The subscription's query string (`bench/#`).
const FILTER_QUERY: &str = "topic=bench/%23";
/// Streams being opened at once (connect until response head).
const OPEN_PARALLELISM: usize = 64;
/// A warm-up message is published this often until every subscriber has one.
const WARMUP_EVERY: Duration = Duration::from_secs(1);
/// Pause between the warm-up and the timed phase.
const SETTLE: Duration = Duration::from_millis(500);
/// How long subscribers get to receive the last messages after the last publish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Server RSS sampling period.
const RSS_EVERY: Duration = Duration::from_millis(500);
/// Sequence number of warm-up messages.
const WARMUP_SEQ: u64 = u64::MAX;

/// Settings of the mode (the rest comes from the common flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutConfig {
    pub subscribers: usize,
    /// Messages per second.
    pub rate: u32,
    /// The server's process id, for RSS.
    pub server_pid: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Payloads

/// What a benchmark payload carries in its first [`STAMP_LEN`] bytes (little-endian u64s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Send time in µs since the run's epoch.
    pub sent_us: u64,
    /// Message number; [`WARMUP_SEQ`] for warm-up messages.
    pub seq: u64,
    /// Per-run nonce, so messages of other runs are recognised.
    pub run: u64,
}

pub const STAMP_LEN: usize = 24;
/// Base64 characters that encode the stamp (24 bytes, no padding).
const STAMP_B64_LEN: usize = STAMP_LEN / 3 * 4;

/// The [`PAYLOAD_LEN`]-byte payload: the stamp, then a fixed filler.
pub fn payload(stamp: Stamp) -> Vec<u8> {
    let mut p = Vec::with_capacity(PAYLOAD_LEN);
    p.extend_from_slice(&stamp.sent_us.to_le_bytes());
    p.extend_from_slice(&stamp.seq.to_le_bytes());
    p.extend_from_slice(&stamp.run.to_le_bytes());
    p.extend((STAMP_LEN..PAYLOAD_LEN).map(|i| (i % 251) as u8));
    p
}

/// `payload(stamp)` as standard padded base64, for `payload_base64`.
pub fn payload_base64(stamp: Stamp) -> String {
    base64_encode(&payload(stamp))
}

/// The payload of the `publish` scenario (a zero stamp), encoded once.
pub static STATIC_PAYLOAD_B64: LazyLock<String> = LazyLock::new(|| {
    payload_base64(Stamp {
        sent_us: 0,
        seq: 0,
        run: 0,
    })
});

/// Reads the stamp from the start of a payload's base64 text.
pub fn decode_stamp(b64: &str) -> Option<Stamp> {
    let bytes = base64_decode(b64.as_bytes().get(..STAMP_B64_LEN)?)?;
    let word = |i: usize| {
        bytes
            .get(i * 8..i * 8 + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    Some(Stamp {
        sent_us: word(0)?,
        seq: word(1)?,
        run: word(2)?,
    })
}

/// The stamp of a `message` event's data
/// (`{"content_type","created_at","id","payload_base64","producer","topic"}`). Looks for the
/// `payload_base64` key directly (the data are parsed for every delivery); falls back to a full
/// JSON parse if that fails (other spacing or escaping).
pub fn stamp_of(data: &str) -> Option<Stamp> {
    const KEY: &[u8] = b"\"payload_base64\":\"";
    // A plain scan: the key is near the start, and building a `str::find` searcher for every
    // delivery costs more than that.
    let bytes = data.as_bytes();
    if let Some(i) = bytes
        .windows(KEY.len())
        .position(|w| w[1] == b'p' && w[0] == b'"' && w == KEY)
        && let Some(stamp) = data.get(i + KEY.len()..).and_then(decode_stamp)
    {
        return Some(stamp);
    }
    let json: serde_json::Value = serde_json::from_str(data).ok()?;
    decode_stamp(json.get("payload_base64")?.as_str()?)
}

const B64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(
                    B64_ALPHABET[((n >> (18 - 6 * i)) & 63) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes whole groups of four standard base64 characters without padding (used on a prefix
/// of a longer text); `None` on any other character or a partial group.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let sextet = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for group in text.chunks_exact(4) {
        let mut n = 0u32;
        for &c in group {
            n = (n << 6) | sextet(c)?;
        }
        out.extend_from_slice(&n.to_be_bytes()[1..]);
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Server RSS

/// `VmRSS` in KiB from the text of `/proc/PID/status`.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let n = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(n),
        Some(_) => None,
    }
}

fn read_rss_kib(pid: u32) -> Option<u64> {
    parse_vm_rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Samples the server's RSS every [`RSS_EVERY`] in the background; keeps the peak.
struct RssSampler {
    pid: u32,
    start_kib: u64,
    peak_kib: Arc<AtomicU64>,
    _task: AbortOnDrop,
}

impl RssSampler {
    fn start(pid: u32) -> anyhow::Result<Self> {
        let start_kib = read_rss_kib(pid).with_context(|| {
            format!("cannot read VmRSS from /proc/{pid}/status (is --server-pid right?)")
        })?;
        let peak_kib = Arc::new(AtomicU64::new(start_kib));
        let peak = Arc::clone(&peak_kib);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(RSS_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Some(kib) = read_rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::SeqCst);
                }
            }
        });
        Ok(Self {
            pid,
            start_kib,
            peak_kib,
            _task: AbortOnDrop::new(task.abort_handle()),
        })
    }

    /// Samples now (also counted in the peak).
    fn sample(&self) -> Option<u64> {
        let kib = read_rss_kib(self.pid)?;
        self.peak_kib.fetch_max(kib, Ordering::SeqCst);
        Some(kib)
    }
}

// ---------------------------------------------------------------------------------------------
// Subscribers

/// What the subscriber tasks and the controller share.
struct Shared {
    /// Time zero of the stamps.
    epoch: Instant,
    /// Nonce of this run, carried in every payload.
    run: u64,
    /// Per subscriber: the stream answered 200.
    headed: Vec<AtomicBool>,
    /// Per subscriber: a warm-up message arrived (the subscription is live).
    ready: Vec<AtomicBool>,
    ready_count: AtomicUsize,
    /// Per subscriber: the task ended (stream closed, error, or stopped).
    ended: Vec<AtomicBool>,
    /// Per subscriber: timed messages received (one cache line each: they are bumped by
    /// different threads for every delivery).
    received: Vec<PaddedCounter>,
    /// Messages not published by this run.
    foreign: AtomicU64,
    /// Subscribers cut off with `slow_consumer`.
    slow_consumers: AtomicU64,
    /// Message ids not above the previous one on the same stream.
    out_of_order: AtomicU64,
    heartbeats: AtomicU64,
    open_retries: AtomicU64,
    /// Publish-to-delivery latency in µs of every timed delivery; merged as subscribers end.
    latency: Mutex<Histogram<u64>>,
    errors: Mutex<ErrorLog>,
}

impl Shared {
    fn new(subscribers: usize, run: u64) -> Self {
        let flags = || (0..subscribers).map(|_| AtomicBool::new(false)).collect();
        Self {
            epoch: Instant::now(),
            run,
            headed: flags(),
            ready: flags(),
            ready_count: AtomicUsize::new(0),
            ended: flags(),
            received: (0..subscribers).map(|_| PaddedCounter::default()).collect(),
            foreign: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            open_retries: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()),
            errors: Mutex::new(ErrorLog::default()),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn error(&self, kind: &str, sample: impl FnOnce() -> String) {
        lock(&self.errors).add(kind, 1, sample);
    }

    fn received_total(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.0.load(Ordering::SeqCst))
            .sum()
    }
}

/// A counter alone on its cache line.
#[derive(Default)]
#[repr(align(64))]
struct PaddedCounter(AtomicU64);

/// Auto-resizing, 3 significant figures (like the driver's).
fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is valid")
}

fn record(h: &mut Histogram<u64>, micros: u64) {
    let micros = micros.max(1);
    if h.record(micros).is_err() {
        h.saturating_record(micros);
    }
}

/// A subscriber failure: error kind and message.
type SubError = (&'static str, String);

/// The error kind of a failed stream open.
fn open_kind(stage: OpenStage) -> &'static str {
    match stage {
        OpenStage::Build => "build",
        OpenStage::Connect => "sub_connect",
        OpenStage::Handshake => "sub_handshake",
        OpenStage::Timeout => "sub_timeout",
        OpenStage::Transport => "sub_transport",
        OpenStage::Status => "sub_status",
    }
}

async fn subscriber(
    idx: usize,
    req: Arc<StreamRequest>,
    shared: Arc<Shared>,
    open: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    let mut hist = new_histogram();
    let result = subscribe(idx, &req, &shared, &open, stop.clone(), &mut hist).await;
    shared.ended[idx].store(true, Ordering::SeqCst);
    if !hist.is_empty() {
        // Both auto-resize, so adding cannot fail.
        let _ = lock(&shared.latency).add(&hist);
    }
    if let Err((kind, msg)) = result
        && !*stop.borrow()
    {
        shared.error(kind, || msg);
    }
}

async fn subscribe(
    idx: usize,
    req: &StreamRequest,
    shared: &Shared,
    open: &Semaphore,
    mut stop: watch::Receiver<bool>,
    hist: &mut Histogram<u64>,
) -> Result<(), SubError> {
    let OpenStream {
        mut body,
        conn: _conn,
    } = {
        let _permit = open
            .acquire()
            .await
            .map_err(|e| ("sub_open", e.to_string()))?;
        open_stream(req, idx, &shared.open_retries)
            .await
            .map_err(|(stage, msg)| (open_kind(stage), msg))?
    };
    shared.headed[idx].store(true, Ordering::SeqCst);
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    let mut last_id = i64::MIN;
    let kinds = StreamKinds {
        closed: "sub_closed",
        body: "sub_body",
        bad_event: "sub_bad_event",
    };
    loop {
        if !next_events(&mut body, &mut stop, &mut parser, &mut events, &kinds).await? {
            return Ok(());
        }
        for ev in events.drain(..) {
            match ev.event.as_str() {
                "message" => {
                    let now = shared.now_us();
                    if let Some(id) = ev.id.as_deref().and_then(|i| i.parse::<i64>().ok()) {
                        if id <= last_id {
                            shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        last_id = last_id.max(id);
                    }
                    match stamp_of(&ev.data) {
                        Some(s) if s.run == shared.run && s.seq == WARMUP_SEQ => {
                            if !shared.ready[idx].swap(true, Ordering::SeqCst) {
                                shared.ready_count.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Some(s) if s.run == shared.run => {
                            record(hist, now.saturating_sub(s.sent_us));
                            shared.received[idx].0.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            shared.foreign.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                "heartbeat" => {
                    shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                "error" => {
                    let code = serde_json::from_str::<serde_json::Value>(&ev.data)
                        .ok()
                        .and_then(|j| j.get("code")?.as_str().map(str::to_owned));
                    if code.as_deref() == Some("slow_consumer") {
                        // The server ends the stream after this; that is not another error.
                        shared.slow_consumers.fetch_add(1, Ordering::SeqCst);
                        return Err(("slow_consumer", ev.data));
                    }
                    shared.error("sub_error_event", || ev.data.clone());
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Publishing

fn publish_spec(ctx: &Ctx, shared: &Shared, topic: &str, seq: u64) -> RequestSpec {
    let stamp = Stamp {
        sent_us: shared.now_us(),
        seq,
        run: shared.run,
    };
    RequestSpec {
        method: Method::POST,
        path: format!("/api/v1/db/{}/messages", ctx.db),
        auth: true,
        headers: &[],
        body: Body::Json(serde_json::json!({
            "topic": topic,
            "payload_base64": payload_base64(stamp),
        })),
    }
}

/// Publishes one message; the stamp is taken just before the request is sent.
async fn publish(
    ctx: &Ctx,
    shared: &Shared,
    topic: &str,
    seq: u64,
) -> (Result<Reply, Failure>, Duration) {
    let spec = publish_spec(ctx, shared, topic, seq);
    let t0 = Instant::now();
    let r = ctx.send(&spec).await;
    (r, t0.elapsed())
}

/// Counts a publish result; true if it was acknowledged.
fn judge(errors: &mut ErrorLog, result: &Result<Reply, Failure>) -> bool {
    match result {
        Ok(r) if r.status == StatusCode::CREATED => true,
        Ok(r) => {
            errors.add(&format!("publish_status_{}", r.status.as_u16()), 1, || {
                String::from_utf8_lossy(&r.body).into_owned()
            });
            false
        }
        Err(e) => {
            errors.add(&format!("publish_{}", e.kind()), 1, || e.to_string());
            false
        }
    }
}

#[derive(Default)]
struct Published {
    /// Publishes scheduled: rate × duration.
    target: u64,
    /// Publishes sent in the timed phase (fewer than `target` if every slot was still busy at
    /// the end of the phase).
    sent: u64,
    /// Answered 201.
    acked: u64,
    /// From the first scheduled publish until the last answer.
    elapsed: Duration,
    /// How far the sender fell behind the schedule at worst (no publish slot free).
    max_lag: Duration,
    /// Acknowledgement latency in µs.
    ack: Option<Histogram<u64>>,
    last_done: Option<Instant>,
    errors: ErrorLog,
}

/// What a publish task returns: the result, its latency, when it finished.
type PublishResult = (Result<Reply, Failure>, Duration, Instant);

impl Published {
    fn reap(&mut self, r: Result<PublishResult, tokio::task::JoinError>) {
        let (result, took, done) = match r {
            Ok(r) => r,
            Err(e) => {
                self.errors.add("publish_task", 1, || e.to_string());
                return;
            }
        };
        if result.is_ok() {
            record(
                self.ack.get_or_insert_with(new_histogram),
                u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            );
        }
        if judge(&mut self.errors, &result) {
            self.acked += 1;
        }
        self.last_done = self.last_done.max(Some(done));
    }
}

/// Message `k` (0-based) is due `k / rate` seconds after the start.
fn due_offset(k: u64, rate: u32) -> Duration {
    Duration::from_secs_f64(k as f64 / f64::from(rate))
}

/// Messages sent in `duration` at `rate` per second.
pub fn total_messages(rate: u32, duration: Duration) -> u64 {
    (f64::from(rate) * duration.as_secs_f64()).round() as u64
}

async fn publish_phase(
    ctx: &Arc<Ctx>,
    shared: &Arc<Shared>,
    rate: u32,
    duration: Duration,
    publishers: usize,
) -> Published {
    let total = total_messages(rate, duration);
    let slots = Arc::new(Semaphore::new(publishers));
    let mut tasks = JoinSet::new();
    let mut out = Published {
        target: total,
        ..Published::default()
    };
    let start = Instant::now();
    let end = start + duration;
    for k in 0..total {
        let due = start + due_offset(k, rate);
        tokio::time::sleep_until(due.into()).await;
        // No publish starts after the phase's end: if every slot stayed busy that long, the
        // server could not keep up and the rest of the schedule is dropped (not sent late).
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p,
            () = tokio::time::sleep_until(end.into()) => break,
        };
        let Ok(permit) = permit else {
            break;
        };
        if Instant::now() >= end {
            break;
        }
        out.max_lag = out
            .max_lag
            .max(Instant::now().saturating_duration_since(due));
        let (ctx, shared) = (Arc::clone(ctx), Arc::clone(shared));
        tasks.spawn(async move {
            let _permit = permit;
            let topic = format!("bench/{}", k % publishers as u64);
            let (result, took) = publish(&ctx, &shared, &topic, k).await;
            (result, took, Instant::now())
        });
        out.sent += 1;
        while let Some(r) = tasks.try_join_next() {
            out.reap(r);
        }
    }
    // Every publish is bounded by the request timeout.
    while let Some(r) = tasks.join_next().await {
        out.reap(r);
    }
    out.elapsed = out
        .last_done
        .map_or(Duration::ZERO, |d| d.saturating_duration_since(start));
    out
}

// ---------------------------------------------------------------------------------------------
// The benchmark

/// Numbers of one run, for the table and the JSON line.
struct Outcome {
    connected: usize,
    open_s: f64,
    ready_s: f64,
    published: Published,
    drain_s: f64,
    received: u64,
    latency: Histogram<u64>,
    slow_consumers: u64,
    foreign: u64,
    out_of_order: u64,
    heartbeats: u64,
    /// KiB: start, peak, end, after close.
    rss: Option<[Option<u64>; 4]>,
    errors: ErrorLog,
}

impl Outcome {
    fn expected(&self) -> u64 {
        self.published.acked * self.connected as u64
    }
}

/// Time allowed for opening every stream, and again for the warm-up.
fn open_timeout(subscribers: usize) -> Duration {
    Duration::from_secs(30)
        + Duration::from_millis(20) * u32::try_from(subscribers).unwrap_or(u32::MAX)
}

/// An upper bound on the whole run, from the per-phase bounds (a safety net: every phase
/// has its own).
fn overall_deadline(cfg: &Config, fc: FanoutConfig) -> Duration {
    open_timeout(fc.subscribers) * 2
        + SETTLE
        + cfg.run.duration
        + cfg.timeout * 2
        + DRAIN_TIMEOUT
        + Duration::from_secs(40)
}

/// A nonce for this run, from the clock and the process id.
fn run_nonce() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

/// Runs the mode and prints its report; the JSON object is the last line of stdout.
pub async fn run(cfg: Config, fc: FanoutConfig) -> anyhow::Result<ExitCode> {
    if let Some(soft) = nofile_soft_limit() {
        let need = (fc.subscribers + cfg.run.concurrency + 64) as u64;
        ensure!(
            soft >= need,
            "{} subscribers + {} publishers need about {need} file descriptors but the soft \
             RLIMIT_NOFILE is {soft}; raise it (ulimit -n) or open fewer subscribers",
            fc.subscribers,
            cfg.run.concurrency
        );
    }
    let deadline = overall_deadline(&cfg, fc);
    eprintln!(
        "loadtests: {NAME} against {} with {} subscribers, {} msg/s for {:?} with up to {} \
         publishes in flight (overall deadline {deadline:?})",
        cfg.target.base, fc.subscribers, fc.rate, cfg.run.duration, cfg.run.concurrency
    );
    let outcome = match tokio::time::timeout(deadline, phases(&cfg, fc)).await {
        Ok(r) => r?,
        Err(_) => bail!("the run did not finish within its overall deadline of {deadline:?}"),
    };
    let j = report(&cfg, fc, &outcome);
    print_table(&j, &outcome);
    // The JSON object is always the last line of stdout.
    println!("{j}");
    if outcome.connected == 0 || outcome.published.acked == 0 || outcome.received == 0 {
        eprintln!("loadtests: {NAME} did not produce its numbers");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn phases(cfg: &Config, fc: FanoutConfig) -> anyhow::Result<Outcome> {
    let ctx = Arc::new(Ctx::new(
        cfg.target.base.clone(),
        cfg.db.clone(),
        &cfg.token,
        cfg.timeout,
        cfg.run.concurrency,
    )?);
    let rss = fc.server_pid.map(RssSampler::start).transpose()?;
    let n = fc.subscribers;
    let shared = Arc::new(Shared::new(n, run_nonce()));
    let mut errors = ErrorLog::default();

    // 1. Open the streams.
    let req = Arc::new(
        StreamRequest::new(
            cfg,
            Method::GET,
            &format!("/api/v1/db/{}/events/stream?{FILTER_QUERY}", cfg.db),
            None,
        )
        .await?,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let open_sem = Arc::new(Semaphore::new(OPEN_PARALLELISM));
    let mut tasks = JoinSet::new();
    let mut handles: Vec<AbortHandle> = Vec::with_capacity(n);
    eprintln!("loadtests: opening {n} subscriber streams");
    let open_start = Instant::now();
    for idx in 0..n {
        handles.push(tasks.spawn(subscriber(
            idx,
            Arc::clone(&req),
            Arc::clone(&shared),
            Arc::clone(&open_sem),
            stop_rx.clone(),
        )));
    }
    let open_deadline = open_start + open_timeout(n);
    loop {
        let pending = (0..n)
            .filter(|&i| {
                !shared.headed[i].load(Ordering::SeqCst) && !shared.ended[i].load(Ordering::SeqCst)
            })
            .count();
        if pending == 0 || Instant::now() >= open_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_s = open_start.elapsed().as_secs_f64();
    let headed = (0..n)
        .filter(|&i| shared.headed[i].load(Ordering::SeqCst))
        .count();
    eprintln!(
        "loadtests:   {headed}/{n} streams answered 200 in {open_s:.2} s ({} retried opens)",
        shared.open_retries.load(Ordering::SeqCst)
    );

    // 2. Warm-up: until every open stream has seen a warm-up message.
    let ready_start = Instant::now();
    let ready_deadline = ready_start + open_timeout(n);
    let mut last_warmup: Option<Instant> = None;
    loop {
        let waiting = (0..n)
            .filter(|&i| {
                shared.headed[i].load(Ordering::SeqCst)
                    && !shared.ready[i].load(Ordering::SeqCst)
                    && !shared.ended[i].load(Ordering::SeqCst)
            })
            .count();
        let now = Instant::now();
        if headed == 0 || waiting == 0 || now >= ready_deadline {
            break;
        }
        if last_warmup.is_none_or(|t| now >= t + WARMUP_EVERY) {
            last_warmup = Some(now);
            let (result, _) = publish(&ctx, &shared, "bench/warmup", WARMUP_SEQ).await;
            judge(&mut errors, &result);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_s = ready_start.elapsed().as_secs_f64();
    // Give up on the streams that are not live in time.
    let mut late = 0u64;
    for (idx, h) in handles.iter().enumerate() {
        if !shared.ready[idx].load(Ordering::SeqCst) && !shared.ended[idx].load(Ordering::SeqCst) {
            h.abort();
            late += 1;
        }
    }
    errors.add("sub_not_ready", late, || {
        format!(
            "a subscriber was not open and live within {:?} + {:?}",
            open_timeout(n),
            open_timeout(n)
        )
    });
    let connected = shared.ready_count.load(Ordering::SeqCst);
    eprintln!("loadtests:   {connected}/{n} subscribers live after {ready_s:.2} s of warm-up");

    // 3. The timed phase.
    let mut published = Published::default();
    let mut drain_s = 0.0;
    if connected > 0 {
        tokio::time::sleep(SETTLE).await;
        eprintln!(
            "loadtests: publishing {} msg/s for {:?} to {connected} subscribers",
            fc.rate, cfg.run.duration
        );
        published = publish_phase(
            &ctx,
            &shared,
            fc.rate,
            cfg.run.duration,
            cfg.run.concurrency,
        )
        .await;
        eprintln!(
            "loadtests:   {} of {} sent, {} acknowledged in {:.2} s (max {:.1} ms behind \
             schedule)",
            published.sent,
            published.target,
            published.acked,
            published.elapsed.as_secs_f64(),
            published.max_lag.as_secs_f64() * 1000.0
        );

        // 4. Drain: every live subscriber has every acknowledged message, or time is up.
        let drain_start = Instant::now();
        loop {
            let behind = (0..n)
                .filter(|&i| {
                    shared.ready[i].load(Ordering::SeqCst)
                        && !shared.ended[i].load(Ordering::SeqCst)
                        && shared.received[i].0.load(Ordering::Relaxed) < published.acked
                })
                .count();
            if behind == 0 {
                break;
            }
            if drain_start.elapsed() >= DRAIN_TIMEOUT {
                eprintln!(
                    "loadtests:   {behind} subscribers still missing messages after {DRAIN_TIMEOUT:?}"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drain_s = drain_start.elapsed().as_secs_f64();
    }
    let rss_end = rss.as_ref().and_then(RssSampler::sample);

    // Close every stream, then collect the subscribers' numbers.
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        eprintln!("loadtests: some subscriber tasks did not stop in 5 s; aborting them");
        tasks.abort_all();
    }
    let rss = match rss {
        Some(r) => {
            // Give the server a moment to notice the closed connections.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = r.sample();
            Some([
                Some(r.start_kib),
                Some(r.peak_kib.load(Ordering::SeqCst)),
                rss_end,
                after,
            ])
        }
        None => None,
    };
    errors.merge(std::mem::take(&mut published.errors));
    errors.merge(std::mem::take(&mut *lock(&shared.errors)));
    for (kind, sample) in &errors.samples {
        eprintln!("loadtests: first {kind} error: {sample}");
    }
    let latency = std::mem::replace(&mut *lock(&shared.latency), new_histogram());
    Ok(Outcome {
        connected,
        open_s,
        ready_s,
        published,
        drain_s,
        received: shared.received_total(),
        latency,
        slow_consumers: shared.slow_consumers.load(Ordering::SeqCst),
        foreign: shared.foreign.load(Ordering::SeqCst),
        out_of_order: shared.out_of_order.load(Ordering::SeqCst),
        heartbeats: shared.heartbeats.load(Ordering::SeqCst),
        rss,
        errors,
    })
}

fn ms_q(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| round(h.value_at_quantile(q) as f64 / 1000.0, 3))
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| round(k as f64 / 1024.0, 1))
}

fn report(cfg: &Config, fc: FanoutConfig, o: &Outcome) -> serde_json::Value {
    let p = &o.published;
    let secs = p.elapsed.as_secs_f64();
    let ack = p.ack.as_ref();
    let rss = |i: usize| mib(o.rss.and_then(|r| r[i]));
    serde_json::json!({
        "scenario": NAME,
        "subscribers": fc.subscribers,
        "subscribers_connected": o.connected,
        "rate": fc.rate,
        "duration_s": cfg.run.duration.as_secs_f64(),
        "messages_target": p.target,
        "messages_sent": p.sent,
        "messages_acked": p.acked,
        "deliveries_expected": o.expected(),
        "deliveries_received": o.received,
        "delivery_p50_ms": ms_q(&o.latency, 0.50),
        "delivery_p99_ms": ms_q(&o.latency, 0.99),
        "delivery_max_ms": (!o.latency.is_empty()).then(|| round(o.latency.max() as f64 / 1000.0, 3)),
        "slow_consumer": o.slow_consumers,
        "server_pid": fc.server_pid,
        "server_rss_start_mib": rss(0),
        "server_rss_peak_mib": rss(1),
        "server_rss_end_mib": rss(2),
        "server_rss_after_close_mib": rss(3),
        "errors": o.errors.total,
        // Extras.
        "publishers": cfg.run.concurrency,
        "publish_rps": round(if secs > 0.0 { p.acked as f64 / secs } else { 0.0 }, 1),
        "publish_p50_ms": ack.and_then(|h| ms_q(h, 0.50)),
        "publish_p99_ms": ack.and_then(|h| ms_q(h, 0.99)),
        "publish_behind_schedule_max_ms": round(p.max_lag.as_secs_f64() * 1000.0, 3),
        "open_s": round(o.open_s, 3),
        "warmup_s": round(o.ready_s, 3),
        "drain_s": round(o.drain_s, 3),
        "foreign_messages": o.foreign,
        "out_of_order": o.out_of_order,
        "error_kinds": o.errors.kinds,
    })
}

fn print_table(j: &serde_json::Value, o: &Outcome) {
    let n = |key: &str| match j[key].as_f64() {
        Some(v) => format!("{v}"),
        None => "-".to_owned(),
    };
    println!(
        "{NAME}: {} subscribers ({} live; opened in {:.2} s, warm-up {:.2} s)",
        j["subscribers"], o.connected, o.open_s, o.ready_s
    );
    println!(
        "publish: {} of {} sent, {} acknowledged, {} msg/s (target {}), ack p50 {} ms \
         p99 {} ms, at most {} ms behind schedule",
        j["messages_sent"],
        j["messages_target"],
        j["messages_acked"],
        n("publish_rps"),
        j["rate"],
        n("publish_p50_ms"),
        n("publish_p99_ms"),
        n("publish_behind_schedule_max_ms"),
    );
    println!(
        "deliveries: {} of {} expected (drain {:.2} s); latency p50 {} ms  p99 {} ms  max {} ms",
        o.received,
        o.expected(),
        o.drain_s,
        n("delivery_p50_ms"),
        n("delivery_p99_ms"),
        n("delivery_max_ms"),
    );
    println!(
        "slow_consumer cut-offs: {}  out-of-order: {}  foreign messages: {}  heartbeats: {}",
        o.slow_consumers, o.out_of_order, o.foreign, o.heartbeats
    );
    if o.rss.is_some() {
        println!(
            "server RSS MiB: start {}  peak {}  end {}  1 s after close {}",
            n("server_rss_start_mib"),
            n("server_rss_peak_mib"),
            n("server_rss_end_mib"),
            n("server_rss_after_close_mib"),
        );
    }
    o.errors.print();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseEvent;

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc, "{plain:?}");
        }
        assert_eq!(base64_encode(&[0xfb, 0xff, 0xbf]), "+/+/");
        let all: Vec<u8> = (0..=255).collect();
        let enc = base64_encode(&all);
        assert_eq!(
            base64_decode(&enc.as_bytes()[..enc.len() - 4]).unwrap(),
            &all[..255]
        );
        assert_eq!(base64_decode(b"Zm9vYmFy").unwrap(), b"foobar");
        assert!(base64_decode(b"Zm9").is_none());
        assert!(base64_decode(b"Zg==").is_none());
        assert!(base64_decode(b"Zm\"v").is_none());
    }

    #[test]
    fn stamps_round_trip_through_the_payload() {
        let stamp = Stamp {
            sent_us: 1_234_567_890_123,
            seq: 42,
            run: 0xdead_beef_0bad_f00d,
        };
        let p = payload(stamp);
        assert_eq!(p.len(), PAYLOAD_LEN);
        assert_eq!(&p[..8], &1_234_567_890_123u64.to_le_bytes());
        let b64 = payload_base64(stamp);
        assert_eq!(b64.len(), 1368);
        assert!(b64.ends_with("=="));
        assert_eq!(decode_stamp(&b64), Some(stamp));
        // Only the first 32 characters are read.
        assert_eq!(decode_stamp(&b64[..STAMP_B64_LEN]), Some(stamp));
        assert_eq!(decode_stamp(&b64[..STAMP_B64_LEN - 1]), None);
        assert_eq!(decode_stamp("AAEC"), None);
        // Every payload differs only in its stamp.
        let other = payload(Stamp { seq: 43, ..stamp });
        assert_eq!(p[STAMP_LEN..], other[STAMP_LEN..]);
        assert_eq!(STATIC_PAYLOAD_B64.len(), 1368);
    }

    #[test]
    fn stamps_are_found_in_message_events() {
        let stamp = Stamp {
            sent_us: 99,
            seq: 7,
            run: 5,
        };
        // As the server writes it (serde_json sorts the keys).
        let data = serde_json::json!({
            "id": 12,
            "topic": "bench/3",
            "content_type": "application/octet-stream",
            "payload_base64": payload_base64(stamp),
            "created_at": "2025-01-01T00:00:00Z",
            "producer": "tok_1",
        })
        .to_string();
        assert_eq!(stamp_of(&data), Some(stamp));
        // Other spacing: the JSON fallback.
        let spaced = data.replace("\":\"", "\": \"");
        assert!(!spaced.contains("\"payload_base64\":\""));
        assert_eq!(stamp_of(&spaced), Some(stamp));
        // Foreign or short payloads.
        assert_eq!(stamp_of(r#"{"payload_base64":"AAEC"}"#), None);
        assert_eq!(stamp_of(r#"{"payload":1}"#), None);
        assert_eq!(stamp_of("not json"), None);
    }

    #[test]
    fn a_pubsub_stream_parses_into_stamped_messages() {
        let stamp = Stamp {
            sent_us: 1,
            seq: 2,
            run: 3,
        };
        let data = format!(
            r#"{{"content_type":"application/octet-stream","created_at":"2025-01-01T00:00:00Z","id":5,"payload_base64":"{}","producer":null,"topic":"bench/0"}}"#,
            payload_base64(stamp)
        );
        let stream = format!(
            "event: heartbeat\ndata: {{\"time\":\"2025-01-01T00:00:00Z\"}}\n\n\
             event: message\nid: 5\ndata: {data}\n\n\
             event: error\ndata: {{\"code\":\"slow_consumer\",\"message\":\"x\"}}\n\n"
        );
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for chunk in stream.as_bytes().chunks(100) {
            parser.feed(chunk, &mut events).unwrap();
        }
        let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(kinds, ["heartbeat", "message", "error"]);
        let SseEvent { id, data: got, .. } = &events[1];
        assert_eq!(id.as_deref(), Some("5"));
        assert_eq!(got, &data);
        assert_eq!(stamp_of(got), Some(stamp));
    }

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status = "Name:\tpatchwork\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t12 MB\n"), None);
        // This process has an RSS.
        assert!(read_rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }

    #[test]
    fn the_schedule_holds_the_rate() {
        assert_eq!(total_messages(1000, Duration::from_secs(10)), 10_000);
        assert_eq!(total_messages(3, Duration::from_millis(500)), 2);
        assert_eq!(due_offset(0, 1000), Duration::ZERO);
        assert_eq!(due_offset(1500, 1000), Duration::from_millis(1500));
    }
}
