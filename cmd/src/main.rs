//! The `patchwork` binary: command line and wiring only. Everything else is in the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use patchwork::auth::{NewToken, Scope};
use patchwork::config::{BlobStore, Config, LogFormat, Secret, Synchronous};
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "patchwork",
    version,
    about = "Patchwork: a multi-tenant document-database service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Manage machine tokens offline, against a data dir.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Copy a data dir (every document, service.db, secret.key, local blobs) into a new
    /// directory, consistent per file; works while the server runs.
    Backup {
        #[arg(long, env = "PATCHWORK_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Directory to create (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Keep a local SQLite file in step with a document, both ways: a snapshot first, then
    /// pulled changes and pushed local edits (state kept beside the file).
    Sync {
        /// The server, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "PATCHWORK_URL")]
        url: String,
        /// A machine token with sync.read (and sync.write to push) on the document.
        #[arg(long, env = "PATCHWORK_TOKEN", hide_env_values = true)]
        token: String,
        /// The document's db_id.
        #[arg(long)]
        db: String,
        /// The local SQLite file (created by the first sync).
        #[arg(long)]
        file: PathBuf,
        /// What to do when a local edit and a server change touch the same row:
        /// abort, server_wins or client_wins.
        #[arg(long, default_value = "abort")]
        on_conflict: String,
        /// Stay live: apply server changes as they commit and push local edits as they appear.
        #[arg(long)]
        watch: bool,
    },
    /// Put a backup made by `patchwork backup` into a data dir (stop the server first).
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        #[arg(long, env = "PATCHWORK_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Replace the data already in the data dir.
        #[arg(long)]
        force: bool,
    },
    /// Check a running server: `GET /healthz` (or --path) over plain HTTP; exit 0 on a 200,
    /// 1 otherwise. For container health checks (the runtime image has no curl).
    Healthcheck {
        /// The server's address, host:port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// The path to ask.
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Manage the keys that sign invite links, offline against a data dir.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Make a new invite signing key. Links signed with the previous key keep working; links
    /// signed with the one before it stop. A running server uses the new key at once.
    Rotate {
        #[arg(long, env = "PATCHWORK_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

/// Every flag can also come from `PATCHWORK_*` and from the TOML file given by `--config`.
/// Precedence: flag or environment > file > embedded default.
#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML file with any of the settings below (keys as in docs, e.g. `listen = "..."`).
    #[arg(long, env = "PATCHWORK_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "PATCHWORK_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./data].
    #[arg(long, env = "PATCHWORK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// SQLite synchronous: normal or full [default: normal].
    #[arg(long, env = "PATCHWORK_SYNCHRONOUS")]
    synchronous: Option<Synchronous>,
    /// SQLite busy timeout in milliseconds [default: 5000].
    #[arg(long, env = "PATCHWORK_BUSY_TIMEOUT_MS")]
    busy_timeout_ms: Option<u64>,
    /// WAL pages after which a background thread checkpoints a document's WAL (it starts over
    /// at about twice this) [default: 4000].
    #[arg(long, env = "PATCHWORK_WAL_AUTOCHECKPOINT_PAGES")]
    wal_autocheckpoint_pages: Option<u32>,
    /// Document mailbox capacity; a full mailbox answers 503 [default: 1024].
    #[arg(long, env = "PATCHWORK_MAILBOX_CAPACITY")]
    mailbox_capacity: Option<usize>,
    /// Most writes in one group commit [default: 512].
    #[arg(long, env = "PATCHWORK_MAX_BATCH")]
    max_batch: Option<usize>,
    /// Close documents idle for this many seconds [default: 300].
    #[arg(long, env = "PATCHWORK_IDLE_TIMEOUT_SECS")]
    idle_timeout_secs: Option<u64>,
    /// Cap on open documents [default: 1024].
    #[arg(long, env = "PATCHWORK_MAX_OPEN_DOCUMENTS")]
    max_open_documents: Option<usize>,
    /// Seconds in-flight requests get after SIGTERM [default: 10].
    #[arg(long, env = "PATCHWORK_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: Option<u64>,
    /// Cap on JSON request bodies in bytes [default: 2097152].
    #[arg(long, env = "PATCHWORK_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Use this admin token instead of minting a bootstrap token.
    #[arg(long, env = "PATCHWORK_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "PATCHWORK_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Global requests per second, 0 = off [default: 0].
    #[arg(long, env = "PATCHWORK_RATE_LIMIT_GLOBAL_RPS")]
    rate_limit_global_rps: Option<u32>,
    /// Global burst, 0 = same as rps [default: 0].
    #[arg(long, env = "PATCHWORK_RATE_LIMIT_GLOBAL_BURST")]
    rate_limit_global_burst: Option<u32>,
    /// Requests per second per token, 0 = off [default: 0].
    #[arg(long, env = "PATCHWORK_RATE_LIMIT_TOKEN_RPS")]
    rate_limit_token_rps: Option<u32>,
    /// Burst per token [default: 0 = same as rps].
    #[arg(long, env = "PATCHWORK_RATE_LIMIT_TOKEN_BURST")]
    rate_limit_token_burst: Option<u32>,
    /// Requests per second per client IP on anonymous routes, 0 = off [default: 10].
    #[arg(long, env = "PATCHWORK_RATE_LIMIT_IP_RPS")]
    rate_limit_ip_rps: Option<u32>,
    /// Burst per client IP [default: 20].
    #[arg(long, env = "PATCHWORK_RATE_LIMIT_IP_BURST")]
    rate_limit_ip_burst: Option<u32>,
    /// Statement time limit in milliseconds [default: 5000].
    #[arg(long, env = "PATCHWORK_QUERY_TIMEOUT_MS")]
    query_timeout_ms: Option<u64>,
    /// Most rows returned per statement [default: 5000].
    #[arg(long, env = "PATCHWORK_QUERY_MAX_ROWS")]
    query_max_rows: Option<usize>,
    /// Largest JSON query result in bytes [default: 1048576].
    #[arg(long, env = "PATCHWORK_QUERY_MAX_RESULT_BYTES")]
    query_max_result_bytes: Option<usize>,
    /// Seconds between message retention sweeps [default: 60].
    #[arg(long, env = "PATCHWORK_RETENTION_SWEEP_SECONDS")]
    retention_sweep_seconds: Option<u64>,
    /// Serve the anonymous /public and /p stream routes [default: true].
    #[arg(long, env = "PATCHWORK_STREAMS_PUBLIC")]
    streams_public: Option<bool>,
    /// Seconds a stream party waits for its counterpart before a 504 [default: 120].
    #[arg(long, env = "PATCHWORK_STREAM_WAIT_TIMEOUT_SECS")]
    stream_wait_timeout_secs: Option<u64>,
    /// Seconds a double-clutch requester waits for the answer [default: 30].
    #[arg(long, env = "PATCHWORK_STREAM_SWITCH_TIMEOUT_SECS")]
    stream_switch_timeout_secs: Option<u64>,
    /// Cap on parties waiting on one stream channel [default: 256].
    #[arg(long, env = "PATCHWORK_STREAM_MAX_WAITERS_PER_CHANNEL")]
    stream_max_waiters_per_channel: Option<usize>,
    /// Cap on parties waiting on all stream channels [default: 10000].
    #[arg(long, env = "PATCHWORK_STREAM_MAX_WAITERS_TOTAL")]
    stream_max_waiters_total: Option<usize>,
    /// Longest lease TTL in seconds [default: 3600].
    #[arg(long, env = "PATCHWORK_LEASE_MAX_TTL_SECS")]
    lease_max_ttl_secs: Option<u64>,
    /// Largest webhook body stored, in bytes [default: 1048576].
    #[arg(long, env = "PATCHWORK_WEBHOOK_MAX_BODY_BYTES")]
    webhook_max_body_bytes: Option<usize>,
    /// Seconds a connection has to send a complete request head [default: 10].
    #[arg(long, env = "PATCHWORK_HEADER_READ_TIMEOUT_SECS")]
    header_read_timeout_secs: Option<u64>,
    /// Seconds an idle keep-alive connection stays open [default: 60].
    #[arg(long, env = "PATCHWORK_HTTP_IDLE_TIMEOUT_SECS")]
    http_idle_timeout_secs: Option<u64>,
    /// Seconds between pings on a pub/sub WebSocket; silent for 3x this, it is closed
    /// [default: 30].
    #[arg(long, env = "PATCHWORK_WS_PING_SECS")]
    ws_ping_secs: Option<u64>,
    /// Seconds without a byte while a request body is awaited [default: 60].
    #[arg(long, env = "PATCHWORK_REQUEST_BODY_TIMEOUT_SECS")]
    request_body_timeout_secs: Option<u64>,
    /// Seconds the socket may accept none of a pending response before the connection is
    /// closed [default: 30].
    #[arg(long, env = "PATCHWORK_RESPONSE_WRITE_TIMEOUT_SECS")]
    response_write_timeout_secs: Option<u64>,
    /// Cap on open HTTP connections; lowered to the descriptor budget [default: 10000].
    #[arg(long, env = "PATCHWORK_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Cap on open HTTP connections per client IP [default: 256].
    #[arg(long, env = "PATCHWORK_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// The URL people reach the service at; https makes the session cookie Secure.
    #[arg(long, env = "PATCHWORK_PUBLIC_URL")]
    public_url: Option<String>,
    /// OpenID Connect issuer URL; OIDC login is off while unset.
    #[arg(long, env = "PATCHWORK_OIDC_ISSUER")]
    oidc_issuer: Option<String>,
    /// OIDC client id.
    #[arg(long, env = "PATCHWORK_OIDC_CLIENT_ID")]
    oidc_client_id: Option<String>,
    /// OIDC client secret (prefer the environment variable).
    #[arg(long, env = "PATCHWORK_OIDC_CLIENT_SECRET", hide_env_values = true)]
    oidc_client_secret: Option<String>,
    /// Scopes asked for besides openid (comma-separated) [default: email,profile].
    #[arg(long, env = "PATCHWORK_OIDC_SCOPES", value_delimiter = ',')]
    oidc_scopes: Option<Vec<String>>,
    /// LiveKit API key for media room tokens (unset: the media token route answers 503).
    #[arg(long, env = "PATCHWORK_LIVEKIT_API_KEY")]
    livekit_api_key: Option<String>,
    /// LiveKit API secret (prefer the environment variable).
    #[arg(long, env = "PATCHWORK_LIVEKIT_API_SECRET", hide_env_values = true)]
    livekit_api_secret: Option<String>,
    /// Subjects who are admins (comma-separated).
    #[arg(long, env = "PATCHWORK_OIDC_ADMIN_SUBJECTS", value_delimiter = ',')]
    oidc_admin_subjects: Option<Vec<String>>,
    /// `claim=value` that makes a person an admin, e.g. groups=patchwork-admins.
    #[arg(long, env = "PATCHWORK_OIDC_ADMIN_CLAIM")]
    oidc_admin_claim: Option<String>,
    /// Sync change log: versions kept at least [default: 10000].
    #[arg(long, env = "PATCHWORK_SYNC_RETENTION_VERSIONS")]
    sync_retention_versions: Option<u64>,
    /// Sync change log: seconds kept at least [default: 604800].
    #[arg(long, env = "PATCHWORK_SYNC_RETENTION_SECS")]
    sync_retention_secs: Option<u64>,
    /// Seconds a web session lasts without use [default: 86400].
    #[arg(long, env = "PATCHWORK_SESSION_IDLE_SECS")]
    session_idle_secs: Option<u64>,
    /// Seconds a web session lasts after sign-in at most [default: 604800].
    #[arg(long, env = "PATCHWORK_SESSION_ABSOLUTE_SECS")]
    session_absolute_secs: Option<u64>,
    /// Largest blob accepted by init-upload, in bytes [default: 5368709120].
    #[arg(long, env = "PATCHWORK_BLOB_MAX_BYTES")]
    blob_max_bytes: Option<u64>,
    /// Seconds signed blob upload/read URLs stay valid [default: 900].
    #[arg(long, env = "PATCHWORK_BLOB_URL_TTL_SECS")]
    blob_url_ttl_secs: Option<u64>,
    /// Uploads larger than this many bytes are also offered in parts of this size (S3 multipart
    /// with presigned parts; >= 5 MiB) [default: 67108864].
    #[arg(long, env = "PATCHWORK_BLOB_PART_BYTES")]
    blob_part_bytes: Option<u64>,
    /// Seconds complete-upload (or a claim without ttl_secs) claims a blob [default: 3600].
    #[arg(long, env = "PATCHWORK_BLOB_CLAIM_TTL_SECS")]
    blob_claim_ttl_secs: Option<u64>,
    /// Seconds a completed blob is safe from GC however unreferenced [default: 86400].
    #[arg(long, env = "PATCHWORK_BLOB_GC_GRACE_SECS")]
    blob_gc_grace_secs: Option<u64>,
    /// Seconds between blob GC passes [default: 3600].
    #[arg(long, env = "PATCHWORK_BLOB_GC_INTERVAL_SECS")]
    blob_gc_interval_secs: Option<u64>,
    /// Where blob objects are stored: local or s3 [default: local].
    #[arg(long, env = "PATCHWORK_BLOB_STORE")]
    blob_store: Option<BlobStore>,
    /// S3 endpoint URL (unset: AWS for s3_region).
    #[arg(long, env = "PATCHWORK_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 bucket of the blob store.
    #[arg(long, env = "PATCHWORK_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// S3 region (signing region).
    #[arg(long, env = "PATCHWORK_S3_REGION")]
    s3_region: Option<String>,
    /// S3 access key id.
    #[arg(long, env = "PATCHWORK_S3_ACCESS_KEY_ID")]
    s3_access_key_id: Option<String>,
    /// S3 secret access key (prefer the environment variable).
    #[arg(long, env = "PATCHWORK_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    s3_secret_access_key: Option<String>,
    /// Path-style S3 requests instead of virtual-hosted style [default: false].
    #[arg(long, env = "PATCHWORK_S3_PATH_STYLE")]
    s3_path_style: Option<bool>,
    /// The S3 endpoint clients reach, for presigned URLs [default: s3_endpoint].
    #[arg(long, env = "PATCHWORK_S3_PUBLIC_ENDPOINT")]
    s3_public_endpoint: Option<String>,
    /// Address of the MQTT listener, e.g. 127.0.0.1:1883 [default: off].
    #[arg(long, env = "PATCHWORK_MQTT_LISTEN")]
    mqtt_listen: Option<SocketAddr>,
    /// PEM certificate chain for MQTT over TLS (with --mqtt-tls-key).
    #[arg(long, env = "PATCHWORK_MQTT_TLS_CERT")]
    mqtt_tls_cert: Option<PathBuf>,
    /// PEM private key for MQTT over TLS.
    #[arg(long, env = "PATCHWORK_MQTT_TLS_KEY")]
    mqtt_tls_key: Option<PathBuf>,
    /// Largest MQTT packet, in bytes [default: 1114112].
    #[arg(long, env = "PATCHWORK_MQTT_MAX_PACKET_BYTES")]
    mqtt_max_packet_bytes: Option<usize>,
    /// Unacknowledged QoS 1 messages per MQTT connection [default: 100].
    #[arg(long, env = "PATCHWORK_MQTT_MAX_INFLIGHT")]
    mqtt_max_inflight: Option<u16>,
    /// Longest MQTT keep-alive, in seconds [default: 600].
    #[arg(long, env = "PATCHWORK_MQTT_MAX_KEEP_ALIVE_SECS")]
    mqtt_max_keep_alive_secs: Option<u16>,
    /// Seconds a persistent MQTT session is kept while its client is away [default: 604800].
    #[arg(long, env = "PATCHWORK_MQTT_SESSION_EXPIRY_SECS")]
    mqtt_session_expiry_secs: Option<u64>,
    /// Cap on open MQTT connections [default: 10000].
    #[arg(long, env = "PATCHWORK_MQTT_MAX_CONNECTIONS")]
    mqtt_max_connections: Option<usize>,
    /// Cap on open MQTT connections per client IP (IPv6 per /64) [default: 256].
    #[arg(long, env = "PATCHWORK_MQTT_MAX_CONNECTIONS_PER_IP")]
    mqtt_max_connections_per_ip: Option<usize>,
    /// Seconds a stuck MQTT subscriber (no progress, messages waiting) stays [default: 30].
    #[arg(long, env = "PATCHWORK_MQTT_STALL_SECS")]
    mqtt_stall_secs: Option<u64>,
    /// Proof-of-work bits required to redeem an invite; 0 = off [default: 0].
    #[arg(long, env = "PATCHWORK_POW_DIFFICULTY")]
    pow_difficulty: Option<u8>,
    /// Proof-of-work bits required on the anonymous legacy stream routes [default: 0].
    #[arg(long, env = "PATCHWORK_POW_STREAMS_DIFFICULTY")]
    pow_streams_difficulty: Option<u8>,
    /// Seconds a proof-of-work challenge stays valid [default: 300].
    #[arg(long, env = "PATCHWORK_POW_TTL_SECS")]
    pow_ttl_secs: Option<u64>,
    /// Lifetime in seconds of the token an invite redemption mints [default: 86400].
    #[arg(long, env = "PATCHWORK_INVITE_TOKEN_TTL_SECS")]
    invite_token_ttl_secs: Option<u64>,
    /// Proxies whose X-Forwarded-For is believed: IPs or CIDR networks (comma-separated).
    #[arg(long, env = "PATCHWORK_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Option<Vec<patchwork::config::ProxyNet>>,
    /// Seconds a presence member stays without a heartbeat (rooms may set their own) [default: 60].
    #[arg(long, env = "PATCHWORK_PRESENCE_TTL_SECS")]
    presence_ttl_secs: Option<u64>,
    /// Members per presence room at most [default: 1000].
    #[arg(long, env = "PATCHWORK_PRESENCE_MAX_MEMBERS_PER_ROOM")]
    presence_max_members_per_room: Option<usize>,
    /// Presence rooms per document at most [default: 1000].
    #[arg(long, env = "PATCHWORK_PRESENCE_MAX_ROOMS_PER_DOCUMENT")]
    presence_max_rooms_per_document: Option<usize>,
    /// Presence members over every document at most [default: 100000].
    #[arg(long, env = "PATCHWORK_PRESENCE_MAX_MEMBERS_TOTAL")]
    presence_max_members_total: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token; the plaintext is the last line of stdout.
    Create {
        #[arg(long, env = "PATCHWORK_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Label shown in listings and audit logs (at most 120 characters).
        #[arg(long)]
        label: String,
        /// Make an admin token (passes every check).
        #[arg(long)]
        admin: bool,
        /// A scope `DB_ID:ACTION[:RESOURCE_PREFIX]` (repeatable), e.g. `chat:pub.publish:room/`.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Expiry as RFC 3339, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List tokens (never secrets).
    List {
        #[arg(long, env = "PATCHWORK_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Revoke a token by id.
    Revoke {
        #[arg(long, env = "PATCHWORK_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        id: String,
    },
}

impl ServeArgs {
    /// Embedded defaults, then the TOML file, then flags and environment.
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        macro_rules! overlay {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v; } )* };
        }
        overlay!(
            listen,
            data_dir,
            synchronous,
            busy_timeout_ms,
            wal_autocheckpoint_pages,
            mailbox_capacity,
            max_batch,
            idle_timeout_secs,
            max_open_documents,
            shutdown_grace_secs,
            max_body_bytes,
            log_format,
            rate_limit_global_rps,
            rate_limit_global_burst,
            rate_limit_token_rps,
            rate_limit_token_burst,
            rate_limit_ip_rps,
            rate_limit_ip_burst,
            query_timeout_ms,
            query_max_rows,
            query_max_result_bytes,
            retention_sweep_seconds,
            streams_public,
            stream_wait_timeout_secs,
            stream_switch_timeout_secs,
            stream_max_waiters_per_channel,
            stream_max_waiters_total,
            lease_max_ttl_secs,
            webhook_max_body_bytes,
            header_read_timeout_secs,
            http_idle_timeout_secs,
            ws_ping_secs,
            request_body_timeout_secs,
            response_write_timeout_secs,
            max_connections,
            max_connections_per_ip,
            session_idle_secs,
            session_absolute_secs,
            sync_retention_versions,
            sync_retention_secs,
            blob_max_bytes,
            blob_url_ttl_secs,
            blob_part_bytes,
            blob_claim_ttl_secs,
            blob_gc_grace_secs,
            blob_gc_interval_secs,
            blob_store,
            s3_path_style,
            trusted_proxies,
            mqtt_max_packet_bytes,
            mqtt_max_inflight,
            mqtt_max_keep_alive_secs,
            mqtt_session_expiry_secs,
            mqtt_max_connections,
            mqtt_max_connections_per_ip,
            mqtt_stall_secs,
            pow_difficulty,
            pow_streams_difficulty,
            pow_ttl_secs,
            presence_ttl_secs,
            presence_max_members_per_room,
            presence_max_rooms_per_document,
            presence_max_members_total
        );
        for (field, v) in [
            (&mut config.mqtt_tls_cert, self.mqtt_tls_cert),
            (&mut config.mqtt_tls_key, self.mqtt_tls_key),
        ] {
            if v.is_some() {
                *field = v;
            }
        }
        if self.mqtt_listen.is_some() {
            config.mqtt_listen = self.mqtt_listen;
        }
        for (field, v) in [
            (&mut config.s3_endpoint, self.s3_endpoint),
            (&mut config.s3_bucket, self.s3_bucket),
            (&mut config.s3_region, self.s3_region),
            (&mut config.s3_access_key_id, self.s3_access_key_id),
            (&mut config.s3_public_endpoint, self.s3_public_endpoint),
        ] {
            if v.is_some() {
                *field = v;
            }
        }
        if let Some(v) = self.s3_secret_access_key {
            config.s3_secret_access_key = Some(Secret::new(v));
        }
        if let Some(url) = self.public_url {
            config.public_url = Some(url);
        }
        if let Some(v) = self.oidc_issuer {
            config.oidc_issuer = Some(v);
        }
        if let Some(v) = self.oidc_client_id {
            config.oidc_client_id = Some(v);
        }
        if let Some(v) = self.oidc_client_secret {
            config.oidc_client_secret = Some(Secret::new(v));
        }
        if let Some(v) = self.livekit_api_key {
            config.livekit_api_key = Some(v);
        }
        if let Some(v) = self.livekit_api_secret {
            config.livekit_api_secret = Some(Secret::new(v));
        }
        if let Some(v) = self.oidc_scopes {
            config.oidc_scopes = v;
        }
        if let Some(v) = self.oidc_admin_subjects {
            config.oidc_admin_subjects = v;
        }
        if let Some(v) = self.oidc_admin_claim {
            config.oidc_admin_claim = Some(v);
        }
        if let Some(token) = self.admin_token {
            config.admin_token = Some(Secret::new(token));
        }
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(config)
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PATCHWORK_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: formatting them is a measurable part of every
        // request span, and they are noise in files and journald.
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        );
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Registers SIGINT and SIGTERM handlers now (before the server says it is listening, so an
/// early signal is never lost to the default action) and returns a future that resolves on
/// either.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[allow(clippy::print_stdout)] // printing the bootstrap token and config is this command's job
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    init_tracing(config.log_format);
    let shutdown = shutdown_signal()?;
    println!(
        "patchwork {} effective configuration:",
        env!("CARGO_PKG_VERSION")
    );
    println!("{}", config.redacted_toml());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let opened = patchwork::App::open(config).await?;
    if let Some(token) = &opened.bootstrap_token {
        println!("Bootstrap admin token (shown once, store it now):");
        println!("{token}");
    }
    let listeners = patchwork::Listeners::bind(&opened.state, listener).await?;
    let addr = listeners.http_addr()?;
    println!("listening on http://{addr}");
    tracing::info!(%addr, "listening");
    patchwork::serve(opened.state, listeners, shutdown).await
}

fn parse_scope(text: &str) -> anyhow::Result<Scope> {
    let mut parts = text.splitn(3, ':');
    let (Some(db_id), Some(action)) = (parts.next(), parts.next()) else {
        anyhow::bail!("scope {text:?} must be DB_ID:ACTION[:RESOURCE_PREFIX]");
    };
    Ok(Scope {
        db_id: db_id.to_owned(),
        action: action.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        resource_prefix: parts.next().map(str::to_owned),
    })
}

/// `patchwork sync`: progress on stderr, the outcome as one line on stdout.
#[allow(clippy::print_stdout)] // the CLI's output
async fn sync(
    url: String,
    token: String,
    db: String,
    file: PathBuf,
    on_conflict: String,
    watch: bool,
) -> anyhow::Result<()> {
    use patchwork::sync::client::{SyncOptions, run};
    let mut opts = SyncOptions::new(url, token, db, file);
    opts.on_conflict = on_conflict
        .parse()
        .map_err(|e| anyhow::anyhow!("--on-conflict: {e}"))?;
    opts.watch = watch;
    let stop = opts.stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let summary = run(opts, |line| eprintln!("{line}")).await?;
    for warning in &summary.warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "in step at version {} (pulled {}, pushed {}, {} conflicts settled)",
        summary.version,
        summary.pulled,
        summary.pushed,
        summary.conflicts.len()
    );
    Ok(())
}

#[allow(clippy::print_stdout)] // the CLI's output
fn report_done(what: &str, report: &patchwork::backup::Report, dir: &Path) {
    println!(
        "{what} {} documents, {} blobs, {} bytes in {:.1} s ({})",
        report.documents,
        report.blobs,
        report.bytes,
        report.elapsed.as_secs_f64(),
        dir.display()
    );
}

#[allow(clippy::print_stdout)] // the CLI's output
fn token(command: TokenCommand) -> anyhow::Result<()> {
    init_tracing(LogFormat::Text);
    match command {
        TokenCommand::Create {
            data_dir,
            label,
            admin,
            scopes,
            expires_at,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| parse_scope(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let expires_at = expires_at
                .map(|s| {
                    patchwork::time_fmt::parse_rfc3339(&s)
                        .ok_or_else(|| anyhow::anyhow!("--expires-at {s:?} is not RFC 3339"))
                })
                .transpose()?;
            let new = NewToken {
                label,
                is_admin: admin,
                scopes,
                expires_at,
            };
            patchwork::auth::validate_new_token(&new).map_err(|e| anyhow::anyhow!(e))?;
            let (meta, plaintext) = patchwork::tokens_cli::create(Path::new(&data_dir), &new)?;
            println!("created token {} ({})", meta.id, meta.label);
            println!("{plaintext}");
        }
        TokenCommand::List { data_dir } => {
            for meta in patchwork::tokens_cli::list(&data_dir)? {
                println!("{}", serde_json_line(&meta));
            }
        }
        TokenCommand::Revoke { data_dir, id } => {
            if patchwork::tokens_cli::revoke(&data_dir, &id)? {
                println!("revoked {id}");
            } else {
                anyhow::bail!("no live token with id {id}");
            }
        }
    }
    Ok(())
}

fn serde_json_line(meta: &patchwork::auth::TokenMeta) -> String {
    format!(
        "{}\t{}\tadmin={}\tscopes={}\tcreated={}\texpires={}\trevoked={}",
        meta.id,
        meta.label,
        meta.is_admin,
        meta.scopes
            .iter()
            .map(|s| format!(
                "{}:{}{}",
                s.db_id,
                s.action,
                s.resource_prefix
                    .as_deref()
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default()
            ))
            .collect::<Vec<_>>()
            .join(","),
        meta.created_at,
        meta.expires_at.as_deref().unwrap_or("-"),
        meta.revoked_at.as_deref().unwrap_or("-"),
    )
}

/// One `GET` over a plain TCP connection (no TLS: the check runs next to the server), `Ok` on a
/// `200` status line.
fn healthcheck(addr: &str, path: &str, timeout: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("{path:?} is not a request path"));
    }
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)
        .map_err(|e| format!("connecting to {target}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending: {e}"))?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("reading: {e}")),
        }
        if head[..read].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let line = line.lines().next().unwrap_or_default();
    match line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("{target}{path} answered {line:?}")),
    }
}

#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    // Before any thread exists, let alone a SQLite connection.
    patchwork::sqlite::configure_process();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("patchwork {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Token { command } => token(command),
        Command::Keys {
            command: KeysCommand::Rotate { data_dir },
        } => {
            init_tracing(LogFormat::Text);
            let kid = patchwork::tokens_cli::rotate_invite_key(&data_dir)?;
            #[allow(clippy::print_stdout)] // the CLI's output
            {
                println!(
                    "invite key {kid} now signs new links; key {} is still accepted",
                    kid - 1
                );
            }
            Ok(())
        }
        Command::Sync {
            url,
            token,
            db,
            file,
            on_conflict,
            watch,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(sync(url, token, db, file, on_conflict, watch)),
        Command::Backup { data_dir, out } => {
            let report = patchwork::backup::backup(&data_dir, &out, &|m| eprintln!("backup: {m}"))?;
            report_done("backed up", &report, &out);
            Ok(())
        }
        Command::Healthcheck {
            addr,
            path,
            timeout_secs,
        } => match healthcheck(&addr, &path, Duration::from_secs(timeout_secs)) {
            Ok(()) => Ok(()),
            Err(why) => {
                eprintln!("healthcheck: {why}");
                std::process::exit(1);
            }
        },
        Command::Restore {
            from,
            data_dir,
            force,
        } => {
            let report = patchwork::backup::restore(&from, &data_dir, force, &|m| {
                eprintln!("restore: {m}")
            })?;
            report_done("restored", &report, &data_dir);
            Ok(())
        }
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(*args)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn scopes_parse() {
        let s = parse_scope("chat:pub.publish:room/").unwrap();
        assert_eq!(s.db_id, "chat");
        assert_eq!(s.resource_prefix.as_deref(), Some("room/"));
        assert!(parse_scope("chat").is_err());
        assert!(parse_scope("chat:nope").is_err());
    }
}
