//! Invite links over real HTTP: mint, redeem for a scoped token (only its grants, its member
//! name as caller), expired, used up, tampered, revoked, key rotation with a grace key, proof
//! of work on redemption.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::Action;
use crate::testing::{TestServer, scope};

async fn post(
    server: &TestServer,
    token: Option<&str>,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let mut r = server.anon(Method::POST, path).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn mint(server: &TestServer, body: Value) -> Value {
    let (s, v) = post(
        server,
        Some(&server.admin_token),
        "/api/v1/db/club/invites",
        body,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

async fn redeem(server: &TestServer, token: &str, member: &str) -> (StatusCode, Value) {
    post(
        server,
        None,
        "/api/v1/invites/redeem",
        json!({"token": token, "member": member}),
    )
    .await
}

#[tokio::test]
async fn a_redeemed_invite_is_a_token_with_exactly_its_grants() {
    let server = TestServer::start().await;
    let link = mint(
        &server,
        json!({"room": "lobby", "ttl_secs": 3600, "max_uses": 2,
               "scopes": ["query.read", {"action": "pub.publish", "resource_prefix": "chat/"}]}),
    )
    .await;
    assert!(link["url"].as_str().unwrap().contains("/ui/#/invite/"));
    assert!(link["expires_at"].as_str().unwrap().ends_with('Z'));
    let (s, got) = redeem(&server, link["token"].as_str().unwrap(), "Ada").await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(
        (got["db_id"].as_str(), got["room"].as_str()),
        (Some("club"), Some("lobby"))
    );
    let token = got["token"].as_str().unwrap();
    // Within its grants: reads, and publishes under chat/.
    let call = |method: Method, path: &str, body: Value| {
        server
            .anon(method, path)
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let r = call(
        Method::POST,
        "/api/v1/db/club/query/exec",
        json!({"sql": "SELECT patchwork_caller_name()"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["rows"][0][0],
        "Ada",
        "the member name is the caller name"
    );
    let r = call(
        Method::POST,
        "/api/v1/db/club/messages",
        json!({"topic": "chat/a", "payload_text": "hi"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Outside them: writes, other topics, other documents, token admin.
    for (path, body) in [
        (
            "/api/v1/db/club/query/exec",
            json!({"sql": "CREATE TABLE t (a)"}),
        ),
        (
            "/api/v1/db/club/messages",
            json!({"topic": "admin/x", "payload_text": "no"}),
        ),
        ("/api/v1/db/other/query/exec", json!({"sql": "SELECT 1"})),
        (
            "/api/v1/db/club/invites",
            json!({"scopes": ["query.read"], "ttl_secs": 60}),
        ),
    ] {
        let r = call(Method::POST, path, body).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // Used up after max_uses.
    assert_eq!(
        redeem(&server, link["token"].as_str().unwrap(), "Bo")
            .await
            .0,
        StatusCode::OK
    );
    let (s, v) = redeem(&server, link["token"].as_str().unwrap(), "Cy").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_invite"))
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("used up"));
    // Listed with its uses.
    let r = server
        .admin(Method::GET, "/api/v1/db/club/invites")
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["invites"][0]["uses"], 2);
    assert!(
        server
            .metrics()
            .await
            .contains("patchwork_invites_redeemed_total 2")
    );
}

#[tokio::test]
async fn expired_tampered_revoked_and_bad_requests_are_refused() {
    let server = TestServer::start().await;
    let link = mint(&server, json!({"scopes": ["query.read"], "ttl_secs": 600})).await;
    let token = link["token"].as_str().unwrap();
    // Tampered: any one character changed.
    for i in [0, token.len() / 3, token.len() / 2, token.len() - 1] {
        let mut bytes = token.as_bytes().to_vec();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(bytes).unwrap();
        let (s, v) = redeem(&server, &t, "Eve").await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_invite")),
            "at {i}"
        );
    }
    // Expired (signed by the server's own key, expiry in the past).
    let grants = vec![crate::invites::Grant {
        action: Action::QueryRead,
        resource_prefix: None,
    }];
    let past = time::OffsetDateTime::now_utc().unix_timestamp() - 1;
    let old = crate::invites::link_for_test(
        &server.state,
        link["id"].as_str().unwrap(),
        "club",
        grants.clone(),
        past,
    )
    .await;
    let (s, v) = redeem(&server, &old, "Eve").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
    // A validly signed link for an invite this server never made.
    let future = past + 3600;
    let unknown =
        crate::invites::link_for_test(&server.state, "nope", "club", grants, future).await;
    assert_eq!(
        redeem(&server, &unknown, "Eve").await.0,
        StatusCode::UNAUTHORIZED
    );
    // Revoked.
    let r = server
        .admin(
            Method::DELETE,
            &format!("/api/v1/db/club/invites/{}", link["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (s, v) = redeem(&server, token, "Eve").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"]["message"].as_str().unwrap().contains("revoked"));
    // Bad requests: member names, bodies, grants beyond the inviter's own.
    for member in ["", "   ", "a\u{7}b", &"x".repeat(65)] {
        let (s, v) = redeem(&server, token, member).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{member:?} {v}");
    }
    for body in [
        json!({"scopes": [], "ttl_secs": 600}),
        json!({"scopes": ["admin.token"], "ttl_secs": 600}),
        json!({"scopes": ["query.read"], "ttl_secs": 5}),
        json!({"scopes": ["query.read"], "ttl_secs": 600, "max_uses": 0}),
        json!({"scopes": ["nope"], "ttl_secs": 600}),
        json!({"scopes": ["query.read"], "ttl_secs": 600, "extra": 1}),
    ] {
        let (s, v) = post(
            &server,
            Some(&server.admin_token),
            "/api/v1/db/club/invites",
            body.clone(),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} {v}");
    }
    let inviter = server
        .mint(vec![
            scope("club", Action::AdminToken, None),
            scope("club", Action::QueryRead, None),
        ])
        .await;
    let (s, _) = post(
        &server,
        Some(&inviter),
        "/api/v1/db/club/invites",
        json!({"scopes": ["query.write"], "ttl_secs": 600}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "cannot grant more than it holds");
    let (s, _) = post(
        &server,
        Some(&inviter),
        "/api/v1/db/club/invites",
        json!({"scopes": ["query.read"], "ttl_secs": 600}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let reader = server
        .mint(vec![scope("club", Action::QueryRead, None)])
        .await;
    let (s, _) = post(
        &server,
        Some(&reader),
        "/api/v1/db/club/invites",
        json!({"scopes": ["query.read"], "ttl_secs": 600}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "needs admin.token");
}

/// `patchwork keys rotate` (run against the data dir while the server runs): links signed with
/// the previous key still work; after a second rotation they do not.
#[tokio::test]
async fn key_rotation_keeps_one_grace_key() {
    let server = TestServer::start().await;
    let a = mint(&server, json!({"scopes": ["query.read"], "ttl_secs": 600})).await;
    let kid = crate::tokens_cli::rotate_invite_key(server.dir.path()).unwrap();
    assert_eq!(kid, 2);
    let b = mint(&server, json!({"scopes": ["query.read"], "ttl_secs": 600})).await;
    assert_eq!(
        redeem(&server, a["token"].as_str().unwrap(), "A1").await.0,
        StatusCode::OK,
        "grace key"
    );
    crate::tokens_cli::rotate_invite_key(server.dir.path()).unwrap();
    let (s, v) = redeem(&server, a["token"].as_str().unwrap(), "A2").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "retired key: {v}");
    assert_eq!(
        redeem(&server, b["token"].as_str().unwrap(), "B1").await.0,
        StatusCode::OK,
        "previous key"
    );
    let c = mint(&server, json!({"scopes": ["query.read"], "ttl_secs": 600})).await;
    assert_eq!(
        redeem(&server, c["token"].as_str().unwrap(), "C1").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn redemption_asks_for_proof_of_work_when_configured() {
    let server = TestServer::start_with(|c| c.pow_difficulty = 8).await;
    let link = mint(&server, json!({"scopes": ["query.read"], "ttl_secs": 600})).await;
    let (s, v) = redeem(&server, link["token"].as_str().unwrap(), "Pat").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::PRECONDITION_REQUIRED, Some("pow_required"))
    );
    let challenge = v["error"]["details"]["challenge"].as_str().unwrap();
    let nonce = crate::pow::solve(challenge, 8);
    let r = server
        .anon(Method::POST, "/invites/redeem")
        .header("Patch-PoW", format!("{challenge}:{nonce}"))
        .json(&json!({"token": link["token"], "member": "Pat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
