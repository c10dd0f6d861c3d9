//! The history checker: first on hand-made histories (each check fires on
//! a crafted bad history and stays quiet on a good one), then on real
//! clusters under a seeded random workload with faults (kill -9 and restart
//! of inner nodes and leaves, SIGSTOP of the root past its ZooKeeper
//! session, ZooKeeper paused, fills, write replies and pushes delayed),
//! ending quiet so convergence
//! and durability can be checked. `TREECACHE_SEED=N` replays a run's
//! workload and fault schedule.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::history::{self as h, Ack, Fault, Final, Kind, NodeRef, Op, Outcome, FINAL_PROCESS};
use common::workload::{self, Nodes, Step, Workload, SESSION};
use common::{wait_past, Cluster, Opts};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------
// The checker on hand-made histories.

/// Builds a history op by op; times are milliseconds from its start.
struct Hand {
    t0: Instant,
    ops: Vec<Op>,
    faults: Vec<Fault>,
}

fn ok(version: u64, value: &str) -> Outcome {
    Outcome::Ok { version: Some(version), value: Some(value.into()) }
}

fn acked(version: Option<u64>) -> Outcome {
    Outcome::Written { version }
}

impl Hand {
    fn new() -> Hand {
        Hand { t0: Instant::now(), ops: Vec::new(), faults: Vec::new() }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    #[allow(clippy::too_many_arguments)]
    fn op(
        &mut self,
        process: usize,
        node: (usize, u32),
        kind: Kind,
        key: &str,
        value: Option<&str>,
        span: (u64, u64),
        outcome: Outcome,
    ) -> usize {
        let id = self.ops.len();
        let ack = match (&outcome, kind.is_write()) {
            (Outcome::Written { version: None }, true) => Some(Ack::Parent),
            (_, true) => Some(Ack::Root),
            _ => None,
        };
        self.ops.push(Op {
            id,
            process,
            node: NodeRef { index: node.0, id: Some(node.0 as u64 + 1), incarnation: node.1 },
            kind,
            key: key.into(),
            value: value.map(String::from),
            ack,
            invoke: self.at(span.0),
            complete: Some(self.at(span.1)),
            outcome: Some(outcome),
        });
        id
    }

    fn put(&mut self, p: usize, node: usize, key: &str, value: &str, span: (u64, u64), out: Outcome) -> usize {
        self.op(p, (node, 0), Kind::Put, key, Some(value), span, out)
    }

    fn get(&mut self, p: usize, node: usize, key: &str, span: (u64, u64), out: Outcome) -> usize {
        self.op(p, (node, 0), Kind::Get, key, None, span, out)
    }

    fn checks(&self, fin: Option<&Final>) -> Vec<&'static str> {
        h::check(&self.ops, &self.faults, fin).iter().map(|v| v.check).collect()
    }
}

#[test]
fn one_version_with_two_values_is_caught() {
    let mut hist = Hand::new();
    hist.put(0, 0, "k", "a", (0, 5), acked(Some(3)));
    hist.put(1, 1, "k", "b", (0, 5), acked(None));
    hist.get(2, 2, "k", (10, 12), ok(3, "a"));
    assert!(hist.checks(None).is_empty(), "a value read at the version its write was acked at is fine");
    hist.get(2, 3, "k", (10, 12), ok(3, "b"));
    assert_eq!(hist.checks(None), [h::SAME_VERSION_TWO_VALUES]);
}

#[test]
fn a_value_nobody_wrote_is_caught() {
    let mut hist = Hand::new();
    hist.put(0, 0, "k", "a", (0, 5), Outcome::Unknown { why: "timeout".into() });
    hist.get(1, 1, "k", (6, 8), ok(1, "a"));
    assert!(hist.checks(None).is_empty(), "a write with an unknown outcome may be seen");
    hist.get(1, 1, "other", (6, 8), ok(1, "a"));
    assert_eq!(hist.checks(None), [h::VALUE_FROM_NOWHERE]);
}

#[test]
fn a_write_committed_twice_is_caught() {
    let mut hist = Hand::new();
    hist.put(0, 0, "k", "a", (0, 5), acked(None));
    hist.get(1, 1, "k", (6, 8), ok(4, "a"));
    hist.get(1, 2, "k", (9, 10), ok(4, "a"));
    assert!(hist.checks(None).is_empty());
    hist.get(1, 3, "k", (11, 12), ok(7, "a"));
    assert_eq!(hist.checks(None), [h::VALUE_AT_TWO_VERSIONS]);
}

#[test]
fn a_node_going_back_is_caught_but_not_across_overlap_or_restart() {
    let mut hist = Hand::new();
    hist.put(0, 0, "k", "a", (0, 1), acked(Some(3)));
    hist.put(0, 0, "k", "b", (2, 3), acked(Some(5)));
    hist.get(1, 1, "k", (10, 30), ok(5, "b"));
    hist.get(2, 1, "k", (20, 25), ok(3, "a")); // overlaps the first read: either order
    hist.op(1, (1, 1), Kind::Get, "k", None, (40, 41), ok(3, "a")); // a new incarnation
    assert!(hist.checks(None).is_empty());
    hist.get(1, 1, "k", (40, 41), ok(3, "a"));
    assert_eq!(hist.checks(None), [h::READ_WENT_BACK]);
}

#[test]
fn a_404_after_a_value_goes_back_unless_a_delete_may_explain_it() {
    let mut hist = Hand::new();
    hist.put(0, 0, "k", "a", (0, 1), acked(Some(3)));
    hist.get(1, 1, "k", (10, 11), ok(3, "a"));
    hist.get(1, 1, "k", (20, 21), Outcome::NotFound { version: None });
    assert_eq!(hist.checks(None), [h::READ_WENT_BACK]);
    hist.op(0, (2, 0), Kind::Delete, "k", None, (15, 16), acked(None));
    assert!(hist.checks(None).is_empty());
    // A tombstone's version compares as that version.
    hist.get(1, 1, "k", (30, 31), Outcome::NotFound { version: Some(2) });
    assert_eq!(hist.checks(None), [h::READ_WENT_BACK]);
}

#[test]
fn a_consistent_read_that_misses_an_acked_write_is_caught() {
    let mut hist = Hand::new();
    hist.put(0, 0, "k", "a", (0, 1), acked(Some(3)));
    hist.put(0, 0, "k", "b", (5, 10), acked(Some(5)));
    hist.op(1, (1, 0), Kind::GetConsistent, "k", None, (4, 12), ok(3, "a")); // concurrent
    assert!(hist.checks(None).is_empty());
    hist.op(1, (2, 0), Kind::GetConsistent, "k", None, (11, 12), ok(3, "a"));
    assert_eq!(hist.checks(None), [h::CONSISTENT_READ_STALE]);
}

#[test]
fn writes_through_one_node_out_of_order_are_caught() {
    let mut hist = Hand::new();
    let w1 = hist.put(0, 1, "k", "a", (0, 1), acked(None));
    hist.put(1, 1, "k", "b", (2, 3), acked(Some(6)));
    hist.put(2, 2, "k", "c", (0, 1), acked(Some(4))); // another node: free to land anywhere
    assert!(hist.checks(None).is_empty());
    // The first write (ack=parent) turns out to have committed after the second.
    hist.get(3, 3, "k", (10, 11), ok(8, "a"));
    assert_eq!(hist.checks(None), [h::WRITE_ORDER]);
    assert_eq!(hist.ops[w1].node.index, 1);
}

#[test]
fn the_final_state_holding_an_earlier_write_through_the_same_node_is_caught() {
    let mut hist = Hand::new();
    hist.put(0, 1, "k", "a", (0, 1), acked(None));
    hist.put(1, 1, "k", "b", (2, 3), acked(Some(6)));
    let root = hist.op(FINAL_PROCESS, (0, 0), Kind::GetConsistent, "k", None, (50, 51), ok(6, "b"));
    let fin = Final { root: [("k".to_string(), root)].into(), ..Final::default() };
    assert!(hist.checks(Some(&fin)).is_empty());
    hist.ops[root].outcome = Some(ok(7, "a"));
    let found = hist.checks(Some(&fin));
    assert!(found.contains(&h::WRITE_ORDER), "{found:?}");
}

/// A history of one acked write and a final root read of `root_outcome`.
fn durability(write: Outcome, root_outcome: Outcome) -> (Hand, Final) {
    let mut hist = Hand::new();
    hist.put(0, 1, "k", "a", (0, 1), acked(Some(2)));
    hist.put(1, 2, "k", "b", (10, 11), write);
    hist.put(2, 3, "k", "c", (5, 20), Outcome::Unknown { why: "timeout".into() });
    let root = hist.op(FINAL_PROCESS, (0, 0), Kind::GetConsistent, "k", None, (50, 51), root_outcome);
    (hist, Final { root: [("k".to_string(), root)].into(), ..Final::default() })
}

#[test]
fn an_acked_write_missing_at_the_end_is_caught() {
    let (hist, fin) = durability(acked(Some(5)), ok(5, "b"));
    assert!(hist.checks(Some(&fin)).is_empty());
    let (hist, fin) = durability(acked(Some(5)), ok(6, "c"));
    assert!(hist.checks(Some(&fin)).is_empty(), "superseded by a later write");
    let (hist, fin) = durability(acked(Some(5)), ok(2, "a"));
    assert_eq!(hist.checks(Some(&fin)), [h::ACKED_WRITE_LOST]);
    // Nothing at all: both acknowledged writes are lost.
    let (hist, fin) = durability(acked(Some(5)), Outcome::NotFound { version: None });
    assert_eq!(hist.checks(Some(&fin)), [h::ACKED_WRITE_LOST, h::ACKED_WRITE_LOST]);
}

#[test]
fn an_ack_parent_write_lost_is_caught_unless_its_writer_was_killed() {
    // Never seen, and the root ends with a write the root acknowledged
    // before it was even sent: lost.
    let (hist, fin) = durability(acked(None), ok(2, "a"));
    assert_eq!(hist.checks(Some(&fin)), [h::ACKED_WRITE_LOST]);
    // A concurrent write may have superseded it unseen.
    let (hist, fin) = durability(acked(None), ok(6, "c"));
    assert!(hist.checks(Some(&fin)).is_empty());
    // Another node killed after it was sent (its parent, say) excuses
    // nothing: the writer still holds the write and sends it again.
    let (mut hist, fin) = durability(acked(None), ok(2, "a"));
    let at = hist.at(30);
    hist.faults.push(Fault { what: "kill -9 node 1".into(), node: Some(1), kill: true, start: at, end: Some(at) });
    assert_eq!(hist.checks(Some(&fin)), [h::ACKED_WRITE_LOST]);
    // The writer killed after it was sent may have lost it with its parent.
    hist.faults[0].node = Some(2);
    assert!(hist.checks(Some(&fin)).is_empty());
    // A pause excuses nothing.
    hist.faults[0].kill = false;
    assert_eq!(hist.checks(Some(&fin)), [h::ACKED_WRITE_LOST]);
}

#[test]
fn a_node_disagreeing_with_the_root_after_quiet_is_caught() {
    let (mut hist, mut fin) = durability(acked(Some(5)), ok(5, "b"));
    let read = hist.op(FINAL_PROCESS, (3, 0), Kind::Get, "k", None, (52, 53), ok(5, "b"));
    fin.node_reads.push(read);
    fin.compare_dumps = true;
    let node = NodeRef { index: 3, id: Some(4), incarnation: 0 };
    fin.dumps.push((node, "k".into(), 5, Some("b".into()), true));
    // Kept across a re-attachment, not confirmed yet: revalidated before use.
    fin.dumps.push((NodeRef { index: 4, ..node }, "k".into(), 2, Some("a".into()), false));
    assert!(hist.checks(Some(&fin)).is_empty());
    // What a node holds as current but nobody reads there.
    fin.dumps[1].4 = true;
    assert_eq!(hist.checks(Some(&fin)), [h::NOT_CONVERGED]);
    fin.compare_dumps = false; // ttl mode: a held entry may be stale until read
    assert!(hist.checks(Some(&fin)).is_empty());
    // What a node serves.
    hist.ops[read].outcome = Some(ok(2, "a"));
    assert!(hist.checks(Some(&fin)).contains(&h::NOT_CONVERGED));
    hist.ops[read].outcome = Some(Outcome::Fail { status: 503 });
    assert_eq!(hist.checks(Some(&fin)), [h::UNAVAILABLE]);
}

#[test]
fn a_report_names_the_seed_and_shows_only_the_ops_that_matter() {
    let mut hist = Hand::new();
    hist.put(0, 0, "k", "a", (0, 1), acked(Some(3)));
    hist.put(0, 0, "k", "b", (2, 3), acked(Some(5)));
    let r1 = hist.get(1, 1, "k", (10, 11), ok(5, "b"));
    hist.get(2, 1, "other", (12, 13), Outcome::NotFound { version: None });
    hist.get(2, 2, "k", (12, 13), ok(5, "b"));
    let r2 = hist.get(1, 1, "k", (20, 21), ok(3, "a"));
    let found = h::check(&hist.ops, &[], None);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].ops, [r1, r2]);
    let text = h::report(42, &hist.ops, &[], hist.t0, &found);
    assert!(text.contains("seed 42"), "{text}");
    assert!(text.contains(h::READ_WENT_BACK), "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" ms ")).collect();
    assert_eq!(lines.len(), 2, "only the two reads at node 1 on k: {text}");
    assert!(lines.iter().all(|l| l.starts_with('*')), "{text}");
}

// ---------------------------------------------------------------------------
// Real clusters.

/// Fails with the report when the checker finds anything; prints the count.
fn verdict(name: &str, seed: u64, history: &h::History, fin: &Final) {
    let ops = history.ops();
    let faults = history.faults();
    let found = h::check(&ops, &faults, Some(fin));
    let client_ops = ops.iter().filter(|o| o.process != FINAL_PROCESS).count();
    eprintln!(
        "{name}: seed {seed}: {client_ops} client ops and {} final reads checked, {} faults, {} violations",
        ops.len() - client_ops,
        faults.len(),
        found.len()
    );
    for f in &faults {
        eprintln!("  {}", f.what);
    }
    assert!(
        found.is_empty(),
        "{name}: {}\n{}",
        h::summary(&found),
        h::report(seed, &ops, &faults, history.start, &found)
    );
}

/// How long one history run goes, and how it ends.
struct Timing {
    /// Faults happen within this window from the start.
    faults: Duration,
    /// The clients go on this long after the last fault.
    tail: Duration,
    /// Whether every node's /dump must agree with the root at the end.
    compare_dumps: bool,
    /// At most this long for the tree to settle after the clients stop.
    settle: Duration,
    /// Then this much more (ttl mode: max-age at every level).
    fresh_after: Duration,
}

/// Runs `work` with the fault `plan` on `cluster`, keeps the clients going
/// after the last fault, stops them, lets the tree settle, and checks the
/// history (printing `seed` with any violation).
async fn run_and_check(
    name: &str,
    seed: u64,
    cluster: &mut Cluster,
    work: &Workload,
    plan: &[(Duration, Step)],
    t: Timing,
) {
    let nodes = Nodes::of(cluster);
    let history = h::History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let clients = work.spawn(seed, &nodes, &history, &stop, start + t.faults + t.tail + Duration::from_secs(30));
    let unhealthy = workload::run_faults(cluster, &nodes, &history, seed, plan, start + t.faults).await;
    wait_past(Instant::now() + t.tail).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let keys = work.key_names();
    let fin = workload::final_state(&nodes, &history, &keys, t.compare_dumps, t.settle, t.fresh_after, unhealthy).await;
    verdict(name, seed, &history, &fin);
}

#[tokio::test(flavor = "multi_thread")]
async fn push_mode_keeps_its_guarantees_under_faults() {
    let name = "push_mode_keeps_its_guarantees_under_faults";
    let seed = workload::seed(name);
    let mut rng = StdRng::seed_from_u64(seed);
    // Hidden fault knobs (docs/testing.md), drawn from the seed: fills,
    // write replies and push batches held, so pushes race fills and replies.
    let mut knobs = Vec::new();
    for (flag, max) in [("--fault-fill-delay-ms", 150), ("--fault-write-delay-ms", 300), ("--fault-push-delay-ms", 300)]
    {
        knobs.extend([flag.to_string(), rng.gen_range(0..=max).to_string()]);
    }
    eprintln!("{name}: knobs {}", knobs.join(" "));
    let mut cluster =
        Cluster::start_opts(Opts { nodes: 7, root_args: knobs.clone(), node_args: knobs, ..Opts::default() }).await;
    let steps = [
        Step::KillInner,
        Step::KillLeaf,
        Step::KillLeaf,
        Step::PauseRoot(SESSION + Duration::from_millis(rng.gen_range(1500..=3000))),
        Step::PauseRoot(Duration::from_millis(rng.gen_range(500..=2000))),
        Step::PauseZk(Duration::from_millis(rng.gen_range(2000..=8000))),
    ];
    let plan = workload::schedule(seed, &steps, (1000, 3000));
    let timing = Timing {
        faults: Duration::from_secs(60),
        tail: Duration::from_secs(2),
        compare_dumps: true,
        settle: Duration::from_secs(20),
        fresh_after: Duration::ZERO,
    };
    run_and_check(name, seed, &mut cluster, &Workload::default(), &plan, timing).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_mode_converges_and_never_goes_back_under_faults() {
    let name = "ttl_mode_converges_and_never_goes_back_under_faults";
    let seed = workload::seed(name);
    let mut rng = StdRng::seed_from_u64(seed);
    let max_age = Duration::from_millis(500);
    let mut cluster =
        Cluster::start_opts(Opts { nodes: 5, mode: "ttl", max_age: Some("500ms"), ..Opts::default() }).await;
    let steps = [Step::KillLeaf, Step::KillInner, Step::PauseZk(Duration::from_millis(rng.gen_range(1000..=3000)))];
    let plan = workload::schedule(seed, &steps, (500, 2000));
    let work = Workload { clients: 4, ..Workload::default() };
    // Guarantee 1 in ttl mode holds once max-age has passed at every level
    // after the last commit (the tree is at most this deep after restarts).
    let depth = cluster.len() as u32;
    let timing = Timing {
        faults: Duration::from_secs(25),
        tail: Duration::from_secs(2),
        compare_dumps: false,
        settle: Duration::from_secs(10),
        fresh_after: max_age * depth,
    };
    run_and_check(name, seed, &mut cluster, &work, &plan, timing).await;
}

/// Issue 11's chaos run: two root candidates with commit logs (the leader
/// and a standby) and nine caches; ack=root writers with unique values and
/// readers at random nodes, standbys included; kill -9 and restart of the
/// leader (twice: each time the standby takes over and the old leader
/// rejoins as a standby), of inner nodes and leaves, a SIGSTOP of the
/// leader past its session, and a ZooKeeper pause; then quiet, and the
/// checker: every acknowledged write present or superseded, one value per
/// version, no node going back, every node agreeing with the root.
#[tokio::test(flavor = "multi_thread")]
async fn standby_roots_keep_every_acknowledged_write_under_chaos() {
    let name = "standby_roots_keep_every_acknowledged_write_under_chaos";
    let seed = workload::seed(name);
    let mut rng = StdRng::seed_from_u64(seed);
    let roots = ["--fsync", "always", "--insync-timeout", "2s"].map(String::from).to_vec();
    let mut cluster = Cluster::start_opts(Opts {
        nodes: 10,
        fanout: 3,
        durable_root: true,
        root_args: roots.clone(),
        ..Opts::default()
    })
    .await;
    let standby_dir = tempfile::tempdir().expect("standby data dir");
    let dir = standby_dir.path().display().to_string();
    let mut flags: Vec<&str> = vec!["--root", "--data-dir", &dir];
    flags.extend(roots.iter().map(String::as_str));
    let standby = cluster.add_node_with(&flags).await;
    assert_eq!(cluster.health(standby).await["role"], "standby");
    let steps = [
        Step::KillRoot,
        Step::KillRoot,
        Step::KillInner,
        Step::KillLeaf,
        Step::PauseRoot(SESSION + Duration::from_millis(rng.gen_range(1500..=3000))),
        Step::PauseZk(Duration::from_millis(rng.gen_range(2000..=5000))),
    ];
    let plan = workload::schedule(seed, &steps, (2000, 5000));
    let work =
        Workload { ack_root_percent: 100, fresh_percent: 30, timeout: Duration::from_secs(8), ..Workload::default() };
    let timing = Timing {
        faults: Duration::from_secs(75),
        tail: Duration::from_secs(3),
        compare_dumps: true,
        settle: Duration::from_secs(40),
        fresh_after: Duration::ZERO,
    };
    run_and_check(name, seed, &mut cluster, &work, &plan, timing).await;
}

/// Issue 19's history run: two root groups, each a leader and a standby
/// with commit logs, and seven caches; the seeded workload (plain and
/// consistent reads, puts and deletes, both acks) at random nodes while
/// slots move back and forth between the groups (`slots move`, a range
/// around a workload key's slot each time), each group's leader is killed
/// -9 and restarted (its standby takes over), group 1's leader is paused
/// past its session, and ZooKeeper pauses. Then
/// quiet: the checker as above (one value per version, so no version
/// carries two values across groups; values only from writes; no node
/// going back, so no 404 for a key that exists; consistent reads see every
/// acknowledged write; per-node order; convergence), and no root holds a
/// key of a slot its group does not own.
#[tokio::test(flavor = "multi_thread")]
async fn root_groups_keep_their_guarantees_while_slots_move_under_faults() {
    let name = "root_groups_keep_their_guarantees_while_slots_move_under_faults";
    let seed = workload::seed(name);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start_opts(Opts { nodes: 7, durable_root: true, ..Opts::default() }).await;
    let dirs = tempfile::tempdir().expect("data dirs");
    for (group, name) in [("0", "g0-b"), ("1", "g1-a"), ("1", "g1-b")] {
        let dir = dirs.path().join(name).display().to_string();
        cluster.add_node_with(&["--root", "--group", group, "--data-dir", &dir]).await;
    }
    let steps = [
        Step::MoveSlots,
        Step::MoveSlots,
        Step::MoveSlots,
        Step::MoveSlots,
        Step::KillGroupLeader(0),
        Step::KillGroupLeader(1),
        Step::PauseGroupLeader(1, SESSION + Duration::from_millis(rng.gen_range(1000..=2500))),
        Step::PauseZk(Duration::from_millis(rng.gen_range(1000..=3000))),
    ];
    let plan = workload::schedule(seed, &steps, (1000, 3000));
    let work = Workload { timeout: Duration::from_secs(8), ..Workload::default() };
    let timing = Timing {
        faults: Duration::from_secs(60),
        tail: Duration::from_secs(2),
        compare_dumps: true,
        settle: Duration::from_secs(40),
        fresh_after: Duration::ZERO,
    };
    run_and_check(name, seed, &mut cluster, &work, &plan, timing).await;
    // No orphan copies: once every move is done, each root (leaders and
    // standbys) holds keys of its own group's slots only.
    let zk = cluster.zk.client().await;
    let base = format!("/treecache/{}", cluster.name);
    let mut moves = Vec::new();
    for _ in 0..100 {
        moves = zk.list_children(&format!("{base}/moves")).await.unwrap_or_default();
        if moves.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(moves.is_empty(), "{name}: seed {seed}: moves left: {moves:?}");
    let (data, _) = zk.get_data(&format!("{base}/slots")).await.expect("the slot map");
    let map = treecache::slots::SlotMap::from_json(&data).expect("a slot map");
    eprintln!("{name}: seed {seed}: final map {map}");
    for i in cluster.alive() {
        let health = cluster.health(i).await;
        let Some(group) = health["group"].as_u64() else { continue };
        for key in cluster.dump_keys(i).await {
            assert_eq!(
                u64::from(map.owner_of(&key)),
                group,
                "{name}: seed {seed}: node {i} (group {group}) holds {key}, of slot {} (group {}'s)",
                treecache::slots::slot_of(&key),
                map.owner_of(&key)
            );
        }
    }
}
