//! `patchwork sync` (the client in `sync/client.rs`) against a real server: round trips with
//! edits on both sides, each conflict policy, a sync killed mid-way and rerun, `410` with local
//! edits, `--watch`, and its error messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rusqlite::Connection;
use serde_json::{Value, json};

use crate::sync::client::{self, ConflictError, FailPoint, Policy, Summary, SyncOptions};
use crate::testing::TestServer;

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

fn cell(v: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("x'{}'", hex::encode(b)),
    }
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
                        .map(|i| cell(r.get_ref(i).unwrap()))
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

async fn server_dump(server: &TestServer, db: &str) -> BTreeMap<String, Vec<String>> {
    let doc = server
        .state
        .registry
        .get(&crate::registry::DbId::parse(db).unwrap())
        .await
        .unwrap();
    doc.read(|conn| Ok(dump(conn))).await.unwrap()
}

fn local_dump(file: &Path) -> BTreeMap<String, Vec<String>> {
    dump(&Connection::open(file).unwrap())
}

fn local(file: &Path, sql: &str) {
    let conn = Connection::open(file).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch(sql).unwrap();
}

async fn server_version(server: &TestServer, db: &str) -> i64 {
    let r = server
        .admin(Method::GET, &format!("/api/v1/db/{db}/sync/status"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    body["version"].as_i64().unwrap()
}

fn recorded_version(file: &Path) -> i64 {
    let mut p = file.as_os_str().to_owned();
    p.push(".patchwork-sync.json");
    let state: Value = serde_json::from_slice(&std::fs::read(PathBuf::from(p)).unwrap()).unwrap();
    state["version"].as_i64().unwrap()
}

fn options(server: &TestServer, db: &str, file: &Path) -> SyncOptions {
    SyncOptions::new(
        server.url(""),
        server.admin_token.clone(),
        db,
        file.to_path_buf(),
    )
}

/// A sync with lines of progress collected (and printed when the test fails).
async fn sync(opts: SyncOptions) -> anyhow::Result<Summary> {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let result = client::run(opts, move |line: &str| {
        sink.lock().unwrap().push(line.to_owned());
    })
    .await;
    if result.is_err() {
        for line in lines.lock().unwrap().iter() {
            eprintln!("sync: {line}");
        }
    }
    result
}

async fn setup(server: &TestServer, db: &str) {
    exec(
        server,
        db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n REAL)",
        json!([]),
    )
    .await;
    exec(
        server,
        db,
        "CREATE TABLE kv (k TEXT PRIMARY KEY, b BLOB) WITHOUT ROWID",
        json!([]),
    )
    .await;
    exec(
        server,
        db,
        "INSERT INTO t (id, v, n) VALUES (1, 'one', 1.0), (2, 'two', 2.0), (3, 'three', 3.0), (4, 'four', NULL)",
        json!([]),
    )
    .await;
    exec(
        server,
        db,
        "INSERT INTO kv VALUES ('a', x'00ff'), ('b', NULL)",
        json!([]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_both_ways_with_concurrent_edits() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("local.sqlite3");
    let db = "sc1";
    setup(&server, db).await;

    let started = Instant::now();
    let first = sync(options(&server, db, &file)).await.unwrap();
    eprintln!("first sync (snapshot): {:?}", started.elapsed());
    assert_eq!(first.snapshots, 1);
    assert_eq!(first.version, server_version(&server, db).await);
    assert_eq!(local_dump(&file), server_dump(&server, db).await);
    assert_eq!(recorded_version(&file), first.version);

    // Edits on both sides meanwhile, on different rows.
    exec(
        &server,
        db,
        "INSERT INTO t VALUES (10, 'server', 10.5)",
        json!([]),
    )
    .await;
    exec(
        &server,
        db,
        "UPDATE t SET v = 'ONE' WHERE id = 1",
        json!([]),
    )
    .await;
    exec(&server, db, "DELETE FROM t WHERE id = 2", json!([])).await;
    exec(&server, db, "INSERT INTO kv VALUES ('s', x'01')", json!([])).await;
    local(
        &file,
        "INSERT INTO t VALUES (20, 'local', -1);
         UPDATE t SET n = 33 WHERE id = 3;
         DELETE FROM t WHERE id = 4;
         INSERT INTO kv VALUES ('l', x'02');
         UPDATE kv SET b = x'ff' WHERE k = 'b';",
    );

    let started = Instant::now();
    let second = sync(options(&server, db, &file)).await.unwrap();
    eprintln!(
        "two-way sync: {:?} (pulled {}, pushed {})",
        started.elapsed(),
        second.pulled,
        second.pushed
    );
    assert_eq!(second.snapshots, 0);
    assert_eq!(second.pushed, 5);
    assert!(second.conflicts.is_empty(), "{:?}", second.conflicts);
    let server_rows = server_dump(&server, db).await;
    assert_eq!(local_dump(&file), server_rows);
    assert_eq!(
        server_rows["t"],
        vec![
            "1|'ONE'|1.0",
            "3|'three'|33.0",
            "10|'server'|10.5",
            "20|'local'|-1.0",
        ]
    );
    assert_eq!(server_rows["kv"].len(), 4);
    assert_eq!(second.version, server_version(&server, db).await);
    assert_eq!(recorded_version(&file), second.version);

    // In step: a third sync has nothing to do.
    let third = sync(options(&server, db, &file)).await.unwrap();
    assert_eq!((third.pulled, third.pushed), (0, 0));
    assert_eq!(third.version, second.version);
}

/// One conflicting update, a local delete of a row the server updated, and a local update of
/// a row the server deleted.
async fn conflicting_edits(server: &TestServer, db: &str, file: &Path) {
    exec(
        server,
        db,
        "UPDATE t SET v = 'server' WHERE id = 1",
        json!([]),
    )
    .await;
    exec(
        server,
        db,
        "UPDATE t SET v = 'server' WHERE id = 2",
        json!([]),
    )
    .await;
    exec(server, db, "DELETE FROM t WHERE id = 3", json!([])).await;
    local(
        file,
        "UPDATE t SET v = 'local' WHERE id = 1;
         DELETE FROM t WHERE id = 2;
         UPDATE t SET v = 'local' WHERE id = 3;
         INSERT INTO t VALUES (30, 'new', 0);",
    );
}

async fn t_rows(server: &TestServer, db: &str) -> Vec<String> {
    server_dump(server, db).await["t"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_conflict_policy_behaves_as_documented() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();

    // abort: every conflict reported, nothing changed on either side.
    let (db, file) = ("pa", dir.path().join("abort.sqlite3"));
    setup(&server, db).await;
    sync(options(&server, db, &file)).await.unwrap();
    conflicting_edits(&server, db, &file).await;
    let before_local = local_dump(&file);
    let before_server = server_dump(&server, db).await;
    let err = sync(options(&server, db, &file)).await.unwrap_err();
    let conflicts = &err
        .downcast_ref::<ConflictError>()
        .expect("a conflict")
        .conflicts;
    let mut seen: Vec<(String, Value, String)> = conflicts
        .iter()
        .map(|c| (c.table.clone(), c.pk.clone(), c.kind.clone()))
        .collect();
    seen.sort_by_key(|c| c.1.to_string());
    assert_eq!(
        seen,
        vec![
            ("t".into(), json!({"id": 1}), "data".into()),
            ("t".into(), json!({"id": 2}), "not_found".into()),
            ("t".into(), json!({"id": 3}), "data".into()),
        ],
        "{err:#}"
    );
    let message = format!("{err:#}");
    assert!(message.contains("conflict"), "{message}");
    assert!(message.contains("--on-conflict"), "{message}");
    assert_eq!(local_dump(&file), before_local);
    assert_eq!(server_dump(&server, db).await, before_server);

    // server_wins: the server's rows everywhere (the row deleted locally comes back, the one
    // deleted on the server stays deleted); the non-conflicting local insert is pushed.
    let (db, file) = ("ps", dir.path().join("server.sqlite3"));
    setup(&server, db).await;
    sync(options(&server, db, &file)).await.unwrap();
    conflicting_edits(&server, db, &file).await;
    let mut opts = options(&server, db, &file);
    opts.on_conflict = Policy::ServerWins;
    let summary = sync(opts).await.unwrap();
    assert_eq!(summary.conflicts.len(), 3, "{:?}", summary.conflicts);
    assert_eq!(local_dump(&file), server_dump(&server, db).await);
    assert_eq!(
        t_rows(&server, db).await,
        vec![
            "1|'server'|1.0",
            "2|'server'|2.0",
            "4|'four'|NULL",
            "30|'new'|0.0",
        ]
    );

    // client_wins: the local rows everywhere (the local delete wins, the row the server
    // deleted is put back with the local values).
    let (db, file) = ("pc", dir.path().join("client.sqlite3"));
    setup(&server, db).await;
    sync(options(&server, db, &file)).await.unwrap();
    conflicting_edits(&server, db, &file).await;
    let mut opts = options(&server, db, &file);
    opts.on_conflict = Policy::ClientWins;
    let summary = sync(opts).await.unwrap();
    assert_eq!(summary.conflicts.len(), 3, "{:?}", summary.conflicts);
    assert_eq!(local_dump(&file), server_dump(&server, db).await);
    assert_eq!(
        t_rows(&server, db).await,
        vec![
            "1|'local'|1.0",
            "3|'local'|3.0",
            "4|'four'|NULL",
            "30|'new'|0.0",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_pull_or_after_a_push_then_rerun() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.sqlite3");
    let db = "kill";
    setup(&server, db).await;
    exec(
        &server,
        db,
        "CREATE TABLE c (id INTEGER PRIMARY KEY, n INTEGER)",
        json!([]),
    )
    .await;
    exec(&server, db, "INSERT INTO c VALUES (1, 0)", json!([])).await;
    let first = sync(options(&server, db, &file)).await.unwrap();

    // Killed after the pull reached the local file, before the base and the version.
    for _ in 0..3 {
        exec(&server, db, "UPDATE c SET n = n + 1", json!([])).await;
    }
    exec(&server, db, "INSERT INTO t VALUES (50, 'x', 5)", json!([])).await;
    exec(&server, db, "DELETE FROM t WHERE id = 4", json!([])).await;
    client::FAIL_AT
        .lock()
        .unwrap()
        .push((file.clone(), FailPoint::AfterLocalCommit));
    let err = sync(options(&server, db, &file)).await.unwrap_err();
    assert!(format!("{err:#}").contains("simulated crash"), "{err:#}");
    assert_eq!(recorded_version(&file), first.version, "not recorded");
    assert_eq!(
        local_dump(&file),
        server_dump(&server, db).await,
        "local applied"
    );

    // Meanwhile, one more edit on each side; the rerun finishes and applies nothing twice.
    exec(&server, db, "UPDATE c SET n = n + 1", json!([])).await;
    local(&file, "INSERT INTO t VALUES (60, 'after', 6)");
    let rerun = sync(options(&server, db, &file)).await.unwrap();
    assert_eq!(rerun.pushed, 1);
    assert!(rerun.conflicts.is_empty(), "{:?}", rerun.conflicts);
    let server_rows = server_dump(&server, db).await;
    assert_eq!(local_dump(&file), server_rows);
    assert_eq!(server_rows["c"], vec!["1|4"]);
    assert!(server_rows["t"].iter().any(|r| r.starts_with("60")));
    assert_eq!(recorded_version(&file), server_version(&server, db).await);

    // Killed after the server applied a push, before anything local was updated: the rerun
    // (abort policy) pulls its own edits back as no-ops and pushes nothing again.
    local(
        &file,
        "UPDATE t SET v = 'pushed' WHERE id = 1; DELETE FROM t WHERE id = 3;",
    );
    client::FAIL_AT
        .lock()
        .unwrap()
        .push((file.clone(), FailPoint::AfterPush));
    let err = sync(options(&server, db, &file)).await.unwrap_err();
    assert!(format!("{err:#}").contains("simulated crash"), "{err:#}");
    let after_push = server_version(&server, db).await;
    let rerun = sync(options(&server, db, &file)).await.unwrap();
    assert_eq!(rerun.pushed, 0, "nothing pushed twice");
    assert!(rerun.conflicts.is_empty(), "{:?}", rerun.conflicts);
    assert_eq!(server_version(&server, db).await, after_push);
    assert_eq!(local_dump(&file), server_dump(&server, db).await);
    assert_eq!(recorded_version(&file), after_push);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_gone_pushes_local_edits_then_takes_a_snapshot() {
    let server = TestServer::start_with(|c| {
        c.sync_retention_versions = 2;
        c.sync_retention_secs = 1;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.sqlite3");
    let db = "gone";
    setup(&server, db).await;
    sync(options(&server, db, &file)).await.unwrap();
    local(
        &file,
        "INSERT INTO t VALUES (70, 'kept', 7); UPDATE t SET v = 'L' WHERE id = 1;",
    );
    for i in 100..104 {
        exec(&server, db, "INSERT INTO t VALUES (?, 's', 0)", json!([i])).await;
    }
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    for i in 104..108 {
        exec(&server, db, "INSERT INTO t VALUES (?, 's', 0)", json!([i])).await;
    }
    let summary = sync(options(&server, db, &file)).await.unwrap();
    assert_eq!(summary.snapshots, 1);
    assert_eq!(summary.pushed, 2);
    let server_rows = server_dump(&server, db).await;
    assert_eq!(local_dump(&file), server_rows);
    assert!(server_rows["t"].iter().any(|r| r.starts_with("70")));
    assert!(server_rows["t"].contains(&"1|'L'|1.0".to_owned()));
    assert_eq!(server_rows["t"].len(), 4 + 8 + 1);
    assert_eq!(recorded_version(&file), server_version(&server, db).await);
    // And in step afterwards.
    let again = sync(options(&server, db, &file)).await.unwrap();
    assert_eq!((again.pulled, again.pushed, again.snapshots), (0, 0, 0));
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what} took over {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_pulls_and_pushes_live_until_stopped() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.sqlite3");
    let db = "watch";
    setup(&server, db).await;
    let mut opts = options(&server, db, &file);
    opts.watch = true;
    let stop = opts.stop.clone();
    let task = tokio::spawn(sync(opts));
    wait_for("the first snapshot", Duration::from_secs(10), async || {
        file.exists()
    })
    .await;
    // Let it connect.
    tokio::time::sleep(Duration::from_millis(300)).await;

    exec(
        &server,
        db,
        "INSERT INTO t VALUES (200, 'live', 1)",
        json!([]),
    )
    .await;
    let pulled = wait_for(
        "a server edit to arrive",
        Duration::from_secs(2),
        async || local_dump(&file)["t"].iter().any(|r| r.starts_with("200")),
    )
    .await;

    local(&file, "INSERT INTO t VALUES (300, 'pushed live', 2)");
    let pushed = wait_for(
        "a local edit to reach the server",
        Duration::from_secs(3),
        async || {
            server_dump(&server, db).await["t"]
                .iter()
                .any(|r| r.starts_with("300"))
        },
    )
    .await;
    eprintln!("watch: server edit arrived in {pulled:?}, local edit pushed in {pushed:?}");

    // Settles: both sides equal.
    wait_for("both sides equal", Duration::from_secs(5), async || {
        local_dump(&file) == server_dump(&server, db).await
    })
    .await;

    let started = Instant::now();
    stop.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops when cancelled")
        .unwrap()
        .unwrap();
    eprintln!("watch: stopped {:?} after the cancel", started.elapsed());
    assert_eq!(summary.pushed, 1);
    assert!(summary.pulled >= 1);
    assert_eq!(recorded_version(&file), server_version(&server, db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = "errs";
    setup(&server, db).await;

    let file = dir.path().join("e.sqlite3");
    let mut opts = options(&server, db, &file);
    opts.token = "pw_wrong".into();
    let err = sync(opts).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("the server refused the token (401)"),
        "{err:#}"
    );
    assert!(!file.exists());

    // A token without sync.write: the snapshot works, the push is refused clearly.
    let reader = server
        .mint(vec![crate::testing::scope(
            db,
            crate::auth::Action::SyncRead,
            None,
        )])
        .await;
    let mut opts = options(&server, db, &file);
    opts.token = reader;
    let token = opts.token.clone();
    sync(opts).await.unwrap();
    local(&file, "INSERT INTO t VALUES (99, 'x', 0)");
    let mut opts = options(&server, db, &file);
    opts.token = token;
    let err = format!("{:#}", sync(opts).await.unwrap_err());
    assert!(err.contains("403") && err.contains("sync.write"), "{err}");

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut opts = options(&server, db, &dir.path().join("n.sqlite3"));
    opts.url = format!("http://127.0.0.1:{port}");
    let err = sync(opts).await.unwrap_err();
    assert!(
        err.downcast_ref::<client::NetworkError>().is_some(),
        "{err:#}"
    );
    assert!(format!("{err:#}").contains("cannot reach"), "{err:#}");

    // A file that was never synced is left alone.
    let stray = dir.path().join("stray.sqlite3");
    local(&stray, "CREATE TABLE x (a)");
    let err = format!(
        "{:#}",
        sync(options(&server, db, &stray)).await.unwrap_err()
    );
    assert!(err.contains("was not made by `patchwork sync`"), "{err}");

    // Another database's file.
    let err = format!(
        "{:#}",
        sync(options(&server, "other", &file)).await.unwrap_err()
    );
    assert!(err.contains("is synced with database errs"), "{err}");

    // A bad URL.
    let mut opts = options(&server, db, &file);
    opts.url = "localhost:1".into();
    let err = format!("{:#}", sync(opts).await.unwrap_err());
    assert!(err.contains("--url"), "{err}");
}
