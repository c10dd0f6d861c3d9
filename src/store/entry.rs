//! Entries and versions: what one key holds ([`Entry`], with its arrival
//! time and generation packed in a [`Stamp`]), the values the store's API
//! takes and gives ([`Update`], [`Lookup`], [`Applied`], [`Answer`] and the
//! rest), the key check, and the compaction of a stored value into an
//! allocation of its own.
//!
//! Must not: lock, reach into a shard or the eviction queues, or do I/O.
//! Everything here is a value; what stores or changes it is in `shard.rs`
//! and the store's API in `mod.rs`.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;

use super::holders::Holders;
use super::queues::MAX_FREQ;
use super::{NodeId, Time, Version};
use crate::clock::Millis;

/// Bytes charged per entry beyond key and value, so that `bytes()` (the
/// `treecache_bytes` gauge) tracks what the process really holds: an
/// 88-byte map slot (16 key pointer + 72 `Entry`) at the map's typical
/// load of ~0.7, plus the allocator's headers on the key and value
/// allocations. Measured: 100k entries of 100 B with 11-byte keys grew the
/// RSS by 264 B each, 111 of them key and value.
pub(super) const ENTRY_OVERHEAD: usize = 144;

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
    /// The write's [`Condition`] did not hold: nothing committed.
    /// `current` is the key's live version, if it has one.
    ConditionFailed {
        current: Option<Version>,
    },
    /// The write would grow the store past its bound (`max`, as
    /// [`Store::bytes`](super::Store::bytes) counts): nothing committed.
    /// `bytes`: what the store held.
    Full {
        bytes: usize,
        max: usize,
    },
}

/// When a write may be committed: decided by the root against the key's
/// live value (one that is neither deleted nor expired), in the same
/// critical section as the commit, so in version order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Unconditional.
    #[default]
    Always,
    /// Only if the key has no live value (`If-None-Match: *`, SET NX).
    IfAbsent,
    /// Only if the key has a live value (`If-Match: *`, SET XX).
    IfPresent,
    /// Only if the key's live value has this version (`If-Match: <version>`).
    IfVersion(Version),
}

impl Condition {
    /// Whether a write may go ahead when the key's live version is `live`.
    pub fn holds(self, live: Option<Version>) -> bool {
        match self {
            Condition::Always => true,
            Condition::IfAbsent => live.is_none(),
            Condition::IfPresent => live.is_some(),
            Condition::IfVersion(v) => live == Some(v),
        }
    }

    pub fn is_conditional(self) -> bool {
        self != Condition::Always
    }
}

/// How an answer to a request this node sent its parent (a fill, a write
/// batch) may be stored: see [`Store::apply_answer`](super::Store::apply_answer).
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

/// One slot of the map. Kept small (72 bytes; a 100k-entry node pays for
/// it in every slot): expiry as a non-zero niche, holders boxed because
/// most entries (every leaf's) have none, and the arrival time and the
/// generation it was confirmed in packed into one word ([`Stamp`]). The
/// eviction state (a byte of access count, a flag and a slot number) fits
/// in the word the CLOCK tick took before.
pub(super) struct Entry {
    pub(super) version: Version,
    pub(super) value: Option<Bytes>,
    pub(super) expires_at: Option<NonZeroU64>,
    pub(super) stamp: Stamp,
    /// Children holding the key, each with the store tick when recorded.
    pub(super) holders: Holders,
    /// Reads since the entry was queued or last passed over (S3-FIFO's
    /// frequency, 0 to [`MAX_FREQ`]); atomic so reads need only the
    /// shard's read lock.
    pub(super) freq: AtomicU8,
    /// In the main queue (else the small one); bounded stores only.
    pub(super) in_main: bool,
    /// The number of the entry's queue slot: a slot with another number
    /// is left over from an earlier life of the key, and is skipped.
    pub(super) slot: u32,
}

/// When an entry arrived (monotonic ms, low 44 bits: 557 years) and the
/// store generation it was confirmed in (low 20 bits of it, high bits of
/// the word). A reset bumps the generation, so every entry stored before
/// reads as not current without touching it; a wrap would need 2^20 resets
/// while one entry sits unconfirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp(u64);

const STAMP_TIME_BITS: u32 = 44;
const STAMP_TIME_MASK: u64 = (1 << STAMP_TIME_BITS) - 1;

impl Stamp {
    pub(super) fn new(received_at: Millis, generation: u64) -> Stamp {
        Stamp((generation << STAMP_TIME_BITS) | (received_at & STAMP_TIME_MASK))
    }
    pub(super) fn received_at(self) -> Millis {
        self.0 & STAMP_TIME_MASK
    }
    /// Stored in `generation` but not confirmed: reads as not current
    /// (one generation behind).
    pub(super) fn unconfirmed(received_at: Millis, generation: u64) -> Stamp {
        Stamp::new(received_at, generation.wrapping_sub(1))
    }
    pub(super) fn is_current(self, generation: u64) -> bool {
        (self.0 >> STAMP_TIME_BITS) == (generation << STAMP_TIME_BITS) >> STAMP_TIME_BITS
    }
}

impl Entry {
    /// Counts a read for the eviction policy. A lost increment between
    /// two racing readers costs nothing that matters; a key already at
    /// [`MAX_FREQ`] is not written at all.
    pub(super) fn touch(&self) {
        let freq = self.freq.load(Ordering::Relaxed);
        if freq < MAX_FREQ {
            self.freq.store(freq + 1, Ordering::Relaxed);
        }
    }
    pub(super) fn is_expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|at| at.get() <= now)
    }
    pub(super) fn expires_at(&self) -> Option<Millis> {
        self.expires_at.map(NonZeroU64::get)
    }
    pub(super) fn charge(key: &str, value: &Option<Bytes>) -> usize {
        key.len() + value.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD
    }
    pub(super) fn lookup(&self, t: Time, generation: u64) -> Lookup {
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
    pub(super) fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
    pub(super) fn as_update(&self, key: &str) -> Update {
        Update { key: key.to_string(), version: self.version, value: self.value.clone(), expires_at: self.expires_at() }
    }
}

/// An expiry time as stored: `Some(0)` (already past) becomes 1 ms, still past.
pub(super) fn expiry(at: Option<Millis>) -> Option<NonZeroU64> {
    at.map(|t| NonZeroU64::new(t.max(1)).expect("at least 1"))
}

/// The value in an allocation of its own, exactly its size. A value read
/// from a socket is a slice of the reader's buffer (hyper's 8 KiB and up,
/// a push batch's whole body); storing that slice would pin the whole
/// buffer for as long as the entry lives. Measured before this copy: 60,000
/// 1 KiB values filled at a node took 340 MB of RSS for 69 MB of data. One
/// memcpy per stored write is the price; reads, fills served and pushes
/// share the stored copy without copying.
pub(super) fn compact(value: &Option<Bytes>) -> Option<Bytes> {
    value.as_deref().map(Bytes::copy_from_slice)
}
