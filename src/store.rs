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

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::clock::Millis;
pub use crate::clock::Time;

pub type Version = u64;
pub type NodeId = u64;

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
/// Bytes charged per slot of a bounded store's small or main queue beyond
/// the key's own bytes: the slot (a boxed key, 16, and its slot number,
/// padded to 24) and the key copy's allocation header.
const QUEUE_SLOT: usize = 40;
/// Bytes charged per slot of a bounded store's ghost: the slot (a key's
/// fingerprint and a slot number, 8) in a queue that doubles as it grows
/// (~0.7 full on average), and its entry in the ghost's map (8 and a
/// control byte, the map ~0.65 full).
const GHOST_SLOT: usize = 24;
/// The highest access count S3-FIFO keeps per entry (two bits).
const MAX_FREQ: u8 = 3;
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
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

/// How an answer to a request this node sent its parent (a fill, a write
/// batch) may be stored: see [`Store::apply_answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The store generation the request was sent in: a reset since means
    /// the answer may come from a parent that is no longer ours.
    pub sent_in: u64,
    /// The parent recorded this node as a holder of the key in its own
    /// current generation when it answered (or needs no record: ttl mode),
    /// so it will pass on every later change. Without that the answer is
    /// stored, but not as current: the node revalidates before serving it.
    pub confirmed: bool,
}

/// When a node read holder records it queues pushes for: the store
/// generation and tick then, read before the records. A push queue made
/// after it (a child added, or added back, since) gets nothing from that
/// read: the records may be from before the child was forgotten, and the
/// child is being reset by the clear sent when it was added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub generation: u64,
    pub tick: u64,
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
/// generation it was confirmed in packed into one word ([`Stamp`]). The
/// eviction state (a byte of access count, a flag and a slot number) fits
/// in the word the CLOCK tick took before.
struct Entry {
    version: Version,
    value: Option<Bytes>,
    expires_at: Option<NonZeroU64>,
    stamp: Stamp,
    /// Children holding the key, each with the store tick when recorded.
    holders: Holders,
    /// Reads since the entry was queued or last passed over (S3-FIFO's
    /// frequency, 0 to [`MAX_FREQ`]); atomic so reads need only the
    /// shard's read lock.
    freq: AtomicU8,
    /// In the main queue (else the small one); bounded stores only.
    in_main: bool,
    /// The number of the entry's queue slot: a slot with another number
    /// is left over from an earlier life of the key, and is skipped.
    slot: u32,
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
    /// Stored in `generation` but not confirmed: reads as not current
    /// (one generation behind).
    fn unconfirmed(received_at: Millis, generation: u64) -> Stamp {
        Stamp::new(received_at, generation.wrapping_sub(1))
    }
    fn is_current(self, generation: u64) -> bool {
        (self.0 >> STAMP_TIME_BITS) == (generation << STAMP_TIME_BITS) >> STAMP_TIME_BITS
    }
}

impl Entry {
    /// Counts a read for the eviction policy. A lost increment between
    /// two racing readers costs nothing that matters; a key already at
    /// [`MAX_FREQ`] is not written at all.
    fn touch(&self) {
        let freq = self.freq.load(Ordering::Relaxed);
        if freq < MAX_FREQ {
            self.freq.store(freq + 1, Ordering::Relaxed);
        }
    }
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

/// One shard's eviction order in a bounded store: S3-FIFO (Yang et al.,
/// "FIFO queues are all you need for cache eviction", SOSP '23).
///
/// New keys enter `small`. The evictor takes from `small` while it holds
/// at least a tenth of the shard's entries (or `main` is empty), else from
/// `main`. At small's head, a key read more than once since it was queued
/// moves to main; any other key goes, and its fingerprint enters the
/// `ghost`. A key stored again while it is in the ghost (evicted from small
/// lately, and wanted again) goes straight to main. At main's head, a key
/// read since its last pass gets another pass with one read fewer; one
/// not read goes. So keys read once (a scan) leave through the small
/// queue without pushing out what is read often, and a read costs one
/// relaxed byte store on the entry, no lock beyond the shard's read lock.
struct Queues {
    small: VecDeque<(Box<str>, u32)>,
    main: VecDeque<(Box<str>, u32)>,
    /// Fingerprints of keys evicted from `small`, oldest first, each with
    /// its ghost number; at most nine tenths as many as the shard's
    /// entries. A fingerprint is 32 bits of the key's hash: two keys
    /// sharing one (about one in 2^32 per pair) cost only a key admitted
    /// to main that would have gone to small.
    ghost: VecDeque<(u32, u32)>,
    /// The ghost's fingerprints, each with the number of its newest slot
    /// (an older slot of the same fingerprint leaving does not take it
    /// along).
    ghost_at: HashMap<u32, u32, BuildHasherDefault<FingerprintHasher>>,
    /// Entries (not slots) now in `small`.
    in_small: usize,
    /// The next slot or ghost number (wraps; see [`Entry::slot`]).
    next: u32,
    hasher: RandomState,
}

/// Hashes a ghost fingerprint by one multiplication: a fingerprint is
/// already bits of a keyed hash, so SipHash again would buy nothing (and
/// was a tenth of a bounded store's time on a miss-heavy trace). The
/// multiplication spreads the bits to the top, where the map's control
/// bytes look.
#[derive(Default, Clone, Copy)]
struct FingerprintHasher(u64);

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(GOLDEN);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(GOLDEN);
    }
}

/// Which of [`Queues`]' two queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

impl Queues {
    fn new(hasher: RandomState) -> Queues {
        Queues {
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_at: HashMap::default(),
            in_small: 0,
            next: 0,
            hasher,
        }
    }

    fn number(&mut self) -> u32 {
        let n = self.next;
        self.next = self.next.wrapping_add(1);
        n
    }

    fn queue(&mut self, which: Queue) -> &mut VecDeque<(Box<str>, u32)> {
        match which {
            Queue::Small => &mut self.small,
            Queue::Main => &mut self.main,
        }
    }

    fn slots(&self) -> usize {
        self.small.len() + self.main.len()
    }

    /// The ghost's fingerprint of `key`: the high half of its hash (the
    /// low bits chose the shard).
    fn fingerprint(&self, key: &str) -> u32 {
        (self.hasher.hash_one(key) >> 32) as u32
    }

    /// Drops the oldest ghost slots past `cap`; returns how many went.
    fn trim_ghost(&mut self, cap: usize) -> usize {
        let mut gone = 0;
        while self.ghost.len() > cap {
            let Some((print, n)) = self.ghost.pop_front() else { break };
            if self.ghost_at.get(&print) == Some(&n) {
                self.ghost_at.remove(&print);
            }
            gone += 1;
        }
        gone
    }
}

/// How many ghost slots a shard of `entries` entries keeps: as S3-FIFO's
/// ghost holds as many keys as its main queue, nine tenths of the entries.
fn ghost_cap(entries: usize) -> usize {
    entries - entries / 10
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<str>, Entry>,
    /// Keys with fills or writes in flight: pushes for them are accepted.
    expecting: HashMap<String, Expecting>,
    /// Bytes charged: entries (key, value, overhead), holder records and
    /// the eviction queues, ghost included. The store keeps the sum of all
    /// shards in one atomic beside it (see [`ShardMut`]).
    bytes: usize,
    tombstones: usize,
    holders: usize,
    /// A bounded store's eviction order (see [`Queues`], [`Store::evict`]).
    /// `None` in an unbounded store (the root), which never evicts.
    queues: Option<Queues>,
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

    /// Queues a key stored anew: in main if it is in the ghost, else
    /// in small. Returns the entry's slot number and whether it is in main
    /// (`(0, false)` in an unbounded store, which keeps no order).
    fn admit(&mut self, key: &str) -> (u32, bool) {
        let Some(q) = self.queues.as_mut() else { return (0, false) };
        let slot = q.number();
        let in_main = q.ghost_at.remove(&q.fingerprint(key)).is_some();
        if in_main {
            q.main.push_back((key.into(), slot));
        } else {
            q.small.push_back((key.into(), slot));
            q.in_small += 1;
        }
        self.bytes += QUEUE_SLOT + key.len();
        (slot, in_main)
    }

    /// Remembers the fingerprint of a key evicted from small.
    fn haunt(&mut self, key: &str) {
        let Some(q) = self.queues.as_mut() else { return };
        let print = q.fingerprint(key);
        let n = q.number();
        q.ghost.push_back((print, n));
        q.ghost_at.insert(print, n);
        self.bytes += GHOST_SLOT;
        self.trim_ghost();
    }

    /// Forgets the oldest ghost slots past [`ghost_cap`] of the entries.
    fn trim_ghost(&mut self) {
        let cap = ghost_cap(self.map.len());
        if let Some(q) = self.queues.as_mut() {
            self.bytes -= q.trim_ghost(cap) * GHOST_SLOT;
        }
    }

    /// Looks at the slot at the head of the queue whose turn it is and
    /// does what S3-FIFO says with it (see [`Queues`]). A key with a fill
    /// or write in flight goes back to the tail (its answer would store it
    /// again, and its holder records may be newer than the parent tick we
    /// report); a key children hold is handed back in `held`, and goes
    /// back to the tail: they must drop it first.
    fn evict_step(&mut self, mono: Millis, out: &mut Evicted) -> Step {
        let before = self.bytes;
        let Some(q) = self.queues.as_mut() else { return Step::Stop };
        let small_turn = !q.small.is_empty() && (q.in_small * 10 >= self.map.len() || q.main.is_empty());
        let which = if small_turn { Queue::Small } else { Queue::Main };
        let Some((key, slot)) = q.queue(which).pop_front() else { return Step::Stop };
        let slot_bytes = QUEUE_SLOT + key.len();
        self.bytes -= slot_bytes;
        let Some(entry) = self.map.get_mut(&key) else { return Step::Spared };
        if entry.slot != slot || entry.in_main != (which == Queue::Main) {
            return Step::Spared; // left over from an earlier life of the key
        }
        let freq = entry.freq.get_mut();
        let in_flight = self.expecting.get(&*key).is_some_and(|e| e.is_live(mono));
        let held = !entry.holders.is_empty();
        let mut back = |to: Queue, key: Box<str>| {
            q.queue(to).push_back((key, slot));
            self.bytes += slot_bytes;
        };
        match which {
            Queue::Small if *freq > 1 => {
                *freq = 0;
                entry.in_main = true;
                back(Queue::Main, key);
                q.in_small -= 1;
                return Step::Spared;
            }
            Queue::Main if *freq > 0 => {
                *freq -= 1;
                back(Queue::Main, key);
                return Step::Spared;
            }
            _ if in_flight => {
                back(which, key);
                return Step::Spared;
            }
            _ if held => {
                if !out.held.iter().any(|(k, _)| **k == *key) {
                    out.held.push((key.to_string(), entry.holder_ids()));
                }
                back(which, key);
                return Step::Victim;
            }
            _ => {}
        }
        self.evict(&key);
        out.freed += before.saturating_sub(self.bytes);
        out.removed.push(key.into());
        Step::Victim
    }

    /// Drops left-over slots (of keys removed by other paths: expiry,
    /// fills answering 404, resets, a parent's invalidation) once the
    /// queues hold more than twice the map, and recounts the bytes.
    fn compact_queues(&mut self) {
        let Some(q) = self.queues.as_mut() else { return };
        if q.slots() <= 2 * self.map.len() + 64 {
            return;
        }
        let map = &self.map;
        let live = |(key, slot): &(Box<str>, u32), main: bool| {
            map.get(key).is_some_and(|e| e.slot == *slot && e.in_main == main)
        };
        q.small.retain(|s| live(s, false));
        q.main.retain(|s| live(s, true));
        q.trim_ghost(ghost_cap(map.len()));
        let queued = q.small.iter().chain(q.main.iter()).map(|(k, _)| QUEUE_SLOT + k.len()).sum::<usize>();
        self.bytes =
            map.iter().map(|(k, e)| Entry::charge(k, &e.value) + e.holders.len() * HOLDER_BYTES).sum::<usize>()
                + queued
                + q.ghost.len() * GHOST_SLOT;
    }

    fn queued_slots(&self) -> usize {
        self.queues.as_ref().map_or(0, Queues::slots)
    }

    fn is_expecting(&self, key: &str, mono: Millis) -> bool {
        self.expecting.get(key).is_some_and(|e| e.is_live(mono))
    }

    /// Stores `update` if it is newer than what the shard has; keeps holders
    /// (and takes on the children waiting for the key, see [`Expecting`]).
    /// `confirmed`: whoever handed us the update (a parent's push, a fill
    /// answer or a write's commit that says so) has recorded this node as a
    /// holder of the key, so later changes will come: the entry is current
    /// now, whatever its version. Unconfirmed, a newer update is stored but
    /// the entry stays as current (and, in ttl mode, as fresh) as it was: a
    /// record the parent keeps is per key, not per version. An older one
    /// changes nothing.
    fn apply_if_newer(&mut self, update: &Update, t: Time, tick: u64, generation: u64, confirmed: bool) -> Applied {
        let applied = self.store_if_newer(update, t, generation, confirmed);
        // Only a current entry takes holders: a child recorded on an entry
        // nothing keeps up to date would be pushed values and take them as
        // current, then miss every later change.
        let current = self.map.get(update.key.as_str()).is_some_and(|e| e.stamp.is_current(generation));
        let waiting = match self.expecting.get_mut(update.key.as_str()) {
            Some(e) if current && !e.holders.is_empty() => std::mem::take(&mut e.holders),
            _ => return applied,
        };
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

    /// Stores `update` if newer. An update is not a read: it leaves the
    /// entry's access count alone, so pushes do not keep a key nobody
    /// reads here.
    fn store_if_newer(&mut self, update: &Update, t: Time, generation: u64, confirmed: bool) -> Applied {
        let charge = Entry::charge(&update.key, &update.value);
        let stamp = Stamp::new(t.mono, generation);
        match self.map.get_mut(update.key.as_str()) {
            Some(entry) if entry.version >= update.version => {
                if confirmed {
                    entry.stamp = stamp;
                }
                Applied::Stale
            }
            Some(entry) => {
                self.bytes = self.bytes + charge - Entry::charge(&update.key, &entry.value);
                self.tombstones =
                    self.tombstones + usize::from(update.value.is_none()) - usize::from(entry.is_tombstone());
                entry.version = update.version;
                entry.value = compact(&update.value);
                entry.expires_at = expiry(update.expires_at);
                // Unconfirmed: as current, and as fresh, as it was.
                if confirmed {
                    entry.stamp = stamp;
                }
                Applied::Newer { holders: entry.holder_ids() }
            }
            None => {
                self.bytes += charge;
                self.tombstones += usize::from(update.value.is_none());
                let (slot, in_main) = self.admit(&update.key);
                self.map.insert(
                    update.key.as_str().into(),
                    Entry {
                        version: update.version,
                        value: compact(&update.value),
                        expires_at: expiry(update.expires_at),
                        stamp: if confirmed { stamp } else { Stamp::unconfirmed(t.mono, generation) },
                        holders: Holders::default(),
                        freq: AtomicU8::new(0),
                        in_main,
                        slot,
                    },
                );
                Applied::Newer { holders: Vec::new() }
            }
        }
    }

    /// Removes `key`. Its queue slot stays until the evictor reaches it
    /// (or [`Shard::compact_queues`] drops it), skipped as left over.
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        self.bytes -= Entry::charge(key, &entry.value) + entry.holders.len() * HOLDER_BYTES;
        self.tombstones -= usize::from(entry.is_tombstone());
        self.holders -= entry.holders.len();
        if let Some(q) = self.queues.as_mut().filter(|_| !entry.in_main) {
            q.in_small -= 1;
        }
        Some(entry)
    }

    /// Removes `key` as an eviction: a key still in the small queue
    /// leaves its fingerprint in the ghost.
    fn evict(&mut self, key: &str) {
        if self.remove(key).is_some_and(|entry| !entry.in_main) {
            self.haunt(key);
        }
    }

    /// Whether `key` is held here and nothing needs it: no holders, no
    /// fill or write in flight.
    fn is_unneeded(&self, key: &str, mono: Millis) -> bool {
        self.map.get(key).is_some_and(|entry| entry.holders.is_empty()) && !self.is_expecting(key, mono)
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

/// What one look at a queue slot did.
enum Step {
    /// A victim was taken (removed, or handed back as held by children).
    Victim,
    /// The key was spared (read since queued, moved to main, or in
    /// flight) or was gone.
    Spared,
    /// The queues are empty.
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
    /// pays [`QUEUE_SLOT`] bytes and its key once more for it, and each
    /// ghost slot [`GHOST_SLOT`]).
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

    fn shard(&self, key: &str) -> &RwLock<Shard> {
        &self.shards[self.shard_index(key)]
    }

    fn shard_index(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % self.shards.len()
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
        let Some(now) = current.map(|e| e.as_update(&update.key)) else { return Some((applied, None)) };
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
        let mut shard = self.shard_mut(key);
        let generation = self.generation();
        let live = shard.map.get(key).is_some_and(|e| e.value.is_some() && !e.is_expired(t.wall));
        if value.is_none() && !live {
            return Committed::Absent;
        }
        let update = Update { key: key.to_string(), version: next_version(), value, expires_at };
        match shard.apply_if_newer(&update, t, tick, generation, true) {
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
        for i in 0..self.shards.len() {
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
        for i in 0..self.shards.len() {
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
        for i in 0..self.shards.len() {
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
    use std::collections::HashSet;

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
        assert_eq!(s.apply_push(&put("k", 4, "old"), t(0), s.generation()), Applied::Stale);
        assert_eq!(s.apply_push(&put("k", 5, "dup"), t(0), s.generation()), Applied::Stale);
        assert!(matches!(s.get("k", t(0)), Lookup::Value { version: 5, ref value, .. } if value == "new"));
    }

    #[test]
    fn tombstone_beats_a_late_push() {
        let s = Store::new();
        s.apply(&put("k", 1, "a"), t(0));
        assert!(matches!(s.apply_push(&del("k", 2), t(0), s.generation()), Applied::Newer { .. }));
        assert_eq!(s.apply_push(&put("k", 1, "a"), t(0), s.generation()), Applied::Stale);
        assert_eq!(s.get("k", t(0)), Lookup::Tombstone { version: 2, received_at: 0, current: true });
    }

    #[test]
    fn push_for_unheld_key_is_refused() {
        let s = Store::new();
        assert_eq!(s.apply_push(&put("k", 1, "a"), t(0), s.generation()), Applied::NotHeld);
        assert_eq!(s.get("k", t(0)), Lookup::Absent);
    }

    #[test]
    fn push_overtaking_a_fill_is_kept_and_the_fill_dropped() {
        let s = Store::new();
        s.expect("k");
        // The parent recorded us as holder, then a newer write was pushed
        // before the fill's answer (version 1) arrived.
        assert!(matches!(s.apply_push(&put("k", 2, "pushed"), t(10), s.generation()), Applied::Newer { .. }));
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
        assert!(matches!(s.apply_push(&put("k", 1, "a"), t(10), s.generation()), Applied::Newer { .. }));
        s.unexpect("k", 0);
        s.remove("k");
        assert_eq!(s.apply_push(&put("k", 2, "b"), t(10), s.generation()), Applied::NotHeld);
    }

    /// An answer to a request sent in the store's current generation.
    fn confirmed(s: &Store) -> Answer {
        Answer { sent_in: s.generation(), confirmed: true }
    }

    fn unconfirmed(s: &Store) -> Answer {
        Answer { sent_in: s.generation(), confirmed: false }
    }

    #[test]
    fn a_push_checked_before_a_reset_is_stored_but_not_current() {
        let s = Store::new();
        s.apply(&put("k", 1, "a"), t(0));
        let checked = s.generation();
        s.reset(); // the parent's clear, handled between the check and the store
        assert!(matches!(s.apply_push(&put("k", 2, "b"), t(1), checked), Applied::Newer { .. }));
        assert!(matches!(s.get("k", t(1)), Lookup::Value { version: 2, current: false, .. }));
        assert_eq!(s.apply_push(&put("k", 2, "b"), t(2), s.generation()), Applied::Stale);
        assert!(s.get("k", t(2)).is_current(), "a push received after the reset confirms it");
    }

    #[test]
    fn apply_and_hold_records_the_writer_and_reports_newer() {
        let s = Store::new();
        s.apply(&put("k", 5, "newer"), t(0));
        let (applied, current) =
            s.apply_and_hold(&put("k", 4, "mine"), 3, t(0), confirmed(&s)).expect("same generation");
        assert_eq!(applied, Applied::Stale);
        assert_eq!(current.map(|u| u.version), Some(5));
        assert_eq!(s.holders_of("k"), vec![3]);
        let (applied, current) =
            s.apply_and_hold(&put("k", 6, "mine"), 8, t(0), confirmed(&s)).expect("same generation");
        assert_eq!(applied, Applied::Newer { holders: vec![3, 8] }, "the writer hears of it too");
        assert_eq!(current.map(|u| u.version), Some(6));
    }

    #[test]
    fn an_answer_from_before_a_reset_is_not_stored() {
        let s = Store::new();
        s.apply(&put("k", 2, "old"), t(0));
        let sent = confirmed(&s);
        s.reset();
        assert_eq!(s.apply_answer(&put("k", 3, "late"), t(1), sent), None);
        assert_eq!(s.apply_and_hold(&put("k", 3, "late"), 4, t(1), sent), None);
        assert!(!s.refresh("k", 2, t(1), sent));
        assert_eq!(s.apply_absent("k", Some(3), t(1), sent.sent_in), None);
        assert!(matches!(s.get("k", t(1)), Lookup::Value { version: 2, current: false, .. }));
        assert!(s.holders_of("k").is_empty());
    }

    #[test]
    fn an_unconfirmed_answer_is_stored_but_never_makes_an_entry_current() {
        let s = Store::new();
        // Kept across a reset: an unconfirmed newer answer is stored, still
        // to be revalidated; an unconfirmed same version changes nothing.
        s.apply(&put("k", 2, "old"), t(0));
        s.reset();
        assert_eq!(
            s.apply_answer(&put("k", 3, "new"), t(5), unconfirmed(&s)),
            Some(Applied::Newer { holders: vec![] })
        );
        assert!(matches!(s.get("k", t(5)), Lookup::Value { version: 3, current: false, received_at: 0, .. }));
        assert_eq!(s.apply_answer(&put("k", 3, "new"), t(6), unconfirmed(&s)), Some(Applied::Stale));
        assert!(!s.get("k", t(6)).is_current());
        assert!(!s.refresh("k", 3, t(6), unconfirmed(&s)), "an unconfirmed 304 confirms nothing");
        // A new key: stored, not current.
        assert!(s.apply_answer(&put("j", 1, "v"), t(7), unconfirmed(&s)).is_some());
        assert!(matches!(s.get("j", t(7)), Lookup::Value { version: 1, current: false, .. }));
        // A writer's commit coming back unconfirmed: stored, the child that
        // sent it is not recorded (nothing would keep it up to date) and
        // waiting children stay waiting.
        s.expect_for("w", 9);
        let (applied, now) = s.apply_and_hold(&put("w", 4, "v"), 8, t(8), unconfirmed(&s)).expect("same generation");
        assert_eq!(applied, Applied::Newer { holders: vec![] });
        assert_eq!(now, None, "not recorded");
        assert!(s.holders_of("w").is_empty());
        assert!(!s.holds_current("w", 8));
        // Confirmed later (a push, or a confirmed answer): current, and the
        // waiting child becomes a holder.
        assert_eq!(s.apply_push(&put("w", 4, "v"), t(9), s.generation()), Applied::Stale);
        assert!(s.get("w", t(9)).is_current());
        assert_eq!(s.holders_of("w"), vec![9]);
        // A current entry stays current under a newer unconfirmed answer:
        // the parent's record of us is per key, not per version.
        assert_eq!(
            s.apply_answer(&put("w", 6, "v2"), t(10), unconfirmed(&s)),
            Some(Applied::Newer { holders: vec![9] })
        );
        assert!(s.get("w", t(10)).is_current());
        assert!(s.holds_current("w", 9));
        assert!(!s.holds_current("k", 9));
    }

    #[test]
    fn a_child_writing_through_becomes_a_holder_when_the_key_arrives() {
        let s = Store::new();
        s.expect_for("k", 4);
        s.expect_for("k", 4);
        assert!(s.holders_of("k").is_empty(), "not held yet");
        // The root's push of the commit reaches us before our answer: the
        // child must get it too.
        assert_eq!(s.apply_push(&put("k", 3, "v"), t(0), s.generation()), Applied::Newer { holders: vec![4] });
        assert_eq!(s.holders_of("k"), vec![4]);
        // Held and current: the child is recorded at once.
        s.expect_for("k", 5);
        assert_eq!(s.holders_of("k"), vec![4, 5]);
        // A reset forgets waiting children along with holders.
        s.remove("k");
        s.expect_for("j", 6);
        s.reset();
        assert!(
            matches!(s.apply_push(&put("j", 1, "v"), t(0), s.generation()), Applied::Newer { ref holders } if holders.is_empty())
        );
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
        assert_eq!(s.apply_push(&put("k", 1, "a"), t(100), s.generation()), Applied::NotHeld);
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
        assert!(s.refresh("k", 3, t(500), confirmed(&s)));
        assert_eq!(s.get("k", t(600)).received_at(), Some(500));
        assert!(!s.refresh("k", 2, t(700), confirmed(&s)));
        assert!(!s.refresh("nope", 1, t(700), confirmed(&s)));
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
        assert!(matches!(s.apply_push(&put("b", 2, "y"), t(1), s.generation()), Applied::Newer { .. }));
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
        assert!(s.refresh("k", 5, t(12), confirmed(&s)));
        assert!(matches!(s.get("k", t(12)), Lookup::Value { current: true, received_at: 12, .. }));
    }

    #[test]
    fn an_absent_answer_keeps_newer_entries_and_holders() {
        let s = Store::new();
        s.apply(&put("k", 5, "v"), t(0));
        s.get_and_hold("k", 7, t(0));
        assert_eq!(
            s.apply_absent("k", Some(4), t(1), s.generation()),
            Some(Applied::Stale),
            "the parent is behind: keep ours"
        );
        // Deleted later than what we hold: the tombstone replaces the value
        // and the child that holds it is to be told.
        assert_eq!(s.apply_absent("k", Some(6), t(1), s.generation()), Some(Applied::Newer { holders: vec![7] }));
        assert!(matches!(s.get("k", t(1)), Lookup::Tombstone { version: 6, .. }));
        assert_eq!(s.holders_of("k"), vec![7]);
        // Unconfirmed (after a reset) or no version to go by: removed.
        s.apply(&put("j", 2, "v"), t(0));
        s.reset();
        assert_eq!(s.apply_absent("j", Some(3), t(1), s.generation()), Some(Applied::NotHeld));
        assert_eq!(s.get("j", t(1)), Lookup::Absent);
        s.apply(&put("j", 4, "v"), t(0));
        assert_eq!(s.apply_absent("j", None, t(1), s.generation()), Some(Applied::NotHeld));
        assert_eq!(s.apply_absent("missing", Some(9), t(1), s.generation()), Some(Applied::NotHeld));
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

    /// Bytes of one entry of `bounded_with`: key, value, overhead, queue slot.
    fn one_entry(key: &str) -> usize {
        key.len() + 1 + ENTRY_OVERHEAD + QUEUE_SLOT + key.len()
    }

    /// A bounded store of one shard: one S3-FIFO order, so a test can name
    /// every victim.
    fn one_shard(keys: &[&str]) -> Store {
        let s = Store::build(true, 1);
        for k in keys {
            s.apply(&put(k, 1, "v"), t(0));
        }
        s
    }

    fn keys(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn a_wipe_forgets_every_entry_whatever_the_shard_count() {
        let s = one_shard(&["a", "b", "c"]);
        s.wipe();
        assert!(s.is_empty());
        assert_eq!(s.get("a", t(0)).version(), None);
        s.apply(&put("a", 2, "v"), t(0));
        assert_eq!(s.len(), 1, "the store works on after a wipe");
    }

    fn queue_of(s: &Store, key: &str) -> Option<Queue> {
        s.shard(key).read().map.get(key).map(|e| if e.in_main { Queue::Main } else { Queue::Small })
    }

    fn ghost_slots(s: &Store) -> usize {
        s.shards.iter().map(|sh| sh.read().queues.as_ref().map_or(0, |q| q.ghost.len())).sum()
    }

    /// Evicts the next victim of a one-shard store.
    fn evict_one(s: &Store) -> Vec<String> {
        s.evict(1, t(0), 1000, 10).removed
    }

    fn read(s: &Store, key: &str, times: usize) {
        for _ in 0..times {
            assert!(s.get(key, t(0)).version().is_some(), "{key} is held");
        }
    }

    /// Recounts every shard from scratch and checks the running counts
    /// against it: bytes (entries, holder records, queue slots, ghost
    /// slots), tombstones, holder records, entries in small, the store's
    /// total; and that every entry of a bounded store has its slot in the
    /// queue it says it is in (else it could never be evicted).
    fn audit(s: &Store) {
        let mut total = 0;
        for shard in s.shards.iter() {
            let sh = shard.read();
            let entries: usize =
                sh.map.iter().map(|(k, e)| Entry::charge(k, &e.value) + e.holders.len() * HOLDER_BYTES).sum();
            let mut queued = 0;
            if let Some(q) = &sh.queues {
                queued = q.small.iter().chain(q.main.iter()).map(|(k, _)| QUEUE_SLOT + k.len()).sum::<usize>()
                    + q.ghost.len() * GHOST_SLOT;
                assert_eq!(q.in_small, sh.map.values().filter(|e| !e.in_main).count(), "entries in small");
                let slots: HashSet<(&str, u32, bool)> = q
                    .small
                    .iter()
                    .map(|(k, n)| (&**k, *n, false))
                    .chain(q.main.iter().map(|(k, n)| (&**k, *n, true)))
                    .collect();
                for (k, e) in &sh.map {
                    assert!(slots.contains(&(&**k, e.slot, e.in_main)), "{k} has no slot in its queue");
                }
                assert!(q.ghost_at.len() <= q.ghost.len());
            }
            assert_eq!(sh.bytes, entries + queued, "the shard's bytes");
            assert_eq!(sh.tombstones, sh.map.values().filter(|e| e.is_tombstone()).count());
            assert_eq!(sh.holders, sh.map.values().map(|e| e.holders.len()).sum::<usize>());
            total += sh.bytes;
        }
        assert_eq!(s.bytes(), total, "the store's total is the sum of its shards");
    }

    #[test]
    fn new_keys_enter_small_and_leave_in_order_unless_read_twice() {
        let names = keys("k", 10);
        let s = one_shard(&names.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(names.iter().all(|k| queue_of(&s, k) == Some(Queue::Small)));
        read(&s, "k3", 2);
        read(&s, "k4", 1);
        // Oldest first; each key evicted from small leaves its fingerprint behind.
        let out = s.evict(1, t(0), 1000, 10);
        assert_eq!(out.removed, vec!["k0"]);
        // Freed: the entry and its slot, less the ghost slot it left.
        assert_eq!(out.freed, one_entry("k0") - GHOST_SLOT);
        assert_eq!(evict_one(&s), vec!["k1"]);
        assert_eq!(evict_one(&s), vec!["k2"]);
        assert_eq!(ghost_slots(&s), 3);
        // k3 was read twice: it moves to main instead. k4, read once, goes.
        assert_eq!(evict_one(&s), vec!["k4"]);
        assert_eq!(queue_of(&s, "k3"), Some(Queue::Main));
        assert_eq!(s.len(), 6);
        audit(&s);
    }

    #[test]
    fn a_key_back_from_the_ghost_goes_straight_to_main() {
        let s = one_shard(&["a", "b", "c"]);
        assert_eq!(evict_one(&s), vec!["a"]);
        assert_eq!(ghost_slots(&s), 1);
        s.apply(&put("a", 2, "again"), t(0));
        assert_eq!(queue_of(&s, "a"), Some(Queue::Main), "evicted from small lately and wanted again");
        s.apply(&put("new", 1, "v"), t(0));
        assert_eq!(queue_of(&s, "new"), Some(Queue::Small), "never seen");
        // Its ghost entry is used up: evicted from main (not read since),
        // it leaves no fingerprint, and comes back to small.
        read(&s, "b", 2);
        read(&s, "c", 2);
        read(&s, "new", 2);
        let mut gone = Vec::new();
        while !gone.contains(&"a".to_string()) {
            gone.extend(evict_one(&s));
        }
        s.apply(&put("a", 3, "once more"), t(0));
        assert_eq!(queue_of(&s, "a"), Some(Queue::Small));
        audit(&s);
    }

    #[test]
    fn main_gives_keys_read_since_their_last_pass_another_round() {
        let hot = keys("m", 10);
        let s = one_shard(&hot.iter().map(String::as_str).collect::<Vec<_>>());
        for k in &hot {
            read(&s, k, 2);
        }
        // All ten move to main; then main's head goes.
        assert_eq!(evict_one(&s), vec!["m0"]);
        assert!(hot[1..].iter().all(|k| queue_of(&s, k) == Some(Queue::Main)));
        // m1 was read since: one more round (and one read fewer); m2 goes.
        read(&s, "m1", 1);
        assert_eq!(evict_one(&s), vec!["m2"]);
        // A key with a fill or write in flight is passed over in main too.
        s.expect("m3");
        assert_eq!(evict_one(&s), vec!["m4"]);
        s.unexpect("m3", 0);
        // m1's extra round is used up: it goes in its turn.
        let order: Vec<String> = (0..6).flat_map(|_| evict_one(&s)).collect();
        assert_eq!(order, vec!["m5", "m6", "m7", "m8", "m9", "m1"]);
        assert_eq!(evict_one(&s), vec!["m3"]);
        assert!(s.is_empty());
        audit(&s);
    }

    #[test]
    fn a_scan_passes_through_small_without_pushing_out_keys_read_often() {
        // Room for 24 entries; 20 hot keys read in turn between the steps
        // of a scan of a thousand keys read once each. A hot key comes
        // back every 40 reads, past 39 other keys: LRU would miss it every
        // time. Here, after a first pass, it never misses: the scan's keys
        // leave through small, the hot keys (evicted from small once, then
        // back from the ghost) stay in main.
        let hot = keys("hot", 20);
        let s = Store::build(true, 1);
        let access = |k: &str| {
            let hit = s.get(k, t(0)).version().is_some();
            if !hit {
                s.apply(&put(k, 1, "v"), t(0));
            }
            while s.len() > 24 {
                evict_one(&s);
            }
            hit
        };
        let mut hot_misses = 0;
        for (i, k) in keys("scan", 1000).iter().enumerate() {
            access(k);
            if !access(&hot[i % hot.len()]) && i >= 2 * hot.len() {
                hot_misses += 1;
            }
        }
        assert_eq!(hot_misses, 0);
        assert!(hot.iter().all(|k| queue_of(&s, k) == Some(Queue::Main)));
        audit(&s);
    }

    #[test]
    fn fingerprint_hashes_spread_to_the_top_bits() {
        let hash = |n: u32| BuildHasherDefault::<FingerprintHasher>::default().hash_one(n);
        let tops: HashSet<u64> = (0..1000).map(|n| hash(n) >> 57).collect();
        assert_eq!(tops.len(), 128, "every control-byte value is used");
        let all: HashSet<u64> = (0..1000).map(hash).collect();
        assert_eq!(all.len(), 1000);
    }

    #[test]
    fn the_ghost_is_charged_and_bounded_by_the_entries() {
        let names = keys("k", 100);
        let s = one_shard(&names.iter().map(String::as_str).collect::<Vec<_>>());
        for _ in 0..50 {
            evict_one(&s);
        }
        // Fifty fingerprints for fifty entries: under nine tenths of them.
        assert_eq!(ghost_slots(&s), 45);
        audit(&s);
        let entries: usize = names[50..].iter().map(|k| one_entry(k)).sum();
        assert_eq!(s.bytes(), entries + 45 * GHOST_SLOT);
        // Emptied by eviction, the store gives every byte back, ghost too.
        s.evict(usize::MAX, t(0), 10_000, 10);
        assert!(s.is_empty());
        assert_eq!(ghost_slots(&s), 0);
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn accounting_covers_entries_holders_and_the_queues_and_returns_to_zero() {
        let s = Store::bounded();
        s.apply(&put("k", 1, "aaaa"), t(0));
        assert_eq!(s.bytes(), 1 + 4 + ENTRY_OVERHEAD + QUEUE_SLOT + 1);
        s.get_and_hold("k", 7, t(0));
        s.get_and_hold("k", 7, t(0));
        assert_eq!(s.holder_records(), 1);
        assert_eq!(s.bytes(), 1 + 4 + ENTRY_OVERHEAD + QUEUE_SLOT + 1 + HOLDER_BYTES);
        s.apply(&del("k", 2), t(0));
        assert_eq!(s.tombstones(), 1);
        assert_eq!(s.bytes(), 1 + ENTRY_OVERHEAD + QUEUE_SLOT + 1 + HOLDER_BYTES);
        s.forget_child(7);
        assert_eq!(s.holder_records(), 0);
        s.apply(&put("j", 1, "x"), t(0));
        s.get_and_hold("j", 3, t(0));
        s.reset();
        assert_eq!(s.holder_records(), 0);
        assert_eq!(s.tombstones(), 0);
        audit(&s);
        let all = s.evict(usize::MAX, t(0), 1000, 10);
        assert_eq!(all.removed, vec!["j".to_string()]);
        assert_eq!(s.bytes(), 0, "every byte charged was given back");
        audit(&bounded_with(500));
    }

    #[test]
    fn accounting_stays_true_under_random_operations() {
        use rand::{Rng, SeedableRng};
        for shards in [1, 4, SHARDS] {
            let s = Store::build(true, shards);
            let mut rng = rand::rngs::StdRng::seed_from_u64(shards as u64);
            let mut expected: Vec<String> = Vec::new();
            for (step, version) in (1..=20_000u64).enumerate() {
                let k = format!("k{}", rng.gen_range(0..400));
                let now = t(step as u64);
                match rng.gen_range(0..16) {
                    0..=3 => {
                        let value = "v".repeat(rng.gen_range(0..64));
                        let expires_at = rng.gen_bool(0.05).then(|| step as u64 + 50);
                        s.apply(&Update { expires_at, ..put(&k, version, &value) }, now);
                    }
                    4 => {
                        s.apply_push(&del(&k, version), now, s.generation());
                    }
                    5..=7 => {
                        s.get(&k, now);
                    }
                    8 => {
                        s.get_and_hold(&k, rng.gen_range(1..4), now);
                    }
                    9 if expected.len() < 8 => {
                        s.expect(&k);
                        expected.push(k);
                    }
                    9 | 10 if !expected.is_empty() => {
                        let k = expected.swap_remove(rng.gen_range(0..expected.len()));
                        s.unexpect(&k, 0);
                    }
                    11 => {
                        s.remove(&k);
                    }
                    12 | 13 => {
                        let out = s.evict(rng.gen_range(0..4_000), now, 500, 4);
                        let asked = s.tick_now();
                        for (key, holders) in out.held {
                            let cleared: Vec<NodeId> = holders.into_iter().filter(|_| rng.gen_bool(0.7)).collect();
                            s.finish_invalidation(&key, &cleared, asked, now);
                        }
                    }
                    14 => {
                        s.remove_holder(&k, rng.gen_range(1..4), s.tick_now());
                    }
                    _ => match rng.gen_range(0..4) {
                        0 => s.reset(),
                        1 => s.forget_child(rng.gen_range(1..4)),
                        2 => {
                            s.collect_tombstones(now, 100);
                        }
                        _ => {
                            s.sweep_expired(now);
                        }
                    },
                }
                if step % 50 == 0 {
                    audit(&s);
                }
            }
            audit(&s);
            // Nothing in flight, no children: eviction empties the store
            // and gives back every byte.
            for k in expected.drain(..) {
                s.unexpect(&k, 0);
            }
            for child in 1..4 {
                s.forget_child(child);
            }
            s.evict(usize::MAX, t(1 << 30), usize::MAX, usize::MAX);
            assert!(s.is_empty(), "{shards} shards: {} entries left", s.len());
            assert_eq!(s.bytes(), 0, "{shards} shards");
        }
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
        assert_eq!(s.finish_invalidation("k0", &[5], asked, t(0)), Some(one_entry("k0") - QUEUE_SLOT - 2));
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
        assert_eq!(s.apply_push(&put("old", 0, "late"), t(2_000), s.generation()), Applied::NotHeld);
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
    fn left_over_slots_are_compacted_when_other_paths_removed_keys() {
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
