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
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use futures_util::{Stream, StreamExt};
use time::OffsetDateTime;
use tokio::sync::watch;

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
    /// A person's web session ended (signed out, expired, deleted).
    SessionEnded,
    /// A person's grants on the document changed and no longer allow what the stream does.
    GrantsChanged,
}

impl AuthFailure {
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "a token is required (Authorization: Bearer <token>)",
            AuthFailure::Unknown => "unknown token",
            AuthFailure::Expired => "the token has expired",
            AuthFailure::Revoked => "the token has been revoked",
            AuthFailure::SessionEnded => "the web session has ended; sign in again",
            AuthFailure::GrantsChanged => {
                "the caller's grants on this document changed and no longer allow this stream"
            }
        }
    }

    /// The error code a long-lived stream ends with when its token stops being valid:
    /// `token_expired` for an expiry, `token_revoked` otherwise (revoked or deleted).
    pub fn ended_code(self) -> &'static str {
        match self {
            AuthFailure::Expired => "token_expired",
            AuthFailure::SessionEnded => "session_ended",
            AuthFailure::GrantsChanged => "grants_changed",
            _ => "token_revoked",
        }
    }

    /// `401` with [`Self::ended_code`] as its code: a token-authenticated wait that ended
    /// because the token stopped being valid.
    pub fn ended_error(self) -> ApiError {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            self.ended_code(),
            self.message(),
        )
    }
}

impl From<AuthFailure> for ApiError {
    fn from(f: AuthFailure) -> Self {
        ApiError::unauthorized(f.message())
    }
}

struct Cache {
    by_hash: HashMap<[u8; 32], Arc<TokenRow>>,
    /// The same rows by token id (web sessions made by token login name their token by id).
    by_id: HashMap<String, Arc<TokenRow>>,
    data_version: i64,
}

/// The server's view of all tokens.
pub struct TokenStore {
    key: InstallKey,
    service: DocHandle,
    cache: RwLock<Cache>,
    /// Bumped after every reload (server-side change or one made by the CLI): long-lived
    /// streams re-check their token on it ([`TokenStore::until_invalid`]).
    generation: watch::Sender<u64>,
}

/// A future that resolves when a stream's token stops being valid (never for anonymous
/// callers); see [`TokenStore::until_invalid`].
pub type Invalidated = Pin<Box<dyn Future<Output = AuthFailure> + Send + 'static>>;

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
                by_id: HashMap::new(),
                data_version: -1,
            }),
            generation: watch::Sender::new(0),
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
        let rows: Vec<Arc<TokenRow>> = rows.into_iter().map(Arc::new).collect();
        let by_id = rows
            .iter()
            .map(|row| (row.meta.id.clone(), Arc::clone(row)))
            .collect();
        let by_hash = rows.into_iter().map(|row| (row.hash, row)).collect();
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = Cache {
            by_hash,
            by_id,
            data_version: version,
        };
        // After the swap: a waiter woken by this sees the new rows.
        self.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Resolves when the token `row` was authenticated as stops being valid: revoked, gone
    /// from `service.db`, or past its `expires_at` (`AuthFailure::Expired`; else `Revoked`).
    /// Re-checked on every reload of the cache, so a revocation through the API ends it at once
    /// and one made by the offline CLI within about a second. Long-lived streams (SSE,
    /// WebSocket, stream waits) select on it.
    pub fn until_invalid(self: &Arc<Self>, row: &TokenRow) -> Invalidated {
        let store = Arc::clone(self);
        let hash = row.hash;
        Box::pin(async move {
            // Subscribed before the first check: a reload in between marks it changed.
            let mut changes = store.generation.subscribe();
            loop {
                changes.borrow_and_update();
                let current = {
                    let cache = store.cache.read().unwrap_or_else(|p| p.into_inner());
                    cache.by_hash.get(&hash).cloned()
                };
                let Some(current) = current else {
                    return AuthFailure::Revoked;
                };
                if current.revoked {
                    return AuthFailure::Revoked;
                }
                let now = OffsetDateTime::now_utc();
                let left = match current.expires_at {
                    Some(exp) if exp <= now => return AuthFailure::Expired,
                    Some(exp) => Some(Duration::try_from(exp - now).unwrap_or_default()),
                    None => None,
                };
                let expiry = async {
                    match left {
                        Some(left) => tokio::time::sleep(left).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(expiry);
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            // The store is gone (never while we hold it): only expiry remains.
                            expiry.await;
                        }
                    }
                    () = &mut expiry => {}
                }
            }
        })
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
        Self::check_live(row)
    }

    /// The token with this id, if it is still live (a web session made by token login stands
    /// for its token: revoking or expiring the token ends the session).
    pub fn authenticate_id(
        &self,
        id: &str,
    ) -> Result<Arc<TokenRow>, (AuthFailure, Option<Arc<TokenRow>>)> {
        let row = {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            cache.by_id.get(id).cloned()
        };
        match row {
            Some(row) => Self::check_live(row),
            None => Err((AuthFailure::Revoked, None)),
        }
    }

    fn check_live(
        row: Arc<TokenRow>,
    ) -> Result<Arc<TokenRow>, (AuthFailure, Option<Arc<TokenRow>>)> {
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
        self.create_by(new, "token-api").await
    }

    /// Mints a token recording `created_by` (a subject or `token:{id}`), audited in the same
    /// transaction.
    pub async fn create_by(
        &self,
        new: NewToken,
        created_by: &str,
    ) -> Result<(TokenMeta, String), DocError> {
        let key = self.key.clone();
        let by = created_by.to_owned();
        let created = self
            .service
            .write(move |conn| Ok(sql::create(conn, &key, &new, &by)?))
            .await?;
        tracing::info!(token_id = %created.0.id, label = %created.0.label,
            is_admin = created.0.is_admin, created_by, "audit: token created");
        self.reload().await?;
        Ok(created)
    }

    /// Revokes `id` on behalf of `actor` (audited); `false` if no such live token.
    pub async fn revoke(&self, id: String, actor: &str) -> Result<bool, DocError> {
        let log_id = id.clone();
        let who = actor.to_owned();
        let label = self
            .service
            .write(move |conn| {
                let label = sql::revoke(conn, &id)?;
                if label.is_some() {
                    crate::audit::record(conn, &who, "token.revoke", Some(&id), None)?;
                }
                Ok(label)
            })
            .await?;
        self.reload().await?;
        match label {
            Some(label) => {
                tracing::info!(token_id = %log_id, label = %label, actor, "audit: token revoked");
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

/// `events` until `invalidated` resolves; then `last(reason)` as the final item and the end.
/// The inner stream is dropped at once (its producer sees its channel closed), so items it had
/// queued are not delivered after the token stopped being valid.
pub fn until_invalid<S, F>(
    events: S,
    invalidated: Invalidated,
    last: F,
) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream + Send + 'static,
    S::Item: Send,
    F: FnOnce(AuthFailure) -> S::Item + Send + 'static,
{
    struct Live<S, F> {
        events: Pin<Box<S>>,
        invalidated: Invalidated,
        last: F,
    }
    let live = Live {
        events: Box::pin(events),
        invalidated,
        last,
    };
    futures_util::stream::unfold(Some(live), |state| async move {
        let mut live = state?;
        let next = tokio::select! {
            biased;
            reason = &mut live.invalidated => Err(reason),
            item = live.events.next() => Ok(item),
        };
        match next {
            Err(reason) => Some(((live.last)(reason), None)),
            Ok(item) => item.map(|item| (item, Some(live))),
        }
    })
}

/// The query parameter names that carry a token on routes declared with
/// [`Route::with_query_token`]: `access_token`, and `token` as the legacy stream routes spell it.
/// Compared after form-decoding the key, exactly as [`query_token`] reads them.
const QUERY_TOKEN_KEYS: [&str; 2] = ["access_token", "token"];

/// Whether a (decoded) query key carries a credential. The one rule shared by the
/// authorization middleware (which keys it accepts) and everything that stores or forwards a
/// query string (which keys it strips): `?access%5Ftoken=` or `?%61ccess_token=` are the same
/// key as `?access_token=`.
pub fn is_credential_key(decoded: &str) -> bool {
    QUERY_TOKEN_KEYS.contains(&decoded)
}

/// `application/x-www-form-urlencoded` decoding of one key or value (`+` is a space, `%XX` a
/// byte, invalid escapes kept as they are, invalid UTF-8 replaced), as axum's `Query` does.
fn form_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pairs of a query string: `(raw pair, decoded key, decoded value)`.
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, String, String)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (pair, form_decode(k), form_decode(v))
    })
}

/// The token given in a query string (`access_token` before `token`; empty values ignored).
pub fn query_token(query: &str) -> Option<String> {
    QUERY_TOKEN_KEYS.iter().find_map(|key| {
        query_pairs(query)
            .find(|(_, k, v)| k == key && !v.is_empty())
            .map(|(_, _, v)| v)
    })
}

/// `query` without any credential pair (see [`is_credential_key`]); the other pairs are kept
/// exactly as received, in order.
pub fn strip_query_credentials(query: &str) -> String {
    query_pairs(query)
        .filter(|(_, k, _)| !is_credential_key(k))
        .map(|(raw, _, _)| raw)
        .collect::<Vec<_>>()
        .join("&")
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

    #[test]
    fn query_credentials_are_read_and_stripped_by_one_rule() {
        for q in [
            "access_token=T",
            "access%5Ftoken=T",
            "%61ccess_token=T",
            "%61%63%63%65%73%73%5f%74%6f%6b%65%6e=T",
            "token=T",
            "%74oken=T",
            "x=1&token=&access%5ftoken=T",
        ] {
            assert_eq!(query_token(q).as_deref(), Some("T"), "{q}");
            assert!(!strip_query_credentials(q).contains('T'), "{q}");
        }
        assert_eq!(query_token("token=B&access_token=A").as_deref(), Some("A"));
        assert_eq!(query_token("Access_token=T&access+token=T"), None);
        assert_eq!(query_token("access_token="), None);
        assert_eq!(
            strip_query_credentials("a=1&access%5Ftoken=T&&b=%zz&token&c=x+y"),
            "a=1&b=%zz&c=x+y"
        );
        assert_eq!(form_decode("a%2"), "a%2");
        assert_eq!(form_decode("%ff+%41"), "\u{fffd} A");
    }
}
