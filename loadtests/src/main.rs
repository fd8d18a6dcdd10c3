//! `loadtests`: the Patchwork load generator.
//!
//! ```text
//! loadtests SCENARIO --url URL [--token T] [--concurrency N] [--duration S]
//!           [--db DB_ID] [--max-requests M] [--warmup S] [--timeout-ms MS]
//! loadtests watch-fanout --url URL --token T [--watches N] [--writes W] [common flags]
//! loadtests sse-fanout --url URL --token T [--subscribers N] [--rate R] [--server-pid PID]
//!           [--duration S] [--concurrency P] [--db DB_ID] [--timeout-ms MS]
//! loadtests publish-ws --url URL --token T [--concurrency C] [--window W] [--payload-bytes N]
//!           [--duration S] [--warmup S] [--db DB_ID] [--timeout-ms MS]
//! loadtests publish-nats --url nats://127.0.0.1:PORT [--concurrency C] [--window W]
//!           [--payload-bytes N] [--duration S] [--warmup S] [--timeout-ms MS]
//! loadtests hostile --url URL --token T --server-pid PID [--scenarios sse,waiters,slowloris,bodies]
//!           (loadtests hostile --help: its own flags)
//! loadtests presence --url URL --token T [--members 10000] [--rooms 100] [--concurrency 64]
//!           [--duration S] [--probes 50] (loadtests presence --help: its own flags)
//! loadtests hearth --url URL --token ADMIN [--server-pid PID] [--rooms 20] [--members 20]
//!           [--duration S] (loadtests hearth --help: its own flags)
//! loadtests soak --bin PATH/patchwork [--cycles 20] [--seconds-per-cycle S] [--concurrency N]
//!           [--documents D] [--seed N] [--data-dir DIR] [--keep]
//! ```
//!
//! Prints a human table, then the same numbers as one JSON object on the last
//! line of stdout. Progress and error samples go to stderr.

// This binary's whole purpose is to print a report on stdout; the workspace
// lint against `println!` is aimed at library code.
#![allow(clippy::print_stdout)]

mod driver;
mod hearth;
mod hostile;
mod natspub;
mod presence;
mod pubsub;
mod scenarios;
mod soak;
mod sse;
mod watch;
mod wspub;

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use hyper::Uri;

use crate::driver::{Ctx, RunConfig, RunResult};
use crate::pubsub::FanoutConfig;
use crate::scenarios::Scenario;
use crate::watch::WatchConfig;
use crate::wspub::WsPubConfig;

const MAX_DURATION_S: f64 = 600.0;
const MAX_CONCURRENCY: usize = 4096;
const DEFAULT_CONCURRENCY: usize = 16;
const MAX_TIMEOUT_MS: u64 = 600_000;

/// Load generator for Patchwork. Only loopback targets are allowed.
#[derive(Parser, Debug)]
#[command(
    name = "loadtests",
    version,
    after_help = scenarios_help()
)]
struct Args {
    /// Scenario to run, or `watch-fanout` / `sse-fanout` / `publish-ws` / `publish-nats` (see
    /// below).
    scenario: String,

    /// Base URL of the server; must be loopback (127.0.0.0/8, localhost, [::1]); `http://`,
    /// or `nats://` for publish-nats (a NATS server with JetStream).
    #[arg(long)]
    url: String,

    /// Bearer token, for scenarios that need one.
    #[arg(
        long,
        env = "PATCHWORK_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,

    /// Number of concurrent workers (each keeps one keep-alive connection busy) [default: 16;
    /// sse-fanout: publishes in flight at most, default 32; publish-ws / publish-nats:
    /// connections, default 16].
    #[arg(long)]
    concurrency: Option<usize>,

    /// Length of the timed run in seconds (max 600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Database id used by database scenarios.
    #[arg(long, default_value = "loadtest")]
    db: String,

    /// Stop after this many timed requests in total, even before --duration.
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,

    /// Seconds of unrecorded warm-up before the timed run (max 600).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,

    /// Per-request timeout in milliseconds; a timeout counts as an error.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,

    /// watch-fanout only: SSE watch streams to open (default 1000).
    #[arg(long)]
    watches: Option<usize>,

    /// watch-fanout only: sequential writes whose fan-out is timed (default 50).
    #[arg(long)]
    writes: Option<u32>,

    /// sse-fanout only: SSE subscribers to open (default 1000).
    #[arg(long)]
    subscribers: Option<usize>,

    /// sse-fanout only: messages published per second (default 1000).
    #[arg(long)]
    rate: Option<u32>,

    /// sse-fanout only: the server's process id, to report its RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,

    /// publish-ws / publish-nats only: publishes in flight per connection (default 64; 1 for
    /// publish-nats; 1 waits for each ack before sending the next).
    #[arg(long)]
    window: Option<usize>,

    /// publish-ws / publish-nats only: payload size in bytes, before base64 (default 1024).
    #[arg(long)]
    payload_bytes: Option<usize>,
}

/// The scenario list shown after `--help`.
fn scenarios_help() -> String {
    let mut out = String::from("Scenarios:");
    for s in scenarios::all() {
        out.push_str(&format!("\n  {:<10} {}", s.name, s.about));
    }
    out.push_str(&format!(
        "\n  {} {}\n               (uses the insert scenario; --watches N, --writes W)",
        watch::NAME,
        watch::ABOUT
    ));
    out.push_str(&format!(
        "\n  {}   {}\n               (--subscribers N, --rate R, --server-pid PID; \
         --concurrency = publishes in flight)",
        pubsub::NAME,
        pubsub::ABOUT
    ));
    out.push_str(&format!(
        "\n  {}   {}\n               (--concurrency = connections, --window W, --payload-bytes N)",
        wspub::NAME,
        wspub::ABOUT
    ));
    out.push_str(&format!(
        "\n  {} {}\n               (--url nats://…; --concurrency = connections, --window W \
         (default 1), --payload-bytes N; creates the stream {} on {})",
        natspub::NAME,
        natspub::ABOUT,
        natspub::STREAM,
        natspub::SUBJECTS
    ));
    out.push_str(&format!(
        "\n  {}      {}\n               (loadtests hostile --help: its own flags)",
        hostile::NAME,
        hostile::ABOUT
    ));
    out.push_str(&format!(
        "\n  {}   {}\n               (loadtests presence --help: its own flags)",
        presence::NAME,
        presence::ABOUT
    ));
    out.push_str(&format!(
        "\n  {}     {}\n               (loadtests hearth --help: its own flags)",
        hearth::NAME,
        hearth::ABOUT
    ));
    out.push_str(&format!(
        "\n  {}         {}\n               (loadtests soak --help: its own flags, no --url)",
        soak::NAME,
        soak::ABOUT
    ));
    out
}

/// Validated settings.
struct Config {
    /// For `watch-fanout`, the `insert` scenario it loads the server with; for `sse-fanout` and
    /// `publish-ws`, `publish`.
    scenario: Scenario,
    /// Set for `watch-fanout`.
    watch: Option<WatchConfig>,
    /// Set for `sse-fanout`.
    fanout: Option<FanoutConfig>,
    /// Set for `publish-ws`.
    wspub: Option<WsPubConfig>,
    /// Set for `publish-nats` (same settings as `publish-ws`).
    natspub: Option<WsPubConfig>,
    target: Target,
    token: String,
    db: String,
    run: RunConfig,
    timeout: Duration,
}

/// A checked loopback base URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `scheme://authority[/prefix]` without a trailing slash.
    base: String,
    /// Host without brackets.
    host: String,
    port: u16,
}

/// Accepts only `http://` URLs whose host is in 127.0.0.0/8, `localhost` or
/// `[::1]`, with no user info, query or fragment.
fn check_url(raw: &str) -> anyhow::Result<Target> {
    check_url_with_scheme(raw, "http", 80)
}

/// [`check_url`] for `nats://` (`publish-nats`), which also refuses a path.
fn check_nats_url(raw: &str) -> anyhow::Result<Target> {
    let t = check_url_with_scheme(raw, "nats", natspub::DEFAULT_PORT)?;
    let path = t.base.splitn(4, '/').nth(3).unwrap_or("");
    ensure!(
        path.is_empty(),
        "refusing --url {raw:?}: a nats:// URL has no path"
    );
    Ok(t)
}

/// The loopback rule of [`check_url`] for URLs of `scheme` (default port `default_port`).
fn check_url_with_scheme(raw: &str, scheme: &str, default_port: u16) -> anyhow::Result<Target> {
    let refuse = |why: &str| {
        anyhow::anyhow!(
            "refusing --url {raw:?}: {why}; load may only target loopback \
             (127.0.0.0/8, localhost or [::1]) over {scheme}://"
        )
    };
    if raw.contains('#') {
        return Err(refuse("fragments are not allowed"));
    }
    let uri: Uri = raw
        .parse()
        .map_err(|e| refuse(&format!("not a URL ({e})")))?;
    match uri.scheme_str() {
        Some(s) if s == scheme => {}
        Some(other) => return Err(refuse(&format!("scheme {other:?} is not supported"))),
        None => return Err(refuse(&format!("missing {scheme}:// scheme"))),
    }
    let authority = uri.authority().ok_or_else(|| refuse("missing host"))?;
    if authority.as_str().contains('@') {
        return Err(refuse("user info is not allowed"));
    }
    if uri.query().is_some() {
        return Err(refuse("a query string is not allowed"));
    }
    let host = authority.host();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let loopback = if bare.eq_ignore_ascii_case("localhost") {
        true
    } else {
        match bare.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => v4.is_loopback(),
            Ok(IpAddr::V6(v6)) => v6.is_loopback(),
            Err(_) => false,
        }
    };
    if !loopback {
        return Err(refuse(&format!("host {host:?} is not loopback")));
    }
    let port = authority.port_u16().unwrap_or(default_port);
    let path = uri.path().trim_end_matches('/');
    Ok(Target {
        base: format!("{scheme}://{}{}", authority.as_str(), path),
        host: bare.to_ascii_lowercase(),
        port,
    })
}

/// `localhost` normally resolves to loopback, but check rather than assume.
async fn check_resolves_to_loopback(target: &Target) -> anyhow::Result<()> {
    if target.host != "localhost" {
        return Ok(());
    }
    let addrs: Vec<_> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .context("resolving localhost")?
        .collect();
    ensure!(!addrs.is_empty(), "localhost did not resolve");
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!("refusing: localhost resolves to non-loopback address {bad}");
    }
    Ok(())
}

fn check_seconds(name: &str, v: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    ensure!(v.is_finite(), "--{name} must be a number of seconds");
    if allow_zero {
        ensure!(v >= 0.0, "--{name} must be >= 0");
    } else {
        ensure!(v > 0.0, "--{name} must be > 0");
    }
    ensure!(
        v <= MAX_DURATION_S,
        "--{name} must be at most {MAX_DURATION_S} seconds"
    );
    Ok(Duration::from_secs_f64(v))
}

fn validate(args: Args) -> anyhow::Result<Config> {
    let is_watch = args.scenario == watch::NAME;
    let is_fanout = args.scenario == pubsub::NAME;
    let is_wspub = args.scenario == wspub::NAME;
    let is_nats = args.scenario == natspub::NAME;
    ensure!(
        is_watch || (args.watches.is_none() && args.writes.is_none()),
        "--watches and --writes only apply to {}",
        watch::NAME
    );
    ensure!(
        is_fanout
            || (args.subscribers.is_none() && args.rate.is_none() && args.server_pid.is_none()),
        "--subscribers, --rate and --server-pid only apply to {}",
        pubsub::NAME
    );
    ensure!(
        is_wspub || is_nats || (args.window.is_none() && args.payload_bytes.is_none()),
        "--window and --payload-bytes only apply to {} and {}",
        wspub::NAME,
        natspub::NAME
    );
    let mut wspub = None;
    let mut natspub = None;
    let (scenario, watch, fanout) = if is_watch {
        let watches = args.watches.unwrap_or(watch::DEFAULT_WATCHES);
        let writes = args.writes.unwrap_or(watch::DEFAULT_WRITES);
        ensure!(
            (1..=watch::MAX_WATCHES).contains(&watches),
            "--watches must be between 1 and {}",
            watch::MAX_WATCHES
        );
        ensure!(
            (1..=watch::MAX_WRITES).contains(&writes),
            "--writes must be between 1 and {}",
            watch::MAX_WRITES
        );
        let insert = scenarios::find("insert").context("the insert scenario is missing")?;
        (insert, Some(WatchConfig { watches, writes }), None)
    } else if is_fanout {
        let subscribers = args.subscribers.unwrap_or(pubsub::DEFAULT_SUBSCRIBERS);
        let rate = args.rate.unwrap_or(pubsub::DEFAULT_RATE);
        ensure!(
            (1..=pubsub::MAX_SUBSCRIBERS).contains(&subscribers),
            "--subscribers must be between 1 and {}",
            pubsub::MAX_SUBSCRIBERS
        );
        ensure!(
            (1..=pubsub::MAX_RATE).contains(&rate),
            "--rate must be between 1 and {}",
            pubsub::MAX_RATE
        );
        ensure!(
            args.warmup == 0.0,
            "--warmup does not apply to {} (it warms up with marked messages)",
            pubsub::NAME
        );
        let publish = scenarios::find("publish").context("the publish scenario is missing")?;
        let fc = FanoutConfig {
            subscribers,
            rate,
            server_pid: args.server_pid,
        };
        (publish, None, Some(fc))
    } else if is_wspub {
        let window = args.window.unwrap_or(wspub::DEFAULT_WINDOW);
        let payload_bytes = args.payload_bytes.unwrap_or(wspub::DEFAULT_PAYLOAD_BYTES);
        ensure!(
            (1..=wspub::MAX_WINDOW).contains(&window),
            "--window must be between 1 and {}",
            wspub::MAX_WINDOW
        );
        ensure!(
            payload_bytes <= wspub::MAX_PAYLOAD_BYTES,
            "--payload-bytes must be at most {}",
            wspub::MAX_PAYLOAD_BYTES
        );
        wspub = Some(WsPubConfig {
            window,
            payload_bytes,
        });
        let publish = scenarios::find("publish").context("the publish scenario is missing")?;
        (publish, None, None)
    } else if is_nats {
        let window = args.window.unwrap_or(natspub::DEFAULT_WINDOW);
        let payload_bytes = args.payload_bytes.unwrap_or(wspub::DEFAULT_PAYLOAD_BYTES);
        ensure!(
            (1..=wspub::MAX_WINDOW).contains(&window),
            "--window must be between 1 and {}",
            wspub::MAX_WINDOW
        );
        ensure!(
            payload_bytes <= natspub::MAX_PAYLOAD_BYTES,
            "--payload-bytes must be at most {}",
            natspub::MAX_PAYLOAD_BYTES
        );
        natspub = Some(WsPubConfig {
            window,
            payload_bytes,
        });
        // Only for the shape of `Config`: nothing is sent to Patchwork.
        let publish = scenarios::find("publish").context("the publish scenario is missing")?;
        (publish, None, None)
    } else {
        let scenario = scenarios::find(&args.scenario).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown scenario {:?}; known: {}, {}, {}, {}, {}",
                args.scenario,
                scenarios::names().join(", "),
                watch::NAME,
                pubsub::NAME,
                wspub::NAME,
                natspub::NAME
            )
        })?;
        (scenario, None, None)
    };
    let concurrency = args.concurrency.unwrap_or(if is_fanout {
        pubsub::DEFAULT_PUBLISHERS
    } else {
        DEFAULT_CONCURRENCY
    });
    let target = if is_nats {
        check_nats_url(&args.url)?
    } else {
        check_url(&args.url)?
    };
    ensure!(
        (1..=MAX_CONCURRENCY).contains(&concurrency),
        "--concurrency must be between 1 and {MAX_CONCURRENCY}"
    );
    let duration = check_seconds("duration", args.duration, false)?;
    let warmup = check_seconds("warmup", args.warmup, true)?;
    ensure!(args.max_requests >= 1, "--max-requests must be >= 1");
    ensure!(
        (1..=MAX_TIMEOUT_MS).contains(&args.timeout_ms),
        "--timeout-ms must be between 1 and {MAX_TIMEOUT_MS}"
    );
    ensure!(
        !args.db.is_empty()
            && args.db.len() <= 128
            && args
                .db
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "--db must be 1-128 characters of [A-Za-z0-9._-]"
    );
    // A NATS server here has no authentication.
    if scenario.auth && !is_nats {
        ensure!(
            !args.token.is_empty(),
            "scenario {} needs --token (or PATCHWORK_TOKEN)",
            if is_watch || is_fanout || is_wspub {
                args.scenario.as_str()
            } else {
                scenario.name
            }
        );
    }
    Ok(Config {
        scenario,
        watch,
        fanout,
        wspub,
        natspub,
        target,
        token: args.token,
        db: args.db,
        run: RunConfig {
            concurrency,
            duration,
            warmup,
            max_requests: args.max_requests,
        },
        timeout: Duration::from_millis(args.timeout_ms),
    })
}

fn ms(micros: u64) -> f64 {
    round(micros as f64 / 1000.0, 3)
}

fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

fn report(name: &str, concurrency: usize, result: &RunResult) -> serde_json::Value {
    let s = &result.stats;
    let secs = result.elapsed.as_secs_f64();
    let rps = if secs > 0.0 {
        s.requests as f64 / secs
    } else {
        0.0
    };
    let q = |p: f64| {
        if s.hist.is_empty() {
            0.0
        } else {
            ms(s.hist.value_at_quantile(p))
        }
    };
    serde_json::json!({
        "scenario": name,
        "concurrency": concurrency,
        "duration_s": round(secs, 3),
        "requests": s.requests,
        "rps": round(rps, 1),
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "max_ms": if s.hist.is_empty() { 0.0 } else { ms(s.hist.max()) },
        "errors": s.errors,
        "error_kinds": s.error_kinds,
    })
}

/// Prints `cols` as a two-line table: headers, then values, each column right-aligned.
fn print_columns(cols: &[(&str, String)]) {
    let widths: Vec<usize> = cols.iter().map(|(h, v)| h.len().max(v.len())).collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(cols.iter().map(|(h, _)| *h).collect()));
    println!("{}", line(cols.iter().map(|(_, v)| v.as_str()).collect()));
}

fn print_table(j: &serde_json::Value, result: &RunResult) {
    let num = |key: &str, decimals: usize| format!("{:.decimals$}", j[key].as_f64().unwrap_or(0.0));
    let cols = [
        ("scenario", j["scenario"].as_str().unwrap_or("").to_owned()),
        ("concurrency", j["concurrency"].to_string()),
        ("duration_s", num("duration_s", 2)),
        ("requests", j["requests"].to_string()),
        ("req/s", num("rps", 1)),
        ("p50_ms", num("p50_ms", 3)),
        ("p90_ms", num("p90_ms", 3)),
        ("p99_ms", num("p99_ms", 3)),
        ("max_ms", num("max_ms", 3)),
        ("errors", j["errors"].to_string()),
    ];
    print_columns(&cols);
    if !result.stats.error_kinds.is_empty() {
        println!("errors by kind:");
        for (kind, n) in &result.stats.error_kinds {
            println!("  {kind:<16} {n}");
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    check_resolves_to_loopback(&cfg.target).await?;
    if let Some(wc) = cfg.watch {
        return watch::run(cfg, wc).await;
    }
    if let Some(fc) = cfg.fanout {
        return pubsub::run(cfg, fc).await;
    }
    if let Some(wc) = cfg.wspub {
        return wspub::run(cfg, wc).await;
    }
    if let Some(nc) = cfg.natspub {
        return natspub::run(cfg, nc).await;
    }
    let ctx = Arc::new(Ctx::new(
        cfg.target.base.clone(),
        cfg.db,
        &cfg.token,
        cfg.timeout,
        cfg.run.concurrency,
    )?);
    let name = cfg.scenario.name;
    eprintln!(
        "loadtests: {name} against {} with concurrency {} for {:?} (max {} requests)",
        cfg.target.base, cfg.run.concurrency, cfg.run.duration, cfg.run.max_requests
    );
    let result = driver::run(ctx, Arc::new(cfg.scenario), &cfg.run).await?;
    for (kind, sample) in &result.stats.error_samples {
        eprintln!("loadtests: first {kind} error: {sample}");
    }
    let j = report(name, cfg.run.concurrency, &result);
    print_table(&j, &result);
    // The JSON object is always the last line of stdout.
    println!("{j}");
    let s = &result.stats;
    if s.requests == 0 || s.errors == s.requests {
        eprintln!("loadtests: every request failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // `soak` starts its own server and has flags of its own (`src/soak.rs`).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == soak::NAME) {
        return soak::main(argv.into_iter().skip(1).collect());
    }
    // `hostile` too (`src/hostile.rs`).
    if argv.get(1).is_some_and(|a| a == hostile::NAME) {
        return hostile::main(argv.into_iter().skip(1).collect());
    }
    // And `presence` (`src/presence.rs`).
    if argv.get(1).is_some_and(|a| a == presence::NAME) {
        return presence::main(argv.into_iter().skip(1).collect());
    }
    // And `hearth` (`src/hearth.rs`).
    if argv.get(1).is_some_and(|a| a == hearth::NAME) {
        return hearth::main(argv.into_iter().skip(1).collect());
    }
    let args = Args::parse_from(argv);
    let cfg = match validate(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadtests: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtests: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtests: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> anyhow::Result<Config> {
        let mut v = vec!["loadtests"];
        v.extend_from_slice(extra);
        validate(Args::try_parse_from(v)?)
    }

    #[test]
    fn loopback_urls_are_accepted() {
        for (raw, base, port) in [
            ("http://127.0.0.1:18080", "http://127.0.0.1:18080", 18080),
            ("http://127.0.0.1:18080/", "http://127.0.0.1:18080", 18080),
            ("http://127.1.2.3", "http://127.1.2.3", 80),
            ("http://localhost:8080", "http://localhost:8080", 8080),
            ("http://LOCALHOST:8080", "http://LOCALHOST:8080", 8080),
            ("http://[::1]:8080", "http://[::1]:8080", 8080),
            ("http://127.0.0.1:9/prefix/", "http://127.0.0.1:9/prefix", 9),
        ] {
            let t = check_url(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(t.base, base, "{raw}");
            assert_eq!(t.port, port, "{raw}");
        }
        assert_eq!(check_url("http://[::1]:1").unwrap().host, "::1");
        assert_eq!(check_url("http://LocalHost:1").unwrap().host, "localhost");
    }

    #[test]
    fn non_loopback_urls_are_refused() {
        for raw in [
            "http://10.0.0.1:8080",
            "http://0.0.0.0:8080",
            "http://128.0.0.1",
            "http://example.com",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
            "http://127.0.0.1@example.com",
            "http://user@127.0.0.1",
            "http://[::2]:8080",
            "http://[::ffff:10.0.0.1]",
            "http://2130706433",
            "https://127.0.0.1",
            "ftp://127.0.0.1",
            "127.0.0.1:8080",
            "/healthz",
            "",
            "http://127.0.0.1/?a=b",
            "http://127.0.0.1/#x",
        ] {
            let err = check_url(raw).expect_err(raw).to_string();
            assert!(err.contains("refusing"), "{raw}: {err}");
        }
    }

    #[test]
    fn defaults_are_applied() {
        let c = args(&["healthz", "--url", "http://127.0.0.1:1"]).unwrap();
        assert_eq!(c.scenario.name, "healthz");
        assert_eq!(c.run.duration, Duration::from_secs(10));
        assert_eq!(c.run.warmup, Duration::ZERO);
        assert_eq!(c.run.max_requests, 10_000_000);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.db, "loadtest");
    }

    #[test]
    fn full_command_line_parses() {
        let c = args(&[
            "status",
            "--url",
            "http://127.0.0.1:18080",
            "--token",
            "t0k",
            "--concurrency",
            "64",
            "--duration",
            "2.5",
            "--db",
            "bench_1",
            "--max-requests",
            "1000",
            "--warmup",
            "1",
            "--timeout-ms",
            "250",
        ])
        .unwrap();
        assert_eq!(c.scenario.name, "status");
        assert_eq!(c.run.concurrency, 64);
        assert_eq!(c.run.duration, Duration::from_millis(2500));
        assert_eq!(c.run.warmup, Duration::from_secs(1));
        assert_eq!(c.run.max_requests, 1000);
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.db, "bench_1");
        assert_eq!(c.token, "t0k");
    }

    #[test]
    fn bad_arguments_are_rejected() {
        let url = "http://127.0.0.1:1";
        for (bad, needle) in [
            (vec!["nope", "--url", url], "unknown scenario"),
            (vec!["healthz", "--url", "http://10.1.1.1"], "refusing"),
            (
                vec!["healthz", "--url", url, "--concurrency", "0"],
                "concurrency",
            ),
            (
                vec!["healthz", "--url", url, "--concurrency", "100000"],
                "concurrency",
            ),
            (vec!["healthz", "--url", url, "--duration", "0"], "duration"),
            (
                vec!["healthz", "--url", url, "--duration", "601"],
                "duration",
            ),
            (
                vec!["healthz", "--url", url, "--duration", "NaN"],
                "duration",
            ),
            (vec!["healthz", "--url", url, "--warmup=-1"], "warmup"),
            (vec!["healthz", "--url", url, "--warmup", "700"], "warmup"),
            (
                vec!["healthz", "--url", url, "--max-requests", "0"],
                "max-requests",
            ),
            (
                vec!["healthz", "--url", url, "--timeout-ms", "0"],
                "timeout-ms",
            ),
            (vec!["status", "--url", url, "--token="], "needs --token"),
            (
                vec!["status", "--url", url, "--token", "t", "--db", "a/b"],
                "--db",
            ),
            (
                vec!["status", "--url", url, "--token", "t", "--db="],
                "--db",
            ),
        ] {
            let err = match args(&bad) {
                Ok(_) => panic!("{bad:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    #[test]
    fn watch_fanout_parses() {
        let url = "http://127.0.0.1:1";
        let c = args(&["watch-fanout", "--url", url, "--token", "t"]).unwrap();
        assert_eq!(c.scenario.name, "insert");
        assert_eq!(
            c.watch,
            Some(WatchConfig {
                watches: 1000,
                writes: 50
            })
        );
        let c = args(&[
            "watch-fanout",
            "--url",
            url,
            "--token",
            "t",
            "--watches",
            "100",
            "--writes",
            "5",
            "--concurrency",
            "64",
        ])
        .unwrap();
        assert_eq!(
            c.watch,
            Some(WatchConfig {
                watches: 100,
                writes: 5
            })
        );
        assert_eq!(c.run.concurrency, 64);
        assert!(args(&["healthz", "--url", url]).unwrap().watch.is_none());
        for (bad, needle) in [
            (
                vec!["watch-fanout", "--url", url, "--token="],
                "needs --token",
            ),
            (
                vec!["watch-fanout", "--url", "http://10.0.0.1", "--token", "t"],
                "refusing",
            ),
            (
                vec![
                    "watch-fanout",
                    "--url",
                    url,
                    "--token",
                    "t",
                    "--watches",
                    "0",
                ],
                "--watches",
            ),
            (
                vec![
                    "watch-fanout",
                    "--url",
                    url,
                    "--token",
                    "t",
                    "--writes",
                    "0",
                ],
                "--writes",
            ),
            (
                vec!["insert", "--url", url, "--token", "t", "--watches", "5"],
                "only apply",
            ),
        ] {
            let err = match args(&bad) {
                Ok(_) => panic!("{bad:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    #[test]
    fn sse_fanout_parses() {
        let url = "http://127.0.0.1:1";
        let c = args(&["sse-fanout", "--url", url, "--token", "t"]).unwrap();
        assert_eq!(c.scenario.name, "publish");
        assert!(c.watch.is_none());
        assert_eq!(
            c.fanout,
            Some(FanoutConfig {
                subscribers: 1000,
                rate: 1000,
                server_pid: None
            })
        );
        assert_eq!(c.run.concurrency, pubsub::DEFAULT_PUBLISHERS);
        let c = args(&[
            "sse-fanout",
            "--url",
            url,
            "--token",
            "t",
            "--subscribers",
            "10",
            "--rate",
            "50",
            "--server-pid",
            "1234",
            "--duration",
            "2",
            "--concurrency",
            "4",
        ])
        .unwrap();
        assert_eq!(
            c.fanout,
            Some(FanoutConfig {
                subscribers: 10,
                rate: 50,
                server_pid: Some(1234)
            })
        );
        assert_eq!(c.run.concurrency, 4);
        assert_eq!(c.run.duration, Duration::from_secs(2));
        // Other modes keep their default concurrency.
        assert_eq!(
            args(&["healthz", "--url", url]).unwrap().run.concurrency,
            16
        );
        assert!(args(&["healthz", "--url", url]).unwrap().fanout.is_none());
        let fanout = |extra: &[&'static str]| {
            let mut v = vec!["sse-fanout", "--url", url, "--token", "t"];
            v.extend_from_slice(extra);
            v
        };
        for (bad, needle) in [
            (
                vec!["sse-fanout", "--url", url, "--token="],
                "needs --token",
            ),
            (
                vec!["sse-fanout", "--url", "http://192.168.1.1", "--token", "t"],
                "refusing",
            ),
            (fanout(&["--subscribers", "0"]), "--subscribers"),
            (fanout(&["--subscribers", "10001"]), "--subscribers"),
            (fanout(&["--rate", "0"]), "--rate"),
            (fanout(&["--rate", "100001"]), "--rate"),
            (fanout(&["--warmup", "1"]), "--warmup"),
            (fanout(&["--watches", "5"]), "only apply"),
            (
                vec!["publish", "--url", url, "--token", "t", "--rate", "5"],
                "only apply",
            ),
            (
                vec!["status", "--url", url, "--token", "t", "--server-pid", "1"],
                "only apply",
            ),
        ] {
            let err = match args(&bad) {
                Ok(_) => panic!("{bad:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    #[test]
    fn publish_ws_parses() {
        let url = "http://127.0.0.1:1";
        let c = args(&["publish-ws", "--url", url, "--token", "t"]).unwrap();
        assert_eq!(c.scenario.name, "publish");
        assert!(c.watch.is_none() && c.fanout.is_none());
        assert_eq!(
            c.wspub,
            Some(WsPubConfig {
                window: 64,
                payload_bytes: 1024
            })
        );
        assert_eq!(c.run.concurrency, 16);
        let c = args(&[
            "publish-ws",
            "--url",
            url,
            "--token",
            "t",
            "--concurrency",
            "4",
            "--window",
            "8",
            "--payload-bytes",
            "0",
            "--warmup",
            "1",
            "--duration",
            "2",
        ])
        .unwrap();
        assert_eq!(
            c.wspub,
            Some(WsPubConfig {
                window: 8,
                payload_bytes: 0
            })
        );
        assert_eq!(c.run.concurrency, 4);
        assert_eq!(c.run.warmup, Duration::from_secs(1));
        assert_eq!(c.run.duration, Duration::from_secs(2));
        assert!(args(&["healthz", "--url", url]).unwrap().wspub.is_none());
        let ws = |extra: &[&'static str]| {
            let mut v = vec!["publish-ws", "--url", url, "--token", "t"];
            v.extend_from_slice(extra);
            v
        };
        for (bad, needle) in [
            (
                vec!["publish-ws", "--url", url, "--token="],
                "needs --token",
            ),
            (
                vec!["publish-ws", "--url", "http://10.0.0.1", "--token", "t"],
                "refusing",
            ),
            (ws(&["--window", "0"]), "--window"),
            (ws(&["--window", "65537"]), "--window"),
            (ws(&["--payload-bytes", "1048577"]), "--payload-bytes"),
            (ws(&["--rate", "5"]), "only apply"),
            (
                vec!["publish", "--url", url, "--token", "t", "--window", "5"],
                "only apply",
            ),
            (
                vec![
                    "sse-fanout",
                    "--url",
                    url,
                    "--token",
                    "t",
                    "--payload-bytes",
                    "5",
                ],
                "only apply",
            ),
        ] {
            let err = match args(&bad) {
                Ok(_) => panic!("{bad:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    #[test]
    fn publish_ws_window_1_waits_for_each_ack() {
        let url = "http://127.0.0.1:1";
        let c = args(&["publish-ws", "--url", url, "--token", "t", "--window", "1"]).unwrap();
        assert_eq!(
            c.wspub,
            Some(WsPubConfig {
                window: 1,
                payload_bytes: 1024
            })
        );
    }

    #[test]
    fn publish_nats_parses() {
        let url = "nats://127.0.0.1:4222";
        // No token: the NATS server has no authentication.
        let c = args(&["publish-nats", "--url", url]).unwrap();
        assert!(c.wspub.is_none() && c.watch.is_none() && c.fanout.is_none());
        assert_eq!(
            c.natspub,
            Some(WsPubConfig {
                window: 1,
                payload_bytes: 1024
            })
        );
        assert_eq!(c.run.concurrency, 16);
        assert_eq!(c.target.base, url);
        assert_eq!(c.target.port, 4222);
        let c = args(&[
            "publish-nats",
            "--url",
            "nats://localhost",
            "--concurrency",
            "4",
            "--window",
            "8",
            "--payload-bytes",
            "0",
            "--warmup",
            "1",
        ])
        .unwrap();
        assert_eq!(
            c.natspub,
            Some(WsPubConfig {
                window: 8,
                payload_bytes: 0
            })
        );
        assert_eq!(c.target.port, 4222);
        assert_eq!(c.run.concurrency, 4);
        assert!(
            args(&["publish-ws", "--url", "http://127.0.0.1:1", "--token", "t"])
                .unwrap()
                .natspub
                .is_none()
        );
        let nats = |extra: &[&'static str]| {
            let mut v = vec!["publish-nats", "--url", url];
            v.extend_from_slice(extra);
            v
        };
        for (bad, needle) in [
            (
                vec!["publish-nats", "--url", "nats://10.0.0.1:4222"],
                "refusing",
            ),
            (
                vec!["publish-nats", "--url", "nats://demo.nats.io"],
                "refusing",
            ),
            (
                vec!["publish-nats", "--url", "nats://user@127.0.0.1"],
                "refusing",
            ),
            (
                vec!["publish-nats", "--url", "http://127.0.0.1:4222"],
                "refusing",
            ),
            (vec!["publish-nats", "--url", "127.0.0.1:4222"], "refusing"),
            (
                vec!["publish-nats", "--url", "nats://127.0.0.1:4222/x"],
                "no path",
            ),
            (vec!["publish-ws", "--url", url, "--token", "t"], "refusing"),
            (nats(&["--window", "0"]), "--window"),
            (nats(&["--payload-bytes", "1048577"]), "--payload-bytes"),
            (nats(&["--rate", "5"]), "only apply"),
        ] {
            let err = match args(&bad) {
                Ok(_) => panic!("{bad:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    #[test]
    fn missing_url_is_a_usage_error() {
        assert!(Args::try_parse_from(["loadtests", "healthz"]).is_err());
    }

    #[test]
    fn rounding() {
        assert_eq!(ms(1234), 1.234);
        assert_eq!(ms(1), 0.001);
        assert_eq!(round(2.345_67, 1), 2.3);
    }
}
