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
