//! One upgraded WebSocket connection: its reader, its writer, its keep-alive and its closing
//! handshake, run as one task.
//!
//! The task owns the socket. Frames to send arrive through the connection's
//! [`Outbox`](crate::outbox::Outbox), filled by anyone, drained by the writer half of this task;
//! messages received are handed to the [`Role`] (the hub, or the raw echo). Whoever decides the
//! connection must end (a protocol error, the peer's Close, a slow-consumer eviction, a REST
//! disconnect, shutdown) asks the outbox to close; this task then sends the Close frame, waits
//! for the peer's within a deadline, and drops the socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

use super::bucket::Bucket;
use super::writer::{FrameWrite, Writer};

use crate::close::CloseReason;
use crate::frame::{self, deflate, DecodeError, Decoder, Frame, Message, OpCode};
use crate::hub::{Hub, HubCork, Peer, RateLimitAction};
use crate::outbox::{Outbox, Queued, SendError};

/// Bytes read from the socket per read call. The buffer lives on the stack of the poll, so an
/// idle connection holds no read buffer at all.
const READ_CHUNK: usize = 8 * 1024;

/// A Ping with no payload, the same bytes for every connection.
static PING: &[u8] = &[0x89, 0x00];

/// What the connection does with the messages it receives.
pub(crate) enum Role {
    /// A client of the hub (`/ws`, `/app/{key}`), whatever protocol its [`Peer`] speaks.
    Peer(Peer),
    /// A `/ws/echo` client: every message comes back unchanged. Holds its place in the
    /// hub's connection count until the task ends.
    Echo(EchoSlot),
    /// A connection refused after the upgrade (a protocol that answers with its own error and
    /// close code, such as Pusher's unknown app key): what was queued is sent, then it closes.
    Refused(Hub),
}

impl Role {
    /// How this connection is closed when the server shuts down (the protocol says).
    fn shutdown_reason(&self) -> CloseReason {
        match self {
            Role::Peer(p) => p.shutdown_reason(),
            Role::Echo(_) | Role::Refused(_) => CloseReason::GoingAway,
        }
    }

    /// The hub the connection belongs to (its metrics, its limits).
    pub(crate) fn hub(&self) -> &Hub {
        match self {
            Role::Peer(p) => p.hub(),
            Role::Refused(hub) => hub,
            Role::Echo(slot) => &slot.0,
        }
    }

    /// The connection's end, told to its protocol (nothing to tell for the others).
    pub(crate) fn closed(&self, outcome: (&'static str, u16)) {
        if let Role::Peer(p) = self {
            p.closed(outcome);
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
    let Role::Peer(p) = role else {
        return None;
    };
    super::session::token_left(p.entry(), leeway)
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
    /// Bytes read and not yet decoded; `None` when there are none (boxed: an idle connection
    /// holds one word for it).
    buf: Option<Box<BytesMut>>,
}

enum ReadError {
    Decode(DecodeError),
    Io(io::Error),
}

impl Reader {
    /// The next message already complete in the buffer, without reading the socket.
    fn buffered(&mut self) -> Result<Option<Message>, ReadError> {
        let Some(buf) = self.buf.as_mut() else {
            return Ok(None);
        };
        if self.decoder.failed() {
            // After a protocol error nothing more is decoded; bytes are read and dropped until
            // EOF so that our Close frame is not lost to a TCP reset.
            self.buf = None;
            return Ok(None);
        }
        let r = self.decoder.decode(buf).map_err(ReadError::Decode);
        if buf.is_empty() {
            // Nothing partial is pending: hold no buffer while idle.
            self.buf = None;
        }
        r
    }

    /// Reads until one message is complete. `Ok(None)` is EOF. Bytes move from the socket
    /// into `self.buf` within a single poll.
    /// `full` is set when a read filled its whole chunk (the socket likely has more).
    fn poll_next<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        full: &mut bool,
    ) -> Poll<Result<Option<Message>, ReadError>> {
        loop {
            match self.buffered() {
                Ok(None) => {}
                r => return Poll::Ready(r),
            }
            // Uninitialised: zeroing 8 KiB for every read showed up in profiles (2.4% of the
            // server's time in the echo benchmark); the reader writes what it fills.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            if let Err(e) = ready!(Pin::new(&mut *r).poll_read(cx, &mut rb)) {
                return Poll::Ready(Err(ReadError::Io(e)));
            }
            if rb.filled().is_empty() {
                return Poll::Ready(Ok(None));
            }
            *full = rb.filled().len() == READ_CHUNK;
            match self.buf.as_mut() {
                Some(buf) => buf.extend_from_slice(rb.filled()),
                None => self.buf = Some(Box::new(BytesMut::from(rb.filled()))),
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

/// The per-connection state a turn works on.
struct Conn {
    outbox: Arc<Outbox>,
    role: Role,
    /// When the peer last sent a frame, on the sweep's clock.
    last_seen: u64,
    reading: bool,
    peer_closed: bool,
    close_sent: bool,
    /// Closing has begun (our Close is queued): data from the peer is no longer dispatched.
    closing: bool,
    /// This connection's own outbox was offered a frame outside the hub (echo, pong).
    own_dirty: bool,
    /// Its input is held now (counted once per hold in `wshub_input_holds_total`).
    held: bool,
    /// The inbound rate limit, when the hub has one (boxed: most connections have none).
    bucket: Option<Box<Bucket>>,
    /// How this connection's own messages (echoes) are compressed, when it negotiated it.
    deflate: Option<deflate::Agreed>,
}

impl Conn {
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

    /// Whether the connection's own output waits (in its outbox, or held behind a reply that
    /// waits for the backplane): then it reads no more for now (see
    /// [`Outbox::input_held`]). Its task is woken when that changes. Never while closing.
    fn input_held(&self) -> bool {
        // Once closing, what the peer sends is read and dropped (its Close is awaited).
        !self.closing
            && (self.outbox.input_held()
                || match &self.role {
                    Role::Peer(p) => p.replies_over_mark(),
                    Role::Echo(_) | Role::Refused(_) => false,
                })
    }

    /// Writes everything the last burst of messages (handled from `burst`) produced.
    /// `cork`: the connections (the hub's, this one included) offered frames and not yet
    /// flushed.
    fn flush(&mut self, burst: std::time::Instant, cork: &mut HubCork) {
        match &self.role {
            Role::Peer(p) => p.hub().flush(cork, burst),
            Role::Echo(_) | Role::Refused(_) => cork.flush(),
        }
        self.flush_own();
    }

    /// Writes what this connection queued for itself (echoes, pongs, pings).
    fn flush_own(&mut self) {
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
        burst: std::time::Instant,
        cork: &mut HubCork,
    ) -> Option<Ending> {
        let mut handled = 0u8;
        loop {
            if let Step::Fetch(fetch, text) = step {
                *pending = Some(Box::new((fetch, text)));
                step = Step::Continue;
                break;
            }
            if !(matches!(step, Step::Continue) && self.reading && !rd.decoder.failed()) {
                break;
            }
            // Its replies wait: the rest stays buffered until the writer catches up. The whole
            // check (a lock) every few messages, the bytes (an atomic) at every one.
            handled = handled.wrapping_add(1);
            if (handled % 8 == 0 || self.outbox.bytes_over_input_mark()) && self.input_held() {
                break;
            }
            match rd.buffered() {
                Ok(None) => break,
                r => step = self.on_read(r, cork),
            }
        }
        self.flush(burst, cork);
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
    fn command_prefetched(&mut self, text: &[u8], pre: crate::hub::Fetched, cork: &mut HubCork) {
        let Ok(text) = std::str::from_utf8(text) else {
            return;
        };
        // With `pre` given, the message is handled now: no second fetch.
        if let Role::Peer(p) = &self.role {
            let _ = p.on_text(text, Some(pre), cork);
        }
    }

    fn on_read(&mut self, r: Result<Option<Message>, ReadError>, cork: &mut HubCork) -> Step {
        match r {
            Ok(Some(msg)) => {
                self.last_seen = self.role.hub().sweep().now();
                self.on_message(msg, cork)
            }
            Ok(None) => Step::End(match self.outbox.close_reason() {
                // EOF after our Close: the peer is done.
                Some(reason) => Ending::Closed(reason),
                None => Ending::Dropped,
            }),
            Err(ReadError::Decode(e)) => {
                tracing::debug!(error = %e, "closing: bad frame from peer");
                self.outbox.close(CloseReason::from(&e));
                Step::Continue
            }
            Err(ReadError::Io(e)) => Step::End(Ending::Io(e)),
        }
    }

    /// An echo: compressed with the window the client allowed when it negotiated
    /// compression and the message is worth it (an echo has one recipient).
    fn echo(&self, opcode: OpCode, payload: &[u8]) -> Frame {
        let hub = self.role.hub();
        hub.config()
            .compression
            .zip(self.deflate)
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
    fn over_limit(&mut self, payload: &[u8], cork: &mut HubCork) {
        self.role
            .hub()
            .metrics()
            .drops
            .get_or_create(&crate::metrics::Reason {
                reason: "rate_limited",
            })
            .inc();
        match (self.bucket.as_ref().map(|b| b.limit.action), &self.role) {
            (Some(RateLimitAction::Close), _) => {
                self.outbox.close(CloseReason::RateLimited);
            }
            (_, Role::Peer(p)) => p.over_limit(payload, cork),
            // A raw echo has no error frame: the message is dropped (and counted).
            (_, Role::Echo(_) | Role::Refused(_)) => {}
        }
    }

    fn on_message(&mut self, msg: Message, cork: &mut HubCork) -> Step {
        match msg {
            Message::Text(b) | Message::Binary(b) if self.closing => drop(b),
            Message::Text(b) | Message::Binary(b) if !self.allowed() => self.over_limit(&b, cork),
            Message::Text(b) => match &self.role {
                Role::Peer(p) => match std::str::from_utf8(&b) {
                    Ok(text) => {
                        if let Some(fetch) = p.on_text(text, None, cork) {
                            return Step::Fetch(fetch, b);
                        }
                    }
                    // The decoder validated it; never trust that with a panic.
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
            Message::Binary(b) => match &self.role {
                Role::Peer(p) => p.on_binary(&b, cork),
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

/// A connection's task: its state, polled by hand (see [`Driver::poll_turn`]) so that what an
/// idle connection holds is exactly these fields: no wait states of its own beside the socket's
/// readiness and the one waker its outbox keeps.
pub(crate) struct Driver<R, W> {
    c: Conn,
    /// The socket's two halves; `None` once the connection ended (the socket is closed).
    io: Option<Io<R, W>>,
    rd: Reader,
    pending: Option<Pending>,
    /// The timer (keep-alive, or the closing deadline) is armed: its time is the outbox's
    /// (`Outbox::due`), which the sweep clears when it fires.
    armed: bool,
    shutdown_seen: bool,
}

struct Io<R, W> {
    reader: R,
    writer: Writer<W>,
}

impl<R: AsyncRead + Unpin, W: FrameWrite + Unpin> Future for Driver<R, W> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(mut io) = this.io.take() else {
            return Poll::Ready(());
        };
        let turn = this.poll_turn(cx, &mut io);
        this.io = Some(io);
        let ending = ready!(turn);
        match &ending {
            Ending::Closed(reason) => tracing::debug!(%reason, "closed"),
            Ending::Dropped => {
                tracing::debug!("peer dropped the connection without a closing handshake")
            }
            Ending::Io(e) => tracing::debug!(error = %e, "socket error"),
            Ending::TimedOut(reason) => tracing::debug!(%reason, "closing handshake timed out"),
        }
        this.finish(&ending);
        Poll::Ready(())
    }
}

impl<R: AsyncRead + Unpin, W: FrameWrite> Driver<R, W> {
    /// One turn: everything that is ready, in order (shutdown, a close request, the writer,
    /// the reader, a command's fetch, the timer), then `Pending` with the task registered
    /// wherever it waits, or the connection's end.
    fn poll_turn(&mut self, cx: &mut Context<'_>, io: &mut Io<R, W>) -> Poll<Ending> {
        // First: any change from now on wakes this task (a change before it was seen below).
        self.c.outbox.register(cx.waker());
        // The connections offered frames by this turn's bursts (flushed after each burst; kept
        // here, not in the connection, so an idle connection holds no cork).
        let mut cork = HubCork::new();
        // Bursts handled in this poll, and whether the last read filled its chunk.
        let mut bursts = 0u8;
        let mut full = false;
        // As long as something was ready: what a burst of commands produced leaves before the
        // next burst is read (on an event loop, at the end of the turn: the task yields).
        loop {
            if let Some(ending) = self.poll_close(cx, io) {
                return Poll::Ready(ending);
            }
            if let Some(p) = self.pending.as_mut() {
                // The fetch or hook a command waited for: the command now, then the rest of
                // the burst. Meanwhile the connection read nothing more (its commands keep
                // their order) but kept writing, pinging and closing.
                let Poll::Ready(pre) = p.0.as_mut().poll(cx) else {
                    break;
                };
                let burst = std::time::Instant::now();
                if let Some(p) = self.pending.take().filter(|_| !self.c.closing) {
                    self.c.command_prefetched(&p.1, pre, &mut cork);
                }
                bursts = bursts.saturating_add(1);
                let ending = self.c.drain(
                    Step::Continue,
                    &mut self.rd,
                    &mut self.pending,
                    burst,
                    &mut cork,
                );
                if let Some(ending) = ending {
                    return Poll::Ready(ending);
                }
                continue;
            }
            if !self.c.reading {
                break;
            }
            if (bursts >= 2 || (bursts == 1 && full)) && crate::event_loops::waiting() {
                // One burst per turn: the writes it asked for go first (see `waiting`). After a
                // short read the next one most likely finds nothing and registers the task,
                // which costs less than another poll: that one is tried, not a third.
                cx.waker().wake_by_ref();
                break;
            }
            if self.c.input_held() {
                // The connection's own output waits to be written: read no more until it is
                // under the mark (the outbox wakes this task then). The peer's sends back up
                // into TCP, which slows it down. Counted once per hold, as HTTP sessions are.
                if !std::mem::replace(&mut self.c.held, true) {
                    self.c.role.hub().metrics().input_holds.inc();
                }
                break;
            }
            self.c.held = false;
            let Poll::Ready(r) = self.rd.poll_next(cx, &mut io.reader, &mut full) else {
                break;
            };
            bursts = bursts.saturating_add(1);
            // Handle the whole burst already read, then write what it produced: frames
            // published together leave together.
            let burst = std::time::Instant::now();
            let step = self.c.on_read(r, &mut cork);
            let ending = self
                .c
                .drain(step, &mut self.rd, &mut self.pending, burst, &mut cork);
            if let Some(ending) = ending {
                return Poll::Ready(ending);
            }
        }
        if self.armed && self.c.outbox.fired() {
            self.armed = false;
            if let Some(ending) = self.tick() {
                return Poll::Ready(ending);
            }
        }
        Poll::Pending
    }

    /// Shutdown, a close request, and the writer: what ends the connection from this side.
    fn poll_close(&mut self, cx: &mut Context<'_>, io: &mut Io<R, W>) -> Option<Ending> {
        let hub = self.c.role.hub();
        if !self.shutdown_seen && hub.shutdown_token().is_cancelled() {
            self.shutdown_seen = true;
            self.c.outbox.close(self.c.role.shutdown_reason());
        }
        if !self.c.closing && self.c.outbox.is_closed() {
            self.c.closing = true;
            let reason = self
                .c
                .outbox
                .close_reason()
                .unwrap_or(CloseReason::GoingAway);
            let t = Timing::of(hub);
            let limit = if reason.is_shutdown() {
                t.shutdown_timeout
            } else {
                t.close_timeout
            };
            // From here on the keep-alive timer is the closing deadline.
            arm(&mut self.armed, &self.c.outbox, hub.sweep().after(limit));
        }
        if self.c.close_sent {
            return None;
        }
        let Poll::Ready(w) = io.writer.poll(cx, &self.c.outbox) else {
            return None;
        };
        self.c.close_sent = true;
        let reason = self
            .c
            .outbox
            .close_reason()
            .unwrap_or(CloseReason::GoingAway);
        match w {
            Ok(()) if self.c.peer_closed || !reason.awaits_peer() => Some(Ending::Closed(reason)),
            // Our Close is out: keep reading until the peer's Close or EOF, for at most the
            // close timeout (the shutdown timeout was for draining what was queued; a peer that
            // does not answer a Close, such as websocat with its input open, must not hold a
            // shutdown for it).
            Ok(()) => {
                let answer_by = hub.sweep().after(Timing::of(hub).close_timeout);
                // Unless the closing deadline already passed (the timer check that follows ends
                // the connection).
                let due = self.c.outbox.due();
                let fired = self.armed && due == u64::MAX;
                if !fired && answer_by < due {
                    arm(&mut self.armed, &self.c.outbox, answer_by);
                }
                None
            }
            Err(e) => Some(Ending::Io(e)),
        }
    }

    /// The timer fired: the closing deadline passed, or it is time to check the token and the
    /// silence, and to ping.
    fn tick(&mut self) -> Option<Ending> {
        let outbox = &self.c.outbox;
        let hub = self.c.role.hub();
        if self.c.closing {
            return Some(Ending::TimedOut(
                outbox.close_reason().unwrap_or(CloseReason::GoingAway),
            ));
        }
        let sweep = hub.sweep();
        let now = sweep.now();
        // While the input is held, bytes the peer took since the last tick count as a sign
        // of life (it reads, we do not).
        let wrote = outbox.wrote_since();
        let held = outbox.input_held();
        if (held && wrote) || (!held && self.c.input_held()) {
            // Not read from because it reads too slowly, but reading; or because its replies
            // wait for the backplane, which is no fault of the client's.
            self.c.last_seen = now;
        }
        let silent = Duration::from_millis(now.saturating_sub(self.c.last_seen));
        // A refresh moves the deadline: read it anew each time.
        let t = Timing::of(hub);
        let token = token_left(&self.c.role, t.token_leeway);
        if token.is_some_and(|t| t.is_zero()) {
            tracing::debug!("closing: token expired");
            outbox.close(CloseReason::TokenExpired);
        } else if held && silent >= t.idle_timeout {
            // Its input held all along and nothing written: a client that sends and never
            // reads. Its budget is pinned no longer than the idle timeout.
            tracing::debug!(?silent, "closing: sends but does not read");
            if outbox.close(CloseReason::SlowConsumer) {
                hub.metrics().slow_consumers.inc();
            }
        } else if silent >= t.idle_timeout {
            tracing::debug!(?silent, "closing: idle timeout");
            outbox.close(CloseReason::IdleTimeout);
        } else {
            let next = sweep
                .after(t.ping_interval)
                .min(self.c.last_seen.saturating_add(millis(t.idle_timeout)));
            let at = token.map_or(next, |t| sweep.after(t).min(next));
            let r = outbox.push_control(Bytes::from_static(PING));
            self.c.queued(r);
            self.c.flush_own();
            arm(&mut self.armed, &self.c.outbox, at);
        }
        // A close requested here is seen on the next turn, which it woke.
        None
    }

    /// After the end: what is left to write goes, the socket closes, then the hub hears of
    /// the departure.
    fn finish(&mut self, ending: &Ending) {
        let c = &mut self.c;
        c.flush_own();
        // Close the socket before announcing the departure.
        c.outbox.detach();
        self.io = None;
        self.pending = None;
        c.role.closed(ending.outcome());
    }
}

/// Arms `outbox`'s timer for `at`.
fn arm(armed: &mut bool, outbox: &Outbox, at: u64) {
    *armed = true;
    outbox.set_due(at);
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The connection, to be run as its own task until it is closed. `w` is the connection's
/// writer (see `writer`); `preread` holds bytes the HTTP layer read past the upgrade request (a
/// client may send its first frame right behind the handshake).
pub(crate) fn run<R, W>(
    reader: R,
    w: W,
    preread: Bytes,
    outbox: Arc<Outbox>,
    role: Role,
    params: Params,
) -> Driver<R, W>
where
    R: AsyncRead + Unpin,
    W: FrameWrite,
{
    let rd = Reader {
        decoder: if params.deflate.is_some() {
            Decoder::with_deflate(params.max_message)
        } else {
            Decoder::new(params.max_message)
        },
        buf: (!preread.is_empty()).then(|| Box::new(BytesMut::from(&preread[..]))),
    };
    // `preread` is a view into the HTTP layer's 8 KiB read buffer: keeping it would keep that
    // whole buffer alive for the life of the connection.
    drop(preread);
    let hub = role.hub().clone();
    hub.sweep().register(outbox.clone());
    let now = hub.sweep().now();
    let c = Conn {
        last_seen: now,
        reading: true,
        peer_closed: false,
        close_sent: false,
        closing: false,
        own_dirty: false,
        held: false,
        bucket: hub
            .config()
            .rate_limit
            .map(|l| Box::new(Bucket::new(l, now))),
        deflate: params.deflate,
        outbox,
        role,
    };
    let mut d = Driver {
        c,
        io: Some(Io {
            reader,
            writer: Writer::new(w),
        }),
        rd,
        pending: None,
        armed: false,
        shutdown_seen: false,
    };
    let t = Timing::of(&hub);
    let first = token_left(&d.c.role, t.token_leeway)
        .map_or(t.ping_interval, |left| left.min(t.ping_interval));
    arm(&mut d.armed, &d.c.outbox, hub.sweep().after(first));
    d
}
