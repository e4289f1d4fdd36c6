//! Subscribing and unsubscribing, signing in, and client events.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::{Refused, Session};
use crate::frame::Frame;
use crate::hub::{Hub, HubCork, HubEntry};
use crate::protocol::pusher::{self, Channel, Code, Kind};
use crate::wire::Publication;

impl Hub {
    /// In a cluster: the fetch of a cache channel's last event from the shared history, when
    /// this node keeps none for it and has not followed the channel (it started after the
    /// event). Decided without I/O.
    pub(super) fn fetch_cached(
        &self,
        session: &Session,
        channel: &str,
    ) -> Option<crate::hub::PrefetchFuture> {
        let c = self.shared_bus()?.clone();
        if !Channel::parse(channel).is_some_and(|k| k.cache) {
            return None;
        }
        let stream = self.apps().stream_of(&session.app, channel);
        let known = self
            .shared
            .delivery
            .history
            .existing(&stream)
            .is_some_and(|s| {
                let s = s.lock();
                s.cached().is_some() || !s.is_cold()
            });
        if known {
            return None;
        }
        let keep = self.shared.config.history.ttl;
        Some(Box::pin(async move {
            let name = crate::wire::StreamName::Group(&stream);
            let engine = c.engine();
            let last = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                let (_, top) = engine.meta(name, keep).await?;
                if top == 0 {
                    return Ok(None);
                }
                let stored = engine.range(name, top, top).await?;
                Ok::<_, crate::backplane::BackplaneError>(stored.into_iter().next())
            })
            .await;
            let frame = match last {
                Ok(Ok(Some(crate::wire::Stored {
                    publication: crate::wire::Publication::Data(d),
                    ..
                }))) => crate::hub::deliver::Encoded::new(&d, None)
                    .pusher()
                    .cloned(),
                Ok(Ok(Some(_))) => None,
                Ok(Ok(None)) => None,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "a cache channel's last event could not be read");
                    None
                }
                Err(_) => None,
            };
            crate::hub::Fetched::Cache(frame)
        }))
    }

    /// Keeps what [`fetch_cached`](Self::fetch_cached) brought, unless an event arrived
    /// meanwhile (that one is newer).
    pub(super) fn adopt_cached(&self, session: &Session, channel: &str, frame: Option<Frame>) {
        let Some(frame) = frame else { return };
        let stream = self.apps().stream_of(&session.app, channel);
        if self.ensure_group_stream(&stream).is_err() {
            return;
        }
        if let Some(s) = self.shared.delivery.history.existing(&stream) {
            let mut s = s.lock();
            if s.cached().is_none() {
                s.set_cached(frame);
            }
        }
    }

    pub(super) fn pusher_subscribe(
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
    pub(super) fn try_subscribe(
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
                if let Some(d) = data.filter(|d| d.len() > app.max_member_size) {
                    return Err(Refused::new(
                        "LimitReached",
                        format!(
                            "channel_data is {} bytes, above this app's limit of {}",
                            d.len(),
                            app.max_member_size
                        ),
                        413,
                    ));
                }
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
            let members = self.shared.protocols.pusher.presence.lock();
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
        let joined = self.join_and_announce(me.id, &stream, None, None, None, cork)?;
        let mut frames = Vec::with_capacity(2);
        match presence {
            Some((user, info)) if joined.changed => {
                // The answer (the members, this one included) and the cache come when the
                // membership is applied: at once on a single node, when the bus brings it
                // back in a cluster (so the list is the cluster's at that point of its order).
                session.with(|s| s.presence.push((Arc::from(stream.as_str()), user.clone())));
                self.publish(
                    Publication::from(crate::wire::PresenceChange {
                        group: stream,
                        user_id: user,
                        added: true,
                        info,
                        connection: me.id.to_string(),
                        node: self.node_id().to_owned(),
                    }),
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
    /// A miss is also told to the app (`cache_miss`), by this node: the subscription is here.
    pub(super) fn cached_or_miss(&self, stream: &str, channel: &str) -> Frame {
        let cached = self
            .shared
            .delivery
            .history
            .existing(stream)
            .and_then(|s| s.lock().cached().cloned());
        cached.unwrap_or_else(|| {
            self.webhook(
                stream,
                "cache_miss",
                |c| serde_json::json!({ "name": "cache_miss", "channel": c }),
            );
            pusher::cache_miss(channel)
        })
    }

    pub(super) fn pusher_unsubscribe(
        &self,
        me: &HubEntry,
        session: &Session,
        name: &str,
        cork: &mut HubCork,
    ) {
        let stream = self.apps().stream_of(&session.app, name);
        let membership = session.state.lock().as_mut().and_then(|s| {
            let at = s.presence.iter().position(|(g, _)| **g == *stream);
            at.map(|i| s.presence.swap_remove(i))
        });
        if let Some((stream, user)) = membership {
            self.presence_leave(&stream, &user, me.id, cork);
        }
        self.leave_and_announce(me.id, &stream, None, cork);
    }

    pub(super) fn pusher_signin(
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
            #[serde(default)]
            watchlist: Option<Vec<serde_json::Value>>,
        }
        let parsed = serde_json::from_str::<UserData>(&s.user_data);
        let watchlist = match &parsed {
            Ok(u) => super::watchlist::parse(u.watchlist.as_deref()),
            Err(_) => Vec::new(),
        };
        let id = match parsed.map(|u| u.id) {
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
        let mut users = self.shared.protocols.pusher.users.lock();
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
        self.unwatch(me.id, session);
        self.watch(me.id, session, watchlist, cork);
    }

    /// A `client-` event: relayed to the channel's other subscribers on every node.
    pub(super) fn client_event(
        &self,
        me: &HubEntry,
        session: &Session,
        name: &str,
        channel: &str,
        data: Option<&RawValue>,
        cork: &mut HubCork,
    ) -> Result<(), (Code, String)> {
        let app = &session.app;
        if !app.client_events {
            return Err(refused(format!(
                "client events are turned off for app {}",
                app.id
            )));
        }
        let kind = Channel::parse(channel)
            .ok_or_else(|| refused("a client event needs a valid `channel`".into()))?;
        if !kind.allows_client_events() {
            return Err(refused(format!(
                "client events go on private- and presence- channels only, not `{channel}`"
            )));
        }
        if name.len() > pusher::MAX_EVENT_NAME {
            return Err(refused("an event name is at most 200 characters".into()));
        }
        let stream = self.apps().stream_of(app, channel);
        if !self.shared.delivery.manager.is_member(me.id, &stream) {
            return Err(refused(format!("not subscribed to `{channel}`")));
        }
        let size = data.map_or(0, |d| d.get().len());
        if size > app.max_event_size {
            return Err(refused(format!(
                "event data is {size} bytes, above this app's limit of {}",
                app.max_event_size
            )));
        }
        if !session.take_token() {
            self.shared
                .metrics
                .drops
                .get_or_create(&crate::metrics::Reason {
                    reason: "client_event_rate",
                })
                .inc();
            return Err((
                Code::ClientEventRate,
                format!(
                    "rate limit: at most {} client events a second",
                    app.client_event_rate
                ),
            ));
        }
        let data = data.map_or_else(null, RawValue::to_owned);
        let user_id = session.presence_user(&stream);
        self.webhook(&stream, "client_event", |channel| {
            let mut e = serde_json::json!({
                "name": "client_event",
                "channel": channel,
                "event": name,
                "data": data.get(),
                "socket_id": session.socket_id(),
            });
            if let Some(u) = &user_id {
                e["user_id"] = serde_json::Value::String(u.clone());
            }
            e
        });
        let p = Publication::from(crate::wire::ChannelEvent {
            user_id,
            group: stream,
            event: name.to_owned(),
            data,
            except: Some(me.id.to_string()),
        });
        self.publish(p, cork);
        Ok(())
    }
}

/// A client event refused for what it is (not for its rate): `pusher:error` 4300.
fn refused(why: String) -> (Code, String) {
    (Code::Generic, why)
}

/// JSON `null`, for a client event without `data`.
fn null() -> Box<RawValue> {
    serde_json::value::to_raw_value(&serde_json::Value::Null).unwrap_or_default()
}
