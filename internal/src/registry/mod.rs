//! The registry: at most one actor per open `db_id`, opened lazily on first use, closed when idle
//! or when the cap on open documents needs room, drained on shutdown.
//!
//! Concurrency: the map lock is held only for short, non-async bookkeeping. Opening happens
//! outside it, through the entry's `OnceCell`, so 100 concurrent first uses of one id start one
//! actor and wait for the same open. A request holds a [`DocGuard`] while it uses the document;
//! the guard's `active` count is raised under the map lock, so eviction (which also runs under
//! the lock) never closes a document someone is using.

mod actor;
mod checkpoint;
mod db_id;
mod events;
mod handle;
mod template;
#[cfg(test)]
mod tests;
mod trim;

use std::collections::HashMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, watch};

pub(crate) use actor::spawn as spawn_actor;
pub use actor::{ActorConfig, ConnectionHooks, DocStats};
pub use checkpoint::DESCRIPTORS as CHECKPOINT_DESCRIPTORS;
pub use db_id::{DbId, InvalidDbId};
pub use events::{Announcement, ChangeEvent};
pub use handle::{DocError, DocHandle};

use crate::migrations::Schema;
use crate::ops::metrics::{Metrics, ReasonLabel};

/// Registry settings.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub documents_dir: PathBuf,
    pub actor: ActorConfig,
    pub idle_timeout: Duration,
    pub max_open: usize,
    /// An open document unused this long gives back its connection's memory: it closes its
    /// connection (unless it holds temporary tables) and its actor thread ends; it stays open
    /// (in the map, counted, its events channel alive), and its next request starts a thread
    /// and reopens the connection (~0.5 ms). ([`SHRINK_AFTER`] in the server.)
    pub shrink_after: Duration,
}

/// Cheap to clone; all clones share one map.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    config: RegistryConfig,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    epoch: Instant,
    /// Number of actor threads still running (opening, serving or closing).
    live: watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    docs: HashMap<DbId, Arc<Entry>>,
    shutting_down: bool,
}

struct Entry {
    cell: OnceCell<(DocHandle, bool)>,
    /// Requests currently holding a guard.
    active: AtomicUsize,
    /// Milliseconds since the registry's epoch.
    last_used: AtomicU64,
    /// The first guard after a creating open reports `created: true`, later ones `false`.
    created_reported: AtomicBool,
    /// Shrunk since it was last used (see [`RegistryConfig::shrink_after`]).
    shrunk: AtomicBool,
}

/// The server's [`RegistryConfig::shrink_after`]: long enough that a document in steady use
/// never pays for it, short enough that thousands of open, quiet documents stay light.
pub const SHRINK_AFTER: Duration = Duration::from_secs(10);

/// A document in use. Derefs to its [`DocHandle`]; while it lives the document is not evicted.
pub struct DocGuard {
    handle: DocHandle,
    entry: Arc<Entry>,
    epoch: Instant,
    /// Whether this request's open created the document file.
    pub created: bool,
}

impl Deref for DocGuard {
    type Target = DocHandle;
    fn deref(&self) -> &DocHandle {
        &self.handle
    }
}

impl Drop for DocGuard {
    fn drop(&mut self) {
        self.entry
            .last_used
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.entry.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Drops the `active` count if the open fails or the caller is cancelled before a guard exists.
struct PendingUse(Option<Arc<Entry>>);

impl Drop for PendingUse {
    fn drop(&mut self) {
        if let Some(entry) = self.0.take() {
            entry.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Registry {
    /// Creates the registry and starts its idle sweeper (needs a Tokio runtime).
    pub fn new(config: RegistryConfig, metrics: Arc<Metrics>) -> Self {
        let (live, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            config,
            metrics,
            state: Mutex::new(State::default()),
            epoch: Instant::now(),
            live,
        });
        let weak = Arc::downgrade(&inner);
        let period = (inner.config.idle_timeout.min(inner.config.shrink_after) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        tokio::spawn(sweep_idle(weak, period));
        Self { inner }
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The actor for `id`, opening (and creating) the document if needed.
    pub async fn get(&self, id: &DbId) -> Result<DocGuard, DocError> {
        for _ in 0..3 {
            let entry = {
                let mut state = self.lock();
                if state.shutting_down {
                    return Err(DocError::ShuttingDown);
                }
                let entry = match state.docs.get(id) {
                    Some(entry) => entry.clone(),
                    None => {
                        if state.docs.len() >= self.inner.config.max_open {
                            self.evict_lru(&mut state)?;
                        }
                        let entry = Arc::new(Entry {
                            cell: OnceCell::new(),
                            active: AtomicUsize::new(0),
                            last_used: AtomicU64::new(0),
                            created_reported: AtomicBool::new(false),
                            shrunk: AtomicBool::new(false),
                        });
                        state.docs.insert(id.clone(), entry.clone());
                        entry
                    }
                };
                entry.active.fetch_add(1, Ordering::AcqRel);
                entry.last_used.store(self.now_ms(), Ordering::Relaxed);
                entry.shrunk.store(false, Ordering::Relaxed);
                entry
            };
            let mut pending = PendingUse(Some(entry.clone()));
            let (handle, created) = entry.cell.get_or_try_init(|| self.open(id)).await?.clone();
            if handle.is_closed() {
                // The actor thread ended (it only does on close); replace the entry.
                drop(pending);
                let mut state = self.lock();
                if state.docs.get(id).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                    state.docs.remove(id);
                }
                self.inner.metrics.actor_restart("closed");
                continue;
            }
            pending.0 = None;
            let created = created && !entry.created_reported.swap(true, Ordering::AcqRel);
            return Ok(DocGuard {
                handle,
                entry,
                epoch: self.inner.epoch,
                created,
            });
        }
        Err(DocError::Closed)
    }

    async fn open(&self, id: &DbId) -> Result<(DocHandle, bool), DocError> {
        let path = self.inner.config.documents_dir.join(id.file_name());
        self.inner.live.send_modify(|n| *n += 1);
        let live = self.inner.live.clone();
        let on_exit = Box::new(move || live.send_modify(|n| *n -= 1));
        let mut thread_name = format!("pw-doc-{id}");
        thread_name.truncate(15);
        spawn_actor(
            thread_name,
            path,
            Schema::Document,
            self.inner.config.actor,
            self.inner.metrics.clone(),
            on_exit,
        )
        .await
    }

    /// Makes room for one more document by closing the least recently used idle one.
    fn evict_lru(&self, state: &mut State) -> Result<(), DocError> {
        let victim = state
            .docs
            .iter()
            .filter(|(_, e)| e.active.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
            .map(|(id, _)| id.clone());
        match victim {
            Some(id) => {
                state.docs.remove(&id);
                self.inner
                    .metrics
                    .evictions
                    .get_or_create(&ReasonLabel { reason: "capacity" })
                    .inc();
                Ok(())
            }
            None => Err(DocError::TooManyOpen),
        }
    }

    /// Whether `id` has a running actor.
    pub fn is_open(&self, id: &DbId) -> bool {
        self.lock()
            .docs
            .get(id)
            .and_then(|e| e.cell.get())
            .is_some_and(|(h, _)| !h.is_closed())
    }

    /// Number of documents in the map (open or opening).
    pub fn open_count(&self) -> usize {
        self.lock().docs.len()
    }

    /// Sum of change-event receivers over open documents.
    pub fn subscriber_count(&self) -> usize {
        self.lock()
            .docs
            .values()
            .filter_map(|e| e.cell.get())
            .map(|(h, _)| h.subscriber_count())
            .sum()
    }

    /// Actor threads still running.
    pub fn live_actors(&self) -> usize {
        *self.inner.live.borrow()
    }

    pub fn documents_dir(&self) -> &std::path::Path {
        &self.inner.config.documents_dir
    }

    /// Refuses new work, lets every actor finish what is queued, checkpoint and close; waits up
    /// to `timeout` for the actor threads to end. Returns whether all ended.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        let entries: Vec<Arc<Entry>> = {
            let mut state = self.lock();
            state.shutting_down = true;
            state.docs.drain().map(|(_, e)| e).collect()
        };
        let handles: Vec<DocHandle> = entries
            .iter()
            .filter_map(|e| e.cell.get().map(|(h, _)| h.clone()))
            .collect();
        let closes = handles.into_iter().map(|h| async move { h.close().await });
        let mut live = self.inner.live.subscribe();
        let wait = async {
            futures_util::future::join_all(closes).await;
            drop(entries);
            let _ = live.wait_for(|n| *n == 0).await;
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// Closes documents nobody has used for `idle_timeout`. Stops when the registry is dropped.
async fn sweep_idle(registry: Weak<Inner>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let now = inner.epoch.elapsed().as_millis() as u64;
        let idle_ms = inner.config.idle_timeout.as_millis() as u64;
        let shrink_ms = inner.config.shrink_after.as_millis() as u64;
        let mut shrunk = 0usize;
        let evicted: Vec<Arc<Entry>> = {
            let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.shutting_down {
                return;
            }
            for entry in state.docs.values() {
                if entry.active.load(Ordering::Acquire) == 0
                    && now.saturating_sub(entry.last_used.load(Ordering::Relaxed)) >= shrink_ms
                    && !entry.shrunk.load(Ordering::Relaxed)
                    && let Some((handle, _)) = entry.cell.get()
                    && handle.try_shrink()
                {
                    entry.shrunk.store(true, Ordering::Relaxed);
                    shrunk += 1;
                }
            }
            let idle: Vec<DbId> = state
                .docs
                .iter()
                .filter(|(_, e)| {
                    e.active.load(Ordering::Acquire) == 0
                        && now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= idle_ms
                })
                .map(|(id, _)| id.clone())
                .collect();
            idle.iter().filter_map(|id| state.docs.remove(id)).collect()
        };
        if !evicted.is_empty() {
            inner
                .metrics
                .evictions
                .get_or_create(&ReasonLabel { reason: "idle" })
                .inc_by(evicted.len() as u64);
            tracing::debug!(count = evicted.len(), "closing idle documents");
        }
        // Dropping the last handle closes the mailbox; the actor drains it, checkpoints, exits.
        let closed_some = !evicted.is_empty();
        drop(evicted);
        if closed_some || shrunk > 0 {
            // Once those threads have exited (or shrunk), give their freed memory back to the
            // system. (The closing actors checkpoint first; a second is plenty for idle ones.)
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = tokio::task::spawn_blocking(trim::release_freed_memory).await;
            });
        }
    }
}
