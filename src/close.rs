//! Why the server closes a connection, and the close code each reason puts on the wire.
//!
//! The codes are a contract clients can rely on:
//!
//! | reason | code | queued frames |
//! |---|---|---|
//! | [`CloseReason::Normal`] (the peer closed first) | 1000 (or the peer's code, echoed) | delivered first |
//! | [`CloseReason::Disconnected`] (`DELETE /api/connections/{id}`) | the code asked for (1000 by default) | delivered first |
//! | [`CloseReason::GoingAway`] (server shutdown, plain clients) | 1001 | delivered first, within the shutdown deadline |
//! | [`CloseReason::Restarting`] (server shutdown: `wshub.v1` clients get 1012, Pusher clients 4200, both "reconnect now") | 1012 / 4200 | delivered first, within the shutdown deadline |
//! | [`CloseReason::IdleTimeout`] (no frame within the idle timeout) | 1001 | dropped |
//! | [`CloseReason::Protocol`] (RFC 6455 violation) | 1002 | delivered first |
//! | [`CloseReason::InvalidUtf8`] | 1007 | delivered first |
//! | [`CloseReason::BadCompression`] (a `permessage-deflate` message that does not inflate) | 1007 | delivered first |
//! | [`CloseReason::SlowConsumer`] (outbound queue overflowed) | 1008 | dropped |
//! | [`CloseReason::RateLimited`] (inbound rate limit, when set to close) | 1008 | delivered first |
//! | [`CloseReason::TooBig`] (message over the size limit) | 1009 | delivered first |
//! | [`CloseReason::TokenExpired`] (its JWT expired, no `refresh` in time) | 4401 | delivered first |
//! | [`CloseReason::TokenRefused`] (a `refresh` refused) | 4401 | delivered first |

use crate::frame::{self, DecodeError, Frame};

/// Why a connection is being closed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// A normal closure; carries the code to send (the peer's own code when echoing its Close).
    Normal(u16),
    /// Closed through the API, with the code and reason it asked for.
    Disconnected {
        /// 1000, or an application code 3000–4999.
        code: u16,
        /// The reason text (at most 123 bytes are sent).
        reason: std::sync::Arc<str>,
    },
    /// The server is shutting down.
    GoingAway,
    /// The server is shutting down and the client should reconnect at once, elsewhere: 1012
    /// ("service restart") for `wshub.v1`, 4200 (the protocol's reconnect-now code) for Pusher.
    Restarting(u16),
    /// The peer sent nothing (not even a Pong) within the idle timeout.
    IdleTimeout,
    /// The peer broke RFC 6455 framing.
    Protocol(&'static str),
    /// A text message or close reason was not valid UTF-8.
    InvalidUtf8,
    /// A compressed message was not valid DEFLATE data.
    BadCompression,
    /// The connection's outbound queue overflowed: it does not read fast enough.
    SlowConsumer,
    /// The client sent messages faster than its rate limit (with `--rate-limit-action close`).
    RateLimited,
    /// A message exceeded the maximum message size.
    TooBig,
    /// The connection's token expired (and no `refresh` came in time).
    TokenExpired,
    /// A `refresh` was refused, or the user's tokens were revoked.
    TokenRefused,
}

impl CloseReason {
    /// Whether this is the server's own shutdown (its queues get the shutdown deadline).
    pub fn is_shutdown(&self) -> bool {
        matches!(self, CloseReason::GoingAway | CloseReason::Restarting(_))
    }

    /// The close code sent to the peer.
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::Normal(code) => *code,
            CloseReason::Disconnected { code, .. } => *code,
            CloseReason::GoingAway | CloseReason::IdleTimeout => 1001,
            CloseReason::Restarting(code) => *code,
            CloseReason::Protocol(_) => 1002,
            CloseReason::InvalidUtf8 | CloseReason::BadCompression => 1007,
            CloseReason::SlowConsumer | CloseReason::RateLimited => 1008,
            CloseReason::TooBig => 1009,
            CloseReason::TokenExpired | CloseReason::TokenRefused => 4401,
        }
    }

    /// The reason text sent to the peer.
    pub fn text(&self) -> &str {
        match self {
            CloseReason::Normal(_) => "",
            CloseReason::Disconnected { reason, .. } => reason,
            CloseReason::GoingAway => "server shutting down",
            CloseReason::Restarting(_) => "service restart: reconnect",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::Protocol(why) => why,
            CloseReason::InvalidUtf8 => "invalid UTF-8 in text message",
            CloseReason::BadCompression => "invalid compressed data",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::RateLimited => "rate limit exceeded",
            CloseReason::TooBig => "message too big",
            CloseReason::TokenExpired => "token expired",
            CloseReason::TokenRefused => "token refused",
        }
    }

    /// Whether frames already queued are delivered before the Close frame. A slow consumer's
    /// backlog is what got it closed, and an idle peer is presumed gone: both are dropped.
    pub fn drains_queue(&self) -> bool {
        !matches!(self, CloseReason::SlowConsumer | CloseReason::IdleTimeout)
    }

    /// Whether to wait for the peer's own Close frame after sending ours. An idle peer has
    /// stopped answering, so waiting for it would only hold the socket open.
    pub fn awaits_peer(&self) -> bool {
        !matches!(self, CloseReason::IdleTimeout)
    }

    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::Normal(_) => "normal",
            CloseReason::Disconnected { .. } => "disconnected",
            CloseReason::GoingAway | CloseReason::Restarting(_) => "shutdown",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Protocol(_) => "protocol_error",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::BadCompression => "bad_compression",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::TooBig => "message_too_big",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::TokenRefused => "token_refused",
        }
    }

    /// The encoded Close frame.
    pub fn frame(&self) -> Frame {
        frame::close_frame(self.code(), self.text())
    }
}

impl From<&DecodeError> for CloseReason {
    fn from(e: &DecodeError) -> Self {
        match e {
            DecodeError::Protocol(why) => CloseReason::Protocol(why),
            DecodeError::InvalidUtf8 => CloseReason::InvalidUtf8,
            DecodeError::BadCompression => CloseReason::BadCompression,
            DecodeError::TooBig { .. } => CloseReason::TooBig,
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.label(), self.code())
    }
}
