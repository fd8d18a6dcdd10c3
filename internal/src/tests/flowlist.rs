//! FlowList (`web/apps/flowlist/`): the list document's migrations (seed on a fresh document,
//! re-running them changes nothing, the triggers stamp authors from `patchwork_caller()`, the
//! scopes decide who writes), and end to end in two headless Chromium contexts: the owner signs
//! in through the OIDC provider and creates a list (the seeded sample tasks are there), shares it
//! by link; a second person (a phone) signs in and joins by it; both add, edit, reorder (drag and
//! Alt+arrow), comment, react and tick off at once and see each other's changes and presence
//! live (latencies printed); the owner makes the second a viewer (`PATCH /members`) and their
//! next edit is refused without a reload (the page turns read-only); edits made offline are
//! queued and replayed; the list is taken offline with `patchwork sync` (its client), edited
//! there and merged back. Screenshots: `target/screenshots/flowlist-*.png`.

use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use fantoccini::key::Key;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::Action;
use crate::testing::browser::{self, Browser};
use crate::testing::{TestServer, oidc, scope};

const SCHEMA_JS: &str = include_str!("../../../web/apps/flowlist/schema.js");

/// The migrations as `schema.js` declares them (one copy: the app's own file).
fn migrations() -> Value {
    let body = |name: &str| {
        let open = format!("const {name} = `");
        let start = SCHEMA_JS
            .find(&open)
            .unwrap_or_else(|| panic!("{name} in schema.js"))
            + open.len();
        let len = SCHEMA_JS[start..].find("`;").expect("end of template");
        SCHEMA_JS[start..start + len].trim().to_owned()
    };
    let list = &SCHEMA_JS[SCHEMA_JS
        .find("export const MIGRATIONS = [")
        .expect("MIGRATIONS")..];
    let list = &list[..list.find("];").expect("end of MIGRATIONS")];
    let mut out = Vec::new();
    for line in list.lines().filter(|l| l.contains("version:")) {
        let field = |key: &str, end: char| {
            let from = line.find(key).expect(key) + key.len();
            line[from..].split(end).next().unwrap().trim().to_owned()
        };
        let version: i64 = field("version:", ',').parse().unwrap();
        let name = field("name: \"", '"');
        let var = field("sql: ", '.');
        out.push(json!({"version": version, "name": name, "sql": body(&var)}));
    }
    assert_eq!(out.len(), 3, "schema.js declares three migrations");
    Value::Array(out)
}

/// `exec_as`, asserting the answer's status; the body for further checks.
async fn expect_exec(
    server: &TestServer,
    token: &str,
    db: &str,
    sql: &str,
    args: Value,
    want: StatusCode,
) -> Value {
    let (s, v) = exec_as(server, token, db, sql, args).await;
    assert_eq!(s, want, "{sql}: {v}");
    v
}

async fn exec_as(
    server: &TestServer,
    token: &str,
    db: &str,
    sql: &str,
    args: Value,
) -> (StatusCode, Value) {
    let r = server
        .client
        .post(server.url(&format!("/api/v1/db/{db}/query/exec")))
        .bearer_auth(token)
        .json(&json!({ "sql": sql, "args": args }))
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn admin_rows(server: &TestServer, db: &str, sql: &str) -> Vec<Value> {
    let (s, v) = exec_as(server, &server.admin_token, db, sql, json!([])).await;
    assert_eq!(s, StatusCode::OK, "{sql}: {v}");
    v["rows"].as_array().cloned().unwrap_or_default()
}

/// Every table's rows, and the schema, as one value ("nothing changed" means this is equal).
async fn dump(server: &TestServer, db: &str) -> Value {
    let mut all = serde_json::Map::new();
    for t in [
        "profiles",
        "lists",
        "list_members",
        "tasks",
        "comments",
        "task_reactions",
        "streaks",
    ] {
        all.insert(
            t.into(),
            Value::Array(admin_rows(server, db, &format!("SELECT * FROM {t} ORDER BY 1, 2")).await),
        );
    }
    all.insert(
        "schema".into(),
        Value::Array(
            admin_rows(
                server,
                db,
                "SELECT type, name, sql FROM sqlite_schema ORDER BY name",
            )
            .await,
        ),
    );
    all.insert(
        "schema_version".into(),
        Value::Array(admin_rows(server, db, "PRAGMA schema_version").await),
    );
    Value::Object(all)
}

async fn post_migrations(server: &TestServer, db: &str) -> Value {
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/migrations"))
        .json(&json!({ "migrations": migrations() }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn flowlist_migrations_seed_rerun_and_trust_rules() {
    let server = TestServer::start().await;
    let db = "flowlist-schema";
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/_open"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A fresh document: schema, seed, triggers; the seed is there.
    let v = post_migrations(&server, db).await;
    assert_eq!(v["applied_now"], json!([1, 2, 3]), "{v}");
    assert_eq!(
        admin_rows(&server, db, "SELECT subject, name FROM profiles").await,
        vec![json!(["demo", "Demo Dana"])]
    );
    assert_eq!(
        admin_rows(&server, db, "SELECT name, owner FROM lists").await,
        vec![json!(["Welcome to FlowList", "demo"])]
    );
    assert_eq!(
        admin_rows(
            &server,
            db,
            "SELECT count(*), count(DISTINCT created_by) FROM tasks"
        )
        .await,
        vec![json!([4, 1])]
    );
    assert_eq!(
        admin_rows(&server, db, "SELECT (SELECT count(*) FROM comments), (SELECT count(*) FROM task_reactions), (SELECT role FROM list_members WHERE subject = 'demo')").await,
        vec![json!([1, 1, "owner"])]
    );

    // Re-running the migrations changes nothing: no version applied, every row and the schema
    // as they were (twice, to be sure).
    let before = dump(&server, db).await;
    for _ in 0..2 {
        let v = post_migrations(&server, db).await;
        assert_eq!(v["applied_now"], json!([]), "{v}");
        assert_eq!(v["migrations"].as_array().unwrap().len(), 3);
    }
    assert_eq!(
        dump(&server, db).await,
        before,
        "re-running the migrations changed the document"
    );
    // An edited applied version is refused.
    let mut changed = migrations();
    changed[0]["sql"] = json!(format!("{} -- edited", changed[0]["sql"].as_str().unwrap()));
    let r = server
        .admin(Method::POST, &format!("/api/v1/db/{db}/migrations"))
        .json(&json!({ "migrations": changed }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // The owner claims the sample list (as the app does right after creating the document).
    let owner = server.admin_token.clone();
    for sql in [
        "INSERT INTO profiles (subject, name) VALUES (patchwork_caller(), 'Olive Owner')",
        "UPDATE lists SET name = 'Groceries', owner = patchwork_caller() WHERE id = 1",
        "DELETE FROM list_members WHERE subject = 'demo'",
        "INSERT INTO list_members (subject, role) VALUES (patchwork_caller(), 'owner')",
    ] {
        expect_exec(&server, &owner, db, sql, json!([]), StatusCode::OK).await;
    }
    let owner_subject = admin_rows(&server, db, "SELECT owner FROM lists").await[0][0].clone();
    let caller = admin_rows(&server, db, "SELECT patchwork_caller()").await[0][0].clone();
    assert_eq!(owner_subject, caller, "the owner is patchwork_caller()");
    // Nobody claims it twice.
    let editor = server
        .mint(vec![
            scope(db, Action::QueryRead, None),
            scope(db, Action::QueryWrite, None),
        ])
        .await;
    let viewer = server.mint(vec![scope(db, Action::QueryRead, None)]).await;
    expect_exec(
        &server,
        &editor,
        db,
        "UPDATE lists SET owner = patchwork_caller()",
        json!([]),
        StatusCode::CONFLICT,
    )
    .await;

    // An editor: writes tasks, stamped with their caller id; forgeries refused.
    expect_exec(
        &server,
        &editor,
        db,
        "INSERT INTO profiles (subject, name) VALUES (patchwork_caller(), 'Eddie')",
        json!([]),
        StatusCode::OK,
    )
    .await;
    expect_exec(
        &server,
        &editor,
        db,
        "INSERT INTO list_members (subject, role) VALUES (patchwork_caller(), 'editor')",
        json!([]),
        StatusCode::OK,
    )
    .await;
    expect_exec(
        &server,
        &editor,
        db,
        "INSERT INTO tasks (id, title, position) VALUES ('t1', 'Milk', 10)",
        json!([]),
        StatusCode::OK,
    )
    .await;
    let editor_id =
        admin_rows(&server, db, "SELECT created_by FROM tasks WHERE id = 't1'").await[0][0].clone();
    assert!(
        editor_id.is_string() && editor_id != owner_subject,
        "{editor_id}"
    );
    expect_exec(
        &server,
        &owner,
        db,
        "INSERT INTO comments (id, task_id, body) VALUES ('c1', 't1', 'semi-skimmed?')",
        json!([]),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        admin_rows(&server, db, "SELECT author FROM comments WHERE id = 'c1'").await[0][0],
        owner_subject,
        "a comment's author is stamped"
    );
    for forged in [
        "INSERT INTO tasks (id, title, position, created_by) VALUES ('t2', 'x', 11, 'someone')",
        "INSERT INTO comments (id, task_id, body, author) VALUES ('c2', 't1', 'x', 'someone')",
        "UPDATE tasks SET created_by = 'someone' WHERE id = 't1'",
        "UPDATE lists SET name = 'Mine now'",
        "INSERT INTO task_reactions (task_id, subject, emoji) VALUES ('t1', 'someone', '👍')",
        "INSERT INTO list_members (subject, role) VALUES ('demo', 'editor')",
        "UPDATE list_members SET role = 'viewer'",
        "DELETE FROM comments WHERE id = 'c1'",
        "INSERT INTO tasks (id, title, position, due_date) VALUES ('t3', 'x', 12, '2026-13-45')",
        "INSERT INTO tasks (id, title, position) VALUES ('t4', '   ', 13)",
        "INSERT INTO task_reactions (task_id, subject, emoji) VALUES ('t1', patchwork_caller(), '💩')",
        "INSERT INTO tasks (id, title, position, assignee) VALUES ('t5', 'x', 14, 'nobody-here')",
    ] {
        let (s, v) = exec_as(&server, &editor, db, forged, json!([])).await;
        assert!(
            s == StatusCode::CONFLICT || s == StatusCode::BAD_REQUEST,
            "{forged}: {s} {v}"
        );
    }
    // Their own reaction, a tick (a streak day for them), and deleting a task that carries
    // someone else's comment (the cascade is not stopped by the comment rule).
    for sql in [
        "INSERT INTO task_reactions (task_id, subject, emoji) VALUES ('t1', patchwork_caller(), '👍')",
        "UPDATE tasks SET done = 1 WHERE id = 't1'",
    ] {
        expect_exec(&server, &editor, db, sql, json!([]), StatusCode::OK).await;
    }
    let row = admin_rows(
        &server,
        db,
        "SELECT done_by, done_at IS NOT NULL, updated_by FROM tasks WHERE id = 't1'",
    )
    .await;
    assert_eq!(row[0], json!([editor_id, 1, editor_id]));
    let row = admin_rows(
        &server,
        db,
        "SELECT subject, day = date('now'), completed FROM streaks",
    )
    .await;
    assert_eq!(row, vec![json!([editor_id, 1, 1])]);
    expect_exec(
        &server,
        &editor,
        db,
        "DELETE FROM tasks WHERE id = 't1'",
        json!([]),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        admin_rows(&server, db, "SELECT (SELECT count(*) FROM comments WHERE task_id = 't1'), (SELECT count(*) FROM task_reactions WHERE task_id = 't1')").await,
        vec![json!([0, 0])]
    );

    // A viewer (query.read only): reads, and every write is refused by Patchwork (403).
    let (s, _) = exec_as(
        &server,
        &viewer,
        db,
        "SELECT count(*) FROM tasks",
        json!([]),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for sql in [
        "INSERT INTO tasks (id, title, position) VALUES ('v1', 'nope', 20)",
        "UPDATE tasks SET done = 1",
        "UPDATE lists SET id = id WHERE 0",
    ] {
        expect_exec(&server, &viewer, db, sql, json!([]), StatusCode::FORBIDDEN).await;
    }
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// End to end in Chromium.

const DB: &str = "flowlist-team-launch";

async fn flowlist_server() -> TestServer {
    let op = oidc::provider().await;
    TestServer::start_at(move |c, base| {
        op.configure(c, base);
    })
    .await
}

/// The provider's login form (after a click on a sign-in link), back to FlowList.
async fn provider_login(b: &Browser, login: &str) {
    b.wait_for("input[name=login]").await;
    b.fill("input[name=login]", login).await;
    b.fill("input[name=password]", "x").await;
    b.click("button[type=submit]").await;
    let mut name = login.to_owned();
    name[..1].make_ascii_uppercase();
    b.wait_text("#me-name", &name).await;
}

/// Chromium's network emulation (chromedriver's `network_conditions`): offline or back.
#[derive(Debug)]
struct NetworkConditions(bool);

impl fantoccini::wd::WebDriverCompatibleCommand for NetworkConditions {
    fn endpoint(
        &self,
        base: &reqwest::Url,
        session: Option<&str>,
    ) -> Result<reqwest::Url, url_parse::ParseError> {
        base.join(&format!(
            "session/{}/chromium/network_conditions",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (Method, Option<String>) {
        let body = json!({"network_conditions": {
            "offline": self.0, "latency": 0, "download_throughput": -1, "upload_throughput": -1
        }});
        (Method::POST, Some(body.to_string()))
    }
}
mod url_parse {
    pub type ParseError = <reqwest::Url as std::str::FromStr>::Err;
}

async fn set_offline(b: &Browser, offline: bool) {
    b.client
        .issue_cmd(NetworkConditions(offline))
        .await
        .unwrap_or_else(|e| panic!("network conditions: {e}"));
}

/// The id of the task titled `title` on `b`'s page.
async fn task_id(b: &Browser, title: &str) -> String {
    b.wait_until(&format!(
        "return !!(flowlist.state && flowlist.state.tasks.find((t) => t.title === {}));",
        json!(title)
    ))
    .await;
    b.js(
        &format!(
            "return flowlist.state.tasks.find((t) => t.title === {}).id;",
            json!(title)
        ),
        vec![],
    )
    .await
    .as_str()
    .unwrap()
    .to_owned()
}

/// The open tasks' ids in the order `b` shows them.
async fn shown_order(b: &Browser) -> Vec<String> {
    serde_json::from_value(
        b.js(
            "return [...document.querySelectorAll('#tasks .task')].map((li) => li.dataset.id);",
            vec![],
        )
        .await,
    )
    .unwrap()
}

/// Waits until `watcher` has shown `key` (a `flowlist.seen` key) and returns the time from
/// `actor`'s action with that key (its click or keypress) to then, in ms.
async fn latency(actor: &Browser, watcher: &Browser, key: &str) -> f64 {
    let k = json!(key);
    watcher
        .wait_until(&format!("return {k} in flowlist.seen;"))
        .await;
    let t0 = actor
        .js(
            &format!("const a = flowlist.actions.filter((x) => x.key === {k}).pop(); return a ? a.t0 : null;"),
            vec![],
        )
        .await
        .as_f64()
        .unwrap_or_else(|| panic!("no action {key} on the actor's page"));
    let seen = watcher
        .js(&format!("return flowlist.seen[{k}];"), vec![])
        .await
        .as_f64()
        .unwrap();
    seen - t0
}

/// Clicks `css`, again if the page redrew the element between finding and clicking it (rows
/// are redrawn when someone else's change arrives).
async fn click(b: &Browser, css: &str) {
    for attempt in 0.. {
        let el = b.wait_for(css).await;
        match el.click().await {
            Ok(()) => return,
            Err(e) if attempt < 5 && e.to_string().contains("stale") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("click {css}: {e}"),
        }
    }
}

async fn add_task(b: &Browser, title: &str) {
    b.fill("#new-task", title).await;
    b.keys("#new-task", &Key::Enter.to_string()).await;
}

#[tokio::test]
async fn flowlist_two_people_live_roles_offline_and_sync() {
    let server = flowlist_server().await;
    let mut latencies: Vec<(String, f64)> = Vec::new();

    // Alice signs in and creates a list: a fresh document, with the seed's sample tasks.
    let alice = browser::session(1200, 860).await;
    alice.goto(&server.url("/apps/flowlist/")).await;
    click(&alice, "#signin").await;
    provider_login(&alice, "alice").await;
    alice.wait_text("#my-lists", "No lists yet").await;
    alice.screenshot("flowlist-home-empty").await;
    alice.fill("#list-name", "Team Launch").await;
    click(&alice, "#create-btn").await;
    alice.wait_text("#list-title", "Team Launch").await;
    assert_eq!(alice.hash().await, format!("#/list/{DB}"));
    alice
        .wait_text("#tasks", "Tick me off to start a streak")
        .await;
    alice
        .wait_text("#tasks", "Invite someone with the Share button")
        .await;
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
        .find(|d| d["db_id"] == DB)
        .expect("the list's document exists")
        .clone();
    assert_eq!(entry["owner"], "alice");
    assert_eq!(
        admin_rows(&server, DB, "SELECT name, owner FROM lists").await,
        vec![json!(["Team Launch", "alice"])]
    );
    assert_eq!(
        admin_rows(&server, DB, "SELECT subject, role FROM list_members").await,
        vec![json!(["alice", "owner"])]
    );
    assert_eq!(
        admin_rows(
            &server,
            DB,
            "SELECT count(*) FROM tasks WHERE id LIKE 'seed-%'"
        )
        .await,
        vec![json!([4])]
    );
    // The app posted the migrations from schema.js: re-posting them (as it does on every open)
    // applies nothing and changes nothing.
    let before = dump(&server, DB).await;
    let v = post_migrations(&server, DB).await;
    assert_eq!(v["applied_now"], json!([]), "{v}");
    assert_eq!(dump(&server, DB).await, before);

    // Share by link (editor).
    click(&alice, "#share-btn").await;
    click(&alice, "#invite-create").await;
    alice.wait_for("#invite-link").await;
    let link = alice.value("#invite-link").await;
    assert!(
        link.starts_with(&server.url("/apps/flowlist/#/join/")),
        "{link}"
    );
    alice
        .js("document.querySelector('#sheet .close').click();", vec![])
        .await;

    // Bob, on a phone: opens the link, signs in, comes back to it and joins.
    let bob = browser::session(390, 844).await;
    bob.goto(&link).await;
    bob.wait_text("#join-card", "Team Launch").await;
    click(&bob, "#signin").await;
    provider_login(&bob, "bob").await;
    bob.wait_for("#join-btn").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.screenshot("flowlist-join").await;
    click(&bob, "#join-btn").await;
    bob.wait_text("#list-title", "Team Launch").await;
    bob.wait_text("#tasks", "Tick me off").await;
    bob.js("window.__sameLoad = true;", vec![]).await;

    // Presence: each sees the other, live.
    let t = Instant::now();
    alice.wait_for("#presence [data-member='bob']").await;
    bob.wait_for("#presence [data-member='alice']").await;
    latencies.push((
        "presence (both see both)".into(),
        t.elapsed().as_secs_f64() * 1000.0,
    ));
    assert_eq!(
        admin_rows(
            &server,
            DB,
            "SELECT subject, role FROM list_members ORDER BY joined_at, subject"
        )
        .await,
        vec![json!(["alice", "owner"]), json!(["bob", "editor"])]
    );

    // Both add a task at the same moment; each sees the other's.
    tokio::join!(
        add_task(&alice, "Book the venue"),
        add_task(&bob, "Draft the agenda")
    );
    latencies.push((
        "add (alice → bob)".into(),
        latency(&alice, &bob, "task:Book the venue").await,
    ));
    latencies.push((
        "add (bob → alice)".into(),
        latency(&bob, &alice, "task:Draft the agenda").await,
    ));
    let venue = task_id(&alice, "Book the venue").await;
    let agenda = task_id(&alice, "Draft the agenda").await;
    assert_eq!(
        admin_rows(
            &server,
            DB,
            &format!(
                "SELECT created_by FROM tasks WHERE id IN ('{venue}', '{agenda}') ORDER BY title"
            )
        )
        .await,
        vec![json!(["alice"]), json!(["bob"])],
        "authors stamped from patchwork_caller()"
    );

    // Bob edits Alice's task inline.
    click(&bob, &format!(".task[data-id='{venue}'] .title")).await;
    bob.wait_for(&format!(".task[data-id='{venue}'] .title-input"))
        .await;
    // (typed over the selected title: a WebDriver "clear" would blur the field, which saves it)
    bob.keys(
        &format!(".task[data-id='{venue}'] .title-input"),
        &format!(
            "{}a{}Book the venue (Hall B){}",
            Key::Control,
            Key::Null,
            Key::Enter
        ),
    )
    .await;
    latencies.push((
        "inline edit (bob → alice)".into(),
        latency(&bob, &alice, "task:Book the venue (Hall B)").await,
    ));
    alice
        .wait_text(&format!(".task[data-id='{venue}'] .title"), "Hall B")
        .await;

    // Alice drags the last open task to the top by its handle.
    let order = shown_order(&alice).await;
    let last = order.last().unwrap().clone();
    let handle = alice
        .wait_for(&format!(".task[data-id='{last}'] .handle"))
        .await;
    let first_top = alice
        .js(
            "return document.querySelector('#tasks .task').getBoundingClientRect().top;",
            vec![],
        )
        .await
        .as_f64()
        .unwrap();
    let last_top = alice
        .js(&format!("return document.querySelector(\".task[data-id='{last}']\").getBoundingClientRect().top;"), vec![])
        .await
        .as_f64()
        .unwrap();
    let dy = first_top - last_top - 10.0;
    let mut drag = MouseActions::new("mouse".into())
        .then(PointerAction::MoveToElement {
            element: handle,
            duration: None,
            x: 0.0,
            y: 0.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        });
    for _ in 0..6 {
        drag = drag.then(PointerAction::MoveBy {
            duration: Some(Duration::from_millis(40)),
            x: 0.0,
            y: dy / 6.0,
        });
    }
    drag = drag.then(PointerAction::Up {
        button: MOUSE_BUTTON_LEFT,
    });
    alice.client.perform_actions(drag).await.expect("drag");
    let mut dragged = order.clone();
    dragged.retain(|id| id != &last);
    dragged.insert(0, last.clone());
    let key = format!("order:{}", dragged.join(","));
    latencies.push((
        "drag reorder (alice → bob)".into(),
        latency(&alice, &bob, &key).await,
    ));
    assert_eq!(shown_order(&bob).await, dragged);
    assert_eq!(shown_order(&alice).await, dragged);

    // Bob moves a task up with the keyboard (Alt+↑).
    let moved = dragged[3].clone();
    bob.js(
        &format!("document.querySelector(\".task[data-id='{moved}'] .task-main\").focus();"),
        vec![],
    )
    .await;
    bob.keys(
        &format!(".task[data-id='{moved}'] .task-main"),
        &format!("{}{}", Key::Alt, Key::Up),
    )
    .await;
    let mut keyed = dragged.clone();
    keyed.swap(2, 3);
    let key = format!("order:{}", keyed.join(","));
    latencies.push((
        "keyboard reorder (bob → alice)".into(),
        latency(&bob, &alice, &key).await,
    ));
    assert_eq!(shown_order(&alice).await, keyed);

    // Comments and reactions on the venue task, both ways.
    click(&alice, &format!(".task[data-id='{venue}'] .expand")).await;
    let comment_css = format!(".task[data-id='{venue}'] .comment-input");
    alice.fill(&comment_css, "Hall B holds 80 people").await;
    alice.keys(&comment_css, &Key::Enter.to_string()).await;
    latencies.push((
        "comment (alice → bob)".into(),
        latency(&alice, &bob, "comment:Hall B holds 80 people").await,
    ));
    click(&bob, &format!(".task[data-id='{venue}'] .expand")).await;
    bob.wait_text(
        &format!(".task[data-id='{venue}'] .thread"),
        "Hall B holds 80 people",
    )
    .await;
    click(
        &bob,
        &format!(".task[data-id='{venue}'] .react[data-emoji='🎉']"),
    )
    .await;
    latencies.push((
        "reaction (bob → alice)".into(),
        latency(&bob, &alice, &format!("reaction:{venue}:🎉:bob")).await,
    ));
    alice
        .wait_text(
            &format!(".task[data-id='{venue}'] .react[data-emoji='🎉']"),
            "1",
        )
        .await;
    bob.fill(
        &format!(".task[data-id='{venue}'] .comment-input"),
        "Booked it!",
    )
    .await;
    bob.keys(
        &format!(".task[data-id='{venue}'] .comment-input"),
        &Key::Enter.to_string(),
    )
    .await;
    latencies.push((
        "comment (bob → alice)".into(),
        latency(&bob, &alice, "comment:Booked it!").await,
    ));
    alice
        .wait_text(&format!(".task[data-id='{venue}'] .thread"), "Booked it!")
        .await;
    assert_eq!(
        admin_rows(
            &server,
            DB,
            "SELECT author, author_name FROM comments WHERE body = 'Booked it!'"
        )
        .await,
        vec![json!(["bob", "Bob"])]
    );

    alice.screenshot("flowlist-task").await;
    click(&alice, &format!(".task[data-id='{venue}'] .expand")).await;
    click(&bob, &format!(".task[data-id='{venue}'] .expand")).await;

    // Notes, a due date and an assignee (Alice on the agenda task; Bob sees each).
    click(&alice, &format!(".task[data-id='{agenda}'] .expand")).await;
    let tomorrow = alice
        .js(
            "return new Date(Date.now() + 86400000).toISOString().slice(0, 10);",
            vec![],
        )
        .await
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .js(
            &format!(
                "const li = document.querySelector(\".task[data-id='{agenda}']\");
                 const due = li.querySelector('.due-input');
                 due.value = '{tomorrow}'; due.dispatchEvent(new Event('change', {{ bubbles: true }}));"
            ),
            vec![],
        )
        .await;
    latencies.push((
        "due date (alice → bob)".into(),
        latency(&alice, &bob, &format!("due:{agenda}:{tomorrow}")).await,
    ));
    alice
        .js(
            &format!(
                "const s = document.querySelector(\".task[data-id='{agenda}'] .assignee-input\");
                 s.value = 'bob'; s.dispatchEvent(new Event('change', {{ bubbles: true }}));"
            ),
            vec![],
        )
        .await;
    latencies.push((
        "assignee (alice → bob)".into(),
        latency(&alice, &bob, &format!("assignee:{agenda}:bob")).await,
    ));
    let notes_css = format!(".task[data-id='{agenda}'] .notes");
    alice
        .keys(&notes_css, "Keynote first, then breakouts")
        .await;
    alice.js("document.activeElement.blur();", vec![]).await;
    latencies.push((
        "notes (alice → bob)".into(),
        latency(
            &alice,
            &bob,
            &format!("notes:{agenda}:Keynote first, then breakouts"),
        )
        .await,
    ));
    bob.wait_text(&format!(".task[data-id='{agenda}'] .due"), "Tomorrow")
        .await;
    bob.wait_for(&format!(".task[data-id='{agenda}'] .avatar.assignee"))
        .await;
    click(&alice, &format!(".task[data-id='{agenda}'] .expand")).await;

    // Bob ticks a task off: Alice sees it done, and the streak starts.
    click(&bob, ".task[data-id='seed-1'] .check").await;
    latencies.push((
        "done (bob → alice)".into(),
        latency(&bob, &alice, "done:seed-1:1").await,
    ));
    alice.wait_for("#done-tasks .task[data-id='seed-1']").await;
    click(&alice, "#done-section summary").await;
    alice.wait_text("#done-tasks", "Tick me off").await;
    alice.wait_text("#streak", "1-day streak").await;
    bob.wait_text("#streak", "1-day streak").await;
    alice.js("window.scrollTo(0, 0);", vec![]).await;
    alice.screenshot("flowlist-list").await;
    bob.js("window.scrollTo(0, 0);", vec![]).await;
    bob.screenshot("flowlist-mobile").await;

    // Members panel: Alice makes Bob a viewer (PATCH /members: his grants change at once).
    click(&alice, "#members-btn").await;
    alice
        .wait_for("#member-list [data-subject='bob'] .role-select")
        .await;
    alice.screenshot("flowlist-members").await;
    alice
        .js(
            "const s = document.querySelector(\".role-select[data-subject='bob']\");
             s.value = 'viewer'; s.dispatchEvent(new Event('change', { bubbles: true }));",
            vec![],
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = admin_rows(
            &server,
            DB,
            "SELECT role FROM list_members WHERE subject = 'bob'",
        )
        .await;
        if rows == vec![json!(["viewer"])] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the role change did not land: {}",
            alice.page_text().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let members: Value = server
        .admin(Method::GET, &format!("/api/v1/db/{DB}/members"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bob_scopes = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["subject"] == "bob")
        .expect("bob is a member")["scopes"]
        .to_string();
    assert!(!bob_scopes.contains("query.write"), "{bob_scopes}");
    assert!(bob_scopes.contains("query.read"), "{bob_scopes}");

    // Bob's next edit is refused by Patchwork; his page turns read-only, without a reload.
    add_task(&bob, "Sneaky edit").await;
    bob.wait_text("#readonly-note", "View only").await;
    let refusals = bob.js("return flowlist.refusals;", vec![]).await;
    assert!(
        refusals
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == 403),
        "{refusals}"
    );
    assert_eq!(
        bob.js("return window.__sameLoad === true;", vec![]).await,
        Value::Bool(true),
        "no reload"
    );
    bob.wait_until("return document.getElementById('add-task').hidden && flowlist.readOnly;")
        .await;
    bob.wait_until("return !flowlist.state.tasks.some((t) => t.title === 'Sneaky edit');")
        .await;
    assert_eq!(
        admin_rows(
            &server,
            DB,
            "SELECT count(*) FROM tasks WHERE title = 'Sneaky edit'"
        )
        .await,
        vec![json!([0])]
    );
    // He still follows the list live.
    add_task(&alice, "After the downgrade").await;
    latencies.push((
        "add, to a viewer (alice → bob)".into(),
        latency(&alice, &bob, "task:After the downgrade").await,
    ));
    bob.js("window.scrollTo(0, 0);", vec![]).await;
    bob.wait_until("return document.getElementById('toast').hidden;")
        .await;
    bob.screenshot("flowlist-viewer-readonly").await;

    // Back to editor: his page checks with the server and unlocks, still without a reload.
    alice
        .js(
            "const s = document.querySelector(\".role-select[data-subject='bob']\");
             s.value = 'editor'; s.dispatchEvent(new Event('change', { bubbles: true }));",
            vec![],
        )
        .await;
    bob.wait_until("return !flowlist.readOnly && !document.getElementById('add-task').hidden;")
        .await;
    add_task(&bob, "Editor again").await;
    latencies.push((
        "add after re-promotion (bob → alice)".into(),
        latency(&bob, &alice, "task:Editor again").await,
    ));
    assert_eq!(
        bob.js("return window.__sameLoad === true;", vec![]).await,
        Value::Bool(true)
    );
    alice
        .js("document.querySelector('#sheet .close').click();", vec![])
        .await;

    // Offline: Alice's edits wait in the browser (localStorage) and are replayed on reconnect.
    set_offline(&alice, true).await;
    add_task(&alice, "Offline one").await;
    alice.wait_text("#offline-note", "waiting").await;
    add_task(&alice, "Offline two").await;
    click(&alice, ".task[data-id='seed-2'] .check").await;
    alice
        .wait_text("#offline-note", "Offline — 3 changes waiting")
        .await;
    let queued = alice
        .js(
            &format!(
                "return JSON.parse(localStorage.getItem('flowlist.queue.{DB}') || '[]').length;"
            ),
            vec![],
        )
        .await;
    assert_eq!(queued, json!(3));
    alice.js("window.scrollTo(0, 0);", vec![]).await;
    alice.screenshot("flowlist-offline").await;
    assert_eq!(
        admin_rows(
            &server,
            DB,
            "SELECT count(*) FROM tasks WHERE title LIKE 'Offline %'"
        )
        .await,
        vec![json!([0])]
    );
    let back = Instant::now();
    set_offline(&alice, false).await;
    alice.wait_until("return flowlist.queue === 0;").await;
    bob.wait_text("#tasks", "Offline two").await;
    bob.wait_for("#done-tasks .task[data-id='seed-2']").await;
    latencies.push((
        "offline queue replayed (reconnect → Bob sees it)".into(),
        back.elapsed().as_secs_f64() * 1000.0,
    ));
    assert_eq!(
        admin_rows(
            &server,
            DB,
            "SELECT title, created_by FROM tasks WHERE title LIKE 'Offline %' ORDER BY title"
        )
        .await,
        vec![
            json!(["Offline one", "alice"]),
            json!(["Offline two", "alice"])
        ]
    );
    alice.wait_gone("#offline-note").await;

    // `patchwork sync`: Alice mints a sync token from the members panel; the list goes into a
    // local SQLite file, is edited there and merged back; both pages show the edit live.
    click(&alice, "#members-btn").await;
    click(&alice, "#sync-token-btn").await;
    let cmd = alice.text("#sync-cmd").await;
    let token = cmd
        .split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .expect("a token in the command")
        .to_owned();
    alice
        .js("document.querySelector('#sheet .close').click();", vec![])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team-launch.sqlite3");
    let opts =
        || crate::sync::client::SyncOptions::new(server.url(""), token.clone(), DB, file.clone());
    crate::sync::client::run(opts(), |_| {})
        .await
        .expect("first sync (snapshot)");
    {
        let conn = rusqlite::Connection::open(&file).unwrap();
        // What `sqlite3 FILE -cmd '.dbconfig enable_trigger off'` does: the triggers call
        // patchwork_caller(), which only the server has (it stamps the rows when they arrive).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
            false,
        )
        .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
            .unwrap();
        assert!(n >= 8, "the local copy has the list ({n} tasks)");
        conn.execute(
            "INSERT INTO tasks (id, title, position) VALUES ('cli-1', 'Planned on the train', 100)",
            [],
        )
        .unwrap();
        conn.execute(
            "UPDATE tasks SET notes = 'from the train' WHERE id = ?1",
            [&venue],
        )
        .unwrap();
    }
    let pushed = Instant::now();
    crate::sync::client::run(opts(), |_| {})
        .await
        .expect("second sync (push)");
    alice.wait_text("#tasks", "Planned on the train").await;
    bob.wait_text("#tasks", "Planned on the train").await;
    latencies.push((
        "patchwork sync push → both pages".into(),
        pushed.elapsed().as_secs_f64() * 1000.0,
    ));
    assert_eq!(
        admin_rows(
            &server,
            DB,
            &format!("SELECT notes FROM tasks WHERE id = '{venue}'")
        )
        .await,
        vec![json!(["from the train"])]
    );
    // A push is no person's request: the triggers see no caller and stamp nothing.
    assert_eq!(
        admin_rows(
            &server,
            DB,
            "SELECT created_by FROM tasks WHERE id = 'cli-1'"
        )
        .await,
        vec![json!([null])]
    );
    // And back: a change made in the browser reaches the local file on the next sync.
    add_task(&alice, "Made after the sync").await;
    alice.wait_until("return flowlist.queue === 0;").await;
    crate::sync::client::run(opts(), |_| {})
        .await
        .expect("third sync (pull)");
    let conn = rusqlite::Connection::open(&file).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM tasks WHERE title = 'Made after the sync'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);

    // Home lists the list for both (Bob's as a viewer).
    alice.goto(&server.url("/apps/flowlist/#/")).await;
    alice.wait_text("#my-lists", "Team Launch").await;
    alice.screenshot("flowlist-home").await;
    bob.goto(&server.url("/apps/flowlist/#/")).await;
    bob.wait_text("#my-lists", "Editor").await;

    eprintln!("FlowList live latencies (ms, action in one browser → shown in the other):");
    for (what, ms) in &latencies {
        eprintln!("  {what:<52} {ms:>7.0}");
    }
    for (what, ms) in &latencies {
        if !what.contains("sync") && !what.contains("offline") && !what.contains("presence") {
            assert!(*ms < 1000.0, "{what}: {ms} ms (must be within a second)");
        }
    }
    bob.close().await;
    alice.close().await;
    server.stop().await.unwrap();
}
