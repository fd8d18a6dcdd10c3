//! Row expiry: `GET|PUT /expiry {rules: [{table, column, format?}]}` and the sweep that deletes
//! rows whose `column` time has passed.
//!
//! Like message retention: rules live in the document (`_patchwork_expiry`), `service.db`
//! remembers which documents have rules (`expiry_documents`), and the sweep (every
//! `retention_sweep_seconds`) deletes in batches, each its own write of the group commit, then
//! runs `PRAGMA incremental_vacuum` and checkpoints, so expired rows are gone from the file
//! (`secure_delete` overwrites their bytes). Setting a rule creates an index on the column, so
//! a sweep reads only what it deletes.

use axum::extract::State;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Authorized;
use crate::error::{ApiError, Json};
use crate::registry::{DbId, DocError};
use crate::state::AppState;

const BATCH: i64 = 500;
const MAX_RULES: usize = 100;

/// How a column holds time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// INTEGER or REAL seconds since the Unix epoch (SQLite's `unixepoch()`).
    #[default]
    UnixSeconds,
    /// INTEGER milliseconds since the Unix epoch (JavaScript's `Date.now()`).
    UnixMs,
    /// RFC 3339 / ISO 8601 text in UTC (`2026-01-31T12:00:00Z`), compared as text.
    Rfc3339,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::UnixSeconds => "unix_seconds",
            Format::UnixMs => "unix_ms",
            Format::Rfc3339 => "rfc3339",
        }
    }

    fn parse(s: &str) -> Format {
        match s {
            "unix_ms" => Format::UnixMs,
            "rfc3339" => Format::Rfc3339,
            _ => Format::UnixSeconds,
        }
    }

    /// "Now" in this format, for `column <= now`.
    fn now(self) -> rusqlite::types::Value {
        let now = time::OffsetDateTime::now_utc();
        match self {
            Format::UnixSeconds => rusqlite::types::Value::Integer(now.unix_timestamp()),
            Format::UnixMs => rusqlite::types::Value::Integer(crate::time_fmt::now_ms()),
            Format::Rfc3339 => rusqlite::types::Value::Text(crate::time_fmt::rfc3339(now)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub table: String,
    pub column: String,
    #[serde(default)]
    pub format: Format,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesBody {
    rules: Vec<Rule>,
}

impl RulesBody {
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        let bad = |m: String| ApiError::bad_request("invalid_rules", m);
        if self.rules.len() > MAX_RULES {
            return Err(bad(format!("at most {MAX_RULES} rules")));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.rules {
            for (what, name) in [("table", &r.table), ("column", &r.column)] {
                if name.is_empty() || name.len() > 128 || name.contains('\0') {
                    return Err(bad(format!("{what} must be 1 to 128 bytes without NUL")));
                }
            }
            let lower = r.table.to_ascii_lowercase();
            if lower.starts_with("_patchwork_") || lower.starts_with("sqlite_") {
                return Err(bad(format!("{:?} is not an application table", r.table)));
            }
            if !seen.insert((r.table.clone(), r.column.clone())) {
                return Err(bad("each (table, column) may appear once".into()));
            }
        }
        Ok(())
    }
}

/// `"name"` with inner quotes doubled: an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn rules(conn: &Connection) -> rusqlite::Result<Vec<Rule>> {
    let mut stmt = conn.prepare_cached(
        "SELECT table_name, column_name, format FROM _patchwork_expiry ORDER BY 1, 2",
    )?;
    stmt.query_map([], |r| {
        Ok(Rule {
            table: r.get(0)?,
            column: r.get(1)?,
            format: Format::parse(&r.get::<_, String>(2)?),
        })
    })?
    .collect()
}

/// Replaces the rules, checking each table and column exists, and indexes each column.
fn set_rules(conn: &Connection, new: &[Rule]) -> Result<(), DocError> {
    for r in new {
        let table: Option<(String, i64)> = conn
            .query_row(
                "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
                 AND name = ?1 COLLATE NOCASE",
                [&r.table],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((table, _)) = table else {
            return Err(ApiError::bad_request(
                "invalid_rules",
                format!("no table {:?} in this document", r.table),
            )
            .into());
        };
        let column: Option<String> = conn
            .query_row(
                "SELECT name FROM pragma_table_xinfo(?1) WHERE name = ?2 COLLATE NOCASE",
                params![table, r.column],
                |row| row.get(0),
            )
            .optional()?;
        if column.is_none() {
            return Err(ApiError::bad_request(
                "invalid_rules",
                format!("table {:?} has no column {:?}", r.table, r.column),
            )
            .into());
        }
        // Not a `_patchwork_` name: the app may drop its table (and this index with it).
        let index = format!("expiry_{}_{}", r.table, r.column);
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
            ident(&index),
            ident(&r.table),
            ident(&r.column)
        ))?;
    }
    let before: std::collections::HashSet<String> = rules(conn)?
        .into_iter()
        .map(|r| r.table.to_ascii_lowercase())
        .collect();
    if new
        .iter()
        .any(|r| !before.contains(&r.table.to_ascii_lowercase()))
    {
        // A table starts expiring: the sync change log may hold its rows (see
        // `sync::log::session`); it goes, and sync clients take a snapshot.
        with_full_secure_delete(conn, || crate::sync::log::forget_all(conn))?;
    }
    conn.execute("DELETE FROM _patchwork_expiry", [])?;
    for r in new {
        conn.execute(
            "INSERT INTO _patchwork_expiry (table_name, column_name, format) VALUES (?1, ?2, ?3)",
            params![r.table, r.column, r.format.as_str()],
        )?;
    }
    crate::query::classify::schema_changed(conn);
    Ok(())
}

pub async fn get_rules(
    State(state): State<AppState>,
    auth: Authorized,
) -> Result<Json<serde_json::Value>, ApiError> {
    let doc = state.registry.get(auth.db()?).await?;
    let rules = doc.read(|c| Ok(rules(c)?)).await?;
    Ok(Json(json!({"rules": rules})))
}

pub async fn put_rules(
    State(state): State<AppState>,
    auth: Authorized,
    Json(body): Json<RulesBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    body.check()?;
    let db_id = auth.db()?.clone();
    let doc = state.registry.get(&db_id).await?;
    let new = body.rules;
    let has_rules = !new.is_empty();
    let stored = doc
        .write(move |c| {
            set_rules(c, &new)?;
            Ok(rules(c)?)
        })
        .await?;
    crate::sweep::list(&state, "expiry_documents", &db_id, has_rules).await?;
    Ok(Json(json!({"rules": stored})))
}

/// Runs `f` with `secure_delete = ON` (then back to the documents' `FAST`): `FAST` zeroes a
/// deleted row's bytes inside pages that stay in use, but not pages the delete frees
/// entirely; `ON` zeroes those too, so nothing of an expired row is left for the vacuum to
/// miss.
pub(crate) fn with_full_secure_delete<T>(
    conn: &Connection,
    f: impl FnOnce() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.pragma_update(None, "secure_delete", "ON")?;
    let out = f();
    conn.pragma_update(None, "secure_delete", "FAST")?;
    out
}

/// Deletes up to [`BATCH`] expired rows of one rule; how many.
fn sweep_rule(conn: &Connection, rule: &Rule) -> rusqlite::Result<usize> {
    // A rule whose table or column was dropped since does nothing (the sweep goes on).
    let rowid: Option<i64> = conn
        .query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name = ?1",
            [&rule.table],
            |r| r.get(0),
        )
        .optional()?;
    let Some(without_rowid) = rowid else {
        return Ok(0);
    };
    let (t, c) = (ident(&rule.table), ident(&rule.column));
    let sql = if without_rowid == 0 {
        format!(
            "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE {c} <= ?1 LIMIT {BATCH})"
        )
    } else {
        // No rowid to batch by: one statement (such tables are small lookup tables, typically).
        format!("DELETE FROM {t} WHERE {c} <= ?1")
    };
    match conn.prepare_cached(&sql) {
        Ok(mut stmt) => with_full_secure_delete(conn, || stmt.execute([rule.format.now()])),
        // The column is gone ("no such column" is a plain SQLITE_ERROR).
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::Unknown => {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Applies one document's rules; how many rows it deleted.
pub async fn sweep_document(state: &AppState, db_id: &DbId) -> Result<usize, DocError> {
    let doc = state.registry.get(db_id).await?;
    let rules = doc.read(|c| Ok(rules(c)?)).await?;
    let mut total = 0;
    for rule in rules {
        loop {
            let r = rule.clone();
            let deleted = doc.write(move |c| Ok(sweep_rule(c, &r)?)).await?;
            total += deleted;
            if deleted < BATCH as usize {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    if total > 0 {
        crate::sweep::reclaim(&doc).await?;
        state.metrics.expired_rows.inc_by(total as u64);
    }
    Ok(total)
}

/// One pass over every document with expiry rules.
pub async fn sweep_all(state: &AppState) {
    crate::sweep::listed(state, "expiry_documents", "expiry", |db_id| async move {
        sweep_document(state, &db_id).await
    })
    .await;
}

/// Sweeps every `period` until shutdown.
pub async fn sweeper(state: AppState, period: std::time::Duration) {
    crate::sweep::periodically(
        state,
        period,
        |state| async move { sweep_all(&state).await },
    )
    .await;
}
