//! Scale-out over Redis (docs/CLUSTER.md): several nodes on one real `redis-server` (spawned
//! here on a free port), clients spread over them, every delivery counted. Also: the
//! cluster-wide listing, a node killed (its connections leave the listing), the backplane
//! killed and restarted (local delivery goes on, `/readyz` says so, cross-node delivery comes
//! back by itself), and recovery on a node the client was never on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/receiver.rs"]
mod receiver;
#[path = "common/sse.rs"]
mod sse;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use wshub::backplane::{BackplaneConfig, BackplaneUrl};
use wshub::hub::{Message, Target};
use wshub::{Hub, HubConfig};

const SECRET: &str = "cluster-test-secret-0123456789-32b";

/// Which engine a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Redis,
    Nats,
    /// The in-process bus (`local://`): no server, the same scenarios in a fraction of the time.
    Local,
}

/// A `redis-server` or `nats-server -js` of our own, on a free port, killed on drop.
struct Backend {
    kind: Kind,
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl Backend {
    fn start(kind: Kind) -> Backend {
        if kind == Kind::Local {
            // A bus of its own: a number no other test of this process uses.
            static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
            return Backend {
                kind,
                port: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                dir: std::path::PathBuf::new(),
                child: None,
            };
        }
        // Tests run in parallel: one at a time picks a free port and starts its server there,
        // and a server that could not bind it (it exited) is started again elsewhere.
        static PICKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = PICKING.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir =
                std::env::temp_dir().join(format!("wshub-test-{}-{port}", std::process::id()));
            if let Some(b) = Self::try_on(kind, port, dir) {
                return b;
            }
        }
        panic!("could not start a {kind:?} server on a free port");
    }

    fn on(kind: Kind, port: u16, dir: std::path::PathBuf) -> Backend {
        Self::try_on(kind, port, dir).unwrap_or_else(|| panic!("{kind:?} server did not start"))
    }

    /// Starts the server on `port`; `None` when it exits first (the port was taken).
    fn try_on(kind: Kind, port: u16, dir: std::path::PathBuf) -> Option<Backend> {
        let p = port.to_string();
        let mut cmd = match kind {
            Kind::Redis => {
                let bin = ["/usr/bin/redis-server", "/usr/sbin/redis-server"]
                    .into_iter()
                    .find(|p| std::path::Path::new(p).exists())
                    .unwrap_or("redis-server");
                let mut c = std::process::Command::new(bin);
                c.args([
                    "--port",
                    &p,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                c
            }
            Kind::Nats => {
                // Debian installs it in /usr/sbin, which is not on every PATH.
                let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
                    .into_iter()
                    .find(|p| std::path::Path::new(p).exists())
                    .unwrap_or("nats-server");
                let mut c = std::process::Command::new(bin);
                c.args(["-a", "127.0.0.1", "-p", &p, "-js", "-sd"])
                    .arg(&dir);
                c
            }
            Kind::Local => return None,
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{kind:?} server must be installed (Debian packages redis-server, nats-server): {e}"));
        let deadline = std::time::Instant::now() + WAIT;
        let exited = |c: &mut std::process::Child| c.try_wait().ok().flatten().is_some();
        loop {
            if exited(&mut child) {
                return None;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Listening, and still ours a moment later (not a bind failure racing us).
                std::thread::sleep(Duration::from_millis(50));
                if exited(&mut child) {
                    return None;
                }
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Backend {
            kind,
            port,
            dir,
            child: Some(child),
        })
    }

    fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
            Kind::Local => format!("local://bus{}", self.port),
        }
    }

    fn kill(&mut self) {
        if self.kind == Kind::Local {
            wshub::backplane::local::set_down(&format!("bus{}", self.port), true);
            return;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends the server a signal (`-STOP` freezes it without closing a connection, `-CONT`
    /// thaws it).
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// The same server again, on the same port (NATS: with the same storage).
    fn restart(&mut self) {
        if self.kind == Kind::Local {
            // Back in service, having lost what it kept (as a Redis without persistence).
            wshub::backplane::local::set_down(&format!("bus{}", self.port), false);
            return;
        }
        self.kill();
        let again = Self::on(self.kind, self.port, self.dir.clone());
        let mut old = std::mem::replace(self, again);
        old.dir = std::path::PathBuf::new(); // the storage is the new server's now
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
        if self.kind == Kind::Nats && !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Each scenario runs against both engines.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::Kind::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                super::$name(super::Kind::Nats).await
            }
        }
    )*};
}

/// The scenarios also run on the in-process bus (its outage: `local::set_down`).
macro_rules! in_process {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::super::$name(super::super::Kind::Local).await
            }
        }
    )*};
}

mod in_process {
    in_process!(
        every_kind_of_message_reaches_every_node_exactly_once,
        offsets_stay_ordered_and_gap_free_with_publishers_on_several_nodes,
        listings_groups_and_users_are_cluster_wide,
        a_client_recovers_on_a_node_it_was_never_on,
        pusher_presence_events_and_terminate_are_cluster_wide,
        the_backplane_dies_and_comes_back,
        every_delivery_counted_across_a_backplane_outage,
        a_cache_channels_last_event_reaches_a_node_started_after_it,
        http_sessions_answer_on_any_node_without_sticky_sessions,
        a_relayed_request_without_a_backplane_is_503,
    );
}

on_both!(
    every_kind_of_message_reaches_every_node_exactly_once,
    offsets_stay_ordered_and_gap_free_with_publishers_on_several_nodes,
    listings_groups_and_users_are_cluster_wide,
    a_killed_node_leaves_the_listing_within_its_ttl,
    the_backplane_dies_and_comes_back,
    a_client_recovers_on_a_node_it_was_never_on,
    every_delivery_counted_across_a_backplane_outage,
    pusher_presence_events_and_terminate_are_cluster_wide,
    a_cache_channels_last_event_reaches_a_node_started_after_it,
    hub_webhooks_are_one_per_transition_and_survivors_tell_a_dead_nodes,
    v1_presence_is_cluster_wide_and_a_dead_nodes_members_leave_it,
    a_revocation_is_kept_by_the_backplane_when_every_node_restarts,
    an_idempotency_key_is_cluster_wide,
    a_publisher_outrunning_the_backplane_is_told_to_retry,
    http_sessions_answer_on_any_node_without_sticky_sessions,
);

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn backplane(redis: &Backend, prefix: &str) -> BackplaneConfig {
    BackplaneConfig {
        url: redis.url().parse::<BackplaneUrl>().unwrap(),
        prefix: prefix.into(),
        heartbeat: Duration::from_millis(100),
        node_ttl: Duration::from_millis(1500),
        ..BackplaneConfig::default()
    }
}

/// A node: a hub with JWT auth on the shared backplane, served on its own port.
async fn node(redis: &Backend, prefix: &str, id: &str) -> TestServer {
    node_with(backplane(redis, prefix), id).await
}

/// A node on the backplane `bp` describes.
async fn node_with(bp: BackplaneConfig, id: &str) -> TestServer {
    node_configured(bp, id, |_| {}).await
}

/// A node on the backplane `bp` describes, its settings changed by `change`.
async fn node_configured(
    bp: BackplaneConfig,
    id: &str,
    change: impl FnOnce(&mut HubConfig),
) -> TestServer {
    // `RUST_LOG=wshub=debug cargo test --test cluster -- --nocapture` shows what the nodes do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let config = HubConfig {
        node_id: Some(id.into()),
        announce: false,
        shutdown_timeout: Duration::from_secs(1),
        // JWT auth is on: the development app is not served unless configured.
        apps: wshub::apps::Apps::new(vec![wshub::apps::App::development()]),
        ..HubConfig::default()
    };
    let mut config = config;
    change(&mut config);
    let auth = wshub::auth::Auth::new(&wshub::auth::AuthSettings {
        jwt_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap();
    let hub = Hub::with_auth(config, auth);
    hub.connect_backplane(bp).unwrap();
    let srv = TestServer::with_hub(hub, wshub::server::ServerOptions::default()).await;
    wait_up(&srv.hub, true).await;
    srv
}

async fn wait_up(hub: &Hub, up: bool) {
    let hub = hub.clone();
    tokio::time::timeout(3 * WAIT, async move {
        while hub.cluster().unwrap().is_up() != up {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("backplane never became {}", if up { "up" } else { "down" }));
}

/// A `wshub.v1` client of `srv` as `user`.
async fn client(srv: &TestServer, user: &str) -> (Ws, String) {
    connect_v1(&format!("{}?access_token={}", srv.ws_url(), token(user))).await
}

async fn join(ws: &mut Ws, group: &str) -> Value {
    let ack = cmd(ws, json!({"id":"j","type":"join","group":group})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

/// Nothing else is queued for this client: a ping's ack is the very next frame (after a pause
/// long enough for any stray cross-node delivery to have arrived).
async fn assert_quiet(ws: &mut Ws) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_text(ws, r#"{"id":"quiet","type":"ping"}"#).await;
    let v = next_json(ws).await;
    assert_eq!(
        v,
        json!({"type":"ack","id":"quiet"}),
        "unexpected frame (a duplicate?)"
    );
}

/// Lets cross-node events of what was done so far (joined/left) arrive, and skips them.
async fn settle(ws: &mut Ws) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    cmd(ws, json!({"id":"settle","type":"ping"})).await;
}

async fn listed(srv: &TestServer, query: &str) -> Value {
    let res = http(
        srv.addr,
        "GET",
        &format!("/api/connections{query}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    res.json()
}

/// Polls the listing on `srv` until `pred` holds.
async fn wait_listing(srv: &TestServer, query: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = listed(srv, query).await;
        if pred(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "listing never matched: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn every_kind_of_message_reaches_every_node_exactly_once(kind: Kind) {
    let redis = Backend::start(kind);
    let a = node(&redis, "t1", "node-a").await;
    let b = node(&redis, "t1", "node-b").await;
    let c = node(&redis, "t1", "node-c").await;
    let (mut alice, _) = client(&a, "alice").await;
    let (mut bob, bob_id) = client(&b, "bob").await;
    let (mut carol, _) = client(&c, "carol").await;
    let (mut carol2, _) = client(&a, "carol").await; // carol's second device, on another node
    for ws in [&mut alice, &mut bob, &mut carol] {
        join(ws, "room").await;
    }

    // A client's publish on node A: every member, on every node, once, with the same offset;
    // the ack carries the offset the backplane gave it (it may come after the delivery).
    send_text(
        &mut alice,
        &json!({"id":1,"type":"publish","group":"room","message":{"text":"hi"}}).to_string(),
    )
    .await;
    let (mut ack, mut own) = (None, None);
    while ack.is_none() || own.is_none() {
        let v = next_json(&mut alice).await;
        match v["type"].as_str() {
            Some("ack") => ack = Some(v),
            Some("message") => own = Some(v),
            _ => {}
        }
    }
    let (ack, own) = (ack.unwrap(), own.unwrap());
    assert_eq!(ack["id"], 1);
    assert_eq!(ack["offset"], 1, "{ack}");
    assert_eq!(own["offset"], 1);
    // Replies stay in command order behind an ack that waits for the backplane.
    join(&mut alice, "solo").await;
    send_text(
        &mut alice,
        &json!({"id":2,"type":"publish","group":"solo","message":"second"}).to_string(),
    )
    .await;
    send_text(&mut alice, &json!({"id":3,"type":"ping"}).to_string()).await;
    let mut acks = Vec::new();
    let mut solo = false;
    while acks.len() < 2 || !solo {
        let v = next_json(&mut alice).await;
        match v["type"].as_str() {
            Some("ack") => acks.push(v),
            Some("message") => solo |= v["group"] == "solo",
            _ => {}
        }
    }
    assert_eq!(
        (acks[0]["id"].as_u64(), acks[0]["offset"].as_u64()),
        (Some(2), Some(1)),
        "{}",
        acks[0]
    );
    assert_eq!(acks[1]["id"], 3, "{}", acks[1]);
    for ws in [&mut bob, &mut carol] {
        let m = next_json_where(ws, |v| v["type"] == "message").await;
        assert_eq!(
            (m["group"].as_str(), m["offset"].as_u64()),
            (Some("room"), Some(1))
        );
        assert_eq!(m["message"], json!({"text":"hi"}));
        assert_eq!(m["user"], "alice");
    }
    // A REST publish on node B: numbered by the backplane; recipients on other nodes are not
    // counted (that would mean reading every node's listing), so the answer has none.
    let r = post_json(
        b.addr,
        "/api/groups/room/broadcast",
        r#"{"message":"from rest"}"#,
    )
    .await;
    assert_eq!(r.json(), json!({"offset":2}));
    for ws in [&mut alice, &mut bob, &mut carol] {
        let m = next_json_where(ws, |v| v["type"] == "message").await;
        assert_eq!(
            (m["message"].as_str(), m["offset"].as_u64()),
            (Some("from rest"), Some(2))
        );
    }
    // A REST broadcast on node C reaches every connection (non-members too).
    let r = post_json(
        c.addr,
        "/api/connections/broadcast",
        r#"{"message":"everyone"}"#,
    )
    .await;
    assert_eq!(r.json(), json!({"offset":1}));
    for ws in [&mut alice, &mut bob, &mut carol, &mut carol2] {
        let m = next_json_where(ws, |v| v["type"] == "server-broadcast").await;
        assert_eq!(
            (m["message"].as_str(), m["offset"].as_u64()),
            (Some("everyone"), Some(1))
        );
    }
    // A user send from node B reaches both of carol's connections (nodes A and C).
    let ack = cmd(
        &mut bob,
        json!({"id":2,"type":"send","user":"carol","message":"psst"}),
    )
    .await;
    assert_eq!(ack["recipients"], 2, "{ack}");
    for ws in [&mut carol, &mut carol2] {
        let d = next_json_where(ws, |v| v["type"] == "direct").await;
        assert_eq!(
            (d["message"].as_str(), d["user"].as_str()),
            (Some("psst"), Some("bob"))
        );
    }
    // A direct send from node A to bob's connection on node B, by client and by REST.
    let ack = cmd(
        &mut alice,
        json!({"id":3,"type":"send","connection":bob_id,"message":1}),
    )
    .await;
    assert_eq!(ack["recipients"], 1, "{ack}");
    assert_eq!(
        next_json_where(&mut bob, |v| v["type"] == "direct").await["message"],
        1
    );
    let r = post_json(
        c.addr,
        &format!("/api/connections/{bob_id}/send"),
        r#"{"message":2}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        next_json_where(&mut bob, |v| v["type"] == "direct").await["message"],
        2
    );
    // Unknown targets are still errors, cluster-wide.
    let err = cmd(
        &mut alice,
        json!({"id":4,"type":"send","user":"nobody","message":1}),
    )
    .await;
    assert_eq!(err["code"], "not_found");
    let r = post_json(
        c.addr,
        &format!("/api/connections/{}/send", "0".repeat(32)),
        r#"{"message":2}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    // And nothing arrived twice.
    for ws in [&mut alice, &mut bob, &mut carol, &mut carol2] {
        assert_quiet(ws).await;
    }
    for s in [a, b, c] {
        s.stop().await;
    }
}

async fn offsets_stay_ordered_and_gap_free_with_publishers_on_several_nodes(kind: Kind) {
    const N: usize = 150;
    let redis = Backend::start(kind);
    let a = node(&redis, "t2", "a").await;
    let b = node(&redis, "t2", "b").await;
    let c = node(&redis, "t2", "c").await;
    let (mut pa, _) = client(&a, "pa").await;
    let (mut pb, _) = client(&b, "pb").await;
    let (mut wa, _) = client(&a, "wa").await;
    let (mut wc, _) = client(&c, "wc").await;
    for ws in [&mut pa, &mut pb, &mut wa, &mut wc] {
        join(ws, "g").await;
    }
    // Two publishers on two nodes, interleaving as fast as they can.
    let send_all = |mut ws: Ws, tag: &'static str| async move {
        for i in 0..N {
            let c = json!({"id":i,"type":"publish","group":"g","message":format!("{tag}{i}")});
            send_text(&mut ws, &c.to_string()).await;
        }
        ws
    };
    let (pa, pb) = tokio::join!(send_all(pa, "a"), send_all(pb, "b"));
    let mut seen = Vec::new();
    for ws in [&mut wa, &mut wc] {
        let mut got = Vec::new();
        while got.len() < 2 * N {
            let m = next_json_where(ws, |v| v["type"] == "message").await;
            got.push((
                m["offset"].as_u64().unwrap(),
                m["message"].as_str().unwrap().to_owned(),
            ));
        }
        let offsets: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(
            offsets,
            (1..=2 * N as u64).collect::<Vec<_>>(),
            "gap, duplicate or reorder"
        );
        seen.push(got);
    }
    assert_eq!(
        seen[0], seen[1],
        "both nodes deliver the same message at each offset"
    );
    drop((pa, pb));
    for s in [a, b, c] {
        s.stop().await;
    }
}

async fn listings_groups_and_users_are_cluster_wide(kind: Kind) {
    let redis = Backend::start(kind);
    let a = node(&redis, "t3", "a").await;
    let b = node(&redis, "t3", "b").await;
    let (mut x, x_id) = client(&a, "xavier").await;
    let (mut y, y_id) = client(&b, "yvonne").await;
    join(&mut x, "shared").await;
    join(&mut y, "shared").await;
    for srv in [&a, &b] {
        let v = wait_listing(srv, "", |v| v["count"] == 2).await;
        let nodes: Vec<&str> = v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["node"].as_str().unwrap())
            .collect();
        assert!(nodes.contains(&"a") && nodes.contains(&"b"), "{v}");
        let v = wait_listing(srv, "?group=shared", |v| v["count"] == 2).await;
        assert_eq!(v["count"], 2);
        let v = listed(srv, "?user=yvonne").await;
        assert_eq!(v["connections"][0]["id"], y_id.as_str());
    }
    let g = http(a.addr, "GET", "/api/groups/shared", &[], b"")
        .await
        .json();
    assert_eq!(g["members"], 2);
    let one = http(a.addr, "GET", &format!("/api/connections/{y_id}"), &[], b"").await;
    assert_eq!((one.status, one.json()["node"].clone()), (200, json!("b")));
    // REST operations on a connection held by another node.
    let r = http(
        a.addr,
        "PUT",
        &format!("/api/groups/extra/members/{y_id}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    wait_listing(&a, "?group=extra", |v| v["count"] == 1).await;
    let r = http(
        b.addr,
        "DELETE",
        &format!("/api/connections/{x_id}?code=4001&reason=bye"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(next_close(&mut x).await, Some(4001));
    wait_listing(&b, "", |v| v["count"] == 1).await;
    for s in [a, b] {
        s.stop().await;
    }
}

async fn a_killed_node_leaves_the_listing_within_its_ttl(kind: Kind) {
    let redis = Backend::start(kind);
    let a = node(&redis, "wshub", "survivor").await;
    // Node "doomed" is a real process, killed with SIGKILL: no goodbye.
    let (mut doomed, addr) = spawn_doomed(&redis.url(), &[]).await;
    let (mut ws, _) = connect(&format!("ws://{addr}/ws")).await;
    wait_listing(&a, "", |v| {
        v["count"] == 1 && v["connections"][0]["node"] == "doomed"
    })
    .await;
    // A Pusher presence member on each node.
    let (mut here, sh) = pusher_client(&a).await;
    presence_join(&mut here, &sh, "stays").await;
    let url = format!("ws://{addr}/app/app-key?protocol=7");
    let (mut there, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let v = next_json(&mut there).await;
    let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
    let st = data["socket_id"].as_str().unwrap().to_owned();
    assert_eq!(
        presence_join(&mut there, &st, "goes").await,
        ["goes", "stays"]
    );
    next_json_where(&mut here, |v| v["event"] == "pusher_internal:member_added").await;
    doomed.start_kill().unwrap();
    let _ = doomed.wait().await;
    let started = std::time::Instant::now();
    wait_listing(&a, "", |v| v["count"] == 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The dead node's presence member is removed on the survivor, within the TTL too.
    let v = next_json_where(&mut here, |v| {
        v["event"] == "pusher_internal:member_removed"
    })
    .await;
    assert_eq!(v["data"], json!({"user_id": "goes"}).to_string());
    presence_is(&a.hub, &["stays"]).await;
    let app = a.hub.apps().default_app().unwrap().clone();
    assert_eq!(a.hub.subscription_count(&app, "presence-room"), 1);
    drop(here);
    drop(ws.close(None).await);
    a.stop().await;
}

/// Node "doomed": a real process on the engine at `url` (node TTL 1.5 s), to be killed with
/// SIGKILL (no goodbye); with its listening address.
async fn spawn_doomed(url: &str, extra: &[&str]) -> (tokio::process::Child, String) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--backplane",
        url,
        "--node-id",
        "doomed",
        "--node-ttl",
        "1500ms",
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    let mut doomed = tokio::process::Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = listening_addr(doomed.stdout.take().unwrap()).await;
    (doomed, addr)
}

async fn listening_addr(stdout: tokio::process::ChildStdout) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if let Some(local) = v["fields"]["local"].as_str() {
                    return local.to_owned();
                }
            }
        }
        panic!("the node exited before listening");
    })
    .await
    .unwrap()
}

async fn the_backplane_dies_and_comes_back(kind: Kind) {
    let mut redis = Backend::start(kind);
    let a = node(&redis, "t5", "a").await;
    let b = node(&redis, "t5", "b").await;
    let (mut on_a, _) = client(&a, "u1").await;
    let (mut on_b, _) = client(&b, "u2").await;
    join(&mut on_a, "g").await;
    join(&mut on_b, "g").await;
    settle(&mut on_a).await;
    settle(&mut on_b).await;
    let ready = |srv: &TestServer| {
        let addr = srv.addr;
        async move { http(addr, "GET", "/readyz", &[], b"").await.status }
    };
    assert_eq!(ready(&a).await, 200);

    redis.kill();
    wait_up(&a.hub, false).await;
    assert_eq!(ready(&a).await, 503);
    let metrics = String::from_utf8(http(a.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(metrics.contains("wshub_backplane_up 0"), "{metrics}");
    assert!(
        metrics.contains("wshub_backplane_events_total{reason=\"disconnected\"} 1"),
        "{metrics}"
    );
    // Local delivery goes on: A's member gets A's publish (without an offset), B's does not.
    let c = json!({"id":1,"type":"publish","group":"g","message":"during outage"});
    send_text(&mut on_a, &c.to_string()).await;
    // Delivered here and now, so before the ack.
    let m = next_json_where(&mut on_a, |v| v["type"] == "message").await;
    assert_eq!(m["message"], "during outage");
    assert!(m.get("offset").is_none(), "{m}");
    let ack = next_json(&mut on_a).await;
    assert_eq!(
        (&ack["type"], &ack["id"]),
        (&json!("ack"), &json!(1)),
        "{ack}"
    );
    assert!(
        ack.get("offset").is_none(),
        "an ack without an offset: {ack}"
    );
    // An API publisher is told, and nothing is delivered anywhere (it retries elsewhere
    // rather than reaching this node's clients only).
    for (path, body) in [
        ("/api/connections/broadcast", r#"{"message":"outage news"}"#),
        ("/api/groups/g/broadcast", r#"{"message":"outage news"}"#),
    ] {
        let r = post_json(a.addr, path, body).await;
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.header("retry-after"), Some("1"), "{path}");
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("cannot reach the backplane"), "{detail}");
    }
    // A Pusher HTTP trigger too.
    let app = a.hub.apps().default_app().unwrap().clone();
    let data = serde_json::value::to_raw_value("x").unwrap();
    assert!(matches!(
        a.hub.trigger(&app, "outage", "e", data, None),
        Err(wshub::hub::TriggerError::Unreachable(_))
    ));
    assert_quiet(&mut on_a).await;
    assert_quiet(&mut on_b).await;

    redis.restart();
    wait_up(&a.hub, true).await;
    wait_up(&b.hub, true).await;
    assert_eq!(ready(&a).await, 200);
    // Cross-node delivery is back without a restart; the stream starts a new epoch (this Redis
    // kept nothing).
    let c = json!({"id":2,"type":"publish","group":"g","message":"after"});
    send_text(&mut on_a, &c.to_string()).await;
    for ws in [&mut on_a, &mut on_b] {
        let mut before = Vec::new();
        let m = loop {
            let v = next_json(ws).await;
            if v["type"] == "message" {
                break v;
            }
            before.push(v);
        };
        assert_eq!(
            (m["message"].as_str(), m["offset"].as_u64()),
            (Some("after"), Some(1))
        );
        // Redis kept nothing: members are told the stream restarted in another epoch. NATS kept
        // its storage: same epoch, nothing to say.
        let resets: Vec<&Value> = before.iter().filter(|v| v["type"] == "reset").collect();
        match kind {
            Kind::Redis | Kind::Local => {
                assert_eq!(resets.len(), 1, "{before:?}");
                assert_eq!(
                    (resets[0]["group"].as_str(), resets[0]["offset"].as_u64()),
                    (Some("g"), Some(0))
                );
            }
            Kind::Nats => assert!(resets.is_empty(), "{before:?}"),
        }
    }
    // Numbered broadcasts reach both nodes again.
    let r = post_json(
        b.addr,
        "/api/connections/broadcast",
        r#"{"message":"back"}"#,
    )
    .await;
    assert_eq!(r.json()["offset"], 1);
    for ws in [&mut on_a, &mut on_b] {
        let m = next_json_where(ws, |v| v["type"] == "server-broadcast").await;
        assert_eq!(
            (m["message"].as_str(), m["offset"].as_u64()),
            (Some("back"), Some(1))
        );
    }
    // The listing is rebuilt in the new Redis.
    wait_listing(&b, "", |v| v["count"] == 2).await;
    for s in [a, b] {
        s.stop().await;
    }
}

async fn a_client_recovers_on_a_node_it_was_never_on(kind: Kind) {
    let redis = Backend::start(kind);
    let a = node(&redis, "t6", "a").await;
    let b = node(&redis, "t6", "b").await;
    let (mut first, _) = client(&a, "r").await;
    let ack = join(&mut first, "news").await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    for i in 1..=3 {
        post_json(
            b.addr,
            "/api/groups/news/broadcast",
            &json!({"message": i}).to_string(),
        )
        .await;
        assert_eq!(
            next_json_where(&mut first, |v| v["type"] == "message").await["offset"],
            i
        );
    }
    drop(first);
    for i in 4..=6 {
        post_json(
            a.addr,
            "/api/groups/news/broadcast",
            &json!({"message": i}).to_string(),
        )
        .await;
    }
    // A third node that has never seen the group: it learns the stream from Redis.
    let c = node(&redis, "t6", "c").await;
    let (mut again, _) = client(&c, "r").await;
    send_text(
        &mut again,
        &json!({"id":"j","type":"join","group":"news","since":{"epoch":epoch,"offset":3}})
            .to_string(),
    )
    .await;
    let mut replayed = Vec::new();
    let ack = loop {
        let v = next_json(&mut again).await;
        match v["type"].as_str() {
            Some("message") => replayed.push(v["offset"].as_u64().unwrap()),
            Some("ack") => break v,
            _ => {}
        }
    };
    assert_eq!(replayed, [4, 5, 6]);
    assert_eq!(
        (ack["recovered"].as_bool(), ack["epoch"].as_str()),
        (Some(true), Some(epoch.as_str()))
    );
    post_json(b.addr, "/api/groups/news/broadcast", r#"{"message":7}"#).await;
    assert_eq!(
        next_json_where(&mut again, |v| v["type"] == "message").await["offset"],
        7
    );
    // The REST history of any node agrees.
    let h = http(c.addr, "GET", "/api/groups/news/history?since=5", &[], b"")
        .await
        .json();
    assert_eq!(h["messages"].as_array().unwrap().len(), 2, "{h}");
    for s in [a, b, c] {
        s.stop().await;
    }
}

/// A node cut off from a running Redis (its subscription killed) misses bus messages; the next
/// message of the stream shows the jump in offsets and the node fills the gap from the shared
/// history before delivering, so its client still sees every offset once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_bus_messages_fills_the_gap_from_history() {
    const N: u64 = 60;
    let redis = Backend::start(Kind::Redis);
    let a = node(&redis, "t7", "a").await;
    let b = node(&redis, "t7", "b").await;
    let (mut on_a, _) = client(&a, "reader").await;
    join(&mut on_a, "feed").await;
    let publisher = {
        let addr = b.addr;
        tokio::spawn(async move {
            for i in 1..=N {
                let r = post_json(
                    addr,
                    "/api/groups/feed/broadcast",
                    &json!({"message": i}).to_string(),
                )
                .await;
                assert_eq!(r.status, 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Cut every subscription (node A's and B's) while the publisher runs; they come back
    // within the reconnection backoff.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 2, "both nodes' subscriptions were cut ({killed})");
    publisher.await.unwrap();
    let mut offsets = Vec::new();
    while offsets.len() < N as usize {
        let next =
            tokio::time::timeout(WAIT, next_json_where(&mut on_a, |v| v["type"] == "message"));
        let Ok(m) = next.await else {
            panic!("after offsets {offsets:?}, nothing more");
        };
        offsets.push(m["offset"].as_u64().unwrap());
    }
    assert_eq!(offsets, (1..=N).collect::<Vec<_>>());
    assert_quiet(&mut on_a).await;
    for s in [a, b] {
        s.stop().await;
    }
}

/// Three nodes, clients on each, a stream of publishes from node A through an outage of the
/// backplane: before and after it every client gets every message once; during it the REST
/// publishes are refused (503: nothing delivered anywhere, the publisher knows to retry);
/// nobody gets anything twice.
async fn every_delivery_counted_across_a_backplane_outage(kind: Kind) {
    let mut backend = Backend::start(kind);
    let nodes = [
        node(&backend, "t8", "a").await,
        node(&backend, "t8", "b").await,
        node(&backend, "t8", "c").await,
    ];
    let mut clients = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..2 {
            let (mut ws, _) = client(n, &format!("u{i}{j}")).await;
            join(&mut ws, "stream").await;
            clients.push((i, ws));
        }
    }
    for (_, ws) in clients.iter_mut() {
        settle(ws).await;
    }
    let publish = |from: u32, to: u32, status: u16| {
        let addr = nodes[0].addr;
        async move {
            for i in from..=to {
                let body = json!({"message": i}).to_string();
                let r = post_json(addr, "/api/groups/stream/broadcast", &body).await;
                assert_eq!(r.status, status);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    publish(1, 30, 200).await;
    backend.kill();
    for n in &nodes {
        wait_up(&n.hub, false).await;
    }
    // The first one finds the engine gone (its batch fails), the others are refused at once.
    publish(31, 60, 503).await;
    backend.restart();
    for n in &nodes {
        wait_up(&n.hub, true).await;
    }
    publish(61, 90, 200).await;
    for (i, ws) in clients.iter_mut() {
        let expected: Vec<u64> = (1..=30).chain(61..=90).collect();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let m = next_json_where(ws, |v| v["type"] == "message").await;
            got.push(m["message"].as_u64().unwrap());
        }
        assert_eq!(got, expected, "node {i}: every message once, in order");
        assert_quiet(ws).await;
    }
    for n in nodes {
        n.stop().await;
    }
}

/// A backplane that stalls (frozen, its connections open): the node's publication queue is
/// bounded; REST publishes past it get 429 with `Retry-After` and publish nothing, a client's
/// publish is delivered on its own node only; once the engine thaws everything queued goes
/// through and publishing works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_backplane_fills_a_bounded_queue_and_rest_publishes_get_429() {
    let redis = Backend::start(Kind::Redis);
    let config = BackplaneConfig {
        queue: 4,
        ..backplane(&redis, "t9")
    };
    let a = node_with(config, "stall-a").await;
    let (mut ws, _) = client(&a, "u").await;
    join(&mut ws, "q").await;
    redis.signal("-STOP");
    // Concurrent publishes: the first ones fill the queue (and the batch in flight), the rest
    // are refused at once.
    let mut calls = Vec::new();
    for i in 0..24 {
        let addr = a.addr;
        calls.push(tokio::spawn(async move {
            let body = format!(r#"{{"message":{i}}}"#);
            post_json(addr, "/api/groups/q/broadcast", &body).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A Pusher trigger is refused the same way (the HTTP API answers it with 429), not
    // delivered on this node only.
    let app = a.hub.apps().default_app().unwrap().clone();
    let busy = (0..300).any(|_| {
        let data = serde_json::value::to_raw_value("x").unwrap();
        matches!(
            a.hub.trigger(&app, "pq", "e", data, None),
            Err(wshub::hub::TriggerError::Busy(_))
        )
    });
    assert!(busy, "a trigger into a full queue was not refused");
    redis.signal("-CONT");
    let mut refused = 0;
    let mut accepted = 0;
    for c in calls {
        let r = c.await.unwrap();
        match r.status {
            429 => {
                refused += 1;
                assert_eq!(r.header("retry-after"), Some("1"));
            }
            200 => accepted += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "nothing was refused");
    assert!(accepted > 0 && accepted <= 4 + 256, "{accepted} accepted");
    let metrics = String::from_utf8(http(a.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(
        metrics.contains("wshub_backplane_events_total{reason=\"queue_full\"}"),
        "{metrics}"
    );
    // Every accepted publication reaches the member; refused ones never do.
    let mut got = 0;
    while got < accepted {
        let m = next_json_where(&mut ws, |v| v["type"] == "message").await;
        assert_eq!(m["group"], "q");
        got += 1;
    }
    // Once the queue drained, publishing works again.
    wait_up(&a.hub, true).await;
    let r = post_json(a.addr, "/api/groups/q/broadcast", r#"{"message":"after"}"#).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let m = next_json_where(&mut ws, |v| v["type"] == "message").await;
    assert_eq!(m["message"], "after");
    drop(redis);
}

/// The library's broadcast in a cluster: it answers with this node's connections (not 0), and
/// the message reaches the other node's clients too, numbered by the backplane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_broadcast_answers_in_a_cluster() {
    let bus = Backend::start(Kind::Local);
    let a = node(&bus, "lib", "lib-a").await;
    let b = node(&bus, "lib", "lib-b").await;
    let (_here, _) = client(&a, "u1").await;
    let (mut there, _) = client(&b, "u2").await;
    assert_eq!(a.hub.broadcast_text("from the library"), 1);
    let m = next_json_where(&mut there, |v| v["type"] == "server-broadcast").await;
    assert_eq!(m["message"], "from the library");
    assert_eq!(m["offset"], 1);
    let done = a
        .hub
        .publish_to(Target::All, Message::Text("awaited"), &Default::default())
        .await
        .unwrap();
    assert_eq!((done.recipients, done.offset), (None, Some(2)));
}

/// A client that pipelines commands behind a publish ack waiting for a stalled backplane: the
/// replies held for it count against its budgets; past half of them the node reads no more of
/// its input (it holds no more for it, and TCP slows the client down), and once the backplane
/// is back every reply comes, in order, with the client never closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_held_behind_a_waiting_ack_slow_the_client_down() {
    let redis = Backend::start(Kind::Redis);
    let a = node(&redis, "t10", "held-a").await;
    let (mut ws, _) = client(&a, "u").await;
    join(&mut ws, "q").await;
    redis.signal("-STOP");
    send_text(
        &mut ws,
        &json!({"id":"p","type":"publish","group":"q","message":1}).to_string(),
    )
    .await;
    // More pings than the 1,024 frames a connection may have waiting.
    for i in 0..1500 {
        send_text(&mut ws, &json!({"id": i, "type": "ping"}).to_string()).await;
    }
    // The node stopped reading, past half the replies it may hold for the client.
    wait_for(|| a.hub.metrics().input_holds.get() >= 1).await;
    redis.signal("-CONT");
    let ack = next_json_where(&mut ws, |v| v["id"] == "p").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(ack["offset"].as_u64().is_some(), "{ack}");
    for i in 0..1500 {
        let v = next_json_where(&mut ws, |v| !v["id"].is_null()).await;
        assert_eq!(
            (&v["type"], &v["id"]),
            (&json!("ack"), &json!(i)),
            "in order"
        );
    }
    let metrics = String::from_utf8(http(a.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(
        metrics.contains("wshub_slow_consumer_closes_total 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("reason=\"replies_held\""), "{metrics}");
}

/// A backplane URL the engine refuses leaves the hub as it was: a single node that still
/// numbers its own publications.
#[tokio::test]
async fn a_refused_backplane_leaves_the_hub_a_single_node() {
    let hub = Hub::new(HubConfig::default());
    let bad = BackplaneConfig {
        url: "redis://127.0.0.1:notaport"
            .parse::<BackplaneUrl>()
            .unwrap(),
        ..BackplaneConfig::default()
    };
    assert!(hub.connect_backplane(bad).is_err());
    assert!(hub.cluster().is_none());
    let done = hub
        .publish_to(
            Target::All,
            Message::Text("still here"),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(done.offset, Some(1), "numbered here, as before");
    assert!(
        hub.render_metrics().contains("wshub_backplane_up 1"),
        "a single node's backplane is up"
    );
}

/// A Pusher client of the development app on `srv`, and its socket id.
async fn pusher_client(srv: &TestServer) -> (Ws, String) {
    let url = format!("ws://{}/app/app-key?protocol=7", srv.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(v["event"], "pusher:connection_established", "{v}");
    let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
    (ws, data["socket_id"].as_str().unwrap().to_owned())
}

/// Joins `presence-room` as `user`; the member ids the subscription answered with.
async fn presence_join(ws: &mut Ws, socket: &str, user: &str) -> Vec<String> {
    let cd = json!({"user_id": user, "user_info": {"name": user}}).to_string();
    let msg = wshub::signing::channel_message(socket, "presence-room", Some(&cd));
    let auth = format!(
        "app-key:{}",
        wshub::signing::sign("app-secret", msg.as_bytes())
    );
    let sub = json!({"event": "pusher:subscribe", "data": {"channel": "presence-room", "auth": auth, "channel_data": cd}});
    send_text(ws, &sub.to_string()).await;
    let v = next_json_where(ws, |v| {
        v["event"] == "pusher_internal:subscription_succeeded"
    })
    .await;
    let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
    let mut ids: Vec<String> = data["presence"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Waits until `hub` sees exactly `users` in `presence-room`.
async fn presence_is(hub: &Hub, users: &[&str]) {
    let app = hub.apps().default_app().unwrap().clone();
    let hub = hub.clone();
    let want: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    tokio::time::timeout(WAIT, async move {
        loop {
            let got: Vec<String> = hub
                .presence_users(&app, "presence-room")
                .into_iter()
                .map(|u| u.id)
                .collect();
            if got == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("presence never became {users:?}"));
}

/// Pusher channels across nodes: presence is the cluster's (one `member_added` for a user's
/// first connection anywhere, one `member_removed` for its last), events and client events
/// reach every node, a user's connections are terminated wherever they are.
async fn pusher_presence_events_and_terminate_are_cluster_wide(kind: Kind) {
    let engine = Backend::start(kind);
    let a = node(&engine, "tp", "node-a").await;
    let b = node(&engine, "tp", "node-b").await;
    let app = b.hub.apps().default_app().unwrap().clone();
    let (mut alice, sa) = pusher_client(&a).await;
    assert_eq!(presence_join(&mut alice, &sa, "alice").await, ["alice"]);
    presence_is(&b.hub, &["alice"]).await;
    let (mut bob1, sb1) = pusher_client(&b).await;
    assert_eq!(
        presence_join(&mut bob1, &sb1, "bob").await,
        ["alice", "bob"]
    );
    let v = next_json_where(&mut alice, |v| v["event"] == "pusher_internal:member_added").await;
    assert_eq!(
        v["data"],
        json!({"user_id": "bob", "user_info": {"name": "bob"}}).to_string()
    );
    // bob's second connection, on the other node: no second member_added.
    let (mut bob2, sb2) = pusher_client(&a).await;
    assert_eq!(
        presence_join(&mut bob2, &sb2, "bob").await,
        ["alice", "bob"]
    );
    // Both nodes count the channel's three subscriptions, wherever they are.
    for hub in [&a.hub, &b.hub] {
        let (hub, app) = (hub.clone(), app.clone());
        tokio::time::timeout(WAIT, async move {
            while hub.subscription_count(&app, "presence-room") != 3
                || hub.app_channels(&app) != [("presence-room".to_owned(), 3)]
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the subscription count is the cluster's");
    }
    // An event triggered on node B reaches node A's subscribers (and B's), once each.
    let data = serde_json::value::to_raw_value("\"hi\"").unwrap();
    b.hub
        .trigger(&app, "presence-room", "greeting", data, None)
        .unwrap();
    for ws in [&mut alice, &mut bob1, &mut bob2] {
        let v = next_json_where(ws, |v| v["event"] == "greeting").await;
        assert_eq!(v["channel"], "presence-room");
    }
    // A client event from alice (node A) reaches bob on node B with her user id.
    let ce = json!({"event": "client-wave", "channel": "presence-room", "data": {"x": 1}});
    send_text(&mut alice, &ce.to_string()).await;
    let v = next_json_where(&mut bob1, |v| v["event"] == "client-wave").await;
    assert_eq!(
        (v["user_id"].as_str(), v["data"].clone()),
        (Some("alice"), json!({"x": 1}))
    );
    // bob1 leaves: bob is still there (bob2). Then bob2 leaves: one member_removed.
    bob1.close(None).await.unwrap();
    drop(bob1);
    presence_is(&a.hub, &["alice", "bob"]).await;
    bob2.close(None).await.unwrap();
    drop(bob2);
    presence_is(&a.hub, &["alice"]).await;
    presence_is(&b.hub, &["alice"]).await;
    // What alice got meanwhile: exactly one member_added (above) and one member_removed.
    let marker = json!({"event": "pusher:ping", "data": {}});
    send_text(&mut alice, &marker.to_string()).await;
    let mut seen = Vec::new();
    loop {
        let v = next_json(&mut alice).await;
        if v["event"] == "pusher:pong" {
            break;
        }
        seen.push(v["event"].as_str().unwrap_or("").to_owned());
    }
    let removed = seen
        .iter()
        .filter(|e| *e == "pusher_internal:member_removed")
        .count();
    let added = seen
        .iter()
        .filter(|e| *e == "pusher_internal:member_added")
        .count();
    assert_eq!((added, removed), (0, 1), "{seen:?}");
    // A user signed in on node B is terminated from node A.
    let (mut carol, sc) = pusher_client(&b).await;
    let user_data = json!({"id": "carol"}).to_string();
    let msg = wshub::signing::user_message(&sc, &user_data);
    let auth = format!(
        "app-key:{}",
        wshub::signing::sign("app-secret", msg.as_bytes())
    );
    let signin = json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}});
    send_text(&mut carol, &signin.to_string()).await;
    next_json_where(&mut carol, |v| v["event"] == "pusher:signin_success").await;
    a.hub.terminate_user(&app, "carol");
    assert_eq!(next_close(&mut carol).await, Some(4009));
    a.stop().await;
    b.stop().await;
}

/// A cache channel's last event is the cluster's: a node started after it was published reads
/// it from the shared history when a client first subscribes there.
async fn a_cache_channels_last_event_reaches_a_node_started_after_it(kind: Kind) {
    let engine = Backend::start(kind);
    let a = node(&engine, "tc", "node-a").await;
    let app = a.hub.apps().default_app().unwrap().clone();
    for price in [1, 2] {
        let data = serde_json::value::to_raw_value(&format!("{{\"price\":{price}}}")).unwrap();
        a.hub
            .trigger(&app, "cache-prices", "tick", data, None)
            .unwrap();
    }
    // Numbered by the engine before the second node exists.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = node(&engine, "tc", "node-b").await;
    let (mut ws, _) = pusher_client(&b).await;
    let sub = json!({"event": "pusher:subscribe", "data": {"channel": "cache-prices"}});
    send_text(&mut ws, &sub.to_string()).await;
    let v = next_json(&mut ws).await;
    assert_eq!(v["event"], "pusher_internal:subscription_succeeded", "{v}");
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["event"].as_str(), v["data"].as_str()),
        (Some("tick"), Some(r#"{"price":2}"#)),
        "{v}"
    );
    // A cache channel nobody published to: a miss, from either node.
    let sub = json!({"event": "pusher:subscribe", "data": {"channel": "cache-empty"}});
    send_text(&mut ws, &sub.to_string()).await;
    next_json_where(&mut ws, |v| {
        v["event"] == "pusher_internal:subscription_succeeded"
    })
    .await;
    let v = next_json(&mut ws).await;
    assert_eq!(v["event"], "pusher:cache_miss", "{v}");
    a.stop().await;
    b.stop().await;
}

/// wshub's own webhooks in a cluster: two nodes whose members join and leave a group at the
/// same instant give one `group.occupied` and one `group.vacated`; a node killed with a
/// group's only member leaves it vacated by the survivors (one of them), with one
/// `node.lost`. The receiver fails its first requests: they come again, with the same event
/// ids, and counted by id every transition is there exactly once.
async fn hub_webhooks_are_one_per_transition_and_survivors_tell_a_dead_nodes(kind: Kind) {
    let engine = Backend::start(kind);
    let rx = receiver::Receiver::start(vec![503, 503]).await;
    let hooked = |id: &'static str| {
        let url = rx.url.clone();
        node_configured(backplane(&engine, "wshub"), id, move |c| {
            c.webhooks = wshub::webhooks::Settings {
                targets: vec![wshub::apps::Webhook {
                    url,
                    event_types: Vec::new(),
                }],
                key: std::sync::Arc::from(&b"cluster-webhook-key-0123"[..]),
            };
        })
    };
    let a = hooked("node-a").await;
    let b = hooked("node-b").await;
    // Counted by event id: a batch refused with a 503 is sent again, the same ids in it.
    let count = |events: &[Value], ty: &str, group: &str| {
        events
            .iter()
            .filter(|e| e["type"] == ty && e["data"]["group"] == group)
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let ((mut x, _), (mut y, _)) = tokio::join!(client(&a, "xa"), client(&b, "yb"));
    tokio::join!(join(&mut x, "room"), join(&mut y, "room"));
    rx.wait_for("two joins", |e| count(e, "group.joined", "room") == 2)
        .await;
    tokio::join!(
        cmd(&mut x, json!({"id": "l", "type": "leave", "group": "room"})),
        cmd(&mut y, json!({"id": "l", "type": "leave", "group": "room"})),
    );
    rx.wait_for("vacated", |e| count(e, "group.vacated", "room") >= 1)
        .await;
    // A node with the only member of `lonely`, killed: no goodbye.
    let (mut doomed, addr) = spawn_doomed(&engine.url(), &[]).await;
    let (mut z, _) = connect_v1(&format!("ws://{addr}/ws")).await;
    join(&mut z, "lonely").await;
    let (ha, hb) = (a.hub.clone(), b.hub.clone());
    let app = a.hub.apps().default_app().unwrap().clone();
    tokio::time::timeout(WAIT, async move {
        while ha.subscription_count(&app, "lonely") != 1
            || hb.subscription_count(&app, "lonely") != 1
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both survivors count the dead node's member");
    doomed.start_kill().unwrap();
    let _ = doomed.wait().await;
    rx.wait_for("the dead node's group vacated", |e| {
        count(e, "group.vacated", "lonely") >= 1 && e.iter().any(|e| e["type"] == "node.lost")
    })
    .await;
    // Anything late or duplicated would have arrived by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = rx.events();
    assert_eq!(
        (
            count(&events, "group.occupied", "room"),
            count(&events, "group.joined", "room"),
            count(&events, "group.left", "room"),
            count(&events, "group.vacated", "room"),
            count(&events, "group.vacated", "lonely"),
        ),
        (1, 2, 2, 1, 1),
        "{events:#?}"
    );
    let mut lost: Vec<&Value> = events.iter().filter(|e| e["type"] == "node.lost").collect();
    lost.dedup_by_key(|e| e["id"].clone());
    assert_eq!(lost.len(), 1, "{lost:?}");
    // The two refused requests were retried: some events arrived twice, with the same id.
    assert!(rx.got.lock().len() >= 3);
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
    assert!(ids.len() > unique.len(), "retries repeat their ids");
    assert_eq!(lost[0]["data"]["node"], "doomed");
    assert_eq!(lost[0]["node"], "node-a", "the first live node by id tells");
    drop((x, y, z));
    a.stop().await;
    b.stop().await;
}

/// Presence of `wshub.v1` groups across nodes: members on every node are seen from every node
/// (`presence`, `presence_stats`); a node killed with SIGKILL takes its members out of presence
/// within the node TTL, and the survivors' members get their `left`.
async fn v1_presence_is_cluster_wide_and_a_dead_nodes_members_leave_it(kind: Kind) {
    let engine = Backend::start(kind);
    let a = node(&engine, "wshub", "node-a").await;
    let b = node(&engine, "wshub", "node-b").await;
    let (mut ann, _) = client(&a, "ann").await;
    let (mut bob, _) = client(&b, "bob").await;
    join(&mut ann, "room").await;
    join(&mut bob, "room").await;
    let users_of = |hub: &Hub| hub.presence_stats("room").users;
    let wait_users = |hub: Hub, n: usize, what: &'static str| async move {
        tokio::time::timeout(3 * WAIT, async {
            while hub.presence_stats("room").users != n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: {} users", hub.presence_stats("room").users));
    };
    wait_users(a.hub.clone(), 2, "both on A").await;
    wait_users(b.hub.clone(), 2, "both on B").await;
    let page = cmd(
        &mut ann,
        json!({"id": "p", "type": "presence", "group": "room"}),
    )
    .await;
    let mut seen: Vec<&str> = page["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, ["ann", "bob"], "{page}");
    // zoe, on a node that is killed.
    let (mut doomed, addr) = spawn_doomed(&engine.url(), &["--jwt-secret", SECRET]).await;
    let (mut zoe, _) = connect_v1(&format!("ws://{addr}/ws?access_token={}", token("zoe"))).await;
    join(&mut zoe, "room").await;
    wait_users(a.hub.clone(), 3, "zoe seen on A").await;
    wait_users(b.hub.clone(), 3, "zoe seen on B").await;
    doomed.start_kill().unwrap();
    let _ = doomed.wait().await;
    wait_users(a.hub.clone(), 2, "zoe gone on A").await;
    wait_users(b.hub.clone(), 2, "zoe gone on B").await;
    assert_eq!((users_of(&a.hub), users_of(&b.hub)), (2, 2));
    let left = next_json_where(&mut bob, |v| v["type"] == "left" && v["user"] == "zoe").await;
    assert_eq!(left["group"], "room");
    drop(zoe);
    a.stop().await;
    b.stop().await;
}

/// A user's revocation is kept by the engine itself: after every node that saw it is gone, a
/// node started afresh refuses the user's older tokens (and accepts newer ones).
async fn a_revocation_is_kept_by_the_backplane_when_every_node_restarts(kind: Kind) {
    let engine = Backend::start(kind);
    let a = node(&engine, "wshub", "node-a").await;
    let (mut ann, _) = client(&a, "ann").await;
    let res = http(
        a.addr,
        "DELETE",
        "/api/users/ann/connections?revoke=true",
        &[],
        b"",
    )
    .await;
    assert_eq!(res.status, 200, "{:?}", String::from_utf8_lossy(&res.body));
    let before = res.json()["revokedBefore"].as_u64().unwrap();
    assert_eq!(next_close(&mut ann).await, Some(4403));
    a.stop().await;
    // Nobody who saw it is left; a new node reads it from the engine.
    let b = node(&engine, "wshub", "node-b").await;
    let h = b.hub.clone();
    tokio::time::timeout(WAIT, async move {
        while !h.is_revoked(Some("ann"), Some(before - 1)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the new node knows the revocation");
    let status = |t: String| {
        let url = format!("{}?access_token={t}", b.ws_url());
        async move {
            match tokio_tungstenite::connect_async(url).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(status(token("ann")).await, 401);
    let newer = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ann", "exp": before + 600, "iat": before + 1}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(status(newer).await, 101);
    assert!(!b.hub.is_revoked(Some("bob"), None));
    b.stop().await;
}

/// Idempotent publishing across nodes: a repeat made on another node after the first was
/// delivered is answered with the first one's offset; two publications with the same key made
/// on two nodes at the same instant reach a member once (every node decides in the bus's order).
async fn an_idempotency_key_is_cluster_wide(kind: Kind) {
    let engine = Backend::start(kind);
    let a = node(&engine, "ti", "node-a").await;
    let b = node(&engine, "ti", "node-b").await;
    let (mut m, _) = client(&b, "mia").await;
    let ack = cmd(&mut m, json!({"id": 1, "type": "join", "group": "pay"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let msg = |s: &str| serde_json::value::to_raw_value(s).unwrap();
    let first = publish_keyed(&a.hub, "pay", &msg("once"), None, Some("k1"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let v = next_json_where(&mut m, |v| v["type"] == "message").await;
    assert_eq!(
        (v["message"].as_str(), v["offset"].as_u64()),
        (Some("once"), first.offset)
    );
    let again = publish_keyed(&b.hub, "pay", &msg("once"), None, Some("k1"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.offset, first.offset);
    // The same key on both nodes at once.
    let race = msg("race");
    let (x, y) = tokio::join!(
        publish_keyed(&a.hub, "pay", &race, None, Some("k2")),
        publish_keyed(&b.hub, "pay", &race, None, Some("k2")),
    );
    assert!(x.is_ok() && y.is_ok());
    publish_keyed(&a.hub, "pay", &msg("after"), None, None)
        .await
        .unwrap();
    let mut races = 0;
    loop {
        let v = next_json_where(&mut m, |v| v["type"] == "message").await;
        match v["message"].as_str() {
            Some("race") => races += 1,
            Some("after") => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(races, 1, "delivered once");
    a.stop().await;
    b.stop().await;
}

/// A publisher that outruns the backplane: past `--publish-queue` waiting publications, REST
/// publishes are refused (429 with Retry-After, `Busy` here) instead of queueing without bound;
/// every accepted one reaches a member on another node, none refused does.
async fn a_publisher_outrunning_the_backplane_is_told_to_retry(kind: Kind) {
    let engine = Backend::start(kind);
    let bp = BackplaneConfig {
        queue: 2,
        ..backplane(&engine, "tq")
    };
    let a = node_with(bp, "node-a").await;
    let b = node(&engine, "tq", "node-b").await;
    let (mut m, _) = client(&b, "max").await;
    let ack = cmd(&mut m, json!({"id": 1, "type": "join", "group": "flood"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // 64 requests in flight at a time: far more than the queue of 2 takes, without 300
    // simultaneous connects (on a loaded CI machine one of those was reset).
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let addr = a.addr;
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let _slot = in_flight.acquire_owned().await.unwrap();
                let body = json!({ "message": format!("m{i}") }).to_string();
                let res = post_json(addr, "/api/groups/flood/broadcast", &body).await;
                match res.status {
                    200 => true,
                    // 429: the queue is full; 503: the frozen engine failed a batch (the node
                    // counts it out of reach until it answers again). Neither published.
                    429 | 503 => {
                        assert_eq!(res.header("retry-after"), Some("1"));
                        false
                    }
                    other => panic!("{other}: {}", String::from_utf8_lossy(&res.body)),
                }
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        if t.await.unwrap() {
            accepted += 1;
        }
    }
    assert!(accepted > 0 && accepted < 300, "{accepted} of 300 accepted");
    let end = serde_json::value::to_raw_value("end").unwrap();
    publish_keyed(&a.hub, "flood", &end, None, None)
        .await
        .unwrap();
    let mut got = 0;
    loop {
        let v = next_json_where(&mut m, |v| v["type"] == "message").await;
        if v["message"] == "end" {
            break;
        }
        got += 1;
    }
    assert_eq!(got, accepted, "every accepted publication, and only those");
    a.stop().await;
    b.stop().await;
}

/// Requests that take turns between the nodes, as a round-robin balancer sends them.
struct RoundRobin {
    addrs: Vec<std::net::SocketAddr>,
    turn: std::sync::atomic::AtomicUsize,
}

impl RoundRobin {
    fn next(&self) -> std::net::SocketAddr {
        let i = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.addrs[i % self.addrs.len()]
    }

    /// One poll of `session`, on the next node: its status and frames.
    async fn poll(&self, session: &str, headers: &[(&str, &str)]) -> (u16, Vec<Value>) {
        let r = http(
            self.next(),
            "GET",
            &format!("/v1/poll/{session}"),
            headers,
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

    /// Polls `session` (each poll on the next node) until a frame matches `pred`.
    async fn until(
        &self,
        session: &str,
        headers: &[(&str, &str)],
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        tokio::time::timeout(3 * WAIT, async {
            loop {
                let (status, frames) = self.poll(session, headers).await;
                assert!(status == 200 || status == 204, "poll answered {status}");
                if let Some(f) = frames.into_iter().find(|f| pred(f)) {
                    return f;
                }
            }
        })
        .await
        .expect("no such frame")
    }

    /// Commands to `session`, on the next node.
    async fn post(&self, session: &str, headers: &[(&str, &str)], lines: &str) -> u16 {
        http(
            self.next(),
            "POST",
            &format!("/v1/sessions/{session}"),
            headers,
            lines.as_bytes(),
        )
        .await
        .status
    }
}

/// No sticky sessions: a long-polling session opened on one node is polled and posted to on
/// both, in turn, as a round-robin balancer would; an SSE session's POSTs reach the other
/// node. Every request is answered as the session's node would answer it (the session's user
/// checked there), and the session chats with a WebSocket client on the other node.
async fn http_sessions_answer_on_any_node_without_sticky_sessions(kind: Kind) {
    let engine = Backend::start(kind);
    let quick = |c: &mut HubConfig| c.ping_interval = Duration::from_millis(300);
    let a = node_configured(backplane(&engine, "wshub"), "node-a", quick).await;
    let b = node_configured(backplane(&engine, "wshub"), "node-b", quick).await;
    let auth = format!("Bearer {}", token("lp"));
    let me = [("Authorization", auth.as_str())];
    let r = http(a.addr, "GET", "/v1/poll", &me, b"").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let session = r.json()["session"].as_str().unwrap().to_owned();
    assert!(session.ends_with(".node-a"), "{session}");
    let lb = RoundRobin {
        addrs: vec![b.addr, a.addr],
        turn: Default::default(),
    };
    // A WebSocket client on B, in the room.
    let (mut ws, _) = client(&b, "ws").await;
    join(&mut ws, "room").await;
    let welcome = lb.until(&session, &me, |f| f["type"] == "welcome").await;
    assert_eq!(welcome["protocol"], "wshub.v1");
    let status = lb
        .post(
            &session,
            &me,
            "{\"id\":1,\"type\":\"join\",\"group\":\"room\"}",
        )
        .await;
    assert_eq!(status, 204);
    lb.until(&session, &me, |f| f["type"] == "ack" && f["id"] == 1)
        .await;
    let status = lb
        .post(
            &session,
            &me,
            "{\"id\":2,\"type\":\"publish\",\"group\":\"room\",\"message\":\"from lp\"}",
        )
        .await;
    assert_eq!(status, 204);
    let got = next_json_where(&mut ws, |v| v["type"] == "message").await;
    assert_eq!(
        (got["group"].as_str(), got["message"].as_str()),
        (Some("room"), Some("from lp")),
        "{got}"
    );
    cmd(
        &mut ws,
        json!({"id":"p","type":"publish","group":"room","message":"from ws"}),
    )
    .await;
    lb.until(&session, &me, |f| {
        f["type"] == "message" && f["message"] == "from ws"
    })
    .await;

    // The session's node judges who may act for it, wherever the request arrived.
    let other = format!("Bearer {}", token("mallory"));
    for (headers, want) in [
        (vec![("Authorization", other.as_str())], 403),
        (vec![], 401),
    ] {
        let r = http(b.addr, "GET", &format!("/v1/poll/{session}"), &headers, b"").await;
        assert_eq!(r.status, want, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let r = http(
            b.addr,
            "POST",
            &format!("/v1/sessions/{session}"),
            &headers,
            b"{}",
        )
        .await;
        assert_eq!(r.status, want);
    }
    // A guessed session of a live node: that node's 404. Of a node nobody heard of (once B
    // is old enough to know every live node): 404 at once.
    let guess = format!("{}.node-a", "0123456789abcdef".repeat(2));
    let r = http(b.addr, "POST", &format!("/v1/sessions/{guess}"), &[], b"{}").await;
    assert_eq!(r.status, 404);
    let b_cluster = b.hub.cluster().unwrap().clone();
    tokio::time::timeout(WAIT, async {
        while b_cluster.age() <= Duration::from_millis(1600) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    let ghost = format!("{}.ghost", "0123456789abcdef".repeat(2));
    let r = http(b.addr, "GET", &format!("/v1/poll/{ghost}"), &[], b"").await;
    assert_eq!(r.status, 404);
    // Oversized POSTs are refused where they arrive.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000));
    let r = http(
        b.addr,
        "POST",
        &format!("/v1/sessions/{session}"),
        &me,
        big.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 413);

    // An SSE session on B, its commands POSTed to A.
    let sse_auth = format!("Bearer {}", token("sse"));
    let mut s = sse::Sse::open(b.addr, "/v1/sse", &[("Authorization", sse_auth.as_str())]).await;
    assert_eq!(s.status, 200);
    let sse_session = s.next_named("session").await.json()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(sse_session.ends_with(".node-b"), "{sse_session}");
    assert_eq!(s.next().await.json()["type"], "welcome");
    let r = http(
        a.addr,
        "POST",
        &format!("/v1/sessions/{sse_session}"),
        &[("Authorization", sse_auth.as_str())],
        b"{\"id\":1,\"type\":\"join\",\"group\":\"room\"}\n{\"id\":2,\"type\":\"publish\",\"group\":\"room\",\"message\":\"from sse\"}",
    )
    .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let mut acks = Vec::new();
    while acks.len() < 2 {
        let f = s.next().await.json();
        if f["type"] == "ack" {
            acks.push(f["id"].as_i64().unwrap());
        }
    }
    assert_eq!(acks, [1, 2]);
    lb.until(&session, &me, |f| {
        f["type"] == "message" && f["message"] == "from sse"
    })
    .await;

    // Goodbye through the other node: the session's last poll says so.
    let r = http(
        b.addr,
        "DELETE",
        &format!("/v1/sessions/{session}"),
        &me,
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    lb.until(&session, &me, |f| f["type"] == "close").await;
    assert!(metric(a.addr, "wshub_relayed_requests_total").await > 0.0);
    assert!(metric(b.addr, "wshub_relayed_requests_total").await > 0.0);
    drop(s);
    a.stop().await;
    b.stop().await;
}

/// A group publication through the one publish entry, with an idempotency key.
async fn publish_keyed(
    hub: &Hub,
    group: &str,
    message: &serde_json::value::RawValue,
    key: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<wshub::hub::Outcome, wshub::hub::PublishError> {
    let opts = wshub::hub::PublishOptions {
        key: key.map(str::to_owned),
        idempotency_key: idempotency_key.map(str::to_owned),
        ttl: None,
    };
    hub.publish_to(Target::Group(group), Message::Json(message), &opts)
        .await
}

/// The backplane goes away while a long-polling session lives on A: a POST that reaches B
/// cannot be relayed, and says so (503 with `Retry-After`, problem+json) at once instead of
/// waiting; on A the session goes on. (The in-process bus: its outage is immediate.)
async fn a_relayed_request_without_a_backplane_is_503(kind: Kind) {
    let mut engine = Backend::start(kind);
    let quick = |c: &mut HubConfig| c.ping_interval = Duration::from_millis(300);
    let a = node_configured(backplane(&engine, "wshub"), "node-a", quick).await;
    let b = node_configured(backplane(&engine, "wshub"), "node-b", quick).await;
    let auth = format!("Bearer {}", token("lp"));
    let me = [("Authorization", auth.as_str())];
    let r = http(a.addr, "GET", "/v1/poll", &me, b"").await;
    assert_eq!(r.status, 200);
    let session = r.json()["session"].as_str().unwrap().to_owned();
    let ping = b"{\"id\":1,\"type\":\"ping\"}";
    let path = format!("/v1/sessions/{session}");
    assert_eq!(http(b.addr, "POST", &path, &me, ping).await.status, 204);
    engine.kill();
    wait_up(&b.hub, false).await;
    let started = std::time::Instant::now();
    let r = http(b.addr, "POST", &path, &me, ping).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < WAIT,
        "answered without waiting for a deadline"
    );
    assert_eq!(http(a.addr, "POST", &path, &me, ping).await.status, 204);
    a.stop().await;
    b.stop().await;
}
