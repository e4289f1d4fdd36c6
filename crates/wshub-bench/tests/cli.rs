//! The load generator against a real server, small and bounded: its counts must reconcile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The workspace's test fixtures (a real server on port 0), shared rather than copied.
#[path = "../../../tests/common/mod.rs"]
mod common;

use common::*;
use wshub::HubConfig;

async fn bench(args: &[&str]) -> serde_json::Value {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wshub-bench"))
            .args(args)
            .arg("--json")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn announce_none() -> HubConfig {
    HubConfig {
        announce: false,
        shutdown_timeout: std::time::Duration::from_secs(1),
        ..HubConfig::default()
    }
}

#[tokio::test]
async fn fanout_over_ws_delivers_every_message_exactly_once() {
    let srv = TestServer::with_config(announce_none()).await;
    let url = srv.ws_url();
    let r = bench(&[
        "fanout",
        "--url",
        &url,
        "-n",
        "50",
        "--duration",
        "1s",
        "--window",
        "4",
    ])
    .await;
    assert_eq!(r["connected"], 50);
    assert!(r["sent"].as_u64().unwrap() > 0);
    assert_eq!(r["delivered"], r["expected"], "{r}");
    assert_eq!(r["lost"], 0);
    assert_eq!(r["latency"]["samples"], r["delivered"]);
    srv.stop().await;
}

#[tokio::test]
async fn fanout_over_rest_at_a_fixed_rate() {
    let srv = TestServer::start().await; // with announcements: they must not be counted
    let url = srv.ws_url();
    let r = bench(&[
        "fanout",
        "--url",
        &url,
        "-n",
        "20",
        "--duration",
        "1s",
        "--rate",
        "50",
        "--via",
        "rest",
    ])
    .await;
    let sent = r["sent"].as_u64().unwrap();
    assert!((30..=70).contains(&sent), "{r}");
    assert_eq!(r["delivered"].as_u64().unwrap(), sent * 20);
    srv.stop().await;
}

#[tokio::test]
async fn echo_and_connect_report_sane_numbers() {
    let srv = TestServer::with_config(announce_none()).await;
    let url = srv.ws_url();
    let r = bench(&["echo", "--url", &url, "-c", "4", "--duration", "1s"]).await;
    assert!(r["per_sec"].as_f64().unwrap() > 0.0, "{r}");
    let pid = std::process::id().to_string();
    let r = bench(&[
        "connect",
        "--url",
        &url,
        "-n",
        "200",
        "--hold",
        "200ms",
        "--server-pid",
        &pid,
    ])
    .await;
    assert_eq!(r["connected"], 200, "{r}");
    // The server is this test process, which other tests share: its RSS may fall meanwhile
    // (they give memory back). The generator then says so instead of giving a figure.
    let fell = r["warnings"].as_array().is_some_and(|w| {
        w.iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("RSS fell")))
    });
    assert!(r["rss_per_connection"].is_number() || fell, "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn refuses_non_loopback_targets_and_unbounded_runs() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wshub-bench"))
        .args(["echo", "--url", "ws://192.0.2.1:80/ws"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wshub-bench"))
        .args(["fanout", "--duration", "1h"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// With announcements on and clients that do not read while the others connect, the server
/// closes some as slow consumers: the report says so and gives no memory figure it cannot
/// stand behind.
#[tokio::test]
async fn connect_refuses_a_memory_figure_when_the_server_closed_clients() {
    let srv = TestServer::with_config(HubConfig {
        announce: true,
        max_send_buffer: 2048,
        shutdown_timeout: std::time::Duration::from_secs(1),
        ..HubConfig::default()
    })
    .await;
    let url = srv.ws_url();
    let pid = std::process::id().to_string();
    let r = bench(&[
        "connect",
        "--url",
        &url,
        "-n",
        "300",
        "--hold",
        "1s",
        "--server-pid",
        &pid,
    ])
    .await;
    assert!(r["closed_by_server"].as_u64().unwrap() > 0, "{r}");
    assert!(r.get("rss_per_connection").is_none(), "{r}");
    let w = r["warnings"][0].as_str().unwrap();
    assert!(
        w.contains("closed by the server") && w.contains("--announce none"),
        "{w}"
    );
    srv.stop().await;

    // Without announcements nobody is closed and the figure is given (never negative).
    let srv = TestServer::with_config(announce_none()).await;
    let url = srv.ws_url();
    let r = bench(&[
        "connect",
        "--url",
        &url,
        "-n",
        "300",
        "--hold",
        "1s",
        "--server-pid",
        &pid,
    ])
    .await;
    assert_eq!(r["closed_by_server"], 0, "{r}");
    assert_eq!(r["connected"], 300);
    if let Some(p) = r["rss_per_connection"].as_f64() {
        assert!(p >= 0.0);
    } else {
        assert!(
            r["warnings"][0].as_str().unwrap().contains("RSS fell"),
            "{r}"
        );
    }
    srv.stop().await;
}
