//! Pusher Channels connections (`/app/{key}`): the messages they send, their subscriptions,
//! presence, user sign-in and client events.
//!
//! A Pusher channel is a stream of this hub like any group (see [`crate::apps`]): a
//! subscription is a group membership, an event is a `Publication::Event` that goes through
//! the backplane and the hub's one delivery path like every other publication, encoded once
//! per protocol. What is Pusher's own lives here: the per-connection session and its messages
//! (this file), subscriptions, sign-in and client events (`subscribe`), cluster-wide presence
//! (`presence`), subscription counts (`count`), and what the HTTP API asks of the hub
//! (`server`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::value::RawValue;

use super::{Hub, HubCork, HubEntry, HubError};
use crate::apps::App;
use crate::frame::Frame;
use crate::id::ConnId;
use crate::protocol::pusher::{self, Code};
use presence::Members;

mod count;
mod presence;
mod server;
mod subscribe;
mod watchlist;

/// A Pusher connection's own state, held by its task.
pub(crate) struct Session {
    /// The app it connected to.
    pub app: Arc<App>,
    /// Its connection id (the `socket_id` is made from it).
    id: ConnId,
    /// Made when first needed (most connections never sign in, join a presence channel or
    /// send a client event): an idle connection holds no more than the pointer.
    state: Mutex<Option<Box<SessionState>>>,
}

#[derive(Default)]
struct SessionState {
    /// Presence channels it is a member of: the stream and the user it joined as.
    presence: Vec<(Arc<str>, String)>,
    /// The user it signed in as.
    user: Option<String>,
    /// The users it watches (its sign-in's `watchlist`, when the app has watchlist events).
    watchlist: Vec<String>,
    /// Client-event tokens left, and when they were counted.
    tokens: f64,
    counted: Option<Instant>,
}

impl Session {
    pub(crate) fn new(app: Arc<App>, id: ConnId) -> Self {
        Self {
            app,
            id,
            state: Mutex::new(None),
        }
    }

    /// Its `socket_id`.
    pub(crate) fn socket_id(&self) -> String {
        self.id.socket_id()
    }

    /// Runs `f` on the state, made if needed.
    fn with<R>(&self, f: impl FnOnce(&mut SessionState) -> R) -> R {
        let mut s = self.state.lock();
        f(s.get_or_insert_with(Box::default))
    }

    /// Takes a client-event token (`client_event_rate` a second, as many in a burst).
    fn take_token(&self) -> bool {
        let rate = f64::from(self.app.client_event_rate.max(1));
        self.with(|s| {
            let now = Instant::now();
            s.tokens = match s.counted {
                None => rate,
                Some(then) => (s.tokens + now.duration_since(then).as_secs_f64() * rate).min(rate),
            };
            s.counted = Some(now);
            if s.tokens >= 1.0 {
                s.tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    fn presence_user(&self, stream: &str) -> Option<String> {
        let s = self.state.lock();
        s.as_ref()?
            .presence
            .iter()
            .find(|(g, _)| &**g == stream)
            .map(|(_, u)| u.clone())
    }

    fn user(&self) -> Option<String> {
        self.state.lock().as_ref().and_then(|s| s.user.clone())
    }
}

/// A signed-in user: the app id and the user id.
type UserKey = (Arc<str>, String);

/// What the hub keeps for Pusher connections.
#[derive(Default)]
pub(crate) struct PusherState {
    /// Presence channels by stream: this node's copy of the members of the whole cluster,
    /// kept by applying [`Publication::Presence`] in the bus's order (on a single node, as
    /// they happen).
    pub(in crate::hub) presence: Mutex<HashMap<Arc<str>, Members>>,
    /// When each other node was last heard of (cluster only).
    alive: Mutex<HashMap<Arc<str>, Instant>>,
    /// Signed-in users: `(app id, user id)` → their connections.
    users: Mutex<HashMap<UserKey, Vec<ConnId>>>,
    /// Connections per app id.
    connections: Mutex<HashMap<Arc<str>, usize>>,
    /// Channels whose `subscription_count` was sent lately.
    counts: count::Counts,
    /// This node's watchers of each user.
    watchers: watchlist::Watchers,
}

/// Why a subscription was refused: a `pusher:subscription_error`.
struct Refused {
    kind: &'static str,
    error: String,
    status: u16,
}

impl Refused {
    fn new(kind: &'static str, error: impl Into<String>, status: u16) -> Self {
        Self {
            kind,
            error: error.into(),
            status,
        }
    }
}

impl From<HubError> for Refused {
    fn from(e: HubError) -> Self {
        match e {
            HubError::TooManyGroups(_) => Refused::new("LimitReached", e.to_string(), 403),
            HubError::HubFull(_) => Refused::new("OverCapacity", e.to_string(), 503),
            other => Refused::new("Error", other.to_string(), 500),
        }
    }
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// The hub refused (it keeps as many streams as it may).
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The backplane is not keeping up.
    #[error(transparent)]
    Busy(#[from] super::Busy),
    /// This node cannot reach the backplane (starting, or cut off): nothing was published.
    #[error(transparent)]
    Unreachable(super::NotPublished),
}

/// A presence channel's member, for the HTTP API.
pub struct PresenceUser {
    /// The user id.
    pub id: String,
}

impl Hub {
    /// The hub's apps.
    pub fn apps(&self) -> &crate::apps::Apps {
        &self.shared.config.apps
    }

    /// Admits a Pusher connection of `app`: the app must be enabled and under its connection
    /// limit. Counted until [`pusher_closed`](Self::pusher_closed).
    ///
    /// # Errors
    /// The close code to refuse it with.
    pub(crate) fn pusher_admit(&self, app: &App) -> Result<(), Code> {
        if !app.enabled {
            return Err(Code::AppDisabled);
        }
        let mut counts = self.shared.protocols.pusher.connections.lock();
        let n = counts.entry(Arc::from(app.id.as_str())).or_insert(0);
        if app.max_connections.is_some_and(|max| *n >= max) {
            return Err(Code::OverQuota);
        }
        *n += 1;
        Ok(())
    }

    /// Connections of an app on this node.
    pub fn pusher_connections(&self, app: &str) -> usize {
        self.shared
            .protocols
            .pusher
            .connections
            .lock()
            .get(app)
            .copied()
            .unwrap_or(0)
    }

    /// A Pusher connection ended: its presence memberships and sign-in are undone (members
    /// told), then it is unregistered like any connection.
    pub(crate) fn pusher_closed(
        &self,
        entry: &HubEntry,
        session: &Session,
        reason: (&'static str, u16),
    ) {
        self.unwatch(entry.id, session);
        let (presence, user) = match session.state.lock().take() {
            Some(mut s) => (std::mem::take(&mut s.presence), s.user.take()),
            None => (Vec::new(), None),
        };
        let mut cork = HubCork::new();
        for (stream, user) in presence {
            self.presence_leave(&stream, &user, entry.id, &mut cork);
        }
        if let Some(user) = user {
            let key = (Arc::from(session.app.id.as_str()), user);
            let mut users = self.shared.protocols.pusher.users.lock();
            if let Some(conns) = users.get_mut(&key) {
                conns.retain(|c| *c != entry.id);
                if conns.is_empty() {
                    users.remove(&key);
                }
            }
        }
        {
            let mut counts = self.shared.protocols.pusher.connections.lock();
            if let Some(n) = counts.get_mut(session.app.id.as_str()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(session.app.id.as_str());
                }
            }
        }
        cork.flush();
        self.unregister(entry, reason);
    }

    /// One text message from a Pusher client. Every refusal is answered with the protocol's
    /// own error (`pusher:error`, `pusher:subscription_error`); nothing here closes the
    /// connection.
    ///
    /// In a cluster, a subscription to a cache channel this node has not followed first needs
    /// the channel's last event from the shared history: then nothing is done yet and the fetch
    /// to await (no lock held) is returned; the caller calls again with what it brought.
    pub(crate) fn on_pusher(
        &self,
        me: &HubEntry,
        session: &Session,
        text: &str,
        pre: Option<super::Fetched>,
        cork: &mut HubCork,
    ) -> Option<super::PrefetchFuture> {
        let msg: pusher::ClientMessage<'_> = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                self.count_in(text.len());
                let why = format!("malformed message: {e}");
                self.to_pusher(me.id, pusher::error(Code::Generic, &why), cork);
                return None;
            }
        };
        let data = msg.data.map(RawValue::get);
        if msg.event == "pusher:subscribe" {
            let sub = data.map(serde_json::from_str::<pusher::Subscribe>);
            if let Some(Ok(sub)) = &sub {
                match pre {
                    None => {
                        if let Some(fetch) = self.fetch_cached(session, &sub.channel) {
                            // Counted when it is handled, after the fetch.
                            return Some(fetch);
                        }
                    }
                    Some(super::Fetched::Cache(frame)) => {
                        self.adopt_cached(session, &sub.channel, frame)
                    }
                    Some(_) => {}
                }
            }
            self.count_in(text.len());
            match sub {
                Some(Ok(sub)) => self.pusher_subscribe(me, session, sub, cork),
                _ => self.to_pusher(
                    me.id,
                    pusher::error(
                        Code::Generic,
                        "pusher:subscribe needs data {\"channel\": …, \"auth\": …}",
                    ),
                    cork,
                ),
            }
            return None;
        }
        self.count_in(text.len());
        match &*msg.event {
            "pusher:ping" => self.to_pusher(me.id, pusher::pong(), cork),
            "pusher:pong" => {}
            "pusher:unsubscribe" => {
                if let Some(Ok(u)) = data.map(serde_json::from_str::<pusher::Unsubscribe>) {
                    self.pusher_unsubscribe(me, session, &u.channel, cork);
                }
            }
            "pusher:signin" => match data.map(serde_json::from_str::<pusher::Signin>) {
                Some(Ok(s)) => self.pusher_signin(me, session, s, cork),
                _ => self.to_pusher(
                    me.id,
                    pusher::error(
                        Code::Generic,
                        "pusher:signin needs data {\"auth\": …, \"user_data\": …}",
                    ),
                    cork,
                ),
            },
            name if name.starts_with("client-") => {
                let channel = msg.channel.as_deref().unwrap_or("");
                if let Err((code, why)) =
                    self.client_event(me, session, name, channel, msg.data, cork)
                {
                    self.to_pusher(me.id, pusher::error(code, &why), cork);
                }
            }
            other => {
                let why = format!("unknown event `{other}`");
                self.to_pusher(me.id, pusher::error(Code::Generic, &why), cork);
            }
        }
        None
    }

    /// A frame for one Pusher connection (a reply).
    pub(super) fn to_pusher(&self, id: ConnId, frame: Frame, cork: &mut HubCork) {
        self.send_corked(id, &frame, cork);
    }
}
