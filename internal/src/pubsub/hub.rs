//! The subscription engine shared by SSE, WebSocket (and later MQTT): replay from the database,
//! then live delivery from the document's change events, with no gap and no duplicate at the
//! seam, bounded buffers, and slow consumers cut off.
//!
//! Seam: the engine subscribes to the change events *before* reading the database, so every
//! message committed after the subscription arrives live and every one committed before is in
//! the replay; ids at or below the last delivered one are skipped. If the engine itself falls
//! behind the broadcast (`Lagged`), it catches up from the database again. If the *client* falls
//! behind (its bounded queue is full), it gets an `error` event and the stream ends; it can
//! resume with `Last-Event-ID` / `since_id`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::sql::{self, Message};
use super::topic;
use crate::auth::{Action, Authorized};
use crate::ops::metrics::Metrics;
use crate::registry::{ChangeEvent, DocError, DocHandle};

/// Messages buffered per subscriber before it counts as too slow.
pub const QUEUE: usize = 512;

/// Under load a subscriber wakes at most once per this interval and takes everything that
/// arrived meanwhile at once: with a thousand subscribers and a thousand one-message commits a
/// second, waking every subscriber for every commit (and writing to its socket each time) was a
/// million wake-ups and writes a second. A subscriber that was quiet longer than this is woken
/// at once, so an idle stream adds no latency.
pub const COALESCE: Duration = Duration::from_millis(10);
const PAGE: usize = 500;

/// Where a subscription starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// Messages with id > N.
    After(i64),
    /// The last N matching messages, then live.
    Tail(usize),
    /// Only messages committed from now on.
    Live,
}

/// What a subscriber is sent.
#[derive(Debug, Clone)]
pub enum Delivery {
    Message(Arc<Message>),
    Heartbeat,
    /// Sent once before the stream ends because the subscriber could not keep up.
    SlowConsumer,
    /// The document went away (shutdown).
    Closed,
    /// The subscription stopped on an error (a failed replay read, say); sent once, last.
    Failed {
        code: &'static str,
        message: String,
    },
}

/// The filters of one subscription; WebSocket `unsubscribe` edits them while it runs.
pub type Filters = Arc<Mutex<Vec<String>>>;

pub struct Subscription {
    pub doc: DocHandle,
    pub auth: Authorized,
    pub filters: Filters,
    pub start: Start,
    pub heartbeat: Option<Duration>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// What a full queue means. `false` (SSE, WebSocket): the client is too slow and the
    /// subscription ends. `true` (MQTT): the subscription waits for room, and whatever the
    /// broadcast moves past meanwhile is read back from the database (`Lagged`), so a slow
    /// client is throttled, never buffered without bound (its connection decides when it is
    /// stuck).
    pub wait_when_full: bool,
}

impl Subscription {
    fn wanted(&self, m: &Message) -> bool {
        let filters = self.filters.lock().unwrap_or_else(|p| p.into_inner());
        self.wanted_by(&filters, m)
    }

    /// [`Self::wanted`] with the filters already locked (once per batch, not per message).
    fn wanted_by(&self, filters: &[String], m: &Message) -> bool {
        filters.iter().any(|f| topic::matches(f, &m.topic))
            // Double-check per message: a prefixed scope never sees topics outside its prefix.
            && self.auth.resource(Action::PubSubscribe, &m.topic).is_ok()
    }

    fn filters(&self) -> Vec<String> {
        self.filters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replays from the database after `last`, waiting for the client as needed. Returns the
    /// new `last`, or `None` if the client went away.
    async fn replay(
        &self,
        mut last: i64,
        out: &mpsc::Sender<Delivery>,
    ) -> Result<Option<i64>, DocError> {
        loop {
            let page = self
                .doc
                .read(move |c| Ok(sql::after(c, last, PAGE)?))
                .await?;
            let full = page.len() == PAGE;
            for m in page {
                last = m.id;
                if self.wanted(&m) && out.send(Delivery::Message(m)).await.is_err() {
                    return Ok(None);
                }
            }
            if !full {
                return Ok(Some(last));
            }
        }
    }

    /// Runs until the client goes away, is too slow, or the server shuts down.
    pub async fn run(self, out: mpsc::Sender<Delivery>) -> Result<(), DocError> {
        let mut events = self.doc.subscribe();
        let current = self.doc.read(|c| Ok(sql::max_id(c)?)).await?;
        let mut last = match self.start {
            Start::After(n) => n,
            Start::Live => current,
            Start::Tail(n) => {
                let filters = self.filters();
                let tail = self
                    .doc
                    .read(move |c| Ok(sql::tail(c, &filters, n, 100_000)?))
                    .await?;
                for m in tail {
                    if self.wanted(&m) && out.send(Delivery::Message(m)).await.is_err() {
                        return Ok(());
                    }
                }
                current
            }
        };
        match self.replay(last, &out).await? {
            Some(l) => last = l,
            None => return Ok(()),
        }
        let period = self.heartbeat.unwrap_or(Duration::from_secs(3600));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut last_wake = tokio::time::Instant::now() - COALESCE;
        // The wanted messages of one wake-up, offered together (reused from wake to wake).
        let mut batch: Vec<Arc<Message>> = Vec::new();
        // Made once, not at every wake-up: the client leaving, shutdown (a child token, so the
        // wait is registered with this subscription's own node rather than with the server's
        // token that every subscription shares), and the coalescing pause.
        let closed = out.closed();
        tokio::pin!(closed);
        let shutdown = self.shutdown.child_token();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let pause = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(pause);
        loop {
            let change: Result<ChangeEvent, broadcast::error::RecvError> = tokio::select! {
                () = &mut closed => return Ok(()),
                () = &mut cancelled => {
                    let _ = out.try_send(Delivery::Closed);
                    return Ok(());
                }
                _ = tick.tick(), if self.heartbeat.is_some() => {
                    if !self.offer(&out, Delivery::Heartbeat).await {
                        return Ok(());
                    }
                    continue;
                }
                change = events.recv() => change,
            };
            // Woken again within COALESCE: let the next commits gather (see COALESCE).
            let since = last_wake.elapsed();
            if change.is_ok() && since < COALESCE {
                pause.as_mut().reset(last_wake + COALESCE);
                (&mut pause).await;
            }
            last_wake = tokio::time::Instant::now();
            // Take every commit that arrived meanwhile, with the filters locked once.
            let mut change = change;
            {
                let filters = self.filters.lock().unwrap_or_else(|p| p.into_inner());
                while let Ok(event) = &change {
                    self.collect(event, &mut last, &filters, &mut batch);
                    change = match events.try_recv() {
                        Ok(next) => Ok(next),
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            Err(broadcast::error::RecvError::Lagged(n))
                        }
                        Err(broadcast::error::TryRecvError::Closed) => {
                            Err(broadcast::error::RecvError::Closed)
                        }
                    };
                }
            }
            if !self.deliver(&mut batch, &out).await {
                return Ok(());
            }
            match change {
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // We (not the client) fell behind: catch up from the database.
                    events = self.doc.subscribe();
                    match self.replay(last, &out).await? {
                        Some(l) => last = l,
                        None => return Ok(()),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = out.try_send(Delivery::Closed);
                    return Ok(());
                }
            }
        }
    }

    /// Adds the wanted messages of one commit (those after `last`) to `batch`.
    fn collect(
        &self,
        change: &ChangeEvent,
        last: &mut i64,
        filters: &[String],
        batch: &mut Vec<Arc<Message>>,
    ) {
        for a in change.announcements.iter() {
            // Looked at in place: the shared count is only touched for a wanted message.
            let Some(m) = a.downcast_ref::<Message>() else {
                continue;
            };
            if m.id <= *last {
                continue;
            }
            *last = m.id;
            if self.wanted_by(filters, m)
                && let Ok(m) = Arc::clone(a).downcast::<Message>()
            {
                batch.push(m);
            }
        }
    }

    /// Offers the messages of `batch` in order (emptying it); false when the subscriber is gone
    /// or too slow.
    async fn deliver(&self, batch: &mut Vec<Arc<Message>>, out: &mpsc::Sender<Delivery>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let now = crate::time_fmt::now_ms();
        for m in batch.iter() {
            self.metrics
                .fanout_lag
                .observe((now - m.created_ms).max(0) as f64 / 1000.0);
        }
        // Room for the whole batch: reserved at once, one wake-up of the receiver.
        if let Ok(permits) = out.try_reserve_many(batch.len()) {
            for (permit, m) in permits.zip(batch.drain(..)) {
                permit.send(Delivery::Message(m));
            }
            return true;
        }
        // Not enough room (or closed): one by one, as far as they fit (see `offer`).
        for m in batch.drain(..) {
            if !self.offer(out, Delivery::Message(m)).await {
                return false;
            }
        }
        true
    }

    /// Queues a delivery without waiting; a full queue means the client is too slow: it gets
    /// `SlowConsumer` (waiting briefly for room) and the subscription ends.
    async fn offer(&self, out: &mpsc::Sender<Delivery>, d: Delivery) -> bool {
        match out.try_send(d) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(d)) if self.wait_when_full => tokio::select! {
                sent = out.send(d) => sent.is_ok(),
                () = self.shutdown.cancelled() => false,
            },
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.slow_disconnects.inc();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), out.send(Delivery::SlowConsumer))
                        .await;
                false
            }
        }
    }
}
