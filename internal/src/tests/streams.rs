//! The legacy byte relay over real HTTP.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};

use crate::auth::{Action, NewToken, Scope};
use crate::testing::TestServer;

async fn server() -> TestServer {
    // Plenty of per-IP budget: these tests make many anonymous requests from one address.
    TestServer::start_with(|c| {
        c.rate_limit_ip_rps = 10_000;
        c.rate_limit_ip_burst = 10_000;
    })
    .await
}

fn spawn_get(server: &TestServer, path: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let req = server.anon(Method::GET, path);
    tokio::spawn(async move { req.send().await.unwrap() })
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn queue_rendezvous_in_both_orders_with_headers() {
    let server = server().await;
    // Consumer first.
    let consumer = spawn_get(&server, "/public/queue/a");
    settle().await;
    let r = server
        .anon(Method::POST, "/public/queue/a?k=v")
        .header("Patch-H-X-Trace", "t1")
        .header("Authorization", "Bearer not-forwarded")
        .header("X-Custom", "not-forwarded")
        .header("Content-Type", "application/json")
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let got = consumer.await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["content-type"], "application/json");
    assert_eq!(got.headers()["patch-uri"], "/public/queue/a?k=v");
    assert_eq!(got.headers()["x-trace"], "t1");
    assert!(got.headers().get("authorization").is_none());
    assert!(got.headers().get("x-custom").is_none());
    assert_eq!(got.text().await.unwrap(), "{\"a\":1}");
    // Producer first.
    let producer = {
        let req = server.anon(Method::PUT, "/public/b").body("second");
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    settle().await;
    let got = server.anon(Method::GET, "/public/b").send().await.unwrap();
    assert_eq!(got.headers()["content-type"], "text/plain");
    assert_eq!(got.text().await.unwrap(), "second");
    assert_eq!(producer.await.unwrap(), StatusCode::OK);
    // FIFO among waiting consumers; the query string is not part of the channel.
    let c1 = spawn_get(&server, "/public/fifo?x=1");
    settle().await;
    let c2 = spawn_get(&server, "/public/fifo");
    settle().await;
    for body in ["one", "two"] {
        server
            .anon(Method::POST, "/public/fifo")
            .body(body)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(c1.await.unwrap().text().await.unwrap(), "one");
    assert_eq!(c2.await.unwrap().text().await.unwrap(), "two");
    // ?body= publishes from a GET; an empty POST delivers an empty message.
    let c = spawn_get(&server, "/public/g");
    settle().await;
    let r = server
        .anon(Method::GET, "/public/g?body=hello%20world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(c.await.unwrap().text().await.unwrap(), "hello world");
    let c = spawn_get(&server, "/public/e");
    settle().await;
    server.anon(Method::POST, "/public/e").send().await.unwrap();
    let got = c.await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.text().await.unwrap(), "");
    // Other methods: 405 in the legacy style.
    let r = server
        .anon(Method::DELETE, "/public/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.text().await.unwrap(), "Method not allowed");
}

#[tokio::test]
async fn pubsub_broadcasts_to_every_waiting_receiver_and_drops_when_none() {
    let server = server().await;
    let subs: Vec<_> = (0..3)
        .map(|_| spawn_get(&server, "/public/pubsub/news"))
        .collect();
    settle().await;
    let r = server
        .anon(Method::POST, "/public/pubsub/news")
        .body("flash")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for s in subs {
        assert_eq!(s.await.unwrap().text().await.unwrap(), "flash");
    }
    // Nobody waiting: 200 at once, dropped.
    let started = std::time::Instant::now();
    let r = server
        .anon(Method::POST, "/public/pubsub/news")
        .body("lost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(1));
    // ?pubsub on a plain channel reaches plain consumers too.
    let a = spawn_get(&server, "/public/mixed");
    let b = spawn_get(&server, "/public/mixed");
    settle().await;
    server
        .anon(Method::GET, "/public/mixed?pubsub=false&body=both")
        .send()
        .await
        .unwrap();
    assert_eq!(a.await.unwrap().text().await.unwrap(), "both");
    assert_eq!(b.await.unwrap().text().await.unwrap(), "both");
}

#[tokio::test]
async fn request_responder_for_every_method() {
    let server = server().await;
    for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
        // An observing GET responder sees method, path and headers...
        let observer = spawn_get(&server, "/public/res/api/users");
        settle().await;
        let requester = {
            let req = server
                .anon(method.clone(), "/public/req/api/users?page=2")
                .header("Patch-H-X-Trace", "abc")
                .body("payload");
            tokio::spawn(async move { req.send().await.unwrap() })
        };
        let seen = observer.await.unwrap();
        assert_eq!(seen.headers()["patch-method"], method.as_str());
        assert_eq!(seen.headers()["patch-uri"], "/public/req/api/users?page=2");
        assert_eq!(seen.headers()["x-trace"], "abc");
        assert_eq!(seen.text().await.unwrap(), "payload");
        // ...and a blind POST responder answers that waiting requester, status and headers kept.
        let responder = {
            let req = server
                .anon(Method::POST, "/public/res/api/users")
                .header("Patch-Status", "201")
                .header("Patch-H-X-Answer", "yes")
                .header("Content-Type", "application/json")
                .body("{\"ok\":1}");
            tokio::spawn(async move { req.send().await.unwrap().status() })
        };
        settle().await;
        // The blind responder takes (and discards) a new request, then answers the oldest one.
        let second = server
            .anon(method.clone(), "/public/req/api/users")
            .body("ignored");
        let second = tokio::spawn(async move { second.send().await.unwrap() });
        let answered = requester.await.unwrap();
        assert_eq!(answered.status(), StatusCode::CREATED);
        assert_eq!(answered.headers()["content-type"], "application/json");
        assert_eq!(answered.headers()["x-answer"], "yes");
        assert!(answered.headers().get("patch-status").is_none());
        assert_eq!(answered.text().await.unwrap(), "{\"ok\":1}");
        assert_eq!(responder.await.unwrap(), StatusCode::OK);
        // The second requester (whose request was discarded) now waits for a response of its
        // own; it gives up, and nothing stays registered for it.
        second.abort();
        settle().await;
    }
    let r = server
        .anon(Method::GET, "/public/req/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.text().await.unwrap(), "Channel ID required");
    let r = server
        .anon(Method::DELETE, "/public/res/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn double_clutch_switch() {
    let server = server().await;
    let responder = {
        let req = server
            .anon(Method::POST, "/public/res/svc?switch=true")
            .body("  answer-1  ");
        tokio::spawn(async move { req.send().await.unwrap() })
    };
    settle().await;
    let requester = {
        let req = server
            .anon(Method::DELETE, "/public/req/svc?x=1")
            .header("Patch-H-X-Id", "7")
            .body("question");
        tokio::spawn(async move { req.send().await.unwrap() })
    };
    let seen = responder.await.unwrap();
    assert_eq!(seen.status(), StatusCode::OK);
    assert_eq!(seen.headers()["patch-uri"], "/public/req/svc?x=1");
    assert_eq!(seen.headers()["patch-method"], "DELETE");
    assert_eq!(seen.headers()["patch-h-x-id"], "7");
    assert_eq!(seen.headers()["access-control-allow-origin"], "*");
    assert_eq!(seen.text().await.unwrap(), "question");
    settle().await;
    let r = server
        .anon(Method::POST, "/public/answer-1")
        .header("Patch-Status", "202")
        .header("Patch-H-X-Done", "1")
        .body("the answer")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let answer = requester.await.unwrap();
    assert_eq!(
        answer.status(),
        StatusCode::ACCEPTED,
        "Patch-Status honoured on the answer"
    );
    assert_eq!(answer.headers()["x-done"], "1");
    assert_eq!(answer.headers()["patch-uri"], "/public/answer-1");
    assert_eq!(answer.text().await.unwrap(), "the answer");
    for (method, body, want) in [
        (Method::GET, "x", StatusCode::METHOD_NOT_ALLOWED),
        (Method::POST, "   ", StatusCode::BAD_REQUEST),
        (Method::POST, "a/b", StatusCode::BAD_REQUEST),
        (Method::POST, "a?b", StatusCode::BAD_REQUEST),
    ] {
        let r = server
            .anon(method, "/public/res/svc?switch=true")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{body:?}");
    }
}

#[tokio::test]
async fn switch_timeout_reaches_the_requester_as_504() {
    let server = TestServer::start_with(|c| {
        c.stream_switch_timeout_secs = 1;
        c.rate_limit_ip_rps = 0;
    })
    .await;
    let responder = {
        let req = server
            .anon(Method::POST, "/public/res/slow?switch=true")
            .body("nobody");
        tokio::spawn(async move { req.send().await.unwrap() })
    };
    settle().await;
    let requester = server.anon(Method::GET, "/public/req/slow").send();
    let (seen, answer) = tokio::join!(responder, requester);
    assert_eq!(seen.unwrap().status(), StatusCode::OK);
    let answer = answer.unwrap();
    assert_eq!(answer.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        answer
            .text()
            .await
            .unwrap()
            .contains("Double clutch timeout")
    );
}

#[tokio::test]
async fn wait_timeout_is_a_clean_504_and_consumes_nothing() {
    let server = TestServer::start_with(|c| {
        c.stream_wait_timeout_secs = 1;
        c.rate_limit_ip_rps = 0;
    })
    .await;
    let r = server
        .anon(Method::GET, "/public/lonely")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "timeout");
    let r = server
        .anon(Method::POST, "/public/lonely")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    // The timed-out producer's message is not delivered later.
    let c = spawn_get(&server, "/public/lonely");
    settle().await;
    server
        .anon(Method::POST, "/public/lonely")
        .body("fresh")
        .send()
        .await
        .unwrap();
    assert_eq!(c.await.unwrap().text().await.unwrap(), "fresh");
}

#[tokio::test]
async fn disconnected_parties_are_never_matched() {
    let server = server().await;
    // A waiting consumer that goes away does not swallow the next message.
    let gone = spawn_get(&server, "/public/d1");
    settle().await;
    gone.abort();
    settle().await;
    let c = spawn_get(&server, "/public/d1");
    settle().await;
    server
        .anon(Method::POST, "/public/d1")
        .body("kept")
        .send()
        .await
        .unwrap();
    assert_eq!(c.await.unwrap().text().await.unwrap(), "kept");
    // A waiting producer that goes away withdraws its message.
    let p = {
        let req = server.anon(Method::POST, "/public/d2").body("withdrawn");
        tokio::spawn(async move { req.send().await })
    };
    settle().await;
    p.abort();
    settle().await;
    let c = spawn_get(&server, "/public/d2");
    settle().await;
    server
        .anon(Method::POST, "/public/d2")
        .body("real")
        .send()
        .await
        .unwrap();
    assert_eq!(c.await.unwrap().text().await.unwrap(), "real");
    // A consumer that disconnects mid-body: the producer gets a clean error, not a 200.
    let c = spawn_get(&server, "/public/d3");
    settle().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let producer = {
        let req = server.anon(Method::POST, "/public/d3").body(body);
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    tx.send(Ok(vec![b'x'; 1024])).await.unwrap();
    let consumer = c.await.unwrap();
    let mut stream = consumer.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        !first.is_empty(),
        "bytes flow before the upload is finished"
    );
    drop(stream);
    settle().await;
    let _ = tx.send(Ok(vec![b'y'; 1024])).await;
    drop(tx);
    let status = producer.await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn twenty_concurrent_pairs_match_correctly() {
    let server = server().await;
    let mut consumers = Vec::new();
    for i in 0..20 {
        consumers.push((i, spawn_get(&server, &format!("/public/pair-{i}"))));
    }
    settle().await;
    let mut producers = Vec::new();
    for i in 0..20 {
        let req = server
            .anon(Method::POST, &format!("/public/pair-{i}"))
            .body(format!("message {i}"));
        producers.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    for (i, c) in consumers {
        assert_eq!(
            c.await.unwrap().text().await.unwrap(),
            format!("message {i}")
        );
    }
    for p in producers {
        assert_eq!(p.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_200_mib_body_streams_intact() {
    let server = server().await;
    const SIZE: usize = 200 * 1024 * 1024;
    let consumer = spawn_get(&server, "/public/big");
    settle().await;
    let chunk = (0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    let sent_hash = {
        let mut h = blake3::Hasher::new();
        for _ in 0..SIZE / chunk.len() {
            h.update(&chunk);
        }
        h.finalize()
    };
    let chunks = SIZE / chunk.len();
    let body_chunk = chunk.clone();
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(body_chunk.clone())),
    );
    let producer = {
        let req = server
            .anon(Method::POST, "/public/big")
            .body(reqwest::Body::wrap_stream(stream));
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    let got = consumer.await.unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut n = 0usize;
    let mut stream = got.bytes_stream();
    while let Some(part) = stream.next().await {
        let part = part.unwrap();
        n += part.len();
        hasher.update(&part);
    }
    assert_eq!(n, SIZE);
    assert_eq!(hasher.finalize(), sent_hash);
    assert_eq!(producer.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn legacy_and_canonical_routes_and_access() {
    let server = server().await;
    // /p/x and /public/x are distinct channels; /public/./x is /public/x (no 301).
    let p = spawn_get(&server, "/p/x");
    let public = spawn_get(&server, "/public/x");
    settle().await;
    server
        .anon(Method::POST, "/public/./x")
        .body("to public")
        .send()
        .await
        .unwrap();
    server
        .anon(Method::POST, "/p/x")
        .body("to p")
        .send()
        .await
        .unwrap();
    assert_eq!(public.await.unwrap().text().await.unwrap(), "to public");
    assert_eq!(p.await.unwrap().text().await.unwrap(), "to p");
    // Canonical routes meet the legacy ones of the same document.
    let legacy = spawn_get(&server, "/public/queue/jobs");
    settle().await;
    let r = server
        .admin(Method::POST, "/api/v1/db/public/streams/queue/jobs")
        .body("canonical")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(legacy.await.unwrap().text().await.unwrap(), "canonical");
    let next = {
        let req = server.admin(Method::GET, "/api/v1/db/public/streams/queue/jobs/next");
        tokio::spawn(async move { req.send().await.unwrap() })
    };
    settle().await;
    server
        .anon(Method::POST, "/public/queue/jobs")
        .body("legacy")
        .send()
        .await
        .unwrap();
    assert_eq!(next.await.unwrap().text().await.unwrap(), "legacy");
    // /u/{user}: a token with stream scopes; none → 401; wrong scope → 403.
    let r = server
        .anon(Method::GET, "/u/alice/queue/x?body=hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (_, reader) = server
        .state
        .tokens
        .create(NewToken {
            label: "alice".into(),
            is_admin: false,
            scopes: vec![Scope {
                db_id: "alice".into(),
                action: Action::StreamRead,
                resource_prefix: None,
            }],
            expires_at: None,
        })
        .await
        .unwrap();
    let r = server
        .anon(Method::POST, "/u/alice/queue/x")
        .bearer_auth(&reader)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "stream.read cannot produce"
    );
    let consumer = {
        let req = server.anon(Method::GET, &format!("/u/alice/queue/x?token={reader}"));
        tokio::spawn(async move { req.send().await.unwrap() })
    };
    settle().await;
    server
        .admin(Method::POST, "/u/alice/queue/x")
        .body("for alice")
        .send()
        .await
        .unwrap();
    assert_eq!(consumer.await.unwrap().text().await.unwrap(), "for alice");
    // Streams never create documents.
    assert!(!server.dir.path().join("documents/alice.sqlite3").exists());
    assert!(!server.dir.path().join("documents/public.sqlite3").exists());
}

#[tokio::test]
async fn anonymous_routes_can_be_switched_off_and_are_rate_limited() {
    let server = TestServer::start_with(|c| c.streams_public = false).await;
    let r = server
        .anon(Method::GET, "/public/x?body=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let server = TestServer::start_with(|c| {
        c.rate_limit_ip_rps = 1;
        c.rate_limit_ip_burst = 2;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            server
                .anon(Method::POST, "/public/pubsub/r")
                .body("x")
                .send()
                .await
                .unwrap()
                .status(),
        );
    }
    assert_eq!(statuses[..2], [StatusCode::OK, StatusCode::OK]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn waiting_parties_are_capped() {
    let server = TestServer::start_with(|c| {
        c.stream_max_waiters_per_channel = 2;
        c.rate_limit_ip_rps = 0;
    })
    .await;
    let a = spawn_get(&server, "/public/cap");
    let b = spawn_get(&server, "/public/cap");
    settle().await;
    let r = server
        .anon(Method::GET, "/public/cap")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    a.abort();
    b.abort();
}
