//! The node's side of standby roots ([`crate::replication`]).
//!
//! Leader: a [`Stream`] per standby and its sender task (snapshot, or
//! the [`Tail`] after the position the standby holds, then the commits
//! in order, heartbeats when idle); the `leader` znode's
//! in-sync set, changed only by conditional writes under one lock; and
//! the wait in `make_durable` for every stream a commit must reach. A
//! failed conditional write means another root took over: this one is
//! deposed and acknowledges nothing more.
//!
//! Standby: registers with the leader (`POST /internal/standby`, saying
//! the stream [`Position`] it holds), applies the stream (`POST
//! /internal/replicate`) to its store and its own log (with the position
//! each batch reaches), answers with what it holds durably; serves reads
//! once in sync.
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
//!
//! Split by side: `leader` is the leader's sender side (streams, the
//! in-sync set, the wait for standbys); `standby` the standby's apply side
//! (registering, applying batches, reads and forwarded writes);
//! `takeover` who may take over, and a candidate's id. This file holds the
//! shared state ([`Replica`]) and the pending versions of read committed;
//! it must not talk to ZooKeeper or to another root.

mod leader;
mod standby;
mod takeover;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::Node;
use crate::error::{Error, Result};
use crate::replication::{Following, Position, Stream, Tail};
use crate::store::{NodeId, Version};
use crate::tree::zk::LeaderRecord;

/// A read of a version not yet durable waits at most this long.
const PENDING_WAIT: Duration = Duration::from_secs(5);

pub(super) struct Replica {
    /// Leader: a stream per standby.
    streams: Mutex<HashMap<NodeId, Arc<Stream>>>,
    /// Leader: numbers every frame it streams and keeps the newest
    /// (`--replication-tail`). Held while frames are numbered and queued
    /// on every stream, and while a stream is added: each stream gets
    /// every frame after its start, once, in the tail's order. Taken
    /// before `streams`, never inside it.
    tail: Mutex<Tail>,
    /// Standby: the leader's stream position its store (and log) holds;
    /// `None` while taking a snapshot, and on a root that led since.
    held: Mutex<Option<Position>>,
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
    /// Leader: stopping (SIGTERM) and handing over to the in-sync standbys:
    /// no new commit, and nobody leaves `in_sync` (see [`Node::step_down`]).
    stepping_down: AtomicBool,
    /// The epoch this process last led (0: never).
    led_epoch: AtomicU64,
    /// Standby: the leader we follow, `None` when not a standby.
    following: Mutex<Option<Following>>,
    /// A root candidate that may not take over: why (for `/health`).
    refusing: Mutex<Option<String>>,
    /// Standby: one batch applied at a time.
    applying: tokio::sync::Mutex<()>,
    /// Standby: its clients' writes go to the leader one at a time, in the
    /// order they came, each until its outcome is known.
    forwarding: Arc<tokio::sync::Mutex<()>>,
    /// Standby: times it started over (wiped its store), so a read that
    /// waited can tell whether what it looked up is still there.
    starts: AtomicU64,
    /// Root: versions committed but not yet durable. Standby: versions
    /// applied that the leader has not yet said are durable.
    pending: Pending,
}

impl Replica {
    /// `tail_bytes`: `--replication-tail`.
    pub(super) fn new(tail_bytes: u64) -> Replica {
        Replica {
            streams: Mutex::default(),
            tail: Mutex::new(Tail::new(usize::try_from(tail_bytes).unwrap_or(usize::MAX))),
            held: Mutex::default(),
            znode: tokio::sync::Mutex::default(),
            in_sync_ids: Mutex::default(),
            deposed: AtomicBool::default(),
            deposed_wake: Notify::new(),
            stepping_down: AtomicBool::default(),
            led_epoch: AtomicU64::default(),
            following: Mutex::default(),
            refusing: Mutex::default(),
            applying: tokio::sync::Mutex::default(),
            forwarding: Arc::default(),
            starts: AtomicU64::default(),
            pending: Pending::default(),
        }
    }
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
    /// Every version up to this one is pending too (0: none): a standby
    /// restarted from its log does not know which of what it holds its
    /// leader had made durable, until the leader says so.
    below: AtomicU64,
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
        version <= self.below.load(Ordering::Acquire)
            || (version >= self.min.load(Ordering::Acquire) && self.set.lock().contains(&version))
    }
}

/// `POST /internal/standby`: a standby root asks the leader for a stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyRequest {
    pub id: NodeId,
    pub url: String,
    /// The standby keeps a commit log (`--data-dir`).
    #[serde(default)]
    pub durable: bool,
    /// The leader's stream position the standby holds (its store, and its
    /// log if durable): the leader resumes from there if it can.
    #[serde(default)]
    pub position: Option<Position>,
}

/// The query of `POST /internal/replicate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub session: u64,
    /// The first batch of a session: the standby starts over (from a
    /// snapshot), unless `resume` says otherwise.
    pub first: bool,
    /// The first batch of a resumed session (always empty): the standby
    /// must hold the leader's stream up to this sequence, and keeps what
    /// it holds; if it does not, it refuses (`cannot_resume`).
    pub resume: Option<u64>,
    /// A batch of the snapshot a session starts with: the standby holds
    /// no position in the leader's stream until a batch after it.
    pub snapshot: bool,
    /// The leader's stream sequences the batch spans (0..0 in a snapshot;
    /// from = to: a heartbeat, saying the standby holds up to there).
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

    /// How many times this node, as a standby, started over (wiped its
    /// store for a new stream): a snapshot that sees it change while it
    /// reads the store holds part of the old store and part of nothing.
    pub(in crate::node) fn starts_over(&self) -> u64 {
        self.replica().starts.load(Ordering::Acquire)
    }

    /// A standby: the leader's stream position its store holds.
    pub(super) fn held_position(&self) -> Option<Position> {
        *self.replica().held.lock()
    }

    /// A root restarted from its log: what it recovered is the stream of
    /// the leader of `position.epoch` up to there (and, until that leader
    /// says so, not known to be durable on every in-sync root).
    pub(super) fn restore_position(&self, position: Option<Position>, max_version: Version) {
        if position.is_some() {
            self.pending_below(max_version);
        }
        *self.replica().held.lock() = position;
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

    /// The leader: waits until every version up to `version` is durable
    /// (a slot move, after its freeze: nothing committed before it is
    /// still on its way to disk when the slot's last copy is taken).
    pub(super) async fn wait_durable_through(&self, version: Version) -> Result<()> {
        let deadline = tokio::time::Instant::now() + PENDING_WAIT;
        loop {
            let done = self.replica().pending.done.notified();
            if self.durable_through() >= version {
                return Ok(());
            }
            self.check_leading()?;
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return Err(Error::Internal(format!(
                    "commits up to version {version} not durable in {PENDING_WAIT:?}"
                )));
            }
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
        let below = &self.replica().pending.below;
        let _ = below.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| (b <= durable).then_some(0));
        self.replica().pending.release(|p| *p = p.split_off(&durable.saturating_add(1)));
    }

    /// A standby restarted from its log: everything it holds, up to
    /// `version`, is pending until its leader says it is durable.
    pub(super) fn pending_below(&self, version: Version) {
        self.replica().pending.below.fetch_max(version, Ordering::AcqRel);
    }

    /// Nothing is pending any more (a standby starting over: what was
    /// pending is gone; a new leader: what it holds is the truth).
    fn pending_clear(&self) {
        self.replica().pending.below.store(0, Ordering::Release);
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

    pub(super) fn is_pending(&self, version: Version) -> bool {
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
}
