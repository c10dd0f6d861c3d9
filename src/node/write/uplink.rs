//! The sender side of the write path: this node's uplink (the queue, FIFO
//! per slot, in lanes; what the parent took without an outcome yet; the
//! outcomes recently settled), the sender task that sends each lane's head
//! as a batch and retries it until its parent or group leader answers, and
//! settling a commit that comes back down through this node.
//!
//! Must not commit (only the root does, in `commit.rs`), and must not drop
//! a write while the node lives: a write leaves the uplink only with its
//! outcome.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use super::notices::Owed;
use super::settled::Settled;
use super::Ack;
use crate::clock::{mono_ms, Time};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, Upstream};
use crate::node::routes::{Route, RouteView};
use crate::node::{Node, FROZEN_WAIT};
use crate::slots::{slot_of, GroupId, Slot};
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
/// The first wait before a failed batch is tried again.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

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
    /// Its place in the order the uplink took writes in (set when queued):
    /// writes given back are put back in this order.
    order: u64,
}

impl Pending {
    pub(super) fn new(write: Write, child: Option<NodeId>) -> Pending {
        Pending { write, child, moving_since: 0, handed_before: false, order: 0 }
    }
}

/// One sender lane of the uplink. At a router, one per root group (group
/// 0's writes go to the parent, group 0's leader): each has at most one
/// batch in flight, so a group that is slow, frozen or failing over holds
/// back its own writes only. Elsewhere every write is lane 0's.
pub(super) type Lane = GroupId;

/// A batch taken from one lane.
pub(super) type Taken = (Lane, Vec<Pending>);

/// How the queued writes were sorted into lanes: whether this node routed
/// then, and by which slot map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Laning {
    pub(super) router: bool,
    pub(super) map_epoch: u64,
}

impl Laning {
    pub(super) fn of(router: bool, view: &RouteView) -> Laning {
        match (router, &view.map) {
            (true, Some(map)) => Laning { router, map_epoch: map.epoch() },
            _ => Laning::default(),
        }
    }

    /// The lane `key`'s writes go in under `view`.
    pub(super) fn lane(&self, view: &RouteView, key: &str) -> Lane {
        if self.router {
            view.owner(key)
        } else {
            0
        }
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
    /// Writes queued since the sender last looked, in order.
    inbox: VecDeque<Pending>,
    /// The queued writes by lane, each lane in order (FIFO per slot), as
    /// `laning` sorted them.
    lanes: BTreeMap<Lane, VecDeque<Pending>>,
    laning: Laning,
    /// Writes given back unsent or unanswered (a failed batch, a frozen
    /// slot's writes, what an earlier link's parent took): put back in
    /// the lanes in their order before the next batch is taken.
    given_back: Vec<Pending>,
    next_order: u64,
    /// Writes taken by the sender and not answered yet.
    in_flight: usize,
    /// The slots of the writes in flight, and how many: a slot's later
    /// writes wait for them (a map change, or the node becoming a router,
    /// can put them in another lane meanwhile).
    busy: HashMap<Slot, u32>,
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

    /// Moves to `link`: what the last link's parent took goes again, in
    /// the order it was first queued (before later writes of its slot).
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
        self.given_back.extend(again.into_values());
        n
    }

    /// Queues a new write, after every write queued before it.
    pub(super) fn enqueue(&mut self, mut p: Pending) {
        self.next_order += 1;
        p.order = self.next_order;
        self.inbox.push_back(p);
    }

    /// Writes queued and not taken.
    pub(super) fn queued(&self) -> usize {
        self.inbox.len() + self.given_back.len() + self.lanes.values().map(VecDeque::len).sum::<usize>()
    }

    /// Sorts the queued writes into lanes: new ones at their lane's tail,
    /// writes given back merged in by the order they were queued (so at
    /// the head, but for writes given back earlier that came later), each
    /// lane in that order; under a new `laning`, every queued write again,
    /// in that order.
    fn sort_into_lanes(&mut self, laning: Laning, lane_of: &dyn Fn(&str) -> Lane) {
        if laning != self.laning {
            let mut all = std::mem::take(&mut self.given_back);
            all.extend(std::mem::take(&mut self.lanes).into_values().flatten());
            all.extend(self.inbox.drain(..));
            all.sort_by_key(|p| p.order);
            self.laning = laning;
            self.inbox = all.into();
        } else if !self.given_back.is_empty() {
            // Merged into their lanes by order: each lane stays in the
            // order its writes were queued. (Not simply at the head: after
            // a relink, what the old parent took is given back before a
            // later write of its slot still in flight comes back.)
            let mut by_lane: BTreeMap<Lane, Vec<Pending>> = BTreeMap::new();
            for p in std::mem::take(&mut self.given_back) {
                by_lane.entry(lane_of(&p.write.update.key)).or_default().push(p);
            }
            for (lane, mut back) in by_lane {
                let queue = self.lanes.entry(lane).or_default();
                let last = back.iter().map(|p| p.order).max().unwrap_or(0);
                while let Some(front) = queue.pop_front() {
                    if front.order > last {
                        queue.push_front(front);
                        break;
                    }
                    back.push(front);
                }
                back.sort_by_key(|p| p.order);
                for p in back.into_iter().rev() {
                    queue.push_front(p);
                }
            }
        }
        for p in self.inbox.drain(..) {
            self.lanes.entry(lane_of(&p.write.update.key)).or_default().push_back(p);
        }
        self.lanes.retain(|_, q| !q.is_empty());
    }

    /// Takes a batch from the head of each lane `open` allows: up to
    /// [`UPLINK_BATCH`] writes and [`BATCH_BYTES`], at least one. Writes of
    /// a slot held back (frozen for a move) or with a write in flight (in
    /// another lane, before a map change) stay, in order; the rest of
    /// their lane passes them (guarantee 5 orders a node's writes per
    /// slot).
    pub(super) fn take_parts(
        &mut self,
        laning: Laning,
        lane_of: &dyn Fn(&str) -> Lane,
        open: &dyn Fn(Lane) -> bool,
        now: u64,
    ) -> Vec<Taken> {
        self.sort_into_lanes(laning, lane_of);
        self.moving.retain(|_, until| *until > now);
        let mut parts = Vec::new();
        for (&lane, queue) in self.lanes.iter_mut() {
            if !open(lane) {
                continue;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut held = VecDeque::new();
            while let Some(front) = queue.pop_front() {
                let skip = (!self.moving.is_empty() || !self.busy.is_empty()) && {
                    let slot = slot_of(&front.write.update.key);
                    self.moving.contains_key(&slot) || self.busy.contains_key(&slot)
                };
                if skip {
                    held.push_back(front);
                    continue;
                }
                let size = wire::encoded_len(&front.write.update);
                if !batch.is_empty() && (batch.len() >= UPLINK_BATCH || bytes + size > BATCH_BYTES) {
                    queue.push_front(front);
                    break;
                }
                bytes += size;
                batch.push(front);
            }
            while let Some(p) = held.pop_back() {
                queue.push_front(p);
            }
            if !batch.is_empty() {
                parts.push((lane, batch));
            }
        }
        self.lanes.retain(|_, q| !q.is_empty());
        for (_, batch) in &parts {
            self.in_flight += batch.len();
            for p in batch {
                *self.busy.entry(slot_of(&p.write.update.key)).or_default() += 1;
            }
        }
        parts
    }

    /// Unanswered writes taken from the lanes: they go again, in their
    /// order.
    pub(super) fn give_back(&mut self, batch: Vec<Pending>) {
        self.in_flight -= batch.len();
        self.given_back.extend(batch);
    }

    /// The ids of the writes queued, in the order they were queued.
    #[cfg(test)]
    pub(super) fn queued_seqs(&self) -> Vec<u64> {
        let mut all: Vec<&Pending> =
            self.inbox.iter().chain(&self.given_back).chain(self.lanes.values().flatten()).collect();
        all.sort_by_key(|p| p.order);
        all.iter().map(|p| p.write.id.seq).collect()
    }

    /// A child's write that will wait here (its slot frozen, its lane
    /// failing): the child's requests waiting for it are to be answered
    /// `InProgress` now (the senders, to answer outside the lock), and the
    /// child is owed a notice of its outcome instead, so the child's own
    /// uplink, one batch in flight, is not held by it.
    fn answer_child_later(&mut self, p: &Pending) -> Vec<oneshot::Sender<WriteResult>> {
        let (Some(child), Some(waiters)) = (p.child, self.waiting.get_mut(&p.write.id)) else { return Vec::new() };
        if waiters.txs.is_empty() {
            return Vec::new();
        }
        if !waiters.owed.contains(&child) {
            waiters.owed.push(child);
        }
        std::mem::take(&mut waiters.txs)
    }

    /// A parent took `p`: our client of an ack=parent write has its
    /// answer now (the senders, to answer outside the lock).
    fn early_answer(&mut self, p: &Pending, result: &WriteResult) -> Vec<oneshot::Sender<WriteResult>> {
        match (result, self.waiting.get_mut(&p.write.id)) {
            (WriteResult::Accepted, Some(waiters)) if !p.write.ack_root => std::mem::take(&mut waiters.txs),
            _ => Vec::new(),
        }
    }

    /// A batch came back (answered or not): its slots are no longer busy.
    pub(super) fn release(&mut self, batch: &[Pending]) {
        for p in batch {
            let slot = slot_of(&p.write.update.key);
            if let Some(n) = self.busy.get_mut(&slot) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(&slot);
                }
            }
        }
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
        s.queued() + s.in_flight
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

/// One lane's batch on its way up, and (once back) its answer.
struct Part {
    lane: Lane,
    route: Route,
    batch: Vec<Pending>,
    link: Link,
    answer: Result<WriteResults>,
}

/// A lane's sending state: a batch in flight, or how it failed and when
/// it tries again.
struct Retry {
    sending: bool,
    failures: u32,
    backoff: Duration,
    at: Option<tokio::time::Instant>,
    last_changing: bool,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { sending: false, failures: 0, backoff: FIRST_BACKOFF, at: None, last_changing: false }
    }
}

impl Retry {
    /// Whether the lane may send a batch now.
    fn open(&self, now: tokio::time::Instant) -> bool {
        !self.sending && self.at.is_none_or(|at| at <= now)
    }

    /// Delivered, or a new parent to try: no waiting.
    fn reset(&mut self) {
        let sending = self.sending;
        *self = Retry { sending, ..Retry::default() };
    }

    /// The lane's batch of `n` writes was not answered: it waits before it
    /// tries again. The tree settling (a parent that has not heard of us
    /// yet) takes moments: retried soon. A parent that is down is tried
    /// less often. New writes do not cut the wait short, or a dead parent
    /// would be retried at the write rate.
    fn failed(&mut self, lane: Lane, n: usize, e: &Error) {
        self.failures += 1;
        let changing = e.is_tree_changing();
        let to = if lane == 0 { String::new() } else { format!(" (to root group {lane})") };
        if self.failures == 1 && changing {
            log::info!("{n} writes{to} go up again once this node has its new place: {e}");
        } else if self.failures == 1 || self.failures.is_multiple_of(20) || changing != self.last_changing {
            log::warn!("sending {n} writes up{to} failed (try {}; retrying): {e}", self.failures);
        }
        self.last_changing = changing;
        self.at = Some(tokio::time::Instant::now() + self.backoff);
        let cap = if changing { RETRY_CAP / 4 } else { RETRY_CAP };
        self.backoff = (self.backoff * 2).min(cap);
    }
}

/// Sleeps until `at`; never, without one.
async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
        s.enqueue(Pending::new(Write { update, id, ack_root: ack == Ack::Root, cond }, None));
        drop(s);
        self.inner.uplink.wake.notify_one();
        Ok(rx)
    }

    /// Sends the uplink's writes up, batch after batch, until the node
    /// stops: each lane's head to its parent or group leader, one batch in
    /// flight per lane, a batch retried until it is answered. With nothing
    /// to send and writes unconfirmed, polls for their outcomes.
    pub(in crate::node) async fn run_uplink(self) {
        let uplink = &self.inner.uplink;
        let mut sending = FuturesUnordered::new();
        let mut retries: HashMap<Lane, Retry> = HashMap::new();
        let mut last_link: Option<Link> = None;
        loop {
            let link = self.link();
            if link != last_link {
                // A new parent (or a reset): every lane tries it at once.
                retries.values_mut().for_each(Retry::reset);
                last_link = link.clone();
            }
            let now = tokio::time::Instant::now();
            let mut seen = 0;
            if let Some(link) = &link {
                let (parts, view, s) = self.take_parts(link, &|lane| retries.get(&lane).is_none_or(|r| r.open(now)));
                seen = s;
                for (lane, batch) in parts {
                    retries.entry(lane).or_default().sending = true;
                    match self.lane_route(lane, link, &view) {
                        Ok(route) => sending.push(self.send_part(lane, route, batch, link.clone(), seen)),
                        Err(e) => {
                            let retry = retries.get_mut(&lane).expect("just made");
                            retry.sending = false;
                            retry.failed(lane, batch.len(), &e);
                            self.inner.uplink.state.lock().release(&batch);
                            self.give_back_failed(batch);
                        }
                    }
                }
            }
            let next_retry = retries.values().filter_map(|r| r.at).filter(|&at| at > now).min();
            if sending.is_empty() {
                if self.is_shutting_down() {
                    return;
                }
                match &link {
                    Some(link) => self.idle(link, seen, next_retry).await,
                    None => {
                        // Not placed yet (or the root): nothing can go up.
                        let mut shutdown = self.subscribe_shutdown();
                        tokio::select! {
                            _ = uplink.wake.notified() => {}
                            _ = shutdown.changed() => {}
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                }
                continue;
            }
            let wake_at = [next_retry, self.held_until()].into_iter().flatten().min();
            tokio::select! {
                Some(part) = sending.next() => {
                    let retry = retries.entry(part.lane).or_default();
                    retry.sending = false;
                    self.part_answered(part, retry);
                }
                _ = uplink.wake.notified() => {}
                _ = sleep_until_or_never(wake_at) => {}
            }
        }
    }

    /// Where `lane`'s writes go: the parent, or at a router another
    /// group's leader (none known: 503, and the lane waits for one).
    fn lane_route(&self, lane: Lane, link: &Link, view: &RouteView) -> Result<Route> {
        if lane == 0 {
            return Ok(Route::Parent(link.parent.clone()));
        }
        match view.leaders.get(&lane) {
            Some(r) => Ok(Route::leader(lane, r)),
            None => Err(Error::NoInSyncRoot(format!("root group {lane} has no leader"))),
        }
    }

    /// Sends one lane's batch, and brings it back with the answer.
    async fn send_part(&self, lane: Lane, route: Route, batch: Vec<Pending>, link: Link, seen: u64) -> Part {
        let hold = self.args().fault_uplink_delay_ms;
        if hold > 0 {
            tokio::time::sleep(Duration::from_millis(hold)).await;
        }
        let seen = self.seen_from(&route, seen);
        let writes = batch.iter().map(|p| p.write.clone()).collect();
        let answer = self.send_writes_to(writes, &route, &link, seen).await;
        let delay = self.args().fault_settle_delay_ms;
        if delay > 0 && answer.is_ok() {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Part { lane, route, batch, link, answer }
    }

    /// A lane's batch came back: each write answered is settled, handed
    /// (the parent took it) or held (its slot is frozen); unanswered, the
    /// batch is given back and the lane waits before it tries again.
    fn part_answered(&self, part: Part, retry: &mut Retry) {
        let Part { lane, route, batch, link, answer } = part;
        self.inner.uplink.state.lock().release(&batch);
        match answer {
            Ok(answers) => {
                if retry.failures > 0 {
                    log::info!("the uplink delivers again after {} failed tries", retry.failures);
                }
                retry.reset();
                // Writes held for a frozen slot stay counted until they
                // are queued again (a drain must not see them gone).
                // Sent over a link the uplink has left since (a reset, a
                // new parent): what the old parent took goes again over
                // the new one, as what it took before the relink did, and
                // stays counted until it is queued again too.
                let relinked = self.inner.uplink.state.lock().link.as_ref() != Some(&link);
                let held = answers
                    .results
                    .iter()
                    .filter(|r| match r {
                        WriteResult::SlotMoving { .. } => true,
                        WriteResult::Accepted | WriteResult::InProgress => relinked,
                        _ => false,
                    })
                    .count();
                self.inner.uplink.state.lock().in_flight -= batch.len() - held;
                let confirmed = answers.confirmed.iter().copied().chain(std::iter::repeat(false));
                let mut moving = Vec::new();
                for ((p, result), confirmed) in batch.into_iter().zip(answers.results).zip(confirmed) {
                    match result {
                        WriteResult::Accepted | WriteResult::InProgress if relinked => self.hand_again(p, &result),
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
                self.take_notices_over(&route, answers.notices, &link);
            }
            Err(e) if refuses_conditions(&e) && batch.iter().any(|p| p.write.cond.is_conditional()) => {
                // A parent built before conditional writes: they cannot
                // go up until it is upgraded. Decided here, not retried
                // for ever: nothing of the batch was taken.
                let (conditional, rest): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(|p| p.write.cond.is_conditional());
                let peer = route.peer();
                log::warn!(
                    "node {} ({}) refuses conditional writes (built before them): {} refused here",
                    peer.id,
                    peer.url,
                    conditional.len()
                );
                self.inner.uplink.state.lock().in_flight -= conditional.len();
                for p in conditional {
                    let error = format!(
                        "node {} on the way to the root does not know conditional writes yet (upgrade it); \
                         nothing was written",
                        peer.id
                    );
                    self.resolve(p, WriteResult::Failed { error }, false);
                }
                self.give_back(rest);
            }
            Err(e) => {
                retry.failed(lane, batch.len(), &e);
                self.give_back_failed(batch);
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
                answered.extend(s.answer_child_later(&p));
                s.moving.insert(slot, now + MOVING_RETRY_MS);
                s.given_back.push(p);
            }
        }
        // Its source and its target answer so until both have read the
        // cutover.
        self.reread_routes_soon();
        for tx in answered {
            let _ = tx.send(WriteResult::InProgress);
        }
        for (p, slot) in given_up.into_iter().rev() {
            log::debug!("write of {} given up: slot {slot} stayed frozen for {FROZEN_WAIT:?}", p.write.update.key);
            self.resolve(p, WriteResult::SlotMoving { slot }, false);
        }
    }

    /// Nothing to send: waits for a write, for a lane's retry or a held
    /// slot's time, and, with writes unconfirmed and nothing sent for
    /// [`POLL_AFTER`], polls the parents for their outcomes meanwhile (one
    /// lane waiting for its group must not keep the others' outcomes
    /// away). Under load the outcomes ride on the answers to the next
    /// batches; polling at once would start a request that the next write
    /// cancels, with its connection.
    async fn idle(&self, link: &Link, seen: u64, retry_at: Option<tokio::time::Instant>) {
        let uplink = &self.inner.uplink;
        let mut shutdown = self.subscribe_shutdown();
        let waiting = !uplink.state.lock().handed.is_empty();
        let until = [self.held_until(), retry_at].into_iter().flatten().min();
        let poll = async {
            if !waiting {
                return std::future::pending().await;
            }
            tokio::time::sleep(POLL_AFTER).await;
            self.poll_upstreams(link, seen).await
        };
        tokio::select! {
            _ = uplink.wake.notified() => {}
            _ = shutdown.changed() => {}
            _ = sleep_until_or_never(until) => {}
            _ = poll => {}
        }
    }

    /// Takes a batch from each lane `open` allows (see
    /// [`UplinkState::take_parts`]), with the view the lanes were sorted
    /// by and the highest notice heard. Over a new link, the writes the
    /// last one took are sent again first, at once: batches still in
    /// flight over the old link keep their slots busy until they come
    /// back (see [`Node::part_answered`]), so no later write of a slot
    /// overtakes them, and the other lanes (a router resets at every new
    /// slot map) do not wait for them.
    fn take_parts(&self, link: &Link, open: &dyn Fn(Lane) -> bool) -> (Vec<Taken>, Arc<RouteView>, u64) {
        let view = self.routes();
        let router = self.place().is_ok_and(|place| self.is_router(&place.topology, &view));
        let laning = Laning::of(router, &view);
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
        let parts = s.take_parts(laning, &|key| laning.lane(&view, key), open, mono_ms());
        let seen = s.seen;
        drop(s);
        (parts, view, seen)
    }

    /// Gives unanswered writes back: they go again, in their order.
    fn give_back(&self, batch: Vec<Pending>) {
        self.inner.uplink.state.lock().give_back(batch);
    }

    /// Gives back a batch its lane failed to send: it goes again after the
    /// lane's backoff. Children waiting for its writes are answered
    /// `InProgress` and owed notices: a cache below a router must not have
    /// its writes to other groups held behind one to a group that is
    /// failing over.
    fn give_back_failed(&self, batch: Vec<Pending>) {
        let answered: Vec<_> = {
            let mut s = self.inner.uplink.state.lock();
            let answered = batch.iter().flat_map(|p| s.answer_child_later(p)).collect();
            s.give_back(batch);
            answered
        };
        for tx in answered {
            let _ = tx.send(WriteResult::InProgress);
        }
    }

    /// When the earliest slot held back for a move goes again, if any
    /// write waits (expired holds are dropped: never a time past).
    fn held_until(&self) -> Option<tokio::time::Instant> {
        let mut s = self.inner.uplink.state.lock();
        let now = mono_ms();
        s.moving.retain(|_, until| *until > now);
        if s.queued() == 0 {
            return None;
        }
        let at = s.moving.values().min().copied()?;
        Some(tokio::time::Instant::now() + Duration::from_millis(at - now))
    }

    /// The parent took `p` without its outcome: ours until we hear it. Our
    /// client of an ack=parent write has its answer now.
    fn hand(&self, p: Pending, result: &WriteResult) {
        let early = {
            let mut s = self.inner.uplink.state.lock();
            let early = s.early_answer(&p, result);
            s.hand(p);
            early
        };
        for tx in early {
            let _ = tx.send(WriteResult::Accepted);
        }
        self.inner.uplink.settled.notify_waiters();
    }

    /// The parent of a link the uplink has left took `p` without its
    /// outcome: as [`Node::hand`], and then as a relink does with what the
    /// old parent took, it goes again (over the new link) until it is
    /// answered.
    fn hand_again(&self, p: Pending, result: &WriteResult) {
        let early = {
            let mut s = self.inner.uplink.state.lock();
            let early = s.early_answer(&p, result);
            let mut p = p;
            p.handed_before = true;
            s.give_back(vec![p]);
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

    /// Asks the parent, and at a router every other group's leader, for
    /// the outcomes of writes they took unanswered: an empty batch saying
    /// the highest notice heard from each, which waits up to HOP_WAIT for
    /// one. One that fails is asked again a second later.
    async fn poll_upstreams(&self, link: &Link, seen: u64) {
        let view = self.routes();
        let mut routes = vec![Route::Parent(link.parent.clone())];
        if self.place().is_ok_and(|place| self.is_router(&place.topology, &view)) {
            routes.extend(view.leaders.iter().filter(|(&g, _)| g != 0).map(|(&g, r)| Route::leader(g, r)));
        }
        let polls = routes.into_iter().map(|route| async move {
            let seen = self.seen_from(&route, seen);
            let answer = self.send_writes_to(Vec::new(), &route, link, seen).await;
            (route, answer)
        });
        let mut failed = false;
        for (route, answer) in futures::future::join_all(polls).await {
            match answer {
                Ok(answer) => self.take_notices_over(&route, answer.notices, link),
                Err(e) => {
                    log::debug!("polling {} for write outcomes: {e}", route.peer().url);
                    failed = true;
                }
            }
        }
        if failed {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The highest notice heard from `route`'s node (`parent_seen` from the
    /// parent; each other group's leader numbers its own).
    fn seen_from(&self, route: &Route, parent_seen: u64) -> u64 {
        match route {
            Route::Parent(_) => parent_seen,
            Route::Leader { peer, .. } => self.inner.uplink.state.lock().seen_by.get(&peer.id).copied().unwrap_or(0),
        }
    }

    /// Takes the notices `route`'s node sent over `link`.
    fn take_notices_over(&self, route: &Route, notices: Vec<wire::Notice>, link: &Link) {
        match route {
            Route::Parent(_) => self.take_notices(notices, link),
            Route::Leader { peer, .. } => self.take_notices_from(notices, link, Some(peer.id)),
        }
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
