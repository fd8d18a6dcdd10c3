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
//! Deletions run in batches of hashes that share a lock stripe: under that stripe's lock, one
//! `service.db` transaction re-checks the condition and removes the rows, then one batch delete
//! removes the objects (S3 `DeleteObjects`; a store without bulk delete deletes them one by one).
//! `complete-upload` moves its object into place and records it under the same lock, refreshing
//! `completed_ms`. So an object completed during a pass (after its start) is never deleted by it.
//!
//! A crash between the rows and the objects leaves files without rows (and a crash inside
//! `complete-upload` can leave staged files without an upload): the orphan sweep
//! ([`sweep_orphans`], the first pass and every [`ORPHAN_SWEEP_EVERY`]th) lists the store and
//! deletes them, under the same locks and re-checks.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::path::Path;
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
    /// Files without a row (objects, staged uploads, parts) removed by the orphan sweep.
    pub orphans: usize,
}

/// Hashes per `service.db` transaction and batch delete (S3's `DeleteObjects` takes 1,000).
const DELETE_BATCH: usize = 1000;

/// The orphan sweep lists the whole store: it runs on the first pass and then every this many.
pub const ORPHAN_SWEEP_EVERY: u64 = 24;

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
    for (stripe, hashes) in by_stripe(candidates) {
        for batch in hashes.chunks(DELETE_BATCH) {
            let _lock = state.blobs.lock_stripe(stripe).await;
            let batch = batch.to_vec();
            let deleted: Vec<(String, i64)> = state
                .service
                .write(move |conn| {
                    let now = crate::time_fmt::now_ms();
                    let mut deleted = Vec::new();
                    let mut delete = conn.prepare_cached(&format!(
                        "DELETE FROM blob_objects AS o WHERE o.hash = ?1 AND {UNREFERENCED}
                         RETURNING size"
                    ))?;
                    let mut unref = conn.prepare_cached("DELETE FROM blob_refs WHERE hash = ?1")?;
                    for hash in batch {
                        let size: Option<i64> = delete
                            .query_row(params![hash, now, cutoff], |r| r.get(0))
                            .optional()?;
                        if let Some(size) = size {
                            unref.execute([&hash])?;
                            deleted.push((hash, size));
                        }
                    }
                    Ok(deleted)
                })
                .await?;
            state
                .blobs
                .delete_many(deleted.iter().map(|(h, _)| Blobs::object_path(h)).collect())
                .await
                .map_err(ApiError::internal)?;
            for (_, size) in deleted {
                report.deleted += 1;
                report.deleted_bytes += size as u64;
                state.metrics.blob_gc_deleted.inc();
                state.metrics.blob_gc_deleted_bytes.inc_by(size as u64);
            }
        }
    }

    // Uploads nobody completed: gone one URL lifetime after their URL expired.
    let ttl_ms =
        i64::try_from(state.config.blob_url_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    let stale_before = started.saturating_sub(ttl_ms);
    let stale: Vec<(String, Option<String>)> = state
        .service
        .read(move |conn| {
            let mut stmt = conn
                .prepare("SELECT blob_id, multipart_id FROM blob_uploads WHERE expires_ms < ?1")?;
            let rows = stmt.query_map([stale_before], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    for (blob_id, multipart_id) in stale {
        super::discard_parts(state, &blob_id, multipart_id.as_deref()).await?;
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
    if state
        .blobs
        .gc_passes
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(ORPHAN_SWEEP_EVERY)
    {
        report.orphans = sweep_orphans(state).await?;
    }
    state.metrics.blob_gc_runs.inc();
    refresh_gauges(state).await;
    Ok(report)
}

/// `hashes` grouped by lock stripe: each group is one batch under one lock.
fn by_stripe(hashes: Vec<String>) -> BTreeMap<usize, Vec<String>> {
    let mut groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for hash in hashes {
        groups.entry(Blobs::stripe(&hash)).or_default().push(hash);
    }
    groups
}

/// Deletes what the store holds without a row: objects with no `blob_objects` row, and staged
/// uploads, parts or half-verified files with no `blob_uploads` row and older than an upload
/// URL's lifetime. Objects are re-checked under their stripe's lock (a complete moves its object
/// into place and records it under that lock). The number of files deleted.
pub async fn sweep_orphans(state: &AppState) -> Result<usize, ApiError> {
    let store = state.blobs.store().clone();
    let ttl_ms =
        i64::try_from(state.config.blob_url_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    let staged_before = crate::time_fmt::now_ms().saturating_sub(ttl_ms);
    let mut deleted = 0;

    // Objects: `objects/{xx}/{hash}`.
    let listed: Vec<String> = store
        .list(Some(&Path::from("objects")))
        .try_filter_map(|meta| async move {
            Ok(meta
                .location
                .filename()
                .filter(|name| super::is_hash(name))
                .map(str::to_owned))
        })
        .try_collect()
        .await
        .map_err(ApiError::internal)?;
    for (stripe, hashes) in by_stripe(listed) {
        for batch in hashes.chunks(DELETE_BATCH) {
            let _lock = state.blobs.lock_stripe(stripe).await;
            let batch = batch.to_vec();
            let orphans: Vec<String> = state
                .service
                .read(move |conn| {
                    let mut known =
                        conn.prepare_cached("SELECT 1 FROM blob_objects WHERE hash = ?1")?;
                    let mut orphans = Vec::new();
                    for hash in batch {
                        if !known.exists([&hash])? {
                            orphans.push(hash);
                        }
                    }
                    Ok(orphans)
                })
                .await?;
            deleted += state
                .blobs
                .delete_many(orphans.iter().map(|h| Blobs::object_path(h)).collect())
                .await
                .map_err(ApiError::internal)?;
        }
    }

    // Staged uploads and parts: `staging/{blob_id}[.{nonce}]`, `parts/{blob_id}/{part}`.
    let mut staged: Vec<(String, Path)> = Vec::new();
    for prefix in ["staging", "parts"] {
        let found: Vec<(String, Path)> = store
            .list(Some(&Path::from(prefix)))
            .try_filter_map(|meta| async move {
                let old = meta.last_modified.timestamp_millis() < staged_before;
                let blob_id = meta
                    .location
                    .parts()
                    .nth(1)
                    .and_then(|p| p.as_ref().get(..35).map(str::to_owned))
                    .filter(|id| super::is_blob_id(id));
                Ok(blob_id.filter(|_| old).map(|id| (id, meta.location)))
            })
            .try_collect()
            .await
            .map_err(ApiError::internal)?;
        staged.extend(found);
    }
    let ids: HashSet<String> = staged.iter().map(|(id, _)| id.clone()).collect();
    let live: HashSet<String> = state
        .service
        .read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT 1 FROM blob_uploads WHERE blob_id = ?1")?;
            let mut live = HashSet::new();
            for id in ids {
                if stmt.exists([&id])? {
                    live.insert(id);
                }
            }
            Ok(live)
        })
        .await?;
    let (orphans, ids): (Vec<Path>, HashSet<String>) = staged
        .into_iter()
        .filter(|(id, _)| !live.contains(id))
        .map(|(id, path)| (path, id))
        .unzip();
    deleted += state
        .blobs
        .delete_many(orphans)
        .await
        .map_err(ApiError::internal)?;
    for id in ids {
        state
            .blobs
            .remove_empty_dir(&Blobs::parts_prefix(&id))
            .await;
    }
    Ok(deleted)
}

/// Longest a file's modification time can trail the clock (a coarse kernel clock tick), in ms.
const FILE_CLOCK_MS: i64 = 50;

/// The latest modification time of a document's file or WAL (Unix ms; `i64::MAX` if unknown,
/// which always counts as changed). An empty WAL does not count: opening a document creates
/// one (a fresh modification time, no change), and a checkpoint that empties it has written the
/// main file. (Counting it made every reopened document look changed, and the rescan then
/// waited a file-clock tick for each one: 50 s for 1,000 documents.)
fn modified_ms(dir: &std::path::Path, db: &str) -> i64 {
    let main = dir.join(format!("{db}.sqlite3"));
    let wal = dir.join(format!("{db}.sqlite3-wal"));
    let wal = std::fs::metadata(wal).ok().filter(|m| m.len() > 0);
    [std::fs::metadata(main).ok(), wal]
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
