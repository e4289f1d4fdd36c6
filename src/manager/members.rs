//! A set of registered connections, found by id: the registry's table of every connection, and
//! each group's and user's members.
//!
//! A map from id to entry would store each id twice (in the key and in the entry it points to):
//! 24 bytes a slot. The set stores the entry's pointer alone (8 bytes a slot) and finds it by
//! the id inside the entry, which at 10,000 connections in 100 groups each is a million slots.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::Entry;
use crate::id::ConnId;

/// An entry, hashed and compared by its id.
struct ById<S>(Arc<Entry<S>>);

impl<S> Hash for ById<S> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The same hash as the id's: `Borrow<ConnId>` requires it.
        self.0.id.hash(state);
    }
}

impl<S> PartialEq for ById<S> {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl<S> Eq for ById<S> {}

impl<S> Borrow<ConnId> for ById<S> {
    fn borrow(&self) -> &ConnId {
        &self.0.id
    }
}

/// Connections by id.
pub(super) struct Members<S>(HashSet<ById<S>>);

impl<S> Default for Members<S> {
    fn default() -> Self {
        Self(HashSet::new())
    }
}

impl<S> Members<S> {
    /// Adds `entry` (replacing one with the same id).
    pub(super) fn insert(&mut self, entry: Arc<Entry<S>>) {
        self.0.replace(ById(entry));
    }

    /// Removes and returns the entry with `id`.
    pub(super) fn remove(&mut self, id: &ConnId) -> Option<Arc<Entry<S>>> {
        self.0.take(id).map(|e| e.0)
    }

    /// The entry with `id`.
    pub(super) fn get(&self, id: &ConnId) -> Option<&Arc<Entry<S>>> {
        self.0.get(id).map(|e| &e.0)
    }

    pub(super) fn contains(&self, id: &ConnId) -> bool {
        self.0.contains(id)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every entry, in no particular order.
    pub(super) fn entries(&self) -> impl Iterator<Item = &Arc<Entry<S>>> {
        self.0.iter().map(|e| &e.0)
    }
}
