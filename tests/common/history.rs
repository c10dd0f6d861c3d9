//! A history of client operations against a cluster, and a pure checker of
//! DESIGN.md's guarantees over it (1, 2, 4, 5 and 6; 3 as far as a client
//! can see it).
//!
//! Record with [`History`] (cheap to clone, thread-safe): [`History::invoke`]
//! before a request, [`History::complete`] with its [`Outcome`] after it.
//! Faults are recorded beside the operations ([`History::fault`]) so the
//! checker can excuse what a fault is allowed to lose. Then [`check`] takes
//! the operations, the faults and, when the run ended quiet, the [`Final`]
//! state, and returns [`Violation`]s; [`report`] prints each with the
//! shortest excerpt of the history that shows it.
//!
//! Nothing here knows how the cluster is made: a node is an index (the
//! slot a test addresses), the id it reported and its incarnation (bumped
//! by the test at each restart). A process killed and started again has
//! lost its memory, so the per-node guarantees (2, 5) are checked per
//! incarnation: `(index, incarnation)` is "a node".
//!
//! The rules, where the contract leaves room:
//! - Versions of a key come from a read's `X-Version` (200, or a 404 that
//!   carries a tombstone's version) and from a write's reply that carries a
//!   version (`ack=root`, or any write the root answered itself). Put values
//!   are unique per write, so a value seen anywhere names its write; a
//!   tombstone (`None`) names no write.
//! - A 404 without `X-Version` means "nothing held". It compares as version
//!   0 when no delete of the key was invoked before the read completed;
//!   otherwise it may be a collected tombstone and is not compared at all.
//!   A 404 with a version is the tombstone at that version and compares as
//!   that version.
//! - A write that failed definitely (4xx other than 404) did nothing; a
//!   write with any other error or a timeout is unknown: it may have
//!   committed, and its value may be seen.
//! - `ack=parent` durability: such a write (acknowledged without a
//!   version) must be present or superseded at the end unless the node it
//!   was written to was killed after it was invoked. The writer keeps the
//!   write until it hears the outcome and sends it again to each new
//!   parent, so it is lost only if the writer and the node that took it
//!   both die (guarantee 6); the writer's death is the part the checker
//!   can see. Other kills and pauses (SIGSTOP, ZooKeeper) excuse nothing.
//!   Superseded, for a write whose version was never seen, means the root's
//!   final value was written by a write that may be ordered after it (not
//!   one acknowledged by the root, or through the same node, before it was
//!   invoked).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// The process id the final-state reads are recorded under.
pub const FINAL_PROCESS: usize = usize::MAX;

/// The node an operation was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeRef {
    /// The slot the test addresses (its URL).
    pub index: usize,
    /// The id its /health reported, when known.
    pub id: Option<u64>,
    /// Bumped by the test each time the process at `index` is restarted.
    pub incarnation: u32,
}

impl NodeRef {
    /// The per-node identity of guarantees 2 and 5: one process lifetime.
    fn life(&self) -> (usize, u32) {
        (self.index, self.incarnation)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Get,
    GetConsistent,
    Put,
    Delete,
}

impl Kind {
    pub fn is_read(self) -> bool {
        matches!(self, Kind::Get | Kind::GetConsistent)
    }
    pub fn is_write(self) -> bool {
        !self.is_read()
    }
}

/// A write's `ack`, as the client sends it.
pub use treecache::client::Ack;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A read answered 200: `X-Version` and the body.
    Ok { version: Option<u64>, value: Option<String> },
    /// A read answered 404 (with a tombstone's `X-Version` when present), or
    /// an `ack=root` delete of a key absent at the root.
    NotFound { version: Option<u64> },
    /// A write acknowledged: `{"version":N}` (or any reply with a version),
    /// or `{"ack":"parent"}` (version `None`).
    Written { version: Option<u64> },
    /// A definite error: nothing happened (a read's error, a write's 4xx).
    Fail { status: u16 },
    /// Timeout, connection error, or a write's 5xx: it may have happened.
    Unknown { why: String },
}

#[derive(Debug, Clone)]
pub struct Op {
    /// Its index in the history.
    pub id: usize,
    /// The client that issued it ([`FINAL_PROCESS`] for the final reads).
    pub process: usize,
    pub node: NodeRef,
    pub kind: Kind,
    pub key: String,
    /// The value a put writes (unique per write).
    pub value: Option<String>,
    /// A write's ack mode.
    pub ack: Option<Ack>,
    pub invoke: Instant,
    /// `None` while in flight.
    pub complete: Option<Instant>,
    pub outcome: Option<Outcome>,
}

impl Op {
    fn done(&self) -> Instant {
        self.complete.unwrap_or(self.invoke)
    }

    /// Finished strictly before `other` started.
    fn before(&self, other: &Op) -> bool {
        self.complete.is_some_and(|c| c < other.invoke)
    }

    /// A read's observed state: `Some((version, value))`; `value` is `None`
    /// for a tombstone. `None` when the read saw no version.
    fn read_state(&self) -> Option<(u64, Option<&str>)> {
        if !self.kind.is_read() {
            return None;
        }
        match &self.outcome {
            Some(Outcome::Ok { version: Some(v), value }) => Some((*v, value.as_deref())),
            Some(Outcome::NotFound { version: Some(v) }) => Some((*v, None)),
            _ => None,
        }
    }

    /// The version a write's reply gave it.
    fn acked_version(&self) -> Option<u64> {
        match (&self.outcome, self.kind.is_write()) {
            (Some(Outcome::Written { version }), true) => *version,
            _ => None,
        }
    }

    fn acked(&self) -> bool {
        self.kind.is_write() && matches!(self.outcome, Some(Outcome::Written { .. }))
    }

    /// A write that may have taken effect (acknowledged or unknown).
    fn may_have_written(&self) -> bool {
        self.kind.is_write()
            && matches!(self.outcome, Some(Outcome::Written { .. }) | Some(Outcome::Unknown { .. }) | None)
    }

    /// What a write would store: its value, or a tombstone.
    fn written(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

/// A fault the test applied: `kill` for a process killed (its memory and
/// queues lost), otherwise a pause or a delay.
#[derive(Debug, Clone)]
pub struct Fault {
    pub what: String,
    pub node: Option<usize>,
    pub kill: bool,
    pub start: Instant,
    pub end: Option<Instant>,
}

/// The state after the run went quiet: the final reads are ops in the
/// history (process [`FINAL_PROCESS`]); this names them.
#[derive(Debug, Clone, Default)]
pub struct Final {
    /// Per key, the op id of the consistent read at the root.
    pub root: HashMap<String, usize>,
    /// Op ids of the plain reads of every key at every live node.
    pub node_reads: Vec<usize>,
    /// What each live node held (`/dump`): node, key, version, value (None:
    /// tombstone), and whether it is current (confirmed since the node's
    /// last re-attachment; one that is not is revalidated before it is
    /// served, so only what the node serves for it counts).
    pub dumps: Vec<(NodeRef, String, u64, Option<String>, bool)>,
    /// Whether held current entries must equal the root's (push mode). In
    /// ttl mode a held entry may be stale until it is read, so only reads
    /// count.
    pub compare_dumps: bool,
    /// Nodes that were meant to be up but never answered healthy.
    pub unhealthy: Vec<(usize, String)>,
}

#[derive(Default)]
struct Inner {
    ops: Vec<Op>,
    faults: Vec<Fault>,
}

/// The recorder: clone it into every client task.
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
    pub start: Instant,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> History {
        History { inner: Arc::default(), start: Instant::now() }
    }

    /// Records an operation as invoked now; returns its id for [`History::complete`].
    pub fn invoke(
        &self,
        process: usize,
        node: NodeRef,
        kind: Kind,
        key: &str,
        value: Option<String>,
        ack: Option<Ack>,
    ) -> usize {
        let mut inner = self.inner.lock();
        let id = inner.ops.len();
        let invoke = Instant::now();
        let key = key.to_string();
        inner.ops.push(Op { id, process, node, kind, key, value, ack, invoke, complete: None, outcome: None });
        id
    }

    pub fn complete(&self, id: usize, outcome: Outcome) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if let Some(op) = inner.ops.get_mut(id) {
            op.complete = Some(now);
            op.outcome = Some(outcome);
        }
    }

    /// Records a fault starting now; [`History::fault_end`] closes it.
    pub fn fault(&self, what: impl Into<String>, node: Option<usize>, kill: bool) -> usize {
        let mut inner = self.inner.lock();
        inner.faults.push(Fault { what: what.into(), node, kill, start: Instant::now(), end: None });
        inner.faults.len() - 1
    }

    pub fn fault_end(&self, fault: usize) {
        let mut inner = self.inner.lock();
        if let Some(f) = inner.faults.get_mut(fault) {
            f.end = Some(Instant::now());
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().ops.clone()
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.inner.lock().faults.clone()
    }
}

/// One broken guarantee, with the fewest ops that show it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which check: "a".."f" plus a short name.
    pub check: &'static str,
    pub key: String,
    pub what: String,
    pub ops: Vec<usize>,
}

pub const SAME_VERSION_TWO_VALUES: &str = "a: one version, two values";
pub const VALUE_FROM_NOWHERE: &str = "a: a value no write wrote";
pub const VALUE_AT_TWO_VERSIONS: &str = "b: one write at two versions (committed twice)";
pub const READ_WENT_BACK: &str = "c: a node's version went back (guarantee 2)";
pub const CONSISTENT_READ_STALE: &str = "d: consistent read missed an acknowledged write (guarantee 4)";
pub const WRITE_ORDER: &str = "e: writes through one node committed out of order (guarantee 5)";
pub const ACKED_WRITE_LOST: &str = "f: acknowledged write lost (guarantees 3, 6)";
pub const NOT_CONVERGED: &str = "f: node disagrees with the root after quiet (guarantee 1)";
pub const UNAVAILABLE: &str = "f: node unavailable after quiet";

fn violation(check: &'static str, key: &str, what: String, ops: Vec<usize>) -> Violation {
    Violation { check, key: key.to_string(), what, ops }
}

/// Every check; `fin` when the run ended with a quiet final read.
pub fn check(ops: &[Op], faults: &[Fault], fin: Option<&Final>) -> Vec<Violation> {
    let mut out = Vec::new();
    out.extend(one_value_per_version(ops));
    out.extend(values_come_from_writes(ops));
    out.extend(one_version_per_value(ops));
    out.extend(monotonic_reads(ops));
    out.extend(consistent_reads_see_acked_writes(ops));
    out.extend(per_node_write_order(ops, fin));
    if let Some(fin) = fin {
        out.extend(convergence(ops, faults, fin));
    }
    out
}

/// Every (key, version, value) a read or a write's reply showed, with the op.
fn observations(ops: &[Op]) -> Vec<(&str, u64, Option<&str>, usize)> {
    let mut out = Vec::new();
    for op in ops {
        if let Some((v, value)) = op.read_state() {
            out.push((op.key.as_str(), v, value, op.id));
        } else if let Some(v) = op.acked_version() {
            out.push((op.key.as_str(), v, op.written(), op.id));
        }
    }
    out
}

/// a. No (key, version) with two different values (a tombstone counts as a value).
pub fn one_value_per_version(ops: &[Op]) -> Vec<Violation> {
    let mut first: HashMap<(&str, u64), (Option<&str>, usize)> = HashMap::new();
    let mut reported = BTreeSet::new();
    let mut out = Vec::new();
    for (key, v, value, id) in observations(ops) {
        match first.get(&(key, v)) {
            None => {
                first.insert((key, v), (value, id));
            }
            Some(&(seen, seen_id)) if seen != value && reported.insert((key, v, value)) => out.push(violation(
                SAME_VERSION_TWO_VALUES,
                key,
                format!("{key} v{v} is {} in op {seen_id} and {} in op {id}", show(seen), show(value)),
                vec![seen_id, id],
            )),
            Some(_) => {}
        }
    }
    out
}

/// a'. Every value a read returned was written by some put of that key.
pub fn values_come_from_writes(ops: &[Op]) -> Vec<Violation> {
    let written: BTreeSet<(&str, &str)> = ops
        .iter()
        .filter(|o| o.kind == Kind::Put && o.may_have_written())
        .filter_map(|o| o.value.as_deref().map(|v| (o.key.as_str(), v)))
        .collect();
    let mut out = Vec::new();
    for op in ops {
        if let Some((v, Some(value))) = op.read_state() {
            if !written.contains(&(op.key.as_str(), value)) {
                out.push(violation(
                    VALUE_FROM_NOWHERE,
                    &op.key,
                    format!("op {} read {}={value:?} at v{v}, which no put of that key wrote", op.id, op.key),
                    vec![op.id],
                ));
            }
        }
    }
    out
}

/// b. No put's value seen at two versions: it would have been committed twice.
pub fn one_version_per_value(ops: &[Op]) -> Vec<Violation> {
    let mut first: HashMap<(&str, &str), (u64, usize)> = HashMap::new();
    let mut reported = BTreeSet::new();
    let mut out = Vec::new();
    for (key, v, value, id) in observations(ops) {
        let Some(value) = value else { continue };
        match first.get(&(key, value)) {
            None => {
                first.insert((key, value), (v, id));
            }
            Some(&(seen_v, seen_id)) if seen_v != v && reported.insert((key, value)) => out.push(violation(
                VALUE_AT_TWO_VERSIONS,
                key,
                format!("{key}={value:?} is v{seen_v} in op {seen_id} and v{v} in op {id}"),
                vec![seen_id, id],
            )),
            Some(_) => {}
        }
    }
    out
}

/// Deletes of each key, for the 404 rules.
fn deletes_by_key(ops: &[Op]) -> HashMap<&str, Vec<&Op>> {
    let mut out: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in ops.iter().filter(|o| o.kind == Kind::Delete && o.may_have_written()) {
        out.entry(op.key.as_str()).or_default().push(op);
    }
    out
}

/// The version a read compares as: its `X-Version`; 0 for a 404 without
/// one when no delete of the key started before the read ended; `None`
/// (not comparable) otherwise or when the read failed.
fn read_rank(op: &Op, deletes: &HashMap<&str, Vec<&Op>>) -> Option<u64> {
    if let Some((v, _)) = op.read_state() {
        return Some(v);
    }
    match op.outcome {
        Some(Outcome::NotFound { version: None }) => {
            let deleted = deletes.get(op.key.as_str()).is_some_and(|ds| ds.iter().any(|d| d.invoke < op.done()));
            (!deleted).then_some(0)
        }
        _ => None,
    }
}

/// One node (index, incarnation) and one key: the unit of guarantees 2 and 5.
type NodeKey<'a> = ((usize, u32), &'a str);

/// c. Per node (one incarnation), per key: a read that started after
/// another read there completed never sees an older version.
pub fn monotonic_reads(ops: &[Op]) -> Vec<Violation> {
    let deletes = deletes_by_key(ops);
    let mut groups: HashMap<NodeKey<'_>, Vec<(&Op, u64)>> = HashMap::new();
    for op in ops.iter().filter(|o| o.kind.is_read()) {
        if let Some(rank) = read_rank(op, &deletes) {
            groups.entry((op.node.life(), op.key.as_str())).or_default().push((op, rank));
        }
    }
    let mut out = Vec::new();
    for ((_, key), reads) in groups {
        for &(r2, v2) in &reads {
            let newest_before = reads.iter().filter(|(r1, v1)| r1.before(r2) && *v1 > v2).max_by_key(|(_, v1)| *v1);
            if let Some(&(r1, v1)) = newest_before {
                out.push(violation(
                    READ_WENT_BACK,
                    key,
                    format!(
                        "node {} (id {:?}) served {key} v{v1} in op {}, then v{v2} in op {}",
                        r2.node.index, r2.node.id, r1.id, r2.id
                    ),
                    vec![r1.id, r2.id],
                ));
            }
        }
    }
    out
}

/// d. A consistent read that started after a write with a known version
/// was acknowledged returns at least that version. The final reads are
/// left to check f, which reports the same loss as a lost write.
pub fn consistent_reads_see_acked_writes(ops: &[Op]) -> Vec<Violation> {
    let deletes = deletes_by_key(ops);
    let mut writes: HashMap<&str, Vec<(&Op, u64)>> = HashMap::new();
    for op in ops {
        if let Some(v) = op.acked_version() {
            writes.entry(op.key.as_str()).or_default().push((op, v));
        }
    }
    let mut out = Vec::new();
    for r in ops.iter().filter(|o| o.kind == Kind::GetConsistent && o.process != FINAL_PROCESS) {
        let Some(ws) = writes.get(r.key.as_str()) else { continue };
        let Some(&(w, vw)) = ws.iter().filter(|(w, _)| w.before(r)).max_by_key(|(_, v)| *v) else { continue };
        let missed = match read_rank(r, &deletes) {
            Some(vr) => vr < vw,
            None => false,
        };
        if missed {
            out.push(violation(
                CONSISTENT_READ_STALE,
                &r.key,
                format!(
                    "op {} acked {} v{vw} before consistent read op {} at node {} began; it returned {}",
                    w.id,
                    r.key,
                    r.id,
                    r.node.index,
                    show_outcome(r)
                ),
                vec![w.id, r.id],
            ));
        }
    }
    out
}

/// The version each put's value was seen at (the lowest, if several),
/// and the op that showed it.
fn learned_versions(ops: &[Op]) -> HashMap<(&str, &str), (u64, usize)> {
    let mut out: HashMap<(&str, &str), (u64, usize)> = HashMap::new();
    for (key, v, value, id) in observations(ops) {
        if let Some(value) = value {
            let e = out.entry((key, value)).or_insert((v, id));
            if v < e.0 {
                *e = (v, id);
            }
        }
    }
    out
}

/// A write's version: its reply's, or (a put) where its value was seen.
fn version_of(w: &Op, learned: &HashMap<(&str, &str), (u64, usize)>) -> Option<u64> {
    known_version(w, learned).map(|(v, _)| v)
}

/// A write's version and the op that showed it (the write itself, or a read).
fn known_version(w: &Op, learned: &HashMap<(&str, &str), (u64, usize)>) -> Option<(u64, usize)> {
    w.acked_version()
        .map(|v| (v, w.id))
        .or_else(|| w.value.as_deref().and_then(|v| learned.get(&(w.key.as_str(), v)).copied()))
}

/// `ops` with the ops that showed each write's version, without repeats.
fn with_witnesses(mut ops: Vec<usize>, witnesses: &[usize]) -> Vec<usize> {
    for &w in witnesses {
        if !ops.contains(&w) {
            ops.push(w);
        }
    }
    ops
}

/// The root's final read of `key`: (op, state) with state `Some((version, value))`.
fn root_final<'a>(ops: &'a [Op], fin: &Final, key: &str) -> Option<&'a Op> {
    fin.root.get(key).and_then(|&id| ops.get(id))
}

/// e. Two writes of a key through one node, the first acknowledged before
/// the second was invoked: the first gets the lower version, and the final
/// state never holds the first's value when the second was acknowledged by
/// the root.
pub fn per_node_write_order(ops: &[Op], fin: Option<&Final>) -> Vec<Violation> {
    let learned = learned_versions(ops);
    let mut groups: HashMap<NodeKey<'_>, Vec<&Op>> = HashMap::new();
    for op in ops.iter().filter(|o| o.acked() && o.process != FINAL_PROCESS) {
        groups.entry((op.node.life(), op.key.as_str())).or_default().push(op);
    }
    let mut out = Vec::new();
    for ((_, key), writes) in groups {
        let root = fin.and_then(|f| root_final(ops, f, key));
        let final_value = root.and_then(|r| r.read_state()).and_then(|(_, v)| v);
        for &w1 in &writes {
            for &w2 in writes.iter().filter(|w2| w1.before(w2)) {
                if let (Some((v1, s1)), Some((v2, s2))) = (known_version(w1, &learned), known_version(w2, &learned)) {
                    if v1 > v2 {
                        out.push(violation(
                            WRITE_ORDER,
                            key,
                            format!(
                                "through node {}: op {} (v{v1}) was acked before op {} (v{v2}) was sent",
                                w1.node.index, w1.id, w2.id
                            ),
                            with_witnesses(vec![w1.id, w2.id], &[s1, s2]),
                        ));
                        continue;
                    }
                }
                if let (Some(root), Some(fv)) = (root, final_value) {
                    if w2.acked_version().is_some() && w1.value.as_deref() == Some(fv) {
                        out.push(violation(
                            WRITE_ORDER,
                            key,
                            format!(
                                "through node {}: op {} was acked before op {} (ack=root) was sent, \
                                 yet the root ends with op {}'s value",
                                w1.node.index, w1.id, w2.id, w1.id
                            ),
                            vec![w1.id, w2.id, root.id],
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The write that wrote `value` to `key`.
fn writer_of<'a>(ops: &'a [Op], key: &str, value: &str) -> Option<&'a Op> {
    ops.iter().find(|o| o.kind == Kind::Put && o.key == key && o.value.as_deref() == Some(value))
}

/// Whether `later` may have been committed after `w`: it is not a write the
/// root acknowledged before `w` was invoked, nor one through the same node
/// acknowledged before it.
fn may_follow(later: &Op, w: &Op) -> bool {
    if later.id == w.id {
        return true;
    }
    let definitely_before =
        later.before(w) && (later.acked_version().is_some() || (later.acked() && later.node.life() == w.node.life()));
    !definitely_before
}

/// f. Durability and convergence, from the final state.
pub fn convergence(ops: &[Op], faults: &[Fault], fin: &Final) -> Vec<Violation> {
    let learned = learned_versions(ops);
    let deletes = deletes_by_key(ops);
    let mut out = Vec::new();
    for (index, why) in &fin.unhealthy {
        out.push(violation(UNAVAILABLE, "", format!("node {index} never became healthy again: {why}"), vec![]));
    }
    for &id in fin.root.values() {
        if let Some(root) = ops.get(id) {
            if !matches!(root.outcome, Some(Outcome::Ok { .. } | Outcome::NotFound { .. })) {
                out.push(violation(
                    UNAVAILABLE,
                    &root.key,
                    format!("the root could not serve {} after quiet: {}", root.key, show_outcome(root)),
                    vec![root.id],
                ));
            }
        }
    }
    // Every acknowledged write is present or superseded at the root.
    for w in ops.iter().filter(|o| o.acked() && o.process != FINAL_PROCESS) {
        let Some(root) = root_final(ops, fin, &w.key) else { continue };
        let excused = w.acked_version().is_none()
            && faults.iter().any(|f| f.kill && f.node == Some(w.node.index) && f.start > w.invoke);
        if excused {
            continue;
        }
        let root_state = root.read_state();
        let later_delete =
            || deletes.get(w.key.as_str()).is_some_and(|ds| ds.iter().any(|d| d.id != w.id && may_follow(d, w)));
        let witness = known_version(w, &learned).map(|(_, id)| id);
        let lost = match (version_of(w, &learned), root_state, &root.outcome) {
            (Some(vw), Some((vr, _)), _) => vr < vw,
            (_, None, Some(Outcome::NotFound { version: None })) => w.kind == Kind::Put && !later_delete(),
            (None, Some((_, Some(value))), _) => writer_of(ops, &w.key, value).is_some_and(|wf| !may_follow(wf, w)),
            (None, Some((_, None)), _) => w.kind == Kind::Put && !later_delete(),
            _ => false,
        };
        if lost {
            out.push(violation(
                ACKED_WRITE_LOST,
                &w.key,
                format!(
                    "op {} ({:?} {}{}) was acknowledged{}; at the end the root has {}",
                    w.id,
                    w.kind,
                    w.key,
                    w.value.as_deref().map(|v| format!("={v:?}")).unwrap_or_default(),
                    version_of(w, &learned).map(|v| format!(" at v{v}")).unwrap_or_default(),
                    show_outcome(root)
                ),
                with_witnesses(vec![w.id, root.id], &witness.into_iter().collect::<Vec<_>>()),
            ));
        }
    }
    // Every live node agrees with the root: what it serves and what it holds.
    for &id in &fin.node_reads {
        let Some(r) = ops.get(id) else { continue };
        let Some(root) = root_final(ops, fin, &r.key) else { continue };
        let agrees = match (&r.outcome, &root.outcome) {
            (Some(Outcome::Ok { version, value }), Some(Outcome::Ok { version: rv, value: rval })) => {
                version == rv && value == rval
            }
            (Some(Outcome::NotFound { .. }), Some(Outcome::NotFound { .. })) => true,
            (Some(Outcome::Fail { .. } | Outcome::Unknown { .. }), _) => {
                out.push(violation(
                    UNAVAILABLE,
                    &r.key,
                    format!("node {} could not serve {} after quiet: {}", r.node.index, r.key, show_outcome(r)),
                    vec![r.id],
                ));
                continue;
            }
            _ => false,
        };
        if !agrees {
            out.push(violation(
                NOT_CONVERGED,
                &r.key,
                format!(
                    "node {} serves {} as {}, the root as {}",
                    r.node.index,
                    r.key,
                    show_outcome(r),
                    show_outcome(root)
                ),
                vec![root.id, r.id],
            ));
        }
    }
    if fin.compare_dumps {
        for (node, key, version, value, _) in fin.dumps.iter().filter(|d| d.4) {
            let Some(root) = root_final(ops, fin, key) else { continue };
            let agrees = match root.read_state() {
                Some((rv, rval)) => rv == *version && rval == value.as_deref(),
                // The root collected the tombstone; a node may still hold one.
                None => value.is_none(),
            };
            if !agrees {
                out.push(violation(
                    NOT_CONVERGED,
                    key,
                    format!(
                        "node {} holds {key} v{version} {}, the root has {}",
                        node.index,
                        show(value.as_deref()),
                        show_outcome(root)
                    ),
                    vec![root.id],
                ));
            }
        }
    }
    out
}

fn show(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => "a tombstone".into(),
    }
}

fn show_outcome(op: &Op) -> String {
    match &op.outcome {
        None => "nothing (in flight)".into(),
        Some(Outcome::Ok { version, value }) => format!("200 v{} {:?}", opt(version), value.as_deref().unwrap_or("")),
        Some(Outcome::NotFound { version }) => format!("404 v{}", opt(version)),
        Some(Outcome::Written { version: Some(v) }) => format!("ack v{v}"),
        Some(Outcome::Written { version: None }) => "ack (parent)".into(),
        Some(Outcome::Fail { status }) => format!("failed {status}"),
        Some(Outcome::Unknown { why }) => format!("unknown ({why})"),
    }
}

fn opt(v: &Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Most lines of an excerpt.
const EXCERPT_LINES: usize = 40;

/// The ops that show `v`, with every other op on its key at the nodes
/// involved while they ran, and the faults of that window, in time order.
pub fn excerpt(ops: &[Op], faults: &[Fault], start: Instant, v: &Violation) -> String {
    let shown: Vec<&Op> = v.ops.iter().filter_map(|&id| ops.get(id)).collect();
    let mut text = String::new();
    let Some(from) = shown.iter().map(|o| o.invoke).min() else {
        return text;
    };
    let to = shown.iter().map(|o| o.done()).max().unwrap_or(from);
    let nodes: BTreeSet<usize> = shown.iter().map(|o| o.node.index).collect();
    let overlaps = |o: &&Op| o.invoke <= to && o.done() >= from;
    let mut lines: Vec<&Op> =
        ops.iter().filter(|o| o.key == v.key && nodes.contains(&o.node.index)).filter(overlaps).collect();
    if lines.len() > EXCERPT_LINES {
        lines.retain(|o| o.kind.is_write() || v.ops.contains(&o.id));
    }
    if lines.len() > EXCERPT_LINES {
        let keep: BTreeSet<usize> = v.ops.iter().copied().collect();
        let near = |o: &Op| shown.iter().map(|s| abs_ms(s.invoke, o.invoke)).min().unwrap_or(u128::MAX);
        let mut others: Vec<&Op> = lines.iter().copied().filter(|o| !keep.contains(&o.id)).collect();
        others.sort_by_key(|o| near(o));
        others.truncate(EXCERPT_LINES.saturating_sub(keep.len()));
        let others: BTreeSet<usize> = others.iter().map(|o| o.id).collect();
        lines.retain(|o| keep.contains(&o.id) || others.contains(&o.id));
    }
    lines.sort_by_key(|o| o.invoke);
    for f in faults.iter().filter(|f| f.start <= to && f.end.is_none_or(|e| e >= from)) {
        let end = f.end.map(|e| ms(start, e).to_string()).unwrap_or_else(|| "-".into());
        let _ = writeln!(text, "  fault {:>7}..{end:>7} ms  {}", ms(start, f.start), f.what);
    }
    for o in lines {
        let mark = if v.ops.contains(&o.id) { "*" } else { " " };
        let who = if o.process == FINAL_PROCESS { "final".to_string() } else { format!("p{}", o.process) };
        let ack = match o.ack {
            Some(Ack::Root) => "ack=root",
            Some(Ack::Parent) => "ack=parent",
            None => "",
        };
        let value = o.value.as_deref().map(|v| format!("{v:?}")).unwrap_or_default();
        let _ = writeln!(
            text,
            "{mark} op {:>6} {:>7}..{:>7} ms  {who:>5} node {} (id {}, life {})  {:?} {} {value} {ack} -> {}",
            o.id,
            ms(start, o.invoke),
            o.complete.map(|c| ms(start, c).to_string()).unwrap_or_else(|| "-".into()),
            o.node.index,
            opt(&o.node.id),
            o.node.incarnation,
            o.kind,
            o.key,
            show_outcome(o)
        );
    }
    text
}

fn ms(start: Instant, at: Instant) -> u128 {
    at.saturating_duration_since(start).as_millis()
}

fn abs_ms(a: Instant, b: Instant) -> u128 {
    if a > b {
        (a - b).as_millis()
    } else {
        (b - a).as_millis()
    }
}

/// Most violations printed in full per check.
const PRINT_PER_CHECK: usize = 3;
/// Most more violations named in one line each, per check.
const LIST_PER_CHECK: usize = 20;

/// The text a failing run prints: the seed, a count per check, and the
/// first few violations of each check with their excerpts.
pub fn report(seed: u64, ops: &[Op], faults: &[Fault], start: Instant, violations: &[Violation]) -> String {
    let mut text = format!("seed {seed} (replay: TREECACHE_SEED={seed}): {} violations\n", violations.len());
    let mut by_check: Vec<(&str, Vec<&Violation>)> = Vec::new();
    for v in violations {
        match by_check.iter_mut().find(|(c, _)| *c == v.check) {
            Some((_, list)) => list.push(v),
            None => by_check.push((v.check, vec![v])),
        }
    }
    for (check, list) in &by_check {
        let _ = writeln!(text, "== {check}: {}", list.len());
        for v in list.iter().take(PRINT_PER_CHECK) {
            let _ = writeln!(text, "- {}", v.what);
            text.push_str(&excerpt(ops, faults, start, v));
        }
        for v in list.iter().skip(PRINT_PER_CHECK).take(LIST_PER_CHECK) {
            let _ = writeln!(text, "- {}", v.what);
        }
        if list.len() > PRINT_PER_CHECK + LIST_PER_CHECK {
            let _ = writeln!(text, "- ... and {} more", list.len() - PRINT_PER_CHECK - LIST_PER_CHECK);
        }
    }
    text
}

/// A one-line summary per check, for the findings file.
pub fn summary(violations: &[Violation]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for v in violations {
        match counts.iter_mut().find(|(c, _)| *c == v.check) {
            Some((_, n)) => *n += 1,
            None => counts.push((v.check, 1)),
        }
    }
    counts.iter().map(|(c, n)| format!("{n} x {c}")).collect::<Vec<_>>().join("; ")
}
