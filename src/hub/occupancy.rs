//! How many members each group (each Pusher channel) has in the whole cluster, and how many
//! connections each user has: every node counts them per node from the publications every
//! join, leave, connect and disconnect makes, applied in the bus's order (on a single node,
//! inline). A node's counts are replaced whole when it
//! resynchronises, and dropped when it goes silent. What the Pusher HTTP API answers
//! (`occupied`, `subscription_count`, the channel list) comes from here, without reading any
//! listing.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Hub, HubCork};
use crate::wire::Publication;

/// Groups sent in one [`Publication::Occupancy`].
const CHUNK: usize = 1000;

/// Members per node of each group.
type Groups = HashMap<Arc<str>, HashMap<Arc<str>, usize>>;

/// Members per group per node, and connections per user per node.
#[derive(Default)]
pub(crate) struct Occupancy {
    groups: Mutex<Groups>,
    users: Mutex<Groups>,
}

impl Occupancy {
    /// A member joined (`+1`) or left on `node`; the group's members everywhere before and
    /// after.
    pub(crate) fn change(&self, group: &str, node: &str, joined: bool) -> (usize, usize) {
        let mut groups = self.groups.lock();
        let total = |g: &Groups| g.get(group).map_or(0, |n| n.values().sum());
        let before = total(&groups);
        Self::add(&mut groups, group, node, joined);
        (before, total(&groups))
    }

    /// A connection of `user` opened (`+1`) or closed on `node`.
    pub(crate) fn user_change(&self, user: &str, node: &str, online: bool) {
        Self::add(&mut self.users.lock(), user, node, online);
    }

    /// Connections of `user` everywhere.
    pub(crate) fn user_count(&self, user: &str) -> usize {
        self.users
            .lock()
            .get(user)
            .map_or(0, |nodes| nodes.values().sum())
    }

    fn add(groups: &mut Groups, group: &str, node: &str, joined: bool) {
        if joined {
            *groups
                .entry(Arc::from(group))
                .or_default()
                .entry(Arc::from(node))
                .or_insert(0) += 1;
            return;
        }
        let Some(nodes) = groups.get_mut(group) else {
            return;
        };
        if let Some(n) = nodes.get_mut(node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                nodes.remove(node);
            }
        }
        if nodes.is_empty() {
            groups.remove(group);
        }
    }

    /// Replaces `node`'s counts (`first`: forget what it had before).
    pub(crate) fn replace(
        &self,
        node: &str,
        groups: &[(String, usize)],
        users: &[(String, usize)],
        first: bool,
    ) {
        Self::replace_in(&mut self.groups.lock(), node, groups, first);
        Self::replace_in(&mut self.users.lock(), node, users, first);
    }

    fn replace_in(groups: &mut Groups, node: &str, counts: &[(String, usize)], first: bool) {
        if first {
            Self::drop_node(groups, node);
        }
        let node: Arc<str> = Arc::from(node);
        for (g, n) in counts.iter().filter(|(_, n)| *n > 0) {
            groups
                .entry(Arc::from(g.as_str()))
                .or_default()
                .insert(node.clone(), *n);
        }
    }

    /// Forgets a node's counts; the groups that had members only there (now empty).
    pub(crate) fn forget(&self, node: &str) -> Vec<Arc<str>> {
        Self::drop_node(&mut self.users.lock(), node);
        Self::drop_node(&mut self.groups.lock(), node)
    }

    fn drop_node(groups: &mut Groups, node: &str) -> Vec<Arc<str>> {
        let mut emptied = Vec::new();
        groups.retain(|g, nodes| {
            nodes.remove(node);
            if nodes.is_empty() {
                emptied.push(g.clone());
            }
            !nodes.is_empty()
        });
        emptied
    }

    /// Members of `group` everywhere.
    pub(crate) fn count(&self, group: &str) -> usize {
        self.groups
            .lock()
            .get(group)
            .map_or(0, |nodes| nodes.values().sum())
    }

    /// Every group with members, and how many.
    pub(crate) fn all(&self) -> Vec<(Arc<str>, usize)> {
        self.groups
            .lock()
            .iter()
            .map(|(g, nodes)| (g.clone(), nodes.values().sum()))
            .collect()
    }
}

impl Hub {
    /// Publishes this node's counts whole (after a node joined the bus), in chunks.
    pub(crate) fn announce_occupancy(&self) {
        let groups: Vec<(String, usize)> = self
            .shared
            .delivery
            .manager
            .groups()
            .into_iter()
            .map(|(g, n)| (g.to_string(), n))
            .collect();
        let users: Vec<(String, usize)> = self
            .shared
            .delivery
            .manager
            .users()
            .into_iter()
            .map(|(u, n)| (u.to_string(), n))
            .collect();
        let mut cork = HubCork::new();
        let parts = groups.len().max(users.len()).div_ceil(CHUNK).max(1);
        for i in 0..parts {
            let slice = |v: &[(String, usize)]| {
                v.iter()
                    .skip(i * CHUNK)
                    .take(CHUNK)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let p = Publication::from(crate::wire::Occupancy {
                node: self.node_id().to_owned(),
                groups: slice(&groups),
                users: slice(&users),
                first: i == 0,
            });
            self.publish(p, &mut cork);
        }
        cork.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_node_add_up_and_are_replaced_or_forgotten_per_node() {
        let o = Occupancy::default();
        o.change("g", "a", true);
        o.change("g", "a", true);
        o.change("g", "b", true);
        assert_eq!(o.count("g"), 3);
        o.change("g", "a", false);
        assert_eq!(o.count("g"), 2);
        o.replace("a", &[("h".into(), 5)], &[("u".into(), 2)], true);
        assert_eq!(o.user_count("u"), 2);
        o.user_change("u", "b", true);
        assert_eq!(o.user_count("u"), 3);
        assert_eq!((o.count("g"), o.count("h")), (1, 5));
        let mut emptied = o.forget("b");
        emptied.sort();
        assert_eq!(emptied, vec![Arc::from("g")]);
        assert_eq!((o.count("g"), o.count("h")), (0, 5));
        assert_eq!(o.user_count("u"), 2);
        assert_eq!(o.all().len(), 1);
        // A leave never counted below zero.
        o.change("x", "a", false);
        assert_eq!(o.count("x"), 0);
    }
}
