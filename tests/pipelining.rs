//! Reply backpressure: a client that pipelines thousands of commands and reads slowly is slowed
//! down, not disconnected. Its own replies (acks, pongs) are owed to it: while they wait the
//! server reads no more of its input, as TCP itself would; its copies of a group's messages
//! follow the group's delivery policy. A bystander in the same group is not slowed.
//!
//! And the other side of it: a client that sends and never reads is not kept for ever. Its
//! input held and nothing written for the idle timeout, it is closed as a slow consumer (what
//! it pins meanwhile is bounded by its budget: see `tests/budgets.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;
use wshub::manager::policy::Rule;
use wshub::HubConfig;

const N: u64 = 10_000;

/// A `wshub.v1` client over a socket whose receive buffer is as small as the kernel allows (so
/// that what the server writes backs up into the server, not into loopback buffers).
async fn small_buffer_client(addr: std::net::SocketAddr) -> Ws {
    small_buffer_client_at(addr, "/ws", Some("wshub.v1")).await
}

async fn small_buffer_client_at(
    addr: std::net::SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}{path}"),
    )
    .unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp))
        .await
        .unwrap();
    ws
}

/// Reads text frames slowly (a pause every 20) until `reply` has said `true` (the next reply,
/// in order) `N` times; the connection must not close meanwhile.
async fn read_slowly(
    rx: &mut futures_util::stream::SplitStream<Ws>,
    mut reply: impl FnMut(Value) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (mut replies, mut frames) = (0u64, 0u64);
    while replies < N {
        let m = tokio::time::timeout_at(deadline, rx.next())
            .await
            .unwrap_or_else(|_| panic!("replies stopped after {replies}"));
        let Some(Ok(m)) = m else {
            panic!("closed after {replies} replies: {m:?}");
        };
        let Message::Text(t) = m else { continue };
        if reply(serde_json::from_str(&t).unwrap()) {
            replies += 1;
        }
        frames += 1;
        if frames % 20 == 0 {
            // A slow reader: the server's writes back up while the commands keep coming.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn server_config(group_rule: Option<&str>) -> HubConfig {
    HubConfig {
        delivery_policies: group_rule
            .map(|r| Rule::parse(r).unwrap())
            .into_iter()
            .collect(),
        announce: false,
        idle_timeout: Duration::from_secs(3600),
        ..HubConfig::default()
    }
}

/// Pipelines `N` commands (`make(i)`, ids 1..=N) from a client that reads slowly, with a
/// bystander in `group` reading fast; checks that every reply comes, once, in order, that the
/// client is never closed, and that the bystander got every message meanwhile. Returns the
/// messages and gaps the slow client saw.
async fn pipeline(group_rule: Option<&str>, make: fn(u64) -> Value) -> (u64, u64) {
    let mut config = server_config(group_rule);
    if make(1)["type"] == "ping" {
        // A short queue, so that the acks alone (a few hundred kilobytes, which the kernel's
        // socket buffers could take whole) pass it.
        config.send_queue = 64;
    }
    let srv = TestServer::with_config(config).await;
    let (mut bystander, _) = connect_v1(&srv.ws_url()).await;
    let ack = cmd(&mut bystander, json!({"id":"j","type":"join","group":"g"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");

    let mut ws = small_buffer_client(srv.addr).await;
    ws.send(Message::text(
        json!({"id":"j","type":"join","group":"g"}).to_string(),
    ))
    .await
    .unwrap();
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        // Batched into few writes: pipelined, as fast as the socket takes them.
        for i in 1..=N {
            tx.feed(Message::text(make(i).to_string())).await.unwrap();
            if i % 100 == 0 {
                tx.flush().await.unwrap();
            }
        }
        tx.flush().await.unwrap();
        tx
    });
    let publishes = make(1)["type"] == "publish";
    let lossless = group_rule.is_none_or(|r| r.ends_with("drop-oldest"));
    let bystander_reader = tokio::spawn(async move {
        // Every offset once, in order: as a message, or (where the policy drops, should the
        // bystander itself fall behind) named by a gap.
        let mut seen = 0u64;
        while seen < N && publishes {
            let v = next_json_where(&mut bystander, |v| {
                v["type"] == "message" || v["type"] == "gap"
            })
            .await;
            let (from, to) = if v["type"] == "gap" {
                (v["from"].as_u64().unwrap(), v["to"].as_u64().unwrap())
            } else {
                let o = v["offset"].as_u64().unwrap();
                (o, o)
            };
            if lossless {
                assert_eq!(
                    from,
                    seen + 1,
                    "the bystander gets every message once, in order: {v}"
                );
            } else {
                // keep-latest may replace what the bystander has not read yet.
                assert!(from > seen, "in order: {v} after {seen}");
            }
            seen = to;
        }
        // And is answered meanwhile.
        let ack = cmd(&mut bystander, json!({"id":"b","type":"ping"})).await;
        assert_eq!(ack["type"], "ack");
        (seen, bystander)
    });

    let (mut next, mut messages, mut gaps) = (1u64, 0u64, 0u64);
    read_slowly(&mut rx, |v| {
        match v["type"].as_str() {
            Some("message") => messages += 1,
            Some("gap") => gaps += 1,
            _ if v["id"] == "j" => assert_eq!(v["type"], "ack", "{v}"),
            // Welcome, membership events.
            _ if v["id"].is_null() => {}
            _ => {
                assert_eq!(v["type"], "ack", "{v}");
                assert_eq!(v["id"], id(next), "in order");
                next += 1;
                return true;
            }
        }
        false
    })
    .await;
    let _tx = sender.await.unwrap();
    let (seen, _bystander) = tokio::time::timeout(Duration::from_secs(60), bystander_reader)
        .await
        .expect("the bystander was not slowed")
        .unwrap();
    assert_eq!(seen, if publishes { N } else { 0 });
    assert_eq!(
        metric(srv.addr, "wshub_slow_consumer_closes_total").await,
        0.0
    );
    assert_eq!(srv.hub.connection_count(), 2);
    (messages, gaps)
}

/// A command's id: long (near the 128 bytes echoed), so that 10,000 acks alone are more
/// than the connection's budget and the socket's buffers hold.
fn id(i: u64) -> String {
    format!("{i:08}{}", "-".repeat(100))
}

fn ping(i: u64) -> Value {
    json!({"id": id(i), "type": "ping"})
}

fn publish(i: u64) -> Value {
    json!({"id": id(i), "type": "publish", "group": "g", "message": format!("{i}:{}", "x".repeat(1000))})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_pings_from_a_slow_reader_all_get_their_ack() {
    pipeline(None, ping).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_into_its_own_disconnect_group_slow_it_down() {
    let (messages, gaps) = pipeline(None, publish).await;
    // Its copies are owed too under `disconnect` (the default): all of them, no gap.
    assert_eq!((messages, gaps), (N, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_into_its_own_drop_oldest_group_get_every_ack() {
    let (messages, gaps) = pipeline(Some("g=drop-oldest"), publish).await;
    // What the policy dropped is named by gaps; the acks all came.
    assert!(messages <= N);
    eprintln!("drop-oldest: {messages} messages, {gaps} gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_into_its_own_keep_latest_group_get_every_ack() {
    let (messages, _) = pipeline(Some("g=keep-latest"), publish).await;
    assert!(messages <= N);
}

/// A client that sends and never reads: its input is held once its replies fill half its
/// budget, and it is closed as a slow consumer when nothing could be written to it for the idle
/// timeout. Meanwhile the server holds no more than its budget for it.
#[tokio::test]
async fn a_client_that_sends_and_never_reads_is_closed_within_the_idle_timeout() {
    let srv = TestServer::with_config(HubConfig {
        idle_timeout: Duration::from_secs(1),
        ping_interval: Duration::from_millis(200),
        ..server_config(None)
    })
    .await;
    let mut bad = small_buffer_client(srv.addr).await;
    let sender = tokio::spawn(async move {
        // Sends until the server stops reading (the send blocks) or closes.
        for i in 1..=1_000_000u64 {
            let send = bad.send(Message::text(ping(i).to_string()));
            match tokio::time::timeout(Duration::from_secs(30), send).await {
                Ok(Ok(())) => {}
                _ => return i,
            }
        }
        0
    });
    wait_metric(srv.addr, "wshub_slow_consumer_closes_total", 1.0).await;
    srv.wait_count(0).await;
    let (mut good, _) = connect_v1(&srv.ws_url()).await;
    let ack = cmd(&mut good, json!({"id":"still","type":"ping"})).await;
    assert_eq!(ack["type"], "ack");
    sender.abort();
}

/// The same on the Pusher protocol: 10,000 pipelined subscribe/unsubscribe pairs (long channel
/// names: their answers are more than the budget and the socket's buffers hold) from a slow
/// reader all get their `subscription_succeeded`, in order, and a bystander is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_client_pipelining_subscriptions_is_slowed_not_closed() {
    use wshub::apps::{App, Apps};
    let srv = TestServer::with_config(HubConfig {
        apps: Apps::new(vec![App::new("1", "key-1", "secret-1")]),
        // A short queue: the answers alone pass it (the kernel's buffers could take them).
        send_queue: 64,
        ..server_config(None)
    })
    .await;
    let channel = |i: u64| format!("c-{i:08}-{}", "x".repeat(140));
    let ws = small_buffer_client_at(srv.addr, "/app/key-1?protocol=7", None).await;
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        for i in 1..=N {
            let c = channel(i);
            let sub = json!({"event":"pusher:subscribe","data":{"channel": c}});
            let unsub = json!({"event":"pusher:unsubscribe","data":{"channel": c}});
            tx.feed(Message::text(sub.to_string())).await.unwrap();
            tx.feed(Message::text(unsub.to_string())).await.unwrap();
            if i % 50 == 0 {
                tx.flush().await.unwrap();
            }
        }
        tx.flush().await.unwrap();
        tx
    });
    let mut next = 1;
    read_slowly(&mut rx, |v| {
        if v["event"] == "pusher_internal:subscription_succeeded" {
            assert_eq!(v["channel"], channel(next), "in order");
            next += 1;
            return true;
        }
        assert_eq!(v["event"], "pusher:connection_established", "{v}");
        false
    })
    .await;
    let _tx = sender.await.unwrap();
    let (mut bystander, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/app/key-1?protocol=7", srv.addr))
            .await
            .unwrap();
    let v = next_json(&mut bystander).await;
    assert_eq!(v["event"], "pusher:connection_established", "{v}");
    send_text(&mut bystander, r#"{"event":"pusher:ping","data":{}}"#).await;
    let v = next_json(&mut bystander).await;
    assert_eq!(v["event"], "pusher:pong", "{v}");
    assert_eq!(
        metric(srv.addr, "wshub_slow_consumer_closes_total").await,
        0.0
    );
}
