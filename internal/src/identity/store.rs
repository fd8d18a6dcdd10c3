//! The session store: tower-sessions records in `service.db` (table `sessions`), written on the
//! service actor. Rows are keyed by the keyed hash of the session id, never the id itself.
//!
//! Rotation on privilege change: [`ServiceStore::rotate_subject`] marks every session of a
//! person (`"rotate": true` in the record); the next request with such a session gets a new id
//! ([`crate::identity::resolve`]: `cycle_id`, the old row is deleted, the response carries the
//! new cookie). The old id → new id step is remembered in memory ([`ServiceStore::successor`])
//! so that the person's open streams follow the session to its new id, and a request that was
//! already on its way with the old cookie within [`ROTATION_GRACE`] is not signed out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Error, Result, SessionStore};

use crate::auth::InstallKey;
use crate::registry::{DocError, DocHandle};

/// Sessions over `service.db`.
#[derive(Clone)]
pub struct ServiceStore {
    service: DocHandle,
    key: InstallKey,
    /// Rows written (create, save, delete): what a plain read must not add to.
    pub writes: Arc<AtomicU64>,
    /// Sessions rotated lately.
    rotated: Arc<Mutex<Rotations>>,
}

/// Old id → (new id, `None` while the rotation is under way; when it began or ended).
type Rotations = HashMap<Id, (Option<Id>, Instant)>;

/// What became of a session id ([`ServiceStore::successor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Successor {
    /// Not rotated (lately).
    None,
    /// Being rotated right now.
    Pending,
    /// Rotated to this id.
    Id(Id),
}

/// The record key that asks for a new session id on the session's next request.
pub const ROTATE: &str = "rotate";

/// How long after a rotation a request still carrying the old cookie (sent before the browser
/// saw the new one) is let through, as a new session of its own.
pub const ROTATION_GRACE: Duration = Duration::from_secs(5);

/// How long an old id → new id step is remembered (for streams, which look every 2 s).
pub const ROTATION_MEMORY: Duration = Duration::from_secs(300);

impl std::fmt::Debug for ServiceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceStore")
    }
}

fn backend(e: DocError) -> Error {
    Error::Backend(e.to_string())
}

impl ServiceStore {
    pub fn new(service: DocHandle, key: InstallKey) -> Self {
        Self {
            service,
            key,
            writes: Default::default(),
            rotated: Default::default(),
        }
    }

    /// Marks every web session of `subject` (a person signed in through OIDC; not token-login
    /// sessions) for rotation on its next request; how many.
    pub async fn rotate_subject(&self, subject: &str) -> std::result::Result<usize, DocError> {
        let who = subject.to_owned();
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.service
            .write(move |conn| {
                Ok(conn.execute(
                    "UPDATE sessions SET data = json_set(data, '$.rotate', json('true'))
                     WHERE json_extract(data, '$.principal.subject') = ?1
                       AND json_extract(data, '$.principal.token_id') IS NULL",
                    [who],
                )?)
            })
            .await
    }

    /// Records that the session `old` is being given a new id (its row is about to go).
    pub fn begin_rotation(&self, old: Id) {
        self.remember(old, None);
    }

    /// Records that the session `old` now lives on as `new`.
    pub fn note_rotation(&self, old: Id, new: Id) {
        self.remember(old, Some(new));
    }

    fn remember(&self, old: Id, new: Option<Id>) {
        let mut map = self.rotated.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, (_, at)| now.duration_since(*at) < ROTATION_MEMORY);
        map.insert(old, (new, now));
    }

    /// What became of the session `id` if it was rotated less than `within` ago (followed
    /// through later rotations).
    pub fn successor(&self, id: &Id, within: Duration) -> Successor {
        let map = self.rotated.lock().unwrap_or_else(|p| p.into_inner());
        let Some((next, at)) = map.get(id) else {
            return Successor::None;
        };
        if at.elapsed() >= within.min(ROTATION_MEMORY) {
            return Successor::None;
        }
        let Some(mut current) = *next else {
            return Successor::Pending;
        };
        for _ in 0..8 {
            match map.get(&current) {
                Some((Some(next), _)) => current = *next,
                Some((None, _)) => return Successor::Pending,
                None => break,
            }
        }
        Successor::Id(current)
    }

    /// [`Self::successor`], waiting (up to a second) for a rotation under way to finish.
    pub async fn successor_settled(&self, id: &Id, within: Duration) -> Option<Id> {
        for _ in 0..100 {
            match self.successor(id, within) {
                Successor::None => return None,
                Successor::Id(new) => return Some(new),
                Successor::Pending => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        None
    }

    fn id_hash(&self, id: &Id) -> [u8; 32] {
        self.key.hash(&format!("session:{id}"))
    }

    /// Deletes expired sessions; returns how many.
    pub async fn delete_expired(&self) -> std::result::Result<usize, DocError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.service
            .write(move |conn| {
                Ok(conn.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?)
            })
            .await
    }

    async fn upsert(&self, record: &Record, create: bool) -> Result<bool> {
        let hash = self.id_hash(&record.id);
        let data = serde_json::to_string(&record.data).map_err(|e| Error::Encode(e.to_string()))?;
        let expires = record.expiry_date.unix_timestamp();
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.service
            .write(move |conn| {
                // A save never drops a rotation mark set meanwhile (by a privilege change while
                // this request ran): only a new id (`create`) goes without it.
                let sql = if create {
                    "INSERT INTO sessions (id_hash, data, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (id_hash) DO NOTHING"
                } else {
                    "INSERT INTO sessions (id_hash, data, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (id_hash) DO UPDATE SET expires_at = ?3, data = \
                       CASE WHEN json_extract(sessions.data, '$.rotate') IS NOT NULL \
                       THEN json_set(?2, '$.rotate', json('true')) ELSE ?2 END"
                };
                let n = conn.execute(sql, params![hash.as_slice(), data, expires])?;
                Ok(n == 1)
            })
            .await
            .map_err(backend)
    }
}

#[async_trait::async_trait]
impl SessionStore for ServiceStore {
    async fn create(&self, record: &mut Record) -> Result<()> {
        // A 128-bit random id colliding is all but impossible; a new one is drawn if it does.
        while !self.upsert(record, true).await? {
            record.id = Id::default();
        }
        Ok(())
    }

    async fn save(&self, record: &Record) -> Result<()> {
        self.upsert(record, false).await.map(|_| ())
    }

    async fn load(&self, id: &Id) -> Result<Option<Record>> {
        let hash = self.id_hash(id);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let row: Option<(String, i64)> = self
            .service
            .read(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT data, expires_at FROM sessions \
                         WHERE id_hash = ?1 AND expires_at > ?2",
                        params![hash.as_slice(), now],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?)
            })
            .await
            .map_err(backend)?;
        let Some((data, expires)) = row else {
            return Ok(None);
        };
        Ok(Some(Record {
            id: *id,
            data: serde_json::from_str(&data).map_err(|e| Error::Decode(e.to_string()))?,
            expiry_date: OffsetDateTime::from_unix_timestamp(expires)
                .map_err(|e| Error::Decode(e.to_string()))?,
        }))
    }

    async fn delete(&self, id: &Id) -> Result<()> {
        let hash = self.id_hash(id);
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.service
            .write(move |conn| {
                conn.execute("DELETE FROM sessions WHERE id_hash = ?1", [hash.as_slice()])?;
                Ok(())
            })
            .await
            .map_err(backend)
    }
}
