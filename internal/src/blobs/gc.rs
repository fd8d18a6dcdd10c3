//! Blob GC, every `blob_gc_interval_secs`.
//!
//! An object is deleted when no document keeps, claims (unexpired) or publishes it, no
//! unexpired upload is writing its hash, and it was completed more than `blob_gc_grace_secs`
//! before the pass started. References come from `service.db`'s `blob_refs` index, maintained
//! by every API call that adds or drops a reference (so no document is opened).
//!
//! Rows written into a document's `blobs` table by SQL (not through `keep`) reach the index by
//! an incremental rescan ([`rescan_changed`]) at the start of each pass: a document whose files
//! changed since its last scan (or never scanned) has its `blobs` rows added to the index; the
//! others are not opened. The rescan only adds (a row SQL deleted keeps its object until a
//! route drops the reference: a leak, never a loss).
//!
//! Each deletion runs under the hash's lock and re-checks the condition in the same
//! `service.db` transaction that removes the row; `complete-upload` moves its object into place
//! and records it under the same lock, refreshing `completed_ms`. So an object completed during
//! a pass (after its start) is never deleted by it.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::Blobs;
use crate::error::ApiError;
use crate::state::AppState;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub candidates: usize,
    pub deleted: usize,
    pub deleted_bytes: u64,
    /// Uploads past their URL's expiry by more than another URL lifetime, removed with their
    /// staged bytes.
    pub stale_uploads: usize,
    /// Documents whose `blobs` table was read into the index this pass.
    pub rescanned: usize,
}

/// The condition for deleting object `o`, with `?2` = now (ms) and `?3` = the pass's cutoff (ms).
const UNREFERENCED: &str = "o.completed_ms < ?3
    AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.hash = o.hash
                    AND (r.kept = 1 OR r.published = 1 OR r.claimed_until_ms > ?2))
    AND NOT EXISTS (SELECT 1 FROM blob_uploads u WHERE u.hash = o.hash AND u.expires_ms > ?2)";

pub async fn sweeper(state: AppState, period: Duration) {
    refresh_gauges(&state).await;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        match run_once(&state).await {
            Ok(report) => tracing::info!(?report, "blob GC pass"),
            Err(e) => tracing::warn!(error = %e.message, "blob GC pass failed"),
        }
    }
}

/// Sets the object and byte gauges from `service.db`.
pub async fn refresh_gauges(state: &AppState) {
    let counted = state
        .service
        .read(|conn| {
            Ok(conn.query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM blob_objects",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )?)
        })
        .await;
    match counted {
        Ok((objects, bytes)) => {
            state.metrics.blob_objects.set(objects);
            state.metrics.blob_bytes.set(bytes);
        }
        Err(e) => tracing::warn!(error = %e, "counting blob objects failed"),
    }
}

/// One GC pass.
pub async fn run_once(state: &AppState) -> Result<GcReport, ApiError> {
    let started = crate::time_fmt::now_ms();
    let grace_ms =
        i64::try_from(state.config.blob_gc_grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    let cutoff = started.saturating_sub(grace_ms);
    let mut report = GcReport {
        rescanned: rescan_changed(state).await?,
        ..GcReport::default()
    };

    let candidates: Vec<String> = state
        .service
        .read(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT o.hash FROM blob_objects o WHERE {UNREFERENCED}"
            ))?;
            // `?1` (the hash) is unused here.
            let rows = stmt.query_map(params![rusqlite::types::Null, started, cutoff], |r| {
                r.get(0)
            })?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await?;
    report.candidates = candidates.len();
    for hash in candidates {
        let _lock = state.blobs.lock(&hash).await;
        let h = hash.clone();
        let deleted: Option<i64> = state
            .service
            .write(move |conn| {
                let now = crate::time_fmt::now_ms();
                let size: Option<i64> = conn
                    .prepare_cached(&format!(
                        "DELETE FROM blob_objects AS o WHERE o.hash = ?1 AND {UNREFERENCED}
                         RETURNING size"
                    ))?
                    .query_row(params![h, now, cutoff], |r| r.get(0))
                    .optional()?;
                if size.is_some() {
                    conn.execute("DELETE FROM blob_refs WHERE hash = ?1", [&h])?;
                }
                Ok(size)
            })
            .await?;
        let Some(size) = deleted else { continue };
        state
            .blobs
            .delete(&Blobs::object_path(&hash))
            .await
            .map_err(ApiError::internal)?;
        report.deleted += 1;
        report.deleted_bytes += size as u64;
        state.metrics.blob_gc_deleted.inc();
        state.metrics.blob_gc_deleted_bytes.inc_by(size as u64);
    }

    // Uploads nobody completed: gone one URL lifetime after their URL expired.
    let ttl_ms =
        i64::try_from(state.config.blob_url_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    let stale_before = started.saturating_sub(ttl_ms);
    let stale: Vec<String> = state
        .service
        .read(move |conn| {
            let mut stmt =
                conn.prepare("SELECT blob_id FROM blob_uploads WHERE expires_ms < ?1")?;
            let rows = stmt.query_map([stale_before], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await?;
    for blob_id in stale {
        state
            .blobs
            .delete(&Blobs::staging_path(&blob_id))
            .await
            .map_err(ApiError::internal)?;
        let id = blob_id.clone();
        state
            .service
            .write(move |conn| {
                conn.execute("DELETE FROM blob_uploads WHERE blob_id = ?1", [id])?;
                Ok(())
            })
            .await?;
        report.stale_uploads += 1;
    }
    // Index rows left by expired claims alone.
    state
        .service
        .write(move |conn| {
            conn.execute(
                "DELETE FROM blob_refs WHERE kept = 0 AND published = 0 AND claimed_until_ms <= ?1",
                [started],
            )?;
            Ok(())
        })
        .await?;
    state.metrics.blob_gc_runs.inc();
    refresh_gauges(state).await;
    Ok(report)
}

/// Longest a file's modification time can trail the clock (a coarse kernel clock tick), in ms.
const FILE_CLOCK_MS: i64 = 50;

/// The latest modification time of a document's file or WAL (Unix ms; `i64::MAX` if unknown,
/// which always counts as changed).
fn modified_ms(dir: &std::path::Path, db: &str) -> i64 {
    let main = dir.join(format!("{db}.sqlite3"));
    let wal = dir.join(format!("{db}.sqlite3-wal"));
    [std::fs::metadata(main).ok(), std::fs::metadata(wal).ok()]
        .into_iter()
        .flatten()
        .filter_map(|m| m.modified().ok())
        .max()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Reads the `blobs` rows of every document changed since its last scan into the index.
async fn rescan_changed(state: &AppState) -> Result<usize, ApiError> {
    let dir = state.registry.documents_dir().to_owned();
    // (db_id, last modification of its file or WAL, Unix ms)
    let docs = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<(String, i64)>> {
        let mut docs = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".sqlite3"))
                .filter(|n| crate::registry::DbId::parse(n).is_ok())
            else {
                continue;
            };
            docs.push((id.to_owned(), modified_ms(&dir, id)));
        }
        Ok(docs)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let scanned: std::collections::HashMap<String, i64> = state
        .service
        .read(|conn| {
            let mut stmt = conn.prepare("SELECT db_id, scanned_ms FROM blob_scans")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await?;
    let mut count = 0;
    for (db, modified) in docs {
        // Unchanged since the scan: its files carry the time stamp the scan saw.
        if scanned.get(&db) == Some(&modified) {
            continue;
        }
        let Ok(id) = crate::registry::DbId::parse(&db) else {
            continue;
        };
        // Opening a document may itself write its WAL: its file times are read after the open,
        // and only once they are older than a file-clock tick (so any write after this read
        // gets a later stamp); the scan is recorded under those times.
        let doc = state.registry.get(&id).await?;
        let docs_dir = state.registry.documents_dir().to_owned();
        let name = db.clone();
        let seen = tokio::task::spawn_blocking(move || {
            let mut seen = modified_ms(&docs_dir, &name);
            if crate::time_fmt::now_ms().saturating_sub(seen) < FILE_CLOCK_MS {
                std::thread::sleep(Duration::from_millis(FILE_CLOCK_MS as u64));
                seen = modified_ms(&docs_dir, &name);
            }
            seen
        })
        .await
        .map_err(ApiError::internal)?;
        let hashes: Vec<String> = doc
            .read(|conn| {
                let mut stmt = conn.prepare_cached("SELECT hash FROM blobs")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        state
            .service
            .write(move |conn| {
                for hash in hashes.iter().filter(|h| super::is_hash(h)) {
                    super::index_add(
                        conn,
                        hash,
                        &db,
                        super::DocRef {
                            kept: true,
                            ..Default::default()
                        },
                    )?;
                }
                conn.execute(
                    "INSERT INTO blob_scans (db_id, scanned_ms) VALUES (?1, ?2)
                     ON CONFLICT (db_id) DO UPDATE SET scanned_ms = ?2",
                    params![db, seen],
                )?;
                Ok(())
            })
            .await?;
        count += 1;
    }
    Ok(count)
}
