//! Notices: the outcomes a parent owes each child it answered before they
//! were known, numbered from the clock, kept until the child says it has
//! them and sent with the answer to its next request (an empty batch waits
//! for one); and the sender's side, taking the notices its parent sends.
//!
//! Must not drop a notice the child has not acknowledged, nor take one
//! heard over an earlier link (the writes go again over the new one).

use super::uplink::{Link, UplinkState};
use super::HOP_WAIT;
use crate::clock::now_us;
use crate::node::Node;
use crate::store::{Answer, NodeId, WriteId};
use crate::wire::{Notice, WriteResult};

/// An outcome owed to a child, until it says it has it.
pub(super) struct Owed {
    pub(super) seq: u64,
    pub(super) id: WriteId,
    key: String,
    result: WriteResult,
}

impl UplinkState {
    /// Owes `child` the outcome of `id`.
    pub(super) fn owe(&mut self, child: NodeId, id: WriteId, key: &str, result: &WriteResult) {
        if self.notice_seq == 0 {
            // Numbers start at the clock, so a child's `seen` from an
            // earlier process at the same address never covers ours.
            self.notice_seq = now_us();
        }
        self.notice_seq += 1;
        let owed = Owed { seq: self.notice_seq, id, key: key.to_string(), result: result.clone() };
        self.notices.entry(child).or_default().push_back(owed);
    }

    /// `child` has every notice up to `seen`: forgets them.
    pub(super) fn acked(&mut self, child: NodeId, seen: u64) {
        if let Some(q) = self.notices.get_mut(&child) {
            while q.front().is_some_and(|o| o.seq <= seen) {
                q.pop_front();
            }
            if q.is_empty() {
                self.notices.remove(&child);
            }
        }
    }
}

impl Node {
    /// Waits until a notice is owed to `child`, at most [`HOP_WAIT`].
    pub(super) async fn await_notice(&self, child: NodeId) {
        let deadline = tokio::time::Instant::now() + HOP_WAIT;
        let uplink = &self.inner.uplink;
        loop {
            let noticed = uplink.noticed.notified();
            if uplink.state.lock().notices.contains_key(&child) {
                return;
            }
            let mut shutdown = self.subscribe_shutdown();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = shutdown.changed() => return,
                _ = noticed => {}
            }
        }
    }

    /// Every notice owed to `child`, each with whether the child may store
    /// the commit as current.
    pub(super) fn notices_for(&self, child: NodeId) -> Vec<Notice> {
        let owed: Vec<(u64, WriteId, String, WriteResult)> = {
            let s = self.inner.uplink.state.lock();
            let Some(q) = s.notices.get(&child) else { return Vec::new() };
            q.iter().map(|o| (o.seq, o.id, o.key.clone(), o.result.clone())).collect()
        };
        owed.into_iter()
            .map(|(seq, id, key, result)| Notice { seq, id, confirmed: self.confirm(&key, &result, child), result })
            .collect()
    }

    /// Whether a child may store `result` of its write of `key` as current:
    /// a commit, and the child is recorded as a holder of the key here, on
    /// an entry that is current, now (push mode; ttl mode needs no record).
    /// Checked when answering, not when the commit passed through: an
    /// answer can come from the outcomes a hop remembers, or from a batch
    /// settled before (or skipped after) a reset of ours that the child
    /// has heard of before it sent this request; stored as current, its
    /// copy would then miss every later change. A reset after this check
    /// is covered: the child hears of it after it sent the request, and
    /// resets too.
    pub(super) fn confirm(&self, key: &str, result: &WriteResult, child: NodeId) -> bool {
        if result.version().is_none() {
            return false;
        }
        match self.place() {
            Ok(place) if place.coherence.pushes() => self.inner.store.holds_current(key, child),
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// Outcomes the parent owed us, heard over `link`.
    pub(super) fn take_notices(&self, notices: Vec<Notice>, link: &Link) {
        self.take_notices_from(notices, link, None)
    }

    /// [`Node::take_notices`] from `from`: the parent (`None`), or at a
    /// router another group's leader, which numbers its notices itself.
    pub(super) fn take_notices_from(&self, notices: Vec<Notice>, link: &Link, from: Option<NodeId>) {
        for n in notices {
            let p = {
                let mut s = self.inner.uplink.state.lock();
                if s.link.as_ref() != Some(link) {
                    return; // a new link: all of it goes again
                }
                match from {
                    None => s.seen = s.seen.max(n.seq),
                    Some(leader) => {
                        let seen = s.seen_by.entry(leader).or_default();
                        *seen = (*seen).max(n.seq);
                    }
                }
                if matches!(n.result, WriteResult::Accepted | WriteResult::InProgress) {
                    continue; // not an outcome
                }
                s.unhand(&n.id)
            };
            if let Some(p) = p {
                self.settle(&p, &n.result, Answer { sent_in: link.generation, confirmed: n.confirmed });
                self.resolve(p, n.result, true);
            }
        }
    }
}
