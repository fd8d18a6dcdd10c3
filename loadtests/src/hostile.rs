//! `hostile`: hostile clients against a running server, one scenario after another, each with
//! the server's RSS (`VmRSS` of `--server-pid`) and the latency of a normal client that keeps
//! working meanwhile (`GET /healthz` and a point `SELECT` by primary key, alternately, on one
//! keep-alive connection from 127.0.0.1, every 10 ms).
//!
//! - `sse`: `--subscribers` SSE subscribers on `/api/v1/db/{db}/events/stream?topic=hostile/#`
//!   that read the response head and then never read again (a 4 KiB receive buffer), while
//!   `--rate` messages/s of `--payload-bytes` are published to `hostile/…`. The server must cut
//!   them off (`slow_consumer`, then the response write timeout closes the connection) rather
//!   than buffer without bound. Afterwards every hostile socket is drained: the ones that end
//!   were closed by the server.
//! - `waiters`: `--waiters` idle stream waiters (`GET /streams/queue/hostile-{k}/next` over
//!   `--waiter-topics` channels), then `--extra-waiters` more that must get a clean `503`
//!   (waiter caps, or the connection cap), held for `--hold` seconds.
//! - `slowloris`: `--slowloris` connections trickling one header byte every `--trickle-ms`,
//!   reconnecting as soon as they are cut, for `--slowloris-seconds`: each must be cut at the
//!   header read timeout.
//! - `bodies`: every route with a request body in `/openapi.json` (except the streamed relay
//!   routes and the blob upload, whose body length is the upload's) gets an oversized body,
//!   declared by `Content-Length` and sent chunked: a JSON `413 too_large` is expected; then
//!   `--body-workers` connections send oversized chunked bodies to `query/exec` as fast as they
//!   can for `--body-seconds`.
//!
//! Hostile connections come from 127.0.0.11, .12, … with at most `--per-address` each (the
//! server's default `max_connections_per_ip` is 256). Only loopback targets are accepted.
//!
//! ```text
//! loadtests hostile --url URL --token T --server-pid PID [--scenarios sse,waiters,slowloris,bodies]
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::pubsub::parse_vm_rss_kib;
use crate::sse::{lock, quantile};

pub const NAME: &str = "hostile";
pub const ABOUT: &str = "hostile clients (never-reading SSE subscribers, idle stream waiters, \
                         slowloris, oversized bodies): server RSS and a normal client's latency";

const ALL: &[&str] = &["sse", "waiters", "slowloris", "bodies"];

/// `loadtests hostile`.
#[derive(Parser, Debug)]
#[command(name = "loadtests hostile", about = ABOUT)]
pub struct HostileArgs {
    /// Base URL of the server (loopback only).
    #[arg(long)]
    url: String,
    /// Admin bearer token.
    #[arg(long, env = "PATCHWORK_TOKEN", hide_env_values = true)]
    token: String,
    /// The server's process id (its RSS is read from /proc/PID/status).
    #[arg(long)]
    server_pid: u32,
    /// Comma-separated scenarios, run in this order.
    #[arg(long, default_value = "sse,waiters,slowloris,bodies")]
    scenarios: String,
    /// Document used.
    #[arg(long, default_value = "hostile")]
    db: String,
    /// Most hostile connections per source address (127.0.0.11, .12, …).
    #[arg(long, default_value_t = 200)]
    per_address: usize,
    /// sse: never-reading subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// sse: messages published per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// sse: payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// sse: seconds of publishing (longer than the server's response write timeout, 30 s by
    /// default, plus the time the subscribers' queues take to fill).
    #[arg(long, default_value_t = 50.0)]
    sse_seconds: f64,
    /// waiters: idle stream waiters.
    #[arg(long, default_value_t = 10_000)]
    waiters: usize,
    /// waiters: channels they wait on (at most the per-channel cap each).
    #[arg(long, default_value_t = 100)]
    waiter_topics: usize,
    /// waiters: waiters beyond the first ones, each expected to be refused.
    #[arg(long, default_value_t = 100)]
    extra_waiters: usize,
    /// waiters: seconds the waiters are held.
    #[arg(long, default_value_t = 15.0)]
    hold: f64,
    /// slowloris: trickling connections.
    #[arg(long, default_value_t = 2000)]
    slowloris: usize,
    /// slowloris: milliseconds between two header bytes.
    #[arg(long, default_value_t = 1000)]
    trickle_ms: u64,
    /// slowloris: seconds of attack.
    #[arg(long, default_value_t = 25.0)]
    slowloris_seconds: f64,
    /// bodies: connections sending oversized bodies in a loop.
    #[arg(long, default_value_t = 64)]
    body_workers: usize,
    /// bodies: seconds of that loop.
    #[arg(long, default_value_t = 15.0)]
    body_seconds: f64,
    /// bodies: bytes each oversized chunked body sends at most (the server should stop
    /// reading at `max_body_bytes`).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    body_bytes: usize,
}

struct Cfg {
    args: HostileArgs,
    addr: SocketAddr,
    scenarios: Vec<String>,
}

fn validate(args: HostileArgs) -> anyhow::Result<Cfg> {
    let target = crate::check_url(&args.url)?;
    ensure!(
        target.base.matches('/').count() == 2,
        "--url must not have a path for hostile"
    );
    ensure!(!args.token.is_empty(), "hostile needs --token");
    let scenarios: Vec<String> = args.scenarios.split(',').map(str::to_owned).collect();
    for s in &scenarios {
        ensure!(
            ALL.contains(&s.as_str()),
            "unknown scenario {s:?}; known: {ALL:?}"
        );
    }
    ensure!(
        (1..=1000).contains(&args.per_address),
        "--per-address must be 1..=1000"
    );
    ensure!(args.waiter_topics >= 1, "--waiter-topics must be >= 1");
    ensure!(args.rate >= 1, "--rate must be >= 1");
    for (name, v) in [
        ("sse-seconds", args.sse_seconds),
        ("hold", args.hold),
        ("slowloris-seconds", args.slowloris_seconds),
        ("body-seconds", args.body_seconds),
    ] {
        ensure!(
            v.is_finite() && v > 0.0 && v <= 600.0,
            "--{name} must be in (0, 600]"
        );
    }
    let addr = SocketAddr::new(
        match target.host.as_str() {
            "localhost" => Ipv4Addr::LOCALHOST.into(),
            h => h.parse().context("--url host")?,
        },
        target.port,
    );
    ensure!(addr.ip().is_loopback(), "refusing: {addr} is not loopback");
    ensure!(
        addr.is_ipv4(),
        "hostile needs an IPv4 loopback --url (source addresses 127.0.0.x)"
    );
    Ok(Cfg {
        args,
        addr,
        scenarios,
    })
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1

/// The `i`-th hostile connection's source address: the (10 + i / per_address)-th after
/// 127.0.0.1, skipping x.x.x.0 and x.x.x.255.
fn source(i: usize, per_address: usize) -> Ipv4Addr {
    let n = 10 + i / per_address;
    Ipv4Addr::new(127, (n / 250) as u8, 0, (n % 250) as u8 + 1)
}

async fn connect(addr: SocketAddr, from: Ipv4Addr, rcvbuf: Option<u32>) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(SocketAddr::new(from.into(), 0))?;
    socket.connect(addr).await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One response read by `Content-Length`: status, lower-cased head, body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    /// The error code, if this is the JSON error shape.
    fn error_code(&self) -> Option<String> {
        if !self.head.contains("content-type: application/json") {
            return None;
        }
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v["error"]["message"].as_str()?;
        v["error"]["code"].as_str().map(str::to_owned)
    }
}

/// Reads the response head only (what a never-reading SSE subscriber reads).
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let status = String::from_utf8_lossy(&buf[..end])
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io::Error::other("no status line"))?;
            return Ok((status, buf));
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("head too long"));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Answer> {
    let (status, mut buf) = read_head(stream).await?;
    let end = find(&buf, b"\r\n\r\n").unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < end + 4 + len {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    let body = buf[end + 4..end + 4 + len].to_vec();
    Ok(Answer { status, head, body })
}

fn request(method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: patchwork\r\n");
    if let Some(t) = token {
        out.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    if !body.is_empty() || method != "GET" {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// One request on a fresh connection from 127.0.0.1.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Answer> {
    let mut s = connect(addr, Ipv4Addr::LOCALHOST, None).await?;
    s.write_all(&request(method, path, token, body)).await?;
    let answer = tokio::time::timeout(Duration::from_secs(30), read_answer(&mut s))
        .await
        .context("no answer within 30 s")??;
    Ok(answer)
}

// ---------------------------------------------------------------------------------------------
// Measurements

fn rss_kib(pid: u32) -> Option<u64> {
    parse_vm_rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Samples the server's RSS every 200 ms while alive; keeps the peak.
struct Rss {
    pid: u32,
    start: u64,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Rss {
    fn start(pid: u32) -> anyhow::Result<Self> {
        let start = rss_kib(pid).with_context(|| format!("cannot read VmRSS of pid {pid}"))?;
        let peak = Arc::new(AtomicU64::new(start));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            pid,
            start,
            peak,
            task,
        })
    }

    /// `(start, peak, now)` in MiB.
    fn finish(self) -> Value {
        self.task.abort();
        let now = rss_kib(self.pid).unwrap_or(0);
        self.peak.fetch_max(now, Ordering::Relaxed);
        let mib = |k: u64| (k as f64 / 1024.0 * 10.0).round() / 10.0;
        json!({
            "rss_start_mib": mib(self.start),
            "rss_peak_mib": mib(self.peak.load(Ordering::Relaxed)),
            "rss_end_mib": mib(now),
        })
    }
}

/// The normal client: `GET /healthz` and a point `SELECT`, alternately, every 10 ms, on one
/// keep-alive connection from 127.0.0.1 (reconnecting after a failure).
struct Normal {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<f64>, BTreeMap<String, u64>)>,
}

impl Normal {
    fn start(cfg: &Cfg) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, token, db) = (cfg.addr, cfg.args.token.clone(), cfg.args.db.clone());
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut conn: Option<TcpStream> = None;
            let exec_path = format!("/api/v1/db/{db}/query/exec");
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                let req = if n.is_multiple_of(2) {
                    request("GET", "/healthz", None, None)
                } else {
                    let body =
                        json!({"sql": "SELECT v FROM items WHERE id = ?", "args": [n % 999]});
                    request("POST", &exec_path, Some(&token), Some(&body))
                };
                let start = Instant::now();
                let result = async {
                    if conn.is_none() {
                        conn = Some(connect(addr, Ipv4Addr::LOCALHOST, None).await?);
                    }
                    let s = conn.as_mut().expect("connected");
                    s.write_all(&req).await?;
                    read_answer(s).await
                };
                match tokio::time::timeout(Duration::from_secs(10), result).await {
                    Ok(Ok(a)) if a.status == 200 => {
                        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok(Ok(a)) => {
                        *errors.entry(format!("status_{}", a.status)).or_default() += 1;
                        conn = None;
                    }
                    Ok(Err(_)) => {
                        *errors.entry("io".into()).or_default() += 1;
                        conn = None;
                    }
                    Err(_) => {
                        *errors.entry("timeout_10s".into()).or_default() += 1;
                        conn = None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (latencies, errors)
        });
        Self { stop, task }
    }

    async fn finish(self) -> Value {
        self.stop.store(true, Ordering::Relaxed);
        let (mut lat, errors) = self.task.await.unwrap_or_default();
        lat.sort_by(f64::total_cmp);
        let r = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
        json!({
            "normal_requests": lat.len(),
            "normal_p50_ms": r(quantile(&lat, 0.50)),
            "normal_p99_ms": r(quantile(&lat, 0.99)),
            "normal_max_ms": r(lat.last().copied()),
            "normal_errors": errors,
        })
    }
}

/// Values of the server's metrics whose line starts with one of `prefixes`.
async fn metrics(cfg: &Cfg, prefixes: &[&str]) -> Value {
    let Ok(a) = call(cfg.addr, "GET", "/metrics", None, None).await else {
        return Value::Null;
    };
    let text = String::from_utf8_lossy(&a.body).into_owned();
    let mut out = serde_json::Map::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if prefixes.iter().any(|p| line.starts_with(p))
            && let Some((k, v)) = line.rsplit_once(' ')
            && let Ok(v) = v.parse::<f64>()
        {
            out.insert(k.trim_start_matches("patchwork_").to_owned(), json!(v));
        }
    }
    Value::Object(out)
}

async fn metric(cfg: &Cfg, name: &str) -> f64 {
    metrics(cfg, &[name])
        .await
        .get(name.trim_start_matches("patchwork_"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v)
}

fn count(map: &Mutex<BTreeMap<String, u64>>, key: impl Into<String>) {
    *lock(map).entry(key.into()).or_default() += 1;
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn setup(cfg: &Cfg) -> anyhow::Result<()> {
    let db = &cfg.args.db;
    let token = Some(cfg.args.token.as_str());
    let path = format!("/api/v1/db/{db}/query/batch");
    let mut statements =
        vec![json!({"sql": "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, v TEXT)"})];
    statements.extend((0..999).map(|i| {
        json!({"sql": "INSERT OR IGNORE INTO items (id, v) VALUES (?, ?)",
               "args": [i, format!("item-{i}")]})
    }));
    let body = json!({"statements": statements});
    let a = call(cfg.addr, "POST", &path, token, Some(&body)).await?;
    ensure!(
        a.status == 200,
        "setup: {} {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    Ok(())
}

async fn sse(cfg: &Cfg) -> anyhow::Result<Value> {
    let a = &cfg.args;
    let rss = Rss::start(a.server_pid)?;
    let before = metrics(
        cfg,
        &[
            "patchwork_slow_consumer",
            "patchwork_http_connection_timeouts",
        ],
    )
    .await;
    let normal = Normal::start(cfg);
    let errors = Arc::new(Mutex::new(BTreeMap::new()));
    let req = request(
        "GET",
        &format!("/api/v1/db/{}/events/stream?topic=hostile/%23", a.db),
        Some(&a.token),
        None,
    );
    // Open: read the response head, then never read again.
    let mut opening = JoinSet::new();
    let mut sockets = Vec::with_capacity(a.subscribers);
    let opened_at = Instant::now();
    for i in 0..a.subscribers {
        let (req, errors, addr, from) = (
            req.clone(),
            errors.clone(),
            cfg.addr,
            source(i, a.per_address),
        );
        opening.spawn(async move {
            let result = async {
                let mut s = connect(addr, from, Some(4096)).await?;
                s.write_all(&req).await?;
                let (status, _) = read_head(&mut s).await?;
                io::Result::Ok((status, s))
            };
            match tokio::time::timeout(Duration::from_secs(30), result).await {
                Ok(Ok((200, s))) => Some(s),
                Ok(Ok((status, _))) => {
                    count(&errors, format!("open_status_{status}"));
                    None
                }
                Ok(Err(e)) => {
                    count(&errors, format!("open_{:?}", e.kind()));
                    None
                }
                Err(_) => {
                    count(&errors, "open_timeout");
                    None
                }
            }
        });
        if opening.len() >= 256
            && let Some(Ok(Some(s))) = opening.join_next().await
        {
            sockets.push(s);
        }
    }
    while let Some(r) = opening.join_next().await {
        if let Ok(Some(s)) = r {
            sockets.push(s);
        }
    }
    let open_s = opened_at.elapsed().as_secs_f64();
    eprintln!(
        "hostile sse: {} subscribers open in {open_s:.1} s; publishing",
        sockets.len()
    );
    // Publish at the rate on 4 keep-alive connections.
    let payload = "h".repeat(a.payload_bytes);
    let published = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + secs(a.sse_seconds);
    let mut publishers = JoinSet::new();
    for p in 0..4u64 {
        let (addr, token, db, payload, published, errors) = (
            cfg.addr,
            a.token.clone(),
            a.db.clone(),
            payload.clone(),
            published.clone(),
            errors.clone(),
        );
        let every = Duration::from_secs_f64(4.0 / f64::from(a.rate));
        publishers.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut conn: Option<TcpStream> = None;
            let mut k = 0u64;
            while Instant::now() < deadline {
                tick.tick().await;
                k += 1;
                let body = json!({"topic": format!("hostile/{p}/{k}"), "payload_text": payload});
                let req = request(
                    "POST",
                    &format!("/api/v1/db/{db}/messages"),
                    Some(&token),
                    Some(&body),
                );
                let result = async {
                    if conn.is_none() {
                        conn = Some(connect(addr, Ipv4Addr::LOCALHOST, None).await?);
                    }
                    let s = conn.as_mut().expect("connected");
                    s.write_all(&req).await?;
                    read_answer(s).await
                };
                match tokio::time::timeout(Duration::from_secs(10), result).await {
                    Ok(Ok(a)) if a.status == 201 => {
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(a)) => {
                        count(&errors, format!("publish_status_{}", a.status));
                        conn = None;
                    }
                    _ => {
                        count(&errors, "publish_failed");
                        conn = None;
                    }
                }
            }
        });
    }
    while publishers.join_next().await.is_some() {}
    // Give the last write timeouts a moment, then see which sockets the server closed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = metrics(
        cfg,
        &[
            "patchwork_slow_consumer",
            "patchwork_http_connection_timeouts",
            "patchwork_subscribers",
        ],
    )
    .await;
    let mut draining = JoinSet::new();
    let total = sockets.len();
    for mut s in sockets {
        draining.spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match s.read(&mut sink).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .is_ok()
        });
    }
    let mut closed = 0usize;
    while let Some(r) = draining.join_next().await {
        closed += usize::from(r.unwrap_or(false));
    }
    let mut out = json!({
        "subscribers_opened": total,
        "open_s": (open_s * 10.0).round() / 10.0,
        "messages_published": published.load(Ordering::Relaxed),
        "closed_by_server": closed,
        "metrics_before": before,
        "metrics_after": after,
        "errors": *lock(&errors),
    });
    merge(&mut out, normal.finish().await);
    merge(&mut out, rss.finish());
    Ok(out)
}

async fn waiters(cfg: &Cfg) -> anyhow::Result<Value> {
    let a = &cfg.args;
    let rss = Rss::start(a.server_pid)?;
    let errors = Arc::new(Mutex::new(BTreeMap::new()));
    let path = |k: usize| format!("/api/v1/db/{}/streams/queue/hostile-{k}/next", a.db);
    let mut sockets = Vec::with_capacity(a.waiters);
    let opened_at = Instant::now();
    for i in 0..a.waiters {
        match connect(cfg.addr, source(i, a.per_address), None).await {
            Ok(mut s) => {
                if s.write_all(&request(
                    "GET",
                    &path(i % a.waiter_topics),
                    Some(&a.token),
                    None,
                ))
                .await
                .is_ok()
                {
                    sockets.push(s);
                } else {
                    count(&errors, "write");
                }
            }
            Err(e) => count(&errors, format!("connect_{:?}", e.kind())),
        }
    }
    // Until the server counts them all as waiting (or 30 s).
    let mut waiting = 0.0;
    while opened_at.elapsed() < Duration::from_secs(30) {
        waiting = metric(cfg, "patchwork_stream_waiting").await;
        if waiting >= sockets.len() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let open_s = opened_at.elapsed().as_secs_f64();
    eprintln!("hostile waiters: {waiting} waiting after {open_s:.1} s; extra waiters and hold");
    let normal = Normal::start(cfg);
    // The extra ones: each should be answered at once with a clean error.
    let extra = Arc::new(Mutex::new(BTreeMap::new()));
    let mut asking = JoinSet::new();
    for j in 0..a.extra_waiters {
        let (addr, from, req, extra) = (
            cfg.addr,
            source(a.waiters + j, a.per_address),
            request("GET", &path(j % a.waiter_topics), Some(&a.token), None),
            extra.clone(),
        );
        asking.spawn(async move {
            let result = async {
                let mut s = connect(addr, from, None).await?;
                s.write_all(&req).await?;
                read_answer(&mut s).await
            };
            let key = match tokio::time::timeout(Duration::from_secs(10), result).await {
                Ok(Ok(a)) => format!(
                    "{} {}",
                    a.status,
                    a.error_code().unwrap_or_else(|| "not_json".into())
                ),
                Ok(Err(e)) => format!("io_{:?}", e.kind()),
                Err(_) => "no_answer_in_10s".into(),
            };
            count(&extra, key);
        });
    }
    while asking.join_next().await.is_some() {}
    tokio::time::sleep(secs(a.hold)).await;
    let normal = normal.finish().await;
    let held = metric(cfg, "patchwork_stream_waiting").await;
    let connections = metric(cfg, "patchwork_http_connections").await;
    drop(sockets);
    let released_at = Instant::now();
    while released_at.elapsed() < Duration::from_secs(30)
        && metric(cfg, "patchwork_stream_waiting").await > 0.0
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut out = json!({
        "waiters_sent": a.waiters,
        "waiting": waiting,
        "waiting_at_end_of_hold": held,
        "server_connections_at_end_of_hold": connections,
        "open_s": (open_s * 10.0).round() / 10.0,
        "extra_answers": *lock(&extra),
        "released_s": (released_at.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "errors": *lock(&errors),
    });
    merge(&mut out, normal);
    merge(&mut out, rss.finish());
    Ok(out)
}

async fn slowloris(cfg: &Cfg) -> anyhow::Result<Value> {
    let a = &cfg.args;
    let rss = Rss::start(a.server_pid)?;
    let normal = Normal::start(cfg);
    let cut_after = Arc::new(Mutex::new(Vec::<f64>::new()));
    let outcomes = Arc::new(Mutex::new(BTreeMap::new()));
    let deadline = Instant::now() + secs(a.slowloris_seconds);
    let mut tasks = JoinSet::new();
    for i in 0..a.slowloris {
        let (addr, from, cut_after, outcomes) = (
            cfg.addr,
            source(i, a.per_address),
            cut_after.clone(),
            outcomes.clone(),
        );
        let trickle = Duration::from_millis(a.trickle_ms);
        tasks.spawn(async move {
            // Spread the starts over one trickle interval.
            tokio::time::sleep(trickle.mul_f64(i as f64 / 2000.0 % 1.0)).await;
            let head = b"GET /healthz HTTP/1.1\r\nHost: patchwork\r\nX-Slow: ";
            while Instant::now() < deadline {
                let Ok(mut s) = connect(addr, from, None).await else {
                    count(&outcomes, "connect_failed");
                    tokio::time::sleep(trickle).await;
                    continue;
                };
                let start = Instant::now();
                let mut bytes = head.iter().chain(std::iter::repeat(&b'a'));
                loop {
                    if Instant::now() >= deadline {
                        count(&outcomes, "still_open_at_end");
                        return;
                    }
                    let b = *bytes.next().expect("endless");
                    if s.write_all(&[b]).await.is_err() {
                        count(&outcomes, "cut");
                        lock(&cut_after).push(start.elapsed().as_secs_f64());
                        break;
                    }
                    let mut buf = [0u8; 256];
                    match tokio::time::timeout(trickle, s.read(&mut buf)).await {
                        Ok(Ok(0) | Err(_)) => {
                            count(&outcomes, "cut");
                            lock(&cut_after).push(start.elapsed().as_secs_f64());
                            break;
                        }
                        Ok(Ok(_)) => {
                            count(&outcomes, "answered");
                            break;
                        }
                        Err(_) => {}
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut cuts = lock(&cut_after).clone();
    cuts.sort_by(f64::total_cmp);
    let r = |v: Option<f64>| v.map(|v| (v * 100.0).round() / 100.0);
    let mut out = json!({
        "connections": a.slowloris,
        "outcomes": *lock(&outcomes),
        "cut_after_min_s": r(cuts.first().copied()),
        "cut_after_p50_s": r(quantile(&cuts, 0.5)),
        "cut_after_max_s": r(cuts.last().copied()),
        "metrics": metrics(cfg, &["patchwork_http_connection_timeouts"]).await,
    });
    merge(&mut out, normal.finish().await);
    merge(&mut out, rss.finish());
    Ok(out)
}

/// Routes with a request body in the OpenAPI document, minus the streamed relay and the blob
/// upload: `(METHOD, concrete path, template)`.
async fn body_routes(cfg: &Cfg) -> anyhow::Result<Vec<(String, String, String)>> {
    let a = call(cfg.addr, "GET", "/openapi.json", None, None).await?;
    ensure!(a.status == 200, "/openapi.json: {}", a.status);
    let doc: Value = serde_json::from_slice(&a.body).context("/openapi.json")?;
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        let streamed = path.contains("/streams/")
            || ["/public/", "/p/", "/u/"]
                .iter()
                .any(|p| path.starts_with(p))
            || path.contains("/blobs/upload/");
        if streamed {
            continue;
        }
        for method in ["post", "put", "patch", "delete", "get"] {
            if item[method].get("requestBody").is_some() {
                let concrete = path
                    .replace("{db_id}", &cfg.args.db)
                    .replace("{endpoint}", "hook")
                    .replace("{hash}", &"0".repeat(64))
                    .replace("{id}", "0")
                    .replace("{rest}", "x")
                    .replace("{file}", "x");
                out.push((method.to_ascii_uppercase(), concrete, path.clone()));
            }
        }
    }
    Ok(out)
}

/// Sends an oversized body (`declared`: a `Content-Length` of 1 GiB and nothing after the head;
/// else chunked, up to `max_bytes`) and reads the answer while it goes out.
async fn oversized(
    addr: SocketAddr,
    token: &str,
    from: Ipv4Addr,
    method: &str,
    path: &str,
    declared: bool,
    max_bytes: usize,
) -> String {
    let framing = if declared {
        "Content-Length: 1073741824"
    } else {
        "Transfer-Encoding: chunked"
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: patchwork\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{framing}\r\n\r\n"
    );
    let Ok(mut s) = connect(addr, from, None).await else {
        return "connect_failed".into();
    };
    if s.write_all(head.as_bytes()).await.is_err() {
        return "write_failed".into();
    }
    let (mut read, mut write) = s.into_split();
    let writer = tokio::spawn(async move {
        if declared {
            return;
        }
        let chunk = format!("10000\r\n{}\r\n", "[".repeat(0x10000));
        for _ in 0..max_bytes.div_ceil(0x10000) {
            if write.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = write.write_all(b"0\r\n\r\n").await;
    });
    let key = match tokio::time::timeout(Duration::from_secs(30), read_answer(&mut read)).await {
        Ok(Ok(a)) => format!(
            "{} {}",
            a.status,
            a.error_code().unwrap_or_else(|| "not_json".into())
        ),
        Ok(Err(e)) => format!("io_{:?}", e.kind()),
        Err(_) => "no_answer_in_30s".into(),
    };
    writer.abort();
    key
}

async fn bodies(cfg: &Cfg) -> anyhow::Result<Value> {
    let a = &cfg.args;
    let routes = body_routes(cfg).await?;
    let mut per_route = serde_json::Map::new();
    let mut failures = Vec::new();
    for (method, path, template) in &routes {
        for declared in [true, false] {
            let key = oversized(
                cfg.addr,
                &a.token,
                Ipv4Addr::LOCALHOST,
                method,
                path,
                declared,
                8 << 20,
            )
            .await;
            let label = format!(
                "{method} {template} ({})",
                if declared { "declared" } else { "chunked" }
            );
            if key != "413 too_large" {
                failures.push(format!("{label}: {key}"));
            }
            per_route.insert(label, json!(key));
        }
    }
    eprintln!(
        "hostile bodies: {} routes checked, {} failures; flood with {} workers",
        routes.len(),
        failures.len(),
        a.body_workers
    );
    // The flood: oversized chunked bodies to query/exec, as fast as the server answers.
    let rss = Rss::start(a.server_pid)?;
    let normal = Normal::start(cfg);
    let outcomes = Arc::new(Mutex::new(BTreeMap::new()));
    let deadline = Instant::now() + secs(a.body_seconds);
    let path = format!("/api/v1/db/{}/query/exec", a.db);
    let mut tasks = JoinSet::new();
    for w in 0..a.body_workers {
        let (path, outcomes, from, max, addr, token) = (
            path.clone(),
            outcomes.clone(),
            source(w, a.per_address),
            a.body_bytes,
            cfg.addr,
            a.token.clone(),
        );
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let key =
                    oversized(addr, &token, from, "POST", &path, n.is_multiple_of(4), max).await;
                count(&outcomes, key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut out = json!({
        "routes_checked": routes.len(),
        "route_failures": failures,
        "routes": per_route,
        "flood_workers": a.body_workers,
        "flood_outcomes": *lock(&outcomes),
    });
    merge(&mut out, normal.finish().await);
    merge(&mut out, rss.finish());
    Ok(out)
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

async fn run(cfg: Cfg) -> anyhow::Result<Value> {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("hostile: could not raise RLIMIT_NOFILE: {e}");
    }
    let need = cfg
        .args
        .subscribers
        .max(cfg.args.waiters + cfg.args.extra_waiters)
        .max(cfg.args.slowloris)
        + 256;
    let soft = crate::sse::nofile_soft_limit().unwrap_or(0);
    if soft < need as u64 {
        bail!("RLIMIT_NOFILE is {soft}, below the {need} descriptors needed; raise the hard limit");
    }
    setup(&cfg).await?;
    let mut report = serde_json::Map::new();
    for name in &cfg.scenarios {
        eprintln!("hostile: scenario {name}");
        let r = match name.as_str() {
            "sse" => sse(&cfg).await?,
            "waiters" => waiters(&cfg).await?,
            "slowloris" => slowloris(&cfg).await?,
            _ => bodies(&cfg).await?,
        };
        print_summary(name, &r);
        report.insert(name.clone(), r);
        // Let the server settle (closed sockets, freed buffers) before the next one.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok(Value::Object(report))
}

fn print_summary(name: &str, r: &Value) {
    let keys = [
        "rss_start_mib",
        "rss_peak_mib",
        "rss_end_mib",
        "normal_requests",
        "normal_p50_ms",
        "normal_p99_ms",
        "normal_max_ms",
    ];
    let cols: Vec<(&str, String)> = keys.iter().map(|k| (*k, r[*k].to_string())).collect();
    println!("== {name}");
    crate::print_columns(&cols);
    for (k, v) in r.as_object().into_iter().flatten() {
        if !keys.contains(&k.as_str()) && k != "routes" {
            println!("  {k}: {v}");
        }
    }
}

pub fn main(argv: Vec<OsString>) -> ExitCode {
    let args = match HostileArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let cfg = match validate(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadtests hostile: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtests hostile: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(report) => {
            // The JSON object is always the last line of stdout.
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadtests hostile: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_loopback_addresses() {
        assert_eq!(source(0, 200), Ipv4Addr::new(127, 0, 0, 11));
        assert_eq!(source(199, 200), Ipv4Addr::new(127, 0, 0, 11));
        assert_eq!(source(200, 200), Ipv4Addr::new(127, 0, 0, 12));
        assert!(source(1_000_000, 1).is_loopback());
    }

    #[test]
    fn arguments_are_checked() {
        let parse = |extra: &[&str]| {
            let mut v = vec!["hostile", "--token", "t", "--server-pid", "1"];
            v.extend_from_slice(extra);
            validate(HostileArgs::try_parse_from(v).unwrap())
        };
        assert!(parse(&["--url", "http://127.0.0.1:8080"]).is_ok());
        assert!(parse(&["--url", "http://10.0.0.1:8080"]).is_err());
        assert!(parse(&["--url", "http://127.0.0.1:8080", "--scenarios", "sse,nope"]).is_err());
        assert!(parse(&["--url", "http://127.0.0.1:8080", "--sse-seconds", "0"]).is_err());
    }
}
