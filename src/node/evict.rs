//! The memory bound (`--max-memory`) and tombstone collection.
//!
//! One task per node, [`Node::run_evictor`], wakes when a store grows past
//! the bound (and every second): it collects tombstones past their horizon
//! (every node, the root included), evicts down to [`LOW_WATERMARK`] of
//! the bound (non-root nodes with `--max-memory`), and tells the parent
//! which keys it no longer holds.
//!
//! Coherence (DESIGN.md, inclusion):
//! - A key children hold is evicted only after they dropped it
//!   (back-invalidation, `POST /internal/invalidate`, one batch per
//!   child; a child drops a key after its own children did, and keeps
//!   one with a fill or write in flight, which the parent then keeps too).
//!   A child that read the key again meanwhile was recorded after we
//!   asked, and the key stays.
//! - Dropped keys go to the parent in `POST /internal/dropped`
//!   `{"keys": [..], "tick": T}`, T the highest parent tick this node had
//!   seen before it removed them ([`crate::store::Store::parent_tick`]):
//!   the parent removes our holder record of each key only if it was made
//!   at or before T. A refill after the eviction is recorded later and
//!   survives. A lost message leaves a record too many, which costs one
//!   refused push (the push path then removes it).
//!
//! It must not evict keys in flight (the store refuses to) nor hold a
//! store lock across a request.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Node;
use crate::clock::Time;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{check_key, DropAnswer, NodeId};

/// Past the bound, a node evicts down to this share of it (per mille), so
/// one pass makes room for many fills.
const LOW_WATERMARK: u64 = 900;
/// Most keys in one `dropped` or `invalidate` message (a key is at most
/// 250 bytes: the JSON stays under the 1 MiB control body limit).
pub const KEYS_PER_MESSAGE: usize = 2048;
/// Keys children hold that one pass asks them to drop, at most.
const HELD_PER_PASS: usize = 1024;
/// How long a back-invalidation may take per hop (it may recurse).
const INVALIDATE_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /internal/dropped`: keys a child no longer holds, and the highest
/// tick of ours it had seen before it dropped them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dropped {
    pub keys: Vec<String>,
    pub tick: u64,
}

/// The answer to `POST /internal/invalidate`: keys the child could not
/// drop (a fill or write of them is in flight, or its own child did not
/// answer); the parent keeps holding those.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invalidated {
    pub kept: Vec<String>,
}

impl Node {
    /// Wakes the evictor if the store is past the bound (called after the
    /// store grew).
    pub(super) fn note_growth(&self) {
        if self.args().max_memory.is_some_and(|max| self.inner.store.bytes() as u64 > max) {
            self.inner.evict_wake.notify_one();
        }
    }

    /// The evictor task (see the module docs).
    pub(super) async fn run_evictor(self) {
        let mut shutdown = self.subscribe_shutdown();
        loop {
            tokio::select! {
                _ = self.inner.evict_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
            if self.is_shutting_down() {
                return;
            }
            self.evict_pass().await;
        }
    }

    /// Collects tombstones, evicts down to the low watermark, tells the
    /// parent.
    async fn evict_pass(&self) {
        let store = &self.inner.store;
        let is_root = self.topology().is_none_or(|t| t.is_root());
        // Read before anything is removed: see Store::parent_tick.
        let (generation, tick) = store.parent_tick();
        let horizon = self.args().tombstone_ttl.as_millis() as u64;
        let mut dropped = store.collect_tombstones(Time::now(), horizon);
        Metrics::add(&self.inner.metrics.tombstones_collected, dropped.len() as u64);
        if let Some(max) = self.args().max_memory.filter(|_| !is_root) {
            let low = (max / 1000 * LOW_WATERMARK) as usize;
            let over = store.bytes() as u64 > max;
            while over && store.bytes() > low {
                let need = store.bytes().saturating_sub(low);
                let examined = 4 * store.len() + 64;
                let pass = store.evict(need, Time::now(), examined, HELD_PER_PASS);
                let mut progress = !pass.removed.is_empty();
                Metrics::add(&self.inner.metrics.evictions, pass.removed.len() as u64);
                dropped.extend(pass.removed);
                if !pass.held.is_empty() {
                    let removed = self.back_invalidate(pass.held).await;
                    progress |= !removed.is_empty();
                    Metrics::add(&self.inner.metrics.evictions, removed.len() as u64);
                    dropped.extend(removed);
                }
                if !progress {
                    // Everything left is in flight or held by children that
                    // would not drop it: try again on the next wake-up.
                    break;
                }
            }
        }
        if !is_root && !dropped.is_empty() {
            self.send_dropped(generation, tick, dropped).await;
        }
    }

    /// Asks the children holding each key to drop it, then removes what
    /// they all dropped. Returns the keys removed here.
    async fn back_invalidate(&self, held: Vec<(String, Vec<NodeId>)>) -> Vec<String> {
        let store = &self.inner.store;
        let children = self.children();
        let asked = store.tick_now();
        let mut per_child: HashMap<NodeId, Vec<String>> = HashMap::new();
        for (key, holders) in &held {
            for h in holders {
                per_child.entry(*h).or_default().push(key.clone());
            }
        }
        let requests = per_child.into_iter().map(|(id, keys)| {
            let peer = children.iter().find(|c| c.id == id).cloned();
            async move {
                // A record of a node that is no longer our child is stale:
                // it gets no pushes from us anyway.
                let Some(peer) = peer else { return (id, Ok(Invalidated::default())) };
                (id, self.send_invalidate(&peer.url, keys).await)
            }
        });
        let answers: HashMap<NodeId, Result<Invalidated>> =
            futures::future::join_all(requests).await.into_iter().collect();
        let mut removed = Vec::new();
        let t = Time::now();
        for (key, holders) in held {
            let cleared: Vec<NodeId> = holders
                .into_iter()
                .filter(|h| matches!(answers.get(h), Some(Ok(a)) if !a.kept.contains(&key)))
                .collect();
            if store.finish_invalidation(&key, &cleared, asked, t).is_some() {
                removed.push(key);
            }
        }
        removed
    }

    async fn send_invalidate(&self, child_url: &str, keys: Vec<String>) -> Result<Invalidated> {
        let url = format!("{child_url}/internal/invalidate");
        let mut kept = Vec::new();
        for chunk in keys.chunks(KEYS_PER_MESSAGE) {
            let body = serde_json::to_vec(&crate::wire::KeyList { keys: chunk.to_vec() })
                .map_err(|e| Error::Internal(format!("encoding an invalidation: {e}")))?;
            let answer: Invalidated = self
                .post_internal(
                    self.epoch(),
                    self.inner.http.clone(),
                    child_url,
                    &url,
                    body.into(),
                    INVALIDATE_TIMEOUT,
                    self.inner.store.generation(),
                )
                .await
                .inspect_err(|e| log::warn!("asking child at {child_url} to drop {} keys: {e}", chunk.len()))?;
            kept.extend(answer.kept);
        }
        Ok(Invalidated { kept })
    }

    /// `POST /internal/invalidate` from node `from` (our parent): drop
    /// these keys, after our own children dropped them; name those kept.
    pub async fn receive_invalidate(&self, from: NodeId, keys: Vec<String>) -> Result<Invalidated> {
        self.check_from_parent(from)?;
        for key in &keys {
            check_key(key).map_err(Error::BadKey)?;
        }
        let store = &self.inner.store;
        let t = Time::now();
        let mut kept = Vec::new();
        let mut held = Vec::new();
        for key in keys {
            match store.drop_for_parent(&key, t) {
                DropAnswer::Gone => Metrics::inc(&self.inner.metrics.invalidations),
                DropAnswer::Kept => kept.push(key),
                DropAnswer::Held(holders) => held.push((key, holders)),
            }
        }
        if !held.is_empty() {
            let asked: Vec<String> = held.iter().map(|(k, _)| k.clone()).collect();
            let removed = self.back_invalidate(held).await;
            Metrics::add(&self.inner.metrics.invalidations, removed.len() as u64);
            kept.extend(asked.into_iter().filter(|k| !removed.contains(k)));
        }
        Ok(Invalidated { kept })
    }

    /// Tells the parent we dropped `keys` (evicted or collected), if the
    /// parent is still the one whose tick we read.
    async fn send_dropped(&self, generation: u64, tick: u64, keys: Vec<String>) {
        let Ok(place) = self.place() else { return };
        let Some(parent) = place.topology.parent.clone() else { return };
        // At a router, the keys of other groups are not the parent's; their
        // leaders are not told either (our tick is not theirs): a leader's
        // next push for one is answered "not held", and it forgets us then.
        let view = self.routes();
        let keys: Vec<String> = if self.is_router(&place.topology, &view) {
            keys.into_iter().filter(|k| view.owner(k) == 0).collect()
        } else {
            keys
        };
        let url = format!("{}/internal/dropped", parent.url);
        for chunk in keys.chunks(KEYS_PER_MESSAGE) {
            if self.inner.store.generation() != generation {
                return; // a new parent: it never recorded us for these
            }
            let Ok(body) = serde_json::to_vec(&Dropped { keys: chunk.to_vec(), tick }) else { return };
            let sent: Result<serde_json::Value> = self
                .post_internal(
                    self.epoch(),
                    self.inner.http.clone(),
                    &parent.url,
                    &url,
                    body.into(),
                    INVALIDATE_TIMEOUT,
                    generation,
                )
                .await;
            if let Err(e) = sent {
                // Harmless: the parent pushes to us once more, we answer
                // "not held", and it removes the record then.
                log::debug!("telling the parent we dropped {} keys: {e}", chunk.len());
            }
        }
    }

    /// `POST /internal/dropped` from child `from`: forget it as a holder of
    /// each key, for records made at or before `tick`.
    pub fn receive_dropped(&self, from: NodeId, dropped: Dropped) -> Result<()> {
        let place = self.place()?;
        if place.topology.child(from).is_none() {
            return Err(Error::NotChild { child: from, me: place.topology.id });
        }
        for key in &dropped.keys {
            check_key(key).map_err(Error::BadKey)?;
        }
        for key in &dropped.keys {
            self.inner.store.remove_holder(key, from, dropped.tick.saturating_add(1));
        }
        Ok(())
    }
}
