//! The files the server serves from the binary itself: the demo page at `/` and the JavaScript
//! client at `/client.js` (with its types at `/client.d.ts`). No CDN, nothing fetched at run
//! time or build time.

use axum::http::header;
use axum::response::IntoResponse;

/// The demo chat page (`web/index.html`).
pub const INDEX_HTML: &str = include_str!("../web/index.html");
/// The JavaScript client (`clients/js/wshub.js`), an ES module.
pub const CLIENT_JS: &str = include_str!("../clients/js/wshub.js");
/// The client's TypeScript declarations.
pub const CLIENT_DTS: &str = include_str!("../clients/js/wshub.d.ts");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// `GET /`: the demo page.
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /client.js`: the JavaScript client.
pub async fn client_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", CLIENT_JS)
}

/// `GET /favicon.ico`: nothing to show (the demo page carries its icon inline); 204 rather
/// than a 404 in every browser's console.
pub async fn favicon() -> impl IntoResponse {
    (
        axum::http::StatusCode::NO_CONTENT,
        [(header::CACHE_CONTROL, "max-age=86400")],
    )
}

/// `GET /client.d.ts`: its types.
pub async fn client_dts() -> impl IntoResponse {
    asset("application/typescript; charset=utf-8", CLIENT_DTS)
}
