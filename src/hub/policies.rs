//! Delivery policies per group pattern (`--delivery-policy 'feed:*=drop-oldest'`): which rule
//! a group's messages fall under, and the [`Tag`] they are offered with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use crate::frame::Frame;
use crate::manager::policy::{key_hash, Lane, Meter, Policy, Rule, Tag};
use crate::manager::Protocol;
use crate::metrics::Metrics;
use crate::protocol::{pusher, v1};

/// The configured rules, each with its counters.
#[derive(Default)]
pub(crate) struct Policies {
    rules: Vec<(Rule, Meter)>,
}

impl Policies {
    pub(crate) fn new(rules: &[Rule], metrics: &Metrics) -> Self {
        Self {
            rules: rules
                .iter()
                .map(|r| {
                    let (dropped, conflated, gaps) =
                        metrics.policy_meter(r.policy.name(), &r.pattern);
                    (
                        r.clone(),
                        Meter {
                            dropped,
                            conflated,
                            gaps,
                        },
                    )
                })
                .collect(),
        }
    }

    /// The tag of `group`'s message at `offset`, when its rule is not `disconnect` or it has
    /// its own TTL.
    pub(crate) fn tag(
        &self,
        group: &str,
        offset: u64,
        key: Option<&str>,
        ttl: Option<Duration>,
    ) -> Option<Tag> {
        let rule = self
            .rules
            .iter()
            .find(|(r, _)| crate::protocol::group_matches(&r.pattern, group));
        let policy = rule.map_or(Policy::Disconnect, |(r, _)| r.policy);
        if policy == Policy::Disconnect && ttl.is_none() {
            return None;
        }
        Some(Tag {
            lane: Arc::new(Lane {
                policy,
                group: Arc::from(group),
                gap: gap_frame,
                meter: rule.map(|(_, m)| m.clone()).unwrap_or_default(),
            }),
            offset,
            key: key.map(key_hash),
            expires: ttl.map(|t| Instant::now() + t),
        })
    }
}

/// What a connection is told when it lost `from..=to` of `group`: a `gap` envelope, or, on a
/// Pusher connection, a `wshub:gap` event on the channel (data `{"from":…,"to":…}`).
fn gap_frame(protocol: Protocol, group: &str, from: u64, to: u64) -> Frame {
    match protocol {
        Protocol::Pusher => {
            let data = serde_json::json!({ "from": from, "to": to }).to_string();
            let data = serde_json::to_string(&data)
                .ok()
                .and_then(|s| RawValue::from_string(s).ok());
            match data {
                Some(d) => pusher::event("wshub:gap", crate::apps::channel_name(group), &d, None),
                None => v1::gap(group, from, to),
            }
        }
        Protocol::Plain | Protocol::V1 => v1::gap(group, from, to),
    }
}
