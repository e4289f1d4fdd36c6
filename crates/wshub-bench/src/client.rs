//! A lean WebSocket client for load generation: raw TCP, a hand-written handshake, masked
//! client frames, and an in-place frame scanner that never allocates per frame.

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A parsed `ws://host:port/path` URL (loopback only).
#[derive(Debug, Clone)]
pub struct Target {
    /// The server address.
    pub addr: SocketAddr,
    /// The request path.
    pub path: String,
    /// Offer `permessage-deflate` in the handshake.
    pub deflate: bool,
}

impl Target {
    /// Parses a `ws://` URL whose host is a loopback address.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("`{url}`: only ws:// URLs are supported"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let hostport = hostport.replace("localhost", "127.0.0.1");
        let addr: SocketAddr = hostport
            .parse()
            .map_err(|_| format!("`{url}`: expected ws://127.0.0.1:PORT/path"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "`{url}`: load is only ever sent to loopback addresses"
            ));
        }
        Ok(Self {
            addr,
            path: path.to_owned(),
            deflate: false,
        })
    }

    /// The same server, another path.
    pub fn with_path(&self, path: &str) -> Self {
        Self {
            addr: self.addr,
            path: path.to_owned(),
            deflate: self.deflate,
        }
    }

    /// The same target, offering `permessage-deflate` or not.
    pub fn offering_deflate(mut self, deflate: bool) -> Self {
        self.deflate = deflate;
        self
    }
}

/// Opens a TCP connection from `source` (any port) and completes the WebSocket handshake.
/// Returns the stream and any bytes read past the response head.
pub async fn connect(target: &Target, source: Option<IpAddr>) -> io::Result<(TcpStream, BytesMut)> {
    connect_with(target, source, None).await
}

/// Connects with the `wshub.v1` subprotocol.
pub async fn connect_v1(target: &Target) -> io::Result<(TcpStream, BytesMut)> {
    connect_with(target, None, Some("wshub.v1")).await
}

/// [`connect`], optionally asking for a subprotocol.
pub async fn connect_with(
    target: &Target,
    source: Option<IpAddr>,
    protocol: Option<&str>,
) -> io::Result<(TcpStream, BytesMut)> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let protocol = protocol.map_or(String::new(), |p| {
        format!("Sec-WebSocket-Protocol: {p}\r\n")
    });
    let extensions = if target.deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}{extensions}\r\n",
        target.path, target.addr
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during handshake",
            ));
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&buf[..buf.len().min(60)]).into_owned();
                return Err(io::Error::other(format!("upgrade refused: {line}")));
            }
            buf.advance(end + 4);
            return Ok((stream, buf));
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("response head too large"));
        }
    }
}

/// Appends a masked, final client frame to `out`.
pub fn encode_masked(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    wshub::frame::encode_client(0x80 | opcode, payload, Some(mask), out);
}

/// Calls `f(opcode, payload)` for every complete server frame at the front of `buf`, then
/// drops those bytes. Incomplete frames stay for the next read. A compressed frame (RSV1,
/// `permessage-deflate`) comes with `0x40` added to its opcode.
pub fn scan_frames(buf: &mut BytesMut, mut f: impl FnMut(u8, &[u8])) {
    let mut at = 0;
    loop {
        let b = &buf[at..];
        if b.len() < 2 {
            break;
        }
        let (len, h) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let mut x = [0u8; 8];
                x.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(x) as usize, 10)
            }
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if b.len() < h + len {
            break;
        }
        f(b[0] & 0x4F, &b[h..h + len]);
        at += h + len;
    }
    buf.advance(at);
}

/// Finds the `"message":"<tag>:` marker in an envelope (or `"data":"<tag>:` in a Pusher
/// event) and parses the two numbers after it: `"message":"b:SEQ:NANOS"` → `(SEQ, NANOS)`.
/// Works on the raw bytes, no JSON parser.
pub fn parse_marker(payload: &[u8], tag: u8) -> Option<(u64, u64)> {
    const KEY: &[u8] = b"\"message\":\"";
    const DATA: &[u8] = b"\"data\":\"";
    let start = match payload.windows(KEY.len()).position(|w| w == KEY) {
        Some(at) => at + KEY.len(),
        None => payload.windows(DATA.len()).position(|w| w == DATA)? + DATA.len(),
    };
    let rest = payload.get(start..)?;
    if rest.first() != Some(&tag) || rest.get(1) != Some(&b':') {
        return None;
    }
    let mut nums = [0u64; 2];
    let mut i = 2;
    for (k, n) in nums.iter_mut().enumerate() {
        let begin = i;
        while let Some(d) = rest.get(i).filter(|d| d.is_ascii_digit()) {
            *n = *n * 10 + u64::from(d - b'0');
            i += 1;
        }
        if i == begin || (k == 0 && rest.get(i) != Some(&b':')) {
            return None;
        }
        i += 1;
    }
    Some((nums[0], nums[1]))
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns the status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await?;
    let body = json.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other("no response head"))?;
    let status = std::str::from_utf8(&raw[..end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other("bad status line"))?;
    Ok((status, raw[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_marker_inside_an_envelope() {
        let env =
            br#"{"type":"message","from":"abcd1234","message":"b:42:123456","timestamp":"x"}"#;
        assert_eq!(parse_marker(env, b'b'), Some((42, 123456)));
        assert_eq!(parse_marker(env, b'e'), None);
        assert_eq!(parse_marker(br#"{"message":"b:x"}"#, b'b'), None);
    }

    #[test]
    fn scans_split_frames() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0x81, 2, b'h', b'i', 0x82, 126, 0, 200]);
        let mut seen = Vec::new();
        scan_frames(&mut buf, |op, p| seen.push((op, p.len())));
        assert_eq!(seen, vec![(1, 2)]);
        buf.extend_from_slice(&[0u8; 200]);
        scan_frames(&mut buf, |op, p| seen.push((op, p.len())));
        assert_eq!(seen, vec![(1, 2), (2, 200)]);
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_non_loopback_targets() {
        assert!(Target::parse("ws://10.0.0.1:80/ws").is_err());
        assert!(Target::parse("ws://127.0.0.1:5289/ws").is_ok());
        assert_eq!(Target::parse("ws://localhost:1/x").unwrap().path, "/x");
    }
}
