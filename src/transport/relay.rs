//! No sticky sessions: a session's POST, poll or DELETE that a balancer sent to another node
//! is relayed to the session's own node over the backplane, and its answer relayed back.
//!
//! A session's token names its node (`<32 hex>.<node id>`), so the node a request reached
//! knows where to send it without asking anyone. It forwards what the session's node needs to
//! judge the request itself (the operation, the query, the `Authorization`, `Cookie` and
//! `Origin` headers, the body), and that node answers it exactly as if it had come directly:
//! the same checks (the session's user), the same waits, the same answer. A token naming a
//! node that is not alive is answered 404 at once (its sessions ended with it).

//!
//! Bounded like every relayed request (see [`crate::backplane::relay`]): at most so many wait
//! at once, each for at most the session's own longest wait plus a margin.
//!
//! What it costs: two trips through the engine per request. What it does not do: a poll
//! answered by the session's node but not delivered by this one (the client went away
//! meanwhile) is lost with its frames, as a direct poll's answer would be if the connection
//! broke while it was sent; recovery (`since`) brings group messages back.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::backplane::relay::RelayError;
use crate::hub::Hub;
use crate::problem::Problem;

use super::session::Sessions;

/// What a relayed request asks of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Op {
    /// `GET /v1/poll/{session}`.
    Poll,
    /// `POST /v1/sessions/{session}`.
    Post,
    /// `DELETE /v1/sessions/{session}`.
    Close,
}

/// The request's headers a session's node needs (who the client is, where the page is from).
const FORWARDED: [HeaderName; 3] = [header::AUTHORIZATION, header::COOKIE, header::ORIGIN];

/// The answer's headers the client needs.
const ANSWERED: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
];

#[derive(Serialize, Deserialize)]
struct Asked {
    op: Op,
    session: String,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize)]
struct Answered {
    status: u16,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

/// One JSON line, then the body.
fn pack(head: &impl Serialize, body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    // A JSON text of these types has no raw line break.
    if serde_json::to_writer((&mut out).writer(), head).is_err() {
        return Bytes::new();
    }
    out.put_u8(b'\n');
    out.put_slice(body);
    out.freeze()
}

fn unpack<T: for<'de> Deserialize<'de>>(m: &Bytes) -> Option<(T, Bytes)> {
    let end = m.iter().position(|&b| b == b'\n')?;
    let head = serde_json::from_slice(&m[..end]).ok()?;
    Some((head, m.slice(end + 1..)))
}

/// The node a session token names.
pub(super) fn node_of(token: &str) -> Option<&str> {
    let (random, node) = token.split_at_checked(32)?;
    let node = node.strip_prefix('.')?;
    (random.bytes().all(|b| b.is_ascii_hexdigit()) && crate::wire::parse_node_id(node).is_ok())
        .then_some(node)
}

/// Where a request for session `token` must go: `None` here (the session is here, or is
/// nowhere and this node answers 404 itself), or the other node that holds it: one heard of
/// within the node TTL (or any, while this node is too new to have heard of every live one).
pub(super) fn elsewhere(hub: &Hub, sessions: &Sessions, token: &str) -> Option<String> {
    let cluster = hub.cluster()?;
    if sessions.get(token).is_some() {
        return None;
    }
    let node = node_of(token)?;
    let known = hub.node_is_alive(node) || cluster.age() < cluster.config().node_ttl;
    (node != hub.node_id() && known).then(|| node.to_owned())
}

/// How long a relayed request may take: the longest the session's node may wait itself for
/// this operation (a poll's wait; a POST waiting for the session's commands to drain, up to
/// `--idle-timeout`; nothing for a DELETE), and a margin for the trips.
fn deadline(hub: &Hub, op: Op) -> Duration {
    let waits = match op {
        Op::Poll => super::session::poll_wait(hub),
        Op::Post => hub.config().idle_timeout,
        Op::Close => Duration::ZERO,
    };
    waits.saturating_add(MARGIN)
}

/// What a relayed request may take beyond the session's own wait: two trips through the
/// engine, and the session's node finding time for it.
const MARGIN: Duration = Duration::from_secs(5);

/// Relays `req` (for session `token`, held by `node`) and answers what that node answered.
pub(super) async fn forward(hub: &Hub, node: &str, op: Op, token: &str, req: Request) -> Response {
    let Some(cluster) = hub.cluster().cloned() else {
        return Problem::new(StatusCode::NOT_FOUND, "no such session").into_response();
    };
    let asked = Asked {
        op,
        session: token.to_owned(),
        query: req.uri().query().map(str::to_owned),
        headers: FORWARDED
            .iter()
            .filter_map(|name| {
                let v = req.headers().get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), v.to_owned()))
            })
            .collect(),
    };
    let body = if op == Op::Post {
        match super::session::read_commands(hub, req.into_body()).await {
            Ok(b) => b,
            Err(p) => return p.into_response(),
        }
    } else {
        Bytes::new()
    };
    hub.metrics().relayed.inc();
    match cluster
        .request(node, &pack(&asked, &body), deadline(hub, op))
        .await
    {
        Ok(answer) => match unpack::<Answered>(&answer) {
            Some((head, body)) => respond(head, body),
            None => Problem::new(
                StatusCode::BAD_GATEWAY,
                "the session's node sent an unreadable answer",
            )
            .into_response(),
        },
        Err(e) => {
            let status = match e {
                RelayError::TimedOut => StatusCode::GATEWAY_TIMEOUT,
                RelayError::Refused => StatusCode::BAD_GATEWAY,
                RelayError::Busy | RelayError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            let mut p = Problem::new(
                status,
                format!("this request was for a session on node {node}, and could not be relayed there: {e}"),
            );
            if status == StatusCode::SERVICE_UNAVAILABLE {
                p = p.retry_after(1);
            }
            p.into_response()
        }
    }
}

fn respond(head: Answered, body: Bytes) -> Response {
    let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut res = (status, Body::from(body)).into_response();
    for (name, value) in head.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            if ANSWERED.contains(&n) {
                res.headers_mut().insert(n, v);
            }
        }
    }
    res
}

/// A relayed request, as the request this node's session answers: its operation, the session,
/// and the request (the forwarded headers, the query, the body).
pub(super) fn unpack_request(m: &Bytes) -> Result<(Op, String, Request), Problem> {
    let bad = || Problem::bad_request("an unreadable relayed request");
    let (asked, body) = unpack::<Asked>(m).ok_or_else(bad)?;
    let method = match asked.op {
        Op::Poll => Method::GET,
        Op::Post => Method::POST,
        Op::Close => Method::DELETE,
    };
    let uri = match &asked.query {
        Some(q) => format!("/?{q}"),
        None => "/".to_owned(),
    };
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in &asked.headers {
        builder = builder.header(name, value);
    }
    let req = builder.body(Body::from(body)).map_err(|_| bad())?;
    Ok((asked.op, asked.session, req))
}

/// This node's answer to a relayed request, to mail back.
pub(super) async fn pack_response(res: Response) -> Bytes {
    let (parts, body) = res.into_parts();
    // These answers are whole in memory already (no streams): reading them is copying.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let head = Answered {
        status: parts.status.as_u16(),
        headers: ANSWERED
            .iter()
            .filter_map(|name| {
                let v = parts.headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), v.to_owned()))
            })
            .collect(),
    };
    pack(&head, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_node() {
        let t = format!("{}.node-1.a", "ab".repeat(16));
        assert_eq!(node_of(&t), Some("node-1.a"));
        for bad in [
            "short".to_owned(),
            "ab".repeat(16),
            format!("{}.", "ab".repeat(16)),
            format!("{}x{}", "ab".repeat(16), "node"),
            format!("{}.no/de", "ab".repeat(16)),
            format!("{}.node", "zz".repeat(16)),
        ] {
            assert_eq!(node_of(&bad), None, "{bad}");
        }
    }

    #[test]
    fn heads_and_bodies_round_trip() {
        let m = pack(
            &Answered {
                status: 204,
                headers: vec![("retry-after".into(), "1".into())],
            },
            b"line one\nline two\n",
        );
        let (head, body) = unpack::<Answered>(&m).unwrap();
        assert_eq!(head.status, 204);
        assert_eq!(&body[..], b"line one\nline two\n");
        assert!(unpack::<Answered>(&Bytes::from_static(b"no line")).is_none());
    }
}
