//! Bad input and bad peers: each gets a specific close code or status, and nobody else notices.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wshub::HubConfig;

/// A well-behaved client that must keep working while another misbehaves.
async fn assert_unaffected(srv: &TestServer, ws: &mut Ws) {
    send_text(ws, "still here?").await;
    let v = next_json_where(ws, |v| v["type"] == "echo").await;
    assert_eq!(v["message"], "still here?");
    assert_eq!(
        http(srv.addr, "GET", "/healthz", &[], b"").await.status,
        200
    );
}

/// Each socket is closed by the server (a bare close or a 408), never left hanging.
async fn expect_server_closes(sockets: Vec<tokio::net::TcpStream>) {
    for mut s in sockets {
        let mut buf = [0u8; 512];
        let r = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("server should close the idle socket");
        if let Ok(n) = r {
            assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
        }
    }
}

async fn expect_close(srv: &TestServer, first: u8, payload: &[u8], masked: bool, code: u16) {
    let (mut good, _) = connect(&srv.ws_url()).await;
    let mut bad = RawClient::connect(srv.addr, "/ws").await;
    bad.send_raw(first, payload, masked).await;
    assert_eq!(bad.read_close().await, Some(code), "first byte {first:#x}");
    assert_unaffected(srv, &mut good).await;
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let config = HubConfig {
        max_message_size: 1024,
        ..fast_config()
    };
    let srv = TestServer::with_config(config).await;
    expect_close(&srv, 0x81, &vec![b'a'; 1025], true, 1009).await;
    expect_close(&srv, 0x82, &vec![0; 100_000], true, 1009).await;
    srv.stop().await;
}

#[tokio::test]
async fn default_limit_is_64_kib() {
    let srv = TestServer::with_config(fast_config()).await;
    expect_close(&srv, 0x81, &vec![b'a'; 64 * 1024 + 1], true, 1009).await;
    srv.stop().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let srv = TestServer::with_config(fast_config()).await;
    expect_close(&srv, 0x81, &[b'o', b'k', 0xC3, 0x28], true, 1007).await;
    // Split over fragments: the bad byte is caught in the first fragment.
    let (mut good, _) = connect(&srv.ws_url()).await;
    let mut bad = RawClient::connect(srv.addr, "/ws").await;
    bad.send_raw(0x01, &[0xED, 0xA0, 0x80], true).await; // a UTF-16 surrogate
    assert_eq!(bad.read_close().await, Some(1007));
    assert_unaffected(&srv, &mut good).await;
    srv.stop().await;
}

#[tokio::test]
async fn protocol_errors_close_with_1002() {
    let srv = TestServer::with_config(fast_config()).await;
    expect_close(&srv, 0x81, b"unmasked", false, 1002).await;
    expect_close(&srv, 0x81 | 0x40, b"rsv1", true, 1002).await;
    expect_close(&srv, 0x83, b"opcode 3", true, 1002).await;
    expect_close(&srv, 0x8B, b"opcode 11", true, 1002).await;
    expect_close(&srv, 0x09, b"fragmented ping", true, 1002).await;
    expect_close(&srv, 0x80, b"continuation of nothing", true, 1002).await;
    expect_close(&srv, 0x88, &[0x03, 0xED], true, 1002).await; // close code 1005
    srv.stop().await;
}

#[tokio::test]
async fn a_2_pow_63_length_header_is_refused_without_buffering() {
    let srv = TestServer::with_config(fast_config()).await;
    let (mut good, _) = connect(&srv.ws_url()).await;
    for (len, code) in [(u64::MAX, 1002), (1u64 << 62, 1009)] {
        let mut bad = RawClient::connect(srv.addr, "/ws").await;
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        bad.stream.write_all(&frame).await.unwrap();
        assert_eq!(bad.read_close().await, Some(code));
    }
    assert_unaffected(&srv, &mut good).await;
    srv.stop().await;
}

#[tokio::test]
async fn abrupt_reset_is_cleaned_up_and_announced() {
    let srv = TestServer::with_config(fast_config()).await;
    let (mut good, _) = connect(&srv.ws_url()).await;
    let bad = RawClient::connect(srv.addr, "/ws").await;
    srv.wait_count(2).await;
    // SO_LINGER 0: close() sends RST instead of FIN.
    let std = bad.stream.into_std().unwrap();
    socket2::SockRef::from(&std)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(std);
    next_json_where(&mut good, |v| {
        v["message"].as_str().is_some_and(|m| m.ends_with("left."))
    })
    .await;
    srv.wait_count(1).await;
    assert_unaffected(&srv, &mut good).await;
    srv.stop().await;
}

#[tokio::test]
async fn tcp_eof_without_close_frame_is_cleaned_up() {
    let srv = TestServer::with_config(fast_config()).await;
    let (mut good, _) = connect(&srv.ws_url()).await;
    let mut bad = RawClient::connect(srv.addr, "/ws").await;
    srv.wait_count(2).await;
    bad.stream.shutdown().await.unwrap();
    drop(bad);
    srv.wait_count(1).await;
    assert_unaffected(&srv, &mut good).await;
    srv.stop().await;
}

#[tokio::test]
async fn clients_that_never_send_the_request_are_dropped() {
    let options = wshub::server::ServerOptions {
        handshake_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let srv = TestServer::with(fast_config(), options).await;
    let (mut good, _) = connect(&srv.ws_url()).await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(srv.addr).await.unwrap());
    }
    // And one that dribbles half a request line.
    let mut dribbler = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    dribbler.write_all(b"GET /ws HT").await.unwrap();
    idle.push(dribbler);
    expect_server_closes(idle).await;
    assert_unaffected(&srv, &mut good).await;
    srv.stop().await;
}

#[tokio::test]
async fn slow_consumer_is_closed_without_delaying_the_others() {
    let config = HubConfig {
        send_queue: 256,
        // Long keep-alive timers: the stalled client must be caught as slow, not as idle.
        close_timeout: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(1),
        ..HubConfig::default()
    };
    let srv = TestServer::with_config(config).await;
    let (mut fast, _) = connect(&srv.ws_url()).await;
    // Connects, answers nothing and reads nothing: its socket buffers fill, then its queue.
    let mut stalled = RawClient::connect(srv.addr, "/ws").await;
    srv.wait_count(2).await;
    next_json(&mut fast).await; // stalled joined

    let payload = "x".repeat(16 * 1024);
    let total = 3000; // ~48 MiB: more than loopback socket buffers hold
    let reader = tokio::spawn(async move {
        let started = Instant::now();
        let mut got = 0;
        let mut saw_left = false;
        while got < total {
            let v = next_json(&mut fast).await;
            if v["type"] == "server-broadcast" {
                got += 1;
            } else if v["message"].as_str().is_some_and(|m| m.ends_with("left.")) {
                saw_left = true;
            }
        }
        (fast, saw_left, started.elapsed())
    });
    // Paced (16 per millisecond, ~250 MiB/s) so that a client that reads keeps up, while
    // one that does not read overflows.
    for i in 0..total {
        srv.hub.broadcast_text(&payload);
        if i % 16 == 15 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let (mut fast, saw_left, took) = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the fast client was stalled")
        .unwrap();
    assert!(srv.hub.metrics().slow_consumers.get() >= 1);
    srv.wait_count(1).await;
    if !saw_left {
        next_json_where(&mut fast, |v| {
            v["message"].as_str().is_some_and(|m| m.ends_with("left."))
        })
        .await;
    }
    eprintln!("fast client got all {total} broadcasts in {took:?}");
    // The stalled socket is eventually closed (its Close frame may be stuck behind its backlog).
    let mut sink = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match stalled.stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the slow consumer's socket was never closed"
    );
    srv.stop().await;
}

#[tokio::test]
async fn bad_handshakes_get_specific_statuses() {
    let srv = TestServer::with_config(fast_config()).await;
    let up = [("Upgrade", "websocket"), ("Connection", "Upgrade")];
    let res = http(
        srv.addr,
        "GET",
        "/ws",
        &[
            up[0],
            up[1],
            ("Sec-WebSocket-Version", "8"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    )
    .await;
    assert_eq!(res.status, 426);
    assert_eq!(res.header("sec-websocket-version"), Some("13"));
    let res = http(
        srv.addr,
        "GET",
        "/ws",
        &[
            up[0],
            up[1],
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "short"),
        ],
        b"",
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    let res = http(
        srv.addr,
        "GET",
        "/ws",
        &[up[0], up[1], ("Sec-WebSocket-Version", "13")],
        b"",
    )
    .await;
    assert_eq!(res.status, 400);
    srv.stop().await;
}

#[tokio::test]
async fn garbage_before_the_handshake_gets_400_and_no_crash() {
    let srv = TestServer::with_config(fast_config()).await;
    let (mut good, _) = connect(&srv.ws_url()).await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    assert_unaffected(&srv, &mut good).await;
    srv.stop().await;
}

#[tokio::test]
async fn ping_flood_from_a_client_that_never_reads_is_bounded() {
    let srv = TestServer::with_config(HubConfig {
        send_queue: 64,
        close_timeout: Duration::from_millis(300),
        shutdown_timeout: Duration::from_secs(1),
        ..HubConfig::default()
    })
    .await;
    let (mut good, _) = connect(&srv.ws_url()).await;
    let mut flooder = RawClient::connect(srv.addr, "/ws").await;
    // 20,000 pings with 100-byte payloads, never reading a pong: ~2.6 MB of pongs owed.
    let mut burst = Vec::new();
    for _ in 0..20_000 {
        burst.push(0x89u8);
        burst.push(0x80 | 100);
        burst.extend_from_slice(&[0, 0, 0, 0]);
        burst.extend_from_slice(&[b'p'; 100]);
    }
    let _ = tokio::time::timeout(WAIT, flooder.stream.write_all(&burst)).await;
    // The server either keeps answering within its queue bound or drops the flooder as a slow
    // consumer; either way the others are unaffected and memory stays bounded.
    assert_unaffected(&srv, &mut good).await;
    let queued: usize = srv
        .hub
        .connections(None, None)
        .iter()
        .map(|c| c.queued)
        .max()
        .unwrap_or(0);
    assert!(
        queued <= 64 + 8,
        "outbound queue grew past its bound: {queued}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn thousands_of_incomplete_handshakes_cost_a_bounded_time() {
    let options = wshub::server::ServerOptions {
        handshake_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let srv = TestServer::with(fast_config(), options).await;
    let (mut good, _) = connect(&srv.ws_url()).await;
    let mut half = Vec::new();
    for _ in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
        let _ = s
            .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            .await;
        half.push(s);
    }
    assert_unaffected(&srv, &mut good).await;
    // Every one of them is closed by the server after the handshake timeout.
    expect_server_closes(half).await;
    srv.stop().await;
}

#[tokio::test]
async fn deeply_nested_rest_json_costs_nothing_and_crashes_nothing() {
    let srv = TestServer::with_config(fast_config()).await;
    let nested = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let body = format!(r#"{{"message":{nested}}}"#);
    // A group message is opaque JSON, validated without recursion and forwarded verbatim.
    let r = post_json(srv.addr, "/api/groups/g/broadcast", &body).await;
    assert_eq!(r.status, 200);
    // The plain broadcast wants a string: refused.
    let r = post_json(srv.addr, "/api/connections/broadcast", &body).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        http(srv.addr, "GET", "/healthz", &[], b"").await.status,
        200
    );
    srv.stop().await;
}
