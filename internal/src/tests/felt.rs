//! Felt (`web/apps/felt/`) end to end: a tournament director signs in through the OIDC provider
//! in headless Chromium and creates a tournament (its document at `synchronous=FULL`, schema by
//! `POST /migrations`), mints the read-only screen link; two big-screen clocks and a phone join
//! by it. The TD adds players, draws seats, starts the clock (3 s levels, so it rolls into level
//! 2 on its own), busts players, breaks a table and pauses; every screen shows the same state,
//! the screens cannot write, and the audit replays to the state. Latency from each TD action
//! (the click's `Date.now()`) to each browser screen and to 50 plain-HTTP SSE watchers of the
//! same query is reported as p50/p99. A big screen that navigates away and back, and a phone
//! whose watch connection is cut, each get the current state (with the change made meanwhile)
//! at once; the console and the screens show Patchwork's readiness (`/readyz`): ready, then
//! unreachable once the server stops. Screenshots: `target/screenshots/felt-*.png`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::Action;
use crate::testing::browser::{self, Browser};
use crate::testing::{SseReader, TestServer, oidc, scope};

const DB: &str = "felt-friday-deepstack";
const WATCHERS: usize = 50;

/// Per watcher: (audit seq, arrival time in ms) of each state it received.
type Sightings = Arc<Mutex<Vec<Vec<(i64, f64)>>>>;

async fn felt_server() -> TestServer {
    let op = oidc::provider().await;
    let (issuer, client_id, secret) = (
        op.issuer.clone(),
        op.client_id.clone(),
        op.client_secret.clone(),
    );
    TestServer::start_at(move |c, base| {
        c.public_url = Some(base.to_owned());
        c.oidc_issuer = Some(issuer);
        c.oidc_client_id = Some(client_id);
        c.oidc_client_secret = Some(crate::config::Secret::new(secret));
    })
    .await
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// The `p`th percentile (nearest rank) of `v`.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The TD's actions so far: `[{seq, action, t0, ack}]`.
async fn actions(td: &Browser) -> Vec<Value> {
    td.js("return felt.actions;", vec![])
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Clicks `css` on the TD console and waits until the action is acknowledged.
async fn act(td: &Browser, css: &str) {
    let before = actions(td).await.len();
    td.click(css).await;
    td.wait_until(&format!("return felt.actions.length > {before};"))
        .await;
}

/// Waits until `screen` shows the TD's latest audit seq.
async fn caught_up(screen: &Browser, seq: i64) {
    screen
        .wait_until(&format!(
            "return !!felt.state && felt.state.audit_seq >= {seq};"
        ))
        .await;
}

/// What a page shows of the state (players, tables, clock).
async fn shown(b: &Browser) -> Value {
    b.js(
        "return JSON.stringify([felt.state.players, felt.state.tables, felt.state.clock]);",
        vec![],
    )
    .await
}

/// For each action (its seq and click time), the delay until the first state at or after its
/// seq was seen (`seen`: seq → time).
fn delays(acts: &[(i64, f64)], seen: &[(i64, f64)], out: &mut Vec<f64>) {
    for (seq, t0) in acts {
        if let Some(t) = seen
            .iter()
            .filter(|(s, _)| s >= seq)
            .map(|(_, t)| *t)
            .reduce(f64::min)
        {
            out.push(t - t0);
        }
    }
}

#[tokio::test]
async fn felt_director_and_screens_end_to_end() {
    let server = felt_server().await;

    // The TD signs in and creates a tournament with 3-second levels and 4-seat tables.
    let td = browser::session(1360, 900).await;
    td.goto(&server.url("/apps/felt/")).await;
    td.screenshot("felt-signin").await;
    td.click("#signin").await;
    td.wait_for("input[name=login]").await;
    td.fill("input[name=login]", "tina").await;
    td.fill("input[name=password]", "x").await;
    td.click("button[type=submit]").await;
    td.wait_text("#whoami", "Tina").await;
    td.wait_for("#create-form").await;
    td.fill("#new-name", "Friday Deepstack").await;
    td.js(
        "document.getElementById('new-seats').value = '4';\
         document.getElementById('new-minutes').value = '0.05';\
         document.getElementById('new-rebuy_level').value = '10';",
        vec![],
    )
    .await;
    td.click("#create-btn").await;
    td.wait_text("#td-clock", "LEVEL 1").await;
    assert_eq!(td.hash().await, format!("#/td/{DB}"));

    // The document runs with synchronous=FULL and belongs to the TD.
    let settings: Value = server
        .admin(Method::GET, &format!("/api/v1/db/{DB}/_settings"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(settings["synchronous"], "full", "{settings}");
    assert_eq!(settings["effective"], "full", "{settings}");

    // Read-only screen links.
    td.click("#mint-screens").await;
    td.wait_for("#clock-link").await;
    let clock_link = td.value("#clock-link").await;
    let player_link = td.value("#player-link").await;
    assert!(clock_link.starts_with(&server.url("/apps/felt/#/join/clock/")));
    let mut screens = Vec::new();
    for link in [&clock_link, &clock_link, &player_link] {
        let phone = link.contains("/player/");
        let s = if phone {
            browser::session(390, 800).await
        } else {
            browser::session(1280, 720).await
        };
        s.goto(link).await;
        s.wait_text(if phone { "#phone-clock" } else { "#big-clock" }, "LEVEL 1")
            .await;
        screens.push(s);
    }
    // Patchwork's readiness (`GET /readyz`, polled every few seconds) on the console and screens.
    for b in std::iter::once(&td).chain(&screens) {
        health_is(b, "ok").await;
        assert_eq!(b.text("#health").await.to_lowercase(), "patchwork ready");
    }

    // A screen's token reads but cannot write.
    let token = screens[0]
        .js(
            &format!("return JSON.parse(sessionStorage.getItem('felt.screen.{DB}')).token;"),
            vec![],
        )
        .await;
    let token = token.as_str().unwrap().to_owned();
    let r = server
        .anon(Method::POST, &format!("/api/v1/db/{DB}/query/exec"))
        .bearer_auth(&token)
        .json(&json!({"sql": "UPDATE clock SET running = 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = server
        .anon(Method::POST, "/api/v1/db/felt-other/query/exec")
        .bearer_auth(&token)
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "that tournament only");

    // 50 more screens over plain HTTP: SSE watches of the same state query.
    let state_sql = td.js("return felt.stateSql;", vec![]).await;
    let reader = server.mint(vec![scope(DB, Action::QueryRead, None)]).await;
    let seen_http: Sightings = Arc::new(Mutex::new(vec![Vec::new(); WATCHERS]));
    let mut watchers = Vec::new();
    for w in 0..WATCHERS {
        let r = server
            .anon(Method::POST, &format!("/api/v1/db/{DB}/query/watch"))
            .bearer_auth(&reader)
            .json(&json!({"sql": state_sql}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let mut sse = SseReader::new(r);
        let seen = seen_http.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(ev) = sse.next(Duration::from_secs(120)).await {
                if ev.event != "snapshot" && ev.event != "update" {
                    continue;
                }
                let at = now_ms();
                let state: Value =
                    serde_json::from_str(ev.json()["rows"][0][0].as_str().unwrap()).unwrap();
                let seq = state["audit_seq"].as_i64().unwrap_or(0);
                seen.lock().unwrap()[w].push((seq, at));
            }
        }));
    }

    // Actions from here on are measured (every screen and watcher is connected).
    let measured_after = actions(&td).await.len();

    // Ten players, a seat draw (10 on 4-seat tables: 3 tables).
    for name in [
        "Ada", "Ben", "Cleo", "Dev", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jo",
    ] {
        td.fill("#player-name", name).await;
        act(&td, "#add-player button").await;
    }
    act(&td, "#seat-draw").await;
    td.wait_for("[data-table='3']").await;

    // The clock runs and rolls into level 2 by itself on every screen.
    act(&td, "#start").await;
    for (i, s) in screens.iter().enumerate() {
        let css = if i == 2 { "#phone-clock" } else { "#big-clock" };
        s.wait_text(css, "LEVEL 2").await;
    }
    screens[0].screenshot("felt-clock").await;

    // Eliminations and a table break.
    for name in ["Ben", "Eve", "Ivo"] {
        act(&td, &format!("[data-bust='{name}']")).await;
    }
    act(&td, "[data-break='1']").await;
    td.wait_gone("[data-table='1']").await;
    act(&td, "#pause").await;
    td.wait_text("#td-clock", "PAUSED").await;

    // Every screen shows the same state as the TD.
    let last = actions(&td).await.last().unwrap()["seq"].as_i64().unwrap();
    for s in &screens {
        caught_up(s, last).await;
    }
    let want = shown(&td).await;
    for s in &screens {
        assert_eq!(shown(s).await, want);
    }
    for s in &screens[..2] {
        s.wait_text("#players-left", "7").await;
        s.wait_text("#big-clock", "PAUSED").await;
    }
    screens[2].wait_text("#eliminated", "8. Ivo").await;
    screens[2].wait_text("#eliminated", "10. Ben").await;
    // A rebuy: Ben (busted first) buys back in; the pool grows by the buy-in (10 entries + 1
    // rebuy at 100), he takes the free seat, the players busted after him move up a place.
    act(&td, "[data-rebuy='Ben']").await;
    let last = actions(&td).await.last().unwrap()["seq"].as_i64().unwrap();
    for s in &screens {
        caught_up(s, last).await;
    }
    let want = shown(&td).await;
    td.wait_text("#side-pool", "1,100").await;
    td.wait_text("#pool", "1,100").await;
    for s in &screens {
        assert_eq!(shown(s).await, want);
        s.wait_text("#pool", "1,100").await;
        s.wait_text("#rebuys", "1").await;
        s.wait_text("#players-left", "8").await;
    }
    screens[2].wait_text("#eliminated", "9. Ivo").await;
    screens[2].wait_text("#eliminated", "10. Eve").await;
    screens[2].wait_text("#phone-body", "1 rebuy").await;
    let ben = td
        .js(
            "return felt.state.players.find((p) => p.name === 'Ben');",
            vec![],
        )
        .await;
    assert_eq!(
        (&ben["status"], &ben["rebuys"]),
        (&json!("seated"), &json!(1)),
        "{ben}"
    );
    screens[1].screenshot("felt-clock-paused").await;
    screens[2].screenshot("felt-phone").await;

    // The audit replays to the state.
    td.click("#verify-audit").await;
    td.wait_text("#replay-result", "equals the state").await;
    td.screenshot("felt-td").await;
    let n: Value = server
        .admin(Method::POST, &format!("/api/v1/db/{DB}/query/exec"))
        .json(&json!({"sql": "SELECT count(*) FROM audit"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(n["rows"][0][0], last);
    // Append-only, even for the owner's admin token.
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{DB}/query/exec"))
        .json(&json!({"sql": "DELETE FROM audit"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // Latency: each TD action (click time) to each screen.
    let acts: Vec<(i64, f64, f64)> = actions(&td)
        .await
        .iter()
        .skip(measured_after)
        .map(|a| {
            (
                a["seq"].as_i64().unwrap(),
                a["t0"].as_f64().unwrap(),
                a["ack"].as_f64().unwrap(),
            )
        })
        .collect();
    let from_click: Vec<(i64, f64)> = acts.iter().map(|(s, t, _)| (*s, *t)).collect();
    let from_ack: Vec<(i64, f64)> = acts.iter().map(|(s, _, a)| (*s, *a)).collect();
    let mut browser_ms = Vec::new();
    for s in &screens {
        let seen = s.js("return Object.entries(felt.seen);", vec![]).await;
        let seen: Vec<(i64, f64)> = seen
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e[0].as_str().unwrap().parse().unwrap(),
                    e[1].as_f64().unwrap(),
                )
            })
            .collect();
        delays(&from_click, &seen, &mut browser_ms);
    }
    for w in &watchers {
        w.abort();
    }
    let http = seen_http.lock().unwrap().clone();
    let (mut http_click, mut http_ack) = (Vec::new(), Vec::new());
    for seen in &http {
        delays(&from_click, seen, &mut http_click);
        delays(&from_ack, seen, &mut http_ack);
    }
    let n_browser = browser_ms.len();
    let n_http = http_click.len();
    let report = format!(
        "felt latency over {} actions: browser screens (3) click->shown p50 {:.1} ms p99 {:.1} ms \
         (n={n_browser}); {WATCHERS} SSE watchers click->received p50 {:.1} ms p99 {:.1} ms, \
         ack->received p50 {:.1} ms p99 {:.1} ms (n={n_http})",
        acts.len(),
        percentile(&mut browser_ms, 50.0),
        percentile(&mut browser_ms, 99.0),
        percentile(&mut http_click, 50.0),
        percentile(&mut http_click, 99.0),
        percentile(&mut http_ack, 50.0),
        percentile(&mut http_ack, 99.0),
    );
    eprintln!("{report}");
    assert!(n_http >= acts.len() * WATCHERS / 2, "{report}");
    // A debug build with four Chromium processes on two cores: a bound with headroom here (runs
    // measured p99 ≈ 80 ms); the printed figures are what the 100 ms is judged by.
    assert!(percentile(&mut http_click, 99.0) < 500.0, "{report}");
    assert!(percentile(&mut browser_ms, 99.0) < 500.0, "{report}");

    // A screen that reconnects (navigates away, its watch stopped, then back) gets the current
    // state at once, including what changed while it was away.
    let away = &screens[0];
    away.js("location.hash = '#/';", vec![]).await;
    away.wait_for("#signin").await;
    td.fill("#player-name", "Kai").await;
    act(&td, "#add-player button").await;
    let latest = actions(&td).await.last().unwrap()["seq"].as_i64().unwrap();
    let back_ms = away
        .js(
            &format!(
                "felt.state = null; window.feltBack = Date.now(); \
                 location.hash = '#/clock/{DB}'; return 0;"
            ),
            vec![],
        )
        .await;
    assert_eq!(back_ms, 0);
    caught_up(away, latest).await;
    // The first state after coming back, from the page's own clock.
    let took = away
        .js(
            &format!("return felt.seen[{latest}] - window.feltBack;"),
            vec![],
        )
        .await
        .as_f64()
        .unwrap();
    assert_eq!(shown(away).await, shown(&td).await);
    away.wait_text("#players-left", "9").await;
    health_is(away, "ok").await;
    eprintln!("felt: a reconnecting screen had the current state within {took:.0} ms");
    assert!(took < 3000.0, "reconnect took {took} ms");
    // A screen whose watch connection drops reconnects by itself and gets the current state.
    let phone = &screens[2];
    let opens = phone
        .js("return felt.opens;", vec![])
        .await
        .as_i64()
        .unwrap();
    phone.js("felt.dropWatch(); return 0;", vec![]).await;
    td.fill("#player-name", "Lia").await;
    act(&td, "#add-player button").await;
    let latest = actions(&td).await.last().unwrap()["seq"].as_i64().unwrap();
    phone
        .wait_until(&format!(
            "return felt.opens > {opens} && felt.state.audit_seq >= {latest};"
        ))
        .await;
    assert_eq!(shown(phone).await, shown(&td).await);
    phone.wait_text("#players-left", "10").await;

    // With Patchwork gone, the screens say so.
    server.stop().await.unwrap();
    health_is(&screens[1], "unreachable").await;
    assert_eq!(
        screens[1].text("#health").await.to_lowercase(),
        "patchwork unreachable"
    );
    for s in screens {
        s.close().await;
    }
    td.close().await;
}

/// Waits until the page's readiness badge is `want` (`ok`, `not_ready`, `unreachable`).
async fn health_is(b: &Browser, want: &str) {
    b.wait_until(&format!(
        "const e = document.getElementById('health'); return !!e && e.dataset.health === '{want}';"
    ))
    .await;
}
