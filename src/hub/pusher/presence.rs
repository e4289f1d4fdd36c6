//! Presence across the cluster: every node keeps a copy of every presence channel's members,
//! applying joins and leaves in the bus's order, so every node decides alike which connection
//! is a user's first (`member_added`) or last (`member_removed`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::value::RawValue;

use crate::frame::Frame;
use crate::hub::{Hub, HubCork};
use crate::id::ConnId;
use crate::manager::Audience;
use crate::protocol::pusher::{self, Channel};
use crate::wire::Publication;

/// A presence channel's members on this node: users, each with its info and connections.
#[derive(Default)]
pub(in crate::hub) struct Members {
    pub(in crate::hub) users: HashMap<String, Member>,
}

pub(in crate::hub) struct Member {
    pub(in crate::hub) info: Option<Box<RawValue>>,
    /// Its connections in the channel, anywhere in the cluster: the node and the id.
    pub(in crate::hub) conns: Vec<(Arc<str>, ConnId)>,
}

impl Hub {
    /// Applies a presence change (from this node or another, in the bus's order) to this
    /// node's copy of the members, and tells this node's subscribers what it means: a user's
    /// first connection is `member_added` (to all but that connection), its last is
    /// `member_removed`; the connection that joined, when it is here, gets the member list.
    #[allow(clippy::too_many_arguments)] // the fields of one publication
    pub(crate) fn apply_presence(
        &self,
        group: &str,
        user: &str,
        added: bool,
        info: Option<&RawValue>,
        connection: &str,
        node: &str,
        tell_app: bool,
        cork: &mut HubCork,
    ) -> crate::manager::Delivery {
        let Ok(id) = connection.parse::<ConnId>() else {
            return crate::manager::Delivery::default();
        };
        let channel = crate::apps::channel_name(group);
        let node: Arc<str> = Arc::from(node);
        let here = *node == *self.shared.node;
        let mut to_joiner = None;
        let changed_user =
            {
                let mut all = self.shared.protocols.pusher.presence.lock();
                if added {
                    let members = all.entry(Arc::from(group)).or_default();
                    let first = !members.users.contains_key(user);
                    let m = members
                        .users
                        .entry(user.to_owned())
                        .or_insert_with(|| Member {
                            info: info.map(|i| i.to_owned()),
                            conns: Vec::new(),
                        });
                    let new_conn = !m.conns.iter().any(|(n, c)| *c == id && *n == node);
                    if new_conn {
                        m.conns.push((node.clone(), id));
                        // The member list goes to a Pusher subscriber that joined here (a
                        // `wshub.v1` member asks with `presence`).
                        let pusher_here = here
                            && self.shared.delivery.manager.get(id).is_some_and(|e| {
                                e.info.protocol == crate::manager::Protocol::Pusher
                            });
                        if pusher_here && self.shared.delivery.manager.is_member(id, group) {
                            to_joiner = Some(Self::presence_frame(members, channel));
                        }
                    }
                    first
                } else {
                    let Some(members) = all.get_mut(group) else {
                        return crate::manager::Delivery::default();
                    };
                    let Some(m) = members.users.get_mut(user) else {
                        return crate::manager::Delivery::default();
                    };
                    m.conns.retain(|(n, c)| !(*c == id && *n == node));
                    let last = m.conns.is_empty();
                    if last {
                        members.users.remove(user);
                        if members.users.is_empty() {
                            all.remove(group);
                        }
                    }
                    last
                }
            };
        if let Some(frame) = to_joiner {
            self.to_pusher(id, frame, cork);
            if Channel::parse(channel).is_some_and(|c| c.cache) {
                let cached = self.cached_or_miss(group, channel);
                self.to_pusher(id, cached, cork);
            }
        }
        if !changed_user {
            return crate::manager::Delivery::default();
        }
        // A user back within the flap delay: the removal and this add are one non-event.
        let told = if added {
            !self.came_back(group, Some(user))
        } else {
            !self.hold(group, Some(user), &node, tell_app)
        };
        if tell_app && told {
            let name = if added {
                "member_added"
            } else {
                "member_removed"
            };
            self.webhook(
                group,
                name,
                |channel| serde_json::json!({ "name": name, "channel": channel, "user_id": user }),
            );
        }
        let frame = if added {
            pusher::member_added(channel, user, info)
        } else {
            pusher::member_removed(channel, user)
        };
        let audience = if added {
            Audience::GroupExcept(group, id)
        } else {
            Audience::Group(group)
        };
        self.pusher_only(audience, &frame, cork)
    }

    /// Offers a frame to the Pusher connections of an audience only.
    pub(super) fn pusher_only(
        &self,
        audience: Audience<'_>,
        frame: &Frame,
        cork: &mut HubCork,
    ) -> crate::manager::Delivery {
        struct OnlyPusher<'a>(&'a Frame);
        impl crate::manager::Frames for OnlyPusher<'_> {
            fn frame_for(&self, p: crate::manager::Protocol) -> Option<&Frame> {
                (p == crate::manager::Protocol::Pusher).then_some(self.0)
            }
        }
        let d =
            self.shared
                .delivery
                .manager
                .publish_by_protocol(audience, &OnlyPusher(frame), cork);
        self.shared
            .metrics
            .delivered(frame.len(), d.delivered, d.slow, d.dead);
        d
    }

    pub(super) fn presence_frame(members: &Members, channel: &str) -> Frame {
        pusher::presence_succeeded(
            channel,
            members.users.iter().map(|(id, m)| pusher::Member {
                id,
                info: m.info.as_deref(),
            }),
        )
    }

    pub(super) fn presence_snapshot(&self, stream: &str, channel: &str) -> Frame {
        let all = self.shared.protocols.pusher.presence.lock();
        match all.get(stream) {
            Some(m) => Self::presence_frame(m, channel),
            None => Self::presence_frame(&Members::default(), channel),
        }
    }

    /// Takes a connection of `user` out of a presence channel, on every node.
    pub(super) fn presence_leave(
        &self,
        stream: &Arc<str>,
        user: &str,
        id: ConnId,
        cork: &mut HubCork,
    ) {
        self.publish(
            Publication::from(crate::wire::PresenceChange {
                group: stream.to_string(),
                user_id: user.to_owned(),
                added: false,
                info: None,
                connection: id.to_string(),
                node: self.node_id().to_owned(),
            }),
            cork,
        );
    }

    /// Whether this node comes first by id among the live nodes it knows (it speaks for the
    /// cluster where one node must: a dead node's departures, re-announcements).
    pub(crate) fn is_first_live_node(&self) -> bool {
        let alive = self.shared.protocols.pusher.alive.lock();
        alive.keys().all(|n| **n > *self.shared.node)
    }

    /// Whether node `node` was heard of within the node TTL (this node always is).
    pub(crate) fn node_is_alive(&self, node: &str) -> bool {
        node == self.node_id() || self.shared.protocols.pusher.alive.lock().contains_key(node)
    }

    /// Another node was heard from (it is alive).
    pub(crate) fn node_alive(&self, node: &str) {
        if node == self.node_id() {
            return;
        }
        // Called for every publication that names a node: no allocation for one already known.
        let mut alive = self.shared.protocols.pusher.alive.lock();
        match alive.get_mut(node) {
            Some(at) => *at = Instant::now(),
            None => {
                alive.insert(Arc::from(node), Instant::now());
            }
        }
    }

    /// Another node (re)joined the bus, or this one did: this node announces its own presence
    /// members again (applying one twice changes nothing).
    pub(crate) fn resync_presence(&self, _node: &str) {
        let mine: Vec<Publication> = {
            let all = self.shared.protocols.pusher.presence.lock();
            all.iter()
                .flat_map(|(group, members)| {
                    members.users.iter().flat_map(move |(user, m)| {
                        m.conns
                            .iter()
                            .filter(|(n, _)| **n == *self.shared.node)
                            .map(move |(_, c)| {
                                Publication::from(crate::wire::PresenceChange {
                                    group: group.to_string(),
                                    user_id: user.clone(),
                                    added: true,
                                    info: m.info.clone(),
                                    connection: c.to_string(),
                                    node: self.node_id().to_owned(),
                                })
                            })
                    })
                })
                .collect()
        };
        let mut cork = HubCork::new();
        for p in mine {
            self.publish(p, &mut cork);
        }
        cork.flush();
    }

    /// Forgets the presence members of nodes not heard of for `ttl` (crashed, or cut off):
    /// their users' last connections are `member_removed` here, as on every other node.
    pub(crate) fn forget_silent_nodes(&self, ttl: std::time::Duration) {
        let now = Instant::now();
        let gone: Vec<Arc<str>> = {
            let mut alive = self.shared.protocols.pusher.alive.lock();
            let gone = alive
                .iter()
                .filter(|(_, t)| now.duration_since(**t) > ttl)
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>();
            for n in &gone {
                alive.remove(n);
            }
            gone
        };
        if gone.is_empty() {
            return;
        }
        let emptied: Vec<Arc<str>> = gone
            .iter()
            .flat_map(|n| self.shared.cluster.occupancy.forget(n))
            .collect();
        let removals: Vec<(String, String, String, String)> = {
            let all = self.shared.protocols.pusher.presence.lock();
            all.iter()
                .flat_map(|(g, members)| {
                    members
                        .users
                        .iter()
                        .flat_map(move |(u, m)| m.conns.iter().map(move |(n, c)| (g, u, n, c)))
                })
                .filter(|(_, _, n, _)| gone.contains(n))
                .map(|(g, u, n, c)| (g.to_string(), u.clone(), n.to_string(), c.to_string()))
                .collect()
        };
        tracing::info!(nodes = ?gone, members = removals.len(), "forgetting the presence members of silent nodes");
        // The gone node cannot tell the apps: the first live node by id does, one for all.
        let leader = self.is_first_live_node();
        let mut cork = HubCork::new();
        for (g, u, n, c) in removals {
            self.apply_presence(&g, &u, false, None, &c, &n, leader, &mut cork);
            // The gone node's `wshub.v1` members cannot say they left: each node tells its
            // own members of the group (their `left`, as if the bus had brought it).
            if !self.is_silent(&g) {
                let short = c.get(..8).unwrap_or(&c);
                let f = crate::protocol::v1::membership(false, &g, short, Some(&u), None);
                self.publish_corked(crate::manager::Audience::Group(&g), &f, &mut cork);
            }
        }
        cork.flush();
        self.settle_for_gone(&gone, leader);
        if leader {
            // Channels whose members were all there are vacated now, told by the leader.
            for g in &emptied {
                self.occupancy_webhook(g, false);
            }
            for n in &gone {
                self.hub_webhook(
                    crate::webhooks::EventType::NodeLost,
                    || serde_json::json!({ "node": n.as_ref(), "groups_vacated": emptied.len() }),
                );
            }
        }
    }
}
