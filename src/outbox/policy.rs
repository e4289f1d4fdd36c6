//! The delivery policies at the one place they can act: a connection's queue. A group's
//! message under `drop-oldest` or `keep-latest` is queued with a [`Mark`] saying what it is, so
//! that what is still waiting (not yet handed to the socket) can be dropped or replaced.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::frame::Frame;
use crate::manager::policy::{Lane, Policy, Tag};
use crate::manager::Protocol;

use super::{Outbox, Queued, SendError, State};

/// What a queued frame is.
#[derive(Clone)]
pub(super) struct Mark {
    lane: Arc<Lane>,
    protocol: Protocol,
    kind: Kind,
    /// The message's own TTL's end: still queued then, it is not sent.
    expires: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A message at `offset`, with its conflation key.
    Message { offset: u64, key: Option<u64> },
    /// A `gap`: the connection lost the offsets `from..=to`.
    Gap { from: u64, to: u64 },
}

impl Mark {
    fn of(&self, lane: &Lane) -> bool {
        self.lane.group == lane.group
    }

    fn droppable(&self) -> bool {
        self.lane.policy == Policy::DropOldest && matches!(self.kind, Kind::Message { .. })
    }
}

/// Frames a `gap` may take beyond the queue's capacity (like pongs): telling a connection what
/// it lost must not need the room it lacks.
const GAP_MARGIN: usize = 8;

impl Outbox {
    /// How many queued frames, and how many bytes of them, a policy may drop to make room.
    pub(super) fn droppable(st: &State) -> (usize, usize) {
        st.queue
            .iter()
            .zip(&st.marks)
            .filter(|(_, m)| m.as_ref().is_some_and(Mark::droppable))
            .fold((0, 0), |(n, len), (f, _)| (n + 1, len + f.len()))
    }

    /// Queues a group's message under its delivery policy (see [`Policy`]).
    ///
    /// # Errors
    /// [`SendError::Closed`] once a close was requested; [`SendError::Full`] when the policy
    /// could not make room (under `keep-latest`, a queue full of what no policy may drop;
    /// under `drop-oldest`, not even a `gap` fits).
    pub(crate) fn push_tagged(
        &self,
        frame: Frame,
        tag: &Tag,
        protocol: Protocol,
    ) -> Result<Queued, SendError> {
        let lane = &tag.lane;
        if lane.policy == Policy::Disconnect && tag.expires.is_none() {
            return self.push(frame);
        }
        let mut st = self.state.lock();
        if st.close.is_some() {
            return Err(SendError::Closed);
        }
        let mark = Mark {
            lane: lane.clone(),
            protocol,
            kind: Kind::Message {
                offset: tag.offset,
                key: tag.key,
            },
            expires: tag.expires,
        };
        if lane.policy == Policy::Disconnect {
            // Only its TTL to watch: queued like any frame, marked.
            if !self.make_room(&mut st, frame.len(), None) {
                return Err(SendError::Full);
            }
            self.append(&mut st, frame, Some(mark));
            return self.pushed(st);
        }
        if lane.policy == Policy::KeepLatest {
            let replaced = self.remove(&mut st, |m| {
                m.of(lane) && matches!(m.kind, Kind::Message { key, .. } if key == tag.key)
            });
            if replaced > 0 {
                lane.meter.conflated.inc_by(replaced);
            }
            if !self.make_room(&mut st, frame.len(), None) {
                return Err(SendError::Full);
            }
            self.append(&mut st, frame, Some(mark));
            return self.pushed(st);
        }
        // drop-oldest: room is made by dropping the group's oldest queued messages, one at a
        // time; the first dropped becomes a `gap` in its place, later ones widen it. What is
        // left of the group stays in order behind it.
        if self.make_room(&mut st, frame.len(), Some(lane)) {
            self.append(&mut st, frame, Some(mark));
            return self.pushed(st);
        }
        // Nothing of the group is left to drop: this message is lost too, and said so.
        lane.meter.dropped.inc();
        let last_gap = st.marks.iter().rposition(|m| {
            m.as_ref()
                .is_some_and(|m| m.of(lane) && matches!(m.kind, Kind::Gap { .. }))
        });
        match last_gap {
            Some(i) => self.widen(&mut st, i, tag.offset),
            None => {
                if st.queue.len() >= self.capacity() + GAP_MARGIN {
                    return Err(SendError::Full);
                }
                let gap = (lane.gap)(protocol, &lane.group, tag.offset, tag.offset);
                let mark = Mark {
                    kind: Kind::Gap {
                        from: tag.offset,
                        to: tag.offset,
                    },
                    ..mark
                };
                self.append(&mut st, gap, Some(mark));
                lane.meter.gaps.inc();
            }
        }
        self.pushed(st)
    }

    /// Makes room for a data frame of `len` bytes by dropping `drop-oldest` messages still
    /// queued (of `lane` only, or of any group): whether it fits now.
    pub(super) fn make_room(&self, st: &mut State, len: usize, lane: Option<&Lane>) -> bool {
        loop {
            if self.fits(st, len, self.capacity(), true) {
                return true;
            }
            if !self.drop_one(st, lane) {
                return false;
            }
        }
    }

    /// Drops the oldest queued `drop-oldest` message (of `lane`, or of any group): it becomes a
    /// `gap` in its place, or widens the gap of its group just before it. `false` when there
    /// is none to drop.
    fn drop_one(&self, st: &mut State, lane: Option<&Lane>) -> bool {
        let start = usize::from(st.front_partial);
        let Some(i) = st
            .marks
            .iter()
            .enumerate()
            .skip(start)
            .find(|(_, m)| {
                m.as_ref()
                    .is_some_and(|m| m.droppable() && lane.is_none_or(|l| m.of(l)))
            })
            .map(|(i, _)| i)
        else {
            return false;
        };
        self.drop_at(st, i);
        true
    }

    /// Drops the queued message at `i`: it becomes a `gap` in its place, or widens the gap of
    /// its group just before it (then it is removed: `true`).
    fn drop_at(&self, st: &mut State, i: usize) -> bool {
        let start = usize::from(st.front_partial);
        let Some(mark) = st.marks[i].clone() else {
            return false;
        };
        let Kind::Message { offset, .. } = mark.kind else {
            return false;
        };
        mark.lane.meter.dropped.inc();
        // The group's entry just before it, when it is a gap, takes it in.
        let before = st
            .marks
            .iter()
            .take(i)
            .rposition(|m| m.as_ref().is_some_and(|m| m.of(&mark.lane)))
            .filter(|j| {
                *j >= start
                    && matches!(
                        &st.marks[*j],
                        Some(Mark {
                            kind: Kind::Gap { .. },
                            ..
                        })
                    )
            });
        match before {
            Some(j) => {
                st.marks.remove(i);
                if let Some(f) = st.queue.remove(i) {
                    self.sent(f.len());
                }
                self.widen(st, j, offset);
                true
            }
            None => {
                let gap = (mark.lane.gap)(mark.protocol, &mark.lane.group, offset, offset);
                self.replace(st, i, gap);
                mark.lane.meter.gaps.inc();
                st.marks[i] = Some(Mark {
                    kind: Kind::Gap {
                        from: offset,
                        to: offset,
                    },
                    ..mark
                });
                false
            }
        }
    }

    /// Replaces the queued messages past their own TTL by gaps, before the socket gets them.
    pub(super) fn expire_queued(&self, st: &mut State) {
        if st.marks.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut i = usize::from(st.front_partial);
        while i < st.marks.len() {
            let expired = st.marks[i].as_ref().is_some_and(|m| {
                matches!(m.kind, Kind::Message { .. }) && m.expires.is_some_and(|e| e <= now)
            });
            if expired && self.drop_at(st, i) {
                continue;
            }
            i += 1;
        }
    }

    /// Widens the gap at `i` to reach `offset`.
    fn widen(&self, st: &mut State, i: usize, offset: u64) {
        let Some(Some(mark)) = st.marks.get_mut(i) else {
            return;
        };
        let Kind::Gap { from, to } = &mut mark.kind else {
            return;
        };
        *to = (*to).max(offset);
        let gap = (mark.lane.gap)(mark.protocol, &mark.lane.group, *from, *to);
        self.replace(st, i, gap);
    }

    /// Puts `frame` in place of the queued frame at `i`, keeping the byte count right.
    fn replace(&self, st: &mut State, i: usize, frame: Frame) {
        if let Some(slot) = st.queue.get_mut(i) {
            self.pending.fetch_add(frame.len(), Ordering::Relaxed);
            let old = std::mem::replace(slot, frame);
            self.sent(old.len());
        }
    }

    /// Removes the queued frames whose mark matches (never the front frame when it is partly
    /// written), forgetting their bytes; returns how many.
    fn remove(&self, st: &mut State, matches: impl Fn(&Mark) -> bool) -> u64 {
        if st.marks.is_empty() {
            return 0;
        }
        let start = usize::from(st.front_partial);
        let keep: Vec<bool> = st
            .marks
            .iter()
            .enumerate()
            .map(|(i, m)| i < start || !m.as_ref().is_some_and(&matches))
            .collect();
        let removed = keep.iter().filter(|k| !**k).count();
        if removed == 0 {
            return 0;
        }
        let mut bytes = 0;
        let mut i = 0;
        st.queue.retain(|f| {
            let k = keep[i];
            i += 1;
            if !k {
                bytes += f.len();
            }
            k
        });
        let mut i = 0;
        st.marks.retain(|_| {
            let k = keep[i];
            i += 1;
            k
        });
        self.sent(bytes);
        removed as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::policy::Meter;
    use bytes::Bytes;
    use std::collections::VecDeque;

    fn gap(_: Protocol, group: &str, from: u64, to: u64) -> Frame {
        Bytes::from(format!("gap {group} {from}-{to}"))
    }

    fn tag(policy: Policy, group: &str, offset: u64, key: Option<u64>, meter: &Meter) -> Tag {
        Tag {
            lane: Arc::new(Lane {
                policy,
                group: Arc::from(group),
                gap,
                meter: meter.clone(),
            }),
            offset,
            key,
            expires: None,
        }
    }

    fn msg(group: &str, offset: u64) -> Frame {
        Bytes::from(format!("{group} {offset}"))
    }

    async fn drain(o: &Outbox) -> Vec<String> {
        let mut batch = VecDeque::new();
        match o.take(&mut batch).await {
            super::super::Take::Frames(_) => {}
            other => panic!("{other:?}"),
        }
        batch
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn drop_oldest_drops_the_groups_queued_messages_and_says_which() {
        let meter = Meter::default();
        let o = Outbox::new(4);
        o.push(Bytes::from_static(b"other")).unwrap();
        for off in 1..=3 {
            o.push_tagged(
                msg("feed", off),
                &tag(Policy::DropOldest, "feed", off, None, &meter),
                Protocol::V1,
            )
            .unwrap();
        }
        // Full (4 frames): the next feed message drops the oldest ones, as few as make room;
        // the first becomes a gap in its place, the next widens it.
        for off in 4..=5 {
            o.push_tagged(
                msg("feed", off),
                &tag(Policy::DropOldest, "feed", off, None, &meter),
                Protocol::V1,
            )
            .unwrap();
        }
        assert_eq!(
            drain(&o).await,
            ["other", "gap feed 1-3", "feed 4", "feed 5"]
        );
        assert_eq!(meter.dropped.get(), 3);
        assert_eq!(meter.gaps.get(), 1);
        // What the writer holds counts until written: the dropped messages' bytes do not.
        assert_eq!(o.pending_bytes(), "othergap feed 1-3feed 4feed 5".len());
    }

    #[tokio::test]
    async fn drop_oldest_frees_bytes_in_place() {
        let meter = Meter::default();
        // Room for 3 frames by count, 50 bytes by budget: a gap in place of the first
        // message frees enough.
        let o = Outbox::with_budget(3, 50);
        let big = |off: u64| Bytes::from(format!("feed {off} {}", "x".repeat(12)));
        for off in 1..=2 {
            o.push_tagged(
                big(off),
                &tag(Policy::DropOldest, "feed", off, None, &meter),
                Protocol::V1,
            )
            .unwrap();
        }
        o.push_tagged(
            big(3),
            &tag(Policy::DropOldest, "feed", 3, None, &meter),
            Protocol::V1,
        )
        .unwrap();
        let got = drain(&o).await;
        assert_eq!(got[0], "gap feed 1-1");
        assert!(
            got[1].starts_with("feed 2 ") && got[2].starts_with("feed 3 "),
            "{got:?}"
        );
        assert_eq!(meter.dropped.get(), 1);
    }

    #[tokio::test]
    async fn drop_oldest_merges_gaps_and_loses_the_new_message_when_nothing_else_can_go() {
        let meter = Meter::default();
        let o = Outbox::new(2);
        o.push(Bytes::from_static(b"a")).unwrap();
        o.push(Bytes::from_static(b"b")).unwrap();
        // Full of other frames: the message itself is lost, a gap says so.
        for off in 7..=9 {
            o.push_tagged(
                msg("feed", off),
                &tag(Policy::DropOldest, "feed", off, None, &meter),
                Protocol::V1,
            )
            .unwrap();
        }
        assert_eq!(drain(&o).await, ["a", "b", "gap feed 7-9"]);
        assert_eq!(meter.dropped.get(), 3);
    }

    #[tokio::test]
    async fn keep_latest_keeps_one_per_key() {
        let meter = Meter::default();
        let o = Outbox::new(16);
        for off in 1..=5u64 {
            let key = Some(off % 2);
            o.push_tagged(
                msg("tick", off),
                &tag(Policy::KeepLatest, "tick", off, key, &meter),
                Protocol::V1,
            )
            .unwrap();
        }
        o.push(Bytes::from_static(b"plain")).unwrap();
        assert_eq!(drain(&o).await, ["tick 4", "tick 5", "plain"]);
        assert_eq!(meter.conflated.get(), 3);
        // Handed to the writer: no longer replaceable; a newer one queues behind.
        o.push_tagged(
            msg("tick", 6),
            &tag(Policy::KeepLatest, "tick", 6, Some(0), &meter),
            Protocol::V1,
        )
        .unwrap();
        assert_eq!(drain(&o).await, ["tick 6"]);
    }
}
