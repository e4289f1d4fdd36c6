//! The hub's side of a shared backplane: turning hub calls into publications, delivering what
//! arrives from the bus to local connections, keeping this node's entries, and filling a cold
//! stream from the shared history when a client recovers on a node that has not seen it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::value::RawValue;

use super::deliver::Numbering;
use super::{Hub, HubCork, Shared};
use crate::backplane::{
    self, AllKind, BackplaneConfig, BusMessage, Cluster, EntryChange, Publication, StreamName,
};
use crate::envelope::Kind;
use crate::frame::Frame;
use crate::history::{Position, Stream};
use crate::id::ConnId;
use crate::protocol::v1;

/// The hub as the backplane sees it: every call goes to the hub while it exists.
struct NodeHandler(Weak<Shared>);

impl backplane::Handler for NodeHandler {
    fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    fn engine_changed(&self, up: bool) {
        if let Some(h) = Hub::upgrade(&self.0) {
            h.backplane_changed(up);
        }
    }

    fn on_bus(
        &self,
        batch: Vec<BusMessage>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let Some(h) = Hub::upgrade(&self.0) else {
                return;
            };
            let started = std::time::Instant::now();
            let mut cork = HubCork::new();
            for m in batch {
                h.on_bus(m, &mut cork).await;
            }
            h.flush(&mut cork, started);
        })
    }

    fn deliver_local_only(&self, publication: &Publication) {
        if let Some(h) = Hub::upgrade(&self.0) {
            h.deliver_local_only(publication);
        }
    }

    fn local_entries(&self) -> Vec<(String, String)> {
        Hub::upgrade(&self.0).map_or_else(Vec::new, |h| h.local_entries())
    }

    fn event(&self, reason: &'static str) {
        if let Some(h) = Hub::upgrade(&self.0) {
            h.backplane_event(reason);
        }
    }
}

/// The backplane's publication queue is full: the node publishes faster than the engine
/// takes it. Nothing was published; try again shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the backplane is not keeping up: nothing was published, try again in a second")]
pub struct Busy;

/// What a command needed from the backplane, fetched before it is handled.
pub(crate) enum Fetched {
    /// For a `join`: what the recovery needs from the shared history.
    Stream(Option<Prefetch>),
    /// For a `send`: how many connections the target has in the cluster.
    Target(Option<usize>),
}

/// What a recovery needs from the shared history, fetched before any lock is taken.
pub(crate) struct Prefetch {
    /// The stream's shared epoch and last offset, when this node had not seen it.
    position: Option<(String, u64)>,
    /// Publications this node does not keep: offset, age, frame; oldest first.
    older: Vec<(u64, Duration, Frame)>,
}

/// How long a `send` waits for the backplane to locate its target (awaited, not blocking:
/// only the sending connection waits).
const LOCATE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a node waits for the shared history when a client recovers on it.
const FILL_TIMEOUT: Duration = Duration::from_secs(1);

impl Hub {
    /// Connects this hub to a shared backplane (Redis or NATS). Must be called inside a Tokio runtime;
    /// the engine need not be up yet (the node starts degraded and connects in the background).
    ///
    /// # Errors
    /// When the URL is unusable, or a backplane is already attached.
    pub fn connect_backplane(&self, config: BackplaneConfig) -> Result<(), String> {
        crate::wire::parse_node_id(self.node_id())?;
        if self.cluster().is_some() {
            return Err("a backplane is already attached".to_owned());
        }
        // Before the backplane's tasks start: they may connect (and deliver) at once.
        self.shared.history.set_clustered();
        self.shared.metrics.backplane_up.set(0);
        let handler = Arc::new(NodeHandler(self.downgrade()));
        let cluster = backplane::start(
            handler,
            self.shared.config.history,
            config,
            self.shared.node.clone(),
        )?;
        self.shared
            .cluster
            .set(cluster)
            .map_err(|_| "a backplane is already attached".to_owned())
    }

    /// The backplane, when this node is part of a cluster.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.shared.cluster.get()
    }

    /// This node's id (shown in connection listings and metrics).
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// The backplane if it is reachable now: publications go through it.
    pub(crate) fn shared_bus(&self) -> Option<&Arc<Cluster>> {
        self.cluster().filter(|c| c.accepts_publications())
    }

    pub(crate) fn downgrade(&self) -> Weak<Shared> {
        Arc::downgrade(&self.shared)
    }

    pub(crate) fn upgrade(weak: &Weak<Shared>) -> Option<Hub> {
        weak.upgrade().map(|shared| Hub { shared })
    }

    /// Counts a backplane event (`wshub_backplane_events_total{reason}`).
    pub(crate) fn backplane_event(&self, reason: &'static str) {
        self.shared
            .metrics
            .backplane_events
            .get_or_create(&crate::metrics::Reason { reason })
            .inc();
    }

    /// The engine became reachable or unreachable (the backplane already records it).
    pub(crate) fn backplane_changed(&self, up: bool) {
        self.shared.metrics.backplane_up.set(i64::from(up));
        if up {
            tracing::info!(node = %self.node_id(), "backplane connected: cross-node delivery on");
        } else {
            self.backplane_event("disconnected");
            tracing::warn!(node = %self.node_id(), "backplane unreachable: delivering to this node's connections only, reconnecting");
        }
    }

    /// A message from the bus: delivered to the matching local connections. For a stream, a
    /// jump in offsets (messages missed while the subscription was down) is filled from the
    /// shared history first, so local clients see every offset in order.
    ///
    /// The frames wait in `cork`: the caller flushes after the burst of bus messages it had,
    /// so a burst leaves in one write per socket, as on a single node.
    pub(crate) async fn on_bus(&self, msg: BusMessage, cork: &mut HubCork) {
        let cork = &mut *cork;
        match (msg.publication.stream(), msg.epoch.as_deref(), msg.offset) {
            (Some(stream), Some(epoch), Some(offset)) => {
                let top = self.stream_ref(stream).lock().known_top(epoch);
                if let (Some(top), Some(c)) = (top, self.cluster()) {
                    if offset > top + 1 {
                        match c.engine().range(stream, top + 1, offset - 1).await {
                            Ok(missed) => {
                                self.backplane_event("gap_filled");
                                tracing::info!(
                                    n = missed.len(),
                                    "filled a gap in a stream from the shared history"
                                );
                                for s in missed {
                                    self.deliver(
                                        &s.publication,
                                        Numbering::Given(epoch, s.offset),
                                        cork,
                                    );
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "could not fill a gap in a stream")
                            }
                        }
                    }
                }
                self.deliver(&msg.publication, Numbering::Given(epoch, offset), cork);
            }
            _ => {
                self.deliver(&msg.publication, Numbering::None, cork);
            }
        }
    }

    /// This node's connection entries, as the REST API shows them (for a full rewrite).
    pub(crate) fn local_entries(&self) -> Vec<(String, String)> {
        self.connections(None, None)
            .into_iter()
            .map(|c| {
                let dto = self.entry_of(c);
                (
                    dto.id.clone(),
                    serde_json::to_string(&dto).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Tells the backplane a connection's entry changed (or is gone).
    pub(crate) fn entry_changed(&self, id: ConnId) {
        let Some(c) = self.cluster() else { return };
        match self.connection(id) {
            Some(snap) => {
                let dto = self.entry_of(snap);
                c.entry(EntryChange::Put {
                    id: dto.id.clone(),
                    json: serde_json::to_string(&dto).unwrap_or_default(),
                });
            }
            None => c.entry(EntryChange::Remove { id: id.to_string() }),
        }
    }

    /// Whether a recovery from `since` (or a first join) on `stream` needs the shared history:
    /// this node has not seen the stream yet, or keeps less than the client missed.
    fn needs_prefetch(&self, stream: StreamName<'_>, since: Option<&Position>) -> bool {
        if self.shared_bus().is_none() {
            return false;
        }
        let s = self.stream_ref(stream);
        let s = s.lock();
        s.is_cold()
            || since.is_some_and(|p| {
                *p.epoch == *s.position().epoch
                    && p.offset < s.position().offset
                    && p.offset + 1 < s.first_kept()
            })
    }

    /// What a recovery on `stream` from `since` needs from the shared history, fetched with no
    /// lock held (at most a second); `None` when nothing is needed or the backplane did not
    /// answer (then the stream stays as it is, and recovery is reported incomplete where it is).
    pub(crate) async fn prefetch(
        &self,
        stream: StreamName<'_>,
        since: Option<&Position>,
    ) -> Option<Prefetch> {
        if !self.needs_prefetch(stream, since) {
            return None;
        }
        let c = self.shared_bus()?;
        let keep = self
            .shared
            .config
            .history
            .ttl
            .max(Duration::from_secs(3600));
        // What this node keeps, read under a short lock; the engine is asked with none held.
        let (local, first_kept, cold) = {
            let s = self.stream_ref(stream);
            let s = s.lock();
            (s.position(), s.first_kept(), s.is_cold())
        };
        let engine = c.engine();
        let fetched = tokio::time::timeout(FILL_TIMEOUT, async {
            let (epoch, top) = if cold {
                engine.meta(stream, keep).await?
            } else {
                (local.epoch.to_string(), local.offset)
            };
            let older = match since.filter(|p| *p.epoch == *epoch && p.offset < top) {
                Some(since) => {
                    let kept_from = if cold { top + 1 } else { first_kept };
                    let to = kept_from.min(top + 1) - 1;
                    if since.offset < to {
                        engine.range(stream, since.offset + 1, to).await?
                    } else {
                        Vec::new()
                    }
                }
                None => Vec::new(),
            };
            Ok::<_, backplane::BackplaneError>((epoch, top, older))
        })
        .await;
        match fetched {
            Ok(Ok((epoch, top, older))) => {
                let now = backplane::now_ms();
                let ttl = self.shared.config.history.ttl;
                let older = older
                    .into_iter()
                    .filter_map(|st| {
                        let age = Duration::from_millis(now.saturating_sub(st.at_ms));
                        if age >= ttl {
                            return None;
                        }
                        let v1 = Self::v1_frame(&st.publication, Some(st.offset))?;
                        Some((st.offset, age, v1))
                    })
                    .collect();
                Some(Prefetch {
                    position: cold.then_some((epoch, top)),
                    older,
                })
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "shared history unavailable for a recovery");
                None
            }
            Err(_) => {
                tracing::warn!("shared history did not answer in time for a recovery");
                None
            }
        }
    }

    /// Applies what [`prefetch`](Self::prefetch) brought, under the stream's lock: the shared
    /// position if the stream is still cold, and the older publications if they still end
    /// right before what is kept (anything that moved meanwhile is re-checked here).
    pub(crate) fn apply_prefetch(&self, s: &mut Stream, p: Option<Prefetch>) {
        let Some(p) = p else { return };
        if let Some((epoch, top)) = p.position {
            if s.is_cold() {
                s.set_position(&epoch, top);
            }
        }
        s.prepend(p.older);
    }

    /// Every connection entry in the backplane, oldest first.
    async fn entries_everywhere(c: &Cluster) -> Result<Vec<crate::wire::ConnectionEntry>, String> {
        let raw = c
            .engine()
            .entries(c.config().node_ttl)
            .await
            .map_err(|e| format!("the backplane could not be read: {e}"))?;
        let mut list: Vec<crate::wire::ConnectionEntry> = raw
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        list.sort_by(|a, b| (&a.connected_at, &a.id).cmp(&(&b.connected_at, &b.id)));
        Ok(list)
    }

    /// A group message as it travels between nodes.
    pub(crate) fn group_publication(
        group: &str,
        from: Option<&str>,
        user: Option<&str>,
        message: &RawValue,
    ) -> Publication {
        Publication::Group {
            group: group.to_owned(),
            from: from.map(str::to_owned),
            user: user.map(str::to_owned),
            message: message.to_owned(),
        }
    }

    /// A text to everyone as it travels between nodes.
    pub(crate) fn all_publication(kind: Kind, from: Option<&str>, text: &str) -> Publication {
        let kind = match kind {
            Kind::ServerBroadcast => AllKind::ServerBroadcast,
            _ => AllKind::Message,
        };
        Publication::All {
            kind,
            from: from.map(str::to_owned),
            text: text.to_owned(),
        }
    }
}

impl Hub {
    /// How many connections a `send` to `to` reaches in the cluster, asked of the backplane
    /// with no lock held (at most 3 s); `None` when the target is on this node only (a
    /// local connection: nothing to ask) or there is no backplane.
    pub(crate) async fn locate_target(&self, to: &v1::Target<'_>) -> Option<usize> {
        let c = self.shared_bus()?;
        let ttl = c.config().node_ttl;
        let asked = match to {
            v1::Target::Connection(id) => {
                if id
                    .parse::<ConnId>()
                    .is_ok_and(|id| self.shared.manager.get(id).is_some())
                {
                    return None;
                }
                tokio::time::timeout(LOCATE_TIMEOUT, c.engine().locate(id, ttl))
                    .await
                    .map(|r| r.map(|node| usize::from(node.is_some())))
            }
            v1::Target::User(u) => tokio::time::timeout(LOCATE_TIMEOUT, c.engine().entries(ttl))
                .await
                .map(|r| r.map(|all| count_user(&all, u))),
        };
        match asked {
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the backplane could not locate a send's target");
                Some(0)
            }
            Err(_) => {
                tracing::warn!("the backplane did not locate a send's target in time");
                Some(0)
            }
        }
    }

    /// A `send` in a cluster whose backplane is up, to a target that is not (only) here:
    /// published through the backplane when [`locate_target`](Self::locate_target) found it
    /// (`found`: how many connections it has). `None`: not a cluster matter (no backplane, or
    /// the connection is local).
    pub(super) fn direct_cluster(
        &self,
        to: &v1::Target<'_>,
        from: Option<&str>,
        user: Option<&str>,
        message: &RawValue,
        found: Option<usize>,
        cork: &mut HubCork,
    ) -> Option<usize> {
        self.shared_bus()?;
        if let v1::Target::Connection(id) = to {
            if id
                .parse::<ConnId>()
                .is_ok_and(|id| self.shared.manager.get(id).is_some())
            {
                return None;
            }
        }
        // Not located beforehand (a library call): sent through the backplane all the same,
        // counting what is known here.
        let n = match (found, to) {
            (Some(n), _) => n,
            (None, v1::Target::Connection(_)) => 1,
            (None, v1::Target::User(u)) => self.shared.manager.user_connections(u).len().max(1),
        };
        if n == 0 {
            return Some(0);
        }
        let p = match to {
            v1::Target::Connection(id) => Publication::Direct {
                to: id.to_string(),
                from: from.map(str::to_owned),
                user: user.map(str::to_owned),
                message: message.to_owned(),
            },
            v1::Target::User(u) => Publication::User {
                to: u.to_string(),
                from: from.map(str::to_owned),
                user: user.map(str::to_owned),
                message: message.to_owned(),
            },
        };
        self.publish(p, cork);
        Some(n)
    }
}

/// How many of these connection entries belong to `user`.
fn count_user(entries: &[String], user: &str) -> usize {
    entries
        .iter()
        .filter_map(|j| serde_json::from_str::<crate::wire::ConnectionEntry>(j).ok())
        .filter(|c| c.user.as_deref() == Some(user))
        .count()
}

/// What the REST API does on whichever node it is called: the same answers as a single node,
/// computed from the backplane's entries when this node is part of a cluster.
impl Hub {
    /// Connections (optionally a group's members or a user's), cluster-wide.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub async fn list_connections(
        &self,
        group: Option<&str>,
        user: Option<&str>,
    ) -> Result<Vec<crate::wire::ConnectionEntry>, String> {
        let Some(c) = self.cluster() else {
            return Ok(self
                .connections(group, user)
                .into_iter()
                .map(|s| self.entry_of(s))
                .collect());
        };
        let mut all = Self::entries_everywhere(c).await?;
        all.retain(|c| {
            group.is_none_or(|g| c.groups.iter().any(|x| x == g))
                && user.is_none_or(|u| c.user.as_deref() == Some(u))
        });
        Ok(all)
    }

    /// Where connection `id` is: `Ok(true)` here, `Ok(false)` on another live node.
    ///
    /// # Errors
    /// `Err(None)` when no node has it, `Err(Some(reason))` when the backplane cannot be read.
    async fn whereis(&self, id: ConnId) -> Result<bool, Option<String>> {
        if self.shared.manager.get(id).is_some() {
            return Ok(true);
        }
        let Some(c) = self.shared_bus() else {
            return Err(None);
        };
        match c
            .engine()
            .locate(&id.to_string(), c.config().node_ttl)
            .await
        {
            Ok(Some(_)) => Ok(false),
            Ok(None) => Err(None),
            Err(e) => Err(Some(format!("the backplane could not be read: {e}"))),
        }
    }

    /// Closes connection `id` wherever it is, with a close code and reason; `Ok(false)`: no
    /// such connection.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub async fn close_anywhere(
        &self,
        id: ConnId,
        code: u16,
        reason: &str,
    ) -> Result<bool, String> {
        let remote = Publication::Disconnect {
            to: id.to_string(),
            code,
            reason: reason.to_owned(),
        };
        self.on_connection(id, |h| h.close_connection(id, code, reason), remote)
            .await
    }

    /// Sends `message` to connection `id` wherever it is, as a `direct` envelope; `Ok(false)`:
    /// no such connection.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub async fn send_anywhere(&self, id: ConnId, message: &RawValue) -> Result<bool, String> {
        let remote = Publication::Direct {
            to: id.to_string(),
            from: None,
            user: None,
            message: message.to_owned(),
        };
        self.on_connection(id, |h| h.send_to_connection(id, message), remote)
            .await
    }

    /// Adds a connection that is not on this node to a group, on the node that holds it (its
    /// answer is not awaited); `Ok(false)`: no node has it.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub async fn add_member_elsewhere(&self, id: ConnId, group: &str) -> Result<bool, String> {
        let remote = Publication::Member {
            to: id.to_string(),
            group: group.to_owned(),
            add: true,
        };
        self.on_connection(id, |_| false, remote).await
    }

    /// Removes connection `id` from a group wherever it is; `Ok(false)`: no such connection,
    /// or not a member here.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub async fn remove_member_anywhere(&self, id: ConnId, group: &str) -> Result<bool, String> {
        let remote = Publication::Member {
            to: id.to_string(),
            group: group.to_owned(),
            add: false,
        };
        self.on_connection(id, |h| h.remove_from_group(id, group), remote)
            .await
    }

    /// Applies `publication` to connection `id` wherever it is: `local` here, or through the
    /// backplane. `Ok(false)`: no such connection.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    async fn on_connection(
        &self,
        id: ConnId,
        local: impl FnOnce(&Hub) -> bool,
        publication: Publication,
    ) -> Result<bool, String> {
        match self.whereis(id).await {
            Ok(true) => Ok(local(self)),
            Ok(false) => {
                let mut cork = HubCork::new();
                self.publish(publication, &mut cork);
                cork.flush();
                Ok(true)
            }
            Err(None) => Ok(false),
            Err(Some(e)) => Err(e),
        }
    }

    /// A REST broadcast: `(recipients, offset)`. On a single node, or while a cluster's engine
    /// is away (offset 0: delivered here only), the recipients are counted; in a cluster they
    /// are `None` (unknown: counting them would mean reading every node's listing).
    ///
    /// # Errors
    /// [`Busy`] when the backplane's queue is full: nothing was published.
    pub async fn broadcast_everywhere(&self, message: &str) -> Result<(Option<usize>, u64), Busy> {
        let Some(c) = self.shared_bus() else {
            let (n, offset) = self.broadcast_text_at(message);
            return Ok((Some(n), offset));
        };
        let rx = c
            .publish(Self::all_publication(Kind::ServerBroadcast, None, message))
            .map_err(|_| self.busy())?;
        let offset = await_position(rx).await;
        Ok(((offset == 0).then(|| self.connection_count()), offset))
    }

    fn busy(&self) -> Busy {
        self.backplane_event("queue_full");
        Busy
    }

    /// A REST group publish: `(recipients, offset)`, as [`broadcast_everywhere`](Self::broadcast_everywhere).
    ///
    /// # Errors
    /// As [`broadcast_everywhere`](Self::broadcast_everywhere).
    pub async fn publish_everywhere(
        &self,
        group: &str,
        message: &RawValue,
    ) -> Result<(Option<usize>, u64), Busy> {
        let Some(c) = self.shared_bus() else {
            let (n, offset) = self.publish_to_group_at(group, message);
            return Ok((Some(n), offset));
        };
        let rx = c
            .publish(Self::group_publication(group, None, None, message))
            .map_err(|_| self.busy())?;
        let offset = await_position(rx).await;
        let here = || self.group_members(group).map_or(0, |m| m.len());
        Ok(((offset == 0).then(here), offset))
    }

    /// A REST send to a user: how many connections it reached.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub async fn send_to_user_everywhere(
        &self,
        user: &str,
        message: &RawValue,
    ) -> Result<usize, String> {
        if self.shared_bus().is_none() {
            return Ok(self.send_to_user(user, message));
        }
        let n = self.list_connections(None, Some(user)).await?.len();
        if n > 0 {
            let mut cork = HubCork::new();
            self.publish(
                Publication::User {
                    to: user.to_owned(),
                    from: None,
                    user: None,
                    message: message.to_owned(),
                },
                &mut cork,
            );
            cork.flush();
        }
        Ok(n)
    }

    /// Every group with its member count, cluster-wide.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub async fn list_groups(&self) -> Result<Vec<(String, usize)>, String> {
        if self.cluster().is_none() {
            return Ok(self
                .groups()
                .into_iter()
                .map(|(g, n)| (g.to_string(), n))
                .collect());
        }
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for c in self.list_connections(None, None).await? {
            for g in c.groups {
                *counts.entry(g).or_default() += 1;
            }
        }
        Ok(counts.into_iter().collect())
    }
}

/// The offset the backplane gave a publication (0 when it was delivered locally only, or the
/// answer took more than 3 seconds).
pub(super) async fn await_position(
    rx: tokio::sync::oneshot::Receiver<Option<(String, u64)>>,
) -> u64 {
    match tokio::time::timeout(Duration::from_secs(3), rx).await {
        Ok(Ok(Some((_, offset)))) => offset,
        _ => 0,
    }
}
