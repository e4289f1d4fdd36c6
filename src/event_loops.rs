//! Event loops: one single-threaded Tokio runtime per thread, each owning the connections
//! handed to it (the model of uWebSockets and nginx: a loop per core, no work stealing).
//!
//! Why not Tokio's work-stealing pool: on a loaded machine its idle workers look for work
//! before they sleep, and every burst that wakes one costs a cross-thread wake-up on both
//! sides. A WebSocket connection's work is small and its own (read, decode, fan out, write),
//! so stealing buys little and the searching costs the cores other processes need. Here a
//! loop with nothing to do sleeps in `epoll_wait`, and a connection's reads, timer and writes
//! stay on the loop that accepted it. What crosses loops is cheap by design: a publication
//! appends to other connections' outboxes and writes their sockets directly when they are
//! idle (write-through), so no wake-up is needed unless a socket is full. A publication's
//! writes all happen on the loop that published it: sharing a large broadcast's writes with
//! the other loops was measured slower (docs/BENCHMARKS.md), as the sockets' buffers and
//! locks then bounce between cores.
//!
//! **A cork per loop turn.** What the connections of a loop publish during one turn (the
//! tasks its last `epoll_wait` made ready) is written at the end of that turn: a publication
//! appends its frame to every recipient's outbox at once, but the write of each outbox waits
//! in this loop's list ([`defer`]) until a flusher task, queued behind the ready tasks, takes
//! them all. So when 16 clients' messages are read in one turn and each is broadcast to all
//! 16, every socket gets the 16 frames in one write, not 16 writes (uWebSockets corks the
//! same way). The wait is one turn of the loop: the flusher is scheduled like any task.
//!
//! The `wshub` binary serves with [`EventLoops`]; an application that embeds the hub keeps
//! its own runtime, and everything works on any Tokio runtime (a large flush is then shared
//! with Tokio's other workers, see `manager::Cork`).

use std::cell::RefCell;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// A set of event loops: the caller's runtime (loop 0) and `n - 1` threads, each running a
/// single-threaded runtime until [`EventLoops::stop`].
pub struct EventLoops {
    handles: Vec<Handle>,
    load: Mutex<Load>,
    stop: CancellationToken,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for EventLoops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoops")
            .field("loops", &self.handles.len())
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// The loops this thread is one of.
    static CURRENT: RefCell<Option<Arc<EventLoops>>> = const { RefCell::new(None) };
    /// This loop's writes put off to the end of its turn, when its flusher runs here.
    static DEFERRED: RefCell<Option<Deferred>> = const { RefCell::new(None) };
}

/// Something written at the end of a loop's turn: a connection's outbox.
pub trait Flush: Send + Sync {
    /// Writes what is queued (without waiting).
    fn flush(&self);
}

/// A loop's flushes put off to the end of its turn. The flusher is woken when the list stops
/// being empty, and empties it each time it runs.
struct Deferred {
    list: Vec<Arc<dyn Flush>>,
    /// The last list, emptied, kept for its capacity.
    spare: Vec<Arc<dyn Flush>>,
    /// The flusher's waker.
    waker: Waker,
}

/// A loop takes every new connection until it runs this many tasks (about one per
/// connection)...
pub const FILL: usize = 1024;
/// ...or was busy this share of the time, in thousandths...
const BUSY_PERMILLE: u32 = 500;
/// ...over this long.
pub const SAMPLE: Duration = Duration::from_millis(100);

/// How busy each loop was over the last [`SAMPLE`].
struct Load {
    at: Instant,
    total: Vec<Duration>,
    permille: Vec<u32>,
}

impl Load {
    fn new(n: usize) -> Self {
        Self {
            at: Instant::now(),
            total: vec![Duration::ZERO; n],
            permille: vec![0; n],
        }
    }

    /// Each loop's busy share over the last sample, taking a new one when it is old.
    fn busy(&mut self, handles: &[Handle]) -> Vec<u32> {
        let elapsed = self.at.elapsed();
        if elapsed >= SAMPLE {
            self.at = Instant::now();
            for (i, h) in handles.iter().enumerate() {
                let total = h.metrics().worker_total_busy_duration(0);
                let delta = total.saturating_sub(self.total[i]);
                self.total[i] = total;
                self.permille[i] =
                    u32::try_from(delta.as_micros() * 1000 / elapsed.as_micros().max(1))
                        .unwrap_or(u32::MAX);
            }
        }
        self.permille.clone()
    }
}

/// The largest deferred list whose room is kept for the next turn.
const SPARE_MAX: usize = 4096;

/// Puts flushes off to the end of this loop's turn: `add` is given the list to extend.
/// Returns false (and does not call `add`) when this thread is no event loop with a running
/// flusher: the caller then flushes now.
pub fn defer(add: impl FnOnce(&mut Vec<Arc<dyn Flush>>)) -> bool {
    // `try_with`: a cork dropped while this thread's locals are being destroyed flushes
    // itself instead of panicking.
    DEFERRED
        .try_with(|d| {
            let Ok(mut d) = d.try_borrow_mut() else {
                return false;
            };
            let Some(d) = d.as_mut() else {
                return false;
            };
            let was_empty = d.list.is_empty();
            add(&mut d.list);
            if was_empty && !d.list.is_empty() {
                d.waker.wake_by_ref();
            }
            true
        })
        .unwrap_or(false)
}

/// Whether this thread is an event loop with flushes waiting for the end of its turn. A task
/// that already handled one burst this turn yields before reading another while this holds,
/// so that what its burst (and everyone else's) queued is written first: a socket gets one
/// write per turn, and a peer pipelining without pause cannot keep everyone's frames queued
/// (and its own queue filling) for as long as it keeps sending.
pub fn waiting() -> bool {
    DEFERRED
        .try_with(|d| {
            d.try_borrow()
                .is_ok_and(|d| d.as_ref().is_some_and(|d| !d.list.is_empty()))
        })
        .unwrap_or(false)
}

/// The task that writes a loop's deferred flushes at the end of each turn. While it lives,
/// [`defer`] on this thread defers; when it is dropped (its runtime stops), it writes what
/// is left and deferring ends.
async fn flusher() {
    struct Registered;
    impl Drop for Registered {
        fn drop(&mut self) {
            let left = DEFERRED
                .try_with(|d| d.try_borrow_mut().ok().and_then(|mut d| d.take()))
                .ok()
                .flatten();
            if let Some(left) = left {
                for f in left.list {
                    f.flush();
                }
            }
        }
    }
    let registered = Registered;
    std::future::poll_fn(move |cx| {
        let _ = &registered;
        loop {
            let batch = DEFERRED.with(|d| {
                let mut d = d.borrow_mut();
                let d = d.get_or_insert_with(|| Deferred {
                    list: Vec::new(),
                    spare: Vec::new(),
                    waker: cx.waker().clone(),
                });
                if !d.waker.will_wake(cx.waker()) {
                    d.waker = cx.waker().clone();
                }
                if d.list.is_empty() {
                    return None;
                }
                let spare = std::mem::take(&mut d.spare);
                Some(std::mem::replace(&mut d.list, spare))
            });
            let Some(mut batch) = batch else {
                return Poll::<()>::Pending;
            };
            for f in batch.drain(..) {
                f.flush();
            }
            if batch.capacity() <= SPARE_MAX {
                DEFERRED.with(|d| {
                    if let Some(d) = d.borrow_mut().as_mut() {
                        d.spare = batch;
                    }
                });
            }
        }
    })
    .await;
}

impl EventLoops {
    /// Starts `n - 1` loop threads (named `wshub-loop-1`…) beside the single-threaded runtime
    /// this is called from, which becomes loop 0. `n` of 0 counts as 1. Each loop gets its
    /// flusher (see [`defer`]).
    ///
    /// # Errors
    /// When called from a multi-threaded runtime (a loop's state is its thread's), or when a
    /// thread or its runtime cannot be started; those already started are stopped.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub fn start(n: usize) -> io::Result<Arc<Self>> {
        let own = Handle::current();
        if own.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return Err(io::Error::other(
                "event loops start from a single-threaded (current_thread) Tokio runtime",
            ));
        }
        let stop = CancellationToken::new();
        let mut handles = vec![own];
        let mut threads = Vec::new();
        // Each thread says which loop it is: they get ready in any order, and loop `i` must be
        // `handles[i]` (the thread named `wshub-loop-{i}`, the load kept for it).
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, io::Result<Handle>)>();
        let mut go = Vec::new();
        for i in 1..n.max(1) {
            let ready = ready_tx.clone();
            let stopped = stop.clone();
            let (tx, rx) = std::sync::mpsc::channel::<Arc<EventLoops>>();
            go.push(tx);
            let spawned = std::thread::Builder::new()
                .name(format!("wshub-loop-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready.send((i, Err(e)));
                            return;
                        }
                    };
                    if ready.send((i, Ok(rt.handle().clone()))).is_err() {
                        return;
                    }
                    drop(ready);
                    // The set this loop belongs to, once all of it is there.
                    if let Ok(loops) = rx.recv() {
                        CURRENT.with(|c| *c.borrow_mut() = Some(loops));
                    }
                    rt.spawn(flusher());
                    rt.block_on(stopped.cancelled());
                    CURRENT.with(|c| c.borrow_mut().take());
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            }
        }
        drop(ready_tx);
        let mut others: Vec<Option<Handle>> = vec![None; n.max(1) - 1];
        for _ in 1..n.max(1) {
            match ready_rx.recv() {
                Ok((i, Ok(h))) => others[i - 1] = Some(h),
                Ok((_, Err(e))) => {
                    stop.cancel();
                    return Err(e);
                }
                Err(_) => {
                    stop.cancel();
                    return Err(io::Error::other("an event loop thread ended at start"));
                }
            }
        }
        handles.extend(others.into_iter().flatten());
        let loops = Arc::new(Self {
            load: Mutex::new(Load::new(handles.len())),
            handles,
            stop,
            threads: Mutex::new(threads),
        });
        for tx in go {
            let _ = tx.send(loops.clone());
        }
        CURRENT.with(|c| *c.borrow_mut() = Some(loops.clone()));
        tokio::spawn(flusher());
        Ok(loops)
    }

    /// The loops this thread is one of, if any.
    pub fn current() -> Option<Arc<Self>> {
        CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
    }

    /// How many loops there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none (never: loop 0 is the caller's).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The loop that takes the next connection: its index (0 is the caller's own runtime) and
    /// handle. Loops fill in order: the first with fewer than [`FILL`] tasks that was busy
    /// less than half of the last [`SAMPLE`]; when every loop is past that, the one with the
    /// fewest tasks among those less busy. So a few hundred chatty connections share one
    /// loop (their frames to each other meet in its cork, and no thread wakes another),
    /// and thousands spread over all of them.
    pub fn next(&self) -> (usize, &Handle) {
        let busy = match self.load.lock() {
            Ok(mut l) => l.busy(&self.handles),
            Err(p) => p.into_inner().busy(&self.handles),
        };
        let tasks: Vec<usize> = self
            .handles
            .iter()
            .map(|h| h.metrics().num_alive_tasks())
            .collect();
        let calm = |i: usize| busy.get(i).is_none_or(|&b| b < BUSY_PERMILLE);
        let i = (0..self.handles.len())
            .find(|&i| tasks[i] < FILL && calm(i))
            .or_else(|| (0..self.handles.len()).min_by_key(|&i| (!calm(i), tasks[i])))
            .unwrap_or(0);
        (i, &self.handles[i])
    }

    /// Stops the loop threads and waits for them: what still runs on them is dropped (call
    /// this after the server's graceful shutdown). Loop 0 is the caller's and goes on.
    pub fn stop(&self) {
        self.stop.cancel();
        let threads = match self.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for t in threads {
            let _ = t.join();
        }
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_run_on_their_own_threads_and_stop() {
        let rt = current_thread();
        rt.block_on(async {
            let loops = EventLoops::start(3).unwrap();
            assert_eq!(loops.len(), 3);
            // An idle loop 0 takes every connection until it runs FILL tasks.
            assert_eq!(loops.next().0, 0);
            let names = loops
                .handles
                .iter()
                .map(|h| h.spawn(async { std::thread::current().name().map(str::to_owned) }));
            let mut got = Vec::new();
            for n in names {
                got.push(n.await.unwrap());
            }
            assert_eq!(got[1].as_deref(), Some("wshub-loop-1"));
            assert_eq!(got[2].as_deref(), Some("wshub-loop-2"));
            let (hold, held) = tokio::sync::watch::channel(());
            let mut spawned = Vec::new();
            // `n` tasks on loop `i` that wait until `hold` is dropped.
            let mut fill = |i: usize, n: usize| {
                for _ in 0..n {
                    let mut held = held.clone();
                    spawned.push(loops.handles[i].spawn(async move {
                        let _ = held.changed().await;
                    }));
                }
            };
            fill(0, FILL);
            assert_eq!(loops.next().0, 1, "loop 0 is full: the next one fills");
            fill(1, FILL);
            assert_eq!(loops.next().0, 2);
            fill(2, FILL + 10);
            fill(0, 5);
            // All full: the one with the fewest tasks.
            assert_eq!(loops.next().0, 1);
            drop(hold);
            for t in spawned {
                t.await.unwrap();
            }
            // Each loop knows the set it belongs to.
            let seen = loops.handles[1]
                .spawn(async { EventLoops::current().map(|l| l.len()) })
                .await
                .unwrap();
            assert_eq!(seen, Some(3));
            loops.stop();
            assert!(EventLoops::current().is_none());
        });
    }

    #[test]
    fn a_busy_loop_takes_no_new_connection() {
        let rt = current_thread();
        rt.block_on(async {
            let loops = EventLoops::start(2).unwrap();
            assert_eq!(loops.next().0, 0);
            // Loop 0 (this thread) busy for two samples' time, with few tasks.
            tokio::spawn(async { std::thread::sleep(SAMPLE * 2) })
                .await
                .unwrap();
            assert_eq!(loops.next().0, 1, "loop 0 was busy: the next one takes it");
            loops.stop();
        });
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    struct Count(std::sync::atomic::AtomicUsize);
    impl Flush for Count {
        fn flush(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_deferred_flush_waits_for_the_end_of_the_turn_and_is_never_lost() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let c = Arc::new(Count(AtomicUsize::new(0)));
        // No loop on this thread: the caller flushes itself.
        assert!(!defer(|l| l.push(c.clone())));
        assert!(!waiting());
        let rt = current_thread();
        rt.block_on(async {
            let loops = EventLoops::start(1).unwrap();
            tokio::task::yield_now().await; // the flusher registers
            let other = tokio::spawn({
                let c = c.clone();
                async move { c.0.load(SeqCst) }
            });
            assert!(!waiting());
            assert!(defer(|l| l.push(c.clone())));
            assert!(defer(|l| l.push(c.clone())));
            assert!(waiting(), "flushes wait for the end of the turn");
            assert_eq!(c.0.load(SeqCst), 0, "not before the turn ends");
            // A task made ready before the flusher runs before it: it sees nothing written.
            assert_eq!(other.await.unwrap(), 0);
            tokio::task::yield_now().await;
            assert_eq!(c.0.load(SeqCst), 2, "both, at the end of the turn");
            assert!(!waiting());
            // Deferred and never run: the flusher's drop (its runtime stopping) writes it.
            assert!(defer(|l| l.push(c.clone())));
            loops.stop();
        });
        drop(rt);
        assert_eq!(c.0.load(SeqCst), 3);
        assert!(!defer(|l| l.push(c.clone())), "no more deferring");
    }
}
