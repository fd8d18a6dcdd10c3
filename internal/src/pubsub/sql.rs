//! Message storage: plain functions over the document's connection, run on its actor.

use std::sync::{Arc, OnceLock};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::topic;

/// A stored message. Shared (`Arc`) between the publisher's announcement and every subscriber;
/// its JSON form is computed once, however many subscribers send it.
#[derive(Debug)]
pub struct Message {
    pub id: i64,
    pub topic: String,
    pub content_type: String,
    pub payload: Vec<u8>,
    pub created_ms: i64,
    pub producer: Option<String>,
    json: OnceLock<String>,
    /// The SSE `message` event, built once and shared by every SSE subscriber.
    frame: OnceLock<bytes::Bytes>,
}

impl Message {
    pub fn created_at(&self) -> String {
        crate::time_fmt::from_unix_ms(self.created_ms)
    }

    /// `{id, topic, content_type, payload_base64, created_at, producer}` as compact JSON.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| {
            serde_json::json!({
                "id": self.id,
                "topic": self.topic,
                "content_type": self.content_type,
                "payload_base64": base64_simd::STANDARD.encode_to_string(&self.payload),
                "created_at": self.created_at(),
                "producer": self.producer,
            })
            .to_string()
        })
    }
}

impl Message {
    /// `event: message`, `id: {id}`, `data: {json}` as an SSE event (the JSON is one line).
    pub fn sse_frame(&self) -> bytes::Bytes {
        self.frame
            .get_or_init(|| super::sse_event("message", Some(self.id), self.json()))
            .clone()
    }
}

/// A message to publish (validated).
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub topic: String,
    pub content_type: String,
    pub payload: Vec<u8>,
    pub dedupe_key: Option<String>,
    /// Also the topic's retained message (MQTT); an empty payload clears the topic's.
    pub retain: bool,
}

/// The publish answer.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub id: i64,
    pub topic: String,
    pub created_at: String,
    pub duplicate: bool,
}

/// How far ahead of the clock a message's time may be carried forward to keep publish times
/// non-decreasing (see [`insert`]); retention by age skips, rather than stops at, messages
/// stamped further ahead.
const CLOCK_SLACK_MS: i64 = 5 * 60 * 1000;

/// Inserts `m` unless its `dedupe_key` was already used on its topic. Returns the answer and,
/// for a new message, the stored message to announce.
pub fn insert(
    conn: &Connection,
    m: &NewMessage,
    producer: Option<&str>,
) -> rusqlite::Result<(Published, Option<Arc<Message>>)> {
    if let Some(key) = &m.dedupe_key {
        let existing: Option<(i64, i64)> = conn
            .prepare_cached(
                "SELECT id, created_ms FROM _patchwork_messages WHERE topic = ?1 AND dedupe_key = ?2",
            )?
            .query_row(params![m.topic, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((id, created_ms)) = existing {
            return Ok((
                Published {
                    id,
                    topic: m.topic.clone(),
                    created_at: crate::time_fmt::from_unix_ms(created_ms),
                    duplicate: true,
                },
                None,
            ));
        }
    }
    // Never before the previous message (a clock stepped back): along ids the times never
    // decrease, which retention by age relies on to stop at the first young message. A
    // previous time further ahead than `CLOCK_SLACK_MS` came from a clock that was wrong, not
    // from a small step back; carrying it forward would stamp every later message with it.
    let previous: Option<i64> = conn
        .prepare_cached("SELECT created_ms FROM _patchwork_messages ORDER BY id DESC LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    let now = crate::time_fmt::now_ms();
    let created_ms = match previous {
        Some(p) if p > now && p - now <= CLOCK_SLACK_MS => p,
        Some(p) if p > now => {
            tracing::warn!(
                ahead_ms = p - now,
                "the previous message is stamped far in the future; not carrying its time forward"
            );
            now
        }
        _ => now,
    };
    // `last_insert_rowid()` rather than `RETURNING`, which builds an ephemeral table per
    // statement (a third of the insert's cost).
    let inserted = conn
        .prepare_cached(
            "INSERT INTO _patchwork_messages (topic, content_type, payload, created_ms, producer, dedupe_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![m.topic, m.content_type, m.payload, created_ms, producer, m.dedupe_key])?;
    if inserted != 1 {
        // Only a trigger (`RAISE(IGNORE)`) can swallow the row; `last_insert_rowid()` would
        // then name another message.
        return Err(rusqlite::Error::StatementChangedRows(inserted));
    }
    let id = conn.last_insert_rowid();
    if m.retain {
        set_retained(conn, &m.topic, id, m, created_ms, producer)?;
    }
    let message = Arc::new(Message {
        id,
        topic: m.topic.clone(),
        content_type: m.content_type.clone(),
        payload: m.payload.clone(),
        created_ms,
        producer: producer.map(str::to_owned),
        json: OnceLock::new(),
        frame: OnceLock::new(),
    });
    Ok((
        Published {
            id,
            topic: m.topic.clone(),
            created_at: message.created_at(),
            duplicate: false,
        },
        Some(message),
    ))
}

/// Makes message `id` the topic's retained message, or clears the topic's with an empty payload.
fn set_retained(
    conn: &Connection,
    topic: &str,
    id: i64,
    m: &NewMessage,
    created_ms: i64,
    producer: Option<&str>,
) -> rusqlite::Result<()> {
    if m.payload.is_empty() {
        conn.prepare_cached("DELETE FROM _patchwork_retained WHERE topic = ?1")?
            .execute([topic])?;
    } else {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO _patchwork_retained
                 (topic, message_id, content_type, payload, created_ms, producer)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            topic,
            id,
            m.content_type,
            m.payload,
            created_ms,
            producer
        ])?;
    }
    Ok(())
}

/// The retained messages whose topics match any of `filters`, by topic (at most `limit`).
pub fn retained(
    conn: &Connection,
    filters: &[String],
    limit: usize,
) -> rusqlite::Result<Vec<Arc<Message>>> {
    // The literal prefix of each filter narrows the scan; the match itself is `topic::matches`.
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT message_id, topic, content_type, payload, created_ms, producer
         FROM _patchwork_retained WHERE topic >= ?1 ORDER BY topic",
    )?;
    for filter in filters {
        // Without its last `/`: `a/#` also matches `a`.
        let prefix = topic::literal_prefix(filter);
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        let mut rows = stmt.query([prefix])?;
        while let Some(row) = rows.next()? {
            let name: String = row.get(1)?;
            if !name.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if topic::matches(filter, &name) && !out.iter().any(|m: &Arc<Message>| m.topic == name)
            {
                out.push(Arc::new(row_to_message(row)?));
            }
        }
    }
    Ok(out)
}

fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: r.get(0)?,
        topic: r.get(1)?,
        content_type: r.get(2)?,
        payload: r.get(3)?,
        created_ms: r.get(4)?,
        producer: r.get(5)?,
        json: OnceLock::new(),
        frame: OnceLock::new(),
    })
}

const COLUMNS: &str = "id, topic, content_type, payload, created_ms, producer";

/// Up to `limit` messages with `id > after`, oldest first (all topics; the caller filters).
/// Returns them and the highest id scanned.
pub fn after(conn: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<Arc<Message>>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM _patchwork_messages WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after, limit as i64], row_to_message)?;
    rows.map(|r| r.map(Arc::new)).collect()
}

/// The highest message id ever assigned (0 if none).
pub fn max_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = '_patchwork_messages'), 0)",
    )?
    .query_row([], |r| r.get(0))
}

/// The last `n` messages matching any of `filters`, oldest first, scanning at most `scan_limit`
/// rows back from the newest.
pub fn tail(
    conn: &Connection,
    filters: &[String],
    n: usize,
    scan_limit: usize,
) -> rusqlite::Result<Vec<Arc<Message>>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM _patchwork_messages ORDER BY id DESC LIMIT ?1"
    ))?;
    let mut out = Vec::new();
    let mut rows = stmt.query(params![scan_limit as i64])?;
    while let Some(row) = rows.next()? {
        if out.len() >= n {
            break;
        }
        let topic: String = row.get(1)?;
        if filters.iter().any(|f| topic::matches(f, &topic)) {
            out.push(Arc::new(row_to_message(row)?));
        }
    }
    out.reverse();
    Ok(out)
}

/// One retention rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub topic_filter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<i64>,
}

pub fn retention_rules(conn: &Connection) -> rusqlite::Result<Vec<RetentionRule>> {
    let mut stmt = conn.prepare_cached(
        "SELECT topic_filter, max_age_seconds, max_messages FROM _patchwork_retention ORDER BY topic_filter",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(RetentionRule {
            topic_filter: r.get(0)?,
            max_age_seconds: r.get(1)?,
            max_messages: r.get(2)?,
        })
    })?;
    rows.collect()
}

pub fn set_retention_rules(conn: &Connection, rules: &[RetentionRule]) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM _patchwork_retention", [])?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO _patchwork_retention (topic_filter, max_age_seconds, max_messages) VALUES (?1, ?2, ?3)",
    )?;
    for r in rules {
        stmt.execute(params![r.topic_filter, r.max_age_seconds, r.max_messages])?;
    }
    Ok(())
}

/// What one [`sweep_rule`] pass did.
#[derive(Debug, PartialEq, Eq)]
pub struct Swept {
    pub deleted: usize,
    /// Where the age scan stopped short (the batch or the scan limit, not a young message or
    /// the end): the next pass resumes after this id.
    pub age_resume_after: Option<i64>,
}

/// Deletes at most `batch` messages that fall out of `rule`. Age: older than
/// `max_age_seconds`, scanning at most `scan_limit` messages after id `age_after` (so old
/// messages of other topics, however many, cannot hide matching ones from a sweep that
/// resumes where the last pass stopped). Count: beyond the newest `max_messages` matching
/// ones (scanning at most `scan_limit` rows).
pub fn sweep_rule(
    conn: &Connection,
    rule: &RetentionRule,
    age_after: i64,
    batch: usize,
    scan_limit: usize,
) -> rusqlite::Result<Swept> {
    let mut doomed: Vec<i64> = Vec::new();
    let mut age_resume_after = None;
    if let Some(age) = rule.max_age_seconds {
        let now = crate::time_fmt::now_ms();
        let cutoff = now - age.saturating_mul(1000);
        // Oldest first, up to the first message young enough to keep: publish times never
        // decrease along ids (see `insert`), so every later one is younger still. (Documents
        // from before that rule may hold a message stamped before one ahead of it; it is then
        // kept at most as long as the clock step that caused it.) A message stamped far in the
        // future was a wrong clock, not a young message: skipped, so it cannot stall the sweep.
        let mut stmt = conn.prepare_cached(
            "SELECT id, topic, created_ms FROM _patchwork_messages WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![age_after, scan_limit as i64])?;
        let (mut scanned, mut last, mut young) = (0usize, age_after, false);
        while let Some(row) = rows.next()? {
            scanned += 1;
            last = row.get(0)?;
            let created: i64 = row.get(2)?;
            if created > now.saturating_add(CLOCK_SLACK_MS) {
                continue;
            }
            if created >= cutoff {
                young = true;
                break;
            }
            let topic: String = row.get(1)?;
            if topic::matches(&rule.topic_filter, &topic) {
                doomed.push(last);
                if doomed.len() >= batch {
                    break;
                }
            }
        }
        // Stopped by a bound rather than a young message or the end: more may follow.
        if !young && (doomed.len() >= batch || scanned >= scan_limit) {
            age_resume_after = Some(last);
        }
    }
    if let Some(keep) = rule.max_messages
        && doomed.len() < batch
    {
        let mut stmt = conn.prepare_cached(
            "SELECT id, topic FROM _patchwork_messages ORDER BY id DESC LIMIT ?1",
        )?;
        let mut rows = stmt.query(params![scan_limit as i64])?;
        let mut seen = 0i64;
        while let Some(row) = rows.next()? {
            let topic: String = row.get(1)?;
            if topic::matches(&rule.topic_filter, &topic) {
                seen += 1;
                if seen > keep.max(0) {
                    let id: i64 = row.get(0)?;
                    if !doomed.contains(&id) {
                        doomed.push(id);
                    }
                    if doomed.len() >= batch {
                        break;
                    }
                }
            }
        }
    }
    let mut del = conn.prepare_cached("DELETE FROM _patchwork_messages WHERE id = ?1")?;
    for id in &doomed {
        del.execute([id])?;
    }
    Ok(Swept {
        deleted: doomed.len(),
        age_resume_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::Schema;

    fn document() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::sqlite::OpenOptions {
            synchronous: crate::config::Synchronous::Normal,
            busy_timeout: std::time::Duration::from_secs(5),
            max_value_bytes: 1 << 20,
            wal_autocheckpoint: crate::sqlite::DEFAULT_WAL_AUTOCHECKPOINT,
        };
        let conn =
            crate::sqlite::open(&dir.path().join("d.sqlite3"), Schema::Document, opts).unwrap();
        (dir, conn)
    }

    fn message(topic: &str) -> NewMessage {
        NewMessage {
            topic: topic.into(),
            content_type: "text/plain".into(),
            payload: b"x".to_vec(),
            dedupe_key: None,
            retain: false,
        }
    }

    fn stored(conn: &Connection, created_ms: i64, topic: &str) {
        conn.execute(
            "INSERT INTO _patchwork_messages (topic, content_type, payload, created_ms) \
             VALUES (?1, 'text/plain', x'00', ?2)",
            params![topic, created_ms],
        )
        .unwrap();
    }

    /// The stored messages' topics, in id order.
    fn topics(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT topic FROM _patchwork_messages ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn publish_times_never_decrease_along_ids() {
        let (_dir, conn) = document();
        // The message before was stamped two minutes ahead (the clock has since stepped back).
        let ahead = crate::time_fmt::now_ms() + 120_000;
        stored(&conn, ahead, "t");
        let (published, message) = insert(&conn, &message("t"), None).unwrap();
        assert_eq!(message.unwrap().created_ms, ahead);
        assert_eq!(published.created_at, crate::time_fmt::from_unix_ms(ahead));
    }

    #[test]
    fn a_time_far_in_the_future_is_not_carried_forward_nor_stalls_the_sweep() {
        let (_dir, conn) = document();
        let now = crate::time_fmt::now_ms();
        stored(&conn, now - 10_000, "a/old");
        // A clock that was years ahead for a moment.
        stored(&conn, now + 10 * 365 * 86_400_000, "a/wrong");
        let (_, message) = insert(&conn, &message("a/new"), None).unwrap();
        let stamped = message.unwrap().created_ms;
        assert!((now..now + 60_000).contains(&stamped), "{stamped}");
        let rule = RetentionRule {
            topic_filter: "a/#".into(),
            max_age_seconds: Some(5),
            max_messages: None,
        };
        assert_eq!(sweep_rule(&conn, &rule, 0, 100, 1_000).unwrap().deleted, 1);
        assert_eq!(topics(&conn), ["a/wrong", "a/new"]);
    }

    #[test]
    fn an_age_sweep_stops_at_the_first_young_message() {
        let (_dir, conn) = document();
        let now = crate::time_fmt::now_ms();
        stored(&conn, now - 10_000, "a/1");
        stored(&conn, now - 9_000, "b");
        stored(&conn, now - 8_000, "a/2");
        stored(&conn, now, "a/3");
        let rule = RetentionRule {
            topic_filter: "a/#".into(),
            max_age_seconds: Some(5),
            max_messages: None,
        };
        assert_eq!(
            sweep_rule(&conn, &rule, 0, 100, 1_000).unwrap(),
            Swept {
                deleted: 2,
                age_resume_after: None
            }
        );
        assert_eq!(topics(&conn), ["b", "a/3"]);
        // The batch and scan bounds hold.
        let (_dir, conn) = document();
        for _ in 0..3 {
            stored(&conn, now - 10_000, "a/1");
        }
        let swept = |after, batch, scan| sweep_rule(&conn, &rule, after, batch, scan).unwrap();
        let resumes = |deleted, after| Swept {
            deleted,
            age_resume_after: Some(after),
        };
        assert_eq!(swept(0, 1, 1_000), resumes(1, 1));
        assert_eq!(swept(1, 100, 1), resumes(1, 2));
        assert_eq!(swept(2, 100, 1_000).deleted, 1);
        assert_eq!(swept(0, 100, 1_000).deleted, 0);
    }

    #[test]
    fn old_messages_of_other_topics_do_not_hide_matching_ones() {
        let (_dir, conn) = document();
        let old = crate::time_fmt::now_ms() - 10_000;
        for _ in 0..5 {
            stored(&conn, old, "other");
        }
        stored(&conn, old, "a/1");
        let rule = RetentionRule {
            topic_filter: "a/#".into(),
            max_age_seconds: Some(5),
            max_messages: None,
        };
        // A scan limit of 3 sees only `other`s; resuming after them reaches `a/1`.
        let first = sweep_rule(&conn, &rule, 0, 100, 3).unwrap();
        assert_eq!(
            first,
            Swept {
                deleted: 0,
                age_resume_after: Some(3)
            }
        );
        // The limit is reached on the last row too: a third pass finds the end.
        let second = sweep_rule(&conn, &rule, 3, 100, 3).unwrap();
        assert_eq!(
            second,
            Swept {
                deleted: 1,
                age_resume_after: Some(6)
            }
        );
        let third = sweep_rule(&conn, &rule, 6, 100, 3).unwrap();
        assert_eq!(
            third,
            Swept {
                deleted: 0,
                age_resume_after: None
            }
        );
    }
}
