//! The token lifecycle over real sockets: a connection whose JWT expires is closed on time
//! (4401), a `refresh` keeps it (same user; groups no longer allowed are left), a refresh with
//! another user, a bad signature or an expired token is refused and the connection closed;
//! revocation closes every connection of a user on every node and refuses the user's older
//! tokens, also on a node that joins later.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/jwt.rs"]
mod jwt;

use std::time::Duration;

use common::*;
use jwt::jwt;
use serde_json::json;
use wshub::{Hub, HubConfig};

const SECRET: &str = "token-lifecycle-test-secret-32-bytes";

fn token(sub: &str, lasts: u64) -> String {
    jwt(
        json!({"sub": sub, "exp": now_secs() + lasts, "iat": now_secs()}),
        SECRET,
    )
}

fn auth() -> wshub::auth::Auth {
    wshub::auth::Auth::new(&wshub::auth::AuthSettings {
        jwt_secret: Some(SECRET.into()),
        leeway: Duration::ZERO,
        ..Default::default()
    })
    .unwrap()
}

async fn server() -> TestServer {
    let hub = Hub::with_auth(
        HubConfig {
            // Clients here wait without reading: no idle timeout in the way.
            idle_timeout: Duration::from_secs(30),
            ..fast_config()
        },
        auth(),
    );
    TestServer::with_hub(hub, wshub::server::ServerOptions::default()).await
}

async fn client(s: &TestServer, token: &str) -> (Ws, String) {
    connect_v1(&format!("{}?access_token={token}", s.ws_url())).await
}

/// The close frame's code and reason, skipping other frames.
async fn closed(ws: &mut Ws) -> (u16, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.to_string())
                }
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_expired_token_closes_its_connection_and_a_refresh_keeps_it() {
    let s = server().await;
    let (mut expiring, _) = client(&s, &token("ann", 2)).await;
    // Read all along, as a browser does (answering pings and the Close).
    let expiring = tokio::spawn(async move { closed(&mut expiring).await });
    let (mut refreshed, _) = client(&s, &token("ann", 2)).await;
    let exp = now_secs() + 3600;
    let new = jwt(json!({"sub": "ann", "exp": exp, "iat": now_secs()}), SECRET);
    let ack = cmd(
        &mut refreshed,
        json!({"id": 1, "type": "refresh", "token": new}),
    )
    .await;
    assert_eq!(
        (ack["type"].as_str(), ack["exp"].as_u64()),
        (Some("ack"), Some(exp)),
        "{ack}"
    );
    let started = std::time::Instant::now();
    assert_eq!(expiring.await.unwrap(), (4401, "token expired".to_owned()));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // Past the first token's expiry, the refreshed connection still works.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let p = cmd(&mut refreshed, json!({"id": 2, "type": "ping"})).await;
    assert_eq!(p["type"], "ack");
    let metrics = String::from_utf8(http(s.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(
        metrics.contains(r#"wshub_disconnects_total{reason="token_expired"} 1"#),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_refresh_with_another_user_a_bad_signature_or_an_expired_token_ends_the_connection() {
    let s = server().await;
    let refused = [
        ("another user", token("bob", 600)),
        (
            "a bad signature",
            jwt(
                json!({"sub": "ann", "exp": now_secs() + 600}),
                "another-secret-that-is-32-bytes-long",
            ),
        ),
        (
            "an expired token",
            jwt(json!({"sub": "ann", "exp": now_secs() - 60}), SECRET),
        ),
    ];
    for (what, bad) in refused {
        let (mut ws, _) = client(&s, &token("ann", 600)).await;
        let e = cmd(&mut ws, json!({"id": 1, "type": "refresh", "token": bad})).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("invalid_token")),
            "{what}: {e}"
        );
        assert_eq!(
            closed(&mut ws).await,
            (4401, "token refused".to_owned()),
            "{what}"
        );
    }
    // Not a token at all: `invalid`, the connection stays.
    let (mut ws, _) = client(&s, &token("ann", 600)).await;
    let e = cmd(&mut ws, json!({"id": 1, "type": "refresh"})).await;
    assert_eq!(e["code"], "invalid");
    assert_eq!(
        cmd(&mut ws, json!({"id": 2, "type": "ping"})).await["type"],
        "ack"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_refreshed_token_that_allows_fewer_groups_leaves_the_others() {
    let s = server().await;
    let both = jwt(
        json!({"sub": "ann", "exp": now_secs() + 600, "groups": ["red", "blue"]}),
        SECRET,
    );
    let (mut ann, _) = client(&s, &both).await;
    let (mut watcher, _) = client(&s, &token("zed", 600)).await;
    for g in ["red", "blue"] {
        assert_eq!(
            cmd(&mut ann, json!({"id": g, "type": "join", "group": g})).await["type"],
            "ack"
        );
        cmd(&mut watcher, json!({"id": g, "type": "join", "group": g})).await;
    }
    let red_only = jwt(
        json!({"sub": "ann", "exp": now_secs() + 600, "groups": ["red"]}),
        SECRET,
    );
    let ack = cmd(
        &mut ann,
        json!({"id": 1, "type": "refresh", "token": red_only}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let left = next_json_where(&mut watcher, |v| v["type"] == "left").await;
    assert_eq!(
        (left["group"].as_str(), left["user"].as_str()),
        (Some("blue"), Some("ann"))
    );
    let e = cmd(&mut ann, json!({"id": 2, "type": "join", "group": "blue"})).await;
    assert_eq!(e["code"], "forbidden");
    assert_eq!(s.hub.connections(Some("blue"), Some("ann")).len(), 0);
    assert_eq!(s.hub.connections(Some("red"), Some("ann")).len(), 1);
    s.stop().await;
}

/// A node of an in-process cluster with JWT auth.
async fn node(bus: &str, id: &str) -> TestServer {
    let hub = Hub::with_auth(
        HubConfig {
            node_id: Some(id.into()),
            idle_timeout: Duration::from_secs(30),
            ..fast_config()
        },
        auth(),
    );
    local_node(hub, bus).await
}

/// The status of an upgrade with this token.
async fn upgrade_status(s: &TestServer, token: &str) -> u16 {
    upgrade_status_of(&format!("{}?access_token={token}", s.ws_url())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_user_closes_it_everywhere_and_refuses_its_older_tokens_on_every_node() {
    let a = node("revoke", "ra").await;
    let b = node("revoke", "rb").await;
    let old = jwt(
        json!({"sub": "ann", "exp": now_secs() + 600, "iat": now_secs() - 10}),
        SECRET,
    );
    let no_iat = jwt(json!({"sub": "ann", "exp": now_secs() + 600}), SECRET);
    let (mut on_a, _) = client(&a, &old).await;
    let (mut on_b, _) = client(&b, &old).await;
    let (mut bob, _) = client(&b, &token("bob", 600)).await;
    let res = http(
        a.addr,
        "DELETE",
        "/api/users/ann/connections?code=4000&reason=signed%20out&revoke=true",
        &[],
        b"",
    )
    .await;
    assert_eq!(res.status, 200);
    let revoked_before = res.json()["revokedBefore"].as_u64().unwrap();
    assert!(revoked_before.abs_diff(now_secs()) <= 1);
    assert_eq!(closed(&mut on_a).await, (4000, "signed out".to_owned()));
    assert_eq!(closed(&mut on_b).await, (4000, "signed out".to_owned()));
    assert_eq!(
        cmd(&mut bob, json!({"id": 1, "type": "ping"})).await["type"],
        "ack"
    );
    // Older tokens (and those without `iat`) are refused on both nodes, newer ones accepted.
    let newer = jwt(
        json!({"sub": "ann", "exp": now_secs() + 600, "iat": revoked_before + 1}),
        SECRET,
    );
    for s in [&a, &b] {
        let h = s.hub.clone();
        tokio::time::timeout(WAIT, async move {
            while !h.is_revoked(Some("ann"), Some(revoked_before - 1)) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(upgrade_status(s, &old).await, 401);
        assert_eq!(upgrade_status(s, &no_iat).await, 401);
        assert_eq!(upgrade_status(s, &newer).await, 101);
    }
    // A node that joins later learns the revocation from the others.
    let c = node("revoke", "rc").await;
    let h = c.hub.clone();
    tokio::time::timeout(WAIT, async move {
        while !h.is_revoked(Some("ann"), Some(revoked_before - 1)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the newcomer knows the revocation");
    assert_eq!(upgrade_status(&c, &old).await, 401);
    // A refresh to an older token is refused too.
    let (mut fresh, _) = client(&a, &newer).await;
    let e = cmd(
        &mut fresh,
        json!({"id": 1, "type": "refresh", "token": old}),
    )
    .await;
    assert_eq!(e["code"], "invalid_token");
    // A bad code is refused.
    let res = http(
        a.addr,
        "DELETE",
        "/api/users/ann/connections?code=1005",
        &[],
        b"",
    )
    .await;
    assert_eq!(res.status, 400);
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_the_backplane_cannot_keep_is_a_503_but_the_live_node_applies_it() {
    let a = node("revoke-down", "da").await;
    let (mut ann, _) = client(&a, &token("ann", 600)).await;
    wshub::backplane::local::set_down("revoke-down", true);
    let res = http(
        a.addr,
        "DELETE",
        "/api/users/ann/connections?revoke=true",
        &[],
        b"",
    )
    .await;
    wshub::backplane::local::set_down("revoke-down", false);
    assert_eq!(res.status, 503, "{}", String::from_utf8_lossy(&res.body));
    assert!(String::from_utf8_lossy(&res.body).contains("could not keep"));
    // This node applied it all the same.
    assert_eq!(closed(&mut ann).await.0, 4403);
    assert!(a.hub.is_revoked(Some("ann"), Some(now_secs() - 5)));
    a.stop().await;
}
