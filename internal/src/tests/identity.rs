//! Web sessions over real HTTP: token login, `/auth/me`, CSRF, logout, fixation, expiry and
//! revocation, and no session-store writes on plain reads.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::Action;
use crate::identity::{COOKIE as SESSION_COOKIE, CSRF_HEADER};
use crate::testing::TestServer;

/// `patchwork_session=<id>` from a response's `Set-Cookie`, with the cookie's attributes.
fn session_cookie(r: &reqwest::Response) -> Option<(String, String)> {
    r.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let pair = v.split(';').next()?.trim();
        let value = pair.strip_prefix(&format!("{SESSION_COOKIE}="))?;
        Some((value.to_owned(), v.to_owned()))
    })
}

async fn token_login(server: &TestServer, token: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut req = server
        .anon(Method::POST, "/auth/token-login")
        .json(&json!({ "token": token }));
    if let Some(c) = cookie {
        req = req.header(COOKIE, format!("{SESSION_COOKIE}={c}"));
    }
    req.send().await.unwrap()
}

/// Signs in with the admin token; returns the session cookie value and the CSRF token.
async fn sign_in(server: &TestServer) -> (String, String) {
    let r = token_login(server, &server.admin_token, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (id, _) = session_cookie(&r).expect("a session cookie");
    let me = with_cookie(server, Method::GET, "/auth/me", &id).await;
    assert_eq!(me.0, StatusCode::OK, "{}", me.1);
    (id, me.1["csrf_token"].as_str().unwrap().to_owned())
}

fn request(
    server: &TestServer,
    method: Method,
    path: &str,
    cookie: &str,
) -> reqwest::RequestBuilder {
    server
        .anon(method, path)
        .header(COOKIE, format!("{SESSION_COOKIE}={cookie}"))
}

async fn with_cookie(
    server: &TestServer,
    method: Method,
    path: &str,
    cookie: &str,
) -> (StatusCode, Value) {
    let r = request(server, method, path, cookie).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn session_rows(server: &TestServer) -> i64 {
    server
        .state
        .service
        .read(|conn| Ok(conn.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))?))
        .await
        .unwrap()
}

#[tokio::test]
async fn token_login_gives_a_session_that_acts_like_its_token() {
    let server = TestServer::start().await;
    let r = token_login(&server, &server.admin_token, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (id, attributes) = session_cookie(&r).unwrap();
    let lower = attributes.to_ascii_lowercase();
    assert!(lower.contains("httponly"), "{attributes}");
    assert!(lower.contains("samesite=lax"), "{attributes}");
    assert!(lower.contains("path=/"), "{attributes}");
    assert!(
        !lower.contains("secure"),
        "plain http without public_url: {attributes}"
    );
    // The store keeps only a hash of the id.
    let stored: Vec<u8> = server
        .state
        .service
        .read(|conn| Ok(conn.query_row("SELECT id_hash FROM sessions", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&id));

    let (s, me) = with_cookie(&server, Method::GET, "/auth/me", &id).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["is_admin"], true);
    assert!(me["subject"].as_str().unwrap().starts_with("token:"));
    assert!(me["expires_at"].as_str().is_some());
    let csrf = me["csrf_token"].as_str().unwrap().to_owned();

    // Reads need no CSRF header; unsafe methods do.
    let (s, _) = with_cookie(&server, Method::GET, "/api/v1/dbs", &id).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = with_cookie(&server, Method::POST, "/api/v1/db/notes/_open", &id).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "csrf_required");
    let r = request(&server, Method::POST, "/api/v1/db/notes/_open", &id)
        .header(CSRF_HEADER, "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = request(&server, Method::POST, "/api/v1/db/notes/query/exec", &id)
        .header(CSRF_HEADER, &csrf)
        .json(&json!({"sql": "CREATE TABLE t (v)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Only admin tokens sign in; unknown ones neither.
    let scoped = server
        .mint(vec![crate::testing::scope(
            "notes",
            Action::QueryRead,
            None,
        )])
        .await;
    for token in [scoped.as_str(), "pw_nope_nope"] {
        let r = token_login(&server, token, None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(session_cookie(&r).is_none());
    }
    // No cookie, no session: 401 on /auth/me.
    let r = server.anon(Method::GET, "/auth/me").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn login_issues_a_new_id_and_logout_ends_it_server_side() {
    let server = TestServer::start().await;
    let (old, csrf) = sign_in(&server).await;
    // Signing in again with the old cookie (as an attacker's planted one would be) gives a new
    // id; the old one is gone.
    let r = token_login(&server, &server.admin_token, Some(&old)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (new, _) = session_cookie(&r).unwrap();
    assert_ne!(old, new);
    assert_eq!(
        with_cookie(&server, Method::GET, "/auth/me", &old).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A made-up id is never adopted either.
    let planted = "AAAAAAAAAAAAAAAAAAAAAA";
    let r = token_login(&server, &server.admin_token, Some(planted)).await;
    let (issued, _) = session_cookie(&r).unwrap();
    assert_ne!(issued, planted);

    // Logout needs the CSRF header of its session, then deletes it.
    let new_csrf = with_cookie(&server, Method::GET, "/auth/me", &new).await.1["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_csrf, csrf);
    let (s, _) = with_cookie(&server, Method::POST, "/auth/logout", &new).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let before = session_rows(&server).await;
    let r = request(&server, Method::POST, "/auth/logout", &new)
        .header(CSRF_HEADER, &new_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(session_rows(&server).await, before - 1);
    for path in ["/auth/me", "/api/v1/dbs"] {
        let (s, _) = with_cookie(&server, Method::GET, path, &new).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test]
async fn plain_reads_do_not_write_the_session_store() {
    let server = TestServer::start().await;
    let (id, _) = sign_in(&server).await;
    let writes = server.state.sessions.writes.load(Ordering::Relaxed);
    for _ in 0..20 {
        let (s, _) = with_cookie(&server, Method::GET, "/api/v1/dbs", &id).await;
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!(server.state.sessions.writes.load(Ordering::Relaxed), writes);
}

#[tokio::test]
async fn revoking_the_token_ends_its_sessions() {
    let server = TestServer::start().await;
    let r = server
        .admin(Method::POST, "/api/v1/admin/tokens")
        .json(&json!({"label": "second admin", "is_admin": true}))
        .send()
        .await
        .unwrap();
    let created: Value = r.json().await.unwrap();
    let token = created["token"].as_str().unwrap();
    let r = token_login(&server, token, None).await;
    let (id, _) = session_cookie(&r).unwrap();
    assert_eq!(
        with_cookie(&server, Method::GET, "/api/v1/dbs", &id)
            .await
            .0,
        StatusCode::OK
    );
    let r = server
        .admin(
            Method::DELETE,
            &format!("/api/v1/admin/tokens/{}", created["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (s, v) = with_cookie(&server, Method::GET, "/api/v1/dbs", &id).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
}

#[tokio::test]
async fn idle_and_absolute_expiry_end_sessions_and_rows_are_swept() {
    let server = TestServer::start_with(|c| c.session_idle_secs = 1).await;
    let (idle, _) = sign_in(&server).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        with_cookie(&server, Method::GET, "/auth/me", &idle).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(session_rows(&server).await >= 1, "expired, not yet swept");
    let swept = server.state.sessions.delete_expired().await.unwrap();
    assert!(swept >= 1);
    assert_eq!(session_rows(&server).await, 0);

    let server = TestServer::start_with(|c| c.session_absolute_secs = 3).await;
    let (id, _) = sign_in(&server).await;
    // Used all along (so never idle), it still ends at the absolute limit (whole seconds: it may
    // end up to a second early).
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            with_cookie(&server, Method::GET, "/auth/me", &id).await.0,
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let (s, v) = with_cookie(&server, Method::GET, "/auth/me", &id).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(
        session_rows(&server).await,
        0,
        "deleted when found past its limit"
    );
}

#[tokio::test]
async fn session_cookie_is_secure_behind_https() {
    let server =
        TestServer::start_with(|c| c.public_url = Some("https://pw.example.test".into())).await;
    let r = token_login(&server, &server.admin_token, None).await;
    let (_, attributes) = session_cookie(&r).unwrap();
    assert!(
        attributes.to_ascii_lowercase().contains("secure"),
        "{attributes}"
    );
}

#[tokio::test]
async fn relayed_pages_cannot_act_as_the_site() {
    let server = TestServer::start().await;
    let (cookie, _) = sign_in(&server).await;
    // A sender relays an HTML page that would read /auth/me, and tries to plant a cookie.
    let send = server
        .anon(Method::POST, "/public/evil")
        .header("content-type", "text/html")
        .header(
            "patch-h-set-cookie",
            format!("{SESSION_COOKIE}=planted; Path=/"),
        )
        .header("patch-h-clear-site-data", "\"cookies\"")
        .body("<script>fetch('/auth/me')</script>")
        .send();
    let receive = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        request(&server, Method::GET, "/public/evil", &cookie)
            .send()
            .await
            .unwrap()
    };
    let (sent, got) = tokio::join!(send, receive);
    assert_eq!(sent.unwrap().status(), StatusCode::OK);
    assert_eq!(got.status(), StatusCode::OK);
    let csp = got
        .headers()
        .get_all("content-security-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(", ");
    assert!(csp.contains("sandbox"), "{csp}");
    assert_eq!(got.headers()["x-content-type-options"], "nosniff");
    assert!(got.headers().get(SET_COOKIE).is_none());
    assert!(got.headers().get("clear-site-data").is_none());

    // Relay routes take no session at all: a link cannot consume a message as a signed-in person.
    let r = request(
        &server,
        Method::GET,
        "/api/v1/db/relay/streams/queue/t/next",
        &cookie,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn session_websockets_must_come_from_this_site() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let server = TestServer::start().await;
    let (cookie, _) = sign_in(&server).await;
    let url = format!("ws://{}/api/v1/db/ws/events/ws", server.addr);
    let connect = |origin: Option<String>| {
        let mut req = url.clone().into_client_request().unwrap();
        req.headers_mut().insert(
            "cookie",
            format!("{SESSION_COOKIE}={cookie}").parse().unwrap(),
        );
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    for origin in [Some("https://evil.example".to_owned()), None] {
        match connect(origin.clone()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin:?}")
            }
            other => panic!("{origin:?}: {:?}", other.map(|_| ())),
        }
    }
    let own = format!("http://{}", server.addr);
    assert!(connect(Some(own)).await.is_ok());
}
