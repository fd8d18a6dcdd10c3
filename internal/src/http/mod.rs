//! Shared HTTP pieces used by several route modules.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::registry::DbId;

/// The validated `{db_id}` of a DB-scoped route. Extract it after `Caller`, so a request without
/// a valid token is refused before anything about the document is looked at.
pub struct DbPath(pub DbId);

impl<S: Send + Sync> FromRequestParts<S> for DbPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
        let raw = params
            .iter()
            .find(|(name, _)| *name == "db_id")
            .map(|(_, value)| value)
            .ok_or_else(|| ApiError::internal("route without {db_id} uses DbPath"))?;
        Ok(DbPath(DbId::parse(raw)?))
    }
}
