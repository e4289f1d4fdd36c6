//! Watchlist events: a signed-in user whose `user_data` has a `watchlist` (user ids) is told
//! `online`/`offline` as those users come and go, across the cluster, for apps that enable it
//! (`watchlist_events`, as Pusher's app setting).
//!
//! A user is online while the cluster has a subscriber of its own channel
//! (`#server-to-user-<id>`), which Pusher's client libraries subscribe to right after a
//! sign-in. That channel's count is cluster-wide and applied on every node in the bus's order
//! (`occupancy_changed`), so each node tells its own watchers: nothing more travels. Right after
//! `pusher:signin_success` a watcher gets the current status of everyone it watches.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Session, UserKey};
use crate::hub::{Hub, HubCork};
use crate::id::ConnId;
use crate::protocol::pusher::{self, USER_CHANNEL};

/// Users one watchlist may name; the rest are ignored (every node keeps the index).
pub(crate) const MAX_WATCHLIST: usize = 100;

/// This node's signed-in connections that watch each user: `(app id, user id)` → watchers.
#[derive(Default)]
pub(crate) struct Watchers {
    by_user: Mutex<HashMap<UserKey, Vec<ConnId>>>,
}

/// The user ids of a `watchlist` (strings or numbers; anything else is skipped), at most
/// [`MAX_WATCHLIST`], without repeats.
pub(super) fn parse(list: Option<&[serde_json::Value]>) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for v in list.unwrap_or_default() {
        let id = match v {
            serde_json::Value::String(s) if !s.is_empty() => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => continue,
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
        if ids.len() == MAX_WATCHLIST {
            break;
        }
    }
    ids
}

impl Hub {
    /// `me` (signed in on `session`) now watches `list`: indexed, then told who is online.
    pub(super) fn watch(
        &self,
        me: ConnId,
        session: &Session,
        list: Vec<String>,
        cork: &mut HubCork,
    ) {
        let app = &session.app;
        if !app.watchlist_events || list.is_empty() {
            return;
        }
        let app_id: Arc<str> = Arc::from(app.id.as_str());
        {
            let mut all = self.shared.protocols.pusher.watchers.by_user.lock();
            for user in &list {
                all.entry((app_id.clone(), user.clone()))
                    .or_default()
                    .push(me);
            }
        }
        let (online, offline): (Vec<&str>, Vec<&str>) =
            list.iter().map(String::as_str).partition(|u| {
                let stream = self.apps().stream_of(app, &format!("{USER_CHANNEL}{u}"));
                self.shared.cluster.occupancy.count(&stream) > 0
            });
        let mut events = Vec::new();
        if !online.is_empty() {
            events.push(("online", online));
        }
        if !offline.is_empty() {
            events.push(("offline", offline));
        }
        self.to_pusher(me, pusher::watchlist_events(&events), cork);
        session.with(|s| s.watchlist = list);
    }

    /// `me` watches nothing any more (it left, or signed in again).
    pub(super) fn unwatch(&self, me: ConnId, session: &Session) {
        let list = session.with(|s| std::mem::take(&mut s.watchlist));
        if list.is_empty() {
            return;
        }
        let app_id: Arc<str> = Arc::from(session.app.id.as_str());
        let mut all = self.shared.protocols.pusher.watchers.by_user.lock();
        for user in list {
            let key = (app_id.clone(), user);
            if let Some(w) = all.get_mut(&key) {
                w.retain(|c| *c != me);
                if w.is_empty() {
                    all.remove(&key);
                }
            }
        }
    }

    /// The cluster's subscribers of `stream` went from `before` to `after` (on every node): if
    /// it is a user's own channel, that user came online (`0 → n`) or went offline (`n → 0`),
    /// and this node's watchers of it are told.
    pub(crate) fn watched_user_changed(&self, stream: &str, before: usize, after: usize) {
        let name = if before == 0 && after > 0 {
            "online"
        } else if before > 0 && after == 0 {
            "offline"
        } else {
            return;
        };
        let Some((app, channel)) = self.apps().channel_of(stream) else {
            return;
        };
        let Some(user) = channel.strip_prefix(USER_CHANNEL) else {
            return;
        };
        if !app.watchlist_events {
            return;
        }
        let watchers = {
            let all = self.shared.protocols.pusher.watchers.by_user.lock();
            match all.get(&(Arc::from(app.id.as_str()), user.to_owned())) {
                Some(w) => w.clone(),
                None => return,
            }
        };
        let frame = pusher::watchlist_events(&[(name, vec![user])]);
        let mut cork = HubCork::new();
        for id in watchers {
            self.send_corked(id, &frame, &mut cork);
        }
        cork.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_watchlist_keeps_string_and_number_ids_once_and_at_most_its_bound() {
        let list = [
            json!("a"),
            json!(7),
            json!("a"),
            json!(""),
            json!(null),
            json!({"id": "b"}),
            json!(["c"]),
            json!(true),
        ];
        assert_eq!(parse(Some(&list)), ["a", "7"]);
        assert!(parse(None).is_empty());
        let many: Vec<_> = (0..1000).map(|i| json!(i)).collect();
        let kept = parse(Some(&many));
        assert_eq!(kept.len(), MAX_WATCHLIST);
        assert_eq!(kept[0], "0");
    }
}
