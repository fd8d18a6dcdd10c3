//! The session store: tower-sessions records in `service.db` (table `sessions`), written on the
//! service actor. Rows are keyed by the keyed hash of the session id, never the id itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

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
        }
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
                let sql = if create {
                    "INSERT INTO sessions (id_hash, data, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (id_hash) DO NOTHING"
                } else {
                    "INSERT INTO sessions (id_hash, data, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (id_hash) DO UPDATE SET data = ?2, expires_at = ?3"
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
