//! `GET /events`: resumable Server-Sent Events streams over a real socket. Every reconnect
//! with the last event id continues exactly after it in every stream (nothing missed, nothing
//! twice); a stream history cannot bring back says so; bad requests get problem+json; a
//! reader that stops reading meets its group's delivery policy and disturbs nobody.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/jwt.rs"]
mod jwt;
#[path = "common/sse.rs"]
mod sse;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::json;
use sse::Sse;
use wshub::HubConfig;

async fn publish(addr: std::net::SocketAddr, group: &str, message: serde_json::Value) {
    let r = http(
        addr,
        "POST",
        &format!("/api/groups/{group}/broadcast"),
        &[("Content-Type", "application/json")],
        json!({ "message": message }).to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn a_stream_resumes_after_each_drop_with_nothing_missed_and_nothing_twice() {
    let server = TestServer::start().await;
    let addr = server.addr;
    const PER_STREAM: u64 = 60;
    // Published while the reader drops and reconnects, as fast as the hub takes them.
    let hub = server.hub.clone();
    let publisher = tokio::spawn(async move {
        for i in 1..=PER_STREAM {
            publish(addr, "a", json!({ "n": i })).await;
            publish(addr, "b", json!({ "n": i })).await;
            hub.broadcast_text(&format!("all {i}"));
        }
    });
    let path = "/events?group=a&group=b&all";
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut last_id: Option<String> = None;
    let mut rounds = 0;
    let total = |seen: &BTreeMap<String, Vec<u64>>| seen.values().map(Vec::len).sum::<usize>();
    while total(&seen) < 3 * PER_STREAM as usize {
        rounds += 1;
        assert!(rounds < 500, "too many rounds: {seen:?}");
        let headers: Vec<(&str, &str)> = last_id
            .as_deref()
            .map(|id| vec![("Last-Event-ID", id)])
            .unwrap_or_default();
        let mut s = Sse::open(addr, path, &headers).await;
        assert_eq!(s.status, 200);
        assert_eq!(
            s.header("content-type"),
            Some("text/event-stream; charset=utf-8")
        );
        // A few events, then the connection drops (the socket is closed mid-stream).
        let take = 1 + rounds % 7;
        let mut got = 0;
        while got < take {
            let Some(ev) = s.next_within(Duration::from_secs(2)).await else {
                break;
            };
            match ev.name.as_str() {
                "message" | "server-broadcast" => {
                    let v = ev.json();
                    let stream = v["group"].as_str().unwrap_or("*").to_owned();
                    seen.entry(stream)
                        .or_default()
                        .push(v["offset"].as_u64().unwrap());
                    got += 1;
                }
                "subscribed" => {
                    assert_ne!(ev.json()["recovered"], false, "{}", ev.data);
                }
                "welcome" => {
                    assert_ne!(ev.json()["all"]["recovered"], false, "{}", ev.data);
                }
                other => panic!("unexpected event {other}: {}", ev.data),
            }
        }
        assert!(s.saw_retry, "every stream starts with `retry:`");
        if s.last_id.is_some() {
            last_id = s.last_id.clone();
        }
    }
    publisher.await.unwrap();
    for (stream, offsets) in &seen {
        let want: Vec<u64> = (1..=PER_STREAM).collect();
        assert_eq!(
            offsets, &want,
            "stream {stream}: every offset once, in order"
        );
    }
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn a_stream_history_cannot_bring_back_says_so() {
    let server = TestServer::start().await;
    let mut s = Sse::open(server.addr, "/events?group=g", &[]).await;
    let ack = s.next_named("subscribed").await;
    let v = ack.json();
    assert_eq!(v["group"], "g");
    let epoch = v["epoch"].as_str().unwrap().to_owned();
    assert_eq!(ack.id.as_deref(), Some(format!("{epoch}:0").as_str()));
    // Another epoch (the server restarted with in-memory history): not recovered.
    let mut s = Sse::open(
        server.addr,
        "/events?group=g",
        &[("Last-Event-ID", "0000deadbeef:12")],
    )
    .await;
    let ack = s.next_named("subscribed").await;
    assert_eq!(ack.json()["recovered"], false, "{}", ack.data);
    assert_eq!(ack.id.as_deref(), Some(format!("{epoch}:0").as_str()));
    // The same epoch, nothing missed: recovered.
    let id = format!("{epoch}:0");
    let mut s = Sse::open(server.addr, "/events?group=g", &[("Last-Event-ID", &id)]).await;
    let ack = s.next_named("subscribed").await;
    assert_eq!(ack.json()["recovered"], true, "{}", ack.data);
    // `lastEventId` in the query, for clients that cannot set the header.
    let mut s = Sse::open(
        server.addr,
        &format!("/events?group=g&lastEventId={epoch}:0"),
        &[],
    )
    .await;
    assert_eq!(s.next_named("subscribed").await.json()["recovered"], true);
}

#[tokio::test]
async fn bad_requests_get_a_specific_problem() {
    let server = TestServer::start().await;
    let many: String = (0..65).map(|i| format!("group=g{i}&")).collect();
    let cases = [
        ("/events?group=bad%20name", vec![], "1 to 128 characters"),
        ("/events?group=a&group=a", vec![], "listed twice"),
        ("/events?all=maybe", vec![], "`all` is"),
        ("/events?all=false", vec![], "nothing to follow"),
        (&format!("/events?{many}")[..], vec![], "at most 64 streams"),
        (
            "/events?group=a",
            vec![("Last-Event-ID", "e:1,e:2")],
            "names 2 stream positions",
        ),
        (
            "/events?group=a",
            vec![("Last-Event-ID", "e:-1")],
            "position 0",
        ),
        (
            "/events?group=a",
            vec![("Last-Event-ID", "e:184467440737095516150")],
            "position 0",
        ),
    ];
    for (path, headers, says) in cases {
        let s = Sse::open(server.addr, path, &headers).await;
        assert_eq!(s.status, 400, "{path}");
        assert_eq!(s.header("content-type"), Some("application/problem+json"));
        let body = s.body().await;
        assert!(body.contains(says), "{path}: {body}");
    }
    // The server is fine, and other streams too.
    let mut s = Sse::open(server.addr, "/events?group=a", &[]).await;
    assert_eq!(s.next_named("subscribed").await.json()["group"], "a");
}

#[tokio::test]
async fn tokens_are_checked_and_their_groups_enforced_before_anything_streams() {
    let secret = "events-secret-of-at-least-32-bytes!";
    let server = TestServer::with_auth(wshub::auth::AuthSettings {
        jwt_secret: Some(secret.into()),
        ..Default::default()
    })
    .await;
    let s = Sse::open(server.addr, "/events?group=news", &[]).await;
    assert_eq!(s.status, 401);
    let token = jwt::jwt(
        json!({ "sub": "ann", "exp": now_secs() + 600, "groups": ["news", "room:*"] }),
        secret,
    );
    let s = Sse::open(
        server.addr,
        &format!("/events?group=news&group=secret&access_token={token}"),
        &[],
    )
    .await;
    assert_eq!(s.status, 403);
    assert!(s.body().await.contains("`secret`"));
    let mut s = Sse::open(
        server.addr,
        &format!("/events?group=news&group=room:1&access_token={token}"),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    let welcome = s.next_named("welcome").await;
    assert_eq!(welcome.json()["user"], "ann");
    publish(server.addr, "room:1", json!("hello")).await;
    let m = s.next_named("message").await;
    assert_eq!(m.json()["message"], "hello");
    // A token that runs out ends the stream with a `close` event.
    let short = jwt::jwt(
        json!({ "sub": "bob", "exp": now_secs() + 1, "groups": ["news"] }),
        secret,
    );
    let server2 = TestServer::with_auth(wshub::auth::AuthSettings {
        jwt_secret: Some(secret.into()),
        leeway: Duration::ZERO,
        ..Default::default()
    })
    .await;
    let mut s = Sse::open(
        server2.addr,
        &format!("/events?group=news&access_token={short}"),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    let close = s.next_named("close").await;
    assert_eq!(close.json()["code"], 4401, "{}", close.data);
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_open_and_shutdown_says_reconnect() {
    let server = TestServer::with_config(HubConfig {
        shutdown_timeout: Duration::from_secs(1),
        ..fast_config()
    })
    .await;
    let mut s = Sse::open(server.addr, "/events?group=quiet", &[]).await;
    s.next_named("subscribed").await;
    // Longer than the idle timeout, nothing published: heartbeat comments, still open.
    let none = s.next_within(Duration::from_millis(1500)).await;
    assert!(none.is_none(), "{none:?}");
    assert!(s.comments >= 3, "heartbeats: {}", s.comments);
    assert_eq!(server.hub.connection_count(), 1);
    server.hub.shutdown();
    let close = s.next_named("close").await;
    assert_eq!(close.json()["code"], 1012);
    assert!(s.next_within(WAIT).await.is_none(), "the stream ends");
    wait_for(|| server.hub.connection_count() == 0).await;
}

#[tokio::test]
async fn a_reader_that_stops_reading_meets_its_groups_policy_and_slows_nobody() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use wshub::manager::policy::{Policy, Rule};
    let server = TestServer::with_config(HubConfig {
        send_queue: 256,
        max_send_buffer: 256 * 1024,
        delivery_policies: vec![Rule {
            pattern: "feed".into(),
            policy: Policy::DropOldest,
        }],
        shutdown_timeout: Duration::from_secs(1),
        ..HubConfig::default()
    })
    .await;
    let addr = server.addr;
    let mut feed = Sse::open_with(addr, "/events?group=feed", &[], Some(4096)).await;
    feed.next_named("subscribed").await;
    let mut strict = Sse::open_with(addr, "/events?group=strict", &[], Some(4096)).await;
    strict.next_named("subscribed").await;
    // A bystander in both groups, reading everything.
    let (mut ws, _) = connect_v1(&format!("ws://{addr}/ws")).await;
    for (i, g) in ["feed", "strict"].iter().enumerate() {
        let ack = cmd(&mut ws, json!({ "id": i, "type": "join", "group": g })).await;
        assert_eq!(ack["type"], "ack");
    }
    let got = Arc::new(AtomicUsize::new(0));
    let counter = got.clone();
    let reader = tokio::spawn(async move {
        loop {
            let v = next_json(&mut ws).await;
            if v["type"] == "message" {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    const N: usize = 1500;
    let body = serde_json::value::to_raw_value(&"x".repeat(4096)).unwrap();
    for i in 0..N {
        server.hub.publish_to_group("feed", &body);
        server.hub.publish_to_group("strict", &body);
        if i % 25 == 24 {
            let want = 2 * (i + 1);
            wait_for(|| got.load(Ordering::Relaxed) >= want).await;
        }
    }
    wait_for(|| got.load(Ordering::Relaxed) >= 2 * N).await;
    reader.abort();
    // `disconnect` (the default): the reader that stopped is closed as a slow consumer.
    wait_metric(addr, "wshub_slow_consumer_closes_total", 1.0).await;
    // `drop-oldest`: it stays, told what it lost, and gets the newest.
    let mut gap = None;
    let mut last = 0;
    while last < N as u64 {
        let ev = feed.next().await;
        match ev.name.as_str() {
            "gap" => gap = Some(ev.json()),
            "message" => last = ev.json()["offset"].as_u64().unwrap(),
            _ => {}
        }
    }
    let gap = gap.expect("a gap event");
    assert_eq!(gap["group"], "feed", "{gap}");
    assert!(feed.last_id.as_deref().unwrap().ends_with(&format!(":{N}")));
    drop(strict);
}
