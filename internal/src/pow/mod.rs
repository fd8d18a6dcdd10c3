//! Proof of work: `GET /pow/challenge` hands out a challenge; a client proves work by finding a
//! `nonce` such that SHA-256(`challenge` + `nonce`) starts with `difficulty` zero bits, and sends
//! `Patch-PoW: {challenge}:{nonce}`. Required (when its setting is above 0) on invite redemption
//! (`pow_difficulty`) and on the anonymous legacy stream routes (`pow_streams_difficulty`);
//! missing or wrong is `428 pow_required` with a fresh challenge in `details`.
//!
//! Challenges are stateless: `{payload}.{mac}` in base64url, the payload holding the expiry, the
//! difficulty and 8 random bytes, the MAC a truncated HMAC-SHA256 under a key derived from the
//! install key, so handing one out costs nothing and stores nothing. Only a *solved* challenge
//! is remembered (until it expires), to refuse its reuse: each entry cost its client the work.
//! Short enough (35 characters) that challenge and nonce fit one SHA-256 block.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::auth::{Access, Route};
use crate::error::{ApiError, Json};
use crate::state::AppState;

/// The header carrying a solution.
pub const HEADER: &str = "patch-pow";
const MAC_BYTES: usize = 12;
/// Solved challenges remembered at most (each one took its client the work; beyond this the
/// server is under a flood it should not absorb: solutions are refused until entries expire).
const MAX_USED: usize = 1_000_000;

/// Which setting a route group follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// `POST /invites/redeem`: `pow_difficulty`.
    Invites,
    /// The anonymous legacy stream routes: `pow_streams_difficulty`.
    Streams,
}

pub struct Pow {
    key: [u8; 32],
    ttl_secs: u64,
    /// Solved challenges (their random part) → expiry (unix seconds).
    used: Mutex<HashMap<[u8; 8], i64>>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Pow {
    pub fn new(key: [u8; 32], ttl_secs: u64) -> Self {
        Self {
            key,
            ttl_secs,
            used: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, payload: &[u8]) -> [u8; MAC_BYTES] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    /// A fresh challenge at `difficulty`: `(challenge, expires_at unix seconds)`.
    pub fn challenge(&self, difficulty: u8) -> (String, i64) {
        let expires = now().saturating_add(i64::try_from(self.ttl_secs).unwrap_or(i64::MAX));
        let mut payload = [0u8; 13];
        payload[..4].copy_from_slice(&u32::try_from(expires).unwrap_or(u32::MAX).to_be_bytes());
        payload[4] = difficulty;
        payload[5..].copy_from_slice(&rand::random::<[u8; 8]>());
        let challenge = format!("{}.{}", B64.encode(payload), B64.encode(self.mac(&payload)));
        (challenge, expires)
    }

    /// Checks a `Patch-PoW` value against the group's difficulty and spends the challenge.
    pub fn verify(&self, presented: &str, difficulty: u8) -> Result<(), &'static str> {
        let (challenge, nonce) = presented
            .rsplit_once(':')
            .ok_or("expected challenge:nonce")?;
        if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the nonce must be 1 to 64 visible ASCII characters");
        }
        let (payload, mac) = challenge.split_once('.').ok_or("not a challenge")?;
        let payload: [u8; 13] = B64
            .decode(payload)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or("not a challenge")?;
        let mac = B64.decode(mac).map_err(|_| "not a challenge")?;
        if !crate::auth::token::hashes_equal(&mac, &self.mac(&payload)) {
            return Err("not a challenge from this server");
        }
        let expires = i64::from(u32::from_be_bytes([
            payload[0], payload[1], payload[2], payload[3],
        ]));
        if expires < now() {
            return Err("the challenge has expired");
        }
        // Solved at the difficulty it was issued for, and at least the one required now.
        let needed = payload[4].max(difficulty);
        let digest = Sha256::new()
            .chain_update(challenge.as_bytes())
            .chain_update(nonce.as_bytes())
            .finalize();
        if leading_zero_bits(&digest) < u32::from(needed) {
            return Err("the nonce does not solve the challenge");
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&payload[5..]);
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.len() >= MAX_USED / 2 {
            let now = now();
            used.retain(|_, exp| *exp >= now);
        }
        if used.len() >= MAX_USED {
            return Err("too many solved challenges outstanding; try again shortly");
        }
        if used.insert(id, expires).is_some() {
            return Err("the challenge was already used");
        }
        Ok(())
    }

    /// The route group's requirement: `Ok` when off or solved; `428 pow_required` (with a
    /// fresh challenge) otherwise.
    pub fn require(&self, headers: &HeaderMap, difficulty: u8) -> Result<(), ApiError> {
        if difficulty == 0 {
            return Ok(());
        }
        let why = match headers.get(HEADER).map(|v| v.to_str()) {
            None => "this route needs a proof of work (header Patch-PoW: challenge:nonce)",
            Some(Err(_)) => "Patch-PoW must be ASCII",
            Some(Ok(v)) => match self.verify(v.trim(), difficulty) {
                Ok(()) => return Ok(()),
                Err(why) => why,
            },
        };
        let (challenge, expires) = self.challenge(difficulty);
        Err(
            ApiError::new(StatusCode::PRECONDITION_REQUIRED, "pow_required", why)
                .with_details(challenge_json(&challenge, difficulty, expires)),
        )
    }
}

fn challenge_json(challenge: &str, difficulty: u8, expires: i64) -> Value {
    json!({
        "challenge": challenge,
        "difficulty": difficulty,
        "expires_at": crate::time_fmt::from_unix_ms(expires.saturating_mul(1000)),
    })
}

/// Leading zero bits of `bytes`.
pub fn leading_zero_bits(bytes: &[u8]) -> u32 {
    let mut n = 0;
    for b in bytes {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// The difficulty a group requires now.
pub fn difficulty(state: &AppState, group: Group) -> u8 {
    match group {
        Group::Invites => state.config.pow_difficulty,
        Group::Streams => state.config.pow_streams_difficulty,
    }
}

pub fn routes() -> Vec<Route> {
    // Public: anyone may ask for work to do. (Rate limits still apply through the routes that
    // consume solutions.)
    ["/api/v1/pow/challenge", "/pow/challenge"]
        .into_iter()
        .map(|path| Route::new(Method::GET, path, Access::Public, get(challenge)))
        .collect()
}

/// `GET /pow/challenge[?for=streams]`: a challenge at the invite difficulty (or the streams one).
async fn challenge(
    State(state): State<AppState>,
    crate::error::Query(params): crate::error::Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let mut group = Group::Invites;
    for (k, v) in &params {
        match (k.as_str(), v.as_str()) {
            ("for", "invites") => group = Group::Invites,
            ("for", "streams") => group = Group::Streams,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "the only parameter is for=invites|streams",
                ));
            }
        }
    }
    // Off (0) still hands out a challenge a client can solve instantly, so clients need no
    // special case.
    let difficulty = difficulty(&state, group);
    let (challenge, expires) = state.pow.challenge(difficulty);
    Ok(Json(challenge_json(&challenge, difficulty, expires)))
}

/// The first decimal nonce solving `challenge` at `difficulty` bits (for tests).
#[cfg(test)]
pub(crate) fn solve(challenge: &str, difficulty: u8) -> String {
    (0u64..)
        .map(|n| n.to_string())
        .find(|nonce| {
            let d = Sha256::new()
                .chain_update(challenge.as_bytes())
                .chain_update(nonce.as_bytes())
                .finalize();
            leading_zero_bits(&d) >= u32::from(difficulty)
        })
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_verify_reuse_tamper() {
        let pow = Pow::new([7; 32], 60);
        let (c, _) = pow.challenge(8);
        assert!(c.len() <= 40, "{c} fits one SHA-256 block with a nonce");
        let nonce = solve(&c, 8);
        // A nonce that does not solve it (the first such one).
        let wrong = (0u64..)
            .map(|n| n.to_string())
            .find(|n| {
                let d = Sha256::new()
                    .chain_update(c.as_bytes())
                    .chain_update(n.as_bytes())
                    .finalize();
                leading_zero_bits(&d) < 8
            })
            .unwrap();
        assert_eq!(
            pow.verify(&format!("{c}:{wrong}"), 8),
            Err("the nonce does not solve the challenge")
        );
        assert_eq!(pow.verify(&format!("{c}:{nonce}"), 8), Ok(()));
        assert_eq!(
            pow.verify(&format!("{c}:{nonce}"), 8),
            Err("the challenge was already used")
        );
        // Another server's (key's) challenge, or a flipped character.
        let other = Pow::new([8; 32], 60);
        let (c2, _) = other.challenge(0);
        assert!(pow.verify(&format!("{c2}:1"), 0).is_err());
        let (c3, _) = pow.challenge(0);
        let mut bytes = c3.into_bytes();
        bytes[3] ^= 1;
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(pow.verify(&format!("{tampered}:1"), 0).is_err());
        // A challenge issued easier than required now needs the current difficulty.
        let (easy, _) = pow.challenge(0);
        assert!(
            pow.verify(&format!("{easy}:{}", solve(&easy, 0)), 30)
                .is_err()
        );
        // Expired.
        let stale = Pow::new([7; 32], 0);
        let (c4, _) = stale.challenge(0);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(
            stale.verify(&format!("{c4}:1"), 0),
            Err("the challenge has expired")
        );
        for junk in [
            "",
            ":",
            "a:b",
            "x.y:1",
            &format!("{c}:"),
            &format!("{c}:{}", "9".repeat(65)),
        ] {
            assert!(pow.verify(junk, 0).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn counts_leading_zero_bits() {
        assert_eq!(leading_zero_bits(&[0, 0, 0x80]), 16);
        assert_eq!(leading_zero_bits(&[0, 0x0f]), 12);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
    }
}
