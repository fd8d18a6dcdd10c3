//! Serving the application state: [`serve`] (HTTP with graceful shutdown, then the actors are
//! drained). The accept loop, its connection caps and timeouts are in [`conn`]; the state itself
//! is built in `state.rs`.

pub mod conn;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::state::AppState;

/// Every listener the service accepts on. All are bound before the service says it is
/// listening, so a client that waits for that line never meets a refused MQTT connection.
pub struct Listeners {
    http: TcpListener,
    mqtt: Option<(TcpListener, Option<crate::mqtt::Tls>)>,
}

impl Listeners {
    /// Takes the bound HTTP listener and binds MQTT when `mqtt_listen` is configured.
    pub async fn bind(state: &AppState, http: TcpListener) -> anyhow::Result<Self> {
        let mqtt = crate::mqtt::bind(state).await?;
        Ok(Self { http, mqtt })
    }

    pub fn http_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.http.local_addr()
    }
}

/// Serves HTTP on `listeners` until `shutdown` resolves, then: stop accepting, let in-flight
/// requests finish (bounded by `shutdown_grace_secs`), end streams, drain and close every
/// document actor (checkpointing its WAL), close `service.db`.
pub async fn serve(
    state: AppState,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(state.config.shutdown_grace_secs);
    tokio::spawn(state.tokens.clone().maintain(state.shutdown.clone()));
    tokio::spawn(trim_rate_limits(state.clone()));
    tokio::spawn(crate::identity::sweeper(
        state.clone(),
        Duration::from_secs(60),
    ));
    tokio::spawn(crate::pubsub::retention::sweeper(
        state.clone(),
        Duration::from_secs(state.config.retention_sweep_seconds),
    ));
    tokio::spawn(crate::schema::expiry::sweeper(
        state.clone(),
        Duration::from_secs(state.config.retention_sweep_seconds),
    ));
    tokio::spawn(crate::presence::sweeper(state.clone()));
    tokio::spawn(crate::blobs::gc::sweeper(
        state.clone(),
        Duration::from_secs(state.config.blob_gc_interval_secs),
    ));
    // MQTT (when configured) ends with the HTTP server: it is waited for before the documents
    // and `service.db` close, so its sessions are saved.
    let Listeners { http, mqtt } = listeners;
    let mqtt = mqtt
        .map(|(listener, tls)| tokio::spawn(crate::mqtt::run(state.clone(), listener, tls, grace)));
    let router = crate::router::build(state.clone());
    let stop = state.shutdown.clone();
    let settings = conn::ConnSettings {
        header_read_timeout: Duration::from_secs(state.config.header_read_timeout_secs),
        idle_timeout: Duration::from_secs(state.config.http_idle_timeout_secs),
        body_timeout: Duration::from_secs(state.config.request_body_timeout_secs),
        write_timeout: Duration::from_secs(state.config.response_write_timeout_secs),
        max_connections: state.max_connections,
        max_connections_per_ip: state.config.max_connections_per_ip,
    };
    tracing::debug!(?settings, "HTTP connection settings");
    let server = conn::run(
        http,
        router,
        settings,
        state.metrics.clone(),
        &state.config.trusted_proxies,
        stop.clone(),
    );
    let mut server = std::pin::pin!(server);
    tokio::select! {
        () = &mut server => {}
        () = shutdown => {
            tracing::info!("shutdown requested: no new connections; finishing in-flight requests");
            stop.cancel();
            if tokio::time::timeout(grace, &mut server).await.is_err() {
                tracing::warn!(grace_secs = grace.as_secs(),
                    "grace period over; remaining connections are cut");
            }
        }
    }
    stop.cancel();
    if let Some(mqtt) = mqtt {
        let _ = mqtt.await;
    }
    if !state.registry.shutdown(grace).await {
        tracing::warn!(
            live = state.registry.live_actors(),
            "some document actors did not stop in time"
        );
    }
    state.close_service(grace).await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Trims keyed rate-limiter state every minute until shutdown.
async fn trim_rate_limits(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => state.limits.trim(),
            () = state.shutdown.cancelled() => return,
        }
    }
}
