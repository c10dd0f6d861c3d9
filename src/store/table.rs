//! A shard's map of entries: a hash table of thin [`Entry`] pointers, 8
//! bytes a slot, found by the key each entry holds. `std`'s `HashMap`
//! needs the key beside the value (a 16-byte `Box<str>` in every slot);
//! `hashbrown`'s `HashTable` lets the key live in the entry's own
//! allocation and be compared there.
//!
//! Must not: lock, look at what an entry holds beyond its key, or change
//! a key in place (an entry's key is fixed when it is made).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::entry::Entry;

/// The entries of one shard by key. Keys come from clients, so the hash
/// is keyed per table (SipHash, as `std`'s maps).
#[derive(Default)]
pub(super) struct Table {
    entries: HashTable<Entry>,
    hasher: RandomState,
}

impl Table {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.find(self.hash(key), |e| e.key() == key)
    }

    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        let hash = self.hash(key);
        self.entries.find_mut(hash, |e| e.key() == key)
    }

    pub(super) fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Adds an entry whose key is not in the table yet (the caller looked).
    pub(super) fn insert_new(&mut self, entry: Entry) {
        debug_assert!(!self.contains_key(entry.key()), "{:?} is in the table already", entry.key());
        let hash = self.hash(entry.key());
        let hasher = &self.hasher;
        self.entries.insert_unique(hash, entry, |e| hasher.hash_one(e.key()));
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Entry> {
        let hash = self.hash(key);
        self.entries.find_entry(hash, |e| e.key() == key).ok().map(|found| found.remove().0)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.entries.iter_mut()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
