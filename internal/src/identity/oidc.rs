//! OpenID Connect relying party (the `openidconnect` crate): `GET /auth/login` sends the browser
//! to the provider with an authorization-code request (PKCE S256, `state`, `nonce`, kept in the
//! pre-login session); `GET /auth/callback` checks `state` (once: a replay finds nothing), trades
//! the code with the PKCE verifier, verifies the ID token (signature against the provider's
//! JWKS, issuer, audience, expiry, nonce), records the user and starts a session with a new id.
//!
//! The provider's metadata is discovered on first use (and again after a failure), so a
//! provider that is down at start-up does not keep Patchwork from starting. The HTTP client
//! never follows redirects (the crate's requirement: a redirect could leak the code).

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
// The crate's own reqwest (the same version it was built against).
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::reqwest;
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tower_sessions::{Expiry, Session};

use super::users::{self, SignedIn};
use super::{PRINCIPAL, WebPrincipal, now, store_error};
use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;

const PENDING: &str = "oidc_pending";
/// How long a started login may take at the provider.
const PENDING_SECS: i64 = 600;

/// The relying party's settings and the provider's discovered metadata.
pub struct Oidc {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    redirect_url: String,
    scopes: Vec<String>,
    admin_subjects: Vec<String>,
    admin_claim: Option<(String, String)>,
    http: reqwest::Client,
    /// Discovered metadata (with the provider's signing keys) and when it was fetched.
    metadata: Mutex<Option<(std::time::Instant, CoreProviderMetadata)>>,
}

/// The client type `from_provider_metadata` gives (authorization endpoint set, token and user
/// info endpoints as the metadata says).
type RpClient = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// How long discovered metadata (and so the JWKS) is used before it is fetched again; an ID
/// token that fails verification also drops it, so a key rotation heals at the next sign-in.
const METADATA_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Oidc {
    /// `None` when OIDC is off (no `oidc_issuer`).
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        let Some(issuer) = config.oidc_issuer.clone() else {
            return Ok(None);
        };
        let public_url = config.public_url.as_deref().unwrap_or_default();
        let http = reqwest::ClientBuilder::new()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Some(Self {
            issuer,
            client_id: config.oidc_client_id.clone().unwrap_or_default(),
            client_secret: config
                .oidc_client_secret
                .as_ref()
                .map(|s| s.expose().to_owned()),
            redirect_url: format!("{}/auth/callback", public_url.trim_end_matches('/')),
            scopes: config.oidc_scopes.clone(),
            admin_subjects: config.oidc_admin_subjects.clone(),
            admin_claim: config
                .oidc_admin_claim
                .as_deref()
                .and_then(|c| c.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
            http,
            metadata: Mutex::new(None),
        }))
    }

    async fn metadata(&self) -> Result<CoreProviderMetadata, ApiError> {
        let mut cached = self.metadata.lock().await;
        if let Some((at, m)) = cached.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        let issuer = IssuerUrl::new(self.issuer.clone()).map_err(ApiError::internal)?;
        let discovered = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, issuer = %self.issuer, "OIDC discovery failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "oidc_unavailable",
                    "the sign-in provider cannot be reached; try again",
                )
                .with_retry_after(5)
            })?;
        *cached = Some((std::time::Instant::now(), discovered.clone()));
        Ok(discovered)
    }

    /// The relying party's client for this provider (rebuilt per sign-in: it is cheap).
    fn client(&self, metadata: CoreProviderMetadata) -> Result<RpClient, ApiError> {
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.client_id.clone()),
            self.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(RedirectUrl::new(self.redirect_url.clone()).map_err(ApiError::internal)?))
    }

    async fn forget_metadata(&self) {
        *self.metadata.lock().await = None;
    }

    /// Whether the ID token's claims make this person an admin.
    fn is_admin(&self, subject: &str, claims: &serde_json::Value) -> bool {
        if self.admin_subjects.iter().any(|s| s == subject) {
            return true;
        }
        let Some((name, want)) = &self.admin_claim else {
            return false;
        };
        match claims.get(name) {
            Some(serde_json::Value::String(s)) => s == want,
            Some(serde_json::Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(want)),
            Some(serde_json::Value::Bool(b)) => b.to_string() == *want,
            _ => false,
        }
    }
}

/// What the pre-login session remembers between `/auth/login` and `/auth/callback`.
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    verifier: String,
    next: String,
}

/// `next` if it is a path on this site, else `/ui/`: never a redirect elsewhere.
pub fn local_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(|c| c.is_control() || c == '\\') =>
        {
            n.to_owned()
        }
        _ => "/ui/".to_owned(),
    }
}

fn oidc_off() -> ApiError {
    ApiError::not_found("OIDC sign-in is not configured; sign in with POST /auth/token-login")
}

/// A `400` page for a failed sign-in (a browser lands here), with no session started.
fn failed(why: &str) -> Response {
    tracing::info!(reason = why, "audit: OIDC login refused");
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>Sign-in failed · Patchwork</title>\
         <body style=\"font:16px system-ui;max-width:32rem;margin:4rem auto;padding:0 1rem\">\
         <h1>Sign-in failed</h1><p>{}</p><p><a href=\"/auth/login\">Try again</a></p></body>",
        html_escape(why)
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// `GET /auth/login?next=/ui/...` → `302` to the provider.
pub async fn login(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<LoginQuery>,
) -> Result<Response, ApiError> {
    let oidc = state.oidc.as_ref().ok_or_else(oidc_off)?;
    let metadata = oidc.metadata().await?;
    let client = oidc.client(metadata)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scopes(oidc.scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge)
        .url();
    let pending = Pending {
        state: csrf.secret().clone(),
        nonce: nonce.secret().clone(),
        verifier: verifier.secret().clone(),
        next: local_next(query.next.as_deref()),
    };
    // A short-lived pre-login session holds what the callback must check (a signed-in
    // session keeps its own expiry: a link to /auth/login must not cut it short).
    let signed_in = session
        .get_value(PRINCIPAL)
        .await
        .map_err(store_error)?
        .is_some();
    if !signed_in {
        session.set_expiry(Some(Expiry::OnInactivity(time::Duration::seconds(
            PENDING_SECS,
        ))));
    }
    session
        .insert(PENDING, &pending)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response())
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/callback?code=&state=` → session with a new id, `302` to `next`. A refused
/// callback deletes the pre-login session server-side (its state can never be tried again).
pub async fn callback(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let oidc = state.oidc.as_ref().ok_or_else(oidc_off)?;
    let answer = complete(&state, oidc, &session, query).await?;
    if answer.status() == StatusCode::BAD_REQUEST {
        session.flush().await.map_err(store_error)?;
    }
    Ok(answer)
}

async fn complete(
    state: &AppState,
    oidc: &Oidc,
    session: &Session,
    query: CallbackQuery,
) -> Result<Response, ApiError> {
    // Taken out at once: a replayed callback finds nothing.
    let pending: Option<Pending> = session.remove(PENDING).await.map_err(store_error)?;
    let Some(pending) = pending else {
        return Ok(failed(
            "this sign-in was not started here, was already used, or took too long",
        ));
    };
    if let Some(error) = &query.error {
        let detail = query.error_description.as_deref().unwrap_or("");
        return Ok(failed(&format!("the provider refused: {error} {detail}")));
    }
    let (Some(code), Some(returned_state)) = (&query.code, &query.state) else {
        return Ok(failed("the provider's answer has no code or state"));
    };
    if !crate::auth::token::hashes_equal(returned_state.as_bytes(), pending.state.as_bytes()) {
        return Ok(failed("the sign-in state does not match"));
    }
    let metadata = oidc.metadata().await?;
    let client = oidc.client(metadata)?;
    let exchange = match client.exchange_code(AuthorizationCode::new(code.clone())) {
        Ok(request) => request,
        Err(e) => return Ok(failed(&format!("the provider has no token endpoint: {e}"))),
    };
    let tokens = match exchange
        .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
        .request_async(&oidc.http)
        .await
    {
        Ok(tokens) => tokens,
        Err(e) => return Ok(failed(&format!("the code was not accepted: {e}"))),
    };
    let Some(id_token) = tokens.id_token() else {
        return Ok(failed("the provider sent no ID token"));
    };
    let verifier = client.id_token_verifier();
    let claims = match id_token.claims(&verifier, &Nonce::new(pending.nonce)) {
        Ok(claims) => claims,
        Err(e) => {
            // Maybe the provider rotated its keys: fetch them again next time.
            oidc.forget_metadata().await;
            return Ok(failed(&format!("the ID token is not valid: {e}")));
        }
    };
    let subject = claims.subject().as_str().to_owned();
    // Verified above; read again as JSON for the admin claim (which may be any custom claim).
    let raw_claims = id_token
        .to_string()
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .unwrap_or_default();
    let user = SignedIn {
        is_admin: oidc.is_admin(&subject, &raw_claims),
        name: claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned())
            .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned())),
        email: claims.email().map(|e| e.as_str().to_owned()),
        subject,
    };
    users::upsert(&state.service, user.clone()).await?;
    let now = now();
    let principal = WebPrincipal {
        subject: user.subject.clone(),
        name: user.name,
        email: user.email,
        is_admin: user.is_admin,
        token_id: None,
        csrf: crate::auth::token::mint().1,
        created_at: now,
        touched_at: now,
    };
    session.cycle_id().await.map_err(store_error)?;
    session.clear().await;
    session.set_expiry(Some(super::session_expiry(state)));
    session
        .insert(PRINCIPAL, &principal)
        .await
        .map_err(store_error)?;
    tracing::info!(subject = %principal.subject, is_admin = principal.is_admin, "audit: OIDC login");
    crate::audit::log(
        &state.service,
        &principal.actor(),
        "login",
        None,
        Some(format!("oidc, admin {}", principal.is_admin)),
    )
    .await;
    Ok((StatusCode::FOUND, [(header::LOCATION, pending.next)]).into_response())
}
