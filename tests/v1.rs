//! The `wshub.v1` subprotocol end to end: negotiation, groups, direct messages, errors, and the
//! REST endpoints for groups, users and single connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Asserts that nothing but the ack of a ping arrives: proves no stray delivery came first.
async fn assert_quiet(ws: &mut Ws) {
    send_text(ws, r#"{"id":"quiet","type":"ping"}"#).await;
    let v = next_json(ws).await;
    assert_eq!(
        v,
        json!({"type":"ack","id":"quiet"}),
        "unexpected frame before the ping's ack"
    );
}

#[tokio::test]
async fn negotiation_welcome_and_plain_compatibility() {
    let srv = TestServer::start().await;
    let (mut plain, _) = connect(&srv.ws_url()).await;
    let (mut v1, id) = connect_v1(&srv.ws_url()).await;
    // Plain clients still see every join (plain mode); v1 clients get no global announcements.
    let joined = next_json(&mut plain).await;
    assert_eq!(joined["message"], format!("Client {} joined.", &id[..8]));
    let _ = connect(&srv.ws_url()).await;
    assert_quiet(&mut v1).await;
    // A server broadcast reaches both kinds.
    srv.hub.broadcast_text("to all");
    assert_eq!(next_json(&mut v1).await["type"], "server-broadcast");
    let listed = http(srv.addr, "GET", &format!("/api/connections/{id}"), &[], b"")
        .await
        .json();
    assert_eq!(listed["protocol"], "wshub.v1");
    srv.stop().await;
}

#[tokio::test]
async fn group_messages_reach_members_only() {
    let srv = TestServer::start().await;
    let url = srv.ws_url();
    let (mut a, a_id) = connect_v1(&url).await;
    let (mut b, _) = connect_v1(&url).await;
    let (mut c, _) = connect_v1(&url).await;
    let ack = cmd(&mut a, json!({"id":1,"type":"join","group":"room"})).await;
    let epoch = ack["epoch"]
        .as_str()
        .expect("a join tells the group stream's epoch");
    assert_eq!(
        ack,
        json!({"type":"ack","id":1,"members":1,"changed":true,"epoch":epoch,"offset":0})
    );
    assert_eq!(
        cmd(&mut b, json!({"id":"b1","type":"join","group":"room"})).await["members"],
        2
    );
    assert_eq!(
        cmd(&mut c, json!({"id":1,"type":"join","group":"other"})).await["type"],
        "ack"
    );
    // A hears that B joined.
    let ev = next_json(&mut a).await;
    assert_eq!(
        (ev["type"].as_str(), ev["group"].as_str()),
        (Some("joined"), Some("room"))
    );

    send_text(
        &mut a,
        &json!({"id":2,"type":"publish","group":"room","message":{"text":"hi","n":[1,2]}})
            .to_string(),
    )
    .await;
    // The publisher is a member: its copy comes first, then the ack.
    let own = next_json(&mut a).await;
    assert_eq!(own["type"], "message");
    let ack = next_json(&mut a).await;
    assert_eq!(ack, json!({"type":"ack","id":2,"recipients":2,"offset":1}));
    assert_eq!(own["message"], json!({"text":"hi","n":[1,2]}));
    assert_eq!(own["offset"], 1);
    for ws in [&mut b] {
        let m = next_json_where(ws, |v| v["type"] == "message").await;
        assert_eq!(m["group"], "room");
        assert_eq!(m["from"], &a_id[..8]);
        assert_eq!(m["message"], json!({"text":"hi","n":[1,2]}));
        assert_timestamp(&m);
    }
    assert_quiet(&mut c).await;

    // Leaving: the others hear it, and the leaver gets nothing more.
    assert_eq!(
        cmd(&mut b, json!({"id":3,"type":"leave","group":"room"})).await["changed"],
        true
    );
    let ev = next_json(&mut a).await;
    assert_eq!(ev["type"], "left");
    cmd(
        &mut a,
        json!({"id":4,"type":"publish","group":"room","message":"after"}),
    )
    .await;
    assert_quiet(&mut b).await;
    srv.stop().await;
}

#[tokio::test]
async fn disconnect_tells_the_groups_and_empty_groups_disappear() {
    let srv = TestServer::start().await;
    let url = srv.ws_url();
    let (mut a, _) = connect_v1(&url).await;
    let (mut b, b_id) = connect_v1(&url).await;
    cmd(&mut a, json!({"id":1,"type":"join","group":"g"})).await;
    cmd(&mut b, json!({"id":1,"type":"join","group":"g"})).await;
    cmd(&mut b, json!({"id":2,"type":"join","group":"solo"})).await;
    next_json(&mut a).await; // b joined
    b.close(None).await.unwrap();
    let ev = next_json(&mut a).await;
    assert_eq!(
        ev,
        json!({"type":"left","group":"g","connection":&b_id[..8],"timestamp":ev["timestamp"]})
    );
    srv.wait_count(1).await;
    let groups = http(srv.addr, "GET", "/api/groups", &[], b"").await.json();
    assert_eq!(
        groups,
        json!({"count":1,"groups":[{"name":"g","members":1}]})
    );
    assert_eq!(
        http(srv.addr, "GET", "/api/groups/solo", &[], b"")
            .await
            .status,
        404
    );
    srv.stop().await;
}

#[tokio::test]
async fn direct_send_to_a_connection() {
    let srv = TestServer::start().await;
    let url = srv.ws_url();
    let (mut a, a_id) = connect_v1(&url).await;
    let (mut b, b_id) = connect_v1(&url).await;
    let ack = cmd(
        &mut a,
        json!({"id":1,"type":"send","connection":b_id,"message":"psst"}),
    )
    .await;
    assert_eq!(ack["recipients"], 1);
    let m = next_json(&mut b).await;
    assert_eq!(m["type"], "direct");
    assert_eq!(m["from"], &a_id[..8]);
    assert_eq!(m["message"], "psst");
    let err = cmd(
        &mut a,
        json!({"id":2,"type":"send","connection":"0".repeat(32),"message":1}),
    )
    .await;
    assert_eq!(err["code"], "not_found");
    let err = cmd(
        &mut a,
        json!({"id":3,"type":"send","user":"nobody","message":1}),
    )
    .await;
    assert_eq!(err["code"], "not_found");
    srv.stop().await;
}

#[tokio::test]
async fn bad_commands_get_specific_errors_and_the_connection_stays_usable() {
    let srv = TestServer::start().await;
    let (mut ws, _) = connect_v1(&srv.ws_url()).await;
    let cases = [
        ("not json at all", Value::Null, "malformed"),
        (r#"{"type":"ping"}"#, Value::Null, "invalid"),
        (r#"{"id":1,"type":"dance"}"#, json!(1), "unknown_command"),
        (r#"{"id":2,"type":"join"}"#, json!(2), "invalid"),
        (
            r#"{"id":3,"type":"join","group":"has space"}"#,
            json!(3),
            "invalid_group",
        ),
        (
            r#"{"id":4,"type":"publish","group":"nope","message":1}"#,
            json!(4),
            "not_member",
        ),
        (
            r#"{"id":5,"type":"publish","group":"nope"}"#,
            json!(5),
            "invalid",
        ),
        (r#"{"id":6,"type":"send","message":1}"#, json!(6), "invalid"),
    ];
    for (text, id, code) in cases {
        send_text(&mut ws, text).await;
        let v = next_json(&mut ws).await;
        assert_eq!(v["type"], "error", "{text}");
        assert_eq!(v["id"], id, "{text}");
        assert_eq!(v["code"], code, "{text}: {v}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    let long = format!(r#"{{"id":7,"type":"join","group":"{}"}}"#, "g".repeat(129));
    send_text(&mut ws, &long).await;
    assert_eq!(next_json(&mut ws).await["code"], "invalid_group");
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "binary_unsupported");
    // Still usable.
    assert_eq!(
        cmd(&mut ws, json!({"id":"ok","type":"ping"})).await,
        json!({"type":"ack","id":"ok"})
    );
    srv.stop().await;
}

#[tokio::test]
async fn group_limit_per_connection() {
    let config = wshub::HubConfig {
        max_groups_per_connection: 2,
        shutdown_timeout: Duration::from_secs(1),
        ..wshub::HubConfig::default()
    };
    let srv = TestServer::with_config(config).await;
    let (mut ws, _) = connect_v1(&srv.ws_url()).await;
    cmd(&mut ws, json!({"id":1,"type":"join","group":"a"})).await;
    cmd(&mut ws, json!({"id":2,"type":"join","group":"b"})).await;
    assert_eq!(
        cmd(&mut ws, json!({"id":3,"type":"join","group":"a"})).await["changed"],
        false
    );
    assert_eq!(
        cmd(&mut ws, json!({"id":4,"type":"join","group":"c"})).await["code"],
        "too_many_groups"
    );
    srv.stop().await;
}

#[tokio::test]
async fn rest_manages_groups_and_reaches_connections() {
    let srv = TestServer::start().await;
    let url = srv.ws_url();
    let (mut a, a_id) = connect_v1(&url).await;
    let (mut plain, _) = connect(&url).await;
    let plain_id = srv
        .hub
        .connections(None, None)
        .iter()
        .map(|c| c.id.to_string())
        .find(|i| *i != a_id)
        .unwrap();

    // PUT a member (twice: idempotent), then the group shows both.
    let r = http(
        srv.addr,
        "PUT",
        &format!("/api/groups/team/members/{a_id}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["changed"], true);
    let r = http(
        srv.addr,
        "PUT",
        &format!("/api/groups/team/members/{plain_id}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.json()["members"], 2);
    assert_eq!(
        http(
            srv.addr,
            "PUT",
            &format!("/api/groups/team/members/{plain_id}"),
            &[],
            b""
        )
        .await
        .json()["changed"],
        false
    );
    next_json_where(&mut a, |v| v["type"] == "joined").await;
    let g = http(srv.addr, "GET", "/api/groups/team", &[], b"")
        .await
        .json();
    assert_eq!(g["members"], 2);
    let filtered = http(srv.addr, "GET", "/api/connections?group=team", &[], b"")
        .await
        .json();
    assert_eq!(filtered["count"], 2);
    assert_eq!(
        http(srv.addr, "GET", "/api/connections?group=none", &[], b"")
            .await
            .json()["count"],
        0
    );

    // Group broadcast reaches both, with the group named and no sender.
    let r = post_json(
        srv.addr,
        "/api/groups/team/broadcast",
        r#"{"message":{"k":"v"}}"#,
    )
    .await;
    assert_eq!(r.json()["recipients"], 2);
    for ws in [&mut a, &mut plain] {
        let m = next_json_where(ws, |v| v["type"] == "message" && v["group"] == "team").await;
        assert_eq!(m["message"], json!({"k":"v"}));
        assert!(m.get("from").is_none());
    }
    assert_eq!(
        post_json(
            srv.addr,
            "/api/groups/empty/broadcast",
            r#"{"message":"x"}"#
        )
        .await
        .json()["recipients"],
        0
    );

    // Direct send to one connection.
    let r = post_json(
        srv.addr,
        &format!("/api/connections/{a_id}/send"),
        r#"{"message":"just you"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let m = next_json_where(&mut a, |v| v["type"] == "direct").await;
    assert_eq!(m["message"], "just you");

    // DELETE membership, then 404 the second time.
    let path = format!("/api/groups/team/members/{plain_id}");
    assert_eq!(http(srv.addr, "DELETE", &path, &[], b"").await.status, 204);
    assert_eq!(http(srv.addr, "DELETE", &path, &[], b"").await.status, 404);

    // Disconnect with an application close code.
    let r = http(
        srv.addr,
        "DELETE",
        &format!("/api/connections/{a_id}?code=4001&reason=kicked"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(next_close(&mut a).await, Some(4001));
    srv.stop().await;
}

#[tokio::test]
async fn rest_errors_are_specific() {
    let srv = TestServer::start().await;
    let addr = srv.addr;
    let unknown = "0".repeat(32);
    let cases: Vec<(&str, String, &[u8], u16)> = vec![
        ("GET", "/api/connections/nothex".into(), b"", 400),
        ("GET", format!("/api/connections/{unknown}"), b"", 404),
        ("DELETE", format!("/api/connections/{unknown}"), b"", 404),
        (
            "DELETE",
            format!("/api/connections/{unknown}?code=1006"),
            b"",
            400,
        ),
        (
            "DELETE",
            format!("/api/connections/{unknown}?code=abc"),
            b"",
            400,
        ),
        ("GET", "/api/groups/bad%20name".into(), b"", 400),
        ("GET", format!("/api/groups/{}", "g".repeat(129)), b"", 400),
        ("GET", "/api/groups/missing".into(), b"", 404),
        ("PUT", format!("/api/groups/g/members/{unknown}"), b"", 404),
        ("PUT", "/api/groups/g/members/xyz".into(), b"", 400),
        (
            "POST",
            format!("/api/connections/{unknown}/send"),
            br#"{"message":"x"}"#,
            404,
        ),
        (
            "POST",
            "/api/groups/g/broadcast".into(),
            br#"{"message":null}"#,
            400,
        ),
        ("POST", "/api/groups/g/broadcast".into(), br#"{}"#, 400),
        ("POST", "/api/users/bob/send".into(), br#"{"message":"#, 400),
    ];
    for (method, path, body, status) in cases {
        let r = http(
            addr,
            method,
            &path,
            &[("Content-Type", "application/json")],
            body,
        )
        .await;
        assert_eq!(
            r.status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{method} {path}"
        );
    }
    assert_eq!(
        post_json(addr, "/api/users/bob/send", r#"{"message":"offline"}"#)
            .await
            .json()["recipients"],
        0
    );
    srv.stop().await;
}
