//! What the HTTP API (and an embedding application) does with Pusher apps: trigger events,
//! count subscribers and users, terminate a user's connections.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::{PresenceUser, TriggerError};
use crate::apps::App;
use crate::close::CloseReason;
use crate::hub::{Hub, HubCork, HubError};
use crate::id::ConnId;
use crate::protocol::pusher::Code;
use crate::wire::Publication;

impl Hub {
    /// Tells the app whose channel `stream` is about event `name`, through its webhooks: when it
    /// has one that wants it, `event` makes the JSON from the channel name (nothing is built
    /// otherwise).
    pub(crate) fn webhook(
        &self,
        stream: &str,
        name: &str,
        event: impl FnOnce(&str) -> serde_json::Value,
    ) {
        let Some((app, channel)) = self.apps().channel_of(stream) else {
            return;
        };
        if self.shared.edges.webhooks.wants(&app.id, name) {
            self.shared.edges.webhooks.emit(
                &app.id,
                event(channel),
                &self.shared.metrics.webhook_events,
            );
        }
    }

    /// A stream's members in the whole cluster went from `before` to `after`, by a member of
    /// `node` (applied on every node, in the bus's order; the member's node alone tells):
    /// `channel_occupied`/`channel_vacated` and `subscription_count` for the app,
    /// `group.occupied`/`group.vacated` for the hub's webhooks. A vacate may be held for the
    /// flap delay (`settle`).
    pub(crate) fn occupancy_changed(&self, stream: &str, node: &str, before: usize, after: usize) {
        let mine = node == self.node_id();
        if before == 0 && after > 0 {
            // Back within the flap delay: the vacate and this occupy are one non-event.
            if !self.came_back(stream, None) && mine {
                self.occupancy_webhook(stream, true);
            }
        } else if before > 0 && after == 0 && !self.hold(stream, None, node, mine) && mine {
            self.occupancy_webhook(stream, false);
        }
        self.subscription_count_changed(stream, after);
        self.watched_user_changed(stream, before, after);
        if !mine {
            return;
        }
        let presence = crate::protocol::pusher::Channel::parse(crate::apps::channel_name(stream))
            .is_some_and(|c| c.kind == crate::protocol::pusher::Kind::Presence);
        if !presence {
            self.webhook(stream, "subscription_count", |channel| {
                serde_json::json!({
                    "name": "subscription_count",
                    "channel": channel,
                    "subscription_count": after,
                })
            });
        }
    }

    /// `channel_occupied` or `channel_vacated` (the cluster's first member came, or its last
    /// left), and the hub's `group.occupied` or `group.vacated` for a hub group.
    pub(crate) fn occupancy_webhook(&self, stream: &str, occupied: bool) {
        if !stream.contains('#') {
            let ty = if occupied {
                crate::webhooks::EventType::GroupOccupied
            } else {
                crate::webhooks::EventType::GroupVacated
            };
            self.hub_webhook(ty, || serde_json::json!({ "group": stream }));
        }
        let name = if occupied {
            "channel_occupied"
        } else {
            "channel_vacated"
        };
        self.webhook(
            stream,
            name,
            |channel| serde_json::json!({ "name": name, "channel": channel }),
        );
    }

    /// Publishes an event on a channel of `app` (the HTTP API's trigger): to every
    /// subscriber on every node but `except`; numbered and kept like any group message.
    ///
    /// # Errors
    /// [`TriggerError`] when the hub may keep no more streams, or the backplane's queue is
    /// full (nothing was published).
    pub fn trigger(
        &self,
        app: &App,
        channel: &str,
        event: &str,
        data: Box<RawValue>,
        except: Option<ConnId>,
    ) -> Result<(), TriggerError> {
        let stream = self.apps().stream_of(app, channel);
        self.ensure_group_stream(&stream).map_err(HubError::from)?;
        let started = std::time::Instant::now();
        let mut cork = HubCork::new();
        let p = Publication::from(crate::wire::ChannelEvent {
            group: stream,
            event: event.to_owned(),
            data,
            user_id: None,
            except: except.map(|e| e.to_string()),
        });
        // Unlike a client's publication, an API call that the backplane cannot take now is
        // refused (429, or 503 while the engine is out of reach), not delivered on this node
        // only.
        match self.api_bus().map_err(TriggerError::Unreachable)? {
            Some(c) => c.publish_and_forget(p).map_err(|_| self.busy())?,
            None => {
                self.publish(p, &mut cork);
            }
        }
        self.flush(&mut cork, started);
        Ok(())
    }

    /// Subscribers of a channel of `app`, on every node.
    pub fn subscription_count(&self, app: &App, channel: &str) -> usize {
        let stream = self.apps().stream_of(app, channel);
        self.shared.cluster.occupancy.count(&stream)
    }

    /// The users of a presence channel of `app`, on every node.
    pub fn presence_users(&self, app: &App, channel: &str) -> Vec<PresenceUser> {
        let stream = self.apps().stream_of(app, channel);
        let all = self.shared.protocols.pusher.presence.lock();
        let mut users: Vec<PresenceUser> = all
            .get(stream.as_str())
            .map(|m| {
                m.users
                    .keys()
                    .map(|id| PresenceUser { id: id.clone() })
                    .collect()
            })
            .unwrap_or_default();
        users.sort_by(|a, b| a.id.cmp(&b.id));
        users
    }

    /// The occupied channels of `app` on every node, with their subscriber counts.
    pub fn app_channels(&self, app: &App) -> Vec<(String, usize)> {
        let apps = self.apps();
        self.shared
            .cluster
            .occupancy
            .all()
            .into_iter()
            .filter_map(|(g, n)| {
                let (a, c) = apps.channel_of(&g)?;
                (a.id == app.id && n > 0).then(|| (c.to_owned(), n))
            })
            .collect()
    }

    /// Closes every connection of `user` signed in to `app`, on every node.
    pub fn terminate_user(&self, app: &App, user: &str) {
        let p = Publication::from(crate::wire::Terminate {
            app: app.id.clone(),
            user: user.to_owned(),
        });
        let mut cork = HubCork::new();
        self.publish(p, &mut cork);
        cork.flush();
    }

    /// Closes this node's connections of `user` signed in to `app` (4009).
    pub(crate) fn terminate_here(&self, app: &str, user: &str) {
        let conns = self
            .shared
            .protocols
            .pusher
            .users
            .lock()
            .get(&(Arc::from(app), user.to_owned()))
            .cloned()
            .unwrap_or_default();
        for id in conns {
            self.disconnect(
                id,
                CloseReason::Disconnected {
                    code: Code::Unauthorized.get(),
                    reason: Arc::from("terminated by the app"),
                },
            );
        }
    }
}
