//! Library use: wshub mounted in another axum application, served by `axum::serve`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use common::*;
use wshub::{Hub, HubConfig};

async fn push(State(hub): State<Hub>, body: String) -> String {
    hub.broadcast_text(&body).to_string()
}

#[tokio::test]
async fn mounted_in_another_app_and_pushed_from_its_handler() {
    let hub = Hub::new(HubConfig::default());
    let app = Router::new()
        .route("/my/push", post(push))
        .with_state(hub.clone())
        .merge(wshub::router(hub.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let (mut ws, _) = connect(&format!("ws://{addr}/ws")).await;
    let res = http(
        addr,
        "POST",
        "/my/push",
        &[("Content-Type", "text/plain")],
        b"from the app",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(String::from_utf8_lossy(&res.body), "1");
    let v = next_json_where(&mut ws, |v| v["type"] == "server-broadcast").await;
    assert_eq!(v["message"], "from the app");
    // The hub's own routes work there too.
    send_text(&mut ws, "hi").await;
    assert_eq!(next_json(&mut ws).await["type"], "echo");
    let list = http(addr, "GET", "/api/connections", &[], b"").await.json();
    assert!(list["connections"][0]["remoteAddr"].is_string());
    server.abort();
}

/// The example itself (`cargo run --example embed`), built by `cargo test` next to the tests:
/// started, connected to, pushed through its own route, and stopped.
#[tokio::test]
async fn the_embed_example_runs_and_pushes_from_its_own_route() {
    use tokio::io::AsyncBufReadExt as _;
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join("embed");
    assert!(example.exists(), "{} not built", example.display());
    let mut child = tokio::process::Command::new(&example)
        .env("EMBED_LISTEN", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("example exited");
            if let Some(a) = line.strip_prefix("listening on http://") {
                return a.trim().parse().unwrap();
            }
        }
    })
    .await
    .expect("the example did not start");
    let (mut ws, _) = connect(&format!("ws://{addr}/ws")).await;
    let res = post_json(addr, "/orders", r#"{"item":"pizza"}"#).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&res.body),
        "order taken; 1 clients notified\n"
    );
    let v = next_json_where(&mut ws, |v| v["type"] == "server-broadcast").await;
    assert_eq!(v["message"], "New order: pizza");
    let page = http(addr, "GET", "/shop", &[], b"").await;
    assert_eq!(page.status, 200);
    let demo = http(addr, "GET", "/", &[], b"").await;
    assert_eq!(demo.status, 200);
    child.kill().await.unwrap();
}
