//! The `join` and `publish` authorization hooks of `wshub.v1` commands: asked before the
//! command is handled (the connection's later commands wait, keeping their order; nobody else
//! does), their decision handed to the command with what else it fetched.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::fetched::{Decision, Fetched, PrefetchFuture};
use super::{Hub, HubEntry, HubError};
use crate::hooks::Verdict;
use crate::protocol::v1::Command;

/// A hook's verdict as a command's decision (`allowed` says what an allowance carries).
fn decide<T>(v: Verdict<T>, allowed: impl FnOnce(T) -> Option<Box<RawValue>>) -> Decision {
    match v {
        Verdict::Allow(t) => Decision::Allowed(allowed(t)),
        Verdict::Deny { reason, .. } => Decision::Refused(HubError::Denied(reason)),
        Verdict::Failed { .. } => Decision::Refused(HubError::Unavailable),
    }
}

impl Hub {
    /// The hook `cmd` needs answered before it is handled, as a future to await (no lock
    /// held): a `join` or `publish` to a group a hook covers. Not asked for what the hub
    /// refuses by itself (a group the token forbids, a publish by a non-member).
    pub(super) fn hook_for(&self, me: &HubEntry, cmd: &Command<'_>) -> Option<PrefetchFuture> {
        let hooks = self.hooks();
        let hub = self.clone();
        let conn = me.id.to_string();
        let user = me.info.user.clone();
        match cmd {
            Command::Join { group, since } => {
                if !hooks.asks_join(group) || !me.may_join(group) {
                    return None;
                }
                let (group, since) = (group.to_string(), since.clone());
                Some(Box::pin(async move {
                    let verdict = hub.hooks().join(&conn, user.as_deref(), &group).await;
                    let decision = decide(verdict, |()| None);
                    let then = match decision {
                        Decision::Allowed(_) => {
                            let join = Command::Join {
                                group: Cow::Borrowed(&group),
                                since,
                            };
                            match hub.fetch_for(&join) {
                                Some(fetch) => Some(Box::new(fetch.await)),
                                None => None,
                            }
                        }
                        Decision::Refused(_) => None,
                    };
                    Fetched::Hooked(decision, then)
                }))
            }
            Command::Publish { group, message, .. } => {
                if !hooks.asks_publish(group)
                    || !self.shared.delivery.manager.is_member(me.id, group)
                {
                    return None;
                }
                let (group, message) = (group.to_string(), (*message).to_owned());
                Some(Box::pin(async move {
                    let verdict = hub
                        .hooks()
                        .publish(&conn, user.as_deref(), &group, &message)
                        .await;
                    Fetched::Hooked(decide(verdict, |replaced| replaced), None)
                }))
            }
            _ => None,
        }
    }
}
