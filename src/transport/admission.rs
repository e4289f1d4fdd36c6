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

/// What refuses a Pusher client before its protocol is even looked at, on any transport:
/// shutdown, the Origin allow-list, the connection limit (Pusher's own refusals come after,
/// in its words). `None`: it may go on.
pub(super) fn pusher_gate(hub: &Hub, req: &Request) -> Option<Response> {
    if hub.is_shutting_down() {
        return Some(unavailable());
    }
    if let Err(problem) = hub.auth().check_origin(req.headers()) {
        return Some(problem.into_response());
    }
    over_connection_limit(hub)
}

/// The peer's address, when the server knows it.
pub(super) fn remote_of(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
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

/// Who an HTTP session is, once admitted.
pub(super) struct Admitted {
    pub info: ConnInfo,
    pub grants: Grants,
    /// Whether a token named the user (then every later request of the session must carry a
    /// token of the same user).
    pub by_token: bool,
}

/// Admits a request that opens an HTTP session (`/events`, `/v1/sse`, `/v1/poll`): shutdown,
/// the Origin allow-list and the token (or the `connect` hook, asked as `protocol`), the
/// connection limit. A refusal is the problem+json to answer.
pub(super) fn admit_http(
    hub: &Hub,
    req: &Request,
    protocol: &'static str,
) -> impl std::future::Future<Output = Result<Admitted, Response>> + Send + 'static {
    // What is needed of the request is taken now: the request is not held across the wait.
    let decided = admit_now(hub, req, protocol);
    async move {
        match decided {
            Decided::Done(r) => r,
            Decided::Hook(ask) => {
                let (info, grants) = ask.await.map_err(|(code, reason)| {
                    let status = match code {
                        4401 => StatusCode::UNAUTHORIZED,
                        1011 | 1013 => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::FORBIDDEN,
                    };
                    Problem::new(status, reason).into_response()
                })?;
                Ok(Admitted {
                    info,
                    grants,
                    by_token: false,
                })
            }
        }
    }
}

type HookVerdict = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(ConnInfo, Grants), (u16, String)>> + Send>,
>;

enum Decided {
    Done(Result<Admitted, Response>),
    Hook(HookVerdict),
}

fn admit_now(hub: &Hub, req: &Request, protocol: &'static str) -> Decided {
    if hub.is_shutting_down() {
        return Decided::Done(Err(unavailable()));
    }
    let hooked = asks_connect_hook(hub, req);
    let identity = match if hooked {
        hub.auth()
            .check_origin(req.headers())
            .map(|()| Identity::default())
    } else {
        admit(hub, req)
    } {
        Ok(i) => i,
        Err(p) => return Decided::Done(Err(p.into_response())),
    };
    if let Some(res) = over_connection_limit(hub) {
        return Decided::Done(Err(res));
    }
    let remote = remote_of(req);
    if hooked {
        return Decided::Hook(Box::pin(ask_connect_hook(hub, req, remote, protocol)));
    }
    let by_token = identity.user.is_some();
    let mut info = ConnInfo::now(remote);
    info.user = identity.user;
    info.user_info = identity.info;
    Decided::Done(Ok(Admitted {
        info,
        grants: Grants {
            allowed_groups: identity.allowed_groups,
            expires_at: identity.expires_at,
        },
        by_token,
    }))
}

/// Cross-origin requests to the HTTP transports (a page on another origin than the server's:
/// its `EventSource`, its `fetch`es, pusher-js's XHRs): allowed for the origins that may open
/// WebSockets (`--allowed-origins`; every origin without a list), with the headers they send
/// (`Authorization`, `Content-Type`, preflighted) and `Retry-After` readable. No credentials:
/// a session is named by its token, not by cookies.
pub fn cors(hub: &Hub) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let hub = hub.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| hub.auth().origin_allowed(o))
        }))
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600))
}
