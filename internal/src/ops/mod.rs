//! Operations endpoints: `/healthz`, `/readyz`, `/status`, `/metrics`, the API reference
//! (`/openapi.json` and its HTML rendering `/docs`, both generated from the route table), and the
//! embedded dashboard's static files. None needs a token.

pub mod docs_html;
pub mod metrics;
pub mod openapi;

use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::json;

use crate::auth::{Access, Route};
use crate::error::{ApiError, Json, Path};
use crate::state::AppState;
use crate::time_fmt::rfc3339;

pub fn routes() -> Vec<Route> {
    let public = |path, handler| Route::new(Method::GET, path, Access::Public, handler);
    vec![
        public("/healthz", get(healthz)),
        public("/readyz", get(readyz)),
        public("/status", get(status)),
        public("/metrics", get(render_metrics)),
        public("/openapi.json", get(openapi::serve)),
        public("/docs", get(docs_html::serve)),
        // The dashboard: `/` and `/ui` lead to `/ui/`; its pages are hash routes (`/ui/#/…`).
        public("/", get(|| async { Redirect::temporary("/ui/") })),
        public("/ui", get(|| async { Redirect::permanent("/ui/") })),
        public("/ui/", get(|| async { asset("index.html") })),
        public(
            "/ui/{file}",
            get(|Path(file): Path<String>| async move { asset(&file) }),
        ),
        // The apps built on the public API (`web/apps/{app}/`), e.g. `/apps/hearth/`.
        public(
            "/apps/{app}",
            get(|Path(app): Path<String>| async move {
                if app_name(&app) {
                    Redirect::permanent(&format!("/apps/{app}/")).into_response()
                } else {
                    ApiError::not_found("no such app").into_response()
                }
            }),
        ),
        public(
            "/apps/{app}/",
            get(|Path(app): Path<String>| async move { app_file(&app, "index.html") }),
        ),
        public(
            "/apps/{app}/{*path}",
            get(|Path((app, path)): Path<(String, String)>| async move { app_file(&app, &path) }),
        ),
    ]
}

/// App names are plain: `[a-z0-9_-]{1,64}`.
fn app_name(app: &str) -> bool {
    (1..=64).contains(&app.len())
        && app
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// One file of an embedded app. Like the dashboard's, but an app may also use workers (the
/// proof-of-work solver), blob/data media and images, and WebSockets to this server.
fn app_file(app: &str, path: &str) -> Response {
    const CSP: &str = "default-src 'none'; script-src 'self'; worker-src 'self'; \
                       style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; \
                       font-src 'self'; connect-src 'self'; manifest-src 'self'; \
                       form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
    if !app_name(app) {
        return ApiError::not_found("no such app").into_response();
    }
    embedded(patchwork_web::app_file(app, path), CSP)
}

/// One embedded dashboard file. The pages load only same-origin scripts and styles and talk only
/// to this server (the CSP holds that even against a markup bug), and no other site may frame
/// them.
fn asset(name: &str) -> Response {
    const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; connect-src 'self'; form-action 'self'; \
                       base-uri 'none'; frame-ancestors 'none'";
    embedded(patchwork_web::get(name), CSP)
}

/// An embedded file (or `404`) with its page policy: revalidated on every use, never sniffed,
/// never framed.
fn embedded(file: Option<(Vec<u8>, &'static str)>, csp: &'static str) -> Response {
    match file {
        Some((bytes, mime)) => (
            [
                (header::CONTENT_TYPE, mime),
                (header::CACHE_CONTROL, "no-cache"),
                (header::CONTENT_SECURITY_POLICY, csp),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "same-origin"),
                (header::X_FRAME_OPTIONS, "DENY"),
            ],
            bytes,
        )
            .into_response(),
        None => ApiError::not_found("no such file").into_response(),
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when not shutting down, `service.db` answers, and the data dir is writable.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let not_ready = |why: String| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why).with_retry_after(1)
    };
    if state.shutdown.is_cancelled() {
        return Err(ApiError::shutting_down());
    }
    let service = state.service.read(|conn| {
        Ok(
            conn.query_row("SELECT count(*) FROM _patchwork_migrations", [], |r| {
                r.get::<_, i64>(0)
            })?,
        )
    });
    match tokio::time::timeout(Duration::from_secs(2), service).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(not_ready(format!("service database: {e}"))),
        Err(_) => return Err(not_ready("service database did not answer in 2 s".into())),
    }
    // A file of its own per probe: concurrent probes sharing one name removed each other's file
    // (a false `503`).
    let path = state
        .config
        .data_dir
        .join(format!(".readyz-probe-{:016x}", rand::random::<u64>()));
    let probe = tokio::task::spawn_blocking(move || {
        std::fs::write(&path, b"ok").and_then(|()| std::fs::remove_file(&path))
    })
    .await;
    match probe {
        Ok(Ok(())) => Ok(Json(json!({"status": "ready"}))),
        Ok(Err(e)) => Err(not_ready(format!("data dir is not writable: {e}"))),
        Err(e) => Err(ApiError::internal(e)),
    }
}

async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": if state.shutdown.is_cancelled() { "shutting_down" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
        "sqlite_version": rusqlite::version(),
        "started_at": rfc3339(state.started_at),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "open_documents": state.registry.live_actors(),
        "subscribers": state.registry.subscriber_count(),
    }))
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    // Read at scrape time: a waiter whose client hung up leaves the relay when its request is
    // dropped, without passing the handler's own update of the gauge.
    state
        .metrics
        .stream_waiting
        .set(state.streams.relay.waiting() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
