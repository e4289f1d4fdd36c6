//! WebSocket transport: the upgrade handshake ([`upgrade`]), the per-connection task
//! (`connection`: reader, keep-alive, closing handshake) and its batched writer (`writer`).

mod admission;
mod connection;
mod events;
mod sse;
pub mod upgrade;
mod writer;

pub use events::events_handler;
pub use upgrade::{echo_handler, pusher_handler, ws_handler};
