//! WebSocket transport: the upgrade handshake ([`upgrade`]), the per-connection task
//! (`connection`: reader, keep-alive, closing handshake) and its batched writer (`writer`).

mod admission;
mod bucket;
mod connection;
mod events;
mod http;
mod pusher_http;
mod relay;
mod session;
mod sse;
pub mod upgrade;
mod writer;

pub use admission::cors;
pub use events::events_handler;
pub(crate) use http::SessionsService;
pub use http::{
    poll_handler, poll_open_handler, session_close_handler, session_post_handler, sse_handler,
};
pub use pusher_http::pusher_http_handler;
pub use session::Sessions;
pub use upgrade::{echo_handler, pusher_handler, ws_handler};
