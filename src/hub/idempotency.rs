//! Idempotent publishing: a group publication may carry an idempotency key; a repeat within
//! the window is answered with the first one's offset and delivered to no one.
//!
//! Every node decides at delivery, in the bus's order, so the whole cluster agrees on which
//! publication was first; the node a repeat is made on also answers it before publishing when
//! it already knows the key (the usual case: a client retrying on the same node).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Keys remembered at most (the oldest go first past it), whatever the window.
const MAX_KEYS: usize = 100_000;

/// What is known of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Published from this node, not delivered yet.
    Pending,
    /// Delivered at this offset.
    At(u64),
}

/// The keys seen within the window, per group.
pub(crate) struct Idempotency {
    window: Duration,
    inner: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    seen: HashMap<String, (Seen, Instant)>,
    order: VecDeque<(Instant, String)>,
}

fn key_of(group: &str, key: &str) -> String {
    let mut k = String::with_capacity(group.len() + key.len() + 1);
    k.push_str(group);
    k.push('\0');
    k.push_str(key);
    k
}

impl Idempotency {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            inner: Mutex::new(Keys::default()),
        }
    }

    /// What is known of `key` in `group` within the window.
    pub(crate) fn seen(&self, group: &str, key: &str) -> Option<Seen> {
        let mut k = self.inner.lock();
        k.expire(self.window);
        k.seen.get(&key_of(group, key)).map(|(s, _)| *s)
    }

    /// Claims `key` for a publication about to be made here: `Err` with what is known when it
    /// was seen already.
    pub(crate) fn claim(&self, group: &str, key: &str) -> Result<(), Seen> {
        let mut k = self.inner.lock();
        k.expire(self.window);
        let id = key_of(group, key);
        if let Some((s, _)) = k.seen.get(&id) {
            return Err(*s);
        }
        k.insert(id, Seen::Pending);
        Ok(())
    }

    /// A publication carrying `key` is being delivered at `offset`: `Some(first)` when it is a
    /// repeat of one delivered at `first` (then it is delivered to no one).
    pub(crate) fn deliver(&self, group: &str, key: &str, offset: u64) -> Option<u64> {
        let mut k = self.inner.lock();
        k.expire(self.window);
        let id = key_of(group, key);
        match k.seen.get_mut(&id) {
            Some((Seen::At(first), _)) => Some(*first),
            Some((s, _)) => {
                *s = Seen::At(offset);
                None
            }
            None => {
                k.insert(id, Seen::At(offset));
                None
            }
        }
    }

    /// Forgets a claim whose publication was never made (refused before the bus).
    pub(crate) fn release(&self, group: &str, key: &str) {
        let mut k = self.inner.lock();
        let id = key_of(group, key);
        if matches!(k.seen.get(&id), Some((Seen::Pending, _))) {
            k.seen.remove(&id);
        }
    }
}

impl Keys {
    fn insert(&mut self, id: String, s: Seen) {
        let now = Instant::now();
        while self.order.len() >= MAX_KEYS {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.order.push_back((now, id.clone()));
        self.seen.insert(id, (s, now));
    }

    fn expire(&mut self, window: Duration) {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                // A key claimed again after a release has a newer entry: keep it.
                if self
                    .seen
                    .get(&id)
                    .is_some_and(|(_, t)| now.saturating_duration_since(*t) >= window)
                {
                    self.seen.remove(&id);
                }
            }
        }
        if self.order.is_empty() && self.order.capacity() > 1024 {
            self.order = VecDeque::new();
            self.seen = HashMap::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_is_answered_with_the_first_offset() {
        let i = Idempotency::new(Duration::from_secs(60));
        assert_eq!(i.claim("g", "k1"), Ok(()));
        assert_eq!(i.claim("g", "k1"), Err(Seen::Pending));
        assert_eq!(i.deliver("g", "k1", 7), None);
        assert_eq!(i.claim("g", "k1"), Err(Seen::At(7)));
        assert_eq!(
            i.deliver("g", "k1", 8),
            Some(7),
            "a racing repeat is not delivered"
        );
        // Keys are per group.
        assert_eq!(i.claim("h", "k1"), Ok(()));
        i.release("h", "k1");
        assert_eq!(i.seen("h", "k1"), None);
    }

    #[test]
    fn keys_leave_after_the_window() {
        let i = Idempotency::new(Duration::ZERO);
        assert_eq!(i.deliver("g", "k", 1), None);
        assert_eq!(i.seen("g", "k"), None);
        assert_eq!(i.deliver("g", "k", 2), None);
    }
}
