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
use std::hash::BuildHasher;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

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
    fn hold(&mut self, child: NodeId, tick: u64) {
        match self.holders.iter_mut().find(|(id, _)| *id == child) {
            Some(h) => h.1 = tick,
            None => self.holders.push((child, tick)),
        }
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
    fn retain(&mut self, keep: impl FnMut(&(NodeId, u64)) -> bool) {
        if let Some(list) = self.0.as_mut() {
            list.retain(keep);
            if list.is_empty() {
                self.0 = None;
            }
        }
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
    bytes: usize,
}

impl Shard {
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
        let Some(entry) = self.map.get_mut(update.key.as_str()) else { return applied };
        for child in &waiting {
            entry.hold(*child, tick);
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
                entry.version = update.version;
                entry.value = compact(&update.value);
                entry.expires_at = expiry(update.expires_at);
                entry.stamp = stamp;
                *entry.last_used.get_mut() = tick;
                Applied::Newer { holders: entry.holder_ids() }
            }
            None => {
                self.bytes += charge;
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
        self.bytes -= Entry::charge(key, &entry.value);
        Some(entry)
    }
}

/// A sharded, versioned store. Cheap to share behind an `Arc`.
pub struct Store {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    /// Monotonic LRU clock.
    tick: AtomicU64,
    /// Bumped by `clear`; fills started in an older generation are not cached.
    generation: AtomicU64,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            tick: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
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
        let mut shard = self.shard(key).write();
        let tick = self.next_tick();
        match shard.map.get_mut(key) {
            Some(entry) => {
                *entry.last_used.get_mut() = tick;
                let found = entry.lookup(t, generation);
                if matches!(found, Lookup::Value { current: true, .. }) {
                    entry.hold(child, tick);
                }
                found
            }
            None => Lookup::Absent,
        }
    }

    /// Records `child` as a holder of `key` if the key is held here.
    pub fn add_holder(&self, key: &str, child: NodeId) -> bool {
        let tick = self.next_tick();
        let mut shard = self.shard(key).write();
        match shard.map.get_mut(key) {
            Some(entry) => {
                entry.hold(child, tick);
                true
            }
            None => false,
        }
    }

    /// Forgets `child` as a holder of `key`, unless it was recorded at or
    /// after `before` (a fill that began after the push that was refused).
    pub fn remove_holder(&self, key: &str, child: NodeId, before: u64) {
        if let Some(entry) = self.shard(key).write().map.get_mut(key) {
            entry.holders.retain(|&(c, since)| c != child || since >= before);
        }
    }

    pub fn holders_of(&self, key: &str) -> Vec<NodeId> {
        self.shard(key).read().map.get(key).map(Entry::holder_ids).unwrap_or_default()
    }

    /// Marks `key` as expected: a fill or write is in flight, so pushes for
    /// it are accepted even though the key is not held yet. Counted: each
    /// `expect` needs its own [`Store::unexpect`], and the mark does not
    /// lapse while any is open, however long the write takes.
    pub fn expect(&self, key: &str) {
        let mut shard = self.shard(key).write();
        shard.expecting.entry(key.to_string()).or_default().count += 1;
    }

    /// [`Store::expect`] for a write that `child` sends up through this
    /// node: the child also becomes a holder of the key, now if the key is
    /// held here and current, else as soon as it arrives.
    pub fn expect_for(&self, key: &str, child: NodeId) {
        let generation = self.generation();
        let tick = self.next_tick();
        let mut shard = self.shard(key).write();
        let held = match shard.map.get_mut(key) {
            Some(entry) if entry.stamp.is_current(generation) => {
                entry.hold(child, tick);
                true
            }
            _ => false,
        };
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
        let mut shard = self.shard(key).write();
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
        self.shard(&update.key).write().apply_if_newer(update, t, tick, generation)
    }

    /// Stores a committed update coming back down the write path and records
    /// `child` (the node the write came from) as a holder, atomically. Also
    /// returns what the store now has, for when it holds something newer
    /// that the child must be sent.
    pub fn apply_and_hold(&self, update: &Update, child: NodeId, t: Time) -> (Applied, Update) {
        let tick = self.next_tick();
        let generation = self.generation();
        let mut shard = self.shard(&update.key).write();
        let applied = shard.apply_if_newer(update, t, tick, generation);
        let Some(entry) = shard.map.get_mut(update.key.as_str()) else {
            return (applied, update.clone());
        };
        entry.hold(child, tick);
        (applied, entry.as_update(&update.key))
    }

    /// Stores a pushed update if this node holds or expects the key and the
    /// update is newer. A push for anything else is `NotHeld`, and the
    /// sender forgets this node as a holder.
    pub fn apply_push(&self, update: &Update, t: Time) -> Applied {
        let tick = self.next_tick();
        let generation = self.generation();
        let mut shard = self.shard(&update.key).write();
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
        let mut shard = self.shard(key).write();
        let live = shard.map.get(key).is_some_and(|e| e.value.is_some() && !e.is_expired(t.wall));
        if value.is_none() && !live {
            return Committed::Absent;
        }
        let update = Update { key: key.to_string(), version: next_version(), value, expires_at };
        match shard.apply_if_newer(&update, t, tick, generation) {
            Applied::Newer { mut holders } => {
                if let Some(child) = holder {
                    if let Some(entry) = shard.map.get_mut(key) {
                        entry.hold(child, tick);
                    }
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
        match self.shard(key).write().map.get_mut(key) {
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
        let mut shard = self.shard(key).write();
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
        self.shard(key).write().remove(key).map(|e| e.holder_ids())
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
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let tombstones: Vec<Box<str>> =
                shard.map.iter().filter(|(_, e)| e.value.is_none()).map(|(k, _)| k.clone()).collect();
            for key in tombstones {
                shard.remove(&key);
            }
            for entry in shard.map.values_mut() {
                entry.holders = Holders::default();
            }
            for e in shard.expecting.values_mut() {
                e.holders.clear();
            }
        }
    }

    /// Removes expired entries and lapsed `expect` markers. Returns how many
    /// entries went.
    pub fn sweep_expired(&self, t: Time) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
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

    /// Picks the least recently used of a sample of entries, for eviction
    /// under `--max-memory` (the approximation Redis uses: exact LRU would
    /// need a shared list touched on every read).
    pub fn lru_victim(&self, sample: usize) -> Option<String> {
        let start = self.next_tick() as usize;
        let mut best: Option<(u64, String)> = None;
        for i in 0..SHARDS {
            let shard = self.shards[(start + i) % SHARDS].read();
            for (key, entry) in shard.map.iter().take(sample.div_ceil(SHARDS).max(1)) {
                let used = entry.last_used.load(Ordering::Relaxed);
                if best.as_ref().is_none_or(|(b, _)| used < *b) {
                    best = Some((used, key.to_string()));
                }
            }
            if best.is_some() && i * sample.div_ceil(SHARDS).max(1) >= sample {
                break;
            }
        }
        best.map(|(_, key)| key)
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

    /// Bytes charged for held entries: keys, values and per-entry overhead.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.read().bytes).sum()
    }

    /// Keys held whose holder sets name `child` (tests, re-attachment).
    pub fn keys_held_by(&self, child: NodeId) -> Vec<String> {
        let mut keys = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            keys.extend(
                shard.map.iter().filter(|(_, e)| e.holders.iter().any(|h| h.0 == child)).map(|(k, _)| k.to_string()),
            );
        }
        keys
    }

    /// Forgets `child` as a holder of every key (the child left or moved).
    pub fn forget_child(&self, child: NodeId) {
        for shard in self.shards.iter() {
            for entry in shard.write().map.values_mut() {
                entry.holders.retain(|&(c, _)| c != child);
            }
        }
    }

    /// Whether `key` has an entry whose version is exactly `version`.
    pub fn has_version(&self, key: &str, version: Version) -> bool {
        matches!(self.shard(key).read().map.get(key), Some(e) if e.version == version)
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

    #[test]
    fn lru_victim_is_the_least_recently_used() {
        let s = Store::new();
        for i in 0..10 {
            s.apply(&put(&format!("k{i}"), 1, "v"), t(0));
        }
        for i in 1..10 {
            s.get(&format!("k{i}"), t(0));
        }
        assert_eq!(s.lru_victim(1000).as_deref(), Some("k0"));
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
