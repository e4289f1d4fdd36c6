//! Server-Sent Events: a connection whose frames go down one long HTTP response
//! (`text/event-stream`), as events.
//!
//! The transport is a task that owns the session, the HTTP counterpart of the WebSocket
//! connection task: it drains the session's [`Outbox`] (the same bounded queue, byte budget
//! and delivery policies as a WebSocket connection's), turns each frame's payload into an
//! event with the renderer its protocol gave it, and hands the bytes to the response body
//! through a channel of one chunk. A reader that stops reading stops the body, then the task;
//! meanwhile the outbox fills and the group's delivery policy decides (a `gap`, a replaced
//! message, or the close of a slow consumer), exactly as on WebSocket. A body that takes
//! nothing for the idle timeout is closed as a slow consumer. Heartbeat comments go out every
//! ping interval so that proxies keep the response open; a token's expiry ends the stream.
//!
//! The payloads are the frames the hub encoded once for every recipient (a WebSocket frame:
//! header and payload); the task writes their payload, so encoding stays once per publication,
//! and only the event's name and id are the session's own.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::close::CloseReason;
use crate::frame;
use crate::hub::{Hub, HubEntry};
use crate::outbox::Take;
use crate::protocol::events::Event;

/// How long a browser waits before reconnecting (the `retry:` field, in milliseconds).
pub(super) const RETRY_MS: u64 = 2000;

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

/// The first bytes of every stream: the reconnection delay, then a comment that makes
/// proxies and browsers see the response start.
pub(super) fn preamble() -> Bytes {
    Bytes::from(format!("retry: {RETRY_MS}\n: wshub\n\n"))
}

/// Runs one stream until it ends: what its session's outbox holds goes down the body as
/// events rendered by `render`; then the session is unregistered. `first` is sent first.
pub(super) async fn run(
    hub: Hub,
    entry: HubEntry,
    first: Bytes,
    tx: mpsc::Sender<Bytes>,
    mut render: impl for<'a> FnMut(&'a [u8]) -> Event<'a> + Send,
) {
    let outbox = entry.sink.clone();
    let cfg = hub.config();
    let heartbeat = cfg.ping_interval.max(Duration::from_millis(100));
    let stall = cfg.idle_timeout.max(heartbeat);
    let leeway = hub.auth().leeway();
    let shutdown = hub.shutdown_token().clone();
    let mut ending = send(&tx, first, stall).await.err();
    let mut batch = VecDeque::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown_seen = false;
    while ending.is_none() {
        let token_left = token_left(&entry, leeway);
        let chunk = tokio::select! {
            take = outbox.take(&mut batch) => match take {
                Take::Frames(_) => {
                    let mut out = BytesMut::new();
                    let mut bytes = 0;
                    for f in batch.drain(..) {
                        bytes += f.len();
                        if let Some((_, payload)) = frame::split_server_frame(&f) {
                            write_event(&mut out, &render(payload));
                        }
                    }
                    outbox.sent(bytes);
                    outbox.release();
                    out.freeze()
                }
                Take::Close(_) => {
                    let reason = outbox.close_reason().unwrap_or(CloseReason::GoingAway);
                    let mut out = BytesMut::new();
                    let data = serde_json::json!({ "code": reason.code(), "reason": reason.text() });
                    write_event(&mut out, &Event {
                        name: Some("close".into()),
                        id: None,
                        data: data.to_string().into_bytes().into(),
                    });
                    let _ = send(&tx, out.freeze(), stall).await;
                    ending = Some((reason.label(), reason.code()));
                    continue;
                }
                Take::Finished => {
                    ending = Some(("normal", 1000));
                    continue;
                }
            },
            _ = tick.tick() => Bytes::from_static(b": heartbeat\n\n"),
            () = tokio::time::sleep(token_left.unwrap_or_default()), if token_left.is_some() => {
                outbox.close(CloseReason::TokenExpired);
                continue;
            }
            () = tx.closed() => {
                ending = Some(("dropped", 1006));
                continue;
            }
            () = shutdown.cancelled(), if !shutdown_seen => {
                shutdown_seen = true;
                outbox.close(CloseReason::Restarting(1012));
                continue;
            }
        };
        if let Err(e) = send(&tx, chunk, stall).await {
            if e.0 == "slow_consumer" && outbox.close(CloseReason::SlowConsumer) {
                hub.metrics().slow_consumers.inc();
            }
            ending = Some(e);
        }
    }
    outbox.close(CloseReason::Normal(1000));
    let (label, code) = ending.unwrap_or(("normal", 1000));
    hub.unregister(&entry, (label, code));
}

/// Hands `chunk` to the body, waiting at most `stall` for it to take the previous one.
async fn send(
    tx: &mpsc::Sender<Bytes>,
    chunk: Bytes,
    stall: Duration,
) -> Result<(), (&'static str, u16)> {
    match tokio::time::timeout(stall, tx.send(chunk)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(("dropped", 1006)),
        Err(_) => Err(("slow_consumer", CloseReason::SlowConsumer.code())),
    }
}

/// How long until the session's token runs out (its `exp` plus the leeway; zero: it has), if
/// it has one.
fn token_left(entry: &HubEntry, leeway: Duration) -> Option<Duration> {
    let exp = entry.expires_at()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Some(
        Duration::from_secs(exp)
            .saturating_add(leeway)
            .saturating_sub(now),
    )
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
