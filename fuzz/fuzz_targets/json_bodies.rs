//! The JSON bodies of every route (and the WebSocket's publish frame): the first byte picks the
//! route (`patchwork::fuzzing::BODIES`, modulo its length), the rest is the body. It goes through
//! the route's extractor and the checks its handler makes before acting (statements are
//! classified and bound on an in-memory document, not run): never a panic, and a refusal is a
//! clean `4xx` with a code and a message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    patchwork::fuzzing::check(selector, body);
});
