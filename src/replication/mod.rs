//! Standby roots (DESIGN.md "Root failover"): the leader's ordered stream
//! to each standby, and the in-sync bookkeeping both sides keep. Pure
//! state and encoding: no HTTP, no ZooKeeper (the node sends the batches,
//! `tree::zk` holds the `leader` znode's conditional writes).
//!
//! One [`Stream`] per standby: a FIFO of log frames (records exactly as
//! the commit log stores them), each with a sequence number of that
//! stream. The node's sender task for the stream takes the head as a
//! batch, sends it (one batch in flight: the order holds, and a slow
//! standby slows only its own stream), and records the standby's
//! acknowledgement, the highest sequence it holds durably. Sequences are
//! the leader's, not the stream's: the leader of an epoch numbers every
//! frame it streams (a [`Position`] is the epoch and a sequence), in one
//! order for every stream, and keeps the newest of them in a bounded
//! [`Tail`] (`--replication-tail`). A stream begins either with a
//! snapshot of the leader's store (the standby drops whatever it held, a
//! returning old leader's unreplicated commits included), or, when the
//! standby holds the leader's stream of this very epoch up to a position
//! the tail still follows on from, with the tail after that position.
//!
//! The stream's status says whether a commit waits for it:
//! [`Status::CatchingUp`] (no), [`Status::Joining`] (yes, and a timeout
//! only sends it back to catching up), [`Status::InSync`] (yes; it is in
//! the `leader` znode's `in_sync`, and a timeout removes it there first).
//! The same stream shape serves pushes to children later (one ordered
//! stream per peer instead of a request per batch).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::log::codec::{self, Entry};
pub use crate::log::Position;
use crate::log::Record;
use crate::store::{NodeId, WriteId};

/// Most bytes of frames one batch carries.
pub const BATCH_BYTES: usize = 4 << 20;
/// Most bytes a stream may hold unsent: past it the standby is too far
/// behind to catch up from the stream; it is dropped and rejoins (from
/// the tail if the tail still covers it, else from a snapshot).
pub const MAX_QUEUED_BYTES: usize = 256 << 20;

/// Whether the leader's commits wait for this stream's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Sending the snapshot or a backlog: commits do not wait.
    CatchingUp,
    /// Caught up; commits wait for it while the leader adds it to
    /// `in_sync` (a timeout sends it back to catching up).
    Joining,
    /// In the `leader` znode's `in_sync`: every commit waits for it.
    InSync,
    /// Closed: removed from `in_sync` if it was there, sender stopped.
    Closed,
}

impl Status {
    /// Whether a commit waits for this stream's acknowledgement.
    pub fn is_waited_for(self) -> bool {
        matches!(self, Status::Joining | Status::InSync)
    }
}

/// What the leader knows of one standby's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Highest stream sequence the standby holds durably (0: none yet).
    pub acked: u64,
    pub status: Status,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// Sequence of the last frame queued (or, before any, where the
    /// stream starts).
    last: u64,
}

/// A stream's progress with the commits waiting on it, under one lock: a
/// change and the wake-ups it owes are decided together.
struct Watched {
    now: Progress,
    /// By the sequence each waits for: an acknowledgement wakes only those
    /// it reaches (a watch woke every waiter at each one), a status no
    /// longer waited for wakes them all.
    waiters: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
}

impl Watched {
    /// Changes the progress with `change` (true if it did), and wakes the
    /// waiters the new progress answers.
    fn change(&mut self, change: impl FnOnce(&mut Progress) -> bool) -> bool {
        if !change(&mut self.now) {
            return false;
        }
        let woken = if self.now.status.is_waited_for() {
            let later = self.waiters.split_off(&self.now.acked.saturating_add(1));
            std::mem::replace(&mut self.waiters, later)
        } else {
            std::mem::take(&mut self.waiters)
        };
        for tx in woken.into_values().flatten() {
            let _ = tx.send(());
        }
        true
    }
}

/// The leader's ordered stream to one standby.
pub struct Stream {
    pub id: NodeId,
    pub url: String,
    /// Distinguishes this stream from earlier ones to the same standby.
    pub session: u64,
    /// The standby keeps a commit log.
    pub durable: bool,
    queue: Mutex<Queue>,
    /// The standby's progress, and the commits waiting on it.
    progress: Mutex<Watched>,
    /// Wakes the sender: frames queued, or the stream closed.
    pub wake: Notify,
    /// Set once a close is under way (a stream past [`MAX_QUEUED_BYTES`]).
    pub closing: AtomicBool,
    /// Joining: the sequence the standby must hold before it joins `in_sync`.
    pub join_target: AtomicU64,
    /// A resumed stream: the position the standby said it holds (no
    /// snapshot unless it refuses to resume from there).
    pub resume: Option<Position>,
    /// A resumed stream: its backlog from the tail runs up to here (what
    /// is sent up to it counts as `tail` bytes, not `stream`).
    pub backlog_through: AtomicU64,
}

impl Stream {
    /// A stream that starts after the leader's sequence `last` (a
    /// snapshot start: the frames up to `last` are in the leader's store).
    pub fn new(id: NodeId, url: String, session: u64, durable: bool, last: u64) -> Stream {
        let progress =
            Mutex::new(Watched { now: Progress { acked: 0, status: Status::CatchingUp }, waiters: BTreeMap::new() });
        Stream {
            id,
            url,
            session,
            durable,
            queue: Mutex::new(Queue { last, ..Queue::default() }),
            progress,
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            join_target: AtomicU64::new(0),
            resume: None,
            backlog_through: AtomicU64::new(0),
        }
    }

    /// A stream that resumes a standby holding everything up to `from`:
    /// `backlog` (the tail after `from`, up to the leader's last sequence)
    /// is queued first.
    pub fn resuming(
        id: NodeId,
        url: String,
        session: u64,
        durable: bool,
        from: Position,
        backlog: Vec<(u64, Bytes)>,
    ) -> Stream {
        let through = backlog.last().map_or(from.seq, |(seq, _)| *seq);
        let mut s = Stream::new(id, url, session, durable, from.seq);
        s.resume = Some(from);
        s.backlog_through = AtomicU64::new(through);
        s.progress.get_mut().now.acked = from.seq;
        s.enqueue(&backlog);
        s
    }

    /// Queues frames (one per record, numbered by the leader), returning
    /// the sequence of the last one (the stream's last if `frames` is
    /// empty), or `None` when the stream is closed or has overflowed (the
    /// caller closes it). A frame at or below the last queued is skipped.
    pub fn enqueue(&self, frames: &[(u64, Bytes)]) -> Option<u64> {
        if self.is_closed() {
            return None;
        }
        let mut q = self.queue.lock();
        for (seq, f) in frames {
            if *seq <= q.last {
                continue;
            }
            q.last = *seq;
            q.bytes += f.len();
            q.frames.push_back((*seq, f.clone()));
        }
        let (last, bytes) = (q.last, q.bytes);
        drop(q);
        if !frames.is_empty() {
            self.wake.notify_one();
        }
        (bytes <= MAX_QUEUED_BYTES).then_some(last)
    }

    /// Drops the queued frames up to `seq`: a snapshot taken after the
    /// leader numbered them carries them.
    pub fn drop_through(&self, seq: u64) {
        let mut q = self.queue.lock();
        while q.frames.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, f)) = q.frames.pop_front() {
                q.bytes -= f.len();
            }
        }
        q.last = q.last.max(seq);
    }

    /// The head of the queue as one batch, without removing it: the frames
    /// concatenated, and the sequences they span. `None` when empty.
    pub fn peek_batch(&self) -> Option<Batch> {
        let q = self.queue.lock();
        let (first, _) = q.frames.front()?;
        let mut body = Vec::new();
        let mut last = *first;
        for (seq, f) in &q.frames {
            if !body.is_empty() && body.len() + f.len() > BATCH_BYTES {
                break;
            }
            body.extend_from_slice(f);
            last = *seq;
        }
        Some(Batch { first: *first, last, body })
    }

    /// The standby holds everything up to `seq`: drop it from the queue
    /// and wake whoever waits for it.
    pub fn acked(&self, seq: u64) {
        self.drop_through(seq);
        self.progress.lock().change(|p| {
            let newer = seq > p.acked;
            p.acked = p.acked.max(seq);
            newer
        });
    }

    /// `None` once the standby holds `seq` or is no longer waited for
    /// (see [`Status::is_waited_for`]); else a receiver that resolves when
    /// either becomes true (read [`Stream::progress`] to learn which).
    pub fn wait_for(&self, seq: u64) -> Option<oneshot::Receiver<()>> {
        let mut watched = self.progress.lock();
        let p = watched.now;
        if p.acked >= seq || !p.status.is_waited_for() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        watched.waiters.entry(seq).or_default().push(tx);
        Some(rx)
    }

    /// Sequence of the last frame queued.
    pub fn last_queued(&self) -> u64 {
        self.queue.lock().last
    }

    pub fn progress(&self) -> Progress {
        self.progress.lock().now
    }

    /// Sets the status; Closed is final.
    pub fn set_status(&self, status: Status) {
        self.progress.lock().change(|p| {
            let change = p.status != Status::Closed && p.status != status;
            if change {
                p.status = status;
            }
            change
        });
        if status == Status::Closed {
            self.wake.notify_one();
        }
    }

    /// Moves from `from` to `to` only if the status is still `from`.
    pub fn change_status(&self, from: Status, to: Status) -> bool {
        self.progress.lock().change(|p| {
            let ok = p.status == from;
            if ok {
                p.status = to;
            }
            ok
        })
    }

    pub fn is_closed(&self) -> bool {
        self.progress().status == Status::Closed
    }
}

/// The frame a standby appends after a batch's frames: it holds the
/// leader's stream up to `position`.
pub fn position_frame(position: Position) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    codec::encode(&Entry::Position(position), &mut out);
    out
}

/// Frames from the head of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub first: u64,
    pub last: u64,
    pub body: Vec<u8>,
}

/// The leader's newest frames, numbered, at most `cap` bytes of them:
/// what a standby that returns may resume from. One per leadership: it
/// begins empty with each epoch this root leads, so a [`Position`] of
/// another epoch is never found in it (after a failover a standby's
/// history may hold commits the new leader never had: the old leader's
/// unreplicated ones, as Raft's and Kafka's leader epochs guard against;
/// such a standby takes a snapshot).
#[derive(Debug, Default)]
pub struct Tail {
    epoch: u64,
    /// The sequence of the last frame numbered.
    last: u64,
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    cap: usize,
    /// Frames are kept only once a standby has registered this epoch: a
    /// root without standbys spends no memory on them.
    keep: bool,
}

impl Tail {
    pub fn new(cap: usize) -> Tail {
        Tail { cap, ..Tail::default() }
    }

    /// This root leads `epoch`: nothing kept yet. The numbering goes on
    /// (streams that outlive a re-election in one process keep their
    /// order); positions name the epoch, so none of an earlier one is
    /// found here.
    pub fn begin(&mut self, epoch: u64) {
        *self = Tail { epoch, last: self.last, ..Tail::new(self.cap) };
    }

    /// No longer leading: nothing kept (the memory goes).
    pub fn clear(&mut self) {
        self.begin(self.epoch);
    }

    /// A standby registered: keep frames from now on.
    pub fn keep(&mut self) {
        self.keep = self.cap > 0;
    }

    pub fn is_kept(&self) -> bool {
        self.keep
    }

    /// The leader's current position.
    pub fn position(&self) -> Position {
        Position { epoch: self.epoch, seq: self.last }
    }

    /// Numbers `frames` (kept while a standby registered, the oldest let
    /// go past `cap` bytes).
    pub fn push(&mut self, frames: &[Vec<u8>]) -> Vec<(u64, Bytes)> {
        let numbered: Vec<(u64, Bytes)> = frames
            .iter()
            .map(|f| {
                self.last += 1;
                (self.last, Bytes::copy_from_slice(f))
            })
            .collect();
        if self.keep {
            for (seq, f) in &numbered {
                self.bytes += f.len();
                self.frames.push_back((*seq, f.clone()));
            }
            while self.bytes > self.cap {
                match self.frames.pop_front() {
                    Some((_, f)) => self.bytes -= f.len(),
                    None => break,
                }
            }
        } else {
            self.frames.clear();
            self.bytes = 0;
        }
        numbered
    }

    /// The frames after `from`, if this tail has every one of them (and
    /// they fit a stream's queue); otherwise why not.
    pub fn since(&self, from: Position) -> Result<Vec<(u64, Bytes)>, String> {
        if from.epoch != self.epoch {
            return Err(format!("it holds epoch {}'s stream, this leader streams epoch {}", from.epoch, self.epoch));
        }
        if from.seq > self.last {
            return Err(format!("it says it holds up to {}, past this leader's last frame {}", from.seq, self.last));
        }
        // Everything from `first` on is here (nothing when empty).
        let first = self.frames.front().map_or(self.last + 1, |(seq, _)| *seq);
        if from.seq + 1 < first {
            return Err(format!(
                "the tail (--replication-tail {} bytes) begins at {first}, after its position {}",
                self.cap, from.seq
            ));
        }
        let skip = self.frames.partition_point(|(seq, _)| *seq <= from.seq);
        let backlog: Vec<(u64, Bytes)> = self.frames.iter().skip(skip).cloned().collect();
        let bytes: usize = backlog.iter().map(|(_, f)| f.len()).sum();
        if bytes > MAX_QUEUED_BYTES {
            return Err(format!("{bytes} bytes behind, more than a stream holds"));
        }
        Ok(backlog)
    }
}

/// One committed write as a frame of the stream (and of the log).
pub fn frame_of(record: Record) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(64 + record.update.key.len() + record.update.value.as_ref().map_or(0, |v| v.len()));
    codec::encode(&Entry::Write(record), &mut out);
    out
}

/// One write outcome as a frame (0: a delete of an absent key), with its
/// key's slot: the form the log and the stream carry a decided write that
/// stored nothing, and a snapshot or a slot move every remembered outcome.
pub fn outcome_frame(id: WriteId, version: u64, slot: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    codec::encode(&Entry::WriteOutcome(id, version, slot), &mut out);
    out
}

/// The frames that start a stream: the epoch, then the leader's state
/// (every entry, tombstones included, and every remembered write outcome),
/// in batches of at most [`BATCH_BYTES`]. The snapshot's records are
/// encoded as they are read, a shard of the store at a time.
pub fn snapshot_batches(epoch: u64, snap: crate::log::Snapshot) -> Result<Vec<Vec<u8>>, String> {
    let mut batches = Vec::new();
    let mut body = Vec::new();
    codec::encode(&Entry::Epoch(epoch), &mut body);
    let mut push = |entry: &Entry, body: &mut Vec<u8>| {
        if body.len() >= BATCH_BYTES {
            batches.push(std::mem::take(body));
        }
        codec::encode(entry, body);
    };
    for r in snap.records.0.flatten() {
        push(&Entry::Write(r), &mut body);
    }
    // After the records: see `crate::log::After`.
    let after = (snap.after.0)()?;
    for (id, version, slot) in after.write_ids {
        push(&Entry::WriteOutcome(id, version, slot), &mut body);
    }
    for slot in after.frozen {
        push(&Entry::Slot(slot, crate::log::codec::SlotChange::Freeze), &mut body);
    }
    batches.push(body);
    Ok(batches)
}

/// Decodes a batch a standby received: every frame must be whole and
/// good (the sender framed it; a damaged batch is refused, not cut).
pub fn decode_batch(body: &[u8]) -> Result<Vec<Entry>, String> {
    let scanned = codec::scan(body);
    match scanned.damage {
        None => Ok(scanned.entries),
        Some(d) => Err(format!("replication batch damaged at byte {}: {d:?}", d.offset())),
    }
}

/// What the standby side remembers of the leader it follows.
#[derive(Debug, Clone, Default)]
pub struct Following {
    pub leader: NodeId,
    pub leader_url: String,
    pub epoch: u64,
    /// The stream session being applied (0: none yet).
    pub session: u64,
    /// The last sequence of the leader's stream applied and made durable.
    pub applied: u64,
    /// The leader's last word on whether we are in `in_sync`.
    pub in_sync: bool,
    /// When the leader was last heard (monotonic ms).
    pub heard_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Update;

    fn rec(key: &str, version: u64) -> Record {
        crate::log::test_record(key, version, None)
    }

    /// Frames numbered from 1, as a leader's tail numbers them.
    fn numbered(frames: impl IntoIterator<Item = Vec<u8>>) -> Vec<(u64, Bytes)> {
        frames.into_iter().zip(1..).map(|(f, seq)| (seq, Bytes::from(f))).collect()
    }

    fn seqs(frames: &[(u64, Bytes)]) -> Vec<u64> {
        frames.iter().map(|(seq, _)| *seq).collect()
    }

    #[test]
    fn the_tail_resumes_only_its_own_epoch_from_a_position_it_still_covers() {
        let frame = |v| frame_of(rec("k", v));
        let one = frame(1).len();
        let mut tail = Tail::new(3 * one);
        tail.begin(5);
        // No standby yet: numbered, not kept.
        assert_eq!(seqs(&tail.push(&[frame(1), frame(2)])), [1, 2]);
        assert_eq!(tail.position(), Position { epoch: 5, seq: 2 });
        assert!(tail.since(Position { epoch: 5, seq: 2 }).unwrap().is_empty(), "caught up: nothing to send");
        assert!(tail.since(Position { epoch: 5, seq: 1 }).unwrap_err().contains("begins at 3"));
        tail.keep();
        tail.push(&[frame(3), frame(4), frame(5), frame(6)]);
        // Three frames fit: 4, 5, 6.
        assert_eq!(seqs(&tail.since(Position { epoch: 5, seq: 3 }).unwrap()), [4, 5, 6]);
        assert_eq!(seqs(&tail.since(Position { epoch: 5, seq: 5 }).unwrap()), [6]);
        assert!(tail.since(Position { epoch: 5, seq: 2 }).unwrap_err().contains("begins at 4"));
        assert!(tail.since(Position { epoch: 5, seq: 7 }).unwrap_err().contains("past this leader's last"));
        // Another epoch's position, even at a sequence this tail holds:
        // that history may hold what this leader never had.
        assert!(tail.since(Position { epoch: 4, seq: 5 }).unwrap_err().contains("epoch 4"));
        tail.begin(6);
        assert!(tail.since(Position { epoch: 5, seq: 6 }).is_err(), "a new leadership starts empty");
        assert_eq!(seqs(&tail.push(&[frame(7)])), [7], "and numbers on");
        assert!(tail.since(Position { epoch: 6, seq: 6 }).unwrap_err().contains("begins at 8"), "not kept yet");
        // --replication-tail 0: never kept, every return is a snapshot.
        let mut none = Tail::new(0);
        none.begin(1);
        none.keep();
        none.push(&[frame(1), frame(2)]);
        assert!(!none.is_kept());
        assert!(none.since(Position { epoch: 1, seq: 1 }).is_err());
    }

    #[test]
    fn a_resumed_stream_starts_with_its_backlog_and_a_cut_drops_what_a_snapshot_carries() {
        let backlog = numbered((1..=4).map(|v| frame_of(rec("k", v)))).split_off(2);
        let from = Position { epoch: 3, seq: 2 };
        let s = Stream::resuming(7, "http://s".into(), 1, true, from, backlog);
        assert_eq!((s.progress().acked, s.last_queued()), (2, 4));
        assert_eq!(s.backlog_through.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert_eq!(s.peek_batch().map(|b| (b.first, b.last)), Some((3, 4)));
        // Frames the stream already has are not queued twice.
        assert_eq!(s.enqueue(&numbered((1..=5).map(|v| frame_of(rec("k", v))))), Some(5));
        assert_eq!(s.peek_batch().map(|b| (b.first, b.last)), Some((3, 5)));
        s.drop_through(4);
        assert_eq!(s.peek_batch().map(|b| (b.first, b.last)), Some((5, 5)));
        let fresh = Stream::new(8, "http://t".into(), 2, true, 9);
        assert_eq!(fresh.enqueue(&[]), Some(9), "a snapshot start: a barrier waits for what it carries");
    }

    #[test]
    fn a_stream_hands_out_batches_in_order_and_forgets_what_was_acked() {
        let s = Stream::new(7, "http://s".into(), 1, true, 0);
        assert_eq!(s.peek_batch(), None);
        let frames = numbered((1..=3).map(|v| frame_of(rec("k", v))));
        assert_eq!(s.enqueue(&frames), Some(3));
        let b = s.peek_batch().unwrap();
        assert_eq!((b.first, b.last), (1, 3));
        let entries = decode_batch(&b.body).unwrap();
        let versions: Vec<u64> = entries
            .iter()
            .map(|e| match e {
                Entry::Write(r) => r.update.version,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(versions, [1, 2, 3]);
        s.acked(2);
        assert_eq!(s.progress().acked, 2);
        let b = s.peek_batch().unwrap();
        assert_eq!((b.first, b.last), (3, 3));
        s.acked(3);
        assert_eq!(s.peek_batch(), None);
        // A late, older acknowledgement changes nothing.
        s.acked(1);
        assert_eq!(s.progress().acked, 3);
        assert_eq!(s.enqueue(&[]), Some(3), "an empty enqueue names the last sequence");
    }

    #[test]
    fn batches_are_capped_by_bytes_but_carry_at_least_one_frame() {
        let s = Stream::new(7, "http://s".into(), 1, true, 0);
        let big = Record {
            epoch: 1,
            update: Update {
                key: "big".into(),
                version: 1,
                value: Some(bytes::Bytes::from(vec![b'x'; BATCH_BYTES])),
                expires_at: None,
            },
            write_id: None,
        };
        s.enqueue(&numbered([frame_of(big), frame_of(rec("small", 2))]));
        let b = s.peek_batch().unwrap();
        assert_eq!((b.first, b.last), (1, 1), "the big frame goes alone");
        s.acked(1);
        assert_eq!(s.peek_batch().map(|b| (b.first, b.last)), Some((2, 2)));
    }

    #[test]
    fn a_closed_stream_takes_nothing_and_statuses_change_only_from_the_expected_one() {
        let s = Stream::new(7, "http://s".into(), 1, true, 0);
        assert!(!s.change_status(Status::Joining, Status::InSync));
        assert!(s.change_status(Status::CatchingUp, Status::Joining));
        assert!(s.progress().status.is_waited_for());
        s.set_status(Status::Closed);
        assert_eq!(s.enqueue(&numbered([frame_of(rec("k", 1))])), None);
        assert!(!s.progress().status.is_waited_for());
    }

    #[test]
    fn an_acknowledgement_wakes_only_the_waiters_it_reaches_and_a_status_change_wakes_all() {
        let s = Stream::new(7, "http://s".into(), 1, true, 0);
        // Not waited for yet (catching up): nothing to wait on.
        assert!(s.wait_for(1).is_none());
        assert!(s.change_status(Status::CatchingUp, Status::InSync));
        let mut first = s.wait_for(2).expect("not acked yet");
        let mut second = s.wait_for(5).expect("not acked yet");
        s.acked(3);
        assert_eq!(first.try_recv(), Ok(()), "3 reaches 2");
        assert!(second.try_recv().is_err(), "3 does not reach 5");
        assert!(s.wait_for(3).is_none(), "held already");
        // An acknowledgement that is not newer wakes nothing.
        s.acked(2);
        assert!(second.try_recv().is_err());
        // Leaving the set wakes every waiter: the commit goes on without it.
        let mut third = s.wait_for(9).expect("not acked yet");
        s.set_status(Status::CatchingUp);
        assert_eq!(second.try_recv(), Ok(()));
        assert_eq!(third.try_recv(), Ok(()));
        assert!(s.wait_for(9).is_none(), "not waited for any more");
        assert!(s.progress.lock().waiters.is_empty());
    }

    #[test]
    fn a_snapshot_starts_with_the_epoch_and_carries_records_and_outcomes() {
        let id = WriteId { origin: 3, incarnation: 5, seq: 9 };
        let snap = crate::log::Snapshot {
            records: crate::log::Records(Box::new(vec![vec![rec("a", 1)], vec![], vec![rec("b", 2)]].into_iter())),
            after: crate::log::Later::of(crate::log::After { write_ids: vec![(id, 2, 5)], frozen: vec![9] }),
            position: None,
        };
        let batches = snapshot_batches(4, snap).expect("nothing abandons it");
        assert_eq!(batches.len(), 1);
        let entries = decode_batch(&batches[0]).unwrap();
        assert_eq!(entries[0], Entry::Epoch(4));
        assert!(matches!(&entries[1], Entry::Write(r) if r.update.key == "a"));
        assert_eq!(entries[3], Entry::WriteOutcome(id, 2, 5));
        assert_eq!(entries[4], Entry::Slot(9, crate::log::codec::SlotChange::Freeze));
    }

    #[test]
    fn a_damaged_batch_is_refused_whole() {
        let mut body = frame_of(rec("k", 1));
        let first = body.len();
        body.extend(frame_of(rec("k", 2)));
        body[first + codec::HEADER + 2] ^= 0xff; // inside the second payload
        assert!(decode_batch(&body).unwrap_err().contains("damaged"));
        assert!(decode_batch(&[]).unwrap().is_empty());
    }
}
