//! # wshub
//!
//! A real-time WebSocket hub: clients connect over WebSocket; the hub echoes and broadcasts
//! their messages; any backend pushes messages to them through a REST API. It runs as a server
//! (`wshub serve`) or mounts into your own axum application ([`router`]).
//!
//! # Layout
//! The data path, from the bottom up (arrows point to what a module uses; none point back):
//!
//! - [`frame`]: the RFC 6455 wire format. A server frame is encoded **once** into a shared
//!   buffer ([`frame::Frame`]) and handed to every recipient; client frames are decoded
//!   incrementally.
//! - [`id`], [`close`], [`envelope`], [`problem`]: leaf types: connection ids, close reasons and
//!   their codes, the JSON envelopes of SPEC 1.2, RFC 9457 errors.
//! - [`protocol`]: the `wshub.v1` subprotocol: commands, acks, errors, group envelopes.
//! - [`outbox`]: a connection's bounded outbound queue. Pushing never waits; a full queue makes
//!   the connection a slow consumer, closed with 1008.
//! - [`manager`]: the thread-safe registry of connections, generic over a sink trait.
//! - [`hub`]: the handle every message goes through: register, announce, echo, broadcast.
//! - [`transport`]: the upgrade handshake and the per-connection task (reader, batched
//!   writer, keep-alive, closing handshake).
//! - [`api`]: the REST companion API, OpenAPI document and Swagger UI.
//! - [`auth`]: the REST API key, JWT connection authentication, the Origin allow-list.
//! - [`metrics`]: Prometheus metrics of one hub.
//! - [`history`]: offsets, epochs and bounded history per group and for the all-clients
//!   stream: what lets a reconnecting client recover what it missed.
//! - [`backplane`]: scale-out: publications, offsets, history and connection entries shared
//!   by several nodes through Redis.
//! - [`web`]: the demo page at `/` and the JavaScript client at `/client.js`, from the binary.
//! - [`config`], [`server`], [`tls`]: options, the accept loop with graceful shutdown, TLS.
//!
//! # Embedding
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let hub = wshub::Hub::new(wshub::HubConfig::default());
//! let app = axum::Router::new().merge(wshub::router(hub.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! hub.broadcast_text("hello from the backend");
//! wshub::server::run(listener, hub, app, Default::default(), std::future::pending()).await
//! # }
//! ```

pub mod api;
pub mod auth;
pub mod backplane;
pub mod close;
pub mod config;
pub mod envelope;
pub mod frame;
pub mod history;
pub mod hub;
pub mod id;
pub mod manager;
pub mod metrics;
pub mod outbox;
pub mod problem;
pub mod protocol;
pub mod server;
pub mod tls;
pub mod transport;
pub mod web;

pub use close::CloseReason;
pub use hub::{Hub, HubConfig};
pub use id::ConnId;

use axum::routing::get;

/// Every wshub route, ready to serve or to merge into another application: `/ws`, `/ws/echo`,
/// `/api/*`, `/openapi.json`, `/swagger`, `/healthz`, the demo page `/`, `/client.js`, and a
/// problem+json 404 fallback.
///
/// Serve it with [`server::run`], or with `axum::serve` using
/// `into_make_service_with_connect_info::<SocketAddr>()` so connections know their peer.
pub fn router(hub: Hub) -> axum::Router {
    axum::Router::new()
        .route("/ws", get(transport::ws_handler))
        .route("/ws/echo", get(transport::echo_handler))
        .route("/", get(web::index))
        .route("/client.js", get(web::client_js))
        .route("/client.d.ts", get(web::client_dts))
        .route("/favicon.ico", get(web::favicon))
        .merge(api::routes(hub.clone()))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::map_response(api::trailing_newline))
        .with_state(hub)
}
