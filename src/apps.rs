//! Apps: the Pusher tenancy model. Each app has an id (the HTTP API's `/apps/{id}`), a key
//! (what clients connect with, `/app/{key}`), a secret (what signs channel authorizations and
//! API requests) and its own limits. Apps are isolated: nothing published in one reaches
//! another.
//!
//! A leaf: configuration, the hub and the Pusher protocol all read these; it reads nothing of
//! ours.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app id, in HTTP API paths: 1 to 64 of `A-Z a-z 0-9 _ - .`.
    pub id: String,
    /// The public key clients connect with.
    pub key: String,
    /// The secret that signs authorizations and API requests (never printed).
    #[serde(skip_serializing)]
    pub secret: String,
    /// Whether clients may connect and the API may publish.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Connections of this app beyond which new ones are closed with 4004 (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Whether clients may send `client-` events on private and presence channels.
    #[serde(default = "yes")]
    pub client_events: bool,
    /// Client events one connection may send per second (a burst of as many); more are
    /// refused with a `pusher:error` 4301.
    #[serde(default = "default_client_event_rate")]
    pub client_event_rate: u32,
    /// Whether clients may sign in as a user (`pusher:signin`).
    #[serde(default = "yes")]
    pub user_authentication: bool,
    /// Members one presence channel may have (distinct users).
    #[serde(default = "default_max_presence_members")]
    pub max_presence_members: usize,
    /// Largest event `data`, in bytes, from the API or a client.
    #[serde(default = "default_max_event_size")]
    pub max_event_size: usize,
    /// Largest presence `channel_data` (the member's id and info), in bytes: every node keeps
    /// every member's info, so it is bounded like any other byte budget.
    #[serde(default = "default_max_member_size")]
    pub max_member_size: usize,
    /// Whether the subscribers of its channels (presence channels excepted) are sent
    /// `pusher_internal:subscription_count` when the cluster's count changes, rate-limited per
    /// channel (Pusher's "subscription counting" app setting; off unless enabled, as there).
    #[serde(default)]
    pub subscription_count: bool,
    /// Whether signed-in users are told `online`/`offline` of the users in their `watchlist`
    /// (from their `user_data`), cluster-wide (Pusher's "watchlist events" app setting; off
    /// unless enabled, as there).
    #[serde(default)]
    pub watchlist_events: bool,
    /// Where this app's webhooks go (Pusher's format, signed with the app secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
}

/// A webhook target of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// The `http://` or `https://` URL events are POSTed to.
    pub url: String,
    /// The events it gets (`channel_occupied`, `channel_vacated`, `member_added`,
    /// `member_removed`, `client_event`, `cache_miss`, `subscription_count`; for the hub's own
    /// webhooks, the names of [`crate::webhooks::EventType`]); empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
}

/// The webhook events an app can be told.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

impl Webhook {
    /// Parses a target: a URL (every event), or a JSON object with `url` and `event_types`
    /// (what a configuration file's `[[webhooks]]` table becomes).
    ///
    /// # Errors
    /// A message saying what is expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.starts_with('{') {
            return serde_json::from_str(t).map_err(|e| {
                format!("a webhook is a URL or {{\"url\": ..., \"event_types\": [...]}}: {e}")
            });
        }
        Ok(Self {
            url: t.to_owned(),
            event_types: Vec::new(),
        })
    }

    /// Whether this target gets events named `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == name)
    }
}

fn yes() -> bool {
    true
}

fn default_client_event_rate() -> u32 {
    10
}

fn default_max_presence_members() -> usize {
    10_000
}

fn default_max_event_size() -> usize {
    10 * 1024
}

fn default_max_member_size() -> usize {
    2 * 1024
}

impl App {
    /// An app with these credentials and the default limits.
    pub fn new(id: &str, key: &str, secret: &str) -> Self {
        Self {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            max_connections: None,
            client_events: true,
            client_event_rate: default_client_event_rate(),
            user_authentication: true,
            max_presence_members: default_max_presence_members(),
            max_event_size: default_max_event_size(),
            max_member_size: default_max_member_size(),
            subscription_count: false,
            watchlist_events: false,
            webhooks: Vec::new(),
        }
    }

    /// The development app a server without configured apps has: id `1` (numeric, as Pusher's
    /// are: some SDKs, Python's, refuse others), key `app-key`, secret `app-secret`.
    pub fn development() -> Self {
        Self::new("1", "app-key", "app-secret")
    }

    /// Checks the fields a configuration may get wrong.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let token = |what: &str, v: &str| {
            if (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                Ok(())
            } else {
                Err(format!(
                    "app {what} `{v}`: 1 to 64 characters from A-Z a-z 0-9 _ - ."
                ))
            }
        };
        token("id", &self.id)?;
        token("key", &self.key)?;
        if self.secret.is_empty() || self.secret.len() > 256 {
            return Err(format!("app `{}`: the secret is 1 to 256 bytes", self.id));
        }
        if self.max_event_size == 0 {
            return Err(format!("app `{}`: max_event_size must be above 0", self.id));
        }
        for w in &self.webhooks {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(format!(
                    "app `{}`: webhook URL `{}` is not http:// or https://",
                    self.id, w.url
                ));
            }
            if let Some(t) = w
                .event_types
                .iter()
                .find(|t| !WEBHOOK_EVENTS.contains(&t.as_str()))
            {
                return Err(format!(
                    "app `{}`: unknown webhook event `{t}` (known: {})",
                    self.id,
                    WEBHOOK_EVENTS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Parses `ID:KEY:SECRET` (the command line's `--app`), or one app as a JSON object (what a
    /// configuration file's `[[apps]]` table becomes).
    ///
    /// # Errors
    /// A message saying what is expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        let app = if s.trim_start().starts_with('{') {
            serde_json::from_str::<App>(s).map_err(|e| format!("an app: {e}"))?
        } else {
            let mut parts = s.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(key), Some(secret)) => App::new(id, key, secret),
                _ => return Err(format!("`{s}`: an app is ID:KEY:SECRET")),
            }
        };
        app.validate()?;
        Ok(app)
    }
}

/// The apps of a server. The first is the **default app**: its channels are the hub's groups
/// themselves (a channel `orders` of the default app is the group `orders` of `/ws` and the
/// REST API); another app's channel `c` is the stream `<app id>#c`, a name no group can have.
#[derive(Debug, Clone)]
pub struct Apps {
    apps: Arc<[Arc<App>]>,
    /// Nothing was configured: the development app stands in.
    development: bool,
}

impl Default for Apps {
    /// Nothing configured: the development app.
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Apps {
    /// These apps (the development app when `apps` is empty).
    pub fn new(apps: Vec<App>) -> Self {
        let development = apps.is_empty();
        let apps = if development {
            vec![App::development()]
        } else {
            apps
        };
        Self {
            apps: apps.into_iter().map(Arc::new).collect(),
            development,
        }
    }

    /// No app at all: `/app/{key}` refuses every key (4001) and `/apps/{id}` every id (404).
    pub fn none() -> Self {
        Self {
            apps: Arc::from(Vec::new()),
            development: false,
        }
    }

    /// Whether nothing was configured and the development app stands in (an app configured
    /// with the same credentials is not this).
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// These apps, each also sending every webhook event to each of `urls`.
    pub fn with_webhooks(self, urls: &[String]) -> Self {
        if urls.is_empty() {
            return self;
        }
        let apps = self
            .apps
            .iter()
            .map(|a| {
                let mut a = App::clone(a);
                a.webhooks.extend(urls.iter().map(|u| Webhook {
                    url: u.clone(),
                    event_types: Vec::new(),
                }));
                Arc::new(a)
            })
            .collect();
        Self {
            apps,
            development: self.development,
        }
    }

    /// Checks that ids and keys are unique and every app is valid.
    ///
    /// # Errors
    /// A message naming the duplicate or the field.
    pub fn validate(&self) -> Result<(), String> {
        for (i, a) in self.apps.iter().enumerate() {
            a.validate()?;
            for b in &self.apps[..i] {
                if a.id == b.id {
                    return Err(format!("two apps have the id `{}`", a.id));
                }
                if a.key == b.key {
                    return Err(format!("two apps have the key `{}`", a.key));
                }
            }
        }
        Ok(())
    }

    /// Every app, the default one first.
    pub fn all(&self) -> &[Arc<App>] {
        &self.apps
    }

    /// The default app.
    pub fn default_app(&self) -> Option<&Arc<App>> {
        self.apps.first()
    }

    /// The app clients connect to with `key`.
    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.apps.iter().find(|a| a.key == key)
    }

    /// The app with this id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.apps.iter().find(|a| a.id == id)
    }

    /// Whether `app` is the default app.
    pub fn is_default(&self, app: &App) -> bool {
        self.default_app().is_some_and(|d| d.id == app.id)
    }

    /// The hub stream (group) that carries `channel` of `app`.
    pub fn stream_of(&self, app: &App, channel: &str) -> String {
        if self.is_default(app) && !channel.contains('#') {
            channel.to_owned()
        } else {
            format!("{}#{channel}", app.id)
        }
    }

    /// The app and channel a hub stream carries, if it is a channel of one of these apps (a
    /// group of the default app is one of its channels).
    pub fn channel_of<'s>(&self, stream: &'s str) -> Option<(&Arc<App>, &'s str)> {
        match stream.split_once('#') {
            Some((id, channel)) => self.by_id(id).map(|a| (a, channel)),
            None => self.default_app().map(|a| (a, stream)),
        }
    }
}

/// The channel name a hub stream carries: what follows `<app id>#`, or the whole name.
pub fn channel_name(stream: &str) -> &str {
    stream.split_once('#').map_or(stream, |(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_and_file_forms_parse() {
        let a = App::parse("42:k1:s3cret:with:colons").unwrap();
        assert_eq!((a.id.as_str(), a.key.as_str()), ("42", "k1"));
        assert_eq!(a.secret, "s3cret:with:colons");
        assert!(a.client_events && a.user_authentication);
        let b = App::parse(
            r#"{"id":"7","key":"k","secret":"s","client_events":false,"max_connections":3}"#,
        )
        .unwrap();
        assert!(!b.client_events);
        assert_eq!(b.max_connections, Some(3));
        for bad in [
            "",
            "a:b",
            "a b:k:s",
            "a:k:",
            r#"{"id":"1","key":"k"}"#,
            r#"{"id":"1","key":"k","secret":"s","nope":1}"#,
        ] {
            assert!(App::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn streams_isolate_apps_and_the_default_app_shares_groups() {
        let apps = Apps::new(vec![App::new("1", "a", "s"), App::new("2", "b", "s")]);
        apps.validate().unwrap();
        let (one, two) = (&apps.all()[0], &apps.all()[1]);
        assert_eq!(apps.stream_of(one, "orders"), "orders");
        assert_eq!(apps.stream_of(two, "orders"), "2#orders");
        assert_eq!(
            apps.channel_of("2#orders").map(|(a, c)| (a.id.as_str(), c)),
            Some(("2", "orders"))
        );
        assert_eq!(
            apps.channel_of("orders").map(|(a, c)| (a.id.as_str(), c)),
            Some(("1", "orders"))
        );
        assert!(apps.channel_of("9#x").is_none());
        assert_eq!(
            apps.stream_of(one, "#server-to-user-7"),
            "1##server-to-user-7"
        );
        assert_eq!(channel_name("1##server-to-user-7"), "#server-to-user-7");
        assert_eq!(channel_name("2#presence-x"), "presence-x");
        let dup = Apps::new(vec![App::new("1", "a", "s"), App::new("1", "b", "s")]);
        assert!(dup.validate().is_err());
        assert!(Apps::new(vec![]).by_key("app-key").is_some());
        assert!(Apps::new(vec![]).is_development());
        assert!(!Apps::new(vec![App::development()]).is_development());
        assert!(Apps::none().all().is_empty());
    }

    #[test]
    fn secrets_are_not_serialized() {
        let s = serde_json::to_string(&App::new("1", "k", "topsecret")).unwrap();
        assert!(!s.contains("topsecret"), "{s}");
    }
}
