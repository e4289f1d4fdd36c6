//! `wshub-bench soak`: a bounded soak. Connections churn (connect with `wshub.v1`, join groups,
//! publish, leave, close cleanly or drop abruptly), stable subscribers count every message
//! published to their group over REST, and the server's RSS and open file descriptors are
//! sampled; at the end every client leaves and the server must return to its baseline: no
//! connection, no group, file descriptors back, memory back near where it started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::client::{self, encode_masked, parse_marker, scan_frames, Target};
use super::{rss_bytes, Common};

/// Options of `bench soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub common: Common,
    /// How long to churn.
    #[arg(long, default_value = "60s", value_parser = wshub::config::parse_duration)]
    pub duration: Duration,
    /// Connections that churn in a loop.
    #[arg(long, default_value_t = 300)]
    pub churners: usize,
    /// Connections that stay for the whole run and count every stable-group message.
    #[arg(long, default_value_t = 50)]
    pub stable: usize,
    /// Groups the churners pick from.
    #[arg(long, default_value_t = 20)]
    pub groups: usize,
    /// REST publications per second to the stable group.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
}

/// The soak's findings.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    /// Churn cycles completed (connect … close).
    pub cycles: u64,
    /// Messages the churners published.
    pub churn_messages: u64,
    /// Messages published to the stable group over REST.
    pub stable_sent: u64,
    /// stable_sent × stable subscribers.
    pub stable_expected: u64,
    /// What the stable subscribers received.
    pub stable_delivered: u64,
    /// Server RSS (bytes): before, highest seen, and after every client left.
    pub rss_baseline: u64,
    pub rss_peak: u64,
    pub rss_end: u64,
    /// Server open file descriptors before and after.
    pub fds_baseline: usize,
    pub fds_end: usize,
    /// Connections and groups the server still listed after everyone left.
    pub connections_left: u64,
    pub groups_left: u64,
    /// Whether everything reconciled and returned to baseline.
    pub pass: bool,
    /// What did not.
    pub problems: Vec<String>,
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A tiny deterministic generator (xorshift), so runs do not need a random crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

async fn send_cmd(s: &mut tokio::net::TcpStream, cmd: &str) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(cmd.len() + 14);
    encode_masked(0x1, cmd.as_bytes(), [9, 8, 7, 6], &mut out);
    s.write_all(&out).await
}

/// Reads and drops frames for `d` (answering nothing: acks and deliveries are just drained).
async fn drain_for(s: &mut tokio::net::TcpStream, buf: &mut BytesMut, d: Duration) -> bool {
    let end = tokio::time::Instant::now() + d;
    loop {
        buf.reserve(8192);
        match tokio::time::timeout_at(end, s.read_buf(buf)).await {
            Err(_) => return true,
            Ok(Ok(n)) if n > 0 => scan_frames(buf, |_, _| {}),
            _ => return false,
        }
    }
}

async fn churner(
    target: Target,
    seed: u64,
    groups: usize,
    stop: CancellationToken,
    cycles: Arc<AtomicU64>,
    msgs: Arc<AtomicU64>,
) {
    let mut rng = Rng(seed | 1);
    while !stop.is_cancelled() {
        let Ok((mut s, mut buf)) = client::connect_v1(&target).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut ok = true;
        let mut joined = Vec::new();
        for i in 0..1 + rng.below(3) {
            let g = format!("soak-{}", rng.below(groups));
            ok &= send_cmd(
                &mut s,
                &format!(r#"{{"id":"j{i}","type":"join","group":"{g}"}}"#),
            )
            .await
            .is_ok();
            joined.push(g);
        }
        for i in 0..rng.below(6) {
            let g = &joined[rng.below(joined.len())];
            let cmd =
                format!(r#"{{"id":"p{i}","type":"publish","group":"{g}","message":{{"n":{i}}}}}"#);
            ok &= send_cmd(&mut s, &cmd).await.is_ok();
            msgs.fetch_add(1, Ordering::Relaxed);
        }
        ok &= drain_for(
            &mut s,
            &mut buf,
            Duration::from_millis(20 + rng.below(300) as u64),
        )
        .await;
        match rng.below(4) {
            // Abrupt: drop the socket with no closing handshake.
            0 => drop(s),
            // Polite: leave a group, then a Close frame, then wait for the server's.
            _ if ok => {
                let _ = send_cmd(
                    &mut s,
                    &format!(r#"{{"id":"l","type":"leave","group":"{}"}}"#, joined[0]),
                )
                .await;
                let mut out = Vec::new();
                encode_masked(0x8, &1000u16.to_be_bytes(), [1, 1, 1, 1], &mut out);
                let _ = s.write_all(&out).await;
                drain_for(&mut s, &mut buf, Duration::from_millis(500)).await;
            }
            _ => {}
        }
        cycles.fetch_add(1, Ordering::Relaxed);
    }
}

async fn stable_subscriber(
    target: Target,
    stop: CancellationToken,
    got: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let (mut s, mut buf) = client::connect_v1(&target).await?;
    send_cmd(&mut s, r#"{"id":1,"type":"join","group":"soak-stable"}"#).await?;
    let mut pongs = Vec::new();
    loop {
        buf.reserve(8192);
        tokio::select! {
            r = s.read_buf(&mut buf) => if !matches!(r, Ok(n) if n > 0) { return Ok(()) },
            () = stop.cancelled() => return Ok(()),
        }
        scan_frames(&mut buf, |op, p| match op {
            0x1 if parse_marker(p, b's').is_some() => {
                got.fetch_add(1, Ordering::Relaxed);
            }
            0x9 => encode_masked(0xA, p, [3, 3, 3, 3], &mut pongs),
            _ => {}
        });
        if !pongs.is_empty() {
            s.write_all(&pongs).await?;
            pongs.clear();
        }
    }
}

pub async fn run(a: SoakArgs) -> Result<SoakReport, String> {
    let pid = a
        .common
        .server_pid
        .ok_or("--server-pid is required: the soak checks the server's memory and files")?;
    if a.duration > Duration::from_secs(3600) || a.churners + a.stable > 10_000 {
        return Err("a soak is bounded: --duration ≤ 3600s, churners + stable ≤ 10000".into());
    }
    let target = Target::parse(&a.common.url)?;
    let rss_baseline = rss_bytes(pid).ok_or("cannot read the server's RSS")?;
    let fds_baseline = fds(pid);
    let stop = CancellationToken::new();
    let stable_got = Arc::new(AtomicU64::new(0));
    let mut stable = Vec::new();
    for _ in 0..a.stable {
        stable.push(tokio::spawn(stable_subscriber(
            target.clone(),
            stop.clone(),
            stable_got.clone(),
        )));
    }
    // Let the stable subscribers join before anything is published to them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cycles = Arc::new(AtomicU64::new(0));
    let msgs = Arc::new(AtomicU64::new(0));
    let churn_stop = CancellationToken::new();
    let mut churners = Vec::new();
    for i in 0..a.churners {
        churners.push(tokio::spawn(churner(
            target.clone(),
            0x9E37_79B9_7F4A_7C15 ^ i as u64,
            a.groups,
            churn_stop.clone(),
            cycles.clone(),
            msgs.clone(),
        )));
    }
    let started = Instant::now();
    let mut rss_peak = rss_baseline;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate.max(0.1)));
    let mut last_sample = Instant::now();
    while started.elapsed() < a.duration {
        tick.tick().await;
        let body = format!(r#"{{"message":"s:{sent}:0"}}"#);
        if let Ok((200, _)) = client::http_request(
            target.addr,
            "POST",
            "/api/groups/soak-stable/broadcast",
            Some(&body),
        )
        .await
        {
            sent += 1;
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            rss_peak = rss_peak.max(rss_bytes(pid).unwrap_or(0));
            last_sample = Instant::now();
        }
    }
    churn_stop.cancel();
    for c in churners {
        let _ = c.await;
    }
    // Give the last publications time to arrive, then everyone leaves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    for s in stable {
        let _ = s.await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;

    let count = |path: &'static str| async move {
        let (_, body) = client::http_request(target.addr, "GET", path, None)
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        v["count"].as_u64()
    };
    let connections_left = count("/api/connections").await.unwrap_or(u64::MAX);
    let groups_left = count("/api/groups").await.unwrap_or(u64::MAX);
    let rss_end = rss_bytes(pid).unwrap_or(0);
    let fds_end = fds(pid);
    let stable_expected = sent * a.stable as u64;
    let stable_delivered = stable_got.load(Ordering::Relaxed);
    let mut problems = Vec::new();
    if stable_delivered != stable_expected {
        problems.push(format!(
            "stable subscribers got {stable_delivered} of {stable_expected} messages"
        ));
    }
    if connections_left != 0 {
        problems.push(format!("{connections_left} connections still listed"));
    }
    if groups_left != 0 {
        problems.push(format!("{groups_left} groups still listed"));
    }
    if fds_end > fds_baseline + 2 {
        problems.push(format!("open files {fds_baseline} -> {fds_end}"));
    }
    // Allocators keep some freed memory; a leak shows as growth proportional to the churn.
    let growth = rss_end.saturating_sub(rss_baseline);
    if growth > (rss_peak.saturating_sub(rss_baseline)) / 2 + 8 * 1024 * 1024 {
        problems.push(format!("RSS stayed at {rss_end} after the clients left (baseline {rss_baseline}, peak {rss_peak})"));
    }
    Ok(SoakReport {
        cycles: cycles.load(Ordering::Relaxed),
        churn_messages: msgs.load(Ordering::Relaxed),
        stable_sent: sent,
        stable_expected,
        stable_delivered,
        rss_baseline,
        rss_peak,
        rss_end,
        fds_baseline,
        fds_end,
        connections_left,
        groups_left,
        pass: problems.is_empty(),
        problems,
    })
}
