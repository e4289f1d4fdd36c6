//! `/ws/echo`: every message comes back unchanged; no hub announcements.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn echoes_text_and_binary_unchanged() {
    let srv = TestServer::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/echo", srv.addr))
        .await
        .unwrap();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let msgs = [
        Message::text("plain"),
        Message::text("ünïcødé 😀"),
        Message::binary(vec![0u8, 255, 1, 254]),
        Message::binary(big),
        Message::text(""),
    ];
    for m in msgs {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(next_msg(&mut ws).await, m);
    }
    assert_eq!(
        srv.hub.connection_count(),
        0,
        "echo clients are not hub clients"
    );
    srv.stop().await;
}

#[tokio::test]
async fn reassembles_fragmented_messages() {
    let srv = TestServer::start().await;
    let mut raw = RawClient::connect(srv.addr, "/ws/echo").await;
    raw.send_raw(0x01, b"frag", true).await;
    raw.send_raw(0x89, b"p", true).await; // a ping in the middle is answered at once
    raw.send_raw(0x00, b"men", true).await;
    raw.send_raw(0x80, b"ted", true).await;
    assert_eq!(raw.read_frame().await, Some((0xA, b"p".to_vec())));
    assert_eq!(raw.read_frame().await, Some((0x1, b"fragmented".to_vec())));
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_closes_echo_clients_with_1001() {
    let srv = TestServer::start().await;
    let mut raw = RawClient::connect(srv.addr, "/ws/echo").await;
    let hub = srv.hub.clone();
    let stop = tokio::spawn(srv.stop());
    assert_eq!(raw.read_close().await, Some(1001));
    raw.send(0x8, &1001u16.to_be_bytes()).await;
    tokio::time::timeout(WAIT, stop).await.unwrap().unwrap();
    assert!(hub.is_shutting_down());
}
