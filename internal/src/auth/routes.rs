//! Token admin API: `GET|POST /api/v1/admin/tokens`, `DELETE /api/v1/admin/tokens/{id}`.
//! Needs `admin.token` on `db_id = "*"` or an admin token. Only admin tokens may mint admin
//! tokens (a scoped `admin.token` holder cannot escalate to admin).

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
use crate::server::AppState;

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
    ]
}

async fn list(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({"tokens": state.tokens.list().await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    label: String,
    #[serde(default)]
    is_admin: bool,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    scopes: Vec<Scope>,
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
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|s| {
            crate::time_fmt::parse_rfc3339(s).ok_or_else(|| {
                ApiError::bad_request("invalid_token", "expires_at must be an RFC 3339 time")
            })
        })
        .transpose()?;
    let new = NewToken {
        label: body.label,
        is_admin: body.is_admin,
        scopes: body.scopes,
        expires_at,
    };
    super::validate_new_token(&new).map_err(|e| ApiError::bad_request("invalid_token", e))?;
    let (meta, token) = state.tokens.create(new).await?;
    let mut body = serde_json::to_value(&meta).map_err(ApiError::internal)?;
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::not_found("no such token"));
    }
    if state.tokens.revoke(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such live token"))
    }
}
