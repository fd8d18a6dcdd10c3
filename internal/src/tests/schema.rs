//! An application's schema in its document, over real HTTP: per-document migrations, caller
//! identity in SQL (`patchwork_caller()`), and row expiry with its bytes gone from the file.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::{Action, NewToken};
use crate::testing::{TestServer, scope};

async fn call(
    server: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let mut r = server.anon(method.clone(), path).bearer_auth(token);
    if method != Method::GET {
        r = r.json(&body);
    }
    let r = r.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn exec(server: &TestServer, db: &str, sql: &str, args: Value) -> Value {
    let (s, v) = call(
        server,
        &server.admin_token,
        Method::POST,
        &format!("/api/v1/db/{db}/query/exec"),
        json!({"sql": sql, "args": args}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{sql}: {v}");
    v
}

fn migration(version: i64, sql: &str) -> Value {
    json!({"version": version, "name": format!("v{version}"), "sql": sql})
}

#[tokio::test]
async fn migrations_apply_once_in_order_and_refuse_changes() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let path = "/api/v1/db/app/migrations";
    let v1 = migration(
        1,
        "CREATE TABLE lists (id INTEGER PRIMARY KEY, title TEXT NOT NULL);",
    );
    let v2 = migration(
        2,
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, list_id INTEGER REFERENCES lists(id), \
         title TEXT NOT NULL CHECK (length(title) > 0));
         CREATE INDEX tasks_list ON tasks (list_id);
         CREATE TRIGGER tasks_touch AFTER INSERT ON tasks BEGIN
             UPDATE lists SET title = title WHERE id = NEW.list_id;
         END;
         INSERT INTO lists (title) VALUES ('Inbox');",
    );
    let (s, v) = call(
        &server,
        &admin,
        Method::POST,
        path,
        json!({"migrations": [v1, v2]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["applied_now"], json!([1, 2]));
    assert_eq!(v["migrations"].as_array().unwrap().len(), 2);
    assert_eq!(v["migrations"][1]["checksum"].as_str().unwrap().len(), 64);

    // Idempotent: the same list again applies nothing (the seed row is not inserted twice).
    let (s, v) = call(
        &server,
        &admin,
        Method::POST,
        path,
        json!({"migrations": [v1, v2]}),
    )
    .await;
    assert_eq!((s, &v["applied_now"]), (StatusCode::OK, &json!([])));
    let rows = exec(&server, "app", "SELECT count(*) FROM lists", json!([])).await;
    assert_eq!(rows["rows"][0][0], 1);

    // A changed applied migration is refused.
    let edited = migration(1, "CREATE TABLE lists (id INTEGER PRIMARY KEY, name TEXT);");
    let (s, v) = call(
        &server,
        &admin,
        Method::POST,
        path,
        json!({"migrations": [edited]}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("migration_changed"))
    );

    // A failing migration rolls back only itself: v3 succeeds, v4 fails half-way (its table is
    // not left behind), v5 is not attempted.
    let v3 = migration(
        3,
        "ALTER TABLE tasks ADD COLUMN done INTEGER NOT NULL DEFAULT 0;",
    );
    let v4 = migration(
        4,
        "CREATE TABLE half (a); INSERT INTO no_such_table VALUES (1);",
    );
    let v5 = migration(5, "CREATE TABLE later (a);");
    let (s, v) = call(
        &server,
        &admin,
        Method::POST,
        path,
        json!({"migrations": [v1, v2, v3, v4, v5]}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["details"]["version"], 4);
    assert_eq!(v["error"]["details"]["applied_now"], json!([3]));
    let tables = exec(
        &server,
        "app",
        "SELECT group_concat(name) FROM (SELECT name FROM sqlite_schema WHERE type = 'table' AND name IN ('half', 'later') ORDER BY name)",
        json!([]),
    )
    .await;
    assert_eq!(
        tables["rows"][0][0],
        Value::Null,
        "neither half nor later exists"
    );
    let (_, listed) = call(&server, &admin, Method::GET, path, Value::Null).await;
    let versions: Vec<i64> = listed["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);

    // Older than what is applied: refused. Statements are classified like query.admin ones.
    let (s, v) = call(
        &server,
        &admin,
        Method::POST,
        path,
        json!({"migrations": [migration(2, "SELECT 1")]}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    for (sql, code) in [
        ("ATTACH DATABASE '/tmp/x.db' AS x;", StatusCode::FORBIDDEN),
        (
            "DELETE FROM _patchwork_app_migrations;",
            StatusCode::FORBIDDEN,
        ),
        ("SELECT ?;", StatusCode::BAD_REQUEST),
        ("  ", StatusCode::BAD_REQUEST),
    ] {
        let (s, v) = call(
            &server,
            &admin,
            Method::POST,
            path,
            json!({"migrations": [migration(10, sql)]}),
        )
        .await;
        assert_eq!(s, code, "{sql}: {v}");
    }
    let (s, _) = call(
        &server,
        &admin,
        Method::POST,
        path,
        json!({"migrations": [migration(7, "SELECT 1"), migration(6, "SELECT 1")]}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "versions must ascend");
    // Scopes: query.write is not enough to migrate; query.read may list.
    let writer = server
        .mint(vec![
            scope("app", Action::QueryWrite, None),
            scope("app", Action::QueryRead, None),
        ])
        .await;
    let (s, _) = call(
        &server,
        &writer,
        Method::POST,
        path,
        json!({"migrations": [migration(8, "SELECT 1")]}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(&server, &writer, Method::GET, path, Value::Null).await;
    assert_eq!(s, StatusCode::OK);
}

/// 64 writers with their own tokens insert at once (their writes share group commits); a
/// trigger stamps each row with `patchwork_caller()`: every row names its own writer, and a
/// client-supplied author is overwritten.
#[tokio::test]
async fn a_trigger_stamps_the_right_caller_for_64_concurrent_writers() {
    let server = TestServer::start().await;
    exec(
        &server,
        "stamp",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, author TEXT, author_name TEXT)",
        json!([]),
    )
    .await;
    exec(
        &server,
        "stamp",
        "CREATE TRIGGER notes_author AFTER INSERT ON notes BEGIN \
             UPDATE notes SET author = patchwork_caller(), author_name = patchwork_caller_name() \
             WHERE id = NEW.id; END",
        json!([]),
    )
    .await;
    let mut writers = Vec::new();
    for i in 0..64 {
        let (meta, token) = server
            .state
            .tokens
            .create(NewToken {
                label: format!("writer {i}"),
                is_admin: false,
                scopes: vec![scope("stamp", Action::QueryWrite, None)],
                expires_at: None,
            })
            .await
            .unwrap();
        writers.push((meta.id, token));
    }
    let mut tasks = Vec::new();
    for (i, (_, token)) in writers.iter().enumerate() {
        let (http, url, token) = (
            server.client.clone(),
            server.url("/api/v1/db/stamp/query/exec"),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for n in 0..5 {
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({
                        "sql": "INSERT INTO notes (body, author) VALUES (?, 'forged')",
                        "args": [format!("{i}/{n}")]
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows = exec(
        &server,
        "stamp",
        "SELECT body, author, author_name FROM notes",
        json!([]),
    )
    .await;
    let rows = rows["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 64 * 5);
    for row in rows {
        let i: usize = row[0]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(row[1], json!(writers[i].0), "row {row}");
        assert_eq!(row[2], json!(format!("writer {i}")));
    }
    // Outside a request, and in reads, the functions answer too.
    let me = exec(
        &server,
        "stamp",
        "SELECT patchwork_caller(), patchwork_caller_name()",
        json!([]),
    )
    .await;
    assert!(me["rows"][0][0].is_string(), "{me}");
}

/// Rows whose expiry time passed are deleted by the sweep, and their bytes are gone from the
/// document's files.
#[tokio::test]
async fn expired_rows_are_deleted_and_their_bytes_are_gone() {
    let server = TestServer::start_with(|c| c.retention_sweep_seconds = 1).await;
    let admin = server.admin_token.clone();
    exec(
        &server,
        "ttl",
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT, expires_at INTEGER NOT NULL)",
        json!([]),
    )
    .await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for i in 0..300 {
        exec(
            &server,
            "ttl",
            "INSERT INTO messages (body, expires_at) VALUES (?, ?)",
            json!([
                format!("SECRET-EXPIRED-{i:04}-{}", "x".repeat(200)),
                now - 5
            ]),
        )
        .await;
    }
    exec(
        &server,
        "ttl",
        "INSERT INTO messages (body, expires_at) VALUES ('STILL-HERE-MARKER', ?)",
        json!([now + 3600]),
    )
    .await;
    // Validation.
    let path = "/api/v1/db/ttl/expiry";
    for bad in [
        json!({"rules": [{"table": "nope", "column": "expires_at"}]}),
        json!({"rules": [{"table": "messages", "column": "nope"}]}),
        json!({"rules": [{"table": "_patchwork_messages", "column": "created_ms"}]}),
        json!({"rules": [{"table": "messages", "column": "expires_at", "format": "weeks"}]}),
    ] {
        let (s, v) = call(&server, &admin, Method::PUT, path, bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (s, v) = call(
        &server,
        &admin,
        Method::PUT,
        path,
        json!({"rules": [{"table": "messages", "column": "expires_at"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["rules"],
        json!([{"table": "messages", "column": "expires_at", "format": "unix_seconds"}])
    );
    let (_, v) = call(&server, &admin, Method::GET, path, Value::Null).await;
    assert_eq!(v["rules"][0]["table"], "messages");

    // The sweep (every second here) deletes them.
    let mut left = -1;
    for _ in 0..100 {
        let v = exec(&server, "ttl", "SELECT count(*) FROM messages", json!([])).await;
        left = v["rows"][0][0].as_i64().unwrap();
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 1, "only the live row is left");
    assert!(
        server
            .metrics()
            .await
            .contains("patchwork_expired_rows_total 300")
    );
    // Physically gone: neither the database file nor its WAL holds an expired row's text.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = server.dir.path().join("documents");
    let mut seen_live = false;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ttl.")
        {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(
            !hay.contains("SECRET-EXPIRED-"),
            "{} still holds expired bytes",
            path.display()
        );
        seen_live |= hay.contains("STILL-HERE-MARKER");
    }
    assert!(seen_live, "the live row is on disk");
}

/// `PUT /_settings {synchronous: full}` applies at once on the live connection, is kept in the
/// document across a restart (applied again when it opens), needs `query.admin`, and `default`
/// goes back to the server's setting.
#[tokio::test]
async fn per_document_synchronous_survives_a_restart() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let path = "/api/v1/db/durable/_settings";
    let (s, v) = call(&server, &admin, Method::GET, path, Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["synchronous"], Value::Null);
    assert_eq!(v["effective"], "normal");

    let reader = server
        .mint(vec![scope("durable", Action::QueryRead, None)])
        .await;
    let (s, _) = call(
        &server,
        &reader,
        Method::PUT,
        path,
        json!({"synchronous": "full"}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = call(
        &server,
        &admin,
        Method::PUT,
        path,
        json!({"synchronous": "fsync"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let (s, v) = call(
        &server,
        &admin,
        Method::PUT,
        path,
        json!({"synchronous": "full"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["synchronous"], "full");
    assert_eq!(v["effective"], "full");
    // Another document is untouched.
    let (_, v) = call(
        &server,
        &admin,
        Method::GET,
        "/api/v1/db/other/_settings",
        Value::Null,
    )
    .await;
    assert_eq!(v["effective"], "normal");

    let dir = server.stop_keeping_data().await.unwrap();
    let server = TestServer::restart_on(dir, &admin).await;
    let (s, v) = call(&server, &reader, Method::GET, path, Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["synchronous"], "full");
    assert_eq!(
        v["effective"], "full",
        "applied again when the document opened"
    );

    let (_, v) = call(
        &server,
        &admin,
        Method::PUT,
        path,
        json!({"synchronous": "default"}),
    )
    .await;
    assert_eq!(v["synchronous"], Value::Null);
    assert_eq!(v["effective"], "normal");
    server.stop().await.unwrap();
}
