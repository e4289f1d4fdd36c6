//! What a `wshub.v1` client sends: commands, parsed and checked, or refused with a code.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::ErrorCode;

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
        /// The conflation key, for groups delivered `keep-latest`.
        key: Option<Cow<'a, str>>,
        /// `idempotencyKey`: a repeat within the window is delivered to no one.
        idempotency_key: Option<Cow<'a, str>>,
        /// `ttl` (seconds): past it the message leaves history and is not sent to a slow
        /// reader that has not got it yet.
        ttl: Option<std::time::Duration>,
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
    /// Who is in a group: a page of its presence members.
    Presence {
        /// The group.
        group: Cow<'a, str>,
        /// Where the page starts (the previous page's cursor).
        cursor: Option<Cow<'a, str>>,
        /// Members per page (default 100, at most 1000).
        limit: Option<usize>,
    },
    /// How many connections and users are present in a group.
    PresenceStats {
        /// The group.
        group: Cow<'a, str>,
    },
    /// Replace the connection's token with a new one for the same user, before it expires.
    Refresh {
        /// The new JWT.
        token: Cow<'a, str>,
    },
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
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cursor: Option<Cow<'a, str>>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "idempotencyKey")]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(default)]
    ttl: Option<f64>,
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
        if !crate::protocol::valid_group_name(&g) {
            return Err(reject(
                ErrorCode::InvalidGroup,
                crate::protocol::GROUP_NAME_RULE.into(),
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
            key: wire.key.take(),
            idempotency_key: wire.idempotency_key.take(),
            ttl: match wire.ttl {
                None => None,
                Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => {
                    Some(std::time::Duration::from_secs_f64(s))
                }
                Some(_) => {
                    return Err(reject(
                        ErrorCode::Invalid,
                        "`ttl` is a number of seconds, above 0 and at most 86400".into(),
                    ))
                }
            },
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
        "presence" => Command::Presence {
            group: group(&kind)?,
            cursor: wire.cursor.take(),
            limit: wire.limit,
        },
        "presence_stats" => Command::PresenceStats {
            group: group(&kind)?,
        },
        "refresh" => match wire.token.take() {
            Some(token) if !token.is_empty() => Command::Refresh { token },
            _ => {
                return Err(reject(
                    ErrorCode::Invalid,
                    "`refresh` needs `token` (a new JWT for the same user)".into(),
                ))
            }
        },
        other => {
            return Err(reject(
                ErrorCode::UnknownCommand,
                format!(
                    "unknown command `{}` (join, leave, publish, send, ping, refresh, presence, presence_stats)",
                    clip(other, 32)
                ),
            ))
        }
    };
    Ok((id, cmd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::v1::error;

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
}
