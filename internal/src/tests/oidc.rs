//! OIDC sign-in against a real provider (npm `oidc-provider`, started once per test binary by
//! `testing::oidc`): the whole code flow, and every way a callback must be refused.

use std::sync::Arc;
use std::time::Instant;

use reqwest::cookie::CookieStore as _;
use reqwest::header::LOCATION;
use reqwest::{Client, StatusCode, Url};
use serde_json::{Value, json};

use crate::identity::{COOKIE, CSRF_HEADER};
use crate::testing::TestServer;
use crate::testing::oidc::{self, Provider};

async fn server_for(op: &Provider) -> TestServer {
    TestServer::start_at(move |c, base| {
        op.configure(c, base);
        c.oidc_scopes = vec!["email".into(), "profile".into(), "groups".into()];
        c.oidc_admin_subjects = vec!["root-rita".into()];
        c.oidc_admin_claim = Some("groups=patchwork-admins".into());
    })
    .await
}

/// The `patchwork_session` cookie the jar holds for the server, if any.
fn session_id(jar: &Arc<reqwest::cookie::Jar>, server: &TestServer) -> Option<String> {
    let url = Url::parse(&server.url("/")).unwrap();
    let cookies = jar.cookies(&url)?;
    cookies.to_str().ok()?.split(';').find_map(|c| {
        c.trim()
            .strip_prefix(&format!("{COOKIE}="))
            .map(str::to_owned)
    })
}

async fn me(client: &Client, server: &TestServer) -> (StatusCode, Value) {
    let r = client.get(server.url("/auth/me")).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn login_through_the_provider_starts_a_new_session() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let (client, jar) = oidc::browser_client_with_jar();
    let started = Instant::now();
    let outcome = oidc::login(&client, &server.url(""), "admin-ann", "/ui/docs?tab=sql").await;
    let before = session_id(&jar, &server).expect("a pre-login session");
    let r = outcome.complete().await;
    let elapsed = started.elapsed();
    assert_eq!(r.status(), StatusCode::FOUND, "{}", r.text().await.unwrap());
    assert_eq!(location(&r), "/ui/docs?tab=sql");
    eprintln!("OIDC login round trip: {elapsed:?}");
    let after = session_id(&jar, &server).expect("a session");
    assert_ne!(before, after, "the session id is new after login");

    let (s, me) = me(&client, &server).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["subject"], "admin-ann");
    assert_eq!(me["is_admin"], true, "groups claim maps to admin: {me}");
    assert_eq!(me["email"], "admin-ann@example.test");
    // The user is recorded.
    let admin: bool = server
        .state
        .service
        .read(|conn| {
            Ok(conn.query_row(
                "SELECT is_admin FROM users WHERE subject = 'admin-ann'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert!(admin);
    // An admin session reaches admin routes.
    let r = client.get(server.url("/api/v1/dbs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Replaying the callback is refused, and token login is off while OIDC is on.
    let replay = outcome.complete().await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    let r = client
        .post(server.url("/auth/token-login"))
        .json(&json!({"token": server.admin_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tampered_state_foreign_next_and_mixed_codes_are_refused() {
    let op = oidc::provider().await;
    let server = server_for(op).await;

    // Tampered state: refused, no session; the genuine callback is then spent too.
    let (client, _) = oidc::browser_client_with_jar();
    let outcome = oidc::login(&client, &server.url(""), "mallory", "/ui/").await;
    let forged = client
        .get(outcome.with_param("state", "forged-state"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    assert!(forged.text().await.unwrap().contains("Sign-in failed"));
    assert_eq!(me(&client, &server).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(outcome.complete().await.status(), StatusCode::BAD_REQUEST);

    // A `next` that leaves the site falls back to /ui/.
    for next in [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
    ] {
        let (client, _) = oidc::browser_client_with_jar();
        let outcome = oidc::login(&client, &server.url(""), "nina", next).await;
        let r = outcome.complete().await;
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(location(&r), "/ui/", "next {next:?}");
    }

    // A code issued to another login attempt (its PKCE challenge and nonce) presented with this
    // attempt's state: the provider refuses the verifier, so no session.
    let (victim, _) = oidc::browser_client_with_jar();
    let theirs = oidc::login(&victim, &server.url(""), "victor", "/ui/").await;
    let (attacker, _) = oidc::browser_client_with_jar();
    let mine = oidc::login(&attacker, &server.url(""), "mallory", "/ui/").await;
    let mixed = mine.with_param("code", &theirs.param("code").unwrap());
    let r = attacker.get(mixed).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(me(&attacker, &server).await.0, StatusCode::UNAUTHORIZED);

    // A provider error comes back as a 400 page.
    let (client, _) = oidc::browser_client_with_jar();
    let outcome = oidc::login(&client, &server.url(""), "erin", "/ui/").await;
    let r = client
        .get(
            outcome
                .with_param("code", "")
                .replace("code=", "error=access_denied&x="),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_expired_id_token_starts_no_session() {
    let op = oidc::provider_with_expired_id_tokens().await;
    let server = server_for(op).await;
    let (client, _) = oidc::browser_client_with_jar();
    let outcome = oidc::login(&client, &server.url(""), "late-larry", "/ui/").await;
    let r = outcome.complete().await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().to_lowercase().contains("expired"));
    assert_eq!(me(&client, &server).await.0, StatusCode::UNAUTHORIZED);
}

/// Signs `login` in; returns the client (holding the session) and its CSRF token.
async fn signed_in(server: &TestServer, login: &str) -> (Client, String) {
    let (client, _) = oidc::browser_client_with_jar();
    let outcome = oidc::login(&client, &server.url(""), login, "/ui/").await;
    assert_eq!(outcome.complete().await.status(), StatusCode::FOUND);
    let (_, me) = me(&client, server).await;
    (client, me["csrf_token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn people_reach_only_the_documents_they_created() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let (bob, bob_csrf) = signed_in(&server, "bob").await;
    let (carol, carol_csrf) = signed_in(&server, "carol").await;
    let open = |client: &Client, csrf: &str, db: &str| {
        client
            .post(server.url(&format!("/api/v1/db/{db}/_open")))
            .header(CSRF_HEADER, csrf)
            .send()
    };
    // Bob creates a document and works in it.
    let r = open(&bob, &bob_csrf, "bobs-notes").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = bob
        .post(server.url("/api/v1/db/bobs-notes/query/exec"))
        .header(CSRF_HEADER, &bob_csrf)
        .json(&json!({"sql": "CREATE TABLE n (v)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Carol reaches neither Bob's document nor one created by a token, and is no admin.
    let r = server
        .admin(reqwest::Method::POST, "/api/v1/db/ops/_open")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for db in ["bobs-notes", "ops"] {
        assert_eq!(
            open(&carol, &carol_csrf, db).await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{db}"
        );
        let r = carol
            .get(server.url(&format!("/api/v1/db/{db}/_status")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{db}");
    }
    // Carol sees no documents and no tokens, and no audit log.
    let dbs: Value = carol
        .get(server.url("/api/v1/dbs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dbs["dbs"], json!([]));
    let tokens: Value = carol
        .get(server.url("/api/v1/admin/tokens"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tokens["tokens"], json!([]));
    let r = carol
        .get(server.url("/api/v1/admin/audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Bob lists only his own documents, with their owner.
    let dbs: Value = bob
        .get(server.url("/api/v1/dbs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = dbs["dbs"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{dbs}");
    assert_eq!(listed[0]["db_id"], "bobs-notes");
    assert_eq!(listed[0]["owner"], "bob");
    assert_eq!(listed[0]["open"], true);
    assert!(listed[0]["last_write_at"].as_str().is_some(), "{dbs}");

    // Tokens: Bob mints only for what he owns, never admin tokens; he sees and revokes only
    // his own.
    let mint = |client: &Client, csrf: &str, body: Value| {
        client
            .post(server.url("/api/v1/admin/tokens"))
            .header(CSRF_HEADER, csrf)
            .json(&body)
            .send()
    };
    let r = mint(
        &bob,
        &bob_csrf,
        json!({"label": "bob's reader", "scopes": [{"db_id": "bobs-notes", "action": "query.read"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let minted: Value = r.json().await.unwrap();
    assert_eq!(minted["created_by"], "oidc:bob");
    for body in [
        json!({"label": "x", "scopes": [{"db_id": "ops", "action": "query.read"}]}),
        json!({"label": "x", "scopes": [{"db_id": "*", "action": "query.read"}]}),
        json!({"label": "x", "is_admin": true}),
    ] {
        let r = mint(&bob, &bob_csrf, body.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{body}");
    }
    let reader = minted["token"].as_str().unwrap();
    let r = server
        .anon(reqwest::Method::GET, "/api/v1/db/bobs-notes/_status")
        .bearer_auth(reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let listed: Value = bob
        .get(server.url("/api/v1/admin/tokens"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![minted["id"].as_str().unwrap()]);
    let revoke_path = format!("/api/v1/admin/tokens/{}", minted["id"].as_str().unwrap());
    let r = carol
        .delete(server.url(&revoke_path))
        .header(CSRF_HEADER, &carol_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "not Carol's token");
    let r = bob
        .delete(server.url(&revoke_path))
        .header(CSRF_HEADER, &bob_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Admin subjects from the settings are admins.
    let (rita, _) = signed_in(&server, "root-rita").await;
    assert_eq!(me(&rita, &server).await.1["is_admin"], true);
    let r = rita
        .get(server.url("/api/v1/db/bobs-notes/_status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_oidc_the_login_routes_say_so() {
    let server = TestServer::start().await;
    for path in ["/auth/login", "/auth/callback?code=x&state=y"] {
        let r = server
            .anon(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn the_audit_log_records_sign_ins_tokens_and_documents() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let (dora, csrf) = signed_in(&server, "dora").await;
    let r = dora
        .post(server.url("/api/v1/db/doras/_open"))
        .header(CSRF_HEADER, &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = dora
        .post(server.url("/api/v1/admin/tokens"))
        .header(CSRF_HEADER, &csrf)
        .json(&json!({"label": "ci", "scopes": [{"db_id": "doras", "action": "pub.publish"}]}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = dora
        .delete(server.url(&format!("/api/v1/admin/tokens/{id}")))
        .header(CSRF_HEADER, &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = dora
        .post(server.url("/auth/logout"))
        .header(CSRF_HEADER, &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let r = server
        .admin(reqwest::Method::GET, "/api/v1/admin/audit?limit=50")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let events: Value = r.json().await.unwrap();
    let seen: Vec<(String, String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("").to_owned(),
                e["action"].as_str().unwrap_or("").to_owned(),
                e["target"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let has = |actor: &str, action: &str, target: &str| {
        seen.iter()
            .any(|(a, b, c)| a == actor && b == action && (target.is_empty() || c == target))
    };
    assert!(has("oidc:dora", "login", ""), "{seen:?}");
    assert!(has("oidc:dora", "document.create", "doras"), "{seen:?}");
    assert!(has("oidc:dora", "token.create", &id), "{seen:?}");
    assert!(has("oidc:dora", "token.revoke", &id), "{seen:?}");
    assert!(has("oidc:dora", "logout", ""), "{seen:?}");
    // Newest first.
    assert_eq!(seen[0].1, "logout");
    for bad in ["0", "1001", "x"] {
        let r = server
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/admin/audit?limit={bad}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn an_id_token_for_another_nonce_starts_no_session() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let (client, _) = oidc::browser_client_with_jar();
    // Start a real login, then change the nonce in the request to the provider (state and PKCE
    // stay right): the ID token comes back for a nonce this session never made.
    let r = client.get(server.url("/auth/login")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let mut to_provider = Url::parse(&location(&r)).unwrap();
    let pairs: Vec<(String, String)> = to_provider
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "nonce" {
                "someone-elses-nonce".into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    to_provider.query_pairs_mut().clear().extend_pairs(pairs);
    let outcome = oidc::authorize(&client, to_provider, "nonce-nick").await;
    let r = outcome.complete().await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().to_lowercase().contains("nonce"));
    assert_eq!(me(&client, &server).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_subject_cannot_pass_for_a_system_name() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    // The bootstrap admin token was created by "bootstrap"; a person whose `sub` is that word
    // must not see or revoke it.
    let (person, csrf) = signed_in(&server, "bootstrap").await;
    let listed: Value = person
        .get(server.url("/api/v1/admin/tokens"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["tokens"], json!([]), "{listed}");
    let all: Value = server
        .admin(reqwest::Method::GET, "/api/v1/admin/tokens")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bootstrap_id = all["tokens"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(all["tokens"][0]["created_by"], "bootstrap");
    let r = person
        .delete(server.url(&format!("/api/v1/admin/tokens/{bootstrap_id}")))
        .header(CSRF_HEADER, &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_refused_callback_deletes_its_pre_login_session() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let (client, jar) = oidc::browser_client_with_jar();
    let outcome = oidc::login(&client, &server.url(""), "replay-rex", "/ui/").await;
    let pending = session_id(&jar, &server).expect("a pre-login session");
    let r = client
        .get(outcome.with_param("state", "forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Even with the old cookie put back, the genuine callback finds nothing.
    let fresh = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = fresh
        .get(&outcome.callback_url)
        .header("cookie", format!("{COOKIE}={pending}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_persons_open_streams_end_when_the_session_does() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let (eve, csrf) = signed_in(&server, "eve-streams").await;
    let r = eve
        .post(server.url("/api/v1/db/eves/_open"))
        .header(CSRF_HEADER, &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = eve
        .get(server.url("/api/v1/db/eves/events/stream?topic=t&heartbeat_seconds=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut stream = crate::testing::SseReader::new(r);
    let r = eve
        .post(server.url("/auth/logout"))
        .header(CSRF_HEADER, &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let started = Instant::now();
    let ended = stream
        .next_non_heartbeat(std::time::Duration::from_secs(5))
        .await
        .expect("an error event");
    assert_eq!(ended.event, "error");
    assert_eq!(ended.json()["code"], "session_ended", "{}", ended.data);
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
}

/// An invite redeemed from a signed-in session makes that person a member with the invite's
/// grants (no token minted); the owner lists the members and removes one, which takes effect
/// on the person's very next request.
#[tokio::test]
async fn an_invite_redeemed_from_a_session_makes_a_member_the_owner_can_remove() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let r = server
        .admin(reqwest::Method::POST, "/api/v1/db/shared-list/invites")
        .json(&json!({"scopes": ["query.read", "pub.subscribe"], "ttl_secs": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let link: Value = r.json().await.unwrap();
    let (dana, csrf) = signed_in(&server, "dana").await;
    let query = || {
        dana.post(server.url("/api/v1/db/shared-list/query/exec"))
            .header(CSRF_HEADER, &csrf)
            .json(&json!({"sql": "SELECT patchwork_caller()"}))
            .send()
    };
    assert_eq!(
        query().await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "not yet a member"
    );
    let r = dana
        .post(server.url("/api/v1/invites/redeem"))
        .header(CSRF_HEADER, &csrf)
        .json(&json!({"token": link["token"], "member": "Dana"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let joined: Value = r.json().await.unwrap();
    assert_eq!(joined["member"], "dana");
    assert!(
        joined.get("token").is_none() || joined["token"].is_null(),
        "{joined}"
    );
    let r = query().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["rows"][0][0],
        "dana",
        "caller is the subject"
    );
    // Only what the invite granted.
    let r = dana
        .post(server.url("/api/v1/db/shared-list/query/exec"))
        .header(CSRF_HEADER, &csrf)
        .json(&json!({"sql": "CREATE TABLE x (a)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The owner (here the admin) lists and removes.
    let r = server
        .admin(reqwest::Method::GET, "/api/v1/db/shared-list/members")
        .send()
        .await
        .unwrap();
    let members: Value = r.json().await.unwrap();
    assert_eq!(members["members"][0]["subject"], "dana");
    assert_eq!(members["members"][0]["name"], "Dana");
    let r = server
        .admin(
            reqwest::Method::DELETE,
            "/api/v1/db/shared-list/members/dana",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        query().await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "removed at once"
    );
}
