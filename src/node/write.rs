//! The write path (DESIGN.md guarantees 5 and 6).
//!
//! Every write a non-root node receives, from its own clients or from a
//! child, whatever its `ack`, joins the node's one FIFO **uplink** and gets
//! a [`WriteId`] if it has none (this node, its incarnation, the next
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
//! the parent owes it a [`Notice`], sent in the answer to the sender's
//! next request (an empty batch is a poll that waits for one). When the
//! link to the parent changes (a new parent, or a reset: the parent's
//! place or epoch changed, or it restarted) the sender sends its
//! unconfirmed writes again, first and in order, before anything newer.
//! So a write taken by a parent that then loses its way (it became our
//! child, it was reaped while paused) is never lost while we live, and the
//! root sees a node's writes in order on every path. Each hop remembers
//! the ids it holds and the outcomes it recently settled, so a resend is
//! never queued twice.
//!
//! The root commits each id once ([`Outcomes`]): a resend, or the same
//! write arriving by a second path after a re-attachment, gets the first
//! outcome; a write from a node older than one already committed from that
//! node (it was overtaken on another path) is refused, never committed out
//! of order. The root pushes each commit to every holder, the writer's
//! branch included: each hop on the way held the key as expected while the
//! write was in flight, and records the hop below as a holder when the
//! commit comes back, so a writer whose reply was lost still learns it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use super::Node;
use crate::clock::{mono_ms, now_ms, now_us, Time};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, Upstream};
use crate::store::{check_key, Answer, Applied, Committed, NodeId, Update, WriteId};
use crate::wire::{self, Notice, Peer, Write, WriteResult, WriteResults};

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Once the parent has it (the default).
    Parent,
    /// Once the root has committed it.
    Root,
}

impl Ack {
    pub fn parse(s: &str) -> Option<Ack> {
        match s {
            "parent" => Some(Ack::Parent),
            "root" => Some(Ack::Root),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Ack::Parent => "parent",
            Ack::Root => "root",
        }
    }
}

/// How long a parent holds a child's ack=root write request waiting for
/// the root before it answers `InProgress`.
pub const HOP_WAIT: Duration = Duration::from_secs(10);
/// How long an uplink with nothing to send waits before it polls its
/// parent for the outcomes of its unconfirmed writes.
const POLL_AFTER: Duration = Duration::from_millis(100);
/// How long the uplink waits for its parent's answer (longer than HOP_WAIT).
const UPLINK_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a client's write waits for its acknowledgement before it is
/// answered 503 `write_in_flight` (the write stays queued and is delivered).
const CLIENT_WAIT: Duration = Duration::from_secs(30);
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
/// Settled ids a hop remembers, so a resend after a lost answer finds its
/// outcome.
const RECENT_IDS: usize = 65_536;
/// Outcomes the root remembers per writing node (incarnation), and how many
/// writing nodes.
const OUTCOMES_PER_ORIGIN: usize = 4_096;
const ORIGINS: usize = 4_096;

/// A write in this node's uplink: who gave it to us (`None`: our client).
struct Pending {
    write: Write,
    child: Option<NodeId>,
}

/// The parent the uplink sends to, and the store generation it sends in.
/// Writes the parent took over one link are sent again over the next.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Link {
    parent: Peer,
    generation: u64,
}

/// Who waits for one write's outcome.
#[derive(Default)]
struct Waiters {
    /// In-request waiters: our client (answered `Accepted` early for an
    /// ack=parent write), a child's ack=root request.
    txs: Vec<oneshot::Sender<WriteResult>>,
    /// Children that were answered before the outcome was known: each
    /// gets a [`Notice`] of it.
    owed: Vec<NodeId>,
}

/// An outcome owed to a child, until it says it has it.
struct Owed {
    seq: u64,
    id: WriteId,
    key: String,
    result: WriteResult,
}

#[derive(Default)]
struct UplinkState {
    queue: VecDeque<Pending>,
    /// Writes taken by the sender and not answered yet.
    in_flight: usize,
    /// Writes the parent took whose outcome we have not heard, in the
    /// order they were taken (keyed by `handed_seq`), and their ids.
    handed: BTreeMap<u64, Pending>,
    handed_ids: HashMap<WriteId, u64>,
    handed_seq: u64,
    /// The link `handed` went over, and the highest notice heard on it.
    link: Option<Link>,
    seen: u64,
    /// Every id we hold (queued, in flight or unconfirmed), with whoever
    /// waits for its outcome.
    waiting: HashMap<WriteId, Waiters>,
    /// Outcomes of recently settled ids, oldest first out.
    recent: HashMap<WriteId, WriteResult>,
    recent_order: VecDeque<WriteId>,
    next_seq: u64,
    /// Outcomes owed to each child, oldest first, and the last number given.
    notices: HashMap<NodeId, VecDeque<Owed>>,
    notice_seq: u64,
    /// Set on SIGTERM: no new writes are taken.
    draining: bool,
}

impl UplinkState {
    fn remember(&mut self, id: WriteId, result: WriteResult) {
        if self.recent.insert(id, result).is_none() {
            self.recent_order.push_back(id);
        }
        while self.recent_order.len() > RECENT_IDS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    fn hand(&mut self, p: Pending) {
        self.handed_seq += 1;
        self.handed_ids.insert(p.write.id, self.handed_seq);
        self.handed.insert(self.handed_seq, p);
    }

    fn unhand(&mut self, id: &WriteId) -> Option<Pending> {
        let at = self.handed_ids.remove(id)?;
        self.handed.remove(&at)
    }

    /// Moves to `link`: what the last link's parent took goes again, first.
    fn relink(&mut self, link: &Link) -> usize {
        if self.link.as_ref() == Some(link) {
            return 0;
        }
        self.link = Some(link.clone());
        self.seen = 0;
        self.handed_ids.clear();
        let again = std::mem::take(&mut self.handed);
        let n = again.len();
        for (_, p) in again.into_iter().rev() {
            self.queue.push_front(p);
        }
        n
    }

    /// Owes `child` the outcome of `id`.
    fn owe(&mut self, child: NodeId, id: WriteId, key: &str, result: &WriteResult) {
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
    fn acked(&mut self, child: NodeId, seen: u64) {
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

/// This node's FIFO of writes on their way to the root.
#[derive(Default)]
pub(super) struct Uplink {
    state: Mutex<UplinkState>,
    /// Wakes the sender (a write queued, the link changed) and the drain
    /// (a batch settled), and children's polls (a notice owed).
    wake: Notify,
    settled: Notify,
    noticed: Notify,
}

impl Uplink {
    pub(super) fn len(&self) -> usize {
        let s = self.state.lock();
        s.queue.len() + s.in_flight
    }

    pub(super) fn unconfirmed(&self) -> usize {
        self.state.lock().handed.len()
    }

    /// The sender should look again: the link to the parent may have changed.
    pub(super) fn poke(&self) {
        self.wake.notify_one();
    }

    /// Forgets what is owed to nodes that are no longer children.
    pub(super) fn keep_children(&self, children: &[Peer]) {
        self.state.lock().notices.retain(|id, _| children.iter().any(|c| c.id == *id));
    }
}

/// What joining the uplink gave one write.
enum Joined {
    /// Settled before: its outcome.
    Known(WriteResult),
    /// Queued (now or before); the receiver gets the outcome.
    Waiting(oneshot::Receiver<WriteResult>, WriteId),
    /// Queued (now or before); nobody waits here (ack=parent from a child).
    Queued,
}

/// The root's memory of which write ids it committed, with their outcomes.
#[derive(Default)]
pub(super) struct Outcomes {
    origins: HashMap<(NodeId, u64), Origin>,
    tick: u64,
}

#[derive(Default)]
struct Origin {
    /// Highest sequence decided from this node incarnation.
    high: u64,
    results: BTreeMap<u64, WriteResult>,
    used: u64,
}

/// What the root makes of a write id.
enum Verdict {
    New,
    Decided(WriteResult),
}

impl Outcomes {
    fn check(&mut self, id: &WriteId) -> Verdict {
        self.tick += 1;
        let Some(origin) = self.origins.get_mut(&(id.origin, id.incarnation)) else { return Verdict::New };
        origin.used = self.tick;
        if id.seq > origin.high {
            return Verdict::New;
        }
        if let Some(result) = origin.results.get(&id.seq) {
            return Verdict::Decided(result.clone());
        }
        let forgotten = origin.results.len() >= OUTCOMES_PER_ORIGIN
            && origin.results.first_key_value().is_some_and(|(&s, _)| id.seq < s);
        let error = if forgotten {
            // A resend of an old write (its sender changed parents with
            // more than this many unconfirmed): decided, but which way is
            // no longer known here.
            format!(
                "write {}/{}/{} was decided before, but the root no longer remembers how (it keeps the last \
                 {OUTCOMES_PER_ORIGIN} outcomes per writing process): it may have been committed; read the key",
                id.origin, id.incarnation, id.seq
            )
        } else {
            format!(
                "write {}/{}/{} reached the root after a later write from the same node was committed; \
                 it was not committed (per-node write order)",
                id.origin, id.incarnation, id.seq
            )
        };
        Verdict::Decided(WriteResult::Failed { error })
    }

    fn record(&mut self, id: &WriteId, result: WriteResult) {
        let origin = self.origins.entry((id.origin, id.incarnation)).or_default();
        origin.high = origin.high.max(id.seq);
        origin.used = self.tick;
        origin.results.insert(id.seq, result);
        while origin.results.len() > OUTCOMES_PER_ORIGIN {
            origin.results.pop_first();
        }
        if self.origins.len() > ORIGINS {
            if let Some(oldest) = self.origins.iter().min_by_key(|(_, o)| o.used).map(|(k, _)| *k) {
                self.origins.remove(&oldest);
            }
        }
    }

    /// Every remembered outcome as (id, version; 0 for a delete of an
    /// absent key), for a snapshot of the root's state. A write refused
    /// for `--min-insync` is not kept: nothing of it is in the log either.
    pub(super) fn export(&self) -> Vec<(WriteId, u64)> {
        let mut out = Vec::new();
        for (&(origin, incarnation), o) in &self.origins {
            for (&seq, r) in &o.results {
                let version = match r {
                    WriteResult::Committed { version, .. } => *version,
                    WriteResult::Absent => 0,
                    _ => continue,
                };
                out.push((WriteId { origin, incarnation, seq }, version));
            }
        }
        out
    }
}

impl Node {
    /// A client's `PUT`/`POST` (`value` is `Some`) or `DELETE` (`None`).
    pub async fn write(&self, key: &str, value: Option<Bytes>, ttl_secs: Option<u64>, ack: Ack) -> Result<WriteResult> {
        Metrics::inc(&self.inner.metrics.writes);
        let place = self.place()?;
        let expires_at = ttl_secs.map(|s| now_ms().saturating_add(s.saturating_mul(1000)));
        let update = Update { key: key.to_string(), version: 0, value, expires_at };
        if place.topology.is_root() {
            return self.commit_own(update, ack).await;
        }
        let rx = self.join_own(update, ack, place.topology.id)?;
        match tokio::time::timeout(CLIENT_WAIT, rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::WriteInFlight { key: key.to_string() }),
        }
    }

    /// Queues a write from this node's client with a new id.
    fn join_own(&self, update: Update, ack: Ack, me: NodeId) -> Result<oneshot::Receiver<WriteResult>> {
        let mut s = self.inner.uplink.state.lock();
        if s.draining {
            return Err(Error::ShuttingDown);
        }
        s.next_seq += 1;
        let id = WriteId { origin: me, incarnation: self.inner.incarnation, seq: s.next_seq };
        let (tx, rx) = oneshot::channel();
        self.inner.store.expect(&update.key);
        s.waiting.insert(id, Waiters { txs: vec![tx], owed: Vec::new() });
        s.queue.push_back(Pending { write: Write { update, id, ack_root: ack == Ack::Root }, child: None });
        drop(s);
        self.inner.uplink.wake.notify_one();
        Ok(rx)
    }

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
            if let Some(result) = s.recent.get(&w.id) {
                joined.push(Joined::Known(result.clone()));
                continue;
            }
            let (tx, rx) = oneshot::channel();
            let waiters = match s.waiting.entry(w.id) {
                std::collections::hash_map::Entry::Occupied(held) => held.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    if pushes {
                        self.inner.store.expect_for(&w.update.key, child);
                    } else {
                        self.inner.store.expect(&w.update.key);
                    }
                    let waiters = slot.insert(Waiters::default());
                    s.queue.push_back(Pending { write: w.clone(), child: Some(child) });
                    queued = true;
                    waiters
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

    /// Waits until a notice is owed to `child`, at most [`HOP_WAIT`].
    async fn await_notice(&self, child: NodeId) {
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
    fn notices_for(&self, child: NodeId) -> Vec<Notice> {
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
    fn confirm(&self, key: &str, result: &WriteResult, child: NodeId) -> bool {
        if result.version().is_none() {
            return false;
        }
        match self.place() {
            Ok(place) if place.coherence.pushes() => self.inner.store.holds_current(key, child),
            Ok(_) => true,
            Err(_) => false,
        }
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
        s.recent.get(&id).cloned().unwrap_or(WriteResult::InProgress)
    }

    /// The root commits a write from its own client.
    async fn commit_own(&self, update: Update, ack: Ack) -> Result<WriteResult> {
        self.check_leading()?;
        if let (Ack::Root, Some((have, need))) = (ack, self.insync_shortfall()) {
            return Err(Error::InsyncBelowMin { have, need });
        }
        let mark = self.inner.store.mark();
        let (result, push) = self.commit_one(update, None);
        let committed_us = now_us();
        if let Some((update, _)) = &push {
            self.make_durable(vec![(update.clone(), None)]).await?;
        }
        if let Some((update, holders)) = push {
            self.push_committed(&holders, &update, Some(committed_us), mark);
        }
        if ack == Ack::Root {
            return Ok(self.short_after_wait(result));
        }
        Ok(result)
    }

    /// The root commits a batch from `child`, each write id once, in order.
    /// Nothing is pushed or answered before the batch is durable.
    pub(super) async fn commit_batch(&self, child: Option<NodeId>, writes: Vec<Write>) -> Result<Vec<WriteResult>> {
        let mut results = Vec::with_capacity(writes.len());
        let ack_roots: Vec<bool> = writes.iter().map(|w| w.ack_root).collect();
        let mut durable = Vec::new();
        let mut pushes = Vec::new();
        let mut seen_before = false;
        self.check_leading()?;
        let shortfall = self.insync_shortfall();
        // Before any holder is read: a child added back while the batch
        // is made durable is reset, and gets none of these pushes.
        let mark = self.inner.store.mark();
        for w in writes {
            let mut outcomes = self.inner.outcomes.lock();
            if let (true, Some((have, need))) = (w.ack_root, shortfall) {
                // Not committed, and decided so: the client hears 503 and
                // may retry (a new write); a copy of this one still on its
                // way by another path gets the same answer, never a commit
                // the client was told did not happen. Later writes from
                // its node still commit.
                let result = match outcomes.check(&w.id) {
                    Verdict::Decided(result) => result,
                    Verdict::New => {
                        let result = WriteResult::InsyncBelowMin { have, need };
                        outcomes.record(&w.id, result.clone());
                        result
                    }
                };
                results.push(result);
                continue;
            }
            match outcomes.check(&w.id) {
                Verdict::Decided(result) => {
                    Metrics::inc(&self.inner.metrics.duplicate_writes);
                    seen_before = true;
                    results.push(result);
                }
                Verdict::New => {
                    let (result, push) = self.commit_one(w.update, child);
                    outcomes.record(&w.id, result.clone());
                    drop(outcomes);
                    if let Some((update, holders)) = push {
                        durable.push((update.clone(), Some(w.id)));
                        pushes.push((update, holders));
                    }
                    results.push(result);
                }
            }
        }
        let committed_us = now_us();
        if !durable.is_empty() || seen_before {
            // A write seen before may still be on its way to disk in
            // another batch: waiting covers everything appended so far.
            self.make_durable(durable).await?;
        }
        for (update, holders) in pushes {
            self.push_committed(&holders, &update, Some(committed_us), mark);
        }
        for (result, _) in results.iter_mut().zip(&ack_roots).filter(|(_, &ack_root)| ack_root) {
            *result = self.short_after_wait(result.clone());
        }
        Ok(results)
    }

    /// An ack=root commit, after its wait: if a standby left the in-sync
    /// set meanwhile and fewer roots than `--min-insync` now hold it, the
    /// client hears so (503, as Kafka's NotEnoughReplicasAfterAppend): it
    /// is committed, but not as safe as it asked.
    fn short_after_wait(&self, result: WriteResult) -> WriteResult {
        match (result, self.insync_shortfall()) {
            (WriteResult::Committed { version, .. }, Some((have, need))) => {
                WriteResult::InsyncBelowMinAfter { version, have, need }
            }
            (result, _) => result,
        }
    }

    /// Gives one write its version and stores it; returns the answer and
    /// what to push to whom once it is durable.
    fn commit_one(&self, update: Update, child: Option<NodeId>) -> (WriteResult, Option<(Update, Vec<NodeId>)>) {
        let pushes = self.place().map(|p| p.coherence.pushes()).unwrap_or(true);
        let holder = child.filter(|_| pushes);
        // Pending from the moment it exists: no read sees it before it is
        // durable (see `replica`).
        let next = || self.next_version();
        let Update { key, value, expires_at, .. } = update;
        match self.inner.store.commit(&key, value.clone(), expires_at, Time::now(), holder, next) {
            Committed::Done { version, created, holders } => {
                Metrics::inc(&self.inner.metrics.commits);
                let update = Update { key, version, value, expires_at };
                (WriteResult::Committed { version, created }, Some((update, holders)))
            }
            Committed::Absent => (WriteResult::Absent, None),
        }
    }

    /// Waits until `records` (and everything committed before them) is as
    /// durable as the root promises: appended to the commit log and, under
    /// `--fsync always`, fsynced (the appends of one batch, and of batches
    /// committed meanwhile, share one fsync). An empty slice is a barrier:
    /// it waits for everything appended so far. With standby roots, also
    /// held by every in-sync standby (DESIGN.md guarantee 3). Without a
    /// commit log or standbys the root's state lives in its memory only.
    ///
    /// It runs as a task of its own: if the request that committed these
    /// is dropped meanwhile (the client or the child gave up), they still
    /// reach the log and stop being pending. A version left pending for
    /// good would hold back the mark every standby serves by.
    async fn make_durable(&self, records: Vec<(Update, Option<WriteId>)>) -> Result<()> {
        let node = self.clone();
        let task = self.inner.runtime.spawn(async move {
            let result = node.make_durable_now(&records).await;
            if result.is_ok() {
                // Durable: readers may see it. On an error (deposed, or
                // the log stopped) it stays pending: never served by this
                // root.
                node.pending_remove(records.iter().map(|(u, _)| u.version));
            }
            result
        });
        task.await.map_err(|e| Error::Internal(format!("making commits durable: {e}")))?
    }

    /// Appends to the commit log and streams to every standby at once,
    /// then waits for the log and for each in-sync standby (see
    /// [`Node::await_replicated`]).
    async fn make_durable_now(&self, records: &[(Update, Option<WriteId>)]) -> Result<()> {
        self.check_leading()?;
        let epoch = self.epoch();
        // Each commit is encoded once: the same frames go to the log (one
        // append for the batch) and to every standby.
        let frames: Vec<Vec<u8>> = if self.inner.log.is_some() || self.has_standbys() {
            records
                .iter()
                .map(|(update, write_id)| {
                    crate::replication::frame_of(crate::log::Record {
                        epoch,
                        update: update.clone(),
                        write_id: *write_id,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let waits = self.replicate(&frames);
        if let Some(log) = &self.inner.log {
            let appended = if frames.is_empty() {
                log.barrier().await
            } else {
                let max_version = records.iter().map(|(u, _)| u.version).max().unwrap_or(0);
                log.append_frames(frames.concat(), frames.len() as u64, max_version, epoch).await
            };
            appended.map_err(|e| Error::Internal(e.to_string()))?;
            self.maybe_snapshot(log);
        }
        self.await_replicated(waits).await?;
        self.check_leading()
    }

    /// The root's remembered write outcomes, for a snapshot.
    pub fn write_outcomes(&self) -> Vec<(WriteId, u64)> {
        self.inner.outcomes.lock().export()
    }

    /// Replay: the write `id` was decided before a restart, committed at
    /// `version` (0: a delete of an absent key). A resend finds it.
    pub fn restore_write_outcome(&self, id: WriteId, version: u64) {
        let result = match version {
            0 => WriteResult::Absent,
            version => WriteResult::Committed { version, created: false },
        };
        self.inner.outcomes.lock().record(&id, result);
    }

    /// Sends the uplink's head to the parent, batch after batch, until the
    /// node stops; retries a batch until the parent answers. With nothing
    /// to send and writes unconfirmed, polls the parent for their outcomes.
    pub(super) async fn run_uplink(self) {
        let uplink = &self.inner.uplink;
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0u32;
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
                    backoff = Duration::from_millis(50);
                    let delay = self.args().fault_settle_delay_ms;
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    self.inner.uplink.state.lock().in_flight -= batch.len();
                    let confirmed = answers.confirmed.iter().copied().chain(std::iter::repeat(false));
                    for ((p, result), confirmed) in batch.into_iter().zip(answers.results).zip(confirmed) {
                        match result {
                            WriteResult::Accepted | WriteResult::InProgress => self.hand(p, &result),
                            result => {
                                self.settle(&p, &result, Answer { sent_in: link.generation, confirmed });
                                self.resolve(p, result, false);
                            }
                        }
                    }
                    self.take_notices(answers.notices, &link);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(20) {
                        log::warn!("sending {} writes up failed (try {failures}; retrying): {e}", batch.len());
                    }
                    self.requeue(batch);
                    if self.is_shutting_down() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
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

    /// Nothing to send: waits for a write, or, with writes unconfirmed
    /// and nothing sent for [`POLL_AFTER`], polls the parent for their
    /// outcomes until a write comes. (Under load the outcomes ride on the
    /// answers to the next batches; polling at once would start a request
    /// that the next write cancels, with its connection.)
    async fn idle(&self, link: &Link, seen: u64) {
        let uplink = &self.inner.uplink;
        let mut shutdown = self.subscribe_shutdown();
        let waiting = !uplink.state.lock().handed.is_empty();
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
        while let Some(front) = s.queue.front() {
            let size = wire::encoded_len(&front.write.update);
            if !batch.is_empty() && (batch.len() >= UPLINK_BATCH || bytes + size > BATCH_BYTES) {
                break;
            }
            bytes += size;
            batch.extend(s.queue.pop_front());
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

    /// Outcomes the parent owed us, heard over `link`.
    fn take_notices(&self, notices: Vec<Notice>, link: &Link) {
        for n in notices {
            let p = {
                let mut s = self.inner.uplink.state.lock();
                if s.link.as_ref() != Some(link) {
                    return; // a new link: all of it goes again
                }
                s.seen = s.seen.max(n.seq);
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

    /// Hands a write's outcome to whoever waits for it, and owes it to
    /// each child that was answered before it. `linger`: the write was
    /// unconfirmed here, so its push may still be on its way.
    fn resolve(&self, p: Pending, result: WriteResult, linger: bool) {
        let linger = if linger { mono_ms() + ACCEPTED_LINGER_MS } else { 0 };
        self.inner.store.unexpect(&p.write.update.key, linger);
        let (txs, owed) = {
            let mut s = self.inner.uplink.state.lock();
            s.remember(p.write.id, result.clone());
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
        for tx in txs {
            let _ = tx.send(result.clone());
        }
        self.inner.uplink.settled.notify_waiters();
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
    fn settle(&self, p: &Pending, result: &WriteResult, answer: Answer) {
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

    /// `POST {parent}/internal/write` with a batch from the uplink (empty:
    /// a poll for notices), saying the highest notice we have.
    async fn send_writes(&self, batch: &[Pending], link: &Link, seen: u64) -> Result<WriteResults> {
        let me = self.place()?.topology.id;
        let parent = &link.parent;
        Metrics::inc(&self.inner.metrics.upstream_requests);
        // `seen` only once a notice came: a parent built before notices
        // refuses the parameter, and sends none (upgrades go leaves first).
        let url = match seen {
            0 => format!("{}/internal/write?child={me}", parent.url),
            seen => format!("{}/internal/write?child={me}&seen={seen}", parent.url),
        };
        let writes: Vec<Write> = batch.iter().map(|p| p.write.clone()).collect();
        let started = std::time::Instant::now();
        // A poll waits up to HOP_WAIT at the parent, as a batch may.
        let results: Result<WriteResults> = self
            .post_internal(
                self.inner.http.clone(),
                &parent.url,
                &url,
                wire::encode_writes(&writes),
                UPLINK_TIMEOUT,
                link.generation,
            )
            .await;
        if !batch.is_empty() {
            self.inner.metrics.upstream(Upstream::Write, results.is_ok(), started.elapsed());
        }
        let results = results?;
        if results.results.len() != batch.len() {
            return Err(Error::Internal(format!(
                "{url} answered {} results for {} writes",
                results.results.len(),
                batch.len()
            )));
        }
        Ok(results)
    }

    /// SIGTERM: takes no new writes and waits (at most `limit`) until every
    /// queued write has been handed to the parent.
    pub(super) async fn drain_uplink(&self, limit: Duration) {
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
mod tests {
    use super::*;

    fn id(seq: u64) -> WriteId {
        WriteId { origin: 7, incarnation: 99, seq }
    }

    #[test]
    fn the_root_decides_each_write_id_once() {
        let mut o = Outcomes::default();
        assert!(matches!(o.check(&id(1)), Verdict::New));
        o.record(&id(1), WriteResult::Committed { version: 10, created: true });
        match o.check(&id(1)) {
            Verdict::Decided(r) => assert_eq!(r, WriteResult::Committed { version: 10, created: true }),
            Verdict::New => panic!("a resend must get the first outcome"),
        }
        assert!(matches!(o.check(&id(2)), Verdict::New));
        assert!(matches!(o.check(&WriteId { incarnation: 100, ..id(1) }), Verdict::New), "a new incarnation");
    }

    #[test]
    fn a_write_overtaken_by_a_later_one_from_its_node_is_refused() {
        let mut o = Outcomes::default();
        o.record(&id(5), WriteResult::Committed { version: 3, created: false });
        match o.check(&id(4)) {
            Verdict::Decided(WriteResult::Failed { error }) => assert!(error.contains("per-node write order")),
            _ => panic!("seq 4 after seq 5 must not commit"),
        }
    }

    #[test]
    fn outcomes_survive_an_export_and_restore() {
        let mut o = Outcomes::default();
        o.record(&id(3), WriteResult::Committed { version: 42, created: true });
        o.record(&id(4), WriteResult::Absent);
        o.record(&id(5), WriteResult::InsyncBelowMin { have: 1, need: 2 });
        assert_eq!(o.export().len(), 2, "a refusal is not exported as a delete of an absent key");
        let mut again = Outcomes::default();
        for (id, version) in o.export() {
            let result = match version {
                0 => WriteResult::Absent,
                v => WriteResult::Committed { version: v, created: false },
            };
            again.record(&id, result);
        }
        assert!(matches!(again.check(&id(3)), Verdict::Decided(WriteResult::Committed { version: 42, .. })));
        assert!(matches!(again.check(&id(4)), Verdict::Decided(WriteResult::Absent)));
        assert!(matches!(again.check(&id(6)), Verdict::New));
    }

    #[test]
    fn outcomes_stay_bounded() {
        let mut o = Outcomes::default();
        for seq in 1..=(OUTCOMES_PER_ORIGIN as u64 + 10) {
            o.record(&id(seq), WriteResult::Absent);
        }
        assert_eq!(o.export().len(), OUTCOMES_PER_ORIGIN);
        match o.check(&id(1)) {
            Verdict::Decided(WriteResult::Failed { error }) => {
                assert!(error.contains("no longer remembers"), "a forgotten outcome is not called a refusal: {error}")
            }
            _ => panic!("an old resend is decided"),
        }
        for origin in 0..(ORIGINS as u64 + 5) {
            o.check(&WriteId { origin, incarnation: 1, seq: 1 });
            o.record(&WriteId { origin, incarnation: 1, seq: 1 }, WriteResult::Absent);
        }
        assert!(o.origins.len() <= ORIGINS);
    }

    fn pending(seq: u64) -> Pending {
        let update = Update { key: format!("k{seq}"), version: 0, value: None, expires_at: None };
        Pending { write: Write { update, id: id(seq), ack_root: false }, child: None }
    }

    fn link(parent: NodeId, generation: u64) -> Link {
        Link { parent: Peer { id: parent, url: format!("http://127.0.0.1:{parent}") }, generation }
    }

    fn queued(s: &UplinkState) -> Vec<u64> {
        s.queue.iter().map(|p| p.write.id.seq).collect()
    }

    #[test]
    fn writes_a_parent_took_go_again_first_and_in_order_over_a_new_link() {
        let mut s = UplinkState::default();
        assert_eq!(s.relink(&link(1, 1)), 0, "the first link has nothing to send again");
        for seq in [1, 2, 3] {
            s.hand(pending(seq));
        }
        s.queue.push_back(pending(4));
        assert!(s.unhand(&id(2)).is_some(), "an outcome heard: no longer ours");
        s.seen = 17;
        assert_eq!(s.relink(&link(1, 1)), 0, "the same link: nothing goes again");
        assert_eq!(queued(&s), vec![4]);
        assert_eq!(s.relink(&link(1, 2)), 2, "a reset is a new link, though the parent is the same");
        assert_eq!(queued(&s), vec![1, 3, 4], "unconfirmed writes first, in the order they were taken");
        assert!(s.handed.is_empty() && s.handed_ids.is_empty());
        assert_eq!(s.seen, 0, "notices are counted per link");
        s.hand(pending(5));
        assert_eq!(s.relink(&link(2, 2)), 1, "a new parent");
        assert_eq!(queued(&s), vec![5, 1, 3, 4]);
    }

    #[test]
    fn notices_are_kept_until_the_child_has_them_and_numbered_above_an_earlier_process() {
        let mut s = UplinkState::default();
        let committed = WriteResult::Committed { version: 9, created: true };
        s.owe(3, id(1), "a", &committed);
        s.owe(3, id(2), "b", &committed);
        s.owe(4, id(3), "c", &WriteResult::Absent);
        let first = s.notices[&3][0].seq;
        assert!(first > 1_000_000_000, "numbered from the clock, not from 1: {first}");
        s.acked(3, first - 1);
        assert_eq!(s.notices[&3].len(), 2, "nothing the child has not seen is dropped");
        s.acked(3, first);
        assert_eq!(s.notices[&3].iter().map(|o| o.id.seq).collect::<Vec<_>>(), vec![2]);
        s.acked(3, u64::MAX);
        assert!(!s.notices.contains_key(&3), "all seen: forgotten");
        assert_eq!(s.notices[&4].len(), 1, "another child's notices stay");
    }

    #[test]
    fn hops_remember_a_bounded_number_of_settled_ids() {
        let mut s = UplinkState::default();
        for seq in 0..(RECENT_IDS as u64 + 3) {
            s.remember(id(seq), WriteResult::Accepted);
        }
        assert_eq!(s.recent.len(), RECENT_IDS);
        assert!(!s.recent.contains_key(&id(0)));
        assert!(s.recent.contains_key(&id(RECENT_IDS as u64 + 2)));
    }
}
