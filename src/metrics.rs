//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! Every metric is an atomic updated on the hot path (a relaxed add); rendering walks the
//! registry. One [`Metrics`] per hub, no global recorder, so several hubs (tests, embedding
//! applications) never mix their numbers.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why (a close reason's label, `dropped`, `io_error`, …).
    pub reason: &'static str,
}

/// Labels of an authorization hook call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// `connect`, `join` or `publish`.
    pub hook: &'static str,
    /// `allow`, `deny`, `replace`, `cached`, `timeout`, `error` (not reached, 5xx),
    /// `invalid` (an answer that is not one).
    pub outcome: &'static str,
}

/// Labels of what a delivery policy did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `drop-oldest` or `keep-latest`.
    pub policy: &'static str,
    /// The group pattern of the rule.
    pub pattern: String,
    /// `dropped` (drop-oldest), `conflated` (keep-latest), `gap` (a `gap` frame sent).
    pub outcome: &'static str,
}

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template, e.g. `/api/groups/{group}`.
    pub route: String,
    /// The method.
    pub method: String,
    /// The status code.
    pub status: u16,
}

/// The hub's metrics.
pub struct Metrics {
    registry: Registry,
    /// Open `/ws` connections.
    pub connections: Gauge,
    /// `/ws` connections accepted.
    pub connects: Counter,
    /// `/ws` connections ended, by reason.
    pub disconnects: Family<Reason, Counter>,
    /// Data messages received from clients (all endpoints).
    pub messages_in: Counter,
    /// Payload bytes received from clients.
    pub bytes_in: Counter,
    /// Frames queued for delivery (one per recipient).
    pub deliveries: Counter,
    /// Bytes queued for delivery.
    pub bytes_out: Counter,
    /// Frames not delivered, by reason (`slow_consumer`, `closed`).
    pub drops: Family<Reason, Counter>,
    /// Connections closed because their outbound queue overflowed.
    pub slow_consumers: Counter,
    /// Times a connection stopped reading its input while its own replies waited to be
    /// written (reply backpressure: a pipelining client slowed down, not closed).
    pub input_holds: Counter,
    /// HTTP session requests (POSTs, polls, DELETEs) that reached this node and were relayed
    /// to the session's node over the backplane.
    pub relayed: Counter,
    /// REST requests by route, method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// 1 while the backplane is reachable (always 1 for the in-memory backplane).
    pub backplane_up: Gauge,
    /// Always 1, labelled with this node's id.
    pub node_info: Family<NodeLabel, Gauge>,
    /// Backplane trouble by kind: `disconnected`, `publish_failed` (delivered locally only),
    /// `gap_filled` (missed bus messages fetched from the shared history).
    pub backplane_events: Family<Reason, Counter>,
    /// Webhook events by outcome: `queued`, `delivered`, `retried`, `rejected` (a 4xx answer:
    /// not retried), `redirected` (a 3xx answer: not followed, not retried), `given_up` (retries exhausted), `dropped` (the target's queue was full).
    pub webhook_events: Family<Reason, Counter>,
    /// Authorization hook calls by hook and outcome.
    pub hook_calls: Family<HookLabels, Counter>,
    /// How long authorization hooks took to answer (or fail).
    pub hook_seconds: Histogram,
    /// Time from a publication entering the hub to its frames being written to every
    /// connection that could take them at once (frames that had to wait for a slow socket are
    /// not in it).
    pub fanout_seconds: Histogram,
    /// Open `/ws/echo` connections.
    pub echo_connections: Gauge,
    /// `/ws/echo` connections accepted.
    pub echo_connects: Counter,
    /// Bytes queued for `/ws` connections and not yet written (set when rendered).
    pub outbound_queued_bytes: Gauge,
    /// Bytes of history kept across every stream (set when rendered).
    pub history_bytes: Gauge,
    /// Group streams kept (set when rendered).
    pub history_streams: Gauge,
    /// Messages evicted from history to keep within its byte budget.
    pub history_evicted: Counter,
    /// Publications waiting for the backplane's engine (set when rendered).
    pub backplane_queue: Gauge,
    /// `permessage-deflate` counters.
    pub deflate: DeflateMetrics,
    /// Messages a delivery policy dropped or replaced for slow readers, and gaps sent.
    pub delivery_policy: Family<PolicyLabels, Counter>,
}

/// What compression did: messages compressed once each, frames sent compressed per recipient.
#[derive(Clone, Debug, Default)]
pub struct DeflateMetrics {
    /// Messages compressed (once per publication and protocol, whatever the recipients).
    pub compressions: Counter,
    /// Payload bytes given to the compressor (for the messages it made smaller).
    pub input_bytes: Counter,
    /// Payload bytes it produced.
    pub output_bytes: Counter,
    /// Frames that went out compressed (one per recipient).
    pub frames_sent: Counter,
    /// Client messages that arrived compressed.
    pub inflated: Counter,
}

impl DeflateMetrics {
    /// One message compressed: its frame of `plain` bytes became one of `packed` bytes.
    pub fn compressed(&self, plain: usize, packed: usize) {
        self.compressions.inc();
        self.input_bytes.inc_by(plain as u64);
        self.output_bytes.inc_by(packed as u64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `wshub_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wshub");
        let m = Self {
            connections: Gauge::default(),
            connects: Counter::default(),
            disconnects: Family::default(),
            messages_in: Counter::default(),
            bytes_in: Counter::default(),
            deliveries: Counter::default(),
            bytes_out: Counter::default(),
            drops: Family::default(),
            slow_consumers: Counter::default(),
            input_holds: Counter::default(),
            relayed: Counter::default(),
            http_requests: Family::default(),
            backplane_up: Gauge::default(),
            node_info: Family::default(),
            backplane_events: Family::default(),
            webhook_events: Family::default(),
            hook_calls: Family::default(),
            // 1 ms … ~6.5 s
            hook_seconds: Histogram::new(exponential_buckets(0.001, 3.0, 9)),
            // 10 µs … ~5 s
            fanout_seconds: Histogram::new(exponential_buckets(0.000_01, 3.0, 13)),
            echo_connections: Gauge::default(),
            echo_connects: Counter::default(),
            outbound_queued_bytes: Gauge::default(),
            history_bytes: Gauge::default(),
            history_streams: Gauge::default(),
            history_evicted: Counter::default(),
            backplane_queue: Gauge::default(),
            deflate: DeflateMetrics::default(),
            delivery_policy: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "delivery_policy_messages",
            "Messages a delivery policy dropped (drop-oldest) or replaced (keep-latest) for slow readers, and gap frames sent, by rule",
            m.delivery_policy.clone(),
        );
        registry.register(
            "deflate_compressions",
            "Messages compressed with permessage-deflate (once per publication, whatever the recipients)",
            m.deflate.compressions.clone(),
        );
        registry.register(
            "deflate_input_bytes",
            "Payload bytes compressed",
            m.deflate.input_bytes.clone(),
        );
        registry.register(
            "deflate_output_bytes",
            "Compressed bytes produced from them",
            m.deflate.output_bytes.clone(),
        );
        registry.register(
            "deflate_frames_sent",
            "Frames sent compressed (one per recipient)",
            m.deflate.frames_sent.clone(),
        );
        registry.register(
            "deflate_messages_inflated",
            "Client messages received compressed",
            m.deflate.inflated.clone(),
        );
        registry.register(
            "backplane_queue",
            "Publications waiting for the backplane's engine (limit: the queue size)",
            m.backplane_queue.clone(),
        );
        registry.register(
            "echo_connections",
            "Open WebSocket connections on /ws/echo",
            m.echo_connections.clone(),
        );
        registry.register(
            "echo_connects",
            "WebSocket connections accepted on /ws/echo",
            m.echo_connects.clone(),
        );
        registry.register(
            "outbound_queued_bytes",
            "Bytes queued for /ws connections and not yet written",
            m.outbound_queued_bytes.clone(),
        );
        registry.register(
            "history_bytes",
            "Bytes of history kept across every stream (budget: --history-max-bytes)",
            m.history_bytes.clone(),
        );
        registry.register(
            "history_streams",
            "Group streams kept (limit: --max-groups)",
            m.history_streams.clone(),
        );
        registry.register(
            "history_evicted",
            "Messages evicted from history to keep within its byte budget",
            m.history_evicted.clone(),
        );
        registry.register(
            "connections",
            "Open WebSocket connections on /ws",
            m.connections.clone(),
        );
        registry.register(
            "connects",
            "WebSocket connections accepted on /ws",
            m.connects.clone(),
        );
        registry.register(
            "disconnects",
            "WebSocket connections ended, by reason",
            m.disconnects.clone(),
        );
        registry.register(
            "messages_in",
            "Data messages received from clients",
            m.messages_in.clone(),
        );
        registry.register(
            "bytes_in",
            "Payload bytes received from clients",
            m.bytes_in.clone(),
        );
        registry.register(
            "deliveries",
            "Frames queued for delivery, one per recipient",
            m.deliveries.clone(),
        );
        registry.register(
            "bytes_out",
            "Bytes queued for delivery",
            m.bytes_out.clone(),
        );
        registry.register("drops", "Frames not delivered, by reason", m.drops.clone());
        registry.register(
            "slow_consumer_closes",
            "Connections closed because their outbound queue overflowed",
            m.slow_consumers.clone(),
        );
        registry.register(
            "input_holds",
            "Times a connection stopped reading its input while its own replies waited to be written (reply backpressure)",
            m.input_holds.clone(),
        );
        registry.register(
            "relayed_requests",
            "HTTP session requests relayed to the session's node over the backplane (no sticky sessions)",
            m.relayed.clone(),
        );
        registry.register(
            "http_requests",
            "REST requests by route, method and status",
            m.http_requests.clone(),
        );
        registry.register(
            "backplane_up",
            "1 while the backplane is reachable",
            m.backplane_up.clone(),
        );
        registry.register(
            "backplane_events",
            "Backplane events: disconnected, publish_failed, gap_filled, queue_full",
            m.backplane_events.clone(),
        );
        registry.register(
            "webhook_events",
            "Webhook events (Pusher and wshub formats): queued, delivered, retried, rejected, redirected, given_up, dropped",
            m.webhook_events.clone(),
        );
        registry.register(
            "hook_calls",
            "Authorization hook calls by hook (connect, join, publish) and outcome",
            m.hook_calls.clone(),
        );
        registry.register(
            "hook_seconds",
            "How long authorization hooks took to answer",
            m.hook_seconds.clone(),
        );
        registry.register(
            "node_info",
            "This node's id in the cluster (value always 1)",
            m.node_info.clone(),
        );
        registry.register(
            "fanout_seconds",
            "Time from a publication entering the hub to its frames being written to every connection that could take them",
            m.fanout_seconds.clone(),
        );
        m.backplane_up.set(1);
        Self { registry, ..m }
    }

    /// The counters of a delivery policy rule.
    pub fn policy_meter(&self, policy: &'static str, pattern: &str) -> (Counter, Counter, Counter) {
        let get = |outcome| {
            self.delivery_policy
                .get_or_create(&PolicyLabels {
                    policy,
                    pattern: pattern.to_owned(),
                    outcome,
                })
                .clone()
        };
        (get("dropped"), get("conflated"), get("gap"))
    }

    /// Counts a frame offered to `delivered` connections, of `dropped_slow` and `dropped_closed`
    /// that could not take it.
    pub fn delivered(
        &self,
        frame_len: usize,
        delivered: usize,
        dropped_slow: usize,
        dropped_closed: usize,
    ) {
        if delivered > 0 {
            self.deliveries.inc_by(delivered as u64);
            self.bytes_out.inc_by((frame_len * delivered) as u64);
        }
        if dropped_slow > 0 {
            self.slow_consumers.inc_by(dropped_slow as u64);
            self.drops
                .get_or_create(&Reason {
                    reason: "slow_consumer",
                })
                .inc_by(dropped_slow as u64);
        }
        if dropped_closed > 0 {
            self.drops
                .get_or_create(&Reason { reason: "closed" })
                .inc_by(dropped_closed as u64);
        }
    }

    /// Records a fan-out's duration.
    pub fn fanout(&self, took: Duration) {
        self.fanout_seconds.observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.connects.inc();
        m.delivered(100, 3, 1, 1);
        m.fanout(Duration::from_micros(50));
        m.disconnects
            .get_or_create(&Reason { reason: "normal" })
            .inc();
        let text = m.render();
        for needle in [
            "wshub_connects_total 1",
            "wshub_deliveries_total 3",
            "wshub_bytes_out_total 300",
            "wshub_slow_consumer_closes_total 1",
            "wshub_drops_total{reason=\"closed\"} 1",
            "wshub_disconnects_total{reason=\"normal\"} 1",
            "wshub_backplane_up 1",
            "wshub_fanout_seconds_count 1",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing in:\n{text}");
        }
    }
}

/// The `node` label of `wshub_node_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct NodeLabel {
    /// The node id.
    pub node: String,
}
