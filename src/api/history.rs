//! `GET /api/groups/{group}/history` and `GET /api/history`: what a stream still keeps, for a
//! backend that wants to catch up (clients recover over the WebSocket instead).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::groups::check_group;
use crate::history::{payload, StreamRef};
use crate::hub::Hub;
use crate::problem::Problem;

/// Largest page of history one request returns.
pub const MAX_LIMIT: usize = 1000;

/// Which part of a stream to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only messages after this offset (the last one you have); default: every kept one.
    pub since: Option<u64>,
    /// At most this many messages, oldest first (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The epoch your `since` belongs to; when the stream's epoch differs, 409.
    pub epoch: Option<String>,
}

/// A page of a stream's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    /// The stream's epoch: offsets from another epoch mean nothing here.
    #[schema(example = "3f9c2a1b8e7d")]
    pub epoch: String,
    /// The stream's last offset.
    pub offset: u64,
    /// The oldest offset still kept (`offset + 1` when nothing is).
    pub first: u64,
    /// The messages, oldest first, exactly as `wshub.v1` clients received them.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Box<RawValue>>,
}

fn query(q: Result<Query<HistoryQuery>, QueryRejection>) -> Result<HistoryQuery, Problem> {
    q.map(|q| q.0).map_err(|e| {
        Problem::bad_request(format!(
            "`since` and `limit` are non-negative integers, `epoch` a string: {}",
            e.body_text()
        ))
    })
}

fn page(stream: &StreamRef, q: &HistoryQuery) -> Result<HistoryPage, Problem> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Problem::bad_request(format!("`limit` is 1 to {MAX_LIMIT}")));
    }
    let mut s = stream.lock();
    let at = s.position();
    if let Some(epoch) = &q.epoch {
        if **epoch != *at.epoch {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                format!(
                    "the stream's epoch is now `{}`: its history was lost since; refetch your state",
                    at.epoch
                ),
            ));
        }
    }
    if let Some(since) = q.since {
        if since > at.offset {
            return Err(Problem::bad_request(format!(
                "`since` ({since}) is past the stream's last offset ({})",
                at.offset
            )));
        }
    }
    let frames = s.since(q.since, limit);
    let first = s.first_kept();
    drop(s);
    let messages = frames
        .iter()
        .filter_map(|(_, f)| {
            let text = std::str::from_utf8(payload(f)).ok()?;
            RawValue::from_string(text.to_owned()).ok()
        })
        .collect();
    Ok(HistoryPage {
        epoch: at.epoch.to_string(),
        offset: at.offset,
        first,
        messages,
    })
}

/// A group's history.
#[utoipa::path(get, path = "/api/groups/{group}/history", tag = "groups",
    params(("group" = String, Path, description = "Group name", pattern = "^[A-Za-z0-9_.:@/-]{1,128}$"), HistoryQuery),
    responses(
        (status = 200, description = "Kept messages after `since`", body = HistoryPage),
        (status = 400, description = "Invalid group name, `since` past the last offset, or `limit` out of range", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The group has no stream (never joined or published to, or forgotten after an hour of silence)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`epoch` is not the stream's epoch", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn group(
    State(hub): State<Hub>,
    Path(group): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryPage>, Problem> {
    check_group(&group)?;
    let q = query(q)?;
    let stream = hub
        .history()
        .existing(&group)
        .ok_or_else(|| Problem::not_found(format!("group `{group}` has no history")))?;
    page(&stream, &q).map(Json)
}

/// The all-clients stream's history (`server-broadcast` and clients' messages to everyone).
#[utoipa::path(get, path = "/api/history", tag = "connections",
    params(HistoryQuery),
    responses(
        (status = 200, description = "Kept messages after `since`", body = HistoryPage),
        (status = 400, description = "`since` past the last offset, or `limit` out of range", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`epoch` is not the stream's epoch", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn all(
    State(hub): State<Hub>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryPage>, Problem> {
    page(hub.history().all(), &query(q)?).map(Json)
}
