//! Webhook inbox over real HTTP.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::testing::TestServer;
use crate::webhooks::signature::sign;

async fn rows(server: &TestServer, db: &str) -> Vec<Value> {
    let v: Value = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/query/exec"))
        .json(&json!({"sql": "SELECT id, endpoint, received_at, method, query_string, headers_json, content_type, payload, signature_valid, delivery_id FROM webhook_inbox ORDER BY id"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["rows"].as_array().unwrap().clone()
}

#[tokio::test]
async fn deliveries_are_stored_whole_with_credentials_redacted() {
    let server = TestServer::start().await;
    let url = format!(
        "/api/v1/db/hooks/webhooks/github/push?x=1&access_token={}&y=2",
        server.admin_token
    );
    let r = server
        .anon(Method::POST, &url)
        .header("Content-Type", "application/json")
        .header("X-GitHub-Delivery", "d-123")
        .header("Cookie", "session=secret-cookie")
        .header("X-Multi", "a")
        .body("{\"zen\":\"ok\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let row = &rows(&server, "hooks").await[0];
    assert_eq!(row[0], id);
    assert_eq!(row[1], "github/push");
    assert!(row[2].as_str().unwrap().ends_with('Z'));
    assert_eq!(row[3], "POST");
    assert_eq!(row[4], "x=1&y=2", "access_token is not stored");
    let headers: Value = serde_json::from_str(row[5].as_str().unwrap()).unwrap();
    assert_eq!(headers["cookie"], "[redacted]");
    assert_eq!(headers["x-multi"], "a");
    assert!(!row[5].as_str().unwrap().contains("secret-cookie"));
    assert_eq!(row[6], "application/json");
    assert_eq!(row[7], json!({"$base64": "eyJ6ZW4iOiJvayJ9"}));
    assert!(row[8].is_null(), "no check configured");
    assert_eq!(row[9], "d-123");
    // Authorization is never stored either.
    server
        .admin(Method::PUT, "/api/v1/db/hooks/webhooks/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    let row = &rows(&server, "hooks").await[1];
    assert_eq!(row[3], "PUT");
    assert!(!row[5].as_str().unwrap().contains(&server.admin_token));
    // A table with user-added columns still accepts deliveries.
    server
        .admin(Method::POST, "/api/v1/db/hooks/query/exec")
        .json(&json!({"sql": "ALTER TABLE webhook_inbox ADD COLUMN processed INTEGER NOT NULL DEFAULT 0"}))
        .send()
        .await
        .unwrap();
    let r = server
        .admin(Method::POST, "/api/v1/db/hooks/webhooks/after")
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Limits and reserved names.
    let big = vec![b'x'; 1024 * 1024 + 1];
    let r = server
        .admin(Method::POST, "/api/v1/db/hooks/webhooks/big")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = server
        .admin(Method::POST, "/api/v1/db/hooks/webhooks/_private")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn signatures_github_stripe_generic_and_enforce() {
    let server = TestServer::start().await;
    let put = |endpoint: &str, body: Value| {
        server
            .admin(
                Method::PUT,
                &format!("/api/v1/db/sig/webhooks/_config/{endpoint}"),
            )
            .json(&body)
            .send()
    };
    assert_eq!(
        put("gh", json!({"scheme": "github", "secret": "gh-secret"}))
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put("st", json!({"scheme": "stripe", "secret": "whsec_1", "enforce": true, "publish_topic": "hooks/stripe"})).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put(
            "gen",
            json!({"scheme": "hmac-sha256", "secret": "k", "signature_header": "X-Sig"})
        )
        .await
        .unwrap()
        .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put("bad", json!({"scheme": "md5", "secret": "k"}))
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    // GET never returns the secret.
    let text = server
        .admin(Method::GET, "/api/v1/db/sig/webhooks/_config/gh")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("github") && !text.contains("gh-secret"),
        "{text}"
    );
    let send = |endpoint: &str, headers: Vec<(&'static str, String)>, body: &'static str| {
        let mut req = server
            .admin(Method::POST, &format!("/api/v1/db/sig/webhooks/{endpoint}"))
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move { req.send().await.unwrap().status() }
    };
    let gh = format!("sha256={}", sign(b"gh-secret", &[b"payload"]));
    assert_eq!(
        send("gh", vec![("X-Hub-Signature-256", gh.clone())], "payload").await,
        StatusCode::CREATED
    );
    assert_eq!(
        send("gh", vec![("X-Hub-Signature-256", gh)], "tampered").await,
        StatusCode::CREATED
    );
    assert_eq!(send("gh", vec![], "payload").await, StatusCode::CREATED);
    let t = time::OffsetDateTime::now_utc().unix_timestamp();
    let st = format!(
        "t={t},v1={}",
        sign(b"whsec_1", &[t.to_string().as_bytes(), b".", b"{}"])
    );
    assert_eq!(
        send("st", vec![("Stripe-Signature", st)], "{}").await,
        StatusCode::CREATED
    );
    let old = t - 3600;
    let stale = format!(
        "t={old},v1={}",
        sign(b"whsec_1", &[old.to_string().as_bytes(), b".", b"{}"])
    );
    assert_eq!(
        send("st", vec![("Stripe-Signature", stale)], "{}").await,
        StatusCode::UNAUTHORIZED,
        "outside tolerance"
    );
    assert_eq!(
        send("st", vec![], "{}").await,
        StatusCode::UNAUTHORIZED,
        "enforced: missing"
    );
    assert_eq!(
        send("gen", vec![("X-Sig", sign(b"k", &[b"p"]))], "p").await,
        StatusCode::CREATED
    );
    let stored = rows(&server, "sig").await;
    let valid: Vec<(String, Value)> = stored
        .iter()
        .map(|r| (r[1].as_str().unwrap().to_owned(), r[8].clone()))
        .collect();
    assert_eq!(
        valid,
        vec![
            ("gh".into(), json!(1)),
            ("gh".into(), json!(0)),
            ("gh".into(), json!(0)),
            ("st".into(), json!(1)),
            ("gen".into(), json!(1)),
        ]
    );
    // The stripe endpoint also published a durable message per stored delivery.
    let v: Value = server
        .admin(Method::POST, "/api/v1/db/sig/query/exec")
        .json(&json!({"sql": "SELECT topic, CAST(payload AS TEXT) FROM _patchwork_messages"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);
    assert_eq!(v["rows"][0][0], "hooks/stripe");
    // Secrets are encrypted at rest.
    let data = server.stop_keeping_data().await.unwrap();
    let bytes = std::fs::read(data.path().join("documents/sig.sqlite3")).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("gh-secret"));
}
