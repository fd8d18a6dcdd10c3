//! Leases with fencing tokens: `POST /leases/acquire|renew|release`, `GET /leases`, and the
//! `Patch-Fence` check other writes run inside their own transaction.
//!
//! Every operation is one write on the document's actor (inside its `BEGIN IMMEDIATE` group
//! commit), so concurrent acquirers are serialized and exactly one wins. The clock is the
//! server's. Lease tokens are random and stored only as BLAKE3 hashes.

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::routing::{get, post};
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{Access, Action, Authorized, ResourceFrom, Route};
use crate::error::{ApiError, Json};
use crate::state::AppState;

const ACQUIRE: Access = Access::Db {
    actions: &[Action::LeaseAcquire],
    resource: ResourceFrom::Handler,
};
const RENEW: Access = Access::Db {
    actions: &[Action::LeaseRenew],
    resource: ResourceFrom::Handler,
};
const RELEASE: Access = Access::Db {
    actions: &[Action::LeaseRelease],
    resource: ResourceFrom::Handler,
};

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/leases/acquire",
            ACQUIRE,
            post(acquire),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/leases/renew",
            RENEW,
            post(renew),
        ),
        Route::new(
            Method::POST,
            "/api/v1/db/{db_id}/leases/release",
            RELEASE,
            post(release),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/leases",
            Access::Db {
                actions: &[
                    Action::LeaseAcquire,
                    Action::LeaseRenew,
                    Action::LeaseRelease,
                ],
                resource: ResourceFrom::None,
            },
            get(list),
        ),
    ]
}

fn validate_resource(r: &str) -> Result<(), ApiError> {
    let ok = !r.is_empty()
        && r.len() <= 256
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_resource",
            "resource must be 1 to 256 of A-Z a-z 0-9 . _ / : -",
        ))
    }
}

fn validate_owner(o: &str) -> Result<(), ApiError> {
    if o.is_empty() || o.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_owner",
            "owner must be 1 to 256 bytes",
        ));
    }
    Ok(())
}

fn validate_ttl(config: &crate::Config, ttl: i64) -> Result<(), ApiError> {
    let max = config.lease_max_ttl_secs as i64;
    if ttl < 1 || ttl > max {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_seconds must be between 1 and {max}"),
        ));
    }
    Ok(())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LeaseGrant {
    resource: String,
    owner: String,
    /// Grows by one per acquisition and never goes back: send it as `Patch-Fence`.
    fence: i64,
    /// `pwl_…`, needed to renew and release (stored only as a hash).
    lease_token: String,
    /// RFC 3339, by the server's clock.
    expires_at: String,
}

struct Row {
    owner: Option<String>,
    token_hash: Option<Vec<u8>>,
    fence: i64,
    expires_ms: i64,
}

fn load(conn: &Connection, resource: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(
        "SELECT owner, token_hash, fence, expires_ms FROM _patchwork_leases WHERE resource = ?1",
    )?
    .query_row([resource], |r| {
        Ok(Row {
            owner: r.get(0)?,
            token_hash: r.get(1)?,
            fence: r.get(2)?,
            expires_ms: r.get(3)?,
        })
    })
    .optional()
}

fn hash_token(token: &str) -> Vec<u8> {
    blake3::hash(token.as_bytes()).as_bytes().to_vec()
}

/// The holder check of renew and release: same owner, same token (constant time), unexpired.
fn holds(row: &Option<Row>, owner: &str, token: &str, now: i64) -> bool {
    let Some(row) = row else { return false };
    let token_ok = row
        .token_hash
        .as_deref()
        .is_some_and(|h| crate::auth::token::hashes_equal(h, &hash_token(token)));
    row.owner.as_deref() == Some(owner) && token_ok && row.expires_ms > now
}

fn not_holder() -> ApiError {
    ApiError::conflict(
        "not_holder",
        "the lease is not held by this owner and token (or it expired)",
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcquireBody {
    /// 1 to 256 of `A-Z a-z 0-9 . _ / : -`.
    #[schema(pattern = "^[A-Za-z0-9._/:-]{1,256}$")]
    resource: String,
    /// 1 to 256 bytes.
    #[schema(min_length = 1)]
    owner: String,
    /// 1 to `lease_max_ttl_secs` (3600).
    #[schema(minimum = 1)]
    ttl_seconds: i64,
}

impl AcquireBody {
    /// The checks `acquire` makes before it opens the document.
    pub(crate) fn check(&self, config: &crate::Config) -> Result<(), ApiError> {
        validate_resource(&self.resource)?;
        validate_owner(&self.owner)?;
        validate_ttl(config, self.ttl_seconds)
    }
}

async fn acquire(
    State(state): State<AppState>,
    auth: Authorized,
    Json(body): Json<AcquireBody>,
) -> Result<Json<LeaseGrant>, ApiError> {
    body.check(&state.config)?;
    auth.resource(Action::LeaseAcquire, &body.resource)?;
    let doc = state.registry.get(auth.db()?).await?;
    let grant = doc
        .write(move |conn| {
            let now = crate::time_fmt::now_ms();
            let row = load(conn, &body.resource)?;
            if let Some(r) = &row
                && let Some(holder) = &r.owner
                && r.expires_ms > now
            {
                return Err(ApiError::conflict("lease_held", "the lease is held")
                    .with_details(json!({
                        "holder": holder,
                        "expires_at": crate::time_fmt::from_unix_ms(r.expires_ms),
                    }))
                    .into());
            }
            let fence = row.map_or(1, |r| r.fence + 1);
            let mut raw = [0u8; 24];
            rand::rng().fill_bytes(&mut raw);
            let token = format!("pwl_{}", hex::encode(raw));
            let expires_ms = now + body.ttl_seconds * 1000;
            conn.prepare_cached(
                "INSERT INTO _patchwork_leases (resource, owner, token_hash, fence, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (resource) DO UPDATE SET owner = ?2, token_hash = ?3, fence = ?4, expires_ms = ?5",
            )?
            .execute(params![body.resource, body.owner, hash_token(&token), fence, expires_ms])?;
            Ok(LeaseGrant {
                resource: body.resource,
                owner: body.owner,
                fence,
                lease_token: token,
                expires_at: crate::time_fmt::from_unix_ms(expires_ms),
            })
        })
        .await?;
    Ok(Json(grant))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenewBody {
    #[schema(pattern = "^[A-Za-z0-9._/:-]{1,256}$")]
    resource: String,
    #[schema(min_length = 1)]
    owner: String,
    lease_token: String,
    #[schema(minimum = 1)]
    ttl_seconds: i64,
}

impl RenewBody {
    /// The checks `renew` makes before it opens the document.
    pub(crate) fn check(&self, config: &crate::Config) -> Result<(), ApiError> {
        validate_resource(&self.resource)?;
        validate_owner(&self.owner)?;
        validate_ttl(config, self.ttl_seconds)
    }
}

async fn renew(
    State(state): State<AppState>,
    auth: Authorized,
    Json(body): Json<RenewBody>,
) -> Result<Json<LeaseGrant>, ApiError> {
    body.check(&state.config)?;
    auth.resource(Action::LeaseRenew, &body.resource)?;
    let doc = state.registry.get(auth.db()?).await?;
    let grant = doc
        .write(move |conn| {
            let now = crate::time_fmt::now_ms();
            let row = load(conn, &body.resource)?;
            if !holds(&row, &body.owner, &body.lease_token, now) {
                return Err(not_holder().into());
            }
            let fence = row.map_or(0, |r| r.fence);
            let expires_ms = now + body.ttl_seconds * 1000;
            conn.execute(
                "UPDATE _patchwork_leases SET expires_ms = ?2 WHERE resource = ?1",
                params![body.resource, expires_ms],
            )?;
            Ok(LeaseGrant {
                resource: body.resource,
                owner: body.owner,
                fence,
                lease_token: body.lease_token,
                expires_at: crate::time_fmt::from_unix_ms(expires_ms),
            })
        })
        .await?;
    Ok(Json(grant))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseBody {
    #[schema(pattern = "^[A-Za-z0-9._/:-]{1,256}$")]
    resource: String,
    #[schema(min_length = 1)]
    owner: String,
    lease_token: String,
}

impl ReleaseBody {
    /// The checks `release` makes before it opens the document.
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        validate_resource(&self.resource)?;
        validate_owner(&self.owner)
    }
}

async fn release(
    State(state): State<AppState>,
    auth: Authorized,
    Json(body): Json<ReleaseBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    body.check()?;
    auth.resource(Action::LeaseRelease, &body.resource)?;
    let doc = state.registry.get(auth.db()?).await?;
    let out = doc
        .write(move |conn| {
            let now = crate::time_fmt::now_ms();
            let row = load(conn, &body.resource)?;
            if !holds(&row, &body.owner, &body.lease_token, now) {
                return Err(not_holder().into());
            }
            conn.execute(
                "UPDATE _patchwork_leases SET owner = NULL, token_hash = NULL, expires_ms = 0 WHERE resource = ?1",
                [&body.resource],
            )?;
            Ok(json!({
                "resource": body.resource,
                "owner": body.owner,
                "fence": row.map_or(0, |r| r.fence),
                "released": true,
            }))
        })
        .await?;
    Ok(Json(out))
}

async fn list(
    State(state): State<AppState>,
    auth: Authorized,
) -> Result<Json<serde_json::Value>, ApiError> {
    let doc = state.registry.get(auth.db()?).await?;
    let leases = doc
        .read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT resource, owner, fence, expires_ms FROM _patchwork_leases
                 WHERE owner IS NOT NULL AND expires_ms > ?1 ORDER BY resource",
            )?;
            let rows = stmt.query_map([crate::time_fmt::now_ms()], |r| {
                Ok(json!({
                    "resource": r.get::<_, String>(0)?,
                    "owner": r.get::<_, String>(1)?,
                    "fence": r.get::<_, i64>(2)?,
                    "expires_at": crate::time_fmt::from_unix_ms(r.get(3)?),
                }))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    Ok(Json(json!({"leases": leases})))
}

/// `Patch-Fence: {resource}={fence}[, …]`, parsed and validated (before any work).
pub fn parse_fences(headers: &HeaderMap) -> Result<Vec<(String, i64)>, ApiError> {
    let mut out = Vec::new();
    for value in headers.get_all("patch-fence") {
        let text = value
            .to_str()
            .map_err(|_| ApiError::bad_request("invalid_fence", "Patch-Fence must be ASCII"))?;
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (resource, fence) = pair.rsplit_once('=').ok_or_else(|| {
                ApiError::bad_request("invalid_fence", "Patch-Fence pairs are resource=fence")
            })?;
            validate_resource(resource.trim())?;
            let fence: i64 = fence.trim().parse().map_err(|_| {
                ApiError::bad_request("invalid_fence", "a fence must be an integer")
            })?;
            out.push((resource.trim().to_owned(), fence));
        }
    }
    Ok(out)
}

/// Inside the write's own transaction: every fence must be the current, unexpired one.
pub fn check_fences(
    conn: &Connection,
    fences: &[(String, i64)],
) -> Result<(), crate::registry::DocError> {
    let now = crate::time_fmt::now_ms();
    for (resource, fence) in fences {
        let row = load(conn, resource)?;
        let current = row
            .as_ref()
            .is_some_and(|r| r.fence == *fence && r.owner.is_some() && r.expires_ms > now);
        if !current {
            return Err(ApiError::conflict(
                "stale_fence",
                format!("fence {fence} for {resource:?} is not the current lease"),
            )
            .with_details(
                json!({"resource": resource, "fence": fence, "current": row.map(|r| r.fence)}),
            )
            .into());
        }
    }
    Ok(())
}
