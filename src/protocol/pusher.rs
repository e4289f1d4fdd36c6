//! The Pusher Channels protocol, version 7, on the wire: what clients send at `/app/{key}`,
//! the frames the server sends, the channel kinds and the close codes.
//!
//! Every message is a JSON object `{"event": …, "channel": …, "data": …}`. Where the protocol
//! says so, `data` is a JSON document *inside a JSON string* (`connection_established`,
//! `subscription_succeeded`, member events); an event published through the HTTP API carries
//! its `data` string as given; a client event's `data` is relayed exactly as the client sent
//! it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::frame::{Frame, FrameBuf, OpCode};

/// The protocol versions served (pusher-js 8 speaks 7).
pub const VERSIONS: std::ops::RangeInclusive<u32> = 5..=7;

/// The `activity_timeout` announced to clients, in seconds: a client pings after this long
/// without a message.
pub const ACTIVITY_TIMEOUT: u64 = 120;

/// Longest channel name.
pub const MAX_CHANNEL_NAME: usize = 200;

/// Longest event name.
pub const MAX_EVENT_NAME: usize = 200;

/// The Pusher close and error codes this server uses (4000–4099: do not reconnect as is;
/// 4100–4199: reconnect after a pause; 4200–4299: reconnect now; 4300–4399: errors that do not
/// close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    /// No app has the key in the URL.
    UnknownApp = 4001,
    /// The app is disabled.
    AppDisabled = 4003,
    /// The app is at its connection limit.
    OverQuota = 4004,
    /// Not `/app/{key}`.
    PathNotFound = 4005,
    /// `protocol` is not a number.
    InvalidVersion = 4006,
    /// `protocol` is a version this server does not speak.
    UnsupportedVersion = 4007,
    /// No `protocol` in the URL.
    NoVersion = 4008,
    /// The app terminated the connection (`terminate_connections`).
    Unauthorized = 4009,
    /// The server is at capacity: try again later.
    OverCapacity = 4100,
    /// Reconnect now (the server is going away).
    Reconnect = 4200,
    /// The client did not answer a ping in time.
    PongTimeout = 4201,
    /// Nothing was heard from the client for too long.
    Inactivity = 4202,
    /// A client event over the rate limit (an error, the connection stays).
    ClientEventRate = 4301,
    /// A malformed or refused message (an error, the connection stays).
    Generic = 4300,
}

impl Code {
    /// The numeric code.
    pub fn get(self) -> u16 {
        self as u16
    }
}

/// The kinds of channel, from their name's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anyone may subscribe.
    Public,
    /// `private-`: a subscription needs an authorization signed with the app secret.
    Private,
    /// `private-encrypted-`: as private; the payloads are end-to-end encrypted, relayed opaque,
    /// and clients may not send events.
    Encrypted,
    /// `presence-`: private, and the members (users) are known to every subscriber.
    Presence,
    /// `#server-to-user-<id>`: the events the HTTP API sends to a signed-in user; only that
    /// user's connections may subscribe.
    User,
}

/// The prefix of a user's own channel.
pub const USER_CHANNEL: &str = "#server-to-user-";

/// A channel name's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    /// Its kind.
    pub kind: Kind,
    /// A cache channel (`cache-`, `private-cache-`, `presence-cache-`,
    /// `private-encrypted-cache-`): its last event is kept and sent to each new subscriber.
    pub cache: bool,
}

impl Channel {
    /// Reads a channel name; `None` when it breaks the naming rules (1 to 200 characters from
    /// `A-Z a-z 0-9 _ - = @ , . ;`, or a user's channel `#server-to-user-<id>`).
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(user) = name.strip_prefix(USER_CHANNEL) {
            return Self::parse(user).map(|_| Self {
                kind: Kind::User,
                cache: false,
            });
        }
        if name.is_empty()
            || name.len() > MAX_CHANNEL_NAME
            || !name.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
            })
        {
            return None;
        }
        let (kind, rest) = if let Some(r) = name.strip_prefix("private-encrypted-") {
            (Kind::Encrypted, r)
        } else if let Some(r) = name.strip_prefix("private-") {
            (Kind::Private, r)
        } else if let Some(r) = name.strip_prefix("presence-") {
            (Kind::Presence, r)
        } else {
            (Kind::Public, name)
        };
        Some(Self {
            kind,
            cache: rest.starts_with("cache-"),
        })
    }

    /// Whether subscribing needs a signed authorization.
    pub fn needs_auth(&self) -> bool {
        matches!(self.kind, Kind::Private | Kind::Encrypted | Kind::Presence)
    }

    /// Whether clients may send events on it.
    pub fn allows_client_events(&self) -> bool {
        matches!(self.kind, Kind::Private | Kind::Presence)
    }
}

/// A message from a client.
#[derive(Debug, Deserialize)]
pub struct ClientMessage<'a> {
    /// The event name.
    #[serde(borrow)]
    pub event: std::borrow::Cow<'a, str>,
    /// The channel, for subscriptions and client events.
    #[serde(default, borrow)]
    pub channel: Option<std::borrow::Cow<'a, str>>,
    /// The payload, verbatim.
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

/// The `data` of `pusher:subscribe`.
#[derive(Debug, Deserialize)]
pub struct Subscribe {
    /// The channel.
    pub channel: String,
    /// `key:signature` for private and presence channels.
    #[serde(default)]
    pub auth: Option<String>,
    /// For presence channels: `{"user_id": …, "user_info": …}` as a JSON string.
    #[serde(default)]
    pub channel_data: Option<String>,
}

/// The `data` of `pusher:unsubscribe`.
#[derive(Debug, Deserialize)]
pub struct Unsubscribe {
    /// The channel.
    pub channel: String,
}

/// The `data` of `pusher:signin`.
#[derive(Debug, Deserialize)]
pub struct Signin {
    /// `key:signature` over `socket_id::user::user_data`.
    pub auth: String,
    /// The user as a JSON string with at least `id`.
    pub user_data: String,
}

/// A presence channel's `channel_data`.
#[derive(Debug, Deserialize)]
pub struct ChannelData {
    /// The user, a string or a number (kept as its text).
    pub user_id: serde_json::Value,
    /// Anything the app says about the user.
    #[serde(default)]
    pub user_info: Option<Box<RawValue>>,
}

impl ChannelData {
    /// The user id as text (`1` and `"1"` are the same user); `None` when it is neither a
    /// non-empty string nor a number.
    pub fn user_id(&self) -> Option<String> {
        match &self.user_id {
            serde_json::Value::String(s) if !s.is_empty() && s.len() <= 128 => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

fn encode<T: Serialize>(value: &T, hint: usize) -> Frame {
    let mut buf = FrameBuf::with_capacity(hint + 64);
    if serde_json::to_writer(&mut buf, value).is_err() {
        tracing::error!("pusher frame serialisation failed");
    }
    buf.finish(OpCode::Text)
}

/// A JSON document as a JSON string (the protocol's "data is a string" rule).
fn stringify<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

#[derive(Serialize)]
struct Event<'a, D: Serialize + ?Sized> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: &'a D,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

/// An event on a channel: `data` verbatim (a JSON string from the HTTP API, whatever a client
/// sent for a client event); `user_id` for client events on presence channels.
pub fn event(name: &str, channel: &str, data: &RawValue, user_id: Option<&str>) -> Frame {
    encode(
        &Event {
            event: name,
            channel: Some(channel),
            data,
            user_id,
        },
        data.get().len() + channel.len() + name.len(),
    )
}

/// `pusher:connection_established`.
pub fn connection_established(socket_id: &str) -> Frame {
    #[derive(Serialize)]
    struct Established<'a> {
        socket_id: &'a str,
        activity_timeout: u64,
    }
    let data = stringify(&Established {
        socket_id,
        activity_timeout: ACTIVITY_TIMEOUT,
    });
    encode(
        &Event {
            event: "pusher:connection_established",
            channel: None,
            data: &data,
            user_id: None,
        },
        data.len(),
    )
}

/// `pusher:error` with a code (4000–4399) and a message.
pub fn error(code: Code, message: &str) -> Frame {
    #[derive(Serialize)]
    struct Error<'a> {
        code: u16,
        message: &'a str,
    }
    encode(
        &Event {
            event: "pusher:error",
            channel: None,
            data: &Error {
                code: code.get(),
                message,
            },
            user_id: None,
        },
        message.len(),
    )
}

/// `pusher:pong`.
pub fn pong() -> Frame {
    encode(
        &Event {
            event: "pusher:pong",
            channel: None,
            data: "{}",
            user_id: None,
        },
        0,
    )
}

/// `pusher:ping`, the server asking a quiet client whether it is there.
pub fn ping() -> Frame {
    encode(
        &Event {
            event: "pusher:ping",
            channel: None,
            data: "{}",
            user_id: None,
        },
        0,
    )
}

/// `pusher_internal:subscription_succeeded` for a channel without members.
pub fn subscription_succeeded(channel: &str) -> Frame {
    encode(
        &Event {
            event: "pusher_internal:subscription_succeeded",
            channel: Some(channel),
            data: "{}",
            user_id: None,
        },
        channel.len(),
    )
}

/// A presence channel's member, for the member list.
pub struct Member<'a> {
    /// The user id.
    pub id: &'a str,
    /// The user's info (JSON), if any.
    pub info: Option<&'a RawValue>,
}

/// `pusher_internal:subscription_succeeded` for a presence channel, with its members.
pub fn presence_succeeded<'a>(channel: &str, members: impl Iterator<Item = Member<'a>>) -> Frame {
    let mut ids = Vec::new();
    let mut hash = serde_json::Map::new();
    for m in members {
        ids.push(m.id);
        let info = m
            .info
            .and_then(|i| serde_json::from_str(i.get()).ok())
            .unwrap_or(serde_json::Value::Null);
        hash.insert(m.id.to_owned(), info);
    }
    let data = serde_json::json!({
        "presence": { "ids": ids, "hash": hash, "count": ids.len() }
    });
    let data = stringify(&data);
    encode(
        &Event {
            event: "pusher_internal:subscription_succeeded",
            channel: Some(channel),
            data: &data,
            user_id: None,
        },
        data.len(),
    )
}

/// `pusher_internal:member_added`.
pub fn member_added(channel: &str, user_id: &str, info: Option<&RawValue>) -> Frame {
    #[derive(Serialize)]
    struct Added<'a> {
        user_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_info: Option<&'a RawValue>,
    }
    let data = stringify(&Added {
        user_id,
        user_info: info,
    });
    encode(
        &Event {
            event: "pusher_internal:member_added",
            channel: Some(channel),
            data: &data,
            user_id: None,
        },
        data.len(),
    )
}

/// `pusher_internal:member_removed`.
pub fn member_removed(channel: &str, user_id: &str) -> Frame {
    #[derive(Serialize)]
    struct Removed<'a> {
        user_id: &'a str,
    }
    let data = stringify(&Removed { user_id });
    encode(
        &Event {
            event: "pusher_internal:member_removed",
            channel: Some(channel),
            data: &data,
            user_id: None,
        },
        data.len(),
    )
}

/// `pusher_internal:subscription_count`: how many connections are subscribed to `channel`
/// (pusher-js gives it to the page as `pusher:subscription_count`).
pub fn subscription_count(channel: &str, count: usize) -> Frame {
    #[derive(Serialize)]
    struct Count {
        subscription_count: usize,
    }
    let data = stringify(&Count {
        subscription_count: count,
    });
    encode(
        &Event {
            event: "pusher_internal:subscription_count",
            channel: Some(channel),
            data: &data,
            user_id: None,
        },
        data.len(),
    )
}

/// `pusher:subscription_error`: why a subscription was refused, with an HTTP-like status.
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> Frame {
    #[derive(Serialize)]
    struct SubError<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        error: &'a str,
        status: u16,
    }
    encode(
        &Event {
            event: "pusher:subscription_error",
            channel: Some(channel),
            data: &SubError {
                kind,
                error,
                status,
            },
            user_id: None,
        },
        error.len() + channel.len(),
    )
}

/// `pusher:cache_miss`: a cache channel has no event kept.
pub fn cache_miss(channel: &str) -> Frame {
    encode(
        &Event {
            event: "pusher:cache_miss",
            channel: Some(channel),
            data: "{}",
            user_id: None,
        },
        channel.len(),
    )
}

/// `pusher_internal:watchlist_events`: `online`/`offline` with the user ids of each (what
/// pusher-js gives to `user.watchlist`).
pub fn watchlist_events(events: &[(&str, Vec<&str>)]) -> Frame {
    #[derive(Serialize)]
    struct One<'a> {
        name: &'a str,
        user_ids: &'a [&'a str],
    }
    #[derive(Serialize)]
    struct Events<'a> {
        events: Vec<One<'a>>,
    }
    let data = stringify(&Events {
        events: events
            .iter()
            .map(|(name, user_ids)| One { name, user_ids })
            .collect(),
    });
    encode(
        &Event {
            event: "pusher_internal:watchlist_events",
            channel: None,
            data: &data,
            user_id: None,
        },
        data.len(),
    )
}

/// `pusher:signin_success`, with the user data the client signed in with.
pub fn signin_success(user_data: &str) -> Frame {
    #[derive(Serialize)]
    struct Success<'a> {
        user_data: &'a str,
    }
    let data = stringify(&Success { user_data });
    encode(
        &Event {
            event: "pusher:signin_success",
            channel: None,
            data: &data,
            user_id: None,
        },
        data.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(f: &Frame) -> serde_json::Value {
        let hlen = if f[1] & 0x7f == 126 { 4 } else { 2 };
        serde_json::from_slice(&f[hlen..]).unwrap()
    }

    #[test]
    fn channel_kinds_and_names() {
        let k = |n: &str| Channel::parse(n).map(|c| (c.kind, c.cache));
        assert_eq!(k("orders"), Some((Kind::Public, false)));
        assert_eq!(k("private-a"), Some((Kind::Private, false)));
        assert_eq!(k("presence-room.1"), Some((Kind::Presence, false)));
        assert_eq!(k("private-encrypted-x"), Some((Kind::Encrypted, false)));
        assert_eq!(k("cache-x"), Some((Kind::Public, true)));
        assert_eq!(k("private-cache-x"), Some((Kind::Private, true)));
        assert_eq!(k("presence-cache-x"), Some((Kind::Presence, true)));
        assert_eq!(
            k("private-encrypted-cache-x"),
            Some((Kind::Encrypted, true))
        );
        assert_eq!(k("a=b@c,d;e_f-g.h"), Some((Kind::Public, false)));
        assert_eq!(k("#server-to-user-42"), Some((Kind::User, false)));
        for bad in [
            "",
            "a b",
            "a#b",
            "a/b",
            "é",
            "#server-to-user-",
            "#x",
            &"x".repeat(201),
        ] {
            assert_eq!(k(bad), None, "{bad}");
        }
    }

    #[test]
    fn data_is_a_string_where_the_protocol_says_so() {
        let v = payload(&connection_established("1.2"));
        let inner: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(inner["socket_id"], "1.2");
        assert_eq!(inner["activity_timeout"], 120);
        let v = payload(&member_added("presence-a", "7", None));
        assert_eq!(v["data"], r#"{"user_id":"7"}"#);
        let v = payload(&error(Code::UnknownApp, "no"));
        assert_eq!(v["data"]["code"], 4001);
        let data = RawValue::from_string(r#""{\"x\":1}""#.into()).unwrap();
        let v = payload(&event("e", "c", &data, Some("u")));
        assert_eq!(
            (v["data"].as_str(), v["user_id"].as_str()),
            (Some(r#"{"x":1}"#), Some("u"))
        );
        let v = payload(&presence_succeeded(
            "presence-a",
            [
                Member {
                    id: "1",
                    info: None,
                },
                Member {
                    id: "2",
                    info: None,
                },
            ]
            .into_iter(),
        ));
        let inner: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(inner["presence"]["count"], 2);
        assert_eq!(inner["presence"]["ids"], serde_json::json!(["1", "2"]));
    }
}
