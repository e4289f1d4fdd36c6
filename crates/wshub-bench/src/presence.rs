//! `wshub-bench presence`: N authenticated members in one group, then the cost of asking who
//! is there: `presence` pages of 100, whole walks in pages of 1000, `presence_stats`, and the
//! REST view, each timed round trip by round trip. The server must check tokens with the same
//! secret (`--jwt-secret`) and should run with `--silent-groups` for the group (N joins would
//! otherwise send N²/2 `joined` events) and `--announce none`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::BytesMut;
use clap::Args;
use hmac::{Mac, SimpleHmac};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{client, rss_bytes, Common};

/// Options of `bench presence`.
#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    #[command(flatten)]
    pub common: Common,
    /// Members of the group (one process holds at most ~19,900 sockets).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub members: usize,
    /// The server's --jwt-secret (tokens for the members are made with it).
    #[arg(long)]
    pub secret: String,
    /// The group.
    #[arg(long, default_value = "big-room")]
    pub group: String,
    /// Round trips per measure.
    #[arg(long, default_value_t = 200)]
    pub rounds: usize,
    /// Give up connecting after this long.
    #[arg(long, default_value = "180s", value_parser = wshub::config::parse_duration)]
    pub timeout: Duration,
}

/// Latencies of one measure, in microseconds.
#[derive(Debug, Serialize)]
pub struct Timing {
    pub what: String,
    pub rounds: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What `bench presence` measured.
#[derive(Debug, Serialize)]
pub struct PresenceReport {
    pub label: String,
    pub members: usize,
    pub connect_secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_member: Option<f64>,
    pub timings: Vec<Timing>,
}

fn jwt(secret: &str, sub: &str) -> String {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let head = format!(
        "{}.{}",
        b64(&serde_json::json!({"alg": "HS256", "typ": "JWT"})),
        b64(&serde_json::json!({"sub": sub, "exp": exp, "info": {"n": sub}}))
    );
    let sig = SimpleHmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .map(|mut m| {
            m.update(head.as_bytes());
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
        })
        .unwrap_or_default();
    format!("{head}.{sig}")
}

async fn send_text(s: &mut TcpStream, text: &str) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(text.len() + 14);
    client::encode_masked(0x1, text.as_bytes(), [1, 2, 3, 4], &mut out);
    s.write_all(&out).await
}

/// Sends a command and waits for the reply with its id; returns the reply's text.
async fn round_trip(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    id: u64,
    cmd: &str,
) -> Result<String, String> {
    send_text(s, cmd).await.map_err(|e| e.to_string())?;
    let tag = format!("\"id\":{id},");
    loop {
        let mut found = None;
        client::scan_frames(buf, |op, payload| {
            if op == 0x1 && found.is_none() {
                let t = String::from_utf8_lossy(payload);
                if t.contains(&tag) {
                    found = Some(t.into_owned());
                }
            }
        });
        if let Some(t) = found {
            return Ok(t);
        }
        if s.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("the server closed the measuring connection".into());
        }
    }
}

fn timing(what: &str, mut us: Vec<u64>) -> Timing {
    us.sort_unstable();
    let at = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len().saturating_sub(1))];
    Timing {
        what: what.into(),
        rounds: us.len(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: us.last().copied().unwrap_or(0),
    }
}

pub async fn run(a: PresenceArgs) -> Result<PresenceReport, String> {
    if a.members == 0 || a.members > 19_800 || a.rounds == 0 || a.rounds > 10_000 {
        return Err("--members must be 1..19800 and --rounds 1..10000".into());
    }
    let target = client::Target::parse(&a.common.url)?;
    let rss_before = a.common.server_pid.and_then(rss_bytes);
    let started = Instant::now();
    let deadline = started + a.timeout;
    let join = format!(r#"{{"id":1,"type":"join","group":"{}"}}"#, a.group);
    let mut holders = Vec::with_capacity(a.members);
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0usize;
    while holders.len() < a.members {
        if Instant::now() > deadline {
            return Err(format!("only {} members after --timeout", holders.len()));
        }
        while next < a.members && pending.len() < a.common.concurrency.max(1) {
            let t = target.with_path(&format!(
                "{}?access_token={}",
                target.path,
                jwt(&a.secret, &format!("user-{next}"))
            ));
            let join = join.clone();
            pending.spawn(async move {
                let (mut s, _) = client::connect_v1(&t).await?;
                send_text(&mut s, &join).await?;
                Ok::<_, std::io::Error>(s)
            });
            next += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(mut s))) => holders.push(tokio::spawn(async move {
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            })),
            Some(Ok(Err(e))) => return Err(format!("a member could not connect: {e}")),
            Some(Err(e)) => return Err(e.to_string()),
            None => {}
        }
    }
    // Every join applied: the REST view counts them all.
    let stats_path = format!("/api/groups/{}/presence?limit=1", a.group);
    loop {
        let (_, body) = client::http_request(target.addr, "GET", &stats_path, None)
            .await
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if v["connections"].as_u64() == Some(a.members as u64) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the server counts {} present, not {}",
                v["connections"], a.members
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let rss_after = a.common.server_pid.and_then(rss_bytes);
    // The measuring client: not a member itself (it may ask: its token allows every group).
    let t = target.with_path(&format!(
        "{}?access_token={}",
        target.path,
        jwt(&a.secret, "observer")
    ));
    let (mut s, mut buf) = client::connect_v1(&t).await.map_err(|e| e.to_string())?;
    let mut id = 10u64;
    let mut timings = Vec::new();
    for (what, limit, walk) in [
        ("presence page of 100", 100, false),
        ("presence walk, pages of 1000", 1000, true),
    ] {
        let rounds = if walk {
            (a.rounds / 10).max(1)
        } else {
            a.rounds
        };
        let mut us = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t0 = Instant::now();
            let mut cursor: Option<String> = None;
            let mut seen = 0usize;
            loop {
                id += 1;
                let c = match &cursor {
                    Some(c) => format!(
                        r#"{{"id":{id},"type":"presence","group":"{}","limit":{limit},"cursor":"{c}"}}"#,
                        a.group
                    ),
                    None => format!(
                        r#"{{"id":{id},"type":"presence","group":"{}","limit":{limit}}}"#,
                        a.group
                    ),
                };
                let reply = round_trip(&mut s, &mut buf, id, &c).await?;
                let v: serde_json::Value =
                    serde_json::from_str(&reply).map_err(|e| e.to_string())?;
                seen += v["members"].as_array().map_or(0, Vec::len);
                cursor = v["cursor"].as_str().map(str::to_owned);
                if !walk || cursor.is_none() {
                    break;
                }
            }
            if walk && seen != a.members {
                return Err(format!("a walk saw {seen} members, not {}", a.members));
            }
            us.push(t0.elapsed().as_micros() as u64);
        }
        timings.push(timing(what, us));
    }
    let mut us = Vec::with_capacity(a.rounds);
    for _ in 0..a.rounds {
        id += 1;
        let t0 = Instant::now();
        round_trip(
            &mut s,
            &mut buf,
            id,
            &format!(
                r#"{{"id":{id},"type":"presence_stats","group":"{}"}}"#,
                a.group
            ),
        )
        .await?;
        us.push(t0.elapsed().as_micros() as u64);
    }
    timings.push(timing("presence_stats", us));
    let mut us = Vec::with_capacity(a.rounds / 10 + 1);
    let rest = format!("/api/groups/{}/presence?limit=1000", a.group);
    for _ in 0..(a.rounds / 10).max(1) {
        let t0 = Instant::now();
        client::http_request(target.addr, "GET", &rest, None)
            .await
            .map_err(|e| e.to_string())?;
        us.push(t0.elapsed().as_micros() as u64);
    }
    timings.push(timing("REST page of 1000", us));
    for h in holders {
        h.abort();
    }
    Ok(PresenceReport {
        label: a.common.label.clone(),
        members: a.members,
        connect_secs,
        rss_per_member: match (rss_before, rss_after) {
            (Some(b), Some(a2)) if a2 > b => Some((a2 - b) as f64 / a.members as f64),
            _ => None,
        },
        timings,
    })
}
