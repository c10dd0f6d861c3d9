//! The root's side of the write path: each write id committed once
//! ([`Outcomes`], which also refuses a write overtaken by a later one from
//! its node), given its version, and made durable (commit log, in-sync
//! standbys) before it is pushed or answered.
//!
//! Must not commit a write id twice or out of its node's order, nor answer
//! or push a commit before it is durable.

use std::collections::{HashMap, VecDeque};
use std::mem::size_of;

use super::settled::{map_bytes, Kept};
use super::Ack;
use crate::clock::{now_us, Time};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::node::finish::Finish;
use crate::node::Node;
use crate::slots::{slot_of, Slot, UNKNOWN_SLOT};
use crate::store::{Committed, Condition, NodeId, Update, WriteId};
use crate::wire::{Write, WriteResult};

/// Outcomes the root remembers per writing node (incarnation), and how many
/// writing nodes.
pub(super) const OUTCOMES_PER_ORIGIN: usize = 4_096;
pub(super) const ORIGINS: usize = 4_096;

/// The root's memory of which write ids it committed, with their outcomes.
///
/// Bounded by count, not by age: a resend can reach the root any time
/// later (a hop remembers what it settled for a minute, see `settled`),
/// and `high` keeps an id from being committed twice even once its outcome
/// is forgotten.
#[derive(Default)]
pub(in crate::node) struct Outcomes {
    pub(super) origins: HashMap<(NodeId, u64), Origin>,
    tick: u64,
    /// Heap bytes of the boxed outcomes, over every origin.
    boxed: usize,
}

#[derive(Default)]
pub(super) struct Origin {
    /// Highest sequence decided from this node incarnation.
    high: u64,
    /// Outcomes by sequence, ascending (ids are decided in their node's
    /// order, so a new one goes at the back).
    results: VecDeque<(u64, Kept)>,
    used: u64,
}

impl Origin {
    fn find(&self, seq: u64) -> Result<usize, usize> {
        self.results.binary_search_by_key(&seq, |&(s, _)| s)
    }

    fn heap_bytes(&self) -> usize {
        self.results.iter().map(|(_, kept)| kept.heap_bytes()).sum()
    }
}

/// A batch decided: the answers, what to make durable, what to push to whom.
#[derive(Default)]
struct Decided {
    results: Vec<WriteResult>,
    durable: Vec<(Update, Option<WriteId>)>,
    pushes: Vec<(Update, Vec<NodeId>)>,
    /// A write was decided before (or a condition found a version): it may
    /// still be on its way to disk.
    seen_before: bool,
}

/// What the root makes of a write id.
pub(super) enum Verdict {
    New,
    Decided(WriteResult),
}

impl Outcomes {
    /// What the root makes of write `id`, of a key in `slot`: decided
    /// before (its outcome); refused, because a later write of the same
    /// slot from its node was decided here first (per-(node, slot) order,
    /// guarantee 5); or new. Writes of other slots may come in any order:
    /// a router's batch goes to each group apart, and a slot that moves
    /// brings its later writes to a group that took earlier ones of others.
    pub(super) fn check(&mut self, id: &WriteId, slot: Slot) -> Verdict {
        self.tick += 1;
        let Some(origin) = self.origins.get_mut(&(id.origin, id.incarnation)) else { return Verdict::New };
        origin.used = self.tick;
        let at = match origin.find(id.seq) {
            Ok(at) => return Verdict::Decided(origin.results[at].1.result()),
            Err(at) => at,
        };
        if id.seq > origin.high {
            return Verdict::New;
        }
        let forgotten =
            origin.results.len() >= OUTCOMES_PER_ORIGIN && origin.results.front().is_some_and(|&(s, _)| id.seq < s);
        if forgotten {
            // A resend of an old write (its sender changed parents with
            // more than this many unconfirmed): decided, but which way is
            // no longer known here.
            return Verdict::Decided(WriteResult::Failed {
                error: format!(
                    "write {}/{}/{} was decided before, but the root no longer remembers how (it keeps the last \
                     {OUTCOMES_PER_ORIGIN} outcomes per writing process): it may have been committed; read the key",
                    id.origin, id.incarnation, id.seq
                ),
            });
        }
        let same = |other: Slot| other == slot || other == UNKNOWN_SLOT || slot == UNKNOWN_SLOT;
        if origin.results.range(at..).any(|(_, kept)| same(kept.slot())) {
            return Verdict::Decided(WriteResult::Failed {
                error: format!(
                    "write {}/{}/{} reached the root after a later write of its slot from the same node was \
                     committed; it was not committed (per-node write order)",
                    id.origin, id.incarnation, id.seq
                ),
            });
        }
        Verdict::New
    }

    /// Whether `id`'s outcome is remembered here.
    pub(super) fn is_decided(&self, id: &WriteId) -> bool {
        self.origins.get(&(id.origin, id.incarnation)).is_some_and(|o| o.find(id.seq).is_ok())
    }

    pub(super) fn record(&mut self, id: &WriteId, result: WriteResult, slot: Slot) {
        let origin = self.origins.entry((id.origin, id.incarnation)).or_default();
        origin.high = origin.high.max(id.seq);
        origin.used = self.tick;
        let kept = Kept::new(&result, slot);
        let added = kept.heap_bytes();
        let mut removed = 0;
        match origin.find(id.seq) {
            Ok(at) => removed = std::mem::replace(&mut origin.results[at].1, kept).heap_bytes(),
            // Full, and older than every outcome kept: forgotten at once.
            Err(0) if origin.results.len() >= OUTCOMES_PER_ORIGIN => removed = added,
            Err(mut at) => {
                // The oldest goes first, so the queue never outgrows the bound.
                if origin.results.len() >= OUTCOMES_PER_ORIGIN {
                    removed = origin.results.pop_front().map_or(0, |(_, old)| old.heap_bytes());
                    at -= 1;
                }
                origin.results.insert(at, (id.seq, kept));
            }
        }
        self.boxed = self.boxed + added - removed;
        if self.origins.len() > ORIGINS {
            if let Some(oldest) = self.origins.iter().min_by_key(|(_, o)| o.used).map(|(k, _)| *k) {
                if let Some(gone) = self.origins.remove(&oldest) {
                    self.boxed -= gone.heap_bytes();
                }
            }
        }
    }

    /// An estimate of the bytes the table holds: the map of writing nodes,
    /// each one's outcomes, the boxed outcomes.
    pub(in crate::node) fn bytes(&self) -> usize {
        let per_origin: usize = self.origins.values().map(|o| o.results.capacity()).sum();
        map_bytes::<(NodeId, u64), Origin>(self.origins.capacity()) + per_origin * size_of::<(u64, Kept)>() + self.boxed
    }

    /// Outcomes remembered, over every writing node (at most
    /// [`OUTCOMES_PER_ORIGIN`] each, of at most [`ORIGINS`] nodes).
    pub(in crate::node) fn len(&self) -> usize {
        self.origins.values().map(|o| o.results.len()).sum()
    }

    /// Every remembered outcome as (id, version; 0 for a delete of an
    /// absent key; its key's slot), for a snapshot of the root's state, or
    /// of the slots in `only` (and those of unknown slot) for a slot move.
    /// A write refused for `--min-insync` is not kept: nothing of it is in
    /// the log either.
    pub(in crate::node) fn export(&self, only: Option<&std::collections::BTreeSet<Slot>>) -> Vec<(WriteId, u64, Slot)> {
        let mut out = Vec::new();
        for (&(origin, incarnation), o) in &self.origins {
            for (seq, kept) in &o.results {
                let (seq, slot) = (*seq, kept.slot());
                if only.is_some_and(|only| slot != UNKNOWN_SLOT && !only.contains(&slot)) {
                    continue;
                }
                // A refused condition wrote nothing, so it is not in the log
                // either: after a restart a resend is decided again.
                let version = match kept {
                    Kept::Committed { version, .. } => *version,
                    Kept::Absent { .. } => 0,
                    Kept::Other(..) => continue,
                };
                out.push((WriteId { origin, incarnation, seq }, version, slot));
            }
        }
        out
    }
}

impl Node {
    /// The root commits a write from its own client.
    pub(super) async fn commit_own(&self, update: Update, ack: Ack, cond: Condition) -> Result<WriteResult> {
        self.check_accepting()?;
        if let (Ack::Root, Some((have, need))) = (ack, self.insync_shortfall()) {
            return Err(Error::InsyncBelowMin { have, need });
        }
        let keys = [update.key.clone()];
        let mut update = Some(update);
        let (mark, (result, push)) = loop {
            // A slot being handed over takes no write (see `moves`).
            self.wait_unfrozen(&keys).await?;
            let mark = self.inner.store.mark();
            let once = || self.commit_one(update.take().expect("committed once"), cond, None);
            if let Some(done) = self.if_unfrozen(&keys, once)? {
                break (mark, done);
            }
        };
        let committed_us = now_us();
        match &push {
            Some((update, _)) => self.make_durable(vec![(update.clone(), None)]).await?,
            // A refusal names the version it found: that version may still
            // be on its way to disk, and must be before anyone hears of it.
            None if matches!(result, WriteResult::ConditionFailed { .. }) => self.make_durable(Vec::new()).await?,
            None => {}
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
    /// Nothing is pushed or answered before the batch is durable. A write
    /// of a frozen slot (a slot move's) is answered `SlotMoving` at once,
    /// undecided: the child sends it again, and the batch's other writes
    /// are not held back by it. Without a child (a standby's writes, one
    /// at a time) the batch waits for the slot, as a client's write does.
    pub(in crate::node) async fn commit_batch(
        &self,
        child: Option<NodeId>,
        writes: Vec<Write>,
    ) -> Result<Vec<WriteResult>> {
        let ack_roots: Vec<bool> = writes.iter().map(|w| w.ack_root).collect();
        self.check_accepting()?;
        // A slot being handed over takes no write (see `moves`): the batch
        // waits, then commits with no freeze between the check and its
        // last commit.
        let keys: Vec<String> = writes.iter().map(|w| w.update.key.clone()).collect();
        // A resend of writes all decided here gets their outcomes, even if
        // their slots have gone to another group since: sent there as new
        // writes they would commit twice.
        let resend = {
            let outcomes = self.inner.outcomes.lock();
            writes.iter().all(|w| outcomes.is_decided(&w.id))
        };
        let mut writes = Some(writes);
        let (mark, decided) = loop {
            if !resend && child.is_none() {
                self.wait_unfrozen(&keys).await?;
            }
            // Before any holder is read: a child added back while the
            // batch is made durable is reset, and gets none of these pushes.
            let mark = self.inner.store.mark();
            let shortfall = self.insync_shortfall();
            let none = std::collections::BTreeSet::new();
            if resend {
                break (mark, self.decide_each(writes.take().expect("decided once"), child, shortfall, &none));
            }
            if child.is_some() {
                let decide = |frozen: &std::collections::BTreeSet<Slot>| {
                    self.decide_each(writes.take().expect("decided once"), child, shortfall, frozen)
                };
                break (mark, self.with_held(&keys, decide)?);
            }
            let decide = || self.decide_each(writes.take().expect("decided once"), child, shortfall, &none);
            if let Some(decided) = self.if_unfrozen(&keys, decide)? {
                break (mark, decided);
            }
        };
        let Decided { mut results, durable, pushes, seen_before } = decided;
        let committed_us = now_us();
        if !durable.is_empty() || seen_before {
            // A write seen before may still be on its way to disk in
            // another batch (and so may the version a refused condition
            // found): waiting covers everything appended so far.
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

    /// Decides each write of a batch in order, each id once: what to
    /// answer, and what to log and push once it is durable. Runs with no
    /// slot frozen but those of `frozen` (see [`Node::commit_batch`]),
    /// whose new writes are answered `SlotMoving`, undecided.
    fn decide_each(
        &self,
        writes: Vec<Write>,
        child: Option<NodeId>,
        shortfall: Option<(usize, usize)>,
        frozen: &std::collections::BTreeSet<Slot>,
    ) -> Decided {
        // In the batch's order, deletes of absent keys included (version
        // 0): nothing to store, but their outcome is logged and replicated
        // like a commit, so per-node order and exactly-once hold for them
        // across a restart or a failover.
        let mut d = Decided { results: Vec::with_capacity(writes.len()), ..Decided::default() };
        for w in writes {
            let slot = slot_of(&w.update.key);
            let mut outcomes = self.inner.outcomes.lock();
            if let (true, Some((have, need))) = (w.ack_root, shortfall) {
                // Not committed, and decided so: the client hears 503 and
                // may retry (a new write); a copy of this one still on its
                // way by another path gets the same answer, never a commit
                // the client was told did not happen. Later writes from
                // its node still commit.
                let result = match outcomes.check(&w.id, slot) {
                    Verdict::Decided(result) => result,
                    Verdict::New if frozen.contains(&slot) => WriteResult::SlotMoving { slot },
                    Verdict::New => {
                        let result = WriteResult::InsyncBelowMin { have, need };
                        outcomes.record(&w.id, result.clone(), slot);
                        result
                    }
                };
                d.results.push(result);
                continue;
            }
            match outcomes.check(&w.id, slot) {
                Verdict::Decided(result) => {
                    Metrics::inc(&self.inner.metrics.duplicate_writes);
                    d.seen_before = true;
                    d.results.push(result);
                }
                // Not decided: the sender tries it again (once the slot is
                // handed over, at its new owner).
                Verdict::New if frozen.contains(&slot) => d.results.push(WriteResult::SlotMoving { slot }),
                Verdict::New => {
                    // Only a delete can find its key absent.
                    let deleted = w.update.value.is_none().then(|| w.update.key.clone());
                    let (result, push) = self.commit_one(w.update, w.cond, child);
                    outcomes.record(&w.id, result.clone(), slot);
                    drop(outcomes);
                    // A refusal names the version it found, which may be
                    // on its way to disk still: wait for it, as for a resend.
                    d.seen_before |= matches!(result, WriteResult::ConditionFailed { .. });
                    if let Some((update, mut holders)) = push {
                        d.durable.push((update.clone(), Some(w.id)));
                        // The sender learns the commit from this batch's
                        // answer, or, if that is lost, from the answer to
                        // the same batch sent again (its uplink sends it
                        // until answered; the outcome is kept): a push to
                        // it too would double the root's requests per write.
                        holders.retain(|&h| Some(h) != child);
                        d.pushes.push((update, holders));
                    } else if let (WriteResult::Absent, Some(key)) = (&result, deleted) {
                        d.durable.push((Update { key, version: 0, value: None, expires_at: None }, Some(w.id)));
                    }
                    d.results.push(result);
                }
            }
        }
        d
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

    /// Gives one write its version and stores it, if its condition holds
    /// and it does not grow the store past `--max-memory` (both decided in
    /// the store's critical section, so in version order, and before the
    /// write has a version: a refusal is never logged, replicated or
    /// pushed); returns the answer and what to push to whom once it is
    /// durable.
    fn commit_one(
        &self,
        update: Update,
        cond: Condition,
        child: Option<NodeId>,
    ) -> (WriteResult, Option<(Update, Vec<NodeId>)>) {
        let pushes = self.place().map(|p| p.coherence.pushes()).unwrap_or(true);
        let holder = child.filter(|_| pushes);
        // Pending from the moment it exists: no read sees it before it is
        // durable (see `replica`).
        let next = || self.next_version();
        let max = self.args().max_memory.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        match self.inner.store.commit(&update, cond, Time::now(), holder, max, next) {
            Committed::Done { version, created, holders } => {
                Metrics::inc(&self.inner.metrics.commits);
                let update = Update { version, ..update };
                (WriteResult::Committed { version, created }, Some((update, holders)))
            }
            Committed::Absent => (WriteResult::Absent, None),
            Committed::ConditionFailed { current } => {
                Metrics::inc(&self.inner.metrics.conditions_failed);
                (WriteResult::ConditionFailed { current }, None)
            }
            Committed::Full { bytes, max } => {
                Metrics::inc(&self.inner.metrics.root_full);
                log::debug!("{}: refused, the store holds {bytes} bytes of --max-memory {max}", update.key);
                (WriteResult::RootFull { bytes: bytes as u64, max: max as u64 }, None)
            }
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
    /// It finishes even if the request that committed these is dropped
    /// meanwhile (the client or the child gave up): they still reach the
    /// log and stop being pending. A version left pending for good would
    /// hold back the mark every standby serves by. Without standbys it runs
    /// where it is awaited, and as a task of its own only once dropped
    /// ([`Finish`]); with standbys, as a task from the start.
    ///
    /// A record of version 0 is a delete of an absent key: only its outcome
    /// (write id, 0) is logged and streamed.
    async fn make_durable(&self, records: Vec<(Update, Option<WriteId>)>) -> Result<()> {
        self.make_durable_with(records, Vec::new()).await
    }

    /// [`Node::make_durable`], with `extra` log frames after the records
    /// (a slot move's: imported outcomes, a freeze, a drop).
    pub(in crate::node) async fn make_durable_with(
        &self,
        records: Vec<(Update, Option<WriteId>)>,
        extra: Vec<Vec<u8>>,
    ) -> Result<()> {
        self.make_durable_holding(records, extra, None).await
    }

    /// [`Node::make_durable_with`], holding `held` (a lock that orders
    /// this change against others, a slot move's) until the work is done,
    /// even if the caller is dropped meanwhile: the work goes on, and so
    /// does the order.
    pub(in crate::node) async fn make_durable_holding(
        &self,
        records: Vec<(Update, Option<WriteId>)>,
        extra: Vec<Vec<u8>>,
        held: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<()> {
        let node = self.clone();
        let work = async move {
            let _held = held;
            let result = node.make_durable_now(&records, extra).await;
            if result.is_ok() {
                // Durable: readers may see it. On an error (deposed, or
                // the log stopped) it stays pending: never served by this
                // root.
                node.pending_remove(records.iter().map(|(u, _)| u.version).filter(|&v| v > 0));
            }
            result
        };
        if self.has_standbys() {
            // Waits for standbys' acknowledgements. Run where the batch
            // arrived, 64 writers at a root with one standby lost 5-8% of
            // their throughput (the stream's work moves to the HTTP
            // workers, and every acknowledgement wakes them across
            // threads): as a task on the node's runtime, with the streams.
            let task = self.inner.runtime.spawn(work);
            return task.await.map_err(|e| Error::Internal(format!("making commits durable: {e}")))?;
        }
        Finish::new(self.inner.runtime.clone(), work).await
    }

    /// Appends to the commit log and streams to every standby at once,
    /// then waits for the log and for each in-sync standby (see
    /// [`Node::await_replicated`]).
    async fn make_durable_now(&self, records: &[(Update, Option<WriteId>)], extra: Vec<Vec<u8>>) -> Result<()> {
        self.check_leading()?;
        let epoch = self.epoch();
        // Each commit is encoded once: the same frames go to the log (one
        // append for the batch) and to every standby.
        let mut frames: Vec<Vec<u8>> = if self.inner.log.is_some() || self.has_standbys() {
            let frame = |(update, write_id): &(Update, Option<WriteId>)| match (update.version, write_id) {
                (0, Some(id)) => crate::replication::outcome_frame(*id, 0, slot_of(&update.key)),
                _ => crate::replication::frame_of(crate::log::Record {
                    epoch,
                    update: update.clone(),
                    write_id: *write_id,
                }),
            };
            records.iter().map(frame).collect()
        } else {
            Vec::new()
        };
        if self.inner.log.is_some() || self.has_standbys() {
            frames.extend(extra);
        }
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

    /// The root's remembered write outcomes (of the slots in `only`, or
    /// all), for a snapshot or a slot move.
    pub fn write_outcomes(&self, only: Option<&std::collections::BTreeSet<Slot>>) -> Vec<(WriteId, u64, Slot)> {
        self.inner.outcomes.lock().export(only)
    }

    /// Replay, a standby's stream, a slot move: the write `id` of a key in
    /// `slot` was decided, committed at `version` (0: a delete of an absent
    /// key). A resend finds it.
    pub fn restore_write_outcome(&self, id: WriteId, version: u64, slot: Slot) {
        let result = match version {
            0 => WriteResult::Absent,
            version => WriteResult::Committed { version, created: false },
        };
        self.inner.outcomes.lock().record(&id, result, slot);
    }
}
