//! One upgraded WebSocket connection: its reader, its writer, its keep-alive and its closing
//! handshake, run as one task.
//!
//! The task owns the socket. Frames to send arrive through the connection's
//! [`Outbox`](crate::outbox::Outbox), filled by anyone, drained by the writer half of this task;
//! messages received are handed to the [`Role`] (the hub, or the raw echo). Whoever decides the
//! connection must end (a protocol error, the peer's Close, a slow-consumer eviction, a REST
//! disconnect, shutdown) asks the outbox to close; this task then sends the Close frame, waits
//! for the peer's within a deadline, and drops the socket.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::close::CloseReason;
use crate::frame::{self, deflate, DecodeError, Decoder, Frame, Message, OpCode};
use crate::hub::{Hub, HubCork, HubEntry, RateLimit, RateLimitAction, Session};
use crate::manager::Protocol;
use crate::outbox::{Outbox, Queued, SendError};
use crate::protocol::v1;

/// Bytes read from the socket per read call. The buffer lives on the stack of the poll, so an
/// idle connection holds no read buffer at all.
const READ_CHUNK: usize = 8 * 1024;

/// A Ping with no payload, the same bytes for every connection.
static PING: &[u8] = &[0x89, 0x00];

/// What the connection does with the messages it receives.
pub(crate) enum Role {
    /// A `/ws` client of the hub.
    Hub {
        /// The hub.
        hub: Hub,
        /// This connection's registry entry.
        entry: HubEntry,
    },
    /// A Pusher client at `/app/{key}`.
    Pusher {
        /// The hub.
        hub: Hub,
        /// This connection's registry entry.
        entry: HubEntry,
        /// Its Pusher session.
        session: Box<Session>,
    },
    /// A `/ws/echo` client: every message comes back unchanged. Holds its place in the
    /// hub's connection count until the task ends.
    Echo(EchoSlot),
    /// A connection refused after the upgrade (a protocol that answers with its own error and
    /// close code, such as Pusher's unknown app key): what was queued is sent, then it closes.
    Refused(Hub),
}

impl Role {
    /// How this connection is closed when the server shuts down: plain clients keep the
    /// original's 1001; `wshub.v1` clients get 1012 and Pusher clients 4200, the codes their
    /// clients take as "reconnect now" (to another node, with their positions).
    fn shutdown_reason(&self) -> CloseReason {
        match self {
            Role::Hub { entry, .. } if entry.info.protocol == Protocol::V1 => {
                CloseReason::Restarting(1012)
            }
            Role::Pusher { .. } => CloseReason::Restarting(4200),
            _ => CloseReason::GoingAway,
        }
    }

    /// The hub the connection belongs to (its metrics, its limits).
    fn hub(&self) -> &Hub {
        match self {
            Role::Hub { hub, .. } | Role::Pusher { hub, .. } | Role::Refused(hub) => hub,
            Role::Echo(slot) => &slot.0,
        }
    }
}

/// A `/ws/echo` connection's place in the hub's connection count and metrics; given back when
/// dropped.
pub(crate) struct EchoSlot(pub(crate) Hub);

impl EchoSlot {
    pub(crate) fn take(hub: &Hub) -> Self {
        hub.echo_opened();
        Self(hub.clone())
    }
}

impl Drop for EchoSlot {
    fn drop(&mut self) {
        self.0.echo_closed();
    }
}

/// What one connection has of its own; the timings, limits and compression settings are the
/// hub's (read from its configuration when needed, not copied into every connection's task).
#[derive(Clone, Copy)]
pub(crate) struct Params {
    pub max_message: usize,
    /// The `permessage-deflate` this connection negotiated.
    pub deflate: Option<deflate::Agreed>,
}

/// The hub's timings a connection works with.
struct Timing {
    ping_interval: Duration,
    idle_timeout: Duration,
    close_timeout: Duration,
    shutdown_timeout: Duration,
    /// How long past its token's `exp` a connection may stay (the JWT clock leeway).
    token_leeway: Duration,
}

impl Timing {
    fn of(hub: &Hub) -> Self {
        let c = hub.config();
        Self {
            ping_interval: c.ping_interval,
            idle_timeout: c.idle_timeout,
            close_timeout: c.close_timeout,
            shutdown_timeout: c.shutdown_timeout,
            token_leeway: hub.auth().leeway(),
        }
    }
}

/// How long until the connection's token runs out (its `exp` plus the leeway; zero: it has),
/// if it has one.
fn token_left(role: &Role, leeway: Duration) -> Option<Duration> {
    let Role::Hub { entry, .. } = role else {
        return None;
    };
    let exp = entry.expires_at()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(
        Duration::from_secs(exp)
            .saturating_add(leeway)
            .saturating_sub(now),
    )
}

/// A token bucket: `per_second` tokens a second, at most `burst` saved up.
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes a token; `false` when the bucket is empty.
    fn take(&mut self, now: Instant) -> bool {
        let burst = f64::from(self.limit.burst.max(1));
        let earned = now.duration_since(self.last).as_secs_f64() * self.limit.per_second;
        self.tokens = (self.tokens + earned).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How the connection ended, for logs.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Both Close frames were exchanged, or ours was sent and none was awaited.
    Closed(CloseReason),
    /// The peer closed the TCP connection without a closing handshake.
    Dropped,
    /// A socket error.
    Io(io::Error),
    /// The closing handshake did not finish within its deadline.
    TimedOut(CloseReason),
}

impl Ending {
    /// The `reason` label of the disconnect metric.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Ending::Closed(reason) => reason.label(),
            Ending::Dropped => "dropped",
            Ending::Io(_) => "io_error",
            Ending::TimedOut(_) => "close_timeout",
        }
    }

    /// The label and the close code that ended the connection (1006: none was exchanged).
    pub(crate) fn outcome(&self) -> (&'static str, u16) {
        let code = match self {
            Ending::Closed(reason) | Ending::TimedOut(reason) => reason.code(),
            Ending::Dropped | Ending::Io(_) => 1006,
        };
        (self.label(), code)
    }
}

struct Reader {
    decoder: Decoder,
    buf: BytesMut,
    /// After a protocol error nothing more is decoded; bytes are read and dropped until EOF so
    /// that our Close frame is not lost to a TCP reset.
    discard: bool,
}

enum ReadError {
    Decode(DecodeError),
    Io(io::Error),
}

impl Reader {
    /// The next message already complete in the buffer, without reading the socket.
    fn buffered(&mut self) -> Result<Option<Message>, ReadError> {
        if self.discard {
            self.buf.clear();
            return Ok(None);
        }
        self.decoder
            .decode(&mut self.buf)
            .map_err(ReadError::Decode)
    }

    /// Reads until one message is complete. `Ok(None)` is EOF.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes move from the socket into `self.buf` within a single poll.
    async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Message>, ReadError> {
        loop {
            if let Some(msg) = self.buffered()? {
                return Ok(Some(msg));
            }
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                // Nothing partial is pending: hold no buffer while idle.
                self.buf = BytesMut::new();
            }
            let buf = &mut self.buf;
            let n = poll_fn(|cx| {
                // Uninitialised: zeroing 8 KiB for every read showed up in profiles (2.4% of
                // the server's time in the echo benchmark); the reader writes what it fills.
                let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut rb = ReadBuf::uninit(&mut chunk);
                ready!(Pin::new(&mut *r).poll_read(cx, &mut rb))?;
                buf.extend_from_slice(rb.filled());
                Poll::Ready(Ok::<_, io::Error>(rb.filled().len()))
            })
            .await
            .map_err(ReadError::Io)?;
            if n == 0 {
                return Ok(None);
            }
        }
    }
}

/// What handling one read result decided.
enum Step {
    /// Keep going.
    Continue,
    /// A command that needs the shared history first (a cluster recovery): await the fetch
    /// (no lock held, the connection reads nothing meanwhile), then handle the command.
    Fetch(crate::hub::PrefetchFuture, Bytes),
    /// The connection is over.
    End(Ending),
}

/// A command waiting for its fetch or hook (boxed: rare, and kept out of every connection
/// task's own size).
type Pending = Box<(crate::hub::PrefetchFuture, Bytes)>;

/// The per-connection state the select loop works on.
struct Conn<'a> {
    outbox: &'a Outbox,
    role: &'a Role,
    last_seen: Instant,
    reading: bool,
    peer_closed: bool,
    close_sent: bool,
    /// Closing has begun (our Close is queued): data from the peer is no longer dispatched.
    closing: bool,
    /// Connections (the hub's, this one included) offered frames and not yet flushed.
    cork: HubCork,
    /// This connection's own outbox was offered a frame outside the hub (echo, pong).
    own_dirty: bool,
    /// When the current burst of messages started being handled (for the fan-out metric).
    burst_started: std::time::Instant,
    /// The inbound rate limit, for hub connections that have one.
    bucket: Option<Bucket>,
    /// How this connection's own messages (echoes) are compressed, when it negotiated it.
    deflate: Option<(deflate::Settings, deflate::Agreed)>,
}

impl Conn<'_> {
    fn queued(&mut self, r: Result<Queued, SendError>) {
        match r {
            Ok(Queued::NeedsFlush) => self.own_dirty = true,
            Ok(Queued::Done) | Err(SendError::Closed) => {}
            Err(SendError::Full) => {
                if self.outbox.close(CloseReason::SlowConsumer) {
                    self.role.hub().metrics().slow_consumers.inc();
                }
            }
        }
    }

    /// Writes everything the last burst of messages produced.
    fn flush(&mut self) {
        match self.role {
            Role::Hub { hub, .. } | Role::Pusher { hub, .. } => {
                hub.flush(&mut self.cork, self.burst_started)
            }
            Role::Echo(_) | Role::Refused(_) => self.cork.flush(),
        }
        if std::mem::take(&mut self.own_dirty) {
            self.outbox.flush();
        }
    }

    /// Handles what is already buffered after `step`, until a command needs a fetch (then
    /// kept in `pending`, after what came before it is written), the buffer is empty or the
    /// connection ends; then writes what it all produced.
    fn drain(
        &mut self,
        mut step: Step,
        rd: &mut Reader,
        pending: &mut Option<Pending>,
    ) -> Option<Ending> {
        loop {
            if let Step::Fetch(fetch, text) = step {
                *pending = Some(Box::new((fetch, text)));
                step = Step::Continue;
                break;
            }
            if !(matches!(step, Step::Continue) && self.reading && !rd.discard) {
                break;
            }
            match rd.buffered() {
                Ok(None) => break,
                r => step = self.on_read(r, rd),
            }
        }
        self.flush();
        let inflated = rd.decoder.take_inflated();
        if inflated > 0 {
            self.role
                .hub()
                .metrics()
                .deflate
                .inflated
                .inc_by(u64::from(inflated));
        }
        match step {
            Step::End(ending) => Some(ending),
            _ => None,
        }
    }

    /// Handles a command after the fetch it needed.
    fn command_prefetched(&mut self, text: &[u8], pre: crate::hub::Fetched) {
        let Ok(text) = std::str::from_utf8(text) else {
            return;
        };
        // With `pre` given, the message is handled now: no second fetch.
        match self.role {
            Role::Hub { hub, entry } => {
                let _ = hub.on_command(entry, text, Some(pre), &mut self.cork);
            }
            Role::Pusher {
                hub,
                entry,
                session,
            } => {
                let _ = hub.on_pusher(entry, session, text, Some(pre), &mut self.cork);
            }
            Role::Echo(_) | Role::Refused(_) => {}
        }
    }

    fn on_read(&mut self, r: Result<Option<Message>, ReadError>, rd: &mut Reader) -> Step {
        match r {
            Ok(Some(msg)) => {
                self.last_seen = Instant::now();
                self.on_message(msg)
            }
            Ok(None) => Step::End(match self.outbox.close_reason() {
                // EOF after our Close: the peer is done.
                Some(reason) => Ending::Closed(reason),
                None => Ending::Dropped,
            }),
            Err(ReadError::Decode(e)) => {
                tracing::debug!(error = %e, "closing: bad frame from peer");
                rd.discard = true;
                self.outbox.close(CloseReason::from(&e));
                Step::Continue
            }
            Err(ReadError::Io(e)) => Step::End(Ending::Io(e)),
        }
    }

    /// An echo: compressed with the window the client allowed when it negotiated
    /// compression and the message is worth it (an echo has one recipient).
    fn echo(&self, opcode: OpCode, payload: &[u8]) -> Frame {
        self.deflate
            .and_then(|(settings, agreed)| {
                let f = deflate::compress(opcode, payload, &settings, agreed.server_window)?;
                let m = &self.role.hub().metrics().deflate;
                m.compressed(frame::header_len(payload.len()) + payload.len(), f.len());
                m.frames_sent.inc();
                Some(f)
            })
            .unwrap_or_else(|| frame::encode(opcode, payload))
    }

    /// Whether the rate limit lets one more message through.
    fn allowed(&mut self) -> bool {
        self.bucket.as_mut().is_none_or(|b| b.take(self.last_seen))
    }

    /// A message over the rate limit: dropped, answered or closed for, as configured.
    fn over_limit(&mut self, payload: &[u8]) {
        self.role
            .hub()
            .metrics()
            .drops
            .get_or_create(&crate::metrics::Reason {
                reason: "rate_limited",
            })
            .inc();
        match self.bucket.as_ref().map(|b| b.limit.action) {
            Some(RateLimitAction::Close) => {
                self.outbox.close(CloseReason::RateLimited);
            }
            // A raw echo has no error frame: the message is dropped (and counted).
            _ if matches!(self.role, Role::Echo(_) | Role::Refused(_)) => {}
            _ if matches!(self.role, Role::Pusher { .. }) => {
                let frame = crate::protocol::pusher::error(
                    crate::protocol::pusher::Code::ClientEventRate,
                    "message dropped: over this connection's rate limit",
                );
                let r = self.outbox.push(frame);
                self.queued(r);
            }
            _ => {
                let id = std::str::from_utf8(payload).ok().and_then(v1::command_id);
                let frame = v1::error(
                    id.as_deref(),
                    v1::ErrorCode::RateLimited,
                    "message dropped: over this connection's rate limit",
                );
                // A reply like any other: after a `publish` ack that waits for the backplane.
                if let Role::Hub { hub, entry } = self.role {
                    hub.reply(entry.id, frame, &mut self.cork);
                }
            }
        }
    }

    fn on_message(&mut self, msg: Message) -> Step {
        match msg {
            Message::Text(b) | Message::Binary(b) if self.closing => drop(b),
            Message::Text(b) | Message::Binary(b) if !self.allowed() => self.over_limit(&b),
            Message::Text(b) => match self.role {
                Role::Hub { hub, entry } => match std::str::from_utf8(&b) {
                    Ok(text) if entry.info.protocol == Protocol::V1 => {
                        if let Some(fetch) = hub.on_command(entry, text, None, &mut self.cork) {
                            return Step::Fetch(fetch, b);
                        }
                    }
                    Ok(text) => hub.on_text(entry.id, text, &mut self.cork),
                    // The decoder validated it; never trust that with a panic.
                    Err(_) => {
                        self.outbox.close(CloseReason::InvalidUtf8);
                    }
                },
                Role::Pusher {
                    hub,
                    entry,
                    session,
                } => match std::str::from_utf8(&b) {
                    Ok(text) => {
                        if let Some(fetch) =
                            hub.on_pusher(entry, session, text, None, &mut self.cork)
                        {
                            return Step::Fetch(fetch, b);
                        }
                    }
                    Err(_) => {
                        self.outbox.close(CloseReason::InvalidUtf8);
                    }
                },
                Role::Refused(_) => {}
                Role::Echo(_) => {
                    let r = self.outbox.push(self.echo(OpCode::Text, &b));
                    self.queued(r);
                }
            },
            Message::Binary(b) => match self.role {
                Role::Hub { hub, entry } if entry.info.protocol == Protocol::V1 => {
                    hub.on_v1_binary(entry, &mut self.cork)
                }
                Role::Hub { hub, entry } => hub.on_binary(entry.id, &b, &mut self.cork),
                Role::Pusher { .. } => {
                    let frame = crate::protocol::pusher::error(
                        crate::protocol::pusher::Code::Generic,
                        "the Pusher protocol has no binary messages",
                    );
                    let r = self.outbox.push(frame);
                    self.queued(r);
                }
                Role::Refused(_) => {}
                Role::Echo(_) => {
                    let r = self.outbox.push(self.echo(OpCode::Binary, &b));
                    self.queued(r);
                }
            },
            Message::Ping(p) => {
                let r = self.outbox.push_control(frame::encode(OpCode::Pong, &p));
                self.queued(r);
            }
            Message::Pong(_) => {}
            Message::Close(c) => {
                self.peer_closed = true;
                self.reading = false;
                let code = c.map_or(1000, |(code, _)| code);
                // Answer with the peer's code, unless we had asked to close first.
                self.outbox.close(CloseReason::Normal(code));
                if self.close_sent {
                    let reason = self
                        .outbox
                        .close_reason()
                        .unwrap_or(CloseReason::Normal(code));
                    return Step::End(Ending::Closed(reason));
                }
            }
        }
        Step::Continue
    }
}

/// Runs the connection until it is closed. `write` is the connection's writer (see
/// `writer`); `preread` holds bytes the HTTP layer read past the upgrade request (a client may
/// send its first frame right behind the handshake).
pub(crate) async fn run<R, F>(
    mut reader: R,
    write: F,
    preread: Bytes,
    outbox: Arc<Outbox>,
    role: Role,
    params: Params,
    shutdown: CancellationToken,
) -> Ending
where
    R: AsyncRead + Unpin,
    F: Future<Output = io::Result<()>>,
{
    let mut rd = Reader {
        decoder: if params.deflate.is_some() {
            Decoder::with_deflate(params.max_message)
        } else {
            Decoder::new(params.max_message)
        },
        buf: BytesMut::from(&preread[..]),
        discard: false,
    };
    // `preread` is a view into the HTTP layer's 8 KiB read buffer: keeping it would keep that
    // whole buffer alive for the life of the connection.
    drop(preread);
    let mut c = Conn {
        outbox: &outbox,
        role: &role,
        last_seen: Instant::now(),
        reading: true,
        peer_closed: false,
        close_sent: false,
        closing: false,
        cork: HubCork::new(),
        own_dirty: false,
        burst_started: std::time::Instant::now(),
        bucket: role.hub().config().rate_limit.map(Bucket::new),
        deflate: role.hub().config().compression.zip(params.deflate),
    };
    // Read anew where needed rather than held across every wait of the loop.
    let timing = || Timing::of(role.hub());
    let ending = {
        tokio::pin!(write);
        let first = {
            let t = timing();
            token_left(&role, t.token_leeway)
                .map_or(t.ping_interval, |left| left.min(t.ping_interval))
        };
        let tick = tokio::time::sleep(first);
        tokio::pin!(tick);
        // Created once, not per loop turn: a fresh `cancelled()` future would register with the
        // token shared by every connection (a global lock) on every wake-up.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let closing = outbox.closing();
        tokio::pin!(closing);
        let mut shutdown_seen = false;
        let mut pending: Option<Pending> = None;

        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled, if !shutdown_seen => {
                    shutdown_seen = true;
                    outbox.close(role.shutdown_reason());
                }
                _ = &mut closing, if !c.closing => {
                    c.closing = true;
                    let reason = outbox.close_reason().unwrap_or(CloseReason::GoingAway);
                    let limit = if reason.is_shutdown() {
                        timing().shutdown_timeout
                    } else {
                        timing().close_timeout
                    };
                    // From here on the keep-alive timer is the closing deadline.
                    tick.as_mut().reset(Instant::now() + limit);
                }
                w = &mut write, if !c.close_sent => {
                    c.close_sent = true;
                    let reason = outbox.close_reason().unwrap_or(CloseReason::GoingAway);
                    match w {
                        Ok(()) if c.peer_closed || !reason.awaits_peer() => break Ending::Closed(reason),
                        // Our Close is out: keep reading until the peer's Close or EOF, for
                        // at most the close timeout (the shutdown timeout was for draining
                        // what was queued; a peer that does not answer a Close, such as
                        // websocat with its input open, must not hold a shutdown for it).
                        Ok(()) => {
                            let answer_by = Instant::now() + timing().close_timeout;
                            if answer_by < tick.deadline() {
                                tick.as_mut().reset(answer_by);
                            }
                        }
                        Err(e) => break Ending::Io(e),
                    }
                }
                r = rd.next(&mut reader), if c.reading && pending.is_none() => {
                    // Handle the whole burst already read, then write what it produced: frames
                    // published together leave together.
                    c.burst_started = std::time::Instant::now();
                    let step = c.on_read(r, &mut rd);
                    if let Some(ending) = c.drain(step, &mut rd, &mut pending) {
                        break ending;
                    }
                }
                pre = async {
                    match pending.as_mut() {
                        Some(p) => p.0.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if pending.is_some() => {
                    // The fetch or hook a command waited for: the command now, then the rest of
                    // the burst. Meanwhile the connection read nothing more (its commands keep
                    // their order) but kept writing, pinging and closing.
                    c.burst_started = std::time::Instant::now();
                    if let Some(p) = pending.take().filter(|_| !c.closing) {
                        c.command_prefetched(&p.1, pre);
                    }
                    if let Some(ending) = c.drain(Step::Continue, &mut rd, &mut pending) {
                        break ending;
                    }
                }
                _ = &mut tick => {
                    if c.closing {
                        break Ending::TimedOut(outbox.close_reason().unwrap_or(CloseReason::GoingAway));
                    }
                    let now = Instant::now();
                    let silent = now.duration_since(c.last_seen);
                    // A refresh moves the deadline: read it anew each time.
                    let t = timing();
                    let token = token_left(&role, t.token_leeway);
                    if token.is_some_and(|t| t.is_zero()) {
                        tracing::debug!("closing: token expired");
                        outbox.close(CloseReason::TokenExpired);
                    } else if silent >= t.idle_timeout {
                        tracing::debug!(?silent, "closing: idle timeout");
                        outbox.close(CloseReason::IdleTimeout);
                    } else {
                        let r = outbox.push_control(Bytes::from_static(PING));
                        c.queued(r);
                        c.flush();
                        let next = (now + t.ping_interval).min(c.last_seen + t.idle_timeout);
                        tick.as_mut().reset(token.map_or(next, |t| (now + t).min(next)));
                    }
                }
            }
        }
    };
    c.flush();
    drop(c);
    // Close the socket before announcing the departure.
    outbox.detach();
    drop(reader);
    match &role {
        Role::Hub { hub, entry } => hub.unregister(entry, ending.outcome()),
        Role::Pusher {
            hub,
            entry,
            session,
        } => hub.pusher_closed(entry, session, ending.outcome()),
        Role::Echo(_) | Role::Refused(_) => {}
    }
    ending
}
