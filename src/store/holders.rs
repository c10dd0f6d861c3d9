//! The holder directory: which children hold a key ([`Holders`], one
//! pointer per entry while none do), how a child is recorded on an entry,
//! and the shard's counts and bytes kept as records come and go.
//!
//! Must not decide when a child is recorded or forgotten (the store's API
//! and its callers do, under the shard lock), nor push anything: it only
//! keeps the records.

use super::entry::Entry;
use super::shard::Shard;
use super::NodeId;

/// Bytes charged per holder record: the `(NodeId, tick)` pair and its
/// share of the boxed list and the allocator's header.
pub(super) const HOLDER_BYTES: usize = 32;

/// The children holding a key: one pointer when there are none (a bare
/// `Vec` is three words in every slot, and most entries have no holders).
#[derive(Default)]
#[allow(clippy::box_collection)]
pub(super) struct Holders(pub(super) Option<Box<Vec<(NodeId, u64)>>>);

impl Holders {
    pub(super) fn iter(&self) -> std::slice::Iter<'_, (NodeId, u64)> {
        self.0.as_deref().map_or(&[][..], Vec::as_slice).iter()
    }
    fn iter_mut(&mut self) -> std::slice::IterMut<'_, (NodeId, u64)> {
        self.0.as_deref_mut().map_or(&mut [][..], Vec::as_mut_slice).iter_mut()
    }
    pub(super) fn push(&mut self, holder: (NodeId, u64)) {
        self.0.get_or_insert_with(Box::default).push(holder);
    }
    /// Keeps the records `keep` accepts; returns how many went.
    pub(super) fn retain(&mut self, keep: impl FnMut(&(NodeId, u64)) -> bool) -> usize {
        let Some(list) = self.0.as_mut() else { return 0 };
        let before = list.len();
        list.retain(keep);
        let removed = before - list.len();
        if list.is_empty() {
            self.0 = None;
        }
        removed
    }
    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |l| l.len())
    }
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl Entry {
    pub(super) fn holder_ids(&self) -> Vec<NodeId> {
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
}

impl Shard {
    /// Records `child` as a holder of `key` (if held), keeping the counts.
    pub(super) fn hold(&mut self, key: &str, child: NodeId, tick: u64) -> bool {
        let Some(entry) = self.map.get_mut(key) else { return false };
        if entry.hold(child, tick) {
            self.holders += 1;
            self.bytes += HOLDER_BYTES;
        }
        true
    }

    /// Drops the holder records of `key` that `keep` refuses.
    pub(super) fn unhold(&mut self, key: &str, keep: impl FnMut(&(NodeId, u64)) -> bool) {
        if let Some(entry) = self.map.get_mut(key) {
            let removed = entry.holders.retain(keep);
            self.holders -= removed;
            self.bytes -= removed * HOLDER_BYTES;
        }
    }
}
