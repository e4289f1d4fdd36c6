//! The hub's side of a shared backplane: attaching to it, what arrives from the bus (filled
//! from the shared history where this node missed some), this node's connection entries, and
//! publications as they travel between nodes. Recovery reads are in `recovery`, the REST
//! operations that reach any node in `anywhere`, delivery itself in `deliver`.

use std::sync::{Arc, Weak};

use serde_json::value::RawValue;

use super::deliver::Numbering;
use super::{Hub, HubCork, Shared};
use crate::backplane::{
    self, AllKind, BackplaneConfig, BusMessage, Cluster, EntryChange, Publication,
};
use crate::envelope::Kind;
use crate::id::ConnId;

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

    fn relay_service(&self) -> Option<Arc<dyn backplane::relay::Service>> {
        Hub::upgrade(&self.0).and_then(|h| h.shared.protocols.relayed.read().clone())
    }
}

/// The backplane's publication queue is full: the node publishes faster than the engine
/// takes it. Nothing was published; try again shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the backplane is not keeping up: nothing was published, try again in a second")]
pub struct Busy;

/// Why an API publication was not published: nothing was delivered anywhere, so retrying it
/// (here later, or on another node) cannot duplicate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotPublished {
    /// The backplane's publication queue is full (429).
    #[error(transparent)]
    Busy(#[from] Busy),
    /// This node cannot reach its engine: starting, or cut off (503).
    #[error("this node cannot reach the backplane: nothing was published; publish through another node, or here again in a second")]
    Unreachable,
}

impl Hub {
    /// Connects this hub to a shared backplane (Redis or NATS). Must be called inside a Tokio runtime;
    /// the engine need not be up yet (the node starts degraded and connects in the background).
    ///
    /// # Errors
    /// [`backplane::AttachError`]: the URL, the prefix or the node id is unusable, or a
    /// backplane is already attached.
    pub fn connect_backplane(&self, config: BackplaneConfig) -> Result<(), backplane::AttachError> {
        crate::wire::parse_node_id(self.node_id())
            .map_err(|_| backplane::AttachError::BadNodeId(self.node_id().to_owned()))?;
        if self.cluster().is_some() {
            return Err(backplane::AttachError::AlreadyAttached);
        }
        let (cluster, tasks) =
            backplane::prepare(self.shared.config.history, config, self.shared.node.clone())?;
        // All of this before the tasks start: they may connect (and deliver) at once, and a
        // publication from here must already go to the backplane.
        self.shared.delivery.history.set_clustered();
        self.shared.metrics.backplane_up.set(0);
        self.shared
            .cluster
            .backplane
            .set(cluster)
            .map_err(|_| backplane::AttachError::AlreadyAttached)?;
        tasks.start(Arc::new(NodeHandler(self.downgrade())));
        self.spawn_heartbeat();
        Ok(())
    }

    /// Says every heartbeat that this node is alive, and forgets the presence members of nodes
    /// silent for the node TTL. Ends with the hub.
    fn spawn_heartbeat(&self) {
        let Some(c) = self.cluster() else { return };
        let (every, ttl) = (c.config().heartbeat, c.config().node_ttl);
        let weak = self.downgrade();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(hub) = Hub::upgrade(&weak) else {
                    return;
                };
                let mut cork = HubCork::new();
                let alive = Publication::from(crate::wire::Alive {
                    node: hub.node_id().to_owned(),
                });
                hub.publish(alive, &mut cork);
                hub.forget_silent_nodes(ttl);
            }
        });
    }

    /// The backplane, when this node is part of a cluster.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.shared.cluster.backplane.get()
    }

    /// This node's id (shown in connection listings and metrics).
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Answers the requests other nodes relay to this one with `service` (replacing what
    /// answered them before). The HTTP transport registers its sessions here, so a POST or a
    /// poll that reached another node is answered by the session's own.
    pub fn serve_relayed(&self, service: Arc<dyn backplane::relay::Service>) {
        *self.shared.protocols.relayed.write() = Some(service);
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
            // Every node (this one included) announces its presence members again: a newcomer
            // learns them, and whoever forgot this node's while it was away relearns them.
            let mut cork = HubCork::new();
            let resync = Publication::from(crate::wire::Resync {
                node: self.node_id().to_owned(),
            });
            self.publish(resync, &mut cork);
            self.load_revocations();
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

    /// Every connection entry in the backplane, oldest first.
    pub(super) async fn entries_everywhere(
        c: &Cluster,
    ) -> Result<Vec<crate::wire::ConnectionEntry>, crate::backplane::BackplaneError> {
        let raw = c.engine().entries(c.config().node_ttl).await.map_err(|e| {
            crate::backplane::BackplaneError(format!("the backplane could not be read: {e}"))
        })?;
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
        opts: &super::PublishOptions,
    ) -> Publication {
        Publication::from(crate::wire::GroupMessage {
            group: group.to_owned(),
            from: from.map(str::to_owned),
            user: user.map(str::to_owned),
            message: message.to_owned(),
            key: opts.key.clone(),
            idempotency_key: opts.idempotency_key.clone(),
            ttl_ms: opts
                .ttl
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)),
        })
    }

    /// A text to everyone as it travels between nodes.
    pub(crate) fn all_publication(kind: Kind, from: Option<&str>, text: &str) -> Publication {
        let kind = match kind {
            Kind::ServerBroadcast => AllKind::ServerBroadcast,
            _ => AllKind::Message,
        };
        Publication::from(crate::wire::AllMessage {
            kind,
            from: from.map(str::to_owned),
            text: text.to_owned(),
        })
    }
}
