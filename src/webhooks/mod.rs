//! Webhooks: what happened, POSTed to the application's backend. Two formats:
//!
//! - **Pusher's**, per app: `{"time_ms": …, "events": [...]}` with `X-Pusher-Key` and
//!   `X-Pusher-Signature` (hex HMAC-SHA256 of the body with the app secret), so the Pusher
//!   server SDKs' webhook validation accepts them;
//! - **wshub's** ([`events`], for `/ws` clients): `{"time_ms": …, "events": [...]}`, each event
//!   with its own `id`, signed as the Standard Webhooks specification says (`webhook-id`,
//!   `webhook-timestamp`, `webhook-signature`; the timestamp is the attempt's, against replay),
//!   so its libraries verify them.
//!
//! Delivery never blocks the hub: [`Webhooks::emit`] puts the event in the target's bounded
//! queue (full: the event is dropped and counted). One task per target sends them in order,
//! batched (what arrives within [`BATCH_WINDOW`], at most [`BATCH_MAX`] events), and retries a
//! batch that failed with a network error, a 5xx or a 429, with exponential backoff and jitter
//! ([`RETRY_FIRST`] doubling, [`ATTEMPTS`] attempts in all), then gives it up; a batch answered
//! with another 4xx is not retried (`rejected`), nor is one answered with a redirect
//! (`redirected`: no redirect is followed, see [`crate::outbound`]). Every outcome is counted in
//! `wshub_webhook_events_total{reason}` and logged. Which node emits an event in a cluster is
//! the hub's business (exactly one does).

pub mod events;
pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::apps::{App, Apps, Webhook};
use crate::metrics::Reason;
pub use events::EventType;

/// Events waiting for one target at most.
pub const QUEUE: usize = 10_000;
/// Events in one POST at most.
pub const BATCH_MAX: usize = 100;
/// How long a batch waits for more events after its first.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// The wait before the first retry (then doubling).
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Attempts per batch, the first included.
pub const ATTEMPTS: u32 = 6;
/// How long one POST may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// wshub's own webhooks: where they go (each with the events it wants, none: all) and the
/// key that signs them ([`crate::signing::webhook_key`]).
#[derive(Clone, Default)]
pub struct Settings {
    /// The targets.
    pub targets: Vec<Webhook>,
    /// The HMAC key of the signatures.
    pub key: Arc<[u8]>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("targets", &self.targets)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .finish()
    }
}

impl Settings {
    /// Checks every target's URL and event names.
    ///
    /// # Errors
    /// A message naming the target and what is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        for t in &self.targets {
            if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
                return Err(format!("webhook `{}`: an http:// or https:// URL", t.url));
            }
            if let Some(e) = t.event_types.iter().find(|e| EventType::parse(e).is_none()) {
                return Err(format!(
                    "webhook `{}`: unknown event `{e}` (known: {})",
                    t.url,
                    events::names()
                ));
            }
        }
        if !self.targets.is_empty() && self.key.len() < 16 {
            return Err(
                "webhooks need --webhook-secret (the key receivers verify their signatures with)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// How a target's batches are signed.
enum Format {
    /// Pusher's, with the app's key and secret.
    Pusher(Arc<App>),
    /// Standard Webhooks, with this key.
    Standard(Arc<[u8]>),
}

/// The webhook targets of every app and of the hub, each with its queue and its sending task.
#[derive(Default)]
pub struct Webhooks {
    apps: HashMap<String, Vec<Target>>,
    hub: Vec<Target>,
    /// The events some hub target wants (one bit each).
    hub_wants: u16,
    node: Arc<str>,
}

struct Target {
    webhook: Webhook,
    tx: mpsc::Sender<Value>,
    /// Batches taken from the queue and not yet delivered, rejected or given up.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Target {
    fn offer(&self, event: Value, name: &str, counter: &Family<Reason, Counter>) {
        let outcome = match self.tx.try_send(event) {
            Ok(()) => "queued",
            Err(_) => {
                tracing::warn!(url = %self.webhook.url, event = %name, "webhook queue full: event dropped");
                "dropped"
            }
        };
        counter.get_or_create(&Reason { reason: outcome }).inc();
    }
}

impl Webhooks {
    /// Starts a sending task per target of `apps` and of `hub` (in the current Tokio runtime;
    /// outside one, there are no targets and events go nowhere).
    pub fn start(
        apps: &Apps,
        hub: &Settings,
        node: Arc<str>,
        counter: Family<Reason, Counter>,
    ) -> Self {
        let none = Self {
            node: node.clone(),
            ..Self::default()
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return none;
        };
        let client = match crate::outbound::client(TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhooks off: no HTTP client");
                return none;
            }
        };
        let spawn = |webhook: &Webhook, format: Format| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            rt.spawn(send_loop(
                client.clone(),
                format,
                webhook.url.clone(),
                rx,
                counter.clone(),
                in_flight.clone(),
            ));
            Target {
                webhook: webhook.clone(),
                tx,
                in_flight,
            }
        };
        let mut out = none;
        for app in apps.all() {
            for w in &app.webhooks {
                let t = spawn(w, Format::Pusher(app.clone()));
                out.apps.entry(app.id.clone()).or_default().push(t);
            }
        }
        for w in &hub.targets {
            out.hub.push(spawn(w, Format::Standard(hub.key.clone())));
            out.hub_wants |= EventType::ALL
                .into_iter()
                .filter(|t| w.wants(t.name()))
                .fold(0, |m, t| m | t.bit());
        }
        out
    }

    /// Whether `app` has a target for events named `name` (so the caller may skip building one).
    pub fn wants(&self, app: &str, name: &str) -> bool {
        self.apps
            .get(app)
            .is_some_and(|ts| ts.iter().any(|t| t.webhook.wants(name)))
    }

    /// Queues `event` (a JSON object with its `name`) for every target of `app` that wants it;
    /// never waits.
    pub fn emit(&self, app: &str, event: Value, counter: &Family<Reason, Counter>) {
        let name = event["name"].as_str().unwrap_or("").to_owned();
        for t in self.apps.get(app).into_iter().flatten() {
            if t.webhook.wants(&name) {
                t.offer(event.clone(), &name, counter);
            }
        }
    }

    /// Waits until every queue is empty and no batch is in flight, or `deadline` passes (a
    /// clean shutdown sends what it can). Returns whether everything went out.
    pub async fn flush(&self, deadline: tokio::time::Instant) -> bool {
        let idle = || {
            self.apps.values().flatten().chain(&self.hub).all(|t| {
                t.tx.capacity() == t.tx.max_capacity()
                    && t.in_flight.load(std::sync::atomic::Ordering::Acquire) == 0
            })
        };
        while !idle() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("webhooks not all sent before the shutdown deadline");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Whether some hub target wants events of type `ty` (a bit test: cheap on every message).
    pub fn hub_wants(&self, ty: EventType) -> bool {
        self.hub_wants & ty.bit() != 0
    }

    /// Queues a wshub event of type `ty` with `data` for every hub target that wants it.
    pub fn emit_hub(&self, ty: EventType, data: Value, counter: &Family<Reason, Counter>) {
        if !self.hub_wants(ty) {
            return;
        }
        let event = events::event(ty, &self.node, data);
        for t in &self.hub {
            if t.webhook.wants(ty.name()) {
                t.offer(event.clone(), ty.name(), counter);
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Format {
    /// The body of a batch, and the headers of an attempt to send it (a Standard Webhooks
    /// signature covers the attempt's timestamp: it is made anew for each).
    fn body(&self, batch: &[Value]) -> String {
        serde_json::json!({ "time_ms": now_ms(), "events": batch }).to_string()
    }

    fn headers(&self, batch_id: &str, body: &str) -> Vec<(&'static str, String)> {
        match self {
            Format::Pusher(app) => vec![
                ("x-pusher-key", app.key.clone()),
                (
                    "x-pusher-signature",
                    crate::signing::sign(&app.secret, body.as_bytes()),
                ),
            ],
            Format::Standard(key) => {
                let ts = now_ms() / 1000;
                vec![
                    ("webhook-id", batch_id.to_owned()),
                    ("webhook-timestamp", ts.to_string()),
                    (
                        "webhook-signature",
                        crate::signing::standard_signature(key, batch_id, ts, body.as_bytes()),
                    ),
                ]
            }
        }
    }
}

async fn send_loop(
    client: reqwest::Client,
    format: Format,
    url: String,
    mut rx: mpsc::Receiver<Value>,
    counter: Family<Reason, Counter>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
) {
    let count = |reason: &'static str, n: usize| {
        counter.get_or_create(&Reason { reason }).inc_by(n as u64);
    };
    while let Some(first) = rx.recv().await {
        in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        send_batch(&client, &format, &url, first, &mut rx, &count).await;
        in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Collects a batch behind `first` and sends it, retrying as the module says.
async fn send_batch(
    client: &reqwest::Client,
    format: &Format,
    url: &str,
    first: Value,
    rx: &mut mpsc::Receiver<Value>,
    count: &impl Fn(&'static str, usize),
) {
    {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < BATCH_MAX {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        let body = format.body(&batch);
        let batch_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let mut wait = RETRY_FIRST;
        for attempt in 1..=ATTEMPTS {
            let mut req = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.clone());
            for (name, value) in format.headers(&batch_id, &body) {
                req = req.header(name, value);
            }
            let retry = match req.send().await {
                Ok(res) if res.status().is_success() => {
                    count("delivered", batch.len());
                    false
                }
                Ok(res) if res.status().is_redirection() => {
                    let to = crate::outbound::location(&res);
                    tracing::error!(%url, status = %res.status(), location = %to, n = batch.len(), "webhook answered with a redirect: not followed, not retried (configure the receiver's real URL)");
                    count("redirected", batch.len());
                    false
                }
                Ok(res) if res.status().is_server_error() || res.status().as_u16() == 429 => {
                    tracing::warn!(%url, status = %res.status(), attempt, "webhook refused for now; retrying");
                    true
                }
                Ok(res) => {
                    tracing::warn!(%url, status = %res.status(), n = batch.len(), "webhook rejected (4xx): not retried");
                    count("rejected", batch.len());
                    false
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, attempt, "webhook not delivered; retrying");
                    true
                }
            };
            if !retry {
                break;
            }
            if attempt == ATTEMPTS {
                tracing::error!(%url, n = batch.len(), attempts = ATTEMPTS, "webhook given up");
                count("given_up", batch.len());
                break;
            }
            count("retried", batch.len());
            // Jitter: 75 % to 125 % of the step.
            let jitter = 0.75 + (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 2000.0;
            tokio::time::sleep(wait.mul_f64(jitter)).await;
            wait *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apps(url: &str) -> Apps {
        let mut app = App::new("1", "k", "s");
        app.webhooks.push(Webhook {
            url: url.to_owned(),
            event_types: vec!["client_event".into()],
        });
        Apps::new(vec![app])
    }

    fn counted(counter: &Family<Reason, Counter>, reason: &'static str) -> u64 {
        counter.get_or_create(&Reason { reason }).get()
    }

    #[tokio::test]
    async fn a_target_that_never_answers_fills_its_queue_and_the_rest_is_dropped() {
        // Accepts connections, never reads nor answers: the sending task waits on its first
        // batch while events keep coming.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let counter = Family::default();
        let hooks = Webhooks::start(
            &apps(&url),
            &Settings::default(),
            "n".into(),
            counter.clone(),
        );
        let event = serde_json::json!({ "name": "client_event", "channel": "c" });
        // Events it does not want are not even queued.
        hooks.emit(
            "1",
            serde_json::json!({ "name": "channel_occupied" }),
            &counter,
        );
        assert_eq!(counted(&counter, "queued"), 0);
        for _ in 0..QUEUE + 2 * BATCH_MAX {
            hooks.emit("1", event.clone(), &counter);
        }
        let dropped = counted(&counter, "dropped");
        assert!(dropped >= BATCH_MAX as u64, "{dropped} dropped");
        assert_eq!(
            counted(&counter, "queued") + dropped,
            (QUEUE + 2 * BATCH_MAX) as u64
        );
        held.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_target_is_retried_then_given_up() {
        // Nothing listens there: every attempt fails at once; the waits between them pass on
        // the paused clock.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let counter = Family::default();
        let hooks = Webhooks::start(
            &apps(&format!("http://127.0.0.1:{port}/")),
            &Settings::default(),
            "n".into(),
            counter.clone(),
        );
        hooks.emit(
            "1",
            serde_json::json!({ "name": "client_event", "channel": "c" }),
            &counter,
        );
        for _ in 0..10_000 {
            if counted(&counter, "given_up") == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(counted(&counter, "given_up"), 1);
        assert_eq!(counted(&counter, "retried"), u64::from(ATTEMPTS - 1));
        assert_eq!(counted(&counter, "delivered"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_flush_waits_for_the_queues_but_not_past_its_deadline() {
        let counter = Family::default();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let hooks = Webhooks::start(
            &apps(&format!("http://127.0.0.1:{port}/")),
            &Settings::default(),
            "n".into(),
            counter.clone(),
        );
        let now = tokio::time::Instant::now;
        // Nothing queued: done at once.
        assert!(hooks.flush(now() + Duration::from_secs(5)).await);
        // A batch being retried against a dead target: given up on at the deadline.
        hooks.emit(
            "1",
            serde_json::json!({ "name": "client_event", "channel": "c" }),
            &counter,
        );
        let deadline = now() + Duration::from_secs(3);
        assert!(!hooks.flush(deadline).await);
        assert!(now() >= deadline && now() < deadline + Duration::from_secs(1));
    }
}
