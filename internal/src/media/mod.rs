//! Media room tokens: `POST /api/v1/db/{db_id}/media/token {room, identity?, name?, ttl_secs?}`
//! mints a LiveKit access token (a JWT, HS256 under `livekit_api_secret`, `iss` =
//! `livekit_api_key`) for a voice/video room that belongs to a document's presence room.
//!
//! - **Who may.** `presence.write` on the room (the room is the scope's resource, as on the
//!   presence routes): whoever may announce themselves present in a room may talk in it. No new
//!   action: a media room is the audio side of a presence room.
//! - **Who they are.** `sub` is the caller as SQL sees it (`patchwork_caller()`: the token's id,
//!   or a person's OIDC subject) and `name` its display name (`patchwork_caller_name()`), so a
//!   participant cannot pose as someone else. Only a caller holding `admin.token` on the document
//!   (its owner, a server minting for others) may set `identity` and `name`.
//! - **Which LiveKit room.** `{db_id}/{room}`: one LiveKit server serves every document, and
//!   two documents' rooms of the same name must not meet.
//! - **What they may publish.** `canPublishSources` is `["microphone"]`, plus `"camera"` when
//!   the document allows video in that room: a table or view named `media_rooms` with columns
//!   `room` and `allow_video`, whose row for the room has a true `allow_video`. No such table, no
//!   row, or no document file: microphone only. (The document decides, not the caller; a
//!   document protects that table with its own triggers or makes it a view over its settings.)
//!
//! Unconfigured (`livekit_api_key` or `livekit_api_secret` unset): `503 media_not_configured`.

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::auth::{Access, Action, Authorized, ResourceFrom, Route};
use crate::error::{ApiError, Json};
use crate::query::caller::Caller;
use crate::state::AppState;

/// Token lifetime when the request names none.
pub const DEFAULT_TTL_SECS: u64 = 3_600;
/// Longest lifetime a caller may ask for.
pub const MAX_TTL_SECS: u64 = 86_400;
/// Longest `identity` / `name`, in characters.
pub const MAX_NAME_CHARS: usize = 128;

pub fn routes() -> Vec<Route> {
    vec![Route::new(
        Method::POST,
        "/api/v1/db/{db_id}/media/token",
        Access::Db {
            actions: &[Action::PresenceWrite],
            resource: ResourceFrom::Handler,
        },
        post(token),
    )]
}

/// The request body of `POST /media/token`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The presence room (1–256 bytes, no control characters, `+` or `#`).
    #[schema(min_length = 1, max_length = 256)]
    pub room: String,
    /// The participant identity (`sub`); only with `admin.token` on the document. Default: the
    /// caller (`patchwork_caller()`).
    #[schema(min_length = 1, max_length = 128)]
    pub identity: Option<String>,
    /// The display name; only with `admin.token`. Default: `patchwork_caller_name()`.
    #[schema(min_length = 1, max_length = 128)]
    pub name: Option<String>,
    /// Token lifetime, 60–86400 seconds (default 3600).
    #[schema(minimum = 60, maximum = 86400)]
    pub ttl_secs: Option<u64>,
}

impl TokenRequest {
    /// The checks made before anything else: room, lifetime, names.
    pub fn check(&self) -> Result<u64, ApiError> {
        crate::presence::validate_room(&self.room)?;
        let ttl = self.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
        if !(60..=MAX_TTL_SECS).contains(&ttl) {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("ttl_secs is 60 to {MAX_TTL_SECS}"),
            ));
        }
        if let Some(identity) = &self.identity {
            check_name("identity", identity)?;
        }
        if let Some(name) = &self.name {
            check_name("name", name)?;
        }
        Ok(ttl)
    }
}

/// LiveKit's video grant, as it appears in the token's `video` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    pub room_join: bool,
    pub room: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_publish_data: bool,
    /// `["microphone"]`, plus `"camera"` when the document allows video in the room.
    pub can_publish_sources: Vec<String>,
}

/// The JWT's claims, in LiveKit's layout.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    name: &'a str,
    nbf: i64,
    exp: i64,
    video: &'a VideoGrant,
}

/// The answer of `POST /media/token`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// The LiveKit access token (JWT, HS256).
    pub token: String,
    pub identity: String,
    pub name: String,
    /// The LiveKit room: `{db_id}/{room}`.
    pub room: String,
    /// RFC 3339, the token's `exp`.
    pub expires_at: String,
    /// The token's `video` claim.
    pub grants: VideoGrant,
}

/// A JWT (HS256) over `claims`, signed with `secret`.
pub fn sign_jwt(claims: &impl Serialize, secret: &[u8]) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(signing_input.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

fn check_name(field: &str, value: &str) -> Result<(), ApiError> {
    let n = value.chars().count();
    if n == 0 || n > MAX_NAME_CHARS || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("{field} is 1 to {MAX_NAME_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

/// Whether the document allows video in `room` (its `media_rooms` table or view says so).
async fn video_allowed(
    state: &AppState,
    db_id: &crate::registry::DbId,
    room: &str,
) -> Result<bool, ApiError> {
    // Never create a document for this: no file, no policy.
    let path = state.registry.documents_dir().join(db_id.file_name());
    if !path.exists() {
        return Ok(false);
    }
    let doc = state.registry.get(db_id).await?;
    let room = room.to_owned();
    let allowed = doc
        .read(move |c| {
            // No table (or columns): no video. Any other failure is the document's own doing.
            let Ok(mut stmt) = c.prepare(
                "SELECT allow_video FROM media_rooms WHERE room = ?1 \
                 ORDER BY allow_video DESC LIMIT 1",
            ) else {
                return Ok(false);
            };
            let v: Option<rusqlite::types::Value> = stmt
                .query_row([&room], |r| r.get(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })
                .unwrap_or(None);
            Ok(matches!(
                v,
                Some(rusqlite::types::Value::Integer(i)) if i != 0
            ) || matches!(v, Some(rusqlite::types::Value::Real(f)) if f != 0.0))
        })
        .await?;
    Ok(allowed)
}

async fn token(
    State(state): State<AppState>,
    auth: Authorized,
    Json(body): Json<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let ttl = body.check()?;
    auth.resource(Action::PresenceWrite, &body.room)?;
    let (Some(key), Some(secret)) = (
        state.config.livekit_api_key.as_deref(),
        state.config.livekit_api_secret.as_ref(),
    ) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "media_not_configured",
            "media rooms are not configured on this server (livekit_api_key, livekit_api_secret)",
        ));
    };
    let caller = Caller::of(&auth).ok_or_else(|| ApiError::unauthorized("no caller"))?;
    if body.identity.is_some() || body.name.is_some() {
        auth.require(Action::AdminToken).map_err(|_| {
            ApiError::forbidden(
                "only a holder of admin.token on the document may set identity or name",
            )
        })?;
    }
    let identity = body.identity.unwrap_or(caller.id);
    let name = body.name.unwrap_or(caller.name);
    check_name("identity", &identity)?;
    check_name("name", &name)?;

    let db_id = auth.db()?.clone();
    let mut sources = vec!["microphone".to_owned()];
    if video_allowed(&state, &db_id, &body.room).await? {
        sources.push("camera".to_owned());
    }
    let grants = VideoGrant {
        room_join: true,
        room: format!("{}/{}", db_id.as_str(), body.room),
        can_publish: true,
        can_subscribe: true,
        can_publish_data: true,
        can_publish_sources: sources,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let exp = now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
    let jwt = sign_jwt(
        &Claims {
            iss: key,
            sub: &identity,
            name: &name,
            nbf: now,
            exp,
            video: &grants,
        },
        secret.expose().as_bytes(),
    );
    Ok(Json(TokenResponse {
        token: jwt,
        identity,
        name,
        room: grants.room.clone(),
        expires_at: crate::time_fmt::from_unix_ms(exp.saturating_mul(1000)),
        grants,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_matches_a_known_hs256_vector() {
        // RFC 7515-style check: header.payload signed with HMAC-SHA256, base64url unpadded.
        let jwt = sign_jwt(&serde_json::json!({"sub": "x"}), b"secret");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"secret").unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert_eq!(
            B64.decode(parts[2]).unwrap(),
            mac.finalize().into_bytes().to_vec()
        );
    }
}
