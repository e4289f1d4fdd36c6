//! Webhooks in Pusher's format: what happened in an app's channels, POSTed to its targets as
//! `{"time_ms": …, "events": [...]}` with `X-Pusher-Key` and `X-Pusher-Signature` (hex
//! HMAC-SHA256 of the body with the app secret), so the Pusher server SDKs' webhook validation
//! accepts them.
//!
//! Delivery never blocks the hub: [`Webhooks::emit`] puts the event in the target's bounded
//! queue (full: the event is dropped and counted). One task per target sends them in order,
//! batched (what arrives within [`BATCH_WINDOW`], at most [`BATCH_MAX`] events), and retries a
//! batch that failed with a network error, a 5xx or a 429, with exponential backoff and jitter
//! ([`RETRY_FIRST`] doubling, [`ATTEMPTS`] attempts in all), then gives it up; a batch answered
//! with another 4xx is not retried (`rejected`). Every outcome is counted in
//! `wshub_webhook_events_total{reason}` and logged. Which node emits an event in a cluster is
//! the hub's business (exactly one does).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::apps::{App, Apps, Webhook};
use crate::metrics::Reason;

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

/// The webhook targets of every app, each with its queue and its sending task.
#[derive(Default)]
pub struct Webhooks {
    targets: HashMap<String, Vec<Target>>,
}

struct Target {
    webhook: Webhook,
    tx: mpsc::Sender<Value>,
}

impl Webhooks {
    /// Starts a sending task per target of `apps` (in the current Tokio runtime; outside one,
    /// there are no targets and events go nowhere).
    pub fn start(apps: &Apps, counter: Family<Reason, Counter>) -> Self {
        let mut targets: HashMap<String, Vec<Target>> = HashMap::new();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Self::default();
        };
        let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhooks off: no HTTP client");
                return Self::default();
            }
        };
        for app in apps.all() {
            for w in &app.webhooks {
                let (tx, rx) = mpsc::channel(QUEUE);
                rt.spawn(send_loop(
                    client.clone(),
                    app.clone(),
                    w.url.clone(),
                    rx,
                    counter.clone(),
                ));
                targets.entry(app.id.clone()).or_default().push(Target {
                    webhook: w.clone(),
                    tx,
                });
            }
        }
        Self { targets }
    }

    /// Whether `app` has a target for events named `name` (so the caller may skip building one).
    pub fn wants(&self, app: &str, name: &str) -> bool {
        self.targets
            .get(app)
            .is_some_and(|ts| ts.iter().any(|t| t.webhook.wants(name)))
    }

    /// Queues `event` (a JSON object with its `name`) for every target of `app` that wants it;
    /// never waits.
    pub fn emit(&self, app: &str, event: Value, counter: &Family<Reason, Counter>) {
        let name = event["name"].as_str().unwrap_or("").to_owned();
        for t in self.targets.get(app).into_iter().flatten() {
            if !t.webhook.wants(&name) {
                continue;
            }
            let outcome = match t.tx.try_send(event.clone()) {
                Ok(()) => "queued",
                Err(_) => {
                    tracing::warn!(app, url = %t.webhook.url, event = %name, "webhook queue full: event dropped");
                    "dropped"
                }
            };
            counter.get_or_create(&Reason { reason: outcome }).inc();
        }
    }
}

/// The body and signature of a batch.
pub fn sign_batch(app: &App, events: &[Value], time_ms: u64) -> (String, String) {
    let body = serde_json::json!({ "time_ms": time_ms, "events": events }).to_string();
    let signature = crate::signing::sign(&app.secret, body.as_bytes());
    (body, signature)
}

async fn send_loop(
    client: reqwest::Client,
    app: Arc<App>,
    url: String,
    mut rx: mpsc::Receiver<Value>,
    counter: Family<Reason, Counter>,
) {
    let count = |reason: &'static str, n: usize| {
        counter.get_or_create(&Reason { reason }).inc_by(n as u64);
    };
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < BATCH_MAX {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (body, signature) = sign_batch(&app, &batch, time_ms);
        let mut wait = RETRY_FIRST;
        for attempt in 1..=ATTEMPTS {
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-pusher-key", &app.key)
                .header("x-pusher-signature", &signature)
                .body(body.clone())
                .send()
                .await;
            let retry = match sent {
                Ok(res) if res.status().is_success() => {
                    count("delivered", batch.len());
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
        let hooks = Webhooks::start(&apps(&url), counter.clone());
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
        let hooks = Webhooks::start(&apps(&format!("http://127.0.0.1:{port}/")), counter.clone());
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
}
