//! The load generator (connect, fanout, echo). Loopback only, bounded in count
//! and time, efficient enough not to be the bottleneck: raw TCP, masked frames written by hand,
//! server frames scanned in place, latencies batched into one HDR histogram.

#[path = "client.rs"]
mod client;
#[path = "connect.rs"]
mod connect;
#[path = "echo.rs"]
mod echo;
#[path = "fanout.rs"]
mod fanout;
#[path = "presence.rs"]
mod presence;
#[path = "report.rs"]
mod report;
#[path = "soak.rs"]
mod soak;

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Subcommand};

pub use report::Report;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Open and hold N connections; report the connect rate and the server's RSS per connection.
    Connect(connect::ConnectArgs),
    /// N subscribers, one publisher: deliveries/s and delivery latency.
    Fanout(fanout::FanoutArgs),
    /// Request/response round trips on /ws/echo: round trips/s and RTT.
    Echo(echo::EchoArgs),
    /// A bounded soak: churn, groups, broadcasts; then checks the server returned to baseline.
    Soak(soak::SoakArgs),
    /// N members in one group: the cost of `presence`, `presence_stats` and the REST view.
    Presence(presence::PresenceArgs),
}

/// Options every benchmark shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The server's WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:5289/ws")]
    pub url: String,
    /// Source addresses to spread client connections over (past ~28k ports per address),
    /// e.g. 127.0.0.1,127.0.0.2.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<IpAddr>,
    /// Worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Connections opened at once while connecting.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// A label for the report (e.g. the server's name).
    #[arg(long, default_value = "wshub")]
    pub label: String,
    /// The server's pid: its RSS and CPU time are read from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

impl BenchCommand {
    fn common(&self) -> &Common {
        match self {
            BenchCommand::Connect(a) => &a.common,
            BenchCommand::Fanout(a) => &a.common,
            BenchCommand::Echo(a) => &a.common,
            BenchCommand::Soak(a) => &a.common,
            BenchCommand::Presence(a) => &a.common,
        }
    }
}

/// Runs a benchmark on its own runtime and prints its report.
pub fn run(cmd: BenchCommand) -> Result<(), String> {
    // Sockets are files: take the hard limit (20,000 here; root cannot raise it further).
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("bench: cannot raise the open-file limit: {e}");
    }
    let common = cmd.common().clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    if let BenchCommand::Soak(a) = cmd {
        let r = rt.block_on(soak::run(a))?;
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
        );
        return if r.pass {
            Ok(())
        } else {
            Err(format!("soak failed: {}", r.problems.join("; ")))
        };
    }
    if let BenchCommand::Presence(a) = cmd {
        let r = rt.block_on(presence::run(a))?;
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let report = rt.block_on(async move {
        match cmd {
            BenchCommand::Connect(a) => connect::run(a).await,
            BenchCommand::Fanout(a) => fanout::run(a).await,
            BenchCommand::Echo(a) => echo::run(a).await,
            BenchCommand::Soak(_) | BenchCommand::Presence(_) => {
                Err("unreachable: handled above".into())
            }
        }
    })?;
    if common.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        println!("{}", report.human());
    }
    Ok(())
}

/// Connects `n` clients with at most `concurrency` handshakes in flight, spreading them over
/// the source addresses. Returns the established streams (with leftover bytes) and the errors.
async fn connect_many(
    target: &client::Target,
    n: usize,
    common: &Common,
    deadline: Duration,
) -> (Vec<(tokio::net::TcpStream, bytes::BytesMut)>, Vec<String>) {
    connect_many_with(target, n, common, deadline, None).await
}

/// [`connect_many`], asking every client for the subprotocol `protocol`.
pub(crate) async fn connect_many_with(
    target: &client::Target,
    n: usize,
    common: &Common,
    deadline: Duration,
    protocol: Option<&'static str>,
) -> (Vec<(tokio::net::TcpStream, bytes::BytesMut)>, Vec<String>) {
    use futures_util::stream::{self, StreamExt};
    let sources = common.sources.clone();
    let results: Vec<_> = tokio::time::timeout(
        deadline,
        stream::iter(0..n)
            .map(|i| {
                let src = (!sources.is_empty()).then(|| sources[i % sources.len()]);
                let target = target.clone();
                async move { client::connect_with(&target, src, protocol).await }
            })
            .buffer_unordered(common.concurrency.max(1))
            .collect(),
    )
    .await
    .unwrap_or_default();
    let mut ok = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(c) => ok.push(c),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if ok.len() + errors.len() < n {
        errors.push(format!(
            "{} connections not made within {deadline:?}",
            n - ok.len() - errors.len()
        ));
    }
    (ok, errors)
}

/// CPU seconds (user + system) used so far by a process, from /proc.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Measures CPU used by the server and by this generator over a span of time.
pub(crate) struct CpuMeter {
    pid: Option<u32>,
    server0: Option<f64>,
    self0: Option<f64>,
    started: std::time::Instant,
}

impl CpuMeter {
    pub(crate) fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            server0: pid.and_then(cpu_secs),
            self0: cpu_secs(std::process::id()),
            started: std::time::Instant::now(),
        }
    }

    /// (server cores, generator cores) used on average since `start`.
    pub(crate) fn stop(&self) -> (Option<f64>, Option<f64>) {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let server = match (self.server0, self.pid.and_then(cpu_secs)) {
            (Some(a), Some(b)) => Some((b - a) / wall),
            _ => None,
        };
        let gen = match (self.self0, cpu_secs(std::process::id())) {
            (Some(a), Some(b)) => Some((b - a) / wall),
            _ => None,
        };
        (server, gen)
    }
}

/// A server's resident set size in bytes, from /proc.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
