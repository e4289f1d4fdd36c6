//! # wshub
//!
//! A real-time WebSocket hub: clients connect over WebSocket; the hub echoes and broadcasts
//! their messages; any backend pushes messages to them through a REST API. It runs as a server
//! (`wshub serve`) or mounts into your own axum application ([`router`]).
//!
//! # Layout
//! From the bottom up; a module uses only those above it in this list, never one below (no
//! import cycle):
//!
//! - [`frame`], [`id`], [`problem`], [`metrics`], [`wire`], [`web`], [`tls`], [`apps`],
//!   [`signing`], [`event_loops`], [`outbound`]: leaves. The RFC 6455 wire format (a server frame is
//!   encoded **once** into a shared buffer and handed to every recipient; client frames are
//!   decoded incrementally); connection ids (and their Pusher `socket_id` form); RFC 9457
//!   errors; Prometheus metrics; the types nodes exchange through a backplane (publications,
//!   stream names, connection entries, node ids); the demo page and JavaScript client; TLS;
//!   Pusher apps (id, key, secret, limits) and how their channels map to hub streams;
//!   Pusher's HMAC signatures; the binary's event loops (a single-threaded runtime per core,
//!   each with a cork per turn that the registry's flushes go through); the one HTTP client
//!   every outbound request uses (it follows no redirect).
//! - [`close`], [`envelope`]: close reasons and their codes; the JSON envelopes of plain mode.
//! - [`history`]: offsets, epochs and bounded history per group and for the all-clients
//!   stream (bounded in bytes overall): what lets a reconnecting client recover what it missed.
//! - [`protocol`]: what travels in the frames: the `wshub.v1` subprotocol (commands, acks,
//!   errors, group envelopes) and the Pusher Channels protocol 7 (events, channel kinds, close
//!   codes).
//! - [`manager`]: the thread-safe registry of connections, generic over the [`manager::Sink`]
//!   trait it defines.
//! - [`outbox`]: a connection's outbound queue, bounded in frames and bytes, the registry's
//!   sink. Pushing never waits; a full queue makes the connection a slow consumer (1008).
//!   What a turn queued for a socket leaves in one `send` (small frames gathered first).
//!   Also the connections' one timer ([`outbox::Sweep`]), which wakes each connection through
//!   the waker its outbox keeps.
//! - [`auth`]: the REST API key, JWT connection authentication, the Origin allow-list.
//! - [`webhooks`]: webhooks in Pusher's format (per app) and wshub's (Standard Webhooks
//!   signatures): bounded queues, batching, signing, retries.
//! - [`hooks`]: authorization hooks: the backend asked at connect, join and publish
//!   (fail-closed, timed out, metered).
//! - [`backplane`]: scale-out over Redis, NATS or an in-process bus: the engines, the node's publisher,
//!   subscriber and entry keeper. It calls the hub back only through the
//!   [`backplane::Handler`] trait it defines.
//! - [`hub`]: the handle every message goes through: register, announce, echo, broadcast,
//!   groups, Pusher sessions (subscriptions, cluster-wide presence and occupancy, client
//!   events, sign-in), the one publish entry ([`Hub::publish_to`]: a target, a message,
//!   options), the one delivery path for what any protocol or node publishes, and
//!   `hub::Peer`, the protocol session every transport drives.
//! - [`transport`]: the transports, which move a `Peer`'s frames and know nothing of its
//!   protocol: the WebSocket upgrades (`/ws`, `/ws/echo`, Pusher's `/app/{key}`) and the
//!   per-connection task, a hand-written poll (reader, batched writer, keep-alive, closing
//!   handshake); the HTTP sessions (`/v1/sse`, `/v1/poll`, `/events`, Pusher's
//!   `xhr_streaming` and `xhr_polling`), relayed to the session's node from any other.
//! - [`api`]: the REST companion API, Pusher's signed HTTP API (`/apps/{id}/…`), the OpenAPI
//!   document and Swagger UI.
//! - [`config`], [`server`]: options, the accept loop (handing connections to the event
//!   loops) with graceful shutdown.
//!
//! # Embedding
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let hub = wshub::Hub::new(wshub::HubConfig::default());
//! let app = axum::Router::new().merge(wshub::router(hub.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! use wshub::hub::{Message, Target};
//! hub.publish_to(Target::All, Message::Text("hello from the backend"), &Default::default())
//!     .await
//!     .ok();
//! wshub::server::run(listener, hub, app, Default::default(), std::future::pending()).await
//! # }
//! ```

pub mod api;
pub mod apps;
pub mod auth;
pub mod backplane;
pub mod close;
pub mod config;
pub mod envelope;
pub mod event_loops;
pub mod frame;
pub mod history;
pub mod hooks;
pub mod hub;
pub mod id;
pub mod manager;
pub mod metrics;
pub mod outbound;
pub mod outbox;
pub mod problem;
pub mod protocol;
pub mod server;
pub mod signing;
pub mod tls;
pub mod transport;
pub mod web;
pub mod webhooks;
pub mod wire;

pub use close::CloseReason;
pub use hub::{Hub, HubConfig};
pub use id::ConnId;

use axum::routing::get;

/// Every wshub route, ready to serve or to merge into another application: `/ws`, `/ws/echo`,
/// the HTTP transports (`/events`, `/v1/sse`, `/v1/poll`, `/v1/sessions/*`, Pusher's
/// `/pusher/app/*` fallbacks), `/app/{key}` and `/apps/*` (Pusher), `/api/*`, `/openapi.json`, `/swagger`, `/healthz`, the demo page `/`, `/client.js`, and a
/// problem+json 404 fallback.
///
/// Serve it with [`server::run`], or with `axum::serve` using
/// `into_make_service_with_connect_info::<SocketAddr>()` so connections know their peer.
pub fn router(hub: Hub) -> axum::Router {
    // The HTTP sessions of this router; requests for them that reach another node of the
    // cluster are relayed here.
    let sessions = transport::Sessions::default();
    hub.serve_relayed(transport::SessionsService::new(&hub, sessions.clone()));
    // The HTTP transports, which pages on other origins reach with `fetch`, `EventSource` and
    // XHRs (CORS).
    // (Each route answers OPTIONS, so that the CORS layer sees the preflight: a layer wraps
    // what a route answers, not its 405.)
    let preflight = || async { axum::http::StatusCode::NO_CONTENT };
    let http_transports = axum::Router::new()
        .route("/events", get(transport::events_handler).options(preflight))
        .route("/v1/sse", get(transport::sse_handler).options(preflight))
        .route(
            "/v1/poll",
            get(transport::poll_open_handler).options(preflight),
        )
        .route(
            "/v1/poll/{session}",
            get(transport::poll_handler).options(preflight),
        )
        .route(
            "/v1/sessions/{session}",
            axum::routing::post(transport::session_post_handler)
                .delete(transport::session_close_handler)
                .options(preflight),
        )
        .route(
            "/pusher/app/{key}/{server}/{session}/{transport}",
            axum::routing::post(transport::pusher_http_handler).options(preflight),
        )
        .route(
            "/app/{key}/{server}/{session}/{transport}",
            axum::routing::post(transport::pusher_http_handler).options(preflight),
        )
        .layer(transport::cors(&hub));
    axum::Router::new()
        .route("/ws", get(transport::ws_handler))
        .route("/ws/echo", get(transport::echo_handler))
        .route("/app/{key}", get(transport::pusher_handler))
        .merge(http_transports)
        .route("/", get(web::index))
        .route("/client.js", get(web::client_js))
        .route("/client.d.ts", get(web::client_dts))
        .route("/favicon.ico", get(web::favicon))
        .merge(api::routes(hub.clone()))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::map_response(api::trailing_newline))
        .layer(axum::Extension(sessions))
        .with_state(hub)
}
