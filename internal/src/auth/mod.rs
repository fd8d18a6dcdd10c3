//! Step 1 of the request path, **auth**: who is calling (machine token) and what they may do;
//! every route's [`Access`] is declared in the route table and enforced by [`middleware::authorize`].
//!
//! Tokens live in `service.db` as keyed BLAKE3 hashes; the server keeps them in an in-memory
//! [`TokenStore`] so authenticating a request costs one keyed hash and one map lookup, with the
//! stored hash compared in constant time. Changes made through the server reload the cache at
//! once; changes made by the offline CLI are picked up within a second (`PRAGMA data_version`).

pub mod access;
pub mod middleware;
pub mod ratelimit;
pub mod routes;
pub mod scope;
pub mod sql;
pub mod token;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::registry::{DocError, DocHandle};
pub use access::{Access, Authorized, ResourceFrom, Route, RouteSpec};
pub use scope::{Action, Scope};
pub use sql::{NewToken, TokenMeta, TokenRow};
pub use token::InstallKey;

/// Why a presented token was refused (all are `401`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Unknown,
    Expired,
    Revoked,
}

impl AuthFailure {
    fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "a token is required (Authorization: Bearer <token>)",
            AuthFailure::Unknown => "unknown token",
            AuthFailure::Expired => "the token has expired",
            AuthFailure::Revoked => "the token has been revoked",
        }
    }
}

impl From<AuthFailure> for ApiError {
    fn from(f: AuthFailure) -> Self {
        ApiError::unauthorized(f.message())
    }
}

struct Cache {
    by_hash: HashMap<[u8; 32], Arc<TokenRow>>,
    data_version: i64,
}

/// The server's view of all tokens.
pub struct TokenStore {
    key: InstallKey,
    service: DocHandle,
    cache: RwLock<Cache>,
}

fn data_version(conn: &rusqlite::Connection) -> Result<i64, DocError> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

impl TokenStore {
    pub async fn load(key: InstallKey, service: DocHandle) -> Result<Arc<Self>, DocError> {
        let store = Arc::new(Self {
            key,
            service,
            cache: RwLock::new(Cache {
                by_hash: HashMap::new(),
                data_version: -1,
            }),
        });
        store.reload().await?;
        Ok(store)
    }

    /// Re-reads every token from `service.db`.
    pub async fn reload(&self) -> Result<(), DocError> {
        let (rows, version) = self
            .service
            .read(|conn| Ok((sql::load_all(conn)?, data_version(conn)?)))
            .await?;
        let by_hash = rows
            .into_iter()
            .map(|row| (row.hash, Arc::new(row)))
            .collect();
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = Cache {
            by_hash,
            data_version: version,
        };
        Ok(())
    }

    /// Background upkeep, once a second: flush `last_used_at` in one batch, and reload when
    /// another process (the CLI) changed `service.db`.
    pub async fn maintain(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => { self.flush_last_used().await; return; }
            }
            self.flush_last_used().await;
            let seen = self
                .cache
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .data_version;
            match self.service.read(data_version).await {
                Ok(v) if v != seen => {
                    if let Err(e) = self.reload().await {
                        tracing::warn!(error = %e, "token reload failed");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "token store check failed"),
            }
        }
    }

    async fn flush_last_used(&self) {
        let used: Vec<(String, OffsetDateTime)> = {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            cache
                .by_hash
                .values()
                .filter_map(|row| match row.used_at.swap(0, Ordering::Relaxed) {
                    0 => None,
                    secs => OffsetDateTime::from_unix_timestamp(secs)
                        .ok()
                        .map(|at| (row.meta.id.clone(), at)),
                })
                .collect()
        };
        if used.is_empty() {
            return;
        }
        if let Err(e) = self
            .service
            .write(move |conn| Ok(sql::touch_last_used(conn, &used)?))
            .await
        {
            tracing::warn!(error = %e, "recording token last_used_at failed");
        }
    }

    /// Checks a presented token: known, not revoked, not expired. A refusal carries the token's
    /// row when it is known (for the audit log: id and label, never the secret).
    pub fn authenticate(
        &self,
        presented: &str,
    ) -> Result<Arc<TokenRow>, (AuthFailure, Option<Arc<TokenRow>>)> {
        let hash = self.key.hash(presented);
        let row = {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            cache.by_hash.get(&hash).cloned()
        };
        let Some(row) = row else {
            return Err((AuthFailure::Unknown, None));
        };
        if !token::hashes_equal(&row.hash, &hash) {
            return Err((AuthFailure::Unknown, None));
        }
        if row.revoked {
            return Err((AuthFailure::Revoked, Some(row)));
        }
        let now = OffsetDateTime::now_utc();
        if row.expires_at.is_some_and(|exp| exp <= now) {
            return Err((AuthFailure::Expired, Some(row)));
        }
        row.used_at.store(now.unix_timestamp(), Ordering::Relaxed);
        Ok(row)
    }

    pub async fn create(&self, new: NewToken) -> Result<(TokenMeta, String), DocError> {
        let key = self.key.clone();
        let created = self
            .service
            .write(move |conn| Ok(sql::create(conn, &key, &new)?))
            .await?;
        tracing::info!(token_id = %created.0.id, label = %created.0.label,
            is_admin = created.0.is_admin, "audit: token created");
        self.reload().await?;
        Ok(created)
    }

    /// Revokes `id`; `false` if no such live token.
    pub async fn revoke(&self, id: String) -> Result<bool, DocError> {
        let log_id = id.clone();
        let label = self
            .service
            .write(move |conn| Ok(sql::revoke(conn, &id)?))
            .await?;
        self.reload().await?;
        match label {
            Some(label) => {
                tracing::info!(token_id = %log_id, label = %label, "audit: token revoked");
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Every token's metadata, read from `service.db` (after flushing pending `last_used_at`).
    pub async fn list(&self) -> Result<Vec<TokenMeta>, DocError> {
        self.flush_last_used().await;
        let rows = self.service.read(|conn| Ok(sql::load_all(conn)?)).await?;
        Ok(rows.into_iter().map(|r| r.meta).collect())
    }
}

/// Validation shared by the admin API and the CLI: label length, a scope for non-admin tokens,
/// an expiry in the future, valid `db_id`s (or `*`).
pub fn validate_new_token(new: &NewToken) -> Result<(), String> {
    if new.label.trim().is_empty() {
        return Err("label must not be empty".into());
    }
    if new.label.chars().count() > 120 {
        return Err("label must be at most 120 characters".into());
    }
    if !new.is_admin && new.scopes.is_empty() {
        return Err("a non-admin token needs at least one scope".into());
    }
    if new
        .expires_at
        .is_some_and(|t| t <= OffsetDateTime::now_utc())
    {
        return Err("expires_at must be in the future".into());
    }
    for scope in &new.scopes {
        if scope.db_id != "*" {
            crate::registry::DbId::parse(&scope.db_id)
                .map_err(|e| format!("scope db_id {:?}: {e}", scope.db_id))?;
        }
        if scope.resource_prefix.as_deref().is_some_and(str::is_empty) {
            return Err("resource_prefix must not be empty when given".into());
        }
    }
    Ok(())
}

/// The token presented in `Authorization`: `Bearer <t>`, `token <t>` or a bare `<t>`.
pub fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let token = match value.split_once(' ') {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") =>
        {
            rest.trim()
        }
        Some(_) => return None,
        None if value.eq_ignore_ascii_case("bearer") || value.eq_ignore_ascii_case("token") => {
            return None;
        }
        None => value,
    };
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn all_three_authorization_forms() {
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer   abc ", Some("abc")),
            ("token abc", Some("abc")),
            ("abc", Some("abc")),
            ("Basic abc", None),
            ("Bearer ", None),
            ("", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            assert_eq!(presented_token(&headers), want, "{value:?}");
        }
        assert_eq!(presented_token(&HeaderMap::new()), None);
    }
}
