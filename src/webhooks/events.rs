//! The events of wshub's own webhooks (for `/ws` clients): their names, and the JSON each
//! carries. docs/HOOKS.md has their schemas; the OpenAPI document lists them as webhooks.

use serde_json::{json, Value};

/// An event the backend can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A `/ws` client connected.
    ConnectionOpened,
    /// A `/ws` client's connection ended.
    ConnectionClosed,
    /// A group got its first member in the cluster.
    GroupOccupied,
    /// A group lost its last member in the cluster.
    GroupVacated,
    /// A connection joined a group.
    GroupJoined,
    /// A connection left a group (or ended while a member).
    GroupLeft,
    /// A client sent a message: plain text to everyone, a `wshub.v1` `publish` or `send`.
    MessageReceived,
    /// A node went silent; the survivors took over what it had.
    NodeLost,
}

impl EventType {
    /// Every event, in the order of the documentation.
    pub const ALL: [EventType; 8] = [
        EventType::ConnectionOpened,
        EventType::ConnectionClosed,
        EventType::GroupOccupied,
        EventType::GroupVacated,
        EventType::GroupJoined,
        EventType::GroupLeft,
        EventType::MessageReceived,
        EventType::NodeLost,
    ];

    /// Its name on the wire (`type`).
    pub fn name(self) -> &'static str {
        match self {
            EventType::ConnectionOpened => "connection.opened",
            EventType::ConnectionClosed => "connection.closed",
            EventType::GroupOccupied => "group.occupied",
            EventType::GroupVacated => "group.vacated",
            EventType::GroupJoined => "group.joined",
            EventType::GroupLeft => "group.left",
            EventType::MessageReceived => "message.received",
            EventType::NodeLost => "node.lost",
        }
    }

    /// The event named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Its bit in a set of events.
    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// The names of every event, comma-separated (for messages).
pub fn names() -> String {
    EventType::ALL.map(EventType::name).join(", ")
}

/// One event as it is sent: a unique `id` (the same on every retry: de-duplicate by it), its
/// `type`, when it happened (`time_ms`), the node that saw it, and its `data`.
pub fn event(ty: EventType, node: &str, data: Value) -> Value {
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
        "type": ty.name(),
        "time_ms": time_ms,
        "node": node,
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bits_are_distinct() {
        let mut seen = 0u16;
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.name()), Some(t));
            assert_eq!(seen & t.bit(), 0);
            seen |= t.bit();
        }
        assert_eq!(EventType::parse("connection.open"), None);
    }
}
