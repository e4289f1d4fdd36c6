//! One upgraded WebSocket connection: its reader, its writer, its keep-alive and its closing
//! handshake, run as one task.
//!
//! The task owns the socket. Frames to send arrive through the connection's
//! [`Outbox`](crate::outbox::Outbox), filled by anyone, drained by the writer half of this task;
//! messages received are handed to the [`Role`] (the hub, or the raw echo). Whoever decides the
//! connection must end (a protocol error, the peer's Close, a slow-consumer eviction, a REST
//! disconnect, shutdown) asks the outbox to close; this task then sends the Close frame, waits
//! for the peer's within a deadline, and drops the socket.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::close::CloseReason;
use crate::frame::{self, DecodeError, Decoder, Message, OpCode};
use crate::hub::Hub;
use crate::id::ConnId;
use crate::outbox::{Outbox, SendError};

use super::writer;

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
        /// This connection's id in the hub.
        id: ConnId,
    },
    /// A `/ws/echo` client: every message comes back unchanged.
    Echo,
}

/// Timing and size settings for one connection.
#[derive(Clone, Copy)]
pub(crate) struct Params {
    pub max_message: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub close_timeout: Duration,
    pub shutdown_timeout: Duration,
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
    /// Reads until one message is complete. `Ok(None)` is EOF.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes move from the socket into `self.buf` within a single poll.
    async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Message>, ReadError> {
        loop {
            if self.discard {
                self.buf.clear();
            } else if let Some(msg) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(ReadError::Decode)?
            {
                return Ok(Some(msg));
            }
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                // Nothing partial is pending: hold no buffer while idle.
                self.buf = BytesMut::new();
            }
            let buf = &mut self.buf;
            let n = poll_fn(|cx| {
                let mut chunk = [0u8; READ_CHUNK];
                let mut rb = ReadBuf::new(&mut chunk);
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

/// Runs the connection until it is closed. `preread` holds bytes the HTTP layer read past the
/// upgrade request (a client may send its first frame right behind the handshake).
pub(crate) async fn run<R, W>(
    mut reader: R,
    mut writer: W,
    preread: Bytes,
    outbox: Arc<Outbox>,
    role: Role,
    params: Params,
    shutdown: CancellationToken,
) -> Ending
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rd = Reader {
        decoder: Decoder::new(params.max_message),
        buf: BytesMut::from(&preread[..]),
        discard: false,
    };
    // `preread` is a view into the HTTP layer's 8 KiB read buffer: keeping it would keep that
    // whole buffer alive for the life of the connection.
    drop(preread);
    let ending = {
        let write = writer::drive(&mut writer, &outbox);
        tokio::pin!(write);
        let tick = tokio::time::sleep(params.ping_interval);
        tokio::pin!(tick);
        // Created once, not per loop turn: a fresh `cancelled()` future would register with the
        // token shared by every connection (a global lock) on every wake-up.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let closing = outbox.closing();
        tokio::pin!(closing);

        let mut last_seen = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut shutdown_seen = false;
        let mut reading = true;
        let mut peer_closed = false;
        let mut close_sent = false;

        let ending = loop {
            tokio::select! {
                biased;
                _ = &mut cancelled, if !shutdown_seen => {
                    shutdown_seen = true;
                    outbox.close(CloseReason::GoingAway);
                }
                _ = &mut closing, if deadline.is_none() => {
                    let reason = outbox.close_reason().unwrap_or(CloseReason::GoingAway);
                    let limit = if reason == CloseReason::GoingAway {
                        params.shutdown_timeout
                    } else {
                        params.close_timeout
                    };
                    deadline = Some(Instant::now() + limit);
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    break Ending::TimedOut(outbox.close_reason().unwrap_or(CloseReason::GoingAway));
                }
                w = &mut write, if !close_sent => {
                    close_sent = true;
                    let reason = outbox.close_reason().unwrap_or(CloseReason::GoingAway);
                    match w {
                        Ok(()) if peer_closed || !reason.awaits_peer() => break Ending::Closed(reason),
                        // Our Close is out: keep reading until the peer's Close or EOF.
                        Ok(()) => {}
                        Err(e) => break Ending::Io(e),
                    }
                }
                r = rd.next(&mut reader), if reading => match r {
                    Ok(Some(msg)) => {
                        last_seen = Instant::now();
                        match msg {
                            Message::Text(b) | Message::Binary(b) if deadline.is_some() => drop(b),
                            Message::Text(b) => on_text(&role, &outbox, b),
                            Message::Binary(b) => on_binary(&role, &outbox, b),
                            Message::Ping(p) => {
                                outbox.push_control(frame::encode(OpCode::Pong, &p));
                            }
                            Message::Pong(_) => {}
                            Message::Close(c) => {
                                peer_closed = true;
                                reading = false;
                                let code = c.map_or(1000, |(code, _)| code);
                                // Answer with the peer's code, unless we had asked to close first.
                                outbox.close(CloseReason::Normal(code));
                                if close_sent {
                                    break Ending::Closed(outbox.close_reason().unwrap_or(CloseReason::Normal(code)));
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        if outbox.is_closed() {
                            // EOF after our Close: the peer is done.
                            break Ending::Closed(outbox.close_reason().unwrap_or(CloseReason::Normal(1000)));
                        }
                        break Ending::Dropped;
                    }
                    Err(ReadError::Decode(e)) => {
                        tracing::debug!(error = %e, "closing: bad frame from peer");
                        rd.discard = true;
                        outbox.close(CloseReason::from(&e));
                    }
                    Err(ReadError::Io(e)) => break Ending::Io(e),
                },
                _ = &mut tick, if deadline.is_none() => {
                    let now = Instant::now();
                    let silent = now.duration_since(last_seen);
                    if silent >= params.idle_timeout {
                        tracing::debug!(?silent, "closing: idle timeout");
                        outbox.close(CloseReason::IdleTimeout);
                    } else {
                        outbox.push_control(Bytes::from_static(PING));
                        let next = (now + params.ping_interval).min(last_seen + params.idle_timeout);
                        tick.as_mut().reset(next);
                    }
                }
            }
        };
        ending
    };
    // Close the socket before announcing the departure.
    drop(writer);
    drop(reader);
    if let Role::Hub { hub, id } = &role {
        hub.unregister(*id);
    }
    ending
}

fn on_text(role: &Role, outbox: &Outbox, payload: Bytes) {
    match role {
        Role::Hub { hub, id } => match std::str::from_utf8(&payload) {
            Ok(text) => hub.on_text(*id, text),
            // The decoder validated it; this cannot happen, but never trust that with a panic.
            Err(_) => {
                outbox.close(CloseReason::InvalidUtf8);
            }
        },
        Role::Echo => echo(outbox, frame::encode(OpCode::Text, &payload)),
    }
}

fn on_binary(role: &Role, outbox: &Outbox, payload: Bytes) {
    match role {
        Role::Hub { hub, id } => hub.on_binary(*id, &payload),
        Role::Echo => echo(outbox, frame::encode(OpCode::Binary, &payload)),
    }
}

fn echo(outbox: &Outbox, frame: crate::frame::Frame) {
    if outbox.push(frame) == Err(SendError::Full) {
        outbox.close(CloseReason::SlowConsumer);
    }
}
