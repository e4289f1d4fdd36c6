//! Tokens for the tests that authenticate (kept out of `common`, which crates without
//! `jsonwebtoken` include too).
#![allow(dead_code)]

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;

/// An HS256 JWT of `claims` signed with `secret`.
pub fn jwt(claims: Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
