//! Connection handling over real TCP (issue 21): header and idle timeouts, connection caps,
//! concurrent `/readyz`, and JSON error bodies for rejections that used to be plain text.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::testing::{SseReader, TestServer};

/// A TCP connection to the server from the loopback address `local` (127.x.y.z).
async fn connect_from(server: &TestServer, local: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((local, 0)))
        .expect("bind a loopback address");
    socket.connect(server.addr).await.expect("connect")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP/1.1 response with a `content-length` body: (status, body).
async fn read_response(stream: &mut TcpStream) -> io::Result<(u16, String)> {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("a status line");
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().expect("content-length"))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            return Ok((status, body));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Sends `GET path` on a keep-alive connection and reads the answer.
async fn get(stream: &mut TcpStream, path: &str) -> io::Result<(u16, String)> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await?;
    tokio::time::timeout(Duration::from_secs(5), read_response(stream))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Waits until the server closes `stream` (EOF or reset); how long that took. Panics after
/// `limit`, or if the server sends anything.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => start.elapsed(),
        Ok(Ok(n)) => panic!(
            "the server sent {:?} instead of closing",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("the connection was still open after {limit:?}"),
    }
}

/// What a refused connection sees: the minimal JSON `503`, or the close/reset itself.
async fn assert_refused(stream: &mut TcpStream) {
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut got))
        .await
        .expect("a refused connection is closed promptly");
    if read.is_ok() && !got.is_empty() {
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("\"too_many_connections\""), "{text}");
    }
}

fn metric_value(metrics: &str, line_prefix: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn slow_and_silent_headers_are_cut_at_the_header_timeout() {
    let server = TestServer::start_with(|c| {
        c.header_read_timeout_secs = 1;
        c.http_idle_timeout_secs = 30;
    })
    .await;
    // Part of a request line, then nothing.
    let mut partial = connect_from(&server, [127, 0, 0, 1]).await;
    partial.write_all(b"GET /healthz HT").await.unwrap();
    // Nothing at all.
    let mut silent = connect_from(&server, [127, 0, 0, 1]).await;
    // One byte every 200 ms (a classic slowloris): arriving bytes do not extend the deadline.
    let mut trickle = connect_from(&server, [127, 0, 0, 1]).await;
    let (mut trickle_read, mut trickle_write) = trickle.split();
    let trickling = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa" {
            if trickle_write.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let trickle_closed = async {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), trickle_read.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "the trickling connection was not closed: {read:?}"
        );
        start.elapsed()
    };
    let (partial_after, silent_after, (trickle_after, ())) = tokio::join!(
        closed_within(&mut partial, Duration::from_secs(5)),
        closed_within(&mut silent, Duration::from_secs(5)),
        async { tokio::join!(trickle_closed, trickling) },
    );
    for (what, after) in [
        ("partial", partial_after),
        ("silent", silent_after),
        ("trickle", trickle_after),
    ] {
        assert!(
            after >= Duration::from_millis(700) && after < Duration::from_secs(4),
            "{what} closed after {after:?}"
        );
    }
    let metrics = server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "patchwork_http_connection_timeouts_total{reason=\"header\"} "
        ) >= 3.0,
        "{metrics}"
    );
    // A prompt client is unaffected.
    let mut prompt = connect_from(&server, [127, 0, 0, 1]).await;
    assert_eq!(get(&mut prompt, "/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.header_read_timeout_secs = 10;
        c.http_idle_timeout_secs = 1;
    })
    .await;
    let mut conn = connect_from(&server, [127, 0, 0, 1]).await;
    assert_eq!(get(&mut conn, "/healthz").await.unwrap().0, 200);
    // A request inside the idle window is served on the same connection and restarts it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&mut conn, "/healthz").await.unwrap().0, 200);
    let after = closed_within(&mut conn, Duration::from_secs(5)).await;
    assert!(
        after >= Duration::from_millis(700) && after < Duration::from_secs(4),
        "closed {after:?} after the last response"
    );
    let metrics = server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "patchwork_http_connection_timeouts_total{reason=\"idle\"} "
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn sse_stream_and_websocket_outlive_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.header_read_timeout_secs = 1;
        c.http_idle_timeout_secs = 1;
    })
    .await;
    // No byte flows on this stream for 3 s (the first heartbeat): three idle timeouts.
    let started = Instant::now();
    let response = server
        .admin(
            Method::GET,
            "/api/v1/db/conns/events/stream?topic=a&heartbeat_seconds=3",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = SseReader::new(response);
    let url = format!(
        "ws://{}/api/v1/db/conns/events/ws?access_token={}",
        server.addr, server.admin_token
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let heartbeat = events
        .next(Duration::from_secs(6))
        .await
        .expect("the stream is still open at its first heartbeat");
    assert_eq!(heartbeat.event, "heartbeat");
    assert!(started.elapsed() >= Duration::from_millis(2500));
    // Still delivering.
    let r = server
        .admin(Method::POST, "/api/v1/db/conns/messages")
        .json(&json!({"topic": "a", "payload_text": "late"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let message = events
        .next_non_heartbeat(Duration::from_secs(5))
        .await
        .expect("a message after the idle timeout");
    assert_eq!(message.event, "message");
    assert_eq!(message.json()["topic"], "a");
    // The WebSocket, silent for as long, still answers.
    socket
        .send(WsMessage::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .unwrap();
    let pong = loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame")
            .expect("the socket is open")
            .unwrap();
        if let WsMessage::Text(t) = frame {
            break serde_json::from_str::<Value>(t.as_str()).unwrap();
        }
    };
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn per_ip_cap_refuses_that_address_only_and_recovers() {
    let server = TestServer::start_with(|c| c.max_connections_per_ip = 3).await;
    let mut hogs = Vec::new();
    for _ in 0..3 {
        let mut hog = connect_from(&server, [127, 0, 0, 1]).await;
        assert_eq!(get(&mut hog, "/healthz").await.unwrap().0, 200);
        hogs.push(hog);
    }
    let mut over = connect_from(&server, [127, 0, 0, 1]).await;
    assert_refused(&mut over).await;
    // Another client address is served.
    let mut other = connect_from(&server, [127, 0, 0, 2]).await;
    assert_eq!(get(&mut other, "/healthz").await.unwrap().0, 200);
    // (Not over HTTP: `server.client` would connect from the capped address.)
    let metrics = server.state.metrics.render();
    assert!(
        metric_value(
            &metrics,
            "patchwork_http_connections_refused_total{reason=\"max_connections_per_ip\"} "
        ) >= 1.0,
        "{metrics}"
    );
    drop(hogs);
    let mut recovered = false;
    for _ in 0..40 {
        let mut again = connect_from(&server, [127, 0, 0, 1]).await;
        if matches!(get(&mut again, "/healthz").await, Ok((200, _))) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "connections from 127.0.0.1 work again");
}

#[tokio::test]
async fn total_cap_refuses_every_address_and_recovers() {
    let server = TestServer::start_with(|c| {
        c.max_connections = 4;
        c.max_connections_per_ip = 100;
    })
    .await;
    let mut hogs = Vec::new();
    for i in 0..4u8 {
        let mut hog = connect_from(&server, [127, 0, 0, 1 + i % 2]).await;
        assert_eq!(get(&mut hog, "/healthz").await.unwrap().0, 200);
        hogs.push(hog);
    }
    for local in [[127, 0, 0, 1], [127, 0, 0, 3]] {
        let mut over = connect_from(&server, local).await;
        assert_refused(&mut over).await;
    }
    let metrics = server.state.metrics.render();
    assert!(
        metric_value(
            &metrics,
            "patchwork_http_connections_refused_total{reason=\"max_connections\"} "
        ) >= 2.0,
        "{metrics}"
    );
    assert_eq!(metric_value(&metrics, "patchwork_http_connections "), 4.0);
    // The hogs themselves are still served.
    assert_eq!(get(&mut hogs[0], "/healthz").await.unwrap().0, 200);
    hogs.truncate(3);
    let mut recovered = false;
    for _ in 0..40 {
        let mut again = connect_from(&server, [127, 0, 0, 3]).await;
        if matches!(get(&mut again, "/healthz").await, Ok((200, _))) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "a freed slot is usable again");
}

#[test]
fn connection_budget_leaves_room_for_documents() {
    use crate::state::connection_budget;
    assert_eq!(connection_budget(10_000, 1_024, Some(20_000)), 10_000);
    // 1,024 - 3 × 256 documents - 64 reserved - 40 for background checkpoints.
    assert_eq!(connection_budget(10_000, 256, Some(1_024)), 152);
    assert_eq!(connection_budget(10_000, 1_024, Some(100)), 1);
    assert_eq!(connection_budget(500, 1_024, None), 500);
}

#[tokio::test]
async fn concurrent_readyz_probes_all_succeed() {
    let server = TestServer::start().await;
    let probes = (0..50).map(|_| {
        let req = server.anon(Method::GET, "/readyz");
        tokio::spawn(async move { req.send().await.unwrap().status() })
    });
    for probe in futures_util::future::join_all(probes).await {
        assert_eq!(probe.unwrap(), StatusCode::OK);
    }
    // No probe file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(server.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".readyz"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

async fn json_error(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    assert_eq!(content_type.as_deref(), Some("application/json"), "{body}");
    let value: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(value["error"]["code"].is_string(), "{value}");
    assert!(value["error"]["message"].is_string(), "{value}");
    (status, value)
}

#[tokio::test]
async fn websocket_route_without_an_upgrade_answers_json() {
    let server = TestServer::start().await;
    let r = server
        .admin(Method::GET, "/api/v1/db/wsplain/events/ws")
        .send()
        .await
        .unwrap();
    let (status, body) = json_error(r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "websocket_upgrade_required");
    // Upgrade headers but no key.
    let r = server
        .admin(Method::GET, "/api/v1/db/wsplain/events/ws")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .send()
        .await
        .unwrap();
    let (status, body) = json_error(r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "websocket_upgrade_required");
    // No document was opened or created for these.
    assert!(!server.dir.path().join("documents/wsplain.sqlite3").exists());
}

#[tokio::test]
async fn undecodable_path_parameters_answer_json_400() {
    let server = TestServer::start().await;
    let cases = [
        (Method::GET, "/ui/%FF", false),
        (Method::DELETE, "/api/v1/admin/tokens/%FF", true),
        (Method::GET, "/api/v1/db/%FF/_status", true),
        (Method::GET, "/api/v1/db/ok/webhooks/_config/%FF", true),
        (Method::POST, "/api/v1/db/ok/webhooks/a%FFb", true),
    ];
    for (method, path, admin) in cases {
        let req = if admin {
            server.admin(method.clone(), path)
        } else {
            server.anon(method.clone(), path)
        };
        let r = req.send().await.unwrap();
        let (status, body) = json_error(r).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert_eq!(
            body["error"]["code"], "invalid_path",
            "{method} {path}: {body}"
        );
    }
}

#[tokio::test]
async fn oversized_request_target_and_head_answer_json() {
    let server = TestServer::start().await;
    let long = "a".repeat(crate::server::conn::MAX_URI_BYTES + 10);
    let r = server
        .anon(Method::GET, &format!("/healthz?x={long}"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_error(r).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);
    assert_eq!(body["error"]["code"], "uri_too_long");
    let big = "b".repeat(crate::server::conn::MAX_HEAD_BYTES + 10);
    let r = server
        .anon(Method::GET, "/healthz")
        .header("x-big", big)
        .send()
        .await
        .unwrap();
    let (status, body) = json_error(r).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(body["error"]["code"], "headers_too_large");
    // The connection still serves normal requests afterwards.
    let r = server.anon(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Past hyper's own cap the answer is hyper's bare 431 (written before any service runs).
    let mut conn = connect_from(&server, [127, 0, 0, 1]).await;
    let huge = "c".repeat(80 * 1024);
    let _ = conn
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Huge: {huge}\r\n\r\n").as_bytes())
        .await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got)).await;
    if !got.is_empty() {
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    }
}

#[tokio::test]
async fn stalled_request_body_is_cut_after_the_body_timeout() {
    let server = TestServer::start_with(|c| {
        c.header_read_timeout_secs = 10;
        c.http_idle_timeout_secs = 30;
        c.request_body_timeout_secs = 1;
    })
    .await;
    // A complete head on an anonymous route, then one byte of a 100-byte body, then nothing.
    let mut stalled = connect_from(&server, [127, 0, 0, 1]).await;
    stalled
        .write_all(
            b"POST /auth/token-login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let after = closed_within(&mut stalled, Duration::from_secs(5)).await;
    assert!(
        after >= Duration::from_millis(700) && after < Duration::from_secs(4),
        "closed after {after:?}"
    );
    let metrics = server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "patchwork_http_connection_timeouts_total{reason=\"body\"} "
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_producer_waiting_for_its_consumer_is_not_slow() {
    let server = TestServer::start_with(|c| {
        c.request_body_timeout_secs = 1;
        c.http_idle_timeout_secs = 1;
    })
    .await;
    // The producer's body waits (unread) for a consumer that comes after 2.5 body timeouts.
    let producer = server
        .admin(Method::POST, "/api/v1/db/relay/streams/queue/slowjob")
        .body("the payload")
        .send();
    let consumer = async {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let r = server
            .admin(Method::GET, "/api/v1/db/relay/streams/queue/slowjob/next")
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    };
    let (produced, consumed) = tokio::join!(producer, consumer);
    assert_eq!(consumed, (StatusCode::OK, "the payload".to_owned()));
    assert_eq!(produced.unwrap().status(), StatusCode::OK);
}
