//! Header and path rules of the legacy relay (pure).

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

/// Producer headers a consumer receives under their own name (besides `Content-Type`).
const ALLOWED: [&str; 8] = [
    "user-agent",
    "accept",
    "accept-language",
    "accept-encoding",
    "referer",
    "origin",
    "x-forwarded-for",
    "x-real-ip",
];

/// Names a `Patch-H-*` header may not set: hop-by-hop and framing headers (a forwarded
/// `Content-Length` must be the true length, which the relay sets itself).
fn forbidden(name: &str) -> bool {
    matches!(
        name,
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
            | "proxy-connection"
    )
}

/// The headers a consumer (or responder) receives from a producer's (or requester's) request:
/// `Content-Type` (default `text/plain`), the allow-listed headers, and every `Patch-H-X` as `X`
/// (first value only; `Patch-H-*` wins over a same-named plain header). With `keep_prefix`
/// (double-clutch responders) the forwarded headers are named `Patch-H-X` instead.
pub fn forwarded(src: &HeaderMap, keep_prefix: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    let content_type = src
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("text/plain"));
    out.insert(header::CONTENT_TYPE, content_type);
    let put = |out: &mut HeaderMap, name: &str, value: &HeaderValue| {
        let full = if keep_prefix {
            format!("patch-h-{name}")
        } else {
            name.to_owned()
        };
        if let Ok(n) = HeaderName::from_bytes(full.as_bytes()) {
            out.insert(n, value.clone());
        }
    };
    for name in ALLOWED {
        if let Some(v) = src.get(name) {
            put(&mut out, name, v);
        }
    }
    for (name, value) in src {
        let Some(stripped) = name.as_str().strip_prefix("patch-h-") else {
            continue;
        };
        if stripped.is_empty() || forbidden(stripped) {
            continue;
        }
        // First value of a repeated header only.
        if src.get(name) != Some(value) {
            continue;
        }
        put(&mut out, stripped, value);
    }
    out
}

/// `Patch-Status` as a status code; absent, non-numeric or outside 100–599 → 200.
pub fn patch_status(src: &HeaderMap) -> StatusCode {
    src.get("patch-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|n| (100..=599).contains(n))
        .and_then(|n| StatusCode::from_u16(n).ok())
        .unwrap_or(StatusCode::OK)
}

/// Cleans a channel path the way the legacy router did, without the redirect: `.` segments and
/// empty segments from `//` are dropped, `..` removes the previous segment. A trailing slash is
/// kept.
pub fn clean(rest: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in rest.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = parts.join("/");
    if rest.ends_with('/') && !out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarding_rules() {
        let src = headers(&[
            ("user-agent", "curl"),
            ("authorization", "Bearer secret"),
            ("cookie", "a=b"),
            ("x-custom", "no"),
            ("patch-h-x-trace", "t1"),
            ("patch-h-x-trace", "t2"),
            ("patch-h-content-length", "999"),
            ("content-length", "5"),
        ]);
        let out = forwarded(&src, false);
        assert_eq!(out["content-type"], "text/plain");
        assert_eq!(out["user-agent"], "curl");
        assert_eq!(out["x-trace"], "t1");
        assert!(out.get("authorization").is_none());
        assert!(out.get("cookie").is_none());
        assert!(out.get("x-custom").is_none());
        assert!(
            out.get("content-length").is_none(),
            "the relay sets the true length itself"
        );
        let kept = forwarded(&src, true);
        assert_eq!(kept["patch-h-x-trace"], "t1");
        assert_eq!(kept["patch-h-user-agent"], "curl");
        let typed = forwarded(
            &headers(&[("content-type", "a/b"), ("patch-h-content-type", "c/d")]),
            false,
        );
        assert_eq!(typed["content-type"], "c/d");
    }

    #[test]
    fn statuses() {
        assert_eq!(
            patch_status(&headers(&[("patch-status", "418")])),
            StatusCode::IM_A_TEAPOT
        );
        assert_eq!(
            patch_status(&headers(&[("patch-status", "abc")])),
            StatusCode::OK
        );
        assert_eq!(
            patch_status(&headers(&[("patch-status", "700")])),
            StatusCode::OK
        );
        assert_eq!(
            patch_status(&headers(&[("patch-status", "99")])),
            StatusCode::OK
        );
        assert_eq!(patch_status(&HeaderMap::new()), StatusCode::OK);
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean("./x"), "x");
        assert_eq!(clean("a//b"), "a/b");
        assert_eq!(clean("a/../b"), "b");
        assert_eq!(clean("../../x"), "x");
        assert_eq!(clean(""), "");
        assert_eq!(clean("queue/x/"), "queue/x/");
        assert_eq!(clean("req/"), "req/");
    }
}
