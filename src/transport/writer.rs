//! A connection's writer: writes what the outbox hands it when the socket could not take
//! everything at once (or when there is no write-through socket), waiting for writability
//! without holding anyone else up.
//!
//! It is a poll, driven by the connection's task, not a future of its own: an idle writer holds
//! an empty queue and a flag, nothing more (a future would keep its wait state in every idle
//! connection).
//!
//! Server frames are already encoded (header and payload in one shared buffer), so writing is
//! one system call for up to [`MAX_SLICES`] frames (see [`write_batch`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;

use crate::frame::Frame;
use crate::outbox::{advance, fill_slices, write_batch, Outbox, Take, MAX_SLICES};

/// Where a writer writes: a generic async writer, or the TCP socket it shares with the
/// outbox's write-through path.
pub(crate) trait FrameWrite {
    /// Writes some of the front frames of `batch`; returns how many bytes.
    fn poll_write_some(
        &mut self,
        cx: &mut Context<'_>,
        batch: &VecDeque<Frame>,
    ) -> Poll<io::Result<usize>>;
    /// Pushes out what the transport buffered (TLS records).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Flushes and half-closes after the Close frame.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Any `AsyncWrite` (TLS, an embedding application's transport).
pub(crate) struct Generic<W>(pub W);

impl<W: AsyncWrite + Unpin> FrameWrite for Generic<W> {
    fn poll_write_some(
        &mut self,
        cx: &mut Context<'_>,
        batch: &VecDeque<Frame>,
    ) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let k = fill_slices(batch, &mut slices);
        Pin::new(&mut self.0).poll_write_vectored(cx, &slices[..k])
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The plain TCP socket, shared with the outbox for write-through.
pub(crate) struct Direct(pub Arc<OwnedWriteHalf>);

impl FrameWrite for Direct {
    fn poll_write_some(
        &mut self,
        cx: &mut Context<'_>,
        batch: &VecDeque<Frame>,
    ) -> Poll<io::Result<usize>> {
        let tcp: &tokio::net::TcpStream = self.0.as_ref().as_ref();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            let r = write_batch(tcp, batch);
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_finish(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let tcp: &tokio::net::TcpStream = self.0.as_ref().as_ref();
        Poll::Ready(socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write))
    }
}

/// What the writer is doing. The frames it owns are boxed: only a connection whose socket
/// pushed back has any, and an idle writer is then one word and a tag.
// Boxed on purpose: a `VecDeque` is four words in every idle connection's task, a box one.
#[allow(clippy::box_collection)]
enum Job {
    /// Waiting for the outbox to hand it work.
    Idle,
    /// Writing frames it owns the socket for; `partial`: the front one is partly written.
    Frames {
        batch: Box<VecDeque<Frame>>,
        partial: bool,
    },
    /// Writing the Close frame, then half-closing.
    Close(Box<VecDeque<Frame>>),
    /// Everything, the Close frame included, is written.
    Done,
}

/// A connection's writer state.
pub(crate) struct Writer<W> {
    w: W,
    job: Job,
}

impl<W: FrameWrite> Writer<W> {
    pub(crate) fn new(w: W) -> Self {
        Self { w, job: Job::Idle }
    }

    /// Writes what the outbox hands over until its Close frame is written; `Ready(Ok(()))`
    /// once it is and the write side is shut down. Registers the task with the outbox while
    /// idle.
    ///
    /// # Errors
    /// Any I/O error from the socket; the connection is then finished.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, outbox: &Outbox) -> Poll<io::Result<()>> {
        loop {
            match &mut self.job {
                Job::Done => return Poll::Ready(Ok(())),
                Job::Idle => {
                    let mut batch = VecDeque::new();
                    self.job = match ready!(outbox.poll_take(cx, &mut batch)) {
                        Take::Frames(partial) => Job::Frames {
                            batch: Box::new(batch),
                            partial,
                        },
                        Take::Close(frame) => {
                            batch.push_back(frame);
                            Job::Close(Box::new(batch))
                        }
                        Take::Finished => Job::Done,
                    };
                }
                Job::Frames { batch, partial } => {
                    ready!(write_all(cx, &mut self.w, batch, partial, Some(outbox)))?;
                    ready!(self.w.poll_flush(cx))?;
                    self.job = Job::Idle;
                    outbox.release();
                }
                Job::Close(batch) => {
                    ready!(write_all(cx, &mut self.w, batch, &mut false, None))?;
                    // Half-close: the peer sees our Close, then EOF; its own Close can still
                    // arrive. A failure here changes nothing for the peer.
                    let _ = ready!(self.w.poll_finish(cx));
                    self.job = Job::Done;
                }
            }
        }
    }
}

/// Writes every frame of `batch` (`partial`: the front one is partly written). When `outbox`
/// says its backlog is to be discarded (a slow consumer), frames not yet started are dropped; a
/// frame already half on the wire is finished so that the Close frame that follows is not
/// corrupted.
fn write_all<W: FrameWrite>(
    cx: &mut Context<'_>,
    w: &mut W,
    batch: &mut VecDeque<Frame>,
    partial: &mut bool,
    outbox: Option<&Outbox>,
) -> Poll<io::Result<()>> {
    while !batch.is_empty() {
        if let Some(o) = outbox.filter(|o| o.discarding()) {
            o.drop_after(batch, usize::from(*partial));
            if batch.is_empty() {
                break;
            }
        }
        let written = ready!(w.poll_write_some(cx, batch))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        if let Some(o) = outbox {
            o.wrote(written);
        }
        *partial = advance(batch, written);
    }
    Poll::Ready(Ok(()))
}
