//! Runtime and operations routes over real HTTP.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::{Action, NewToken, Scope};
use crate::testing::TestServer;

/// Sends a request line exactly as given (no client-side path normalisation) and returns the
/// status code and body.
async fn raw_request(server: &TestServer, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        server.admin_token
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn assert_error_shape(body: &str, code: &str) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["error"]["code"], code, "{body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn document_files(server: &TestServer) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(server.dir.path().join("documents"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn invalid_db_ids_are_400_and_create_nothing() {
    let server = TestServer::start().await;
    let long = "x".repeat(129);
    for path in [
        "/api/v1/db/../_open",
        "/api/v1/db/./_open",
        "/api/v1/db/%2E%2E/_open",
        "/api/v1/db/a%2Fb/_open",
        "/api/v1/db/a%5Cb/_open",
        "/api/v1/db/caf%C3%A9/_open",
        "/api/v1/db/a%20b/_open",
        "/api/v1/db/%FF/_open",
        &format!("/api/v1/db/{long}/_open"),
    ] {
        let (status, body) = raw_request(&server, "POST", path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"error\""), "{path}: {body}");
    }
    let (status, body) = raw_request(&server, "POST", "/api/v1/db//_open").await;
    assert_eq!(status, 404, "empty segment: {body}");
    assert_error_shape(&body, "not_found");
    assert!(
        document_files(&server).is_empty(),
        "{:?}",
        document_files(&server)
    );
    // 128 characters is still fine.
    let ok = format!("/api/v1/db/{}/_open", "y".repeat(128));
    assert_eq!(raw_request(&server, "POST", &ok).await.0, 200);
}

#[tokio::test]
async fn open_and_status() {
    let server = TestServer::start().await;
    let r = server
        .admin(Method::POST, "/api/v1/db/notes/_open")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"db_id": "notes", "created": true}));
    let v: Value = server
        .admin(Method::POST, "/api/v1/db/notes/_open")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["created"], false);
    assert_eq!(
        document_files(&server),
        vec!["notes.sqlite3", "notes.sqlite3-shm", "notes.sqlite3-wal"]
    );

    let r = server
        .admin(Method::GET, "/api/v1/db/notes/_status")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    for field in [
        "db_id",
        "open",
        "size_bytes",
        "wal_bytes",
        "page_count",
        "watches",
        "subscribers",
        "last_write_at",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["db_id"], "notes");
    assert_eq!(v["open"], true);
    let pages_before = v["page_count"].as_i64().unwrap();
    assert!(pages_before > 0);

    // The figures follow writes (the actor only reuses them while nothing else ran).
    let r = server
        .admin(Method::POST, "/api/v1/db/notes/query/exec")
        .json(&serde_json::json!({"sql":
            "CREATE TABLE big AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
             WHERE i < 2000) SELECT i, randomblob(500) AS b FROM n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let v: Value = server
        .admin(Method::GET, "/api/v1/db/notes/_status")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pages_after = v["page_count"].as_i64().unwrap();
    assert!(
        pages_after > pages_before + 100,
        "{pages_before} -> {pages_after}"
    );
    assert!(v["wal_bytes"].as_u64().unwrap() > 500 * 1000, "{v}");
    assert_eq!(
        v["size_bytes"].as_i64().unwrap(),
        pages_after * 4096,
        "size is pages times the page size: {v}"
    );

    let v: Value = server
        .admin(Method::GET, "/api/v1/dbs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dbs = v["dbs"].as_array().unwrap();
    assert_eq!(dbs.len(), 1);
    assert_eq!(dbs[0]["db_id"], "notes");
    assert_eq!(dbs[0]["open"], true);
    assert!(dbs[0]["size_bytes"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn one_actor_and_one_file_under_100_concurrent_first_opens() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let req = server.admin(Method::POST, "/api/v1/db/race/_open");
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()["created"]
                .as_bool()
                .unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap());
    }
    assert_eq!(created, 1);
    assert_eq!(server.state.registry.live_actors(), 1);
    let files: Vec<String> = document_files(&server)
        .into_iter()
        .filter(|f| f.ends_with(".sqlite3"))
        .collect();
    assert_eq!(files, vec!["race.sqlite3"]);
}

#[tokio::test]
async fn tokens_are_required_and_non_admins_are_refused() {
    let server = TestServer::start().await;
    for (method, path) in [
        (Method::POST, "/api/v1/db/x/_open"),
        (Method::GET, "/api/v1/db/x/_status"),
        (Method::GET, "/api/v1/dbs"),
    ] {
        let r = server.anon(method.clone(), path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_error_shape(&r.text().await.unwrap(), "unauthorized");
        let r = server
            .anon(method.clone(), path)
            .bearer_auth("pw_0000_not-a-real-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let (_, plain) = server
        .state
        .tokens
        .create(NewToken {
            label: "reader".into(),
            is_admin: false,
            scopes: vec![Scope {
                db_id: "x".into(),
                action: Action::QueryRead,
                resource_prefix: None,
            }],
            expires_at: None,
        })
        .await
        .unwrap();
    let r = server
        .anon(Method::GET, "/api/v1/dbs")
        .bearer_auth(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_error_shape(&r.text().await.unwrap(), "forbidden");
    // Refused callers leave no document behind.
    assert!(document_files(&server).is_empty());
    // All three Authorization forms work.
    for value in [
        format!("Bearer {}", server.admin_token),
        format!("token {}", server.admin_token),
        server.admin_token.clone(),
    ] {
        let r = server
            .anon(Method::GET, "/api/v1/dbs")
            .header("Authorization", value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn errors_are_json_everywhere() {
    let server = TestServer::start().await;
    let r = server
        .anon(Method::GET, "/no/such/route")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_error_shape(&r.text().await.unwrap(), "not_found");
    let r = server
        .anon(Method::DELETE, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_error_shape(&r.text().await.unwrap(), "method_not_allowed");
    let r = server
        .admin(Method::GET, "/api/v1/db/x/_open")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_error_shape(&r.text().await.unwrap(), "method_not_allowed");
}

#[tokio::test]
async fn ops_endpoints() {
    let server = TestServer::start().await;
    let r = server.anon(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(
        server
            .anon(Method::GET, "/readyz")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let v: Value = server
        .anon(Method::GET, "/status")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for field in [
        "version",
        "uptime_seconds",
        "open_documents",
        "subscribers",
        "sqlite_version",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    server
        .admin(Method::GET, "/api/v1/db/m/_status")
        .send()
        .await
        .unwrap();
    let text = server.metrics().await;
    for name in [
        "patchwork_http_requests_total{route=\"/api/v1/db/{db_id}/_status\",method=\"GET\",status=\"200\"} 1",
        "patchwork_http_request_duration_seconds_bucket",
        "patchwork_open_documents 1",
        "patchwork_mailbox_depth",
        "patchwork_actor_restarts",
        "patchwork_commits_total",
        "patchwork_group_commit_batch_size_bucket",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    let r = server.anon(Method::GET, "/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("Patchwork"));
    server.stop().await.expect("graceful stop succeeds");
}

#[tokio::test]
async fn a_full_mailbox_answers_503_overloaded() {
    let server = TestServer::start_with(|c| c.mailbox_capacity = 1).await;
    let id = crate::registry::DbId::parse("busy").unwrap();
    let doc = server.state.registry.get(&id).await.unwrap();
    // Occupy the actor, then fill its one mailbox slot.
    let release_tx = crate::testing::block_actor(&doc).await;
    let filler = doc.clone();
    let queued = tokio::spawn(async move { filler.read(|_| Ok(())).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = server
        .admin(Method::GET, "/api/v1/db/busy/_status")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert_error_shape(&r.text().await.unwrap(), "overloaded");
    release_tx.send(()).unwrap();
    queued.await.unwrap().unwrap();
    let r = server
        .admin(Method::GET, "/api/v1/db/busy/_status")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_panicking_request_does_not_hurt_the_others() {
    let server = TestServer::start().await;
    let id = crate::registry::DbId::parse("p").unwrap();
    let doc = server.state.registry.get(&id).await.unwrap();
    let panicking = doc.read(|_| -> Result<(), _> { panic!("deliberate") });
    let normal = server.admin(Method::GET, "/api/v1/db/p/_status").send();
    let (panicked, normal) = tokio::join!(panicking, normal);
    assert!(panicked.is_err());
    assert_eq!(normal.unwrap().status(), StatusCode::OK);
    let r = server
        .admin(Method::GET, "/api/v1/db/p/_status")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = server.metrics().await;
    assert!(
        text.contains("patchwork_actor_restarts_total{reason=\"panic\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn idle_documents_are_closed_and_reopened_over_http() {
    let server = TestServer::start_with(|c| c.idle_timeout_secs = 1).await;
    let r = server
        .admin(Method::POST, "/api/v1/db/sleepy/_open")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = server
            .admin(Method::GET, "/api/v1/dbs")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["dbs"][0]["open"] == false {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not evicted: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(server.state.registry.live_actors(), 0);
    let v: Value = server
        .admin(Method::POST, "/api/v1/db/sleepy/_open")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["created"], false);
}

#[tokio::test]
async fn graceful_stop_loses_no_acknowledged_write() {
    let server = TestServer::start().await;
    let id = crate::registry::DbId::parse("w").unwrap();
    {
        let doc = server.state.registry.get(&id).await.unwrap();
        doc.write(|c| Ok(c.execute_batch("CREATE TABLE t (v INTEGER)")?))
            .await
            .unwrap();
    }
    let mut writers = Vec::new();
    for w in 0..8i64 {
        let registry = server.state.registry.clone();
        let id = id.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10_000i64 {
                let v = w * 1_000_000 + i;
                let Ok(doc) = registry.get(&id).await else {
                    break;
                };
                match doc
                    .write(move |c| Ok(c.execute("INSERT INTO t VALUES (?1)", [v])?))
                    .await
                {
                    Ok(_) => acked.push(v),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Stop while the writers are still writing.
    let stopped = tokio::spawn(server.stop_keeping_data());
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let data = stopped.await.unwrap().unwrap();
    assert!(!acked.is_empty());
    let conn = rusqlite::Connection::open(data.path().join("documents/w.sqlite3")).unwrap();
    let mut stmt = conn.prepare("SELECT v FROM t").unwrap();
    let stored: std::collections::HashSet<i64> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for v in &acked {
        assert!(stored.contains(v), "acknowledged write {v} lost");
    }
}
