//! Presence for `wshub.v1` groups: who is in a group, on every node. An authenticated
//! connection that joins a group matching `--presence-groups` is a presence member, kept in the
//! same cluster-wide table as the Pusher presence channels (applied from the bus in its order,
//! a dead node's members removed by the survivors): a user seen by `presence` is the user
//! Pusher clients see in the same channel, and the other way round.
//!
//! Anonymous connections are not presence members (presence is about users); they still get
//! `joined`/`left` events, which `--silent-groups` turns off for groups too large for them.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use super::Hub;
use crate::id::ConnId;

/// Members in one page of `presence`, by default and at most.
pub const PAGE: usize = 100;
/// The largest page a client may ask for.
pub const PAGE_MAX: usize = 1000;

/// One presence member: a connection of a user.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceMember {
    /// The connection id.
    pub connection: String,
    /// The user.
    pub user: String,
    /// What the backend says about the user (a token's `info` claim, the connect hook's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

/// A page of presence members, and where the next starts.
#[derive(Debug, Clone, Serialize)]
pub struct PresencePage {
    /// The members, by connection id.
    pub members: Vec<PresenceMember>,
    /// The cursor of the next page (absent: this was the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// How many are in a group.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PresenceStats {
    /// Connections (of authenticated users).
    pub connections: usize,
    /// Distinct users (a user's many tabs are one).
    pub users: usize,
    /// Every member of the group, anonymous ones and other protocols' included.
    pub total: usize,
}

impl Hub {
    /// Whether `group` keeps presence (`--presence-groups`).
    pub(crate) fn presence_tracked(&self, group: &str) -> bool {
        self.shared
            .config
            .presence_groups
            .iter()
            .any(|p| crate::protocol::group_matches(p, group))
    }

    /// Whether `group`'s members get no `joined`/`left` events (`--silent-groups`).
    pub(crate) fn is_silent(&self, group: &str) -> bool {
        self.shared
            .config
            .silent_groups
            .iter()
            .any(|p| crate::protocol::group_matches(p, group))
    }

    /// What the backend says about a connection's user (JSON text), if anything.
    pub(crate) fn user_info(&self, id: ConnId) -> Option<Arc<str>> {
        self.shared
            .delivery
            .manager
            .get(id)
            .and_then(|e| e.info.user_info.clone())
    }

    /// The presence members of `group` in the whole cluster, by connection id, from after
    /// `cursor` (a connection id), at most `limit` (capped at 1000).
    pub fn presence(&self, group: &str, cursor: Option<&str>, limit: usize) -> PresencePage {
        let limit = limit.clamp(1, PAGE_MAX);
        // A cursor that is not a connection id starts from the beginning.
        let after: Option<ConnId> = cursor.and_then(|c| c.parse().ok());
        let table = self.shared.protocols.pusher.presence.lock();
        let Some(members) = table.get(group) else {
            return PresencePage {
                members: Vec::new(),
                cursor: None,
            };
        };
        // References only, under the lock; the page's members alone are copied. Ids in order
        // are their hex forms in order (fixed width, lowercase).
        let mut refs: Vec<(ConnId, &str, &Option<Box<RawValue>>)> = members
            .users
            .iter()
            .flat_map(|(user, m)| {
                m.conns
                    .iter()
                    .map(move |(_, id)| (*id, user.as_str(), &m.info))
            })
            .filter(|(id, _, _)| after.is_none_or(|a| *id > a))
            .collect();
        let more = refs.len() > limit;
        if more {
            refs.select_nth_unstable_by_key(limit, |r| r.0);
            refs.truncate(limit);
        }
        refs.sort_unstable_by_key(|r| r.0);
        let page: Vec<PresenceMember> = refs
            .into_iter()
            .map(|(id, user, info)| PresenceMember {
                connection: id.to_string(),
                user: user.to_owned(),
                info: info.clone(),
            })
            .collect();
        drop(table);
        PresencePage {
            cursor: more
                .then(|| page.last().map(|m| m.connection.clone()))
                .flatten(),
            members: page,
        }
    }

    /// How many connections and distinct users are present in `group`, cluster-wide.
    pub fn presence_stats(&self, group: &str) -> PresenceStats {
        let total = self.shared.cluster.occupancy.count(group);
        let table = self.shared.protocols.pusher.presence.lock();
        table.get(group).map_or(
            PresenceStats {
                connections: 0,
                users: 0,
                total,
            },
            |m| PresenceStats {
                connections: m.users.values().map(|u| u.conns.len()).sum(),
                users: m.users.len(),
                total,
            },
        )
    }
}
