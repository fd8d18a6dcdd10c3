//! Members of a document (people who joined through an invite from their web session): the
//! owner changes their grants (`PATCH /members/{subject}`) or ends them, effective at once —
//! the person's next request uses the new grants, their sessions are rotated (a new id on the
//! next request, the old cookie dead, the CSRF token kept), and their open streams that the
//! new grants no longer allow end within a second. Plus the expired-session sweeper.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::cookie::CookieStore as _;
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::{Value, json};

use crate::identity::{COOKIE, CSRF_HEADER};
use crate::testing::oidc::{self, Provider};
use crate::testing::{SseReader, TestServer};

async fn server_for(op: &Provider) -> TestServer {
    TestServer::start_at(move |c, base| {
        op.configure(c, base);
        c.oidc_scopes = vec!["email".into(), "profile".into()];
    })
    .await
}

/// A signed-in person: their client (cookie jar on), the jar, and their CSRF token.
struct Person {
    client: Client,
    jar: Arc<reqwest::cookie::Jar>,
    csrf: String,
}

impl Person {
    async fn sign_in(server: &TestServer, login: &str) -> Self {
        let (client, jar) = oidc::browser_client_with_jar();
        let outcome = oidc::login(&client, &server.url(""), login, "/ui/").await;
        assert_eq!(outcome.complete().await.status(), StatusCode::FOUND);
        let me: Value = client
            .get(server.url("/auth/me"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let csrf = me["csrf_token"].as_str().unwrap().to_owned();
        Self { client, jar, csrf }
    }

    /// The session cookie the browser holds now.
    fn cookie(&self, server: &TestServer) -> String {
        let url = Url::parse(&server.url("/")).unwrap();
        let cookies = self.jar.cookies(&url).expect("cookies");
        cookies
            .to_str()
            .unwrap()
            .split(';')
            .find_map(|c| {
                c.trim()
                    .strip_prefix(&format!("{COOKIE}="))
                    .map(str::to_owned)
            })
            .expect("a session cookie")
    }

    async fn send(
        &self,
        server: &TestServer,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, server.url(path))
            .header(CSRF_HEADER, &self.csrf);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn sql(&self, server: &TestServer, db: &str, sql: &str) -> StatusCode {
        let path = format!("/api/v1/db/{db}/query/exec");
        self.send(server, Method::POST, &path, Some(json!({"sql": sql})))
            .await
            .0
    }
}

/// A request with only this cookie (no jar): what a copied cookie gets.
async fn with_cookie(server: &TestServer, path: &str, cookie: &str) -> reqwest::Response {
    Client::new()
        .get(server.url(path))
        .header("cookie", format!("{COOKIE}={cookie}"))
        .send()
        .await
        .unwrap()
}

/// Olga owns `db` (with a table `t`) and has invited `login` with `scopes`; that person is a
/// member now.
async fn owner_and_member(
    server: &TestServer,
    db: &str,
    login: &str,
    scopes: Value,
) -> (Person, Person) {
    let olga = Person::sign_in(server, &format!("olga-{db}")).await;
    let (s, v) = olga
        .send(
            server,
            Method::POST,
            &format!("/api/v1/db/{db}/_open"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        olga.sql(server, db, "CREATE TABLE t (v INTEGER)").await,
        StatusCode::OK
    );
    let (s, link) = olga
        .send(
            server,
            Method::POST,
            &format!("/api/v1/db/{db}/invites"),
            Some(json!({"scopes": scopes, "ttl_secs": 600})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{link}");
    let member = Person::sign_in(server, login).await;
    let (s, v) = member
        .send(
            server,
            Method::POST,
            "/api/v1/invites/redeem",
            Some(json!({"token": link["token"], "member": login})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["member"], login);
    (olga, member)
}

#[tokio::test]
async fn an_owner_changes_a_members_grants_effective_at_once_with_the_session_rotated() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let db = "lists-a";
    let (olga, dana) =
        owner_and_member(&server, db, "dana-m", json!(["query.read", "query.write"])).await;
    assert_eq!(
        dana.sql(&server, db, "INSERT INTO t VALUES (1)").await,
        StatusCode::OK
    );
    let members_path = format!("/api/v1/db/{db}/members/dana-m");

    // Bad bodies: the JSON error shape, nothing changed.
    for bad in [
        json!({"scopes": []}),
        json!({"scopes": ["admin.token"]}),
        json!({"scopes": ["no.such"]}),
        json!({"scopes": [{"action": "query.read", "resource_prefix": ""}]}),
        json!({"scopes": ["query.read"], "extra": 1}),
        json!({}),
    ] {
        let (s, v) = olga
            .send(&server, Method::PATCH, &members_path, Some(bad.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"]["code"].is_string(), "{bad}: {v}");
    }
    // Unknown member: 404.
    let (s, v) = olga
        .send(
            &server,
            Method::PATCH,
            &format!("/api/v1/db/{db}/members/nobody"),
            Some(json!({"scopes": ["query.read"]})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "not_found");
    // The member cannot change their own grants (no admin.token).
    let (s, _) = dana
        .send(
            &server,
            Method::PATCH,
            &members_path,
            Some(json!({"scopes": ["query.read", "query.write", "query.admin"]})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A token with admin.token on the document grants only what it holds itself.
    let limited = server
        .mint(vec![
            crate::testing::scope(db, crate::auth::Action::AdminToken, None),
            crate::testing::scope(db, crate::auth::Action::QueryRead, None),
        ])
        .await;
    let r = Client::new()
        .patch(server.url(&members_path))
        .bearer_auth(&limited)
        .json(&json!({"scopes": ["query.read", "query.write"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        dana.sql(&server, db, "INSERT INTO t VALUES (2)").await == StatusCode::OK,
        "nothing changed yet"
    );

    // Editor → viewer.
    let before = dana.cookie(&server);
    let (s, v) = olga
        .send(
            &server,
            Method::PATCH,
            &members_path,
            Some(json!({"scopes": [{"action": "query.read", "resource_prefix": null}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["member"]["subject"], "dana-m");
    assert_eq!(v["member"]["name"], "dana-m");
    assert_eq!(v["member"]["scopes"], json!([{"action": "query.read"}]));
    assert!(v["member"]["created_at"].is_string());
    // GET /members shows the same entry.
    let (_, list) = olga
        .send(
            &server,
            Method::GET,
            &format!("/api/v1/db/{db}/members"),
            None,
        )
        .await;
    assert_eq!(list["members"][0], v["member"]);

    // Dana's very next request: refused, and it carries a new session cookie.
    assert_eq!(
        dana.sql(&server, db, "INSERT INTO t VALUES (3)").await,
        StatusCode::FORBIDDEN
    );
    let after = dana.cookie(&server);
    assert_ne!(before, after, "the session was rotated");
    // Reading still works, with the same CSRF token (no reload needed).
    assert_eq!(
        dana.sql(&server, db, "SELECT count(*) FROM t").await,
        StatusCode::OK
    );
    let (s, me) = dana.send(&server, Method::GET, "/auth/me", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["csrf_token"], dana.csrf.as_str());
    assert_eq!(dana.cookie(&server), after, "rotated once");
    // The new cookie works on its own; the old one is dead once the grace for requests
    // already on their way is over.
    assert_eq!(
        with_cookie(&server, "/auth/me", &after).await.status(),
        StatusCode::OK
    );
    tokio::time::sleep(crate::identity::store::ROTATION_GRACE + Duration::from_millis(200)).await;
    let r = with_cookie(&server, "/auth/me", &before).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The same grants again: no change, no rotation.
    let (s, _) = olga
        .send(
            &server,
            Method::PATCH,
            &members_path,
            Some(json!({"scopes": ["query.read"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(dana.sql(&server, db, "SELECT 1").await, StatusCode::OK);
    assert_eq!(dana.cookie(&server), after, "no change, no rotation");

    // Removal: the next request is refused, the session rotated again.
    let (s, _) = olga
        .send(&server, Method::DELETE, &members_path, None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        dana.sql(&server, db, "SELECT 1").await,
        StatusCode::FORBIDDEN
    );
    assert_ne!(dana.cookie(&server), after);
    let (s, _) = olga
        .send(
            &server,
            Method::PATCH,
            &members_path,
            Some(json!({"scopes": ["query.read"]})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no longer a member");
    // Still signed in (their own documents are theirs).
    let (s, _) = dana.send(&server, Method::GET, "/auth/me", None).await;
    assert_eq!(s, StatusCode::OK);
}

/// A request that left the browser with the old cookie just before the rotating response
/// came back is not signed out: it continues as a session of its own (a fresh cookie).
#[tokio::test]
async fn a_request_in_flight_with_the_old_cookie_is_not_signed_out() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let db = "lists-b";
    let (olga, erin) = owner_and_member(&server, db, "erin-m", json!(["query.read"])).await;
    let old = erin.cookie(&server);
    let (s, _) = olga
        .send(
            &server,
            Method::PATCH,
            &format!("/api/v1/db/{db}/members/erin-m"),
            Some(json!({"scopes": ["query.read", "pub.subscribe"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Erin's browser rotates…
    assert_eq!(erin.sql(&server, db, "SELECT 1").await, StatusCode::OK);
    let new = erin.cookie(&server);
    assert_ne!(old, new);
    // …while another of its requests still carries the old cookie.
    let r = with_cookie(&server, "/auth/me", &old).await;
    assert_eq!(r.status(), StatusCode::OK);
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{COOKIE}=")))
        .expect("a cookie of its own")
        .to_owned();
    assert!(!set.contains(&old) && !set.contains(&new), "{set}");
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["subject"], "erin-m");
    assert_eq!(me["csrf_token"], erin.csrf.as_str());
}

/// Streams the new grants no longer allow end within a second (`grants_changed`); streams
/// still allowed stay open, across the session's rotation too.
#[tokio::test]
async fn open_streams_the_new_grants_no_longer_allow_end_within_a_second() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let db = "lists-c";
    let (olga, finn) = owner_and_member(
        &server,
        db,
        "finn-m",
        json!([
            "query.read",
            "pub.subscribe",
            {"action": "presence.read", "resource_prefix": "list/"}
        ]),
    )
    .await;
    let sse = |r: reqwest::Response| {
        assert_eq!(r.status(), StatusCode::OK);
        SseReader::new(r)
    };
    let mut watch = sse(finn
        .client
        .post(server.url(&format!("/api/v1/db/{db}/query/watch")))
        .header(CSRF_HEADER, &finn.csrf)
        .json(&json!({"sql": "SELECT count(*) FROM t"}))
        .send()
        .await
        .unwrap());
    let snap = watch
        .next_non_heartbeat(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(snap.event, "snapshot");
    let mut events = sse(finn
        .client
        .get(server.url(&format!(
            "/api/v1/db/{db}/events/stream?topic=list/1&heartbeat_seconds=1"
        )))
        .send()
        .await
        .unwrap());
    let mut presence = sse(finn
        .client
        .get(server.url(&format!("/api/v1/db/{db}/presence/list%2F1/stream")))
        .send()
        .await
        .unwrap());
    let first = presence
        .next_non_heartbeat(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first.event, "snapshot");

    // Subscribing is taken away: the pub/sub stream ends at once, the others go on.
    let started = Instant::now();
    let (s, _) = olga
        .send(
            &server,
            Method::PATCH,
            &format!("/api/v1/db/{db}/members/finn-m"),
            Some(json!({"scopes": [
                "query.read",
                {"action": "presence.read", "resource_prefix": "list/"}
            ]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let ended = events
        .next_non_heartbeat(Duration::from_secs(3))
        .await
        .expect("an error event");
    assert_eq!(ended.event, "error");
    assert_eq!(ended.json()["code"], "grants_changed", "{}", ended.data);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        events.next(Duration::from_secs(2)).await.is_none(),
        "closed"
    );
    let metrics = server.metrics().await;
    for line in [
        "patchwork_streams_open{route=\"/api/v1/db/{db_id}/query/watch\"} 1",
        "patchwork_streams_open{route=\"/api/v1/db/{db_id}/presence/{room}/stream\"} 1",
        "patchwork_streams_open{route=\"/api/v1/db/{db_id}/events/stream\"} 0",
        "patchwork_streams_ended_total{reason=\"grants_changed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }

    // Finn's next request rotates the session; the watch follows it (the session check runs
    // every two seconds) and still delivers.
    assert_eq!(finn.sql(&server, db, "SELECT 1").await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(
        olga.sql(&server, db, "INSERT INTO t VALUES (1)").await,
        StatusCode::OK
    );
    let update = watch
        .next_non_heartbeat(Duration::from_secs(5))
        .await
        .expect("an update");
    assert_eq!(update.event, "update", "{}", update.data);

    // Presence narrowed to another prefix: the presence stream ends; the watch stays.
    let started = Instant::now();
    let (s, _) = olga
        .send(
            &server,
            Method::PATCH,
            &format!("/api/v1/db/{db}/members/finn-m"),
            Some(json!({"scopes": [
                "query.read",
                {"action": "presence.read", "resource_prefix": "other/"}
            ]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let ended = loop {
        let e = presence
            .next_non_heartbeat(Duration::from_secs(3))
            .await
            .expect("an error event");
        if e.event == "error" {
            break e;
        }
    };
    assert_eq!(ended.json()["code"], "grants_changed", "{}", ended.data);
    assert!(started.elapsed() < Duration::from_secs(1));

    // Removal ends the watch too.
    let started = Instant::now();
    let (s, _) = olga
        .send(
            &server,
            Method::DELETE,
            &format!("/api/v1/db/{db}/members/finn-m"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let ended = loop {
        let e = watch
            .next_non_heartbeat(Duration::from_secs(3))
            .await
            .expect("an error event");
        if e.event == "error" {
            break e;
        }
    };
    assert_eq!(ended.json()["code"], "grants_changed", "{}", ended.data);
    assert!(started.elapsed() < Duration::from_secs(1));
    // (Only Finn's one request since the first change rotated a session: the later changes
    // marked it, and it rotates on Finn's next request.)
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("patchwork_streams_ended_total{reason=\"grants_changed\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("patchwork_sessions_rotated_total 1"),
        "{metrics}"
    );
}

/// A WebSocket of a member: taking `pub.subscribe` away closes it (1008, `grants_changed`).
#[tokio::test]
async fn a_members_websocket_closes_when_its_grants_go() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let db = "lists-d";
    let (olga, gus) =
        owner_and_member(&server, db, "gus-m", json!(["query.read", "pub.subscribe"])).await;
    let url = server
        .url(&format!("/api/v1/db/{db}/events/ws"))
        .replacen("http", "ws", 1);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "cookie",
        format!("{COOKIE}={}", gus.cookie(&server)).parse().unwrap(),
    );
    req.headers_mut().insert(
        "origin",
        server.url("").trim_end_matches('/').parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let started = Instant::now();
    let (s, _) = olga
        .send(
            &server,
            Method::PATCH,
            &format!("/api/v1/db/{db}/members/gus-m"),
            Some(json!({"scopes": ["query.read"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut saw_error = false;
    let close = loop {
        let frame = tokio::time::timeout(Duration::from_secs(3), ws.next())
            .await
            .expect("the socket closes")
            .expect("a frame")
            .unwrap();
        match frame {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "error" {
                    assert_eq!(v["code"], "grants_changed", "{v}");
                    saw_error = true;
                }
            }
            tokio_tungstenite::tungstenite::Message::Close(c) => break c,
            _ => {}
        }
    };
    assert!(saw_error);
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "grants_changed");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Expired sessions are deleted by the sweeper task itself (not only by calling it).
#[tokio::test]
async fn the_sweeper_deletes_expired_sessions() {
    let server = TestServer::start_with(|c| c.session_idle_secs = 1).await;
    let r = Client::new()
        .post(server.url("/auth/token-login"))
        .json(&json!({"token": server.admin_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let rows = || async {
        server
            .state
            .service
            .read(|c| Ok(c.query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))?))
            .await
            .unwrap()
    };
    assert_eq!(rows().await, 1);
    tokio::spawn(crate::identity::sweeper(
        server.state.clone(),
        Duration::from_millis(200),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while rows().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the expired session was not swept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A guest who redeemed an invite without signing in holds a token: `DELETE /members/{token_id}`
/// revokes it, their open stream ends within a second (`token_revoked`), later requests are
/// `401`.
#[tokio::test]
async fn removing_a_guest_token_ends_its_streams() {
    let server = TestServer::start().await;
    let db = "guests";
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/invites"))
        .json(&json!({"scopes": ["pub.subscribe", "query.read"], "ttl_secs": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let link: Value = r.json().await.unwrap();
    let r = Client::new()
        .post(server.url("/api/v1/invites/redeem"))
        .json(&json!({"token": link["token"], "member": "Guest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let guest: Value = r.json().await.unwrap();
    let token = guest["token"].as_str().unwrap();
    let r = Client::new()
        .get(server.url(&format!(
            "/api/v1/db/{db}/events/stream?topic=room&heartbeat_seconds=1"
        )))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut stream = SseReader::new(r);
    let started = Instant::now();
    let r = server
        .admin(
            Method::DELETE,
            &format!(
                "/api/v1/db/{db}/members/{}",
                guest["token_id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let ended = stream
        .next_non_heartbeat(Duration::from_secs(3))
        .await
        .expect("an error event");
    assert_eq!(ended.json()["code"], "token_revoked", "{}", ended.data);
    assert!(started.elapsed() < Duration::from_secs(1));
    let r = Client::new()
        .post(server.url(&format!("/api/v1/db/{db}/query/exec")))
        .bearer_auth(token)
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        server
            .metrics()
            .await
            .contains("patchwork_streams_ended_total{reason=\"token_revoked\"} 1")
    );
}

/// An invite admits a person once: a member who redeems the link again keeps the grants the
/// owner set since (a downgraded editor cannot make themselves editor again with the old link).
#[tokio::test]
async fn redeeming_an_invite_again_does_not_undo_a_downgrade() {
    let op = oidc::provider().await;
    let server = server_for(op).await;
    let db = "lists-regrant";
    let olga = Person::sign_in(&server, "olga-regrant").await;
    let (s, v) = olga
        .send(
            &server,
            Method::POST,
            &format!("/api/v1/db/{db}/_open"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        olga.sql(&server, db, "CREATE TABLE t (v INTEGER)").await,
        StatusCode::OK
    );
    let (s, link) = olga
        .send(
            &server,
            Method::POST,
            &format!("/api/v1/db/{db}/invites"),
            Some(json!({"scopes": ["query.read", "query.write"], "ttl_secs": 600})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{link}");
    let eve = Person::sign_in(&server, "eve-regrant").await;
    let redeem = json!({"token": link["token"], "member": "eve-regrant"});
    let (s, v) = eve
        .send(
            &server,
            Method::POST,
            "/api/v1/invites/redeem",
            Some(redeem.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        eve.sql(&server, db, "INSERT INTO t VALUES (1)").await,
        StatusCode::OK
    );
    let (s, v) = olga
        .send(
            &server,
            Method::PATCH,
            &format!("/api/v1/db/{db}/members/eve-regrant"),
            Some(json!({"scopes": ["query.read"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Eve's session was rotated: her next request picks up the new cookie.
    assert_eq!(
        eve.sql(&server, db, "INSERT INTO t VALUES (2)").await,
        StatusCode::FORBIDDEN
    );
    let (s, v) = eve
        .send(
            &server,
            Method::POST,
            "/api/v1/invites/redeem",
            Some(redeem),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["scopes"], json!([{"action": "query.read"}]), "{v}");
    assert_eq!(
        eve.sql(&server, db, "INSERT INTO t VALUES (3)").await,
        StatusCode::FORBIDDEN
    );
}
