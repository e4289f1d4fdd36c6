//! Message history with offsets and epochs (docs/PROTOCOL.md, "Recovery"): what makes a reconnect lossless.
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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::frame::Frame;

/// How much history each stream keeps, and how much all of them together may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per stream (0 keeps none: offsets still count, nothing can be replayed).
    pub size: usize,
    /// Messages older than this are dropped; a stream without members is forgotten this long
    /// after it last published.
    pub ttl: Duration,
    /// Bytes of stored messages across every stream: past it the oldest messages, whichever
    /// stream they are in, are evicted first.
    pub max_bytes: usize,
    /// Group streams kept at once: past it clients cannot make new groups (a join or publish
    /// that would is refused) until idle ones are forgotten.
    pub max_streams: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl: Duration::from_secs(300),
            max_bytes: 64 * 1024 * 1024,
            max_streams: 100_000,
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
    /// A stream's `epoch` and an `offset` in it.
    pub fn new(epoch: impl Into<Arc<str>>, offset: u64) -> Self {
        Self {
            epoch: epoch.into(),
            offset,
        }
    }

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

/// Bytes a stored message costs besides its frame (its slot in the deque).
const STORED_OVERHEAD: usize = std::mem::size_of::<Stored>();

/// One stored publication.
struct Stored {
    offset: u64,
    at: Instant,
    frame: Frame,
    /// A publication with its own TTL: past this it is no longer replayed or listed.
    expires: Option<Instant>,
}

impl Stored {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
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
    /// Bytes of `entries` (frames plus their slots).
    bytes: usize,
    /// The bytes of every stream of the history, this one included.
    total: Arc<AtomicUsize>,
    /// A cache channel's last event, as its subscribers get it (Pusher cache channels).
    cached: Option<Frame>,
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

/// How much one replay may queue: it must never make its own connection a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimit {
    /// Frames.
    pub frames: usize,
    /// Bytes.
    pub bytes: usize,
    /// Over the limit, keep the oldest (a member recovering a `gap`, which asks again from
    /// where the replay stopped) rather than the newest (a client coming back).
    pub oldest_first: bool,
}

impl ReplayLimit {
    /// No limit (tests).
    pub const NONE: Self = Self {
        frames: usize::MAX,
        bytes: usize::MAX,
        oldest_first: false,
    };

    /// At most `frames` frames.
    pub fn frames(frames: usize) -> Self {
        Self {
            frames,
            bytes: usize::MAX,
            oldest_first: false,
        }
    }
}

/// What a recovery found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Whether everything after the client's position is in `frames`.
    pub recovered: bool,
    /// The frames to replay, oldest first.
    pub frames: Vec<Frame>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Stream {
    fn new(config: HistoryConfig, total: Arc<AtomicUsize>) -> Self {
        Self {
            epoch: new_epoch(),
            top: 0,
            entries: VecDeque::new(),
            touched: Instant::now(),
            config,
            cold: false,
            cached: None,
            bytes: 0,
            total,
        }
    }

    fn cost(s: &Stored) -> usize {
        s.frame.len() + STORED_OVERHEAD
    }

    fn push_back(&mut self, stored: Stored) {
        let c = Self::cost(&stored);
        self.bytes += c;
        self.total.fetch_add(c, Ordering::Relaxed);
        self.entries.push_back(stored);
    }

    fn push_front(&mut self, stored: Stored) {
        let c = Self::cost(&stored);
        self.bytes += c;
        self.total.fetch_add(c, Ordering::Relaxed);
        self.entries.push_front(stored);
    }

    fn pop_front(&mut self) -> bool {
        let Some(stored) = self.entries.pop_front() else {
            return false;
        };
        let c = Self::cost(&stored);
        self.bytes -= c;
        self.total.fetch_sub(c, Ordering::Relaxed);
        true
    }

    fn clear(&mut self) {
        // A cache channel's last event stays: it is not part of the numbered history.
        let kept = self.cached.as_ref().map_or(0, |f| f.len());
        self.total.fetch_sub(self.bytes - kept, Ordering::Relaxed);
        self.bytes = kept;
        // Give the memory back, not only the elements.
        self.entries = VecDeque::new();
    }

    /// Keeps `frame` as the stream's last event (a cache channel's), counted in the history's
    /// bytes like a stored message.
    pub fn set_cached(&mut self, frame: Frame) {
        let old = self.cached.replace(frame).map_or(0, |f| f.len());
        let new = self.cached.as_ref().map_or(0, |f| f.len());
        self.bytes = self.bytes + new - old;
        self.total.fetch_add(new, Ordering::Relaxed);
        self.total.fetch_sub(old, Ordering::Relaxed);
    }

    /// The stream's last event, if one is kept (see [`set_cached`](Self::set_cached)).
    pub fn cached(&self) -> Option<&Frame> {
        self.cached.as_ref()
    }

    /// Bytes this stream's stored messages take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When its oldest stored message was published.
    fn oldest(&self) -> Option<Instant> {
        self.entries.front().map(|s| s.at)
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
            self.clear();
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
            self.clear();
            self.top = offset.saturating_sub(1);
        } else if offset <= self.top && !self.cold {
            return Adopted::Duplicate;
        }
        self.cold = false;
        if offset != self.top + 1 {
            // History must stay contiguous: what came before the gap cannot be replayed.
            self.clear();
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
            self.push_front(Stored {
                offset,
                at: now.checked_sub(age).unwrap_or(now),
                frame,
                expires: None,
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
        self.append_for(frame, None)
    }

    /// Like [`append`](Self::append), for a publication with its own TTL: past it the message
    /// is no longer replayed or listed (a client that missed it cannot recover it).
    pub fn append_for(&mut self, frame: Frame, ttl: Option<std::time::Duration>) -> u64 {
        self.top += 1;
        let now = Instant::now();
        self.touched = now;
        if self.config.size > 0 {
            if self.entries.len() == self.config.size {
                self.pop_front();
            }
            self.push_back(Stored {
                offset: self.top,
                at: now,
                frame,
                expires: ttl.map(|t| now + t),
            });
        }
        self.top
    }

    fn expire(&mut self, now: Instant) {
        while let Some(first) = self.entries.front() {
            if now.saturating_duration_since(first.at) < self.config.ttl {
                break;
            }
            self.pop_front();
        }
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        }
    }

    /// What a client at `since` missed, at most `limit` frames and `max_bytes` bytes (the
    /// newest ones when there are more, or the oldest with `limit.oldest_first`; `recovered`
    /// is then false).
    pub fn replay(&mut self, since: &Position, limit: ReplayLimit) -> Replay {
        self.touched = Instant::now();
        self.expire(self.touched);
        if since.epoch != self.epoch || since.offset > self.top {
            // Another run of the counter (or a position it never reached): the client's offsets
            // mean nothing here.
            return Replay::default();
        }
        let first_kept = self.entries.front().map_or(self.top + 1, |s| s.offset);
        let mut complete = since.offset + 1 >= first_kept;
        let now = self.touched;
        let missed = self.entries.iter().filter(|s| s.offset > since.offset);
        // A message past its own TTL is gone for whoever missed it.
        if missed.clone().any(|s| !s.live(now)) {
            complete = false;
        }
        let mut frames: Vec<Frame> = missed
            .filter(|s| s.live(now))
            .map(|s| s.frame.clone())
            .collect();
        if limit.oldest_first {
            let mut bytes = 0usize;
            let fit = frames
                .iter()
                .take(limit.frames)
                .take_while(|f| {
                    bytes = bytes.saturating_add(f.len());
                    bytes <= limit.bytes
                })
                .count();
            if fit < frames.len() {
                frames.truncate(fit);
                complete = false;
            }
            return Replay {
                recovered: complete,
                frames,
            };
        }
        if frames.len() > limit.frames {
            frames.drain(..frames.len() - limit.frames);
            complete = false;
        }
        let mut bytes = 0usize;
        let fit = frames
            .iter()
            .rev()
            .take_while(|f| {
                bytes = bytes.saturating_add(f.len());
                bytes <= limit.bytes
            })
            .count();
        if fit < frames.len() {
            frames.drain(..frames.len() - fit);
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
        let now = Instant::now();
        self.expire(now);
        self.entries
            .iter()
            .filter(|s| since.is_none_or(|o| s.offset > o) && s.live(now))
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

/// The group streams were at their limit ([`HistoryConfig::max_streams`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the hub keeps as many groups as it may ({0}); try again later")]
pub struct TooManyStreams(pub usize);

/// Every stream of one hub: one per group that has been joined or published to, and the
/// all-clients stream.
///
/// Bounded three ways: messages per stream and their age ([`HistoryConfig::size`], `ttl`),
/// bytes across all streams (`max_bytes`, oldest evicted first), and the number of streams
/// (`max_streams`; a stream without members goes away `ttl` after it last published).
pub struct History {
    config: HistoryConfig,
    all: StreamRef,
    groups: Mutex<HashMap<Arc<str>, StreamRef>>,
    /// Streams are shared through a backplane: new ones start cold.
    clustered: AtomicBool,
    /// Bytes stored across every stream.
    total: Arc<AtomicUsize>,
    /// Messages evicted to keep `total` within the budget.
    evicted: prometheus_client::metrics::counter::Counter,
    /// Held by whoever is evicting (others need not wait: one pass serves everyone).
    evicting: Mutex<()>,
}

impl History {
    /// An empty history.
    pub fn new(config: HistoryConfig) -> Self {
        Self::with_counter(config, Default::default())
    }

    /// An empty history that counts its evictions on `evicted`.
    pub fn with_counter(
        config: HistoryConfig,
        evicted: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let total = Arc::new(AtomicUsize::new(0));
        Self {
            config,
            all: Arc::new(Mutex::new(Stream::new(config, total.clone()))),
            groups: Mutex::new(HashMap::new()),
            clustered: AtomicBool::new(false),
            total,
            evicted,
            evicting: Mutex::new(()),
        }
    }

    /// From now on streams are shared through a backplane: their epochs and offsets come from
    /// it, so every stream starts cold.
    pub fn set_clustered(&self) {
        self.clustered.store(true, Ordering::Release);
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

    fn create(&self) -> StreamRef {
        let mut stream = Stream::new(self.config, self.total.clone());
        stream.cold = self.clustered.load(Ordering::Acquire);
        Arc::new(Mutex::new(stream))
    }

    /// A group's stream, created (with a new epoch) when it has none, whatever the limit on
    /// streams (for publications another node already numbered).
    pub fn stream(&self, group: &str) -> StreamRef {
        let mut groups = self.groups.lock();
        if let Some(s) = groups.get(group) {
            return s.clone();
        }
        let s = self.create();
        groups.insert(Arc::from(group), s.clone());
        s
    }

    /// A group's stream, created when it has none and the limit on streams allows.
    /// `has_members` tells which groups have members here: at the limit, streams without
    /// members and without stored messages are forgotten to make room.
    ///
    /// # Errors
    /// [`TooManyStreams`] when the limit is reached and nothing can be forgotten.
    pub fn try_stream(
        &self,
        group: &str,
        has_members: impl Fn(&str) -> bool,
    ) -> Result<StreamRef, TooManyStreams> {
        let mut groups = self.groups.lock();
        if let Some(s) = groups.get(group) {
            return Ok(s.clone());
        }
        let max = self.config.max_streams;
        if groups.len() >= max {
            groups.retain(|name, s| {
                Arc::strong_count(s) > 1
                    || has_members(name)
                    || s.try_lock().is_none_or(|s| !s.entries.is_empty())
            });
            if groups.len() >= max {
                return Err(TooManyStreams(max));
            }
        }
        let s = self.create();
        groups.insert(Arc::from(group), s.clone());
        Ok(s)
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

    /// Bytes stored across every stream.
    pub fn bytes(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Messages evicted so far to keep within [`HistoryConfig::max_bytes`].
    pub fn evicted(&self) -> u64 {
        self.evicted.get()
    }

    /// Drops expired messages, and forgets group streams that have no members (by
    /// `has_members`) and have published nothing for the history TTL (their epoch with them:
    /// a client coming back after that gets `recovered: false`).
    pub fn sweep(&self, has_members: impl Fn(&str) -> bool) {
        let now = Instant::now();
        self.all.lock().expire(now);
        let idle = self.config.ttl;
        self.groups.lock().retain(|name, s| {
            // Nobody else holds it while we hold the map, so nobody can be publishing into a
            // stream we are about to forget.
            if Arc::strong_count(s) > 1 {
                return true;
            }
            let mut s = s.lock();
            s.expire(now);
            has_members(name)
                || !s.entries.is_empty()
                || now.saturating_duration_since(s.touched) < idle
        });
    }

    /// When the stored bytes passed [`HistoryConfig::max_bytes`], evicts the oldest messages,
    /// whichever streams they are in, until a tenth of the budget is free again. Call it with
    /// no stream locked (it locks them one at a time).
    pub fn enforce_budget(&self) {
        let max = self.config.max_bytes;
        if self.bytes() <= max {
            return;
        }
        let Some(_pass) = self.evicting.try_lock() else {
            // Another caller is evicting right now.
            return;
        };
        let target = max - max / 10;
        let mut streams: Vec<StreamRef> = self.groups.lock().values().cloned().collect();
        streams.push(self.all.clone());
        let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.lock().oldest().map(|at| Reverse((at, i))))
            .collect();
        let mut evicted = 0u64;
        while self.bytes() > target {
            let Some(Reverse((_, i))) = heap.pop() else {
                break;
            };
            let mut s = streams[i].lock();
            if s.pop_front() {
                evicted += 1;
            }
            if let Some(at) = s.oldest() {
                heap.push(Reverse((at, i)));
            }
        }
        self.evicted.inc_by(evicted);
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
            ..HistoryConfig::default()
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
        let mut s = Stream::new(cfg(10), Arc::default());
        assert_eq!(s.position().offset, 0);
        publish(&mut s, 3);
        assert_eq!(s.position().offset, 3);
    }

    #[test]
    fn replays_exactly_what_was_missed() {
        let mut s = Stream::new(cfg(10), Arc::default());
        publish(&mut s, 5);
        let at = Position {
            epoch: s.position().epoch,
            offset: 2,
        };
        let r = s.replay(&at, ReplayLimit::frames(100));
        assert!(r.recovered);
        assert_eq!(texts(&r), ["m3", "m4", "m5"]);
        let r = s.replay(&s.position(), ReplayLimit::frames(100));
        assert!(r.recovered && r.frames.is_empty());
    }

    #[test]
    fn another_epoch_or_a_future_offset_is_not_recovered() {
        let mut s = Stream::new(cfg(10), Arc::default());
        publish(&mut s, 3);
        let other = Position {
            epoch: "nope".into(),
            offset: 1,
        };
        let r = s.replay(&other, ReplayLimit::frames(100));
        assert!(!r.recovered && r.frames.is_empty());
        let future = Position {
            epoch: s.position().epoch,
            offset: 4,
        };
        let r = s.replay(&future, ReplayLimit::frames(100));
        assert!(!r.recovered && r.frames.is_empty());
    }

    #[test]
    fn trimmed_history_replays_what_is_left_and_says_so() {
        let mut s = Stream::new(cfg(3), Arc::default());
        publish(&mut s, 6);
        let epoch = s.position().epoch;
        let r = s.replay(
            &Position {
                epoch: epoch.clone(),
                offset: 1,
            },
            ReplayLimit::frames(100),
        );
        assert!(!r.recovered);
        assert_eq!(texts(&r), ["m4", "m5", "m6"]);
        // Exactly at the edge: offset 3 missed 4..=6, all kept.
        let r = s.replay(&Position { epoch, offset: 3 }, ReplayLimit::frames(100));
        assert!(r.recovered);
        assert_eq!(r.frames.len(), 3);
    }

    #[test]
    fn a_replay_over_the_limit_keeps_the_newest() {
        let mut s = Stream::new(cfg(10), Arc::default());
        publish(&mut s, 8);
        let at = Position {
            epoch: s.position().epoch,
            offset: 0,
        };
        let r = s.replay(&at, ReplayLimit::frames(2));
        assert!(!r.recovered);
        assert_eq!(texts(&r), ["m7", "m8"]);
    }

    #[test]
    fn no_history_still_counts_and_recovers_an_up_to_date_client() {
        let mut s = Stream::new(cfg(0), Arc::default());
        publish(&mut s, 2);
        assert!(s.replay(&s.position(), ReplayLimit::frames(10)).recovered);
        let behind = Position {
            epoch: s.position().epoch,
            offset: 1,
        };
        assert!(!s.replay(&behind, ReplayLimit::frames(10)).recovered);
    }

    #[tokio::test(start_paused = true)]
    async fn messages_expire_by_age_and_idle_streams_are_forgotten() {
        let h = History::new(cfg(10));
        {
            let g = h.stream("g");
            let mut s = g.lock();
            publish(&mut s, 2);
        }
        let nobody = |_: &str| false;
        tokio::time::advance(Duration::from_secs(30)).await;
        h.sweep(nobody);
        assert_eq!(h.stream("g").lock().since(None, 10).len(), 2);
        // A group with members keeps its stream (and its epoch) however quiet it is.
        tokio::time::advance(Duration::from_secs(31)).await;
        h.sweep(|g| g == "g");
        let g = h.existing("g").unwrap();
        assert!(g.lock().since(None, 10).is_empty());
        assert_eq!(g.lock().first_kept(), 3, "offsets survive expiry");
        assert_eq!(h.bytes(), 0, "expired messages give their bytes back");
        drop(g);
        // Without members, a TTL after its last publication, it goes.
        h.sweep(nobody);
        assert!(h.existing("g").is_none());
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_messages_of_any_stream() {
        let frame_cost = encode(OpCode::Text, &[0u8; 1000]).len() + STORED_OVERHEAD;
        let h = History::new(HistoryConfig {
            size: 100,
            ttl: Duration::from_secs(60),
            max_bytes: frame_cost * 10,
            max_streams: 10,
        });
        // Five old messages in "old", then eight newer ones in "new": 13 > 10.
        for (group, n) in [("old", 5), ("new", 8)] {
            let g = h.stream(group);
            let mut s = g.lock();
            for _ in 0..n {
                s.append(encode(OpCode::Text, &[0u8; 1000]));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(h.bytes(), 13 * frame_cost);
        h.enforce_budget();
        // Down to 90% of the budget: 9 messages, the 4 evicted all from the older stream.
        assert_eq!(h.bytes(), 9 * frame_cost);
        assert_eq!(h.evicted(), 4);
        assert_eq!(h.stream("old").lock().first_kept(), 5);
        assert_eq!(h.stream("new").lock().first_kept(), 1);
        // Forgetting a stream gives its bytes back.
        h.sweep(|_| true);
        drop(h.groups.lock().remove("new"));
        assert_eq!(h.bytes(), frame_cost);
    }

    #[test]
    fn the_number_of_streams_is_bounded() {
        let h = History::new(HistoryConfig {
            max_streams: 2,
            ..cfg(10)
        });
        let members = |g: &str| g == "a";
        let a = h.try_stream("a", members).unwrap();
        let b = h.try_stream("b", members).unwrap();
        drop(a);
        b.lock().append(encode(OpCode::Text, b"kept"));
        drop(b);
        // "a" has members and "b" keeps a message: nothing can go.
        assert_eq!(h.try_stream("c", members).err(), Some(TooManyStreams(2)));
        assert!(
            h.existing("c").is_none(),
            "a refused stream leaves no state"
        );
        // Once "a" has no members it makes room.
        assert!(h.try_stream("c", |_| false).is_ok());
        assert!(h.existing("a").is_none());
        assert!(
            h.try_stream("b", |_| false).is_ok(),
            "an existing stream is always there"
        );
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
