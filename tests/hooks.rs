//! wshub's own webhooks (for `/ws` clients) and the authorization hooks, against a real HTTP
//! receiver and real WebSocket clients: every event, its signature (Standard Webhooks), the
//! choice of events; hooks that allow, deny, replace, time out, answer garbage or are down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use receiver::{Receiver, Reply};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use wshub::apps::Webhook;
use wshub::HubConfig;

const KEY: &[u8] = b"a-webhook-secret-of-24b!";

fn webhooks(url: &str, events: &[&str]) -> wshub::webhooks::Settings {
    wshub::webhooks::Settings {
        targets: vec![Webhook {
            url: url.to_owned(),
            event_types: events.iter().map(|e| e.to_string()).collect(),
        }],
        key: Arc::from(KEY),
    }
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

/// The events about connection `conn`, by type.
fn about(events: &[Value], conn: &str) -> Vec<String> {
    types(
        &events
            .iter()
            .filter(|e| e["data"]["connection"] == conn)
            .cloned()
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn every_event_of_ws_clients_is_told_signed_as_standard_webhooks_say() {
    let rx = Receiver::start(vec![]).await;
    let s = TestServer::with_config(HubConfig {
        webhooks: webhooks(&rx.url, &[]),
        ..fast_config()
    })
    .await;
    let (mut plain, _) = connect(&s.ws_url()).await;
    let (mut v1, id) = connect_v1(&s.ws_url()).await;
    let (mut target, target_id) = connect_v1(&s.ws_url()).await;
    assert_eq!(
        cmd(&mut v1, json!({"id": 1, "type": "join", "group": "room"})).await["type"],
        "ack"
    );
    cmd(
        &mut v1,
        json!({"id": 2, "type": "publish", "group": "room", "message": {"x": 1}}),
    )
    .await;
    let sent = cmd(
        &mut v1,
        json!({"id": 3, "type": "send", "connection": target_id, "message": "psst"}),
    )
    .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    next_json_where(&mut target, |v| v["type"] == "direct").await;
    send_text(&mut plain, "hello all").await;
    next_json_where(&mut v1, |v| v["message"] == "hello all").await;
    cmd(&mut v1, json!({"id": 4, "type": "leave", "group": "room"})).await;
    cmd(&mut v1, json!({"id": 5, "type": "join", "group": "room"})).await;
    v1.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let events = rx
        .wait_for("the v1 client's connection.closed", |e| {
            about(e, &id).contains(&"connection.closed".to_owned())
        })
        .await;
    assert_eq!(
        about(&events, &id),
        [
            "connection.opened",
            "group.joined",
            "message.received",
            "message.received",
            "group.left",
            "group.joined",
            "group.left",
            "connection.closed"
        ]
    );
    let of = |ty: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["type"] == ty)
            .map(|e| e["data"].clone())
            .collect()
    };
    // The room was occupied and vacated twice, each once, in order around the joins and leaves.
    let room: Vec<String> = types(
        &events
            .iter()
            .filter(|e| e["data"]["group"] == "room")
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        room,
        [
            "group.occupied",
            "group.joined",
            "message.received",
            "group.left",
            "group.vacated",
            "group.occupied",
            "group.joined",
            "group.left",
            "group.vacated"
        ]
    );
    let opened = &of("connection.opened");
    let v1_opened = opened.iter().find(|d| d["connection"] == id).unwrap();
    assert_eq!(v1_opened["protocol"], "wshub.v1");
    assert!(v1_opened["remote"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(opened.iter().any(|d| d["protocol"] == "plain"));
    let messages = of("message.received");
    assert_eq!(
        messages
            .iter()
            .map(|m| (m["kind"].as_str().unwrap(), m["data"].clone()))
            .collect::<Vec<_>>(),
        [
            ("publish", json!({"x": 1})),
            ("send", json!("psst")),
            ("broadcast", json!("hello all"))
        ]
    );
    assert_eq!(messages[0]["group"], "room");
    assert_eq!(messages[1]["to"], json!({"connection": target_id}));
    let closed = of("connection.closed");
    assert_eq!(
        (closed[0]["code"].as_u64(), closed[0]["reason"].as_str()),
        (Some(4001), Some("normal"))
    );
    // Each event has its own id and the node; every request is signed (Standard Webhooks).
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len());
    assert!(events.iter().all(|e| e["node"] == s.hub.node_id()));
    for got in rx.got.lock().iter() {
        let ts: u64 = got.header("webhook-timestamp").parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(ts) < 60);
        assert_eq!(
            got.header("webhook-signature"),
            wshub::signing::standard_signature(
                KEY,
                &got.header("webhook-id"),
                ts,
                got.body.as_bytes()
            )
        );
    }
    drop(plain);
    s.stop().await;
}

#[tokio::test]
async fn a_target_gets_only_the_events_it_chose() {
    let rx = Receiver::start(vec![]).await;
    let s = TestServer::with_config(HubConfig {
        webhooks: webhooks(&rx.url, &["group.occupied", "group.vacated"]),
        ..fast_config()
    })
    .await;
    let (mut v1, _) = connect_v1(&s.ws_url()).await;
    cmd(&mut v1, json!({"id": 1, "type": "join", "group": "g"})).await;
    cmd(
        &mut v1,
        json!({"id": 2, "type": "publish", "group": "g", "message": 1}),
    )
    .await;
    drop(v1);
    let events = rx
        .wait_for("vacated", |e| {
            types(e).contains(&"group.vacated".to_owned())
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(types(&rx.events()), ["group.occupied", "group.vacated"]);
    assert_eq!(events[0]["data"], json!({"group": "g"}));
    s.stop().await;
}

/// A server whose hooks all go to `url`, joins and publishes asked for groups `private-*`.
async fn hooked(url: &str, timeout: Duration) -> TestServer {
    let route = |url: &str| wshub::hooks::Route {
        url: url.to_owned(),
        groups: vec!["private-*".into()],
    };
    TestServer::with_config(HubConfig {
        hooks: wshub::hooks::Settings {
            connect: Some(url.to_owned()),
            join: Some(route(url)),
            publish: Some(route(url)),
            timeout,
            key: Arc::from(KEY),
            ..Default::default()
        },
        // Clients here wait on other clients without reading (no Pong): no idle timeout then.
        idle_timeout: Duration::from_secs(30),
        ..fast_config()
    })
    .await
}

/// Connects as a browser with a session cookie would; the close code if refused.
async fn connect_cookie(url: &str, cookie: &str) -> Result<(Ws, Value), Option<(u16, String)>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert("Sec-WebSocket-Protocol", "wshub.v1".parse().unwrap());
    h.insert("Cookie", cookie.parse().unwrap());
    h.insert("X-Secret-Header", "not forwarded".parse().unwrap());
    let (mut ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(res.status(), 101);
    match next_msg(&mut ws).await {
        Message::Text(t) => Ok((ws, serde_json::from_str(t.as_str()).unwrap())),
        Message::Close(f) => Err(f.map(|f| (u16::from(f.code), f.reason.to_string()))),
        other => panic!("unexpected {other:?}"),
    }
}

/// The close code a connection with this cookie is refused with.
async fn refused_with(s: &TestServer, cookie: &str) -> u16 {
    match connect_cookie(&s.ws_url(), cookie).await {
        Err(Some((code, _))) => code,
        Err(None) => panic!("{cookie}: closed without a code"),
        Ok(_) => panic!("{cookie}: admitted"),
    }
}

/// The hook's answer to a request of each type.
fn backend(body: &Value) -> Reply {
    match body["type"].as_str().unwrap() {
        "connect" => {
            let cookie = body["headers"]["cookie"].as_str().unwrap_or("");
            match cookie {
                "session=ann" => Reply::json(json!({
                    "allow": true, "user": "ann", "info": {"name": "Ann"},
                    "groups": ["private-ann", "public-*"]
                })),
                "session=slow" => Reply {
                    delay: Duration::from_secs(3),
                    ..Reply::json(json!({"allow": true}))
                },
                "session=garbage" => Reply {
                    body: "<html>login</html>".into(),
                    ..Reply::status(200)
                },
                "session=5xx" => Reply::status(502),
                // JSON, but not the answer: `allow` is not a boolean.
                "session=schema" => Reply::json(json!({"allow": "yes", "user": "x"})),
                // An answer larger than any answer may be.
                "session=huge" => Reply::json(json!({"allow": true, "info": "x".repeat(100_000)})),
                _ => Reply::json(json!({"allow": false, "code": 4401, "reason": "log in first"})),
            }
        }
        "join" => match body["group"].as_str().unwrap() {
            "private-ann" => Reply::json(json!({"allow": true, "ttl": 60})),
            "private-slow" => Reply {
                delay: Duration::from_millis(800),
                ..Reply::json(json!({"allow": true}))
            },
            "private-late" => Reply {
                delay: Duration::from_secs(3),
                ..Reply::json(json!({"allow": true}))
            },
            _ => Reply::json(json!({"allow": false, "reason": "not yours"})),
        },
        "publish" => match body["data"]["text"].as_str().unwrap_or("") {
            "spam" => Reply::json(json!({"allow": false, "reason": "no spam"})),
            "darn" => Reply::json(json!({"allow": true, "data": {"text": "****"}})),
            _ => Reply::json(json!({"allow": true})),
        },
        other => panic!("hook type {other}"),
    }
}

#[tokio::test]
async fn the_connect_hook_admits_by_cookie_denies_with_a_close_code_and_fails_closed() {
    let rx = Receiver::with(|b, _| backend(b)).await;
    let s = hooked(&rx.url, Duration::from_millis(1500)).await;
    let url = format!("{}?room=7&access_token=hidden", s.ws_url());
    let (mut ws, welcome) = connect_cookie(&url, "session=ann").await.unwrap();
    assert_eq!(welcome["user"], "ann");
    // What the backend was told: the cookie, the chosen headers, the address, the query.
    let asked = rx.got.lock()[0].json();
    assert_eq!(asked["type"], "connect");
    assert_eq!(asked["headers"]["cookie"], "session=ann");
    assert!(asked["headers"].get("x-secret-header").is_none());
    assert_eq!(asked["query"], json!({"room": "7"}));
    assert_eq!(asked["path"], "/ws");
    assert_eq!(asked["protocol"], "wshub.v1");
    assert!(asked["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    // The request is signed as the webhooks are.
    let got = rx.got.lock()[0].clone();
    let ts: u64 = got.header("webhook-timestamp").parse().unwrap();
    assert_eq!(
        got.header("webhook-signature"),
        wshub::signing::standard_signature(KEY, &got.header("webhook-id"), ts, got.body.as_bytes())
    );
    // The groups the backend allowed, and only those.
    let e = cmd(
        &mut ws,
        json!({"id": 1, "type": "join", "group": "elsewhere"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let a = cmd(
        &mut ws,
        json!({"id": 2, "type": "join", "group": "public-news"}),
    )
    .await;
    assert_eq!(a["type"], "ack", "{a}");
    // Denied, with the backend's code and reason.
    assert_eq!(
        connect_cookie(&s.ws_url(), "session=nobody").await.err(),
        Some(Some((4401, "log in first".into())))
    );
    // Fail-closed: too slow, garbage, a 5xx.
    for (cookie, code) in [
        ("session=slow", 1013),
        ("session=garbage", 1011),
        ("session=5xx", 1013),
        ("session=schema", 1011),
        ("session=huge", 1011),
    ] {
        assert_eq!(refused_with(&s, cookie).await, code, "{cookie}");
    }
    let metrics = String::from_utf8(http(s.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    for line in [
        r#"wshub_hook_calls_total{hook="connect",outcome="allow"} 1"#,
        r#"wshub_hook_calls_total{hook="connect",outcome="deny"} 1"#,
        r#"wshub_hook_calls_total{hook="connect",outcome="timeout"} 1"#,
        r#"wshub_hook_calls_total{hook="connect",outcome="invalid"} 3"#,
        r#"wshub_hook_calls_total{hook="connect",outcome="error"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // The one admitted connection is still served.
    let p = cmd(&mut ws, json!({"id": 3, "type": "ping"})).await;
    assert_eq!(p["type"], "ack");
    s.stop().await;

    // A backend that is down: refused with 1013, nobody connected.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = hooked(
        &format!("http://127.0.0.1:{port}/hook"),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(refused_with(&s, "session=ann").await, 1013);
    assert_eq!(s.hub.connection_count(), 0);
    s.stop().await;
}

#[tokio::test]
async fn join_and_publish_hooks_allow_deny_replace_and_cache_while_the_connection_is_served() {
    let rx = Receiver::with(|b, _| backend(b)).await;
    let s = hooked(&rx.url, Duration::from_millis(1500)).await;
    let (mut ws, _) = connect_cookie(&s.ws_url(), "session=ann").await.unwrap();
    let asked = |ty: &str| {
        rx.got
            .lock()
            .iter()
            .filter(|g| g.json()["type"] == ty)
            .count()
    };
    // Groups outside the patterns are not asked about.
    let a = cmd(
        &mut ws,
        json!({"id": 1, "type": "join", "group": "public-a"}),
    )
    .await;
    assert_eq!(a["type"], "ack");
    assert_eq!(asked("join"), 0);
    // Allowed for 60 s: a second join after a leave is not asked again.
    let a = cmd(
        &mut ws,
        json!({"id": 2, "type": "join", "group": "private-ann"}),
    )
    .await;
    assert_eq!(a["type"], "ack", "{a}");
    cmd(
        &mut ws,
        json!({"id": 3, "type": "leave", "group": "private-ann"}),
    )
    .await;
    let a = cmd(
        &mut ws,
        json!({"id": 4, "type": "join", "group": "private-ann"}),
    )
    .await;
    assert_eq!(a["type"], "ack", "{a}");
    assert_eq!(asked("join"), 1);
    // Denied with the backend's reason. (`groups` allows `private-ann` and `public-*` only:
    // the other private group is forbidden by the connect answer before any hook is asked.)
    let e = cmd(
        &mut ws,
        json!({"id": 5, "type": "join", "group": "private-bob"}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert_eq!(asked("join"), 1);
    // Publish: allowed, refused, replaced.
    let (mut peer, _) = connect_cookie(&s.ws_url(), "session=ann").await.unwrap();
    cmd(
        &mut peer,
        json!({"id": 1, "type": "join", "group": "private-ann"}),
    )
    .await;
    let ok = cmd(
        &mut ws,
        json!({"id": 6, "type": "publish", "group": "private-ann", "message": {"text": "hi"}}),
    )
    .await;
    assert_eq!(ok["type"], "ack", "{ok}");
    let no = cmd(
        &mut ws,
        json!({"id": 7, "type": "publish", "group": "private-ann", "message": {"text": "spam"}}),
    )
    .await;
    assert_eq!(
        (no["code"].as_str(), no["message"].as_str()),
        (Some("forbidden"), Some("refused: no spam"))
    );
    cmd(
        &mut ws,
        json!({"id": 8, "type": "publish", "group": "private-ann", "message": {"text": "darn"}}),
    )
    .await;
    let got: Vec<Value> = {
        let mut v = Vec::new();
        while v.len() < 2 {
            let m = next_json_where(&mut peer, |v| v["type"] == "message").await;
            v.push(m["message"].clone());
        }
        v
    };
    assert_eq!(got, [json!({"text": "hi"}), json!({"text": "****"})]);
    s.stop().await;
}

#[tokio::test]
async fn a_slow_hook_holds_only_its_own_connections_commands() {
    // Every join asked about waits 800 ms, longer than the hook may take.
    let rx = Receiver::with(|_, _| Reply {
        delay: Duration::from_millis(800),
        ..Reply::json(json!({"allow": true}))
    })
    .await;
    let route = wshub::hooks::Route {
        url: rx.url.clone(),
        groups: vec!["private-*".into()],
    };
    let s = TestServer::with_config(HubConfig {
        hooks: wshub::hooks::Settings {
            join: Some(route),
            timeout: Duration::from_millis(600),
            key: Arc::from(KEY),
            ..Default::default()
        },
        ..fast_config()
    })
    .await;
    let (mut waiting, _) = connect_v1(&s.ws_url()).await;
    let (mut other, _) = connect_v1(&s.ws_url()).await;
    cmd(
        &mut waiting,
        json!({"id": 1, "type": "join", "group": "news"}),
    )
    .await;
    cmd(
        &mut other,
        json!({"id": 1, "type": "join", "group": "news"}),
    )
    .await;
    // The join waits 800 ms for a hook allowed 600 ms: refused, fail-closed.
    send_text(
        &mut waiting,
        &json!({"id": 2, "type": "join", "group": "private-x"}).to_string(),
    )
    .await;
    send_text(&mut waiting, &json!({"id": 3, "type": "ping"}).to_string()).await;
    // Meanwhile the other connection is served (its publish is acked and delivered before the
    // join's answer), and the waiting one still receives.
    let a = cmd(
        &mut other,
        json!({"id": 2, "type": "publish", "group": "news", "message": "while waiting"}),
    )
    .await;
    assert_eq!(a["type"], "ack");
    let mut order = Vec::new();
    while order.len() < 3 {
        let v = next_json_where(&mut waiting, |v| v["type"] != "joined").await;
        order.push(match v["type"].as_str().unwrap() {
            "message" => "message".to_owned(),
            _ => format!("{}:{}", v["type"].as_str().unwrap(), v["id"]),
        });
        if v["id"] == 2 {
            assert_eq!(v["code"], "unavailable", "{v}");
        }
    }
    // The publication arrived while the join waited; the ping's ack after the join's answer.
    assert_eq!(order, ["message", "error:2", "ack:3"]);
    s.stop().await;
}

#[test]
fn docs_hooks_openapi_json_is_what_the_server_serves() {
    // `WSHUB_BLESS=1 cargo test --test hooks docs_` writes it anew.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/hooks.openapi.json");
    let now = serde_json::to_string_pretty(&wshub::webhooks::schema::document()).unwrap() + "\n";
    if std::env::var_os("WSHUB_BLESS").is_some() {
        std::fs::write(path, &now).unwrap();
    }
    let kept = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        kept == now,
        "docs/hooks.openapi.json is out of date: run WSHUB_BLESS=1 cargo test --test hooks docs_"
    );
}

#[tokio::test]
async fn a_clean_shutdown_sends_the_last_events_before_it_returns() {
    let rx = Receiver::start(vec![]).await;
    let s = TestServer::with_config(HubConfig {
        webhooks: webhooks(&rx.url, &["connection.closed"]),
        ..fast_config()
    })
    .await;
    let (mut v1, id) = connect_v1(&s.ws_url()).await;
    // A client that answers the server's Close.
    let reader = tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(Ok(_)) = v1.next().await {}
    });
    s.stop().await;
    reader.abort();
    // No waiting here: what the shutdown closed was told before it returned.
    let events = rx.events();
    assert_eq!(types(&events), ["connection.closed"], "{events:?}");
    assert_eq!(events[0]["data"]["connection"], id.as_str());
    assert_eq!(
        (
            events[0]["data"]["reason"].as_str(),
            events[0]["data"]["code"].as_u64()
        ),
        // A wshub.v1 client is told to reconnect elsewhere now.
        (Some("shutdown"), Some(1012))
    );
}

#[tokio::test]
async fn no_outbound_request_follows_a_redirect() {
    // The trap: where every redirect points. It must never be asked anything.
    let trap = Receiver::with(|_, _| Reply::json(json!({"allow": true, "user": "mallory"}))).await;
    let to = trap.url.clone();
    // The connect hook answers with each kind of redirect in turn, by cookie.
    let rx = Receiver::with(move |b, _| {
        let cookie = b["headers"]["cookie"].as_str().unwrap_or("");
        match cookie.strip_prefix("session=r") {
            Some(code) => Reply::redirect(code.parse().unwrap(), &to),
            None => backend(b),
        }
    })
    .await;
    let s = hooked(&rx.url, Duration::from_millis(1500)).await;
    for code in [301, 302, 303, 307, 308] {
        // Refused as any answer that is not one: fail-closed, never admitted as the target's user.
        assert_eq!(
            refused_with(&s, &format!("session=r{code}")).await,
            wshub::hooks::BROKEN_CODE,
            "{code}"
        );
    }
    // The hook still works for an answer that is one.
    let (_ws, welcome) = connect_cookie(&s.ws_url(), "session=ann").await.unwrap();
    assert_eq!(welcome["user"], "ann");
    assert_eq!(
        metric(
            s.addr,
            r#"wshub_hook_calls_total{hook="connect",outcome="invalid"}"#
        )
        .await,
        5.0
    );
    s.stop().await;

    // A webhook receiver that answers 307 (which would re-send the signed POST) and then 302
    // (which would send a GET): each batch is failed, counted, not retried, not sent on.
    let to = trap.url.clone();
    let receiver =
        Receiver::with(move |_, n| Reply::redirect(if n == 0 { 307 } else { 302 }, &to)).await;
    let s = TestServer::with_config(HubConfig {
        webhooks: webhooks(&receiver.url, &["connection.opened"]),
        ..fast_config()
    })
    .await;
    let (_a, _) = connect_v1(&s.ws_url()).await;
    wait_metric(
        s.addr,
        r#"wshub_webhook_events_total{reason="redirected"}"#,
        1.0,
    )
    .await;
    let (_b, _) = connect_v1(&s.ws_url()).await;
    wait_metric(
        s.addr,
        r#"wshub_webhook_events_total{reason="redirected"}"#,
        2.0,
    )
    .await;
    assert_eq!(receiver.got.lock().len(), 2, "each batch was tried once");
    let text = String::from_utf8(http(s.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(!text.contains(r#"reason="retried""#), "{text}");
    s.stop().await;
    assert!(
        trap.got.lock().is_empty(),
        "a redirect was followed: the trap got {} requests",
        trap.got.lock().len()
    );
}
