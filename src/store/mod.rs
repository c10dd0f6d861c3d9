//! The versioned key-value store of one node. Pure: no I/O, no async, no
//! clock — every time-dependent call takes a [`Time`] (wall clock for
//! expiry, monotonic for ttl-mode freshness).
//!
//! It owns, per key: the value or a tombstone, the version the root gave it,
//! its expiry, when it arrived (ttl-mode freshness), and the holder directory
//! (which children hold the key, so pushes go only to them). It also owns the
//! "expecting" markers: a key whose fill or write is in flight accepts pushes
//! even before it is held, so a push that overtakes a fill answer is kept and
//! the late, older answer is dropped (the race that breaks naive client-side
//! caching). A bounded store (a node with `--max-memory`) also keeps the
//! eviction order, S3-FIFO ([`Queues`]), and charges it to the bound.
//!
//! Sharded by key hash; each shard is one `parking_lot::RwLock`. Critical
//! sections are a hash lookup and a few field writes, never an `.await`, so a
//! sync lock is cheaper than an async mutex and cannot be held across I/O.
//!
//! Split by concern: `entry` (what a key holds, and the values the API
//! takes and gives), `holders` (the holder directory), `queues` (a bounded
//! store's S3-FIFO order), `shard` (one shard, its lock and guard). This
//! file is the [`Store`] and its public API: it changes a shard only
//! through the shard's lock, and does no I/O and nothing async.

mod entry;
mod holders;
mod queues;
mod shard;
mod table;

use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::clock::Millis;
pub use crate::clock::Time;
pub use entry::{
    check_key, Answer, Applied, Committed, Condition, DropAnswer, DumpEntry, Lookup, Mark, Update, WriteId,
    MAX_KEY_BYTES,
};
pub use queues::Evicted;

use entry::{Entry, Stamp};
use holders::{Holders, HOLDER_BYTES};
use queues::{Queues, Step};
use shard::Shard;

pub type Version = u64;
pub type NodeId = u64;

const SHARDS: usize = 64;

/// A sharded, versioned store. Cheap to share behind an `Arc`.
pub struct Store {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    /// Monotonic logical clock: holder records and what pushes and
    /// "dropped" messages cover.
    tick: AtomicU64,
    /// Bumped by `reset`; fills started in an older generation are not cached.
    generation: AtomicU64,
    /// Sum of the shards' `bytes`.
    bytes: AtomicUsize,
    /// Where the next eviction pass starts (a shard index).
    hand: AtomicUsize,
    /// The highest store tick of the parent seen in its messages, in this
    /// generation: `(generation, tick)`. See [`Store::note_parent_tick`].
    parent_tick: Mutex<(u64, u64)>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An unbounded store (the root's): it never evicts.
    pub fn new() -> Self {
        Store::build(false, SHARDS)
    }

    /// A store that keeps the order [`Store::evict`] needs (each entry
    /// pays [`QUEUE_SLOT`](queues::QUEUE_SLOT) bytes and its key once more for it, and each
    /// ghost slot [`GHOST_SLOT`](queues::GHOST_SLOT)).
    pub fn bounded() -> Self {
        Store::build(true, SHARDS)
    }

    fn build(bounded: bool, shards: usize) -> Self {
        let hasher = RandomState::new();
        let shard = || Shard { queues: bounded.then(|| Queues::new(hasher.clone())), ..Shard::default() };
        Store {
            shards: (0..shards).map(|_| RwLock::new(shard())).collect(),
            hasher,
            tick: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            hand: AtomicUsize::new(0),
            parent_tick: Mutex::new((0, 0)),
        }
    }

    fn next_tick(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::AcqRel)
    }

    /// The generation and tick now, before holder records are read (see
    /// [`Mark`]).
    pub fn mark(&self) -> Mark {
        let generation = self.generation();
        Mark { generation, tick: self.next_tick() }
    }

    /// The store's logical clock now. A push batch notes it when sent, so a
    /// "not held" answer only removes holders recorded before the batch.
    pub fn tick_now(&self) -> u64 {
        self.next_tick()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads a key; expired entries read as absent. Marks the entry used.
    pub fn get(&self, key: &str, t: Time) -> Lookup {
        let shard = self.shard(key).read();
        match shard.map.get(key) {
            Some(entry) => {
                entry.touch();
                entry.lookup(t, self.generation())
            }
            None => Lookup::Absent,
        }
    }

    /// Reads a key for `child` and records the child as a holder in the same
    /// critical section, so no update can commit between the read and the
    /// record (the child would miss its push). Only a current value records
    /// the child: absent keys and tombstones record nothing (the child
    /// caches no negative answer from a fill), and an entry kept across a
    /// reset must be revalidated here first.
    pub fn get_and_hold(&self, key: &str, child: NodeId, t: Time) -> Lookup {
        let mut shard = self.shard_mut(key);
        let generation = self.generation();
        let tick = self.next_tick();
        let found = match shard.map.get_mut(key) {
            Some(entry) => {
                entry.touch();
                entry.lookup(t, generation)
            }
            None => return Lookup::Absent,
        };
        if matches!(found, Lookup::Value { current: true, .. }) {
            shard.hold(key, child, tick);
        }
        found
    }

    /// Records `child` as a holder of `key` if the key is held here.
    pub fn add_holder(&self, key: &str, child: NodeId) -> bool {
        let tick = self.next_tick();
        self.shard_mut(key).hold(key, child, tick)
    }

    /// Forgets `child` as a holder of `key`, unless it was recorded at or
    /// after `before` (a fill that began after the push that was refused).
    pub fn remove_holder(&self, key: &str, child: NodeId, before: u64) {
        self.shard_mut(key).unhold(key, |&(c, since)| c != child || since >= before);
    }

    pub fn holders_of(&self, key: &str) -> Vec<NodeId> {
        self.shard(key).read().map.get(key).map(Entry::holder_ids).unwrap_or_default()
    }

    /// Marks `key` as expected: a fill or write is in flight, so pushes for
    /// it are accepted even though the key is not held yet. Counted: each
    /// `expect` needs its own [`Store::unexpect`], and the mark does not
    /// lapse while any is open, however long the write takes.
    pub fn expect(&self, key: &str) {
        let mut shard = self.shard_mut(key);
        shard.expecting.entry(key.to_string()).or_default().count += 1;
    }

    /// [`Store::expect`] for a write that `child` sends up through this
    /// node: the child also becomes a holder of the key, now if the key is
    /// held here and current, else as soon as it arrives.
    pub fn expect_for(&self, key: &str, child: NodeId) {
        let tick = self.next_tick();
        let mut shard = self.shard_mut(key);
        let generation = self.generation();
        let held = shard.map.get(key).is_some_and(|e| e.stamp.is_current(generation));
        if held {
            shard.hold(key, child, tick);
        }
        let slot = shard.expecting.entry(key.to_string()).or_default();
        slot.count += 1;
        if !held && !slot.holders.contains(&child) {
            slot.holders.push(child);
        }
    }

    /// Ends one `expect`. Pushes stay welcome until `linger_until`
    /// (monotonic ms; 0 for none): an ack=parent write's commit arrives by
    /// push after the parent took it.
    pub fn unexpect(&self, key: &str, linger_until: Millis) {
        let mut shard = self.shard_mut(key);
        if let Some(slot) = shard.expecting.get_mut(key) {
            slot.count = slot.count.saturating_sub(1);
            slot.until = slot.until.max(linger_until);
            if slot.count == 0 {
                slot.holders.clear();
            }
            if slot.count == 0 && slot.until == 0 {
                shard.expecting.remove(key);
            }
        }
    }

    /// Whether a push for `key` would be accepted though it is not held.
    pub fn is_expecting(&self, key: &str, t: Time) -> bool {
        self.shard(key).read().is_expecting(key, t.mono)
    }

    /// Stores an update as confirmed (the root's own, a replayed log
    /// record), if newer; the entry is current either way.
    pub fn apply(&self, update: &Update, t: Time) -> Applied {
        let tick = self.next_tick();
        let mut shard = self.shard_mut(&update.key);
        let generation = self.generation();
        shard.apply_if_newer(update, t, tick, generation, true)
    }

    /// Stores the answer to a request this node sent its parent (a fill
    /// answer, a write's commit coming back), if newer. `None`: the store
    /// was reset since the request was sent, so the parent that answered
    /// may not be ours, and nothing is stored. The answer makes the entry
    /// current only if the parent says it recorded us as a holder
    /// ([`Answer::confirmed`]); checked under the shard lock, so a reset
    /// cannot slip between the check and the store.
    pub fn apply_answer(&self, update: &Update, t: Time, answer: Answer) -> Option<Applied> {
        let tick = self.next_tick();
        let mut shard = self.shard_mut(&update.key);
        let generation = self.generation();
        (generation == answer.sent_in).then(|| shard.apply_if_newer(update, t, tick, generation, answer.confirmed))
    }

    /// [`Store::apply_answer`] for a commit coming back down the write
    /// path, and records `child` (the node the write came from) as a holder
    /// in the same critical section, if the entry is current then: a child
    /// recorded on an entry nothing keeps up to date would miss later
    /// changes. Returns what was applied (the child among the holders of a
    /// newer update it was recorded for) and, if the child was recorded,
    /// what the store now has, for when it holds something newer that the
    /// child must be sent. `None`: reset since the batch was sent, nothing
    /// stored or recorded.
    pub fn apply_and_hold(
        &self,
        update: &Update,
        child: NodeId,
        t: Time,
        answer: Answer,
    ) -> Option<(Applied, Option<Update>)> {
        let tick = self.next_tick();
        let mut shard = self.shard_mut(&update.key);
        let generation = self.generation();
        if generation != answer.sent_in {
            return None;
        }
        let applied = shard.apply_if_newer(update, t, tick, generation, answer.confirmed);
        let current = shard.map.get(update.key.as_str()).filter(|e| e.stamp.is_current(generation));
        let Some(now) = current.map(Entry::as_update) else { return Some((applied, None)) };
        shard.hold(&update.key, child, tick);
        let applied = match applied {
            Applied::Newer { mut holders } => {
                if !holders.contains(&child) {
                    holders.push(child);
                }
                Applied::Newer { holders }
            }
            other => other,
        };
        Some((applied, Some(now)))
    }

    /// Whether `child` is recorded as a holder of `key` and the entry is
    /// current: then every later change of the key reaches the child, and
    /// an answer we give it may make its copy current.
    pub fn holds_current(&self, key: &str, child: NodeId) -> bool {
        let shard = self.shard(key).read();
        let generation = self.generation();
        shard.map.get(key).is_some_and(|e| e.stamp.is_current(generation) && e.holders.iter().any(|&(c, _)| c == child))
    }

    /// Stores a pushed update if this node holds or expects the key and the
    /// update is newer. A push for anything else is `NotHeld`, and the
    /// sender forgets this node as a holder. The push makes the entry
    /// current (its sender read us in its holders) unless the store was
    /// reset since `received_in`, the generation in which the push was
    /// checked against the parent's last reset we heard of: a reset that
    /// came in between may be that very parent's, which forgot us.
    pub fn apply_push(&self, update: &Update, t: Time, received_in: u64) -> Applied {
        let tick = self.next_tick();
        let mut shard = self.shard_mut(&update.key);
        let generation = self.generation();
        if !shard.map.contains_key(update.key.as_str()) && !shard.is_expecting(&update.key, t.mono) {
            return Applied::NotHeld;
        }
        shard.apply_if_newer(update, t, tick, generation, generation == received_in)
    }

    /// The root's commit: gives `change` (its version is not looked at)
    /// the next version (from `next_version`, called under the shard lock
    /// so versions of one key are applied in order) and stores it, if its
    /// condition holds against the key's live value in the same critical
    /// section (otherwise nothing changes and no version is used). A delete
    /// of an absent key commits nothing. `holder`, the child the write came
    /// from, is recorded in the same critical section, and is among the
    /// returned holders (the root pushes to it only what other writers
    /// commit: the writer's hop learns its own commit from the answer, or
    /// from the answer to its resend). With `max_bytes` (a root's
    /// `--max-memory`), a write that would grow the store past it is
    /// refused (`Full`) in the same critical section, before it has a
    /// version; deletes and overwrites that do not grow pass.
    pub fn commit(
        &self,
        change: &Update,
        cond: Condition,
        t: Time,
        holder: Option<NodeId>,
        max_bytes: Option<usize>,
        next_version: impl FnOnce() -> Version,
    ) -> Committed {
        let key = change.key.as_str();
        let tick = self.next_tick();
        let mut shard = self.shard_mut(key);
        let generation = self.generation();
        let live = shard.map.get(key).filter(|e| !e.is_tombstone() && !e.is_expired(t.wall)).map(|e| e.version);
        if !cond.holds(live) {
            return Committed::ConditionFailed { current: live };
        }
        if change.value.is_none() && live.is_none() {
            return Committed::Absent;
        }
        if let Some(max) = max_bytes {
            // What the write adds: its entry less the one it replaces (a
            // delete, or an overwrite no larger, adds nothing). Other
            // shards commit meanwhile: the bound may be passed by what
            // they add at the same moment, never by more.
            let old = shard.map.get(key).map_or(0, Entry::charged);
            let grows = Entry::charge(key, &change.value).saturating_sub(old);
            let bytes = self.bytes();
            if grows > 0 && bytes + grows > max {
                return Committed::Full { bytes, max };
            }
        }
        let update = Update { version: next_version(), ..change.clone() };
        match shard.apply_if_newer(&update, t, tick, generation, true) {
            Applied::Newer { mut holders } => {
                if let Some(child) = holder {
                    shard.hold(key, child, tick);
                    if !holders.contains(&child) {
                        holders.push(child);
                    }
                }
                Committed::Done { version: update.version, created: live.is_none(), holders }
            }
            // Versions come from one increasing counter: cannot happen.
            Applied::Stale | Applied::NotHeld => Committed::Absent,
        }
    }

    /// What the store has for `key`, as an update (for pushing it on).
    pub fn current(&self, key: &str) -> Option<Update> {
        self.shard(key).read().map.get(key).map(Entry::as_update)
    }

    /// The parent answered that `version` is still the key's version (a
    /// 304): if it recorded us as a holder ([`Answer::confirmed`]) and we
    /// were not reset since we asked, the entry is current again and, in
    /// ttl mode, fresh from `t`. Returns false if nothing changed (the
    /// entry changed meanwhile, or the answer cannot confirm it).
    pub fn refresh(&self, key: &str, version: Version, t: Time, answer: Answer) -> bool {
        let mut shard = self.shard_mut(key);
        let generation = self.generation();
        if !answer.confirmed || generation != answer.sent_in {
            return false;
        }
        match shard.map.get_mut(key) {
            Some(entry) if entry.version == version => {
                entry.stamp = Stamp::new(t.mono, generation);
                true
            }
            _ => false,
        }
    }

    /// The parent says the key is absent, deleted at `deleted_at` if it
    /// knows when. An entry newer than that deletion stays (the parent is
    /// behind). A current entry becomes the tombstone, keeping its holders
    /// (`Newer`: push it to them): removing it would orphan them, and the
    /// deletion's own push, still on its way, would then be refused as not
    /// held, leaving the children with the old value for good. Any other
    /// entry (unconfirmed, so without holders, or no version to go by) is
    /// removed (`NotHeld`). `None`: the store was reset since the fill was
    /// sent (`sent_in`), nothing changed.
    pub fn apply_absent(&self, key: &str, deleted_at: Option<Version>, t: Time, sent_in: u64) -> Option<Applied> {
        let tick = self.next_tick();
        let mut shard = self.shard_mut(key);
        let generation = self.generation();
        if generation != sent_in {
            return None;
        }
        let (version, current) = match shard.map.get(key) {
            None => return Some(Applied::NotHeld),
            Some(entry) => (entry.version, entry.stamp.is_current(generation)),
        };
        Some(match deleted_at {
            Some(deleted) if version > deleted => Applied::Stale,
            Some(deleted) if current => {
                let tombstone = Update { key: key.to_string(), version: deleted, value: None, expires_at: None };
                shard.apply_if_newer(&tombstone, t, tick, generation, true)
            }
            _ => {
                shard.remove(key);
                Applied::NotHeld
            }
        })
    }

    /// Drops a key (no longer held), returning its holders.
    pub fn remove(&self, key: &str) -> Option<Vec<NodeId>> {
        self.shard_mut(key).remove(key).map(|e| e.holder_ids())
    }

    /// A new parent or epoch: what this node holds was right once, but the
    /// new parent does not know this node holds it. Values are kept and
    /// read as not current until a parent confirms them (so a node never
    /// serves an older version than before the move, and loses no memory
    /// with a session); tombstones and holder records go (the children are
    /// reset too and re-register as holders when they revalidate). Fills
    /// and writes in flight stay expected, and any fill begun before the
    /// reset is not cached ([`Store::generation`]).
    pub fn reset(&self) {
        {
            // The parent's ticks mean nothing to a new parent.
            let mut parent = self.parent_tick.lock();
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            *parent = (generation, 0);
        }
        for i in 0..self.shards.len() {
            let mut shard = self.lock(i);
            let tombstones: Vec<String> =
                shard.map.iter().filter(|e| e.is_tombstone()).map(|e| e.key().to_string()).collect();
            for key in tombstones {
                shard.remove(&key);
            }
            let shard = &mut *shard;
            for entry in shard.map.iter_mut() {
                entry.holders = Holders::default();
            }
            shard.bytes -= shard.holders * HOLDER_BYTES;
            shard.holders = 0;
            for e in shard.expecting.values_mut() {
                e.holders.clear();
            }
        }
    }

    /// Forgets every entry: a standby starting over from its leader's
    /// snapshot (what it held may include writes the leader never had).
    pub fn wipe(&self) {
        for i in 0..self.shards.len() {
            let mut shard = self.lock(i);
            let keys: Vec<String> = shard.map.iter().map(|e| e.key().to_string()).collect();
            for key in keys {
                shard.remove(&key);
            }
        }
    }

    /// Notes the parent's store tick carried by one of its messages (a
    /// fill answer, a push, a write batch's answer) received in
    /// `generation`. A message from before a reset (another parent,
    /// another tick sequence) is ignored.
    pub fn note_parent_tick(&self, generation: u64, tick: u64) {
        let mut parent = self.parent_tick.lock();
        if parent.0 == generation && generation == self.generation() {
            parent.1 = parent.1.max(tick);
        }
    }

    /// `(generation, tick)`: the highest parent tick seen since the last
    /// reset. Every holder record the parent made for a key this node
    /// holds, with no fill or write of it in flight, is stamped at or
    /// below it: each such record was made by a request whose answer
    /// carried a tick at least its stamp, and that answer has arrived.
    /// A "dropped" message carrying this tick lets the parent remove
    /// exactly those records ([`Store::remove_holder`] with `tick + 1`).
    pub fn parent_tick(&self) -> (u64, u64) {
        let parent = self.parent_tick.lock();
        if parent.0 == self.generation() {
            *parent
        } else {
            (self.generation(), 0)
        }
    }

    /// Removes expired entries and lapsed `expect` markers. Returns how many
    /// entries went.
    pub fn sweep_expired(&self, t: Time) -> usize {
        let mut removed = 0;
        for i in 0..self.shards.len() {
            let mut shard = self.lock(i);
            let expired: Vec<String> =
                shard.map.iter().filter(|e| e.is_expired(t.wall)).map(|e| e.key().to_string()).collect();
            for key in expired {
                shard.remove(&key);
                removed += 1;
            }
            shard.expecting.retain(|_, e| e.is_live(t.mono));
        }
        removed
    }

    /// Removes tombstones stored (or last confirmed) at least `horizon_ms`
    /// ago that no child holds and no fill or write expects. Returns their
    /// keys: a non-root node tells its parent it dropped them. Why this is
    /// safe is in docs/architecture.md (Tombstones).
    pub fn collect_tombstones(&self, t: Time, horizon_ms: Millis) -> Vec<String> {
        let mut collected = Vec::new();
        for i in 0..self.shards.len() {
            if self.shards[i].read().tombstones == 0 {
                continue;
            }
            let mut shard = self.lock(i);
            let old: Vec<String> = shard
                .map
                .iter()
                .filter(|e| e.is_tombstone() && e.holders.is_empty())
                .filter(|e| e.stamp.received_at().saturating_add(horizon_ms) <= t.mono)
                .map(|e| e.key().to_string())
                .collect();
            for key in old {
                if shard.is_unneeded(&key, t.mono) {
                    shard.remove(&key);
                    collected.push(key);
                }
            }
        }
        collected
    }

    /// One eviction pass of a bounded store: frees at least `need` bytes
    /// if it can, examining at most `max_examined` queue slots and choosing
    /// at most `max_held` keys that children hold.
    ///
    /// Each shard keeps its own S3-FIFO order ([`Queues`]); the pass turns
    /// the shards in rotation, one victim from each per visit, so the
    /// victims follow one order across the store with no lock beyond one
    /// shard's at a time. A key with a fill or write in flight is never
    /// chosen; a key children hold is returned in `held`, and goes after
    /// they dropped it ([`Store::finish_invalidation`]).
    pub fn evict(&self, need: usize, t: Time, max_examined: usize, max_held: usize) -> Evicted {
        let mut out = Evicted::default();
        let mut examined = 0;
        let mut empty = 0;
        let shards = self.shards.len();
        while out.freed < need && examined < max_examined && out.held.len() < max_held && empty < shards {
            let index = self.hand.fetch_add(1, Ordering::Relaxed) % shards;
            let mut shard = self.lock(index);
            shard.compact_queues();
            shard.trim_ghost();
            let slots = shard.queued_slots();
            if slots == 0 {
                empty += 1;
                continue;
            }
            empty = 0;
            // One victim per shard per visit, each slot looked at once at
            // most per visit.
            for _ in 0..slots {
                examined += 1;
                match shard.evict_step(t.mono, &mut out) {
                    Step::Victim | Step::Stop => break,
                    Step::Spared => {}
                }
                if examined >= max_examined {
                    break;
                }
            }
        }
        out
    }

    /// The parent asks us to drop `key` (it evicts it). Removed at once if
    /// nothing needs it here; kept if a fill or write of it is in flight;
    /// if children hold it they must drop it first.
    pub fn drop_for_parent(&self, key: &str, t: Time) -> DropAnswer {
        let mut shard = self.shard_mut(key);
        // First: a fill whose answer is still on its way stores the key
        // after we answered, though it is not held yet.
        if shard.is_expecting(key, t.mono) {
            return DropAnswer::Kept;
        }
        let Some(entry) = shard.map.get(key) else { return DropAnswer::Gone };
        if !entry.holders.is_empty() {
            return DropAnswer::Held(entry.holder_ids());
        }
        shard.remove(key);
        DropAnswer::Gone
    }

    /// After back-invalidation: `cleared` children dropped `key`. Their
    /// holder records made before `asked` (the tick taken before asking)
    /// go; a child that read the key again since was recorded later and
    /// stays. The key goes if then no child holds it and nothing expects
    /// it, as an eviction (a key leaving the small queue leaves its fingerprint in
    /// the ghost). Returns the bytes freed, `None` if the key stays.
    pub fn finish_invalidation(&self, key: &str, cleared: &[NodeId], asked: u64, t: Time) -> Option<usize> {
        let mut shard = self.shard_mut(key);
        shard.unhold(key, |&(c, since)| !cleared.contains(&c) || since >= asked);
        if !shard.is_unneeded(key, t.mono) {
            return None;
        }
        let before = shard.bytes;
        shard.evict(key);
        Some(before.saturating_sub(shard.bytes))
    }

    /// Entries in key order after `after`, starting with `prefix`, at most
    /// `limit`. The keys are chosen first and only theirs are read whole:
    /// a value is copied out of its entry (see [`Entry::value`]), and a
    /// page of a big store must not copy the rest. A chosen key gone by
    /// the time it is read is made up for by the next ones, so a page is
    /// short only at the end (a pager stops at a short page).
    pub fn dump(&self, prefix: &str, after: Option<&str>, limit: usize, now: Millis) -> Vec<DumpEntry> {
        let generation = self.generation();
        let mut out = Vec::new();
        let mut after = after.map(str::to_string);
        while out.len() < limit {
            let keep = |key: &str, entry: &Entry| {
                key.starts_with(prefix) && after.as_deref().is_none_or(|a| key > a) && !entry.is_expired(now)
            };
            let want = limit - out.len();
            let mut keys = self.collect_where(keep, |entry| entry.key().to_string());
            keys.sort_unstable();
            keys.truncate(want);
            out.extend(keys.iter().filter_map(|key| {
                let shard = self.shard(key).read();
                shard.map.get(key).filter(|entry| keep(key, entry)).map(|entry| dump_entry(entry, generation))
            }));
            if keys.len() < want {
                break; // no more keys
            }
            after = keys.pop();
        }
        out
    }

    /// How many shards the store has: [`Store::shard_entries`] takes 0 up to it.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Every entry of shard `index`, tombstones and expired ones included,
    /// unsorted: a snapshot reads the store this way, a shard at a time,
    /// so it holds copies of one shard's values at once.
    pub fn shard_entries(&self, index: usize) -> Vec<DumpEntry> {
        let generation = self.generation();
        self.shards[index].read().map.iter().map(|entry| dump_entry(entry, generation)).collect()
    }

    /// Every entry `keep` takes, shard by shard (a read lock each), unsorted.
    fn entries_where(&self, keep: impl Fn(&str, &Entry) -> bool) -> Vec<DumpEntry> {
        let generation = self.generation();
        self.collect_where(keep, |entry| dump_entry(entry, generation))
    }

    /// `take` of every entry `keep` takes, shard by shard (a read lock
    /// each), unsorted.
    fn collect_where<T>(&self, keep: impl Fn(&str, &Entry) -> bool, take: impl Fn(&Entry) -> T) -> Vec<T> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            out.extend(shard.map.iter().filter(|entry| keep(entry.key(), entry)).map(&take));
        }
        out
    }

    /// What storing `updates` would add to [`Store::bytes`]: each one's
    /// entry less the one it replaces, where it is newer (a slot move's
    /// import, held to a root's `--max-memory`).
    pub fn growth_of(&self, updates: &[Update]) -> usize {
        updates
            .iter()
            .map(|u| {
                let shard = self.shard(&u.key).read();
                match shard.map.get(u.key.as_str()) {
                    Some(e) if e.version >= u.version => 0,
                    Some(e) => Entry::charge(&u.key, &u.value).saturating_sub(e.charged()),
                    None => Entry::charge(&u.key, &u.value),
                }
            })
            .sum()
    }

    /// Every entry whose key is in one of `slots`: with `live_only`, only
    /// values not expired at `now` (what a slot move hands over), else
    /// tombstones and expired entries too (what a handed-over slot drops).
    /// Unsorted.
    pub fn slot_entries(
        &self,
        slots: &std::collections::BTreeSet<u16>,
        live_only: bool,
        now: Millis,
    ) -> Vec<DumpEntry> {
        self.entries_where(in_slots(slots, live_only, now))
    }

    /// The keys [`Store::slot_entries`] would give, without copying a value.
    pub fn slot_keys(&self, slots: &std::collections::BTreeSet<u16>, live_only: bool, now: Millis) -> Vec<String> {
        self.collect_where(in_slots(slots, live_only, now), |entry| entry.key().to_string())
    }

    /// How many keys are held, tombstones included (for diagnostics and tests).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged: keys, values, per-entry overhead, holder records,
    /// and a bounded store's eviction queues and ghost. One atomic load.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Entries that are tombstones.
    pub fn tombstones(&self) -> usize {
        self.shards.iter().map(|s| s.read().tombstones).sum()
    }

    /// Holder records (child, key) in the directory.
    pub fn holder_records(&self) -> usize {
        self.shards.iter().map(|s| s.read().holders).sum()
    }

    /// Forgets `child` as a holder of every key (the child left or moved).
    pub fn forget_child(&self, child: NodeId) {
        for i in 0..self.shards.len() {
            let mut guard = self.lock(i);
            let shard = &mut *guard;
            let mut removed = 0;
            for entry in shard.map.iter_mut() {
                removed += entry.holders.retain(|&(c, _)| c != child);
            }
            shard.holders -= removed;
            shard.bytes -= removed * HOLDER_BYTES;
        }
    }
}

/// An entry as `/dump`, a snapshot or a move shows it (its value copied out).
fn dump_entry(entry: &Entry, generation: u64) -> DumpEntry {
    DumpEntry {
        key: entry.key().to_string(),
        version: entry.version,
        value: entry.value(),
        expires_at: entry.expires_at(),
        current: entry.stamp.is_current(generation),
    }
}

/// Whether an entry is in one of `slots` (and, with `live_only`, a value
/// not expired at `now`).
fn in_slots(
    slots: &std::collections::BTreeSet<u16>,
    live_only: bool,
    now: Millis,
) -> impl Fn(&str, &Entry) -> bool + '_ {
    move |key, entry| {
        (!live_only || (!entry.is_tombstone() && !entry.is_expired(now))) && slots.contains(&crate::slots::slot_of(key))
    }
}

#[cfg(test)]
mod tests;
