//! Security end to end: the REST API key, JWT connection auth (HS256 and ES256), the `groups`
//! claim, user fan-out, and the Origin allow-list.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wshub::auth::AuthSettings;

const SECRET: &str = "integration-test-secret-32-bytes";

fn exp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn jwt_settings() -> AuthSettings {
    AuthSettings {
        jwt_secret: Some(SECRET.into()),
        ..AuthSettings::default()
    }
}

/// Upgrades with extra headers; returns the HTTP status of the answer.
async fn upgrade_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
    {
        Ok((_, res)) => res.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

async fn connect_v1_with(url: &str) -> (Ws, Value) {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "wshub.v1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let welcome = next_json(&mut ws).await;
    (ws, welcome)
}

#[tokio::test]
async fn api_key_guards_the_api_but_not_health_or_docs() {
    let srv = TestServer::with_auth(AuthSettings {
        api_key: Some("s3cret-key".into()),
        ..AuthSettings::default()
    })
    .await;
    let r = http(srv.addr, "GET", "/api/connections", &[], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let wrong = http(
        srv.addr,
        "GET",
        "/api/connections",
        &[("Authorization", "Bearer s3cret-kez")],
        b"",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let r = http(
        srv.addr,
        "POST",
        "/api/connections/broadcast",
        &[("Content-Type", "application/json")],
        br#"{"message":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 401, "push without the key");
    let ok = http(
        srv.addr,
        "GET",
        "/api/connections",
        &[("Authorization", "Bearer s3cret-key")],
        b"",
    )
    .await;
    assert_eq!(ok.status, 200);
    for open in ["/healthz", "/openapi.json", "/swagger/"] {
        assert_eq!(
            http(srv.addr, "GET", open, &[], b"").await.status,
            200,
            "{open}"
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn connections_need_a_valid_token() {
    let srv = TestServer::with_auth(jwt_settings()).await;
    let url = srv.ws_url();
    assert_eq!(upgrade_status(&url, &[]).await, 401, "no token");
    assert_eq!(
        upgrade_status(&format!("{url}?access_token=garbage"), &[]).await,
        401
    );
    let expired = hs256(json!({"sub":"alice","exp":1_000_000_000}));
    assert_eq!(
        upgrade_status(&format!("{url}?access_token={expired}"), &[]).await,
        401,
        "expired"
    );
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"alice","exp":exp()}),
        &EncodingKey::from_secret(b"someone-elses-secret-32-bytes!!!"),
    )
    .unwrap();
    assert_eq!(
        upgrade_status(&format!("{url}?access_token={forged}"), &[]).await,
        401,
        "wrong key"
    );
    let good = hs256(json!({"sub":"alice","exp":exp()}));
    assert_eq!(
        upgrade_status(&url, &[("Authorization", &format!("Bearer {good}"))]).await,
        101
    );
    // The 401 is a problem document, sent before any upgrade.
    let r = http(
        srv.addr,
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.json()["detail"].as_str().unwrap().contains("token"));
    srv.stop().await;
}

#[tokio::test]
async fn sub_is_the_user_and_user_sends_reach_every_connection_of_it() {
    let srv = TestServer::with_auth(jwt_settings()).await;
    let url = srv.ws_url();
    let alice = hs256(json!({"sub":"alice","exp":exp()}));
    let bob = hs256(json!({"sub":"bob","exp":exp()}));
    let (mut a1, w) = connect_v1_with(&format!("{url}?access_token={alice}")).await;
    assert_eq!(w["user"], "alice");
    let (mut a2, _) = connect_v1_with(&format!("{url}?access_token={alice}")).await;
    let (mut b, _) = connect_v1_with(&format!("{url}?access_token={bob}")).await;

    let r = post_json(
        srv.addr,
        "/api/users/alice/send",
        r#"{"message":{"note":"for alice"}}"#,
    )
    .await;
    assert_eq!(r.json()["recipients"], 2);
    for ws in [&mut a1, &mut a2] {
        let m = next_json(ws).await;
        assert_eq!(
            (m["type"].as_str(), m["message"]["note"].as_str()),
            (Some("direct"), Some("for alice"))
        );
    }
    // From bob over the protocol: the envelope names the sender's user.
    send_text(
        &mut b,
        r#"{"id":1,"type":"send","user":"alice","message":"hi"}"#,
    )
    .await;
    assert_eq!(next_json(&mut b).await["recipients"], 2);
    let m = next_json(&mut a1).await;
    assert_eq!(m["user"], "bob");
    let listed = http(srv.addr, "GET", "/api/connections?user=alice", &[], b"")
        .await
        .json();
    assert_eq!(listed["count"], 2);
    assert!(listed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["user"] == "alice"));
    srv.stop().await;
}

#[tokio::test]
async fn groups_claim_restricts_joins() {
    let srv = TestServer::with_auth(jwt_settings()).await;
    let t = hs256(json!({"sub":"carol","exp":exp(),"groups":["chat:*","lobby","private-orders"]}));
    let (mut ws, _) = connect_v1_with(&format!("{}?access_token={t}", srv.ws_url())).await;
    for (group, ok) in [
        ("chat:general", true),
        ("lobby", true),
        ("lobby2", false),
        ("admin", false),
        // A Pusher private channel of the default app: only when the token names it.
        ("private-orders", true),
        ("private-other", false),
    ] {
        send_text(
            &mut ws,
            &json!({"id":group,"type":"join","group":group}).to_string(),
        )
        .await;
        let v = next_json(&mut ws).await;
        assert_eq!(v["type"] == "ack", ok, "{group}: {v}");
        if !ok {
            assert_eq!(v["code"], "forbidden");
        }
    }
    srv.stop().await;
}

/// Generates a key pair with openssl: (private PKCS#8 PEM, public PEM).
fn keypair(kind: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("wshub-{kind}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let pubkey = dir.join("pub.pem");
    let gen = match kind {
        "ec" => "openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out {k} && openssl ec -in {k} -pubout -out {p}",
        _ => "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {k} && openssl pkey -in {k} -pubout -out {p}",
    }
    .replace("{k}", &key.display().to_string())
    .replace("{p}", &pubkey.display().to_string());
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(gen)
        .output()
        .expect("openssl is needed for this test (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pair = (
        std::fs::read(&key).unwrap(),
        std::fs::read(&pubkey).unwrap(),
    );
    let _ = std::fs::remove_dir_all(dir);
    pair
}

#[tokio::test]
async fn es256_and_rs256_tokens_with_a_public_key() {
    for (kind, alg) in [("ec", Algorithm::ES256), ("rsa", Algorithm::RS256)] {
        let (private, public) = keypair(kind);
        let srv = TestServer::with_auth(AuthSettings {
            jwt_public_key_pem: Some(public),
            ..AuthSettings::default()
        })
        .await;
        let signing = match kind {
            "ec" => EncodingKey::from_ec_pem(&private).unwrap(),
            _ => EncodingKey::from_rsa_pem(&private).unwrap(),
        };
        let t = encode(
            &Header::new(alg),
            &json!({"sub":"dave","exp":exp()}),
            &signing,
        )
        .unwrap();
        let (_ws, w) = connect_v1_with(&format!("{}?access_token={t}", srv.ws_url())).await;
        assert_eq!(w["user"], "dave", "{kind}");
        // An HS256 token is not accepted by a public-key-only server.
        let hs = hs256(json!({"sub":"dave","exp":exp()}));
        assert_eq!(
            upgrade_status(&format!("{}?access_token={hs}", srv.ws_url()), &[]).await,
            401,
            "{kind}"
        );
        srv.stop().await;
    }
}

#[tokio::test]
async fn origin_allow_list() {
    let srv = TestServer::with_auth(AuthSettings {
        allowed_origins: vec!["https://app.example".into()],
        ..AuthSettings::default()
    })
    .await;
    let url = srv.ws_url();
    assert_eq!(
        upgrade_status(&url, &[("Origin", "https://evil.example")]).await,
        403
    );
    assert_eq!(
        upgrade_status(
            &format!("ws://{}/ws/echo", srv.addr),
            &[("Origin", "https://evil.example")]
        )
        .await,
        403
    );
    assert_eq!(
        upgrade_status(&url, &[("Origin", "https://app.example")]).await,
        101
    );
    assert_eq!(
        upgrade_status(&url, &[]).await,
        101,
        "non-browser clients send no Origin"
    );
    srv.stop().await;
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn strict_token_rules_nbf_crit_one_transport_and_leeway() {
    let srv = TestServer::with_auth(AuthSettings {
        leeway: std::time::Duration::from_secs(5),
        ..jwt_settings()
    })
    .await;
    let url = srv.ws_url();
    let good = hs256(json!({"sub":"a","exp":exp()}));
    assert_eq!(
        upgrade_status(&format!("{url}?access_token={good}"), &[]).await,
        101
    );
    // Not valid yet (RFC 7519 section 4.1.5), beyond the leeway.
    let early = hs256(json!({"sub":"a","exp":exp(),"nbf":now() + 120}));
    assert_eq!(
        upgrade_status(&format!("{url}?access_token={early}"), &[]).await,
        401
    );
    // Within the leeway both ways.
    let skewed = hs256(json!({"sub":"a","exp":now() - 2,"nbf":now() + 2}));
    assert_eq!(
        upgrade_status(&format!("{url}?access_token={skewed}"), &[]).await,
        101
    );
    let expired = hs256(json!({"sub":"a","exp":now() - 30}));
    assert_eq!(
        upgrade_status(&format!("{url}?access_token={expired}"), &[]).await,
        401
    );
    // A critical header parameter nobody here understands (RFC 7515 section 4.1.11).
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp".into()]);
    let crit = encode(
        &header,
        &json!({"sub":"a","exp":exp()}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        upgrade_status(&format!("{url}?access_token={crit}"), &[]).await,
        401
    );
    // One transport per request (RFC 6750 section 2): both is a 400.
    let bearer = format!("Bearer {good}");
    assert_eq!(
        upgrade_status(
            &format!("{url}?access_token={good}"),
            &[("authorization", &bearer)]
        )
        .await,
        400
    );
    assert_eq!(
        upgrade_status(&url, &[("authorization", &bearer)]).await,
        101
    );
    srv.stop().await;

    let strict = TestServer::with_auth(AuthSettings {
        leeway: std::time::Duration::ZERO,
        ..jwt_settings()
    })
    .await;
    let just_expired = hs256(json!({"sub":"a","exp":now() - 2}));
    assert_eq!(
        upgrade_status(
            &format!("{}?access_token={just_expired}", strict.ws_url()),
            &[]
        )
        .await,
        401
    );
    strict.stop().await;
}

#[test]
fn a_short_hs256_secret_is_refused_at_startup() {
    let e = wshub::auth::Auth::new(&AuthSettings {
        jwt_secret: Some("sixteen-byte-key".into()),
        ..AuthSettings::default()
    })
    .unwrap_err();
    assert!(e.contains("at least 32 bytes"), "{e}");
}
