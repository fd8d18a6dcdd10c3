//! Token admin API: `GET|POST /api/v1/admin/tokens`, `DELETE /api/v1/admin/tokens/{id}`, and
//! the audit log, `GET /api/v1/admin/audit`.
//! Needs `admin.token` on `db_id = "*"` or an admin token. Only admins may mint admin tokens (a
//! scoped `admin.token` holder cannot escalate to admin). A signed-in person who is not an admin
//! sees and revokes only the tokens they made, and mints tokens only with scopes on documents
//! they own.

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::json;

use super::access::{Access, Authorized, Route};
use super::scope::{Action, Scope};
use super::sql::NewToken;
use crate::error::{ApiError, Json, Path};
use crate::state::AppState;

const ADMIN_TOKEN: Access = Access::Global(Action::AdminToken);

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/api/v1/admin/tokens", ADMIN_TOKEN, get(list)),
        Route::new(
            Method::POST,
            "/api/v1/admin/tokens",
            ADMIN_TOKEN,
            post(create),
        ),
        Route::new(
            Method::DELETE,
            "/api/v1/admin/tokens/{id}",
            ADMIN_TOKEN,
            delete(revoke),
        ),
        Route::new(
            Method::GET,
            "/api/v1/admin/audit",
            Access::Admin,
            get(audit),
        ),
    ]
}

async fn list(
    State(state): State<AppState>,
    auth: Authorized,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut tokens = state.tokens.list().await?;
    if auth.person().is_some() {
        let me = auth.actor();
        tokens.retain(|t| t.created_by.as_deref() == Some(me.as_str()));
    }
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/v1/admin/audit?limit=` (1–1000, default 100), newest first.
async fn audit(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 1000",
        ));
    }
    let events = state
        .service
        .read(move |conn| Ok(crate::audit::list(conn, limit)?))
        .await?;
    Ok(Json(json!({ "events": events })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewTokenBody)]
pub(crate) struct CreateBody {
    /// 1 to 120 characters.
    #[schema(min_length = 1, max_length = 120)]
    label: String,
    /// Only an admin may create an admin token.
    #[serde(default)]
    is_admin: bool,
    /// RFC 3339, in the future; none: the token does not expire.
    #[serde(default)]
    expires_at: Option<String>,
    /// At least one for a non-admin token.
    #[serde(default)]
    scopes: Vec<Scope>,
}

impl CreateBody {
    /// The token to mint, checked (`expires_at` parsed, [`super::validate_new_token`]).
    pub(crate) fn into_new_token(self) -> Result<NewToken, ApiError> {
        let expires_at = self
            .expires_at
            .as_deref()
            .map(|s| {
                crate::time_fmt::parse_rfc3339(s).ok_or_else(|| {
                    ApiError::bad_request("invalid_token", "expires_at must be an RFC 3339 time")
                })
            })
            .transpose()?;
        let new = NewToken {
            label: self.label,
            is_admin: self.is_admin,
            scopes: self.scopes,
            expires_at,
        };
        super::validate_new_token(&new).map_err(|e| ApiError::bad_request("invalid_token", e))?;
        Ok(new)
    }
}

async fn create(
    State(state): State<AppState>,
    auth: Authorized,
    Json(body): Json<CreateBody>,
) -> Result<Response, ApiError> {
    if body.is_admin && !auth.is_admin() {
        return Err(ApiError::forbidden(
            "only an admin token can create admin tokens",
        ));
    }
    let new = body.into_new_token()?;
    if let Some(person) = auth.person()
        && let Some(scope) = new
            .scopes
            .iter()
            .find(|s| state.owners.owner(&s.db_id).as_deref() != Some(person.subject.as_str()))
    {
        return Err(ApiError::forbidden(format!(
            "you can mint tokens only for documents you own, not {:?}",
            scope.db_id
        )));
    }
    let (meta, token) = state.tokens.create_by(new, &auth.actor()).await?;
    let mut body = serde_json::to_value(&meta).map_err(ApiError::internal)?;
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn revoke(
    State(state): State<AppState>,
    auth: Authorized,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::not_found("no such token"));
    }
    // A person revokes only their own tokens; others' look as absent as unknown ids.
    if auth.person().is_some() {
        let me = auth.actor();
        let mine = state
            .tokens
            .list()
            .await?
            .into_iter()
            .any(|t| t.id == id && t.created_by.as_deref() == Some(me.as_str()));
        if !mine {
            return Err(ApiError::not_found("no such live token"));
        }
    }
    if state.tokens.revoke(id, &auth.actor()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such live token"))
    }
}
