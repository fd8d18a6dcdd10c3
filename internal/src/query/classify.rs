//! Statement classification decided by SQLite, never by a keyword: the statement is prepared
//! with an authorizer that records what SQLite says it will do, and `sqlite3_stmt_readonly`
//! tells whether it writes. `ATTACH`, `DETACH`, `load_extension`, transaction control and
//! `VACUUM INTO` are refused for everyone; Patchwork's own `_patchwork_*` tables are read-only.

use std::sync::{Arc, Mutex};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, Statement};

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

#[derive(Default)]
struct Seen {
    /// Tables the statement reads (lower-cased), for watch invalidation.
    reads: std::collections::BTreeSet<String>,
    data_write: bool,
    schema: bool,
    pragma: bool,
    refused: Option<String>,
}

fn observe(seen: &mut Seen, ctx: &AuthContext<'_>) -> Authorization {
    let mut refuse = |why: String| {
        seen.refused.get_or_insert(why);
        Authorization::Deny
    };
    let internal = |t: &str| t.starts_with("_patchwork_");
    match ctx.action {
        AuthAction::Attach { .. } => return refuse("ATTACH is not allowed".into()),
        AuthAction::Detach { .. } => return refuse("DETACH is not allowed".into()),
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
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name } => {
            if internal(table_name) {
                return refuse(format!(
                    "{table_name} is maintained by Patchwork and is read-only"
                ));
            }
            seen.data_write = true;
        }
        // Patchwork inserts deliveries into `webhook_inbox` itself (without this authorizer),
        // so a trigger there could write what the caller may not.
        AuthAction::CreateTrigger {
            table_name: "webhook_inbox",
            ..
        } => {
            return refuse("triggers on webhook_inbox are not allowed".into());
        }
        AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::CreateTable { table_name }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
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
        AuthAction::CreateTempTable { table_name }
        | AuthAction::CreateTempIndex { table_name, .. } => {
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
        // The pragma's argument may be a value (`= DELETE`) or a name (`table_info(t)`); whether
        // it writes is what `sqlite3_stmt_readonly` says.
        AuthAction::Pragma { .. } => seen.pragma = true,
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

/// Prepares `sql` (exactly one statement) and classifies it.
pub fn prepare<'c>(
    conn: &'c Connection,
    sql: &str,
) -> Result<(Statement<'c>, Class), ClassifyError> {
    prepare_with_reads(conn, sql).map(|(stmt, class, _)| (stmt, class))
}

/// Tables a statement reads, lower-cased (views are expanded by SQLite into their tables).
pub type ReadSet = std::collections::BTreeSet<String>;

/// As [`prepare`], plus the statement's read set, for watch invalidation.
pub fn prepare_with_reads<'c>(
    conn: &'c Connection,
    sql: &str,
) -> Result<(Statement<'c>, Class, ReadSet), ClassifyError> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = seen.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        observe(&mut sink.lock().unwrap_or_else(|p| p.into_inner()), &ctx)
    }));
    let prepared = conn.prepare(sql);
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
    let mut seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    let stmt = match prepared {
        Ok(stmt) => stmt,
        Err(_) if seen.refused.is_some() => {
            return Err(ClassifyError::Refused(seen.refused.unwrap_or_default()));
        }
        Err(rusqlite::Error::MultipleStatement) => return Err(ClassifyError::Multiple),
        Err(e) => return Err(ClassifyError::Sql(e)),
    };
    if let Some(why) = seen.refused.take() {
        return Err(ClassifyError::Refused(why));
    }
    // Only whitespace and comments prepare to no statement at all.
    if stmt.expanded_sql().is_none() {
        return Err(ClassifyError::Empty);
    }
    let readonly = stmt.readonly();
    // VACUUM is invisible to the authorizer: look at the compiled program instead.
    if !readonly && !seen.data_write && vacuums_into(conn, sql)? {
        return Err(ClassifyError::Refused("VACUUM INTO is not allowed".into()));
    }
    let class = if readonly {
        Class::Read
    } else if seen.schema || seen.pragma || !seen.data_write {
        Class::Admin
    } else {
        Class::Write
    };
    Ok((stmt, class, seen.reads))
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
            .map(|(_, c)| c)
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
            ("PRAGMA journal_mode=DELETE", Ok(Class::Admin)),
            ("PRAGMA user_version = 3", Ok(Class::Admin)),
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
        for (sql, want) in cases {
            let got = classify(&conn, sql);
            match (want, &got) {
                (Ok(c), Ok(g)) => assert_eq!(c, g, "{sql}"),
                (Err(needle), Err(e)) => assert!(e.contains(needle), "{sql}: {e}"),
                _ => panic!("{sql}: want {want:?}, got {got:?}"),
            }
        }
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
}
