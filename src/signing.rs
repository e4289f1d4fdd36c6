//! Pusher's signatures: HMAC-SHA256 with an app's secret, as hex, compared in constant time.
//!
//! - A channel authorization is `key:hex(HMAC(secret, "socket_id:channel"))`, with
//!   `":channel_data"` appended for presence channels.
//! - A user sign-in is `key:hex(HMAC(secret, "socket_id::user::user_data"))`.
//! - An HTTP API request signs `METHOD\npath\nquery`, the query's parameters sorted by name
//!   (lowercase), `auth_signature` left out, values as they are (not URL-encoded); a body is
//!   named by its MD5 (`body_md5`).
//! - A webhook signs its body.
//!
//! And what wshub signs for the application's backend (its own webhooks and authorization
//! hooks), as the Standard Webhooks specification says, so that its libraries verify them:
//! `v1,base64(HMAC-SHA256(key, "id.timestamp.body"))`.
//!
//! A leaf: it knows nothing of apps or the hub.

use hmac::{Mac, SimpleHmac};
use sha2::Sha256;

type HmacSha256 = SimpleHmac<Sha256>;

/// `hex(HMAC-SHA256(secret, message))`.
pub fn sign(secret: &str, message: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` does not fail.
    HmacSha256::new_from_slice(secret.as_bytes())
        .map(|mut mac| {
            mac.update(message);
            hex::encode(mac.finalize().into_bytes())
        })
        .unwrap_or_default()
}

/// Whether `signature` (hex) is `HMAC-SHA256(secret, message)`, in constant time.
pub fn verify(secret: &str, message: &[u8], signature: &str) -> bool {
    let Ok(given) = hex::decode(signature) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(message);
    mac.verify_slice(&given).is_ok()
}

/// Checks an `auth` field of the form `key:signature` against `message`: the key must be the
/// app's, the signature the app secret's.
pub fn verify_auth(key: &str, secret: &str, message: &[u8], auth: &str) -> bool {
    match auth.split_once(':') {
        Some((k, sig)) => {
            // Both checks always run: no early exit that times which part was wrong.
            let key_ok = subtle::ConstantTimeEq::ct_eq(k.as_bytes(), key.as_bytes());
            let sig_ok = verify(secret, message, sig);
            bool::from(key_ok) & sig_ok
        }
        None => false,
    }
}

/// What a channel authorization signs.
pub fn channel_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(d) => format!("{socket_id}:{channel}:{d}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// What a user sign-in signs.
pub fn user_message(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// What an HTTP API request signs: `METHOD\npath\nk1=v1&k2=v2…`, parameters sorted by their
/// lowercase names, `auth_signature` left out.
pub fn request_message(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    sorted.sort();
    let query: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{method}\n{path}\n{}", query.join("&"))
}

/// The hex MD5 of a body (`body_md5`).
pub fn body_md5(body: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(body))
}

/// The HMAC key of a Standard Webhooks secret: `whsec_<base64>` is the base64 decoded (what
/// the specification's libraries expect), anything else its own bytes (`format: "raw"` in
/// the JavaScript library).
///
/// # Errors
/// When a `whsec_` secret is not base64, or the key is shorter than 16 bytes.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("a `whsec_` secret is base64 after the prefix: {e}"))?,
        None => secret.as_bytes().to_vec(),
    };
    if key.len() < 16 {
        return Err(format!(
            "the webhook secret is {} bytes: at least 16 (e.g. `whsec_` and 24 random bytes in base64)",
            key.len()
        ));
    }
    Ok(key)
}

/// A Standard Webhooks signature header value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
pub fn standard_signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine as _;
    HmacSha256::new_from_slice(key)
        .map(|mut mac| {
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            format!("v1,{sig}")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_documentation_example() {
        // The worked example of Pusher's authentication documentation.
        let sig = sign(
            "7ad3773142a6692b25b8",
            channel_message("1234.1234", "private-foobar", None).as_bytes(),
        );
        assert_eq!(
            sig,
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(verify_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            b"1234.1234:private-foobar",
            &format!("278d425bdf160c739803:{sig}")
        ));
        assert!(!verify_auth(
            "other",
            "7ad3773142a6692b25b8",
            b"1234.1234:private-foobar",
            &format!("278d425bdf160c739803:{sig}")
        ));
        assert!(!verify_auth(
            "278d425bdf160c739803",
            "x",
            b"1234.1234:private-foobar",
            "278d425bdf160c739803:zz"
        ));
        assert!(!verify_auth("k", "s", b"m", "no-colon"));
    }

    #[test]
    fn request_strings_sort_and_skip_the_signature() {
        let params = vec![
            ("auth_version".to_owned(), "1.0".to_owned()),
            ("auth_key".to_owned(), "k".to_owned()),
            ("auth_signature".to_owned(), "x".to_owned()),
            ("Body_md5".to_owned(), "abc".to_owned()),
        ];
        assert_eq!(
            request_message("POST", "/apps/1/events", &params),
            "POST\n/apps/1/events\nauth_key=k&auth_version=1.0&body_md5=abc"
        );
        assert_eq!(body_md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn standard_webhooks_example() {
        // The example of the Standard Webhooks specification's test suites.
        let key = webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            standard_signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(webhook_key("0123456789abcdef").unwrap().len(), 16);
        assert!(webhook_key("short").is_err());
        assert!(webhook_key("whsec_!!!").is_err());
    }
}
