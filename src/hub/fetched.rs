//! What a command waits for before it is handled: fetched with no lock held (the shared
//! history for a recovering join, the target of a `send`, a cache channel's last event, an
//! authorization hook's decision), then handed to the command.
//!
//! The types only, shared by who fetches (`recovery`, `authorize`, Pusher's subscribe) and
//! who applies (`commands`): a leaf among the hub's modules, so none of them imports another
//! for them.

use std::time::Duration;

use serde_json::value::RawValue;

use super::HubError;
use crate::frame::Frame;

/// The fetch a command waits for (boxed: rare, and kept out of the connection task's own
/// size).
pub(crate) type PrefetchFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Fetched> + Send>>;

/// What a command needed from the backplane, fetched before it is handled.
pub(crate) enum Fetched {
    /// For a `join`: what the recovery needs from the shared history.
    Stream(Option<Prefetch>),
    /// For a `send`: how many connections the target has in the cluster.
    Target(Option<usize>),
    /// For a Pusher subscription to a cache channel: its last event, as Pusher clients get it.
    Cache(Option<Frame>),
    /// An authorization hook's decision, then what the command needs next (a join's
    /// recovery).
    Hooked(Decision, Option<Box<Fetched>>),
}

/// What a recovery needs from the shared history, fetched before any lock is taken.
pub(crate) struct Prefetch {
    /// The stream's shared epoch and last offset, when this node had not seen it.
    pub(super) position: Option<crate::history::Position>,
    /// Publications this node does not keep: offset, age, frame; oldest first.
    pub(super) older: Vec<(u64, Duration, Frame)>,
}

/// What a hook decided about a command.
pub(crate) enum Decision {
    /// Allowed; for a `publish`, the message the backend put in its place.
    Allowed(Option<Box<RawValue>>),
    /// Refused: the error to answer with.
    Refused(HubError),
}
