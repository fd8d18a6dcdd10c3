//! Legacy stream paths and `Patch-*` headers: `clean` never panics, leaves no `.`/`..`/empty
//! segments and is idempotent; `forwarded` and `patch_status` take any header set. Input: the
//! path, then header lines `name: value`.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use patchwork::streams::headers::{clean, forwarded, patch_status};

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let path = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let cleaned = clean(&path);
    assert_eq!(clean(&cleaned), cleaned, "clean is not idempotent for {path:?}");
    let inner = cleaned.strip_suffix('/').unwrap_or(&cleaned);
    if !inner.is_empty() {
        for seg in inner.split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "{path:?} cleaned to {cleaned:?}"
            );
        }
    }
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let status = patch_status(&headers);
    assert!((100..=599).contains(&status.as_u16()));
    for keep_prefix in [false, true] {
        let out = forwarded(&headers, keep_prefix);
        assert!(out.contains_key(http::header::CONTENT_TYPE));
        // Hop-by-hop and framing headers are never forwarded.
        for name in ["connection", "transfer-encoding", "content-length", "host", "upgrade"] {
            assert!(!out.contains_key(name), "{name} was forwarded");
        }
    }
});
