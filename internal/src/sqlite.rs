//! Opening a SQLite connection the way every Patchwork database is opened.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags};

use crate::config::Synchronous;
use crate::migrations::{self, MigrationError, Schema};

/// Connection settings shared by documents and the service database.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    pub synchronous: Synchronous,
    pub busy_timeout: Duration,
    /// Largest string or blob a statement may make (`SQLITE_LIMIT_LENGTH`), so that
    /// `randomblob(999999999)` fails instead of allocating a gigabyte.
    pub max_value_bytes: usize,
    /// WAL pages past which the WAL is checkpointed: SQLite's `wal_autocheckpoint`, replaced for a
    /// document by its background checkpoints' threshold; see `Config::wal_autocheckpoint_pages`.
    pub wal_autocheckpoint: u32,
}

/// SQLite's own default `wal_autocheckpoint`, for connections that are not a served document.
pub const DEFAULT_WAL_AUTOCHECKPOINT: u32 = 1_000;

/// Opens (creating if needed) the database at `path`, sets the PRAGMAs (WAL, `synchronous`,
/// `busy_timeout`, `foreign_keys`), the value size limit and defensive mode, and applies
/// `schema`'s migrations.
pub fn open(path: &Path, schema: Schema, opts: OpenOptions) -> Result<Connection, MigrationError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    small_lookaside(&conn);
    persist_wal(&conn);
    conn.busy_timeout(opts.busy_timeout)?;
    // Only takes effect while the file is still empty (new databases): freed pages can then be
    // returned to the file system with `PRAGMA incremental_vacuum` (message retention). Set only
    // then: on an existing database the assignment still rewrites the header page, so every
    // open wrote a WAL frame and every close had to checkpoint it (four fsyncs per
    // open/close cycle, and every reopened document looked changed to blob GC's rescan).
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    if pages == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    // Deleted content is overwritten in place, so expired messages do not linger in free pages.
    conn.pragma_update(None, "secure_delete", "FAST")?;
    // journal_mode returns a row; pragma_update_and_check reads it.
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "WAL is not available for this database");
    }
    conn.pragma_update(None, "synchronous", opts.synchronous.pragma_value())?;
    // With the WAL kept (`persist_wal`), this truncates it to zero bytes at close; while open, a
    // WAL that a checkpoint has reset is cut back to 64 MiB instead of keeping its peak size.
    // (Never below four thresholds' worth of WAL, the most a document's WAL holds before it
    // starts over (`registry/checkpoint.rs`), or every restart would cut it back only for the
    // next commits to grow it again.)
    conn.pragma_update(None, "journal_size_limit", wal_size_limit(opts))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // The default (1,000 pages) checkpointed a busy document dozens of times a second, each an
    // fsync on the committing thread while its writers waited: with 16 unpipelined publishers,
    // 4,000 pages cut the p99 ack from ~4.5 ms to ~1 ms (loadtests/README.md, "WAL checkpoints
    // off the hot path"). A document's actor then replaces this autocheckpoint with checkpoints
    // on another thread (`registry/checkpoint.rs`).
    conn.pragma_update(None, "wal_autocheckpoint", opts.wal_autocheckpoint)?;
    // Defensive mode: no schema corruption through `writable_schema`, no writes to virtual
    // tables' shadow tables, no `journal_mode=OFF`, whatever a statement manages to prepare.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    let max_value = i32::try_from(opts.max_value_bytes).unwrap_or(i32::MAX);
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, max_value)?;
    conn.set_prepared_statement_cache_capacity(64);
    migrations::apply(&conn, schema)?;
    Ok(conn)
}

/// Process-wide SQLite settings; call once, before any SQLite call on any thread (SQLite's
/// configuration is not thread-safe). Turns off SQLite's memory statistics: nothing reads them,
/// and keeping them takes one process-wide mutex around every SQLite allocation of every
/// document, a mutex that a checkpoint thread at idle priority (`registry/checkpoint.rs`) could
/// hold while preempted, stalling every document behind it.
#[allow(unsafe_code)]
pub fn configure_process() {
    // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int; the caller runs this before any other
    // SQLite call (after one, SQLite answers SQLITE_MISUSE and changes nothing).
    let rc = unsafe {
        rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int)
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "could not turn SQLite's memory statistics off");
    }
}

/// `journal_size_limit` in bytes for a connection opened with `opts`.
fn wal_size_limit(opts: OpenOptions) -> i64 {
    (64i64 << 20).max(i64::from(opts.wal_autocheckpoint) * 4096 * 4)
}

/// A second connection to an existing database, for copying its WAL into the file from a
/// thread other than the one that writes it (see `registry::checkpoint`). It creates nothing
/// and runs no migrations; it keeps the WAL files and truncates the WAL as [`open`]'s
/// connection does, so if it happens to be the last connection to close, it leaves the files
/// the way the document's own close would have.
pub fn open_checkpointer(path: &Path, opts: OpenOptions) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    small_lookaside(&conn);
    persist_wal(&conn);
    conn.pragma_update(None, "synchronous", opts.synchronous.pragma_value())?;
    conn.pragma_update(None, "journal_size_limit", wal_size_limit(opts))?;
    Ok(conn)
}

/// Keeps the `-wal` and `-shm` files when the connection closes (SQLite still checkpoints the
/// WAL and, with `journal_size_limit` set, truncates it to zero bytes). Deleting them at every
/// close made each reopen create two files again: on ext4 the inode allocator then scans past
/// the recently deleted inodes, which was the largest single cost of reopening documents at the
/// open cap (churn). The price is disk: an empty `-wal` and a 32 KB `-shm` per document.
#[allow(unsafe_code)]
fn persist_wal(conn: &Connection) {
    let mut on: std::ffi::c_int = 1;
    // SAFETY: SQLITE_FCNTL_PERSIST_WAL takes a pointer to an int, read and written during the call.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut on).cast(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "could not keep the WAL file");
    }
}

/// Shrinks the connection's lookaside allocator from SQLite's default (100 slots of 1,200 bytes,
/// about 120 KB allocated and touched per connection, the largest part of an idle open
/// document) to 64 slots of 256 bytes. Lookaside serves small allocations while statements are
/// prepared; with the statement cache most requests prepare nothing.
#[allow(unsafe_code)]
fn small_lookaside(conn: &Connection) {
    // SAFETY: called right after the connection opened, before anything used its lookaside
    // memory; a null buffer makes SQLite allocate the slots itself. The variadic arguments are
    // the (void*, int, int) that SQLITE_DBCONFIG_LOOKASIDE takes.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            256 as std::ffi::c_int,
            64 as std::ffi::c_int,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "could not shrink SQLite's lookaside");
    }
}

/// Checkpoints the WAL into the main file and truncates it; called before a connection closes.
pub fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "WAL checkpoint on close failed");
    }
}
