//! The document actor: one OS thread per open document owns its `rusqlite::Connection` and
//! serves its mailbox in order. SQLite never runs on the async runtime. (A busy document's WAL
//! checkpoints run on a short-lived thread with a connection of their own, beside the actor's:
//! see `checkpoint.rs`.)
//!
//! A document quiet for a while (see [`Command::Shrink`]) closes its connection and its thread
//! ends: a small task on the runtime waits for the next command without a thread (no SQLite
//! work, only the mailbox), starts a thread again and the connection is reopened before that
//! command runs. Measured: ~15 KB per idle open document instead of ~130 KB.
//!
//! Reads run one at a time, outside transactions. Writes that are waiting in the mailbox
//! together are **group-committed**: one `BEGIN IMMEDIATE … COMMIT` with a savepoint per request
//! (the first needs none: it fails by rolling back the still-empty transaction), so a failing (or
//! panicking) request rolls back only itself, and every caller is answered after
//! the commit. After a commit that changed a user table the actor bumps the persisted
//! `commit_seq` and publishes a [`ChangeEvent`] with the tables SQLite's update hook saw.
//!
//! A panic inside one request's closure is caught here: that request gets
//! [`DocError::Aborted`](super::DocError), any open transaction is rolled back, the actor goes on
//! with the next message, and `patchwork_actor_restarts_total{reason="panic"}` counts it.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{self, Checkpoints};
use super::events::{Announcement, ChangeEvent, Events};
use super::handle::{DocError, DocHandle};
use crate::migrations::Schema;
use crate::ops::metrics::Metrics;
use crate::sqlite::{self, OpenOptions};

/// A read's closure; it sends its own reply.
pub(crate) type ReadFn = Box<dyn FnOnce(&Connection) + Send>;

/// What a document actor is told to do.
pub(crate) enum Command {
    /// Runs outside a transaction; the closure sends its own reply.
    Read(ReadFn),
    /// A plain read-only query (no transaction control, nothing that must run alone): queries
    /// waiting in the mailbox together share one read transaction. The closure sends its own
    /// reply.
    Query(ReadFn),
    /// Joins the next group commit.
    Write(Box<dyn WriteJob>),
    /// The database's size figures (`_status`), answered from what the actor already knows
    /// where it can.
    Stats(oneshot::Sender<Result<DocStats, DocError>>),
    /// The document has been idle a while: give back the memory its connection holds (for a
    /// document: close the connection and let the thread end until the next command).
    Shrink,
    /// Finish what is queued before this message, checkpoint, close.
    Close,
}

/// What the layers above the registry do with a document's connection at its turning points
/// (the SQL classifier installs its authorizer once per connection and keeps a cache of
/// classifications). Functions, so the registry does not depend on those layers.
#[derive(Debug)]
pub struct ConnectionHooks {
    /// Right after the connection opened, on the actor thread.
    pub opened: fn(&Connection),
    /// When the document has been idle a while (after the connection's own caches shrank).
    pub shrink: fn(&Connection),
    /// Right before the connection closes, on the actor thread.
    pub closing: fn(),
}

/// How a write request's transaction ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Finish<'a> {
    /// Committed (a request whose own work failed still answers with its own error).
    Committed,
    /// The transaction could not begin or commit.
    Failed(&'a str),
    /// Another request of the same group commit rolled the whole transaction back (a statement
    /// stopped by the time limit, an `ON CONFLICT ROLLBACK`, `RAISE(ROLLBACK)`): nothing of this
    /// request was kept. Retryable.
    RolledBack,
}

/// A write request inside the actor.
pub(crate) trait WriteJob: Send {
    /// Runs inside the request's savepoint; `false` means roll this request back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Called exactly once, after the request's fate is known.
    fn finish(self: Box<Self>, end: Finish<'_>);
    /// What the request asks to announce with the commit (taken after a successful `run`).
    fn take_announcements(&mut self) -> Vec<Announcement> {
        Vec::new()
    }
}

/// A document's size figures as its actor sees them.
#[derive(Clone, Copy, Debug)]
pub struct DocStats {
    pub page_count: i64,
    pub page_size: i64,
    /// Size of the `-wal` file (0 if there is none).
    pub wal_bytes: u64,
}

/// State the actor shares with its handles without a round trip.
#[derive(Default)]
pub(crate) struct ActorShared {
    pub commit_seq: AtomicU64,
    pub last_write_at_ms: AtomicI64,
}

/// How an actor is set up.
#[derive(Clone, Copy, Debug)]
pub struct ActorConfig {
    pub open: OpenOptions,
    pub mailbox_capacity: usize,
    pub max_batch: usize,
    /// Sync's change log keeps at least this many versions…
    pub sync_keep_versions: u64,
    /// …and every version younger than this (whichever keeps more).
    pub sync_keep_secs: u64,
    /// Called at a document connection's turning points.
    pub hooks: Option<&'static ConnectionHooks>,
}

/// Starts an actor thread for the database at `path` and waits until the database is open and
/// migrated, so an open error reaches the caller before a handle exists. Returns the handle and
/// whether the file was created by this open. `on_exit` runs on the actor thread when it ends.
pub(crate) async fn spawn(
    thread_name: String,
    path: PathBuf,
    schema: Schema,
    config: ActorConfig,
    metrics: Arc<Metrics>,
    on_exit: Box<dyn FnOnce() + Send>,
) -> Result<(DocHandle, bool), DocError> {
    let (tx, rx) = mpsc::channel(config.mailbox_capacity);
    let events = Arc::new(Events::default());
    let shared = Arc::new(ActorShared::default());
    let (ready_tx, ready_rx) = oneshot::channel();
    let thread_events = events.clone();
    let thread_shared = shared.clone();
    let thread_metrics = metrics.clone();
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let exit = OnExit(Some(on_exit));
            let created = !path.exists();
            if created && schema == Schema::Document {
                // A copy of a migrated template instead of running every migration: creating a
                // document costs a file write instead of dozens of statements. On failure the
                // open below creates and migrates it the usual way.
                if let Err(e) = super::template::materialize(&path, config.open) {
                    tracing::warn!(error = %e, "creating a document from the template failed");
                }
            }
            let conn = match sqlite::open(&path, schema, config.open) {
                Ok(conn) => conn,
                Err(e) => {
                    let _ = ready_tx.send(Err(DocError::from(e)));
                    return;
                }
            };
            if schema == Schema::Document
                && let Some(hooks) = config.hooks
            {
                (hooks.opened)(&conn);
            }
            let actor = match Actor::new(
                conn,
                path,
                schema,
                config,
                thread_events,
                thread_shared,
                thread_metrics,
            ) {
                Ok(actor) => actor,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let gauge = actor
                .track_commits
                .then(|| actor.metrics.open_documents.clone());
            if let Some(g) = &gauge {
                g.inc();
            }
            let life = Lifetime {
                gauge,
                _exit: exit,
                runtime,
                thread_name,
            };
            let _ = ready_tx.send(Ok(created));
            serve(actor, rx, None, life);
        })
        .map_err(|e| DocError::Commit(format!("could not start the actor thread: {e}")))?;
    let created = ready_rx.await.map_err(|_| DocError::Aborted)??;
    Ok((DocHandle::new(tx, events, shared, metrics), created))
}

/// What an actor keeps from its first thread to its end, across idle spells without a thread.
struct Lifetime {
    /// `patchwork_open_documents`, lowered when the actor ends.
    gauge: Option<prometheus_client::metrics::gauge::Gauge>,
    /// Runs last (fields drop in order): the registry counts the actor as gone.
    _exit: OnExit,
    runtime: tokio::runtime::Handle,
    thread_name: String,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// Serves the mailbox on the current (actor) thread, starting with `first`, until the actor
/// ends or goes dormant: a document quiet long enough to have closed its connection
/// ([`Actor::shrink`]) lets its thread end too (its stack and the allocator's per-thread cache
/// of freed memory go with it), and a task on the runtime waits for its next command without
/// a thread, then starts a new one.
fn serve(
    mut actor: Actor,
    mut rx: mpsc::Receiver<Command>,
    first: Option<Command>,
    life: Lifetime,
) {
    match actor.run(&mut rx, first) {
        Ended::Closed => {
            if let Some(hooks) = actor.config.hooks {
                (hooks.closing)();
            }
            // Closing the last connection checkpoints the WAL into the file and removes it
            // (SQLite does that itself; a checkpoint of our own first only doubled the fsyncs).
            drop(actor);
            drop(life);
        }
        Ended::Dormant => serve_dormant(actor, rx, life),
    }
}

/// Starts a thread again for a dormant actor, with the command that woke it.
fn wake(actor: Actor, rx: mpsc::Receiver<Command>, cmd: Command, life: Lifetime) {
    let name = life.thread_name.clone();
    // The pieces travel in a slot so that they come back if no thread can be started.
    let slot = Arc::new(Mutex::new(Some((actor, rx, cmd, life))));
    let theirs = slot.clone();
    let started = std::thread::Builder::new().name(name).spawn(move || {
        let taken = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((actor, rx, cmd, life)) = taken {
            serve(actor, rx, Some(cmd), life);
        }
    });
    if let Err(e) = started {
        tracing::error!(error = %e, "could not start a document actor's thread again");
        let taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((actor, rx, cmd, life)) = taken {
            // Refuse this command; the next one tries again.
            refuse(cmd, &format!("could not start the actor thread: {e}"));
            serve_dormant(actor, rx, life);
        }
    }
}

/// Waits without a thread for a dormant actor's next command (see [`serve`]).
fn serve_dormant(actor: Actor, mut rx: mpsc::Receiver<Command>, life: Lifetime) {
    let runtime = life.runtime.clone();
    runtime.spawn(async move {
        let Some(cmd) = rx.recv().await else {
            drop(actor);
            drop(life);
            return;
        };
        actor.metrics.mailbox_depth.dec();
        wake(actor, rx, cmd, life);
    });
}

/// How [`Actor::run`] ended.
enum Ended {
    /// Closed (a `Close` message, or every handle dropped): the actor is done.
    Closed,
    /// Quiet with its connection closed, the mailbox empty: the thread may end.
    Dormant,
}

/// Waits for the next message. Under load the next request is usually a few microseconds
/// away, so the actor first yields its core for a moment (letting the runtime threads that will
/// send it run) before it parks: parking and being woken again costs a futex round trip on
/// both sides. It only does so while it is busy (`busy`: the mailbox held work when it last
/// looked), so a lightly used document parks at once instead of burning CPU.
fn next_command(rx: &mut mpsc::Receiver<Command>, busy: &mut bool) -> Option<Command> {
    match rx.try_recv() {
        Ok(cmd) => {
            *busy = true;
            return Some(cmd);
        }
        Err(mpsc::error::TryRecvError::Disconnected) => return None,
        Err(mpsc::error::TryRecvError::Empty) => {}
    }
    if *busy {
        let spin_until = std::time::Instant::now() + SPIN_BEFORE_PARK;
        while std::time::Instant::now() < spin_until {
            std::thread::yield_now();
            match rx.try_recv() {
                Ok(cmd) => return Some(cmd),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
        }
    }
    *busy = false;
    rx.blocking_recv()
}

/// How long an idle actor keeps looking for work before it parks.
const SPIN_BEFORE_PARK: std::time::Duration = std::time::Duration::from_micros(50);

/// The value of a one-number PRAGMA, remembered in `slot` until the slot is cleared.
fn pragma_once(conn: &Connection, slot: &mut Option<i64>, sql: &str) -> rusqlite::Result<i64> {
    if let Some(n) = *slot {
        return Ok(n);
    }
    let n = conn.prepare_cached(sql)?.query_row([], |r| r.get(0))?;
    *slot = Some(n);
    Ok(n)
}

/// Size of the `-wal` file of `conn`'s database (0 if there is none).
fn wal_size(conn: &Connection) -> u64 {
    match conn.path().filter(|p| !p.is_empty()) {
        Some(path) => std::fs::metadata(format!("{path}-wal")).map_or(0, |m| m.len()),
        None => 0,
    }
}

/// Answers a command that cannot run because the connection could not be opened again.
fn refuse(cmd: Command, msg: &str) {
    tracing::error!(
        error = msg,
        "a document actor could not reopen its connection"
    );
    match cmd {
        // Dropping the closure drops its reply sender: the caller sees `DocError::Aborted`.
        Command::Read(_) | Command::Query(_) | Command::Shrink | Command::Close => {}
        Command::Write(job) => job.finish(Finish::Failed(msg)),
        Command::Stats(reply) => {
            let _ = reply.send(Err(DocError::Commit(msg.to_owned())));
        }
    }
}

/// Whether the connection holds temporary tables, views, indexes or triggers (they live and
/// die with the connection, so it must stay open).
fn has_temp_objects(conn: &Connection) -> bool {
    conn.query_row("SELECT count(*) FROM temp.sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_or(true, |n| n > 0)
}

/// Records in `tables` the user tables `conn`'s changes touch (SQLite's update hook).
fn watch_tables(conn: &Connection, tables: &Arc<Mutex<BTreeSet<String>>>) {
    let sink = tables.clone();
    conn.update_hook(Some(move |_action, _db: &str, table: &str, _rowid: i64| {
        if table.starts_with("_patchwork_") {
            return;
        }
        let mut set = sink.lock().unwrap_or_else(|p| p.into_inner());
        if !set.contains(table) {
            set.insert(table.to_owned());
        }
    }));
}

/// Runs the exit callback even if the thread unwinds.
struct OnExit(Option<Box<dyn FnOnce() + Send>>);

impl Drop for OnExit {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

struct Actor {
    /// WAL checkpoints off this thread (documents only; `service.db` keeps SQLite's
    /// autocheckpoint). Declared before `conn` so that it drops first: a background checkpoint
    /// still running is waited for before the connection closes.
    checkpoints: Option<Checkpoints>,
    /// The document's connection; `None` while an idle document has closed it (see
    /// [`Actor::shrink`]): the next command opens it again.
    conn: Option<Connection>,
    path: PathBuf,
    schema: Schema,
    config: ActorConfig,
    /// A document (not `service.db`): keeps `commit_seq` in `_patchwork_meta` and counts in
    /// `patchwork_open_documents`.
    track_commits: bool,
    events: Arc<Events>,
    shared: Arc<ActorShared>,
    metrics: Arc<Metrics>,
    /// Tables the update hook saw since it was last drained.
    hook_tables: Arc<Mutex<BTreeSet<String>>>,
    /// `PRAGMA page_count`, valid until the next read or write runs (a PRAGMA statement is
    /// re-prepared every time it runs, so repeated `_status` calls reuse the last answer).
    page_count: Option<i64>,
    page_size: Option<i64>,
    /// The `-wal` file's size, valid (like `page_count`) until the next read or write runs:
    /// only those grow or checkpoint the WAL. (Not kept as an open file: the open-document cap
    /// counts on three descriptors per document.)
    wal_bytes: Option<u64>,
}

impl Actor {
    fn new(
        conn: Connection,
        path: PathBuf,
        schema: Schema,
        config: ActorConfig,
        events: Arc<Events>,
        shared: Arc<ActorShared>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DocError> {
        let track_commits = schema == Schema::Document;
        if track_commits {
            let read = |key: &str| -> Result<i64, rusqlite::Error> {
                conn.query_row(
                    "SELECT CASE WHEN typeof(value) = 'integer' THEN value ELSE 0 END \
                     FROM _patchwork_meta WHERE key = ?1",
                    [key],
                    |r| r.get(0),
                )
                .optional()
                .map(|v| v.unwrap_or(0))
            };
            let seq = read("commit_seq")?;
            shared
                .commit_seq
                .store(seq.max(0) as u64, Ordering::Release);
            shared
                .last_write_at_ms
                .store(read("last_write_at")?, Ordering::Release);
        }
        let hook_tables: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        watch_tables(&conn, &hook_tables);
        let checkpoints = track_commits.then(|| {
            checkpoint::install(&conn);
            Checkpoints::new(path.clone(), config.open)
        });
        Ok(Self {
            checkpoints,
            conn: Some(conn),
            path,
            schema,
            config,
            track_commits,
            events,
            shared,
            metrics,
            hook_tables,
            page_count: None,
            page_size: None,
            wal_bytes: None,
        })
    }

    fn run(&mut self, rx: &mut mpsc::Receiver<Command>, first: Option<Command>) -> Ended {
        let mut pending: Option<Command> = first;
        let mut busy = false;
        loop {
            let cmd = match pending.take() {
                Some(cmd) => cmd,
                None => match next_command(rx, &mut busy) {
                    Some(cmd) => {
                        self.metrics.mailbox_depth.dec();
                        cmd
                    }
                    None => return Ended::Closed,
                },
            };
            let cmd = match cmd {
                Command::Shrink | Command::Close => cmd,
                cmd => match self.reopen() {
                    Ok(()) => cmd,
                    Err(e) => {
                        refuse(cmd, &e);
                        continue;
                    }
                },
            };
            match cmd {
                Command::Read(f) => self.read(f),
                Command::Query(f) => {
                    let mut batch = vec![f];
                    while batch.len() < self.config.max_batch {
                        match rx.try_recv() {
                            Ok(Command::Query(f)) => {
                                self.metrics.mailbox_depth.dec();
                                batch.push(f);
                            }
                            Ok(other) => {
                                self.metrics.mailbox_depth.dec();
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.queries(batch);
                }
                Command::Stats(reply) => {
                    let _ = reply.send(self.stats());
                }
                Command::Shrink => {
                    self.shrink();
                    if self.conn.is_none() && rx.is_empty() {
                        return Ended::Dormant;
                    }
                }
                Command::Write(job) => {
                    let mut batch = vec![job];
                    while batch.len() < self.config.max_batch {
                        match rx.try_recv() {
                            Ok(Command::Write(job)) => {
                                self.metrics.mailbox_depth.dec();
                                batch.push(job);
                            }
                            Ok(other) => {
                                self.metrics.mailbox_depth.dec();
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_batch(batch);
                }
                Command::Close => {
                    // Drain what was queued before Close; refuse anything after.
                    rx.close();
                    while let Ok(cmd) = rx.try_recv() {
                        self.metrics.mailbox_depth.dec();
                        if matches!(cmd, Command::Shrink | Command::Close) {
                            continue;
                        }
                        if let Err(e) = self.reopen() {
                            refuse(cmd, &e);
                            continue;
                        }
                        match cmd {
                            Command::Read(f) | Command::Query(f) => self.read(f),
                            Command::Stats(reply) => {
                                let _ = reply.send(self.stats());
                            }
                            Command::Write(job) => self.commit_batch(vec![job]),
                            Command::Shrink | Command::Close => {}
                        }
                    }
                    return Ended::Closed;
                }
            }
            self.after_command();
        }
    }

    /// What follows every command, its callers answered: a checkpoint when the WAL has grown.
    fn after_command(&mut self) {
        if let (Some(checkpoints), Some(conn)) = (&mut self.checkpoints, &self.conn) {
            checkpoints.after_command(conn, &self.metrics);
        }
    }

    fn read(&mut self, f: ReadFn) {
        // A read closure may run anything (incremental_vacuum, say).
        self.forget_stats();
        let conn = self.conn();
        if catch_unwind(AssertUnwindSafe(|| f(conn))).is_err() {
            self.recovered_from_panic();
        }
    }

    /// Queries that waited in the mailbox together, in one read transaction: its begin and end
    /// (the pager's shared lock, the WAL-index read lock, their `fcntl`s) were about a third of
    /// a point SELECT's work inside SQLite. They see one snapshot, the one each would have seen
    /// alone: nothing writes between them (this thread is the only writer, and the batch stops
    /// at the first command that is not a query). A query that fails or is interrupted answers
    /// alone; one that panics rolls the transaction back and the rest run on their own.
    fn queries(&mut self, mut batch: Vec<ReadFn>) {
        if batch.len() == 1 {
            return self.read(batch.pop().expect("one query"));
        }
        self.metrics.query_batch.observe(batch.len() as f64);
        self.forget_stats();
        let began = self.control("BEGIN").is_ok();
        for f in batch {
            let conn = self.conn();
            if catch_unwind(AssertUnwindSafe(|| f(conn))).is_err() {
                self.recovered_from_panic();
            }
        }
        if began
            && !self.conn().is_autocommit()
            && let Err(e) = self.control("COMMIT")
        {
            // Never leave the connection inside a transaction: the next write's BEGIN would
            // fail and an idle document could not close.
            tracing::error!(error = %e, "ending a shared read transaction failed; rolling back");
            let _ = self.conn().execute_batch("ROLLBACK");
        }
    }

    /// Gives back what an idle connection holds: SQLite's page cache (`sqlite3_db_release_memory`:
    /// every page not in use, which is all of them between requests) and the prepared
    /// statements. The next request reads its pages from the OS page cache again.
    ///
    /// A document (not `service.db`) then closes its connection altogether, unless the
    /// connection holds state of its own (a temporary table or view, an open transaction): an
    /// open connection keeps its WAL-index mapping (32 KB), schema, lookaside and SQLite's
    /// per-connection structures, about half of an idle document's memory. The next command
    /// opens it again ([`Actor::reopen`]).
    fn shrink(&mut self) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        if self.track_commits {
            if let Some(hooks) = self.config.hooks {
                (hooks.shrink)(conn);
            }
            if conn.is_autocommit() && !has_temp_objects(conn) {
                if let Some(hooks) = self.config.hooks {
                    (hooks.closing)();
                }
                self.forget_stats();
                if let Some(checkpoints) = &mut self.checkpoints {
                    checkpoints.before_close();
                }
                // Closing the last connection checkpoints the WAL and removes it.
                self.conn = None;
                return;
            }
        }
        if let Err(e) = conn.release_memory() {
            tracing::debug!(error = %e, "releasing a document's memory failed");
        }
        conn.flush_prepared_statement_cache();
    }

    /// Opens the connection again if an idle spell closed it ([`Actor::shrink`]): the same
    /// settings, the connection hooks and the update hook as at the first open. A file that
    /// disappeared meanwhile is not created again.
    fn reopen(&mut self) -> Result<(), String> {
        if self.conn.is_some() {
            return Ok(());
        }
        if !self.path.exists() {
            return Err("the document's file is gone".to_owned());
        }
        let conn = sqlite::open(&self.path, self.schema, self.config.open)
            .map_err(|e| format!("could not open the document again: {e}"))?;
        if let Some(hooks) = self.config.hooks {
            (hooks.opened)(&conn);
        }
        watch_tables(&conn, &self.hook_tables);
        if self.checkpoints.is_some() {
            checkpoint::install(&conn);
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// The open connection (commands are only dispatched after [`Actor::reopen`] succeeded).
    fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a document actor runs commands only with its connection open")
    }

    fn stats(&mut self) -> Result<DocStats, DocError> {
        let conn = self
            .conn
            .as_ref()
            .expect("a document actor runs commands only with its connection open");
        let page_count = pragma_once(conn, &mut self.page_count, "PRAGMA page_count")?;
        let page_size = pragma_once(conn, &mut self.page_size, "PRAGMA page_size")?;
        Ok(DocStats {
            page_count,
            page_size,
            wal_bytes: *self.wal_bytes.get_or_insert_with(|| wal_size(conn)),
        })
    }

    /// Drops the remembered size figures; called before anything that may change them runs.
    fn forget_stats(&mut self) {
        self.page_count = None;
        self.page_size = None;
        self.wal_bytes = None;
    }

    /// Runs a transaction-control statement (`BEGIN`, `SAVEPOINT`, …) from the statement cache
    /// instead of parsing it again for every write.
    fn control(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn().prepare_cached(sql)?.execute([]).map(|_| ())
    }

    fn recovered_from_panic(&self) {
        tracing::error!("a request panicked inside a document actor; the actor recovered");
        self.metrics.actor_restart("panic");
        if !self.conn().is_autocommit() {
            let _ = self.conn().execute_batch("ROLLBACK");
        }
    }

    fn take_hook_tables(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.hook_tables.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// One transaction for every write in `batch`, a savepoint per write after the first.
    fn commit_batch(&mut self, batch: Vec<Box<dyn WriteJob>>) {
        self.metrics.group_commit_batch.observe(batch.len() as f64);
        self.forget_stats();
        if let Err(e) = self.control("BEGIN IMMEDIATE") {
            let msg = e.to_string();
            for job in batch {
                job.finish(Finish::Failed(&msg));
            }
            return;
        }
        // Sync's change log: a session records this transaction's changes to user tables (its
        // changeset is the net effect, so requests rolled back to their savepoint leave nothing).
        let mut session = if self.track_commits {
            match crate::sync::log::session(self.conn()) {
                Ok(session) => Some(session),
                Err(e) => {
                    let _ = self.conn().execute_batch("ROLLBACK");
                    let msg = format!("could not start the sync change log: {e}");
                    tracing::error!(error = %e, "could not start a sync session");
                    for job in batch {
                        job.finish(Finish::Failed(&msg));
                    }
                    return;
                }
            }
        } else {
            None
        };
        let mut written = BTreeSet::new();
        let mut announcements: Vec<Announcement> = Vec::new();
        let mut kept: Vec<Box<dyn WriteJob>> = Vec::with_capacity(batch.len());
        let mut jobs = batch.into_iter();
        // Nothing is in the transaction yet: the next write needs no savepoint, because if it
        // fails the still-empty transaction is rolled back and begun again.
        let mut empty = true;
        while let Some(mut job) = jobs.next() {
            let savepoint = !empty;
            if savepoint && let Err(e) = self.control("SAVEPOINT pw_job") {
                job.finish(Finish::Failed(&e.to_string()));
                continue;
            }
            self.take_hook_tables();
            let conn = self.conn();
            let ok = match catch_unwind(AssertUnwindSafe(|| job.run(conn))) {
                Ok(ok) => ok,
                Err(_) => {
                    self.metrics.actor_restart("panic");
                    tracing::error!("a write request panicked inside a document actor");
                    false
                }
            };
            if self.conn().is_autocommit() {
                // The whole transaction is gone (a statement stopped by the time limit, an
                // `ON CONFLICT ROLLBACK`, `RAISE(ROLLBACK)`), and with it what the earlier
                // requests of this batch wrote: none of them may be acknowledged.
                tracing::warn!("a write request rolled back the group-commit transaction");
                self.metrics.failed_writes.inc();
                job.finish(Finish::Failed("the request ended the transaction itself"));
                for earlier in kept.drain(..) {
                    earlier.finish(Finish::RolledBack);
                }
                written.clear();
                announcements.clear();
                self.take_hook_tables();
                if let Err(e) = self.control("BEGIN IMMEDIATE") {
                    self.fail_rest(jobs, &e.to_string());
                    return;
                }
                empty = true;
                continue;
            }
            if ok {
                if savepoint {
                    let _ = self.control("RELEASE pw_job");
                }
                written.append(&mut self.take_hook_tables());
                announcements.extend(job.take_announcements());
                kept.push(job);
                empty = false;
            } else if savepoint {
                self.metrics.failed_writes.inc();
                let _ = self
                    .control("ROLLBACK TO pw_job")
                    .and_then(|()| self.control("RELEASE pw_job"));
                self.take_hook_tables();
                // Answers with its own error once the others committed.
                kept.push(job);
            } else {
                self.metrics.failed_writes.inc();
                let restarted = self
                    .control("ROLLBACK")
                    .and_then(|()| self.control("BEGIN IMMEDIATE"));
                self.take_hook_tables();
                // Its own error is its answer, whatever happens to the others.
                job.finish(Finish::Committed);
                if let Err(e) = restarted {
                    self.fail_rest(jobs, &e.to_string());
                    return;
                }
            }
        }
        // The net changeset (empty when every change was rolled back); its tables count as
        // written too (the update hook does not see `WITHOUT ROWID` tables).
        let changeset = match session.as_mut().map(crate::sync::log::changeset) {
            None => Ok(Vec::new()),
            Some(Ok(cs)) => {
                if !cs.is_empty() {
                    match crate::sync::log::tables(&cs) {
                        Ok(mut tables) => written.append(&mut tables),
                        Err(e) => tracing::warn!(error = %e, "could not list a changeset's tables"),
                    }
                }
                Ok(cs)
            }
            Some(Err(e)) => Err(e),
        };
        drop(session);
        let changeset = match changeset {
            Ok(cs) => cs,
            Err(e) => {
                tracing::error!(error = %e, "could not take the commit's changeset");
                let _ = self.conn().execute_batch("ROLLBACK");
                for job in kept {
                    job.finish(Finish::Failed(
                        "the commit's change log could not be written",
                    ));
                }
                return;
            }
        };
        let mut new_seq = None;
        if self.track_commits && (!written.is_empty() || !announcements.is_empty()) {
            let seq = self.shared.commit_seq.load(Ordering::Acquire) + 1;
            let now_ms = crate::time_fmt::now_ms();
            let bumped = self
                .conn()
                .prepare_cached(
                    "UPDATE _patchwork_meta SET value = CASE key WHEN 'commit_seq' THEN ?1 ELSE ?2 END \
                     WHERE key IN ('commit_seq', 'last_write_at')",
                )
                .and_then(|mut stmt| stmt.execute((seq as i64, now_ms)));
            // The changeset is written under this version in the same transaction: a commit
            // is never visible without its change log entry.
            let logged = crate::sync::log::store(
                self.conn(),
                &changeset,
                seq,
                now_ms / 1000,
                self.config.sync_keep_versions,
                self.config.sync_keep_secs,
            );
            match bumped.map(|_| ()).and(logged) {
                Err(e) => {
                    tracing::error!(error = %e, "could not record commit_seq or its changeset");
                    let _ = self.conn().execute_batch("ROLLBACK");
                    for job in kept {
                        job.finish(Finish::Failed(
                            "the commit's change log could not be written",
                        ));
                    }
                    return;
                }
                Ok(()) => new_seq = Some((seq, now_ms)),
            }
            self.take_hook_tables();
        }
        let commit_error = match self.control("COMMIT") {
            Ok(()) => None,
            Err(e) => {
                let _ = self.conn().execute_batch("ROLLBACK");
                tracing::error!(error = %e, "group commit failed");
                Some(e.to_string())
            }
        };
        self.metrics.commits.inc();
        if commit_error.is_none()
            && let Some((seq, now_ms)) = new_seq
        {
            self.shared.commit_seq.store(seq, Ordering::Release);
            self.shared
                .last_write_at_ms
                .store(now_ms, Ordering::Release);
            if let Some(events) = self.events.sender() {
                let tables: Vec<String> = written.into_iter().collect();
                let _ = events.send(ChangeEvent {
                    commit_seq: seq,
                    tables_written: tables.into(),
                    announcements: announcements.into(),
                });
            }
        }
        let end = match &commit_error {
            None => Finish::Committed,
            Some(e) => Finish::Failed(e),
        };
        for job in kept {
            job.finish(end);
        }
    }

    /// Answers the rest of a batch that cannot run, and leaves no transaction open.
    fn fail_rest(&self, jobs: impl Iterator<Item = Box<dyn WriteJob>>, msg: &str) {
        tracing::error!(error = msg, "could not begin a group-commit transaction");
        for job in jobs {
            job.finish(Finish::Failed(msg));
        }
        if !self.conn().is_autocommit() {
            let _ = self.conn().execute_batch("ROLLBACK");
        }
    }
}
