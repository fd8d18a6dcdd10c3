//! Web identity: browser sessions (tower-sessions, stored in `service.db` by [`store`]) and the
//! routes that start and end them: OIDC sign-in ([`oidc`]: `GET /auth/login`, `/auth/callback`),
//! `POST /auth/token-login` (when OIDC is off), `GET /auth/me`, `POST /auth/logout`.
//!
//! A session is not a second authorization path: the auth middleware turns the session cookie
//! into the same principal a token would be ([`resolve`]). A session made by token login stands
//! for its admin token (its scopes are the session's; revoking the token ends the session); a
//! person signed in through OIDC is an admin, or holds every action on the documents they own
//! ([`users`]).
//! Unsafe methods from a session need `X-CSRF-Token`. Sessions end after `session_idle_secs`
//! unused and `session_absolute_secs` after sign-in, on logout (deleted server-side), and when
//! their token goes; expired rows are swept every minute.

pub mod oidc;
pub mod store;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

use crate::auth::{Access, AuthFailure, Authorized, Route, TokenRow};
use crate::error::{ApiError, Json};
use crate::state::{App, AppState};
use store::ServiceStore;

/// The session cookie's name.
pub const COOKIE: &str = "patchwork_session";
/// The header unsafe requests from a session must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
const PRINCIPAL: &str = "principal";

/// Marks an `_open` whose document was created by the caller's ownership claim.
#[derive(Clone, Copy, Debug)]
pub struct CreatedByClaim;

/// Most documents one person may own (a bound on what one sign-in can create).
pub const MAX_DOCUMENTS_PER_PERSON: usize = 1_000;

/// The path of the one route through which a signed-in non-admin acquires a document.
pub const OPEN_ROUTE: &str = "/api/v1/db/{db_id}/_open";

/// Who a session belongs to, as stored in the session record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebPrincipal {
    pub subject: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub is_admin: bool,
    /// Token login: the machine token this session stands for.
    pub token_id: Option<String>,
    /// The CSRF token of this session (sent back as `X-CSRF-Token`).
    pub csrf: String,
    /// Unix seconds of sign-in (absolute expiry).
    pub created_at: i64,
    /// Unix seconds the idle expiry was last moved forward.
    pub touched_at: i64,
}

impl WebPrincipal {
    /// How this person appears as `created_by` and in the audit log: `oidc:{sub}` (so no
    /// subject can pass for a system name like `cli` or `token:{id}`), or the token's
    /// `token:{id}` for a token-login session.
    pub fn actor(&self) -> String {
        if self.token_id.is_some() {
            self.subject.clone()
        } else {
            format!("oidc:{}", self.subject)
        }
    }
}

pub fn routes() -> Vec<Route> {
    vec![
        // Anonymous: rate limited per client IP, like every route a guesser could hammer.
        Route::new(
            Method::POST,
            "/auth/token-login",
            Access::Anonymous,
            post(token_login),
        ),
        Route::new(
            Method::GET,
            "/auth/login",
            Access::Anonymous,
            get(oidc::login),
        ),
        Route::new(
            Method::GET,
            "/auth/callback",
            Access::Anonymous,
            get(oidc::callback),
        ),
        Route::new(Method::GET, "/auth/methods", Access::Public, get(methods)),
        Route::new(Method::GET, "/auth/me", Access::Session, get(me)),
        Route::new(Method::POST, "/auth/logout", Access::Session, post(logout)),
    ]
}

/// The sessions layer, applied only where a session can matter: requests that carry a cookie,
/// and the `/auth/` routes (which start and end sessions). Every other request (machine tokens,
/// health checks) skips tower-sessions and its cookie parsing altogether.
pub fn layer(state: &AppState) -> SessionsWhereNeeded {
    SessionsWhereNeeded {
        sessions: manager_layer(state),
    }
}

#[derive(Clone)]
pub struct SessionsWhereNeeded {
    sessions: SessionManagerLayer<ServiceStore>,
}

impl<S: Clone> tower::Layer<S> for SessionsWhereNeeded {
    type Service = MaybeSessions<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MaybeSessions {
            with: self.sessions.layer(inner.clone()),
            without: inner,
        }
    }
}

/// See [`layer`].
#[derive(Clone)]
pub struct MaybeSessions<S> {
    with: <SessionManagerLayer<ServiceStore> as tower::Layer<S>>::Service,
    without: S,
}

fn needs_session<B>(req: &axum::http::Request<B>) -> bool {
    req.uri().path().starts_with("/auth/") || req.headers().contains_key(header::COOKIE)
}

impl<S, B> tower::Service<axum::http::Request<B>> for MaybeSessions<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    <SessionManagerLayer<ServiceStore> as tower::Layer<S>>::Service:
        tower::Service<axum::http::Request<B>, Response = Response, Error = S::Error>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        <<SessionManagerLayer<ServiceStore> as tower::Layer<S>>::Service as tower::Service<
            axum::http::Request<B>,
        >>::Future,
        S::Future,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Both wrap the same (always ready) router service.
        self.without.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        if needs_session(&req) {
            futures_util::future::Either::Left(self.with.call(req))
        } else {
            futures_util::future::Either::Right(self.without.call(req))
        }
    }
}

/// The tower-sessions layer: cookie `patchwork_session`, `HttpOnly`, `SameSite=Lax`, `Path=/`,
/// `Secure` when `public_url` is https; idle expiry moved forward when the session is saved.
fn manager_layer(state: &AppState) -> SessionManagerLayer<ServiceStore> {
    SessionManagerLayer::new(state.sessions.clone())
        .with_name(COOKIE)
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_path("/")
        .with_secure(state.config.secure_cookies())
        .with_expiry(session_expiry(state))
}

/// A signed-in session's expiry: `session_idle_secs` after it was last saved.
fn session_expiry(state: &AppState) -> Expiry {
    let idle = i64::try_from(state.config.session_idle_secs).unwrap_or(i64::MAX);
    Expiry::OnInactivity(time::Duration::seconds(idle))
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("session store: {e}"))
}

fn session_ended(why: &str) -> ApiError {
    ApiError::unauthorized(format!("the session has ended ({why}); sign in again"))
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The caller behind a session cookie: `None` without a (live) session. Checks the absolute
/// expiry, the CSRF header on unsafe methods and that the session's token is still live, and
/// moves the idle expiry forward at most every `min(60 s, idle / 4)` (so plain reads do not
/// write the store on every request).
pub async fn resolve(
    app: &App,
    session: &Session,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<(Arc<TokenRow>, Arc<WebPrincipal>)>, ApiError> {
    let Some(cookie_id) = session.id() else {
        return Ok(None);
    };
    // A record that no longer reads (e.g. written by another version) is dropped, not a 500.
    let principal = match session.get::<WebPrincipal>(PRINCIPAL).await {
        Ok(principal) => principal,
        Err(e) => {
            tracing::warn!(error = %e, "dropping a session that cannot be read");
            session.flush().await.map_err(store_error)?;
            None
        }
    };
    let mut principal = match principal {
        Some(principal) => principal,
        // Not (or no longer) stored: maybe rotated a moment ago by a request of the same
        // browser that overtook this one.
        None => match adopt_rotated(app, session, cookie_id).await? {
            Some(principal) => principal,
            None => return Ok(None),
        },
    };
    let now = now();
    let absolute = i64::try_from(app.config.session_absolute_secs).unwrap_or(i64::MAX);
    if now >= principal.created_at.saturating_add(absolute) {
        session.flush().await.map_err(store_error)?;
        return Err(session_ended("it is older than session_absolute_secs"));
    }
    if !is_safe(method) {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !crate::auth::token::hashes_equal(sent.as_bytes(), principal.csrf.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_required",
                format!(
                    "requests other than GET/HEAD/OPTIONS from a web session need the {CSRF_HEADER} header from /auth/me"
                ),
            ));
        }
    }
    let token = match principal.token_id.as_deref() {
        Some(token_id) => match app.tokens.authenticate_id(token_id) {
            Ok(token) => token,
            Err((failure, _)) => {
                session.flush().await.map_err(store_error)?;
                return Err(session_ended(match failure {
                    AuthFailure::Expired => "its token has expired",
                    _ => "its token was revoked",
                }));
            }
        },
        None => Arc::new(users::principal_row(
            &principal.subject,
            principal.name.as_deref(),
            principal.is_admin,
            &app.owners,
        )),
    };
    // A session marked after a change of the person's grants gets its new id now.
    rotate_if_marked(app, session, cookie_id).await?;
    let idle = i64::try_from(app.config.session_idle_secs).unwrap_or(i64::MAX);
    if now - principal.touched_at >= (idle / 4).clamp(0, 60) {
        principal.touched_at = now;
        session
            .insert(PRINCIPAL, &principal)
            .await
            .map_err(store_error)?;
    }
    Ok(Some((token, Arc::new(principal))))
}

/// A session marked for rotation ([`store::ServiceStore::rotate_subject`], after a change of
/// the person's grants) gets a new id now: the old row is deleted (its cookie stops working,
/// save for [`store::ROTATION_GRACE`] for requests already on their way), the response carries
/// the new cookie, and the CSRF token stays (pages keep working without a reload).
async fn rotate_if_marked(
    app: &App,
    session: &Session,
    cookie_id: tower_sessions::session::Id,
) -> Result<(), ApiError> {
    if !matches!(session.get::<bool>(store::ROTATE).await, Ok(Some(true))) {
        return Ok(());
    }
    app.sessions.begin_rotation(cookie_id);
    session
        .remove_value(store::ROTATE)
        .await
        .map_err(store_error)?;
    session.cycle_id().await.map_err(store_error)?;
    // Saved now, so the new id is known to this request (a stream it opens follows it).
    session.save().await.map_err(store_error)?;
    if let Some(new) = session.id() {
        app.sessions.note_rotation(cookie_id, new);
    }
    app.metrics.streams.sessions_rotated.inc();
    tracing::info!("audit: web session rotated after a change of grants");
    Ok(())
}

/// A request whose session id was rotated less than [`store::ROTATION_GRACE`] ago (it left
/// the browser before the response with the new cookie arrived) continues as a new session of
/// the same sign-in, with a cookie of its own; otherwise `None`.
async fn adopt_rotated(
    app: &App,
    session: &Session,
    cookie_id: tower_sessions::session::Id,
) -> Result<Option<WebPrincipal>, ApiError> {
    use tower_sessions::SessionStore as _;
    let Some(successor) = app
        .sessions
        .successor_settled(&cookie_id, store::ROTATION_GRACE)
        .await
    else {
        return Ok(None);
    };
    let Some(record) = app.sessions.load(&successor).await.map_err(store_error)? else {
        return Ok(None);
    };
    let Some(principal) = record
        .data
        .get(PRINCIPAL)
        .and_then(|v| serde_json::from_value::<WebPrincipal>(v.clone()).ok())
    else {
        return Ok(None);
    };
    session.clear().await;
    session
        .insert(PRINCIPAL, &principal)
        .await
        .map_err(store_error)?;
    session.save().await.map_err(store_error)?;
    Ok(Some(principal))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenLoginBody {
    /// An admin machine token.
    token: String,
}

/// `POST /auth/token-login {token}`: an admin machine token becomes a session (`204` + cookie)
/// when OIDC is off. The session id is always a new one (no fixation).
async fn token_login(
    State(state): State<AppState>,
    session: Session,
    Json(body): Json<TokenLoginBody>,
) -> Result<Response, ApiError> {
    if state.oidc.is_some() {
        return Err(ApiError::not_found(
            "token login is off while OIDC is configured; sign in at /auth/login",
        ));
    }
    let row = state
        .tokens
        .authenticate(body.token.trim())
        .map_err(|(failure, row)| {
            tracing::info!(reason = ?failure, token_id = row.as_ref().map(|r| r.meta.id.as_str()),
                "audit: token login refused");
            ApiError::from(failure)
        })?;
    if !row.meta.is_admin {
        tracing::info!(token_id = %row.meta.id, "audit: token login refused: not an admin token");
        return Err(ApiError::unauthorized(
            "only an admin token can sign in to the dashboard",
        ));
    }
    let now = now();
    let principal = WebPrincipal {
        subject: format!("token:{}", row.meta.id),
        name: Some(row.meta.label.clone()),
        email: None,
        is_admin: true,
        token_id: Some(row.meta.id.clone()),
        csrf: crate::auth::token::mint().1,
        created_at: now,
        touched_at: now,
    };
    // Whatever session the browser came with (maybe one an attacker planted) is dropped and a
    // new id issued.
    session.cycle_id().await.map_err(store_error)?;
    session.clear().await;
    session.set_expiry(Some(session_expiry(&state)));
    session
        .insert(PRINCIPAL, &principal)
        .await
        .map_err(store_error)?;
    tracing::info!(token_id = %row.meta.id, label = %row.meta.label, "audit: token login");
    crate::audit::log(
        &state.service,
        &principal.subject,
        "login",
        None,
        Some("token login".into()),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /auth/methods` → `{oidc, token_login}`: how people sign in here (the sign-in page asks
/// before showing a button or the token form; nothing is started by asking).
async fn methods(State(state): State<AppState>) -> Json<serde_json::Value> {
    let oidc = state.oidc.is_some();
    Json(json!({"oidc": oidc, "token_login": !oidc}))
}

/// `GET /auth/me`.
async fn me(
    State(state): State<AppState>,
    auth: Authorized,
    session: Session,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = auth
        .web
        .as_ref()
        .ok_or_else(|| ApiError::unauthorized("no web session"))?;
    let idle_end = session.expiry_date();
    let absolute = i64::try_from(state.config.session_absolute_secs).unwrap_or(i64::MAX);
    let absolute_end =
        OffsetDateTime::from_unix_timestamp(principal.created_at.saturating_add(absolute))
            .unwrap_or(idle_end);
    Ok(Json(json!({
        "subject": principal.subject,
        "name": principal.name,
        "email": principal.email,
        "is_admin": principal.is_admin,
        "csrf_token": principal.csrf,
        "expires_at": crate::time_fmt::rfc3339(idle_end.min(absolute_end)),
    })))
}

/// `POST /auth/logout`: the session is deleted server-side and the cookie removed.
async fn logout(
    State(state): State<AppState>,
    auth: Authorized,
    session: Session,
) -> Result<Response, ApiError> {
    session.flush().await.map_err(store_error)?;
    if let Some(p) = &auth.web {
        tracing::info!(subject = %p.subject, "audit: logout");
        crate::audit::log(&state.service, &p.actor(), "logout", None, None).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A signed-in non-admin asks to open a document they are not granted: if it does not exist
/// yet and nobody owns it, it becomes theirs (the one way a person acquires a document).
pub async fn claim_new_document(
    app: &App,
    principal: &WebPrincipal,
    db_id: &crate::registry::DbId,
) -> Result<bool, ApiError> {
    if principal.token_id.is_some() || principal.is_admin {
        return Ok(false);
    }
    if app.owners.owner(db_id.as_str()).is_some() {
        return Ok(false);
    }
    let path = app.registry.documents_dir().join(db_id.file_name());
    let exists = tokio::fs::try_exists(&path)
        .await
        .map_err(ApiError::internal)?;
    if exists {
        return Ok(false);
    }
    if app.owners.owned_by(&principal.subject).len() >= MAX_DOCUMENTS_PER_PERSON {
        return Err(ApiError::forbidden(format!(
            "a person may own at most {MAX_DOCUMENTS_PER_PERSON} documents"
        )));
    }
    let owns = app
        .owners
        .claim(&app.service, db_id.as_str(), &principal.subject)
        .await?;
    if !owns {
        return Ok(false);
    }
    // The claim counts only if this request is the one that creates the file: a token that
    // created the document meanwhile (or a failed open) takes the claim back.
    let created = match app.registry.get(db_id).await {
        Ok(doc) => doc.created,
        Err(e) => {
            app.owners
                .unclaim(&app.service, db_id.as_str(), &principal.subject)
                .await?;
            return Err(e.into());
        }
    };
    if !created {
        app.owners
            .unclaim(&app.service, db_id.as_str(), &principal.subject)
            .await?;
        return Ok(false);
    }
    tracing::info!(subject = %principal.subject, db_id = %db_id, "audit: document claimed");
    Ok(true)
}

/// Deletes expired session rows every minute until shutdown.
pub async fn sweeper(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        match state.sessions.delete_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired web sessions deleted"),
            Err(e) => tracing::warn!(error = %e, "deleting expired web sessions failed"),
        }
    }
}
