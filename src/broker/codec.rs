//! MQTT 3.1.1 packets and their wire format: just what the embedded broker needs.
//!
//! [`decode`] takes one whole packet off the front of a buffer (or says it needs more bytes);
//! [`encode`] appends one. No I/O here, so every rule is tested on byte vectors.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest packet accepted (remaining length), well above any gateway payload.
pub const MAX_PACKET: usize = 1024 * 1024;

/// A will message from CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub protocol_level: u8,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive_s: u16,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    /// 0 for QoS 0.
    pub pkid: u16,
}

/// One MQTT 3.1.1 control packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Connect(Connect),
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    SubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
}

/// CONNACK return codes.
pub mod connack {
    pub const ACCEPTED: u8 = 0;
    pub const BAD_PROTOCOL: u8 = 1;
    pub const IDENTIFIER_REJECTED: u8 = 2;
}

/// A malformed packet: the connection must be closed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed MQTT packet: {0}")]
pub struct CodecError(pub String);

fn bad(msg: impl Into<String>) -> CodecError {
    CodecError(msg.into())
}

/// Takes one whole packet off the front of `buf`; `Ok(None)` when more bytes are needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
    let Some((len, header_len)) = remaining_length(buf)? else {
        return Ok(None);
    };
    if len > MAX_PACKET {
        return Err(bad(format!("packet of {len} bytes exceeds {MAX_PACKET}")));
    }
    if buf.len() < header_len + len {
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(header_len);
    let mut body = buf.split_to(len).freeze();
    let kind = first >> 4;
    let flags = first & 0x0f;
    let packet = match kind {
        1 => Packet::Connect(decode_connect(&mut body)?),
        2 => {
            need(&body, 2)?;
            Packet::ConnAck {
                session_present: body.get_u8() & 1 == 1,
                code: body.get_u8(),
            }
        }
        3 => {
            let qos = (flags >> 1) & 3;
            if qos > 2 {
                return Err(bad("PUBLISH with QoS 3"));
            }
            let topic = string(&mut body)?;
            let pkid = if qos > 0 { u16_of(&mut body)? } else { 0 };
            Packet::Publish(Publish {
                topic,
                payload: body,
                qos,
                retain: flags & 1 == 1,
                dup: flags & 8 == 8,
                pkid,
            })
        }
        4 => Packet::PubAck(u16_of(&mut body)?),
        5 => Packet::PubRec(u16_of(&mut body)?),
        6 => Packet::PubRel(u16_of(&mut body)?),
        7 => Packet::PubComp(u16_of(&mut body)?),
        8 => {
            let pkid = u16_of(&mut body)?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                let filter = string(&mut body)?;
                need(&body, 1)?;
                filters.push((filter, body.get_u8() & 3));
            }
            if filters.is_empty() {
                return Err(bad("SUBSCRIBE without topic filters"));
            }
            Packet::Subscribe { pkid, filters }
        }
        9 => {
            let pkid = u16_of(&mut body)?;
            Packet::SubAck {
                pkid,
                codes: body.to_vec(),
            }
        }
        10 => {
            let pkid = u16_of(&mut body)?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                filters.push(string(&mut body)?);
            }
            Packet::Unsubscribe { pkid, filters }
        }
        11 => Packet::UnsubAck(u16_of(&mut body)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect,
        _ => return Err(bad(format!("unknown packet type {kind}"))),
    };
    Ok(Some(packet))
}

/// Appends `packet` to `out`.
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    let first: u8 = match packet {
        Packet::Connect(c) => {
            put_str(&mut body, "MQTT");
            body.put_u8(c.protocol_level);
            let mut flags = 0u8;
            if c.clean_session {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            body.put_u8(flags);
            body.put_u16(c.keep_alive_s);
            put_str(&mut body, &c.client_id);
            if let Some(w) = &c.will {
                put_str(&mut body, &w.topic);
                put_bytes(&mut body, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(&mut body, u);
            }
            if let Some(p) = &c.password {
                put_bytes(&mut body, p);
            }
            0x10
        }
        Packet::ConnAck {
            session_present,
            code,
        } => {
            body.put_u8(u8::from(*session_present));
            body.put_u8(*code);
            0x20
        }
        Packet::Publish(p) => {
            put_str(&mut body, &p.topic);
            if p.qos > 0 {
                body.put_u16(p.pkid);
            }
            body.put_slice(&p.payload);
            0x30 | (u8::from(p.dup) << 3) | (p.qos << 1) | u8::from(p.retain)
        }
        Packet::PubAck(id) => {
            body.put_u16(*id);
            0x40
        }
        Packet::PubRec(id) => {
            body.put_u16(*id);
            0x50
        }
        Packet::PubRel(id) => {
            body.put_u16(*id);
            0x62
        }
        Packet::PubComp(id) => {
            body.put_u16(*id);
            0x70
        }
        Packet::Subscribe { pkid, filters } => {
            body.put_u16(*pkid);
            for (f, q) in filters {
                put_str(&mut body, f);
                body.put_u8(*q);
            }
            0x82
        }
        Packet::SubAck { pkid, codes } => {
            body.put_u16(*pkid);
            body.put_slice(codes);
            0x90
        }
        Packet::Unsubscribe { pkid, filters } => {
            body.put_u16(*pkid);
            for f in filters {
                put_str(&mut body, f);
            }
            0xa2
        }
        Packet::UnsubAck(id) => {
            body.put_u16(*id);
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect => 0xe0,
    };
    out.put_u8(first);
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    out.put_slice(&body);
}

/// The remaining length and the fixed header's size, once enough bytes are there.
fn remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((len, 2 + i)));
        }
    }
    Err(bad("remaining length longer than 4 bytes"))
}

fn decode_connect(body: &mut Bytes) -> Result<Connect, CodecError> {
    let protocol = string(body)?;
    need(body, 4)?;
    let protocol_level = body.get_u8();
    if !matches!(
        (protocol.as_str(), protocol_level),
        ("MQTT", 4) | ("MQIsdp", 3)
    ) {
        // Still a CONNECT: the broker answers "unacceptable protocol version".
        return Ok(Connect {
            protocol_level,
            client_id: String::new(),
            clean_session: true,
            keep_alive_s: 0,
            will: None,
            username: None,
            password: None,
        });
    }
    let flags = body.get_u8();
    if flags & 1 != 0 {
        return Err(bad("CONNECT reserved flag set"));
    }
    let keep_alive_s = body.get_u16();
    let client_id = string(body)?;
    let will = if flags & 0x04 != 0 {
        let topic = string(body)?;
        let payload = bytes_of(body)?;
        let qos = (flags >> 3) & 3;
        if qos > 2 {
            return Err(bad("will QoS 3"));
        }
        Some(Will {
            topic,
            payload,
            qos,
            retain: flags & 0x20 != 0,
        })
    } else {
        None
    };
    let username = if flags & 0x80 != 0 {
        Some(string(body)?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(bytes_of(body)?)
    } else {
        None
    };
    Ok(Connect {
        protocol_level,
        client_id,
        clean_session: flags & 0x02 != 0,
        keep_alive_s,
        will,
        username,
        password,
    })
}

fn need(body: &Bytes, n: usize) -> Result<(), CodecError> {
    if body.remaining() < n {
        return Err(bad("packet shorter than its fields"));
    }
    Ok(())
}

fn u16_of(body: &mut Bytes) -> Result<u16, CodecError> {
    need(body, 2)?;
    Ok(body.get_u16())
}

fn bytes_of(body: &mut Bytes) -> Result<Bytes, CodecError> {
    let len = usize::from(u16_of(body)?);
    need(body, len)?;
    Ok(body.split_to(len))
}

fn string(body: &mut Bytes) -> Result<String, CodecError> {
    let raw = bytes_of(body)?;
    String::from_utf8(raw.to_vec()).map_err(|_| bad("string is not UTF-8"))
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Packet {
        let mut buf = BytesMut::from(bytes);
        let packet = decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "left over: {buf:?}");
        packet
    }

    fn encoded(packet: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(packet, &mut out);
        out.to_vec()
    }

    #[test]
    fn decodes_a_connect_with_will_and_credentials() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 34,
            0, 4, b'M', b'Q', b'T', b'T', 4,
            0b1110_1110, // user, password, will retain, will QoS 1, will, clean session
            0, 30,
            0, 2, b'g', b'w',
            0, 3, b'a', b'/', b's',
            0, 3, b'o', b'f', b'f',
            0, 4, b'u', b's', b'e', b'r',
            0, 2, b'p', b'w',
        ];
        let Packet::Connect(c) = decode_all(&bytes) else {
            panic!("not a CONNECT")
        };
        assert_eq!(c.client_id, "gw");
        assert!(c.clean_session);
        assert_eq!(c.keep_alive_s, 30);
        assert_eq!(
            c.will,
            Some(Will {
                topic: "a/s".into(),
                payload: Bytes::from_static(b"off"),
                qos: 1,
                retain: true
            })
        );
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
        // And back.
        assert_eq!(encoded(&Packet::Connect(c)), bytes);
    }

    #[test]
    fn connack_suback_and_pings_have_their_exact_bytes() {
        let connack = Packet::ConnAck {
            session_present: false,
            code: 0,
        };
        assert_eq!(encoded(&connack), [0x20, 2, 0, 0]);
        let suback = Packet::SubAck {
            pkid: 0x0102,
            codes: vec![1, 0x80],
        };
        assert_eq!(encoded(&suback), [0x90, 4, 1, 2, 1, 0x80]);
        assert_eq!(encoded(&Packet::PingResp), [0xd0, 0]);
        assert_eq!(encoded(&Packet::PubAck(7)), [0x40, 2, 0, 7]);
        assert_eq!(encoded(&Packet::UnsubAck(9)), [0xb0, 2, 0, 9]);
        assert_eq!(decode_all(&[0xc0, 0]), Packet::PingReq);
        assert_eq!(decode_all(&[0xe0, 0]), Packet::Disconnect);
    }

    #[test]
    fn publish_qos1_retained_round_trips() {
        let bytes = [0x33, 9, 0, 3, b'a', b'/', b'b', 0, 5, b'h', b'i'];
        let Packet::Publish(p) = decode_all(&bytes) else {
            panic!("not a PUBLISH")
        };
        assert_eq!((p.qos, p.retain, p.dup, p.pkid), (1, true, false, 5));
        assert_eq!(p.topic, "a/b");
        assert_eq!(&p.payload[..], b"hi");
        assert_eq!(encoded(&Packet::Publish(p)), bytes);
        // QoS 0 has no packet id.
        let q0 = decode_all(&[0x30, 5, 0, 1, b't', b'x', b'y']);
        assert!(matches!(
            q0,
            Packet::Publish(Publish {
                pkid: 0,
                qos: 0,
                ..
            })
        ));
    }

    #[test]
    fn subscribe_and_unsubscribe() {
        let bytes = [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 1];
        assert_eq!(
            decode_all(&bytes),
            Packet::Subscribe {
                pkid: 1,
                filters: vec![("a/#".into(), 1)]
            }
        );
        let bytes = [0xa2, 7, 0, 2, 0, 3, b'a', b'/', b'+'];
        assert_eq!(
            decode_all(&bytes),
            Packet::Unsubscribe {
                pkid: 2,
                filters: vec!["a/+".into()]
            }
        );
    }

    #[test]
    fn partial_packets_wait_for_more_bytes() {
        let whole = encoded(&Packet::Publish(Publish {
            topic: "t".into(),
            payload: Bytes::from(vec![7u8; 300]), // two-byte remaining length
            qos: 1,
            retain: false,
            dup: false,
            pkid: 3,
        }));
        assert_eq!(&whole[..3], &[0x32, 0xb1, 0x02]); // 305 = 0x31 + 2 * 128
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            buf.put_u8(*byte);
            let got = decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == whole.len() - 1);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_packets_are_errors() {
        let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0x40, 1, 0][..]); // PUBACK too short
        assert!(decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0x82, 2, 0, 1][..]); // SUBSCRIBE with no filter
        assert!(decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0x36, 5, 0, 1, b't', 0, 1][..]); // QoS 3
        assert!(decode(&mut buf).is_err());
    }
}
