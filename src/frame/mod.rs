//! The RFC 6455 wire format: server frames encoded once, client frames decoded incrementally.
//!
//! This module imports nothing else of ours. It is the bottom of the crate: the hub, the
//! transport and the API all speak in [`Frame`]s, the finished bytes of one server-to-client
//! WebSocket frame (header and payload). A server frame is never masked, so the same bytes go
//! to every recipient: a broadcast encodes once and hands out reference-counted clones.
//!
//! The decoder is written for the server side only: every client frame must be masked, the
//! only extension is `permessage-deflate` ([`deflate`]: RSV1 marks a compressed message when it
//! was negotiated; every other RSV bit is an error), and messages are bounded by a configurable
//! size that is checked against the declared length before any payload is buffered, and
//! against the inflated size of a compressed message as it is inflated.

pub mod deflate;

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use sha1::{Digest, Sha1};

/// The finished bytes of one server-to-client frame, header included, shared by every recipient.
pub type Frame = Bytes;

/// Frame opcodes (RFC 6455 section 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// A continuation of a fragmented message.
    Continuation = 0x0,
    /// A text frame (UTF-8).
    Text = 0x1,
    /// A binary frame.
    Binary = 0x2,
    /// The closing handshake.
    Close = 0x8,
    /// A ping; answered by a pong with the same payload.
    Ping = 0x9,
    /// A pong.
    Pong = 0xA,
}

impl OpCode {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// The largest header a server frame can have: 2 bytes plus a 64-bit length.
pub const MAX_HEADER: usize = 10;

/// The length of the header of a server frame with a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=0xFFFF => 4,
        _ => MAX_HEADER,
    }
}

/// Writes the header of an unmasked frame whose first byte (FIN, RSV bits, opcode) is `b0`
/// into the end of `out` and returns its length.
fn write_header(b0: u8, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    if len < 126 {
        out[MAX_HEADER - 2] = b0;
        out[MAX_HEADER - 1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[MAX_HEADER - 4] = b0;
        out[MAX_HEADER - 3] = 126;
        out[MAX_HEADER - 2..].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[0] = b0;
        out[1] = 127;
        out[2..].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Encodes one complete frame by copying `payload` once behind its header.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Frame {
    let mut header = [0u8; MAX_HEADER];
    let hlen = write_header(0x80 | opcode as u8, payload.len(), &mut header);
    let mut out = BytesMut::with_capacity(hlen + payload.len());
    out.extend_from_slice(&header[MAX_HEADER - hlen..]);
    out.extend_from_slice(payload);
    out.freeze()
}

/// A buffer that a payload is written into directly, with room kept in front for the header,
/// so that an envelope is serialised straight into its final frame with no copy.
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// A buffer for a payload of about `payload_hint` bytes.
    pub fn with_capacity(payload_hint: usize) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER + payload_hint);
        buf.extend_from_slice(&[0u8; MAX_HEADER]);
        Self { buf }
    }

    /// The payload written so far.
    pub fn payload(&self) -> &[u8] {
        &self.buf[MAX_HEADER..]
    }

    /// Appends `data` to the payload.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Puts the header in front of the payload and returns the finished frame.
    pub fn finish(mut self, opcode: OpCode) -> Frame {
        let mut header = [0u8; MAX_HEADER];
        let hlen = write_header(
            0x80 | opcode as u8,
            self.buf.len() - MAX_HEADER,
            &mut header,
        );
        let start = MAX_HEADER - hlen;
        self.buf[start..MAX_HEADER].copy_from_slice(&header[start..]);
        Bytes::from(self.buf).slice(start..)
    }
}

impl std::io::Write for FrameBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The first byte and the payload of a frame the server encoded (unmasked, whole); `None`
/// when `frame` is not one.
pub fn split_server_frame(frame: &[u8]) -> Option<(u8, &[u8])> {
    let (&b0, rest) = frame.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    let (len, body) = match b1 {
        126 => {
            let (l, body) = rest.split_at_checked(2)?;
            (usize::from(u16::from_be_bytes([l[0], l[1]])), body)
        }
        127 => {
            let (l, body) = rest.split_at_checked(8)?;
            let mut b = [0u8; 8];
            b.copy_from_slice(l);
            (usize::try_from(u64::from_be_bytes(b)).ok()?, body)
        }
        n if n < 126 => (usize::from(n), rest),
        _ => return None,
    };
    (body.len() == len).then_some((b0, body))
}

/// A Close frame with a status code and a reason (truncated to fit the 125-byte control limit).
pub fn close_frame(code: u16, reason: &str) -> Frame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Close, &payload)
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub fn accept_key(client_key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = Sha1::new();
    sha.update(client_key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Whether a close code received from a peer may legally appear on the wire (RFC 6455 7.4).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A complete message or control frame received from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message; its bytes are valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame, with its code and reason when it had one.
    Close(Option<(u16, String)>),
}

/// Why the decoder gave up on a connection; each maps to the close code the server sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A violation of RFC 6455 framing (close 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message (or close reason) that is not valid UTF-8 (close 1007).
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
    /// A compressed message that does not inflate (close 1007, as its data is not what its
    /// frames say it is).
    #[error("invalid compressed data")]
    BadCompression,
    /// A message larger than the configured maximum (close 1009); for a compressed message,
    /// its inflated size.
    #[error("message of {size} bytes or more exceeds the {limit}-byte limit")]
    TooBig {
        /// The size known so far (declared or accumulated).
        size: u64,
        /// The configured limit.
        limit: usize,
    },
}

impl DecodeError {
    /// The close code to send for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            DecodeError::Protocol(_) => 1002,
            DecodeError::InvalidUtf8 | DecodeError::BadCompression => 1007,
            DecodeError::TooBig { .. } => 1009,
        }
    }
}

struct Partial {
    opcode: OpCode,
    data: BytesMut,
    /// How many leading bytes of `data` are known to be valid UTF-8 (text only).
    checked: usize,
    /// `data` is compressed (RSV1 on the first frame): inflated and checked at the end.
    compressed: bool,
}

/// Decodes masked client frames from a byte buffer, reassembling fragmented messages.
pub struct Decoder {
    max_message: usize,
    /// A fragmented message being reassembled (boxed: rare, and kept out of every idle
    /// connection's decoder).
    partial: Option<Box<Partial>>,
    /// `permessage-deflate` was negotiated: RSV1 on a message's first frame means compressed.
    deflate: bool,
    /// Compressed messages inflated since [`take_inflated`](Self::take_inflated) last asked.
    inflated: u32,
    /// A frame was refused: nothing more is decoded.
    failed: bool,
}

impl Decoder {
    /// A decoder that rejects messages larger than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            partial: None,
            deflate: false,
            inflated: 0,
            failed: false,
        }
    }

    /// How many compressed messages were inflated since the last call (for metrics).
    pub fn take_inflated(&mut self) -> u32 {
        std::mem::take(&mut self.inflated)
    }

    /// A decoder for a connection that negotiated `permessage-deflate`: compressed messages
    /// are inflated, to at most `max_message` bytes.
    pub fn with_deflate(max_message: usize) -> Self {
        Self {
            deflate: true,
            ..Self::new(max_message)
        }
    }

    /// Decodes the next complete message or control frame from the front of `buf`, consuming it.
    ///
    /// Returns `Ok(None)` when `buf` does not hold a whole frame yet (or held only a fragment of
    /// a longer message, which is kept inside the decoder).
    ///
    /// # Errors
    /// A [`DecodeError`] when the peer broke the protocol; the connection must then be closed
    /// with [`DecodeError::close_code`].
    ///
    /// After an error the stream is beyond repair: later calls drop what `buf` holds and return
    /// `Ok(None)` (the connection reads on until EOF, so that its Close frame is not lost to a
    /// TCP reset); see [`failed`](Self::failed).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        if self.failed {
            buf.clear();
            return Ok(None);
        }
        let r = self.decode_next(buf);
        self.failed = r.is_err();
        r
    }

    /// Whether a frame was refused (nothing more is decoded).
    pub fn failed(&self) -> bool {
        self.failed
    }

    fn decode_next(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        loop {
            let Some(frame) = self.next_frame(buf)? else {
                return Ok(None);
            };
            if let Some(msg) = self.on_frame(frame)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Splits one whole frame off `buf` (unmasked), after checking its header.
    fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<RawFrame>, DecodeError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (rsv1 && !self.deflate) {
            return Err(DecodeError::Protocol(
                "reserved bits set without a negotiated extension",
            ));
        }
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(DecodeError::Protocol("unknown opcode"))?;
        if rsv1 && !matches!(opcode, OpCode::Text | OpCode::Binary) {
            return Err(DecodeError::Protocol(
                "RSV1 is only for the first frame of a compressed message",
            ));
        }
        if b1 & 0x80 == 0 {
            return Err(DecodeError::Protocol("client frame not masked"));
        }
        let (len, hlen) = match b1 & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(DecodeError::Protocol(
                        "64-bit payload length with the top bit set",
                    ));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode.is_control() {
            if !fin {
                return Err(DecodeError::Protocol("fragmented control frame"));
            }
            if len > 125 {
                return Err(DecodeError::Protocol(
                    "control frame payload over 125 bytes",
                ));
            }
        } else {
            let so_far = self.partial.as_ref().map_or(0, |p| p.data.len() as u64);
            if so_far + len > self.max_message as u64 {
                return Err(DecodeError::TooBig {
                    size: so_far + len,
                    limit: self.max_message,
                });
            }
        }
        // Bounded by max_message (data) or 125 (control), so it fits in usize.
        let len = len as usize;
        let total = hlen + 4 + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[hlen..hlen + 4]);
        buf.advance(hlen + 4);
        let mut payload = buf.split_to(len);
        unmask(&mut payload, mask);
        Ok(Some(RawFrame {
            fin,
            compressed: rsv1,
            opcode,
            payload,
        }))
    }

    fn on_frame(&mut self, f: RawFrame) -> Result<Option<Message>, DecodeError> {
        match f.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(f.payload.freeze()))),
            OpCode::Pong => Ok(Some(Message::Pong(f.payload.freeze()))),
            OpCode::Close => parse_close(&f.payload).map(|c| Some(Message::Close(c))),
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(DecodeError::Protocol(
                        "new data frame while a fragmented message is in progress",
                    ));
                }
                if f.fin {
                    return self.finish(f.opcode, f.payload, f.compressed).map(Some);
                }
                let mut p = Partial {
                    opcode: f.opcode,
                    data: f.payload,
                    checked: 0,
                    compressed: f.compressed,
                };
                check_partial_utf8(&mut p)?;
                self.partial = Some(Box::new(p));
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(mut p) = self.partial.take() else {
                    return Err(DecodeError::Protocol(
                        "continuation frame with no message to continue",
                    ));
                };
                p.data.extend_from_slice(&f.payload);
                if f.fin {
                    let p = *p;
                    return self.finish(p.opcode, p.data, p.compressed).map(Some);
                }
                check_partial_utf8(&mut p)?;
                self.partial = Some(p);
                Ok(None)
            }
        }
    }

    /// A whole message: inflated when compressed, then checked.
    fn finish(
        &mut self,
        opcode: OpCode,
        data: BytesMut,
        compressed: bool,
    ) -> Result<Message, DecodeError> {
        if !compressed {
            return finish(opcode, data.freeze());
        }
        self.inflated = self.inflated.saturating_add(1);
        match deflate::inflate(&data, self.max_message) {
            Ok(plain) => finish(opcode, Bytes::from(plain)),
            Err(deflate::InflateError::TooBig { size }) => Err(DecodeError::TooBig {
                size: size as u64,
                limit: self.max_message,
            }),
            Err(deflate::InflateError::Corrupt) => Err(DecodeError::BadCompression),
        }
    }
}

struct RawFrame {
    fin: bool,
    /// RSV1: the first frame of a compressed message.
    compressed: bool,
    opcode: OpCode,
    payload: BytesMut,
}

fn finish(opcode: OpCode, data: Bytes) -> Result<Message, DecodeError> {
    if opcode == OpCode::Text {
        if std::str::from_utf8(&data).is_err() {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(Message::Text(data))
    } else {
        Ok(Message::Binary(data))
    }
}

/// Validates the new bytes of a fragmented text message, allowing an incomplete sequence at the
/// end, so that invalid UTF-8 fails at the fragment that carries it rather than at the end.
fn check_partial_utf8(p: &mut Partial) -> Result<(), DecodeError> {
    if p.opcode != OpCode::Text || p.compressed {
        return Ok(());
    }
    match std::str::from_utf8(&p.data[p.checked..]) {
        Ok(_) => {
            p.checked = p.data.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() => {
            p.checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(DecodeError::InvalidUtf8),
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, DecodeError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(DecodeError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_close_code(code) {
                return Err(DecodeError::Protocol("invalid close code"));
            }
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| DecodeError::InvalidUtf8)?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// XORs `data` with the 4-byte masking key, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let mask64 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(w) ^ mask64;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    // The chunks so far covered a multiple of 8 bytes, so the mask phase restarts at 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends a client frame to `out`: `first` is its whole first byte (FIN, RSV bits, opcode),
/// the payload is masked with `mask`, or sent unmasked with `None` (which a server must
/// refuse). For clients, load generators and tests: the server never sends one.
pub fn encode_client(first: u8, payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(first);
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i & 3]));
        }
        None => out.extend_from_slice(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a client frame (masked) the way a browser would.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let first = (if fin { 0x80 } else { 0 }) | opcode;
        encode_client(first, payload, Some([0x12, 0x34, 0x56, 0x78]), &mut out);
        out
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Message>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = d.decode(&mut buf)? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn encodes_headers_for_each_length_class() {
        for (len, hlen) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let f = encode(OpCode::Binary, &vec![7u8; len]);
            assert_eq!(f.len(), len + hlen, "len {len}");
            assert_eq!(header_len(len), hlen);
            assert_eq!(f[0], 0x82);
        }
    }

    #[test]
    fn frame_buf_matches_encode() {
        for len in [0usize, 5, 125, 126, 300, 70000] {
            let payload = vec![b'x'; len];
            let mut fb = FrameBuf::with_capacity(8);
            std::io::Write::write_all(&mut fb, &payload).unwrap();
            assert_eq!(fb.finish(OpCode::Text), encode(OpCode::Text, &payload));
        }
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn decodes_masked_text_and_binary() {
        let mut d = Decoder::new(1 << 20);
        let mut bytes = client_frame(true, 1, "héllo".as_bytes());
        bytes.extend(client_frame(true, 2, &[0, 1, 2, 255]));
        let msgs = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            msgs,
            vec![
                Message::Text(Bytes::from("héllo")),
                Message::Binary(Bytes::from_static(&[0, 1, 2, 255]))
            ]
        );
    }

    #[test]
    fn unmask_handles_every_length() {
        for len in 0..40 {
            let payload: Vec<u8> = (0..len as u8).collect();
            let mut d = Decoder::new(1 << 20);
            let msgs = decode_all(&mut d, &client_frame(true, 2, &payload)).unwrap();
            assert_eq!(msgs, vec![Message::Binary(Bytes::from(payload))]);
        }
    }

    #[test]
    fn waits_for_a_whole_frame_byte_by_byte() {
        let mut d = Decoder::new(1 << 20);
        let bytes = client_frame(true, 1, &vec![b'a'; 300]);
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = d.decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == bytes.len() - 1);
        }
    }

    #[test]
    fn reassembles_fragments_with_interleaved_ping() {
        let mut d = Decoder::new(1 << 20);
        let mut bytes = client_frame(false, 1, b"Hel");
        bytes.extend(client_frame(true, 9, b"p"));
        bytes.extend(client_frame(false, 0, b"lo "));
        bytes.extend(client_frame(true, 0, "wörld".as_bytes()));
        let msgs = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            msgs,
            vec![
                Message::Ping(Bytes::from_static(b"p")),
                Message::Text(Bytes::from("Hello wörld"))
            ]
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_accepted() {
        let mut d = Decoder::new(1 << 20);
        let s = "€".as_bytes();
        let mut bytes = client_frame(false, 1, &s[..1]);
        bytes.extend(client_frame(true, 0, &s[1..]));
        assert_eq!(
            decode_all(&mut d, &bytes).unwrap(),
            vec![Message::Text(Bytes::from("€"))]
        );
    }

    #[test]
    fn rejects_protocol_violations_with_their_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81 | 0x40, 0x80, 0, 0, 0, 0], 1002),  // RSV1
            (vec![0x83, 0x80, 0, 0, 0, 0], 1002),         // opcode 3
            (vec![0x81, 0x00], 1002),                     // unmasked
            (client_frame(false, 9, b""), 1002),          // fragmented ping
            (client_frame(true, 9, &[0u8; 126]), 1002),   // big ping
            (client_frame(true, 0, b"x"), 1002),          // stray continuation
            (client_frame(true, 1, &[0xff, 0xfe]), 1007), // bad UTF-8
            (client_frame(false, 1, &[b'a', 0xC0, 0x80]), 1007), // overlong, first fragment
            (client_frame(true, 8, &[0x03]), 1002),       // 1-byte close
            (client_frame(true, 8, &[0x03, 0xed]), 1002), // close code 1005
            (client_frame(true, 8, &[0x03, 0xe8, 0xff]), 1007), // bad reason
            (vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], 1002), // 2^63 length
            (vec![0x82, 0xFF, 0x7F, 0xFF, 0, 0, 0, 0, 0, 0], 1009), // huge length
            (client_frame(true, 2, &[0u8; 2000]), 1009),  // over the limit
        ];
        for (i, (bytes, code)) in cases.into_iter().enumerate() {
            let mut d = Decoder::new(1024);
            let err = decode_all(&mut d, &bytes).unwrap_err();
            assert_eq!(err.close_code(), code, "case {i}: {err}");
        }
    }

    #[test]
    fn after_an_error_nothing_more_is_decoded_and_input_is_dropped() {
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::from(&[0x83u8, 0x80, 0, 0, 0, 0][..]); // opcode 3
        assert_eq!(d.decode(&mut buf).unwrap_err().close_code(), 1002);
        assert!(d.failed());
        // A valid frame after the bad one is read and dropped, never decoded.
        buf.extend_from_slice(&client_frame(true, 1, b"hello"));
        assert!(d.decode(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
        assert!(d.failed());
    }

    #[test]
    fn rejects_data_frame_inside_fragmented_message() {
        let mut d = Decoder::new(1 << 20);
        let mut bytes = client_frame(false, 1, b"a");
        bytes.extend(client_frame(true, 1, b"b"));
        assert_eq!(decode_all(&mut d, &bytes).unwrap_err().close_code(), 1002);
    }

    #[test]
    fn fragmented_total_over_limit_is_1009() {
        let mut d = Decoder::new(10);
        let mut bytes = client_frame(false, 2, &[0; 6]);
        bytes.extend(client_frame(true, 0, &[0; 6]));
        assert_eq!(decode_all(&mut d, &bytes).unwrap_err().close_code(), 1009);
    }

    #[test]
    fn parses_close_frames() {
        let mut d = Decoder::new(1024);
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut bytes = client_frame(true, 8, &payload);
        bytes.extend(client_frame(true, 8, b""));
        assert_eq!(
            decode_all(&mut d, &bytes).unwrap(),
            vec![
                Message::Close(Some((1000, "bye".into()))),
                Message::Close(None)
            ]
        );
    }

    #[test]
    fn close_frame_truncates_reason_on_char_boundary() {
        let f = close_frame(1000, &"é".repeat(100));
        assert!(f.len() <= 2 + 125);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn masked(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_client(
            (if fin { 0x80 } else { 0 }) | opcode,
            payload,
            Some(mask),
            &mut out,
        );
        out
    }

    /// Decodes `data` until it runs out or fails; a failure must be a close code.
    fn decodes_or_fails(mut d: Decoder, data: &[u8]) -> Result<(), TestCaseError> {
        let mut buf = BytesMut::from(data);
        for _ in 0..64 {
            match d.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    prop_assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    break;
                }
            }
        }
        Ok(())
    }

    proptest! {
        /// Any message, split into any fragments, delivered to the decoder in any chunks,
        /// comes out whole and unchanged.
        #[test]
        fn fragmented_messages_reassemble(
            text in any::<String>(),
            cuts in proptest::collection::vec(0usize..64, 0..6),
            chunk in 1usize..50,
            mask in any::<[u8; 4]>(),
        ) {
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            points.sort_unstable();
            points.dedup();
            let mut wire = Vec::new();
            let mut start = 0;
            let mut first = true;
            for p in points.into_iter().chain(std::iter::once(bytes.len())) {
                if p < start { continue; }
                let last = p == bytes.len();
                wire.extend(masked(last, if first { 1 } else { 0 }, &bytes[start..p], mask));
                first = false;
                start = p;
                if last { break; }
            }
            let mut d = Decoder::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(m) = d.decode(&mut buf).unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, vec![Message::Text(Bytes::copy_from_slice(bytes))]);
        }

        /// Compressed messages, split into any fragments, inflate back whole; a decoder
        /// without the extension refuses them.
        #[test]
        fn compressed_messages_inflate(
            text in "[a-z ]{0,300}",
            cut in 0usize..400,
            mask in any::<[u8; 4]>(),
        ) {
            let s = deflate::Settings { threshold: 1, level: 6 };
            let packed = match deflate::compress(OpCode::Text, text.as_bytes(), &s, 15) {
                Some(f) => split_server_frame(&f).map(|(_, p)| p.to_vec()).unwrap_or_default(),
                None => return Ok(()),
            };
            let cut = cut.min(packed.len());
            let mut wire = Vec::new();
            encode_client(0x41, &packed[..cut], Some(mask), &mut wire);
            encode_client(0x80, &packed[cut..], Some(mask), &mut wire);
            let mut d = Decoder::with_deflate(1 << 20);
            let mut buf = BytesMut::from(&wire[..]);
            prop_assert_eq!(d.decode(&mut buf).unwrap(), Some(Message::Text(Bytes::from(text))));
            prop_assert_eq!(d.take_inflated(), 1);
            let mut plain = Decoder::new(1 << 20);
            let mut buf = BytesMut::from(&wire[..]);
            prop_assert_eq!(plain.decode(&mut buf).map_err(|e| e.close_code()), Err(1002));
        }

        /// Arbitrary bytes never panic a decoder that inflates either.
        #[test]
        fn arbitrary_bytes_never_panic_with_deflate(
            data in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            decodes_or_fails(Decoder::with_deflate(1024), &data)?;
        }

        /// Arbitrary bytes never panic the decoder: they decode, wait for more, or fail with a
        /// close code.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            decodes_or_fails(Decoder::new(1024), &data)?;
        }
    }
}
