//! A parent's side of `POST /internal/write`: a child's batch is checked,
//! then joined to this node's uplink in order (each id once, however often
//! it is sent) or, at the root, committed; and answered within
//! [`HOP_WAIT`], with the notices owed to the child.
//!
//! Must not wait past [`HOP_WAIT`] for an outcome (it answers
//! `InProgress` and owes a notice instead), nor queue one write id twice.

use tokio::sync::oneshot;

use super::uplink::{Pending, Waiters};
use super::HOP_WAIT;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::store::{check_key, NodeId, WriteId};
use crate::wire::{Write, WriteResult, WriteResults};

/// What joining the uplink gave one write.
enum Joined {
    /// Settled before: its outcome.
    Known(WriteResult),
    /// Queued (now or before); the receiver gets the outcome.
    Waiting(oneshot::Receiver<WriteResult>, WriteId),
    /// Queued (now or before); nobody waits here (ack=parent from a child).
    Queued,
}

impl Node {
    /// Queues writes from `child`, in order, each once however often it is
    /// sent. An ack=parent write is answered `Accepted` before its outcome
    /// is known, so the child is owed a notice of it.
    fn join_forwarded(&self, child: NodeId, writes: Vec<Write>) -> Result<Vec<Joined>> {
        let pushes = self.place().map(|p| p.coherence.pushes()).unwrap_or(false);
        let mut guard = self.inner.uplink.state.lock();
        let s = &mut *guard;
        if s.draining {
            return Err(Error::ShuttingDown);
        }
        let mut joined = Vec::with_capacity(writes.len());
        let mut queued = false;
        for w in writes {
            if let Some(result) = s.settled.get(&w.id) {
                joined.push(Joined::Known(result));
                continue;
            }
            let (tx, rx) = oneshot::channel();
            let mut fresh = None;
            let waiters = match s.waiting.entry(w.id) {
                std::collections::hash_map::Entry::Occupied(held) => held.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    if pushes {
                        self.inner.store.expect_for(&w.update.key, child);
                    } else {
                        self.inner.store.expect(&w.update.key);
                    }
                    fresh = Some(Pending::new(w.clone(), Some(child)));
                    slot.insert(Waiters::default())
                }
            };
            if w.ack_root {
                waiters.txs.push(tx);
                joined.push(Joined::Waiting(rx, w.id));
            } else {
                if !waiters.owed.contains(&child) {
                    waiters.owed.push(child);
                }
                joined.push(Joined::Queued);
            }
            if let Some(p) = fresh {
                s.enqueue(p);
                queued = true;
            }
        }
        drop(guard);
        if queued {
            // Only then: a wake cancels our own poll of the parent.
            self.inner.uplink.wake.notify_one();
        }
        Ok(joined)
    }

    /// `POST /internal/write` from `child`: the results, and for each
    /// whether the child may store it as current (see [`Node::confirm`]),
    /// then the notices owed to it past `seen` (the highest it has). An
    /// empty batch is a poll: it waits (at most [`HOP_WAIT`]) for a notice.
    pub async fn accept_writes(&self, child: NodeId, writes: Vec<Write>, seen: u64) -> Result<WriteResults> {
        let place = self.place()?;
        if place.topology.child(child).is_none() {
            return Err(Error::NotChild { child, me: place.topology.id });
        }
        for w in &writes {
            check_key(&w.update.key).map_err(Error::BadKey)?;
            if place.topology.is_root() && !self.slot_in_transit(&w.update.key) {
                // Nothing of the batch is taken: the router sends it again
                // to the owners once it has read the map (a resend too: the
                // new owner has its outcome from the move). A slot moving
                // out or coming in: its writes are answered `SlotMoving`,
                // and the rest of the batch commits.
                self.check_own_slot(&w.update.key)?;
            }
        }
        self.inner.uplink.state.lock().acked(child, seen);
        let poll = writes.is_empty();
        let keys: Vec<String> = writes.iter().map(|w| w.update.key.clone()).collect();
        let results = self.hop_or_commit(child, writes, place.topology.is_root()).await?;
        let confirmed = keys.iter().zip(&results).map(|(key, r)| self.confirm(key, r, child)).collect();
        if poll {
            self.await_notice(child).await;
        }
        Ok(WriteResults { results, confirmed, notices: self.notices_for(child) })
    }

    /// `POST /internal/write?standby=ID` at the leader: writes a standby
    /// root took from its clients, each with the standby's write id, so a
    /// resend after a lost answer or a failover is committed once, and in
    /// the order the standby sends them (one at a time). Nothing is owed
    /// back: the standby waits for each outcome, and holds no keys as a
    /// child (its stream brings it every commit).
    pub async fn accept_standby_writes(&self, standby: NodeId, writes: Vec<Write>) -> Result<WriteResults> {
        let place = self.place()?;
        if !place.topology.is_root() {
            return Err(Error::NotRoot { root: place.root_url.clone() });
        }
        if !self.streams_to(standby) {
            return Err(Error::BadRequest(format!("node {standby} is not a standby root of this leader")));
        }
        for w in &writes {
            check_key(&w.update.key).map_err(Error::BadKey)?;
        }
        let results = self.commit_batch(None, writes).await?;
        let confirmed = vec![false; results.len()];
        Ok(WriteResults { results, confirmed, notices: Vec::new() })
    }

    /// Commits `writes` here (the root) or queues them on our uplink and
    /// waits for their outcomes as [`HOP_WAIT`] allows.
    async fn hop_or_commit(&self, child: NodeId, writes: Vec<Write>, root: bool) -> Result<Vec<WriteResult>> {
        if root {
            return self.commit_batch(Some(child), writes).await;
        }
        let joined = self.join_forwarded(child, writes)?;
        let deadline = tokio::time::Instant::now() + HOP_WAIT;
        let mut results = Vec::with_capacity(joined.len());
        for j in joined {
            results.push(match j {
                Joined::Known(result) => result,
                Joined::Queued => WriteResult::Accepted,
                Joined::Waiting(rx, id) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) | Err(_) => self.in_progress(child, id),
                },
            });
        }
        Ok(results)
    }

    /// An ack=root write from `child` that the wait did not see decided:
    /// `InProgress`, and a notice owed once it is; or its outcome, if it
    /// was decided meanwhile.
    fn in_progress(&self, child: NodeId, id: WriteId) -> WriteResult {
        let mut s = self.inner.uplink.state.lock();
        if let Some(waiters) = s.waiting.get_mut(&id) {
            if !waiters.owed.contains(&child) {
                waiters.owed.push(child);
            }
            return WriteResult::InProgress;
        }
        s.settled.get(&id).unwrap_or(WriteResult::InProgress)
    }
}
