//! Who may open a connection, whatever its transport: the Origin allow-list, the connection
//! token (a JWT in `?access_token=` or `Authorization: Bearer`), the `connect` hook, the
//! revocations, the connection limit and shutdown. The WebSocket upgrade and the HTTP streams
//! (`/events`) admit their clients here, the same way.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::Identity;
use crate::hub::Hub;
use crate::manager::{ConnInfo, Grants};
use crate::problem::Problem;

/// Whether the `connect` hook decides about this request: one is configured, and the request
/// carries no token that the hub could check itself (a valid JWT needs no hook).
pub(super) fn asks_connect_hook(hub: &Hub, req: &Request) -> bool {
    if !hub.hooks().asks_connect() {
        return false;
    }
    if !hub.auth().requires_token() {
        return true;
    }
    query_token(req).is_none() && crate::auth::bearer(req.headers()).is_none()
}

/// The `?access_token=` of an upgrade request.
pub(super) fn query_token(req: &Request) -> Option<String> {
    axum::extract::Query::<TokenQuery>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| q.0.access_token)
}

/// Asks the `connect` hook: who the connection is, or the close code that refuses it. (What
/// it needs of the request is taken first: the request itself is not held across the wait.)
pub(super) fn ask_connect_hook(
    hub: &Hub,
    req: &Request,
    remote: Option<SocketAddr>,
    protocol: &'static str,
) -> impl std::future::Future<Output = Result<(ConnInfo, Grants), (u16, String)>> + Send + 'static {
    let query = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let headers = req.headers().clone();
    let path = req.uri().path().to_owned();
    let hub = hub.clone();
    async move { connect_verdict(&hub, &headers, &path, query, remote, protocol).await }
}

async fn connect_verdict(
    hub: &Hub,
    headers: &HeaderMap,
    path: &str,
    query: Vec<(String, String)>,
    remote: Option<SocketAddr>,
    protocol: &'static str,
) -> Result<(ConnInfo, Grants), (u16, String)> {
    let verdict = hub
        .hooks()
        .connect(crate::hooks::ConnectRequest {
            remote,
            path,
            query,
            headers,
            protocol,
        })
        .await;
    match verdict {
        crate::hooks::Verdict::Allow(who) => {
            let mut info = ConnInfo::now(remote);
            info.user = who.user;
            info.user_info = who.info;
            let grants = Grants {
                allowed_groups: who.groups,
                expires_at: None,
            };
            Ok((info, grants))
        }
        crate::hooks::Verdict::Deny { code, reason } => Err((code, reason)),
        crate::hooks::Verdict::Failed { code, .. } => {
            Err((code, "authorization unavailable: try again later".into()))
        }
    }
}

/// The Origin allow-list, then the connection token.
pub(super) fn admit(hub: &Hub, req: &Request) -> Result<Identity, Problem> {
    let auth = hub.auth();
    auth.check_origin(req.headers())?;
    if !auth.requires_token() {
        return Ok(Identity::default());
    }
    let identity = auth.authenticate(req.headers(), query_token(req).as_deref())?;
    if hub.is_revoked(identity.user.as_deref(), identity.issued_at) {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "this token was revoked (the user's tokens issued before the revocation are refused): get a new one",
        ));
    }
    Ok(identity)
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

pub(super) fn unavailable() -> Response {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is shutting down",
    )
    .into_response()
}

/// `--max-connections` counts `/ws` and `/ws/echo` together: the 503 to answer when it is
/// reached.
pub(super) fn over_connection_limit(hub: &Hub) -> Option<Response> {
    let max = hub.config().max_connections?;
    if hub.connection_count() + hub.echo_count() < max {
        return None;
    }
    let mut res = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("connection limit reached ({max}); try again later"),
    )
    .into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    Some(res)
}
