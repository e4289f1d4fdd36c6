//! Groups, users and direct messages as the REST API (and embedding applications) use them.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::{Hub, HubCork, HubError};
use crate::close::CloseReason;
use crate::id::ConnId;
use crate::protocol::v1::{self, Target};

impl Hub {
    /// Every group with its member count, sorted by name.
    pub fn groups(&self) -> Vec<(Arc<str>, usize)> {
        self.shared.delivery.manager.groups()
    }

    /// How many connections of this node are members of a group (0: none).
    pub fn group_size(&self, group: &str) -> usize {
        self.shared.delivery.manager.group_size(group).unwrap_or(0)
    }

    /// The ids of a group's members, or `None` when the group does not exist.
    pub fn group_members(&self, group: &str) -> Option<Vec<ConnId>> {
        self.shared
            .delivery
            .manager
            .group_members(group)
            .map(|m| m.iter().map(|e| e.id).collect())
    }

    /// Publishes `message` (any JSON value) to this node's members of a group as a `message`
    /// envelope with no sender; returns how many connections it reached (0 for an unknown
    /// group). A shorthand for a single node: [`publish_to`](Self::publish_to) is the one
    /// entry (any target, every option, the cluster).
    pub fn publish_to_group(&self, group: &str, message: &RawValue) -> usize {
        self.publish_to_group_at(group, message).0
    }

    /// Like [`publish_to_group`](Self::publish_to_group), also returning the message's offset
    /// in the group's stream. The message is kept in the group's history even when the group
    /// has no members right now (they may be reconnecting).
    pub(crate) fn publish_to_group_at(&self, group: &str, message: &RawValue) -> (usize, u64) {
        self.publish_to_group_keyed(group, message, None)
    }

    /// Like [`publish_to_group_at`](Self::publish_to_group_at), with a conflation key (see
    /// `keep-latest` in [`Policy`](crate::manager::policy::Policy)).
    pub(crate) fn publish_to_group_keyed(
        &self,
        group: &str,
        message: &RawValue,
        key: Option<&str>,
    ) -> (usize, u64) {
        let opts = super::PublishOptions {
            key: key.map(str::to_owned),
            ..Default::default()
        };
        self.publish_to_group_with(group, message, &opts)
    }

    /// Like [`publish_to_group_keyed`](Self::publish_to_group_keyed), with every option (an
    /// idempotency key: a repeat within `--idempotency-window` is delivered to no one, its
    /// offset the first one's; a TTL).
    pub(crate) fn publish_to_group_with(
        &self,
        group: &str,
        message: &RawValue,
        opts: &super::PublishOptions,
    ) -> (usize, u64) {
        let started = std::time::Instant::now();
        let mut cork = HubCork::new();
        let sent = self.publish_group(group, None, None, message, opts, &mut cork);
        self.flush(&mut cork, started);
        sent.map_or((0, 0), |(d, offset)| (d.delivered, offset))
    }

    /// Makes sure a group has a stream before publishing to it from outside.
    ///
    /// # Errors
    /// [`TooManyStreams`](crate::history::TooManyStreams) when the hub may keep no more
    /// groups.
    pub fn ensure_group_stream(&self, group: &str) -> Result<(), crate::history::TooManyStreams> {
        let m = &self.shared.delivery.manager;
        self.shared
            .delivery
            .history
            .try_stream(group, |g| m.has_group(g))
            .map(drop)
    }

    /// Sends `message` to one connection as a `direct` envelope; `false` when it is unknown.
    pub fn send_to_connection(&self, id: ConnId, message: &RawValue) -> bool {
        let frame = v1::delivery("direct", None, None, None, None, message);
        self.send_frame(id, &frame)
    }

    /// Sends `message` to every connection of a user; returns how many it reached.
    pub fn send_to_user(&self, user: &str, message: &RawValue) -> usize {
        let mut cork = HubCork::new();
        let n = self.direct(
            Target::User(user.into()),
            None,
            None,
            message,
            None,
            &mut cork,
        );
        cork.flush();
        n
    }

    /// Adds a connection to a group (telling the other members); `Ok(false)` when it already
    /// was a member.
    ///
    /// # Errors
    /// [`HubError`] for an unknown connection, one at its group limit, or a new group the
    /// hub has no room for.
    pub fn add_to_group(&self, id: ConnId, group: &str) -> Result<bool, HubError> {
        let entry = self
            .shared
            .delivery
            .manager
            .get(id)
            .ok_or(HubError::NotFound("no connection with that id"))?;
        let mut cork = HubCork::new();
        let r =
            self.join_and_announce(id, group, entry.info.user.as_deref(), None, None, &mut cork);
        cork.flush();
        r.map(|j| j.changed)
    }

    /// Removes a connection from a group (telling the remaining members); `false` when it was
    /// not a member.
    pub fn remove_from_group(&self, id: ConnId, group: &str) -> bool {
        let Some(entry) = self.shared.delivery.manager.get(id) else {
            return false;
        };
        let mut cork = HubCork::new();
        let r = self.leave_and_announce(id, group, entry.info.user.as_deref(), &mut cork);
        cork.flush();
        r
    }

    /// Closes a connection with a close code (see [`crate::frame::is_valid_close_code`]) and reason; `false` when it
    /// is unknown.
    pub fn close_connection(&self, id: ConnId, code: u16, reason: &str) -> bool {
        self.disconnect(
            id,
            CloseReason::Disconnected {
                code,
                reason: Arc::from(reason),
            },
        )
    }
}
