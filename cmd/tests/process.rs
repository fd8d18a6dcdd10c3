//! What needs the real `patchwork` process: the bootstrap token, signals, the offline CLI, log
//! format, refusing a newer schema.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_patchwork");

// Headless Chromium over WebDriver: the library's own browser harness, compiled into this
// binary too (it depends only on std, fantoccini, reqwest, serde_json, tempfile and tokio).
#[path = "../../internal/src/testing/browser.rs"]
#[allow(dead_code, reason = "the library's tests use the rest of the harness")]
mod browser;
#[path = "../../internal/src/testing/felt.rs"]
mod felt_console;

struct Server {
    child: Child,
    base: String,
    stdout: Vec<String>,
    stderr_rx: mpsc::Receiver<String>,
}

/// Starts `patchwork serve` on a free port and waits for it to listen.
fn start(data_dir: &Path, envs: &[(&str, &str)]) -> Server {
    start_at(data_dir, "127.0.0.1:0", envs)
}

/// As [`start`], on `listen` (a restart on the same port, for clients that reconnect).
#[expect(
    clippy::zombie_processes,
    reason = "the child is owned by `Server`, whose Drop kills and waits for it"
)]
fn start_at(data_dir: &Path, listen: &str, envs: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .env_remove("PATCHWORK_ADMIN_TOKEN")
        .env_remove("PATCHWORK_LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn patchwork");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (err_tx, stderr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = line_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("server did not start; stdout so far: {lines:?}"));
        if let Some(addr) = line.strip_prefix("listening on ") {
            let base = addr.to_owned();
            lines.push(line);
            return Server {
                child,
                base,
                stdout: lines,
                stderr_rx,
            };
        }
        lines.push(line);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        signal(&self.child, "TERM");
        let status = wait_timeout(&mut self.child, Duration::from_secs(30));
        let stderr: Vec<String> = self.stderr_rx.try_iter().collect();
        (status, stderr)
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} failed");
}

fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port free when asked (for a listener whose address must be known before it starts, or
/// kept across a restart).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn token_lines(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.starts_with("pw_")).collect()
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn bootstrap_token_is_printed_once_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let tokens = token_lines(&server.stdout);
    assert_eq!(tokens.len(), 1, "{:?}", server.stdout);
    let token = tokens[0].clone();
    assert!(
        server.stdout.iter().any(|l| l.contains("data_dir")),
        "config printed"
    );
    let r = client()
        .get(format!("{}/api/v1/dbs", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        !stderr.iter().any(|l| l.contains(&token)),
        "the token reached the log"
    );

    let server = start(dir.path(), &[]);
    assert!(
        token_lines(&server.stdout).is_empty(),
        "printed again: {:?}",
        server.stdout
    );
    let r = client()
        .get(format!("{}/api/v1/dbs", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the bootstrap token survives a restart");
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{status:?}: {stderr:?}");
}

#[tokio::test]
async fn admin_token_from_the_environment_json_logs_and_redacted_config() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "env-admin-token-0123456789";
    let server = start(
        dir.path(),
        &[
            ("PATCHWORK_ADMIN_TOKEN", secret),
            ("PATCHWORK_LOG_FORMAT", "json"),
        ],
    );
    assert!(token_lines(&server.stdout).is_empty());
    assert!(
        !server.stdout.iter().any(|l| l.contains(secret)),
        "config shows the secret"
    );
    assert!(server.stdout.iter().any(|l| l.contains("[redacted]")));
    let r = client()
        .get(format!("{}/api/v1/dbs", server.base))
        .header("Authorization", secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, stderr) = server.terminate();
    assert!(status.success());
    assert!(!stderr.is_empty());
    for line in &stderr {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
        assert!(!line.contains(secret));
    }
}

#[tokio::test]
async fn offline_token_cli_create_list_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["token", "create", "--admin", "--label", "ops", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap().to_owned();
    assert!(token.starts_with("pw_"), "{stdout}");

    // A running server accepts it, and sees a CLI revocation within about a second. The data
    // dir already has an admin, so the first `serve` mints no bootstrap token.
    let server = start(dir.path(), &[]);
    assert!(
        token_lines(&server.stdout).is_empty(),
        "a bootstrap token was minted beside an existing admin: {:?}",
        server.stdout
    );
    let ok = client()
        .get(format!("{}/api/v1/dbs", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let list = Command::new(BIN)
        .args(["token", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let listing = String::from_utf8(list.stdout).unwrap();
    assert!(listing.contains("ops"), "{listing}");
    assert!(!listing.contains(&token), "list shows a secret");
    let id = token.split('_').nth(1).unwrap();
    let revoke = Command::new(BIN)
        .args(["token", "revoke", "--data-dir"])
        .arg(dir.path())
        .arg(id)
        .output()
        .unwrap();
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client()
            .get(format!("{}/api/v1/dbs", server.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.status() == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "revocation not seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.terminate().0.success());

    // Validation: a non-admin token needs a scope; labels are bounded.
    let bad = Command::new(BIN)
        .args(["token", "create", "--label", "x", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let long = "l".repeat(121);
    let bad = Command::new(BIN)
        .args(["token", "create", "--admin", "--label", &long, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn sigterm_with_requests_in_flight_exits_zero_and_keeps_acknowledged_work() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let token = token_lines(&server.stdout)[0].clone();
    let base = server.base.clone();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let base = base.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut acked = Vec::new();
            for i in 0..100_000 {
                let id = format!("doc-{w}-{i}");
                match client
                    .post(format!("{base}/api/v1/db/{id}/_open"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => acked.push(id),
                    _ => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(!acked.is_empty());
    for id in &acked {
        let path = dir.path().join("documents").join(format!("{id}.sqlite3"));
        assert!(path.exists(), "{id} was acknowledged but is missing");
        // Closed cleanly: the WAL was checkpointed and truncated (the empty file is kept).
        let wal = dir
            .path()
            .join("documents")
            .join(format!("{id}.sqlite3-wal"));
        assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0, "{id}");
    }
}

#[test]
fn a_service_database_from_a_newer_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["token", "create", "--admin", "--label", "x", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    mark_service_db_from_the_future(dir.path());
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("newer than this binary"), "{stderr}");
}

/// Marks `service.db` as migrated by a future version.
fn mark_service_db_from_the_future(dir: &Path) {
    let conn = rusqlite::Connection::open(dir.join("service.db")).unwrap();
    conn.execute(
        "INSERT INTO _patchwork_migrations (version, name) VALUES (9999, 'future')",
        [],
    )
    .unwrap();
}

#[test]
fn healthcheck_passes_on_a_live_server_and_fails_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let addr = server.base.trim_start_matches("http://").to_owned();
    let check = |addr: &str, path: &str| {
        Command::new(BIN)
            .args([
                "healthcheck",
                "--addr",
                addr,
                "--path",
                path,
                "--timeout-secs",
                "3",
            ])
            .output()
            .unwrap()
    };
    assert!(check(&addr, "/healthz").status.success());
    assert!(check(&addr, "/readyz").status.success());
    // Not a 200: an unknown path, and a port nobody listens on.
    let missing = check(&addr, "/no-such-thing");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    drop(server);
    let dead = check(&addr, "/healthz");
    assert_eq!(dead.status.code(), Some(1));
}

#[test]
fn version_prints() {
    let out = Command::new(BIN).arg("version").output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("patchwork ")
    );
}

#[tokio::test]
async fn audit_log_names_tokens_but_never_their_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let admin = token_lines(&server.stdout)[0].clone();
    let base = server.base.clone();
    let created: serde_json::Value = client()
        .post(format!("{base}/api/v1/admin/tokens"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"label": "audited-bot", "scopes": [{"db_id": "a", "action": "query.read"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let used = client()
        .get(format!("{base}/api/v1/db/a/_status?access_token={token}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(used.status(), 200);
    let revoked = client()
        .delete(format!("{base}/api/v1/admin/tokens/{id}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let refused = client()
        .get(format!("{base}/api/v1/db/a/_status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let (status, stderr) = server.terminate();
    assert!(status.success());
    let log = stderr.join("\n");
    assert!(
        log.contains("token created") && log.contains("audited-bot"),
        "{log}"
    );
    assert!(log.contains("token revoked"), "{log}");
    assert!(log.contains("auth failure") && log.contains(&id), "{log}");
    assert!(!log.contains(&token), "the plaintext token reached the log");
    assert!(!log.contains(&admin), "the admin token reached the log");
}

/// 16 concurrent publishers, `kill -9` mid-run, restart: every acknowledged message is there
/// with its payload intact. Three rounds on the same data dir. The smallest checkpoint
/// threshold makes the WAL start over many times a second, so the kill lands among background
/// checkpoints and the actor's finishing ones.
#[tokio::test]
async fn acknowledged_publishes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "durability-admin-token-0123456789";
    let env = [
        ("PATCHWORK_ADMIN_TOKEN", admin),
        ("PATCHWORK_WAL_AUTOCHECKPOINT_PAGES", "100"),
    ];
    let mut acked_all: Vec<(i64, String)> = Vec::new();
    for round in 0..3 {
        let server = start(dir.path(), &env);
        let base = server.base.clone();
        let mut tasks = Vec::new();
        for p in 0..16 {
            let base = base.clone();
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut acked = Vec::new();
                for i in 0..100_000 {
                    let text = format!("round {round} publisher {p} message {i}");
                    let sent = client
                        .post(format!("{base}/api/v1/db/durable/messages"))
                        .bearer_auth(admin)
                        .json(&serde_json::json!({"topic": format!("p/{p}"), "payload_text": text}))
                        .send()
                        .await;
                    let Ok(r) = sent else { break };
                    if r.status() != 201 {
                        break;
                    }
                    let Ok(v) = r.json::<serde_json::Value>().await else {
                        break;
                    };
                    acked.push((v["id"].as_i64().unwrap(), text));
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        let metrics = client()
            .get(format!("{base}/metrics"))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut server = server;
        signal(&server.child, "KILL");
        let _ = server.child.wait();
        for t in tasks {
            acked_all.extend(t.await.unwrap());
        }
        assert!(
            metrics.contains("patchwork_wal_checkpoints_total{reason=\"background\"}"),
            "no background checkpoint ran before the kill: {metrics}"
        );
    }
    assert!(
        acked_all.len() > 100,
        "only {} acknowledged",
        acked_all.len()
    );
    let server = start(dir.path(), &env);
    let mut stored = std::collections::HashMap::new();
    let mut since = 0i64;
    loop {
        // Read everything back through the query API.
        let v: serde_json::Value = client()
            .post(format!("{}/api/v1/db/durable/query/exec", server.base))
            .bearer_auth(admin)
            .json(&serde_json::json!({
                "sql": "SELECT id, CAST(payload AS TEXT) FROM _patchwork_messages WHERE id > ? ORDER BY id LIMIT 5000",
                "args": [since]
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rows = v["rows"].as_array().unwrap().clone();
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let id = row[0].as_i64().unwrap();
            since = id;
            stored.insert(id, row[1].as_str().unwrap().to_owned());
        }
    }
    for (id, text) in &acked_all {
        assert_eq!(
            stored.get(id),
            Some(text),
            "acknowledged message {id} lost or changed"
        );
    }
    assert!(server.terminate().0.success());
}

#[tokio::test]
async fn backup_while_serving_then_wipe_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data, &[]);
    let token = token_lines(&server.stdout)[0].clone();
    let c = client();
    let exec = |db: &'static str, sql: String| {
        c.post(format!("{}/api/v1/db/{db}/query/exec", server.base))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
    };
    for db in ["alpha", "beta"] {
        assert_eq!(
            exec(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)".into())
                .await
                .unwrap()
                .status(),
            200
        );
        for i in 0..20 {
            let r = exec(db, format!("INSERT INTO t (v) VALUES ('{db}-{i}')"))
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    // A scoped token, to check tokens survive the round trip.
    let scoped: serde_json::Value = c
        .post(format!("{}/api/v1/admin/tokens", server.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"label": "reader", "scopes": [{"db_id": "alpha", "action": "query.read"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reader = scoped["token"].as_str().unwrap().to_owned();

    // Online backup, with a writer still going.
    let writing = {
        let (c, base, token) = (c.clone(), server.base.clone(), token.clone());
        tokio::spawn(async move {
            for i in 0..50 {
                let _ = c
                    .post(format!("{base}/api/v1/db/alpha/query/exec"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"sql": format!("INSERT INTO t (v) VALUES ('late-{i}')")}))
                    .send()
                    .await;
            }
        })
    };
    let out = dir.path().join("backup");
    let backup = Command::new(BIN)
        .args(["backup", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    let said = String::from_utf8_lossy(&backup.stdout).into_owned();
    assert!(said.contains("backed up 2 documents"), "{said}");
    writing.await.unwrap();
    // A backup into a non-empty directory is refused.
    let again = Command::new(BIN)
        .args(["backup", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let (status, _) = server.terminate();
    assert!(status.success());

    // Every backed-up file is a sound database.
    for f in [
        "service.db",
        "documents/alpha.sqlite3",
        "documents/beta.sqlite3",
    ] {
        let conn = rusqlite::Connection::open(out.join(f)).unwrap();
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "{f}");
    }
    let backed_alpha: i64 = rusqlite::Connection::open(out.join("documents/alpha.sqlite3"))
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!((20..=70).contains(&backed_alpha), "{backed_alpha}");

    // Wipe, then restore; restoring over data needs --force.
    std::fs::remove_dir_all(&data).unwrap();
    let restore = |force: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["restore", "--from"])
            .arg(&out)
            .arg("--data-dir")
            .arg(&data);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let done = restore(false);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        !restore(false).status.success(),
        "a second restore over data is refused"
    );

    let server = start(&data, &[]);
    assert!(
        token_lines(&server.stdout).is_empty(),
        "no new bootstrap token after a restore"
    );
    let count = |db: &'static str, who: String| {
        let c = c.clone();
        let base = server.base.clone();
        async move {
            let r = c
                .post(format!("{base}/api/v1/db/{db}/query/exec"))
                .bearer_auth(who)
                .json(&serde_json::json!({"sql": "SELECT count(*) FROM t"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()["rows"][0][0]
                .as_i64()
                .unwrap()
        }
    };
    assert_eq!(count("alpha", token.clone()).await, backed_alpha);
    assert_eq!(count("beta", token.clone()).await, 20);
    // The same tokens work: the admin and the scoped reader.
    assert_eq!(count("alpha", reader.clone()).await, backed_alpha);
    drop(server);
}

#[tokio::test]
async fn sync_cli_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), &[]);
    let token = token_lines(&server.stdout)[0].clone();
    let c = client();
    let exec = |sql: &str| {
        c.post(format!("{}/api/v1/db/notes/query/exec", server.base))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
    };
    assert_eq!(
        exec("CREATE TABLE n (id INTEGER PRIMARY KEY, v TEXT)")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        exec("INSERT INTO n VALUES (1, 'from the server')")
            .await
            .unwrap()
            .status(),
        200
    );
    let file = dir.path().join("notes.sqlite3");
    let sync = || {
        Command::new(BIN)
            .args(["sync", "--url", &server.base, "--db", "notes", "--file"])
            .arg(&file)
            .env("PATCHWORK_TOKEN", &token)
            .output()
            .unwrap()
    };
    let out = sync();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("in step at version"));
    let local = rusqlite::Connection::open(&file).unwrap();
    let v: String = local
        .query_row("SELECT v FROM n WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, "from the server");
    local
        .execute("INSERT INTO n VALUES (2, 'from the file')", [])
        .unwrap();
    drop(local);
    let out = sync();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = exec("SELECT v FROM n WHERE id = 2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["rows"][0][0], "from the file");
    // A wrong token is a clear error, not a panic.
    let bad = Command::new(BIN)
        .args([
            "sync",
            "--url",
            &server.base,
            "--db",
            "notes",
            "--token",
            "pw_wrong_wrong",
            "--file",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    drop(server);
}

#[tokio::test]
async fn an_acknowledged_blob_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data, &[]);
    let token = token_lines(&server.stdout)[0].clone();
    let c = client();
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let init: serde_json::Value = c
        .post(format!("{}/api/v1/db/files/blobs/init-upload", server.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"hash": hash, "size": bytes.len()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let put = c
        .put(init["upload_url"].as_str().unwrap())
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let done = c
        .post(format!(
            "{}/api/v1/db/files/blobs/complete-upload",
            server.base
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({"blob_id": init["blob_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let keep = c
        .post(format!("{}/api/v1/db/files/blobs/{hash}/keep", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(keep.status(), 200);
    // Acknowledged: now the process dies without any shutdown.
    signal(&server.child, "KILL");
    let _ = wait_timeout(&mut server.child, Duration::from_secs(10));
    drop(server);
    let server = start(&data, &[]);
    let got = c
        .get(format!(
            "{}/api/v1/db/files/blobs/object/{hash}",
            server.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), bytes.as_slice());
}

/// A QoS 1 MQTT publisher with 100 in flight, `kill -9` mid-run, restart: every message the
/// server acknowledged (PUBACK) is stored. Two rounds on the same data dir.
#[tokio::test]
async fn mqtt_acknowledged_publishes_survive_kill_9() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let dir = tempfile::tempdir().unwrap();
    let admin = "mqtt-durability-admin-token-0123456789";
    let mut acked_all: Vec<String> = Vec::new();
    for round in 0..2 {
        // A free port for the MQTT listener (the HTTP one is printed; this one is chosen).
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut server = start(
            dir.path(),
            &[
                ("PATCHWORK_ADMIN_TOKEN", admin),
                ("PATCHWORK_MQTT_LISTEN", listen.as_str()),
            ],
        );
        let mut o = MqttOptions::new(format!("killer-{round}"), "127.0.0.1", port);
        o.set_credentials("u", admin);
        o.set_inflight(100);
        let (client, mut events) = AsyncClient::new(o, 200);
        let publisher = tokio::spawn(async move {
            for i in 0..1_000_000 {
                let text = format!("round {round} message {i}");
                if client
                    .publish("db/mq/t", QoS::AtLeastOnce, false, text)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        // The k-th outgoing PUBLISH is the k-th request; a PUBACK names its packet id.
        let watcher = tokio::spawn(async move {
            let mut sent = 0usize;
            let mut by_pkid = std::collections::HashMap::new();
            let mut acked = Vec::new();
            while let Ok(event) = events.poll().await {
                match event {
                    Event::Outgoing(Outgoing::Publish(pkid)) => {
                        by_pkid.insert(pkid, format!("round {round} message {sent}"));
                        sent += 1;
                    }
                    Event::Incoming(Packet::PubAck(ack)) => {
                        if let Some(text) = by_pkid.remove(&ack.pkid) {
                            acked.push(text);
                        }
                    }
                    _ => {}
                }
            }
            acked
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        signal(&server.child, "KILL");
        let _ = server.child.wait();
        let acked = watcher.await.unwrap();
        // Each round must publish: the MQTT listener is bound before the server prints its
        // address, so the client's first connect is never refused.
        assert!(
            acked.len() > 100,
            "round {round}: only {} acknowledged",
            acked.len()
        );
        acked_all.extend(acked);
        publisher.abort();
    }
    let server = start(dir.path(), &[("PATCHWORK_ADMIN_TOKEN", admin)]);
    let mut stored = std::collections::HashSet::new();
    let mut since = 0i64;
    loop {
        let v: serde_json::Value = client()
            .post(format!("{}/api/v1/db/mq/query/exec", server.base))
            .bearer_auth(admin)
            .json(&serde_json::json!({
                "sql": "SELECT id, CAST(payload AS TEXT) FROM _patchwork_messages WHERE id > ? ORDER BY id LIMIT 5000",
                "args": [since]
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rows = v["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("rows: {v}"))
            .clone();
        if rows.is_empty() {
            break;
        }
        for row in rows {
            since = row[0].as_i64().unwrap();
            stored.insert(row[1].as_str().unwrap().to_owned());
        }
    }
    for text in &acked_all {
        assert!(stored.contains(text), "acknowledged {text:?} lost");
    }
    assert!(server.terminate().0.success());
}

// ---------- Felt (web/apps/felt): a tournament document through the real process ----------

/// Felt's schema module, read at build time: the migration, the server-time expression and the
/// state query are taken from it, not copied.
const FELT_SCHEMA_JS: &str = include_str!("../../web/apps/felt/schema.js");

fn js_between<'a>(src: &'a str, start: &str, end: &str) -> &'a str {
    let from = src
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not in schema.js"))
        + start.len();
    let len = src[from..]
        .find(end)
        .unwrap_or_else(|| panic!("no {end:?} after {start:?}"));
    &src[from..from + len]
}

/// A schema.js block with its `${NAME}` interpolations filled in from the module's own
/// `const NAME = "…";` / `` const NAME = `…`; `` definitions (recursively).
fn js_resolve(block: &str) -> String {
    let mut out = block.to_owned();
    while let Some(at) = out.find("${") {
        let end = at + out[at..].find('}').expect("closing brace");
        let name = out[at + 2..end].to_owned();
        let quoted = format!("const {name} = \"");
        let value = if FELT_SCHEMA_JS.contains(&quoted) {
            js_between(FELT_SCHEMA_JS, &quoted, "\";").to_owned()
        } else {
            js_resolve(js_between(
                FELT_SCHEMA_JS,
                &format!("const {name} = `"),
                "`;",
            ))
        };
        out.replace_range(at..=end, &value);
    }
    out
}

/// `(MIGRATIONS as the POST /migrations body's list, NOW_MS, STATE_SQL)` from schema.js.
fn felt_sql() -> (serde_json::Value, String, String) {
    let now = js_between(FELT_SCHEMA_JS, "export const NOW_MS = \"", "\";").to_owned();
    let v = |n: u32| js_resolve(js_between(FELT_SCHEMA_JS, &format!("const V{n} = `"), "`;"));
    let (v1, v2, v3) = (v(1), v(2), v(3));
    let state = js_resolve(js_between(
        FELT_SCHEMA_JS,
        "export const STATE_SQL = `",
        "`;",
    ));
    assert!(v1.contains("CREATE TABLE audit") && !state.contains("${"));
    assert!(v2.contains("players_rebuy") && !v2.contains("${"));
    assert!(v3.contains("players_addon") && !v3.contains("${"));
    let migrations = serde_json::json!([
        {"version": 1, "name": "felt tournament", "sql": v1},
        {"version": 2, "name": "felt rebuys", "sql": v2},
        {"version": 3, "name": "felt add-ons, late registration, structure editing, chip counts, undo bust", "sql": v3},
    ]);
    (migrations, now, state)
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A TD acting on one tournament document as `app.js` does: each action is one `query/batch`
/// of its state statements plus one `audit` row.
#[derive(Clone)]
struct Td {
    client: reqwest::Client,
    base: String,
    token: String,
    db: String,
    now: String,
}

/// The audit's `args`: a JSON value, or a SELECT building it from the state just written.
enum AuditArgs {
    Json(serde_json::Value),
    Sql(&'static str, Vec<serde_json::Value>),
}

const LEVEL_MS: i64 = 60_000;
const CLOCK_AUDIT: &str = "SELECT json_object('level', level, 'running', running, 'started_at_ms', started_at_ms, 'remaining_ms', remaining_ms) FROM clock";

impl Td {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let r = self
            .client
            .request(
                method,
                format!("{}/api/v1/db/{}/{path}", self.base, self.db),
            )
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(format!("{status}: {v}"))
        }
    }

    /// `batch` of app.js: the audit seq once the server acknowledged the transaction.
    async fn batch(
        &self,
        action: &str,
        args: AuditArgs,
        statements: Vec<(String, Vec<serde_json::Value>)>,
    ) -> Result<i64, String> {
        let now = &self.now;
        let audit = match args {
            AuditArgs::Sql(sql, a) => serde_json::json!({
                "sql": format!("INSERT INTO audit (at_ms, actor, action, args) SELECT {now}, patchwork_caller(), ?, ({sql})"),
                "args": std::iter::once(serde_json::json!(action)).chain(a).collect::<Vec<_>>(),
            }),
            AuditArgs::Json(v) => serde_json::json!({
                "sql": format!("INSERT INTO audit (at_ms, actor, action, args) VALUES ({now}, patchwork_caller(), ?, ?)"),
                "args": [action, v.to_string()],
            }),
        };
        let mut stmts: Vec<serde_json::Value> = statements
            .into_iter()
            .map(|(sql, args)| serde_json::json!({"sql": sql, "args": args}))
            .collect();
        stmts.push(audit);
        let r = self
            .call(
                reqwest::Method::POST,
                "query/batch",
                serde_json::json!({"statements": stmts}),
            )
            .await?;
        r["results"]
            .as_array()
            .and_then(|a| a.last())
            .and_then(|l| l["last_insert_id"].as_i64())
            .ok_or(format!("no seq in {r}"))
    }

    /// `createTournament`: the document, synchronous=FULL, the schema, one `create` action.
    async fn create(&self, migrations: &serde_json::Value) {
        let opened = self
            .call(reqwest::Method::POST, "_open", serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(opened["created"], true, "{opened}");
        self.call(
            reqwest::Method::PUT,
            "_settings",
            serde_json::json!({"synchronous": "full"}),
        )
        .await
        .unwrap();
        let s = self
            .call(reqwest::Method::GET, "_settings", serde_json::Value::Null)
            .await;
        let s = s.unwrap();
        assert_eq!(s["effective"], "full", "{s}");
        self.call(
            reqwest::Method::POST,
            "migrations",
            serde_json::json!({"migrations": migrations}),
        )
        .await
        .unwrap();
        let slug = self.db.trim_start_matches("felt-").to_owned();
        let levels: Vec<serde_json::Value> = [[25, 50, 0], [50, 100, 0], [75, 150, 0]]
            .iter()
            .enumerate()
            .map(|(i, l)| serde_json::json!({"level": i + 1, "sb": l[0], "bb": l[1], "ante": l[2], "duration_ms": LEVEL_MS, "is_break": 0}))
            .collect();
        let t = serde_json::json!({"slug": slug, "name": "Kill Nine Open", "buy_in": 100, "rebuy_until_level": 2, "starting_stack": 20000, "seats_per_table": 9, "payouts": [50, 30, 20], "levels": levels});
        let mut stmts = vec![(
            "INSERT INTO tournament (id, slug, name, buy_in, rebuy_until_level, starting_stack, seats_per_table, payouts) VALUES (1, ?, ?, ?, ?, ?, ?, ?)".to_owned(),
            vec![t["slug"].clone(), t["name"].clone(), t["buy_in"].clone(), t["rebuy_until_level"].clone(), t["starting_stack"].clone(), t["seats_per_table"].clone(), serde_json::json!(t["payouts"].to_string())],
        )];
        for l in &levels {
            stmts.push((
                "INSERT INTO levels (level, small_blind, big_blind, ante, duration_ms, is_break) VALUES (?, ?, ?, ?, ?, ?)".to_owned(),
                vec![l["level"].clone(), l["sb"].clone(), l["bb"].clone(), l["ante"].clone(), l["duration_ms"].clone(), l["is_break"].clone()],
            ));
        }
        stmts.push((
            "INSERT INTO clock (id, level, running, remaining_ms) VALUES (1, 1, 0, ?)".to_owned(),
            vec![serde_json::json!(LEVEL_MS)],
        ));
        self.batch("create", AuditArgs::Json(t), stmts)
            .await
            .unwrap();
    }

    /// The console's "Start clock" on level `lv`.
    async fn start_clock(&self, lv: i64) -> Result<i64, String> {
        let sql = format!(
            "UPDATE clock SET running = 1, started_at_ms = {}, level = ?1, remaining_ms = CASE WHEN level = ?1 THEN remaining_ms ELSE (SELECT duration_ms FROM levels WHERE level = ?1) END",
            self.now
        );
        self.batch(
            "clock",
            AuditArgs::Sql(CLOCK_AUDIT, vec![]),
            vec![(sql, vec![serde_json::json!(lv)])],
        )
        .await
    }

    async fn add_player(&self, name: &str) -> Result<i64, String> {
        self.batch(
            "add_player",
            AuditArgs::Sql("SELECT json_object('id', id, 'name', name, 'table', table_no, 'seat', seat) FROM players WHERE id = (SELECT max(id) FROM players)", vec![]),
            vec![(format!("INSERT INTO players (name, registered_at_ms) VALUES (?, {})", self.now), vec![serde_json::json!(name)])],
        )
        .await
    }

    async fn bust(&self, id: i64) -> Result<i64, String> {
        self.batch(
            "bust",
            AuditArgs::Sql("SELECT json_object('player', id, 'place', place, 'at_ms', busted_at_ms, 'table', busted_table, 'seat', busted_seat) FROM players WHERE id = ?", vec![serde_json::json!(id)]),
            vec![(
                format!("UPDATE players SET status = 'busted', busted_table = table_no, busted_seat = seat, table_no = NULL, seat = NULL, chips = NULL, busted_at_ms = {}, place = (SELECT count(*) FROM players WHERE status != 'busted') WHERE id = ? AND status != 'busted'", self.now),
                vec![serde_json::json!(id)],
            )],
        )
        .await
    }

    /// app.js `rebuy` of a busted player: back in play at `seat` (`(table, seat)`, or unseated)
    /// with a starting stack.
    async fn rebuy(&self, id: i64, seat: Option<(i64, i64)>) -> Result<i64, String> {
        let (t, s) = seat.map_or(
            (serde_json::Value::Null, serde_json::Value::Null),
            |(t, s)| (t.into(), s.into()),
        );
        self.batch(
            "rebuy",
            AuditArgs::Sql("SELECT json_object('player', id, 'rebuys', rebuys, 'table', table_no, 'seat', seat, 'chips', chips) FROM players WHERE id = ?", vec![serde_json::json!(id)]),
            vec![(
                "UPDATE players SET rebuys = rebuys + 1, status = CASE WHEN ?2 IS NULL THEN 'registered' ELSE 'seated' END, table_no = ?2, seat = ?3, place = NULL, busted_at_ms = NULL, busted_table = NULL, busted_seat = NULL, chips = (SELECT starting_stack FROM tournament) WHERE id = ?1".to_owned(),
                vec![serde_json::json!(id), t, s],
            )],
        )
        .await
    }

    /// app.js `countChips`: the TD records a player's stack.
    async fn chips(&self, id: i64, chips: i64) -> Result<i64, String> {
        self.batch(
            "chips",
            AuditArgs::Sql(
                "SELECT json_object('player', id, 'chips', chips) FROM players WHERE id = ?",
                vec![serde_json::json!(id)],
            ),
            vec![(
                "UPDATE players SET chips = ? WHERE id = ?".to_owned(),
                vec![serde_json::json!(chips), serde_json::json!(id)],
            )],
        )
        .await
    }

    async fn rows(&self, sql: &str) -> Vec<serde_json::Value> {
        let v = self
            .call(
                reqwest::Method::POST,
                "query/exec",
                serde_json::json!({"sql": sql, "options": {"max_rows": 100000}}),
            )
            .await
            .unwrap();
        v["rows"].as_array().unwrap().clone()
    }

    async fn state(&self, state_sql: &str) -> serde_json::Value {
        let rows = self.rows(state_sql).await;
        serde_json::from_str(rows[0][0].as_str().unwrap()).unwrap()
    }

    /// The whole audit, oldest first: `(seq, action, args)`.
    async fn audit(&self) -> Vec<(i64, String, serde_json::Value)> {
        self.rows("SELECT seq, action, args FROM audit ORDER BY seq")
            .await
            .iter()
            .map(|r| {
                (
                    r[0].as_i64().unwrap(),
                    r[1].as_str().unwrap().to_owned(),
                    serde_json::from_str(r[2].as_str().unwrap()).unwrap(),
                )
            })
            .collect()
    }
}

/// felt.js `replay`, ported: the tournament rebuilt from its audit alone.
fn felt_replay(audit: &[(i64, String, serde_json::Value)]) -> serde_json::Value {
    use serde_json::{Value, json};
    let (mut tournament, mut levels, mut clock) = (Value::Null, json!([]), Value::Null);
    let mut tables: Vec<Value> = Vec::new();
    let mut players: Vec<Value> = Vec::new();
    let or = |v: &Value, d: Value| if v.is_null() { d } else { v.clone() };
    fn seat(players: &mut [Value], id: &Value, t: &Value, s: &Value) {
        let p = players
            .iter_mut()
            .find(|p| p["id"] == *id)
            .expect("seated player exists");
        p["status"] = json!("seated");
        p["table_no"] = t.clone();
        p["seat"] = s.clone();
    }
    fn set(p: &mut Value, kv: Vec<(&str, Value)>) {
        for (k, v) in kv {
            p[k] = v;
        }
    }
    /// A busted player back in play: the players busted after them move up a place.
    fn unbust(players: &mut [Value], id: &Value) {
        let from = players
            .iter()
            .find(|p| p["id"] == *id)
            .expect("player exists")["place"]
            .as_i64()
            .expect("busted");
        for q in players
            .iter_mut()
            .filter(|q| q["status"] == "busted" && q["place"].as_i64() < Some(from))
        {
            q["place"] = json!(q["place"].as_i64().unwrap() + 1);
        }
    }
    fn back(a: &Value) -> Vec<(&'static str, Value)> {
        let status = if a["table"].is_null() {
            "registered"
        } else {
            "seated"
        };
        vec![
            ("status", json!(status)),
            ("table_no", a["table"].clone()),
            ("seat", a["seat"].clone()),
            ("place", Value::Null),
            ("busted_at_ms", Value::Null),
            ("busted_table", Value::Null),
            ("busted_seat", Value::Null),
        ]
    }
    let player = |players: &mut Vec<Value>, id: &Value| -> usize {
        players
            .iter()
            .position(|p| p["id"] == *id)
            .expect("player exists")
    };
    for (_, action, a) in audit {
        match action.as_str() {
            "create" => {
                tournament = json!({"slug": a["slug"], "name": a["name"], "buy_in": a["buy_in"], "rebuy_until_level": or(&a["rebuy_until_level"], json!(0)), "starting_stack": a["starting_stack"], "seats_per_table": a["seats_per_table"], "payouts": a["payouts"],
                    "late_reg_until_level": a["late_reg_until_level"], "addon_chips": or(&a["addon_chips"], json!(0)), "addon_cost": or(&a["addon_cost"], json!(0)), "addon_until_level": or(&a["addon_until_level"], json!(0))});
                levels = a["levels"].clone();
                clock = json!({"level": a["levels"][0]["level"], "running": 0, "started_at_ms": null, "remaining_ms": a["levels"][0]["duration_ms"]});
            }
            "clock" => {
                clock = json!({"level": a["level"], "running": a["running"], "started_at_ms": a["started_at_ms"], "remaining_ms": a["remaining_ms"]});
            }
            "add_player" => {
                players.push(json!({"id": a["id"], "name": a["name"], "status": "registered", "table_no": null, "seat": null, "place": null, "busted_at_ms": null, "rebuys": 0, "addons": 0, "chips": null, "undos": 0, "busted_table": null, "busted_seat": null}));
                if !a["table"].is_null() {
                    seat(&mut players, &a["id"], &a["table"], &a["seat"]);
                }
            }
            "bust" => {
                let i = player(&mut players, &a["player"]);
                set(
                    &mut players[i],
                    vec![
                        ("status", json!("busted")),
                        ("table_no", Value::Null),
                        ("seat", Value::Null),
                        ("place", a["place"].clone()),
                        ("busted_at_ms", a["at_ms"].clone()),
                        ("chips", Value::Null),
                        ("busted_table", a["table"].clone()),
                        ("busted_seat", a["seat"].clone()),
                    ],
                );
            }
            "seat_draw" => {
                for p in players.iter_mut().filter(|p| p["status"] == "seated") {
                    p["status"] = json!("registered");
                    p["table_no"] = Value::Null;
                    p["seat"] = Value::Null;
                }
                tables = a["tables"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| json!({"table_no": t["table_no"], "seats": t["seats"], "open": 1}))
                    .collect();
                for m in a["seats"].as_array().unwrap() {
                    seat(&mut players, &m[0], &m[1], &m[2]);
                }
            }
            "break_table" => {
                for m in a["moves"].as_array().unwrap() {
                    seat(&mut players, &m[0], &m[1], &m[2]);
                }
                for t in tables.iter_mut().filter(|t| t["table_no"] == a["table"]) {
                    t["open"] = json!(0);
                }
            }
            "move" => seat(&mut players, &a["player"], &a["table"], &a["seat"]),
            "rebuy" => {
                let i = player(&mut players, &a["player"]);
                if players[i]["status"] == "busted" {
                    unbust(&mut players, &a["player"]);
                    set(&mut players[i], back(a));
                }
                set(
                    &mut players[i],
                    vec![
                        ("rebuys", a["rebuys"].clone()),
                        ("chips", a["chips"].clone()),
                    ],
                );
            }
            "undo_bust" => {
                let i = player(&mut players, &a["player"]);
                unbust(&mut players, &a["player"]);
                set(&mut players[i], back(a));
                players[i]["undos"] = a["undos"].clone();
            }
            "addon" => {
                let i = player(&mut players, &a["player"]);
                set(
                    &mut players[i],
                    vec![
                        ("addons", a["addons"].clone()),
                        ("chips", a["chips"].clone()),
                    ],
                );
            }
            "chips" => {
                let i = player(&mut players, &a["player"]);
                players[i]["chips"] = a["chips"].clone();
            }
            "settings" => {
                for (k, v) in a.as_object().unwrap() {
                    tournament[k] = v.clone();
                }
            }
            "structure" => {
                levels = a["levels"].clone();
                for k in [
                    "rebuy_until_level",
                    "late_reg_until_level",
                    "addon_until_level",
                ] {
                    tournament[k] = a[k].clone();
                }
            }
            other => panic!("unknown audit action {other}"),
        }
    }
    players.sort_by_key(|p| p["id"].as_i64());
    tables.sort_by_key(|t| t["table_no"].as_i64());
    json!({"tournament": tournament, "levels": levels, "clock": clock, "tables": tables, "players": players})
}

/// felt.js `comparable`: the parts of the live state the replay rebuilds.
fn felt_comparable(s: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({"tournament": s["tournament"], "levels": s["levels"], "clock": s["clock"], "tables": s["tables"], "players": s["players"]})
}

/// felt.js `clockAt` (level index, time left) at server time `now`.
fn felt_clock_at(s: &serde_json::Value, now: i64) -> (usize, i64) {
    let levels = s["levels"].as_array().unwrap();
    let c = &s["clock"];
    let mut index = levels
        .iter()
        .position(|l| l["level"] == c["level"])
        .unwrap_or(0);
    let mut remaining = c["remaining_ms"].as_i64().unwrap();
    if c["running"] == 1 {
        remaining -= now - c["started_at_ms"].as_i64().unwrap();
        while remaining <= 0 && index + 1 < levels.len() {
            index += 1;
            remaining += levels[index]["duration_ms"].as_i64().unwrap();
        }
    }
    (index, remaining.max(0))
}

/// One acknowledged TD action: its audit seq, what it was, and its subject (player name or id).
type Acked = (i64, &'static str, String);

/// A TD's burst: players registered, every third action busts the oldest player still in.
async fn felt_burst(td: Td, tag: String) -> Vec<Acked> {
    let mut acked = Vec::new();
    let mut alive: std::collections::VecDeque<i64> = std::collections::VecDeque::new();
    for i in 0..100_000 {
        let r = if i % 3 == 2 && !alive.is_empty() {
            let id = alive.pop_front().unwrap();
            td.bust(id).await.map(|seq| (seq, "bust", id.to_string()))
        } else {
            let name = format!("{tag}-{i}");
            let r = td
                .add_player(&name)
                .await
                .map(|seq| (seq, "add_player", name));
            if let Ok((_, _, name)) = &r {
                // Its id, for a later bust (the server may be gone by now).
                let q = serde_json::json!({"sql": "SELECT id FROM players WHERE name = ?", "args": [name]});
                if let Ok(v) = td.call(reqwest::Method::POST, "query/exec", q).await {
                    alive.extend(v["rows"][0][0].as_i64());
                }
            }
            r
        };
        match r {
            Ok(a) => acked.push(a),
            Err(_) => break,
        }
    }
    acked
}

/// After a restart: every acknowledged action is in the audit and in the state, and the audit
/// replays to the state.
async fn felt_check(td: &Td, state_sql: &str, acked: &[Acked]) -> serde_json::Value {
    let audit = td.audit().await;
    let state = td.state(state_sql).await;
    let by_seq: std::collections::HashMap<i64, &(i64, String, serde_json::Value)> =
        audit.iter().map(|a| (a.0, a)).collect();
    let players = state["players"].as_array().unwrap();
    for (seq, action, subject) in acked {
        let (_, got, args) = by_seq
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged {action} #{seq} ({subject}) lost"));
        assert_eq!(got, action, "audit #{seq}");
        match *action {
            "add_player" => {
                assert_eq!(args["name"], subject.as_str(), "audit #{seq}");
                assert!(
                    players
                        .iter()
                        .any(|p| p["id"] == args["id"] && p["name"] == subject.as_str()),
                    "player {subject} missing"
                );
            }
            "bust" => {
                assert_eq!(args["player"].to_string(), *subject, "audit #{seq}");
                let p = players.iter().find(|p| p["id"] == args["player"]).unwrap();
                assert_eq!(p["status"], "busted", "{p}");
                assert_eq!(p["place"], args["place"], "{p}");
            }
            _ => {}
        }
    }
    assert_eq!(
        felt_replay(&audit),
        felt_comparable(&state),
        "the audit replays to the state"
    );
    state
}

fn felt_td(base: &str, token: &str, db: &str, now: &str) -> Td {
    Td {
        client: client(),
        base: base.to_owned(),
        token: token.to_owned(),
        db: db.to_owned(),
        now: now.to_owned(),
    }
}

/// Felt's guarantees across `kill -9` mid-level: a tournament made as the app makes it
/// (synchronous=FULL), the clock started, TD batches (players added and busted) acknowledged
/// while the process is killed. After the restart every acknowledged action is in the audit and
/// the state, the clock neither lost nor gained time against the wall clock, and the audit
/// replays to the state.
#[tokio::test]
async fn felt_kill_9_mid_level_keeps_clock_and_acknowledged_actions() {
    let (migrations, now, state_sql) = felt_sql();
    let dir = tempfile::tempdir().unwrap();
    let admin = "felt-kill-admin-token-0123456789";
    let env = [("PATCHWORK_ADMIN_TOKEN", admin)];
    let mut server = start(dir.path(), &env);
    let td = felt_td(&server.base, admin, "felt-kill-nine-open", &now);
    td.create(&migrations).await;
    let mut acked: Vec<Acked> = Vec::new();
    for name in ["Ada", "Ben", "Cleo"] {
        acked.push((
            td.add_player(name).await.unwrap(),
            "add_player",
            name.to_owned(),
        ));
    }
    // A rebuy (app.js `rebuy`): Cleo then Ben bust, Ben buys back in (no tables yet: unseated,
    // a starting stack); a second rebuy while he is in play above the starting stack is refused
    // by the schema.
    td.bust(3).await.unwrap();
    td.bust(2).await.unwrap();
    acked.push((td.rebuy(2, None).await.unwrap(), "rebuy", "2".to_owned()));
    acked.push((td.chips(2, 25_000).await.unwrap(), "chips", "2".to_owned()));
    let refused = td.rebuy(2, None).await.unwrap_err();
    assert!(
        refused.contains("rebuys only at or below the starting stack"),
        "{refused}"
    );
    let s = td.state(&state_sql).await;
    let ben = &s["players"][1];
    assert_eq!(
        (&ben["status"], &ben["rebuys"], &ben["place"]),
        (
            &serde_json::json!("registered"),
            &serde_json::json!(1),
            &serde_json::Value::Null
        ),
        "{ben}"
    );
    assert_eq!(s["players"][2]["place"], 3, "{}", s["players"][2]);
    // Start the clock; the server stamps its own time, which lies within the request's span.
    let before = wall_ms();
    let seq = td.start_clock(1).await.unwrap();
    let after = wall_ms();
    acked.push((seq, "clock", String::new()));
    let started = td.state(&state_sql).await["clock"]["started_at_ms"]
        .as_i64()
        .unwrap();
    assert!(
        before - 5 <= started && started <= after + 5,
        "{before} {started} {after}"
    );
    // Bursts of TD actions, killed mid-level.
    let bursts: Vec<_> = (0..3)
        .map(|b| tokio::spawn(felt_burst(td.clone(), format!("k{b}"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    signal(&server.child, "KILL");
    let _ = server.child.wait();
    drop(server);
    for b in bursts {
        acked.extend(b.await.unwrap());
    }
    assert!(acked.len() > 20, "only {} acknowledged", acked.len());
    // Down for a while: the clock keeps running on the wall clock.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let server = start(dir.path(), &env);
    let td = felt_td(&server.base, admin, "felt-kill-nine-open", &now);
    let s = td
        .call(reqwest::Method::GET, "_settings", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(
        s["effective"], "full",
        "still synchronous=FULL after the restart: {s}"
    );
    let state = felt_check(&td, &state_sql, &acked).await;
    let (t0, state_now) = (wall_ms(), td.state(&state_sql).await);
    let t1 = wall_ms();
    assert_eq!(state_now["clock"]["running"], 1, "{}", state_now["clock"]);
    assert_eq!(
        state_now["clock"]["started_at_ms"],
        state["clock"]["started_at_ms"]
    );
    let (index, remaining) = felt_clock_at(&state_now, state_now["now_ms"].as_i64().unwrap());
    assert_eq!(index, 0, "still mid-level 1");
    // Expected from the wall clock alone: the level's time minus the time since the start request.
    let (lo, hi) = (LEVEL_MS - (t1 - before), LEVEL_MS - (t0 - after));
    let tolerance = 50;
    assert!(
        lo - tolerance <= remaining && remaining <= hi + tolerance,
        "clock drifted: {remaining} ms left, expected {lo}..={hi} ms"
    );
    eprintln!(
        "felt kill -9: {} acknowledged actions intact; {remaining} ms left of level 1 (expected {lo}..={hi})",
        acked.len()
    );
    assert!(server.terminate().0.success());
}

/// SIGTERM during bursts of Felt TD batches: a clean exit, and after the restart every
/// acknowledged action is there and the audit replays to the state.
#[tokio::test]
async fn felt_sigterm_during_td_batches_loses_no_acknowledged_action() {
    let (migrations, now, state_sql) = felt_sql();
    let dir = tempfile::tempdir().unwrap();
    let admin = "felt-term-admin-token-0123456789";
    let env = [("PATCHWORK_ADMIN_TOKEN", admin)];
    let server = start(dir.path(), &env);
    let td = felt_td(&server.base, admin, "felt-sigterm-cup", &now);
    td.create(&migrations).await;
    let mut acked: Vec<Acked> = vec![(td.start_clock(1).await.unwrap(), "clock", String::new())];
    let bursts: Vec<_> = (0..4)
        .map(|b| tokio::spawn(felt_burst(td.clone(), format!("t{b}"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, _) = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    for b in bursts {
        acked.extend(b.await.unwrap());
    }
    assert!(acked.len() > 20, "only {} acknowledged", acked.len());
    let server = start(dir.path(), &env);
    let td = felt_td(&server.base, admin, "felt-sigterm-cup", &now);
    felt_check(&td, &state_sql, &acked).await;
    // Past the rebuy period (through level 2) the schema refuses a rebuy.
    td.batch(
        "clock",
        AuditArgs::Sql(CLOCK_AUDIT, vec![]),
        vec![(
            "UPDATE clock SET level = 3, running = 0, started_at_ms = NULL, remaining_ms = ?"
                .to_owned(),
            vec![serde_json::json!(LEVEL_MS)],
        )],
    )
    .await
    .unwrap();
    let id = td
        .rows("SELECT id FROM players WHERE status != 'busted' LIMIT 1")
        .await[0][0]
        .as_i64()
        .unwrap();
    td.bust(id).await.unwrap();
    let refused = td.rebuy(id, None).await.unwrap_err();
    assert!(refused.contains("the rebuy period is over"), "{refused}");
    felt_check(&td, &state_sql, &acked).await;
    assert!(server.terminate().0.success());
}

/// What a page shows of the tournament, to compare pages with each other.
async fn felt_shown(b: &browser::Browser) -> serde_json::Value {
    b.js(
        "const s = felt.state; return JSON.stringify([s.audit_seq, s.players, s.tables, s.clock, s.levels, s.tournament]);",
        vec![],
    )
    .await
}

/// Seconds left on a page's clock (`#time`, `m:ss` or `h:mm:ss`).
async fn felt_time_left(b: &browser::Browser) -> i64 {
    let t = b.text("#time").await;
    t.trim()
        .split(':')
        .try_fold(0i64, |acc, part| part.parse::<i64>().map(|n| acc * 60 + n))
        .unwrap_or_else(|_| panic!("not a time: {t:?}"))
}

/// Felt in real Chromium against the real binary, `kill -9` mid-level: the TD (signed in by
/// token login, OIDC being off) makes a tournament, two screens (a big clock and a phone) join
/// by its links; players, a seat draw, the clock started, busts, the last one clicked as the
/// process is killed. While it is down every page says "Reconnecting…" and the clock keeps
/// ticking. After the restart on the same address every page is live again on its own, shows
/// the same state, holds every action the TD's console had acknowledged, the clock's time left
/// matches the wall clock since the start, the console's audit replay equals the state, and
/// the next TD action reaches the screens.
#[tokio::test]
async fn felt_in_chromium_survives_kill_9_mid_level() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "felt-chromium-kill-admin-0123456789";
    let env = [("PATCHWORK_ADMIN_TOKEN", admin)];
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = start_at(dir.path(), &listen, &env);
    let base = server.base.clone();

    let td = browser::session(1360, 900).await;
    td.goto(&format!("{base}/apps/felt/")).await;
    let status = td
        .js(
            "return fetch('/auth/token-login', {method: 'POST', headers: {'Content-Type': 'application/json'}, \
             body: JSON.stringify({token: arguments[0]})}).then((r) => r.status);",
            vec![serde_json::json!(admin)],
        )
        .await;
    assert_eq!(status, 204, "token login");
    td.goto(&format!("{base}/apps/felt/")).await;
    td.wait_for("#create-form").await;
    td.fill("#new-name", "Kill Cup").await;
    // Ten-minute levels: the kill and the restart fall well inside level 1.
    td.js(
        "document.getElementById('new-seats').value = '4'; document.getElementById('new-minutes').value = '10';",
        vec![],
    )
    .await;
    td.click("#create-btn").await;
    td.wait_text("#td-clock", "LEVEL 1").await;
    assert_eq!(td.hash().await, "#/td/felt-kill-cup");
    td.click("#mint-screens").await;
    td.wait_for("#clock-link").await;
    let clock_link = td.value("#clock-link").await;
    let player_link = td.value("#player-link").await;
    let big = browser::session(1280, 720).await;
    big.goto(&clock_link).await;
    big.wait_text("#big-clock", "LEVEL 1").await;
    let phone = browser::session(390, 800).await;
    phone.goto(&player_link).await;
    phone.wait_text("#phone-clock", "LEVEL 1").await;
    let pages = [&td, &big, &phone];

    for name in ["Ada", "Ben", "Cleo", "Dev", "Eve", "Finn"] {
        td.fill("#player-name", name).await;
        felt_console::act(&td, "#add-player button").await;
    }
    felt_console::act(&td, "#seat-draw").await;
    let started_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    felt_console::act(&td, "#start").await;
    let started_ack = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for name in ["Ben", "Eve"] {
        felt_console::act(&td, &format!("[data-bust='{name}']")).await;
    }
    // The last bust is clicked and the process killed at once: acknowledged or not, the console
    // must agree with what survives.
    td.click("[data-bust='Cleo']").await;
    signal(&server.child, "KILL");
    let _ = server.child.wait();
    drop(server);

    for b in pages {
        b.wait_until("return document.getElementById('conn').dataset.conn === 'reconnecting';")
            .await;
    }
    let ticking = felt_time_left(&big).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        felt_time_left(&big).await < ticking,
        "the big screen's clock keeps ticking while the server is down"
    );
    big.screenshot("felt-kill9-reconnecting").await;
    let acked = felt_console::actions(&td).await;

    // The same address again (another test may have taken the port meanwhile: then a few tries).
    let server = {
        let mut tries = 0;
        loop {
            match std::panic::catch_unwind(|| start_at(dir.path(), &listen, &env)) {
                Ok(server) => break server,
                Err(e) if tries >= 20 => std::panic::resume_unwind(e),
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
    };
    for b in pages {
        b.wait_until("return document.getElementById('conn').dataset.conn === 'live';")
            .await;
    }
    // Every acknowledged action is in the audit.
    let audit = felt_td(&base, admin, "felt-kill-cup", "")
        .call(
            reqwest::Method::POST,
            "query/exec",
            serde_json::json!({"sql": "SELECT seq, action FROM audit ORDER BY seq"}),
        )
        .await
        .unwrap();
    let stored: std::collections::HashMap<i64, String> = audit["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"))
        .iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_str().unwrap().to_owned()))
        .collect();
    assert!(acked.len() >= 10, "{acked:?}");
    for a in &acked {
        let seq = a["seq"].as_i64().unwrap();
        assert_eq!(
            stored.get(&seq).map(String::as_str),
            a["action"].as_str(),
            "acknowledged action #{seq} kept"
        );
    }
    // Every page shows the same state, which holds the last acknowledged action.
    let last = acked.last().unwrap()["seq"].as_i64().unwrap();
    for b in pages {
        b.wait_until(&format!(
            "return !felt.state.cached && felt.state.audit_seq >= {last};"
        ))
        .await;
    }
    let want = felt_shown(&td).await;
    assert_eq!(felt_shown(&big).await, want, "the big screen");
    assert_eq!(felt_shown(&phone).await, want, "the phone");
    // The clock neither lost nor gained time: ten minutes minus the wall time since the start,
    // which the server stamped between the click and its acknowledgement (the display shows
    // whole seconds).
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let before_read = wall();
    let shown = felt_time_left(&big).await;
    let after_read = wall();
    let (lo, hi) = (
        (600_000 - (after_read - started_wall)) / 1000 - 1,
        (600_000 - (before_read - started_ack)) / 1000 + 1,
    );
    assert!(
        (lo..=hi).contains(&shown),
        "{shown} s left on the big screen, expected {lo}..={hi} s"
    );
    let expected = (lo + hi) / 2;
    td.click("#verify-audit").await;
    td.wait_until("return felt.replayEqual === true;").await;
    // And the room goes on: a pause reaches both screens.
    felt_console::act(&td, "#pause").await;
    big.wait_text("#big-clock", "PAUSED").await;
    phone.wait_text("#phone-clock", "PAUSED").await;
    big.screenshot("felt-kill9-after").await;
    eprintln!(
        "felt in Chromium, kill -9 mid-level: {} acknowledged actions kept, {shown} s left (expected about {expected} s)",
        acked.len()
    );
    for b in [td, big, phone] {
        b.close().await;
    }
    assert!(server.terminate().0.success());
}
