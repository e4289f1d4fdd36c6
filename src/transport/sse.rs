//! Server-Sent Events: a connection whose frames go down one long HTTP response
//! (`text/event-stream`), as events.
//!
//! The session's task ([`super::session`]) drains its outbox into the response body through
//! this framing: each frame's payload an event, named and numbered by the renderer its
//! protocol gave (the payloads are the frames the hub encoded once for every recipient; only
//! the event's name and id are the session's own), heartbeat comments every ping interval so
//! that proxies keep the response open, and a `close` event before the end.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::close::CloseReason;
use crate::protocol::events::Event;

/// Appends one event in the `text/event-stream` format: `event:` (when named), `id:` (when
/// given), the data one `data:` line per line of it, and the blank line that ends it.
pub(super) fn write_event(out: &mut BytesMut, event: &Event<'_>) {
    let clean = |s: &str| !s.is_empty() && !s.bytes().any(|b| b == b'\n' || b == b'\r' || b == 0);
    if let Some(name) = event.name.as_deref().filter(|n| clean(n)) {
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(id) = event.id.as_deref().filter(|n| clean(n)) {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    // A JSON text has no raw line break; anything else is cut into lines, as the format wants.
    for line in event.data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// The response that carries a stream: its headers, and a body fed through `rx`.
pub(super) fn response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut res = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx would otherwise buffer the response and hold the events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// The first bytes of every stream: how long a browser waits before reconnecting (`retry:`,
/// 2 s), then a comment that makes proxies and browsers see the response start.
pub(super) fn preamble() -> Bytes {
    Bytes::from_static(b"retry: 2000\n: wshub\n\n")
}

/// SSE framing for a session's frames: each payload becomes an event (named and numbered by
/// the protocol's renderer), a close a `close` event; heartbeats are comments.
pub(super) struct Framing<R>(pub R);

/// What a protocol makes of a frame's payload on an event stream.
pub(super) trait Render: Send + 'static {
    /// The event `payload` becomes.
    fn render<'a>(&mut self, payload: &'a [u8]) -> Event<'a>;
}

/// `/events`: named and numbered by the stream's positions.
impl Render for crate::protocol::events::Cursor {
    fn render<'a>(&mut self, payload: &'a [u8]) -> Event<'a> {
        crate::protocol::events::Cursor::render(self, payload)
    }
}

/// `wshub.v1` over SSE: an unnamed, unnumbered event per frame.
pub(super) struct Plain;

impl Render for Plain {
    fn render<'a>(&mut self, payload: &'a [u8]) -> Event<'a> {
        Event {
            name: None,
            id: None,
            data: payload.into(),
        }
    }
}

impl<R: Render> super::session::Framing for Framing<R> {
    fn frame(&mut self, payload: &[u8], out: &mut BytesMut) {
        write_event(out, &self.0.render(payload));
    }

    fn close(&mut self, reason: &CloseReason, out: &mut BytesMut) {
        let data = serde_json::json!({ "code": reason.code(), "reason": reason.text() });
        write_event(
            out,
            &Event {
                name: Some("close".into()),
                id: None,
                data: data.to_string().into_bytes().into(),
            },
        );
    }

    fn heartbeat(&self) -> Option<Bytes> {
        Some(Bytes::from_static(b": heartbeat\n\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn events_are_written_in_the_event_stream_format() {
        let mut out = BytesMut::new();
        write_event(
            &mut out,
            &Event {
                name: Some("gap".into()),
                id: Some("e:1".into()),
                data: Cow::Borrowed(b"{\"a\":1}"),
            },
        );
        write_event(
            &mut out,
            &Event {
                name: Some("bad\nname".into()),
                id: None,
                data: Cow::Borrowed(b"two\r\nlines"),
            },
        );
        assert_eq!(
            &out[..],
            b"event: gap\nid: e:1\ndata: {\"a\":1}\n\ndata: two\ndata: lines\n\n"
        );
    }
}
