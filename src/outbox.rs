//! A connection's bounded outbound queue: the one place a frame waits between the hub and the
//! socket.
//!
//! Producers (a broadcast, an echo, a pong) call [`Outbox::push`], which never waits: a full
//! queue is an answer ([`SendError::Full`]), and the caller closes the slow consumer instead of
//! stalling everyone else. The connection's writer takes the whole queue at once
//! ([`Outbox::take`]) and writes it with vectored writes, so a burst of frames costs one system
//! call rather than one per frame.
//!
//! An idle outbox holds no buffer: the queue is taken by the writer, not copied, and starts empty.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::close::CloseReason;
use crate::frame::Frame;

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The queue is at capacity: the connection does not read fast enough.
    #[error("outbound queue full")]
    Full,
    /// The connection is closing or closed.
    #[error("connection closed")]
    Closed,
}

/// Where frames for one connection wait for its writer. Implements the registry's sink.
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer: frames or a close request arrived. Only the writer waits on it.
    wake: Notify,
    /// Wakes the connection's supervisor when a close is requested, so it can start the
    /// close deadline even while the writer is blocked on a full socket.
    closing: Notify,
    /// Set when queued frames must be dropped (a slow consumer): the writer stops writing
    /// frames it has not started.
    discard: AtomicBool,
    capacity: usize,
}

struct State {
    queue: VecDeque<Frame>,
    close: Option<CloseReason>,
    /// Whether the writer has taken the close request.
    close_taken: bool,
}

/// What the writer got from [`Outbox::take`].
#[derive(Debug)]
pub enum Take {
    /// Frames were moved into the batch.
    Frames,
    /// Nothing is left to send but this Close frame; the writer sends it and stops.
    Close(Frame),
    /// The close was already taken: nothing more will ever come.
    Finished,
}

impl Outbox {
    /// An empty outbox that holds at most `capacity` data frames.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                close: None,
                close_taken: false,
            }),
            wake: Notify::new(),
            closing: Notify::new(),
            discard: AtomicBool::new(false),
            capacity: capacity.max(1),
        }
    }

    /// Queues a data frame without waiting.
    ///
    /// # Errors
    /// [`SendError::Full`] at capacity, [`SendError::Closed`] once a close was requested.
    pub fn push(&self, frame: Frame) -> Result<(), SendError> {
        let was_empty = {
            let mut st = self.state.lock();
            if st.close.is_some() {
                return Err(SendError::Closed);
            }
            if st.queue.len() >= self.capacity {
                return Err(SendError::Full);
            }
            st.queue.push_back(frame);
            st.queue.len() == 1
        };
        // The writer empties the queue whenever it wakes, so only the push that makes the queue
        // non-empty needs to wake it.
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Queues a control frame (a pong). Control frames may exceed the capacity by a small margin
    /// so that a busy connection still answers pings; past that margin they are dropped, which
    /// RFC 6455 allows (only the latest ping needs an answer).
    pub fn push_control(&self, frame: Frame) -> bool {
        let was_empty = {
            let mut st = self.state.lock();
            if st.close.is_some() || st.queue.len() >= self.capacity + 8 {
                return false;
            }
            st.queue.push_back(frame);
            st.queue.len() == 1
        };
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Asks for the connection to be closed with `reason`. The first request wins; later ones
    /// are ignored. Returns whether this call made the request.
    pub fn close(&self, reason: CloseReason) -> bool {
        {
            let mut st = self.state.lock();
            if st.close.is_some() {
                return false;
            }
            if !reason.drains_queue() {
                st.queue = VecDeque::new();
                self.discard.store(true, Ordering::Release);
            }
            st.close = Some(reason);
        }
        self.wake.notify_one();
        self.closing.notify_one();
        true
    }

    /// Whether a close was requested (no more frames are accepted).
    pub fn is_closed(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// The close reason, once one was requested.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().close.clone()
    }

    /// Number of frames waiting.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether frames not yet started must be dropped rather than written.
    pub fn discarding(&self) -> bool {
        self.discard.load(Ordering::Acquire)
    }

    /// Waits until frames or a close request are available and moves them out.
    ///
    /// `batch` must be empty; on [`Take::Frames`] it holds every queued frame in order.
    ///
    /// # Cancel safety
    /// Cancel safe: frames are moved only in the poll that returns them.
    pub async fn take(&self, batch: &mut VecDeque<Frame>) -> Take {
        loop {
            {
                let mut st = self.state.lock();
                if !st.queue.is_empty() {
                    std::mem::swap(&mut st.queue, batch);
                    return Take::Frames;
                }
                if st.close_taken {
                    return Take::Finished;
                }
                if let Some(reason) = &st.close {
                    let frame = reason.frame();
                    st.close_taken = true;
                    return Take::Close(frame);
                }
            }
            // notify_one stores a permit when nobody waits, so a push between the check above
            // and this await is not lost.
            self.wake.notified().await;
        }
    }

    /// Waits until a close is requested.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn closing(&self) {
        loop {
            if self.is_closed() {
                return;
            }
            self.closing.notified().await;
        }
    }
}

impl crate::manager::Sink for Outbox {
    fn try_send(&self, frame: &Frame) -> Result<(), SendError> {
        self.push(frame.clone())
    }

    fn close(&self, reason: CloseReason) {
        Outbox::close(self, reason);
    }

    fn is_open(&self) -> bool {
        !self.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn push_then_take_moves_everything_in_order() {
        let o = Outbox::new(4);
        for i in 0..3u8 {
            o.push(Bytes::from(vec![i])).unwrap();
        }
        let mut batch = VecDeque::new();
        assert!(matches!(o.take(&mut batch).await, Take::Frames));
        assert_eq!(
            batch.iter().map(|b| b[0]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(o.is_empty());
    }

    #[test]
    fn full_queue_is_an_answer_not_a_wait() {
        let o = Outbox::new(2);
        o.push(Bytes::new()).unwrap();
        o.push(Bytes::new()).unwrap();
        assert_eq!(o.push(Bytes::new()), Err(SendError::Full));
        // Pongs get a small margin past capacity.
        assert!(o.push_control(Bytes::new()));
    }

    #[tokio::test]
    async fn drain_close_comes_after_queued_frames() {
        let o = Outbox::new(8);
        o.push(Bytes::from_static(b"a")).unwrap();
        assert!(o.close(CloseReason::GoingAway));
        assert!(!o.close(CloseReason::SlowConsumer), "first close wins");
        assert_eq!(o.push(Bytes::new()), Err(SendError::Closed));
        let mut batch = VecDeque::new();
        assert!(matches!(o.take(&mut batch).await, Take::Frames));
        batch.clear();
        match o.take(&mut batch).await {
            Take::Close(f) => assert_eq!(&f[2..4], &1001u16.to_be_bytes()),
            other => panic!("expected close, got {other:?}"),
        }
        assert!(matches!(o.take(&mut batch).await, Take::Finished));
    }

    #[tokio::test]
    async fn slow_consumer_close_drops_the_backlog() {
        let o = Outbox::new(8);
        o.push(Bytes::from_static(b"a")).unwrap();
        o.close(CloseReason::SlowConsumer);
        assert!(o.discarding());
        let mut batch = VecDeque::new();
        match o.take(&mut batch).await {
            Take::Close(f) => assert_eq!(&f[2..4], &1008u16.to_be_bytes()),
            other => panic!("expected close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn take_wakes_on_push_from_another_task() {
        let o = std::sync::Arc::new(Outbox::new(8));
        let o2 = o.clone();
        let t = tokio::spawn(async move {
            let mut batch = VecDeque::new();
            o2.take(&mut batch).await;
            batch.len()
        });
        tokio::task::yield_now().await;
        o.push(Bytes::new()).unwrap();
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
    }
}
