//! What travels inside the frames: the `wshub.v1` commands and envelopes, and the Pusher
//! Channels protocol.

pub mod events;
pub mod pusher;
pub mod v1;

/// The subprotocol name negotiated with `Sec-WebSocket-Protocol`.
pub const V1: &str = "wshub.v1";

/// The group-name rule, as people read it (error messages).
pub const GROUP_NAME_RULE: &str =
    "a group name is 1 to 128 characters from A-Z a-z 0-9 _ - . : @ /";

/// The group-name rule as a regular expression (the OpenAPI document and the demo page say it
/// so; tests hold them to this one).
pub const GROUP_NAME_PATTERN: &str = "^[A-Za-z0-9_.:@/-]{1,128}$";

/// Whether a group name is acceptable: 1 to 128 characters from `A-Z a-z 0-9 _ - . : @ /`.
pub fn valid_group_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'/')
        })
}

/// Whether `group` matches a group pattern: an exact name, or a prefix ending in `*` (`*`
/// alone matches every group).
pub fn group_matches(pattern: &str, group: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => group.starts_with(prefix),
        None => pattern == group,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names() {
        for ok in [
            "a",
            "room-1",
            "chat:general",
            "org/team.a@x",
            &"g".repeat(128),
        ] {
            assert!(valid_group_name(ok), "{ok}");
        }
        for bad in ["", " ", "a b", "é", "a\n", &"g".repeat(129), "a*"] {
            assert!(!valid_group_name(bad), "{bad:?}");
        }
    }
}
