//! Hearth (`web/apps/hearth/`) end to end in two headless Chromium contexts: the owner signs in
//! through the OIDC provider and lights a room (its document, schema and expiry rule made by
//! the app through the public API), mints an invite; a guest opens the link, solves the proof of
//! work, picks a name and joins; both see each other present and each other's messages live; a
//! message expires and disappears from both views and its text from the document file; the guest
//! cannot read another room nor forge an author or an expiry; the voice pass's grants are the
//! LiveKit token's. Screenshots: `target/screenshots/hearth-*.png`.

use std::time::{Duration, Instant};

use fantoccini::key::Key;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::testing::TestServer;
use crate::testing::browser::{self, Browser};
use crate::testing::oidc;

const LK_KEY: &str = "hearth-key";
const LK_SECRET: &str = "hearth-livekit-secret-0123456789abcdef";
const SECRET_TEXT: &str = "the password is marshmallow-42";

async fn hearth_server() -> TestServer {
    let op = oidc::provider().await;
    TestServer::start_at(move |c, base| {
        op.configure(c, base);
        c.pow_difficulty = 12;
        c.retention_sweep_seconds = 1;
        c.livekit_api_key = Some(LK_KEY.into());
        c.livekit_api_secret = Some(crate::config::Secret::new(LK_SECRET));
    })
    .await
}

/// Hearth's sign-in link, then the provider's own login form, back to Hearth.
async fn owner_signs_in(b: &Browser, server: &TestServer, login: &str) {
    b.goto(&server.url("/apps/hearth/")).await;
    b.click("#signin").await;
    b.wait_for("input[name=login]").await;
    b.fill("input[name=login]", login).await;
    b.fill("input[name=password]", "x").await;
    b.click("button[type=submit]").await;
    let mut name = login.to_owned();
    name[..1].make_ascii_uppercase();
    b.wait_text("#me-name", &name).await;
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .starts_with(&server.url("/apps/hearth/")),
        "back in Hearth"
    );
}

async fn say(b: &Browser, text: &str) {
    b.fill("#compose-input", text).await;
    b.keys("#compose-input", &Key::Enter.to_string()).await;
}

/// Waits (up to `secs`) until `#messages` no longer contains `needle`.
async fn wait_message_gone(b: &Browser, needle: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let script = format!(
        "return !document.getElementById('messages').textContent.includes({});",
        json!(needle)
    );
    while Instant::now() < deadline {
        if b.js(&script, vec![]).await == Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{needle:?} still shown after {secs} s");
}

async fn exec_as(server: &TestServer, token: &str, db: &str, sql: &str) -> (StatusCode, Value) {
    let r = server
        .client
        .post(server.url(&format!("/api/v1/db/{db}/query/exec")))
        .bearer_auth(token)
        .json(&json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap())
}

fn file_contains(server: &TestServer, db: &str, needle: &str) -> bool {
    let dir = server.state.registry.documents_dir();
    ["", "-wal"].iter().any(|suffix| {
        std::fs::read(dir.join(format!("{db}.sqlite3{suffix}")))
            .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .unwrap_or(false)
    })
}

/// Moves a message's `created_at` back by `secs` (triggers off for this one statement, as no
/// caller may change it): the edit window is checked without waiting a minute.
async fn backdate(server: &TestServer, db: &str, body: &str, secs: i64) {
    let id = crate::registry::DbId::parse(db).unwrap();
    let doc = server.state.registry.get(&id).await.unwrap();
    let body = body.to_owned();
    let n = doc
        .write(move |c| {
            use rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER;
            c.set_db_config(SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
            let n = c.execute(
                "UPDATE messages SET created_at = created_at - ?1 WHERE body = ?2",
                rusqlite::params![secs, body],
            );
            c.set_db_config(SQLITE_DBCONFIG_ENABLE_TRIGGER, true)?;
            Ok(n?)
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn hearth_owner_and_guest_end_to_end() {
    let server = hearth_server().await;
    let db = "hearth-fireside";

    // The owner lights a room with a 15 s message life.
    let owner = browser::session(1200, 820).await;
    owner_signs_in(&owner, &server, "alice").await;
    owner.wait_text("#room-list", "No rooms yet").await;
    owner.screenshot("hearth-home").await;
    owner.fill("#room-name", "Fireside").await;
    owner.fill("#room-desc", "Friday night stories").await;
    owner
        .js("document.getElementById('room-ttl').value = '15';", vec![])
        .await;
    owner.click("#create-btn").await;
    owner.wait_text("#room-title", "Fireside").await;
    assert_eq!(owner.hash().await, format!("#/room/{db}"));
    // The person owns the document; its schema and expiry rule are in place.
    let dbs: Value = server
        .admin(Method::GET, "/api/v1/dbs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = dbs["dbs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["db_id"] == db)
        .expect("the room's document exists")
        .clone();
    assert_eq!(entry["owner"], "alice");
    let rules: Value = server
        .admin(Method::GET, &format!("/api/v1/db/{db}/expiry"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rules["rules"][0]["table"], "messages");
    assert_eq!(rules["rules"][0]["column"], "expires_at");
    owner.wait_text("#presence", "Alice").await;

    // Invite link.
    owner.click("#invite-btn").await;
    owner.wait_for("#invite-link").await;
    let link = owner.value("#invite-link").await;
    assert!(
        link.starts_with(&server.url("/apps/hearth/#/join/")),
        "{link}"
    );
    owner.screenshot("hearth-invite").await;

    // The guest: a phone-sized, separate browser with no session.
    // (in the dark theme, for one set of screenshots in it)
    let guest = browser::session_with(390, 800, true).await;
    guest.goto(&link).await;
    guest.wait_text("#join-form", "#fireside").await;
    guest.fill("#guest-name", "Bob").await;
    guest.click("#join-btn").await;
    guest.wait_text("#pow-status", "Solved").await;
    guest.screenshot("hearth-join-solved").await;
    guest.wait_text("#room-title", "Fireside").await;

    // Both present, live.
    guest.wait_text("#presence", "Alice").await;
    guest.wait_text("#presence", "Bob").await;
    owner.wait_text("#presence", "Bob").await;
    owner.wait_text("#messages", "Bob joined").await;

    // Messages both ways, live.
    say(&owner, SECRET_TEXT).await;
    guest.wait_text("#messages", SECRET_TEXT).await;
    say(&guest, "hi all, bob here").await;
    owner.wait_text("#messages", "bob here").await;
    // The guest's token (from sessionStorage) and what it cannot do.
    let stored = guest
        .js(
            &format!("return sessionStorage.getItem('hearth.guest.{db}');"),
            vec![],
        )
        .await;
    let g: Value = serde_json::from_str(stored.as_str().expect("guest token stored")).unwrap();
    let token = g["token"].as_str().unwrap().to_owned();
    let token_id = g["token_id"].as_str().unwrap().to_owned();
    assert_eq!(g["member"], "Bob");
    // Stamped server-side: author is the guest's token, name its label.
    let (s, v) = exec_as(
        &server,
        &token,
        db,
        "SELECT author, author_name, expires_at - created_at AS life FROM messages WHERE body = 'hi all, bob here'",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rows"][0], json!([token_id, "Bob", 15]));
    for forged in [
        "INSERT INTO messages (body, author) VALUES ('forged', 'alice')",
        "INSERT INTO messages (body, author_name) VALUES ('forged', 'Alice')",
        "INSERT INTO messages (body, expires_at) VALUES ('forever', 4102444800)",
        "UPDATE messages SET expires_at = 4102444800 WHERE author_name = 'Bob'",
        "UPDATE messages SET author = 'alice' WHERE author_name = 'Bob'",
        "UPDATE messages SET body = 'rewritten' WHERE author = 'alice'",
        "DELETE FROM messages WHERE author = 'alice'",
        "UPDATE room SET ttl_secs = 604800",
        "UPDATE room SET allow_video = 1",
        "INSERT INTO members (subject, name, role) VALUES ('mallory', 'Mallory', 'owner')",
    ] {
        let (s, v) = exec_as(&server, &token, db, forged).await;
        assert_eq!(s, StatusCode::CONFLICT, "{forged}: {v}");
    }
    let (s, v) = exec_as(
        &server,
        &token,
        db,
        "SELECT count(*) FROM messages WHERE body IN ('forged', 'forever', 'rewritten')",
    )
    .await;
    assert_eq!((s, v["rows"][0][0].as_i64()), (StatusCode::OK, Some(0)));

    say(&guest, "/me warms his hands").await;
    owner.wait_text("#messages", "Bob warms his hands").await;
    owner.js("window.scrollTo(0, 0);", vec![]).await;
    owner.screenshot("hearth-room-owner").await;
    guest.screenshot("hearth-room-guest-dark").await;

    // The 60 s edit window: the author edits at once; a minute later not even they may.
    let (s, v) = exec_as(
        &server,
        &token,
        db,
        "UPDATE messages SET body = 'hi all, bob here again' WHERE body = 'hi all, bob here'",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    owner.wait_text("#messages", "bob here again").await;
    backdate(&server, db, "hi all, bob here again", 61).await;
    let (s, v) = exec_as(
        &server,
        &token,
        db,
        "UPDATE messages SET body = 'too late' WHERE body = 'hi all, bob here again'",
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // The owner deletes the guest's message from the view; it goes from both.
    let clicked = owner
        .js(
            "const li = [...document.querySelectorAll('#messages .msg')]
               .find((l) => l.textContent.includes('bob here again'));
             const b = li && [...li.querySelectorAll('.tools button')].find((x) => x.textContent === 'delete');
             if (b) b.click();
             return !!b;",
            vec![],
        )
        .await;
    assert_eq!(clicked, Value::Bool(true), "the owner has a delete button");
    wait_message_gone(&guest, "bob here again", 10).await;
    wait_message_gone(&owner, "bob here again", 10).await;

    // Another room: the guest's token reaches nothing there.
    let r = server
        .admin(Method::POST, "/api/v1/db/hearth-backroom/query/exec")
        .json(&json!({"sql": "CREATE TABLE messages (body TEXT)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (s, _) = exec_as(&server, &token, "hearth-backroom", "SELECT * FROM messages").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let r = server
        .client
        .get(server.url("/api/v1/db/hearth-backroom/presence/backroom"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Voice: the pass shows the token's grants (microphone only: video is off).
    guest.click("#voice-btn").await;
    guest.wait_text("#grant-sources", "microphone").await;
    assert!(!guest.text("#grant-sources").await.contains("camera"));
    guest
        .wait_text("#grant-room", "hearth-fireside/fireside")
        .await;
    guest.screenshot("hearth-voice-guest").await;
    let r = server
        .client
        .post(server.url(&format!("/api/v1/db/{db}/media/token")))
        .bearer_auth(&token)
        .json(&json!({"room": "fireside"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let (_, claims) = super::media::verify_jwt(v["token"].as_str().unwrap(), LK_SECRET);
    assert_eq!(claims["iss"], LK_KEY);
    assert_eq!(claims["sub"], token_id.as_str());
    assert_eq!(claims["name"], "Bob");
    assert_eq!(
        claims["video"],
        json!({"roomJoin": true, "room": "hearth-fireside/fireside", "canPublish": true,
               "canSubscribe": true, "canPublishData": true, "canPublishSources": ["microphone"]})
    );
    // The owner's pass is theirs.
    owner.js("window.scrollTo(0, 0);", vec![]).await;
    owner.click("#voice-btn").await;
    owner.wait_text("#voice-grants", "alice").await;

    // Expiry: the first message fades (its last quarter of life is marked), then is gone from
    // both views and from the file.
    let deadline = Instant::now() + Duration::from_secs(20);
    while owner
        .js(
            "return document.querySelector('.msg.expiring') !== null;",
            vec![],
        )
        .await
        != Value::Bool(true)
    {
        assert!(Instant::now() < deadline, "no message ever looked expiring");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    owner.screenshot("hearth-room-fading").await;
    assert!(
        file_contains(&server, db, "marshmallow-42"),
        "the text is in the file before it expires"
    );
    wait_message_gone(&owner, "marshmallow-42", 30).await;
    wait_message_gone(&guest, "marshmallow-42", 10).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while file_contains(&server, db, "marshmallow-42") {
        assert!(
            Instant::now() < deadline,
            "expired text still in the document file"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    owner.screenshot("hearth-room-expired").await;

    // Room settings: the owner allows video; the voice pass now includes the camera.
    owner.js("window.scrollTo(0, 0);", vec![]).await;
    owner.click("#settings-btn").await;
    owner.wait_for("#settings-form").await;
    owner.click("#set-video").await;
    owner.click("#save-settings").await;
    owner.wait_text(".room-head", "video on").await;
    owner.click("#voice-btn").await;
    owner.wait_text("#grant-sources", "camera").await;

    // Members: the owner kicks the guest; their row goes and their token is revoked, so their
    // streams end (the owner sees them leave at once) and nothing more is allowed.
    owner.click("#members-btn").await;
    owner.wait_text("#member-list", "Bob").await;
    owner.screenshot("hearth-members").await;
    owner.click("#member-list .kick").await;
    owner
        .wait_until("return !document.getElementById('presence').textContent.includes('Bob');")
        .await;
    owner
        .wait_until("return !document.getElementById('member-list').textContent.includes('Bob');")
        .await;
    let (s, _) = exec_as(&server, &token, db, "SELECT count(*) FROM messages").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    guest.close().await;
    owner.close().await;
    server.stop().await.unwrap();
}
