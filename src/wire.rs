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

/// What a node sends to every node: [`Data`], which becomes frames for clients, or a
/// [`Control`] message, which nodes tell each other about the cluster. Frames are built by
/// each receiving node (one encoding per node, shared by its recipients), so the bus carries
/// the fields, not the frames.
///
/// On the bus each is one JSON object, `{"<kind>": {<fields>}}` (`{"group": {"group": "chat",
/// "message": …}}`): the same bytes as before data and control were two types, so nodes of
/// both versions talk during a rolling restart. Reading one looks at the kind first and reads
/// the fields straight into their type (nothing is buffered).
#[derive(Debug, Clone)]
pub enum Publication {
    /// Messages that become frames.
    Data(Data),
    /// What nodes tell each other.
    Control(Control),
}

/// Messages that become frames for clients.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Data {
    /// A group message (a stream: gets an offset).
    Group(GroupMessage),
    /// A text envelope to everyone (the all-clients stream: gets an offset).
    All(AllMessage),
    /// A binary message relayed to everyone (not kept in history).
    Binary(BinaryMessage),
    /// A plain-mode `system` announcement to every plain client.
    System(SystemMessage),
    /// An event on a Pusher channel (a stream: gets an offset).
    Event(ChannelEvent),
    /// A `direct` envelope to every connection of a user.
    User(UserMessage),
    /// A `direct` envelope to one connection.
    Direct(DirectMessage),
}

/// What nodes tell each other about the cluster: memberships and counts, presence, settling,
/// revocations, liveness, and operations on a connection another node holds.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// A `joined`/`left` event to a group's members (and the count every node keeps).
    Membership(Membership),
    /// A node's member counts per group, whole.
    Occupancy(Occupancy),
    /// A connection of an authenticated user opened or closed on a node.
    Online(Online),
    /// A connection joined or left a presence channel as a user.
    Presence(PresenceChange),
    /// A held vacate or member removal is settled.
    Settle(Settle),
    /// Close a user's connections and refuse their older tokens.
    Revoke(Revoke),
    /// A node is alive.
    Alive(Alive),
    /// A node (re)joined the bus.
    Resync(Resync),
    /// Close every connection of an app's user (Pusher `terminate_connections`).
    Terminate(Terminate),
    /// Add a connection to a group or remove it (REST on another node).
    Member(MemberChange),
    /// Close a connection (REST `DELETE` on another node).
    Disconnect(Disconnect),
}

impl From<Data> for Publication {
    fn from(d: Data) -> Self {
        Publication::Data(d)
    }
}

impl From<Control> for Publication {
    fn from(c: Control) -> Self {
        Publication::Control(c)
    }
}

/// Each message's own type is a publication: `GroupMessage { … }.into()`.
macro_rules! publications {
    ($($kind:ident :: $variant:ident ($ty:ident)),* $(,)?) => {$(
        impl From<$ty> for Publication {
            fn from(m: $ty) -> Self {
                Publication::$kind($kind::$variant(m))
            }
        }
    )*};
}

publications!(
    Data::Group(GroupMessage),
    Data::All(AllMessage),
    Data::Binary(BinaryMessage),
    Data::System(SystemMessage),
    Data::Event(ChannelEvent),
    Data::User(UserMessage),
    Data::Direct(DirectMessage),
    Control::Membership(Membership),
    Control::Occupancy(Occupancy),
    Control::Online(Online),
    Control::Presence(PresenceChange),
    Control::Settle(Settle),
    Control::Revoke(Revoke),
    Control::Alive(Alive),
    Control::Resync(Resync),
    Control::Terminate(Terminate),
    Control::Member(MemberChange),
    Control::Disconnect(Disconnect),
);

/// A group message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupMessage {
    /// The group.
    pub group: String,
    /// Sender's short id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Sender's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The payload.
    pub message: Box<RawValue>,
    /// The conflation key, for groups delivered `keep-latest`: a newer message with the same
    /// key replaces one still queued for a slow reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The publisher's idempotency key: a repeat within the window is delivered to no one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Its own time to live, in milliseconds: past it, it leaves history and a copy still
    /// queued for a slow reader is not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// A text envelope to everyone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllMessage {
    /// `server-broadcast` or `message`.
    pub kind: AllKind,
    /// Sender's short id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The text.
    pub text: String,
}

/// A binary message to everyone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BinaryMessage {
    /// The bytes (base64 on the bus).
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

/// A plain-mode `system` announcement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemMessage {
    /// The text.
    pub text: String,
}

/// An event on a Pusher channel. `group` is the hub stream that carries the channel (see
/// `crate::apps`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelEvent {
    /// The stream.
    pub group: String,
    /// The event name.
    pub event: String,
    /// The data, verbatim (a JSON string from the HTTP API; what a client sent).
    pub data: Box<RawValue>,
    /// The sender's user, for client events on presence channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// A connection id not to deliver to (the sender, or the API's `socket_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
}

/// A `direct` envelope to every connection of a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserMessage {
    /// The user.
    pub to: String,
    /// Sender's short id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Sender's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The payload.
    pub message: Box<RawValue>,
}

/// A `direct` envelope to one connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectMessage {
    /// The connection id.
    pub to: String,
    /// Sender's short id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Sender's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The payload.
    pub message: Box<RawValue>,
}

/// A `joined`/`left` event to a group's members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Membership {
    /// The group.
    pub group: String,
    /// Joined (true) or left.
    pub joined: bool,
    /// The short id of who joined or left.
    pub connection: String,
    /// Their user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A connection id not to tell (who joined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
    /// The node that holds the connection (every node counts each group's members per node
    /// from these; absent from nodes of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What the backend says about the user (a token's `info` claim, the connect hook's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

/// A node's member counts per group, whole (when nodes resynchronise): replaces what was
/// counted for that node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Occupancy {
    /// The node.
    pub node: String,
    /// Groups with members on that node, and how many.
    pub groups: Vec<(String, usize)>,
    /// Users with connections on that node, and how many.
    #[serde(default)]
    pub users: Vec<(String, usize)>,
    /// Whether this is the first part of the node's counts (the others follow in order).
    pub first: bool,
}

/// A connection of an authenticated user opened or closed on a node (every node counts each
/// user's connections per node from these).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Online {
    /// The user.
    pub user: String,
    /// The node.
    pub node: String,
    /// Opened (true) or closed.
    pub online: bool,
}

/// A connection became a member of a presence channel as a user, or stopped being one. Every
/// node applies these, in the bus's order, to its copy of the cluster's members, and so
/// decides alike whether a user is new (`member_added`) or gone (`member_removed`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceChange {
    /// The stream.
    pub group: String,
    /// The user.
    pub user_id: String,
    /// Added (true) or removed.
    pub added: bool,
    /// The user's info, when added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    /// The connection id.
    pub connection: String,
    /// The node that holds the connection.
    pub node: String,
}

/// A vacated group (`user` absent) or a presence member gone (`user`), held for the webhook
/// flap delay, is settled: when nobody came back in between (in the bus's order), `node` tells
/// the app; every node forgets it was held.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settle {
    /// The group (stream).
    pub group: String,
    /// The presence member, for `member_removed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The node that tells.
    pub node: String,
}

/// Close every connection of a user (`close`: the code and reason) and, with `before`, refuse
/// that user's tokens issued before it (Unix seconds), on every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoke {
    /// The user.
    pub user: String,
    /// The close code and reason (absent: a revocation re-announced, nothing to close).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<(u16, String)>,
    /// Tokens issued before this are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// A node is alive (sent every heartbeat): a node not heard of for the node TTL is gone, and
/// its presence members with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alive {
    /// The node.
    pub node: String,
}

/// A node (re)joined the bus: every node announces its presence members again, so the
/// newcomer's copy is complete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resync {
    /// The node.
    pub node: String,
}

/// Close every connection signed in as a user of an app (Pusher `terminate_connections`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Terminate {
    /// The app id.
    pub app: String,
    /// The user.
    pub user: String,
}

/// Add a connection to a group or remove it (REST on another node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberChange {
    /// The connection id.
    pub to: String,
    /// The group.
    pub group: String,
    /// Add (true) or remove.
    pub add: bool,
}

/// Close a connection (REST `DELETE` on another node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disconnect {
    /// The connection id.
    pub to: String,
    /// The close code.
    pub code: u16,
    /// The close reason.
    pub reason: String,
}

impl Serialize for Publication {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Publication::Data(d) => d.serialize(s),
            Publication::Control(c) => c.serialize(s),
        }
    }
}

/// Every kind, as the bus names it.
const KINDS: &[&str] = &[
    "group",
    "all",
    "binary",
    "system",
    "event",
    "user",
    "direct",
    "membership",
    "occupancy",
    "online",
    "presence",
    "settle",
    "revoke",
    "alive",
    "resync",
    "terminate",
    "member",
    "disconnect",
];

impl<'de> Deserialize<'de> for Publication {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Kinds;
        impl<'de> serde::de::Visitor<'de> for Kinds {
            type Value = Publication;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a publication: {\"<kind>\": {<fields>}}")
            }

            fn visit_enum<A: serde::de::EnumAccess<'de>>(
                self,
                a: A,
            ) -> Result<Publication, A::Error> {
                use serde::de::VariantAccess as _;
                let (kind, v): (std::borrow::Cow<'de, str>, _) = a.variant()?;
                Ok(match &*kind {
                    "group" => Data::Group(v.newtype_variant()?).into(),
                    "all" => Data::All(v.newtype_variant()?).into(),
                    "binary" => Data::Binary(v.newtype_variant()?).into(),
                    "system" => Data::System(v.newtype_variant()?).into(),
                    "event" => Data::Event(v.newtype_variant()?).into(),
                    "user" => Data::User(v.newtype_variant()?).into(),
                    "direct" => Data::Direct(v.newtype_variant()?).into(),
                    "membership" => Control::Membership(v.newtype_variant()?).into(),
                    "occupancy" => Control::Occupancy(v.newtype_variant()?).into(),
                    "online" => Control::Online(v.newtype_variant()?).into(),
                    "presence" => Control::Presence(v.newtype_variant()?).into(),
                    "settle" => Control::Settle(v.newtype_variant()?).into(),
                    "revoke" => Control::Revoke(v.newtype_variant()?).into(),
                    "alive" => Control::Alive(v.newtype_variant()?).into(),
                    "resync" => Control::Resync(v.newtype_variant()?).into(),
                    "terminate" => Control::Terminate(v.newtype_variant()?).into(),
                    "member" => Control::Member(v.newtype_variant()?).into(),
                    "disconnect" => Control::Disconnect(v.newtype_variant()?).into(),
                    other => return Err(serde::de::Error::unknown_variant(other, KINDS)),
                })
            }
        }
        d.deserialize_enum("Publication", KINDS, Kinds)
    }
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
            Publication::Data(d) => d.stream(),
            Publication::Control(_) => None,
        }
    }
}

impl Data {
    /// The stream this message belongs to, if it is kept in history.
    pub fn stream(&self) -> Option<StreamName<'_>> {
        match self {
            Data::Group(m) => Some(StreamName::Group(&m.group)),
            Data::Event(e) => Some(StreamName::Group(&e.group)),
            Data::All(_) => Some(StreamName::All),
            Data::Binary(_) | Data::System(_) | Data::User(_) | Data::Direct(_) => None,
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
        let p: Publication = Data::Group(GroupMessage {
            group: "g".into(),
            from: Some("abcd1234".into()),
            user: None,
            message: RawValue::from_string("{\"x\":1}".into()).unwrap(),
            key: None,
            idempotency_key: None,
            ttl_ms: None,
        })
        .into();
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

    /// Every kind, as nodes wrote it before data and control were two types: read, written
    /// back byte for byte, and sorted into data or control (nodes of two versions talk during
    /// a rolling restart).
    #[test]
    fn the_bus_format_is_unchanged_by_the_data_control_split() {
        let data = [
            r#"{"group":{"group":"g","from":"abcd1234","user":"u","message":{"x":1},"key":"k","idempotency_key":"i","ttl_ms":5}}"#,
            r#"{"all":{"kind":"server-broadcast","text":"hi"}}"#,
            r#"{"binary":{"data":"AAEC"}}"#,
            r#"{"system":{"text":"hello"}}"#,
            r#"{"event":{"group":"1#c","event":"e","data":"{}","user_id":"u","except":"x"}}"#,
            r#"{"user":{"to":"u","message":"m"}}"#,
            r#"{"direct":{"to":"0123","from":"ab","message":[1]}}"#,
        ];
        let control = [
            r#"{"membership":{"group":"g","joined":true,"connection":"ab","user":"u","except":"x","node":"n","info":{"a":1}}}"#,
            r#"{"occupancy":{"node":"n","groups":[["g",2]],"users":[["u",1]],"first":true}}"#,
            r#"{"online":{"user":"u","node":"n","online":false}}"#,
            r#"{"presence":{"group":"g","user_id":"u","added":true,"info":{},"connection":"c","node":"n"}}"#,
            r#"{"settle":{"group":"g","user":"u","node":"n"}}"#,
            r#"{"revoke":{"user":"u","close":[4401,"revoked"],"before":12}}"#,
            r#"{"alive":{"node":"n"}}"#,
            r#"{"resync":{"node":"n"}}"#,
            r#"{"terminate":{"app":"1","user":"u"}}"#,
            r#"{"member":{"to":"c","group":"g","add":true}}"#,
            r#"{"disconnect":{"to":"c","code":4000,"reason":"bye"}}"#,
        ];
        for (texts, is_data) in [(&data[..], true), (&control[..], false)] {
            for text in texts {
                let p: Publication = serde_json::from_str(text).unwrap();
                assert_eq!(matches!(p, Publication::Data(_)), is_data, "{text}");
                assert_eq!(serde_json::to_string(&p).unwrap(), *text);
            }
        }
        // Older nodes' membership (no node, no info) still reads.
        let old = r#"{"membership":{"group":"g","joined":false,"connection":"ab"}}"#;
        assert!(serde_json::from_str::<Publication>(old).is_ok());
        for bad in [
            r#"{"nope":{}}"#,
            r#"{"group":{"group":1}}"#,
            r#""alive""#,
            "[]",
        ] {
            assert!(serde_json::from_str::<Publication>(bad).is_err(), "{bad}");
        }
    }
}
