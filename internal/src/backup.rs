//! `patchwork backup` and `patchwork restore`: a data dir copied file by file while the server
//! runs, and put back.
//!
//! Each SQLite file (every document and `service.db`) is copied with SQLite's backup API from a
//! read-only connection holding one read transaction, so each copy is consistent as of one
//! commit (files are not consistent with each other: they are separate databases) and the
//! server's writers are never blocked (WAL). `secret.key` (token hashes and webhook secrets
//! depend on it) and the local blob store, when there is one, are copied as files. Every file
//! is fsynced; `manifest.json`, written last, marks a complete backup. Restore refuses a data
//! dir that already holds data unless forced, copies into temporary names and renames, so an
//! interrupted restore never leaves a half-written database under its real name.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

/// What a backup holds (`manifest.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub created_at: String,
    pub patchwork_version: String,
    pub documents: usize,
    pub bytes: u64,
    pub blobs: usize,
}

/// What a backup or restore did.
#[derive(Debug)]
pub struct Report {
    pub documents: usize,
    pub bytes: u64,
    pub blobs: usize,
    pub elapsed: Duration,
}

const PAGES_PER_STEP: i32 = 4096;

/// Copies the SQLite database `src` into a new file `dst`, consistent as of one commit.
pub fn copy_database(src: &Path, dst: &Path) -> anyhow::Result<u64> {
    let source = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", src.display()))?;
    source.busy_timeout(Duration::from_secs(10))?;
    source.execute_batch("BEGIN")?;
    // Reading establishes the transaction's snapshot before the first page is copied.
    source.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    let tmp = dst.with_extension("sqlite3.partial");
    let _ = fs::remove_file(&tmp);
    {
        let mut copy = Connection::open(&tmp)?;
        {
            let backup = Backup::new(&source, &mut copy)?;
            loop {
                match backup.step(PAGES_PER_STEP)? {
                    StepResult::Done => break,
                    StepResult::More => {}
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        // A standalone file, whatever the source's journal mode.
        copy.pragma_update(None, "journal_mode", "DELETE")?;
    }
    source.execute_batch("COMMIT")?;
    sync_file(&tmp)?;
    fs::rename(&tmp, dst)?;
    Ok(fs::metadata(dst)?.len())
}

fn sync_file(path: &Path) -> std::io::Result<()> {
    fs::File::open(path)?.sync_all()
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    fs::File::open(path)?.sync_all()
}

fn copy_file(src: &Path, dst: &Path) -> anyhow::Result<u64> {
    let tmp = dst.with_extension("partial");
    let n = fs::copy(src, &tmp).with_context(|| format!("copying {}", src.display()))?;
    sync_file(&tmp)?;
    fs::rename(&tmp, dst)?;
    Ok(n)
}

/// The SQLite files of the data dir's documents.
fn documents(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if dir.exists() {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "sqlite3") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Files under the blob store, relative to it (recursively).
fn blob_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if !dir.exists() {
            continue;
        }
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root)?.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Backs the data dir up into `out` (which must not exist or be empty). Works while the
/// server runs.
pub fn backup(data_dir: &Path, out: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<Report> {
    let started = Instant::now();
    if !data_dir.join("service.db").exists() {
        bail!(
            "{} holds no Patchwork data (no service.db)",
            data_dir.display()
        );
    }
    if out.exists() && fs::read_dir(out)?.next().is_some() {
        bail!(
            "{} is not empty; back up into a new directory",
            out.display()
        );
    }
    fs::create_dir_all(out.join("documents"))?;
    let mut bytes = copy_file(&data_dir.join("secret.key"), &out.join("secret.key"))?;
    bytes += copy_database(&data_dir.join("service.db"), &out.join("service.db"))?;
    let docs = documents(&data_dir.join("documents"))?;
    for (i, doc) in docs.iter().enumerate() {
        let name = doc.file_name().unwrap_or_default();
        bytes += copy_database(doc, &out.join("documents").join(name))?;
        if (i + 1) % 100 == 0 {
            progress(&format!("{} of {} documents", i + 1, docs.len()));
        }
    }
    let blobs_root = data_dir.join("blobs");
    let blobs = blob_files(&blobs_root)?;
    for rel in &blobs {
        let dst = out.join("blobs").join(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        bytes += copy_file(&blobs_root.join(rel), &dst)?;
    }
    sync_dir(&out.join("documents"))?;
    let manifest = Manifest {
        created_at: crate::time_fmt::rfc3339(time::OffsetDateTime::now_utc()),
        patchwork_version: env!("CARGO_PKG_VERSION").to_owned(),
        documents: docs.len(),
        bytes,
        blobs: blobs.len(),
    };
    let tmp = out.join("manifest.json.partial");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
    f.sync_all()?;
    fs::rename(&tmp, out.join("manifest.json"))?;
    sync_dir(out)?;
    Ok(Report {
        documents: docs.len(),
        bytes,
        blobs: blobs.len(),
        elapsed: started.elapsed(),
    })
}

/// Restores a backup made by [`backup`] into `data_dir`. The server must be stopped. Refuses a
/// data dir that already holds a `service.db` unless `force` (then its files are replaced).
pub fn restore(
    from: &Path,
    data_dir: &Path,
    force: bool,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(from.join("manifest.json")).with_context(|| {
            format!(
                "{} is not a complete backup (no manifest.json)",
                from.display()
            )
        })?)?;
    if data_dir.join("service.db").exists() && !force {
        bail!(
            "{} already holds Patchwork data; restore into an empty data dir, or pass --force to replace it",
            data_dir.display()
        );
    }
    fs::create_dir_all(data_dir.join("documents"))?;
    let mut bytes = 0;
    // A replaced database must not keep the old one's WAL.
    let place = |src: &Path, dst: &Path| -> anyhow::Result<u64> {
        for suffix in ["-wal", "-shm"] {
            let mut side = dst.as_os_str().to_owned();
            side.push(suffix);
            let _ = fs::remove_file(PathBuf::from(side));
        }
        copy_file(src, dst)
    };
    bytes += copy_file(&from.join("secret.key"), &data_dir.join("secret.key"))?;
    bytes += place(&from.join("service.db"), &data_dir.join("service.db"))?;
    let docs = documents(&from.join("documents"))?;
    if docs.len() != manifest.documents {
        bail!(
            "the backup lists {} documents but holds {}",
            manifest.documents,
            docs.len()
        );
    }
    for (i, doc) in docs.iter().enumerate() {
        let name = doc.file_name().unwrap_or_default();
        bytes += place(doc, &data_dir.join("documents").join(name))?;
        if (i + 1) % 100 == 0 {
            progress(&format!("{} of {} documents", i + 1, docs.len()));
        }
    }
    let blobs = blob_files(&from.join("blobs"))?;
    for rel in &blobs {
        let dst = data_dir.join("blobs").join(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        bytes += copy_file(&from.join("blobs").join(rel), &dst)?;
    }
    sync_dir(&data_dir.join("documents"))?;
    sync_dir(data_dir)?;
    Ok(Report {
        documents: docs.len(),
        bytes,
        blobs: blobs.len(),
        elapsed: started.elapsed(),
    })
}
