//! `soak`: the crash-cycle soak. Starts the real `patchwork` binary on a data dir of its own,
//! drives mixed writes at several documents (`query/exec` INSERTs, `query/batch`, publishes,
//! webhook deliveries, lease acquire/renew/release), `kill -9`s it at a random moment, starts it
//! again on the same data dir and checks, after every restart:
//!
//! - `PRAGMA integrity_check` is `ok` on every SQLite file under the data dir (`service.db` and
//!   every document), opened read-only;
//! - every write that was acknowledged (a success status was read in full) before any kill is in
//!   the files: rows by their unique key, messages and webhook deliveries by the id the server
//!   answered, with the payload sent;
//! - leases: no fence acknowledged is ever above the stored one, and every acquisition
//!   acknowledged (before or after a restart) got a fence above every fence acknowledged before
//!   it (fences are never reissued); a renew keeps the fence.
//!
//! Any violation is reported and the exit code is 1. A request cut off by the kill is not
//! acknowledged and is not checked (it may or may not have been committed).
//!
//! ```text
//! loadtests soak --bin target/release/patchwork [--cycles 20] [--seconds-per-cycle 5]
//!                [--concurrency 8] [--documents 4] [--seed N] [--data-dir DIR] [--keep]
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use hyper::{Method, StatusCode};
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

use crate::driver::{Body, Ctx, RequestSpec};
use crate::sse::lock;

pub const NAME: &str = "soak";
pub const ABOUT: &str = "crash-cycle soak: kill -9 a patchwork it starts itself under mixed \
                         writes, then integrity_check every file and find every acknowledged write";

/// Lease TTL: short, so a lease taken by a request the kill cut off expires soon.
const LEASE_TTL_SECS: u64 = 2;
/// The webhook endpoint deliveries go to.
const HOOK: &str = "soak-hook";

/// `loadtests soak`.
#[derive(Parser, Debug)]
// A flag given twice: the last one counts (`soak.sh` passes its defaults first).
#[command(name = "loadtests soak", about = ABOUT, args_override_self = true)]
pub struct SoakArgs {
    /// The `patchwork` binary to start (e.g. target/release/patchwork).
    #[arg(long)]
    bin: PathBuf,
    /// Kill -9 / restart / check cycles.
    #[arg(long, default_value_t = 20)]
    cycles: u32,
    /// Load before each kill: the kill comes at a random moment in the second half of it.
    #[arg(long, default_value_t = 5.0)]
    seconds_per_cycle: f64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Documents written to (`soak-0` …).
    #[arg(long, default_value_t = 4)]
    documents: usize,
    /// Seed of the choices (kinds, documents, kill moments); default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Data dir (must be empty or absent); default: a new one under the temp dir, removed after
    /// a clean run.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the data dir (and the server's log) after a clean run too.
    #[arg(long)]
    keep: bool,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub bin: PathBuf,
    pub cycles: u32,
    pub seconds_per_cycle: Duration,
    pub concurrency: usize,
    pub documents: usize,
    pub seed: u64,
    pub data_dir: Option<PathBuf>,
    pub keep: bool,
}

impl SoakArgs {
    fn validate(self) -> anyhow::Result<SoakConfig> {
        ensure!(
            self.bin.is_file(),
            "--bin {}: no such file (build it: cargo build --release -p patchwork-cli)",
            self.bin.display()
        );
        ensure!(
            (1..=1000).contains(&self.cycles),
            "--cycles must be 1 to 1000"
        );
        ensure!(
            self.seconds_per_cycle.is_finite()
                && self.seconds_per_cycle > 0.0
                && self.seconds_per_cycle <= 600.0,
            "--seconds-per-cycle must be above 0 and at most 600"
        );
        ensure!(
            (1..=256).contains(&self.concurrency),
            "--concurrency must be 1 to 256"
        );
        ensure!(
            (1..=64).contains(&self.documents),
            "--documents must be 1 to 64"
        );
        Ok(SoakConfig {
            bin: self.bin,
            cycles: self.cycles,
            seconds_per_cycle: Duration::from_secs_f64(self.seconds_per_cycle),
            concurrency: self.concurrency,
            documents: self.documents,
            seed: self.seed.unwrap_or_else(clock_seed),
            data_dir: self.data_dir,
            keep: self.keep,
        })
    }
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32
}

/// SplitMix64: enough for picking kinds, documents and kill moments reproducibly.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The kinds of write, as reported.
const EXEC: &str = "exec";
const BATCH: &str = "batch";
const PUBLISH: &str = "publish";
const WEBHOOK: &str = "webhook";
const LEASE: &str = "lease";

/// What was acknowledged, and what went wrong.
#[derive(Default)]
struct Ledger {
    /// `query/exec` rows: document → keys.
    exec: Vec<Vec<String>>,
    /// `query/batch` rows (three per batch): document → keys.
    batch: Vec<Vec<String>>,
    /// Messages: document → (id, payload).
    publish: Vec<Vec<(i64, String)>>,
    /// Webhook deliveries: document → (id, payload).
    webhook: Vec<Vec<(i64, String)>>,
    /// Highest fence acknowledged per (document, resource).
    fences: BTreeMap<(usize, String), i64>,
    /// Lease answers: `acquire`, `renew`, `release`, and refusals (`409`).
    lease_ops: BTreeMap<&'static str, u64>,
    /// Fence comparisons made at acknowledgement time.
    fence_checks: u64,
    /// Requests without an acknowledgement: cut off by the kill, or refused with 503/429.
    unacked: BTreeMap<String, u64>,
    failures: Vec<String>,
}

impl Ledger {
    fn new(documents: usize) -> Self {
        Self {
            exec: vec![Vec::new(); documents],
            batch: vec![Vec::new(); documents],
            publish: vec![Vec::new(); documents],
            webhook: vec![Vec::new(); documents],
            ..Self::default()
        }
    }

    fn fail(&mut self, what: String) {
        eprintln!("soak: FAILURE: {what}");
        self.failures.push(what);
    }
}

/// A lease a writer holds (kept across restarts: a renew after one checks the lease survived).
#[derive(Clone)]
struct Held {
    token: String,
    fence: i64,
}

/// The outcome, as printed.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub cycles: u32,
    /// Acknowledged writes by kind (`batch`: rows; `lease`: acquisitions, renewals, releases).
    pub acked: BTreeMap<&'static str, u64>,
    /// Presence checks made after restarts, summed over every restart (each restart checks every
    /// write acknowledged until then), by kind (`lease`: stored fence ≥ acknowledged fence).
    pub checked: BTreeMap<&'static str, u64>,
    /// Fence comparisons at acknowledgement time (acquire above every earlier fence, renew and
    /// release equal to the held one).
    pub fence_checks: u64,
    /// `PRAGMA integrity_check` runs (files × restarts, plus the files after the final clean stop).
    pub integrity_checks: u64,
    /// SQLite files in the data dir at the end.
    pub files: usize,
    pub lease_ops: BTreeMap<&'static str, u64>,
    pub unacked: BTreeMap<String, u64>,
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

impl SoakReport {
    pub fn to_json(&self, cfg: &SoakConfig) -> Value {
        json!({
            "mode": NAME,
            "cycles": self.cycles,
            "seconds_per_cycle": cfg.seconds_per_cycle.as_secs_f64(),
            "concurrency": cfg.concurrency,
            "documents": cfg.documents,
            "seed": cfg.seed,
            "acked": self.acked,
            "acked_total": self.acked.values().sum::<u64>(),
            "writes_checked": self.checked,
            "writes_checked_total": self.checked.values().sum::<u64>(),
            "fence_checks": self.fence_checks,
            "integrity_checks": self.integrity_checks,
            "sqlite_files": self.files,
            "lease_ops": self.lease_ops,
            "unacked": self.unacked,
            "failures": self.failures.len(),
            "failure_samples": self.failures.iter().take(20).collect::<Vec<_>>(),
            "elapsed_s": (self.elapsed.as_secs_f64() * 10.0).round() / 10.0,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The server process

/// A running `patchwork serve`.
struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    base: String,
}

impl Server {
    /// Starts the binary on `data_dir` (a new port each time) and waits until it listens. The
    /// child is owned by `Server`, whose `Drop` kills and reaps it.
    fn start(cfg: &SoakConfig, data_dir: &Path, token: &str, log: &Path) -> anyhow::Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut child = Command::new(&cfg.bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("PATCHWORK_ADMIN_TOKEN", token)
            .env_remove("PATCHWORK_LOG_FORMAT")
            .env_remove("PATCHWORK_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("starting {}", cfg.bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads stdout to the end (so the server never blocks on a full pipe).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let mut server = Self {
            child,
            base: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => server.base = base,
            Err(_) => bail!(
                "the server did not listen within 60 s (log: {})",
                log.display()
            ),
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, then reaps it.
    fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("kill -9")?;
        self.child.wait().context("waiting for the killed server")?;
        Ok(())
    }

    /// SIGTERM, and waits (at most 60 s) for a clean exit.
    fn terminate(&mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("kill -TERM")?;
        ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.success(),
                    "the server exited with {status} on SIGTERM"
                );
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "no exit 60 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load

fn doc_id(d: usize) -> String {
    format!("soak-{d}")
}

fn post(path: String, body: Value) -> RequestSpec {
    RequestSpec {
        method: Method::POST,
        path,
        auth: true,
        headers: &[],
        body: Body::Json(body),
    }
}

/// What one writer works with for one cycle.
struct Writer {
    ctx: Arc<Ctx>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    rng: Rng,
    worker: usize,
    cycle: u32,
    documents: usize,
}

/// One writer for one cycle: picks a kind and a document per request until `stop`; answers the
/// lease it holds at the end.
async fn writer(w: Writer, mut held: Option<Held>) -> Option<Held> {
    let Writer {
        ctx,
        ledger,
        stop,
        mut rng,
        worker,
        cycle,
        documents,
    } = w;
    let lease_doc = worker % documents;
    let resource = format!("soak/w{worker}");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let d = rng.below(documents as u64) as usize;
        let db = doc_id(d);
        let key = format!("c{cycle}-w{worker}-{n}-{:08x}", rng.next() as u32);
        let pick = rng.below(100);
        let (kind, spec) = match pick {
            0..=24 => (
                EXEC,
                post(
                    format!("/api/v1/db/{db}/query/exec"),
                    json!({"sql": "INSERT INTO t (k, v) VALUES (?, ?)", "args": [key, n]}),
                ),
            ),
            25..=39 => (
                BATCH,
                post(
                    format!("/api/v1/db/{db}/query/batch"),
                    json!({"statements": (0..3).map(|i| json!({
                        "sql": "INSERT INTO t (k, v) VALUES (?, ?)",
                        "args": [format!("{key}-{i}"), i],
                    })).collect::<Vec<_>>()}),
                ),
            ),
            40..=64 => (
                PUBLISH,
                post(
                    format!("/api/v1/db/{db}/messages"),
                    json!({"topic": format!("soak/w{worker}"), "payload_text": key}),
                ),
            ),
            65..=84 => (
                WEBHOOK,
                RequestSpec {
                    method: Method::POST,
                    path: format!("/api/v1/db/{db}/webhooks/{HOOK}"),
                    auth: true,
                    headers: &[("content-type", "text/plain")],
                    body: Body::Bytes {
                        content_type: "text/plain",
                        data: key.clone().into(),
                    },
                },
            ),
            _ => {
                let ldb = doc_id(lease_doc);
                let (op, body) = match &held {
                    Some(h) if rng.below(4) == 0 => (
                        "release",
                        json!({"resource": resource, "owner": format!("w{worker}"),
                               "lease_token": h.token}),
                    ),
                    Some(h) => (
                        "renew",
                        json!({"resource": resource, "owner": format!("w{worker}"),
                               "lease_token": h.token, "ttl_seconds": LEASE_TTL_SECS}),
                    ),
                    None => (
                        "acquire",
                        json!({"resource": resource, "owner": format!("w{worker}"),
                               "ttl_seconds": LEASE_TTL_SECS}),
                    ),
                };
                let spec = post(format!("/api/v1/db/{ldb}/leases/{op}"), body);
                let reply = ctx.send(&spec).await;
                held = lease_answer(&ledger, lease_doc, &resource, op, held, reply);
                continue;
            }
        };
        let reply = match ctx.send(&spec).await {
            Ok(r) => r,
            Err(e) => {
                // Cut off (the kill): not acknowledged.
                *lock(&ledger)
                    .unacked
                    .entry(e.kind().to_owned())
                    .or_default() += 1;
                continue;
            }
        };
        let expected = match kind {
            EXEC | BATCH => StatusCode::OK,
            _ => StatusCode::CREATED,
        };
        let mut l = lock(&ledger);
        if reply.status != expected {
            refused(&mut l, kind, reply.status, &reply.body);
            continue;
        }
        let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        match kind {
            EXEC => l.exec[d].push(key),
            BATCH => l.batch[d].extend((0..3).map(|i| format!("{key}-{i}"))),
            _ => match answer["id"].as_i64() {
                Some(id) if kind == PUBLISH => l.publish[d].push((id, key)),
                Some(id) => l.webhook[d].push((id, key)),
                None => l.fail(format!("{kind} on {db}: no id in {answer}")),
            },
        }
    }
    held
}

/// A non-success answer: `503`/`429` are counted as not acknowledged, anything else fails.
fn refused(l: &mut Ledger, kind: &str, status: StatusCode, body: &[u8]) {
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        *l.unacked
            .entry(format!("status_{}", status.as_u16()))
            .or_default() += 1;
    } else {
        l.fail(format!(
            "{kind}: unexpected {status}: {}",
            String::from_utf8_lossy(body)
        ));
    }
}

/// Judges a lease answer and returns what the writer holds now.
fn lease_answer(
    ledger: &Mutex<Ledger>,
    doc: usize,
    resource: &str,
    op: &'static str,
    held: Option<Held>,
    reply: Result<crate::driver::Reply, crate::driver::Failure>,
) -> Option<Held> {
    let mut l = lock(ledger);
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            *l.unacked.entry(e.kind().to_owned()).or_default() += 1;
            // The operation may or may not have happened: whatever is held, a renew will tell.
            return held;
        }
    };
    if reply.status == StatusCode::CONFLICT {
        // `lease_held` (a lease taken by a request the kill cut off, until it expires) or
        // `not_holder` (the held lease expired during a restart).
        *l.lease_ops.entry("refused_409").or_default() += 1;
        return None;
    }
    if reply.status != StatusCode::OK {
        refused(&mut l, LEASE, reply.status, &reply.body);
        return held;
    }
    let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let Some(fence) = answer["fence"].as_i64() else {
        l.fail(format!("lease {op} on {resource}: no fence in {answer}"));
        return None;
    };
    *l.lease_ops.entry(op).or_default() += 1;
    l.fence_checks += 1;
    let key = (doc, resource.to_owned());
    let before = l.fences.get(&key).copied().unwrap_or(0);
    match op {
        "acquire" => {
            if fence <= before {
                l.fail(format!(
                    "lease acquire on soak-{doc}/{resource}: fence {fence} reissued (an \
                     acknowledged fence was already {before})"
                ));
            }
            l.fences.insert(key, fence.max(before));
            match answer["lease_token"].as_str() {
                Some(token) => Some(Held {
                    token: token.to_owned(),
                    fence,
                }),
                None => {
                    l.fail(format!("lease acquire on {resource}: no lease_token"));
                    None
                }
            }
        }
        _ => {
            let held_fence = held.as_ref().map_or(-1, |h| h.fence);
            if fence != held_fence || fence < before {
                l.fail(format!(
                    "lease {op} on soak-{doc}/{resource}: fence {fence}, held {held_fence}, \
                     highest acknowledged {before}"
                ));
            }
            if op == "renew" { held } else { None }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Every SQLite database file under `dir` (by its header; WAL and shm files are not).
fn sqlite_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let mut head = [0u8; 16];
                let is_db = std::fs::File::open(&path)
                    .and_then(|mut f| f.read_exact(&mut head))
                    .is_ok()
                    && &head == SQLITE_MAGIC;
                if is_db {
                    out.push(path);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn open_ro(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(Duration::from_secs(10))?;
    Ok(c)
}

/// `PRAGMA integrity_check` on every SQLite file; answers how many were checked.
fn integrity(data_dir: &Path, ledger: &mut Ledger, when: &str) -> anyhow::Result<usize> {
    let files = sqlite_files(data_dir)?;
    for f in &files {
        let result = open_ro(f).and_then(|c| {
            let mut stmt = c.prepare("PRAGMA integrity_check")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
        });
        match result {
            Ok(rows) if rows == ["ok"] => {}
            Ok(rows) => ledger.fail(format!(
                "{when}: integrity_check of {}: {}",
                f.display(),
                rows.join("; ")
            )),
            Err(e) => ledger.fail(format!("{when}: opening {}: {e}", f.display())),
        }
    }
    Ok(files.len())
}

/// Every acknowledged write in the document files; adds the checks made to `checked`.
fn acked_present(
    data_dir: &Path,
    ledger: &mut Ledger,
    checked: &mut BTreeMap<&'static str, u64>,
    when: &str,
) -> anyhow::Result<()> {
    let documents = ledger.exec.len();
    let mut failures = Vec::new();
    for d in 0..documents {
        let path = data_dir
            .join("documents")
            .join(format!("{}.sqlite3", doc_id(d)));
        let c = open_ro(&path).with_context(|| format!("opening {}", path.display()))?;
        let keys: HashSet<String> = c
            .prepare("SELECT k FROM t")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for (kind, list) in [(EXEC, &ledger.exec[d]), (BATCH, &ledger.batch[d])] {
            for k in list {
                if !keys.contains(k) {
                    failures.push(format!("{when}: {kind} row {k:?} of soak-{d} is missing"));
                }
            }
            *checked.entry(kind).or_default() += list.len() as u64;
        }
        for (kind, table, list) in [
            (PUBLISH, "_patchwork_messages", &ledger.publish[d]),
            (WEBHOOK, "webhook_inbox", &ledger.webhook[d]),
        ] {
            let stored: HashMap<i64, Vec<u8>> = c
                .prepare(&format!("SELECT id, payload FROM {table}"))?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (id, payload) in list {
                match stored.get(id) {
                    Some(p) if p == payload.as_bytes() => {}
                    Some(p) => failures.push(format!(
                        "{when}: {kind} {id} of soak-{d} holds {:?}, not {payload:?}",
                        String::from_utf8_lossy(p)
                    )),
                    None => failures.push(format!("{when}: {kind} {id} of soak-{d} is missing")),
                }
            }
            *checked.entry(kind).or_default() += list.len() as u64;
        }
        let fences: HashMap<String, i64> = c
            .prepare("SELECT resource, fence FROM _patchwork_leases")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for ((doc, resource), acked) in ledger.fences.range((d, String::new())..) {
            if *doc != d {
                break;
            }
            let stored = fences.get(resource).copied().unwrap_or(0);
            if stored < *acked {
                failures.push(format!(
                    "{when}: lease soak-{d}/{resource}: stored fence {stored} is below the \
                     acknowledged {acked}"
                ));
            }
            *checked.entry(LEASE).or_default() += 1;
        }
    }
    for f in failures {
        ledger.fail(f);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run

/// Sends `spec` and insists on `expected` (set-up and opening requests, not load).
async fn must(ctx: &Ctx, spec: RequestSpec, expected: StatusCode) -> anyhow::Result<Value> {
    let path = spec.path.clone();
    let reply = ctx
        .send(&spec)
        .await
        .with_context(|| format!("POST {path}"))?;
    ensure!(
        reply.status == expected,
        "POST {path}: {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    Ok(serde_json::from_slice(&reply.body).unwrap_or(Value::Null))
}

fn new_data_dir() -> anyhow::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("patchwork-soak-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs the whole soak. `Err` is a harness problem (the server would not start, a file would
/// not open); violations are in the report's `failures`.
pub async fn run(cfg: &SoakConfig) -> anyhow::Result<SoakReport> {
    let started = Instant::now();
    let root = match &cfg.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            ensure!(
                std::fs::read_dir(d)?.next().is_none(),
                "--data-dir {} is not empty",
                d.display()
            );
            d.clone()
        }
        None => new_data_dir()?,
    };
    let data_dir = root.join("data");
    let log = root.join("server.log");
    eprintln!(
        "soak: seed {}, data dir {}, server log {}",
        cfg.seed,
        data_dir.display(),
        log.display()
    );
    let mut rng = Rng(cfg.seed);
    let token = format!("soak-admin-{:016x}{:016x}", rng.next(), rng.next());
    let ledger = Arc::new(Mutex::new(Ledger::new(cfg.documents)));
    let mut report = SoakReport::default();
    let mut held: Vec<Option<Held>> = vec![None; cfg.concurrency];
    let ctx_for = |server: &Server| {
        Ctx::new(
            server.base.clone(),
            String::new(),
            &token,
            Duration::from_secs(30),
            cfg.concurrency,
        )
        .map(Arc::new)
    };

    let mut server = Server::start(cfg, &data_dir, &token, &log)?;
    let ctx = ctx_for(&server)?;
    for d in 0..cfg.documents {
        must(
            &ctx,
            post(
                format!("/api/v1/db/{}/query/exec", doc_id(d)),
                json!({"sql": "CREATE TABLE IF NOT EXISTS t \
                               (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, v INTEGER)"}),
            ),
            StatusCode::OK,
        )
        .await?;
    }
    let mut ctx = ctx;

    for cycle in 1..=cfg.cycles {
        // Load, and the kill at a random moment in the second half of the cycle.
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..cfg.concurrency)
            .map(|w| {
                let job = Writer {
                    ctx: ctx.clone(),
                    ledger: ledger.clone(),
                    stop: stop.clone(),
                    rng: Rng(rng.next()),
                    worker: w,
                    cycle,
                    documents: cfg.documents,
                };
                tokio::spawn(writer(job, held[w].take()))
            })
            .collect();
        let total = cfg.seconds_per_cycle.as_secs_f64();
        let at = total * (0.5 + 0.5 * (rng.below(1_000_000) as f64 / 1_000_000.0));
        tokio::time::sleep(Duration::from_secs_f64(at)).await;
        server.kill9()?;
        stop.store(true, Ordering::Relaxed);
        for (w, t) in tasks.into_iter().enumerate() {
            held[w] = t.await.context("a writer panicked")?;
        }
        drop(ctx);

        // Restart on the same data dir, open every document, check.
        server = Server::start(cfg, &data_dir, &token, &log)?;
        ctx = ctx_for(&server)?;
        for d in 0..cfg.documents {
            must(
                &ctx,
                post(format!("/api/v1/db/{}/_open", doc_id(d)), json!({})),
                StatusCode::OK,
            )
            .await?;
        }
        let when = format!("cycle {cycle}");
        let mut l = lock(&ledger);
        report.integrity_checks += integrity(&data_dir, &mut l, &when)? as u64;
        acked_present(&data_dir, &mut l, &mut report.checked, &when)?;
        let acked: u64 = l.exec.iter().chain(&l.batch).map(Vec::len).sum::<usize>() as u64
            + l.publish
                .iter()
                .chain(&l.webhook)
                .map(Vec::len)
                .sum::<usize>() as u64;
        eprintln!(
            "soak: cycle {cycle}/{}: killed after {at:.2}s, restarted, {acked} acknowledged \
             writes present, {} failures",
            cfg.cycles,
            l.failures.len()
        );
        report.cycles = cycle;
    }

    // A clean stop at the end, and the files checked once more without a server.
    server.terminate()?;
    let mut l = lock(&ledger);
    let files = integrity(&data_dir, &mut l, "after the final clean stop")?;
    report.integrity_checks += files as u64;
    report.files = files;
    let expected = cfg.documents + 1;
    if files < expected {
        l.fail(format!(
            "only {files} SQLite files in the data dir, expected at least {expected}"
        ));
    }
    let count = |v: &Vec<Vec<String>>| v.iter().map(Vec::len).sum::<usize>() as u64;
    let count_ids = |v: &Vec<Vec<(i64, String)>>| v.iter().map(Vec::len).sum::<usize>() as u64;
    report.acked.insert(EXEC, count(&l.exec));
    report.acked.insert(BATCH, count(&l.batch));
    report.acked.insert(PUBLISH, count_ids(&l.publish));
    report.acked.insert(WEBHOOK, count_ids(&l.webhook));
    report.acked.insert(
        LEASE,
        ["acquire", "renew", "release"]
            .iter()
            .map(|k| l.lease_ops.get(k).copied().unwrap_or(0))
            .sum(),
    );
    report.fence_checks = l.fence_checks;
    report.lease_ops = l.lease_ops.clone();
    report.unacked = l.unacked.clone();
    report.failures = std::mem::take(&mut l.failures);
    report.elapsed = started.elapsed();
    drop(l);
    if report.failures.is_empty() && !cfg.keep {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("soak: data dir and server log kept in {}", root.display());
    }
    Ok(report)
}

/// `loadtests soak …` (`argv` without the program name's `soak`).
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let args = match SoakArgs::try_parse_from(argv) {
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
    let cfg = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadtests soak: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtests soak: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match rt.block_on(run(&cfg)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtests soak: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let kinds = [EXEC, BATCH, PUBLISH, WEBHOOK, LEASE];
    println!(
        "{:>6}  {:>8}  {:>10}  {:>11}  {:>10}",
        "kind", "acked", "checked", "per restart", "failures"
    );
    for k in kinds {
        let acked = report.acked.get(k).copied().unwrap_or(0);
        let checked = report.checked.get(k).copied().unwrap_or(0);
        println!(
            "{k:>6}  {acked:>8}  {checked:>10}  {:>11.0}  {:>10}",
            checked as f64 / f64::from(report.cycles.max(1)),
            report
                .failures
                .iter()
                .filter(|f| f.contains(&format!("{k} ")))
                .count()
        );
    }
    println!("{}", report.to_json(&cfg));
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("soak: {} FAILURES", report.failures.len());
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `patchwork` binary next to this test's own target dir (`cargo test --workspace`
    /// builds it), or `PATCHWORK_BIN`; built with cargo when it is missing.
    fn patchwork_bin() -> PathBuf {
        if let Some(p) = std::env::var_os("PATCHWORK_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/loadtests-… → target/<profile>/patchwork
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let bin = profile_dir.join("patchwork");
        if !bin.is_file() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "patchwork-cli", "--bin", "patchwork"]);
            if profile_dir.ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("running cargo build");
            assert!(status.success(), "cargo build -p patchwork-cli failed");
        }
        bin
    }

    #[test]
    fn arguments_are_checked() {
        let parse = |extra: &[&str]| {
            let mut v = vec!["soak", "--bin", "/bin/sh"];
            v.extend_from_slice(extra);
            SoakArgs::try_parse_from(v).unwrap().validate()
        };
        assert!(parse(&[]).is_ok());
        assert_eq!(parse(&["--seed", "7"]).unwrap().seed, 7);
        assert_eq!(
            parse(&["--cycles", "20", "--cycles", "3"]).unwrap().cycles,
            3
        );
        assert!(parse(&["--cycles", "0"]).is_err());
        assert!(parse(&["--seconds-per-cycle", "0"]).is_err());
        assert!(parse(&["--seconds-per-cycle", "NaN"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert!(parse(&["--documents", "0"]).is_err());
        let missing = SoakArgs::try_parse_from(["soak", "--bin", "/nonexistent/patchwork"]);
        assert!(missing.unwrap().validate().is_err());
    }

    #[test]
    fn rng_is_reproducible() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        for _ in 0..100 {
            assert_eq!(a.next(), b.next());
        }
        assert!((0..1000).all(|_| a.below(7) < 7));
    }

    /// The checks are not vacuous: a lost row, message or delivery, another payload, a stored
    /// fence below an acknowledged one and a damaged file are all reported.
    #[test]
    fn checks_find_lost_writes_and_damage() {
        let root = new_data_dir().unwrap();
        let docs = root.join("documents");
        std::fs::create_dir_all(&docs).unwrap();
        let c = Connection::open(docs.join("soak-0.sqlite3")).unwrap();
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v);
             CREATE TABLE _patchwork_messages (id INTEGER PRIMARY KEY, payload BLOB);
             CREATE TABLE webhook_inbox (id INTEGER PRIMARY KEY, payload BLOB);
             CREATE TABLE _patchwork_leases (resource TEXT PRIMARY KEY, fence INTEGER);
             INSERT INTO t (k) VALUES ('a');
             INSERT INTO _patchwork_messages VALUES (1, CAST('m1' AS BLOB));
             INSERT INTO webhook_inbox VALUES (1, CAST('h1' AS BLOB));
             INSERT INTO _patchwork_leases VALUES ('r', 3);",
        )
        .unwrap();
        drop(c);
        let mut l = Ledger::new(1);
        l.exec[0] = vec!["a".into(), "lost".into()];
        l.publish[0] = vec![(1, "m1".into()), (2, "m2".into())];
        l.webhook[0] = vec![(1, "other".into())];
        l.fences.insert((0, "r".into()), 4);
        let mut checked = BTreeMap::new();
        acked_present(&root, &mut l, &mut checked, "test").unwrap();
        assert_eq!(l.failures.len(), 4, "{:?}", l.failures);
        assert_eq!(checked[EXEC], 2);
        assert_eq!(integrity(&root, &mut l, "test").unwrap(), 1);
        assert_eq!(l.failures.len(), 4, "the intact file passes");

        // A page of the file overwritten with garbage.
        let path = docs.join("soak-0.sqlite3");
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096.min(bytes.len() / 2);
        for b in &mut bytes[page..page + 200] {
            *b = 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        integrity(&root, &mut l, "test").unwrap();
        assert_eq!(l.failures.len(), 5, "{:?}", l.failures);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Three short crash cycles against the real binary: every kind acknowledged, every check
    /// passes.
    #[test]
    fn three_short_crash_cycles() {
        let cfg = SoakConfig {
            bin: patchwork_bin(),
            cycles: 3,
            seconds_per_cycle: Duration::from_millis(1500),
            concurrency: 6,
            documents: 2,
            seed: 0x5eed,
            data_dir: None,
            keep: false,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let report = rt.block_on(run(&cfg)).expect("the soak ran");
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.cycles, 3);
        for kind in [EXEC, BATCH, PUBLISH, WEBHOOK, LEASE] {
            assert!(
                report.acked.get(kind).copied().unwrap_or(0) > 0,
                "no {kind} acknowledged: {:?}",
                report.acked
            );
        }
        assert!(report.checked.values().sum::<u64>() > 0);
        // service.db and the two documents, at every restart and after the final stop.
        assert!(report.files >= 3, "{report:?}");
        assert!(report.integrity_checks >= 4 * 3, "{report:?}");
    }
}
