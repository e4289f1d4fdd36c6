//! Pusher's HTTP fallbacks: the `xhr_streaming` and `xhr_polling` transports pusher-js 8 still
//! ships (and falls back to when WebSocket is unavailable or keeps failing), so a Pusher app
//! behind a proxy that refuses upgrades keeps working with its client unchanged.
//!
//! pusher-js speaks a SockJS-style framing over plain POSTs, under its `httpPath` (`/pusher`
//! by default; `/app/...` without it is served too):
//!
//! - `POST …/app/{key}/{server}/{session}/xhr_streaming`: a response that stays open and
//!   carries lines: `o` (the session opened), `a["<message>",…]` (Pusher messages, each a JSON
//!   string), `h` (a heartbeat, every `--ping-interval`), `c[<code>,"<reason>"]` (the end).
//!   The client reopens it after 256 KiB; the session goes on.
//! - `POST …/xhr`: one long poll: what waits, as the same lines, or `h` after the poll's wait.
//! - `POST …/xhr_send`: `["<message>",…]`, the client's Pusher messages, handled in order
//!   (`[]` is its heartbeat); 204.
//!
//! `{server}/{session}` is chosen by the client. The session is the same Pusher connection as
//! on `/app/{key}` (the same `pusher:connection_established`, subscriptions, presence,
//! client events, budgets and delivery policies), carried by the HTTP session task.
//! What the protocol refuses (an unknown key, a missing version, an app over its quota) is
//! answered `o`, the `pusher:error`, then `c[<code>,…]` with the code its clients understand.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::{Bytes, BytesMut};

use crate::close::CloseReason;
use crate::hub::{Hub, Peer};
use crate::manager::{ConnInfo, Grants, Protocol};
use crate::problem::Problem;

use super::admission::{pusher_gate, remote_of};
use super::session::{self, Framing, Sessions};

/// The lines pusher-js reads.
struct SockJs {
    /// A stream gets a heartbeat line every ping interval; a poll answers one when idle.
    streaming: bool,
}

impl Framing for SockJs {
    fn frame(&mut self, payload: &[u8], out: &mut BytesMut) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        out.extend_from_slice(b"a[");
        if serde_json::to_writer(bytes::BufMut::writer(&mut *out), text).is_err() {
            return;
        }
        out.extend_from_slice(b"]\n");
    }

    fn close(&mut self, reason: &CloseReason, out: &mut BytesMut) {
        out.extend_from_slice(close_line(reason.code(), reason.text()).as_bytes());
    }

    fn heartbeat(&self) -> Option<Bytes> {
        self.streaming.then(|| Bytes::from_static(b"h\n"))
    }
}

fn close_line(code: u16, reason: &str) -> String {
    format!("c{}\n", serde_json::json!([code, reason]))
}

/// A session id segment: what pusher-js makes (digits; base-32 letters), within bounds.
fn valid_segment(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn lines(status: StatusCode, body: impl Into<Body>) -> Response {
    session::answer(status, "application/javascript; charset=UTF-8", body)
}

/// `POST /pusher/app/{key}/{server}/{session}/{xhr_streaming|xhr|xhr_send}`.
pub async fn pusher_http_handler(
    State(hub): State<Hub>,
    Extension(sessions): Extension<Sessions>,
    Path((key, server, session, kind)): Path<(String, String, String, String)>,
    req: Request,
) -> Response {
    if !valid_segment(&server) || !valid_segment(&session) {
        return Problem::not_found("no such Pusher session: its server and session ids are 1 to 64 characters from A-Z a-z 0-9 _ - .").into_response();
    }
    let name = format!("pusher/{key}/{server}/{session}");
    match kind.as_str() {
        "xhr_send" => send(&hub, &sessions, &name, req).await,
        "xhr" => receive(&hub, &sessions, &name, &key, req, false).await,
        "xhr_streaming" => receive(&hub, &sessions, &name, &key, req, true).await,
        _ => Problem::not_found(format!(
            "no Pusher transport `{kind}` here: xhr_streaming, xhr (polling) and xhr_send are"
        ))
        .into_response(),
    }
}

/// Opens the Pusher connection of a new session (registered, its task started), or answers
/// why not (in the protocol's words, where it has them).
fn open(
    hub: &Hub,
    sessions: &Sessions,
    name: &str,
    key: &str,
    req: &Request,
    streaming: bool,
) -> Result<std::sync::Arc<session::Handle>, Box<Response>> {
    if let Some(res) = pusher_gate(hub, req) {
        return Err(Box::new(res));
    }
    let app = super::upgrade::pusher_refusal(hub, key, req).map_err(|(code, why)| {
        let error = crate::protocol::pusher::error(code, &why);
        let mut out = BytesMut::from(&b"o\n"[..]);
        let mut framing = SockJs { streaming };
        if let Some((_, payload)) = crate::frame::split_server_frame(&error) {
            framing.frame(payload, &mut out);
        }
        out.extend_from_slice(close_line(code.get(), &why).as_bytes());
        Box::new(lines(StatusCode::OK, out.freeze()))
    })?;
    let mut info = ConnInfo::now(remote_of(req));
    info.protocol = Protocol::Pusher;
    let entry = hub.register(info, Grants::default(), None, None);
    let peer = Peer::pusher(hub.clone(), entry, app);
    let opened = session::open(
        sessions,
        Some(name.to_owned()),
        peer,
        None,
        |_| Bytes::from_static(b"o\n"),
        true,
        SockJs { streaming },
    );
    Ok(opened.handle)
}

/// A stream or a poll: what the session has for the client.
async fn receive(
    hub: &Hub,
    sessions: &Sessions,
    name: &str,
    key: &str,
    req: Request,
    streaming: bool,
) -> Response {
    let handle = match sessions.get(name) {
        Some(h) => h,
        None => match open(hub, sessions, name, key, &req, streaming) {
            Ok(h) => h,
            Err(res) => return *res,
        },
    };
    drop(req);
    let Some(poll) = handle.poll.clone() else {
        return lines(StatusCode::OK, close_line(3000, "Go away!"));
    };
    // A newer request replaces an older one (pusher-js reopens its stream after 256 KiB, and
    // the old one may not be gone yet): the older steps aside, this one waits for it.
    let me = handle.new_reader();
    let Ok(mut rx) = tokio::time::timeout(TAKEOVER, poll.lock_owned()).await else {
        return lines(
            StatusCode::OK,
            close_line(2010, "Another connection still open"),
        );
    };
    let attached = session::Attached::new(handle.clone(), hub);
    if streaming {
        let state = Streaming {
            rx,
            handle,
            me,
            sent: 0,
            _attached: attached,
        };
        let chunks = futures_util::stream::unfold(state, |mut st| async move {
            let chunk = st.next().await?;
            Some((Ok::<_, std::convert::Infallible>(chunk), st))
        });
        return lines(StatusCode::OK, Body::from_stream(chunks));
    }
    let wait = session::poll_wait(hub);
    let answer = tokio::select! {
        r = tokio::time::timeout(wait, rx.recv()) => match r {
            Ok(Some(first)) => session::poll_answer(&first, &mut rx),
            Ok(None) => Bytes::from(close_line(3000, "Go away!")),
            Err(_) => Bytes::from_static(b"h\n"),
        },
        () = handle.replaced(me) => Bytes::from_static(b"h\n"),
    };
    drop(attached);
    lines(StatusCode::OK, answer)
}

/// How long a new stream or poll waits for the one it replaces to let go.
const TAKEOVER: Duration = Duration::from_secs(2);

/// What pusher-js reads of one response before it reopens its stream (`MAX_BUFFER_LENGTH`,
/// counted in its `responseText`'s characters).
const STREAM_LIMIT: usize = 256 * 1024;

/// One `xhr_streaming` response: the session's chunks until pusher-js has read more than it
/// keeps in one response; then nothing more (what is sent after pusher-js decides to reopen
/// would be lost with the old response), until the reopened stream replaces this one.
struct Streaming {
    rx: tokio::sync::OwnedMutexGuard<tokio::sync::mpsc::Receiver<Bytes>>,
    handle: std::sync::Arc<session::Handle>,
    me: u64,
    /// Characters sent (UTF-8 bytes that begin a character: no more than the UTF-16 units
    /// pusher-js counts).
    sent: usize,
    _attached: session::Attached,
}

impl Streaming {
    async fn next(&mut self) -> Option<Bytes> {
        if self.sent > STREAM_LIMIT {
            self.handle.replaced(self.me).await;
            return None;
        }
        tokio::select! {
            chunk = self.rx.recv() => {
                let chunk = chunk?;
                self.sent += chunk.iter().filter(|&&b| b & 0xC0 != 0x80).count();
                Some(chunk)
            }
            () = self.handle.replaced(self.me) => None,
        }
    }
}

/// `xhr_send`: the client's messages, in order, to its session.
async fn send(hub: &Hub, sessions: &Sessions, name: &str, req: Request) -> Response {
    let Some(handle) = sessions.get(name) else {
        return Problem::not_found("no such Pusher session: it ended, or never opened")
            .into_response();
    };
    let body = match session::read_commands(hub, req.into_body()).await {
        Ok(b) => b,
        Err(p) => return p.into_response(),
    };
    let Ok(messages) = serde_json::from_slice::<Vec<String>>(&body) else {
        return Problem::bad_request(
            "xhr_send takes a JSON array of strings, each a Pusher message",
        )
        .into_response();
    };
    match handle
        .queue(hub, messages.into_iter().map(Bytes::from))
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(session::NotQueued::Ended) => {
            Problem::not_found("no such Pusher session: it ended").into_response()
        }
        Err(session::NotQueued::NotTaking) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session is not taking messages: its replies are not being read",
        )
        .retry_after(1)
        .into_response(),
    }
}
