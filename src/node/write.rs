//! The write path. A client write travels hop by hop to the root, which
//! gives it the next version and commits it; the result comes back down the
//! same path, and every hop stores it and records the hop below as a holder
//! (inclusion: the writer's ancestors hold what it holds). Other holders
//! hear of it by push.
//!
//! `ack=root` waits for all of that. `ack=parent` returns once the parent
//! has taken the write: the parent queues it for its forwarder, which sends
//! queued writes up in batches and pushes each commit to the writer.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Node, UPSTREAM_TIMEOUT};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{check_key, Applied, Committed, NodeId, Update};
use crate::wire::{WriteResult, WriteResults};

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Once the parent has it (the default).
    Parent,
    /// Once the root has committed it.
    Root,
}

impl Ack {
    pub fn parse(s: &str) -> Option<Ack> {
        match s {
            "parent" => Some(Ack::Parent),
            "root" => Some(Ack::Root),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Ack::Parent => "parent",
            Ack::Root => "root",
        }
    }
}

/// Writes a child handed over with ack=parent, waiting for the forwarder.
pub struct Forward {
    child: NodeId,
    updates: Vec<Update>,
}

/// Most writes the forwarder sends up in one request.
const FORWARD_BATCH: usize = 512;
/// Tries before the forwarder gives up on a batch (the parent is gone; the
/// tree is re-forming).
const FORWARD_TRIES: u32 = 5;

impl Node {
    /// A client's `PUT`/`POST` (`value` is `Some`) or `DELETE` (`None`).
    pub async fn write(&self, key: &str, value: Option<Bytes>, ttl_secs: Option<u64>, ack: Ack) -> Result<WriteResult> {
        Metrics::inc(&self.inner.metrics.writes);
        let place = self.place()?;
        let now = now_ms();
        let expires_at = ttl_secs.map(|s| now.saturating_add(s.saturating_mul(1000)));
        if place.topology.is_root() {
            return Ok(self.commit(key, value, expires_at, None));
        }
        let store = &self.inner.store;
        let generation = store.generation();
        store.expect(key, now + UPSTREAM_TIMEOUT.as_millis() as u64);
        let update = Update { key: key.to_string(), version: 0, value, expires_at };
        let sent = self.send_writes(std::slice::from_ref(&update), ack).await;
        let result = match sent {
            Ok(mut results) => results.pop().unwrap_or(WriteResult::Failed { error: "empty answer".into() }),
            Err(e) => {
                store.unexpect(key);
                return Err(e);
            }
        };
        match &result {
            WriteResult::Committed { version, .. } => {
                if generation == store.generation() {
                    let committed = Update { version: *version, ..update };
                    if let Applied::Newer { holders } = store.apply(&committed, now_ms()) {
                        self.push_to(&holders, &committed);
                    }
                }
                store.unexpect(key);
            }
            // The parent will push the commit to us: keep expecting it until
            // the marker's deadline.
            WriteResult::Accepted => {}
            WriteResult::Absent | WriteResult::Failed { .. } => store.unexpect(key),
        }
        Ok(result)
    }

    /// The root's commit of one write; `child` is the node it came from.
    pub(super) fn commit(
        &self,
        key: &str,
        value: Option<Bytes>,
        expires_at: Option<u64>,
        child: Option<NodeId>,
    ) -> WriteResult {
        let pushes = self.place().map(|p| p.coherence.pushes()).unwrap_or(true);
        let holder = child.filter(|_| pushes);
        let versions = &self.inner.versions;
        let next = || versions.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        match self.inner.store.commit(key, value.clone(), expires_at, now_ms(), holder, next) {
            Committed::Done { version, created, holders } => {
                Metrics::inc(&self.inner.metrics.commits);
                let update = Update { key: key.to_string(), version, value, expires_at };
                self.push_to(&holders, &update);
                WriteResult::Committed { version, created }
            }
            Committed::Absent => WriteResult::Absent,
        }
    }

    /// `POST /internal/write` from `child`.
    pub async fn accept_writes(&self, child: NodeId, updates: Vec<Update>, ack: Ack) -> Result<Vec<WriteResult>> {
        let place = self.place()?;
        for u in &updates {
            check_key(&u.key).map_err(Error::BadKey)?;
        }
        if place.topology.is_root() {
            return Ok(updates.into_iter().map(|u| self.commit(&u.key, u.value, u.expires_at, Some(child))).collect());
        }
        match ack {
            Ack::Root => {
                let results = self.forward_up(&updates).await?;
                for (u, r) in updates.iter().zip(&results) {
                    self.settle(child, u, r, true);
                }
                Ok(results)
            }
            Ack::Parent => {
                let n = updates.len();
                self.inner
                    .forward_tx
                    .send(Forward { child, updates })
                    .await
                    .map_err(|_| Error::Internal("the write forwarder has stopped".into()))?;
                Ok(vec![WriteResult::Accepted; n])
            }
        }
    }

    /// Sends writes up (ack=root), expecting their keys meanwhile so a push
    /// that overtakes the answer is kept.
    async fn forward_up(&self, updates: &[Update]) -> Result<Vec<WriteResult>> {
        let store = &self.inner.store;
        let until = now_ms() + UPSTREAM_TIMEOUT.as_millis() as u64;
        for u in updates {
            store.expect(&u.key, until);
        }
        let results = self.send_writes(updates, Ack::Root).await;
        for u in updates {
            store.unexpect(&u.key);
        }
        results
    }

    /// A commit coming back down through this node for `child`'s write:
    /// store it, record the child as a holder, push it on. If this node
    /// already holds something newer, the child gets that instead.
    fn settle(&self, child: NodeId, sent: &Update, result: &WriteResult, child_gets_reply: bool) {
        let WriteResult::Committed { version, .. } = result else { return };
        let update = Update { version: *version, ..sent.clone() };
        let Ok(place) = self.place() else { return };
        let store = &self.inner.store;
        if !place.coherence.pushes() {
            store.apply(&update, now_ms());
            return;
        }
        match store.apply_and_hold(&update, child, now_ms()) {
            (Applied::Newer { holders }, _) => {
                let mut targets: Vec<NodeId> = holders.into_iter().filter(|&h| h != child).collect();
                if !child_gets_reply {
                    targets.push(child);
                }
                self.push_to(&targets, &update);
            }
            (Applied::Stale, current) => self.push_to(&[child], &current),
            (Applied::NotHeld, _) => {}
        }
    }

    /// `POST {parent}/internal/write`.
    async fn send_writes(&self, updates: &[Update], ack: Ack) -> Result<Vec<WriteResult>> {
        let place = self.place()?;
        let parent = place.topology.parent.as_ref().ok_or_else(|| Error::Internal("the root has no parent".into()))?;
        Metrics::inc(&self.inner.metrics.upstream_requests);
        let url = format!("{}/internal/write?child={}&ack={}", parent.url, place.topology.id, ack.as_str());
        let results: WriteResults =
            self.post_updates(self.local_http(), &parent.url, &url, updates, UPSTREAM_TIMEOUT).await?;
        if results.results.len() != updates.len() {
            return Err(Error::Internal(format!(
                "{url} answered {} results for {} writes",
                results.results.len(),
                updates.len()
            )));
        }
        Ok(results.results)
    }

    /// Sends ack=parent writes up in batches, then pushes each commit to
    /// the child that wrote it.
    pub(super) async fn run_forwarder(self, mut rx: mpsc::Receiver<Forward>) {
        let mut shutdown = self.subscribe_shutdown();
        loop {
            let first = tokio::select! {
                got = rx.recv() => match got { Some(f) => f, None => return },
                _ = shutdown.changed() => return,
            };
            let mut batch = vec![first];
            let mut count = batch[0].updates.len();
            while count < FORWARD_BATCH {
                match rx.try_recv() {
                    Ok(f) => {
                        count += f.updates.len();
                        batch.push(f);
                    }
                    Err(_) => break,
                }
            }
            let owners: Vec<NodeId> = batch.iter().flat_map(|f| f.updates.iter().map(|_| f.child)).collect();
            let updates: Vec<Update> = batch.into_iter().flat_map(|f| f.updates).collect();
            self.forward_batch(&owners, &updates).await;
        }
    }

    async fn forward_batch(&self, owners: &[NodeId], updates: &[Update]) {
        for attempt in 1..=FORWARD_TRIES {
            match self.forward_up(updates).await {
                Ok(results) => {
                    for ((child, u), r) in owners.iter().zip(updates).zip(&results) {
                        self.settle(*child, u, r, false);
                    }
                    return;
                }
                Err(e) if attempt == FORWARD_TRIES => {
                    log::error!("dropping {} ack=parent writes after {attempt} tries: {e}", updates.len());
                }
                Err(e) => {
                    log::warn!("forwarding {} writes failed (try {attempt}): {e}", updates.len());
                    if !self.pause(std::time::Duration::from_millis(200 << attempt)).await {
                        return;
                    }
                }
            }
        }
    }
}

/// The JSON body of a write's answer.
pub fn answer_body(result: &WriteResult, ack: Ack) -> serde_json::Value {
    match (result, ack) {
        (WriteResult::Committed { version, .. }, Ack::Root) => serde_json::json!({ "version": version }),
        (WriteResult::Committed { version, .. }, Ack::Parent) => {
            serde_json::json!({ "ack": "parent", "version": version })
        }
        _ => serde_json::json!({ "ack": ack.as_str() }),
    }
}
