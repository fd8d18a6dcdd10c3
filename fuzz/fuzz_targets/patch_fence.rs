//! `Patch-Fence` headers: never panics; every accepted pair has a valid resource and came from
//! the header's text. Input: header values, one per line.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use patchwork::leases::parse_fences;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append("patch-fence", v);
        }
    }
    if let Ok(fences) = parse_fences(&headers) {
        for (resource, fence) in fences {
            assert!(!resource.is_empty());
            assert_eq!(resource.trim(), resource);
            let text = String::from_utf8_lossy(data);
            assert!(text.contains(&resource), "{resource:?} not in the input");
            assert!(text.contains(&fence.to_string().trim_start_matches('-').to_owned()));
        }
    }
});
