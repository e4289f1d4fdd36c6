//! `wshub-bench fanout`: N subscribers and one publisher. Every published message carries its
//! sequence number and send time; each subscriber counts deliveries and records latency.
//!
//! Two modes: a fixed rate (`--rate R`, for latency under a stated load) or as fast as a window
//! of messages in flight allows (`--rate 0 --window W`, for maximum deliveries per second;
//! message k is sent once every subscriber has received message k − W).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::{self, encode_masked, parse_marker, scan_frames};
use super::report::{histogram, Percentiles};
use super::{connect_many_with, Common, Report};

/// How the publisher publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// As a WebSocket client on the same endpoint (its text is broadcast as `message`).
    Ws,
    /// Through `POST /api/connections/broadcast` on a keep-alive HTTP connection.
    Rest,
    /// Through Pusher's signed `POST /apps/{id}/events` on the channel `bench` (the
    /// subscribers then connect to `/app/{key}` and subscribe to it).
    Pusher,
}

/// Options of `bench fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages per second; 0 publishes as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages in flight (not yet received by every subscriber) when --rate is 0.
    #[arg(long, default_value_t = 16)]
    pub window: u64,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = wshub::config::parse_duration)]
    pub duration: Duration,
    /// Message text size in bytes (at least the ~24-byte marker).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// What follows the marker in each message: `padding` (the letter x, --size bytes in all),
    /// `chat` (a JSON chat line of about --size bytes: users, words, timestamps) or `feed` (a
    /// small JSON price update; --size is ignored).
    #[arg(long, value_enum, default_value = "padding")]
    pub payload: Payload,
    /// Subscribers offer permessage-deflate (and inflate what arrives compressed).
    #[arg(long)]
    pub deflate: bool,
    /// How the publisher publishes.
    #[arg(long, value_enum, default_value = "ws")]
    pub via: Via,
    /// Where the publisher connects (default: --url). Another node of a cluster measures
    /// cross-node fan-out.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// After publishing stops, how long to wait for deliveries still in flight.
    #[arg(long, default_value = "5s", value_parser = wshub::config::parse_duration)]
    pub grace: Duration,
    /// Give up connecting after this long.
    #[arg(long, default_value = "120s", value_parser = wshub::config::parse_duration)]
    pub timeout: Duration,
    /// With `--via pusher`: the app, `ID:KEY:SECRET` (subscribers connect to /app/KEY).
    #[arg(long, default_value = "1:app-key:app-secret")]
    pub pusher_app: String,
    /// Groups per subscriber (0: plain clients and broadcasts to everyone). With G > 0 every
    /// subscriber connects with `wshub.v1` and joins the groups g0..g(G-1); the publisher
    /// (`--via rest`) publishes to them in turn, so each message reaches every subscriber.
    /// Run the server with `--silent-groups '*'` (no joined events).
    #[arg(long, default_value_t = 0)]
    pub groups: usize,
}

/// What a message carries after its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Payload {
    /// The letter x repeated: compresses to almost nothing, unlike real traffic.
    Padding,
    /// A chat line as JSON text.
    Chat,
    /// A price update as JSON text (50 to 70 bytes).
    Feed,
}

struct Shared {
    epoch: Instant,
    /// Bytes of the frames subscribers received (headers included), as on the wire.
    wire_bytes: AtomicU64,
    /// The same frames' bytes with their payloads inflated.
    plain_bytes: AtomicU64,
    delivered: AtomicU64,
    last_delivery_ns: AtomicU64,
    closed: AtomicU64,
    /// Pusher subscribers whose subscription succeeded.
    subscribed: AtomicU64,
    progress: Notify,
    hist: Mutex<Histogram<u64>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn flush(&self, lats: &mut Vec<u64>) {
        let mut h = self.hist.lock();
        for &l in lats.iter() {
            let _ = h.record(l.max(1));
        }
        lats.clear();
    }
}

async fn subscriber(
    mut stream: TcpStream,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    stop: CancellationToken,
    groups: usize,
) {
    let mut lats: Vec<u64> = Vec::with_capacity(512);
    let mut out = Vec::new();
    let mut acks = 0usize;
    loop {
        buf.reserve(16 * 1024);
        tokio::select! {
            r = stream.read_buf(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
            () = stop.cancelled() => break,
        }
        let now = shared.now_ns();
        let mut n = 0u64;
        let mut closed = false;
        let mut wire = 0u64;
        let mut plain = 0u64;
        scan_frames(&mut buf, |op, p| {
            let header = if p.len() < 126 {
                2
            } else if p.len() < 65536 {
                4
            } else {
                10
            };
            wire += (header + p.len()) as u64;
            let inflated;
            let (op, p) = if op & 0x40 != 0 {
                inflated = wshub::frame::deflate::inflate(p, 1 << 24).unwrap_or_default();
                (op & 0x0F, &inflated[..])
            } else {
                (op, p)
            };
            let header = if p.len() < 126 {
                2
            } else if p.len() < 65536 {
                4
            } else {
                10
            };
            plain += (header + p.len()) as u64;
            match op {
                0x1 => {
                    if let Some((_, t)) = parse_marker(p, b'b') {
                        n += 1;
                        lats.push(now.saturating_sub(t) / 1000);
                    } else if p.starts_with(br#"{"event":"pusher_internal:subscription_succeeded""#)
                    {
                        shared.subscribed.fetch_add(1, Ordering::Relaxed);
                    } else if groups > 0 && p.starts_with(br#"{"type":"ack""#) {
                        acks += 1;
                        if acks == groups {
                            shared.subscribed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                0x9 => encode_masked(0xA, p, [7, 7, 7, 7], &mut out),
                0x8 => closed = true,
                _ => {}
            }
        });
        shared.wire_bytes.fetch_add(wire, Ordering::Relaxed);
        shared.plain_bytes.fetch_add(plain, Ordering::Relaxed);
        if n > 0 {
            shared.delivered.fetch_add(n, Ordering::Relaxed);
            shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
            shared.progress.notify_one();
            if lats.len() >= 512 {
                shared.flush(&mut lats);
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if closed {
            shared.closed.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    shared.flush(&mut lats);
}

fn message(seq: u64, t: u64, size: usize, payload: Payload) -> String {
    let mut m = format!("b:{seq}:{t}:");
    match payload {
        Payload::Padding => {
            while m.len() < size {
                m.push('x');
            }
        }
        Payload::Chat => m.push_str(&chat_line(seq, size.saturating_sub(m.len()))),
        Payload::Feed => {
            const SYMBOLS: [&str; 8] = [
                "AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "AVGO",
            ];
            let r = mix(seq);
            m.push_str(&format!(
                r#"{{"s":"{}","p":{}.{:02},"v":{},"t":{}}}"#,
                SYMBOLS[(r % 8) as usize],
                100 + (r >> 8) % 400,
                (r >> 20) % 100,
                (r >> 32) % 5000,
                1_764_000_000_000 + seq
            ));
        }
    }
    m
}

/// A deterministic, well-mixed number from `x` (splitmix64).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A chat line as JSON of about `size` bytes: a user, a room, words drawn from a small
/// vocabulary (as chat repeats itself), a timestamp. Compresses like real chat text, not like
/// padding.
fn chat_line(seq: u64, size: usize) -> String {
    const WORDS: [&str; 48] = [
        "the", "a", "to", "and", "you", "it", "is", "that", "for", "on", "we", "this", "meeting",
        "deploy", "release", "tomorrow", "today", "thanks", "sounds", "good", "can", "check",
        "build", "failing", "again", "after", "lunch", "I", "think", "so", "yes", "no", "maybe",
        "later", "review", "merged", "branch", "ticket", "customer", "reported", "issue", "fixed",
        "ship", "it", "great", "work", "everyone", "ok",
    ];
    let mut r = mix(seq);
    let mut text = String::new();
    while text.len() + 90 < size.max(100) {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[(r % 48) as usize]);
        r = mix(r);
    }
    format!(
        r#"{{"user":"user-{}","room":"general","text":"{text}","sent_at":"2026-11-30T{:02}:{:02}:{:02}Z","id":{seq}}}"#,
        mix(seq) % 500,
        (seq / 3600) % 24,
        (seq / 60) % 60,
        seq % 60
    )
}

/// Publishes through the WebSocket endpoint; `frames` messages per write.
struct WsPublisher {
    stream: tokio::net::tcp::OwnedWriteHalf,
    _drain: tokio::task::JoinHandle<()>,
    out: Vec<u8>,
}

impl WsPublisher {
    async fn connect(target: &client::Target) -> Result<Self, String> {
        let (stream, _) = client::connect(target, None)
            .await
            .map_err(|e| format!("publisher: {e}"))?;
        let (mut r, w) = stream.into_split();
        // The publisher receives its own echo and broadcast: read and drop them.
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        Ok(Self {
            stream: w,
            _drain: drain,
            out: Vec::new(),
        })
    }

    fn queue(&mut self, text: &str) {
        encode_masked(
            0x1,
            text.as_bytes(),
            [0x11, 0x22, 0x33, 0x44],
            &mut self.out,
        );
    }

    async fn flush(&mut self) -> Result<(), String> {
        let r = self.stream.write_all(&self.out).await;
        self.out.clear();
        r.map_err(|e| format!("publisher write: {e}"))
    }
}

/// Publishes through the REST API, one request at a time on a keep-alive connection.
struct RestPublisher {
    stream: TcpStream,
    addr: std::net::SocketAddr,
    buf: BytesMut,
    pending: Vec<String>,
    /// Groups published to in turn (0: broadcasts to everyone).
    groups: usize,
    next: usize,
}

impl RestPublisher {
    async fn connect(target: &client::Target, groups: usize) -> Result<Self, String> {
        let stream = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("publisher: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            addr: target.addr,
            buf: BytesMut::with_capacity(4096),
            pending: Vec::new(),
            groups,
            next: 0,
        })
    }

    fn queue(&mut self, text: &str) {
        self.pending.push(text.to_owned());
    }

    async fn flush(&mut self) -> Result<(), String> {
        for text in std::mem::take(&mut self.pending) {
            let body = serde_json::json!({ "message": text }).to_string();
            let path = if self.groups == 0 {
                "/api/connections/broadcast".to_owned()
            } else {
                self.next = (self.next + 1) % self.groups;
                format!("/api/groups/g{}/broadcast", self.next)
            };
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                self.addr,
                body.len(),
                body
            );
            self.stream
                .write_all(req.as_bytes())
                .await
                .map_err(|e| format!("publisher write: {e}"))?;
            self.read_response().await?;
        }
        Ok(())
    }

    async fn read_response(&mut self) -> Result<(), String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    return Err(format!(
                        "broadcast refused: {}",
                        head.lines().next().unwrap_or("")
                    ));
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let _ = self.buf.split_to(end + 4 + len);
                    return Ok(());
                }
            }
            if self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("server closed the REST connection".into());
            }
        }
    }
}

/// Publishes through Pusher's HTTP API: a signed trigger per message on the channel `bench`.
struct PusherPublisher {
    rest: RestPublisher,
    app: wshub::apps::App,
}

impl PusherPublisher {
    fn request(&self, text: &str) -> String {
        let path = format!("/apps/{}/events", self.app.id);
        let body =
            serde_json::json!({ "name": "bench", "channel": "bench", "data": text }).to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let params = vec![
            ("auth_key".to_owned(), self.app.key.clone()),
            ("auth_timestamp".to_owned(), now.to_string()),
            ("auth_version".to_owned(), "1.0".to_owned()),
            (
                "body_md5".to_owned(),
                wshub::signing::body_md5(body.as_bytes()),
            ),
        ];
        let sig = wshub::signing::sign(
            &self.app.secret,
            wshub::signing::request_message("POST", &path, &params).as_bytes(),
        );
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "POST {path}?{}&auth_signature={sig} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            query.join("&"),
            self.rest.addr,
            body.len(),
            body
        )
    }

    async fn flush(&mut self) -> Result<(), String> {
        for text in std::mem::take(&mut self.rest.pending) {
            let req = self.request(&text);
            self.rest
                .stream
                .write_all(req.as_bytes())
                .await
                .map_err(|e| format!("publisher write: {e}"))?;
            self.rest.read_response().await?;
        }
        Ok(())
    }
}

/// The `join` commands for the groups g0..g(n-1), as one buffer of frames.
fn joins(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for k in 0..n {
        let text = format!(r#"{{"id":{k},"type":"join","group":"g{k}"}}"#);
        encode_masked(0x1, text.as_bytes(), [1, 2, 3, 4], &mut out);
    }
    out
}

/// The `{"event":"pusher:subscribe",…}` frame a Pusher subscriber sends for `bench`.
fn pusher_subscribe() -> Vec<u8> {
    let mut out = Vec::new();
    let text = r#"{"event":"pusher:subscribe","data":{"channel":"bench"}}"#;
    encode_masked(0x1, text.as_bytes(), [1, 2, 3, 4], &mut out);
    out
}

enum Publisher {
    Ws(WsPublisher),
    Rest(RestPublisher),
    Pusher(PusherPublisher),
}

impl Publisher {
    fn queue(&mut self, text: &str) {
        match self {
            Publisher::Ws(p) => p.queue(text),
            Publisher::Rest(p) => p.queue(text),
            Publisher::Pusher(p) => p.rest.queue(text),
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        match self {
            Publisher::Ws(p) => p.flush().await,
            Publisher::Rest(p) => p.flush().await,
            Publisher::Pusher(p) => p.flush().await,
        }
    }
}

pub async fn run(a: FanoutArgs) -> Result<Report, String> {
    if a.subscribers == 0 || a.subscribers > 19_800 {
        return Err(
            "--subscribers must be 1..19800 (the per-process open-file cap is 20,000)".into(),
        );
    }
    if a.duration > Duration::from_secs(600) {
        return Err("--duration is at most 600s".into());
    }
    if a.groups > 0 && a.via != Via::Rest {
        return Err("--groups publishes through the REST API: add --via rest".into());
    }
    if a.groups > 1000 {
        return Err(
            "--groups is at most 1000 (the server's default --max-groups-per-connection)".into(),
        );
    }
    let target = client::Target::parse(&a.common.url)?.offering_deflate(a.deflate);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        wire_bytes: AtomicU64::new(0),
        plain_bytes: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        subscribed: AtomicU64::new(0),
        progress: Notify::new(),
        hist: Mutex::new(histogram()),
    });
    let stop = CancellationToken::new();

    let connect_started = Instant::now();
    let protocol = (a.groups > 0).then_some("wshub.v1");
    let (conns, errors) =
        connect_many_with(&target, a.subscribers, &a.common, a.timeout, protocol).await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let n = conns.len() as u64;
    let mut tasks = Vec::with_capacity(conns.len());
    let subscribe = if a.groups > 0 {
        Some(joins(a.groups))
    } else {
        (a.via == Via::Pusher).then(pusher_subscribe)
    };
    for (mut stream, buf) in conns {
        if let Some(frame) = &subscribe {
            if let Err(e) = stream.write_all(frame).await {
                return Err(format!("subscribe: {e}"));
            }
        }
        tasks.push(tokio::spawn(subscriber(
            stream,
            buf,
            shared.clone(),
            stop.clone(),
            a.groups,
        )));
    }
    let publish_target = match &a.publish_url {
        Some(url) => client::Target::parse(url)?,
        None => target.clone().offering_deflate(false),
    };
    let mut publisher = match a.via {
        Via::Ws => Publisher::Ws(WsPublisher::connect(&publish_target).await?),
        Via::Rest => Publisher::Rest(RestPublisher::connect(&publish_target, a.groups).await?),
        Via::Pusher => Publisher::Pusher(PusherPublisher {
            rest: RestPublisher::connect(&publish_target, 0).await?,
            app: wshub::apps::App::parse(&a.pusher_app)?,
        }),
    };
    // Let join announcements and handshakes settle before measuring; Pusher subscribers must
    // have their subscription first (what is published before it is not theirs).
    tokio::time::sleep(Duration::from_millis(500)).await;
    if subscribe.is_some() {
        let deadline = Instant::now() + a.timeout;
        while shared.subscribed.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let base_delivered = shared.delivered.load(Ordering::Relaxed);
    let base_wire = shared.wire_bytes.load(Ordering::Relaxed);
    let base_plain = shared.plain_bytes.load(Ordering::Relaxed);

    let cpu = super::CpuMeter::start(a.common.server_pid);
    let start_ns = shared.now_ns();
    let end = Instant::now() + a.duration;
    let mut sent = 0u64;
    let mut ticker =
        (a.rate > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate)));
    let mut error = None;
    while Instant::now() < end && n > 0 {
        let batch = if let Some(t) = ticker.as_mut() {
            t.tick().await;
            1
        } else {
            // Wait until message (sent − window) has reached everyone, then fill the window.
            loop {
                let done = (shared.delivered.load(Ordering::Relaxed) - base_delivered) / n;
                if sent < done + a.window {
                    break done + a.window - sent;
                }
                if tokio::time::timeout_at(end.into(), shared.progress.notified())
                    .await
                    .is_err()
                {
                    break 0;
                }
            }
        };
        for _ in 0..batch {
            publisher.queue(&message(sent, shared.now_ns(), a.size, a.payload));
            sent += 1;
        }
        if let Err(e) = publisher.flush().await {
            error = Some(e);
            break;
        }
    }
    // Wait for what is still in flight.
    let expected = sent * n;
    let grace_end = Instant::now() + a.grace;
    while shared.delivered.load(Ordering::Relaxed) - base_delivered < expected
        && Instant::now() < grace_end
    {
        let _ = tokio::time::timeout_at(grace_end.into(), shared.progress.notified()).await;
    }
    let (server_cores, generator_cores) = cpu.stop();
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let delivered = shared.delivered.load(Ordering::Relaxed) - base_delivered;
    let last = shared
        .last_delivery_ns
        .load(Ordering::Relaxed)
        .max(start_ns + 1);
    let secs = (last - start_ns) as f64 / 1e9;
    let latency = Percentiles::from_histogram(&shared.hist.lock());
    let mut errors = errors;
    errors.extend(error);
    let mode = if a.rate > 0.0 {
        format!("rate={}/s", a.rate)
    } else {
        format!("window={}", a.window)
    };
    Ok(Report {
        bench: "fanout".into(),
        label: a.common.label.clone(),
        connections: a.subscribers,
        connected: n as usize,
        errors,
        connect_secs,
        connect_rate: n as f64 / connect_secs.max(1e-9),
        sent,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        closed_by_server: shared.closed.load(Ordering::Relaxed),
        secs,
        per_sec: delivered as f64 / secs.max(1e-9),
        latency,
        server_cores,
        generator_cores,
        rss_after: a.common.server_pid.and_then(super::rss_bytes),
        wire_bytes: Some(shared.wire_bytes.load(Ordering::Relaxed) - base_wire),
        plain_bytes: Some(shared.plain_bytes.load(Ordering::Relaxed) - base_plain),
        settings: format!(
            "subscribers={} {mode} size={} payload={:?} deflate={} via={:?} groups={} duration={:?} threads={}",
            a.subscribers, a.size, a.payload, a.deflate, a.via, a.groups, a.duration, a.common.threads
        ),
        ..Report::default()
    })
}
