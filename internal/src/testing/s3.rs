//! A real S3-compatible server for tests: `s3s-fs` (crates.io `s3s-fs@0.14.1`, real SigV4 checks
//! of headers and presigned query strings), installed and cached by `scripts/setup.sh` at
//! `${PATCHWORK_TOOLS:-$HOME/.cache/patchwork-tools}/s3s/bin/s3s-fs` (or found on `PATH`),
//! started once per test binary on a free port.
//!
//! ```ignore
//! let s3 = s3::server().await;
//! let bucket = s3.new_bucket();
//! let server = TestServer::start_with(|c| s3.configure(c, &bucket)).await;
//! ```
//!
//! It runs under a small shell that waits for its stdin to close (this process exiting closes
//! the pipe), then stops it and removes its data dir. Buckets are directories of that data dir
//! (s3s-fs has no auto-create); each test takes a bucket of its own.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::config::{BlobStore, Config, Secret};

pub const ACCESS_KEY: &str = "AKTEST";
pub const SECRET_KEY: &str = "SKTEST";
pub const REGION: &str = "us-east-1";

/// The s3s-fs process, kept for the life of the test binary.
pub struct S3 {
    /// `http://127.0.0.1:{port}`.
    pub endpoint: String,
    data: PathBuf,
    _shell: Child,
    _stdin: ChildStdin,
}

static SERVER: OnceCell<S3> = OnceCell::const_new();
static BUCKETS: AtomicUsize = AtomicUsize::new(0);

/// The shared s3s-fs, started on first use.
pub async fn server() -> &'static S3 {
    SERVER.get_or_init(start).await
}

fn binary() -> PathBuf {
    let tools = std::env::var_os("PATCHWORK_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/patchwork-tools")
        });
    let cached = tools.join("s3s/bin/s3s-fs");
    if cached.exists() {
        return cached;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|p| p.join("s3s-fs"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "s3s-fs is missing: run scripts/setup.sh (it runs `cargo install --locked \
                 s3s-fs@0.14.1 --features binary --root {}/s3s`)",
                tools.display()
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn start() -> S3 {
    let bin = binary();
    let http = reqwest::Client::new();
    let mut last_error = String::new();
    // The port is free when chosen but could be taken before s3s-fs binds it: retry.
    for _ in 0..3 {
        let data = tempfile::Builder::new()
            .prefix("patchwork-s3s-")
            .tempdir()
            .expect("s3s data dir")
            .keep();
        let port = free_port();
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(concat!(
                r#""$0" --host 127.0.0.1 --port "$1" --access-key "$2" --secret-key "$3" "$4" "#,
                r#">/dev/null 2>&1 & pid=$!; "#,
                r#"cat >/dev/null; kill -TERM "$pid" 2>/dev/null; wait "$pid"; rm -rf "$4""#
            ))
            .arg(&bin)
            .arg(port.to_string())
            .arg(ACCESS_KEY)
            .arg(SECRET_KEY)
            .arg(&data)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn s3s-fs");
        let stdin = shell.stdin.take().expect("piped stdin");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // An unsigned request is refused once it listens.
            if let Ok(r) = http.get(format!("{endpoint}/")).send().await
                && r.status() == reqwest::StatusCode::FORBIDDEN
            {
                return S3 {
                    endpoint,
                    data,
                    _shell: shell,
                    _stdin: stdin,
                };
            }
            if let Ok(Some(status)) = shell.try_wait() {
                last_error = format!("s3s-fs exited: {status}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if last_error.is_empty() {
            last_error = "s3s-fs not ready after 20 s".into();
        }
        drop(stdin);
        let _ = shell.wait();
    }
    panic!("could not start s3s-fs ({}): {last_error}", bin.display());
}

impl S3 {
    /// A new empty bucket (a directory of the server's data dir).
    pub fn new_bucket(&self) -> String {
        let n = BUCKETS.fetch_add(1, Ordering::Relaxed);
        let name = format!("bucket-{}-{n}", std::process::id());
        std::fs::create_dir(self.data.join(&name)).expect("create the bucket");
        name
    }

    /// The keys in `bucket` (relative paths of its files), sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else if let Ok(rel) = path.strip_prefix(root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        let root = self.data.join(bucket);
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }

    /// Points `config` at this server and `bucket` (path style).
    pub fn configure(&self, config: &mut Config, bucket: &str) {
        config.blob_store = BlobStore::S3;
        config.s3_endpoint = Some(self.endpoint.clone());
        config.s3_bucket = Some(bucket.to_owned());
        config.s3_region = Some(REGION.to_owned());
        config.s3_access_key_id = Some(ACCESS_KEY.to_owned());
        config.s3_secret_access_key = Some(Secret::new(SECRET_KEY));
        config.s3_path_style = true;
    }
}
