//! Prometheus metrics (`patchwork_*`), rendered by `GET /metrics`.
//!
//! One `Metrics` value is shared by every layer; its fields are cheap atomic handles. Labels are
//! bounded: HTTP metrics use the matched route template, never the raw path.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template from the route table (`unmatched` for the fallback).
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// All metric handles. Clone the `Arc`, not the struct.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub open_documents: Gauge,
    pub mailbox_depth: Gauge,
    pub mailbox_full: Counter,
    pub actor_restarts: Family<ReasonLabel, Counter>,
    pub commits: Counter,
    pub group_commit_batch: Histogram,
    /// WAL checkpoints of documents, by where they ran (`background`, `finish`, `inline`).
    pub wal_checkpoints: Family<ReasonLabel, Counter>,
    /// Queries that shared one read transaction (batches of two or more).
    pub query_batch: Histogram,
    pub failed_writes: Counter,
    pub evictions: Family<ReasonLabel, Counter>,
    /// Statements run through the query API, by class (`read`, `write`, `admin`).
    pub query_statements: Family<ReasonLabel, Counter>,
    pub query_timeouts: Counter,
    pub active_watches: Gauge,
    pub watch_reevaluations: Counter,
    pub watch_suppressed: Counter,
    pub publishes: Counter,
    pub published_bytes: Counter,
    pub publish_batch: Histogram,
    pub subscribers: Gauge,
    pub fanout_lag: Histogram,
    pub slow_disconnects: Counter,
    pub retention_deleted: Counter,
    /// Rows deleted by row-expiry sweeps.
    pub expired_rows: Counter,
    pub stream_waiting: Gauge,
    pub stream_timeouts: Counter,
    pub stream_refused: Counter,
    /// Open HTTP connections (upgraded WebSockets included).
    pub http_connections: Gauge,
    /// Connections closed at accept because a cap was reached (`max_connections`,
    /// `max_connections_per_ip`).
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Connections closed by the server's timeouts (`header`, `idle`).
    pub connection_timeouts: Family<ReasonLabel, Counter>,
    /// Failed `accept` calls (e.g. out of file descriptors), each followed by a back-off.
    pub accept_errors: Counter,
    /// Complete blob objects in the store, and their bytes.
    pub blob_objects: Gauge,
    pub blob_bytes: Gauge,
    /// Blob upload steps by outcome (`init`, `deduplicated`, `put`, `complete`, `hash_mismatch`,
    /// `size_mismatch`, `missing`).
    pub blob_uploads: Family<ReasonLabel, Counter>,
    /// Bytes received by the local data plane (signed `PUT`s) and served (object reads).
    pub blob_bytes_received: Counter,
    pub blob_bytes_served: Counter,
    pub blob_gc_runs: Counter,
    pub blob_gc_deleted: Counter,
    pub blob_gc_deleted_bytes: Counter,
    pub mqtt: MqttMetrics,
    pub presence: PresenceMetrics,
    pub invites: InviteMetrics,
    pub streams: StreamMetrics,
}

/// Long-lived streams of authenticated callers and their ends (`patchwork_streams_*`), and
/// web sessions rotated on a privilege change.
pub struct StreamMetrics {
    /// Open SSE and WebSocket streams (pub/sub, query watches, presence, sync) and byte-relay
    /// waits of authenticated callers, by route.
    pub open: Family<RouteLabel, Gauge>,
    /// Streams ended because their caller stopped being valid, by reason.
    pub ended: Family<ReasonLabel, Counter>,
    /// Web sessions given a new id after the person's grants changed.
    pub sessions_rotated: Counter,
}

impl StreamMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            open: Family::default(),
            ended: Family::default(),
            sessions_rotated: Counter::default(),
        };
        let sub = registry.sub_registry_with_prefix("streams");
        sub.register(
            "open",
            "Open long-lived requests of authenticated callers (SSE and WebSocket streams: \
             pub/sub, query watches, presence, sync; byte-relay waits), by route template",
            m.open.clone(),
        );
        sub.register(
            "ended",
            "Streams ended because the caller stopped being valid, by reason (token_revoked, \
             token_expired, session_ended, grants_changed)",
            m.ended.clone(),
        );
        registry.register(
            "sessions_rotated",
            "Web sessions given a new id after the person's grants changed",
            m.sessions_rotated.clone(),
        );
        m
    }
}

/// Invite links (`patchwork_invites_*`).
pub struct InviteMetrics {
    pub minted: Counter,
    pub redeemed: Counter,
    /// Redemptions refused (tampered, expired, used up, revoked, retired key).
    pub refused: Counter,
}

impl InviteMetrics {
    fn register(registry: &mut Registry) -> Self {
        let sub = registry.sub_registry_with_prefix("invites");
        let m = Self {
            minted: Counter::default(),
            redeemed: Counter::default(),
            refused: Counter::default(),
        };
        sub.register("minted", "Invite links made", m.minted.clone());
        sub.register("redeemed", "Invite links redeemed", m.redeemed.clone());
        sub.register("refused", "Invite redemptions refused", m.refused.clone());
        m
    }
}

/// Presence's metrics (`patchwork_presence_*`).
pub struct PresenceMetrics {
    /// Members present over every document and room.
    pub members: Gauge,
    /// Rooms held in memory (with members, subscribers or their own TTL).
    pub rooms: Gauge,
    /// Heartbeats accepted.
    pub heartbeats: Counter,
    /// Events produced, by kind (`join`, `update`, `leave`), once each whatever the subscribers.
    events: Family<KindLabel, Counter>,
    /// Heartbeats refused by a bound (`room_full`, `too_many_rooms`, `capacity`).
    refusals: Family<ReasonLabel, Counter>,
    /// Open presence SSE streams.
    pub subscribers: Gauge,
    /// Live connections a heartbeat can name (SSE, WebSocket, MQTT).
    pub connections: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

impl PresenceMetrics {
    fn register(registry: &mut Registry) -> Self {
        let sub = registry.sub_registry_with_prefix("presence");
        let m = Self {
            members: Gauge::default(),
            rooms: Gauge::default(),
            heartbeats: Counter::default(),
            events: Family::default(),
            refusals: Family::default(),
            subscribers: Gauge::default(),
            connections: Gauge::default(),
        };
        sub.register("members", "Presence members held", m.members.clone());
        sub.register("rooms", "Presence rooms held in memory", m.rooms.clone());
        sub.register(
            "heartbeats",
            "Presence heartbeats accepted",
            m.heartbeats.clone(),
        );
        sub.register(
            "events",
            "Presence events produced, by kind",
            m.events.clone(),
        );
        sub.register(
            "refusals",
            "Presence heartbeats refused by a bound, by reason",
            m.refusals.clone(),
        );
        sub.register(
            "subscribers",
            "Open presence SSE streams",
            m.subscribers.clone(),
        );
        sub.register(
            "connections",
            "Live connections a presence heartbeat can name",
            m.connections.clone(),
        );
        m
    }

    pub fn event(&self, kind: &'static str) {
        self.events.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// The MQTT adapter's metrics (`patchwork_mqtt_*`).
pub struct MqttMetrics {
    /// Connected clients (past CONNACK).
    pub connections: Gauge,
    /// Accepted CONNECTs.
    pub connects: Counter,
    /// Connections refused or cut, by reason (`auth`, `protocol`, `keep_alive`, …).
    refusals: Family<ReasonLabel, Counter>,
    pub packets_in: Counter,
    /// Messages published over MQTT and stored.
    pub publishes: Counter,
    /// PUBLISH packets refused (topic, scope, size, or a failed commit).
    pub publishes_refused: Counter,
    /// PUBLISH packets sent to subscribers.
    pub deliveries: Counter,
    /// Last-will messages published.
    pub wills: Counter,
}

impl MqttMetrics {
    fn register(registry: &mut Registry) -> Self {
        let sub = registry.sub_registry_with_prefix("mqtt");
        let m = Self {
            connections: Gauge::default(),
            connects: Counter::default(),
            refusals: Family::default(),
            packets_in: Counter::default(),
            publishes: Counter::default(),
            publishes_refused: Counter::default(),
            deliveries: Counter::default(),
            wills: Counter::default(),
        };
        sub.register(
            "connections",
            "Connected MQTT clients",
            m.connections.clone(),
        );
        sub.register("connects", "Accepted MQTT CONNECTs", m.connects.clone());
        sub.register(
            "refusals",
            "MQTT connections refused or cut, by reason",
            m.refusals.clone(),
        );
        sub.register(
            "packets_received",
            "MQTT packets received",
            m.packets_in.clone(),
        );
        sub.register(
            "publishes",
            "Messages published over MQTT and stored",
            m.publishes.clone(),
        );
        sub.register(
            "publishes_refused",
            "MQTT PUBLISH packets refused (topic, scope, size or a failed commit)",
            m.publishes_refused.clone(),
        );
        sub.register(
            "deliveries",
            "PUBLISH packets sent to MQTT subscribers",
            m.deliveries.clone(),
        );
        sub.register(
            "wills",
            "MQTT last-will messages published",
            m.wills.clone(),
        );
        m
    }

    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("patchwork");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            http_requests.clone(),
        );
        let http_latency = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route template",
            http_latency.clone(),
        );
        let open_documents = Gauge::default();
        registry.register(
            "open_documents",
            "Documents with a running actor",
            open_documents.clone(),
        );
        let mailbox_depth = Gauge::default();
        registry.register(
            "mailbox_depth",
            "Requests waiting in document actor mailboxes, summed over documents",
            mailbox_depth.clone(),
        );
        let mailbox_full = Counter::default();
        registry.register(
            "mailbox_full",
            "Requests refused with 503 because a document mailbox was full",
            mailbox_full.clone(),
        );
        let actor_restarts = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "actor_restarts",
            "Document actors that recovered from a panic or were restarted",
            actor_restarts.clone(),
        );
        let commits = Counter::default();
        registry.register(
            "commits",
            "Group commits by document actors",
            commits.clone(),
        );
        let group_commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "group_commit_batch_size",
            "Write requests committed together in one transaction",
            group_commit_batch.clone(),
        );
        let wal_checkpoints = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "wal_checkpoints",
            "Document WAL checkpoints: background (on a thread of their own), finish (the few \
             frames a background one left, on the actor thread) or inline (on the actor thread)",
            wal_checkpoints.clone(),
        );
        let query_batch = Histogram::new(exponential_buckets(2.0, 2.0, 10));
        registry.register(
            "query_batch_size",
            "Read-only queries that waited together and ran in one read transaction",
            query_batch.clone(),
        );
        let failed_writes = Counter::default();
        registry.register(
            "failed_writes",
            "Write requests rolled back to their savepoint",
            failed_writes.clone(),
        );
        let evictions = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "document_evictions",
            "Document actors closed by the registry, by reason",
            evictions.clone(),
        );
        let query_statements = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "query_statements",
            "Statements run through the query API, by class (reason label)",
            query_statements.clone(),
        );
        let query_timeouts = Counter::default();
        registry.register(
            "query_timeouts",
            "Statements interrupted at their time limit",
            query_timeouts.clone(),
        );
        let active_watches = Gauge::default();
        registry.register(
            "active_watches",
            "Open query watches",
            active_watches.clone(),
        );
        let watch_reevaluations = Counter::default();
        registry.register(
            "watch_reevaluations",
            "Watch re-evaluations after a change to a table they read",
            watch_reevaluations.clone(),
        );
        let watch_suppressed = Counter::default();
        registry.register(
            "watch_suppressed_updates",
            "Re-evaluations (or resumed snapshots) not sent because the result hash was unchanged",
            watch_suppressed.clone(),
        );
        let publishes = Counter::default();
        registry.register(
            "publishes",
            "Messages stored (duplicates excluded)",
            publishes.clone(),
        );
        let published_bytes = Counter::default();
        registry.register(
            "published_bytes",
            "Payload bytes published",
            published_bytes.clone(),
        );
        let publish_batch = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "publish_request_size",
            "Messages per publish request",
            publish_batch.clone(),
        );
        let subscribers = Gauge::default();
        registry.register(
            "subscribers",
            "Connected SSE and WebSocket message subscribers",
            subscribers.clone(),
        );
        let fanout_lag = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
        registry.register(
            "fanout_lag_seconds",
            "Time from a message's commit stamp to its hand-off to a live subscriber",
            fanout_lag.clone(),
        );
        let slow_disconnects = Counter::default();
        registry.register(
            "slow_consumer_disconnects",
            "Subscribers cut off because they fell too far behind",
            slow_disconnects.clone(),
        );
        let retention_deleted = Counter::default();
        registry.register(
            "retention_deleted",
            "Messages deleted by retention sweeps",
            retention_deleted.clone(),
        );
        let expired_rows = Counter::default();
        registry.register(
            "expired_rows",
            "Rows deleted by row-expiry sweeps",
            expired_rows.clone(),
        );
        let stream_waiting = Gauge::default();
        registry.register(
            "stream_waiting",
            "Stream parties waiting for a counterpart",
            stream_waiting.clone(),
        );
        let stream_timeouts = Counter::default();
        registry.register(
            "stream_timeouts",
            "Stream parties answered 504 after the wait timeout",
            stream_timeouts.clone(),
        );
        let stream_refused = Counter::default();
        registry.register(
            "stream_refused",
            "Stream parties refused with 503 because a waiting-party cap was reached",
            stream_refused.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "Open HTTP connections (upgraded WebSockets included)",
            http_connections.clone(),
        );
        let connections_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "http_connections_refused",
            "Connections closed at accept because a connection cap was reached, by cap",
            connections_refused.clone(),
        );
        let connection_timeouts = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "http_connection_timeouts",
            "Connections closed by the header read (header) or idle keep-alive (idle) timeout",
            connection_timeouts.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "accept_errors",
            "Failed accepts (e.g. out of file descriptors), each followed by a short back-off",
            accept_errors.clone(),
        );
        let blob_objects = Gauge::default();
        registry.register(
            "blob_objects",
            "Complete blob objects in the store",
            blob_objects.clone(),
        );
        let blob_bytes = Gauge::default();
        registry.register(
            "blob_bytes",
            "Bytes of the complete blob objects in the store",
            blob_bytes.clone(),
        );
        let blob_uploads = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "blob_uploads",
            "Blob upload steps by outcome (reason label)",
            blob_uploads.clone(),
        );
        let blob_bytes_received = Counter::default();
        registry.register(
            "blob_received_bytes",
            "Bytes written by signed blob uploads (local data plane)",
            blob_bytes_received.clone(),
        );
        let blob_bytes_served = Counter::default();
        registry.register(
            "blob_served_bytes",
            "Blob bytes served by object reads and /o/",
            blob_bytes_served.clone(),
        );
        let blob_gc_runs = Counter::default();
        registry.register("blob_gc_runs", "Blob GC passes", blob_gc_runs.clone());
        let blob_gc_deleted = Counter::default();
        registry.register(
            "blob_gc_deleted",
            "Blob objects deleted by GC",
            blob_gc_deleted.clone(),
        );
        let blob_gc_deleted_bytes = Counter::default();
        registry.register(
            "blob_gc_deleted_bytes",
            "Bytes of the blob objects deleted by GC",
            blob_gc_deleted_bytes.clone(),
        );
        let mqtt = MqttMetrics::register(&mut registry);
        let invites = InviteMetrics::register(&mut registry);
        let presence = PresenceMetrics::register(&mut registry);
        let streams = StreamMetrics::register(&mut registry);
        Arc::new(Self {
            mqtt,
            invites,
            presence,
            streams,
            blob_objects,
            blob_bytes,
            blob_uploads,
            blob_bytes_received,
            blob_bytes_served,
            blob_gc_runs,
            blob_gc_deleted,
            blob_gc_deleted_bytes,
            http_connections,
            connections_refused,
            connection_timeouts,
            accept_errors,
            stream_refused,
            stream_waiting,
            stream_timeouts,
            publishes,
            published_bytes,
            publish_batch,
            subscribers,
            fanout_lag,
            slow_disconnects,
            retention_deleted,
            expired_rows,
            active_watches,
            watch_reevaluations,
            watch_suppressed,
            query_statements,
            query_timeouts,
            registry,
            http_requests,
            http_latency,
            open_documents,
            mailbox_depth,
            mailbox_full,
            actor_restarts,
            commits,
            group_commit_batch,
            wal_checkpoints,
            query_batch,
            failed_writes,
            evictions,
        })
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }

    pub fn blob_upload(&self, reason: &'static str) {
        self.blob_uploads
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn actor_restart(&self, reason: &'static str) {
        self.actor_restarts
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}
