//! The push path. Each child has one queue that coalesces updates by key
//! (only the newest version of a key waits), and one task that sends what
//! is queued as a single batch, so under load a child gets one request per
//! round trip, not one per write. A failed batch is re-queued (newer
//! updates win) and retried with backoff while the child is ours.
//!
//! Receiving: only from this node's parent (the batch names its sender), in
//! the current epoch; an update is applied only if newer and only for keys
//! held or expected; keys not held are named in the reply, and the parent
//! forgets this node as their holder. Batches are bounded in count and
//! bytes, so large values never make a batch too big to be taken.
//!
//! Push lag: the root stamps each commit with its wall-clock time, the
//! time travels with the update down every hop ([`crate::wire::Push`]), and
//! each node observes now − commit time in `treecache_push_lag_seconds`
//! for every pushed update it has afterwards (applied now, or held already
//! because the write's own answer brought it first: then the figure is an
//! upper bound). Across hosts the figure includes their clock skew.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::write::BATCH_BYTES;
use super::Node;
use crate::clock::{now_us, Time};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{Applied, Mark, NodeId, Update};
use crate::wire::{Peer, Push, PushReply};

/// Most updates in one push request, and most bytes (at least one update
/// goes, whatever its size).
const PUSH_BATCH: usize = 1024;
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PushQueue {
    peer: Peer,
    /// The store tick when this queue was made (the child added, or added
    /// back): holder records read before it are not this queue's.
    link: u64,
    pending: Mutex<Pending>,
    notify: Notify,
    closed: AtomicBool,
}

/// What waits for one child: updates of one store generation, the one
/// their holder records were read in. A child was told of every reset
/// (and stopped counting as our holder there), so an update queued before
/// one must not reach it labelled as after it: it would make the child's
/// copy current with no record here to keep it so.
#[derive(Default)]
struct Pending {
    generation: u64,
    updates: HashMap<String, Push>,
}

impl Pending {
    /// Moves to `generation` if it is newer (dropping what waited from
    /// before); false if `generation` is older than what waits.
    fn at(&mut self, generation: u64) -> bool {
        if generation > self.generation {
            self.generation = generation;
            self.updates.clear();
        }
        generation == self.generation
    }
}

impl PushQueue {
    fn new(peer: Peer, link: u64) -> Self {
        PushQueue {
            peer,
            link,
            pending: Mutex::new(Pending::default()),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues `update` (committed by the root at `committed_us`, when
    /// known) for the child, whose holder record was read after `mark`.
    /// Dropped if the queue is younger than the read (the record may be
    /// one the child lost when it was forgotten; it is being reset) or a
    /// reset came since.
    fn enqueue(&self, update: &Update, committed_us: Option<u64>, mark: Mark) {
        if mark.tick < self.link {
            return;
        }
        {
            let mut pending = self.pending.lock();
            if !pending.at(mark.generation) {
                return;
            }
            let pending = &mut pending.updates;
            let push = || Push { update: update.clone(), committed_us };
            match pending.get_mut(&update.key) {
                Some(queued) if queued.update.version >= update.version => {}
                Some(queued) => *queued = push(),
                None => {
                    pending.insert(update.key.clone(), push());
                }
            }
        }
        self.notify.notify_one();
    }

    /// Puts back a batch taken in `generation` that was not delivered.
    fn requeue(&self, batch: Vec<Push>, generation: u64) {
        let mut pending = self.pending.lock();
        if !pending.at(generation) {
            return;
        }
        let pending = &mut pending.updates;
        for p in batch {
            match pending.get(&p.update.key) {
                Some(newer) if newer.update.version >= p.update.version => {}
                _ => {
                    pending.insert(p.update.key.clone(), p);
                }
            }
        }
    }

    /// Takes a batch to send, with the generation it was queued in; what
    /// waited from before `now` (the store's generation) is dropped.
    fn take(&self, now: u64) -> (Vec<Push>, u64) {
        let mut pending = self.pending.lock();
        pending.at(now);
        let generation = pending.generation;
        let pending = &mut pending.updates;
        let mut keys = Vec::new();
        let mut bytes = 0;
        for (key, p) in pending.iter() {
            let size = crate::wire::encoded_len(&p.update);
            if !keys.is_empty() && (keys.len() >= PUSH_BATCH || bytes + size > BATCH_BYTES) {
                break;
            }
            bytes += size;
            keys.push(key.clone());
        }
        (keys.iter().filter_map(|k| pending.remove(k)).collect(), generation)
    }

    /// Drops what is queued: updates formed before a reset, or we no
    /// longer lead.
    pub(super) fn clear(&self) {
        self.pending.lock().updates.clear();
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Node {
    /// Refuses a push or clear that does not come from our parent.
    pub(super) fn check_from_parent(&self, from: NodeId) -> Result<()> {
        let place = self.place()?;
        match &place.topology.parent {
            Some(parent) if parent.id == from => Ok(()),
            parent => Err(Error::NotParent {
                from: format!("node {from}"),
                parent: parent.as_ref().map_or("none: this node is the root".into(), |p| format!("node {}", p.id)),
            }),
        }
    }

    /// Notes the generation our parent sends from; refuses a push formed
    /// before a reset of the parent's that we have already heard of.
    pub(super) fn heard_parent_generation(&self, generation: u64) -> Result<()> {
        let known = self.inner.parent_generation.fetch_max(generation, std::sync::atomic::Ordering::AcqRel);
        if generation < known {
            return Err(Error::StaleGeneration { got: generation, have: known });
        }
        Ok(())
    }

    /// Updates waiting in the push queues, not yet taken into a batch.
    pub fn push_queued(&self) -> usize {
        self.inner.pushers.lock().values().map(|q| q.pending.lock().updates.len()).sum()
    }

    /// Drops every queued push: they were formed before a reset, or we no
    /// longer lead.
    pub(super) fn drop_queued_pushes(&self) {
        for q in self.inner.pushers.lock().values() {
            q.clear();
        }
    }

    /// Queues `update` for each of `holders` that is a child of ours,
    /// without a commit time (a fill's answer, a write's answer). `mark`:
    /// taken before the holders were read (a reset since drops the update,
    /// and so does a child's queue made since: those children were told to
    /// revalidate instead).
    pub(super) fn push_to(&self, holders: &[NodeId], update: &Update, mark: Mark) {
        self.push_committed(holders, update, None, mark);
    }

    /// Queues `update`, committed by the root at `committed_us` (wall
    /// clock, µs) when known, for each of `holders` that is a child of ours
    /// (`mark` as for [`Node::push_to`]).
    pub(super) fn push_committed(&self, holders: &[NodeId], update: &Update, committed_us: Option<u64>, mark: Mark) {
        if holders.is_empty() {
            return;
        }
        let queues = self.inner.pushers.lock();
        for h in holders {
            if let Some(q) = queues.get(h) {
                q.enqueue(update, committed_us, mark);
            }
        }
    }

    /// Makes the push queues match `children`: a queue (and task) per child;
    /// a child that went is forgotten as a holder everywhere. A child that
    /// comes (or comes back) is told to revalidate what it holds: had it
    /// been ours before, we forgot it as a holder when it went, and it may
    /// never have noticed going (a topology message lost or overtaken).
    pub(super) fn sync_children(&self, children: &[Peer]) {
        self.inner.uplink.keep_children(children);
        let (gone, added) = {
            let mut queues = self.inner.pushers.lock();
            let gone: Vec<NodeId> = queues
                .iter()
                .filter(|(id, q)| !children.iter().any(|c| c.id == **id && c.url == q.peer.url))
                .map(|(id, _)| *id)
                .collect();
            for id in &gone {
                if let Some(q) = queues.remove(id) {
                    q.close();
                }
            }
            let mut added = Vec::new();
            for c in children {
                if let std::collections::hash_map::Entry::Vacant(slot) = queues.entry(c.id) {
                    let q = Arc::new(PushQueue::new(c.clone(), self.inner.store.tick_now()));
                    slot.insert(q.clone());
                    added.push(q);
                }
            }
            (gone, added)
        };
        for id in gone {
            log::debug!("child {id} is no longer ours: forgotten as a holder");
            self.inner.store.forget_child(id);
        }
        let generation = self.inner.store.generation();
        for q in added {
            let (node, child) = (self.clone(), q.peer.clone());
            self.spawn(async move { node.send_reset(child, generation).await });
            self.spawn(self.clone().run_push_queue(q));
        }
    }

    async fn run_push_queue(self, q: Arc<PushQueue>) {
        let mut backoff = Duration::from_millis(50);
        let mut shutdown = self.subscribe_shutdown();
        loop {
            if q.is_closed() || self.is_shutting_down() {
                return;
            }
            // Queued in this generation (older updates are dropped): if we
            // reset before it is delivered, the child may have heard of the
            // reset first and refuses it.
            let (batch, generation) = q.take(self.inner.store.generation());
            if batch.is_empty() {
                tokio::select! {
                    _ = q.notify.notified() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let delay = self.args().fault_push_delay_ms;
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            // The child went meanwhile (it may be back already, reset, with
            // a new queue): this batch is for records we forgot.
            if q.is_closed() {
                return;
            }
            let sent_at = self.inner.store.tick_now();
            if log::log_enabled!(log::Level::Debug) {
                let what: Vec<String> =
                    batch.iter().take(16).map(|p| format!("{}@{}", p.update.key, p.update.version)).collect();
                log::debug!("push to child {} gen {generation}: {}", q.peer.id, what.join(" "));
            }
            match self.send_push(&q.peer, &batch, generation).await {
                Ok(reply) => {
                    if !reply.not_held.is_empty() {
                        log::debug!("child {} no longer holds {:?}", q.peer.id, reply.not_held);
                    }
                    Metrics::add(&self.inner.metrics.pushes_sent, batch.len() as u64);
                    Metrics::inc(&self.inner.metrics.push_batches_sent);
                    for key in reply.not_held {
                        self.inner.store.remove_holder(&key, q.peer.id, sent_at);
                    }
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    Metrics::inc(&self.inner.metrics.push_failures);
                    log::warn!("push of {} updates to child {} ({}) failed: {e}", batch.len(), q.peer.id, q.peer.url);
                    // Dropped if formed before a reset of ours: the child
                    // revalidates instead.
                    q.requeue(batch, generation);
                    if !self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn send_push(&self, child: &Peer, batch: &[Push], generation: u64) -> Result<PushReply> {
        let url = format!("{}/internal/push", child.url);
        let body = crate::wire::encode_pushes(batch);
        self.post_internal(self.epoch(), self.inner.http.clone(), &child.url, &url, body, PUSH_TIMEOUT, generation)
            .await
    }

    /// `POST /internal/push` from node `from`: apply what is newer and
    /// held, pass it on to our own holders (with its commit time), name
    /// what we do not hold, and observe the push lag of what we have. Only
    /// our parent may push to us.
    pub fn receive_push(
        &self,
        from: NodeId,
        epoch: Option<u64>,
        generation: u64,
        pushes: Vec<Push>,
        tick: Option<u64>,
    ) -> Result<PushReply> {
        let store = &self.inner.store;
        let mark = store.mark();
        let ours = mark.generation;
        // A group leader is a root: it never evicts, so its tick (for our
        // "dropped" messages) is not kept.
        if self.check_upstream_sender(from, epoch, generation)? {
            if let Some(tick) = tick {
                store.note_parent_tick(ours, tick);
            }
        }
        let metrics = &self.inner.metrics;
        Metrics::add(&metrics.pushes_received, pushes.len() as u64);
        Metrics::inc(&metrics.push_batches_received);
        let mut reply = PushReply::default();
        let t = Time::now();
        let now = now_us();
        for Push { update: u, committed_us } in pushes {
            log::debug!("push from {from} gen {generation}: {}@{}", u.key, u.version);
            let applied = store.apply_push(&u, t, ours);
            if let (Some(at), Applied::Newer { .. } | Applied::Stale) = (committed_us, &applied) {
                metrics.push_lag.observe(Duration::from_micros(now.saturating_sub(at)));
            }
            match applied {
                Applied::Newer { holders } => {
                    Metrics::inc(&metrics.pushes_applied);
                    self.push_committed(&holders, &u, committed_us, mark);
                }
                Applied::Stale => {}
                Applied::NotHeld => {
                    Metrics::inc(&metrics.pushes_not_held);
                    reply.not_held.push(u.key);
                }
            }
        }
        self.note_growth();
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(key: &str, version: u64) -> Update {
        Update { key: key.into(), version, value: None, expires_at: None }
    }

    fn keys(batch: &[Push]) -> Vec<(String, u64)> {
        let mut keys: Vec<(String, u64)> = batch.iter().map(|p| (p.update.key.clone(), p.update.version)).collect();
        keys.sort();
        keys
    }

    /// Holders read in `generation` at tick 100 (after the queue was made).
    fn read(generation: u64) -> Mark {
        Mark { generation, tick: 100 }
    }

    fn queue() -> PushQueue {
        PushQueue::new(Peer { id: 4, url: "http://127.0.0.1:9".into() }, 50)
    }

    #[test]
    fn updates_queued_before_a_reset_never_go_out_labelled_after_it() {
        let q = queue();
        q.enqueue(&update("a", 1), None, read(3));
        q.enqueue(&update("a", 2), None, read(3));
        q.enqueue(&update("b", 1), None, read(3));
        // Our store was reset (generation 4) before the task took them: the
        // child forgot by then, revalidates, and would take them as current.
        let (batch, generation) = q.take(4);
        assert!(batch.is_empty(), "{:?}", keys(&batch));
        assert_eq!(generation, 4);
        // Queued in the new generation: sent, labelled with it.
        q.enqueue(&update("c", 5), None, read(4));
        // Read before the reset, queued after it: dropped.
        q.enqueue(&update("d", 5), None, read(3));
        let (batch, generation) = q.take(4);
        assert_eq!((keys(&batch), generation), (vec![("c".to_string(), 5)], 4));
        // A failed batch comes back only into its own generation.
        q.requeue(batch.clone(), 4);
        q.requeue(vec![Push { update: update("e", 1), committed_us: None }], 3);
        let (again, _) = q.take(4);
        assert_eq!(keys(&again), vec![("c".to_string(), 5)]);
        q.requeue(again, 4);
        q.enqueue(&update("f", 1), None, read(5));
        assert_eq!(keys(&q.take(5).0), vec![("f".to_string(), 1)], "the newer generation replaced the older");
    }

    #[test]
    fn holders_read_before_a_child_was_added_back_push_it_nothing() {
        // The child's queue was made at tick 50 (it was forgotten, then
        // added back and told to reset): records read at tick 40 may be
        // ones it lost, so their updates never reach it.
        let q = queue();
        q.enqueue(&update("old", 7), None, Mark { generation: 0, tick: 40 });
        q.enqueue(&update("new", 8), None, Mark { generation: 0, tick: 60 });
        assert_eq!(keys(&q.take(0).0), vec![("new".to_string(), 8)]);
    }
}
