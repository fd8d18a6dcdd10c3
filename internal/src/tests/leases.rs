//! Leases and fencing over real HTTP.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::testing::TestServer;

async fn call(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/l/leases/{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn fifty_concurrent_acquirers_one_winner() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let req = server
            .admin(Method::POST, "/api/v1/db/l/leases/acquire")
            .json(&json!({"resource": "jobs/nightly", "owner": format!("worker-{i}"), "ttl_seconds": 30}));
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            StatusCode::OK => winners.push(v),
            StatusCode::CONFLICT => {
                assert_eq!(v["error"]["code"], "lease_held");
                assert!(v["error"]["details"]["holder"].is_string());
                assert!(v["error"]["details"]["expires_at"].is_string());
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(winners.len(), 1);
    let w = &winners[0];
    assert_eq!(w["fence"], 1);
    assert!(w["lease_token"].as_str().unwrap().len() > 32);
    // The same owner asking again is refused too (renew instead).
    let (s, _) = call(
        &server,
        "acquire",
        json!({"resource": "jobs/nightly", "owner": w["owner"], "ttl_seconds": 30}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    // GET /leases lists the holder, never tokens.
    let text = server
        .admin(Method::GET, "/api/v1/db/l/leases")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["leases"][0]["owner"], w["owner"]);
    assert_eq!(v["leases"][0]["fence"], 1);
    assert!(!text.contains(w["lease_token"].as_str().unwrap()));
}

#[tokio::test]
async fn renew_release_expiry_and_fences_that_only_grow() {
    let server = TestServer::start().await;
    let (s, a) = call(
        &server,
        "acquire",
        json!({"resource": "r", "owner": "alice", "ttl_seconds": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let token = a["lease_token"].as_str().unwrap().to_owned();
    // Renew by the wrong owner or with the wrong token: 409 not_holder.
    for body in [
        json!({"resource": "r", "owner": "mallory", "lease_token": token, "ttl_seconds": 5}),
        json!({"resource": "r", "owner": "alice", "lease_token": "pwl_wrong", "ttl_seconds": 5}),
    ] {
        let (s, v) = call(&server, "renew", body).await;
        assert_eq!(s, StatusCode::CONFLICT);
        assert_eq!(v["error"]["code"], "not_holder");
    }
    let (s, r) = call(
        &server,
        "renew",
        json!({"resource": "r", "owner": "alice", "lease_token": token, "ttl_seconds": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["fence"], 1, "renew keeps the fence");
    // Expiry: the lease can be taken again, with a higher fence; the old holder cannot renew.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (s, _) = call(
        &server,
        "renew",
        json!({"resource": "r", "owner": "alice", "lease_token": token, "ttl_seconds": 5}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, b) = call(
        &server,
        "acquire",
        json!({"resource": "r", "owner": "bob", "ttl_seconds": 5}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["fence"], 2);
    // Release, then acquire again: the fence still grows.
    let (s, _) = call(
        &server,
        "release",
        json!({"resource": "r", "owner": "bob", "lease_token": b["lease_token"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &server,
        "release",
        json!({"resource": "r", "owner": "bob", "lease_token": b["lease_token"]}),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a released lease cannot be released again"
    );
    let (_, c) = call(
        &server,
        "acquire",
        json!({"resource": "r", "owner": "carol", "ttl_seconds": 5}),
    )
    .await;
    assert_eq!(c["fence"], 3);
    // ...and after a restart.
    let admin = server.admin_token.clone();
    let dir = server.stop_keeping_data().await.unwrap();
    let server = TestServer::restart_on(dir, &admin).await;
    let (s, _) = call(
        &server,
        "acquire",
        json!({"resource": "r", "owner": "dave", "ttl_seconds": 5}),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "carol still holds it across the restart"
    );
    let (s, _) = call(
        &server,
        "release",
        json!({"resource": "r", "owner": "carol", "lease_token": c["lease_token"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, d) = call(
        &server,
        "acquire",
        json!({"resource": "r", "owner": "dave", "ttl_seconds": 5}),
    )
    .await;
    assert_eq!(d["fence"], 4);
    // Validation.
    for (path, body) in [
        (
            "acquire",
            json!({"resource": "", "owner": "x", "ttl_seconds": 5}),
        ),
        (
            "acquire",
            json!({"resource": "a b", "owner": "x", "ttl_seconds": 5}),
        ),
        (
            "acquire",
            json!({"resource": "x".repeat(257), "owner": "x", "ttl_seconds": 5}),
        ),
        (
            "acquire",
            json!({"resource": "ok", "owner": "x", "ttl_seconds": 0}),
        ),
        (
            "acquire",
            json!({"resource": "ok", "owner": "x", "ttl_seconds": 3601}),
        ),
        (
            "acquire",
            json!({"resource": "ok", "owner": "", "ttl_seconds": 5}),
        ),
        (
            "acquire",
            json!({"resource": "ok", "owner": "x", "ttl_seconds": 5, "extra": 1}),
        ),
    ] {
        let (s, v) = call(&server, path, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
}

#[tokio::test]
async fn fenced_writes_succeed_only_with_the_current_fence() {
    let server = TestServer::start().await;
    let exec = |sql: &str, fence: Option<String>| {
        let mut req = server
            .admin(Method::POST, "/api/v1/db/l/query/exec")
            .json(&json!({"sql": sql}));
        if let Some(f) = fence {
            req = req.header("Patch-Fence", f);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    exec("CREATE TABLE t (v)", None).await;
    let (_, a) = call(
        &server,
        "acquire",
        json!({"resource": "db/writer", "owner": "a", "ttl_seconds": 1}),
    )
    .await;
    let (s, _) = exec("INSERT INTO t VALUES (1)", Some("db/writer=1".into())).await;
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, b) = call(
        &server,
        "acquire",
        json!({"resource": "db/writer", "owner": "b", "ttl_seconds": 30}),
    )
    .await;
    assert_eq!(b["fence"], 2);
    // The old holder's fence is stale: refused, and no effect.
    let (s, v) = exec("INSERT INTO t VALUES (2)", Some("db/writer=1".into())).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "stale_fence");
    let r = server
        .admin(Method::POST, "/api/v1/db/l/query/batch")
        .header("Patch-Fence", "db/writer=1")
        .json(&json!({"statements": [{"sql": "INSERT INTO t VALUES (3)"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = server
        .admin(Method::POST, "/api/v1/db/l/messages")
        .header("Patch-Fence", "db/writer=1")
        .json(&json!({"topic": "t", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let (s, _) = exec(
        "INSERT INTO t VALUES (4)",
        Some("db/writer=2, other/thing=9".into()),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "every listed fence must be current"
    );
    let (s, _) = exec("INSERT INTO t VALUES (5)", Some("db/writer=2".into())).await;
    assert_eq!(s, StatusCode::OK);
    let r = server
        .admin(Method::POST, "/api/v1/db/l/messages")
        .header("Patch-Fence", "db/writer=2")
        .json(&json!({"topic": "t", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, v) = exec("SELECT v FROM t ORDER BY v", None).await;
    assert_eq!(v["rows"], json!([[1], [5]]));
    let (s, _) = exec("INSERT INTO t VALUES (6)", Some("garbage".into())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let _ = a;
}
