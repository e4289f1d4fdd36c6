//! `wshub.v1` over plain HTTP, for clients whose WebSocket upgrade a proxy refuses: the same
//! session (welcome, commands, acks, groups, recovery, tokens, budgets) on two transports.
//!
//! - **SSE down, POST up**: `GET /v1/sse` answers `text/event-stream`; its first event,
//!   `session`, names the session; every frame follows as an unnamed event whose data is the
//!   frame's JSON.
//! - **Long polling**: `GET /v1/poll` answers `{"type":"session","session":"…"}`; then each
//!   `GET /v1/poll/{session}` answers what is waiting, one frame's JSON per line
//!   (`application/x-ndjson`), or 204 when nothing came within the poll's wait.
//!
//! Both take commands in `POST /v1/sessions/{session}` (one or more, one per line; at most
//! `--max-message-size` bytes; 204 once queued for the session), and `DELETE
//! /v1/sessions/{session}` ends the session.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::{Bytes, BytesMut};

use crate::close::CloseReason;
use crate::hub::{Hub, Peer};
use crate::manager::Protocol;
use crate::problem::Problem;

use super::admission::{admit, admit_http};
use super::relay;
use super::session::{self, Framing, Handle, Sessions};
use super::sse;
use super::upgrade::recover_param;

/// Long polling's framing: one frame's JSON per line; the close as a line of its own.
struct Lines;

impl Framing for Lines {
    fn frame(&mut self, payload: &[u8], out: &mut BytesMut) {
        // A JSON text has no raw line break.
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\n");
    }

    fn close(&mut self, reason: &CloseReason, out: &mut BytesMut) {
        let line =
            serde_json::json!({ "type": "close", "code": reason.code(), "reason": reason.text() });
        out.extend_from_slice(line.to_string().as_bytes());
        out.extend_from_slice(b"\n");
    }

    fn heartbeat(&self) -> Option<Bytes> {
        None
    }
}

/// Registers a `wshub.v1` session for `req` and opens it on a transport.
async fn open(
    hub: &Hub,
    sessions: &Sessions,
    req: Request,
    long_poll: bool,
) -> Result<session::Opened, Response> {
    let recover = recover_param(&req).map_err(IntoResponse::into_response)?;
    let admitted = admit_http(hub, &req, crate::protocol::V1).await?;
    drop(req);
    let mut info = admitted.info;
    info.protocol = Protocol::V1;
    let bound = if admitted.by_token {
        info.user.clone()
    } else {
        None
    };
    let prefetched = hub
        .prefetch(crate::wire::StreamName::All, recover.as_ref())
        .await;
    let entry = hub.register(info, admitted.grants, recover.as_ref(), prefetched);
    Ok(if long_poll {
        session::open(
            sessions,
            None,
            Peer::new(hub.clone(), entry),
            bound,
            |_| Bytes::new(),
            true,
            Lines,
        )
    } else {
        let first = |token: &str| {
            let mut out = BytesMut::from(&sse::preamble()[..]);
            let data = serde_json::json!({ "session": token }).to_string();
            sse::write_event(
                &mut out,
                &crate::protocol::events::Event {
                    name: Some("session".into()),
                    id: None,
                    data: data.into_bytes().into(),
                },
            );
            out.freeze()
        };
        session::open(
            sessions,
            None,
            Peer::new(hub.clone(), entry),
            bound,
            first,
            false,
            sse::Framing(sse::Plain),
        )
    })
}

/// `GET /v1/sse`: a `wshub.v1` session over Server-Sent Events.
pub async fn sse_handler(
    State(hub): State<Hub>,
    Extension(sessions): Extension<Sessions>,
    req: Request,
) -> Response {
    match open(&hub, &sessions, req, false).await {
        Ok(opened) => match opened.down {
            Some(rx) => sse::response(rx),
            None => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the session has no stream",
            )
            .into_response(),
        },
        Err(p) => p.into_response(),
    }
}

/// `GET /v1/poll`: a `wshub.v1` session over long polling; answers its name.
pub async fn poll_open_handler(
    State(hub): State<Hub>,
    Extension(sessions): Extension<Sessions>,
    req: Request,
) -> Response {
    match open(&hub, &sessions, req, true).await {
        Ok(opened) => {
            let line = serde_json::json!({ "type": "session", "session": opened.token });
            ndjson(StatusCode::OK, Bytes::from(format!("{line}\n")))
        }
        Err(p) => p.into_response(),
    }
}

fn ndjson(status: StatusCode, body: Bytes) -> Response {
    session::answer(status, "application/x-ndjson", body)
}

fn no_session() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no such session: it ended, or never existed (open a new one)",
    )
}

/// The session named in the path, if the request may act for it: a session a token opened
/// takes requests with a token of the same user only.
fn session_for(
    hub: &Hub,
    sessions: &Sessions,
    token: &str,
    req: &Request,
) -> Result<std::sync::Arc<Handle>, Problem> {
    let handle = sessions.get(token).ok_or_else(no_session)?;
    if let Some(user) = &handle.bound_user {
        let identity = admit(hub, req)?;
        if identity.user.as_deref() != Some(&**user) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "this session belongs to another user",
            ));
        }
    }
    Ok(handle)
}

/// `GET /v1/poll/{session}`: what the session has for the client, or 204 after the poll's wait.
pub async fn poll_handler(
    State(hub): State<Hub>,
    Extension(sessions): Extension<Sessions>,
    Path(token): Path<String>,
    req: Request,
) -> Response {
    match relay::elsewhere(&hub, &sessions, &token) {
        Some(node) => relay::forward(&hub, &node, relay::Op::Poll, &token, req).await,
        None => poll_here(&hub, &sessions, &token, req).await,
    }
}

/// A poll of a session of this node.
pub(super) async fn poll_here(
    hub: &Hub,
    sessions: &Sessions,
    token: &str,
    req: Request,
) -> Response {
    let handle = match session_for(hub, sessions, token, &req) {
        Ok(h) => h,
        Err(p) => return p.into_response(),
    };
    drop(req);
    let Some(poll) = &handle.poll else {
        return Problem::bad_request(
            "this session's frames come down its event stream, not in polls",
        )
        .into_response();
    };
    let Ok(mut rx) = poll.try_lock() else {
        return Problem::new(
            StatusCode::CONFLICT,
            "another poll of this session is waiting: one at a time",
        )
        .into_response();
    };
    let _polling = session::Attached::new(handle.clone(), hub);
    match tokio::time::timeout(session::poll_wait(hub), rx.recv()).await {
        Ok(Some(first)) => ndjson(StatusCode::OK, session::poll_answer(&first, &mut rx)),
        Ok(None) => no_session().into_response(),
        Err(_) => StatusCode::NO_CONTENT.into_response(),
    }
}

/// `POST /v1/sessions/{session}`: commands, one per line, handled in order by the session.
pub async fn session_post_handler(
    State(hub): State<Hub>,
    Extension(sessions): Extension<Sessions>,
    Path(token): Path<String>,
    req: Request,
) -> Response {
    match relay::elsewhere(&hub, &sessions, &token) {
        Some(node) => relay::forward(&hub, &node, relay::Op::Post, &token, req).await,
        None => post_here(&hub, &sessions, &token, req).await,
    }
}

/// A POST to a session of this node.
pub(super) async fn post_here(
    hub: &Hub,
    sessions: &Sessions,
    token: &str,
    req: Request,
) -> Response {
    let handle = match session_for(hub, sessions, token, &req) {
        Ok(h) => h,
        Err(p) => return p.into_response(),
    };
    let body = match session::read_commands(hub, req.into_body()).await {
        Ok(b) => b,
        Err(p) => return p.into_response(),
    };
    let commands: Vec<Bytes> = body
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|line| !line.is_empty())
        .map(|line| body.slice_ref(line))
        .collect();
    match handle.queue(hub, commands).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(session::NotQueued::Ended) => no_session().into_response(),
        Err(session::NotQueued::NotTaking) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session is not taking commands: its replies are not being read",
        )
        .retry_after(1)
        .into_response(),
    }
}

/// `DELETE /v1/sessions/{session}`: the client is done.
pub async fn session_close_handler(
    State(hub): State<Hub>,
    Extension(sessions): Extension<Sessions>,
    Path(token): Path<String>,
    req: Request,
) -> Response {
    match relay::elsewhere(&hub, &sessions, &token) {
        Some(node) => relay::forward(&hub, &node, relay::Op::Close, &token, req).await,
        None => close_here(&hub, &sessions, &token, &req),
    }
}

/// The end of a session of this node.
pub(super) fn close_here(hub: &Hub, sessions: &Sessions, token: &str, req: &Request) -> Response {
    match session_for(hub, sessions, token, req) {
        Ok(handle) => {
            handle.entry.sink.close(CloseReason::Normal(1000));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(p) => p.into_response(),
    }
}

/// Answers the requests other nodes relay for this node's sessions (see `relay`).
pub(crate) struct SessionsService {
    hub: std::sync::Weak<crate::hub::Shared>,
    sessions: Sessions,
}

impl SessionsService {
    pub(crate) fn new(hub: &Hub, sessions: Sessions) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            hub: hub.downgrade(),
            sessions,
        })
    }
}

impl crate::backplane::relay::Service for SessionsService {
    fn serve(
        &self,
        request: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Bytes> + Send>> {
        let hub = Hub::upgrade(&self.hub);
        let sessions = self.sessions.clone();
        Box::pin(async move {
            let res = match (hub, relay::unpack_request(&request)) {
                (Some(hub), Ok((op, token, req))) => match op {
                    relay::Op::Poll => poll_here(&hub, &sessions, &token, req).await,
                    relay::Op::Post => post_here(&hub, &sessions, &token, req).await,
                    relay::Op::Close => close_here(&hub, &sessions, &token, &req),
                },
                (None, _) => Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the session's node is shutting down",
                )
                .into_response(),
                (_, Err(p)) => p.into_response(),
            };
            relay::pack_response(res).await
        })
    }
}
