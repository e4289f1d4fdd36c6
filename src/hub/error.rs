//! What a hub operation can refuse, typed: mapped once to a `wshub.v1` error code (here) and
//! once to an HTTP problem (in the REST API).

use crate::protocol::v1::ErrorCode;

/// Why the hub refused an operation. The message is for people; the variant is the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// No such connection (here, or anywhere in the cluster), or a user with none.
    #[error("{0}")]
    NotFound(&'static str),
    /// The connection's token does not allow this group.
    #[error("this connection's token does not allow group `{0}`")]
    Forbidden(String),
    /// Publishing to a group the connection is not a member of.
    #[error("join `{0}` before publishing to it")]
    NotMember(String),
    /// The connection is in as many groups as it may be.
    #[error("too many groups for one connection (limit {0})")]
    TooManyGroups(usize),
    /// The hub keeps as many groups as it may.
    #[error("the hub keeps as many groups as it may ({0}); try again later")]
    HubFull(usize),
    /// The application's backend refused it (an authorization hook), with its reason.
    #[error("refused: {0}")]
    Denied(String),
    /// The authorization hook gave no usable answer: refused (fail-closed).
    #[error("authorization unavailable; try again later")]
    Unavailable,
    /// The backplane is not keeping up: the publication was not accepted.
    #[error("the backplane is not keeping up: nothing was published; retry shortly")]
    Busy,
    /// A `refresh` token was refused: the connection is closed after the error.
    #[error("{0}")]
    TokenRefused(String),
    /// A command this connection or server cannot use (a `refresh` without token checks).
    #[error("{0}")]
    Invalid(&'static str),
}

impl HubError {
    /// The `wshub.v1` error code of this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            HubError::NotFound(_) => ErrorCode::NotFound,
            HubError::Forbidden(_) => ErrorCode::Forbidden,
            HubError::NotMember(_) => ErrorCode::NotMember,
            HubError::TooManyGroups(_) => ErrorCode::TooManyGroups,
            HubError::HubFull(_) => ErrorCode::HubFull,
            HubError::Denied(_) => ErrorCode::Forbidden,
            HubError::Unavailable => ErrorCode::Unavailable,
            HubError::Busy => ErrorCode::Busy,
            HubError::TokenRefused(_) => ErrorCode::InvalidToken,
            HubError::Invalid(_) => ErrorCode::Invalid,
        }
    }
}

impl From<crate::manager::JoinError> for HubError {
    fn from(e: crate::manager::JoinError) -> Self {
        match e {
            crate::manager::JoinError::Unknown => HubError::NotFound("connection is gone"),
            crate::manager::JoinError::TooManyGroups(n) => HubError::TooManyGroups(n),
        }
    }
}

impl From<crate::history::TooManyStreams> for HubError {
    fn from(e: crate::history::TooManyStreams) -> Self {
        HubError::HubFull(e.0)
    }
}
