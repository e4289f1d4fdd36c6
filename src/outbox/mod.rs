//! A connection's bounded outbound queue: the one place a frame waits between the hub and the
//! socket.
//!
//! Producers (a broadcast, an echo, a pong) call [`Outbox::push`], which never waits: a full
//! queue is an answer ([`SendError::Full`]), and the caller closes the slow consumer instead of
//! stalling everyone else.
//!
//! Frames leave by one of two ways, and exactly one writer owns the socket at a time
//! ([`Owner`]):
//! - **write-through** (plain TCP): once the connection has attached its socket
//!   ([`Outbox::attach`]), whoever queued frames into an idle outbox flushes it with one
//!   non-blocking write of everything queued ([`Outbox::flush`], [`write_batch`]). A broadcast
//!   pushes to every recipient first and flushes afterwards, so frames published together
//!   ("corked") leave in one system call, and no task is woken for a socket that can take the
//!   bytes now. On an event loop the flush waits for the end of the loop's turn, so everything
//!   the turn queued for a socket leaves in one write; the writer task never takes frames a
//!   flush is coming for.
//! - **the writer task**: when the socket cannot take everything (it would block), the rest is
//!   handed to the connection's writer task, which waits for the socket to be writable. Without
//!   an attached socket (TLS, before the upgrade) every frame goes this way.
//!
//! An idle outbox holds no buffer: queues are taken, not copied, and start empty.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Buf;
use parking_lot::Mutex;

use crate::close::CloseReason;
use crate::frame::Frame;

pub use crate::manager::{Queued, SendError};

mod policy;
mod sweep;

use policy::Mark;
pub use sweep::Sweep;

/// The socket write-through writes to: a plain TCP connection's write half, shared with its
/// writer (concrete, not a trait object: one word in every outbox instead of two).
pub type DirectWrite = tokio::net::tcp::OwnedWriteHalf;

/// Frames handed to one vectored write (Linux accepts up to 1024).
pub const MAX_SLICES: usize = 64;

/// Fills `slices` with the front frames of `batch`; returns how many.
pub fn fill_slices<'a>(
    batch: &'a VecDeque<Frame>,
    slices: &mut [IoSlice<'a>; MAX_SLICES],
) -> usize {
    let mut n = 0;
    for (slot, frame) in slices.iter_mut().zip(batch.iter()) {
        *slot = IoSlice::new(frame);
        n += 1;
    }
    n
}

/// Frames that together fit in this many bytes leave in one `send` of a copy instead of a
/// vectored write (see [`write_batch`]).
const COALESCE_BYTES: usize = 8 * 1024;

thread_local! {
    /// Where [`write_batch`] gathers small frames (one per thread, [`COALESCE_BYTES`]).
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes some of the front frames of `batch` to `socket` without waiting; returns how many
/// bytes it took.
///
/// A single frame leaves by one `send`; several that together fit in 8 KiB (`COALESCE_BYTES`) are
/// copied into this thread's gathering buffer and leave by one `send` too; anything larger by
/// one vectored write. Measured on the echo + broadcast path: `writev` goes through the VFS
/// layer (file position lock, access checks, importing the vector) that a socket's `send`
/// skips, and that cost more than copying the few hundred bytes of a turn's small frames.
pub fn write_batch(
    socket: &tokio::net::TcpStream,
    batch: &VecDeque<Frame>,
) -> std::io::Result<usize> {
    match batch.len() {
        0 => return Ok(0),
        1 => return socket.try_write(&batch[0]),
        _ => {}
    }
    let n = batch.len().min(MAX_SLICES);
    let small = batch.iter().take(n).map(|f| f.len()).sum::<usize>() <= COALESCE_BYTES;
    let gathered = small
        .then(|| {
            GATHER.try_with(|g| {
                let mut g = g.try_borrow_mut().ok()?;
                g.clear();
                g.reserve(COALESCE_BYTES);
                for f in batch.iter().take(n) {
                    g.extend_from_slice(f);
                }
                Some(socket.try_write(&g))
            })
        })
        .and_then(|r| r.ok().flatten());
    match gathered {
        Some(r) => r,
        None => write_vectored(socket, batch),
    }
}

fn write_vectored(
    socket: &tokio::net::TcpStream,
    batch: &VecDeque<Frame>,
) -> std::io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let n = fill_slices(batch, &mut slices);
    socket.try_write_vectored(&slices[..n])
}

/// Drops `written` bytes from the front of `batch`; returns whether the new front frame is
/// partly written.
pub fn advance(batch: &mut VecDeque<Frame>, mut written: usize) -> bool {
    while written > 0 {
        let Some(front) = batch.front_mut() else {
            return false;
        };
        if written >= front.len() {
            written -= front.len();
            batch.pop_front();
        } else {
            front.advance(written);
            return true;
        }
    }
    false
}

/// What the writer task takes at once: up to a vectored write's frames and 256 KiB (at least
/// one frame). What stays queued meanwhile can still be dropped or replaced by a delivery
/// policy, or discarded for a slow consumer, without waiting for the socket.
const WRITER_BATCH_BYTES: usize = 256 * 1024;

fn batch_len(queue: &VecDeque<Frame>) -> usize {
    let mut bytes = 0;
    let n = queue
        .iter()
        .take(MAX_SLICES)
        .take_while(|f| {
            bytes += f.len();
            bytes <= WRITER_BATCH_BYTES
        })
        .count();
    n.max(1)
}

/// Who may write to the socket right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Nobody is writing.
    Idle,
    /// A producer is flushing with a non-blocking write.
    Flusher,
    /// The connection's writer task (waiting for the socket, or writing).
    Writer,
}

/// Where frames for one connection wait for the socket. Implements the registry's sink.
pub struct Outbox {
    state: Mutex<State>,
    /// Set when queued frames must be dropped (a slow consumer): writers stop writing frames
    /// they have not started.
    discard: AtomicBool,
    /// A close was requested (the same as `state.close.is_some()`, readable without the lock).
    closed: AtomicBool,
    /// When the connection wants its task woken for its timer (see [`Sweep`]), in the sweep's
    /// milliseconds; [`u64::MAX`]: not armed, or fired.
    due: AtomicU64,
    capacity: u32,
    /// The byte budget: data frames are refused once the bytes not yet written would pass it
    /// (a single frame larger than the budget is taken only into an empty outbox).
    max_bytes: u32,
    /// Bytes queued or held by a writer and not yet written (what this connection pins).
    pending: AtomicUsize,
    /// Bytes were written to the socket since the connection's last look
    /// ([`wrote_since`](Self::wrote_since)): a sign of life while it holds its input.
    written: AtomicBool,
    /// The connection stopped reading its input because of what waits here: a write that
    /// brings the outbox back under the mark wakes its task.
    input_waits: AtomicBool,
}

struct State {
    queue: VecDeque<Frame>,
    /// What each queued frame is, for the delivery policies: empty while no frame under a
    /// policy is queued (an idle or plain connection holds nothing), else one per frame of
    /// `queue`, in the same order.
    marks: VecDeque<Option<Mark>>,
    /// Why the connection is closing, once asked (boxed: rare, and kept out of every idle
    /// outbox).
    close: Option<Box<CloseReason>>,
    /// Whether the writer has taken the close request.
    close_taken: bool,
    owner: Owner,
    /// Whether the front of `queue` is a frame already partly on the wire.
    front_partial: bool,
    /// The socket, for write-through; absent before the upgrade and on non-TCP transports.
    socket: Option<Arc<DirectWrite>>,
    /// The connection task, woken when work is handed to it, a close is requested or its
    /// timer fires. One waker for all of it: an idle connection waits on nothing else but its
    /// socket's readiness.
    task: Option<Waker>,
}

/// What the writer task got from [`Outbox::take`].
#[derive(Debug)]
pub enum Take {
    /// Frames were moved into the batch; the writer owns the socket until [`Outbox::release`].
    /// The flag says whether the first frame is already partly written.
    Frames(bool),
    /// Nothing is left to send but this Close frame; the writer sends it and stops.
    Close(Frame),
    /// The close was already taken: nothing more will ever come.
    Finished,
}

impl Outbox {
    /// An empty outbox that holds at most `capacity` data frames and no byte budget to speak
    /// of (see [`with_budget`](Self::with_budget)).
    pub fn new(capacity: usize) -> Self {
        Self::with_budget(capacity, usize::MAX)
    }

    /// An empty outbox that holds at most `capacity` data frames and `max_bytes` bytes not yet
    /// written. A frame larger than `max_bytes` is accepted only when nothing else is waiting,
    /// so the most a connection can pin is `max_bytes` plus one frame.
    pub fn with_budget(capacity: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                marks: VecDeque::new(),
                close: None,
                close_taken: false,
                owner: Owner::Idle,
                front_partial: false,
                socket: None,
                task: None,
            }),
            discard: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            due: AtomicU64::new(u64::MAX),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX).max(1),
            pending: AtomicUsize::new(0),
            written: AtomicBool::new(false),
            input_waits: AtomicBool::new(false),
        }
    }

    /// Data frames it holds at most.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Its byte budget (up to 4 GiB).
    fn max_bytes(&self) -> usize {
        self.max_bytes as usize
    }

    /// Bytes queued or being written and not yet on the wire.
    pub fn pending_bytes(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// `bytes` left the outbox: written, or dropped unwritten.
    pub(crate) fn sent(&self, bytes: usize) {
        if bytes > 0 {
            self.pending.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// `bytes` were written to the socket. Wakes the connection's task when that brings a
    /// held input back under the mark.
    pub(crate) fn wrote(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.sent(bytes);
        self.written.store(true, Ordering::Relaxed);
        // Pairs with the fence in `input_held`: either that check sees these bytes gone, or
        // this one sees that the task waits.
        fence(Ordering::SeqCst);
        if self.input_waits.load(Ordering::Relaxed)
            && !self.over_input_mark()
            && self.input_waits.swap(false, Ordering::Relaxed)
        {
            self.wake_task();
        }
    }

    /// Whether bytes reached the socket since the last call.
    pub(crate) fn wrote_since(&self) -> bool {
        self.written.swap(false, Ordering::Relaxed)
    }

    /// Whether the connection should stop reading its input for now: half its frames or half
    /// its byte budget wait to be written. A client's own replies then slow the client down,
    /// as TCP would, instead of filling the outbox until the client is closed as a slow
    /// consumer; reading resumes (the task is woken) once the writer brings it back under.
    pub(crate) fn input_held(&self) -> bool {
        if self.pending_bytes() == 0 {
            return false;
        }
        self.input_waits.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let held = self.over_input_mark();
        if !held {
            self.input_waits.store(false, Ordering::Relaxed);
        }
        held
    }

    /// Whether the bytes waiting alone pass the mark: a cheap first look (no lock) before
    /// [`input_held`](Self::input_held).
    pub(crate) fn bytes_over_input_mark(&self) -> bool {
        self.pending_bytes() >= self.max_bytes() / 2
    }

    /// Whether what no delivery policy may drop (replies, and messages sent to this
    /// connection alone or under a policy that keeps them) takes half the frames or half the
    /// byte budget. Frames `drop-oldest` may drop do not count: they make room for replies, and
    /// a client overwhelmed by a busy group must still be read (to leave it, say).
    fn over_input_mark(&self) -> bool {
        let pending = self.pending_bytes();
        if pending == 0 {
            return false;
        }
        let (frames, bytes) = (self.capacity() / 2, self.max_bytes() / 2);
        let st = self.state.lock();
        if pending < bytes && st.queue.len() < frames {
            return false;
        }
        let (n, len) = Self::droppable(&st);
        st.queue.len().saturating_sub(n) >= frames || pending.saturating_sub(len) >= bytes
    }

    /// Drops the frames of `batch` after the first `keep`, forgetting their bytes.
    pub(crate) fn drop_after(&self, batch: &mut VecDeque<Frame>, keep: usize) {
        let dropped: usize = batch.iter().skip(keep).map(|f| f.len()).sum();
        batch.truncate(keep);
        self.sent(dropped);
    }

    /// Enables write-through to `socket`. Frames queued before are handed to the writer task.
    pub fn attach(&self, socket: Arc<DirectWrite>) {
        let mut st = self.state.lock();
        st.socket = Some(socket);
        if st.owner == Owner::Idle && !st.queue.is_empty() {
            // Queued without a socket, so no flush is coming for them.
            st.owner = Owner::Writer;
        }
        Self::wake(st);
    }

    /// Wakes the connection task (after `st` changed in a way it must see), outside the lock.
    fn wake(mut st: parking_lot::MutexGuard<'_, State>) {
        let task = st.task.take();
        drop(st);
        if let Some(task) = task {
            task.wake();
        }
    }

    /// Wakes the connection task, whatever it waits for (its timer fired, the server is shutting
    /// down: it looks at everything when it runs).
    pub fn wake_task(&self) {
        Self::wake(self.state.lock());
    }

    /// The connection task will be woken by the next change it must see: work handed to it, a
    /// close request, [`wake_task`](Self::wake_task).
    pub fn register(&self, task: &Waker) {
        Self::register_in(&mut self.state.lock(), task);
    }

    fn register_in(st: &mut State, task: &Waker) {
        match &st.task {
            Some(w) if w.will_wake(task) => {}
            _ => st.task = Some(task.clone()),
        }
    }

    /// Drops the socket reference (the connection is over).
    pub fn detach(&self) {
        self.state.lock().socket = None;
    }

    /// Queues a data frame without waiting.
    ///
    /// # Errors
    /// [`SendError::Full`] at capacity (frames or bytes), [`SendError::Closed`] once a close
    /// was requested.
    pub fn push(&self, frame: Frame) -> Result<Queued, SendError> {
        self.enqueue(frame, self.capacity(), true)
    }

    /// Queues a control frame (a pong). Control frames may exceed the capacity by a small margin
    /// so that a busy connection still answers pings; past that margin they are dropped, which
    /// RFC 6455 allows (only the latest ping needs an answer). They are small (at most 127
    /// bytes) and not held to the byte budget.
    ///
    /// # Errors
    /// As [`push`](Self::push).
    pub fn push_control(&self, frame: Frame) -> Result<Queued, SendError> {
        self.enqueue(frame, self.capacity() + 8, false)
    }

    fn enqueue(&self, frame: Frame, limit: usize, budget: bool) -> Result<Queued, SendError> {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return Err(SendError::Closed);
        }
        if !self.fits(&st, frame.len(), limit, budget) {
            // A full queue may hold messages a `drop-oldest` group lets go of.
            if !budget || limit != self.capacity() || !self.make_room(&mut st, frame.len(), None) {
                return Err(SendError::Full);
            }
        }
        self.append(&mut st, frame, None);
        self.pushed(st)
    }

    /// Whether a frame of `len` bytes may be queued: under `limit` frames and, with `budget`,
    /// within the byte budget (a frame larger than the budget passes into an empty outbox).
    fn fits(&self, st: &State, len: usize, limit: usize, budget: bool) -> bool {
        let pending = self.pending.load(Ordering::Relaxed);
        st.queue.len() < limit
            && !(budget && pending > 0 && pending.saturating_add(len) > self.max_bytes())
    }

    /// Queues `frame` (what it is, under a policy, in `mark`).
    fn append(&self, st: &mut State, frame: Frame, mark: Option<Mark>) {
        // Under the state lock: pushes are serialised, writers only subtract.
        self.pending.fetch_add(frame.len(), Ordering::Relaxed);
        if mark.is_some() || !st.marks.is_empty() {
            let missing = st.queue.len() - st.marks.len();
            st.marks.extend(std::iter::repeat_n(None, missing));
            st.marks.push_back(mark);
        }
        st.queue.push_back(frame);
    }

    /// After frames were queued: who writes them.
    fn pushed(&self, st: parking_lot::MutexGuard<'_, State>) -> Result<Queued, SendError> {
        if st.owner != Owner::Idle || st.queue.len() > 1 {
            // A writer owns the socket and re-checks the queue before letting go, or the
            // frames before this one already asked for a flush.
            return Ok(Queued::Done);
        }
        if st.socket.is_some() {
            return Ok(Queued::NeedsFlush);
        }
        Self::wake(st);
        Ok(Queued::Done)
    }

    /// Writes what is queued with one non-blocking vectored write, if nobody else is writing.
    /// What the socket does not take now is handed to the writer task.
    pub fn flush(&self) {
        loop {
            let (socket, mut batch, mut marks, mut partial) = {
                let mut st = self.state.lock();
                if st.owner != Owner::Idle || st.queue.is_empty() {
                    return;
                }
                let Some(socket) = st.socket.clone() else {
                    return;
                };
                self.expire_queued(&mut st);
                st.owner = Owner::Flusher;
                let partial = std::mem::take(&mut st.front_partial);
                let marks = std::mem::take(&mut st.marks);
                (socket, std::mem::take(&mut st.queue), marks, partial)
            };
            let before = batch.len();
            let result = write_batch(socket.as_ref().as_ref(), &batch);
            let handed_over = match result {
                Ok(n) => {
                    self.wrote(n);
                    partial = advance(&mut batch, n) || (partial && n == 0);
                    !batch.is_empty()
                }
                // Would block, or a socket error the writer task will meet and report.
                Err(_) => true,
            };
            let mut st = self.state.lock();
            if handed_over {
                // Put the rest back in front of anything queued meanwhile, with what each is
                // (frames the socket did not start on are still a policy's to drop).
                if self.discarding() {
                    self.drop_after(&mut batch, usize::from(partial));
                }
                let written = before.saturating_sub(batch.len());
                if !marks.is_empty() || !st.marks.is_empty() {
                    marks.drain(..written.min(marks.len()));
                    marks.resize(batch.len(), None);
                    let newer = std::mem::take(&mut st.marks);
                    let queued = st.queue.len();
                    marks.extend(newer);
                    marks.resize(batch.len() + queued, None);
                    st.marks = marks;
                }
                batch.append(&mut st.queue);
                st.queue = batch;
                st.front_partial = partial;
                st.owner = Owner::Writer;
                Self::wake(st);
                return;
            }
            st.owner = Owner::Idle;
            if st.queue.is_empty() {
                if st.close.is_some() {
                    Self::wake(st);
                }
                return;
            }
            // More frames arrived while we wrote: go again.
        }
    }

    /// Asks for the connection to be closed with `reason`. The first request wins; later ones
    /// are ignored. Returns whether this call made the request.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return false;
        }
        if !reason.drains_queue() {
            let keep = usize::from(st.front_partial);
            self.drop_after(&mut st.queue, keep);
            st.marks = VecDeque::new();
            if st.queue.is_empty() {
                st.queue = VecDeque::new();
            }
            self.discard.store(true, Ordering::Release);
        }
        st.close = Some(Box::new(reason));
        self.closed.store(true, Ordering::Release);
        Self::wake(st);
        true
    }

    /// Whether a close was requested (no more frames are accepted).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Arms the connection's timer: [`Sweep`] wakes its task once its clock passes `at`.
    pub(crate) fn set_due(&self, at: u64) {
        self.due.store(at, Ordering::Release);
    }

    /// Whether the timer, when armed, fired (the sweep disarmed it).
    pub(crate) fn fired(&self) -> bool {
        self.due() == u64::MAX
    }

    /// When the timer fires, on the sweep's clock ([`u64::MAX`]: not armed, or fired).
    pub(crate) fn due(&self) -> u64 {
        self.due.load(Ordering::Acquire)
    }

    /// Called by the sweep at `now`: disarms a timer that is due and says whether it was.
    fn due_by(&self, now: u64) -> bool {
        let at = self.due.load(Ordering::Acquire);
        at <= now
            && self
                .due
                .compare_exchange(at, u64::MAX, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// The close reason, once one was requested.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().close.as_deref().cloned()
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

    /// The writer waits here until it owns work: frames handed over by a flusher, frames
    /// queued while no socket is attached, or the Close frame once nothing else is left.
    ///
    /// `batch` must be empty; on [`Take::Frames`] it holds the frames in order and the writer
    /// owns the socket until it calls [`release`](Self::release).
    pub async fn take(&self, batch: &mut VecDeque<Frame>) -> Take {
        std::future::poll_fn(|cx| self.poll_take(cx, batch)).await
    }

    /// [`take`](Self::take) as a poll: `Pending` registers `cx`'s waker as the connection
    /// task's (see [`register`](Self::register)).
    pub fn poll_take(&self, cx: &mut Context<'_>, batch: &mut VecDeque<Frame>) -> Poll<Take> {
        let mut st = self.state.lock();
        Self::register_in(&mut st, cx.waker());
        // Frames queued into an idle outbox with a socket are the flush's their producer
        // asked for (a cork, written at the end of the turn with whatever else the turn
        // queued): the writer leaves them to it, so that the socket gets one write per turn.
        let mine = match st.owner {
            Owner::Writer => true,
            Owner::Idle => st.socket.is_none(),
            Owner::Flusher => false,
        };
        if !st.queue.is_empty() && !mine {
            return Poll::Pending;
        }
        if !st.queue.is_empty() {
            st.owner = Owner::Writer;
            self.expire_queued(&mut st);
            let take = batch_len(&st.queue);
            if take == st.queue.len() {
                st.marks = VecDeque::new();
                std::mem::swap(&mut st.queue, batch);
            } else {
                // The rest stays queued, where a delivery policy can still act on it.
                let rest = st.queue.split_off(take);
                *batch = std::mem::replace(&mut st.queue, rest);
                let n = take.min(st.marks.len());
                st.marks.drain(..n);
            }
            return Poll::Ready(Take::Frames(std::mem::take(&mut st.front_partial)));
        }
        if st.owner != Owner::Flusher {
            st.owner = Owner::Idle;
            if st.close_taken {
                return Poll::Ready(Take::Finished);
            }
            if let Some(reason) = &st.close {
                let frame = reason.frame();
                st.close_taken = true;
                st.owner = Owner::Writer;
                return Poll::Ready(Take::Close(frame));
            }
        }
        // The waker is registered under the same lock as the check: whoever changes the state
        // next wakes it.
        Poll::Pending
    }

    /// The writer task finished its batch. Returns whether more frames are queued (the writer
    /// keeps the socket and should call [`take`](Self::take) again right away).
    pub fn release(&self) -> bool {
        let mut st = self.state.lock();
        if st.queue.is_empty() {
            st.owner = Owner::Idle;
            false
        } else {
            true
        }
    }
}

impl crate::manager::Sink for Outbox {
    fn try_send(&self, frame: &Frame) -> Result<Queued, SendError> {
        self.push(frame.clone())
    }

    fn try_send_tagged(
        &self,
        frame: &Frame,
        tag: &crate::manager::policy::Tag,
        protocol: crate::manager::Protocol,
    ) -> Result<Queued, SendError> {
        self.push_tagged(frame.clone(), tag, protocol)
    }

    fn flush(&self) {
        Outbox::flush(self);
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
        assert!(matches!(o.take(&mut batch).await, Take::Frames(false)));
        assert_eq!(
            batch.iter().map(|b| b[0]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(o.is_empty());
    }

    /// Small batches are gathered into one send, large ones written vectored, one frame as it
    /// is; in every case the peer reads the frames' bytes in order, and a batch the socket
    /// takes only part of resumes where it stopped.
    #[tokio::test]
    async fn write_batch_keeps_the_bytes_in_order_whatever_the_path() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        // A small send buffer, so that large batches are taken in parts.
        socket2::SockRef::from(&client)
            .set_send_buffer_size(4096)
            .unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        let frame = |len: usize, b: u8| Bytes::from(vec![b; len]);
        let batches: [Vec<Frame>; 5] = [
            vec![],
            vec![frame(5, 1)],
            vec![frame(10, 2), frame(20, 3), frame(30, 4)],
            vec![
                frame(COALESCE_BYTES, 5),
                frame(7, 6),
                frame(3 * COALESCE_BYTES, 7),
            ],
            (0..200u8).map(|i| frame(100, i)).collect(),
        ];
        let want: Vec<u8> = batches
            .iter()
            .flatten()
            .flat_map(|f| f.iter().copied())
            .collect();
        let reader = tokio::spawn({
            let len = want.len();
            async move {
                let mut got = vec![0; len];
                peer.read_exact(&mut got).await.map(|_| got)
            }
        });
        let mut partial = false;
        for batch in batches {
            let mut batch: VecDeque<Frame> = batch.into();
            while !batch.is_empty() {
                client.writable().await.unwrap();
                match write_batch(&client, &batch) {
                    Ok(n) => partial |= advance(&mut batch, n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, want);
        assert!(partial, "some write took part of a frame");
    }

    #[test]
    fn full_queue_is_an_answer_not_a_wait() {
        let o = Outbox::new(2);
        o.push(Bytes::new()).unwrap();
        o.push(Bytes::new()).unwrap();
        assert_eq!(o.push(Bytes::new()), Err(SendError::Full));
        // Pongs get a small margin past capacity.
        assert!(o.push_control(Bytes::new()).is_ok());
    }

    #[tokio::test]
    async fn the_byte_budget_counts_until_written() {
        let o = Outbox::with_budget(100, 1000);
        // One frame larger than the budget still goes into an empty outbox...
        o.push(Bytes::from(vec![0u8; 1500])).unwrap();
        // ...but nothing more until it is written.
        assert_eq!(o.push(Bytes::from(vec![0u8; 10])), Err(SendError::Full));
        assert_eq!(o.pending_bytes(), 1500);
        let mut batch = VecDeque::new();
        assert!(matches!(o.take(&mut batch).await, Take::Frames(false)));
        // Taken by the writer is not written: still pinned.
        assert_eq!(o.push(Bytes::from(vec![0u8; 10])), Err(SendError::Full));
        o.sent(1500);
        batch.clear();
        o.release();
        for _ in 0..2 {
            o.push(Bytes::from(vec![0u8; 400])).unwrap();
        }
        assert_eq!(o.push(Bytes::from(vec![0u8; 400])), Err(SendError::Full));
        // Pongs are not held to it.
        assert!(o.push_control(Bytes::from_static(&[0x8a, 0])).is_ok());
        // A slow-consumer close forgets what it drops.
        o.close(CloseReason::SlowConsumer);
        assert_eq!(o.pending_bytes(), 0);
    }

    #[tokio::test]
    async fn drain_close_comes_after_queued_frames() {
        let o = Outbox::new(8);
        o.push(Bytes::from_static(b"a")).unwrap();
        assert!(o.close(CloseReason::GoingAway));
        assert!(!o.close(CloseReason::SlowConsumer), "first close wins");
        assert_eq!(o.push(Bytes::new()), Err(SendError::Closed));
        let mut batch = VecDeque::new();
        assert!(matches!(o.take(&mut batch).await, Take::Frames(false)));
        batch.clear();
        match o.take(&mut batch).await {
            Take::Close(f) => assert_eq!(&f[2..4], &1001u16.to_be_bytes()),
            other => panic!("expected close, got {other:?}"),
        }
        assert!(matches!(o.take(&mut batch).await, Take::Finished));
    }

    /// With a socket attached, frames queued into an idle outbox are the flush's their producer
    /// asked for: the writer neither takes them nor sends a Close requested meanwhile ahead of
    /// them. Frames queued before the socket existed are the writer's once it is attached.
    #[tokio::test]
    async fn the_writer_leaves_frames_to_the_flush_that_is_coming() {
        use std::future::poll_fn;
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        let (_rd, wr) = client.into_split();
        let poll_once = |o: &Outbox, batch: &mut VecDeque<Frame>| {
            let waker = futures_util::task::noop_waker();
            o.poll_take(&mut Context::from_waker(&waker), batch)
        };

        // Queued before the socket: no flush is coming, the writer owns them on attach.
        let o = Outbox::new(8);
        assert_eq!(o.push(Bytes::from_static(b"a")), Ok(Queued::Done));
        o.attach(Arc::new(wr));
        let mut batch = VecDeque::new();
        assert!(matches!(
            poll_once(&o, &mut batch),
            Poll::Ready(Take::Frames(false))
        ));
        assert_eq!(batch.len(), 1);
        batch.clear();
        assert!(!o.release());

        // Queued with the socket there: left for the flush, and a Close waits behind them.
        assert_eq!(o.push(Bytes::from_static(b"b")), Ok(Queued::NeedsFlush));
        assert_eq!(o.push(Bytes::from_static(b"c")), Ok(Queued::Done));
        assert!(poll_once(&o, &mut batch).is_pending());
        assert!(o.close(CloseReason::GoingAway));
        assert!(
            poll_once(&o, &mut batch).is_pending(),
            "no Close before b and c"
        );
        o.flush();
        assert!(o.is_empty());
        let mut got = [0u8; 2];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"bc");
        match poll_fn(|cx| o.poll_take(cx, &mut batch)).await {
            Take::Close(f) => assert_eq!(&f[2..4], &1001u16.to_be_bytes()),
            other => panic!("expected the Close after the flush, got {other:?}"),
        }
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
