//! The one-way event stream (`GET /events`): what a `wshub.v1` session's frames become as
//! events, and the stream positions every event id carries.
//!
//! A stream of events follows a fixed list of hub streams (the all-clients stream and groups,
//! named by the request). Each event that moves a position carries, as its id, the position of
//! **every** stream of the list (`<epoch>:<offset>` each, in the list's order, `-` while a
//! stream's epoch is not known yet, separated by commas). A browser sends the last id it saw
//! back as `Last-Event-ID` when it reconnects, and [`resume`] turns it into the positions to
//! recover from: the reconnect continues exactly after the last event seen, in every stream.
//!
//! The payloads are the frames the hub encoded once for every `wshub.v1` recipient; only the
//! event's name and id are this session's own.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::history::Position;

/// The most streams one event stream follows (its ids grow with each).
pub const MAX_STREAMS: usize = 64;

/// One followed stream's position, as far as the events sent so far tell.
#[derive(Debug, Clone)]
struct Slot {
    /// `None`: the all-clients stream.
    group: Option<Arc<str>>,
    epoch: Option<Arc<str>>,
    offset: u64,
    /// Whether an event of this stream with an offset was rendered since the stream started
    /// (then `offset` is its offset, and a join ack or welcome does not move it).
    seen: bool,
}

/// The positions of one event stream's streams, updated by each event it renders.
#[derive(Debug, Clone)]
pub struct Cursor {
    /// The all-clients stream first when followed, then the groups in the request's order.
    slots: Vec<Slot>,
    /// Index of the first group in `slots`.
    first_group: usize,
}

/// Why a `Last-Event-ID` cannot be resumed from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// It names another number of streams than the request follows.
    #[error("`Last-Event-ID` names {got} stream positions; this stream follows {want}")]
    Count {
        /// Positions in the id.
        got: usize,
        /// Streams followed.
        want: usize,
    },
    /// A position is not `<epoch>:<offset>` (or `-`).
    #[error("`Last-Event-ID` position {0} is not `<epoch>:<offset>` or `-`")]
    Position(usize),
}

/// Where to resume each stream from, given the `Last-Event-ID` a client sent (`None` for a
/// stream whose epoch it did not know: it starts live). `streams` is how many are followed.
///
/// # Errors
/// [`ResumeError`] when the id does not name one position per stream.
pub fn resume(last_event_id: &str, streams: usize) -> Result<Vec<Option<Position>>, ResumeError> {
    let parts: Vec<&str> = last_event_id.trim().split(',').collect();
    if parts.len() != streams {
        return Err(ResumeError::Count {
            got: parts.len(),
            want: streams,
        });
    }
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| match p.trim() {
            "-" => Ok(None),
            p => Position::parse(p).map(Some).ok_or(ResumeError::Position(i)),
        })
        .collect()
}

/// What one frame becomes on the stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The SSE event name; `None`: the default, `message` (a page's `onmessage`).
    pub name: Option<Cow<'a, str>>,
    /// The event id: every stream's position, when this event moved one.
    pub id: Option<String>,
    /// The event's data: the frame's own JSON, or one made for this stream.
    pub data: Cow<'a, [u8]>,
}

/// The fields of a `wshub.v1` frame a stream needs (the rest, `message` above all, is
/// skipped unread).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    group: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default, borrow)]
    all: Option<AllState<'a>>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    members: Option<u64>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AllState<'a> {
    #[serde(borrow)]
    epoch: Cow<'a, str>,
    offset: u64,
    #[serde(default)]
    recovered: Option<bool>,
}

impl Cursor {
    /// A cursor over the all-clients stream (when `all`) and `groups`, starting at `from`
    /// (one per stream, in the same order; `None`: live).
    pub fn new(all: bool, groups: &[String], from: &[Option<Position>]) -> Self {
        let names = all
            .then_some(None)
            .into_iter()
            .chain(groups.iter().map(|g| Some(Arc::<str>::from(g.as_str()))));
        let slots = names
            .enumerate()
            .map(|(i, group)| {
                let at = from.get(i).cloned().flatten();
                Slot {
                    group,
                    epoch: at.as_ref().map(|p| p.epoch.clone()),
                    offset: at.map_or(0, |p| p.offset),
                    seen: false,
                }
            })
            .collect();
        Self {
            slots,
            first_group: usize::from(all),
        }
    }

    /// The id that names every stream's position now.
    pub fn id(&self) -> String {
        let mut id = String::with_capacity(self.slots.len() * 20);
        for (i, s) in self.slots.iter().enumerate() {
            if i > 0 {
                id.push(',');
            }
            match &s.epoch {
                Some(e) => {
                    id.push_str(e);
                    id.push(':');
                    id.push_str(itoa::Buffer::new().format(s.offset));
                }
                None => id.push('-'),
            }
        }
        id
    }

    fn slot(&mut self, group: Option<&str>) -> Option<&mut Slot> {
        match group {
            None if self.first_group == 1 => self.slots.first_mut(),
            None => None,
            Some(g) => self.slots[self.first_group..]
                .iter_mut()
                .find(|s| s.group.as_deref() == Some(g)),
        }
    }

    /// The group a join's ack or error is for: the session numbers its joins by the group's
    /// place in the list.
    fn joined(&self, id: Option<&serde_json::Value>) -> Option<usize> {
        let i = usize::try_from(id?.as_u64()?).ok()?;
        (self.first_group + i < self.slots.len()).then_some(self.first_group + i)
    }

    /// What a `wshub.v1` text payload becomes; positions move with it. A payload that is not
    /// a `wshub.v1` frame is passed on as it is, under no name.
    pub fn render<'a>(&mut self, payload: &'a [u8]) -> Event<'a> {
        let same = |name: Option<Cow<'a, str>>, id: Option<String>| Event {
            name,
            id,
            data: Cow::Borrowed(payload),
        };
        let Ok(head) = serde_json::from_slice::<Head<'_>>(payload) else {
            return same(None, None);
        };
        match head.kind.as_ref() {
            "message" | "server-broadcast" => {
                let moved = head.offset.and_then(|o| {
                    let slot = self.slot(head.group.as_deref())?;
                    slot.offset = o;
                    slot.seen = true;
                    Some(())
                });
                let name = (head.kind != "message").then(|| Cow::Owned(head.kind.into_owned()));
                same(name, moved.map(|()| self.id()))
            }
            "welcome" => {
                let moved = head.all.and_then(|all| {
                    let slot = self.slot(None)?;
                    // A recovered stream's replay follows the welcome: the position stays
                    // where the client was until the replayed events move it.
                    if slot.epoch.as_deref() != Some(&all.epoch) || all.recovered != Some(true) {
                        if !slot.seen {
                            slot.offset = all.offset;
                        }
                        slot.epoch = Some(Arc::from(all.epoch.as_ref()));
                    }
                    Some(())
                });
                same(Some("welcome".into()), moved.map(|()| self.id()))
            }
            "reset" => {
                let moved = head.epoch.and_then(|epoch| {
                    let slot = self.slot(head.group.as_deref())?;
                    slot.epoch = Some(Arc::from(epoch.as_ref()));
                    slot.offset = head.offset.unwrap_or(0);
                    slot.seen = true;
                    Some(())
                });
                same(Some("reset".into()), moved.map(|()| self.id()))
            }
            "ack" => {
                let Some(i) = self.joined(head.id.as_ref()) else {
                    return same(Some("ack".into()), None);
                };
                let slot = &mut self.slots[i];
                if let Some(epoch) = &head.epoch {
                    if slot.epoch.as_deref() != Some(epoch.as_ref()) || !slot.seen {
                        // What the join replayed came before its ack (and moved `offset`);
                        // with nothing replayed the stream starts where the join found it.
                        if !slot.seen {
                            slot.offset = head.offset.unwrap_or(0);
                        }
                        slot.epoch = Some(Arc::from(epoch.as_ref()));
                    }
                }
                let data = serde_json::json!({
                    "group": slot.group.as_deref(),
                    "epoch": slot.epoch.as_deref(),
                    "offset": head.offset,
                    "recovered": head.recovered,
                    "members": head.members,
                });
                Event {
                    name: Some("subscribed".into()),
                    id: Some(self.id()),
                    data: Cow::Owned(data.to_string().into_bytes()),
                }
            }
            "error" => {
                let Some(i) = self.joined(head.id.as_ref()) else {
                    return same(Some("refused".into()), None);
                };
                let data = serde_json::json!({
                    "group": self.slots[i].group.as_deref(),
                    "code": head.code,
                    "message": head.message,
                });
                Event {
                    name: Some("refused".into()),
                    id: None,
                    data: Cow::Owned(data.to_string().into_bytes()),
                }
            }
            _ => same(Some(Cow::Owned(head.kind.into_owned())), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ids_name_every_stream_and_resume_reads_them_back() {
        let mut c = Cursor::new(true, &groups(&["a", "b"]), &[]);
        assert_eq!(c.id(), "-,-,-");
        let w = c.render(br#"{"type":"welcome","all":{"epoch":"e0","offset":4}}"#);
        assert_eq!(w.id.as_deref(), Some("e0:4,-,-"));
        let ack = c.render(br#"{"type":"ack","id":1,"epoch":"e2","offset":9,"members":2}"#);
        assert_eq!(ack.name.as_deref(), Some("subscribed"));
        assert_eq!(ack.id.as_deref(), Some("e0:4,-,e2:9"));
        let m = c.render(br#"{"type":"message","group":"b","offset":10,"message":{"x":[1,2]}}"#);
        assert_eq!(m.name, None);
        assert_eq!(m.id.as_deref(), Some("e0:4,-,e2:10"));
        assert!(matches!(m.data, Cow::Borrowed(_)));
        let b = c.render(br#"{"type":"server-broadcast","offset":5,"message":"hi"}"#);
        assert_eq!(b.name.as_deref(), Some("server-broadcast"));
        assert_eq!(b.id.as_deref(), Some("e0:5,-,e2:10"));
        let back = resume("e0:5,-,e2:10", 3).unwrap();
        assert_eq!(back[0].as_ref().map(|p| p.offset), Some(5));
        assert!(back[1].is_none());
        assert_eq!(back[2].as_ref().map(|p| &*p.epoch), Some("e2"));
    }

    #[test]
    fn a_replay_before_the_ack_keeps_its_positions() {
        let from = resume("e1:3", 1).unwrap();
        let mut c = Cursor::new(false, &groups(&["g"]), &from);
        let r = c.render(br#"{"type":"message","group":"g","offset":4,"message":1}"#);
        assert_eq!(r.id.as_deref(), Some("e1:4"));
        let ack = c.render(br#"{"type":"ack","id":0,"epoch":"e1","offset":4,"recovered":true}"#);
        assert_eq!(ack.id.as_deref(), Some("e1:4"));
        // A recovered all-clients stream: the welcome does not jump past the replay.
        let from = resume("e0:2", 1).unwrap();
        let mut c = Cursor::new(true, &[], &from);
        let w = c.render(br#"{"type":"welcome","all":{"epoch":"e0","offset":7,"recovered":true}}"#);
        assert_eq!(w.id.as_deref(), Some("e0:2"));
        // A new epoch: the stream starts where the server stands.
        let mut c = Cursor::new(true, &[], &from);
        let w =
            c.render(br#"{"type":"welcome","all":{"epoch":"e9","offset":0,"recovered":false}}"#);
        assert_eq!(w.id.as_deref(), Some("e9:0"));
    }

    #[test]
    fn bad_ids_are_refused_with_a_reason() {
        assert_eq!(
            resume("e:1,e:2", 1),
            Err(ResumeError::Count { got: 2, want: 1 })
        );
        assert_eq!(resume("e:x", 1), Err(ResumeError::Position(0)));
        assert_eq!(resume("nocolon", 1), Err(ResumeError::Position(0)));
        assert_eq!(
            resume(&format!("e:{}0", u64::MAX), 1),
            Err(ResumeError::Position(0))
        );
    }

    #[test]
    fn other_frames_pass_under_their_type_and_join_errors_name_the_group() {
        let mut c = Cursor::new(false, &groups(&["g"]), &[]);
        let j = c.render(br#"{"type":"joined","group":"g","connection":"ab"}"#);
        assert_eq!(j.name.as_deref(), Some("joined"));
        assert_eq!(j.id, None);
        let e = c.render(br#"{"type":"error","id":0,"code":"forbidden","message":"no"}"#);
        assert_eq!(e.name.as_deref(), Some("refused"));
        let v: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
        assert_eq!(v["group"], "g");
        assert_eq!(v["code"], "forbidden");
        let junk = c.render(b"not json");
        assert_eq!(junk.name, None);
        assert_eq!(junk.id, None);
    }
}
