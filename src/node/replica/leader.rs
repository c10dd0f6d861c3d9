//! The leader's sender side of standby roots: a [`Stream`] per standby
//! and its sender task (snapshot, or the tail after what the standby
//! holds, then the commits in order, heartbeats when idle), the bounded
//! tail of numbered frames, the `leader` znode's in-sync set, changed only by
//! conditional writes under one lock, and the wait in `make_durable` for
//! every stream a commit must reach.
//!
//! Must not acknowledge anything once deposed: a failed conditional write
//! means another root took over.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{BatchInfo, StandbyRequest};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::replication::{self, Status, Stream};
use crate::store::NodeId;
use crate::tree::zk::{self, LeaderRecord};

/// An idle stream sends an empty batch this often: the standby knows its
/// leader lives, and learns whether it is in sync.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// One replication batch may take this long.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream that has failed this long is closed; the standby registers
/// again when it is back.
const STREAM_GIVE_UP: Duration = Duration::from_secs(30);

/// How sending one batch ended.
enum Sent {
    Taken,
    /// The stream ended: closed, refused, or failing too long.
    Ended,
    /// The standby refused to resume from the position it registered
    /// with (the error's text).
    CannotResume(String),
}

/// What a commit waits for: streams and the sequence each must hold, and
/// the ids in `in_sync` with no stream waited for (they must leave first).
#[derive(Default)]
pub(in crate::node) struct Replicating {
    waits: Vec<(Arc<Stream>, u64)>,
    missing: Vec<NodeId>,
}

impl Node {
    /// We lead, as `rec` (written at `version`) says.
    pub(in crate::node) fn start_leading(&self, rec: LeaderRecord, version: i32) {
        let r = self.replica();
        *r.in_sync_ids.lock() = rec.in_sync.clone();
        r.led_epoch.store(rec.epoch, Ordering::Release);
        r.deposed.store(false, Ordering::Release);
        *r.following.lock() = None;
        *r.refusing.lock() = None;
        // Our own stream from here: a standby's position of any other
        // epoch is not found in it. What we held as a standby is now
        // our own history, no position in anyone's stream.
        r.tail.lock().begin(rec.epoch);
        *r.held.lock() = None;
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

    /// Before a consistent read is answered at the root: confirms with
    /// ZooKeeper that this root still leads (`sync`, then the `leader`
    /// znode names it in its epoch). A leader paused past its session that
    /// has not noticed yet would otherwise answer from a store missing what
    /// the next leader acknowledged meanwhile (guarantee 4; found by the
    /// chaos test). A write acknowledged before the read began was taken
    /// by a leader that had changed the znode by then. 503 `not_leader`
    /// (nothing done: the failover wait holds the read) when it cannot.
    pub(in crate::node) async fn confirm_leading(&self) -> Result<()> {
        self.check_accepting()?;
        let me = self.node_id();
        let epoch = self.epoch();
        let confirmed = async {
            let zk = self.zk().await.ok()?;
            let paths = &self.inner.paths;
            zk.sync(&paths.leader()).await.ok()?;
            let (rec, _) = crate::tree::zk::read_leader(&zk, paths).await.ok()??;
            Some(Some(rec.id) == me && rec.epoch == epoch)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(2), confirmed).await {
            Ok(Some(true)) => Ok(()),
            _ => Err(Error::NotLeading),
        }
    }

    /// Refuses to commit or acknowledge once deposed.
    pub(in crate::node) fn check_leading(&self) -> Result<()> {
        if self.is_deposed() {
            Err(Error::Deposed)
        } else {
            Ok(())
        }
    }

    /// Refuses a new commit: deposed, or handing over ([`Node::step_down`]).
    /// The writer's node sends it again, to the next leader.
    pub(in crate::node) fn check_accepting(&self) -> Result<()> {
        if self.is_deposed() || self.replica().stepping_down.load(Ordering::Acquire) {
            // Nothing done yet: the node holding the request may try again
            // at the next leader (`Error::awaits_leader`).
            return Err(Error::NotLeading);
        }
        Ok(())
    }

    /// A planned stop of the leader (SIGTERM), before it leaves the tree:
    /// with an in-sync standby, stop taking commits, let what was committed
    /// reach every in-sync standby (a barrier, within `--insync-timeout`),
    /// and keep them all in `in_sync`, so that once this root withdraws its
    /// candidacy ([`Node::leave`]) the next one takes over at once, not
    /// when this process's ZooKeeper session runs out (as Kafka's
    /// controlled shutdown moves leadership before the broker stops).
    /// Without a standby in sync there is nobody to hand over to: nothing
    /// changes. Returns whether it handed over.
    pub(in crate::node) async fn step_down(&self) -> bool {
        let standbys: Vec<NodeId> =
            self.replica().in_sync_ids.lock().iter().copied().filter(|&id| Some(id) != self.node_id()).collect();
        if self.is_deposed() || standbys.is_empty() {
            return false;
        }
        self.replica().stepping_down.store(true, Ordering::Release);
        log::info!(
            "stopping: handing over to the in-sync standby roots {standbys:?}; new writes go to the next leader"
        );
        if let Err(e) = self.await_replicated(self.replicate(&[])).await {
            // What was acknowledged is on every in-sync root already; only
            // commits still in flight (never acknowledged) may be missing.
            log::warn!("handing over: the last commits did not all reach the standbys ({e})");
        }
        true
    }

    /// Whether this leader streams to standby `id` now.
    pub(in crate::node) fn streams_to(&self, id: NodeId) -> bool {
        self.replica().streams.lock().contains_key(&id)
    }

    /// Whether an ack=root write may be committed now (`--min-insync`).
    pub(in crate::node) fn insync_shortfall(&self) -> Option<(usize, usize)> {
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
    pub(super) fn stop_leading(&self) {
        let r = self.replica();
        r.deposed.store(true, Ordering::Release);
        r.in_sync_ids.lock().clear();
        r.tail.lock().clear();
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
        if self.replica().stepping_down.load(Ordering::Acquire) {
            // Handing over: a standby that does not answer stays in sync
            // (it may be the next leader); what waited for it is not
            // acknowledged.
            return Err(Error::Deposed);
        }
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

    /// Whether a commit concerns any standby: a stream is open, another
    /// root is in `in_sync`, or a standby registered this epoch (its
    /// commits go to the tail, for when it returns).
    pub(in crate::node) fn has_standbys(&self) -> bool {
        let me = self.node_id();
        !self.replica().streams.lock().is_empty()
            || self.replica().in_sync_ids.lock().iter().any(|&id| Some(id) != me)
            || self.replica().tail.lock().is_kept()
    }

    /// Numbers `frames` (one commit each) in the tail and queues them on
    /// every open stream, in one step (every stream gets them in the
    /// tail's order); returns the streams a commit must wait for, with the
    /// sequence to wait for. An empty `frames` waits for everything queued
    /// so far (a barrier).
    pub(in crate::node) fn replicate(&self, frames: &[Vec<u8>]) -> Replicating {
        if !self.has_standbys() {
            return Replicating::default();
        }
        let queued: Vec<(Arc<Stream>, Option<u64>)> = {
            let mut tail = self.replica().tail.lock();
            let numbered = tail.push(frames);
            let streams: Vec<Arc<Stream>> = self.replica().streams.lock().values().cloned().collect();
            streams
                .into_iter()
                .map(|s| {
                    let queued = s.enqueue(&numbered);
                    (s, queued)
                })
                .collect()
        };
        let in_sync = self.replica().in_sync_ids.lock().clone();
        let me = self.node_id();
        let mut waits = Vec::new();
        for (s, queued) in queued {
            match queued {
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
    pub(in crate::node) async fn await_replicated(&self, r: Replicating) -> Result<()> {
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
            let reached = loop {
                let p = s.progress();
                if p.acked >= seq {
                    break true;
                }
                if !p.status.is_waited_for() {
                    break false; // it left the set: confirmed below
                }
                // Woken only when `seq` is reached or the stream is no
                // longer waited for.
                let Some(woken) = s.wait_for(seq) else { continue };
                match tokio::time::timeout_at(deadline, woken).await {
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
    /// standby: from the tail after the position it holds when the tail
    /// has all of that ([`replication::Tail::since`]), else from a
    /// snapshot. A standby already in sync leaves `in_sync` first: the new
    /// stream starts it over.
    pub async fn add_standby(&self, req: StandbyRequest) -> Result<serde_json::Value> {
        crate::node::membership::check_peer_url(&req.url)?;
        crate::node::membership::check_node_id(req.id)?;
        self.check_accepting()?;
        let place = self.place()?;
        if !place.topology.is_root() {
            return Err(Error::NotRoot { root: place.root_url.clone() });
        }
        if req.id == place.topology.id {
            return Err(Error::BadRequest(format!("node {} is this leader's own id", req.id)));
        }
        let session = rand::random::<u64>() | 1;
        let url = req.url.trim_end_matches('/').to_string();
        // Made and added under the tail lock: it gets every frame numbered
        // after its start, and none twice. Whatever stream this replaces
        // is closed (and out of in_sync) before the new one starts the
        // standby over, however many registrations race.
        let (stream, old) = {
            let mut tail = self.replica().tail.lock();
            tail.keep();
            let resumable = req.position.map(|from| (from, tail.since(from)));
            let stream = match resumable {
                Some((from, Ok(backlog))) => {
                    let bytes: usize = backlog.iter().map(|(_, f)| f.len()).sum();
                    log::info!(
                        "standby {} at {} returns holding epoch {}'s stream up to {}: resuming it from the tail \
                         ({} frames, {bytes} bytes), then every commit",
                        req.id,
                        req.url,
                        from.epoch,
                        from.seq,
                        backlog.len()
                    );
                    Stream::resuming(req.id, url, session, req.durable, from, backlog)
                }
                Some((from, Err(why))) => {
                    log::info!(
                        "standby {} at {} holds epoch {}'s stream up to {}, which the tail cannot resume \
                         ({why}): streaming a snapshot, then every commit",
                        req.id,
                        req.url,
                        from.epoch,
                        from.seq
                    );
                    Stream::new(req.id, url, session, req.durable, tail.position().seq)
                }
                None => {
                    log::info!("standby {} at {} joins: streaming a snapshot, then every commit", req.id, req.url);
                    Stream::new(req.id, url, session, req.durable, tail.position().seq)
                }
            };
            let stream = Arc::new(stream);
            let old = self.replica().streams.lock().insert(req.id, stream.clone());
            (stream, old)
        };
        if let Some(old) = old {
            self.close_stream(&old).await?;
        } else {
            // No stream, but the znode may still list it (a stream that
            // ended without leaving): out first.
            self.demote(&stream).await?;
        }
        let resume = stream.resume.is_some();
        self.spawn(self.clone().run_stream(stream));
        Ok(serde_json::json!({ "session": session, "epoch": self.epoch(), "resume": resume }))
    }

    /// The sender of one stream: its start (the tail's backlog after the
    /// standby's position, or, when it cannot resume from there, a
    /// snapshot), then the queue.
    async fn run_stream(self, s: Arc<Stream>) {
        // Each batch says what is durable as it leaves.
        let info = |first, from, to, in_sync| BatchInfo {
            session: s.session,
            first,
            resume: None,
            snapshot: false,
            from,
            to,
            in_sync,
            durable: self.durable_through(),
        };
        let resumed = match s.resume {
            Some(from) => {
                let hello = BatchInfo { resume: Some(from.seq), ..info(true, from.seq, from.seq, false) };
                match self.send_until_taken(&s, hello, Vec::new()).await {
                    Sent::Taken => true,
                    Sent::CannotResume(why) => {
                        log::info!("standby {} cannot resume ({why}): streaming a snapshot instead", s.id);
                        false
                    }
                    Sent::Ended => return,
                }
            }
            None => false,
        };
        if !resumed && !self.stream_snapshot(&s, &info).await {
            return;
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
                    if !matches!(self.send_until_taken(&s, beat, Vec::new()).await, Sent::Taken) {
                        return;
                    }
                    told = beat.durable;
                }
                continue;
            };
            let sent = info(false, batch.first, batch.last, in_sync);
            let kind = if batch.first <= s.backlog_through.load(Ordering::Acquire) { "tail" } else { "stream" };
            let bytes = batch.body.len();
            if !matches!(self.send_until_taken(&s, sent, batch.body).await, Sent::Taken) {
                return;
            }
            self.inner.metrics.replication_sent(kind, bytes);
            told = sent.durable;
            s.acked(batch.last);
            self.maybe_promote(&s).await;
        }
    }

    /// Starts a stream with a snapshot: the standby starts over. Every
    /// frame numbered so far is in the store the snapshot is taken from
    /// (a commit is stored before it is numbered), so the queue keeps
    /// only what comes after; the standby then holds up to there. False
    /// when the stream ended.
    async fn stream_snapshot(&self, s: &Arc<Stream>, info: &impl Fn(bool, u64, u64, bool) -> BatchInfo) -> bool {
        let cut = self.replica().tail.lock().position().seq;
        s.drop_through(cut);
        s.backlog_through.store(0, Ordering::Release);
        let snap = self.snapshot_source();
        let batches = match replication::snapshot_batches(self.epoch(), snap) {
            Ok(batches) => batches,
            Err(e) => {
                log::warn!("snapshot for a standby not sent: {e}");
                return false;
            }
        };
        for (i, body) in batches.into_iter().enumerate() {
            let bytes = body.len();
            let batch = BatchInfo { snapshot: true, ..info(i == 0, 0, 0, false) };
            if !matches!(self.send_until_taken(s, batch, body).await, Sent::Taken) {
                return false;
            }
            self.inner.metrics.replication_sent("snapshot", bytes);
        }
        s.acked(cut);
        true
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

    /// Sends one batch until the standby takes it. Ended: the stream
    /// ended (closed, refused, or failing for [`STREAM_GIVE_UP`]). A
    /// standby in sync that keeps failing leaves `in_sync` after
    /// `--insync-timeout`, whether or not a commit waits for it.
    async fn send_until_taken(&self, s: &Arc<Stream>, info: BatchInfo, body: Vec<u8>) -> Sent {
        let body = bytes::Bytes::from(body);
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            if s.is_closed() || self.is_shutting_down() || self.is_deposed() {
                return Sent::Ended;
            }
            match self.send_batch(s, info, body.clone()).await {
                Ok(()) => return Sent::Taken,
                // It does not hold what it said it held (it started over
                // meanwhile): a snapshot, on the same stream.
                Err(Error::CannotResume(why)) if info.resume.is_some() => return Sent::CannotResume(why),
                Err(e @ Error::NotStandby) => {
                    // A root at a newer epoch, or no longer a standby: if
                    // it is in sync, only a conditional write can tell
                    // whether we still lead.
                    log::warn!("standby {} refused the stream: {e}", s.id);
                    let _ = self.close_stream(s).await;
                    return Sent::Ended;
                }
                Err(e) => {
                    let failing = started.elapsed();
                    if failing >= self.args().insync_timeout && s.progress().status == Status::InSync {
                        log::warn!("standby {} unreachable for {failing:?}: {e}", s.id);
                        if self.demote(s).await.is_err() {
                            return Sent::Ended;
                        }
                    }
                    if failing >= STREAM_GIVE_UP {
                        log::warn!("closing the stream to standby {} after {failing:?}: {e}", s.id);
                        let _ = self.close_stream(s).await;
                        return Sent::Ended;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn send_batch(&self, s: &Stream, info: BatchInfo, body: bytes::Bytes) -> Result<()> {
        let mut url = format!(
            "{}/internal/replicate?session={}&first={}&from={}&to={}&in_sync={}&durable={}",
            s.url, info.session, info.first, info.from, info.to, info.in_sync, info.durable
        );
        if let Some(resume) = info.resume {
            url.push_str(&format!("&resume={resume}"));
        }
        if info.snapshot {
            url.push_str("&snapshot=true");
        }
        let me = self.place()?.topology.id;
        let resp = self
            .request(&self.inner.http, reqwest::Method::POST, &url)
            .header(crate::node::FROM_HEADER, me)
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
            "cannot_resume" => Error::CannotResume(text),
            _ => Error::Upstream { url, status: status.as_u16(), body: text },
        })
    }
}
