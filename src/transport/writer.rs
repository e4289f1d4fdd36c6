//! A connection's writer task: writes what the outbox hands it when the socket could not take
//! everything at once (or when there is no write-through socket), waiting for writability
//! without holding anyone else up.
//!
//! Server frames are already encoded (header and payload in one shared buffer), so writing is
//! a vectored write of up to [`MAX_SLICES`] frames per system call.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

use crate::frame::Frame;
use crate::outbox::{advance, fill_slices, Outbox, Take, MAX_SLICES};

/// Where a writer task writes: a generic async writer, or the TCP socket it shares with the
/// outbox's write-through path.
pub(crate) trait FrameWrite {
    /// Writes some of the front frames of `batch`; returns how many bytes.
    async fn write_some(&mut self, batch: &VecDeque<Frame>) -> io::Result<usize>;
    /// Flushes and half-closes after the Close frame.
    async fn finish(&mut self) -> io::Result<()>;
}

/// Any `AsyncWrite` (TLS, an embedding application's transport).
pub(crate) struct Generic<W>(pub W);

impl<W: AsyncWrite + Unpin> FrameWrite for Generic<W> {
    async fn write_some(&mut self, batch: &VecDeque<Frame>) -> io::Result<usize> {
        let n = poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let k = fill_slices(batch, &mut slices);
            Pin::new(&mut self.0).poll_write_vectored(cx, &slices[..k])
        })
        .await?;
        self.0.flush().await?;
        Ok(n)
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

/// The plain TCP socket, shared with the outbox for write-through.
pub(crate) struct Direct(pub Arc<OwnedWriteHalf>);

impl FrameWrite for Direct {
    async fn write_some(&mut self, batch: &VecDeque<Frame>) -> io::Result<usize> {
        loop {
            self.0.writable().await?;
            let r = {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let k = fill_slices(batch, &mut slices);
                self.0.try_write_vectored(&slices[..k])
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    async fn finish(&mut self) -> io::Result<()> {
        let tcp: &tokio::net::TcpStream = self.0.as_ref().as_ref();
        socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write)
    }
}

/// Writes what the outbox hands over until its Close frame is written.
///
/// Returns `Ok(())` once the Close frame is written and the write side shut down.
///
/// # Errors
/// Any I/O error from the socket; the connection is then finished.
pub(crate) async fn drive<W: FrameWrite>(mut w: W, outbox: Arc<Outbox>) -> io::Result<()> {
    let mut batch: VecDeque<Frame> = VecDeque::new();
    loop {
        match outbox.take(&mut batch).await {
            Take::Frames(partial) => {
                // Boxed: only a connection whose socket pushed back gets here, and the state
                // of a write in progress would otherwise be part of every idle connection's
                // task.
                Box::pin(write_batch(&mut w, &mut batch, partial, Some(&outbox))).await?;
                outbox.release();
                // A burst leaves a large deque behind; an idle connection should hold none.
                if batch.capacity() > 16 {
                    batch = VecDeque::new();
                }
            }
            Take::Close(frame) => {
                batch.push_back(frame);
                Box::pin(write_batch(&mut w, &mut batch, false, None)).await?;
                // Half-close: the peer sees our Close, then EOF; its own Close can still arrive.
                let _ = w.finish().await;
                return Ok(());
            }
            Take::Finished => return Ok(()),
        }
    }
}

/// Writes every frame of `batch`. When `outbox` says its backlog is to be discarded (a slow
/// consumer), frames not yet started are dropped; a frame already half on the wire is finished
/// so that the Close frame that follows is not corrupted.
async fn write_batch<W: FrameWrite>(
    w: &mut W,
    batch: &mut VecDeque<Frame>,
    mut partial: bool,
    outbox: Option<&Outbox>,
) -> io::Result<()> {
    while !batch.is_empty() {
        if let Some(o) = outbox.filter(|o| o.discarding()) {
            o.drop_after(batch, usize::from(partial));
            if batch.is_empty() {
                break;
            }
        }
        let written = w.write_some(batch).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if let Some(o) = outbox {
            o.sent(written);
        }
        partial = advance(batch, written);
    }
    Ok(())
}
