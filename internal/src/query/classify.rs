//! Statement classification decided by SQLite, never by a keyword: the statement is prepared
//! with an authorizer that records what SQLite says it will do, and `sqlite3_stmt_readonly`
//! tells whether it writes. `ATTACH`, `DETACH`, `load_extension`, transaction control and
//! `VACUUM INTO` are refused for everyone; Patchwork's own `_patchwork_*` tables are read-only.
//!
//! PRAGMAs are default-deny ([`pragma_access`]): the document's connection is shared by every
//! client and by Patchwork, and many PRAGMAs act *while being prepared* (`hard_heap_limit`,
//! `query_only`, `synchronous`, …), so the decision is the authorizer's, at prepare time, and a
//! refused PRAGMA never runs. The same rules stay on until the statement has run (until the
//! [`Prepared`] is finished or dropped): a table-valued `pragma_*` function prepares its PRAGMA
//! only while the statement steps.
//!
//! The authorizer is installed **once per document connection** ([`install`], by the actor that
//! owns it): installing or removing an authorizer expires every prepared statement of the
//! connection, which made every request re-prepare Patchwork's own statements too. Between user
//! statements it allows everything (Patchwork's own statements, which are not the user's). User
//! statements come from the connection's statement cache: a cached statement is not compiled
//! again, so the authorizer is not asked again, and its classification comes from a map filled
//! when it was compiled ([`Policy::classified`]). Both are dropped whenever the schema may have
//! changed (a statement of class [`Class::Admin`] ran, or SQLite re-prepared a statement), so a
//! classification is never older than the schema it was made under. A connection without the
//! installed policy (tests, tools) gets the authorizer for the statement's lifetime, as before.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{CachedStatement, Connection, Statement, StatementStatus};

use crate::auth::Action;

/// What a statement needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Read,
    Write,
    Admin,
}

impl Class {
    pub fn action(self) -> Action {
        match self {
            Class::Read => Action::QueryRead,
            Class::Write => Action::QueryWrite,
            Class::Admin => Action::QueryAdmin,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Admin => "admin",
        }
    }
}

/// Who may run a PRAGMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PragmaAccess {
    /// Read-only introspection: `query.read`.
    Read,
    /// Maintenance, and the two header fields that belong to applications: `query.admin`.
    Admin,
    /// Changes connection or database state Patchwork relies on: nobody.
    Refused,
}

/// Introspection PRAGMAs that take an optional table or index name (also callable as
/// `pragma_<name>(...)` table-valued functions).
const READ_WITH_NAME: &[&str] = &[
    "foreign_key_check",
    "foreign_key_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "table_info",
    "table_list",
    "table_xinfo",
];

/// PRAGMAs that may be read in their query form only (no argument). `database_list` is not
/// here: it shows the server's file paths.
const READ_QUERY_ONLY: &[&str] = &[
    "application_id",
    "auto_vacuum",
    "collation_list",
    "compile_options",
    "data_version",
    "encoding",
    "foreign_keys",
    "freelist_count",
    "function_list",
    "module_list",
    "page_count",
    "page_size",
    "pragma_list",
    "schema_version",
    "user_version",
];

/// Maintenance PRAGMAs (any argument): expensive checks and space reclaiming.
const ADMIN_MAINTENANCE: &[&str] = &[
    "incremental_vacuum",
    "integrity_check",
    "optimize",
    "quick_check",
];

/// Header fields that Patchwork never uses and that applications version their schema with:
/// readable by `query.read`, settable by `query.admin`.
const ADMIN_SETTABLE: &[&str] = &["application_id", "user_version"];

/// The PRAGMA policy: `name` as written (any case), `value` its argument if it has one.
pub fn pragma_access(name: &str, value: Option<&str>) -> PragmaAccess {
    let name = name.to_ascii_lowercase();
    let name = name.as_str();
    if READ_WITH_NAME.contains(&name) || (value.is_none() && READ_QUERY_ONLY.contains(&name)) {
        PragmaAccess::Read
    } else if ADMIN_MAINTENANCE.contains(&name) || ADMIN_SETTABLE.contains(&name) {
        PragmaAccess::Admin
    } else {
        PragmaAccess::Refused
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("{0}")]
    Refused(String),
    #[error("only one statement is allowed per request")]
    Multiple,
    #[error("the statement is empty")]
    Empty,
    #[error("{0}")]
    Sql(rusqlite::Error),
}

/// The statement's own data change (its first `INSERT`/`UPDATE`/`DELETE`; a trigger's come
/// after it), which decides what `rows_affected` and `last_insert_id` report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Insert,
    Update,
    Delete,
}

/// Tables a statement reads, lower-cased (views are expanded by SQLite into their tables).
pub type ReadSet = std::collections::BTreeSet<String>;

/// A user statement, compiled now or taken from the connection's statement cache.
pub enum Stmt<'c> {
    Fresh(Statement<'c>),
    Cached(CachedStatement<'c>),
}

impl<'c> std::ops::Deref for Stmt<'c> {
    type Target = Statement<'c>;
    fn deref(&self) -> &Statement<'c> {
        match self {
            Stmt::Fresh(s) => s,
            Stmt::Cached(s) => s,
        }
    }
}

impl<'c> std::ops::DerefMut for Stmt<'c> {
    fn deref_mut(&mut self) -> &mut Statement<'c> {
        match self {
            Stmt::Fresh(s) => s,
            Stmt::Cached(s) => s,
        }
    }
}

impl Stmt<'_> {
    /// Keeps a statement that was refused out of the cache.
    fn discard(self) {
        if let Stmt::Cached(s) = self {
            s.discard();
        }
    }
}

/// What classification found out about a statement (kept for cached statements).
#[derive(Clone, Debug)]
struct Classified {
    class: Class,
    reads: ReadSet,
    change: Option<Change>,
    ddl: bool,
    /// [`Seen::altering`], for the statement's run.
    altering: Option<String>,
}

/// A prepared, classified statement.
pub struct Prepared<'c> {
    pub stmt: Stmt<'c>,
    pub class: Class,
    /// For watch invalidation.
    pub reads: ReadSet,
    pub change: Option<Change>,
    /// DDL that could reach Patchwork's state in ways the authorizer does not show (a rename to
    /// a `_patchwork_` name, a foreign key into Patchwork's tables): checked after it runs.
    pub ddl: bool,
    /// SQLite's count of automatic re-compilations of the statement when it was handed out
    /// (a re-compilation while it runs means the schema changed under a cached statement).
    reprepares: i32,
    guard: Guard<'c>,
}

impl Prepared<'_> {
    /// Ends the statement's rules; says why SQLite was refused something while the statement
    /// ran, if it was. After a statement that may have changed the schema (or was itself
    /// re-compiled by SQLite), the cached statements and classifications are dropped.
    pub fn finish(mut self) -> Option<String> {
        let refused = self.guard.take_refused();
        let recompiled = self.stmt.get_status(StatementStatus::RePrepare) != self.reprepares;
        let conn = self.guard.conn;
        let policy = self.guard.policy.clone();
        let schema_may_change = self.class == Class::Admin || recompiled;
        drop(self);
        if schema_may_change && let Some(policy) = policy {
            policy.forget(conn);
        }
        refused
    }
}

/// The classifier's refusals, without classification, kept on the connection while the value
/// lives: for statements Patchwork prepares on a user's behalf that may fire the user's
/// triggers (applying a pushed changeset). [`Enforcing::finish`] says what was refused.
pub struct Enforcing<'c>(Guard<'c>);

pub fn enforce(conn: &Connection) -> Enforcing<'_> {
    Enforcing(Guard::start(
        conn,
        Seen {
            running: true,
            patchwork_savepoints: true,
            ..Seen::default()
        },
    ))
}

impl Enforcing<'_> {
    pub fn finish(mut self) -> Option<String> {
        self.0.take_refused()
    }
}

/// The classifier's authorizer, installed once on a document's connection (see the module
/// docs). Lives in a thread-local of the actor thread that owns the connection.
pub struct Policy {
    /// The connection it is installed on (its `sqlite3*`, compared, never dereferenced).
    handle: usize,
    /// `Some` while a user statement is being prepared or runs: what the authorizer saw.
    /// `None`: Patchwork's own statements, everything allowed.
    seen: Arc<Mutex<Option<Seen>>>,
    /// Classifications of the user statements compiled since the last [`Policy::forget`], by
    /// SQL text; consulted only for statements that come from the statement cache.
    classified: RefCell<HashMap<Box<str>, Classified>>,
}

/// Most classifications remembered (the statement cache holds far fewer statements).
const CLASSIFIED_CAPACITY: usize = 256;

thread_local! {
    static POLICY: RefCell<Option<Rc<Policy>>> = const { RefCell::new(None) };
}

#[allow(unsafe_code)]
fn handle_of(conn: &Connection) -> usize {
    // SAFETY: only reads the connection's pointer value, which identifies it; never used to
    // reach SQLite.
    unsafe { conn.handle() as usize }
}

/// Installs the classifier's authorizer on `conn` for good and makes it this thread's policy.
/// Called by the actor thread that owns a document's connection, once, right after opening it.
pub fn install(conn: &Connection) {
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let sink = seen.clone();
    set_observer(conn, sink);
    let policy = Rc::new(Policy {
        handle: handle_of(conn),
        seen,
        classified: RefCell::default(),
    });
    POLICY.with(|p| *p.borrow_mut() = Some(policy));
}

/// Installs the authorizer that applies [`observe`] while `seen` holds a record (a user
/// statement) and allows everything while it is `None` (Patchwork's own statements).
fn set_observer(conn: &Connection, seen: Arc<Mutex<Option<Seen>>>) {
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        match seen.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(seen) => observe(seen, &ctx),
            None => Authorization::Allow,
        }
    }));
}

/// Forgets this thread's policy (its connection is closing).
pub fn uninstall() {
    POLICY.with(|p| *p.borrow_mut() = None);
}

/// The installed policy of `conn`, if `conn` is this thread's document connection.
fn policy_of(conn: &Connection) -> Option<Rc<Policy>> {
    let handle = handle_of(conn);
    POLICY.with(|p| {
        p.borrow()
            .as_ref()
            .filter(|policy| policy.handle == handle)
            .cloned()
    })
}

impl Policy {
    /// Drops every cached statement and classification: the schema may have changed.
    fn forget(&self, conn: &Connection) {
        self.classified.borrow_mut().clear();
        conn.flush_prepared_statement_cache();
    }

    fn remember(&self, sql: &str, classified: &Classified) {
        let mut map = self.classified.borrow_mut();
        if map.len() >= CLASSIFIED_CAPACITY {
            map.clear();
        }
        map.insert(sql.into(), classified.clone());
    }
}

/// Drops `conn`'s cached statements and classifications, if it has the installed policy: for
/// Patchwork code that changes a document's schema itself.
pub fn schema_changed(conn: &Connection) {
    if let Some(policy) = policy_of(conn) {
        policy.forget(conn);
    }
}

/// The classifier's rules on the connection while it lives: the installed policy switched to
/// a user statement, or (no policy) an authorizer installed for this statement alone.
struct Guard<'c> {
    conn: &'c Connection,
    seen: Arc<Mutex<Option<Seen>>>,
    policy: Option<Rc<Policy>>,
}

impl<'c> Guard<'c> {
    fn start(conn: &'c Connection, seen: Seen) -> Self {
        match policy_of(conn) {
            Some(policy) => {
                *policy.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(seen);
                Guard {
                    conn,
                    seen: policy.seen.clone(),
                    policy: Some(policy),
                }
            }
            None => {
                let shared = Arc::new(Mutex::new(Some(seen)));
                let sink = shared.clone();
                set_observer(conn, sink);
                Guard {
                    conn,
                    seen: shared,
                    policy: None,
                }
            }
        }
    }

    /// What the authorizer saw so far, leaving a fresh record marked running.
    fn take_seen(&self) -> Seen {
        let mut shared = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let seen = shared.take().unwrap_or_default();
        *shared = Some(Seen {
            running: true,
            patchwork_savepoints: seen.patchwork_savepoints,
            ..Seen::default()
        });
        seen
    }

    /// Starts a new record (a statement compiled again).
    fn reset(&self) {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Seen::default());
    }

    fn take_refused(&mut self) -> Option<String> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|s| s.refused.take())
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        match &self.policy {
            Some(_) => *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = None,
            None => {
                self.conn
                    .authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
            }
        }
    }
}

#[derive(Default)]
struct Seen {
    /// Authorizer calls; a statement that made none (and is read-only) is empty.
    events: usize,
    reads: ReadSet,
    change: Option<Change>,
    data_write: bool,
    schema: bool,
    admin_pragma: bool,
    /// CREATE/ALTER TABLE: checked after running ([`Prepared::ddl`]).
    ddl: bool,
    /// DROP or ALTER TABLE, DROP INDEX: SQLite's own bookkeeping in `sqlite_sequence` and
    /// `sqlite_stat*` that follows is allowed.
    bookkeeping: bool,
    refused: Option<String>,
    /// The statement is running: only read-listed PRAGMAs may still be prepared (by the
    /// `pragma_*` table-valued functions).
    running: bool,
    /// [`enforce`]: Patchwork itself runs the statements and may use savepoints (and the
    /// `defer_foreign_keys` that applying a changeset sets for its own transaction).
    patchwork_savepoints: bool,
    /// The table an `ALTER TABLE` (classified, and running) alters, lower-cased: SQLite checks
    /// a column it adds with a CHECK constraint (or to a STRICT table) by running
    /// `pragma_quick_check('{table}')` itself while the ALTER executes ([`internal_quick_check`]).
    altering: Option<String>,
}

/// Whether a PRAGMA prepared while a statement runs is the check SQLite itself makes while an
/// `ALTER TABLE … ADD COLUMN` executes: `quick_check` of exactly the altered table in `main`,
/// outside any trigger or view, and only while that classified ALTER runs. (No user SQL can
/// run inside an ALTER TABLE: CHECK constraints and defaults take no subqueries, and an ALTER
/// fires no triggers; a user's own `quick_check` is still a maintenance PRAGMA.)
fn internal_quick_check(seen: &Seen, ctx: &AuthContext<'_>) -> bool {
    let AuthAction::Pragma {
        pragma_name,
        pragma_value: Some(table),
    } = ctx.action
    else {
        return false;
    };
    seen.running
        && pragma_name.eq_ignore_ascii_case("quick_check")
        && ctx.accessor.is_none()
        && ctx
            .database_name
            .is_none_or(|db| db.eq_ignore_ascii_case("main"))
        && seen
            .altering
            .as_deref()
            .is_some_and(|altered| altered.eq_ignore_ascii_case(table))
}

/// User-visible tables that Patchwork itself writes (webhook deliveries, kept blobs).
pub const WRITTEN_BY_PATCHWORK: &[&str] = &["webhook_inbox", "blobs"];

fn written_by_patchwork(table: &str) -> bool {
    WRITTEN_BY_PATCHWORK
        .iter()
        .any(|t| t.eq_ignore_ascii_case(table))
}

/// Patchwork's own names (SQLite names are case-insensitive).
fn internal(name: &str) -> bool {
    name.get(..11)
        .is_some_and(|p| p.eq_ignore_ascii_case("_patchwork_"))
}

fn observe(seen: &mut Seen, ctx: &AuthContext<'_>) -> Authorization {
    seen.events += 1;
    // SQLite's own check of a column an ALTER TABLE adds, while that ALTER runs.
    if internal_quick_check(seen, ctx) {
        return Authorization::Allow;
    }
    let mut refuse = |why: String| {
        seen.refused.get_or_insert(why);
        Authorization::Deny
    };
    match ctx.action {
        AuthAction::Attach { .. } => return refuse("ATTACH is not allowed".into()),
        AuthAction::Detach { .. } => return refuse("DETACH is not allowed".into()),
        // Patchwork's own savepoints (applying a changeset runs in one) are not the user's.
        AuthAction::Savepoint { .. } if seen.patchwork_savepoints => {}
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            return refuse(
                "transaction control is not allowed; use query/batch for atomic groups".into(),
            );
        }
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            return refuse("load_extension is not allowed".into());
        }
        // Applying a changeset defers foreign keys for its own transaction, and sets it back.
        AuthAction::Pragma { pragma_name, .. }
            if seen.patchwork_savepoints
                && pragma_name.eq_ignore_ascii_case("defer_foreign_keys") => {}
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => match pragma_access(pragma_name, pragma_value) {
            PragmaAccess::Read => {}
            PragmaAccess::Admin if !seen.running => seen.admin_pragma = true,
            PragmaAccess::Admin => {
                return refuse(format!(
                    "PRAGMA {pragma_name} is a maintenance PRAGMA; run it as a PRAGMA statement"
                ));
            }
            PragmaAccess::Refused => {
                return refuse(format!(
                    "PRAGMA {pragma_name}{} is not allowed: it would change the connection or \
                     database state shared by every client (see docs/api.md, PRAGMA policy)",
                    if pragma_value.is_some() {
                        " with a value"
                    } else {
                        ""
                    }
                ));
            }
        },
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name } => {
            if internal(table_name) {
                return refuse(format!(
                    "{table_name} is maintained by Patchwork and is read-only"
                ));
            }
            // `sqlite_sequence` holds the AUTOINCREMENT counters of Patchwork's tables too, and
            // forged planner statistics would slow Patchwork's own queries. (SQLite keeps both
            // up to date without asking, except for DROP and ALTER TABLE, whose bookkeeping
            // there goes through the authorizer after the DROP/ALTER itself; `sqlite_schema`
            // writes are SQLite's own bookkeeping for DDL and need `writable_schema`, which is
            // refused.)
            let lower = table_name.to_ascii_lowercase();
            if (lower == "sqlite_sequence" || lower.starts_with("sqlite_stat")) && !seen.bookkeeping
            {
                return refuse(format!(
                    "{table_name} is maintained by SQLite and is read-only"
                ));
            }
            if !lower.starts_with("sqlite_") {
                seen.data_write = true;
                seen.change.get_or_insert(match ctx.action {
                    AuthAction::Insert { .. } => Change::Insert,
                    AuthAction::Update { .. } => Change::Update,
                    _ => Change::Delete,
                });
            }
        }
        // Patchwork writes these user-visible tables itself (without this authorizer), so a
        // trigger there could write what the caller may not.
        AuthAction::CreateTrigger { table_name, .. } if written_by_patchwork(table_name) => {
            return refuse(format!(
                "triggers on {table_name} are not allowed (Patchwork writes it)"
            ));
        }
        AuthAction::CreateIndex {
            index_name,
            table_name,
        }
        | AuthAction::CreateTempIndex {
            index_name,
            table_name,
        } if internal(index_name) || internal(table_name) => {
            return refuse(format!("the name {index_name} is reserved for Patchwork"));
        }
        AuthAction::CreateVtable { table_name, .. } | AuthAction::DropVtable { table_name, .. }
            if internal(table_name) =>
        {
            return refuse(format!("the name {table_name} is reserved for Patchwork"));
        }
        AuthAction::AlterTable {
            database_name,
            table_name,
        } => {
            if internal(table_name) {
                return refuse(format!("{table_name} is maintained by Patchwork"));
            }
            if !seen.running && database_name.eq_ignore_ascii_case("main") {
                seen.altering = Some(table_name.to_ascii_lowercase());
            }
            seen.schema = true;
            seen.ddl = true;
            seen.bookkeeping = true;
        }
        AuthAction::CreateTable { table_name } => {
            if internal(table_name) {
                return refuse(format!("{table_name} is maintained by Patchwork"));
            }
            seen.schema = true;
            seen.ddl = true;
        }
        AuthAction::CreateTrigger { trigger_name, .. }
        | AuthAction::CreateTempTrigger { trigger_name, .. }
            if internal(trigger_name) =>
        {
            return refuse(format!("the name {trigger_name} is reserved for Patchwork"));
        }
        AuthAction::DropTable { table_name } | AuthAction::DropIndex { table_name, .. } => {
            if internal(table_name) {
                return refuse(format!("{table_name} is maintained by Patchwork"));
            }
            seen.schema = true;
            seen.bookkeeping = true;
        }
        AuthAction::CreateIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. } => {
            if internal(table_name) {
                return refuse(format!("{table_name} is maintained by Patchwork"));
            }
            seen.schema = true;
        }
        // Temporary triggers live on the document's connection and fire for Patchwork's own
        // statements too, which run without this authorizer.
        AuthAction::CreateTempTrigger { .. } => {
            return refuse("temporary triggers are not allowed".into());
        }
        // A temporary object named like Patchwork's tables would shadow them.
        AuthAction::CreateTempTable { table_name } => {
            if internal(table_name) {
                return refuse(format!("{table_name} is maintained by Patchwork"));
            }
            seen.schema = true;
        }
        AuthAction::CreateTempView { view_name } | AuthAction::CreateView { view_name } => {
            if internal(view_name) {
                return refuse(format!("the name {view_name} is reserved for Patchwork"));
            }
            seen.schema = true;
        }
        AuthAction::Read { table_name, .. } => {
            if !seen.reads.contains(table_name) {
                seen.reads.insert(table_name.to_ascii_lowercase());
            }
        }
        AuthAction::Select | AuthAction::Function { .. } | AuthAction::Recursive => {}
        _ => seen.schema = true,
    }
    Authorization::Allow
}

/// Prepares `sql` (exactly one statement) and classifies it: from the statement cache when
/// the connection has the installed policy, else compiled afresh under a temporary authorizer.
pub fn prepare<'c>(conn: &'c Connection, sql: &str) -> Result<Prepared<'c>, ClassifyError> {
    let guard = Guard::start(conn, Seen::default());
    let Some(policy) = guard.policy.clone() else {
        let prepared = conn.prepare(sql).map(Stmt::Fresh);
        let (stmt, classified) = classify_compiled(conn, sql, prepared, guard.take_seen())?;
        return Ok(finish_prepare(stmt, classified, guard));
    };
    let prepared = conn.prepare_cached(sql).map(Stmt::Cached);
    let seen = guard.take_seen();
    // A statement from the cache was not compiled now: the authorizer was not asked.
    if seen.events == 0
        && seen.refused.is_none()
        && let Ok(stmt) = prepared
    {
        let known = policy.classified.borrow().get(sql).cloned();
        if let Some(classified) = known {
            return Ok(finish_prepare(stmt, classified, guard));
        }
        // Cached but no longer classified (the map was cleared): compile it again. (Only
        // whitespace and comments also get here, and are refused as empty below.)
        stmt.discard();
        guard.reset();
        let fresh = conn.prepare(sql).map(Stmt::Fresh);
        let (stmt, classified) = classify_compiled(conn, sql, fresh, guard.take_seen())?;
        policy.remember(sql, &classified);
        return Ok(finish_prepare(stmt, classified, guard));
    }
    let (stmt, classified) = classify_compiled(conn, sql, prepared, seen)?;
    policy.remember(sql, &classified);
    Ok(finish_prepare(stmt, classified, guard))
}

fn finish_prepare<'c>(stmt: Stmt<'c>, c: Classified, guard: Guard<'c>) -> Prepared<'c> {
    let reprepares = stmt.get_status(StatementStatus::RePrepare);
    if c.altering.is_some()
        && let Some(running) = guard
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
    {
        running.altering = c.altering.clone();
    }
    Prepared {
        stmt,
        class: c.class,
        reads: c.reads,
        change: c.change,
        ddl: c.ddl,
        reprepares,
        guard,
    }
}

/// Classifies a statement just compiled from what the authorizer saw while compiling it.
/// A refused statement never reaches the statement cache.
fn classify_compiled<'c>(
    conn: &Connection,
    sql: &str,
    prepared: rusqlite::Result<Stmt<'c>>,
    mut seen: Seen,
) -> Result<(Stmt<'c>, Classified), ClassifyError> {
    let stmt = match prepared {
        Ok(stmt) => stmt,
        Err(_) if seen.refused.is_some() => {
            return Err(ClassifyError::Refused(seen.refused.unwrap_or_default()));
        }
        Err(rusqlite::Error::MultipleStatement) => return Err(ClassifyError::Multiple),
        Err(e) => return Err(ClassifyError::Sql(e)),
    };
    if let Some(why) = seen.refused.take() {
        stmt.discard();
        return Err(ClassifyError::Refused(why));
    }
    let readonly = stmt.readonly();
    // Only whitespace and comments prepare to no program, which SQLite calls read-only and
    // for which it asks the authorizer nothing (every real statement asks at least once, but
    // VACUUM, which is not read-only).
    if seen.events == 0 && readonly {
        stmt.discard();
        return Err(ClassifyError::Empty);
    }
    // VACUUM is invisible to the authorizer (its INTO expression is not): look at the compiled
    // program of whatever writes nothing the authorizer saw.
    if !readonly && !seen.data_write && !seen.schema && !seen.admin_pragma {
        match vacuums_into(conn, sql) {
            Ok(false) => {}
            Ok(true) => {
                stmt.discard();
                return Err(ClassifyError::Refused("VACUUM INTO is not allowed".into()));
            }
            Err(e) => {
                stmt.discard();
                return Err(e);
            }
        }
    }
    let class = if seen.admin_pragma {
        Class::Admin
    } else if readonly {
        Class::Read
    } else if seen.schema || !seen.data_write {
        Class::Admin
    } else {
        Class::Write
    };
    Ok((
        stmt,
        Classified {
            class,
            reads: seen.reads,
            change: seen.change,
            ddl: seen.ddl,
            altering: seen.altering,
        },
    ))
}

/// What DDL must not leave behind, as a list to compare before and after it runs: objects
/// with names reserved for Patchwork (a rename can produce one), and foreign keys into
/// Patchwork's tables, `webhook_inbox` or `blobs` (Patchwork deletes there without the authorizer, so a
/// cascade would run the user's triggers unchecked, and a RESTRICT would block Patchwork).
pub fn ddl_fingerprint(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT 'name ' || name FROM sqlite_schema WHERE name LIKE '\\_patchwork\\_%' ESCAPE '\\'
         UNION ALL
         SELECT 'foreign key ' || t.name || ' -> ' || f.\"table\"
           FROM sqlite_schema AS t, pragma_foreign_key_list(t.name) AS f
          WHERE t.type = 'table'
            AND (f.\"table\" LIKE '\\_patchwork\\_%' ESCAPE '\\'
                 OR f.\"table\" LIKE 'webhook\\_inbox' ESCAPE '\\' OR f.\"table\" LIKE 'blobs')
         ORDER BY 1",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// Whether the compiled program of `sql` has a `Vacuum` opcode with an INTO target (its P2 is
/// the register holding the file name; 0 for a plain VACUUM).
fn vacuums_into(conn: &Connection, sql: &str) -> Result<bool, ClassifyError> {
    let mut explain = conn
        .prepare(&format!("EXPLAIN {sql}"))
        .map_err(ClassifyError::Sql)?;
    let mut rows = explain.query([]).map_err(ClassifyError::Sql)?;
    while let Some(row) = rows.next().map_err(ClassifyError::Sql)? {
        let opcode: String = row.get(1).map_err(ClassifyError::Sql)?;
        let p2: i64 = row.get(3).map_err(ClassifyError::Sql)?;
        if opcode == "Vacuum" && p2 != 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(conn: &Connection, sql: &str) -> Result<Class, String> {
        prepare(conn, sql)
            .map(|p| p.class)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn classification_table() {
        let conn = Connection::open_in_memory().unwrap();
        crate::migrations::apply(&conn, crate::migrations::Schema::Document).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        let cases: &[(&str, Result<Class, &str>)] = &[
            ("SELECT * FROM t", Ok(Class::Read)),
            ("  select 1  ", Ok(Class::Read)),
            ("SELECT 1; -- trailing comment", Ok(Class::Read)),
            ("SELECT 1 /* c */ ;  ", Ok(Class::Read)),
            ("/* leading */ SELECT 1", Ok(Class::Read)),
            ("WITH x AS (SELECT 1) SELECT * FROM x", Ok(Class::Read)),
            (
                "WITH x AS (SELECT 1) DELETE FROM t WHERE id IN x",
                Ok(Class::Write),
            ),
            (
                "INSERT INTO t (v) VALUES ('a') RETURNING id",
                Ok(Class::Write),
            ),
            ("REPLACE INTO t (id, v) VALUES (1, 'a')", Ok(Class::Write)),
            ("UPDATE t SET v = 'b'", Ok(Class::Write)),
            ("DELETE FROM t", Ok(Class::Write)),
            ("PRAGMA table_info(t)", Ok(Class::Read)),
            ("PRAGMA journal_mode=DELETE", Err("not allowed")),
            ("PRAGMA journal_mode", Err("not allowed")),
            ("PRAGMA user_version = 3", Ok(Class::Admin)),
            ("PRAGMA USER_VERSION", Ok(Class::Read)),
            ("PRAGMA integrity_check", Ok(Class::Admin)),
            ("PRAGMA hard_heap_limit=1000", Err("not allowed")),
            ("PRAGMA hard_heap_limit", Err("not allowed")),
            ("PRAGMA query_only=1", Err("not allowed")),
            ("PRAGMA writable_schema=ON", Err("not allowed")),
            ("PRAGMA database_list", Err("not allowed")),
            ("PRAGMA no_such_pragma", Err("not allowed")),
            ("SELECT * FROM pragma_table_info('t')", Ok(Class::Read)),
            (
                "UPDATE sqlite_sequence SET seq = 1",
                Err("maintained by SQLite"),
            ),
            ("DELETE FROM sqlite_stat1", Err("no such table")),
            (
                "ALTER TABLE _PATCHWORK_META RENAME TO x",
                Err("maintained by Patchwork"),
            ),
            ("CREATE INDEX _patchwork_i ON t(v)", Err("reserved")),
            (
                "CREATE VIRTUAL TABLE _patchwork_f USING fts5(x)",
                Err("reserved"),
            ),
            ("ALTER TABLE t RENAME TO t2", Ok(Class::Admin)),
            ("CREATE TABLE u (x)", Ok(Class::Admin)),
            ("CREATE TEMP TABLE tt (x)", Ok(Class::Admin)),
            ("DROP TABLE t", Ok(Class::Admin)),
            ("ALTER TABLE t ADD COLUMN w", Ok(Class::Admin)),
            ("CREATE INDEX i ON t(v)", Ok(Class::Admin)),
            ("VACUUM", Ok(Class::Admin)),
            ("VACUUM INTO '/tmp/copy.db'", Err("VACUUM INTO")),
            ("ATTACH 'x.db' AS x", Err("ATTACH")),
            ("DETACH x", Err("DETACH")),
            ("SELECT load_extension('x')", Err("load_extension")),
            ("BEGIN", Err("transaction")),
            ("COMMIT", Err("transaction")),
            ("SAVEPOINT a", Err("transaction")),
            ("SELECT 1; DROP TABLE t", Err("one statement")),
            ("SELECT 1; /* x */ DROP TABLE t", Err("one statement")),
            ("-- DROP TABLE t\nSELECT 1", Ok(Class::Read)),
            ("SELECT '; DROP TABLE t'", Ok(Class::Read)),
            ("DELETE FROM _patchwork_meta", Err("read-only")),
            ("DELETE FROM _Patchwork_Meta", Err("read-only")),
            ("SELECT * FROM _patchwork_meta", Ok(Class::Read)),
            // Triggers that Patchwork's own statements would fire, and names that would shadow
            // Patchwork's tables.
            (
                "CREATE TEMP TRIGGER x BEFORE INSERT ON main._patchwork_messages \
                 BEGIN SELECT RAISE(IGNORE); END",
                Err("temporary triggers"),
            ),
            (
                "CREATE TEMP TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; END",
                Err("temporary triggers"),
            ),
            (
                "CREATE TRIGGER x AFTER INSERT ON webhook_inbox \
                 BEGIN DELETE FROM _patchwork_leases; END",
                Err("webhook_inbox"),
            ),
            (
                "CREATE TRIGGER y AFTER DELETE ON blobs BEGIN DELETE FROM _patchwork_leases; END",
                Err("Patchwork writes it"),
            ),
            (
                "CREATE TRIGGER x AFTER INSERT ON _patchwork_messages BEGIN SELECT 1; END",
                Err("maintained by Patchwork"),
            ),
            (
                "CREATE TRIGGER x AFTER INSERT ON t BEGIN UPDATE t SET v = 'x'; END",
                Ok(Class::Admin),
            ),
            (
                "CREATE TEMP VIEW _patchwork_meta AS SELECT 1",
                Err("reserved"),
            ),
            ("CREATE VIEW _patchwork_x AS SELECT 1", Err("reserved")),
            (
                "CREATE TEMP TABLE _patchwork_leases (x)",
                Err("maintained by Patchwork"),
            ),
            ("CREATE TEMP VIEW v AS SELECT * FROM t", Ok(Class::Admin)),
            ("SELEC 1", Err("syntax")),
            ("  -- nothing here", Err("empty")),
        ];
        // With an authorizer per statement, then with the installed one: each statement twice
        // (compiled, then from the statement cache) and the whole table twice more.
        for round in 0..4 {
            if round == 1 {
                install(&conn);
            }
            for (sql, want) in cases {
                let got = classify(&conn, sql);
                match (want, &got) {
                    (Ok(c), Ok(g)) => assert_eq!(c, g, "{sql} (round {round})"),
                    (Err(needle), Err(e)) => {
                        assert!(e.contains(needle), "{sql} (round {round}): {e}")
                    }
                    _ => panic!("{sql} (round {round}): want {want:?}, got {got:?}"),
                }
            }
        }
        uninstall();
        // Nothing was executed by classifying.
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 't'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    /// Prepares and runs `sql` as the query routes do: what SQLite was refused while it ran.
    fn run(conn: &Connection, sql: &str) -> Result<Class, String> {
        let mut prepared = prepare(conn, sql).map_err(|e| e.to_string())?;
        let class = prepared.class;
        let ran = {
            let mut rows = prepared.stmt.raw_query();
            loop {
                match rows.next() {
                    Ok(Some(_)) => {}
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        };
        let refused = prepared.finish();
        match (refused, ran) {
            (Some(why), _) => Err(why),
            (None, Err(e)) => Err(e.to_string()),
            (None, Ok(_)) => Ok(class),
        }
    }

    /// `ALTER TABLE … ADD COLUMN` with a CHECK constraint (or on a STRICT table) makes SQLite
    /// run `pragma_quick_check` on that table while the ALTER executes: that internal check is
    /// allowed; a user's own `quick_check` is classified and refused at run time as before.
    #[test]
    fn alter_table_add_column_with_check_runs() {
        for installed in [false, true] {
            let conn = Connection::open_in_memory().unwrap();
            crate::migrations::apply(&conn, crate::migrations::Schema::Document).unwrap();
            if installed {
                install(&conn);
            }
            conn.execute_batch(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
                 INSERT INTO t (v) VALUES ('a');
                 CREATE TABLE s (id INTEGER PRIMARY KEY) STRICT;
                 INSERT INTO s VALUES (1);",
            )
            .unwrap();
            for sql in [
                "ALTER TABLE t ADD COLUMN c INTEGER CHECK (c >= 0)",
                "ALTER TABLE t ADD COLUMN d INTEGER NOT NULL DEFAULT 0 CHECK (d >= 0)",
                "ALTER TABLE s ADD COLUMN n INTEGER",
                "ALTER TABLE \"t\" ADD COLUMN \"e f\" TEXT CHECK (length(\"e f\") < 9)",
            ] {
                assert_eq!(run(&conn, sql), Ok(Class::Admin), "{sql} ({installed})");
            }
            // The CHECK still checks: a default that breaks it is refused by SQLite itself.
            let e = run(
                &conn,
                "ALTER TABLE t ADD COLUMN g INTEGER DEFAULT -1 CHECK (g >= 0)",
            )
            .unwrap_err();
            assert!(e.contains("CHECK constraint failed"), "{e}");
            // A user's own quick_check is what it was.
            assert_eq!(run(&conn, "PRAGMA quick_check"), Ok(Class::Admin));
            assert_eq!(run(&conn, "PRAGMA quick_check(t)"), Ok(Class::Admin));
            let e = run(&conn, "SELECT * FROM pragma_quick_check('t')").unwrap_err();
            assert!(e.contains("maintenance PRAGMA"), "{e}");
            let e = run(&conn, "SELECT * FROM pragma_quick_check").unwrap_err();
            assert!(e.contains("maintenance PRAGMA"), "{e}");
            if installed {
                uninstall();
            }
        }
    }
}
