//! Operations: /metrics, /readyz, connection and body limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use wshub::HubConfig;

/// Parses the OpenMetrics text into `name{labels}` → value, checking every line's shape.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        out.insert(key.to_owned(), v);
    }
    out
}

fn config() -> HubConfig {
    HubConfig {
        shutdown_timeout: Duration::from_secs(1),
        ..HubConfig::default()
    }
}

#[tokio::test]
async fn metrics_follow_the_traffic() {
    let srv = TestServer::with_config(config()).await;
    let (mut a, _) = connect(&srv.ws_url()).await;
    let (b, _) = connect(&srv.ws_url()).await;
    send_text(&mut a, "hello").await;
    next_json_where(&mut a, |v| v["type"] == "message").await;
    drop(b);
    srv.wait_count(1).await;
    post_json(srv.addr, "/api/connections/broadcast", r#"{"message":"x"}"#).await;
    let r = http(srv.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let m = parse_metrics(&String::from_utf8(r.body).unwrap());
    assert_eq!(m["wshub_connections"], 1.0);
    assert_eq!(m["wshub_connects_total"], 2.0);
    assert_eq!(m["wshub_messages_in_total"], 1.0);
    assert_eq!(m["wshub_bytes_in_total"], 5.0);
    // joins (1 + 2), echo + message to 2, the leave to 1, the broadcast to 1.
    assert!(m["wshub_deliveries_total"] >= 7.0, "{m:?}");
    assert!(m["wshub_bytes_out_total"] > 0.0);
    let disc: Vec<_> = m
        .iter()
        .filter(|(k, _)| k.starts_with("wshub_disconnects_total"))
        .collect();
    // The dropped client had unread frames, so its kernel answered with a reset.
    assert_eq!(disc.len(), 1, "{disc:?}");
    assert!(
        disc[0].0.contains("io_error") || disc[0].0.contains("dropped"),
        "{disc:?}"
    );
    assert_eq!(m["wshub_backplane_up"], 1.0);
    assert!(m["wshub_fanout_seconds_count"] >= 1.0);
    assert_eq!(
        m["wshub_http_requests_total{route=\"/api/connections/broadcast\",method=\"POST\",status=\"200\"}"],
        1.0,
        "{m:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn readyz_turns_503_when_shutting_down() {
    let srv = TestServer::with_config(config()).await;
    assert_eq!(http(srv.addr, "GET", "/readyz", &[], b"").await.status, 200);
    let app = wshub::router(srv.hub.clone());
    srv.hub.shutdown();
    use tower::ServiceExt;
    let res = app
        .oneshot(
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    srv.stop().await;
}

#[tokio::test]
async fn max_connections_refuses_with_503_before_the_upgrade() {
    let srv = TestServer::with_config(HubConfig {
        max_connections: Some(2),
        ..config()
    })
    .await;
    let _a = connect(&srv.ws_url()).await;
    let _b = connect(&srv.ws_url()).await;
    let r = http(
        srv.addr,
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(r.header("retry-after").is_some());
    // Once one leaves, a new one fits.
    drop(_a);
    srv.wait_count(1).await;
    let _c = connect(&srv.ws_url()).await;
    srv.stop().await;
}

#[tokio::test]
async fn request_body_limit_is_configurable() {
    let srv = TestServer::with_config(HubConfig {
        max_request_body: 1024,
        ..config()
    })
    .await;
    let body = format!(r#"{{"message":"{}"}}"#, "x".repeat(2000));
    let r = post_json(srv.addr, "/api/connections/broadcast", &body).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        post_json(
            srv.addr,
            "/api/connections/broadcast",
            r#"{"message":"small"}"#
        )
        .await
        .status,
        200
    );
    srv.stop().await;
}

fn limited(action: wshub::hub::RateLimitAction) -> HubConfig {
    HubConfig {
        rate_limit: Some(wshub::hub::RateLimit {
            // One token per 100 s: no refill during the test, however slow the machine.
            per_second: 0.01,
            burst: 3,
            action,
        }),
        ..config()
    }
}

#[tokio::test]
async fn rate_limit_error_drops_the_excess_and_keeps_the_connection() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let srv = TestServer::with_config(limited(wshub::hub::RateLimitAction::Error)).await;
    let mut req = srv.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "wshub.v1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    next_json(&mut ws).await; // welcome
    for i in 0..8 {
        send_text(&mut ws, &format!(r#"{{"id":{i},"type":"ping"}}"#)).await;
    }
    let mut acks = 0;
    let mut limited = 0;
    for i in 0..8 {
        let v = next_json(&mut ws).await;
        assert_eq!(v["id"], i, "replies keep their order and ids: {v}");
        match v["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert_eq!(v["code"], "rate_limited");
                limited += 1;
            }
            _ => panic!("{v}"),
        }
    }
    assert_eq!((acks, limited), (3, 5));
    let m = http(srv.addr, "GET", "/metrics", &[], b"").await;
    assert!(String::from_utf8(m.body)
        .unwrap()
        .contains("wshub_drops_total{reason=\"rate_limited\"} 5"));
    srv.stop().await;
}

#[tokio::test]
async fn rate_limit_close_closes_with_1008() {
    let srv = TestServer::with_config(limited(wshub::hub::RateLimitAction::Close)).await;
    let (mut ws, _) = connect(&srv.ws_url()).await;
    for _ in 0..6 {
        send_text(&mut ws, "spam").await;
    }
    assert_eq!(next_close(&mut ws).await, Some(1008));
    srv.stop().await;
}

/// The event loops' own threads, by their name in /proc (loop 0 is the main thread).
fn loop_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("wshub-loop-"))
        .count()
}

#[tokio::test]
async fn workers_sets_the_event_loops_and_one_loop_serves_everything() {
    let (mut one, addr) = spawn_server(&["--workers", "1"]).await;
    let (mut three, _) = spawn_server_env(&[], &[("WSHUB_WORKERS", "3")]).await;
    assert_eq!(loop_threads(one.id().unwrap()), 0);
    assert_eq!(loop_threads(three.id().unwrap()), 2);
    // One worker carries several clients' echo and broadcast.
    let url = format!("ws://{addr}/ws");
    let (mut a, _) = connect(&url).await;
    let (mut b, _) = connect(&url).await;
    send_text(&mut a, "hello").await;
    for ws in [&mut a, &mut b] {
        let v = next_json_where(ws, |v| v["type"] == "message").await;
        assert_eq!(v["message"], "hello", "{v}");
    }
    one.kill().await.unwrap();
    three.kill().await.unwrap();
}

#[tokio::test]
async fn connections_past_a_full_loop_go_to_the_next_and_reach_everyone() {
    let (mut srv, addr) = spawn_server(&["--workers", "2", "--announce", "none"]).await;
    // Loop 0 takes connections until it runs FILL tasks; the rest are handed to loop 1
    // (their sockets move to its reactor).
    let n = wshub::event_loops::FILL + 64;
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(RawClient::connect(addr, "/ws").await);
    }
    for (who, text) in [(n - 1, "from the last"), (0, "from the first")] {
        clients[who].send(0x1, text.as_bytes()).await;
        for (i, c) in clients.iter_mut().enumerate() {
            let (op, payload) = c.read_frame().await.expect("a frame");
            assert_eq!(op, 0x1);
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let want = if i == who { "echo" } else { "message" };
            assert_eq!(v["type"], want, "client {i}: {v}");
            assert_eq!(v["message"], text);
            if i == who {
                // Its own copy of the broadcast follows the echo.
                let (_, payload) = c.read_frame().await.expect("the broadcast");
                let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(v["type"], "message", "{v}");
            }
        }
    }
    srv.kill().await.unwrap();
}
