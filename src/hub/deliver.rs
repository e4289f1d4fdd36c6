//! The one delivery path: every publication, whichever node it came from and whatever
//! numbered it, reaches this node's connections through [`Hub::deliver`].
//!
//! A hub publishes through [`Hub::publish`]. On a single node (the memory backplane, a cluster
//! of one) the publication is numbered here, under its stream's lock, and delivered inline:
//! no channel hop. In a cluster it is queued to the backplane, which numbers it and brings it
//! back to every node, this one included, where it is delivered by the same function with the
//! position the engine gave it. While the engine is away (or its queue is full) it is
//! delivered here only, unnumbered: it is not kept in history and has no offset.

use super::{Hub, HubCork};
use crate::backplane::{self, AllKind, Publication, StreamName};
use crate::close::CloseReason;
use crate::envelope::{self, Kind};
use crate::frame::{self, Frame, OpCode};
use crate::id::ConnId;
use crate::manager::{Audience, Delivery, Frames, Protocol};
use crate::protocol::{pusher, v1};
use crate::wire::{Control, Data};
use std::cell::OnceCell;

/// Who numbers a stream publication being delivered.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Numbering<'a> {
    /// This node, now (the memory backplane): the stream's next offset, under its lock.
    Here,
    /// The backplane did: this epoch and offset.
    Given(&'a str, u64),
    /// Nobody (the backplane is away): delivered without an offset, not kept in history.
    None,
}

/// What delivering a publication here did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Published {
    /// The local connections it was offered to, and those that could not take it.
    pub delivery: Delivery,
    /// Its offset in its stream, when it is a stream publication that was numbered.
    pub offset: Option<u64>,
}

/// A publication's frames, one per protocol, each encoded once when a recipient of that
/// protocol first needs it (a group without Pusher subscribers never builds a Pusher frame).
pub(crate) struct Encoded<'p> {
    p: &'p Data,
    offset: Option<u64>,
    plain: OnceCell<Option<Frame>>,
    v1: OnceCell<Option<Frame>>,
    pusher: OnceCell<Option<Frame>>,
    /// A text to everyone, escaped and stamped once for both of its frames.
    body: OnceCell<envelope::Body>,
}

impl<'p> Encoded<'p> {
    pub(crate) fn new(p: &'p Data, offset: Option<u64>) -> Self {
        Self {
            p,
            offset,
            plain: OnceCell::new(),
            v1: OnceCell::new(),
            pusher: OnceCell::new(),
            body: OnceCell::new(),
        }
    }

    /// The frame a `wshub.v1` client gets (what history keeps).
    pub(crate) fn v1(&self) -> Option<&Frame> {
        self.v1.get_or_init(|| self.encode_v1()).as_ref()
    }

    /// The frame a Pusher client gets.
    pub(crate) fn pusher(&self) -> Option<&Frame> {
        self.pusher.get_or_init(|| self.encode_pusher()).as_ref()
    }

    fn encode_v1(&self) -> Option<Frame> {
        Some(match self.p {
            Data::Group(m) => v1::delivery(
                "message",
                Some(&m.group),
                self.offset,
                m.from.as_deref(),
                m.user.as_deref(),
                &m.message,
            ),
            Data::Event(crate::wire::ChannelEvent {
                group,
                event,
                data,
                user_id,
                ..
            }) => {
                #[derive(serde::Serialize)]
                struct Wrapped<'a> {
                    event: &'a str,
                    data: &'a serde_json::value::RawValue,
                }
                let message = serde_json::value::to_raw_value(&Wrapped { event, data }).ok()?;
                v1::delivery(
                    "message",
                    Some(group),
                    self.offset,
                    None,
                    user_id.as_deref(),
                    &message,
                )
            }
            Data::All(m) => match self.offset {
                Some(o) => self.body(&m.from, &m.text).frame(all_kind(m.kind), Some(o)),
                None => return self.encode_plain(),
            },
            Data::Binary(_) | Data::System(_) | Data::User(_) | Data::Direct(_) => return None,
        })
    }

    fn body(&self, from: &Option<String>, text: &str) -> &envelope::Body {
        self.body.get_or_init(|| {
            envelope::Body::new(from.as_deref(), text, std::time::SystemTime::now())
        })
    }

    fn encode_plain(&self) -> Option<Frame> {
        match self.p {
            Data::All(m) => Some(self.body(&m.from, &m.text).frame(all_kind(m.kind), None)),
            // Plain connections in a group (added through the REST API) get what v1 ones get.
            Data::Group(_) | Data::Event(_) => self.v1().cloned(),
            Data::Binary(_) | Data::System(_) | Data::User(_) | Data::Direct(_) => None,
        }
    }

    fn encode_pusher(&self) -> Option<Frame> {
        Some(match self.p {
            Data::Group(m) => pusher::event(
                "message",
                crate::apps::channel_name(&m.group),
                &m.message,
                None,
            ),
            Data::Event(e) => pusher::event(
                &e.event,
                crate::apps::channel_name(&e.group),
                &e.data,
                e.user_id.as_deref(),
            ),
            Data::All(_) | Data::Binary(_) | Data::System(_) | Data::User(_) | Data::Direct(_) => {
                return None
            }
        })
    }

    fn len(&self) -> usize {
        self.v1().or_else(|| self.pusher()).map_or(0, |f| f.len())
    }
}

impl Frames for Encoded<'_> {
    fn frame_for(&self, protocol: Protocol) -> Option<&Frame> {
        match protocol {
            Protocol::Plain => self.plain.get_or_init(|| self.encode_plain()).as_ref(),
            Protocol::V1 => self.v1(),
            Protocol::Pusher => self.pusher(),
        }
    }
}

/// A `direct` envelope (to a user's connections, or to one).
fn direct_frame(
    from: Option<&str>,
    user: Option<&str>,
    message: &serde_json::value::RawValue,
) -> Frame {
    v1::delivery("direct", None, None, from, user, message)
}

fn all_kind(kind: AllKind) -> Kind {
    match kind {
        AllKind::ServerBroadcast => Kind::ServerBroadcast,
        AllKind::Message => Kind::Message,
    }
}

impl Hub {
    /// Publishes through the backplane: numbered and delivered here at once on a single
    /// node (`Some`), queued for every node in a cluster (`None`: delivered when it comes
    /// back), or delivered here only, unnumbered, while the cluster's engine is away or its
    /// queue is full (`Some`).
    pub(crate) fn publish(&self, p: Publication, cork: &mut HubCork) -> Option<Published> {
        match self.cluster() {
            None => Some(self.deliver(&p, Numbering::Here, cork)),
            Some(c) if c.accepts_publications() => match c.publish_and_forget(p) {
                Ok(()) => None,
                Err(full) => Some(self.deliver_queue_full(full, cork)),
            },
            Some(_) => Some(self.deliver(&p, Numbering::None, cork)),
        }
    }

    /// A publication the backplane's queue could not take: delivered on this node only (no
    /// offset, not in history), as during an outage, and counted.
    pub(crate) fn deliver_queue_full(
        &self,
        full: backplane::QueueFull,
        cork: &mut HubCork,
    ) -> Published {
        self.backplane_event("queue_full");
        self.deliver(&full.0, Numbering::None, cork)
    }

    /// Delivers a publication to this node's connections only (the backplane is down).
    pub(crate) fn deliver_local_only(&self, p: &Publication) {
        let started = std::time::Instant::now();
        let mut cork = HubCork::new();
        self.deliver(p, Numbering::None, &mut cork);
        self.flush(&mut cork, started);
    }

    pub(crate) fn stream_ref(&self, stream: StreamName<'_>) -> crate::history::StreamRef {
        match stream {
            StreamName::All => self.shared.delivery.history.all().clone(),
            StreamName::Group(g) => self.shared.delivery.history.stream(g),
        }
    }

    /// The frame of a stream publication as a `wshub.v1` client gets it (for history).
    pub(crate) fn v1_frame(p: &Data, offset: Option<u64>) -> Option<Frame> {
        Encoded::new(p, offset).v1().cloned()
    }

    fn offer(&self, audience: Audience<'_>, frames: &Encoded<'_>, cork: &mut HubCork) -> Delivery {
        self.offer_tagged(audience, frames, None, cork)
    }

    /// Offers a publication's frames, under its group's delivery policy when `tag` says one.
    fn offer_tagged(
        &self,
        audience: Audience<'_>,
        frames: &Encoded<'_>,
        tag: Option<&crate::manager::policy::Tag>,
        cork: &mut HubCork,
    ) -> Delivery {
        let d = self
            .shared
            .delivery
            .manager
            .publish_tagged(audience, frames, tag, cork);
        self.shared
            .metrics
            .delivered(frames.len(), d.delivered, d.slow, d.dead);
        d
    }

    /// Delivers one publication on this node: data to the local connections it is for
    /// ([`deliver_data`](Self::deliver_data)), a control message applied
    /// ([`apply`](Self::apply)).
    pub(crate) fn deliver(
        &self,
        p: &Publication,
        numbering: Numbering<'_>,
        cork: &mut HubCork,
    ) -> Published {
        match p {
            Publication::Data(d) => self.deliver_data(d, numbering, cork),
            Publication::Control(c) => Published {
                delivery: self.apply(c, cork),
                offset: None,
            },
        }
    }

    /// Delivers a message to the local connections it is for. A stream message is numbered
    /// as `numbering` says and recorded in the local history, all under the stream's lock,
    /// then offered to the members before the lock is released: each is either in a
    /// recovering client's replay or delivered to it live, never both (see `crate::history`).
    /// A position already seen (a duplicate from the bus) is dropped.
    fn deliver_data(&self, d: &Data, numbering: Numbering<'_>, cork: &mut HubCork) -> Published {
        if let Some(stream) = d.stream() {
            return self.deliver_to_stream(d, stream, numbering, cork);
        }
        let delivery = match d {
            Data::Binary(b) => {
                self.publish_corked(Audience::All, &frame::encode(OpCode::Binary, &b.data), cork)
            }
            Data::System(m) => self.publish_corked(
                Audience::Plain,
                &envelope::encode(Kind::System, None, &m.text),
                cork,
            ),
            Data::User(m) => {
                let f = direct_frame(m.from.as_deref(), m.user.as_deref(), &m.message);
                self.publish_corked(Audience::User(&m.to), &f, cork)
            }
            Data::Direct(m) => {
                let f = direct_frame(m.from.as_deref(), m.user.as_deref(), &m.message);
                let delivered = match m.to.parse::<ConnId>() {
                    Ok(id) => usize::from(self.send_corked(id, &f, cork)),
                    Err(_) => 0,
                };
                Delivery {
                    delivered,
                    ..Delivery::default()
                }
            }
            // Streams: above.
            Data::Group(_) | Data::All(_) | Data::Event(_) => Delivery::default(),
        };
        Published {
            delivery,
            offset: None,
        }
    }

    /// Applies what another node (or this one) told the cluster: memberships and counts,
    /// presence, settling, revocations, liveness, operations on a local connection. What it
    /// tells clients (`joined`/`left`, `member_added`) is what it delivered.
    fn apply(&self, c: &Control, cork: &mut HubCork) -> Delivery {
        match c {
            Control::Membership(m) => {
                if let Some(node) = &m.node {
                    // Heard from: a node that dies before its first heartbeat reaches us is
                    // still forgotten (and its groups vacated) after the node TTL.
                    self.node_alive(node);
                    let (before, after) = self
                        .shared
                        .cluster
                        .occupancy
                        .change(&m.group, node, m.joined);
                    if before != after {
                        self.occupancy_changed(&m.group, node, before, after);
                    }
                }
                if self.is_silent(&m.group) {
                    // No joined/left events in this group (it is too large for them).
                    return Delivery::default();
                }
                let f = v1::membership(
                    m.joined,
                    &m.group,
                    &m.connection,
                    m.user.as_deref(),
                    m.info.as_deref(),
                );
                match m.except.as_deref().and_then(|e| e.parse::<ConnId>().ok()) {
                    Some(id) => self.publish_corked(Audience::GroupExcept(&m.group, id), &f, cork),
                    None => self.publish_corked(Audience::Group(&m.group), &f, cork),
                }
            }
            Control::Disconnect(d) => {
                if let Ok(id) = d.to.parse::<ConnId>() {
                    self.disconnect(
                        id,
                        CloseReason::Disconnected {
                            code: d.code,
                            reason: std::sync::Arc::from(d.reason.as_str()),
                        },
                    );
                }
                Delivery::default()
            }
            Control::Member(m) => {
                if let Ok(id) = m.to.parse::<ConnId>() {
                    if m.add {
                        let _ = self.add_to_group(id, &m.group);
                    } else {
                        self.remove_from_group(id, &m.group);
                    }
                }
                Delivery::default()
            }
            Control::Presence(p) => {
                self.node_alive(&p.node);
                self.apply_presence(
                    &p.group,
                    &p.user_id,
                    p.added,
                    p.info.as_deref(),
                    &p.connection,
                    &p.node,
                    *p.node == *self.node_id(),
                    cork,
                )
            }
            Control::Revoke(r) => {
                self.apply_revoke(&r.user, r.close.as_ref(), r.before);
                Delivery::default()
            }
            Control::Settle(s) => {
                self.apply_settle(&s.group, s.user.as_deref(), &s.node);
                Delivery::default()
            }
            Control::Alive(a) => {
                self.node_alive(&a.node);
                Delivery::default()
            }
            Control::Resync(r) => {
                self.node_alive(&r.node);
                self.resync_presence(&r.node);
                self.announce_occupancy();
                Delivery::default()
            }
            Control::Occupancy(o) => {
                self.node_alive(&o.node);
                self.shared
                    .cluster
                    .occupancy
                    .replace(&o.node, &o.groups, &o.users, o.first);
                Delivery::default()
            }
            Control::Online(o) => {
                self.node_alive(&o.node);
                self.shared
                    .cluster
                    .occupancy
                    .user_change(&o.user, &o.node, o.online);
                Delivery::default()
            }
            Control::Terminate(t) => {
                self.terminate_here(&t.app, &t.user);
                Delivery::default()
            }
        }
    }

    /// Whether `stream` is a Pusher cache channel (its last event is kept for new subscribers).
    fn is_cache(stream: StreamName<'_>) -> bool {
        match stream {
            StreamName::Group(g) => {
                pusher::Channel::parse(crate::apps::channel_name(g)).is_some_and(|c| c.cache)
            }
            StreamName::All => false,
        }
    }

    /// On a cache channel (`cache`), keeps the event as the channel's last.
    fn keep_cached(s: &mut crate::history::Stream, cache: bool, frames: &Encoded<'_>) {
        if let (true, Some(f)) = (cache, frames.pusher()) {
            s.set_cached(f.clone());
        }
    }

    fn deliver_to_stream(
        &self,
        p: &Data,
        stream: StreamName<'_>,
        numbering: Numbering<'_>,
        cork: &mut HubCork,
    ) -> Published {
        let except = match p {
            Data::Event(e) => e.except.as_deref().and_then(|e| e.parse().ok()),
            _ => None,
        };
        let audience = match (stream, except) {
            (StreamName::All, _) => Audience::All,
            (StreamName::Group(g), Some(id)) => Audience::GroupExcept(g, id),
            (StreamName::Group(g), None) => Audience::Group(g),
        };
        if let Numbering::None = numbering {
            let frames = Encoded::new(p, None);
            if Self::is_cache(stream) {
                let s = self.stream_ref(stream);
                Self::keep_cached(&mut s.lock(), true, &frames);
            }
            return Published {
                delivery: self.offer(audience, &frames, cork),
                offset: None,
            };
        }
        let idem = match p {
            Data::Group(m) => m.idempotency_key.as_deref().map(|k| (m.group.as_str(), k)),
            _ => None,
        };
        let s = self.stream_ref(stream);
        let mut s = s.lock();
        if let (Some((g, k)), Numbering::Here) = (idem, &numbering) {
            // Numbered here: a repeat takes no offset at all.
            if let Some(super::idempotency::Seen::At(first)) =
                self.shared.delivery.idempotency.seen(g, k)
            {
                return Published {
                    delivery: Delivery::default(),
                    offset: Some(first),
                };
            }
        }
        let offset = match numbering {
            Numbering::Given(epoch, offset) => {
                match s.adopt(epoch, offset) {
                    crate::history::Adopted::Duplicate => return Published::default(),
                    crate::history::Adopted::Next => {}
                    crate::history::Adopted::NewEpoch => {
                        // The backplane lost this stream's history (a restart without
                        // persistence): clients' positions mean nothing any more; tell them
                        // where it restarts.
                        let (group, to) = match stream {
                            StreamName::Group(g) => (Some(g), Audience::Group(g)),
                            StreamName::All => (None, Audience::V1),
                        };
                        let f = v1::reset(group, epoch, offset.saturating_sub(1));
                        self.publish_corked(to, &f, cork);
                    }
                }
                offset
            }
            Numbering::Here | Numbering::None => s.next_offset(),
        };
        if let Some((g, k)) = idem {
            // Every node decides here, in the bus's order: the same publication is first
            // everywhere. A repeat that raced the first to the bus keeps its offset unused.
            if let Some(first) = self.shared.delivery.idempotency.deliver(g, k, offset) {
                return Published {
                    delivery: Delivery::default(),
                    offset: Some(first),
                };
            }
        }
        let frames = Encoded::new(p, Some(offset));
        let Some(kept) = frames.v1().cloned() else {
            return Published::default();
        };
        let ttl = match p {
            Data::Group(m) => m.ttl_ms.map(std::time::Duration::from_millis),
            _ => None,
        };
        s.append_for(kept, ttl);
        Self::keep_cached(&mut s, Self::is_cache(stream), &frames);
        let tag = match (stream, p) {
            (StreamName::Group(g), Data::Group(m)) => {
                self.shared
                    .delivery
                    .policies
                    .tag(g, offset, m.key.as_deref(), ttl)
            }
            (StreamName::Group(g), _) => self.shared.delivery.policies.tag(g, offset, None, None),
            (StreamName::All, _) => None,
        };
        let delivery = self.offer_tagged(audience, &frames, tag.as_ref(), cork);
        drop(s);
        self.shared.delivery.history.enforce_budget();
        Published {
            delivery,
            offset: Some(offset),
        }
    }
}
