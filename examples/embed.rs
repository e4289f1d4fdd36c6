//! Run with `cargo run --example embed` (another address: `EMBED_LISTEN=127.0.0.1:0`), then in
//! other terminals:
//!
//! ```text
//! websocat ws://127.0.0.1:3000/ws
//! curl -X POST 127.0.0.1:3000/orders -H 'content-type: application/json' -d '{"item":"pizza"}'
//! ```
//!
//! wshub's router brings its own `/` (the demo page): the application's own page lives at
//! `/shop` here (axum refuses two handlers for one route).
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
        .route("/shop", get(|| async { "my application\n" }))
        .route("/orders", post(new_order))
        .with_state(hub.clone())
        // /ws, /ws/echo, /api/*, /openapi.json, /swagger, /healthz, / (demo page), /client.js
        .merge(wshub::router(hub.clone()));
    let addr = std::env::var("EMBED_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
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
