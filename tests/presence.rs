//! Presence for `wshub.v1` groups over real sockets: who is in a group (`presence`, paged),
//! how many (`presence_stats`, a user's tabs counted once), the REST view, `joined` events with
//! the user's info, the same members as a Pusher presence channel sees, silent groups, and a
//! client that drops its TCP connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use wshub::{Hub, HubConfig};

const SECRET: &str = "presence-test-secret-of-32-bytes!!";

fn token(sub: &str, info: Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        // A presence channel is joined with a token that names it.
        &json!({"sub": sub, "exp": exp, "info": info, "groups": ["room", "big-*", "presence-room"]}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn server() -> TestServer {
    let auth = wshub::auth::Auth::new(&wshub::auth::AuthSettings {
        jwt_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap();
    let hub = Hub::with_auth(
        HubConfig {
            idle_timeout: Duration::from_secs(30),
            silent_groups: vec!["big-*".into()],
            apps: wshub::apps::Apps::new(vec![wshub::apps::App::new("1", "key", "secret")]),
            ..fast_config()
        },
        auth,
    );
    TestServer::with_hub(hub, wshub::server::ServerOptions::default()).await
}

async fn client(s: &TestServer, user: &str) -> Ws {
    let t = token(user, json!({"name": user.to_uppercase()}));
    connect_v1(&format!("{}?access_token={t}", s.ws_url()))
        .await
        .0
}

fn users(ack: &Value) -> Vec<String> {
    ack["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn presence_pages_counts_and_events_with_info() {
    let s = server().await;
    let mut ann1 = client(&s, "ann").await;
    let mut ann2 = client(&s, "ann").await;
    let mut bob = client(&s, "bob").await;
    cmd(&mut bob, json!({"id": 1, "type": "join", "group": "room"})).await;
    cmd(&mut ann1, json!({"id": 1, "type": "join", "group": "room"})).await;
    let joined = next_json_where(&mut bob, |v| v["type"] == "joined").await;
    assert_eq!(
        (joined["user"].as_str(), joined["info"].clone()),
        (Some("ann"), json!({"name": "ANN"}))
    );
    cmd(&mut ann2, json!({"id": 1, "type": "join", "group": "room"})).await;
    let stats = cmd(
        &mut bob,
        json!({"id": 2, "type": "presence_stats", "group": "room"}),
    )
    .await;
    assert_eq!(
        (stats["connections"].as_u64(), stats["users"].as_u64()),
        (Some(3), Some(2)),
        "{stats}"
    );
    // Pages of two, by connection id, with the user's info.
    let p1 = cmd(
        &mut bob,
        json!({"id": 3, "type": "presence", "group": "room", "limit": 2}),
    )
    .await;
    assert_eq!(p1["members"].as_array().unwrap().len(), 2, "{p1}");
    let cursor = p1["cursor"].as_str().unwrap().to_owned();
    let p2 = cmd(
        &mut bob,
        json!({"id": 4, "type": "presence", "group": "room", "limit": 2, "cursor": cursor}),
    )
    .await;
    assert_eq!(p2["members"].as_array().unwrap().len(), 1, "{p2}");
    assert!(p2.get("cursor").is_none());
    let mut all = users(&p1);
    all.extend(users(&p2));
    all.sort();
    assert_eq!(all, ["ann", "ann", "bob"]);
    let ids: Vec<&str> = p1["members"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["members"].as_array().unwrap())
        .map(|m| m["connection"].as_str().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(p1["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["info"]["name"].is_string()));
    // The REST view says the same.
    let res = http(s.addr, "GET", "/api/groups/room/presence", &[], b"").await;
    let v = res.json();
    assert_eq!(
        (v["connections"].as_u64(), v["users"].as_u64()),
        (Some(3), Some(2)),
        "{v}"
    );
    assert_eq!(v["members"].as_array().unwrap().len(), 3);
    // A tab that crashes (TCP dropped, no Close): one connection less, still two users.
    drop(ann2);
    let h = s.hub.clone();
    tokio::time::timeout(WAIT, async move {
        while h.presence_stats("room").connections != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(s.hub.presence_stats("room").users, 2);
    // The last tab leaves: ann is gone.
    cmd(
        &mut ann1,
        json!({"id": 5, "type": "leave", "group": "room"}),
    )
    .await;
    let left = next_json_where(&mut bob, |v| v["type"] == "left" && v["user"] == "ann").await;
    assert_eq!(left["group"], "room");
    let p = cmd(
        &mut bob,
        json!({"id": 6, "type": "presence", "group": "room"}),
    )
    .await;
    assert_eq!(users(&p), ["bob"]);
    s.stop().await;
}

#[tokio::test]
async fn silent_groups_send_no_membership_events_but_answer_presence() {
    let s = server().await;
    let mut a = client(&s, "ann").await;
    let mut b = client(&s, "bob").await;
    cmd(&mut a, json!({"id": 1, "type": "join", "group": "big-1"})).await;
    cmd(&mut b, json!({"id": 1, "type": "join", "group": "big-1"})).await;
    // The next frame ann gets is her ping's ack: no `joined` before it.
    let v = cmd(&mut a, json!({"id": 2, "type": "ping"})).await;
    assert_eq!(v["type"], "ack");
    send_text(&mut a, &json!({"id": 3, "type": "ping"}).to_string()).await;
    let next = next_json(&mut a).await;
    assert_eq!(
        (next["type"].as_str(), next["id"].as_u64()),
        (Some("ack"), Some(3)),
        "{next}"
    );
    let stats = cmd(
        &mut a,
        json!({"id": 4, "type": "presence_stats", "group": "big-1"}),
    )
    .await;
    assert_eq!(stats["users"], 2);
    s.stop().await;
}

#[tokio::test]
async fn a_pusher_presence_channel_and_wshub_v1_see_the_same_members() {
    let s = server().await;
    let mut ann = client(&s, "ann").await;
    cmd(
        &mut ann,
        json!({"id": 1, "type": "join", "group": "presence-room"}),
    )
    .await;
    // A Pusher client subscribes to the same channel: ann is a member it sees.
    let url = format!("ws://{}/app/key?protocol=7", s.addr);
    let (mut p, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let v = next_json(&mut p).await;
    let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
    let socket = data["socket_id"].as_str().unwrap().to_owned();
    let cd = json!({"user_id": "zed", "user_info": {"name": "ZED"}}).to_string();
    let msg = wshub::signing::channel_message(&socket, "presence-room", Some(&cd));
    let auth = format!("key:{}", wshub::signing::sign("secret", msg.as_bytes()));
    let sub = json!({"event": "pusher:subscribe", "data": {"channel": "presence-room", "auth": auth, "channel_data": cd}});
    send_text(&mut p, &sub.to_string()).await;
    let ok = next_json_where(&mut p, |v| {
        v["event"] == "pusher_internal:subscription_succeeded"
    })
    .await;
    let presence: Value = serde_json::from_str(ok["data"].as_str().unwrap()).unwrap();
    let mut ids: Vec<&str> = presence["presence"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["ann", "zed"]);
    assert_eq!(presence["presence"]["hash"]["ann"], json!({"name": "ANN"}));
    // A wshub.v1 user joining is a Pusher member_added; the Pusher user is in `presence`.
    let mut bob = client(&s, "bob").await;
    cmd(
        &mut bob,
        json!({"id": 1, "type": "join", "group": "presence-room"}),
    )
    .await;
    let added = next_json_where(&mut p, |v| v["event"] == "pusher_internal:member_added").await;
    let d: Value = serde_json::from_str(added["data"].as_str().unwrap()).unwrap();
    assert_eq!(d["user_id"], "bob");
    let page = cmd(
        &mut ann,
        json!({"id": 2, "type": "presence", "group": "presence-room"}),
    )
    .await;
    let mut seen = users(&page);
    seen.sort();
    assert_eq!(seen, ["ann", "bob", "zed"]);
    s.stop().await;
}
