//! Requests from one node to another: what lets a request that reached the wrong node be
//! answered by the right one (an HTTP session's POSTs and polls, behind a balancer without
//! sticky sessions).
//!
//! The engine gives each node a mailbox (a Redis pub/sub channel, a NATS subject, a queue of
//! the in-process bus) and carries opaque mail to it ([`Engine::send_to`](super::Engine::send_to)).
//! Everything else is here, the same for every engine: a request gets an id, waits for the
//! reply with that id (or a deadline), and the node that receives it hands it to the
//! [`Service`] its hub registered and mails back the answer. Nothing here knows what the
//! payloads mean.
//!
//! Bounded both ways: at most [`MAX_PENDING`] requests of this node wait for answers (more
//! fail at once with [`RelayError::Busy`]), and at most [`MAX_SERVING`] requests of other
//! nodes are served at once (more are answered "busy" without being served).
//!
//! Mail on the wire: one byte of kind (1 request, 2 reply, 3 refused), the request id (8 bytes,
//! big-endian), the sender's node id (one byte of length, then the id), then the payload.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{oneshot, Semaphore};

use super::{BackplaneError, Cluster, Handler};

/// This node's requests waiting for answers, at most.
pub const MAX_PENDING: usize = 4096;

/// Other nodes' requests served at once, at most.
pub const MAX_SERVING: usize = 1024;

/// What answers the requests other nodes relay to this one (registered by the hub's owner:
/// the HTTP transport answers for its sessions).
pub trait Service: Send + Sync + 'static {
    /// The answer to `request` (whatever it is, the requester gets it).
    fn serve(&self, request: Bytes) -> Pin<Box<dyn Future<Output = Bytes> + Send>>;
}

/// Why a relayed request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    /// The mail could not be sent (the engine is unreachable).
    #[error("the other node cannot be reached: {0}")]
    Unreachable(#[from] BackplaneError),
    /// No answer within the deadline (the node is gone, or too slow).
    #[error("the other node did not answer in time")]
    TimedOut,
    /// Too many requests wait already, here or there.
    #[error("too many requests are relayed between nodes now: try again shortly")]
    Busy,
    /// The other node serves no such requests (it has no HTTP transport mounted).
    #[error("the other node does not answer relayed requests")]
    Refused,
}

const REQUEST: u8 = 1;
const REPLY: u8 = 2;
const REFUSED: u8 = 3;
/// A refusal's payload: the node is busy (otherwise it has no service).
const BUSY: &[u8] = b"busy";

/// A node's relay: its pending requests and how many it serves.
pub(crate) struct Relay {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, RelayError>>>>,
    serving: Arc<Semaphore>,
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            serving: Arc::new(Semaphore::new(MAX_SERVING)),
        }
    }
}

fn mail(kind: u8, id: u64, from: &str, payload: &[u8]) -> Bytes {
    let from = &from.as_bytes()[..from.len().min(255)];
    let mut out = BytesMut::with_capacity(10 + from.len() + payload.len());
    out.put_u8(kind);
    out.put_u64(id);
    out.put_u8(from.len() as u8);
    out.put_slice(from);
    out.put_slice(payload);
    out.freeze()
}

/// A mail's kind, id, sender and payload; `None` when it is not one.
fn parse(m: &Bytes) -> Option<(u8, u64, String, Bytes)> {
    let kind = *m.first()?;
    let id = u64::from_be_bytes(m.get(1..9)?.try_into().ok()?);
    let len = usize::from(*m.get(9)?);
    let end = 10usize.checked_add(len)?;
    let from = std::str::from_utf8(m.get(10..end)?).ok()?.to_owned();
    Some((kind, id, from, m.slice(end..)))
}

/// Forgets a pending request however its waiter ends (answered, timed out, or dropped).
struct Waiting<'a>(&'a Relay, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().remove(&self.1);
    }
}

impl Cluster {
    /// Sends `request` to node `node`'s service and waits at most `wait` for its answer.
    ///
    /// # Errors
    /// [`RelayError`]: the mail could not be sent, no answer in time, too many waiting, or the
    /// node serves no such requests.
    pub async fn request(
        &self,
        node: &str,
        request: &[u8],
        wait: Duration,
    ) -> Result<Bytes, RelayError> {
        let id = self.relay.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.relay.pending.lock();
            if pending.len() >= MAX_PENDING {
                return Err(RelayError::Busy);
            }
            pending.insert(id, tx);
        }
        let _waiting = Waiting(&self.relay, id);
        let sent = mail(REQUEST, id, self.node(), request);
        tokio::time::timeout(wait, async {
            self.engine().send_to(node, sent).await?;
            rx.await.unwrap_or(Err(RelayError::TimedOut))
        })
        .await
        .unwrap_or(Err(RelayError::TimedOut))
    }

    /// Mail from the engine: a request to serve (in a task of its own), or an answer to one of
    /// this node's.
    pub(crate) fn on_mail(self: &Arc<Self>, h: &Arc<dyn Handler>, m: Bytes) {
        let Some((kind, id, from, payload)) = parse(&m) else {
            tracing::warn!("unreadable mail from another node ignored");
            return;
        };
        match kind {
            REQUEST => self.serve(h, id, from, payload),
            REPLY | REFUSED => {
                let Some(tx) = self.relay.pending.lock().remove(&id) else {
                    return; // Answered too late: its requester stopped waiting.
                };
                let answer = if kind == REPLY {
                    Ok(payload)
                } else if payload == BUSY {
                    Err(RelayError::Busy)
                } else {
                    Err(RelayError::Refused)
                };
                let _ = tx.send(answer);
            }
            _ => tracing::warn!(kind, "mail of an unknown kind from another node ignored"),
        }
    }

    fn serve(self: &Arc<Self>, h: &Arc<dyn Handler>, id: u64, from: String, request: Bytes) {
        let refuse = |why: &[u8], from: String| {
            let c = self.clone();
            let m = mail(REFUSED, id, self.node(), why);
            tokio::spawn(async move {
                let _ = c.engine().send_to(&from, m).await;
            });
        };
        let Some(service) = h.relay_service() else {
            return refuse(b"none", from);
        };
        let Ok(permit) = self.relay.serving.clone().try_acquire_owned() else {
            return refuse(BUSY, from);
        };
        let c = self.clone();
        tokio::spawn(async move {
            let answer = service.serve(request).await;
            drop(permit);
            let m = mail(REPLY, id, c.node(), &answer);
            if let Err(e) = c.engine().send_to(&from, m).await {
                tracing::debug!(error = %e, node = %from, "a relayed request's answer was not sent");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_round_trips_and_junk_is_not_mail() {
        let m = mail(REPLY, 7, "node-1", b"hello");
        let (kind, id, from, payload) = parse(&m).unwrap();
        assert_eq!(
            (kind, id, from.as_str(), &payload[..]),
            (REPLY, 7, "node-1", &b"hello"[..])
        );
        for junk in [&b""[..], b"\x01", b"\x01\0\0\0\0\0\0\0\x07\x09ab"] {
            assert!(parse(&Bytes::copy_from_slice(junk)).is_none(), "{junk:?}");
        }
    }
}
