//! Connection ids: 32 lowercase hex characters (a random UUID without dashes); the short form,
//! used in `from` and in system messages, is the first 8.

use std::fmt;
use std::str::FromStr;

/// A connection's unique id. Stored as 128 bits; shown as 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u128);

impl ConnId {
    /// A new random id (UUID v4 bits).
    pub fn random() -> Self {
        ConnId(uuid::Uuid::new_v4().as_u128())
    }

    /// The short form: the first 8 hex characters.
    pub fn short(&self) -> String {
        format!("{:08x}", (self.0 >> 96) as u32)
    }

    /// The id as a Pusher `socket_id`: two decimal numbers joined by a dot (the upper and lower
    /// 64 bits), the only form Pusher's client and server libraries accept.
    pub fn socket_id(&self) -> String {
        format!("{}.{}", (self.0 >> 64) as u64, self.0 as u64)
    }

    /// Reads a [`socket_id`](Self::socket_id) back; `None` for anything else.
    pub fn from_socket_id(s: &str) -> Option<Self> {
        let (hi, lo) = s.split_once('.')?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(hi) || !digits(lo) {
            return None;
        }
        let (hi, lo) = (hi.parse::<u64>().ok()?, lo.parse::<u64>().ok()?);
        Some(ConnId((u128::from(hi) << 64) | u128::from(lo)))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}

/// The text was not 32 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a connection id is 32 hexadecimal characters")]
pub struct InvalidConnId;

impl FromStr for ConnId {
    type Err = InvalidConnId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidConnId);
        }
        u128::from_str_radix(s, 16)
            .map(ConnId)
            .map_err(|_| InvalidConnId)
    }
}

impl serde::Serialize for ConnId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_32_lowercase_hex_and_short_is_its_prefix() {
        let id = ConnId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(id.short(), &s[..8]);
        assert_eq!(s.parse::<ConnId>().unwrap(), id);
    }

    #[test]
    fn socket_ids_round_trip_and_nothing_else_parses() {
        for id in [ConnId(0), ConnId(1), ConnId(u128::MAX), ConnId::random()] {
            let s = id.socket_id();
            assert!(
                s.split('.').all(|p| p.bytes().all(|b| b.is_ascii_digit())),
                "{s}"
            );
            assert_eq!(ConnId::from_socket_id(&s), Some(id));
        }
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1.2.3",
            "a.1",
            "18446744073709551616.1",
            "-1.1",
            "1 .1",
        ] {
            assert_eq!(ConnId::from_socket_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn leading_zeros_are_kept() {
        let id = ConnId(1);
        assert_eq!(id.to_string(), format!("{}1", "0".repeat(31)));
        assert_eq!(id.short(), "00000000");
    }

    #[test]
    fn rejects_bad_text() {
        for s in [
            "",
            "abc",
            &"g".repeat(32),
            &"a".repeat(33),
            "+0000000000000000000000000000001",
        ] {
            assert!(s.parse::<ConnId>().is_err(), "{s}");
        }
    }
}
