//! Replies to a `wshub.v1` connection stay in command order even when one of them has to wait.
//!
//! In a cluster a `publish` is acknowledged with the offset the backplane gives it, which takes
//! a round trip to the engine; the connection task must not wait for it. The ack's place is
//! reserved instead, and replies to later commands queue behind it until it is filled. While
//! nothing waits (always, on a single node) a reply goes straight to the connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::{Hub, HubCork};
use crate::frame::Frame;
use crate::id::ConnId;

/// Replies waiting per connection at most; past it a publish is acknowledged at once, without
/// its offset, rather than queueing without bound.
pub(crate) const MAX_WAITING: usize = 256;

enum Reply {
    Waiting(u64),
    Ready(Frame),
}

/// What waits for one connection: the replies in order, and the bytes of those that are ready
/// (held to the connection's byte and frame budgets, like its outbox).
#[derive(Default)]
struct Queue {
    replies: VecDeque<Reply>,
    bytes: usize,
    /// How many of `replies` still wait.
    waiting: usize,
}

/// The connections that have a reply waiting, and what queues behind it.
#[derive(Default)]
pub(crate) struct Replies {
    queues: Mutex<HashMap<ConnId, Queue>>,
    /// How many connections have a queue: while none has (always, on a single node), a reply
    /// goes straight out without taking the lock. A connection's queue is made by its own
    /// task before any later reply of that task, so it never misses its own.
    queued: AtomicUsize,
    next: AtomicU64,
}

impl Replies {
    /// Removes a connection's queue (under the lock).
    fn remove(&self, queues: &mut HashMap<ConnId, Queue>, id: ConnId) {
        if queues.remove(&id).is_some() {
            self.queued.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Hub {
    /// Sends a reply to connection `id`, after any reply that is still waiting. Replies held
    /// behind a waiting one count against the connection's budgets: past half of them its task
    /// stops reading ([`replies_over_mark`](Self::replies_over_mark)); a client that still gets
    /// past all of them (one burst cannot) is closed as a slow consumer, as if its outbox were
    /// full.
    pub(crate) fn reply(&self, id: ConnId, frame: Frame, cork: &mut HubCork) {
        if self.shared.delivery.replies.queued.load(Ordering::Acquire) == 0 {
            self.send_corked(id, &frame, cork);
            return;
        }
        let over = {
            let mut queues = self.shared.delivery.replies.queues.lock();
            let Some(q) = queues.get_mut(&id) else {
                drop(queues);
                self.send_corked(id, &frame, cork);
                return;
            };
            let c = &self.shared.config;
            if q.bytes + frame.len() > c.max_send_buffer || q.replies.len() >= c.send_queue {
                true
            } else {
                q.bytes += frame.len();
                q.replies.push_back(Reply::Ready(frame));
                false
            }
        };
        if over {
            self.forget_replies(id);
            self.shared.metrics.slow_consumers.inc();
            self.shared
                .metrics
                .drops
                .get_or_create(&crate::metrics::Reason {
                    reason: "replies_held",
                })
                .inc();
            self.disconnect(id, crate::close::CloseReason::SlowConsumer);
        }
    }

    /// Whether the replies held for connection `id` behind a waiting one take half its byte
    /// budget or half its frames: its task then reads no more of its input until they go out
    /// (see [`Outbox::input_held`](crate::outbox::Outbox)).
    pub(crate) fn replies_over_mark(&self, id: ConnId) -> bool {
        let r = &self.shared.delivery.replies;
        if r.queued.load(Ordering::Acquire) == 0 {
            return false;
        }
        let queues = r.queues.lock();
        queues
            .get(&id)
            .is_some_and(|q| self.over_mark(q.bytes, q.replies.len()))
    }

    fn over_mark(&self, bytes: usize, replies: usize) -> bool {
        let c = &self.shared.config;
        bytes >= c.max_send_buffer / 2 || replies >= c.send_queue / 2
    }

    /// Reserves the place of a reply that comes later; `None` when the connection already has
    /// [`MAX_WAITING`] replies waiting.
    pub(crate) fn reserve_reply(&self, id: ConnId) -> Option<u64> {
        let r = &self.shared.delivery.replies;
        let mut queues = r.queues.lock();
        let q = queues.entry(id).or_insert_with(|| {
            r.queued.fetch_add(1, Ordering::Release);
            Queue::default()
        });
        if q.waiting >= MAX_WAITING {
            return None;
        }
        let ticket = r.next.fetch_add(1, Ordering::Relaxed);
        q.replies.push_back(Reply::Waiting(ticket));
        q.waiting += 1;
        Some(ticket)
    }

    /// Fills a reserved reply and sends every reply that no longer waits, in order.
    pub(crate) fn fill_reply(&self, id: ConnId, ticket: u64, frame: Frame) {
        let r = &self.shared.delivery.replies;
        let (ready, was_over) = {
            let mut queues = r.queues.lock();
            let Some(q) = queues.get_mut(&id) else {
                return;
            };
            let was_over = self.over_mark(q.bytes, q.replies.len());
            if let Some(slot) = q
                .replies
                .iter_mut()
                .find(|r| matches!(r, Reply::Waiting(t) if *t == ticket))
            {
                q.bytes += frame.len();
                q.waiting -= 1;
                *slot = Reply::Ready(frame);
            }
            let mut ready = Vec::new();
            while let Some(Reply::Ready(_)) = q.replies.front() {
                if let Some(Reply::Ready(f)) = q.replies.pop_front() {
                    q.bytes -= f.len();
                    ready.push(f);
                }
            }
            if q.replies.is_empty() {
                r.remove(&mut queues, id);
            }
            (ready, was_over)
        };
        let mut cork = HubCork::new();
        for f in &ready {
            self.send_corked(id, f, &mut cork);
        }
        cork.flush();
        if was_over && !ready.is_empty() {
            // Its task stopped reading for these: it looks again.
            if let Some(entry) = self.shared.delivery.manager.get(id) {
                entry.sink.wake_task();
            }
        }
    }

    /// Forgets what waited for a connection that is gone.
    pub(crate) fn forget_replies(&self, id: ConnId) {
        let r = &self.shared.delivery.replies;
        if r.queued.load(Ordering::Acquire) == 0 {
            return;
        }
        r.remove(&mut r.queues.lock(), id);
    }
}
