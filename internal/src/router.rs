//! The whole HTTP surface in one place: each capability's `routes()` merged, then the layers in
//! the order a request meets them (outermost first):
//! panic → JSON 500, request id, trace span, metrics (and the empty-`db_id` 404), body limit →
//! route → authorization → handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::auth::middleware::{AuthLayer, RouteTable, authorize};
use crate::auth::{Route, RouteSpec};
use crate::error;
use crate::ops::metrics::{HttpLabels, RouteLabel};
use crate::state::AppState;

/// Every capability's routes under the name of the module that declares them (the OpenAPI
/// document's tags come from these names, so a route is always filed under its own module).
pub fn capabilities() -> Vec<(&'static str, Vec<Route>)> {
    vec![
        ("ops", crate::ops::routes()),
        ("runtime", crate::runtime::routes()),
        ("auth", crate::auth::routes::routes()),
        ("identity", crate::identity::routes()),
        ("query", crate::query::routes()),
        ("pubsub", crate::pubsub::routes()),
        ("leases", crate::leases::routes()),
        ("webhooks", crate::webhooks::routes()),
        ("blobs", crate::blobs::routes()),
        ("streams", crate::streams::routes()),
        ("sync", crate::sync::routes()),
        ("invites", crate::invites::routes()),
        ("pow", crate::pow::routes()),
        ("presence", crate::presence::routes()),
        ("schema", crate::schema::routes()),
        ("media", crate::media::routes()),
    ]
}

/// Every route of the service, each with its declared access. The router is built from this list
/// only, and the authorization matrix test and the OpenAPI document walk it.
pub fn all_routes() -> Vec<Route> {
    capabilities()
        .into_iter()
        .flat_map(|(_, routes)| routes)
        .collect()
}

/// The declarations alone (for tests and documentation).
pub fn route_table() -> Vec<RouteSpec> {
    all_routes().into_iter().map(|r| r.spec).collect()
}

/// The declarations with their capability's name, in declaration order.
pub fn tagged_route_table() -> Vec<(&'static str, RouteSpec)> {
    capabilities()
        .into_iter()
        .flat_map(|(tag, routes)| routes.into_iter().map(move |r| (tag, r.spec)))
        .collect()
}

pub fn build(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let mut table = RouteTable::new();
    let mut router = Router::new();
    for route in all_routes() {
        let key = (route.spec.method.clone(), route.spec.path);
        let duplicate = table.insert(key, route.spec.clone()).is_some();
        assert!(
            !duplicate,
            "route {:?} {} declared twice",
            route.spec.method, route.spec.path
        );
        router = router.route(route.spec.path, route.handler);
    }
    let auth = AuthLayer {
        app: state.clone(),
        table: Arc::new(table),
    };
    let routes = router
        .route_layer(middleware::from_fn_with_state(auth, authorize))
        // Outside authorization: the session (loaded lazily, only when a cookie came and no
        // token did) is there for it to read, and saved after the handler if it changed.
        .route_layer(crate::identity::layer(&state))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state.clone());
    // The layers every request passes wrap the routed service once. (`Router::layer` would wrap
    // each route's boxed service again, and every request clones the whole nest of boxes.)
    let layered = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(SetRequestIdLayer::x_request_id(RequestIds::default()))
        // The request span is at DEBUG: an enabled span formats its fields when it is created,
        // which cost every request thousands of instructions for context that only failures
        // need. Failures (5xx) are logged with their request id, method and path by
        // `track_metrics`; `PATCHWORK_LOG=debug` brings the span back around every event.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or("-");
                    // The path only: query strings may carry `access_token`.
                    tracing::debug_span!("request", request_id = %id,
                        method = %req.method(), path = %req.uri().path())
                })
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(middleware::from_fn_with_state(state, track_metrics))
        .layer(DefaultBodyLimit::max(max_body))
        .service(routes);
    Router::new().fallback_service(layered)
}

/// The declared route template, set by the authorization layer on the response so the metrics
/// layer can label by route without allocating.
#[derive(Clone, Copy)]
pub struct RouteTag(pub &'static str);

fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::PATCH => "PATCH",
        M::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

async fn track_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    // Kept (reference-counted clones) for the log line of a failure.
    let request_id = req.headers().get("x-request-id").cloned();
    let uri = req.uri().clone();
    // `/api/v1/db//...` names no document and so matches no route: `404`, whatever the token.
    // (Checked here rather than in a layer of its own: every layer costs each request a boxed
    // future and another poll.)
    let response = if req.uri().path().starts_with("/api/v1/db//") {
        error::not_found().await.into_response()
    } else {
        next.run(req).await
    };
    let route = response
        .extensions()
        .get::<RouteTag>()
        .map_or("unmatched", |t| t.0);
    if response.status().is_server_error() {
        tracing::error!(
            request_id = request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            method,
            // The path only: query strings may carry `access_token`.
            path = uri.path(),
            status = response.status().as_u16(),
            "request failed"
        );
    }
    let metrics = &state.metrics;
    metrics
        .http_latency
        .get_or_create(&RouteLabel { route })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Request ids: a per-process random prefix plus a counter (`x-request-id`, unless the client
/// sent one).
#[derive(Clone)]
struct RequestIds {
    prefix: u32,
    counter: Arc<AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self {
            prefix: rand::random(),
            counter: Default::default(),
        }
    }
}

impl MakeRequestId for RequestIds {
    /// `{prefix:08x}-{n}`, written into a stack buffer: `format!` and a header-value parse
    /// were ~1,400 instructions of every request.
    fn make_request_id<B>(&mut self, _req: &axum::http::Request<B>) -> Option<RequestId> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut n = self.counter.fetch_add(1, Ordering::Relaxed);
        // 8 hex digits, '-', at most 20 decimal digits.
        let mut buf = [0u8; 29];
        for (i, b) in buf[..8].iter_mut().enumerate() {
            *b = HEX[((self.prefix >> (28 - 4 * i)) & 0xf) as usize];
        }
        buf[8] = b'-';
        let mut digits = [0u8; 20];
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for (dst, src) in buf[9..9 + len].iter_mut().zip(digits[..len].iter().rev()) {
            *dst = *src;
        }
        HeaderValue::from_bytes(&buf[..9 + len])
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_read_prefix_dash_counter() {
        for (prefix, n) in [
            (0u32, 0u64),
            (0x0a1b_2c3d, 7),
            (u32::MAX, 1_234_567),
            (0x8000_0001, u64::MAX),
        ] {
            let mut ids = RequestIds {
                prefix,
                counter: Arc::new(AtomicU64::new(n)),
            };
            let id = ids
                .make_request_id(&axum::http::Request::new(()))
                .expect("an id");
            assert_eq!(id.header_value(), &format!("{prefix:08x}-{n}"));
        }
    }
}
