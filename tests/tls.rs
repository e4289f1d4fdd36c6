//! TLS: `https://` and `wss://` on the same port, with a certificate made in the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

struct Tls {
    server: TestServer,
    connector: tokio_rustls::TlsConnector,
}

async fn start() -> Tls {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "wshub-tls-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let options = wshub::server::ServerOptions {
        tls: Some(wshub::tls::server_config(&cert, &key).unwrap()),
        ..Default::default()
    };
    let config = wshub::HubConfig {
        shutdown_timeout: std::time::Duration::from_secs(1),
        ..wshub::HubConfig::default()
    };
    let server = TestServer::with(config, options).await;
    let _ = std::fs::remove_dir_all(dir);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Tls {
        server,
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

async fn tls_stream(t: &Tls) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(t.server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, t.connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn wss_and_https_on_the_same_port() {
    let t = start().await;
    // wss://
    let stream = tls_stream(&t).await;
    let (mut ws, res) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    let v = next_json(&mut ws).await;
    assert_eq!(v["type"], "system");
    send_text(&mut ws, "over tls").await;
    let echo = next_json(&mut ws).await;
    assert_eq!(
        (echo["type"].as_str(), echo["message"].as_str()),
        (Some("echo"), Some("over tls"))
    );
    // A broadcast reaches the TLS client too.
    t.server.hub.broadcast_text("pushed");
    let v = next_json_where(&mut ws, |v| v["type"] == "server-broadcast").await;
    assert_eq!(v["message"], "pushed");

    // https://
    let mut s = tls_stream(&t).await;
    s.write_all(b"GET /api/connections HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"count\":1"), "{text}");

    // Shutdown reaches TLS WebSockets: Close 1001.
    let stop = tokio::spawn(t.server.stop());
    assert_eq!(next_close(&mut ws).await, Some(1001));
    stop.await.unwrap();
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_refused_and_harmless() {
    let t = start().await;
    let mut s = tokio::net::TcpStream::connect(t.server.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    // Still serving TLS clients.
    let stream = tls_stream(&t).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "system");
    t.server.stop().await;
}
