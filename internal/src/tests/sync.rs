//! Sync over real HTTP: the change log, `changes` as JSON and as a changeset, snapshots taken
//! under load, retention (`410`), live SSE with resume, and `Range` on snapshots.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use rusqlite::Connection;
use rusqlite::session::{ConflictAction, ConflictType};
use serde_json::{Value, json};

use crate::testing::{SseReader, TestServer};

async fn exec(server: &TestServer, db: &str, sql: &str, args: Value) -> Value {
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/query/exec"))
        .json(&json!({"sql": sql, "args": args}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{sql}");
    r.json().await.unwrap()
}

async fn get(server: &TestServer, path: &str) -> reqwest::Response {
    server.admin(Method::GET, path).send().await.unwrap()
}

/// Every user table's rows, ordered, as text (what "the same state" means here).
fn dump(conn: &Connection) -> BTreeMap<String, Vec<String>> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables
        .into_iter()
        .map(|t| {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1"))
                .unwrap();
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            (t, rows)
        })
        .collect()
}

/// The server document's user tables, read on its own connection.
async fn server_dump(server: &TestServer, db: &str) -> BTreeMap<String, Vec<String>> {
    let doc = server
        .state
        .registry
        .get(&crate::registry::DbId::parse(db).unwrap())
        .await
        .unwrap();
    doc.read(|conn| Ok(dump(conn))).await.unwrap()
}

fn apply(conn: &Connection, changeset: &[u8]) {
    let mut input: &[u8] = changeset;
    conn.apply_strm(
        &mut input,
        None::<fn(&str) -> bool>,
        |_kind: ConflictType, _item| ConflictAction::SQLITE_CHANGESET_ABORT,
    )
    .unwrap();
}

#[tokio::test]
async fn status_and_json_changes_follow_every_commit() {
    let server = TestServer::start().await;
    let db = "s1";
    exec(
        &server,
        db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n REAL)",
        json!([]),
    )
    .await;
    exec(&server, db, "CREATE TABLE loose (v)", json!([])).await;
    let status: Value = get(&server, &format!("/api/v1/db/{db}/sync/status"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["tables"], json!(["blobs", "t", "webhook_inbox"]));
    assert_eq!(status["tables_without_primary_key"], json!(["loose"]));
    let v0 = status["version"].as_i64().unwrap();

    exec(
        &server,
        db,
        "INSERT INTO t (id, v, n) VALUES (1, 'a', 1.5), (2, 'b', NULL)",
        json!([]),
    )
    .await;
    exec(&server, db, "UPDATE t SET v = 'A' WHERE id = 1", json!([])).await;
    exec(&server, db, "DELETE FROM t WHERE id = 2", json!([])).await;
    // Not tracked (no primary key), and a publish: neither makes a sync version of its own.
    exec(&server, db, "INSERT INTO loose VALUES (1)", json!([])).await;

    let r = get(
        &server,
        &format!("/api/v1/db/{db}/sync/changes?since={v0}&format=json"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let patch_version: i64 = r.headers()["patch-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["version"], json!(patch_version));
    let changes = body["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 4, "{body}");
    assert_eq!(changes[0]["op"], "insert");
    assert_eq!(changes[0]["table"], "t");
    assert_eq!(changes[0]["pk"], json!({"id": 1}));
    assert_eq!(changes[0]["new"], json!({"id": 1, "v": "a", "n": 1.5}));
    assert_eq!(changes[2]["op"], "update");
    assert_eq!(changes[2]["old"]["v"], "a");
    assert_eq!(changes[2]["new"]["v"], "A");
    assert_eq!(changes[3]["op"], "delete");
    assert_eq!(changes[3]["pk"], json!({"id": 2}));
    // Versions rise with each commit.
    let versions: Vec<i64> = changes
        .iter()
        .map(|c| c["version"].as_i64().unwrap())
        .collect();
    assert!(
        versions[0] > v0
            && versions[0] == versions[1]
            && versions[2] > versions[1]
            && versions[3] > versions[2]
    );

    // Nothing after the latest version; ahead of it is a clear 400.
    let body: Value = get(
        &server,
        &format!("/api/v1/db/{db}/sync/changes?since={patch_version}&format=json"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["changes"], json!([]));
    for (query, code) in [
        (format!("since={}", patch_version + 5), "invalid_since"),
        ("format=json".to_owned(), "invalid_query"),
        ("since=1&format=xml".to_owned(), "invalid_query"),
    ] {
        let r = get(&server, &format!("/api/v1/db/{db}/sync/changes?{query}")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], code, "{query}");
    }
}

#[tokio::test]
async fn snapshot_under_load_plus_changes_reproduces_the_server() {
    let server = TestServer::start().await;
    let db = "s2";
    exec(
        &server,
        db,
        "CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT)",
        json!([]),
    )
    .await;
    exec(
        &server,
        db,
        "CREATE TABLE b (k TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID",
        json!([]),
    )
    .await;

    // Eight writers run while the snapshot is taken.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let server_url = server.url("");
            let token = server.admin_token.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in 0..40 {
                    let r = client
                        .post(format!("{server_url}/api/v1/db/s2/query/exec"))
                        .bearer_auth(&token)
                        .json(&json!({"sql": "INSERT INTO a (v) VALUES (?)", "args": [format!("w{w}-{i}")]}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::OK);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = get(&server, &format!("/api/v1/db/{db}/sync/snapshot")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/vnd.sqlite3");
    let version: i64 = r.headers()["patch-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.headers()["etag"], format!("\"{version}\""));
    let bytes = r.bytes().await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local.sqlite3");
    std::fs::write(&path, &bytes).unwrap();
    let local = Connection::open(&path).unwrap();
    let ok: String = local
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let internal: i64 = local
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_patchwork%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(internal, 0, "Patchwork's tables are not in a snapshot");

    // 1,000 random write transactions after the snapshot.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..1_000 {
        let (sql, args) = match rng.random_range(0..6) {
            0 => ("INSERT INTO a (v) VALUES (?)", json!([format!("r{i}")])),
            1 => (
                "UPDATE a SET v = ? WHERE id = ?",
                json!([format!("u{i}"), rng.random_range(1..400)]),
            ),
            2 => (
                "DELETE FROM a WHERE id = ?",
                json!([rng.random_range(1..400)]),
            ),
            3 | 4 => (
                "INSERT INTO b (k, n) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET n = n + excluded.n",
                json!([format!("k{}", rng.random_range(0..50)), i]),
            ),
            _ => (
                "DELETE FROM b WHERE k = ?",
                json!([format!("k{}", rng.random_range(0..50))]),
            ),
        };
        exec(&server, db, sql, args).await;
    }
    let r = get(
        &server,
        &format!("/api/v1/db/{db}/sync/changes?since={version}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        super::super::sync::CHANGESET_TYPE
    );
    let changeset = r.bytes().await.unwrap();
    apply(&local, &changeset);
    let (mine, theirs) = (dump(&local), server_dump(&server, db).await);
    for (table, rows) in &theirs {
        let local_rows = mine.get(table).cloned().unwrap_or_default();
        assert!(
            local_rows == *rows,
            "table {table}: {} rows here, {} on the server",
            local_rows.len(),
            rows.len()
        );
    }
    assert_eq!(mine.len(), theirs.len());
}

#[tokio::test]
async fn changes_past_retention_are_gone() {
    let server = TestServer::start_with(|c| {
        c.sync_retention_versions = 3;
        c.sync_retention_secs = 1;
    })
    .await;
    let db = "s3";
    exec(
        &server,
        db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY)",
        json!([]),
    )
    .await;
    for i in 0..5 {
        exec(&server, db, "INSERT INTO t VALUES (?)", json!([i])).await;
    }
    // Older than a second and beyond the newest three: pruned by the next commits.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    for i in 5..10 {
        exec(&server, db, "INSERT INTO t VALUES (?)", json!([i])).await;
    }
    let status: Value = get(&server, &format!("/api/v1/db/{db}/sync/status"))
        .await
        .json()
        .await
        .unwrap();
    let oldest = status["oldest_version"].as_i64().unwrap();
    assert!(oldest > 0, "{status}");
    let r = get(
        &server,
        &format!("/api/v1/db/{db}/sync/changes?since={}", oldest - 1),
    )
    .await;
    assert_eq!(r.status(), StatusCode::GONE);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "version_gone");
    assert_eq!(e["error"]["details"]["oldest_version"], json!(oldest));
    assert_eq!(
        e["error"]["details"]["snapshot"],
        format!("/api/v1/db/{db}/sync/snapshot")
    );
    // At the boundary it still answers.
    let r = get(
        &server,
        &format!("/api/v1/db/{db}/sync/changes?since={oldest}&format=json"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn live_changes_arrive_once_in_order_across_a_reconnect() {
    let server = TestServer::start().await;
    let db = "s4";
    exec(
        &server,
        db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v)",
        json!([]),
    )
    .await;
    let since: i64 = get(&server, &format!("/api/v1/db/{db}/sync/status"))
        .await
        .json::<Value>()
        .await
        .unwrap()["version"]
        .as_i64()
        .unwrap();
    // The token in the query under either name the auth layer takes (`EventSource`).
    let open = |after: Option<String>| {
        let key = if after.is_some() {
            "token"
        } else {
            "access_token"
        };
        let mut req = server.anon(
            Method::GET,
            &format!(
                "/api/v1/db/{db}/sync/changes?since={since}&format=json&live=true&{key}={}",
                server.admin_token
            ),
        );
        if let Some(id) = after {
            req = req.header("last-event-id", id);
        }
        req.send()
    };
    let mut stream = SseReader::new(open(None).await.unwrap());
    for i in 0..3 {
        exec(&server, db, "INSERT INTO t VALUES (?, 'x')", json!([i])).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = stream
            .next_non_heartbeat(Duration::from_secs(5))
            .await
            .expect("an event");
        assert_eq!(e.event, "changes");
        let data = e.json();
        assert_eq!(e.id.as_deref(), Some(data["version"].to_string().as_str()));
        assert_eq!(data["changes"][0]["new"]["id"], json!(seen.len()));
        seen.push(data["version"].as_i64().unwrap());
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    drop(stream);
    // Two more while away; resuming from the last id gets exactly those.
    for i in 3..5 {
        exec(&server, db, "INSERT INTO t VALUES (?, 'y')", json!([i])).await;
    }
    let mut stream = SseReader::new(open(Some(seen[2].to_string())).await.unwrap());
    for want in 3..5 {
        let e = stream
            .next_non_heartbeat(Duration::from_secs(5))
            .await
            .expect("an event");
        assert_eq!(e.json()["changes"][0]["new"]["id"], json!(want));
    }
    assert!(
        stream
            .next_non_heartbeat(Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn snapshot_ranges_for_the_same_version() {
    let server = TestServer::start().await;
    let db = "s5";
    exec(
        &server,
        db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v)",
        json!([]),
    )
    .await;
    exec(
        &server,
        db,
        "INSERT INTO t VALUES (1, randomblob(20000))",
        json!([]),
    )
    .await;
    let full = get(&server, &format!("/api/v1/db/{db}/sync/snapshot")).await;
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    let whole = full.bytes().await.unwrap();
    let r = server
        .admin(Method::GET, &format!("/api/v1/db/{db}/sync/snapshot"))
        .header("range", "bytes=100-199")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{}", whole.len())
    );
    assert_eq!(r.bytes().await.unwrap(), whole.slice(100..200));
    // Another version meanwhile: the range is not served, the whole new file is.
    exec(&server, db, "INSERT INTO t VALUES (2, 'z')", json!([])).await;
    let r = server
        .admin(Method::GET, &format!("/api/v1/db/{db}/sync/snapshot"))
        .header("range", "bytes=100-199")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);
    let r = server
        .admin(Method::GET, &format!("/api/v1/db/{db}/sync/snapshot"))
        .header("range", "bytes=99999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn without_rowid_upserts_are_logged() {
    let server = TestServer::start().await;
    let db = "s6";
    exec(
        &server,
        db,
        "CREATE TABLE b (k TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID",
        json!([]),
    )
    .await;
    let v0: i64 = get(&server, &format!("/api/v1/db/{db}/sync/status"))
        .await
        .json::<Value>()
        .await
        .unwrap()["version"]
        .as_i64()
        .unwrap();
    exec(
        &server,
        db,
        "INSERT INTO b (k, n) VALUES ('x', 1) ON CONFLICT (k) DO UPDATE SET n = n + excluded.n",
        json!([]),
    )
    .await;
    exec(
        &server,
        db,
        "INSERT INTO b (k, n) VALUES ('x', 2) ON CONFLICT (k) DO UPDATE SET n = n + excluded.n",
        json!([]),
    )
    .await;
    let body: Value = get(
        &server,
        &format!("/api/v1/db/{db}/sync/changes?since={v0}&format=json"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["changes"].as_array().unwrap().len(), 2, "{body}");
}

/// A local copy at the server's current version (a snapshot), for building changesets.
async fn local_copy(server: &TestServer, db: &str, dir: &std::path::Path) -> (Connection, i64) {
    let r = get(server, &format!("/api/v1/db/{db}/sync/snapshot")).await;
    let version: i64 = r.headers()["patch-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let path = dir.join(format!("{db}-{version}.sqlite3"));
    std::fs::write(&path, r.bytes().await.unwrap()).unwrap();
    (Connection::open(path).unwrap(), version)
}

/// The changeset of `edits` made to `conn`.
fn edit(conn: &Connection, edits: &str) -> Vec<u8> {
    let mut session = rusqlite::session::Session::new(conn).unwrap();
    session.attach(None::<&str>).unwrap();
    conn.execute_batch(edits).unwrap();
    let mut out = Vec::new();
    session.changeset_strm(&mut out).unwrap();
    out
}

async fn push(
    server: &TestServer,
    db: &str,
    policy: &str,
    base: i64,
    cs: Vec<u8>,
) -> (StatusCode, Value) {
    let r = server
        .admin(
            Method::POST,
            &format!("/api/v1/db/{db}/sync/changes?on_conflict={policy}"),
        )
        .header("content-type", "application/vnd.sqlite3-changeset")
        .header("patch-base-version", base.to_string())
        .body(cs)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn rows(server: &TestServer, db: &str) -> Value {
    exec(server, db, "SELECT id, v FROM t ORDER BY id", json!([])).await["rows"].clone()
}

#[tokio::test]
async fn push_with_each_conflict_policy() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    for (db, policy) in [
        ("pa", "abort"),
        ("ps", "server_wins"),
        ("pc", "client_wins"),
    ] {
        exec(
            &server,
            db,
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
            json!([]),
        )
        .await;
        exec(
            &server,
            db,
            "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (4, 'd')",
            json!([]),
        )
        .await;
        let (local, base) = local_copy(&server, db, dir.path()).await;
        // Meanwhile on the server: row 1 changed, row 2 deleted, row 4 changed.
        exec(
            &server,
            db,
            "UPDATE t SET v = 'server' WHERE id IN (1, 4)",
            json!([]),
        )
        .await;
        exec(&server, db, "DELETE FROM t WHERE id = 2", json!([])).await;
        // Locally: row 1 changed, row 2 changed, row 3 inserted, row 4 deleted.
        let cs = edit(
            &local,
            "UPDATE t SET v = 'client' WHERE id = 1; UPDATE t SET v = 'client2' WHERE id = 2;
             INSERT INTO t VALUES (3, 'new'); DELETE FROM t WHERE id = 4;",
        );
        let (status, body) = push(&server, db, policy, base, cs).await;
        eprintln!("{policy}: {status} {body}");
        let kinds: Vec<(Value, Value)> = body["conflicts"]
            .as_array()
            .or(body["error"]["details"]["conflicts"].as_array())
            .unwrap()
            .iter()
            .map(|c| (c["op"].clone(), c["kind"].clone()))
            .collect();
        match policy {
            "abort" => {
                assert_eq!(status, StatusCode::CONFLICT, "{body}");
                assert_eq!(body["error"]["code"], "sync_conflict");
                assert!(!kinds.is_empty(), "{body}");
                assert_eq!(
                    rows(&server, db).await,
                    json!([[1, "server"], [4, "server"]]),
                    "nothing applied"
                );
            }
            "server_wins" => {
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(body["applied"], json!(1), "{body}");
                assert_eq!(kinds.len(), 3, "{body}");
                assert_eq!(
                    rows(&server, db).await,
                    json!([[1, "server"], [3, "new"], [4, "server"]])
                );
            }
            _ => {
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(kinds.len(), 3, "{body}");
                // Row 2 is gone on the server: an update of it cannot win; the delete of 4 does.
                assert_eq!(rows(&server, db).await, json!([[1, "client"], [3, "new"]]));
            }
        }
        if policy == "abort" {
            // It stops at the first conflict, named by its column.
            assert_eq!(
                body["error"]["details"]["conflicts"][0]["pk"],
                json!({"id": 1}),
                "{body}"
            );
            continue;
        }
        assert!(
            kinds.contains(&(json!("update"), json!("data"))),
            "{policy}: {kinds:?}"
        );
        assert!(
            kinds.contains(&(json!("update"), json!("not_found"))),
            "{policy}: {kinds:?}"
        );
        assert!(
            kinds.contains(&(json!("delete"), json!("data"))),
            "{policy}: {kinds:?}"
        );
        if status == StatusCode::OK {
            // The push is a version like any write: its changes are served to other clients.
            let status: Value = get(&server, &format!("/api/v1/db/{db}/sync/status"))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(status["version"], body["version"], "{policy}");
            let after: Value = get(
                &server,
                &format!("/api/v1/db/{db}/sync/changes?since={base}&format=json"),
            )
            .await
            .json()
            .await
            .unwrap();
            assert!(
                after["changes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["new"]["v"] == "new"),
                "{after}"
            );
        }
    }
}

#[tokio::test]
async fn pushes_are_held_to_the_statement_policy() {
    let server = TestServer::start().await;
    let db = "pp";
    let dir = tempfile::tempdir().unwrap();
    exec(
        &server,
        db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        json!([]),
    )
    .await;
    exec(
        &server,
        db,
        "CREATE TABLE u (id INTEGER PRIMARY KEY)",
        json!([]),
    )
    .await;
    let (local, base) = local_copy(&server, db, dir.path()).await;
    let cs = edit(&local, "INSERT INTO t VALUES (1, 'x')");
    // A trigger that would reach Patchwork's tables when the push fires it.
    exec(
        &server,
        db,
        "CREATE TRIGGER sneaky AFTER INSERT ON t BEGIN DELETE FROM _patchwork_leases; END",
        json!([]),
    )
    .await;
    let (status, body) = push(&server, db, "abort", base, cs).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(rows(&server, db).await, json!([]));
    exec(&server, db, "DROP TRIGGER sneaky", json!([])).await;
    // Not a changeset; empty; a base version from the future; a wrong scope.
    for (body, base, code) in [
        (b"not a changeset".to_vec(), base, "invalid_changeset"),
        (Vec::new(), base, "invalid_changeset"),
        (
            edit(&local, "INSERT INTO u VALUES (1)"),
            base + 1000,
            "invalid_base_version",
        ),
    ] {
        let (status, answer) = push(&server, db, "abort", base, body).await;
        let _ = base;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    let reader = server
        .mint(vec![crate::testing::scope(
            db,
            crate::auth::Action::SyncRead,
            None,
        )])
        .await;
    let r = server
        .anon(Method::POST, &format!("/api/v1/db/{db}/sync/changes"))
        .bearer_auth(&reader)
        .body(edit(&local, "INSERT INTO u VALUES (2)"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
