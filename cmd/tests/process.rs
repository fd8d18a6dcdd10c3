//! What needs the real `patchwork` process: the bootstrap token, signals, the offline CLI, log
//! format, refusing a newer schema.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_patchwork");

struct Server {
    child: Child,
    base: String,
    stdout: Vec<String>,
    stderr_rx: mpsc::Receiver<String>,
}

/// Starts `patchwork serve` on a free port and waits for it to listen.
#[expect(
    clippy::zombie_processes,
    reason = "the child is owned by `Server`, whose Drop kills and waits for it"
)]
fn start(data_dir: &Path, envs: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
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
        // Closed cleanly: the WAL was checkpointed away.
        assert!(
            !dir.path()
                .join("documents")
                .join(format!("{id}.sqlite3-wal"))
                .exists()
        );
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
/// with its payload intact. Three rounds on the same data dir.
#[tokio::test]
async fn acknowledged_publishes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "durability-admin-token-0123456789";
    let env = [("PATCHWORK_ADMIN_TOKEN", admin)];
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
        let mut server = server;
        signal(&server.child, "KILL");
        let _ = server.child.wait();
        for t in tasks {
            acked_all.extend(t.await.unwrap());
        }
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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
        acked_all.extend(watcher.await.unwrap());
        publisher.abort();
    }
    assert!(
        acked_all.len() > 100,
        "only {} acknowledged",
        acked_all.len()
    );
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
