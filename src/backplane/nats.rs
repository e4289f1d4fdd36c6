//! The NATS backplane: core subjects for what is not kept (events, direct and user sends),
//! JetStream for the streams (offsets, history, ordered delivery), a key-value bucket with a
//! TTL for the cluster-wide connection listing. Needs a server with JetStream (`nats-server
//! -js`).
//!
//! Names (under the prefix `P`, default `wshub`):
//! - `P.bus`: the core subject every node subscribes to.
//! - `P.mail.<node in hex>`: a node's mailbox, a core subject only that node subscribes to
//!   (requests relayed between nodes, and their answers).
//! - `P.h.all` and `P.h.g.<group in hex>`: the streams' subjects, stored in the JetStream
//!   stream `P_HISTORY` (at most `--history-size` messages per subject, kept an hour or
//!   `--history-ttl`, whichever is longer; older ones are filtered out on read).
//! - the key-value bucket `P_connections`: key `<node>.<connection id>` → the REST
//!   `Connection` JSON, expiring `--node-ttl` after its last write.
//!
//! Offsets: each stream publication carries `Wshub-Offset` = the subject's previous offset + 1
//! and is published with `Nats-Expected-Last-Subject-Sequence`, so JetStream stores it only if
//! nobody published to the subject in between (else the publisher reads the new last message
//! and tries again): offsets are gap-free and in storage order. Every node reads the stream
//! through an ordered consumer, so all nodes deliver in that order; after a disconnection the
//! consumer resumes after the last sequence the node saw, so nothing stored meanwhile is lost.
//! A stream's epoch is derived from the JetStream stream's creation time: it changes when the
//! stream (its history) is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{
    backoff, BackplaneError, BusMessage, Cluster, EntryChange, Outgoing, Publication, Stored,
    StreamName,
};
use crate::history::HistoryConfig;

const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const OFFSET: &str = "Wshub-Offset";
const NODE: &str = "Wshub-Node";

fn err(e: impl std::fmt::Display) -> BackplaneError {
    BackplaneError(e.to_string())
}

/// The stream of a key-value bucket, made by hand as the bucket API would (its own create asks
/// for options nats-server 2.9 does not answer in a form the client reads): one value per key.
fn kv_config(bucket: &str) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Creates (or finds) a key-value bucket's stream as `config` says, and opens the bucket.
async fn kv_bucket(
    js: &jetstream::Context,
    config: stream::Config,
    what: &str,
) -> Result<(stream::Stream, kv::Store), BackplaneError> {
    let bucket = config
        .name
        .strip_prefix("KV_")
        .unwrap_or(&config.name)
        .to_owned();
    let created = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| err(format!("creating the {what} bucket: {e}")))?;
    let store = js
        .get_key_value(&bucket)
        .await
        .map_err(|e| err(format!("opening the {what} bucket: {e}")))?;
    Ok((created, store))
}

/// What a connected node has set up.
struct Ready {
    js: jetstream::Context,
    stream: stream::Stream,
    kv: kv::Store,
    kv_stream: stream::Stream,
    /// Revocations (`<user in hex>` → Unix seconds): kept on file, without expiry.
    revoked: kv::Store,
    bucket: String,
    epoch: String,
}

/// The NATS side of one node.
pub struct NatsEngine {
    url: String,
    prefix: String,
    node: Arc<str>,
    history: HistoryConfig,
    ttl: Duration,
    client: Mutex<Option<async_nats::Client>>,
    ready: Mutex<Option<Arc<Ready>>>,
    /// Per subject: the last (stream sequence, offset) this node published or saw.
    last: Mutex<HashMap<String, (u64, u64)>>,
}

impl NatsEngine {
    pub(crate) fn new(
        url: &str,
        prefix: &str,
        node: &Arc<str>,
        history: HistoryConfig,
        ttl: Duration,
    ) -> Result<Self, super::AttachError> {
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(super::AttachError::BadPrefix(prefix.to_owned()));
        }
        Ok(Self {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            node: node.clone(),
            history,
            ttl,
            client: Mutex::new(None),
            ready: Mutex::new(None),
            last: Mutex::new(HashMap::new()),
        })
    }

    fn bus(&self) -> String {
        format!("{}.bus", self.prefix)
    }

    fn mailbox(&self, node: &str) -> String {
        let hex: String = node.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}.mail.{hex}", self.prefix)
    }

    fn subject(&self, stream: StreamName<'_>) -> String {
        match stream {
            StreamName::All => format!("{}.h.all", self.prefix),
            StreamName::Group(g) => {
                let hex: String = g.bytes().map(|b| format!("{b:02x}")).collect();
                format!("{}.h.g.{hex}", self.prefix)
            }
        }
    }

    fn key(&self, id: &str) -> String {
        let node: String = self
            .node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{node}.{id}")
    }

    fn client(&self) -> Result<async_nats::Client, BackplaneError> {
        self.client
            .lock()
            .clone()
            .ok_or_else(|| err("the NATS backplane is not connected"))
    }

    fn ready(&self) -> Result<Arc<Ready>, BackplaneError> {
        self.ready
            .lock()
            .clone()
            .ok_or_else(|| BackplaneError("the NATS backplane is not connected".into()))
    }

    /// Creates (or finds) the history stream and the connections bucket.
    async fn setup(&self, client: &async_nats::Client) -> Result<Ready, BackplaneError> {
        let js = jetstream::new(client.clone());
        let name = format!("{}_HISTORY", self.prefix);
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}.h.>", self.prefix)],
                max_messages_per_subject: self.history.size.max(1) as i64,
                max_age: self.history.ttl.max(Duration::from_secs(3600)),
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| err(format!("creating stream {name}: {e}")))?;
        let created = stream
            .info()
            .await
            .map_err(|e| err(format!("stream info: {e}")))?
            .created;
        let epoch = format!(
            "{:012x}",
            (created.unix_timestamp_nanos() as u64) & 0xffff_ffff_ffff
        );
        let bucket = format!("{}_connections", self.prefix);
        let connections = stream::Config {
            max_age: self.ttl,
            storage: stream::StorageType::Memory,
            ..kv_config(&bucket)
        };
        let (kv_stream, kv) = kv_bucket(&js, connections, "connections").await?;
        let revocations = stream::Config {
            storage: stream::StorageType::File,
            ..kv_config(&format!("{}_revoked", self.prefix))
        };
        let (_, revoked) = kv_bucket(&js, revocations, "revocations").await?;
        Ok(Ready {
            js,
            stream,
            kv,
            kv_stream,
            revoked,
            bucket,
            epoch,
        })
    }

    /// The last (sequence, offset) on a subject, from JetStream.
    async fn last_of(&self, r: &Ready, subject: &str) -> Result<(u64, u64), BackplaneError> {
        match r.stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok((m.sequence, offset_of(&m.headers).unwrap_or(0))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok((0, 0)),
            Err(e) => Err(err(e)),
        }
    }

    pub(crate) async fn meta(
        &self,
        stream: StreamName<'_>,
    ) -> Result<(String, u64), BackplaneError> {
        let r = self.ready()?;
        let (_, offset) =
            tokio::time::timeout(CALL_TIMEOUT, self.last_of(&r, &self.subject(stream)))
                .await
                .map_err(err)??;
        Ok((r.epoch.clone(), offset))
    }

    pub(crate) async fn range(
        &self,
        stream: StreamName<'_>,
        from: u64,
        to: u64,
    ) -> Result<Vec<Stored>, BackplaneError> {
        let r = self.ready()?;
        let subject = self.subject(stream);
        let client = self.client()?;
        let consumer = r
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: client.new_inbox(),
                filter_subject: subject,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        let mut messages = consumer.messages().await.map_err(err)?;
        let mut out = Vec::new();
        // At most `--history-size` messages per subject: read them all, keep the range.
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(300), messages.next()).await
        {
            let Some(offset) = m.message.headers.as_ref().and_then(offset_of) else {
                continue;
            };
            let at_ms = m
                .info()
                .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as u64)
                .unwrap_or(0);
            if (from..=to).contains(&offset) {
                if let Ok(publication) = serde_json::from_slice(&m.message.payload) {
                    out.push(Stored {
                        offset,
                        at_ms,
                        publication,
                    });
                }
            }
            if offset >= to || m.info().is_ok_and(|i| i.pending == 0) {
                break;
            }
        }
        Ok(out)
    }

    pub(crate) async fn entries(&self) -> Result<Vec<String>, BackplaneError> {
        Ok(self
            .all_entries()
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    async fn all_entries(&self) -> Result<Vec<(String, String)>, BackplaneError> {
        let r = self.ready()?;
        // The last value of every key, read in one pass over the bucket's stream (the bucket's
        // own `keys()` did not always finish against nats-server 2.9).
        let client = self.client()?;
        let prefix = format!("$KV.{}.", r.bucket);
        tokio::time::timeout(2 * CALL_TIMEOUT, async {
            let consumer = r
                .kv_stream
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: client.new_inbox(),
                    filter_subject: format!("{prefix}>"),
                    deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(err)?;
            let mut left = consumer.cached_info().num_pending;
            let mut messages = consumer.messages().await.map_err(err)?;
            let mut out = std::collections::BTreeMap::new();
            while left > 0 {
                // Keys rewritten meanwhile replace their old message, which may then never come:
                // a short silence ends the pass.
                let next = tokio::time::timeout(Duration::from_millis(200), messages.next());
                let Ok(Some(m)) = next.await else {
                    break;
                };
                let m = m.map_err(err)?;
                left = m.info().map_or(0, |i| i.pending);
                let deleted = m
                    .message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some();
                if deleted {
                    continue;
                }
                let key = m
                    .message
                    .subject
                    .as_str()
                    .strip_prefix(&prefix)
                    .unwrap_or_default();
                if let Ok(v) = String::from_utf8(m.message.payload.to_vec()) {
                    // A consumer that restarts delivers some keys again: last one wins.
                    out.insert(key.to_owned(), v);
                }
            }
            Ok(out.into_iter().collect())
        })
        .await
        .map_err(err)?
    }

    pub(crate) async fn locate(&self, id: &str) -> Result<Option<String>, BackplaneError> {
        let suffix = format!(".{id}");
        Ok(self
            .all_entries()
            .await?
            .into_iter()
            .find(|(k, _)| k.ends_with(&suffix))
            .and_then(|(k, _)| k.split('.').next().map(str::to_owned)))
    }

    pub(crate) async fn entry(&self, id: &str) -> Result<Option<String>, BackplaneError> {
        let suffix = format!(".{id}");
        Ok(self
            .all_entries()
            .await?
            .into_iter()
            .find(|(k, _)| k.ends_with(&suffix))
            .map(|(_, v)| v))
    }

    pub(crate) async fn leave(&self) -> Result<(), BackplaneError> {
        let r = self.ready()?;
        let mine = format!("{}.", self.key("").trim_end_matches('.'));
        for (k, _) in self.all_entries().await? {
            if k.starts_with(&mine) {
                let _ = r.kv.delete(&k).await;
            }
        }
        Ok(())
    }

    /// Rewrites this node's entries (every heartbeat: a key lives `--node-ttl` after its last
    /// write) and deletes its keys for connections it no longer has.
    pub(crate) async fn rewrite_entries(
        &self,
        entries: Vec<(String, String)>,
    ) -> Result<(), BackplaneError> {
        let r = self.ready()?;
        let keep: std::collections::HashSet<String> =
            entries.iter().map(|(id, _)| self.key(id)).collect();
        let puts = entries
            .into_iter()
            .map(|(id, json)| r.kv.put(self.key(&id), Bytes::from(json)));
        for res in futures_util::future::join_all(puts).await {
            res.map_err(err)?;
        }
        let mine = format!("{}.", self.key("").trim_end_matches('.'));
        for (k, _) in self.all_entries().await? {
            if k.starts_with(&mine) && !keep.contains(&k) {
                r.kv.delete(&k).await.map_err(err)?;
            }
        }
        Ok(())
    }

    pub(crate) async fn apply(&self, changes: &[EntryChange]) -> Result<(), BackplaneError> {
        let r = self.ready()?;
        for c in changes {
            match c {
                EntryChange::Put { id, json, .. } => {
                    r.kv.put(self.key(id), Bytes::from(json.clone()))
                        .await
                        .map_err(err)?;
                }
                EntryChange::Remove { id } => {
                    r.kv.delete(self.key(id)).await.map_err(err)?;
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn publish_batch(
        &self,
        batch: &[Outgoing],
    ) -> Result<Vec<Option<crate::history::Position>>, BackplaneError> {
        let r = self.ready()?;
        let client = self.client()?;
        let mut out = Vec::with_capacity(batch.len());
        for o in batch {
            let payload = serde_json::to_vec(&o.publication).map_err(err)?;
            match o.publication.stream() {
                None => {
                    let msg = format!(
                        "{{\"n\":\"{}\",\"p\":{}}}",
                        self.node,
                        String::from_utf8_lossy(&payload)
                    );
                    client
                        .publish(self.bus(), Bytes::from(msg))
                        .await
                        .map_err(err)?;
                    out.push(None);
                }
                Some(stream) => {
                    let subject = self.subject(stream);
                    let offset = self.publish_numbered(&r, &subject, payload).await?;
                    out.push(Some(crate::history::Position::new(
                        r.epoch.as_str(),
                        offset,
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Publishes with the next offset of `subject`, retrying when another node got there first.
    async fn publish_numbered(
        &self,
        r: &Ready,
        subject: &str,
        payload: Vec<u8>,
    ) -> Result<u64, BackplaneError> {
        let cached = self.last.lock().get(subject).copied();
        let (mut seq, mut offset) = match cached {
            Some(last) => last,
            None => self.last_of(r, subject).await?,
        };
        let payload = Bytes::from(payload);
        for _ in 0..50 {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .header(OFFSET, (offset + 1).to_string().as_str())
                .header(NODE, &*self.node)
                .expected_last_subject_sequence(seq);
            let ack = tokio::time::timeout(CALL_TIMEOUT, async {
                r.js.send_publish(subject.to_owned(), publish).await?.await
            })
            .await
            .map_err(err)?;
            match ack {
                Ok(ack) => {
                    self.last
                        .lock()
                        .insert(subject.to_owned(), (ack.sequence, offset + 1));
                    return Ok(offset + 1);
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    (seq, offset) = self.last_of(r, subject).await?;
                }
                Err(e) => return Err(err(e)),
            }
        }
        Err(err("too much contention on one stream"))
    }
}

fn offset_of(headers: &async_nats::HeaderMap) -> Option<u64> {
    headers.get(OFFSET)?.as_str().parse().ok()
}

/// Connects, sets up, and carries messages from the bus and the streams to the hub; on a
/// disconnection, marks the node degraded and sets up again once NATS is back (the client
/// reconnects by itself), resuming the streams after the last message this node saw.
async fn subscriber(
    engine: Arc<NatsEngine>,
    h: Arc<dyn super::Handler>,
    cluster: Arc<Cluster>,
    resync: Arc<tokio::sync::Notify>,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(1))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| backoff(attempts.min(30) as u32))
        .event_callback(move |event| {
            let tx = events_tx.clone();
            async move {
                let _ = tx.send(event);
            }
        });
    let client = match options.connect(engine.url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the NATS backplane URL is unusable");
            return;
        }
    };
    *engine.client.lock() = Some(client.clone());
    let mut resume: Option<(String, u64)> = None; // (epoch, last stream sequence seen)
    let mut attempt = 0;
    loop {
        // Wait for a connection.
        while client.connection_state() != async_nats::connection::State::Connected {
            match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
                Ok(None) => return,
                _ => {
                    if !h.alive() {
                        return;
                    }
                }
            }
        }
        let ready = match tokio::time::timeout(CALL_TIMEOUT * 2, engine.setup(&client)).await {
            Ok(Ok(r)) => Arc::new(r),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "NATS backplane setup failed (is JetStream on?)");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        let deliver = match &resume {
            Some((epoch, seq)) if *epoch == ready.epoch => {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: seq + 1,
                }
            }
            _ => {
                engine.last.lock().clear();
                consumer::DeliverPolicy::New
            }
        };
        let started = async {
            let bus = client.subscribe(engine.bus()).await.map_err(err)?;
            let mail = client
                .subscribe(engine.mailbox(&engine.node))
                .await
                .map_err(err)?;
            let consumer = ready
                .stream
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: client.new_inbox(),
                    filter_subject: format!("{}.h.>", engine.prefix),
                    deliver_policy: deliver,
                    ..Default::default()
                })
                .await
                .map_err(err)?;
            let stream = consumer.messages().await.map_err(err)?;
            Ok::<_, BackplaneError>((bus, mail, stream))
        };
        let (mut bus, mut mail, mut stream) =
            match tokio::time::timeout(CALL_TIMEOUT, started).await {
                Ok(Ok(s)) => s,
                other => {
                    if let Ok(Err(e)) = other {
                        tracing::warn!(error = %e, "NATS backplane subscription failed");
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
        attempt = 0;
        let epoch = ready.epoch.clone();
        *engine.ready.lock() = Some(ready);
        if !h.alive() {
            return;
        }
        cluster.engine_changed(h.as_ref(), true);
        resync.notify_one();
        loop {
            // Everything already received (bus and streams) is delivered before one flush.
            let mut items = Vec::new();
            tokio::select! {
                m = bus.next() => match m {
                    Some(m) => items.push(Item::Bus(m)),
                    None => break,
                },
                m = stream.next() => match m {
                    Some(Ok(m)) => items.push(Item::Stream(Box::new(m))),
                    _ => break,
                },
                m = mail.next() => match m {
                    Some(m) => {
                        cluster.on_mail(&h, m.payload);
                        continue;
                    }
                    None => break,
                },
                e = events.recv() => match e {
                    Some(async_nats::Event::Disconnected) | Some(async_nats::Event::Closed) | None => break,
                    _ => continue,
                },
            }
            while items.len() < 256 {
                if let Some(Some(m)) = bus.next().now_or_never() {
                    items.push(Item::Bus(m));
                } else if let Some(Some(Ok(m))) = stream.next().now_or_never() {
                    items.push(Item::Stream(Box::new(m)));
                } else {
                    break;
                }
            }
            if !h.alive() {
                return;
            }
            let mut batch = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Item::Bus(m) => match serde_json::from_slice::<BusMessage>(&m.payload) {
                        Ok(b) => batch.push(b),
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable backplane message ignored")
                        }
                    },
                    Item::Stream(m) => {
                        let info = m.info().ok().map(|i| i.stream_sequence);
                        if let Some(seq) = info {
                            resume = Some((epoch.clone(), seq));
                        }
                        let headers = m.message.headers.as_ref();
                        let offset = headers.and_then(offset_of);
                        let node = headers
                            .and_then(|h| h.get(NODE))
                            .map(|v| v.as_str().to_owned())
                            .unwrap_or_default();
                        match serde_json::from_slice::<Publication>(&m.message.payload) {
                            Ok(publication) => {
                                if let (Some(o), Some(seq)) = (offset, info) {
                                    engine
                                        .last
                                        .lock()
                                        .insert(m.message.subject.to_string(), (seq, o));
                                }
                                let b = BusMessage {
                                    node,
                                    epoch: Some(epoch.clone()),
                                    offset,
                                    publication,
                                };
                                batch.push(b);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "unreadable stream message ignored")
                            }
                        }
                    }
                }
            }
            h.on_bus(batch).await;
        }
        *engine.ready.lock() = None;
        tracing::warn!("NATS backplane connection lost");
        if !h.alive() {
            return;
        }
        cluster.engine_changed(h.as_ref(), false);
    }
}

/// A message from either of the node's subscriptions.
enum Item {
    Bus(async_nats::Message),
    Stream(Box<jetstream::Message>),
}

impl super::Engine for NatsEngine {
    fn meta<'a>(
        &'a self,
        stream: StreamName<'a>,
        _keep: Duration,
    ) -> super::EngineFuture<'a, (String, u64)> {
        Box::pin(NatsEngine::meta(self, stream))
    }

    fn range<'a>(
        &'a self,
        stream: StreamName<'a>,
        from: u64,
        to: u64,
    ) -> super::EngineFuture<'a, Vec<Stored>> {
        Box::pin(NatsEngine::range(self, stream, from, to))
    }

    fn entries(&self, _ttl: Duration) -> super::EngineFuture<'_, Vec<String>> {
        Box::pin(NatsEngine::entries(self))
    }

    fn revoke<'a>(&'a self, user: &'a str, before: u64) -> super::EngineFuture<'a, ()> {
        Box::pin(async move {
            let r = self.ready()?;
            let key = hex::encode(user);
            let kept = r
                .revoked
                .get(&key)
                .await
                .map_err(err)?
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok());
            if kept.is_none_or(|k| k < before) {
                r.revoked
                    .put(key, Bytes::from(before.to_string()))
                    .await
                    .map_err(err)?;
            }
            Ok(())
        })
    }

    fn revocations(&self) -> super::EngineFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move {
            use futures_util::StreamExt as _;
            let r = self.ready()?;
            let mut keys = r.revoked.keys().await.map_err(err)?;
            let mut out = Vec::new();
            while let Some(k) = keys.next().await {
                let k = k.map_err(err)?;
                let Some(user) = hex::decode(&k).ok().and_then(|u| String::from_utf8(u).ok())
                else {
                    continue;
                };
                if let Some(v) = r.revoked.get(&k).await.map_err(err)? {
                    if let Some(t) = std::str::from_utf8(&v).ok().and_then(|t| t.parse().ok()) {
                        out.push((user, t));
                    }
                }
            }
            Ok(out)
        })
    }

    fn locate<'a>(
        &'a self,
        id: &'a str,
        _ttl: Duration,
    ) -> super::EngineFuture<'a, Option<String>> {
        Box::pin(NatsEngine::locate(self, id))
    }

    fn entry<'a>(&'a self, id: &'a str, _ttl: Duration) -> super::EngineFuture<'a, Option<String>> {
        Box::pin(NatsEngine::entry(self, id))
    }

    fn leave(&self) -> super::EngineFuture<'_, ()> {
        Box::pin(NatsEngine::leave(self))
    }

    fn publish_batch<'a>(
        &'a self,
        batch: &'a [super::Outgoing],
        _history: HistoryConfig,
    ) -> super::EngineFuture<'a, Vec<Option<crate::history::Position>>> {
        Box::pin(NatsEngine::publish_batch(self, batch))
    }

    fn rewrite_entries(
        &self,
        entries: Vec<(String, String)>,
        _ttl: Duration,
    ) -> super::EngineFuture<'_, ()> {
        Box::pin(NatsEngine::rewrite_entries(self, entries))
    }

    fn apply<'a>(
        &'a self,
        changes: &'a [EntryChange],
        _ttl: Duration,
    ) -> super::EngineFuture<'a, ()> {
        Box::pin(NatsEngine::apply(self, changes))
    }

    /// NATS keys expire from their last write.
    fn entries_expire_per_write(&self) -> bool {
        true
    }

    fn send_to<'a>(&'a self, node: &'a str, mail: Bytes) -> super::EngineFuture<'a, ()> {
        Box::pin(async move {
            let client = self.client()?;
            client
                .publish(self.mailbox(node), mail)
                .await
                .map_err(err)?;
            // Sent now, not with the client's next batch: a relayed request waits for it.
            client.flush().await.map_err(err)
        })
    }

    fn subscriber(
        self: Arc<Self>,
        h: Arc<dyn super::Handler>,
        cluster: Arc<Cluster>,
        resync: Arc<tokio::sync::Notify>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(subscriber(self, h, cluster, resync))
    }
}
