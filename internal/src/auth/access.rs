//! The one authorization path. Every route is declared once, in its capability's `routes()`, as a
//! [`Route`]: method, path, the [`Access`] it needs and how its resource is found. The router is
//! built only from these declarations, and one middleware (`auth::middleware`) enforces them
//! before any handler runs, so before a document is opened or a statement prepared. Handlers get
//! an [`Authorized`] witness and use it for the checks only they can make (a resource from the
//! body, the statement class decided by SQLite).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::{Method, request::Parts};
use axum::routing::MethodRouter;

use super::scope::{Action, Scope};
use super::sql::TokenRow;
use crate::error::ApiError;
use crate::registry::DbId;
use crate::state::AppState;

/// Where a route's resource (topic, stream path, lease resource, endpoint, blob hash) comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceFrom {
    /// The route has no resource: scopes with a `resource_prefix` do not grant it.
    None,
    /// A path parameter (e.g. `"path"` of `/streams/queue/{*path}`), checked by the middleware.
    Path(&'static str),
    /// The body or query names it; the handler calls [`Authorized::resource`] before acting.
    Handler,
}

/// What a route requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token (operations endpoints, the dashboard). Not rate limited.
    Public,
    /// No token, rate limited per client IP (legacy public streams).
    Anonymous,
    /// A web session (any signed-in person): `/auth/me`, `/auth/logout`.
    Session,
    /// Any valid token or session; the handler decides who sees what (`GET /api/v1/dbs`).
    AnyCaller,
    /// An admin token.
    Admin,
    /// `action` on `db_id = "*"` (or an admin token).
    Global(Action),
    /// One of `actions` on the path's `{db_id}`. With several actions the handler narrows it down
    /// with [`Authorized::require`] (e.g. query classification).
    Db {
        actions: &'static [Action],
        resource: ResourceFrom,
    },
}

/// The declaration of one route (what the tests' authorization matrix reads).
#[derive(Clone, Debug)]
pub struct RouteSpec {
    /// `None`: every method (request/response relays, webhooks, gone legacy routes).
    pub method: Option<Method>,
    /// axum path template, e.g. `/api/v1/db/{db_id}/_status`.
    pub path: &'static str,
    pub access: Access,
    /// Accept the token as `?access_token=` or `?token=` (SSE, WebSocket, webhook and stream
    /// routes only; see [`super::is_credential_key`]).
    pub query_token: bool,
}

/// A route: its declaration and its handler.
pub struct Route {
    pub spec: RouteSpec,
    pub handler: MethodRouter<AppState>,
}

impl Route {
    pub fn new(
        method: Method,
        path: &'static str,
        access: Access,
        handler: MethodRouter<AppState>,
    ) -> Self {
        Self {
            spec: RouteSpec {
                method: Some(method),
                path,
                access,
                query_token: false,
            },
            handler,
        }
    }

    /// A route that takes every method (`handler` is typically `axum::routing::any(..)`).
    pub fn any(path: &'static str, access: Access, handler: MethodRouter<AppState>) -> Self {
        Self {
            spec: RouteSpec {
                method: None,
                path,
                access,
                query_token: false,
            },
            handler,
        }
    }

    /// Also accept the token as `?access_token=` or `?token=`.
    pub fn with_query_token(mut self) -> Self {
        self.spec.query_token = true;
        self
    }
}

/// Does `scope` grant `action` on `db_id` for `resource`?
/// A scope with a `resource_prefix` grants only resources starting with it; it grants nothing on
/// a route without a resource.
pub fn scope_grants(scope: &Scope, db_id: &str, action: Action, resource: Option<&str>) -> bool {
    if !scope.covers(db_id, action) {
        return false;
    }
    match (&scope.resource_prefix, resource) {
        (None, _) => true,
        (Some(prefix), Some(resource)) => resource.starts_with(prefix.as_str()),
        (Some(_), None) => false,
    }
}

/// Does `token` pass a DB route's declared check: one of `actions` on `db_id`, for the path's
/// resource `value` ([`ResourceFrom::Path`]), for no resource ([`ResourceFrom::None`]), or
/// for some resource the handler will check ([`ResourceFrom::Handler`])?
pub fn route_grants(
    token: &TokenRow,
    db_id: &str,
    actions: &[Action],
    resource: ResourceFrom,
    value: Option<&str>,
) -> bool {
    token.meta.is_admin
        || actions.iter().any(|&action| {
            token.meta.scopes.iter().any(|s| match resource {
                ResourceFrom::None => scope_grants(s, db_id, action, None),
                ResourceFrom::Path(_) => scope_grants(s, db_id, action, value),
                ResourceFrom::Handler => s.covers(db_id, action),
            })
        })
}

/// One check a request passed, as [`Checks`] keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Check {
    /// The route's declaration ([`route_grants`]).
    Route {
        actions: &'static [Action],
        resource: ResourceFrom,
        value: Option<String>,
    },
    /// A handler's [`Authorized::require`] / [`Authorized::resource`].
    Grant {
        action: Action,
        resource: Option<String>,
    },
}

/// What a request was authorized for (the route's check and the handler's own, up to the
/// moment a long-lived stream starts: [`Authorized::invalidated`]), and the caller's grants as
/// they are now once they changed. When a person's grants change, their open streams re-check
/// what they were allowed against the new grants: still allowed, they go on under the new
/// grants (later checks, e.g. a WebSocket's publish frames, use them); otherwise they end.
#[derive(Default)]
pub struct Checks {
    frozen: std::sync::atomic::AtomicBool,
    made: std::sync::Mutex<Vec<Check>>,
    /// The route template (for the open-streams gauge).
    route: std::sync::OnceLock<&'static str>,
    current: std::sync::RwLock<Option<Arc<TokenRow>>>,
}

/// Checks kept per request at most (a stream's set-up makes a handful).
const MAX_CHECKS: usize = 64;

impl Checks {
    fn record(&self, check: Check) {
        if self.frozen.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if made.len() < MAX_CHECKS && !made.contains(&check) {
            made.push(check);
        }
    }

    fn freeze(&self) {
        self.frozen
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `token` passes every check recorded (on `db_id`, or `*` off DB routes).
    fn all_pass(&self, token: &TokenRow, db_id: &str) -> bool {
        let made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        made.iter().all(|check| match check {
            Check::Route {
                actions,
                resource,
                value,
            } => route_grants(token, db_id, actions, *resource, value.as_deref()),
            Check::Grant { action, resource } => {
                token_grants(token, db_id, *action, resource.as_deref())
            }
        })
    }
}

fn token_grants(token: &TokenRow, db_id: &str, action: Action, resource: Option<&str>) -> bool {
    token.meta.is_admin
        || token
            .meta
            .scopes
            .iter()
            .any(|s| scope_grants(s, db_id, action, resource))
}

/// The witness a handler receives: the caller passed the route's [`Access`].
#[derive(Clone)]
pub struct Authorized {
    /// `None` on public and anonymous routes.
    pub token: Option<Arc<TokenRow>>,
    /// The validated `{db_id}` of a DB route.
    pub db_id: Option<DbId>,
    /// On a route whose resource is a path parameter ([`ResourceFrom::Path`]): that parameter,
    /// percent-decoded, exactly as the scope was checked against it. Handlers use this string
    /// (never the raw request path) for the resource they act on.
    pub resource: Option<String>,
    /// Set when the caller came with a web session cookie instead of a token.
    pub web: Option<Arc<crate::identity::WebPrincipal>>,
    /// That session's id (to notice when it ends while a stream is open).
    pub session_id: Option<tower_sessions::session::Id>,
    /// What this request was checked for, shared by its clones ([`Checks`]).
    pub checks: Arc<Checks>,
}

impl Authorized {
    pub fn is_admin(&self) -> bool {
        self.token.as_ref().is_some_and(|t| t.meta.is_admin)
    }

    /// The route's document (DB routes only).
    pub fn db(&self) -> Result<&DbId, ApiError> {
        self.db_id
            .as_ref()
            .ok_or_else(|| ApiError::internal("db() on a route without {db_id}"))
    }

    /// Resolves when the caller stops being valid: its token is revoked, deleted or expires, or
    /// a person's web session ends (signed out, idle or absolute expiry: checked every two
    /// seconds, following the session through a rotation to its new id), or that person's
    /// grants change so that what this request was checked for is no longer allowed (at once,
    /// [`crate::identity::users::Owners::grant_changes`]); never on public and anonymous
    /// routes. Long-lived streams select on it and end. Checks made after this call are not
    /// recorded for re-checking (they use the grants as they are then).
    pub fn invalidated(&self, app: &crate::state::App) -> super::Invalidated {
        use crate::ops::metrics::{ReasonLabel, RouteLabel};
        /// Counts an open stream until dropped.
        struct Open(prometheus_client::metrics::gauge::Gauge);
        impl Drop for Open {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.checks.freeze();
        let route = self.checks.route.get().copied().unwrap_or("unknown");
        let open = app
            .metrics
            .streams
            .open
            .get_or_create(&RouteLabel { route })
            .clone();
        open.inc();
        let open = Open(open);
        let metrics = Arc::clone(&app.metrics);
        let until = self.until_invalid(app);
        Box::pin(async move {
            let _open = open;
            let reason = until.await;
            metrics
                .streams
                .ended
                .get_or_create(&ReasonLabel {
                    reason: reason.ended_code(),
                })
                .inc();
            reason
        })
    }

    fn until_invalid(&self, app: &crate::state::App) -> super::Invalidated {
        if let (Some(web), Some(id)) = (&self.web, self.session_id)
            && web.token_id.is_none()
        {
            let sessions = app.sessions.clone();
            let owners = Arc::clone(&app.owners);
            // Subscribed before anything is checked: a change from now on is seen.
            let mut changes = owners.grant_changes();
            let checks = Arc::clone(&self.checks);
            let web = Arc::clone(web);
            let db = self
                .db_id
                .as_ref()
                .map_or_else(|| "*".to_owned(), |d| d.as_str().to_owned());
            let absolute = i64::try_from(app.config.session_absolute_secs).unwrap_or(i64::MAX);
            let ends_at = web.created_at.saturating_add(absolute);
            return Box::pin(async move {
                use crate::identity::store::{ROTATION_MEMORY, Successor};
                use tokio::sync::broadcast::error::RecvError;
                use tower_sessions::SessionStore as _;
                let mut id = id;
                let period = std::time::Duration::from_secs(2);
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut changes_open = true;
                // The grants as they are now pass every check, or the stream ends; also once at
                // the start (a change between the request's authorization and the
                // subscription above is not missed).
                let still_allowed = || {
                    let now = Arc::new(crate::identity::users::principal_row(
                        &web.subject,
                        web.name.as_deref(),
                        web.is_admin,
                        &owners,
                    ));
                    if !checks.all_pass(&now, &db) {
                        return false;
                    }
                    *checks.current.write().unwrap_or_else(|p| p.into_inner()) = Some(now);
                    true
                };
                if !still_allowed() {
                    return super::AuthFailure::GrantsChanged;
                }
                loop {
                    let recheck = tokio::select! {
                        _ = tick.tick() => {
                            let now = time::OffsetDateTime::now_utc().unix_timestamp();
                            if now >= ends_at {
                                return super::AuthFailure::SessionEnded;
                            }
                            if !matches!(sessions.load(&id).await, Ok(Some(_))) {
                                // Rotated to a new id (privilege change): follow it.
                                match sessions.successor(&id, ROTATION_MEMORY) {
                                    Successor::Id(new) => id = new,
                                    Successor::Pending => {}
                                    Successor::None => return super::AuthFailure::SessionEnded,
                                }
                            }
                            false
                        }
                        change = changes.recv(), if changes_open => match change {
                            Ok(change) => change.subject == web.subject && (db == "*" || change.db_id == db),
                            Err(RecvError::Lagged(_)) => true,
                            Err(RecvError::Closed) => {
                                changes_open = false;
                                false
                            }
                        },
                    };
                    if recheck && !still_allowed() {
                        return super::AuthFailure::GrantsChanged;
                    }
                }
            });
        }
        match &self.token {
            Some(row) => app.tokens.until_invalid(row),
            None => Box::pin(std::future::pending()),
        }
    }

    /// Who acts, for `created_by` and the audit log: `oidc:{sub}` for a person, `token:{id}`
    /// for a token (also behind a token-login session); `anonymous` on public routes.
    pub fn actor(&self) -> String {
        match (&self.web, &self.token) {
            (Some(web), _) => web.actor(),
            (_, Some(token)) => format!("token:{}", token.meta.id),
            _ => "anonymous".to_owned(),
        }
    }

    /// The signed-in person (OIDC) behind this request, if it is one who is not an admin: the
    /// token routes limit them to their own documents and tokens.
    pub fn person(&self) -> Option<&crate::identity::WebPrincipal> {
        self.web
            .as_deref()
            .filter(|w| w.token_id.is_none() && !w.is_admin)
    }

    /// Whether the caller holds some action on `db_id` (admin, or a scope naming it or `*`; a
    /// person's scopes are the documents they own).
    pub fn sees(&self, db_id: &str) -> bool {
        self.token.as_ref().is_some_and(|t| {
            t.meta.is_admin
                || t.meta
                    .scopes
                    .iter()
                    .any(|s| s.db_id == "*" || s.db_id == db_id)
        })
    }

    /// The token id, as `producer` and in audit logs.
    pub fn token_id(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.meta.id.as_str())
    }

    fn grants(&self, action: Action, resource: Option<&str>) -> bool {
        let db = self.db_id.as_ref().map_or("*", DbId::as_str);
        // Only a person's grants change under an open stream (a token's are fixed).
        if self.web.is_none() {
            return self
                .token
                .as_ref()
                .is_some_and(|token| token_grants(token, db, action, resource));
        }
        // The grants as they are now, when they changed while a stream was open.
        let current = self
            .checks
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let Some(token) = current.as_ref().or(self.token.as_ref()) else {
            return false;
        };
        let granted = token_grants(token, db, action, resource);
        drop(current);
        if granted {
            self.checks.record(Check::Grant {
                action,
                resource: resource.map(str::to_owned),
            });
        }
        granted
    }

    /// Records that the route's declared check passed (the authorization middleware; kept for
    /// a person's requests, whose grants may change while a stream is open).
    pub(crate) fn record_route(
        &self,
        path: &'static str,
        actions: &'static [Action],
        resource: ResourceFrom,
        value: Option<&str>,
    ) {
        let _ = self.checks.route.set(path);
        if self.web.is_none() {
            return;
        }
        self.checks.record(Check::Route {
            actions,
            resource,
            value: value.map(str::to_owned),
        });
    }

    /// `403` unless the caller holds `action` (unprefixed) on this document.
    pub fn require(&self, action: Action) -> Result<(), ApiError> {
        if self.grants(action, None) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the token lacks {action} on this document"
            )))
        }
    }

    /// `403` unless the caller holds `action` on this document for `resource`.
    pub fn resource(&self, action: Action, resource: &str) -> Result<(), ApiError> {
        if self.grants(action, Some(resource)) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the token lacks {action} for {resource:?} on this document"
            )))
        }
    }
}

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Authorized>()
            .cloned()
            .ok_or_else(|| ApiError::internal("handler reached without the authorization layer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(db: &str, action: Action, prefix: Option<&str>) -> Scope {
        Scope {
            db_id: db.into(),
            action,
            resource_prefix: prefix.map(Into::into),
        }
    }

    #[test]
    fn scope_matching() {
        let s = scope("chat", Action::PubPublish, Some("room/"));
        assert!(scope_grants(&s, "chat", Action::PubPublish, Some("room/1")));
        assert!(!scope_grants(&s, "chat", Action::PubPublish, Some("roo")));
        assert!(!scope_grants(&s, "chat", Action::PubPublish, None));
        assert!(!scope_grants(
            &s,
            "other",
            Action::PubPublish,
            Some("room/1")
        ));
        assert!(!scope_grants(
            &s,
            "chat",
            Action::PubSubscribe,
            Some("room/1")
        ));
        let any = scope("*", Action::QueryRead, None);
        assert!(scope_grants(&any, "x", Action::QueryRead, None));
        assert!(!scope_grants(&any, "x", Action::QueryWrite, None));
        // Actions are independent: admin does not imply read or write.
        let admin = scope("x", Action::QueryAdmin, None);
        assert!(!scope_grants(&admin, "x", Action::QueryRead, None));
    }
}
