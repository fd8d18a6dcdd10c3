//! `ALTER TABLE … ADD COLUMN` with a CHECK constraint, through the query API and the
//! per-document migrations: SQLite checks the new column by running `pragma_quick_check` on the
//! table while the ALTER executes, which the classifier allows for that ALTER only; a user's
//! own `quick_check` stays a maintenance PRAGMA.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::testing::TestServer;

async fn call(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let r = server
        .admin(Method::POST, path)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn exec(server: &TestServer, db: &str, sql: &str) -> (StatusCode, Value) {
    call(
        server,
        &format!("/api/v1/db/{db}/query/exec"),
        json!({"sql": sql}),
    )
    .await
}

#[tokio::test]
async fn add_column_with_a_check_constraint_runs_through_migrations_and_queries() {
    let server = TestServer::start().await;
    let path = "/api/v1/db/todo/migrations";
    let v1 = json!({"version": 1, "name": "tasks", "sql":
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT NOT NULL);
         INSERT INTO tasks (title) VALUES ('seed');"});
    let v2 = json!({"version": 2, "name": "position", "sql":
        "ALTER TABLE tasks ADD COLUMN position INTEGER NOT NULL DEFAULT 0 CHECK (position >= 0);
         ALTER TABLE tasks ADD COLUMN done INTEGER CHECK (done IN (0, 1));"});
    let (s, v) = call(&server, path, json!({"migrations": [v1, v2]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["applied_now"], json!([1, 2]));
    // Re-running applies nothing.
    let (s, v) = call(&server, path, json!({"migrations": [v1, v2]})).await;
    assert_eq!((s, &v["applied_now"]), (StatusCode::OK, &json!([])));
    // The constraint holds.
    let (s, v) = exec(&server, "todo", "UPDATE tasks SET position = -1").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "constraint_violation");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("CHECK"),
        "{v}"
    );

    // Through the query API.
    let (s, v) = exec(
        &server,
        "todo",
        "ALTER TABLE tasks ADD COLUMN due INTEGER CHECK (due > 0)",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = exec(
        &server,
        "todo",
        "ALTER TABLE tasks ADD COLUMN bad INTEGER DEFAULT -5 CHECK (bad > 0)",
    )
    .await;
    assert!(s.is_client_error(), "{s} {v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("CHECK"),
        "{v}"
    );
    let (s, v) = exec(
        &server,
        "todo",
        "SELECT id, title, position, done, due FROM tasks",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rows"], json!([[1, "seed", 0, null, null]]));

    // A user's own quick_check: a maintenance PRAGMA as before (admin as a statement, refused
    // as a table-valued function, which would run it inside another statement).
    let (s, v) = exec(&server, "todo", "PRAGMA quick_check").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = exec(&server, "todo", "SELECT * FROM pragma_quick_check('tasks')").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let reader = server
        .mint(vec![crate::testing::scope(
            "todo",
            crate::auth::Action::QueryRead,
            None,
        )])
        .await;
    let r = reqwest::Client::new()
        .post(server.url("/api/v1/db/todo/query/exec"))
        .bearer_auth(&reader)
        .json(&json!({"sql": "PRAGMA quick_check(tasks)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "needs query.admin");
}
