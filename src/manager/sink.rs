//! What the registry delivers to: a connection's sink, the outcome of offering it a frame, and
//! a publication's frames per protocol.

use crate::close::CloseReason;
use crate::frame::Frame;

use super::policy::Tag;

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The queue is at capacity (in frames or in bytes): the connection does not read fast
    /// enough.
    #[error("outbound queue full")]
    Full,
    /// The connection is closing or closed.
    #[error("connection closed")]
    Closed,
}

/// What a sink did with a frame it was offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued; a writer already owns the socket, or the writer task was woken.
    Done,
    /// Queued into an idle outbox with an attached socket: call the sink's `flush` once the
    /// frames published together are all pushed.
    NeedsFlush,
}

/// Where the registry delivers frames for one connection.
pub trait Sink: Send + Sync + 'static {
    /// Offers a frame without waiting. [`Queued::NeedsFlush`] asks the caller to call
    /// [`flush`](Self::flush) once everything published together has been offered.
    ///
    /// # Errors
    /// [`SendError::Full`] when the connection cannot keep up, [`SendError::Closed`] when it is
    /// gone.
    fn try_send(&self, frame: &Frame) -> Result<Queued, SendError>;

    /// Offers a group's message under a delivery policy ([`Tag`]); a sink that knows no
    /// policies treats it as [`try_send`](Self::try_send).
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send), when the policy could not make room.
    fn try_send_tagged(
        &self,
        frame: &Frame,
        _tag: &Tag,
        _protocol: Protocol,
    ) -> Result<Queued, SendError> {
        self.try_send(frame)
    }

    /// Starts writing what was offered (see [`Queued::NeedsFlush`]).
    fn flush(&self) {}

    /// Asks the connection to close with `reason`.
    fn close(&self, reason: CloseReason);

    /// Whether the connection still accepts frames.
    fn is_open(&self) -> bool;
}

/// Which protocol a connection speaks (each gets its own frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// No subprotocol: plain mode (docs/PROTOCOL.md: global join/leave announcements).
    Plain,
    /// `wshub.v1`: commands with acks; join/leave announcements scoped to groups.
    V1,
    /// The Pusher Channels protocol (`/app/{key}`): only channel events reach it.
    Pusher,
}

/// A publication's frames, one per protocol: what each recipient gets, or `None` when the
/// publication is not for connections of that protocol. Encoded when first asked for, once
/// per publication (not once per recipient).
pub trait Frames {
    /// The frame for connections speaking `protocol`.
    fn frame_for(&self, protocol: Protocol) -> Option<&Frame>;
}

/// One frame for everyone but Pusher connections (which only get channel events in their
/// own format).
impl Frames for Frame {
    fn frame_for(&self, protocol: Protocol) -> Option<&Frame> {
        (protocol != Protocol::Pusher).then_some(self)
    }
}
