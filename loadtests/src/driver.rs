//! The driver: one shared keep-alive HTTP/1 client, N worker tasks, per-worker
//! latency histograms merged at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::scenarios::Scenario;

/// The shared client type.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A request body.
pub enum Body {
    Empty,
    /// Serialised per request, sent with `content-type: application/json`.
    Json(serde_json::Value),
    /// Raw bytes with the given content type.
    #[allow(
        dead_code,
        reason = "for raw-body scenarios; publish sends JSON with base64"
    )]
    Bytes {
        content_type: &'static str,
        data: Bytes,
    },
}

/// One concrete request, relative to the base URL.
pub struct RequestSpec {
    pub method: Method,
    /// Path starting with `/`, appended to the base URL.
    pub path: String,
    /// Send the bearer token.
    pub auth: bool,
    pub headers: &'static [(&'static str, &'static str)],
    pub body: Body,
}

/// A fully read response.
pub struct Reply {
    pub status: StatusCode,
    #[allow(dead_code, reason = "read by scenario setup hooks")]
    pub body: Bytes,
}

/// Why a request produced no response.
#[derive(Debug)]
pub enum Failure {
    /// The request could not be built (bad path or header).
    Build(String),
    /// Could not connect.
    Connect(String),
    /// Any other error while sending or receiving the head.
    Transport(String),
    /// Error while reading the response body.
    Body(String),
    /// The per-request timeout elapsed.
    Timeout,
}

impl Failure {
    /// Short key used in `error_kinds`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Build(_) => "build",
            Self::Connect(_) => "connect",
            Self::Transport(_) => "transport",
            Self::Body(_) => "body",
            Self::Timeout => "timeout",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Build(m) => write!(f, "building request: {m}"),
            Self::Connect(m) => write!(f, "connect: {m}"),
            Self::Transport(m) => write!(f, "transport: {m}"),
            Self::Body(m) => write!(f, "reading body: {m}"),
            Self::Timeout => f.write_str("request timed out"),
        }
    }
}

impl std::error::Error for Failure {}

/// `err` and its sources, joined with `: `.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// What scenarios and setup hooks see: target, db, and a way to send.
pub struct Ctx {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:18080`.
    pub base: String,
    /// Database id (`--db`).
    pub db: String,
    auth_header: Option<HeaderValue>,
    client: HttpClient,
    timeout: Duration,
}

impl Ctx {
    /// `pool_size` is the idle keep-alive connections kept per host
    /// (the concurrency, so every worker can keep its connection).
    pub fn new(
        base: String,
        db: String,
        token: &str,
        timeout: Duration,
        pool_size: usize,
    ) -> anyhow::Result<Self> {
        let auth_header = if token.is_empty() {
            None
        } else {
            let mut v = HeaderValue::try_from(format!("Bearer {token}"))
                .context("the token contains characters not allowed in a header")?;
            v.set_sensitive(true);
            Some(v)
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(pool_size)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self {
            base,
            db,
            auth_header,
            client,
            timeout,
        })
    }

    fn build(&self, spec: &RequestSpec) -> Result<Request<Full<Bytes>>, Failure> {
        let mut b = Request::builder()
            .method(spec.method.clone())
            .uri(format!("{}{}", self.base, spec.path));
        if spec.auth {
            let v = self
                .auth_header
                .clone()
                .ok_or_else(|| Failure::Build("scenario needs --token".to_owned()))?;
            b = b.header(AUTHORIZATION, v);
        }
        for (name, value) in spec.headers {
            b = b.header(*name, *value);
        }
        let body = match &spec.body {
            Body::Empty => Bytes::new(),
            Body::Json(v) => {
                b = b.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| Failure::Build(e.to_string()))?)
            }
            Body::Bytes { content_type, data } => {
                b = b.header(CONTENT_TYPE, *content_type);
                data.clone()
            }
        };
        b.body(Full::new(body))
            .map_err(|e| Failure::Build(chain(&e)))
    }

    /// Sends one request and reads the whole body, within the per-request
    /// timeout. Any status is `Ok`; callers judge it.
    pub async fn send(&self, spec: &RequestSpec) -> Result<Reply, Failure> {
        let req = self.build(spec)?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    Failure::Connect(chain(&e))
                } else {
                    Failure::Transport(chain(&e))
                }
            })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure::Body(chain(&e)))?
                .to_bytes();
            Ok(Reply { status, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }
}

/// Bounds of one run.
pub struct RunConfig {
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub max_requests: u64,
}

/// Counters of one worker, or of all of them once merged.
pub struct Stats {
    /// Latency in microseconds of every request that got a complete response
    /// (expected status or not); transport errors and timeouts are excluded.
    pub hist: Histogram<u64>,
    /// Timed requests sent (successes + errors).
    pub requests: u64,
    pub errors: u64,
    /// Error counts by kind: `status_NNN`, `connect`, `transport`, `body`,
    /// `timeout`, `build`.
    pub error_kinds: BTreeMap<String, u64>,
    /// The first message seen per error kind, for diagnosis.
    pub error_samples: BTreeMap<String, String>,
    /// When the last request of this worker finished.
    pub finished: Option<Instant>,
}

impl Stats {
    fn new() -> Self {
        Self {
            // Auto-resizing, 3 significant figures: small until slow
            // requests are actually seen.
            hist: Histogram::new(3).expect("3 significant figures is valid"),
            requests: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            finished: None,
        }
    }

    fn error(&mut self, kind: String, sample: impl FnOnce() -> String) {
        self.errors += 1;
        *self.error_kinds.entry(kind.clone()).or_default() += 1;
        self.error_samples.entry(kind).or_insert_with(sample);
    }

    fn merge(&mut self, other: Self) {
        // Both are auto-resizing, so adding cannot fail.
        self.hist
            .add(&other.hist)
            .expect("auto-resizing histograms merge");
        self.requests += other.requests;
        self.errors += other.errors;
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
        for (k, v) in other.error_samples {
            self.error_samples.entry(k).or_insert(v);
        }
        self.finished = self.finished.max(other.finished);
    }
}

/// The merged result of a run.
pub struct RunResult {
    pub stats: Stats,
    /// From the start of the timed run until its last request finished.
    pub elapsed: Duration,
}

/// Runs the scenario's setup hook, then warm-up, then the timed run.
pub async fn run(
    ctx: Arc<Ctx>,
    scenario: Arc<Scenario>,
    cfg: &RunConfig,
) -> anyhow::Result<RunResult> {
    if let Some(setup) = scenario.setup {
        eprintln!("loadtests: running setup for {}", scenario.name);
        setup(&ctx)
            .await
            .with_context(|| format!("setup of scenario {}", scenario.name))?;
    }
    if !cfg.warmup.is_zero() {
        eprintln!("loadtests: warming up for {:?}", cfg.warmup);
    }
    // A fixed timeline: warm-up until `start`, timed requests until
    // `deadline`. A worker whose last warm-up request is still in flight at
    // `start` joins the timed run when it completes.
    let start = Instant::now() + cfg.warmup;
    let deadline = start + cfg.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for worker_idx in 0..cfg.concurrency {
        let w = Worker {
            ctx: Arc::clone(&ctx),
            scenario: Arc::clone(&scenario),
            index: worker_idx,
            start,
            deadline,
            max_requests: cfg.max_requests,
            issued: Arc::clone(&issued),
        };
        tasks.spawn(w.run());
    }
    let mut total = Stats::new();
    while let Some(res) = tasks.join_next().await {
        total.merge(res.context("a worker task failed")?);
    }
    let elapsed = total
        .finished
        .map_or(Duration::ZERO, |f| f.saturating_duration_since(start));
    Ok(RunResult {
        stats: total,
        elapsed,
    })
}

struct Worker {
    ctx: Arc<Ctx>,
    scenario: Arc<Scenario>,
    index: usize,
    start: Instant,
    deadline: Instant,
    max_requests: u64,
    issued: Arc<AtomicU64>,
}

impl Worker {
    fn spec(&self, seq: u64) -> RequestSpec {
        let s = &self.scenario;
        RequestSpec {
            method: s.method.clone(),
            path: (s.path)(&self.ctx, self.index, seq),
            auth: s.auth,
            headers: s.headers,
            body: (s.body)(&self.ctx, self.index, seq),
        }
    }

    async fn run(self) -> Stats {
        let mut stats = Stats::new();
        let mut seq: u64 = 0;
        // Warm-up: results are discarded.
        while Instant::now() < self.start {
            let _ = self.ctx.send(&self.spec(seq)).await;
            seq += 1;
        }
        loop {
            if Instant::now() >= self.deadline
                || self.issued.fetch_add(1, Ordering::Relaxed) >= self.max_requests
            {
                break;
            }
            let spec = self.spec(seq);
            seq += 1;
            let began = Instant::now();
            let result = self.ctx.send(&spec).await;
            let done = Instant::now();
            stats.requests += 1;
            stats.finished = Some(done);
            match result {
                Ok(reply) => {
                    let micros = u64::try_from((done - began).as_micros()).unwrap_or(u64::MAX);
                    let micros = micros.max(1);
                    // Auto-resizing: `record` grows the histogram as needed
                    // (`saturating_record` would clamp to the current range).
                    if stats.hist.record(micros).is_err() {
                        stats.hist.saturating_record(micros);
                    }
                    let code = reply.status.as_u16();
                    if !self.scenario.expected.contains(&code) {
                        stats.error(format!("status_{code}"), || {
                            format!(
                                "unexpected status {} for {} {}",
                                reply.status, spec.method, spec.path
                            )
                        });
                    }
                }
                Err(failure) => {
                    stats.error(failure.kind().to_owned(), || failure.to_string());
                }
            }
        }
        stats
    }
}
