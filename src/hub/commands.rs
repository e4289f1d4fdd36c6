//! `wshub.v1` commands from a connection: parse, check, act through the registry, reply.

use serde_json::value::RawValue;

use super::fetched::{Decision, Fetched, PrefetchFuture};
use super::{Hub, HubCork, HubEntry, HubError};
use crate::history::Position;
use crate::id::ConnId;
use crate::manager::Audience;
use crate::protocol::v1::{self, AckExtra, Command, ErrorCode, Target};
use crate::webhooks::EventType;
use serde_json::json;

/// How a command is answered.
enum Answer {
    /// With this ack, now.
    Now(AckExtra<'static>),
    /// With an ack carrying the offset the backplane gives the publication.
    Numbered(tokio::sync::oneshot::Receiver<Option<crate::history::Position>>),
    /// With an ack carrying a presence page.
    Page(super::PresencePage),
    /// With an ack carrying presence counts.
    Stats(super::PresenceStats),
}

/// What a join did.
pub(crate) struct Joined {
    /// Whether the connection was not a member before.
    pub changed: bool,
    /// The group stream's position when the join took effect.
    pub at: Position,
    /// With `since`: whether everything missed was replayed.
    pub recovered: Option<bool>,
}

impl Hub {
    /// Handles one text frame of a `wshub.v1` connection. Every command gets an `ack` or an
    /// `error` with its `id`; nothing a client sends closes the connection here.
    ///
    /// In a cluster a command may first need the backplane (a `join`'s recovery from the
    /// shared history, a `send`'s target): then nothing is done yet and the fetch to await,
    /// with no lock held, is returned; the caller calls again with what it brought (`pre`).
    /// `None`: the command was handled (always, on a single node).
    pub(crate) fn on_command(
        &self,
        me: &HubEntry,
        text: &str,
        pre: Option<Fetched>,
        cork: &mut HubCork,
    ) -> Option<PrefetchFuture> {
        let parsed = v1::parse(text);
        if let (Ok((_, cmd)), None) = (&parsed, &pre) {
            if let Some(fetch) = self.hook_for(me, cmd).or_else(|| self.fetch_for(cmd)) {
                return Some(fetch);
            }
        }
        self.count_in(text.len());
        let reply = match parsed {
            Ok((id, cmd)) => match self.run(me, cmd, pre, cork) {
                Ok(Answer::Now(extra)) => v1::ack(id, extra),
                Ok(Answer::Page(page)) => v1::ack_with(id, &page),
                Ok(Answer::Stats(stats)) => v1::ack_with(id, &stats),
                Ok(Answer::Numbered(rx)) => {
                    self.ack_when_numbered(me.id, id, rx, cork);
                    return None;
                }
                Err(e) => {
                    if matches!(e, HubError::TokenRefused(_)) {
                        // The error, then the Close (4401): a refused refresh ends the
                        // connection.
                        let reply = v1::error(Some(id), e.code(), &e.to_string());
                        self.reply(me.id, reply, cork);
                        me.sink.close(crate::close::CloseReason::TokenRefused);
                        return None;
                    }
                    v1::error(Some(id), e.code(), &e.to_string())
                }
            },
            Err(rejected) => v1::error(rejected.id, rejected.code, &rejected.message),
        };
        self.reply(me.id, reply, cork);
        None
    }

    /// A publish the backplane is numbering: its ack (with the offset) takes its place among
    /// this connection's replies now and is sent once the offset is known (at most 3 s; then,
    /// or when the message was delivered here only, without it).
    fn ack_when_numbered(
        &self,
        me: crate::id::ConnId,
        id: &RawValue,
        rx: tokio::sync::oneshot::Receiver<Option<crate::history::Position>>,
        cork: &mut HubCork,
    ) {
        let Some(ticket) = self.reserve_reply(me) else {
            self.reply(me, v1::ack(id, AckExtra::default()), cork);
            return;
        };
        let id = id.to_owned();
        let hub = self.clone();
        tokio::spawn(async move {
            let offset = super::anywhere::await_position(rx).await;
            let extra = AckExtra {
                offset: (offset > 0).then_some(offset),
                ..AckExtra::default()
            };
            hub.fill_reply(me, ticket, v1::ack(&id, extra));
        });
    }

    /// A binary frame on a `wshub.v1` connection: not a command.
    pub(crate) fn on_v1_binary(&self, me: &HubEntry, cork: &mut HubCork) {
        let reply = v1::error(
            None,
            ErrorCode::BinaryUnsupported,
            "wshub.v1 commands are JSON text frames",
        );
        self.reply(me.id, reply, cork);
    }

    fn run<'a>(
        &self,
        me: &HubEntry,
        cmd: Command<'a>,
        pre: Option<Fetched>,
        cork: &mut HubCork,
    ) -> Result<Answer, HubError> {
        let short = me.id.short();
        let user = me.info.user.as_deref();
        // An authorization hook's decision comes first, with what else was fetched.
        let (pre, replaced) = match pre {
            Some(Fetched::Hooked(Decision::Refused(e), _)) => return Err(e),
            Some(Fetched::Hooked(Decision::Allowed(replaced), then)) => {
                (then.map(|t| *t), replaced)
            }
            other => (other, None),
        };
        match cmd {
            Command::Join { group, since } => {
                // A private, encrypted or presence channel of the default app is joined only
                // with a token that names it (Pusher clients need a signed authorization for
                // it; a token allowing every group is not one).
                let private =
                    crate::protocol::pusher::Channel::parse(&group).is_some_and(|c| c.needs_auth());
                let grants = me.grants();
                if !grants.may_join(&group) || (private && grants.allowed_groups.is_none()) {
                    return Err(HubError::Forbidden(group.into_owned()));
                }
                let joined = self.join_and_announce(
                    me.id,
                    &group,
                    user,
                    since.as_ref(),
                    match pre {
                        Some(Fetched::Stream(p)) => p,
                        _ => None,
                    },
                    cork,
                )?;
                Ok(Answer::Now(AckExtra {
                    members: self.shared.delivery.manager.group_size(&group),
                    changed: Some(joined.changed),
                    epoch: Some(joined.at.epoch.to_string()),
                    offset: Some(joined.at.offset),
                    recovered: joined.recovered,
                    ..AckExtra::default()
                }))
            }
            Command::Leave { group } => {
                let changed = self.leave_and_announce(me.id, &group, user, cork);
                Ok(Answer::Now(AckExtra {
                    changed: Some(changed),
                    ..AckExtra::default()
                }))
            }
            Command::Publish {
                group,
                message,
                key,
                idempotency_key,
                ttl,
            } => {
                if !self.shared.delivery.manager.is_member(me.id, &group) {
                    return Err(HubError::NotMember(group.into_owned()));
                }
                // The backend's replacement, when its hook gave one.
                let message: &RawValue = replaced.as_deref().unwrap_or(message);
                self.hub_webhook(EventType::MessageReceived, || {
                    json!({
                        "connection": me.id.to_string(),
                        "user": user,
                        "kind": "publish",
                        "group": group,
                        "data": message,
                    })
                });
                let opts = super::PublishOptions {
                    key: key.map(std::borrow::Cow::into_owned),
                    idempotency_key: idempotency_key.map(std::borrow::Cow::into_owned),
                    ttl,
                };
                let once = opts.idempotency_key.as_deref();
                if let Some(k) = once {
                    if let Err(seen) = self.shared.delivery.idempotency.claim(&group, k) {
                        // A repeat: the first one's offset (none yet while it is still on its
                        // way through the bus), delivered to no one.
                        return Ok(Answer::Now(AckExtra {
                            recipients: Some(0),
                            offset: match seen {
                                super::idempotency::Seen::At(o) => Some(o),
                                super::idempotency::Seen::Pending => None,
                            },
                            duplicate: Some(true),
                            ..AckExtra::default()
                        }));
                    }
                }
                if let Some(c) = self.shared_bus() {
                    // The backplane numbers it and brings it back to every node: the ack waits
                    // for the offset; how many it reaches across nodes is not known here.
                    let p = Self::group_publication(&group, Some(&short), user, message, &opts);
                    return match c.publish(p) {
                        Ok(rx) => Ok(Answer::Numbered(rx)),
                        // The engine is not keeping up: refused, nothing published (a
                        // delivery on this node alone would be lost to the others).
                        Err(_) => {
                            if let Some(k) = once {
                                self.shared.delivery.idempotency.release(&group, k);
                            }
                            self.backplane_event("queue_full");
                            Err(HubError::Busy)
                        }
                    };
                }
                let sent = self.publish_group(&group, Some(&short), user, message, &opts, cork);
                Ok(Answer::Now(AckExtra {
                    recipients: sent.as_ref().map(|(d, _)| d.delivered),
                    offset: sent.map(|(_, o)| o).filter(|o| *o > 0),
                    ..AckExtra::default()
                }))
            }
            Command::Send { to, message } => {
                let found = match pre {
                    Some(Fetched::Target(n)) => n,
                    _ => None,
                };
                let target = self
                    .shared
                    .edges
                    .webhooks
                    .hub_wants(EventType::MessageReceived)
                    .then(|| match &to {
                        Target::Connection(c) => json!({ "connection": c }),
                        Target::User(u) => json!({ "user": u }),
                    });
                let n = self.direct(to, Some(&short), user, message, found, cork);
                if n == 0 {
                    return Err(HubError::NotFound("no such connection or user online"));
                }
                self.hub_webhook(EventType::MessageReceived, || {
                    json!({
                        "connection": me.id.to_string(),
                        "user": user,
                        "kind": "send",
                        "to": target,
                        "data": message,
                    })
                });
                Ok(Answer::Now(AckExtra {
                    recipients: Some(n),
                    ..AckExtra::default()
                }))
            }
            Command::Ping => Ok(Answer::Now(AckExtra::default())),
            // Who is in a group: for those who may join it.
            Command::Presence {
                group,
                cursor,
                limit,
            } => {
                if !me.may_join(&group) {
                    return Err(HubError::Forbidden(group.into_owned()));
                }
                Ok(Answer::Page(self.presence(
                    &group,
                    cursor.as_deref(),
                    limit.unwrap_or(super::presence::PAGE),
                )))
            }
            Command::PresenceStats { group } => {
                if !me.may_join(&group) {
                    return Err(HubError::Forbidden(group.into_owned()));
                }
                Ok(Answer::Stats(self.presence_stats(&group)))
            }
            Command::Refresh { token } => {
                let exp = self.refresh(me, &token, cork)?;
                Ok(Answer::Now(AckExtra {
                    exp,
                    ..AckExtra::default()
                }))
            }
        }
    }

    /// Joins `id` to `group` and, when that changed anything, tells the other members. With
    /// `since`, what followed that position is queued for it first, member already or not: a
    /// member that was sent a `gap` (its delivery policy dropped messages it read too slowly)
    /// recovers them this way. Replayed messages it already has are recognised by their
    /// offsets.
    #[allow(clippy::too_many_arguments)] // one per thing a join needs; a struct would only rename them
    pub(super) fn join_and_announce(
        &self,
        id: ConnId,
        group: &str,
        user: Option<&str>,
        since: Option<&Position>,
        pre: Option<super::Prefetch>,
        cork: &mut HubCork,
    ) -> Result<Joined, HubError> {
        let limit = self.shared.config.max_groups_per_connection;
        // A refused join changes nothing: checked before any state is made for the group.
        self.shared.delivery.manager.check_join(id, group, limit)?;
        let stream = self.group_stream(group)?;
        // Joined and replayed under the stream's lock: each publication is in the replay or
        // delivered live, never both, never neither (see `crate::history`).
        let mut s = stream.lock();
        self.apply_prefetch(&mut s, pre);
        let changed = self.shared.delivery.manager.join(id, group, limit)?;
        let at = s.position();
        let mut recovered = None;
        if let Some(since) = since {
            let mut limit = self.replay_limit();
            if !changed {
                // A member recovering a gap: the oldest first (it asks again from where this
                // stops), and no more than its queue has room for now.
                limit.oldest_first = true;
                let queued = self
                    .shared
                    .delivery
                    .manager
                    .get(id)
                    .map_or(0, |e| e.sink.pending_bytes());
                limit.bytes = limit.bytes.saturating_sub(queued);
            }
            let replay = s.replay(since, limit);
            recovered = Some(replay.recovered);
            for frame in &replay.frames {
                self.send_corked(id, frame, cork);
            }
        }
        drop(s);
        if changed {
            self.entry_changed(id);
            let info = self.user_info(id);
            let who = super::Who {
                id,
                user,
                info: info.as_deref(),
            };
            self.membership_event(true, group, who, Some(id), cork);
        }
        Ok(Joined {
            changed,
            at,
            recovered,
        })
    }

    /// A group's stream, made if the hub may keep one more.
    pub(super) fn group_stream(&self, group: &str) -> Result<crate::history::StreamRef, HubError> {
        let m = &self.shared.delivery.manager;
        Ok(self
            .shared
            .delivery
            .history
            .try_stream(group, |g| m.has_group(g))?)
    }

    /// Removes `id` from `group` and, when it was a member, tells the remaining members.
    pub(super) fn leave_and_announce(
        &self,
        id: ConnId,
        group: &str,
        user: Option<&str>,
        cork: &mut HubCork,
    ) -> bool {
        let changed = self.shared.delivery.manager.leave(id, group);
        if changed {
            self.entry_changed(id);
            let info = self.user_info(id);
            let who = super::Who {
                id,
                user,
                info: info.as_deref(),
            };
            self.membership_event(false, group, who, None, cork);
        }
        changed
    }

    /// Sends a `direct` envelope to a connection or to every connection of a user; returns how
    /// many connections it reached.
    pub(super) fn direct(
        &self,
        to: Target<'_>,
        from: Option<&str>,
        user: Option<&str>,
        message: &RawValue,
        found: Option<usize>,
        cork: &mut HubCork,
    ) -> usize {
        if let Some(n) = self.direct_cluster(&to, from, user, message, found, cork) {
            return n;
        }
        let frame = v1::delivery("direct", None, None, from, user, message);
        match to {
            Target::Connection(c) => match c.parse::<ConnId>() {
                Ok(id) => usize::from(self.send_corked(id, &frame, cork)),
                Err(_) => 0,
            },
            Target::User(u) => {
                self.publish_corked(Audience::User(&u), &frame, cork)
                    .delivered
            }
        }
    }
}
