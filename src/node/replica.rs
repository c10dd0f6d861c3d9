//! The node's side of standby roots ([`crate::replication`]).
//!
//! Leader: a [`Stream`] per standby and its sender task (snapshot, then
//! the commits in order, heartbeats when idle); the `leader` znode's
//! in-sync set, changed only by conditional writes under one lock; and
//! the wait in `make_durable` for every stream a commit must reach. A
//! failed conditional write means another root took over: this one is
//! deposed and acknowledges nothing more.
//!
//! Standby: registers with the leader (`POST /internal/standby`), applies
//! the stream (`POST /internal/replicate`) to its store and its own log,
//! answers with what it holds durably; serves reads once in sync.
//!
//! Takeover ([`Node::may_take_over`]): only a root in the `in_sync` set
//! that still has what it held then (its log, or the live process).
//!
//! Read committed at the root: a version is pending from its commit until
//! it is durable (log and in-sync standbys); a read of a pending version
//! waits, so no node or client sees a write that a failover could lose.
//! The same at a standby: each batch says up to which version everything
//! is durable on every in-sync root ([`BatchInfo::durable`]); a version the
//! standby applied above that is pending there until a later batch (or a
//! heartbeat, sent as soon as the mark moves) covers it. Otherwise a
//! standby could serve a write that another standby, taking over without
//! it, never had: the key would go back.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use zookeeper_client::Client;

use super::Node;
use crate::clock::{mono_ms, Time};
use crate::error::{Error, Result};
use crate::log::codec::Entry;
use crate::replication::{self, Following, Status, Stream};
use crate::store::{NodeId, Update, Version, WriteId};
use crate::tree::zk::{self, LeaderRecord};

/// An idle stream sends an empty batch this often: the standby knows its
/// leader lives, and learns whether it is in sync.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A standby that has not heard its leader this long is not in sync (its
/// `/health` answers 503) and registers again.
const LEADER_SILENCE_MS: u64 = 3_000;
/// A standby that has not heard its leader this long registers again (a
/// new stream, from a snapshot).
const REREGISTER_AFTER_MS: u64 = 6_000;
/// One replication batch may take this long.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream that has failed this long is closed; the standby registers
/// again when it is back.
const STREAM_GIVE_UP: Duration = Duration::from_secs(30);
/// A read of a version not yet durable waits at most this long.
const PENDING_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct Replica {
    /// Leader: a stream per standby.
    streams: Mutex<HashMap<NodeId, Arc<Stream>>>,
    /// Leader: the `leader` znode as we last wrote it, and its version.
    /// Held across each conditional write: in-sync changes are serialized.
    znode: tokio::sync::Mutex<Option<(LeaderRecord, i32)>>,
    /// The ids in `in_sync` as we last wrote it (empty when not leading):
    /// a commit is acknowledged only once each is either waited for or out
    /// of the znode.
    in_sync_ids: Mutex<Vec<NodeId>>,
    /// A conditional write on the `leader` znode failed: another root leads.
    deposed: AtomicBool,
    pub(super) deposed_wake: Notify,
    /// The epoch this process last led (0: never).
    led_epoch: AtomicU64,
    /// Standby: the leader we follow, `None` when not a standby.
    following: Mutex<Option<Following>>,
    /// A root candidate that may not take over: why (for `/health`).
    refusing: Mutex<Option<String>>,
    /// Standby: one batch applied at a time.
    applying: tokio::sync::Mutex<()>,
    /// Standby: times it started over (wiped its store), so a read that
    /// waited can tell whether what it looked up is still there.
    starts: AtomicU64,
    /// Root: versions committed but not yet durable. Standby: versions
    /// applied that the leader has not yet said are durable.
    pending: Pending,
}

/// A set of versions not yet durable, with its lowest one readable
/// without the lock (most reads are of older versions) and a wake-up for
/// whoever waits for one to leave.
#[derive(Default)]
struct Pending {
    set: Mutex<BTreeSet<Version>>,
    /// The lowest version in `set` (`u64::MAX`: none; 0 before the first
    /// change, which only skips the shortcut).
    min: AtomicU64,
    done: Notify,
}

impl Pending {
    /// Changes the set and keeps `min` true.
    fn change<T>(&self, f: impl FnOnce(&mut BTreeSet<Version>) -> T) -> T {
        let mut set = self.set.lock();
        let out = f(&mut set);
        self.min.store(set.first().copied().unwrap_or(u64::MAX), Ordering::Release);
        out
    }

    /// [`Pending::change`] that lets versions go: wakes the waiters.
    fn release(&self, f: impl FnOnce(&mut BTreeSet<Version>)) {
        self.change(f);
        self.done.notify_waiters();
    }

    fn contains(&self, version: Version) -> bool {
        version >= self.min.load(Ordering::Acquire) && self.set.lock().contains(&version)
    }
}

/// What a commit waits for: streams and the sequence each must hold, and
/// the ids in `in_sync` with no stream waited for (they must leave first).
#[derive(Default)]
pub(super) struct Replicating {
    waits: Vec<(Arc<Stream>, u64)>,
    missing: Vec<NodeId>,
}

/// `POST /internal/standby`: a standby root asks the leader for a stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyRequest {
    pub id: NodeId,
    pub url: String,
    /// The standby keeps a commit log (`--data-dir`).
    #[serde(default)]
    pub durable: bool,
}

/// The query of `POST /internal/replicate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub session: u64,
    /// The first batch of a session: the standby starts over.
    pub first: bool,
    /// The stream sequences the batch spans (0..0: snapshot or heartbeat).
    pub from: u64,
    pub to: u64,
    /// Whether the leader counts this standby in `in_sync`.
    pub in_sync: bool,
    /// Every version up to this one is durable on every in-sync root: the
    /// standby may serve it (0: nothing said).
    pub durable: Version,
}

impl Node {
    fn replica(&self) -> &Replica {
        &self.inner.replica
    }

    // ---- read committed ----

    /// The root's next version, pending until durable. Assigned under the
    /// pending lock, so [`Node::durable_through`] never counts a version
    /// that exists but is not pending yet.
    pub(super) fn next_version(&self) -> Version {
        self.replica().pending.change(|p| {
            let version = self.inner.versions.fetch_add(1, Ordering::AcqRel) + 1;
            p.insert(version);
            version
        })
    }

    /// The leader: every version up to this one is durable.
    fn durable_through(&self) -> Version {
        let p = self.replica().pending.set.lock();
        match p.first() {
            Some(first) => first - 1,
            None => self.inner.versions.load(Ordering::Acquire),
        }
    }

    /// A standby: `version` was applied; pending unless the leader said it
    /// is durable (`durable`).
    fn pending_applied(&self, version: Version, durable: Version) {
        if version > durable {
            self.replica().pending.change(|p| p.insert(version));
        }
    }

    /// A standby: the leader says every version up to `durable` is durable.
    fn pending_through(&self, durable: Version) {
        self.replica().pending.release(|p| *p = p.split_off(&durable.saturating_add(1)));
    }

    /// Nothing is pending any more (a standby starting over: what was
    /// pending is gone; a new leader: what it holds is the truth).
    fn pending_clear(&self) {
        self.replica().pending.release(BTreeSet::clear);
    }

    /// These versions are durable (or their commit failed for good).
    pub(super) fn pending_remove(&self, versions: impl Iterator<Item = Version>) {
        self.replica().pending.release(|p| {
            for v in versions {
                p.remove(&v);
            }
        });
    }

    fn is_pending(&self, version: Version) -> bool {
        self.replica().pending.contains(version)
    }

    /// Waits until `version` (read from the root's store) is durable, so
    /// the reader cannot see a write that a failover would lose. 503 if it
    /// does not become durable in time (a deposed root's last commits).
    pub(super) async fn wait_committed(&self, version: Option<Version>) -> Result<()> {
        self.wait_durable(version, true).await
    }

    /// [`Node::wait_committed`]; `leading`: give up once deposed (a
    /// standby never leads, and its versions become durable by the word
    /// of its leader).
    async fn wait_durable(&self, version: Option<Version>, leading: bool) -> Result<()> {
        // Most reads are of durable versions: one atomic load, nothing more.
        let Some(version) = version.filter(|&v| self.is_pending(v)) else { return Ok(()) };
        let deadline = tokio::time::Instant::now() + PENDING_WAIT;
        loop {
            let done = self.replica().pending.done.notified();
            if !self.is_pending(version) {
                return Ok(());
            }
            if leading && self.is_deposed() {
                return Err(Error::Deposed);
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return Err(if leading {
                    Error::Internal(format!("version {version} did not become durable in {PENDING_WAIT:?}"))
                } else {
                    Error::NotInSync(format!(
                        "version {version} is not yet durable on every in-sync root (waited {PENDING_WAIT:?})"
                    ))
                });
            }
        }
    }

    // ---- leading ----

    /// We lead, as `rec` (written at `version`) says.
    pub(super) fn start_leading(&self, rec: LeaderRecord, version: i32) {
        let r = self.replica();
        *r.in_sync_ids.lock() = rec.in_sync.clone();
        r.led_epoch.store(rec.epoch, Ordering::Release);
        r.deposed.store(false, Ordering::Release);
        *r.following.lock() = None;
        *r.refusing.lock() = None;
        // Commits of an earlier leadership that never became durable are
        // not waited for any more (their writers were answered 503); a
        // standby's pending versions are ours now: what we hold is the
        // truth, in our log, and no reader has seen them.
        self.pending_clear();
        // Leading again in the same process: the streams go on (the
        // standbys hold what we hold), but each must join the new in_sync.
        for s in r.streams.lock().values() {
            if s.change_status(Status::InSync, Status::CatchingUp)
                || s.change_status(Status::Joining, Status::CatchingUp)
            {
                s.wake.notify_one();
            }
        }
        if let Ok(mut z) = r.znode.try_lock() {
            *z = Some((rec, version));
        } else {
            log::error!("the leader znode lock is held while taking over");
        }
    }

    /// Roots in sync (this one included) while leading; 0 otherwise.
    pub fn insync_roots(&self) -> usize {
        self.replica().in_sync_ids.lock().len()
    }

    pub fn is_deposed(&self) -> bool {
        self.replica().deposed.load(Ordering::Acquire)
    }

    /// Refuses to commit or acknowledge once deposed.
    pub(super) fn check_leading(&self) -> Result<()> {
        if self.is_deposed() {
            Err(Error::Deposed)
        } else {
            Ok(())
        }
    }

    /// Whether an ack=root write may be committed now (`--min-insync`).
    pub(super) fn insync_shortfall(&self) -> Option<(usize, usize)> {
        let (have, need) = (self.insync_roots(), self.args().min_insync as usize);
        (have < need).then_some((have, need))
    }

    fn depose(&self, why: &str) {
        if !self.is_deposed() {
            log::error!(
                "{why}: this root stops acknowledging writes and stands for election again (another root may lead)"
            );
        }
        self.stop_leading();
        self.replica().deposed_wake.notify_waiters();
    }

    /// No longer leading (deposed, or following another root): nothing
    /// waiting on a stream closed here may be acknowledged, because the
    /// flag is set first and checked after every wait.
    fn stop_leading(&self) {
        let r = self.replica();
        r.deposed.store(true, Ordering::Release);
        r.in_sync_ids.lock().clear();
        for s in r.streams.lock().drain() {
            s.1.set_status(Status::Closed);
        }
        r.pending.done.notify_waiters();
    }

    /// Rewrites the `leader` znode with `change` applied, if it is still
    /// the version we wrote last. Deposed when it is not.
    ///
    /// Every failure deposes: a write that failed with an error may still
    /// have been applied (a lost answer), so our idea of the znode is no
    /// longer certain, and only certainty lets a leader acknowledge.
    async fn change_leader_record(
        &self,
        guard: &mut tokio::sync::MutexGuard<'_, Option<(LeaderRecord, i32)>>,
        change: impl FnOnce(&mut LeaderRecord) -> bool,
    ) -> Result<()> {
        let Some((rec, version)) = guard.as_ref() else {
            self.depose("the leader znode is not ours");
            return Err(Error::Deposed);
        };
        let mut next = rec.clone();
        if !change(&mut next) {
            return Ok(());
        }
        let written = match self.zk().await {
            Ok(zk) => zk::write_leader(&zk, &self.inner.paths, &next, Some(*version)).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(Some(v)) => {
                log::info!("leader znode: in_sync {:?} (was {:?})", next.in_sync, rec.in_sync);
                *self.replica().in_sync_ids.lock() = next.in_sync.clone();
                **guard = Some((next, v));
                Ok(())
            }
            Ok(None) => {
                **guard = None;
                self.depose("the leader znode changed under us");
                Err(Error::Deposed)
            }
            Err(e) => {
                **guard = None;
                self.depose(&format!("changing the in-sync set failed ({e})"));
                Err(Error::Deposed)
            }
        }
    }

    /// Takes `s` out of the commits' wait set: out of `in_sync` in the
    /// znode first when it is there (before anything is acknowledged
    /// without it), then back to catching up. Under the znode lock, so it
    /// cannot interleave with [`Node::promote`].
    async fn demote(&self, s: &Stream) -> Result<()> {
        self.demote_id(s.id, Some(s)).await
    }

    /// [`Node::demote`] by id: out of the znode's `in_sync`, and every
    /// stream of it (`s`, and the one the leader has now) back to catching up.
    async fn demote_id(&self, id: NodeId, s: Option<&Stream>) -> Result<()> {
        let mut guard = self.replica().znode.lock().await;
        self.change_leader_record(&mut guard, |rec| {
            let before = rec.in_sync.len();
            rec.in_sync.retain(|&i| i != id);
            rec.without_log.retain(|&i| i != id);
            rec.in_sync.len() != before
        })
        .await?;
        let current = self.replica().streams.lock().get(&id).cloned();
        for s in s.into_iter().chain(current.as_deref()) {
            if s.change_status(Status::InSync, Status::CatchingUp) {
                log::warn!("standby {id} removed from the in-sync set");
            }
            s.change_status(Status::Joining, Status::CatchingUp);
        }
        Ok(())
    }

    /// Adds a caught-up standby to `in_sync`: only the stream the leader
    /// currently has for it, only while it is still joining (commits wait
    /// for it), both checked under the znode lock.
    async fn promote(&self, s: &Stream) -> Result<()> {
        let mut guard = self.replica().znode.lock().await;
        let current = self.replica().streams.lock().get(&s.id).is_some_and(|cur| cur.session == s.session);
        if !current || s.progress().status != Status::Joining {
            return Ok(());
        }
        self.change_leader_record(&mut guard, |rec| {
            if rec.in_sync.contains(&s.id) {
                return false;
            }
            rec.in_sync.push(s.id);
            if !s.durable {
                rec.without_log.push(s.id);
            }
            true
        })
        .await?;
        if s.change_status(Status::Joining, Status::InSync) {
            log::info!("standby {} is in sync", s.id);
        }
        Ok(())
    }

    /// Whether a commit concerns any standby: a stream is open, or
    /// another root is in `in_sync`.
    pub(super) fn has_standbys(&self) -> bool {
        let me = self.node_id();
        !self.replica().streams.lock().is_empty() || self.replica().in_sync_ids.lock().iter().any(|&id| Some(id) != me)
    }

    /// Queues `frames` (one commit each) on every open stream; returns the
    /// streams a commit must wait for, with the sequence to wait for. An
    /// empty `frames` waits for everything queued so far (a barrier).
    pub(super) fn replicate(&self, frames: &[Vec<u8>]) -> Replicating {
        if !self.has_standbys() {
            return Replicating::default();
        }
        let streams: Vec<Arc<Stream>> = self.replica().streams.lock().values().cloned().collect();
        let in_sync = self.replica().in_sync_ids.lock().clone();
        let me = self.node_id();
        let mut waits = Vec::new();
        for s in streams {
            match s.enqueue(frames) {
                Some(seq) => {
                    if s.progress().status.is_waited_for() {
                        waits.push((s, seq));
                    }
                }
                None if s.is_closed() => {}
                None => {
                    // Too far behind to catch up from the stream: it must
                    // leave in_sync before anything is acknowledged.
                    if s.progress().status.is_waited_for() {
                        waits.push((s, u64::MAX));
                    } else if !s.closing.swap(true, Ordering::AcqRel) {
                        log::warn!(
                            "standby {} is {} MiB behind: closing its stream (it registers again)",
                            s.id,
                            replication::MAX_QUEUED_BYTES >> 20
                        );
                        let node = self.clone();
                        self.spawn(async move {
                            let _ = node.close_stream(&s).await;
                        });
                    }
                }
            }
        }
        // In the znode's in_sync but not waited for here (its stream is
        // being replaced or closed): it must leave in_sync first.
        let missing =
            in_sync.into_iter().filter(|&id| Some(id) != me && !waits.iter().any(|(s, _)| s.id == id)).collect();
        Replicating { waits, missing }
    }

    /// Waits until every stream in `waits` holds its sequence durably. One
    /// that does not answer within `--insync-timeout` is removed from
    /// `in_sync` first (a joining one just goes back to catching up).
    /// A stream closed without leaving `in_sync` first (this root stopped
    /// leading) releases its waiters, who then find [`Node::is_deposed`].
    pub(super) async fn await_replicated(&self, r: Replicating) -> Result<()> {
        let Replicating { waits, missing } = r;
        for id in missing {
            self.demote_id(id, None).await?;
        }
        let timeout = self.args().insync_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        for (s, seq) in waits {
            if seq == u64::MAX {
                self.close_stream(&s).await?;
                continue;
            }
            let mut rx = s.subscribe();
            let reached = loop {
                let p = *rx.borrow_and_update();
                if p.acked >= seq {
                    break true;
                }
                if !p.status.is_waited_for() {
                    break false; // it left the set: confirmed below
                }
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => break false,
                }
            };
            if !reached {
                if s.progress().status.is_waited_for() {
                    log::warn!("standby {} did not acknowledge within {timeout:?}", s.id);
                }
                // Acknowledging without it needs the znode to say it is
                // not in sync (a no-op if it already says so; deposed if
                // that cannot be made sure).
                self.demote(&s).await?;
            }
        }
        Ok(())
    }

    /// Closes a stream, out of `in_sync` first (whatever its status: the
    /// znode is the truth). A failed demotion deposes, which closes it too.
    async fn close_stream(&self, s: &Stream) -> Result<()> {
        let demoted = self.demote(s).await;
        s.set_status(Status::Closed);
        let mut streams = self.replica().streams.lock();
        if streams.get(&s.id).is_some_and(|cur| cur.session == s.session) {
            streams.remove(&s.id);
        }
        demoted
    }

    /// `POST /internal/standby` at the leader: (re)starts the stream to a
    /// standby, from a snapshot. A standby already in sync leaves
    /// `in_sync` first: the new stream starts it over.
    pub async fn add_standby(&self, req: StandbyRequest) -> Result<serde_json::Value> {
        super::membership::check_peer_url(&req.url)?;
        super::membership::check_node_id(req.id)?;
        self.check_leading()?;
        let place = self.place()?;
        if !place.topology.is_root() {
            return Err(Error::NotRoot { root: place.root_url.clone() });
        }
        if req.id == place.topology.id {
            return Err(Error::BadRequest(format!("node {} is this leader's own id", req.id)));
        }
        let session = rand::random::<u64>() | 1;
        let stream = Arc::new(Stream::new(req.id, req.url.trim_end_matches('/').to_string(), session, req.durable));
        // Replace and close in one step: whatever stream this replaces is
        // closed (and out of in_sync) before the new one starts the
        // standby over, however many registrations race.
        let old = self.replica().streams.lock().insert(req.id, stream.clone());
        if let Some(old) = old {
            self.close_stream(&old).await?;
        } else {
            // No stream, but the znode may still list it (a stream that
            // ended without leaving): out first.
            self.demote(&stream).await?;
        }
        log::info!("standby {} at {} joins: streaming a snapshot, then every commit", req.id, req.url);
        self.spawn(self.clone().run_stream(stream));
        Ok(serde_json::json!({ "session": session, "epoch": self.epoch() }))
    }

    /// The sender of one stream: the snapshot (taken after the stream was
    /// opened, so every commit is in one or the other), then the queue.
    async fn run_stream(self, s: Arc<Stream>) {
        let snap = self.snapshot_source();
        let batches = replication::snapshot_batches(self.epoch(), &snap.records, &snap.write_ids);
        drop(snap);
        // Each batch says what is durable as it leaves.
        let info = |first, from, to, in_sync| BatchInfo {
            session: s.session,
            first,
            from,
            to,
            in_sync,
            durable: self.durable_through(),
        };
        for (i, body) in batches.into_iter().enumerate() {
            if !self.send_until_taken(&s, info(i == 0, 0, 0, false), body).await {
                return;
            }
        }
        let mut told = 0;
        loop {
            if s.is_closed() || self.is_shutting_down() {
                return;
            }
            let status = s.progress().status;
            let in_sync = status == Status::InSync;
            let batch = s.peek_batch();
            let Some(batch) = batch else {
                if status == Status::CatchingUp && s.change_status(Status::CatchingUp, Status::Joining) {
                    // Commits now wait for it; once it holds all that came
                    // before (up to this target), it can join in_sync.
                    s.join_target.store(s.last_queued(), Ordering::Release);
                    if self.maybe_promote(&s).await {
                        continue;
                    }
                }
                // An empty batch when idle (the standby knows we live)
                // and as soon as more is durable (it may serve it).
                let durable_moved = self.replica().pending.done.notified();
                let beat = self.durable_through() > told
                    || tokio::select! {
                        _ = s.wake.notified() => false,
                        _ = tokio::time::sleep(HEARTBEAT) => true,
                        _ = durable_moved => self.durable_through() > told,
                    };
                if beat {
                    let last = s.progress().acked;
                    let beat = info(false, last, last, in_sync);
                    if !self.send_until_taken(&s, beat, Vec::new()).await {
                        return;
                    }
                    told = beat.durable;
                }
                continue;
            };
            let sent = info(false, batch.first, batch.last, in_sync);
            if !self.send_until_taken(&s, sent, batch.body).await {
                return;
            }
            told = sent.durable;
            s.acked(batch.last);
            self.maybe_promote(&s).await;
        }
    }

    /// Promotes a joining stream once it holds everything queued before it
    /// began joining (what came later, commits waited for). True if it
    /// tried.
    async fn maybe_promote(&self, s: &Stream) -> bool {
        let p = s.progress();
        if p.status != Status::Joining || p.acked < s.join_target.load(Ordering::Acquire) {
            return false;
        }
        if let Err(e) = self.promote(s).await {
            log::warn!("adding standby {} to the in-sync set: {e}", s.id);
        }
        true
    }

    /// Sends one batch until the standby takes it; false when the stream
    /// ended (closed, refused, or failing for [`STREAM_GIVE_UP`]). A
    /// standby in sync that keeps failing leaves `in_sync` after
    /// `--insync-timeout`, whether or not a commit waits for it.
    async fn send_until_taken(&self, s: &Arc<Stream>, info: BatchInfo, body: Vec<u8>) -> bool {
        let body = bytes::Bytes::from(body);
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            if s.is_closed() || self.is_shutting_down() || self.is_deposed() {
                return false;
            }
            match self.send_batch(s, info, body.clone()).await {
                Ok(()) => return true,
                Err(e @ Error::NotStandby) => {
                    // A root at a newer epoch, or no longer a standby: if
                    // it is in sync, only a conditional write can tell
                    // whether we still lead.
                    log::warn!("standby {} refused the stream: {e}", s.id);
                    let _ = self.close_stream(s).await;
                    return false;
                }
                Err(e) => {
                    let failing = started.elapsed();
                    if failing >= self.args().insync_timeout && s.progress().status == Status::InSync {
                        log::warn!("standby {} unreachable for {failing:?}: {e}", s.id);
                        if self.demote(s).await.is_err() {
                            return false;
                        }
                    }
                    if failing >= STREAM_GIVE_UP {
                        log::warn!("closing the stream to standby {} after {failing:?}: {e}", s.id);
                        let _ = self.close_stream(s).await;
                        return false;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn send_batch(&self, s: &Stream, info: BatchInfo, body: bytes::Bytes) -> Result<()> {
        let url = format!(
            "{}/internal/replicate?session={}&first={}&from={}&to={}&in_sync={}&durable={}",
            s.url, info.session, info.first, info.from, info.to, info.in_sync, info.durable
        );
        let me = self.place()?.topology.id;
        let resp = self
            .request(&self.inner.http, reqwest::Method::POST, &url)
            .header(super::FROM_HEADER, me)
            .timeout(BATCH_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| Error::parent_unreachable(&s.url, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let code = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        Err(match code.as_str() {
            // A newer epoch there, or no standby any more: it is not ours
            // to stream to (whether we still lead, the znode decides).
            "stale_epoch" | "not_standby" => Error::NotStandby,
            _ => Error::Upstream { url, status: status.as_u16(), body: text },
        })
    }

    // ---- standing by ----

    /// Whether this root may take over from the leader `rec` describes:
    /// only a member of `in_sync` that still holds what it held then (its
    /// commit log, or this very process: the old leader, or a standby the
    /// leader said is in sync). Or, when nobody holding that data can come
    /// back (every in-sync root kept no log, and none of them lives in the
    /// process that held it), anyone: what they held is lost either way.
    /// `alive`: the ids with a `live/` znode.
    pub(super) fn may_take_over(
        &self,
        rec: &LeaderRecord,
        me: NodeId,
        alive: &std::collections::HashSet<NodeId>,
    ) -> bool {
        let led_it = rec.id == me && self.replica().led_epoch.load(Ordering::Acquire) == rec.epoch;
        let followed_in_sync =
            self.replica().following.lock().as_ref().is_some_and(|f| f.in_sync && f.epoch == rec.epoch);
        if rec.in_sync.contains(&me) && (led_it || followed_in_sync || self.log().is_some()) {
            return true;
        }
        let lost = rec.in_sync.iter().all(|id| rec.without_log.contains(id) && (*id == me || !alive.contains(id)));
        if lost {
            log::warn!(
                "every in-sync root of epoch {} ({:?}) kept no commit log and is gone: taking over without \
                 their data (give roots --data-dir to keep it)",
                rec.epoch,
                rec.in_sync
            );
        }
        lost
    }

    /// While waiting for our turn in the election: follow whoever leads,
    /// re-registering when the root znode changes or the leader falls
    /// silent. Returns only when the node shuts down.
    pub(super) async fn follow_leader(&self, zk: &Client, me: NodeId) {
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
        let body = StandbyRequest { id: me, url: self.url().to_string(), durable: self.log().is_some() };
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
    /// over (its store is replaced by the leader's snapshot).
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
    pub(super) fn stop_following(&self) {
        *self.replica().following.lock() = None;
    }

    /// Notes why this candidate may not take over (`None`: it may).
    pub(super) fn set_refusing(&self, why: Option<String>) {
        *self.replica().refusing.lock() = why;
    }

    /// Why this root candidate waits without leading or following, if so.
    pub fn refusing(&self) -> Option<String> {
        self.replica().refusing.lock().clone()
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
    pub async fn standby_get(&self, key: &str) -> Result<super::Found> {
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
                    Ok(super::Found { version, value, expires_at, cache: super::CacheStatus::Hit })
                }
                _ => Err(Error::NotFound(key.to_string())),
            };
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
        if info.first {
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
                Entry::WriteOutcome(id, version) => self.restore_write_outcome(id, version),
                Entry::Epoch(e) => max_epoch = max_epoch.max(e),
                Entry::SnapshotHeader { .. } | Entry::SnapshotEnd { .. } => {}
            }
        }
        self.inner.versions.fetch_max(max_version, Ordering::AcqRel);
        self.inner.epoch.fetch_max(max_epoch, Ordering::AcqRel);
        if let Some(log) = self.log() {
            if !body.is_empty() {
                log.append_frames(body.to_vec(), records, max_version, max_epoch)
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?;
                self.maybe_snapshot(log);
            }
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
            self.restore_write_outcome(id, update.version);
        }
    }

    /// A new stream: forget what we held (store, write outcomes, and on
    /// disk, behind an empty snapshot) and take the leader's instead.
    async fn start_over(&self, f: &mut Following, from: NodeId, epoch: u64, session: u64) -> Result<()> {
        log::info!("stream session {session} from leader {from} (epoch {epoch}): starting over from its snapshot");
        // Not in sync (no reads, /health 503) from before the wipe on.
        if let Some(cur) = self.replica().following.lock().as_mut() {
            cur.in_sync = false;
        }
        self.replica().starts.fetch_add(1, Ordering::AcqRel);
        self.inner.store.wipe();
        self.pending_clear();
        *self.inner.outcomes.lock() = super::write::Outcomes::default();
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

    /// The id of a root candidate: `--id`, else the one kept in its data
    /// directory, else a new one (kept there for the next start).
    pub(super) async fn root_id(&self, zk: &Client) -> Result<NodeId> {
        let paths = &self.inner.paths;
        if let Some(id) = self.node_id() {
            zk::reserve_id(zk, paths, id).await?;
            return Ok(id);
        }
        let file = self.log().map(|l| l.dir().join("node_id"));
        if let Some(file) = &file {
            if let Ok(text) = std::fs::read_to_string(file) {
                if let Ok(id) = text.trim().parse::<NodeId>() {
                    zk::reserve_id(zk, paths, id).await?;
                    return Ok(id);
                }
                log::warn!("{} holds {text:?}, not a node id: taking a new id", file.display());
            }
        }
        let id = zk::allocate_id(zk, paths).await?;
        if let Some(file) = &file {
            if let Err(e) = std::fs::write(file, format!("{id}\n")) {
                log::warn!("keeping our id in {}: {e}", file.display());
            }
        }
        Ok(id)
    }
}
