//! The accept loop: HTTP/1.1 with upgrades on a listener the caller bound, and graceful
//! shutdown that reaches upgraded WebSockets too.
//!
//! Taking a bound listener rather than an address is what lets tests run on port 0.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::event_loops::EventLoops;
use crate::hub::Hub;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How long a client may take to send its request headers (slowloris guard), and to
    /// complete a TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a whole request (headers, body and the answer) may take; slower gets 408 and
    /// the connection is closed, so a body dribbled a byte at a time cannot hold it open.
    pub request_timeout: Duration,
    /// TLS: serve `https://` and `wss://` (see [`crate::tls::server_config`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Event loops to hand accepted connections to ([`EventLoops::next`] chooses; the
    /// `wshub` binary's model, see [`crate::event_loops`]), loop 0 being the runtime `run` is
    /// called on; `None` serves them on the caller's runtime.
    pub loops: Option<Arc<EventLoops>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            tls: None,
            loops: None,
        }
    }
}

/// The listen backlog. `TcpListener::bind` uses 128, which overflows under a connect storm:
/// each dropped SYN costs the client a one-second retransmit.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (a restarted server can bind
/// while old connections sit in TIME_WAIT).
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` until `shutdown` completes, then shuts down gracefully: stops
/// accepting, sends every WebSocket Close 1001 after its queued frames, and waits for them
/// (and for in-flight HTTP requests) up to the hub's shutdown timeout.
///
/// # Errors
/// Only if the listener's local address cannot be read; accept errors are logged and retried.
pub async fn run(
    listener: TcpListener,
    hub: Hub,
    app: Router,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(%local, "listening");
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let stop = CancellationToken::new();
    let http_tasks = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.handshake_timeout);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener stays usable.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let conn = Accepted {
            app: app.clone(),
            http: http.clone(),
            stop: stop.clone(),
            tls: tls.clone(),
            request_timeout: options.request_timeout,
            handshake_timeout: options.handshake_timeout,
            remote,
        };
        match options.loops.as_ref().map(|l| l.next()) {
            None | Some((0, _)) => {
                http_tasks.spawn(conn.serve(tcp));
            }
            Some((_, rt)) => {
                // The socket leaves this loop's reactor and joins the other's, where all of
                // its reads, timers and writes then happen.
                match tcp.into_std() {
                    Ok(std) => {
                        http_tasks.spawn_on(
                            async move {
                                match tokio::net::TcpStream::from_std(std) {
                                    Ok(tcp) => conn.serve(tcp).await,
                                    Err(e) => tracing::warn!(%remote, error = %e, "cannot register an accepted socket"),
                                }
                            },
                            rt,
                        );
                    }
                    Err(e) => {
                        tracing::warn!(%remote, error = %e, "cannot hand an accepted socket over")
                    }
                }
            }
        }
    }
    drop(listener);
    let deadline = hub.config().shutdown_timeout;
    tracing::info!(
        connections = hub.connection_count(),
        ?deadline,
        "shutting down"
    );
    let until = tokio::time::Instant::now() + deadline;
    hub.shutdown();
    stop.cancel();
    http_tasks.close();
    let (ws_done, http_done) = tokio::join!(
        hub.wait_closed(deadline),
        tokio::time::timeout(deadline, http_tasks.wait())
    );
    if !ws_done || http_done.is_err() {
        tracing::warn!("shutdown deadline passed with connections still open; dropping them");
    }
    // What the webhooks queued (the closes included) goes out within the same deadline (at
    // least half a second for the last events).
    let until = until.max(tokio::time::Instant::now() + Duration::from_millis(500));
    hub.flush_webhooks(until).await;
    tracing::info!("stopped");
    Ok(())
}

/// An accepted connection and what serving it takes.
struct Accepted {
    app: Router,
    http: hyper::server::conn::http1::Builder,
    stop: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
    request_timeout: Duration,
    handshake_timeout: Duration,
    remote: SocketAddr,
}

impl Accepted {
    /// Serves HTTP/1.1 (and the upgrades) on `tcp`, after the TLS handshake if there is one.
    async fn serve(self, tcp: tokio::net::TcpStream) {
        let Self {
            app,
            http,
            stop,
            tls,
            request_timeout,
            handshake_timeout,
            remote,
        } = self;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            let app = app.clone();
            async move {
                let answer = app.oneshot(req.map(axum::body::Body::new));
                Ok::<_, Infallible>(match tokio::time::timeout(request_timeout, answer).await {
                    Ok(res) => res.unwrap_or_else(|e| match e {}),
                    Err(_) => request_timed_out(request_timeout),
                })
            }
        });
        match tls {
            None => serve_connection(http, TokioIo::new(tcp), service, stop, remote).await,
            Some(acceptor) => {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        serve_connection(http, TokioIo::new(stream), service, stop, remote).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            }
        }
    }
}

/// 408 for a request that took longer than the request timeout (a dribbled body); the
/// connection is closed after it.
fn request_timed_out(limit: Duration) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut res = crate::problem::Problem::new(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request was not complete within {} (--request-timeout)",
            humantime::format_duration(limit)
        ),
    )
    .into_response();
    res.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    res
}

/// Serves one HTTP/1.1 connection (with upgrades) until it ends or `stop` asks it to finish.
async fn serve_connection<I, S>(
    http: hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    stop: CancellationToken,
    remote: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = axum::body::Body> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stop.cancelled() => {
            // Finish the request in flight, then close; an upgrade already handed its socket
            // to the hub, which closes it with 1001.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "http connection ended with an error");
    }
}

/// Completes on SIGINT or SIGTERM.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    // The handlers are installed now, when this is called (before the server says it listens),
    // not when the future is first polled: a signal that arrives in between must not find the
    // default action (the process killed without closing a single connection properly).
    #[cfg(unix)]
    let signals = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
    );
    async move {
        #[cfg(unix)]
        {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>, what: &'static str| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for {what}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            let (int, term) = signals;
            tokio::select! {
                () = wait(int, "SIGINT") => tracing::info!("SIGINT received"),
                () = wait(term, "SIGTERM") => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            tracing::info!("Ctrl-C received");
        }
    }
}
