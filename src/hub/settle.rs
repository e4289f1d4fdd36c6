//! Flap coalescing for webhooks: a group vacated (Pusher's `channel_vacated`, wshub's
//! `group.vacated`) or a presence member removed (`member_removed`) is held for the webhook
//! delay; if the group is occupied again (the user back) before it is settled, neither the
//! vacate nor the new occupy (add) is told. A page reload is then no event at all, as with
//! Pusher.
//!
//! Cluster-consistent: every node marks what is held, from the publications it applies in the
//! bus's order; the node that would have told (the member's) queues a
//! [`Publication::Settle`] for when the delay is over, and tells when it applies it only if the
//! mark was still there. A comeback before the settle (in the bus's order) clears the mark on
//! every node alike, so all agree whether the flap was coalesced. Marks held for a node that
//! died are settled at once by the first live node.
//!
//! Bounded: at most [`QUEUE`] settles wait; past it one is published at once (not coalesced).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Hub, HubCork};
use crate::wire::Publication;

/// Settles waiting for their time at most.
pub const QUEUE: usize = 100_000;

/// What is held: a group (`None`) or a member of it.
type Key = (Arc<str>, Option<String>);

/// The marks of what is held, each with the node that tells, and the queue of settles.
#[derive(Default)]
pub(crate) struct Settling {
    held: Mutex<HashMap<Key, Arc<str>>>,
    queue: std::sync::OnceLock<mpsc::Sender<(Instant, Publication)>>,
}

impl Hub {
    fn flap_delay(&self) -> Duration {
        self.shared.config.webhook_delay
    }

    /// A vacate (`user: None`) or a member's removal, applied on this node: held (marked) when
    /// a flap delay is set. Returns whether it was held; then, on the node that tells
    /// (`tells`), the settle is queued.
    pub(crate) fn hold(&self, group: &str, user: Option<&str>, node: &str, tells: bool) -> bool {
        if self.flap_delay().is_zero() {
            return false;
        }
        self.shared
            .cluster
            .settling
            .held
            .lock()
            .insert((Arc::from(group), user.map(str::to_owned)), Arc::from(node));
        if tells {
            self.queue_settle(group, user);
        }
        true
    }

    /// A group occupied again (a member back): whether that ends a hold (then neither is
    /// told).
    pub(crate) fn came_back(&self, group: &str, user: Option<&str>) -> bool {
        if self.flap_delay().is_zero() {
            return false;
        }
        let key = (Arc::from(group), user.map(str::to_owned));
        self.shared
            .cluster
            .settling
            .held
            .lock()
            .remove(&key)
            .is_some()
    }

    /// Applies a [`Publication::Settle`]: the mark goes; `node` tells if it was still there.
    pub(crate) fn apply_settle(&self, group: &str, user: Option<&str>, node: &str) {
        let key = (Arc::from(group), user.map(str::to_owned));
        let was_held = self
            .shared
            .cluster
            .settling
            .held
            .lock()
            .remove(&key)
            .is_some();
        if !was_held || node != self.node_id() {
            return;
        }
        match user {
            None => self.occupancy_webhook(group, false),
            Some(user) => self.webhook(group, "member_removed", |channel| {
                serde_json::json!({ "name": "member_removed", "channel": channel, "user_id": user })
            }),
        }
    }

    /// Nodes gone: what they held is settled now, by the first live node (`leader`).
    pub(crate) fn settle_for_gone(&self, gone: &[Arc<str>], leader: bool) {
        if !leader {
            return;
        }
        let keys: Vec<Key> = self
            .shared
            .cluster
            .settling
            .held
            .lock()
            .iter()
            .filter(|(_, n)| gone.contains(n))
            .map(|(k, _)| k.clone())
            .collect();
        let mut cork = HubCork::new();
        for (group, user) in keys {
            let p = Publication::from(crate::wire::Settle {
                group: group.to_string(),
                user,
                node: self.node_id().to_owned(),
            });
            self.publish(p, &mut cork);
        }
        cork.flush();
    }

    /// Queues the settle of a hold for when the delay is over (the delay is the same for all:
    /// a queue in order of deadline, one task).
    fn queue_settle(&self, group: &str, user: Option<&str>) {
        let p = Publication::from(crate::wire::Settle {
            group: group.to_owned(),
            user: user.map(str::to_owned),
            node: self.node_id().to_owned(),
        });
        let Some(tx) = self.settle_queue() else {
            self.publish_settle(p);
            return;
        };
        if let Err(full) = tx.try_send((Instant::now() + self.flap_delay(), p)) {
            tracing::warn!("webhook flap delay: too many held; settled at once");
            let (_, p) = full.into_inner();
            self.publish_settle(p);
        }
    }

    fn publish_settle(&self, p: Publication) {
        let mut cork = HubCork::new();
        self.publish(p, &mut cork);
        cork.flush();
    }

    /// The queue of settles, and its task (started on first use, in the current runtime).
    fn settle_queue(&self) -> Option<&mpsc::Sender<(Instant, Publication)>> {
        let s = &self.shared.cluster.settling;
        if let Some(tx) = s.queue.get() {
            return Some(tx);
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let (tx, mut rx) = mpsc::channel::<(Instant, Publication)>(QUEUE);
        if s.queue.set(tx).is_ok() {
            let weak = self.downgrade();
            rt.spawn(async move {
                while let Some((at, p)) = rx.recv().await {
                    tokio::time::sleep_until(at).await;
                    let Some(hub) = Hub::upgrade(&weak) else {
                        return;
                    };
                    hub.publish_settle(p);
                }
            });
        }
        s.queue.get()
    }
}
