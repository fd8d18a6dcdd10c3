//! Change events: what a document actor announces after each commit that changed something.
//! Watches (query) and sync build on these; pub/sub adds its own payloads later.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;

/// Something a write asks to announce with its commit (e.g. a stored pub/sub message). The
/// capability that made it downcasts it again; the registry only carries it, in commit order.
pub type Announcement = Arc<dyn Any + Send + Sync>;

/// Published on the document's broadcast channel after a commit, never before.
#[derive(Clone)]
pub struct ChangeEvent {
    /// Monotonic per document, persisted, so it keeps growing across restarts.
    pub commit_seq: u64,
    /// User-visible tables the commit wrote (from SQLite's update hook), sorted, deduplicated.
    /// Patchwork's bookkeeping tables (`_patchwork_meta`, `_patchwork_migrations`) are left out.
    pub tables_written: Arc<[String]>,
    /// What the committed writes announced, in commit order.
    pub announcements: Arc<[Announcement]>,
}

impl std::fmt::Debug for ChangeEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeEvent")
            .field("commit_seq", &self.commit_seq)
            .field("tables_written", &self.tables_written)
            .field("announcements", &self.announcements.len())
            .finish()
    }
}

/// Capacity of each document's broadcast channel. A receiver that falls further behind sees
/// `RecvError::Lagged` and must resynchronise (a watch re-evaluates, a subscriber replays).
pub const EVENT_CAPACITY: usize = 1024;

/// A document's change-event channel, allocated on its first subscription: a broadcast channel
/// holds all [`EVENT_CAPACITY`] slots from the start (about 100 KB), which most open documents,
/// never watched or subscribed to, do not need. Until then commits announce nothing (no one
/// could receive it); a subscriber reads the database after subscribing, so it misses nothing.
#[derive(Default)]
pub(crate) struct Events(OnceLock<broadcast::Sender<ChangeEvent>>);

impl Events {
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.0
            .get_or_init(|| broadcast::channel(EVENT_CAPACITY).0)
            .subscribe()
    }

    pub fn receiver_count(&self) -> usize {
        self.0.get().map_or(0, broadcast::Sender::receiver_count)
    }

    /// The channel, if anyone has ever subscribed (a commit's event is worth building).
    pub fn sender(&self) -> Option<&broadcast::Sender<ChangeEvent>> {
        self.0.get()
    }
}
