//! Pusher-format webhooks to a real HTTP receiver: the events, their signature, retries and
//! refusals, and exactly one webhook per logical event across a cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::time::Duration;

use common::*;
use receiver::Receiver;
use serde_json::{json, Value};
use wshub::apps::{App, Apps, Webhook};
use wshub::{Hub, HubConfig};

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

fn app(url: &str) -> App {
    app_told(url, &[])
}

/// An app whose webhook target wants `events` (none: all).
fn app_told(url: &str, events: &[&str]) -> App {
    let mut a = App::new("1", "key-1", "secret-1");
    a.webhooks.push(Webhook {
        url: url.to_owned(),
        event_types: events.iter().map(|e| e.to_string()).collect(),
    });
    a
}

async fn pusher(addr: std::net::SocketAddr) -> (Ws, String) {
    let url = format!("ws://{addr}/app/key-1?protocol=7");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let v = next_json(&mut ws).await;
    let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
    (ws, data["socket_id"].as_str().unwrap().to_owned())
}

async fn subscribe(ws: &mut Ws, socket: &str, channel: &str, user: Option<&str>) {
    let cd = user.map(|u| json!({ "user_id": u }).to_string());
    let msg = wshub::signing::channel_message(socket, channel, cd.as_deref());
    let auth = format!("key-1:{}", wshub::signing::sign("secret-1", msg.as_bytes()));
    let mut data = json!({"channel": channel, "auth": auth});
    if let Some(cd) = cd {
        data["channel_data"] = Value::String(cd);
    }
    send_text(
        ws,
        &json!({"event": "pusher:subscribe", "data": data}).to_string(),
    )
    .await;
    next_json_where(ws, |v| {
        v["event"] == "pusher_internal:subscription_succeeded" && v["channel"] == channel
    })
    .await;
}

#[tokio::test]
async fn the_app_is_told_of_occupancy_members_and_client_events_signed_as_pusher_signs() {
    let rx = Receiver::start(vec![]).await;
    let url = rx.url.clone();
    let s = TestServer::with_config(HubConfig {
        shutdown_timeout: Duration::from_secs(1),
        apps: Apps::new(vec![app(&url)]),
        ..HubConfig::default()
    })
    .await;
    let (mut a, sa) = pusher(s.addr).await;
    let (mut b, sb) = pusher(s.addr).await;
    subscribe(&mut a, &sa, "cache-quotes", None).await;
    next_json_where(&mut a, |v| v["event"] == "pusher:cache_miss").await;
    subscribe(&mut a, &sa, "presence-room", Some("ann")).await;
    subscribe(&mut b, &sb, "presence-room", Some("bob")).await;
    let ce = json!({"event": "client-hi", "channel": "presence-room", "data": {"x": 1}});
    send_text(&mut a, &ce.to_string()).await;
    next_json_where(&mut b, |v| v["event"] == "client-hi").await;
    drop(b);
    drop(a);
    let events = rx
        .wait_for("both channels vacated", |e| {
            names(e).iter().filter(|n| *n == "channel_vacated").count() == 2
        })
        .await;
    let room: Vec<String> = names(
        &events
            .iter()
            .filter(|e| e["channel"] == "presence-room")
            .cloned()
            .collect::<Vec<_>>(),
    );
    let count = |name: &str| room.iter().filter(|x| *x == name).count();
    assert_eq!(
        (
            count("channel_occupied"),
            count("member_added"),
            count("member_removed"),
            count("channel_vacated")
        ),
        (1, 2, 2, 1),
        "{room:?}"
    );
    let pos = |name: &str| room.iter().position(|x| x == name).unwrap();
    assert!(pos("channel_occupied") < pos("member_added"), "{room:?}");
    assert!(pos("member_removed") < pos("channel_vacated"), "{room:?}");
    // Subscription counts as they change, for channels that are not presence channels.
    let counts: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e["name"] == "subscription_count")
        .map(|e| {
            (
                e["channel"].as_str().unwrap().to_owned(),
                e["subscription_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("cache-quotes".to_owned(), 1),
            ("cache-quotes".to_owned(), 0)
        ]
    );
    let miss = events.iter().find(|e| e["name"] == "cache_miss").unwrap();
    assert_eq!(miss["channel"], "cache-quotes");
    let client = events.iter().find(|e| e["name"] == "client_event").unwrap();
    assert_eq!(
        (
            client["channel"].as_str(),
            client["event"].as_str(),
            client["data"].as_str()
        ),
        (Some("presence-room"), Some("client-hi"), Some(r#"{"x":1}"#))
    );
    assert_eq!(
        (client["socket_id"].as_str(), client["user_id"].as_str()),
        (Some(sa.as_str()), Some("ann"))
    );
    // Every request is signed with the app's key and secret.
    for got in rx.got.lock().iter() {
        assert_eq!(got.header("x-pusher-key"), "key-1");
        assert_eq!(
            got.header("x-pusher-signature"),
            wshub::signing::sign("secret-1", got.body.as_bytes())
        );
        let v = got.json();
        assert!(v["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
    s.stop().await;
}

#[tokio::test]
async fn failures_are_retried_with_backoff_and_4xx_is_not() {
    // Two 503s, then 200: the batch arrives three times, is delivered once.
    let rx = Receiver::start(vec![503, 503]).await;
    let url = rx.url.clone();
    let s = TestServer::with_config(HubConfig {
        apps: Apps::new(vec![app_told(&url, &["channel_occupied"])]),
        ..HubConfig::default()
    })
    .await;
    let (mut a, sa) = pusher(s.addr).await;
    subscribe(&mut a, &sa, "news", None).await;
    rx.wait_for("three attempts", |e| e.len() >= 3).await;
    let metrics = String::from_utf8(http(s.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(
        metrics.contains(r#"wshub_webhook_events_total{reason="retried"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"wshub_webhook_events_total{reason="delivered"} 1"#),
        "{metrics}"
    );
    assert_eq!(names(&rx.events()), ["channel_occupied"; 3]);
    s.stop().await;

    // A 400: not retried.
    let rx = Receiver::start(vec![400]).await;
    let url = rx.url.clone();
    let s = TestServer::with_config(HubConfig {
        apps: Apps::new(vec![app_told(&url, &["channel_occupied"])]),
        ..HubConfig::default()
    })
    .await;
    let (mut a, sa) = pusher(s.addr).await;
    subscribe(&mut a, &sa, "news", None).await;
    rx.wait_for("one attempt", |e| !e.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.events().len(), 1);
    let metrics = String::from_utf8(http(s.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(
        metrics.contains(r#"wshub_webhook_events_total{reason="rejected"} 1"#),
        "{metrics}"
    );
    s.stop().await;
}

/// A node of an in-process cluster whose app sends webhooks to `url`.
async fn node(bus: &str, id: &str, url: &str) -> TestServer {
    node_with(
        bus,
        id,
        HubConfig {
            apps: Apps::new(vec![app(url)]),
            ..HubConfig::default()
        },
    )
    .await
}

/// A node of an in-process cluster with a webhook flap delay: the app is told of occupancy
/// and members, the hub's webhooks of its groups' occupancy.
async fn node_delayed(bus: &str, id: &str, url: &str, delay: Duration) -> TestServer {
    let pusher_events = [
        "channel_occupied",
        "channel_vacated",
        "member_added",
        "member_removed",
    ];
    let config = HubConfig {
        webhook_delay: delay,
        webhooks: wshub::webhooks::Settings {
            targets: vec![Webhook {
                url: url.to_owned(),
                event_types: vec!["group.occupied".into(), "group.vacated".into()],
            }],
            key: std::sync::Arc::from(&b"a-webhook-secret-of-24b!"[..]),
        },
        apps: Apps::new(vec![app_told(url, &pusher_events)]),
        ..HubConfig::default()
    };
    node_with(bus, id, config).await
}

async fn node_with(bus: &str, id: &str, config: HubConfig) -> TestServer {
    let hub = Hub::new(HubConfig {
        node_id: Some(id.into()),
        announce: false,
        shutdown_timeout: Duration::from_secs(1),
        ..config
    });
    local_node(hub, bus).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_each_logical_event_is_one_webhook() {
    let rx = Receiver::start(vec![]).await;
    let url = rx.url.clone();
    let a = node("webhooks", "wa", &url).await;
    let b = node("webhooks", "wb", &url).await;
    // Subscribers on both nodes at the same moment, the same user on both.
    let ((mut x, sx), (mut y, sy)) = tokio::join!(pusher(a.addr), pusher(b.addr));
    tokio::join!(
        subscribe(&mut x, &sx, "presence-game", Some("zoe")),
        subscribe(&mut y, &sy, "presence-game", Some("zoe")),
    );
    rx.wait_for("occupied and added", |e| {
        let n = names(e);
        n.contains(&"channel_occupied".to_owned()) && n.contains(&"member_added".to_owned())
    })
    .await;
    drop(x);
    drop(y);
    let events = rx
        .wait_for("vacated and removed", |e| {
            let n = names(e);
            n.contains(&"channel_vacated".to_owned()) && n.contains(&"member_removed".to_owned())
        })
        .await;
    // Anything late would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = names(&rx.events());
    for name in [
        "channel_occupied",
        "member_added",
        "member_removed",
        "channel_vacated",
    ] {
        assert_eq!(n.iter().filter(|x| *x == name).count(), 1, "{name}: {n:?}");
    }
    assert!(events.len() >= 4);
    a.stop().await;
    b.stop().await;
}

/// The Pusher events of one channel, in order.
fn told(events: &[Value], channel: &str) -> Vec<String> {
    names(
        &events
            .iter()
            .filter(|e| e["channel"] == channel)
            .cloned()
            .collect::<Vec<_>>(),
    )
}

/// The wshub events of one group, in order.
fn told_hub(events: &[Value], group: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["data"]["group"] == group)
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flap_within_the_delay_is_no_event_across_nodes() {
    let rx = Receiver::start(vec![]).await;
    let delay = Duration::from_millis(1500);
    let a = node_delayed("flaps", "fa", &rx.url, delay).await;
    let b = node_delayed("flaps", "fb", &rx.url, delay).await;
    // A presence member and a channel subscriber on node A.
    let (mut x, sx) = pusher(a.addr).await;
    subscribe(&mut x, &sx, "presence-lobby", Some("kim")).await;
    subscribe(&mut x, &sx, "news", None).await;
    rx.wait_for("occupied and added", |e| {
        told(e, "presence-lobby").len() == 2 && told_hub(e, "news").len() == 1
    })
    .await;
    // A page reload: the connection goes, a new one comes back on node B within the delay.
    drop(x);
    let (mut y, sy) = pusher(b.addr).await;
    subscribe(&mut y, &sy, "presence-lobby", Some("kim")).await;
    subscribe(&mut y, &sy, "news", None).await;
    // Well past the delay: nothing was told of the flap.
    tokio::time::sleep(delay + Duration::from_millis(700)).await;
    let events = rx.events();
    assert_eq!(
        told(&events, "presence-lobby"),
        ["channel_occupied", "member_added"],
        "{events:#?}"
    );
    assert_eq!(told(&events, "news"), ["channel_occupied"]);
    assert_eq!(told_hub(&events, "news"), ["group.occupied"]);
    // Leaving for good is told once the delay is over, by the node of the last member.
    drop(y);
    let started = std::time::Instant::now();
    let events = rx
        .wait_for("vacated and removed", |e| {
            told(e, "presence-lobby").len() == 4 && told_hub(e, "news").len() == 2
        })
        .await;
    assert!(
        started.elapsed() >= delay - Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        told(&events, "presence-lobby"),
        [
            "channel_occupied",
            "member_added",
            "member_removed",
            "channel_vacated"
        ]
    );
    assert_eq!(
        told(&events, "news"),
        ["channel_occupied", "channel_vacated"]
    );
    assert_eq!(
        told_hub(&events, "news"),
        ["group.occupied", "group.vacated"]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.events().len(), events.len(), "nothing more");
    a.stop().await;
    b.stop().await;
}
