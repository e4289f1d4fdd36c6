//! Command-line configuration: every option is a flag and a `WSHUB_*` environment variable
//! (flags win), with its default shown in `--help`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::hub::HubConfig;

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of `wshub serve`. Each is a flag, a `WSHUB_*` variable and a key of the
/// configuration file (`max_message_size` or `max-message-size`), in that precedence.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct ServeArgs {
    /// A TOML file with any of these options (flags and environment variables win over it).
    #[arg(long, env = "WSHUB_CONFIG")]
    #[serde(skip)]
    pub config: Option<std::path::PathBuf>,

    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,

    /// Address and port to listen on.
    #[arg(long, env = "WSHUB_LISTEN", default_value = "127.0.0.1:5289")]
    #[serde(serialize_with = "ser_display")]
    pub listen: SocketAddr,

    /// Interval between keep-alive Pings to each client (e.g. 30s, 500ms).
    #[arg(long, env = "WSHUB_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub ping_interval: Duration,

    /// A client that sends nothing (no frame, no Pong) for this long is closed and removed.
    #[arg(long, env = "WSHUB_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,

    /// Largest message a client may send on /ws (e.g. 65536, 64KiB, 1MiB); larger closes with 1009.
    #[arg(long, env = "WSHUB_MAX_MESSAGE_SIZE", default_value = "64KiB", value_parser = parse_size)]
    #[serde(serialize_with = "ser_size")]
    pub max_message_size: usize,

    /// Serve the /ws/echo diagnostics endpoint (`false`: it answers 404); it counts against --max-connections and the rate limit like /ws.
    #[arg(long, env = "WSHUB_ECHO_ENDPOINT", default_value_t = true, action = clap::ArgAction::Set)]
    pub echo_endpoint: bool,

    /// Largest message accepted on the /ws/echo diagnostics endpoint.
    #[arg(long, env = "WSHUB_ECHO_MAX_MESSAGE_SIZE", default_value = "16MiB", value_parser = parse_size)]
    #[serde(serialize_with = "ser_size")]
    pub echo_max_message_size: usize,

    /// Frames a client may have queued for sending before it is closed as a slow consumer (1008).
    #[arg(long, env = "WSHUB_SEND_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub send_queue: u32,

    /// Bytes a client may have queued for sending, not yet written, before it is closed as a slow consumer (1008); one message larger than this still goes through an empty queue.
    #[arg(long, env = "WSHUB_MAX_SEND_BUFFER", default_value = "1MiB", value_parser = parse_size)]
    #[serde(serialize_with = "ser_size")]
    pub max_send_buffer: usize,

    /// Every connect and disconnect announced to all plain clients: `all` (as the original; a storm of N connects costs N²/2 frames, each held to the receiver's --max-send-buffer) or `none`.
    #[arg(long, env = "WSHUB_ANNOUNCE", default_value = "all")]
    pub announce: Announce,

    /// Groups one connection may be a member of at once.
    #[arg(long, env = "WSHUB_MAX_GROUPS_PER_CONNECTION", default_value_t = 1000)]
    pub max_groups_per_connection: usize,

    /// Connections on /ws beyond which upgrades are refused with 503 (default: no limit).
    #[arg(long, env = "WSHUB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Event loops, each a thread (default: one per CPU core). A connection stays on the loop
    /// that took it; loops fill one after the other (1,024 connections, or half busy), so a
    /// lightly loaded hub runs on one. Fewer than the cores when the machine is shared with
    /// other busy processes: see docs/BENCHMARKS.md.
    #[arg(long, env = "WSHUB_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// Inbound messages per second allowed per /ws connection (token bucket; default: unlimited).
    #[arg(long, env = "WSHUB_MAX_MESSAGES_PER_SECOND")]
    pub max_messages_per_second: Option<f64>,

    /// Messages a connection may send in a burst above the rate (default: the rate, at least 1).
    #[arg(long, env = "WSHUB_BURST")]
    pub burst: Option<u32>,

    /// What happens to a message over the rate: `error` (dropped, error frame) or `close` (1008).
    #[arg(long, env = "WSHUB_RATE_LIMIT_ACTION", default_value = "error")]
    pub rate_limit_action: RateAction,

    /// Messages kept per group (and for the all-clients stream) so reconnecting clients recover what they missed; 0 keeps none.
    #[arg(long, env = "WSHUB_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,

    /// How long a message stays in history; a group without members is forgotten this long after its last message.
    #[arg(long, env = "WSHUB_HISTORY_TTL", default_value = "5m", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub history_ttl: Duration,

    /// Bytes of history kept across all groups and the all-clients stream; past it the oldest messages go first.
    #[arg(long, env = "WSHUB_HISTORY_MAX_BYTES", default_value = "64MiB", value_parser = parse_size)]
    #[serde(serialize_with = "ser_size")]
    pub history_max_bytes: usize,

    /// Groups the hub keeps at once (with their history); a join or publish that would make one more is refused.
    #[arg(long, env = "WSHUB_MAX_GROUPS", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_groups: u32,

    /// Where nodes meet: `memory` (a single node), `redis://host:port[/db]` or `nats://host:port` (JetStream on; several nodes share it); `local://name` is an in-process bus for hubs embedded in one process.
    #[arg(long, env = "WSHUB_BACKPLANE", default_value = "memory")]
    #[serde(serialize_with = "ser_display")]
    pub backplane: crate::backplane::BackplaneUrl,

    /// This node's id in a cluster (default: random), shown in listings and metrics: 1 to 64 of A-Z a-z 0-9 _ - .
    #[arg(long, env = "WSHUB_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// How long a node's connection entries outlive its last heartbeat in the backplane.
    #[arg(long, env = "WSHUB_NODE_TTL", default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub node_ttl: Duration,

    /// Largest REST request body (larger gets 413).
    #[arg(long, env = "WSHUB_MAX_REQUEST_BODY", default_value = "1MiB", value_parser = parse_size)]
    #[serde(serialize_with = "ser_size")]
    pub max_request_body: usize,

    /// How long a closing handshake may take before the socket is dropped.
    #[arg(long, env = "WSHUB_CLOSE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub close_timeout: Duration,

    /// On SIGINT/SIGTERM, how long to drain queues and finish closing handshakes before exiting.
    #[arg(long, env = "WSHUB_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_timeout: Duration,

    /// How long a client may take to send its HTTP request headers.
    #[arg(long, env = "WSHUB_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub handshake_timeout: Duration,

    /// How long a client may take to send a whole request, body included (slower gets 408 and the connection is closed).
    #[arg(long, env = "WSHUB_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub request_timeout: Duration,

    /// REST API key: every /api/* call then needs `Authorization: Bearer <key>`.
    #[arg(long, env = "WSHUB_API_KEY", hide_env_values = true)]
    #[serde(serialize_with = "ser_secret")]
    pub api_key: Option<String>,

    /// HS256 secret (at least 32 bytes): WebSocket upgrades then need a valid JWT.
    #[arg(long, env = "WSHUB_JWT_SECRET", hide_env_values = true)]
    #[serde(serialize_with = "ser_secret")]
    pub jwt_secret: Option<String>,

    /// Clock skew tolerated when checking a token's `exp` and `nbf` (e.g. 5s, 0s for none).
    #[arg(long, env = "WSHUB_JWT_LEEWAY", default_value = "5s", value_parser = parse_leeway)]
    #[serde(serialize_with = "ser_duration")]
    pub jwt_leeway: Duration,

    /// PEM file with an RSA or EC P-256 public key: WebSocket upgrades then need a valid RS256/ES256 JWT.
    #[arg(long, env = "WSHUB_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// Origins allowed to open WebSockets (comma-separated, e.g. `https://app.example.com`); others get 403.
    #[arg(long, env = "WSHUB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// PEM certificate chain: serve https:// and wss:// on the same port (with --tls-key).
    #[arg(long, env = "WSHUB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "WSHUB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// A Pusher app as ID:KEY:SECRET (repeatable; in a file, `[[apps]]` tables with `id`, `key`, `secret` and limits). Without any, one development app (id `1`, key `app-key`, secret `app-secret`) is served.
    #[arg(long = "app", env = "WSHUB_APP", value_parser = crate::apps::App::parse)]
    pub apps: Vec<crate::apps::App>,

    /// Send every webhook event (Pusher format: channel_occupied/vacated, member_added/removed, client_event) of every app to this URL (repeatable).
    #[arg(long = "app-webhook", env = "WSHUB_APP_WEBHOOK")]
    pub app_webhooks: Vec<String>,

    /// Send wshub's webhook events (connection.opened/closed, group.occupied/vacated, group.joined/left, message.received, node.lost; see docs/HOOKS.md) to this URL (repeatable; in a file, `[[webhooks]]` tables with `url` and `event_types`). Needs --webhook-secret.
    #[arg(long = "webhook", env = "WSHUB_WEBHOOK", value_parser = crate::apps::Webhook::parse)]
    pub webhooks: Vec<crate::apps::Webhook>,

    /// The key wshub signs its webhooks and hook requests with (Standard Webhooks: `whsec_` + base64, or any string of at least 16 bytes).
    #[arg(long, env = "WSHUB_WEBHOOK_SECRET", hide_env_values = true)]
    #[serde(serialize_with = "ser_secret")]
    pub webhook_secret: Option<String>,

    /// Ask this URL whether a /ws client without a token may connect (cookies, selected headers, address, query in; user, info, allowed groups or a close code out). See docs/HOOKS.md.
    #[arg(long, env = "WSHUB_CONNECT_HOOK")]
    pub connect_hook: Option<String>,

    /// Ask this URL whether a wshub.v1 client may join a group matching --join-hook-groups.
    #[arg(long, env = "WSHUB_JOIN_HOOK")]
    pub join_hook: Option<String>,

    /// Group patterns (exact names, or prefixes ending in `*`) whose joins ask --join-hook.
    #[arg(
        long,
        env = "WSHUB_JOIN_HOOK_GROUPS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub join_hook_groups: Vec<String>,

    /// Ask this URL whether a wshub.v1 client may publish to a group matching --publish-hook-groups (allow, deny, or replace the message).
    #[arg(long, env = "WSHUB_PUBLISH_HOOK")]
    pub publish_hook: Option<String>,

    /// Group patterns whose publishes ask --publish-hook.
    #[arg(
        long,
        env = "WSHUB_PUBLISH_HOOK_GROUPS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub publish_hook_groups: Vec<String>,

    /// Hold channel_vacated/group.vacated and member_removed webhooks this long: a channel occupied again (a user back) within it sends neither event, as a page reload should (Pusher also waits a few seconds; 0s: told at once).
    #[arg(long, env = "WSHUB_WEBHOOK_DELAY", default_value = "3s", value_parser = parse_delay)]
    #[serde(serialize_with = "ser_duration")]
    pub webhook_delay: Duration,

    /// Group patterns (exact names, or prefixes ending in `*`) whose authenticated members are presence members, cluster-wide (the `presence` command, GET /api/groups/{group}/presence); empty: none.
    #[arg(
        long,
        env = "WSHUB_PRESENCE_GROUPS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub presence_groups: Vec<String>,

    /// Group patterns whose members get no joined/left events (groups too large for them; presence still answers).
    #[arg(long, env = "WSHUB_SILENT_GROUPS", value_delimiter = ',')]
    pub silent_groups: Vec<String>,

    /// permessage-deflate (RFC 7692) for clients that offer it, as browsers do: `true` or `false` (offers are then declined). A publication is compressed once for all its recipients.
    #[arg(long, env = "WSHUB_COMPRESSION", default_value_t = true, action = clap::ArgAction::Set)]
    pub compression: bool,

    /// Messages smaller than this are sent uncompressed (compressing a few bytes costs more than it saves).
    #[arg(long, env = "WSHUB_COMPRESSION_THRESHOLD", default_value = "256B", value_parser = parse_size)]
    #[serde(serialize_with = "ser_size")]
    pub compression_threshold: usize,

    /// What a connection that reads too slowly gets for a group's messages, per group pattern: `PATTERN=disconnect` (closed with 1008, the default), `PATTERN=drop-oldest` (its queued messages of the group are dropped and it gets a `gap` to recover from history) or `PATTERN=keep-latest` (only the newest message of the group, or of each `key`, waits for it). Repeatable; the first matching rule wins.
    #[arg(long, env = "WSHUB_DELIVERY_POLICY", value_delimiter = ',', value_parser = crate::manager::policy::Rule::parse)]
    #[serde(serialize_with = "ser_rules")]
    pub delivery_policy: Vec<crate::manager::policy::Rule>,

    /// How long a publication's `idempotencyKey` is remembered: a repeat within it (REST or wshub.v1, on any node) is answered with the first one's offset and delivered to no one.
    #[arg(long, env = "WSHUB_IDEMPOTENCY_WINDOW", default_value = "5m", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub idempotency_window: Duration,

    /// In a cluster, publications waiting for the backplane at most: past it REST publishes answer 429 with Retry-After and wshub.v1 publishes a `busy` error, instead of queueing without bound (nothing refused is delivered anywhere; nothing accepted is lost).
    #[arg(long, env = "WSHUB_PUBLISH_QUEUE", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    pub publish_queue: u32,

    /// DEFLATE level: 1 (fastest) to 9 (smallest).
    #[arg(long, env = "WSHUB_COMPRESSION_LEVEL", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub compression_level: u32,

    /// How long an authorization hook may take to answer; no answer in time is a refusal (fail-closed).
    #[arg(long, env = "WSHUB_HOOK_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub hook_timeout: Duration,

    /// Request headers passed to --connect-hook (comma-separated, case-insensitive).
    #[arg(
        long,
        env = "WSHUB_HOOK_HEADERS",
        value_delimiter = ',',
        default_value = "cookie,authorization,origin,user-agent,x-forwarded-for,x-real-ip"
    )]
    pub hook_headers: Vec<String>,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "WSHUB_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// What happens to a message over the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateAction {
    /// Drop it and answer with an error frame.
    Error,
    /// Close the connection with 1008.
    Close,
}

/// Join/leave announcements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Announce {
    /// Every connect and disconnect goes to every plain client, as in the original sample.
    All,
    /// No announcements (a connect storm of N clients otherwise costs N²/2 frames).
    None,
}

impl ServeArgs {
    /// The security settings these options describe (reads the public key file).
    ///
    /// # Errors
    /// When the public key file cannot be read.
    pub fn auth_settings(&self) -> Result<crate::auth::AuthSettings, String> {
        let jwt_public_key_pem = match &self.jwt_public_key {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("--jwt-public-key {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(crate::auth::AuthSettings {
            api_key: self.api_key.clone(),
            jwt_secret: self.jwt_secret.clone(),
            jwt_public_key_pem,
            allowed_origins: self.allowed_origins.clone(),
            leeway: self.jwt_leeway,
        })
    }

    /// The signing key of --webhook-secret (empty when unset or unusable: [`Self::check`]
    /// says why).
    fn webhook_key(&self) -> std::sync::Arc<[u8]> {
        self.webhook_secret
            .as_deref()
            .and_then(|s| crate::signing::webhook_key(s).ok())
            .unwrap_or_default()
            .into()
    }

    /// Checks what the hub settings cannot say by themselves: apps, webhook targets, hooks and
    /// the secret that signs them.
    ///
    /// # Errors
    /// A message naming the option and what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if let Some(s) = &self.webhook_secret {
            crate::signing::webhook_key(s).map_err(|e| format!("--webhook-secret: {e}"))?;
        }
        let c = self.hub_config();
        c.apps.validate()?;
        c.webhooks.validate()?;
        c.hooks.validate()
    }

    /// The hub settings these options describe.
    pub fn hub_config(&self) -> HubConfig {
        HubConfig {
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            max_message_size: self.max_message_size,
            echo_max_message_size: self.echo_max_message_size,
            echo_endpoint: self.echo_endpoint,
            send_queue: self.send_queue as usize,
            max_send_buffer: self.max_send_buffer,
            close_timeout: self.close_timeout,
            shutdown_timeout: self.shutdown_timeout,
            announce: self.announce == Announce::All,
            max_groups_per_connection: self.max_groups_per_connection,
            max_connections: self.max_connections,
            max_request_body: self.max_request_body,
            node_id: self.node_id.clone(),
            apps: crate::apps::Apps::new(self.apps.clone()).with_webhooks(&self.app_webhooks),
            webhooks: crate::webhooks::Settings {
                targets: self.webhooks.clone(),
                key: self.webhook_key(),
            },
            hooks: crate::hooks::Settings {
                connect: self.connect_hook.clone(),
                join: self.join_hook.clone().map(|url| crate::hooks::Route {
                    url,
                    groups: self.join_hook_groups.clone(),
                }),
                publish: self.publish_hook.clone().map(|url| crate::hooks::Route {
                    url,
                    groups: self.publish_hook_groups.clone(),
                }),
                timeout: self.hook_timeout,
                headers: self
                    .hook_headers
                    .iter()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect(),
                key: self.webhook_key(),
            },
            webhook_delay: self.webhook_delay,
            presence_groups: self
                .presence_groups
                .iter()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            silent_groups: self
                .silent_groups
                .iter()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            delivery_policies: self.delivery_policy.clone(),
            idempotency_window: self.idempotency_window,
            compression: self.compression.then_some(crate::frame::deflate::Settings {
                threshold: self.compression_threshold,
                level: self.compression_level,
            }),
            history: crate::history::HistoryConfig {
                size: self.history_size,
                ttl: self.history_ttl,
                max_bytes: self.history_max_bytes,
                max_streams: self.max_groups as usize,
            },
            rate_limit: self
                .max_messages_per_second
                .filter(|r| *r > 0.0)
                .map(|per_second| crate::hub::RateLimit {
                    per_second,
                    burst: self.burst.unwrap_or(per_second.ceil() as u32).max(1),
                    action: match self.rate_limit_action {
                        RateAction::Error => crate::hub::RateLimitAction::Error,
                        RateAction::Close => crate::hub::RateLimitAction::Close,
                    },
                }),
        }
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn ser_size<S: serde::Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(*n as u64)
}

pub use crate::wire::parse_node_id;

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_rules<S: serde::Serializer>(
    rules: &[crate::manager::policy::Rule],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(rules.iter().map(ToString::to_string))
}

/// Secrets are never printed, not even masked: a masked value read back would silently
/// become the secret. [`ServeArgs::to_toml`] says in a comment which ones are set.
fn ser_secret<S: serde::Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_none()
}

/// The placeholder older versions printed for secrets; refused as a value.
const MASK: &str = "***";

impl ServeArgs {
    /// The effective configuration as TOML, reusable as a configuration file: secrets are left
    /// out (a comment names those that are set, and the variables to give them with).
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for (key, env, set) in [
            ("api_key", "WSHUB_API_KEY", self.api_key.is_some()),
            ("jwt_secret", "WSHUB_JWT_SECRET", self.jwt_secret.is_some()),
            (
                "webhook_secret",
                "WSHUB_WEBHOOK_SECRET",
                self.webhook_secret.is_some(),
            ),
        ] {
            if set {
                out.push_str(&format!(
                    "# {key} is set but not printed: give it with {env} (or add `{key} = \"...\"` here)\n"
                ));
            }
        }
        if !self.apps.is_empty() {
            out.push_str(
                "# app secrets are not printed: add `secret = \"...\"` to each [[apps]] table\n",
            );
        }
        match toml::to_string(self) {
            Ok(t) => out.push_str(&t),
            Err(e) => out.push_str(&format!("# cannot print the configuration: {e}\n")),
        }
        out
    }
}

/// Turns a configuration file into extra command-line arguments for the options that neither a
/// flag nor an environment variable set, so the precedence is flags > environment > file >
/// defaults. `is_set` says whether an option (by id) was given by a flag or the environment.
///
/// # Errors
/// A message naming the file and the key for unreadable files, TOML syntax errors, unknown keys
/// and values that are not strings, numbers, booleans or arrays of those.
pub fn file_args(
    path: &std::path::Path,
    known: &[String],
    is_set: impl Fn(&str) -> bool,
) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file_args_from_str(&text, path, known, is_set)
}

/// [`file_args`] on the text of a file that was already read (`path` only names it in errors).
///
/// # Errors
/// As [`file_args`].
pub fn file_args_from_str(
    text: &str,
    path: &std::path::Path,
    known: &[String],
    is_set: impl Fn(&str) -> bool,
) -> Result<Vec<String>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        if !known.contains(&id) || id == "config" || id == "print_config" {
            return Err(format!("{}: unknown key `{key}`", path.display()));
        }
        if is_set(&id) {
            continue;
        }
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(format!(
                "{}: `{key}` must be a string, number or boolean",
                path.display()
            )),
        };
        if matches!(id.as_str(), "api_key" | "jwt_secret" | "webhook_secret")
            && value.as_str() == Some(MASK)
        {
            return Err(format!(
                "{}: `{key}` is the placeholder `{MASK}`, not a secret: put the real value there or give it with WSHUB_{}",
                path.display(),
                id.to_ascii_uppercase()
            ));
        }
        if id == "apps" || id == "webhooks" {
            let flag = if id == "apps" { "app" } else { "webhook" };
            let toml::Value::Array(tables) = &value else {
                return Err(format!(
                    "{}: `{id}` is a list of [[{id}]] tables",
                    path.display()
                ));
            };
            for t in tables {
                let one = match t {
                    toml::Value::String(url) => url.clone(),
                    _ => serde_json::to_string(t)
                        .map_err(|e| format!("{}: {id}: {e}", path.display()))?,
                };
                out.push(format!("--{flag}={one}"));
            }
            continue;
        }
        let v = match &value {
            // An empty list is the default: nothing to add.
            toml::Value::Array(items) if items.is_empty() => continue,
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => scalar(other)?,
        };
        out.push(format!("--{}={v}", id.replace('_', "-")));
    }
    Ok(out)
}

/// Parses a duration such as `30s`, `500ms`, `2m`; it must be positive.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(s.trim()).map_err(|e| format!("`{s}`: {e} (try 30s, 500ms)"))?;
    if d.is_zero() {
        return Err(format!("`{s}`: must be greater than zero"));
    }
    Ok(d)
}

/// Parses a clock leeway: a duration, zero allowed, at most 10 minutes.
pub fn parse_leeway(s: &str) -> Result<Duration, String> {
    let d = if s.trim() == "0" {
        Duration::ZERO
    } else {
        humantime::parse_duration(s.trim()).map_err(|e| format!("`{s}`: {e} (try 5s)"))?
    };
    if d > Duration::from_secs(600) {
        return Err(format!("`{s}`: at most 10m"));
    }
    Ok(d)
}

/// Parses a delay: a duration, zero allowed (off), at most a minute.
pub fn parse_delay(s: &str) -> Result<Duration, String> {
    let d = if s.trim() == "0" {
        Duration::ZERO
    } else {
        humantime::parse_duration(s.trim()).map_err(|e| format!("`{s}`: {e} (try 3s)"))?
    };
    if d > Duration::from_secs(60) {
        return Err(format!("`{s}`: at most 1m"));
    }
    Ok(d)
}

/// Parses a size such as `65536`, `64KiB`, `16MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 10).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number of bytes such as 65536, 64KiB or 16MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit `{unit}` (use B, KiB, MiB or GiB)"
            ))
        }
    };
    let bytes = n
        .checked_mul(mult)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("`{s}`: too large"))?;
    if bytes == 0 {
        return Err(format!("`{s}`: must be greater than zero"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1 MB"), Ok(1_000_000));
        for bad in ["", "abc", "10XB", "0", "99999999999999999999GiB", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn defaults_match_the_documentation() {
        use clap::Parser as _;
        let args = Wrapper::try_parse_from(["wshub"]).unwrap().args;
        assert_eq!(args.listen.to_string(), "127.0.0.1:5289");
        let c = args.hub_config();
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.max_message_size, 64 * 1024);
        assert_eq!(c.send_queue, 1024);
        assert!(c.announce);
    }
}
