//! An HTTP session: a hub connection whose frames go down HTTP responses (an event stream, or
//! the answers to long polls) and whose commands come up in POSTs. The HTTP counterpart of the
//! WebSocket connection task.
//!
//! One task owns the session ([`run`]). It drains the session's [`Outbox`](crate::outbox::Outbox)
//! (the same bounded queue, byte budget and delivery policies as a WebSocket connection's),
//! frames each payload with the transport's [`Framing`], and hands the bytes to the response
//! side through a channel of one chunk: a reader that stops reading stops the body, the
//! channel stays full, and meanwhile the outbox fills and the group's delivery policy decides
//! (a `gap`, a replaced message, or the close of a slow consumer), exactly as on WebSocket. A
//! response side that takes nothing for the idle timeout is closed as a slow consumer.
//!
//! Commands arrive from POSTs through a bounded channel and are handled one at a time, in
//! order, by this task, like a WebSocket's messages. While the session's own replies wait (its
//! outbox half full, in frames or bytes) it takes no command: the channel fills and the POSTs
//! wait, so a client that pipelines is slowed down by its replies instead of disconnected.
//!
//! Sessions are named by an unguessable token (122 random bits, not the connection id, which
//! other clients see) and, when a token admitted them, bound to its user: every request of the
//! session must carry a token of the same user.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::close::CloseReason;
use crate::frame;
use crate::hub::{Hub, HubCork, HubEntry, Peer};
use crate::outbox::Take;

/// How a transport writes a session's frames.
pub(super) trait Framing: Send + 'static {
    /// Appends what one frame's payload becomes.
    fn frame(&mut self, payload: &[u8], out: &mut BytesMut);
    /// Appends the last words: why the session ends.
    fn close(&mut self, reason: &CloseReason, out: &mut BytesMut);
    /// What keeps an idle response open, every ping interval (`None`: nothing).
    fn heartbeat(&self) -> Option<Bytes>;
}

/// Commands waiting for a session's task, at most (each at most `--max-message-size`).
pub(super) const COMMAND_QUEUE: usize = 64;

/// What the requests of a session reach it by.
pub(crate) struct Handle {
    /// The session's registry entry.
    pub entry: HubEntry,
    /// The user a token named when the session opened: later requests must name the same.
    pub bound_user: Option<Arc<str>>,
    /// Commands, to the session's task.
    pub commands: mpsc::Sender<Bytes>,
    /// Long polling (and streams a client may reopen): the chunks the task framed, taken by
    /// one request at a time.
    pub poll: Option<Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>>,
    /// Long polling: a poll is waiting now.
    pub polling: AtomicBool,
    /// Long polling: when the last poll ended, on the hub's sweep clock (milliseconds).
    pub last_poll: AtomicU64,
    /// The request that reads the session now (for transports where a newer one replaces an
    /// older one: a client that reopens its stream), and how an older one is told to go.
    reader: AtomicU64,
    step_aside: tokio::sync::Notify,
}

/// Why a request's commands were not all queued for its session.
pub(super) enum NotQueued {
    /// The session ended.
    Ended,
    /// The session's replies are not being read, so it took no command for `--idle-timeout`.
    NotTaking,
}

impl Handle {
    /// Queues a request's commands for the session's task, in order. A session whose replies
    /// are not being read takes none: each waits up to `--idle-timeout` for room.
    pub(super) async fn queue(
        &self,
        hub: &Hub,
        commands: impl IntoIterator<Item = Bytes>,
    ) -> Result<(), NotQueued> {
        let wait = hub.config().idle_timeout.max(Duration::from_millis(100));
        for cmd in commands {
            match tokio::time::timeout(wait, self.commands.send(cmd)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(NotQueued::Ended),
                Err(_) => return Err(NotQueued::NotTaking),
            }
        }
        Ok(())
    }

    /// A new request is to read the session: the one reading now steps aside (see
    /// [`replaced`](Self::replaced)). Its number.
    pub(super) fn new_reader(&self) -> u64 {
        let n = self.reader.fetch_add(1, Ordering::AcqRel) + 1;
        self.step_aside.notify_waiters();
        n
    }

    /// Resolves once reader `n` is replaced by a newer one.
    pub(super) async fn replaced(&self, n: u64) {
        loop {
            let aside = self.step_aside.notified();
            tokio::pin!(aside);
            aside.as_mut().enable();
            if self.reader.load(Ordering::Acquire) != n {
                return;
            }
            aside.await;
        }
    }
}

/// A request that takes a session's frames (a poll, or a stream its client may reopen): while
/// it lasts the session is being read; its end, however it ends (answered, or dropped by a
/// client that went away), goes on the session's clock.
pub(super) struct Attached {
    handle: Arc<Handle>,
    hub: Hub,
}

impl Attached {
    pub(super) fn new(handle: Arc<Handle>, hub: &Hub) -> Self {
        handle.polling.store(true, Ordering::Relaxed);
        Self {
            handle,
            hub: hub.clone(),
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.handle
            .last_poll
            .store(self.hub.sweep().now(), Ordering::Relaxed);
        self.handle.polling.store(false, Ordering::Relaxed);
    }
}

/// The HTTP sessions of a router, by token.
#[derive(Clone, Default)]
pub struct Sessions {
    map: Arc<Mutex<HashMap<String, Arc<Handle>>>>,
}

impl Sessions {
    /// The session named `token`.
    pub(crate) fn get(&self, token: &str) -> Option<Arc<Handle>> {
        self.map.lock().get(token).cloned()
    }

    fn insert(&self, token: String, handle: Arc<Handle>) {
        self.map.lock().insert(token, handle);
    }

    fn remove(&self, token: &str) {
        self.map.lock().remove(token);
    }
}

/// A new session token: 122 random bits from the operating system's generator, in hex, then
/// the node that holds the session (`<32 hex>.<node id>`): a request that reaches another node
/// is relayed here (see `relay`).
fn new_token(node: &str) -> String {
    format!("{}.{node}", uuid::Uuid::new_v4().simple())
}

/// What [`open`] gives the handler: the session's token, and the response side of its channel
/// (for an event stream; long polling keeps it in the handle).
pub(super) struct Opened {
    pub token: String,
    pub down: Option<mpsc::Receiver<Bytes>>,
    /// What its requests reach it by.
    pub handle: Arc<Handle>,
}

/// Opens a session for `peer` (registered): puts it in the table (as `name`, or a new token)
/// and starts its task. `first` is the first chunk down; `long_poll` keeps the response side
/// in the handle (for polls, or for streams a client may reopen).
pub(super) fn open(
    sessions: &Sessions,
    name: Option<String>,
    peer: Peer,
    bound_user: Option<Arc<str>>,
    first: impl FnOnce(&str) -> Bytes,
    long_poll: bool,
    framing: impl Framing,
) -> Opened {
    let hub = peer.hub().clone();
    let token = name.unwrap_or_else(|| new_token(hub.node_id()));
    let first = first(&token);
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let (ctx, crx) = mpsc::channel::<Bytes>(COMMAND_QUEUE);
    let (down, poll) = if long_poll {
        (None, Some(Arc::new(tokio::sync::Mutex::new(rx))))
    } else {
        (Some(rx), None)
    };
    let handle = Arc::new(Handle {
        entry: peer.entry().clone(),
        bound_user,
        commands: ctx,
        poll,
        polling: AtomicBool::new(false),
        last_poll: AtomicU64::new(hub.sweep().now()),
        reader: AtomicU64::new(0),
        step_aside: tokio::sync::Notify::new(),
    });
    sessions.insert(token.clone(), handle.clone());
    let task = Task {
        bucket: rate_limit(&peer),
        peer,
        tx,
        commands: Some(crx),
        handle: long_poll.then(|| handle.clone()),
    };
    let span = tracing::debug_span!("session", id = %task.peer.entry().id);
    let sessions = sessions.clone();
    let name = token.clone();
    let linger = poll_wait(&hub);
    hub.tasks().spawn(tracing::Instrument::instrument(
        async move {
            task.run(first, framing).await;
            if long_poll {
                // The last words wait in the channel for one more poll (outside the hub's
                // tasks: shutdown does not wait for them).
                tokio::spawn(async move {
                    tokio::time::sleep(linger).await;
                    sessions.remove(&name);
                });
            } else {
                sessions.remove(&name);
            }
        },
        span,
    ));
    Opened {
        token,
        down,
        handle,
    }
}

/// A session's task: see the module's documentation.
pub(super) struct Task {
    peer: Peer,
    /// The inbound rate limit, when the hub has one.
    bucket: Option<super::bucket::Bucket>,
    tx: mpsc::Sender<Bytes>,
    /// Commands from POSTs (`None`: a stream that takes none, `/events`).
    commands: Option<mpsc::Receiver<Bytes>>,
    /// Long polling: the handle whose polls it watches.
    handle: Option<Arc<Handle>>,
}

impl Task {
    /// A task for a session that takes no commands (`/events`).
    pub(super) fn one_way(peer: Peer, tx: mpsc::Sender<Bytes>) -> Self {
        Self {
            bucket: None,
            peer,
            tx,
            commands: None,
            handle: None,
        }
    }

    /// Runs the session until it ends, then unregisters it.
    pub(super) async fn run(mut self, first: Bytes, mut framing: impl Framing) {
        let hub = self.peer.hub().clone();
        let outbox = self.peer.entry().sink.clone();
        let cfg = hub.config();
        let heartbeat = cfg.ping_interval.max(Duration::from_millis(100));
        let stall = cfg.idle_timeout.max(heartbeat);
        // A vanished long-poll client: no poll for this long after the last one ended.
        let poll_gone = poll_wait(&hub).saturating_add(cfg.idle_timeout);
        let leeway = hub.auth().leeway();
        let shutdown = hub.shutdown_token().clone();
        let mut ending = if first.is_empty() {
            None
        } else {
            send(&self.tx, first, stall).await.err()
        };
        let mut batch = VecDeque::new();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown_seen = false;
        let mut was_held = false;
        while ending.is_none() {
            let token_left = token_left(self.peer.entry(), leeway);
            // The session's own replies waiting: its commands wait too.
            let held = outbox.input_held();
            if held && !was_held {
                hub.metrics().input_holds.inc();
            }
            was_held = held;
            let take_commands = self.commands.is_some() && !held;
            let chunk = tokio::select! {
                // Commands first, as many as come before the replies' mark: what they produce
                // leaves together, in one chunk (one poll's answer).
                biased;
                cmd = recv(&mut self.commands), if take_commands => {
                    if let Some(text) = cmd {
                        self.command(&text).await;
                    }
                    continue;
                }
                take = outbox.take(&mut batch) => match take {
                    Take::Frames(_) => {
                        let mut out = BytesMut::new();
                        let mut bytes = 0;
                        for f in batch.drain(..) {
                            bytes += f.len();
                            if let Some((_, payload)) = frame::split_server_frame(&f) {
                                framing.frame(payload, &mut out);
                            }
                        }
                        outbox.wrote(bytes);
                        outbox.release();
                        out.freeze()
                    }
                    Take::Close(_) => {
                        let reason = outbox.close_reason().unwrap_or(CloseReason::GoingAway);
                        let mut out = BytesMut::new();
                        framing.close(&reason, &mut out);
                        let _ = send(&self.tx, out.freeze(), stall).await;
                        ending = Some((reason.label(), reason.code()));
                        continue;
                    }
                    Take::Finished => {
                        ending = Some(("normal", 1000));
                        continue;
                    }
                },
                _ = tick.tick() => {
                    if let Some(h) = &self.handle {
                        let idle = hub.sweep().now().saturating_sub(h.last_poll.load(Ordering::Relaxed));
                        if !h.polling.load(Ordering::Relaxed) && idle > millis(poll_gone) {
                            outbox.close(CloseReason::IdleTimeout);
                            continue;
                        }
                    }
                    match framing.heartbeat() {
                        Some(b) => b,
                        None => continue,
                    }
                }
                () = tokio::time::sleep(token_left.unwrap_or_default()), if token_left.is_some() => {
                    outbox.close(CloseReason::TokenExpired);
                    continue;
                }
                () = self.tx.closed(), if self.handle.is_none() => {
                    ending = Some(("dropped", 1006));
                    continue;
                }
                () = shutdown.cancelled(), if !shutdown_seen => {
                    shutdown_seen = true;
                    outbox.close(self.peer.shutdown_reason());
                    continue;
                }
            };
            if let Err(e) = send(&self.tx, chunk, stall).await {
                if e.0 == "slow_consumer" && outbox.close(CloseReason::SlowConsumer) {
                    hub.metrics().slow_consumers.inc();
                }
                ending = Some(e);
            }
        }
        outbox.close(CloseReason::Normal(1000));
        self.peer.closed(ending.unwrap_or(("normal", 1000)));
    }

    /// One command, as a WebSocket connection's text message is handled (a fetch it needs is
    /// awaited here: the session's commands are handled in order), under the same rate limit.
    async fn command(&mut self, text: &[u8]) {
        let Ok(text) = std::str::from_utf8(text) else {
            return;
        };
        let mut cork = HubCork::new();
        let now = self.peer.hub().sweep().now();
        let over = self.bucket.as_mut().is_some_and(|b| !b.take(now));
        if let (true, Some(bucket)) = (over, &self.bucket) {
            let hub = self.peer.hub();
            hub.metrics()
                .drops
                .get_or_create(&crate::metrics::Reason {
                    reason: "rate_limited",
                })
                .inc();
            if bucket.limit.action == crate::hub::RateLimitAction::Close {
                self.peer.entry().sink.close(CloseReason::RateLimited);
            } else {
                self.peer.over_limit(text.as_bytes(), &mut cork);
                hub.flush(&mut cork, Instant::now());
            }
            return;
        }
        let mut pre = None;
        while let Some(fetch) = self.peer.on_text(text, pre.take(), &mut cork) {
            pre = Some(fetch.await);
        }
        self.peer.hub().flush(&mut cork, Instant::now());
    }
}

/// A session's rate limit: the hub's, as a WebSocket connection has it.
fn rate_limit(peer: &Peer) -> Option<super::bucket::Bucket> {
    let hub = peer.hub();
    hub.config()
        .rate_limit
        .map(|l| super::bucket::Bucket::new(l, hub.sweep().now()))
}

async fn recv(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A POST's commands: at most `--max-message-size` bytes of UTF-8 text.
pub(super) async fn read_commands(
    hub: &Hub,
    body: axum::body::Body,
) -> Result<Bytes, crate::problem::Problem> {
    let max = hub.config().max_message_size;
    let body = axum::body::to_bytes(body, max).await.map_err(|_| {
        crate::problem::Problem::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("a POST of commands is at most {max} bytes (--max-message-size)"),
        )
    })?;
    if std::str::from_utf8(&body).is_err() {
        return Err(crate::problem::Problem::bad_request(
            "commands are JSON text (UTF-8), one per line",
        ));
    }
    Ok(body)
}

/// Most bytes one poll answers with (more waits for the next poll).
pub(super) const POLL_BYTES: usize = 256 * 1024;

/// A poll's answer: `first`, and what else waits already, up to [`POLL_BYTES`].
pub(super) fn poll_answer(first: &[u8], rx: &mut mpsc::Receiver<Bytes>) -> Bytes {
    let mut body = BytesMut::from(first);
    while body.len() < POLL_BYTES {
        match rx.try_recv() {
            Ok(more) => body.extend_from_slice(&more),
            Err(_) => break,
        }
    }
    body.freeze()
}

/// An answer of an HTTP session's request: `body` as `content_type`, never cached.
pub(super) fn answer(
    status: axum::http::StatusCode,
    content_type: &'static str,
    body: impl Into<axum::body::Body>,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    use axum::response::IntoResponse as _;
    let mut res = (status, body.into()).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// How long a long poll waits for something to send before answering 204 (under the usual
/// 30 to 60 s of proxies' idle limits).
pub(super) fn poll_wait(hub: &Hub) -> Duration {
    hub.config()
        .ping_interval
        .clamp(Duration::from_millis(100), Duration::from_secs(25))
}

/// Hands `chunk` to the response side, waiting at most `stall` for it to take the previous
/// one.
async fn send(
    tx: &mpsc::Sender<Bytes>,
    chunk: Bytes,
    stall: Duration,
) -> Result<(), (&'static str, u16)> {
    match tokio::time::timeout(stall, tx.send(chunk)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(("dropped", 1006)),
        Err(_) => Err(("slow_consumer", CloseReason::SlowConsumer.code())),
    }
}

/// How long until a connection's token runs out (its `exp` plus the leeway; zero: it has), if
/// it has one.
pub(super) fn token_left(entry: &HubEntry, leeway: Duration) -> Option<Duration> {
    let exp = entry.expires_at()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Some(
        Duration::from_secs(exp)
            .saturating_add(leeway)
            .saturating_sub(now),
    )
}
