//! The hub: the one place every message goes through, whichever way it came in.
//!
//! A client's text, a REST push and (later) a backplane delivery all end in a hub call that
//! encodes the frame once and offers it to the matching connections' outboxes. The hub is a
//! cheap `Clone` handle over shared state, usable from any task, and never waits on a socket.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod anywhere;
pub use anywhere::GroupPublished;
mod authorize;
mod cluster;
mod commands;
mod deliver;
mod error;
mod fetched;
mod idempotency;
mod occupancy;
mod peer;
mod policies;
mod presence;
mod publish;
mod pusher;
mod recovery;
mod replies;
mod routing;
mod settle;
mod tokens;

pub use cluster::{Busy, NotPublished};
pub use deliver::Published;
pub use error::HubError;
pub(crate) use fetched::{Fetched, Prefetch, PrefetchFuture};
pub(crate) use peer::Peer;
pub use presence::{PresenceMember, PresencePage, PresenceStats, PAGE as PRESENCE_PAGE};
pub use publish::{Message, Outcome, PublishError, Target};
pub use pusher::{PresenceUser, TriggerError};
pub use tokens::RevokeError;

use crate::close::CloseReason;
use crate::envelope::{self, Kind};
use crate::frame::{self, Frame, OpCode};
use crate::history::{History, HistoryConfig, Position};
use crate::id::ConnId;
use crate::manager::{
    Audience, ConnInfo, ConnectionManager, Cork, Delivery, Entry, Protocol, Undelivered,
};
use crate::metrics::{Metrics, Reason};
use crate::outbox::Outbox;
use crate::protocol::v1;
use crate::webhooks::EventType;
use serde_json::json;

/// What a group publication may carry besides its message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The conflation key (`keep-latest` groups).
    pub key: Option<String>,
    /// The idempotency key: a repeat within `--idempotency-window` is delivered to no one.
    pub idempotency_key: Option<String>,
    /// Its own time to live: past it, it leaves history and a copy still queued for a slow
    /// reader is not sent (replaced by a `gap`).
    pub ttl: Option<Duration>,
}

/// Settings that shape every connection's behaviour.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How often the server pings each connection.
    pub ping_interval: Duration,
    /// A connection that sends nothing (no frame, no Pong) for this long is closed.
    pub idle_timeout: Duration,
    /// Largest message accepted on `/ws`; larger ones close the connection with 1009.
    pub max_message_size: usize,
    /// Largest message accepted on `/ws/echo` (conformance suites send up to 16 MiB).
    pub echo_max_message_size: usize,
    /// Whether `/ws/echo` is served (otherwise it answers 404).
    pub echo_endpoint: bool,
    /// Frames a connection may have queued before it is closed as a slow consumer.
    pub send_queue: usize,
    /// Bytes a connection may have queued and not yet written before it is closed as a slow
    /// consumer (one frame larger than this is still taken into an empty queue).
    pub max_send_buffer: usize,
    /// How long a closing handshake (or flushing a Close to a slow peer) may take.
    pub close_timeout: Duration,
    /// How long shutdown waits for connections to drain and close.
    pub shutdown_timeout: Duration,
    /// Whether joins and leaves are announced to every plain client (docs/PROTOCOL.md, "Plain mode").
    pub announce: bool,
    /// Groups one connection may be a member of at once.
    pub max_groups_per_connection: usize,
    /// Connections on `/ws` beyond which upgrades get 503 (`None`: no limit but the OS's).
    pub max_connections: Option<usize>,
    /// Largest REST request body.
    pub max_request_body: usize,
    /// Inbound message rate limit per `/ws` connection (`None`: unlimited).
    pub rate_limit: Option<RateLimit>,
    /// How much history each group and the all-clients stream keep for recovery.
    pub history: HistoryConfig,
    /// This node's id (random when `None`), shown in listings and metrics.
    pub node_id: Option<String>,
    /// The Pusher apps served at `/app/{key}` and `/apps/{id}` (the first is the default
    /// app, whose channels are the hub's groups).
    pub apps: crate::apps::Apps,
    /// wshub's own webhooks (for `/ws` clients): targets and signing key.
    pub webhooks: crate::webhooks::Settings,
    /// The authorization hooks asked at connect, join and publish.
    pub hooks: crate::hooks::Settings,
    /// How long a vacated channel or group (and a removed presence member) is held before its
    /// webhook is sent: back within it, neither is told (zero: told at once).
    pub webhook_delay: Duration,
    /// Group patterns whose authenticated members are presence members (cluster-wide).
    pub presence_groups: Vec<String>,
    /// Group patterns whose members get no `joined`/`left` events.
    pub silent_groups: Vec<String>,
    /// `permessage-deflate` for clients that offer it (`None`: declined).
    pub compression: Option<crate::frame::deflate::Settings>,
    /// What slow readers get, per group pattern (the first rule that matches; none:
    /// `disconnect`).
    pub delivery_policies: Vec<crate::manager::policy::Rule>,
    /// How long a publication's idempotency key is remembered (a repeat within it is answered
    /// with the first one's offset and delivered to no one).
    pub idempotency_window: Duration,
}

/// An inbound rate limit: a token bucket per connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Messages per second, sustained.
    pub per_second: f64,
    /// Messages allowed in a burst above the sustained rate.
    pub burst: u32,
    /// What happens to a message over the limit.
    pub action: RateLimitAction,
}

/// What happens to a message over the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitAction {
    /// Drop it and answer with an `error` frame (`code: rate_limited`); the connection stays.
    Error,
    /// Close the connection with 1008.
    Close,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_message_size: 64 * 1024,
            echo_max_message_size: 16 * 1024 * 1024,
            echo_endpoint: true,
            send_queue: 1024,
            max_send_buffer: 1024 * 1024,
            close_timeout: Duration::from_secs(3),
            shutdown_timeout: Duration::from_secs(10),
            announce: true,
            max_groups_per_connection: 1000,
            max_connections: None,
            max_request_body: 1024 * 1024,
            rate_limit: None,
            history: HistoryConfig::default(),
            node_id: None,
            apps: crate::apps::Apps::default(),
            webhooks: crate::webhooks::Settings::default(),
            hooks: crate::hooks::Settings::default(),
            webhook_delay: Duration::from_secs(3),
            presence_groups: vec!["*".into()],
            silent_groups: Vec::new(),
            compression: Some(crate::frame::deflate::Settings::default()),
            delivery_policies: Vec::new(),
            idempotency_window: Duration::from_secs(300),
        }
    }
}

pub(crate) struct Shared {
    /// This node's id.
    node: Arc<str>,
    config: HubConfig,
    auth: crate::auth::Auth,
    metrics: Metrics,
    shutdown: CancellationToken,
    /// Every connection's timer, and its wake-up at shutdown.
    sweep: crate::outbox::Sweep,
    tasks: TaskTracker,
    /// Open `/ws/echo` connections.
    echo: std::sync::atomic::AtomicUsize,
    /// What delivery needs.
    delivery: DeliveryState,
    /// What the cluster keeps (this node's copy).
    cluster: ClusterState,
    /// The protocols' own state.
    protocols: ProtocolState,
    /// The backend, asked and told.
    edges: Edges,
}

/// What delivery needs: who is connected and in which groups, what each stream kept, how
/// slow readers are treated, which publications were seen, and the replies that wait.
struct DeliveryState {
    manager: ConnectionManager<Outbox>,
    history: History,
    policies: policies::Policies,
    idempotency: idempotency::Idempotency,
    /// Replies that wait for the backplane, per connection.
    replies: replies::Replies,
}

/// What the cluster keeps, this node's copy: the backplane, members per group and node,
/// vacates and removals held for the webhook flap delay, revoked users.
struct ClusterState {
    backplane: std::sync::OnceLock<Arc<crate::backplane::Cluster>>,
    /// Members per group in the whole cluster.
    occupancy: occupancy::Occupancy,
    /// Vacates and member removals held for the webhook flap delay.
    settling: settle::Settling,
    /// Users whose tokens are revoked.
    revocations: tokens::Revocations,
}

/// The protocols' own state.
struct ProtocolState {
    /// Presence, signed-in users and connection counts of Pusher apps.
    pusher: pusher::PusherState,
    /// What answers the requests other nodes relay here (the HTTP transport's sessions).
    relayed: parking_lot::RwLock<Option<Arc<dyn crate::backplane::relay::Service>>>,
}

/// The backend: where webhooks go, and the authorization hooks asked.
struct Edges {
    webhooks: crate::webhooks::Webhooks,
    hooks: crate::hooks::Hooks,
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Connections waiting for a flush after frames were offered to them.
pub(crate) type HubCork = Cork<Outbox>;

/// A handle to the hub; clones share the same registry.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// Who joined or left a group: the connection, its user and what the backend says of them.
#[derive(Clone, Copy)]
pub(crate) struct Who<'a> {
    pub(crate) id: ConnId,
    pub(crate) user: Option<&'a str>,
    pub(crate) info: Option<&'a str>,
}

/// A registered `/ws` connection, as the hub keeps it.
pub(crate) type HubEntry = Arc<Entry<Outbox>>;

/// A snapshot of one connection, for listings.
#[derive(Debug, Clone)]
pub struct ConnectionSnapshot {
    /// Its id.
    pub id: ConnId,
    /// When it connected.
    pub connected_at: SystemTime,
    /// The peer address, when known.
    pub remote_addr: Option<std::net::SocketAddr>,
    /// Frames waiting in its outbound queue.
    pub queued: usize,
    /// Bytes queued or being written and not yet on the wire (held to `max_send_buffer`).
    pub queued_bytes: usize,
    /// The authenticated user, if any.
    pub user: Option<Arc<str>>,
    /// The groups it is a member of.
    pub groups: Vec<Arc<str>>,
    /// The negotiated protocol.
    pub protocol: Protocol,
}

impl ConnectionSnapshot {
    fn of(e: &Entry<Outbox>) -> Self {
        Self {
            id: e.id,
            connected_at: e.info.connected_at(),
            remote_addr: e.info.remote_addr,
            queued: e.sink.len(),
            queued_bytes: e.sink.pending_bytes(),
            user: e.info.user.clone(),
            groups: e.groups(),
            protocol: e.info.protocol,
        }
    }
}

impl Hub {
    /// A hub with the given settings and no authentication (anyone may connect and use the API).
    pub fn new(config: HubConfig) -> Self {
        Self::with_auth(config, crate::auth::Auth::none())
    }

    /// A hub with the given settings and security checks.
    ///
    /// The development Pusher app (public credentials) is served only by a hub without
    /// security: with an API key or connection tokens required, it would be a way around both
    /// (anyone could publish with its well-known secret, or read the default app's channels,
    /// which are the hub's groups). Configure apps of your own there.
    pub fn with_auth(mut config: HubConfig, auth: crate::auth::Auth) -> Self {
        if config.apps.is_development() && (auth.requires_token() || auth.requires_api_key()) {
            config.apps = crate::apps::Apps::none();
        }
        let metrics = Metrics::new();
        let node: Arc<str> = Arc::from(
            config
                .node_id
                .clone()
                .unwrap_or_else(|| ConnId::random().short()),
        );
        let webhooks = crate::webhooks::Webhooks::start(
            &config.apps,
            &config.webhooks,
            node.clone(),
            metrics.webhook_events.clone(),
        );
        let hooks = crate::hooks::Hooks::new(
            config.hooks.clone(),
            metrics.hook_calls.clone(),
            metrics.hook_seconds.clone(),
        );
        let manager = ConnectionManager::with_compression(config.compression.map(|settings| {
            crate::manager::Compression {
                settings,
                metrics: metrics.deflate.clone(),
            }
        }));
        let policies = policies::Policies::new(&config.delivery_policies, &metrics);
        let idempotency = idempotency::Idempotency::new(config.idempotency_window);
        let shutdown = CancellationToken::new();
        let shortest = [
            config.ping_interval,
            config.idle_timeout,
            config.close_timeout,
            config.shutdown_timeout,
        ]
        .into_iter()
        .min()
        .unwrap_or_default();
        let sweep =
            crate::outbox::Sweep::new(crate::outbox::Sweep::period_for(shortest), shutdown.clone());
        let hub = Self {
            shared: Arc::new(Shared {
                node,
                delivery: DeliveryState {
                    history: History::with_counter(config.history, metrics.history_evicted.clone()),
                    manager,
                    policies,
                    idempotency,
                    replies: replies::Replies::default(),
                },
                cluster: ClusterState {
                    backplane: std::sync::OnceLock::new(),
                    occupancy: occupancy::Occupancy::default(),
                    settling: settle::Settling::default(),
                    revocations: tokens::Revocations::default(),
                },
                protocols: ProtocolState {
                    pusher: pusher::PusherState::default(),
                    relayed: parking_lot::RwLock::new(None),
                },
                edges: Edges { webhooks, hooks },
                config,
                auth,
                metrics,
                shutdown,
                sweep,
                tasks: TaskTracker::new(),
                echo: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        hub.shared
            .metrics
            .node_info
            .get_or_create(&crate::metrics::NodeLabel {
                node: hub.shared.node.to_string(),
            })
            .set(1);
        hub.spawn_history_sweeper();
        hub
    }

    /// Expires old history in the background (when created inside a Tokio runtime; the task
    /// ends with the hub).
    fn spawn_history_sweeper(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.shared);
        let ttl = self.shared.config.history.ttl;
        let every = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let m = &shared.delivery.manager;
                shared.delivery.history.sweep(|g| m.has_group(g));
                shared.delivery.history.enforce_budget();
            }
        });
    }

    /// The hub's message history.
    pub fn history(&self) -> &History {
        &self.shared.delivery.history
    }

    /// How much one replay may queue: a replay must never make its own connection a slow
    /// consumer, so it leaves room in both budgets for what is live.
    fn replay_limit(&self) -> crate::history::ReplayLimit {
        let c = &self.shared.config;
        crate::history::ReplayLimit {
            frames: c.send_queue.saturating_sub(64).max(1),
            bytes: c.max_send_buffer / 4 * 3,
            oldest_first: false,
        }
    }

    /// An outbox with this hub's frame and byte budgets.
    pub(crate) fn new_outbox(&self) -> Outbox {
        let c = &self.shared.config;
        Outbox::with_budget(c.send_queue, c.max_send_buffer)
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.shared.config
    }

    /// Waits until every webhook queued went out (or `deadline`): part of a clean shutdown.
    pub async fn flush_webhooks(&self, deadline: tokio::time::Instant) -> bool {
        self.shared.edges.webhooks.flush(deadline).await
    }

    /// The authorization hooks.
    pub fn hooks(&self) -> &crate::hooks::Hooks {
        &self.shared.edges.hooks
    }

    /// Tells the hub's webhook targets about an event of type `ty`: when one wants it, `data`
    /// makes its JSON (nothing is built otherwise).
    pub(crate) fn hub_webhook(
        &self,
        ty: crate::webhooks::EventType,
        data: impl FnOnce() -> serde_json::Value,
    ) {
        let w = &self.shared.edges.webhooks;
        if w.hub_wants(ty) {
            w.emit_hub(ty, data(), &self.shared.metrics.webhook_events);
        }
    }

    /// The hub's security checks.
    pub fn auth(&self) -> &crate::auth::Auth {
        &self.shared.auth
    }

    /// The hub's metrics (rendered at `GET /metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The metrics, with the gauges that are read rather than counted (queued bytes, history)
    /// brought up to date, rendered.
    pub fn render_metrics(&self) -> String {
        let m = &self.shared.metrics;
        let queued: usize = self
            .shared
            .delivery
            .manager
            .entries()
            .iter()
            .map(|e| e.sink.pending_bytes())
            .sum();
        m.outbound_queued_bytes.set(gauge(queued));
        let h = &self.shared.delivery.history;
        m.history_bytes.set(gauge(h.bytes()));
        m.history_streams.set(gauge(h.len()));
        m.backplane_queue
            .set(gauge(self.cluster().map_or(0, |c| c.queued())));
        m.render()
    }

    /// Number of connections on `/ws`.
    pub fn connection_count(&self) -> usize {
        self.shared.delivery.manager.count()
    }

    /// Number of connections on `/ws/echo`.
    pub fn echo_count(&self) -> usize {
        self.shared.echo.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn echo_opened(&self) {
        self.shared
            .echo
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.metrics.echo_connects.inc();
        self.shared.metrics.echo_connections.inc();
    }

    pub(crate) fn echo_closed(&self) {
        self.shared
            .echo
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.metrics.echo_connections.dec();
    }

    /// A snapshot of every connection on `/ws`, oldest first; optionally only the members of a
    /// group and/or the connections of a user.
    pub fn connections(&self, group: Option<&str>, user: Option<&str>) -> Vec<ConnectionSnapshot> {
        let m = &self.shared.delivery.manager;
        let entries = match (group, user) {
            (Some(g), _) => m.group_members(g).unwrap_or_default(),
            (None, Some(u)) => m.user_connections(u),
            (None, None) => m.entries(),
        };
        let mut list: Vec<_> = entries
            .iter()
            .filter(|e| user.is_none_or(|u| e.info.user.as_deref() == Some(u)))
            .map(|e| ConnectionSnapshot::of(e))
            .collect();
        list.sort_by_key(|c| (c.connected_at, c.id));
        list
    }

    /// One connection of this node as the backplane stores it and the REST API lists it.
    pub fn connection_entry(&self, id: ConnId) -> Option<crate::wire::ConnectionEntry> {
        self.connection(id).map(|c| self.entry_of(c))
    }

    /// A snapshot as the backplane stores it and the REST API lists it.
    pub(crate) fn entry_of(&self, c: ConnectionSnapshot) -> crate::wire::ConnectionEntry {
        crate::wire::ConnectionEntry {
            node: self.node_id().to_owned(),
            id: c.id.to_string(),
            short_id: c.id.short(),
            connected_at: envelope::Timestamp::from(c.connected_at)
                .as_str()
                .to_owned(),
            remote_addr: c.remote_addr.map(|a| a.to_string()),
            queued: c.queued,
            user: c.user.map(|u| u.to_string()),
            groups: c.groups.iter().map(|g| g.to_string()).collect(),
            protocol: match c.protocol {
                Protocol::Plain => "plain".into(),
                Protocol::V1 => crate::protocol::V1.into(),
                Protocol::Pusher => "pusher".into(),
            },
        }
    }

    /// One connection.
    pub fn connection(&self, id: ConnId) -> Option<ConnectionSnapshot> {
        self.shared
            .delivery
            .manager
            .get(id)
            .map(|e| ConnectionSnapshot::of(&e))
    }

    /// Sends `message` to this node's clients as a `server-broadcast` envelope; returns how
    /// many connections it was queued for. A shorthand for a single node:
    /// [`publish_to`](Self::publish_to) is the one entry.
    pub fn broadcast_text(&self, message: &str) -> usize {
        self.broadcast_text_at(message).0
    }

    /// Like [`broadcast_text`](Self::broadcast_text), also returning the message's offset in
    /// the all-clients stream.
    ///
    /// In a cluster the backplane numbers the message after this returns: the offset is then 0
    /// and the count is this node's connections (those it reaches here; other nodes' are not
    /// counted). [`broadcast_everywhere`](Self::broadcast_everywhere) waits for the offset.
    pub(crate) fn broadcast_text_at(&self, message: &str) -> (usize, u64) {
        let started = std::time::Instant::now();
        let mut cork = Cork::new();
        let p = Self::all_publication(Kind::ServerBroadcast, None, message);
        let answer = match self.publish(p, &mut cork) {
            Some(p) => (p.delivery.delivered, p.offset.unwrap_or(0)),
            None => (self.connection_count(), 0),
        };
        self.flush(&mut cork, started);
        answer
    }

    /// A text envelope to every connection, recorded in the all-clients stream: `wshub.v1`
    /// connections get it with its `offset`, plain ones exactly as plain mode has it (docs/PROTOCOL.md). Returns
    /// what was delivered here and the offset (0 when the backplane numbers it later, or
    /// while it is away).
    fn publish_all(
        &self,
        kind: Kind,
        from: Option<&str>,
        text: &str,
        cork: &mut HubCork,
    ) -> (Delivery, u64) {
        self.publish(Self::all_publication(kind, from, text), cork)
            .map_or((Delivery::default(), 0), |p| {
                (p.delivery, p.offset.unwrap_or(0))
            })
    }

    /// Publishes a `message` to a group's stream (see [`deliver`](deliver)): on a single node
    /// it is numbered and delivered now; in a cluster it goes to the backplane, which numbers
    /// it and brings it back to every node (`None`), or, while the backplane is away, it is
    /// delivered here unnumbered (offset 0).
    pub(crate) fn publish_group(
        &self,
        group: &str,
        from: Option<&str>,
        user: Option<&str>,
        message: &serde_json::value::RawValue,
        opts: &PublishOptions,
        cork: &mut HubCork,
    ) -> Option<(Delivery, u64)> {
        let p = Self::group_publication(group, from, user, message, opts);
        self.publish(p, cork)
            .map(|p| (p.delivery, p.offset.unwrap_or(0)))
    }

    /// Offers an already encoded frame to every connection.
    pub fn broadcast_frame(&self, frame: &Frame) -> Delivery {
        let started = std::time::Instant::now();
        let mut cork = Cork::new();
        let d = self.broadcast_corked(frame, &mut cork);
        self.flush(&mut cork, started);
        d
    }

    /// Offers an already encoded frame to one connection; `false` when it is unknown, closed,
    /// or was just closed as a slow consumer.
    pub fn send_frame(&self, id: ConnId, frame: &Frame) -> bool {
        let mut cork = Cork::new();
        let ok = self.send_corked(id, frame, &mut cork);
        cork.flush();
        ok
    }

    /// A join/leave announcement: broadcast with a deferred flush, so that a connect storm's
    /// N²/2 announcements leave many to a write instead of one.
    fn announce(&self, text: String) {
        let mut cork = Cork::new();
        if self
            .publish(
                crate::wire::Publication::from(crate::wire::SystemMessage { text }),
                &mut cork,
            )
            .is_some()
        {
            cork.flush_deferred();
        }
    }

    fn broadcast_corked(&self, frame: &Frame, cork: &mut HubCork) -> Delivery {
        self.publish_corked(Audience::All, frame, cork)
    }

    fn publish_corked(
        &self,
        audience: Audience<'_>,
        frame: &Frame,
        cork: &mut HubCork,
    ) -> Delivery {
        let d = self
            .shared
            .delivery
            .manager
            .publish_corked(audience, frame, cork);
        self.shared
            .metrics
            .delivered(frame.len(), d.delivered, d.slow, d.dead);
        d
    }

    fn send_corked(&self, id: ConnId, frame: &Frame, cork: &mut HubCork) -> bool {
        let m = &self.shared.metrics;
        match self.shared.delivery.manager.send_corked(id, frame, cork) {
            Ok(()) => {
                m.delivered(frame.len(), 1, 0, 0);
                true
            }
            Err(Undelivered::SlowConsumer) => {
                m.delivered(frame.len(), 0, 1, 0);
                false
            }
            Err(Undelivered::Closed) => {
                m.delivered(frame.len(), 0, 0, 1);
                false
            }
            Err(Undelivered::Unknown) => false,
        }
    }

    /// Closes one connection with `reason`; `false` when it is unknown.
    pub fn disconnect(&self, id: ConnId, reason: CloseReason) -> bool {
        match self.shared.delivery.manager.get(id) {
            Some(entry) => {
                entry.sink.close(reason);
                true
            }
            None => false,
        }
    }

    /// Starts shutting down: every connection is sent Close 1001 after its queued frames.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Waits until every connection task has ended, or `timeout` passed; returns whether all
    /// ended.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        self.shared.tasks.close();
        tokio::time::timeout(timeout, self.shared.tasks.wait())
            .await
            .is_ok()
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    /// The connections' timer.
    pub(crate) fn sweep(&self) -> &crate::outbox::Sweep {
        &self.shared.sweep
    }

    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.shared.tasks
    }

    /// Registers a new `/ws` connection and announces it. Called before the 101 response is
    /// sent, so no broadcast issued after the client sees the upgrade can miss it. A `wshub.v1`
    /// connection's first frame is its `welcome`.
    ///
    /// With `recover` (the last position a `wshub.v1` client saw in the all-clients stream),
    /// what it missed is queued right after the welcome, before anything live.
    ///
    /// `prefetched` is what [`prefetch`](Self::prefetch) brought from a shared backplane for
    /// the all-clients stream (a cluster only), applied here under the stream's lock.
    pub(crate) fn register(
        &self,
        info: ConnInfo,
        grants: crate::manager::Grants,
        recover: Option<&Position>,
        prefetched: Option<fetched::Prefetch>,
    ) -> HubEntry {
        let outbox = Arc::new(self.new_outbox());
        let protocol = info.protocol;
        // Registered under the all-clients stream's lock: every broadcast is either before
        // (in the replay) or after (queued live), never both.
        let mut all = self.shared.delivery.history.all().lock();
        let entry = self
            .shared
            .delivery
            .manager
            .add_entry(outbox.clone(), info, grants);
        let id = entry.id;
        self.shared.metrics.connects.inc();
        self.shared.metrics.connections.inc();
        if protocol == Protocol::V1 {
            self.apply_prefetch(&mut all, prefetched);
            let replay = recover.map(|at| all.replay(at, self.replay_limit()));
            let at = all.position();
            let state = v1::StreamState {
                epoch: &at.epoch,
                offset: at.offset,
                recovered: replay.as_ref().map(|r| r.recovered),
            };
            let _ = outbox.push(v1::welcome(
                &id.to_string(),
                &id.short(),
                entry.info.user.as_deref(),
                &self.shared.node,
                state,
            ));
            for frame in replay.into_iter().flat_map(|r| r.frames) {
                let _ = outbox.push(frame);
            }
        }
        drop(all);
        self.entry_changed(id);
        if let Some(user) = &entry.info.user {
            self.user_online(user, true);
        }
        if protocol != Protocol::Pusher {
            self.hub_webhook(EventType::ConnectionOpened, || {
                json!({
                    "connection": id.to_string(),
                    "user": entry.info.user.as_deref(),
                    "protocol": if protocol == Protocol::V1 { crate::protocol::V1 } else { "plain" },
                    "remote": entry.info.remote_addr.map(|a| a.to_string()),
                })
            });
            if self.shared.config.announce {
                self.announce(envelope::joined(&id.short()));
            }
        }
        entry
    }

    /// Removes a `/ws` connection (if a failed send has not already) and announces its leaving:
    /// to every plain client (docs/PROTOCOL.md, "Plain mode"), and to the members of each group it was in. Called
    /// exactly once per registered connection, by the task that owns it.
    pub(crate) fn unregister(&self, entry: &HubEntry, ending: (&'static str, u16)) {
        let reason = ending.0;
        // Metrics first: whoever sees the connection gone from the registry also sees it counted.
        self.shared.metrics.connections.dec();
        self.shared
            .metrics
            .disconnects
            .get_or_create(&Reason { reason })
            .inc();
        self.shared.delivery.manager.remove(entry.id);
        self.forget_replies(entry.id);
        self.entry_changed(entry.id);
        if let Some(user) = &entry.info.user {
            self.user_online(user, false);
        }
        let mut cork = Cork::new();
        for group in entry.groups() {
            let who = Who {
                id: entry.id,
                user: entry.info.user.as_deref(),
                info: entry.info.user_info.as_deref(),
            };
            self.membership_event(false, &group, who, None, &mut cork);
        }
        cork.flush_deferred();
        if entry.info.protocol != Protocol::Pusher {
            let user = entry.info.user.as_deref();
            self.hub_webhook(EventType::ConnectionClosed, || {
                json!({
                    "connection": entry.id.to_string(),
                    "user": user,
                    "code": ending.1,
                    "reason": ending.0,
                    "duration_ms": entry.info.connected_at().elapsed().map_or(0, |d| d.as_millis() as u64),
                })
            });
            if self.shared.config.announce {
                self.announce(envelope::left(&entry.id.short()));
            }
        }
    }

    /// A client's text message: an `echo` to the sender, then a `message` to everyone. The
    /// writes happen when the caller flushes `cork` (after the whole burst it read).
    pub(crate) fn on_text(&self, from: ConnId, text: &str, cork: &mut HubCork) {
        self.count_in(text.len());
        self.hub_webhook(EventType::MessageReceived, || {
            let user = self
                .shared
                .delivery
                .manager
                .get(from)
                .and_then(|e| e.info.user.clone());
            json!({
                "connection": from.to_string(),
                "user": user.as_deref(),
                "kind": "broadcast",
                "data": text,
            })
        });
        let short = from.short();
        self.send_corked(
            from,
            &envelope::encode(Kind::Echo, Some(&short), text),
            cork,
        );
        self.publish_all(Kind::Message, Some(&short), text, cork);
    }

    /// A client's binary message: relayed unchanged to the sender, then to everyone.
    pub(crate) fn on_binary(&self, from: ConnId, data: &[u8], cork: &mut HubCork) {
        self.count_in(data.len());
        self.send_corked(from, &frame::encode(OpCode::Binary, data), cork);
        let p = crate::wire::Publication::from(crate::wire::BinaryMessage {
            data: data.to_vec(),
        });
        self.publish(p, cork);
    }

    /// A `joined`/`left` event to a group's members (all but `except`), on every node.
    pub(crate) fn membership_event(
        &self,
        joined: bool,
        group: &str,
        who: Who<'_>,
        except: Option<ConnId>,
        cork: &mut HubCork,
    ) {
        let Who { id, user, info } = who;
        // A hub group (not another app's channel) tells the hub's webhooks, from the member's
        // node: exactly once. On a single node, where the publication is applied inline, a
        // join is told after the group's `group.occupied` and a leave before its
        // `group.vacated`.
        let member_webhook = || {
            if !group.contains('#') {
                let ty = if joined {
                    EventType::GroupJoined
                } else {
                    EventType::GroupLeft
                };
                self.hub_webhook(
                    ty,
                    || json!({ "group": group, "connection": id.to_string(), "user": user }),
                );
            }
        };
        if !joined {
            member_webhook();
        }
        let info = info.and_then(|i| serde_json::value::RawValue::from_string(i.to_owned()).ok());
        // An authenticated member of a group with presence is a presence member, on every
        // node (the same table as Pusher's presence channels).
        if let Some(user) = user.filter(|_| self.presence_tracked(group)) {
            let p = crate::wire::Publication::from(crate::wire::PresenceChange {
                group: group.to_owned(),
                user_id: user.to_owned(),
                added: joined,
                info: info.clone(),
                connection: id.to_string(),
                node: self.node_id().to_owned(),
            });
            self.publish(p, cork);
        }
        let p = crate::wire::Publication::from(crate::wire::Membership {
            group: group.to_owned(),
            joined,
            connection: id.short(),
            user: user.map(str::to_owned),
            except: except.map(|e| e.to_string()),
            node: Some(self.node_id().to_owned()),
            info,
        });
        self.publish(p, cork);
        if joined {
            member_webhook();
        }
    }

    /// A connection of `user` opened or closed: counted on every node.
    fn user_online(&self, user: &str, online: bool) {
        let mut cork = Cork::new();
        let p = crate::wire::Publication::from(crate::wire::Online {
            user: user.to_owned(),
            node: self.node_id().to_owned(),
            online,
        });
        self.publish(p, &mut cork);
    }

    pub(crate) fn count_in(&self, bytes: usize) {
        let m = &self.shared.metrics;
        m.messages_in.inc();
        m.bytes_in.inc_by(bytes as u64);
    }

    /// Flushes a cork, timing the fan-out until its writes are done (on an event loop they
    /// wait for the end of its turn: the time includes that wait).
    pub(crate) fn flush(&self, cork: &mut HubCork, started: std::time::Instant) {
        if !cork.is_empty() {
            cork.flush_then(Arc::new(FanoutTimer {
                started,
                seconds: self.shared.metrics.fanout_seconds.clone(),
            }));
        }
    }
}

/// Observes a fan-out's duration when flushed after its writes.
struct FanoutTimer {
    started: std::time::Instant,
    seconds: prometheus_client::metrics::histogram::Histogram,
}

impl crate::event_loops::Flush for FanoutTimer {
    fn flush(&self) {
        self.seconds.observe(self.started.elapsed().as_secs_f64());
    }
}
