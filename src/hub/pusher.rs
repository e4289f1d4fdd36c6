//! Pusher Channels connections (`/app/{key}`): the messages they send, their subscriptions,
//! presence, user sign-in and client events.
//!
//! A Pusher channel is a stream of this hub like any group (see [`crate::apps`]): a
//! subscription is a group membership, an event is a [`Publication::Event`] that goes through
//! the backplane and [`Hub::deliver`](super::Hub) like every other publication, encoded once
//! per protocol. What is Pusher's own lives here: presence members (distinct users per
//! channel), users signed in per app, and the per-connection session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::value::RawValue;

use super::{Hub, HubCork, HubEntry, HubError};
use crate::apps::App;
use crate::close::CloseReason;
use crate::frame::Frame;
use crate::id::ConnId;
use crate::manager::Audience;
use crate::protocol::pusher::{self, Channel, Code, Kind};
use crate::wire::Publication;

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

/// A presence channel's members on this node: users, each with its info and connections.
#[derive(Default)]
struct Members {
    users: HashMap<String, Member>,
}

struct Member {
    info: Option<Box<RawValue>>,
    /// Its connections in the channel, anywhere in the cluster: the node and the id.
    conns: Vec<(Arc<str>, ConnId)>,
}

/// A signed-in user: the app id and the user id.
type UserKey = (Arc<str>, String);

/// What the hub keeps for Pusher connections.
#[derive(Default)]
pub(crate) struct PusherState {
    /// Presence channels by stream: this node's copy of the members of the whole cluster,
    /// kept by applying [`Publication::Presence`] in the bus's order (on a single node, as
    /// they happen).
    presence: Mutex<HashMap<Arc<str>, Members>>,
    /// When each other node was last heard of (cluster only).
    alive: Mutex<HashMap<Arc<str>, Instant>>,
    /// Signed-in users: `(app id, user id)` → their connections.
    users: Mutex<HashMap<UserKey, Vec<ConnId>>>,
    /// Connections per app id.
    connections: Mutex<HashMap<Arc<str>, usize>>,
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
        let mut counts = self.shared.pusher.connections.lock();
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
            .pusher
            .connections
            .lock()
            .get(app)
            .copied()
            .unwrap_or(0)
    }

    /// A Pusher connection ended: its presence memberships and sign-in are undone (members
    /// told), then it is unregistered like any connection.
    pub(crate) fn pusher_closed(&self, entry: &HubEntry, session: &Session, reason: &'static str) {
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
            let mut users = self.shared.pusher.users.lock();
            if let Some(conns) = users.get_mut(&key) {
                conns.retain(|c| *c != entry.id);
                if conns.is_empty() {
                    users.remove(&key);
                }
            }
        }
        {
            let mut counts = self.shared.pusher.connections.lock();
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
    pub(crate) fn on_pusher(
        &self,
        me: &HubEntry,
        session: &Session,
        text: &str,
        cork: &mut HubCork,
    ) {
        self.count_in(text.len());
        let msg: pusher::ClientMessage<'_> = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                let why = format!("malformed message: {e}");
                return self.to_pusher(me.id, pusher::error(Code::Generic, &why), cork);
            }
        };
        let data = msg.data.map(RawValue::get);
        match &*msg.event {
            "pusher:ping" => self.to_pusher(me.id, pusher::pong(), cork),
            "pusher:pong" => {}
            "pusher:subscribe" => match data.map(serde_json::from_str::<pusher::Subscribe>) {
                Some(Ok(sub)) => self.pusher_subscribe(me, session, sub, cork),
                _ => self.to_pusher(
                    me.id,
                    pusher::error(
                        Code::Generic,
                        "pusher:subscribe needs data {\"channel\": …, \"auth\": …}",
                    ),
                    cork,
                ),
            },
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
                if let Err(why) = self.client_event(me, session, name, channel, msg.data, cork) {
                    let code = if why.starts_with("rate") {
                        Code::ClientEventRate
                    } else {
                        Code::Generic
                    };
                    self.to_pusher(me.id, pusher::error(code, &why), cork);
                }
            }
            other => {
                let why = format!("unknown event `{other}`");
                self.to_pusher(me.id, pusher::error(Code::Generic, &why), cork);
            }
        }
    }

    /// A frame for one Pusher connection (a reply).
    fn to_pusher(&self, id: ConnId, frame: Frame, cork: &mut HubCork) {
        self.send_corked(id, &frame, cork);
    }

    fn pusher_subscribe(
        &self,
        me: &HubEntry,
        session: &Session,
        sub: pusher::Subscribe,
        cork: &mut HubCork,
    ) {
        let name = sub.channel.as_str();
        let reply = match self.try_subscribe(me, session, &sub, cork) {
            Ok(frames) => frames,
            Err(r) => vec![pusher::subscription_error(name, r.kind, &r.error, r.status)],
        };
        for f in reply {
            self.to_pusher(me.id, f, cork);
        }
    }

    /// Subscribes; the frames to answer with (success, then a cache channel's last event).
    fn try_subscribe(
        &self,
        me: &HubEntry,
        session: &Session,
        sub: &pusher::Subscribe,
        cork: &mut HubCork,
    ) -> Result<Vec<Frame>, Refused> {
        let app = &session.app;
        let name = sub.channel.as_str();
        let channel = Channel::parse(name).ok_or_else(|| {
            Refused::new(
                "InvalidChannel",
                "a channel name is 1 to 200 characters from A-Z a-z 0-9 _ - = @ , . ;",
                400,
            )
        })?;
        let presence = match channel.kind {
            Kind::Public => None,
            Kind::User => {
                let mine = session.user();
                if mine.as_deref() != name.strip_prefix(pusher::USER_CHANNEL) {
                    return Err(Refused::new(
                        "AuthError",
                        "only the signed-in user may subscribe to its own channel",
                        403,
                    ));
                }
                None
            }
            Kind::Private | Kind::Encrypted | Kind::Presence => {
                let data = (channel.kind == Kind::Presence)
                    .then_some(sub.channel_data.as_deref())
                    .flatten();
                if channel.kind == Kind::Presence && data.is_none() {
                    return Err(Refused::new(
                        "AuthError",
                        "a presence channel needs channel_data",
                        400,
                    ));
                }
                let message = crate::signing::channel_message(&session.socket_id(), name, data);
                let auth = sub.auth.as_deref().unwrap_or("");
                if !crate::signing::verify_auth(&app.key, &app.secret, message.as_bytes(), auth) {
                    return Err(Refused::new(
                        "AuthError",
                        format!("invalid signature for `{name}`: expected HMAC-SHA256 of `{message}` with the app secret, as `key:signature`"),
                        401,
                    ));
                }
                match data {
                    Some(d) => {
                        let cd: pusher::ChannelData = serde_json::from_str(d).map_err(|e| {
                            Refused::new("AuthError", format!("channel_data: {e}"), 400)
                        })?;
                        let user = cd.user_id().ok_or_else(|| {
                            Refused::new(
                                "AuthError",
                                "channel_data.user_id is a non-empty string or a number",
                                400,
                            )
                        })?;
                        Some((user, cd.user_info))
                    }
                    None => None,
                }
            }
        };
        let stream = self.apps().stream_of(app, name);
        if let Some((user, _)) = &presence {
            let members = self.shared.pusher.presence.lock();
            let m = members.get(stream.as_str());
            let count = m.map_or(0, |m| m.users.len());
            let known = m.is_some_and(|m| m.users.contains_key(user));
            if !known && count >= app.max_presence_members {
                return Err(Refused::new(
                    "LimitReached",
                    format!(
                        "presence channel `{name}` has its maximum of {} members",
                        app.max_presence_members
                    ),
                    403,
                ));
            }
        }
        let short = me.id.short();
        let joined = self.join_and_announce(me.id, &stream, &short, None, None, None, cork)?;
        let mut frames = Vec::with_capacity(2);
        match presence {
            Some((user, info)) if joined.changed => {
                // The answer (the members, this one included) and the cache come when the
                // membership is applied: at once on a single node, when the bus brings it
                // back in a cluster (so the list is the cluster's at that point of its order).
                session.with(|s| s.presence.push((Arc::from(stream.as_str()), user.clone())));
                self.publish(
                    Publication::Presence {
                        group: stream,
                        user_id: user,
                        added: true,
                        info,
                        connection: me.id.to_string(),
                        node: self.node_id().to_owned(),
                    },
                    cork,
                );
                return Ok(frames);
            }
            Some(_) => {
                // Already subscribed: the member list again, nothing announced.
                frames.push(self.presence_snapshot(&stream, name));
            }
            None => frames.push(pusher::subscription_succeeded(name)),
        }
        if channel.cache {
            frames.push(self.cached_or_miss(&stream, name));
        }
        Ok(frames)
    }

    /// A cache channel's last event, or `pusher:cache_miss`.
    fn cached_or_miss(&self, stream: &str, channel: &str) -> Frame {
        self.shared
            .history
            .existing(stream)
            .and_then(|s| s.lock().cached().cloned())
            .unwrap_or_else(|| pusher::cache_miss(channel))
    }

    /// Applies a presence change (from this node or another, in the bus's order) to this
    /// node's copy of the members, and tells this node's subscribers what it means: a user's
    /// first connection is `member_added` (to all but that connection), its last is
    /// `member_removed`; the connection that joined, when it is here, gets the member list.
    #[allow(clippy::too_many_arguments)] // the fields of one publication
    pub(crate) fn apply_presence(
        &self,
        group: &str,
        user: &str,
        added: bool,
        info: Option<&RawValue>,
        connection: &str,
        node: &str,
        cork: &mut HubCork,
    ) -> crate::manager::Delivery {
        let Ok(id) = connection.parse::<ConnId>() else {
            return crate::manager::Delivery::default();
        };
        let channel = crate::apps::channel_name(group);
        let node: Arc<str> = Arc::from(node);
        let here = *node == *self.shared.node;
        if !here {
            self.shared
                .pusher
                .alive
                .lock()
                .insert(node.clone(), Instant::now());
        }
        let mut to_joiner = None;
        let changed_user = {
            let mut all = self.shared.pusher.presence.lock();
            if added {
                let members = all.entry(Arc::from(group)).or_default();
                let first = !members.users.contains_key(user);
                let m = members
                    .users
                    .entry(user.to_owned())
                    .or_insert_with(|| Member {
                        info: info.map(|i| i.to_owned()),
                        conns: Vec::new(),
                    });
                let new_conn = !m.conns.iter().any(|(n, c)| *c == id && *n == node);
                if new_conn {
                    m.conns.push((node, id));
                    if here && self.shared.manager.is_member(id, group) {
                        to_joiner = Some(Self::presence_frame(members, channel));
                    }
                }
                first
            } else {
                let Some(members) = all.get_mut(group) else {
                    return crate::manager::Delivery::default();
                };
                let Some(m) = members.users.get_mut(user) else {
                    return crate::manager::Delivery::default();
                };
                m.conns.retain(|(n, c)| !(*c == id && *n == node));
                let last = m.conns.is_empty();
                if last {
                    members.users.remove(user);
                    if members.users.is_empty() {
                        all.remove(group);
                    }
                }
                last
            }
        };
        if let Some(frame) = to_joiner {
            self.to_pusher(id, frame, cork);
            if Channel::parse(channel).is_some_and(|c| c.cache) {
                let cached = self.cached_or_miss(group, channel);
                self.to_pusher(id, cached, cork);
            }
        }
        if !changed_user {
            return crate::manager::Delivery::default();
        }
        let frame = if added {
            pusher::member_added(channel, user, info)
        } else {
            pusher::member_removed(channel, user)
        };
        let audience = if added {
            Audience::GroupExcept(group, id)
        } else {
            Audience::Group(group)
        };
        self.pusher_only(audience, &frame, cork)
    }

    /// Offers a frame to the Pusher connections of an audience only.
    fn pusher_only(
        &self,
        audience: Audience<'_>,
        frame: &Frame,
        cork: &mut HubCork,
    ) -> crate::manager::Delivery {
        struct OnlyPusher<'a>(&'a Frame);
        impl crate::manager::Frames for OnlyPusher<'_> {
            fn frame_for(&self, p: crate::manager::Protocol) -> Option<&Frame> {
                (p == crate::manager::Protocol::Pusher).then_some(self.0)
            }
        }
        let d = self
            .shared
            .manager
            .publish_by_protocol(audience, &OnlyPusher(frame), cork);
        self.shared
            .metrics
            .delivered(frame.len(), d.delivered, d.slow, d.dead);
        d
    }

    fn presence_frame(members: &Members, channel: &str) -> Frame {
        pusher::presence_succeeded(
            channel,
            members.users.iter().map(|(id, m)| pusher::Member {
                id,
                info: m.info.as_deref(),
            }),
        )
    }

    fn presence_snapshot(&self, stream: &str, channel: &str) -> Frame {
        let all = self.shared.pusher.presence.lock();
        match all.get(stream) {
            Some(m) => Self::presence_frame(m, channel),
            None => Self::presence_frame(&Members::default(), channel),
        }
    }

    /// Takes a connection of `user` out of a presence channel, on every node.
    fn presence_leave(&self, stream: &Arc<str>, user: &str, id: ConnId, cork: &mut HubCork) {
        self.publish(
            Publication::Presence {
                group: stream.to_string(),
                user_id: user.to_owned(),
                added: false,
                info: None,
                connection: id.to_string(),
                node: self.node_id().to_owned(),
            },
            cork,
        );
    }

    /// Another node is alive.
    pub(crate) fn node_alive(&self, node: &str) {
        if node != self.node_id() {
            self.shared
                .pusher
                .alive
                .lock()
                .insert(Arc::from(node), Instant::now());
        }
    }

    /// Another node (re)joined the bus, or this one did: this node announces its own presence
    /// members again (applying one twice changes nothing).
    pub(crate) fn resync_presence(&self, _node: &str) {
        let mine: Vec<Publication> = {
            let all = self.shared.pusher.presence.lock();
            all.iter()
                .flat_map(|(group, members)| {
                    members.users.iter().flat_map(move |(user, m)| {
                        m.conns
                            .iter()
                            .filter(|(n, _)| **n == *self.shared.node)
                            .map(move |(_, c)| Publication::Presence {
                                group: group.to_string(),
                                user_id: user.clone(),
                                added: true,
                                info: m.info.clone(),
                                connection: c.to_string(),
                                node: self.node_id().to_owned(),
                            })
                    })
                })
                .collect()
        };
        let mut cork = HubCork::new();
        for p in mine {
            self.publish(p, &mut cork);
        }
        cork.flush();
    }

    /// Forgets the presence members of nodes not heard of for `ttl` (crashed, or cut off):
    /// their users' last connections are `member_removed` here, as on every other node.
    pub(crate) fn forget_silent_nodes(&self, ttl: std::time::Duration) {
        let now = Instant::now();
        let gone: Vec<Arc<str>> = {
            let mut alive = self.shared.pusher.alive.lock();
            let gone = alive
                .iter()
                .filter(|(_, t)| now.duration_since(**t) > ttl)
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>();
            for n in &gone {
                alive.remove(n);
            }
            gone
        };
        if gone.is_empty() {
            return;
        }
        for n in &gone {
            self.shared.occupancy.forget(n);
        }
        let removals: Vec<(String, String, String, String)> = {
            let all = self.shared.pusher.presence.lock();
            all.iter()
                .flat_map(|(g, members)| {
                    members
                        .users
                        .iter()
                        .flat_map(move |(u, m)| m.conns.iter().map(move |(n, c)| (g, u, n, c)))
                })
                .filter(|(_, _, n, _)| gone.contains(n))
                .map(|(g, u, n, c)| (g.to_string(), u.clone(), n.to_string(), c.to_string()))
                .collect()
        };
        tracing::info!(nodes = ?gone, members = removals.len(), "forgetting the presence members of silent nodes");
        let mut cork = HubCork::new();
        for (g, u, n, c) in removals {
            self.apply_presence(&g, &u, false, None, &c, &n, &mut cork);
        }
        cork.flush();
    }

    fn pusher_unsubscribe(&self, me: &HubEntry, session: &Session, name: &str, cork: &mut HubCork) {
        let stream = self.apps().stream_of(&session.app, name);
        let membership = session.state.lock().as_mut().and_then(|s| {
            let at = s.presence.iter().position(|(g, _)| **g == *stream);
            at.map(|i| s.presence.swap_remove(i))
        });
        if let Some((stream, user)) = membership {
            self.presence_leave(&stream, &user, me.id, cork);
        }
        self.leave_and_announce(me.id, &stream, &me.id.short(), None, cork);
    }

    fn pusher_signin(
        &self,
        me: &HubEntry,
        session: &Session,
        s: pusher::Signin,
        cork: &mut HubCork,
    ) {
        let app = &session.app;
        let refuse = |why: &str| pusher::error(Code::Unauthorized, why);
        if !app.user_authentication {
            return self.to_pusher(
                me.id,
                refuse("user sign-in is turned off for this app"),
                cork,
            );
        }
        let message = crate::signing::user_message(&session.socket_id(), &s.user_data);
        if !crate::signing::verify_auth(&app.key, &app.secret, message.as_bytes(), &s.auth) {
            return self.to_pusher(me.id, refuse("invalid signature for pusher:signin"), cork);
        }
        #[derive(serde::Deserialize)]
        struct UserData {
            id: serde_json::Value,
        }
        let id = match serde_json::from_str::<UserData>(&s.user_data).map(|u| u.id) {
            Ok(serde_json::Value::String(s)) if !s.is_empty() => s,
            Ok(serde_json::Value::Number(n)) => n.to_string(),
            _ => {
                return self.to_pusher(
                    me.id,
                    refuse("user_data is a JSON object with a non-empty `id`"),
                    cork,
                )
            }
        };
        let previous = session.with(|st| st.user.replace(id.clone()));
        let mut users = self.shared.pusher.users.lock();
        if let Some(prev) = previous {
            let key = (Arc::from(app.id.as_str()), prev);
            if let Some(conns) = users.get_mut(&key) {
                conns.retain(|c| *c != me.id);
                if conns.is_empty() {
                    users.remove(&key);
                }
            }
        }
        users
            .entry((Arc::from(app.id.as_str()), id))
            .or_default()
            .push(me.id);
        drop(users);
        self.to_pusher(me.id, pusher::signin_success(&s.user_data), cork);
    }

    /// A `client-` event: relayed to the channel's other subscribers on every node.
    fn client_event(
        &self,
        me: &HubEntry,
        session: &Session,
        name: &str,
        channel: &str,
        data: Option<&RawValue>,
        cork: &mut HubCork,
    ) -> Result<(), String> {
        let app = &session.app;
        if !app.client_events {
            return Err(format!("client events are turned off for app {}", app.id));
        }
        let kind = Channel::parse(channel).ok_or("a client event needs a valid `channel`")?;
        if !kind.allows_client_events() {
            return Err(format!(
                "client events go on private- and presence- channels only, not `{channel}`"
            ));
        }
        if name.len() > pusher::MAX_EVENT_NAME {
            return Err("an event name is at most 200 characters".into());
        }
        let stream = self.apps().stream_of(app, channel);
        if !self.shared.manager.is_member(me.id, &stream) {
            return Err(format!("not subscribed to `{channel}`"));
        }
        let data = data.map_or("null", RawValue::get);
        if data.len() > app.max_event_size {
            return Err(format!(
                "event data is {} bytes, above this app's limit of {}",
                data.len(),
                app.max_event_size
            ));
        }
        if !session.take_token() {
            return Err(format!(
                "rate limit: at most {} client events a second",
                app.client_event_rate
            ));
        }
        let data = RawValue::from_string(data.to_owned()).map_err(|e| e.to_string())?;
        let p = Publication::Event {
            user_id: session.presence_user(&stream),
            group: stream,
            event: name.to_owned(),
            data,
            except: Some(me.id.to_string()),
        };
        self.publish(p, cork);
        Ok(())
    }

    /// Publishes an event on a channel of `app` (the HTTP API's trigger): to every
    /// subscriber on every node but `except`; numbered and kept like any group message.
    ///
    /// # Errors
    /// [`TriggerError`] when the hub may keep no more streams, or the backplane's queue is
    /// full (nothing was published).
    pub fn trigger(
        &self,
        app: &App,
        channel: &str,
        event: &str,
        data: Box<RawValue>,
        except: Option<ConnId>,
    ) -> Result<(), TriggerError> {
        let stream = self.apps().stream_of(app, channel);
        self.ensure_group_stream(&stream).map_err(HubError::from)?;
        let started = std::time::Instant::now();
        let mut cork = HubCork::new();
        let p = Publication::Event {
            group: stream,
            event: event.to_owned(),
            data,
            user_id: None,
            except: except.map(|e| e.to_string()),
        };
        match self.cluster() {
            Some(c) if c.accepts_publications() => {
                if c.publish_and_forget(p).is_err() {
                    self.backplane_event("queue_full");
                    return Err(TriggerError::Busy(super::Busy));
                }
            }
            _ => {
                self.publish(p, &mut cork);
            }
        }
        self.flush(&mut cork, started);
        Ok(())
    }

    /// Subscribers of a channel of `app`, on every node.
    pub fn subscription_count(&self, app: &App, channel: &str) -> usize {
        let stream = self.apps().stream_of(app, channel);
        self.shared.occupancy.count(&stream)
    }

    /// The users of a presence channel of `app`, on every node.
    pub fn presence_users(&self, app: &App, channel: &str) -> Vec<PresenceUser> {
        let stream = self.apps().stream_of(app, channel);
        let all = self.shared.pusher.presence.lock();
        let mut users: Vec<PresenceUser> = all
            .get(stream.as_str())
            .map(|m| {
                m.users
                    .keys()
                    .map(|id| PresenceUser { id: id.clone() })
                    .collect()
            })
            .unwrap_or_default();
        users.sort_by(|a, b| a.id.cmp(&b.id));
        users
    }

    /// The occupied channels of `app` on every node, with their subscriber counts.
    pub fn app_channels(&self, app: &App) -> Vec<(String, usize)> {
        let apps = self.apps();
        self.shared
            .occupancy
            .all()
            .into_iter()
            .filter_map(|(g, n)| {
                let (a, c) = apps.channel_of(&g)?;
                (a.id == app.id && n > 0).then(|| (c.to_owned(), n))
            })
            .collect()
    }

    /// Closes every connection of `user` signed in to `app`, on every node.
    pub fn terminate_user(&self, app: &App, user: &str) {
        let p = Publication::Terminate {
            app: app.id.clone(),
            user: user.to_owned(),
        };
        let mut cork = HubCork::new();
        self.publish(p, &mut cork);
        cork.flush();
    }

    /// Closes this node's connections of `user` signed in to `app` (4009).
    pub(crate) fn terminate_here(&self, app: &str, user: &str) {
        let conns = self
            .shared
            .pusher
            .users
            .lock()
            .get(&(Arc::from(app), user.to_owned()))
            .cloned()
            .unwrap_or_default();
        for id in conns {
            self.disconnect(
                id,
                CloseReason::Disconnected {
                    code: Code::Unauthorized.get(),
                    reason: Arc::from("terminated by the app"),
                },
            );
        }
    }
}
