//! Framing on top of rumqttd's protocol codec (`rumqttd::protocol::{v4, v5}`): which protocol a
//! connection speaks (from its CONNECT), one packet at a time out of the read buffer, and the
//! few things the codec's public API leaves out (a PUBLISH's QoS and packet id are crate-private
//! fields there, so they are read from the frame and written through `Publish::deserialize`).
//!
//! Nothing a client sends may take the server down: packet types only a server sends are
//! refused before decoding (rumqttd's v5 decoder treats some as unreachable), and the decoder
//! runs under `catch_unwind` so a panic on a malformed packet is a protocol error for that one
//! connection.

use bytes::{BufMut, BytesMut};
use rumqttd::protocol::v4::{self, V4};
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{Packet, Protocol, Publish, PublishProperties, QoS};

/// MQTT 3.1.1 (protocol level 4) or 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("the packet is larger than {0} bytes")]
    TooLarge(usize),
    #[error("unsupported protocol (level {0}); MQTT 3.1.1 and 5 are spoken here")]
    UnsupportedProtocol(u8),
    #[error("the first packet must be CONNECT")]
    NotConnect,
    #[error("a client may not send packet type {0}")]
    ForbiddenType(u8),
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// A PUBLISH's delivery fields, read from its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PubMeta {
    pub qos: u8,
    pub pkid: u16,
    pub dup: bool,
}

/// One decoded packet (and, for a PUBLISH, its QoS and packet id).
#[derive(Debug)]
pub struct Incoming {
    pub packet: Packet,
    pub publish: Option<PubMeta>,
}

/// Which protocol the CONNECT at the front of `buf` speaks; `Ok(None)` until enough has arrived.
pub fn detect(buf: &[u8]) -> Result<Option<Version>, CodecError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(CodecError::NotConnect);
    }
    // Fixed header: the byte above and a 1–4 byte remaining length.
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else {
            return Ok(None);
        };
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(CodecError::Malformed("remaining length".into()));
        }
    }
    // Variable header: protocol name (length-prefixed), then the protocol level.
    let Some(name_len) = buf.get(at..at + 2) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([name_len[0], name_len[1]]));
    let Some(name) = buf.get(at + 2..at + 2 + name_len) else {
        return Ok(None);
    };
    let Some(&level) = buf.get(at + 2 + name_len) else {
        return Ok(None);
    };
    match (name, level) {
        (b"MQTT", 4) => Ok(Some(Version::V4)),
        (b"MQTT", 5) => Ok(Some(Version::V5)),
        _ => Err(CodecError::UnsupportedProtocol(level)),
    }
}

pub struct Codec {
    pub version: Version,
    max_packet: usize,
}

impl Codec {
    pub fn new(version: Version, max_packet: usize) -> Self {
        Self {
            version,
            max_packet,
        }
    }

    /// Takes the next complete packet off the front of `buf`; `Ok(None)` when more bytes are
    /// needed. A packet over the size limit is refused as soon as its length is known.
    pub fn read(&self, buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        // Both versions frame alike: one type byte and a variable-length remaining length.
        let header = match v4::check(buf.iter(), self.max_packet) {
            Ok(h) => h,
            Err(rumqttd::protocol::Error::InsufficientBytes(_)) => return Ok(None),
            Err(rumqttd::protocol::Error::PayloadSizeLimitExceeded(n)) => {
                let _ = n;
                return Err(CodecError::TooLarge(self.max_packet));
            }
            Err(e) => return Err(CodecError::Malformed(e.to_string())),
        };
        let kind = header.byte1 >> 4;
        // CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ,
        // DISCONNECT (and AUTH, which is not supported): what a client may send.
        if !matches!(kind, 1 | 3..=8 | 10 | 12 | 14) {
            return Err(CodecError::ForbiddenType(kind));
        }
        let publish = (kind == 3)
            .then(|| publish_meta(&buf[..header.frame_length()], header.fixed_header_len))
            .transpose()?;
        let version = self.version;
        let max = self.max_packet;
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match version {
            Version::V4 => V4.read_mut(buf, max),
            Version::V5 => V5.read_mut(buf, max),
        }));
        match decoded {
            Ok(Ok(packet)) => Ok(Some(Incoming { packet, publish })),
            Ok(Err(e)) => Err(CodecError::Malformed(e.to_string())),
            Err(_) => Err(CodecError::Malformed("undecodable packet".into())),
        }
    }

    /// Appends `packet` to `out` (properties are dropped for MQTT 3.1.1).
    pub fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<(), CodecError> {
        let packet = match self.version {
            Version::V5 => packet,
            Version::V4 => without_properties(packet),
        };
        let version = self.version;
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match version {
            Version::V4 => V4.write(packet, out),
            Version::V5 => V5.write(packet, out),
        }));
        match written {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(CodecError::Malformed(e.to_string())),
            Err(_) => Err(CodecError::Malformed("unencodable packet".into())),
        }
    }

    /// Appends a PUBLISH (QoS 0 or 1).
    pub fn publish(&self, out: &mut BytesMut, p: &Outgoing<'_>) -> Result<(), CodecError> {
        let publish = publish_packet(p.topic, p.payload, p.qos, p.pkid, p.retain);
        let properties = (self.version == Version::V5).then(|| PublishProperties {
            content_type: Some(p.content_type.to_owned()),
            ..PublishProperties::default()
        });
        self.write(Packet::Publish(publish, properties), out)
    }
}

/// A PUBLISH to send.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// 0 or 1.
    pub qos: u8,
    /// The packet id (QoS 1).
    pub pkid: u16,
    pub retain: bool,
    /// Sent as the MQTT 5 content type property.
    pub content_type: &'a str,
}

/// A PUBLISH with the given QoS and packet id, built through the codec's own serialized form
/// (its QoS and packet id fields are not public): type byte, packet id, topic, payload.
pub fn publish_packet(topic: &str, payload: &[u8], qos: u8, pkid: u16, retain: bool) -> Publish {
    let mut raw = BytesMut::with_capacity(5 + topic.len() + payload.len());
    raw.put_u8(0b0011_0000 | u8::from(retain) | ((qos & 0b11) << 1));
    raw.put_u16(pkid);
    raw.put_u16(topic.len() as u16);
    raw.put_slice(topic.as_bytes());
    raw.put_slice(payload);
    Publish::deserialize(raw.freeze())
}

/// The QoS, packet id and DUP flag of the PUBLISH frame `frame` (fixed header `header_len`
/// bytes long).
fn publish_meta(frame: &[u8], header_len: usize) -> Result<PubMeta, CodecError> {
    let byte1 = frame[0];
    let qos = (byte1 & 0b0110) >> 1;
    if qos == 3 {
        return Err(CodecError::Malformed("QoS 3".into()));
    }
    let dup = byte1 & 0b1000 != 0;
    let pkid = if qos == 0 {
        0
    } else {
        let topic_len = frame
            .get(header_len..header_len + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(|| CodecError::Malformed("short PUBLISH".into()))?;
        let at = header_len + 2 + topic_len;
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| CodecError::Malformed("short PUBLISH".into()))?
    };
    Ok(PubMeta { qos, pkid, dup })
}

fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::ConnAck(a, _) => Packet::ConnAck(a, None),
        Packet::Publish(a, _) => Packet::Publish(a, None),
        Packet::PubAck(a, _) => Packet::PubAck(a, None),
        Packet::SubAck(a, _) => Packet::SubAck(a, None),
        Packet::PubRec(a, _) => Packet::PubRec(a, None),
        Packet::PubRel(a, _) => Packet::PubRel(a, None),
        Packet::PubComp(a, _) => Packet::PubComp(a, None),
        Packet::UnsubAck(a, _) => Packet::UnsubAck(a, None),
        Packet::Disconnect(a, _) => Packet::Disconnect(a, None),
        other => other,
    }
}

/// QoS as a number.
pub fn qos_num(q: QoS) -> u8 {
    q as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(level: u8, name: &[u8]) -> Vec<u8> {
        let mut v = vec![0x10, 0];
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name);
        v.push(level);
        v.extend_from_slice(&[0x02, 0, 60, 0, 0]);
        v[1] = (v.len() - 2) as u8;
        v
    }

    #[test]
    fn detects_the_protocol_from_connect() {
        assert_eq!(detect(&connect(4, b"MQTT")), Ok(Some(Version::V4)));
        assert_eq!(detect(&connect(5, b"MQTT")), Ok(Some(Version::V5)));
        assert_eq!(
            detect(&connect(3, b"MQIsdp")),
            Err(CodecError::UnsupportedProtocol(3))
        );
        assert_eq!(detect(&[0x30, 0]), Err(CodecError::NotConnect));
        let whole = connect(4, b"MQTT");
        for n in 0..9 {
            assert_eq!(detect(&whole[..n]), Ok(None), "prefix of {n} bytes");
        }
    }

    #[test]
    fn publish_round_trips_with_qos_and_packet_id() {
        for version in [Version::V4, Version::V5] {
            let codec = Codec::new(version, 4096);
            let mut out = BytesMut::new();
            let p = Outgoing {
                topic: "db/a/t",
                payload: b"hello",
                qos: 1,
                pkid: 77,
                retain: true,
                content_type: "text/plain",
            };
            codec.publish(&mut out, &p).unwrap();
            let got = codec.read(&mut out).unwrap().unwrap();
            assert_eq!(
                got.publish,
                Some(PubMeta {
                    qos: 1,
                    pkid: 77,
                    dup: false
                })
            );
            let Packet::Publish(p, props) = got.packet else {
                panic!("not a publish")
            };
            assert_eq!(
                (&p.topic[..], &p.payload[..], p.retain),
                (&b"db/a/t"[..], &b"hello"[..], true)
            );
            if version == Version::V5 {
                assert_eq!(props.unwrap().content_type.as_deref(), Some("text/plain"));
            }
            assert!(out.is_empty());
        }
    }

    #[test]
    fn refuses_server_only_packets_and_oversized_ones() {
        let codec = Codec::new(Version::V5, 16);
        // CONNACK with a body: rumqttd's v5 decoder does not expect one from a client.
        let mut buf = BytesMut::from(&[0x20u8, 3, 0, 0, 0][..]);
        assert_eq!(
            codec.read(&mut buf).unwrap_err(),
            CodecError::ForbiddenType(2)
        );
        let mut buf = BytesMut::from(&[0x30u8, 100][..]);
        assert_eq!(codec.read(&mut buf).unwrap_err(), CodecError::TooLarge(16));
        let mut partial = BytesMut::from(&[0x30u8, 10, 0][..]);
        assert!(codec.read(&mut partial).unwrap().is_none());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap sweep; the fuzz target `mqtt_packets` goes further.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut bytes = Vec::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            for i in 0..len {
                bytes.push((seed >> (i % 8 * 8)) as u8 ^ i as u8);
            }
            if let Some(b) = bytes.first_mut() {
                *b = (*b & 0x0f)
                    | [0x10, 0x30, 0x32, 0x40, 0x62, 0x82, 0xa2, 0xe0][(seed % 8) as usize];
            }
            for version in [Version::V4, Version::V5] {
                let codec = Codec::new(version, 1024);
                let mut buf = BytesMut::from(&bytes[..]);
                while let Ok(Some(_)) = codec.read(&mut buf) {}
            }
        }
    }
}
