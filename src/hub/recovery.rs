//! Recovery in a cluster: what a command needs from the backplane (the shared history for a
//! recovering join, the target of a `send`), fetched before the command is handled, with no
//! lock held; then applied under the stream's lock with a re-check.

use std::time::Duration;

use serde_json::value::RawValue;

use super::fetched::{Fetched, Prefetch, PrefetchFuture};
use super::{Hub, HubCork};
use crate::backplane::{self, Publication, StreamName};
use crate::history::{Position, Stream};
use crate::id::ConnId;
use crate::protocol::v1;

/// How long a `send` waits for the backplane to locate its target (awaited, not blocking:
/// only the sending connection waits).
const LOCATE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a node waits for the shared history when a client recovers on it.
const FILL_TIMEOUT: Duration = Duration::from_secs(1);

impl Hub {
    /// In a cluster, what `cmd` needs from the backplane before it can be handled: a `join`
    /// whose recovery needs the shared history, a `send` to a target that is not a connection
    /// of this node. Decided here without I/O; the fetch is for the caller to await.
    pub(super) fn fetch_for(&self, cmd: &v1::Command<'_>) -> Option<PrefetchFuture> {
        self.shared_bus()?;
        let hub = self.clone();
        match cmd {
            v1::Command::Join { group, since } => {
                if !self.needs_prefetch(StreamName::Group(group), since.as_ref()) {
                    return None;
                }
                let (group, since) = (group.to_string(), since.clone());
                Some(Box::pin(async move {
                    let stream = StreamName::Group(&group);
                    Fetched::Stream(hub.prefetch(stream, since.as_ref()).await)
                }))
            }
            v1::Command::Send { to, .. } => {
                let to = match to {
                    v1::Target::Connection(c) => {
                        if c.parse::<ConnId>()
                            .is_ok_and(|id| self.shared.delivery.manager.get(id).is_some())
                        {
                            return None;
                        }
                        v1::Target::Connection(c.to_string().into())
                    }
                    v1::Target::User(u) => v1::Target::User(u.to_string().into()),
                };
                Some(Box::pin(async move {
                    Fetched::Target(hub.locate_target(&to).await)
                }))
            }
            _ => None,
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
                        let crate::wire::Publication::Data(d) = &st.publication else {
                            return None;
                        };
                        let v1 = Self::v1_frame(d, Some(st.offset))?;
                        Some((st.offset, age, v1))
                    })
                    .collect();
                Some(Prefetch {
                    position: cold.then(|| Position::new(epoch, top)),
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
        if let Some(at) = p.position {
            if s.is_cold() {
                s.set_position(&at.epoch, at.offset);
            }
        }
        s.prepend(p.older);
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
                    .is_ok_and(|id| self.shared.delivery.manager.get(id).is_some())
                {
                    return None;
                }
                tokio::time::timeout(LOCATE_TIMEOUT, c.engine().locate(id, ttl))
                    .await
                    .map(|r| r.map(|node| usize::from(node.is_some())))
            }
            // Counted on every node from the connects and disconnects: no listing read.
            v1::Target::User(u) => Ok(Ok(self.shared.cluster.occupancy.user_count(u))),
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
                .is_ok_and(|id| self.shared.delivery.manager.get(id).is_some())
            {
                return None;
            }
        }
        // Not located beforehand (a library call): sent through the backplane all the same,
        // counting what is known here.
        let n = match (found, to) {
            (Some(n), _) => n,
            (None, v1::Target::Connection(_)) => 1,
            (None, v1::Target::User(u)) => self
                .shared
                .delivery
                .manager
                .user_connections(u)
                .len()
                .max(1),
        };
        if n == 0 {
            return Some(0);
        }
        let p = match to {
            v1::Target::Connection(id) => Publication::from(crate::wire::DirectMessage {
                to: id.to_string(),
                from: from.map(str::to_owned),
                user: user.map(str::to_owned),
                message: message.to_owned(),
            }),
            v1::Target::User(u) => Publication::from(crate::wire::UserMessage {
                to: u.to_string(),
                from: from.map(str::to_owned),
                user: user.map(str::to_owned),
                message: message.to_owned(),
            }),
        };
        self.publish(p, cork);
        Some(n)
    }
}
