//! The REST companion API: in-process through the router (`oneshot`, the analogue of the
//! original's WebApplicationFactory) and over a real socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use wshub::{Hub, HubConfig};

fn app() -> axum::Router {
    wshub::router(Hub::new(HubConfig::default()))
}

async fn call(req: Request<Body>) -> (StatusCode, Option<String>, Vec<u8>) {
    let res = app().oneshot(req).await.unwrap();
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, ct, body)
}

fn post(path: &str, content_type: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::post(path);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

fn assert_problem(status: StatusCode, ct: Option<String>, body: &[u8], want: StatusCode) -> Value {
    assert_eq!(status, want, "{}", String::from_utf8_lossy(body));
    assert_eq!(ct.as_deref(), Some("application/problem+json"));
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["status"], want.as_u16());
    assert!(v["type"].is_string() && v["title"].is_string());
    assert!(!v["detail"].as_str().unwrap().is_empty());
    v
}

// The original's four HTTP tests.

#[tokio::test]
async fn get_connections_on_empty_pool_is_200_with_schema() {
    let (status, ct, body) = call(
        Request::get("/api/connections")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.unwrap().starts_with("application/json"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["count"], 0);
    assert_eq!(v["connections"], serde_json::json!([]));
}

#[tokio::test]
async fn broadcast_with_empty_message_is_400() {
    let (s, ct, b) = call(post(
        "/api/connections/broadcast",
        Some("application/json"),
        r#"{"message":""}"#,
    ))
    .await;
    assert_problem(s, ct, &b, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn broadcast_valid_with_no_clients_is_200_with_0_recipients() {
    let (s, _, b) = call(post(
        "/api/connections/broadcast",
        Some("application/json"),
        r#"{"message":"hi"}"#,
    ))
    .await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_slice(&b).unwrap();
    // The broadcast's `recipients`, plus the message's offset in the all-clients stream.
    assert_eq!(v, serde_json::json!({"recipients": 0, "offset": 1}));
}

#[tokio::test]
async fn plain_http_on_ws_is_400() {
    for path in ["/ws", "/ws/echo"] {
        let (s, ct, b) = call(Request::get(path).body(Body::empty()).unwrap()).await;
        assert_problem(s, ct, &b, StatusCode::BAD_REQUEST);
    }
}

// Beyond the original.

#[tokio::test]
async fn broadcast_rejects_every_malformed_body_precisely() {
    let json = Some("application/json");
    let cases = [
        (json, "", "empty"),
        (json, "{}", "required"),
        (json, r#"{"message":null}"#, "required"),
        (json, r#"{"message":"   \n\t "}"#, "whitespace"),
        (json, r#"{"message":42}"#, "malformed"),
        (json, r#"{"message":"hi""#, "malformed"),
        (json, "not json", "malformed"),
        (json, "[1,2]", "malformed"),
        // Found by fuzzing: serde reads structs from arrays, so this was accepted as a message.
        (json, r#"["hello"]"#, "malformed"),
        (None, r#"{"message":"hi"}"#, "Content-Type"),
        (Some("text/plain"), r#"{"message":"hi"}"#, "Content-Type"),
    ];
    for (ct, body, hint) in cases {
        let (s, rct, b) = call(post("/api/connections/broadcast", ct, body)).await;
        let v = assert_problem(s, rct, &b, StatusCode::BAD_REQUEST);
        assert!(
            v["detail"].as_str().unwrap().contains(hint),
            "{body:?}: {v}"
        );
    }
}

#[tokio::test]
async fn json_with_charset_and_vendor_types_is_accepted() {
    for ct in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        "Application/JSON",
    ] {
        let (s, _, b) = call(post(
            "/api/connections/broadcast",
            Some(ct),
            r#"{"message":"hi"}"#,
        ))
        .await;
        assert_eq!(s, StatusCode::OK, "{ct}: {}", String::from_utf8_lossy(&b));
    }
}

#[tokio::test]
async fn unknown_routes_are_404_problems_and_wrong_methods_405() {
    let (s, ct, b) = call(Request::get("/api/nope").body(Body::empty()).unwrap()).await;
    assert_problem(s, ct, &b, StatusCode::NOT_FOUND);
    let (s, _, _) = call(
        Request::delete("/api/connections/broadcast")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn huge_body_is_refused_with_413() {
    let body = format!(r#"{{"message":"{}"}}"#, "x".repeat(3 * 1024 * 1024));
    let (s, ct, b) = call(post(
        "/api/connections/broadcast",
        Some("application/json"),
        &body,
    ))
    .await;
    assert_problem(s, ct, &b, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn openapi_document_describes_the_api() {
    let (s, ct, b) = call(Request::get("/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ct.unwrap().starts_with("application/json"));
    let doc: Value = serde_json::from_slice(&b).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = &doc["paths"];
    assert!(paths["/api/connections"]["get"].is_object());
    let post = &paths["/api/connections/broadcast"]["post"];
    assert!(post["requestBody"].is_object());
    assert!(post["responses"]["400"]["content"]["application/problem+json"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    // What wshub POSTs to the backend, with every schema as written (nothing lost in the
    // document's own types).
    assert_eq!(doc["webhooks"], wshub::webhooks::schema::webhooks());
    for (name, schema) in wshub::webhooks::schema::schemas() {
        assert_eq!(doc["components"]["schemas"][&name], schema, "{name}");
    }
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let (s, _, b) = call(Request::get("/swagger/").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let html = String::from_utf8_lossy(&b);
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("cdn"), "no CDN: the page must work offline");
    let (s, _, b) = call(
        Request::get("/swagger/swagger-ui-bundle.js")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.len() > 100_000, "the bundle is vendored");
    let (s, _, b) = call(
        Request::get("/swagger/swagger-initializer.js")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&b).contains("/openapi.json"));
}

#[tokio::test]
async fn rest_over_a_real_socket_counts_recipients() {
    let srv = TestServer::start().await;
    let (_a, _) = connect(&srv.ws_url()).await;
    let res = post_json(
        srv.addr,
        "/api/connections/broadcast",
        r#"{"message":"hello"}"#,
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["recipients"], 1);
    let res = http(srv.addr, "GET", "/api/connections", &[], b"").await;
    assert_eq!(res.json()["count"], 1);
    srv.stop().await;
}

#[tokio::test]
async fn the_demo_page_and_the_js_client_are_served_from_the_binary() {
    for (path, ctype, needle) in [
        (
            "/",
            "text/html; charset=utf-8",
            "import { WshubClient } from \"/client.js\"",
        ),
        (
            "/client.js",
            "text/javascript; charset=utf-8",
            "export class WshubClient",
        ),
        (
            "/client.d.ts",
            "application/typescript; charset=utf-8",
            "export interface ClientOptions",
        ),
    ] {
        let (s, ct, b) = call(Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert_eq!(ct.as_deref(), Some(ctype), "{path}");
        assert!(String::from_utf8_lossy(&b).contains(needle), "{path}");
    }
    // Nothing else at the root is served: problem+json 404 as before.
    let (s, ct, b) = call(Request::get("/index.php").body(Body::empty()).unwrap()).await;
    assert_problem(s, ct, &b, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn answers_end_with_a_newline_and_favicon_is_not_a_404() {
    let srv = TestServer::start().await;
    let health = http(srv.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(health.body, b"ok\n");
    let list = http(srv.addr, "GET", "/api/connections", &[], b"").await;
    assert_eq!(list.body.last(), Some(&b'\n'));
    let missing = http(srv.addr, "GET", "/nope", &[], b"").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body.last(), Some(&b'\n'));
    assert_eq!(
        http(srv.addr, "GET", "/favicon.ico", &[], b"").await.status,
        204
    );
    srv.stop().await;
}

#[tokio::test]
async fn the_connection_listing_is_paginated_with_a_cursor() {
    // Default timers: these clients are not read while the pages are fetched.
    let srv = TestServer::with_config(HubConfig {
        announce: false,
        ..HubConfig::default()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect_v1(&srv.ws_url()).await);
    }
    let mut seen = Vec::new();
    let mut path = "/api/connections?limit=2".to_owned();
    loop {
        let page = http(srv.addr, "GET", &path, &[], b"").await.json();
        assert_eq!(page["count"], 5, "{page}");
        let ids: Vec<String> = page["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.len() <= 2);
        seen.extend(ids);
        match page["next"].as_str() {
            Some(next) => path = format!("/api/connections?limit=2&cursor={next}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = clients.iter().map(|(_, id)| id.clone()).collect();
    let mut got = seen.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "every connection once, over three pages");
    for bad in ["limit=0", "limit=10001", "limit=x", "cursor=nope"] {
        let r = http(
            srv.addr,
            "GET",
            &format!("/api/connections?{bad}"),
            &[],
            b"",
        )
        .await;
        assert_eq!(r.status, 400, "{bad}");
    }
    srv.stop().await;
}
