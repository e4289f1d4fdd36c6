//! Every number a client can send, at the ends of its type: JWT `exp`/`nbf`/`iat`, `since`
//! offsets (in commands, the upgrade's `recover` and the REST history), `limit`s, `ttl`s and
//! close codes. Each gets a clear answer (an error, a refusal or a close), and the server and
//! the other connections carry on. (Pusher's `auth_timestamp` is in `tests/pusher.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/jwt.rs"]
mod jwt;

use std::time::Duration;

use common::*;
use jwt::jwt;
use serde_json::json;
use wshub::{Hub, HubConfig};

const SECRET: &str = "a-test-secret-of-32-bytes-length";

async fn upgrade_status(s: &TestServer, token: &str) -> u16 {
    upgrade_status_of(&format!("{}?access_token={token}", s.ws_url())).await
}

#[tokio::test]
async fn jwt_times_at_the_ends_of_their_range_are_answered_and_nothing_overflows() {
    let auth = wshub::auth::Auth::new(&wshub::auth::AuthSettings {
        jwt_secret: Some(SECRET.into()),
        leeway: Duration::from_secs(60),
        ..Default::default()
    })
    .unwrap();
    let hub = Hub::with_auth(
        HubConfig {
            idle_timeout: Duration::from_secs(30),
            ..fast_config()
        },
        auth,
    );
    let s = TestServer::with_hub(hub, wshub::server::ServerOptions::default()).await;
    // Refused: expired long ago, malformed (negative, past u64, fractional past u64), not
    // valid until the end of time.
    for claims in [
        json!({"sub": "a", "exp": 0}),
        json!({"sub": "a", "exp": 1}),
        json!({"sub": "a", "exp": -1}),
        json!({"sub": "a", "exp": i64::MIN}),
        json!({"sub": "a", "exp": 1e300}),
        json!({"sub": "a", "exp": "18446744073709551616"}),
        json!({"sub": "a", "exp": u64::MAX, "nbf": u64::MAX}),
        json!({"sub": "a", "exp": u64::MAX, "nbf": -1}),
    ] {
        assert_eq!(
            upgrade_status(&s, &jwt(claims.clone(), SECRET)).await,
            401,
            "{claims}"
        );
    }
    // Accepted: a token valid until u64::MAX seconds (the connection's timer saturates), with
    // `iat` at both ends (revocation compares it without arithmetic).
    let mut alive = Vec::new();
    for claims in [
        json!({"sub": "forever", "exp": u64::MAX}),
        json!({"sub": "forever", "exp": u64::MAX, "iat": u64::MAX}),
        json!({"sub": "forever", "exp": u64::MAX, "iat": 0, "nbf": 0}),
    ] {
        let (mut ws, _) = connect_v1(&format!(
            "{}?access_token={}",
            s.ws_url(),
            jwt(claims, SECRET)
        ))
        .await;
        assert_eq!(
            cmd(&mut ws, json!({"id": 1, "type": "ping"})).await["type"],
            "ack"
        );
        alive.push(ws);
    }
    // A refresh to such tokens: the same user is accepted, a malformed one refused.
    let ws = &mut alive[0];
    let ok = jwt(json!({"sub": "forever", "exp": u64::MAX - 1}), SECRET);
    let r = cmd(ws, json!({"id": 2, "type": "refresh", "token": ok})).await;
    assert_eq!(r["type"], "ack", "{r}");
    // Revoking the user (everything issued before now): the token with iat = u64::MAX is
    // not older than that, the others are.
    // The REST close code at the ends of its range first: refused, nobody closed.
    for code in ["-1", "0", "999", "65536", "18446744073709551616", "1e3"] {
        let res = http(
            s.addr,
            "DELETE",
            &format!("/api/users/forever/connections?code={code}"),
            &[],
            b"",
        )
        .await;
        assert_eq!(res.status, 400, "code={code}");
    }
    let ws = &mut alive[1];
    assert_eq!(
        cmd(ws, json!({"id": 3, "type": "ping"})).await["type"],
        "ack"
    );
    let res = http(
        s.addr,
        "DELETE",
        "/api/users/forever/connections?code=4000&revoke=true",
        &[],
        b"",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(
        upgrade_status(
            &s,
            &jwt(json!({"sub": "forever", "exp": u64::MAX, "iat": 0}), SECRET)
        )
        .await,
        401
    );
    assert_eq!(
        upgrade_status(
            &s,
            &jwt(
                json!({"sub": "forever", "exp": u64::MAX, "iat": now_secs() + 3600}),
                SECRET
            )
        )
        .await,
        101
    );
    s.stop().await;
}

#[tokio::test]
async fn offsets_limits_and_ttls_at_the_ends_of_their_range_get_specific_answers() {
    let s = TestServer::start().await;
    for i in 1..=3 {
        let r = post_json(
            s.addr,
            "/api/groups/g/broadcast",
            &json!({ "message": i }).to_string(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let (mut ws, _) = connect_v1(&s.ws_url()).await;
    let (mut other, _) = connect_v1(&s.ws_url()).await;
    assert_eq!(
        cmd(&mut other, json!({"id": 0, "type": "join", "group": "g"})).await["type"],
        "ack"
    );
    let epoch = cmd(&mut ws, json!({"id": 1, "type": "join", "group": "g"})).await["epoch"].clone();
    cmd(&mut ws, json!({"id": 2, "type": "leave", "group": "g"})).await;
    // `since` at u64::MAX is a position in the future: nothing to recover, joined.
    let r = cmd(
        &mut ws,
        json!({"id": 3, "type": "join", "group": "g", "since": {"epoch": epoch, "offset": u64::MAX}}),
    )
    .await;
    assert_eq!(
        (r["type"].as_str(), r["recovered"].as_bool()),
        (Some("ack"), Some(false)),
        "{r}"
    );
    cmd(&mut ws, json!({"id": 4, "type": "leave", "group": "g"})).await;
    // Past u64, negative, fractional, as a float: invalid.
    for (n, offset) in [
        "18446744073709551616",
        "-9223372036854775808",
        "1e300",
        "1.5",
        "-0.0",
    ]
    .iter()
    .enumerate()
    {
        let text = format!(
            r#"{{"id":{},"type":"join","group":"g","since":{{"epoch":{epoch},"offset":{offset}}}}}"#,
            10 + n
        );
        send_text(&mut ws, &text).await;
        let r = next_json_where(&mut ws, |v| v["type"] == "error" || v["type"] == "ack").await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("error"), Some("invalid")),
            "offset {offset}: {r}"
        );
    }
    // `limit` of a presence page: past usize, negative, zero, huge.
    for limit in ["18446744073709551616", "-1", "1e300"] {
        let text = format!(r#"{{"id":20,"type":"presence","group":"g","limit":{limit}}}"#);
        send_text(&mut ws, &text).await;
        let r = next_json_where(&mut ws, |v| v["type"] == "error" || v["type"] == "ack").await;
        assert_eq!(r["type"], "error", "limit {limit}: {r}");
    }
    for limit in [json!(0), json!(u64::MAX)] {
        let r = cmd(
            &mut ws,
            json!({"id": 21, "type": "presence", "group": "g", "limit": limit}),
        )
        .await;
        assert!(
            r["type"] == "ack" || r["type"] == "error",
            "limit {limit}: {r}"
        );
    }
    // `ttl`: zero, negative, past a day, past f64's range, not a number: invalid.
    cmd(&mut ws, json!({"id": 30, "type": "join", "group": "t"})).await;
    for ttl in ["0", "-1", "86400.001", "1e309", "-1e309", "\"60\"", "null"] {
        let text = format!(r#"{{"id":31,"type":"publish","group":"t","message":1,"ttl":{ttl}}}"#);
        send_text(&mut ws, &text).await;
        let r = next_json_where(&mut ws, |v| v["type"] == "error" || v["type"] == "ack").await;
        if ttl == "null" {
            assert_eq!(r["type"], "ack", "ttl {ttl}: {r}");
        } else {
            // Invalid, or (past f64, not JSON serde reads) malformed: both name the problem.
            assert_eq!(r["type"], "error", "ttl {ttl}: {r}");
            assert!(
                r["code"] == "invalid" || r["code"] == "malformed",
                "ttl {ttl}: {r}"
            );
        }
    }
    let r = cmd(
        &mut ws,
        json!({"id": 32, "type": "publish", "group": "t", "message": 1, "ttl": 86400}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    // The REST history: `since` and `limit` at the ends of their range (a `since` past the
    // stream's end is a 400 that says so).
    for (q, status) in [
        (format!("since={}", u64::MAX), 400),
        ("since=18446744073709551616".to_owned(), 400),
        ("since=-1".to_owned(), 400),
        (format!("limit={}", u64::MAX), 400),
        ("limit=0".to_owned(), 400),
        ("limit=-1".to_owned(), 400),
        ("since=3&limit=1".to_owned(), 200),
    ] {
        let r = http(
            s.addr,
            "GET",
            &format!("/api/groups/g/history?{q}"),
            &[],
            b"",
        )
        .await;
        assert_eq!(
            r.status,
            status,
            "{q}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        if status == 400 {
            assert_eq!(
                r.header("content-type"),
                Some("application/problem+json"),
                "{q}"
            );
        }
    }
    // The upgrade's `recover` past u64 is refused before the upgrade; at u64::MAX it is a
    // position in the future (nothing recovered).
    for (recover, status) in [
        (format!("e:{}", u64::MAX), 101),
        ("e:18446744073709551616".to_owned(), 400),
    ] {
        let got = upgrade_status_of(&format!("{}?recover={recover}", s.ws_url())).await;
        assert_eq!(got, status, "recover={recover}");
    }
    // Nobody else was disturbed: the other member got the three earlier messages' successor.
    let r = post_json(s.addr, "/api/groups/g/broadcast", r#"{"message":"after"}"#).await;
    assert_eq!(r.status, 200);
    next_json_where(&mut other, |v| v["message"] == "after").await;
    s.stop().await;
}

#[tokio::test]
async fn close_codes_at_the_ends_of_their_range_are_answered_by_the_rfc() {
    let s = TestServer::start().await;
    // RFC 6455 7.4: 1000-1003, 1007-1011 and 3000-4999 are valid to send; 0-999, 1004-1006,
    // 1012-2999 (unassigned or reserved) and 5000+ are not, and answered 1002.
    for (code, answer) in [
        (0u16, 1002u16),
        (999, 1002),
        (1000, 1000),
        (1004, 1002),
        (1005, 1002),
        (1006, 1002),
        (1015, 1002),
        (2999, 1002),
        (3000, 3000),
        (4999, 4999),
        (5000, 1002),
        (u16::MAX, 1002),
    ] {
        let mut c = RawClient::connect(s.addr, "/ws").await;
        c.send(0x8, &code.to_be_bytes()).await;
        let got = c.read_close().await;
        assert!(
            got == Some(answer) || (answer != 1002 && got == Some(1000)),
            "close {code}: answered {got:?}, expected {answer}"
        );
    }
    // A close payload of one byte (no room for a code) is a protocol error.
    let mut c = RawClient::connect(s.addr, "/ws").await;
    c.send(0x8, &[3]).await;
    assert_eq!(c.read_close().await, Some(1002));
    // The server is still serving.
    let (mut ws, _) = connect_v1(&s.ws_url()).await;
    assert_eq!(
        cmd(&mut ws, json!({"id": 1, "type": "ping"})).await["type"],
        "ack"
    );
    s.stop().await;
}
