//! Authorization hooks: the hub asks the application's backend, and waits for its answer,
//! whether a connection may open (`connect`), join a group (`join`) or publish a message
//! (`publish`, which may also replace the message). Each is opt-in, by URL; `join` and
//! `publish` only for the groups matching their patterns.
//!
//! A hook is a POST of JSON, signed like wshub's webhooks (Standard Webhooks headers), answered
//! with JSON within `--hook-timeout`. **Fail-closed**: no answer in time, a network error, a
//! status other than 2xx, a body that is not the JSON expected (or larger than
//! [`MAX_ANSWER`]) is a refusal, logged with its cause and counted in
//! `wshub_hook_calls_total{hook, outcome}`. A `join` answer may say how long it holds
//! (`ttl`, seconds): the hub then reuses it for that user and group without asking (a bounded
//! cache). Nothing is cached for `connect` (cookies change) or `publish` (messages do).
//!
//! Who waits: a `connect` hook holds the upgrade request (no connection exists yet); a `join` or
//! `publish` hook holds that one connection's next commands (they keep their order), never
//! another connection, never the hub.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::metrics::HookLabels;

/// The largest answer read from a hook.
pub const MAX_ANSWER: usize = 64 * 1024;
/// Join decisions cached at most (past it, the cache is emptied).
pub const CACHE_MAX: usize = 100_000;
/// The longest a `join` answer may be cached.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// The close code of a refused connection when the backend names none.
pub const DENY_CODE: u16 = 4403;
/// The close code when the `connect` hook failed (no answer, a network error, a 5xx): try
/// again later (RFC 6455 registry).
pub const UNAVAILABLE_CODE: u16 = 1013;
/// The close code when the `connect` hook answered something unusable (a 4xx, bad JSON).
pub const BROKEN_CODE: u16 = 1011;

/// A hook's URL and the groups it is asked about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    /// Where it is POSTed.
    pub url: String,
    /// Group patterns (exact names, or prefixes ending in `*`) it is asked about.
    pub groups: Vec<String>,
}

impl Route {
    /// Whether this hook is asked about `group`.
    pub fn covers(&self, group: &str) -> bool {
        self.groups
            .iter()
            .any(|p| crate::protocol::group_matches(p, group))
    }
}

/// Which hooks are asked, and how.
#[derive(Clone)]
pub struct Settings {
    /// Asked when a `/ws` client connects without a token.
    pub connect: Option<String>,
    /// Asked when a `wshub.v1` client joins a group it covers.
    pub join: Option<Route>,
    /// Asked when a `wshub.v1` client publishes to a group it covers.
    pub publish: Option<Route>,
    /// How long an answer may take.
    pub timeout: Duration,
    /// Request headers passed to the `connect` hook (lowercase names).
    pub headers: Vec<String>,
    /// The HMAC key its requests are signed with.
    pub key: Arc<[u8]>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect: None,
            join: None,
            publish: None,
            timeout: Duration::from_secs(2),
            headers: default_headers(),
            key: Arc::from(Vec::new()),
        }
    }
}

/// The request headers a `connect` hook gets unless told otherwise.
pub fn default_headers() -> Vec<String> {
    [
        "cookie",
        "authorization",
        "origin",
        "user-agent",
        "x-forwarded-for",
        "x-real-ip",
    ]
    .map(str::to_owned)
    .to_vec()
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("connect", &self.connect)
            .field("join", &self.join)
            .field("publish", &self.publish)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .finish()
    }
}

impl Settings {
    /// Whether any hook is asked.
    pub fn any(&self) -> bool {
        self.connect.is_some() || self.join.is_some() || self.publish.is_some()
    }

    /// Checks the URLs and that requests can be signed.
    ///
    /// # Errors
    /// A message naming the hook and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let urls = [
            ("connect", self.connect.as_deref()),
            ("join", self.join.as_ref().map(|r| r.url.as_str())),
            ("publish", self.publish.as_ref().map(|r| r.url.as_str())),
        ];
        for (name, url) in urls {
            if let Some(u) = url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(format!("--{name}-hook `{u}`: an http:// or https:// URL"));
                }
            }
        }
        if self.any() && self.key.len() < 16 {
            return Err(
                "authorization hooks need --webhook-secret (the key their requests are signed with)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What a hook decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<T> {
    /// Allowed, with what the answer added.
    Allow(T),
    /// Refused by the backend, with its reason (and for `connect`, the close code).
    Deny {
        /// The close code (`connect`; 4000–4999).
        code: u16,
        /// Why, as the backend said it (at most 123 bytes are kept: a close reason's room).
        reason: String,
    },
    /// No usable answer: refused (fail-closed). `code` is [`UNAVAILABLE_CODE`] or
    /// [`BROKEN_CODE`].
    Failed {
        /// The close code for a `connect`.
        code: u16,
        /// What went wrong (logged; not told to the client).
        why: String,
    },
}

/// Who a `connect` hook admitted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Admitted {
    /// The user id.
    pub user: Option<Arc<str>>,
    /// What the backend says about the user (JSON), for presence.
    pub info: Option<Arc<str>>,
    /// The group patterns the connection may join (`None`: every group).
    pub groups: Option<Arc<[String]>>,
}

/// What a `connect` hook is told of the upgrade request.
pub struct ConnectRequest<'a> {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// The request's path.
    pub path: &'a str,
    /// The query string, decoded.
    pub query: Vec<(String, String)>,
    /// The request's headers.
    pub headers: &'a http::HeaderMap,
    /// `wshub.v1` or `plain`.
    pub protocol: &'static str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectAnswer {
    allow: bool,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinAnswer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    ttl: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishAnswer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// A cached `join` answer: allowed, the reason if not, until when it holds.
type Cached = (bool, String, Instant);

/// The hooks, their HTTP client, the join cache and their metrics.
pub struct Hooks {
    settings: Settings,
    client: Option<reqwest::Client>,
    cache: Mutex<HashMap<(Arc<str>, String), Cached>>,
    calls: Family<HookLabels, Counter>,
    seconds: Histogram,
}

/// A close reason fits in 123 bytes: cut at a character boundary.
fn clip(mut s: String) -> String {
    if s.len() > 123 {
        let mut end = 123;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Hooks {
    /// The hooks `settings` names (no HTTP client is made when there are none).
    pub fn new(settings: Settings, calls: Family<HookLabels, Counter>, seconds: Histogram) -> Self {
        let client = settings
            .any()
            .then(|| crate::outbound::client(settings.timeout))
            .and_then(|c| {
                c.map_err(|e| tracing::error!(error = %e, "authorization hooks: no HTTP client"))
                    .ok()
            });
        Self {
            settings,
            client,
            cache: Mutex::default(),
            calls,
            seconds,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether a `connect` hook is asked.
    pub fn asks_connect(&self) -> bool {
        self.settings.connect.is_some()
    }

    /// Whether joining `group` asks the `join` hook.
    pub fn asks_join(&self, group: &str) -> bool {
        self.settings.join.as_ref().is_some_and(|r| r.covers(group))
    }

    /// Whether publishing to `group` asks the `publish` hook.
    pub fn asks_publish(&self, group: &str) -> bool {
        self.settings
            .publish
            .as_ref()
            .is_some_and(|r| r.covers(group))
    }

    /// Asks the `connect` hook about an upgrade request.
    pub async fn connect(&self, req: ConnectRequest<'_>) -> Verdict<Admitted> {
        let Some(url) = self.settings.connect.clone() else {
            return Verdict::Allow(Admitted::default());
        };
        let headers: serde_json::Map<String, Value> = self
            .settings
            .headers
            .iter()
            .filter_map(|name| {
                let values: Vec<&str> = req
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                (!values.is_empty()).then(|| (name.clone(), Value::from(values.join(", "))))
            })
            .collect();
        let query: serde_json::Map<String, Value> = req
            .query
            .into_iter()
            .filter(|(k, _)| k != "access_token")
            .map(|(k, v)| (k, Value::from(v)))
            .collect();
        let body = json!({
            "type": "connect",
            "remote": req.remote.map(|r| r.to_string()),
            "path": req.path,
            "query": query,
            "headers": headers,
            "protocol": req.protocol,
        });
        let answer: ConnectAnswer = match self.ask("connect", &url, &body).await {
            Ok(a) => a,
            Err(failed) => return failed,
        };
        if !answer.allow {
            let code = answer
                .code
                .filter(|c| (4000..=4999).contains(c))
                .unwrap_or(DENY_CODE);
            return self.denied(
                "connect",
                code,
                answer.reason.unwrap_or_else(|| "refused".into()),
            );
        }
        let user = answer.user.filter(|u| !u.is_empty());
        if user.as_ref().is_some_and(|u| u.len() > 256) {
            return self.broken("connect", "`user` is longer than 256 bytes".into());
        }
        self.count("connect", "allow");
        Verdict::Allow(Admitted {
            user: user.map(Arc::from),
            info: answer.info.map(|i| Arc::from(i.get())),
            groups: answer.groups.map(Arc::from),
        })
    }

    /// Asks the `join` hook whether `connection` (of `user`) may join `group`, unless a cached
    /// answer for that user and group still holds.
    pub async fn join(&self, connection: &str, user: Option<&str>, group: &str) -> Verdict<()> {
        let Some(route) = self.settings.join.clone() else {
            return Verdict::Allow(());
        };
        if let Some(user) = user {
            let key = (Arc::<str>::from(user), group.to_owned());
            let cached = self.cache.lock().get(&key).cloned();
            if let Some((allow, reason, until)) = cached {
                if until > Instant::now() {
                    self.count("join", "cached");
                    return if allow {
                        Verdict::Allow(())
                    } else {
                        Verdict::Deny {
                            code: DENY_CODE,
                            reason,
                        }
                    };
                }
            }
        }
        let body =
            json!({ "type": "join", "connection": connection, "user": user, "group": group });
        let answer: JoinAnswer = match self.ask("join", &route.url, &body).await {
            Ok(a) => a,
            Err(failed) => return failed,
        };
        let reason = clip(answer.reason.unwrap_or_else(|| "refused".into()));
        if let (Some(user), Some(ttl)) = (user, answer.ttl.filter(|t| *t > 0)) {
            let until = Instant::now() + Duration::from_secs(ttl).min(MAX_TTL);
            let mut cache = self.cache.lock();
            if cache.len() >= CACHE_MAX {
                let now = Instant::now();
                cache.retain(|_, (_, _, t)| *t > now);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(
                (Arc::from(user), group.to_owned()),
                (answer.allow, reason.clone(), until),
            );
        }
        if answer.allow {
            self.count("join", "allow");
            Verdict::Allow(())
        } else {
            self.denied("join", DENY_CODE, reason)
        }
    }

    /// Asks the `publish` hook about a message to `group`: allowed as it is (`None`), allowed
    /// replaced by other JSON (`Some`), or refused.
    pub async fn publish(
        &self,
        connection: &str,
        user: Option<&str>,
        group: &str,
        data: &RawValue,
    ) -> Verdict<Option<Box<RawValue>>> {
        let Some(route) = self.settings.publish.clone() else {
            return Verdict::Allow(None);
        };
        let body = json!({
            "type": "publish",
            "connection": connection,
            "user": user,
            "group": group,
            "data": data,
        });
        let answer: PublishAnswer = match self.ask("publish", &route.url, &body).await {
            Ok(a) => a,
            Err(failed) => return failed,
        };
        if answer.allow {
            self.count(
                "publish",
                if answer.data.is_some() {
                    "replace"
                } else {
                    "allow"
                },
            );
            Verdict::Allow(answer.data)
        } else {
            self.denied(
                "publish",
                DENY_CODE,
                answer.reason.unwrap_or_else(|| "refused".into()),
            )
        }
    }

    fn count(&self, hook: &'static str, outcome: &'static str) {
        self.calls
            .get_or_create(&HookLabels { hook, outcome })
            .inc();
    }

    fn denied<T>(&self, hook: &'static str, code: u16, reason: String) -> Verdict<T> {
        self.count(hook, "deny");
        Verdict::Deny {
            code,
            reason: clip(reason),
        }
    }

    fn broken<T>(&self, hook: &'static str, why: String) -> Verdict<T> {
        tracing::warn!(hook, %why, "authorization hook: unusable answer, refused (fail-closed)");
        self.count(hook, "invalid");
        Verdict::Failed {
            code: BROKEN_CODE,
            why,
        }
    }

    /// POSTs `body` (signed) to `url` and reads the JSON answer, at most [`MAX_ANSWER`] bytes.
    async fn ask<A: for<'de> Deserialize<'de>, T>(
        &self,
        hook: &'static str,
        url: &str,
        body: &Value,
    ) -> Result<A, Verdict<T>> {
        let unavailable = |why: String| {
            tracing::warn!(hook, %url, %why, "authorization hook failed, refused (fail-closed)");
            Verdict::Failed {
                code: UNAVAILABLE_CODE,
                why,
            }
        };
        let Some(client) = &self.client else {
            self.count(hook, "error");
            return Err(unavailable("no HTTP client".into()));
        };
        let body = body.to_string();
        let id = format!("hk_{}", uuid::Uuid::new_v4().simple());
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature =
            crate::signing::standard_signature(&self.settings.key, &id, ts, body.as_bytes());
        let started = Instant::now();
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let read = match sent {
            Ok(res) if res.status().is_success() => read_capped(res).await,
            Ok(res) if res.status().is_redirection() => Err(Failure::Broken(format!(
                "answered {} (a redirect to {}): redirects are not followed",
                res.status(),
                crate::outbound::location(&res)
            ))),
            Ok(res) if res.status().is_server_error() || res.status().as_u16() == 429 => {
                Err(Failure::Unavailable(format!("answered {}", res.status())))
            }
            Ok(res) => Err(Failure::Broken(format!("answered {}", res.status()))),
            Err(e) if e.is_timeout() => Err(Failure::Timeout),
            Err(e) => Err(Failure::Unavailable(format!("not reached: {e}"))),
        };
        self.seconds.observe(started.elapsed().as_secs_f64());
        let (outcome, why) = match read {
            Ok(bytes) => {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| self.broken(hook, format!("not the answer expected: {e}")))
            }
            Err(Failure::Broken(why)) => return Err(self.broken(hook, why)),
            Err(Failure::Timeout) => (
                "timeout",
                format!("no answer within {:?}", self.settings.timeout),
            ),
            Err(Failure::Unavailable(why)) => ("error", why),
        };
        self.count(hook, outcome);
        Err(unavailable(why))
    }
}

/// Why a hook gave no usable answer.
enum Failure {
    /// None in time.
    Timeout,
    /// Not reached, a 5xx or a 429.
    Unavailable(String),
    /// An answer that is not one (another status, too large).
    Broken(String),
}

/// Reads a response body, refusing one over [`MAX_ANSWER`].
async fn read_capped(mut res: reqwest::Response) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    loop {
        match res.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > MAX_ANSWER {
                    return Err(Failure::Broken(format!(
                        "an answer over {MAX_ANSWER} bytes"
                    )));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) if e.is_timeout() => return Err(Failure::Timeout),
            Err(e) => return Err(Failure::Unavailable(format!("answer cut short: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_their_patterns_and_reasons_fit_a_close_frame() {
        let r = Route {
            url: "http://x".into(),
            groups: vec!["private-*".into(), "exact".into()],
        };
        assert!(r.covers("private-a") && r.covers("exact"));
        assert!(!r.covers("exactly") && !r.covers("public"));
        assert_eq!(clip("é".repeat(100)).len(), 122);
        let mut s = Settings {
            connect: Some("ftp://x".into()),
            ..Settings::default()
        };
        assert!(s.validate().unwrap_err().contains("--connect-hook"));
        s.connect = Some("http://x".into());
        assert!(s.validate().unwrap_err().contains("--webhook-secret"));
        s.key = Arc::from(vec![0u8; 16]);
        assert!(s.validate().is_ok());
    }
}
