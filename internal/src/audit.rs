//! The audit log in `service.db` (`audit_log`): sign-ins and sign-outs, token and document
//! changes, webhook configuration changes. Each event is also a `tracing` line prefixed
//! `audit:`; the table is what `GET /api/v1/admin/audit` reads back.

use rusqlite::{Connection, params};
use serde::Serialize;
use time::OffsetDateTime;

use crate::registry::DocHandle;
use crate::time_fmt::rfc3339;

/// One audit event as stored and listed.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = AuditEvent)]
pub struct Event {
    pub at: String,
    pub actor: String,
    pub action: String,
    #[schema(required)]
    pub target: Option<String>,
    #[schema(required)]
    pub detail: Option<String>,
}

/// Appends an event inside the caller's transaction (so it commits with the change).
pub fn record(
    conn: &Connection,
    actor: &str,
    action: &str,
    target: Option<&str>,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        rfc3339(OffsetDateTime::now_utc()),
        actor,
        action,
        target,
        detail
    ])?;
    Ok(())
}

/// Appends an event on its own (for changes that are not in `service.db`). A failure is
/// logged, never the caller's failure.
pub async fn log(
    service: &DocHandle,
    actor: &str,
    action: &'static str,
    target: Option<&str>,
    detail: Option<String>,
) {
    let (actor, target) = (actor.to_owned(), target.map(str::to_owned));
    let result = service
        .write(move |conn| {
            Ok(record(
                conn,
                &actor,
                action,
                target.as_deref(),
                detail.as_deref(),
            )?)
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, action, "writing the audit log failed");
    }
}

/// The newest `limit` events, newest first.
pub fn list(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(Event {
            at: r.get(0)?,
            actor: r.get(1)?,
            action: r.get(2)?,
            target: r.get(3)?,
            detail: r.get(4)?,
        })
    })?;
    rows.collect()
}
