//! `pusher_internal:subscription_count`: the number of connections subscribed to a channel,
//! across the cluster, sent to its subscribers when it changes (for apps that enable it, as
//! Pusher's "subscription counting" setting does; never on presence channels, whose members
//! say more).
//!
//! Every node applies every change of a channel's count in the bus's order (see
//! `occupancy_changed`), so every node knows the cluster's count and tells its own subscribers:
//! nothing more travels on the bus. The events are rate-limited per channel: a change is sent
//! at once when none was sent within the channel's window, else the newest count goes out when
//! the window ends (the last count always arrives). The window is [`SMALL_WINDOW`] for channels
//! of up to [`SMALL_CHANNEL`] subscribers and [`LARGE_WINDOW`] above: a busy channel's churn
//! costs each subscriber one frame per window, not one per join.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::hub::{Hub, HubCork};
use crate::manager::Audience;
use crate::protocol::pusher::{self, Channel, Kind};

/// Subscribers up to which a channel gets the short window.
pub(crate) const SMALL_CHANNEL: usize = 100;
/// Events at most one a second for a channel of up to [`SMALL_CHANNEL`] subscribers.
pub(crate) const SMALL_WINDOW: Duration = Duration::from_secs(1);
/// One every five seconds above it.
pub(crate) const LARGE_WINDOW: Duration = Duration::from_secs(5);

/// The channels whose count was sent lately, by stream.
#[derive(Default)]
pub(crate) struct Counts {
    channels: Mutex<HashMap<String, Throttle>>,
}

struct Throttle {
    /// When the last event went out.
    sent: Instant,
    /// The count waiting for the window's end, with a timer armed for it.
    pending: Option<usize>,
}

fn window(count: usize) -> Duration {
    if count <= SMALL_CHANNEL {
        SMALL_WINDOW
    } else {
        LARGE_WINDOW
    }
}

impl Hub {
    /// The cluster's count of subscribers of `stream` is now `count` (on every node).
    pub(crate) fn subscription_count_changed(&self, stream: &str, count: usize) {
        let Some((app, channel)) = self.apps().channel_of(stream) else {
            return;
        };
        // Presence channels' members say more; a user's own channel is that user's alone.
        let counted = Channel::parse(channel)
            .is_some_and(|c| c.kind != Kind::Presence && c.kind != Kind::User);
        if !app.subscription_count || !counted {
            return;
        }
        let now = Instant::now();
        let wait = {
            let mut all = self.shared.protocols.pusher.counts.channels.lock();
            if count == 0 {
                // Nobody left to tell; a timer still armed finds nothing.
                all.remove(stream);
                return;
            }
            match all.get_mut(stream) {
                Some(t) if t.pending.is_some() => {
                    t.pending = Some(count);
                    return;
                }
                Some(t) if now.duration_since(t.sent) < window(count) => {
                    t.pending = Some(count);
                    Some((t.sent + window(count)).saturating_duration_since(now))
                }
                Some(t) => {
                    t.sent = now;
                    None
                }
                None => {
                    all.insert(
                        stream.to_owned(),
                        Throttle {
                            sent: now,
                            pending: None,
                        },
                    );
                    None
                }
            }
        };
        match wait {
            None => self.send_subscription_count(stream, count),
            Some(wait) => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let hub = self.clone();
                let stream = stream.to_owned();
                rt.spawn(async move {
                    tokio::time::sleep(wait).await;
                    let count = {
                        let mut all = hub.shared.protocols.pusher.counts.channels.lock();
                        let Some(t) = all.get_mut(&stream) else {
                            return;
                        };
                        t.sent = Instant::now();
                        t.pending.take()
                    };
                    if let Some(count) = count {
                        hub.send_subscription_count(&stream, count);
                    }
                });
            }
        }
    }

    /// Tells this node's Pusher subscribers of `stream` its count.
    fn send_subscription_count(&self, stream: &str, count: usize) {
        let channel = crate::apps::channel_name(stream);
        let frame = pusher::subscription_count(channel, count);
        let mut cork = HubCork::new();
        self.pusher_only(Audience::Group(stream), &frame, &mut cork);
        cork.flush();
    }
}
