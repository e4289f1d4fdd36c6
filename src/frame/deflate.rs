//! `permessage-deflate` (RFC 7692): what a connection agrees to, a server frame compressed once
//! for every recipient, a client message inflated within the size limit.
//!
//! The parameters are chosen so that nothing about compression belongs to one connection:
//!
//! - `server_no_context_takeover`: every server message is compressed on its own, so the
//!   compressed bytes of a publication do not depend on what a recipient was sent before. A
//!   broadcast is compressed once and the same frame goes to every recipient that negotiated
//!   compression, as the plain frame goes to the others.
//! - `client_no_context_takeover`: every client message is inflated on its own, so a
//!   connection keeps no inflate window between messages.
//!
//! The DEFLATE state itself (a compressor per level and window size, one inflater) is kept per
//! thread and reset before each message: an idle connection with compression negotiated costs
//! nothing more than one without. The codec is `flate2` on the `zlib-rs` backend: zlib's
//! format and speed in safe-by-default Rust, and window sizes below 15 bits, which the
//! pure-Rust `miniz_oxide` backend cannot do (a client may ask for `server_max_window_bits`).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{write_header, Frame, OpCode, MAX_HEADER};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const NAME: &str = "permessage-deflate";

/// The four bytes a sync flush ends with, removed from each compressed message and appended
/// again before inflating (RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The window (in bits) of the frames shared between recipients: the largest, which every
/// client that did not ask for less can inflate.
pub const SHARED_WINDOW: u8 = 15;

/// How the server compresses what it sends (`None` in the configuration: compression off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Messages with fewer payload bytes than this are sent uncompressed (compressing a few
    /// bytes costs more than it saves).
    pub threshold: usize,
    /// The DEFLATE level, 1 (fastest) to 9 (smallest).
    pub level: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            threshold: 256,
            level: 3,
        }
    }
}

/// What one connection agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The largest window (in bits, 8 to 15) the client lets the server compress with: 15
    /// unless it offered `server_max_window_bits`.
    pub server_window: u8,
}

impl Agreed {
    /// Whether the connection can inflate the frames compressed once for everyone (those use
    /// a 15-bit window). A client that asked for a smaller window gets plain frames from the
    /// hub (RFC 7692 lets a sender leave any message uncompressed); its own messages are
    /// still inflated.
    pub fn takes_shared(&self) -> bool {
        self.server_window == SHARED_WINDOW
    }

    /// The `Sec-WebSocket-Extensions` value of the response.
    pub fn response(&self) -> String {
        let mut r = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
        if self.server_window != SHARED_WINDOW {
            r.push_str(&format!("; server_max_window_bits={}", self.server_window));
        }
        r
    }
}

/// Chooses the first `permessage-deflate` offer the server can honour among the values of the
/// request's `Sec-WebSocket-Extensions` headers (RFC 7692 section 7.1). An offer with an
/// unknown or repeated parameter or a bad value is declined (the next one is considered); no
/// acceptable offer means no compression, never a failed handshake.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    headers
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<Agreed> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen: [bool; 4] = [false; 4];
    let mut server_window = SHARED_WINDOW;
    for param in parts {
        if param.is_empty() {
            return None;
        }
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                server_window = window_bits(value?)?;
                2
            }
            "client_max_window_bits" => {
                // Without a value: the client supports the parameter; with one: the window it
                // will use. Either way the server inflates with the largest window.
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(Agreed { server_window })
}

/// A parameter value, without the quotes of a quoted-string.
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// A window size: 8 to 15, as a plain decimal number without leading zeros.
fn window_bits(v: &str) -> Option<u8> {
    if v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// The DEFLATE state of one thread: a compressor per (level, window), created on first use,
/// and one inflater.
#[derive(Default)]
struct Codecs {
    compressors: Vec<(u32, u8, Compress)>,
    inflater: Option<Decompress>,
}

thread_local! {
    static CODECS: RefCell<Codecs> = RefCell::new(Codecs::default());
}

/// Compresses one server message into a finished frame with RSV1 set, using a window of at
/// most `window` bits. `None` when compression is not worth it: the payload is under the
/// threshold, the window is one the codec cannot do (8 bits), or the result would not be
/// smaller.
pub fn compress(opcode: OpCode, payload: &[u8], settings: &Settings, window: u8) -> Option<Frame> {
    if payload.len() < settings.threshold.max(1) || !(9..=15).contains(&window) {
        return None;
    }
    let level = settings.level.clamp(1, 9);
    CODECS.with(|c| {
        let mut codecs = c.try_borrow_mut().ok()?;
        let i = match codecs
            .compressors
            .iter()
            .position(|(l, w, _)| *l == level && *w == window)
        {
            Some(i) => i,
            None => {
                codecs.compressors.push((
                    level,
                    window,
                    Compress::new_with_window_bits(Compression::new(level), false, window),
                ));
                codecs.compressors.len() - 1
            }
        };
        let z = &mut codecs.compressors[i].2;
        z.reset();
        // Room for the payload itself, the header in front and the sync marker: a result that
        // does not fit would not be smaller than the plain frame.
        let mut out = Vec::with_capacity(MAX_HEADER + payload.len() + TAIL.len());
        out.extend_from_slice(&[0u8; MAX_HEADER]);
        let status = z
            .compress_vec(payload, &mut out, FlushCompress::Sync)
            .ok()?;
        let consumed = z.total_in() as usize == payload.len();
        if status != Status::Ok || !consumed || out.len() == out.capacity() {
            return None;
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        let len = out.len() - MAX_HEADER;
        if len >= payload.len() {
            return None;
        }
        let mut header = [0u8; MAX_HEADER];
        let hlen = write_header(0x80 | 0x40 | opcode as u8, len, &mut header);
        let start = MAX_HEADER - hlen;
        out[start..MAX_HEADER].copy_from_slice(&header[start..]);
        Some(Bytes::from(out).slice(start..))
    })
}

/// Compresses an already encoded, uncompressed data frame of the server (see [`compress`]);
/// `None` for control frames, compressed frames and everything [`compress`] declines.
pub fn compress_frame(frame: &Frame, settings: &Settings, window: u8) -> Option<Frame> {
    let (first, payload) = super::split_server_frame(frame)?;
    let opcode = match first {
        0x81 => OpCode::Text,
        0x82 => OpCode::Binary,
        _ => return None,
    };
    compress(opcode, payload, settings, window)
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit; `size` is how far inflating went (at most one
    /// byte past the limit).
    TooBig {
        /// Bytes inflated when it stopped.
        size: usize,
    },
    /// Not valid DEFLATE data (or it used the window of an earlier message, which
    /// `client_no_context_takeover` rules out).
    Corrupt,
}

/// Inflates one client message (the payloads of its frames, concatenated), producing at most
/// `limit` bytes: a compression bomb stops one byte past the limit.
///
/// # Errors
/// [`InflateError::TooBig`] past the limit, [`InflateError::Corrupt`] for bad data.
pub fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    CODECS.with(|c| {
        let mut codecs = c.try_borrow_mut().map_err(|_| InflateError::Corrupt)?;
        let z = codecs
            .inflater
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, SHARED_WINDOW));
        z.reset(false);
        let result = inflate_with(z, data, limit);
        if result.is_err() {
            // Start the next message from a clean state whatever this one left behind.
            z.reset(false);
        }
        result
    })
}

fn inflate_with(z: &mut Decompress, data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let cap = limit.saturating_add(1);
    let mut out: Vec<u8> = Vec::with_capacity(data.len().saturating_mul(4).clamp(64, cap));
    for chunk in [data, &TAIL[..]] {
        let mut input = chunk;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= cap {
                    return Err(InflateError::TooBig { size: out.len() });
                }
                let grow = out.capacity().max(64).min(cap - out.len());
                out.reserve_exact(grow);
            }
            let before_in = z.total_in();
            let before_out = out.len();
            let status = z
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            let used = (z.total_in() - before_in) as usize;
            input = &input[used..];
            if out.len() > limit {
                return Err(InflateError::TooBig { size: out.len() });
            }
            if status == Status::StreamEnd {
                // A final block (BFINAL) ends the message; nothing may follow it but the
                // marker appended here.
                return if chunk.len() == TAIL.len() || input.is_empty() {
                    Ok(out)
                } else {
                    Err(InflateError::Corrupt)
                };
            }
            let room = out.len() < out.capacity();
            if input.is_empty() && room {
                break;
            }
            if used == 0 && out.len() == before_out && room {
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(s: &str) -> Option<Agreed> {
        negotiate([s])
    }

    #[test]
    fn negotiates_the_offers_browsers_and_libraries_send() {
        let full = Some(Agreed { server_window: 15 });
        assert_eq!(offer("permessage-deflate; client_max_window_bits"), full);
        assert_eq!(offer("permessage-deflate"), full);
        assert_eq!(
            offer("permessage-deflate; client_no_context_takeover; server_no_context_takeover"),
            full
        );
        assert_eq!(offer("PerMessage-Deflate; client_max_window_bits=10"), full);
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=10"),
            Some(Agreed { server_window: 10 })
        );
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=\"12\""),
            Some(Agreed { server_window: 12 })
        );
        assert_eq!(
            full.map(|a| a.response()).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        assert!(Agreed { server_window: 9 }
            .response()
            .ends_with("; server_max_window_bits=9"));
    }

    #[test]
    fn declines_what_it_cannot_honour_and_takes_the_next_offer() {
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
            "permessage-deflate; client_max_window_bits; client_max_window_bits",
            "permessage-deflate;",
            "",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
        assert_eq!(
            negotiate([
                "permessage-deflate; mystery, permessage-deflate; server_max_window_bits=11",
                "permessage-deflate",
            ]),
            Some(Agreed { server_window: 11 })
        );
    }

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::new();
        for i in 0..n {
            s.push_str(&format!(
                r#"{{"type":"message","group":"room","offset":{i},"message":{{"text":"hello there"}}}}"#
            ));
        }
        s.into_bytes()
    }

    #[test]
    fn compresses_once_and_inflates_back() {
        let payload = json(20);
        let s = Settings::default();
        let f = compress(OpCode::Text, &payload, &s, 15).unwrap();
        assert_eq!(f[0], 0xC1, "FIN, RSV1, text");
        let (_, body) = crate::frame::split_server_frame(&f).unwrap();
        assert!(
            body.len() * 4 < payload.len(),
            "{} of {}",
            body.len(),
            payload.len()
        );
        assert_eq!(inflate(body, 1 << 20).unwrap(), payload);
        // The same input gives the same bytes: no context is carried between messages.
        assert_eq!(compress(OpCode::Text, &payload, &s, 15).unwrap(), f);
        // Every window the codec can do works.
        for w in 9..=15 {
            let f = compress(OpCode::Binary, &payload, &s, w).unwrap();
            let (_, body) = crate::frame::split_server_frame(&f).unwrap();
            assert_eq!(inflate(body, 1 << 20).unwrap(), payload, "window {w}");
        }
    }

    #[test]
    fn declines_small_and_incompressible_payloads() {
        let s = Settings::default();
        assert!(compress(OpCode::Text, b"short", &s, 15).is_none());
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..4000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(compress(OpCode::Binary, &noise, &s, 15).is_none());
        assert!(compress(OpCode::Text, &json(10), &s, 8).is_none());
        let plain = crate::frame::encode(OpCode::Text, &json(10));
        assert!(compress_frame(&plain, &s, 15).is_some());
        assert!(compress_frame(&crate::frame::close_frame(1000, "bye"), &s, 15).is_none());
    }

    #[test]
    fn a_bomb_stops_just_past_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let s = Settings::default();
        let f = compress(OpCode::Binary, &zeros, &s, 15).unwrap();
        let (_, body) = crate::frame::split_server_frame(&f).unwrap();
        assert!(body.len() < 20_000);
        assert_eq!(
            inflate(body, 64 * 1024),
            Err(InflateError::TooBig {
                size: 64 * 1024 + 1
            })
        );
        // And the thread's inflater is fine for the next message.
        let small = json(5);
        let f = compress(OpCode::Text, &small, &s, 15).unwrap();
        let (_, body) = crate::frame::split_server_frame(&f).unwrap();
        assert_eq!(inflate(body, 1 << 20).unwrap(), small);
    }

    #[test]
    fn corrupt_data_is_refused() {
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 1024),
            Err(InflateError::Corrupt)
        );
        // A back-reference before the start of the message (context takeover) is corrupt.
        let mut z = Compress::new_with_window_bits(Compression::new(3), false, 15);
        let msg = json(4);
        let mut out = Vec::with_capacity(4096);
        z.compress_vec(&msg, &mut out, FlushCompress::Sync).unwrap();
        let mut second = Vec::with_capacity(4096);
        z.compress_vec(&msg, &mut second, FlushCompress::Sync)
            .unwrap();
        second.truncate(second.len() - 4);
        assert_eq!(inflate(&second, 1 << 20), Err(InflateError::Corrupt));
        // A final block is fine, trailing garbage after it is not.
        let mut z = Compress::new_with_window_bits(Compression::new(3), false, 15);
        let mut fin = Vec::with_capacity(4096);
        z.compress_vec(&msg, &mut fin, FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflate(&fin, 1 << 20).unwrap(), msg);
        fin.extend_from_slice(b"junk");
        assert_eq!(inflate(&fin, 1 << 20), Err(InflateError::Corrupt));
        // An empty message, as browsers send it (one empty stored block, its length in the
        // marker) and as an empty fixed-Huffman block.
        assert_eq!(inflate(&[0x00], 1024).unwrap(), Vec::<u8>::new());
        assert_eq!(inflate(&[0x02, 0x00], 1024).unwrap(), Vec::<u8>::new());
    }
}
