//! The Pusher protocol's unhappy paths over real sockets: what pusher-js never sends (the
//! real-library tests are in tests/pusher/), answered with the protocol's own errors and
//! close codes, without disturbing other connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wshub::apps::{App, Apps};
use wshub::HubConfig;

const KEY: &str = "key-1";
const SECRET: &str = "secret-1";

fn apps(extra: Vec<App>) -> Apps {
    let mut all = vec![App::new("1", KEY, SECRET)];
    all.extend(extra);
    Apps::new(all)
}

async fn server(extra: Vec<App>, tweak: impl FnOnce(&mut HubConfig)) -> TestServer {
    let mut config = HubConfig {
        shutdown_timeout: Duration::from_secs(1),
        apps: apps(extra),
        ..HubConfig::default()
    };
    tweak(&mut config);
    TestServer::with_config(config).await
}

fn url(s: &TestServer, key: &str, query: &str) -> String {
    format!("ws://{}/app/{key}{query}", s.addr)
}

/// A connected Pusher client and its socket id.
async fn pusher(s: &TestServer) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url(s, KEY, "?protocol=7&client=test"))
        .await
        .unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(v["event"], "pusher:connection_established", "{v}");
    let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["activity_timeout"], 120);
    (ws, data["socket_id"].as_str().unwrap().to_owned())
}

async fn send(ws: &mut Ws, v: Value) {
    send_text(ws, &v.to_string()).await;
}

/// The protocol's error frame, then the close code.
async fn refused(s: &TestServer, key: &str, query: &str) -> (Value, Option<u16>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url(s, key, query))
        .await
        .unwrap();
    let v = next_json(&mut ws).await;
    (v, next_close(&mut ws).await)
}

fn auth(socket: &str, channel: &str, data: Option<&str>) -> String {
    let msg = wshub::signing::channel_message(socket, channel, data);
    format!("{KEY}:{}", wshub::signing::sign(SECRET, msg.as_bytes()))
}

#[tokio::test]
async fn refusals_carry_the_protocols_error_and_close_code() {
    let s = server(
        vec![
            {
                let mut a = App::new("2", "full", "s");
                a.max_connections = Some(1);
                a
            },
            {
                let mut a = App::new("3", "off", "s");
                a.enabled = false;
                a
            },
        ],
        |_| {},
    )
    .await;
    for (key, query, code) in [
        ("nope", "?protocol=7", 4001),
        (KEY, "", 4008),
        (KEY, "?protocol=seven", 4006),
        (KEY, "?protocol=3", 4007),
        (KEY, "?protocol=8", 4007),
        ("off", "?protocol=7", 4003),
    ] {
        let (v, close) = refused(&s, key, query).await;
        assert_eq!(v["event"], "pusher:error", "{key}{query}: {v}");
        assert_eq!(v["data"]["code"], code, "{key}{query}: {v}");
        assert_eq!(close, Some(code), "{key}{query}");
    }
    // An app at its connection quota: the next one gets 4004; once it leaves, room again.
    let (mut first, _) = tokio_tungstenite::connect_async(url(&s, "full", "?protocol=7"))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut first).await["event"],
        "pusher:connection_established"
    );
    let (v, close) = refused(&s, "full", "?protocol=7").await;
    assert_eq!(
        (v["data"]["code"].as_u64(), close),
        (Some(4004), Some(4004))
    );
    first.close(None).await.unwrap();
    drop(first);
    tokio::time::timeout(WAIT, async {
        while s.hub.pusher_connections("2") > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let (mut again, _) = tokio_tungstenite::connect_async(url(&s, "full", "?protocol=7"))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut again).await["event"],
        "pusher:connection_established"
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_protocols_answer_and_the_connection_keeps_working() {
    let s = server(vec![], |_| {}).await;
    let (mut ws, socket) = pusher(&s).await;
    assert!(socket
        .split('.')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));
    // Application-level ping.
    send(&mut ws, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(next_json(&mut ws).await["event"], "pusher:pong");
    // Malformed JSON, an unknown event, a subscribe without data, binary: pusher:error.
    for bad in [
        Message::text("{not json"),
        Message::text(r#"{"event":"pusher:nonsense","data":{}}"#),
        Message::text(r#"{"event":"pusher:subscribe"}"#),
        Message::text(r#"{"data":{}}"#),
        Message::binary(vec![1, 2, 3]),
    ] {
        ws.send(bad.clone()).await.unwrap();
        let v = next_json(&mut ws).await;
        assert_eq!(v["event"], "pusher:error", "{bad:?}: {v}");
        assert!(v["data"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Subscriptions refused with their status.
    let cases = [
        (json!({"channel": "bad name"}), 400, "InvalidChannel"),
        (
            json!({"channel": "private-a", "auth": "key-1:00"}),
            401,
            "AuthError",
        ),
        (json!({"channel": "private-a"}), 401, "AuthError"),
        (
            json!({"channel": "private-a", "auth": auth(&socket, "private-b", None)}),
            401,
            "AuthError",
        ),
        (
            json!({"channel": "presence-a", "auth": auth(&socket, "presence-a", None)}),
            400,
            "AuthError",
        ),
        (json!({"channel": "#server-to-user-1"}), 403, "AuthError"),
    ];
    for (data, status, kind) in cases {
        let channel = data["channel"].clone();
        send(&mut ws, json!({"event": "pusher:subscribe", "data": data})).await;
        let v = next_json(&mut ws).await;
        assert_eq!(v["event"], "pusher:subscription_error", "{v}");
        assert_eq!(v["channel"], channel);
        assert_eq!(v["data"]["status"], status, "{v}");
        assert_eq!(v["data"]["type"], kind, "{v}");
    }
    // Client events: not on public or encrypted channels, not on unsubscribed ones.
    let enc = "private-encrypted-x";
    send(
        &mut ws,
        json!({"event": "pusher:subscribe", "data": {"channel": enc, "auth": auth(&socket, enc, None)}}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    for channel in [enc, "private-not-subscribed", "public"] {
        send(
            &mut ws,
            json!({"event": "client-x", "channel": channel, "data": {}}),
        )
        .await;
        let v = next_json(&mut ws).await;
        assert_eq!(v["event"], "pusher:error", "{channel}: {v}");
    }
    // Still subscribed and receiving.
    send(
        &mut ws,
        json!({"event": "pusher:subscribe", "data": {"channel": "news"}}),
    )
    .await;
    let v = next_json(&mut ws).await;
    assert_eq!(v["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(
        (v["channel"].as_str(), v["data"].as_str()),
        (Some("news"), Some("{}"))
    );
    let app = s.hub.apps().by_key(KEY).unwrap().clone();
    let data = serde_json::value::to_raw_value("hello").unwrap();
    s.hub.trigger(&app, "news", "update", data, None).unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(
        v,
        json!({"event": "update", "channel": "news", "data": "hello"})
    );
    s.stop().await;
}

async fn join(ws: &mut Ws, socket: &str, user: &str) {
    let cd = json!({"user_id": user}).to_string();
    let a = auth(socket, "presence-p", Some(&cd));
    let msg = json!({"event": "pusher:subscribe", "data": {"channel": "presence-p", "auth": a, "channel_data": cd}});
    send(ws, msg).await;
}

#[tokio::test]
async fn a_presence_channel_holds_its_member_limit_in_distinct_users() {
    let mut app = App::new("1", KEY, SECRET);
    app.max_presence_members = 1;
    let s = TestServer::with_config(HubConfig {
        shutdown_timeout: Duration::from_secs(1),
        apps: Apps::new(vec![app]),
        ..HubConfig::default()
    })
    .await;
    let (mut a, sa) = pusher(&s).await;
    join(&mut a, &sa, "ann").await;
    let v = next_json(&mut a).await;
    let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["ids"], json!(["ann"]));
    // Another connection of the same user fits; another user does not.
    let (mut a2, sa2) = pusher(&s).await;
    join(&mut a2, &sa2, "ann").await;
    assert_eq!(
        next_json(&mut a2).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    // Member info is bounded in bytes (every node keeps every member's).
    let (mut big, sbig) = pusher(&s).await;
    let cd = json!({"user_id": "ann", "user_info": {"bio": "x".repeat(3000)}}).to_string();
    let a_big = auth(&sbig, "presence-p", Some(&cd));
    let msg = json!({"event": "pusher:subscribe", "data": {"channel": "presence-p", "auth": a_big, "channel_data": cd}});
    send(&mut big, msg).await;
    let v = next_json(&mut big).await;
    assert_eq!(
        (v["event"].as_str(), v["data"]["status"].as_u64()),
        (Some("pusher:subscription_error"), Some(413)),
        "{v}"
    );
    let (mut b, sb) = pusher(&s).await;
    join(&mut b, &sb, "bob").await;
    let v = next_json(&mut b).await;
    assert_eq!(v["event"], "pusher:subscription_error");
    assert_eq!(
        (v["data"]["status"].as_u64(), v["data"]["type"].as_str()),
        (Some(403), Some("LimitReached"))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_pusher_client_that_never_reads_is_dropped_and_the_others_get_everything() {
    let s = server(vec![], |c| {
        c.max_send_buffer = 64 * 1024;
        c.send_queue = 64;
    })
    .await;
    let (mut reader, _) = pusher(&s).await;
    send(
        &mut reader,
        json!({"event": "pusher:subscribe", "data": {"channel": "firehose"}}),
    )
    .await;
    next_json(&mut reader).await;
    // A raw client that subscribes, then never reads a byte.
    let mut stuck = RawClient::connect(s.addr, "/app/key-1?protocol=7").await;
    stuck
        .send(
            0x1,
            br#"{"event":"pusher:subscribe","data":{"channel":"firehose"}}"#,
        )
        .await;
    tokio::time::timeout(WAIT, async {
        while s
            .hub
            .subscription_count(s.hub.apps().default_app().unwrap(), "firehose")
            < 2
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let app = s.hub.apps().default_app().unwrap().clone();
    let payload = "x".repeat(2000);
    let n = 400;
    let read_all = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            let v = next_json(&mut reader).await;
            assert_eq!(v["event"], "tick");
            got += 1;
        }
        got
    });
    for _ in 0..n {
        let data = serde_json::value::to_raw_value(&payload).unwrap();
        s.hub.trigger(&app, "firehose", "tick", data, None).unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(
        tokio::time::timeout(WAIT, read_all).await.unwrap().unwrap(),
        n
    );
    // The stuck one was evicted as a slow consumer.
    tokio::time::timeout(WAIT, async {
        while s.hub.subscription_count(&app, "firehose") > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the client that never reads was not dropped");
    s.stop().await;
}

/// A signed HTTP API request, with `tweak` applied to the parameters before signing.
async fn api(
    s: &TestServer,
    method: &str,
    path: &str,
    body: &str,
    tweak: impl FnOnce(&mut Vec<(String, String)>),
) -> HttpResponse {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut params = vec![
        ("auth_key".to_owned(), KEY.to_owned()),
        ("auth_timestamp".to_owned(), now.to_string()),
        ("auth_version".to_owned(), "1.0".to_owned()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), wshub::signing::body_md5(body.as_bytes())));
    }
    tweak(&mut params);
    let sig = wshub::signing::sign(
        SECRET,
        wshub::signing::request_message(method, path, &params).as_bytes(),
    );
    let query: Vec<String> = params
        .iter()
        .chain(std::iter::once(&("auth_signature".to_owned(), sig)))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let target = format!("{path}?{}", query.join("&"));
    http(
        s.addr,
        method,
        &target,
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn the_http_api_refuses_what_pusher_refuses() {
    let s = server(vec![], |_| {}).await;
    let ev = r#"{"name":"e","channel":"c","data":"{}"}"#;
    assert_eq!(
        api(&s, "POST", "/apps/1/events", ev, |_| {}).await.status,
        200
    );
    // Unsigned, stale, wrong body, wrong key.
    let unsigned = http(s.addr, "POST", "/apps/1/events", &[], ev.as_bytes()).await;
    assert_eq!(unsigned.status, 401);
    let stale = api(&s, "POST", "/apps/1/events", ev, |p| p[1].1 = "1000".into()).await;
    assert_eq!(stale.status, 401);
    // Correctly signed, at the ends of the range: a window is a window (no wrap-around), and a
    // number past i64 is malformed. The server answers each and keeps serving.
    let min = i64::MIN.to_string();
    let max = i64::MAX.to_string();
    let near_min = (i64::MIN + 1).to_string();
    for (ts, why) in [
        (min.as_str(), "expired"),
        (near_min.as_str(), "expired"),
        (max.as_str(), "expired"),
        ("-1", "expired"),
        ("0", "expired"),
        ("18446744073709551615", "malformed"),
        ("99999999999999999999999", "malformed"),
        ("1e9", "malformed"),
    ] {
        let r = api(&s, "POST", "/apps/1/events", ev, |p| p[1].1 = ts.into()).await;
        assert_eq!(r.status, 401, "auth_timestamp={ts}");
        let detail = String::from_utf8_lossy(&r.body).to_lowercase();
        assert!(detail.contains(why), "auth_timestamp={ts}: {detail}");
    }
    let text = String::from_utf8_lossy(&stale.body);
    assert!(text.contains("Timestamp expired"), "{text}");
    let md5 = api(&s, "POST", "/apps/1/events", ev, |p| {
        p[3].1 = "0".repeat(32)
    })
    .await;
    assert_eq!(md5.status, 401);
    let key = api(&s, "POST", "/apps/1/events", ev, |p| {
        p[0].1 = "other".into()
    })
    .await;
    assert_eq!(key.status, 401);
    assert_eq!(
        api(&s, "POST", "/apps/9/events", ev, |_| {}).await.status,
        404
    );
    // Bad requests.
    for body in [
        "{",
        r#"{"name":"e","data":"x"}"#,
        r#"{"name":"e","channel":"a b","data":"x"}"#,
        r#"{"name":"","channel":"c","data":"x"}"#,
        r#"{"name":"e","channels":["a","b"],"channel":"c","data":"x"}"#,
        r#"{"name":"e","channel":"c","data":"x","socket_id":"abc"}"#,
        r#"{"name":"e","channels":["private-encrypted-a","b"],"data":"x"}"#,
    ] {
        let r = api(&s, "POST", "/apps/1/events", body, |_| {}).await;
        assert_eq!(
            r.status,
            400,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let many: Vec<String> = (0..101).map(|i| format!("\"c{i}\"")).collect();
    let body = format!(
        r#"{{"name":"e","channels":[{}],"data":"x"}}"#,
        many.join(",")
    );
    assert_eq!(
        api(&s, "POST", "/apps/1/events", &body, |_| {})
            .await
            .status,
        400
    );
    let batch: Vec<&str> =
        std::iter::repeat_n(r#"{"name":"e","channel":"c","data":"x"}"#, 11).collect();
    let body = format!(r#"{{"batch":[{}]}}"#, batch.join(","));
    assert_eq!(
        api(&s, "POST", "/apps/1/batch_events", &body, |_| {})
            .await
            .status,
        400
    );
    let big = format!(
        r#"{{"name":"e","channel":"c","data":"{}"}}"#,
        "x".repeat(10 * 1024 + 1)
    );
    assert_eq!(
        api(&s, "POST", "/apps/1/events", &big, |_| {}).await.status,
        413
    );
    // Queries that only make sense for presence channels.
    let r = api(&s, "GET", "/apps/1/channels/public/users", "", |_| {}).await;
    assert_eq!(r.status, 400);
    let r = api(&s, "GET", "/apps/1/channels", "", |p| {
        p.push(("info".into(), "user_count".into()))
    })
    .await;
    assert_eq!(r.status, 400);
    let r = api(&s, "GET", "/apps/1/channels/c", "", |p| {
        p.push(("info".into(), "user_count".into()))
    })
    .await;
    assert_eq!(r.status, 400);
    let r = api(&s, "GET", "/apps/1/channels/c", "", |_| {}).await;
    assert_eq!((r.status, r.json()), (200, json!({"occupied": false})));
    s.stop().await;
}

#[tokio::test]
async fn wshub_clients_do_not_read_private_pusher_channels_without_a_token_naming_them() {
    let s = server(vec![], |_| {}).await;
    let (mut v1, _) = connect_v1(&s.ws_url()).await;
    for (group, ok) in [
        ("public-news", true),
        ("private-orders", false),
        ("presence-room", false),
        ("private-encrypted-x", false),
    ] {
        let ack = cmd(
            &mut v1,
            json!({"id": group, "type": "join", "group": group}),
        )
        .await;
        assert_eq!(ack["type"] == "ack", ok, "{group}: {ack}");
        if !ok {
            assert_eq!(ack["code"], "forbidden", "{ack}");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn the_development_app_is_not_served_when_the_hub_is_secured() {
    // With an API key (or JWT auth), the development app's public credentials would be a way
    // around both: it is not served; configured apps are.
    let s = TestServer::with_auth(wshub::auth::AuthSettings {
        api_key: Some("an-api-key-of-some-length".into()),
        ..Default::default()
    })
    .await;
    let (v, close) = refused(&s, "app-key", "?protocol=7").await;
    assert_eq!(
        (v["data"]["code"].as_u64(), close),
        (Some(4001), Some(4001))
    );
    let body = r#"{"name":"e","channel":"c","data":"x"}"#;
    let signed = |secret: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let params = vec![
            ("auth_key".to_owned(), "app-key".to_owned()),
            ("auth_timestamp".to_owned(), now.to_string()),
            ("auth_version".to_owned(), "1.0".to_owned()),
            (
                "body_md5".to_owned(),
                wshub::signing::body_md5(body.as_bytes()),
            ),
        ];
        let msg = wshub::signing::request_message("POST", "/apps/1/events", &params);
        let sig = wshub::signing::sign(secret, msg.as_bytes());
        let q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("/apps/1/events?{}&auth_signature={sig}", q.join("&"))
    };
    let r = http(
        s.addr,
        "POST",
        &signed("app-secret"),
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 404);
    s.stop().await;
}

/// Pusher's HTTP fallbacks (`xhr_streaming`, `xhr_polling`; the real pusher-js is in
/// tests/pusher/fallback.test.mjs): what pusher-js never sends, answered clearly, and a
/// session that vanishes is closed within its bound.
#[tokio::test]
async fn pusher_http_fallbacks_answer_bad_requests_and_close_vanished_sessions() {
    let s = server(vec![], |c| {
        c.max_message_size = 1024;
        c.ping_interval = Duration::from_millis(200);
        c.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let base = format!("/pusher/app/{KEY}");
    let post = |path: String, body: &'static [u8]| {
        let addr = s.addr;
        async move {
            http(
                addr,
                "POST",
                &path,
                &[("Content-Type", "application/json")],
                body,
            )
            .await
        }
    };
    // A poll opens the session: `o`, then the connection's first event.
    let r = post(format!("{base}/1/abcd/xhr?protocol=7"), b"").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"o\n"[..]));
    let r = post(format!("{base}/1/abcd/xhr?protocol=7"), b"").await;
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.starts_with("a[") && text.contains("pusher:connection_established"),
        "{text}"
    );
    // Messages in: a subscription, answered in the next poll.
    let r = post(
        format!("{base}/1/abcd/xhr_send"),
        br#"["{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":\"news\"}}"]"#,
    )
    .await;
    assert_eq!(r.status, 204);
    let r = post(format!("{base}/1/abcd/xhr?protocol=7"), b"").await;
    assert!(String::from_utf8_lossy(&r.body).contains("subscription_succeeded"));
    // Bad sends: not an array of strings (400), too big (413), to no session (404).
    for (body, want) in [
        (&b"{\"event\":\"x\"}"[..], 400),
        (&b"[1,2]"[..], 400),
        (&b"not json"[..], 400),
    ] {
        let r = http(
            s.addr,
            "POST",
            &format!("{base}/1/abcd/xhr_send"),
            &[],
            body,
        )
        .await;
        assert_eq!(r.status, want, "{}", String::from_utf8_lossy(body));
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    let big = format!("[\"{}\"]", "x".repeat(2000));
    let r = http(
        s.addr,
        "POST",
        &format!("{base}/1/abcd/xhr_send"),
        &[],
        big.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 413);
    let r = post(format!("{base}/1/nobody/xhr_send"), b"[]").await;
    assert_eq!(r.status, 404);
    // Bad ids and transports: 404 with a reason.
    let r = post(format!("{base}/1/{}/xhr", "s".repeat(65)), b"").await;
    assert_eq!(r.status, 404);
    let r = post(format!("{base}/1/abcd/jsonp"), b"").await;
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("xhr_streaming"));
    // An unknown key: the protocol's error and close code, as on WebSocket.
    let r = post("/pusher/app/nokey/1/efgh/xhr?protocol=7".to_owned(), b"").await;
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.starts_with("o\na[") && text.ends_with("c[4001,\"no app has the key `nokey`\"]\n"),
        "{text}"
    );
    // The session's client stops polling: closed within the poll's wait plus the idle
    // timeout, and it counts as gone.
    wait_metric(s.addr, "wshub_connections", 0.0).await;
    tokio::time::timeout(WAIT, async {
        while post(format!("{base}/1/abcd/xhr_send"), b"[]").await.status != 404 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a vanished session is gone");
}
