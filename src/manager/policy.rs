//! Delivery policies: what happens to a group's messages queued for a connection that reads
//! too slowly, chosen per group pattern.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::frame::Frame;

use super::Protocol;

/// What a connection that reads too slowly gets for a group's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Its queue is full: it is closed as a slow consumer (1008). Nothing is ever skipped.
    #[default]
    Disconnect,
    /// Its queue is full: its queued messages of the group are dropped and it is sent a `gap`
    /// naming the group and the offsets it lost, to recover from history. It stays.
    DropOldest,
    /// At most the newest message of the group (or of each key in it) waits for it: a newer
    /// one replaces the one still queued (conflation, for tickers and positions).
    KeepLatest,
}

impl Policy {
    /// The name used in options and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Disconnect => "disconnect",
            Policy::DropOldest => "drop-oldest",
            Policy::KeepLatest => "keep-latest",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "disconnect" => Ok(Policy::Disconnect),
            "drop-oldest" => Ok(Policy::DropOldest),
            "keep-latest" => Ok(Policy::KeepLatest),
            other => Err(format!(
                "unknown delivery policy `{other}` (disconnect, drop-oldest or keep-latest)"
            )),
        }
    }
}

/// A group pattern and its policy: `feed:*=drop-oldest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// An exact group name, or a prefix ending in `*`.
    pub pattern: String,
    /// What its slow readers get.
    pub policy: Policy,
}

impl Rule {
    /// Parses `PATTERN=POLICY`.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (pattern, policy) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected PATTERN=POLICY, e.g. 'feed:*=drop-oldest'"))?;
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(format!("`{s}`: the group pattern is empty"));
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            policy: policy.parse()?,
        })
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.pattern, self.policy.name())
    }
}

/// The frame telling a connection of `protocol` that it lost the offsets `from..=to` of
/// `group`.
pub type GapFrame = fn(protocol: Protocol, group: &str, from: u64, to: u64) -> Frame;

/// What a rule did, counted per rule.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    /// Messages dropped from slow readers' queues (drop-oldest).
    pub dropped: Counter,
    /// Messages replaced by a newer one still queued (keep-latest).
    pub conflated: Counter,
    /// `gap` frames sent.
    pub gaps: Counter,
}

/// A group under a policy other than `disconnect`: what every queued message of it refers to.
pub struct Lane {
    /// The policy.
    pub policy: Policy,
    /// The group.
    pub group: Arc<str>,
    /// How to tell a connection what it lost.
    pub gap: GapFrame,
    /// The rule's counters.
    pub meter: Meter,
}

/// A group's message offered under a policy other than `disconnect` (made once per
/// publication; a queued message keeps a reference to its lane, not a copy).
#[derive(Clone)]
pub struct Tag {
    /// The group and its policy.
    pub lane: Arc<Lane>,
    /// Its offset in the group's stream.
    pub offset: u64,
    /// The conflation key (keep-latest): messages with the same key replace each other.
    pub key: Option<u64>,
    /// Its own TTL's end: a copy still queued then is not sent (a `gap` takes its place).
    pub expires: Option<std::time::Instant>,
}

/// The key of a publication, as a hash (what conflation compares).
pub fn key_hash(key: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Fixed keys: the same key hashes the same in every connection's queue.
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write(key.as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        assert_eq!(
            Rule::parse("feed:*=drop-oldest").unwrap(),
            Rule {
                pattern: "feed:*".into(),
                policy: Policy::DropOldest
            }
        );
        assert_eq!(
            Rule::parse("ticker = keep-latest").unwrap().to_string(),
            "ticker=keep-latest"
        );
        assert!(Rule::parse("feed").is_err());
        assert!(Rule::parse("=drop-oldest").is_err());
        assert!(Rule::parse("x=sometimes")
            .unwrap_err()
            .contains("keep-latest"));
        assert_eq!(key_hash("AAPL"), key_hash("AAPL"));
        assert_ne!(key_hash("AAPL"), key_hash("MSFT"));
    }
}
