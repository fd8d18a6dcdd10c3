//! Persistent MQTT sessions in `service.db` (`mqtt_sessions`): subscriptions, a delivery cursor
//! per document and the QoS 2 packet ids awaiting release, keyed by (token id, client id).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub subscriptions: Vec<StoredSub>,
    /// The highest message id delivered and acknowledged (or delivered at QoS 0), per document.
    pub cursors: BTreeMap<String, i64>,
    /// QoS 2 packet ids stored and not yet released (PUBREL) by the client.
    pub qos2: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSub {
    pub db_id: String,
    /// The filter within the document (without `db/{db_id}/`).
    pub filter: String,
    pub qos: u8,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Takes the session for a connecting client: its state if one is stored and has not expired
/// (marking it connected), `None` otherwise (an expired one is deleted).
pub fn take(
    conn: &Connection,
    token_id: &str,
    client_id: &str,
) -> rusqlite::Result<Option<SessionState>> {
    let row: Option<(String, i64, Option<i64>)> = conn
        .prepare_cached(
            "SELECT state, expiry_secs, disconnected_at FROM mqtt_sessions
             WHERE token_id = ?1 AND client_id = ?2",
        )?
        .query_row(params![token_id, client_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((state, expiry, disconnected_at)) = row else {
        return Ok(None);
    };
    if disconnected_at.is_some_and(|at| at.saturating_add(expiry) < now()) {
        delete(conn, token_id, client_id)?;
        return Ok(None);
    }
    conn.prepare_cached(
        "UPDATE mqtt_sessions SET disconnected_at = NULL, updated_at = ?3
         WHERE token_id = ?1 AND client_id = ?2",
    )?
    .execute(params![token_id, client_id, now()])?;
    // A state this version cannot read starts over rather than refusing the client.
    Ok(Some(serde_json::from_str(&state).unwrap_or_default()))
}

/// Stores the session's state; `disconnected` marks the client gone (its expiry starts).
pub fn save(
    conn: &Connection,
    token_id: &str,
    client_id: &str,
    state: &SessionState,
    expiry_secs: u64,
    disconnected: bool,
) -> rusqlite::Result<()> {
    let json = serde_json::to_string(state).unwrap_or_default();
    let now = now();
    conn.prepare_cached(
        "INSERT INTO mqtt_sessions (token_id, client_id, state, expiry_secs, disconnected_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (token_id, client_id) DO UPDATE SET state = excluded.state,
             expiry_secs = excluded.expiry_secs, disconnected_at = excluded.disconnected_at,
             updated_at = excluded.updated_at",
    )?
    .execute(params![
        token_id,
        client_id,
        json,
        i64::try_from(expiry_secs).unwrap_or(i64::MAX),
        disconnected.then_some(now),
        now
    ])?;
    Ok(())
}

pub fn delete(conn: &Connection, token_id: &str, client_id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM mqtt_sessions WHERE token_id = ?1 AND client_id = ?2")?
        .execute(params![token_id, client_id])?;
    Ok(())
}

/// Deletes the sessions whose clients stayed away past their expiry; how many.
pub fn sweep(conn: &Connection) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM mqtt_sessions
         WHERE disconnected_at IS NOT NULL AND disconnected_at + expiry_secs < ?1",
    )?
    .execute([now()])
}

/// Marks every session disconnected now: at start-up no connection holds any (a crash left
/// them marked connected, which would keep them from ever expiring).
pub fn mark_all_disconnected(conn: &Connection) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE mqtt_sessions SET disconnected_at = ?1 WHERE disconnected_at IS NULL",
    )?
    .execute([now()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!(
            "../../../migrations/service/0009_mqtt_sessions.sql"
        ))
        .unwrap();
        conn
    }

    #[test]
    fn sessions_round_trip_and_expire() {
        let conn = db();
        assert_eq!(take(&conn, "t1", "c").unwrap(), None);
        let mut state = SessionState::default();
        state.subscriptions.push(StoredSub {
            db_id: "d".into(),
            filter: "a/#".into(),
            qos: 1,
        });
        state.cursors.insert("d".into(), 42);
        save(&conn, "t1", "c", &state, 60, true).unwrap();
        // Another token's client with the same id sees nothing.
        assert_eq!(take(&conn, "t2", "c").unwrap(), None);
        assert_eq!(take(&conn, "t1", "c").unwrap(), Some(state.clone()));
        // Expired while away: gone.
        save(&conn, "t1", "c", &state, 0, true).unwrap();
        conn.execute(
            "UPDATE mqtt_sessions SET disconnected_at = disconnected_at - 5",
            [],
        )
        .unwrap();
        assert_eq!(sweep(&conn).unwrap(), 1);
        assert_eq!(take(&conn, "t1", "c").unwrap(), None);
    }
}
