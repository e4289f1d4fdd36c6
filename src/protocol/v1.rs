//! The `wshub.v1` subprotocol: client commands (JSON objects with a client-chosen `id`) and
//! the server's envelopes. `docs/PROTOCOL.md` is the reference for client authors.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::envelope::Timestamp;
use crate::frame::{Frame, FrameBuf, OpCode};

/// Error codes of `error` replies, a contract for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object.
    Malformed,
    /// `type` names no command.
    UnknownCommand,
    /// A field is missing or has the wrong type.
    Invalid,
    /// The group name breaks the naming rules.
    InvalidGroup,
    /// Publishing to a group the connection is not a member of.
    NotMember,
    /// The connection's token does not allow this group.
    Forbidden,
    /// No such connection, or the user has no connections.
    NotFound,
    /// The connection is in as many groups as allowed.
    TooManyGroups,
    /// Binary frames carry no commands in `wshub.v1`.
    BinaryUnsupported,
    /// The message was dropped: the connection sends faster than its rate limit.
    RateLimited,
    /// The hub keeps as many groups as it may (`--max-groups`): no new group now.
    HubFull,
}

/// A parsed command. Borrowed from the frame's text.
#[derive(Debug)]
pub enum Command<'a> {
    /// Join a group, optionally recovering what was missed since a position.
    Join {
        /// The group.
        group: Cow<'a, str>,
        /// The last position the client saw in this group (`since`), to replay what followed.
        since: Option<crate::history::Position>,
    },
    /// Leave a group.
    Leave {
        /// The group.
        group: Cow<'a, str>,
    },
    /// Publish to a group the connection is a member of.
    Publish {
        /// The group.
        group: Cow<'a, str>,
        /// Any JSON value, forwarded verbatim.
        message: &'a RawValue,
    },
    /// Send to one connection or to every connection of a user.
    Send {
        /// The target.
        to: Target<'a>,
        /// Any JSON value, forwarded verbatim.
        message: &'a RawValue,
    },
    /// A no-op that is acknowledged.
    Ping,
}

/// The target of a `send`.
#[derive(Debug, Clone)]
pub enum Target<'a> {
    /// A connection id (32 hex characters).
    Connection(Cow<'a, str>),
    /// A user id.
    User(Cow<'a, str>),
}

/// A command that could not be parsed: the reply to send, with the command's id if it had one.
#[derive(Debug)]
pub struct Rejected<'a> {
    /// The command's `id`, when one could be read.
    pub id: Option<&'a RawValue>,
    /// The error code.
    pub code: ErrorCode,
    /// What was wrong.
    pub message: String,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    group: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    connection: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Since {
    epoch: String,
    offset: u64,
}

/// The `id` of a command, if the text is a JSON object with one (for replies to commands that
/// are not executed).
pub fn command_id(text: &str) -> Option<Box<RawValue>> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<Box<RawValue>>,
    }
    serde_json::from_str::<IdOnly>(text)
        .ok()?
        .id
        .filter(|id| check_id(id).is_ok())
}

/// Longest command `id` echoed back, in bytes of JSON.
pub const MAX_ID_LEN: usize = 128;

/// An `id` is a string or a number (not `null`, an object, an array or a boolean), at most
/// [`MAX_ID_LEN`] bytes of JSON; the error says what is wrong without copying it.
fn check_id(id: &RawValue) -> Result<(), String> {
    let raw = id.get();
    let kind_ok = matches!(raw.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'));
    if !kind_ok {
        return Err("`id` must be a string or a number chosen by the client".into());
    }
    if raw.len() > MAX_ID_LEN {
        return Err(format!(
            "`id` is {} bytes of JSON; at most {MAX_ID_LEN}",
            raw.len()
        ));
    }
    Ok(())
}

/// At most `max` characters of client-sent `text` for an error message (never a copy of
/// something attacker-sized).
fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()).into(),
    }
}

/// Parses one command frame.
///
/// # Errors
/// A [`Rejected`] describing the problem; the connection stays usable.
pub fn parse(text: &str) -> Result<(&RawValue, Command<'_>), Rejected<'_>> {
    // serde would also read a struct from an array (`[1,"ping"]`); commands are objects only.
    if !text.trim_start().starts_with('{') {
        return Err(Rejected {
            id: None,
            code: if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                ErrorCode::Invalid
            } else {
                ErrorCode::Malformed
            },
            message: "a command is a JSON object with `id` and `type`".into(),
        });
    }
    let mut wire: Wire<'_> = serde_json::from_str(text).map_err(|e| Rejected {
        id: None,
        code: if e.is_data() {
            ErrorCode::Invalid
        } else {
            ErrorCode::Malformed
        },
        message: format!(
            "a command is a JSON object with `id` and `type`: {}",
            clip(&e.to_string(), 160)
        ),
    })?;
    if let Some(Err(message)) = wire.id.map(check_id) {
        return Err(Rejected {
            id: None,
            code: ErrorCode::Invalid,
            message,
        });
    }
    let wire_id = wire.id;
    let reject = |code, message: String| Rejected {
        id: wire_id,
        code,
        message,
    };
    let id = match wire.id {
        Some(id) if id.get() != "null" => id,
        _ => {
            return Err(reject(
                ErrorCode::Invalid,
                "`id` is required (a string or a number chosen by the client)".into(),
            ))
        }
    };
    let kind = wire
        .kind
        .take()
        .ok_or_else(|| reject(ErrorCode::Invalid, "`type` is required".into()))?;
    let mut group = |cmd: &str| {
        let g = wire
            .group
            .take()
            .ok_or_else(|| reject(ErrorCode::Invalid, format!("`{cmd}` needs `group`")))?;
        if !super::valid_group_name(&g) {
            return Err(reject(
                ErrorCode::InvalidGroup,
                "a group name is 1 to 128 characters from A-Z a-z 0-9 _ - . : @ /".into(),
            ));
        }
        Ok(g)
    };
    let wire_message = wire.message;
    let message = |cmd: &str| {
        wire_message.ok_or_else(|| {
            reject(
                ErrorCode::Invalid,
                format!("`{cmd}` needs `message` (any JSON value)"),
            )
        })
    };
    let cmd = match &*kind {
        "join" | "subscribe" => Command::Join {
            group: group(&kind)?,
            since: match wire.since.take() {
                None => None,
                Some(raw) => match serde_json::from_str::<Since>(raw.get()) {
                    Ok(s) => Some(crate::history::Position {
                        epoch: s.epoch.into(),
                        offset: s.offset,
                    }),
                    Err(_) => {
                        return Err(reject(
                            ErrorCode::Invalid,
                            "`since` is `{\"epoch\": <string>, \"offset\": <integer ≥ 0>}`, the last position you saw in the group".into(),
                        ))
                    }
                },
            },
        },
        "leave" | "unsubscribe" => Command::Leave {
            group: group(&kind)?,
        },
        "publish" => Command::Publish {
            group: group(&kind)?,
            message: message(&kind)?,
        },
        "send" => {
            let to = match (wire.connection.take(), wire.user.take()) {
                (Some(c), None) => Target::Connection(c),
                (None, Some(u)) if !u.is_empty() => Target::User(u),
                _ => {
                    return Err(reject(
                        ErrorCode::Invalid,
                        "`send` needs exactly one of `connection` (an id) or `user`".into(),
                    ))
                }
            };
            Command::Send {
                to,
                message: message(&kind)?,
            }
        }
        "ping" => Command::Ping,
        other => {
            return Err(reject(
                ErrorCode::UnknownCommand,
                format!(
                    "unknown command `{}` (join, leave, publish, send, ping)",
                    clip(other, 32)
                ),
            ))
        }
    };
    Ok((id, cmd))
}

fn encode<T: Serialize>(value: &T, hint: usize) -> Frame {
    let mut buf = FrameBuf::with_capacity(hint + 96);
    if serde_json::to_writer(&mut buf, value).is_err() {
        tracing::error!("v1 envelope serialisation failed");
    }
    buf.finish(OpCode::Text)
}

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

/// `{"type":"ack","id":…}` plus optional counts.
pub fn ack(id: &RawValue, extra: AckExtra<'_>) -> Frame {
    #[derive(Serialize)]
    struct Ack<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: &'a RawValue,
        #[serde(flatten)]
        extra: AckExtra<'a>,
    }
    encode(
        &Ack {
            kind: "ack",
            id,
            extra,
        },
        32,
    )
}

/// Optional fields of an ack.
#[derive(Debug, Default, Serialize)]
pub struct AckExtra<'a> {
    /// The group a join/leave/publish was about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'a str>,
    /// Group members after a join, or recipients of a publish/send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<usize>,
    /// Connections a publish or send reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<usize>,
    /// Whether a join changed anything (false: already a member) or a leave did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// The group stream's epoch, after a join.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The group stream's last offset when the join took effect, or a publication's offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// After a join with `since`: whether everything missed was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// `{"type":"error","id":…,"code":…,"message":…}`.
pub fn error(id: Option<&RawValue>, code: ErrorCode, message: &str) -> Frame {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: Option<&'a RawValue>,
        code: ErrorCode,
        message: &'a str,
    }
    encode(
        &Error {
            kind: "error",
            id,
            code,
            message,
        },
        message.len(),
    )
}

/// Where a stream stood, as told to a client.
#[derive(Debug, Serialize)]
pub struct StreamState<'a> {
    /// The stream's epoch.
    pub epoch: &'a str,
    /// Its last offset.
    pub offset: u64,
    /// Whether what was missed was replayed (only when recovery was asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// `{"type":"welcome","connectionId":…,"shortId":…,"user":…,"all":{"epoch":…,"offset":…},…}`,
/// the first frame of a `wshub.v1` connection. `all` is the all-clients stream's position.
pub fn welcome(
    connection_id: &str,
    short_id: &str,
    user: Option<&str>,
    node: &str,
    all: StreamState<'_>,
) -> Frame {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Welcome<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        connection_id: &'a str,
        short_id: &'a str,
        user: Option<&'a str>,
        protocol: &'static str,
        node: &'a str,
        all: StreamState<'a>,
        timestamp: &'a str,
    }
    let ts = now();
    encode(
        &Welcome {
            kind: "welcome",
            connection_id,
            short_id,
            user,
            protocol: super::V1,
            node,
            all,
            timestamp: ts.as_str(),
        },
        96,
    )
}

/// A message from a client or the server to a group or a connection/user.
#[derive(Serialize)]
pub struct Delivery<'a> {
    /// `message` (to a group) or `direct` (to a connection or user).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The group, for group messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'a str>,
    /// The message's offset in its group's stream, for group messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The sender's short id; absent when the server (REST) sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
    /// The sender's user id, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// The payload, verbatim.
    pub message: &'a RawValue,
    /// When the hub sent it.
    pub timestamp: &'a str,
}

/// Encodes a [`Delivery`] stamped now.
pub fn delivery(
    kind: &'static str,
    group: Option<&str>,
    offset: Option<u64>,
    from: Option<&str>,
    user: Option<&str>,
    message: &RawValue,
) -> Frame {
    let ts = now();
    encode(
        &Delivery {
            kind,
            group,
            offset,
            from,
            user,
            message,
            timestamp: ts.as_str(),
        },
        message.get().len(),
    )
}

/// `{"type":"reset","group":…,"epoch":…,"offset":…,"timestamp":…}`: a stream's history was
/// lost (the backplane restarted without it); it goes on from `offset` in `epoch`. Without
/// `group`: the all-clients stream.
pub fn reset(group: Option<&str>, epoch: &str, offset: u64) -> Frame {
    #[derive(Serialize)]
    struct Reset<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<&'a str>,
        epoch: &'a str,
        offset: u64,
        timestamp: &'a str,
    }
    let ts = now();
    encode(
        &Reset {
            kind: "reset",
            group,
            epoch,
            offset,
            timestamp: ts.as_str(),
        },
        64,
    )
}

/// `{"type":"joined"|"left","group":…,"connection":short,"user":…,"timestamp":…}` to a group's
/// members.
pub fn membership(joined: bool, group: &str, short_id: &str, user: Option<&str>) -> Frame {
    #[derive(Serialize)]
    struct Membership<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        group: &'a str,
        connection: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        timestamp: &'a str,
    }
    let ts = now();
    encode(
        &Membership {
            kind: if joined { "joined" } else { "left" },
            group,
            connection: short_id,
            user,
            timestamp: ts.as_str(),
        },
        group.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(f: &Frame) -> serde_json::Value {
        let h = if f[1] == 126 { 4 } else { 2 };
        serde_json::from_slice(&f[h..]).unwrap()
    }

    #[test]
    fn parses_every_command() {
        let (id, c) = parse(r#"{"id":1,"type":"join","group":"room"}"#).unwrap();
        assert_eq!(id.get(), "1");
        assert!(matches!(c, Command::Join { ref group, .. } if group == "room"));
        let (id, c) =
            parse(r#"{"id":"a","type":"publish","group":"g","message":{"x":[1,2]}}"#).unwrap();
        assert_eq!(id.get(), r#""a""#);
        match c {
            Command::Publish { message, .. } => assert_eq!(message.get(), r#"{"x":[1,2]}"#),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"id":2,"type":"send","user":"bob","message":"hi"}"#).unwrap().1,
            Command::Send { to: Target::User(ref u), .. } if u == "bob"
        ));
        assert!(matches!(
            parse(r#"{"id":3,"type":"ping"}"#).unwrap().1,
            Command::Ping
        ));
        // Escaped strings are fine (some encoders escape '/').
        assert!(matches!(
            parse(r#"{"id":4,"type":"join","group":"a\/b"}"#).unwrap().1,
            Command::Join { ref group, .. } if group == "a/b"
        ));
        assert!(matches!(
            parse(r#"{"id":3,"type":"unsubscribe","group":"g"}"#)
                .unwrap()
                .1,
            Command::Leave { .. }
        ));
    }

    #[test]
    fn rejects_with_specific_codes_and_keeps_the_id() {
        let cases = [
            ("not json", ErrorCode::Malformed, None),
            ("[1,2]", ErrorCode::Invalid, None),
            (r#"{"type":"ping"}"#, ErrorCode::Invalid, None),
            (r#"{"id":null,"type":"ping"}"#, ErrorCode::Invalid, None),
            (r#"{"id":7}"#, ErrorCode::Invalid, Some("7")),
            (
                r#"{"id":7,"type":"dance"}"#,
                ErrorCode::UnknownCommand,
                Some("7"),
            ),
            (r#"{"id":7,"type":"join"}"#, ErrorCode::Invalid, Some("7")),
            (
                r#"{"id":7,"type":"join","group":"a b"}"#,
                ErrorCode::InvalidGroup,
                Some("7"),
            ),
            (
                r#"{"id":7,"type":"publish","group":"g"}"#,
                ErrorCode::Invalid,
                Some("7"),
            ),
            (
                r#"{"id":7,"type":"send","message":1}"#,
                ErrorCode::Invalid,
                Some("7"),
            ),
            (
                r#"{"id":7,"type":"send","user":"u","connection":"c","message":1}"#,
                ErrorCode::Invalid,
                Some("7"),
            ),
            (r#"{"id":7,"type":42}"#, ErrorCode::Invalid, None),
            // Found by fuzzing: serde reads structs from arrays too; commands are objects only.
            (r#"[1,"ping"]"#, ErrorCode::Invalid, None),
            (r#"[1e99999]"#, ErrorCode::Invalid, None),
        ];
        for (text, code, id) in cases {
            let r = parse(text).unwrap_err();
            assert_eq!(r.code, code, "{text}");
            assert_eq!(r.id.map(|v| v.get()), id, "{text}");
        }
        let long = format!(r#"{{"id":1,"type":"join","group":"{}"}}"#, "g".repeat(129));
        assert_eq!(parse(&long).unwrap_err().code, ErrorCode::InvalidGroup);
    }

    #[test]
    fn ids_are_strings_or_numbers_and_never_echoed_when_huge() {
        for bad in [r#"{"a":1}"#, "[1]", "true", "false"] {
            let text = format!(r#"{{"id":{bad},"type":"ping"}}"#);
            let r = parse(&text).unwrap_err();
            assert_eq!(r.code, ErrorCode::Invalid, "{text}");
            assert!(r.id.is_none(), "{text}");
            assert!(command_id(&text).is_none(), "{text}");
        }
        for good in [r#""c-1""#, "7", "-1.5e3"] {
            let text = format!(r#"{{"id":{good},"type":"ping"}}"#);
            assert!(parse(&text).is_ok(), "{text}");
        }
        let huge = format!(r#"{{"id":"{}","type":"ping"}}"#, "x".repeat(10_000));
        let r = parse(&huge).unwrap_err();
        assert!(r.id.is_none());
        assert!(r.message.contains("10002 bytes"), "{}", r.message);
        let frame = error(r.id, r.code, &r.message);
        assert!(frame.len() < 300, "the error does not copy the id back");
        let unknown = format!(r#"{{"id":1,"type":"{}"}}"#, "t".repeat(10_000));
        let r = parse(&unknown).unwrap_err();
        assert_eq!(r.code, ErrorCode::UnknownCommand);
        assert!(r.message.len() < 200, "{}", r.message);
    }

    #[test]
    fn envelopes_have_their_documented_shape() {
        let id = RawValue::from_string("\"c1\"".into()).unwrap();
        assert_eq!(
            json(&ack(&id, AckExtra::default())),
            serde_json::json!({"type":"ack","id":"c1"})
        );
        let e = json(&error(None, ErrorCode::NotMember, "no"));
        assert_eq!(e["code"], "not_member");
        assert!(e["id"].is_null());
        let msg = RawValue::from_string("{\"a\":1}".into()).unwrap();
        let d = json(&delivery(
            "message",
            Some("g"),
            Some(7),
            Some("abcd1234"),
            None,
            &msg,
        ));
        assert_eq!(d["message"], serde_json::json!({"a":1}));
        assert_eq!(d["group"], "g");
        assert_eq!(d["offset"], 7);
        assert!(d.get("user").is_none());
        let all = StreamState {
            epoch: "e1",
            offset: 3,
            recovered: None,
        };
        let w = json(&welcome(
            &"a".repeat(32),
            "aaaaaaaa",
            Some("alice"),
            "n1",
            all,
        ));
        assert_eq!(w["node"], "n1");
        assert_eq!(w["all"], serde_json::json!({"epoch":"e1","offset":3}));
        assert_eq!(w["type"], "welcome");
        assert_eq!(w["user"], "alice");
    }
}
