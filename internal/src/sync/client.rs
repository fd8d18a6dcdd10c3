//! `patchwork sync`: keeps a local SQLite file in step with a document, both ways.
//!
//! Files beside `FILE` (all written crash-safely):
//!
//! - `FILE.patchwork-base`: the *base*, a copy of the document as of the last sync (what the
//!   server had at the synced version). Local edits are found by diffing `FILE` against it
//!   (`sqlite3session_diff`). It carries its own version in a `_patchwork_sync` table, updated
//!   in the same transaction as its rows: the base is the authority on the synced version.
//! - `FILE.patchwork-sync.json`: `{url, db, version}` for people and scripts (temp + rename).
//! - `FILE.patchwork-lock`: held while a sync runs (one `patchwork sync` per file).
//! - `FILE.patchwork-snapshot`: a snapshot being downloaded or installed (renamed to the base).
//! - `FILE.patchwork-pending.json` / `FILE.patchwork-push.json`: journals of a pull being
//!   applied and a push on its way, so a rerun after a kill finishes them exactly.
//!
//! One sync is: **pull** (`GET changes?since=V&format=changeset`), applied first to `FILE` (one
//! transaction; the policy decides real conflicts with local edits) and then to the base (one
//! transaction, with its version); then **push**: under the local file's write lock, the diff
//! against the base is posted with `Patch-Base-Version` and the policy, and the server's
//! answer (every change since `V`, our own included) is applied to `FILE` with the server
//! winning (it has judged our edits) and to the base. Applying server changes to `FILE` is
//! idempotent (a change whose values are already there is not a conflict), so a sync killed
//! at any point redoes the step on the next run without doubling anything: killed after the
//! local commit and before the base's, the rerun pulls the same changes again; killed after a
//! push and before the answer was applied, the rerun pulls its own edits back as no-ops.
//! `410 version_gone` (or a schema change on the server) takes a fresh snapshot, pushing local
//! edits first and then making `FILE` equal to the snapshot inside one transaction.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use futures_util::StreamExt as _;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator as _;
use rusqlite::hooks::Action;
use rusqlite::session::{ChangesetItem, ChangesetIter, ConflictAction, ConflictType, Session};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

/// How conflicts between local edits and the server's are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Stop and report every conflicting row; nothing is changed.
    #[default]
    Abort,
    /// The server's row is kept (the local edit to it is dropped).
    ServerWins,
    /// The local row is kept and pushed (a row the server deleted stays deleted).
    ClientWins,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Abort => "abort",
            Policy::ServerWins => "server_wins",
            Policy::ClientWins => "client_wins",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "abort" => Ok(Policy::Abort),
            "server_wins" => Ok(Policy::ServerWins),
            "client_wins" => Ok(Policy::ClientWins),
            other => bail!("unknown conflict policy {other:?} (abort, server_wins or client_wins)"),
        }
    }
}

/// What `patchwork sync` was asked to do.
#[derive(Clone)]
pub struct SyncOptions {
    /// The server's base URL, e.g. `http://127.0.0.1:8080` (a trailing `/` is fine).
    pub url: String,
    /// A token with `sync.read` (and `sync.write` to push) on `db`.
    pub token: String,
    /// The document id.
    pub db: String,
    /// The local SQLite file (created by the first sync).
    pub file: PathBuf,
    pub on_conflict: Policy,
    /// Stay live after catching up (SSE), pushing local edits as they are made.
    pub watch: bool,
    /// How often `watch` looks for local edits.
    pub poll_interval: Duration,
    /// Cancelled → `watch` stops (between steps: never half-way through one).
    pub stop: CancellationToken,
}

impl SyncOptions {
    pub fn new(
        url: impl Into<String>,
        token: impl Into<String>,
        db: impl Into<String>,
        file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            db: db.into(),
            file: file.into(),
            on_conflict: Policy::Abort,
            watch: false,
            poll_interval: Duration::from_secs(2),
            stop: CancellationToken::new(),
        }
    }
}

impl std::fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncOptions")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("db", &self.db)
            .field("file", &self.file)
            .field("on_conflict", &self.on_conflict)
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

/// One conflicting row: `op` is the incoming change (`insert`, `update`, `delete`), `kind`
/// SQLite's (`data`, `not_found`, `conflict`, `constraint`, `foreign_key`), `pk` by column name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub table: String,
    pub op: String,
    pub kind: String,
    pub pk: Json,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ({})", self.table, self.pk, self.op, self.kind)
    }
}

/// Returned (inside the `anyhow::Error`) when conflicts stop a sync: nothing was changed on
/// either side by the step that found them.
#[derive(Debug)]
pub struct ConflictError {
    pub message: String,
    pub conflicts: Vec<Conflict>,
}

impl std::fmt::Display for ConflictError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.message)?;
        for c in self.conflicts.iter().take(20) {
            write!(f, "\n  {c}")?;
        }
        if self.conflicts.len() > 20 {
            write!(f, "\n  … and {} more", self.conflicts.len() - 20)?;
        }
        write!(
            f,
            "\nnothing was changed; rerun with --on-conflict server_wins or client_wins to settle them"
        )
    }
}

impl std::error::Error for ConflictError {}

/// The server could not be reached (or answered 5xx): worth retrying.
#[derive(Debug)]
pub struct NetworkError(pub String);

impl std::fmt::Display for NetworkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NetworkError {}

/// What a sync did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// The document version the local file is in step with.
    pub version: i64,
    /// Snapshots taken (the first sync, `410 version_gone`, a schema change).
    pub snapshots: usize,
    /// Row changes received from the server and applied (a push's own changes come back in
    /// its answer and are counted here too).
    pub pulled: usize,
    /// Row changes of the local file the server applied.
    pub pushed: usize,
    /// Conflicts settled by the policy (`server_wins` / `client_wins`).
    pub conflicts: Vec<Conflict>,
    pub warnings: Vec<String>,
}

/// Syncs `opts.file` with the document once (or, with `watch`, until `opts.stop` is
/// cancelled); `progress` gets one line per step.
pub async fn run(
    opts: SyncOptions,
    progress: impl Fn(&str) + Send + Sync,
) -> anyhow::Result<Summary> {
    let mut sync = Syncer::new(opts, &progress)?;
    sync.start().await?;
    sync.cycle().await?;
    if sync.opts.watch {
        sync.watch().await?;
    }
    sync.summary.version = sync.version;
    Ok(sync.summary)
}

// ---------------------------------------------------------------------------------------------
// Test hooks: a simulated kill at a step.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailPoint {
    /// A pull committed to the local file; the base and the JSON state are not updated.
    AfterLocalCommit,
    /// A push was applied by the server; nothing local was updated.
    AfterPush,
}

#[cfg(test)]
pub(crate) static FAIL_AT: Mutex<Vec<(PathBuf, FailPoint)>> = Mutex::new(Vec::new());

/// In tests, an error ("killed") where one was armed for `file` in [`FAIL_AT`].
fn fail_point(file: &Path, point: FailPoint) -> anyhow::Result<()> {
    #[cfg(test)]
    {
        let mut armed = FAIL_AT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = armed.iter().position(|(f, p)| f == file && *p == point) {
            armed.remove(i);
            bail!("simulated crash at {point:?}");
        }
    }
    let _ = (file, point);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Paths and small file helpers.

fn with_suffix(file: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = file.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

struct Paths {
    file: PathBuf,
    base: PathBuf,
    base_tmp: PathBuf,
    state: PathBuf,
    snapshot: PathBuf,
    lock: PathBuf,
    pending: PathBuf,
    pushing: PathBuf,
}

impl Paths {
    fn new(file: &Path) -> Self {
        Self {
            file: file.to_owned(),
            base: with_suffix(file, ".patchwork-base"),
            base_tmp: with_suffix(file, ".patchwork-base.tmp"),
            state: with_suffix(file, ".patchwork-sync.json"),
            snapshot: with_suffix(file, ".patchwork-snapshot"),
            lock: with_suffix(file, ".patchwork-lock"),
            pending: with_suffix(file, ".patchwork-pending.json"),
            pushing: with_suffix(file, ".patchwork-push.json"),
        }
    }
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn fsync_dir(path: &Path) {
    // Best effort: directories cannot be opened for sync everywhere.
    if let Ok(dir) = std::fs::File::open(dir_of(path)) {
        let _ = dir.sync_all();
    }
}

fn fsync_file(path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot fsync {}", path.display()))
}

/// `from` renamed onto `to` (atomic), then the directory synced.
fn install(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))?;
    fsync_dir(to);
    Ok(())
}

/// Every SQLite side file of `path` (journal, WAL) removed along with it.
fn remove_db(path: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(path, suffix));
    }
}

#[derive(Serialize, Deserialize)]
struct StateJson {
    url: String,
    db: String,
    version: i64,
}

/// A pull being applied: written before the local file's commit, removed once the base and
/// the JSON state have it. A rerun that finds it (and the base still at `from`) applies the
/// very same changes again: to the local file (where they are no-ops if already there) and to
/// the base.
#[derive(Serialize, Deserialize)]
struct PendingPull {
    from: i64,
    to: i64,
    after_push: bool,
    changeset_base64: String,
}

/// A push on its way: written before the POST, removed once its answer is applied (or it is
/// refused). A rerun that finds it (the base still at `base`, the local edits unchanged) knows
/// the server may already have them.
#[derive(Serialize, Deserialize)]
struct PendingPush {
    base: i64,
    changeset_base64: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> anyhow::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("unreadable base64")
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let body = serde_json::to_vec_pretty(value)?;
    {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    install(&tmp, path)
}

fn write_state_json(path: &Path, state: &StateJson) -> anyhow::Result<()> {
    write_json(path, state)
}

// ---------------------------------------------------------------------------------------------
// SQLite helpers (all synchronous and short).

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn open(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // The server's changes already hold what its triggers did: firing the copy's triggers
    // again would do it twice, and those calling Patchwork's SQL functions
    // (`patchwork_caller()`) cannot run outside the server at all.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )?;
    Ok(conn)
}

/// The local file with the base attached as `base` (and `extra` as `snap`).
fn open_local(paths: &Paths, extra: Option<&Path>) -> anyhow::Result<Connection> {
    let conn = open(&paths.file)?;
    conn.execute("ATTACH DATABASE ?1 AS base", [path_str(&paths.base)?])?;
    if let Some(extra) = extra {
        conn.execute("ATTACH DATABASE ?1 AS snap", [path_str(extra)?])?;
    }
    Ok(conn)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", p.display()))
}

/// Whether a table is one sync covers.
fn synced(table: &str) -> bool {
    super::log::synced(table)
}

/// `(table, has_primary_key)` of the user tables in `schema`.
fn user_tables(conn: &Connection, schema: &str) -> rusqlite::Result<Vec<(String, bool)>> {
    let sql = format!(
        "SELECT s.name, EXISTS (SELECT 1 FROM pragma_table_info(s.name, ?1) AS c WHERE c.pk > 0)
           FROM {}.sqlite_schema AS s WHERE s.type = 'table' ORDER BY s.name",
        quote(schema)
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([schema], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (name, pk): (String, bool) = row?;
        if synced(&name) {
            out.push((name, pk));
        }
    }
    Ok(out)
}

fn columns(conn: &Connection, schema: &str, table: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT name FROM pragma_table_info(?1, ?2) ORDER BY cid")?
        .query_map([table, schema], |r| r.get(0))?
        .collect()
}

/// The changes turning `from` into `main` (every user table with a primary key that both
/// have); warnings for the tables it cannot cover.
fn diff(conn: &Connection, from: &str) -> anyhow::Result<(Vec<u8>, Vec<String>)> {
    let mut warnings = Vec::new();
    let theirs: HashSet<String> = user_tables(conn, from)?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let mut session = Session::new(conn)?;
    for (table, has_pk) in user_tables(conn, "main")? {
        if !has_pk {
            warnings.push(format!(
                "table {table} has no primary key: its local edits cannot be synced"
            ));
            continue;
        }
        if !theirs.contains(&table) {
            warnings.push(format!(
                "table {table} exists only in the local file: schema changes are not synced"
            ));
            continue;
        }
        session.attach(Some(table.as_str()))?;
        if let Err(e) = session.diff::<&str, &str>(from, &table) {
            warnings.push(format!(
                "table {table} cannot be compared with the last synced state ({e}): its local edits are not synced"
            ));
        }
    }
    let mut out = Vec::new();
    if !session.is_empty() {
        session.changeset_strm(&mut out)?;
    }
    Ok((out, warnings))
}

fn count_changes(cs: &[u8]) -> usize {
    let mut input: &[u8] = cs;
    let reader: &mut dyn Read = &mut input;
    let Ok(mut iter) = ChangesetIter::start_strm(&reader) else {
        return 0;
    };
    let mut n = 0;
    while let Ok(Some(_)) = iter.next() {
        n += 1;
    }
    n
}

/// Why `cs` cannot be applied to `schema` (a table it lacks, or another column count): the
/// server's schema changed, so a snapshot is needed.
fn incompatible(conn: &Connection, schema: &str, cs: &[u8]) -> anyhow::Result<Option<String>> {
    let mut input: &[u8] = cs;
    let reader: &mut dyn Read = &mut input;
    let mut iter = ChangesetIter::start_strm(&reader)?;
    let mut seen = HashSet::new();
    while let Some(item) = iter.next()? {
        let op = item.op()?;
        let table = op.table_name();
        if seen.contains(table) {
            continue;
        }
        let ncols = usize::try_from(op.number_of_columns()).unwrap_or(0);
        let have = columns(conn, schema, table)?.len();
        if have == 0 {
            return Ok(Some(format!("the server has a new table {table}")));
        }
        if have != ncols {
            return Ok(Some(format!("table {table} changed on the server")));
        }
        seen.insert(table.to_owned());
    }
    Ok(None)
}

/// A conflicting row as SQLite reports it (columns by position until named).
struct RawConflict {
    table: String,
    op: &'static str,
    kind: &'static str,
    pk: Vec<(usize, Value)>,
}

fn kind_name(t: &ConflictType) -> &'static str {
    match t {
        ConflictType::SQLITE_CHANGESET_DATA => "data",
        ConflictType::SQLITE_CHANGESET_NOTFOUND => "not_found",
        ConflictType::SQLITE_CHANGESET_CONFLICT => "conflict",
        ConflictType::SQLITE_CHANGESET_CONSTRAINT => "constraint",
        ConflictType::SQLITE_CHANGESET_FOREIGN_KEY => "foreign_key",
        _ => "unknown",
    }
}

fn raw_conflict(t: &ConflictType, item: &ChangesetItem) -> RawConflict {
    let (table, code) = match item.op() {
        Ok(op) => (op.table_name().to_owned(), op.code()),
        Err(_) => (String::new(), Action::UNKNOWN),
    };
    let op = match code {
        Action::SQLITE_INSERT => "insert",
        Action::SQLITE_DELETE => "delete",
        _ => "update",
    };
    let mut pk = Vec::new();
    if let Ok(flags) = item.pk() {
        for (i, flag) in flags.iter().enumerate() {
            if *flag == 0 {
                continue;
            }
            let v = if code == Action::SQLITE_INSERT {
                item.new_value(i)
            } else {
                item.old_value(i)
            };
            if let Ok(v) = v {
                pk.push((i, Value::from(v)));
            }
        }
    }
    RawConflict {
        table,
        op,
        kind: kind_name(t),
        pk,
    }
}

fn name_conflict(conn: &Connection, raw: &RawConflict) -> Conflict {
    let cols = columns(conn, "main", &raw.table).unwrap_or_default();
    let mut pk = serde_json::Map::new();
    for (i, v) in &raw.pk {
        let name = cols.get(*i).cloned().unwrap_or_else(|| format!("c{i}"));
        pk.insert(name, crate::query::value::to_json(ValueRef::from(v)));
    }
    Conflict {
        table: raw.table.clone(),
        op: raw.op.to_owned(),
        kind: raw.kind.to_owned(),
        pk: Json::Object(pk),
    }
}

/// Whether the local row already holds every value the incoming change sets (so the
/// "conflict" is the change itself, applied before: our own pushed edit, or a pull redone).
fn already_there(item: &ChangesetItem, ncols: usize) -> bool {
    for i in 0..ncols {
        let Ok(new) = item.new_value(i) else {
            continue; // not set by this change
        };
        match item.conflict(i) {
            Ok(have) if have == new => {}
            _ => return false,
        }
    }
    true
}

#[derive(Default)]
struct ApplyLog {
    /// Real conflicts settled by the policy.
    settled: Vec<RawConflict>,
    /// Real conflicts that stop the sync (`abort`, constraint violations).
    blocking: Vec<RawConflict>,
    /// Rows deleted locally that the server updated and keeps (`server_wins`): restored.
    restore: Vec<RawConflict>,
    foreign_key: bool,
}

/// What applying server changes to the local file did.
struct LocalApply {
    settled: Vec<Conflict>,
    blocking: Vec<Conflict>,
    warnings: Vec<String>,
}

/// Applies the server's `cs` to the local file (`main`, inside the caller's transaction):
/// changes already there are no-ops; real conflicts with local edits go by `policy` (`abort`:
/// collected as blocking, the caller rolls back). `before` is the schema holding the rows as
/// they were before `cs` (to restore a row deleted locally that the server keeps).
fn apply_local(
    conn: &Connection,
    cs: &[u8],
    policy: Policy,
    before: &str,
) -> anyhow::Result<LocalApply> {
    let log = Arc::new(Mutex::new(ApplyLog::default()));
    apply_with(conn, cs, policy, &log, true)?;
    let restore = std::mem::take(&mut log.lock().unwrap_or_else(|p| p.into_inner()).restore);
    if !restore.is_empty() {
        // Bring back each row as it was, then the same changes again: the restored rows take
        // the server's update; everything else is already there.
        for raw in &restore {
            let cols = columns(conn, "main", &raw.table)?;
            let list = cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
            let cond = raw
                .pk
                .iter()
                .enumerate()
                .map(|(n, (i, _))| format!("{} IS ?{}", quote(&cols[*i]), n + 1))
                .collect::<Vec<_>>()
                .join(" AND ");
            let sql = format!(
                "INSERT OR REPLACE INTO main.{t} ({list}) SELECT {list} FROM {b}.{t} WHERE {cond}",
                t = quote(&raw.table),
                b = quote(before),
            );
            conn.execute(&sql, params_from_iter(raw.pk.iter().map(|(_, v)| v)))?;
        }
        apply_with(conn, cs, policy, &log, false)?;
    }
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    let mut warnings = Vec::new();
    if log.foreign_key {
        warnings.push(
            "the local file has foreign-key violations after applying the server's changes"
                .to_owned(),
        );
    }
    let mut settled: Vec<Conflict> = log.settled.iter().map(|r| name_conflict(conn, r)).collect();
    settled.extend(restore.iter().map(|r| name_conflict(conn, r)));
    let blocking = log
        .blocking
        .drain(..)
        .map(|r| name_conflict(conn, &r))
        .collect();
    Ok(LocalApply {
        settled,
        blocking,
        warnings,
    })
}

fn apply_with(
    conn: &Connection,
    cs: &[u8],
    policy: Policy,
    log: &Arc<Mutex<ApplyLog>>,
    first_pass: bool,
) -> anyhow::Result<()> {
    let sink = log.clone();
    let mut input: &[u8] = cs;
    conn.apply_strm(
        &mut input,
        Some(synced),
        move |t: ConflictType, item: ChangesetItem| {
            let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
            let (code, ncols) = match item.op() {
                Ok(op) => (
                    op.code(),
                    usize::try_from(op.number_of_columns()).unwrap_or(0),
                ),
                Err(_) => return ConflictAction::SQLITE_CHANGESET_ABORT,
            };
            let delete = code == Action::SQLITE_DELETE;
            let real = |log: &mut ApplyLog, replace_ok: bool| {
                let raw = raw_conflict(&t, &item);
                match policy {
                    Policy::ServerWins if replace_ok => {
                        if first_pass {
                            log.settled.push(raw);
                        }
                        ConflictAction::SQLITE_CHANGESET_REPLACE
                    }
                    Policy::ServerWins => {
                        if first_pass {
                            log.restore.push(raw);
                        }
                        ConflictAction::SQLITE_CHANGESET_OMIT
                    }
                    Policy::ClientWins => {
                        if first_pass {
                            log.settled.push(raw);
                        }
                        ConflictAction::SQLITE_CHANGESET_OMIT
                    }
                    Policy::Abort => {
                        log.blocking.push(raw);
                        ConflictAction::SQLITE_CHANGESET_OMIT
                    }
                }
            };
            match t {
                ConflictType::SQLITE_CHANGESET_DATA | ConflictType::SQLITE_CHANGESET_CONFLICT => {
                    if !delete && already_there(&item, ncols) {
                        ConflictAction::SQLITE_CHANGESET_REPLACE
                    } else {
                        real(&mut log, true)
                    }
                }
                ConflictType::SQLITE_CHANGESET_NOTFOUND => {
                    if delete {
                        // Gone on both sides.
                        ConflictAction::SQLITE_CHANGESET_OMIT
                    } else {
                        real(&mut log, false)
                    }
                }
                ConflictType::SQLITE_CHANGESET_CONSTRAINT => {
                    log.blocking.push(raw_conflict(&t, &item));
                    ConflictAction::SQLITE_CHANGESET_OMIT
                }
                ConflictType::SQLITE_CHANGESET_FOREIGN_KEY => {
                    log.foreign_key = true;
                    ConflictAction::SQLITE_CHANGESET_OMIT
                }
                _ => ConflictAction::SQLITE_CHANGESET_ABORT,
            }
        },
    )
    .context("cannot apply the server's changes to the local file")
}

/// Applies `cs` to a base file exactly (any conflict: the base is not what the server had).
fn apply_exact(conn: &Connection, cs: &[u8]) -> anyhow::Result<()> {
    let first = Arc::new(Mutex::new(None::<String>));
    let sink = first.clone();
    let mut input: &[u8] = cs;
    let applied = conn.apply_strm(
        &mut input,
        Some(synced),
        move |t: ConflictType, item: ChangesetItem| {
            let raw = raw_conflict(&t, &item);
            let mut first = sink.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(format!("{} {} ({})", raw.table, raw.op, raw.kind));
            }
            ConflictAction::SQLITE_CHANGESET_ABORT
        },
    );
    let first = first.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (applied, first) {
        (Ok(()), None) => Ok(()),
        (_, Some(why)) => bail!("the last synced copy is out of step with the server at {why}"),
        (Err(e), None) => Err(e).context("cannot apply the server's changes to the synced copy"),
    }
}

/// The base's recorded version, url and db.
struct BaseState {
    version: i64,
    url: String,
    db: String,
}

fn write_base_state(conn: &Connection, state: &BaseState) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _patchwork_sync (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    )?;
    let mut stmt = conn.prepare(
        "INSERT INTO _patchwork_sync (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?;
    stmt.execute(rusqlite::params!["version", state.version])?;
    stmt.execute(rusqlite::params!["url", state.url])?;
    stmt.execute(rusqlite::params!["db", state.db])?;
    Ok(())
}

fn read_base_state(path: &Path) -> anyhow::Result<BaseState> {
    let conn = open(path)?;
    let get = |key: &str| -> anyhow::Result<Option<Value>> {
        conn.query_row(
            "SELECT value FROM _patchwork_sync WHERE key = ?1",
            [key],
            |r| r.get::<_, Value>(0),
        )
        .optional()
        .with_context(|| format!("{} is not a Patchwork sync base", path.display()))
    };
    let version = match get("version")? {
        Some(Value::Integer(v)) => v,
        _ => bail!("{} has no synced version", path.display()),
    };
    let text = |v: Option<Value>| match v {
        Some(Value::Text(s)) => s,
        _ => String::new(),
    };
    Ok(BaseState {
        version,
        url: text(get("url")?),
        db: text(get("db")?),
    })
}

/// Makes `main` equal to `other` (an attached snapshot): per table the inverse of their diff,
/// tables only the snapshot has are created, tables without a primary key copied whole.
fn make_equal(conn: &Connection, other: &str) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    let mine: HashSet<String> = user_tables(conn, "main")?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let theirs = user_tables(conn, other)?;
    let o = quote(other);
    for (table, has_pk) in &theirs {
        let t = quote(table);
        if !mine.contains(table) {
            let sql: String = conn.query_row(
                &format!("SELECT sql FROM {o}.sqlite_schema WHERE type = 'table' AND name = ?1"),
                [table],
                |r| r.get(0),
            )?;
            conn.execute_batch(&sql)?;
            let indexes: Vec<String> = conn
                .prepare(&format!(
                    "SELECT sql FROM {o}.sqlite_schema
                      WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL"
                ))?
                .query_map([table], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for sql in indexes {
                conn.execute_batch(&sql)?;
            }
            conn.execute_batch(&format!("INSERT INTO main.{t} SELECT * FROM {o}.{t}"))?;
            continue;
        }
        let same_shape = columns(conn, "main", table)? == columns(conn, other, table)?;
        if !has_pk || !same_shape {
            if !same_shape {
                warnings.push(format!(
                    "table {table} changed on the server: the local copy was replaced"
                ));
                let sql: String = conn.query_row(
                    &format!(
                        "SELECT sql FROM {o}.sqlite_schema WHERE type = 'table' AND name = ?1"
                    ),
                    [table],
                    |r| r.get(0),
                )?;
                conn.execute_batch(&format!("DROP TABLE main.{t}"))?;
                conn.execute_batch(&sql)?;
            } else {
                conn.execute_batch(&format!("DELETE FROM main.{t}"))?;
            }
            conn.execute_batch(&format!("INSERT INTO main.{t} SELECT * FROM {o}.{t}"))?;
            continue;
        }
        let mut forward = Vec::new();
        {
            let mut session = Session::new(conn)?;
            session.attach(Some(table.as_str()))?;
            session.diff::<&str, &str>(other, table)?;
            if !session.is_empty() {
                session.changeset_strm(&mut forward)?;
            }
        }
        if forward.is_empty() {
            continue;
        }
        let mut back = Vec::new();
        rusqlite::session::invert_strm(&mut forward.as_slice(), &mut back)?;
        let mut input: &[u8] = &back;
        conn.apply_strm(
            &mut input,
            None::<fn(&str) -> bool>,
            |t: ConflictType, _item: ChangesetItem| match t {
                ConflictType::SQLITE_CHANGESET_DATA | ConflictType::SQLITE_CHANGESET_CONFLICT => {
                    ConflictAction::SQLITE_CHANGESET_REPLACE
                }
                _ => ConflictAction::SQLITE_CHANGESET_OMIT,
            },
        )?;
    }
    let theirs: HashSet<&String> = theirs.iter().map(|(t, _)| t).collect();
    for table in mine.iter().filter(|t| !theirs.contains(t)) {
        warnings.push(format!(
            "table {table} exists only in the local file: it is not synced"
        ));
    }
    Ok(warnings)
}

/// Whether the rows named by `conflicts` are the same in `main` and `other` (the server's
/// snapshot): the conflicts are then our own edits, already on the server.
fn same_rows(conn: &Connection, other: &str, conflicts: &[Conflict]) -> anyhow::Result<bool> {
    for c in conflicts {
        let Json::Object(pk) = &c.pk else {
            return Ok(false);
        };
        if pk.is_empty() || !synced(&c.table) {
            return Ok(false);
        }
        let mut args = Vec::new();
        let mut cond = Vec::new();
        for (n, (col, v)) in pk.iter().enumerate() {
            let Ok(v) = crate::query::value::from_json(v) else {
                return Ok(false);
            };
            cond.push(format!("{} IS ?{}", quote(col), n + 1));
            args.push(v);
        }
        let cond = cond.join(" AND ");
        let (t, o) = (quote(&c.table), quote(other));
        let sql = format!(
            "SELECT (SELECT count(*) FROM (SELECT * FROM main.{t} WHERE {cond}
                                           EXCEPT SELECT * FROM {o}.{t} WHERE {cond}))
                  + (SELECT count(*) FROM (SELECT * FROM {o}.{t} WHERE {cond}
                                           EXCEPT SELECT * FROM main.{t} WHERE {cond}))"
        );
        let differ: i64 = match conn.query_row(&sql, params_from_iter(args.iter()), |r| r.get(0)) {
            Ok(n) => n,
            Err(_) => return Ok(false),
        };
        if differ != 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// HTTP.

struct Api {
    client: Client,
    base: String,
    root: String,
    token: String,
    db: String,
}

enum Changes {
    Got { cs: Vec<u8>, version: i64 },
    Gone,
}

enum Pushed {
    Applied {
        version: i64,
        applied: usize,
        conflicts: Vec<Conflict>,
    },
    Conflict(Vec<Conflict>),
}

#[derive(Deserialize)]
struct PushAnswer {
    version: i64,
    #[serde(default)]
    applied: usize,
    #[serde(default)]
    conflicts: Vec<Conflict>,
}

impl Api {
    fn new(opts: &SyncOptions) -> anyhow::Result<Self> {
        let root = opts.url.trim().trim_end_matches('/').to_owned();
        if !(root.starts_with("http://") || root.starts_with("https://")) {
            bail!(
                "--url must start with http:// or https:// (got {:?})",
                opts.url
            );
        }
        if opts.db.is_empty() || opts.db.contains('/') {
            bail!("--db must be a document id (got {:?})", opts.db);
        }
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // SSE heartbeats come every 15 s; a silent minute is a dead connection.
            .read_timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            client,
            base: format!("{root}/api/v1/db/{}/sync", opts.db),
            root,
            token: opts.token.clone(),
            db: opts.db.clone(),
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn send(&self, request: RequestBuilder, what: &str) -> anyhow::Result<Response> {
        request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "connection failed".to_owned()
            } else {
                e.to_string()
            };
            anyhow::Error::new(NetworkError(format!(
                "{what}: cannot reach {} ({why}); is the server running and --url right?",
                self.root
            )))
        })
    }

    /// A clear error for an unexpected answer.
    async fn failure(&self, response: Response, what: &str) -> anyhow::Error {
        let status = response.status();
        let body: Json = response.json().await.unwrap_or(Json::Null);
        let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
        let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
        let detail = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        let db = &self.db;
        match status {
            StatusCode::UNAUTHORIZED => {
                anyhow!("{what}: the server refused the token (401){detail}")
            }
            StatusCode::FORBIDDEN => anyhow!(
                "{what}: the token may not do this on database {db} (403 {code}){detail}; \
                 sync needs sync.read, and sync.write to push"
            ),
            StatusCode::NOT_FOUND => anyhow!(
                "{what}: not found (404 {code}){detail}; is {} a Patchwork server with sync?",
                self.root
            ),
            s if s.is_server_error() => anyhow::Error::new(NetworkError(format!(
                "{what}: the server failed ({status} {code}){detail}"
            ))),
            _ if code == "invalid_db_id" || code == "invalid_id" => {
                anyhow!("{what}: {db:?} is not a valid database id ({status}){detail}")
            }
            _ => anyhow!("{what}: the server answered {status} {code}{detail}"),
        }
    }

    fn patch_version(response: &Response) -> anyhow::Result<i64> {
        response
            .headers()
            .get("patch-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("the server's answer has no Patch-Version header"))
    }

    async fn changes(&self, since: i64) -> anyhow::Result<Changes> {
        let what = "pulling changes";
        let response = self
            .send(
                self.request(
                    Method::GET,
                    &format!("/changes?since={since}&format=changeset"),
                )
                .timeout(Duration::from_secs(300)),
                what,
            )
            .await?;
        match response.status() {
            StatusCode::OK => {
                let version = Self::patch_version(&response)?;
                let cs = response
                    .bytes()
                    .await
                    .map_err(|e| NetworkError(format!("{what}: the answer was cut off: {e}")))?
                    .to_vec();
                Ok(Changes::Got { cs, version })
            }
            StatusCode::GONE => Ok(Changes::Gone),
            _ => Err(self.failure(response, what).await),
        }
    }

    async fn push(&self, cs: Vec<u8>, base: i64, policy: Policy) -> anyhow::Result<Pushed> {
        let what = "pushing local edits";
        let response = self
            .send(
                self.request(
                    Method::POST,
                    &format!("/changes?on_conflict={}", policy.as_str()),
                )
                .header(reqwest::header::CONTENT_TYPE, super::CHANGESET_TYPE)
                .header("patch-base-version", base.to_string())
                .timeout(Duration::from_secs(300))
                .body(cs),
                what,
            )
            .await?;
        match response.status() {
            StatusCode::OK => {
                let answer: PushAnswer = response
                    .json()
                    .await
                    .map_err(|e| NetworkError(format!("{what}: unreadable answer: {e}")))?;
                Ok(Pushed::Applied {
                    version: answer.version,
                    applied: answer.applied,
                    conflicts: answer.conflicts,
                })
            }
            StatusCode::CONFLICT => {
                let body: Json = response.json().await.unwrap_or(Json::Null);
                let conflicts =
                    serde_json::from_value(body["error"]["details"]["conflicts"].clone())
                        .unwrap_or_default();
                Ok(Pushed::Conflict(conflicts))
            }
            _ => Err(self.failure(response, what).await),
        }
    }

    /// Downloads a snapshot into `to` (fsynced); its version.
    async fn snapshot(&self, to: &Path) -> anyhow::Result<i64> {
        let what = "downloading a snapshot";
        let response = self
            .send(self.request(Method::GET, "/snapshot"), what)
            .await?;
        if response.status() != StatusCode::OK {
            return Err(self.failure(response, what).await);
        }
        let version = Self::patch_version(&response)?;
        remove_db(to);
        let mut file = tokio::fs::File::create(to)
            .await
            .with_context(|| format!("cannot write {}", to.display()))?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| NetworkError(format!("{what}: the download was cut off: {e}")))?;
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .with_context(|| format!("cannot write {}", to.display()))?;
        }
        file.sync_all().await?;
        drop(file);
        let check = open(to)?;
        let ok: String = check
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .context("the snapshot is not a SQLite database")?;
        if ok != "ok" {
            bail!("the downloaded snapshot is damaged ({ok})");
        }
        Ok(version)
    }

    async fn live(&self, since: i64) -> anyhow::Result<Option<Response>> {
        let what = "following live changes";
        let response = self
            .send(
                self.request(
                    Method::GET,
                    &format!("/changes?since={since}&format=changeset&live=true"),
                )
                .header("last-event-id", since.to_string())
                .header(reqwest::header::ACCEPT, "text/event-stream"),
                what,
            )
            .await?;
        match response.status() {
            StatusCode::OK => Ok(Some(response)),
            StatusCode::GONE => Ok(None),
            _ => Err(self.failure(response, what).await),
        }
    }
}

/// One server-sent event.
#[derive(Default)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

/// The next complete event in `buf` (consumed), comments and blank blocks skipped.
fn next_event(buf: &mut Vec<u8>) -> Option<SseEvent> {
    loop {
        let end = buf
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| (i, 2))
            .into_iter()
            .chain(
                buf.windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|i| (i, 4)),
            )
            .min_by_key(|(i, _)| *i)?;
        let block: Vec<u8> = buf.drain(..end.0 + end.1).collect();
        let text = String::from_utf8_lossy(&block[..end.0]).replace("\r\n", "\n");
        let mut event = SseEvent {
            event: "message".into(),
            ..SseEvent::default()
        };
        let mut data = Vec::new();
        let mut any = false;
        for line in text.lines() {
            if line.starts_with(':') || line.is_empty() {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            any = true;
            match field {
                "event" => value.clone_into(&mut event.event),
                "id" => event.id = Some(value.to_owned()),
                "data" => data.push(value.to_owned()),
                _ => {}
            }
        }
        if any {
            event.data = data.join("\n");
            return Some(event);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sync itself.

/// How a pull ended.
enum Flow {
    Done,
    /// A fresh snapshot is needed (why).
    Snapshot(String),
}

struct Syncer<'p> {
    opts: SyncOptions,
    paths: Paths,
    api: Api,
    progress: &'p (dyn Fn(&str) + Send + Sync),
    version: i64,
    summary: Summary,
    /// The next pull follows a push that may have reached the server (a rerun after a kill).
    after_push: bool,
    _lock: std::fs::File,
}

impl<'p> Syncer<'p> {
    fn new(opts: SyncOptions, progress: &'p (dyn Fn(&str) + Send + Sync)) -> anyhow::Result<Self> {
        let api = Api::new(&opts)?;
        let paths = Paths::new(&opts.file);
        let dir = dir_of(&paths.file);
        if !dir.is_dir() {
            bail!("the directory of {} does not exist", paths.file.display());
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&paths.lock)
            .with_context(|| format!("cannot create {}", paths.lock.display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "another `patchwork sync` is already running on {}",
                paths.file.display()
            );
        }
        Ok(Self {
            opts,
            paths,
            api,
            progress,
            version: 0,
            summary: Summary::default(),
            after_push: false,
            _lock: lock,
        })
    }

    fn say(&self, line: &str) {
        (self.progress)(line);
    }

    fn warn(&mut self, line: String) {
        if !self.summary.warnings.contains(&line) {
            (self.progress)(&format!("warning: {line}"));
            self.summary.warnings.push(line);
        }
    }

    fn record_json(&self) -> anyhow::Result<()> {
        write_state_json(
            &self.paths.state,
            &StateJson {
                url: self.api.root.clone(),
                db: self.opts.db.clone(),
                version: self.version,
            },
        )
    }

    /// The first sync (no local file yet) or the recorded state of the last one.
    async fn start(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.paths.base_tmp);
        if !self.paths.file.exists() {
            return self.first_snapshot().await;
        }
        if !self.paths.base.exists() {
            bail!(
                "{} exists but was not made by `patchwork sync` (there is no {}); \
                 move it away to take a fresh copy",
                self.paths.file.display(),
                self.paths.base.display()
            );
        }
        let state = read_base_state(&self.paths.base)?;
        if !state.db.is_empty() && state.db != self.opts.db {
            bail!(
                "{} is synced with database {}, not {}",
                self.paths.file.display(),
                state.db,
                self.opts.db
            );
        }
        if !state.url.is_empty() && state.url != self.api.root {
            let line = format!(
                "{} was last synced with {}; now syncing with {}",
                self.paths.file.display(),
                state.url,
                self.api.root
            );
            self.warn(line);
        }
        self.version = state.version;
        // The base is the authority; the JSON file follows it (a run killed between the two).
        let recorded: Option<StateJson> = std::fs::read(&self.paths.state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if recorded.is_none_or(|r| r.version != self.version) {
            self.record_json()?;
        }
        self.say(&format!(
            "{} is at version {}",
            self.paths.file.display(),
            self.version
        ));
        self.recover().await
    }

    /// Finishes what a killed run left half-way (see [`PendingPull`], [`PendingPush`]).
    async fn recover(&mut self) -> anyhow::Result<()> {
        if let Some(pending) = read_json::<PendingPull>(&self.paths.pending)
            && pending.from == self.version
            && pending.to > pending.from
        {
            self.say(&format!(
                "finishing an interrupted pull to version {}",
                pending.to
            ));
            let cs = unb64(&pending.changeset_base64)?;
            if let Flow::Snapshot(why) = self
                .apply_pulled(&cs, pending.to, None, pending.after_push)
                .await?
            {
                self.resnapshot(&why).await?;
            }
        }
        let _ = std::fs::remove_file(&self.paths.pending);
        if let Some(push) = read_json::<PendingPush>(&self.paths.pushing) {
            if push.base == self.version {
                let conn = open_local(&self.paths, None)?;
                let (now, _) = diff(&conn, "base")?;
                if now == unb64(&push.changeset_base64)? {
                    self.say("an interrupted push may have reached the server: its answer is pulled first");
                    self.after_push = true;
                    return Ok(());
                }
            }
            let _ = std::fs::remove_file(&self.paths.pushing);
        }
        Ok(())
    }

    async fn first_snapshot(&mut self) -> anyhow::Result<()> {
        self.say(&format!(
            "taking a snapshot of {} from {}",
            self.opts.db, self.api.root
        ));
        let snap = self.paths.snapshot.clone();
        let version = self.api.snapshot(&snap).await?;
        // The base first (a copy plus its state), then the local file: a run killed in between
        // finds no local file and starts over.
        remove_db(&self.paths.base_tmp);
        std::fs::copy(&snap, &self.paths.base_tmp)
            .with_context(|| format!("cannot write {}", self.paths.base_tmp.display()))?;
        {
            let conn = open(&self.paths.base_tmp)?;
            write_base_state(
                &conn,
                &BaseState {
                    version,
                    url: self.api.root.clone(),
                    db: self.opts.db.clone(),
                },
            )?;
        }
        fsync_file(&self.paths.base_tmp)?;
        remove_db(&self.paths.base);
        install(&self.paths.base_tmp, &self.paths.base)?;
        install(&snap, &self.paths.file)?;
        self.version = version;
        self.record_json()?;
        self.summary.snapshots += 1;
        self.say(&format!(
            "{} created at version {version}",
            self.paths.file.display()
        ));
        Ok(())
    }

    /// Pull, then push.
    async fn cycle(&mut self) -> anyhow::Result<()> {
        if let Flow::Snapshot(why) = self.pull().await? {
            return self.resnapshot(&why).await;
        }
        if let Flow::Snapshot(why) = self.push().await? {
            return self.resnapshot(&why).await;
        }
        Ok(())
    }

    /// Everything after the synced version, applied with the policy.
    async fn pull(&mut self) -> anyhow::Result<Flow> {
        match self.api.changes(self.version).await? {
            Changes::Gone => Ok(Flow::Snapshot(format!(
                "the server no longer keeps the changes after version {}",
                self.version
            ))),
            Changes::Got { cs, version } => {
                let after_push = self.after_push;
                self.apply_pulled(&cs, version, None, after_push).await
            }
        }
    }

    /// Applies the server's changes `cs` (bringing it to `version`): to the local file (in
    /// `held`'s open transaction — after our push, the server wins — or in one of its own,
    /// with the policy), then to the base with its version, then the JSON state.
    async fn apply_pulled(
        &mut self,
        cs: &[u8],
        version: i64,
        held: Option<Connection>,
        after_push: bool,
    ) -> anyhow::Result<Flow> {
        if cs.is_empty() && version <= self.version {
            if let Some(conn) = held {
                conn.execute_batch("COMMIT")?;
            }
            self.pulled();
            return Ok(Flow::Done);
        }
        let n = count_changes(cs);
        if !cs.is_empty() {
            let conn = match held {
                Some(conn) => conn,
                None => {
                    let conn = open_local(&self.paths, None)?;
                    conn.execute_batch("BEGIN IMMEDIATE")
                        .context("the local file is locked by another writer")?;
                    conn
                }
            };
            for schema in ["main", "base"] {
                if let Some(why) = incompatible(&conn, schema, cs)? {
                    conn.execute_batch("ROLLBACK")?;
                    return Ok(Flow::Snapshot(why));
                }
            }
            let policy = if after_push {
                Policy::ServerWins
            } else {
                self.opts.on_conflict
            };
            let outcome = match apply_local(&conn, cs, policy, "base") {
                Ok(o) => o,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            };
            if !outcome.blocking.is_empty() {
                conn.execute_batch("ROLLBACK")?;
                let constraint = outcome.blocking.iter().any(|c| c.kind == "constraint");
                return Err(anyhow::Error::new(ConflictError {
                    message: if constraint {
                        format!(
                            "the server's changes up to version {version} break a constraint of the local file"
                        )
                    } else {
                        format!(
                            "local edits conflict with the server's changes up to version {version}"
                        )
                    },
                    conflicts: outcome.blocking,
                }));
            }
            write_json(
                &self.paths.pending,
                &PendingPull {
                    from: self.version,
                    to: version,
                    after_push,
                    changeset_base64: b64(cs),
                },
            )?;
            conn.execute_batch("COMMIT")
                .context("cannot commit to the local file")?;
            drop(conn);
            for w in outcome.warnings {
                self.warn(w);
            }
            if !after_push {
                for c in &outcome.settled {
                    self.say(&format!(
                        "conflict settled ({}): {c}",
                        self.opts.on_conflict
                    ));
                }
                self.summary.conflicts.extend(outcome.settled);
            }
            fail_point(&self.paths.file, FailPoint::AfterLocalCommit)?;
        } else if let Some(conn) = held {
            conn.execute_batch("COMMIT")?;
        }
        // The base: exactly the server's changes, with the version, in one transaction.
        {
            let base = open(&self.paths.base)?;
            base.execute_batch("BEGIN IMMEDIATE")?;
            if let Err(e) = apply_exact(&base, cs) {
                base.execute_batch("ROLLBACK")?;
                return Ok(Flow::Snapshot(format!("{e:#}")));
            }
            write_base_state(
                &base,
                &BaseState {
                    version,
                    url: self.api.root.clone(),
                    db: self.opts.db.clone(),
                },
            )?;
            base.execute_batch("COMMIT")?;
        }
        self.version = version;
        self.record_json()?;
        self.pulled();
        self.summary.pulled += n;
        if n > 0 {
            self.say(&format!("pulled {n} changes, now at version {version}"));
        }
        Ok(Flow::Done)
    }

    /// A pull is complete: its journals go.
    fn pulled(&mut self) {
        self.after_push = false;
        let _ = std::fs::remove_file(&self.paths.pending);
        let _ = std::fs::remove_file(&self.paths.pushing);
    }

    /// Local edits (the diff against the base) posted under the local file's write lock, then
    /// the server's answer applied.
    async fn push(&mut self) -> anyhow::Result<Flow> {
        let conn = open_local(&self.paths, None)?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .context("the local file is locked by another writer")?;
        let (cs, warnings) = match diff(&conn, "base") {
            Ok(d) => d,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e.context("cannot compare the local file with the last synced state"));
            }
        };
        for w in warnings {
            self.warn(w);
        }
        if cs.is_empty() {
            conn.execute_batch("ROLLBACK")?;
            return Ok(Flow::Done);
        }
        let n = count_changes(&cs);
        self.say(&format!("pushing {n} local changes"));
        if let Err(e) = write_json(
            &self.paths.pushing,
            &PendingPush {
                base: self.version,
                changeset_base64: b64(&cs),
            },
        ) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        let pushed = match self.api.push(cs, self.version, self.opts.on_conflict).await {
            Ok(p) => p,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        match pushed {
            Pushed::Conflict(conflicts) => {
                conn.execute_batch("ROLLBACK")?;
                let _ = std::fs::remove_file(&self.paths.pushing);
                Err(anyhow::Error::new(ConflictError {
                    message: "the server refused the local edits: they conflict with its rows"
                        .to_owned(),
                    conflicts,
                }))
            }
            Pushed::Applied {
                version,
                applied,
                conflicts,
            } => {
                self.summary.pushed += applied;
                for c in &conflicts {
                    self.say(&format!(
                        "conflict settled by the server ({}): {c}",
                        self.opts.on_conflict
                    ));
                }
                self.summary.conflicts.extend(conflicts);
                self.say(&format!(
                    "pushed {applied} changes (server version {version})"
                ));
                if let Err(e) = fail_point(&self.paths.file, FailPoint::AfterPush) {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
                // Everything since our base, our own edits included (a group commit may hold
                // other writes too), with the server winning: it has judged our edits.
                match self.api.changes(self.version).await {
                    Ok(Changes::Got { cs, version }) => {
                        self.apply_pulled(&cs, version, Some(conn), true).await
                    }
                    Ok(Changes::Gone) => {
                        conn.execute_batch("ROLLBACK")?;
                        Ok(Flow::Snapshot(format!(
                            "the server no longer keeps the changes after version {}",
                            self.version
                        )))
                    }
                    Err(e) => {
                        let _ = conn.execute_batch("ROLLBACK");
                        Err(e)
                    }
                }
            }
        }
    }

    /// A fresh snapshot replaces the local file, local edits pushed first (`410`, a schema
    /// change, a base out of step).
    async fn resnapshot(&mut self, why: &str) -> anyhow::Result<()> {
        self.say(&format!("{why}: taking a fresh snapshot"));
        let snap = self.paths.snapshot.clone();
        let snap_version = self.api.snapshot(&snap).await?;
        let mut conn = open_local(&self.paths, Some(&snap))?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .context("the local file is locked by another writer")?;
        let result = self.resnapshot_locked(&mut conn, snap_version).await;
        let (cs, version) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        conn.execute_batch("COMMIT")
            .context("cannot commit to the local file")?;
        drop(conn);
        // The snapshot becomes the base once it holds the same changes and its version.
        {
            let base = open(&snap)?;
            base.execute_batch("BEGIN IMMEDIATE")?;
            if !cs.is_empty() {
                apply_exact(&base, &cs)?;
            }
            write_base_state(
                &base,
                &BaseState {
                    version,
                    url: self.api.root.clone(),
                    db: self.opts.db.clone(),
                },
            )?;
            base.execute_batch("COMMIT")?;
        }
        fsync_file(&snap)?;
        remove_db(&self.paths.base_tmp);
        install(&snap, &self.paths.base)?;
        self.version = version;
        self.record_json()?;
        self.pulled();
        self.summary.snapshots += 1;
        self.say(&format!(
            "{} replaced by the snapshot, now at version {version}",
            self.paths.file.display()
        ));
        Ok(())
    }

    /// Inside the local file's transaction: push the local edits (against the old base), make
    /// the file equal to the snapshot plus what changed since (our push). Returns those changes
    /// and the version they bring the snapshot to.
    async fn resnapshot_locked(
        &mut self,
        conn: &mut Connection,
        snap_version: i64,
    ) -> anyhow::Result<(Vec<u8>, i64)> {
        let (edits, warnings) = diff(conn, "base")?;
        for w in warnings {
            self.warn(w);
        }
        let mut after = (Vec::new(), snap_version);
        if !edits.is_empty() {
            let n = count_changes(&edits);
            self.say(&format!("pushing {n} local changes before the snapshot"));
            let mut policy = self.opts.on_conflict;
            loop {
                match self.api.push(edits.clone(), self.version, policy).await? {
                    Pushed::Applied {
                        applied, conflicts, ..
                    } => {
                        self.summary.pushed += applied;
                        if policy == self.opts.on_conflict {
                            self.summary.conflicts.extend(conflicts);
                        }
                        break;
                    }
                    // Rows that are already what we push (a push redone after a crash) are not
                    // real conflicts: push again letting the server keep those.
                    Pushed::Conflict(conflicts)
                        if policy == Policy::Abort && same_rows(conn, "snap", &conflicts)? =>
                    {
                        policy = Policy::ServerWins;
                    }
                    Pushed::Conflict(conflicts) => {
                        return Err(anyhow::Error::new(ConflictError {
                            message:
                                "the server refused the local edits: they conflict with its rows"
                                    .to_owned(),
                            conflicts,
                        }));
                    }
                }
            }
            after = match self.api.changes(snap_version).await? {
                Changes::Got { cs, version } => (cs, version),
                Changes::Gone => {
                    bail!("the server dropped its changes right after a snapshot; try again")
                }
            };
        }
        for w in make_equal(conn, "snap")? {
            self.warn(w);
        }
        if !after.0.is_empty() {
            let outcome = apply_local(conn, &after.0, Policy::ServerWins, "snap")?;
            for w in outcome.warnings {
                self.warn(w);
            }
            self.summary.pulled += count_changes(&after.0);
        }
        Ok(after)
    }

    // -----------------------------------------------------------------------------------------
    // --watch

    fn data_version(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap_or(-1)
    }

    /// Network trouble or a busy local file: `watch` retries; other errors end it.
    fn transient(e: &anyhow::Error) -> bool {
        e.downcast_ref::<NetworkError>().is_some()
            || e.chain().any(|c| {
                c.downcast_ref::<rusqlite::Error>()
                    .and_then(|e| e.sqlite_error_code())
                    .is_some_and(|c| {
                        matches!(
                            c,
                            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                        )
                    })
            })
    }

    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.opts.stop.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }

    async fn watch(&mut self) -> anyhow::Result<()> {
        let mut watcher = open(&self.paths.file)?;
        // Read before each local check: our own commits then show as a change once (an empty
        // diff), and no edit made meanwhile is ever missed.
        let mut seen = Self::data_version(&watcher);
        let mut backoff = Duration::from_millis(250);
        let poll = self.opts.poll_interval.max(Duration::from_millis(50));
        'connect: while !self.opts.stop.is_cancelled() {
            let response = match self.api.live(self.version).await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    self.resnapshot(&format!(
                        "the server no longer keeps the changes after version {}",
                        self.version
                    ))
                    .await?;
                    seen = Self::data_version(&watcher);
                    continue;
                }
                Err(e) if Self::transient(&e) => {
                    self.say(&format!("{e:#}; retrying in {backoff:?}"));
                    if !self.pause(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.say(&format!(
                "live: following changes after version {}",
                self.version
            ));
            let mut stream = Box::pin(response.bytes_stream());
            let mut buf = Vec::new();
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = self.opts.stop.cancelled() => break 'connect,
                    _ = tick.tick() => {
                        let now = Self::data_version(&watcher);
                        if now == seen {
                            continue;
                        }
                        seen = now;
                        let pushed = match self.push().await {
                            Ok(Flow::Done) => Ok(()),
                            Ok(Flow::Snapshot(why)) => self.resnapshot(&why).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = pushed {
                            if !Self::transient(&e) {
                                return Err(e);
                            }
                            // Look again next time.
                            seen = -2;
                            self.say(&format!("{e:#}; retrying"));
                        }
                    }
                    chunk = stream.next() => {
                        match chunk {
                            Some(Ok(bytes)) => {
                                backoff = Duration::from_millis(250);
                                buf.extend_from_slice(&bytes);
                            }
                            Some(Err(e)) => {
                                self.say(&format!("live connection lost ({e}); reconnecting"));
                                if !self.pause(backoff).await {
                                    break 'connect;
                                }
                                backoff = (backoff * 2).min(Duration::from_secs(10));
                                continue 'connect;
                            }
                            None => {
                                self.say("the server closed the live connection; reconnecting");
                                if !self.pause(backoff).await {
                                    break 'connect;
                                }
                                backoff = (backoff * 2).min(Duration::from_secs(10));
                                continue 'connect;
                            }
                        }
                        while let Some(event) = next_event(&mut buf) {
                            match self.live_event(&event, &mut watcher, &mut seen).await {
                                Ok(true) => {}
                                Ok(false) => continue 'connect,
                                Err(e) if Self::transient(&e) => {
                                    self.say(&format!("{e:#}; reconnecting"));
                                    continue 'connect;
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                }
            }
        }
        self.say("stopped");
        Ok(())
    }

    /// One SSE event; `false` to reconnect (after a snapshot).
    async fn live_event(
        &mut self,
        event: &SseEvent,
        watcher: &mut Connection,
        seen: &mut i64,
    ) -> anyhow::Result<bool> {
        match event.event.as_str() {
            "changes" => {}
            "error" => {
                let body: Json = serde_json::from_str(&event.data).unwrap_or(Json::Null);
                bail!(
                    "the server ended the live stream: {} {}",
                    body["code"].as_str().unwrap_or(""),
                    body["message"].as_str().unwrap_or(&event.data)
                );
            }
            _ => return Ok(true),
        }
        let body: Json = serde_json::from_str(&event.data)
            .map_err(|e| NetworkError(format!("unreadable live event: {e}")))?;
        let version = body["version"]
            .as_i64()
            .or_else(|| event.id.as_deref().and_then(|i| i.parse().ok()))
            .ok_or_else(|| NetworkError("a live event without a version".into()))?;
        if version <= self.version {
            return Ok(true); // already pulled (by a push's answer)
        }
        let cs = base64::engine::general_purpose::STANDARD
            .decode(body["changeset_base64"].as_str().unwrap_or(""))
            .map_err(|e| NetworkError(format!("unreadable live changeset: {e}")))?;
        // Unpushed local edits go first (the push's answer brings this version too).
        let now = Self::data_version(watcher);
        let flow = if now != *seen {
            *seen = now;
            self.push().await?
        } else {
            Flow::Done
        };
        let flow = match flow {
            Flow::Done if version > self.version => {
                self.apply_pulled(&cs, version, None, false).await?
            }
            other => other,
        };
        if let Flow::Snapshot(why) = flow {
            self.resnapshot(&why).await?;
            *seen = Self::data_version(watcher);
            return Ok(false);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_are_parsed() {
        let mut buf =
            b": heartbeat\n\nevent: changes\nid: 7\ndata: {\"version\":7}\n\nevent: x\r\ndata: a\r\n\r\npartial"
                .to_vec();
        let e = next_event(&mut buf).unwrap();
        assert_eq!(e.event, "changes");
        assert_eq!(e.id.as_deref(), Some("7"));
        assert_eq!(e.data, "{\"version\":7}");
        let e = next_event(&mut buf).unwrap();
        assert_eq!(e.event, "x");
        assert_eq!(e.data, "a");
        assert!(next_event(&mut buf).is_none());
        assert_eq!(buf, b"partial");
    }

    #[test]
    fn policies_parse() {
        assert_eq!("server-wins".parse::<Policy>().unwrap(), Policy::ServerWins);
        assert_eq!("client_wins".parse::<Policy>().unwrap(), Policy::ClientWins);
        assert_eq!("abort".parse::<Policy>().unwrap(), Policy::Abort);
        assert!("nope".parse::<Policy>().is_err());
    }
}
