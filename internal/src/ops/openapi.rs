//! `GET /openapi.json`: the OpenAPI 3.1 document of the whole HTTP surface, built with `utoipa`
//! from the route table itself ([`crate::router::tagged_route_table`]).
//!
//! Every declared route becomes an operation, so a route cannot be missing from the document:
//! its method (or, for a route that takes every method, the methods `docs/api.md` names), path
//! parameters, tag (the module that declares it) and its security (from its [`Access`]: bearer
//! token, session cookie plus CSRF header on unsafe methods, `?access_token=` where the route
//! declares it, and the scopes it needs, also as `x-required-scopes`) all come from the
//! declaration. What only prose knows — summary, request and response shapes, the route's own
//! error codes — comes from [`operations::describe`], keyed by the same method and path; a route
//! it does not know still appears (and the unit test below fails). The shared error answers
//! (`401`, `403`, `429`, …) follow from the access and reference the one `Error` schema, which is
//! derived from the struct `error.rs` serializes.
//!
//! The document depends only on the code, never on the configuration, so it is built once, on
//! first use, and served from memory; `/docs` (`docs_html.rs`) renders the same document.

mod operations;
mod schemas;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    Components, ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths,
    Ref, RefOr, Required,
};
use utoipa::{PartialSchema, ToSchema};

use crate::auth::{Access, ResourceFrom, RouteSpec};
use operations::{Doc, Payload, Resp};

/// Schemas gathered while the operations are built: name → schema.
type Collected = Vec<(String, RefOr<Schema>)>;

/// The document's JSON, built on first use. Serialized straight from utoipa's types, so paths
/// keep the route table's order and properties their declared order (a `serde_json::Value` in
/// between would sort every object).
pub fn document() -> &'static Bytes {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let json = build().to_json().expect("the OpenAPI document serializes");
        Bytes::from(json)
    })
}

/// `GET /openapi.json`.
pub async fn serve() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        document().clone(),
    )
        .into_response()
}

/// The capabilities as tags, in route-table order, with the title `docs/api.md` gives them.
const TAGS: &[(&str, &str)] = &[
    (
        "ops",
        "Operations: health, readiness, status, metrics, the dashboard and this reference",
    ),
    (
        "runtime",
        "Runtime: open a document, its status, the list of documents",
    ),
    ("auth", "Token admin and the audit log"),
    (
        "identity",
        "Web sessions: OIDC sign-in, token login, who am I, sign out",
    ),
    ("query", "Query: SQL statements, batches and live watches"),
    (
        "pubsub",
        "Durable messages: publish, subscribe (SSE, WebSocket), retention",
    ),
    ("leases", "Leases with fencing tokens"),
    (
        "webhooks",
        "Webhook inbox and per-endpoint signature checks",
    ),
    (
        "blobs",
        "Blobs: content-addressed uploads, references, signed and public reads",
    ),
    (
        "streams",
        "Streams: the non-durable byte relay (legacy and canonical routes)",
    ),
    (
        "sync",
        "Sync: versions, changes, snapshots and pushed changesets",
    ),
    (
        "invites",
        "Invite links: mint, redeem (for a token or membership), revoke; members",
    ),
    (
        "pow",
        "Proof of work: challenges for the routes that require one",
    ),
    (
        "presence",
        "Presence: heartbeats, members of a room, and their events (SSE)",
    ),
    (
        "schema",
        "An application's schema in its document: migrations and row expiry",
    ),
    (
        "media",
        "Media rooms: LiveKit access tokens for a document's presence rooms",
    ),
];

/// Builds the document from the route table.
pub fn build() -> OpenApi {
    let mut collected = Collected::new();
    let mut paths = Paths::new();
    for (tag, spec) in crate::router::tagged_route_table() {
        let path = openapi_path(spec.path);
        for method in operations::methods_of(&spec) {
            let operation = operation(tag, &spec, &method, &mut collected);
            paths.add_path_operation(&path, vec![http_method(&method)], operation);
        }
        // A route that takes every method says so: the operations under it are the ones
        // documented, not the only ones answered.
        if spec.method.is_none()
            && let Some(item) = paths.paths.get_mut(&path)
        {
            item.extensions = Some(ExtensionsBuilder::new().add("x-any-method", true).build());
        }
    }
    let tags = TAGS.iter().map(|(name, description)| {
        TagBuilder::new()
            .name(*name)
            .description(Some(*description))
            .build()
    });
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Patchwork")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "A multi-tenant document-database service: every document is one SQLite \
                     database named by a `db_id`. Errors always have the shape \
                     `{\"error\": {\"code\", \"message\", \"details\"?}}` (schema `Error`). \
                     Generated from the server's route table; the prose reference is \
                     `docs/api.md`.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components(collected)))
        .tags(Some(tags))
        .build()
}

/// `{*rest}` (an axum wildcard) → `{rest}`: OpenAPI has no wildcard, the parameter's description
/// says it may span segments.
pub fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

/// The path parameters of an axum template, with whether each is a wildcard.
fn path_params(path: &str) -> Vec<(&str, bool)> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| match name.strip_prefix('*') {
            Some(name) => (name, true),
            None => (name, false),
        })
        .collect()
}

fn http_method(method: &Method) -> HttpMethod {
    match *method {
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        Method::TRACE => HttpMethod::Trace,
        _ => HttpMethod::Get,
    }
}

/// `get_api_v1_db_db_id_status`: the method and the path's words. A trailing `/` is `_index`,
/// so `/ui` and `/ui/` stay apart.
fn operation_id(method: &Method, path: &str) -> String {
    let mut id = method.as_str().to_ascii_lowercase();
    for word in path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        id.push('_');
        id.push_str(&word.to_ascii_lowercase());
    }
    if path.ends_with('/') {
        id.push_str("_index");
    }
    id
}

/// GET, HEAD and OPTIONS never need the CSRF header.
fn unsafe_method(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn operation(tag: &str, spec: &RouteSpec, method: &Method, collected: &mut Collected) -> Operation {
    let doc = operations::describe(method, spec.path);
    let mut builder = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some(operation_id(method, spec.path)));
    let mut description = String::new();
    if let Some(doc) = &doc {
        builder = builder.summary(Some(doc.summary));
        description.push_str(doc.description);
        description.push_str("\n\n");
    } else {
        description.push_str("Not described yet (see `docs/api.md`).\n\n");
    }
    description.push_str(&access_text(spec, doc.as_ref()));
    builder = builder.description(Some(description));

    for (name, wildcard) in path_params(spec.path) {
        builder = builder.parameter(path_param(name, wildcard));
    }
    if let Some(doc) = &doc {
        for p in &doc.query {
            builder = builder.parameter(p.to_parameter(ParameterIn::Query));
        }
        for p in &doc.headers {
            builder = builder.parameter(p.to_parameter(ParameterIn::Header));
        }
        if let Some(body) = &doc.body {
            let request = RequestBodyBuilder::new()
                .description(doc.body_description)
                .required(Some(if doc.body_required {
                    Required::True
                } else {
                    Required::False
                }))
                .content(body.media_type(), content(body, collected))
                .build();
            builder = builder.request_body(Some(request));
        }
    }
    builder = builder.responses(responses(spec, method, doc.as_ref(), collected));
    let (access, scopes) = access_kind(spec, doc.as_ref());
    builder = builder
        .securities(Some(security(spec, method, doc.as_ref())))
        .extensions(Some(
            ExtensionsBuilder::new()
                .add("x-access", access)
                .add("x-required-scopes", json!(scopes))
                .add("x-query-token", spec.query_token)
                .build(),
        ));
    builder.build()
}

fn path_param(name: &str, wildcard: bool) -> utoipa::openapi::path::Parameter {
    let (description, pattern) = match name {
        "db_id" => (
            "The document: 1 to 128 of `A-Z a-z 0-9 . _ -`, not `.` or `..` \
             (after percent-decoding).",
            Some("^[A-Za-z0-9._-]{1,128}$"),
        ),
        "hash" => (
            "A BLAKE3 hash: 64 lowercase hex characters.",
            Some("^[0-9a-f]{64}$"),
        ),
        "id" => ("The token's id.", None),
        "blob_id" => ("The upload's id, from `init-upload`.", None),
        "file" => (
            "`{hash}` or `{hash}.{ext}` (`ext`: 1–16 letters or digits, ignored).",
            None,
        ),
        "endpoint" => (
            "The endpoint name (percent-decoded; may span several segments): 1 to 256 bytes, \
             not beginning with `_` (reserved), no empty, `.` or `..` segment.",
            Some("^[^_/]"),
        ),
        "rest" => (
            "The rest of the path: the channel (may span several segments).",
            None,
        ),
        "room" => (
            "The presence room (percent-decoded, so `%2F` is a `/`): 1 to 256 bytes without \
             control characters, `+` or `#`.",
            None,
        ),
        "member" => (
            "The member: 1 to 128 bytes without control characters, not starting with `_`.",
            Some("^[^_]"),
        ),
        _ => ("", None),
    };
    let mut schema = ObjectBuilder::new().schema_type(Type::String);
    if let Some(pattern) = pattern {
        schema = schema.pattern(Some(pattern));
    }
    let description = if wildcard {
        format!("{description} Matches the rest of the path, `/` included.")
    } else {
        description.to_owned()
    };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn content(payload: &Payload, collected: &mut Collected) -> utoipa::openapi::Content {
    let schema: RefOr<Schema> = match payload {
        Payload::Json(schema) => schema(collected),
        Payload::Bytes(_, what) => ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .description(Some(*what))
            .into(),
        Payload::Text(_, what) | Payload::Events(what) => ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(*what))
            .into(),
    };
    ContentBuilder::new().schema(Some(schema)).build()
}

/// The shared error answers, as `components/responses`: name, status, what it means.
const SHARED: &[(&str, u16, &str)] = &[
    (
        "BadRequest",
        400,
        "Invalid input; the error's `code` says which (e.g. `invalid_db_id`, `invalid_json`, \
         `invalid_body`, `invalid_query`, `invalid_path`).",
    ),
    (
        "Unauthorized",
        401,
        "`unauthorized`: no token or session, or an unknown, expired or revoked token.",
    ),
    (
        "Forbidden",
        403,
        "`forbidden`: the caller lacks the scope; `csrf_required`: a session's unsafe request \
         without `X-CSRF-Token`.",
    ),
    (
        "TooLarge",
        413,
        "`too_large`: the request body is over `max_body_bytes`.",
    ),
    (
        "RateLimited",
        429,
        "`rate_limited`: over a global, per-token or per-IP limit; `Retry-After` says when to \
         come back.",
    ),
    (
        "InternalError",
        500,
        "`internal_error`: an unexpected failure (details are in the server log only).",
    ),
    (
        "Unavailable",
        503,
        "`overloaded` (the document's mailbox is full, or every open document is busy) or \
         `shutting_down`; with `Retry-After`.",
    ),
];

/// Which shared answers a route can give, from its access and request body.
fn shared_statuses(spec: &RouteSpec, method: &Method, doc: Option<&Doc>) -> Vec<u16> {
    let mut statuses = vec![500];
    match spec.access {
        Access::Public => {}
        Access::Anonymous => statuses.push(429),
        Access::Session => {
            statuses.extend([401, 429]);
            if unsafe_method(method) {
                statuses.push(403);
            }
        }
        Access::AnyCaller | Access::Admin | Access::Global(_) => statuses.extend([401, 403, 429]),
        Access::Db { .. } => statuses.extend([400, 401, 403, 429, 503]),
    }
    if doc.is_some_and(|d| matches!(d.body, Some(Payload::Json(_)))) {
        statuses.extend([400, 413]);
    }
    statuses.sort_unstable();
    statuses.dedup();
    statuses
}

fn shared(status: u16) -> Option<&'static (&'static str, u16, &'static str)> {
    SHARED.iter().find(|(_, s, _)| *s == status)
}

fn error_ref() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(crate::error::Body::name()))
}

fn retry_after() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::Integer))
        .description(Some("Seconds to wait before trying again."))
        .build()
}

fn responses(
    spec: &RouteSpec,
    method: &Method,
    doc: Option<&Doc>,
    collected: &mut Collected,
) -> utoipa::openapi::Responses {
    let own: &[Resp] = doc.map_or(&[], |d| &d.responses);
    let mut all: BTreeMap<u16, RefOr<utoipa::openapi::Response>> = BTreeMap::new();
    for resp in own {
        let mut description = resp.description.to_owned();
        // A route's own text for a status it shares with every route of its kind: one answer
        // that says both.
        if let Some((_, _, common)) = shared(resp.status)
            && shared_statuses(spec, method, doc).contains(&resp.status)
        {
            description.push_str(" Also: ");
            description.push_str(common);
        }
        let mut response = ResponseBuilder::new().description(description);
        for payload in &resp.payloads {
            response = response.content(payload.media_type(), content(payload, collected));
        }
        if resp.payloads.is_empty() && resp.status >= 400 {
            response = response.content(
                "application/json",
                ContentBuilder::new().schema(Some(error_ref())).build(),
            );
        }
        for (name, what) in resp.headers {
            response = response.header(
                *name,
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some(*what))
                    .build(),
            );
        }
        if matches!(resp.status, 429 | 503) {
            response = response.header("Retry-After", retry_after());
        }
        all.insert(resp.status, RefOr::T(response.build()));
    }
    for status in shared_statuses(spec, method, doc) {
        if let Some((name, _, _)) = shared(status) {
            all.entry(status)
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
        }
    }
    let mut builder = ResponsesBuilder::new();
    for (status, response) in all {
        builder = builder.response(status.to_string(), response);
    }
    builder.build()
}

/// The roles a route's security requirements name: its actions, or `admin`.
fn roles(access: &Access) -> Vec<&'static str> {
    match access {
        Access::Db { actions, .. } => actions.iter().map(|a| a.as_str()).collect(),
        Access::Global(action) => vec![action.as_str()],
        Access::Admin => vec!["admin"],
        _ => Vec::new(),
    }
}

/// `x-access` and `x-required-scopes` (any one of the scopes passes the route's gate).
fn access_kind(spec: &RouteSpec, doc: Option<&Doc>) -> (&'static str, Vec<&'static str>) {
    match spec.access {
        Access::Public => match doc.and_then(|d| d.optional_token) {
            Some(action) => ("public_or_token", vec![action.as_str()]),
            None => ("public", Vec::new()),
        },
        Access::Anonymous => ("anonymous", Vec::new()),
        Access::Session => ("session", Vec::new()),
        Access::AnyCaller => ("any_caller", Vec::new()),
        Access::Admin => ("admin", Vec::new()),
        Access::Global(action) => ("global", vec![action.as_str()]),
        Access::Db { actions, .. } => ("db", actions.iter().map(|a| a.as_str()).collect()),
    }
}

/// The alternatives that satisfy a route (one requirement object must be met): a bearer token,
/// the session cookie (plus the CSRF header on unsafe methods), `?access_token=` where declared;
/// each with the route's roles, one requirement per role when any one of several actions passes.
fn security(spec: &RouteSpec, method: &Method, doc: Option<&Doc>) -> Vec<SecurityRequirement> {
    let none: Vec<&str> = Vec::new();
    let session = |roles: &[&str]| {
        let requirement = SecurityRequirement::new("session", roles.to_vec());
        if unsafe_method(method) {
            requirement.add("csrf", none.clone())
        } else {
            requirement
        }
    };
    match spec.access {
        Access::Public => match doc.and_then(|d| d.optional_token) {
            // The signature in the query, or a token: an empty requirement (no credential) first.
            Some(action) => vec![
                SecurityRequirement::default(),
                SecurityRequirement::new("bearer", [action.as_str()]),
            ],
            None => Vec::new(),
        },
        Access::Anonymous => Vec::new(),
        Access::Session => vec![session(&[])],
        Access::AnyCaller => vec![
            SecurityRequirement::new("bearer", none.clone()),
            session(&[]),
        ],
        Access::Admin | Access::Global(_) | Access::Db { .. } => {
            let mut alternatives = Vec::new();
            for role in roles(&spec.access) {
                alternatives.push(SecurityRequirement::new("bearer", [role]));
                if !crate::auth::middleware::relay_route(&spec.access) {
                    alternatives.push(session(&[role]));
                }
                if spec.query_token {
                    alternatives.push(SecurityRequirement::new("access_token", [role]));
                }
            }
            alternatives
        }
    }
}

/// The access, in words (the end of each operation's description).
fn access_text(spec: &RouteSpec, doc: Option<&Doc>) -> String {
    let code_list = |actions: &[crate::auth::Action]| {
        actions
            .iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let mut text = String::from("**Access:** ");
    match spec.access {
        Access::Public => match doc.and_then(|d| d.optional_token) {
            Some(action) => text.push_str(&format!(
                "a valid signature in the query (no token), or a token with `{action}`."
            )),
            None => text.push_str("no token."),
        },
        Access::Anonymous => text.push_str("no token; rate limited per client IP."),
        Access::Session => {
            text.push_str("a web session (the session cookie); a token is refused (`401`).")
        }
        Access::AnyCaller => text
            .push_str("any valid token or web session; the handler decides what the caller sees."),
        Access::Admin => text.push_str("an admin token or an admin session."),
        Access::Global(action) => text.push_str(&format!(
            "`{action}` on `db_id = \"*\"`, an admin token or an admin session."
        )),
        Access::Db { actions, resource } => {
            text.push_str(&format!("{} on the document.", code_list(actions)));
            match resource {
                ResourceFrom::None => {
                    text.push_str(" A scope with a `resource_prefix` does not grant this route.")
                }
                ResourceFrom::Path(name) => text.push_str(&format!(
                    " A scope's `resource_prefix` is matched against the path parameter \
                     `{name}`."
                )),
                ResourceFrom::Handler => text.push_str(
                    " A scope's `resource_prefix` is matched against the resource the request \
                     names (checked by the handler).",
                ),
            }
            if crate::auth::middleware::relay_route(&spec.access) {
                text.push_str(" Relay routes never take a web session.");
            }
        }
    }
    if spec.query_token {
        text.push_str(" The token may also come as `?access_token=` (or `?token=`).");
    }
    text
}

fn components(collected: Collected) -> Components {
    let mut schemas: BTreeMap<String, RefOr<Schema>> = BTreeMap::new();
    let mut all = collected;
    operations::mentioned(&mut all);
    all.push((
        crate::error::Body::name().into(),
        crate::error::Body::schema(),
    ));
    crate::error::Body::schemas(&mut all);
    for (name, schema) in all {
        if let Some(existing) = schemas.get(&name) {
            // Two types under one name would silently document one of them wrong.
            assert!(
                *existing == schema,
                "two different schemas are named {name}"
            );
        }
        schemas.insert(name, schema);
    }
    let mut builder = ComponentsBuilder::new();
    for (name, schema) in schemas {
        builder = builder.schema(name, schema);
    }
    for (name, status, description) in SHARED {
        let mut response = ResponseBuilder::new().description(*description).content(
            "application/json",
            ContentBuilder::new().schema(Some(error_ref())).build(),
        );
        if matches!(status, 429 | 503) {
            response = response.header("Retry-After", retry_after());
        }
        builder = builder.response(*name, response.build());
    }
    builder
        .security_scheme(
            "bearer",
            SecurityScheme::Http(
                utoipa::openapi::security::HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A machine token (`pw_<16 hex>_<48 hex>`) as `Authorization: Bearer \
                         <token>`; `Authorization: token <token>` and a bare \
                         `Authorization: <token>` work too.",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::identity::COOKIE,
                "A web session (OIDC sign-in or token login). A token in `Authorization` \
                 wins over it.",
            ))),
        )
        .security_scheme(
            "csrf",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-CSRF-Token",
                "The session's `csrf_token` (from `GET /auth/me`): required with the session \
                 cookie on every method other than GET, HEAD and OPTIONS.",
            ))),
        )
        .security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The token in the query (also spelled `token`), only on routes that declare it \
                 (SSE, WebSocket, webhook and stream routes); never logged, stored or \
                 forwarded.",
            ))),
        )
        .build()
}

impl Payload {
    fn media_type(&self) -> &'static str {
        match self {
            Payload::Json(_) => "application/json",
            Payload::Bytes(media_type, _) | Payload::Text(media_type, _) => media_type,
            Payload::Events(_) => "text/event-stream",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_route_is_described_and_every_description_is_a_route() {
        let table = crate::router::route_table();
        for spec in &table {
            for method in operations::methods_of(spec) {
                assert!(
                    operations::describe(&method, spec.path).is_some(),
                    "{method} {} has no description in ops/openapi/operations.rs",
                    spec.path
                );
            }
        }
        // And no description outlives its route: every path literal of operations.rs (its
        // match patterns) is a declared path.
        let source = include_str!("openapi/operations.rs");
        for literal in source.split("\"/").skip(1) {
            let path = format!("/{}", literal.split('"').next().unwrap_or_default());
            assert!(
                table.iter().any(|s| s.path == path),
                "{path} is described in operations.rs but is not a route"
            );
        }
    }

    #[test]
    fn every_capability_has_a_tag_description() {
        for (tag, _) in crate::router::capabilities() {
            assert!(
                TAGS.iter().any(|(name, _)| *name == tag),
                "add {tag:?} to TAGS"
            );
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc: Value = serde_json::from_slice(document()).unwrap();
        let mut ids = Vec::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                    ids.push(id.to_owned());
                }
            }
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(n, ids.len(), "duplicate operationIds");
    }

    #[test]
    fn paths_convert_wildcards() {
        assert_eq!(
            openapi_path("/api/v1/db/{db_id}/webhooks/{*endpoint}"),
            "/api/v1/db/{db_id}/webhooks/{endpoint}"
        );
        assert_eq!(
            path_params("/u/{db_id}/{*rest}"),
            [("db_id", false), ("rest", true)]
        );
        assert_eq!(operation_id(&Method::GET, "/ui/"), "get_ui_index");
        assert_eq!(operation_id(&Method::GET, "/"), "get_index");
    }
}
