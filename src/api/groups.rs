//! `/api/groups` and `/api/users`: group membership and messages to groups and users.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::connections::{parse_id, unavailable, MessageBody, Recipients};
use super::json_body;
use crate::hub::{Hub, HubError};
use crate::problem::Problem;
use crate::protocol::valid_group_name;

/// A group and its size.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupSummary {
    /// The group name.
    #[schema(example = "room-1")]
    pub name: String,
    /// How many connections are members.
    pub members: usize,
}

/// Every group (groups exist while they have members).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupList {
    /// How many groups there are.
    pub count: usize,
    /// The groups, by name.
    pub groups: Vec<GroupSummary>,
}

/// One group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupDetail {
    /// The group name.
    pub name: String,
    /// How many connections are members.
    pub members: usize,
    /// The members' connection ids.
    pub connections: Vec<String>,
}

/// The outcome of a membership change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Membership {
    /// The group.
    pub group: String,
    /// The connection.
    pub connection: String,
    /// Whether anything changed (false: it already was a member).
    pub changed: bool,
    /// Members after the change.
    pub members: usize,
}

pub(crate) fn check_group(group: &str) -> Result<(), Problem> {
    if valid_group_name(group) {
        Ok(())
    } else {
        Err(Problem::bad_request(crate::protocol::GROUP_NAME_RULE))
    }
}

/// List groups with their member counts.
#[utoipa::path(get, path = "/api/groups", tag = "groups",
    responses((status = 200, description = "Every group", body = GroupList)))]
pub async fn list(State(hub): State<Hub>) -> Result<Json<GroupList>, Problem> {
    let groups: Vec<GroupSummary> = hub
        .list_groups()
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|(name, members)| GroupSummary { name, members })
        .collect();
    Ok(Json(GroupList {
        count: groups.len(),
        groups,
    }))
}

/// One group and its members.
#[utoipa::path(get, path = "/api/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Group name", pattern = "^[A-Za-z0-9_.:@/-]{1,128}$")),
    responses(
        (status = 200, description = "The group", body = GroupDetail),
        (status = 400, description = "Invalid group name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group (no members)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_one(
    State(hub): State<Hub>,
    Path(group): Path<String>,
) -> Result<Json<GroupDetail>, Problem> {
    check_group(&group)?;
    let mut ids: Vec<String> = hub
        .list_connections(Some(&group), None)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|c| c.id)
        .collect();
    if ids.is_empty() {
        return Err(Problem::not_found(format!(
            "no group `{group}` (groups exist while they have members)"
        )));
    }
    ids.sort();
    Ok(Json(GroupDetail {
        members: ids.len(),
        connections: ids,
        name: group,
    }))
}

fn wshub_opts(
    key: Option<String>,
    idempotency_key: Option<String>,
    ttl: Option<std::time::Duration>,
) -> crate::hub::PublishOptions {
    crate::hub::PublishOptions {
        key,
        idempotency_key,
        ttl,
    }
}

/// A message for a group's members.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GroupMessageBody {
    /// Any JSON value but `null`, forwarded verbatim.
    #[schema(value_type = Object, required = true)]
    pub message: Option<Box<serde_json::value::RawValue>>,
    /// A conflation key: in a group delivered `keep-latest` (`--delivery-policy`), a newer
    /// message with the same key replaces one still queued for a slow reader (a ticker's
    /// symbol, a vehicle's id).
    #[serde(default)]
    pub key: Option<String>,
    /// An idempotency key: a repeat within `--idempotency-window` (on any node) is answered
    /// with the first one's offset and `duplicate: true`, and delivered to no one.
    #[serde(default, rename = "idempotencyKey")]
    pub idempotency_key: Option<String>,
    /// Its own time to live, in seconds (above 0, at most 86400): past it the message leaves
    /// history, and a copy still queued for a slow reader is not sent (it gets a `gap` it
    /// cannot recover).
    #[serde(default)]
    pub ttl: Option<f64>,
}

/// A message published to a group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Published {
    /// Connections the message was queued for. Absent in a cluster: members on other nodes
    /// are not counted (a publish never reads the whole cluster's listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<usize>,
    /// Its offset in the group's stream (the first one's, for a repeat).
    pub offset: u64,
    /// `true`: a repeat of an idempotency key seen within the window, delivered to no one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// Publish a message to a group's members, as a `message` envelope with the group and no
/// sender. It is kept in the group's history even when nobody is a member right now.
#[utoipa::path(post, path = "/api/groups/{group}/broadcast", tag = "groups",
    params(("group" = String, Path, description = "Group name", pattern = "^[A-Za-z0-9_.:@/-]{1,128}$")),
    request_body(content = GroupMessageBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Queued for every member (0 for a group with no members)", body = Published),
        (status = 400, description = "Invalid group name or body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "In a cluster: the backplane is not keeping up; nothing was published (`Retry-After: 1`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A new group, and the hub keeps as many as it may (`--max-groups`); or, in a cluster, this node cannot reach the backplane (starting, or cut off: `Retry-After: 1`). Nothing was published", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn broadcast(
    State(hub): State<Hub>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Published>, Problem> {
    check_group(&group)?;
    let body = json_body::<GroupMessageBody>(&headers, body)?;
    let ttl = match body.ttl {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => {
            Some(std::time::Duration::from_secs_f64(s))
        }
        Some(_) => {
            return Err(Problem::bad_request(
                "`ttl` is a number of seconds, above 0 and at most 86400",
            ))
        }
    };
    let opts = wshub_opts(body.key, body.idempotency_key, ttl);
    let message = MessageBody {
        message: body.message,
    }
    .into_message()?;
    hub.ensure_group_stream(&group)
        .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let done = hub
        .publish_to(
            crate::hub::Target::Group(&group),
            crate::hub::Message::Json(&message),
            &opts,
        )
        .await
        .map_err(super::connections::publish_failed)?;
    Ok(Json(Published {
        recipients: done.recipients,
        offset: done.offset.unwrap_or(0),
        duplicate: done.duplicate.then_some(true),
    }))
}

/// Add a connection to a group (its other members get a `joined` event).
#[utoipa::path(put, path = "/api/groups/{group}/members/{connection_id}", tag = "groups",
    params(("group" = String, Path, description = "Group name", pattern = "^[A-Za-z0-9_.:@/-]{1,128}$"), ("connection_id" = String, Path, description = "Connection id (32 hex characters)", pattern = "^[0-9a-fA-F]{32}$")),
    responses(
        (status = 200, description = "A member now", body = Membership),
        (status = 400, description = "Invalid group name or connection id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connection", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The connection is in too many groups", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A new group, and the hub keeps as many as it may (`--max-groups`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn add_member(
    State(hub): State<Hub>,
    Path((group, connection)): Path<(String, String)>,
) -> Result<Json<Membership>, Problem> {
    check_group(&group)?;
    let id = parse_id(&connection)?;
    let changed = match hub.add_to_group(id, &group) {
        Ok(changed) => changed,
        Err(HubError::NotFound(_)) => {
            // On another node, perhaps: asked there (its answer is not awaited).
            if !hub
                .add_member_elsewhere(id, &group)
                .await
                .map_err(unavailable)?
            {
                return Err(Problem::not_found(format!("no connection `{id}`")));
            }
            true
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Json(Membership {
        members: hub.group_size(&group),
        group,
        connection: id.to_string(),
        changed,
    }))
}

/// Remove a connection from a group (the remaining members get a `left` event).
#[utoipa::path(delete, path = "/api/groups/{group}/members/{connection_id}", tag = "groups",
    params(("group" = String, Path, description = "Group name", pattern = "^[A-Za-z0-9_.:@/-]{1,128}$"), ("connection_id" = String, Path, description = "Connection id (32 hex characters)", pattern = "^[0-9a-fA-F]{32}$")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Invalid group name or connection id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connection, or not a member", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn remove_member(
    State(hub): State<Hub>,
    Path((group, connection)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    check_group(&group)?;
    let id = parse_id(&connection)?;
    let done = hub
        .remove_member_anywhere(id, &group)
        .await
        .map_err(unavailable)?;
    if done {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!(
            "connection `{id}` is not a member of `{group}`"
        )))
    }
}

/// Send a message to every connection of a user, as a `direct` envelope.
#[utoipa::path(post, path = "/api/users/{user}/send", tag = "users",
    params(("user" = String, Path, description = "User id (the token's `sub`)")),
    request_body(content = MessageBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Queued for each of the user's connections (0 when offline)", body = Recipients),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn send_to_user(
    State(hub): State<Hub>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Recipients>, Problem> {
    let message = json_body::<MessageBody>(&headers, body)?.into_message()?;
    let done = hub
        .publish_to(
            crate::hub::Target::User(&user),
            crate::hub::Message::Json(&message),
            &Default::default(),
        )
        .await
        .map_err(super::connections::publish_failed)?;
    Ok(Json(Recipients {
        recipients: done.recipients.unwrap_or(0),
    }))
}

/// How to disconnect a user's connections.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserDisconnect {
    /// The close code (default 4403): 1000–1003, 1007–1014, or an application code 3000–4999.
    pub code: Option<u16>,
    /// The close reason (at most 123 bytes are sent).
    pub reason: Option<String>,
    /// `true`: from now on, refuse this user's tokens issued before now (at connect and at
    /// `refresh`, on every node).
    pub revoke: Option<bool>,
}

/// What disconnecting a user did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserDisconnected {
    /// The user.
    pub user: String,
    /// With `revoke`: tokens issued before this (Unix seconds) are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_before: Option<u64>,
}

/// Disconnect every connection of a user, on every node, and optionally revoke the user's
/// tokens issued before now.
#[utoipa::path(delete, path = "/api/users/{user}/connections", tag = "users",
    params(("user" = String, Path, description = "User id (the token's `sub`)"), UserDisconnect),
    responses(
        (status = 200, description = "Closing every connection of the user (none: nothing to close)", body = UserDisconnected),
        (status = 400, description = "Bad close code", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The backplane cannot take it now", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Applied on the live nodes, not kept by the backplane: try again", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn disconnect_user(
    State(hub): State<Hub>,
    Path(user): Path<String>,
    query: Result<axum::extract::Query<UserDisconnect>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UserDisconnected>, Problem> {
    let axum::extract::Query(p) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let code = super::connections::check_close_code(p.code.unwrap_or(4403))?;
    let reason = p.reason.unwrap_or_else(|| "disconnected".into());
    let revoked_before = hub
        .disconnect_user(&user, code, &reason, p.revoke.unwrap_or(false))
        .await
        .map_err(|e| match e {
            crate::hub::RevokeError::Busy(b) => super::connections::busy(b),
            crate::hub::RevokeError::NotKept(why) => Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("{}", crate::hub::RevokeError::NotKept(why)),
            ),
        })?;
    Ok(Json(UserDisconnected {
        user,
        revoked_before,
    }))
}

/// Which page of a group's presence.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PresenceQuery {
    /// Where the page starts: the previous page's `cursor`.
    pub cursor: Option<String>,
    /// Members per page (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// One presence member: a connection of a user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PresenceMember {
    /// The connection id.
    pub connection: String,
    /// The user.
    pub user: String,
    /// What the backend says about the user (a token's `info` claim, the connect hook's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub info: Option<serde_json::Value>,
}

/// Who is in a group, cluster-wide: a page of its presence members and the counts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupPresence {
    /// The members of this page, by connection id.
    pub members: Vec<PresenceMember>,
    /// The next page's cursor (absent: this was the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Connections of authenticated users in the group.
    pub connections: usize,
    /// Distinct users in the group.
    pub users: usize,
    /// Every member, anonymous ones included.
    pub total: usize,
}

/// Who is in a group (authenticated members, on every node), a page at a time.
#[utoipa::path(get, path = "/api/groups/{group}/presence", tag = "groups",
    params(("group" = String, Path, description = "Group name", pattern = "^[A-Za-z0-9_.:@/-]{1,128}$"), PresenceQuery),
    responses(
        (status = 200, description = "A page of members (empty when nobody is present)", body = GroupPresence),
        (status = 400, description = "Invalid group name or query", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn presence(
    State(hub): State<Hub>,
    Path(group): Path<String>,
    query: Result<axum::extract::Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<GroupPresence>, Problem> {
    check_group(&group)?;
    let axum::extract::Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let page = hub.presence(
        &group,
        q.cursor.as_deref(),
        q.limit.unwrap_or(crate::hub::PRESENCE_PAGE),
    );
    let stats = hub.presence_stats(&group);
    Ok(Json(GroupPresence {
        members: page
            .members
            .into_iter()
            .map(|m| PresenceMember {
                connection: m.connection,
                user: m.user,
                info: m.info.and_then(|i| serde_json::from_str(i.get()).ok()),
            })
            .collect(),
        cursor: page.cursor,
        connections: stats.connections,
        users: stats.users,
        total: stats.total,
    }))
}
