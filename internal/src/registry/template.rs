//! New documents are copies of a template: a document database created and migrated once per
//! process, checkpointed into a single file and kept in memory. Creating a document then costs
//! one file write (plus an `fsync`) instead of opening an empty database and running every
//! document migration, dozens of statements and several WAL frames each time.
//!
//! The copy is written to `{file}.creating`, `fsync`ed and renamed into place, so a crash leaves
//! either no document or a whole one, never a torn file. With `synchronous = FULL`
//! the directory is `fsync`ed too, so the new document's name is as durable as its commits.
//! The opener then finds every migration applied and runs none (`_patchwork_migrations` keeps
//! the template's `applied_at` times).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::config::Synchronous;
use crate::migrations::Schema;
use crate::sqlite::{self, OpenOptions};

/// The template's bytes, built on first use (`None` until then; rebuilt after a failure).
static TEMPLATE: Mutex<Option<Arc<[u8]>>> = Mutex::new(None);

/// Writes a fresh, fully migrated document database at `path` (which must not exist).
pub fn materialize(path: &Path, opts: OpenOptions) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("a document path has a directory"))?;
    let bytes = template(dir, opts)?;
    let mut staging = path.as_os_str().to_owned();
    staging.push(".creating");
    let staging = std::path::PathBuf::from(staging);
    let written = (|| {
        let mut file = std::fs::File::create(&staging)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        // Never over an existing document (another opener cannot race this one: the registry
        // opens each document once, but a file put there by hand must not be replaced).
        if path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the document appeared while it was being created",
            ));
        }
        std::fs::rename(&staging, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    written?;
    if opts.synchronous == Synchronous::Full {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The template, built in `dir` (the documents' own file system) the first time.
fn template(dir: &Path, opts: OpenOptions) -> std::io::Result<Arc<[u8]>> {
    let mut slot = TEMPLATE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(bytes) = slot.as_ref() {
        return Ok(bytes.clone());
    }
    let path = dir.join(format!(".template-{}.sqlite3", std::process::id()));
    let built = build(&path, opts);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(p));
    }
    let bytes: Arc<[u8]> = built?.into();
    *slot = Some(bytes.clone());
    Ok(bytes)
}

/// Creates and migrates a document at `path`, checkpoints it into the main file, closes it and
/// returns the file's bytes.
fn build(path: &Path, opts: OpenOptions) -> std::io::Result<Vec<u8>> {
    let _ = std::fs::remove_file(path);
    let conn = sqlite::open(path, Schema::Document, opts).map_err(std::io::Error::other)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(std::io::Error::other)?;
    conn.close().map_err(|(_, e)| std::io::Error::other(e))?;
    std::fs::read(path)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn opts() -> OpenOptions {
        OpenOptions {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            max_value_bytes: 1 << 20,
            wal_autocheckpoint: sqlite::DEFAULT_WAL_AUTOCHECKPOINT,
        }
    }

    #[test]
    fn a_document_from_the_template_is_a_migrated_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sqlite3");
        materialize(&path, opts()).unwrap();
        assert!(!dir.path().join("d.sqlite3.creating").exists());
        // No template files left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["d.sqlite3"]);
        let conn = sqlite::open(&path, Schema::Document, opts()).unwrap();
        let (found, latest) = (
            crate::migrations::current_version(&conn).unwrap(),
            Schema::Document.latest(),
        );
        assert_eq!(found, latest);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let vacuum: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        assert_eq!(vacuum, 2, "incremental");
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        // An existing file is never replaced.
        assert!(materialize(&path, opts()).is_err());
    }
}
