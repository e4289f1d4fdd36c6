//! Scale-out (docs/CLUSTER.md): several wshub nodes share an existing engine, Redis or NATS with
//! JetStream (or an in-process bus), as their backplane; each implements the [`Engine`] trait. No home-made cluster protocol: the engine carries every publication to every
//! node, assigns the offsets of group and all-clients streams, keeps their shared history, and
//! holds each node's connection entries under a TTL.
//!
//! The data flow: a hub call that must reach connections anywhere (a broadcast, a group publish,
//! a user or direct send, a join/leave event) becomes a [`Publication`], queued without waiting
//! to this node's publisher task. That task sends it to the engine in order (pipelined batches);
//! for a stream the engine atomically takes the next offset, appends to the stream's history and
//! publishes on the bus. Every node's subscriber task, this one's included, receives each bus
//! message once and hands it to its hub, which delivers it to the matching local connections
//! with the same fan-out code as a single node. A node that sees a stream's offsets jump (it
//! missed bus messages while disconnected) fetches the missing ones from the shared history
//! before delivering, so its clients see no gap.
//!
//! When the engine is unreachable the node says so (`/readyz` 503, `wshub_backplane_up 0`, a
//! warning in the log), keeps serving its own connections (publications are delivered locally,
//! without offsets, and are not kept in history), and reconnects with backoff; cross-node
//! delivery resumes by itself once the engine is back.

mod config;
pub mod local;
pub mod nats;
pub mod redis;
pub mod relay;
mod tasks;

pub use config::{BackplaneConfig, BackplaneUrl};
pub(crate) use tasks::{backoff, now_ms};
use tasks::{spawn_tasks, ENTRY_QUEUE};

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::history::HistoryConfig;

use tokio::sync::{mpsc, oneshot};

pub use crate::wire::{AllKind, BusMessage, EntryChange, Publication, Stored, StreamName};

/// What the backplane calls back into: the node's hub. Defined here, implemented above, so
/// the backplane depends on nothing of the hub's.
pub trait Handler: Send + Sync + 'static {
    /// Whether the hub is still there (the node's tasks end when it is not).
    fn alive(&self) -> bool;
    /// The engine became reachable (`true`) or unreachable: called once per change, after
    /// [`Cluster::is_up`] already says so.
    fn engine_changed(&self, up: bool);
    /// Messages from the bus, in the order they arrived: each is delivered to the matching
    /// local connections once, and the frames of the whole batch are written together.
    fn on_bus(&self, batch: Vec<BusMessage>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// A publication that could not go through the engine: delivered on this node only.
    fn deliver_local_only(&self, publication: &Publication);
    /// This node's connection entries as `(id, JSON)`, for a full rewrite.
    fn local_entries(&self) -> Vec<(String, String)>;
    /// Counts a backplane event (`disconnected`, `publish_failed`, `gap_filled`, …).
    fn event(&self, reason: &'static str);
    /// What answers the requests other nodes relay to this one, if anything does.
    fn relay_service(&self) -> Option<Arc<dyn relay::Service>>;
}

/// A queued publication and who waits for its offset.
pub struct Outgoing {
    /// The publication.
    pub publication: Publication,
    /// Who waits for its position (epoch, offset), if anyone.
    pub reply: Option<oneshot::Sender<Option<crate::history::Position>>>,
    /// When the engine cannot take it: delivered on this node only (`true`, answered `None`),
    /// or not at all (`false`: the reply is dropped unanswered, so the waiter knows nothing
    /// was delivered and can try elsewhere).
    pub local_fallback: bool,
}

/// This node's side of the backplane: a handle the hub calls without waiting.
pub struct Cluster {
    node: Arc<str>,
    up: AtomicBool,
    /// The last publication through the engine succeeded.
    publishing: AtomicBool,
    out: mpsc::Sender<Outgoing>,
    entries: mpsc::Sender<EntryChange>,
    /// Asks the entry keeper for a full rewrite (a change could not be queued).
    resync: Arc<tokio::sync::Notify>,
    engine: Arc<dyn Engine>,
    config: BackplaneConfig,
    history: HistoryConfig,
    /// Requests to other nodes, and theirs to this one.
    relay: relay::Relay,
    /// When this node joined.
    since: std::time::Instant,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Cluster {
    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long ago this node joined (younger than the node TTL, it may not have heard of
    /// every live node yet).
    pub fn age(&self) -> Duration {
        self.since.elapsed()
    }

    /// Whether the engine is reachable (cross-node delivery works).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn set_up(&self, up: bool) -> bool {
        if up {
            self.publishing.store(true, Ordering::Release);
        }
        self.up.swap(up, Ordering::AcqRel)
    }

    /// Records that the engine came or went, and tells the hub when that is a change. Done
    /// here, by the backplane's own tasks, rather than by the hub: a subscriber may connect
    /// before the hub has even stored this handle.
    pub(crate) fn engine_changed(&self, h: &dyn Handler, up: bool) {
        if self.set_up(up) != up {
            h.engine_changed(up);
        }
    }

    /// Whether publications should go through the engine: its subscription is up, or (while it
    /// reconnects) publishing still works, so what is published here stays in the shared
    /// history and reaches the other nodes. After a failed publication, until the engine is
    /// back, they are delivered locally only.
    pub fn accepts_publications(&self) -> bool {
        self.is_up() || self.publishing.load(Ordering::Acquire)
    }

    /// The settings.
    pub fn config(&self) -> &BackplaneConfig {
        &self.config
    }

    /// The engine.
    pub fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    /// Queues a publication for every node; the receiver gets its stream position once the
    /// engine took it (`None` when it was delivered locally only, during an outage).
    ///
    /// # Errors
    /// [`QueueFull`] (with the publication) when [`BackplaneConfig::queue`] publications
    /// already wait for the engine.
    pub fn publish(
        &self,
        publication: Publication,
    ) -> Result<oneshot::Receiver<Option<crate::history::Position>>, QueueFull> {
        self.publish_with(publication, true)
    }

    /// As [`publish`](Self::publish), but a publication the engine cannot take is delivered
    /// nowhere: the receiver then fails (its sender is dropped) instead of getting `None`.
    /// For publishers that retry elsewhere (REST), who must not see a partial delivery.
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    pub fn publish_or_nothing(
        &self,
        publication: Publication,
    ) -> Result<oneshot::Receiver<Option<crate::history::Position>>, QueueFull> {
        self.publish_with(publication, false)
    }

    fn publish_with(
        &self,
        publication: Publication,
        local_fallback: bool,
    ) -> Result<oneshot::Receiver<Option<crate::history::Position>>, QueueFull> {
        let (tx, rx) = oneshot::channel();
        self.out
            .try_send(Outgoing {
                publication,
                reply: Some(tx),
                local_fallback,
            })
            .map_err(QueueFull::of)?;
        Ok(rx)
    }

    /// Queues a publication for every node, nobody waiting.
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    pub fn publish_and_forget(&self, publication: Publication) -> Result<(), QueueFull> {
        self.out
            .try_send(Outgoing {
                publication,
                reply: None,
                local_fallback: true,
            })
            .map_err(QueueFull::of)
    }

    /// Publications waiting for the engine.
    pub fn queued(&self) -> usize {
        self.out.max_capacity() - self.out.capacity()
    }

    /// Queues a change of this node's connection entries; when the queue is full the keeper
    /// rewrites every entry instead (nothing is lost, the rewrite is merely bigger).
    pub fn entry(&self, change: EntryChange) {
        if self.entries.try_send(change).is_err() {
            self.resync.notify_one();
        }
    }
}

/// The publication queue to the engine is full (the engine is slower than the node
/// publishes): the publication comes back, unsent.
#[derive(Debug)]
pub struct QueueFull(pub Box<Publication>);

impl QueueFull {
    fn of(e: mpsc::error::TrySendError<Outgoing>) -> Self {
        match e {
            mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o) => {
                Self(Box::new(o.publication))
            }
        }
    }
}

/// The node's tasks, made but not started: the hub stores the [`Cluster`] handle first, so
/// nothing the tasks bring (a connection, a bus message) can find it missing.
pub struct Tasks {
    cluster: Arc<Cluster>,
    out: mpsc::Receiver<Outgoing>,
    entries: mpsc::Receiver<EntryChange>,
}

impl Tasks {
    /// Starts the subscriber, the publisher and the entry keeper (they end with the hub). The
    /// engine need not be reachable yet: the node starts degraded and connects in the
    /// background.
    pub fn start(self, handler: Arc<dyn Handler>) {
        spawn_tasks(handler, self.cluster, self.out, self.entries);
    }
}

/// Makes a node's side of the backplane `config` names; [`Tasks::start`] sets it going.
///
/// # Errors
/// [`AttachError`]: the URL or the prefix is not usable (nothing was made).
pub fn prepare(
    history: HistoryConfig,
    config: BackplaneConfig,
    node: Arc<str>,
) -> Result<(Arc<Cluster>, Tasks), AttachError> {
    let engine: Arc<dyn Engine> = match &config.url {
        BackplaneUrl::Memory => return Err(AttachError::Memory),
        BackplaneUrl::Redis(url) => Arc::new(redis::RedisEngine::new(url, &config.prefix, &node)?),
        BackplaneUrl::Nats(url) => Arc::new(nats::NatsEngine::new(
            url,
            &config.prefix,
            &node,
            history,
            config.node_ttl,
        )?),
        BackplaneUrl::Local(name) => Arc::new(local::LocalEngine::new(
            &format!("{}/{name}", config.prefix),
            &node,
            history,
        )),
    };
    let (out_tx, out_rx) = mpsc::channel(config.queue.max(1));
    let (entries_tx, entries_rx) = mpsc::channel(ENTRY_QUEUE);
    let resync = Arc::new(tokio::sync::Notify::new());
    let cluster = Arc::new(Cluster {
        node,
        up: AtomicBool::new(false),
        publishing: AtomicBool::new(false),
        out: out_tx,
        entries: entries_tx,
        resync,
        engine,
        config,
        history,
        relay: relay::Relay::default(),
        since: std::time::Instant::now(),
    });
    let tasks = Tasks {
        cluster: cluster.clone(),
        out: out_rx,
        entries: entries_rx,
    };
    Ok((cluster, tasks))
}

/// Why a backplane could not be attached (nothing was made; the hub stays a single node).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The URL is not one the engine's client can use.
    #[error("--backplane {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What the engine's client said.
        reason: String,
    },
    /// The key prefix has characters the engine's names cannot carry.
    #[error("backplane prefix `{0}`: letters, digits, _ and - only")]
    BadPrefix(String),
    /// The node id cannot name keys and subjects.
    #[error("node id `{0}`: a node id is 1 to 64 characters from A-Z a-z 0-9 _ - .")]
    BadNodeId(String),
    /// `memory://` is a single node: there is no cluster to attach.
    #[error("the memory backplane needs no cluster")]
    Memory,
    /// This hub has a backplane already.
    #[error("a backplane is already attached")]
    AlreadyAttached,
}

/// Why the engine could not do something (it is unreachable, or answered with an error).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackplaneError(pub String);

impl From<::redis::RedisError> for BackplaneError {
    fn from(e: ::redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

/// What an engine's operations return.
pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackplaneError>> + Send + 'a>>;

/// An engine behind the backplane: it numbers stream publications and keeps their shared
/// history, carries every publication to every node, and holds the nodes' connection entries.
/// Redis, NATS and the in-process bus implement it side by side; the node's tasks and the hub
/// use only this.
///
/// A single node has no engine: it is the cluster of one whose "engine" is its own stream
/// lock, so its publications are numbered and delivered inline by the hub, through the same
/// delivery function the engines' messages go through (see `crate::hub`). Calling through a
/// trait object and a queue there would add a hop to every publication and buy nothing.
pub trait Engine: Send + Sync + 'static {
    /// A stream's epoch and last offset (created when missing).
    fn meta<'a>(
        &'a self,
        stream: StreamName<'a>,
        keep: Duration,
    ) -> EngineFuture<'a, (String, u64)>;

    /// Stored publications with offsets in `from..=to`, oldest first.
    fn range<'a>(
        &'a self,
        stream: StreamName<'a>,
        from: u64,
        to: u64,
    ) -> EngineFuture<'a, Vec<Stored>>;

    /// Every connection entry of every live node.
    fn entries(&self, ttl: Duration) -> EngineFuture<'_, Vec<String>>;

    /// Which live node holds connection `id`, if any.
    fn locate<'a>(&'a self, id: &'a str, ttl: Duration) -> EngineFuture<'a, Option<String>>;

    /// Connection `id`'s entry (its JSON) on whichever live node holds it.
    fn entry<'a>(&'a self, id: &'a str, ttl: Duration) -> EngineFuture<'a, Option<String>>;

    /// Removes this node's entries (a clean shutdown).
    fn leave(&self) -> EngineFuture<'_, ()>;

    /// Keeps a revocation (`user`'s tokens issued before `before`, Unix seconds) in the
    /// engine, for every node, present or future, whatever restarts.
    fn revoke<'a>(&'a self, user: &'a str, before: u64) -> EngineFuture<'a, ()>;

    /// Every revocation kept.
    fn revocations(&self) -> EngineFuture<'_, Vec<(String, u64)>>;

    /// Sends a batch in order; each stream publication's position.
    fn publish_batch<'a>(
        &'a self,
        batch: &'a [Outgoing],
        history: HistoryConfig,
    ) -> EngineFuture<'a, Vec<Option<crate::history::Position>>>;

    /// Replaces this node's entries.
    fn rewrite_entries(
        &self,
        entries: Vec<(String, String)>,
        ttl: Duration,
    ) -> EngineFuture<'_, ()>;

    /// Applies changes to this node's entries.
    fn apply<'a>(&'a self, changes: &'a [EntryChange], ttl: Duration) -> EngineFuture<'a, ()>;

    /// Puts `mail` in node `node`'s mailbox (no answer, no delivery guarantee: a node that is
    /// gone never reads it). The subscriber hands this node's own mail to
    /// its cluster's relay (see [`relay`]).
    fn send_to<'a>(&'a self, node: &'a str, mail: bytes::Bytes) -> EngineFuture<'a, ()>;

    /// Whether entries expire from their own last write (so each heartbeat rewrites them all,
    /// and a heartbeat a third of the TTL is enough).
    fn entries_expire_per_write(&self) -> bool {
        false
    }

    /// The subscriber task: carries the bus to `h` until the hub is gone, telling the cluster
    /// when the engine comes and goes, and `resync` when entries must be rewritten.
    fn subscriber(
        self: Arc<Self>,
        h: Arc<dyn Handler>,
        cluster: Arc<Cluster>,
        resync: Arc<tokio::sync::Notify>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}
