//! `loadtests presence`: presence heartbeats per second with N members in R rooms, and the
//! latency of a presence event from the heartbeat that causes it to an SSE subscriber.
//!
//! 1. Join: every member (`m{i}` in room `r{i % R}`) sends its first heartbeat.
//! 2. One SSE subscriber per room (`GET /presence/{room}/stream`).
//! 3. Timed: `--concurrency` workers send refresh heartbeats round-robin over their members
//!    (keep-alive connections) for `--duration`; meanwhile a prober sends `--probes` state
//!    changes a second (member `probe`, state `{"t": µs}` in a room in turn) and the room's
//!    subscriber measures heartbeat-sent → `update` received.
//! 4. Idle: the same probes one at a time with nothing else running.
//!
//! Prints a table, then one JSON object as the last line of stdout.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, AUTHORIZATION, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::driver::{Body, Ctx, RequestSpec};
use crate::sse::{AbortOnDrop, SseEvent, SseParser, lock, quantile};

pub const NAME: &str = "presence";
pub const ABOUT: &str = "presence heartbeats/s at N members in R rooms, and heartbeat → SSE \
                         event latency (p50/p99) under that load and idle";

/// `loadtests presence`.
#[derive(Parser, Debug)]
#[command(name = "loadtests presence", about = ABOUT)]
pub struct PresenceArgs {
    /// Base URL of the server (loopback only).
    #[arg(long)]
    url: String,
    /// A token with presence.write and presence.read on the document (or an admin token).
    #[arg(long, env = "PATCHWORK_TOKEN", hide_env_values = true)]
    token: String,
    /// Members in total.
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Rooms the members are spread over (one SSE subscriber each).
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Heartbeat workers (one keep-alive connection each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of timed heartbeats.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Probe heartbeats (state changes) per second during the timed phase.
    #[arg(long, default_value_t = 50)]
    probes: u32,
    /// Probes sent one at a time after the timed phase.
    #[arg(long, default_value_t = 200)]
    idle_probes: usize,
    /// Document used.
    #[arg(long, default_value = "presence-load")]
    db: String,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

pub fn main(argv: Vec<OsString>) -> ExitCode {
    let args = match PresenceArgs::try_parse_from(argv) {
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
    if let Err(e) = validate(&args) {
        eprintln!("loadtests presence: {e:#}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtests presence: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(report) => {
            // The JSON object is always the last line of stdout.
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadtests presence: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(a: &PresenceArgs) -> anyhow::Result<()> {
    crate::check_url(&a.url)?;
    ensure!(
        (1..=100_000).contains(&a.members),
        "--members must be 1 to 100000"
    );
    ensure!((1..=1_000).contains(&a.rooms), "--rooms must be 1 to 1000");
    ensure!(
        a.members.div_ceil(a.rooms) < 1_000,
        "at most 999 members per room (the server's default bound is 1000, with the probe)"
    );
    ensure!(
        (1..=1_024).contains(&a.concurrency),
        "--concurrency must be 1 to 1024"
    );
    ensure!(
        a.duration.is_finite() && a.duration > 0.0 && a.duration <= 600.0,
        "--duration must be > 0 and at most 600 seconds"
    );
    ensure!(
        (1..=1_000).contains(&a.probes),
        "--probes must be 1 to 1000"
    );
    ensure!(
        a.idle_probes <= 10_000,
        "--idle-probes must be at most 10000"
    );
    ensure!(
        !a.db.is_empty()
            && a.db.len() <= 128
            && a.db
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "--db must be 1-128 characters of [A-Za-z0-9._-]"
    );
    ensure!(
        (1..=600_000).contains(&a.timeout_ms),
        "--timeout-ms must be 1 to 600000"
    );
    Ok(())
}

fn heartbeat(db: &str, room: usize, body: Value) -> RequestSpec {
    RequestSpec {
        method: Method::POST,
        path: format!("/api/v1/db/{db}/presence/r{room}/heartbeat"),
        auth: true,
        headers: &[],
        body: Body::Json(body),
    }
}

/// Latencies of probe events, in milliseconds, by phase.
#[derive(Default)]
struct Probes {
    under_load: Vec<f64>,
    idle: Vec<f64>,
}

/// Opens `GET /presence/r{room}/stream` on its own connection.
async fn open_stream(
    base: &str,
    token: &str,
    db: &str,
    room: usize,
) -> anyhow::Result<(Incoming, AbortOnDrop)> {
    let uri: Uri = base.parse().context("base URL")?;
    let authority = uri.authority().context("base URL has no host")?.clone();
    let addr = crate::sse::resolve(authority.host(), authority.port_u16().unwrap_or(80)).await?;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = AbortOnDrop::new(tokio::spawn(conn).abort_handle());
    let path = format!(
        "{}/api/v1/db/{db}/presence/r{room}/stream",
        uri.path().trim_end_matches('/')
    );
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(HOST, authority.as_str())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(request).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "the presence stream answered {}",
        resp.status()
    );
    Ok((resp.into_body(), conn))
}

/// Reads a room's stream: every probe `update` is timed against `origin`.
async fn subscriber(
    mut body: Incoming,
    origin: Instant,
    loaded: Arc<AtomicBool>,
    probes: Arc<Mutex<Probes>>,
    snapshots: Arc<AtomicU64>,
) {
    let mut parser = SseParser::default();
    let mut events: Vec<SseEvent> = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if parser.feed(&data, &mut events).is_err() {
            return;
        }
        let now = origin.elapsed().as_micros() as f64;
        for e in events.drain(..) {
            if e.event == "snapshot" {
                snapshots.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if e.event != "update" && e.event != "join" {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&e.data) else {
                continue;
            };
            if v["member"] != "probe" {
                continue;
            }
            let Some(sent) = v["state"]["t"].as_f64() else {
                continue;
            };
            let ms = (now - sent) / 1000.0;
            let mut p = lock(&probes);
            if loaded.load(Ordering::Relaxed) {
                p.under_load.push(ms);
            } else {
                p.idle.push(ms);
            }
        }
    }
}

fn summary(values: &mut [f64]) -> Value {
    values.sort_by(f64::total_cmp);
    let q = |p| quantile(values, p).map(|v| (v * 1000.0).round() / 1000.0);
    json!({
        "count": values.len(),
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "max_ms": q(1.0),
    })
}

async fn run(a: PresenceArgs) -> anyhow::Result<Value> {
    let target = crate::check_url(&a.url)?;
    crate::check_resolves_to_loopback(&target).await?;
    let timeout = Duration::from_millis(a.timeout_ms);
    let ctx = Arc::new(Ctx::new(
        target.base.clone(),
        a.db.clone(),
        &a.token,
        timeout,
        a.concurrency + 8,
    )?);
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let record_error = {
        let errors = errors.clone();
        move |kind: String| *lock(&errors).entry(kind).or_default() += 1
    };

    // 1. Join every member.
    eprintln!(
        "loadtests presence: joining {} members in {} rooms of {} at {}",
        a.members, a.rooms, a.db, target.base
    );
    let started = Instant::now();
    let mut joins = Vec::new();
    for w in 0..a.concurrency {
        let (ctx, db, record) = (ctx.clone(), a.db.clone(), record_error.clone());
        let (members, rooms, concurrency) = (a.members, a.rooms, a.concurrency);
        joins.push(tokio::spawn(async move {
            for i in (w..members).step_by(concurrency) {
                let spec = heartbeat(&db, i % rooms, json!({"member": format!("m{i}")}));
                match ctx.send(&spec).await {
                    Ok(r) if r.status == StatusCode::OK => {}
                    Ok(r) => record(format!("join_{}", r.status.as_u16())),
                    Err(e) => record(format!("join_{}", e.kind())),
                }
            }
        }));
    }
    for j in joins {
        j.await?;
    }
    let join_secs = started.elapsed().as_secs_f64();

    // 2. One subscriber per room.
    let origin = Instant::now();
    let loaded = Arc::new(AtomicBool::new(true));
    let probes: Arc<Mutex<Probes>> = Arc::default();
    let snapshots = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for room in 0..a.rooms {
        let (body, conn) = open_stream(&target.base, &a.token, &a.db, room).await?;
        let task = tokio::spawn(subscriber(
            body,
            origin,
            loaded.clone(),
            probes.clone(),
            snapshots.clone(),
        ));
        streams.push((conn, AbortOnDrop::new(task.abort_handle())));
    }
    while snapshots.load(Ordering::Relaxed) < a.rooms as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 3. Timed heartbeats, with probes.
    eprintln!(
        "loadtests presence: {} workers for {:.1} s, {} probes/s",
        a.concurrency, a.duration, a.probes
    );
    let duration = Duration::from_secs_f64(a.duration);
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for w in 0..a.concurrency {
        let (ctx, db, record) = (ctx.clone(), a.db.clone(), record_error.clone());
        let (members, rooms, concurrency) = (a.members, a.rooms, a.concurrency);
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut ok = 0u64;
            let mine: Vec<usize> = (w..members).step_by(concurrency).collect();
            if mine.is_empty() {
                return (hist, ok);
            }
            let mut k = 0;
            while Instant::now() < deadline {
                let i = mine[k % mine.len()];
                k += 1;
                let spec = heartbeat(&db, i % rooms, json!({"member": format!("m{i}")}));
                let t = Instant::now();
                match ctx.send(&spec).await {
                    Ok(r) if r.status == StatusCode::OK => {
                        ok += 1;
                        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Ok(r) => record(format!("beat_{}", r.status.as_u16())),
                    Err(e) => record(format!("beat_{}", e.kind())),
                }
            }
            (hist, ok)
        }));
    }
    let prober = {
        let (ctx, db, record) = (ctx.clone(), a.db.clone(), record_error.clone());
        let (rooms, rate) = (a.rooms, a.probes);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            let mut n = 0usize;
            while Instant::now() < deadline {
                tick.tick().await;
                probe(&ctx, &db, n % rooms, origin, &record).await;
                n += 1;
            }
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut beats = 0;
    for w in workers {
        let (h, ok) = w.await?;
        hist.add(&h)?;
        beats += ok;
    }
    let elapsed = start.elapsed().as_secs_f64();
    prober.await?;
    // Late events of the loaded phase still count as loaded.
    tokio::time::sleep(Duration::from_millis(500)).await;
    loaded.store(false, Ordering::Relaxed);

    // 4. Idle probes, one at a time.
    for n in 0..a.idle_probes {
        probe(&ctx, &a.db, n % a.rooms, origin, &record_error).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(streams);

    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let (mut under_load, mut idle) = {
        let mut p = lock(&probes);
        (
            std::mem::take(&mut p.under_load),
            std::mem::take(&mut p.idle),
        )
    };
    let rate = beats as f64 / elapsed;
    let report = json!({
        "mode": NAME,
        "members": a.members,
        "rooms": a.rooms,
        "concurrency": a.concurrency,
        "join_s": (join_secs * 1000.0).round() / 1000.0,
        "duration_s": (elapsed * 1000.0).round() / 1000.0,
        "heartbeats": beats,
        "heartbeats_per_s": rate.round(),
        "heartbeat_p50_ms": ms(0.50),
        "heartbeat_p99_ms": ms(0.99),
        "event_latency_under_load": summary(&mut under_load),
        "event_latency_idle": summary(&mut idle),
        "errors": *lock(&errors),
    });
    println!(
        "members  rooms  workers  heartbeats/s  hb_p50_ms  hb_p99_ms  ev_load_p50  ev_load_p99  \
         ev_idle_p50  ev_idle_p99"
    );
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.3}"));
    println!(
        "{:>7}  {:>5}  {:>7}  {:>12.0}  {:>9}  {:>9}  {:>11}  {:>11}  {:>11}  {:>11}",
        a.members,
        a.rooms,
        a.concurrency,
        rate,
        f(&report["heartbeat_p50_ms"]),
        f(&report["heartbeat_p99_ms"]),
        f(&report["event_latency_under_load"]["p50_ms"]),
        f(&report["event_latency_under_load"]["p99_ms"]),
        f(&report["event_latency_idle"]["p50_ms"]),
        f(&report["event_latency_idle"]["p99_ms"]),
    );
    Ok(report)
}

/// One probe: member `probe` of room `r{room}` changes its state to the send time.
async fn probe(ctx: &Ctx, db: &str, room: usize, origin: Instant, record: &impl Fn(String)) {
    let t = origin.elapsed().as_micros() as u64;
    let spec = heartbeat(db, room, json!({"member": "probe", "state": {"t": t}}));
    match ctx.send(&spec).await {
        Ok(r) if r.status == StatusCode::OK => {}
        Ok(r) => record(format!("probe_{}", r.status.as_u16())),
        Err(e) => record(format!("probe_{}", e.kind())),
    }
}
