//! Frames offered and not yet flushed: what lets a burst leave in one write per connection.

use std::sync::Arc;

use super::{Entry, Sink};

/// Connections with frames offered but not yet flushed. Frames published together (a burst of
/// client messages, one broadcast) are all offered first and flushed once, so each connection
/// gets them in one write.
pub struct Cork<S: Sink> {
    entries: Vec<Arc<Entry<S>>>,
}

/// From this many connections on, [`Cork::flush`] off the event loops shares the work with
/// another Tokio worker.
const PARALLEL_FLUSH: usize = 512;

/// Connections per task in a deferred flush.
const FLUSH_CHUNK: usize = 1024;

impl<S: Sink> Default for Cork<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Sink> Cork<S> {
    /// An empty cork.
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Whether nothing waits for a flush.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn add(&mut self, entry: Arc<Entry<S>>) {
        self.entries.push(entry);
    }

    /// Flushes every connection that was offered frames: at the end of this event loop's
    /// turn when this thread is one ([`crate::event_loops::defer`]: frames other connections
    /// of the loop publish meanwhile leave in the same writes), otherwise now. Off the event
    /// loops (an application's own multi-threaded runtime), a large flush is split in two:
    /// one half is handed to another Tokio worker, so one broadcast's system calls (several
    /// microseconds each on loopback) run on two cores.
    pub fn flush(&mut self) {
        if !self.defer(None) {
            self.flush_now();
        }
    }

    /// Hands the flushes (then `after`) to this event loop's end of turn: true when done (or
    /// there was nothing to hand), false when this thread is no event loop (nothing taken).
    fn defer(&mut self, after: Option<Arc<dyn crate::event_loops::Flush>>) -> bool {
        if self.entries.is_empty() && after.is_none() {
            return true;
        }
        crate::event_loops::defer(|list| {
            list.extend(
                self.entries
                    .drain(..)
                    .map(|e| e as Arc<dyn crate::event_loops::Flush>),
            );
            list.extend(after);
        })
    }

    /// Writes now (off the event loops).
    fn flush_now(&mut self) {
        if self.entries.len() >= PARALLEL_FLUSH {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let half = self.entries.split_off(self.entries.len() / 2);
                rt.spawn(async move {
                    for e in half {
                        e.sink.flush();
                    }
                });
            }
        }
        for e in self.entries.drain(..) {
            e.sink.flush();
        }
        if self.entries.capacity() > 64 {
            self.entries = Vec::new();
        }
    }

    /// Like [`flush`](Self::flush), then `after` once this flush's writes are done (on an
    /// event loop, at the end of its turn, right after them).
    pub fn flush_then(&mut self, after: Arc<dyn crate::event_loops::Flush>) {
        if !self.defer(Some(after.clone())) {
            self.flush_now();
            after.flush();
        }
    }

    /// Hands the flush to tasks (of 1,024 connections each) instead of doing it now.
    /// For traffic where a few hundred microseconds do not matter and volume does: frames
    /// offered to the same connections before those tasks run (a storm of join announcements)
    /// find their predecessors still queued and leave in the same writes. Flushes inline when
    /// there is no Tokio runtime; on an event loop, the same as [`flush`](Self::flush), which
    /// waits for the end of the loop's turn already.
    pub fn flush_deferred(&mut self) {
        if self.defer(None) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return self.flush_now();
        };
        while !self.entries.is_empty() {
            let at = self.entries.len().saturating_sub(FLUSH_CHUNK);
            let chunk = self.entries.split_off(at);
            rt.spawn(async move {
                for e in chunk {
                    e.sink.flush();
                }
            });
        }
    }
}

impl<S: Sink> Drop for Cork<S> {
    /// Nothing offered is ever left unflushed, even on an early return.
    fn drop(&mut self) {
        self.flush();
    }
}

impl<S: Sink> crate::event_loops::Flush for Entry<S> {
    fn flush(&self) {
        self.sink.flush();
    }
}
