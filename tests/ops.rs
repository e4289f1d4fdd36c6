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
