//! How many members each group (each Pusher channel) has in the whole cluster: every node
//! counts them per node from the membership publications every join and leave makes, applied
//! in the bus's order (on a single node, inline). A node's counts are replaced whole when it
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

/// Members per group per node.
#[derive(Default)]
pub(crate) struct Occupancy {
    groups: Mutex<Groups>,
}

impl Occupancy {
    /// A member joined (`+1`) or left on `node`.
    pub(crate) fn change(&self, group: &str, node: &str, joined: bool) {
        let mut groups = self.groups.lock();
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
    pub(crate) fn replace(&self, node: &str, counts: &[(String, usize)], first: bool) {
        let mut groups = self.groups.lock();
        if first {
            Self::drop_node(&mut groups, node);
        }
        let node: Arc<str> = Arc::from(node);
        for (g, n) in counts.iter().filter(|(_, n)| *n > 0) {
            groups
                .entry(Arc::from(g.as_str()))
                .or_default()
                .insert(node.clone(), *n);
        }
    }

    /// Forgets a node's counts.
    pub(crate) fn forget(&self, node: &str) {
        Self::drop_node(&mut self.groups.lock(), node);
    }

    fn drop_node(groups: &mut Groups, node: &str) {
        groups.retain(|_, nodes| {
            nodes.remove(node);
            !nodes.is_empty()
        });
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
    /// Publishes this node's member counts whole (after a node joined the bus), in chunks.
    pub(crate) fn announce_occupancy(&self) {
        let mine: Vec<(String, usize)> = self
            .shared
            .manager
            .groups()
            .into_iter()
            .map(|(g, n)| (g.to_string(), n))
            .collect();
        let mut cork = HubCork::new();
        let mut chunks = mine.chunks(CHUNK).peekable();
        if chunks.peek().is_none() {
            let p = Publication::Occupancy {
                node: self.node_id().to_owned(),
                groups: Vec::new(),
                first: true,
            };
            self.publish(p, &mut cork);
        }
        for (i, chunk) in chunks.enumerate() {
            let p = Publication::Occupancy {
                node: self.node_id().to_owned(),
                groups: chunk.to_vec(),
                first: i == 0,
            };
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
        o.replace("a", &[("h".into(), 5)], true);
        assert_eq!((o.count("g"), o.count("h")), (1, 5));
        o.forget("b");
        assert_eq!((o.count("g"), o.count("h")), (0, 5));
        assert_eq!(o.all().len(), 1);
        // A leave never counted below zero.
        o.change("x", "a", false);
        assert_eq!(o.count("x"), 0);
    }
}
