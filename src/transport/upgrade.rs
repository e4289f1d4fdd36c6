//! The HTTP side of a WebSocket: the RFC 6455 opening handshake, then the hand-over of the raw
//! socket to a connection task.
//!
//! The handshake is done here rather than by a WebSocket library so that the connection task
//! owns the plain TCP stream (split into halves, no lock between reader and writer, no
//! library-owned buffers) and can write pre-encoded frames straight from the shared buffers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::Instrument as _;

use crate::auth::Identity;
use crate::frame;
use crate::frame::deflate::{self, Agreed};
use crate::history::Position;
use crate::hub::{Hub, Peer};
use crate::manager::{ConnInfo, Grants, Protocol};
use crate::outbox::Outbox;
use crate::problem::Problem;
use crate::protocol;
use crate::protocol::pusher::{self, Code};

use super::admission::{
    admit, ask_connect_hook, asks_connect_hook, over_connection_limit, unavailable,
};
use super::connection::{self, EchoSlot, Params, Role};
use super::writer;

/// What a valid upgrade request left us with.
struct Handshake {
    on_upgrade: OnUpgrade,
    accept: String,
    remote: Option<SocketAddr>,
    /// Whether the client offered `wshub.v1` in `Sec-WebSocket-Protocol`.
    v1: bool,
    /// The `permessage-deflate` offer accepted, if any (and compression is on).
    deflate: Option<Agreed>,
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Why an upgrade request was refused; each has its own status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandshakeError {
    /// Not an upgrade request at all (plain HTTP on a WebSocket endpoint): 400.
    NotUpgrade,
    /// `Sec-WebSocket-Version` missing or not 13: 426 with `Sec-WebSocket-Version: 13`.
    Version,
    /// `Sec-WebSocket-Key` missing or not 16 bytes of base64: 400.
    Key,
    /// The HTTP connection cannot be upgraded (HTTP/2, or a server without upgrades): 426.
    NoUpgradeSupport,
    /// An HTTP/1.1 request without `Host` (RFC 9112 section 3.2): 400.
    Host,
    /// The upgrade request carries a body (RFC 6455's handshake is a GET without one): 400.
    Body,
}

impl IntoResponse for HandshakeError {
    fn into_response(self) -> Response {
        match self {
            HandshakeError::NotUpgrade => Problem::bad_request(
                "this endpoint expects a WebSocket upgrade request (GET with `Connection: Upgrade` and `Upgrade: websocket`)",
            )
            .into_response(),
            HandshakeError::Version => {
                let mut res = Problem::new(
                    StatusCode::UPGRADE_REQUIRED,
                    "unsupported WebSocket version: `Sec-WebSocket-Version` must be 13",
                )
                .into_response();
                res.headers_mut()
                    .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                res
            }
            HandshakeError::Key => {
                Problem::bad_request("`Sec-WebSocket-Key` must be 16 bytes in base64").into_response()
            }
            HandshakeError::Host => {
                Problem::bad_request("an HTTP/1.1 request needs a `Host` header").into_response()
            }
            HandshakeError::Body => Problem::bad_request(
                "a WebSocket upgrade request has no body (no `Content-Length` above 0, no `Transfer-Encoding`)",
            )
            .into_response(),
            HandshakeError::NoUpgradeSupport => Problem::new(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded (WebSocket needs HTTP/1.1)",
            )
            .into_response(),
        }
    }
}

/// Checks an upgrade request (RFC 6455 section 4.2.1); with `compression` on, accepts a
/// `permessage-deflate` offer.
fn handshake(req: &mut Request, compression: bool) -> Result<Handshake, HandshakeError> {
    let headers = req.headers();
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(HandshakeError::NotUpgrade);
    }
    if req.version() == axum::http::Version::HTTP_11
        && !headers.contains_key(header::HOST)
        && req.uri().authority().is_none()
    {
        return Err(HandshakeError::Host);
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(HandshakeError::Body);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(HandshakeError::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().trim_ascii())
        .filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|raw| raw.len() == 16)
        })
        .ok_or(HandshakeError::Key)?;
    let accept = frame::accept_key(key);
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let on_upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or(HandshakeError::NoUpgradeSupport)?;
    let v1 = has_token(
        headers_of(req),
        header::SEC_WEBSOCKET_PROTOCOL,
        protocol::V1,
    );
    let deflate = if compression {
        deflate::negotiate(
            headers_of(req)
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )
    } else {
        None
    };
    Ok(Handshake {
        on_upgrade,
        accept,
        remote,
        v1,
        deflate,
    })
}

fn headers_of(req: &Request) -> &HeaderMap {
    req.headers()
}

fn switching_protocols(accept: &str, v1: bool, deflate: Option<Agreed>) -> Response {
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if v1 {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol::V1),
        );
    }
    if let Some(v) = deflate.and_then(|d| HeaderValue::from_str(&d.response()).ok()) {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
    res
}

/// Refuses a `/ws` client after the upgrade, with a close code it can read (a browser sees
/// nothing of a refused handshake but "failed").
fn refuse_upgraded(hub: &Hub, hs: Handshake, code: u16, reason: &str) -> Response {
    let outbox = Arc::new(hub.new_outbox());
    outbox.close(crate::close::CloseReason::Disconnected {
        code,
        reason: Arc::from(reason),
    });
    let params = params(hub.config().max_message_size, None);
    let span = tracing::debug_span!("refused", remote = ?hs.remote);
    hub.tasks().spawn(
        run_upgraded(hs.on_upgrade, outbox, Role::Refused(hub.clone()), params).instrument(span),
    );
    switching_protocols(&hs.accept, hs.v1, None)
}

/// `?recover=<epoch>:<offset>`: the last position a `wshub.v1` client saw in the all-clients
/// stream; what it missed is replayed right after the welcome.
pub(super) fn recover_param(req: &Request) -> Result<Option<Position>, Problem> {
    #[derive(serde::Deserialize)]
    struct RecoverQuery {
        recover: Option<String>,
    }
    let Ok(q) = axum::extract::Query::<RecoverQuery>::try_from_uri(req.uri()) else {
        return Ok(None);
    };
    match q.0.recover.as_deref() {
        None => Ok(None),
        Some(text) => Position::parse(text).map(Some).ok_or_else(|| {
            Problem::bad_request(
                "`recover` is `<epoch>:<offset>`: the epoch and last offset of the all-clients stream this client saw",
            )
        }),
    }
}

fn params(max_message: usize, deflate: Option<Agreed>) -> Params {
    Params {
        max_message,
        deflate,
    }
}

/// `GET /ws`: a client of the hub (plain mode, or `wshub.v1` when asked).
pub async fn ws_handler(State(hub): State<Hub>, mut req: Request) -> Response {
    let hs = match handshake(&mut req, hub.config().compression.is_some()) {
        Ok(hs) => hs,
        Err(e) => return e.into_response(),
    };
    if hub.is_shutting_down() {
        return unavailable();
    }
    let hooked = asks_connect_hook(&hub, &req);
    let identity = match if hooked {
        hub.auth()
            .check_origin(req.headers())
            .map(|()| Identity::default())
    } else {
        admit(&hub, &req)
    } {
        Ok(identity) => identity,
        Err(problem) => return problem.into_response(),
    };
    let recover = match recover_param(&req) {
        Ok(r) => r,
        Err(problem) => return problem.into_response(),
    };
    if let Some(res) = over_connection_limit(&hub) {
        return res;
    }
    let (mut info, grants) = if hooked {
        match ask_connect_hook(
            &hub,
            &req,
            hs.remote,
            if hs.v1 { protocol::V1 } else { "plain" },
        )
        .await
        {
            Ok(admitted) => admitted,
            Err((code, reason)) => return refuse_upgraded(&hub, hs, code, &reason),
        }
    } else {
        let mut info = ConnInfo::now(hs.remote);
        info.user = identity.user;
        info.user_info = identity.info;
        let grants = Grants {
            allowed_groups: identity.allowed_groups,
            expires_at: identity.expires_at,
        };
        (info, grants)
    };
    // Registered before the 101 goes out: a broadcast issued once the client sees the upgrade
    // is queued for it, and flows as soon as the socket is ours.
    if hs.v1 {
        info.protocol = Protocol::V1;
    }
    info.deflate = hs.deflate.is_some_and(|d| d.takes_shared());
    let prefetched = match info.protocol {
        Protocol::V1 => {
            hub.prefetch(crate::wire::StreamName::All, recover.as_ref())
                .await
        }
        Protocol::Plain | Protocol::Pusher => None,
    };
    let entry = hub.register(info, grants, recover.as_ref(), prefetched);
    let id = entry.id;
    let outbox = entry.sink.clone();
    let params = params(hub.config().max_message_size, hs.deflate);
    // A debug-level span: at the default `info` level an enabled span per connection costs
    // ~480 bytes of subscriber state (measured at 15k connections); nothing inside a
    // connection logs above debug except through the hub, which names the connection itself.
    let span = tracing::debug_span!("conn", id = %id, remote = ?hs.remote);
    let role = Role::Peer(Peer::new(hub.clone(), entry));
    hub.tasks()
        .spawn(run_upgraded(hs.on_upgrade, outbox, role, params).instrument(span));
    switching_protocols(&hs.accept, hs.v1, hs.deflate)
}

/// Why a Pusher client is refused once upgraded: the protocol's own error and close code.
pub(super) fn pusher_refusal(
    hub: &Hub,
    key: &str,
    req: &Request,
) -> Result<Arc<crate::apps::App>, (Code, String)> {
    #[derive(serde::Deserialize)]
    struct Version {
        protocol: Option<String>,
    }
    let app = hub
        .apps()
        .by_key(key)
        .cloned()
        .ok_or_else(|| (Code::UnknownApp, format!("no app has the key `{key}`")))?;
    let version = axum::extract::Query::<Version>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| q.0.protocol);
    match version.as_deref().map(str::parse::<u32>) {
        None => {
            return Err((
                Code::NoVersion,
                "no protocol version: connect with ?protocol=7".into(),
            ))
        }
        Some(Err(_)) => {
            return Err((
                Code::InvalidVersion,
                "the protocol version is a number, such as 7".into(),
            ))
        }
        Some(Ok(v)) if !pusher::VERSIONS.contains(&v) => {
            return Err((
                Code::UnsupportedVersion,
                format!("protocol version {v} is not supported (5 to 7 are)"),
            ))
        }
        Some(Ok(_)) => {}
    }
    match hub.pusher_admit(&app) {
        Ok(()) => Ok(app),
        Err(Code::AppDisabled) => Err((Code::AppDisabled, format!("app {} is disabled", app.id))),
        Err(code) => Err((code, format!("app {} is over its connection quota", app.id))),
    }
}

/// `GET /app/{key}`: a Pusher Channels client (protocol 7; pusher-js, Laravel Echo, the
/// mobile SDKs). What the protocol refuses (an unknown key, a missing version, an app over
/// its quota) is refused after the upgrade with `pusher:error` and the close code it names,
/// as Pusher does: that is what its clients understand.
pub async fn pusher_handler(
    State(hub): State<Hub>,
    axum::extract::Path(key): axum::extract::Path<String>,
    mut req: Request,
) -> Response {
    let hs = match handshake(&mut req, hub.config().compression.is_some()) {
        Ok(hs) => hs,
        Err(e) => return e.into_response(),
    };
    if let Some(res) = super::admission::pusher_gate(&hub, &req) {
        return res;
    }
    let refusal = pusher_refusal(&hub, &key, &req);
    // A refused client gets its error and close code uncompressed: nothing to negotiate.
    let deflate = hs.deflate.filter(|_| refusal.is_ok());
    let params = params(hub.config().max_message_size, deflate);
    let span = tracing::debug_span!("pusher", remote = ?hs.remote);
    let (outbox, role) = match refusal {
        Ok(app) => {
            let mut info = ConnInfo::now(hs.remote);
            info.protocol = Protocol::Pusher;
            info.deflate = deflate.is_some_and(|d| d.takes_shared());
            let entry = hub.register(info, Grants::default(), None, None);
            let outbox = entry.sink.clone();
            (outbox, Role::Peer(Peer::pusher(hub.clone(), entry, app)))
        }
        Err((code, why)) => {
            let outbox = Arc::new(hub.new_outbox());
            let _ = outbox.push(pusher::error(code, &why));
            outbox.close(crate::close::CloseReason::Disconnected {
                code: code.get(),
                reason: Arc::from(why.as_str()),
            });
            (outbox, Role::Refused(hub.clone()))
        }
    };
    hub.tasks()
        .spawn(run_upgraded(hs.on_upgrade, outbox, role, params).instrument(span));
    switching_protocols(&hs.accept, false, deflate)
}

/// `GET /ws/echo`: raw RFC 6455 echo, for conformance testing and diagnostics.
pub async fn echo_handler(State(hub): State<Hub>, mut req: Request) -> Response {
    if !hub.config().echo_endpoint {
        return Problem::not_found("/ws/echo is turned off on this server (--echo-endpoint false)")
            .into_response();
    }
    let hs = match handshake(&mut req, hub.config().compression.is_some()) {
        Ok(hs) => hs,
        Err(e) => return e.into_response(),
    };
    if hub.is_shutting_down() {
        return unavailable();
    }
    if let Err(problem) = admit(&hub, &req) {
        return problem.into_response();
    }
    if let Some(res) = over_connection_limit(&hub) {
        return res;
    }
    let slot = EchoSlot::take(&hub);
    let outbox = Arc::new(hub.new_outbox());
    let params = params(hub.config().echo_max_message_size, hs.deflate);
    let span = tracing::debug_span!("echo", remote = ?hs.remote);
    hub.tasks()
        .spawn(run_upgraded(hs.on_upgrade, outbox, Role::Echo(slot), params).instrument(span));
    switching_protocols(&hs.accept, false, hs.deflate)
}

async fn run_upgraded(on_upgrade: OnUpgrade, outbox: Arc<Outbox>, role: Role, params: Params) {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            role.closed(("upgrade_failed", 1006));
            return;
        }
    };
    tracing::debug!("connected");
    let hub = role.hub().clone();
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let tcp = parts.io.into_inner();
            // Without it the echo and the broadcast copy, two small writes, wait ~40 ms on the
            // client's delayed ACK.
            let _ = tcp.set_nodelay(true);
            let (r, w) = tcp.into_split();
            let w = Arc::new(w);
            outbox.attach(w.clone());
            let conn = connection::run(r, writer::Direct(w), parts.read_buf, outbox, role, params);
            spawn_connection(&hub, conn);
        }
        Err(upgraded) => {
            // Another transport (TLS, or an embedding app's own listener): same logic, generic I/O.
            let (r, w) = tokio::io::split(TokioIo::new(upgraded));
            let conn = connection::run(r, writer::Generic(w), Bytes::new(), outbox, role, params);
            spawn_connection(&hub, conn);
        }
    }
}

/// Runs an upgraded connection as a task of its own, and ends the upgrade's: the connection's
/// task holds only the connection's state (an async fn holds its arguments and the states of
/// all its waits for its whole life), and a span only when it is recorded (a disabled span
/// still takes 40 bytes in every task).
fn spawn_connection<F>(hub: &Hub, conn: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let span = tracing::Span::current();
    if span.is_disabled() {
        hub.tasks().spawn(conn);
    } else {
        hub.tasks().spawn(conn.instrument(span));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every idle connection's task holds: kept small on purpose (issue 19's budget of
    /// 1 KiB per idle connection; see docs/BENCHMARKS.md). A field or a wait state added to
    /// the task shows here first.
    #[test]
    fn a_connection_task_stays_small() {
        use std::mem::size_of;
        type Upgraded = TokioIo<hyper::upgrade::Upgraded>;
        let tcp = size_of::<connection::Driver<tokio::net::tcp::OwnedReadHalf, writer::Direct>>();
        let other = size_of::<
            connection::Driver<
                tokio::io::ReadHalf<Upgraded>,
                writer::Generic<tokio::io::WriteHalf<Upgraded>>,
            >,
        >();
        eprintln!("connection task: {tcp} B on TCP, {other} B on other transports");
        // Tokio's task cell adds 112 B and is 128-byte aligned: up to 144 B of state, a task
        // takes 256 B; one byte more, 384.
        assert!(tcp <= 144, "the connection task grew to {tcp} B");
        assert!(other <= 144, "the connection task grew to {other} B");
        // The outbox and the registry entry, each in an `Arc` (16 B more), fill jemalloc's
        // 160 and 192 B size classes.
        let outbox = std::mem::size_of::<Outbox>();
        let entry = std::mem::size_of::<crate::manager::Entry<Outbox>>();
        eprintln!("outbox: {outbox} B, registry entry: {entry} B");
        assert!(outbox <= 144, "the outbox grew to {outbox} B");
        assert!(entry <= 176, "the registry entry grew to {entry} B");
    }
}
