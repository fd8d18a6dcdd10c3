//! `publish-nats`: acknowledged JetStream publishes per second on a NATS server, the broker
//! side of the comparison with `publish-ws` and `publish` (`publish_compare.sh`).
//!
//! 1. Connects to `--url` (`nats://`, loopback only; servers the NATS server announces are
//!    ignored) and creates the stream [`STREAM`] on subjects `bench.>` with file storage, one
//!    replica and no limits. Creating is idempotent: a stream of that name with the same
//!    settings is reused, one with other settings is an error.
//! 2. Opens `--concurrency` NATS connections (`TCP_NODELAY`, set by the client), one per
//!    publisher, 64 being opened at a time (limit 30 s + 20 ms per connection), like
//!    `publish-ws`' one WebSocket per connection and `nats bench`'s one connection per client.
//!    A connection that cannot be opened is an error of kind `connect` and the run goes on
//!    with the others.
//! 3. Every publisher publishes a fixed `--payload-bytes` payload (the same filler as
//!    `publish-ws`) to `bench.{publisher}` and keeps up to `--window` publishes awaiting their
//!    JetStream ack; the default window of 1 waits for each ack before sending the next, the
//!    way a broker benchmark's synchronous publisher runs. An ack's latency is the time from
//!    just before its publish was handed to the client until the ack was received.
//! 4. Timing as in `publish-ws`: acks received during `--warmup` are not counted, those during
//!    `--duration` are; no publish starts after the timed phase, the outstanding acks are
//!    waited for (at most 10 s, each at most `--timeout-ms`). A publisher stops at its first
//!    error (its unanswered publishes count as `unacked`).
//!
//! The report has the fields and table of `publish-ws`, so the two compare line by line.

use std::collections::VecDeque;
use std::future::IntoFuture as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Subject};
use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Config;
use crate::sse::resolve;
use crate::wspub::{
    CLOSE_TIMEOUT, DRAIN_TIMEOUT, OPEN_PARALLELISM, Outcome, Stats, Timeline, WsPubConfig, drive,
    open_timeout, payload, record,
};

/// Command-line name of this mode.
pub const NAME: &str = "publish-nats";
/// One line for `--help`.
pub const ABOUT: &str =
    "JetStream publishes over N NATS connections, W in flight each: acknowledged publishes/s";

/// A broker benchmark's publisher waits for each ack: that is the comparison this mode is for.
pub const DEFAULT_WINDOW: usize = 1;
/// The NATS server's default `max_payload`.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Port of `nats://host` without one.
pub const DEFAULT_PORT: u16 = 4222;

/// The stream the tool creates; its subjects are [`SUBJECTS`].
pub const STREAM: &str = "PATCHWORK_BENCH";
pub const SUBJECTS: &str = "bench.>";

/// Reconnect attempts after a lost connection before the client gives up (the run is short).
const MAX_RECONNECTS: usize = 3;

/// A publisher's first error stops it: `(kind, message)`.
type Stop = (String, String);

/// The error kind of a failed publish or ack, for `error_kinds`.
fn error_kind(kind: PublishErrorKind) -> &'static str {
    match kind {
        PublishErrorKind::TimedOut => "ack_timeout",
        PublishErrorKind::StreamNotFound => "stream_not_found",
        PublishErrorKind::BrokenPipe => "broken_pipe",
        PublishErrorKind::MaxAckPending => "max_ack_pending",
        PublishErrorKind::MaxPayloadExceeded => "max_payload_exceeded",
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => "wrong_last",
        PublishErrorKind::Other => "publish_error",
    }
}

/// The stream every run publishes into: durable on disk like Patchwork's messages.
fn stream_config() -> stream::Config {
    stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![SUBJECTS.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    }
}

/// Connects one client; the options keep it on the given (loopback) address.
async fn connect(url: &str, timeout: Duration, name: String) -> Result<async_nats::Client, String> {
    let options = ConnectOptions::new()
        .name(name)
        // Never follow the server to an address it announces: load stays on loopback.
        .ignore_discovered_servers()
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .max_reconnects(MAX_RECONNECTS);
    match tokio::time::timeout(timeout, options.connect(url)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

/// Publishes until the timed phase ends (or the first error), keeping up to `window` acks
/// outstanding, then waits for the rest.
async fn publisher(
    js: jetstream::Context,
    subject: Subject,
    payload: Bytes,
    window: usize,
    tl: Timeline,
) -> Stats {
    let mut stats = Stats::new();
    let mut inflight: VecDeque<(Instant, PublishAckFuture)> = VecDeque::with_capacity(window);
    let mut stopped: Option<Stop> = None;
    // Publishes whose ack future is gone without an ack (besides those still in `inflight`).
    let mut lost = 0u64;
    while stopped.is_none() {
        while inflight.len() < window && Instant::now() < tl.deadline {
            let sent = Instant::now();
            // Resolves once the message is queued on the connection (bounded by the context's
            // timeout); the returned future resolves with the ack.
            match js.publish(subject.clone(), payload.clone()).await {
                Ok(ack) => {
                    stats.sent += 1;
                    inflight.push_back((sent, ack));
                }
                Err(e) => {
                    stopped = Some((error_kind(e.kind()).to_owned(), e.to_string()));
                    break;
                }
            }
        }
        if stopped.is_some() {
            break;
        }
        // Acks come back in publish order on one connection: wait for the oldest.
        let Some((sent, ack)) = inflight.pop_front() else {
            break;
        };
        // The ack future has the context's timeout (`--timeout-ms`); the drain has its own.
        let reply = tokio::time::timeout_at(tl.drain_until.into(), ack.into_future()).await;
        let now = Instant::now();
        match reply {
            Ok(Ok(ack)) => {
                stats.acks_total += 1;
                stats.duplicates += u64::from(ack.duplicate);
                if now >= tl.deadline {
                    stats.acks_after_deadline += 1;
                } else if now >= tl.start {
                    stats.acked += 1;
                    record(&mut stats.hist, now.saturating_duration_since(sent));
                }
            }
            Ok(Err(e)) => {
                lost += 1;
                stopped = Some((error_kind(e.kind()).to_owned(), e.to_string()));
            }
            Err(_) => {
                lost += 1;
                let msg = format!("acks still missing {DRAIN_TIMEOUT:?} after the timed phase");
                stopped = Some(("drain_timeout".to_owned(), msg));
            }
        }
    }
    if let Some((kind, msg)) = stopped {
        stats.errors.add(&kind, 1, || msg);
        let n = lost + inflight.len() as u64;
        stats.errors.add("unacked", n, || {
            format!("{n} publishes on one connection were never acknowledged")
        });
    }
    stats.finished = Some(Instant::now());
    stats
}

/// An upper bound on the whole run, from the per-phase bounds (a safety net: every phase
/// has its own).
fn overall_deadline(cfg: &Config) -> Duration {
    // Creating the stream: one connect and one request.
    cfg.timeout * 2
        + open_timeout(cfg.run.concurrency)
        + cfg.run.warmup
        + cfg.run.duration
        + cfg.timeout
        + DRAIN_TIMEOUT
        + CLOSE_TIMEOUT
        + Duration::from_secs(30)
}

/// Runs the mode and prints its report (as `publish-ws` does); the JSON object is the last
/// line of stdout.
pub async fn run(cfg: Config, wc: WsPubConfig) -> anyhow::Result<ExitCode> {
    let deadline = overall_deadline(&cfg);
    Box::pin(drive(NAME, &cfg, wc, deadline, phases(&cfg, wc))).await
}

async fn phases(cfg: &Config, wc: WsPubConfig) -> anyhow::Result<Outcome> {
    // Connect to the resolved (and checked) address, not to the name.
    let addr = resolve(&cfg.target.host, cfg.target.port).await?;
    let url: Arc<str> = format!("nats://{addr}").into();
    let n = cfg.run.concurrency;
    let mut stats = Stats::new();

    // 1. The stream.
    let admin = connect(&url, cfg.timeout, "loadtests-admin".to_owned())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {url}: {e}"))?;
    let created = jetstream::ContextBuilder::new()
        .timeout(cfg.timeout)
        .build(admin.clone())
        .create_stream(stream_config())
        .await
        .with_context(|| {
            format!("creating the stream {STREAM} (does the server run JetStream, -js?)")
        })?;
    eprintln!(
        "loadtests: stream {STREAM} ({SUBJECTS}, file storage) holds {} messages",
        created.cached_info().state.messages
    );

    // 2. One connection per publisher.
    eprintln!("loadtests: opening {n} NATS connections");
    let open_start = Instant::now();
    let gate = Arc::new(Semaphore::new(OPEN_PARALLELISM));
    let mut opening = JoinSet::new();
    for idx in 0..n {
        let (url, gate, timeout) = (Arc::clone(&url), Arc::clone(&gate), cfg.timeout);
        opening.spawn(async move {
            let _permit = gate.acquire().await;
            connect(&url, timeout, format!("loadtests-{idx}"))
                .await
                .map(|c| (idx, c))
        });
    }
    let mut clients = Vec::with_capacity(n);
    let opened_in_time = tokio::time::timeout(open_timeout(n), async {
        while let Some(r) = opening.join_next().await {
            match r {
                Ok(Ok(c)) => clients.push(c),
                Ok(Err(msg)) => stats.errors.add("connect", 1, || msg),
                Err(e) => stats.errors.add("open_task", 1, || e.to_string()),
            }
        }
    })
    .await;
    if opened_in_time.is_err() {
        let late = opening.len() as u64;
        opening.abort_all();
        stats.errors.add("open_timeout", late, || {
            format!(
                "a NATS connection did not open within {:?}",
                open_timeout(n)
            )
        });
    }
    let opened = clients.len();
    let open_s = open_start.elapsed().as_secs_f64();
    eprintln!("loadtests:   {opened}/{n} NATS connections open in {open_s:.2} s");
    if opened == 0 {
        return Ok(Outcome {
            stats,
            open: opened,
            open_s,
            drain_s: 0.0,
        });
    }

    // 3. Warm-up and the timed phase, then the drain.
    let tl = Timeline::starting_now(cfg.run.warmup, cfg.run.duration, cfg.timeout);
    if !cfg.run.warmup.is_zero() {
        eprintln!("loadtests: warming up for {:?}", cfg.run.warmup);
    }
    let body = Bytes::from(payload(wc.payload_bytes));
    let mut tasks = JoinSet::new();
    for (idx, client) in &clients {
        let js = jetstream::ContextBuilder::new()
            .timeout(cfg.timeout)
            .build(client.clone());
        let subject = Subject::from(format!("bench.{idx}"));
        tasks.spawn(publisher(js, subject, body.clone(), wc.window, tl));
    }
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(s) => stats.merge(s),
            Err(e) => stats.errors.add("publisher_task", 1, || e.to_string()),
        }
    }
    let drain_s = stats.finished.map_or(0.0, |f| {
        f.saturating_duration_since(tl.deadline).as_secs_f64()
    });
    eprintln!(
        "loadtests:   {} publishes sent, {} acknowledged ({} in the timed phase), drained in \
         {drain_s:.2} s",
        stats.sent, stats.acks_total, stats.acked
    );
    // Closing is a courtesy (the server would notice the sockets closing anyway); bounded.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        for (_, c) in clients {
            let _ = c.drain().await;
        }
        let _ = admin.drain().await;
    })
    .await;
    Ok(Outcome {
        stats,
        open: opened,
        open_s,
        drain_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_durable_on_disk() {
        let c = stream_config();
        assert_eq!(c.name, STREAM);
        assert_eq!(c.subjects, vec!["bench.>".to_owned()]);
        assert_eq!(c.storage, stream::StorageType::File);
        assert_eq!(c.num_replicas, 1);
        // Stream names may not contain '.', spaces or wildcards.
        assert!(!STREAM.contains(['.', ' ', '*', '>']));
    }

    #[test]
    fn error_kinds_are_snake_case() {
        assert_eq!(error_kind(PublishErrorKind::TimedOut), "ack_timeout");
        assert_eq!(
            error_kind(PublishErrorKind::StreamNotFound),
            "stream_not_found"
        );
        assert_eq!(error_kind(PublishErrorKind::Other), "publish_error");
    }
}
