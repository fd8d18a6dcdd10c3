//! What only prose knows about each route: summary, description, query and header parameters,
//! request body, and its own answers (success shapes and the error codes particular to it),
//! keyed by the route's method and path template exactly as it is declared. The method, path
//! parameters, access, security and the shared error answers come from the declaration itself
//! (`openapi.rs`); a route missing here still appears in the document, and the unit test in
//! `openapi.rs` fails.
//!
//! Request and response types are the handlers' own structs where they are reachable, else the
//! mirrors in `schemas.rs`.

use axum::http::Method;
use utoipa::ToSchema;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr, Required};

use super::schemas::*;
use crate::auth::{Action, RouteSpec};

/// Registers a type's schema (and those it references) and answers a `$ref` to it.
pub type SchemaFn = fn(&mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema>;

fn schema<T: ToSchema>(out: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
    out.push((T::name().into_owned(), T::schema()));
    T::schemas(out);
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

/// A JSON body of type `T`.
fn json<T: ToSchema>() -> Payload {
    Payload::Json(schema::<T>)
}

/// A JSON body that is one of two types.
fn one_of<A: ToSchema, B: ToSchema>() -> Payload {
    fn both<A: ToSchema, B: ToSchema>(out: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(schema::<A>(out))
            .item(schema::<B>(out))
            .into()
    }
    Payload::Json(both::<A, B>)
}

/// A request or response body.
pub enum Payload {
    Json(SchemaFn),
    /// Binary: media type, what the bytes are.
    Bytes(&'static str, &'static str),
    /// Text: media type, what it is.
    Text(&'static str, &'static str),
    /// `text/event-stream`: the events.
    Events(&'static str),
}

#[derive(Clone, Copy)]
pub enum Kind {
    String,
    Integer,
    /// An integer from the first bound to the second, both included.
    IntegerIn(i64, i64),
    /// One of these strings.
    OneOf(&'static [&'static str]),
    Boolean,
}

pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub description: &'static str,
}

impl Param {
    pub fn to_parameter(&self, location: ParameterIn) -> Parameter {
        let mut schema = ObjectBuilder::new().schema_type(match self.kind {
            Kind::String | Kind::OneOf(_) => Type::String,
            Kind::Integer | Kind::IntegerIn(..) => Type::Integer,
            Kind::Boolean => Type::Boolean,
        });
        match self.kind {
            Kind::IntegerIn(min, max) => schema = schema.minimum(Some(min)).maximum(Some(max)),
            Kind::OneOf(values) => schema = schema.enum_values(Some(values.iter().copied())),
            _ => {}
        }
        ParameterBuilder::new()
            .name(self.name)
            .parameter_in(location)
            .required(if self.required {
                Required::True
            } else {
                Required::False
            })
            .description(Some(self.description))
            .schema(Some(schema))
            .build()
    }
}

pub struct Resp {
    pub status: u16,
    pub description: &'static str,
    /// Its media types (several: the client chooses); none: no body for a success, the `Error`
    /// shape for an error.
    pub payloads: Vec<Payload>,
    /// Response headers worth knowing: name, meaning.
    pub headers: &'static [(&'static str, &'static str)],
}

pub struct Doc {
    pub summary: &'static str,
    pub description: &'static str,
    pub query: Vec<Param>,
    pub headers: Vec<Param>,
    pub body: Option<Payload>,
    pub body_required: bool,
    pub body_description: Option<&'static str>,
    pub responses: Vec<Resp>,
    /// A public route whose handler also takes a token with this action (signed URLs).
    pub optional_token: Option<Action>,
}

impl Doc {
    fn new(summary: &'static str, description: &'static str) -> Self {
        Self {
            summary,
            description,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            body_required: false,
            body_description: None,
            responses: Vec::new(),
            optional_token: None,
        }
    }

    fn query(mut self, name: &'static str, kind: Kind, description: &'static str) -> Self {
        self.query.push(Param {
            name,
            kind,
            required: false,
            description,
        });
        self
    }

    fn query_required(mut self, name: &'static str, kind: Kind, description: &'static str) -> Self {
        self.query.push(Param {
            name,
            kind,
            required: true,
            description,
        });
        self
    }

    fn header(mut self, name: &'static str, description: &'static str) -> Self {
        self.headers.push(Param {
            name,
            kind: Kind::String,
            required: false,
            description,
        });
        self
    }

    fn body(mut self, payload: Payload) -> Self {
        self.body = Some(payload);
        self.body_required = true;
        self
    }

    fn optional_body(mut self, payload: Payload, description: &'static str) -> Self {
        self.body = Some(payload);
        self.body_description = Some(description);
        self
    }

    fn ok(mut self, status: u16, description: &'static str, payload: Payload) -> Self {
        self.responses.push(Resp {
            status,
            description,
            payloads: vec![payload],
            headers: &[],
        });
        self
    }

    /// An answer without a body (`204`, a redirect), or an error in the `Error` shape.
    fn status(mut self, status: u16, description: &'static str) -> Self {
        self.responses.push(Resp {
            status,
            description,
            payloads: Vec::new(),
            headers: &[],
        });
        self
    }

    /// Another media type of the last answer added.
    fn or(mut self, payload: Payload) -> Self {
        if let Some(last) = self.responses.last_mut() {
            last.payloads.push(payload);
        }
        self
    }

    /// Headers of the last answer added.
    fn with_headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Self {
        if let Some(last) = self.responses.last_mut() {
            last.headers = headers;
        }
        self
    }

    fn token_or_signature(mut self, action: Action) -> Self {
        self.optional_token = Some(action);
        self
    }
}

const GET: Method = Method::GET;
const HEAD: Method = Method::HEAD;
const POST: Method = Method::POST;
const PUT: Method = Method::PUT;
const DELETE: Method = Method::DELETE;
const PATCH: Method = Method::PATCH;

/// The methods a route is documented under: its own (plus `HEAD` where `docs/api.md` names it);
/// for a route that takes every method, the ones its handler gives a meaning to.
pub fn methods_of(spec: &RouteSpec) -> Vec<Method> {
    match &spec.method {
        Some(m)
            if *m == GET
                && matches!(
                    spec.path,
                    "/api/v1/db/{db_id}/blobs/object/{hash}" | "/o/{file}"
                ) =>
        {
            vec![GET, HEAD]
        }
        Some(m) => vec![m.clone()],
        None => match spec.path {
            // Channels (queue and pubsub) and responders: GET receives or observes, POST and
            // PUT send or answer; other methods are `405`.
            "/public/"
            | "/p/"
            | "/u/{db_id}/"
            | "/api/v1/db/{db_id}/streams/queue/{*rest}"
            | "/api/v1/db/{db_id}/streams/pubsub/{*rest}"
            | "/api/v1/db/{db_id}/streams/res/{*rest}" => vec![GET, POST, PUT],
            // Requesters (also under the legacy prefixes, `req/…`), webhooks and the gone hooks
            // take any method: the usual ones are documented.
            _ => vec![GET, POST, PUT, DELETE, PATCH],
        },
    }
}

/// Shapes only prose refers to (SSE event data, WebSocket frames): in the components too, so
/// the descriptions that name them point somewhere.
pub fn mentioned(out: &mut Vec<(String, RefOr<Schema>)>) {
    for register in [
        schema::<WatchResult>,
        schema::<Message>,
        schema::<Heartbeat>,
        schema::<StreamError>,
        schema::<WsClientFrame>,
        schema::<WsServerFrame>,
        schema::<LiveChanges>,
        schema::<PresenceSnapshot>,
        schema::<PresenceMember>,
        schema::<PresenceLeave>,
    ] {
        register(out);
    }
}

const LEGACY_CHANNELS: &str = "The legacy byte relay (`shared/spec/legacy-streams.md`, with \
    Patchwork's fixes): the mode comes from the path after the prefix — `req/{id}` requester, \
    `res/{id}` responder, `pubsub/{t}` or `?pubsub` broadcast, anything else a queue \
    (rendezvous). `GET` consumes (or publishes with a non-empty `?body=`); `POST`/`PUT` send \
    the body, streamed end to end, and are answered `200` only after the consumer read all of \
    it. A requester (`req/…`) takes any method and gets the responder's answer; a responder \
    (`res/…`) `GET` observes, `POST`/`PUT` answers (`?switch=true`: double clutch). Forwarded \
    headers: `Content-Type`, the true `Content-Length`, `Patch-H-*` (as the named header), \
    `Patch-Uri`; responders see `Patch-Method` and may set `Patch-Status`. `405` and `400` \
    bodies are legacy plain text. Every answer carries `Content-Security-Policy: sandbox` and \
    `nosniff`, never `Set-Cookie`.";

/// The documentation of `method` on the route declared with `path`.
pub fn describe(method: &Method, path: &str) -> Option<Doc> {
    let m = method.as_str();
    let doc = match (m, path) {
        // -----------------------------------------------------------------------------------
        // ops
        ("GET", "/healthz") => Doc::new("Liveness", "`200` while the process runs.").ok(
            200,
            "Alive.",
            json::<Health>(),
        ),
        ("GET", "/readyz") => Doc::new(
            "Readiness",
            "Ready when not shutting down, `service.db` answers and the data dir is writable \
             (each probe writes and removes a file of its own).",
        )
        .ok(200, "Ready.", json::<Ready>())
        .status(503, "`not_ready` (or `shutting_down`), with `Retry-After`."),
        ("GET", "/status") => Doc::new("Server status", "Version, uptime, open documents.").ok(
            200,
            "The status.",
            json::<ServerStatus>(),
        ),
        ("GET", "/metrics") => Doc::new(
            "Prometheus metrics",
            "OpenMetrics text; every name starts with `patchwork_` (see `docs/api.md`).",
        )
        .ok(
            200,
            "The metrics.",
            Payload::Text(
                "application/openmetrics-text",
                "OpenMetrics text format 1.0.0.",
            ),
        ),
        ("GET", "/") => Doc::new("Dashboard entry", "Redirects to the dashboard.")
            .status(307, "To `/ui/` (`Location`)."),
        ("GET", "/ui") => Doc::new("Dashboard entry", "Redirects to the dashboard's index.")
            .status(308, "To `/ui/` (`Location`)."),
        ("GET", "/ui/") => Doc::new(
            "Dashboard",
            "The dashboard's page: plain HTML/CSS/JS embedded in the binary, with hash routes \
             (`#/documents`, `#/db/{id}/console`, `#/tokens`, `#/audit`). It uses only this API, \
             with the session cookie and `X-CSRF-Token`. Served with a strict same-origin \
             `Content-Security-Policy`, `X-Frame-Options: DENY` and `nosniff`.",
        )
        .ok(
            200,
            "The page.",
            Payload::Text("text/html", "The dashboard's HTML."),
        ),
        ("GET", "/ui/{file}") => Doc::new("Dashboard file", "One embedded dashboard file.")
            .ok(
                200,
                "The file, with its media type.",
                Payload::Bytes(
                    "application/octet-stream",
                    "The file (script, style, image).",
                ),
            )
            .status(404, "`not_found`: no such file."),
        ("GET", "/apps/{app}") => Doc::new("App entry", "Redirects to the app's page.")
            .status(308, "To `/apps/{app}/` (`Location`).")
            .status(404, "`not_found`: not an app name (`[a-z0-9_-]{1,64}`)."),
        ("GET", "/apps/{app}/") => Doc::new(
            "App",
            "An app built on this API (plain HTML/CSS/JS embedded from `web/apps/{app}/`), \
             e.g. `hearth`, `felt`, `flowlist`; `shared` holds what they share (the \
             proof-of-work solver). Same-origin `Content-Security-Policy`, `X-Frame-Options: \
             DENY`, `nosniff`.",
        )
        .ok(
            200,
            "The app's page.",
            Payload::Text("text/html", "The app's HTML."),
        )
        .status(404, "`not_found`: no such app."),
        ("GET", "/apps/{app}/{*path}") => Doc::new("App file", "One file of an embedded app.")
            .ok(
                200,
                "The file, with its media type.",
                Payload::Bytes(
                    "application/octet-stream",
                    "The file (script, style, image).",
                ),
            )
            .status(404, "`not_found`: no such file."),
        // Presence routes (issue 17) go here.
        ("POST", "/api/v1/db/{db_id}/presence/{room}/heartbeat") => Doc::new(
            "Presence heartbeat",
            "Joins `member` to the room (event `join`) or refreshes its expiry; a `state` that \
             differs from the stored one is an `update` (a refresh alone announces nothing). \
             The member expires (`leave`, reason `expired`) after the room's TTL without \
             another heartbeat. `connection_id` binds the member to a live connection of the \
             same caller (an SSE stream's or WebSocket's `Patch-Connection-Id`, the presence \
             stream's `snapshot`, or `mqtt:{client_id}`): it leaves (`disconnected`) the moment \
             that connection closes. In memory only; the document is not opened.",
        )
        .body(json::<crate::presence::HeartbeatBody>())
        .ok(
            200,
            "Present until `expires_at`.",
            json::<crate::presence::HeartbeatAnswer>(),
        )
        .status(
            400,
            "`invalid_member` (1 to 128 bytes, no control characters, not `heartbeat`, \
             `stream` or starting with `_`), `invalid_room`.",
        )
        .status(
            404,
            "`unknown_connection`: no open connection of this caller has that id.",
        )
        .status(
            409,
            "`room_full` (`presence_max_members_per_room`), `too_many_rooms` \
             (`presence_max_rooms_per_document`).",
        )
        .status(
            413,
            "`state_too_large`: `state` is over 4096 bytes as JSON.",
        )
        .status(
            503,
            "`overloaded`: the server holds `presence_max_members_total` members.",
        ),
        ("DELETE", "/api/v1/db/{db_id}/presence/{room}/{member}") => Doc::new(
            "Leave a presence room",
            "The member leaves at once (event `leave`, reason `left`).",
        )
        .status(204, "Gone.")
        .status(400, "`invalid_member`, `invalid_room`.")
        .status(404, "`unknown_member`: not in the room."),
        ("PUT", "/api/v1/db/{db_id}/presence/{room}/_config") => Doc::new(
            "Set a presence room's TTL",
            "The room's own TTL (else `presence_ttl_secs`); members get it from their next \
             heartbeat. A room kept only for its TTL is forgotten after an hour unused (and at \
             restart).",
        )
        .body(json::<crate::presence::RoomConfig>())
        .ok(200, "The room's setting.", json::<PresenceRoomConfig>())
        .status(400, "`invalid_ttl` (1 to 86400), `invalid_room`.")
        .status(409, "`too_many_rooms`."),
        ("GET", "/api/v1/db/{db_id}/presence/{room}") => Doc::new(
            "Presence members",
            "Who is in the room now, by member name (expired members have left).",
        )
        .ok(200, "The members.", json::<PresenceMembers>())
        .status(400, "`invalid_room`."),
        ("GET", "/api/v1/db/{db_id}/presence/{room}/stream") => Doc::new(
            "Presence events (SSE)",
            "A `snapshot` of the room, then what happens in it, in order.",
        )
        .ok(
            200,
            "The stream.",
            Payload::Events(
                "Events: `snapshot` first (`PresenceSnapshot`: the members and this stream's \
                 `connection_id`; sent again, replacing the list, if the subscriber fell more \
                 than 1024 events behind); `join` and `update` (`PresenceMember`); `leave` \
                 (`PresenceLeave`: reason `left`, `expired` or `disconnected`); `heartbeat` \
                 (`Heartbeat`, every 15 s); `error` (`StreamError`: `shutting_down`, \
                 `token_revoked`, `token_expired`; the stream then ends).",
            ),
        )
        .with_headers(&[(
            "Patch-Connection-Id",
            "This stream's connection id (also in the `snapshot`).",
        )])
        .status(400, "`invalid_room`, `invalid_query` (unknown parameter).")
        .status(409, "`too_many_rooms`."),
        ("POST", "/api/v1/db/{db_id}/invites") => Doc::new(
            "Make an invite link",
            "A link granting `scopes` on this document (each an action the caller holds, \
             never `admin.token`; a string or `{action, resource_prefix}`) for `ttl_secs` \
             (60 to 2592000), at most `max_uses` times. Signed (HMAC-SHA256) with the current \
             invite key; `url` opens the dashboard's invite page.",
        )
        .body(json::<InviteBody>())
        .ok(201, "The link.", json::<InviteMade>())
        .status(
            400,
            "`invalid_invite_request`: no or too many scopes, `admin.token`, a bad TTL, \
             `max_uses` or room.",
        )
        .status(
            403,
            "The caller lacks `admin.token`, or an action it would grant.",
        ),
        ("GET", "/api/v1/db/{db_id}/invites") => Doc::new(
            "This document's invites",
            "The invites made here (not their links), newest first, with their use counts.",
        )
        .ok(200, "The invites.", json::<InviteList>()),
        ("DELETE", "/api/v1/db/{db_id}/invites/{invite_id}") => Doc::new(
            "Revoke an invite",
            "The link stops working; tokens already redeemed live on (revoke them as tokens).",
        )
        .status(204, "Revoked.")
        .status(404, "`not_found`: no such invite on this document."),
        ("GET", "/api/v1/db/{db_id}/members") => Doc::new(
            "Members",
            "People who joined this document by redeeming an invite from their web session, \
             with their grants.",
        )
        .ok(200, "The members.", json::<MemberList>()),
        ("DELETE", "/api/v1/db/{db_id}/members/{subject}") => Doc::new(
            "Remove a member",
            "The person's grants on this document end at once: their next request is refused, \
             their web sessions get a new id on their next request, and their open streams on \
             this document end within a second (`grants_changed`). A guest token redeemed from \
             this document's invites (its id as `subject`) is revoked instead.",
        )
        .status(204, "Removed.")
        .status(404, "`not_found`: no such member."),
        ("PATCH", "/api/v1/db/{db_id}/members/{subject}") => Doc::new(
            "Change a member's grants",
            "The member's grants on this document become `scopes` (each an action the caller \
             holds, never `admin.token`, as for invites), from the person's next request on. \
             Their open streams on this document that the new grants no longer allow end within \
             a second (`grants_changed`); when the grants changed, their web sessions get a new \
             id on their next request (the CSRF token stays).",
        )
        .body(json::<MemberBody>())
        .ok(200, "The member as now.", json::<MemberUpdated>())
        .status(
            400,
            "`invalid_member_request`: no or too many scopes, `admin.token`, a bad \
             `resource_prefix`.",
        )
        .status(
            403,
            "The caller lacks `admin.token`, or an action it would grant.",
        )
        .status(404, "`not_found`: no such member."),
        ("POST", "/api/v1/invites/redeem" | "/invites/redeem") => Doc::new(
            "Redeem an invite",
            "No token: the link is the credential (rate limited per client IP; a proof of work \
             when `pow_difficulty` > 0). Answers a machine token with the invite's grants, \
             labelled `member`, valid `invite_token_ttl_secs`. From a signed-in web session \
             (with `X-CSRF-Token`), the person becomes a member of the document instead.",
        )
        .body(json::<RedeemBody>())
        .ok(200, "A token (or membership).", json::<Redeemed>())
        .status(
            400,
            "`invalid_member`: the member name is empty, too long or has control characters.",
        )
        .status(
            401,
            "`invalid_invite`: tampered, expired, used up, revoked or signed by a retired key.",
        )
        .status(
            428,
            "`pow_required`: solve the challenge in `details` and send `Patch-PoW`.",
        ),
        ("GET", "/api/v1/pow/challenge" | "/pow/challenge") => Doc::new(
            "Proof-of-work challenge",
            "A fresh challenge: find a `nonce` such that SHA-256(`challenge` + `nonce`) starts \
             with `difficulty` zero bits, then send `Patch-PoW: {challenge}:{nonce}` to the \
             route that asked for it (single use, valid until `expires_at`). `for=streams` \
             gives the anonymous stream routes' difficulty, else invite redemption's. A route \
             that needs one answers `428 pow_required` with a fresh challenge in `details`. \
             A browser solver: `/apps/shared/pow.js`.",
        )
        .query(
            "for",
            Kind::OneOf(&["invites", "streams"]),
            "`invites` (default) or `streams`.",
        )
        .ok(200, "The challenge.", json::<PowChallenge>())
        .status(400, "`invalid_query`: an unknown parameter."),
        ("POST", "/api/v1/db/{db_id}/migrations") => Doc::new(
            "Apply migrations",
            "Applies, in order, the versions not yet applied: each in its own transaction \
             (a failing one rolls back only itself; the ones before it stay applied), each \
             statement checked like a `query.admin` statement. Recorded in \
             `_patchwork_app_migrations` with the SHA-256 of its SQL. Re-sending the same list \
             applies nothing.",
        )
        .body(json::<MigrationsBody>())
        .ok(
            200,
            "What was applied now, and everything applied.",
            json::<MigrationsApplied>(),
        )
        .status(
            400,
            "`invalid_migrations`: empty list, versions not ascending, empty SQL, parameters; \
             or the error of the failing statement (`details.version`, `details.applied_now`).",
        )
        .status(
            403,
            "The token lacks `query.admin`, or a statement is refused (`details.reason`).",
        )
        .status(
            409,
            "`migration_changed`: an applied version's SQL differs; \
             `migration_out_of_order`: a version older than the newest applied one.",
        ),
        ("GET", "/api/v1/db/{db_id}/migrations") => Doc::new(
            "Applied migrations",
            "The versions applied to this document, oldest first.",
        )
        .ok(200, "The applied versions.", json::<MigrationsList>()),
        ("GET", "/api/v1/db/{db_id}/expiry") => Doc::new(
            "Row-expiry rules",
            "The tables whose rows expire, and by which column.",
        )
        .ok(200, "The rules.", json::<ExpiryRules>()),
        ("PUT", "/api/v1/db/{db_id}/expiry") => Doc::new(
            "Replace the row-expiry rules",
            "Replaces every rule. Every `retention_sweep_seconds` the sweep deletes the rows \
             whose `column` time has passed (in batches), then reclaims the pages, so their \
             bytes are gone from the file. Each column gets an index (`expiry_{table}_{column}`).",
        )
        .body(json::<ExpiryRules>())
        .ok(200, "The stored rules.", json::<ExpiryRules>())
        .status(
            400,
            "`invalid_rules`: over 100 rules, a pair twice, no such table or column, a \
             Patchwork table.",
        ),
        ("GET", "/api/v1/db/{db_id}/_settings") => Doc::new(
            "Document settings",
            "The document's own durability choice (`synchronous`, `null` when it follows the \
             server's setting) and what its open connection runs with (`effective`).",
        )
        .ok(200, "The settings.", json::<DocSettings>()),
        ("PUT", "/api/v1/db/{db_id}/_settings") => Doc::new(
            "Change document settings",
            "Stores the document's durability in the document (`full`: every commit fsynced \
             before it is acknowledged; `normal`; `default`: follow the server) and applies it \
             to the open connection at once; it is applied again whenever the document opens, \
             so it survives restarts.",
        )
        .body(json::<DocSettingsBody>())
        .ok(
            200,
            "The stored and effective settings.",
            json::<DocSettings>(),
        ),
        ("POST", "/api/v1/db/{db_id}/media/token") => Doc::new(
            "Mint a media room token",
            "A LiveKit access token (JWT, HS256 under `livekit_api_secret`, `iss` = \
             `livekit_api_key`) for the LiveKit room `{db_id}/{room}`: `sub` and `name` are the \
             caller (`patchwork_caller()`, `patchwork_caller_name()`; only `admin.token` may set \
             them), `video` grants join, publish, subscribe and data with \
             `canPublishSources` `[\"microphone\"]`, plus `\"camera\"` when the document's \
             `media_rooms` table or view has a true `allow_video` for the room. Needs \
             `presence.write` on the room.",
        )
        .body(json::<crate::media::TokenRequest>())
        .ok(
            200,
            "The token and the grants it carries.",
            json::<crate::media::TokenResponse>(),
        )
        .status(
            400,
            "`invalid_room`, `invalid_body` (`ttl_secs` outside 60 to 86400, an empty or over \
             long `identity` or `name`).",
        )
        .status(
            403,
            "No `presence.write` for the room, or `identity`/`name` without `admin.token`.",
        )
        .status(
            503,
            "`media_not_configured`: `livekit_api_key` or `livekit_api_secret` is unset.",
        ),
        ("GET", "/openapi.json") => Doc::new(
            "This OpenAPI document",
            "The OpenAPI 3.1 document of every route, generated from the server's route table.",
        )
        .ok(
            200,
            "The document.",
            Payload::Text("application/json", "An OpenAPI 3.1 document."),
        ),
        ("GET", "/docs") => Doc::new(
            "API reference (HTML)",
            "A readable reference rendered on the server from this OpenAPI document; no \
             scripts, no external resources.",
        )
        .ok(
            200,
            "The reference.",
            Payload::Text("text/html", "An HTML page."),
        ),

        // -----------------------------------------------------------------------------------
        // runtime
        ("POST", "/api/v1/db/{db_id}/_open") => Doc::new(
            "Open (and create) a document",
            "Opens the document, creating `documents/{db_id}.sqlite3` on first use. A signed-in \
             person who is not an admin becomes its owner when they create it from their \
             session.",
        )
        .ok(200, "Open.", json::<Opened>()),
        ("GET", "/api/v1/db/{db_id}/_status") => Doc::new(
            "Document status",
            "Sizes, page count, watches and subscribers (opens the document).",
        )
        .ok(
            200,
            "The document's status.",
            json::<crate::runtime::DocStatus>(),
        ),
        ("GET", "/api/v1/dbs") => Doc::new(
            "List documents",
            "Admin tokens and admin sessions see every document; a signed-in person the \
             documents they own; other tokens get `403`.",
        )
        .ok(200, "The documents, by `db_id`.", json::<DbList>()),

        // -----------------------------------------------------------------------------------
        // auth (tokens, audit)
        ("GET", "/api/v1/admin/tokens") => Doc::new(
            "List tokens",
            "Every token's metadata (never the secret or hash). A signed-in person who is not \
             an admin sees only the tokens they made.",
        )
        .ok(200, "The tokens.", json::<TokenList>()),
        ("POST", "/api/v1/admin/tokens") => Doc::new(
            "Create a token",
            "Mints a token; the plaintext is in the answer, once. Only an admin may create an \
             admin token; a person who is not an admin mints only non-admin tokens whose every \
             scope names a document they own.",
        )
        .body(json::<crate::auth::routes::CreateBody>())
        .ok(201, "Created.", json::<CreatedToken>())
        .status(
            400,
            "`invalid_token`: empty or over-long label, a non-admin token without scopes, \
             `expires_at` not RFC 3339 or not in the future, unknown action, invalid `db_id`, \
             empty `resource_prefix`; unknown fields.",
        )
        .status(
            403,
            "`forbidden`: an admin token asked for by a non-admin, or a scope on a document \
             the person does not own.",
        ),
        ("DELETE", "/api/v1/admin/tokens/{id}") => Doc::new(
            "Revoke a token",
            "The next request with it is `401`; its open streams end within a second.",
        )
        .status(204, "Revoked.")
        .status(
            404,
            "`not_found`: no such live token (or not one of the person's).",
        ),
        ("GET", "/api/v1/admin/audit") => Doc::new(
            "Audit log",
            "Sign-ins and sign-outs, token and document changes, webhook configuration \
             changes; newest first.",
        )
        .query("limit", Kind::IntegerIn(1, 1000), "1 to 1000, default 100.")
        .ok(200, "The events.", json::<AuditList>())
        .status(400, "`invalid_limit` or `invalid_query`."),

        // -----------------------------------------------------------------------------------
        // identity
        ("POST", "/auth/token-login") => Doc::new(
            "Sign in with an admin token",
            "Exchanges an admin machine token for a web session (only while OIDC is off). The \
             session stands for the token: same scopes; revoking the token ends it.",
        )
        .body(json::<crate::identity::TokenLoginBody>())
        .status(204, "Signed in.")
        .with_headers(&[(
            "Set-Cookie",
            "`patchwork_session`: HttpOnly, SameSite=Lax, Path=/ (Secure when `public_url` is \
             https); always a new session id.",
        )])
        .status(
            401,
            "`unauthorized`: unknown, expired or revoked, or not an admin token.",
        )
        .status(
            404,
            "`not_found`: OIDC is configured (sign in at `/auth/login`).",
        ),
        ("GET", "/auth/login") => Doc::new(
            "Start an OIDC sign-in",
            "Redirects to the provider: authorization code with PKCE S256, `state` and `nonce`, \
             kept in a short-lived (10 min) pre-login session.",
        )
        .query(
            "next",
            Kind::String,
            "Where to go after signing in: a path on this site (else `/ui/`).",
        )
        .status(302, "To the provider (`Location`).")
        .status(404, "`not_found`: OIDC is off.")
        .status(
            503,
            "`oidc_unavailable`: the provider's metadata could not be fetched.",
        ),
        ("GET", "/auth/callback") => Doc::new(
            "Finish an OIDC sign-in",
            "Checks `state` (once), trades the code with the PKCE verifier, verifies the ID \
             token (signature, issuer, audience, expiry, nonce), records the user and starts a \
             session with a new id.",
        )
        .query("code", Kind::String, "The provider's authorization code.")
        .query("state", Kind::String, "The state sent at `/auth/login`.")
        .query("error", Kind::String, "The provider's refusal.")
        .query(
            "error_description",
            Kind::String,
            "The provider's explanation.",
        )
        .status(
            302,
            "Signed in: to `next` (`Location`), with the session cookie.",
        )
        .ok(
            400,
            "A provider error, a tampered or replayed state, a refused code or an invalid ID \
             token: an HTML page, no session.",
            Payload::Text("text/html", "An HTML page saying what went wrong."),
        )
        .status(404, "`not_found`: OIDC is off.")
        .status(
            503,
            "`oidc_unavailable`: the provider could not be reached.",
        ),
        ("GET", "/auth/methods") => Doc::new(
            "How to sign in",
            "What the dashboard's sign-in page asks; starts nothing.",
        )
        .ok(200, "The sign-in methods.", json::<AuthMethods>()),
        ("GET", "/auth/me") => Doc::new(
            "Who am I",
            "The signed-in person and the session's CSRF token.",
        )
        .ok(200, "The session's principal.", json::<Me>()),
        ("POST", "/auth/logout") => Doc::new(
            "Sign out",
            "Deletes the session server-side and clears the cookie; the old cookie is refused \
             from then on.",
        )
        .status(204, "Signed out."),

        // -----------------------------------------------------------------------------------
        // query
        ("POST", "/api/v1/db/{db_id}/query/exec") => Doc::new(
            "Run one statement",
            "The statement's class is decided by SQLite, not its first keyword: read-only \
             needs `query.read`, data changes `query.write`, schema changes, allowed \
             maintenance PRAGMAs and the rest `query.admin`. `ATTACH`, `DETACH`, \
             `load_extension`, `VACUUM INTO`, transaction control, other PRAGMAs and anything \
             touching `_patchwork_*` are refused for everyone. Bounds: `query_timeout_ms`, \
             `query_max_rows`, `query_max_result_bytes` (options only lower them).",
        )
        .header(
            "Patch-Fence",
            "`{resource}={fence}[, …]`: fail with `409 stale_fence` unless every fence is the \
             current one of an unexpired lease (checked in the same transaction).",
        )
        .body(json::<ExecBody>())
        .ok(200, "The statement's result.", json::<ExecResult>())
        .status(
            400,
            "`sql_error`, `multiple_statements`, `empty_statement`, `invalid_args`, \
             `invalid_options`, `invalid_fence`.",
        )
        .status(
            403,
            "`forbidden`: the token lacks the statement's class, or a refused statement \
             (`details.reason = \"refused_statement\"`).",
        )
        .status(409, "`constraint_violation`, `stale_fence`.")
        .status(
            413,
            "`too_large`: the result is over `query_max_result_bytes`.",
        )
        .status(504, "`timeout`: the statement ran past its time limit."),
        ("POST", "/api/v1/db/{db_id}/query/batch") => Doc::new(
            "Run statements in one transaction",
            "All or nothing, at most 1000 statements. Every statement that can be prepared up \
             front is classified and scope-checked before any runs. Errors carry \
             `details.index`.",
        )
        .header(
            "Patch-Fence",
            "`{resource}={fence}[, …]`: as for `query/exec`.",
        )
        .body(json::<BatchBody>())
        .ok(200, "One result per statement.", json::<BatchResults>())
        .status(
            400,
            "As `query/exec`, plus `empty_batch`, `batch_too_large`; with `details.index`.",
        )
        .status(403, "As `query/exec`, with `details.index`.")
        .status(409, "`constraint_violation`, `stale_fence`.")
        .status(
            413,
            "`too_large`: the results are over `query_max_result_bytes`.",
        )
        .status(504, "`timeout`."),
        ("POST", "/api/v1/db/{db_id}/query/watch") => Doc::new(
            "Watch a query (SSE)",
            "A read-only statement kept up to date. Validated before the stream starts. A write \
             re-evaluates only watches whose read set (tables) it touched; bursts coalesce. \
             `Last-Event-ID` equal to the current `result_hash` suppresses the snapshot.",
        )
        .header("Last-Event-ID", "A `result_hash` seen before.")
        .body(json::<WatchBody>())
        .ok(
            200,
            "The stream.",
            Payload::Events(
                "Events: `snapshot` (first result) and `update` (only when `result_hash` \
                 changes), data `WatchResult`, SSE `id:` = `result_hash`; `heartbeat` (every \
                 `heartbeat_seconds`) `{watch_id, seq, time}`; `error` (`StreamError` with \
                 `watch_id`; `token_revoked` / `token_expired` end the stream).",
            ),
        )
        .status(
            400,
            "`sql_error`, `not_read_only`, `invalid_options` (e.g. `heartbeat_seconds` outside \
             1–3600).",
        )
        .status(403, "A refused statement."),

        // -----------------------------------------------------------------------------------
        // pubsub
        ("POST", "/api/v1/db/{db_id}/messages") => Doc::new(
            "Publish a message",
            "Answered only after the row is committed (group commit). The decoded payload may \
             be up to 1 MiB; the body is cut at 2 MiB while read.",
        )
        .header(
            "Patch-Fence",
            "`{resource}={fence}[, …]`: as for `query/exec`.",
        )
        .body(json::<PublishBody>())
        .ok(201, "Stored.", json::<Published>())
        .status(400, "`invalid_message`, `invalid_topic`, `invalid_fence`.")
        .status(409, "`stale_fence`.")
        .status(413, "`too_large`: the decoded payload is over 1 MiB."),
        ("POST", "/api/v1/db/{db_id}/messages/batch") => Doc::new(
            "Publish messages in one commit",
            "1 to 1000 messages, all or nothing; `pub.publish` for every topic. Errors carry \
             `details.index`.",
        )
        .header(
            "Patch-Fence",
            "`{resource}={fence}[, …]`: as for `query/exec`.",
        )
        .body(json::<PublishBatchBody>())
        .ok(
            201,
            "Stored, one result per message.",
            json::<PublishedBatch>(),
        )
        .status(400, "`invalid_body`, `invalid_message`, `invalid_topic`.")
        .status(409, "`stale_fence`.")
        .status(413, "`too_large`."),
        ("GET", "/api/v1/db/{db_id}/events/stream") => Doc::new(
            "Subscribe (SSE)",
            "Replay then live, with no gap and no duplicate at the seam. Filters: MQTT `+` \
             (one level) and `#` (last level; `a/#` matches `a`); a filter starting with a \
             wildcard does not match `$…` topics. A scope's `resource_prefix` must be a prefix \
             of each filter's literal part.",
        )
        .query_required(
            "topic",
            Kind::String,
            "A topic filter; repeat for several (at least one).",
        )
        .query(
            "since_id",
            Kind::Integer,
            "Replay messages with a larger id.",
        )
        .query(
            "tail",
            Kind::Integer,
            "Replay the last N (≤ 1000); not with `since_id`.",
        )
        .query(
            "heartbeat_seconds",
            Kind::Integer,
            "Heartbeat period, lower than 15.",
        )
        .header(
            "Last-Event-ID",
            "Resume after this message id (like `since_id`).",
        )
        .ok(
            200,
            "The stream.",
            Payload::Events(
                "Events: `message` (data `Message`, SSE `id:` = message id); `heartbeat` \
                 (`Heartbeat`, every 15 s by default); `error` (`StreamError`: \
                 `slow_consumer` — the 512-message queue filled, reconnect with \
                 `Last-Event-ID` —, `shutting_down`, `overloaded`, `token_revoked`, \
                 `token_expired`; the stream then ends).",
            ),
        )
        .status(
            400,
            "`invalid_topic`, `invalid_query` (both `since_id` and `tail`, unknown \
             parameters), `invalid_last_event_id`.",
        ),
        ("GET", "/api/v1/db/{db_id}/events/ws") => Doc::new(
            "Subscribe and publish (WebSocket)",
            "One JSON object per text frame: client frames `WsClientFrame` (`subscribe`, \
             `unsubscribe`, `publish`, `ping`), server frames `WsServerFrame` (`subscribed`, \
             `unsubscribed`, `message`, `ack`, `error`, `pong`). Scopes are checked per frame \
             (`pub.subscribe` to subscribe, `pub.publish` to publish). Publish frames may be \
             pipelined; each `ack` comes after its commit. A revoked or expired token gets an \
             `error` frame, then close code 1008. From a web session the page must be of this \
             site (`Origin`).",
        )
        .status(101, "Switching to the WebSocket protocol.")
        .status(
            400,
            "`websocket_upgrade_required`: not a WebSocket upgrade.",
        ),
        ("GET", "/api/v1/db/{db_id}/messages/retention") => Doc::new(
            "Retention rules",
            "The stored rules; without any, messages are kept forever.",
        )
        .ok(200, "The rules.", json::<RetentionRules>()),
        ("PUT", "/api/v1/db/{db_id}/messages/retention") => Doc::new(
            "Replace the retention rules",
            "Replaces every rule. The sweep (every `retention_sweep_seconds`) deletes what falls \
             out, in batches, then reclaims the space.",
        )
        .body(json::<RetentionRules>())
        .ok(200, "The stored rules.", json::<RetentionRules>())
        .status(
            400,
            "`invalid_rules`: over 100 rules, a filter twice, a rule without a bound, a bad \
             filter.",
        ),

        // -----------------------------------------------------------------------------------
        // leases
        ("POST", "/api/v1/db/{db_id}/leases/acquire") => Doc::new(
            "Acquire a lease",
            "One write in the document's group commit, so concurrent acquirers are serialized \
             and exactly one wins. Fences grow by one per acquisition and never go back.",
        )
        .body(json::<crate::leases::AcquireBody>())
        .ok(200, "Acquired.", json::<crate::leases::LeaseGrant>())
        .status(400, "`invalid_resource`, `invalid_owner`, `invalid_ttl`.")
        .status(
            409,
            "`lease_held` with `details {holder, expires_at}` (also when the same owner asks \
             again: renew instead).",
        ),
        ("POST", "/api/v1/db/{db_id}/leases/renew") => {
            Doc::new("Renew a lease", "Moves the expiry; the fence stays.")
                .body(json::<crate::leases::RenewBody>())
                .ok(200, "Renewed.", json::<crate::leases::LeaseGrant>())
                .status(400, "`invalid_resource`, `invalid_owner`, `invalid_ttl`.")
                .status(
                    409,
                    "`not_holder`: wrong owner or token, or the lease expired.",
                )
        }
        ("POST", "/api/v1/db/{db_id}/leases/release") => Doc::new(
            "Release a lease",
            "The row (and its fence) is kept, so fences never go back.",
        )
        .body(json::<crate::leases::ReleaseBody>())
        .ok(200, "Released.", json::<LeaseReleased>())
        .status(400, "`invalid_resource`, `invalid_owner`.")
        .status(
            409,
            "`not_holder`: wrong owner or token, or the lease expired.",
        ),
        ("GET", "/api/v1/db/{db_id}/leases") => Doc::new(
            "List leases",
            "Unexpired leases (never their tokens). Needs one of the lease actions, unprefixed.",
        )
        .ok(200, "The leases.", json::<LeaseList>()),

        // -----------------------------------------------------------------------------------
        // webhooks
        (_, "/api/v1/db/{db_id}/webhooks/{*endpoint}") => Doc::new(
            "Receive a webhook delivery",
            "Any method. The delivery is committed into the document's `webhook_inbox` \
             (`endpoint` percent-decoded, `received_at`, `method`, `query_string` without any \
             credential pair, `headers_json` with credentials `[redacted]`, `content_type`, \
             `payload` as a BLOB, `signature_valid`, `delivery_id` from the usual delivery \
             headers). With a signature configuration the signature is recorded \
             (`1`/`0`/`NULL`) or enforced; with `publish_topic` the same commit stores a \
             durable message `{webhook_id, endpoint, delivery_id}`. Endpoint names starting \
             with `_` are reserved.",
        )
        .optional_body(
            Payload::Bytes("*/*", "The delivery, stored as received."),
            "The delivery's body (at most `webhook_max_body_bytes`).",
        )
        .ok(201, "Stored.", json::<WebhookStored>())
        .status(400, "`invalid_endpoint`, `invalid_path`.")
        .status(
            401,
            "With `enforce`: an invalid or missing signature (nothing stored).",
        )
        .status(413, "`too_large`: over `webhook_max_body_bytes`."),
        ("PUT", "/api/v1/db/{db_id}/webhooks/_config/{*endpoint}") => Doc::new(
            "Configure an endpoint's signature check",
            "GitHub (`X-Hub-Signature-256`), Stripe (`Stripe-Signature`, 300 s tolerance) or a \
             generic HMAC-SHA256 header. The secret is encrypted at rest.",
        )
        .body(json::<crate::webhooks::ConfigBody>())
        .status(204, "Stored.")
        .status(400, "`invalid_config`, `invalid_endpoint`."),
        ("GET", "/api/v1/db/{db_id}/webhooks/_config/{*endpoint}") => Doc::new(
            "An endpoint's signature configuration",
            "Without the secret.",
        )
        .ok(200, "The configuration.", json::<WebhookConfig>())
        .status(404, "`not_found`: no configuration for this endpoint."),
        ("DELETE", "/api/v1/db/{db_id}/webhooks/_config/{*endpoint}") => Doc::new(
            "Remove an endpoint's signature configuration",
            "Deliveries are stored with `signature_valid = NULL` from then on.",
        )
        .status(204, "Removed.")
        .status(404, "`not_found`: no configuration for this endpoint."),

        // -----------------------------------------------------------------------------------
        // blobs
        ("POST", "/api/v1/db/{db_id}/blobs/init-upload") => Doc::new(
            "Start an upload",
            "Answers a signed upload URL (this server's, or a presigned S3 `PUT`), plus part \
             URLs for objects over `blob_part_bytes`. When the object exists complete and this \
             document already references it, no upload is needed and the claim is renewed; \
             any other document uploads the bytes (knowing a hash grants nothing).",
        )
        .body(json::<crate::blobs::InitBody>())
        .ok(201, "Upload here.", json::<UploadOffer>())
        .ok(
            200,
            "Already complete for this document.",
            json::<AlreadyComplete>(),
        )
        .status(
            400,
            "`invalid_hash`, `invalid_size`, `invalid_content_type`.",
        )
        .status(409, "`size_mismatch`: the object exists with another size."),
        ("PUT", "/api/v1/db/{db_id}/blobs/upload/{blob_id}") => Doc::new(
            "Upload the bytes (signed URL)",
            "The URL from `init-upload`; its signature is the credential (no token). Streams \
             the body to the staging object (never whole in memory); exactly the declared \
             size.",
        )
        .query_required("expires", Kind::Integer, "Unix seconds, signed.")
        .query_required("sig", Kind::String, "The signature.")
        .query(
            "part",
            Kind::Integer,
            "A part's number (uploads offered in parts).",
        )
        .body(Payload::Bytes(
            "application/octet-stream",
            "The object (or the part), with the `Content-Type` of `init-upload`.",
        ))
        .ok(
            200,
            "Staged: `Uploaded`; a part: `PartUploaded`, with its `ETag` header.",
            one_of::<Uploaded, PartUploaded>(),
        )
        .status(400, "`size_mismatch`: longer or shorter than declared.")
        .status(403, "`invalid_signature`: bad, missing or expired.")
        .status(404, "`not_found`: the upload was completed or cleaned up."),
        ("POST", "/api/v1/db/{db_id}/blobs/complete-upload") => Doc::new(
            "Complete an upload",
            "Streams the staged object through BLAKE3; equal → moved to its final place, \
             recorded, and claimed by the document for `blob_claim_ttl_secs`. With `parts`: \
             every part exactly once, assembled first.",
        )
        .body(json::<crate::blobs::CompleteBody>())
        .ok(200, "Complete.", json::<BlobComplete>())
        .status(400, "`invalid_parts`.")
        .status(
            404,
            "`not_found`: unknown `blob_id` (or another document's).",
        )
        .status(
            409,
            "`hash_mismatch` (`details {expected, actual, size}`), `size_mismatch` \
             (`details {expected_size, size}`), `upload_missing`, `parts_refused`; the staged \
             bytes and the upload are deleted on a mismatch.",
        ),
        ("GET", "/api/v1/db/{db_id}/blobs/list") => Doc::new(
            "List the document's blobs",
            "Every hash the document keeps, claims or publishes. Needs `blob.read` \
             unprefixed.",
        )
        .ok(200, "The blobs, by hash.", json::<BlobList>()),
        ("GET", "/api/v1/db/{db_id}/blobs/{hash}/read-url") => Doc::new(
            "A signed read URL",
            "Valid `blob_url_ttl_secs`. A local signed URL stops working once the document \
             lets go of the blob; a presigned S3 URL works until it expires.",
        )
        .ok(200, "The URL.", json::<ReadUrl>())
        .status(400, "`invalid_hash`.")
        .status(
            404,
            "`not_found`: the document does not reference the hash.",
        ),
        ("GET" | "HEAD", "/api/v1/db/{db_id}/blobs/object/{hash}") => Doc::new(
            "Read a blob",
            "With a valid signature (from `read-url`) or a token with `blob.read` for the hash \
             in `Authorization`. `Range: bytes=a-b | a- | -n` (one range) → `206`; \
             `If-None-Match` → `304`. Served with `Content-Security-Policy: sandbox` and \
             `nosniff`.",
        )
        .token_or_signature(Action::BlobRead)
        .query(
            "expires",
            Kind::Integer,
            "Unix seconds, signed (signed URLs).",
        )
        .query("sig", Kind::String, "The signature (signed URLs).")
        .header("Range", "One byte range.")
        .header("If-None-Match", "`\"{hash}\"`.")
        .ok(
            200,
            "The bytes.",
            Payload::Bytes(
                "application/octet-stream",
                "The object, with its content type.",
            ),
        )
        .with_headers(&[
            ("ETag", "`\"{hash}\"`."),
            ("Accept-Ranges", "`bytes`."),
            ("Content-Type", "As given at upload."),
        ])
        .ok(
            206,
            "The requested range (`Content-Range`).",
            Payload::Bytes("application/octet-stream", "Part of the object."),
        )
        .status(304, "Not modified.")
        .status(400, "`invalid_hash`.")
        .status(401, "`unauthorized`: neither a token nor a signature.")
        .status(
            403,
            "`invalid_signature`, or the token lacks `blob.read` for the hash.",
        )
        .status(
            404,
            "`not_found`: the document does not reference the hash.",
        )
        .status(416, "Range not satisfiable."),
        ("POST", "/api/v1/db/{db_id}/blobs/{hash}/claim") => Doc::new(
            "Claim a blob",
            "Until now + `ttl_secs` (a longer existing claim is kept). The document must \
             reference the hash already.",
        )
        .optional_body(
            json::<crate::blobs::ClaimBody>(),
            "Optional; empty is `{}`.",
        )
        .ok(200, "What the document now holds.", json::<BlobRef>())
        .status(400, "`invalid_hash`, `invalid_ttl`, `invalid_json`.")
        .status(
            404,
            "`not_found`: the document does not reference the hash.",
        ),
        ("POST", "/api/v1/db/{db_id}/blobs/{hash}/release") => {
            Doc::new("Release a blob's claim", "Drops the document's claim.")
                .ok(200, "What the document now holds.", json::<BlobRef>())
                .status(400, "`invalid_hash`.")
                .status(
                    404,
                    "`not_found`: the document does not reference the hash.",
                )
        }
        ("POST", "/api/v1/db/{db_id}/blobs/{hash}/keep") => Doc::new(
            "Keep a blob",
            "Inserts the row `(hash, size, content_type, created_at)` into the document's \
             `blobs` table.",
        )
        .ok(200, "What the document now holds.", json::<BlobRef>())
        .status(400, "`invalid_hash`.")
        .status(
            404,
            "`not_found`: the document does not reference the hash.",
        ),
        ("POST", "/api/v1/db/{db_id}/blobs/{hash}/unkeep") => Doc::new(
            "Stop keeping a blob",
            "Deletes its row from the document's `blobs` table.",
        )
        .ok(200, "What the document now holds.", json::<BlobRef>())
        .status(400, "`invalid_hash`.")
        .status(
            404,
            "`not_found`: the document does not reference the hash.",
        ),
        ("POST", "/api/v1/db/{db_id}/blobs/{hash}/publish") => Doc::new(
            "Publish a blob",
            "Serves it publicly at `/o/{hash}` (and `/o/{hash}.{ext}`).",
        )
        .ok(
            200,
            "What the document now holds, with `public_path`.",
            json::<BlobRef>(),
        )
        .status(400, "`invalid_hash`.")
        .status(
            404,
            "`not_found`: the document does not reference the hash.",
        ),
        ("POST", "/api/v1/db/{db_id}/blobs/{hash}/unpublish") => Doc::new(
            "Unpublish a blob",
            "`/o/{hash}` answers `404` once no document publishes it.",
        )
        .ok(200, "What the document now holds.", json::<BlobRef>())
        .status(400, "`invalid_hash`.")
        .status(
            404,
            "`not_found`: the document does not reference the hash.",
        ),
        ("GET" | "HEAD", "/o/{file}") => Doc::new(
            "A published blob",
            "A blob some document publishes, as `/blobs/object` plus `Cache-Control: public, \
             max-age=31536000, immutable`; `Range` and `If-None-Match` as there.",
        )
        .header("Range", "One byte range.")
        .header("If-None-Match", "`\"{hash}\"`.")
        .ok(
            200,
            "The bytes.",
            Payload::Bytes(
                "application/octet-stream",
                "The object, with its content type.",
            ),
        )
        .with_headers(&[
            ("ETag", "`\"{hash}\"`."),
            ("Cache-Control", "`public, max-age=31536000, immutable`."),
        ])
        .ok(
            206,
            "The requested range.",
            Payload::Bytes("application/octet-stream", "Part of the object."),
        )
        .status(304, "Not modified.")
        .status(404, "`not_found`: no document publishes it.")
        .status(416, "Range not satisfiable."),

        // -----------------------------------------------------------------------------------
        // streams
        (_, "/h" | "/h/{*rest}" | "/r" | "/r/{*rest}") => Doc::new(
            "Legacy hooks (gone)",
            "Any method. Not carried over: receive webhooks with the webhook inbox and use \
             `/u/{user}/…` stream routes with a token.",
        )
        .status(410, "`gone`."),
        (_, "/public/" | "/public/{*rest}" | "/p/" | "/p/{*rest}") => Doc::new(
            match m {
                "GET" => "Anonymous channel: receive (or publish with `?body=`)",
                "POST" | "PUT" => "Anonymous channel: send or answer",
                _ => "Anonymous channel: request (`req/…`)",
            },
            // `/p/x` and `/public/x` are different channels of the `public` namespace.
            LEGACY_CHANNELS,
        )
        .query(
            "pubsub",
            Kind::String,
            "Present (any value): broadcast mode.",
        )
        .query(
            "body",
            Kind::String,
            "A non-empty value makes a `GET` a producer of it.",
        )
        .query(
            "switch",
            Kind::Boolean,
            "Responders: `true` for the double clutch.",
        )
        .optional_body(
            Payload::Bytes("*/*", "The message, streamed."),
            "Producers, requesters and responders: the message.",
        )
        .ok(
            200,
            "Consumers: the message (with the producer's forwarded headers); producers: the \
             consumer read it all; requesters: the responder's answer.",
            Payload::Bytes("*/*", "The relayed bytes."),
        )
        .ok(
            400,
            "`Channel ID required` (plain text): an empty `req/` or `res/` id.",
            Payload::Text("text/plain", "The legacy error text."),
        )
        .status(
            401,
            "`unauthorized`: anonymous routes are off (`streams_public = false`).",
        )
        .ok(
            405,
            "`Method not allowed` (plain text).",
            Payload::Text("text/plain", "The legacy error text."),
        )
        .status(502, "`peer_disconnected`: the consumer left mid-body.")
        .status(
            503,
            "`overloaded`: too many waiting parties, per channel or in total.",
        )
        .status(
            504,
            "`timeout`: no counterpart within `stream_wait_timeout_secs`.",
        ),
        (_, "/u/{db_id}/" | "/u/{db_id}/{*rest}") => Doc::new(
            match m {
                "GET" => "Channel of a namespace: receive (or publish with `?body=`)",
                "POST" | "PUT" => "Channel of a namespace: send or answer",
                _ => "Channel of a namespace: request (`req/…`)",
            },
            // The user's namespace is the document `db_id`; its channels are shared with the
            // canonical routes.
            LEGACY_CHANNELS,
        )
        .query(
            "pubsub",
            Kind::String,
            "Present (any value): broadcast mode.",
        )
        .query(
            "body",
            Kind::String,
            "A non-empty value makes a `GET` a producer of it.",
        )
        .query(
            "switch",
            Kind::Boolean,
            "Responders: `true` for the double clutch.",
        )
        .optional_body(
            Payload::Bytes("*/*", "The message, streamed."),
            "Producers, requesters and responders: the message.",
        )
        .ok(
            200,
            "Consumers: the message; producers: the consumer read it all; requesters: the \
             responder's answer.",
            Payload::Bytes("*/*", "The relayed bytes."),
        )
        .ok(
            400,
            "`Channel ID required` (plain text): an empty `req/` or `res/` id; or \
             `invalid_db_id` (JSON).",
            Payload::Text("text/plain", "The legacy error text."),
        )
        .or(json::<crate::error::Body<'static>>())
        .status(404, "`not_found`: `_/…` control paths.")
        .ok(
            405,
            "`Method not allowed` (plain text).",
            Payload::Text("text/plain", "The legacy error text."),
        )
        .status(502, "`peer_disconnected`: the consumer left mid-body.")
        .status(
            504,
            "`timeout`: no counterpart within `stream_wait_timeout_secs`.",
        ),
        (_, "/api/v1/db/{db_id}/streams/queue/{*rest}") => match m {
            "GET" => Doc::new(
                "Queue: receive",
                "`GET …/queue/{topic}/next` (or `…/queue/{topic}`) waits for one message of \
                 `queue/{topic}` and streams it, with the producer's forwarded headers \
                 (`stream.read`).",
            )
            .query(
                "body",
                Kind::String,
                "A non-empty value makes this `GET` a producer of it.",
            ),
            _ => Doc::new(
                "Queue: send",
                "Blocks until one receiver takes the message; answered `200` only after it \
                 read all of it (`stream.write`). `?pubsub=true`: delivered to every current \
                 receiver, answered at once.",
            )
            .query(
                "pubsub",
                Kind::Boolean,
                "Broadcast to the current receivers.",
            )
            .optional_body(
                Payload::Bytes("*/*", "The message, streamed."),
                "The message.",
            ),
        }
        .ok(
            200,
            "Receivers: the message; senders: delivered.",
            Payload::Bytes("*/*", "The relayed bytes."),
        )
        .status(502, "`peer_disconnected`: the receiver left mid-body.")
        .status(
            504,
            "`timeout`: no counterpart within `stream_wait_timeout_secs`.",
        ),
        (_, "/api/v1/db/{db_id}/streams/pubsub/{*rest}") => match m {
            "GET" => Doc::new(
                "Broadcast: receive",
                "Waits for the next publication on `pubsub/{topic}` (`stream.read`); a \
                 non-empty `?body=` publishes it instead (`stream.write`).",
            )
            .query(
                "body",
                Kind::String,
                "Publish this text instead of receiving.",
            ),
            _ => Doc::new(
                "Broadcast: publish",
                "Delivered to every current receiver; answered at once (`stream.write`).",
            )
            .optional_body(
                Payload::Bytes("*/*", "The message, streamed."),
                "The message.",
            ),
        }
        .ok(
            200,
            "Receivers: the message; publishers: done.",
            Payload::Bytes("*/*", "The relayed bytes."),
        )
        .status(504, "`timeout`: nothing within `stream_wait_timeout_secs`."),
        (_, "/api/v1/db/{db_id}/streams/req/{*rest}") => Doc::new(
            "Request a responder",
            "Any method (`stream.write`): the request (method, headers, body) goes to one \
             responder of `res/{path}`, whose answer comes back (`Patch-Status`, \
             `Content-Type` and `Patch-H-*` kept).",
        )
        .optional_body(
            Payload::Bytes("*/*", "The request body, streamed."),
            "The request's body.",
        )
        .ok(
            200,
            "The responder's answer (its `Patch-Status` sets the status).",
            Payload::Bytes("*/*", "The answer."),
        )
        .status(400, "`channel_id_required`: empty path.")
        .status(504, "`timeout`: no responder in time."),
        (_, "/api/v1/db/{db_id}/streams/res/{*rest}") => match m {
            "GET" => Doc::new(
                "Responder: observe",
                "Receives the next request of `req/{path}` (with `Patch-Method`, `Patch-Uri`) \
                 without answering it (`stream.read`).",
            ),
            _ => Doc::new(
                "Responder: answer",
                "Takes the next request of `req/{path}` and answers it with this body \
                 (`stream.read`); `?switch=true`: the double clutch (the request comes back as \
                 this answer, the real answer is sent to the channel it names).",
            )
            .query("switch", Kind::Boolean, "`true`: double clutch.")
            .header("Patch-Status", "The status the requester gets (100–599).")
            .optional_body(
                Payload::Bytes("*/*", "The answer, streamed."),
                "The answer.",
            ),
        }
        .ok(
            200,
            "The request (observers, double clutch) or done (blind answers).",
            Payload::Bytes("*/*", "The relayed bytes."),
        )
        .status(400, "`channel_id_required`: empty path.")
        .status(405, "`method_not_allowed`.")
        .status(504, "`timeout`: no requester in time."),

        // -----------------------------------------------------------------------------------
        // sync
        ("GET", "/api/v1/db/{db_id}/sync/status") => Doc::new(
            "Sync status",
            "The document's version, the oldest `since` still served, and the tables.",
        )
        .ok(200, "The status.", json::<SyncStatus>()),
        ("GET", "/api/v1/db/{db_id}/sync/changes") => Doc::new(
            "Changes since a version",
            "Every change after `since`, as one combined changeset (default) or as JSON rows; \
             at most 10000 versions per answer (ask again from `Patch-Version`). `live=true`: \
             SSE, what is kept after `since`, then each version as it commits.",
        )
        .query_required("since", Kind::Integer, "The version the client has.")
        .query(
            "format",
            Kind::OneOf(&["changeset", "json"]),
            "`changeset` (default) or `json`.",
        )
        .query("live", Kind::Boolean, "`true`: a live SSE stream.")
        .header(
            "Last-Event-ID",
            "`live=true`: resume after this version (wins over `since`).",
        )
        .ok(
            200,
            "The changes: one combined changeset (default), `JsonChanges` for `format=json`, \
             or with `live=true` an SSE stream.",
            Payload::Bytes(
                "application/vnd.sqlite3-changeset",
                "SQLite's changegroup of each version's changeset.",
            ),
        )
        .or(json::<JsonChanges>())
        .or(Payload::Events(
            "`live=true`: one `changes` event per version (data `LiveChanges`, SSE `id:` = \
             version), heartbeat comments every 15 s, an `error` event (`StreamError`) when \
             the token stops being valid.",
        ))
        .with_headers(&[(
            "Patch-Version",
            "The version the answer brings the client to.",
        )])
        .status(
            400,
            "`invalid_since` (ahead of the document), `invalid_query`.",
        )
        .status(
            410,
            "`version_gone`: `since` is older than what is kept; `details {oldest_version, \
             snapshot}`.",
        ),
        ("POST", "/api/v1/db/{db_id}/sync/changes") => Doc::new(
            "Push a changeset",
            "Applied as one write of the next group commit (so it gets a version and reaches \
             watches, subscribers and sync streams). Conflicts: `abort` rolls back at the \
             first one; `server_wins` keeps the server's row; `client_wins` replaces it for \
             `data`/`conflict`. A constraint or foreign-key violation aborts under every \
             policy.",
        )
        .query(
            "on_conflict",
            Kind::OneOf(&["abort", "server_wins", "client_wins"]),
            "`abort` (default), `server_wins` or `client_wins`.",
        )
        .header(
            "Patch-Base-Version",
            "The version the changeset was made against (`400 invalid_base_version` if ahead).",
        )
        .header(
            "Patch-Fence",
            "`{resource}={fence}[, …]`: as for `query/exec`.",
        )
        .body(Payload::Bytes(
            "application/vnd.sqlite3-changeset",
            "A changeset (SQLite session extension format), at most `max_body_bytes`.",
        ))
        .ok(200, "Applied.", json::<PushResult>())
        .status(
            400,
            "`invalid_changeset`, `invalid_base_version`, `invalid_query`.",
        )
        .status(
            403,
            "A changeset naming Patchwork's tables, or a trigger's refused statement.",
        )
        .status(409, "`sync_conflict` (`details.conflicts`), `stale_fence`.")
        .status(413, "`too_large`."),
        ("GET", "/api/v1/db/{db_id}/sync/snapshot") => Doc::new(
            "Snapshot",
            "A consistent SQLite file of the user tables, made with the backup API without \
             holding the writer. One `Range` is served as `206` when `If-Range` is absent or \
             names the current version.",
        )
        .header("Range", "One byte range.")
        .header(
            "If-Range",
            "`\"V\"`: the version the earlier part came from.",
        )
        .ok(
            200,
            "The file.",
            Payload::Bytes("application/vnd.sqlite3", "A SQLite database file."),
        )
        .with_headers(&[
            ("Patch-Version", "The copy's version."),
            ("ETag", "`\"V\"`."),
            ("Accept-Ranges", "`bytes`."),
        ])
        .ok(
            206,
            "The requested range.",
            Payload::Bytes("application/vnd.sqlite3", "Part of the file."),
        )
        .status(416, "Range not satisfiable."),

        _ => return None,
    };
    Some(doc)
}
