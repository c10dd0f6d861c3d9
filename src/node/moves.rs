//! Slot moves (DESIGN.md "Root groups"): a slot's keys go from one root
//! group (the source) to another (the target) while both serve.
//!
//! `treecache slots move` records each slot's move in `moves/<slot>`
//! (state `copy`). The source group's leader drives it, in rounds, from
//! what ZooKeeper and its own log say, so that a new leader (a failover)
//! or a restart picks it up where it stood:
//!
//! 1. **Copy.** The source sends the target's leader every live entry of
//!    the slots (`POST /internal/import`), versions kept. The target logs
//!    and replicates each one newer than what it has, and raises its
//!    version counter above them, so a key's version keeps rising. Then
//!    tails of what changed since (still unfrozen, [`CATCH_UP_ROUNDS`] at
//!    most), until one sends little: the frozen copy is then short.
//! 2. **Freeze.** The source logs a freeze record per slot through its
//!    replicated log, and from then on commits no write of those slots
//!    (they wait, at most [`FROZEN_WAIT`], then 503 `slot_moving`); reads
//!    are served. A standby that takes over holds the freeze too. Every
//!    commit made before the freeze is waited for until durable.
//! 3. **Last copy, a tail.** The source sends whole the entries changed
//!    since the last tail and names the others (key and version: the
//!    target must hold them so, or asks for the whole copy), and every
//!    write outcome it remembers (so a write retried at the target after
//!    the cutover is found decided, not committed twice). The target also
//!    deletes what it holds of the slots that the source no longer has (a
//!    copy left from an earlier ownership, or a key deleted since step 1),
//!    and makes it all durable before it answers.
//! 4. **Cutover.** One ZooKeeper `multi`: the map names the target (its
//!    epoch rises), each `moves/<slot>` says `done`, checked against the
//!    source's and the target's `leader` znodes as read before step 3, so
//!    neither a deposed source nor a target that failed over since (and may
//!    lack step 3) can hand over. The target serves the slots once it
//!    reads the new map. Until the source drops the slots (5.) it
//!    answers a child's writes of them `SlotMoving`, undecided, as while
//!    frozen, and so does the target for [`INCOMING_FOR`] after the last
//!    copy until it reads the new map: a router reads the map again and
//!    sends them to the new owner, and the rest of its batch commits.
//!    Other requests of the slots get `wrong_group` at the source.
//! 5. **Drop.** Once every live node routes by the new map (its `live/`
//!    znode says so), the source logs a drop record per slot (its copy and
//!    its freeze go, at every standby too) and deletes `moves/<slot>`.
//!
//! A move waits for a target that is down while it copies (nothing is
//! frozen then). Once frozen, it finishes or rolls back: slots frozen
//! [`ROLL_BACK_AFTER`] without a cutover (the target down or unreachable
//! all that while, full, its leader changing again and again) roll back
//! ([`Node::roll_back`]): their `moves/<slot>` records are set to
//! `rolling_back` in one `multi` checked against this group's leader
//! znode, the map and each record's version (a fence: a cutover checks
//! those versions, so none follows, and the map shows none came before),
//! then thawed through the replicated log (a thaw record: they take
//! writes again, their keys kept), then the records deleted. The target
//! is then told, until it answers, to drop what the copies brought it
//! (`POST /internal/import?abort=true&round=R`; copies carry the source
//! leader's round, so one abandoned on the way is refused after the
//! abort). `treecache slots move` reports a rolled-back slot, and the
//! operator may move it again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use super::Node;
use crate::clock::{now_ms, Time};
use crate::error::{Error, Result};
use crate::log::codec::{Entry, SlotChange};
use crate::log::Record;
use crate::slots::{ranges_text, slot_of, GroupId, MoveRecord, MoveState, Slot};
use crate::store::{Applied, Update};
use crate::tree::zk;

/// Move records by slot, each with its znode's version.
type Recorded = BTreeMap<Slot, (MoveRecord, i32)>;

/// How long a write of a frozen slot waits for the move to hand it over
/// before it is answered 503 `slot_moving`.
pub const FROZEN_WAIT: Duration = Duration::from_secs(2);
/// How long a move's slots stay frozen without a cutover before the move
/// rolls back (see the module's docs). Well above a failover of either
/// group (a ZooKeeper session's expiry and an election), so a move whose
/// target fails over finishes instead.
pub const ROLL_BACK_AFTER: Duration = Duration::from_secs(30);
/// Longest a rolled-back move's target may take to answer that it
/// dropped its copy (it is asked again next round). Above what the abort
/// may wait for there: a copy part before it (it holds `Moves::imports`
/// until its records are durable: the log, and standbys' acks, up to
/// `--insync-timeout`, 3 s by default), then its own drop records.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the source's leader looks at `moves/`.
const ROUND_EVERY: Duration = Duration::from_millis(250);
/// Most slots one round moves: their freeze lasts one last copy of them
/// all, so a large rebalance goes in steps that each pause little.
const SLOTS_PER_ROUND: usize = 64;
/// Longest an import request may take.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest import request body: entries are sent in parts of about this.
const IMPORT_PART_BYTES: usize = 4 << 20;
/// Parts of a copy made before the freeze are smaller, and paced: after
/// each, the source waits [`PACE`] times as long as the part took to be
/// sent, stored and logged at the target, so the copy takes a seventh of
/// either root's time at most, and other slots' writes there keep their
/// latency (the scan and encoding at the source run once, before the
/// first part). The last copy, during the freeze, is not paced: it is
/// what pauses writes. (32 KiB parts were tried: the copy took twice as
/// long, its tails caught up less, and other slots gained nothing
/// measurable.)
const PACED_PART_BYTES: usize = 128 << 10;
/// How many times a paced part's own time the source waits after it (at
/// 3, a source held to a quarter of a core gave its other slots' writers
/// a p99 1.5-2.9x theirs before the move; at 6, 0.95-2.7x over four
/// runs: docs/benchmarks.md).
const PACE: u32 = 6;

/// How often a cutover is tried again at once when only the slot map
/// changed meanwhile (another move's cutover).
const CUTOVER_TRIES: u32 = 3;
/// Most tails sent after the first copy, before the freeze.
const CATCH_UP_ROUNDS: usize = 4;
/// A tail that sent at most this many entries whole caught up: the next
/// one is the last, frozen.
const CAUGHT_UP: usize = 32;

/// The slots this root holds frozen, and a wake-up when that changes.
#[derive(Default)]
pub(super) struct Moves {
    /// The slots frozen here, each with when it froze (restored from the
    /// log, or from a leader's stream at a standby: when this root learned
    /// of it; a move frozen [`ROLL_BACK_AFTER`] rolls back). Writes read it
    /// while they commit (see [`Node::if_unfrozen`]); a freeze takes it for
    /// writing, so no commit straddles a freeze.
    frozen: RwLock<BTreeMap<Slot, std::time::Instant>>,
    changed: Notify,
    /// At a target: per source group, the epoch of the leader whose copy
    /// comes in, and the keys its current copy has named so far, over the
    /// parts it came in.
    seen: Mutex<HashMap<GroupId, Copying>>,
    /// Rounds a drop has waited for a node to read the new map (logged
    /// every 40th, about every 10 s).
    drop_waits: std::sync::atomic::AtomicU64,
    /// At a target: slots whose last copy it has taken, and when (the
    /// cutover follows at once): until its map names it their owner, a
    /// router that read the new map first has their writes answered
    /// `SlotMoving` here, not its whole batch refused `wrong_group`.
    incoming: Mutex<HashMap<Slot, std::time::Instant>>,
    /// Rolled-back moves whose target has not said yet that it dropped
    /// what their copies brought it, by target group. Asked again each
    /// round; a slot is forgotten once a new move of it to that target
    /// starts (its copy replaces what is there) or it is not ours.
    aborts: Mutex<BTreeMap<GroupId, Abort>>,
    /// Rounds of moves this root has begun (see [`Import::round`]).
    rounds: std::sync::atomic::AtomicU64,
    /// A task asks the targets of `aborts` (one at a time).
    aborting: std::sync::atomic::AtomicBool,
    /// At a target: held by each copy part it takes and each abort, from
    /// their checks until their log records are durable (released by the
    /// durable work itself, which goes on if the request is dropped), so
    /// they happen one after the other: a part that passed its checks can
    /// neither land after an abort's drop (a copy left behind of a slot the
    /// target does not own) nor be logged after it (a restart would bring
    /// the copy back).
    imports: Arc<tokio::sync::Mutex<()>>,
}

/// What a rolled-back move's target is asked to drop: the slots, and the
/// round of the last copy it may hold of them (a copy of a later round is
/// a newer move's, which the target keeps).
#[derive(Default)]
struct Abort {
    slots: BTreeSet<Slot>,
    round: u64,
}

/// How long after a slot's last copy its target treats it as coming (the
/// cutover is one ZooKeeper write after it; a move stuck longer than this
/// has its writes refused `wrong_group` again until the map says).
const INCOMING_FOR: Duration = Duration::from_secs(10);

/// A copy coming in from a source group's leader, part by part.
#[derive(Default)]
struct Copying {
    /// The source leader's epoch.
    epoch: u64,
    /// The source leader's round (see [`Import::round`]).
    round: u64,
    /// That round's move rolled back (an abort came): what is left of its
    /// copy on the way is refused.
    aborted: bool,
    /// The part expected next: parts come in order from 0, or the copy
    /// starts over (a target that restarted, a part lost on the way).
    next_part: u64,
    /// The keys its parts named so far.
    named: HashSet<String>,
    /// The slots it copies.
    slots: BTreeSet<Slot>,
}

/// The import a source sends: its group, the slots, and whether this is
/// the last copy (sent while frozen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub from: GroupId,
    pub slots: BTreeSet<Slot>,
    pub last: bool,
    /// The highest version the source has given: the target's versions go
    /// above it, so a key's versions keep rising across the move even
    /// where the source's copy shows none (a deleted or expired key that
    /// a cache may still hold at its last version).
    pub floor: u64,
    /// A tail (0: a whole copy): every entry of version `since` or later
    /// comes with its value; an older one is only named (key and version),
    /// as the first copy gave it to the target, which must hold exactly
    /// that version of it, or refuses (409 `cannot_resume`) and the
    /// source sends the whole copy instead.
    pub since: u64,
    /// The source leader's round of moves this copy is of (rising, from 1,
    /// per leader: with its epoch, it orders the copies of one source). A
    /// target refuses a part of a round older than one it has seen, or of
    /// one rolled back: a copy abandoned on the way must not land after.
    pub round: u64,
}

/// What a copy sent: entries whole and named only, and where a tail after
/// it starts (every entry of an older version was sent whole).
struct Sent {
    tail_from: u64,
    whole: usize,
    named: usize,
}

impl Node {
    /// Slots frozen here, ascending (for a snapshot).
    pub fn frozen_slots(&self) -> Vec<Slot> {
        self.inner.moves.frozen.read().keys().copied().collect()
    }

    /// Runs `commit` if every key of `keys` is in a slot this group owns
    /// and none is in a frozen slot, with freezes held off until it
    /// returns: `None` if one is frozen (wait, then try again), 409
    /// `wrong_group` if one is not ours (handed over, dropped). A freeze
    /// comes before any cutover, so no commit straddles either.
    pub(super) fn if_unfrozen<R>(&self, keys: &[String], commit: impl FnOnce() -> R) -> Result<Option<R>> {
        self.with_frozen(keys, |frozen| {
            let any_frozen = !frozen.is_empty() && keys.iter().any(|k| frozen.contains_key(&slot_of(k)));
            (!any_frozen).then(commit)
        })
    }

    /// Runs `decide` with the frozen slots (none of which a freeze can add
    /// to until it returns) if every key of `keys` is in a slot this group
    /// owns: 409 `wrong_group` if one is not ours.
    fn with_frozen<R>(
        &self,
        keys: &[String],
        decide: impl FnOnce(&BTreeMap<Slot, std::time::Instant>) -> R,
    ) -> Result<R> {
        let frozen = self.inner.moves.frozen.read();
        self.check_own_slots(keys)?;
        Ok(decide(&frozen))
    }

    /// A child's batch: runs `decide` with the slots whose writes are
    /// answered `SlotMoving` at once, undecided (the child tries them
    /// again, and the rest of its batch commits, not held back by them):
    /// those frozen here (moving out, or handed over and not dropped yet)
    /// and those coming in whose cutover this root has not read yet (see
    /// [`Node::slot_in_transit`]). 409 `wrong_group` for a key of any other
    /// slot that is not ours. No freeze can start until it returns.
    pub(super) fn with_held<R>(&self, keys: &[String], decide: impl FnOnce(&BTreeSet<Slot>) -> R) -> Result<R> {
        let frozen = self.inner.moves.frozen.read();
        let coming = self.coming_in(keys.iter().map(|k| slot_of(k)));
        let others: Vec<String> = keys
            .iter()
            .filter(|k| {
                let slot = slot_of(k);
                !frozen.contains_key(&slot) && !coming.contains(&slot)
            })
            .cloned()
            .collect();
        self.check_own_slots(&others)?;
        let mut held = coming;
        held.extend(frozen.keys().copied());
        Ok(decide(&held))
    }

    /// Forgets the slots coming in that the map now names this group the
    /// owner of (they came; a later move of them away must find nothing
    /// here), and those copied too long ago.
    fn arrived(&self) {
        self.still_incoming(&mut self.inner.moves.incoming.lock());
        // Copies of slots now ours have come: they no longer hold back an
        // abort of another group's move of them.
        let view = self.routes();
        let (Some(map), mine) = (view.map.as_ref(), self.args().group.unwrap_or(0)) else { return };
        for copy in self.inner.moves.seen.lock().values_mut() {
            copy.slots.retain(|&s| map.owner(s) != mine);
        }
    }

    /// Keeps in `incoming` the slots still coming: copied here less than
    /// [`INCOMING_FOR`] ago and not yet ours by the map.
    fn still_incoming(&self, incoming: &mut HashMap<Slot, std::time::Instant>) {
        let view = self.routes();
        let (Some(map), mine) = (view.map.as_ref(), self.args().group.unwrap_or(0)) else { return };
        incoming.retain(|&s, at| at.elapsed() < INCOMING_FOR && map.owner(s) != mine);
    }

    /// At a root: whether `key`'s writes from a child are answered
    /// `SlotMoving` here (its slot is frozen, or coming in) rather than
    /// refused `wrong_group`.
    pub(super) fn slot_in_transit(&self, key: &str) -> bool {
        let slot = slot_of(key);
        self.inner.moves.frozen.read().contains_key(&slot) || !self.coming_in(std::iter::once(slot)).is_empty()
    }

    /// Of `slots`, those whose last copy this root took lately and that
    /// its map does not name it the owner of yet: the cutover was made, or
    /// is about to be, and a router read it first. The map is read again
    /// at once if there are any.
    fn coming_in(&self, slots: impl Iterator<Item = Slot>) -> BTreeSet<Slot> {
        let coming: BTreeSet<Slot> = {
            let mut incoming = self.inner.moves.incoming.lock();
            if incoming.is_empty() || self.routes().map.is_none() {
                return BTreeSet::new();
            }
            // Once the map names us, the slot has come: a later move of it
            // away must not find it here.
            self.still_incoming(&mut incoming);
            slots.filter(|s| incoming.contains_key(s)).collect()
        };
        if !coming.is_empty() {
            self.reread_routes_soon();
        }
        coming
    }

    /// Waits while a key of `keys` is in a frozen slot, at most
    /// [`FROZEN_WAIT`]: 503 `slot_moving` if it still is then, and
    /// `wrong_group` if the slot was handed over meanwhile.
    pub(super) async fn wait_unfrozen(&self, keys: &[String]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + FROZEN_WAIT;
        loop {
            let changed = self.inner.moves.changed.notified();
            let frozen = {
                let set = self.inner.moves.frozen.read();
                if set.is_empty() {
                    None
                } else {
                    keys.iter().find(|k| set.contains_key(&slot_of(k))).cloned()
                }
            };
            let Some(key) = frozen else { break };
            // Handed over (the map changed, which wakes us): the sender
            // asks the new owner.
            self.check_own_slot(&key)?;
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                self.check_own_slot(&key)?;
                let slot = slot_of(&key);
                return Err(Error::SlotMoving { key, slot });
            }
        }
        Ok(())
    }

    /// Before a consistent read at the leader: not while the key's slot is
    /// frozen (the target may take writes as soon as the cutover is made,
    /// so a frozen copy is not the latest for long), and still ours.
    pub(super) async fn settle_slot(&self, key: &str) -> Result<()> {
        self.wait_unfrozen(&[key.to_string()]).await?;
        self.check_own_slot(key)
    }

    /// The slot map changed: slots coming in that it names ours have
    /// come (see [`Node::arrived`]), and writes waiting on a frozen slot
    /// look again (it may have been handed over).
    pub(super) fn map_changed(&self) {
        self.arrived();
        self.inner.moves.changed.notify_waiters();
    }

    /// Applies a slot record from the log, a standby's stream or a
    /// snapshot: a freeze, or a drop (the slot's keys and freeze go).
    pub(super) fn apply_slot_change(&self, slot: Slot, change: SlotChange) {
        match change {
            SlotChange::Freeze => {
                self.mark_frozen(std::iter::once(slot));
            }
            SlotChange::Drop => {
                let slots = BTreeSet::from([slot]);
                for key in self.inner.store.slot_keys(&slots, false, 0) {
                    self.inner.store.remove(&key);
                }
                self.thaw(slot);
            }
            SlotChange::Thaw => self.thaw(slot),
        }
        self.inner.moves.changed.notify_waiters();
    }

    /// `slot` takes writes again (handed over and dropped, or its move
    /// rolled back).
    fn thaw(&self, slot: Slot) {
        self.inner.moves.frozen.write().remove(&slot);
    }

    /// Freezes `slots` here, noting when for those not frozen before;
    /// returns those.
    fn mark_frozen(&self, slots: impl Iterator<Item = Slot>) -> Vec<Slot> {
        let now = std::time::Instant::now();
        let mut frozen = self.inner.moves.frozen.write();
        let mut new = Vec::new();
        for slot in slots {
            if let std::collections::btree_map::Entry::Vacant(at) = frozen.entry(slot) {
                at.insert(now);
                new.push(slot);
            }
        }
        new
    }

    /// When the first of `slots` froze here (now, if none is frozen).
    fn frozen_since(&self, slots: &BTreeSet<Slot>) -> std::time::Instant {
        let at = self.inner.moves.frozen.read();
        slots.iter().filter_map(|s| at.get(s)).min().copied().unwrap_or_else(std::time::Instant::now)
    }

    /// How long a move's slots may stay frozen without a cutover.
    fn roll_back_after(&self) -> Duration {
        match self.args().fault_move_rollback_ms {
            0 => ROLL_BACK_AFTER,
            ms => Duration::from_millis(ms),
        }
    }

    /// A standby starting over from its leader's snapshot, which says
    /// again which slots are frozen.
    pub(super) fn forget_frozen(&self) {
        self.inner.moves.frozen.write().clear();
        self.inner.moves.changed.notify_waiters();
    }

    /// At start: the slots the log says are frozen.
    pub(super) fn restore_frozen(&self, frozen: &BTreeSet<Slot>) {
        self.mark_frozen(frozen.iter().copied());
    }

    /// The source's leader: drives the moves out of its group, round after
    /// round, until the node stops.
    pub(super) async fn run_moves(self) {
        if !self.args().root {
            return;
        }
        let mut shutdown = self.subscribe_shutdown();
        let mut failures = 0u32;
        let mut last_error = String::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ROUND_EVERY) => {}
                _ = shutdown.changed() => {}
            }
            if self.is_shutting_down() {
                return;
            }
            let leading = self.place().is_ok_and(|p| p.topology.is_root()) && !self.is_deposed();
            if !leading || self.is_following() {
                continue;
            }
            match self.move_round().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let error = e.to_string();
                    if failures == 1 || failures.is_multiple_of(40) || error != last_error {
                        log::warn!("slot moves: {error} (try {failures}; trying again)");
                    }
                    last_error = error;
                }
            }
        }
    }

    /// One round: the moves out of this group, as `moves/` records them.
    async fn move_round(&self) -> Result<()> {
        let zk = self.zk().await?;
        let paths = &self.inner.paths;
        let mine = self.args().group.unwrap_or(0);
        let names = match zk.list_children(&paths.moves()).await {
            Ok(names) => names,
            // No moves at all (`moves/` deleted by hand): nothing may
            // stay frozen.
            Err(zookeeper_client::Error::NoNode) => Vec::new(),
            Err(e) => return Err(Error::zk("list", paths.moves(), e)),
        };
        // Ours, by target, the slots still to move and those rolling back;
        // and those handed over.
        let mut pending: BTreeMap<GroupId, Recorded> = BTreeMap::new();
        let mut rolling: BTreeMap<GroupId, Recorded> = BTreeMap::new();
        let mut done: Recorded = BTreeMap::new();
        let mut recorded = BTreeSet::new();
        for name in names {
            let Ok(slot) = name.parse::<Slot>() else { continue };
            let path = format!("{}/{name}", paths.moves());
            let (data, stat) = match zk.get_data(&path).await {
                Ok(found) => found,
                Err(zookeeper_client::Error::NoNode) => continue,
                Err(e) => return Err(Error::zk("get", path, e)),
            };
            // One this build cannot read (a newer root's) stops no other.
            let rec = match MoveRecord::from_json(&data) {
                Ok(rec) => rec,
                Err(e) => {
                    log::warn!("slot moves: {path} not read ({e}); skipped");
                    continue;
                }
            };
            if rec.from != mine {
                continue;
            }
            recorded.insert(slot);
            match rec.state {
                MoveState::Done => {
                    done.insert(slot, (rec, stat.version));
                }
                MoveState::Copy | MoveState::Frozen => {
                    pending.entry(rec.to).or_default().insert(slot, (rec, stat.version));
                }
                MoveState::RollingBack => {
                    rolling.entry(rec.to).or_default().insert(slot, (rec, stat.version));
                }
            }
        }
        // Each step below is tried whatever the others' outcome (one
        // target's trouble holds no other's slots); the first error is
        // the round's.
        let mut first_error = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        // A rollback a round before stopped in (fenced, maybe not thawed).
        for (to, moves) in rolling {
            note(self.finish_roll_back(&zk, to, moves).await);
        }
        note(self.thaw_unrecorded(&zk, &recorded).await);
        // Frozen too long without a cutover, whichever target: roll back
        // (a move to another target that keeps failing must not hold it).
        let frozen: BTreeSet<Slot> = self.inner.moves.frozen.read().keys().copied().collect();
        for (to, moves) in pending.iter_mut() {
            let stuck: Recorded =
                moves.iter().filter(|(s, _)| frozen.contains(s)).map(|(s, m)| (*s, m.clone())).collect();
            let slots: BTreeSet<Slot> = stuck.keys().copied().collect();
            if !stuck.is_empty() && self.frozen_since(&slots).elapsed() >= self.roll_back_after() {
                moves.retain(|s, _| !slots.contains(s));
                note(self.roll_back(&zk, *to, stuck).await);
            }
        }
        pending.retain(|_, moves| !moves.is_empty());
        self.spawn_aborts(&pending);
        // Slots frozen here go first: their writes wait.
        let first = pending.iter().find(|(_, m)| m.keys().any(|s| frozen.contains(s))).map(|(to, _)| *to);
        if let Some(to) = first.or_else(|| pending.keys().next().copied()) {
            let moves = pending.remove(&to).unwrap_or_default();
            let moves: Recorded = moves.into_iter().take(SLOTS_PER_ROUND).collect();
            note(self.move_slots(&zk, to, moves).await);
        }
        if !done.is_empty() {
            note(self.drop_moved(&zk, done).await);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Steps 1-4 for `moves` (all to group `to`).
    async fn move_slots(&self, zk: &zookeeper_client::Client, to: GroupId, moves: Recorded) -> Result<()> {
        let paths = &self.inner.paths;
        let mine = self.args().group.unwrap_or(0);
        // Slots frozen here already (a round that stopped after the
        // freeze, before its record said so; a standby that took over
        // frozen from the log) go first and alone: no copy while they
        // take no writes, only the last, whole and unpaced; slots not
        // frozen yet wait for the next round, and their paced copy.
        let (moves, resumed) = {
            let frozen = self.inner.moves.frozen.read();
            match moves.keys().any(|s| frozen.contains_key(s)) {
                true => (moves.into_iter().filter(|(s, _)| frozen.contains_key(s)).collect(), true),
                false => (moves, false),
            }
        };
        let slots: BTreeSet<Slot> = moves.keys().copied().collect();
        let (own, own_version) = group_leader(zk, &paths.in_group(mine)).await?;
        if Some(own.id) != self.node_id() || own.epoch != self.epoch() {
            return Err(Error::NotLeading);
        }
        let (target, target_version) = group_leader(zk, &paths.in_group(to)).await?;
        let round = self.inner.moves.rounds.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        let import = |last, since| Import { from: mine, slots: slots.clone(), last, floor: 0, since, round };
        let started = std::time::Instant::now();
        // 1. Copy, unless frozen already (a round that stopped half-way:
        // then the last copy is a whole one).
        let copying: Vec<Slot> =
            moves.iter().filter(|(_, (r, _))| r.state == MoveState::Copy).map(|(s, _)| *s).collect();
        let mut since = 0;
        if !copying.is_empty() && !resumed {
            since = self.send_import(&target.url, &import(false, 0)).await?.tail_from;
            // Catch up while the slots still take writes, until little
            // changed during the last tail: the last one, sent frozen,
            // then carries only that little.
            for _ in 0..CATCH_UP_ROUNDS {
                let sent = match self.send_import(&target.url, &import(false, since)).await {
                    Err(Error::Upstream { status: 409, body, .. }) if body.contains("cannot_resume") => {
                        since = 0; // the last copy goes whole
                        break;
                    }
                    sent => sent?,
                };
                since = sent.tail_from;
                if sent.whole <= CAUGHT_UP {
                    break;
                }
            }
        }
        // Read before the freeze (one ZooKeeper round trip less while
        // frozen): the cutover's multi checks that it did not change.
        let (mut map, mut map_version) = self.read_map_owning(zk, &slots).await?;
        // 2. Freeze: from here no write of the slots commits. The freeze
        // goes into the log (a standby that takes over holds it) and into
        // `moves/` while the last copy (3.) goes: the cutover waits for all
        // three, and writes of the slots wait for the slowest, not the sum.
        let frozen_at = std::time::Instant::now();
        let frames = self.freeze(&slots);
        // From the first of them frozen (this round, or one before).
        let deadline = self.frozen_since(&slots) + self.roll_back_after();
        let logged = async {
            self.make_durable_with(Vec::new(), frames).await?;
            Ok::<_, Error>(frozen_at.elapsed())
        };
        let marked = async {
            let mut versions: BTreeMap<Slot, i32> = moves.iter().map(|(s, (_, v))| (*s, *v)).collect();
            if copying.is_empty() {
                return Ok((versions, Duration::ZERO));
            }
            let mut multi = zk.new_multi_writer();
            for slot in &copying {
                let (rec, version) = &moves[slot];
                let frozen = MoveRecord { state: MoveState::Frozen, ..rec.clone() };
                multi
                    .add_set_data(&format!("{}/{slot}", paths.moves()), &frozen.to_json(), Some(*version))
                    .map_err(|e| Error::zk("multi", paths.moves(), e))?;
            }
            let results = multi.commit().await.map_err(|e| Error::zk("set", paths.moves(), e.into()))?;
            for (slot, result) in copying.iter().zip(results) {
                if let zookeeper_client::MultiWriteResult::SetData { stat } = result {
                    versions.insert(*slot, stat.version);
                }
            }
            Ok::<_, Error>((versions, frozen_at.elapsed()))
        };
        // 3. Everything committed before the freeze is durable; send what
        // changed since the last tail (and the names of what did not), or
        // all of it if the target lacks part of the copies before.
        let copied = async {
            let pause = self.args().fault_move_pause_ms;
            if pause > 0 {
                log::info!("slots {} frozen: pausing {pause} ms (--fault-move-pause-ms)", ranges_text(&slots));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            self.wait_durable_through(self.inner.versions.load(std::sync::atomic::Ordering::Acquire)).await?;
            let last = match self.send_import(&target.url, &import(true, since)).await {
                Err(Error::Upstream { status: 409, body, .. }) if since > 0 && body.contains("cannot_resume") => {
                    log::info!(
                        "slots {}: the target lacks part of the copies before; sending it all",
                        ranges_text(&slots)
                    );
                    self.send_import(&target.url, &import(true, 0)).await?
                }
                sent => sent?,
            };
            Ok::<_, Error>((last, frozen_at.elapsed()))
        };
        // Not done by the deadline (a target that stopped answering): the
        // next round rolls the move back, from what ZooKeeper says then.
        // The freeze record's way to disk goes on (see `make_durable_with`);
        // a last copy on its way is abandoned (the target refuses what is
        // left of it once told of the rollback, or of a newer round).
        let joined = tokio::time::timeout_at(deadline.into(), async { tokio::join!(logged, marked, copied) }).await;
        let Ok((logged, marked, copied)) = joined else {
            return Err(Error::Internal(format!(
                "slots {}: the freeze, its records and the last copy to group {to}'s leader at {} not done within \
                 {:?} of the freeze: rolling back",
                ranges_text(&slots),
                target.url,
                self.roll_back_after()
            )));
        };
        let (logged, (versions, marked), (last, copied)) = (logged?, marked?, copied?);
        // 4. Cutover, if neither root nor the map changed since we read
        // them. Another move's cutover while these slots were frozen
        // changes the map but nothing this one rests on (the freeze, the
        // last copy, both leaders): the map is read again and the cutover
        // made on it, rather than a new round with a whole copy, frozen.
        let mut tries = 0;
        let next = loop {
            let next = map.assign_all(slots.iter().copied(), to);
            let mut multi = zk.new_multi_writer();
            let add = multi_op(paths.slots());
            add(multi.add_check_version(&paths.in_group(mine).leader(), own_version))?;
            add(multi.add_check_version(&paths.in_group(to).leader(), target_version))?;
            add(multi.add_set_data(&paths.slots(), &next.to_json(), Some(map_version)))?;
            for (slot, (rec, _)) in &moves {
                let done = MoveRecord { state: MoveState::Done, map_epoch: next.epoch(), ..rec.clone() };
                add(multi.add_set_data(&format!("{}/{slot}", paths.moves()), &done.to_json(), Some(versions[slot])))?;
            }
            match multi.commit().await {
                Ok(_) => break next,
                Err(zookeeper_client::MultiWriteError::OperationFailed { index: 2, .. }) if tries < CUTOVER_TRIES => {
                    tries += 1;
                    (map, map_version) = self.read_map_owning(zk, &slots).await?;
                }
                Err(zookeeper_client::MultiWriteError::OperationFailed { index, source }) => {
                    let what = match index {
                        0 => "this group's leader znode changed (a failover, or its in-sync set)".to_string(),
                        1 => format!(
                            "group {to}'s leader znode changed (a failover, or its in-sync set): it may lack the \
                             last copy"
                        ),
                        2 => "the slot map changed meanwhile, again and again".to_string(),
                        _ => "a move record changed meanwhile".to_string(),
                    };
                    return Err(Error::Internal(format!(
                        "cutover of slots {} not made ({source}): {what}; again",
                        ranges_text(&slots)
                    )));
                }
                // Connection loss: it may have been made. The next round
                // reads `moves/` and knows.
                Err(e) => return Err(Error::zk("multi", paths.slots(), e.into())),
            }
        };
        self.install_map(next.clone());
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        log::info!(
            "slots {} handed over to group {to} (map epoch {}): {:.1} ms in all, writes paused {:.1} ms (freeze \
             logged at {:.1}, move records at {:.1}, last copy at {:.1}: {} entries whole, {} named unchanged)",
            ranges_text(&slots),
            next.epoch(),
            ms(started.elapsed()),
            ms(frozen_at.elapsed()),
            ms(logged),
            ms(marked),
            ms(copied),
            last.whole,
            last.named
        );
        Ok(())
    }

    /// The slot map and its version, if it still gives this group every
    /// slot of `slots`.
    async fn read_map_owning(
        &self,
        zk: &zookeeper_client::Client,
        slots: &BTreeSet<Slot>,
    ) -> Result<(crate::slots::SlotMap, i32)> {
        let paths = &self.inner.paths;
        let mine = self.args().group.unwrap_or(0);
        let (map, version) =
            zk::read_slots(zk, paths).await?.ok_or_else(|| Error::Internal(format!("{} is missing", paths.slots())))?;
        if let Some(&slot) = slots.iter().find(|&&s| map.owner(s) != mine) {
            return Err(Error::Internal(format!(
                "slot {slot} is group {}'s in the map, not this group's: its move record is stale",
                map.owner(slot)
            )));
        }
        Ok((map, version))
    }

    /// Step 2: freezes `slots` here (those not frozen yet), and returns
    /// the log records that make it durable.
    fn freeze(&self, slots: &BTreeSet<Slot>) -> Vec<Vec<u8>> {
        let new = self.mark_frozen(slots.iter().copied());
        self.inner.moves.changed.notify_waiters();
        let frames = slots.iter().map(|&s| slot_frame(s, SlotChange::Freeze)).collect();
        if !new.is_empty() {
            log::info!("slots {} frozen for a move", ranges_text(&new.iter().copied().collect()));
        }
        // Logged again if already frozen: cheap, and covers a freeze whose
        // record did not become durable before a failure.
        frames
    }

    /// Sends the target's leader every live entry of the slots (in parts;
    /// from `import.since` on with values, older ones named), and with the
    /// last copy the write outcomes of the slots remembered here. Returns
    /// where a tail after this copy starts: every entry of an older
    /// version was sent whole.
    async fn send_import(&self, target: &str, import: &Import) -> Result<Sent> {
        let epoch = self.epoch();
        // Read before the scan: what is committed after it has a newer
        // version, so a tail from here has it.
        let mut tail_from = self.inner.versions.load(std::sync::atomic::Ordering::Acquire) + 1;
        let entries = self.inner.store.slot_entries(&import.slots, true, now_ms());
        let mut records = Vec::with_capacity(entries.len());
        let mut named = 0;
        for e in entries {
            // Not a commit still on its way to disk (it may not survive a
            // failover here): the last copy, after the wait, has every one.
            if self.is_pending(e.version) {
                tail_from = tail_from.min(e.version);
                continue;
            }
            // Unchanged since the copy before: its name and version only.
            let (value, expires_at) = match e.version < import.since {
                true => {
                    named += 1;
                    (None, None)
                }
                false => (e.value, e.expires_at),
            };
            records.push(crate::replication::frame_of(Record {
                epoch,
                update: Update { key: e.key, version: e.version, value, expires_at },
                write_id: None,
            }));
        }
        let outcomes = match import.last {
            true => self.write_outcomes(Some(&import.slots)),
            false => Vec::new(),
        };
        let outcomes = outcomes.into_iter().map(|(id, v, slot)| crate::replication::outcome_frame(id, v, slot));
        let sent = Sent { tail_from, whole: records.len() - named, named };
        let part_bytes = if import.last { IMPORT_PART_BYTES } else { PACED_PART_BYTES };
        let mut parts: Vec<Vec<u8>> = vec![Vec::new()];
        for frame in records.into_iter().chain(outcomes) {
            if parts.last().is_some_and(|p| p.len() >= part_bytes) {
                parts.push(Vec::new());
            }
            parts.last_mut().expect("one part at least").extend(frame);
        }
        let count = parts.len();
        let slots = ranges_text(&import.slots).replace(' ', "");
        let mut took = Duration::ZERO;
        for (i, body) in parts.into_iter().enumerate() {
            if !import.last {
                tokio::time::sleep(took * PACE).await;
            }
            let started = std::time::Instant::now();
            // Only the last part of the last copy ends the import: the
            // target deletes what none of the parts named.
            let last = import.last && i + 1 == count;
            // Read now: every version given before the freeze is below it.
            let floor = self.inner.versions.load(std::sync::atomic::Ordering::Acquire);
            // `since` only for a tail: a target built before tails refuses it.
            let since = match import.since {
                0 => String::new(),
                since => format!("&since={since}"),
            };
            let url = format!(
                "{target}/internal/import?from={}&slots={slots}&last={last}&part={i}&floor={floor}{since}&round={}",
                import.from, import.round
            );
            let resp = self
                .request(&self.inner.http, reqwest::Method::POST, &url)
                .timeout(IMPORT_TIMEOUT)
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    Error::NoInSyncRoot(format!("the target group's leader at {target} did not answer: {e}"))
                })?;
            if !resp.status().is_success() {
                return Err(Error::Upstream {
                    url,
                    status: resp.status().as_u16(),
                    body: resp.text().await.unwrap_or_default(),
                });
            }
            took = started.elapsed();
        }
        Ok(sent)
    }

    /// `POST /internal/import` at the target's leader: stores each entry
    /// newer than ours (versions kept, our counter raised above them), the
    /// write outcomes, and with the last part deletes what we hold of the
    /// slots that no part of the source's last copy named; durable before
    /// it answers. Returns how many entries it stored or deleted.
    pub async fn receive_import(&self, import: Import, epoch: u64, part: u64, body: &[u8]) -> Result<usize> {
        let one_at_a_time = self.inner.moves.imports.clone().lock_owned().await;
        self.check_move_message("an import", import.from, &import.slots, epoch)?;
        let entries = crate::replication::decode_batch(body).map_err(Error::BadRequest)?;
        let mut records = Vec::new();
        // A tail's names: entries the first copy gave, unchanged since.
        let mut names = Vec::new();
        let mut outcomes = Vec::new();
        for entry in entries {
            match entry {
                Entry::Write(r) if r.update.version > 0 && import.slots.contains(&slot_of(&r.update.key)) => {
                    match (r.update.version < import.since, r.update.value.is_some()) {
                        (false, true) => records.push(r.update),
                        (true, false) => names.push((r.update.key, r.update.version)),
                        (tail, _) => {
                            return Err(Error::BadRequest(format!(
                                "import: key {:?} (version {}) {} a value in a copy from version {}",
                                r.update.key,
                                r.update.version,
                                if tail { "comes with" } else { "comes without" },
                                import.since
                            )))
                        }
                    }
                }
                Entry::Write(r) => {
                    return Err(Error::BadRequest(format!(
                        "import: key {:?} (version {}) is in none of slots {}",
                        r.update.key,
                        r.update.version,
                        ranges_text(&import.slots)
                    )))
                }
                Entry::WriteOutcome(id, version, slot) => outcomes.push((id, version, slot)),
                other => return Err(Error::BadRequest(format!("import: unexpected {other:?}"))),
            }
        }
        // A root never passes its --max-memory, for a move neither: the
        // move waits (and says why) until the group has room.
        if let Some(max) = self.args().max_memory {
            let (bytes, grows) = (self.inner.store.bytes(), self.inner.store.growth_of(&records));
            if grows > 0 && (bytes + grows) as u64 > max {
                return Err(Error::RootFull {
                    key: format!("(a move of slots {} from group {})", ranges_text(&import.slots), import.from),
                    bytes: bytes as u64,
                    max,
                });
            }
        }
        // A tail builds on the first copy: every entry it names must be
        // here as that copy gave it. One that is not (this root lost it:
        // a restart without a commit log, a standby that took over before
        // it had it) asks for the whole copy.
        let t = Time::now();
        for (key, version) in &names {
            let here = match self.inner.store.get(key, t) {
                crate::store::Lookup::Value { version, .. } => Some(version),
                _ => None,
            };
            if here != Some(*version) {
                let here = here.map_or("absent".to_string(), |v| format!("version {v}"));
                return Err(Error::CannotResume(format!(
                    "import from group {}: key {key:?} at version {version}, named by the tail as copied before, \
                     is not held here at that version ({here}); send the whole copy",
                    import.from
                )));
            }
        }
        // The keys this copy of the source's named so far, over its parts.
        let named = {
            let mut seen = self.inner.moves.seen.lock();
            let copy = seen.entry(import.from).or_default();
            if epoch < copy.epoch {
                return Err(Error::StaleEpoch { got: epoch, have: copy.epoch });
            }
            if epoch == copy.epoch && (import.round < copy.round || (import.round == copy.round && copy.aborted)) {
                return Err(Error::BadRequest(format!(
                    "import of round {} from group {}'s leader (epoch {epoch}): this root has round {} of it{}",
                    import.round,
                    import.from,
                    copy.round,
                    if copy.aborted { ", rolled back" } else { "" }
                )));
            }
            if part == 0 {
                *copy = Copying { epoch, round: import.round, slots: import.slots.clone(), ..Copying::default() };
            } else if epoch != copy.epoch || import.round != copy.round || part != copy.next_part {
                // The deletions of a last part need every part before it.
                return Err(Error::BadRequest(format!(
                    "import part {part} from group {}'s leader (epoch {epoch}): this root expected part {} of \
                     epoch {}; the copy starts over",
                    import.from, copy.next_part, copy.epoch
                )));
            }
            copy.next_part = part + 1;
            copy.named.extend(records.iter().map(|u| u.key.clone()));
            copy.named.extend(names.into_iter().map(|(key, _)| key));
            if import.last {
                std::mem::take(&mut copy.named)
            } else {
                HashSet::new()
            }
        };
        let delay = self.args().fault_import_apply_delay_ms;
        if delay > 0 {
            log::info!("fault: holding an import part from group {} for {delay} ms", import.from);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        // Our versions go above every version the source has given.
        let top = records.iter().map(|u| u.version).max().unwrap_or(0).max(import.floor);
        self.inner.versions.fetch_max(top, std::sync::atomic::Ordering::AcqRel);
        let mut durable = Vec::new();
        for update in records {
            if let Applied::Newer { .. } = self.inner.store.apply(&update, t) {
                durable.push((update, None));
            }
        }
        if import.last {
            // What the source no longer has: a key deleted since the first
            // copy, or a copy from an earlier ownership of the slot.
            for key in self.inner.store.slot_keys(&import.slots, true, 0) {
                if !named.contains(&key) {
                    let delete = Update { key, version: self.next_version(), value: None, expires_at: None };
                    self.inner.store.apply(&delete, t);
                    durable.push((delete, None));
                }
            }
        }
        let frames = outcomes
            .iter()
            .map(|&(id, version, slot)| {
                self.restore_write_outcome(id, version, slot);
                crate::replication::outcome_frame(id, version, slot)
            })
            .collect();
        let stored = durable.len();
        if import.last {
            // Under the lock, as an abort clears it. Marked before the
            // records are durable: a part that then fails leaves the mark
            // for at most INCOMING_FOR (routers' writes of the slots are
            // answered `SlotMoving` instead of `wrong_group` meanwhile).
            let now = std::time::Instant::now();
            self.inner.moves.incoming.lock().extend(import.slots.iter().map(|&s| (s, now)));
        }
        self.make_durable_holding(durable, frames, Some(one_at_a_time)).await?;
        Ok(stored)
    }

    /// Rolls back the move of `moves` (all to group `to`; versions as read
    /// this round), frozen here too long without a cutover. First a fence:
    /// one `multi`, checked against this group's `leader` znode, the map
    /// (still giving us every slot) and each record's version, sets the
    /// records to `rolling_back`. A cutover of the move checks those
    /// versions, so none can be made after it (nor was one made before:
    /// the map would say so), whatever ZooKeeper server answers whom. Then
    /// [`Node::finish_roll_back`].
    async fn roll_back(&self, zk: &zookeeper_client::Client, to: GroupId, moves: Recorded) -> Result<()> {
        let paths = &self.inner.paths;
        let slots: BTreeSet<Slot> = moves.keys().copied().collect();
        let mut tries = 0;
        let results = loop {
            let own_version = self.own_leader_version(zk).await?;
            let (_, map_version) = self.read_map_owning(zk, &slots).await?;
            let mut multi = zk.new_multi_writer();
            let add = multi_op(paths.moves());
            add(multi.add_check_version(&paths.in_group(self.args().group.unwrap_or(0)).leader(), own_version))?;
            add(multi.add_check_version(&paths.slots(), map_version))?;
            for (slot, (rec, version)) in &moves {
                let rolling = MoveRecord { state: MoveState::RollingBack, ..rec.clone() };
                add(multi.add_set_data(&format!("{}/{slot}", paths.moves()), &rolling.to_json(), Some(*version)))?;
            }
            match multi.commit().await {
                Ok(results) => break results,
                // Our in-sync set, or the map (another move's cutover),
                // changed meanwhile: nothing this rests on.
                Err(zookeeper_client::MultiWriteError::OperationFailed { index: 0 | 1, .. })
                    if tries < CUTOVER_TRIES =>
                {
                    tries += 1;
                }
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "slots {}: the rollback of their move not fenced ({e}); the next round looks again",
                        ranges_text(&slots)
                    )))
                }
            }
        };
        if self.args().fault_die_after_rollback_fence {
            log::warn!("slots {}: rollback fenced; dying now (--fault-die-after-rollback-fence)", ranges_text(&slots));
            std::process::abort();
        }
        let mut fenced = moves;
        for ((_, (rec, version)), result) in fenced.iter_mut().zip(results.into_iter().skip(2)) {
            rec.state = MoveState::RollingBack;
            if let zookeeper_client::MultiWriteResult::SetData { stat } = result {
                *version = stat.version;
            }
        }
        self.finish_roll_back(zk, to, fenced).await
    }

    /// The rest of a rollback whose records say `rolling_back` (fenced):
    /// thaws the slots through the log first (from then on their writes
    /// commit here again, and a standby that takes over holds the thaw
    /// too), then deletes the records. A round that stops between the two
    /// finds `rolling_back` and does this again. The target is then told to
    /// drop what the copies brought it (see [`Node::send_aborts`]).
    async fn finish_roll_back(&self, zk: &zookeeper_client::Client, to: GroupId, moves: Recorded) -> Result<()> {
        let paths = &self.inner.paths;
        let slots: BTreeSet<Slot> = moves.keys().copied().collect();
        let frozen_for = self.frozen_since(&slots).elapsed();
        self.own_leader_version(zk).await?;
        self.thaw_logged(&slots).await?;
        let mut tries = 0;
        loop {
            let own_version = self.own_leader_version(zk).await?;
            let mut multi = zk.new_multi_writer();
            let add = multi_op(paths.moves());
            add(multi.add_check_version(&paths.in_group(self.args().group.unwrap_or(0)).leader(), own_version))?;
            for (slot, (_, version)) in &moves {
                add(multi.add_delete(&format!("{}/{slot}", paths.moves()), Some(*version)))?;
            }
            match multi.commit().await {
                Ok(_) => break,
                Err(zookeeper_client::MultiWriteError::OperationFailed { index: 0, .. }) if tries < CUTOVER_TRIES => {
                    tries += 1;
                }
                // Deleted already (a round before, its answer lost; or by
                // hand): the rest of the rollback still holds.
                Err(zookeeper_client::MultiWriteError::OperationFailed {
                    source: zookeeper_client::Error::NoNode,
                    ..
                }) => break,
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "slots {} thawed, but their move records not deleted ({e}); the next round does it",
                        ranges_text(&slots)
                    )))
                }
            }
        }
        let round = self.inner.moves.rounds.load(std::sync::atomic::Ordering::Acquire);
        {
            let mut aborts = self.inner.moves.aborts.lock();
            let abort = aborts.entry(to).or_default();
            abort.slots.extend(slots.iter().copied());
            abort.round = abort.round.max(round);
        }
        log::warn!(
            "slots {}: the move to group {to} rolled back, frozen {:.1} s without a cutover (the reason is logged \
             above): they stay this group's and take writes again; move them again once group {to} takes them",
            ranges_text(&slots),
            frozen_for.as_secs_f64()
        );
        Ok(())
    }

    /// The version of this group's `leader` znode, if it names this root
    /// in its epoch (else `NotLeading`).
    async fn own_leader_version(&self, zk: &zookeeper_client::Client) -> Result<i32> {
        let (own, version) = group_leader(zk, &self.inner.paths.in_group(self.args().group.unwrap_or(0))).await?;
        if Some(own.id) != self.node_id() || own.epoch != self.epoch() {
            return Err(Error::NotLeading);
        }
        Ok(version)
    }

    /// Thaws `slots` here (those frozen), a thaw record logged first.
    async fn thaw_logged(&self, slots: &BTreeSet<Slot>) -> Result<()> {
        let frozen: BTreeSet<Slot> = {
            let set = self.inner.moves.frozen.read();
            slots.iter().copied().filter(|s| set.contains_key(s)).collect()
        };
        if frozen.is_empty() {
            return Ok(());
        }
        let frames = frozen.iter().map(|&s| slot_frame(s, SlotChange::Thaw)).collect();
        self.make_durable_with(Vec::new(), frames).await?;
        for &slot in &frozen {
            self.apply_slot_change(slot, SlotChange::Thaw);
        }
        Ok(())
    }

    /// Thaws the slots frozen here that no move record of this group names
    /// and the map gives this group (their record deleted by hand): nothing
    /// would ever end their freeze otherwise. `recorded`: the slots with a
    /// record of ours, read this round (a freeze comes only after its
    /// record is read, in this same task).
    async fn thaw_unrecorded(&self, zk: &zookeeper_client::Client, recorded: &BTreeSet<Slot>) -> Result<()> {
        let orphans: BTreeSet<Slot> =
            self.inner.moves.frozen.read().keys().copied().filter(|s| !recorded.contains(s)).collect();
        if orphans.is_empty() {
            return Ok(());
        }
        let mine = self.args().group.unwrap_or(0);
        let paths = &self.inner.paths;
        let (map, _) =
            zk::read_slots(zk, paths).await?.ok_or_else(|| Error::Internal(format!("{} is missing", paths.slots())))?;
        let ours: BTreeSet<Slot> = orphans.into_iter().filter(|&s| map.owner(s) == mine).collect();
        if ours.is_empty() {
            return Ok(());
        }
        self.own_leader_version(zk).await?;
        self.thaw_logged(&ours).await?;
        log::warn!("slots {} were frozen with no move record (deleted by hand?): thawed", ranges_text(&ours));
        Ok(())
    }

    /// Runs [`Node::send_aborts`] in a task of its own, one at a time: a
    /// target that does not answer (2 s each) must not hold up the moves.
    /// A new move's copy racing an abort to the same target is safe: its
    /// round is newer, so the target refuses an abort that comes after it
    /// and the copy comes whole after one that came first.
    fn spawn_aborts(&self, pending: &BTreeMap<GroupId, Recorded>) {
        use std::sync::atomic::Ordering;
        if self.inner.moves.aborts.lock().is_empty() || self.inner.moves.aborting.swap(true, Ordering::AcqRel) {
            return;
        }
        let moving: BTreeMap<GroupId, BTreeSet<Slot>> =
            pending.iter().map(|(to, moves)| (*to, moves.keys().copied().collect())).collect();
        let node = self.clone();
        self.spawn(async move {
            if let Ok(zk) = node.zk().await {
                node.send_aborts(&zk, &moving).await;
            }
            node.inner.moves.aborting.store(false, Ordering::Release);
        });
    }

    /// Tells the targets of rolled-back moves to drop what the copies
    /// brought them, each target once per round until it answers. Not
    /// asked for: a slot that a move of `pending` sends to the same target
    /// again (its copy replaces what is there), or that is no longer ours
    /// (moved on since: the target's copy may be a newer move's). A
    /// failure is asked again; a refusal (400, 409: the target owns the
    /// slot, another move of it is coming in) ends the asking.
    async fn send_aborts(&self, zk: &zookeeper_client::Client, pending: &BTreeMap<GroupId, BTreeSet<Slot>>) {
        let mine = self.args().group.unwrap_or(0);
        let view = self.routes();
        let asks: Vec<(GroupId, BTreeSet<Slot>, u64)> = {
            let mut aborts = self.inner.moves.aborts.lock();
            for (to, abort) in aborts.iter_mut() {
                abort.slots.retain(|s| {
                    !pending.get(to).is_some_and(|moving| moving.contains(s))
                        && view.map.as_ref().is_none_or(|map| map.owner(*s) == mine)
                });
            }
            aborts.retain(|_, abort| !abort.slots.is_empty());
            aborts.iter().map(|(to, abort)| (*to, abort.slots.clone(), abort.round)).collect()
        };
        for (to, slots, round) in asks {
            let target = match group_leader(zk, &self.inner.paths.in_group(to)).await {
                Ok((target, _)) => target,
                Err(e) => {
                    log::debug!("slots {}: group {to} not asked to drop its copy yet: {e}", ranges_text(&slots));
                    continue;
                }
            };
            let url = format!(
                "{}/internal/import?from={mine}&slots={}&abort=true&round={round}",
                target.url,
                ranges_text(&slots).replace(' ', "")
            );
            let sent = self.request(&self.inner.http, reqwest::Method::POST, &url).timeout(ABORT_TIMEOUT).send().await;
            let done = match sent {
                Ok(resp) if resp.status().is_success() => {
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    log::info!(
                        "slots {}: group {to}'s leader dropped what the rolled-back move copied to it ({} entries)",
                        ranges_text(&slots),
                        body["dropped"]
                    );
                    true
                }
                Ok(resp) if matches!(resp.status().as_u16(), 400 | 409) => {
                    let status = resp.status();
                    log::warn!(
                        "slots {}: group {to}'s leader refused to drop the rolled-back move's copy ({status}: {}); \
                         not asked again",
                        ranges_text(&slots),
                        resp.text().await.unwrap_or_default()
                    );
                    true
                }
                Ok(resp) => {
                    log::debug!("slots {}: group {to} answered the abort {}", ranges_text(&slots), resp.status());
                    false
                }
                Err(e) => {
                    log::debug!("slots {}: group {to} did not answer the abort: {e}", ranges_text(&slots));
                    false
                }
            };
            if done {
                let mut aborts = self.inner.moves.aborts.lock();
                if let Some(left) = aborts.get_mut(&to) {
                    left.slots.retain(|s| !slots.contains(s));
                }
                aborts.retain(|_, abort| !abort.slots.is_empty());
            }
        }
    }

    /// What a move's target checks of every message from the source
    /// (`what`, "an import" or "an abort"): this root leads its group and
    /// has read the map; the message is from another group, from no leader
    /// of it deposed since (a newer one leads it: an old one's copy could
    /// interleave with the new one's), and of none of this group's slots
    /// (a late message from a source deposed since).
    fn check_move_message(&self, what: &str, from: GroupId, slots: &BTreeSet<Slot>, epoch: u64) -> Result<()> {
        self.check_accepting()?;
        let place = self.place()?;
        if !place.topology.is_root() || self.is_following() {
            return Err(Error::NotLeading);
        }
        let mine = self.args().group.unwrap_or(0);
        let view = self.routes();
        let Some(map) = view.map.as_ref() else {
            return Err(Error::NoInSyncRoot("this root has not read the slot map yet".into()));
        };
        if from == mine {
            return Err(Error::BadRequest(format!("{what} from this root's own group {mine}")));
        }
        if let Some(leader) = view.leaders.get(&from).filter(|l| l.epoch > epoch) {
            return Err(Error::StaleEpoch { got: epoch, have: leader.epoch });
        }
        if let Some(owned) = slots.iter().find(|&&s| map.owner(s) == mine) {
            return Err(Error::BadRequest(format!(
                "slot {owned} is this group's ({mine}) already: {what} from group {from} is late"
            )));
        }
        Ok(())
    }

    /// `POST /internal/import?abort=true` at a group's leader: the move of
    /// `slots` from group `from` rolled back, its copies of rounds up to
    /// `round` (see [`Import::round`]); drops what they brought here (a
    /// drop record per slot, logged before the answer, so the standbys
    /// drop it too), and refuses what is left of that copy on its way.
    /// Refused, dropping nothing, unless the map gives `from` every slot
    /// (a late abort: the slot moved on since, and another group's copy
    /// of it may be coming in), if another group copies one of them here,
    /// or if `from` copies here in a later round or by a newer leader (a
    /// newer move of them). Returns the entries dropped.
    pub async fn abort_import(&self, from: GroupId, slots: BTreeSet<Slot>, epoch: u64, round: u64) -> Result<usize> {
        let one_at_a_time = self.inner.moves.imports.clone().lock_owned().await;
        self.check_move_message("an abort", from, &slots, epoch)?;
        if let Some(map) = self.routes().map.as_ref() {
            if let Some(&moved) = slots.iter().find(|&&s| map.owner(s) != from) {
                return Err(Error::BadRequest(format!(
                    "slot {moved} is group {}'s, not group {from}'s: an abort of its move from group {from} is late",
                    map.owner(moved)
                )));
            }
        }
        {
            let mut seen = self.inner.moves.seen.lock();
            if let Some((g, _)) = seen.iter().find(|(g, c)| **g != from && !c.aborted && !c.slots.is_disjoint(&slots)) {
                return Err(Error::BadRequest(format!(
                    "group {g} copies slots {} here: an abort of group {from}'s move of them is late",
                    ranges_text(&slots)
                )));
            }
            let copy = seen.entry(from).or_default();
            if (epoch, round) < (copy.epoch, copy.round) {
                if !copy.slots.is_disjoint(&slots) {
                    return Err(Error::BadRequest(format!(
                        "an abort of round {round} from group {from}'s leader (epoch {epoch}): this root has its \
                         copy of round {} (epoch {}) of them, a newer move",
                        copy.round, copy.epoch
                    )));
                }
                // A newer copy of other slots: kept (what is left of the
                // rolled-back one is of an older round, refused anyway).
            } else {
                *copy = Copying { epoch, round, aborted: true, ..Copying::default() };
            }
        }
        self.inner.moves.incoming.lock().retain(|s, _| !slots.contains(s));
        let dropped = self.inner.store.slot_keys(&slots, false, 0).len();
        for &slot in &slots {
            self.apply_slot_change(slot, SlotChange::Drop);
        }
        let frames = slots.iter().map(|&s| slot_frame(s, SlotChange::Drop)).collect();
        self.make_durable_holding(Vec::new(), frames, Some(one_at_a_time)).await?;
        log::info!(
            "slots {}: group {from}'s move of them here rolled back; dropped the {dropped} entries its copies brought",
            ranges_text(&slots)
        );
        Ok(dropped)
    }

    /// Step 5: once every live node routes by the map that handed them
    /// over, drops the moved slots here and ends their moves.
    async fn drop_moved(&self, zk: &zookeeper_client::Client, done: Recorded) -> Result<()> {
        let paths = &self.inner.paths;
        let epoch = done.values().map(|(r, _)| r.map_epoch).max().unwrap_or(0);
        let live = zk.list_children(&paths.live()).await.map_err(|e| Error::zk("list", paths.live(), e))?;
        for id in live {
            let path = format!("{}/{id}", paths.live());
            let Some(data) = zk::read(zk, &path).await? else { continue };
            let seen = serde_json::from_slice::<serde_json::Value>(&data).ok().and_then(|v| v["map_epoch"].as_u64());
            if seen.unwrap_or(0) < epoch {
                // Not yet: it may still send this group a fill of them.
                let waits = self.inner.moves.drop_waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if waits.is_multiple_of(40) {
                    log::info!(
                        "slot moves: slots {} handed over; their copy here is dropped once node {id} routes by map \
                         epoch {epoch} (it says {})",
                        ranges_text(&done.keys().copied().collect()),
                        seen.map_or("nothing".to_string(), |e| e.to_string())
                    );
                }
                return Ok(());
            }
        }
        let slots: BTreeSet<Slot> = done.keys().copied().collect();
        for &slot in &slots {
            self.apply_slot_change(slot, SlotChange::Drop);
        }
        let frames = slots.iter().map(|&s| slot_frame(s, SlotChange::Drop)).collect();
        self.make_durable_with(Vec::new(), frames).await?;
        let mut multi = zk.new_multi_writer();
        for (slot, (_, version)) in &done {
            multi
                .add_delete(&format!("{}/{slot}", paths.moves()), Some(*version))
                .map_err(|e| Error::zk("multi", paths.moves(), e))?;
        }
        multi.commit().await.map_err(|e| Error::zk("delete", paths.moves(), e.into()))?;
        log::info!("slots {} moved: this group's copy dropped", ranges_text(&slots));
        Ok(())
    }
}

/// A group's leader as its `leader` znode names it, and that znode's
/// version, for the cutover's check: the znode is persistent, and every
/// takeover (and every change of the in-sync set) writes it, so the check
/// fails after any failover. (The ephemeral `root` znode would not do: a
/// new leader makes it anew, at version 0 again.)
async fn group_leader(zk: &zookeeper_client::Client, paths: &zk::Paths) -> Result<(zk::LeaderRecord, i32)> {
    zk::read_leader(zk, paths)
        .await?
        .ok_or_else(|| Error::NoInSyncRoot(format!("root group {} has no leader", paths.group())))
}

/// Adds an operation to a ZooKeeper `multi` on `path`, its error said so.
fn multi_op(path: String) -> impl Fn(std::result::Result<(), zookeeper_client::Error>) -> Result<()> {
    move |r| r.map_err(|e| Error::zk("multi", path.clone(), e))
}

fn slot_frame(slot: Slot, change: SlotChange) -> Vec<u8> {
    let mut out = Vec::new();
    crate::log::codec::encode(&Entry::Slot(slot, change), &mut out);
    out
}
