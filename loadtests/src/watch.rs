//! `watch-fanout`: what reactive query watches cost, and how fast they fan out.
//!
//! 1. Setup: the `insert` scenario's tables plus `a (id INTEGER PRIMARY KEY, v)`.
//! 2. Baseline: the `insert` scenario (writes to `writes`) with no watch open.
//! 3. Opens `--watches` SSE streams on `SELECT count(*) FROM a`, each on its own HTTP/1
//!    connection (hyper's connection API), and waits for every `snapshot`.
//! 4. The same `insert` load with every watch open. `writes` is not read by the watches, so
//!    the server should only pay the read-set check per commit: insert throughput is compared
//!    with the baseline, and no watcher may see an `update`.
//! 5. Fan-out: `--writes` single-row inserts into `a`, one at a time (~50 ms apart); for each,
//!    the time from just before sending it until *every* watcher has received an `update`
//!    showing at least the new count (10 s limit per write, an error after that).
//! 6. Closes the watches and runs the baseline again. The ratio compares the loaded run with
//!    the mean of both baselines (before and after), so a machine that speeds up or slows
//!    down during the run (CPU steal on shared hosts) does not masquerade as watch overhead.
//!
//! Every phase has its own time limit and the whole run an overall deadline.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::driver::{self, Body, Ctx, RequestSpec, RunResult};
use crate::scenarios::{self, Scenario};
use crate::sse::{
    ErrorLog, OpenStage, OpenStream, SseParser, StreamKinds, StreamRequest, lock, next_events,
    nofile_soft_limit, open_stream, quantile,
};
use crate::{Config, round};

/// Command-line name of this mode.
pub const NAME: &str = "watch-fanout";
/// One line for `--help`.
pub const ABOUT: &str = "insert throughput with N idle SSE watches open, and watch fan-out latency";
/// The watched statement.
const WATCH_SQL: &str = "SELECT count(*) FROM a";
/// How long all watchers get to see one fan-out write.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between fan-out writes.
const WRITE_SPACING: Duration = Duration::from_millis(50);
/// Stop the fan-out phase after this many writes in a row that did not reach every watcher.
const MAX_CONSECUTIVE_TIMEOUTS: u32 = 3;
/// Watches being opened at once (connect until snapshot).
const OPEN_PARALLELISM: usize = 64;
/// Pause after all watches are open, before the loaded run.
const SETTLE: Duration = Duration::from_secs(1);
/// Low half of [`Shared::round`]: watchers that reached the round's count.
const REACHED_MASK: u64 = 0xffff_ffff;

pub const DEFAULT_WATCHES: usize = 1000;
pub const DEFAULT_WRITES: u32 = 50;
pub const MAX_WATCHES: usize = 10_000;
pub const MAX_WRITES: u32 = 10_000;

/// Settings of the mode (the rest comes from the common flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    pub watches: usize,
    pub writes: u32,
}

/// `rows[0][0]` of a watch event's or exec reply's JSON, as an integer.
pub fn first_cell(json: &serde_json::Value) -> Option<i64> {
    let cell = json.get("rows")?.get(0)?.get(0)?;
    cell.as_i64()
        .or_else(|| cell.as_str().and_then(|s| s.parse().ok()))
}

// ---------------------------------------------------------------------------------------------
// Shared watcher state

/// What the watcher tasks and the controller share.
struct Shared {
    /// Per watcher: its snapshot arrived.
    snapped: Vec<AtomicBool>,
    snapshots: AtomicUsize,
    /// Snapshot `count(*)` values and how many watchers saw each.
    snapshot_values: Mutex<BTreeMap<i64, usize>>,
    updates: AtomicU64,
    heartbeats: AtomicU64,
    /// Watch opens answered 503/429 and retried.
    open_retries: AtomicU64,
    /// Streams that ended while the benchmark still needed them.
    closed: AtomicUsize,
    /// The current fan-out round: the count every watcher must reach in the high 32 bits
    /// (0: no round), the number of watchers that reached it in the low 32.
    round: AtomicU64,
    /// How many watchers must reach a round's count (the ones that opened).
    target: AtomicUsize,
    first_at: Mutex<Option<Instant>>,
    all_at: Mutex<Option<Instant>>,
    all_reached: Notify,
    errors: Mutex<ErrorLog>,
}

impl Shared {
    fn new(watches: usize) -> Self {
        Self {
            snapped: (0..watches).map(|_| AtomicBool::new(false)).collect(),
            snapshots: AtomicUsize::new(0),
            snapshot_values: Mutex::new(BTreeMap::new()),
            updates: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            open_retries: AtomicU64::new(0),
            closed: AtomicUsize::new(0),
            round: AtomicU64::new(0),
            target: AtomicUsize::new(watches),
            first_at: Mutex::new(None),
            all_at: Mutex::new(None),
            all_reached: Notify::new(),
            errors: Mutex::new(ErrorLog::default()),
        }
    }

    fn error(&self, kind: &str, sample: impl FnOnce() -> String) {
        lock(&self.errors).add(kind, 1, sample);
    }

    /// A watcher saw `count`; `credited` is the last round count it was counted for.
    fn saw(&self, count: i64, credited: &mut u64) {
        let now = Instant::now();
        loop {
            let s = self.round.load(Ordering::SeqCst);
            let want = s >> 32;
            if want == 0 || want <= *credited || count < want as i64 {
                return;
            }
            if self
                .round
                .compare_exchange(s, s + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                *credited = want;
                let reached = (s & REACHED_MASK) + 1;
                if reached == 1 {
                    *lock(&self.first_at) = Some(now);
                }
                if reached as usize >= self.target.load(Ordering::SeqCst) {
                    *lock(&self.all_at) = Some(now);
                    self.all_reached.notify_one();
                }
                return;
            }
        }
    }

    fn reached(&self) -> usize {
        (self.round.load(Ordering::SeqCst) & REACHED_MASK) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Watchers

/// A watcher failure: error kind and message.
type WatchError = (&'static str, String);

/// The error kind of a failed watch open.
fn open_kind(stage: OpenStage) -> &'static str {
    match stage {
        OpenStage::Build => "build",
        OpenStage::Connect => "watch_connect",
        OpenStage::Handshake => "watch_handshake",
        OpenStage::Timeout => "watch_timeout",
        OpenStage::Transport => "watch_transport",
        OpenStage::Status => "watch_status",
    }
}

async fn watcher(
    idx: usize,
    req: Arc<StreamRequest>,
    shared: Arc<Shared>,
    open: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    if let Err((kind, msg)) = watch_stream(idx, &req, &shared, &open, stop.clone()).await
        && !*stop.borrow()
    {
        shared.error(kind, || msg);
        if shared.snapped[idx].load(Ordering::SeqCst) {
            shared.closed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn watch_stream(
    idx: usize,
    req: &StreamRequest,
    shared: &Shared,
    open: &Semaphore,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WatchError> {
    let permit = open
        .acquire()
        .await
        .map_err(|e| ("watch_open", e.to_string()))?;
    let OpenStream {
        mut body,
        conn: _conn,
    } = open_stream(req, idx, &shared.open_retries)
        .await
        .map_err(|(stage, msg)| (open_kind(stage), msg))?;
    let mut permit = Some(permit);
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    let mut credited = 0u64;
    let kinds = StreamKinds {
        closed: "watch_closed",
        body: "watch_body",
        bad_event: "watch_bad_event",
    };
    loop {
        if !next_events(&mut body, &mut stop, &mut parser, &mut events, &kinds).await? {
            return Ok(());
        }
        for ev in events.drain(..) {
            match ev.event.as_str() {
                "snapshot" | "update" => {
                    let count = serde_json::from_str::<serde_json::Value>(&ev.data)
                        .ok()
                        .as_ref()
                        .and_then(first_cell)
                        .ok_or_else(|| ("watch_bad_event", format!("no count in {}", ev.data)))?;
                    if ev.event == "update" {
                        shared.updates.fetch_add(1, Ordering::SeqCst);
                    }
                    if !shared.snapped[idx].swap(true, Ordering::SeqCst) {
                        *lock(&shared.snapshot_values).entry(count).or_default() += 1;
                        shared.snapshots.fetch_add(1, Ordering::SeqCst);
                        drop(permit.take());
                    }
                    shared.saw(count, &mut credited);
                }
                "heartbeat" => {
                    shared.heartbeats.fetch_add(1, Ordering::SeqCst);
                }
                "error" => shared.error("watch_error_event", || ev.data.clone()),
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark

/// Numbers of one run, for the table and the JSON line.
struct Outcome {
    without: Option<RunResult>,
    /// The baseline again, after the watches were closed.
    without_after: Option<RunResult>,
    with: Option<RunResult>,
    updates_during_unrelated: u64,
    open_s: f64,
    opened: usize,
    /// "All watchers updated" latency per completed write, ms.
    fanout_all_ms: Vec<f64>,
    /// "First watcher updated" latency per completed write, ms.
    fanout_first_ms: Vec<f64>,
    writes_sent: u32,
    errors: ErrorLog,
}

fn rps(r: &RunResult) -> f64 {
    let secs = r.elapsed.as_secs_f64();
    if secs > 0.0 {
        r.stats.requests as f64 / secs
    } else {
        0.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn batch(ctx: &Ctx, sql: &str) -> anyhow::Result<()> {
    let spec = RequestSpec {
        method: Method::POST,
        path: format!("/api/v1/db/{}/query/batch", ctx.db),
        auth: true,
        headers: &[],
        body: Body::Json(serde_json::json!({"statements": [{"sql": sql}]})),
    };
    let reply = ctx.send(&spec).await.context("setup request")?;
    ensure!(
        reply.status.is_success(),
        "setup {sql:?}: {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    Ok(())
}

fn exec_spec(ctx: &Ctx, sql: &str, args: serde_json::Value) -> RequestSpec {
    RequestSpec {
        method: Method::POST,
        path: format!("/api/v1/db/{}/query/exec", ctx.db),
        auth: true,
        headers: &[],
        body: Body::Json(serde_json::json!({"sql": sql, "args": args})),
    }
}

async fn count_a(ctx: &Ctx) -> anyhow::Result<i64> {
    let reply = ctx
        .send(&exec_spec(ctx, WATCH_SQL, serde_json::json!([])))
        .await
        .context("counting rows of a")?;
    ensure!(
        reply.status == StatusCode::OK,
        "count(*) answered {}",
        reply.status
    );
    let json: serde_json::Value = serde_json::from_slice(&reply.body).context("count reply")?;
    first_cell(&json).ok_or_else(|| anyhow::anyhow!("no count in {json}"))
}

/// An upper bound on the whole run, from the per-phase bounds (a safety net: every phase
/// has its own).
fn overall_deadline(cfg: &Config, wc: WatchConfig) -> Duration {
    let run = cfg.run.warmup + cfg.run.duration + cfg.timeout + Duration::from_secs(5);
    let per_write = FANOUT_TIMEOUT + WRITE_SPACING + cfg.timeout * 2;
    cfg.timeout * 8
        + run * 3
        + open_timeout(wc.watches)
        + SETTLE
        + per_write * wc.writes
        + Duration::from_secs(30)
}

/// Time allowed for opening every watch.
fn open_timeout(watches: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(20) * u32::try_from(watches).unwrap_or(u32::MAX)
}

/// Runs the mode and prints its report; the JSON object is the last line of stdout.
pub async fn run(cfg: Config, wc: WatchConfig) -> anyhow::Result<ExitCode> {
    if let Some(soft) = nofile_soft_limit() {
        let need = (wc.watches + cfg.run.concurrency + 64) as u64;
        ensure!(
            soft >= need,
            "{} watches + {} workers need about {need} file descriptors but the soft \
             RLIMIT_NOFILE is {soft}; raise it (ulimit -n) or open fewer watches",
            wc.watches,
            cfg.run.concurrency
        );
    }
    let deadline = overall_deadline(&cfg, wc);
    eprintln!(
        "loadtests: {NAME} against {} with {} watches, insert at concurrency {} for {:?}, \
         {} fan-out writes (overall deadline {:?})",
        cfg.target.base, wc.watches, cfg.run.concurrency, cfg.run.duration, wc.writes, deadline
    );
    let outcome = match tokio::time::timeout(deadline, phases(&cfg, wc)).await {
        Ok(r) => r?,
        Err(_) => bail!("the run did not finish within its overall deadline of {deadline:?}"),
    };
    let j = report(&cfg, wc, &outcome);
    print_table(&j, &outcome);
    // The JSON object is always the last line of stdout.
    println!("{j}");
    let failed = outcome.without.as_ref().is_none_or(all_failed)
        || outcome.with.as_ref().is_none_or(all_failed)
        || outcome.opened == 0
        || (wc.writes > 0 && outcome.fanout_all_ms.is_empty());
    Ok(if failed {
        eprintln!("loadtests: {NAME} did not produce every number");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn all_failed(r: &RunResult) -> bool {
    r.stats.requests == 0 || r.stats.errors == r.stats.requests
}

async fn phases(cfg: &Config, wc: WatchConfig) -> anyhow::Result<Outcome> {
    let ctx = Arc::new(Ctx::new(
        cfg.target.base.clone(),
        cfg.db.clone(),
        &cfg.token,
        cfg.timeout,
        cfg.run.concurrency,
    )?);
    let mut errors = ErrorLog::default();

    // 1. Setup (once; the driver runs below skip it).
    let insert = scenarios::find("insert").context("the insert scenario is missing")?;
    eprintln!("loadtests: setup (insert tables, table a)");
    if let Some(setup) = insert.setup {
        setup(&ctx).await.context("setup of scenario insert")?;
    }
    batch(
        &ctx,
        "CREATE TABLE IF NOT EXISTS a (id INTEGER PRIMARY KEY, v)",
    )
    .await?;
    let insert = Arc::new(Scenario {
        setup: None,
        ..insert
    });

    // 2. Baseline.
    eprintln!("loadtests: phase 1/4: insert with no watches");
    let without = driver::run(Arc::clone(&ctx), Arc::clone(&insert), &cfg.run).await?;
    merge_run_errors(&mut errors, "baseline", &without);
    eprintln!("loadtests:   {:.1} req/s", rps(&without));

    // 3. Open the watches.
    let req = Arc::new(
        StreamRequest::new(
            cfg,
            Method::POST,
            &format!("/api/v1/db/{}/query/watch", cfg.db),
            Some(Bytes::from(serde_json::to_vec(&serde_json::json!({
                "sql": WATCH_SQL,
                "options": {"heartbeat_seconds": 60},
            }))?)),
        )
        .await?,
    );
    let shared = Arc::new(Shared::new(wc.watches));
    let (stop_tx, stop_rx) = watch::channel(false);
    let open_sem = Arc::new(Semaphore::new(OPEN_PARALLELISM));
    let mut tasks = JoinSet::new();
    let mut handles = Vec::with_capacity(wc.watches);
    eprintln!("loadtests: opening {} watches", wc.watches);
    let open_start = Instant::now();
    for idx in 0..wc.watches {
        handles.push(tasks.spawn(watcher(
            idx,
            Arc::clone(&req),
            Arc::clone(&shared),
            Arc::clone(&open_sem),
            stop_rx.clone(),
        )));
    }
    let open_deadline = open_start + open_timeout(wc.watches);
    loop {
        let snaps = shared.snapshots.load(Ordering::SeqCst);
        // Watchers that failed for good have ended; only wait for the live ones.
        let failed = handles
            .iter()
            .enumerate()
            .filter(|(idx, h)| h.is_finished() && !shared.snapped[*idx].load(Ordering::SeqCst))
            .count();
        if snaps + failed >= wc.watches || Instant::now() >= open_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_s = open_start.elapsed().as_secs_f64();
    // Give up on the ones that did not open in time.
    let mut late = 0u64;
    for (idx, h) in handles.iter().enumerate() {
        if !shared.snapped[idx].load(Ordering::SeqCst) && !h.is_finished() {
            h.abort();
            late += 1;
        }
    }
    lock(&shared.errors).add("watch_open_timeout", late, || {
        format!(
            "a watch did not deliver its snapshot within {:?}",
            open_timeout(wc.watches)
        )
    });
    let opened = shared.snapshots.load(Ordering::SeqCst);
    shared.target.store(opened, Ordering::SeqCst);
    eprintln!(
        "loadtests:   {opened}/{} watches open in {open_s:.2} s ({} retried opens)",
        wc.watches,
        shared.open_retries.load(Ordering::SeqCst)
    );
    let values = lock(&shared.snapshot_values).clone();
    if values.len() > 1 {
        eprintln!("loadtests:   warning: watchers saw different snapshots: {values:?}");
    }

    // 4. The same load with the watches open.
    let mut with = None;
    let mut updates_during_unrelated = 0;
    if opened > 0 {
        tokio::time::sleep(SETTLE).await;
        eprintln!("loadtests: phase 2/4: insert with {opened} watches open");
        let u0 = shared.updates.load(Ordering::SeqCst);
        let r = driver::run(Arc::clone(&ctx), Arc::clone(&insert), &cfg.run).await?;
        // Updates caused by the load arrive within moments of its last commit.
        tokio::time::sleep(Duration::from_millis(500)).await;
        updates_during_unrelated = shared.updates.load(Ordering::SeqCst) - u0;
        merge_run_errors(&mut errors, "loaded", &r);
        eprintln!(
            "loadtests:   {:.1} req/s, {updates_during_unrelated} updates",
            rps(&r)
        );
        with = Some(r);
    }

    // 5. Fan-out latency.
    let mut fanout_all_ms = Vec::new();
    let mut fanout_first_ms = Vec::new();
    let mut writes_sent = 0;
    if opened > 0 && wc.writes > 0 {
        eprintln!(
            "loadtests: phase 3/4: {} writes to a, each awaited by all {opened} watchers",
            wc.writes
        );
        let mut count = count_a(&ctx).await?;
        if values.keys().any(|v| *v != count) {
            eprintln!(
                "loadtests:   warning: a has {count} rows but watchers' snapshots say {values:?}"
            );
        }
        let mut timeouts_in_row = 0;
        for k in 0..wc.writes {
            let want = u64::try_from(count + 1).context("negative count")?;
            ensure!(
                want < 1 << 31,
                "table a has too many rows for this benchmark"
            );
            *lock(&shared.first_at) = None;
            *lock(&shared.all_at) = None;
            shared.round.store(want << 32, Ordering::SeqCst);
            let spec = exec_spec(
                &ctx,
                "INSERT INTO a (v) VALUES (?)",
                serde_json::json!([format!("fanout {k}")]),
            );
            let t0 = Instant::now();
            let reply = ctx.send(&spec).await;
            writes_sent += 1;
            match reply {
                Ok(r) if r.status == StatusCode::OK => count += 1,
                Ok(r) => {
                    errors.add(
                        &format!("fanout_write_status_{}", r.status.as_u16()),
                        1,
                        || String::from_utf8_lossy(&r.body).into_owned(),
                    );
                    shared.round.store(0, Ordering::SeqCst);
                    count = count_a(&ctx).await?;
                    continue;
                }
                Err(e) => {
                    errors.add(&format!("fanout_write_{}", e.kind()), 1, || e.to_string());
                    shared.round.store(0, Ordering::SeqCst);
                    // It may or may not have committed.
                    tokio::time::sleep(WRITE_SPACING).await;
                    count = count_a(&ctx).await?;
                    continue;
                }
            }
            let give_up = t0 + FANOUT_TIMEOUT;
            while shared.reached() < opened {
                let now = Instant::now();
                if now >= give_up {
                    break;
                }
                let _ = tokio::time::timeout(give_up - now, shared.all_reached.notified()).await;
            }
            let all_at = *lock(&shared.all_at);
            let first_at = *lock(&shared.first_at);
            match all_at {
                Some(all) if shared.reached() >= opened => {
                    timeouts_in_row = 0;
                    fanout_all_ms.push(ms(all.saturating_duration_since(t0)));
                    fanout_first_ms.push(ms(first_at.unwrap_or(all).saturating_duration_since(t0)));
                }
                _ => {
                    timeouts_in_row += 1;
                    let reached = shared.reached();
                    errors.add("fanout_timeout", 1, || {
                        format!(
                            "only {reached}/{opened} watchers saw count {want} within {FANOUT_TIMEOUT:?}"
                        )
                    });
                    eprintln!(
                        "loadtests:   write {k}: only {reached}/{opened} watchers updated in {FANOUT_TIMEOUT:?}"
                    );
                    if timeouts_in_row >= MAX_CONSECUTIVE_TIMEOUTS {
                        eprintln!(
                            "loadtests:   {MAX_CONSECUTIVE_TIMEOUTS} writes in a row timed out; \
                             stopping the fan-out phase"
                        );
                        break;
                    }
                }
            }
            tokio::time::sleep(WRITE_SPACING).await;
        }
        shared.round.store(0, Ordering::SeqCst);
    }

    // Close every stream, then collect the watchers' own errors.
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tasks.abort_all();
    }
    errors.merge(std::mem::take(&mut *lock(&shared.errors)));

    // 6. Baseline again, every watch closed.
    eprintln!("loadtests: phase 4/4: insert with the watches closed again");
    let without_after = driver::run(Arc::clone(&ctx), Arc::clone(&insert), &cfg.run).await?;
    merge_run_errors(&mut errors, "baseline_after", &without_after);
    eprintln!("loadtests:   {:.1} req/s", rps(&without_after));

    let closed = shared.closed.load(Ordering::SeqCst);
    if closed > 0 {
        eprintln!("loadtests: {closed} watch streams ended early");
    }
    eprintln!(
        "loadtests: watchers received {} updates and {} heartbeats in total",
        shared.updates.load(Ordering::SeqCst),
        shared.heartbeats.load(Ordering::SeqCst)
    );
    for (kind, sample) in &errors.samples {
        eprintln!("loadtests: first {kind} error: {sample}");
    }
    Ok(Outcome {
        without: Some(without),
        without_after: Some(without_after),
        with,
        updates_during_unrelated,
        open_s,
        opened,
        fanout_all_ms,
        fanout_first_ms,
        writes_sent,
        errors,
    })
}

fn merge_run_errors(errors: &mut ErrorLog, phase: &str, r: &RunResult) {
    for (kind, n) in &r.stats.error_kinds {
        let sample = r.stats.error_samples.get(kind).cloned().unwrap_or_default();
        errors.add(&format!("{phase}_{kind}"), *n, || sample);
    }
}

fn report(cfg: &Config, wc: WatchConfig, o: &Outcome) -> serde_json::Value {
    let before = o.without.as_ref().map_or(0.0, rps);
    let after = o.without_after.as_ref().map_or(0.0, rps);
    let without = if after > 0.0 {
        (before + after) / 2.0
    } else {
        before
    };
    let with = o.with.as_ref().map_or(0.0, rps);
    let ratio = if without > 0.0 { with / without } else { 0.0 };
    let mut all = o.fanout_all_ms.clone();
    all.sort_by(f64::total_cmp);
    let mut first = o.fanout_first_ms.clone();
    first.sort_by(f64::total_cmp);
    let q = |v: &[f64], p: f64| quantile(v, p).map(|x| round(x, 3));
    serde_json::json!({
        "scenario": NAME,
        "watches": wc.watches,
        "insert_rps_without": round(without, 1),
        "insert_rps_without_before": round(before, 1),
        "insert_rps_without_after": round(after, 1),
        "insert_rps_with": round(with, 1),
        "ratio": round(ratio, 4),
        "updates_during_unrelated_writes": o.updates_during_unrelated,
        "fanout_p50_ms": q(&all, 0.50),
        "fanout_p99_ms": q(&all, 0.99),
        "fanout_max_ms": q(&all, 1.0),
        "errors": o.errors.total,
        // Extras.
        "concurrency": cfg.run.concurrency,
        "duration_s": cfg.run.duration.as_secs_f64(),
        "watches_opened": o.opened,
        "watch_open_s": round(o.open_s, 3),
        "writes": o.writes_sent,
        "writes_all_updated": o.fanout_all_ms.len(),
        "fanout_first_p50_ms": q(&first, 0.50),
        "error_kinds": o.errors.kinds,
    })
}

fn print_table(j: &serde_json::Value, o: &Outcome) {
    let latency = |r: &Option<RunResult>| match r {
        Some(r) if !r.stats.hist.is_empty() => {
            let h = &r.stats.hist;
            format!(
                "{:>10.1}  {:>7.3}  {:>7.3}  {:>7}",
                rps(r),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                r.stats.errors
            )
        }
        _ => format!("{:>10}  {:>7}  {:>7}  {:>7}", "-", "-", "-", "-"),
    };
    let n = |key: &str| match j[key].as_f64() {
        Some(v) => format!("{v:.3}"),
        None => "-".to_owned(),
    };
    println!(
        "{NAME}: {} watches ({} opened in {:.2} s)",
        j["watches"], o.opened, o.open_s
    );
    println!(
        "{:<28}  {:>10}  {:>7}  {:>7}  {:>7}",
        "insert phase", "req/s", "p50_ms", "p99_ms", "errors"
    );
    println!("{:<28}  {}", "no watches (before)", latency(&o.without));
    println!(
        "{:<28}  {}",
        format!("{} watches open", o.opened),
        latency(&o.with)
    );
    println!(
        "{:<28}  {}",
        "no watches (after)",
        latency(&o.without_after)
    );
    println!(
        "ratio with/without: {:.1}% (target >= 90%)",
        j["ratio"].as_f64().unwrap_or(0.0) * 100.0
    );
    println!(
        "updates during unrelated writes: {} (expected 0)",
        j["updates_during_unrelated_writes"]
    );
    println!(
        "fan-out, all watchers updated ({}/{} writes): p50 {} ms  p99 {} ms  max {} ms  \
         (first watcher p50 {} ms)",
        o.fanout_all_ms.len(),
        o.writes_sent,
        n("fanout_p50_ms"),
        n("fanout_p99_ms"),
        n("fanout_max_ms"),
        n("fanout_first_p50_ms"),
    );
    o.errors.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_rows() {
        let j: serde_json::Value =
            serde_json::from_str(r#"{"columns":["count(*)"],"rows":[[42]]}"#).unwrap();
        assert_eq!(first_cell(&j), Some(42));
        let s: serde_json::Value =
            serde_json::from_str(r#"{"rows":[["9007199254740993"]]}"#).unwrap();
        assert_eq!(first_cell(&s), Some(9_007_199_254_740_993));
        assert_eq!(first_cell(&serde_json::json!({"rows": []})), None);
        assert_eq!(first_cell(&serde_json::json!({})), None);
    }

    #[test]
    fn rounds_count_each_watcher_once() {
        let s = Shared::new(3);
        s.target.store(3, Ordering::SeqCst);
        let mut credited = [0u64; 3];
        // No round: nothing is counted.
        s.saw(5, &mut credited[0]);
        assert_eq!(s.reached(), 0);
        s.round.store(6 << 32, Ordering::SeqCst);
        s.saw(5, &mut credited[0]); // too low
        s.saw(6, &mut credited[0]);
        s.saw(7, &mut credited[0]); // already counted this round
        s.saw(8, &mut credited[1]);
        assert_eq!(s.reached(), 2);
        assert!(lock(&s.first_at).is_some());
        assert!(lock(&s.all_at).is_none());
        s.saw(6, &mut credited[2]);
        assert_eq!(s.reached(), 3);
        assert!(lock(&s.all_at).is_some());
        // Next round starts from zero.
        s.round.store(7 << 32, Ordering::SeqCst);
        s.saw(7, &mut credited[0]);
        assert_eq!(s.reached(), 1);
    }
}
