//! `wshub-bench connect`: open N connections, hold them, measure the connect rate and the
//! server's RSS per connection.

use std::time::{Duration, Instant};

use clap::Args;
use tokio::io::AsyncReadExt;

use super::{client, rss_bytes, Common, Report};

/// Options of `bench connect`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open (one process holds at most ~19,900 sockets).
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// How long to hold them before measuring the server's RSS.
    #[arg(long, default_value = "2s", value_parser = wshub::config::parse_duration)]
    pub hold: Duration,
    /// Give up connecting after this long.
    #[arg(long, default_value = "120s", value_parser = wshub::config::parse_duration)]
    pub timeout: Duration,
    /// Offer permessage-deflate (what browsers do).
    #[arg(long)]
    pub deflate: bool,
    /// Ask for this WebSocket subprotocol.
    #[arg(long, value_parser = ["wshub.v1"])]
    pub subprotocol: Option<String>,
}

pub async fn run(a: ConnectArgs) -> Result<Report, String> {
    if a.connections == 0 || a.connections > 19_900 {
        return Err(
            "--connections must be 1..19900 (the per-process open-file cap is 20,000)".into(),
        );
    }
    let target = client::Target::parse(&a.common.url)?.offering_deflate(a.deflate);
    let rss_before = a.common.server_pid.and_then(rss_bytes);
    let cpu = super::CpuMeter::start(a.common.server_pid);
    let started = Instant::now();
    let (conns, errors) = super::connect_many_with(
        &target,
        a.connections,
        &a.common,
        a.timeout,
        a.subprotocol.as_ref().map(|_| "wshub.v1"),
    )
    .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let (server_cores, generator_cores) = cpu.stop();
    // Idle clients still read (and drop) what the server sends, as a real client would; a
    // holder that finishes was closed by the server.
    let opened = conns.len();
    let mut holders = Vec::with_capacity(opened);
    for (mut stream, _) in conns {
        holders.push(tokio::spawn(async move {
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }));
    }
    tokio::time::sleep(a.hold).await;
    let rss_after = a.common.server_pid.and_then(rss_bytes);
    let closed_by_server = holders.iter().filter(|h| h.is_finished()).count();
    let connected = opened - closed_by_server;
    for h in holders {
        h.abort();
    }
    let mut warnings = Vec::new();
    if closed_by_server > 0 {
        warnings.push(format!(
            "{closed_by_server} of {opened} connections were closed by the server while held (slow consumers: with `--announce all`, {opened} clients connecting at once are sent about {} announcements; run the server with `--announce none`), so no memory figure per connection is given",
            opened * opened / 2
        ));
    }
    let rss_per_connection = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 && closed_by_server == 0 => {
            if a < b {
                warnings.push(format!(
                    "the server's RSS fell during the run ({:.1} -> {:.1} MiB: it gave memory back, or it restarted), so no memory figure per connection is given; run it again on a fresh server",
                    b as f64 / 1048576.0,
                    a as f64 / 1048576.0
                ));
                None
            } else {
                Some((a - b) as f64 / connected as f64)
            }
        }
        _ => None,
    };
    Ok(Report {
        bench: "connect".into(),
        label: a.common.label.clone(),
        connections: a.connections,
        connected,
        closed_by_server: closed_by_server as u64,
        warnings,
        errors,
        connect_secs,
        connect_rate: connected as f64 / connect_secs.max(1e-9),
        rss_before,
        rss_after,
        rss_per_connection,
        server_cores,
        generator_cores,
        settings: format!(
            "n={} concurrency={} hold={:?} deflate={}",
            a.connections, a.common.concurrency, a.hold, a.deflate
        ),
        ..Report::default()
    })
}
