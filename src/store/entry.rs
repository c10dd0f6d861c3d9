//! Entries and versions: what one key holds ([`Entry`], with its arrival
//! time and generation packed in a [`Stamp`]), the values the store's API
//! takes and gives ([`Update`], [`Lookup`], [`Applied`], [`Answer`] and the
//! rest), and the key check. An [`Entry`] is one allocation (its fields,
//! key and value) behind one thin pointer: the only `unsafe` code of the
//! store, kept to this file, with the layout private to it.
//!
//! Must not: lock, reach into a shard or the eviction queues, or do I/O.
//! Everything here is a value; what stores or changes it is in `shard.rs`
//! and the store's API in `mod.rs`.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::num::NonZeroU64;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;

use super::holders::Holders;
use super::queues::MAX_FREQ;
use super::{NodeId, Time, Version};
use crate::clock::Millis;

/// Bytes charged per entry beyond key and value, so that `bytes()` (the
/// `treecache_bytes` gauge) tracks what the process really holds: fit to
/// the measurement, 100k entries of 100 B with 10-byte keys growing a
/// root's RSS by 176-177 B each (release build), 110 of them key and
/// value: the entry's 40-byte head, the allocator's header and rounding
/// on its one allocation (a 150-byte allocation takes a 160-byte chunk),
/// and its 8-byte map slot and control byte at the map's load of ~0.76.
/// Not charged: an expiry's 8 bytes, and a shared value's `Bytes` (32)
/// and its allocation's header, under 2% of a value over 4 KiB.
pub(super) const ENTRY_OVERHEAD: usize = 64;

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

/// Values up to this many bytes live in the entry's own allocation and
/// are copied out on each read (a copy of a few KiB costs less than the
/// pointer, counter and allocator header a shared buffer would cost every
/// entry); larger ones are kept as a shared [`Bytes`], read without a copy.
pub(super) const INLINE_MAX: usize = 4096;

/// The fields of an entry the store reads and changes in place. Kept in
/// one word each, or less: the arrival time and the generation it was
/// confirmed in share one ([`Stamp`]), holders are one pointer while none
/// are recorded (every leaf's entries), and the eviction state (a byte of
/// access count, a flag and a slot number) shares another.
#[repr(C)]
pub(super) struct Fields {
    pub(super) version: Version,
    pub(super) stamp: Stamp,
    /// Children holding the key, each with the store tick when recorded.
    pub(super) holders: Holders,
    /// The number of the entry's queue slot: a slot with another number
    /// is left over from an earlier life of the key, and is skipped.
    pub(super) slot: u32,
    /// Reads since the entry was queued or last passed over (S3-FIFO's
    /// frequency, 0 to [`MAX_FREQ`]); atomic so reads need only the
    /// shard's read lock.
    pub(super) freq: AtomicU8,
    /// In the main queue (else the small one); bounded stores only.
    pub(super) in_main: bool,
}

/// How the rest of an entry's allocation is laid out. Set when the
/// allocation is made and private to this file: nothing outside can make
/// it disagree with the allocation.
#[repr(C)]
struct Shape {
    /// Bytes of the value stored inline (0 for a tombstone or a shared value).
    value_len: u32,
    key_len: u16,
    flags: u8,
}

/// Not a tombstone.
const VALUE: u8 = 1;
/// The value is a [`Bytes`] in the tail, not inline.
const SHARED: u8 = 2;
/// An expiry time (`u64`, wall ms) opens the tail.
const EXPIRES: u8 = 4;

#[repr(C)]
struct Head {
    fields: Fields,
    shape: Shape,
}

/// Where the tail starts: the expiry if any, the shared value if any, the
/// key, then an inline value. 8-aligned, so the expiry and the `Bytes`
/// are aligned; and past the head's own padding, so writing a whole
/// [`Fields`] or `Head` cannot touch the tail.
const HEAD: usize = std::mem::size_of::<Head>();

/// One key's entry: a single allocation (the head, then key and value) owned
/// through one thin pointer, so a map slot is 8 bytes. Before, a slot was a
/// 16-byte key pointer and a 72-byte struct, and key and value had
/// allocations of their own: 266 B of RSS per 100 B entry against Redis's
/// 186 (docs/benchmarks.md). Its [`Fields`] are reached through `Deref`;
/// key, value and expiry through methods, and a new value or expiry is
/// set by [`Entry::set_value`] (in place when the size and shape stay).
pub(super) struct Entry(NonNull<Head>);

// SAFETY: an `Entry` owns its allocation alone, like a `Box`; what it holds
// (integers, an atomic, `Holders`, `Bytes`) is `Send` and `Sync` (checked
// below: a field that stopped being so fails the build), and `&Entry`
// only reads, except the atomic access count.
unsafe impl Send for Entry {}
unsafe impl Sync for Entry {}
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Fields>();
    send_and_sync::<Bytes>();
    // The tail's layout: an expiry (`u64`) and a `Bytes` at its start are
    // aligned, and the head's padding ends where the tail begins.
    assert!(HEAD == 40);
    assert!(HEAD.is_multiple_of(std::mem::align_of::<u64>()) && HEAD.is_multiple_of(std::mem::align_of::<Bytes>()));
    assert!(std::mem::align_of::<Head>() >= std::mem::align_of::<Bytes>());
    assert!(EXPIRY_BYTES.is_multiple_of(std::mem::align_of::<Bytes>()));
};

impl Entry {
    /// A new entry for `key`: `value` `None` is a tombstone. The value is
    /// copied (a value read from a socket is a slice of the reader's
    /// buffer, and keeping the slice would pin the whole buffer: 60,000
    /// 1 KiB values once took 340 MB of RSS for 69 MB of data).
    pub(super) fn new(key: &str, value: Option<&[u8]>, expires_at: Option<NonZeroU64>, fields: Fields) -> Entry {
        // A client's key is at most 250 bytes (`check_key`); a peer's is
        // bounded by the wire format's 16-bit length.
        let key_len = u16::try_from(key.len()).expect("a key fits a 16-bit length");
        let (mut flags, value_len, shared) = match value {
            None => (0, 0, None),
            Some(v) if v.len() <= INLINE_MAX => (VALUE, v.len() as u32, None),
            Some(v) => (VALUE | SHARED, 0, Some(Bytes::copy_from_slice(v))),
        };
        if expires_at.is_some() {
            flags |= EXPIRES;
        }
        let shape = Shape { value_len, key_len, flags };
        let layout = shape.layout();
        // SAFETY: the layout is at least HEAD bytes, aligned for `Head`;
        // every byte of the tail the shape describes is written below,
        // each at the offset the accessors read it from.
        unsafe {
            let head = alloc(layout).cast::<Head>();
            let Some(head) = NonNull::new(head) else { handle_alloc_error(layout) };
            head.as_ptr().write(Head { fields, shape });
            let mut at = head.as_ptr().cast::<u8>().add(HEAD);
            if let Some(expires_at) = expires_at {
                at.cast::<u64>().write(expires_at.get());
                at = at.add(EXPIRY_BYTES);
            }
            if let Some(shared) = shared {
                at.cast::<Bytes>().write(shared);
                at = at.add(SHARED_BYTES);
            }
            std::ptr::copy_nonoverlapping(key.as_ptr(), at, key.len());
            if let Some(v) = value.filter(|_| flags & SHARED == 0) {
                std::ptr::copy_nonoverlapping(v.as_ptr(), at.add(key.len()), v.len());
            }
            Entry(head)
        }
    }

    fn shape(&self) -> &Shape {
        // SAFETY: the pointer is to a live head this entry owns.
        unsafe { &self.0.as_ref().shape }
    }

    /// The start of the tail, and where in it the key starts.
    fn tail(&self) -> (*mut u8, usize) {
        let flags = self.shape().flags;
        let skip =
            if flags & EXPIRES != 0 { EXPIRY_BYTES } else { 0 } + if flags & SHARED != 0 { SHARED_BYTES } else { 0 };
        // SAFETY: the allocation is at least HEAD bytes long.
        (unsafe { self.0.as_ptr().cast::<u8>().add(HEAD) }, skip)
    }

    /// Where the shared value is, if the value is shared: a raw pointer
    /// from the allocation's own, so that drop may take it by value.
    fn shared_ptr(&self) -> Option<*mut Bytes> {
        let flags = self.shape().flags;
        if flags & SHARED == 0 {
            return None;
        }
        let (tail, _) = self.tail();
        let at = if flags & EXPIRES != 0 { EXPIRY_BYTES } else { 0 };
        // SAFETY: within the allocation: a shared value was written there
        // when the entry was made.
        Some(unsafe { tail.add(at).cast::<Bytes>() })
    }

    fn shared(&self) -> Option<&Bytes> {
        // SAFETY: a live `Bytes` the entry owns, borrowed as long as the entry.
        self.shared_ptr().map(|p| unsafe { &*p })
    }

    pub(super) fn key(&self) -> &str {
        let (tail, skip) = self.tail();
        // SAFETY: the key's bytes, copied from a `&str`, follow the skipped part.
        unsafe {
            let bytes = std::slice::from_raw_parts(tail.add(skip), usize::from(self.shape().key_len));
            std::str::from_utf8_unchecked(bytes)
        }
    }

    fn inline_value(&self) -> &[u8] {
        let (tail, skip) = self.tail();
        let shape = self.shape();
        // SAFETY: the inline value's bytes follow the key (none unless VALUE without SHARED).
        unsafe { std::slice::from_raw_parts(tail.add(skip + usize::from(shape.key_len)), shape.value_len as usize) }
    }

    /// The value (`None`: a tombstone): an inline one copied out, a
    /// shared one shared.
    pub(super) fn value(&self) -> Option<Bytes> {
        if self.is_tombstone() {
            return None;
        }
        Some(match self.shared() {
            Some(shared) => shared.clone(),
            None => Bytes::copy_from_slice(self.inline_value()),
        })
    }

    /// The value's length (`None`: a tombstone).
    pub(super) fn value_len(&self) -> Option<usize> {
        if self.is_tombstone() {
            return None;
        }
        Some(self.shared().map_or(self.shape().value_len as usize, Bytes::len))
    }

    pub(super) fn is_tombstone(&self) -> bool {
        self.shape().flags & VALUE == 0
    }

    pub(super) fn expires_at(&self) -> Option<Millis> {
        if self.shape().flags & EXPIRES == 0 {
            return None;
        }
        // SAFETY: the expiry opens the tail when EXPIRES is set.
        Some(unsafe { self.tail().0.cast::<u64>().read() })
    }

    /// Gives the entry a new value (`None`: a tombstone) and expiry,
    /// keeping its key and fields. Written in place when the value stays
    /// inline and the tail keeps its size and shape (a counter, a
    /// same-size overwrite); otherwise the entry moves to a new allocation.
    pub(super) fn set_value(&mut self, value: Option<&[u8]>, expires_at: Option<NonZeroU64>) {
        let shape = self.shape();
        let same_shape = shape.flags & SHARED == 0
            && (shape.flags & EXPIRES != 0) == expires_at.is_some()
            && value.map_or(0, <[u8]>::len) == shape.value_len as usize
            && value.is_none_or(|v| v.len() <= INLINE_MAX);
        if same_shape {
            let key_len = usize::from(shape.key_len);
            let (tail, skip) = self.tail();
            // SAFETY: same shape, so the expiry slot (if any) and the
            // inline value's bytes are where they were, and this is the
            // only reference to the entry (`&mut self`).
            unsafe {
                if let Some(at) = expires_at {
                    tail.cast::<u64>().write(at.get());
                }
                if let Some(v) = value {
                    std::ptr::copy_nonoverlapping(v.as_ptr(), tail.add(skip + key_len), v.len());
                }
                let shape = &mut (*self.0.as_ptr()).shape;
                shape.flags = if value.is_some() { shape.flags | VALUE } else { shape.flags & !VALUE };
            }
            return;
        }
        let fields = Fields {
            version: self.version,
            stamp: self.stamp,
            holders: Holders::default(),
            slot: self.slot,
            freq: AtomicU8::new(self.freq.load(Ordering::Relaxed)),
            in_main: self.in_main,
        };
        // Made before anything moves: the holders go over once it exists.
        let mut moved = Entry::new(self.key(), value, expires_at, fields);
        std::mem::swap(&mut moved.holders, &mut self.holders);
        *self = moved;
    }
}

/// Bytes of the tail an expiry takes, and a shared value.
const EXPIRY_BYTES: usize = std::mem::size_of::<u64>();
const SHARED_BYTES: usize = std::mem::size_of::<Bytes>();

impl Shape {
    fn layout(&self) -> Layout {
        let mut size = HEAD + usize::from(self.key_len) + self.value_len as usize;
        if self.flags & EXPIRES != 0 {
            size += EXPIRY_BYTES;
        }
        if self.flags & SHARED != 0 {
            size += SHARED_BYTES;
        }
        Layout::from_size_align(size, std::mem::align_of::<Head>()).expect("an entry's size fits a layout")
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let layout = self.shape().layout();
        let shared = self.shared_ptr();
        // SAFETY: this entry owns the allocation; the shared value and the
        // head's fields are dropped once each, then the memory is freed
        // with the layout it was allocated with.
        unsafe {
            if let Some(shared) = shared {
                std::ptr::drop_in_place(shared);
            }
            std::ptr::drop_in_place(self.0.as_ptr());
            dealloc(self.0.as_ptr().cast::<u8>(), layout);
        }
    }
}

impl std::ops::Deref for Entry {
    type Target = Fields;
    fn deref(&self) -> &Fields {
        // SAFETY: the pointer is to a live head this entry owns.
        unsafe { &self.0.as_ref().fields }
    }
}

impl std::ops::DerefMut for Entry {
    fn deref_mut(&mut self) -> &mut Fields {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { &mut self.0.as_mut().fields }
    }
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
        self.expires_at().is_some_and(|at| at <= now)
    }
    /// What an entry of `key` with `value` is charged.
    pub(super) fn charge(key: &str, value: &Option<Bytes>) -> usize {
        charge_of(key.len(), value.as_ref().map_or(0, Bytes::len))
    }
    /// What this entry is charged (as [`Entry::charge`] of its key and value).
    pub(super) fn charged(&self) -> usize {
        charge_of(usize::from(self.shape().key_len), self.value_len().unwrap_or(0))
    }
    pub(super) fn lookup(&self, t: Time, generation: u64) -> Lookup {
        if self.is_expired(t.wall) {
            return Lookup::Absent;
        }
        let received_at = self.stamp.received_at();
        let current = self.stamp.is_current(generation);
        match self.value() {
            Some(value) => {
                Lookup::Value { version: self.version, value, expires_at: self.expires_at(), received_at, current }
            }
            None => Lookup::Tombstone { version: self.version, received_at, current },
        }
    }
    pub(super) fn as_update(&self) -> Update {
        Update {
            key: self.key().to_string(),
            version: self.version,
            value: self.value(),
            expires_at: self.expires_at(),
        }
    }
}

/// The charge of an entry with a key and a value of these lengths.
fn charge_of(key_len: usize, value_len: usize) -> usize {
    key_len + value_len + ENTRY_OVERHEAD
}

/// An expiry time as stored: `Some(0)` (already past) becomes 1 ms, still past.
pub(super) fn expiry(at: Option<Millis>) -> Option<NonZeroU64> {
    at.map(|t| NonZeroU64::new(t.max(1)).expect("at least 1"))
}
