//! Budgets in bytes under hostile clients (issue "Memory bounded in bytes"): a client that
//! never reads, one that makes and drops groups by the thousand, one that fills history, and
//! one that dribbles a request body. Each test watches what the budget bounds (the process's
//! memory, or the hub's own meters) and a well-behaved client next to it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wshub::history::HistoryConfig;
use wshub::HubConfig;

/// A well-behaved client that must keep working while another misbehaves.
async fn assert_unaffected(addr: std::net::SocketAddr, ws: &mut Ws) {
    send_text(ws, "still here?").await;
    let v = next_json_where(ws, |v| v["type"] == "echo").await;
    assert_eq!(v["message"], "still here?");
    assert_eq!(http(addr, "GET", "/healthz", &[], b"").await.status, 200);
}

/// A raw client whose socket takes as little as the kernel allows, and that never reads.
async fn non_reader(addr: std::net::SocketAddr, path: &str) -> RawClient {
    let c = RawClient::connect(addr, path).await;
    let _ = socket2::SockRef::from(&c.stream).set_recv_buffer_size(4096);
    c
}

/// Writes `count` masked frames of `size` bytes as fast as the server reads them; stops early
/// when the server stops reading (its buffers are full) or drops the socket.
async fn flood(c: &mut RawClient, opcode: u8, size: usize, count: usize) -> usize {
    let payload = vec![b'x'; size];
    let mut sent = 0;
    for _ in 0..count {
        let write = c.send_raw_checked(0x80 | opcode, &payload);
        match tokio::time::timeout(Duration::from_secs(3), write).await {
            Ok(true) => sent += 1,
            _ => break,
        }
    }
    sent
}

#[tokio::test]
async fn echo_client_that_never_reads_pins_no_more_than_its_budget() {
    let (child, addr) = spawn_server(&["--max-send-buffer", "1MiB", "--close-timeout", "1s"]).await;
    let pid = child.id().unwrap();
    let (mut good, _) = connect(&format!("ws://{addr}/ws")).await;
    let before = rss_bytes(pid);
    let mut bad = non_reader(addr, "/ws/echo").await;
    // 64 MiB sent, none of it read: before the budget the server kept it all (+72 MiB).
    let sent = flood(&mut bad, 0x2, 1 << 20, 64).await;
    let peak = rss_bytes(pid);
    // Closed as a slow consumer, and gone once its closing deadline passed.
    wait_metric(addr, "wshub_slow_consumer_closes_total", 1.0).await;
    wait_metric(addr, "wshub_echo_connections", 0.0).await;
    assert_eq!(metric(addr, "wshub_echo_connects_total").await, 1.0);
    drop(bad);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "echo non-reader: {sent} MiB sent, server grew {} KiB",
        growth >> 10
    );
    assert!(
        growth < 24 << 20,
        "server grew by {} MiB after {sent} MiB from a non-reader",
        growth >> 20
    );
    assert_unaffected(addr, &mut good).await;
    drop(child);
}

/// Reads everything `ws` gets (answering pings) until `stop` fires; returns it with the count.
fn keep_reading(
    mut ws: Ws,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<(Ws, usize)> {
    use futures_util::StreamExt as _;
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(_)) => n += 1,
                    _ => break,
                },
                _ = &mut stop => break,
            }
        }
        (ws, n)
    })
}

#[tokio::test]
async fn ws_client_that_never_reads_is_closed_by_bytes_not_frames() {
    let (child, addr) = spawn_server(&[
        "--max-send-buffer",
        "4MiB",
        "--close-timeout",
        "1s",
        "--history-size",
        "0",
        // The non-reader's input is held once its own echoes fill half its budget; with
        // nothing written to it for this long it is closed as a slow consumer.
        "--idle-timeout",
        "2s",
        "--ping-interval",
        "500ms",
    ])
    .await;
    let pid = child.id().unwrap();
    let (good, _) = connect(&format!("ws://{addr}/ws")).await;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let reader = keep_reading(good, stopped);
    let before = rss_bytes(pid);
    let mut bad = non_reader(addr, "/ws").await;
    // 400 × 64 KiB: each comes back twice to the sender (echo and broadcast); well under the
    // 1,024-frame queue, far over the 1 MiB budget.
    let sent = flood(&mut bad, 0x1, 60_000, 400).await;
    let peak = rss_bytes(pid);
    wait_metric(addr, "wshub_slow_consumer_closes_total", 1.0).await;
    wait_metric(addr, "wshub_connections", 1.0).await;
    drop(bad);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "/ws non-reader: {sent} x 60 KB sent, server grew {} KiB",
        growth >> 10
    );
    assert!(
        growth < 20 << 20,
        "server grew by {} MiB after {sent} × 60 KB from a non-reader",
        growth >> 20
    );
    // The good client, reading all along, got the broadcasts and still works.
    stop.send(()).unwrap();
    let (mut good, got) = reader.await.unwrap();
    assert!(got > 0);
    assert_unaffected(addr, &mut good).await;
    assert_eq!(metric(addr, "wshub_slow_consumer_closes_total").await, 1.0);
    drop(child);
}

#[tokio::test]
async fn queued_bytes_are_metered_and_bounded() {
    let srv = TestServer::with_config(HubConfig {
        max_send_buffer: 256 * 1024,
        announce: false,
        // Not idle before its queue overflows, however much the kernel's buffers take first.
        idle_timeout: Duration::from_secs(60),
        ..fast_config()
    })
    .await;
    let bad = non_reader(srv.addr, "/ws").await;
    srv.wait_count(1).await;
    let big = "y".repeat(32 * 1024);
    let mut closed = false;
    // Up to 32 MiB: more than loopback socket buffers take (a few MiB).
    for _ in 0..1000 {
        srv.hub.broadcast_text(&big);
        let queued: usize = srv
            .hub
            .connections(None, None)
            .iter()
            .map(|c| c.queued_bytes)
            .sum();
        // The budget plus the one frame that may pass it.
        assert!(queued <= 256 * 1024 + 33 * 1024, "{queued} bytes queued");
        if srv.hub.connection_count() == 0 {
            closed = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    if !closed {
        srv.wait_count(0).await;
    }
    // Counted once the delivery that found it full is done, which may be just after it left.
    wait_metric(srv.addr, "wshub_slow_consumer_closes_total", 1.0).await;
    drop(bad);
    srv.stop().await;
}

#[tokio::test]
async fn groups_made_and_dropped_by_the_thousand_leave_nothing_behind() {
    let srv = TestServer::with_config(HubConfig {
        history: HistoryConfig {
            ttl: Duration::from_millis(300),
            max_streams: 1000,
            ..HistoryConfig::default()
        },
        max_groups_per_connection: 10,
        ..fast_config()
    })
    .await;
    let (mut ws, _) = connect_v1(&srv.ws_url()).await;
    // 5,000 join/leave pairs of distinct names, pipelined: five times the stream limit, yet
    // every join succeeds, because streams without members and messages make room.
    let n = 5000;
    for i in 0..n {
        let join = format!(r#"{{"id":{},"type":"join","group":"g{i}"}}"#, 2 * i);
        send_text(&mut ws, &join).await;
        send_text(
            &mut ws,
            &format!(r#"{{"id":{},"type":"leave","group":"g{i}"}}"#, 2 * i + 1),
        )
        .await;
    }
    let mut acks = 0;
    while acks < 2 * n {
        let v = next_json(&mut ws).await;
        assert_eq!(v["type"], "ack", "{v}");
        acks += 1;
    }
    assert!(srv.hub.history().len() <= 1000);
    // A join refused for the per-connection limit makes no state at all.
    for i in 0..10 {
        let a = cmd(
            &mut ws,
            json!({"id": format!("j{i}"), "type":"join","group":format!("keep{i}")}),
        )
        .await;
        assert_eq!(a["type"], "ack");
    }
    let refused = cmd(&mut ws, json!({"id":"x","type":"join","group":"refused"})).await;
    assert_eq!(refused["code"], "too_many_groups", "{refused}");
    let h = http(srv.addr, "GET", "/api/groups/refused/history", &[], b"").await;
    assert_eq!(h.status, 404);
    drop(ws);
    srv.wait_count(0).await;
    // Gone with the last member plus the history TTL.
    tokio::time::timeout(WAIT, async {
        while !srv.hub.history().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("streams outlived their members and the TTL");
    srv.stop().await;
}

#[tokio::test]
async fn the_stream_limit_refuses_new_groups_clearly() {
    let srv = TestServer::with_config(HubConfig {
        history: HistoryConfig {
            max_streams: 3,
            ..HistoryConfig::default()
        },
        ..fast_config()
    })
    .await;
    let (mut ws, _) = connect_v1(&srv.ws_url()).await;
    for g in ["a", "b", "c"] {
        let a = cmd(&mut ws, json!({"id": g, "type":"join","group": g})).await;
        assert_eq!(a["type"], "ack");
    }
    let e = cmd(&mut ws, json!({"id":"d","type":"join","group":"d"})).await;
    assert_eq!(e["code"], "hub_full", "{e}");
    let r = post_json(srv.addr, "/api/groups/d/broadcast", r#"{"message":1}"#).await;
    assert_eq!(r.status, 503);
    // The connection is fine, and an existing group still takes messages.
    let p = cmd(
        &mut ws,
        json!({"id":"p","type":"publish","group":"a","message":1}),
    )
    .await;
    assert_eq!(p["type"], "ack", "{p}");
    srv.stop().await;
}

#[tokio::test]
async fn history_is_bounded_in_bytes_across_all_groups() {
    let budget = 2 << 20;
    let srv = TestServer::with_config(HubConfig {
        history: HistoryConfig {
            max_bytes: budget,
            ..HistoryConfig::default()
        },
        ..fast_config()
    })
    .await;
    let (mut ws, _) = connect_v1(&srv.ws_url()).await;
    let big = format!("\"{}\"", "z".repeat(60_000));
    // 20 groups × 10 messages × 60 KB = 12 MB of history asked for; 2 MiB allowed.
    for g in 0..20 {
        let group = format!("h{g}");
        let a = cmd(&mut ws, json!({"id": group, "type":"join","group": group})).await;
        assert_eq!(a["type"], "ack");
        for i in 0..10 {
            let c = format!(
                r#"{{"id":"{group}-{i}","type":"publish","group":"{group}","message":{big}}}"#
            );
            send_text(&mut ws, &c).await;
            next_json_where(&mut ws, |v| v["type"] == "ack").await;
            assert!(
                srv.hub.history().bytes() <= budget + 64 * 1024,
                "{} bytes of history",
                srv.hub.history().bytes()
            );
        }
    }
    // The oldest went first: the first group kept nothing, the last one everything.
    let first = http(srv.addr, "GET", "/api/groups/h0/history", &[], b"").await;
    let first: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(first["messages"].as_array().unwrap().len(), 0, "{first}");
    let last = http(srv.addr, "GET", "/api/groups/h19/history", &[], b"").await;
    let last: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(last["messages"].as_array().unwrap().len(), 10);
    let metrics =
        String::from_utf8(http(srv.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    let evicted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wshub_history_evicted_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(evicted >= 150, "{evicted} evicted");
    srv.stop().await;
}

#[tokio::test]
async fn a_dribbled_request_body_is_cut_with_408() {
    let options = wshub::server::ServerOptions {
        request_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let srv = TestServer::with(fast_config(), options).await;
    let (mut good, _) = connect(&srv.ws_url()).await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(
        b"POST /api/connections/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mess",
    )
    .await
    .unwrap();
    // One byte now and then, never the whole body.
    let dribble = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(800), dribble).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("not closed");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_unaffected(srv.addr, &mut good).await;
    srv.stop().await;
}

/// Sends a raw HTTP request and returns the status line.
async fn raw_status(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn upgrades_without_host_or_with_a_body_get_400() {
    let srv = TestServer::with_config(fast_config()).await;
    let ws_headers = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let no_host = format!("GET /ws HTTP/1.1\r\n{ws_headers}\r\n");
    assert!(raw_status(srv.addr, &no_host)
        .await
        .starts_with("HTTP/1.1 400"));
    let body =
        format!("GET /ws/echo HTTP/1.1\r\nHost: x\r\n{ws_headers}Content-Length: 5\r\n\r\nhello");
    assert!(raw_status(srv.addr, &body)
        .await
        .starts_with("HTTP/1.1 400"));
    let chunked = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\n{ws_headers}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    assert!(raw_status(srv.addr, &chunked)
        .await
        .starts_with("HTTP/1.1 400"));
    let fine = format!("GET /ws HTTP/1.1\r\nHost: x\r\n{ws_headers}Content-Length: 0\r\n\r\n");
    assert!(raw_status(srv.addr, &fine)
        .await
        .starts_with("HTTP/1.1 101"));
    srv.stop().await;
}

#[tokio::test]
async fn echo_counts_against_the_connection_limit_and_can_be_turned_off() {
    let srv = TestServer::with_config(HubConfig {
        max_connections: Some(2),
        ..fast_config()
    })
    .await;
    let _a = RawClient::connect(srv.addr, "/ws/echo").await;
    let _b = RawClient::connect(srv.addr, "/ws").await;
    let ws_headers = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    for path in ["/ws/echo", "/ws"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{ws_headers}\r\n");
        let status = raw_status(srv.addr, &req).await;
        assert!(status.starts_with("HTTP/1.1 503"), "{path}: {status}");
    }
    assert_eq!(srv.hub.echo_count(), 1);
    srv.stop().await;

    let off = TestServer::with_config(HubConfig {
        echo_endpoint: false,
        ..fast_config()
    })
    .await;
    let req = format!("GET /ws/echo HTTP/1.1\r\nHost: x\r\n{ws_headers}\r\n");
    assert!(raw_status(off.addr, &req).await.starts_with("HTTP/1.1 404"));
    off.stop().await;
}

#[tokio::test]
async fn echo_is_rate_limited_like_ws() {
    let srv = TestServer::with_config(HubConfig {
        rate_limit: Some(wshub::hub::RateLimit {
            per_second: 0.001,
            burst: 3,
            action: wshub::hub::RateLimitAction::Close,
        }),
        ..fast_config()
    })
    .await;
    let mut c = RawClient::connect(srv.addr, "/ws/echo").await;
    for _ in 0..3 {
        c.send(0x1, b"ok").await;
        assert_eq!(c.read_frame().await, Some((0x1, b"ok".to_vec())));
    }
    c.send(0x1, b"one too many").await;
    assert_eq!(c.read_close().await, Some(1008));
    srv.stop().await;
}

#[tokio::test]
async fn v1_ids_must_be_strings_or_numbers_and_are_not_echoed_when_huge() {
    let srv = TestServer::with_config(fast_config()).await;
    let (mut ws, _) = connect_v1(&srv.ws_url()).await;
    for bad in [r#"{"a":1}"#, "[1,2]", "true"] {
        send_text(&mut ws, &format!(r#"{{"id":{bad},"type":"ping"}}"#)).await;
        let e = next_json(&mut ws).await;
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], "invalid");
        assert!(e["id"].is_null());
    }
    let huge = format!(r#"{{"id":"{}","type":"ping"}}"#, "i".repeat(10_000));
    send_text(&mut ws, &huge).await;
    match next_msg(&mut ws).await {
        tokio_tungstenite::tungstenite::Message::Text(t) => {
            assert!(t.len() < 400, "error of {} bytes", t.len());
            assert!(t.contains("10002 bytes"), "{t}");
        }
        other => panic!("{other:?}"),
    }
    let ok = cmd(&mut ws, json!({"id":"fine","type":"ping"})).await;
    assert_eq!(ok["type"], "ack");
    srv.stop().await;
}
