//! The one way to publish from outside a connection (the REST API, an embedding
//! application): [`Hub::publish_to`], a [`Target`], a [`Message`] and [`PublishOptions`], on
//! whichever node, a single one or a cluster's.
//!
//! A connection's own commands go through the same internal path (the publication, the
//! backplane or inline numbering, the one `deliver`); this is the entry for everyone else.

use serde_json::value::RawValue;

use super::cluster::NotPublished;
use super::{Hub, PublishOptions};
use crate::backplane::BackplaneError;
use crate::id::ConnId;

/// Where a publication goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Every connection: the all-clients stream (a `server-broadcast` envelope; kept in its
    /// history, with an offset).
    All,
    /// A group's members, on every node: the group's stream (kept in its history, with an
    /// offset, even while the group has no members).
    Group(&'a str),
    /// Every connection of a user, on every node, as a `direct` envelope (not kept).
    User(&'a str),
    /// One connection, on whichever node holds it, as a `direct` envelope (not kept).
    Connection(ConnId),
}

/// What a publication carries.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// Text. To a group, a user or a connection it travels as a JSON string.
    Text(&'a str),
    /// Any JSON value. To everyone (a text envelope) it travels as its JSON text, or as the
    /// string itself when it is a JSON string.
    Json(&'a RawValue),
}

/// What a publication did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Connections it was queued for: counted on a single node, for a user or a connection;
    /// `None` for a stream publication in a cluster (counting would mean asking every node).
    pub recipients: Option<usize>,
    /// Its offset in its stream (`Target::All`, `Target::Group`).
    pub offset: Option<u64>,
    /// A repeat of an idempotency key seen within the window: delivered to no one, `offset`
    /// the first one's.
    pub duplicate: bool,
}

/// Why a publication was not made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// Nothing was published anywhere (the backplane is busy or unreachable): retry here
    /// later or on another node, with the same idempotency key.
    #[error(transparent)]
    NotPublished(#[from] NotPublished),
    /// `Target::Connection`: no node holds that connection.
    #[error("no connection `{0}`")]
    NoSuchConnection(ConnId),
    /// The backplane could not be read to find the recipients.
    #[error(transparent)]
    Unavailable(#[from] BackplaneError),
    /// The message is not valid for the target (text that cannot be carried as JSON).
    #[error("{0}")]
    Invalid(String),
}

impl Hub {
    /// Publishes `message` to `target` with `opts` (the conflation key, the idempotency key
    /// and the TTL apply to group publications), on this node or through the cluster's
    /// backplane: the one publish entry.
    ///
    /// # Errors
    /// [`PublishError`]: nothing published (busy, unreachable), no such connection, the
    /// backplane unreadable, or a message the target cannot carry.
    pub async fn publish_to(
        &self,
        target: Target<'_>,
        message: Message<'_>,
        opts: &PublishOptions,
    ) -> Result<Outcome, PublishError> {
        match target {
            Target::All => {
                let text: std::borrow::Cow<'_, str> = match message {
                    Message::Text(t) => t.into(),
                    Message::Json(v) => match serde_json::from_str::<String>(v.get()) {
                        Ok(s) => s.into(),
                        Err(_) => v.get().into(),
                    },
                };
                let (recipients, offset) = self.broadcast_everywhere(&text).await?;
                Ok(Outcome {
                    recipients,
                    offset: Some(offset),
                    duplicate: false,
                })
            }
            Target::Group(group) => {
                let json = json_of(message)?;
                let done = self.publish_everywhere_with(group, &json, opts).await?;
                Ok(Outcome {
                    recipients: done.recipients,
                    offset: Some(done.offset),
                    duplicate: done.duplicate,
                })
            }
            Target::User(user) => {
                let json = json_of(message)?;
                let n = self.send_to_user_everywhere(user, &json).await?;
                Ok(Outcome {
                    recipients: Some(n),
                    offset: None,
                    duplicate: false,
                })
            }
            Target::Connection(id) => {
                let json = json_of(message)?;
                if self.send_anywhere(id, &json).await? {
                    Ok(Outcome {
                        recipients: Some(1),
                        offset: None,
                        duplicate: false,
                    })
                } else {
                    Err(PublishError::NoSuchConnection(id))
                }
            }
        }
    }
}

/// The message as JSON (text becomes a JSON string).
fn json_of(message: Message<'_>) -> Result<std::borrow::Cow<'_, RawValue>, PublishError> {
    match message {
        Message::Json(v) => Ok(std::borrow::Cow::Borrowed(v)),
        Message::Text(t) => serde_json::value::to_raw_value(t)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| PublishError::Invalid(e.to_string())),
    }
}
