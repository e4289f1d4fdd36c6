//! Reconnection without loss (docs/PROTOCOL.md, "Recovery"): offsets, epochs, replay on `join` with `since`
//! and on connect with `?recover=`, the REST history, and replay racing live publishes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use wshub::history::HistoryConfig;
use wshub::HubConfig;

fn raw(v: &Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(v.to_string()).unwrap()
}

/// Joins `group` (optionally with `since`) and returns the group messages that came before the
/// ack, and the ack.
async fn join(ws: &mut Ws, group: &str, since: Option<Value>) -> (Vec<Value>, Value) {
    let mut c = json!({"id":"j","type":"join","group":group});
    if let Some(s) = since {
        c["since"] = s;
    }
    send_text(ws, &c.to_string()).await;
    let mut before = Vec::new();
    loop {
        let v = next_json(ws).await;
        match v["type"].as_str() {
            Some("ack") | Some("error") if v["id"] == "j" => return (before, v),
            Some("message") => before.push(v),
            _ => {}
        }
    }
}

fn offsets(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

async fn next_message(ws: &mut Ws) -> Value {
    next_json_where(ws, |v| {
        v["type"] == "message" || v["type"] == "server-broadcast"
    })
    .await
}

#[tokio::test]
async fn a_rejoin_with_since_replays_exactly_what_was_missed_then_goes_live() {
    let srv = TestServer::start().await;
    let (mut a, _) = connect_v1(&srv.ws_url()).await;
    let (before, ack) = join(&mut a, "room", None).await;
    assert!(before.is_empty());
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    assert_eq!(ack["offset"], 0);
    assert!(
        ack.get("recovered").is_none(),
        "no since, no recovery: {ack}"
    );
    for i in 1..=2 {
        srv.hub.publish_to_group("room", &raw(&json!(i)));
        let m = next_message(&mut a).await;
        assert_eq!(
            (m["offset"].as_u64(), m["message"].as_i64()),
            (Some(i), Some(i as i64))
        );
    }
    drop(a);
    // Published while the client was away (the group may even be empty).
    for i in 3..=5 {
        srv.hub.publish_to_group("room", &raw(&json!(i)));
    }
    let (mut b, _) = connect_v1(&srv.ws_url()).await;
    let (replayed, ack) = join(&mut b, "room", Some(json!({"epoch":epoch,"offset":2}))).await;
    assert_eq!(offsets(&replayed), [3, 4, 5]);
    assert_eq!(replayed[0]["message"], 3);
    assert_eq!(replayed[0]["group"], "room");
    assert_eq!(
        (ack["recovered"].as_bool(), ack["offset"].as_u64()),
        (Some(true), Some(5))
    );
    assert_eq!(ack["epoch"], epoch.as_str());
    srv.hub.publish_to_group("room", &raw(&json!(6)));
    assert_eq!(next_message(&mut b).await["offset"], 6);
    // Up to date: nothing to replay, and that is a full recovery.
    let (mut c, _) = connect_v1(&srv.ws_url()).await;
    let (replayed, ack) = join(&mut c, "room", Some(json!({"epoch":epoch,"offset":6}))).await;
    assert!(replayed.is_empty());
    assert_eq!(ack["recovered"], true);
    srv.stop().await;
}

#[tokio::test]
async fn an_unknown_epoch_or_a_future_offset_is_not_recovered() {
    let srv = TestServer::start().await;
    for i in 1..=3 {
        srv.hub.publish_to_group("g", &raw(&json!(i)));
    }
    let (mut a, _) = connect_v1(&srv.ws_url()).await;
    let (replayed, ack) = join(
        &mut a,
        "g",
        Some(json!({"epoch":"not-this-one","offset":1})),
    )
    .await;
    assert!(replayed.is_empty(), "offsets of another epoch mean nothing");
    assert_eq!(ack["recovered"], false);
    assert_eq!(ack["offset"], 3);
    let epoch = ack["epoch"].clone();
    let (mut b, _) = connect_v1(&srv.ws_url()).await;
    let (replayed, ack) = join(&mut b, "g", Some(json!({"epoch":epoch,"offset":99}))).await;
    assert!(replayed.is_empty());
    assert_eq!(ack["recovered"], false);
    // Either way the client is a member now and gets what follows.
    srv.hub.publish_to_group("g", &raw(&json!(4)));
    assert_eq!(next_message(&mut a).await["offset"], 4);
    assert_eq!(next_message(&mut b).await["offset"], 4);
    srv.stop().await;
}

#[tokio::test]
async fn history_trimmed_past_the_offset_replays_what_is_left_and_says_so() {
    let srv = TestServer::with_config(HubConfig {
        history: HistoryConfig {
            size: 3,
            ttl: Duration::from_secs(60),
            ..HistoryConfig::default()
        },
        ..fast_config()
    })
    .await;
    let (mut a, _) = connect_v1(&srv.ws_url()).await;
    let (_, ack) = join(&mut a, "g", None).await;
    let epoch = ack["epoch"].clone();
    drop(a);
    for i in 1..=6 {
        srv.hub.publish_to_group("g", &raw(&json!(i)));
    }
    let (mut b, _) = connect_v1(&srv.ws_url()).await;
    let (replayed, ack) = join(&mut b, "g", Some(json!({"epoch":epoch,"offset":1}))).await;
    assert_eq!(offsets(&replayed), [4, 5, 6], "2 and 3 are gone");
    assert_eq!(ack["recovered"], false);
    // Exactly at the edge, everything missed is still there.
    let (mut c, _) = connect_v1(&srv.ws_url()).await;
    let (replayed, ack) = join(&mut c, "g", Some(json!({"epoch":epoch,"offset":3}))).await;
    assert_eq!(offsets(&replayed), [4, 5, 6]);
    assert_eq!(ack["recovered"], true);
    srv.stop().await;
}

#[tokio::test(start_paused = true)]
async fn history_expires_by_age() {
    let hub = wshub::Hub::new(HubConfig {
        history: HistoryConfig {
            size: 100,
            ttl: Duration::from_secs(10),
            ..HistoryConfig::default()
        },
        ..fast_config()
    });
    hub.publish_to_group("g", &raw(&json!(1)));
    tokio::time::sleep(Duration::from_secs(6)).await;
    hub.publish_to_group("g", &raw(&json!(2)));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stream = hub.history().existing("g").unwrap();
    let kept: Vec<u64> = stream
        .lock()
        .since(None, 10)
        .iter()
        .map(|(o, _)| *o)
        .collect();
    assert_eq!(kept, [2]);
    assert_eq!(stream.lock().position().offset, 2, "offsets never go back");
}

#[tokio::test]
async fn a_malformed_since_is_an_invalid_command() {
    let srv = TestServer::start().await;
    let (mut a, _) = connect_v1(&srv.ws_url()).await;
    for since in [
        json!("e:1"),
        json!({"epoch":"e"}),
        json!({"epoch":"e","offset":-1}),
        json!({"epoch":1,"offset":1}),
    ] {
        let (_, reply) = join(&mut a, "g", Some(since.clone())).await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("invalid")),
            "{since}"
        );
    }
    // Still usable, and not a member after the failed attempts.
    let (_, ack) = join(&mut a, "g", None).await;
    assert_eq!(ack["changed"], true);
    srv.stop().await;
}

#[tokio::test]
async fn the_all_clients_stream_recovers_on_connect() {
    let srv = TestServer::start().await;
    let (mut a, welcome) = connect_v1_welcome(&srv.ws_url()).await;
    let epoch = welcome["all"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(welcome["all"]["offset"], 0);
    assert!(welcome["all"].get("recovered").is_none());
    srv.hub.broadcast_text("one");
    let m = next_message(&mut a).await;
    assert_eq!(
        (m["message"].as_str(), m["offset"].as_u64()),
        (Some("one"), Some(1))
    );
    drop(a);
    srv.hub.broadcast_text("two");
    srv.hub.broadcast_text("three");
    // A plain client gets plain mode's envelope exactly: no offset.
    let (mut plain, _) = connect(&srv.ws_url()).await;
    let url = format!("{}?recover={epoch}:1", srv.ws_url());
    let (mut b, welcome) = connect_v1_welcome(&url).await;
    assert_eq!(
        welcome["all"],
        json!({"epoch":epoch,"offset":3,"recovered":true})
    );
    let two = next_message(&mut b).await;
    let three = next_message(&mut b).await;
    assert_eq!(
        (two["message"].as_str(), two["offset"].as_u64()),
        (Some("two"), Some(2))
    );
    assert_eq!(three["offset"], 3);
    srv.hub.broadcast_text("four");
    assert_eq!(next_message(&mut b).await["offset"], 4);
    let p = next_json_where(&mut plain, |v| v["type"] == "server-broadcast").await;
    assert_eq!(p["message"], "four");
    assert!(
        p.get("offset").is_none(),
        "plain clients get plain mode's envelope exactly: {p}"
    );
    // Another epoch: nothing replayed, and the client is told.
    let url = format!("{}?recover=other:1", srv.ws_url());
    let (_, welcome) = connect_v1_welcome(&url).await;
    assert_eq!(welcome["all"]["recovered"], false);
    srv.stop().await;
}

#[tokio::test]
async fn a_malformed_recover_parameter_is_refused_before_the_upgrade() {
    let srv = TestServer::start().await;
    for bad in ["x", "e:", ":3", "e:-1", "e:1.5"] {
        let res = http(
            srv.addr,
            "GET",
            &format!("/ws?recover={bad}"),
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            b"",
        )
        .await;
        assert_eq!(res.status, 400, "{bad}");
        assert!(res.json()["detail"].as_str().unwrap().contains("recover"));
    }
    assert_eq!(srv.hub.connection_count(), 0);
    srv.stop().await;
}

#[tokio::test]
async fn rest_history_pages_through_a_group() {
    let srv = TestServer::start().await;
    let missing = http(srv.addr, "GET", "/api/groups/nobody/history", &[], b"").await;
    assert_eq!(missing.status, 404);
    for i in 1..=5 {
        let r = post_json(
            srv.addr,
            "/api/groups/g/broadcast",
            &json!({"message":{"n":i}}).to_string(),
        )
        .await;
        assert_eq!(r.json(), json!({"recipients":0,"offset":i}));
    }
    let page = http(
        srv.addr,
        "GET",
        "/api/groups/g/history?since=1&limit=2",
        &[],
        b"",
    )
    .await;
    assert_eq!(page.status, 200);
    let v = page.json();
    assert_eq!(
        (v["offset"].as_u64(), v["first"].as_u64()),
        (Some(5), Some(1))
    );
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(offsets(msgs), [2, 3]);
    assert_eq!(msgs[0]["message"], json!({"n":2}));
    assert_eq!(msgs[0]["group"], "g");
    let epoch = v["epoch"].as_str().unwrap();
    let ok = http(
        srv.addr,
        "GET",
        &format!("/api/groups/g/history?epoch={epoch}&since=3"),
        &[],
        b"",
    )
    .await;
    assert_eq!(offsets(ok.json()["messages"].as_array().unwrap()), [4, 5]);
    for (q, status) in [
        ("epoch=old", 409),
        ("since=6", 400),
        ("limit=0", 400),
        ("limit=1001", 400),
        ("since=x", 400),
    ] {
        let r = http(
            srv.addr,
            "GET",
            &format!("/api/groups/g/history?{q}"),
            &[],
            b"",
        )
        .await;
        assert_eq!(r.status, status, "{q}");
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{q}"
        );
    }
    let bad = http(srv.addr, "GET", "/api/groups/a%20b/history", &[], b"").await;
    assert_eq!(bad.status, 400);
    // The all-clients stream.
    srv.hub.broadcast_text("hello");
    let all = http(srv.addr, "GET", "/api/history", &[], b"").await.json();
    assert_eq!(all["messages"][0]["message"], "hello");
    assert_eq!(all["messages"][0]["offset"], 1);
    srv.stop().await;
}

/// Many reconnects, each recovering, while a publisher hammers the group: across all of them
/// the client must see every offset exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_racing_live_publishes_has_no_gap_and_no_duplicate() {
    const N: u64 = 4000;
    let srv = TestServer::with_config(HubConfig {
        history: HistoryConfig {
            size: N as usize,
            ttl: Duration::from_secs(600),
            ..HistoryConfig::default()
        },
        send_queue: 2 * N as usize,
        ..fast_config()
    })
    .await;
    let (mut first, _) = connect_v1(&srv.ws_url()).await;
    let (_, ack) = join(&mut first, "race", None).await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    drop(first);
    let hub = srv.hub.clone();
    // The publisher stays at most a few hundred offsets ahead of the reader, so the reader's
    // reconnects land in the middle of the stream however fast either side runs.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen_so_far = progress.clone();
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            while i > seen_so_far.load(std::sync::atomic::Ordering::Acquire) + 600 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            hub.publish_to_group("race", &raw(&json!(i)));
            if i % 16 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut last = 0u64;
    let mut reconnects = 0;
    while last < N {
        let (mut ws, _) = connect_v1(&srv.ws_url()).await;
        reconnects += 1;
        let (replayed, ack) =
            join(&mut ws, "race", Some(json!({"epoch":epoch,"offset":last}))).await;
        assert_eq!(ack["recovered"], true, "history holds everything: {ack}");
        let mut seen = offsets(&replayed);
        // Read a bounded, varying number of live messages, then drop the connection.
        let take = 50 + (reconnects * 37) % 200;
        while seen.len() < take && last + (seen.len() as u64) < N {
            let m = next_message(&mut ws).await;
            seen.push(m["offset"].as_u64().unwrap());
        }
        for o in seen {
            assert_eq!(o, last + 1, "gap or duplicate after offset {last}");
            last = o;
        }
        progress.store(last, std::sync::atomic::Ordering::Release);
    }
    publisher.await.unwrap();
    assert!(
        reconnects > 3,
        "the test should have reconnected mid-stream ({reconnects})"
    );
    srv.stop().await;
}
