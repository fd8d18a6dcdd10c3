//! The one error shape every route answers with:
//! `{"error": {"code": "snake_case", "message": "human sentence", "details": {...}}}`.
//!
//! Capabilities build an [`ApiError`] with the constructor for their status; internal failures go
//! through [`ApiError::internal`], which logs the cause once and answers a generic message so
//! nothing internal (paths, SQL, secrets) leaks to the client.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// An error as the client sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds for `Retry-After` (429 and 503 answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message).with_retry_after(1)
    }

    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
        .with_retry_after(1)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
    }

    /// An unexpected failure: the cause is logged here, the client gets a generic message.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the server log",
        )
    }
}

// The wire form of an [`ApiError`]. Its schema is the OpenAPI document's `Error`, derived here
// so the documented shape is the one actually written (doc comments become its descriptions).
/// Every error answer: `{"error": {"code", "message", "details"?}}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(crate) struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
pub(crate) struct Inner<'a> {
    /// A stable snake_case code, e.g. `invalid_db_id`, `forbidden`, `lease_held`.
    #[schema(examples("not_found"))]
    code: &'a str,
    /// A human sentence.
    message: &'a str,
    /// Machine-readable specifics, when the error has any (e.g. `index` in a batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    details: Option<&'a Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                details: self.details.as_ref(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::too_large("request body is larger than the limit");
        }
        let code = match &rejection {
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            JsonRejection::JsonSyntaxError(_) => "invalid_json",
            _ => "invalid_body",
        };
        ApiError::bad_request(code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", rejection.body_text())
    }
}

/// A WebSocket route called without a valid upgrade (plain `GET`, missing or wrong `Upgrade`,
/// `Connection`, `Sec-WebSocket-Version` or `Sec-WebSocket-Key`): `400 websocket_upgrade_required`
/// (`405` for another method).
impl From<WebSocketUpgradeRejection> for ApiError {
    fn from(rejection: WebSocketUpgradeRejection) -> Self {
        let status = match rejection.status() {
            StatusCode::METHOD_NOT_ALLOWED => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(
            status,
            "websocket_upgrade_required",
            format!(
                "this route needs a WebSocket upgrade: {}",
                rejection.body_text()
            ),
        )
    }
}

/// A request body whose `Content-Length` says it is over `limit` bytes: `413 too_large` before a
/// byte of it is read, so nothing is buffered (and a client waiting for `100 Continue` never
/// sends it). A body without the header is cut while it is read, at the same limit.
pub fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > limit as u64 => Err(body_too_large(limit)),
        _ => Ok(()),
    }
}

/// `413 too_large` for a request body over `limit` bytes.
pub fn body_too_large(limit: usize) -> ApiError {
    ApiError::too_large(format!("the request body is larger than {limit} bytes"))
}

/// The cap on bodies read whole (`max_body_bytes`; the router's `DefaultBodyLimit` is the same).
fn body_limit<S>(state: &S) -> usize
where
    crate::state::AppState: FromRef<S>,
{
    crate::state::AppState::from_ref(state)
        .config
        .max_body_bytes
}

/// `axum::Json` whose rejections (bad JSON, unknown fields, wrong content type, too large) answer
/// in the contract's error shape; a declared length over `max_body_bytes` is refused unread.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
    crate::state::AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = body_limit(state);
        check_declared_length(req.headers(), limit)?;
        if !plain_json(req.headers()) {
            // Anything but a plain `application/json` (a `+json` type, a missing or wrong
            // one): axum decides, and refuses with its own reason.
            let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
            return Ok(Json(value));
        }
        let body = match bytes::Bytes::from_request(req, state).await {
            Ok(body) => body,
            Err(rejection) => return Err(rejection_error(&rejection, limit)),
        };
        // The fast path deserializes directly; only a body that fails is parsed again by axum,
        // whose error names the path of the bad field (`serde_path_to_error`, which costs about
        // a thousand instructions per request when it tracks every field of a good body).
        match serde_json::from_slice::<T>(&body) {
            Ok(value) => Ok(Json(value)),
            Err(_) => {
                let axum::Json(value) = axum::Json::<T>::from_bytes(&body)?;
                Ok(Json(value))
            }
        }
    }
}

/// Whether the request says `Content-Type: application/json` (parameters such as `charset`
/// allowed), the type nearly every client sends.
fn plain_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The whole request body as bytes (`axum::body::Bytes` with the contract's error shape): over
/// `max_body_bytes` → `413 too_large`, declared or while read.
pub struct Bytes(pub bytes::Bytes);

impl<S> FromRequest<S> for Bytes
where
    S: Send + Sync,
    crate::state::AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = body_limit(state);
        check_declared_length(req.headers(), limit)?;
        match bytes::Bytes::from_request(req, state).await {
            Ok(body) => Ok(Bytes(body)),
            Err(rejection) => Err(rejection_error(&rejection, limit)),
        }
    }
}

fn rejection_error(rejection: &BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        body_too_large(limit)
    } else {
        ApiError::bad_request("invalid_body", rejection.body_text())
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        // Into a plain `Vec` sized for a typical answer: `axum::Json` writes through a
        // `BytesMut` writer that starts at 128 bytes and grows on most answers.
        let mut body = Vec::with_capacity(512);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(e) => ApiError::internal(e).into_response(),
        }
    }
}

/// `axum::extract::Query` with the contract's error shape.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// `axum::extract::Path` with the contract's error shape: a parameter that does not
/// percent-decode to UTF-8 (`%FF`) or does not parse is `400 invalid_path`.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

/// The JSON 404 every unknown route answers with.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// The JSON 405 for a known route with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// Used by the panic-catching layer: a handler panic becomes a JSON 500, never a dropped socket.
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({"error": {"code": "internal_error", "message": "internal error; see the server log"}})),
    )
        .into_response()
}
