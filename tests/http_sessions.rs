//! `wshub.v1` over plain HTTP (`/v1/sse` with POSTs up, and long polling `/v1/poll`): the
//! same session as on WebSocket, chatting with WebSocket clients; sessions named by tokens
//! nobody can guess and bound to the user who opened them; a client that vanishes closed
//! within its bound; bad requests answered 400/401/403/404/409/413; a client that pipelines
//! 10,000 commands while reading slowly gets every reply, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/jwt.rs"]
mod jwt;
#[path = "common/sse.rs"]
mod sse;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sse::Sse;
use wshub::HubConfig;

async fn post(
    addr: SocketAddr,
    session: &str,
    lines: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    http(
        addr,
        "POST",
        &format!("/v1/sessions/{session}"),
        headers,
        lines.as_bytes(),
    )
    .await
}

/// A long-polling client.
struct Poller {
    addr: SocketAddr,
    session: String,
    auth: Option<String>,
}

impl Poller {
    async fn open(addr: SocketAddr, query: &str) -> Poller {
        let r = http(addr, "GET", &format!("/v1/poll{query}"), &[], b"").await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        let v = r.json();
        assert_eq!(v["type"], "session");
        let session = v["session"].as_str().unwrap().to_owned();
        // 122 random bits in hex, then the node that holds the session.
        let (random, node) = session.split_at(32);
        assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{session}");
        assert!(node.starts_with('.') && node.len() > 1, "{session}");
        Poller {
            addr,
            session,
            auth: None,
        }
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        self.auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default()
    }

    /// One poll: its frames (none on 204).
    async fn poll(&self) -> (u16, Vec<Value>) {
        let r = http(
            self.addr,
            "GET",
            &format!("/v1/poll/{}", self.session),
            &self.headers(),
            b"",
        )
        .await;
        let frames = if r.status == 200 {
            String::from_utf8(r.body)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        } else {
            Vec::new()
        };
        (r.status, frames)
    }

    async fn send(&self, lines: &str) -> u16 {
        post(self.addr, &self.session, lines, &self.headers())
            .await
            .status
    }

    /// Polls until a frame matches `pred`; returns it.
    async fn until(&self, pred: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let (status, frames) = self.poll().await;
                assert!(status == 200 || status == 204, "poll answered {status}");
                if let Some(f) = frames.into_iter().find(|f| pred(f)) {
                    return f;
                }
            }
        })
        .await
        .expect("no such frame")
    }
}

#[tokio::test]
async fn sse_and_long_poll_sessions_chat_with_websocket_clients() {
    let server = TestServer::with_config(fast_config()).await;
    let addr = server.addr;
    // A WebSocket client in the room.
    let (mut ws, _) = connect_v1(&format!("ws://{addr}/ws")).await;
    assert_eq!(
        cmd(&mut ws, json!({"id":1,"type":"join","group":"room"})).await["type"],
        "ack"
    );
    // An SSE session: its name first, then its welcome; commands up in POSTs.
    let mut s = Sse::open(addr, "/v1/sse", &[]).await;
    assert_eq!(s.status, 200);
    let session = s.next_named("session").await.json()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let welcome = s.next().await.json();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["protocol"], "wshub.v1");
    let r = post(addr, &session, "{\"id\":1,\"type\":\"join\",\"group\":\"room\"}\n{\"id\":2,\"type\":\"publish\",\"group\":\"room\",\"message\":\"from sse\"}", &[]).await;
    assert_eq!(r.status, 204);
    let mut acks = Vec::new();
    let mut got_own = false;
    while acks.len() < 2 || !got_own {
        let v = s.next().await.json();
        match v["type"].as_str() {
            Some("ack") => acks.push(v["id"].as_u64().unwrap()),
            Some("message") => got_own |= v["message"] == "from sse",
            _ => {}
        }
    }
    assert_eq!(acks, [1, 2], "replies in order");
    let m = next_json_where(&mut ws, |v| v["type"] == "message").await;
    assert_eq!(m["message"], "from sse");
    // A long-polling session in the same room.
    let p = Poller::open(addr, "").await;
    let welcome = p.until(|f| f["type"] == "welcome").await;
    assert_eq!(welcome["protocol"], "wshub.v1");
    assert_eq!(
        p.send(r#"{"id":"j","type":"join","group":"room"}"#).await,
        204
    );
    p.until(|f| f["type"] == "ack" && f["id"] == "j").await;
    assert_eq!(
        cmd(
            &mut ws,
            json!({"id":2,"type":"publish","group":"room","message":"from ws"})
        )
        .await["type"],
        "ack"
    );
    let m = p.until(|f| f["type"] == "message").await;
    assert_eq!(m["message"], "from ws");
    let sse_got = loop {
        let v = s.next().await.json();
        if v["type"] == "message" && v["message"] == "from ws" {
            break v;
        }
    };
    assert_eq!(sse_got["group"], "room");
    // Nothing waiting: a poll answers 204 after its wait.
    let (status, _) = p.poll().await;
    assert!(status == 204 || status == 200);
    // The client says goodbye: its last poll has the close, then the session is gone.
    let r = http(
        addr,
        "DELETE",
        &format!("/v1/sessions/{}", p.session),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    let close = p.until(|f| f["type"] == "close").await;
    assert_eq!(close["code"], 1000);
    wait_for(|| server.hub.connection_count() == 2).await;
}

#[tokio::test]
async fn bad_session_requests_get_specific_answers_and_disturb_nobody() {
    let server = TestServer::with_config(HubConfig {
        max_message_size: 1024,
        ..fast_config()
    })
    .await;
    let addr = server.addr;
    let p = Poller::open(addr, "").await;
    // A guessed session: 404 on every verb.
    let guess = "0123456789abcdef0123456789abcdef";
    for (method, path) in [
        ("GET", format!("/v1/poll/{guess}")),
        ("POST", format!("/v1/sessions/{guess}")),
        ("DELETE", format!("/v1/sessions/{guess}")),
    ] {
        let r = http(addr, method, &path, &[], b"{}").await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    // Oversized: 413; not UTF-8: 400.
    let big = format!(
        "{{\"id\":1,\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(2000)
    );
    assert_eq!(p.send(&big).await, 413);
    let r = http(
        addr,
        "POST",
        &format!("/v1/sessions/{}", p.session),
        &[],
        &[0xff, 0xfe],
    )
    .await;
    assert_eq!(r.status, 400);
    // Two polls at once: the second is refused.
    let first = {
        let addr = p.addr;
        let path = format!("/v1/poll/{}", p.session);
        tokio::spawn(async move { http(addr, "GET", &path, &[], b"").await.status })
    };
    // The first poll takes the welcome at once; the next one waits: find a waiting one.
    let mut conflict = false;
    for _ in 0..50 {
        let r = http(addr, "GET", &format!("/v1/poll/{}", p.session), &[], b"").await;
        if r.status == 409 {
            conflict = true;
            break;
        }
    }
    assert!(conflict, "a second poll at once is 409");
    let _ = first.await;
    // An SSE session is not polled.
    let mut s = Sse::open(addr, "/v1/sse", &[]).await;
    let sse_session = s.next_named("session").await.json()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http(addr, "GET", &format!("/v1/poll/{sse_session}"), &[], b"").await;
    assert_eq!(r.status, 400);
    // A bad recover: 400 before anything opens.
    let r = http(addr, "GET", "/v1/poll?recover=nope", &[], b"").await;
    assert_eq!(r.status, 400);
    // Invalid commands get the protocol's own error, on the session.
    assert_eq!(p.send("not json").await, 204);
    let e = p.until(|f| f["type"] == "error").await;
    assert_eq!(e["code"], "malformed");
    // Still fine.
    assert_eq!(p.send(r#"{"id":9,"type":"ping"}"#).await, 204);
    p.until(|f| f["type"] == "ack" && f["id"] == 9).await;
    assert_eq!(s.status, 200);
}

#[tokio::test]
async fn a_session_is_bound_to_the_user_who_opened_it() {
    let secret = "http-sessions-secret-of-32-bytes-at-least";
    let server = TestServer::with_auth(wshub::auth::AuthSettings {
        jwt_secret: Some(secret.into()),
        ..Default::default()
    })
    .await;
    let addr = server.addr;
    let ann = jwt::jwt(json!({"sub":"ann","exp": now_secs() + 600}), secret);
    let bob = jwt::jwt(json!({"sub":"bob","exp": now_secs() + 600}), secret);
    let r = http(addr, "GET", "/v1/poll", &[], b"").await;
    assert_eq!(r.status, 401, "a token is required");
    let mut p = Poller::open(addr, &format!("?access_token={ann}")).await;
    assert_eq!(p.send(r#"{"id":1,"type":"ping"}"#).await, 401, "no token");
    p.auth = Some(format!("Bearer {bob}"));
    assert_eq!(
        p.send(r#"{"id":1,"type":"ping"}"#).await,
        403,
        "another user"
    );
    assert_eq!(p.poll().await.0, 403);
    p.auth = Some(format!("Bearer {ann}"));
    assert_eq!(p.send(r#"{"id":1,"type":"ping"}"#).await, 204);
    let welcome = p.until(|f| f["type"] == "welcome").await;
    assert_eq!(welcome["user"], "ann");
    p.until(|f| f["type"] == "ack" && f["id"] == 1).await;
}

#[tokio::test]
async fn a_long_poll_client_that_vanishes_is_closed_within_its_bound() {
    let server = TestServer::with_config(fast_config()).await;
    let addr = server.addr;
    let p = Poller::open(addr, "").await;
    p.until(|f| f["type"] == "welcome").await;
    assert_eq!(server.hub.connection_count(), 1);
    // No more polls: closed after the poll's wait plus the idle timeout (0.1 s + 1 s here).
    wait_for(|| server.hub.connection_count() == 0).await;
    let closed = metric(addr, "wshub_disconnects_total{reason=\"idle_timeout\"}").await;
    assert_eq!(closed, 1.0);
}

#[tokio::test]
async fn a_client_pipelining_10000_commands_while_reading_slowly_gets_every_reply_in_order() {
    let server = TestServer::with_config(HubConfig {
        send_queue: 256,
        ..fast_config()
    })
    .await;
    let addr = server.addr;
    let p = std::sync::Arc::new(Poller::open(addr, "").await);
    const N: usize = 10_000;
    let sender = {
        let p = p.clone();
        tokio::spawn(async move {
            for chunk in 0..(N / 500) {
                let lines: String = (1..=500)
                    .map(|i| format!("{{\"id\":{},\"type\":\"ping\"}}\n", chunk * 500 + i))
                    .collect();
                let status = p.send(&lines).await;
                assert_eq!(status, 204, "chunk {chunk}");
            }
        })
    };
    let mut next = 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while next <= N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replies stopped at {next}"
        );
        let (status, frames) = p.poll().await;
        assert!(status == 200 || status == 204, "poll answered {status}");
        for f in frames {
            if f["type"] == "ack" {
                assert_eq!(f["id"], next, "in order");
                next += 1;
            } else {
                assert_eq!(f["type"], "welcome", "{f}");
            }
        }
        // A slow reader.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sender.await.unwrap();
    assert_eq!(metric(addr, "wshub_slow_consumer_closes_total").await, 0.0);
    assert_eq!(server.hub.connection_count(), 1);
}

/// `--rate-limit` holds on HTTP sessions as on WebSocket: past the burst, each command is
/// dropped and answered `rate_limited` (or the session closed, with `close`).
#[tokio::test]
async fn http_sessions_are_rate_limited_like_websocket() {
    for action in [
        wshub::hub::RateLimitAction::Error,
        wshub::hub::RateLimitAction::Close,
    ] {
        let server = TestServer::with_config(HubConfig {
            rate_limit: Some(wshub::hub::RateLimit {
                // One token per 100 s: no refill during the test, however slow the machine.
                per_second: 0.01,
                burst: 3,
                action,
            }),
            ..fast_config()
        })
        .await;
        let p = Poller::open(server.addr, "").await;
        let pings: String = (1..=5)
            .map(|i| format!("{{\"id\":{i},\"type\":\"ping\"}}\n"))
            .collect();
        assert_eq!(p.send(&pings).await, 204);
        if action == wshub::hub::RateLimitAction::Error {
            let mut replies = Vec::new();
            tokio::time::timeout(WAIT, async {
                while !replies.iter().any(|f: &Value| f["id"] == 5) {
                    let (status, frames) = p.poll().await;
                    assert!(status == 200 || status == 204, "poll answered {status}");
                    replies.extend(frames.into_iter().filter(|f| f["id"].is_number()));
                }
            })
            .await
            .expect("every command answered");
            let kinds: Vec<(i64, &str)> = replies
                .iter()
                .map(|f| (f["id"].as_i64().unwrap(), f["type"].as_str().unwrap()))
                .collect();
            assert_eq!(
                kinds,
                [
                    (1, "ack"),
                    (2, "ack"),
                    (3, "ack"),
                    (4, "error"),
                    (5, "error")
                ]
            );
            assert_eq!(replies[4]["code"], "rate_limited");
        } else {
            let close = p.until(|f| f["type"] == "close").await;
            assert_eq!(close["code"], 1008, "{close}");
        }
        // Both past the burst with `error`; with `close`, at least the one that closed it.
        let dropped = metric(server.addr, "wshub_drops_total{reason=\"rate_limited\"}").await;
        assert!(
            dropped == 2.0 || (dropped == 1.0 && action == wshub::hub::RateLimitAction::Close),
            "{dropped}"
        );
        server.stop().await;
    }
}
