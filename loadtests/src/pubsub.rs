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
use tokio::io::AsyncReadExt as _;
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};

use crate::driver::{Body, Ctx, Failure, Reply, RequestSpec};
use crate::sse::{
    AbortOnDrop, Dechunker, ErrorLog, EventScanner, Framing, OpenStage, RawRequest, RawStream,
    event_fields, lock, nofile_soft_limit, open_raw_stream,
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
#[cfg(test)]
pub fn decode_stamp(b64: &str) -> Option<Stamp> {
    decode_stamp_bytes(b64.as_bytes())
}

/// [`decode_stamp`] of bytes, without allocating.
fn decode_stamp_bytes(b64: &[u8]) -> Option<Stamp> {
    let mut bytes = [0u8; STAMP_LEN];
    base64_decode_into(b64.get(..STAMP_B64_LEN)?, &mut bytes)?;
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    Some(Stamp {
        sent_us: word(0),
        seq: word(1),
        run: word(2),
    })
}

/// The key before the payload in a message's JSON (no spaces: the server writes compact JSON).
static PAYLOAD_KEY: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\"payload_base64\":\""));

/// The stamp of a `message` event's data
/// (`{"content_type","created_at","id","payload_base64","producer","topic"}`), or of the start
/// of it (the subscribers only keep an event's first bytes). Looks for the `payload_base64` key
/// directly, without parsing or allocating.
pub fn stamp_in(data: &[u8]) -> Option<Stamp> {
    let at = PAYLOAD_KEY.find(data)?;
    decode_stamp_bytes(&data[at + PAYLOAD_KEY.needle().len()..])
}

/// [`stamp_in`], falling back to a full JSON parse (other spacing or escaping).
#[cfg(test)]
pub fn stamp_of(data: &str) -> Option<Stamp> {
    if let Some(stamp) = stamp_in(data.as_bytes()) {
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
#[cfg(test)]
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = vec![0; text.len() / 4 * 3];
    base64_decode_into(text, &mut out)?;
    Some(out)
}

/// Decodes `text` (whole groups of four, no padding) into `out` (exactly 3/4 of its length).
fn base64_decode_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if !text.len().is_multiple_of(4) || out.len() != text.len() / 4 * 3 {
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
    for (group, dst) in text.chunks_exact(4).zip(out.chunks_exact_mut(3)) {
        let mut n = 0u32;
        for &c in group {
            n = (n << 6) | sextet(c)?;
        }
        dst.copy_from_slice(&n.to_be_bytes()[1..]);
    }
    Some(())
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
// CPU time

/// Clock ticks per second of the CPU times in `/proc/PID/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// User + system CPU time in clock ticks from the text of `/proc/PID/stat` (fields 14 and 15;
/// the command name in field 2 may hold spaces and parentheses).
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks of `pid` (all its threads, living and ended), or of this process.
fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat_cpu_ticks(&std::fs::read_to_string(path).ok()?)
}

/// CPU times of the server (with `--server-pid`) and of this load generator at one moment.
struct CpuSample {
    at: Instant,
    server: Option<u64>,
    generator: Option<u64>,
}

/// CPU seconds used between two samples, and the wall time between them.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    wall_s: f64,
    server_s: Option<f64>,
    generator_s: Option<f64>,
}

impl CpuSample {
    fn take(server_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            server: server_pid.and_then(|p| cpu_ticks(Some(p))),
            generator: cpu_ticks(None),
        }
    }

    fn since(&self, start: &Self) -> CpuUse {
        let secs = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?) as f64 / USER_HZ);
        CpuUse {
            wall_s: self.at.duration_since(start.at).as_secs_f64(),
            server_s: secs(self.server, start.server),
            generator_s: secs(self.generator, start.generator),
        }
    }
}

/// The 1-minute load average, from `/proc/loadavg`.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Subscribers

/// Every this-many-th subscriber (0, N, 2N, …: spread over the whole range, so over every
/// stage of the server's fan-out) takes the time of every message it receives; the others
/// only count them (and check their ids and stamps), which keeps the load generator light.
pub const SAMPLE_EVERY: usize = 10;
/// Read buffer of each subscriber (reused for every read).
const SUB_READ_BUF: usize = 64 << 10;

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
    /// different threads for every read).
    received: Vec<PaddedCounter>,
    /// Messages not published by this run.
    foreign: AtomicU64,
    /// Subscribers cut off with `slow_consumer`.
    slow_consumers: AtomicU64,
    /// Message ids not above the previous one on the same stream.
    out_of_order: AtomicU64,
    heartbeats: AtomicU64,
    open_retries: AtomicU64,
    /// Publish-to-delivery latency in µs of every timed delivery to a sampled subscriber
    /// (`idx % SAMPLE_EVERY == 0`), one histogram each (locked once per read by its owner
    /// only, so the tasks can be aborted at the end without losing anything).
    latency: Vec<Mutex<Histogram<u64>>>,
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
            latency: (0..subscribers.div_ceil(SAMPLE_EVERY))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
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

    /// Every sampled subscriber's latencies, merged.
    fn latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for h in &self.latency {
            // Both auto-resize, so adding cannot fail.
            let _ = all.add(&*lock(h));
        }
        all
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

/// One subscriber task; the controller aborts it at the end (everything it counts is in
/// `shared` as it goes).
async fn subscriber(idx: usize, req: Arc<RawRequest>, shared: Arc<Shared>, open: Arc<Semaphore>) {
    let result = subscribe(idx, &req, &shared, &open).await;
    shared.ended[idx].store(true, Ordering::SeqCst);
    if let Err((kind, msg)) = result {
        shared.error(kind, || msg);
    }
}

/// What one subscriber has seen, between reads.
struct SubState {
    idx: usize,
    /// Takes the time of every message (see [`SAMPLE_EVERY`]).
    sampled: bool,
    last_id: i64,
    /// Timed messages received in the current read.
    received: u64,
    /// Set by an event that ends the stream (`slow_consumer`).
    fatal: Option<SubError>,
}

impl SubState {
    /// One event, from its first bytes.
    fn event(
        &mut self,
        shared: &Shared,
        hist: Option<&mut Histogram<u64>>,
        head: &[u8],
        cut: bool,
    ) {
        let f = event_fields(head);
        match f.event {
            b"message" => {
                if let Some(id) = f.id.and_then(parse_i64) {
                    if id <= self.last_id {
                        shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    self.last_id = self.last_id.max(id);
                }
                match stamp_in(f.data) {
                    Some(s) if s.run == shared.run && s.seq == WARMUP_SEQ => {
                        if !shared.ready[self.idx].swap(true, Ordering::SeqCst) {
                            shared.ready_count.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Some(s) if s.run == shared.run => {
                        self.received += 1;
                        if let Some(h) = hist {
                            record(h, shared.now_us().saturating_sub(s.sent_us));
                        }
                    }
                    _ => {
                        shared.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            b"heartbeat" => {
                shared.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            b"error" => {
                let data = String::from_utf8_lossy(f.data).into_owned();
                let code = if cut {
                    // Only the start is here; the code is the first key of the server's JSON.
                    memchr::memmem::find(f.data, b"\"code\":\"slow_consumer\"")
                        .map(|_| "slow_consumer".to_owned())
                } else {
                    serde_json::from_str::<serde_json::Value>(&data)
                        .ok()
                        .and_then(|j| j.get("code")?.as_str().map(str::to_owned))
                };
                if code.as_deref() == Some("slow_consumer") {
                    // The server ends the stream after this; that is not another error.
                    shared.slow_consumers.fetch_add(1, Ordering::SeqCst);
                    self.fatal.get_or_insert(("slow_consumer", data));
                } else {
                    shared.error("sub_error_event", || data);
                }
            }
            _ => {}
        }
    }
}

/// A decimal `i64` (an SSE id), without allocating.
fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

async fn subscribe(
    idx: usize,
    req: &RawRequest,
    shared: &Shared,
    open: &Semaphore,
) -> Result<(), SubError> {
    let RawStream {
        mut conn,
        framing,
        leftover,
    } = {
        let _permit = open
            .acquire()
            .await
            .map_err(|e| ("sub_open", e.to_string()))?;
        open_raw_stream(req, idx, &shared.open_retries)
            .await
            .map_err(|(stage, msg)| (open_kind(stage), msg))?
    };
    shared.headed[idx].store(true, Ordering::SeqCst);
    let mut st = SubState {
        idx,
        sampled: idx.is_multiple_of(SAMPLE_EVERY),
        last_id: i64::MIN,
        received: 0,
        fatal: None,
    };
    let mut reader = Reader {
        framing,
        dechunk: Dechunker::default(),
        scanner: EventScanner::default(),
    };
    reader.process(shared, &mut st, &leftover)?;
    drop(leftover);
    let mut buf = vec![0u8; SUB_READ_BUF];
    loop {
        let n = match conn.read(&mut buf).await {
            Ok(0) => return Err(("sub_closed", "the server closed the connection".to_owned())),
            Ok(n) => n,
            Err(e) => return Err(("sub_body", e.to_string())),
        };
        reader.process(shared, &mut st, &buf[..n])?;
    }
}

/// A subscriber's body decoding: chunked framing, then events.
struct Reader {
    framing: Framing,
    dechunk: Dechunker,
    scanner: EventScanner,
}

impl Reader {
    /// Handles the bytes of one read; an error ends the subscriber.
    fn process(&mut self, shared: &Shared, st: &mut SubState, data: &[u8]) -> Result<(), SubError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut hist = st
            .sampled
            .then(|| lock(&shared.latency[st.idx / SAMPLE_EVERY]));
        let scanner = &mut self.scanner;
        let mut on_event = |head: &[u8], cut: bool| {
            st.event(shared, hist.as_deref_mut(), head, cut);
        };
        let ended = match self.framing {
            Framing::Chunked => self
                .dechunk
                .feed(data, |d| scanner.feed(d, &mut on_event))
                .map_err(|e| ("sub_bad_chunk", e))?,
            Framing::UntilClose => {
                scanner.feed(data, &mut on_event);
                false
            }
        };
        drop(hist);
        if st.received > 0 {
            shared.received[st.idx]
                .0
                .fetch_add(std::mem::take(&mut st.received), Ordering::Relaxed);
        }
        if let Some(fatal) = st.fatal.take() {
            return Err(fatal);
        }
        if ended {
            return Err(("sub_closed", "the server ended the stream".to_owned()));
        }
        Ok(())
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
    /// CPU time over the timed phase and the drain.
    cpu: Option<CpuUse>,
    /// Live subscribers that take the time of every message.
    sampled: usize,
    /// 1-minute load average when the timed phase started.
    load_average: Option<f64>,
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
        RawRequest::get(
            cfg,
            &format!("/api/v1/db/{}/events/stream?{FILTER_QUERY}", cfg.db),
        )
        .await?,
    );
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
    let mut cpu = None;
    let mut load = None;
    if connected > 0 {
        tokio::time::sleep(SETTLE).await;
        load = load_average();
        let cpu_start = CpuSample::take(fc.server_pid);
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
        cpu = Some(CpuSample::take(fc.server_pid).since(&cpu_start));
    }
    let rss_end = rss.as_ref().and_then(RssSampler::sample);

    // Close every stream (the subscribers keep their numbers in `shared` as they go).
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
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
    let latency = shared.latency();
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
        cpu,
        sampled: (0..n)
            .step_by(SAMPLE_EVERY)
            .filter(|&i| shared.ready[i].load(Ordering::SeqCst))
            .count(),
        load_average: load,
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
    let cpu_s = |f: fn(&CpuUse) -> Option<f64>| o.cpu.as_ref().and_then(f).map(|s| round(s, 2));
    let cores = |f: fn(&CpuUse) -> Option<f64>| {
        let c = o.cpu.as_ref()?;
        let used = f(c)?;
        (c.wall_s > 0.0).then(|| round(used / c.wall_s, 2))
    };
    let per_delivery = |f: fn(&CpuUse) -> Option<f64>| {
        let s = o.cpu.as_ref().and_then(f)?;
        (o.received > 0).then(|| round(s * 1e6 / o.received as f64, 3))
    };
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
        "latency_sampled_subscribers": o.sampled,
        "latency_samples": o.latency.len(),
        "cpu_window_s": o.cpu.map(|c| round(c.wall_s, 3)),
        "server_cpu_s": cpu_s(|c| c.server_s),
        "server_cpu_cores": cores(|c| c.server_s),
        "server_cpu_us_per_delivery": per_delivery(|c| c.server_s),
        "generator_cpu_s": cpu_s(|c| c.generator_s),
        "generator_cpu_cores": cores(|c| c.generator_s),
        "generator_cpu_us_per_delivery": per_delivery(|c| c.generator_s),
        "load_average_1m": o.load_average.map(|l| round(l, 2)),
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
    if let Some(c) = &o.cpu {
        println!(
            "CPU over {:.2} s (timed phase + drain; load average {}): server {} s = {} µs per \
             delivery, load generator {} s = {} µs per delivery; latency from {} sampled \
             subscribers",
            c.wall_s,
            n("load_average_1m"),
            n("server_cpu_s"),
            n("server_cpu_us_per_delivery"),
            n("generator_cpu_s"),
            n("generator_cpu_us_per_delivery"),
            o.sampled,
        );
    }
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
    use crate::sse::{SseEvent, SseParser};

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

    /// `body` in chunked framing, cut into chunks of `size` (with an extension on the first).
    fn chunked(body: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in body.chunks(size).enumerate() {
            let ext = if i == 0 { ";x=1" } else { "" };
            out.extend_from_slice(format!("{:X}{ext}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    fn message_event(id: i64, stamp: Stamp) -> String {
        format!(
            "event: message\nid: {id}\ndata: {{\"content_type\":\"application/octet-stream\",\
             \"created_at\":\"2025-01-01T00:00:00.000Z\",\"id\":{id},\"payload_base64\":\"{}\",\
             \"producer\":null,\"topic\":\"bench/0\"}}\n\n",
            payload_base64(stamp)
        )
    }

    #[test]
    fn the_light_reader_counts_every_event_wherever_the_reads_split() {
        let run = 77;
        let stamp = |seq, run| Stamp {
            sent_us: 1,
            seq,
            run,
        };
        let mut body = String::from("event: heartbeat\ndata: {\"time\":\"x\"}\n\n");
        body.push_str(&message_event(1, stamp(WARMUP_SEQ, run)));
        body.push_str(&message_event(2, stamp(0, run)));
        body.push_str(&message_event(3, stamp(1, run)));
        body.push_str(&message_event(3, stamp(2, run))); // not above the previous id
        body.push_str(&message_event(5, stamp(3, run + 1))); // another run's
        body.push_str(
            "event: error\ndata: {\"code\":\"slow_consumer\",\"message\":\"too slow\"}\n\n",
        );
        let body = body.into_bytes();
        for (framing, wire) in [
            (Framing::Chunked, chunked(&body, 1000)),
            (Framing::Chunked, chunked(&body, 7)),
            (Framing::UntilClose, body.clone()),
        ] {
            for read in [1, 2, 3, 50, 1401, wire.len()] {
                for idx in [0, 1] {
                    let shared = Shared::new(2, run);
                    let mut st = SubState {
                        idx,
                        sampled: idx.is_multiple_of(SAMPLE_EVERY),
                        last_id: i64::MIN,
                        received: 0,
                        fatal: None,
                    };
                    let mut reader = Reader {
                        framing,
                        dechunk: Dechunker::default(),
                        scanner: EventScanner::default(),
                    };
                    let mut result = Ok(());
                    for part in wire.chunks(read) {
                        result = reader.process(&shared, &mut st, part);
                        if result.is_err() {
                            break;
                        }
                    }
                    let what = format!("{framing:?}, reads of {read}, subscriber {idx}");
                    assert_eq!(result.map_err(|e| e.0), Err("slow_consumer"), "{what}");
                    assert_eq!(shared.received_total(), 3, "{what}");
                    assert!(shared.ready[idx].load(Ordering::SeqCst), "{what}");
                    assert_eq!(shared.ready_count.load(Ordering::SeqCst), 1, "{what}");
                    assert_eq!(shared.heartbeats.load(Ordering::SeqCst), 1, "{what}");
                    assert_eq!(shared.foreign.load(Ordering::SeqCst), 1, "{what}");
                    assert_eq!(shared.out_of_order.load(Ordering::SeqCst), 1, "{what}");
                    assert_eq!(shared.slow_consumers.load(Ordering::SeqCst), 1, "{what}");
                    // Only sampled subscribers take times.
                    let samples = shared.latency().len();
                    assert_eq!(samples, if idx == 0 { 3 } else { 0 }, "{what}");
                }
            }
        }
        // The end of the chunked body ends the stream.
        let shared = Shared::new(1, run);
        let mut st = SubState {
            idx: 0,
            sampled: true,
            last_id: i64::MIN,
            received: 0,
            fatal: None,
        };
        let mut reader = Reader {
            framing: Framing::Chunked,
            dechunk: Dechunker::default(),
            scanner: EventScanner::default(),
        };
        let wire = chunked(&message_event(9, stamp(0, run)).into_bytes(), 100);
        assert_eq!(
            reader.process(&shared, &mut st, &wire).map_err(|e| e.0),
            Err("sub_closed")
        );
        assert_eq!(shared.received_total(), 1);
    }

    #[test]
    fn stamps_are_found_in_cut_event_heads() {
        let s = Stamp {
            sent_us: 123_456,
            seq: 9,
            run: 4,
        };
        let event = message_event(12, s);
        let mut scanner = EventScanner::default();
        let mut heads = Vec::new();
        scanner.feed(event.as_bytes(), |head, cut| {
            heads.push((head.to_vec(), cut))
        });
        assert_eq!(heads.len(), 1);
        let (head, cut) = &heads[0];
        assert!(*cut, "a 1 KiB message is longer than the kept head");
        let f = event_fields(head);
        assert_eq!(f.event, b"message");
        assert_eq!(f.id, Some(&b"12"[..]));
        assert_eq!(stamp_in(f.data), Some(s));
        // Too short to hold the stamp.
        assert_eq!(stamp_in(br#"{"payload_base64":"AAAA"#), None);
    }

    #[test]
    fn cpu_ticks_are_read_from_proc_stat() {
        let stat = "4242 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert!(cpu_ticks(None).is_some());
        assert!(cpu_ticks(Some(std::process::id())).is_some());
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
