//! What the REST API does on whichever node it is called: the same answers as a single node,
//! computed from the backplane when this node is part of a cluster.

use std::time::Duration;

use serde_json::value::RawValue;

use super::cluster::{Busy, NotPublished};
use super::{Hub, HubCork};
use crate::backplane::{BackplaneError, Publication};
use crate::envelope::Kind;
use crate::id::ConnId;

/// What the REST API does on whichever node it is called: the same answers as a single node,
/// computed from the backplane's entries when this node is part of a cluster.
/// What a REST group publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPublished {
    /// Local connections it was queued for (`None` in a cluster).
    pub recipients: Option<usize>,
    /// Its offset (the first one's, for a repeat).
    pub offset: u64,
    /// A repeat of an idempotency key seen within the window: delivered to no one.
    pub duplicate: bool,
}

impl Hub {
    /// Connections (optionally a group's members or a user's), cluster-wide.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub async fn list_connections(
        &self,
        group: Option<&str>,
        user: Option<&str>,
    ) -> Result<Vec<crate::wire::ConnectionEntry>, BackplaneError> {
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

    /// Connection `id`'s entry, on whichever node holds it: one lookup in the backplane, not
    /// a listing.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub async fn connection_anywhere(
        &self,
        id: ConnId,
    ) -> Result<Option<crate::wire::ConnectionEntry>, BackplaneError> {
        if let Some(e) = self.connection_entry(id) {
            return Ok(Some(e));
        }
        let Some(c) = self.cluster() else {
            return Ok(None);
        };
        let found = c
            .engine()
            .entry(&id.to_string(), c.config().node_ttl)
            .await?;
        Ok(found.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Where connection `id` is: `Ok(true)` here, `Ok(false)` on another live node.
    ///
    /// # Errors
    /// `Err(None)` when no node has it, `Err(Some(reason))` when the backplane cannot be read.
    async fn whereis(&self, id: ConnId) -> Result<bool, Option<BackplaneError>> {
        if self.shared.delivery.manager.get(id).is_some() {
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
            Err(e) => Err(Some(BackplaneError(format!(
                "the backplane could not be read: {e}"
            )))),
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
    ) -> Result<bool, BackplaneError> {
        let remote = Publication::from(crate::wire::Disconnect {
            to: id.to_string(),
            code,
            reason: reason.to_owned(),
        });
        self.on_connection(id, |h| h.close_connection(id, code, reason), remote)
            .await
    }

    /// Sends `message` to connection `id` wherever it is, as a `direct` envelope; `Ok(false)`:
    /// no such connection.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub(crate) async fn send_anywhere(
        &self,
        id: ConnId,
        message: &RawValue,
    ) -> Result<bool, BackplaneError> {
        let remote = Publication::from(crate::wire::DirectMessage {
            to: id.to_string(),
            from: None,
            user: None,
            message: message.to_owned(),
        });
        self.on_connection(id, |h| h.send_to_connection(id, message), remote)
            .await
    }

    /// Adds a connection that is not on this node to a group, on the node that holds it (its
    /// answer is not awaited); `Ok(false)`: no node has it.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub async fn add_member_elsewhere(
        &self,
        id: ConnId,
        group: &str,
    ) -> Result<bool, BackplaneError> {
        let remote = Publication::from(crate::wire::MemberChange {
            to: id.to_string(),
            group: group.to_owned(),
            add: true,
        });
        self.on_connection(id, |_| false, remote).await
    }

    /// Removes connection `id` from a group wherever it is; `Ok(false)`: no such connection,
    /// or not a member here.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub async fn remove_member_anywhere(
        &self,
        id: ConnId,
        group: &str,
    ) -> Result<bool, BackplaneError> {
        let remote = Publication::from(crate::wire::MemberChange {
            to: id.to_string(),
            group: group.to_owned(),
            add: false,
        });
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
    ) -> Result<bool, BackplaneError> {
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

    /// A REST broadcast: `(recipients, offset)`. On a single node the recipients are
    /// counted; in a cluster they are `None` (unknown: counting them would mean reading every
    /// node's listing), or counted here when the engine's answer took more than 3 seconds
    /// (offset 0).
    ///
    /// # Errors
    /// [`NotPublished`]: the backplane's queue is full, or this node cannot reach the engine
    /// (starting, or cut off): nothing was published anywhere, so the caller may retry here
    /// later or on another node.
    pub(crate) async fn broadcast_everywhere(
        &self,
        message: &str,
    ) -> Result<(Option<usize>, u64), NotPublished> {
        let Some(c) = self.api_bus()? else {
            let (n, offset) = self.broadcast_text_at(message);
            return Ok((Some(n), offset));
        };
        let rx = c
            .publish_or_nothing(Self::all_publication(Kind::ServerBroadcast, None, message))
            .map_err(|_| self.busy())?;
        let offset = await_published(rx).await.ok_or(NotPublished::Unreachable)?;
        Ok(((offset == 0).then(|| self.connection_count()), offset))
    }

    /// The backplane an API publication goes through: `None` on a single node;
    /// `Err(Unreachable)` while this node cannot publish through its engine (it would deliver
    /// on this node only): an API publisher is told so rather than half-served.
    pub(super) fn api_bus(
        &self,
    ) -> Result<Option<&std::sync::Arc<crate::backplane::Cluster>>, NotPublished> {
        match self.cluster() {
            None => Ok(None),
            Some(c) if c.accepts_publications() => Ok(Some(c)),
            Some(_) => {
                self.backplane_event("publish_refused");
                Err(NotPublished::Unreachable)
            }
        }
    }

    /// The backplane's queue was full: counted, and said as [`Busy`].
    pub(super) fn busy(&self) -> Busy {
        self.backplane_event("queue_full");
        Busy
    }

    /// A group publish from outside a connection (what it did: [`GroupPublished`]), as
    /// [`broadcast_everywhere`](Self::broadcast_everywhere).
    ///
    /// # Errors
    /// As [`broadcast_everywhere`](Self::broadcast_everywhere).
    pub(crate) async fn publish_everywhere_with(
        &self,
        group: &str,
        message: &RawValue,
        opts: &super::PublishOptions,
    ) -> Result<GroupPublished, NotPublished> {
        let idempotency_key = opts.idempotency_key.as_deref();
        let bus = self.api_bus()?;
        if let Some(k) = idempotency_key {
            if let Some(first) = self.claim_once(group, k).await? {
                return Ok(GroupPublished {
                    recipients: Some(0),
                    offset: first,
                    duplicate: true,
                });
            }
        }
        let Some(c) = bus else {
            let (n, offset) = self.publish_to_group_with(group, message, opts);
            return Ok(GroupPublished {
                recipients: Some(n),
                offset,
                duplicate: false,
            });
        };
        let p = Self::group_publication(group, None, None, message, opts);
        let release = || {
            if let Some(k) = idempotency_key {
                self.shared.delivery.idempotency.release(group, k);
            }
        };
        let rx = match c.publish_or_nothing(p) {
            Ok(rx) => rx,
            Err(_) => {
                release();
                return Err(self.busy().into());
            }
        };
        let Some(offset) = await_published(rx).await else {
            release();
            return Err(NotPublished::Unreachable);
        };
        let here = || self.shared.delivery.manager.group_size(group).unwrap_or(0);
        Ok(GroupPublished {
            recipients: (offset == 0).then(here),
            offset,
            duplicate: false,
        })
    }

    /// Claims an idempotency key before publishing: `Some(first offset)` for a repeat (a
    /// repeat of a publication still on its way through the bus waits for its offset, up to
    /// 3 s).
    ///
    /// # Errors
    /// [`Busy`] when the first one's offset did not come in time.
    async fn claim_once(&self, group: &str, key: &str) -> Result<Option<u64>, Busy> {
        use super::idempotency::Seen;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            match self.shared.delivery.idempotency.claim(group, key) {
                Ok(()) => return Ok(None),
                Err(Seen::At(first)) => return Ok(Some(first)),
                Err(Seen::Pending) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(Seen::Pending) => return Err(self.busy()),
            }
        }
    }

    /// A REST send to a user: how many connections it reached.
    ///
    /// # Errors
    /// When the backplane cannot be read.
    pub(crate) async fn send_to_user_everywhere(
        &self,
        user: &str,
        message: &RawValue,
    ) -> Result<usize, BackplaneError> {
        if self.shared_bus().is_none() {
            return Ok(self.send_to_user(user, message));
        }
        let n = self.list_connections(None, Some(user)).await?.len();
        if n > 0 {
            let mut cork = HubCork::new();
            self.publish(
                Publication::from(crate::wire::UserMessage {
                    to: user.to_owned(),
                    from: None,
                    user: None,
                    message: message.to_owned(),
                }),
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
    pub async fn list_groups(&self) -> Result<Vec<(String, usize)>, BackplaneError> {
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

/// The offset the backplane gave a publication published with
/// [`publish_or_nothing`](crate::backplane::Cluster::publish_or_nothing): `None` when it was
/// not published at all (the engine could not take it), 0 when the answer took more than 3
/// seconds.
pub(super) async fn await_published(
    rx: tokio::sync::oneshot::Receiver<Option<crate::history::Position>>,
) -> Option<u64> {
    match tokio::time::timeout(Duration::from_secs(3), rx).await {
        Ok(Ok(Some(p))) => Some(p.offset),
        Ok(Ok(None)) | Err(_) => Some(0),
        Ok(Err(_)) => None,
    }
}

/// The offset the backplane gave a publication (0 when it was delivered locally only, or the
/// answer took more than 3 seconds).
pub(super) async fn await_position(
    rx: tokio::sync::oneshot::Receiver<Option<crate::history::Position>>,
) -> u64 {
    await_published(rx).await.unwrap_or(0)
}
