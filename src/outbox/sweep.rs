//! One timer for every connection: keep-alive pings, idle and token deadlines, closing
//! handshakes, and the wake-up at shutdown.
//!
//! A timer per connection (a Tokio `Sleep` in every task) costs each idle connection ~110
//! bytes in its task plus a slot in the runtime's wheel. Instead each connection's outbox
//! holds one number, when it wants to be woken ([`Outbox::set_due`]), and one task per hub
//! sweeps all of them every period (the finest of the hub's timings ÷ 10, between 5 ms and
//! 1 s), waking the connections whose time has come through the waker their outbox already
//! holds. uWebSockets does the same (a 4-second sweep over its sockets). A timer thus fires up
//! to one period late, never early.
//!
//! A connection registers its outbox once; the sweep lets go of it when it is the last holder
//! (the connection ended), so ending a connection takes no lock here.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Outbox;

/// Registered outboxes are spread over this many lists, so that a sweep holds each lock
/// briefly and registrations rarely wait for it.
const SHARDS: usize = 16;

/// The hub's connection timer (see the module docs).
pub struct Sweep {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the clock's milliseconds count from.
    epoch: Instant,
    period: Duration,
    shards: [Mutex<Vec<Arc<Outbox>>>; SHARDS],
    next_shard: AtomicUsize,
    started: AtomicBool,
    shutdown: CancellationToken,
}

impl Sweep {
    /// A timer sweeping every `period`; at `shutdown`, every registered connection is woken.
    pub fn new(period: Duration, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                period: period.clamp(Duration::from_millis(5), Duration::from_secs(1)),
                shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
                next_shard: AtomicUsize::new(0),
                started: AtomicBool::new(false),
                shutdown,
            }),
        }
    }

    /// The period for timings `shortest` apart: a tenth of it, so a deadline is at most 10 %
    /// late.
    pub fn period_for(shortest: Duration) -> Duration {
        shortest / 10
    }

    /// Milliseconds on this timer's clock (Tokio's, so tests can pause it).
    pub fn now(&self) -> u64 {
        self.inner.now()
    }

    /// `d` from now on this timer's clock.
    pub fn after(&self, d: Duration) -> u64 {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.now().saturating_add(ms).min(u64::MAX - 1)
    }

    /// Starts sweeping `outbox`. The first call starts the sweeping task (on the current Tokio
    /// runtime); it ends when the hub and every connection are gone, and is started again by
    /// the next registration if its runtime went away first.
    pub fn register(&self, outbox: Arc<Outbox>) {
        let i = self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS;
        self.inner.shards[i].lock().push(outbox);
        if !self.inner.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(Arc::downgrade(&self.inner)));
        }
    }

    /// How many outboxes are registered (connections, and ended ones not yet swept away).
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether no outbox is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Milliseconds since `epoch` (never [`u64::MAX`], which means "not armed").
    fn now(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.epoch)
                .as_millis(),
        )
        .unwrap_or(u64::MAX - 1)
    }

    /// Wakes the connections due by `now` (every one with `all`); forgets ended ones.
    fn sweep(&self, now: u64, all: bool) {
        for shard in &self.shards {
            let mut due = Vec::new();
            {
                let mut list = shard.lock();
                list.retain(|o| {
                    if Arc::strong_count(o) == 1 {
                        return false;
                    }
                    if all || o.due_by(now) {
                        due.push(o.clone());
                    }
                    true
                });
                let len = list.len();
                if list.capacity() > 64 && len < list.capacity() / 4 {
                    list.shrink_to(len * 2);
                }
            }
            // Woken outside the shard's lock.
            for o in due {
                o.wake_task();
            }
        }
    }
}

/// Marks the sweeping task gone when it ends or its runtime drops it.
struct Running(Weak<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.started.store(false, Ordering::Release);
        }
    }
}

async fn run(inner: Weak<Inner>) {
    let _running = Running(inner.clone());
    let Some((period, shutdown)) = inner.upgrade().map(|i| (i.period, i.shutdown.clone())) else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown_seen = false;
    loop {
        let all = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.cancelled(), if !shutdown_seen => {
                shutdown_seen = true;
                true
            }
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.sweep(inner.now(), all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};

    #[tokio::test(start_paused = true)]
    async fn a_due_outbox_wakes_its_task_once_and_ended_ones_are_forgotten() {
        let sweep = Sweep::new(Duration::from_millis(10), CancellationToken::new());
        let o = Arc::new(Outbox::new(4));
        sweep.register(o.clone());
        let at = sweep.after(Duration::from_millis(100));
        o.set_due(at);
        let woken = AtomicUsize::new(0);
        {
            let mut fut = std::pin::pin!(std::future::poll_fn(|cx: &mut Context<'_>| {
                woken.fetch_add(1, Ordering::Relaxed);
                if o.fired() {
                    Poll::Ready(())
                } else {
                    o.register(cx.waker());
                    Poll::Pending
                }
            }));
            let start = Instant::now();
            tokio::time::timeout(Duration::from_secs(5), &mut fut)
                .await
                .expect("the timer fires");
            let late = start.elapsed();
            assert!(late >= Duration::from_millis(100), "never early: {late:?}");
            assert!(
                late <= Duration::from_millis(120),
                "at most a period late: {late:?}"
            );
        }
        assert_eq!(woken.load(Ordering::Relaxed), 2, "one wake-up");
        drop(o);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(sweep.is_empty(), "the ended connection's outbox is let go");
    }

    #[test]
    fn a_sweep_outlives_the_runtime_that_started_it() {
        let sweep = Sweep::new(Duration::from_millis(5), CancellationToken::new());
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let o = Arc::new(Outbox::new(4));
                sweep.register(o.clone());
                let at = sweep.after(Duration::from_millis(20));
                o.set_due(at);
                tokio::time::timeout(
                    Duration::from_secs(5),
                    std::future::poll_fn(|cx: &mut Context<'_>| {
                        o.register(cx.waker());
                        if o.fired() {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    }),
                )
                .await
                .expect("the timer fires on this runtime too");
            });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_wakes_every_connection() {
        let token = CancellationToken::new();
        let sweep = Sweep::new(Duration::from_secs(1), token.clone());
        let o = Arc::new(Outbox::new(4));
        sweep.register(o.clone());
        let waker_task = {
            let o = o.clone();
            let token = token.clone();
            tokio::spawn(std::future::poll_fn(move |cx: &mut Context<'_>| {
                o.register(cx.waker());
                if token.is_cancelled() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }))
        };
        tokio::task::yield_now().await;
        token.cancel();
        tokio::time::timeout(Duration::from_millis(100), waker_task)
            .await
            .expect("woken at shutdown, not at the next period")
            .expect("task");
    }
}
