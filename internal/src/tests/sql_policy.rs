//! The statement policy as a hostile client meets it over HTTP: PRAGMAs (every one SQLite
//! lists, in query and assignment form, against each scope), Patchwork's internal state reached
//! through SQLite's own tables, DDL answers, and values too large to build.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::Action;
use crate::query::classify::{PragmaAccess, pragma_access};
use crate::registry::DbId;
use crate::testing::TestServer;

async fn exec(server: &TestServer, token: &str, db: &str, sql: &str) -> (StatusCode, Value) {
    let r = server
        .anon(Method::POST, &format!("/api/v1/db/{db}/query/exec"))
        .bearer_auth(token)
        .json(&json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn token_with(server: &TestServer, db: &str, action: Action) -> String {
    server
        .mint(vec![crate::testing::scope(db, action, None)])
        .await
}

fn refused(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::FORBIDDEN && body["error"]["details"]["reason"] == "refused_statement"
}

/// PRAGMAs whose query form does something beyond reading (or reads what changes by itself);
/// left out of the connection snapshot.
const NOT_SNAPSHOTTED: &[&str] = &[
    "data_version",
    "freelist_count",
    "incremental_vacuum",
    "integrity_check",
    "optimize",
    "page_count",
    "quick_check",
    "shrink_memory",
    "stats",
    "wal_checkpoint",
    "foreign_key_check",
    // Lists `temp` once SQLite has opened it lazily (allowed statements may).
    "database_list",
    // Set by query.admin in the table below, on purpose.
    "user_version",
    "application_id",
];

/// Every PRAGMA's query-form answer, read on the document's own connection (bypassing the
/// policy): what a refused PRAGMA must leave unchanged.
async fn snapshot(server: &TestServer, db: &str) -> BTreeMap<String, String> {
    let doc = server
        .state
        .registry
        .get(&DbId::parse(db).unwrap())
        .await
        .unwrap();
    doc.read(|conn| {
        let names: Vec<String> = conn
            .prepare("SELECT name FROM pragma_pragma_list ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = BTreeMap::new();
        for name in names {
            if NOT_SNAPSHOTTED.contains(&name.as_str()) {
                continue;
            }
            let mut stmt = match conn.prepare(&format!("PRAGMA {name}")) {
                Ok(stmt) => stmt,
                Err(e) => {
                    out.insert(name, format!("error: {e}"));
                    continue;
                }
            };
            let ncols = stmt.column_count();
            let mut rows = stmt.query([])?;
            let mut text = String::new();
            while let Some(row) = rows.next()? {
                for i in 0..ncols {
                    text.push_str(&format!("{:?}|", row.get_ref(i)?));
                }
                text.push('\n');
            }
            out.insert(name, text);
        }
        Ok(out)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn every_pragma_in_both_forms_against_every_scope() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let db = "prag";
    assert_eq!(
        exec(
            &server,
            &admin,
            db,
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"
        )
        .await
        .0,
        StatusCode::OK
    );
    let reader = token_with(&server, db, Action::QueryRead).await;
    let writer = token_with(&server, db, Action::QueryWrite).await;
    let schema = token_with(&server, db, Action::QueryAdmin).await;
    let names: Vec<String> = {
        let doc = server
            .state
            .registry
            .get(&DbId::parse(db).unwrap())
            .await
            .unwrap();
        doc.read(|conn| {
            Ok(conn
                .prepare("SELECT name FROM pragma_pragma_list ORDER BY name")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .unwrap()
    };
    assert!(names.len() > 50, "pragma_list: {names:?}");
    let heap_before = (
        rusqlite_global("hard_heap_limit", &server, db).await,
        rusqlite_global("soft_heap_limit", &server, db).await,
    );
    // `PRAGMA optimize` (query.admin, allowed) creates the statistics tables the first time;
    // run it once before the snapshot so the table below leaves the schema as it found it.
    assert_eq!(
        exec(&server, &schema, db, "PRAGMA optimize").await.0,
        StatusCode::OK
    );
    let before = snapshot(&server, db).await;

    let mut checked = 0;
    for name in &names {
        // The query form, and an assignment that would change something if it ran.
        for (sql, value) in [
            (format!("PRAGMA {name}"), None),
            (format!("PRAGMA {name} = 1"), Some("1")),
        ] {
            let access = pragma_access(name, value);
            for (who, token) in [
                ("query.read", &reader),
                ("query.write", &writer),
                ("query.admin", &schema),
                ("admin token", &admin),
            ] {
                let (status, body) = exec(&server, token, db, &sql).await;
                let allowed = match access {
                    PragmaAccess::Refused => false,
                    PragmaAccess::Read => who == "query.read" || who == "admin token",
                    PragmaAccess::Admin => who == "query.admin" || who == "admin token",
                };
                if allowed {
                    // Runs (`= 1` may name a table that does not exist: SQLite's own error).
                    let ran = status == StatusCode::OK
                        || (status == StatusCode::BAD_REQUEST
                            && body["error"]["code"] == "sql_error");
                    assert!(ran, "{sql} as {who}: {status} {body}");
                } else if access == PragmaAccess::Refused {
                    assert!(refused(status, &body), "{sql} as {who}: {status} {body}");
                } else {
                    // Forbidden, or did not compile (`= 1` naming no table) before the scope
                    // check: either way it never ran.
                    let stopped = status == StatusCode::FORBIDDEN
                        || (status == StatusCode::BAD_REQUEST
                            && body["error"]["code"] == "sql_error");
                    assert!(stopped, "{sql} as {who}: {status} {body}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, names.len() * 2 * 4);
    // Nothing refused took effect: the connection and the process-wide heap limits are as they
    // were, and the document still takes writes (no `query_only`, no `max_page_count`).
    let after = snapshot(&server, db).await;
    for (name, was) in &before {
        assert_eq!(after.get(name), Some(was), "PRAGMA {name} changed");
    }
    let heap_after = (
        rusqlite_global("hard_heap_limit", &server, db).await,
        rusqlite_global("soft_heap_limit", &server, db).await,
    );
    assert_eq!(heap_before, heap_after);
    let (s, v) = exec(
        &server,
        &writer,
        db,
        "INSERT INTO t (v) VALUES ('still writable')",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn rusqlite_global(name: &'static str, server: &TestServer, db: &str) -> i64 {
    let doc = server
        .state
        .registry
        .get(&DbId::parse(db).unwrap())
        .await
        .unwrap();
    doc.read(move |conn| Ok(conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?))
        .await
        .unwrap()
}

#[tokio::test]
async fn heap_limit_through_a_read_scope_is_refused_and_takes_no_effect() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let reader = token_with(&server, "victim", Action::QueryRead).await;
    for sql in [
        "PRAGMA hard_heap_limit=1000",
        "PRAGMA soft_heap_limit=1000",
        "PRAGMA query_only=1",
        "PRAGMA synchronous=OFF",
        "PRAGMA trusted_schema=1",
        "PRAGMA writable_schema=ON",
        "PRAGMA foreign_keys=OFF",
        "PRAGMA ignore_check_constraints=1",
        "PRAGMA locking_mode=EXCLUSIVE",
        "PRAGMA max_page_count=10",
        "PRAGMA database_list",
        "SELECT * FROM pragma_database_list",
        "SELECT count(*) FROM pragma_database_list",
        "SELECT 1 FROM pragma_optimize",
        "SELECT * FROM pragma_integrity_check",
    ] {
        let (s, v) = exec(&server, &reader, "victim", sql).await;
        assert!(refused(s, &v), "{sql}: {s} {v}");
        // Refused for an admin token too: the connection is everyone's.
        let (s, v) = exec(&server, &admin, "victim", sql).await;
        assert!(refused(s, &v), "{sql} as admin: {s} {v}");
    }
    // Every document, the token store and writes still work.
    for db in ["victim", "bystander"] {
        let (s, v) = exec(&server, &admin, db, "CREATE TABLE IF NOT EXISTS x (v)").await;
        assert_eq!(s, StatusCode::OK, "{db}: {v}");
        let (s, v) = exec(
            &server,
            &admin,
            db,
            "INSERT INTO x VALUES (randomblob(1000))",
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{db}: {v}");
    }
    let r = server
        .admin(Method::GET, "/api/v1/admin/tokens")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Read-listed introspection works for the reader, in both spellings.
    for sql in [
        "PRAGMA table_info(x)",
        "SELECT name FROM pragma_table_info('x')",
        "PRAGMA user_version",
    ] {
        let (s, v) = exec(&server, &reader, "victim", sql).await;
        assert_eq!(s, StatusCode::OK, "{sql}: {v}");
    }
}

#[tokio::test]
async fn internal_state_is_out_of_reach_through_sqlite_tables() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let db = "seq";
    let writer = token_with(&server, db, Action::QueryWrite).await;
    let publish = |topic: &'static str| {
        server
            .admin(Method::POST, &format!("/api/v1/db/{db}/messages"))
            .json(&json!({"topic": topic, "payload_text": "hi"}))
            .send()
    };
    assert_eq!(publish("a").await.unwrap().status(), StatusCode::CREATED);
    let (s, v) = exec(
        &server,
        &writer,
        db,
        "UPDATE sqlite_sequence SET seq=9223372036854775807 WHERE name='_patchwork_messages'",
    )
    .await;
    assert!(refused(s, &v), "{s} {v}");
    for sql in [
        "DELETE FROM sqlite_sequence",
        "INSERT INTO sqlite_sequence VALUES ('_patchwork_messages', 1)",
    ] {
        let (s, v) = exec(&server, &admin, db, sql).await;
        assert!(refused(s, &v), "{sql}: {s} {v}");
    }
    assert_eq!(publish("b").await.unwrap().status(), StatusCode::CREATED);

    // Views and triggers over Patchwork's tables cannot write them either.
    let steps = [
        "CREATE VIEW mv AS SELECT * FROM _patchwork_messages",
        "CREATE TRIGGER mv_ins INSTEAD OF INSERT ON mv BEGIN \
         UPDATE _patchwork_messages SET topic = 'forged'; END",
        "CREATE TABLE log (v)",
        "CREATE TRIGGER log_ins AFTER INSERT ON log BEGIN \
         DELETE FROM _patchwork_messages; END",
    ];
    for sql in steps {
        let (s, v) = exec(&server, &admin, db, sql).await;
        assert_eq!(s, StatusCode::OK, "{sql}: {v}");
    }
    for sql in [
        "INSERT INTO mv (topic) VALUES ('x')",
        "INSERT INTO log VALUES (1)",
    ] {
        let (s, v) = exec(&server, &admin, db, sql).await;
        assert!(refused(s, &v), "{sql}: {s} {v}");
    }
    // A table renamed into Patchwork's namespace is refused and the rename undone.
    let (s, v) = exec(
        &server,
        &admin,
        db,
        "ALTER TABLE log RENAME TO _patchwork_log",
    )
    .await;
    assert!(refused(s, &v), "{s} {v}");
    let (s, v) = exec(&server, &admin, db, "SELECT count(*) FROM log").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = exec(
        &server,
        &admin,
        db,
        "SELECT count(*), min(topic) FROM _patchwork_messages",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rows"], json!([[2, "a"]]));
}

#[tokio::test]
async fn write_answers_report_only_their_own_changes() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let db = "ans";
    let other = "INSERT INTO t (v) VALUES ('x'), ('y'), ('z')";
    exec(
        &server,
        &admin,
        db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v)",
    )
    .await;
    let (_, v) = exec(&server, &admin, db, other).await;
    assert_eq!(
        (v["rows_affected"].clone(), v["last_insert_id"].clone()),
        (json!(3), json!(3))
    );
    // DDL after another client's insert: nothing of that insert leaks.
    for sql in [
        "CREATE TABLE u (x)",
        "CREATE INDEX t_v ON t (v)",
        "DROP TABLE u",
        "PRAGMA user_version = 4",
    ] {
        let (s, v) = exec(&server, &admin, db, sql).await;
        assert_eq!(s, StatusCode::OK, "{sql}: {v}");
        assert_eq!(v["rows_affected"], json!(0), "{sql}: {v}");
        assert_eq!(v["last_insert_id"], Value::Null, "{sql}: {v}");
    }
    let (_, v) = exec(&server, &admin, db, "UPDATE t SET v = 'w' WHERE id < 3").await;
    assert_eq!(v["rows_affected"], json!(2));
    assert_eq!(
        v["last_insert_id"],
        Value::Null,
        "an UPDATE inserted nothing: {v}"
    );
    let (_, v) = exec(&server, &admin, db, "DELETE FROM t WHERE id = 99").await;
    assert_eq!(
        (v["rows_affected"].clone(), v["last_insert_id"].clone()),
        (json!(0), Value::Null)
    );
    let (_, v) = exec(
        &server,
        &admin,
        db,
        "INSERT OR IGNORE INTO t (id, v) VALUES (1, 'dup')",
    )
    .await;
    assert_eq!(
        (v["rows_affected"].clone(), v["last_insert_id"].clone()),
        (json!(0), Value::Null)
    );
    let (_, v) = exec(&server, &admin, db, "INSERT INTO t (v) VALUES ('n')").await;
    assert_eq!(
        (v["rows_affected"].clone(), v["last_insert_id"].clone()),
        (json!(1), json!(4))
    );
}

#[tokio::test]
async fn huge_values_are_refused_before_they_are_allocated() {
    let server = TestServer::start().await;
    let reader = token_with(&server, "big", Action::QueryRead).await;
    for sql in [
        "SELECT length(randomblob(999999999))",
        "SELECT length(zeroblob(999999999))",
        "SELECT length(replace(hex(zeroblob(1000000)), '0', 'xyz'))",
    ] {
        let (s, v) = exec(&server, &reader, "big", sql).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{sql}: {v}");
    }
    // Values up to the request size still work.
    let (s, v) = exec(
        &server,
        &reader,
        "big",
        "SELECT length(randomblob(1000000))",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rows"], json!([[1_000_000]]));
    // Whitespace is still "empty", not an out-of-memory report.
    let (s, v) = exec(&server, &reader, "big", "  /* nothing */ ").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "empty_statement");
}

#[tokio::test]
async fn ddl_cannot_tie_user_tables_to_internal_ones() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let db = "fk";
    for sql in [
        // A cascade from Patchwork's own deletes would run this table's triggers unchecked.
        "CREATE TABLE evil (m INTEGER REFERENCES _patchwork_messages(id) ON DELETE CASCADE)",
        "CREATE TABLE evil2 (e TEXT REFERENCES webhook_inbox(id))",
        "CREATE TRIGGER _patchwork_later AFTER INSERT ON webhook_inbox BEGIN SELECT 1; END",
        "VACUUM INTO lower('/tmp/pw-vacuum-into.db')",
    ] {
        let (s, v) = exec(&server, &admin, db, sql).await;
        assert!(refused(s, &v), "{sql}: {s} {v}");
    }
    let (s, v) = exec(
        &server,
        &admin,
        db,
        "CREATE TABLE ok (id INTEGER PRIMARY KEY)",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = exec(
        &server,
        &admin,
        db,
        "ALTER TABLE ok ADD COLUMN l TEXT REFERENCES _patchwork_leases(resource)",
    )
    .await;
    assert!(refused(s, &v), "{s} {v}");
    // Refused DDL left nothing behind.
    let (_, v) = exec(
        &server,
        &admin,
        db,
        "SELECT group_concat(name) FROM pragma_table_info('ok')",
    )
    .await;
    assert_eq!(v["rows"], json!([["id"]]));
    let (_, v) = exec(
        &server,
        &admin,
        db,
        "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'evil%'",
    )
    .await;
    assert_eq!(v["rows"], json!([[0]]));
    // SQLite's own bookkeeping in sqlite_sequence / sqlite_stat1 is still allowed.
    for sql in [
        "CREATE TABLE auto (id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
        "INSERT INTO auto (v) VALUES (1)",
        "CREATE INDEX auto_v ON auto (v)",
        "ANALYZE",
        "ALTER TABLE auto RENAME TO auto2",
        "DROP INDEX auto_v",
        "DROP TABLE auto2",
    ] {
        let (s, v) = exec(&server, &admin, db, sql).await;
        assert_eq!(s, StatusCode::OK, "{sql}: {v}");
    }
}

#[tokio::test]
async fn last_insert_id_is_only_ever_the_statements_own() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let db = "rowids";
    for sql in [
        "CREATE TABLE a (id INTEGER PRIMARY KEY, v)",
        "CREATE TABLE b (id INTEGER PRIMARY KEY, v)",
        "CREATE TABLE k (k TEXT PRIMARY KEY, v) WITHOUT ROWID",
        "CREATE TABLE u (id INTEGER PRIMARY KEY, n INTEGER)",
    ] {
        exec(&server, &admin, db, sql).await;
    }
    // Two tables' first rows share rowid 1: both answers say so.
    for table in ["a", "b"] {
        let (_, v) = exec(
            &server,
            &admin,
            db,
            &format!("INSERT INTO {table} (v) VALUES (1)"),
        )
        .await;
        assert_eq!(v["last_insert_id"], json!(1), "{table}: {v}");
    }
    let (_, v) = exec(&server, &admin, db, "INSERT INTO a (v) VALUES (2)").await;
    assert_eq!(v["last_insert_id"], json!(2));
    for sql in [
        "INSERT INTO k VALUES ('x', 1)",
        "INSERT INTO u (id, n) VALUES (1, 1)",
    ] {
        exec(&server, &admin, db, sql).await;
    }
    for sql in [
        "INSERT INTO k VALUES ('y', 1)",
        "INSERT INTO u (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1",
    ] {
        let (s, v) = exec(&server, &admin, db, sql).await;
        assert_eq!(s, StatusCode::OK, "{sql}: {v}");
        assert_eq!(v["rows_affected"], json!(1), "{sql}: {v}");
        assert_eq!(v["last_insert_id"], Value::Null, "{sql}: {v}");
    }
}
