//! The token lifecycle of connections authenticated by a JWT: a `refresh` replaces the token
//! before it expires (same user; groups the new token does not allow are left); a connection
//! whose token expires is closed by its task (4401); revocation closes every connection of a
//! user, cluster-wide, and can refuse that user's tokens issued before a time.
//!
//! Revocations are applied by every node from the bus and kept in the backplane (a Redis hash,
//! a NATS key-value bucket on file), which every node reads when it connects: a node started
//! later, or after every other restarted, knows them. Each node keeps at most [`MAX_REVOKED`]
//! users (past it, the oldest revocation goes).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Hub, HubCork, HubEntry, HubError};
use crate::close::CloseReason;
use crate::manager::Grants;
use crate::wire::Publication;

/// Why a revocation did not fully happen.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The backplane cannot take it now: nothing was done.
    #[error(transparent)]
    Busy(super::Busy),
    /// The live nodes applied it, the backplane could not keep it.
    #[error("applied on the live nodes, but the backplane could not keep the revocation: {0}")]
    NotKept(String),
}

/// Users whose tokens are revoked, kept at most.
pub const MAX_REVOKED: usize = 100_000;

/// Per user: tokens issued before this time (Unix seconds) are refused.
#[derive(Default)]
pub(crate) struct Revocations {
    before: Mutex<HashMap<Arc<str>, u64>>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Hub {
    /// Replaces a connection's token (`refresh`): the new one must be valid and name the same
    /// user; what it allows replaces what the old one did, and groups it does not allow are
    /// left (their members told). Returns the new expiry.
    ///
    /// # Errors
    /// [`HubError::Invalid`] when this server checks no tokens; [`HubError::TokenRefused`]
    /// for a token that is not valid, names another user or is revoked (the caller closes the
    /// connection).
    pub(super) fn refresh(
        &self,
        me: &HubEntry,
        token: &str,
        cork: &mut HubCork,
    ) -> Result<Option<u64>, HubError> {
        let auth = self.auth();
        if !auth.requires_token() {
            return Err(HubError::Invalid(
                "this server checks no tokens: there is nothing to refresh",
            ));
        }
        let id = auth.validate(token).map_err(HubError::TokenRefused)?;
        if id.user != me.info.user {
            return Err(HubError::TokenRefused(
                "the new token names another user than this connection's".into(),
            ));
        }
        if self.is_revoked(id.user.as_deref(), id.issued_at) {
            return Err(HubError::TokenRefused(
                "this user's tokens issued before the revocation are refused".into(),
            ));
        }
        let grants = Grants {
            allowed_groups: id.allowed_groups,
            expires_at: id.expires_at,
        };
        me.set_grants(grants.clone());
        let user = me.info.user.as_deref();
        for group in me.groups() {
            if !grants.may_join(&group) {
                self.leave_and_announce(me.id, &group, user, cork);
            }
        }
        Ok(grants.expires_at)
    }

    /// Whether a token of `user` issued at `issued_at` is revoked (one without `iat` is, once
    /// the user's tokens were revoked: its age cannot be told).
    pub fn is_revoked(&self, user: Option<&str>, issued_at: Option<u64>) -> bool {
        let Some(user) = user else { return false };
        let Some(before) = self
            .shared
            .cluster
            .revocations
            .before
            .lock()
            .get(user)
            .copied()
        else {
            return false;
        };
        issued_at.is_none_or(|iat| iat < before)
    }

    /// Closes every connection of `user` on every node with `code` and `reason`; with
    /// `revoke`, that user's tokens issued before now are refused from now on (at connect and
    /// refresh), on every node, and the revocation is kept in the backplane.
    ///
    /// # Errors
    /// [`RevokeError::Busy`] when the backplane cannot take it now (nothing was done);
    /// [`RevokeError::NotKept`] when the live nodes applied it but the backplane could not
    /// keep it (a node that joins later would not know it: try again).
    pub async fn disconnect_user(
        &self,
        user: &str,
        code: u16,
        reason: &str,
        revoke: bool,
    ) -> Result<Option<u64>, RevokeError> {
        let before = revoke.then(now_unix);
        let p = Publication::from(crate::wire::Revoke {
            user: user.to_owned(),
            close: Some((code, reason.to_owned())),
            before,
        });
        let mut cork = HubCork::new();
        match self.shared_bus() {
            Some(c) => c
                .publish_and_forget(p)
                .map_err(|_| RevokeError::Busy(self.busy()))?,
            None => {
                self.deliver(&p, super::deliver::Numbering::None, &mut cork);
            }
        }
        cork.flush();
        if let (Some(at), Some(c)) = (before, self.cluster()) {
            let kept = tokio::time::timeout(
                std::time::Duration::from_secs(3),
                c.engine().revoke(user, at),
            )
            .await;
            match kept {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(RevokeError::NotKept(e.to_string())),
                Err(_) => return Err(RevokeError::NotKept("no answer within 3 s".into())),
            }
        }
        Ok(before)
    }

    /// Reads the revocations the backplane keeps (when this node connects to it).
    pub(crate) fn load_revocations(&self) {
        let Some(c) = self.cluster().cloned() else {
            return;
        };
        let weak = self.downgrade();
        tokio::spawn(async move {
            match c.engine().revocations().await {
                Ok(all) => {
                    let Some(hub) = Hub::upgrade(&weak) else {
                        return;
                    };
                    tracing::debug!(revoked = all.len(), "revocations read from the backplane");
                    for (user, before) in all {
                        hub.apply_revoke(&user, None, Some(before));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revocations could not be read from the backplane")
                }
            }
        });
    }

    /// Applies a [`Publication::Revoke`] on this node: its connections of `user` close, the
    /// revocation is kept.
    pub(crate) fn apply_revoke(
        &self,
        user: &str,
        close: Option<&(u16, String)>,
        before: Option<u64>,
    ) {
        if let Some(before) = before {
            let mut all = self.shared.cluster.revocations.before.lock();
            if all.len() >= MAX_REVOKED && !all.contains_key(user) {
                if let Some(oldest) = all.iter().min_by_key(|(_, t)| **t).map(|(u, _)| u.clone()) {
                    all.remove(&oldest);
                }
            }
            let at = all.entry(Arc::from(user)).or_insert(0);
            *at = (*at).max(before);
        }
        let Some((code, reason)) = close else { return };
        let reason = CloseReason::Disconnected {
            code: *code,
            reason: Arc::from(reason.as_str()),
        };
        for e in self.shared.delivery.manager.user_connections(user) {
            self.disconnect(e.id, reason.clone());
        }
    }
}
