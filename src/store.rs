//! The versioned key-value store of one node. Pure: no I/O, no async, no
//! clock — every time-dependent call takes `now` (unix milliseconds).
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

/// What a read finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Value {
        version: Version,
        value: Bytes,
        expires_at: Option<Millis>,
        received_at: Millis,
    },
    /// Deleted at `version`; this node holds the deletion.
    Tombstone {
        version: Version,
        received_at: Millis,
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
}

/// One slot of the map. Kept small (72 bytes; a 100k-entry node pays for
/// it in every slot): expiry as a non-zero niche, holders boxed because
/// most entries (every leaf's) have none.
struct Entry {
    version: Version,
    value: Option<Bytes>,
    expires_at: Option<NonZeroU64>,
    received_at: Millis,
    /// Children holding the key, each with the store tick when recorded.
    holders: Holders,
    /// LRU clock tick of the last read or write; atomic so reads need only
    /// the shard's read lock.
    last_used: AtomicU64,
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
    fn lookup(&self, now: Millis) -> Lookup {
        if self.is_expired(now) {
            return Lookup::Absent;
        }
        match &self.value {
            Some(value) => Lookup::Value {
                version: self.version,
                value: value.clone(),
                expires_at: self.expires_at(),
                received_at: self.received_at,
            },
            None => Lookup::Tombstone { version: self.version, received_at: self.received_at },
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

/// Fills and writes in flight for one key: how many, and until when at most.
#[derive(Clone, Copy)]
struct Expecting {
    count: u32,
    until: Millis,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<str>, Entry>,
    /// Keys with fills or writes in flight: pushes for them are accepted.
    expecting: HashMap<String, Expecting>,
    bytes: usize,
}

impl Shard {
    fn is_expecting(&self, key: &str, now: Millis) -> bool {
        self.expecting.get(key).is_some_and(|e| e.until > now)
    }

    /// Stores `update` if it is newer than what the shard has; keeps holders.
    fn apply_if_newer(&mut self, update: &Update, now: Millis, tick: u64) -> Applied {
        let charge = Entry::charge(&update.key, &update.value);
        match self.map.get_mut(update.key.as_str()) {
            Some(entry) if entry.version >= update.version => Applied::Stale,
            Some(entry) => {
                self.bytes = self.bytes + charge - Entry::charge(&update.key, &entry.value);
                entry.version = update.version;
                entry.value = compact(&update.value);
                entry.expires_at = expiry(update.expires_at);
                entry.received_at = now;
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
                        received_at: now,
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
    pub fn get(&self, key: &str, now: Millis) -> Lookup {
        let shard = self.shard(key).read();
        match shard.map.get(key) {
            Some(entry) => {
                entry.last_used.store(self.next_tick(), Ordering::Relaxed);
                entry.lookup(now)
            }
            None => Lookup::Absent,
        }
    }

    /// Reads a key for `child` and records the child as a holder in the same
    /// critical section, so no update can commit between the read and the
    /// record (the child would miss its push). Absent keys and tombstones
    /// record nothing: the child caches no negative answer from a fill.
    pub fn get_and_hold(&self, key: &str, child: NodeId, now: Millis) -> Lookup {
        let mut shard = self.shard(key).write();
        let tick = self.next_tick();
        match shard.map.get_mut(key) {
            Some(entry) => {
                *entry.last_used.get_mut() = tick;
                let found = entry.lookup(now);
                if matches!(found, Lookup::Value { .. }) {
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

    /// Marks `key` as expected until `until`: a fill or write is in flight,
    /// so pushes for it are accepted even though the key is not held yet.
    /// Counted: each `expect` needs its own `unexpect`.
    pub fn expect(&self, key: &str, until: Millis) {
        let mut shard = self.shard(key).write();
        let slot = shard.expecting.entry(key.to_string()).or_insert(Expecting { count: 0, until });
        slot.count += 1;
        slot.until = slot.until.max(until);
    }

    /// Ends one `expect`; the marker goes with the last one.
    pub fn unexpect(&self, key: &str) {
        let mut shard = self.shard(key).write();
        if let Some(slot) = shard.expecting.get_mut(key) {
            slot.count = slot.count.saturating_sub(1);
            if slot.count == 0 {
                shard.expecting.remove(key);
            }
        }
    }

    /// Stores an update this node asked for (a fill answer or a write's
    /// commit coming back), if newer.
    pub fn apply(&self, update: &Update, now: Millis) -> Applied {
        let tick = self.next_tick();
        self.shard(&update.key).write().apply_if_newer(update, now, tick)
    }

    /// Stores a committed update coming back down the write path and records
    /// `child` (the node the write came from) as a holder, atomically. Also
    /// returns what the store now has, for when it holds something newer
    /// that the child must be sent.
    pub fn apply_and_hold(&self, update: &Update, child: NodeId, now: Millis) -> (Applied, Update) {
        let tick = self.next_tick();
        let mut shard = self.shard(&update.key).write();
        let applied = shard.apply_if_newer(update, now, tick);
        let Some(entry) = shard.map.get_mut(update.key.as_str()) else {
            return (applied, update.clone());
        };
        entry.hold(child, tick);
        (applied, entry.as_update(&update.key))
    }

    /// Stores a pushed update if this node holds or expects the key and the
    /// update is newer. A push for anything else is `NotHeld`, and the
    /// sender forgets this node as a holder.
    pub fn apply_push(&self, update: &Update, now: Millis) -> Applied {
        let tick = self.next_tick();
        let mut shard = self.shard(&update.key).write();
        if !shard.map.contains_key(update.key.as_str()) && !shard.is_expecting(&update.key, now) {
            return Applied::NotHeld;
        }
        shard.apply_if_newer(update, now, tick)
    }

    /// The root's commit: gives the write the next version (from
    /// `next_version`, called under the shard lock so versions of one key are
    /// applied in order) and stores it. A delete of an absent key commits
    /// nothing. `holder`, the child the write came from, is recorded in the
    /// same critical section (it learns the version from the reply, every
    /// later commit pushes to it) and left out of the returned holders.
    pub fn commit(
        &self,
        key: &str,
        value: Option<Bytes>,
        expires_at: Option<Millis>,
        now: Millis,
        holder: Option<NodeId>,
        next_version: impl FnOnce() -> Version,
    ) -> Committed {
        let tick = self.next_tick();
        let mut shard = self.shard(key).write();
        let live = shard.map.get(key).is_some_and(|e| e.value.is_some() && !e.is_expired(now));
        if value.is_none() && !live {
            return Committed::Absent;
        }
        let update = Update { key: key.to_string(), version: next_version(), value, expires_at };
        match shard.apply_if_newer(&update, now, tick) {
            Applied::Newer { mut holders } => {
                if let Some(child) = holder {
                    holders.retain(|&h| h != child);
                    if let Some(entry) = shard.map.get_mut(key) {
                        entry.hold(child, tick);
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

    /// Restarts the freshness clock of an entry whose version the parent
    /// confirmed unchanged (ttl mode). Returns false if the entry changed.
    pub fn refresh(&self, key: &str, version: Version, now: Millis) -> bool {
        match self.shard(key).write().map.get_mut(key) {
            Some(entry) if entry.version == version => {
                entry.received_at = now;
                true
            }
            _ => false,
        }
    }

    /// Drops a key (no longer held), returning its holders.
    pub fn remove(&self, key: &str) -> Option<Vec<NodeId>> {
        self.shard(key).write().remove(key).map(|e| e.holder_ids())
    }

    /// Drops everything this node holds (re-attachment to a new parent or a
    /// new root epoch); fills begun before now are not cached.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            shard.map.clear();
            shard.expecting.clear();
            shard.bytes = 0;
        }
    }

    /// Removes expired entries and stale `expect` markers. Returns how many
    /// entries went.
    pub fn sweep_expired(&self, now: Millis) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let expired: Vec<String> =
                shard.map.iter().filter(|(_, e)| e.is_expired(now)).map(|(k, _)| k.to_string()).collect();
            for key in expired {
                shard.remove(&key);
                removed += 1;
            }
            shard.expecting.retain(|_, e| e.until > now);
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
        store.apply(&Update { key: "k".into(), version: 1, value: Some(value.clone()), expires_at: None }, 0);
        let Lookup::Value { value: stored, .. } = store.get("k", 0) else { panic!("stored") };
        assert_eq!(stored, value);
        let within = buffer.as_ptr_range().contains(&stored.as_ptr());
        assert!(!within, "the store keeps its own copy, not a slice of the read buffer");
    }

    #[test]
    fn newer_version_replaces_older() {
        let s = Store::new();
        assert_eq!(s.apply(&put("k", 1, "a"), 0), Applied::Newer { holders: vec![] });
        assert!(matches!(s.apply(&put("k", 3, "c"), 0), Applied::Newer { .. }));
        assert!(matches!(s.get("k", 0), Lookup::Value { version: 3, ref value, .. } if value == "c"));
    }

    #[test]
    fn late_push_never_overwrites_newer_version() {
        let s = Store::new();
        s.apply(&put("k", 5, "new"), 0);
        assert_eq!(s.apply_push(&put("k", 4, "old"), 0), Applied::Stale);
        assert_eq!(s.apply_push(&put("k", 5, "dup"), 0), Applied::Stale);
        assert!(matches!(s.get("k", 0), Lookup::Value { version: 5, ref value, .. } if value == "new"));
    }

    #[test]
    fn tombstone_beats_a_late_push() {
        let s = Store::new();
        s.apply(&put("k", 1, "a"), 0);
        assert!(matches!(s.apply_push(&del("k", 2), 0), Applied::Newer { .. }));
        assert_eq!(s.apply_push(&put("k", 1, "a"), 0), Applied::Stale);
        assert_eq!(s.get("k", 0), Lookup::Tombstone { version: 2, received_at: 0 });
    }

    #[test]
    fn push_for_unheld_key_is_refused() {
        let s = Store::new();
        assert_eq!(s.apply_push(&put("k", 1, "a"), 0), Applied::NotHeld);
        assert_eq!(s.get("k", 0), Lookup::Absent);
    }

    #[test]
    fn push_overtaking_a_fill_is_kept_and_the_fill_dropped() {
        let s = Store::new();
        s.expect("k", 1_000);
        // The parent recorded us as holder, then a newer write was pushed
        // before the fill's answer (version 1) arrived.
        assert!(matches!(s.apply_push(&put("k", 2, "pushed"), 10), Applied::Newer { .. }));
        assert_eq!(s.apply(&put("k", 1, "filled"), 20), Applied::Stale);
        s.unexpect("k");
        assert!(matches!(s.get("k", 30), Lookup::Value { version: 2, ref value, .. } if value == "pushed"));
    }

    #[test]
    fn a_refused_push_does_not_unhold_a_later_fill() {
        let s = Store::new();
        s.apply(&put("k", 1, "a"), 0);
        let sent = s.tick_now(); // push batch sent
        s.get_and_hold("k", 7, 0); // child's new fill recorded after
        s.remove_holder("k", 7, sent); // child's "not held" for the old push
        assert_eq!(s.holders_of("k"), vec![7]);
        s.remove_holder("k", 7, s.tick_now());
        assert!(s.holders_of("k").is_empty());
    }

    #[test]
    fn expectations_are_counted() {
        let s = Store::new();
        s.expect("k", 1_000);
        s.expect("k", 500);
        s.unexpect("k");
        assert!(matches!(s.apply_push(&put("k", 1, "a"), 10), Applied::Newer { .. }));
        s.unexpect("k");
        s.remove("k");
        assert_eq!(s.apply_push(&put("k", 2, "b"), 10), Applied::NotHeld);
    }

    #[test]
    fn apply_and_hold_records_the_writer_and_reports_newer() {
        let s = Store::new();
        s.apply(&put("k", 5, "newer"), 0);
        let (applied, current) = s.apply_and_hold(&put("k", 4, "mine"), 3, 0);
        assert_eq!(applied, Applied::Stale);
        assert_eq!(current.version, 5);
        assert_eq!(s.holders_of("k"), vec![3]);
        let (applied, current) = s.apply_and_hold(&put("k", 6, "mine"), 8, 0);
        assert_eq!(applied, Applied::Newer { holders: vec![3] });
        assert_eq!(current.version, 6);
    }

    #[test]
    fn expired_expectation_no_longer_accepts_pushes() {
        let s = Store::new();
        s.expect("k", 100);
        assert_eq!(s.apply_push(&put("k", 1, "a"), 100), Applied::NotHeld);
    }

    #[test]
    fn expired_entries_read_as_absent_and_are_swept() {
        let s = Store::new();
        s.apply(&Update { expires_at: Some(1_000), ..put("k", 1, "a") }, 0);
        assert!(matches!(s.get("k", 999), Lookup::Value { .. }));
        assert_eq!(s.get("k", 1_000), Lookup::Absent);
        assert_eq!(s.sweep_expired(1_000), 1);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn holders_are_recorded_only_for_values() {
        let s = Store::new();
        assert_eq!(s.get_and_hold("k", 7, 0), Lookup::Absent);
        s.apply(&put("k", 1, "a"), 0);
        assert!(matches!(s.get_and_hold("k", 7, 0), Lookup::Value { .. }));
        assert!(matches!(s.get_and_hold("k", 7, 0), Lookup::Value { .. }));
        s.add_holder("k", 9);
        assert_eq!(s.holders_of("k"), vec![7, 9]);
        s.remove_holder("k", 7, s.tick_now());
        assert_eq!(s.holders_of("k"), vec![9]);
        // Holders survive value updates: the next push must reach them.
        assert_eq!(s.apply(&put("k", 2, "b"), 0), Applied::Newer { holders: vec![9] });
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
        assert_eq!(s.commit("k", None, None, 0, None, &mut bump), Committed::Absent);
        assert_eq!(
            s.commit("k", Some(Bytes::from_static(b"a")), None, 0, None, &mut bump),
            Committed::Done { version: 1, created: true, holders: vec![] }
        );
        s.add_holder("k", 4);
        assert_eq!(
            s.commit("k", Some(Bytes::from_static(b"b")), None, 0, Some(5), &mut bump),
            Committed::Done { version: 2, created: false, holders: vec![4] }
        );
        // The writer became a holder: the next commit pushes to it.
        assert_eq!(
            s.commit("k", None, None, 0, None, &mut bump),
            Committed::Done { version: 3, created: false, holders: vec![4, 5] }
        );
        assert_eq!(s.commit("k", None, None, 0, None, &mut bump), Committed::Absent);
        // Writing an expired key creates it anew.
        s.commit("e", Some(Bytes::from_static(b"x")), Some(10), 0, None, &mut bump);
        assert!(matches!(
            s.commit("e", Some(Bytes::from_static(b"y")), None, 10, None, &mut bump),
            Committed::Done { created: true, .. }
        ));
    }

    #[test]
    fn refresh_only_matches_the_same_version() {
        let s = Store::new();
        s.apply(&put("k", 3, "a"), 0);
        assert!(s.refresh("k", 3, 500));
        assert_eq!(s.get("k", 600).received_at(), Some(500));
        assert!(!s.refresh("k", 2, 700));
        assert!(!s.refresh("nope", 1, 700));
    }

    #[test]
    fn clear_drops_everything_and_bumps_generation() {
        let s = Store::new();
        s.apply(&put("a", 1, "x"), 0);
        s.expect("b", 1_000);
        let g = s.generation();
        s.clear();
        assert!(s.is_empty());
        assert_eq!(s.generation(), g + 1);
        assert_eq!(s.apply_push(&put("b", 2, "y"), 0), Applied::NotHeld);
    }

    #[test]
    fn byte_accounting_follows_values() {
        let s = Store::new();
        s.apply(&put("k", 1, "aaaa"), 0);
        let one = s.bytes();
        assert_eq!(one, 1 + 4 + ENTRY_OVERHEAD);
        s.apply(&put("k", 2, "aaaaaaaa"), 0);
        assert_eq!(s.bytes(), one + 4);
        s.remove("k");
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn lru_victim_is_the_least_recently_used() {
        let s = Store::new();
        for i in 0..10 {
            s.apply(&put(&format!("k{i}"), 1, "v"), 0);
        }
        for i in 1..10 {
            s.get(&format!("k{i}"), 0);
        }
        assert_eq!(s.lru_victim(1000).as_deref(), Some("k0"));
    }

    #[test]
    fn dump_pages_in_key_order() {
        let s = Store::new();
        for k in ["b", "a", "c", "ab", "x/1"] {
            s.apply(&put(k, 1, "v"), 0);
        }
        let keys = |v: Vec<DumpEntry>| v.into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(keys(s.dump("", None, 2, 0)), vec!["a", "ab"]);
        assert_eq!(keys(s.dump("", Some("ab"), 2, 0)), vec!["b", "c"]);
        assert_eq!(keys(s.dump("a", None, 10, 0)), vec!["a", "ab"]);
    }
}
