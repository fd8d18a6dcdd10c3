//! Regressions of the security review (issue 21), over real HTTP: query-string credentials in
//! every spelling are never stored, forwarded or logged; webhook endpoints are stored as checked;
//! a stream channel has one resource on every route family; revoked or expired tokens end their
//! open streams.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::auth::{Action, NewToken, Scope};
use crate::testing::{SseReader, TestServer, scope};

const WAIT: Duration = Duration::from_secs(5);
/// How soon a revoked token's stream must end.
const REVOKE_DEADLINE: Duration = Duration::from_secs(1);

/// A token with `scopes`: `(id, plaintext)`.
async fn token(server: &TestServer, scopes: Vec<Scope>) -> (String, String) {
    token_until(server, scopes, None).await
}

async fn token_until(
    server: &TestServer,
    scopes: Vec<Scope>,
    expires_at: Option<OffsetDateTime>,
) -> (String, String) {
    let (meta, plain) = server
        .state
        .tokens
        .create(NewToken {
            label: "security".into(),
            is_admin: false,
            scopes,
            expires_at,
        })
        .await
        .unwrap();
    (meta.id, plain)
}

/// Revokes through the admin API, as the review did.
async fn revoke(server: &TestServer, id: &str) {
    let r = server
        .admin(Method::DELETE, &format!("/api/v1/admin/tokens/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

async fn inbox(server: &TestServer, db: &str) -> Vec<Value> {
    let v: Value = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/query/exec"))
        .json(&json!({"sql": "SELECT endpoint, query_string, headers_json, signature_valid FROM webhook_inbox ORDER BY id"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["rows"].as_array().unwrap().clone()
}

/// One HTTP/1.1 request written byte for byte (no client-side path normalisation: reqwest's
/// URL parser would turn `%2e%2e` into `..` and resolve it). Returns status and body.
async fn raw(server: &TestServer, method: &str, target: &str, token: &str) -> (u16, String) {
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 1\r\nConnection: close\r\n\r\nx",
        server.addr
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut response))
        .await
        .expect("the server answers")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Everything the tracing macros emit on this thread (span fields and event fields).
mod capture {
    use std::fmt::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    pub struct Capture {
        pub text: Arc<Mutex<String>>,
        next: AtomicU64,
    }

    impl Capture {
        pub fn new(text: Arc<Mutex<String>>) -> Self {
            Self {
                text,
                next: AtomicU64::new(1),
            }
        }
    }

    struct Visitor<'a>(&'a mut String);

    impl Visit for Visitor<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            let mut text = self.text.lock().unwrap();
            let _ = write!(text, "\nspan {} ", span.metadata().name());
            span.record(&mut Visitor(&mut text));
            Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed))
        }
        fn record(&self, _: &Id, values: &Record<'_>) {
            values.record(&mut Visitor(&mut self.text.lock().unwrap()));
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut text = self.text.lock().unwrap();
            text.push_str("\nevent ");
            event.record(&mut Visitor(&mut text));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

// ---- 1. query-string credentials ------------------------------------------------------------

#[tokio::test]
async fn webhook_query_credentials_in_every_spelling_are_never_stored() {
    let server = TestServer::start().await;
    let (_, ingest) = token(&server, vec![scope("hooks", Action::WebhookIngest, None)]).await;
    // The review's two spellings, plus the legacy `token` key, which the auth middleware
    // accepts on every query-token route, in plain and encoded form.
    let spellings = [
        "access%5Ftoken",
        "%61ccess_token",
        "access_token",
        "token",
        "%74oken",
        "%41ccess_token", // not a credential key (keys are case-sensitive): kept, not a token
    ];
    for (i, key) in spellings.iter().enumerate() {
        let r = server
            .anon(
                Method::POST,
                &format!("/api/v1/db/hooks/webhooks/gh/push?a={i}&{key}={ingest}&b=2"),
            )
            .body("{}")
            .send()
            .await
            .unwrap();
        if *key == "%41ccess_token" {
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{key} carries no token"
            );
            continue;
        }
        assert_eq!(r.status(), StatusCode::CREATED, "{key} authenticates");
    }
    // Several credential pairs at once, and one with an empty value, are all removed.
    let r = server
        .anon(
            Method::POST,
            &format!(
                "/api/v1/db/hooks/webhooks/gh/push?access%5Ftoken={ingest}&token=&x=%20y&%74oken={ingest}"
            ),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // What a `query.read` holder sees of the inbox.
    let (_, reader) = token(&server, vec![scope("hooks", Action::QueryRead, None)]).await;
    let v: Value = server
        .anon(Method::POST, "/api/v1/db/hooks/query/exec")
        .bearer_auth(&reader)
        .json(&json!({"sql": "SELECT * FROM webhook_inbox"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dump = v.to_string();
    assert!(!dump.contains(&ingest), "the token is stored: {dump}");
    let rows = inbox(&server, "hooks").await;
    let queries: Vec<&str> = rows.iter().map(|r| r[1].as_str().unwrap()).collect();
    assert_eq!(
        queries,
        [
            "a=0&b=2", "a=1&b=2", "a=2&b=2", "a=3&b=2", "a=4&b=2", "x=%20y"
        ],
        "other pairs are kept exactly as received"
    );
}

#[tokio::test]
async fn query_tokens_never_reach_logs_or_patch_uri() {
    let text = Arc::new(Mutex::new(String::new()));
    // The test runtime is single-threaded: the server's tasks log on this thread.
    let _guard = tracing::subscriber::set_default(capture::Capture::new(text.clone()));
    let server = TestServer::start().await;
    let (_, ingest) = token(&server, vec![scope("hooks", Action::WebhookIngest, None)]).await;
    for key in ["access%5Ftoken", "%61ccess_token", "token"] {
        let r = server
            .anon(
                Method::POST,
                &format!("/api/v1/db/hooks/webhooks/gh/push?{key}={ingest}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // An audit log line for a refused query token, too.
    let r = server
        .anon(
            Method::POST,
            "/api/v1/db/hooks/webhooks/gh/push?access%5Ftoken=pw_not_a_real_token_9f8e7d",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A `/u/` producer's encoded `token` key never reaches the consumer's `Patch-Uri`.
    let (_, streamer) = token(
        &server,
        vec![
            scope("team", Action::StreamRead, None),
            scope("team", Action::StreamWrite, None),
        ],
    )
    .await;
    let consumer = {
        let req = server
            .anon(Method::GET, "/u/team/queue/uri")
            .bearer_auth(&streamer);
        tokio::spawn(async move { req.send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let producer = server
        .anon(
            Method::POST,
            &format!("/u/team/queue/uri?k=v&%74oken={streamer}&access%5Ftoken={streamer}"),
        )
        .body("m")
        .send()
        .await
        .unwrap();
    let got = consumer.await.unwrap();
    assert_eq!(got.headers()["patch-uri"], "/u/team/queue/uri?k=v");
    assert_eq!(got.text().await.unwrap(), "m");
    assert_eq!(producer.status(), StatusCode::OK);

    let logged = text.lock().unwrap().clone();
    assert!(
        logged.contains("span request"),
        "the request span was captured: {logged}"
    );
    for secret in [
        ingest.as_str(),
        streamer.as_str(),
        "pw_not_a_real_token_9f8e7d",
    ] {
        assert!(!logged.contains(secret), "a token was logged:\n{logged}");
    }
    assert!(!logged.contains("access%5Ftoken"), "a query was logged");
}

// ---- 2. webhook endpoints are stored as checked -------------------------------------------

#[tokio::test]
async fn webhook_endpoint_is_stored_as_the_scope_checked_it() {
    let server = TestServer::start().await;
    let (_, gh) = token(
        &server,
        vec![scope("hooks", Action::WebhookIngest, Some("gh/"))],
    )
    .await;
    // The review's case: `gh/%2e%2e/x` passes `gh/` decoded; dot segments are refused (JSON).
    for target in [
        "gh/%2e%2e/x",
        "gh/%2E%2E/secret",
        "gh/%2e/x",
        "gh/a/%2e%2e",
        "gh/%2F/x",
    ] {
        let (status, body) = raw(
            &server,
            "POST",
            &format!("/api/v1/db/hooks/webhooks/{target}"),
            &gh,
        )
        .await;
        assert_eq!(status, 400, "{target}: {body}");
        let v: Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(v["error"]["code"], "invalid_endpoint", "{target}");
    }
    // Bytes that do not decode to UTF-8: a JSON 400 too.
    let (status, body) = raw(&server, "POST", "/api/v1/db/hooks/webhooks/gh/%ff", &gh).await;
    assert_eq!(status, 400, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"].is_string());
    // Outside the prefix once decoded: refused.
    let (status, _) = raw(&server, "POST", "/api/v1/db/hooks/webhooks/%67l/x", &gh).await;
    assert_eq!(status, 403);
    // Encoded but harmless names are stored decoded, the string the scope saw.
    let (status, _) = raw(&server, "POST", "/api/v1/db/hooks/webhooks/%67h/x", &gh).await;
    assert_eq!(status, 201);
    let (status, _) = raw(&server, "POST", "/api/v1/db/hooks/webhooks/gh/a%20b", &gh).await;
    assert_eq!(status, 201);
    // A reserved name cannot be reached by encoding its underscore.
    let (status, _) = raw(
        &server,
        "POST",
        "/api/v1/db/hooks/webhooks/%5Fconfig/x",
        &server.admin_token,
    )
    .await;
    assert_eq!(status, 400);
    // The config routes name endpoints the same (decoded) way as deliveries.
    let r = server
        .admin(Method::PUT, "/api/v1/db/hooks/webhooks/_config/gh/a%20b")
        .json(&json!({"scheme": "hmac-sha256", "secret": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, _) = raw(&server, "POST", "/api/v1/db/hooks/webhooks/gh/a%20b", &gh).await;
    assert_eq!(status, 201);
    let rows = inbox(&server, "hooks").await;
    let endpoints: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(endpoints, ["gh/x", "gh/a b", "gh/a b"]);
    assert!(rows[1][3].is_null(), "no config yet");
    assert_eq!(rows[2][3], 0, "the config applies: checked, unsigned");
}

// ---- 3. one resource per stream channel ----------------------------------------------------

fn spawn(req: reqwest::RequestBuilder) -> tokio::task::JoinHandle<reqwest::Response> {
    tokio::spawn(async move { req.send().await.unwrap() })
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

/// A consumer on `receive` (with `token`) meets a producer on `send` (with `producer`).
async fn relay(
    server: &TestServer,
    receive: &str,
    token: &str,
    send: &str,
    producer: &str,
    body: &str,
) {
    let consumer = spawn(server.anon(Method::GET, receive).bearer_auth(token));
    settle().await;
    let r = server
        .anon(Method::POST, send)
        .bearer_auth(producer)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, consumer).await.unwrap().unwrap();
    assert_eq!(got.status(), StatusCode::OK, "{receive} <- {send}");
    assert_eq!(got.text().await.unwrap(), body, "{receive} <- {send}");
    assert_eq!(r.status(), StatusCode::OK, "{send}");
}

async fn status(server: &TestServer, method: Method, path: &str, token: &str) -> StatusCode {
    server
        .anon(method, path)
        .bearer_auth(token)
        .body("x")
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn stream_prefix_is_checked_the_same_on_canonical_and_legacy_routes() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    // The review's token: stream.read with resource_prefix "queue/". It was refused on the
    // canonical route but read the same channel through /u/. Now both routes name the channel
    // `queue/secretchan` and agree (the prefix covers it).
    let (_, queue_reader) = token(
        &server,
        vec![scope("team", Action::StreamRead, Some("queue/"))],
    )
    .await;
    relay(
        &server,
        "/api/v1/db/team/streams/queue/secretchan/next",
        &queue_reader,
        "/u/team/queue/secretchan",
        &admin,
        "via canonical",
    )
    .await;
    relay(
        &server,
        "/u/team/queue/secretchan",
        &queue_reader,
        "/api/v1/db/team/streams/queue/secretchan",
        &admin,
        "via legacy",
    )
    .await;

    // A narrower prefix: refused on every route family for the channel outside it…
    let (_, open) = token(
        &server,
        vec![
            scope("team", Action::StreamRead, Some("queue/open/")),
            scope("team", Action::StreamWrite, Some("queue/open/")),
        ],
    )
    .await;
    for (method, path) in [
        (Method::GET, "/api/v1/db/team/streams/queue/secretchan/next"),
        (Method::GET, "/api/v1/db/team/streams/queue/secretchan"),
        (Method::POST, "/api/v1/db/team/streams/queue/secretchan"),
        (
            Method::POST,
            "/api/v1/db/team/streams/queue/secretchan?pubsub=true",
        ),
        (Method::GET, "/u/team/queue/secretchan"),
        (Method::POST, "/u/team/queue/secretchan"),
        (Method::POST, "/u/team/queue/secretchan?pubsub"),
        (Method::GET, "/u/team/queue/secretchan?body=hi"),
        (Method::GET, "/u/team/secretchan"),
        (Method::GET, "/u/team/pubsub/secretchan"),
        (Method::GET, "/api/v1/db/team/streams/pubsub/secretchan"),
        (Method::GET, "/u/team/req/open/x"),
        (Method::GET, "/api/v1/db/team/streams/req/open/x"),
        (Method::POST, "/u/team/res/open/x"),
        (Method::POST, "/api/v1/db/team/streams/res/open/x"),
    ] {
        assert_eq!(
            status(&server, method.clone(), path, &open).await,
            StatusCode::FORBIDDEN,
            "{method} {path}"
        );
    }
    // …also when path cleaning, not the raw path, decides the channel.
    let (code, _) = raw(&server, "GET", "/u/team/queue/open/../secretchan", &open).await;
    assert_eq!(code, 403);
    let (code, _) = raw(
        &server,
        "GET",
        "/api/v1/db/team/streams/queue/open/../../secretchan/next",
        &open,
    )
    .await;
    assert_eq!(code, 403);
    // …and allowed on every route family for a channel inside it, in both directions.
    relay(
        &server,
        "/api/v1/db/team/streams/queue/open/x/next",
        &open,
        "/u/team/queue/open/x",
        &open,
        "a",
    )
    .await;
    relay(
        &server,
        "/u/team/queue/open/x",
        &open,
        "/api/v1/db/team/streams/queue/open/x",
        &open,
        "b",
    )
    .await;
    relay(
        &server,
        "/api/v1/db/team/streams/queue/open/x",
        &open,
        "/u/team/queue/open/x",
        &open,
        "c",
    )
    .await;

    // Request/response: requesters are `req/{id}`, responders `res/{id}`, on every family.
    let (_, rr) = token(
        &server,
        vec![
            scope("team", Action::StreamWrite, Some("req/api/")),
            scope("team", Action::StreamRead, Some("res/api/")),
        ],
    )
    .await;
    for (req_path, res_path) in [
        ("/api/v1/db/team/streams/req/api/x", "/u/team/res/api/x"),
        ("/u/team/req/api/x", "/api/v1/db/team/streams/res/api/x"),
    ] {
        let requester = spawn(server.anon(Method::GET, req_path).bearer_auth(&rr));
        settle().await;
        let r = server
            .anon(Method::POST, res_path)
            .bearer_auth(&rr)
            .body("answer")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{res_path}");
        let got = tokio::time::timeout(WAIT, requester)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.text().await.unwrap(), "answer", "{req_path}");
    }
    for (method, path) in [
        (Method::GET, "/api/v1/db/team/streams/req/other/x"),
        (Method::GET, "/u/team/req/other/x"),
        (Method::POST, "/api/v1/db/team/streams/res/other/x"),
        (Method::POST, "/u/team/res/other/x"),
        (Method::GET, "/u/team/queue/api/x"),
    ] {
        assert_eq!(
            status(&server, method.clone(), path, &rr).await,
            StatusCode::FORBIDDEN,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn public_channels_have_the_same_resource_on_token_routes() {
    // `/public/…` and `/p/…` are anonymous (no token is read there, by design); the document
    // `public`'s channels are token-checked on its other two families, against the same string.
    let server = TestServer::start_with(|c| {
        c.rate_limit_ip_rps = 10_000;
        c.rate_limit_ip_burst = 10_000;
    })
    .await;
    let (_, open) = token(
        &server,
        vec![
            scope("public", Action::StreamRead, Some("queue/open/")),
            scope("public", Action::StreamWrite, Some("queue/open/")),
        ],
    )
    .await;
    for path in [
        "/api/v1/db/public/streams/queue/secret/next",
        "/u/public/queue/secret",
    ] {
        assert_eq!(
            status(&server, Method::GET, path, &open).await,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    // Inside the prefix the token routes meet the anonymous `/public/` route's channel.
    let consumer = spawn(server.anon(Method::GET, "/public/queue/open/x"));
    settle().await;
    assert_eq!(
        status(&server, Method::POST, "/u/public/queue/open/x", &open).await,
        StatusCode::OK
    );
    assert_eq!(consumer.await.unwrap().text().await.unwrap(), "x");
    let consumer = spawn(
        server
            .anon(Method::GET, "/api/v1/db/public/streams/queue/open/y/next")
            .bearer_auth(&open),
    );
    settle().await;
    server
        .anon(Method::POST, "/public/queue/open/y")
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(consumer.await.unwrap().text().await.unwrap(), "y");
    // With anonymous routes switched off, a token does not open them either.
    let server = TestServer::start_with(|c| c.streams_public = false).await;
    let (_, open) = token(
        &server,
        vec![scope("public", Action::StreamRead, Some("queue/open/"))],
    )
    .await;
    for path in ["/public/queue/open/x", "/p/queue/open/x"] {
        assert_eq!(
            status(&server, Method::GET, path, &open).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
}

// ---- 4. revoked and expired tokens end their streams ---------------------------------------

async fn publish(server: &TestServer, db: &str, topic: &str) {
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/messages"))
        .json(&json!({"topic": topic, "payload_text": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

async fn sse_as(server: &TestServer, token: &str, db: &str, query: &str) -> SseReader {
    let r = server
        .anon(
            Method::GET,
            &format!("/api/v1/db/{db}/events/stream?{query}"),
        )
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    SseReader::new(r)
}

/// The stream's next non-heartbeat event is an `error` with `code` within `within`, and then
/// the stream ends.
async fn ends_with(reader: &mut SseReader, code: &str, within: Duration) -> Value {
    let event = reader
        .next_non_heartbeat(within)
        .await
        .unwrap_or_else(|| panic!("no {code} event within {within:?}"));
    assert_eq!(event.event, "error", "{event:?}");
    let data = event.json();
    assert_eq!(data["code"], code, "{data}");
    assert!(
        reader.next(Duration::from_secs(1)).await.is_none(),
        "the stream ends after the error event"
    );
    data
}

#[tokio::test]
async fn revoking_a_token_ends_its_open_sse_subscription() {
    let server = TestServer::start().await;
    let (id, sub) = token(&server, vec![scope("rv", Action::PubSubscribe, None)]).await;
    let mut reader = sse_as(&server, &sub, "rv", "topic=a/%23&heartbeat_seconds=1").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&server, "rv", "a/1").await;
    let first = reader.next_non_heartbeat(WAIT).await.unwrap();
    assert_eq!(first.event, "message");
    // Another subscriber on an admin token is not affected.
    let mut other = sse_as(&server, &server.admin_token, "rv", "topic=a/%23").await;
    revoke(&server, &id).await;
    let revoked_at = Instant::now();
    ends_with(&mut reader, "token_revoked", REVOKE_DEADLINE).await;
    assert!(revoked_at.elapsed() < REVOKE_DEADLINE + Duration::from_secs(1));
    publish(&server, "rv", "a/2").await;
    let event = other.next_non_heartbeat(WAIT).await.unwrap();
    assert_eq!(event.event, "message");
    assert_eq!(event.json()["topic"], "a/2");
    // The subscriber gauge dropped back: the subscription task stopped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.metrics().await.contains("patchwork_subscribers 1"));
}

#[tokio::test]
async fn revoking_a_token_ends_its_open_websocket() {
    let server = TestServer::start().await;
    let (id, sub) = token(&server, vec![scope("rvws", Action::PubSubscribe, None)]).await;
    let url = format!(
        "ws://{}/api/v1/db/rvws/events/ws?access_token={sub}",
        server.addr
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
        .send(WsMessage::Text(
            json!({"type": "subscribe", "topics": ["a/#"]})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let frame = tokio::time::timeout(WAIT, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WsMessage::Text(text) = frame else {
        panic!("{frame:?}")
    };
    assert_eq!(
        serde_json::from_str::<Value>(text.as_str()).unwrap()["type"],
        "subscribed"
    );
    revoke(&server, &id).await;
    let mut error = None;
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + REVOKE_DEADLINE;
    while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, socket.next()).await {
        match frame {
            Ok(WsMessage::Text(t)) => {
                error = Some(serde_json::from_str::<Value>(t.as_str()).unwrap())
            }
            Ok(WsMessage::Close(frame)) => {
                assert_eq!(frame.unwrap().reason.as_str(), "token_revoked");
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let error = error.expect("an error frame within a second");
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "token_revoked");
    assert!(closed, "a close frame follows the error frame");
}

#[tokio::test]
async fn an_expiring_token_ends_its_sse_stream_after_expiry() {
    let server = TestServer::start().await;
    let started = Instant::now();
    let expires = OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let (_, sub) = token_until(
        &server,
        vec![scope("exp", Action::PubSubscribe, None)],
        Some(expires),
    )
    .await;
    let mut reader = sse_as(&server, &sub, "exp", "topic=x&heartbeat_seconds=1").await;
    // Heartbeats flow until the expiry; then the error event and the end.
    let first = reader.next(WAIT).await.unwrap();
    assert_eq!(first.event, "heartbeat");
    ends_with(&mut reader, "token_expired", Duration::from_secs(4)).await;
    let elapsed = started.elapsed();
    assert!(
        OffsetDateTime::now_utc() >= expires,
        "ended before the expiry"
    );
    assert!(
        elapsed < Duration::from_millis(3500),
        "ended {elapsed:?} after start"
    );
}

#[tokio::test]
async fn revoking_a_token_ends_its_query_watch_and_stream_waits() {
    let server = TestServer::start().await;
    server
        .admin(Method::POST, "/api/v1/db/rvw/query/exec")
        .json(&json!({"sql": "CREATE TABLE t (x)"}))
        .send()
        .await
        .unwrap();
    let (id, t) = token(
        &server,
        vec![
            scope("rvw", Action::QueryRead, None),
            scope("rvw", Action::StreamRead, None),
        ],
    )
    .await;
    let r = server
        .anon(Method::POST, "/api/v1/db/rvw/query/watch")
        .bearer_auth(&t)
        .json(&json!({"sql": "SELECT count(*) FROM t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut watch = SseReader::new(r);
    assert_eq!(watch.next(WAIT).await.unwrap().event, "snapshot");
    // A legacy consumer waiting with the same token.
    let waiting = spawn(server.anon(Method::GET, "/u/rvw/queue/w").bearer_auth(&t));
    settle().await;
    revoke(&server, &id).await;
    let data = ends_with(&mut watch, "token_revoked", REVOKE_DEADLINE).await;
    assert!(data["watch_id"].is_u64());
    let r = tokio::time::timeout(REVOKE_DEADLINE, waiting)
        .await
        .expect("the wait ends within a second")
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "token_revoked");
    // Nothing was consumed on its behalf: a new consumer gets the next message.
    let next = spawn(server.admin(Method::GET, "/u/rvw/queue/w"));
    settle().await;
    server
        .admin(Method::POST, "/u/rvw/queue/w")
        .body("kept")
        .send()
        .await
        .unwrap();
    assert_eq!(next.await.unwrap().text().await.unwrap(), "kept");
}
