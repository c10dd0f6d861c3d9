//! One shard of the store: its map of entries, the "expecting" markers of
//! keys with a fill or write in flight, the counts and bytes charged, how
//! an update is stored if newer, and the lock: [`Store::lock`] and the
//! guard [`ShardMut`], which carries the shard's change in bytes into the
//! store's total when dropped.
//!
//! Must not be held across an `.await` or do I/O: a critical section is a
//! hash lookup and a few field writes. Eviction order is `queues.rs`'s,
//! holder records `holders.rs`'s.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use parking_lot::{RwLock, RwLockWriteGuard};

use super::entry::{expiry, Applied, Entry, Fields, Stamp, Update};
use super::holders::{Holders, HOLDER_BYTES};
use super::queues::Queues;
use super::table::Table;
use super::{NodeId, Store, Time};
use crate::clock::Millis;

/// Fills and writes in flight for one key (`count`), and after the last
/// one, until when (monotonic ms) pushes are still welcome: an ack=parent
/// write's commit comes back by push some time after the parent took it.
/// `holders`: children whose writes of the key pass through here while it
/// is not held; they become holders when the key arrives, so the root's
/// push of their commit reaches them even if our answer to them is lost.
#[derive(Clone, Default)]
pub(super) struct Expecting {
    pub(super) count: u32,
    pub(super) until: Millis,
    pub(super) holders: Vec<NodeId>,
}

impl Expecting {
    pub(super) fn is_live(&self, mono: Millis) -> bool {
        self.count > 0 || self.until > mono
    }
}

#[derive(Default)]
pub(super) struct Shard {
    pub(super) map: Table,
    /// Keys with fills or writes in flight: pushes for them are accepted.
    pub(super) expecting: HashMap<String, Expecting>,
    /// Bytes charged: entries (key, value, overhead), holder records and
    /// the eviction queues, ghost included. The store keeps the sum of all
    /// shards in one atomic beside it (see [`ShardMut`]).
    pub(super) bytes: usize,
    pub(super) tombstones: usize,
    pub(super) holders: usize,
    /// A bounded store's eviction order (see [`Queues`], [`Store::evict`]).
    /// `None` in an unbounded store (the root), which never evicts.
    pub(super) queues: Option<Queues>,
}

impl Shard {
    pub(super) fn is_expecting(&self, key: &str, mono: Millis) -> bool {
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
    pub(super) fn apply_if_newer(
        &mut self,
        update: &Update,
        t: Time,
        tick: u64,
        generation: u64,
        confirmed: bool,
    ) -> Applied {
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
                self.bytes = self.bytes + charge - entry.charged();
                self.tombstones =
                    self.tombstones + usize::from(update.value.is_none()) - usize::from(entry.is_tombstone());
                entry.version = update.version;
                entry.set_value(update.value.as_deref(), expiry(update.expires_at));
                // Unconfirmed: as current, and as fresh, as it was.
                if confirmed {
                    entry.stamp = stamp;
                }
                Applied::Newer { holders: entry.holder_ids() }
            }
            None => {
                // Made first: nothing is counted for an entry that is not.
                let fields = Fields {
                    version: update.version,
                    stamp: if confirmed { stamp } else { Stamp::unconfirmed(t.mono, generation) },
                    holders: Holders::default(),
                    slot: 0,
                    freq: AtomicU8::new(0),
                    in_main: false,
                };
                let mut entry = Entry::new(&update.key, update.value.as_deref(), expiry(update.expires_at), fields);
                self.bytes += charge;
                self.tombstones += usize::from(update.value.is_none());
                (entry.slot, entry.in_main) = self.admit(&update.key);
                self.map.insert_new(entry);
                Applied::Newer { holders: Vec::new() }
            }
        }
    }

    /// Removes `key`. Its queue slot stays until the evictor reaches it
    /// (or [`Shard::compact_queues`] drops it), skipped as left over.
    pub(super) fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        self.bytes -= entry.charged() + entry.holders.len() * HOLDER_BYTES;
        self.tombstones -= usize::from(entry.is_tombstone());
        self.holders -= entry.holders.len();
        if let Some(q) = self.queues.as_mut().filter(|_| !entry.in_main) {
            q.in_small -= 1;
        }
        Some(entry)
    }

    /// Whether `key` is held here and nothing needs it: no holders, no
    /// fill or write in flight.
    pub(super) fn is_unneeded(&self, key: &str, mono: Millis) -> bool {
        self.map.get(key).is_some_and(|entry| entry.holders.is_empty()) && !self.is_expecting(key, mono)
    }
}

/// A shard locked for writing. Dropping it adds the change in the
/// shard's bytes to the store's total, so the total (what the memory
/// bound is checked against) is one atomic load, whatever changed.
pub(super) struct ShardMut<'a> {
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

impl Store {
    pub(super) fn shard(&self, key: &str) -> &RwLock<Shard> {
        &self.shards[self.shard_index(key)]
    }

    fn shard_index(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % self.shards.len()
    }

    pub(super) fn lock(&self, index: usize) -> ShardMut<'_> {
        let guard = self.shards[index].write();
        let before = guard.bytes;
        ShardMut { guard, before, total: &self.bytes }
    }

    pub(super) fn shard_mut(&self, key: &str) -> ShardMut<'_> {
        self.lock(self.shard_index(key))
    }
}
