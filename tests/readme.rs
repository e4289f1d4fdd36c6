//! The README's tours, walked with real clients on a fresh server: every JSON sample the README
//! shows must have the shape (keys, nesting, numbers, booleans, nulls) of what the server
//! really answers at that step. Strings (ids, timestamps, epochs, addresses) may differ.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

/// The JSON lines of the README section that starts with `heading` (up to the next `## `).
fn samples(heading: &str) -> Vec<Value> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}` in README"));
    let rest = &readme[start + heading.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{') && l.ends_with('}'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("README line `{l}`: {e}")))
        // What the user types (wshub.v1 commands) is not an answer.
        .filter(|v: &Value| {
            !matches!(
                v["type"].as_str(),
                Some("join" | "leave" | "publish" | "send" | "ping" | "subscribe" | "unsubscribe")
            )
        })
        .collect()
}

/// Whether the README's `doc` sample has the shape of the server's `real` answer.
fn same_shape(doc: &Value, real: &Value) -> bool {
    match (doc, real) {
        (Value::Object(d), Value::Object(r)) => {
            d.len() == r.len()
                && d.iter()
                    .all(|(k, v)| r.get(k).is_some_and(|rv| same_shape(v, rv)))
        }
        (Value::Array(d), Value::Array(r)) => {
            d.len() == r.len() && d.iter().zip(r).all(|(a, b)| same_shape(a, b))
        }
        (Value::String(_), Value::String(_)) => true,
        (d, r) => d == r,
    }
}

/// Every README sample matches, in order, one of the answers the server gave.
fn check(heading: &str, real: &[Value]) {
    let docs = samples(heading);
    assert!(!docs.is_empty());
    let mut from = 0;
    for doc in &docs {
        let found = real[from..].iter().position(|r| same_shape(doc, r));
        let Some(i) = found else {
            panic!(
                "README ({heading}) shows\n  {doc}\nbut the server answered, from there on:\n  {}",
                real[from..]
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n  ")
            );
        };
        from += i + 1;
    }
}

async fn json_of(r: HttpResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn the_quick_tour_shows_what_the_server_answers() {
    let srv = TestServer::start().await;
    let mut real = Vec::new();
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(srv.ws_url()))
        .await
        .unwrap()
        .unwrap();
    real.push(next_json(&mut ws).await);
    // What the README's client types (websocat with --linemode-strip-newlines: no "\n").
    send_text(&mut ws, "Hello!").await;
    real.push(next_json(&mut ws).await);
    real.push(next_json(&mut ws).await);
    real.push(json_of(http(srv.addr, "GET", "/api/connections", &[], b"").await).await);
    let body = r#"{"message":"Server is restarting in 5 minutes."}"#;
    real.push(json_of(post_json(srv.addr, "/api/connections/broadcast", body).await).await);
    real.push(next_json(&mut ws).await);
    let blank = r#"{"message":"  "}"#;
    real.push(json_of(post_json(srv.addr, "/api/connections/broadcast", blank).await).await);
    check("## Quick tour", &real);
    srv.stop().await;
}

#[tokio::test]
async fn the_wshub_v1_sample_shows_what_the_server_answers() {
    let srv = TestServer::start().await;
    let mut real = Vec::new();
    let (mut ws, welcome) = connect_v1_welcome(&srv.ws_url()).await;
    real.push(welcome);
    send_text(&mut ws, r#"{"id":1,"type":"join","group":"room-1"}"#).await;
    real.push(next_json(&mut ws).await);
    send_text(
        &mut ws,
        r#"{"id":2,"type":"publish","group":"room-1","message":{"text":"hi"}}"#,
    )
    .await;
    real.push(next_json(&mut ws).await);
    real.push(next_json(&mut ws).await);
    check("## WebSocket endpoints", &real);
    srv.stop().await;
}
