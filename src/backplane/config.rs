//! Which backplane a node uses and its settings.

use std::time::Duration;

/// Which backplane a node uses, from `--backplane`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackplaneUrl {
    /// Single node, nothing shared (the default).
    Memory,
    /// A Redis server: `redis://host:port[/db]`.
    Redis(String),
    /// A NATS server with JetStream: `nats://host:port`.
    Nats(String),
    /// Hubs of this process sharing an in-process bus: `local://name` (tests, or one hub per
    /// core behaving as one).
    Local(String),
}

impl std::str::FromStr for BackplaneUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            Ok(Self::Memory)
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            Ok(Self::Redis(s.to_owned()))
        } else if s.starts_with("nats://") || s.starts_with("tls://") {
            Ok(Self::Nats(s.to_owned()))
        } else if let Some(name) = s.strip_prefix("local://").filter(|n| !n.is_empty()) {
            Ok(Self::Local(name.to_owned()))
        } else {
            Err(format!(
                "`{s}`: the backplane is `memory`, a `redis://host:port` or a `nats://host:port` URL"
            ))
        }
    }
}

impl std::fmt::Display for BackplaneUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Redis(u) | Self::Nats(u) => f.write_str(u),
            Self::Local(name) => write!(f, "local://{name}"),
        }
    }
}

/// Settings of a shared backplane.
#[derive(Debug, Clone)]
pub struct BackplaneConfig {
    /// The engine.
    pub url: BackplaneUrl,
    /// Key and channel prefix, so several hubs can share one engine.
    pub prefix: String,
    /// How often this node renews its entries.
    pub heartbeat: Duration,
    /// How long a node's entries outlive its last heartbeat (a crashed node's connections
    /// disappear from listings within this).
    pub node_ttl: Duration,
    /// Publications waiting for the engine at most; past it a publication is refused
    /// ([`QueueFull`](super::QueueFull)) rather than queued.
    pub queue: usize,
}

impl Default for BackplaneConfig {
    fn default() -> Self {
        Self {
            url: BackplaneUrl::Memory,
            prefix: "wshub".into(),
            heartbeat: Duration::from_secs(2),
            node_ttl: Duration::from_secs(10),
            queue: 8192,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!("memory".parse::<BackplaneUrl>(), Ok(BackplaneUrl::Memory));
        assert_eq!(
            "redis://127.0.0.1:6379".parse::<BackplaneUrl>(),
            Ok(BackplaneUrl::Redis("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            "local://t".parse::<BackplaneUrl>(),
            Ok(BackplaneUrl::Local("t".into()))
        );
        assert!("local://".parse::<BackplaneUrl>().is_err());
        assert!("kafka://x".parse::<BackplaneUrl>().is_err());
    }
}
