//! The MQTT adapter with real clients: rumqttc (3.1.1 and 5), mosquitto_pub / mosquitto_sub
//! (Debian) and paho-mqtt (PyPI), against the real server over TCP.

use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::auth::Action;
use crate::testing::{SseReader, TestServer, scope};

const WAIT: Duration = Duration::from_secs(10);

async fn server() -> TestServer {
    TestServer::start_with(|c| c.mqtt_listen = Some("127.0.0.1:0".parse().unwrap())).await
}

async fn options(server: &TestServer, client_id: &str, token: &str) -> MqttOptions {
    let addr = server.mqtt_addr().await;
    let mut o = MqttOptions::new(client_id, "127.0.0.1", addr.port());
    o.set_credentials("anyone", token);
    o.set_keep_alive(Duration::from_secs(5));
    o
}

/// Connects and waits for CONNACK; returns it with the client.
async fn connect(o: MqttOptions) -> Result<(AsyncClient, EventLoop, bool), ConnectionError> {
    let (client, mut events) = AsyncClient::new(o, 64);
    loop {
        match tokio::time::timeout(WAIT, events.poll())
            .await
            .expect("CONNACK in time")?
        {
            Event::Incoming(Packet::ConnAck(ack)) => {
                return Ok((client, events, ack.session_present));
            }
            _ => continue,
        }
    }
}

/// Polls until a packet `pick` accepts arrives.
async fn until<T>(events: &mut EventLoop, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(p) = events.poll().await.expect("connection stays up")
                && let Some(t) = pick(&p)
            {
                return t;
            }
        }
    })
    .await
    .expect("the packet arrived in time")
}

/// A raw MQTT 3.1.1 CONNECT (clean session, user `u`, `token` as password), for clients that
/// must misbehave in ways real client libraries do not.
fn raw_connect(client_id: &str, token: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    for field in [client_id.as_bytes(), b"u", token.as_bytes()] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field);
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

async fn publish_http(server: &TestServer, db: &str, body: Value) -> Value {
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

async fn count(server: &TestServer, db: &str, topic: &str) -> i64 {
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/query/exec"))
        .json(&json!({
            "sql": "SELECT count(*) FROM _patchwork_messages WHERE topic = ?",
            "args": [topic]
        }))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    v["rows"][0][0]
        .as_i64()
        .unwrap_or_else(|| panic!("count: {v}"))
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused() {
    let server = server().await;
    for token in ["pw_wrong", ""] {
        let err = connect(options(&server, "c1", token).await)
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(
                err,
                ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::BadUserNamePassword)
            ),
            "{err:?}"
        );
    }
    // MQTT 5 too.
    let addr = server.mqtt_addr().await;
    let mut o = rumqttc::v5::MqttOptions::new("c5", "127.0.0.1", addr.port());
    o.set_credentials("anyone", "pw_wrong");
    let (_c, mut events) = rumqttc::v5::AsyncClient::new(o, 8);
    let err = tokio::time::timeout(WAIT, events.poll())
        .await
        .unwrap()
        .expect_err("refused");
    assert!(
        format!("{err:?}").contains("BadUserNamePassword"),
        "{err:?}"
    );
    assert!(
        server
            .metrics()
            .await
            .contains("patchwork_mqtt_refusals_total{reason=\"auth\"} 3")
    );
}

#[tokio::test]
async fn filters_are_checked_per_document_and_may_not_span_documents() {
    let server = server().await;
    let token = server
        .mint(vec![
            scope("a", Action::PubSubscribe, None),
            scope("a", Action::PubPublish, Some("mine/")),
        ])
        .await;
    let (client, mut events, _) = connect(options(&server, "scoped", &token).await)
        .await
        .unwrap();
    client
        .subscribe_many(
            ["db/a/#", "db/b/#", "#", "db/+/x", "+/a/x", "db/a/+/y"]
                .map(|f| rumqttc::SubscribeFilter::new(f.into(), QoS::AtLeastOnce)),
        )
        .await
        .unwrap();
    let codes = until(&mut events, |p| match p {
        Packet::SubAck(s) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await;
    use rumqttc::SubscribeReasonCode as R;
    assert_eq!(
        codes,
        vec![
            R::Success(QoS::AtLeastOnce),
            R::Failure,
            R::Failure,
            R::Failure,
            R::Failure,
            R::Success(QoS::AtLeastOnce)
        ]
    );
    // A publish outside the token's prefix: MQTT 3.1.1 cannot refuse it in PUBACK, so the
    // connection is closed instead of acknowledging a message that was not stored.
    client
        .publish("db/a/theirs/x", QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return false,
                Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(closed, "no PUBACK for a refused publish");
    assert_eq!(count(&server, "a", "theirs/x").await, 0);

    // MQTT 5 says why in the PUBACK, and the connection goes on.
    let addr = server.mqtt_addr().await;
    let mut o = rumqttc::v5::MqttOptions::new("scoped5", "127.0.0.1", addr.port());
    o.set_credentials("anyone", token.as_str());
    let (client, mut events) = rumqttc::v5::AsyncClient::new(o, 8);
    client
        .publish(
            "db/a/theirs/x",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "no",
        )
        .await
        .unwrap();
    client
        .publish(
            "db/a/mine/x",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "yes",
        )
        .await
        .unwrap();
    let mut reasons = Vec::new();
    tokio::time::timeout(WAIT, async {
        while reasons.len() < 2 {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(a)) =
                events.poll().await.unwrap()
            {
                reasons.push(a.reason);
            }
        }
    })
    .await
    .unwrap();
    use rumqttc::v5::mqttbytes::v5::PubAckReason as P;
    assert_eq!(reasons, vec![P::NotAuthorized, P::Success]);
    assert_eq!(count(&server, "a", "mine/x").await, 1);
}

/// mosquitto_sub receives an HTTP publish; mosquitto_pub's QoS 1 publish reaches an SSE
/// subscriber, stamped with the token as producer.
#[tokio::test]
async fn http_to_mosquitto_sub_and_mosquitto_pub_to_sse() {
    let server = server().await;
    let port = server.mqtt_addr().await.port().to_string();
    let token = server
        .mint(vec![
            scope("room", Action::PubSubscribe, None),
            scope("room", Action::PubPublish, None),
        ])
        .await;
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-u", "x", "-P", &token])
        .args([
            "-q",
            "1",
            "-t",
            "db/room/chat/#",
            "-v",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (apt: mosquitto-clients; scripts/setup.sh installs it)");
    // Subscribed before the publish: wait until the server counts the connection.
    for _ in 0..100 {
        if server
            .metrics()
            .await
            .contains("patchwork_mqtt_connections 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish_http(
        &server,
        "room",
        json!({"topic": "chat/general", "payload_text": "hi from http"}),
    )
    .await;
    let out = tokio::time::timeout(WAIT, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "db/room/chat/general hi from http"
    );

    let r = server
        .anon(Method::GET, "/api/v1/db/room/events/stream?topic=chat/%23")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(r);
    let status = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-u", "x", "-P", &token])
        .args([
            "-q",
            "1",
            "-t",
            "db/room/chat/general",
            "-m",
            "hi from mqtt",
        ])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let event = sse.next_non_heartbeat(WAIT).await.expect("an SSE event");
    let data: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["topic"], "chat/general");
    assert_eq!(data["content_type"], "application/octet-stream");
    assert_eq!(data["payload_base64"], "aGkgZnJvbSBtcXR0");
    // The producer is the token's id (the token starts with it), never the secret.
    let producer = data["producer"].as_str().expect("a producer");
    assert!(
        producer.len() == 16 && token.contains(producer),
        "{producer}"
    );
    assert!(producer.len() < token.len() / 2);
}

/// paho-mqtt over MQTT 5: the content type travels both ways.
#[tokio::test]
async fn paho_mqtt5_round_trip_with_content_type() {
    let server = server().await;
    let port = server.mqtt_addr().await.port();
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
port, token = int(sys.argv[1]), sys.argv[2]
got = threading.Event()
result = {}
def on_message(c, u, m):
    result["topic"] = m.topic
    result["payload"] = m.payload.decode()
    result["ct"] = getattr(m.properties, "ContentType", None)
    got.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho5", protocol=mqtt.MQTTv5)
c.username_pw_set("x", token)
c.on_message = on_message
c.connect("127.0.0.1", port)
c.loop_start()
c.subscribe("db/p/t/#", qos=1)[1]
import time; time.sleep(0.3)
props = Properties(PacketTypes.PUBLISH)
props.ContentType = "application/json"
info = c.publish("db/p/t/1", '{"n":1}', qos=1, properties=props)
info.wait_for_publish(10)
assert got.wait(10), "no message"
print(result["topic"], result["payload"], result["ct"])
c.disconnect()
c.loop_stop()
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(&server.admin_token)
        .env("PYTHONPATH", crate::testing::tools_dir().join("paho"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"db/p/t/1 {"n":1} application/json"#
    );
    // Stored with that content type, as an HTTP publish would be.
    let r = server
        .admin(Method::POST, "/api/v1/db/p/query/exec")
        .json(&json!({"sql": "SELECT content_type FROM _patchwork_messages"}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["rows"][0][0], "application/json");
}

#[tokio::test]
async fn qos2_is_stored_exactly_once() {
    let server = server().await;
    let (client, mut events, _) = connect(options(&server, "q2", &server.admin_token).await)
        .await
        .unwrap();
    for i in 0..5 {
        client
            .publish("db/q/x", QoS::ExactlyOnce, false, format!("m{i}"))
            .await
            .unwrap();
    }
    let mut done = 0;
    until(&mut events, |p| {
        if matches!(p, Packet::PubComp(_)) {
            done += 1;
        }
        (done == 5).then_some(())
    })
    .await;
    assert_eq!(count(&server, "q", "x").await, 5);
}

/// A retained message (also set over HTTP) and a persistent session both survive a restart:
/// the session's subscription is still there and what was published while the client was
/// away arrives at QoS 1.
#[tokio::test]
async fn retained_messages_and_persistent_sessions_survive_a_restart() {
    let server = server().await;
    let admin = server.admin_token.clone();
    publish_http(
        &server,
        "r",
        json!({"topic": "state/lamp", "payload_text": "on", "retain": true}),
    )
    .await;
    publish_http(
        &server,
        "r",
        json!({"topic": "state/fan", "payload_text": "fast", "retain": true}),
    )
    .await;
    // An empty retained payload clears the topic's retained message.
    publish_http(
        &server,
        "r",
        json!({"topic": "state/fan", "payload_text": "", "retain": true}),
    )
    .await;

    let mut o = options(&server, "keeper", &admin).await;
    o.set_clean_session(false);
    let (client, mut events, present) = connect(o).await.unwrap();
    assert!(!present);
    client
        .subscribe("db/r/news/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    until(&mut events, |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    // Published while the client is away.
    for i in 0..3 {
        publish_http(
            &server,
            "r",
            json!({"topic": format!("news/{i}"), "payload_text": format!("n{i}")}),
        )
        .await;
    }

    let dir = server.stop_keeping_data().await.unwrap();
    let server = TestServer::restart_with(dir, &admin, |c| {
        c.mqtt_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;

    // Retained: a new subscriber gets the lamp's state, with the retain flag, and nothing for
    // the cleared fan.
    let (client, mut events, _) = connect(options(&server, "viewer", &admin).await)
        .await
        .unwrap();
    client
        .subscribe("db/r/state/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let p = until(&mut events, |p| match p {
        Packet::Publish(p) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("db/r/state/lamp", &b"on"[..], true)
    );
    let more = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await {
                return p;
            }
        }
    })
    .await;
    assert!(more.is_err(), "only one retained message: {more:?}");

    // The persistent session resumes: session present, and the missed messages arrive.
    let mut o = options(&server, "keeper", &admin).await;
    o.set_clean_session(false);
    let (_client, mut events, present) = connect(o).await.unwrap();
    assert!(present, "the session survived the restart");
    let mut got = Vec::new();
    while got.len() < 3 {
        let p = until(&mut events, |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
        assert_eq!(p.qos, QoS::AtLeastOnce);
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    assert_eq!(got, ["n0", "n1", "n2"]);
}

/// The will is published when a client vanishes, not when it says DISCONNECT.
#[tokio::test]
async fn last_will_on_a_dropped_connection_only() {
    let server = server().await;
    let admin = server.admin_token.clone();
    let r = server
        .anon(Method::GET, "/api/v1/db/w/events/stream?topic=status/%23")
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(r);

    // Clean: DISCONNECT, no will.
    let mut o = options(&server, "polite", &admin).await;
    o.set_last_will(rumqttc::LastWill::new(
        "db/w/status/polite",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut events, _) = connect(o).await.unwrap();
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while events.poll().await.is_ok() {}
    })
    .await;

    // Dropped: the TCP connection ends without DISCONNECT.
    let mut o = options(&server, "rude", &admin).await;
    o.set_last_will(rumqttc::LastWill::new(
        "db/w/status/rude",
        "lost",
        QoS::AtLeastOnce,
        false,
    ));
    let (client, events, _) = connect(o).await.unwrap();
    drop(events);
    drop(client);

    let event = sse.next_non_heartbeat(WAIT).await.expect("the will");
    let data: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(
        data["topic"], "status/rude",
        "only the dropped client's will: {data}"
    );
    assert_eq!(data["payload_base64"], "bG9zdA==");
    assert_eq!(count(&server, "w", "status/polite").await, 0);

    // A will the token may not publish refuses the CONNECT.
    let reader = server
        .mint(vec![scope("w", Action::PubSubscribe, None)])
        .await;
    let mut o = options(&server, "sneaky", &reader).await;
    o.set_last_will(rumqttc::LastWill::new(
        "db/w/status/x",
        "x",
        QoS::AtMostOnce,
        false,
    ));
    let err = connect(o).await.err().expect("refused");
    assert!(
        matches!(
            err,
            ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized)
        ),
        "{err:?}"
    );
}

/// Keep-alive: a client silent for 1.5 × its keep-alive is cut (and its will published).
#[tokio::test]
async fn a_silent_client_is_cut_after_its_keep_alive() {
    let server = server().await;
    let addr = server.mqtt_addr().await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // CONNECT (3.1.1, clean, keep-alive 1 s) with the admin token as password.
    stream
        .write_all(&raw_connect("silent", &server.admin_token, 1))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("closed by the server")
        .unwrap();
    assert_eq!(n, 0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

/// One client IP holds at most `mqtt_max_connections_per_ip` connections: the next is closed
/// before its CONNECT is read (counted as `max_connections_per_ip`), and a slot freed by a
/// client that leaves is free again.
#[tokio::test]
async fn one_client_ip_cannot_take_every_mqtt_connection() {
    let server = TestServer::start_with(|c| {
        c.mqtt_listen = Some("127.0.0.1:0".parse().unwrap());
        c.mqtt_max_connections_per_ip = 2;
    })
    .await;
    let addr = server.mqtt_addr().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connected = |id: &'static str| {
        let token = server.admin_token.clone();
        async move {
            // A refused socket may be reset before the CONNECT is written: an error too.
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(&raw_connect(id, &token, 60)).await?;
            let mut connack = [0u8; 4];
            tokio::time::timeout(WAIT, s.read_exact(&mut connack))
                .await
                .expect("CONNACK in time")
                .map(|_| (s, connack))
        }
    };
    let (first, ack) = connected("one").await.expect("the first connects");
    assert_eq!(ack, [0x20, 2, 0, 0]);
    let (_second, ack) = connected("two").await.expect("the second connects");
    assert_eq!(ack, [0x20, 2, 0, 0]);
    // The third from the same address is closed without an answer.
    assert!(
        connected("three").await.is_err(),
        "a third connection is refused"
    );
    let metrics = server
        .admin(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("patchwork_mqtt_refusals_total{reason=\"max_connections_per_ip\"} ")),
        "{metrics}"
    );
    // A client that leaves frees its slot.
    drop(first);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok((_s, ack)) = connected("again").await {
            assert_eq!(ack, [0x20, 2, 0, 0]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the freed slot was never free again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Oversized packets and garbage end the connection, and the server keeps serving.
#[tokio::test]
async fn oversized_and_malformed_packets_end_only_that_connection() {
    let server = TestServer::start_with(|c| {
        c.mqtt_listen = Some("127.0.0.1:0".parse().unwrap());
        c.mqtt_max_packet_bytes = 4096;
    })
    .await;
    let addr = server.mqtt_addr().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for junk in [
        vec![0x30, 0xff, 0xff, 0x7f], // a PUBLISH announcing 2 MB
        vec![0x20, 0x02, 0x00, 0x00], // CONNACK from a client
        vec![0x10, 0x07, 0, 4, b'M', b'Q', b'T', b'T', 9], // unknown protocol level
        b"GET / HTTP/1.1\r\n\r\n".to_vec(), // not MQTT at all
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&junk).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
            .await
            .expect("closed")
            .ok();
        assert!(rest.len() <= 4, "at most a refusing CONNACK: {rest:?}");
    }
    let (client, mut events, _) = connect(options(&server, "fine", &server.admin_token).await)
        .await
        .unwrap();
    client
        .publish("db/z/ok", QoS::AtLeastOnce, false, vec![7u8; 3000])
        .await
        .unwrap();
    until(&mut events, |p| {
        matches!(p, Packet::PubAck(_)).then_some(())
    })
    .await;
    // Over the packet limit once connected: the connection ends, nothing stored.
    client
        .publish("db/z/big", QoS::AtLeastOnce, false, vec![7u8; 5000])
        .await
        .unwrap();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Err(_) => return true,
                Ok(Event::Incoming(Packet::PubAck(_))) => return false,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(ended);
    assert_eq!(count(&server, "z", "big").await, 0);
    assert_eq!(count(&server, "z", "ok").await, 1);
}

/// A subscriber that does not read is disconnected after `mqtt_stall_secs` instead of
/// buffered without bound; a healthy one on the same topic keeps receiving everything.
#[tokio::test]
async fn a_stuck_subscriber_is_cut_off() {
    let server = TestServer::start_with(|c| {
        c.mqtt_listen = Some("127.0.0.1:0".parse().unwrap());
        c.mqtt_stall_secs = 1;
    })
    .await;
    let addr = server.mqtt_addr().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw client that subscribes and then never reads.
    let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut packet = raw_connect("stuck", &server.admin_token, 60);
    // SUBSCRIBE pkid 1, "db/s/#" QoS 0.
    packet.extend_from_slice(&[0x82, 11, 0, 1, 0, 6, b'd', b'b', b'/', b's', b'/', b'#', 0]);
    stuck.write_all(&packet).await.unwrap();
    let mut first = [0u8; 9];
    stuck.read_exact(&mut first).await.unwrap(); // CONNACK + SUBACK

    let mut o = options(&server, "healthy", &server.admin_token).await;
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut events, _) = connect(o).await.unwrap();
    client.subscribe("db/s/#", QoS::AtMostOnce).await.unwrap();
    until(&mut events, |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
    // More than the stuck client's hub queue, output buffer and socket buffers hold.
    let payload = "x".repeat(16 * 1024);
    let total = 2_000;
    let publisher = {
        let (url, token) = (
            server.url("/api/v1/db/s/messages/batch"),
            server.admin_token.clone(),
        );
        let http = server.client.clone();
        let payload = payload.clone();
        tokio::spawn(async move {
            for chunk in 0..(total / 50) {
                let messages: Vec<Value> = (0..50)
                    .map(|i| json!({"topic": format!("t/{}", chunk * 50 + i), "payload_text": payload}))
                    .collect();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"messages": messages}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        })
    };
    let mut received = 0;
    until(&mut events, |p| {
        if matches!(p, Packet::Publish(_)) {
            received += 1;
        }
        (received == total).then_some(())
    })
    .await;
    publisher.await.unwrap();
    // Stuck for a second with deliveries waiting: cut.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = server.metrics().await;
        if metrics.contains("patchwork_mqtt_connections 1\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains("patchwork_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("patchwork_mqtt_connections 1\n"),
        "the stuck one is gone"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            match stuck.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "its socket is closed");
}

#[tokio::test]
async fn mqtt_is_off_by_default_and_metrics_are_exported() {
    let server = TestServer::start().await;
    assert!(server.state.mqtt_addr.get().is_none());
    let metrics = server.metrics().await;
    for name in [
        "patchwork_mqtt_connections",
        "patchwork_mqtt_publishes_total",
        "patchwork_mqtt_deliveries_total",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
}

/// With a certificate and key configured, the listener speaks MQTT over TLS (paho verifies the
/// server's certificate); a plain-text client gets nowhere.
#[tokio::test]
async fn mqtt_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let server = TestServer::start_with(|c| {
        c.mqtt_listen = Some("127.0.0.1:0".parse().unwrap());
        c.mqtt_tls_cert = Some(cert.clone());
        c.mqtt_tls_key = Some(key.clone());
    })
    .await;
    let port = server.mqtt_addr().await.port();
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt
port, token, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
got = threading.Event()
def on_message(c, u, m):
    print(m.topic, m.payload.decode())
    got.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls")
c.tls_set(ca_certs=ca)
c.username_pw_set("x", token)
c.on_message = on_message
c.connect("127.0.0.1", port)
c.loop_start()
c.subscribe("db/tls/#", qos=1)
import time; time.sleep(0.3)
c.publish("db/tls/secret", "sealed", qos=1).wait_for_publish(10)
assert got.wait(10), "no message"
c.disconnect()
c.loop_stop()
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(&server.admin_token)
        .arg(&cert)
        .env("PYTHONPATH", crate::testing::tools_dir().join("paho"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "db/tls/secret sealed"
    );
    // Plain MQTT on the TLS port: no CONNACK.
    let plain = connect(options(&server, "plain", &server.admin_token).await).await;
    assert!(plain.is_err());
}

/// A QoS 1 subscriber slower than the publishers is throttled, not cut off: what the hub's
/// queue cannot hold is read back from the database, so it still gets every message once, in
/// order.
#[tokio::test]
async fn a_slow_subscriber_is_throttled_and_misses_nothing() {
    let server = server().await;
    let (client, mut events, _) = connect(options(&server, "slow", &server.admin_token).await)
        .await
        .unwrap();
    client
        .subscribe("db/slow/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    until(&mut events, |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
    let total = 3_000;
    let publisher = {
        let (url, token) = (
            server.url("/api/v1/db/slow/messages/batch"),
            server.admin_token.clone(),
        );
        let http = server.client.clone();
        tokio::spawn(async move {
            for chunk in 0..(total / 100) {
                let messages: Vec<Value> = (0..100)
                    .map(|i| json!({"topic": "n", "payload_text": (chunk * 100 + i).to_string()}))
                    .collect();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"messages": messages}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        })
    };
    let mut next = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while next < total {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.expect("stays up") {
                assert_eq!(
                    String::from_utf8_lossy(&p.payload),
                    next.to_string(),
                    "in order, once"
                );
                next += 1;
                if next % 8 == 0 {
                    // Slower than the publisher.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    })
    .await
    .expect("everything arrives");
    publisher.await.unwrap();
    assert!(
        server
            .metrics()
            .await
            .contains("patchwork_slow_consumer_disconnects_total 0")
    );
}
