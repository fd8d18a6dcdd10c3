//! Per-document settings: `GET|PUT /_settings {synchronous}`.
//!
//! A document may run with a durability other than the server's `synchronous` (a tournament's
//! audit trail wants `FULL`: every commit fsynced before it is acknowledged). The choice lives in
//! the document itself (`_patchwork_meta`, key `synchronous`), so it travels with backups and
//! survives restarts: the connection hook that runs when a document's connection opens
//! ([`apply_stored`]) sets the PRAGMA before the actor takes its first request, and `PUT` sets it
//! on the live connection at once (between transactions, where SQLite allows it).

use axum::extract::State;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::auth::Authorized;
use crate::config::Synchronous;
use crate::error::{ApiError, Json};
use crate::registry::DocError;
use crate::state::AppState;

const KEY: &str = "synchronous";

/// A durability choice: one of the server's settings, or `default` (follow the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncChoice {
    Normal,
    Full,
    Default,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    synchronous: SyncChoice,
}

impl SettingsBody {
    /// Nothing to check beyond the body's shape (kept for the fuzzer's uniform interface).
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// `GET` and `PUT` answer.
#[derive(Serialize)]
pub struct Settings {
    db_id: String,
    /// The document's own choice, `null` when it follows the server.
    synchronous: Option<Synchronous>,
    /// What the open connection runs with.
    effective: Synchronous,
}

/// The stored choice, if any.
fn stored(conn: &Connection) -> rusqlite::Result<Option<Synchronous>> {
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM _patchwork_meta WHERE key = ?1",
            [KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|s| s.parse().ok()))
}

/// What the connection runs with (`PRAGMA synchronous`: 1 NORMAL, 2 FULL, 3 EXTRA).
fn effective(conn: &Connection) -> rusqlite::Result<Synchronous> {
    let level: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    Ok(if level >= 2 {
        Synchronous::Full
    } else {
        Synchronous::Normal
    })
}

/// Called when a document's connection opens (on the actor thread, before any request): applies
/// the stored choice, if any. Failures are logged; the server's setting then stays.
pub fn apply_stored(conn: &Connection) {
    match stored(conn) {
        Ok(Some(s)) => {
            if let Err(e) = conn.pragma_update(None, "synchronous", s.pragma_value()) {
                tracing::error!(error = %e, "applying the document's synchronous setting failed");
            }
        }
        Ok(None) => {}
        // A document opened before its migrations ran has no meta table yet: nothing stored.
        Err(e) => tracing::debug!(error = %e, "no per-document settings"),
    }
}

async fn answer(state: &AppState, auth: &Authorized) -> Result<Json<Settings>, ApiError> {
    let db = auth.db()?;
    let doc = state.registry.get(db).await?;
    let (synchronous, effective) = doc.read(|c| Ok((stored(c)?, effective(c)?))).await?;
    Ok(Json(Settings {
        db_id: db.to_string(),
        synchronous,
        effective,
    }))
}

/// `GET /_settings`.
pub async fn get_settings(
    State(state): State<AppState>,
    auth: Authorized,
) -> Result<Json<Settings>, ApiError> {
    answer(&state, &auth).await
}

/// `PUT /_settings`: stores the choice (one write of the group commit), then sets it on the
/// live connection (outside a transaction: SQLite refuses to change the level inside one).
pub async fn put_settings(
    State(state): State<AppState>,
    auth: Authorized,
    Json(body): Json<SettingsBody>,
) -> Result<Json<Settings>, ApiError> {
    body.check()?;
    let doc = state.registry.get(auth.db()?).await?;
    let choice = body.synchronous;
    doc.write(move |c| {
        match choice {
            SyncChoice::Default => {
                c.execute("DELETE FROM _patchwork_meta WHERE key = ?1", [KEY])?;
            }
            SyncChoice::Normal | SyncChoice::Full => {
                let v = if choice == SyncChoice::Full {
                    "full"
                } else {
                    "normal"
                };
                c.execute(
                    "INSERT INTO _patchwork_meta (key, value) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [KEY, v],
                )?;
            }
        }
        Ok(())
    })
    .await?;
    let level = match choice {
        SyncChoice::Full => Synchronous::Full,
        SyncChoice::Normal => Synchronous::Normal,
        SyncChoice::Default => state.config.synchronous,
    };
    doc.read(move |c| {
        c.pragma_update(None, "synchronous", level.pragma_value())
            .map_err(DocError::from)
    })
    .await?;
    answer(&state, &auth).await
}
