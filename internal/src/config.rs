//! Service configuration. `Config::default()` is the embedded default: a local `./data` dir,
//! no OIDC, a bootstrap admin token minted on first start. The CLI (`cmd/`) layers a TOML file,
//! `PATCHWORK_*` environment variables and flags on top; the library never parses argv.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// S3's smallest part (all but the last) and largest part of a multipart upload.
const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// A trusted proxy in `trusted_proxies`: one address (`10.0.0.9`, `::1`) or a network in CIDR
/// notation (`10.0.0.0/8`, `fd00::/8`), for load balancers whose addresses come from a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProxyNet(ipnet::IpNet);

impl ProxyNet {
    /// Whether `ip` (IPv4-mapped IPv6 taken as the IPv4 address) is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

/// Whether `ip` is one of the `trusted` proxies.
pub fn is_trusted(trusted: &[ProxyNet], ip: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

impl std::str::FromStr for ProxyNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let net = if s.contains('/') {
            s.parse::<ipnet::IpNet>().ok()
        } else {
            s.parse::<IpAddr>().ok().map(ipnet::IpNet::from)
        };
        let Some(net) = net else {
            return Err(format!(
                "not an IP address or a CIDR network (10.0.0.0/8, fd00::/8): {s:?}"
            ));
        };
        // Every address in a trusted network may claim any client IP: a typo must not widen it.
        if net != net.trunc() {
            return Err(format!(
                "{s:?} has host bits set: did you mean {} (the whole network) or a single address?",
                net.trunc()
            ));
        }
        if net.prefix_len() == 0 {
            return Err(format!(
                "{s:?} would trust every address: list the proxies' addresses or their network"
            ));
        }
        // An IPv4-mapped entry (`::ffff:10.0.0.9`, `::ffff:10.0.0.0/104`) is its IPv4 network,
        // as peers are compared by their IPv4 address.
        let net = match net {
            ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(ipnet::IpNet::V4)
                    .unwrap_or(net),
                None => net,
            },
            other => other,
        };
        Ok(ProxyNet(net))
    }
}

impl TryFrom<String> for ProxyNet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ProxyNet> for String {
    fn from(p: ProxyNet) -> String {
        p.to_string()
    }
}

impl fmt::Display for ProxyNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A single address prints as the address.
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// A secret value: never printed by `Debug`, serialized as `"[redacted]"`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// SQLite `synchronous` setting for documents and the service database.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Durable against process crashes (`kill -9`); a power loss may lose the last commits.
    #[default]
    Normal,
    /// Every commit is fsynced before it is acknowledged.
    Full,
}

impl Synchronous {
    pub fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

impl std::str::FromStr for Synchronous {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Ok(Synchronous::Normal),
            "full" => Ok(Synchronous::Full),
            other => Err(format!("synchronous must be normal or full, not {other:?}")),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format must be text or json, not {other:?}")),
        }
    }
}

/// Where blob objects are stored.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BlobStore {
    /// The local filesystem under `{data_dir}/blobs/` (fsync on).
    #[default]
    Local,
    /// An S3-compatible service (`s3_*` settings).
    S3,
}

impl std::str::FromStr for BlobStore {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "local" => Ok(BlobStore::Local),
            "s3" => Ok(BlobStore::S3),
            other => Err(format!("blob_store must be local or s3, not {other:?}")),
        }
    }
}

/// Everything the service reads at start. Field names are the TOML keys; the env variable is
/// `PATCHWORK_` + the upper-cased name.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Holds `service.db`, `secret.key` and `documents/`.
    pub data_dir: PathBuf,
    /// SQLite `synchronous` for every database.
    pub synchronous: Synchronous,
    /// SQLite `busy_timeout`, for the rare moment two connections meet on one file.
    pub busy_timeout_ms: u64,
    /// WAL pages after which a document's WAL is copied into its database file: by a
    /// background thread, the actor finishing the copy and starting the WAL over at about twice
    /// this (`registry/checkpoint.rs`; `service.db` uses it as SQLite's `wal_autocheckpoint`).
    /// Larger: fewer checkpoints, each copying a page that many commits rewrote only once (the
    /// header, `commit_seq`, index leaves), at the price of a larger WAL file per busy open
    /// document (2–4× this many 4 KiB pages, truncated when it closes).
    pub wal_autocheckpoint_pages: u32,
    /// Bounded mailbox of each document actor; a full mailbox answers `503 overloaded`.
    pub mailbox_capacity: usize,
    /// Most write requests committed together in one group commit.
    pub max_batch: usize,
    /// A document actor with no request for this long is closed.
    pub idle_timeout_secs: u64,
    /// Cap on open documents; the least recently used idle ones are closed to make room.
    pub max_open_documents: usize,
    /// How long in-flight requests may run after SIGTERM before they are cut off.
    pub shutdown_grace_secs: u64,
    /// Default cap on request bodies read whole (JSON routes).
    pub max_body_bytes: usize,
    /// Bootstrap admin token to use instead of minting one (`PATCHWORK_ADMIN_TOKEN`).
    pub admin_token: Option<Secret>,
    /// `text` or `json` logs.
    pub log_format: LogFormat,
    /// Requests per second over the whole server (0 = off).
    pub rate_limit_global_rps: u32,
    /// Burst of the global limiter (0 = same as rps).
    pub rate_limit_global_burst: u32,
    /// Requests per second per token, admin tokens included (0 = off).
    pub rate_limit_token_rps: u32,
    pub rate_limit_token_burst: u32,
    /// Requests per second per client IP on anonymous routes (0 = off).
    pub rate_limit_ip_rps: u32,
    pub rate_limit_ip_burst: u32,
    /// Proxies whose `X-Forwarded-For` is believed: addresses or CIDR networks.
    pub trusted_proxies: Vec<ProxyNet>,
    /// Longest a statement may run before it is interrupted (`504`).
    pub query_timeout_ms: u64,
    /// Most rows a statement returns (`truncated: true` past it).
    pub query_max_rows: usize,
    /// Largest JSON result of one request (`413` past it).
    pub query_max_result_bytes: usize,
    /// Seconds between message retention sweeps.
    pub retention_sweep_seconds: u64,
    /// Serve the anonymous legacy stream routes `/public/...` and `/p/...`.
    pub streams_public: bool,
    /// Longest a stream party waits for its counterpart before a `504`.
    pub stream_wait_timeout_secs: u64,
    /// Longest a double-clutch requester waits for the answer on the switch channel.
    pub stream_switch_timeout_secs: u64,
    /// Cap on parties waiting on one channel.
    pub stream_max_waiters_per_channel: usize,
    /// Cap on parties waiting on all channels.
    pub stream_max_waiters_total: usize,
    /// Longest lease a client may ask for.
    pub lease_max_ttl_secs: u64,
    /// Largest webhook body stored (`413` past it).
    pub webhook_max_body_bytes: usize,
    /// A connection must deliver a complete request head this long after it was accepted or
    /// after its first byte of a request arrived; else it is closed.
    pub header_read_timeout_secs: u64,
    /// A keep-alive connection with no request in flight and no bytes arriving is closed after
    /// this long (long-lived SSE responses and WebSockets are in flight, never idle).
    pub http_idle_timeout_secs: u64,
    /// A pub/sub WebSocket is pinged this often, and closed when nothing (not even a pong) came
    /// from its client for three times as long: proxies see traffic, dead peers are dropped.
    pub ws_ping_secs: u64,
    /// While a handler waits for more of a request body, the connection is closed after this
    /// long without a byte (a slow or stalled upload cannot hold a connection forever).
    pub request_body_timeout_secs: u64,
    /// While response bytes wait to be written and the socket accepts none of them, the
    /// connection is closed after this long (a client that stops reading — an SSE subscriber
    /// that never reads, a slow-read attack — cannot hold its connection and what is queued
    /// for it forever).
    pub response_write_timeout_secs: u64,
    /// Cap on open HTTP connections (WebSockets included); lowered at start to what
    /// `RLIMIT_NOFILE` leaves after the open-document budget. Connections over it are closed.
    pub max_connections: usize,
    /// Cap on open HTTP connections per client IP (the TCP peer; IPv6 per /64). Peers listed
    /// in `trusted_proxies` are exempt (only `max_connections` applies to them).
    pub max_connections_per_ip: usize,
    /// The URL people reach the service at (e.g. `https://pw.example.com`): the OIDC redirect
    /// URL is `{public_url}/auth/callback`, and the session cookie is `Secure` when it is https.
    pub public_url: Option<String>,
    /// The OpenID Connect issuer (discovery at `{issuer}/.well-known/openid-configuration`).
    /// OIDC login is off while it is unset (token login is the way in then).
    pub oidc_issuer: Option<String>,
    pub oidc_client_id: Option<String>,
    pub oidc_client_secret: Option<Secret>,
    /// Scopes asked for besides `openid` (add the one that brings the admin claim, e.g.
    /// `groups`, if the provider needs it).
    pub oidc_scopes: Vec<String>,
    /// Subjects (`sub`) who are admins.
    pub oidc_admin_subjects: Vec<String>,
    /// `claim=value`: people whose ID token has this claim equal to (or, for a list, containing)
    /// the value are admins, e.g. `groups=patchwork-admins`.
    pub oidc_admin_claim: Option<String>,
    /// Sync's change log keeps at least this many versions…
    pub sync_retention_versions: u64,
    /// …and every version younger than this many seconds (whichever keeps more).
    pub sync_retention_secs: u64,
    /// A web session ends after this long without use.
    pub session_idle_secs: u64,
    /// A web session ends this long after sign-in, however much it is used.
    pub session_absolute_secs: u64,
    /// Largest blob `init-upload` accepts, in bytes.
    pub blob_max_bytes: u64,
    /// Lifetime of the signed upload and read URLs handed out for blobs.
    pub blob_url_ttl_secs: u64,
    /// Uploads larger than this are also offered in parts of this size (S3 multipart with
    /// presigned parts; at least 5 MiB, S3's smallest part).
    pub blob_part_bytes: u64,
    /// How long `complete-upload` (and a `claim` without `ttl_secs`) claims a blob.
    pub blob_claim_ttl_secs: u64,
    /// Blob GC never deletes an object completed less than this long ago.
    pub blob_gc_grace_secs: u64,
    /// Seconds between blob GC passes.
    pub blob_gc_interval_secs: u64,
    /// `local` (default) or `s3`.
    pub blob_store: BlobStore,
    /// S3 endpoint URL (e.g. `http://127.0.0.1:9000`); unset: AWS for `s3_region`.
    pub s3_endpoint: Option<String>,
    pub s3_bucket: Option<String>,
    pub s3_region: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<Secret>,
    /// Path-style requests (`{endpoint}/{bucket}/{key}`) instead of virtual-hosted style.
    pub s3_path_style: bool,
    /// The endpoint clients reach S3 at, used for the presigned URLs handed to them (the host
    /// is part of the signature); unset: `s3_endpoint`.
    pub s3_public_endpoint: Option<String>,
    /// Address of the MQTT listener (MQTT 3.1.1 and 5); unset: no MQTT.
    pub mqtt_listen: Option<SocketAddr>,
    /// PEM certificate chain and private key: the MQTT listener speaks TLS (MQTTS) when both
    /// are set.
    pub mqtt_tls_cert: Option<PathBuf>,
    pub mqtt_tls_key: Option<PathBuf>,
    /// Largest MQTT packet a client may send (and the largest the server sends it).
    pub mqtt_max_packet_bytes: usize,
    /// QoS 1 messages sent to one MQTT connection and not yet acknowledged (also the receive
    /// maximum offered to MQTT 5 clients).
    pub mqtt_max_inflight: u16,
    /// Longest keep-alive a client may ask for (a client asking for none, or more, gets this).
    pub mqtt_max_keep_alive_secs: u16,
    /// How long a persistent MQTT session is kept while its client is away.
    pub mqtt_session_expiry_secs: u64,
    /// Open MQTT connections at most.
    pub mqtt_max_connections: usize,
    /// Open MQTT connections per client IP at most (the TCP peer; IPv6 per /64; peers in
    /// `trusted_proxies` only count against `mqtt_max_connections`), so one client cannot take
    /// every connection.
    pub mqtt_max_connections_per_ip: usize,
    /// Seconds a subscriber may make no progress (no PUBACK, nothing read off its socket)
    /// while messages wait for it before it is disconnected as stuck. A slow subscriber is
    /// throttled meanwhile: messages wait in the database, not in memory.
    pub mqtt_stall_secs: u64,
    /// Proof-of-work difficulty (leading zero bits) required to redeem an invite; 0 = off.
    pub pow_difficulty: u8,
    /// Proof-of-work difficulty required on the anonymous legacy stream routes; 0 = off.
    pub pow_streams_difficulty: u8,
    /// Seconds a proof-of-work challenge stays valid.
    pub pow_ttl_secs: u64,
    /// Lifetime of the machine token an invite redemption mints.
    pub invite_token_ttl_secs: u64,
    /// Seconds a presence member stays without a heartbeat, unless its room sets its own TTL.
    pub presence_ttl_secs: u64,
    /// Members per presence room at most (`409 room_full` beyond).
    pub presence_max_members_per_room: usize,
    /// Presence rooms per document at most (`409 too_many_rooms` beyond).
    pub presence_max_rooms_per_document: usize,
    /// Presence members over every document at most (`503 overloaded` beyond).
    pub presence_max_members_total: usize,
    /// LiveKit API key: the `iss` of the media room tokens `POST /media/token` mints (the route
    /// answers `503 media_not_configured` while this or the secret is unset).
    pub livekit_api_key: Option<String>,
    /// LiveKit API secret: the HS256 key of those tokens.
    pub livekit_api_secret: Option<Secret>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            synchronous: Synchronous::Normal,
            busy_timeout_ms: 5_000,
            wal_autocheckpoint_pages: 4_000,
            mailbox_capacity: 1_024,
            max_batch: 512,
            idle_timeout_secs: 300,
            max_open_documents: 1_024,
            shutdown_grace_secs: 10,
            max_body_bytes: 2 * 1024 * 1024,
            admin_token: None,
            log_format: LogFormat::Text,
            rate_limit_global_rps: 0,
            rate_limit_global_burst: 0,
            rate_limit_token_rps: 0,
            rate_limit_token_burst: 0,
            rate_limit_ip_rps: 10,
            rate_limit_ip_burst: 20,
            trusted_proxies: Vec::new(),
            query_timeout_ms: 5_000,
            query_max_rows: 5_000,
            query_max_result_bytes: 1024 * 1024,
            retention_sweep_seconds: 60,
            streams_public: true,
            stream_wait_timeout_secs: 120,
            stream_switch_timeout_secs: 30,
            stream_max_waiters_per_channel: 256,
            stream_max_waiters_total: 10_000,
            lease_max_ttl_secs: 3_600,
            webhook_max_body_bytes: 1024 * 1024,
            header_read_timeout_secs: 10,
            http_idle_timeout_secs: 60,
            ws_ping_secs: 30,
            request_body_timeout_secs: 60,
            response_write_timeout_secs: 30,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            public_url: None,
            oidc_issuer: None,
            oidc_client_id: None,
            oidc_client_secret: None,
            oidc_scopes: vec!["email".into(), "profile".into()],
            oidc_admin_subjects: Vec::new(),
            oidc_admin_claim: None,
            sync_retention_versions: 10_000,
            sync_retention_secs: 7 * 86_400,
            session_idle_secs: 86_400,
            session_absolute_secs: 604_800,
            blob_max_bytes: 5 * 1024 * 1024 * 1024,
            blob_url_ttl_secs: 900,
            blob_part_bytes: 64 * 1024 * 1024,
            blob_claim_ttl_secs: 3_600,
            blob_gc_grace_secs: 86_400,
            blob_gc_interval_secs: 3_600,
            blob_store: BlobStore::Local,
            s3_endpoint: None,
            s3_bucket: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_path_style: false,
            s3_public_endpoint: None,
            mqtt_listen: None,
            mqtt_tls_cert: None,
            mqtt_tls_key: None,
            mqtt_max_packet_bytes: 1024 * 1024 + 64 * 1024,
            mqtt_max_inflight: 100,
            mqtt_max_keep_alive_secs: 600,
            mqtt_session_expiry_secs: 7 * 86_400,
            mqtt_max_connections: 10_000,
            mqtt_max_connections_per_ip: 256,
            mqtt_stall_secs: 30,
            pow_difficulty: 0,
            pow_streams_difficulty: 0,
            pow_ttl_secs: 300,
            invite_token_ttl_secs: 86_400,
            presence_ttl_secs: 60,
            presence_max_members_per_room: 1_000,
            presence_max_rooms_per_document: 1_000,
            presence_max_members_total: 100_000,
            livekit_api_key: None,
            livekit_api_secret: None,
        }
    }
}

impl Config {
    /// Rejects settings the service cannot run with, with a message naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.presence_ttl_secs == 0
            || self.presence_ttl_secs > 86_400
            || self.presence_max_members_per_room == 0
            || self.presence_max_rooms_per_document == 0
            || self.presence_max_members_total == 0
        {
            return Err("presence_ttl_secs must be between 1 and 86400, and \
                 presence_max_members_per_room, presence_max_rooms_per_document and \
                 presence_max_members_total at least 1"
                .into());
        }
        if !(100..=1_000_000).contains(&self.wal_autocheckpoint_pages) {
            return Err("wal_autocheckpoint_pages must be between 100 and 1000000".into());
        }
        if self.mailbox_capacity == 0 {
            return Err("mailbox_capacity must be at least 1".into());
        }
        if self.max_batch == 0 {
            return Err("max_batch must be at least 1".into());
        }
        if self.max_open_documents == 0 {
            return Err("max_open_documents must be at least 1".into());
        }
        if self.query_timeout_ms == 0
            || self.query_max_rows == 0
            || self.query_max_result_bytes == 0
        {
            return Err(
                "query_timeout_ms, query_max_rows and query_max_result_bytes must be at least 1"
                    .into(),
            );
        }
        if self.stream_wait_timeout_secs == 0
            || self.stream_switch_timeout_secs == 0
            || self.stream_max_waiters_per_channel == 0
            || self.stream_max_waiters_total == 0
        {
            return Err("stream timeouts and waiter caps must be at least 1".into());
        }
        if self.retention_sweep_seconds == 0 {
            return Err("retention_sweep_seconds must be at least 1".into());
        }
        if self.idle_timeout_secs == 0 {
            return Err("idle_timeout_secs must be at least 1".into());
        }
        if self.header_read_timeout_secs == 0
            || self.http_idle_timeout_secs == 0
            || self.request_body_timeout_secs == 0
        {
            return Err("header_read_timeout_secs, http_idle_timeout_secs and \
                 request_body_timeout_secs must be at least 1"
                .into());
        }
        if self.mqtt_max_packet_bytes < 1024
            || self.mqtt_max_inflight == 0
            || self.mqtt_max_keep_alive_secs == 0
            || self.mqtt_max_connections == 0
            || self.mqtt_max_connections_per_ip == 0
            || self.mqtt_stall_secs == 0
        {
            return Err(
                "mqtt_max_packet_bytes must be at least 1024, and mqtt_max_inflight, \
                 mqtt_max_keep_alive_secs, mqtt_max_connections, mqtt_max_connections_per_ip \
                 and mqtt_stall_secs at least 1"
                    .into(),
            );
        }
        if self.pow_difficulty > 40 || self.pow_streams_difficulty > 40 || self.pow_ttl_secs == 0 {
            return Err(
                "pow_difficulty and pow_streams_difficulty must be at most 40 (bits), and \
                 pow_ttl_secs at least 1"
                    .into(),
            );
        }
        if self.invite_token_ttl_secs == 0 {
            return Err("invite_token_ttl_secs must be at least 1".into());
        }
        if self.mqtt_tls_cert.is_some() != self.mqtt_tls_key.is_some() {
            return Err("mqtt_tls_cert and mqtt_tls_key go together".into());
        }
        if self.response_write_timeout_secs == 0 {
            return Err("response_write_timeout_secs must be at least 1".into());
        }
        if self.ws_ping_secs == 0 {
            return Err("ws_ping_secs must be at least 1".into());
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err("max_connections and max_connections_per_ip must be at least 1".into());
        }
        if self.session_idle_secs == 0 || self.session_absolute_secs == 0 {
            return Err("session_idle_secs and session_absolute_secs must be at least 1".into());
        }
        if self.blob_max_bytes == 0
            || self.blob_url_ttl_secs == 0
            || self.blob_claim_ttl_secs == 0
            || self.blob_gc_interval_secs == 0
        {
            return Err(
                "blob_max_bytes, blob_url_ttl_secs, blob_claim_ttl_secs and \
                 blob_gc_interval_secs must be at least 1"
                    .into(),
            );
        }
        if !(MIN_PART_BYTES..=MAX_PART_BYTES).contains(&self.blob_part_bytes) {
            return Err(format!(
                "blob_part_bytes must be from {MIN_PART_BYTES} (5 MiB) to {MAX_PART_BYTES} (5 GiB)"
            ));
        }
        if self.blob_store == BlobStore::S3 {
            let missing: Vec<&str> = [
                ("s3_bucket", self.s3_bucket.as_deref()),
                ("s3_region", self.s3_region.as_deref()),
                ("s3_access_key_id", self.s3_access_key_id.as_deref()),
                (
                    "s3_secret_access_key",
                    self.s3_secret_access_key.as_ref().map(Secret::expose),
                ),
            ]
            .into_iter()
            .filter(|(_, v)| v.is_none_or(str::is_empty))
            .map(|(k, _)| k)
            .collect();
            if !missing.is_empty() {
                return Err(format!("blob_store = \"s3\" needs {}", missing.join(", ")));
            }
        }
        for (key, url) in [
            ("s3_endpoint", &self.s3_endpoint),
            ("s3_public_endpoint", &self.s3_public_endpoint),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(format!(
                    "{key} must start with http:// or https://, not {url:?}"
                ));
            }
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "public_url must start with http:// or https://, not {url:?}"
            ));
        }
        if self.oidc_issuer.is_some() {
            if self.oidc_client_id.as_deref().is_none_or(str::is_empty) {
                return Err("oidc_client_id is required when oidc_issuer is set".into());
            }
            if self.public_url.is_none() {
                return Err(
                    "public_url is required when oidc_issuer is set (the redirect URL is \
                     {public_url}/auth/callback)"
                        .into(),
                );
            }
        }
        if let Some(claim) = &self.oidc_admin_claim
            && claim
                .split_once('=')
                .is_none_or(|(k, v)| k.is_empty() || v.is_empty())
        {
            return Err(format!(
                "oidc_admin_claim must be claim=value, not {claim:?}"
            ));
        }
        if let Some(token) = &self.admin_token
            && token.expose().len() < 16
        {
            return Err("admin_token must be at least 16 characters".into());
        }
        Ok(())
    }

    /// Whether the session cookie gets `Secure` (the service is reached over https).
    pub fn secure_cookies(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn documents_dir(&self) -> PathBuf {
        self.data_dir.join("documents")
    }

    /// Where the local blob store keeps its objects (`backup` copies it recursively).
    pub fn blobs_dir(&self) -> PathBuf {
        self.data_dir.join("blobs")
    }

    /// The effective configuration as TOML, secrets redacted; printed at start.
    pub fn redacted_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# config could not be printed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_when_printed() {
        let config = Config {
            admin_token: Some(Secret::new("super-secret-admin-token")),
            ..Config::default()
        };
        let printed = config.redacted_toml();
        assert!(!printed.contains("super-secret"), "{printed}");
        assert!(printed.contains("[redacted]"));
        assert!(!format!("{config:?}").contains("super-secret"));
    }

    #[test]
    fn s3_settings_are_validated() {
        let mut config: Config =
            toml::from_str("blob_store = \"s3\"\ns3_bucket = \"b\"\n").unwrap();
        let err = config.validate().unwrap_err();
        assert!(
            err.contains("s3_region") && err.contains("s3_secret_access_key"),
            "{err}"
        );
        config.s3_region = Some("us-east-1".into());
        config.s3_access_key_id = Some("AK".into());
        config.s3_secret_access_key = Some(Secret::new("SK-very-secret"));
        config.validate().unwrap();
        assert!(!config.redacted_toml().contains("SK-very-secret"));
        config.s3_public_endpoint = Some("s3.example.com".into());
        assert!(config.validate().is_err());
        assert_eq!(Config::default().blob_store, BlobStore::Local);
    }

    #[test]
    fn wal_autocheckpoint_pages_is_bounded() {
        for (pages, ok) in [(99, false), (100, true), (4_000, true), (1_000_001, false)] {
            let config = Config {
                wal_autocheckpoint_pages: pages,
                ..Config::default()
            };
            match config.validate() {
                Ok(()) => assert!(ok, "{pages} accepted"),
                Err(e) => assert!(
                    !ok && e.contains("wal_autocheckpoint_pages"),
                    "{pages}: {e}"
                ),
            }
        }
    }

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let parsed: Config = toml::from_str("synchronous = \"full\"\nmax_batch = 7\n").unwrap();
        assert_eq!(parsed.synchronous, Synchronous::Full);
        assert_eq!(parsed.max_batch, 7);
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
    }
}
