//! An in-process backplane: several hubs in one process share a named bus (`local://name`).
//!
//! It has the engines' semantics (one numbering per stream, gap-free offsets, shared history,
//! connection entries, every node getting every message once) without a server, so cluster
//! scenarios run in `cargo test` in seconds; and an application can run several hubs in one
//! process (one per core, say) that behave as one. Nothing leaves the process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::{
    now_ms, BackplaneError, BusMessage, Cluster, EntryChange, Outgoing, Stored, StreamName,
};
use crate::history::HistoryConfig;
use crate::wire::Publication;

/// Messages a slow node may fall behind before it counts as disconnected (it then fills the
/// gap from the shared history, like a node of a real engine).
const BUS_CAPACITY: usize = 65_536;

/// Mail between nodes a slow node may fall behind before it loses some (as pub/sub would).
const MAIL_CAPACITY: usize = 4096;

/// One message on the bus: who published it, its position, the publication.
type Carried = Arc<(Arc<str>, Option<crate::history::Position>, Publication)>;

#[derive(Default)]
struct Stream {
    epoch: String,
    top: u64,
    kept: VecDeque<(u64, u64, Publication)>,
}

/// One named bus, shared by the hubs that use it.
struct Bus {
    streams: Mutex<HashMap<String, Stream>>,
    entries: Mutex<HashMap<Arc<str>, HashMap<String, String>>>,
    revoked: Mutex<HashMap<String, u64>>,
    tx: broadcast::Sender<Carried>,
    /// Mail between nodes: to whom, what.
    mail: broadcast::Sender<(Arc<str>, bytes::Bytes)>,
    /// Out of service (see [`set_down`]): every operation fails, subscribers disconnect.
    down: std::sync::atomic::AtomicBool,
}

/// Takes the buses named `name` (whatever their key prefix) out of service, or puts them
/// back: what a real engine's outage is to the nodes. Going down loses what the bus kept
/// (shared history, positions, connection entries), as a Redis without persistence would;
/// the nodes notice within a quarter of a second, serve their own connections meanwhile, and
/// reconnect by themselves. For tests and for rehearsing outages in an embedding application.
pub fn set_down(name: &str, down: bool) {
    let all = BUSES.lock();
    let suffix = format!("/{name}");
    for bus in all
        .iter()
        .flat_map(|m| m.iter())
        .filter(|(k, _)| *k == name || k.ends_with(&suffix))
        .filter_map(|(_, w)| w.upgrade())
    {
        if down {
            bus.streams.lock().clear();
            bus.entries.lock().clear();
            bus.revoked.lock().clear();
        }
        bus.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The buses of this process, by name (kept while a hub uses them).
static BUSES: Mutex<Option<HashMap<String, Weak<Bus>>>> = Mutex::new(None);

fn bus(name: &str) -> Arc<Bus> {
    let mut all = BUSES.lock();
    let all = all.get_or_insert_with(HashMap::new);
    if let Some(b) = all.get(name).and_then(Weak::upgrade) {
        return b;
    }
    let b = Arc::new(Bus {
        streams: Mutex::new(HashMap::new()),
        entries: Mutex::new(HashMap::new()),
        revoked: Mutex::new(HashMap::new()),
        tx: broadcast::channel(BUS_CAPACITY).0,
        mail: broadcast::channel(MAIL_CAPACITY).0,
        down: std::sync::atomic::AtomicBool::new(false),
    });
    all.retain(|_, w| w.strong_count() > 0);
    all.insert(name.to_owned(), Arc::downgrade(&b));
    b
}

fn stream_id(stream: StreamName<'_>) -> String {
    match stream {
        StreamName::All => "all".into(),
        StreamName::Group(g) => format!("g:{g}"),
    }
}

fn new_epoch() -> String {
    crate::id::ConnId::random().to_string()[..12].to_owned()
}

/// This node's side of a local bus.
pub struct LocalEngine {
    bus: Arc<Bus>,
    node: Arc<str>,
    history: HistoryConfig,
}

impl LocalEngine {
    fn is_down(&self) -> bool {
        self.bus.down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The bus is out of service: every operation fails as an unreachable engine's would.
    fn up(&self) -> Result<(), BackplaneError> {
        if self.is_down() {
            Err(BackplaneError("the in-process bus is down".into()))
        } else {
            Ok(())
        }
    }

    pub(crate) fn new(name: &str, node: &Arc<str>, history: HistoryConfig) -> Self {
        Self {
            bus: bus(name),
            node: node.clone(),
            history,
        }
    }

    pub(crate) fn meta(&self, stream: StreamName<'_>) -> (String, u64) {
        let mut streams = self.bus.streams.lock();
        let s = streams.entry(stream_id(stream)).or_insert_with(|| Stream {
            epoch: new_epoch(),
            ..Stream::default()
        });
        (s.epoch.clone(), s.top)
    }

    pub(crate) fn range(&self, stream: StreamName<'_>, from: u64, to: u64) -> Vec<Stored> {
        let streams = self.bus.streams.lock();
        let Some(s) = streams.get(&stream_id(stream)) else {
            return Vec::new();
        };
        s.kept
            .iter()
            .filter(|(o, _, _)| (from..=to).contains(o))
            .map(|(offset, at_ms, p)| Stored {
                offset: *offset,
                at_ms: *at_ms,
                publication: p.clone(),
            })
            .collect()
    }

    pub(crate) fn entries(&self) -> Vec<String> {
        self.bus
            .entries
            .lock()
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    pub(crate) fn entry(&self, id: &str) -> Option<String> {
        self.bus
            .entries
            .lock()
            .values()
            .find_map(|m| m.get(id).cloned())
    }

    pub(crate) fn locate(&self, id: &str) -> Option<String> {
        self.bus
            .entries
            .lock()
            .iter()
            .find(|(_, m)| m.contains_key(id))
            .map(|(n, _)| n.to_string())
    }

    pub(crate) fn leave(&self) {
        self.bus.entries.lock().remove(&self.node);
    }

    pub(crate) fn rewrite_entries(&self, entries: Vec<(String, String)>) {
        self.bus
            .entries
            .lock()
            .insert(self.node.clone(), entries.into_iter().collect());
    }

    pub(crate) fn apply(&self, changes: &[EntryChange]) {
        let mut all = self.bus.entries.lock();
        let mine = all.entry(self.node.clone()).or_default();
        for c in changes {
            match c {
                EntryChange::Put { id, json } => {
                    mine.insert(id.clone(), json.clone());
                }
                EntryChange::Remove { id } => {
                    mine.remove(id);
                }
            }
        }
    }

    /// Numbers the batch's stream publications (each stream under the bus's lock, so offsets
    /// are gap-free whoever publishes) and puts everything on the bus, in order.
    pub(crate) fn publish_batch(
        &self,
        batch: &[Outgoing],
    ) -> Vec<Option<crate::history::Position>> {
        let keep_ms = self.history.ttl.as_millis() as u64;
        let now = now_ms();
        batch
            .iter()
            .map(|o| {
                let position = o.publication.stream().map(|stream| {
                    let mut streams = self.bus.streams.lock();
                    let s = streams.entry(stream_id(stream)).or_insert_with(|| Stream {
                        epoch: new_epoch(),
                        ..Stream::default()
                    });
                    s.top += 1;
                    s.kept.push_back((s.top, now, o.publication.clone()));
                    while s.kept.len() > self.history.size
                        || s.kept
                            .front()
                            .is_some_and(|(_, at, _)| now.saturating_sub(*at) > keep_ms)
                    {
                        s.kept.pop_front();
                    }
                    let pos = crate::history::Position::new(s.epoch.as_str(), s.top);
                    // Sent under the stream's lock: nodes see a stream's offsets in order.
                    let _ = self.bus.tx.send(Arc::new((
                        self.node.clone(),
                        Some(pos.clone()),
                        o.publication.clone(),
                    )));
                    pos
                });
                if position.is_none() {
                    let _ = self.bus.tx.send(Arc::new((
                        self.node.clone(),
                        None,
                        o.publication.clone(),
                    )));
                }
                position
            })
            .collect()
    }
}

/// Carries the bus to the hub. A node that falls more than the bus's capacity behind counts as
/// disconnected for a moment and resumes (filling what it missed from the shared history).
async fn subscriber(
    engine: Arc<LocalEngine>,
    h: Arc<dyn super::Handler>,
    cluster: Arc<Cluster>,
    resync: Arc<tokio::sync::Notify>,
) -> Result<(), BackplaneError> {
    loop {
        while engine.is_down() {
            if !h.alive() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut rx = engine.bus.tx.subscribe();
        let mut mail = engine.bus.mail.subscribe();
        cluster.engine_changed(h.as_ref(), true);
        resync.notify_one();
        loop {
            // Woken now and then to notice a hub that is gone (its entries go with it), or a
            // bus taken down.
            let received = tokio::time::timeout(std::time::Duration::from_millis(250), async {
                loop {
                    tokio::select! {
                        m = rx.recv() => return m,
                        m = mail.recv() => match m {
                            Ok((to, m)) if to == engine.node => cluster.on_mail(&h, m),
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => {
                                return Err(broadcast::error::RecvError::Closed)
                            }
                        },
                    }
                }
            });
            let first = match received.await {
                _ if engine.is_down() => break,
                Err(_) if h.alive() => continue,
                Err(_) => {
                    engine.leave();
                    return Ok(());
                }
                Ok(Ok(m)) => m,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(()),
            };
            if !h.alive() {
                engine.leave();
                return Ok(());
            }
            let mut batch = vec![carried(&first)];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(m) => batch.push(carried(&m)),
                    Err(_) => break,
                }
            }
            h.on_bus(batch).await;
        }
        cluster.engine_changed(h.as_ref(), false);
    }
}

fn carried(m: &Carried) -> BusMessage {
    let (node, position, publication) = &**m;
    BusMessage {
        node: node.to_string(),
        epoch: position.as_ref().map(|p| p.epoch.to_string()),
        offset: position.as_ref().map(|p| p.offset),
        publication: publication.clone(),
    }
}

impl super::Engine for LocalEngine {
    fn meta<'a>(
        &'a self,
        stream: StreamName<'a>,
        _keep: std::time::Duration,
    ) -> super::EngineFuture<'a, (String, u64)> {
        let r = self.up().map(|()| LocalEngine::meta(self, stream));
        Box::pin(async move { r })
    }

    fn range<'a>(
        &'a self,
        stream: StreamName<'a>,
        from: u64,
        to: u64,
    ) -> super::EngineFuture<'a, Vec<Stored>> {
        let r = self
            .up()
            .map(|()| LocalEngine::range(self, stream, from, to));
        Box::pin(async move { r })
    }

    fn entries(&self, _ttl: std::time::Duration) -> super::EngineFuture<'_, Vec<String>> {
        let r = self.up().map(|()| LocalEngine::entries(self));
        Box::pin(async move { r })
    }

    fn locate<'a>(
        &'a self,
        id: &'a str,
        _ttl: std::time::Duration,
    ) -> super::EngineFuture<'a, Option<String>> {
        let r = self.up().map(|()| LocalEngine::locate(self, id));
        Box::pin(async move { r })
    }

    fn entry<'a>(
        &'a self,
        id: &'a str,
        _ttl: std::time::Duration,
    ) -> super::EngineFuture<'a, Option<String>> {
        let r = self.up().map(|()| LocalEngine::entry(self, id));
        Box::pin(async move { r })
    }

    fn leave(&self) -> super::EngineFuture<'_, ()> {
        let r = self.up().map(|()| LocalEngine::leave(self));
        Box::pin(async move { r })
    }

    fn revoke<'a>(&'a self, user: &'a str, before: u64) -> super::EngineFuture<'a, ()> {
        let r = self.up().map(|()| {
            let mut all = self.bus.revoked.lock();
            let at = all.entry(user.to_owned()).or_insert(0);
            *at = (*at).max(before);
        });
        Box::pin(async move { r })
    }

    fn revocations(&self) -> super::EngineFuture<'_, Vec<(String, u64)>> {
        let r = self.up().map(|()| {
            self.bus
                .revoked
                .lock()
                .iter()
                .map(|(u, t)| (u.clone(), *t))
                .collect()
        });
        Box::pin(async move { r })
    }

    fn publish_batch<'a>(
        &'a self,
        batch: &'a [super::Outgoing],
        _history: HistoryConfig,
    ) -> super::EngineFuture<'a, Vec<Option<crate::history::Position>>> {
        let r = self.up().map(|()| LocalEngine::publish_batch(self, batch));
        Box::pin(async move { r })
    }

    fn rewrite_entries(
        &self,
        entries: Vec<(String, String)>,
        _ttl: std::time::Duration,
    ) -> super::EngineFuture<'_, ()> {
        let r = self
            .up()
            .map(|()| LocalEngine::rewrite_entries(self, entries));
        Box::pin(async move { r })
    }

    fn apply<'a>(
        &'a self,
        changes: &'a [EntryChange],
        _ttl: std::time::Duration,
    ) -> super::EngineFuture<'a, ()> {
        let r = self.up().map(|()| LocalEngine::apply(self, changes));
        Box::pin(async move { r })
    }

    fn send_to<'a>(&'a self, node: &'a str, mail: bytes::Bytes) -> super::EngineFuture<'a, ()> {
        let r = self.up().map(|()| {
            let _ = self.bus.mail.send((Arc::from(node), mail));
        });
        Box::pin(async move { r })
    }

    fn subscriber(
        self: Arc<Self>,
        h: Arc<dyn super::Handler>,
        cluster: Arc<Cluster>,
        resync: Arc<tokio::sync::Notify>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let _ = subscriber(self, h, cluster, resync).await;
        })
    }
}
