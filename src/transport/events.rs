//! `GET /events`: a one-way, resumable event stream for `EventSource`.
//!
//! `?group=A&group=B` follows those groups, `?all` (or no group at all) the all-clients
//! stream too. The session is a `wshub.v1` session of the hub whose joins the request made;
//! its frames go down as Server-Sent Events ([`super::sse`]) named and numbered by
//! [`crate::protocol::events`]: every event id carries every followed stream's position, so
//! the browser's own reconnect (`Last-Event-ID`) resumes exactly after the last event seen, on
//! any node, and a stream that cannot be recovered says so (`subscribed` with
//! `"recovered":false`).
//!
//! Admission is the WebSocket's: the Origin allow-list, a JWT in `?access_token=` (its
//! `groups` claim enforced, before anything is streamed) or in `Authorization`, or the
//! `connect` hook (which sees the request's cookies).

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tracing::Instrument as _;

use crate::history::Position;
use crate::hub::{Hub, HubCork};
use crate::manager::Protocol;
use crate::problem::Problem;
use crate::protocol::events::{self, Cursor, MAX_STREAMS};
use crate::protocol::valid_group_name;

use super::admission::admit_http;
use super::sse;

/// What the request asks to follow.
struct Follow {
    all: bool,
    groups: Vec<String>,
    /// Where each stream resumes from (the all-clients stream first when followed).
    from: Vec<Option<Position>>,
}

fn follow(req: &Request) -> Result<Follow, Problem> {
    let mut groups: Vec<String> = Vec::new();
    let mut all = None;
    let mut last_id = None;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "group" => {
                if !valid_group_name(&v) {
                    return Err(Problem::bad_request(
                        "a `group` is 1 to 128 characters from `A-Z a-z 0-9 _ - . : @ /`",
                    ));
                }
                if groups.iter().any(|g| *g == v) {
                    return Err(Problem::bad_request(format!("group `{v}` is listed twice")));
                }
                groups.push(v.into_owned());
            }
            "all" => {
                all = Some(match v.as_ref() {
                    "" | "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(Problem::bad_request(
                            "`all` is `true` or `false` (or given without a value)",
                        ))
                    }
                });
            }
            // What polyfills send when they cannot set the header.
            "lastEventId" => last_id = Some(v.into_owned()),
            _ => {}
        }
    }
    let all = all.unwrap_or(groups.is_empty());
    if !all && groups.is_empty() {
        return Err(Problem::bad_request(
            "nothing to follow: name a `group`, or leave `all` on",
        ));
    }
    let streams = usize::from(all) + groups.len();
    if streams > MAX_STREAMS {
        return Err(Problem::bad_request(format!(
            "one event stream follows at most {MAX_STREAMS} streams ({streams} asked)"
        )));
    }
    let header_id = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| Problem::bad_request("`Last-Event-ID` is not text"))?;
    let from = match header_id.or(last_id).filter(|id| !id.trim().is_empty()) {
        None => vec![None; streams],
        Some(id) => {
            events::resume(&id, streams).map_err(|e| Problem::bad_request(e.to_string()))?
        }
    };
    Ok(Follow { all, groups, from })
}

/// `GET /events`: a `text/event-stream` of the groups named (and the all-clients stream).
pub async fn events_handler(State(hub): State<Hub>, req: Request) -> Response {
    let follow = match follow(&req) {
        Ok(f) => f,
        Err(p) => return p.into_response(),
    };
    let (mut info, grants) = match admit_http(&hub, &req, "events").await {
        Ok(a) => (a.info, a.grants),
        Err(res) => return res,
    };
    let remote = info.remote_addr;
    if let Some(g) = follow.groups.iter().find(|g| !grants.may_join(g)) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            format!("this token does not allow the group `{g}`"),
        )
        .into_response();
    }
    info.protocol = Protocol::V1;
    let recover_all = if follow.all {
        follow.from.first().cloned().flatten()
    } else {
        None
    };
    let prefetched = if follow.all {
        hub.prefetch(crate::wire::StreamName::All, recover_all.as_ref())
            .await
    } else {
        None
    };
    let entry = hub.register(info, grants, recover_all.as_ref(), prefetched);
    let peer = crate::hub::Peer::new(hub.clone(), entry);
    let first_group = usize::from(follow.all);
    for (i, group) in follow.groups.iter().enumerate() {
        let since = follow.from[first_group + i]
            .as_ref()
            .map(|p| serde_json::json!({ "epoch": &*p.epoch, "offset": p.offset }));
        let text = serde_json::json!({ "id": i, "type": "join", "group": group, "since": since })
            .to_string();
        let mut cork = HubCork::new();
        let mut pre = None;
        while let Some(fetch) = peer.on_text(&text, pre.take(), &mut cork) {
            pre = Some(fetch.await);
        }
        hub.flush(&mut cork, Instant::now());
    }
    let cursor = Cursor::new(follow.all, &follow.groups, &follow.from);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let span = tracing::debug_span!("events", id = %peer.entry().id, remote = ?remote);
    let task = super::session::Task::one_way(peer, tx);
    hub.tasks().spawn(
        task.run(sse::preamble(), sse::Framing(cursor))
            .instrument(span),
    );
    let mut res = sse::response(rx);
    res.headers_mut()
        .insert(header::VARY, header::HeaderValue::from_static("origin"));
    res
}
