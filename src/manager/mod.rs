//! The connection manager: a thread-safe registry of live connections.
//!
//! It is generic over a small [`Sink`] trait so it can be unit-tested without a network: a test
//! double stands in for a real socket. In the server the sink is the connection's
//! [`Outbox`](crate::outbox::Outbox).
//!
//! Sending never waits. A broadcast holds the read lock only while it offers the (already
//! encoded, shared) frame to each sink; sinks that are closed or full are collected and removed
//! afterwards under the write lock, and a full one is closed as a slow consumer. One slow or
//! dead connection therefore never delays or fails a broadcast to the others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;

use crate::close::CloseReason;
use crate::frame::{deflate, Frame};
use crate::id::ConnId;

mod cork;
mod members;
pub mod policy;
mod sink;

use members::Members;

pub use cork::Cork;
pub use sink::{Frames, Protocol, Queued, SendError, Sink};

/// What the registry knows about a connection besides its sink.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// When the connection was accepted, in milliseconds since the Unix epoch (see
    /// [`connected_at`](Self::connected_at); 8 bytes in every registry entry, not 16).
    pub connected_ms: u64,
    /// The peer's address, when the server knows it.
    pub remote_addr: Option<SocketAddr>,
    /// The authenticated user, if any.
    pub user: Option<Arc<str>>,
    /// The negotiated protocol.
    pub protocol: Protocol,
    /// What the backend said about the user (JSON text, from the `connect` hook).
    pub user_info: Option<Arc<str>>,
    /// It negotiated `permessage-deflate` and takes the frames compressed once for everyone.
    pub deflate: bool,
}

impl ConnInfo {
    /// Info for an anonymous plain connection accepted now from `remote_addr`.
    pub fn now(remote_addr: Option<SocketAddr>) -> Self {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            connected_ms: ms,
            remote_addr,
            user: None,
            protocol: Protocol::Plain,
            user_info: None,
            deflate: false,
        }
    }

    /// When the connection was accepted.
    pub fn connected_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(self.connected_ms)
    }
}

/// One registered connection.
pub struct Entry<S> {
    /// Its id.
    pub id: ConnId,
    /// Its metadata.
    pub info: ConnInfo,
    /// The sink frames are delivered to: the very instance that was added.
    pub sink: Arc<S>,
    /// Its groups and grants, under one lock (one lock word in every entry, not two).
    member: parking_lot::Mutex<Membership>,
}

/// What a connection is a member of and may join.
struct Membership {
    /// The groups it is a member of (changed under the registry's write lock).
    groups: Vec<Arc<str>>,
    /// What its token allows now (given at connect; a refreshed token replaces it).
    grants: Grants,
}

/// What a connection's token allows: the groups, until when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Group patterns it may join (exact names, or prefixes ending in `*`); `None`: every
    /// group.
    pub allowed_groups: Option<Arc<[String]>>,
    /// When the token expires (Unix seconds).
    pub expires_at: Option<u64>,
}

impl Grants {
    /// Whether these grants allow joining `group`.
    pub fn may_join(&self, group: &str) -> bool {
        self.allowed_groups.as_ref().is_none_or(|patterns| {
            patterns
                .iter()
                .any(|p| crate::protocol::group_matches(p, group))
        })
    }
}

impl<S> Entry<S> {
    /// What its token allows now.
    pub fn grants(&self) -> Grants {
        self.member.lock().grants.clone()
    }

    /// Replaces what its token allows (a refresh).
    pub fn set_grants(&self, grants: Grants) {
        self.member.lock().grants = grants;
    }

    /// Whether it may join `group` now.
    pub fn may_join(&self, group: &str) -> bool {
        self.member.lock().grants.may_join(group)
    }

    /// When its token expires now (Unix seconds).
    pub fn expires_at(&self) -> Option<u64> {
        self.member.lock().grants.expires_at
    }

    /// The groups this connection is a member of, in joining order.
    pub fn groups(&self) -> Vec<Arc<str>> {
        self.member.lock().groups.clone()
    }
}

/// Who a publication is for.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// Every connection.
    All,
    /// Every connection without a subprotocol (plain-mode announcements).
    Plain,
    /// Every `wshub.v1` connection.
    V1,
    /// The members of a group.
    Group(&'a str),
    /// The members of a group but one.
    GroupExcept(&'a str, ConnId),
    /// Every connection of a user.
    User(&'a str),
}

/// Why a join failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// No connection has that id.
    #[error("unknown connection")]
    Unknown,
    /// The connection is already in as many groups as allowed.
    #[error("too many groups for one connection (limit {0})")]
    TooManyGroups(usize),
}

struct Inner<S> {
    conns: Members<S>,
    groups: HashMap<Arc<str>, Members<S>>,
    users: HashMap<Arc<str>, Members<S>>,
}

/// The outcome of a broadcast.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Connections that accepted the frame.
    pub delivered: usize,
    /// Connections closed as slow consumers (their queue was full).
    pub slow: usize,
    /// Connections found already closed, and removed.
    pub dead: usize,
}

/// Why [`ConnectionManager::send_to`] did not deliver a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Undelivered {
    /// No connection has that id.
    #[error("unknown connection")]
    Unknown,
    /// The connection is closing or closed (it has now been removed).
    #[error("connection closed")]
    Closed,
    /// Its queue was full: it has been closed as a slow consumer and removed.
    #[error("slow consumer")]
    SlowConsumer,
}

/// A thread-safe registry of connections, keyed by [`ConnId`], with group and user indexes.
///
/// Every index maps straight to the entries, so a broadcast to a group of 10,000 walks that
/// group's map and nothing else. Joins and leaves take the write lock briefly; sending only the
/// read lock.
pub struct ConnectionManager<S> {
    inner: RwLock<Inner<S>>,
    /// How frames are compressed for connections that negotiated it (`None`: never).
    compression: Option<Compression>,
}

/// Compression settings and their counters.
#[derive(Debug, Clone)]
pub struct Compression {
    /// Threshold and level.
    pub settings: deflate::Settings,
    /// What was compressed and sent.
    pub metrics: crate::metrics::DeflateMetrics,
}

/// The compressed variants of the frames of one publication (one per protocol at most), each
/// made when a recipient that takes compressed frames first needs it, then shared.
struct Packed<'c> {
    compression: Option<&'c Compression>,
    /// (address and length of the plain frame, its compressed form if compression helps).
    made: Vec<((usize, usize), Option<Frame>)>,
    /// Frames that went out compressed.
    sent: u64,
}

impl<'c> Packed<'c> {
    fn new(compression: Option<&'c Compression>) -> Self {
        Self {
            compression,
            made: Vec::new(),
            sent: 0,
        }
    }

    /// What a recipient gets instead of `plain`: its compressed form when the recipient
    /// negotiated compression and it is worth it.
    fn pick<'a>(&'a mut self, plain: &'a Frame, deflate: bool) -> &'a Frame {
        let Some(c) = self.compression.filter(|_| deflate) else {
            return plain;
        };
        let key = (plain.as_ptr() as usize, plain.len());
        let i = match self.made.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let packed = deflate::compress_frame(plain, &c.settings, deflate::SHARED_WINDOW);
                if let Some(p) = &packed {
                    c.metrics.compressed(plain.len(), p.len());
                }
                self.made.push((key, packed));
                self.made.len() - 1
            }
        };
        match &self.made[i].1 {
            Some(p) => {
                self.sent += 1;
                p
            }
            None => plain,
        }
    }
}

impl Drop for Packed<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.compression.filter(|_| self.sent > 0) {
            c.metrics.frames_sent.inc_by(self.sent);
        }
    }
}

impl<S: Sink> Default for ConnectionManager<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Sink> ConnectionManager<S> {
    /// An empty registry that never compresses.
    pub fn new() -> Self {
        Self::with_compression(None)
    }

    /// An empty registry that compresses frames for the connections that negotiated it.
    pub fn with_compression(compression: Option<Compression>) -> Self {
        Self {
            inner: RwLock::new(Inner {
                conns: Members::default(),
                groups: HashMap::new(),
                users: HashMap::new(),
            }),
            compression,
        }
    }

    /// Registers `sink` under a new unique id and returns the id.
    pub fn add(&self, sink: Arc<S>, info: ConnInfo) -> ConnId {
        self.add_entry(sink, info, Grants::default()).id
    }

    /// Registers `sink` under a new unique id and returns its entry.
    pub fn add_entry(&self, sink: Arc<S>, info: ConnInfo, grants: Grants) -> Arc<Entry<S>> {
        let mut inner = self.inner.write();
        loop {
            let id = ConnId::random();
            if inner.conns.contains(&id) {
                continue;
            }
            let user = info.user.clone();
            let entry = Arc::new(Entry {
                id,
                info,
                sink,
                member: parking_lot::Mutex::new(Membership {
                    groups: Vec::new(),
                    grants,
                }),
            });
            if let Some(user) = user {
                inner.users.entry(user).or_default().insert(entry.clone());
            }
            inner.conns.insert(entry.clone());
            return entry;
        }
    }

    /// Removes a connection from the registry and from every group and user index; returns its
    /// entry, or `None` when it was not registered. Groups left empty disappear.
    pub fn remove(&self, id: ConnId) -> Option<Arc<Entry<S>>> {
        let mut inner = self.inner.write();
        let entry = inner.conns.remove(&id)?;
        // The entry keeps its group list, so whoever holds it can still tell the groups it left.
        for g in entry.member.lock().groups.iter() {
            if let Some(members) = inner.groups.get_mut(g) {
                members.remove(&id);
                if members.is_empty() {
                    inner.groups.remove(g);
                }
            }
        }
        if let Some(user) = &entry.info.user {
            if let Some(conns) = inner.users.get_mut(user) {
                conns.remove(&id);
                if conns.is_empty() {
                    inner.users.remove(user);
                }
            }
        }
        Some(entry)
    }

    /// The entry registered under `id`.
    pub fn get(&self, id: ConnId) -> Option<Arc<Entry<S>>> {
        self.inner.read().conns.get(&id).cloned()
    }

    /// Number of registered connections.
    pub fn count(&self) -> usize {
        self.inner.read().conns.len()
    }

    /// The ids of all registered connections.
    pub fn ids(&self) -> Vec<ConnId> {
        self.inner.read().conns.entries().map(|e| e.id).collect()
    }

    /// All registered entries (a snapshot).
    pub fn entries(&self) -> Vec<Arc<Entry<S>>> {
        self.inner.read().conns.entries().cloned().collect()
    }

    /// Adds a connection to a group (created on first join). Returns `Ok(false)` when it was
    /// already a member. At most `limit` groups per connection.
    ///
    /// # Errors
    /// [`JoinError`] for an unknown connection or one at its group limit.
    pub fn join(&self, id: ConnId, group: &str, limit: usize) -> Result<bool, JoinError> {
        let mut inner = self.inner.write();
        let entry = inner.conns.get(&id).cloned().ok_or(JoinError::Unknown)?;
        let mut member = entry.member.lock();
        let groups = &mut member.groups;
        if groups.iter().any(|g| &**g == group) {
            return Ok(false);
        }
        if groups.len() >= limit {
            return Err(JoinError::TooManyGroups(limit));
        }
        let name: Arc<str> = match inner.groups.get_key_value(group) {
            Some((k, _)) => k.clone(),
            None => Arc::from(group),
        };
        groups.push(name.clone());
        drop(member);
        inner.groups.entry(name).or_default().insert(entry);
        Ok(true)
    }

    /// Removes a connection from a group; `false` when it was not a member. A group left
    /// empty disappears.
    pub fn leave(&self, id: ConnId, group: &str) -> bool {
        let mut inner = self.inner.write();
        let Some(entry) = inner.conns.get(&id).cloned() else {
            return false;
        };
        let mut member = entry.member.lock();
        let Some(at) = member.groups.iter().position(|g| &**g == group) else {
            return false;
        };
        member.groups.remove(at);
        drop(member);
        if let Some(members) = inner.groups.get_mut(group) {
            members.remove(&id);
            if members.is_empty() {
                inner.groups.remove(group);
            }
        }
        true
    }

    /// Whether `group` has members.
    pub fn has_group(&self, group: &str) -> bool {
        self.inner.read().groups.contains_key(group)
    }

    /// What [`join`](Self::join) would answer, without joining: `Ok(false)` when already a
    /// member (so a refused join can be refused before anything else is touched).
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn check_join(&self, id: ConnId, group: &str, limit: usize) -> Result<bool, JoinError> {
        let inner = self.inner.read();
        let entry = inner.conns.get(&id).ok_or(JoinError::Unknown)?;
        let member = entry.member.lock();
        if member.groups.iter().any(|g| &**g == group) {
            return Ok(false);
        }
        if member.groups.len() >= limit {
            return Err(JoinError::TooManyGroups(limit));
        }
        Ok(true)
    }

    /// Whether `id` is a member of `group`.
    pub fn is_member(&self, id: ConnId, group: &str) -> bool {
        self.inner
            .read()
            .groups
            .get(group)
            .is_some_and(|m| m.contains(&id))
    }

    /// Every group with its member count, sorted by name.
    pub fn groups(&self) -> Vec<(Arc<str>, usize)> {
        let mut list: Vec<_> = self
            .inner
            .read()
            .groups
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect();
        list.sort();
        list
    }

    /// Every user with connections, and how many.
    pub fn users(&self) -> Vec<(Arc<str>, usize)> {
        self.inner
            .read()
            .users
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }

    /// How many connections are members of `group` (`None`: no such group). Constant time:
    /// a join's ack reads it, and listing the members to count them cost a join into a group
    /// of 19,000 members ~0.1 ms (1.9 million joins took three minutes).
    pub fn group_size(&self, group: &str) -> Option<usize> {
        self.inner.read().groups.get(group).map(Members::len)
    }

    /// The members of a group, or `None` when the group does not exist (it has no members).
    pub fn group_members(&self, group: &str) -> Option<Vec<Arc<Entry<S>>>> {
        self.inner
            .read()
            .groups
            .get(group)
            .map(|m| m.entries().cloned().collect())
    }

    /// The connections of a user (empty when it has none).
    pub fn user_connections(&self, user: &str) -> Vec<Arc<Entry<S>>> {
        self.inner
            .read()
            .users
            .get(user)
            .map(|m| m.entries().cloned().collect())
            .unwrap_or_default()
    }

    /// Sends a frame to one connection. Returns `false` when the id is unknown or the connection
    /// is closed; a connection whose queue is full is closed as a slow consumer and removed.
    pub fn send(&self, id: ConnId, frame: &Frame) -> bool {
        self.send_to(id, frame).is_ok()
    }

    /// Like [`send`](Self::send), saying why a frame was not delivered.
    ///
    /// # Errors
    /// [`Undelivered`] when the id is unknown, the connection closed, or it was just closed as
    /// a slow consumer.
    pub fn send_to(&self, id: ConnId, frame: &Frame) -> Result<(), Undelivered> {
        let mut cork = Cork::new();
        let r = self.send_corked(id, frame, &mut cork);
        cork.flush();
        r
    }

    /// Like [`send_to`](Self::send_to), leaving the flush to the caller's `cork`.
    ///
    /// # Errors
    /// As [`send_to`](Self::send_to).
    pub fn send_corked(
        &self,
        id: ConnId,
        frame: &Frame,
        cork: &mut Cork<S>,
    ) -> Result<(), Undelivered> {
        let entry = self.get(id).ok_or(Undelivered::Unknown)?;
        let mut packed = Packed::new(self.compression.as_ref());
        let frame = packed.pick(frame, entry.info.deflate);
        match entry.sink.try_send(frame) {
            Ok(Queued::NeedsFlush) => {
                cork.add(entry);
                Ok(())
            }
            Ok(Queued::Done) => Ok(()),
            Err(e) => {
                self.evict(&entry, e);
                Err(match e {
                    SendError::Full => Undelivered::SlowConsumer,
                    SendError::Closed => Undelivered::Closed,
                })
            }
        }
    }

    /// Offers a frame to every connection, then flushes. Closed connections are skipped and
    /// removed; full ones are closed as slow consumers and removed. Never waits on a
    /// connection.
    pub fn broadcast(&self, frame: &Frame) -> Delivery {
        let mut cork = Cork::new();
        let d = self.publish_corked(Audience::All, frame, &mut cork);
        cork.flush();
        d
    }

    /// Like [`broadcast`](Self::broadcast), leaving the flush to the caller's `cork`.
    pub fn broadcast_corked(&self, frame: &Frame, cork: &mut Cork<S>) -> Delivery {
        self.publish_corked(Audience::All, frame, cork)
    }

    /// Offers a frame to an audience; the flush is left to `cork`. An unknown group or user is
    /// an empty audience.
    pub fn publish_corked(
        &self,
        audience: Audience<'_>,
        frame: &Frame,
        cork: &mut Cork<S>,
    ) -> Delivery {
        self.publish_by_protocol(audience, frame, cork)
    }

    /// Like [`publish_corked`](Self::publish_corked), with a frame per protocol (`wshub.v1`
    /// frames carry stream offsets, Pusher frames are Pusher events).
    pub fn publish_by_protocol(
        &self,
        audience: Audience<'_>,
        frames: &dyn Frames,
        cork: &mut Cork<S>,
    ) -> Delivery {
        self.publish_tagged(audience, frames, None, cork)
    }

    /// Like [`publish_by_protocol`](Self::publish_by_protocol), for a group's message under a
    /// delivery policy (`tag`): each sink applies it when the connection reads too slowly.
    pub fn publish_tagged(
        &self,
        audience: Audience<'_>,
        frames: &dyn Frames,
        tag: Option<&policy::Tag>,
        cork: &mut Cork<S>,
    ) -> Delivery {
        let mut report = Delivery::default();
        let mut failed: Vec<(Arc<Entry<S>>, SendError)> = Vec::new();
        let mut packed = Packed::new(self.compression.as_ref());
        {
            let inner = self.inner.read();
            let members = match audience {
                Audience::All | Audience::Plain | Audience::V1 => Some(&inner.conns),
                Audience::Group(g) | Audience::GroupExcept(g, _) => inner.groups.get(g),
                Audience::User(u) => inner.users.get(u),
            };
            let only = match audience {
                Audience::Plain => Some(Protocol::Plain),
                Audience::V1 => Some(Protocol::V1),
                _ => None,
            };
            let except = match audience {
                Audience::GroupExcept(_, id) => Some(id),
                _ => None,
            };
            for entry in members.into_iter().flat_map(|m| m.entries()) {
                if only.is_some_and(|p| entry.info.protocol != p) || except == Some(entry.id) {
                    continue;
                }
                let Some(frame) = frames.frame_for(entry.info.protocol) else {
                    continue;
                };
                let frame = packed.pick(frame, entry.info.deflate);
                let offered = match tag {
                    Some(t) => entry.sink.try_send_tagged(frame, t, entry.info.protocol),
                    None => entry.sink.try_send(frame),
                };
                match offered {
                    Ok(q) => {
                        report.delivered += 1;
                        if q == Queued::NeedsFlush {
                            cork.add(entry.clone());
                        }
                    }
                    Err(e) => failed.push((entry.clone(), e)),
                }
            }
        }
        for (entry, e) in failed {
            match e {
                SendError::Full => report.slow += 1,
                SendError::Closed => report.dead += 1,
            }
            self.evict(&entry, e);
        }
        report
    }

    fn evict(&self, entry: &Arc<Entry<S>>, e: SendError) {
        if e == SendError::Full {
            tracing::warn!(conn = %entry.id, "slow consumer: outbound queue full, closing");
            entry.sink.close(CloseReason::SlowConsumer);
        }
        // Ids are never reused, so removing by id removes this very entry.
        self.remove(entry.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use parking_lot::Mutex;

    /// A test double: records frames, can be closed, can be made full.
    #[derive(Default)]
    struct FakeSink {
        frames: Mutex<Vec<Frame>>,
        closed: Mutex<Option<CloseReason>>,
        full: bool,
    }

    impl FakeSink {
        fn full() -> Self {
            Self {
                full: true,
                ..Self::default()
            }
        }
        fn closed() -> Self {
            let s = Self::default();
            *s.closed.lock() = Some(CloseReason::Normal(1000));
            s
        }
    }

    impl Sink for FakeSink {
        fn try_send(&self, frame: &Frame) -> Result<Queued, SendError> {
            if self.closed.lock().is_some() {
                return Err(SendError::Closed);
            }
            if self.full {
                return Err(SendError::Full);
            }
            self.frames.lock().push(frame.clone());
            Ok(Queued::Done)
        }
        fn close(&self, reason: CloseReason) {
            self.closed.lock().get_or_insert(reason);
        }
        fn is_open(&self) -> bool {
            self.closed.lock().is_none()
        }
    }

    fn mgr() -> ConnectionManager<FakeSink> {
        ConnectionManager::new()
    }

    fn info() -> ConnInfo {
        ConnInfo::now(None)
    }

    #[test]
    fn add_returns_unique_ids() {
        let m = mgr();
        let ids: std::collections::HashSet<_> = (0..1000)
            .map(|_| m.add(Arc::new(FakeSink::default()), info()))
            .collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn add_increments_count() {
        let m = mgr();
        assert_eq!(m.count(), 0);
        m.add(Arc::new(FakeSink::default()), info());
        assert_eq!(m.count(), 1);
        m.add(Arc::new(FakeSink::default()), info());
        assert_eq!(m.count(), 2);
    }

    #[test]
    fn remove_decrements_count_and_returns_the_entry() {
        let m = mgr();
        let sink = Arc::new(FakeSink::default());
        let id = m.add(sink.clone(), info());
        let removed = m.remove(id).expect("entry");
        assert!(Arc::ptr_eq(&removed.sink, &sink));
        assert_eq!(m.count(), 0);
    }

    #[test]
    fn remove_unknown_returns_none() {
        let m = mgr();
        m.add(Arc::new(FakeSink::default()), info());
        assert!(m.remove(ConnId::random()).is_none());
        assert_eq!(m.count(), 1);
    }

    #[test]
    fn get_returns_the_registered_instance() {
        let m = mgr();
        let sink = Arc::new(FakeSink::default());
        let id = m.add(sink.clone(), info());
        let entry = m.get(id).expect("entry");
        assert!(Arc::ptr_eq(&entry.sink, &sink));
        assert_eq!(entry.id, id);
    }

    #[test]
    fn get_unknown_returns_none() {
        assert!(mgr().get(ConnId::random()).is_none());
    }

    #[test]
    fn ids_lists_all() {
        let m = mgr();
        let mut added: Vec<_> = (0..5)
            .map(|_| m.add(Arc::new(FakeSink::default()), info()))
            .collect();
        let mut ids = m.ids();
        added.sort();
        ids.sort();
        assert_eq!(ids, added);
    }

    #[test]
    fn send_to_unknown_returns_false() {
        assert!(!mgr().send(ConnId::random(), &Bytes::from_static(b"x")));
    }

    #[test]
    fn send_to_closed_returns_false_and_removes_it() {
        let m = mgr();
        let id = m.add(Arc::new(FakeSink::closed()), info());
        assert!(!m.send(id, &Bytes::from_static(b"x")));
        assert_eq!(m.count(), 0);
    }

    #[test]
    fn send_to_open_delivers_the_frame() {
        let m = mgr();
        let sink = Arc::new(FakeSink::default());
        let id = m.add(sink.clone(), info());
        assert!(m.send(id, &Bytes::from_static(b"x")));
        assert_eq!(sink.frames.lock().as_slice(), &[Bytes::from_static(b"x")]);
    }

    #[test]
    fn broadcast_reaches_everyone_with_the_same_bytes() {
        let m = mgr();
        let sinks: Vec<_> = (0..3).map(|_| Arc::new(FakeSink::default())).collect();
        for s in &sinks {
            m.add(s.clone(), info());
        }
        let frame = Bytes::from(vec![1u8; 100]);
        let d = m.broadcast(&frame);
        assert_eq!(d.delivered, 3);
        for s in &sinks {
            let got = s.frames.lock();
            // Encoded once: every recipient holds the very same buffer.
            assert_eq!(got[0].as_ptr(), frame.as_ptr());
        }
    }

    #[test]
    fn broadcast_skips_and_removes_dead_connections() {
        let m = mgr();
        let live = Arc::new(FakeSink::default());
        m.add(live.clone(), info());
        m.add(Arc::new(FakeSink::closed()), info());
        let d = m.broadcast(&Bytes::from_static(b"x"));
        assert_eq!(
            d,
            Delivery {
                delivered: 1,
                slow: 0,
                dead: 1
            }
        );
        assert_eq!(m.count(), 1);
        assert_eq!(live.frames.lock().len(), 1);
    }

    #[test]
    fn broadcast_closes_slow_consumers_as_1008() {
        let m = mgr();
        let slow = Arc::new(FakeSink::full());
        m.add(slow.clone(), info());
        m.add(Arc::new(FakeSink::default()), info());
        let d = m.broadcast(&Bytes::from_static(b"x"));
        assert_eq!((d.delivered, d.slow), (1, 1));
        assert_eq!(*slow.closed.lock(), Some(CloseReason::SlowConsumer));
        assert_eq!(CloseReason::SlowConsumer.code(), 1008);
        assert_eq!(m.count(), 1);
    }

    #[test]
    fn broadcast_on_empty_registry_delivers_nothing() {
        assert_eq!(mgr().broadcast(&Bytes::new()), Delivery::default());
    }

    #[test]
    fn concurrent_adds_and_broadcasts_are_consistent() {
        let m = Arc::new(mgr());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        let id = m.add(Arc::new(FakeSink::default()), info());
                        m.broadcast(&Bytes::from_static(b"x"));
                        if m.get(id).is_none() {
                            panic!("lost an entry");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.count(), 1000);
    }
}
