//! The REST companion API, its OpenAPI document and Swagger UI.
//!
//! Handlers turn requests into hub calls and hub answers into JSON; every error is an RFC 9457
//! problem document. The OpenAPI document is generated from the handlers themselves.

pub mod connections;
pub mod groups;
pub mod history;
pub mod pusher;

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::hub::Hub;
use crate::problem::Problem;

/// The OpenAPI document of the REST API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "wshub",
        description = "REST companion API of the wshub WebSocket hub: list connections and push messages to clients."
    ),
    paths(
        connections::list, connections::broadcast, connections::get_one, connections::delete_one,
        connections::send_one, groups::list, groups::get_one, groups::broadcast, groups::add_member,
        groups::remove_member, groups::send_to_user, groups::disconnect_user, groups::presence, history::group, history::all, health, ready, metrics,
        pusher::events, pusher::batch_events, pusher::channels, pusher::channel, pusher::users,
        pusher::terminate
    ),
    components(schemas(
        connections::Connection,
        connections::ConnectionList,
        connections::BroadcastRequest,
        connections::BroadcastResult,
        connections::MessageBody,
        connections::Recipients,
        groups::GroupSummary,
        groups::GroupList,
        groups::GroupDetail,
        groups::Membership,
        groups::Published,
        groups::UserDisconnected,
        groups::GroupPresence,
        groups::PresenceMember,
        history::HistoryPage,
        pusher::EventRequest,
        pusher::BatchRequest,
        Problem
    )),
    tags((name = "connections", description = "Connected WebSocket clients"),
         (name = "groups", description = "Groups (rooms, channels) and their members"),
         (name = "users", description = "Every connection of an authenticated user"),
         (name = "operations", description = "Health, readiness and metrics"),
         (name = "pusher", description = "Pusher's HTTP API (signed with an app's secret; see docs/PUSHER.md)"))
)]
pub struct ApiDoc;

/// The whole OpenAPI document: the REST API, and as `webhooks` what wshub POSTs to the
/// application's backend (its webhook events, the authorization hooks) with their schemas.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let doc = ApiDoc::openapi();
    let Ok(mut v) = serde_json::to_value(&doc) else {
        return doc;
    };
    v["webhooks"] = crate::webhooks::schema::webhooks();
    if let Some(schemas) = v
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        schemas.extend(crate::webhooks::schema::schemas());
    }
    match serde_json::from_value(v) {
        Ok(full) => full,
        Err(e) => {
            tracing::error!(error = %e, "the webhooks' schemas do not fit the OpenAPI document");
            doc
        }
    }
}

/// Every `/api/*` route needs the API key when one is configured.
async fn require_api_key(
    axum::extract::State(hub): axum::extract::State<Hub>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match hub.auth().check_api_key(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(problem) => {
            let mut res = problem.into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            res
        }
    }
}

/// The REST routes, `/openapi.json`, `/swagger` and the health checks.
pub fn routes(hub: Hub) -> Router<Hub> {
    let api = Router::new()
        .route("/api/connections", get(connections::list))
        .route("/api/connections/broadcast", post(connections::broadcast))
        .route(
            "/api/connections/{id}",
            get(connections::get_one).delete(connections::delete_one),
        )
        .route("/api/connections/{id}/send", post(connections::send_one))
        .route("/api/groups", get(groups::list))
        .route("/api/groups/{group}", get(groups::get_one))
        .route("/api/groups/{group}/broadcast", post(groups::broadcast))
        .route("/api/groups/{group}/history", get(history::group))
        .route("/api/groups/{group}/presence", get(groups::presence))
        .route("/api/history", get(history::all))
        .route(
            "/api/groups/{group}/members/{connection_id}",
            put(groups::add_member).delete(groups::remove_member),
        )
        .route("/api/users/{user}/send", post(groups::send_to_user))
        .route(
            "/api/users/{user}/connections",
            axum::routing::delete(groups::disconnect_user),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            require_api_key,
        ))
        .merge(pusher::routes())
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            count_requests,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            hub.config().max_request_body,
        ));
    let docs: Router<Hub> =
        Router::from(SwaggerUi::new("/swagger").url("/openapi.json", openapi()));
    api.merge(docs)
}

/// Counts every routed request by route template, method and status.
async fn count_requests(
    axum::extract::State(hub): axum::extract::State<Hub>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let res = next.run(req).await;
    hub.metrics()
        .http_requests
        .get_or_create(&crate::metrics::HttpLabels {
            route,
            method,
            status: res.status().as_u16(),
        })
        .inc();
    res
}

/// Readiness: 200 while the hub accepts connections, 503 while it shuts down or while its
/// backplane is unreachable.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = String, example = "ready"),
        (status = 503, description = "Shutting down, or the backplane is unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ready(axum::extract::State(hub): axum::extract::State<Hub>) -> Response {
    if hub.is_shutting_down() {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if hub.cluster().is_some_and(|c| !c.is_up()) {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backplane unreachable: this node serves its own connections only (no cross-node delivery) and is reconnecting",
        )
        .into_response()
    } else {
        "ready".into_response()
    }
}

/// Prometheus metrics (OpenMetrics text format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics in the OpenMetrics text format", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(axum::extract::State(hub): axum::extract::State<Hub>) -> Response {
    let mut res = hub.render_metrics().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    res
}

/// Process liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = String, example = "ok")))]
pub async fn health() -> &'static str {
    "ok"
}

/// 404 for anything no route matched.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    Problem::not_found(format!("no route for `{}`", uri.path())).into_response()
}

/// 405 for a known path with the wrong method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("`{method}` is not allowed on `{}`", uri.path()),
    )
    .into_response()
}

/// Ends JSON and plain-text answers with a newline, so `curl` output does not run into the
/// shell prompt. Other bodies (HTML, scripts, streams, upgrades) pass untouched.
pub async fn trailing_newline(res: Response) -> Response {
    let textual = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.starts_with("application/json")
                || t.starts_with("application/problem+json")
                || t.starts_with("text/plain")
        });
    if !textual {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    // Answers of this API are small; anything unexpectedly large is passed on as it was read.
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "answer too large").into_response();
    };
    if bytes.last() == Some(&b'\n') {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    let mut with = Vec::with_capacity(bytes.len() + 1);
    with.extend_from_slice(&bytes);
    with.push(b'\n');
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(with))
}

/// Each refusal of the hub as the REST API answers it.
impl From<crate::hub::HubError> for Problem {
    fn from(e: crate::hub::HubError) -> Self {
        use crate::hub::HubError;
        let status = match &e {
            HubError::NotFound(_) => StatusCode::NOT_FOUND,
            HubError::Forbidden(_) | HubError::Denied(_) => StatusCode::FORBIDDEN,
            HubError::TokenRefused(_) => StatusCode::UNAUTHORIZED,
            HubError::Invalid(_) => StatusCode::BAD_REQUEST,
            HubError::NotMember(_) | HubError::TooManyGroups(_) => StatusCode::CONFLICT,
            HubError::HubFull(_) | HubError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            // Problem adds `Retry-After: 1` to every 429.
            HubError::Busy => StatusCode::TOO_MANY_REQUESTS,
        };
        Problem::new(status, e.to_string())
    }
}

/// Parses a JSON request body, with a precise problem for each way it can be wrong.
pub(crate) fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        });
    if !is_json {
        return Err(Problem::bad_request(
            "the request body must be JSON: send `Content-Type: application/json`",
        ));
    }
    let body = body.map_err(|e| Problem::new(e.status(), e.body_text()))?;
    if body.is_empty() {
        return Err(Problem::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    // serde would also read a struct from a JSON array; the API takes objects only.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(Problem::bad_request(
            "malformed JSON body: expected a JSON object",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        let status = StatusCode::BAD_REQUEST;
        Problem::new(status, format!("malformed JSON body: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The group-name pattern is written in the handlers' OpenAPI annotations (a literal, as
    /// the macro wants) and in the demo page: both must say what `valid_group_name` checks.
    #[test]
    fn every_group_pattern_is_the_protocols() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        let mut seen = 0;
        for (_, item) in doc["paths"].as_object().into_iter().flatten() {
            for (_, op) in item.as_object().into_iter().flatten() {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["name"] == "group" && p["in"] == "path" {
                        assert_eq!(
                            p["schema"]["pattern"].as_str(),
                            Some(crate::protocol::GROUP_NAME_PATTERN),
                            "{p}"
                        );
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen >= 5, "only {seen} group parameters found");
        let page = crate::web::INDEX_HTML;
        let class = crate::protocol::GROUP_NAME_PATTERN
            .trim_start_matches('^')
            .trim_end_matches('$')
            .replace('/', "\\/")
            .replace("-]", "\\-]");
        assert!(
            page.contains(&format!("pattern=\"{class}\"")),
            "the demo page's group pattern is not {class}"
        );
    }
}
