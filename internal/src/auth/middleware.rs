//! The authorization layer: looks the matched route up in the route table and enforces its
//! [`Access`] (global limit → token → per-token/per-IP limit → `db_id` → scope) before the
//! handler runs. The handler finds an [`Authorized`] witness in the request extensions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Action;
use super::access::{Access, Authorized, ResourceFrom, RouteSpec, route_grants};
use super::{AuthFailure, presented_token};
use crate::error::ApiError;
use crate::registry::DbId;
use crate::router::RouteTag;
use crate::state::AppState;

/// Route table keyed by method (`None` = any) and path template.
pub type RouteTable = HashMap<(Option<Method>, &'static str), RouteSpec>;

#[derive(Clone)]
pub struct AuthLayer {
    pub app: AppState,
    pub table: Arc<RouteTable>,
}

/// `?access_token=` (or `?token=`, the legacy stream routes' spelling) on routes that take it;
/// keys are decoded first ([`super::is_credential_key`] is the same rule for stripping them).
fn query_token(req: &Request) -> Option<String> {
    super::query_token(req.uri().query()?)
}

/// The byte-relay routes (`stream.*` actions). They never take a web session (also what the
/// OpenAPI document's security requirements say, from this same rule).
pub(crate) fn relay_route(access: &Access) -> bool {
    matches!(access, Access::Db { actions, .. }
        if actions.iter().any(|a| matches!(a, Action::StreamRead | Action::StreamWrite)))
}

/// `true` unless this is a WebSocket upgrade whose `Origin` is not this site (the request's own
/// `Host`, or `public_url`).
fn same_origin_upgrade(req: &Request, app: &crate::state::App) -> bool {
    use axum::http::header;
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return true;
    }
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let own = |scheme: &str| format!("{scheme}://{host}");
    origin == own("http")
        || origin == own("https")
        || app
            .config
            .public_url
            .as_deref()
            .is_some_and(|u| u.trim_end_matches('/') == origin)
}

pub async fn authorize(State(layer): State<AuthLayer>, req: Request, next: Next) -> Response {
    let mut tag = None;
    let mut response = match check(&layer, req, &mut tag).await {
        Ok((mut req, authorized)) => {
            req.extensions_mut().insert(authorized);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    };
    if let Some(path) = tag {
        response.extensions_mut().insert(RouteTag(path));
    }
    response
}

async fn check(
    layer: &AuthLayer,
    req: Request,
    tag: &mut Option<&'static str>,
) -> Result<(Request, Authorized), ApiError> {
    let app = &layer.app;
    let Some(matched) = req.extensions().get::<MatchedPath>() else {
        return Err(ApiError::internal(
            "authorization layer without a matched route",
        ));
    };
    let path = matched.as_str();
    let method = req.method().clone();
    let table = &layer.table;
    let spec = table
        .get(&(Some(method.clone()), path))
        .or_else(|| {
            (method == Method::HEAD)
                .then(|| table.get(&(Some(Method::GET), path)))
                .flatten()
        })
        .or_else(|| table.get(&(None, path)))
        .cloned()
        .ok_or_else(|| {
            ApiError::internal(format!("route {method} {path} is not in the route table"))
        })?;
    *tag = Some(spec.path);

    let public = Authorized {
        token: None,
        db_id: None,
        resource: None,
        web: None,
        session_id: None,
        checks: Default::default(),
    };
    match spec.access {
        Access::Public => return Ok((req, public)),
        Access::Anonymous => {
            app.limits.check_global()?;
            let peer = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            if let Some(peer) = peer {
                app.limits
                    .check_ip(app.limits.client_ip(peer, req.headers()))?;
            }
            return Ok((req, public));
        }
        _ => {}
    }
    app.limits.check_global()?;

    let from_query = if spec.query_token && presented_token(req.headers()).is_none() {
        query_token(&req)
    } else {
        None
    };
    let presented = presented_token(req.headers()).or(from_query.as_deref());
    // Without a token, a web session cookie stands for its principal (and unsafe methods need
    // its CSRF header); a token, when given, always wins.
    let mut web = None;
    let mut session_id = None;
    let mut token = match presented {
        Some(presented) => app
            .tokens
            .authenticate(presented)
            .map_err(|(failure, row)| {
                tracing::info!(path = req.uri().path(), reason = ?failure,
                token_id = row.as_ref().map(|r| r.meta.id.as_str()),
                label = row.as_ref().map(|r| r.meta.label.as_str()),
                "audit: auth failure");
                ApiError::from(failure)
            })?,
        None => {
            // Byte-relay routes never take a session: a plain link (GET with the cookie) must
            // not consume a queued message as someone who merely clicked it.
            let session = req
                .extensions()
                .get::<tower_sessions::Session>()
                .filter(|_| !relay_route(&spec.access))
                .cloned();
            let resolved = match &session {
                Some(session) => {
                    crate::identity::resolve(app, session, req.method(), req.headers()).await?
                }
                None => None,
            };
            // A WebSocket is a GET, so CSRF's header check cannot guard it: a session-backed
            // upgrade must come from a page of this site.
            if resolved.is_some() && !same_origin_upgrade(&req, app) {
                return Err(ApiError::forbidden(
                    "a WebSocket from a web session must be opened by a page of this site",
                ));
            }
            let Some((token, principal)) = resolved else {
                tracing::info!(path = req.uri().path(), "audit: auth failure: no token");
                return Err(AuthFailure::Missing.into());
            };
            web = Some(principal);
            session_id = session.as_ref().and_then(|s| s.id());
            token
        }
    };
    if matches!(spec.access, Access::Session) && web.is_none() {
        return Err(ApiError::unauthorized(
            "this route needs a web session (sign in at /ui/)",
        ));
    }
    app.limits.check_token(&token.meta.id)?;
    let is_admin = token.meta.is_admin;

    let (req, db_id, resource) = match spec.access {
        Access::Db { actions, resource } => {
            let (mut parts, body) = req.into_parts();
            let params = RawPathParams::from_request_parts(&mut parts, app)
                .await
                .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
            let param = |name: &str| {
                params
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_owned())
            };
            let db_id = DbId::parse(&param("db_id").unwrap_or_default())?;
            let resource_value = match resource {
                ResourceFrom::Path(name) => Some(param(name).unwrap_or_default()),
                _ => None,
            };
            // (With `ResourceFrom::Handler` the handler checks the resource once it has read it.)
            let mut granted = route_grants(
                &token,
                db_id.as_str(),
                actions,
                resource,
                resource_value.as_deref(),
            );
            // A signed-in person creating a new document becomes its owner.
            if !granted
                && spec.path == crate::identity::OPEN_ROUTE
                && let Some(principal) = &web
                && crate::identity::claim_new_document(app, principal, &db_id).await?
            {
                token = Arc::new(crate::identity::users::principal_row(
                    &principal.subject,
                    principal.name.as_deref(),
                    principal.is_admin,
                    &app.owners,
                ));
                // The claim created the file: `_open` reports it as created.
                parts.extensions.insert(crate::identity::CreatedByClaim);
                granted = true;
            }
            if !granted {
                let names: Vec<&str> = actions.iter().map(|a| a.as_str()).collect();
                return Err(ApiError::forbidden(format!(
                    "the token lacks {} on {db_id}{}",
                    names.join(" or "),
                    resource_value
                        .map(|r| format!(" for {r:?}"))
                        .unwrap_or_default()
                )));
            }
            (
                Request::from_parts(parts, body),
                Some(db_id),
                resource_value,
            )
        }
        Access::Session | Access::AnyCaller => (req, None, None),
        Access::Admin => {
            if !is_admin {
                return Err(ApiError::forbidden("this route needs an admin token"));
            }
            (req, None, None)
        }
        Access::Global(action) => {
            // A signed-in person manages their own tokens; the token routes limit them to the
            // documents they own and the tokens they made.
            let person = web.as_ref().is_some_and(|w| w.token_id.is_none());
            let granted =
                is_admin
                    || (action == Action::AdminToken && person)
                    || token.meta.scopes.iter().any(|s| {
                        s.db_id == "*" && s.action == action && s.resource_prefix.is_none()
                    });
            if !granted {
                return Err(ApiError::forbidden(format!(
                    "this route needs {action} on db_id \"*\""
                )));
            }
            (req, None, None)
        }
        Access::Public | Access::Anonymous => unreachable!("handled above"),
    };
    let authorized = Authorized {
        token: Some(token),
        db_id,
        resource,
        session_id,
        web,
        checks: Default::default(),
    };
    // What a long-lived stream of a person re-checks when their grants change.
    if let Access::Db { actions, resource } = spec.access {
        authorized.record_route(spec.path, actions, resource, authorized.resource.as_deref());
    }
    Ok((req, authorized))
}
