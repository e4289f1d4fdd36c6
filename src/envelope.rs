//! The JSON envelopes the server sends (SPEC 1.2), serialised straight into their final frames.
//!
//! Every envelope has `type` and `timestamp` (RFC 3339, UTC, `Z` suffix, whole seconds as in
//! the original). Text a client sent is carried as a JSON string, so any text comes back
//! byte-identical once the client parses the JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::frame::{Frame, FrameBuf, OpCode};

/// The kinds of server-to-client envelope of SPEC 1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A client joined or left (`"system"`).
    System,
    /// The sender's own text, back to it (`"echo"`).
    Echo,
    /// A client's text, to everyone (`"message"`).
    Message,
    /// A push from the REST API (`"server-broadcast"`).
    ServerBroadcast,
}

impl Kind {
    /// The value of the `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::System => "system",
            Kind::Echo => "echo",
            Kind::Message => "message",
            Kind::ServerBroadcast => "server-broadcast",
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    timestamp: &'a str,
}

/// Encodes an envelope as a finished text frame, stamped with the current time.
pub fn encode(kind: Kind, from: Option<&str>, message: &str) -> Frame {
    encode_at(kind, from, message, SystemTime::now())
}

/// Encodes an envelope as a finished text frame, stamped with `at`.
pub fn encode_at(kind: Kind, from: Option<&str>, message: &str, at: SystemTime) -> Frame {
    encode_full(kind, from, message, None, at)
}

/// Encodes an envelope carrying its `offset` in the all-clients stream (the form `wshub.v1`
/// clients get; plain clients get exactly SPEC 1.2, without it).
pub fn encode_with_offset(kind: Kind, from: Option<&str>, message: &str, offset: u64) -> Frame {
    encode_full(kind, from, message, Some(offset), SystemTime::now())
}

fn encode_full(
    kind: Kind,
    from: Option<&str>,
    message: &str,
    offset: Option<u64>,
    at: SystemTime,
) -> Frame {
    let ts = Timestamp::from(at);
    let env = Envelope {
        kind: kind.as_str(),
        from,
        message,
        offset,
        timestamp: ts.as_str(),
    };
    // Room for the fixed fields plus the message; escaping may grow it, Vec handles that.
    let mut buf = FrameBuf::with_capacity(message.len() + 96);
    // Serialising plain strings into memory cannot fail.
    if serde_json::to_writer(&mut buf, &env).is_err() {
        tracing::error!("envelope serialisation failed");
    }
    buf.finish(OpCode::Text)
}

/// The text of the `system` message announcing that a client joined.
pub fn joined(short_id: &str) -> String {
    format!("Client {short_id} joined.")
}

/// The text of the `system` message announcing that a client left.
pub fn left(short_id: &str) -> String {
    format!("Client {short_id} left.")
}

/// An RFC 3339 UTC timestamp with whole seconds, e.g. `2026-06-13T06:00:00Z`, formatted
/// without allocating.
#[derive(Clone, Copy)]
pub struct Timestamp([u8; 20]);

impl Timestamp {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00Z")
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00Z";
        let put = |out: &mut [u8; 20], at: usize, v: u64, width: usize| {
            let mut v = v;
            for i in (0..width).rev() {
                out[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(&mut out, 0, y as u64, 4);
        put(&mut out, 5, m, 2);
        put(&mut out, 8, d, 2);
        put(&mut out, 11, rem / 3600, 2);
        put(&mut out, 14, rem % 3600 / 60, 2);
        put(&mut out, 17, rem % 60, 2);
        Timestamp(out)
    }
}

/// Howard Hinnant's days-to-civil algorithm: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn payload(f: &Frame) -> serde_json::Value {
        let hlen = match f[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        serde_json::from_slice(&f[hlen..]).unwrap()
    }

    #[test]
    fn timestamps_match_known_dates() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_781_330_400, "2026-06-13T06:00:00Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
        ];
        for (secs, want) in cases {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(Timestamp::from(t).as_str(), want, "{secs}");
        }
    }

    #[test]
    fn envelopes_have_the_original_shape() {
        let at = UNIX_EPOCH + Duration::from_secs(1_781_330_400);
        let f = encode_at(Kind::Echo, Some("a1b2c3d4"), "Hello!", at);
        let text = std::str::from_utf8(&f[2..]).unwrap();
        assert_eq!(
            text,
            r#"{"type":"echo","from":"a1b2c3d4","message":"Hello!","timestamp":"2026-06-13T06:00:00Z"}"#
        );
        let v = payload(&encode_at(
            Kind::System,
            None,
            "Client a1b2c3d4 joined.",
            at,
        ));
        assert_eq!(v["type"], "system");
        assert!(v.get("from").is_none());
    }

    #[test]
    fn any_text_survives_the_round_trip() {
        let nasty = "quote\" backslash\\ newline\n tab\t nul\u{0} emoji 😀 </script> \u{2028}";
        let big = "x".repeat(64 * 1024);
        for s in [nasty, big.as_str(), ""] {
            let v = payload(&encode(Kind::Message, Some("abcd1234"), s));
            assert_eq!(v["message"].as_str().unwrap(), s);
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text a client sends comes back byte-identical inside `message`.
        #[test]
        fn any_string_survives_the_envelope(s in any::<String>(), from in "[0-9a-f]{8}") {
            let f = encode(Kind::Message, Some(&from), &s);
            let hlen = match f[1] { 126 => 4, 127 => 10, _ => 2 };
            let v: serde_json::Value = serde_json::from_slice(&f[hlen..]).unwrap();
            prop_assert_eq!(v["message"].as_str().unwrap(), s.as_str());
            prop_assert_eq!(v["from"].as_str().unwrap(), from.as_str());
            // The header declares exactly the payload that follows.
            let declared = match hlen {
                2 => usize::from(f[1]),
                4 => usize::from(u16::from_be_bytes([f[2], f[3]])),
                _ => u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
            };
            prop_assert_eq!(declared, f.len() - hlen);
            prop_assert_eq!(f[0], 0x81);
        }
    }
}
