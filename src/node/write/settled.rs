//! The outcomes of the write ids a hop settled recently, so a resend of one
//! (its sender did not hear our answer) is answered from memory instead of
//! being queued again; and [`Kept`], an outcome in the few bytes that such
//! an answer needs, which the root's [`Outcomes`](super::Outcomes) keeps too.
//!
//! Bounded by age and by count. A sender retries a batch its parent did
//! not answer after at most [`UPLINK_TIMEOUT`](super::uplink::UPLINK_TIMEOUT)
//! plus its longest backoff, [`RETRY_CAP`](super::uplink::RETRY_CAP): so
//! while the link works, a resend of an id this hop settled reaches it
//! within one such interval of the settling (the try before it arrived
//! before). [`SETTLED_FOR`] covers three of them in a row; the count bound
//! covers one interval of writes at 3,584 a second. A resend that comes
//! later (a link down for longer, a child re-attached after its parent was
//! lost) is queued again and the root, which decides each id once, answers
//! it with its first outcome: this table saves that trip, it does not make
//! a write committed once.
//!
//! Pure: no I/O, no clock of its own (`now_ms` comes in, `mono_ms` in the
//! node). Must not forget an id younger than [`SETTLED_FOR`] while it holds
//! fewer than [`SETTLED_MAX`].

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::mem::size_of;
use std::time::Duration;

use hashbrown::HashTable;

use crate::clock::Millis;
use crate::slots::{Slot, UNKNOWN_SLOT};
use crate::store::{Version, WriteId};
use crate::wire::WriteResult;

/// How long a hop remembers a settled id.
pub(super) const SETTLED_FOR: Duration = Duration::from_secs(60);
/// Most settled ids a hop remembers, however young: half of what a hash
/// map of 131,072 buckets holds, the most it rehashes in place once ids
/// come and go (more, and the map doubles: 65,536 ids did).
pub(super) const SETTLED_MAX: usize = 57_344;
/// Below this many ids a table is not shrunk.
const SHRINK_FLOOR: usize = 1_024;

const _: () = {
    let interval = super::uplink::UPLINK_TIMEOUT.as_millis() + super::uplink::RETRY_CAP.as_millis();
    assert!(SETTLED_FOR.as_millis() >= 3 * interval, "three resend intervals of a sender");
    assert!(SETTLED_MAX as u128 * 1000 >= 3_584 * interval, "one resend interval at 3,584 writes a second");
};

/// A write's outcome as it is kept after it settled, with its key's slot
/// (the root orders each writer's writes per slot; a hop keeps
/// [`UNKNOWN_SLOT`]): 16 bytes for a commit or a delete of an absent key
/// (nearly every outcome), the rarer ones boxed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kept {
    Committed { version: Version, created: bool, slot: Slot },
    Absent { slot: Slot },
    Other(Box<WriteResult>, Slot),
}

const _: () = assert!(size_of::<Kept>() == 16, "a kept outcome stays 16 bytes");

impl Kept {
    pub(super) fn new(result: &WriteResult, slot: Slot) -> Kept {
        match *result {
            WriteResult::Committed { version, created } => Kept::Committed { version, created, slot },
            WriteResult::Absent => Kept::Absent { slot },
            ref other => Kept::Other(Box::new(other.clone()), slot),
        }
    }

    pub(super) fn slot(&self) -> Slot {
        match *self {
            Kept::Committed { slot, .. } | Kept::Absent { slot } | Kept::Other(_, slot) => slot,
        }
    }

    pub(super) fn result(&self) -> WriteResult {
        match self {
            &Kept::Committed { version, created, .. } => WriteResult::Committed { version, created },
            Kept::Absent { .. } => WriteResult::Absent,
            Kept::Other(result, _) => (**result).clone(),
        }
    }

    /// Bytes it holds on the heap (a boxed outcome and its message).
    pub(super) fn heap_bytes(&self) -> usize {
        match self {
            Kept::Other(result, _) => {
                size_of::<WriteResult>()
                    + match &**result {
                        WriteResult::Failed { error } => error.capacity(),
                        _ => 0,
                    }
            }
            _ => 0,
        }
    }
}

/// Bytes a hash map of `capacity` entries of `K` → `V` takes: its buckets
/// (a power of two, at most 7/8 full) with a control byte each.
pub(super) fn map_bytes<K, V>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8 / 7).next_power_of_two();
    buckets * (size_of::<K>() + size_of::<V>() + 1)
}

/// One settled id: when (last) and how.
struct Record {
    id: WriteId,
    at: Millis,
    kept: Kept,
}

/// The ids a hop settled, with when and how, oldest first out. The
/// records sit in one queue in the order first settled, and a hash table
/// of their numbers finds one by its id: 48 bytes a record and 5 a bucket,
/// where a map from id to outcome beside a queue of the ids took 49 a
/// bucket and 24 more a record (8 MB for ~44,000 ids at an inner node of
/// the churn bench, docs/benchmarks.md).
#[derive(Default)]
pub(super) struct Settled {
    /// Every remembered id, once, oldest at the front.
    records: VecDeque<Record>,
    /// Records ever taken from the front, modulo 2^32: record number `n`
    /// (counted from the first ever settled, modulo 2^32) is
    /// `records[n - popped]`, as far fewer than 2^32 are ever held.
    popped: u32,
    /// The number of each record, by its id's hash.
    index: HashTable<u32>,
    hasher: RandomState,
    /// Heap bytes of the boxed outcomes.
    boxed: usize,
}

impl Settled {
    /// An empty table whose record numbers start at `popped` (a test of
    /// their wrap past 2^32).
    #[cfg(test)]
    pub(super) fn numbered_from(popped: u32) -> Settled {
        Settled { popped, ..Settled::default() }
    }

    /// Remembers that `id` settled with `result` at `now_ms`, and forgets
    /// what is past the bounds. An id settled again is kept from then (in
    /// its first place in the order: the ids behind it wait for it, at
    /// most one [`SETTLED_FOR`] longer, within the count bound).
    pub(super) fn remember(&mut self, id: WriteId, result: &WriteResult, now_ms: Millis) {
        self.expire(now_ms);
        let kept = Kept::new(result, UNKNOWN_SLOT);
        self.boxed += kept.heap_bytes();
        if let Some(held) = self.find(&id).map(|at| &mut self.records[at]) {
            self.boxed -= held.kept.heap_bytes();
            (held.at, held.kept) = (now_ms, kept);
            return;
        }
        if self.records.len() >= SETTLED_MAX {
            // The oldest goes first: the table never grows past its bound.
            self.forget_oldest();
        }
        let number = self.popped.wrapping_add(self.records.len() as u32);
        self.records.push_back(Record { id, at: now_ms, kept });
        let Settled { records, popped, index, hasher, .. } = self;
        index.insert_unique(hasher.hash_one(id), number, |&n| hasher.hash_one(records[at(n, *popped)].id));
    }

    /// Where `id`'s record is in the queue, if it is remembered.
    fn find(&self, id: &WriteId) -> Option<usize> {
        let found = self.index.find(self.hasher.hash_one(id), |&n| self.records[at(n, self.popped)].id == *id);
        found.map(|&n| at(n, self.popped))
    }

    /// The outcome `id` settled with, if it is remembered.
    pub(super) fn get(&self, id: &WriteId) -> Option<WriteResult> {
        self.find(id).map(|at| self.records[at].kept.result())
    }

    /// Forgets ids settled more than [`SETTLED_FOR`] before `now_ms`, and
    /// the oldest past [`SETTLED_MAX`]; gives memory back once the table
    /// is a quarter full.
    pub(super) fn expire(&mut self, now_ms: Millis) {
        let horizon = SETTLED_FOR.as_millis() as Millis;
        while let Some(oldest) = self.records.front() {
            if self.records.len() <= SETTLED_MAX && now_ms.saturating_sub(oldest.at) <= horizon {
                break;
            }
            self.forget_oldest();
        }
        let keep = self.records.len().max(SHRINK_FLOOR);
        if self.index.capacity() > 4 * keep {
            let Settled { records, popped, index, hasher, .. } = self;
            index.shrink_to(2 * keep, |&n| hasher.hash_one(records[at(n, *popped)].id));
            records.shrink_to(2 * keep);
        }
    }

    fn forget_oldest(&mut self) {
        let Some(oldest) = self.records.pop_front() else { return };
        let number = self.popped;
        self.popped = self.popped.wrapping_add(1);
        match self.index.find_entry(self.hasher.hash_one(oldest.id), |&n| n == number) {
            Ok(found) => drop(found.remove()),
            Err(_) => debug_assert!(false, "settled id {:?} (record {number}) was not in the index", oldest.id),
        }
        self.boxed -= oldest.kept.heap_bytes();
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// An estimate of the bytes the table holds: its records, its index's
    /// buckets and the boxed outcomes.
    pub(super) fn bytes(&self) -> usize {
        self.records.capacity() * size_of::<Record>() + self.index.allocation_size() + self.boxed
    }
}

/// Where record number `n` is in the queue when `popped` have left it.
fn at(n: u32, popped: u32) -> usize {
    n.wrapping_sub(popped) as usize
}
