//! The write path (DESIGN.md guarantees 5 and 6).
//!
//! Every write a non-root node receives, from its own clients or from a
//! child, whatever its `ack`, joins the node's one FIFO **uplink** and gets
//! a [`WriteId`](crate::store::WriteId) if it has none (this node, its incarnation, the next
//! sequence number). One task sends the uplink's head to the parent as a
//! batch, one batch at a time, and retries it (to whatever parent the node
//! has by then) until the parent answers: nothing is dropped while the node
//! lives. The parent appends the batch to its own uplink in order, so the
//! order in which a node received its writes is the order they reach the
//! root, hop after hop.
//!
//! A parent answers an ack=parent write `Accepted` as soon as it is queued,
//! and an ack=root write with the root's commit once that comes back, or
//! `InProgress` if it takes longer than [`HOP_WAIT`]. Either way the write
//! stays the sender's too (**unconfirmed**) until it hears the outcome:
//! the parent owes it a [`Notice`](crate::wire::Notice), sent in the answer to the sender's
//! next request (an empty batch is a poll that waits for one). When the
//! link to the parent changes (a new parent, or a reset: the parent's
//! place or epoch changed, or it restarted) the sender sends its
//! unconfirmed writes again, first and in order, before anything newer.
//! So a write taken by a parent that then loses its way (it became our
//! child, it was reaped while paused) is never lost while we live, and the
//! root sees a node's writes in order on every path. Each hop remembers
//! the ids it holds and, for a minute, the outcomes it settled
//! (`settled`), so a resend is not queued twice (one later than that goes
//! on to the root, which knows).
//!
//! The root commits each id once ([`Outcomes`]): a resend, or the same
//! write arriving by a second path after a re-attachment, gets the first
//! outcome; a write from a node older than one already committed from that
//! node (it was overtaken on another path) is refused, never committed out
//! of order. The root pushes each commit to every holder but the child it
//! came from, which learns it from the answer (or, if that is lost, from
//! the answer to the resend its uplink makes until answered). Each hop on
//! the way held the key as expected while the write was in flight,
//! records the hop below as a holder when the commit comes back, and
//! pushes it down the writer's branch, so a writer whose reply was lost
//! still learns it.
//!
//! Split by side: `uplink` sends this node's writes up (the queue, the
//! sender task, settling a commit on its way back down); `accept` is a
//! parent taking a child's batch; `notices` holds the outcomes a parent
//! owes its children and how the sender takes them; `commit` is the root's
//! commit, each id once, made durable before anything is answered. This
//! file is a client's write and the body of its answer; it must not reach
//! into the uplink's state.

mod accept;
mod commit;
mod notices;
mod settled;
mod uplink;

use std::time::Duration;

use bytes::Bytes;

use super::Node;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{Condition, Update};
pub use crate::wire::Ack;
use crate::wire::WriteResult;

pub(super) use commit::Outcomes;
pub(super) use uplink::Uplink;
pub use uplink::BATCH_BYTES;

/// Longest time to live a write may ask for: ten years.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 86_400;

/// How long a parent holds a child's ack=root write request waiting for
/// the root before it answers `InProgress`.
pub const HOP_WAIT: Duration = Duration::from_secs(10);

/// How long a client's write waits for its acknowledgement before it is
/// answered 503 `write_in_flight` (the write stays queued and is delivered).
const CLIENT_WAIT: Duration = Duration::from_secs(30);

impl Node {
    /// A client's `PUT`/`POST` (`value` is `Some`) or `DELETE` (`None`),
    /// from either front door (`/kv`, RESP): expiring `ttl_ms` from now,
    /// committed by the root only if `cond` holds there. A conditional
    /// write is answered once the root has decided it, whatever `ack`
    /// says: its answer is that decision.
    pub async fn write(
        &self,
        key: &str,
        value: Option<Bytes>,
        ttl_ms: Option<u64>,
        ack: Ack,
        cond: Condition,
    ) -> Result<WriteResult> {
        let place = match self.place() {
            Ok(place) => place,
            // A standby root has no place; it passes the write on with an
            // id of its own (`Node::standby_write`), for every front door.
            Err(_) if self.is_following() => return self.standby_write(key, value, ttl_ms, ack, cond).await,
            Err(e) => return Err(e),
        };
        // Counted once taken: a try the failover wait repeats is not.
        Metrics::inc(&self.inner.metrics.writes);
        let expires_at = ttl_ms.map(|ms| now_ms().saturating_add(ms));
        let update = Update { key: key.to_string(), version: 0, value, expires_at };
        let ack = if cond.is_conditional() { Ack::Root } else { ack };
        if place.topology.is_root() {
            if let Some(leader) = self.foreign_leader(key)? {
                return self.proxy_write(&leader, key, update.value, ttl_ms, ack, cond).await;
            }
            let value = update.value.clone();
            return match self.commit_own(update, ack, cond).await {
                // Handed over to another group while it waited on the
                // move: it goes to the new owner, as if it came after.
                Err(e) if e.is_wrong_group() => match self.foreign_leader(key)? {
                    Some(leader) => self.proxy_write(&leader, key, value, ttl_ms, ack, cond).await,
                    None => Err(e),
                },
                done => done,
            };
        }
        let rx = self.join_own(update, ack, cond, place.topology.id)?;
        match tokio::time::timeout(CLIENT_WAIT, rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::WriteInFlight { key: key.to_string() }),
        }
    }
}

/// A write's result as an error its client hears, whichever front door
/// (`/kv`, RESP) it came through; `None` when it was not refused.
pub fn refusal(key: &str, result: &WriteResult) -> Option<Error> {
    match *result {
        WriteResult::Failed { ref error } => Some(Error::WriteRefused { key: key.to_string(), reason: error.clone() }),
        WriteResult::InsyncBelowMin { have, need } => Some(Error::InsyncBelowMin { have, need }),
        WriteResult::InsyncBelowMinAfter { version, have, need } => {
            Some(Error::InsyncBelowMinAfter { version, have, need })
        }
        WriteResult::ConditionFailed { current } => Some(Error::PreconditionFailed { key: key.to_string(), current }),
        WriteResult::RootFull { bytes, max } => Some(Error::RootFull { key: key.to_string(), bytes, max }),
        WriteResult::SlotMoving { slot } => Some(Error::SlotMoving { key: key.to_string(), slot }),
        WriteResult::Committed { .. } | WriteResult::Absent | WriteResult::Accepted | WriteResult::InProgress => None,
    }
}

/// The JSON body of a write's answer.
pub fn answer_body(result: &WriteResult, ack: Ack) -> serde_json::Value {
    match (result, ack) {
        (WriteResult::Committed { version, .. }, Ack::Root) => serde_json::json!({ "version": version }),
        (WriteResult::Committed { version, .. }, Ack::Parent) => {
            serde_json::json!({ "ack": "parent", "version": version })
        }
        _ => serde_json::json!({ "ack": ack.as_str() }),
    }
}

#[cfg(test)]
mod tests;
