//! `/api/connections`: list the live connections, push a broadcast (README, "REST API").

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
    /// The authenticated user (the token's `sub`), if any.
    pub user: Option<String>,
    /// The groups it is a member of.
    pub groups: Vec<String>,
    /// `plain` (no subprotocol: plain mode) or `wshub.v1`.
    #[schema(example = "wshub.v1")]
    pub protocol: String,
    /// The id of the node that holds the connection.
    #[schema(example = "5d1e09aa")]
    #[serde(default)]
    pub node: String,
}

/// Live connections, a page at a time.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectionList {
    /// How many connections match the filter (all pages together).
    pub count: usize,
    /// This page of them, oldest first.
    pub connections: Vec<Connection>,
    /// Where the next page starts (`?cursor=`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The default and largest page of `GET /api/connections`.
pub const PAGE: usize = 1000;
/// The largest page a request may ask for.
pub const MAX_PAGE: usize = 10_000;

/// Where a connection stands in the listing's order, as a cursor.
fn cursor_of(c: &crate::wire::ConnectionEntry) -> String {
    format!("{}_{}", c.connected_at, c.id)
}

/// A message to push to every client.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"message": "Server is restarting in 5 minutes."}))]
pub struct BroadcastRequest {
    /// The text; must not be empty or whitespace only.
    #[schema(value_type = String, required = true, min_length = 1, pattern = "\\S")]
    pub message: Option<String>,
}

/// The outcome of a broadcast.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BroadcastResult {
    /// How many connections the message was queued for. Absent in a cluster: connections on
    /// other nodes are not counted (a publish never reads the whole cluster's listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<usize>,
    /// Its offset in the all-clients stream (see `GET /api/history`).
    pub offset: u64,
}

/// List active connections, optionally only a group's members or a user's connections.
#[utoipa::path(
    get,
    path = "/api/connections",
    tag = "connections",
    params(ListFilter),
    responses(
        (status = 200, description = "The active connections, a page at a time", body = ConnectionList),
        (status = 400, description = "Bad `limit` or `cursor`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(hub): State<Hub>,
    query: Result<Query<ListFilter>, QueryRejection>,
) -> Result<Json<ConnectionList>, Problem> {
    let Query(f) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = f.limit.unwrap_or(PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "`limit` is 1 to {MAX_PAGE} (default {PAGE})"
        )));
    }
    let mut all = hub
        .list_connections(f.group.as_deref(), f.user.as_deref())
        .await
        .map_err(unavailable)?;
    // In the cursor's own order (times to the second, then ids), so a page starts exactly
    // after the previous one.
    all.sort_by(|a, b| (&a.connected_at, &a.id).cmp(&(&b.connected_at, &b.id)));
    let count = all.len();
    // Oldest first: a cursor is the position of the last one seen, so a page is the same
    // whether or not connections before it came and went.
    let start = match f.cursor.as_deref() {
        None => 0,
        Some(c) => {
            if c.rsplit_once('_')
                .is_none_or(|(at, id)| at.is_empty() || id.len() != 32)
            {
                return Err(Problem::bad_request(
                    "`cursor` is the `next` value of a previous page",
                ));
            }
            all.partition_point(|e| cursor_of(e).as_str() <= c)
        }
    };
    let page: Vec<_> = all.into_iter().skip(start).take(limit).collect();
    let next = (start + page.len() < count)
        .then(|| page.last().map(cursor_of))
        .flatten();
    Ok(Json(ConnectionList {
        count,
        connections: page.into_iter().map(Connection::from).collect(),
        next,
    }))
}

/// 429 (with `Retry-After`) for a publication the backplane's queue could not take.
pub(crate) fn busy(e: crate::hub::Busy) -> Problem {
    Problem::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
}

/// A publication that was not published: 429 when the backplane's queue is full, 503 when
/// this node cannot reach it; both with `Retry-After: 1`.
pub(crate) fn not_published(e: crate::hub::NotPublished) -> Problem {
    match e {
        crate::hub::NotPublished::Busy(b) => busy(b),
        crate::hub::NotPublished::Unreachable => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).retry_after(1)
        }
    }
}

/// A publication not made, as problem+json: 429/503 (nothing published), 404 (no such
/// connection), 503 (the backplane unreadable), 400 (a message the target cannot carry).
pub(crate) fn publish_failed(e: crate::hub::PublishError) -> Problem {
    use crate::hub::PublishError as E;
    match e {
        E::NotPublished(n) => not_published(n),
        E::NoSuchConnection(_) => Problem::not_found(e.to_string()),
        E::Unavailable(b) => unavailable(b),
        E::Invalid(why) => Problem::bad_request(why),
    }
}

/// 503 for a backplane that cannot be read.
pub(crate) fn unavailable(e: crate::backplane::BackplaneError) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
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
        (status = 429, description = "In a cluster: the backplane is not keeping up; nothing was published (`Retry-After: 1`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "In a cluster: this node cannot reach the backplane (starting, or cut off); nothing was published (`Retry-After: 1`)", body = Problem, content_type = "application/problem+json"),
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
    let done = hub
        .publish_to(
            crate::hub::Target::All,
            crate::hub::Message::Text(&message),
            &Default::default(),
        )
        .await
        .map_err(publish_failed)?;
    Ok(Json(BroadcastResult {
        recipients: done.recipients,
        offset: done.offset.unwrap_or(0),
    }))
}

/// Filters of `GET /api/connections`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFilter {
    /// Only the members of this group.
    pub group: Option<String>,
    /// Only the connections of this user.
    pub user: Option<String>,
    /// Connections per page: 1 to 10,000 (default 1,000).
    pub limit: Option<usize>,
    /// The `next` value of the previous page.
    pub cursor: Option<String>,
}

/// Options of `DELETE /api/connections/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CloseParams {
    /// The close code (default 1000): 1000–1003, 1007–1014, or an application code 3000–4999.
    #[param(schema_with = close_code_schema)]
    pub code: Option<u16>,
    /// The close reason (at most 123 bytes are sent).
    pub reason: Option<String>,
}

/// A message for one connection, a group or a user.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"message": {"text": "hello", "n": 1}}))]
pub struct MessageBody {
    /// Any JSON value but `null`, forwarded verbatim.
    #[schema(schema_with = any_but_null, required = true)]
    pub message: Option<Box<serde_json::value::RawValue>>,
}

/// The close codes that may be sent: 1000–1003, 1007–1014, 3000–4999.
fn close_code_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let mut one_of = OneOfBuilder::new();
    for (lo, hi) in [(1000, 1003), (1007, 1014), (3000, 4999)] {
        one_of = one_of.item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(lo))
                .maximum(Some(hi)),
        );
    }
    one_of.build().into()
}

/// The schema of a message payload: any JSON value except `null`.
fn any_but_null() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let mut one_of = OneOfBuilder::new();
    for t in [
        Type::Object,
        Type::Array,
        Type::String,
        Type::Number,
        Type::Boolean,
    ] {
        one_of = one_of.item(ObjectBuilder::new().schema_type(t));
    }
    one_of.build().into()
}

impl MessageBody {
    /// The message, checked.
    ///
    /// # Errors
    /// 400 when it is missing or `null`.
    pub fn into_message(self) -> Result<Box<serde_json::value::RawValue>, Problem> {
        let m = self
            .message
            .ok_or_else(|| Problem::bad_request("`message` is required"))?;
        if m.get().trim() == "null" {
            return Err(Problem::bad_request("`message` must not be null"));
        }
        Ok(m)
    }
}

/// How many connections a message reached.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Recipients {
    /// Connections the message was queued for.
    pub recipients: usize,
}

pub(crate) fn parse_id(id: &str) -> Result<crate::id::ConnId, Problem> {
    id.parse().map_err(|_| {
        Problem::bad_request(format!(
            "`{id}` is not a connection id (32 hexadecimal characters)"
        ))
    })
}

impl From<crate::wire::ConnectionEntry> for Connection {
    fn from(e: crate::wire::ConnectionEntry) -> Self {
        Self {
            id: e.id,
            short_id: e.short_id,
            connected_at: e.connected_at,
            remote_addr: e.remote_addr,
            queued: e.queued,
            user: e.user,
            groups: e.groups,
            protocol: e.protocol,
            node: e.node,
        }
    }
}

/// One connection.
#[utoipa::path(
    get,
    path = "/api/connections/{id}",
    tag = "connections",
    params(("id" = String, Path, description = "Connection id (32 hex characters)", pattern = "^[0-9a-fA-F]{32}$")),
    responses(
        (status = 200, description = "The connection", body = Connection),
        (status = 400, description = "Not a connection id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connection", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_one(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<Connection>, Problem> {
    let id = parse_id(&id)?;
    hub.connection_anywhere(id)
        .await
        .map_err(unavailable)?
        .map(|c| Json(c.into()))
        .ok_or_else(|| Problem::not_found(format!("no connection `{id}`")))
}

/// A close code the API may send, or a 400 saying which are.
pub(crate) fn check_close_code(code: u16) -> Result<u16, Problem> {
    if crate::frame::is_valid_close_code(code) {
        Ok(code)
    } else {
        Err(Problem::bad_request(
            "`code` must be a close code that may be sent: 1000–1003, 1007–1014 or 3000–4999",
        ))
    }
}

/// Disconnect a connection with a close code and reason.
#[utoipa::path(
    delete,
    path = "/api/connections/{id}",
    tag = "connections",
    params(("id" = String, Path, description = "Connection id (32 hex characters)", pattern = "^[0-9a-fA-F]{32}$"), CloseParams),
    responses(
        (status = 204, description = "Closing: the Close frame follows what is already queued"),
        (status = 400, description = "Bad id or close code", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connection", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_one(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    query: Result<Query<CloseParams>, QueryRejection>,
) -> Result<StatusCode, Problem> {
    let id = parse_id(&id)?;
    let Query(p) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let code = check_close_code(p.code.unwrap_or(1000))?;
    let reason = p.reason.unwrap_or_default();
    let found = hub
        .close_anywhere(id, code, &reason)
        .await
        .map_err(unavailable)?;
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no connection `{id}`")))
    }
}

/// Send a message to one connection, as a `direct` envelope.
#[utoipa::path(
    post,
    path = "/api/connections/{id}/send",
    tag = "connections",
    params(("id" = String, Path, description = "Connection id (32 hex characters)", pattern = "^[0-9a-fA-F]{32}$")),
    request_body(content = MessageBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Queued", body = Recipients),
        (status = 400, description = "Bad id or body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connection", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn send_one(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Recipients>, Problem> {
    let id = parse_id(&id)?;
    let message = json_body::<MessageBody>(&headers, body)?.into_message()?;
    let done = hub
        .publish_to(
            crate::hub::Target::Connection(id),
            crate::hub::Message::Json(&message),
            &Default::default(),
        )
        .await
        .map_err(publish_failed)?;
    Ok(Json(Recipients {
        recipients: done.recipients.unwrap_or(0),
    }))
}
