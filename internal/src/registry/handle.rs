//! `DocHandle`: the cheap, cloneable way to send work to a document actor.
//!
//! Every method puts one message in the actor's *bounded* mailbox with `try_send`; a full mailbox
//! is answered at once with [`DocError::Overloaded`] (HTTP `503`) instead of queueing without
//! bound. Replies come back over a oneshot; a caller that went away simply drops its receiver.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rusqlite::Connection;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::actor::{ActorShared, Command, DocStats, Finish, WriteJob};
use super::events::{Announcement, ChangeEvent, Events};
use crate::error::ApiError;
use crate::migrations::MigrationError;
use crate::ops::metrics::Metrics;

/// Why a document request did not produce its own result.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("the document's mailbox is full; try again")]
    Overloaded,
    #[error("the document actor has stopped")]
    Closed,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("too many documents are open and none is idle")]
    TooManyOpen,
    #[error("the request failed inside the document actor")]
    Aborted,
    #[error("rolled back together with another write of the same group commit")]
    RolledBack,
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("opening the document failed: {0}")]
    Open(#[from] MigrationError),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A client-facing error decided inside the actor (validation, conflicts, limits).
    #[error("{}", .0.message)]
    Api(ApiError),
}

impl From<ApiError> for DocError {
    fn from(e: ApiError) -> Self {
        DocError::Api(e)
    }
}

impl From<DocError> for ApiError {
    fn from(e: DocError) -> Self {
        match e {
            DocError::Overloaded => {
                ApiError::overloaded("the document is overloaded; retry shortly")
            }
            DocError::Closed => ApiError::overloaded("the document was closing; retry"),
            DocError::RolledBack => ApiError::overloaded(
                "another write committed with this one rolled the transaction back; retry",
            ),
            DocError::ShuttingDown => ApiError::shutting_down(),
            DocError::TooManyOpen => {
                ApiError::overloaded("too many documents are open and busy; retry shortly")
            }
            DocError::Api(api) => api,
            DocError::Open(MigrationError::Sqlite(e))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) =>
            {
                tracing::error!(error = %e, "a document could not be opened");
                ApiError::overloaded("the document cannot be opened right now; retry shortly")
            }
            DocError::Open(MigrationError::TooNew { found, supported }) => ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "schema_too_new",
                format!(
                    "the document's schema version {found} is newer than this server supports ({supported})"
                ),
            ),
            other => ApiError::internal(other),
        }
    }
}

/// Background reads (watch re-evaluations) a document runs at once.
const BACKGROUND_READS: usize = 4;

/// Counts a live watch until dropped.
pub struct WatchCount(DocHandle);

impl Drop for WatchCount {
    fn drop(&mut self) {
        self.0.inner.watches.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A handle to one document actor.
#[derive(Clone)]
pub struct DocHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    tx: mpsc::Sender<Command>,
    /// Bounds the background reads (watch re-evaluations) in this mailbox, so a thousand dirty
    /// watches cannot crowd out writers or fill the mailbox.
    background: Arc<tokio::sync::Semaphore>,
    /// Live watches on this document.
    watches: std::sync::atomic::AtomicUsize,
    events: Arc<Events>,
    shared: Arc<ActorShared>,
    metrics: Arc<Metrics>,
}

impl DocHandle {
    pub(crate) fn new(
        tx: mpsc::Sender<Command>,
        events: Arc<Events>,
        shared: Arc<ActorShared>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                tx,
                background: Arc::new(tokio::sync::Semaphore::new(BACKGROUND_READS)),
                watches: Default::default(),
                events,
                shared,
                metrics,
            }),
        }
    }

    fn send(&self, cmd: Command) -> Result<(), DocError> {
        let metrics = &self.inner.metrics;
        metrics.mailbox_depth.inc();
        match self.inner.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.mailbox_depth.dec();
                metrics.mailbox_full.inc();
                Err(DocError::Overloaded)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics.mailbox_depth.dec();
                Err(DocError::Closed)
            }
        }
    }

    /// Runs `f` on the actor's thread, outside any transaction, and returns its result.
    pub async fn read<T, F>(&self, f: F) -> Result<T, DocError>
    where
        F: FnOnce(&Connection) -> Result<T, DocError> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Read(Box::new(move |conn| {
            let _ = reply.send(f(conn));
        })))?;
        rx.await.map_err(|_| DocError::Aborted)?
    }

    /// As [`read`](Self::read), for a plain read-only query: it may share a read transaction
    /// with the queries queued next to it. Not for work that manages transactions or must run
    /// alone (`VACUUM`, `PRAGMA`s that refuse a transaction, backups).
    pub async fn query<T, F>(&self, f: F) -> Result<T, DocError>
    where
        F: FnOnce(&Connection) -> Result<T, DocError> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Query(Box::new(move |conn| {
            let _ = reply.send(f(conn));
        })))?;
        rx.await.map_err(|_| DocError::Aborted)?
    }

    /// Asks the actor to give back its connection's memory (see `Command::Shrink`), if its
    /// mailbox has room; never waits. Whether it was asked.
    pub(crate) fn try_shrink(&self) -> bool {
        // Counted like every message: the actor lowers `mailbox_depth` for each one it takes.
        let depth = &self.inner.metrics.mailbox_depth;
        depth.inc();
        let sent = self.inner.tx.try_send(Command::Shrink).is_ok();
        if !sent {
            depth.dec();
        }
        sent
    }

    /// The document's page count, page size and WAL size, from its actor (ordered after what
    /// is already queued).
    pub async fn stats(&self) -> Result<DocStats, DocError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats(reply))?;
        rx.await.map_err(|_| DocError::Aborted)?
    }

    /// Runs `f` inside its own savepoint of the actor's next group commit and answers only after
    /// that transaction committed. An `Err` (or a panic) rolls back this request's changes only.
    pub async fn write<T, F>(&self, f: F) -> Result<T, DocError>
    where
        F: FnOnce(&Connection) -> Result<T, DocError> + Send + 'static,
        T: Send + 'static,
    {
        self.write_announcing(move |conn, _| f(conn)).await
    }

    /// As [`write`](Self::write); what `f` pushes onto its second argument is published with the
    /// commit's [`ChangeEvent`], in commit order, if (and only if) this request committed.
    pub async fn write_announcing<T, F>(&self, f: F) -> Result<T, DocError>
    where
        F: FnOnce(&Connection, &mut Vec<Announcement>) -> Result<T, DocError> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Write(Box::new(Job {
            f: Some(f),
            out: None,
            announcements: Vec::new(),
            reply,
        })))?;
        rx.await.map_err(|_| DocError::Aborted)?
    }

    /// Change events published after each commit.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.inner.events.subscribe()
    }

    /// Live receivers of this document's change events.
    pub fn subscriber_count(&self) -> usize {
        self.inner.events.receiver_count()
    }

    /// The last commit sequence number this actor announced.
    pub fn commit_seq(&self) -> u64 {
        self.inner.shared.commit_seq.load(Ordering::Acquire)
    }

    /// Unix milliseconds of the last commit that changed a table, if any.
    pub fn last_write_at_ms(&self) -> Option<i64> {
        match self.inner.shared.last_write_at_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(ms),
        }
    }

    /// Waits for a slot to run a background read (see `BACKGROUND_READS`).
    pub async fn background_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.inner
            .background
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Registers a live watch; the count drops with the returned guard.
    pub fn watch_started(&self) -> WatchCount {
        self.inner.watches.fetch_add(1, Ordering::AcqRel);
        WatchCount(self.clone())
    }

    pub fn watch_count(&self) -> usize {
        self.inner.watches.load(Ordering::Acquire)
    }

    pub fn is_closed(&self) -> bool {
        self.inner.tx.is_closed()
    }

    /// Asks the actor to finish what is queued and stop; waits for mailbox space.
    pub(crate) async fn close(&self) {
        self.inner.metrics.mailbox_depth.inc();
        if self.inner.tx.send(Command::Close).await.is_err() {
            self.inner.metrics.mailbox_depth.dec();
        }
    }
}

/// A write request as the actor sees it: the closure plus where its answer goes.
struct Job<F, T> {
    f: Option<F>,
    out: Option<Result<T, DocError>>,
    announcements: Vec<Announcement>,
    reply: oneshot::Sender<Result<T, DocError>>,
}

impl<F, T> WriteJob for Job<F, T>
where
    F: FnOnce(&Connection, &mut Vec<Announcement>) -> Result<T, DocError> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let out = f(conn, &mut self.announcements);
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn take_announcements(&mut self) -> Vec<Announcement> {
        std::mem::take(&mut self.announcements)
    }

    fn finish(self: Box<Self>, end: Finish<'_>) {
        let result = match (self.out, end) {
            (None, _) => Err(DocError::Aborted),
            (Some(Ok(_)), Finish::Failed(e)) => Err(DocError::Commit(e.to_owned())),
            (Some(Ok(_)), Finish::RolledBack) => Err(DocError::RolledBack),
            (Some(out), _) => out,
        };
        let _ = self.reply.send(result);
    }
}
