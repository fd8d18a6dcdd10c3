//! `TestServer`: the real server on `127.0.0.1:0` with a temp data dir, driven over real HTTP.

pub mod browser;
pub mod felt;
pub mod oidc;
pub mod s3;

use std::net::SocketAddr;

use reqwest::{Client, Method, RequestBuilder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::server::serve;
use crate::state::{App, AppState};

/// Occupies a document's actor with a read that waits until the returned sender is used (or
/// dropped): later requests queue in its mailbox meanwhile.
pub async fn block_actor(doc: &crate::registry::DocHandle) -> std::sync::mpsc::Sender<()> {
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let doc = doc.clone();
    tokio::spawn(async move {
        let _ = doc
            .read(move |_| {
                let _ = started_tx.send(());
                let _ = release_rx.recv_timeout(std::time::Duration::from_secs(30));
                Ok(())
            })
            .await;
    });
    started_rx.await.expect("the actor runs the blocker");
    release_tx
}

/// Where scripts/setup.sh installs the test tools: `$PATCHWORK_TOOLS`, or
/// `~/.cache/patchwork-tools`.
pub fn tools_dir() -> std::path::PathBuf {
    std::env::var_os("PATCHWORK_TOOLS").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/patchwork-tools")
        },
        std::path::PathBuf::from,
    )
}

/// A scope for tests.
pub fn scope(db: &str, action: crate::auth::Action, prefix: Option<&str>) -> crate::auth::Scope {
    crate::auth::Scope {
        db_id: db.into(),
        action,
        resource_prefix: prefix.map(Into::into),
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub admin_token: String,
    pub client: Client,
    pub state: AppState,
    pub dir: tempfile::TempDir,
    stop: CancellationToken,
    join: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with the embedded defaults, a temp data dir, and `tweak` applied.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        tweak(&mut config);
        Self::start_in(dir, config).await
    }

    /// Starts on an existing data dir (e.g. one handed back by `stop_keeping_data`), with
    /// `admin_token` registered as an admin token.
    pub async fn restart_on(dir: tempfile::TempDir, admin_token: &str) -> Self {
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            admin_token: Some(crate::config::Secret::new(admin_token)),
            ..Config::default()
        };
        Self::start_in(dir, config).await
    }

    /// As [`restart_on`](Self::restart_on), with `tweak` applied to the configuration.
    pub async fn restart_with(
        dir: tempfile::TempDir,
        admin_token: &str,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            admin_token: Some(crate::config::Secret::new(admin_token)),
            ..Config::default()
        };
        tweak(&mut config);
        Self::start_in(dir, config).await
    }

    /// The MQTT listener's address (`mqtt_listen` must be set), once it listens.
    pub async fn mqtt_addr(&self) -> SocketAddr {
        for _ in 0..500 {
            if let Some(addr) = self.state.mqtt_addr.get() {
                return *addr;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the MQTT listener did not start (is mqtt_listen set?)");
    }

    /// As [`start_with`](Self::start_with), with the server's base URL (`http://127.0.0.1:PORT`)
    /// known to `tweak` (for `public_url`, OIDC redirect URLs).
    pub async fn start_at(tweak: impl FnOnce(&mut Config, &str)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        tweak(&mut config, &base);
        Self::serve_on(dir, config, listener).await
    }

    async fn start_in(dir: tempfile::TempDir, config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::serve_on(dir, config, listener).await
    }

    async fn serve_on(
        dir: tempfile::TempDir,
        config: Config,
        listener: tokio::net::TcpListener,
    ) -> Self {
        let env_token = config.admin_token.clone();
        let opened = App::open(config).await.expect("app opens");
        let admin_token = opened
            .bootstrap_token
            .or_else(|| env_token.map(|t| t.expose().to_owned()))
            .expect("a bootstrap admin token");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let state = opened.state.clone();
        let listeners = crate::server::Listeners::bind(&state, listener)
            .await
            .expect("listeners bind");
        let join = tokio::spawn(serve(
            opened.state,
            listeners,
            stop.clone().cancelled_owned(),
        ));
        Self {
            addr,
            admin_token,
            client: Client::builder().build().expect("client"),
            state,
            dir,
            stop,
            join: Some(join),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A request with the admin token.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.admin_token)
    }

    /// A request without a token.
    pub fn anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A non-admin token with `scopes` (plaintext).
    pub async fn mint(&self, scopes: Vec<crate::auth::Scope>) -> String {
        self.state
            .tokens
            .create(crate::auth::NewToken {
                label: "test".into(),
                is_admin: false,
                scopes,
                expires_at: None,
            })
            .await
            .expect("token created")
            .1
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.anon(Method::GET, "/metrics")
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Graceful shutdown, as on SIGTERM; returns the server's result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop_keeping_data().await.map(drop)
    }

    /// Graceful shutdown; hands back the data dir so a test can inspect or reopen it.
    pub async fn stop_keeping_data(mut self) -> anyhow::Result<tempfile::TempDir> {
        self.stop.cancel();
        if let Some(join) = self.join.take() {
            join.await.expect("server task")?;
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        Ok(dir)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

/// A minimal, spec-following SSE reader over a streaming response (fields `event`, `id`,
/// `data` — multi-line data joined with `\n` — comments ignored, events end at a blank line).
pub struct SseReader {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buf: Vec::new(),
        }
    }

    /// The next event, or `None` when the stream ends or `timeout` passes first.
    pub async fn next(&mut self, timeout: std::time::Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.parse_one() {
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
                _ => return None,
            }
        }
    }

    /// The next event that is not a heartbeat.
    pub async fn next_non_heartbeat(&mut self, timeout: std::time::Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next(left).await?;
            if event.event != "heartbeat" {
                return Some(event);
            }
        }
    }

    fn parse_one(&mut self) -> Option<SseEvent> {
        let text = String::from_utf8_lossy(&self.buf).replace("\r\n", "\n");
        let end = text.find("\n\n")?;
        let block = text[..end].to_owned();
        let consumed = text[..end + 2].len();
        let rest = text.as_bytes()[consumed..].to_vec();
        self.buf = rest;
        let mut event = SseEvent {
            event: "message".into(),
            ..SseEvent::default()
        };
        let mut data = Vec::new();
        let mut any = false;
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            any = true;
            match field {
                "event" => event.event = value.to_owned(),
                "id" => event.id = Some(value.to_owned()),
                "data" => data.push(value.to_owned()),
                _ => {}
            }
        }
        event.data = data.join("\n");
        if any { Some(event) } else { self.parse_one() }
    }
}
