//! permessage-deflate (RFC 7692) over real sockets: what is negotiated, a publication compressed
//! once for every recipient that negotiated it, compressed client messages inflated within
//! the size limit, and every way a client can get it wrong answered with its close code.
//! The client side uses flate2 directly (a raw DEFLATE codec), not the server's own code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;
use wshub::hub::HubConfig;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const AGREED: &str =
    "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The response's extension header, if any (lower-cased).
fn extension(head: &str) -> Option<String> {
    head.lines()
        .map(str::to_ascii_lowercase)
        .find(|l| l.starts_with("sec-websocket-extensions:"))
}

/// Inflates one server message the way a client does (RFC 7692 section 7.2.2).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut z = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(payload.len() * 20 + 1024);
    z.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(z.total_in() as usize, input.len(), "all input used");
    out
}

/// Compresses one client message (a fresh context: client_no_context_takeover).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut z = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    z.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A client that offered compression and had it accepted.
async fn deflate_client(addr: std::net::SocketAddr, path: &str) -> RawClient {
    let (c, head) = RawClient::connect_with(addr, path, OFFER).await;
    assert_eq!(extension(&head).as_deref(), Some(AGREED), "{head}");
    c
}

/// The next data message whose (inflated) text contains `marker`: its first byte and text.
async fn next_with(c: &mut RawClient, marker: &str) -> (u8, String) {
    loop {
        let (first, payload) = c.read_frame_whole().await.expect("connection ended");
        let opcode = first & 0x0F;
        if opcode != 0x1 && opcode != 0x2 {
            continue;
        }
        let text = if first & 0x40 != 0 {
            inflate(&payload)
        } else {
            payload
        };
        let text = String::from_utf8(text).unwrap();
        if text.contains(marker) {
            return (first, text);
        }
    }
}

/// The next data frame containing `marker`, as it was on the wire (not inflated).
async fn raw_with(c: &mut RawClient, marker: &str) -> (u8, Vec<u8>) {
    loop {
        let (first, payload) = c.read_frame_whole().await.expect("connection ended");
        if first & 0x0F != 0x1 {
            continue;
        }
        let text = if first & 0x40 != 0 {
            inflate(&payload)
        } else {
            payload.clone()
        };
        if String::from_utf8_lossy(&text).contains(marker) {
            return (first, payload);
        }
    }
}

/// A JSON message of about `n` bytes, as chat traffic looks.
fn chat(marker: &str, n: usize) -> String {
    let mut lines = Vec::new();
    let mut i = 0;
    while lines.iter().map(|l: &String| l.len()).sum::<usize>() < n {
        lines.push(format!(
            r#"{{"user":"user-{}","text":"message number {i} in the room","at":"2026-11-30T10:00:{:02}Z"}}"#,
            i % 7,
            i % 60
        ));
        i += 1;
    }
    format!(r#"{{"marker":"{marker}","lines":[{}]}}"#, lines.join(","))
}

#[tokio::test]
async fn offers_are_accepted_or_declined_never_failed() {
    let srv = TestServer::start().await;
    for path in ["/ws", "/ws/echo", "/app/app-key?protocol=7"] {
        let (_c, head) = RawClient::connect_with(srv.addr, path, OFFER).await;
        assert_eq!(extension(&head).as_deref(), Some(AGREED), "{path}: {head}");
    }
    // What the server cannot honour is declined: the upgrade still succeeds, uncompressed.
    for offer in [
        "x-webkit-deflate-frame",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
    ] {
        let (_c, head) = RawClient::connect_with(
            srv.addr,
            "/ws",
            &format!("Sec-WebSocket-Extensions: {offer}\r\n"),
        )
        .await;
        assert_eq!(extension(&head), None, "{offer}: {head}");
    }
    // The first acceptable offer wins; a smaller server window is agreed to and echoed.
    let (_c, head) = RawClient::connect_with(
        srv.addr,
        "/ws/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; bogus, permessage-deflate; server_max_window_bits=10\r\n",
    )
    .await;
    assert_eq!(
        extension(&head).as_deref(),
        Some(format!("{AGREED}; server_max_window_bits=10").as_str()),
        "{head}"
    );
    srv.stop().await;

    let off = TestServer::with_config(HubConfig {
        compression: None,
        ..fast_config()
    })
    .await;
    let (_c, head) = RawClient::connect_with(off.addr, "/ws", OFFER).await;
    assert_eq!(extension(&head), None, "compression off: {head}");
    off.stop().await;
}

#[tokio::test]
async fn a_broadcast_is_compressed_once_and_shared_by_every_recipient() {
    let srv = TestServer::start().await;
    let mut packed = Vec::new();
    for _ in 0..20 {
        packed.push(deflate_client(srv.addr, "/ws").await);
    }
    let mut plain = Vec::new();
    for _ in 0..3 {
        plain.push(RawClient::connect(srv.addr, "/ws").await);
    }
    srv.wait_count(23).await;
    let compressions = metric(srv.addr, "wshub_deflate_compressions_total").await;
    let sent = metric(srv.addr, "wshub_deflate_frames_sent_total").await;

    let message = chat("big-one", 3000);
    let body = serde_json::json!({ "message": message }).to_string();
    let res = post_json(srv.addr, "/api/connections/broadcast", &body).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.json()["recipients"], 23);

    let mut wire: Option<Vec<u8>> = None;
    for c in &mut packed {
        let (first, payload) = raw_with(c, "big-one").await;
        assert_eq!(first, 0xC1, "FIN + RSV1 + text");
        match &wire {
            // Encoded once: every compressed recipient got the very same bytes.
            Some(w) => assert_eq!(w, &payload),
            None => wire = Some(payload),
        }
    }
    let wire = wire.unwrap();
    let mut plain_text = None;
    for c in &mut plain {
        let (first, payload) = raw_with(c, "big-one").await;
        assert_eq!(first, 0x81, "plain clients get plain frames");
        plain_text = Some(payload);
    }
    let plain_text = plain_text.unwrap();
    assert_eq!(inflate(&wire), plain_text, "the same message either way");
    assert!(
        wire.len() * 3 < plain_text.len(),
        "{} compressed bytes for {}",
        wire.len(),
        plain_text.len()
    );
    let v: Value = serde_json::from_slice(&plain_text).unwrap();
    assert_eq!(v["message"], message.as_str());
    assert_eq!(
        metric(srv.addr, "wshub_deflate_compressions_total").await - compressions,
        1.0,
        "one compression for 20 recipients"
    );
    assert_eq!(
        metric(srv.addr, "wshub_deflate_frames_sent_total").await - sent,
        20.0
    );

    // Under the threshold: plain for everyone.
    let res = post_json(
        srv.addr,
        "/api/connections/broadcast",
        r#"{"message":"tiny-one"}"#,
    )
    .await;
    assert_eq!(res.status, 200);
    let (first, _) = raw_with(&mut packed[0], "tiny-one").await;
    assert_eq!(first, 0x81);
    srv.stop().await;
}

#[tokio::test]
async fn group_and_pusher_deliveries_are_compressed_per_protocol() {
    let srv = TestServer::start().await;
    // A v1 member through the hub's own protocol...
    let (mut v1, _) = RawClient::connect_with(
        srv.addr,
        "/ws",
        &format!("{OFFER}Sec-WebSocket-Protocol: wshub.v1\r\n"),
    )
    .await;
    v1.send(0x1, br#"{"type":"join","group":"feed","id":"j"}"#)
        .await;
    next_with(&mut v1, r#""id":"j""#).await;
    // ...and a Pusher subscriber of the same stream.
    let mut p = deflate_client(srv.addr, "/app/app-key?protocol=7").await;
    next_with(&mut p, "pusher:connection_established").await;
    p.send(
        0x1,
        br#"{"event":"pusher:subscribe","data":{"channel":"feed"}}"#,
    )
    .await;
    next_with(&mut p, "pusher_internal:subscription_succeeded").await;
    let before = metric(srv.addr, "wshub_deflate_compressions_total").await;

    let message = chat("feed-item", 2000);
    let body = serde_json::json!({ "message": message }).to_string();
    let res = post_json(srv.addr, "/api/groups/feed/broadcast", &body).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    let (first, text) = next_with(&mut v1, "feed-item").await;
    assert_eq!(first, 0xC1);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["offset"].as_u64()),
        (Some("message"), Some(1))
    );
    let (first, text) = next_with(&mut p, "feed-item").await;
    assert_eq!(first, 0xC1);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["channel"], "feed");
    assert_eq!(
        metric(srv.addr, "wshub_deflate_compressions_total").await - before,
        2.0,
        "one compression per protocol"
    );
    srv.stop().await;
}

#[tokio::test]
async fn compressed_client_messages_are_inflated_whole_or_fragmented() {
    let srv = TestServer::start().await;
    let mut a = deflate_client(srv.addr, "/ws").await;
    let mut b = RawClient::connect(srv.addr, "/ws").await;
    srv.wait_count(2).await;
    // A plain client's text is broadcast to everyone: sent compressed, received plain.
    a.send_raw(0xC1, &deflate(b"hello from a compressed client"), true)
        .await;
    let (first, text) = next_with(&mut b, "hello from a compressed client").await;
    assert_eq!(first, 0x81);
    assert!(text.contains(r#""type":"message""#), "{text}");
    // Fragmented: RSV1 on the first frame only.
    let data = deflate(chat("fragmented-one", 1500).as_bytes());
    let (x, y) = data.split_at(data.len() / 2);
    a.send_raw(0x41, x, true).await;
    a.send_raw(0x80, y, true).await;
    next_with(&mut b, "fragmented-one").await;
    assert!(metric(srv.addr, "wshub_deflate_messages_inflated_total").await >= 2.0);

    // The echo endpoint compresses its echoes with the window the client allowed.
    for (offer, window) in [
        ("permessage-deflate", 15u8),
        ("permessage-deflate; server_max_window_bits=9", 9),
    ] {
        let (mut e, _) = RawClient::connect_with(
            srv.addr,
            "/ws/echo",
            &format!("Sec-WebSocket-Extensions: {offer}\r\n"),
        )
        .await;
        let msg = chat("echoed", 4000);
        e.send_raw(0xC1, &deflate(msg.as_bytes()), true).await;
        let (first, payload) = e.read_frame_whole().await.unwrap();
        assert_eq!(first, 0xC1, "window {window}");
        let mut z = Decompress::new_with_window_bits(false, window);
        let mut input = payload.clone();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(msg.len() + 64);
        z.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, msg.as_bytes(), "inflates with a {window}-bit window");
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_compression_bomb_is_closed_1009_and_nobody_else_notices() {
    let srv = TestServer::with_config(HubConfig {
        max_message_size: 64 * 1024,
        // The bystander answers no Ping: it must not be idle-closed meanwhile.
        ..HubConfig::default()
    })
    .await;
    let mut bystander = RawClient::connect(srv.addr, "/ws").await;
    let mut bomber = deflate_client(srv.addr, "/ws").await;
    srv.wait_count(2).await;
    // 16 MiB of zeros in ~16 KiB of DEFLATE: declared small, inflates far past the limit.
    let bomb = deflate(&vec![0u8; 16 << 20]);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    bomber.send_raw(0xC2, &bomb, true).await;
    assert_eq!(bomber.read_close().await, Some(1009));
    let res = post_json(
        srv.addr,
        "/api/connections/broadcast",
        r#"{"message":"still-here"}"#,
    )
    .await;
    assert_eq!(res.status, 200);
    next_with(&mut bystander, "still-here").await;
    srv.stop().await;
}

#[tokio::test]
async fn bad_compressed_data_and_misplaced_rsv1_get_their_close_codes() {
    let srv = TestServer::start().await;
    let mut bad_utf8 = deflate(&[b'a', 0xff, 0xfe]);
    bad_utf8.shrink_to_fit();
    // (what, compression negotiated, frames as (first byte, payload), close code)
    type Case = (&'static str, bool, Vec<(u8, Vec<u8>)>, u16);
    let cases: Vec<Case> = vec![
        (
            "garbage",
            true,
            vec![(0xC1, vec![0xff, 0xff, 0xff, 0x07])],
            1007,
        ),
        ("invalid UTF-8 inside", true, vec![(0xC1, bad_utf8)], 1007),
        (
            "RSV1 not negotiated",
            false,
            vec![(0xC1, deflate(b"hi"))],
            1002,
        ),
        (
            "RSV1 on a continuation",
            true,
            vec![(0x01, b"he".to_vec()), (0xC0, b"llo".to_vec())],
            1002,
        ),
        ("RSV1 on a ping", true, vec![(0xC9, Vec::new())], 1002),
        ("RSV2", true, vec![(0xA1, b"x".to_vec())], 1002),
    ];
    for (what, negotiated, frames, code) in cases {
        let mut c = if negotiated {
            deflate_client(srv.addr, "/ws").await
        } else {
            RawClient::connect(srv.addr, "/ws").await
        };
        for (first, payload) in frames {
            c.send_raw(first, &payload, true).await;
        }
        assert_eq!(c.read_close().await, Some(code), "{what}");
    }
    // The server is fine afterwards.
    let mut ok = deflate_client(srv.addr, "/ws/echo").await;
    ok.send_raw(0xC1, &deflate(b"after all that"), true).await;
    let (first, payload) = ok.read_frame_whole().await.unwrap();
    assert_eq!((first, payload.as_slice()), (0x81, &b"after all that"[..]));
    tokio::time::sleep(Duration::from_millis(10)).await;
    srv.stop().await;
}
