//! Webhook inbox: `{ANY} /api/v1/db/{db_id}/webhooks/{endpoint...}` stores each delivery (one
//! commit, answered `201 {id}` after it) in the document's `webhook_inbox` table, with optional
//! per-endpoint signature checks (`PUT|GET|DELETE /webhooks/_config/{endpoint}`) and an optional
//! durable message per delivery.

pub mod signature;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{RawPathParams, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, put};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::RngCore;
use rusqlite::{OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use crate::auth::{Access, Action, Authorized, ResourceFrom, Route};
use crate::error::{ApiError, Json as ApiJson};
use crate::state::AppState;

const INGEST: Access = Access::Db {
    actions: &[Action::WebhookIngest],
    resource: ResourceFrom::Path("endpoint"),
};
const CONFIG: Access = Access::Db {
    actions: &[Action::QueryAdmin],
    resource: ResourceFrom::None,
};

pub fn routes() -> Vec<Route> {
    let cfg = "/api/v1/db/{db_id}/webhooks/_config/{*endpoint}";
    vec![
        Route::any(
            "/api/v1/db/{db_id}/webhooks/{*endpoint}",
            INGEST,
            any(ingest),
        )
        .with_query_token(),
        Route::new(Method::PUT, cfg, CONFIG, put(put_config)),
        Route::new(Method::GET, cfg, CONFIG, get(get_config)),
        Route::new(Method::DELETE, cfg, CONFIG, delete(delete_config)),
    ]
}

/// Encrypts/decrypts endpoint secrets with a key derived from the install key.
pub struct SecretBox(ChaCha20Poly1305);

impl SecretBox {
    pub fn new(key: [u8; 32]) -> Self {
        Self(ChaCha20Poly1305::new(&key.into()))
    }

    pub(crate) fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, ApiError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(Nonce::from_slice(&nonce), plain)
            .map_err(|_| ApiError::internal("secret encryption failed"))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    pub(crate) fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(12);
        self.0.decrypt(Nonce::from_slice(nonce), ct).ok()
    }
}

/// Headers never stored (credentials).
fn redacted(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "proxy-authorization"
            | "cookie"
            | "set-cookie"
            | "x-api-key"
            | "x-auth-token"
    )
}

fn headers_json(headers: &HeaderMap) -> String {
    let mut out: Map<String, Json> = Map::new();
    for name in headers.keys() {
        let n = name.as_str();
        let value = if redacted(n) {
            "[redacted]".to_owned()
        } else {
            headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.insert(n.to_owned(), Json::String(value));
    }
    Json::Object(out).to_string()
}

fn delivery_id(headers: &HeaderMap) -> Option<String> {
    [
        "x-github-delivery",
        "x-gitlab-event-uuid",
        "x-gitea-delivery",
        "x-delivery-id",
        "x-webhook-id",
        "webhook-id",
        "x-request-id",
    ]
    .iter()
    .find_map(|h| {
        headers
            .get(*h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    })
}

/// The query string as received, without any credential pair (`access_token`, `token`, in any
/// percent-encoded spelling of the key: the same rule the authorization middleware reads them
/// by). Never stored.
fn stored_query(query: Option<&str>) -> String {
    query
        .map(crate::auth::strip_query_credentials)
        .unwrap_or_default()
}

struct Config {
    scheme: String,
    secret: Option<Vec<u8>>,
    enforce: bool,
    signature_header: Option<String>,
    publish_topic: Option<String>,
}

fn load_config(
    c: &rusqlite::Connection,
    endpoint: &str,
    secrets: &SecretBox,
) -> rusqlite::Result<Option<Config>> {
    c.prepare_cached(
        "SELECT scheme, secret_enc, enforce, signature_header, publish_topic
         FROM _patchwork_webhook_config WHERE endpoint = ?1",
    )?
    .query_row([endpoint], |r| {
        let sealed: Vec<u8> = r.get(1)?;
        Ok(Config {
            scheme: r.get(0)?,
            secret: secrets.open(&sealed),
            enforce: r.get(2)?,
            signature_header: r.get(3)?,
            publish_topic: r.get(4)?,
        })
    })
    .optional()
}

/// Whether the delivery carries a valid signature for `cfg` (an undecryptable secret: no).
fn verify(cfg: &Config, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(secret) = &cfg.secret else {
        return false;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match cfg.scheme.as_str() {
        "github" => signature::github(secret, headers, body),
        "stripe" => signature::stripe(secret, headers, body, now),
        _ => signature::hmac_sha256(
            secret,
            cfg.signature_header.as_deref().unwrap_or("x-signature"),
            headers,
            body,
        ),
    }
}

fn validate_endpoint(endpoint: &str) -> Result<(), ApiError> {
    if endpoint.is_empty() || endpoint.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_endpoint",
            "endpoint must be 1 to 256 bytes",
        ));
    }
    if endpoint.starts_with('_') {
        return Err(ApiError::bad_request(
            "reserved_endpoint",
            "endpoint names beginning with '_' are reserved",
        ));
    }
    if endpoint
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(ApiError::bad_request(
            "invalid_endpoint",
            "endpoint segments must be non-empty and not . or ..",
        ));
    }
    Ok(())
}

async fn ingest(
    State(state): State<AppState>,
    auth: Authorized,
    req: Request,
) -> Result<Response, ApiError> {
    let db = auth.db()?.clone();
    // The decoded `{*endpoint}` the scope was checked against (never the raw path, whose
    // `%2e%2e` would pass the check decoded and be stored encoded).
    let endpoint = auth.resource.clone().unwrap_or_default();
    validate_endpoint(&endpoint)?;
    let (parts, body) = req.into_parts();
    crate::error::check_declared_length(&parts.headers, state.config.webhook_max_body_bytes)?;
    let body: Bytes = axum::body::to_bytes(body, state.config.webhook_max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::too_large(format!(
                "webhook bodies are limited to {} bytes",
                state.config.webhook_max_body_bytes
            ))
        })?;
    let doc = state.registry.get(&db).await?;
    let received_at = crate::time_fmt::rfc3339(time::OffsetDateTime::now_utc());
    let method = parts.method.to_string();
    let query = stored_query(parts.uri.query());
    let headers = headers_json(&parts.headers);
    let content_type = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let delivery = delivery_id(&parts.headers);
    let producer = auth.token_id().map(str::to_owned);
    let secrets = state.webhook_secrets.clone();
    let request_headers = parts.headers;
    let log_db = db.clone();
    // One write: the endpoint's config is read, the signature checked and the delivery stored
    // in the same savepoint (an enforced refusal stores nothing).
    let id = doc
        .write_announcing(move |c, announce| {
            let config = load_config(c, &endpoint, &secrets)?;
            let signature_valid = config
                .as_ref()
                .map(|cfg| verify(cfg, &request_headers, &body));
            if config.as_ref().is_some_and(|c| c.enforce) && signature_valid != Some(true) {
                tracing::info!(db_id = %log_db, endpoint = %endpoint,
                    "webhook refused: signature invalid or missing");
                return Err(ApiError::unauthorized("the webhook signature is missing or invalid").into());
            }
            // `last_insert_rowid()` rather than `RETURNING`, which builds an ephemeral table
            // per statement.
            let inserted = c.prepare_cached(
                "INSERT INTO main.webhook_inbox (endpoint, received_at, method, query_string, headers_json,
                     content_type, payload, signature_valid, delivery_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![endpoint, received_at, method, query, headers, content_type,
                body.as_ref(), signature_valid, delivery])?;
            if inserted != 1 {
                // Only a user trigger (`RAISE(IGNORE)`) can swallow the row; the id would then
                // name another delivery.
                return Err(ApiError::conflict(
                    "not_stored",
                    "a trigger on webhook_inbox refused the delivery",
                )
                .into());
            }
            let id = c.last_insert_rowid();
            if let Some(topic) = config.and_then(|c| c.publish_topic) {
                let note = crate::pubsub::sql::NewMessage {
                    topic,
                    content_type: "application/json".into(),
                    payload: json!({"webhook_id": id, "endpoint": endpoint, "delivery_id": delivery})
                        .to_string()
                        .into_bytes(),
                    dedupe_key: None,
                    retain: false,
                };
                if let (_, Some(stored)) = crate::pubsub::sql::insert(c, &note, producer.as_deref())? {
                    announce.push(stored);
                }
            }
            Ok(id)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WebhookConfigBody)]
pub(crate) struct ConfigBody {
    /// `github`, `stripe` or `hmac-sha256`.
    #[schema(
        examples("github", "stripe", "hmac-sha256"),
        pattern = "^(github|stripe|hmac-sha256)$"
    )]
    scheme: String,
    /// 1 to 1024 bytes; stored encrypted, never shown again.
    #[schema(min_length = 1)]
    secret: String,
    /// An invalid or missing signature is refused (`401`) instead of recorded as invalid.
    #[serde(default)]
    enforce: bool,
    /// hmac-sha256 only; default `X-Signature`.
    #[serde(default)]
    signature_header: Option<String>,
    /// Each delivery also stores a durable message on this topic.
    #[serde(default)]
    #[schema(min_length = 1)]
    publish_topic: Option<String>,
}

impl ConfigBody {
    /// The checks `PUT /webhooks/_config/…` makes before it seals the secret.
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        if !matches!(self.scheme.as_str(), "github" | "stripe" | "hmac-sha256") {
            return Err(ApiError::bad_request(
                "invalid_config",
                "scheme must be github, stripe or hmac-sha256",
            ));
        }
        if self.secret.is_empty() || self.secret.len() > 1024 {
            return Err(ApiError::bad_request(
                "invalid_config",
                "secret must be 1 to 1024 bytes",
            ));
        }
        if self.signature_header.is_some() && self.scheme != "hmac-sha256" {
            return Err(ApiError::bad_request(
                "invalid_config",
                "signature_header is for hmac-sha256 only",
            ));
        }
        if let Some(h) = &self.signature_header
            && axum::http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(ApiError::bad_request(
                "invalid_config",
                "signature_header is not a header name",
            ));
        }
        if let Some(t) = &self.publish_topic {
            crate::pubsub::topic::validate_topic(t)
                .map_err(|e| ApiError::bad_request("invalid_config", e))?;
        }
        Ok(())
    }
}

fn path_params(
    params: Result<RawPathParams, RawPathParamsRejection>,
) -> Result<RawPathParams, ApiError> {
    params.map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
}

/// The decoded `{*endpoint}` of a config route (the same form ingest stores and looks up).
fn config_endpoint(params: &RawPathParams) -> Result<String, ApiError> {
    let e = params
        .iter()
        .find(|(name, _)| *name == "endpoint")
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();
    validate_endpoint(&e)?;
    Ok(e)
}

async fn put_config(
    State(state): State<AppState>,
    auth: Authorized,
    params: Result<RawPathParams, RawPathParamsRejection>,
    ApiJson(body): ApiJson<ConfigBody>,
) -> Result<StatusCode, ApiError> {
    let db = auth.db()?.clone();
    let endpoint = config_endpoint(&path_params(params)?)?;
    body.check()?;
    let sealed = state.webhook_secrets.seal(body.secret.as_bytes())?;
    let doc = state.registry.get(&db).await?;
    let header = body.signature_header.map(|h| h.to_ascii_lowercase());
    let target = format!("{db}/{endpoint}");
    let detail = format!("scheme {}, enforce {}", body.scheme, body.enforce);
    doc.write(move |c| {
        c.execute(
            "INSERT OR REPLACE INTO _patchwork_webhook_config
                 (endpoint, scheme, secret_enc, enforce, signature_header, publish_topic)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                endpoint,
                body.scheme,
                sealed,
                body.enforce,
                header,
                body.publish_topic
            ],
        )?;
        Ok(())
    })
    .await?;
    crate::audit::log(
        &state.service,
        &auth.actor(),
        "webhook.config.put",
        Some(&target),
        Some(detail),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_config(
    State(state): State<AppState>,
    auth: Authorized,
    params: Result<RawPathParams, RawPathParamsRejection>,
) -> Result<ApiJson<Json>, ApiError> {
    let db = auth.db()?.clone();
    let endpoint = config_endpoint(&path_params(params)?)?;
    let doc = state.registry.get(&db).await?;
    let found = doc
        .read(move |c| {
            Ok(c.query_row(
                "SELECT scheme, enforce, signature_header, publish_topic FROM _patchwork_webhook_config WHERE endpoint = ?1",
                [&endpoint],
                |r| {
                    Ok(json!({
                        "endpoint": endpoint,
                        "scheme": r.get::<_, String>(0)?,
                        "enforce": r.get::<_, bool>(1)?,
                        "signature_header": r.get::<_, Option<String>>(2)?,
                        "publish_topic": r.get::<_, Option<String>>(3)?,
                    }))
                },
            )
            .optional()?)
        })
        .await?;
    found
        .map(ApiJson)
        .ok_or_else(|| ApiError::not_found("no configuration for this endpoint"))
}

async fn delete_config(
    State(state): State<AppState>,
    auth: Authorized,
    params: Result<RawPathParams, RawPathParamsRejection>,
) -> Result<StatusCode, ApiError> {
    let db = auth.db()?.clone();
    let endpoint = config_endpoint(&path_params(params)?)?;
    let target = format!("{db}/{endpoint}");
    let doc = state.registry.get(&db).await?;
    let n = doc
        .write(move |c| {
            Ok(c.execute(
                "DELETE FROM _patchwork_webhook_config WHERE endpoint = ?1",
                [&endpoint],
            )?)
        })
        .await?;
    if n == 0 {
        return Err(ApiError::not_found("no configuration for this endpoint"));
    }
    crate::audit::log(
        &state.service,
        &auth.actor(),
        "webhook.config.delete",
        Some(&target),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// How the application state holds the secret box.
pub type SharedSecretBox = Arc<SecretBox>;
