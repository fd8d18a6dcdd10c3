//! The MQTT adapter's framing over rumqttd's codec: any bytes a client sends, as a CONNECT
//! prefix or as packets after one, in MQTT 3.1.1 and 5, never panic (nor abort) and every
//! decoded packet consumes input. Input: arbitrary bytes; the first byte picks the version and
//! the packet size limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use patchwork::mqtt::codec::{Codec, Version, detect};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let _ = detect(rest);
    let version = if first & 1 == 0 { Version::V4 } else { Version::V5 };
    let max = 64 + usize::from(first) * 64;
    let codec = Codec::new(version, max);
    let mut buf = BytesMut::from(rest);
    for _ in 0..1_000 {
        let before = buf.len();
        match codec.read(&mut buf) {
            Ok(Some(_)) => assert!(buf.len() < before, "a packet consumed nothing"),
            Ok(None) | Err(_) => break,
        }
    }
});
