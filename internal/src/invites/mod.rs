//! Invite links: a holder of `admin.token` on a document mints a signed link granting some of
//! its actions (`POST /invites`); anyone holding the link redeems it (`POST /invites/redeem`,
//! no token, proof of work when `pow_difficulty` asks for it) for a short-lived machine token
//! with exactly those grants, labelled with the member name they chose. Redeemed from a
//! signed-in web session, the invite instead makes that person a member of the document (a
//! grant the owner lists and revokes: `GET /members`, `DELETE /members/{subject}`).
//!
//! A link token is `{payload}.{mac}` (base64url): the payload is the invite (id, document,
//! room, grants, expiry, use limit, key id), the MAC an HMAC-SHA256 under that invite key,
//! checked in constant time. Keys ([`keys`]) rotate with `patchwork keys rotate`: the newest
//! signs, the one before it is still accepted, older ones are gone. Uses are counted in
//! `service.db` (`invites`), where an invite can also be revoked.

pub mod keys;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{delete, get, patch, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::auth::{Access, Action, Authorized, NewToken, ResourceFrom, Route, Scope};
use crate::error::{ApiError, Json, Path};
use crate::registry::DbId;
use crate::state::AppState;

/// Longest an invite link lives.
const MAX_TTL_SECS: u64 = 30 * 86_400;
/// Grants per invite at most.
const MAX_GRANTS: usize = 32;

/// One grant of an invite: an action on the invite's document, maybe under a resource prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_prefix: Option<String>,
}

impl Grant {
    pub fn scope(&self, db_id: &str) -> Scope {
        Scope {
            db_id: db_id.to_owned(),
            action: self.action,
            resource_prefix: self.resource_prefix.clone(),
        }
    }
}

/// A grant as a request may write it: `"pub.subscribe"` or `{action, resource_prefix?}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum GrantIn {
    Action(Action),
    Full(Grant),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintBody {
    #[serde(default)]
    room: Option<String>,
    scopes: Vec<GrantIn>,
    ttl_secs: u64,
    #[serde(default)]
    max_uses: Option<u64>,
}

impl MintBody {
    /// The checks `POST /invites` makes before it looks at the caller's own grants: the
    /// grants, normalised.
    pub(crate) fn check(&self) -> Result<Vec<Grant>, ApiError> {
        let bad = |m: String| ApiError::bad_request("invalid_invite_request", m);
        let grants = check_grants(&self.scopes).map_err(bad)?;
        if !(60..=MAX_TTL_SECS).contains(&self.ttl_secs) {
            return Err(bad(format!("ttl_secs must be 60 to {MAX_TTL_SECS}")));
        }
        if self.max_uses.is_some_and(|m| !(1..=1_000_000).contains(&m)) {
            return Err(bad("max_uses must be 1 to 1000000".into()));
        }
        if let Some(room) = &self.room
            && !plain_text(room, 128)
        {
            return Err(bad(
                "room must be 1 to 128 characters without control characters".into(),
            ));
        }
        Ok(grants)
    }
}

/// The grants an invite or a member may be given: 1 to 32, never `admin.token`, a
/// `resource_prefix` of 1 to 512 bytes; normalised to [`Grant`]s.
fn check_grants(scopes: &[GrantIn]) -> Result<Vec<Grant>, String> {
    if scopes.is_empty() || scopes.len() > MAX_GRANTS {
        return Err(format!("scopes must hold 1 to {MAX_GRANTS} grants"));
    }
    let grants: Vec<Grant> = scopes
        .iter()
        .map(|g| match g {
            GrantIn::Action(action) => Grant {
                action: *action,
                resource_prefix: None,
            },
            GrantIn::Full(g) => g.clone(),
        })
        .collect();
    for g in &grants {
        if g.action == Action::AdminToken {
            return Err("admin.token cannot be granted by invite or to a member".into());
        }
        if g.resource_prefix
            .as_ref()
            .is_some_and(|p| p.is_empty() || p.len() > 512)
        {
            return Err("resource_prefix must be 1 to 512 bytes".into());
        }
    }
    Ok(grants)
}

/// `403` unless the caller holds every one of `grants` on this document itself (no one hands
/// out more than they hold): what `POST /invites` and `PATCH /members/{subject}` both ask.
fn require_grantable(auth: &Authorized, grants: &[Grant]) -> Result<(), ApiError> {
    for g in grants {
        match &g.resource_prefix {
            None => auth.require(g.action)?,
            Some(prefix) => auth.resource(g.action, prefix)?,
        }
    }
    Ok(())
}

/// `PATCH /members/{subject}`: the member's new grants (replacing theirs), as `POST /invites`
/// takes them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    scopes: Vec<GrantIn>,
}

impl MemberBody {
    /// The checks `PATCH /members/{subject}` makes before it looks at the caller's own grants.
    pub(crate) fn check(&self) -> Result<Vec<Grant>, ApiError> {
        check_grants(&self.scopes).map_err(|m| ApiError::bad_request("invalid_member_request", m))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeemBody {
    token: String,
    member: String,
}

impl RedeemBody {
    /// The checks redemption makes before the proof of work and the signature.
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        if !plain_text(&self.member, 64) {
            return Err(ApiError::bad_request(
                "invalid_member",
                "member must be 1 to 64 characters without control characters",
            ));
        }
        Ok(())
    }
}

/// What a link carries (signed).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Payload {
    /// Format version.
    v: u8,
    /// Key id.
    k: i64,
    /// Invite id.
    i: String,
    d: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<String>,
    s: Vec<Grant>,
    /// Expiry, Unix seconds.
    e: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<u64>,
}

fn mac(key: &[u8; 32], payload_b64: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(b"patchwork invite v1\0");
    mac.update(payload_b64.as_bytes());
    mac
}

fn sign(key: &[u8; 32], payload: &Payload) -> String {
    let body = B64.encode(serde_json::to_vec(payload).unwrap_or_default());
    let tag = B64.encode(mac(key, &body).finalize().into_bytes());
    format!("{body}.{tag}")
}

/// The payload of `token` if one of `keys` signed it (constant-time MAC check). Expiry and
/// uses are the caller's to check.
fn verify(keys: &[(i64, [u8; 32])], token: &str) -> Option<Payload> {
    let (body, tag) = token.split_once('.')?;
    let tag = B64.decode(tag).ok()?;
    let payload: Payload = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
    let key = keys.iter().find(|(kid, _)| *kid == payload.k)?;
    mac(&key.1, body).verify_slice(&tag).ok()?;
    (payload.v == 1).then_some(payload)
}

fn invalid(why: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_invite", why.to_owned())
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn unix_rfc3339(secs: i64) -> String {
    crate::time_fmt::from_unix_ms(secs.saturating_mul(1000))
}

/// Member names and rooms: 1–64 (rooms 1–128) characters, no control characters.
fn plain_text(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

const MINT: Access = Access::Db {
    actions: &[Action::AdminToken],
    resource: ResourceFrom::None,
};

pub fn routes() -> Vec<Route> {
    let mut routes = vec![
        Route::new(Method::POST, "/api/v1/db/{db_id}/invites", MINT, post(mint)),
        Route::new(Method::GET, "/api/v1/db/{db_id}/invites", MINT, get(list)),
        Route::new(
            Method::DELETE,
            "/api/v1/db/{db_id}/invites/{invite_id}",
            MINT,
            delete(revoke),
        ),
        Route::new(
            Method::GET,
            "/api/v1/db/{db_id}/members",
            MINT,
            get(members),
        ),
        Route::new(
            Method::DELETE,
            "/api/v1/db/{db_id}/members/{subject}",
            MINT,
            delete(remove_member),
        ),
        Route::new(
            Method::PATCH,
            "/api/v1/db/{db_id}/members/{subject}",
            MINT,
            patch(update_member),
        ),
    ];
    // Redemption needs no token (the link is the credential): anonymous, rate limited per IP.
    for path in ["/api/v1/invites/redeem", "/invites/redeem"] {
        routes.push(Route::new(
            Method::POST,
            path,
            Access::Anonymous,
            post(redeem),
        ));
    }
    routes
}

/// `POST /invites`: a signed link granting `scopes` (actions the caller holds on this document,
/// never `admin.token`) until `ttl_secs` from now, at most `max_uses` times.
async fn mint(
    State(state): State<AppState>,
    auth: Authorized,
    headers: HeaderMap,
    Json(body): Json<MintBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let grants = body.check()?;
    // No more than the inviter holds.
    require_grantable(&auth, &grants)?;
    let db_id = auth.db()?.to_string();
    let (kid, key) = keys::current(&state).await?;
    let id = crate::auth::token::new_id();
    let expires = now().saturating_add(i64::try_from(body.ttl_secs).unwrap_or(i64::MAX));
    let payload = Payload {
        v: 1,
        k: kid,
        i: id.clone(),
        d: db_id.clone(),
        r: body.room.clone(),
        s: grants.clone(),
        e: expires,
        m: body.max_uses,
    };
    let token = sign(&key, &payload);
    let (row_id, db, room, by, max) = (
        id.clone(),
        db_id.clone(),
        body.room.clone(),
        auth.actor(),
        body.max_uses.map(|m| m as i64),
    );
    state
        .service
        .write(move |c| {
            c.execute(
                "INSERT INTO invites (id, db_id, room, created_by, created_at, expires_at, max_uses)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![row_id, db, room, by, crate::time_fmt::rfc3339(OffsetDateTime::now_utc()), expires, max],
            )?;
            crate::audit::record(c, &by, "invite.create", Some(&row_id), Some(&db))?;
            Ok(())
        })
        .await?;
    state.metrics.invites.minted.inc();
    let base = crate::blobs::base_url(&state, &headers)?;
    let url = format!("{base}/ui/#/invite/{token}");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "url": url,
            "token": token,
            "expires_at": unix_rfc3339(expires),
            "db_id": db_id,
            "room": body.room,
            "scopes": grants,
            "max_uses": body.max_uses,
        })),
    ))
}

/// `POST /invites/redeem {token, member}`: a short-lived machine token with the invite's
/// grants, or (from a signed-in web session) membership of the document.
async fn redeem(
    State(state): State<AppState>,
    session: Option<axum::Extension<tower_sessions::Session>>,
    method: Method,
    headers: HeaderMap,
    Json(body): Json<RedeemBody>,
) -> Result<Json<Value>, ApiError> {
    body.check()?;
    // Proof of work before anything costs the server (when `pow_difficulty` asks for it).
    state.pow.require(
        &headers,
        crate::pow::difficulty(&state, crate::pow::Group::Invites),
    )?;
    if body.token.len() > 8192 {
        state.metrics.invites.refused.inc();
        return Err(invalid("not an invite"));
    }
    let keys = keys::accepted(&state).await?;
    let Some(payload) = verify(&keys, &body.token) else {
        state.metrics.invites.refused.inc();
        return Err(invalid(
            "the invite is not valid (tampered, or signed by a retired key)",
        ));
    };
    if payload.e <= now() {
        state.metrics.invites.refused.inc();
        return Err(invalid("the invite has expired"));
    }
    let db_id = DbId::parse(&payload.d).map_err(|_| invalid("not an invite"))?;
    // A signed-in person (not a token login) joins as a member instead.
    let person = match &session {
        // A session that does not resolve (ended, or no CSRF header: a cross-site form, say)
        // redeems anonymously like any link holder.
        Some(axum::Extension(session)) => {
            crate::identity::resolve(&state, session, &method, &headers)
                .await
                .ok()
                .flatten()
                .map(|(_, principal)| principal)
                .filter(|p| p.token_id.is_none())
        }
        None => None,
    };
    // One use, counted atomically (an invite revoked or used up is refused).
    let id = payload.i.clone();
    let used = state
        .service
        .write(move |c| {
            let row: Option<(Option<i64>, i64, i64)> = c
                .query_row(
                    "SELECT max_uses, uses, revoked FROM invites WHERE id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((max, uses, revoked)) = row else {
                return Ok(Err("the invite is not known here"));
            };
            if revoked != 0 {
                return Ok(Err("the invite was revoked"));
            }
            if max.is_some_and(|m| uses >= m) {
                return Ok(Err("the invite is used up"));
            }
            c.execute("UPDATE invites SET uses = uses + 1 WHERE id = ?1", [&id])?;
            Ok(Ok(()))
        })
        .await?;
    if let Err(why) = used {
        state.metrics.invites.refused.inc();
        return Err(invalid(why));
    }
    state.metrics.invites.redeemed.inc();
    if let Some(person) = person {
        let scopes = state
            .owners
            .add_member(
                &state.service,
                db_id.as_str(),
                &person.subject,
                Some(body.member.trim()),
                &payload.s,
                &payload.i,
            )
            .await?;
        tracing::info!(invite_id = %payload.i, db_id = %db_id, subject = %person.subject,
            "audit: invite redeemed (membership)");
        return Ok(Json(json!({
            "member": person.subject,
            "db_id": db_id.as_str(),
            "room": payload.r,
            "scopes": scopes,
        })));
    }
    let ttl = i64::try_from(state.config.invite_token_ttl_secs).unwrap_or(i64::MAX);
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(ttl);
    let (meta, token) = state
        .tokens
        .create_by(
            NewToken {
                label: body.member.trim().to_owned(),
                is_admin: false,
                scopes: payload.s.iter().map(|g| g.scope(db_id.as_str())).collect(),
                expires_at: Some(expires_at),
            },
            &format!("invite:{}", payload.i),
        )
        .await?;
    Ok(Json(json!({
        "token": token,
        "token_id": meta.id,
        "expires_at": crate::time_fmt::rfc3339(expires_at),
        "db_id": db_id.as_str(),
        "room": payload.r,
        "member": body.member.trim(),
        "scopes": payload.s,
    })))
}

/// `GET /invites`: this document's invites (not their links).
async fn list(State(state): State<AppState>, auth: Authorized) -> Result<Json<Value>, ApiError> {
    let db = auth.db()?.to_string();
    let rows = state
        .service
        .read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, room, created_by, created_at, expires_at, max_uses, uses, revoked
                 FROM invites WHERE db_id = ?1 ORDER BY created_at DESC, id LIMIT 1000",
            )?;
            let rows = stmt.query_map([&db], |r| {
                Ok(json!({
                    "id": r.get::<_, String>(0)?,
                    "room": r.get::<_, Option<String>>(1)?,
                    "created_by": r.get::<_, String>(2)?,
                    "created_at": r.get::<_, String>(3)?,
                    "expires_at": unix_rfc3339(r.get(4)?),
                    "max_uses": r.get::<_, Option<i64>>(5)?,
                    "uses": r.get::<_, i64>(6)?,
                    "revoked": r.get::<_, i64>(7)? != 0,
                }))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    Ok(Json(json!({"invites": rows})))
}

/// `DELETE /invites/{invite_id}`: the link stops working (tokens already redeemed live on;
/// revoke them like any token).
async fn revoke(
    State(state): State<AppState>,
    auth: Authorized,
    Path((_, invite_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let db = auth.db()?.to_string();
    let by = auth.actor();
    let found = state
        .service
        .write(move |c| {
            let n = c.execute(
                "UPDATE invites SET revoked = 1 WHERE id = ?1 AND db_id = ?2",
                params![invite_id, db],
            )?;
            if n > 0 {
                crate::audit::record(c, &by, "invite.revoke", Some(&invite_id), Some(&db))?;
            }
            Ok(n > 0)
        })
        .await?;
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such invite on this document"))
    }
}

/// `GET /members`: people who joined this document by invite, with their grants.
async fn members(State(state): State<AppState>, auth: Authorized) -> Result<Json<Value>, ApiError> {
    let members =
        crate::identity::users::Owners::members_of(&state.service, auth.db()?.as_str()).await?;
    Ok(Json(json!({"members": members})))
}

/// `DELETE /members/{subject}`: the person's grants on this document end at once. `subject` may
/// also be the id of a token redeemed from one of this document's invites (a guest: what
/// `patchwork_caller()` returns for them): that token is revoked, so its holder loses every
/// grant and their open streams end, without the owner needing the global token routes.
async fn remove_member(
    State(state): State<AppState>,
    auth: Authorized,
    Path((_, subject)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let db = auth.db()?.to_string();
    let mut removed = state
        .owners
        .remove_member(&state.service, &db, &subject)
        .await?;
    if removed {
        // Their open sessions get new ids on their next request (privilege change).
        state.sessions.rotate_subject(&subject).await?;
    }
    if !removed && subject.len() <= 64 && subject.bytes().all(|b| b.is_ascii_alphanumeric()) {
        let (id, doc) = (subject.clone(), db.clone());
        let minted_here: bool = state
            .service
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM tokens t JOIN invites i
                       ON t.created_by = 'invite:' || i.id
                     WHERE t.id = ?1 AND i.db_id = ?2 AND t.revoked_at IS NULL)",
                    params![id, doc],
                    |r| r.get(0),
                )?)
            })
            .await?;
        if minted_here {
            removed = state.tokens.revoke(subject.clone(), &auth.actor()).await?;
        }
    }
    if removed {
        tracing::info!(db_id = %auth.db()?, subject, actor = %auth.actor(), "audit: member removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such member of this document"))
    }
}

/// `PATCH /members/{subject} {scopes}`: the member's grants on this document become `scopes`
/// (each one the caller must hold, as for `POST /invites`), effective from the person's next
/// request; their open streams that the new grants no longer allow end within a second, and
/// when the grants changed their web sessions are rotated (a new id on their next request).
async fn update_member(
    State(state): State<AppState>,
    auth: Authorized,
    Path((_, subject)): Path<(String, String)>,
    Json(body): Json<MemberBody>,
) -> Result<Json<Value>, ApiError> {
    let grants = body.check()?;
    require_grantable(&auth, &grants)?;
    let db = auth.db()?.to_string();
    let Some((member, changed)) = state
        .owners
        .set_member_scopes(&state.service, &db, &subject, &grants)
        .await?
    else {
        return Err(ApiError::not_found("no such member of this document"));
    };
    if changed {
        state.sessions.rotate_subject(&subject).await?;
        tracing::info!(db_id = %db, subject, actor = %auth.actor(), "audit: member grants changed");
    }
    Ok(Json(json!({"member": member})))
}

/// A link signed with the server's current key, with any expiry (tests make expired links).
#[cfg(test)]
pub(crate) async fn link_for_test(
    state: &AppState,
    id: &str,
    db_id: &str,
    grants: Vec<Grant>,
    expires_unix: i64,
) -> String {
    let (kid, key) = keys::current(state).await.expect("a key");
    let payload = Payload {
        v: 1,
        k: kid,
        i: id.to_owned(),
        d: db_id.to_owned(),
        r: None,
        s: grants,
        e: expires_unix,
        m: None,
    };
    sign(&key, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(kid: i64) -> Payload {
        Payload {
            v: 1,
            k: kid,
            i: "inv1".into(),
            d: "room-1".into(),
            r: Some("lobby".into()),
            s: vec![Grant {
                action: Action::PubSubscribe,
                resource_prefix: Some("chat/".into()),
            }],
            e: 2_000_000_000,
            m: Some(3),
        }
    }

    #[test]
    fn signed_links_verify_only_unchanged_and_under_an_accepted_key() {
        let keys = vec![(2, [2u8; 32]), (1, [1u8; 32])];
        let token = sign(&keys[0].1, &payload(2));
        assert_eq!(verify(&keys, &token), Some(payload(2)));
        // The previous key still verifies what it signed; a retired one does not.
        let old = sign(&[1u8; 32], &payload(1));
        assert!(verify(&keys, &old).is_some());
        assert!(verify(&keys[..1], &old).is_none());
        // Every byte of the token matters.
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            if let Ok(t) = String::from_utf8(bytes)
                && t != token
            {
                assert!(verify(&keys, &t).is_none(), "tampered at {i}");
            }
        }
        // A payload edited and re-encoded without the key.
        let (_, tag) = token.split_once('.').unwrap();
        let mut forged = payload(2);
        forged.s[0].action = Action::QueryWrite;
        let forged = format!("{}.{tag}", B64.encode(serde_json::to_vec(&forged).unwrap()));
        assert!(verify(&keys, &forged).is_none());
        for junk in ["", ".", "a.b", "a", &format!("{token}.x")] {
            assert!(verify(&keys, junk).is_none(), "{junk:?}");
        }
    }
}
