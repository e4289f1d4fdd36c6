//! `/api/connections`: list the live connections, push a broadcast (SPEC 1.3).

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::envelope::Timestamp;
use crate::hub::Hub;
use crate::problem::Problem;

use super::json_body;

/// One live connection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// The connection id: 32 lowercase hex characters.
    #[schema(example = "a1b2c3d4e5f60718293a4b5c6d7e8f90")]
    pub id: String,
    /// The first 8 characters of the id, as used in messages.
    #[schema(example = "a1b2c3d4")]
    pub short_id: String,
    /// When the connection was accepted (RFC 3339, UTC).
    #[schema(example = "2026-06-13T06:00:00Z")]
    pub connected_at: String,
    /// The peer's address, when known.
    #[schema(example = "127.0.0.1:53412")]
    pub remote_addr: Option<String>,
    /// Frames waiting in the connection's outbound queue.
    pub queued: usize,
}

/// Every live connection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectionList {
    /// How many connections there are.
    pub count: usize,
    /// The connections, oldest first.
    pub connections: Vec<Connection>,
}

/// A message to push to every client.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"message": "Server is restarting in 5 minutes."}))]
pub struct BroadcastRequest {
    /// The text; must not be empty or whitespace only.
    pub message: Option<String>,
}

/// The outcome of a broadcast.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BroadcastResult {
    /// How many connections the message was queued for.
    pub recipients: usize,
}

/// List active connections.
#[utoipa::path(
    get,
    path = "/api/connections",
    tag = "connections",
    responses((status = 200, description = "The active connections", body = ConnectionList))
)]
pub async fn list(State(hub): State<Hub>) -> Json<ConnectionList> {
    let connections: Vec<Connection> = hub
        .connections(None, None)
        .into_iter()
        .map(|c| Connection {
            id: c.id.to_string(),
            short_id: c.id.short(),
            connected_at: Timestamp::from(c.connected_at).as_str().to_owned(),
            remote_addr: c.remote_addr.map(|a| a.to_string()),
            queued: c.queued,
        })
        .collect();
    Json(ConnectionList {
        count: connections.len(),
        connections,
    })
}

/// Push a message to every connected client, as a `server-broadcast` envelope.
#[utoipa::path(
    post,
    path = "/api/connections/broadcast",
    tag = "connections",
    request_body(content = BroadcastRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Queued for every client", body = BroadcastResult),
        (status = 400, description = "Missing, empty or whitespace message; malformed JSON; wrong content type",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn broadcast(
    State(hub): State<Hub>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BroadcastResult>, Problem> {
    let req: BroadcastRequest = json_body(&headers, body)?;
    let message = req
        .message
        .ok_or_else(|| Problem::bad_request("`message` is required"))?;
    if message.trim().is_empty() {
        return Err(Problem::bad_request(
            "`message` must not be empty or whitespace",
        ));
    }
    let recipients = hub.broadcast_text(&message);
    Ok(Json(BroadcastResult { recipients }))
}
