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
use crate::manager::{Audience, Delivery};
use crate::protocol::v1;

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

/// A publication's frames: one for every recipient, or one per protocol.
enum Frames {
    One(Frame),
    ByProtocol { plain: Frame, v1: Frame },
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
            StreamName::All => self.shared.history.all().clone(),
            StreamName::Group(g) => self.shared.history.stream(g),
        }
    }

    /// The frame of a stream publication as a `wshub.v1` client gets it (for history).
    pub(crate) fn v1_frame(p: &Publication, offset: Option<u64>) -> Option<Frame> {
        Some(match Self::frames(p, offset)? {
            Frames::One(f) | Frames::ByProtocol { v1: f, .. } => f,
        })
    }

    /// Builds the frames of a stream publication, encoded once for every recipient.
    fn frames(p: &Publication, offset: Option<u64>) -> Option<Frames> {
        Some(match p {
            Publication::Group {
                group,
                from,
                user,
                message,
            } => Frames::One(v1::delivery(
                "message",
                Some(group),
                offset,
                from.as_deref(),
                user.as_deref(),
                message,
            )),
            Publication::All { kind, from, text } => {
                let kind = match kind {
                    AllKind::ServerBroadcast => Kind::ServerBroadcast,
                    AllKind::Message => Kind::Message,
                };
                let plain = envelope::encode(kind, from.as_deref(), text);
                match offset {
                    Some(o) => Frames::ByProtocol {
                        plain,
                        v1: envelope::encode_with_offset(kind, from.as_deref(), text, o),
                    },
                    None => Frames::One(plain),
                }
            }
            _ => return None,
        })
    }

    fn offer(&self, audience: Audience<'_>, frames: &Frames, cork: &mut HubCork) -> Delivery {
        match frames {
            Frames::One(f) => self.publish_corked(audience, f, cork),
            Frames::ByProtocol { plain, v1 } => {
                let d = self
                    .shared
                    .manager
                    .publish_by_protocol(audience, plain, v1, cork);
                self.shared
                    .metrics
                    .delivered(v1.len(), d.delivered, d.slow, d.dead);
                d
            }
        }
    }

    /// Delivers one publication to the local connections it is for. A stream publication is
    /// numbered as `numbering` says and recorded in the local history, all under the stream's
    /// lock, then offered to the members before the lock is released: each is either in a
    /// recovering client's replay or delivered to it live, never both (see `crate::history`).
    /// A position already seen (a duplicate from the bus) is dropped.
    pub(crate) fn deliver(
        &self,
        p: &Publication,
        numbering: Numbering<'_>,
        cork: &mut HubCork,
    ) -> Published {
        if let Some(stream) = p.stream() {
            return self.deliver_to_stream(p, stream, numbering, cork);
        }
        let delivery = match p {
            Publication::Binary { data } => {
                self.publish_corked(Audience::All, &frame::encode(OpCode::Binary, data), cork)
            }
            Publication::System { text } => self.publish_corked(
                Audience::Plain,
                &envelope::encode(Kind::System, None, text),
                cork,
            ),
            Publication::Membership {
                group,
                joined,
                connection,
                user,
                except,
            } => {
                let f = v1::membership(*joined, group, connection, user.as_deref());
                match except.as_deref().and_then(|e| e.parse::<ConnId>().ok()) {
                    Some(id) => self.publish_corked(Audience::GroupExcept(group, id), &f, cork),
                    None => self.publish_corked(Audience::Group(group), &f, cork),
                }
            }
            Publication::User {
                to,
                from,
                user,
                message,
            }
            | Publication::Direct {
                to,
                from,
                user,
                message,
            } => {
                let f = v1::delivery(
                    "direct",
                    None,
                    None,
                    from.as_deref(),
                    user.as_deref(),
                    message,
                );
                if matches!(p, Publication::User { .. }) {
                    self.publish_corked(Audience::User(to), &f, cork)
                } else {
                    let delivered = match to.parse::<ConnId>() {
                        Ok(id) => usize::from(self.send_corked(id, &f, cork)),
                        Err(_) => 0,
                    };
                    Delivery {
                        delivered,
                        ..Delivery::default()
                    }
                }
            }
            Publication::Disconnect { to, code, reason } => {
                if let Ok(id) = to.parse::<ConnId>() {
                    self.disconnect(
                        id,
                        CloseReason::Disconnected {
                            code: *code,
                            reason: std::sync::Arc::from(reason.as_str()),
                        },
                    );
                }
                Delivery::default()
            }
            Publication::Member { to, group, add } => {
                if let Ok(id) = to.parse::<ConnId>() {
                    if *add {
                        let _ = self.add_to_group(id, group);
                    } else {
                        self.remove_from_group(id, group);
                    }
                }
                Delivery::default()
            }
            Publication::Group { .. } | Publication::All { .. } => Delivery::default(),
        };
        Published {
            delivery,
            offset: None,
        }
    }

    fn deliver_to_stream(
        &self,
        p: &Publication,
        stream: StreamName<'_>,
        numbering: Numbering<'_>,
        cork: &mut HubCork,
    ) -> Published {
        let audience = match stream {
            StreamName::All => Audience::All,
            StreamName::Group(g) => Audience::Group(g),
        };
        if let Numbering::None = numbering {
            let Some(frames) = Self::frames(p, None) else {
                return Published::default();
            };
            return Published {
                delivery: self.offer(audience, &frames, cork),
                offset: None,
            };
        }
        let s = self.stream_ref(stream);
        let mut s = s.lock();
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
        let Some(frames) = Self::frames(p, Some(offset)) else {
            return Published::default();
        };
        let kept = match &frames {
            Frames::One(f) | Frames::ByProtocol { v1: f, .. } => f.clone(),
        };
        s.append(kept);
        let delivery = self.offer(audience, &frames, cork);
        drop(s);
        self.shared.history.enforce_budget();
        Published {
            delivery,
            offset: Some(offset),
        }
    }
}
