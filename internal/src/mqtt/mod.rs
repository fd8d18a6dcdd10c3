//! The MQTT adapter: MQTT 3.1.1 and 5 clients publish and subscribe to the same durable messages
//! as HTTP, SSE and WebSocket clients (`db/{db_id}/{topic}` ↔ a document's topic).
//!
//! rumqttd supplies the protocol codec only ([`codec`]); the connection layer is ours
//! ([`session`]) because a ready-made broker cannot keep this contract: every SUBSCRIBE filter
//! and PUBLISH topic is checked against the token's scopes (as SSE and `POST /messages` check
//! them), a PUBACK leaves only after the message is committed (through
//! [`crate::pubsub::publish_messages`], the one publish path), deliveries come from the pub/sub
//! hub (replay, then live, with no gap), and retained messages and persistent sessions live in
//! SQLite ([`store`], `_patchwork_retained`), so they survive restarts.
//!
//! Listener: `mqtt_listen` (off by default), TLS when `mqtt_tls_cert`/`mqtt_tls_key` are set,
//! at most `mqtt_max_connections` connections, `mqtt_max_connections_per_ip` of them from one
//! client IP ([`crate::conn_limits`], as for HTTP).

pub mod codec;
pub mod session;
pub mod store;
pub mod topic;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::gauge::Gauge;

use crate::conn_limits::ConnLimits;
use crate::ops::metrics::Metrics;
use crate::state::AppState;

/// Binds the MQTT listener if `mqtt_listen` is set (and records its address in the state).
pub async fn bind(state: &AppState) -> anyhow::Result<Option<(TcpListener, Option<Tls>)>> {
    let Some(addr) = state.config.mqtt_listen else {
        return Ok(None);
    };
    let tls = match (&state.config.mqtt_tls_cert, &state.config.mqtt_tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the MQTT listener on {addr}"))?;
    let bound = listener.local_addr()?;
    let _ = state.mqtt_addr.set(bound);
    tracing::info!(addr = %bound, tls = tls.is_some(), "MQTT listening");
    Ok(Some((listener, tls)))
}

pub type Tls = tokio_rustls::TlsAcceptor;

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading mqtt_tls_cert {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading mqtt_tls_key {}", key.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("mqtt_tls_cert / mqtt_tls_key")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts MQTT connections until shutdown, then waits (up to `grace`) for them to end, so
/// their sessions are saved before `service.db` closes.
pub async fn run(state: AppState, listener: TcpListener, tls: Option<Tls>, grace: Duration) {
    let takeovers = Arc::new(Takeover::default());
    let limits = ConnLimits::new(
        state.config.mqtt_max_connections,
        state.config.mqtt_max_connections_per_ip,
        &state.config.trusted_proxies,
        // Open sockets; `patchwork_mqtt_connections` counts the connected clients.
        Gauge::default(),
    );
    let mut tasks = JoinSet::new();
    tasks.spawn(sweeper(state.clone()));
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = state.shutdown.cancelled() => break,
        };
        // Reap finished connection tasks as we go.
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(ok) => {
                backoff = Duration::from_millis(10);
                ok
            }
            Err(e) => {
                tracing::warn!(error = %e, "MQTT accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Over a cap the socket is closed before anything is read from it.
        let slot = match limits.try_acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                state.metrics.mqtt.refused(refused.label());
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (state, takeovers, tls) = (state.clone(), takeovers.clone(), tls.clone());
        tasks.spawn(async move {
            let _slot = slot;
            match tls {
                None => session::run(state, stream, takeovers).await,
                Some(tls) => {
                    let timeout = Duration::from_secs(state.config.header_read_timeout_secs);
                    match tokio::time::timeout(timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => session::run(state, stream, takeovers).await,
                        _ => {
                            tracing::debug!(%peer, "MQTT TLS handshake failed");
                            state.metrics.mqtt.refused("tls");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("MQTT connections did not end within the grace period");
        tasks.abort_all();
    }
}

/// Deletes expired persistent sessions: at start (after marking every session away: no
/// connection holds one yet) and every ten minutes.
async fn sweeper(state: AppState) {
    let first = state
        .service
        .write(|c| Ok(store::mark_all_disconnected(c)?))
        .await;
    if let Err(e) = first {
        tracing::warn!(error = %e, "MQTT sessions: marking them disconnected failed");
    }
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        match state.service.write(|c| Ok(store::sweep(c)?)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "expired MQTT sessions deleted"),
            Err(e) => tracing::warn!(error = %e, "MQTT session sweep failed"),
        }
    }
}

/// Counts a connected (past CONNACK) client in the `mqtt_connections` gauge.
pub(crate) struct LiveCount(Arc<Metrics>);

impl LiveCount {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        metrics.mqtt.connections.inc();
        Self(metrics)
    }
}

impl Drop for LiveCount {
    fn drop(&mut self) {
        self.0.mqtt.connections.dec();
    }
}

/// (token id, client id) → the connection holding that session. A new connection with the same
/// key takes the session over: the old one is stopped and saves its state first.
#[derive(Default)]
pub(crate) struct Takeover {
    live: Mutex<HashMap<(String, String), Holder>>,
    next: AtomicU64,
}

struct Holder {
    id: u64,
    stop: CancellationToken,
    done: watch::Receiver<bool>,
}

/// A connection's hold on its session key.
pub(crate) struct Held {
    id: u64,
    done: watch::Sender<bool>,
}

impl Takeover {
    /// Claims `key`, stopping the connection that held it and waiting (briefly) until it ended.
    pub(crate) async fn claim(&self, key: (String, String)) -> (CancellationToken, Held) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let (done_tx, done_rx) = watch::channel(false);
        let previous = self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key,
            Holder {
                id,
                stop: stop.clone(),
                done: done_rx,
            },
        );
        if let Some(mut previous) = previous {
            previous.stop.cancel();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), previous.done.wait_for(|done| *done))
                    .await;
        }
        (stop, Held { id, done: done_tx })
    }

    /// Releases `key` (unless a newer connection holds it) and signals this one ended.
    pub(crate) fn release(&self, key: &(String, String), held: Held) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(key).is_some_and(|h| h.id == held.id) {
            live.remove(key);
        }
        drop(live);
        let _ = held.done.send(true);
    }
}
