//! Who may do what: the REST API key, JWT connection authentication, and the Origin allow-list.
//!
//! - **API key** (`--api-key`): every `/api/*` request needs `Authorization: Bearer <key>`,
//!   compared in constant time; otherwise 401. Health checks and API docs stay open.
//! - **JWT** (`--jwt-secret` for HS256, `--jwt-public-key` for RS256/ES256): a WebSocket upgrade
//!   needs a valid token in `?access_token=` or `Authorization: Bearer`; otherwise 401 before the
//!   upgrade. `exp` is required and checked. `sub` becomes the connection's user id; an optional
//!   `groups` claim (exact names, or prefixes ending in `*`) restricts which groups it may join.
//! - **Origins** (`--allowed-origins`): an upgrade whose `Origin` header is not on the list gets
//!   403 (cross-site WebSocket hijacking). Requests without `Origin` (non-browser clients) pass.

use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::problem::Problem;

/// Raw security settings, as configured.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The REST API key.
    pub api_key: Option<String>,
    /// The HS256 secret for connection tokens.
    pub jwt_secret: Option<String>,
    /// A PEM public key (RSA or EC P-256) for RS256/ES256 connection tokens.
    pub jwt_public_key_pem: Option<Vec<u8>>,
    /// Origins allowed to open WebSockets (`*` allows any); empty allows any.
    pub allowed_origins: Vec<String>,
    /// Clock skew tolerated when checking a token's `exp` and `nbf`.
    pub leeway: std::time::Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            api_key: None,
            jwt_secret: None,
            jwt_public_key_pem: None,
            allowed_origins: Vec::new(),
            leeway: DEFAULT_LEEWAY,
        }
    }
}

/// The clock skew tolerated by default when checking `exp` and `nbf`.
pub const DEFAULT_LEEWAY: std::time::Duration = std::time::Duration::from_secs(5);

/// The shortest HS256 secret accepted: the hash size (RFC 7518 section 3.2).
pub const MIN_HS256_SECRET: usize = 32;

/// Checks credentials; built once at startup.
#[derive(Default)]
pub struct Auth {
    api_key: Option<Vec<u8>>,
    keys: Vec<(DecodingKey, Validation)>,
    origins: Option<Vec<String>>,
    leeway: std::time::Duration,
}

impl std::fmt::Debug for Auth {
    /// Never prints a secret: only which checks are on.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("jwt_keys", &self.keys.len())
            .field("origins", &self.origins)
            .finish()
    }
}

/// What a connection's token says about it.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The token's `sub`.
    pub user: Option<Arc<str>>,
    /// The token's `groups` claim.
    pub allowed_groups: Option<Arc<[String]>>,
    /// The token's `exp` (Unix seconds).
    pub expires_at: Option<u64>,
    /// The token's `iat` (Unix seconds), if it has one.
    pub issued_at: Option<u64>,
    /// The token's `info` claim (JSON text): what presence shows about the user.
    pub info: Option<Arc<str>>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    groups: Option<Vec<String>>,
    exp: Option<u64>,
    iat: Option<u64>,
    info: Option<serde_json::Value>,
}

impl Auth {
    /// No checks at all (the development default).
    pub fn none() -> Self {
        Self::default()
    }

    /// Builds the checks.
    ///
    /// # Errors
    /// A message naming the setting when a key cannot be used.
    pub fn new(s: &AuthSettings) -> Result<Self, String> {
        let mut keys = Vec::new();
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.validate_nbf = true;
            v.leeway = s.leeway.as_secs();
            v
        };
        if let Some(secret) = &s.jwt_secret {
            if secret.len() < MIN_HS256_SECRET {
                return Err(format!(
                    "--jwt-secret must be at least {MIN_HS256_SECRET} bytes (HS256 keys are at least the hash size, RFC 7518 section 3.2); this one has {}",
                    secret.len()
                ));
            }
            keys.push((
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256),
            ));
        }
        if let Some(pem) = &s.jwt_public_key_pem {
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                (k, validation(Algorithm::RS256))
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                (k, validation(Algorithm::ES256))
            } else {
                return Err("--jwt-public-key: not a PEM RSA or EC (P-256) public key".into());
            };
            keys.push(key);
        }
        if let Some(k) = &s.api_key {
            if k.is_empty() {
                return Err("--api-key must not be empty".into());
            }
        }
        let origins = (!s.allowed_origins.is_empty()
            && !s.allowed_origins.iter().any(|o| o == "*"))
        .then(|| {
            s.allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect()
        });
        Ok(Self {
            api_key: s.api_key.as_ref().map(|k| k.as_bytes().to_vec()),
            keys,
            origins,
            leeway: s.leeway,
        })
    }

    /// The clock skew tolerated on `exp` and `nbf`: a live connection is also closed this long
    /// after its token's `exp`.
    pub fn leeway(&self) -> std::time::Duration {
        self.leeway
    }

    /// Whether WebSocket connections need a token.
    pub fn requires_token(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether the REST API needs the key.
    pub fn requires_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    /// Checks the REST API key.
    ///
    /// # Errors
    /// 401 when a key is configured and the request does not carry it.
    pub fn check_api_key(&self, headers: &HeaderMap) -> Result<(), Problem> {
        let Some(expected) = &self.api_key else {
            return Ok(());
        };
        let given = bearer(headers).unwrap_or_default();
        // Constant time over the contents; only the length can be learned by timing.
        if given.as_bytes().ct_eq(expected).into() {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "this API needs `Authorization: Bearer <api key>`",
            ))
        }
    }

    /// Whether a page from `origin` may connect (no allow-list: any may).
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        self.origins
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)))
    }

    /// Checks the `Origin` of an upgrade request.
    ///
    /// # Errors
    /// 403 when an allow-list is configured and the request's `Origin` is not on it.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Problem> {
        let (Some(allowed), Some(origin)) = (&self.origins, headers.get(header::ORIGIN)) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                format!("origin `{origin}` is not allowed to open WebSockets here"),
            ))
        }
    }

    /// Authenticates an upgrade request by its token (`?access_token=` or
    /// `Authorization: Bearer`).
    ///
    /// # Errors
    /// 400 when the request carries a token both ways (RFC 6750 section 2: one method only);
    /// 401 when tokens are required and the token is missing, malformed, badly signed,
    /// expired, not valid yet (`nbf`), or has critical header parameters (`crit`, none of
    /// which this server understands: RFC 7515 section 4.1.11).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Identity, Problem> {
        if self.keys.is_empty() {
            return Ok(Identity::default());
        }
        let unauthorized = |detail: String| Problem::new(StatusCode::UNAUTHORIZED, detail);
        let token = match (query_token, bearer(headers)) {
            (Some(_), Some(_)) => {
                return Err(Problem::bad_request(
                    "send the token one way only: `?access_token=` or `Authorization: Bearer`, not both",
                ))
            }
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => {
                return Err(unauthorized(
                    "a token is required: `?access_token=<jwt>` or `Authorization: Bearer <jwt>`"
                        .into(),
                ))
            }
        };
        self.validate(token).map_err(unauthorized)
    }

    /// Checks a token (signature, `exp`, `nbf`, no `crit`) and reads who it names: at an
    /// upgrade, and when a connection refreshes its token.
    ///
    /// # Errors
    /// Why the token is not valid, for people.
    pub fn validate(&self, token: &str) -> Result<Identity, String> {
        if jsonwebtoken::decode_header(token).is_ok_and(|h| h.crit.is_some()) {
            return Err(
                "invalid token: it has critical header parameters (`crit`) this server does not understand".into(),
            );
        }
        let mut last = None;
        for (key, validation) in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => {
                    return Ok(Identity {
                        user: data.claims.sub.filter(|s| !s.is_empty()).map(Arc::from),
                        allowed_groups: data.claims.groups.map(Arc::from),
                        expires_at: data.claims.exp,
                        issued_at: data.claims.iat,
                        info: data.claims.info.map(|i| Arc::from(i.to_string())),
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || "invalid token".to_owned(),
            |e| format!("invalid token: {e}"),
        ))
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "a-test-secret-of-32-bytes-length";

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn exp(offset: i64) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        now + offset
    }

    fn auth() -> Auth {
        Auth::new(&AuthSettings {
            jwt_secret: Some(SECRET.into()),
            api_key: Some("k3y".into()),
            allowed_origins: vec!["https://app.example".into()],
            ..AuthSettings::default()
        })
        .unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn valid_token_gives_user_and_groups() {
        let t = token(
            serde_json::json!({"sub":"alice","exp":exp(60),"groups":["chat:*"]}),
            SECRET,
        );
        let id = auth().authenticate(&HeaderMap::new(), Some(&t)).unwrap();
        assert_eq!(id.user.as_deref(), Some("alice"));
        assert_eq!(id.allowed_groups.unwrap().len(), 1);
        let id = auth()
            .authenticate(&headers(&[("authorization", &format!("Bearer {t}"))]), None)
            .unwrap();
        assert_eq!(id.user.as_deref(), Some("alice"));
    }

    #[test]
    fn bad_tokens_are_401() {
        let cases = [
            None,
            Some("garbage".to_owned()),
            Some(token(
                serde_json::json!({"sub":"a","exp":exp(-120)}),
                SECRET,
            )),
            Some(token(serde_json::json!({"sub":"a"}), SECRET)),
            Some(token(
                serde_json::json!({"sub":"a","exp":exp(60)}),
                "another-secret-of-32-bytes-long!",
            )),
        ];
        for t in cases {
            let e = auth()
                .authenticate(&HeaderMap::new(), t.as_deref())
                .unwrap_err();
            assert_eq!(e.status, 401, "{t:?}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        // {"alg":"none"} header, no signature.
        let t = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(auth().authenticate(&HeaderMap::new(), Some(t)).is_err());
    }

    #[test]
    fn api_key_and_origin() {
        let a = auth();
        assert!(a
            .check_api_key(&headers(&[("authorization", "Bearer k3y")]))
            .is_ok());
        assert!(a
            .check_api_key(&headers(&[("authorization", "bearer k3y")]))
            .is_ok());
        for bad in ["Bearer k3", "Bearer k3yy", "Basic k3y", ""] {
            let h = if bad.is_empty() {
                HeaderMap::new()
            } else {
                headers(&[("authorization", bad)])
            };
            assert_eq!(a.check_api_key(&h).unwrap_err().status, 401, "{bad}");
        }
        assert!(a
            .check_origin(&headers(&[("origin", "https://app.example")]))
            .is_ok());
        assert!(a.check_origin(&HeaderMap::new()).is_ok());
        assert_eq!(
            a.check_origin(&headers(&[("origin", "https://evil.example")]))
                .unwrap_err()
                .status,
            403
        );
    }

    #[test]
    fn settings_are_validated() {
        let short = AuthSettings {
            jwt_secret: Some("short".into()),
            ..AuthSettings::default()
        };
        assert!(Auth::new(&short).is_err());
        let bad_pem = AuthSettings {
            jwt_public_key_pem: Some(b"not a pem".to_vec()),
            ..AuthSettings::default()
        };
        assert!(Auth::new(&bad_pem)
            .unwrap_err()
            .contains("--jwt-public-key"));
    }
}
