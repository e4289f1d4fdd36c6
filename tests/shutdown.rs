//! Graceful shutdown of the real binary: SIGTERM → Close 1001 to every client → exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::process::{Child, Command};

fn sigterm(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn sigterm_sends_1001_to_every_client_and_exits_0() {
    let (mut child, addr) = spawn_server(&["--shutdown-timeout", "5s"]).await;
    let url = format!("ws://{addr}/ws");
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(&url).await.0);
    }
    // Something queued just before the signal is still delivered before the Close.
    let res = post_json(
        addr,
        "/api/connections/broadcast",
        r#"{"message":"last words"}"#,
    )
    .await;
    assert_eq!(res.json()["recipients"], 5);
    sigterm(&child);
    for ws in clients.iter_mut() {
        let v = next_json_where(ws, |v| v["type"] == "server-broadcast").await;
        assert_eq!(v["message"], "last words");
        assert_eq!(next_close(ws).await, Some(1001));
    }
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_deadline_bounds_a_client_that_never_answers() {
    let (mut child, addr) = spawn_server(&["--shutdown-timeout", "500ms"]).await;
    let mut stuck = RawClient::connect(addr, "/ws").await; // never answers the Close
    stuck.read_frame().await.unwrap();
    let started = std::time::Instant::now();
    sigterm(&child);
    assert_eq!(stuck.read_close().await, Some(1001));
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn bad_options_are_refused_at_startup() {
    let out = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["serve", "--max-message-size", "lots"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max-message-size"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["serve", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--listen",
        "--ping-interval",
        "--idle-timeout",
        "--max-message-size",
        "--send-queue",
        "--shutdown-timeout",
        "WSHUB_LISTEN",
        "127.0.0.1:5289",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
}

#[tokio::test]
async fn environment_variables_configure_the_server() {
    let (child, addr) = spawn_server_env(
        &[],
        &[
            ("WSHUB_LISTEN", "127.0.0.1:0"),
            ("WSHUB_MAX_MESSAGE_SIZE", "16"),
        ],
    )
    .await;
    let mut raw = RawClient::connect(addr, "/ws").await;
    raw.send(0x1, b"seventeen bytes!!").await;
    assert_eq!(raw.read_close().await, Some(1009));
    sigterm(&child);
    let mut child = child;
    assert!(tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap()
        .success());
}

/// A peer that reads our Close but never answers it (websocat with its input still open) holds
/// a shutdown for the close timeout, not for the whole shutdown timeout.
#[tokio::test]
async fn a_peer_that_never_answers_close_does_not_hold_shutdown() {
    let config = wshub::HubConfig {
        shutdown_timeout: Duration::from_secs(60),
        close_timeout: Duration::from_millis(300),
        ..fast_config()
    };
    let srv = TestServer::with_config(wshub::HubConfig {
        idle_timeout: Duration::from_secs(60),
        ..config
    })
    .await;
    let mut mute = RawClient::connect(srv.addr, "/ws").await;
    srv.wait_count(1).await;
    let started = std::time::Instant::now();
    let reader = tokio::spawn(async move { mute.read_close().await });
    // `stop` waits at most WAIT (10 s) for the server: far less than the 60 s shutdown timeout.
    srv.stop().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(reader.await.unwrap(), Some(1001));
}

/// What a newcomer sees at startup: a warning per open setting, Origin included; no colour
/// codes when the output is not a terminal; a startup error printed once, with a hint.
#[tokio::test]
async fn startup_output_is_plain_warns_about_open_settings_and_errors_once() {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("listening");
            seen.push(line);
            if done {
                break;
            }
        }
    })
    .await
    .unwrap();
    let all = seen.join("\n");
    assert!(
        !all.contains('\u{1b}'),
        "colour codes in redirected output:\n{all}"
    );
    for open in [
        "authentication is OFF",
        "REST API is open",
        "Origin policy is open",
    ] {
        assert!(all.contains(open), "no warning `{open}` in:\n{all}");
    }
    let addr = seen
        .last()
        .and_then(|l| l.split("local=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .unwrap()
        .to_owned();
    // The same port again: one error line, naming the way out.
    let out = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["serve", "--listen", &addr])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("cannot listen").count() + stdout.matches("cannot listen").count(),
        1,
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("--listen"), "{stderr}");
    child.kill().await.unwrap();
}

/// Each protocol is told to come back in its own words: plain clients keep the original's 1001,
/// `wshub.v1` clients get 1012 ("service restart") and Pusher clients 4200 (reconnect now),
/// after what was queued for them.
#[tokio::test]
async fn sigterm_tells_each_protocol_to_reconnect_in_its_own_words() {
    let (mut child, addr) = spawn_server(&["--shutdown-timeout", "5s"]).await;
    let (mut plain, _) = connect(&format!("ws://{addr}/ws")).await;
    let (mut v1, _) = connect_v1(&format!("ws://{addr}/ws")).await;
    let mut pusher = RawClient::connect(addr, "/app/app-key?protocol=7").await;
    let (_, hello) = pusher.read_frame().await.unwrap();
    assert!(String::from_utf8_lossy(&hello).contains("pusher:connection_established"));
    sigterm(&child);
    assert_eq!(next_close(&mut plain).await, Some(1001));
    assert_eq!(next_close(&mut v1).await, Some(1012));
    assert_eq!(pusher.read_close().await, Some(4200));
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}
