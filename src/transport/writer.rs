//! A connection's writer: takes everything queued in its outbox and writes it in one go.
//!
//! Server frames are already encoded (header and payload in one shared buffer), so writing is
//! a vectored write of up to [`MAX_SLICES`] frames per system call; a burst of broadcasts to a
//! connection costs one `writev`, not one `send` per frame.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;

use bytes::Buf;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::frame::Frame;
use crate::outbox::{Outbox, Take};

/// Frames handed to one vectored write (Linux accepts up to 1024 iovecs).
const MAX_SLICES: usize = 64;

/// Writes the outbox's frames until its Close frame is written.
///
/// Returns `Ok(())` once the Close frame is written and the write side shut down.
///
/// # Errors
/// Any I/O error from the socket; the connection is then finished.
pub(crate) async fn drive<W: AsyncWrite + Unpin>(w: &mut W, outbox: &Outbox) -> io::Result<()> {
    let mut batch: VecDeque<Frame> = VecDeque::new();
    loop {
        match outbox.take(&mut batch).await {
            Take::Frames => {
                write_batch(w, &mut batch, Some(outbox)).await?;
                // A burst leaves a large deque behind; an idle connection should hold none.
                if batch.capacity() > 16 {
                    batch = VecDeque::new();
                }
            }
            Take::Close(frame) => {
                batch.push_back(frame);
                write_batch(w, &mut batch, None).await?;
                // Half-close: the peer sees our Close, then EOF; its own Close can still arrive.
                let _ = w.shutdown().await;
                return Ok(());
            }
            Take::Finished => return Ok(()),
        }
    }
}

/// Writes every frame of `batch`. When `outbox` says its backlog is to be discarded (a slow
/// consumer), frames not yet started are dropped; a frame already half on the wire is finished
/// so that the Close frame that follows is not corrupted.
async fn write_batch<W: AsyncWrite + Unpin>(
    w: &mut W,
    batch: &mut VecDeque<Frame>,
    outbox: Option<&Outbox>,
) -> io::Result<()> {
    let mut front_started = false;
    while !batch.is_empty() {
        if outbox.is_some_and(Outbox::discarding) {
            batch.truncate(usize::from(front_started));
            if batch.is_empty() {
                break;
            }
        }
        let written = poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for (slot, frame) in slices.iter_mut().zip(batch.iter()) {
                *slot = IoSlice::new(frame);
                n += 1;
            }
            Pin::new(&mut *w).poll_write_vectored(cx, &slices[..n])
        })
        .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while left > 0 {
            let Some(front) = batch.front_mut() else {
                break;
            };
            if left >= front.len() {
                left -= front.len();
                batch.pop_front();
                front_started = false;
            } else {
                front.advance(left);
                left = 0;
                front_started = true;
            }
        }
    }
    w.flush().await
}
