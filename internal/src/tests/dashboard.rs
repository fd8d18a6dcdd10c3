//! The dashboard (`/ui/`) in a real headless Chromium (testing::browser): sign-in, documents, the
//! SQL console, a live watch fed by another client, the message tail, tokens (created, used over
//! HTTP, revoked), the audit page, sign-out; every page at 375 px; and sign-in through the real
//! OIDC provider's login form. Each step saves a screenshot to `target/screenshots/`.

use std::time::Instant;

use fantoccini::key::Key;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::testing::TestServer;
use crate::testing::browser::{self, Browser};
use crate::testing::oidc;

/// Signs in on the token form with the server's admin token and waits for the documents page.
async fn sign_in(b: &Browser, server: &TestServer) {
    b.fill("#token-input", &server.admin_token).await;
    b.keys("#token-input", &Key::Enter.to_string()).await;
    b.wait_for("#admin-badge").await;
    b.wait_for("#signout").await;
}

async fn exec(server: &TestServer, db: &str, sql: &str) -> Value {
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/query/exec"))
        .json(&json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{sql}");
    r.json().await.unwrap()
}

/// Runs the console's SQL with Ctrl+Enter (the keyboard path), waits for its answer (the
/// console counts finished runs in `#result[data-runs]`) and checks it shows `expect`.
async fn run_sql(b: &Browser, sql: &str, expect: &str) -> String {
    let runs = "return Number(document.querySelector('#result').dataset.runs || 0)";
    let before = b.js(runs, vec![]).await.as_u64().unwrap_or(0);
    b.fill("#sql", sql).await;
    let chord = format!("{}{}{}", Key::Control, Key::Enter, Key::Null);
    b.keys("#sql", &chord).await;
    b.wait_until(&format!("{runs} > {before};")).await;
    let text = b.text("#result").await;
    assert!(
        text.contains(expect),
        "{sql}: expected {expect:?} in {text}"
    );
    text
}

#[tokio::test]
async fn dashboard_end_to_end() {
    let started = Instant::now();
    let server = TestServer::start().await;
    let b = browser::session(1280, 900).await;

    // `/` leads to the dashboard, which asks to sign in (no OIDC: the token form).
    b.goto(&server.url("/")).await;
    b.wait_for("#token-login").await;
    assert!(b.client.current_url().await.unwrap().path() == "/ui/");
    // A wrong token is refused in place, with the API's reason.
    b.fill("#token-input", "pw_0000000000000000_nope").await;
    b.click("#token-submit").await;
    b.wait_text("#token-login .alert", "401").await;
    b.screenshot("sign-in").await;
    sign_in(&b, &server).await;
    let who = b.text("#whoami").await;
    assert!(!who.is_empty());

    // Documents: none yet.
    b.wait_text("#doc-list-body", "No documents yet").await;
    b.screenshot("documents-empty").await;

    // Create one; a bad name is caught before any request.
    b.fill("#new-doc-id", "no/slashes").await;
    b.click("#new-doc-submit").await;
    b.wait_text("#new-doc-hint", "letters, digits").await;
    assert!(
        !server.dir.path().join("documents").join("no").exists(),
        "nothing created for an invalid name"
    );
    b.fill("#new-doc-id", "notes").await;
    b.click("#new-doc-submit").await;
    b.wait_text("#doc-title", "notes").await;
    assert_eq!(b.hash().await, "#/docs/notes");
    b.wait_text("#doc-facts", "size").await;

    // SQL console: DDL, a batch of writes, a read with every value type.
    run_sql(
        &b,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, photo BLOB)",
        "0 rows affected",
    )
    .await;
    b.click("#batch").await;
    run_sql(
        &b,
        "INSERT INTO items (name, price) VALUES ('apple', 1.25);\n\
         INSERT INTO items (name, price, photo) VALUES ('banana', 0.5, x'cafe');",
        "Statement 2 of 2",
    )
    .await;
    b.click("#batch").await;
    let text = run_sql(
        &b,
        "SELECT id, name, price, photo, 9007199254740993 AS big FROM items ORDER BY id",
        "banana",
    )
    .await;
    assert!(text.contains("apple"), "{text}");
    assert!(text.contains("2 rows"), "{text}");
    assert!(text.contains("NULL"), "nulls are shown: {text}");
    assert!(text.contains("blob · 2 B"), "blobs are shown: {text}");
    assert!(text.contains("9007199254740993"), "$int values: {text}");
    let head = b.text("#result thead").await;
    assert!(head.contains("integer") && head.contains("real"), "{head}");
    assert!(head.contains("blob | null"), "{head}");
    b.screenshot("console-results").await;
    // The history keeps what ran.
    b.wait_text("#history", "SELECT id, name").await;

    // An error is shown in place with its code and message.
    let text = run_sql(&b, "SELECT * FROM no_such_table", "sql_error").await;
    assert!(text.contains("no such table"), "{text}");
    b.screenshot("console-error").await;

    // Live watch: a second client's write over HTTP updates the table in place.
    b.click("a[data-tab=watch]").await;
    b.fill(
        "#watch-sql",
        "SELECT id, name, price FROM items ORDER BY id",
    )
    .await;
    b.click("#watch-start").await;
    b.wait_text("#watch-table", "banana").await;
    b.wait_text("#watch-status", "seq 1").await;
    exec(
        &server,
        "notes",
        "INSERT INTO items (name, price) VALUES ('cherry', 3.5)",
    )
    .await;
    b.wait_text("#watch-table", "cherry").await;
    b.wait_text("#watch-status", "seq 2").await;
    exec(
        &server,
        "notes",
        "UPDATE items SET price = 1.75 WHERE name = 'apple'",
    )
    .await;
    b.wait_text("#watch-table", "1.75").await;
    b.wait_text("#watch-status", "seq 3").await;
    let flashing = b
        .js(
            "return document.querySelectorAll('#watch-table .flash').length;",
            vec![],
        )
        .await;
    assert!(
        flashing.as_u64().unwrap_or(0) >= 1,
        "changed cells are highlighted"
    );
    b.screenshot("watch").await;

    // Messages: the live tail shows what this page and another client publish.
    b.click("a[data-tab=messages]").await;
    b.wait_text("#tail-status", "Live").await;
    b.fill("#pub-topic", "chat/general").await;
    b.fill("#pub-payload", "hello from the dashboard").await;
    b.click("#pub-send").await;
    b.wait_text("#pub-result", "Published #1").await;
    b.wait_text("#tail", "hello from the dashboard").await;
    let r = server
        .admin(Method::POST, "/api/v1/db/notes/messages")
        .json(&json!({ "topic": "sensors/kitchen", "payload": { "celsius": 21.5 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    b.wait_text("#tail", "sensors/kitchen").await;
    b.wait_text("#tail", "21.5").await;
    b.wait_text("#retention", "kept forever").await;
    b.screenshot("messages").await;

    // Webhook inbox: a delivery made over HTTP is listed.
    let r = server
        .admin(Method::POST, "/api/v1/db/notes/webhooks/github/push")
        .header("X-GitHub-Delivery", "d-123")
        .json(&json!({ "ref": "refs/heads/main" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    b.click("a[data-tab=webhooks]").await;
    b.wait_text("#webhook-inbox", "github/push").await;
    b.wait_text("#webhook-inbox", "d-123").await;
    b.wait_text("#webhook-configs", "No endpoint").await;
    b.screenshot("webhooks").await;

    // Leases: one taken over HTTP shows its holder, fence and countdown.
    let r = server
        .admin(Method::POST, "/api/v1/db/notes/leases/acquire")
        .json(&json!({ "resource": "jobs/nightly", "owner": "worker-1", "ttl_seconds": 600 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    b.click("a[data-tab=leases]").await;
    b.wait_text("#lease-table", "worker-1").await;
    b.wait_text("#lease-table", "min").await;
    b.screenshot("leases").await;

    b.click("a[data-tab=status]").await;
    b.wait_text("#doc-status", "Last write").await;
    b.screenshot("status").await;

    // The documents list now has it.
    b.click("nav#nav a[href='#/']").await;
    b.wait_text("#doc-list", "notes").await;
    b.screenshot("documents-list").await;

    // Tokens: create one scoped to the document; its plaintext is shown once.
    b.click("nav#nav a[href='#/tokens']").await;
    b.wait_for("#token-form").await;
    b.fill("#token-label", "ci-reader").await;
    b.fill("#scope-db", "notes").await;
    b.click("#act-query-read").await;
    b.click("#token-create").await;
    b.wait_for("#new-token-value").await;
    let token = b.value("#new-token-value").await;
    assert!(token.starts_with("pw_"), "{token}");
    let curl = b.text("#new-token-curl").await;
    assert!(
        curl.contains(&token) && curl.contains("/api/v1/db/notes/_status"),
        "{curl}"
    );
    b.screenshot("tokens-created").await;

    // It works over plain HTTP.
    let status = |token: String| {
        let req = server
            .anon(Method::GET, "/api/v1/db/notes/_status")
            .bearer_auth(token);
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(status(token.clone()).await, StatusCode::OK);
    let id = token.split('_').nth(1).unwrap().to_owned();
    let row = format!("#token-list tr[data-id='{id}']");
    b.wait_text(&row, "ci-reader").await;
    b.wait_text(&row, "notes · query.read").await;
    b.click("#new-token-copy").await;
    b.wait_text("#new-token-copy", "Cop").await;
    // Once dismissed, the plaintext is gone from the page.
    b.click("#new-token-done").await;
    b.wait_gone("#new-token-value").await;
    b.js(
        "document.querySelector('#token-list').scrollIntoView({block: 'center'});",
        vec![],
    )
    .await;
    b.screenshot("tokens-list").await;

    // Revoke it in the page (two clicks: ask, confirm); the same call is refused now.
    b.click(&format!("{row} button.revoke")).await;
    b.wait_text(&format!("{row} button.revoke"), "Confirm")
        .await;
    b.click(&format!("{row} button.revoke")).await;
    b.wait_gone(&row).await;
    assert_eq!(status(token).await, StatusCode::UNAUTHORIZED);

    // The audit page answers with the log, or says it is not there (another issue builds it).
    b.click("nav#nav a[href='#/audit']").await;
    let audit = b
        .wait_for("#audit-body .state, #audit-table, #audit-body .alert")
        .await;
    if audit.attr("id").await.unwrap().as_deref() == Some("audit-table") {
        // The log is there: it shows what this session just did.
        b.wait_text("#audit-table", "token.revoke").await;
    } else {
        b.wait_text("#audit-body", "not available").await;
    }
    b.screenshot("audit").await;

    // Sign out: back to the sign-in page, and the session is gone.
    b.click("#signout").await;
    b.wait_for("#token-login").await;
    b.wait_text("#signin-notice", "signed out").await;
    let me = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1]; fetch('/auth/me').then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(me, json!(401));

    b.close().await;
    eprintln!("dashboard end to end: {:?}", started.elapsed());
}

/// The page must not scroll sideways at this width.
async fn assert_fits(b: &Browser, page: &str) {
    let v = b
        .js(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await;
    let (scroll, inner) = (v[0].as_u64().unwrap(), v[1].as_u64().unwrap());
    assert!(
        scroll <= inner,
        "{page}: the page is {scroll} px wide in a {inner} px window"
    );
}

#[tokio::test]
async fn every_page_works_at_375_px() {
    let started = Instant::now();
    let server = TestServer::start().await;
    exec(
        &server,
        "shop",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL)",
    )
    .await;
    exec(
        &server,
        "shop",
        "INSERT INTO orders (customer, total) VALUES ('Ada Lovelace', 12.5), ('Grace Hopper', 99)",
    )
    .await;
    let b = browser::session(375, 800).await;
    b.goto(&server.url("/ui/#/docs/shop")).await;
    b.wait_for("#token-login").await;
    let width = b.js("return window.innerWidth;", vec![]).await;
    assert_eq!(width, json!(375));
    assert_fits(&b, "sign-in").await;
    b.screenshot("narrow-sign-in").await;
    sign_in(&b, &server).await;
    // The deep link survives sign-in.
    b.wait_text("#doc-title", "shop").await;

    run_sql(&b, "SELECT * FROM orders", "Grace Hopper").await;
    assert_fits(&b, "console").await;
    b.screenshot("narrow-console").await;

    for (tab, ready) in [
        ("watch", "#watch-form"),
        ("messages", "#tail-status .dot.live"),
        ("webhooks", "#webhook-inbox .state"),
        ("leases", "#leases .state"),
        ("status", "#doc-status dl"),
    ] {
        b.goto(&server.url(&format!("/ui/#/docs/shop/{tab}"))).await;
        b.wait_for(ready).await;
        assert_fits(&b, tab).await;
        b.screenshot(&format!("narrow-{tab}")).await;
    }

    for (page, ready) in [
        ("", "#doc-list"),
        ("tokens", "#token-list"),
        (
            "audit",
            "#audit-body .state, #audit-table, #audit-body .alert",
        ),
    ] {
        b.goto(&server.url(&format!("/ui/#/{page}"))).await;
        b.wait_for(ready).await;
        assert_fits(&b, page).await;
        let name = if page.is_empty() { "documents" } else { page };
        b.screenshot(&format!("narrow-{name}")).await;
    }
    b.close().await;

    // Dark colour scheme: the same pages stay readable.
    let b = browser::session_with(1280, 900, true).await;
    b.goto(&server.url("/ui/#/docs/shop")).await;
    b.wait_for("#token-login").await;
    let dark = b
        .js(
            "return matchMedia('(prefers-color-scheme: dark)').matches;",
            vec![],
        )
        .await;
    assert_eq!(dark, json!(true));
    sign_in(&b, &server).await;
    run_sql(&b, "SELECT * FROM orders", "Grace Hopper").await;
    b.screenshot("dark-console").await;
    b.close().await;
    eprintln!("375 px tour and dark mode: {:?}", started.elapsed());
}

#[tokio::test]
async fn sign_in_through_the_oidc_provider_in_the_browser() {
    let started = Instant::now();
    let op = oidc::provider().await;
    let (issuer, client_id, secret) = (
        op.issuer.clone(),
        op.client_id.clone(),
        op.client_secret.clone(),
    );
    let server = TestServer::start_at(move |c, base| {
        c.public_url = Some(base.to_owned());
        c.oidc_issuer = Some(issuer);
        c.oidc_client_id = Some(client_id);
        c.oidc_client_secret = Some(crate::config::Secret::new(secret));
        c.oidc_scopes = vec!["email".into(), "profile".into(), "groups".into()];
        c.oidc_admin_claim = Some("groups=patchwork-admins".into());
    })
    .await;
    let b = browser::session(1280, 900).await;
    b.goto(&server.url("/ui/#/tokens")).await;
    b.wait_for("#oidc-login").await;
    assert!(
        b.js("return !document.querySelector('#token-login');", vec![])
            .await
            == true,
        "no token form while OIDC is on"
    );
    b.screenshot("sign-in-oidc").await;
    b.click("#oidc-login").await;

    // The provider's own login page (devInteractions).
    b.fill("input[name=login]", "admin-ann").await;
    b.fill("input[name=password]", "x").await;
    b.click("button[type=submit]").await;

    // Back on the dashboard, signed in, on the page the login started from.
    b.wait_text("#whoami", "Admin-ann").await;
    b.wait_for("#admin-badge").await;
    assert_eq!(b.hash().await, "#/tokens");
    b.wait_for("#token-form").await;
    b.close().await;
    eprintln!("OIDC browser sign-in: {:?}", started.elapsed());
}
