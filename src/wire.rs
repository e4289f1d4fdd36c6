//! Wire types: what nodes say to each other through the backplane, and what they store there.
//!
//! A leaf: it imports nothing of this crate, so the backplane (which carries these) and the
//! hub (which produces and consumes them) both depend on it and not on each other's insides.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A node id: 1 to 64 characters from `A-Z a-z 0-9 _ - .` (it names keys and subjects in the
/// backplane).
///
/// # Errors
/// A message saying what is allowed.
pub fn parse_node_id(s: &str) -> Result<String, String> {
    if (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        Ok(s.to_owned())
    } else {
        Err("a node id is 1 to 64 characters from A-Z a-z 0-9 _ - .".into())
    }
}

/// What a node sends to every node. Frames are built by each receiving node (one encoding per
/// node, shared by its recipients), so the bus carries the fields, not the frames.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Publication {
    /// A group message (a stream: gets an offset).
    Group {
        /// The group.
        group: String,
        /// Sender's short id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Sender's user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The payload.
        message: Box<RawValue>,
        /// The conflation key, for groups delivered `keep-latest`: a newer message with the
        /// same key replaces one still queued for a slow reader.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The publisher's idempotency key: a repeat within the window is delivered to no one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// Its own time to live, in milliseconds: past it, it leaves history and a copy still
        /// queued for a slow reader is not sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// A text envelope to everyone (the all-clients stream: gets an offset).
    All {
        /// `server-broadcast` or `message`.
        kind: AllKind,
        /// Sender's short id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// The text.
        text: String,
    },
    /// A binary message relayed to everyone (not kept in history).
    Binary {
        /// The bytes (base64 on the bus).
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// A plain-mode `system` announcement to every plain client.
    System {
        /// The text.
        text: String,
    },
    /// A `joined`/`left` event to a group's members.
    Membership {
        /// The group.
        group: String,
        /// Joined (true) or left.
        joined: bool,
        /// The short id of who joined or left.
        connection: String,
        /// Their user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// A connection id not to tell (who joined).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except: Option<String>,
        /// The node that holds the connection (every node counts each group's members per
        /// node from these; absent from nodes of older versions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// What the backend says about the user (a token's `info` claim, the connect hook's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<Box<RawValue>>,
    },
    /// A node's member counts per group, whole (when nodes resynchronise): replaces what was
    /// counted for that node.
    Occupancy {
        /// The node.
        node: String,
        /// Groups with members on that node, and how many.
        groups: Vec<(String, usize)>,
        /// Users with connections on that node, and how many.
        #[serde(default)]
        users: Vec<(String, usize)>,
        /// Whether this is the first part of the node's counts (the others follow in order).
        first: bool,
    },
    /// A connection of an authenticated user opened or closed on a node (every node counts
    /// each user's connections per node from these).
    Online {
        /// The user.
        user: String,
        /// The node.
        node: String,
        /// Opened (true) or closed.
        online: bool,
    },
    /// A `direct` envelope to every connection of a user.
    User {
        /// The user.
        to: String,
        /// Sender's short id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Sender's user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The payload.
        message: Box<RawValue>,
    },
    /// A `direct` envelope to one connection.
    Direct {
        /// The connection id.
        to: String,
        /// Sender's short id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Sender's user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The payload.
        message: Box<RawValue>,
    },
    /// Close a connection (REST `DELETE` on another node).
    Disconnect {
        /// The connection id.
        to: String,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// An event on a Pusher channel (a stream: gets an offset). `group` is the hub stream
    /// that carries the channel (see `crate::apps`).
    Event {
        /// The stream.
        group: String,
        /// The event name.
        event: String,
        /// The data, verbatim (a JSON string from the HTTP API; what a client sent).
        data: Box<RawValue>,
        /// The sender's user, for client events on presence channels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        /// A connection id not to deliver to (the sender, or the API's `socket_id`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except: Option<String>,
    },
    /// A connection became a member of a presence channel as a user, or stopped being one.
    /// Every node applies these, in the bus's order, to its copy of the cluster's members,
    /// and so decides alike whether a user is new (`member_added`) or gone
    /// (`member_removed`).
    Presence {
        /// The stream.
        group: String,
        /// The user.
        user_id: String,
        /// Added (true) or removed.
        added: bool,
        /// The user's info, when added.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<Box<RawValue>>,
        /// The connection id.
        connection: String,
        /// The node that holds the connection.
        node: String,
    },
    /// A vacated group (`user` absent) or a presence member gone (`user`), held for the
    /// webhook flap delay, is settled: when nobody came back in between (in the bus's order),
    /// `node` tells the app; every node forgets it was held.
    Settle {
        /// The group (stream).
        group: String,
        /// The presence member, for `member_removed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The node that tells.
        node: String,
    },
    /// Close every connection of a user (`close`: the code and reason) and, with `before`,
    /// refuse that user's tokens issued before it (Unix seconds), on every node.
    Revoke {
        /// The user.
        user: String,
        /// The close code and reason (absent: a revocation re-announced, nothing to close).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        close: Option<(u16, String)>,
        /// Tokens issued before this are refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
    },
    /// A node is alive (sent every heartbeat): a node not heard of for the node TTL is gone,
    /// and its presence members with it.
    Alive {
        /// The node.
        node: String,
    },
    /// A node (re)joined the bus: every node announces its presence members again, so the
    /// newcomer's copy is complete.
    Resync {
        /// The node.
        node: String,
    },
    /// Close every connection signed in as a user of an app (Pusher
    /// `terminate_connections`).
    Terminate {
        /// The app id.
        app: String,
        /// The user.
        user: String,
    },
    /// Add a connection to a group or remove it (REST on another node).
    Member {
        /// The connection id.
        to: String,
        /// The group.
        group: String,
        /// Add (true) or remove.
        add: bool,
    },
}

/// The kinds of text envelope sent to everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllKind {
    /// A REST broadcast.
    ServerBroadcast,
    /// A plain client's text.
    Message,
}

impl Publication {
    /// The stream this publication belongs to, if it is kept in history.
    pub fn stream(&self) -> Option<StreamName<'_>> {
        match self {
            Publication::Group { group, .. } => Some(StreamName::Group(group)),
            Publication::Event { group, .. } => Some(StreamName::Group(group)),
            Publication::All { .. } => Some(StreamName::All),
            _ => None,
        }
    }
}

/// A stream: a group's, or the all-clients one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamName<'a> {
    /// The all-clients stream.
    All,
    /// A group's stream.
    Group(&'a str),
}

/// A publication as it travels on the bus, with the offset the engine gave it.
#[derive(Debug, Deserialize)]
pub struct BusMessage {
    /// The node that published it.
    #[serde(rename = "n")]
    pub node: String,
    /// The stream's epoch (streams only).
    #[serde(rename = "e", default)]
    pub epoch: Option<String>,
    /// Its offset in the stream (streams only).
    #[serde(rename = "o", default)]
    pub offset: Option<u64>,
    /// The publication.
    #[serde(rename = "p")]
    pub publication: Publication,
}

/// A stream publication read back from the shared history.
#[derive(Debug)]
pub struct Stored {
    /// Its offset.
    pub offset: u64,
    /// When it was published (Unix milliseconds).
    pub at_ms: u64,
    /// The publication.
    pub publication: Publication,
}

/// A change to this node's connection entries in the backplane.
#[derive(Debug)]
pub enum EntryChange {
    /// A connection's entry (the REST `Connection` JSON), new or updated.
    Put {
        /// Its id.
        id: String,
        /// The entry.
        json: String,
    },
    /// A connection is gone.
    Remove {
        /// Its id.
        id: String,
    },
}

/// Bytes as a base64 string in JSON.
mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// One connection as a node stores it in the backplane (and as the REST API lists it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionEntry {
    /// The connection id: 32 lowercase hex characters.
    pub id: String,
    /// The first 8 characters of the id.
    pub short_id: String,
    /// When it was accepted (RFC 3339, UTC).
    pub connected_at: String,
    /// The peer's address, when known.
    pub remote_addr: Option<String>,
    /// Frames waiting in its outbound queue.
    pub queued: usize,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// The groups it is a member of.
    pub groups: Vec<String>,
    /// `plain` or `wshub.v1`.
    pub protocol: String,
    /// The node that holds it.
    #[serde(default)]
    pub node: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert!(parse_node_id("node-1.a_b").is_ok());
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            assert!(parse_node_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn publications_round_trip_on_the_bus() {
        let p = Publication::Group {
            group: "g".into(),
            from: Some("abcd1234".into()),
            user: None,
            message: RawValue::from_string("{\"x\":1}".into()).unwrap(),
            key: None,
            idempotency_key: None,
            ttl_ms: None,
        };
        let text = format!(
            "{{\"n\":\"node1\",\"e\":\"ep\",\"o\":7,\"p\":{}}}",
            serde_json::to_string(&p).unwrap()
        );
        let m: BusMessage = serde_json::from_str(&text).unwrap();
        assert_eq!((m.node.as_str(), m.offset), ("node1", Some(7)));
        assert!(matches!(
            m.publication.stream(),
            Some(StreamName::Group("g"))
        ));
    }
}
