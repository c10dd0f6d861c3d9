//! The sender side of the write path: this node's one FIFO uplink (the
//! queue, what the parent took without an outcome yet, the outcomes
//! recently settled), the sender task that sends its head as a batch and
//! retries it until the parent answers, and settling a commit that comes
//! back down through this node.
//!
//! Must not commit (only the root does, in `commit.rs`), and must not drop
//! a write while the node lives: a write leaves the uplink only with its
//! outcome.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use super::notices::Owed;
use super::settled::Settled;
use super::Ack;
use crate::clock::{mono_ms, Time};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, Upstream};
use crate::node::routes::Route;
use crate::node::{Node, FROZEN_WAIT};
use crate::slots::{slot_of, Slot};
use crate::store::{Answer, Applied, Condition, NodeId, Update, WriteId};
use crate::wire::{self, Peer, Write, WriteResult, WriteResults};

/// How long an uplink with nothing to send waits before it polls its
/// parent for the outcomes of its unconfirmed writes.
const POLL_AFTER: Duration = Duration::from_millis(100);
/// How long the uplink waits for its parent's answer (longer than HOP_WAIT).
pub(super) const UPLINK_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest wait before a failed batch is tried again (while the tree
/// settles, a quarter of it).
pub(super) const RETRY_CAP: Duration = Duration::from_secs(1);

/// After an unconfirmed write's outcome was heard, how long pushes for its
/// key are still welcome here though the key may not be held (the push of
/// the commit can come after the notice).
const ACCEPTED_LINGER_MS: u64 = 60_000;
/// Most writes in one uplink batch, and most bytes (at least one write is
/// always sent, whatever its size: values are bounded by
/// `--max-value-bytes`, whose ceiling keeps one write under the internal
/// body limit).
const UPLINK_BATCH: usize = 1024;
pub const BATCH_BYTES: usize = 4 << 20;

/// How soon a write a root answered `SlotMoving` goes up again (its
/// slot's later writes wait with it; other slots' go on).
const MOVING_RETRY_MS: u64 = 10;

/// A write in this node's uplink: who gave it to us (`None`: our client).
pub(super) struct Pending {
    pub(super) write: Write,
    pub(super) child: Option<NodeId>,
    /// When a root first answered it `SlotMoving` (monotonic ms; 0: not
    /// yet): it is given up [`FROZEN_WAIT`] after.
    moving_since: u64,
    /// A parent took it once without its outcome: a copy of it may still
    /// be on its way by that path, so it is never given up here.
    handed_before: bool,
}

impl Pending {
    pub(super) fn new(write: Write, child: Option<NodeId>) -> Pending {
        Pending { write, child, moving_since: 0, handed_before: false }
    }
}

/// The parent the uplink sends to, and the store generation it sends in.
/// Writes the parent took over one link are sent again over the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Link {
    pub(super) parent: Peer,
    pub(super) generation: u64,
}

/// Who waits for one write's outcome.
#[derive(Default)]
pub(super) struct Waiters {
    /// In-request waiters: our client (answered `Accepted` early for an
    /// ack=parent write), a child's ack=root request.
    pub(super) txs: Vec<oneshot::Sender<WriteResult>>,
    /// Children that were answered before the outcome was known: each
    /// gets a [`Notice`](crate::wire::Notice) of it.
    pub(super) owed: Vec<NodeId>,
}

#[derive(Default)]
pub(super) struct UplinkState {
    pub(super) queue: VecDeque<Pending>,
    /// Writes taken by the sender and not answered yet.
    in_flight: usize,
    /// Writes the parent took whose outcome we have not heard, in the
    /// order they were taken (keyed by `handed_seq`), and their ids.
    pub(super) handed: BTreeMap<u64, Pending>,
    pub(super) handed_ids: HashMap<WriteId, u64>,
    handed_seq: u64,
    /// The link `handed` went over, and the highest notice heard on it.
    pub(super) link: Option<Link>,
    pub(super) seen: u64,
    /// At a router, the highest notice heard from each other group's
    /// leader (by node id) over this link: each numbers its own.
    pub(super) seen_by: HashMap<NodeId, u64>,
    /// Every id we hold (queued, in flight or unconfirmed), with whoever
    /// waits for its outcome.
    pub(super) waiting: HashMap<WriteId, Waiters>,
    /// Outcomes of recently settled ids, for resends (bounded by age and
    /// count, see `settled`).
    pub(super) settled: Settled,
    next_seq: u64,
    /// Outcomes owed to each child, oldest first, and the last number given.
    pub(super) notices: HashMap<NodeId, VecDeque<Owed>>,
    pub(super) notice_seq: u64,
    /// Set on SIGTERM: no new writes are taken.
    pub(super) draining: bool,
    /// Slots a root answered `SlotMoving` for (frozen for a move), and
    /// when their writes go up again (monotonic ms): until then they stay
    /// queued, in order, and other writes pass them.
    moving: HashMap<Slot, u64>,
}

impl UplinkState {
    pub(super) fn hand(&mut self, mut p: Pending) {
        p.handed_before = true;
        self.handed_seq += 1;
        self.handed_ids.insert(p.write.id, self.handed_seq);
        self.handed.insert(self.handed_seq, p);
    }

    pub(super) fn unhand(&mut self, id: &WriteId) -> Option<Pending> {
        let at = self.handed_ids.remove(id)?;
        self.handed.remove(&at)
    }

    /// Moves to `link`: what the last link's parent took goes again, first.
    pub(super) fn relink(&mut self, link: &Link) -> usize {
        if self.link.as_ref() == Some(link) {
            return 0;
        }
        self.link = Some(link.clone());
        self.seen = 0;
        self.seen_by.clear();
        self.handed_ids.clear();
        let again = std::mem::take(&mut self.handed);
        let n = again.len();
        for (_, p) in again.into_iter().rev() {
            self.queue.push_front(p);
        }
        n
    }
}

/// This node's FIFO of writes on their way to the root.
#[derive(Default)]
pub(in crate::node) struct Uplink {
    pub(super) state: Mutex<UplinkState>,
    /// Wakes the sender (a write queued, the link changed) and the drain
    /// (a batch settled), and children's polls (a notice owed).
    pub(super) wake: Notify,
    settled: Notify,
    pub(super) noticed: Notify,
}

impl Uplink {
    pub(in crate::node) fn len(&self) -> usize {
        let s = self.state.lock();
        s.queue.len() + s.in_flight
    }

    pub(in crate::node) fn unconfirmed(&self) -> usize {
        self.state.lock().handed.len()
    }

    /// Settled ids remembered for resends, and the bytes they take (those
    /// past their time are forgotten first, as on a node that settles
    /// nothing new).
    pub(in crate::node) fn remembered(&self) -> (usize, usize) {
        let mut s = self.state.lock();
        s.settled.expire(mono_ms());
        (s.settled.len(), s.settled.bytes())
    }

    /// The sender should look again: the link to the parent may have changed.
    pub(in crate::node) fn poke(&self) {
        self.wake.notify_one();
    }

    /// Forgets what is owed to nodes that are no longer children.
    pub(in crate::node) fn keep_children(&self, children: &[Peer]) {
        self.state.lock().notices.retain(|id, _| children.iter().any(|c| c.id == *id));
    }
}

/// Whether a parent refused a write batch for a flag it does not know:
/// one built before conditional writes.
fn refuses_conditions(e: &Error) -> bool {
    matches!(e, Error::Upstream { status: 400, body, .. } if body.contains(wire::UNKNOWN_FLAGS))
}

impl Node {
    /// A new write id of this node's: `me`, this process's incarnation, and
    /// the next of the one sequence all its writes share (through its
    /// uplink, or as a standby root).
    pub(in crate::node) fn next_write_id(&self, me: NodeId) -> WriteId {
        let mut s = self.inner.uplink.state.lock();
        s.next_seq += 1;
        WriteId { origin: me, incarnation: self.inner.incarnation, seq: s.next_seq }
    }

    /// Queues a write from this node's client with a new id.
    pub(super) fn join_own(
        &self,
        update: Update,
        ack: Ack,
        cond: Condition,
        me: NodeId,
    ) -> Result<oneshot::Receiver<WriteResult>> {
        let mut s = self.inner.uplink.state.lock();
        if s.draining {
            return Err(Error::ShuttingDown);
        }
        s.next_seq += 1;
        let id = WriteId { origin: me, incarnation: self.inner.incarnation, seq: s.next_seq };
        let (tx, rx) = oneshot::channel();
        self.inner.store.expect(&update.key);
        s.waiting.insert(id, Waiters { txs: vec![tx], owed: Vec::new() });
        s.queue.push_back(Pending::new(Write { update, id, ack_root: ack == Ack::Root, cond }, None));
        drop(s);
        self.inner.uplink.wake.notify_one();
        Ok(rx)
    }

    /// Sends the uplink's head to the parent, batch after batch, until the
    /// node stops; retries a batch until the parent answers. With nothing
    /// to send and writes unconfirmed, polls the parent for their outcomes.
    pub(in crate::node) async fn run_uplink(self) {
        let uplink = &self.inner.uplink;
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0u32;
        let mut last_changing = false;
        loop {
            let Some(link) = self.link() else {
                // Not placed yet (or the root): nothing can go up.
                if self.is_shutting_down() {
                    return;
                }
                let mut shutdown = self.subscribe_shutdown();
                tokio::select! {
                    _ = uplink.wake.notified() => {}
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            };
            let (batch, seen) = self.take_batch(&link);
            if batch.is_empty() {
                if self.is_shutting_down() {
                    return;
                }
                self.idle(&link, seen).await;
                continue;
            }
            let hold = self.args().fault_uplink_delay_ms;
            if hold > 0 {
                tokio::time::sleep(Duration::from_millis(hold)).await;
            }
            match self.send_writes(&batch, &link, seen).await {
                Ok(answers) => {
                    if failures > 0 {
                        log::info!("the uplink delivers again after {failures} failed tries");
                    }
                    failures = 0;
                    last_changing = false;
                    backoff = Duration::from_millis(50);
                    let delay = self.args().fault_settle_delay_ms;
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    // Writes held for a frozen slot stay counted until they
                    // are queued again (a drain must not see them gone).
                    let held = answers.results.iter().filter(|r| matches!(r, WriteResult::SlotMoving { .. })).count();
                    self.inner.uplink.state.lock().in_flight -= batch.len() - held;
                    let confirmed = answers.confirmed.iter().copied().chain(std::iter::repeat(false));
                    let mut moving = Vec::new();
                    for ((p, result), confirmed) in batch.into_iter().zip(answers.results).zip(confirmed) {
                        match result {
                            WriteResult::Accepted | WriteResult::InProgress => self.hand(p, &result),
                            // Only a root answers it: undecided, again shortly.
                            WriteResult::SlotMoving { slot } => moving.push((p, slot)),
                            result => {
                                self.settle(&p, &result, Answer { sent_in: link.generation, confirmed });
                                self.resolve(p, result, false);
                            }
                        }
                    }
                    self.hold_moving(moving);
                    self.take_notices(answers.notices, &link);
                }
                Err(e) if refuses_conditions(&e) && batch.iter().any(|p| p.write.cond.is_conditional()) => {
                    // A parent built before conditional writes: they cannot
                    // go up until it is upgraded. Decided here, not
                    // retried for ever: nothing of the batch was taken.
                    let (conditional, rest): (Vec<_>, Vec<_>) =
                        batch.into_iter().partition(|p| p.write.cond.is_conditional());
                    log::warn!(
                        "node {} ({}) refuses conditional writes (built before them): {} refused here",
                        link.parent.id,
                        link.parent.url,
                        conditional.len()
                    );
                    self.inner.uplink.state.lock().in_flight -= conditional.len();
                    for p in conditional {
                        let error = format!(
                            "node {} on the way to the root does not know conditional writes yet (upgrade it); \
                             nothing was written",
                            link.parent.id
                        );
                        self.resolve(p, WriteResult::Failed { error }, false);
                    }
                    self.requeue(rest);
                }
                Err(e) => {
                    failures += 1;
                    let changing = e.is_tree_changing();
                    if failures == 1 && changing {
                        log::info!("{} writes go up again once this node has its new place: {e}", batch.len());
                    } else if failures == 1 || failures.is_multiple_of(20) || changing != last_changing {
                        log::warn!("sending {} writes up failed (try {failures}; retrying): {e}", batch.len());
                    }
                    last_changing = changing;
                    self.requeue(batch);
                    if self.is_shutting_down() {
                        return;
                    }
                    if self.moved_during(&link, backoff).await {
                        // A new parent (or a reset): try it at once.
                        backoff = Duration::from_millis(50);
                    } else {
                        // The tree settling (a parent that has not heard
                        // of us yet) takes moments: retry soon. A parent
                        // that is down is tried less often.
                        let cap = if changing { RETRY_CAP / 4 } else { RETRY_CAP };
                        backoff = (backoff * 2).min(cap);
                    }
                }
            }
        }
    }

    /// Waits out `backoff` after a failed send over `link`, unless the
    /// link changes first (the node took a new place: a failover, a
    /// re-attachment): then returns `true` at once, so writes held through
    /// a takeover go up as soon as there is somewhere to send them, not a
    /// backoff later. New writes also wake the uplink; they do not cut the
    /// backoff short, or a dead parent would be retried at the write rate.
    async fn moved_during(&self, link: &Link, backoff: Duration) -> bool {
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return false,
                _ = self.inner.uplink.wake.notified() => {
                    if self.link().as_ref() != Some(link) {
                        return true;
                    }
                }
            }
        }
    }

    /// The link the uplink sends over now: the parent, read before the
    /// store generation (a new place is taken before the reset that
    /// follows it, so a batch is never bound to a generation older than
    /// its parent).
    fn link(&self) -> Option<Link> {
        let parent = self.place().ok()?.topology.parent.clone()?;
        Some(Link { parent, generation: self.inner.store.generation() })
    }

    /// Writes a root answered `SlotMoving` (still counted in flight):
    /// back at the head of the queue, in order, their slots held back for
    /// [`MOVING_RETRY_MS`] (the batch that follows passes them).
    ///
    /// A child waiting for one (ack=root) is answered `InProgress` now and
    /// owed a notice, so its next batch, other slots' writes, goes up at
    /// once. A child's write is never given up here: the child may have
    /// handed it to another parent before it came here, and ack=parent
    /// ones were answered already. One of this node's own clients that
    /// has waited [`FROZEN_WAIT`] for its slot is given up, answered
    /// `SlotMoving` (503 `slot_moving`): nothing was written, unless a
    /// parent once took it without its outcome (a copy may still commit by
    /// that path): that one waits for its outcome as any write does.
    fn hold_moving(&self, moving: Vec<(Pending, Slot)>) {
        if moving.is_empty() {
            return;
        }
        let now = mono_ms();
        let wait = FROZEN_WAIT.as_millis() as u64;
        let mut given_up = Vec::new();
        let mut answered = Vec::new();
        {
            let mut s = self.inner.uplink.state.lock();
            s.in_flight -= moving.len();
            for (mut p, slot) in moving.into_iter().rev() {
                if p.moving_since == 0 {
                    p.moving_since = now;
                }
                if p.child.is_none() && !p.handed_before && now >= p.moving_since + wait {
                    given_up.push((p, slot));
                    continue;
                }
                if let (Some(child), Some(waiters)) = (p.child, s.waiting.get_mut(&p.write.id)) {
                    if !waiters.txs.is_empty() {
                        answered.append(&mut waiters.txs);
                        if !waiters.owed.contains(&child) {
                            waiters.owed.push(child);
                        }
                    }
                }
                s.moving.insert(slot, now + MOVING_RETRY_MS);
                s.queue.push_front(p);
            }
        }
        for tx in answered {
            let _ = tx.send(WriteResult::InProgress);
        }
        for (p, slot) in given_up.into_iter().rev() {
            log::debug!("write of {} given up: slot {slot} stayed frozen for {FROZEN_WAIT:?}", p.write.update.key);
            self.resolve(p, WriteResult::SlotMoving { slot }, false);
        }
    }

    /// Nothing to send: waits for a write, or, with writes unconfirmed
    /// and nothing sent for [`POLL_AFTER`], polls the parent for their
    /// outcomes until a write comes. (Under load the outcomes ride on the
    /// answers to the next batches; polling at once would start a request
    /// that the next write cancels, with its connection.) Writes held back
    /// for a frozen slot go again when their time comes.
    async fn idle(&self, link: &Link, seen: u64) {
        let uplink = &self.inner.uplink;
        let mut shutdown = self.subscribe_shutdown();
        let (waiting, held_until) = {
            let s = uplink.state.lock();
            let held = if s.queue.is_empty() { None } else { s.moving.values().min().copied() };
            (!s.handed.is_empty(), held)
        };
        if let Some(at) = held_until {
            let wait = Duration::from_millis(at.saturating_sub(mono_ms()).max(1));
            tokio::select! {
                _ = uplink.wake.notified() => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            return;
        }
        let wait = if waiting { POLL_AFTER } else { Duration::MAX };
        tokio::select! {
            _ = uplink.wake.notified() => return,
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let poll = async {
            match self.send_writes(&[], link, seen).await {
                Ok(answers) => self.take_notices(answers.notices, link),
                Err(e) => {
                    log::debug!("polling the parent for write outcomes: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        tokio::select! {
            _ = poll => {}
            _ = uplink.wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }

    /// Takes the head of the uplink: up to [`UPLINK_BATCH`] writes and
    /// [`BATCH_BYTES`], at least one; and the highest notice heard. Over a
    /// new link, the writes the last one took are sent again first.
    fn take_batch(&self, link: &Link) -> (Vec<Pending>, u64) {
        let mut s = self.inner.uplink.state.lock();
        let again = s.relink(link);
        if again > 0 {
            Metrics::add(&self.inner.metrics.writes_resent, again as u64);
            log::info!(
                "sending {again} writes again to node {} ({}): taken over an earlier link, outcome not heard",
                link.parent.id,
                link.parent.url
            );
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        // Writes of a slot held back (frozen for a move) stay, in order;
        // the rest pass them (guarantee 5 orders a node's writes per slot).
        let now = mono_ms();
        s.moving.retain(|_, until| *until > now);
        let mut held = VecDeque::new();
        while let Some(front) = s.queue.pop_front() {
            if !s.moving.is_empty() && s.moving.contains_key(&slot_of(&front.write.update.key)) {
                held.push_back(front);
                continue;
            }
            let size = wire::encoded_len(&front.write.update);
            if !batch.is_empty() && (batch.len() >= UPLINK_BATCH || bytes + size > BATCH_BYTES) {
                s.queue.push_front(front);
                break;
            }
            bytes += size;
            batch.push(front);
        }
        while let Some(p) = held.pop_back() {
            s.queue.push_front(p);
        }
        s.in_flight += batch.len();
        (batch, s.seen)
    }

    /// Puts unanswered writes back at the head, in their order.
    fn requeue(&self, batch: Vec<Pending>) {
        let mut s = self.inner.uplink.state.lock();
        s.in_flight -= batch.len();
        for p in batch.into_iter().rev() {
            s.queue.push_front(p);
        }
    }

    /// The parent took `p` without its outcome: ours until we hear it. Our
    /// client of an ack=parent write has its answer now.
    fn hand(&self, p: Pending, result: &WriteResult) {
        let early = {
            let mut s = self.inner.uplink.state.lock();
            let early = match (result, s.waiting.get_mut(&p.write.id)) {
                (WriteResult::Accepted, Some(waiters)) if !p.write.ack_root => std::mem::take(&mut waiters.txs),
                _ => Vec::new(),
            };
            s.hand(p);
            early
        };
        for tx in early {
            let _ = tx.send(WriteResult::Accepted);
        }
        self.inner.uplink.settled.notify_waiters();
    }

    /// Hands a write's outcome to whoever waits for it, and owes it to
    /// each child that was answered before it. `linger`: the write was
    /// unconfirmed here, so its push may still be on its way.
    pub(super) fn resolve(&self, p: Pending, result: WriteResult, linger: bool) {
        let linger = if linger { mono_ms() + ACCEPTED_LINGER_MS } else { 0 };
        self.inner.store.unexpect(&p.write.update.key, linger);
        let (txs, owed) = {
            let mut s = self.inner.uplink.state.lock();
            s.settled.remember(p.write.id, &result, mono_ms());
            let waiters = s.waiting.remove(&p.write.id).unwrap_or_default();
            let place = if waiters.owed.is_empty() { None } else { self.place().ok() };
            let mut owed = false;
            for child in waiters.owed {
                if place.as_ref().is_some_and(|place| place.topology.child(child).is_some()) {
                    s.owe(child, p.write.id, &p.write.update.key, &result);
                    owed = true;
                }
            }
            (waiters.txs, owed)
        };
        if owed {
            self.inner.uplink.noticed.notify_waiters();
        }
        if txs.is_empty() && p.child.is_none() {
            self.refused_unheard(&p, &result);
        }
        for tx in txs {
            let _ = tx.send(result.clone());
        }
        self.inner.uplink.settled.notify_waiters();
    }

    /// A write of this node's own client that nobody waits for any more
    /// (answered at ack=parent, or the client stopped waiting) and that the
    /// root refused (e.g. 507 `root_full`): nothing was written and nothing
    /// will retry it, so the node logs it and counts it.
    fn refused_unheard(&self, p: &Pending, result: &WriteResult) {
        if let Some(e) = crate::node::refusal(&p.write.update.key, result) {
            Metrics::inc(&self.inner.metrics.writes_refused_unheard);
            let id = &p.write.id;
            log::warn!(
                "write {}/{}/{} of {} was refused after its client had its answer (ack=parent), not written: {e} ({})",
                id.origin,
                id.incarnation,
                id.seq,
                p.write.update.key,
                e.code()
            );
        }
    }

    /// A commit coming back down through this node: store it and record
    /// the child it came from as a holder, then push it to every holder,
    /// that child included (it may not get our answer). If this node
    /// already holds something newer, the child gets that instead. If the
    /// store was reset since the batch was sent (new parent, new epoch),
    /// the new parent does not know we hold the key: nothing is stored. If
    /// the parent did not confirm the commit (it holds no record of us for
    /// the key), it is stored but not current, and the child is not
    /// recorded: nothing would keep either up to date (the child gets an
    /// unconfirmed answer from us too, see [`Node::confirm`]). A child that
    /// is no longer ours (it moved, or the tree turned and it is now our
    /// parent) is not recorded either.
    pub(super) fn settle(&self, p: &Pending, result: &WriteResult, answer: Answer) {
        let Some(version) = result.version() else { return };
        let store = &self.inner.store;
        let Ok(place) = self.place() else { return };
        let update = Update { version, ..p.write.update.clone() };
        log::debug!(
            "settle {}@{} from child {:?} (confirmed {}, gen {})",
            update.key,
            update.version,
            p.child,
            answer.confirmed,
            answer.sent_in
        );
        let t = Time::now();
        let mark = store.mark();
        let child = p.child.filter(|c| place.coherence.pushes() && place.topology.child(*c).is_some());
        match child {
            None => {
                if let Some(Applied::Newer { holders }) = store.apply_answer(&update, t, answer) {
                    self.push_to(&holders, &update, mark);
                }
            }
            Some(child) => match store.apply_and_hold(&update, child, t, answer) {
                Some((Applied::Newer { holders }, _)) => self.push_to(&holders, &update, mark),
                Some((_, Some(current))) => self.push_to(&[child], &current, mark),
                Some((_, None)) | None => {}
            },
        }
        self.note_growth();
    }

    /// Sends a batch from the uplink (empty: a poll for notices) up,
    /// saying the highest notice we have: to the parent, or at a router
    /// each write to its key's group (the parts at once, the batch answered
    /// when every part is; a part that fails sends the whole batch again,
    /// which write ids make safe). Notices from other groups' leaders are
    /// taken here; the parent's come back in the answer.
    async fn send_writes(&self, batch: &[Pending], link: &Link, seen: u64) -> Result<WriteResults> {
        let place = self.place()?;
        let view = self.routes();
        let parent = Route::Parent(link.parent.clone());
        if !self.is_router(&place.topology, &view) {
            let writes = batch.iter().map(|p| p.write.clone()).collect();
            return self.send_writes_to(writes, &parent, link, seen).await;
        }
        let mut parts: Vec<(Route, Vec<usize>)> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            let route =
                self.upstream_in(&view, &p.write.update.key, &place.topology)?.unwrap_or_else(|| parent.clone());
            match parts.iter_mut().find(|(r, _)| *r == route) {
                Some((_, ix)) => ix.push(i),
                None => parts.push((route, vec![i])),
            }
        }
        if batch.is_empty() {
            parts.push((parent.clone(), Vec::new()));
            for (&group, r) in view.leaders.iter().filter(|(&g, _)| g != 0) {
                let peer = Peer { id: r.id, url: r.url.clone() };
                parts.push((Route::Leader { group, peer, epoch: r.epoch }, Vec::new()));
            }
        }
        let sends = parts.iter().map(|(route, ix)| {
            let writes = ix.iter().map(|&i| batch[i].write.clone()).collect();
            let seen = match route {
                Route::Parent(_) => seen,
                Route::Leader { peer, .. } => {
                    self.inner.uplink.state.lock().seen_by.get(&peer.id).copied().unwrap_or(0)
                }
            };
            self.send_writes_to(writes, route, link, seen)
        });
        let answers = futures::future::join_all(sends).await.into_iter().collect::<Result<Vec<_>>>()?;
        let mut merged = WriteResults {
            results: vec![WriteResult::InProgress; batch.len()],
            confirmed: vec![false; batch.len()],
            notices: Vec::new(),
        };
        for ((route, ix), answer) in parts.iter().zip(answers) {
            for (k, &i) in ix.iter().enumerate() {
                merged.results[i] = answer.results[k].clone();
                merged.confirmed[i] = answer.confirmed.get(k).copied().unwrap_or(false);
            }
            match route {
                Route::Parent(_) => merged.notices.extend(answer.notices),
                Route::Leader { peer, .. } => self.take_notices_from(answer.notices, link, Some(peer.id)),
            }
        }
        Ok(merged)
    }

    /// `POST {upstream}/internal/write` with `writes`, saying the highest
    /// notice we have from it.
    async fn send_writes_to(
        &self,
        writes: Vec<Write>,
        upstream: &Route,
        link: &Link,
        seen: u64,
    ) -> Result<WriteResults> {
        let me = self.place()?.topology.id;
        let peer = upstream.peer();
        Metrics::inc(&self.inner.metrics.upstream_requests);
        // `seen` only once a notice came: a parent built before notices
        // refuses the parameter, and sends none (upgrades go leaves first).
        let url = match seen {
            0 => format!("{}/internal/write?child={me}", peer.url),
            seen => format!("{}/internal/write?child={me}&seen={seen}", peer.url),
        };
        let started = std::time::Instant::now();
        // A poll waits up to HOP_WAIT at the parent, as a batch may.
        let results: Result<WriteResults> = self
            .post_internal(
                self.epoch_for(upstream),
                self.inner.http.clone(),
                &peer.url,
                &url,
                wire::encode_writes(&writes),
                UPLINK_TIMEOUT,
                link.generation,
            )
            .await;
        if !writes.is_empty() {
            self.inner.metrics.upstream(Upstream::Write, results.is_ok(), started.elapsed());
        }
        if matches!(&results, Err(Error::Upstream { status: 409, body, .. }) if body.contains("wrong_group")) {
            self.reread_routes(); // our map is older than that root's
        }
        let results = results?;
        if results.results.len() != writes.len() {
            return Err(Error::Internal(format!(
                "{url} answered {} results for {} writes",
                results.results.len(),
                writes.len()
            )));
        }
        Ok(results)
    }

    /// SIGTERM: takes no new writes and waits (at most `limit`) until every
    /// queued write has been handed to the parent.
    pub(in crate::node) async fn drain_uplink(&self, limit: Duration) {
        let uplink = &self.inner.uplink;
        uplink.state.lock().draining = true;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let settled = uplink.settled.notified();
            let left = uplink.len();
            if left == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                log::error!("leaving with {left} writes not yet handed to the parent (waited {limit:?})");
                return;
            }
        }
    }
}
