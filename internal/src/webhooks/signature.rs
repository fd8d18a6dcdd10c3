//! Webhook signature schemes (pure): GitHub, Stripe (with timestamp tolerance), generic
//! HMAC-SHA256. Comparisons are constant time.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Stripe's default tolerance between its timestamp and our clock.
pub const STRIPE_TOLERANCE_SECS: i64 = 300;

fn mac(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn hex_eq(expected: &[u8], given_hex: &str) -> bool {
    hex::decode(given_hex.trim())
        .is_ok_and(|given| crate::auth::token::hashes_equal(expected, &given))
}

/// `X-Hub-Signature-256: sha256=<hex>`.
pub fn github(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(hex) = sig.strip_prefix("sha256=") else {
        return false;
    };
    hex_eq(&mac(secret, &[body]), hex)
}

/// `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]` over `"{t}.{body}"`, within the tolerance.
pub fn stripe(secret: &[u8], headers: &HeaderMap, body: &[u8], now_unix: i64) -> bool {
    let Some(sig) = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in sig.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => candidates.push(v.to_owned()),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if (now_unix - t).abs() > STRIPE_TOLERANCE_SECS {
        return false;
    }
    let expected = mac(secret, &[t.to_string().as_bytes(), b".", body]);
    candidates.iter().any(|c| hex_eq(&expected, c))
}

/// Generic: `<header>: <hex>` or `sha256=<hex>` of HMAC-SHA256 over the body.
pub fn hmac_sha256(secret: &[u8], header: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers.get(header).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    hex_eq(
        &mac(secret, &[body]),
        sig.strip_prefix("sha256=").unwrap_or(sig),
    )
}

/// Test helper and documentation: the signature a sender would compute.
pub fn sign(secret: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(mac(secret, parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(name: &'static str, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn github_signatures() {
        let sig = format!("sha256={}", sign(b"s3cret", &[b"body"]));
        assert!(github(b"s3cret", &h("x-hub-signature-256", &sig), b"body"));
        assert!(!github(b"other", &h("x-hub-signature-256", &sig), b"body"));
        assert!(!github(
            b"s3cret",
            &h("x-hub-signature-256", &sig),
            b"tampered"
        ));
        assert!(!github(b"s3cret", &HeaderMap::new(), b"body"));
        assert!(!github(
            b"s3cret",
            &h("x-hub-signature-256", "sha1=00"),
            b"body"
        ));
    }

    #[test]
    fn stripe_signatures_and_tolerance() {
        let t = 1_700_000_000i64;
        let v1 = sign(b"whsec", &[t.to_string().as_bytes(), b".", b"{}"]);
        let header = h("stripe-signature", &format!("t={t},v1=deadbeef,v1={v1}"));
        assert!(stripe(b"whsec", &header, b"{}", t + 10));
        assert!(!stripe(
            b"whsec",
            &header,
            b"{}",
            t + STRIPE_TOLERANCE_SECS + 1
        ));
        assert!(!stripe(b"whsec", &header, b"{x}", t));
        assert!(!stripe(b"whsec", &h("stripe-signature", "v1=00"), b"{}", t));
    }

    #[test]
    fn generic_signatures() {
        let sig = sign(b"k", &[b"payload"]);
        assert!(hmac_sha256(
            b"k",
            "x-signature",
            &h("x-signature", &sig),
            b"payload"
        ));
        assert!(hmac_sha256(
            b"k",
            "x-signature",
            &h("x-signature", &format!("sha256={sig}")),
            b"payload"
        ));
        assert!(!hmac_sha256(
            b"k",
            "x-signature",
            &h("x-signature", "zz"),
            b"payload"
        ));
    }
}
