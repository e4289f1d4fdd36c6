//! What a `wshub.v1` client receives: acks, errors, the welcome, deliveries, resets and
//! membership events, each encoded once.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::value::RawValue;

use super::ErrorCode;
use crate::envelope::Timestamp;
use crate::frame::{Frame, FrameBuf, OpCode};

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

/// An ack with the fields of `extra` (any serializable struct) beside `type` and `id`: a
/// `presence` page, `presence_stats` counts.
pub fn ack_with<T: Serialize>(id: &RawValue, extra: &T) -> Frame {
    #[derive(Serialize)]
    struct Ack<'a, T> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: &'a RawValue,
        #[serde(flatten)]
        extra: &'a T,
    }
    encode(
        &Ack {
            kind: "ack",
            id,
            extra,
        },
        256,
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
    /// After a `refresh`: when the new token expires (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// A publish whose idempotency key was seen within the window: not delivered again;
    /// `offset` is the first one's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
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
            protocol: crate::protocol::V1,
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

/// `{"type":"gap","group":…,"from":a,"to":b,"timestamp":…}`: this connection read too slowly
/// and lost the offsets `a..=b` of the group (its delivery policy is `drop-oldest`, or they
/// outlived their TTL); a `join` with `since` at `a − 1` recovers what history still has.
pub fn gap(group: &str, from: u64, to: u64) -> Frame {
    #[derive(Serialize)]
    struct Gap<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        group: &'a str,
        from: u64,
        to: u64,
        timestamp: &'a str,
    }
    let ts = now();
    encode(
        &Gap {
            kind: "gap",
            group,
            from,
            to,
            timestamp: ts.as_str(),
        },
        64 + group.len(),
    )
}

/// `{"type":"joined"|"left","group":…,"connection":short,"user":…,"info":…,"timestamp":…}` to
/// a group's members.
pub fn membership(
    joined: bool,
    group: &str,
    short_id: &str,
    user: Option<&str>,
    info: Option<&RawValue>,
) -> Frame {
    #[derive(Serialize)]
    struct Membership<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        group: &'a str,
        connection: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a RawValue>,
        timestamp: &'a str,
    }
    let ts = now();
    encode(
        &Membership {
            kind: if joined { "joined" } else { "left" },
            group,
            connection: short_id,
            user,
            info,
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
