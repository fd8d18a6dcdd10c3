//! An application's schema and data lifecycle inside its document: per-document migrations
//! (`GET|POST /migrations`) and row expiry (`GET|PUT /expiry` and its sweep, [`expiry`]).
//!
//! Migrations: each version is applied once, in its own write of the document's group commit
//! (so a failing one rolls back only itself), and recorded in `_patchwork_app_migrations` with
//! the SHA-256 of its SQL; a version already applied with different SQL is `409
//! migration_changed`. Every statement of a migration goes through the SQL classifier like a
//! `query.admin` statement (no ATTACH, no writes to Patchwork's own tables, no dangerous
//! PRAGMAs), one at a time in SQLite's own statement order.

pub mod expiry;
pub mod settings;

use axum::extract::State;
use axum::http::Method;
use axum::routing::{get, post, put};
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::{Access, Action, Authorized, ResourceFrom, Route};
use crate::error::{ApiError, Json};
use crate::query::classify;
use crate::registry::DocError;
use crate::state::AppState;

/// Migrations per request at most.
const MAX_MIGRATIONS: usize = 1_000;

const ADMIN: Access = Access::Db {
    actions: &[Action::QueryAdmin],
    resource: ResourceFrom::None,
};

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/migrations",
            ADMIN,
            post(apply),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/migrations",
            Access::Db {
                actions: &[Action::QueryAdmin, Action::QueryRead],
                resource: ResourceFrom::None,
            },
            get(list),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/expiry",
            ADMIN,
            get(expiry::get_rules),
        ),
        Route::new(
            Method::PUT,
            "/api/v1/db/{db_id}/expiry",
            ADMIN,
            put(expiry::put_rules),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/_settings",
            Access::Db {
                actions: &[Action::QueryAdmin, Action::QueryRead],
                resource: ResourceFrom::None,
            },
            get(settings::get_settings),
        ),
        Route::new(
            Method::PUT,
            "/api/v1/db/{db_id}/_settings",
            ADMIN,
            put(settings::put_settings),
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationsBody {
    migrations: Vec<NewMigration>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMigration {
    version: i64,
    name: String,
    sql: String,
}

/// One applied migration.
#[derive(Debug, Serialize)]
pub struct Applied {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    pub applied_at: String,
}

impl MigrationsBody {
    /// What `POST /migrations` checks before it opens the document.
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        let bad = |m: String| ApiError::bad_request("invalid_migrations", m);
        if self.migrations.is_empty() || self.migrations.len() > MAX_MIGRATIONS {
            return Err(bad(format!(
                "migrations must hold 1 to {MAX_MIGRATIONS} entries"
            )));
        }
        let mut last = 0;
        for m in &self.migrations {
            if m.version < 1 {
                return Err(bad(format!("version {} must be >= 1", m.version)));
            }
            if m.version <= last {
                return Err(bad("versions must be unique and in ascending order".into()));
            }
            last = m.version;
            if m.name.is_empty() || m.name.len() > 200 {
                return Err(bad(format!(
                    "version {}: name must be 1 to 200 bytes",
                    m.version
                )));
            }
            if m.sql.trim().is_empty() {
                return Err(bad(format!("version {}: sql is empty", m.version)));
            }
        }
        Ok(())
    }
}

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

fn applied(conn: &Connection) -> rusqlite::Result<Vec<Applied>> {
    let mut stmt = conn.prepare_cached(
        "SELECT version, name, checksum, applied_at FROM _patchwork_app_migrations ORDER BY version",
    )?;
    stmt.query_map([], |r| {
        Ok(Applied {
            version: r.get(0)?,
            name: r.get(1)?,
            checksum: r.get(2)?,
            applied_at: r.get(3)?,
        })
    })?
    .collect()
}

/// What happened to one version.
enum Outcome {
    Applied,
    AlreadyApplied,
}

/// Applies one migration (inside its own savepoint of the group commit), unless it is already
/// applied with the same checksum.
fn apply_one(conn: &Connection, m: &NewMigration, sum: &str) -> Result<Outcome, DocError> {
    let existing: Option<String> = conn
        .prepare_cached("SELECT checksum FROM _patchwork_app_migrations WHERE version = ?1")?
        .query_row([m.version], |r| r.get(0))
        .optional()?;
    if let Some(existing) = existing {
        if existing != sum {
            return Err(ApiError::conflict(
                "migration_changed",
                format!(
                    "version {} was applied with different SQL (checksum {existing}); add a new \
                     version instead of editing an applied one",
                    m.version
                ),
            )
            .with_details(json!({"version": m.version, "applied_checksum": existing}))
            .into());
        }
        return Ok(Outcome::AlreadyApplied);
    }
    let highest: i64 = conn
        .prepare_cached("SELECT coalesce(max(version), 0) FROM _patchwork_app_migrations")?
        .query_row([], |r| r.get(0))?;
    if m.version < highest {
        return Err(ApiError::conflict(
            "migration_out_of_order",
            format!(
                "version {} is older than the applied version {highest}; versions apply in order",
                m.version
            ),
        )
        .with_details(json!({"version": m.version}))
        .into());
    }
    let failed = |e: ApiError| -> DocError {
        let message = format!("version {} ({}): {}", m.version, m.name, e.message);
        ApiError::new(e.status, e.code, message)
            .with_details(json!({"version": m.version}))
            .into()
    };
    // SQLite splits the script (its parser knows trigger bodies and quoting); each statement is
    // then compiled again through the classifier and run before the next is compiled, so a
    // statement may use what the one before it created.
    let mut batch = rusqlite::Batch::new(conn, &m.sql);
    let mut statements = 0usize;
    loop {
        let next = batch
            .next()
            .map_err(|e| failed(crate::query::exec::sql_error(e)))?;
        let Some(stmt) = next else { break };
        if stmt.parameter_count() > 0 {
            return Err(failed(ApiError::bad_request(
                "invalid_migrations",
                "migrations take no parameters",
            )));
        }
        let text = stmt.expanded_sql().unwrap_or_default();
        drop(stmt);
        let mut prepared =
            classify::prepare(conn, &text).map_err(|e| failed(crate::query::classify_error(e)))?;
        let mut rows = prepared.stmt.raw_query();
        while rows
            .next()
            .map_err(|e| failed(crate::query::exec::sql_error(e)))?
            .is_some()
        {}
        drop(rows);
        drop(prepared);
        statements += 1;
    }
    if statements == 0 {
        return Err(failed(ApiError::bad_request(
            "invalid_migrations",
            "the migration holds no statement",
        )));
    }
    // The schema may have changed: cached statements and classifications go.
    classify::schema_changed(conn);
    conn.prepare_cached(
        "INSERT INTO _patchwork_app_migrations (version, name, checksum, applied_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        m.version,
        m.name,
        sum,
        crate::time_fmt::rfc3339(time::OffsetDateTime::now_utc())
    ])?;
    Ok(Outcome::Applied)
}

/// `POST /migrations`: applies the versions not yet applied, each in its own transaction, in
/// order; stops at the first failure (the ones before it stay applied).
async fn apply(
    State(state): State<AppState>,
    auth: Authorized,
    Json(body): Json<MigrationsBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    body.check()?;
    let doc = state.registry.get(auth.db()?).await?;
    let mut newly = Vec::new();
    for m in body.migrations {
        let sum = checksum(&m.sql);
        let version = m.version;
        let outcome = doc.write(move |c| apply_one(c, &m, &sum)).await;
        match outcome {
            Ok(Outcome::Applied) => newly.push(version),
            Ok(Outcome::AlreadyApplied) => {}
            Err(e) => {
                let e = ApiError::from(e);
                let mut details = e.details.clone().unwrap_or_else(|| json!({}));
                details["applied_now"] = json!(newly);
                return Err(e.with_details(details));
            }
        }
    }
    let all = doc.read(|c| Ok(applied(c)?)).await?;
    Ok(Json(json!({"applied_now": newly, "migrations": all})))
}

/// `GET /migrations`: what is applied.
async fn list(
    State(state): State<AppState>,
    auth: Authorized,
) -> Result<Json<serde_json::Value>, ApiError> {
    let doc = state.registry.get(auth.db()?).await?;
    let all = doc.read(|c| Ok(applied(c)?)).await?;
    Ok(Json(json!({"migrations": all})))
}
