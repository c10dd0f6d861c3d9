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
//! caching).
//!
//! Sharded by key hash; each shard is one `parking_lot::RwLock`. Critical
//! sections are a hash lookup and a few field writes, never an `.await`, so a
//! sync lock is cheaper than an async mutex and cannot be held across I/O.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

pub use crate::clock::Time;

pub type Version = u64;
pub type NodeId = u64;
/// Unix time in milliseconds.
pub type Millis = u64;

const SHARDS: usize = 64;
/// Bytes charged per entry beyond key and value, so that `bytes()` (the
/// `treecache_bytes` gauge) tracks what the process really holds: an
/// 88-byte map slot (16 key pointer + 72 `Entry`) at the map's typical
/// load of ~0.7, plus the allocator's headers on the key and value
/// allocations. Measured: 100k entries of 100 B with 11-byte keys grew the
/// RSS by 264 B each, 111 of them key and value.
const ENTRY_OVERHEAD: usize = 144;
/// Bytes charged per holder record: the `(NodeId, tick)` pair and its
/// share of the boxed list and the allocator's header.
const HOLDER_BYTES: usize = 32;
/// Bytes charged per slot of a bounded store's eviction ring beyond the
/// key's own bytes: the slot (a boxed key, 16, and a tick, 8) and the key
/// copy's allocation header.
const RING_SLOT: usize = 40;
/// Longest key in bytes (DESIGN.md: 1–250 bytes of UTF-8).
pub const MAX_KEY_BYTES: usize = 250;

/// Checks a decoded key: 1–250 bytes of UTF-8, no control characters.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("key is {} bytes, limit {MAX_KEY_BYTES}", key.len()));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(format!("key contains control character U+{:04X}", c as u32));
    }
    Ok(())
}

/// Names one client write for exactly-once commit (DESIGN.md guarantee 6):
/// the node that first took it from a client, that process's incarnation
/// (random per start, so a restarted node's sequence cannot collide with its
/// earlier one), and a sequence number in the order that node received its
/// writes. The root commits each id once and remembers the outcome, so a
/// retried write learns its result instead of committing twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteId {
    pub origin: NodeId,
    pub incarnation: u64,
    pub seq: u64,
}

/// One committed change of a key, as the root ordered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub key: String,
    pub version: Version,
    /// `None` is a tombstone: the key was deleted at this version.
    pub value: Option<Bytes>,
    pub expires_at: Option<Millis>,
}

/// What a read finds. `received_at` is on the monotonic clock. `current`
/// is false for an entry kept across a reset (a new parent or epoch): its
/// value was right once, but no parent has confirmed it since, so it must
/// be revalidated before it is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Value {
        version: Version,
        value: Bytes,
        expires_at: Option<Millis>,
        received_at: Millis,
        current: bool,
    },
    /// Deleted at `version`; this node holds the deletion.
    Tombstone {
        version: Version,
        received_at: Millis,
        current: bool,
    },
    /// Not held here (or expired).
    Absent,
}

impl Lookup {
    pub fn version(&self) -> Option<Version> {
        match self {
            Lookup::Value { version, .. } | Lookup::Tombstone { version, .. } => Some(*version),
            Lookup::Absent => None,
        }
    }
    /// Whether a parent has confirmed this entry since the last reset.
    pub fn is_current(&self) -> bool {
        match self {
            Lookup::Value { current, .. } | Lookup::Tombstone { current, .. } => *current,
            Lookup::Absent => false,
        }
    }
    pub fn received_at(&self) -> Option<Millis> {
        match self {
            Lookup::Value { received_at, .. } | Lookup::Tombstone { received_at, .. } => Some(*received_at),
            Lookup::Absent => None,
        }
    }
}

/// The result of offering an update to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Stored; these children hold the key and must hear of it.
    Newer { holders: Vec<NodeId> },
    /// Dropped: the store already has this version or a newer one.
    Stale,
    /// Dropped: a push for a key this node neither holds nor expects.
    NotHeld,
}

/// The result of a write the root commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Committed {
    Done {
        version: Version,
        created: bool,
        holders: Vec<NodeId>,
    },
    /// A delete of a key the root does not have: nothing committed.
    Absent,
}

/// An entry as `/dump` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpEntry {
    pub key: String,
    pub version: Version,
    pub value: Option<Bytes>,
    pub expires_at: Option<Millis>,
    /// Confirmed since the last reset (a kept entry is revalidated before use).
    pub current: bool,
}

/// One slot of the map. Kept small (72 bytes; a 100k-entry node pays for
/// it in every slot): expiry as a non-zero niche, holders boxed because
/// most entries (every leaf's) have none, and the arrival time and the
/// generation it was confirmed in packed into one word ([`Stamp`]).
struct Entry {
    version: Version,
    value: Option<Bytes>,
    expires_at: Option<NonZeroU64>,
    stamp: Stamp,
    /// Children holding the key, each with the store tick when recorded.
    holders: Holders,
    /// LRU clock tick of the last read or write; atomic so reads need only
    /// the shard's read lock.
    last_used: AtomicU64,
}

/// When an entry arrived (monotonic ms, low 44 bits: 557 years) and the
/// store generation it was confirmed in (low 20 bits of it, high bits of
/// the word). A reset bumps the generation, so every entry stored before
/// reads as not current without touching it; a wrap would need 2^20 resets
/// while one entry sits unconfirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp(u64);

const STAMP_TIME_BITS: u32 = 44;
const STAMP_TIME_MASK: u64 = (1 << STAMP_TIME_BITS) - 1;

impl Stamp {
    fn new(received_at: Millis, generation: u64) -> Stamp {
        Stamp((generation << STAMP_TIME_BITS) | (received_at & STAMP_TIME_MASK))
    }
    fn received_at(self) -> Millis {
        self.0 & STAMP_TIME_MASK
    }
    fn is_current(self, generation: u64) -> bool {
        (self.0 >> STAMP_TIME_BITS) == (generation << STAMP_TIME_BITS) >> STAMP_TIME_BITS
    }
}

impl Entry {
    fn is_expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|at| at.get() <= now)
    }
    fn expires_at(&self) -> Option<Millis> {
        self.expires_at.map(NonZeroU64::get)
    }
    fn charge(key: &str, value: &Option<Bytes>) -> usize {
        key.len() + value.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD
    }
    fn lookup(&self, t: Time, generation: u64) -> Lookup {
        if self.is_expired(t.wall) {
            return Lookup::Absent;
        }
        let received_at = self.stamp.received_at();
        let current = self.stamp.is_current(generation);
        match &self.value {
            Some(value) => Lookup::Value {
                version: self.version,
                value: value.clone(),
                expires_at: self.expires_at(),
                received_at,
                current,
            },
            None => Lookup::Tombstone { version: self.version, received_at, current },
        }
    }
}

impl Entry {
    fn holder_ids(&self) -> Vec<NodeId> {
        self.holders.iter().map(|&(id, _)| id).collect()
    }
    /// Records `child` as a holder at `tick`; true if it was not one.
    fn hold(&mut self, child: NodeId, tick: u64) -> bool {
        match self.holders.iter_mut().find(|(id, _)| *id == child) {
            Some(h) => {
                h.1 = tick;
                false
            }
            None => {
                self.holders.push((child, tick));
                true
            }
        }
    }
    fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
    fn as_update(&self, key: &str) -> Update {
        Update { key: key.to_string(), version: self.version, value: self.value.clone(), expires_at: self.expires_at() }
    }
}

/// An expiry time as stored: `Some(0)` (already past) becomes 1 ms, still past.
fn expiry(at: Option<Millis>) -> Option<NonZeroU64> {
    at.map(|t| NonZeroU64::new(t.max(1)).expect("at least 1"))
}

/// The children holding a key: one pointer when there are none (a bare
/// `Vec` is three words in every slot, and most entries have no holders).
#[derive(Default)]
#[allow(clippy::box_collection)]
struct Holders(Option<Box<Vec<(NodeId, u64)>>>);

impl Holders {
    fn iter(&self) -> std::slice::Iter<'_, (NodeId, u64)> {
        self.0.as_deref().map_or(&[][..], Vec::as_slice).iter()
    }
    fn iter_mut(&mut self) -> std::slice::IterMut<'_, (NodeId, u64)> {
        self.0.as_deref_mut().map_or(&mut [][..], Vec::as_mut_slice).iter_mut()
    }
    fn push(&mut self, holder: (NodeId, u64)) {
        self.0.get_or_insert_with(Box::default).push(holder);
    }
    /// Keeps the records `keep` accepts; returns how many went.
    fn retain(&mut self, keep: impl FnMut(&(NodeId, u64)) -> bool) -> usize {
        let Some(list) = self.0.as_mut() else { return 0 };
        let before = list.len();
        list.retain(keep);
        let removed = before - list.len();
        if list.is_empty() {
            self.0 = None;
        }
        removed
    }
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |l| l.len())
    }
    fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// The value in an allocation of its own, exactly its size. A value read
/// from a socket is a slice of the reader's buffer (hyper's 8 KiB and up,
/// a push batch's whole body); storing that slice would pin the whole
/// buffer for as long as the entry lives. Measured before this copy: 60,000
/// 1 KiB values filled at a node took 340 MB of RSS for 69 MB of data. One
/// memcpy per stored write is the price; reads, fills served and pushes
/// share the stored copy without copying.
fn compact(value: &Option<Bytes>) -> Option<Bytes> {
    value.as_deref().map(Bytes::copy_from_slice)
}

/// Fills and writes in flight for one key (`count`), and after the last
/// one, until when (monotonic ms) pushes are still welcome: an ack=parent
/// write's commit comes back by push some time after the parent took it.
/// `holders`: children whose writes of the key pass through here while it
/// is not held; they become holders when the key arrives, so the root's
/// push of their commit reaches them even if our answer to them is lost.
#[derive(Clone, Default)]
struct Expecting {
    count: u32,
    until: Millis,
    holders: Vec<NodeId>,
}

impl Expecting {
    fn is_live(&self, mono: Millis) -> bool {
        self.count > 0 || self.until > mono
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<str>, Entry>,
    /// Keys with fills or writes in flight: pushes for them are accepted.
    expecting: HashMap<String, Expecting>,
    /// Bytes charged: entries (key, value, overhead), holder records and
    /// the eviction ring. The store keeps the sum of all shards in one
    /// atomic beside it (see [`ShardMut`]).
    bytes: usize,
    tombstones: usize,
    holders: usize,
    /// A bounded store's eviction order (CLOCK, see [`Store::evict`]): each
    /// key once per insertion, with the store tick when it was queued.
    /// `None` in an unbounded store (the root), which never evicts.
    ring: Option<VecDeque<(Box<str>, u64)>>,
}

impl Shard {
    /// Records `child` as a holder of `key` (if held), keeping the counts.
    fn hold(&mut self, key: &str, child: NodeId, tick: u64) -> bool {
        let Some(entry) = self.map.get_mut(key) else { return false };
        if entry.hold(child, tick) {
            self.holders += 1;
            self.bytes += HOLDER_BYTES;
        }
        true
    }

    /// Drops the holder records of `key` that `keep` refuses.
    fn unhold(&mut self, key: &str, keep: impl FnMut(&(NodeId, u64)) -> bool) {
        if let Some(entry) = self.map.get_mut(key) {
            let removed = entry.holders.retain(keep);
            self.holders -= removed;
            self.bytes -= removed * HOLDER_BYTES;
        }
    }

    fn queue(&mut self, key: &str, tick: u64) {
        if let Some(ring) = self.ring.as_mut() {
            ring.push_back((key.into(), tick));
            self.bytes += RING_SLOT + key.len();
        }
    }

    fn dequeue(&mut self) -> Option<(Box<str>, u64)> {
        let slot = self.ring.as_mut()?.pop_front()?;
        self.bytes -= RING_SLOT + slot.0.len();
        Some(slot)
    }

    /// Rebuilds the ring when keys removed by other paths (expiry, fills
    /// answering 404, resets) left it more than twice the map: one slot
    /// per held key, oldest first.
    fn compact_ring(&mut self) {
        let Some(ring) = self.ring.as_mut() else { return };
        if ring.len() <= 2 * self.map.len() + 64 {
            return;
        }
        let mut seen = HashSet::with_capacity(self.map.len());
        let map = &self.map;
        ring.retain(|(k, _)| map.contains_key(k) && seen.insert(k.clone()));
        self.bytes =
            self.map.iter().map(|(k, e)| Entry::charge(k, &e.value) + e.holders.len() * HOLDER_BYTES).sum::<usize>()
                + ring.iter().map(|(k, _)| RING_SLOT + k.len()).sum::<usize>();
    }

    fn is_expecting(&self, key: &str, mono: Millis) -> bool {
        self.expecting.get(key).is_some_and(|e| e.is_live(mono))
    }

    /// Stores `update` if it is newer than what the shard has; keeps holders
    /// (and takes on the children waiting for the key, see [`Expecting`]).
    /// Either way the entry is now current: whoever hands us an update for
    /// a key (a parent's push, a fill answer, a write's commit) has
    /// recorded this node as a holder of it, so later changes will come.
    fn apply_if_newer(&mut self, update: &Update, t: Time, tick: u64, generation: u64) -> Applied {
        let applied = self.store_if_newer(update, t, tick, generation);
        let waiting = match self.expecting.get_mut(update.key.as_str()) {
            Some(e) if !e.holders.is_empty() => std::mem::take(&mut e.holders),
            _ => return applied,
        };
        if !self.map.contains_key(update.key.as_str()) {
            return applied;
        }
        for child in &waiting {
            self.hold(&update.key, *child, tick);
        }
        match applied {
            Applied::Newer { mut holders } => {
                holders.extend(waiting.into_iter().filter(|c| !holders.contains(c)).collect::<Vec<_>>());
                Applied::Newer { holders }
            }
            other => other,
        }
    }

    fn store_if_newer(&mut self, update: &Update, t: Time, tick: u64, generation: u64) -> Applied {
        let charge = Entry::charge(&update.key, &update.value);
        let stamp = Stamp::new(t.mono, generation);
        match self.map.get_mut(update.key.as_str()) {
            Some(entry) if entry.version >= update.version => {
                entry.stamp = stamp;
                Applied::Stale
            }
            Some(entry) => {
                self.bytes = self.bytes + charge - Entry::charge(&update.key, &entry.value);
                self.tombstones =
                    self.tombstones + usize::from(update.value.is_none()) - usize::from(entry.is_tombstone());
                entry.version = update.version;
                entry.value = compact(&update.value);
                entry.expires_at = expiry(update.expires_at);
                entry.stamp = stamp;
                *entry.last_used.get_mut() = tick;
                Applied::Newer { holders: entry.holder_ids() }
            }
            None => {
                self.bytes += charge;
                self.tombstones += usize::from(update.value.is_none());
                self.queue(&update.key, tick);
                self.map.insert(
                    update.key.as_str().into(),
                    Entry {
                        version: update.version,
                        value: compact(&update.value),
                        expires_at: expiry(update.expires_at),
                        stamp,
                        holders: Holders::default(),
                        last_used: AtomicU64::new(tick),
                    },
                );
                Applied::Newer { holders: Vec::new() }
            }
        }
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        self.bytes -= Entry::charge(key, &entry.value) + entry.holders.len() * HOLDER_BYTES;
        self.tombstones -= usize::from(entry.is_tombstone());
        self.holders -= entry.holders.len();
        Some(entry)
    }

    /// Removes `key` if nothing needs it here: no holders, no fill or
    /// write in flight. Returns the bytes freed.
    fn remove_if_unneeded(&mut self, key: &str, mono: Millis) -> Option<usize> {
        let entry = self.map.get(key)?;
        if !entry.holders.is_empty() || self.is_expecting(key, mono) {
            return None;
        }
        let before = self.bytes;
        self.remove(key);
        Some(before - self.bytes)
    }
}

/// A shard locked for writing. Dropping it adds the change in the
/// shard's bytes to the store's total, so the total (what the memory
/// bound is checked against) is one atomic load, whatever changed.
struct ShardMut<'a> {
    guard: RwLockWriteGuard<'a, Shard>,
    before: usize,
    total: &'a AtomicUsize,
}

impl std::ops::Deref for ShardMut<'_> {
    type Target = Shard;
    fn deref(&self) -> &Shard {
        &self.guard
    }
}

impl std::ops::DerefMut for ShardMut<'_> {
    fn deref_mut(&mut self) -> &mut Shard {
        &mut self.guard
    }
}

impl Drop for ShardMut<'_> {
    fn drop(&mut self) {
        let after = self.guard.bytes;
        if after >= self.before {
            self.total.fetch_add(after - self.before, Ordering::AcqRel);
        } else {
            self.total.fetch_sub(self.before - after, Ordering::AcqRel);
        }
    }
}

/// What one eviction pass ([`Store::evict`]) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Removed: nothing below this node held them.
    pub removed: Vec<String>,
    pub freed: usize,
    /// Chosen, but children hold them: they must drop them first
    /// (back-invalidation), then [`Store::finish_invalidation`].
    pub held: Vec<(String, Vec<NodeId>)>,
}

/// What one look at a CLOCK slot did.
enum Step {
    /// A victim was taken (removed, or handed back as held by children).
    Victim,
    /// The key was spared (used since queued, or in flight) or was gone.
    Spared,
    /// The ring is empty.
    Stop,
}

/// What a node does with a key its parent asks it to drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropAnswer {
    /// Not held here (any more).
    Gone,
    /// A fill or write of it is in flight: its answer would store it
    /// again, so the parent must keep holding it.
    Kept,
    /// These children hold it: they drop it first.
    Held(Vec<NodeId>),
}

/// A sharded, versioned store. Cheap to share behind an `Arc`.
pub struct Store {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    /// Monotonic logical clock: LRU order and holder records.
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
        Store::build(false)
    }

    /// A store that keeps the order [`Store::evict`] needs (each entry
    /// pays [`RING_SLOT`] bytes and its key once more for it).
    pub fn bounded() -> Self {
        Store::build(true)
    }

    fn build(bounded: bool) -> Self {
        let shard = || Shard { ring: bounded.then(VecDeque::new), ..Shard::default() };
        Store {
            shards: (0..SHARDS).map(|_| RwLock::new(shard())).collect(),
            hasher: RandomState::new(),
            tick: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            hand: AtomicUsize::new(0),
            parent_tick: Mutex::new((0, 0)),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<Shard> {
        &self.shards[self.shard_index(key)]
    }

    fn shard_index(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn lock(&self, index: usize) -> ShardMut<'_> {
        let guard = self.shards[index].write();
        let before = guard.bytes;
        ShardMut { guard, before, total: &self.bytes }
    }

    fn shard_mut(&self, key: &str) -> ShardMut<'_> {
        self.lock(self.shard_index(key))
    }

    fn next_tick(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::AcqRel)
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
                entry.last_used.store(self.next_tick(), Ordering::Relaxed);
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
        let generation = self.generation();
        let mut shard = self.shard_mut(key);
        let tick = self.next_tick();
        let found = match shard.map.get_mut(key) {
            Some(entry) => {
                *entry.last_used.get_mut() = tick;
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
        let generation = self.generation();
        let tick = self.next_tick();
        let mut shard = self.shard_mut(key);
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

    /// Stores an update this node asked for (a fill answer or a write's
    /// commit coming back), if newer; the entry is current either way.
    pub fn apply(&self, update: &Update, t: Time) -> Applied {
        let tick = self.next_tick();
        let generation = self.generation();
        self.shard_mut(&update.key).apply_if_newer(update, t, tick, generation)
    }

    /// Stores a committed update coming back down the write path and records
    /// `child` (the node the write came from) as a holder, atomically. Also
    /// returns what the store now has, for when it holds something newer
    /// that the child must be sent.
    pub fn apply_and_hold(&self, update: &Update, child: NodeId, t: Time) -> (Applied, Update) {
        let tick = self.next_tick();
        let generation = self.generation();
        let mut shard = self.shard_mut(&update.key);
        let applied = shard.apply_if_newer(update, t, tick, generation);
        if !shard.hold(&update.key, child, tick) {
            return (applied, update.clone());
        }
        let current = shard.map.get(update.key.as_str()).map_or_else(|| update.clone(), |e| e.as_update(&update.key));
        (applied, current)
    }

    /// Stores a pushed update if this node holds or expects the key and the
    /// update is newer. A push for anything else is `NotHeld`, and the
    /// sender forgets this node as a holder.
    pub fn apply_push(&self, update: &Update, t: Time) -> Applied {
        let tick = self.next_tick();
        let generation = self.generation();
        let mut shard = self.shard_mut(&update.key);
        if !shard.map.contains_key(update.key.as_str()) && !shard.is_expecting(&update.key, t.mono) {
            return Applied::NotHeld;
        }
        shard.apply_if_newer(update, t, tick, generation)
    }

    /// The root's commit: gives the write the next version (from
    /// `next_version`, called under the shard lock so versions of one key are
    /// applied in order) and stores it. A delete of an absent key commits
    /// nothing. `holder`, the child the write came from, is recorded in the
    /// same critical section, and is among the returned holders: the commit
    /// is pushed down the writer's branch too, so a writer whose reply is
    /// lost still learns it (a duplicate is dropped there as stale).
    pub fn commit(
        &self,
        key: &str,
        value: Option<Bytes>,
        expires_at: Option<Millis>,
        t: Time,
        holder: Option<NodeId>,
        next_version: impl FnOnce() -> Version,
    ) -> Committed {
        let tick = self.next_tick();
        let generation = self.generation();
        let mut shard = self.shard_mut(key);
        let live = shard.map.get(key).is_some_and(|e| e.value.is_some() && !e.is_expired(t.wall));
        if value.is_none() && !live {
            return Committed::Absent;
        }
        let update = Update { key: key.to_string(), version: next_version(), value, expires_at };
        match shard.apply_if_newer(&update, t, tick, generation) {
            Applied::Newer { mut holders } => {
                if let Some(child) = holder {
                    shard.hold(key, child, tick);
                    if !holders.contains(&child) {
                        holders.push(child);
                    }
                }
                Committed::Done { version: update.version, created: !live, holders }
            }
            // Versions come from one increasing counter: cannot happen.
            Applied::Stale | Applied::NotHeld => Committed::Absent,
        }
    }

    /// What the store has for `key`, as an update (for pushing it on).
    pub fn current(&self, key: &str) -> Option<Update> {
        self.shard(key).read().map.get(key).map(|e| e.as_update(key))
    }

    /// The parent confirmed that `version` is still the key's version (a
    /// 304): the entry is current again and, in ttl mode, fresh from `t`.
    /// Returns false if the entry changed meanwhile.
    pub fn refresh(&self, key: &str, version: Version, t: Time) -> bool {
        let generation = self.generation();
        match self.shard_mut(key).map.get_mut(key) {
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
    /// removed (`NotHeld`).
    pub fn apply_absent(&self, key: &str, deleted_at: Option<Version>, t: Time) -> Applied {
        let generation = self.generation();
        let tick = self.next_tick();
        let mut shard = self.shard_mut(key);
        let (version, current) = match shard.map.get(key) {
            None => return Applied::NotHeld,
            Some(entry) => (entry.version, entry.stamp.is_current(generation)),
        };
        match deleted_at {
            Some(deleted) if version > deleted => Applied::Stale,
            Some(deleted) if current => {
                let tombstone = Update { key: key.to_string(), version: deleted, value: None, expires_at: None };
                shard.apply_if_newer(&tombstone, t, tick, generation)
            }
            _ => {
                shard.remove(key);
                Applied::NotHeld
            }
        }
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
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            let tombstones: Vec<Box<str>> =
                shard.map.iter().filter(|(_, e)| e.value.is_none()).map(|(k, _)| k.clone()).collect();
            for key in tombstones {
                shard.remove(&key);
            }
            let shard = &mut *shard;
            for entry in shard.map.values_mut() {
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
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            let keys: Vec<Box<str>> = shard.map.keys().cloned().collect();
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
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            let expired: Vec<String> =
                shard.map.iter().filter(|(_, e)| e.is_expired(t.wall)).map(|(k, _)| k.to_string()).collect();
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
        for i in 0..SHARDS {
            if self.shards[i].read().tombstones == 0 {
                continue;
            }
            let mut shard = self.lock(i);
            let old: Vec<String> = shard
                .map
                .iter()
                .filter(|(_, e)| e.is_tombstone() && e.holders.is_empty())
                .filter(|(_, e)| e.stamp.received_at().saturating_add(horizon_ms) <= t.mono)
                .map(|(k, _)| k.to_string())
                .collect();
            for key in old {
                if shard.remove_if_unneeded(&key, t.mono).is_some() {
                    collected.push(key);
                }
            }
        }
        collected
    }

    /// One eviction pass of a bounded store: frees at least `need` bytes
    /// if it can, least recently used first, examining at most
    /// `max_examined` candidates and choosing at most `max_held` keys that
    /// children hold.
    ///
    /// The order is CLOCK (second chance): each shard keeps its keys in a
    /// ring in insertion order; the hand takes the oldest slot; a key read
    /// since it was queued goes to the back with a fresh tick, one that
    /// was not is the victim. That approximates LRU with O(1) work per
    /// victim and nothing but an atomic store per read. A key with a fill
    /// or write in flight is never chosen (its answer would store it
    /// again, and its holder records may be newer than the parent tick we
    /// report). A key children hold is returned in `held` (and goes to
    /// the back): they must drop it first.
    pub fn evict(&self, need: usize, t: Time, max_examined: usize, max_held: usize) -> Evicted {
        let mut out = Evicted::default();
        let mut examined = 0;
        let mut empty = 0;
        while out.freed < need && examined < max_examined && out.held.len() < max_held && empty < SHARDS {
            let index = self.hand.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let mut shard = self.lock(index);
            shard.compact_ring();
            let slots = shard.ring.as_ref().map_or(0, VecDeque::len);
            if slots == 0 {
                empty += 1;
                continue;
            }
            empty = 0;
            // One victim per shard per visit, each slot looked at once per
            // visit: every shard is its own CLOCK, turned a victim at a time.
            for _ in 0..slots {
                examined += 1;
                match self.clock_step(&mut shard, t, &mut out) {
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

    /// Looks at the slot under one shard's hand.
    fn clock_step(&self, shard: &mut ShardMut<'_>, t: Time, out: &mut Evicted) -> Step {
        let before = shard.bytes;
        let Some((key, queued)) = shard.dequeue() else { return Step::Stop };
        let Some(entry) = shard.map.get(&key) else { return Step::Spared };
        let used = entry.last_used.load(Ordering::Relaxed);
        if used > queued || shard.is_expecting(&key, t.mono) {
            let tick = self.next_tick();
            shard.queue(&key, tick);
            return Step::Spared;
        }
        if !entry.holders.is_empty() {
            if !out.held.iter().any(|(k, _)| **k == *key) {
                out.held.push((key.to_string(), entry.holder_ids()));
            }
            let tick = self.next_tick();
            shard.queue(&key, tick);
            return Step::Victim;
        }
        if shard.remove_if_unneeded(&key, t.mono).is_some() {
            out.freed += before - shard.bytes;
            out.removed.push(key.into());
        }
        Step::Victim
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
    /// it. Returns the bytes freed, `None` if the key stays.
    pub fn finish_invalidation(&self, key: &str, cleared: &[NodeId], asked: u64, t: Time) -> Option<usize> {
        let mut shard = self.shard_mut(key);
        shard.unhold(key, |&(c, since)| !cleared.contains(&c) || since >= asked);
        shard.remove_if_unneeded(key, t.mono)
    }

    /// Entries in key order after `after`, starting with `prefix`, at most `limit`.
    pub fn dump(&self, prefix: &str, after: Option<&str>, limit: usize, now: Millis) -> Vec<DumpEntry> {
        let mut out: Vec<DumpEntry> = Vec::new();
        let generation = self.generation();
        for shard in self.shards.iter() {
            let shard = shard.read();
            for (key, entry) in shard.map.iter() {
                if !key.starts_with(prefix) || after.is_some_and(|a| &**key <= a) || entry.is_expired(now) {
                    continue;
                }
                out.push(DumpEntry {
                    key: key.to_string(),
                    version: entry.version,
                    value: entry.value.clone(),
                    expires_at: entry.expires_at(),
                    current: entry.stamp.is_current(generation),
                });
            }
        }
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        out.truncate(limit);
        out
    }

    /// All held keys with their versions (for diagnostics and tests).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged: keys, values, per-entry overhead, holder records,
    /// and the eviction ring of a bounded store. One atomic load.
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
        for i in 0..SHARDS {
            let mut guard = self.lock(i);
            let shard = &mut *guard;
            let mut removed = 0;
            for entry in shard.map.values_mut() {
                removed += entry.holders.retain(|&(c, _)| c != child);
            }
            shard.holders -= removed;
            shard.bytes -= removed * HOLDER_BYTES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: Millis) -> Time {
        Time::at(ms)
    }

    fn put(key: &str, version: Version, value: &str) -> Update {
        Update { key: key.into(), version, value: Some(Bytes::from(value.to_string())), expires_at: None }
    }

    fn del(key: &str, version: Version) -> Update {
        Update { key: key.into(), version, value: None, expires_at: None }
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("a").is_ok());
        assert!(check_key("a/b c").is_ok());
        assert!(check_key(&"k".repeat(250)).is_ok());
        assert!(check_key(&"k".repeat(251)).is_err());
        assert!(check_key("").is_err());
        assert!(check_key("a\nb").is_err());
        assert!(check_key("a\u{7f}").is_err());
        assert!(check_key("ключ").is_ok());
    }

    #[test]
    fn an_entry_stays_small() {
        // Every slot of a big store pays for these bytes; see `Entry`.
        assert!(std::mem::size_of::<Entry>() <= 72, "{}", std::mem::size_of::<Entry>());
        assert_eq!(std::mem::size_of::<Holders>(), 8);
        let mut h = Holders::default();
        h.push((3, 1));
        h.push((4, 2));
        h.retain(|&(id, _)| id != 3);
        assert_eq!(h.iter().map(|&(id, _)| id).collect::<Vec<_>>(), vec![4]);
        h.retain(|_| false);
        assert!(h.0.is_none(), "an emptied list gives its allocation back");
        assert_eq!(expiry(Some(0)).map(NonZeroU64::get), Some(1));
        assert_eq!(expiry(None), None);
    }

    #[test]
    fn a_stored_value_does_not_pin_the_buffer_it_was_read_into() {
        let store = Store::new();
        // A 10-byte value sliced out of a 64 KiB read buffer.
        let buffer = Bytes::from(vec![7u8; 64 << 10]);
        let value = buffer.slice(100..110);
        store.apply(&Update { key: "k".into(), version: 1, value: Some(value.clone()), expires_at: None }, t(0));
        let Lookup::Value { value: stored, .. } = store.get("k", t(0)) else { panic!("stored") };
        assert_eq!(stored, value);
        let within = buffer.as_ptr_range().contains(&stored.as_ptr());
        assert!(!within, "the store keeps its own copy, not a slice of the read buffer");
    }

    #[test]
    fn newer_version_replaces_older() {
        let s = Store::new();
        assert_eq!(s.apply(&put("k", 1, "a"), t(0)), Applied::Newer { holders: vec![] });
        assert!(matches!(s.apply(&put("k", 3, "c"), t(0)), Applied::Newer { .. }));
        assert!(matches!(s.get("k", t(0)), Lookup::Value { version: 3, ref value, .. } if value == "c"));
    }

    #[test]
    fn late_push_never_overwrites_newer_version() {
        let s = Store::new();
        s.apply(&put("k", 5, "new"), t(0));
        assert_eq!(s.apply_push(&put("k", 4, "old"), t(0)), Applied::Stale);
        assert_eq!(s.apply_push(&put("k", 5, "dup"), t(0)), Applied::Stale);
        assert!(matches!(s.get("k", t(0)), Lookup::Value { version: 5, ref value, .. } if value == "new"));
    }

    #[test]
    fn tombstone_beats_a_late_push() {
        let s = Store::new();
        s.apply(&put("k", 1, "a"), t(0));
        assert!(matches!(s.apply_push(&del("k", 2), t(0)), Applied::Newer { .. }));
        assert_eq!(s.apply_push(&put("k", 1, "a"), t(0)), Applied::Stale);
        assert_eq!(s.get("k", t(0)), Lookup::Tombstone { version: 2, received_at: 0, current: true });
    }

    #[test]
    fn push_for_unheld_key_is_refused() {
        let s = Store::new();
        assert_eq!(s.apply_push(&put("k", 1, "a"), t(0)), Applied::NotHeld);
        assert_eq!(s.get("k", t(0)), Lookup::Absent);
    }

    #[test]
    fn push_overtaking_a_fill_is_kept_and_the_fill_dropped() {
        let s = Store::new();
        s.expect("k");
        // The parent recorded us as holder, then a newer write was pushed
        // before the fill's answer (version 1) arrived.
        assert!(matches!(s.apply_push(&put("k", 2, "pushed"), t(10)), Applied::Newer { .. }));
        assert_eq!(s.apply(&put("k", 1, "filled"), t(20)), Applied::Stale);
        s.unexpect("k", 0);
        assert!(matches!(s.get("k", t(30)), Lookup::Value { version: 2, ref value, .. } if value == "pushed"));
    }

    #[test]
    fn a_refused_push_does_not_unhold_a_later_fill() {
        let s = Store::new();
        s.apply(&put("k", 1, "a"), t(0));
        let sent = s.tick_now(); // push batch sent
        s.get_and_hold("k", 7, t(0)); // child's new fill recorded after
        s.remove_holder("k", 7, sent); // child's "not held" for the old push
        assert_eq!(s.holders_of("k"), vec![7]);
        s.remove_holder("k", 7, s.tick_now());
        assert!(s.holders_of("k").is_empty());
    }

    #[test]
    fn expectations_are_counted() {
        let s = Store::new();
        s.expect("k");
        s.expect("k");
        s.unexpect("k", 0);
        assert!(matches!(s.apply_push(&put("k", 1, "a"), t(10)), Applied::Newer { .. }));
        s.unexpect("k", 0);
        s.remove("k");
        assert_eq!(s.apply_push(&put("k", 2, "b"), t(10)), Applied::NotHeld);
    }

    #[test]
    fn apply_and_hold_records_the_writer_and_reports_newer() {
        let s = Store::new();
        s.apply(&put("k", 5, "newer"), t(0));
        let (applied, current) = s.apply_and_hold(&put("k", 4, "mine"), 3, t(0));
        assert_eq!(applied, Applied::Stale);
        assert_eq!(current.version, 5);
        assert_eq!(s.holders_of("k"), vec![3]);
        let (applied, current) = s.apply_and_hold(&put("k", 6, "mine"), 8, t(0));
        assert_eq!(applied, Applied::Newer { holders: vec![3] });
        assert_eq!(current.version, 6);
    }

    #[test]
    fn a_child_writing_through_becomes_a_holder_when_the_key_arrives() {
        let s = Store::new();
        s.expect_for("k", 4);
        s.expect_for("k", 4);
        assert!(s.holders_of("k").is_empty(), "not held yet");
        // The root's push of the commit reaches us before our answer: the
        // child must get it too.
        assert_eq!(s.apply_push(&put("k", 3, "v"), t(0)), Applied::Newer { holders: vec![4] });
        assert_eq!(s.holders_of("k"), vec![4]);
        // Held and current: the child is recorded at once.
        s.expect_for("k", 5);
        assert_eq!(s.holders_of("k"), vec![4, 5]);
        // A reset forgets waiting children along with holders.
        s.remove("k");
        s.expect_for("j", 6);
        s.reset();
        assert!(matches!(s.apply_push(&put("j", 1, "v"), t(0)), Applied::Newer { ref holders } if holders.is_empty()));
    }

    #[test]
    fn an_open_expectation_never_lapses_and_a_closed_one_lingers() {
        let s = Store::new();
        s.expect("k");
        // However long the write takes, the mark holds while it is open.
        assert_eq!(s.sweep_expired(t(u64::MAX / 4)), 0);
        assert!(s.is_expecting("k", t(1 << 40)));
        s.unexpect("k", 100);
        assert!(s.is_expecting("k", t(99)));
        assert_eq!(s.apply_push(&put("k", 1, "a"), t(100)), Applied::NotHeld);
        s.sweep_expired(t(100));
        assert!(!s.is_expecting("k", t(0)), "the lapsed mark is swept");
    }

    #[test]
    fn expired_entries_read_as_absent_and_are_swept() {
        let s = Store::new();
        s.apply(&Update { expires_at: Some(1_000), ..put("k", 1, "a") }, t(0));
        assert!(matches!(s.get("k", t(999)), Lookup::Value { .. }));
        assert_eq!(s.get("k", t(1_000)), Lookup::Absent);
        assert_eq!(s.sweep_expired(t(1_000)), 1);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn holders_are_recorded_only_for_values() {
        let s = Store::new();
        assert_eq!(s.get_and_hold("k", 7, t(0)), Lookup::Absent);
        s.apply(&put("k", 1, "a"), t(0));
        assert!(matches!(s.get_and_hold("k", 7, t(0)), Lookup::Value { .. }));
        assert!(matches!(s.get_and_hold("k", 7, t(0)), Lookup::Value { .. }));
        s.add_holder("k", 9);
        assert_eq!(s.holders_of("k"), vec![7, 9]);
        s.remove_holder("k", 7, s.tick_now());
        assert_eq!(s.holders_of("k"), vec![9]);
        // Holders survive value updates: the next push must reach them.
        assert_eq!(s.apply(&put("k", 2, "b"), t(0)), Applied::Newer { holders: vec![9] });
        s.forget_child(9);
        assert!(s.holders_of("k").is_empty());
        assert!(!s.add_holder("missing", 1));
    }

    #[test]
    fn commit_assigns_versions_and_reports_creation() {
        let s = Store::new();
        let mut next = 0;
        let mut bump = || {
            next += 1;
            next
        };
        assert_eq!(s.commit("k", None, None, t(0), None, &mut bump), Committed::Absent);
        assert_eq!(
            s.commit("k", Some(Bytes::from_static(b"a")), None, t(0), None, &mut bump),
            Committed::Done { version: 1, created: true, holders: vec![] }
        );
        s.add_holder("k", 4);
        assert_eq!(
            s.commit("k", Some(Bytes::from_static(b"b")), None, t(0), Some(5), &mut bump),
            Committed::Done { version: 2, created: false, holders: vec![4, 5] }
        );
        // The writer is pushed its own commit (its reply may be lost) and
        // stays a holder: the next commit pushes to it too.
        assert_eq!(
            s.commit("k", None, None, t(0), None, &mut bump),
            Committed::Done { version: 3, created: false, holders: vec![4, 5] }
        );
        assert_eq!(s.commit("k", None, None, t(0), None, &mut bump), Committed::Absent);
        // Writing an expired key creates it anew.
        s.commit("e", Some(Bytes::from_static(b"x")), Some(10), t(0), None, &mut bump);
        assert!(matches!(
            s.commit("e", Some(Bytes::from_static(b"y")), None, t(10), None, &mut bump),
            Committed::Done { created: true, .. }
        ));
    }

    #[test]
    fn refresh_only_matches_the_same_version() {
        let s = Store::new();
        s.apply(&put("k", 3, "a"), t(0));
        assert!(s.refresh("k", 3, t(500)));
        assert_eq!(s.get("k", t(600)).received_at(), Some(500));
        assert!(!s.refresh("k", 2, t(700)));
        assert!(!s.refresh("nope", 1, t(700)));
    }

    #[test]
    fn reset_keeps_values_as_not_current_and_drops_tombstones_and_holders() {
        let s = Store::new();
        s.apply(&put("a", 3, "x"), t(0));
        s.get_and_hold("a", 7, t(0));
        s.apply(&del("d", 2), t(0));
        s.expect("b");
        let g = s.generation();
        s.reset();
        assert_eq!(s.generation(), g + 1);
        assert!(matches!(s.get("a", t(1)), Lookup::Value { version: 3, current: false, .. }));
        assert_eq!(s.get("d", t(1)), Lookup::Absent, "a tombstone is only worth its confirmation");
        assert!(s.holders_of("a").is_empty(), "children re-register when they revalidate");
        // A not-current value is not handed to a child as a holder.
        assert!(matches!(s.get_and_hold("a", 7, t(1)), Lookup::Value { current: false, .. }));
        assert!(s.holders_of("a").is_empty());
        // Writes in flight stay expected across the reset.
        assert!(matches!(s.apply_push(&put("b", 2, "y"), t(1)), Applied::Newer { .. }));
    }

    #[test]
    fn a_confirmation_makes_a_kept_entry_current_even_when_the_parent_is_behind() {
        let s = Store::new();
        s.apply(&put("k", 5, "seen"), t(0));
        s.reset();
        // The new parent answers an older version: ours stays (a node never
        // goes back) and is current, since the parent now pushes to us.
        assert_eq!(s.apply(&put("k", 4, "behind"), t(9)), Applied::Stale);
        assert!(matches!(s.get("k", t(9)), Lookup::Value { version: 5, current: true, received_at: 9, .. }));
        s.reset();
        assert!(s.refresh("k", 5, t(12)));
        assert!(matches!(s.get("k", t(12)), Lookup::Value { current: true, received_at: 12, .. }));
    }

    #[test]
    fn an_absent_answer_keeps_newer_entries_and_holders() {
        let s = Store::new();
        s.apply(&put("k", 5, "v"), t(0));
        s.get_and_hold("k", 7, t(0));
        assert_eq!(s.apply_absent("k", Some(4), t(1)), Applied::Stale, "the parent is behind: keep ours");
        // Deleted later than what we hold: the tombstone replaces the value
        // and the child that holds it is to be told.
        assert_eq!(s.apply_absent("k", Some(6), t(1)), Applied::Newer { holders: vec![7] });
        assert!(matches!(s.get("k", t(1)), Lookup::Tombstone { version: 6, .. }));
        assert_eq!(s.holders_of("k"), vec![7]);
        // Unconfirmed (after a reset) or no version to go by: removed.
        s.apply(&put("j", 2, "v"), t(0));
        s.reset();
        assert_eq!(s.apply_absent("j", Some(3), t(1)), Applied::NotHeld);
        assert_eq!(s.get("j", t(1)), Lookup::Absent);
        s.apply(&put("j", 4, "v"), t(0));
        assert_eq!(s.apply_absent("j", None, t(1)), Applied::NotHeld);
        assert_eq!(s.apply_absent("missing", Some(9), t(1)), Applied::NotHeld);
    }

    #[test]
    fn stamps_keep_time_and_generation_apart() {
        let st = Stamp::new(123_456, 9);
        assert_eq!(st.received_at(), 123_456);
        assert!(st.is_current(9));
        assert!(!st.is_current(10));
        assert!(Stamp::new(1, (1 << 20) + 3).is_current(3), "generations compare in 20 bits");
    }

    #[test]
    fn byte_accounting_follows_values() {
        let s = Store::new();
        s.apply(&put("k", 1, "aaaa"), t(0));
        let one = s.bytes();
        assert_eq!(one, 1 + 4 + ENTRY_OVERHEAD);
        s.apply(&put("k", 2, "aaaaaaaa"), t(0));
        assert_eq!(s.bytes(), one + 4);
        s.remove("k");
        assert_eq!(s.bytes(), 0);
    }

    fn bounded_with(keys: usize) -> Store {
        let s = Store::bounded();
        for i in 0..keys {
            s.apply(&put(&format!("k{i}"), 1, "v"), t(0));
        }
        s
    }

    /// Bytes of one entry of `bounded_with`: key, value, overhead, ring slot.
    fn one_entry(key: &str) -> usize {
        key.len() + 1 + ENTRY_OVERHEAD + RING_SLOT + key.len()
    }

    #[test]
    fn eviction_takes_the_least_recently_used_first() {
        // A hot set read before every pass outlives every cold key: a
        // victim is never a key used since its slot was last looked at.
        let s = bounded_with(10);
        let hot = |s: &Store| {
            for i in 1..5 {
                s.get(&format!("k{i}"), t(0));
            }
        };
        hot(&s);
        let out = s.evict(1, t(0), 1000, 10);
        assert_eq!(out.freed, one_entry(&out.removed[0]));
        let mut gone = out.removed;
        for _ in 0..5 {
            hot(&s);
            gone.extend(s.evict(1, t(0), 1000, 10).removed);
        }
        gone.sort();
        assert_eq!(gone, vec!["k0", "k5", "k6", "k7", "k8", "k9"]);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn accounting_covers_entries_holders_and_the_ring_and_returns_to_zero() {
        let s = Store::bounded();
        s.apply(&put("k", 1, "aaaa"), t(0));
        assert_eq!(s.bytes(), 1 + 4 + ENTRY_OVERHEAD + RING_SLOT + 1);
        s.get_and_hold("k", 7, t(0));
        s.get_and_hold("k", 7, t(0));
        assert_eq!(s.holder_records(), 1);
        assert_eq!(s.bytes(), 1 + 4 + ENTRY_OVERHEAD + RING_SLOT + 1 + HOLDER_BYTES);
        s.apply(&del("k", 2), t(0));
        assert_eq!(s.tombstones(), 1);
        assert_eq!(s.bytes(), 1 + ENTRY_OVERHEAD + RING_SLOT + 1 + HOLDER_BYTES);
        s.forget_child(7);
        assert_eq!(s.holder_records(), 0);
        s.apply(&put("j", 1, "x"), t(0));
        s.get_and_hold("j", 3, t(0));
        s.reset();
        assert_eq!(s.holder_records(), 0);
        assert_eq!(s.tombstones(), 0);
        let all = s.evict(usize::MAX, t(0), 1000, 10);
        assert_eq!(all.removed, vec!["j".to_string()]);
        assert_eq!(s.bytes(), 0, "every byte charged was given back");
        // The total is the sum of the shards.
        let s = bounded_with(500);
        let sum: usize = s.shards.iter().map(|sh| sh.read().bytes).sum();
        assert_eq!(s.bytes(), sum);
    }

    #[test]
    fn keys_with_a_fill_or_write_in_flight_are_never_evicted() {
        let s = bounded_with(3);
        s.expect("k0");
        s.expect_for("k1", 4);
        s.unexpect("k1", 0);
        let out = s.evict(usize::MAX, t(0), 100, 10);
        assert_eq!(out.removed.len(), 1, "only k2 can go: {out:?}");
        assert!(out.held.iter().any(|(k, h)| k == "k1" && h == &vec![4]));
        assert!(matches!(s.get("k0", t(0)), Lookup::Value { .. }));
        s.unexpect("k0", 0);
        let out = s.evict(usize::MAX, t(0), 100, 10);
        assert_eq!(out.removed, vec!["k0".to_string()]);
    }

    #[test]
    fn a_held_key_goes_after_its_children_dropped_it_unless_one_read_it_again() {
        let s = bounded_with(1);
        s.get_and_hold("k0", 4, t(0));
        s.get_and_hold("k0", 5, t(0));
        let out = s.evict(usize::MAX, t(0), 10, 10);
        assert!(out.removed.is_empty());
        assert_eq!(out.held, vec![("k0".to_string(), vec![4, 5])]);
        let asked = s.tick_now();
        // Child 5 dropped it and then read it again: recorded after we asked.
        s.get_and_hold("k0", 5, t(0));
        assert_eq!(s.finish_invalidation("k0", &[4, 5], asked, t(0)), None);
        assert_eq!(s.holders_of("k0"), vec![5]);
        let asked = s.tick_now();
        // The ring slot is given back when the hand passes it.
        assert_eq!(s.finish_invalidation("k0", &[5], asked, t(0)), Some(one_entry("k0") - RING_SLOT - 2));
        assert_eq!(s.get("k0", t(0)), Lookup::Absent);
        assert_eq!(s.holder_records(), 0);
    }

    #[test]
    fn a_child_drops_what_its_parent_evicts_unless_it_is_in_flight() {
        let s = Store::new();
        s.apply(&put("a", 1, "x"), t(0));
        s.apply(&put("b", 1, "x"), t(0));
        s.apply(&put("c", 1, "x"), t(0));
        s.expect("b");
        s.get_and_hold("c", 9, t(0));
        assert_eq!(s.drop_for_parent("a", t(0)), DropAnswer::Gone);
        assert_eq!(s.get("a", t(0)), Lookup::Absent);
        assert_eq!(s.drop_for_parent("b", t(0)), DropAnswer::Kept);
        assert_eq!(s.drop_for_parent("c", t(0)), DropAnswer::Held(vec![9]));
        assert_eq!(s.drop_for_parent("missing", t(0)), DropAnswer::Gone);
        // Not stored yet, but a fill is on its way: its answer would store it.
        s.expect("coming");
        assert_eq!(s.drop_for_parent("coming", t(0)), DropAnswer::Kept);
    }

    #[test]
    fn tombstones_are_collected_past_the_horizon_when_nothing_needs_them() {
        let s = Store::new();
        s.apply(&del("old", 1), t(0));
        s.apply(&del("young", 2), t(500));
        s.apply(&del("held", 3), t(0));
        s.apply(&del("expected", 4), t(0));
        s.apply(&put("value", 5, "v"), t(0));
        s.add_holder("held", 7);
        s.expect("expected");
        assert!(s.collect_tombstones(t(999), 1_000).is_empty());
        let mut got = s.collect_tombstones(t(1_000), 1_000);
        got.sort();
        assert_eq!(got, vec!["old".to_string()]);
        assert_eq!(s.tombstones(), 3);
        s.remove_holder("held", 7, s.tick_now());
        s.unexpect("expected", 0);
        let mut got = s.collect_tombstones(t(1_500), 1_000);
        got.sort();
        assert_eq!(got, vec!["expected".to_string(), "held".to_string(), "young".to_string()]);
        assert_eq!(s.tombstones(), 0);
        assert!(matches!(s.get("value", t(1_500)), Lookup::Value { .. }), "values are not collected");
        // A late, older push for a collected key is refused: not held.
        assert_eq!(s.apply_push(&put("old", 0, "late"), t(2_000)), Applied::NotHeld);
    }

    #[test]
    fn the_parent_tick_is_the_highest_seen_since_the_last_reset() {
        let s = Store::new();
        let g = s.generation();
        s.note_parent_tick(g, 10);
        s.note_parent_tick(g, 7);
        assert_eq!(s.parent_tick(), (g, 10));
        s.reset();
        assert_eq!(s.parent_tick(), (g + 1, 0), "a new parent's ticks start over");
        s.note_parent_tick(g, 99); // an answer from before the reset
        assert_eq!(s.parent_tick(), (g + 1, 0));
        s.note_parent_tick(g + 1, 3);
        assert_eq!(s.parent_tick(), (g + 1, 3));
    }

    #[test]
    fn a_dropped_message_removes_only_records_its_tick_covers() {
        // The parent's side of "dropped": records at or below the child's
        // tick go; a fill recorded after (a refill) survives.
        let parent = Store::new();
        parent.apply(&put("k", 1, "v"), t(0));
        parent.get_and_hold("k", 4, t(0));
        let answered = parent.tick_now(); // the fill answer carries this
        parent.get_and_hold("k", 4, t(0)); // a refill after the eviction
        parent.remove_holder("k", 4, answered + 1);
        assert_eq!(parent.holders_of("k"), vec![4]);
        let later = parent.tick_now();
        parent.remove_holder("k", 4, later + 1);
        assert!(parent.holders_of("k").is_empty());
    }

    #[test]
    fn the_ring_is_compacted_when_other_paths_removed_keys() {
        let s = bounded_with(2_000);
        for i in 0..2_000 {
            s.remove(&format!("k{i}"));
        }
        s.apply(&put("live", 1, "v"), t(0));
        s.evict(0, t(0), 0, 0); // nothing asked: no compaction either
        let out = s.evict(usize::MAX, t(0), 10_000, 10);
        assert_eq!(out.removed, vec!["live".to_string()]);
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn dump_pages_in_key_order() {
        let s = Store::new();
        for k in ["b", "a", "c", "ab", "x/1"] {
            s.apply(&put(k, 1, "v"), t(0));
        }
        let keys = |v: Vec<DumpEntry>| v.into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(keys(s.dump("", None, 2, 0)), vec!["a", "ab"]);
        assert_eq!(keys(s.dump("", Some("ab"), 2, 0)), vec!["b", "c"]);
        assert_eq!(keys(s.dump("a", None, 10, 0)), vec!["a", "ab"]);
    }

    #[test]
    fn dump_says_which_entries_a_reset_left_unconfirmed() {
        let s = Store::new();
        s.apply(&put("kept", 1, "v"), t(0));
        s.reset();
        s.apply(&put("new", 2, "w"), t(1));
        let current = |s: &Store| s.dump("", None, 10, 0).into_iter().map(|e| (e.key, e.current)).collect::<Vec<_>>();
        assert_eq!(current(&s), vec![("kept".to_string(), false), ("new".to_string(), true)]);
    }
}
