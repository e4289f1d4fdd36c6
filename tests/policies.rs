//! Delivery policies side by side (`--delivery-policy`): in one hub, a client that stops
//! reading a `drop-oldest` group stays and is told what it lost, one that stops reading a
//! `keep-latest` group stays and gets only the newest per key, one that stops reading a
//! `disconnect` group is closed with 1008, and a fast client next to them gets every message
//! of every group, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wshub::history::HistoryConfig;
use wshub::manager::policy::Rule;
use wshub::HubConfig;

const N: u64 = 600;
const SIZE: usize = 16 * 1024;

/// A `wshub.v1` client on a raw socket that joins `group`, then reads nothing until asked;
/// with the join's ack.
async fn stalled_member(addr: std::net::SocketAddr, group: &str) -> (RawClient, Value) {
    let (mut c, head) =
        RawClient::connect_with(addr, "/ws", "Sec-WebSocket-Protocol: wshub.v1\r\n").await;
    assert!(head.contains("wshub.v1"), "{head}");
    c.send(
        0x1,
        json!({"id": "j", "type": "join", "group": group})
            .to_string()
            .as_bytes(),
    )
    .await;
    loop {
        let (_, p) = c.read_frame().await.expect("joined");
        let v: Value = serde_json::from_slice(&p).unwrap();
        if v["id"] == "j" {
            assert_eq!(v["type"], "ack", "{v}");
            return (c, v);
        }
    }
}

/// Reads frames until the reply to the command `id` (included).
async fn read_until(c: &mut RawClient, id: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let (first, p) = c.read_frame_whole().await.expect("connected");
        if first & 0x0F == 0x1 {
            let v: Value = serde_json::from_slice(&p).unwrap();
            let done = v["id"] == id;
            got.push(v);
            if done {
                return got;
            }
        }
    }
}

/// Reads every data frame until none comes for a while (or the connection ends).
async fn read_all(c: &mut RawClient) -> (Vec<Value>, Option<u16>) {
    let mut got = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(2), c.read_frame_whole()).await;
        match next {
            Ok(Some((first, p))) if first & 0x0F == 0x1 => {
                got.push(serde_json::from_slice(&p).unwrap())
            }
            Ok(Some((first, p))) if first & 0x0F == 0x8 => {
                let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                return (got, code);
            }
            Ok(Some(_)) => {}
            Ok(None) => return (got, None),
            Err(_) => return (got, None),
        }
    }
}

fn payload(seq: u64) -> Box<serde_json::value::RawValue> {
    let text = format!("{seq}:{}", "x".repeat(SIZE));
    serde_json::value::RawValue::from_string(serde_json::to_string(&text).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_get_their_groups_policy_and_fast_ones_everything() {
    let srv = TestServer::with_config(HubConfig {
        delivery_policies: vec![
            Rule::parse("feed:*=drop-oldest").unwrap(),
            Rule::parse("tick:*=keep-latest").unwrap(),
        ],
        announce: false,
        idle_timeout: Duration::from_secs(3600),
        history: HistoryConfig {
            size: 2000,
            max_bytes: 256 << 20,
            ..HistoryConfig::default()
        },
        ..HubConfig::default()
    })
    .await;
    // The fast client, in every group, reading all the time.
    let (mut fast, _) = connect_v1(&srv.ws_url()).await;
    for g in ["feed:a", "tick:a", "room"] {
        let ack = cmd(&mut fast, json!({"id": g, "type": "join", "group": g})).await;
        assert_eq!(ack["type"], "ack");
    }
    let reader = tokio::spawn(async move {
        let mut seen: std::collections::HashMap<String, Vec<u64>> = Default::default();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), fast.next()).await
        {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "message" {
                    seen.entry(v["group"].as_str().unwrap().to_owned())
                        .or_default()
                        .push(v["offset"].as_u64().unwrap());
                }
                if seen.values().map(Vec::len).sum::<usize>() == 3 * N as usize {
                    break;
                }
            }
        }
        (seen, fast)
    });
    let (mut dropper, joined) = stalled_member(srv.addr, "feed:a").await;
    let (mut keeper, _) = stalled_member(srv.addr, "tick:a").await;
    let (mut stalled, _) = stalled_member(srv.addr, "room").await;
    srv.wait_count(4).await;

    for seq in 0..N {
        let m = payload(seq);
        let none = wshub::hub::PublishOptions::default();
        let keyed = wshub::hub::PublishOptions {
            key: Some(format!("k{}", seq % 4)),
            ..Default::default()
        };
        for (group, opts) in [("feed:a", &none), ("tick:a", &keyed), ("room", &none)] {
            srv.hub
                .publish_to(
                    wshub::hub::Target::Group(group),
                    wshub::hub::Message::Json(&m),
                    opts,
                )
                .await
                .unwrap();
        }
        if seq % 8 == 0 {
            // The fast reader keeps up (it shares the runtime).
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    // The fast client got everything, in order.
    let (seen, _fast) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the fast client read everything")
        .unwrap();
    for g in ["feed:a", "tick:a", "room"] {
        assert_eq!(seen[g], (1..=N).collect::<Vec<_>>(), "{g}");
    }
    // The disconnect group's slow reader was closed; the two others stayed.
    srv.wait_count(3).await;
    let (_, code) = read_all(&mut stalled).await;
    // Its Close follows what was already on the wire, unless the close deadline passed first.
    assert!(matches!(code, None | Some(1008)), "{code:?}");
    assert_eq!(
        metric(srv.addr, "wshub_slow_consumer_closes_total").await,
        1.0
    );

    // drop-oldest: every offset arrives once, or is named by a gap; in order; then the gaps
    // are recovered from history with a join from just before them.
    let (got, code) = read_all(&mut dropper).await;
    assert_eq!(code, None, "still connected");
    let mut covered = BTreeSet::new();
    let mut last = 0;
    let mut gaps = Vec::new();
    for v in &got {
        match v["type"].as_str() {
            Some("message") => {
                let o = v["offset"].as_u64().unwrap();
                assert!(o > last, "in order: {o} after {last}");
                assert!(covered.insert(o), "once: {o}");
                last = o;
            }
            Some("gap") => {
                assert_eq!(v["group"], "feed:a");
                let (from, to) = (v["from"].as_u64().unwrap(), v["to"].as_u64().unwrap());
                assert!(
                    from > last && from <= to,
                    "a gap after what came before: {v}"
                );
                for o in from..=to {
                    assert!(covered.insert(o), "once: {o}");
                }
                last = to;
                gaps.push((from, to));
            }
            _ => {}
        }
    }
    assert_eq!(covered, (1..=N).collect::<BTreeSet<_>>());
    assert!(!gaps.is_empty(), "the slow reader lost something");
    let dropped = metric(
        srv.addr,
        r#"wshub_delivery_policy_messages_total{policy="drop-oldest",pattern="feed:*",outcome="dropped"}"#,
    )
    .await;
    let lost: u64 = gaps.iter().map(|(a, b)| b - a + 1).sum();
    assert_eq!(dropped as u64, lost);
    // Recovered from history with joins from just before the first gap: the oldest first, as
    // much as fits in the connection's budget each time, until the ack says it is complete.
    let (from, _) = gaps[0];
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    let mut pos = from - 1;
    let mut back = Vec::new();
    for round in 0..100 {
        let id = format!("r{round}");
        dropper
            .send(
                0x1,
                json!({"id": id, "type": "join", "group": "feed:a",
                       "since": {"epoch": epoch, "offset": pos}})
                .to_string()
                .as_bytes(),
            )
            .await;
        let replay = read_until(&mut dropper, &id).await;
        let ack = replay.last().unwrap();
        assert_eq!(ack["changed"], false, "{ack}");
        let offsets: Vec<u64> = replay
            .iter()
            .filter(|v| v["type"] == "message")
            .map(|v| v["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(
            offsets.first(),
            Some(&(pos + 1)),
            "round {round} starts where it stopped"
        );
        pos = *offsets.last().unwrap();
        back.extend(offsets);
        if ack["recovered"] == true {
            break;
        }
    }
    assert_eq!(back, (from..=N).collect::<Vec<_>>());

    // keep-latest: fewer messages, in order, never two of a key queued, the newest of each
    // key last; no gap.
    let (got, code) = read_all(&mut keeper).await;
    assert_eq!(code, None, "still connected");
    let offsets: Vec<u64> = got
        .iter()
        .filter(|v| v["type"] == "message")
        .map(|v| v["offset"].as_u64().unwrap())
        .collect();
    assert!(got.iter().all(|v| v["type"] != "gap"));
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(
        (offsets.len() as u64) < N,
        "{} of {N}: conflated",
        offsets.len()
    );
    assert!(
        offsets.ends_with(&[N - 3, N - 2, N - 1, N]),
        "the newest of each key"
    );
    let conflated = metric(
        srv.addr,
        r#"wshub_delivery_policy_messages_total{policy="keep-latest",pattern="tick:*",outcome="conflated"}"#,
    )
    .await;
    assert_eq!(conflated as u64 + offsets.len() as u64, N);
    srv.stop().await;
}

/// A publication's own TTL: past it, it leaves history (a client that missed it cannot recover
/// it) and a copy still queued for a slow reader is not sent: a `gap` takes its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_takes_a_message_out_of_history_and_out_of_a_slow_readers_queue() {
    let srv = TestServer::with_config(HubConfig {
        announce: false,
        history: HistoryConfig {
            size: 2000,
            max_bytes: 256 << 20,
            ..HistoryConfig::default()
        },
        // Room for everything in the slow reader's queue: only the TTL takes anything out.
        send_queue: 4096,
        max_send_buffer: 64 << 20,
        ..HubConfig::default()
    })
    .await;
    // History: listed until its TTL, then not.
    let res = post_json(
        srv.addr,
        "/api/groups/news/broadcast",
        r#"{"message":"brief","ttl":0.3}"#,
    )
    .await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    let listed = |addr| async move {
        http(addr, "GET", "/api/groups/news/history", &[], b"")
            .await
            .json()["messages"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(listed(srv.addr).await, 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(listed(srv.addr).await, 0);
    let bad = post_json(
        srv.addr,
        "/api/groups/news/broadcast",
        r#"{"message":1,"ttl":-1}"#,
    )
    .await;
    assert_eq!(bad.status, 400);

    // A slow reader: what was still queued when the TTL ran out becomes a gap.
    let (mut slow, _) = stalled_member(srv.addr, "live").await;
    srv.wait_count(1).await;
    for seq in 0..N {
        let body = json!({"message": format!("{seq}:{}", "x".repeat(SIZE)), "ttl": 0.5});
        let m = serde_json::value::to_raw_value(&body["message"]).unwrap();
        let opts = wshub::hub::PublishOptions {
            ttl: Some(Duration::from_millis(500)),
            ..Default::default()
        };
        srv.hub
            .publish_to(
                wshub::hub::Target::Group("live"),
                wshub::hub::Message::Json(&m),
                &opts,
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (got, code) = read_all(&mut slow).await;
    assert_eq!(code, None, "still connected");
    let mut covered = BTreeSet::new();
    let mut gaps = 0;
    for v in &got {
        match v["type"].as_str() {
            Some("message") => assert!(covered.insert(v["offset"].as_u64().unwrap())),
            Some("gap") => {
                gaps += 1;
                for o in v["from"].as_u64().unwrap()..=v["to"].as_u64().unwrap() {
                    assert!(covered.insert(o), "once: {o}");
                }
            }
            _ => {}
        }
    }
    assert!(gaps > 0, "expired copies were not sent");
    assert_eq!(covered, (1..=N).collect::<BTreeSet<_>>());
    srv.stop().await;
}
