//! Query exec and batch over real HTTP.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::Action;
use crate::testing::TestServer;

async fn exec(server: &TestServer, token: &str, db: &str, body: Value) -> (StatusCode, Value) {
    let r = server
        .anon(Method::POST, &format!("/api/v1/db/{db}/query/exec"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn token_with(server: &TestServer, db: &str, actions: &[Action]) -> String {
    let scopes = actions
        .iter()
        .map(|a| crate::testing::scope(db, *a, None))
        .collect();
    server.mint(scopes).await
}

#[tokio::test]
async fn exec_values_round_trip_and_result_shapes() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let (s, v) = exec(
        &server,
        &admin,
        "q",
        json!({"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, n, f, s, b, big)"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = exec(
        &server,
        &admin,
        "q",
        json!({"sql": "INSERT INTO t (n, f, s, b, big) VALUES (?, ?, ?, ?, ?) RETURNING id",
               "args": [true, 1.5, "héllo", {"$base64": "AP8="}, {"$int": "9007199254740993"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rows_affected"], 1);
    assert_eq!(v["last_insert_id"], 1);
    assert_eq!(v["rows"], json!([[1]]));
    assert_eq!(v["columns"], json!(["id"]));
    let (s, v) = exec(
        &server,
        &admin,
        "q",
        json!({"sql": "SELECT n, f, s, b, big, NULL AS z FROM t WHERE id = :id", "args": {"id": 1}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["columns"], json!(["n", "f", "s", "b", "big", "z"]));
    assert_eq!(
        v["rows"],
        json!([[1, 1.5, "héllo", {"$base64": "AP8="}, {"$int": "9007199254740993"}, null]])
    );
    assert_eq!(v["row_count"], 1);
    assert_eq!(v["truncated"], false);
    assert!(v.get("rows_affected").is_none());
    // Named args with their sigil, and the other sigils.
    for (sql, args) in [
        ("SELECT @x", json!({"@x": 5})),
        ("SELECT $x", json!({"x": 5})),
        ("SELECT ?2, ?1", json!([1, 5])),
    ] {
        let (s, v) = exec(&server, &admin, "q", json!({"sql": sql, "args": args})).await;
        assert_eq!(s, StatusCode::OK, "{sql}: {v}");
    }
    // Bad input: clear 400s.
    for body in [
        json!({"sql": "SELECT 1; SELECT 2"}),
        json!({"sql": "SELECT ?", "args": []}),
        json!({"sql": "SELECT ?", "args": [[1]]}),
        json!({"sql": "SELECT :a", "args": {"b": 1}}),
        json!({"sql": "SELEC 1"}),
        json!({"sql": "   "}),
        json!({"sql": "SELECT 1", "extra": true}),
        json!({"sql": "SELECT 1", "options": {"max_rows": 0}}),
    ] {
        let (s, v) = exec(&server, &admin, "q", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    // Refused for everyone, admin included.
    for sql in [
        "ATTACH 'x.db' AS x",
        "VACUUM INTO 'copy.db'",
        "SELECT load_extension('x')",
        "BEGIN",
    ] {
        let (s, v) = exec(&server, &admin, "q", json!({"sql": sql})).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{sql}: {v}");
    }
    assert!(!server.dir.path().join("documents/copy.db").exists());
    // Constraint violations are conflicts.
    let (s, _) = exec(
        &server,
        &admin,
        "q",
        json!({"sql": "INSERT INTO t (id) VALUES (1)"}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
}

#[tokio::test]
async fn scope_is_decided_by_sqlite() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    exec(&server, &admin, "s", json!({"sql": "CREATE TABLE t (v)"})).await;
    let reader = token_with(&server, "s", &[Action::QueryRead]).await;
    let writer = token_with(&server, "s", &[Action::QueryWrite]).await;
    let schema = token_with(&server, "s", &[Action::QueryAdmin]).await;
    let cases: &[(&str, &str, StatusCode)] = &[
        (&reader, "SELECT * FROM t", StatusCode::OK),
        (
            &reader,
            "WITH x AS (SELECT 1) DELETE FROM t",
            StatusCode::FORBIDDEN,
        ),
        (
            &reader,
            "INSERT INTO t VALUES (1) RETURNING v",
            StatusCode::FORBIDDEN,
        ),
        (&reader, "PRAGMA table_info(t)", StatusCode::OK),
        (&reader, "PRAGMA user_version = 5", StatusCode::FORBIDDEN),
        (
            &writer,
            "INSERT INTO t VALUES (1) RETURNING v",
            StatusCode::OK,
        ),
        (&writer, "REPLACE INTO t VALUES (2)", StatusCode::OK),
        (&writer, "SELECT * FROM t", StatusCode::FORBIDDEN),
        (&writer, "CREATE TABLE u (x)", StatusCode::FORBIDDEN),
        (&writer, "CREATE TEMP TABLE tt (x)", StatusCode::FORBIDDEN),
        (&schema, "CREATE TABLE u (x)", StatusCode::OK),
        (&schema, "INSERT INTO t VALUES (3)", StatusCode::FORBIDDEN),
        (&schema, "PRAGMA user_version = 7", StatusCode::OK),
        (&writer, "PRAGMA journal_mode=DELETE", StatusCode::FORBIDDEN),
    ];
    for (token, sql, want) in cases {
        let (s, v) = exec(&server, token, "s", json!({"sql": sql})).await;
        assert_eq!(s, *want, "{sql}: {v}");
    }
    // A refused write changed nothing.
    let (_, v) = exec(
        &server,
        &admin,
        "s",
        json!({"sql": "SELECT count(*) FROM t"}),
    )
    .await;
    assert_eq!(v["rows"], json!([[2]]));
}

#[tokio::test]
async fn runaway_statement_is_stopped_and_the_actor_is_free() {
    let server = TestServer::start_with(|c| c.query_timeout_ms = 1_000).await;
    let admin = server.admin_token.clone();
    let started = Instant::now();
    let (s, v) = exec(
        &server,
        &admin,
        "r",
        json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"}),
    )
    .await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["error"]["code"], "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A lower per-request limit applies; a higher one does not.
    let started = Instant::now();
    let (s, _) = exec(
        &server,
        &admin,
        "r",
        json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
               "options": {"timeout_ms": 200}}),
    )
    .await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_millis(1_000));
    let (s, v) = exec(&server, &admin, "r", json!({"sql": "SELECT 1"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("patchwork_query_timeouts_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn rows_and_bytes_are_bounded() {
    let server = TestServer::start_with(|c| {
        c.query_max_rows = 100;
        c.query_max_result_bytes = 64 * 1024;
    })
    .await;
    let admin = server.admin_token.clone();
    let series = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000) SELECT x FROM c";
    let (s, v) = exec(&server, &admin, "b", json!({"sql": series})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["row_count"], 100);
    assert_eq!(v["truncated"], true);
    let (_, v) = exec(
        &server,
        &admin,
        "b",
        json!({"sql": series, "options": {"max_rows": 10}}),
    )
    .await;
    assert_eq!(v["row_count"], 10);
    let (_, v) = exec(
        &server,
        &admin,
        "b",
        json!({"sql": series, "options": {"max_rows": 100000}}),
    )
    .await;
    assert_eq!(v["row_count"], 100, "options may only lower the bound");
    let (s, v) = exec(
        &server,
        &admin,
        "b",
        json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 50) SELECT zeroblob(4000) FROM c"}),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
}

#[tokio::test]
async fn batch_is_all_or_nothing_and_checks_every_scope_first() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let batch = |token: String, body: Value| {
        let req = server
            .anon(Method::POST, "/api/v1/db/bt/query/batch")
            .bearer_auth(token)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = batch(
        admin.clone(),
        json!({"statements": [
            {"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"},
            {"sql": "INSERT INTO t (v) VALUES (?)", "args": ["a"]},
            {"sql": "SELECT count(*) FROM t"}
        ]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 3);
    assert_eq!(v["results"][1]["rows_affected"], 1);
    assert_eq!(v["results"][2]["rows"], json!([[1]]));
    // A failure rolls everything back.
    let (s, v) = batch(
        admin.clone(),
        json!({"statements": [
            {"sql": "INSERT INTO t (v) VALUES ('b')"},
            {"sql": "INSERT INTO t (v) VALUES ('a')"}
        ]}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["details"]["index"], 1);
    // A statement outside the token's scope refuses the batch before anything runs.
    let writer = token_with(&server, "bt", &[Action::QueryWrite]).await;
    let (s, _) = batch(
        writer.clone(),
        json!({"statements": [
            {"sql": "INSERT INTO t (v) VALUES ('c')"},
            {"sql": "DROP TABLE t"}
        ]}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, v) = exec(
        &server,
        &admin,
        "bt",
        json!({"sql": "SELECT v FROM t ORDER BY v"}),
    )
    .await;
    assert_eq!(v["rows"], json!([["a"]]));
    let (s, _) = batch(writer, json!({"statements": []})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// JSON bodies: a plain `application/json` (with parameters) takes the direct path, other JSON
/// types go through axum's; either way a bad body is a `400` whose message names the field, a
/// body that is not JSON is `invalid_json`, and a non-JSON type is `unsupported_media_type`.
#[tokio::test]
async fn json_bodies_parse_the_same_on_every_path() {
    let server = TestServer::start().await;
    let send = |content_type: &'static str, body: &'static str| {
        server
            .admin(Method::POST, "/api/v1/db/jsonpaths/query/exec")
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for content_type in [
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/vnd.api+json",
    ] {
        let r = send(content_type, r#"{"sql": "SELECT 1 AS one"}"#)
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{content_type}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["rows"], json!([[1]]), "{content_type}");
        for (body, code, names) in [
            (r#"{"sql": 5}"#, "invalid_body", "sql"),
            (
                r#"{"sql": "SELECT 1", "colour": "red"}"#,
                "invalid_body",
                "colour",
            ),
            (r#"{"sql": "SELECT 1""#, "invalid_json", ""),
            (r#"{"sql": "SELECT 1"} trailing"#, "invalid_json", ""),
        ] {
            let r = send(content_type, body).await.unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{content_type} {body}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], code, "{content_type} {body}: {v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains(names), "{content_type} {body}: {message}");
        }
    }
    let r = send("text/plain", r#"{"sql": "SELECT 1"}"#).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unsupported_media_type", "{v}");
}
