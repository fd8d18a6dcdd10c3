//! Durable pub/sub over real HTTP, SSE and WebSocket.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::auth::Action;
use crate::testing::{SseReader, TestServer};

const WAIT: Duration = Duration::from_secs(5);

async fn publish(server: &TestServer, db: &str, body: Value) -> (StatusCode, Value) {
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn subscribe(server: &TestServer, token: &str, db: &str, query: &str) -> reqwest::Response {
    server
        .anon(
            Method::GET,
            &format!("/api/v1/db/{db}/events/stream?{query}"),
        )
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn sse(server: &TestServer, db: &str, query: &str) -> SseReader {
    let r = subscribe(server, &server.admin_token, db, query).await;
    assert_eq!(r.status(), StatusCode::OK);
    SseReader::new(r)
}

async fn scoped(server: &TestServer, db: &str, action: Action, prefix: Option<&str>) -> String {
    server
        .mint(vec![crate::testing::scope(db, action, prefix)])
        .await
}

fn payload_of(data: &Value) -> Vec<u8> {
    B64.decode(data["payload_base64"].as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn publish_then_receive_over_sse() {
    let server = TestServer::start().await;
    let mut reader = sse(&server, "chat", "topic=room/%2B&heartbeat_seconds=1").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, v) = publish(
        &server,
        "chat",
        json!({"topic": "room/1", "payload": {"text": "hi", "n": 1}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["topic"], "room/1");
    assert_eq!(v["duplicate"], false);
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    let id = v["id"].as_i64().unwrap();
    publish(
        &server,
        "chat",
        json!({"topic": "other", "payload_text": "not for you"}),
    )
    .await;
    publish(
        &server,
        "chat",
        json!({"topic": "room/2", "payload_text": "héllo"}),
    )
    .await;
    publish(
        &server,
        "chat",
        json!({"topic": "room/3", "payload_base64": "AAEC", "content_type": "application/x-raw"}),
    )
    .await;

    let e = reader.next_non_heartbeat(WAIT).await.unwrap();
    assert_eq!(e.event, "message");
    assert_eq!(e.id, Some(id.to_string()));
    let d = e.json();
    assert_eq!(d["topic"], "room/1");
    assert_eq!(d["content_type"], "application/json");
    assert_eq!(payload_of(&d), br#"{"n":1,"text":"hi"}"#.to_vec());
    assert!(d["producer"].is_string());
    let d = reader.next_non_heartbeat(WAIT).await.unwrap().json();
    assert_eq!(d["topic"], "room/2");
    assert_eq!(d["content_type"], "text/plain; charset=utf-8");
    assert_eq!(payload_of(&d), "héllo".as_bytes());
    let d = reader.next_non_heartbeat(WAIT).await.unwrap().json();
    assert_eq!(d["content_type"], "application/x-raw");
    assert_eq!(payload_of(&d), vec![0, 1, 2]);
    let hb = reader.next(Duration::from_secs(3)).await.unwrap();
    assert_eq!(hb.event, "heartbeat");
}

#[tokio::test]
async fn replay_since_id_tail_and_last_event_id() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let topic = if i % 2 == 0 { "even" } else { "odd" };
        let (_, v) = publish(&server, "r", json!({"topic": topic, "payload": i})).await;
        ids.push(v["id"].as_i64().unwrap());
    }
    let mut reader = sse(&server, "r", &format!("topic=even&since_id={}", ids[3])).await;
    let mut got = Vec::new();
    while let Some(e) = reader.next_non_heartbeat(Duration::from_millis(500)).await {
        got.push(e.json()["id"].as_i64().unwrap());
    }
    assert_eq!(got, vec![ids[4], ids[6], ids[8]]);

    let mut reader = sse(&server, "r", "topic=odd&tail=2").await;
    let mut got = Vec::new();
    while let Some(e) = reader.next_non_heartbeat(Duration::from_millis(500)).await {
        got.push(e.json()["id"].as_i64().unwrap());
    }
    assert_eq!(got, vec![ids[7], ids[9]]);

    let r = server
        .admin(Method::GET, "/api/v1/db/r/events/stream?topic=%23")
        .header("Last-Event-ID", ids[7].to_string())
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(r);
    let mut got = Vec::new();
    while let Some(e) = reader.next_non_heartbeat(Duration::from_millis(500)).await {
        got.push(e.json()["id"].as_i64().unwrap());
    }
    assert_eq!(got, vec![ids[8], ids[9]]);

    for bad in [
        "topic=a&since_id=1&tail=1",
        "topic=a&tail=1001",
        "topic=a%2F%23%2Fb",
        "since_id=1",
        "topic=a&bogus=1",
    ] {
        let r = subscribe(&server, &server.admin_token, "r", bad).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn seam_delivers_every_id_exactly_once_in_order() {
    let server = TestServer::start().await;
    for i in 0..200 {
        publish(&server, "seam", json!({"topic": "t", "payload": i})).await;
    }
    // Keep publishing while the subscriber connects and replays.
    let publisher = {
        let req = server.admin(Method::POST, "/api/v1/db/seam/messages");
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..300 {
                let r = req
                    .try_clone()
                    .unwrap()
                    .json(&json!({"topic": "t", "payload": i}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
                last = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
            }
            last
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut reader = sse(&server, "seam", "topic=t&since_id=0").await;
    let last = publisher.await.unwrap();
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        let e = reader
            .next_non_heartbeat(WAIT)
            .await
            .expect("every message arrives");
        got.push(e.json()["id"].as_i64().unwrap());
    }
    let expected: Vec<i64> = (1..=last).collect();
    assert_eq!(got, expected, "no gap, no duplicate, in order");
}

#[tokio::test]
async fn dedupe_sizes_and_validation() {
    let server = TestServer::start().await;
    let (s, a) = publish(
        &server,
        "d",
        json!({"topic": "x", "payload_text": "1", "dedupe_key": "k"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = publish(
        &server,
        "d",
        json!({"topic": "x", "payload_text": "2", "dedupe_key": "k"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(b["id"], a["id"]);
    assert_eq!(b["duplicate"], true);
    let (_, c) = publish(
        &server,
        "d",
        json!({"topic": "y", "payload_text": "3", "dedupe_key": "k"}),
    )
    .await;
    assert_ne!(c["id"], a["id"], "dedupe is per topic");

    let exactly = B64.encode(vec![7u8; 1024 * 1024]);
    let (s, _) = publish(
        &server,
        "d",
        json!({"topic": "big", "payload_base64": exactly}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "exactly 1 MiB is accepted");
    let over = B64.encode(vec![7u8; 1024 * 1024 + 1]);
    let (s, v) = publish(
        &server,
        "d",
        json!({"topic": "big", "payload_base64": over}),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let huge = "x".repeat(3 * 1024 * 1024);
    let (s, _) = publish(&server, "d", json!({"topic": "big", "payload_text": huge})).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

    for body in [
        json!({"topic": "a"}),
        json!({"topic": "a", "payload": 1, "payload_text": "x"}),
        json!({"topic": "a/+", "payload": 1}),
        json!({"topic": "a/#", "payload": 1}),
        json!({"topic": "", "payload": 1}),
        json!({"topic": "x".repeat(513), "payload": 1}),
        json!({"topic": "a", "payload_base64": "!!"}),
        json!({"topic": "a", "payload": 1, "extra": 1}),
        json!({"payload": 1}),
    ] {
        let (s, v) = publish(&server, "d", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    // null is a JSON payload like any other.
    let (s, _) = publish(&server, "d", json!({"topic": "n", "payload": null})).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn batch_publish_is_one_commit_all_or_nothing() {
    let server = TestServer::start().await;
    let r = server
        .admin(Method::POST, "/api/v1/db/b/messages/batch")
        .json(&json!({"messages": [{"topic": "a", "payload": 1}, {"topic": "b", "payload": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    let r = server
        .admin(Method::POST, "/api/v1/db/b/messages/batch")
        .json(&json!({"messages": [{"topic": "a", "payload": 1}, {"topic": "b/#", "payload": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["details"]["index"], 1);
    let mut reader = sse(&server, "b", "topic=%23&since_id=0").await;
    let mut n = 0;
    while reader
        .next_non_heartbeat(Duration::from_millis(400))
        .await
        .is_some()
    {
        n += 1;
    }
    assert_eq!(n, 2, "the refused batch stored nothing");
}

#[tokio::test]
async fn topic_scopes() {
    let server = TestServer::start().await;
    let sub = scoped(&server, "s", Action::PubSubscribe, Some("chat/")).await;
    for (query, want) in [
        ("topic=%23", StatusCode::FORBIDDEN),
        ("topic=%2B%2Fx", StatusCode::FORBIDDEN),
        ("topic=other", StatusCode::FORBIDDEN),
        ("topic=chat%2F%23", StatusCode::OK),
        ("topic=chat%2Froom%2F%2B", StatusCode::OK),
        ("topic=chat%2Fa&topic=news", StatusCode::FORBIDDEN),
    ] {
        let r = subscribe(&server, &sub, "s", query).await;
        assert_eq!(r.status(), want, "{query}");
    }
    let publisher = scoped(&server, "s", Action::PubPublish, Some("chat/")).await;
    let r = server
        .anon(Method::POST, "/api/v1/db/s/messages")
        .bearer_auth(&publisher)
        .json(&json!({"topic": "news", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = server
        .anon(Method::POST, "/api/v1/db/s/messages")
        .bearer_auth(&publisher)
        .json(&json!({"topic": "chat/x", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // A subscriber cannot publish and vice versa.
    let r = server
        .anon(Method::POST, "/api/v1/db/s/messages")
        .bearer_auth(&sub)
        .json(&json!({"topic": "chat/x", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The SSE route takes ?access_token=.
    let r = server
        .anon(
            Method::GET,
            &format!("/api/v1/db/s/events/stream?topic=chat%2F%23&access_token={sub}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn websocket_round_trip() {
    let server = TestServer::start().await;
    let url = format!(
        "ws://{}/api/v1/db/ws/events/ws?access_token={}",
        server.addr, server.admin_token
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
        .send(WsMessage::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .unwrap();
    let recv = async |socket: &mut tokio_tungstenite::WebSocketStream<_>| -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, socket.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let WsMessage::Text(t) = frame {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    };
    assert_eq!(recv(&mut socket).await["type"], "pong");
    socket
        .send(WsMessage::Text(
            json!({"type": "subscribe", "topics": ["a/#"]})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let v = recv(&mut socket).await;
    assert_eq!(v["type"], "subscribed");
    assert_eq!(v["topics"], json!(["a/#"]));
    socket
        .send(WsMessage::Text(
            json!({"type": "publish", "ref": "r1", "topic": "a/b", "payload_text": "hey"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let mut ack = None;
    let mut message = None;
    for _ in 0..2 {
        let v = recv(&mut socket).await;
        match v["type"].as_str() {
            Some("ack") => ack = Some(v),
            Some("message") => message = Some(v),
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    let ack = ack.unwrap();
    let message = message.unwrap();
    assert_eq!(ack["ref"], "r1");
    assert_eq!(ack["duplicate"], false);
    assert_eq!(message["id"], ack["id"]);
    assert_eq!(message["topic"], "a/b");
    assert_eq!(payload_of(&message), b"hey");
    // An HTTP publish reaches the socket too.
    publish(&server, "ws", json!({"topic": "a/c", "payload": 5})).await;
    assert_eq!(recv(&mut socket).await["topic"], "a/c");
    // Errors are frames, not disconnects.
    socket
        .send(WsMessage::Text("not json".into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut socket).await["type"], "error");
    socket
        .send(WsMessage::Text(
            json!({"type": "publish", "ref": 7, "topic": "a/+", "payload": 1})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let v = recv(&mut socket).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["ref"], 7);
    // Unsubscribe stops delivery.
    socket
        .send(WsMessage::Text(
            json!({"type": "unsubscribe", "topics": ["a/#"]})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    recv(&mut socket).await;
    publish(&server, "ws", json!({"topic": "a/d", "payload": 6})).await;
    socket
        .send(WsMessage::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut socket).await["type"], "pong");
}

#[tokio::test]
async fn pipelined_websocket_publishes_are_answered_in_order_and_stored() {
    let server = TestServer::start().await;
    let url = format!(
        "ws://{}/api/v1/db/wspipe/events/ws?access_token={}",
        server.addr, server.admin_token
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // 200 frames written back to back without waiting for answers; a bad one and a ping in
    // the middle must not disturb the order of the answers.
    let mut frames = Vec::new();
    for i in 0..200 {
        let frame = match i {
            50 => json!({"type": "publish", "ref": i, "topic": "p/+", "payload": i}),
            120 => json!({"type": "ping"}),
            _ => {
                json!({"type": "publish", "ref": i, "topic": format!("p/{}", i % 3), "payload": i})
            }
        };
        frames.push(WsMessage::Text(frame.to_string().into()));
    }
    let mut all = futures_util::stream::iter(frames.into_iter().map(Ok));
    socket.send_all(&mut all).await.unwrap();
    let mut last_id = 0;
    for i in 0..200 {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let WsMessage::Text(t) = frame else {
            panic!("unexpected frame {frame:?}")
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        match i {
            50 => {
                assert_eq!(v["type"], "error", "{v}");
                assert_eq!(v["ref"], 50);
            }
            120 => assert_eq!(v["type"], "pong", "{v}"),
            _ => {
                assert_eq!(v["type"], "ack", "{v}");
                assert_eq!(v["ref"], i, "{v}");
                let id = v["id"].as_i64().unwrap();
                assert!(id > last_id, "ids grow in frame order: {last_id} then {id}");
                last_id = id;
            }
        }
    }
    // Every acknowledged message is stored, in order, with its payload.
    let r = server
        .admin(Method::POST, "/api/v1/db/wspipe/query/exec")
        .json(&json!({"sql": "SELECT count(*), min(id), max(id) FROM _patchwork_messages"}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["rows"][0][0], 198, "{v}");
    assert_eq!(v["rows"][0][2], last_id, "{v}");
}

/// A Close sent in the same burst as publishes: the publishes are stored (their acks may not
/// be sendable on a closing socket, as docs/api.md says) and the socket closes cleanly.
#[tokio::test]
async fn a_close_behind_pipelined_publishes_stores_them_and_closes() {
    let server = TestServer::start().await;
    let url = format!(
        "ws://{}/api/v1/db/wsclose/events/ws?access_token={}",
        server.addr, server.admin_token
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut frames: Vec<WsMessage> = (0..5)
        .map(|i| {
            WsMessage::Text(
                json!({"type": "publish", "ref": i, "topic": "c", "payload": i})
                    .to_string()
                    .into(),
            )
        })
        .collect();
    frames.push(WsMessage::Close(None));
    let mut all = futures_util::stream::iter(frames.into_iter().map(Ok));
    socket.send_all(&mut all).await.unwrap();
    // The socket ends (a Close frame or the end of the stream) within the wait.
    tokio::time::timeout(WAIT, async {
        while let Some(Ok(frame)) = socket.next().await {
            if matches!(frame, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await
    .expect("the socket closes");
    let v: Value = server
        .admin(Method::POST, "/api/v1/db/wsclose/query/exec")
        .json(&json!({"sql": "SELECT count(*) FROM _patchwork_messages"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["rows"][0][0], 5, "{v}");
}

#[tokio::test]
async fn a_subscription_that_cannot_read_ends_with_an_error_event() {
    let server = TestServer::start_with(|c| c.mailbox_capacity = 1).await;
    let id = crate::registry::DbId::parse("busy").unwrap();
    let doc = server.state.registry.get(&id).await.unwrap();
    // Occupy the actor and its one mailbox slot: the replay read is refused as overloaded.
    let release = crate::testing::block_actor(&doc).await;
    let filler = doc.clone();
    let queued = tokio::spawn(async move { filler.read(|_| Ok(())).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut events = sse(&server, "busy", "topic=t&since_id=0").await;
    let event = events
        .next_non_heartbeat(WAIT)
        .await
        .expect("an error event");
    assert_eq!(event.event, "error", "{event:?}");
    let data: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["code"], "overloaded", "{data}");
    assert!(
        events.next(Duration::from_secs(2)).await.is_none(),
        "the stream ends"
    );
    release.send(()).unwrap();
    queued.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_while_a_fast_one_keeps_receiving() {
    let server = TestServer::start().await;
    // The slow subscriber never reads its response body.
    let slow = subscribe(&server, &server.admin_token, "slow", "topic=t").await;
    assert_eq!(slow.status(), StatusCode::OK);
    let mut fast = sse(&server, "slow", "topic=t").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let chunk = B64.encode(vec![b'x'; 64 * 1024]);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(e) = fast.next_non_heartbeat(Duration::from_secs(10)).await {
            assert_eq!(e.event, "message", "{}", e.data);
            n += 1;
            if n == 800 {
                break;
            }
        }
        n
    });
    for _ in 0..800 {
        let (s, _) = publish(
            &server,
            "slow",
            json!({"topic": "t", "payload_base64": chunk}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    assert_eq!(
        reader.await.unwrap(),
        800,
        "the fast subscriber got everything"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("patchwork_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
    // The slow one's stream ends with an error event after what was buffered.
    let mut slow = SseReader::new(slow);
    let mut last = None;
    while let Some(e) = slow.next(Duration::from_secs(5)).await {
        last = Some(e);
    }
    let last = last.expect("the slow stream had events");
    assert_eq!(last.event, "error");
    assert_eq!(last.json()["code"], "slow_consumer");
}

#[tokio::test]
async fn retention_rules_and_sweep() {
    let server = TestServer::start().await;
    for i in 0..30 {
        publish(&server, "ret", json!({"topic": if i % 2 == 0 { "chat/a" } else { "keep" }, "payload_text": format!("secret-{i}-end")})).await;
    }
    let r = server
        .admin(Method::GET, "/api/v1/db/ret/messages/retention")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"rules": []}));
    let r = server
        .admin(Method::PUT, "/api/v1/db/ret/messages/retention")
        .json(&json!({"rules": [{"topic_filter": "chat/#", "max_messages": 3}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["rules"][0]["max_messages"],
        3
    );
    for bad in [
        json!({"rules": [{"topic_filter": "a/#/b", "max_messages": 1}]}),
        json!({"rules": [{"topic_filter": "a"}]}),
        json!({"rules": [{"topic_filter": "a", "max_age_seconds": 0}]}),
        json!({"rules": [{"topic_filter": "a", "max_messages": 1, "x": 1}]}),
    ] {
        let r = server
            .admin(Method::PUT, "/api/v1/db/ret/messages/retention")
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    crate::pubsub::retention::sweep_all(&server.state).await;
    let mut reader = sse(&server, "ret", "topic=%23&since_id=0").await;
    let mut topics = Vec::new();
    while let Some(e) = reader.next_non_heartbeat(Duration::from_millis(400)).await {
        topics.push(e.json()["topic"].as_str().unwrap().to_owned());
    }
    assert_eq!(topics.iter().filter(|t| *t == "chat/a").count(), 3);
    assert_eq!(topics.iter().filter(|t| *t == "keep").count(), 15);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("patchwork_retention_deleted_total 12"),
        "{metrics}"
    );
    // The deleted payloads are gone from the file, not just unlinked.
    let data = server.stop_keeping_data().await.unwrap();
    let bytes = std::fs::read(data.path().join("documents/ret.sqlite3")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let still: Vec<usize> = (0..24)
        .step_by(2)
        .filter(|i| text.contains(&format!("secret-{i}-end")))
        .collect();
    assert!(
        still.is_empty(),
        "expired payloads still on disk: {still:?}"
    );
    assert!(
        text.contains("secret-28-end"),
        "kept messages are still there"
    );
}

#[tokio::test]
async fn retention_by_age_deletes_old_matching_messages_only() {
    let server = TestServer::start().await;
    for topic in ["old/a", "other", "old/b"] {
        let (s, v) = publish(
            &server,
            "age",
            json!({"topic": topic, "payload_text": "early"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    for topic in ["old/a", "old/c"] {
        let (s, v) = publish(
            &server,
            "age",
            json!({"topic": topic, "payload_text": "late"}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let r = server
        .admin(Method::PUT, "/api/v1/db/age/messages/retention")
        .json(&json!({"rules": [{"topic_filter": "old/#", "max_age_seconds": 3}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    crate::pubsub::retention::sweep_all(&server.state).await;
    let mut reader = sse(&server, "age", "topic=%23&since_id=0").await;
    let mut kept = Vec::new();
    while let Some(e) = reader.next_non_heartbeat(Duration::from_millis(400)).await {
        let m = e.json();
        kept.push(format!(
            "{} {}",
            m["topic"].as_str().unwrap(),
            String::from_utf8(payload_of(&m)).unwrap()
        ));
    }
    // The two early `old/…` messages are past the rule's age; the early `other` matches no
    // rule; the late ones are young.
    assert_eq!(kept, ["other early", "old/a late", "old/c late"]);
}

#[tokio::test]
async fn websockets_are_pinged_and_a_silent_client_is_closed() {
    use futures_util::StreamExt;
    let server = TestServer::start_with(|c| c.ws_ping_secs = 1).await;
    let url = format!(
        "ws://{}/api/v1/db/wsping/events/ws?access_token={}",
        server.addr, server.admin_token
    );
    // A client that reads answers pings (tungstenite replies to them) and stays open.
    let (mut alive, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    // One that reads nothing for a while never answers them.
    let (mut silent, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(4500);
    let mut pings = 0;
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, alive.next()).await {
            Ok(Some(Ok(WsMessage::Ping(_)))) => pings += 1,
            Ok(Some(Ok(other))) => panic!("unexpected frame {other:?}"),
            Ok(other) => panic!("the answering client was dropped: {other:?}"),
            Err(_) => break,
        }
    }
    assert!(pings >= 3, "{pings} pings in 4.5 s");
    // The silent one was closed after three unanswered periods: reading now finds its pings,
    // then the close frame (1001) — or, as tungstenite answers the queued pings on a socket the
    // server has already closed, a broken pipe. Either way the stream ends without waiting.
    let mut queued = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(2), silent.next()).await {
            // At most the pings of the ~4 s before the close.
            Ok(Some(Ok(WsMessage::Ping(_)))) if queued < 6 => queued += 1,
            Ok(Some(Ok(WsMessage::Ping(_)))) => break false,
            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001));
                break true;
            }
            Ok(Some(Err(_)) | None) => break true,
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Err(_) => break false,
        }
    };
    assert!(ended, "the silent client was not closed");
    // The answering client still works.
    alive
        .send(WsMessage::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .unwrap();
}
