//! The registry of live client connections (SSE streams, WebSockets, MQTT connections), so that
//! something else can follow a connection's life by its id: presence binds a member to one and
//! makes it leave the moment the connection closes.
//!
//! A connection registers when it opens and holds a [`ConnectionGuard`]; dropping the guard
//! (however the connection ends) cancels its close notifier and forgets it. Ids are scoped by
//! their owner (`token:{id}` or `oidc:{sub}`, [`crate::auth::Authorized::actor`]): a caller can
//! find only its own connections, and two tokens may use the same MQTT client id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::ops::metrics::Metrics;

/// Response header (SSE, WebSocket upgrade) naming the connection.
pub const HEADER: &str = "patch-connection-id";

/// A live connection found by id.
#[derive(Clone, Debug)]
pub struct Live {
    /// Unique per registration (an MQTT client id reused after a takeover gets a new serial).
    pub serial: u64,
    /// Cancelled when the connection closes.
    pub closed: CancellationToken,
}

type Key = (String, String);

/// Every live connection: (owner, id) → its close notifier.
pub struct Connections {
    live: Mutex<HashMap<Key, Live>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Connections {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            live: Mutex::default(),
            next: AtomicU64::new(1),
            metrics,
        })
    }

    /// Registers a connection of `owner` under a fresh random id `{kind}_{16 hex}`.
    pub fn register(self: &Arc<Self>, owner: String, kind: &str) -> ConnectionGuard {
        let id = format!("{kind}_{}", crate::auth::token::new_id());
        self.register_as(owner, id)
    }

    /// Registers a connection of `owner` under `id` (e.g. `mqtt:{client_id}`). An entry already
    /// there under the same key (a connection being taken over) is replaced; its own guard no
    /// longer removes the new one.
    pub fn register_as(self: &Arc<Self>, owner: String, id: String) -> ConnectionGuard {
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let closed = CancellationToken::new();
        let live = Live {
            serial,
            closed: closed.clone(),
        };
        let key = (owner, id);
        let replaced = self.lock().insert(key.clone(), live).is_some();
        if !replaced {
            self.metrics.presence.connections.inc();
        }
        ConnectionGuard {
            registry: self.clone(),
            key,
            serial,
            closed,
        }
    }

    /// `owner`'s live connection `id`, if it is open.
    pub fn find(&self, owner: &str, id: &str) -> Option<Live> {
        self.lock()
            .get(&(owner.to_owned(), id.to_owned()))
            .filter(|l| !l.closed.is_cancelled())
            .cloned()
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Held by a connection while it is open; dropping it announces the close.
pub struct ConnectionGuard {
    registry: Arc<Connections>,
    key: Key,
    serial: u64,
    closed: CancellationToken,
}

impl ConnectionGuard {
    /// The id clients name (`connection_id`).
    pub fn id(&self) -> &str {
        &self.key.1
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.closed.cancel();
        let mut live = self.registry.lock();
        if live.get(&self.key).is_some_and(|l| l.serial == self.serial) {
            live.remove(&self.key);
            self.registry.metrics.presence.connections.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_found_by_its_owner_until_it_closes() {
        let reg = Connections::new(Metrics::new());
        let guard = reg.register("token:a".into(), "sse");
        assert!(guard.id().starts_with("sse_"));
        let live = reg.find("token:a", guard.id()).expect("found");
        assert!(reg.find("token:b", guard.id()).is_none(), "owner-scoped");
        let id = guard.id().to_owned();
        drop(guard);
        assert!(live.closed.is_cancelled());
        assert!(reg.find("token:a", &id).is_none());
        assert!(reg.is_empty());
    }

    #[test]
    fn a_takeover_keeps_the_newer_registration() {
        let reg = Connections::new(Metrics::new());
        let old = reg.register_as("token:a".into(), "mqtt:c1".into());
        let new = reg.register_as("token:a".into(), "mqtt:c1".into());
        drop(old);
        let live = reg.find("token:a", "mqtt:c1").expect("the newer one stays");
        assert!(!live.closed.is_cancelled());
        drop(new);
        assert!(reg.find("token:a", "mqtt:c1").is_none());
    }
}
