//! The one way the hub sends HTTP requests out: webhooks, authorization hooks and (later)
//! upstreams all use a client made here, so the rule below holds for every outbound request.
//!
//! **A request goes only where it was configured.** The client follows no redirect: a `3xx`
//! answer is the answer, and each caller treats it as a failure of its own kind (a hook
//! refuses, fail-closed; a webhook batch is counted `redirected` and not retried, since the
//! same request to the same place gets the same answer). Without this, a receiver answering
//! `307` would make the hub re-send a signed batch, or a hook request with the client's
//! cookies, to whatever host its `Location` names, and a hook answering `302` would admit a
//! client as whoever the redirect target says.
//!
//! Proxies named by the standard environment variables (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `NO_PROXY`) are still used: they are the operator's configuration too.
//!
//! A leaf: it imports nothing of ours.

use std::time::Duration;

/// An HTTP client that follows no redirect and gives up on a request after `timeout`.
///
/// # Errors
/// When the TLS backend cannot be initialised.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
}

/// Where a `3xx` answer would have sent the request on to, for logs: its `Location`, cut to
/// 200 bytes.
pub fn location(res: &reqwest::Response) -> String {
    let location = res
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(no Location)");
    let mut end = location.len().min(200);
    while !location.is_char_boundary(end) {
        end -= 1;
    }
    location[..end].to_owned()
}
