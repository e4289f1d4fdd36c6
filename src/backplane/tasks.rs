//! The node's three tasks: the subscriber (bus to hub, the engine's own), the publisher (hub to
//! engine, in order, batched) and the entry keeper (connection entries and heartbeat).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Cluster, EntryChange, Handler, Outgoing};

/// Starts the node's three tasks: the subscriber (bus → hub), the publisher (hub → engine), the
/// entries keeper (connection entries and heartbeat). Each ends when the hub is dropped.
pub(super) fn spawn_tasks(
    handler: Arc<dyn Handler>,
    cluster: Arc<Cluster>,
    out: mpsc::Receiver<Outgoing>,
    entries: mpsc::Receiver<EntryChange>,
) {
    let resync = cluster.resync.clone();
    let subscriber =
        cluster
            .engine
            .clone()
            .subscriber(handler.clone(), cluster.clone(), resync.clone());
    tokio::spawn(subscriber);
    tokio::spawn(publisher(handler.clone(), cluster.clone(), out));
    tokio::spawn(keeper(handler, cluster, entries, resync));
}

/// Entry changes waiting for the keeper at most (past it: a full rewrite).
pub(super) const ENTRY_QUEUE: usize = 4096;

/// Backoff between reconnection attempts: 100 ms doubling to 5 s, with jitter.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(6)).min(5000);
    let jitter = (uuid::Uuid::new_v4().as_u128() as u64) % (base / 2 + 1);
    Duration::from_millis(base - jitter)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn publisher(h: Arc<dyn Handler>, cluster: Arc<Cluster>, mut out: mpsc::Receiver<Outgoing>) {
    let mut batch = Vec::with_capacity(256);
    while let Some(first) = out.recv().await {
        batch.push(first);
        while batch.len() < 256 {
            match out.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        if !h.alive() {
            return;
        }
        let sent = if cluster.accepts_publications() {
            match cluster
                .engine()
                .publish_batch(&batch, cluster.history)
                .await
            {
                Ok(positions) => {
                    cluster.publishing.store(true, Ordering::Release);
                    Some(positions)
                }
                Err(e) => {
                    tracing::warn!(error = %e, n = batch.len(), "backplane publish failed; delivering locally only");
                    cluster.publishing.store(false, Ordering::Release);
                    h.event("publish_failed");
                    None
                }
            }
        } else {
            None
        };
        match sent {
            Some(positions) => {
                for (o, pos) in batch
                    .drain(..)
                    .zip(positions.into_iter().chain(std::iter::repeat(None)))
                {
                    if let Some(reply) = o.reply {
                        let _ = reply.send(pos);
                    }
                }
            }
            None => {
                for o in batch.drain(..) {
                    // A publication whose sender retries elsewhere is not delivered here:
                    // dropping its reply tells it so.
                    if o.local_fallback {
                        h.deliver_local_only(&o.publication);
                        if let Some(reply) = o.reply {
                            let _ = reply.send(None);
                        }
                    }
                }
            }
        }
    }
}

async fn keeper(
    h: Arc<dyn Handler>,
    cluster: Arc<Cluster>,
    mut changes: mpsc::Receiver<EntryChange>,
    resync: Arc<tokio::sync::Notify>,
) {
    let ttl = cluster.config().node_ttl;
    // NATS keys expire from their last write, so a heartbeat rewrites them all: three times
    // per TTL is enough and spares JetStream the churn of a short heartbeat.
    let rewrites = cluster.engine().entries_expire_per_write();
    let period = if rewrites {
        (ttl / 3).max(cluster.config().heartbeat)
    } else {
        cluster.config().heartbeat
    };
    let mut beat = tokio::time::interval(period);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stale = true;
    let mut pending = Vec::new();
    loop {
        tokio::select! {
            c = changes.recv() => match c {
                Some(c) => {
                    pending.push(c);
                    while let Ok(c) = changes.try_recv() {
                        pending.push(c);
                    }
                }
                None => return,
            },
            _ = beat.tick() => stale |= rewrites,
            _ = resync.notified() => stale = true,
        }
        if !h.alive() {
            return;
        }
        if !cluster.is_up() {
            // Whatever changed meanwhile is rewritten in full once the engine is back.
            stale = true;
            pending.clear();
            continue;
        }
        let engine = cluster.engine();
        let r = if stale {
            pending.clear();
            let all = h.local_entries();
            engine.rewrite_entries(all, ttl).await
        } else {
            let r = engine.apply(&pending, ttl).await;
            pending.clear();
            r
        };
        match r {
            Ok(()) => stale = false,
            Err(e) => {
                tracing::debug!(error = %e, "backplane entries not written");
                stale = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for a in 0..20 {
            let d = backoff(a).as_millis() as u64;
            let base = (100u64 << a.min(6)).min(5000);
            assert!(d <= base && d >= base / 2, "{a}: {d}");
        }
    }
}
