//! Test fixtures: a real server on 127.0.0.1:0, a real WebSocket client (tokio-tungstenite), a
//! raw-socket client for malformed input, and a tiny HTTP client. Every wait has a timeout.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wshub::{Hub, HubConfig};

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Hub,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Default settings, but a short shutdown deadline: tests hold clients that do not read,
    /// and shutdown waits for each client's Close reply up to that deadline.
    pub async fn start() -> Self {
        let config = HubConfig {
            shutdown_timeout: Duration::from_secs(1),
            ..HubConfig::default()
        };
        Self::with(config, wshub::server::ServerOptions::default()).await
    }

    pub async fn with_config(config: HubConfig) -> Self {
        Self::with(config, wshub::server::ServerOptions::default()).await
    }

    pub async fn with(config: HubConfig, options: wshub::server::ServerOptions) -> Self {
        Self::with_hub(Hub::new(config), options).await
    }

    pub async fn with_auth(settings: wshub::auth::AuthSettings) -> Self {
        let config = HubConfig {
            shutdown_timeout: Duration::from_secs(1),
            ..HubConfig::default()
        };
        let auth = wshub::auth::Auth::new(&settings).unwrap();
        Self::with_hub(
            Hub::with_auth(config, auth),
            wshub::server::ServerOptions::default(),
        )
        .await
    }

    pub async fn with_hub(hub: Hub, mut options: wshub::server::ServerOptions) -> Self {
        // On a single-threaded test runtime, serve as the binary does: the test's runtime is
        // an event loop whose writes wait for the end of its turn (wshub::event_loops).
        if options.loops.is_none()
            && tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::CurrentThread
        {
            options.loops = Some(
                wshub::event_loops::EventLoops::current()
                    .unwrap_or_else(|| wshub::event_loops::EventLoops::start(1).unwrap()),
            );
        }
        // The server's own listener (its backlog, as in production).
        let listener = wshub::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = wshub::router(hub.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(wshub::server::run(
            listener,
            hub.clone(),
            app,
            options,
            async {
                let _ = rx.await;
            },
        ));
        TestServer {
            addr,
            hub,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Stops the server and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    /// Waits until the hub holds `n` connections.
    pub async fn wait_count(&self, n: usize) {
        let hub = self.hub.clone();
        tokio::time::timeout(WAIT, async move {
            while hub.connection_count() != n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("connection count never reached {n}"));
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a WebSocket client can run over (plain TCP or TLS).
pub trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> IoStream for T {}

/// A connected client that has read its own "joined" announcement; returns it with its short id.
pub async fn connect(url: &str) -> (Ws, String) {
    let (mut ws, res) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    assert_eq!(res.status(), 101);
    let v = next_json(&mut ws).await;
    assert_eq!(v["type"], "system", "{v}");
    let msg = v["message"].as_str().unwrap();
    let short = msg
        .strip_prefix("Client ")
        .and_then(|m| m.strip_suffix(" joined."))
        .unwrap_or_else(|| panic!("first message should announce our join: {msg}"))
        .to_owned();
    (ws, short)
}

/// The next data message (pings and pongs skipped).
pub async fn next_msg<S: IoStream>(ws: &mut WebSocketStream<S>) -> Message {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                Some(Err(e)) => panic!("websocket error: {e}"),
                None => panic!("websocket ended"),
            }
        }
    })
    .await
    .expect("no message within the timeout")
}

/// The next text message, parsed as JSON.
pub async fn next_json<S: IoStream>(ws: &mut WebSocketStream<S>) -> Value {
    match next_msg(ws).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("valid JSON"),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Skips messages until one satisfies `pred`.
pub async fn next_json_where<S: IoStream>(
    ws: &mut WebSocketStream<S>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let v = next_json(ws).await;
        if pred(&v) {
            return v;
        }
    }
}

/// Waits for the Close frame (or the end of the stream) and returns its code.
pub async fn next_close<S: IoStream>(ws: &mut WebSocketStream<S>) -> Option<u16> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("no close within the timeout")
}

pub async fn send_text<S: IoStream>(ws: &mut WebSocketStream<S>, text: &str) {
    tokio::time::timeout(WAIT, ws.send(Message::text(text)))
        .await
        .unwrap()
        .unwrap();
}

/// Asserts an RFC 3339 UTC timestamp with a `Z` suffix.
pub fn assert_timestamp(v: &Value) {
    let ts = v["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no timestamp in {v}"));
    let b = ts.as_bytes();
    assert!(
        b.len() == 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'Z',
        "not RFC 3339 UTC: {ts}"
    );
}

/// A response from [`http`].
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP/1.1 request over a fresh TCP connection (`Connection: close`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    tokio::time::timeout(WAIT, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        parse_response(&raw)
    })
    .await
    .expect("http request timed out")
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
}

pub async fn post_json(addr: SocketAddr, path: &str, body: &str) -> HttpResponse {
    http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// One metric's value from `/metrics` (the line that starts with `name`, labels included);
/// panics when it is missing.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = String::from_utf8(http(addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
        .parse()
        .unwrap()
}

/// A WebSocket client on a raw socket, for sending what a well-behaved library never would.
pub struct RawClient {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl RawClient {
    /// Performs the opening handshake by hand.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawClient {
        Self::connect_with(addr, path, "").await.0
    }

    /// Performs the opening handshake by hand with `extra` header lines (each ending in
    /// CRLF); returns the client and the response head.
    pub async fn connect_with(addr: SocketAddr, path: &str, extra: &str) -> (RawClient, String) {
        tokio::time::timeout(WAIT, async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            );
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let end = loop {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "server closed during handshake");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
            buf.drain(..end);
            (RawClient { stream, buf }, head)
        })
        .await
        .expect("raw handshake timed out")
    }

    /// Sends one frame; `first` is the whole first byte (FIN, RSV, opcode).
    pub async fn send_raw(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut out = Vec::new();
        let mask = masked.then_some([0xA1, 0xB2, 0xC3, 0xD4]);
        wshub::frame::encode_client(first, payload, mask, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    /// Like [`send_raw`](Self::send_raw), masked; `false` when the server no longer takes
    /// bytes (reset or closed) instead of panicking.
    pub async fn send_raw_checked(&mut self, first: u8, payload: &[u8]) -> bool {
        let mut out = Vec::new();
        wshub::frame::encode_client(first, payload, Some([0xA1, 0xB2, 0xC3, 0xD4]), &mut out);
        self.stream.write_all(&out).await.is_ok()
    }

    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.send_raw(0x80 | opcode, payload, true).await;
    }

    /// Reads the next frame: (opcode, payload); `None` at EOF or reset.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let (first, payload) = self.read_frame_whole().await?;
        Some((first & 0x0F, payload))
    }

    /// Reads the next frame: (its whole first byte: FIN, RSV bits, opcode; payload).
    pub async fn read_frame_whole(&mut self) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some((op, payload, used)) = parse_server_frame(&self.buf) {
                    self.buf.drain(..used);
                    return Some((op, payload));
                }
                let mut chunk = [0u8; 8192];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("no frame within the timeout")
    }

    /// Reads frames until a Close; returns its code (`None` if the stream ended without one).
    pub async fn read_close(&mut self) -> Option<u16> {
        loop {
            match self.read_frame().await? {
                (0x8, p) if p.len() >= 2 => return Some(u16::from_be_bytes([p[0], p[1]])),
                (0x8, _) => return Some(1005),
                _ => continue,
            }
        }
    }
}

fn parse_server_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames must not be masked");
    let (len, h) = match b[1] & 0x7F {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => {
            let mut x = [0u8; 8];
            x.copy_from_slice(b.get(2..10)?);
            (u64::from_be_bytes(x) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if b.len() < h + len {
        return None;
    }
    Some((b[0], b[h..h + len].to_vec(), h + len))
}

/// A hub config with short timers, for tests.
pub fn fast_config() -> HubConfig {
    HubConfig {
        ping_interval: Duration::from_millis(100),
        // Generous against a starved CI machine; the silent-peer test still takes about a second.
        idle_timeout: Duration::from_millis(1000),
        close_timeout: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(2),
        // Webhooks told at once (the flap delay's own tests set it).
        webhook_delay: Duration::ZERO,
        ..HubConfig::default()
    }
}

/// A `wshub.v1` client at `url` (query included) with its `welcome`.
pub async fn connect_v1_welcome(url: &str) -> (Ws, Value) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "wshub.v1".parse().unwrap());
    let (mut ws, res) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    assert_eq!(
        res.headers().get("sec-websocket-protocol").unwrap(),
        "wshub.v1"
    );
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["protocol"], "wshub.v1");
    (ws, welcome)
}

/// A `wshub.v1` client with its connection id (from the welcome).
pub async fn connect_v1(url: &str) -> (Ws, String) {
    let (ws, welcome) = connect_v1_welcome(url).await;
    let id = welcome["connectionId"].as_str().unwrap().to_owned();
    assert_eq!(welcome["shortId"].as_str().unwrap(), &id[..8]);
    (ws, id)
}

/// Sends a `wshub.v1` command and returns its ack or error (skipping other frames).
pub async fn cmd(ws: &mut Ws, c: Value) -> Value {
    send_text(ws, &c.to_string()).await;
    let id = c["id"].clone();
    next_json_where(ws, |v| {
        (v["type"] == "ack" || v["type"] == "error") && v["id"] == id
    })
    .await
}

/// Starts `wshub serve` on port 0 with `extra` options and environment, and returns it with the
/// address it reports in its "listening" log line (no free-port race with other tests).
pub async fn spawn_server_env(
    extra: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, std::net::SocketAddr) {
    // Defined for the wshub package's tests; the bench crate shares this file but not its binary.
    let mut cmd =
        tokio::process::Command::new(option_env!("CARGO_BIN_EXE_wshub").unwrap_or("wshub"));
    cmd.arg("serve");
    if !env.iter().any(|(k, _)| *k == "WSHUB_LISTEN") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = cmd
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("local=") {
                let rest = &line[at + "local=".len()..];
                let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
                let clean: String = rest[..end].chars().filter(|c| !c.is_control()).collect();
                let clean = clean.trim_end_matches("[0m").trim_end_matches('\u{1b}');
                return clean
                    .parse::<std::net::SocketAddr>()
                    .unwrap_or_else(|e| panic!("{line}: {e}"));
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server did not start");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

pub async fn spawn_server(extra: &[&str]) -> (tokio::process::Child, std::net::SocketAddr) {
    spawn_server_env(extra, &[]).await
}

/// The resident memory of a process, in bytes (Linux).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// `hub` as a node of the in-process bus `bus` (heartbeat 100 ms, node TTL 1.5 s), served on
/// its own port once the bus is up.
pub async fn local_node(hub: Hub, bus: &str) -> TestServer {
    hub.connect_backplane(wshub::backplane::BackplaneConfig {
        url: format!("local://{bus}")
            .parse::<wshub::backplane::BackplaneUrl>()
            .unwrap(),
        heartbeat: Duration::from_millis(100),
        node_ttl: Duration::from_millis(1500),
        ..wshub::backplane::BackplaneConfig::default()
    })
    .unwrap();
    let srv = TestServer::with_hub(hub, wshub::server::ServerOptions::default()).await;
    let h = srv.hub.clone();
    tokio::time::timeout(WAIT, async move {
        while !h.cluster().unwrap().is_up() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    srv
}

/// Now, in Unix seconds (what JWT claims count in).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The status an upgrade to `url` is answered with (101: upgraded).
pub async fn upgrade_status_of(url: &str) -> u16 {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok(_)) => 101,
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(res))) => res.status().as_u16(),
        Ok(Err(e)) => panic!("{url}: {e}"),
        Err(_) => panic!("{url}: no answer"),
    }
}

/// Waits (at most 20 s) until the metric line `name` (labels included) reads `value`; a line
/// not there yet counts as not reached.
pub async fn wait_metric(addr: SocketAddr, name: &str, value: f64) {
    let waited = tokio::time::timeout(WAIT * 2, async {
        loop {
            let text = String::from_utf8(http(addr, "GET", "/metrics", &[], b"").await.body)
                .unwrap_or_default();
            let now = text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.parse::<f64>().ok());
            if now == Some(value) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{name} never reached {value}");
}

/// Polls `cond` until it holds (within [`WAIT`]).
pub async fn wait_for(cond: impl Fn() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition not met in time");
}
