//! The application state every handler reaches ([`AppState`]) and how it is built
//! ([`App::open`]: data dir, install key, `service.db`, tokens, sessions, registry). The bottom
//! floor of the request path: capability modules depend on it, and `server.rs` (which wires
//! the router out of every capability) depends on them, so dependencies point one way.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::auth::ratelimit::RateLimits;
use crate::auth::{InstallKey, TokenStore, sql as token_sql};
use crate::config::Config;
use crate::migrations::{MigrationError, Schema};
use crate::ops::metrics::Metrics;
use crate::registry::{
    ActorConfig, ConnectionHooks, DocError, DocHandle, Registry, RegistryConfig, spawn_actor,
};
use crate::sqlite::OpenOptions;

/// Everything a request handler can reach.
pub struct App {
    pub config: Config,
    pub registry: Registry,
    /// The actor owning `service.db` (tokens, install metadata).
    pub service: DocHandle,
    pub tokens: Arc<TokenStore>,
    /// Web sessions, stored in `service.db`.
    pub sessions: crate::identity::store::ServiceStore,
    /// The OIDC relying party (`None`: OIDC off, token login instead).
    pub oidc: Option<Arc<crate::identity::oidc::Oidc>>,
    /// Who owns which document (documents created from a person's session).
    pub owners: Arc<crate::identity::users::Owners>,
    pub limits: RateLimits,
    /// Per-document watch hubs (query watches share evaluations through them).
    pub watch_hubs: crate::query::watch::Hubs,
    /// The in-memory byte relay (streams).
    pub streams: crate::streams::Streams,
    /// Encrypts webhook endpoint secrets at rest (key derived from the install key).
    pub webhook_secrets: crate::webhooks::SharedSecretBox,
    /// The blob store (local filesystem under `{data_dir}/blobs/`) and its URL signing key.
    pub blobs: Arc<crate::blobs::Blobs>,
    pub metrics: Arc<Metrics>,
    pub started_at: OffsetDateTime,
    pub started: Instant,
    /// Cap on open HTTP connections in effect: `max_connections`, lowered to what
    /// `RLIMIT_NOFILE` leaves after the open-document budget.
    pub max_connections: usize,
    /// Cancelled when shutdown begins: long-lived streams (SSE, WebSocket) end on it.
    pub shutdown: CancellationToken,
    /// The install key (`secret.key`): keys derived from it seal secrets at rest.
    pub install_key: InstallKey,
    /// Proof-of-work challenges and the solutions already spent.
    pub pow: crate::pow::Pow,
    /// The MQTT listener's bound address, once it listens (`mqtt_listen`).
    pub mqtt_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Who is in which room of which document (in memory only).
    pub presence: crate::presence::Presence,
    /// Live SSE, WebSocket and MQTT connections, by owner and id (presence binds members to
    /// them).
    pub connections: Arc<crate::presence::connections::Connections>,
    service_exited: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

/// The shared state handed to every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// What `App::open` produced.
pub struct Opened {
    pub state: AppState,
    /// On the very first start without `PATCHWORK_ADMIN_TOKEN`: the minted admin token, to be
    /// printed once by the caller. `None` on every later start.
    pub bootstrap_token: Option<String>,
}

fn actor_config(config: &Config) -> ActorConfig {
    ActorConfig {
        open: OpenOptions {
            synchronous: config.synchronous,
            busy_timeout: Duration::from_millis(config.busy_timeout_ms),
            wal_autocheckpoint: config.wal_autocheckpoint_pages,
            // Room for the largest value Patchwork itself stores (a request body, a webhook
            // delivery) or may return; a little over, for JSON and headers around it.
            max_value_bytes: config
                .max_body_bytes
                .max(config.query_max_result_bytes)
                .max(config.webhook_max_body_bytes)
                .saturating_add(64 * 1024),
        },
        mailbox_capacity: config.mailbox_capacity,
        max_batch: config.max_batch,
        sync_keep_versions: config.sync_retention_versions,
        sync_keep_secs: config.sync_retention_secs,
        hooks: Some(&CONNECTION_HOOKS),
    }
}

/// The SQL classifier's authorizer is installed once per document connection, and its cache of
/// classifications goes with the connection's statement cache.
static CONNECTION_HOOKS: ConnectionHooks = ConnectionHooks {
    opened: document_opened,
    shrink: crate::query::classify::schema_changed,
    closing: crate::query::classify::uninstall,
};

/// A document connection just opened: the classifier's authorizer and the caller functions.
fn document_opened(conn: &rusqlite::Connection) {
    crate::query::classify::install(conn);
    if let Err(e) = crate::query::caller::install(conn) {
        tracing::error!(error = %e, "registering patchwork_caller() failed");
    }
    // The document's own durability setting (`PUT /_settings`), if it has one.
    crate::schema::settings::apply_stored(conn);
}

/// Opens `service.db` on its own actor thread. Used by the server and by the offline CLI.
pub(crate) async fn open_service(
    config: &Config,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(DocHandle, oneshot::Receiver<()>)> {
    let path: PathBuf = config.data_dir.join("service.db");
    let (exited_tx, exited_rx) = oneshot::channel();
    let on_exit = Box::new(move || {
        let _ = exited_tx.send(());
    });
    let (handle, _) = spawn_actor(
        "pw-service".into(),
        path.clone(),
        Schema::Service,
        actor_config(config),
        metrics,
        on_exit,
    )
    .await
    .map_err(|e| match e {
        DocError::Open(e @ MigrationError::TooNew { .. }) => {
            anyhow::anyhow!("{}: {e}", path.display())
        }
        other => anyhow::anyhow!("opening {}: {other}", path.display()),
    })?;
    Ok((handle, exited_rx))
}

impl App {
    /// Closes `service.db`'s actor (after the documents') and waits up to `grace` for it.
    pub(crate) async fn close_service(&self, grace: Duration) {
        self.service.close().await;
        let exited = self
            .service_exited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(exited) = exited {
            let _ = tokio::time::timeout(grace, exited).await;
        }
    }

    /// Prepares the data dir, the install key, `service.db` (migrations, bootstrap token) and the
    /// document registry. Must run inside a Tokio runtime.
    pub async fn open(config: Config) -> anyhow::Result<Opened> {
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        install_crypto_provider();
        std::fs::create_dir_all(config.documents_dir())
            .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
        let key = InstallKey::load_or_create(&config.data_dir)?;
        let metrics = Metrics::new();
        let (service, service_exited) = open_service(&config, metrics.clone()).await?;
        let bootstrap_key = key.clone();
        let env_token = config.admin_token.clone();
        let bootstrap_token = service
            .write(move |conn| {
                Ok(token_sql::bootstrap(
                    conn,
                    &bootstrap_key,
                    env_token.as_ref(),
                )?)
            })
            .await
            .context("bootstrapping the admin token")?;
        let webhook_secrets = Arc::new(crate::webhooks::SecretBox::new(
            key.derive("patchwork 2026 webhook endpoint secrets v1"),
        ));
        let blobs = Arc::new(
            crate::blobs::Blobs::open(&config, key.derive("patchwork 2026 blob url signing v1"))
                .context("opening the blob store")?,
        );
        let pow = crate::pow::Pow::new(
            key.derive("patchwork 2026 pow challenges v1"),
            config.pow_ttl_secs,
        );
        let sessions = crate::identity::store::ServiceStore::new(service.clone(), key.clone());
        let oidc = crate::identity::oidc::Oidc::from_config(&config)
            .context("setting up OIDC")?
            .map(Arc::new);
        let owners = crate::identity::users::Owners::load(&service)
            .await
            .context("loading document owners")?;
        let install_key = key.clone();
        let tokens = TokenStore::load(key, service.clone())
            .await
            .context("loading tokens")?;
        let nofile = raise_nofile_limit();
        let max_open = open_document_budget(config.max_open_documents, nofile);
        let max_connections = connection_budget(config.max_connections, max_open, nofile);
        let registry = Registry::new(
            RegistryConfig {
                documents_dir: config.documents_dir(),
                actor: actor_config(&config),
                idle_timeout: config.idle_timeout(),
                max_open,
                shrink_after: crate::registry::SHRINK_AFTER,
            },
            metrics.clone(),
        );
        let presence = crate::presence::Presence::new(
            &config,
            metrics.clone(),
            Arc::new(crate::presence::service::SystemClock),
        );
        let connections = crate::presence::connections::Connections::new(metrics.clone());
        let app = App {
            presence,
            connections,
            limits: RateLimits::new(&config),
            watch_hubs: Default::default(),
            streams: crate::streams::Streams::new(&config),
            webhook_secrets,
            blobs,
            config,
            registry,
            service,
            tokens,
            sessions,
            oidc,
            owners,
            metrics,
            started_at: OffsetDateTime::now_utc(),
            started: Instant::now(),
            max_connections,
            shutdown: CancellationToken::new(),
            mqtt_addr: std::sync::OnceLock::new(),
            pow,
            install_key,
            service_exited: std::sync::Mutex::new(Some(service_exited)),
        };
        Ok(Opened {
            state: AppState(Arc::new(app)),
            bootstrap_token,
        })
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; the resulting limit, if known.
fn raise_nofile_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise RLIMIT_NOFILE");
            None
        }
    }
}

/// Each open document holds three file descriptors (database, WAL, shared memory). Caps the
/// number of open documents so opening one never fails for lack of descriptors (256 are kept
/// for sockets and the service database).
/// Installs rustls's ring provider as the process default, once. The tree holds rustls with both
/// ring (reqwest 0.12, for OIDC) and aws-lc-rs (reqwest 0.13, for S3), so rustls cannot choose on
/// its own and a TLS client built without an explicit provider would panic. A provider already
/// installed (by an embedding program, or an earlier `open`) is kept.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn open_document_budget(configured: usize, nofile: Option<u64>) -> usize {
    let Some(limit) = nofile else {
        return configured;
    };
    let budget = usize::try_from(limit.saturating_sub(256) / 3)
        .unwrap_or(usize::MAX)
        .max(1);
    lowered_to_budget("max_open_documents", configured, budget, limit)
}

/// `configured`, or `budget` (with a warning naming `setting`) when it is above it.
fn lowered_to_budget(setting: &str, configured: usize, budget: usize, nofile: u64) -> usize {
    if configured > budget {
        tracing::warn!(
            setting,
            configured,
            budget,
            nofile,
            "a setting is above what the file-descriptor limit allows; using the lower value"
        );
        budget
    } else {
        configured
    }
}

/// Descriptors kept for everything but documents and connections: the listener, `service.db`,
/// stdio, the runtime, `/readyz` probes, SQLite temp files (64), and background checkpoints.
const RESERVED_DESCRIPTORS: u64 = 64 + crate::registry::CHECKPOINT_DESCRIPTORS;

/// Caps connections (one descriptor each) to what `nofile` leaves after `max_open` documents
/// (three each) and [`RESERVED_DESCRIPTORS`], so that a connection flood can neither starve
/// document opens nor make `accept` fail.
pub(crate) fn connection_budget(configured: usize, max_open: usize, nofile: Option<u64>) -> usize {
    let Some(limit) = nofile else {
        return configured;
    };
    let documents = u64::try_from(max_open)
        .unwrap_or(u64::MAX)
        .saturating_mul(3);
    let budget = usize::try_from(
        limit
            .saturating_sub(documents)
            .saturating_sub(RESERVED_DESCRIPTORS),
    )
    .unwrap_or(usize::MAX)
    .max(1);
    lowered_to_budget("max_connections", configured, budget, limit)
}
