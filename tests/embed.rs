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
