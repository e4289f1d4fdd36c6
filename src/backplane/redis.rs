//! The Redis backplane: pub/sub for delivery, a Lua script for offsets, Redis Streams for the
//! shared history, per-node hashes with a TTL for the cluster-wide connection listing.
//!
//! Keys (under the prefix `P`, default `wshub`):
//! - `P:bus`: the pub/sub channel every node subscribes to.
//! - `P:mail:<node>`: a node's mailbox, a pub/sub channel only that node subscribes to
//!   (requests relayed between nodes, and their answers).
//! - `P:m:<stream>`: a stream's `epoch` and `top` offset (a hash); `<stream>` is `all` or
//!   `g:<group>`.
//! - `P:h:<stream>`: its history, a Redis Stream whose entry ids are the offsets (`17-0`).
//! - `P:n:<node>`: a node's connections (a hash: id → the REST `Connection` JSON), expiring
//!   `--node-ttl` after the node's last heartbeat; `P:nodes`: a sorted set of node ids by last
//!   heartbeat.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{backoff, now_ms, BusMessage, Cluster, EntryChange, Outgoing, Stored, StreamName};

/// How long one engine call may take before the node counts the engine as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes a stream publication: next offset, history, bus, atomically. A stream whose meta
/// is gone (expired, or Redis lost its data) starts a new epoch with a fresh history.
const PUBLISH_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
local top = redis.call('HINCRBY', KEYS[1], 'top', 1)
local size = tonumber(ARGV[2])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, top .. '-0', 'p', ARGV[1], 't', ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], '{"n":"' .. ARGV[7] .. '","e":"' .. epoch .. '","o":' .. top .. ',"p":' .. ARGV[1] .. '}')
return {epoch, top}
"#;

/// A stream's position, created when missing.
const META_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {epoch, tonumber(redis.call('HGET', KEYS[1], 'top'))}
"#;

/// The Redis side of one node.
pub struct RedisEngine {
    client: redis::Client,
    /// Replaced by a fresh one whenever the subscriber has to reconnect: a manager whose
    /// (re)connection failed with anything but an I/O error (a timeout on a loaded machine)
    /// may never try again by itself.
    conn: parking_lot::Mutex<ConnectionManager>,
    script: redis::Script,
    prefix: String,
    node: Arc<str>,
}

impl RedisEngine {
    pub(crate) fn new(
        url: &str,
        prefix: &str,
        node: &Arc<str>,
    ) -> Result<Self, super::AttachError> {
        let bad = |e: redis::RedisError| super::AttachError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        };
        let client = redis::Client::open(url).map_err(bad)?;
        let conn = Self::manager(&client).map_err(bad)?;
        Ok(Self {
            client,
            conn: parking_lot::Mutex::new(conn),
            script: redis::Script::new(PUBLISH_LUA),
            prefix: prefix.to_owned(),
            node: node.clone(),
        })
    }

    fn manager(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        ConnectionManager::new_lazy_with_config(client.clone(), config)
    }

    /// A handle on the command connection (cheap: the manager is shared).
    fn conn(&self) -> ConnectionManager {
        self.conn.lock().clone()
    }

    /// Starts over with a fresh command connection.
    fn fresh_connection(&self) {
        if let Ok(fresh) = Self::manager(&self.client) {
            *self.conn.lock() = fresh;
        }
    }

    fn bus(&self) -> String {
        format!("{}:bus", self.prefix)
    }

    fn mailbox(&self, node: &str) -> String {
        format!("{}:mail:{node}", self.prefix)
    }

    fn stream_id(stream: StreamName<'_>) -> String {
        match stream {
            StreamName::All => "all".into(),
            StreamName::Group(g) => format!("g:{g}"),
        }
    }

    fn meta_key(&self, stream: StreamName<'_>) -> String {
        format!("{}:m:{}", self.prefix, Self::stream_id(stream))
    }

    fn history_key(&self, stream: StreamName<'_>) -> String {
        format!("{}:h:{}", self.prefix, Self::stream_id(stream))
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:n:{node}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn revoked_key(&self) -> String {
        format!("{}:revoked", self.prefix)
    }

    async fn call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut c = self.conn();
        match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut c)).await {
            Ok(r) => r,
            Err(_) => Err(timeout()),
        }
    }

    async fn pipe<T: redis::FromRedisValue>(&self, p: &redis::Pipeline) -> redis::RedisResult<T> {
        let mut c = self.conn();
        match tokio::time::timeout(CALL_TIMEOUT, p.query_async(&mut c)).await {
            Ok(r) => r,
            Err(_) => Err(timeout()),
        }
    }

    /// Sends a batch in order (one pipeline); returns each stream publication's position.
    pub(crate) async fn publish_batch(
        &self,
        batch: &[Outgoing],
        history: crate::history::HistoryConfig,
    ) -> redis::RedisResult<Vec<Option<crate::history::Position>>> {
        let bus = self.bus();
        let keep_ms = history
            .ttl
            .max(Duration::from_secs(3600))
            .as_millis()
            .to_string();
        let now = now_ms().to_string();
        let mut pipe = redis::pipe();
        for o in batch {
            let payload = serde_json::to_string(&o.publication).unwrap_or_default();
            match o.publication.stream() {
                Some(stream) => {
                    pipe.cmd("EVALSHA")
                        .arg(self.script.get_hash())
                        .arg(2)
                        .arg(self.meta_key(stream))
                        .arg(self.history_key(stream))
                        .arg(&payload)
                        .arg(history.size)
                        .arg(&keep_ms)
                        .arg(&bus)
                        .arg(new_epoch())
                        .arg(&now)
                        .arg(&*self.node);
                }
                None => {
                    let msg = format!("{{\"n\":\"{}\",\"p\":{payload}}}", self.node);
                    pipe.cmd("PUBLISH").arg(&bus).arg(msg);
                }
            }
        }
        let values: Vec<redis::Value> = match self.pipe(&pipe).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // The script cache was flushed (or Redis restarted): load it and go again. The
                // first EVALSHA failed, so nothing of the batch ran.
                self.script.load_async(&mut self.conn()).await?;
                self.pipe(&pipe).await?
            }
            r => r?,
        };
        Ok(values
            .into_iter()
            .map(|v| match v {
                redis::Value::Array(items) if items.len() == 2 => {
                    let epoch: String = redis::from_redis_value(items[0].clone()).ok()?;
                    let top: u64 = redis::from_redis_value(items[1].clone()).ok()?;
                    Some(crate::history::Position::new(epoch, top))
                }
                _ => None,
            })
            .collect())
    }

    /// A stream's epoch and last offset, creating the stream (a new epoch, offset 0) when it
    /// has none, so that every node agrees on the epoch before anything is published.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn meta(
        &self,
        stream: StreamName<'_>,
        keep: Duration,
    ) -> redis::RedisResult<(String, u64)> {
        let (epoch, top): (String, u64) = self
            .call(
                redis::cmd("EVAL")
                    .arg(META_LUA)
                    .arg(1)
                    .arg(self.meta_key(stream))
                    .arg(new_epoch())
                    .arg(keep.as_millis() as u64),
            )
            .await?;
        Ok((epoch, top))
    }

    /// Stored publications with offsets in `from..=to`, oldest first.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn range(
        &self,
        stream: StreamName<'_>,
        from: u64,
        to: u64,
    ) -> redis::RedisResult<Vec<Stored>> {
        let entries: Vec<(String, Vec<(String, String)>)> = self
            .call(
                redis::cmd("XRANGE")
                    .arg(self.history_key(stream))
                    .arg(format!("{from}-0"))
                    .arg(format!("{to}-0")),
            )
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let offset = id.split('-').next()?.parse().ok()?;
                let mut at_ms = 0;
                let mut publication = None;
                for (k, v) in fields {
                    match k.as_str() {
                        "p" => publication = serde_json::from_str(&v).ok(),
                        "t" => at_ms = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
                Some(Stored {
                    offset,
                    at_ms,
                    publication: publication?,
                })
            })
            .collect())
    }

    /// The nodes that renewed their entries within `ttl`.
    async fn live_nodes(&self, ttl: Duration) -> redis::RedisResult<Vec<String>> {
        let since = now_ms().saturating_sub(ttl.as_millis() as u64);
        self.call(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.nodes_key())
                .arg(since)
                .arg("+inf"),
        )
        .await
    }

    /// Every connection entry of every live node (the REST `Connection` JSON of each).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn entries(&self, ttl: Duration) -> redis::RedisResult<Vec<String>> {
        let nodes = self.live_nodes(ttl).await?;
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.cmd("HVALS").arg(self.node_key(n));
        }
        let lists: Vec<Vec<String>> = self.pipe(&pipe).await?;
        Ok(lists.into_iter().flatten().collect())
    }

    /// Which live node holds connection `id`, if any.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn locate(&self, id: &str, ttl: Duration) -> redis::RedisResult<Option<String>> {
        let nodes = self.live_nodes(ttl).await?;
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.cmd("HEXISTS").arg(self.node_key(n)).arg(id);
        }
        let found: Vec<bool> = self.pipe(&pipe).await?;
        Ok(nodes
            .into_iter()
            .zip(found)
            .find(|(_, f)| *f)
            .map(|(n, _)| n))
    }

    /// Connection `id`'s entry on whichever live node holds it.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn entry(&self, id: &str, ttl: Duration) -> redis::RedisResult<Option<String>> {
        let nodes = self.live_nodes(ttl).await?;
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.cmd("HGET").arg(self.node_key(n)).arg(id);
        }
        let found: Vec<Option<String>> = self.pipe(&pipe).await?;
        Ok(found.into_iter().flatten().next())
    }

    /// Rewrites this node's entries from scratch and renews them.
    pub(crate) async fn rewrite_entries(
        &self,
        entries: Vec<(String, String)>,
        ttl: Duration,
    ) -> redis::RedisResult<()> {
        let key = self.node_key(&self.node);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        for chunk in entries.chunks(512) {
            let mut hset = redis::cmd("HSET");
            hset.arg(&key);
            for (id, json) in chunk {
                hset.arg(id).arg(json);
            }
            pipe.add_command(hset).ignore();
        }
        self.renew(&mut pipe, &key, ttl);
        self.pipe::<()>(&pipe).await
    }

    /// Applies changes to this node's entries and renews them.
    pub(crate) async fn apply(
        &self,
        changes: &[EntryChange],
        ttl: Duration,
    ) -> redis::RedisResult<()> {
        let key = self.node_key(&self.node);
        let mut pipe = redis::pipe();
        for c in changes {
            match c {
                EntryChange::Put { id, json, .. } => {
                    pipe.cmd("HSET").arg(&key).arg(id).arg(json).ignore();
                }
                EntryChange::Remove { id } => {
                    pipe.cmd("HDEL").arg(&key).arg(id).ignore();
                }
            }
        }
        self.renew(&mut pipe, &key, ttl);
        self.pipe::<()>(&pipe).await
    }

    fn renew(&self, pipe: &mut redis::Pipeline, key: &str, ttl: Duration) {
        let now = now_ms();
        pipe.cmd("PEXPIRE")
            .arg(key)
            .arg(ttl.as_millis() as u64)
            .ignore();
        pipe.cmd("ZADD")
            .arg(self.nodes_key())
            .arg(now)
            .arg(&*self.node)
            .ignore();
        // Forget nodes that stopped long ago (their hashes expired by themselves).
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg("-inf")
            .arg(now.saturating_sub(10 * ttl.as_millis() as u64))
            .ignore();
    }

    /// Keeps a revocation in a hash (user → time), the later time winning.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn revoke(&self, user: &str, before: u64) -> redis::RedisResult<()> {
        let kept: Option<u64> = self
            .call(redis::cmd("HGET").arg(self.revoked_key()).arg(user))
            .await?;
        if kept.is_some_and(|k| k >= before) {
            return Ok(());
        }
        self.call(
            redis::cmd("HSET")
                .arg(self.revoked_key())
                .arg(user)
                .arg(before),
        )
        .await
    }

    /// Every revocation kept.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn revocations(&self) -> redis::RedisResult<Vec<(String, u64)>> {
        let all: std::collections::HashMap<String, u64> = self
            .call(redis::cmd("HGETALL").arg(self.revoked_key()))
            .await?;
        Ok(all.into_iter().collect())
    }

    /// Removes this node's entries (a clean shutdown).
    pub async fn leave(&self) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(self.node_key(&self.node)).ignore();
        pipe.cmd("ZREM")
            .arg(self.nodes_key())
            .arg(&*self.node)
            .ignore();
        self.pipe::<()>(&pipe).await
    }
}

fn timeout() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the backplane did not answer in time",
    ))
}

fn new_epoch() -> String {
    let id = crate::id::ConnId::random().to_string();
    id[..12].to_owned()
}

/// Carries bus messages from Redis pub/sub to the hub, reconnecting with backoff; tells the
/// hub when the engine comes and goes.
async fn subscriber(
    engine: Arc<RedisEngine>,
    h: Arc<dyn super::Handler>,
    cluster: Arc<Cluster>,
    resync: Arc<tokio::sync::Notify>,
) {
    let mut attempt = 0;
    loop {
        let connected = async {
            let mut ps = engine.client.get_async_pubsub().await?;
            ps.subscribe(engine.bus()).await?;
            ps.subscribe(engine.mailbox(&engine.node)).await?;
            engine.script.load_async(&mut engine.conn()).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(CALL_TIMEOUT, connected).await {
            Ok(Ok(ps)) => {
                attempt = 0;
                if !h.alive() {
                    return;
                }
                cluster.engine_changed(h.as_ref(), true);
                resync.notify_one();
                let bus = engine.bus();
                let mut messages = ps.into_on_message();
                while let Some(msg) = messages.next().await {
                    if !h.alive() {
                        return;
                    }
                    // Everything already received is delivered before one flush.
                    let mut batch = Vec::new();
                    let mut next = Some(msg);
                    let mut n = 0;
                    while let Some(msg) = next.take() {
                        if msg.get_channel_name() != bus {
                            cluster.on_mail(
                                &h,
                                bytes::Bytes::copy_from_slice(msg.get_payload_bytes()),
                            );
                        } else {
                            match serde_json::from_slice::<BusMessage>(msg.get_payload_bytes()) {
                                Ok(m) => batch.push(m),
                                Err(e) => {
                                    tracing::warn!(error = %e, "unreadable backplane message ignored")
                                }
                            }
                        }
                        n += 1;
                        if n < 256 {
                            next = messages.next().now_or_never().flatten();
                        }
                    }
                    if !batch.is_empty() {
                        h.on_bus(batch).await;
                    }
                }
                tracing::warn!("backplane subscription lost");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "backplane unreachable"),
            Err(_) => tracing::debug!("backplane connection timed out"),
        }
        engine.fresh_connection();
        if !h.alive() {
            return;
        }
        cluster.engine_changed(h.as_ref(), false);
        tokio::time::sleep(backoff(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

impl super::Engine for RedisEngine {
    fn meta<'a>(
        &'a self,
        stream: StreamName<'a>,
        keep: Duration,
    ) -> super::EngineFuture<'a, (String, u64)> {
        Box::pin(async move { Ok(RedisEngine::meta(self, stream, keep).await?) })
    }

    fn range<'a>(
        &'a self,
        stream: StreamName<'a>,
        from: u64,
        to: u64,
    ) -> super::EngineFuture<'a, Vec<Stored>> {
        Box::pin(async move { Ok(RedisEngine::range(self, stream, from, to).await?) })
    }

    fn entries(&self, ttl: Duration) -> super::EngineFuture<'_, Vec<String>> {
        Box::pin(async move { Ok(RedisEngine::entries(self, ttl).await?) })
    }

    fn locate<'a>(&'a self, id: &'a str, ttl: Duration) -> super::EngineFuture<'a, Option<String>> {
        Box::pin(async move { Ok(RedisEngine::locate(self, id, ttl).await?) })
    }

    fn entry<'a>(&'a self, id: &'a str, ttl: Duration) -> super::EngineFuture<'a, Option<String>> {
        Box::pin(async move { Ok(RedisEngine::entry(self, id, ttl).await?) })
    }

    fn leave(&self) -> super::EngineFuture<'_, ()> {
        Box::pin(async move { Ok(RedisEngine::leave(self).await?) })
    }

    fn revoke<'a>(&'a self, user: &'a str, before: u64) -> super::EngineFuture<'a, ()> {
        Box::pin(async move { Ok(RedisEngine::revoke(self, user, before).await?) })
    }

    fn revocations(&self) -> super::EngineFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move { Ok(RedisEngine::revocations(self).await?) })
    }

    fn publish_batch<'a>(
        &'a self,
        batch: &'a [super::Outgoing],
        history: crate::history::HistoryConfig,
    ) -> super::EngineFuture<'a, Vec<Option<crate::history::Position>>> {
        Box::pin(async move { Ok(RedisEngine::publish_batch(self, batch, history).await?) })
    }

    fn rewrite_entries(
        &self,
        entries: Vec<(String, String)>,
        ttl: Duration,
    ) -> super::EngineFuture<'_, ()> {
        Box::pin(async move { Ok(RedisEngine::rewrite_entries(self, entries, ttl).await?) })
    }

    fn apply<'a>(
        &'a self,
        changes: &'a [EntryChange],
        ttl: Duration,
    ) -> super::EngineFuture<'a, ()> {
        Box::pin(async move { Ok(RedisEngine::apply(self, changes, ttl).await?) })
    }

    fn send_to<'a>(&'a self, node: &'a str, mail: bytes::Bytes) -> super::EngineFuture<'a, ()> {
        Box::pin(async move {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(self.mailbox(node)).arg(&mail[..]);
            self.call::<i64>(&cmd).await?;
            Ok(())
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
