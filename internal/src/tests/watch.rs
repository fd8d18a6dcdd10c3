//! Query watches over SSE, parsed by a real SSE reader.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::testing::{SseReader, TestServer};

async fn exec(server: &TestServer, db: &str, sql: &str) {
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/query/exec"))
        .json(&json!({"sql": sql}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{sql}: {}",
        r.text().await.unwrap()
    );
}

async fn watch(
    server: &TestServer,
    db: &str,
    body: Value,
    last_event_id: Option<&str>,
) -> SseReader {
    let mut req = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/query/watch"))
        .json(&body);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    SseReader::new(r)
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn snapshot_then_updates_only_for_tables_read() {
    let server = TestServer::start().await;
    exec(&server, "w", "CREATE TABLE a (v)").await;
    exec(&server, "w", "CREATE TABLE b (v)").await;
    exec(&server, "w", "INSERT INTO a VALUES (1)").await;
    let mut sse = watch(
        &server,
        "w",
        json!({"sql": "SELECT v FROM a ORDER BY v"}),
        None,
    )
    .await;
    let snap = sse.next_non_heartbeat(WAIT).await.expect("snapshot");
    assert_eq!(snap.event, "snapshot");
    let data = snap.json();
    assert_eq!(data["rows"], json!([[1]]));
    assert_eq!(data["columns"], json!(["v"]));
    assert_eq!(data["seq"], 1);
    assert_eq!(snap.id.as_deref(), data["result_hash"].as_str());
    let watch_id = data["watch_id"].clone();

    // A write to another table: nothing.
    exec(&server, "w", "INSERT INTO b VALUES (9)").await;
    assert!(
        sse.next_non_heartbeat(Duration::from_millis(400))
            .await
            .is_none()
    );
    // A write that does not change the result: suppressed.
    exec(&server, "w", "UPDATE a SET v = 1").await;
    assert!(
        sse.next_non_heartbeat(Duration::from_millis(400))
            .await
            .is_none()
    );
    // A relevant write: update.
    exec(&server, "w", "INSERT INTO a VALUES (2)").await;
    let up = sse.next_non_heartbeat(WAIT).await.expect("update");
    assert_eq!(up.event, "update");
    let data = up.json();
    assert_eq!(data["rows"], json!([[1], [2]]));
    assert_eq!(data["seq"], 2);
    assert_eq!(data["watch_id"], watch_id);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("patchwork_watch_suppressed_updates_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("patchwork_watch_reevaluations_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bursts_coalesce() {
    let server = TestServer::start().await;
    exec(&server, "c", "CREATE TABLE a (v)").await;
    let mut sse = watch(&server, "c", json!({"sql": "SELECT count(*) FROM a"}), None).await;
    assert_eq!(
        sse.next_non_heartbeat(WAIT).await.unwrap().event,
        "snapshot"
    );
    let mut writers = Vec::new();
    for _ in 0..8 {
        let req = server.admin(Method::POST, "/api/v1/db/c/query/exec");
        writers.push(tokio::spawn(async move {
            for _ in 0..50 {
                let r = req
                    .try_clone()
                    .unwrap()
                    .json(&json!({"sql": "INSERT INTO a VALUES (1)"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut updates = 0;
    let mut last = Value::Null;
    while let Some(e) = sse.next_non_heartbeat(Duration::from_millis(800)).await {
        updates += 1;
        last = e.json()["rows"].clone();
    }
    assert_eq!(last, json!([[400]]), "the final state arrives");
    assert!(
        updates < 400,
        "{updates} updates for 400 commits: not coalesced"
    );
    let metrics = server.metrics().await;
    let reevals: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("patchwork_watch_reevaluations_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(reevals < 400, "{reevals} re-evaluations");
}

#[tokio::test]
async fn resume_with_the_last_hash_suppresses_the_snapshot() {
    let server = TestServer::start().await;
    exec(&server, "r", "CREATE TABLE a (v)").await;
    exec(&server, "r", "INSERT INTO a VALUES ('x')").await;
    let body = json!({"sql": "SELECT v FROM a", "options": {"heartbeat_seconds": 1}});
    let mut sse = watch(&server, "r", body.clone(), None).await;
    let snap = sse.next_non_heartbeat(WAIT).await.unwrap();
    let hash = snap.id.clone().unwrap();
    drop(sse);
    let mut sse = watch(&server, "r", body.clone(), Some(&hash)).await;
    let first = sse.next(WAIT).await.unwrap();
    assert_eq!(first.event, "heartbeat", "identical snapshot suppressed");
    exec(&server, "r", "INSERT INTO a VALUES ('y')").await;
    let up = sse.next_non_heartbeat(WAIT).await.unwrap();
    assert_eq!(up.event, "update");
    // A stale hash gets a fresh snapshot.
    let mut sse = watch(&server, "r", body, Some(&hash)).await;
    assert_eq!(
        sse.next_non_heartbeat(WAIT).await.unwrap().event,
        "snapshot"
    );
}

#[tokio::test]
async fn heartbeats_and_disconnect_cleanup() {
    let server = TestServer::start().await;
    exec(&server, "h", "CREATE TABLE a (v)").await;
    let mut sse = watch(
        &server,
        "h",
        json!({"sql": "SELECT * FROM a", "options": {"heartbeat_seconds": 1}}),
        None,
    )
    .await;
    assert_eq!(sse.next(WAIT).await.unwrap().event, "snapshot");
    let hb = sse.next(Duration::from_secs(3)).await.unwrap();
    assert_eq!(hb.event, "heartbeat");
    let status: Value = server
        .admin(Method::GET, "/api/v1/db/h/_status")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["watches"], 1);
    drop(sse);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let status: Value = server
            .admin(Method::GET, "/api/v1/db/h/_status")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let metrics = server.metrics().await;
        if status["watches"] == 0 && metrics.contains("patchwork_active_watches 0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watch not freed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bad_watches_are_refused_before_the_stream_starts() {
    let server = TestServer::start().await;
    exec(&server, "v", "CREATE TABLE a (v)").await;
    for (body, status) in [
        (json!({"sql": "DELETE FROM a"}), StatusCode::BAD_REQUEST),
        (json!({"sql": "SELEC"}), StatusCode::BAD_REQUEST),
        (
            json!({"sql": "SELECT 1; SELECT 2"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"sql": "SELECT 1", "options": {"heartbeat_seconds": 0}}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"sql": "ATTACH 'x' AS x"}), StatusCode::FORBIDDEN),
    ] {
        let r = server
            .admin(Method::POST, "/api/v1/db/v/query/watch")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["code"].is_string());
    }
    // A token with only query.write cannot watch.
    let (_, writer) = server
        .state
        .tokens
        .create(crate::auth::NewToken {
            label: "w".into(),
            is_admin: false,
            scopes: vec![crate::auth::Scope {
                db_id: "v".into(),
                action: crate::auth::Action::QueryWrite,
                resource_prefix: None,
            }],
            expires_at: None,
        })
        .await
        .unwrap();
    let r = server
        .anon(Method::POST, "/api/v1/db/v/query/watch")
        .bearer_auth(&writer)
        .json(&json!({"sql": "SELECT * FROM a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The token may come as ?access_token= on this SSE route.
    let r = server
        .anon(
            Method::POST,
            &format!(
                "/api/v1/db/v/query/watch?access_token={}",
                server.admin_token
            ),
        )
        .json(&json!({"sql": "SELECT * FROM a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn watching_a_view_follows_its_tables() {
    let server = TestServer::start().await;
    exec(&server, "vw", "CREATE TABLE a (v)").await;
    exec(
        &server,
        "vw",
        "CREATE VIEW big AS SELECT v FROM a WHERE v > 10",
    )
    .await;
    let mut sse = watch(&server, "vw", json!({"sql": "SELECT * FROM big"}), None).await;
    assert_eq!(
        sse.next_non_heartbeat(WAIT).await.unwrap().json()["rows"],
        json!([])
    );
    exec(&server, "vw", "INSERT INTO a VALUES (50)").await;
    let up = sse
        .next_non_heartbeat(WAIT)
        .await
        .expect("update through the view");
    assert_eq!(up.json()["rows"], json!([[50]]));
}

#[tokio::test]
async fn identical_watches_share_one_evaluation() {
    let server = TestServer::start().await;
    exec(&server, "g", "CREATE TABLE a (v)").await;
    let mut readers = Vec::new();
    for _ in 0..20 {
        let mut sse = watch(&server, "g", json!({"sql": "SELECT count(*) FROM a"}), None).await;
        assert_eq!(
            sse.next_non_heartbeat(WAIT).await.unwrap().event,
            "snapshot"
        );
        readers.push(sse);
    }
    let metrics = || async {
        let text = server.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix("patchwork_watch_reevaluations_total "))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = metrics().await;
    exec(&server, "g", "INSERT INTO a VALUES (1)").await;
    for sse in &mut readers {
        let up = sse.next_non_heartbeat(WAIT).await.expect("update");
        assert_eq!(up.json()["rows"], json!([[1]]));
    }
    assert_eq!(
        metrics().await - before,
        1,
        "one evaluation for twenty watches"
    );
}

/// Many first watchers of one statement arriving at once must all land in the same group: a
/// group registered twice would leave the first one's members without updates for good.
#[tokio::test]
async fn concurrent_first_watches_all_receive_updates() {
    let server = TestServer::start().await;
    for round in 0..5 {
        let db = format!("race{round}");
        exec(&server, &db, "CREATE TABLE a (v)").await;
        let opens = (0..32).map(|_| async {
            let mut sse = watch(&server, &db, json!({"sql": "SELECT count(*) FROM a"}), None).await;
            assert_eq!(
                sse.next_non_heartbeat(WAIT).await.unwrap().event,
                "snapshot"
            );
            sse
        });
        let mut readers = futures_util::future::join_all(opens).await;
        exec(&server, &db, "INSERT INTO a VALUES (1)").await;
        for (i, sse) in readers.iter_mut().enumerate() {
            let up = sse
                .next_non_heartbeat(WAIT)
                .await
                .unwrap_or_else(|| panic!("round {round}: watcher {i} got no update"));
            assert_eq!(up.event, "update");
            assert_eq!(up.json()["rows"], json!([[1]]));
        }
    }
}
