//! Idempotent publishing (`idempotencyKey`): a repeat within the window, over REST or
//! `wshub.v1`, is answered with the first publication's offset and delivered to no one; keys
//! are per group; after the window a key is new again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use wshub::HubConfig;

#[tokio::test]
async fn repeats_are_answered_with_the_first_offset_and_delivered_to_no_one() {
    let srv = TestServer::with_config(HubConfig {
        idempotency_window: Duration::from_millis(500),
        ..fast_config()
    })
    .await;
    let (mut member, _) = connect_v1(&srv.ws_url()).await;
    let (mut watcher, _) = connect_v1(&srv.ws_url()).await;
    for ws in [&mut member, &mut watcher] {
        assert_eq!(
            cmd(ws, json!({"id": 1, "type": "join", "group": "orders"})).await["type"],
            "ack"
        );
    }
    let publish = |body: serde_json::Value| {
        let addr = srv.addr;
        async move { post_json(addr, "/api/groups/orders/broadcast", &body.to_string()).await }
    };
    let first = publish(json!({"message": "A", "idempotencyKey": "order-42"})).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json(), json!({"recipients": 2, "offset": 1}));
    // The retry (the backend timed out and sent it again): the first one's offset, to no one.
    let again = publish(json!({"message": "A", "idempotencyKey": "order-42"})).await;
    assert_eq!(
        again.json(),
        json!({"recipients": 0, "offset": 1, "duplicate": true})
    );
    // A wshub.v1 publish with the same key in the same group is a repeat too.
    let ack = cmd(
        &mut member,
        json!({"id": 2, "type": "publish", "group": "orders", "message": "A", "idempotencyKey": "order-42"}),
    )
    .await;
    assert_eq!(
        (ack["duplicate"].as_bool(), ack["offset"].as_u64()),
        (Some(true), Some(1))
    );
    // Another key is another publication.
    let other = publish(json!({"message": "B", "idempotencyKey": "order-43"})).await;
    assert_eq!(other.json()["offset"], 2);
    // The watcher got A once, then B.
    let a = next_json_where(&mut watcher, |v| v["type"] == "message").await;
    let b = next_json_where(&mut watcher, |v| v["type"] == "message").await;
    assert_eq!(
        (a["offset"].as_u64(), a["message"].as_str()),
        (Some(1), Some("A"))
    );
    assert_eq!(
        (b["offset"].as_u64(), b["message"].as_str()),
        (Some(2), Some("B"))
    );
    // Keys are per group.
    let elsewhere = post_json(
        srv.addr,
        "/api/groups/billing/broadcast",
        &json!({"message": "A", "idempotencyKey": "order-42"}).to_string(),
    )
    .await;
    assert_eq!(elsewhere.json()["offset"], 1);
    assert!(elsewhere.json().get("duplicate").is_none());
    // After the window the key is new again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = publish(json!({"message": "A", "idempotencyKey": "order-42"})).await;
    assert_eq!(later.json(), json!({"recipients": 2, "offset": 3}));
    srv.stop().await;
}
