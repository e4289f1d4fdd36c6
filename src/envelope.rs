//! The JSON envelopes the server sends (docs/PROTOCOL.md, "Plain mode"), serialised straight into their final frames.
//!
//! Every envelope has `type` and `timestamp` (RFC 3339, UTC, `Z` suffix, whole seconds as in
//! the original). Text a client sent is carried as a JSON string, so any text comes back
//! byte-identical once the client parses the JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::frame::{Frame, FrameBuf, OpCode};

/// The kinds of server-to-client envelope of plain mode.
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

/// Encodes an envelope as a finished text frame, stamped with the current time.
pub fn encode(kind: Kind, from: Option<&str>, message: &str) -> Frame {
    encode_at(kind, from, message, SystemTime::now())
}

/// Encodes an envelope as a finished text frame, stamped with `at`.
pub fn encode_at(kind: Kind, from: Option<&str>, message: &str, at: SystemTime) -> Frame {
    let mut buf = FrameBuf::with_capacity(message.len() + 96);
    open(&mut buf, kind);
    write_from_message(&mut buf, from, message);
    close(&mut buf, None, Timestamp::from(at));
    buf.finish(OpCode::Text)
}

/// What several envelopes of one message share (its sender, its escaped text, its time),
/// encoded once: a publication to everyone is framed both as plain clients get it and as
/// `wshub.v1` clients (and history) get it, with its offset.
pub struct Body {
    /// `,"from":"…","message":"…"`, already escaped.
    fields: Vec<u8>,
    at: Timestamp,
}

impl Body {
    /// `message` from `from`, stamped with `at`.
    pub fn new(from: Option<&str>, message: &str, at: SystemTime) -> Self {
        let mut fields = Vec::with_capacity(message.len() + 40);
        write_from_message(&mut fields, from, message);
        Self {
            fields,
            at: Timestamp::from(at),
        }
    }

    /// The envelope of `kind`, with `offset` when given, as a finished text frame.
    pub fn frame(&self, kind: Kind, offset: Option<u64>) -> Frame {
        let mut buf = FrameBuf::with_capacity(self.fields.len() + 64);
        open(&mut buf, kind);
        buf.extend_from_slice(&self.fields);
        close(&mut buf, offset, self.at);
        buf.finish(OpCode::Text)
    }
}

// The envelope is assembled field by field in the order plain mode documents (`type`, `from`,
// `message`, `offset`, `timestamp`), exactly as serde_json's compact form of that struct,
// which the tests compare against; the strings are escaped by serde_json itself.

fn open(out: &mut impl Out, kind: Kind) {
    out.put(b"{\"type\":\"");
    out.put(kind.as_str().as_bytes());
    out.put(b"\"");
}

fn write_from_message(out: &mut impl Out, from: Option<&str>, message: &str) {
    if let Some(from) = from {
        out.put(b",\"from\":");
        out.string(from);
    }
    out.put(b",\"message\":");
    out.string(message);
}

fn close(out: &mut impl Out, offset: Option<u64>, at: Timestamp) {
    if let Some(offset) = offset {
        out.put(b",\"offset\":");
        out.put(itoa::Buffer::new().format(offset).as_bytes());
    }
    out.put(b",\"timestamp\":\"");
    out.put(at.as_str().as_bytes());
    out.put(b"\"}");
}

/// A buffer an envelope is written into.
trait Out: std::io::Write {
    fn put(&mut self, bytes: &[u8]);

    /// `s` as a JSON string (quoted and escaped by serde_json).
    fn string(&mut self, s: &str) {
        // Serialising a string into memory cannot fail.
        if serde_json::to_writer(&mut *self, s).is_err() {
            tracing::error!("envelope serialisation failed");
        }
    }
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Out for FrameBuf {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
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

thread_local! {
    /// The last second formatted on this thread: envelopes within one second share it.
    static LAST: std::cell::Cell<(u64, Timestamp)> =
        const { std::cell::Cell::new((0, Timestamp(*b"1970-01-01T00:00:00Z"))) };
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let cached = LAST.try_with(|last| {
            let (at, ts) = last.get();
            if at == secs {
                return ts;
            }
            let ts = Self::format(secs);
            last.set((secs, ts));
            ts
        });
        cached.unwrap_or_else(|_| Self::format(secs))
    }
}

impl Timestamp {
    fn format(secs: u64) -> Self {
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

        /// The hand-assembled envelope is byte for byte what serde_json makes of the struct
        /// plain mode describes, with and without an offset and a sender.
        #[test]
        fn assembled_envelopes_are_serde_json_s(
            s in any::<String>(),
            from in proptest::option::of(any::<String>()),
            offset in proptest::option::of(any::<u64>()),
            secs in 0u64..5_000_000_000,
        ) {
            #[derive(serde::Serialize)]
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
            let at = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let ts = Timestamp::from(at);
            let want = serde_json::to_vec(&Envelope {
                kind: "message",
                from: from.as_deref(),
                message: &s,
                offset,
                timestamp: ts.as_str(),
            }).unwrap();
            let f = Body::new(from.as_deref(), &s, at).frame(Kind::Message, offset);
            prop_assert_eq!(&f[..], &crate::frame::encode(OpCode::Text, &want)[..]);
            if offset.is_none() {
                prop_assert_eq!(&encode_at(Kind::Message, from.as_deref(), &s, at)[..], &f[..]);
            }
        }
    }
}
