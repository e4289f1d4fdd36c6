//! The `wshub.v1` subprotocol: client commands (JSON objects with a client-chosen `id`) and
//! the server's envelopes. `docs/PROTOCOL.md` is the reference for client authors.

use serde::Serialize;

mod command;
mod frames;

pub use command::{command_id, parse, Command, Rejected, Target};
pub use frames::{
    ack, ack_with, delivery, error, gap, membership, reset, welcome, AckExtra, Delivery,
    StreamState,
};

/// Error codes of `error` replies, a contract for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object.
    Malformed,
    /// `type` names no command.
    UnknownCommand,
    /// A field is missing or has the wrong type.
    Invalid,
    /// The group name breaks the naming rules.
    InvalidGroup,
    /// Publishing to a group the connection is not a member of.
    NotMember,
    /// The connection's token does not allow this group.
    Forbidden,
    /// No such connection, or the user has no connections.
    NotFound,
    /// The connection is in as many groups as allowed.
    TooManyGroups,
    /// Binary frames carry no commands in `wshub.v1`.
    BinaryUnsupported,
    /// The message was dropped: the connection sends faster than its rate limit.
    RateLimited,
    /// The hub keeps as many groups as it may (`--max-groups`): no new group now.
    HubFull,
    /// The authorization hook did not answer usably: refused (fail-closed); try again later.
    Unavailable,
    /// The backplane is not keeping up (`--publish-queue` publications wait for it): nothing
    /// was published; retry shortly.
    Busy,
    /// A `refresh` token was refused (bad signature, expired, another user, revoked): the
    /// connection is closed after this error (4401).
    InvalidToken,
}
