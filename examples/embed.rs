//! Run with `cargo run --example embed`, then in other terminals:
//!
//! ```text
//! websocat ws://127.0.0.1:3000/ws
//! curl -X POST 127.0.0.1:3000/orders -H 'content-type: application/json' -d '{"item":"pizza"}'
//! ```
//!
//! An application with routes of its own mounts wshub next to them, and pushes to every
//! WebSocket client from its own handler through the shared [`wshub::Hub`] handle. It is served
//! by plain `axum::serve`: wshub needs nothing of its own server.

use std::net::SocketAddr;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use wshub::{Hub, HubConfig};

#[derive(Deserialize)]
struct Order {
    item: String,
}

/// The application's own handler: store the order (elided), then tell every client.
async fn new_order(State(hub): State<Hub>, Json(order): Json<Order>) -> String {
    let recipients = hub.broadcast_text(&format!("New order: {}", order.item));
    format!("order taken; {recipients} clients notified\n")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().init();
    let hub = Hub::new(HubConfig::default());
    let app = Router::new()
        .route("/", get(|| async { "my application\n" }))
        .route("/orders", post(new_order))
        .with_state(hub.clone())
        // /ws, /ws/echo, /api/*, /openapi.json, /swagger, /healthz
        .merge(wshub::router(hub.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let shutdown_hub = hub.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = tokio::signal::ctrl_c().await;
        // axum's graceful shutdown does not reach upgraded sockets: close them ourselves.
        shutdown_hub.shutdown();
    })
    .await?;
    hub.wait_closed(hub.config().shutdown_timeout).await;
    Ok(())
}
