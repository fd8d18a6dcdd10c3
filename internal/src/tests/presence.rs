//! Presence over HTTP and SSE: heartbeat, list, leave, events, TTL expiry, connection-bound
//! leaves (presence SSE, pub/sub SSE and WebSocket, MQTT), scopes, bounds, concurrency.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::auth::Action;
use crate::testing::{SseEvent, SseReader, TestServer, scope};

const WAIT: Duration = Duration::from_secs(10);

fn path(db: &str, rest: &str) -> String {
    format!("/api/v1/db/{db}/presence/{rest}")
}

async fn beat_as(
    server: &TestServer,
    token: &str,
    db: &str,
    room: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = server
        .client
        .post(server.url(&path(db, &format!("{room}/heartbeat"))))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn beat(server: &TestServer, db: &str, room: &str, body: Value) -> (StatusCode, Value) {
    beat_as(server, &server.admin_token, db, room, body).await
}

async fn members(server: &TestServer, db: &str, room: &str) -> Vec<Value> {
    let r = server
        .admin(Method::GET, &path(db, room))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    body["members"].as_array().unwrap().clone()
}

async fn stream_as(server: &TestServer, token: &str, db: &str, room: &str) -> SseReader {
    let r = server
        .client
        .get(server.url(&path(db, &format!("{room}/stream?access_token={token}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    SseReader::new(r)
}

async fn next(reader: &mut SseReader) -> SseEvent {
    reader.next_non_heartbeat(WAIT).await.expect("an event")
}

#[tokio::test]
async fn heartbeat_list_and_leave() {
    let server = TestServer::start().await;
    let (status, body) = beat(&server, "p", "lobby", json!({"member": "ann"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["member"], "ann");
    let expires = crate::time_fmt::parse_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::seconds(55) && left <= time::Duration::seconds(60),
        "default TTL 60 s: {left}"
    );
    beat(
        &server,
        "p",
        "lobby",
        json!({"member": "bob", "state": {"typing": true}}),
    )
    .await;
    let list = members(&server, "p", "lobby").await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["member"], "ann");
    assert_eq!(list[0]["state"], Value::Null);
    assert_eq!(list[1]["state"], json!({"typing": true}));
    for key in ["since", "expires_at"] {
        assert!(crate::time_fmt::parse_rfc3339(list[1][key].as_str().unwrap()).is_some());
    }
    // A room with `/` in its name (percent-encoded) is another room.
    beat(&server, "p", "chat%2Fgeneral", json!({"member": "ann"})).await;
    assert_eq!(members(&server, "p", "chat%2Fgeneral").await.len(), 1);

    let r = server
        .admin(Method::DELETE, &path("p", "lobby/ann"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = server
        .admin(Method::DELETE, &path("p", "lobby/ann"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_member");
    assert_eq!(members(&server, "p", "lobby").await.len(), 1);
    assert!(members(&server, "p", "empty").await.is_empty());

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("patchwork_presence_members 2"),
        "{metrics}"
    );
    assert!(metrics.contains("patchwork_presence_heartbeats_total 3"));
}

#[tokio::test]
async fn validation_errors_are_clean() {
    let server = TestServer::start().await;
    for (room, body, status, code) in [
        ("r", json!({"member": ""}), 400, "invalid_member"),
        (
            "r",
            json!({"member": "x".repeat(129)}),
            400,
            "invalid_member",
        ),
        ("r", json!({"member": "_x"}), 400, "invalid_member"),
        ("r", json!({"member": "stream"}), 400, "invalid_member"),
        ("r", json!({"member": "a\u{1}"}), 400, "invalid_member"),
        ("r", json!({"member": "a", "extra": 1}), 400, "invalid_body"),
        ("a%2B", json!({"member": "a"}), 400, "invalid_room"),
        (
            "r",
            json!({"member": "a", "state": "x".repeat(5000)}),
            413,
            "state_too_large",
        ),
        (
            "r",
            json!({"member": "a", "connection_id": "sse_nope"}),
            404,
            "unknown_connection",
        ),
    ] {
        let (got, answer) = beat(&server, "v", room, body.clone()).await;
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
        if code != "invalid_body" {
            assert_eq!(answer["error"]["code"], code, "{body}");
        } else {
            assert!(answer["error"]["code"].is_string());
        }
    }
    let r = server
        .admin(Method::PUT, &path("v", "r/_config"))
        .json(&json!({"ttl_secs": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(members(&server, "v", "r").await.is_empty());
}

#[tokio::test]
async fn a_subscriber_gets_a_snapshot_then_join_update_and_leave() {
    let server = TestServer::start().await;
    beat(&server, "s", "room", json!({"member": "ann", "state": 1})).await;
    let mut reader = stream_as(&server, &server.admin_token, "s", "room").await;
    let snapshot = next(&mut reader).await;
    assert_eq!(snapshot.event, "snapshot");
    let data = snapshot.json();
    assert!(data["connection_id"].as_str().unwrap().starts_with("sse_"));
    assert_eq!(data["ttl_secs"], 60);
    assert_eq!(data["members"][0]["member"], "ann");
    assert_eq!(data["members"][0]["state"], 1);

    beat(&server, "s", "room", json!({"member": "bob"})).await;
    // A refresh announces nothing; a new state is an update.
    beat(&server, "s", "room", json!({"member": "ann", "state": 1})).await;
    beat(&server, "s", "room", json!({"member": "ann", "state": 2})).await;
    server
        .admin(Method::DELETE, &path("s", "room/bob"))
        .send()
        .await
        .unwrap();
    let join = next(&mut reader).await;
    assert_eq!(
        (join.event.as_str(), join.json()["member"].clone()),
        ("join", json!("bob"))
    );
    assert_eq!(join.json()["state"], Value::Null);
    let update = next(&mut reader).await;
    assert_eq!(update.event, "update");
    assert_eq!(update.json()["state"], 2);
    let leave = next(&mut reader).await;
    assert_eq!(leave.event, "leave");
    assert_eq!(leave.json(), json!({"member": "bob", "reason": "left"}));
}

#[tokio::test]
async fn members_expire_after_a_rooms_short_ttl() {
    let server = TestServer::start().await;
    let r = server
        .admin(Method::PUT, &path("t", "quick/_config"))
        .json(&json!({"ttl_secs": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"room": "quick", "ttl_secs": 1})
    );
    let mut reader = stream_as(&server, &server.admin_token, "t", "quick").await;
    assert_eq!(next(&mut reader).await.json()["ttl_secs"], 1);
    let (_, body) = beat(&server, "t", "quick", json!({"member": "ann"})).await;
    let expires = crate::time_fmt::parse_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires - time::OffsetDateTime::now_utc() <= time::Duration::seconds(1));
    assert_eq!(next(&mut reader).await.event, "join");
    let leave = next(&mut reader).await;
    assert_eq!(leave.json(), json!({"member": "ann", "reason": "expired"}));
    assert!(members(&server, "t", "quick").await.is_empty());
    // Another room keeps the default.
    let (_, body) = beat(&server, "t", "slow", json!({"member": "ann"})).await;
    let expires = crate::time_fmt::parse_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires - time::OffsetDateTime::now_utc() > time::Duration::seconds(50));
}

#[tokio::test]
async fn closing_a_presence_stream_makes_its_members_leave() {
    let server = TestServer::start().await;
    let token = server
        .mint(vec![
            scope("d", Action::PresenceWrite, None),
            scope("d", Action::PresenceRead, None),
        ])
        .await;
    let mut watcher = stream_as(&server, &server.admin_token, "d", "room").await;
    assert_eq!(next(&mut watcher).await.event, "snapshot");
    let mut own = stream_as(&server, &token, "d", "room").await;
    let id = next(&mut own).await.json()["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Only the caller that opened the connection can name it.
    let (status, body) = beat(
        &server,
        "d",
        "room",
        json!({"member": "x", "connection_id": id}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = beat_as(
        &server,
        &token,
        "d",
        "room",
        json!({"member": "ann", "connection_id": id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(next(&mut watcher).await.event, "join");
    drop(own);
    let leave = next(&mut watcher).await;
    assert_eq!(
        leave.json(),
        json!({"member": "ann", "reason": "disconnected"})
    );
    // The connection is gone: naming it now is refused.
    let (status, _) = beat_as(
        &server,
        &token,
        "d",
        "room",
        json!({"member": "ann", "connection_id": id}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pubsub_sse_and_websocket_connections_can_carry_presence() {
    let server = TestServer::start().await;
    let mut watcher = stream_as(&server, &server.admin_token, "w", "room").await;
    assert_eq!(next(&mut watcher).await.event, "snapshot");

    // The pub/sub SSE stream names itself in a header.
    let sse = server
        .admin(Method::GET, "/api/v1/db/w/events/stream?topic=a")
        .send()
        .await
        .unwrap();
    let sse_id = sse.headers()["patch-connection-id"]
        .to_str()
        .unwrap()
        .to_owned();
    beat(
        &server,
        "w",
        "room",
        json!({"member": "sse", "connection_id": sse_id}),
    )
    .await;
    assert_eq!(next(&mut watcher).await.event, "join");

    // The WebSocket: in the upgrade's header, and answering a `connection` frame.
    let url = format!(
        "ws://{}/api/v1/db/w/events/ws?access_token={}",
        server.addr, server.admin_token
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    let header_id = response.headers()["patch-connection-id"]
        .to_str()
        .unwrap()
        .to_owned();
    socket
        .send(WsMessage::Text(
            json!({"type": "connection"}).to_string().into(),
        ))
        .await
        .unwrap();
    let frame = loop {
        match tokio::time::timeout(WAIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WsMessage::Text(t) => break serde_json::from_str::<Value>(t.as_str()).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(
        frame,
        json!({"type": "connection", "connection_id": header_id})
    );
    beat(
        &server,
        "w",
        "room",
        json!({"member": "ws", "connection_id": header_id}),
    )
    .await;
    assert_eq!(next(&mut watcher).await.event, "join");

    socket.close(None).await.unwrap();
    drop(socket);
    let leave = next(&mut watcher).await;
    assert_eq!(
        leave.json(),
        json!({"member": "ws", "reason": "disconnected"})
    );
    drop(sse);
    let leave = next(&mut watcher).await;
    assert_eq!(
        leave.json(),
        json!({"member": "sse", "reason": "disconnected"})
    );
}

#[tokio::test]
async fn an_mqtt_connection_can_carry_presence() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
    let server =
        TestServer::start_with(|c| c.mqtt_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let mut watcher = stream_as(&server, &server.admin_token, "m", "room").await;
    assert_eq!(next(&mut watcher).await.event, "snapshot");
    let addr = server.mqtt_addr().await;
    let mut o = MqttOptions::new("dev-1", "127.0.0.1", addr.port());
    o.set_credentials("anyone", &server.admin_token);
    let (client, mut events) = AsyncClient::new(o, 8);
    let poll = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => break,
                _ => {}
            }
        }
    });
    // Connected once the id is registered.
    let mut status = StatusCode::NOT_FOUND;
    for _ in 0..100 {
        (status, _) = beat(
            &server,
            "m",
            "room",
            json!({"member": "dev", "connection_id": "mqtt:dev-1"}),
        )
        .await;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::OK);
    assert_eq!(next(&mut watcher).await.event, "join");
    client.disconnect().await.unwrap();
    let leave = next(&mut watcher).await;
    assert_eq!(
        leave.json(),
        json!({"member": "dev", "reason": "disconnected"})
    );
    poll.abort();
}

#[tokio::test]
async fn scopes_limit_actions_and_rooms() {
    let server = TestServer::start().await;
    let reader = server
        .mint(vec![scope("sc", Action::PresenceRead, None)])
        .await;
    let (status, _) = beat_as(&server, &reader, "sc", "r", json!({"member": "a"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let r = server
        .client
        .get(server.url(&path("sc", "r")))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let team = server
        .mint(vec![
            scope("sc", Action::PresenceWrite, Some("team/")),
            scope("sc", Action::PresenceRead, Some("team/")),
        ])
        .await;
    let (status, _) = beat_as(&server, &team, "sc", "team%2Fa", json!({"member": "a"})).await;
    assert_eq!(status, StatusCode::OK);
    for room in ["other", "tea", "team"] {
        let (status, _) = beat_as(&server, &team, "sc", room, json!({"member": "a"})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{room}");
        let r = server
            .client
            .get(server.url(&path("sc", &format!("{room}/stream"))))
            .bearer_auth(&team)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{room}");
        let r = server
            .client
            .put(server.url(&path("sc", &format!("{room}/_config"))))
            .bearer_auth(&team)
            .json(&json!({"ttl_secs": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{room}");
    }
    let r = server
        .client
        .delete(server.url(&path("sc", "other/a")))
        .bearer_auth(&team)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Another document is out of reach.
    let (status, _) = beat_as(&server, &team, "sc2", "team%2Fa", json!({"member": "a"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn rooms_members_and_the_total_are_bounded() {
    let server = TestServer::start_with(|c| {
        c.presence_max_members_per_room = 2;
        c.presence_max_rooms_per_document = 2;
        c.presence_max_members_total = 5;
    })
    .await;
    for m in ["a", "b"] {
        assert_eq!(
            beat(&server, "b1", "r1", json!({"member": m})).await.0,
            StatusCode::OK
        );
    }
    let (status, body) = beat(&server, "b1", "r1", json!({"member": "c"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "room_full");
    // A member already there still beats.
    assert_eq!(
        beat(&server, "b1", "r1", json!({"member": "a"})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        beat(&server, "b1", "r2", json!({"member": "a"})).await.0,
        StatusCode::OK
    );
    let (status, body) = beat(&server, "b1", "r3", json!({"member": "a"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "too_many_rooms");
    let r = server
        .admin(Method::GET, &path("b1", "r3/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        beat(&server, "b2", "r1", json!({"member": "a"})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        beat(&server, "b2", "r1", json!({"member": "b"})).await.0,
        StatusCode::OK
    );
    let (status, body) = beat(&server, "b2", "r2", json!({"member": "a"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "overloaded");
    // Leaving frees a place.
    server
        .admin(Method::DELETE, &path("b1", "r2/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        beat(&server, "b2", "r2", json!({"member": "a"})).await.0,
        StatusCode::OK
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("patchwork_presence_refusals_total{reason=\"room_full\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_heartbeats_all_land_and_every_join_is_announced_once() {
    let server = TestServer::start().await;
    let mut watcher = stream_as(&server, &server.admin_token, "c", "room").await;
    assert_eq!(next(&mut watcher).await.event, "snapshot");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = server.client.clone();
        let url = server.url(&path("c", "room/heartbeat"));
        let token = server.admin_token.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..5 {
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"member": format!("m{i}"), "state": round}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let list = members(&server, "c", "room").await;
    assert_eq!(list.len(), 50);
    assert!(list.iter().all(|m| m["state"] == 4));
    let (mut joins, mut updates) = (std::collections::HashSet::new(), 0);
    while joins.len() < 50 || updates < 200 {
        let e = next(&mut watcher).await;
        match e.event.as_str() {
            "join" => assert!(joins.insert(e.json()["member"].as_str().unwrap().to_owned())),
            "update" => updates += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(updates, 200);
}
