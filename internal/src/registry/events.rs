//! Change events: what a document actor announces after each commit that changed something.
//! Watches (query) and sync build on these; pub/sub adds its own payloads later.

use std::sync::Arc;

/// Published on the document's broadcast channel after a commit, never before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Monotonic per document, persisted, so it keeps growing across restarts.
    pub commit_seq: u64,
    /// User-visible tables the commit wrote (from SQLite's update hook), sorted, deduplicated.
    /// Patchwork's own `_patchwork_*` bookkeeping tables are left out.
    pub tables_written: Arc<[String]>,
}

/// Capacity of each document's broadcast channel. A receiver that falls further behind sees
/// `RecvError::Lagged` and must resynchronise (a watch re-evaluates, a subscriber replays).
pub const EVENT_CAPACITY: usize = 1024;
