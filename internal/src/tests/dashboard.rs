//! The dashboard (`/ui/`) in a real headless Chromium (testing::browser), against the real OIDC
//! provider (testing::oidc): an admin signs in through the provider's own login form, creates a
//! document, runs SQL, watches a query that another client's writes update, publishes and sees
//! the tail, creates a token, uses it with the real `curl`, revokes it and sees `curl` refused,
//! reads the audit log and signs out. Also: a person who is not an admin sees and mints tokens
//! only for their own documents; the admin-token sign-in (OIDC off); every page at 375 px and in
//! the dark scheme. Each step saves a screenshot to `target/screenshots/`.

use std::time::Instant;

use fantoccini::key::Key;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::testing::TestServer;
use crate::testing::browser::{self, Browser};
use crate::testing::oidc;

/// A server that signs people in through the test provider; `admin*` logins are admins (their
/// `groups` claim holds `patchwork-admins`). Token login is off.
async fn oidc_server() -> TestServer {
    let op = oidc::provider().await;
    TestServer::start_at(move |c, base| {
        op.configure(c, base);
        c.oidc_scopes = vec!["email".into(), "profile".into(), "groups".into()];
        c.oidc_admin_claim = Some("groups=patchwork-admins".into());
    })
    .await
}

/// From the dashboard's sign-in page: the provider button, then the provider's own login form
/// (oidc-provider's devInteractions page) filled in as a person would, back to the dashboard.
async fn sign_in_with_provider(b: &Browser, server: &TestServer, login: &str) {
    b.wait_for("#oidc-login").await;
    b.click("#oidc-login").await;
    b.wait_for("input[name=login]").await;
    let at = b.client.current_url().await.unwrap();
    assert_eq!(
        at.origin().ascii_serialization(),
        oidc::provider().await.issuer,
        "the login form is the provider's"
    );
    b.fill("input[name=login]", login).await;
    b.fill("input[name=password]", "x").await;
    b.click("button[type=submit]").await;
    // The provider's name claim is the login, capitalised.
    let mut name = login.to_owned();
    name[..1].make_ascii_uppercase();
    b.wait_text("#whoami", &name).await;
    b.wait_for("#signout").await;
    let back = b.client.current_url().await.unwrap();
    assert_eq!(
        back.origin().ascii_serialization(),
        server.url(""),
        "back on Patchwork"
    );
}

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

/// `GET url` with the real `curl` binary and `Authorization: Bearer {token}`: the HTTP status.
async fn curl_status(url: &str, token: &str) -> u16 {
    let args = [
        "-s".to_owned(),
        "--noproxy".to_owned(),
        "*".to_owned(),
        "--max-time".to_owned(),
        "10".to_owned(),
        "-o".to_owned(),
        "/dev/null".to_owned(),
        "-w".to_owned(),
        "%{http_code}".to_owned(),
        "-H".to_owned(),
        format!("Authorization: Bearer {token}"),
        url.to_owned(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(&args).output()
    })
    .await
    .unwrap()
    .expect("run curl (apt-get install -y curl)");
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "curl {url}: {} {code} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    code.parse()
        .unwrap_or_else(|_| panic!("curl {url}: not a status {code:?}"))
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

/// The rows of a table as cell texts.
async fn table_rows(b: &Browser, css: &str) -> Vec<Vec<String>> {
    let v = b
        .js(
            "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]\
             .map(tr => [...tr.cells].map(td => td.innerText.trim()));",
            vec![json!(css)],
        )
        .await;
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn dashboard_end_to_end() {
    let started = Instant::now();
    let server = oidc_server().await;
    let b = browser::session(1280, 900).await;

    // `/` leads to the dashboard, which asks to sign in with the provider (no token form).
    b.goto(&server.url("/")).await;
    b.wait_for("#oidc-login").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/ui/");
    assert_eq!(
        b.js("return !document.querySelector('#token-login');", vec![])
            .await,
        json!(true),
        "no token form while OIDC is on"
    );
    b.screenshot("sign-in-oidc").await;
    sign_in_with_provider(&b, &server, "admin-ann").await;
    // The provider's groups claim makes Ann an admin; she lands where she started.
    b.wait_for("#admin-badge").await;
    assert_eq!(b.hash().await, "#/");
    b.wait_for("nav#nav a[href='#/audit']").await;

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
    let shown = b.text("#new-token-curl").await;
    let status_url = server.url("/api/v1/db/notes/_status");
    assert!(
        shown.starts_with("curl ") && shown.contains(&format!("Bearer {token}")),
        "{shown}"
    );
    // The URL the page's curl command names.
    let url = shown.split_whitespace().last().unwrap().to_owned();
    assert_eq!(url, status_url, "{shown}");
    b.screenshot("tokens-created").await;

    // It works with curl.
    assert_eq!(curl_status(&url, &token).await, 200, "before revocation");
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

    // Revoke it in the page (two clicks: ask, confirm); curl is refused now.
    b.click(&format!("{row} button.revoke")).await;
    b.wait_text(&format!("{row} button.revoke"), "Confirm")
        .await;
    b.click(&format!("{row} button.revoke")).await;
    b.wait_gone(&row).await;
    assert_eq!(curl_status(&url, &token).await, 401, "after revocation");

    // The audit log shows Ann's sign-in, her document and the token's creation and revocation.
    b.click("nav#nav a[href='#/audit']").await;
    b.wait_text("#audit-table", "token.revoke").await;
    let rows = table_rows(&b, "#audit-table").await;
    let has = |action: &str, target: &str| {
        rows.iter()
            .any(|r| r.len() >= 4 && r[1] == "oidc:admin-ann" && r[2] == action && r[3] == target)
    };
    assert!(has("login", ""), "{rows:?}");
    assert!(has("document.create", "notes"), "{rows:?}");
    assert!(has("token.create", &id), "{rows:?}");
    assert!(has("token.revoke", &id), "{rows:?}");
    assert_eq!(rows[0][2], "token.revoke", "newest first: {rows:?}");
    b.screenshot("audit").await;

    // Sign out: back to the sign-in page (the provider button), and the session is gone.
    b.click("#signout").await;
    b.wait_for("#oidc-login").await;
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
    let r = server
        .admin(Method::GET, "/api/v1/admin/audit?limit=1")
        .send()
        .await
        .unwrap();
    let newest: Value = r.json().await.unwrap();
    assert_eq!(newest["events"][0]["action"], "logout", "{newest}");
    assert_eq!(newest["events"][0]["actor"], "oidc:admin-ann", "{newest}");

    b.close().await;
    eprintln!("dashboard end to end: {:?}", started.elapsed());
}

#[tokio::test]
async fn token_sign_in_creates_a_document_and_signs_out() {
    let started = Instant::now();
    let server = TestServer::start().await;
    let b = browser::session(1280, 900).await;

    // Without OIDC the dashboard asks for an admin token.
    b.goto(&server.url("/")).await;
    b.wait_for("#token-login").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/ui/");
    // A wrong token is refused in place, with the API's reason.
    b.fill("#token-input", "pw_0000000000000000_nope").await;
    b.click("#token-submit").await;
    b.wait_text("#token-login .alert", "401").await;
    b.screenshot("sign-in").await;
    sign_in(&b, &server).await;
    assert!(!b.text("#whoami").await.is_empty());

    b.wait_text("#doc-list-body", "No documents yet").await;
    b.fill("#new-doc-id", "scratch").await;
    b.click("#new-doc-submit").await;
    b.wait_text("#doc-title", "scratch").await;
    assert_eq!(b.hash().await, "#/docs/scratch");
    run_sql(&b, "CREATE TABLE t (v)", "0 rows affected").await;
    let r = server
        .admin(Method::GET, "/api/v1/db/scratch/_status")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

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
    eprintln!("token sign-in: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_person_works_only_with_their_own_documents() {
    let started = Instant::now();
    let server = oidc_server().await;
    // A document made with the admin token: not Bob's.
    let r = server
        .admin(Method::POST, "/api/v1/db/ops/_open")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Bob follows a link to the Tokens page, signs in there and is brought back to it.
    let b = browser::session(1280, 900).await;
    b.goto(&server.url("/ui/#/tokens")).await;
    sign_in_with_provider(&b, &server, "bob-person").await;
    assert_eq!(b.hash().await, "#/tokens");
    b.wait_text("#token-list-body", "No tokens").await;
    // No admin badge, no audit log, no admin tokens for him.
    for css in ["#admin-badge", "nav#nav a[href='#/audit']", "#token-admin"] {
        assert!(
            b.client
                .find_all(fantoccini::Locator::Css(css))
                .await
                .unwrap()
                .is_empty(),
            "{css} is shown to a person who is not an admin"
        );
    }

    // Documents: the admin's is not listed; he creates his own from the page.
    b.click("nav#nav a[href='#/']").await;
    b.wait_text("#doc-list-body", "No documents yet").await;
    b.fill("#new-doc-id", "bobs-notes").await;
    b.click("#new-doc-submit").await;
    b.wait_text("#doc-title", "bobs-notes").await;
    b.wait_text("#doc-facts", "size").await;
    run_sql(&b, "CREATE TABLE n (v)", "0 rows affected").await;
    b.click("nav#nav a[href='#/']").await;
    b.wait_text("#doc-list", "bobs-notes").await;
    let rows = table_rows(&b, "#doc-list").await;
    assert_eq!(rows.len(), 1, "only his own document: {rows:?}");
    assert_eq!(rows[0][0], "bobs-notes", "{rows:?}");
    assert_eq!(rows[0][4], "bob-person", "owner: {rows:?}");
    b.wait_text("#doc-count", "1 document").await;
    b.screenshot("person-documents").await;
    // The admin's document does not open for him.
    b.goto(&server.url("/ui/#/docs/ops/status")).await;
    b.wait_text("#doc-facts", "Status unavailable").await;

    // Tokens: he mints one for his document, and it works with curl.
    b.goto(&server.url("/ui/#/tokens")).await;
    b.wait_for("#token-form").await;
    b.fill("#token-label", "bob-reader").await;
    b.fill("#scope-db", "bobs-notes").await;
    b.click("#act-query-read").await;
    b.click("#token-create").await;
    b.wait_for("#new-token-value").await;
    let token = b.value("#new-token-value").await;
    let url = server.url("/api/v1/db/bobs-notes/_status");
    assert_eq!(curl_status(&url, &token).await, 200);
    assert_eq!(
        curl_status(&server.url("/api/v1/db/ops/_status"), &token).await,
        403,
        "the token reaches only his document"
    );
    let id = token.split('_').nth(1).unwrap().to_owned();
    b.wait_text(
        &format!("#token-list tr[data-id='{id}']"),
        "bobs-notes · query.read",
    )
    .await;
    b.click("#new-token-done").await;
    b.wait_gone("#new-token-value").await;

    // One for another document is refused, and the page says why.
    b.fill("#token-label", "sneaky").await;
    b.fill("#scope-db", "ops").await;
    b.click("#act-query-read").await;
    b.click("#token-create").await;
    let error = b.wait_text("#token-form-result .alert", "403").await;
    assert!(error.contains("Could not create the token"), "{error}");
    assert!(
        error.contains("only for documents you own") && error.contains("ops"),
        "{error}"
    );
    assert!(
        b.wait_for("#token-form-result .alert")
            .await
            .is_displayed()
            .await
            .unwrap()
    );
    b.js(
        "document.querySelector('#token-form-result').scrollIntoView({block: 'center'});",
        vec![],
    )
    .await;
    b.screenshot("person-token-refused").await;
    let rows = table_rows(&b, "#token-list").await;
    assert_eq!(rows.len(), 1, "nothing minted: {rows:?}");
    let all: Value = server
        .admin(Method::GET, "/api/v1/admin/tokens")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !all["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["label"] == "sneaky"),
        "{all}"
    );
    b.close().await;
    eprintln!(
        "a person's own documents and tokens: {:?}",
        started.elapsed()
    );
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
        ("audit", "#audit-table"),
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

/// An invite link opened in the browser: sign in with the provider (the link survives the
/// round trip), see what it grants, join; the person is then a member of the document.
#[tokio::test]
async fn an_invite_link_signs_in_and_joins_the_document() {
    let server = oidc_server().await;
    let r = server
        .admin(Method::POST, "/api/v1/db/team-notes/invites")
        .json(&json!({"scopes": ["query.read", "pub.subscribe"], "ttl_secs": 3600, "room": "standup"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let link: Value = r.json().await.unwrap();
    let b = browser::session(1280, 900).await;
    b.goto(link["url"].as_str().unwrap()).await;
    sign_in_with_provider(&b, &server, "erin").await;
    b.wait_text("#invite", "team-notes").await;
    b.wait_text("#invite", "standup").await;
    b.screenshot("invite-page").await;
    assert_eq!(b.value("#invite-name").await, "Erin");
    b.click("#invite-join").await;
    b.wait_text("#invite-result", "member of").await;
    b.screenshot("invite-joined").await;
    let members: Value = server
        .admin(Method::GET, "/api/v1/db/team-notes/members")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(members["members"][0]["subject"], "erin");
    b.close().await;
}
