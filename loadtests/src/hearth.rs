//! `loadtests hearth`: Hearth's promise that the whole server stays small with 20 rooms × 20
//! members chatting, and the latency of a message from its insert to the other members' views.
//!
//! 1. Rooms: `--rooms` documents `hearth-load-{i}` with Hearth's own schema (the migration in
//!    `web/apps/hearth/schema.js`, compiled in: one copy), its expiry rule, the `room` row and
//!    the owner's `members` row (the `--token`'s caller is every room's owner).
//! 2. Members: per room, the owner plus `--members - 1` guests, each redeeming an invite
//!    (`POST /invites`, then `/invites/redeem`: run the server with `pow_difficulty` 0) and
//!    inserting their own `members` row, as the app does.
//! 3. Per member, as the app keeps open: a query watch on the newest 200 messages and the room's
//!    presence stream; a heartbeat every `--heartbeat-secs` (first one at once).
//! 4. Timed (`--duration`): each member says something every `--message-secs` on average
//!    (jittered); the body carries its send time, and every watcher in the room times the
//!    update that first shows it. Meanwhile the server's RSS is sampled from
//!    `/proc/{--server-pid}/status` once a second.
//!
//! Prints a table, then one JSON object as the last line of stdout.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::sse::{AbortOnDrop, SseEvent, SseParser, lock, quantile};

pub const NAME: &str = "hearth";
pub const ABOUT: &str = "Hearth rooms × members chatting (schema from web/apps/hearth/schema.js, \
                         invites, watches, presence): server RSS and message latency";

/// Hearth's schema module; the migration SQL is its `V1` template literal.
const SCHEMA_JS: &str = include_str!("../../web/apps/hearth/schema.js");

/// `loadtests hearth`.
#[derive(Parser, Debug)]
#[command(name = "loadtests hearth", about = ABOUT)]
pub struct HearthArgs {
    /// Base URL of the server (loopback only).
    #[arg(long)]
    url: String,
    /// An admin token (creates the rooms, owns them, mints the invites).
    #[arg(long, env = "PATCHWORK_TOKEN", hide_env_values = true)]
    token: String,
    /// The server's process id, for its RSS (`/proc/{pid}/status`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Rooms (documents).
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    /// Members per room, the owner included (Hearth allows 20).
    #[arg(long, default_value_t = 20)]
    members: usize,
    /// Seconds of chatting.
    #[arg(long, default_value_t = 120.0)]
    duration: f64,
    /// Mean seconds between one member's messages.
    #[arg(long, default_value_t = 20.0)]
    message_secs: f64,
    /// Seconds between one member's presence heartbeats (Hearth: 30).
    #[arg(long, default_value_t = 30.0)]
    heartbeat_secs: f64,
    /// Message life in the rooms (`ttl_secs`, ≥ 5): messages expire during the run.
    #[arg(long, default_value_t = 60)]
    ttl_secs: u64,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

pub fn main(argv: Vec<OsString>) -> ExitCode {
    let args = match HearthArgs::try_parse_from(argv) {
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
        eprintln!("loadtests hearth: {e:#}");
        return ExitCode::from(2);
    }
    // Two streams per member, plus the pool.
    let _ = rlimit::increase_nofile_limit(65_536);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtests hearth: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadtests hearth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(a: &HearthArgs) -> anyhow::Result<()> {
    crate::check_url(&a.url)?;
    ensure!((1..=200).contains(&a.rooms), "--rooms must be 1 to 200");
    ensure!((1..=20).contains(&a.members), "--members must be 1 to 20");
    ensure!(
        a.duration.is_finite() && a.duration > 0.0 && a.duration <= 3_600.0,
        "--duration must be > 0 and at most 3600 seconds"
    );
    for (name, v) in [
        ("--message-secs", a.message_secs),
        ("--heartbeat-secs", a.heartbeat_secs),
    ] {
        ensure!(
            v.is_finite() && (0.05..=3_600.0).contains(&v),
            "{name} must be 0.05 to 3600"
        );
    }
    ensure!(
        (5..=604_800).contains(&a.ttl_secs),
        "--ttl-secs must be 5 to 604800"
    );
    ensure!(
        (1..=600_000).contains(&a.timeout_ms),
        "--timeout-ms must be 1 to 600000"
    );
    Ok(())
}

/// The migration SQL of `schema.js`: the template literal `const V1 = `…`;`.
pub fn schema_sql(js: &str) -> anyhow::Result<&str> {
    let start = js
        .find("const V1 = `")
        .context("schema.js has no `const V1 = \\``")?
        + "const V1 = `".len();
    let len = js[start..]
        .find('`')
        .context("schema.js: V1 is not closed")?;
    let sql = js[start..start + len].trim();
    ensure!(
        !sql.contains("${"),
        "schema.js: V1 interpolates; not plain SQL"
    );
    Ok(sql)
}

/// JSON requests with any bearer token, on a keep-alive pool.
struct Api {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = token {
            b = b.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(v) => {
                b = b.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v)?)
            }
            None => Bytes::new(),
        };
        let req = b.body(Full::new(bytes))?;
        let exchange = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            let v = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
            };
            anyhow::Ok((status, v))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .context("request timed out")?
    }

    /// `call`, requiring a 2xx answer.
    async fn ok(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (s, v) = self.call(method.clone(), path, token, body).await?;
        ensure!(s.is_success(), "{method} {path}: {s} {v}");
        Ok(v)
    }
}

/// Opens an SSE stream on its own connection.
async fn open_sse(
    base: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(Incoming, AbortOnDrop)> {
    let uri: Uri = base.parse().context("base URL")?;
    let authority = uri.authority().context("base URL has no host")?.clone();
    let addr = crate::sse::resolve(authority.host(), authority.port_u16().unwrap_or(80)).await?;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = AbortOnDrop::new(tokio::spawn(conn).abort_handle());
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{}{path}", uri.path().trim_end_matches('/')))
        .header(HOST, authority.as_str())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(ACCEPT, "text/event-stream");
    let bytes = match body {
        Some(v) => {
            b = b.header(CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(v)?)
        }
        None => Bytes::new(),
    };
    let resp = sender.send_request(b.body(Full::new(bytes))?).await?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        bail!("{path}: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok((resp.into_body(), conn))
}

/// One member: who they are and where.
#[derive(Clone)]
struct Member {
    room: usize,
    index: usize,
    token: String,
    /// `patchwork_caller()` for them (the presence member id, as in the app).
    id: String,
    name: String,
}

fn db_of(room: usize) -> String {
    format!("hearth-load-{room}")
}

fn slug_of(room: usize) -> String {
    format!("load-{room}")
}

const WATCH_SQL: &str = "SELECT id, kind, body, author, author_name, created_at, edited_at, \
                         expires_at FROM messages ORDER BY id DESC LIMIT 200";

/// Latencies (ms) and counters shared by the tasks.
#[derive(Default)]
struct Shared {
    latencies: Mutex<Vec<f64>>,
    sent: AtomicU64,
    heartbeats: AtomicU64,
    snapshots: AtomicU64,
    presence_snapshots: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn error(&self, kind: impl Into<String>) {
        *lock(&self.errors).entry(kind.into()).or_default() += 1;
    }
}

/// Reads a member's watch: each message body `t={µs} …` seen for the first time is timed.
async fn watcher(
    mut body: Incoming,
    origin: Instant,
    timing: Arc<AtomicBool>,
    shared: Arc<Shared>,
) {
    let mut parser = SseParser::default();
    let mut events: Vec<SseEvent> = Vec::new();
    let mut newest: i64 = i64::MIN;
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if parser.feed(&data, &mut events).is_err() {
            shared.error("watch_bad_event");
            return;
        }
        let now = origin.elapsed().as_micros() as f64;
        for e in events.drain(..) {
            if e.event != "snapshot" && e.event != "update" {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&e.data) else {
                continue;
            };
            let rows = v["rows"].as_array().cloned().unwrap_or_default();
            let mut top = newest;
            for row in &rows {
                let Some(id) = row[0].as_i64() else { continue };
                top = top.max(id);
                if e.event == "snapshot" || id <= newest || !timing.load(Ordering::Relaxed) {
                    continue;
                }
                let sent = row[2]
                    .as_str()
                    .and_then(|b| b.strip_prefix("t="))
                    .and_then(|b| b.split(' ').next())
                    .and_then(|t| t.parse::<f64>().ok());
                if let Some(sent) = sent {
                    lock(&shared.latencies).push((now - sent) / 1000.0);
                }
            }
            if e.event == "snapshot" {
                shared.snapshots.fetch_add(1, Ordering::Relaxed);
            }
            newest = top;
        }
    }
    shared.error("watch_closed");
}

/// Reads a member's presence stream (the app draws it; here it is only kept open and drained).
async fn presence_reader(mut body: Incoming, shared: Arc<Shared>) {
    let mut parser = SseParser::default();
    let mut events: Vec<SseEvent> = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if parser.feed(&data, &mut events).is_err() {
            shared.error("presence_bad_event");
            return;
        }
        for e in events.drain(..) {
            if e.event == "snapshot" {
                shared.presence_snapshots.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    shared.error("presence_closed");
}

/// The server's `VmRSS` and `VmHWM` in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// A small, seedable jitter in [0.5, 1.5): members do not speak in lockstep.
fn jitter(seed: &mut u64) -> f64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    0.5 + (*seed % 1_000_000) as f64 / 1_000_000.0
}

async fn setup_room(
    api: &Api,
    a: &HearthArgs,
    sql: &str,
    room: usize,
) -> anyhow::Result<Vec<Member>> {
    let db = db_of(room);
    let slug = slug_of(room);
    let admin = Some(a.token.as_str());
    let base = format!("/api/v1/db/{db}");
    api.ok(Method::POST, &format!("{base}/_open"), admin, None)
        .await?;
    api.ok(
        Method::POST,
        &format!("{base}/migrations"),
        admin,
        Some(&json!({"migrations": [{"version": 1, "name": "hearth room v1", "sql": sql}]})),
    )
    .await?;
    api.ok(
        Method::PUT,
        &format!("{base}/expiry"),
        admin,
        Some(&json!({"rules": [{"table": "messages", "column": "expires_at", "format": "unix_seconds"}]})),
    )
    .await?;
    let exec = |sql: &'static str, args: Value| json!({"sql": sql, "args": args});
    api.ok(
        Method::POST,
        &format!("{base}/query/exec"),
        admin,
        Some(&exec(
            "INSERT INTO room (slug, name, owner, ttl_secs, max_participants) \
             VALUES (?, ?, patchwork_caller(), ?, 20)",
            json!([slug, format!("Load {room}"), a.ttl_secs]),
        )),
    )
    .await?;
    api.ok(
        Method::POST,
        &format!("{base}/query/exec"),
        admin,
        Some(&exec(
            "INSERT INTO members (subject, name, role) \
             VALUES (patchwork_caller(), patchwork_caller_name(), 'owner')",
            json!([]),
        )),
    )
    .await?;
    let me = api
        .ok(
            Method::POST,
            &format!("{base}/query/exec"),
            admin,
            Some(&exec(
                "SELECT patchwork_caller(), patchwork_caller_name()",
                json!([]),
            )),
        )
        .await?;
    let mut members = vec![Member {
        room,
        index: 0,
        token: a.token.clone(),
        id: me["rows"][0][0].as_str().unwrap_or("owner").to_owned(),
        name: me["rows"][0][1].as_str().unwrap_or("owner").to_owned(),
    }];
    if a.members > 1 {
        let invite = api
            .ok(
                Method::POST,
                &format!("{base}/invites"),
                admin,
                Some(&json!({
                    "room": slug,
                    "scopes": ["query.read", "query.write",
                        {"action": "presence.read", "resource_prefix": slug},
                        {"action": "presence.write", "resource_prefix": slug}],
                    "ttl_secs": 86400,
                    "max_uses": a.members - 1,
                })),
            )
            .await?;
        let link = invite["token"].as_str().context("invite token")?.to_owned();
        for index in 1..a.members {
            let name = format!("guest {room}.{index}");
            let body = json!({"token": link, "member": name});
            // Redemption is rate limited per IP: back off on 429.
            let r = loop {
                let (s, v) = api
                    .call(Method::POST, "/api/v1/invites/redeem", None, Some(&body))
                    .await?;
                if s == StatusCode::TOO_MANY_REQUESTS {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                ensure!(
                    s == StatusCode::OK,
                    "redeem: {s} {v} (run the server with PATCHWORK_POW_DIFFICULTY=0)"
                );
                break v;
            };
            let token = r["token"].as_str().context("redeemed token")?.to_owned();
            api.ok(
                Method::POST,
                &format!("{base}/query/exec"),
                Some(&token),
                Some(&exec(
                    "INSERT INTO members (subject, name, role, vouched_by) VALUES \
                     (patchwork_caller(), patchwork_caller_name(), 'guest', (SELECT owner FROM room))",
                    json!([]),
                )),
            )
            .await?;
            members.push(Member {
                room,
                index,
                id: r["token_id"].as_str().context("token_id")?.to_owned(),
                token,
                name,
            });
        }
    }
    Ok(members)
}

async fn run(a: HearthArgs) -> anyhow::Result<Value> {
    let target = crate::check_url(&a.url)?;
    crate::check_resolves_to_loopback(&target).await?;
    let sql = schema_sql(SCHEMA_JS)?.to_owned();
    let timeout = Duration::from_millis(a.timeout_ms);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let api = Arc::new(Api {
        base: target.base.clone(),
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(connector),
        timeout,
    });
    let rss_start = a.server_pid.and_then(rss_kib);

    // 1–2. Rooms and members.
    eprintln!(
        "loadtests hearth: {} rooms × {} members at {}",
        a.rooms, a.members, target.base
    );
    let started = Instant::now();
    let mut members = Vec::new();
    for room in 0..a.rooms {
        members.extend(
            setup_room(&api, &a, &sql, room)
                .await
                .with_context(|| format!("setting up room {room}"))?,
        );
    }
    let setup_secs = started.elapsed().as_secs_f64();
    let rss_setup = a.server_pid.and_then(rss_kib);

    // 3. Streams: a watch and a presence stream per member.
    let origin = Instant::now();
    let timing = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared::default());
    let mut held = Vec::new();
    for m in &members {
        let db = db_of(m.room);
        let (body, conn) = open_sse(
            &target.base,
            &m.token,
            Method::POST,
            &format!("/api/v1/db/{db}/query/watch"),
            Some(&json!({"sql": WATCH_SQL})),
        )
        .await
        .context("opening a watch")?;
        let task = tokio::spawn(watcher(body, origin, timing.clone(), shared.clone()));
        held.push((conn, AbortOnDrop::new(task.abort_handle())));
        let (body, conn) = open_sse(
            &target.base,
            &m.token,
            Method::GET,
            &format!("/api/v1/db/{db}/presence/{}/stream", slug_of(m.room)),
            None,
        )
        .await
        .context("opening a presence stream")?;
        let task = tokio::spawn(presence_reader(body, shared.clone()));
        held.push((conn, AbortOnDrop::new(task.abort_handle())));
    }
    let n = members.len() as u64;
    let wait_until = Instant::now() + Duration::from_secs(30);
    while shared.snapshots.load(Ordering::Relaxed) < n
        || shared.presence_snapshots.load(Ordering::Relaxed) < n
    {
        ensure!(
            Instant::now() < wait_until,
            "not every stream delivered its snapshot within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_streams = a.server_pid.and_then(rss_kib);

    // 4. Chat: heartbeats and messages per member; RSS sampled meanwhile.
    eprintln!(
        "loadtests hearth: {} members chatting for {:.0} s (a message every ~{} s each, \
         heartbeats every {} s)",
        members.len(),
        a.duration,
        a.message_secs,
        a.heartbeat_secs
    );
    timing.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration);
    let mut tasks = Vec::new();
    for m in members.clone() {
        let (api, shared) = (api.clone(), shared.clone());
        let (msg_secs, hb_secs) = (a.message_secs, a.heartbeat_secs);
        tasks.push(tokio::spawn(async move {
            let db = db_of(m.room);
            let beat_path = format!("/api/v1/db/{db}/presence/{}/heartbeat", slug_of(m.room));
            let exec_path = format!("/api/v1/db/{db}/query/exec");
            let mut seed = (m.room as u64 + 1) * 1_000_003 + m.index as u64 * 7_919 + 1;
            let now = Instant::now();
            let mut next_beat = now;
            let mut next_msg = now + Duration::from_secs_f64(msg_secs * jitter(&mut seed));
            let mut said = 0u64;
            loop {
                let next = next_beat.min(next_msg);
                if next >= deadline {
                    break;
                }
                tokio::time::sleep_until(next.into()).await;
                if next == next_beat {
                    next_beat += Duration::from_secs_f64(hb_secs);
                    let body = json!({"member": m.id, "state": {"name": m.name,
                        "role": if m.index == 0 { "owner" } else { "guest" }}});
                    match api
                        .call(Method::POST, &beat_path, Some(&m.token), Some(&body))
                        .await
                    {
                        Ok((s, _)) if s.is_success() => {
                            shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((s, _)) => shared.error(format!("heartbeat_{}", s.as_u16())),
                        Err(_) => shared.error("heartbeat_transport"),
                    }
                } else {
                    next_msg += Duration::from_secs_f64(msg_secs * jitter(&mut seed));
                    said += 1;
                    let t = origin.elapsed().as_micros();
                    let body = json!({
                        "sql": "INSERT INTO messages (kind, body) VALUES ('text', ?)",
                        "args": [format!("t={t} message {said} from {} — the quick brown fox \
                                          jumps over the lazy dog", m.name)],
                    });
                    match api
                        .call(Method::POST, &exec_path, Some(&m.token), Some(&body))
                        .await
                    {
                        Ok((s, _)) if s.is_success() => {
                            shared.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((s, v)) => {
                            shared.error(format!("message_{}", s.as_u16()));
                            if s.is_server_error() {
                                eprintln!("loadtests hearth: message: {s} {v}");
                            }
                        }
                        Err(_) => shared.error("message_transport"),
                    }
                }
            }
        }));
    }
    let mut rss_samples: Vec<u64> = Vec::new();
    let mut hwm = 0;
    let chat_start = Instant::now();
    while Instant::now() < deadline {
        if let Some((rss, peak)) = a.server_pid.and_then(rss_kib) {
            rss_samples.push(rss);
            hwm = peak;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for t in tasks {
        t.await?;
    }
    let chat_secs = chat_start.elapsed().as_secs_f64();
    // Late updates still count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    timing.store(false, Ordering::Relaxed);
    let rss_end = a.server_pid.and_then(rss_kib);
    drop(held);

    let mut lat = std::mem::take(&mut *lock(&shared.latencies));
    lat.sort_by(f64::total_cmp);
    let q = |p| quantile(&lat, p).map(|v| (v * 1000.0).round() / 1000.0);
    let mib = |k: u64| (k as f64 / 1024.0 * 10.0).round() / 10.0;
    let rss_peak_sampled = rss_samples.iter().copied().max();
    let sent = shared.sent.load(Ordering::Relaxed);
    let report = json!({
        "mode": NAME,
        "rooms": a.rooms,
        "members_per_room": a.members,
        "members": members.len(),
        "streams": 2 * members.len(),
        "setup_s": (setup_secs * 1000.0).round() / 1000.0,
        "duration_s": (chat_secs * 1000.0).round() / 1000.0,
        "messages_sent": sent,
        "messages_per_s": ((sent as f64 / chat_secs) * 100.0).round() / 100.0,
        "heartbeats": shared.heartbeats.load(Ordering::Relaxed),
        "deliveries_timed": lat.len(),
        "latency_p50_ms": q(0.50),
        "latency_p99_ms": q(0.99),
        "latency_max_ms": q(1.0),
        "rss_mib": {
            "start": rss_start.map(|r| mib(r.0)),
            "after_setup": rss_setup.map(|r| mib(r.0)),
            "streams_open": rss_streams.map(|r| mib(r.0)),
            "chat_peak_sampled": rss_peak_sampled.map(mib),
            "end": rss_end.map(|r| mib(r.0)),
            "high_water": (hwm > 0).then(|| mib(hwm)),
        },
        "errors": *lock(&shared.errors),
    });
    println!(
        "rooms  members  streams  msgs/s  deliveries  lat_p50_ms  lat_p99_ms  rss_peak_MiB  \
         rss_hwm_MiB"
    );
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1}"));
    println!(
        "{:>5}  {:>7}  {:>7}  {:>6}  {:>10}  {:>10}  {:>10}  {:>12}  {:>11}",
        a.rooms,
        members.len(),
        2 * members.len(),
        f(&report["messages_per_s"]),
        lat.len(),
        f(&report["latency_p50_ms"]),
        f(&report["latency_p99_ms"]),
        f(&report["rss_mib"]["chat_peak_sampled"]),
        f(&report["rss_mib"]["high_water"]),
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_read_from_hearths_own_file() {
        let sql = schema_sql(SCHEMA_JS).unwrap();
        assert!(sql.starts_with("CREATE TABLE room"), "{sql}");
        assert!(sql.contains("CREATE TABLE messages"));
        assert!(sql.trim_end().ends_with("END;"));
        assert!(schema_sql("const X = 1;").is_err());
    }

    #[test]
    fn flags_are_checked() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["hearth", "--url", "http://127.0.0.1:1", "--token", "t"];
            argv.extend_from_slice(extra);
            HearthArgs::try_parse_from(argv).map(|a| validate(&a))
        };
        assert!(parse(&[]).unwrap().is_ok());
        assert!(parse(&["--members", "21"]).unwrap().is_err());
        assert!(parse(&["--ttl-secs", "1"]).unwrap().is_err());
        assert!(parse(&["--duration", "0"]).unwrap().is_err());
    }
}
