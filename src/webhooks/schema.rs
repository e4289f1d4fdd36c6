//! The JSON Schemas of what wshub sends the application's backend (its webhooks, the
//! authorization hooks' requests) and what the hooks answer: served in the OpenAPI document
//! (`webhooks` and `components.schemas`) and kept in `docs/hooks.openapi.json` (a test holds
//! the file to this code).

use serde_json::{json, Map, Value};

use super::EventType;

fn string(description: &str) -> Value {
    json!({ "type": "string", "description": description })
}

fn nullable_string(description: &str) -> Value {
    json!({ "type": ["string", "null"], "description": description })
}

fn object(description: &str, required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "description": description,
        "required": required,
        "properties": properties,
    })
}

fn connection() -> Value {
    string("The connection id (32 hex characters; what the REST API takes).")
}

fn user() -> Value {
    nullable_string("The authenticated user (token `sub` or the connect hook's `user`), if any.")
}

/// The `data` of each event type.
fn data(ty: EventType) -> Value {
    let group = || string("The group.");
    match ty {
        EventType::ConnectionOpened => object(
            "A `/ws` client connected (told by its node).",
            &["connection", "user", "protocol", "remote"],
            json!({
                "connection": connection(),
                "user": user(),
                "protocol": { "type": "string", "enum": ["wshub.v1", "plain"], "description": "The protocol negotiated." },
                "remote": nullable_string("The peer's address and port, as the server saw it."),
            }),
        ),
        EventType::ConnectionClosed => object(
            "A `/ws` client's connection ended (told by its node; not for connections of a node that died: see `node.lost`).",
            &["connection", "user", "code", "reason", "duration_ms"],
            json!({
                "connection": connection(),
                "user": user(),
                "code": { "type": "integer", "description": "The close code (the peer's when it closed first; 1006: no closing handshake)." },
                "reason": string("Why: normal, disconnected, shutdown, idle_timeout, protocol_error, invalid_utf8, slow_consumer, rate_limited, message_too_big, dropped, io_error, close_timeout."),
                "duration_ms": { "type": "integer", "description": "How long the connection lasted." },
            }),
        ),
        EventType::GroupOccupied | EventType::GroupVacated => object(
            if ty == EventType::GroupOccupied {
                "The group's first member in the whole cluster joined (told once, by the member's node)."
            } else {
                "The group's last member in the whole cluster left (told once: by the member's node, or by the first live node when the members' node died)."
            },
            &["group"],
            json!({ "group": group() }),
        ),
        EventType::GroupJoined | EventType::GroupLeft => object(
            if ty == EventType::GroupJoined {
                "A connection joined a group (told by its node)."
            } else {
                "A connection left a group, or ended while a member (told by its node)."
            },
            &["group", "connection", "user"],
            json!({ "group": group(), "connection": connection(), "user": user() }),
        ),
        EventType::MessageReceived => object(
            "A client sent a message: plain text to everyone (`broadcast`), a `wshub.v1` `publish` to a group (after the publish hook, as delivered) or `send` to a connection or user.",
            &["connection", "user", "kind", "data"],
            json!({
                "connection": connection(),
                "user": user(),
                "kind": { "type": "string", "enum": ["broadcast", "publish", "send"] },
                "group": string("For `publish`: the group."),
                "to": {
                    "type": "object",
                    "description": "For `send`: `{\"connection\": id}` or `{\"user\": id}`.",
                    "properties": { "connection": string("A connection id."), "user": string("A user id.") },
                },
                "data": any("The message: the text for `broadcast`, the JSON value for `publish` and `send`."),
            }),
        ),
        EventType::NodeLost => object(
            "A node stopped being heard from for the node TTL (crashed or cut off); the first live node by id tells, once. Its connections' `connection.closed` and `group.left` are not sent; the groups that had members only there are `group.vacated`.",
            &["node", "groups_vacated"],
            json!({
                "node": string("The lost node's id."),
                "groups_vacated": { "type": "integer", "description": "How many groups and channels it left vacated." },
            }),
        ),
    }
}

/// The schema name of an event type (`ConnectionOpenedEvent`, …).
fn name(ty: EventType) -> String {
    let mut out = String::new();
    for part in ty.name().split('.') {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.extend(f.to_uppercase());
            out.push_str(c.as_str());
        }
    }
    out + "Event"
}

/// Any JSON value.
fn any(description: &str) -> Value {
    json!({
        "type": ["object", "array", "string", "number", "boolean", "null"],
        "description": description,
    })
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Every schema, by name.
pub fn schemas() -> Map<String, Value> {
    let mut s = Map::new();
    for ty in EventType::ALL {
        s.insert(
            name(ty),
            object(
                &format!("`{}`", ty.name()),
                &["id", "type", "time_ms", "node", "data"],
                json!({
                    "id": string("Unique per event, the same on every retry: de-duplicate by it."),
                    "type": { "type": "string", "enum": [ty.name()] },
                    "time_ms": { "type": "integer", "description": "When it happened (Unix milliseconds)." },
                    "node": string("The node that told it."),
                    "data": data(ty),
                }),
            ),
        );
    }
    s.insert(
        "WebhookBatch".into(),
        object(
            "What wshub POSTs to a `--webhook` target: the events of one batch, oldest first. Headers: `webhook-id` (the batch), `webhook-timestamp` (Unix seconds, of this attempt), `webhook-signature` (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body` with the webhook secret).",
            &["time_ms", "events"],
            json!({
                "time_ms": { "type": "integer", "description": "When the batch was made (Unix milliseconds)." },
                "events": {
                    "type": "array",
                    "items": { "oneOf": EventType::ALL.map(|t| reference(&name(t))) },
                },
            }),
        ),
    );
    s.insert(
        "ConnectHookRequest".into(),
        object(
            "What `--connect-hook` is asked when a `/ws` client without a token connects.",
            &["type", "remote", "path", "query", "headers", "protocol"],
            json!({
                "type": { "type": "string", "enum": ["connect"] },
                "remote": nullable_string("The peer's address and port."),
                "path": string("The request path (`/ws`)."),
                "query": { "type": "object", "additionalProperties": { "type": "string" }, "description": "The query parameters (`access_token` left out)." },
                "headers": { "type": "object", "additionalProperties": { "type": "string" }, "description": "The request headers named by `--hook-headers` (lowercase names; repeated headers joined with `, `)." },
                "protocol": { "type": "string", "enum": ["wshub.v1", "plain"] },
            }),
        ),
    );
    s.insert(
        "ConnectHookAnswer".into(),
        object(
            "The connect hook's answer (200, JSON; anything else refuses the connection: 1013 when the backend is unreachable, slow or answers 5xx/429, 1011 otherwise).",
            &["allow"],
            json!({
                "allow": { "type": "boolean" },
                "user": string("Allowed: the user id (at most 256 bytes)."),
                "info": any("Allowed: anything about the user (JSON), kept with the connection."),
                "groups": { "type": "array", "items": { "type": "string" }, "description": "Allowed: the groups it may join (exact names, or prefixes ending in `*`); absent: every group." },
                "code": { "type": "integer", "minimum": 4000, "maximum": 4999, "description": "Refused: the close code (default 4403)." },
                "reason": string("Refused: the close reason (at most 123 bytes are sent)."),
            }),
        ),
    );
    s.insert(
        "JoinHookRequest".into(),
        object(
            "What `--join-hook` is asked when a `wshub.v1` client joins a group matching `--join-hook-groups`.",
            &["type", "connection", "user", "group"],
            json!({
                "type": { "type": "string", "enum": ["join"] },
                "connection": connection(),
                "user": user(),
                "group": string("The group."),
            }),
        ),
    );
    s.insert(
        "JoinHookAnswer".into(),
        object(
            "The join hook's answer; refused: the client gets an `error` with code `forbidden` (or `unavailable` when the hook failed).",
            &["allow"],
            json!({
                "allow": { "type": "boolean" },
                "reason": string("Refused: why (in the error's message)."),
                "ttl": { "type": "integer", "minimum": 0, "maximum": 3600, "description": "Seconds this answer holds for this user and group (not asked again meanwhile); only for connections with a user." },
            }),
        ),
    );
    s.insert(
        "PublishHookRequest".into(),
        object(
            "What `--publish-hook` is asked when a `wshub.v1` client publishes to a group matching `--publish-hook-groups`.",
            &["type", "connection", "user", "group", "data"],
            json!({
                "type": { "type": "string", "enum": ["publish"] },
                "connection": connection(),
                "user": user(),
                "group": string("The group."),
                "data": any("The message (any JSON)."),
            }),
        ),
    );
    s.insert(
        "PublishHookAnswer".into(),
        object(
            "The publish hook's answer.",
            &["allow"],
            json!({
                "allow": { "type": "boolean" },
                "data": any("Allowed: the message to deliver instead (any JSON)."),
                "reason": string("Refused: why."),
            }),
        ),
    );
    s
}

/// The OpenAPI `webhooks`: what wshub POSTs to the backend, with the answers it expects.
pub fn webhooks() -> Value {
    let post = |summary: &str, request: &str, answer: Option<&str>| {
        let ok = match answer {
            Some(a) => json!({
                "description": "The answer.",
                "content": { "application/json": { "schema": reference(a) } },
            }),
            None => {
                json!({ "description": "Received (any 2xx). 5xx, 429 and network errors are retried; other statuses are not." })
            }
        };
        json!({
            "post": {
                "summary": summary,
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": reference(request) } },
                },
                "responses": { "200": ok },
            }
        })
    };
    json!({
        "wshub-events": post("wshub's webhook events (--webhook)", "WebhookBatch", None),
        "connect-hook": post("Asked at connect (--connect-hook)", "ConnectHookRequest", Some("ConnectHookAnswer")),
        "join-hook": post("Asked at join (--join-hook)", "JoinHookRequest", Some("JoinHookAnswer")),
        "publish-hook": post("Asked at publish (--publish-hook)", "PublishHookRequest", Some("PublishHookAnswer")),
    })
}

/// The fragment kept in `docs/hooks.openapi.json`: `webhooks` and their schemas.
pub fn document() -> Value {
    json!({
        "webhooks": webhooks(),
        "components": { "schemas": schemas() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_a_schema_named_after_it() {
        let s = schemas();
        for ty in EventType::ALL {
            let e = &s[&name(ty)];
            assert_eq!(e["properties"]["type"]["enum"][0], ty.name());
        }
        assert_eq!(name(EventType::ConnectionOpened), "ConnectionOpenedEvent");
    }
}
