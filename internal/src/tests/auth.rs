//! Authorization over real HTTP: the table-driven matrix over every declared route, the admin
//! API, revocation, rate limits.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::auth::{Access, Action, NewToken, ResourceFrom, RouteSpec, Scope};
use crate::router::route_table;
use crate::testing::TestServer;

fn scope(db: &str, action: Action, prefix: Option<&str>) -> Scope {
    crate::testing::scope(db, action, prefix)
}

async fn mint(server: &TestServer, scopes: Vec<Scope>) -> String {
    server.mint(scopes).await
}

/// A token stored with an expiry in the past (the API refuses to create one).
async fn mint_expired(server: &TestServer, scopes: Vec<Scope>) -> String {
    let key = crate::auth::InstallKey::load_or_create(server.dir.path()).unwrap();
    let (id, plain) = crate::auth::token::mint();
    let new = NewToken {
        label: "expired".into(),
        is_admin: false,
        scopes,
        expires_at: Some(OffsetDateTime::now_utc() - time::Duration::hours(1)),
    };
    let p = plain.clone();
    server
        .state
        .service
        .write(move |c| Ok(crate::auth::sql::insert(c, &key, &id, &p, &new, "test")?))
        .await
        .unwrap();
    server.state.tokens.reload().await.unwrap();
    plain
}

async fn mint_revoked(server: &TestServer, scopes: Vec<Scope>) -> String {
    let (meta, plain) = server
        .state
        .tokens
        .create(NewToken {
            label: "revoked".into(),
            is_admin: false,
            scopes,
            expires_at: None,
        })
        .await
        .unwrap();
    assert!(server.state.tokens.revoke(meta.id, "test").await.unwrap());
    plain
}

/// The concrete path for a route template.
fn concrete(spec: &RouteSpec, db: &str, resource: &str) -> String {
    let mut out = String::new();
    for segment in spec.path.split('/').skip(1) {
        out.push('/');
        match segment {
            "{db_id}" => out.push_str(db),
            s if s.starts_with('{') => {
                let name = s.trim_matches(|c| c == '{' || c == '}' || c == '*');
                match spec.access {
                    // One segment: a `/` in the resource is percent-encoded (presence rooms).
                    Access::Db {
                        resource: ResourceFrom::Path(p),
                        ..
                    } if p == name && !s.starts_with("{*") => {
                        out.push_str(&resource.replace('/', "%2F"))
                    }
                    Access::Db {
                        resource: ResourceFrom::Path(p),
                        ..
                    } if p == name => out.push_str(resource),
                    _ => out.push_str("0123456789abcdef"),
                }
            }
            s => out.push_str(s),
        }
    }
    out
}

fn method_of(spec: &RouteSpec) -> Method {
    spec.method.clone().unwrap_or(Method::POST)
}

/// A plausible body for routes that read one (so "allowed" is not confused with a 400).
fn sample_body(spec: &RouteSpec) -> Option<Value> {
    match spec.path {
        "/api/v1/admin/tokens" if spec.method == Some(Method::POST) => Some(json!({
            "label": "from-matrix", "scopes": [{"db_id": "*", "action": "query.read"}]
        })),
        _ => None,
    }
}

/// The route's actions and the db_id a right scope names.
fn actions_of(spec: &RouteSpec) -> Vec<Action> {
    match spec.access {
        Access::Db { actions, .. } => actions.to_vec(),
        Access::Global(a) => vec![a],
        _ => vec![],
    }
}

fn other_action(actions: &[Action]) -> Action {
    *Action::ALL.iter().find(|a| !actions.contains(a)).unwrap()
}

async fn send(
    server: &TestServer,
    spec: &RouteSpec,
    path: &str,
    token: Option<&str>,
) -> StatusCode {
    send_full(server, spec, path, token).await.0
}

async fn send_full(
    server: &TestServer,
    spec: &RouteSpec,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut req = server.client.request(method_of(spec), server.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(body) = sample_body(spec) {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    // An event stream that is allowed never ends (presence): its status is the answer.
    if r.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        return (r.status(), String::new());
    }
    (r.status(), r.text().await.unwrap())
}

#[tokio::test]
async fn authorization_matrix_over_every_route() {
    // Stream routes wait for a counterpart: a short wait keeps "allowed" requests quick (504).
    let server = TestServer::start_with(|c| c.stream_wait_timeout_secs = 1).await;
    let table = route_table();
    assert!(table.len() >= 8, "the route table lists the routes");
    let mut checked = 0;
    for (i, spec) in table.iter().enumerate() {
        let refused_db = format!("refused{i}");
        let allowed_db = format!("allowed{i}");
        let actions = actions_of(spec);
        let name = format!("{:?} {}", spec.method, spec.path);
        let (right_db, path_refused, path_allowed) = match spec.access {
            Access::Public | Access::Anonymous => continue,
            // Any valid caller passes; the handler filters (tests/oidc.rs, tests/runtime.rs).
            Access::AnyCaller => {
                let path = concrete(spec, "", "x");
                assert_eq!(
                    send(&server, spec, &path, None).await,
                    StatusCode::UNAUTHORIZED,
                    "{name}: no token"
                );
                checked += 1;
                continue;
            }
            // Only a web session passes, never a token (tests/identity.rs signs in).
            Access::Session => {
                let path = concrete(spec, "", "x");
                for token in [None, Some(server.admin_token.as_str())] {
                    let status = send(&server, spec, &path, token).await;
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {token:?}");
                }
                checked += 1;
                continue;
            }
            Access::Admin | Access::Global(_) => (
                "*".to_owned(),
                concrete(spec, "", "x"),
                concrete(spec, "", "x"),
            ),
            Access::Db { .. } => (
                allowed_db.clone(),
                concrete(spec, &refused_db, "allowed/x"),
                concrete(spec, &allowed_db, "allowed/x"),
            ),
        };
        let is_db = matches!(spec.access, Access::Db { .. });
        let scoped_db = if is_db { refused_db.as_str() } else { "*" };

        // No token → 401.
        assert_eq!(
            send(&server, spec, &path_refused, None).await,
            StatusCode::UNAUTHORIZED,
            "{name}: no token"
        );
        // Unknown token → 401.
        assert_eq!(
            send(&server, spec, &path_refused, Some("pw_nope_nope")).await,
            StatusCode::UNAUTHORIZED,
            "{name}: unknown"
        );
        // Wrong action → 403.
        let wrong = mint(
            &server,
            vec![scope(scoped_db, other_action(&actions), None)],
        )
        .await;
        assert_eq!(
            send(&server, spec, &path_refused, Some(&wrong)).await,
            StatusCode::FORBIDDEN,
            "{name}: wrong action"
        );
        if !actions.is_empty() {
            // Right action on another document → 403.
            let elsewhere = mint(
                &server,
                actions
                    .iter()
                    .map(|a| scope("elsewhere", *a, None))
                    .collect(),
            )
            .await;
            assert_eq!(
                send(&server, spec, &path_refused, Some(&elsewhere)).await,
                StatusCode::FORBIDDEN,
                "{name}: other db"
            );
            // Expired and revoked tokens with the right scope → 401.
            let right_scopes: Vec<Scope> =
                actions.iter().map(|a| scope(scoped_db, *a, None)).collect();
            let expired = mint_expired(&server, right_scopes.clone()).await;
            assert_eq!(
                send(&server, spec, &path_refused, Some(&expired)).await,
                StatusCode::UNAUTHORIZED,
                "{name}: expired"
            );
            let revoked = mint_revoked(&server, right_scopes).await;
            assert_eq!(
                send(&server, spec, &path_refused, Some(&revoked)).await,
                StatusCode::UNAUTHORIZED,
                "{name}: revoked"
            );
        }
        if let Access::Db { resource, .. } = spec.access {
            // A prefixed scope grants only resources under its prefix.
            let prefixed = mint(
                &server,
                actions
                    .iter()
                    .map(|a| scope(&refused_db, *a, Some("allowed/")))
                    .collect(),
            )
            .await;
            match resource {
                ResourceFrom::Path(_) => {
                    let outside = concrete(spec, &refused_db, "other/x");
                    assert_eq!(
                        send(&server, spec, &outside, Some(&prefixed)).await,
                        StatusCode::FORBIDDEN,
                        "{name}: outside prefix"
                    );
                }
                ResourceFrom::None => {
                    assert_eq!(
                        send(&server, spec, &path_refused, Some(&prefixed)).await,
                        StatusCode::FORBIDDEN,
                        "{name}: prefixed scope on a route without resource"
                    );
                }
                ResourceFrom::Handler => {}
            }
        }
        // Right scope → neither 401 nor 403 (and the route exists: not 404/405).
        let right = if actions.is_empty() {
            server.admin_token.clone()
        } else {
            mint(
                &server,
                actions.iter().map(|a| scope(&right_db, *a, None)).collect(),
            )
            .await
        };
        let (status, body) = send_full(&server, spec, &path_allowed, Some(&right)).await;
        assert!(
            ![
                StatusCode::UNAUTHORIZED,
                StatusCode::FORBIDDEN,
                StatusCode::METHOD_NOT_ALLOWED
            ]
            .contains(&status)
                && !body.contains("no such route"),
            "{name}: right scope got {status} {body}"
        );
        // The admin token passes everything.
        let status = send(&server, spec, &path_allowed, Some(&server.admin_token)).await;
        assert!(
            ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status),
            "{name}: admin got {status}"
        );
        checked += 1;
    }
    assert!(checked >= 5, "checked {checked} routes");
    // No refused request created a document.
    let refused: Vec<String> = std::fs::read_dir(server.dir.path().join("documents"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("refused"))
        .collect();
    assert!(
        refused.is_empty(),
        "refused requests left files: {refused:?}"
    );
}

#[test]
fn routes_are_only_added_through_the_route_table() {
    // `router.rs` builds the router from `all_routes()` only; any other router call would add
    // a route the authorization table does not know.
    fn walk(dir: &std::path::Path, hits: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, hits);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let needle = concat!(".rou", "te(");
                let nest = concat!(".ne", "st(");
                if (text.contains(needle) || text.contains(nest)) && !path.ends_with("router.rs") {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    let mut hits = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut hits,
    );
    assert!(
        hits.is_empty(),
        "routes added outside the route table in {hits:?}"
    );
    // And every declared route is unique.
    let table = route_table();
    let mut keys: Vec<String> = table
        .iter()
        .map(|s| format!("{:?} {}", s.method, s.path))
        .collect();
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!(n, keys.len());
}

#[tokio::test]
async fn token_admin_api() {
    let server = TestServer::start().await;
    // Create.
    let r = server
        .admin(Method::POST, "/api/v1/admin/tokens")
        .json(&json!({"label": "ci", "scopes": [{"db_id": "notes", "action": "query.read"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("pw_"));
    assert_eq!(created["label"], "ci");
    assert_eq!(created["is_admin"], false);
    assert_eq!(created["scopes"][0]["action"], "query.read");
    // It works where scoped, and nowhere else.
    let ok = server
        .anon(Method::GET, "/api/v1/db/notes/_status")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let no = server
        .anon(Method::GET, "/api/v1/db/other/_status")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(no.status(), StatusCode::FORBIDDEN);
    // List shows metadata, never secrets or hashes.
    let text = server
        .admin(Method::GET, "/api/v1/admin/tokens")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed: Value = serde_json::from_str(&text).unwrap();
    assert!(
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str())
    );
    assert!(!text.contains(&token));
    assert!(!text.contains("hash"));
    // last_used_at is recorded in a batch within about a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let listed: Value = server
            .admin(Method::GET, "/api/v1/admin/tokens")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mine = listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id.as_str())
            .cloned()
            .unwrap();
        if mine["last_used_at"].is_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last_used_at never written: {mine}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Revoke: the very next request is refused.
    let r = server
        .admin(Method::DELETE, &format!("/api/v1/admin/tokens/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let gone = server
        .anon(Method::GET, "/api/v1/db/notes/_status")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED);
    let r = server
        .admin(Method::DELETE, &format!("/api/v1/admin/tokens/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Validation.
    let long = "x".repeat(121);
    let past = "2000-01-01T00:00:00Z";
    for body in [
        json!({"label": "no scope"}),
        json!({"label": long, "is_admin": true}),
        json!({"label": "", "is_admin": true}),
        json!({"label": "past", "is_admin": true, "expires_at": past}),
        json!({"label": "bad time", "is_admin": true, "expires_at": "tomorrow"}),
        json!({"label": "bad action", "scopes": [{"db_id": "x", "action": "query.everything"}]}),
        json!({"label": "bad db", "scopes": [{"db_id": "../x", "action": "query.read"}]}),
        json!({"label": "unknown field", "is_admin": true, "colour": "red"}),
    ] {
        let r = server
            .admin(Method::POST, "/api/v1/admin/tokens")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    let r = server
        .admin(Method::POST, "/api/v1/admin/tokens")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A scoped admin.token holder manages tokens but cannot mint admin tokens.
    let manager = mint(&server, vec![scope("*", Action::AdminToken, None)]).await;
    let r = server
        .anon(Method::POST, "/api/v1/admin/tokens")
        .bearer_auth(&manager)
        .json(&json!({"label": "escalate", "is_admin": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = server
        .anon(Method::GET, "/api/v1/admin/tokens")
        .bearer_auth(&manager)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn expiry_takes_effect_without_a_restart() {
    let server = TestServer::start().await;
    let r = server
        .admin(Method::POST, "/api/v1/admin/tokens")
        .json(&json!({
            "label": "short", "is_admin": true,
            "expires_at": crate::time_fmt::rfc3339(OffsetDateTime::now_utc() + time::Duration::seconds(2)),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ok = server
        .anon(Method::GET, "/api/v1/dbs")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = server
        .anon(Method::GET, "/api/v1/dbs")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn per_token_burst_over_the_limit_is_429_with_retry_after() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_token_rps = 1;
        c.rate_limit_token_burst = 5;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = server
            .admin(Method::GET, "/api/v1/dbs")
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
    // Another token has its own bucket; ops endpoints are not limited.
    let other = mint(&server, vec![scope("*", Action::QueryRead, None)]).await;
    let r = server
        .anon(Method::GET, "/api/v1/db/x/_status")
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for _ in 0..20 {
        assert_eq!(
            server
                .anon(Method::GET, "/healthz")
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn per_ip_limit_ignores_forwarded_for_without_a_trusted_proxy() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_ip_rps = 1;
        c.rate_limit_ip_burst = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        // Each request claims another client address; without a trusted proxy that is ignored.
        let r = server
            .anon(Method::GET, "/h/x")
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::GONE).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);

    // Behind a trusted proxy the forwarded address is the client.
    let server = TestServer::start_with(|c| {
        c.rate_limit_ip_rps = 1;
        c.rate_limit_ip_burst = 1;
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    for i in 0..4 {
        let r = server
            .anon(Method::GET, "/h/x")
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::GONE,
            "client {i} has its own bucket"
        );
    }
}

#[tokio::test]
async fn legacy_hooks_are_gone() {
    let server = TestServer::start().await;
    for (method, path) in [
        (Method::GET, "/h"),
        (Method::POST, "/h/abc"),
        (Method::GET, "/r/abc"),
    ] {
        let r = server.anon(method, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::GONE);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "gone");
        assert!(v["error"]["message"].as_str().unwrap().contains("webhook"));
    }
}
