//! End-to-end: the `/ws` flows of plain mode over real sockets with a real client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures_util::SinkExt;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn connect_announces_join_to_everyone_with_the_short_id() {
    let srv = TestServer::start().await;
    let (mut a, a_short) = connect(&srv.ws_url()).await;
    let (_b, b_short) = connect(&srv.ws_url()).await;
    let v = next_json(&mut a).await;
    assert_eq!(v["type"], "system");
    assert_eq!(v["message"], format!("Client {b_short} joined."));
    assert_timestamp(&v);
    assert_ne!(a_short, b_short);
    assert_eq!(a_short.len(), 8);

    // The short id is the first 8 characters of the 32-hex id in the listing.
    let list = http(srv.addr, "GET", "/api/connections", &[], b"")
        .await
        .json();
    assert_eq!(list["count"], 2);
    for c in list["connections"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(c["shortId"].as_str().unwrap(), &id[..8]);
        assert!(c["remoteAddr"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    srv.stop().await;
}

#[tokio::test]
async fn text_is_echoed_to_sender_and_sent_to_everyone() {
    let srv = TestServer::start().await;
    let (mut a, a_short) = connect(&srv.ws_url()).await;
    let (mut b, _) = connect(&srv.ws_url()).await;
    next_json(&mut a).await; // b joined
    send_text(&mut a, "Hello!").await;

    let echo = next_json(&mut a).await;
    assert_eq!(echo["type"], "echo");
    assert_eq!(echo["from"], a_short.as_str());
    assert_eq!(echo["message"], "Hello!");
    assert_timestamp(&echo);
    let mine = next_json(&mut a).await;
    assert_eq!(mine["type"], "message");
    assert_eq!(mine["from"], a_short.as_str());
    let theirs = next_json(&mut b).await;
    assert_eq!(theirs["type"], "message");
    assert_eq!(theirs["from"], a_short.as_str());
    assert_eq!(theirs["message"], "Hello!");
    srv.stop().await;
}

#[tokio::test]
async fn any_text_comes_back_byte_identical() {
    let srv = TestServer::start().await;
    let (mut a, _) = connect(&srv.ws_url()).await;
    let big = "é".repeat(32 * 1024); // 64 KiB of two-byte characters: exactly the default limit
    let samples = [
        "quotes \" and 'single' and \\backslash\\",
        "line\nbreaks\r\nand\ttabs",
        "emoji 😀👍🏽 and CJK 漢字 and RTL مرحبا",
        "control \u{1} \u{1f} and nul \u{0}",
        "</script><script>alert(1)</script>",
        " ",
        big.as_str(),
    ];
    for s in samples {
        send_text(&mut a, s).await;
        let echo = next_json(&mut a).await;
        assert_eq!(echo["type"], "echo");
        assert_eq!(echo["message"].as_str().unwrap(), s);
        let msg = next_json(&mut a).await;
        assert_eq!(msg["message"].as_str().unwrap(), s);
    }
    srv.stop().await;
}

#[tokio::test]
async fn binary_is_relayed_unchanged_to_sender_and_everyone() {
    let srv = TestServer::start().await;
    let (mut a, _) = connect(&srv.ws_url()).await;
    let (mut b, _) = connect(&srv.ws_url()).await;
    next_json(&mut a).await;
    let payload: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    a.send(Message::binary(payload.clone())).await.unwrap();
    for _ in 0..2 {
        assert_eq!(next_msg(&mut a).await, Message::binary(payload.clone()));
    }
    assert_eq!(next_msg(&mut b).await, Message::binary(payload));
    srv.stop().await;
}

#[tokio::test]
async fn disconnect_announces_leave_and_removes_the_connection() {
    let srv = TestServer::start().await;
    let (mut a, _) = connect(&srv.ws_url()).await;
    let (mut b, b_short) = connect(&srv.ws_url()).await;
    next_json(&mut a).await;
    srv.wait_count(2).await;
    b.close(None).await.unwrap();
    let v = next_json(&mut a).await;
    assert_eq!(v["type"], "system");
    assert_eq!(v["message"], format!("Client {b_short} left."));
    srv.wait_count(1).await;
    srv.stop().await;
}

#[tokio::test]
async fn client_close_gets_the_closing_handshake() {
    let srv = TestServer::start().await;
    let mut raw = RawClient::connect(srv.addr, "/ws").await;
    raw.read_frame().await.unwrap(); // joined
    let mut payload = 4000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    raw.send(0x8, &payload).await;
    assert_eq!(
        raw.read_close().await,
        Some(4000),
        "the server echoes the peer's code"
    );
    assert!(
        raw.read_frame().await.is_none(),
        "then closes the TCP connection"
    );
    srv.wait_count(0).await;
    srv.stop().await;
}

#[tokio::test]
async fn connection_is_registered_before_the_upgrade_completes() {
    // A broadcast issued right after the client sees 101 must reach it.
    let srv = TestServer::start().await;
    for _ in 0..20 {
        let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url())
            .await
            .unwrap();
        let n = srv.hub.broadcast_text("right after the upgrade");
        assert!(n >= 1);
        let v = next_json_where(&mut ws, |v| v["type"] == "server-broadcast").await;
        assert_eq!(v["message"], "right after the upgrade");
        ws.close(None).await.unwrap();
    }
    srv.stop().await;
}

#[tokio::test]
async fn many_clients_all_receive_every_message() {
    let srv = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(connect(&srv.ws_url()).await.0);
    }
    srv.wait_count(40).await;
    send_text(&mut clients[0], "to everyone").await;
    for c in clients.iter_mut() {
        let v = next_json_where(c, |v| v["type"] == "message").await;
        assert_eq!(v["message"], "to everyone");
    }
    srv.stop().await;
}

#[tokio::test]
async fn rest_broadcast_reaches_every_client() {
    let srv = TestServer::start().await;
    let (mut a, _) = connect(&srv.ws_url()).await;
    let (mut b, _) = connect(&srv.ws_url()).await;
    let res = post_json(
        srv.addr,
        "/api/connections/broadcast",
        r#"{"message":"Server is restarting in 5 minutes."}"#,
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["recipients"], 2);
    for ws in [&mut a, &mut b] {
        let v = next_json_where(ws, |v| v["type"] == "server-broadcast").await;
        assert_eq!(v["message"], "Server is restarting in 5 minutes.");
        assert!(v.get("from").is_none());
        assert_timestamp(&v);
    }
    srv.stop().await;
}

#[tokio::test]
async fn server_pings_and_a_responsive_client_stays() {
    let srv = TestServer::with_config(fast_config()).await;
    let mut raw = RawClient::connect(srv.addr, "/ws").await;
    // The first frame is our own join; then answer 15 pings (100 ms apart): we stay well past
    // the 1 s idle timeout.
    raw.read_frame().await.unwrap();
    for _ in 0..15 {
        let (op, payload) = raw.read_frame().await.expect("a ping");
        assert_eq!(op, 0x9);
        raw.send(0xA, &payload).await;
    }
    assert_eq!(srv.hub.connection_count(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn silent_peer_is_closed_removed_and_announced() {
    let srv = TestServer::with_config(fast_config()).await;
    let (mut watcher, _) = connect(&srv.ws_url()).await; // tungstenite answers pings while read
                                                         // A peer that completes the handshake and then never sends a byte: TCP alive, app dead.
    let silent = RawClient::connect(srv.addr, "/ws").await;
    let joined = next_json(&mut watcher).await;
    let short = joined["message"].as_str().unwrap()[7..15].to_owned();
    let left = next_json_where(&mut watcher, |v| {
        v["message"].as_str().is_some_and(|m| m.ends_with("left."))
    })
    .await;
    assert_eq!(left["message"], format!("Client {short} left."));
    srv.wait_count(1).await;
    drop(silent);
    srv.stop().await;
}

#[tokio::test]
async fn ping_from_client_gets_pong_with_same_payload() {
    let srv = TestServer::start().await;
    let mut raw = RawClient::connect(srv.addr, "/ws").await;
    raw.read_frame().await.unwrap();
    raw.send(0x9, b"are you there").await;
    assert_eq!(
        raw.read_frame().await,
        Some((0xA, b"are you there".to_vec()))
    );
    srv.stop().await;
}

#[tokio::test]
async fn first_frame_sent_right_behind_the_handshake_is_not_lost() {
    // The client pipelines a frame in the same packet as the upgrade request.
    use tokio::io::AsyncWriteExt;
    let srv = TestServer::start().await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let mut req = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    let key = [1u8, 2, 3, 4];
    req.extend_from_slice(&[0x81, 0x80 | 5]);
    req.extend_from_slice(&key);
    req.extend(b"early".iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    s.write_all(&req).await.unwrap();
    let mut raw = RawClient {
        stream: s,
        buf: Vec::new(),
    };
    // Skip the HTTP response head.
    let mut found = None;
    for _ in 0..4 {
        let frame = tokio::time::timeout(Duration::from_secs(5), async {
            use tokio::io::AsyncReadExt;
            let mut chunk = [0u8; 4096];
            let n = raw.stream.read(&mut chunk).await.unwrap();
            raw.buf.extend_from_slice(&chunk[..n]);
        })
        .await;
        frame.unwrap();
        if let Some(p) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            raw.buf.drain(..p + 4);
            found = Some(());
            break;
        }
    }
    found.expect("response head");
    let mut texts = Vec::new();
    while texts.len() < 3 {
        let (op, p) = raw.read_frame().await.unwrap();
        assert_eq!(op, 1);
        texts.push(serde_json::from_slice::<serde_json::Value>(&p).unwrap());
    }
    assert_eq!(texts[0]["type"], "system");
    assert_eq!(texts[1]["type"], "echo");
    assert_eq!(texts[1]["message"], "early");
    srv.stop().await;
}

/// A client pipelining thousands of messages without pause (more than a connection's whole
/// send queue) gets them all echoed and broadcast, and so does everyone else: the server
/// writes what one read produced before it reads the next, instead of queueing the whole
/// pipeline for everyone until the sender pauses (which closed the sender and its readers as
/// slow consumers).
#[tokio::test]
async fn a_pipelined_burst_past_the_send_queue_reaches_everyone() {
    use futures_util::StreamExt;
    let srv = TestServer::start().await;
    let (a, a_short) = connect(&srv.ws_url()).await;
    let (b, _) = connect(&srv.ws_url()).await;
    let (mut a_tx, mut a_rx) = a.split();
    // A hears of B's join first; then nothing else is sent before the burst.
    async fn next(rx: &mut futures_util::stream::SplitStream<Ws>) -> serde_json::Value {
        match tokio::time::timeout(Duration::from_secs(20), rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }
    let v = next(&mut a_rx).await;
    assert_eq!(v["type"], "system");
    let n = 3000; // the send queue holds 1,024 frames
    let count = |kind: &'static str| {
        move |v: &serde_json::Value| v["type"] == kind && v["message"].as_str().is_some()
    };
    let reader = |mut rx: futures_util::stream::SplitStream<Ws>, want: usize| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < want {
                got.push(next(&mut rx).await);
            }
            got
        })
    };
    let a_reads = reader(a_rx, 2 * n);
    let (b_tx, b_rx) = b.split();
    let b_reads = reader(b_rx, n);
    for i in 0..n {
        a_tx.feed(Message::text(format!("pipelined message number {i:05}")))
            .await
            .unwrap();
    }
    a_tx.flush().await.unwrap();
    let a_got = a_reads.await.unwrap();
    let b_got = b_reads.await.unwrap();
    assert_eq!(a_got.iter().filter(|v| count("echo")(v)).count(), n);
    assert_eq!(a_got.iter().filter(|v| count("message")(v)).count(), n);
    // Everyone gets them in the order they were sent.
    for (i, v) in b_got.iter().enumerate() {
        assert_eq!(v["type"], "message", "{v}");
        assert_eq!(v["from"], a_short.as_str());
        assert_eq!(v["message"], format!("pipelined message number {i:05}"));
    }
    drop(b_tx);
    srv.stop().await;
}
