//! The change log, written by the document actor inside each group commit: a session
//! (SQLite's session extension) attached to every user table records the transaction; its
//! changeset is stored under the commit's version in `_patchwork_sync_changes`, in parts no
//! larger than [`PART_BYTES`] (values are capped by `SQLITE_LIMIT_LENGTH`). Old versions are
//! pruned in the same transaction, a bounded batch at a time.

use rusqlite::session::Session;
use rusqlite::{Connection, params};

/// Largest piece of a changeset stored in one row.
pub const PART_BYTES: usize = 512 * 1024;
/// Most old versions deleted by one pruning pass (later passes catch up).
const PRUNE_BATCH: i64 = 256;
/// Versions between pruning passes.
const PRUNE_EVERY: i64 = 32;

/// Whether `table` is part of sync: user tables only (not Patchwork's, not SQLite's).
pub fn synced(table: &str) -> bool {
    !(table.starts_with("_patchwork_") || table.starts_with("sqlite_"))
}

/// A session on every user table, present and future, except tables with a row-expiry rule:
/// a change log keeps every row it saw (a delete records the row's old values too), so an
/// expiring row would outlive its expiry there. Such tables reach sync clients through
/// snapshots only.
pub fn session(conn: &Connection) -> rusqlite::Result<Session<'_>> {
    let expiring: std::collections::HashSet<String> = conn
        .prepare_cached("SELECT lower(table_name) FROM _patchwork_expiry")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut session = Session::new(conn)?;
    if expiring.is_empty() {
        session.table_filter(Some(synced));
    } else {
        session.table_filter(Some(move |table: &str| {
            synced(table) && !expiring.contains(&table.to_ascii_lowercase())
        }));
    }
    session.attach(None::<&str>)?;
    Ok(session)
}

/// Forgets the whole change log (clients resume from a snapshot): what it holds of a table
/// that just got an expiry rule must not outlive the rows.
pub fn forget_all(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM _patchwork_sync_changes", [])?;
    conn.execute(
        "UPDATE _patchwork_meta SET value = (SELECT value FROM _patchwork_meta WHERE key = 'commit_seq')
         WHERE key = 'sync_since'",
        [],
    )?;
    Ok(())
}

/// The transaction's net changes to user tables (empty if none).
pub fn changeset(session: &mut Session<'_>) -> rusqlite::Result<Vec<u8>> {
    let mut changeset = Vec::new();
    if !session.is_empty() {
        session.changeset_strm(&mut changeset)?;
    }
    Ok(changeset)
}

/// The tables a changeset touches. (SQLite's update hook, which tells the actor which tables a
/// commit wrote, is silent for `WITHOUT ROWID` tables; the changeset is not.)
pub fn tables(changeset: &[u8]) -> rusqlite::Result<std::collections::BTreeSet<String>> {
    use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator as _;
    let mut out = std::collections::BTreeSet::new();
    let mut input: &[u8] = changeset;
    let reader: &mut dyn std::io::Read = &mut input;
    let mut iter = rusqlite::session::ChangesetIter::start_strm(&reader)?;
    while let Some(item) = iter.next()? {
        let op = item.op()?;
        if !out.contains(op.table_name()) {
            out.insert(op.table_name().to_owned());
        }
    }
    Ok(out)
}

/// Stores `changeset` under `version` and prunes what retention lets go: versions that are
/// both beyond the newest `keep_versions` and older than `keep_secs`.
pub fn store(
    conn: &Connection,
    changeset: &[u8],
    version: u64,
    now_secs: i64,
    keep_versions: u64,
    keep_secs: u64,
) -> rusqlite::Result<()> {
    if changeset.is_empty() {
        return Ok(());
    }
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    let mut insert = conn.prepare_cached(
        "INSERT INTO _patchwork_sync_changes (version, part, created_at, changeset)
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (part, chunk) in changeset.chunks(PART_BYTES).enumerate() {
        insert.execute(params![version, part as i64, now_secs, chunk])?;
    }
    // Pruning looks every PRUNE_EVERY versions, not at every commit: its query is cheap to run
    // but not to prepare, and a user's DDL empties the statement cache.
    // (A retention shorter than that is honoured at every commit.)
    if version % PRUNE_EVERY == 0 || keep_versions < PRUNE_EVERY as u64 {
        prune(conn, version, now_secs, keep_versions, keep_secs)?;
    }
    Ok(())
}

fn prune(
    conn: &Connection,
    newest: i64,
    now_secs: i64,
    keep_versions: u64,
    keep_secs: u64,
) -> rusqlite::Result<()> {
    let below = newest.saturating_sub(i64::try_from(keep_versions).unwrap_or(i64::MAX));
    let before = now_secs.saturating_sub(i64::try_from(keep_secs).unwrap_or(i64::MAX));
    // The newest prunable version among the oldest batch; everything up to it goes.
    let through: Option<i64> = conn
        .prepare_cached(
            "SELECT max(version) FROM (SELECT DISTINCT version FROM _patchwork_sync_changes
              WHERE version <= ?1 AND created_at < ?2 ORDER BY version LIMIT ?3)",
        )?
        .query_row(params![below, before, PRUNE_BATCH], |r| r.get(0))?;
    let Some(through) = through else {
        return Ok(());
    };
    conn.prepare_cached("DELETE FROM _patchwork_sync_changes WHERE version <= ?1")?
        .execute([through])?;
    conn.prepare_cached(
        "UPDATE _patchwork_meta SET value = max(CAST(value AS INTEGER), ?1) WHERE key = 'sync_since'",
    )?
    .execute([through])?;
    Ok(())
}
