//! Benchmark reports: one struct for every benchmark, printed for humans or as JSON.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    /// Samples recorded.
    pub samples: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

impl Percentiles {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        Self {
            samples: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    fn human(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  ({} samples)",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.samples
        )
    }
}

/// What a benchmark measured. Fields that do not apply are absent from the JSON.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// `connect`, `fanout` or `echo`.
    pub bench: String,
    /// The label given on the command line.
    pub label: String,
    /// Connections requested.
    pub connections: usize,
    /// Connections that completed the handshake.
    pub connected: usize,
    /// Connection errors (first few messages).
    pub errors: Vec<String>,
    /// Seconds to open all connections.
    pub connect_secs: f64,
    /// Connections per second.
    pub connect_rate: f64,
    /// Server RSS before and after, and per connection (bytes), when a server pid was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_connection: Option<f64>,
    /// Messages published (fanout) or round trips made (echo).
    pub sent: u64,
    /// Deliveries expected (sent × subscribers).
    pub expected: u64,
    /// Deliveries seen.
    pub delivered: u64,
    /// expected − delivered.
    pub lost: u64,
    /// Subscribers closed by the server during the run.
    pub closed_by_server: u64,
    /// Seconds the measurement ran.
    pub secs: f64,
    /// Deliveries (fanout) or round trips (echo) per second.
    pub per_sec: f64,
    /// Delivery latency (fanout) or round-trip time (echo).
    pub latency: Percentiles,
    /// Average CPU cores the server used while measuring (from /proc, when its pid was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cores: Option<f64>,
    /// Average CPU cores this generator used while measuring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_cores: Option<f64>,
    /// Bytes of the frames subscribers received while measuring, as on the wire (fanout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire_bytes: Option<u64>,
    /// The same frames with their payloads inflated: what they would have been uncompressed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_bytes: Option<u64>,
    /// The settings, for the record.
    pub settings: String,
    /// Why a figure is missing or must be read with care.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Report {
    /// A readable summary.
    pub fn human(&self) -> String {
        let mut out = format!("{} [{}] {}\n", self.bench, self.label, self.settings);
        out += &format!(
            "  connections: {}/{} in {:.2} s ({:.0}/s)\n",
            self.connected, self.connections, self.connect_secs, self.connect_rate
        );
        if let (Some(b), Some(a), Some(p)) =
            (self.rss_before, self.rss_after, self.rss_per_connection)
        {
            out += &format!(
                "  server RSS: {:.1} MiB -> {:.1} MiB = {:.0} bytes per connection\n",
                b as f64 / 1048576.0,
                a as f64 / 1048576.0,
                p
            );
        }
        if self.bench == "fanout" {
            out += &format!(
                "  sent {} messages; deliveries expected {}, delivered {}, lost {}; closed by server {}\n",
                self.sent, self.expected, self.delivered, self.lost, self.closed_by_server
            );
            out += &format!(
                "  {:.0} deliveries/s over {:.2} s\n",
                self.per_sec, self.secs
            );
            out += &format!("  latency: {}\n", self.latency.human());
            if let (Some(w), Some(p)) = (self.wire_bytes, self.plain_bytes) {
                let per = |b: u64| b as f64 / self.delivered.max(1) as f64;
                out += &format!(
                    "  wire: {:.1} bytes per delivery ({:.1} uncompressed, ratio {:.2})\n",
                    per(w),
                    per(p),
                    p as f64 / w.max(1) as f64
                );
            }
            if let Some(c) = self.server_cores {
                out += &format!(
                    "  server CPU: {:.2} µs per delivery\n",
                    c * self.secs * 1e6 / self.delivered.max(1) as f64
                );
            }
        } else if self.bench == "echo" {
            out += &format!(
                "  {} round trips, {:.0}/s over {:.2} s; {:.0} frames received/s\n",
                self.sent,
                self.per_sec,
                self.secs,
                self.delivered as f64 / self.secs.max(1e-9)
            );
            out += &format!("  rtt: {}\n", self.latency.human());
        }
        if self.server_cores.is_some() || self.generator_cores.is_some() {
            let f = |c: Option<f64>| c.map_or("?".to_owned(), |c| format!("{c:.2}"));
            out += &format!(
                "  cpu: server {} cores, generator {} cores\n",
                f(self.server_cores),
                f(self.generator_cores)
            );
        }
        for e in self.errors.iter().take(5) {
            out += &format!("  error: {e}\n");
        }
        for w in &self.warnings {
            out += &format!("  warning: {w}\n");
        }
        out
    }
}

/// A histogram of microseconds up to one minute, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|e| panic!("constant histogram bounds are valid: {e}"))
}
