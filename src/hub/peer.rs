//! A connection's protocol session, as every transport sees it: the one narrow interface
//! between a transport (WebSocket frames, an HTTP stream with POSTs, long polls) and the
//! protocols (plain, `wshub.v1`, Pusher).
//!
//! A transport reads a client's messages, hands each to its [`Peer`], and drains the
//! connection's outbox; it never asks which protocol it carries. The peer turns each message
//! into hub operations and answers in the protocol's own words (an `error` frame, a
//! `pusher:error`), and undoes what the protocol set up when the connection ends.

use super::pusher::Session;
use super::{Fetched, Hub, HubCork, HubEntry, PrefetchFuture};
use crate::close::CloseReason;
use crate::manager::Protocol;
use crate::protocol::{pusher, v1};

/// A registered connection and its protocol session.
pub(crate) struct Peer {
    hub: Hub,
    entry: HubEntry,
    /// A Pusher connection's own state (boxed: most connections are not Pusher's).
    pusher: Option<Box<Session>>,
}

impl Peer {
    /// A plain or `wshub.v1` connection (`entry.info.protocol` says which).
    pub(crate) fn new(hub: Hub, entry: HubEntry) -> Self {
        Self {
            hub,
            entry,
            pusher: None,
        }
    }

    /// A Pusher connection of `app`: registered, and told its `socket_id`
    /// (`pusher:connection_established`, the first frame in its outbox).
    pub(crate) fn pusher(hub: Hub, entry: HubEntry, app: std::sync::Arc<crate::apps::App>) -> Self {
        let session = Session::new(app, entry.id);
        let _ = entry
            .sink
            .push(pusher::connection_established(&session.socket_id()));
        Self {
            hub,
            entry,
            pusher: Some(Box::new(session)),
        }
    }

    /// The hub.
    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The connection's registry entry.
    pub(crate) fn entry(&self) -> &HubEntry {
        &self.entry
    }

    /// A text message from the client. When it needs a fetch first (a cluster recovery, a
    /// cache channel's last event), nothing is done yet and the fetch is returned: await it
    /// (no lock held), then call again with what it brought.
    pub(crate) fn on_text(
        &self,
        text: &str,
        pre: Option<Fetched>,
        cork: &mut HubCork,
    ) -> Option<PrefetchFuture> {
        match (&self.pusher, self.entry.info.protocol) {
            (Some(session), _) => self.hub.on_pusher(&self.entry, session, text, pre, cork),
            (None, Protocol::V1) => self.hub.on_command(&self.entry, text, pre, cork),
            (None, _) => {
                self.hub.on_text(self.entry.id, text, cork);
                None
            }
        }
    }

    /// A binary message from the client.
    pub(crate) fn on_binary(&self, data: &[u8], cork: &mut HubCork) {
        match (&self.pusher, self.entry.info.protocol) {
            (Some(_), _) => self.hub.to_pusher(
                self.entry.id,
                pusher::error(
                    pusher::Code::Generic,
                    "the Pusher protocol has no binary messages",
                ),
                cork,
            ),
            (None, Protocol::V1) => self.hub.on_v1_binary(&self.entry, cork),
            (None, _) => self.hub.on_binary(self.entry.id, data, cork),
        }
    }

    /// A message over the connection's rate limit was dropped: say so in the protocol's words
    /// (`payload`: the message, for the command id it names).
    pub(crate) fn over_limit(&self, payload: &[u8], cork: &mut HubCork) {
        let why = "message dropped: over this connection's rate limit";
        match (&self.pusher, self.entry.info.protocol) {
            (Some(_), _) => self.hub.to_pusher(
                self.entry.id,
                pusher::error(pusher::Code::ClientEventRate, why),
                cork,
            ),
            (None, Protocol::V1) => {
                let id = std::str::from_utf8(payload).ok().and_then(v1::command_id);
                let frame = v1::error(id.as_deref(), v1::ErrorCode::RateLimited, why);
                // A reply like any other: after a `publish` ack that waits for the backplane.
                self.hub.reply(self.entry.id, frame, cork);
            }
            // A plain client has no error frame: the message is dropped (and counted).
            (None, _) => {}
        }
    }

    /// Whether replies of this connection wait for the backplane past the mark (it should
    /// read no more for now).
    pub(crate) fn replies_over_mark(&self) -> bool {
        self.hub.replies_over_mark(self.entry.id)
    }

    /// How the connection is closed when the server shuts down: plain clients keep the
    /// original's 1001; `wshub.v1` clients get 1012 and Pusher clients 4200, the codes their
    /// clients take as "reconnect now" (to another node, with their positions).
    pub(crate) fn shutdown_reason(&self) -> CloseReason {
        match (&self.pusher, self.entry.info.protocol) {
            (Some(_), _) => CloseReason::Restarting(4200),
            (None, Protocol::V1) => CloseReason::Restarting(1012),
            (None, _) => CloseReason::GoingAway,
        }
    }

    /// The connection ended (`outcome`: why, and its close code): the protocol's state is
    /// undone (presence, sign-in) and the connection unregistered. Called once, by the task
    /// that owns the connection.
    pub(crate) fn closed(&self, outcome: (&'static str, u16)) {
        match &self.pusher {
            Some(session) => self.hub.pusher_closed(&self.entry, session, outcome),
            None => self.hub.unregister(&self.entry, outcome),
        }
    }
}
