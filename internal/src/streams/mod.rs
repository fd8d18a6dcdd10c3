//! Streams: the legacy Patchwork byte relay. So far only the legacy hook routes, which are not
//! carried over: `/h` and `/r` answer `410 Gone` pointing to their replacements.

use axum::http::StatusCode;
use axum::routing::any;

use crate::auth::{Access, Route};
use crate::error::ApiError;

async fn gone() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "gone",
        "legacy hooks (/h, /r) are not carried over: receive webhooks with the webhook inbox \
         (/api/v1/db/{db_id}/webhooks/...) and use /u/{user}/... stream routes with a token",
    )
}

/// `/h`, `/h/...`, `/r`, `/r/...`: anonymous, rate limited per client IP, always `410`.
pub fn legacy_gone_routes() -> Vec<Route> {
    ["/h", "/h/{*rest}", "/r", "/r/{*rest}"]
        .into_iter()
        .map(|path| Route::any(path, Access::Anonymous, any(gone)))
        .collect()
}
