//! WAL checkpoints off the document's thread.
//!
//! A commit appends to the document's `-wal` file; a checkpoint copies the WAL's pages into the
//! database file (an fsync of the WAL before, one of the file after), and once every frame is
//! copied the next write starts the WAL over from its beginning. SQLite's own autocheckpoint
//! does that inside the commit that crosses `wal_autocheckpoint` pages: on the actor thread,
//! while every writer queued behind that commit waits for the copy and both fsyncs. Measured
//! with 16 unpipelined WebSocket publishers on one document: ~35k publishes/s with the
//! autocheckpoint at 4,000 pages, ~47k with no checkpoints at all.
//!
//! So a document's connection runs no autocheckpoint. Its WAL hook notes the WAL's size after
//! each commit ([`install`]); past the threshold, the actor hands the copy to a short-lived
//! thread with a connection of its own. That checkpoint is `PASSIVE`: it never blocks the
//! writer, which goes on appending, and so it cannot finish the job under load. When it is
//! done, the actor copies the few frames written meanwhile itself, between two batches where
//! nothing can be appended, and the next write starts the WAL over: it stays bounded. (SQLite's
//! documentation suggests this: turn the automatic checkpoints off and run them "in a separate
//! thread or process".)
//!
//! The actor finishes only once the WAL holds about twice the threshold (background passes
//! keep up meanwhile), so the finishing stall (two fsyncs, ~4 ms here) comes half as often.
//! When no background thread can run (at most [`MAX_RUNNING`] passes at once, for at most
//! [`MAX_DOCUMENTS`] documents, or the last one failed), the actor checkpoints inline, as
//! SQLite would have.

use std::cell::Cell;
use std::ffi::c_int;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

use crate::ops::metrics::{Metrics, ReasonLabel};
use crate::sqlite::{self, OpenOptions};

/// Background checkpoints running at once, across documents (each is mostly disk I/O).
const MAX_RUNNING: usize = 4;
static RUNNING: Slots = Slots::new(MAX_RUNNING);

/// Documents checkpointing in the background at once. A background connection's database
/// descriptor outlives it: the document's own connection holds a lock on the file, and closing
/// a descriptor would drop the process's locks, so SQLite parks it (and the next background
/// connection takes it again) until the document's connection closes. So each such document
/// holds a fourth descriptor; past this many, documents checkpoint on their own thread.
const MAX_DOCUMENTS: usize = 32;
static DOCUMENTS: Slots = Slots::new(MAX_DOCUMENTS);

/// Descriptors background checkpoints may hold at once: one parked per document, and a WAL
/// and a database descriptor per running pass. Part of the reserve in `state.rs`.
pub const DESCRIPTORS: u64 = (MAX_DOCUMENTS + 2 * MAX_RUNNING) as u64;

/// A count bounded across documents.
struct Slots {
    used: AtomicUsize,
    max: usize,
}

/// One slot of [`Slots`], given back when dropped (also when a thread holding it unwinds).
struct Slot(&'static Slots);

impl Slots {
    const fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
        }
    }

    fn take(&'static self) -> Option<Slot> {
        if self.used.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

thread_local! {
    /// Frames in the WAL after the last commit on this thread; 0 once read. A document's
    /// commits all run on its actor's thread, which serves no other connection.
    static WAL_FRAMES: Cell<c_int> = const { Cell::new(0) };
}

fn note_frames(_wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(frames));
    Ok(())
}

/// Replaces SQLite's autocheckpoint on a document connection with the WAL hook that
/// [`Checkpoints::after_command`] reads.
pub(crate) fn install(conn: &Connection) {
    conn.wal_hook(Some(note_frames));
}

/// A background checkpoint: the WAL generation it works on and, when it ends, the frames it
/// copied (or why it failed).
type Running = (u64, JoinHandle<Result<i64, String>>);

/// One document's checkpoints, driven by its actor. With `T` the threshold
/// (`wal_autocheckpoint_pages`): a background pass starts when at least `T/2` frames (`T` at
/// first) are not yet copied and the WAL grew by `T/2` since the last one started (a reader
/// holding an old snapshot stops passes from getting anywhere; they are not started again for
/// every commit meanwhile); the actor finishes once the WAL holds `2T` frames and at most
/// `T/4` are left to copy (or `4T`, whatever is left); past `4T` it waits for a background pass
/// still running (a disk slower than the writer: backpressure, as SQLite's own checkpoint).
pub(crate) struct Checkpoints {
    path: PathBuf,
    opts: OpenOptions,
    threshold: i64,
    /// WAL frames after the previous commit: a smaller figure means the WAL started over.
    last_frames: i64,
    /// Counts the times the WAL started over, so that a pass over an earlier WAL is ignored.
    generation: u64,
    /// Frames of this WAL known to be copied into the database file.
    copied: i64,
    /// WAL size at which the actor finishes next (`2T`; further on after a finish that could
    /// not let the WAL start over because an older reader still needs its frames).
    finish_at: i64,
    /// WAL size at which the last background pass started.
    spawned_at: i64,
    running: Option<Running>,
    /// This document's place among [`MAX_DOCUMENTS`], held until its connection closes.
    descriptor: Option<Slot>,
}

impl Checkpoints {
    pub(crate) fn new(path: PathBuf, opts: OpenOptions) -> Self {
        let threshold = i64::from(opts.wal_autocheckpoint);
        Self {
            path,
            opts,
            threshold,
            last_frames: 0,
            generation: 0,
            copied: 0,
            finish_at: 2 * threshold,
            spawned_at: 0,
            running: None,
            descriptor: None,
        }
    }

    /// After each command on the actor thread, once its callers have their answers.
    pub(crate) fn after_command(&mut self, conn: &Connection, metrics: &Metrics) {
        let frames = i64::from(WAL_FRAMES.with(|f| f.replace(0)));
        if frames == 0 {
            return;
        }
        let t = self.threshold;
        if frames < self.last_frames {
            // The WAL started over.
            self.generation += 1;
            self.copied = 0;
            self.finish_at = 2 * t;
            self.spawned_at = 0;
        }
        self.last_frames = frames;
        if frames < t {
            return;
        }
        if let Some((_, handle)) = &self.running
            && !handle.is_finished()
            && frames < 4 * t
        {
            return;
        }
        if let Some(failed) = self.collect() {
            tracing::warn!(error = failed, path = %self.path.display(),
                "background WAL checkpoint failed; checkpointing on the document's thread");
            return self.inline(conn, metrics, "inline");
        }
        let behind = frames - self.copied;
        if frames >= self.finish_at && (behind <= t / 4 || frames >= 4 * t) {
            // Only the newest frames are left: copy them here, where no commit can land in
            // between, so that the next write starts the WAL over.
            self.inline(conn, metrics, "finish");
        } else if behind >= t / 2 && frames >= self.spawned_at + t / 2 {
            if self.spawn() {
                metrics
                    .wal_checkpoints
                    .get_or_create(&ReasonLabel {
                        reason: "background",
                    })
                    .inc();
            } else {
                self.inline(conn, metrics, "inline");
            }
        }
    }

    /// Waits for the background pass, if one ran, and takes its result: `Some(error)` if it
    /// failed on the current WAL.
    fn collect(&mut self) -> Option<String> {
        let (generation, handle) = self.running.take()?;
        let result = handle
            .join()
            .unwrap_or_else(|_| Err("the checkpoint thread panicked".to_owned()));
        if generation != self.generation {
            return None;
        }
        match result {
            Ok(copied) => {
                self.copied = self.copied.max(copied);
                None
            }
            Err(e) => Some(e),
        }
    }

    /// Before the document's connection closes: waits for a background checkpoint still
    /// running, so that the document's own close is the last one (it truncates the WAL and
    /// closes the parked descriptor), and gives back the document's descriptor slot.
    pub(crate) fn before_close(&mut self) {
        let _ = self.collect();
        self.descriptor = None;
    }

    fn inline(&mut self, conn: &Connection, metrics: &Metrics, reason: &'static str) {
        metrics
            .wal_checkpoints
            .get_or_create(&ReasonLabel { reason })
            .inc();
        match passive(conn) {
            Ok((_, copied)) => self.copied = copied,
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "WAL checkpoint failed")
            }
        }
        // Unless the WAL starts over with the next write, try again a quarter further on.
        self.finish_at = self.last_frames + self.threshold / 4;
    }

    /// Starts a background pass; `false` if none can run now.
    fn spawn(&mut self) -> bool {
        if self.descriptor.is_none() {
            self.descriptor = DOCUMENTS.take();
        }
        if self.descriptor.is_none() {
            return false;
        }
        let Some(running) = RUNNING.take() else {
            return false;
        };
        let (path, opts) = (self.path.clone(), self.opts);
        let started = std::thread::Builder::new()
            .name("pw-checkpoint".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _running = running;
                lower_priority();
                background(&path, opts).map_err(|e| e.to_string())
            });
        match started {
            Ok(handle) => {
                self.running = Some((self.generation, handle));
                self.spawned_at = self.last_frames;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not start a checkpoint thread");
                false
            }
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.before_close();
    }
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: frames in the WAL and frames copied.
fn passive(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

/// The background thread's work: one passive checkpoint on a connection of its own; the
/// frames it copied.
fn background(path: &std::path::Path, opts: OpenOptions) -> rusqlite::Result<i64> {
    let conn = sqlite::open_checkpointer(path, opts)?;
    Ok(passive(&conn)?.1)
}

/// Runs the copy only on CPU nobody else wants (`SCHED_IDLE`): a writer's thread or a runtime
/// thread that wakes up takes the core at once. With 16 publishers on 2 cores, a normal (or even
/// `nice 10`) checkpoint thread doubled the p99 ack, one at `SCHED_IDLE` kept it within ~0.2 ms.
/// It cannot starve the WAL: past four thresholds the actor waits for it, which frees a core.
#[allow(unsafe_code)]
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: with pid 0, sched_setscheduler changes the calling thread's policy on Linux
        // (threads are tasks); `param` is a valid sched_param for the call's duration.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::debug!("could not lower the checkpoint thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use crate::migrations::Schema;

    fn options() -> OpenOptions {
        OpenOptions {
            synchronous: Synchronous::Normal,
            busy_timeout: std::time::Duration::from_secs(5),
            max_value_bytes: 1 << 20,
            wal_autocheckpoint: 100,
        }
    }

    fn count(metrics: &Metrics, reason: &'static str) -> u64 {
        metrics
            .wal_checkpoints
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// A reader holding an old snapshot (a backup, a sync snapshot) keeps every checkpoint from
    /// getting past it: the WAL grows, as with SQLite's own checkpoints, but background passes
    /// are not started again for every commit meanwhile. Once the reader is done, the WAL starts
    /// over and stays bounded again.
    #[test]
    fn a_long_reader_does_not_start_a_pass_per_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.sqlite3");
        let conn = sqlite::open(&path, Schema::Document, options()).unwrap();
        install(&conn);
        conn.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        let reader = Connection::open(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .unwrap();
        let metrics = Metrics::new();
        let mut checkpoints = Checkpoints::new(path.clone(), options());
        let commits = 1_000;
        for _ in 0..commits {
            conn.execute("INSERT INTO t VALUES (randomblob(3000))", [])
                .unwrap();
            checkpoints.after_command(&conn, &metrics);
        }
        let passes = count(&metrics, "background") + count(&metrics, "inline");
        let grown = checkpoints.last_frames;
        assert!(
            grown > 1_000,
            "the WAL could not start over: {grown} frames"
        );
        // One pass per 50 frames of growth at most, and a finish per 25 past 4 × 100.
        assert!(
            passes + count(&metrics, "finish") <= (grown / 50 + grown / 25 + 4) as u64,
            "{passes} passes for {grown} frames: {}",
            metrics.render()
        );
        reader.execute_batch("COMMIT").unwrap();
        drop(reader);
        for _ in 0..commits {
            conn.execute("INSERT INTO t VALUES (randomblob(3000))", [])
                .unwrap();
            checkpoints.after_command(&conn, &metrics);
        }
        assert!(
            checkpoints.last_frames <= 4 * 100 + 20,
            "the WAL did not start over: {} frames",
            checkpoints.last_frames
        );
        checkpoints.before_close();
    }

    /// A background checkpoint that cannot open its connection (here: pointed at a file that
    /// does not exist) leaves the work to the actor: the WAL is still checkpointed and starts
    /// over, on the actor's thread.
    #[test]
    fn a_failing_background_checkpoint_falls_back_to_the_actor() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options();
        let path = dir.path().join("doc.sqlite3");
        let conn = sqlite::open(&path, Schema::Document, opts).unwrap();
        install(&conn);
        conn.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        let metrics = Metrics::new();
        let mut checkpoints = Checkpoints::new(dir.path().join("missing.sqlite3"), opts);
        let mut largest = 0;
        for _ in 0..600 {
            conn.execute("INSERT INTO t VALUES (randomblob(3000))", [])
                .unwrap();
            checkpoints.after_command(&conn, &metrics);
            largest = largest.max(checkpoints.last_frames);
        }
        assert!(count(&metrics, "inline") >= 3, "{}", metrics.render());
        assert_eq!(count(&metrics, "finish"), 0);
        assert!(largest <= 4 * 100 + 20, "the WAL reached {largest} frames");
    }
}
