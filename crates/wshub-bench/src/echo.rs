//! `wshub-bench echo`: C clients each doing request/response on the echo endpoint, or, with
//! `--broadcast`, on `/ws`: each text message comes back to its sender as an echo envelope and
//! is broadcast to every client (the sender included), so every round trip is also C
//! deliveries, and frames from many senders meet on every socket.

use std::time::{Duration, Instant};

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{self, encode_masked, scan_frames};
use super::report::{histogram, Percentiles};
use super::{connect_many, Common, Report};

/// How a `/ws` echo envelope starts (wshub and the peers put `type` first).
const ECHO: &[u8] = b"{\"type\":\"echo\"";

/// Options of `bench echo`.
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// The endpoint's path (replaces the path of --url): `/ws/echo` by default, `/ws` with
    /// --broadcast.
    #[arg(long)]
    pub path: Option<String>,
    /// Text messages on `/ws`: a round trip ends at the sender's `{"type":"echo"` envelope;
    /// every message is also broadcast to all clients (counted as deliveries).
    #[arg(long)]
    pub broadcast: bool,
    /// Concurrent clients, each with one request in flight.
    #[arg(short = 'c', long, default_value_t = 16)]
    pub clients: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = wshub::config::parse_duration)]
    pub duration: Duration,
    /// Message size in bytes.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
}

pub async fn run(a: EchoArgs) -> Result<Report, String> {
    if a.clients == 0 || a.clients > 10_000 {
        return Err("--clients must be 1..10000".into());
    }
    if a.duration > Duration::from_secs(600) {
        return Err("--duration is at most 600s".into());
    }
    let path = a
        .path
        .clone()
        .unwrap_or_else(|| if a.broadcast { "/ws" } else { "/ws/echo" }.to_owned());
    let target = client::Target::parse(&a.common.url)?.with_path(&path);
    let broadcast = a.broadcast;
    let opcode = if broadcast { 0x1 } else { 0x2 };
    let started = Instant::now();
    let (conns, errors) =
        connect_many(&target, a.clients, &a.common, Duration::from_secs(60)).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = conns.len();
    let payload = vec![b'e'; a.size];
    let cpu = super::CpuMeter::start(a.common.server_pid);
    let begin = Instant::now();
    let end = begin + a.duration;
    let mut tasks = Vec::new();
    for (mut stream, mut buf) in conns {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut frames = 0u64;
            let mut out = Vec::with_capacity(payload.len() + 14);
            while Instant::now() < end {
                out.clear();
                encode_masked(opcode, &payload, [1, 2, 3, 4], &mut out);
                let t = Instant::now();
                if stream.write_all(&out).await.is_err() {
                    break;
                }
                let mut got = false;
                while !got {
                    buf.reserve(4096);
                    match stream.read_buf(&mut buf).await {
                        Ok(n) if n > 0 => {}
                        _ => return (h, frames),
                    }
                    scan_frames(&mut buf, |op, body| {
                        frames += 1;
                        got |= if broadcast {
                            op == 0x1 && body.starts_with(ECHO)
                        } else {
                            op == 0x2
                        };
                    });
                }
                let _ = h.record((t.elapsed().as_micros() as u64).max(1));
            }
            (h, frames)
        }));
    }
    let mut all = histogram();
    let mut frames = 0;
    for t in tasks {
        if let Ok((h, n)) = t.await {
            let _ = all.add(&h);
            frames += n;
        }
    }
    let secs = begin.elapsed().as_secs_f64();
    let (server_cores, generator_cores) = cpu.stop();
    let latency = Percentiles::from_histogram(&all);
    Ok(Report {
        bench: "echo".into(),
        label: a.common.label.clone(),
        connections: a.clients,
        connected,
        errors,
        connect_secs,
        connect_rate: connected as f64 / connect_secs.max(1e-9),
        sent: latency.samples,
        // Every frame received: the echoes, and with --broadcast the broadcasts too.
        delivered: frames,
        secs,
        per_sec: latency.samples as f64 / secs.max(1e-9),
        latency,
        server_cores,
        generator_cores,
        settings: format!(
            "clients={} size={} duration={:?} threads={} path={path} broadcast={broadcast}",
            a.clients, a.size, a.duration, a.common.threads
        ),
        ..Report::default()
    })
}
