//! The standby's apply side: following whoever leads (registering with
//! it, again when it changes or falls silent, saying the position of its
//! stream we hold), applying its stream to the store and our own log with
//! the position each batch reaches (the first batch of a session starts
//! over from a snapshot, or resumes from that position), and
//! serving reads once in sync, only of what the leader said is durable;
//! writes go to the leader as they came.
//!
//! Must not serve a read while catching up or with the leader silent, nor
//! a version not yet durable on every in-sync root.

use std::sync::atomic::Ordering;
use std::time::Duration;

use zookeeper_client::Client;

use super::{BatchInfo, StandbyRequest};
use crate::clock::{mono_ms, Time};
use crate::error::{Error, Result};
use crate::log::codec::Entry;
use crate::node::Node;
use crate::replication::{self, Following, Position};
use crate::store::{NodeId, Update, WriteId};

/// How long a client's write at a standby waits for its outcome (as at a
/// cache) before 503 `write_in_flight`; the write goes on.
const STANDBY_CLIENT_WAIT: Duration = Duration::from_secs(30);
/// One try of passing a write to the leader: its commit waits for the
/// standbys (`--insync-timeout`), so well above that.
const STANDBY_WRITE_TIMEOUT: Duration = Duration::from_secs(15);
use crate::tree::zk;

/// A standby that has not heard its leader this long is not in sync (its
/// `/health` answers 503) and registers again.
const LEADER_SILENCE_MS: u64 = 3_000;
/// A standby that has not heard its leader this long registers again (a
/// new stream: from where it is if the leader's tail reaches back there,
/// else from a snapshot).
const REREGISTER_AFTER_MS: u64 = 6_000;

impl Node {
    /// While waiting for our turn in the election: follow whoever leads,
    /// re-registering when the root znode changes or the leader falls
    /// silent. Returns only when the node shuts down.
    pub(in crate::node) async fn follow_leader(&self, zk: &Client, me: NodeId) {
        loop {
            if self.is_shutting_down() {
                return;
            }
            let watch = zk.check_and_watch_stat(&self.inner.paths.root()).await;
            let leader = zk::read_root(zk, &self.inner.paths).await.ok().flatten();
            if let Some(zk::RootInfo { id, url, epoch }) = leader.filter(|r| r.url != self.url()) {
                let stale =
                    self.replica().following.lock().as_ref().is_none_or(|f| {
                        f.leader_url != url || mono_ms().saturating_sub(f.heard_at) > REREGISTER_AFTER_MS
                    });
                if stale && epoch >= self.epoch() {
                    if let Err(e) = self.register_standby(me, id, &url, epoch).await {
                        log::warn!("registering as a standby with the leader {url}: {e}");
                    }
                }
            }
            let fired = async {
                match watch {
                    Ok((_, w)) => {
                        w.changed().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = fired => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn register_standby(&self, me: NodeId, leader: NodeId, url: &str, epoch: u64) -> Result<()> {
        self.become_standby(leader, url, epoch);
        let target = format!("{url}/internal/standby");
        let body = StandbyRequest {
            id: me,
            url: self.url().to_string(),
            durable: self.log().is_some(),
            position: self.held_position(),
        };
        let resp = self
            .request(&self.inner.http, reqwest::Method::POST, &target)
            .json(&body)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| Error::parent_unreachable(url, e))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            return Err(Error::Upstream { url: target, status, body: resp.text().await.unwrap_or_default() });
        }
        log::info!("standing by for leader {leader} at {url} (epoch {epoch})");
        self.set_refusing(None);
        Ok(())
    }

    /// This root follows `leader`: whatever it led or held in the tree is
    /// over (its store is replaced by the leader's snapshot, or, if it
    /// holds a prefix of this leader's stream, brought up to date).
    fn become_standby(&self, leader: NodeId, url: &str, epoch: u64) {
        let r = self.replica();
        self.inner.epoch.fetch_max(epoch, Ordering::AcqRel);
        {
            let mut f = r.following.lock();
            let same = f.as_ref().is_some_and(|f| f.leader_url == url && f.epoch == epoch);
            if !same {
                *f = Some(Following {
                    leader,
                    leader_url: url.to_string(),
                    epoch,
                    heard_at: mono_ms(),
                    ..Following::default()
                });
            } else if let Some(f) = f.as_mut() {
                // Registering again means a new stream that starts us
                // over: not in sync from now until the leader says so
                // (`heard_at` only spaces out the registrations).
                f.in_sync = false;
                f.heard_at = mono_ms();
            }
        }
        self.stop_leading();
        if self.inner.place.write().take().is_some() {
            log::info!("no longer leading: standing by for leader {leader} at {url}");
            self.drop_queued_pushes();
        }
        *self.inner.membership.registry.lock() = None;
    }

    /// No longer a standby (we lead now, or shut down).
    pub(in crate::node) fn stop_following(&self) {
        *self.replica().following.lock() = None;
    }

    /// Whether this root stands by for a leader.
    pub fn is_following(&self) -> bool {
        self.replica().following.lock().is_some()
    }

    /// The leader a standby follows, when it is one.
    pub fn following(&self) -> Option<Following> {
        self.replica().following.lock().clone()
    }

    /// `GET /kv/{key}` at a standby: from its copy, once in sync, and
    /// only what the leader said is durable on every in-sync root (a
    /// newer version waits for that, as at the root).
    pub async fn standby_get(&self, key: &str) -> Result<crate::node::Found> {
        // A standby holds its group's slots only: another group's key is
        // not absent, it is elsewhere.
        if let Some(leader) = self.foreign_leader(key)? {
            return self.proxy_get(&leader, key, false).await;
        }
        loop {
            let starts = self.replica().starts.load(Ordering::Acquire);
            self.standby_in_sync()?;
            let lookup = self.inner.store.get(key, Time::now());
            if let Some(version) = lookup.version().filter(|&v| self.is_pending(v)) {
                // What we looked up, once durable (not a newer version
                // that came meanwhile: a hot key would never be served).
                self.wait_durable(Some(version), false).await?;
            }
            if self.replica().starts.load(Ordering::Acquire) != starts {
                continue; // wiped meanwhile: what we looked up is gone
            }
            return match lookup {
                crate::store::Lookup::Value { version, value, expires_at, .. } => {
                    crate::metrics::Metrics::inc(&self.inner.metrics.hits);
                    Ok(crate::node::Found { version, value, expires_at, cache: crate::node::CacheStatus::Hit })
                }
                _ => Err(Error::NotFound(key.to_string())),
            };
        }
    }

    /// A client's write at a standby root (issue 20): it gets a write id of
    /// this node's and goes to the leader (`/internal/write?standby=ID`),
    /// one write at a time in the order they came, each sent again with the
    /// same id until its outcome is known, to whichever root leads then
    /// (committed here if this root took over meanwhile). So guarantees 5
    /// and 6 hold through a standby as through any node: a resend after a
    /// lost answer or a failover is committed once, and a later write never
    /// overtakes an earlier one. The client waits as at a cache (30 s, then
    /// 503 `write_in_flight`, the write still on its way).
    pub(in crate::node) async fn standby_write(
        &self,
        key: &str,
        value: Option<bytes::Bytes>,
        ttl_ms: Option<u64>,
        ack: crate::node::Ack,
        cond: crate::store::Condition,
    ) -> Result<crate::wire::WriteResult> {
        if let Some(leader) = self.foreign_leader(key)? {
            return self.proxy_write(&leader, key, value, ttl_ms, ack, cond).await;
        }
        crate::metrics::Metrics::inc(&self.inner.metrics.writes);
        let me = self.node_id().ok_or(Error::NotRegistered)?;
        let expires_at = ttl_ms.map(|ms| crate::clock::now_ms().saturating_add(ms));
        // A conditional write's answer is the root's decision.
        let ack = if cond.is_conditional() { crate::node::Ack::Root } else { ack };
        let retry_value = value.clone();
        let update = Update { key: key.to_string(), version: 0, value, expires_at };
        // In order: the next write waits for this one's outcome. The id is
        // taken in turn too, so ids rise in the order writes are sent.
        let turn = self.replica().forwarding.clone().lock_owned().await;
        let write =
            crate::wire::Write { update, id: self.next_write_id(me), ack_root: ack == crate::node::Ack::Root, cond };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let node = self.clone();
        // Its own task: a client that gives up does not stop the write.
        self.spawn(async move {
            let _turn = turn;
            let _ = tx.send(node.send_to_leader(write, me).await);
        });
        match tokio::time::timeout(STANDBY_CLIENT_WAIT, rx).await {
            // The key's slot went to another group: nothing was done; the
            // write goes to the new owner, as a write that came after.
            Ok(Ok(Err(e))) if e.is_wrong_group() => match self.foreign_leader(key)? {
                Some(leader) => self.proxy_write(&leader, key, retry_value, ttl_ms, ack, cond).await,
                None => Err(e),
            },
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::WriteInFlight { key: key.to_string() }),
        }
    }

    /// Sends `write` to the root that leads now until it answers with the
    /// write's outcome; commits it here if this root leads.
    async fn send_to_leader(&self, write: crate::wire::Write, me: NodeId) -> Result<crate::wire::WriteResult> {
        let body = crate::wire::encode_writes(std::slice::from_ref(&write));
        let mut pause = Duration::from_millis(50);
        let mut tries = 0u32;
        loop {
            if self.is_shutting_down() {
                return Err(Error::ShuttingDown);
            }
            if self.place().is_ok_and(|p| p.topology.is_root()) {
                // Took over meanwhile: our table knows the id if the old
                // leader decided it (its outcomes came with its stream).
                let mut results = self.commit_batch(None, vec![write.clone()]).await?;
                return results.pop().ok_or_else(|| Error::Internal("no result for a write".into()));
            }
            if let Some(f) = self.following() {
                let url = format!("{}/internal/write?standby={me}", f.leader_url);
                let generation = self.inner.store.generation();
                let sent = self
                    .post_internal::<crate::wire::WriteResults>(
                        self.epoch(),
                        self.inner.http.clone(),
                        &f.leader_url,
                        &url,
                        body.clone(),
                        STANDBY_WRITE_TIMEOUT,
                        generation,
                    )
                    .await;
                match sent.map(|answers| answers.results.into_iter().next()) {
                    Ok(Some(result)) => return Ok(result),
                    Ok(None) => log::warn!("leader {} answered a write with no result", f.leader),
                    // Not our group's key any more (a slot move): decided
                    // not committed; the caller sends it to the owner.
                    Err(e) if e.is_wrong_group() => return Err(e),
                    Err(e) => {
                        tries += 1;
                        if tries == 1 || tries.is_multiple_of(20) {
                            log::info!("passing a write to leader {} (try {tries}; sent again): {e}", f.leader);
                        }
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// A standby passes a client's write (or consistent read) to its
    /// leader as it came: method, path and query, body, and the headers
    /// named in `headers`. Returns the leader's status, headers and body.
    pub async fn forward_to_leader(
        &self,
        method: &str,
        path_and_query: &str,
        headers: Vec<(&'static str, Vec<u8>)>,
        body: bytes::Bytes,
    ) -> Result<(u16, Vec<(String, Vec<u8>)>, bytes::Bytes)> {
        let f = self.following().ok_or(Error::NotStandby)?;
        let url = format!("{}{path_and_query}", f.leader_url);
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::BadRequest(format!("method {method} cannot be forwarded")))?;
        let mut req = self.local_http().request(method, &url).timeout(Duration::from_secs(35)).body(body);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let resp = req.send().await.map_err(|e| Error::parent_unreachable(&f.leader_url, e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())).collect();
        let body = resp.bytes().await.map_err(|e| Error::parent_unreachable(&f.leader_url, e))?;
        Ok((status, headers, body))
    }

    /// A standby in sync: its leader says so and was heard lately.
    pub fn standby_in_sync(&self) -> Result<Following> {
        let f = self.following().ok_or(Error::NotStandby)?;
        let silent = mono_ms().saturating_sub(f.heard_at);
        if !f.in_sync {
            return Err(Error::NotInSync(format!("catching up with leader {} ({})", f.leader, f.leader_url)));
        }
        if silent > LEADER_SILENCE_MS {
            return Err(Error::NotInSync(format!("leader {} silent for {silent} ms", f.leader)));
        }
        Ok(f)
    }

    /// `POST /internal/replicate` at a standby: applies a batch of the
    /// leader's stream (the first of a session starts over), makes it
    /// durable in our own log, and answers once it is.
    pub async fn receive_replicate(&self, from: NodeId, epoch: u64, info: BatchInfo, body: &[u8]) -> Result<()> {
        let _one_at_a_time = self.replica().applying.lock().await;
        if self.epoch() > epoch {
            return Err(Error::StaleEpoch { got: epoch, have: self.epoch() });
        }
        let mut f = self.following().ok_or(Error::NotStandby)?;
        let entries = replication::decode_batch(body).map_err(Error::BadRequest)?;
        if entries.iter().any(|e| matches!(e, Entry::Position(_))) {
            // Our log would take it for our own word on what we hold.
            return Err(Error::BadRequest(
                "a stream position in a replication batch: only a standby writes one".into(),
            ));
        }
        if let (true, Some(seq)) = (info.first, info.resume) {
            self.resume_stream(&mut f, from, epoch, info.session, seq)?;
        } else if info.first {
            self.start_over(&mut f, from, epoch, info.session).await?;
        } else if info.session != f.session || f.leader != from {
            return Err(Error::BadRequest(format!(
                "batch of stream session {} from node {from}; this standby follows session {} of node {}",
                info.session, f.session, f.leader
            )));
        }
        self.inner.epoch.fetch_max(epoch, Ordering::AcqRel);
        let (mut max_version, mut max_epoch, mut records) = (0, epoch, 0);
        let t = Time::now();
        for entry in entries {
            match entry {
                Entry::Write(rec) => {
                    records += 1;
                    max_version = max_version.max(rec.update.version);
                    max_epoch = max_epoch.max(rec.epoch);
                    self.pending_applied(rec.update.version, info.durable);
                    self.apply_replicated(&rec.update, rec.write_id, t);
                }
                Entry::WriteOutcome(id, version, slot) => self.restore_write_outcome(id, version, slot),
                Entry::Slot(slot, change) => self.apply_slot_change(slot, change),
                Entry::Epoch(e) => max_epoch = max_epoch.max(e),
                Entry::SnapshotHeader { .. } | Entry::SnapshotEnd { .. } | Entry::Position(_) => {}
            }
        }
        self.inner.versions.fetch_max(max_version, Ordering::AcqRel);
        self.inner.epoch.fetch_max(max_epoch, Ordering::AcqRel);
        // A batch past the session's snapshot brings us to `to` of the
        // leader's stream: recorded after its frames, in the same append,
        // so the log never claims more than it holds.
        let reached = (!info.snapshot).then_some(Position { epoch, seq: info.to });
        let moved = reached.filter(|&p| self.held_position() != Some(p));
        if let Some(log) = self.log() {
            if !body.is_empty() || moved.is_some() {
                let mut frames = body.to_vec();
                if let Some(p) = moved {
                    frames.extend(replication::position_frame(p));
                }
                log.append_frames(frames, records, max_version, max_epoch)
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?;
                self.maybe_snapshot(log);
            }
        }
        if let Some(p) = moved {
            *self.replica().held.lock() = Some(p);
        }
        self.pending_through(info.durable);
        f.applied = f.applied.max(info.to);
        f.epoch = f.epoch.max(epoch);
        f.in_sync = info.in_sync;
        f.heard_at = mono_ms();
        let mut cur = self.replica().following.lock();
        match cur.as_mut() {
            Some(c) if c.leader_url == f.leader_url => *c = f,
            _ => return Err(Error::NotStandby),
        }
        Ok(())
    }

    fn apply_replicated(&self, update: &Update, write_id: Option<WriteId>, t: Time) {
        if update.version > 0 {
            self.inner.store.apply(update, t);
        }
        if let Some(id) = write_id {
            self.restore_write_outcome(id, update.version, crate::slots::slot_of(&update.key));
        }
    }

    /// A new stream that resumes ours: we must still hold the leader's
    /// stream of this epoch up to `seq` (we may hold more: an older
    /// session's batch that came meanwhile; the leader's frames after
    /// `seq` apply again harmlessly, each only if newer). Otherwise the
    /// leader sends a snapshot instead.
    fn resume_stream(&self, f: &mut Following, from: NodeId, epoch: u64, session: u64, seq: u64) -> Result<()> {
        let held = self.held_position();
        if !held.is_some_and(|h| h.epoch == epoch && h.seq >= seq) {
            let held =
                held.map_or("no position".to_string(), |h| format!("epoch {}'s stream up to {}", h.epoch, h.seq));
            return Err(Error::CannotResume(format!(
                "asked to resume epoch {epoch}'s stream after {seq}, this standby holds {held}"
            )));
        }
        log::info!("stream session {session} from leader {from} (epoch {epoch}): resuming after {seq}");
        self.not_in_sync();
        f.leader = from;
        f.epoch = epoch;
        f.session = session;
        f.applied = seq;
        f.in_sync = false;
        Ok(())
    }

    /// Not in sync (no reads, /health 503) until the leader says so again.
    fn not_in_sync(&self) {
        if let Some(cur) = self.replica().following.lock().as_mut() {
            cur.in_sync = false;
        }
    }

    /// A new stream: forget what we held (store, write outcomes, stream
    /// position, and on disk, behind an empty snapshot) and take the
    /// leader's instead.
    async fn start_over(&self, f: &mut Following, from: NodeId, epoch: u64, session: u64) -> Result<()> {
        log::info!("stream session {session} from leader {from} (epoch {epoch}): starting over from its snapshot");
        // Not in sync (no reads, /health 503) from before the wipe on.
        self.not_in_sync();
        // No position until the snapshot is whole (the next batch says).
        *self.replica().held.lock() = None;
        self.replica().starts.fetch_add(1, Ordering::AcqRel);
        self.inner.store.wipe();
        self.pending_clear();
        *self.inner.outcomes.lock() = crate::node::write::Outcomes::default();
        self.forget_frozen();
        if let Some(log) = self.log() {
            // An empty snapshot covers (and deletes) every segment before
            // it. One already being written (of the store before the wipe)
            // must finish first, or ours would not be the newest.
            loop {
                match log.snapshot(crate::log::Snapshot::default).await {
                    Ok(Some(_)) => break,
                    Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => return Err(Error::Internal(e.to_string())),
                }
            }
        }
        f.leader = from;
        f.epoch = epoch;
        f.session = session;
        f.applied = 0;
        f.in_sync = false;
        Ok(())
    }
}
