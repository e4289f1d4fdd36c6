//! The Pusher Channels HTTP API at `/apps/{app_id}/…`, as the Pusher server SDKs call it:
//! every request signed with the app's secret (`auth_key`, `auth_timestamp` within 600 s,
//! `auth_version`, `body_md5`, `auth_signature`), answers as Pusher's, errors as a status and
//! a plain-text reason (what the SDKs report).

use std::sync::Arc;

use axum::extract::{OriginalUri, Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::apps::App;
use crate::hub::{Hub, TriggerError};
use crate::id::ConnId;
use crate::protocol::pusher::{Channel, Kind, MAX_EVENT_NAME};
use crate::signing;

/// How far a request's `auth_timestamp` may be from the server's clock.
const MAX_SKEW_SECS: i64 = 600;

/// Whether `ts` is within [`MAX_SKEW_SECS`] of `now`, in checked arithmetic (a difference
/// that does not fit an `i64`, as with a timestamp near `i64::MIN`, is not within it).
fn within_skew(now: i64, ts: i64) -> bool {
    now.checked_sub(ts)
        .is_some_and(|d| d.unsigned_abs() <= MAX_SKEW_SECS.unsigned_abs())
}

/// Channels one trigger may name.
const MAX_CHANNELS: usize = 100;

/// Events one batch may hold.
const MAX_BATCH: usize = 10;

/// The Pusher HTTP API routes.
pub fn routes() -> Router<Hub> {
    Router::new()
        .route("/apps/{app_id}/events", post(events))
        .route("/apps/{app_id}/batch_events", post(batch_events))
        .route("/apps/{app_id}/channels", get(channels))
        .route("/apps/{app_id}/channels/{channel}", get(channel))
        .route("/apps/{app_id}/channels/{channel}/users", get(users))
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(terminate),
        )
        // Pusher's Python SDK (3.x) posts here, without the app in the path: the app is the
        // one whose key signed the request.
        .route(
            "/users/{user_id}/terminate_connections",
            post(terminate_by_key),
        )
}

/// A refusal: the status and a plain-text reason, as Pusher answers.
#[derive(Debug)]
pub struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut res = (self.0, format!("{}\n", self.1)).into_response();
        if self.0 == StatusCode::TOO_MANY_REQUESTS || self.0 == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

fn bad(why: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, why.into())
}

fn unauthorized(why: impl Into<String>) -> Refusal {
    Refusal(StatusCode::UNAUTHORIZED, why.into())
}

/// A request's query parameters, decoded, in their order.
type Params = Vec<(String, String)>;

/// The app whose key signed a request without an app id in its path.
fn app_of_key(hub: &Hub, uri: &axum::http::Uri) -> Result<String, Refusal> {
    let key = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "auth_key")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| unauthorized("Missing auth_key"))?;
    hub.apps()
        .by_key(&key)
        .map(|a| a.id.clone())
        .ok_or_else(|| unauthorized(format!("Unknown auth_key `{key}`")))
}

/// Checks a request's signature; the app and the query's parameters.
fn authenticate(
    hub: &Hub,
    app_id: &str,
    method: &Method,
    uri: &axum::http::Uri,
    body: &[u8],
) -> Result<(Arc<App>, Params), Refusal> {
    let app = hub
        .apps()
        .by_id(app_id)
        .cloned()
        .ok_or_else(|| Refusal(StatusCode::NOT_FOUND, format!("Unknown app `{app_id}`")))?;
    let params: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let key = get("auth_key").ok_or_else(|| unauthorized("Missing auth_key"))?;
    if key != app.key {
        return Err(unauthorized(format!(
            "Unknown auth_key `{key}` for app {}",
            app.id
        )));
    }
    let ts: i64 = get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| unauthorized("Missing or malformed auth_timestamp"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if !within_skew(now, ts) {
        return Err(unauthorized(format!(
            "Timestamp expired: given timestamp ({ts}) is not within {MAX_SKEW_SECS}s of the server's time ({now})"
        )));
    }
    if get("auth_version").is_none() {
        return Err(unauthorized("Missing auth_version"));
    }
    if !body.is_empty() {
        let md5 = signing::body_md5(body);
        if get("body_md5") != Some(md5.as_str()) {
            return Err(unauthorized("body_md5 does not match the body's MD5"));
        }
    }
    let signature = get("auth_signature").ok_or_else(|| unauthorized("Missing auth_signature"))?;
    let message = signing::request_message(method.as_str(), uri.path(), &params);
    if !signing::verify(&app.secret, message.as_bytes(), signature) {
        return Err(unauthorized(format!(
            "Invalid signature: expected HMAC-SHA256 of {message:?} with the app secret, as hex"
        )));
    }
    if !app.enabled {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            format!("app {} is disabled", app.id),
        ));
    }
    Ok((app, params))
}

/// The signature every request carries in its query (see [`crate::signing`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read from the query by `authenticate`; this is its documentation
pub struct Signed {
    /// The app key.
    auth_key: String,
    /// Unix seconds, within 600 s of the server's clock.
    auth_timestamp: i64,
    /// `1.0`.
    auth_version: String,
    /// Hex HMAC-SHA256 of `METHOD\npath\nsorted query` (without `auth_signature`) with the app
    /// secret.
    auth_signature: String,
}

/// A request body's digest, part of the signed query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read from the query by `authenticate`; this is its documentation
pub struct BodyMd5 {
    /// Hex MD5 of the body.
    body_md5: String,
}

/// What any signed request may be refused with.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // the `Refusal`s `authenticate` answers; this is their documentation
pub enum AuthRefusals {
    /// Missing or bad signature, key, timestamp or body_md5.
    #[response(status = 401, content_type = "text/plain")]
    Unauthorized(String),
    /// The app is disabled.
    #[response(status = 403, content_type = "text/plain")]
    Disabled(String),
    /// No app has this id.
    #[response(status = 404, content_type = "text/plain")]
    UnknownApp(String),
}

/// `POST /apps/{app_id}/events`'s body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // read as [`EventBody`]; this is its schema
pub struct EventRequest {
    /// The event name (1 to 200 characters).
    name: String,
    /// The data: a string (the SDKs send JSON as a string).
    data: String,
    /// 1 to 100 channels (or `channel`).
    channels: Option<Vec<String>>,
    /// One channel (or `channels`).
    channel: Option<String>,
    /// A connection not to send it to.
    socket_id: Option<String>,
    /// Attributes to answer with: `subscription_count`, `user_count`.
    info: Option<String>,
}

/// `POST /apps/{app_id}/batch_events`'s body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // read as events; this is its schema
pub struct BatchRequest {
    /// Up to 10 events, each with `channel`.
    batch: Vec<EventRequest>,
}

#[derive(Deserialize)]
struct EventBody {
    name: String,
    data: Box<RawValue>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

/// One event checked: its data as a JSON string, the channels, who not to send it to.
struct Checked {
    name: String,
    data: Box<RawValue>,
    channels: Vec<String>,
    except: Option<ConnId>,
    info: Vec<String>,
}

fn check(app: &App, e: EventBody) -> Result<Checked, Refusal> {
    if e.name.is_empty() || e.name.len() > MAX_EVENT_NAME {
        return Err(bad("`name` is 1 to 200 characters"));
    }
    let channels = match (e.channels, e.channel) {
        (Some(c), None) => c,
        (None, Some(c)) => vec![c],
        (Some(_), Some(_)) => return Err(bad("give `channels` or `channel`, not both")),
        (None, None) => return Err(bad("`channels` (or `channel`) is missing")),
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS {
        return Err(bad(format!(
            "an event goes to 1 to {MAX_CHANNELS} channels"
        )));
    }
    for c in &channels {
        if Channel::parse(c).is_none() {
            return Err(bad(format!(
                "`{c}` is not a channel name (1 to 200 characters from A-Z a-z 0-9 _ - = @ , . ;)"
            )));
        }
    }
    if channels.len() > 1
        && channels
            .iter()
            .any(|c| Channel::parse(c).is_some_and(|k| k.kind == Kind::Encrypted))
    {
        return Err(bad(
            "an event to an encrypted channel goes to that channel only",
        ));
    }
    // `data` is a string; anything else is taken as the string of its JSON text.
    let text: String = match serde_json::from_str::<String>(e.data.get()) {
        Ok(s) => s,
        Err(_) => e.data.get().to_owned(),
    };
    if text.len() > app.max_event_size {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "event data is {} bytes, above this app's limit of {}",
                text.len(),
                app.max_event_size
            ),
        ));
    }
    let data = if e.data.get().starts_with('"') {
        e.data
    } else {
        serde_json::value::to_raw_value(&text).map_err(|e| bad(e.to_string()))?
    };
    let except = match e.socket_id.as_deref() {
        None => None,
        Some(s) => Some(
            ConnId::from_socket_id(s).ok_or_else(|| bad(format!("`{s}` is not a socket_id")))?,
        ),
    };
    let info = e
        .info
        .as_deref()
        .map(|i| {
            i.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(Checked {
        name: e.name,
        data,
        channels,
        except,
        info,
    })
}

fn publish(hub: &Hub, app: &App, e: &Checked) -> Result<(), Refusal> {
    for c in &e.channels {
        hub.trigger(app, c, &e.name, e.data.clone(), e.except)
            .map_err(|err| match err {
                TriggerError::Busy(b) => Refusal(StatusCode::TOO_MANY_REQUESTS, b.to_string()),
                TriggerError::Unreachable(u) => {
                    Refusal(StatusCode::SERVICE_UNAVAILABLE, u.to_string())
                }
                TriggerError::Hub(h) => Refusal(StatusCode::SERVICE_UNAVAILABLE, h.to_string()),
            })?;
    }
    Ok(())
}

/// The attributes `info` asks for, of one channel.
fn attributes(hub: &Hub, app: &App, channel: &str, info: &[String]) -> Map<String, Value> {
    let mut m = Map::new();
    let presence = Channel::parse(channel).is_some_and(|c| c.kind == Kind::Presence);
    for i in info {
        match i.as_str() {
            "subscription_count" => {
                m.insert(i.clone(), json!(hub.subscription_count(app, channel)));
            }
            "user_count" if presence => {
                m.insert(i.clone(), json!(hub.presence_users(app, channel).len()));
            }
            _ => {}
        }
    }
    m
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| bad(format!("the body is not a valid request: {e}")))
}

/// `POST /apps/{app_id}/events`: an event on one or more channels.
#[utoipa::path(post, path = "/apps/{app_id}/events", tag = "pusher",
    request_body = EventRequest,
    params(
        ("app_id" = String, Path, description = "The app id"),
        Signed,
        BodyMd5,
    ),
    responses(
        (status = 200, description = "Published: `{}`, or `{\"channels\": {…}}` with the attributes `info` asked for", body = Object),
        (status = 400, description = "Bad request", body = String, content_type = "text/plain"),
        (status = 413, description = "Data over the app's max_event_size", body = String, content_type = "text/plain"),
        (status = 429, description = "The backplane is not keeping up: nothing was published", body = String, content_type = "text/plain"),
        AuthRefusals,
    ))]
pub async fn events(
    State(hub): State<Hub>,
    Path(app_id): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    let (app, _) = authenticate(&hub, &app_id, &method, &uri, &body)?;
    let e = check(&app, parse_body(&body)?)?;
    publish(&hub, &app, &e)?;
    if e.info.is_empty() {
        return Ok(Json(json!({})));
    }
    let channels: Map<String, Value> = e
        .channels
        .iter()
        .map(|c| (c.clone(), Value::Object(attributes(&hub, &app, c, &e.info))))
        .collect();
    Ok(Json(json!({ "channels": channels })))
}

/// `POST /apps/{app_id}/batch_events`: up to 10 events, each on one channel.
#[utoipa::path(post, path = "/apps/{app_id}/batch_events", tag = "pusher",
    request_body = BatchRequest,
    params(
        ("app_id" = String, Path, description = "The app id"),
        Signed,
        BodyMd5,
    ),
    responses(
        (status = 200, description = "Published: `{}`, or `{\"batch\": […]}` with the attributes `info` asked for", body = Object),
        (status = 400, description = "Bad request (nothing was published)", body = String, content_type = "text/plain"),
        (status = 413, description = "Data over the app's max_event_size", body = String, content_type = "text/plain"),
        AuthRefusals,
    ))]
pub async fn batch_events(
    State(hub): State<Hub>,
    Path(app_id): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    #[derive(Deserialize)]
    struct Batch {
        batch: Vec<EventBody>,
    }
    let (app, _) = authenticate(&hub, &app_id, &method, &uri, &body)?;
    let batch: Batch = parse_body(&body)?;
    if batch.batch.len() > MAX_BATCH {
        return Err(bad(format!("a batch holds at most {MAX_BATCH} events")));
    }
    // Every event is checked before any is published: a bad batch publishes nothing.
    let checked = batch
        .batch
        .into_iter()
        .map(|e| check(&app, e))
        .collect::<Result<Vec<_>, _>>()?;
    for e in &checked {
        publish(&hub, &app, e)?;
    }
    if checked.iter().all(|e| e.info.is_empty()) {
        return Ok(Json(json!({})));
    }
    let answers: Vec<Value> = checked
        .iter()
        .map(|e| Value::Object(attributes(&hub, &app, &e.channels[0], &e.info)))
        .collect();
    Ok(Json(json!({ "batch": answers })))
}

fn info_param(params: &[(String, String)]) -> Vec<String> {
    params
        .iter()
        .find(|(k, _)| k == "info")
        .map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /apps/{app_id}/channels`: the occupied channels, optionally by prefix.
#[utoipa::path(get, path = "/apps/{app_id}/channels", tag = "pusher",
    params(
        ("app_id" = String, Path, description = "The app id"),
        Signed,
        ("filter_by_prefix" = Option<String>, Query, description = "Only channels starting with this"),
        ("info" = Option<String>, Query, description = "`user_count` (with a presence- prefix), `subscription_count`"),
    ),
    responses(
        (status = 200, description = "`{\"channels\": {\"name\": {…}}}`", body = Object),
        (status = 400, description = "Bad request", body = String, content_type = "text/plain"),
        AuthRefusals,
    ))]
pub async fn channels(
    State(hub): State<Hub>,
    Path(app_id): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
) -> Result<Json<Value>, Refusal> {
    let (app, params) = authenticate(&hub, &app_id, &method, &uri, &[])?;
    let prefix = params
        .iter()
        .find(|(k, _)| k == "filter_by_prefix")
        .map_or("", |(_, v)| v.as_str());
    let info = info_param(&params);
    if info.iter().any(|i| i == "user_count") && !prefix.starts_with("presence-") {
        return Err(bad(
            "info=user_count needs filter_by_prefix=presence- (only presence channels have users)",
        ));
    }
    let mut list = hub.app_channels(&app);
    list.sort();
    let channels: Map<String, Value> = list
        .into_iter()
        .filter(|(c, _)| c.starts_with(prefix))
        .map(|(c, _)| {
            let attrs = attributes(&hub, &app, &c, &info);
            (c, Value::Object(attrs))
        })
        .collect();
    Ok(Json(json!({ "channels": channels })))
}

/// `GET /apps/{app_id}/channels/{channel}`: whether it is occupied, and counts on request.
#[utoipa::path(get, path = "/apps/{app_id}/channels/{channel}", tag = "pusher",
    params(
        ("app_id" = String, Path, description = "The app id"),
        Signed,
        ("channel" = String, Path, description = "The channel"),
        ("info" = Option<String>, Query, description = "`subscription_count`, `user_count` (presence)"),
    ),
    responses(
        (status = 200, description = "`{\"occupied\": true, …}`", body = Object),
        (status = 400, description = "Bad request", body = String, content_type = "text/plain"),
        AuthRefusals,
    ))]
pub async fn channel(
    State(hub): State<Hub>,
    Path((app_id, channel)): Path<(String, String)>,
    method: Method,
    OriginalUri(uri): OriginalUri,
) -> Result<Json<Value>, Refusal> {
    let (app, params) = authenticate(&hub, &app_id, &method, &uri, &[])?;
    let kind = Channel::parse(&channel)
        .ok_or_else(|| bad(format!("`{channel}` is not a channel name")))?;
    let info = info_param(&params);
    if info.iter().any(|i| i == "user_count") && kind.kind != Kind::Presence {
        return Err(bad("info=user_count is for presence channels"));
    }
    let mut m = attributes(&hub, &app, &channel, &info);
    m.insert(
        "occupied".into(),
        json!(hub.subscription_count(&app, &channel) > 0),
    );
    Ok(Json(Value::Object(m)))
}

/// `GET /apps/{app_id}/channels/{channel}/users`: a presence channel's users.
#[utoipa::path(get, path = "/apps/{app_id}/channels/{channel}/users", tag = "pusher",
    params(
        ("app_id" = String, Path, description = "The app id"),
        Signed,
        ("channel" = String, Path, description = "A presence channel"),
    ),
    responses(
        (status = 200, description = "`{\"users\": [{\"id\": …}]}`", body = Object),
        (status = 400, description = "Not a presence channel", body = String, content_type = "text/plain"),
        AuthRefusals,
    ))]
pub async fn users(
    State(hub): State<Hub>,
    Path((app_id, channel)): Path<(String, String)>,
    method: Method,
    OriginalUri(uri): OriginalUri,
) -> Result<Json<Value>, Refusal> {
    let (app, _) = authenticate(&hub, &app_id, &method, &uri, &[])?;
    if Channel::parse(&channel).is_none_or(|c| c.kind != Kind::Presence) {
        return Err(bad(format!("`{channel}` is not a presence channel")));
    }
    let users: Vec<Value> = hub
        .presence_users(&app, &channel)
        .into_iter()
        .map(|u| json!({ "id": u.id }))
        .collect();
    Ok(Json(json!({ "users": users })))
}

/// `POST /apps/{app_id}/users/{user_id}/terminate_connections`: closes every connection the
/// user signed in with, on every node.
#[utoipa::path(post, path = "/apps/{app_id}/users/{user_id}/terminate_connections", tag = "pusher",
    request_body(content = Object, description = "`{}` (signed with body_md5)"),
    params(
        ("app_id" = String, Path, description = "The app id"),
        Signed,
        ("user_id" = String, Path, description = "The user"),
    ),
    responses(
        (status = 200, description = "`{}`", body = Object),
        AuthRefusals,
    ))]
pub async fn terminate(
    State(hub): State<Hub>,
    Path((app_id, user)): Path<(String, String)>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    let (app, _) = authenticate(&hub, &app_id, &method, &uri, &body)?;
    hub.terminate_user(&app, &user);
    Ok(Json(json!({})))
}

/// `POST /users/{user_id}/terminate_connections`: as above, the app found by the signing key.
async fn terminate_by_key(
    State(hub): State<Hub>,
    Path(user): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    let app_id = app_of_key(&hub, &uri)?;
    let (app, _) = authenticate(&hub, &app_id, &method, &uri, &body)?;
    hub.terminate_user(&app, &user);
    Ok(Json(json!({})))
}
