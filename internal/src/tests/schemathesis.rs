//! Schemathesis (PyPI, pinned and installed by `scripts/setup.sh`) against the real server's
//! `/openapi.json` with an admin token: generated requests, valid and invalid, for every
//! operation that answers without waiting for someone else, and every answer checked — no server
//! error (`5xx`), and status code, content type, headers and JSON body as the document says.
//!
//! Bounded for CI (a few thousand requests, well under a minute). A longer run is the same test
//! with more examples per operation and every phase, e.g.
//! `PATCHWORK_SCHEMATHESIS_MAX_EXAMPLES=500 PATCHWORK_SCHEMATHESIS_PHASES=examples,coverage,fuzzing,stateful
//! cargo test -p patchwork schemathesis -- --nocapture`
//! (`PATCHWORK_SCHEMATHESIS_SEED` changes the seed, `PATCHWORK_SCHEMATHESIS_CHECKS` the checks).

use std::path::PathBuf;
use std::time::Duration;

use crate::testing::TestServer;

/// Operations left out, each because one request of it would not end on its own or would end
/// the run's own access; all of them are covered by their own tests.
const EXCLUDE_PATH_REGEX: &str = concat!(
    // Stream relays (`/public/…`, `/p/…`, `/u/{db_id}/…` and the canonical
    // `/api/v1/db/{db_id}/streams/…`): a party waits up to `stream_wait_timeout_secs` for its
    // counterpart, which a fuzzer never sends.
    r"^/(public|p|u)/|^/api/v1/db/[^/]+/streams/",
    // SSE: the durable-message subscription, query watches and presence streams never end while
    // the client stays.
    // (`/events/ws` stays in: without a WebSocket upgrade it answers `400` at once.)
    r"|/events/stream$|/query/watch$|/presence/[^/]+/stream$",
);

/// `DELETE /api/v1/admin/tokens/{id}`: schemathesis learns token ids from `GET` answers and would
/// revoke the admin token it runs with, leaving every later request a `401`.
const EXCLUDE_OPERATION_IDS: &[&str] = &["delete_api_v1_admin_tokens_id"];

/// `GET /sync/changes?live=true` is an SSE stream that never ends: `live` is pinned to `false`
/// (the rest of the operation is fuzzed). A string: a TOML boolean would be sent as `False`.
const CONFIG: &str = r#"[parameters]
"query.live" = "false"
"#;

/// Schemathesis has no serializer for the changeset media type that `POST /sync/changes` takes;
/// the bytes are opaque, so the `application/octet-stream` one serves.
const HOOKS: &str = r#"import schemathesis
schemathesis.serializer.alias("application/vnd.sqlite3-changeset", "application/octet-stream")
"#;

const CHECKS: &str = "not_a_server_error,response_schema_conformance,status_code_conformance,\
                      content_type_conformance,response_headers_conformance";

fn tools() -> PathBuf {
    std::env::var_os("PATCHWORK_TOOLS").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/patchwork-tools"),
        PathBuf::from,
    )
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_and_no_schema_violations() {
    let site = tools().join("schemathesis");
    assert!(
        site.join("schemathesis").is_dir(),
        "schemathesis is missing: run scripts/setup.sh (it pip-installs it into {})",
        site.display()
    );
    // Legacy hooks, `/auth/login` and `/auth/token-login` are rate limited per IP (10/s by
    // default): off here, or most of their cases would only see `429`. LiveKit settings, so
    // `media/token` mints (unconfigured it answers `503`, which schemathesis counts as a
    // server error).
    let server = TestServer::start_with(|c| {
        c.rate_limit_ip_rps = 0;
        c.livekit_api_key = Some("schemathesis".into());
        c.livekit_api_secret = Some(crate::config::Secret::new("schemathesis-secret"));
    })
    .await;
    let work = server.dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let config = work.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let hooks = work.join("hooks.py");
    std::fs::write(&hooks, HOOKS).unwrap();

    let max_examples = env_or("PATCHWORK_SCHEMATHESIS_MAX_EXAMPLES", "10");
    let phases = env_or("PATCHWORK_SCHEMATHESIS_PHASES", "examples,coverage,fuzzing");
    let seed = env_or("PATCHWORK_SCHEMATHESIS_SEED", "1");
    let checks = env_or("PATCHWORK_SCHEMATHESIS_CHECKS", CHECKS);
    let mut args: Vec<String> = vec![
        "-m".into(),
        "schemathesis.cli".into(),
        "--config-file".into(),
        config.display().to_string(),
        "run".into(),
        server.url("/openapi.json"),
        "-H".into(),
        format!("Authorization: Bearer {}", server.admin_token),
        "--checks".into(),
        checks,
        "--exclude-path-regex".into(),
        EXCLUDE_PATH_REGEX.into(),
    ];
    for id in EXCLUDE_OPERATION_IDS {
        args.extend(["--exclude-operation-id".into(), (*id).into()]);
    }
    args.extend(
        [
            "--phases",
            &phases,
            "--max-examples",
            &max_examples,
            "--seed",
            &seed,
            // One worker: with more, hypothesis parses lambdas' source in several threads at
            // once, which CPython 3.11 can fail with "AST constructor recursion depth mismatch".
            "--workers",
            "1",
            "--request-timeout",
            "10",
            // Hypothesis' check on how fast inputs are generated depends on the machine's load,
            // not on the API.
            "--suppress-health-check",
            "too_slow",
            "--generation-database",
            "none",
            "--no-color",
        ]
        .map(String::from),
    );
    let shown = args
        .iter()
        .map(|a| a.replace(&server.admin_token, "$ADMIN_TOKEN"))
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("running: python3 {shown}");

    let child = tokio::process::Command::new("python3")
        .args(&args)
        .env("PYTHONPATH", &site)
        .env("SCHEMATHESIS_HOOKS", &hooks)
        // Hypothesis and reports write next to the working directory: the temp dir.
        .current_dir(&work)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(1800), child)
        .await
        .expect("schemathesis finishes")
        .expect("python3 runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The report always goes to the test's output (shown on failure, or with `--nocapture`).
    eprintln!("{report}");
    assert!(
        output.status.success(),
        "schemathesis reported failures or errors (exit {:?}); its report is above",
        output.status.code()
    );
    assert!(
        report.contains("passed") && !report.contains("No operations"),
        "schemathesis ran nothing"
    );
}
