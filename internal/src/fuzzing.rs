//! The JSON bodies of every route, for the cargo-fuzz target `json_bodies`
//! (`fuzz/fuzz_targets/json_bodies.rs`). For each route that takes a JSON body, [`BODIES`] has
//! a check that takes the body's bytes through the route's own extractor (`axum::Json`'s
//! deserializer, its rejection turned into the contract's error like the route's) and then
//! through the checks the handler makes before it acts: the same functions the handler calls,
//! with the embedded default configuration. Statements (`query/exec`, `batch`, `watch`) are also
//! classified and their arguments bound on an in-memory document (migrated, with the classifier
//! installed, as the actor's connection is), never run.
//!
//! A unit test fails when the route table has a JSON-body route that is not listed here. Nothing
//! in the server uses this module.

use std::cell::RefCell;
use std::sync::OnceLock;

use rusqlite::Connection;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::config::Config;
use crate::error::ApiError;
use crate::query::{classify, exec};

/// One route's body: its method and path as declared, and the check.
pub struct BodyCheck {
    pub method: &'static str,
    pub path: &'static str,
    pub check: fn(&[u8]) -> Result<(), ApiError>,
}

/// Every JSON-body route, plus the WebSocket's publish frame (`events/ws`, a JSON text frame
/// rather than a body: `method` `WS`). A new route goes at the end (the seeds in
/// `fuzz/corpus/json_bodies/` start with their entry's index), with a seed of its own.
pub const BODIES: &[BodyCheck] = &[
    BodyCheck {
        method: "POST",
        path: "/api/v1/admin/tokens",
        check: token_create,
    },
    BodyCheck {
        method: "POST",
        path: "/auth/token-login",
        check: token_login,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/query/exec",
        check: query_exec,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/query/batch",
        check: query_batch,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/query/watch",
        check: query_watch,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/messages",
        check: publish,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/messages/batch",
        check: publish_batch,
    },
    BodyCheck {
        method: "PUT",
        path: "/api/v1/db/{db_id}/messages/retention",
        check: retention,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/leases/acquire",
        check: lease_acquire,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/leases/renew",
        check: lease_renew,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/leases/release",
        check: lease_release,
    },
    BodyCheck {
        method: "PUT",
        path: "/api/v1/db/{db_id}/webhooks/_config/{*endpoint}",
        check: webhook_config,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/blobs/init-upload",
        check: blob_init,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/blobs/complete-upload",
        check: blob_complete,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/blobs/{hash}/claim",
        check: blob_claim,
    },
    BodyCheck {
        method: "WS",
        path: "/api/v1/db/{db_id}/events/ws",
        check: ws_publish_frame,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/invites",
        check: invite_mint,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/invites/redeem",
        check: invite_redeem,
    },
    BodyCheck {
        method: "POST",
        path: "/invites/redeem",
        check: invite_redeem,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/presence/{room}/heartbeat",
        check: presence_heartbeat,
    },
    BodyCheck {
        method: "PUT",
        path: "/api/v1/db/{db_id}/presence/{room}/_config",
        check: presence_config,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/migrations",
        check: migrations,
    },
    BodyCheck {
        method: "PUT",
        path: "/api/v1/db/{db_id}/expiry",
        check: expiry,
    },
    BodyCheck {
        method: "POST",
        path: "/api/v1/db/{db_id}/media/token",
        check: media_token,
    },
    BodyCheck {
        method: "PUT",
        path: "/api/v1/db/{db_id}/_settings",
        check: doc_settings,
    },
    BodyCheck {
        method: "PATCH",
        path: "/api/v1/db/{db_id}/members/{subject}",
        check: member_update,
    },
];

/// The route's extractor: `axum::Json` (content type aside), its rejection as the route answers it.
fn extract<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    axum::Json::<T>::from_bytes(body)
        .map(|axum::Json(v)| v)
        .map_err(ApiError::from)
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(Config::default)
}

thread_local! {
    /// A document as the actor holds it: migrated, the classifier installed.
    static DOCUMENT: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// Classifies `sql` and binds `args` on the in-memory document, as the query routes do before
/// running a statement (which is not run here).
fn statement(sql: &str, args: Option<&Json>) -> Result<(), ApiError> {
    DOCUMENT.with(|cell| {
        let mut slot = cell.borrow_mut();
        let conn = slot.get_or_insert_with(|| {
            let conn = Connection::open_in_memory().expect("an in-memory database");
            crate::migrations::apply(&conn, crate::migrations::Schema::Document)
                .expect("the document migrations apply");
            classify::install(&conn);
            conn
        });
        let mut prepared = classify::prepare(conn, sql).map_err(crate::query::classify_error)?;
        exec::bind(&mut prepared.stmt, args)
    })
}

fn token_create(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::auth::routes::CreateBody>(body)?
        .into_new_token()
        .map(drop)
}

fn token_login(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::identity::TokenLoginBody>(body).map(drop)
}

fn query_exec(body: &[u8]) -> Result<(), ApiError> {
    let body: crate::query::ExecBody = extract(body)?;
    crate::query::limits(config(), body.options)?;
    statement(&body.sql, body.args.as_ref())
}

fn query_batch(body: &[u8]) -> Result<(), ApiError> {
    let body: crate::query::BatchBody = extract(body)?;
    crate::query::limits(config(), body.options)?;
    body.check()?;
    for s in &body.statements {
        statement(&s.sql, s.args.as_ref())?;
    }
    Ok(())
}

fn query_watch(body: &[u8]) -> Result<(), ApiError> {
    let body: crate::query::watch::WatchBody = extract(body)?;
    body.check(config())?;
    statement(&body.sql, body.args.as_ref())
}

fn publish(body: &[u8]) -> Result<(), ApiError> {
    crate::pubsub::parse_message(&extract::<Json>(body)?).map(drop)
}

fn publish_batch(body: &[u8]) -> Result<(), ApiError> {
    let messages = crate::pubsub::parse_batch(&extract::<Json>(body)?)?;
    assert!((1..=crate::pubsub::MAX_BATCH).contains(&messages.len()));
    Ok(())
}

fn retention(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::pubsub::retention::RulesBody>(body)?.check()
}

fn lease_acquire(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::leases::AcquireBody>(body)?.check(config())
}

fn lease_renew(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::leases::RenewBody>(body)?.check(config())
}

fn lease_release(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::leases::ReleaseBody>(body)?.check()
}

fn webhook_config(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::webhooks::ConfigBody>(body)?.check()
}

fn blob_init(body: &[u8]) -> Result<(), ApiError> {
    let (size, content_type) = extract::<crate::blobs::InitBody>(body)?.check(config())?;
    assert!(size <= config().blob_max_bytes);
    assert!(!content_type.is_empty() && content_type.len() <= 255);
    Ok(())
}

fn blob_complete(body: &[u8]) -> Result<(), ApiError> {
    let typed: crate::blobs::CompleteBody = extract(body)?;
    typed.check()?;
    // The parts against an upload offered in as many parts as the body lists, the last one
    // shorter by what the blob id's length says: the part arithmetic and the ETag checks are
    // reached with sizes the fuzzer steers.
    let raw: Json = serde_json::from_slice(body).unwrap_or_default();
    let parts = raw["parts"].as_array().map_or(0, Vec::len) as u64;
    let id_len = raw["blob_id"].as_str().map_or(0, str::len) as u64;
    let part_size = config().blob_part_bytes.max(1);
    let size = (parts * part_size).saturating_sub(id_len % part_size);
    let etags = typed.check_parts(size, part_size)?;
    assert!(etags.iter().all(|e| !e.is_empty() && e.len() <= 256));
    Ok(())
}

fn blob_claim(body: &[u8]) -> Result<(), ApiError> {
    let ttl = crate::blobs::claim_ttl(body, config())?;
    assert!(ttl >= 1 && ttl as u64 <= crate::blobs::MAX_CLAIM_TTL_SECS);
    Ok(())
}

fn ws_publish_frame(body: &[u8]) -> Result<(), ApiError> {
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(frame)) => {
            crate::pubsub::parse_message_map(&frame, &["type", "ref"]).map(drop)
        }
        _ => Err(ApiError::bad_request(
            "invalid_frame",
            "each frame must be a JSON object",
        )),
    }
}

fn invite_mint(body: &[u8]) -> Result<(), ApiError> {
    let grants = extract::<crate::invites::MintBody>(body)?.check()?;
    assert!(!grants.is_empty() && grants.len() <= 32);
    Ok(())
}

fn member_update(body: &[u8]) -> Result<(), ApiError> {
    let grants = extract::<crate::invites::MemberBody>(body)?.check()?;
    assert!(!grants.is_empty() && grants.len() <= 32);
    Ok(())
}

fn invite_redeem(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::invites::RedeemBody>(body)?.check()
}

fn presence_heartbeat(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::presence::HeartbeatBody>(body)?.check()
}

fn presence_config(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::presence::RoomConfig>(body)?.check()
}

fn migrations(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::schema::MigrationsBody>(body)?.check()
}

fn expiry(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::schema::expiry::RulesBody>(body)?.check()
}

fn media_token(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::media::TokenRequest>(body)?
        .check()
        .map(drop)
}

fn doc_settings(body: &[u8]) -> Result<(), ApiError> {
    extract::<crate::schema::settings::SettingsBody>(body)?.check()
}

/// Runs `BODIES[selector % len]` on `body` and insists on a clean answer: no panic (the fuzzer
/// sees one), and an error is a client error with a code and a message, never a `5xx`.
pub fn check(selector: u8, body: &[u8]) {
    let route = &BODIES[usize::from(selector) % BODIES.len()];
    if let Err(e) = (route.check)(body) {
        assert!(
            e.status.is_client_error(),
            "{} {}: {} {} {}",
            route.method,
            route.path,
            e.status,
            e.code,
            e.message
        );
        assert!(!e.code.is_empty() && !e.message.is_empty(), "{e:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route whose OpenAPI operation has a JSON request body is in [`BODIES`] (and
    /// nothing else is, the WebSocket frame aside).
    #[test]
    fn every_json_body_route_is_fuzzed() {
        let doc: Json = serde_json::from_slice(crate::ops::openapi::document()).unwrap();
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if op["requestBody"]["content"]
                    .get("application/json")
                    .is_some()
                {
                    documented.insert((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        let listed: std::collections::BTreeSet<_> = BODIES
            .iter()
            .filter(|b| b.method != "WS")
            .map(|b| {
                (
                    b.method.to_owned(),
                    crate::ops::openapi::openapi_path(b.path),
                )
            })
            .collect();
        let missing: Vec<_> = documented.difference(&listed).collect();
        assert!(
            missing.is_empty(),
            "JSON-body routes without a fuzz check: {missing:?}; append a BodyCheck to \
             fuzzing::BODIES (the route's extractor, then the checks its handler makes before \
             acting, ideally one `check` method the handler calls too) and a seed to \
             fuzz/corpus/json_bodies/"
        );
        let extra: Vec<_> = listed.difference(&documented).collect();
        assert!(extra.is_empty(), "not JSON-body routes: {extra:?}");
        // And every listed route is in the route table.
        let table: std::collections::BTreeSet<_> = crate::router::route_table()
            .into_iter()
            .map(|s| s.path)
            .collect();
        for b in BODIES {
            assert!(table.contains(b.path), "{} is not a route", b.path);
        }
    }

    #[test]
    fn valid_bodies_pass_and_invalid_ones_are_client_errors() {
        let ok: &[(&str, &str)] = &[
            ("/api/v1/admin/tokens", r#"{"label":"x","is_admin":true}"#),
            ("/auth/token-login", r#"{"token":"pw_x"}"#),
            (
                "/api/v1/db/{db_id}/query/exec",
                r#"{"sql":"SELECT ?","args":[1]}"#,
            ),
            (
                "/api/v1/db/{db_id}/query/batch",
                r#"{"statements":[{"sql":"SELECT 1"}]}"#,
            ),
            ("/api/v1/db/{db_id}/query/watch", r#"{"sql":"SELECT 1"}"#),
            (
                "/api/v1/db/{db_id}/messages",
                r#"{"topic":"a/b","payload_text":"hi"}"#,
            ),
            (
                "/api/v1/db/{db_id}/messages/batch",
                r#"{"messages":[{"topic":"a","payload":1}]}"#,
            ),
            (
                "/api/v1/db/{db_id}/messages/retention",
                r#"{"rules":[{"topic_filter":"a/#","max_messages":5}]}"#,
            ),
            (
                "/api/v1/db/{db_id}/leases/acquire",
                r#"{"resource":"r","owner":"o","ttl_seconds":5}"#,
            ),
            (
                "/api/v1/db/{db_id}/leases/renew",
                r#"{"resource":"r","owner":"o","lease_token":"t","ttl_seconds":5}"#,
            ),
            (
                "/api/v1/db/{db_id}/leases/release",
                r#"{"resource":"r","owner":"o","lease_token":"t"}"#,
            ),
            (
                "/api/v1/db/{db_id}/webhooks/_config/{*endpoint}",
                r#"{"scheme":"github","secret":"s"}"#,
            ),
            (
                "/api/v1/db/{db_id}/blobs/init-upload",
                r#"{"hash":"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262","size":0}"#,
            ),
            ("/api/v1/db/{db_id}/blobs/{hash}/claim", ""),
            (
                "/api/v1/db/{db_id}/members/{subject}",
                r#"{"scopes":["query.read",{"action":"query.write","resource_prefix":null}]}"#,
            ),
            (
                "/api/v1/db/{db_id}/events/ws",
                r#"{"type":"publish","ref":1,"topic":"a","payload":null}"#,
            ),
        ];
        for (path, body) in ok {
            let route = BODIES.iter().find(|b| b.path == *path).unwrap();
            if let Err(e) = (route.check)(body.as_bytes()) {
                panic!("{path} {body}: {e:?}");
            }
        }
        for (i, route) in BODIES.iter().enumerate() {
            for bad in [&b"{"[..], b"[]", b"{\"x\":1}", b"\xff", b"null"] {
                if route.path.ends_with("/claim") && bad == b"null" {
                    continue;
                }
                assert!((route.check)(bad).is_err(), "{} {:?}", route.path, bad);
                check(i as u8, bad);
            }
        }
        // A refused statement is a client error too.
        let exec = BODIES
            .iter()
            .position(|b| b.path.ends_with("/exec"))
            .unwrap();
        check(exec as u8, br#"{"sql":"DELETE FROM _patchwork_messages"}"#);
    }
}
