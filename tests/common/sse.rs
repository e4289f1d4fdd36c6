//! A Server-Sent Events client over a raw socket: the response head, then the chunked body
//! cut into events as the event-stream format says (`event:`, `id:`, `data:` lines, a blank
//! line ending each; comments skipped).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single wait may take.
const WAIT: Duration = Duration::from_secs(10);

/// One event.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// `message` when the stream named none.
    pub name: String,
    pub id: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

pub struct Sse {
    sock: TcpStream,
    /// Body bytes not yet dechunked.
    raw: Vec<u8>,
    /// Dechunked text not yet cut into events.
    text: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The head's body, when the answer was not a stream (an error).
    pub ended: bool,
    /// The last `id:` seen, as a browser keeps it.
    pub last_id: Option<String>,
    /// Whether a `retry:` field and a comment were seen.
    pub saw_retry: bool,
    pub comments: usize,
}

impl Sse {
    /// `GET path` with `headers`; returns once the response head is in.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        Self::open_with(addr, path, headers, None).await
    }

    /// [`open`](Self::open) with the socket's receive buffer set first (a reader whose
    /// kernel holds little for it).
    pub async fn open_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        rcvbuf: Option<u32>,
    ) -> Sse {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut sock = socket.connect(addr).await.unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let end = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    return end;
                }
                let mut buf = [0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the response head");
                raw.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("no response head");
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let rest = raw[end + 4..].to_vec();
        Sse {
            sock,
            raw: rest,
            text: String::new(),
            status,
            headers,
            ended: false,
            last_id: None,
            saw_retry: false,
            comments: 0,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body of a response that is not a stream (problem+json).
    pub async fn body(mut self) -> String {
        let len: usize = self
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while self.raw.len() < len {
            let mut buf = [0u8; 4096];
            let n = self.sock.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    fn dechunk(&mut self) {
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..eol]).into_owned();
            let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            let chunk = self.raw[eol + 2..eol + 2 + size].to_vec();
            self.raw.drain(..eol + 2 + size + 2);
            self.text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    fn parse_one(&mut self) -> Option<Event> {
        loop {
            let end = self.text.find("\n\n")?;
            let block: String = self.text.drain(..end + 2).collect();
            let mut ev = Event {
                name: "message".into(),
                ..Event::default()
            };
            let mut data = Vec::new();
            let mut any = false;
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => ev.name = value.to_owned(),
                    "id" => ev.id = Some(value.to_owned()),
                    "data" => {
                        data.push(value.to_owned());
                        any = true;
                    }
                    "retry" => self.saw_retry = true,
                    _ => {}
                }
            }
            if let Some(id) = &ev.id {
                self.last_id = Some(id.clone());
            }
            if any {
                ev.data = data.join("\n");
                return Some(ev);
            }
        }
    }

    /// The next event, or `None` when the stream ends (or `wait` passes).
    pub async fn next_within(&mut self, wait: Duration) -> Option<Event> {
        tokio::time::timeout(wait, async {
            loop {
                self.dechunk();
                if let Some(ev) = self.parse_one() {
                    return Some(ev);
                }
                if self.ended {
                    return None;
                }
                let mut buf = [0u8; 16384];
                match self.sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The next event (within the tests' wait).
    pub async fn next(&mut self) -> Event {
        self.next_within(WAIT).await.expect("no event")
    }

    /// The next event named `name`, skipping others.
    pub async fn next_named(&mut self, name: &str) -> Event {
        loop {
            let ev = self.next().await;
            if ev.name == name {
                return ev;
            }
        }
    }
}
