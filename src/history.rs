//! Message history with offsets and epochs (SPEC section 3): what makes a reconnect lossless.
//!
//! Every group, and the all-clients stream, is a [`Stream`]: a counter handing out offsets
//! (1, 2, 3, … with no gaps), an epoch naming this run of the counter, and the last messages as
//! their already encoded frames, bounded by count and age. A client that saw offset `n` of
//! epoch `e` asks for `since: {epoch: e, offset: n}` and gets `n+1 ..= top` replayed.
//!
//! The stream's lock is the serialisation point that makes replay exact. A publication takes
//! it, takes the next offset, stores the frame and offers it to the current members, and only
//! then lets go; a recovering join takes the same lock, becomes a member and queues the replay.
//! So every publication is either in the replay or delivered live, never both and never
//! neither, and each connection sees a group's offsets in increasing order.
//!
//! Lock order: a stream's lock, then the connection registry's. Nothing takes them the other
//! way round.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::frame::Frame;

/// How much history each stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per stream (0 keeps none: offsets still count, nothing can be replayed).
    pub size: usize,
    /// Messages older than this are dropped.
    pub ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl: Duration::from_secs(300),
        }
    }
}

/// A position in a stream: the last offset a client saw, in the epoch it saw it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The offset (0: nothing published yet).
    pub offset: u64,
}

impl Position {
    /// Parses `epoch:offset`, the form of the `recover` query parameter.
    pub fn parse(s: &str) -> Option<Self> {
        let (epoch, offset) = s.rsplit_once(':')?;
        if epoch.is_empty() || epoch.len() > 64 {
            return None;
        }
        Some(Self {
            epoch: Arc::from(epoch),
            offset: offset.parse().ok()?,
        })
    }
}

/// One stored publication.
struct Stored {
    offset: u64,
    at: Instant,
    frame: Frame,
}

/// One stream: its offsets, epoch and recent messages. Locked through [`History::stream`].
pub struct Stream {
    epoch: Arc<str>,
    top: u64,
    entries: VecDeque<Stored>,
    touched: Instant,
    config: HistoryConfig,
    /// In a cluster: this node does not know the stream's shared epoch and offset yet.
    cold: bool,
}

/// What [`Stream::adopt`] made of a numbered publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Already had it.
    Duplicate,
    /// The next one (or the first after a gap).
    Next,
    /// It starts another epoch: the history this node knew is gone, and clients must be told.
    NewEpoch,
}

/// What a recovery found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Whether everything after the client's position is in `frames`.
    pub recovered: bool,
    /// The frames to replay, oldest first.
    pub frames: Vec<Frame>,
}

impl Stream {
    fn new(config: HistoryConfig) -> Self {
        Self {
            epoch: new_epoch(),
            top: 0,
            entries: VecDeque::new(),
            touched: Instant::now(),
            config,
            cold: false,
        }
    }

    /// In a cluster: whether this node has yet to learn the stream's shared position.
    pub fn is_cold(&self) -> bool {
        self.cold
    }

    /// Takes the shared position (from the backplane) as this stream's; history kept under
    /// another epoch is dropped.
    pub fn set_position(&mut self, epoch: &str, top: u64) {
        if *self.epoch != *epoch {
            self.epoch = Arc::from(epoch);
            self.entries.clear();
        }
        self.top = self.top.max(top);
        self.cold = false;
    }

    /// Before appending a publication the backplane numbered: [`Adopted::Duplicate`] when this
    /// node already has it. Another epoch resets the stream to it; a gap is accepted (the
    /// caller fetched what it could).
    pub fn adopt(&mut self, epoch: &str, offset: u64) -> Adopted {
        let mut adopted = Adopted::Next;
        if *self.epoch != *epoch {
            if !self.cold {
                adopted = Adopted::NewEpoch;
            }
            self.epoch = Arc::from(epoch);
            self.entries.clear();
            self.top = offset.saturating_sub(1);
        } else if offset <= self.top && !self.cold {
            return Adopted::Duplicate;
        }
        self.cold = false;
        if offset != self.top + 1 {
            // History must stay contiguous: what came before the gap cannot be replayed.
            self.entries.clear();
            self.top = offset.saturating_sub(1);
        }
        adopted
    }

    /// The last offset this node has, when it has seen the stream (for gap detection).
    pub fn known_top(&self, epoch: &str) -> Option<u64> {
        (!self.cold && *self.epoch == *epoch).then_some(self.top)
    }

    /// Puts publications fetched from the shared history in front of what is kept (offsets
    /// must end right before the oldest kept one); `age` is how old each one is.
    pub fn prepend(&mut self, older: Vec<(u64, Duration, Frame)>) {
        let now = Instant::now();
        let mut expect = self.first_kept();
        for (offset, age, frame) in older.into_iter().rev() {
            if offset + 1 != expect
                || (self.config.size > 0 && self.entries.len() >= self.config.size)
            {
                break;
            }
            self.entries.push_front(Stored {
                offset,
                at: now.checked_sub(age).unwrap_or(now),
                frame,
            });
            expect = offset;
        }
    }

    /// The current position: the epoch and the last offset handed out.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.top,
        }
    }

    /// The offset the next publication will get.
    pub fn next_offset(&self) -> u64 {
        self.top + 1
    }

    /// Records the publication of `frame` at [`next_offset`](Self::next_offset); returns its
    /// offset.
    pub fn append(&mut self, frame: Frame) -> u64 {
        self.top += 1;
        let now = Instant::now();
        self.touched = now;
        if self.config.size > 0 {
            if self.entries.len() == self.config.size {
                self.entries.pop_front();
            }
            self.entries.push_back(Stored {
                offset: self.top,
                at: now,
                frame,
            });
        }
        self.top
    }

    fn expire(&mut self, now: Instant) {
        while let Some(first) = self.entries.front() {
            if now.saturating_duration_since(first.at) < self.config.ttl {
                break;
            }
            self.entries.pop_front();
        }
    }

    /// What a client at `since` missed, at most `limit` frames (the newest ones when there are
    /// more; `recovered` is then false).
    pub fn replay(&mut self, since: &Position, limit: usize) -> Replay {
        self.touched = Instant::now();
        self.expire(self.touched);
        if since.epoch != self.epoch || since.offset > self.top {
            // Another run of the counter (or a position it never reached): the client's offsets
            // mean nothing here.
            return Replay::default();
        }
        let first_kept = self.entries.front().map_or(self.top + 1, |s| s.offset);
        let mut complete = since.offset + 1 >= first_kept;
        let mut frames: Vec<Frame> = self
            .entries
            .iter()
            .filter(|s| s.offset > since.offset)
            .map(|s| s.frame.clone())
            .collect();
        if frames.len() > limit {
            frames.drain(..frames.len() - limit);
            complete = false;
        }
        Replay {
            recovered: complete,
            frames,
        }
    }

    /// Stored publications after `since` (all kept ones when `None`), oldest first, at most
    /// `limit`, with their offsets.
    pub fn since(&mut self, since: Option<u64>, limit: usize) -> Vec<(u64, Frame)> {
        self.expire(Instant::now());
        self.entries
            .iter()
            .filter(|s| since.is_none_or(|o| s.offset > o))
            .take(limit)
            .map(|s| (s.offset, s.frame.clone()))
            .collect()
    }

    /// The oldest offset still kept (`top + 1` when none is).
    pub fn first_kept(&self) -> u64 {
        self.entries.front().map_or(self.top + 1, |s| s.offset)
    }
}

fn new_epoch() -> Arc<str> {
    let id = crate::id::ConnId::random().to_string();
    Arc::from(&id[..12])
}

/// A shared, lockable stream.
pub type StreamRef = Arc<Mutex<Stream>>;

/// Every stream of one hub: one per group that has been joined or published to, and the
/// all-clients stream.
pub struct History {
    config: HistoryConfig,
    all: StreamRef,
    groups: Mutex<HashMap<Arc<str>, StreamRef>>,
    /// Streams are shared through a backplane: new ones start cold.
    clustered: std::sync::atomic::AtomicBool,
}

impl History {
    /// An empty history.
    pub fn new(config: HistoryConfig) -> Self {
        Self {
            config,
            all: Arc::new(Mutex::new(Stream::new(config))),
            groups: Mutex::new(HashMap::new()),
            clustered: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on streams are shared through a backplane: their epochs and offsets come from
    /// it, so every stream starts cold.
    pub fn set_clustered(&self) {
        self.clustered
            .store(true, std::sync::atomic::Ordering::Release);
        self.all.lock().cold = true;
        for s in self.groups.lock().values() {
            s.lock().cold = true;
        }
    }

    /// The settings.
    pub fn config(&self) -> HistoryConfig {
        self.config
    }

    /// The all-clients stream.
    pub fn all(&self) -> &StreamRef {
        &self.all
    }

    /// A group's stream, created (with a new epoch) when it has none.
    pub fn stream(&self, group: &str) -> StreamRef {
        let mut groups = self.groups.lock();
        if let Some(s) = groups.get(group) {
            return s.clone();
        }
        let mut stream = Stream::new(self.config);
        stream.cold = self.clustered.load(std::sync::atomic::Ordering::Acquire);
        let s = Arc::new(Mutex::new(stream));
        groups.insert(Arc::from(group), s.clone());
        s
    }

    /// A group's stream, if it has one.
    pub fn existing(&self, group: &str) -> Option<StreamRef> {
        self.groups.lock().get(group).cloned()
    }

    /// Number of group streams.
    pub fn len(&self) -> usize {
        self.groups.lock().len()
    }

    /// Whether there is no group stream.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops expired messages, and forgets streams that have kept nothing and seen nothing for
    /// `idle` (their epoch with them: a client coming back after that gets `recovered: false`).
    pub fn sweep(&self, idle: Duration) {
        let now = Instant::now();
        self.all.lock().expire(now);
        self.groups.lock().retain(|_, s| {
            // Nobody else holds it while we hold the map, so nobody can be publishing into a
            // stream we are about to forget.
            if Arc::strong_count(s) > 1 {
                return true;
            }
            let mut s = s.lock();
            s.expire(now);
            !s.entries.is_empty() || now.saturating_duration_since(s.touched) < idle
        });
    }
}

/// The payload of a server frame (what follows its 2-, 4- or 10-byte header).
pub fn payload(frame: &Frame) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode, OpCode};

    fn cfg(size: usize) -> HistoryConfig {
        HistoryConfig {
            size,
            ttl: Duration::from_secs(60),
        }
    }

    fn publish(s: &mut Stream, n: usize) {
        for _ in 0..n {
            let text = format!("m{}", s.next_offset());
            s.append(encode(OpCode::Text, text.as_bytes()));
        }
    }

    fn texts(r: &Replay) -> Vec<String> {
        r.frames
            .iter()
            .map(|f| String::from_utf8(payload(f).to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn offsets_count_from_one_without_gaps() {
        let mut s = Stream::new(cfg(10));
        assert_eq!(s.position().offset, 0);
        publish(&mut s, 3);
        assert_eq!(s.position().offset, 3);
    }

    #[test]
    fn replays_exactly_what_was_missed() {
        let mut s = Stream::new(cfg(10));
        publish(&mut s, 5);
        let at = Position {
            epoch: s.position().epoch,
            offset: 2,
        };
        let r = s.replay(&at, 100);
        assert!(r.recovered);
        assert_eq!(texts(&r), ["m3", "m4", "m5"]);
        let r = s.replay(&s.position(), 100);
        assert!(r.recovered && r.frames.is_empty());
    }

    #[test]
    fn another_epoch_or_a_future_offset_is_not_recovered() {
        let mut s = Stream::new(cfg(10));
        publish(&mut s, 3);
        let other = Position {
            epoch: "nope".into(),
            offset: 1,
        };
        let r = s.replay(&other, 100);
        assert!(!r.recovered && r.frames.is_empty());
        let future = Position {
            epoch: s.position().epoch,
            offset: 4,
        };
        let r = s.replay(&future, 100);
        assert!(!r.recovered && r.frames.is_empty());
    }

    #[test]
    fn trimmed_history_replays_what_is_left_and_says_so() {
        let mut s = Stream::new(cfg(3));
        publish(&mut s, 6);
        let epoch = s.position().epoch;
        let r = s.replay(
            &Position {
                epoch: epoch.clone(),
                offset: 1,
            },
            100,
        );
        assert!(!r.recovered);
        assert_eq!(texts(&r), ["m4", "m5", "m6"]);
        // Exactly at the edge: offset 3 missed 4..=6, all kept.
        let r = s.replay(&Position { epoch, offset: 3 }, 100);
        assert!(r.recovered);
        assert_eq!(r.frames.len(), 3);
    }

    #[test]
    fn a_replay_over_the_limit_keeps_the_newest() {
        let mut s = Stream::new(cfg(10));
        publish(&mut s, 8);
        let at = Position {
            epoch: s.position().epoch,
            offset: 0,
        };
        let r = s.replay(&at, 2);
        assert!(!r.recovered);
        assert_eq!(texts(&r), ["m7", "m8"]);
    }

    #[test]
    fn no_history_still_counts_and_recovers_an_up_to_date_client() {
        let mut s = Stream::new(cfg(0));
        publish(&mut s, 2);
        assert!(s.replay(&s.position(), 10).recovered);
        let behind = Position {
            epoch: s.position().epoch,
            offset: 1,
        };
        assert!(!s.replay(&behind, 10).recovered);
    }

    #[tokio::test(start_paused = true)]
    async fn messages_expire_by_age_and_idle_streams_are_forgotten() {
        let h = History::new(cfg(10));
        {
            let g = h.stream("g");
            let mut s = g.lock();
            publish(&mut s, 2);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        h.sweep(Duration::from_secs(3600));
        assert_eq!(h.stream("g").lock().since(None, 10).len(), 2);
        tokio::time::advance(Duration::from_secs(31)).await;
        h.sweep(Duration::from_secs(3600));
        let g = h.existing("g").unwrap();
        assert!(g.lock().since(None, 10).is_empty());
        assert_eq!(g.lock().first_kept(), 3, "offsets survive expiry");
        drop(g);
        tokio::time::advance(Duration::from_secs(3600)).await;
        h.sweep(Duration::from_secs(3600));
        assert!(h.existing("g").is_none());
    }

    #[test]
    fn positions_parse_from_the_query_form() {
        let p = Position::parse("ab12:42").unwrap();
        assert_eq!((&*p.epoch, p.offset), ("ab12", 42));
        for bad in ["", "ab12", ":1", "ab12:x", "ab12:-1"] {
            assert!(Position::parse(bad).is_none(), "{bad}");
        }
    }
}
