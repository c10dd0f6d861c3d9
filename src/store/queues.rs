//! A bounded store's eviction order: per shard, S3-FIFO's small, main and
//! ghost queues ([`Queues`]), the admission of a key stored anew, one step
//! of an eviction pass, the compaction of left-over slots, and the ghost's
//! trimming, each charged to the shard's bytes.
//!
//! Must not evict a key with a fill or write in flight, nor remove one
//! that children hold (the step requeues the first and hands the second
//! back to the caller). An unbounded store (the root's) has no queues and
//! never evicts.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use super::holders::HOLDER_BYTES;
use super::shard::Shard;
use super::NodeId;
use crate::clock::Millis;

/// Bytes charged per slot of a bounded store's small or main queue beyond
/// the key's own bytes: the slot (a boxed key, 16, and its slot number,
/// padded to 24) and the key copy's allocation header.
pub(super) const QUEUE_SLOT: usize = 40;

/// Bytes charged per slot of a bounded store's ghost: the slot (a key's
/// fingerprint and a slot number, 8) in a queue that doubles as it grows
/// (~0.7 full on average), and its entry in the ghost's map (8 and a
/// control byte, the map ~0.65 full).
pub(super) const GHOST_SLOT: usize = 24;

/// The highest access count S3-FIFO keeps per entry (two bits).
pub(super) const MAX_FREQ: u8 = 3;

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
pub(super) struct Queues {
    pub(super) small: VecDeque<(Box<str>, u32)>,
    pub(super) main: VecDeque<(Box<str>, u32)>,
    /// Fingerprints of keys evicted from `small`, oldest first, each with
    /// its ghost number; at most nine tenths as many as the shard's
    /// entries. A fingerprint is 32 bits of the key's hash: two keys
    /// sharing one (about one in 2^32 per pair) cost only a key admitted
    /// to main that would have gone to small.
    pub(super) ghost: VecDeque<(u32, u32)>,
    /// The ghost's fingerprints, each with the number of its newest slot
    /// (an older slot of the same fingerprint leaving does not take it
    /// along).
    pub(super) ghost_at: HashMap<u32, u32, BuildHasherDefault<FingerprintHasher>>,
    /// Entries (not slots) now in `small`.
    pub(super) in_small: usize,
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
pub(super) struct FingerprintHasher(u64);

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
pub(super) enum Queue {
    Small,
    Main,
}

impl Queues {
    pub(super) fn new(hasher: RandomState) -> Queues {
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

impl Shard {
    /// Queues a key stored anew: in main if it is in the ghost, else
    /// in small. Returns the entry's slot number and whether it is in main
    /// (`(0, false)` in an unbounded store, which keeps no order).
    pub(super) fn admit(&mut self, key: &str) -> (u32, bool) {
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
    pub(super) fn trim_ghost(&mut self) {
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
    pub(super) fn evict_step(&mut self, mono: Millis, out: &mut Evicted) -> Step {
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
        let in_flight = self.expecting.get(&*key).is_some_and(|e| e.is_live(mono));
        let held = !entry.holders.is_empty();
        let freq = entry.freq.get_mut();
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
    pub(super) fn compact_queues(&mut self) {
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
        self.bytes = map.iter().map(|e| e.charged() + e.holders.len() * HOLDER_BYTES).sum::<usize>()
            + queued
            + q.ghost.len() * GHOST_SLOT;
    }

    pub(super) fn queued_slots(&self) -> usize {
        self.queues.as_ref().map_or(0, Queues::slots)
    }

    /// Removes `key` as an eviction: a key still in the small queue
    /// leaves its fingerprint in the ghost.
    pub(super) fn evict(&mut self, key: &str) {
        if self.remove(key).is_some_and(|entry| !entry.in_main) {
            self.haunt(key);
        }
    }
}

/// What one eviction pass ([`Store::evict`](super::Store::evict)) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Removed: nothing below this node held them.
    pub removed: Vec<String>,
    pub freed: usize,
    /// Chosen, but children hold them: they must drop them first
    /// (back-invalidation), then [`Store::finish_invalidation`](super::Store::finish_invalidation).
    pub held: Vec<(String, Vec<NodeId>)>,
}

/// What one look at a queue slot did.
pub(super) enum Step {
    /// A victim was taken (removed, or handed back as held by children).
    Victim,
    /// The key was spared (read since queued, moved to main, or in
    /// flight) or was gone.
    Spared,
    /// The queues are empty.
    Stop,
}
