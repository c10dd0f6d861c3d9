//! Slot moves between root groups (DESIGN.md "Root groups"): `treecache
//! slots rebalance` and `slots move` under writers, and a root killed -9
//! while its slots are frozen (`--fault-move-pause-ms`): every
//! acknowledged write is readable at every node after, at its owner only,
//! with a version above every version it had, and the source keeps no
//! copy once every node routes by the new map.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, Cluster, Opts};
use parking_lot::Mutex;
use serde_json::Value;
use treecache::slots::{slot_of, SlotMap};

const BIN: &str = env!("CARGO_BIN_EXE_treecache");

fn treecache(args: &[&str]) -> Output {
    common::output_within(Command::new(BIN).args(args), Duration::from_secs(150))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn znode(c: &Cluster, rel: &str) -> Option<Value> {
    let zk = c.zk.client().await;
    let (data, _) = zk.get_data(&format!("/treecache/{}/{rel}", c.name)).await.ok()?;
    serde_json::from_slice(&data).ok()
}

async fn slot_map(c: &Cluster) -> SlotMap {
    let zk = c.zk.client().await;
    let (data, _) = zk.get_data(&format!("/treecache/{}/slots", c.name)).await.expect("the slot map");
    SlotMap::from_json(&data).expect("a slot map")
}

/// `treecache slots ARGS..` against the cluster, with its secret.
async fn slots_cmd(c: &Cluster, args: &[&str]) -> Output {
    let zk = c.zk.addr();
    let secret = c.secret();
    let mut all: Vec<String> = vec!["slots".into(), "--zk".into(), zk, "--cluster".into(), c.name.clone()];
    all.extend(args.iter().map(|a| a.to_string()));
    if args.first().is_some_and(|a| *a == "move" || *a == "rebalance") {
        all.extend(["--cluster-secret".into(), secret]);
    }
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        treecache(&refs)
    })
    .await
    .expect("the slots command ran")
}

/// A root candidate of `group` with a data directory of its own.
async fn add_group_root(c: &mut Cluster, group: &str, name: &str, extra: &[&str]) -> usize {
    let dir = c.path(name).display().to_string();
    let mut flags = vec!["--root", "--group", group, "--data-dir", &dir];
    flags.extend_from_slice(extra);
    c.add_node_with(&flags).await
}

/// `POST /internal/import` (`url`, its query included) as group leader of
/// `epoch` would send it: the status and the JSON answer.
async fn post_import(http: reqwest::Client, url: String, epoch: u64, body: Vec<u8>) -> (u16, Value) {
    let resp = http.post(url).header("x-treecache-epoch", epoch).body(body).send().await.expect("answered");
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

async fn wait_in_sync(c: &Cluster, group: u32, roots: usize) {
    wait_until(Duration::from_secs(30), "the group's standbys in its in-sync set", || async {
        znode(c, &format!("groups/{group}/leader")).await.and_then(|r| r["in_sync"].as_array().map(|a| a.len()))
            == Some(roots)
    })
    .await;
}

/// What the writers were told: per key, the last acknowledged value and
/// its version (each acknowledgement's version above the one before).
type Acked = Arc<Mutex<HashMap<String, (String, u64)>>>;

/// Writes `key` = `value` at node `at` with ack=root until it is
/// acknowledged (a failover or a frozen slot may answer 503 first; the
/// same write again is the same value), and records it.
async fn write_acked(c: &Cluster, at: usize, key: &str, value: &str, acked: &Acked) {
    for _ in 0..60 {
        let (status, body) = c.put(at, key, value, "?ack=root").await;
        if status == 200 || status == 201 {
            let version = body["version"].as_u64().unwrap_or_else(|| panic!("{key}: no version in {body}"));
            let mut acked = acked.lock();
            if let Some((_, before)) = acked.get(key) {
                assert!(version > *before, "{key}: version {version} acknowledged after {before}");
            }
            acked.insert(key.to_string(), (value.to_string(), version));
            return;
        }
        assert_eq!(status, 503, "PUT {key} at node {at}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("PUT {key} at node {at} was not acknowledged in 60 tries");
}

/// `writers` writers over `keys` at the non-root nodes `at`, round after
/// round, until `stop`, writer `w` writing `value(key, round)` to every
/// `writers`-th key from the `w`-th; each key is one writer's, so its last
/// acknowledgement is its value.
fn start_writers(
    c: &Arc<Cluster>,
    keys: &[String],
    writers: usize,
    at: &[usize],
    value: fn(&str, u32) -> String,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
            let mine: Vec<String> = keys.iter().skip(w).step_by(writers).cloned().collect();
            let at = at.to_vec();
            tokio::spawn(async move {
                let mut round = 1;
                while !stop.load(Ordering::Relaxed) {
                    for (i, key) in mine.iter().enumerate() {
                        write_acked(&c, at[(i + w) % at.len()], key, &value(key, round), &acked).await;
                    }
                    round += 1;
                }
            })
        })
        .collect()
}

/// A round's value of `key`: `r<round>-<key>`.
fn round_value(key: &str, round: u32) -> String {
    format!("r{round}-{key}")
}

/// After the moves: every acknowledged value at every non-root node and
/// by a consistent read, each key at its owner's root only, no move left.
async fn check_after(c: &Cluster, acked: &Acked, roots: &[(u32, usize)], nodes: &[usize]) {
    let map = slot_map(c).await;
    wait_until(Duration::from_secs(30), "every move finished and dropped at its source", || async {
        c.zk_tree("moves").await.is_empty()
    })
    .await;
    let acked = acked.lock().clone();
    for &(group, root) in roots {
        let held = c.dump_keys(root).await;
        for key in acked.keys() {
            let owner = map.owner_of(key);
            assert_eq!(
                held.contains(key),
                owner == group,
                "{key} (slot {}, group {owner}'s) at group {group}'s root",
                slot_of(key)
            );
        }
    }
    for (key, (value, version)) in &acked {
        let read = c.get(nodes[0], key, "?consistent=true").await;
        assert_eq!((read.status, read.text()), (200, value.clone()), "consistent read of {key}");
        assert!(read.version >= Some(*version), "{key}: read {:?}, acknowledged {version}", read.version);
    }
    for &i in nodes {
        wait_until(Duration::from_secs(20), "every node serves every acknowledged value", || async {
            for (key, (value, _)) in &acked {
                if c.get(i, key, "").await.text() != *value {
                    return false;
                }
            }
            true
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_under_writers_hands_half_the_slots_over_and_loses_no_acknowledged_write() {
    // Root (group 0) + 2 routers + 2 leaves; group 1: a leader and a standby.
    let mut c = Cluster::start_opts(Opts { nodes: 5, durable_root: true, ..Opts::default() }).await;
    let g1 = add_group_root(&mut c, "1", "g1-a", &[]).await;
    let g1_standby = add_group_root(&mut c, "1", "g1-b", &[]).await;
    wait_in_sync(&c, 1, 2).await;
    let keys: Vec<String> = (0..240).map(|i| format!("m-{i}")).collect();
    let acked: Acked = Arc::default();
    for (i, key) in keys.iter().enumerate() {
        write_acked(&c, 1 + i % 4, key, &format!("r0-{key}"), &acked).await;
    }
    // The leaves hold some: pushes and resets reach them through the move.
    for key in keys.iter().step_by(4) {
        assert_eq!(c.get(3, key, "").await.status, 200);
    }
    let before = slot_map(&c).await;

    let c = Arc::new(c);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&c, &keys, 3, &[1, 2, 3, 4], round_value, &acked, &stop);
    // The writers are under way (some key acknowledged a second time).
    wait_until(Duration::from_secs(20), "the writers write", || async {
        acked.lock().values().any(|(v, _)| v.starts_with("r1-"))
    })
    .await;
    let out = slots_cmd(&c, &["rebalance"]).await;
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("-1023 to group 1"), "{said}");
    // Writes go on to both groups after the cutover: a key of each group
    // acknowledged again after the rebalance returned.
    let at_handover = acked.lock().clone();
    let moved = slot_map(&c).await;
    wait_until(Duration::from_secs(30), "writes to both groups after the cutover", || async {
        let now = acked.lock().clone();
        let again = |group: u32| {
            now.iter().any(|(k, (_, v))| moved.owner_of(k) == group && at_handover.get(k).is_some_and(|(_, b)| v > b))
        };
        again(0) && again(1)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("a writer");
    }
    let map = slot_map(&c).await;
    // Handed over in rounds of at most 64 slots, an epoch each.
    assert!(said.contains(&format!("handed over at slot map epoch {}", map.epoch())), "{said}");
    assert_eq!(map.epoch(), before.epoch() + map.count(1).div_ceil(64) as u64, "{map}");
    assert!((500..=524).contains(&map.count(1)), "group 1 owns {} slots: {map}", map.count(1));
    assert_eq!(map.ranges_of(1), format!("{}-1023", 1024 - map.count(1)), "one range, the top");
    let moved = keys.iter().filter(|k| map.owner_of(k) == 1).count();
    assert!(moved > 60, "only {moved} of the keys moved");
    check_after(&c, &acked, &[(0, 0), (1, g1)], &[1, 2, 3, 4]).await;
    // The standby of group 1 holds the moved keys too (its log took them).
    let held = c.dump_keys(g1_standby).await;
    assert!(keys.iter().filter(|k| map.owner_of(k) == 1).all(|k| held.contains(k)), "group 1's standby");
    // `slots` shows the new map, every node on it, no move left.
    let out = slots_cmd(&c, &[]).await;
    let said = text(&out);
    assert!(said.contains("moves in progress: none"), "{said}");
    assert!(said.contains(&format!("live nodes on map epoch {}: 7 of 7", map.epoch())), "{said}");
    // A second rebalance finds nothing to move.
    let out = slots_cmd(&c, &["rebalance"]).await;
    assert!(out.status.success() && text(&out).contains("nothing to move"), "{}", text(&out));
}

/// Group 0: the root (`nodes` - 1 routers under it) and a standby; group
/// 1: a leader and a standby; both groups in sync. Every root pauses 3 s
/// once its slots are frozen. Returns the cluster, group 0's standby,
/// group 1's leader and group 1's standby.
async fn two_groups_with_standbys(nodes: usize) -> (Cluster, usize, usize, usize) {
    let pause = ["--fault-move-pause-ms", "3000"];
    let mut c = Cluster::start_opts(Opts {
        nodes,
        durable_root: true,
        root_args: pause.iter().map(|s| s.to_string()).collect(),
        ..Opts::default()
    })
    .await;
    let g0_standby = add_group_root(&mut c, "0", "g0-b", &pause).await;
    let g1 = add_group_root(&mut c, "1", "g1-a", &pause).await;
    let g1_standby = add_group_root(&mut c, "1", "g1-b", &pause).await;
    wait_in_sync(&c, 0, 2).await;
    wait_in_sync(&c, 1, 2).await;
    (c, g0_standby, g1, g1_standby)
}

/// Writes `r<round>-<key>` to each of `keys`, acknowledged, at the routers
/// 1..=`routers` in turn.
async fn write_round(c: &Cluster, keys: &[&String], routers: usize, round: u32, acked: &Acked) {
    for (i, key) in keys.iter().enumerate() {
        write_acked(c, 1 + i % routers, key, &format!("r{round}-{key}"), acked).await;
    }
}

/// `slots move --slots RANGE --to TO` in the background, returned once
/// the range's first slot is frozen.
async fn move_until_frozen(c: &Cluster, range: &str, to: &str) -> tokio::task::JoinHandle<Output> {
    let first = range.split('-').next().expect("a range");
    let moving = move_in_background(c, range, to);
    wait_until(Duration::from_secs(30), &format!("slots {range} frozen"), || async {
        znode(c, &format!("moves/{first}")).await.is_some_and(|m| m["state"] == "frozen")
    })
    .await;
    moving
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_survives_kill_9_of_the_source_leader_after_the_freeze_and_of_the_target_leader() {
    let (mut c, g0_standby, g1, g1_standby) = two_groups_with_standbys(5).await;
    let keys: Vec<String> = (0..120).map(|i| format!("f-{i}")).collect();
    let acked: Acked = Arc::default();
    write_round(&c, &keys.iter().collect::<Vec<_>>(), 4, 0, &acked).await;

    // Slots 0-99 from group 0 to group 1; group 1's leader dies while the
    // slots are frozen: its standby takes over, and the cutover waits for
    // a last copy it holds (the one sent to the dead leader does not count).
    let moving = move_until_frozen(&c, "0-99", "1").await;
    c.kill(g1);
    // Writes of the frozen slots wait, then go to the new owner.
    let frozen_keys: Vec<&String> = keys.iter().filter(|k| slot_of(k) < 100).collect();
    assert!(!frozen_keys.is_empty());
    write_round(&c, &frozen_keys, 4, 1, &acked).await;
    let out = moving.await.expect("slots move ran");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("moving slots 0-99 to group 1"), "{said}");
    assert_eq!(slot_map(&c).await.ranges_of(1), "0-99");
    let g1_id = c.id(g1_standby).await;
    assert_eq!(znode(&c, "groups/1/root").await.expect("group 1's root")["id"], g1_id);
    let log0 = c.log_text(0);
    assert!(log0.contains("handed over to group 1"), "{log0}");

    // Slots 100-199 the same way; this time the source, group 0's leader
    // (the registrar), dies frozen: its standby takes over with the freeze
    // from its log and finishes the move.
    let moving = move_until_frozen(&c, "100-199", "1").await;
    c.kill(0);
    let frozen_keys: Vec<&String> = keys.iter().filter(|k| (100..200).contains(&slot_of(k))).collect();
    assert!(!frozen_keys.is_empty());
    write_round(&c, &frozen_keys, 4, 2, &acked).await;
    let out = moving.await.expect("slots move ran");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(slot_map(&c).await.ranges_of(1), "0-199");
    let g0_id = c.id(g0_standby).await;
    assert_eq!(znode(&c, "groups/0/root").await.expect("group 0's root")["id"], g0_id);
    // The standby took over frozen, from its log, and finished the move.
    let log = c.log_text(g0_standby);
    assert!(log.contains("handed over to group 1"), "{log}");
    check_after(&c, &acked, &[(0, g0_standby), (1, g1_standby)], &[1, 2, 3, 4]).await;
}

/// `treecache slots move --slots RANGE --to G` in a thread of its own.
fn move_in_background(c: &Cluster, range: &str, to: &str) -> tokio::task::JoinHandle<Output> {
    let (zk, name, secret) = (c.zk.addr(), c.name.clone(), c.secret());
    let (range, to) = (range.to_string(), to.to_string());
    tokio::task::spawn_blocking(move || {
        treecache(&[
            "slots",
            "move",
            "--slots",
            &range,
            "--to",
            &to,
            "--zk",
            &zk,
            "--cluster",
            &name,
            "--cluster-secret",
            &secret,
        ])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_commands_refuse_what_cannot_work_and_change_nothing() {
    let mut c = Cluster::start_opts(Opts { nodes: 2, ..Opts::default() }).await;
    let before = slot_map(&c).await;
    let refused = |out: &Output, code: i32, says: &str| {
        assert_eq!(out.status.code(), Some(code), "{}", text(out));
        assert!(text(out).contains(says), "wanted {says:?} in {}", text(out));
    };
    refused(&slots_cmd(&c, &["move", "--slots", "5-3", "--to", "1"]).await, 2, "expected A-B or A");
    refused(&slots_cmd(&c, &["move", "--slots", "0-1024", "--to", "1"]).await, 2, "expected A-B or A");
    refused(&slots_cmd(&c, &["move", "--slots", "0-9", "--to", "7"]).await, 2, "root group 7 has no leader");
    let no_secret = {
        let (zk, name) = (c.zk.addr(), c.name.clone());
        tokio::task::spawn_blocking(move || {
            treecache(&["slots", "move", "--slots", "1", "--to", "1", "--zk", &zk, "--cluster", &name])
        })
        .await
        .unwrap()
    };
    refused(&no_secret, 2, "give the cluster's secret");
    // Moving slots to the group that owns them moves nothing.
    let out = slots_cmd(&c, &["move", "--slots", "0-9", "--to", "0"]).await;
    assert!(out.status.success() && text(&out).contains("nothing to move"), "{}", text(&out));
    // One group: rebalance has nothing to even.
    let out = slots_cmd(&c, &["rebalance"]).await;
    assert!(out.status.success() && text(&out).contains("nothing to move"), "{}", text(&out));
    // A slot whose move is recorded already is refused whole: no other
    // slot of the command gets a move.
    let g1 = add_group_root(&mut c, "1", "g1", &[]).await;
    {
        use treecache::tree::zk;
        let secret = treecache::auth::Secret::new(c.secret()).expect("secret");
        let paths = zk::Paths::with_secret(&c.name, &secret);
        let client = zk::connect(&c.zk.addr(), &paths, None).await.expect("ZooKeeper");
        // From a group that does not exist: no leader drives it.
        let rec = treecache::slots::MoveRecord::new(9, 1);
        client
            .create(&format!("{}/5", paths.moves()), &rec.to_json(), &paths.persistent())
            .await
            .expect("a move record");
    }
    refused(&slots_cmd(&c, &["move", "--slots", "3-7", "--to", "1"]).await, 2, "slot 5 is moving already");
    assert_eq!(c.zk_tree("moves").await, vec!["5".to_string()]);
    assert_eq!(slot_map(&c).await, before);
    assert_eq!(c.health(g1).await["role"], "root");
}

/// Issue 19's seed scenario: one group with `--max-memory` fills until it
/// refuses (507); a second group joins and `rebalance` runs while four
/// writers overwrite; then the cluster takes about twice the keys; then
/// each group's leader is killed -9 in turn, and every acknowledged key is
/// readable at every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_group_gets_room_from_a_new_group_and_loses_nothing_when_each_leader_dies() {
    const MAX: &str = "262144";
    let bounded = ["--max-memory", MAX];
    let mut c = Cluster::start_opts(Opts {
        nodes: 5,
        durable_root: true,
        root_args: bounded.iter().map(|s| s.to_string()).collect(),
        ..Opts::default()
    })
    .await;
    let g0_standby = add_group_root(&mut c, "0", "g0-b", &bounded).await;
    wait_in_sync(&c, 0, 2).await;
    let acked: Acked = Arc::default();
    let next = fill_until_full(&c, 0, &acked).await;
    let one_group = acked.lock().len();
    assert!(one_group > 150, "one group of {MAX} bytes held {one_group} keys of 1 KiB");

    // A second group joins; rebalance while four writers overwrite.
    let g1 = add_group_root(&mut c, "1", "g1-a", &bounded).await;
    let g1_standby = add_group_root(&mut c, "1", "g1-b", &bounded).await;
    wait_in_sync(&c, 1, 2).await;
    let c = Arc::new(c);
    let stop = Arc::new(AtomicBool::new(false));
    let keys: Vec<String> = acked.lock().keys().cloned().collect();
    // Same size every round: an overwrite that does not grow passes.
    let writers = start_writers(&c, &keys, 4, &[1, 2, 3, 4], big_value, &acked, &stop);
    let out = slots_cmd(&c, &["rebalance"]).await;
    assert!(out.status.success(), "{}", text(&out));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("a writer");
    }
    wait_until(Duration::from_secs(30), "the moved slots dropped at group 0", || async {
        c.zk_tree("moves").await.is_empty()
    })
    .await;
    let mut c = Arc::into_inner(c).expect("the writers are done");
    // Fill again: the two groups hold about twice what one did.
    fill_until_full(&c, next, &acked).await;
    let two_groups = acked.lock().len();
    assert!(two_groups as f64 >= 1.7 * one_group as f64, "two groups hold {two_groups} keys, one held {one_group}");
    // Each leader killed -9 in turn: nothing acknowledged is lost.
    c.kill(g1);
    let g1_id = c.id(g1_standby).await;
    wait_until(Duration::from_secs(30), "group 1's standby takes over", || async {
        znode(&c, "groups/1/root").await.is_some_and(|r| r["id"] == g1_id)
    })
    .await;
    c.kill(0);
    let g0_id = c.id(g0_standby).await;
    wait_until(Duration::from_secs(30), "group 0's standby takes over", || async {
        znode(&c, "groups/0/root").await.is_some_and(|r| r["id"] == g0_id)
    })
    .await;
    check_after(&c, &acked, &[(0, g0_standby), (1, g1_standby)], &[1, 2, 3, 4]).await;
}

/// A value of about 1 KiB, the same size every round.
fn big_value(key: &str, round: u32) -> String {
    format!("{round:04}-{key}-{}", "x".repeat(1000))
}

/// Writes new keys `s-<from>`, `s-<from+1>`, .. (ack=root, at the non-root
/// nodes) until 40 in a row are refused 507 `root_full`; records each
/// acknowledged one. Returns the next key number.
async fn fill_until_full(c: &Cluster, from: usize, acked: &Acked) -> usize {
    let (mut i, mut refused_in_a_row) = (from, 0);
    while refused_in_a_row < 40 {
        let key = format!("s-{i}");
        let value = big_value(&key, 0);
        let (status, body) = c.put(1 + i % 4, &key, &value, "?ack=root").await;
        match status {
            201 => {
                refused_in_a_row = 0;
                let version = body["version"].as_u64().expect("a version");
                acked.lock().insert(key, (value, version));
            }
            507 => {
                assert_eq!(body["code"], "root_full", "{body}");
                refused_in_a_row += 1;
            }
            other => panic!("PUT {key}: {other} {body}"),
        }
        i += 1;
    }
    i
}

/// While a slot is frozen its writes wait 2 s, then 503 `slot_moving`
/// with `Retry-After`; its reads are served; a consistent read waits too;
/// `treecache slots` shows the move. After the cutover the old owner
/// passes the key's requests to the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_slot_s_writes_wait_then_get_503_slot_moving_and_its_reads_are_served() {
    let (c, g1, key) = frozen_move_setup(6000, 7).await;
    let (status, _) = c.put(0, &key, "before", "?ack=root").await;
    assert_eq!(status, 201);
    let moving = move_until_frozen(&c, "7", "1").await;
    let out = slots_cmd(&c, &[]).await;
    assert!(text(&out).contains("slots 7: group 0 → group 1, frozen"), "{}", text(&out));
    let started = std::time::Instant::now();
    let resp = c.http.put(format!("{}/kv/{key}?ack=root", c.url(0))).body("during").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "slot_moving", "{body}");
    assert!(started.elapsed() >= Duration::from_millis(1900), "answered after {:?}", started.elapsed());
    let read = c.get(0, &key, "").await;
    assert_eq!((read.status, read.text()), (200, "before".to_string()), "a frozen slot's reads are served");
    let resp = c.http.get(format!("{}/kv/{key}?consistent=true", c.url(0))).send().await.unwrap();
    assert_eq!(resp.status(), 503, "a consistent read waits while frozen, then says so");
    let out = moving.await.expect("slots move ran");
    assert!(out.status.success(), "{}", text(&out));
    // The key did not change after the first copy: the last copy, while
    // writes waited, named it and sent no value.
    let log = c.log_text(0);
    assert!(log.contains(": 0 entries whole, 1 named unchanged)"), "{log}");
    // Group 1 owns it now: its value came along, and group 0's root
    // passes the key's requests on.
    assert_eq!(c.get(g1, &key, "").await.text(), "before");
    let (status, _) = c.put(0, &key, "after", "?ack=root").await;
    assert_eq!(status, 200);
    assert_eq!(c.get(g1, &key, "").await.text(), "after");
    assert_eq!(c.get(1, &key, "?consistent=true").await.text(), "after");
}

/// A write committed at the source whose answer is lost, sent again after
/// the cutover, lands at the target: the target knows its outcome (the
/// last copy carried it) and answers it, committing nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_is_retried_at_the_new_owner_and_committed_once() {
    // Root (group 0) losing its first write answer, one router holding each
    // batch 5 s before it sends it; group 1's leader.
    let mut c = Cluster::start_opts(Opts {
        nodes: 2,
        durable_root: true,
        root_args: vec!["--fault-lose-write-replies".into(), "1".into()],
        node_args: vec!["--fault-uplink-delay-ms".into(), "5000".into()],
        ..Opts::default()
    })
    .await;
    let g1 = add_group_root(&mut c, "1", "g1", &[]).await;
    let key = "lost-reply";
    let slot = slot_of(key);
    let c = Arc::new(c);
    let writing = {
        let c = c.clone();
        tokio::spawn(async move { c.put(1, key, "once", "?ack=root").await })
    };
    // Committed at group 0 (its answer lost); the router holds the resend.
    wait_until(Duration::from_secs(20), "the write committed at group 0", || async {
        c.dump_keys(0).await.iter().any(|k| k == key)
    })
    .await;
    let out = slots_cmd(&c, &["move", "--slots", &slot.to_string(), "--to", "1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let (status, body) = writing.await.expect("the write");
    // 200, not 201: an outcome that came with a move (as one replayed from
    // a log) says committed, not whether the key was new then.
    assert!(status == 200 || status == 201, "{status} {body}");
    let acked = body["version"].as_u64().expect("a version");
    let read = c.get(g1, key, "").await;
    assert_eq!((read.status, read.text(), read.version), (200, "once".to_string(), Some(acked)));
    // The resend was answered at group 1 from the outcome the move
    // brought; group 1 committed nothing.
    assert!(c.metric(g1, "duplicate_writes_total").await >= 1.0, "the resend did not reach group 1");
    assert_eq!(c.metric(g1, "commits_total").await, 0.0, "group 1 committed the write again");
}

/// Two `rebalance` commands at once: one records its moves; the other is
/// refused whole (the map changed, or a slot is moving already) or finds
/// nothing left to move. The map ends even, every move finished once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rebalances_at_once_move_each_slot_once() {
    let mut c = Cluster::start_opts(Opts { nodes: 3, durable_root: true, ..Opts::default() }).await;
    add_group_root(&mut c, "1", "g1", &[]).await;
    for i in 0..40 {
        let (status, _) = c.put(1 + i % 2, &format!("r-{i}"), "v", "?ack=root").await;
        assert_eq!(status, 201);
    }
    let before = slot_map(&c).await;
    let (a, b) = tokio::join!(slots_cmd(&c, &["rebalance"]), slots_cmd(&c, &["rebalance"]));
    let said = |o: &Output| format!("exit {:?}: {}", o.status.code(), text(o));
    let handed = [&a, &b].iter().filter(|o| o.status.success() && text(o).contains("handed over")).count();
    assert_eq!(handed, 1, "one of them moves the slots:\n{}\n{}", said(&a), said(&b));
    for o in [&a, &b] {
        let fine = o.status.success()
            || (o.status.code() == Some(2) && text(o).contains("is moving already"))
            || (o.status.code() == Some(4) && text(o).contains("the slot map changed meanwhile"));
        assert!(fine, "{}", said(o));
    }
    wait_until(Duration::from_secs(30), "the moves finished", || async { c.zk_tree("moves").await.is_empty() }).await;
    let map = slot_map(&c).await;
    // Even by bytes, within a few slots (the keys do not spread exactly).
    assert!(map.count(0).abs_diff(map.count(1)) <= 16, "{map}");
    assert_eq!(map.epoch(), before.epoch() + map.count(1).div_ceil(64) as u64, "rounds of 64, each slot once: {map}");
    for i in 0..40 {
        assert_eq!(c.get(2, &format!("r-{i}"), "?consistent=true").await.text(), "v");
    }
}

/// The source's leader paused (SIGSTOP) past its ZooKeeper session while
/// its slots are frozen: its standby takes over frozen and finishes the
/// move; the old leader wakes deposed, and what it was doing of the move
/// (a last copy, a cutover) is refused. Writes of the frozen slots wait,
/// then land at the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_survives_its_source_leader_paused_past_its_session() {
    let pause = ["--fault-move-pause-ms", "2000"];
    let mut c = Cluster::start_opts(Opts { nodes: 3, durable_root: true, ..Opts::default() }).await;
    let g1 = add_group_root(&mut c, "1", "g1-a", &pause).await;
    let g1_standby = add_group_root(&mut c, "1", "g1-b", &pause).await;
    wait_in_sync(&c, 1, 2).await;
    // Group 1 owns 512-1023 (the first move's source is group 0: no pause).
    let out = slots_cmd(&c, &["move", "--slots", "512-1023", "--to", "1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let keys: Vec<String> =
        (0..).map(|i| format!("p-{i}")).filter(|k| (512..576).contains(&slot_of(k))).take(12).collect();
    let acked: Acked = Arc::default();
    for (i, key) in keys.iter().enumerate() {
        write_acked(&c, 1 + i % 2, key, &format!("r0-{key}"), &acked).await;
    }
    // Slots 512-575 back to group 0; group 1's leader stops once frozen.
    let moving = move_until_frozen(&c, "512-575", "0").await;
    c.pause(g1);
    let standby_id = c.id(g1_standby).await;
    // Writes of the frozen slots wait through the takeover and the move.
    for (i, key) in keys.iter().enumerate() {
        write_acked(&c, 1 + i % 2, key, &format!("r1-{key}"), &acked).await;
    }
    let out = moving.await.expect("slots move ran");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(znode(&c, "groups/1/root").await.expect("group 1's root")["id"], standby_id);
    c.resume(g1);
    // The old leader wakes deposed and follows the new one.
    wait_until(Duration::from_secs(40), "the old leader back as a standby", || async {
        c.health(g1).await["role"] == "standby"
    })
    .await;
    let map = slot_map(&c).await;
    assert_eq!(map.ranges_of(1), "576-1023", "{map}");
    check_after(&c, &acked, &[(0, 0), (1, g1_standby)], &[1, 2]).await;
    let log = c.log_text(g1_standby);
    assert!(log.contains("slots 512-575 handed over to group 0"), "{log}");
}

/// ZooKeeper stops answering (SIGSTOP, within the sessions' timeout)
/// just as the source makes its cutover: the `multi` waits for it, or is
/// lost and read back from `moves/` by the next round; the move finishes
/// and the frozen slot's write waiting meanwhile (503 `slot_moving` after
/// 2 s, then sent again as its Retry-After says) lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_survives_zookeeper_pausing_at_its_cutover() {
    let (mut c, g1, key) = frozen_move_setup(1500, 9).await;
    let acked: Acked = Arc::default();
    write_acked(&c, 1, &key, "before", &acked).await;
    let moving = move_until_frozen(&c, "9", "1").await;
    // The source sleeps 1.5 s frozen, then copies and cuts over: ZooKeeper
    // is stopped from now for 3.5 s, past the cutover.
    assert!(c.zk.pause(), "SIGSTOP ZooKeeper");
    let writing = {
        let (url, key) = (c.url(1), key.clone());
        tokio::spawn(async move {
            let client = treecache::client::Client::new(&url).expect("a client");
            loop {
                let root = treecache::client::PutOptions { ack: treecache::client::Ack::Root, ttl: None };
                match client.put_with(&key, "during".to_string(), root).await {
                    // Frozen past its 2 s (the cutover waits for
                    // ZooKeeper): nothing written; again after Retry-After.
                    Err(e) if e.code() == Some("slot_moving") => {
                        tokio::time::sleep(e.retry_after().expect("Retry-After")).await
                    }
                    done => return done,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(c.zk.resume(), "SIGCONT ZooKeeper");
    let out = moving.await.expect("slots move ran");
    assert!(out.status.success(), "{}", text(&out));
    assert!(writing.await.expect("the write").is_ok(), "the write of the frozen slot");
    assert_eq!(slot_map(&c).await.owner(9), 1);
    wait_until(Duration::from_secs(20), "the write at its new owner, everywhere", || async {
        c.get(g1, &key, "").await.text() == "during" && c.get(1, &key, "").await.text() == "during"
    })
    .await;
    wait_until(Duration::from_secs(30), "the move dropped at the source", || async {
        c.zk_tree("moves").await.is_empty()
    })
    .await;
    assert!(!c.dump_keys(0).await.contains(&key), "group 0 kept a copy of slot 9");
}

/// Group 0's root (pausing `pause_ms` once a move's slots are frozen) and
/// one router, group 1's leader, and a key of `slot`.
async fn frozen_move_setup(pause_ms: u64, slot: u16) -> (Cluster, usize, String) {
    let mut c = Cluster::start_opts(Opts {
        nodes: 2,
        durable_root: true,
        root_args: vec!["--fault-move-pause-ms".into(), pause_ms.to_string()],
        ..Opts::default()
    })
    .await;
    let g1 = add_group_root(&mut c, "1", "g1", &[]).await;
    let key = (0..).map(|i| format!("key-{i}")).find(|k| slot_of(k) == slot).expect("a key of the slot");
    (c, g1, key)
}

/// A target that lost the first copy (a memory-only root restarted while
/// the source's slot is frozen) refuses the tail that
/// builds on it; the source sends the whole copy, and the move hands
/// every key over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_lost_the_first_copy_gets_the_whole_copy_and_the_move_loses_nothing() {
    let mut c = Cluster::start_opts(Opts {
        nodes: 2,
        durable_root: true,
        root_args: vec!["--fault-move-pause-ms".into(), "6000".into()],
        ..Opts::default()
    })
    .await;
    // Memory only: a restart forgets what the first copy brought.
    let g1 = c.add_node_with(&["--root", "--group", "1"]).await;
    let keys: Vec<String> = (0..).map(|i| format!("lost-{i}")).filter(|k| slot_of(k) == 9).take(20).collect();
    for key in &keys {
        let (status, body) = c.put(0, key, key, "?ack=root").await;
        assert_eq!(status, 201, "{body}");
    }
    let moving = move_until_frozen(&c, "9", "1").await;
    let before = c.health(g1).await["epoch"].as_u64();
    // A clean stop ends its ZooKeeper session at once, so it leads again
    // well within the pause.
    c.stop(g1);
    c.restart(g1).await;
    // Leading again (a new epoch) before the source's pause ends.
    wait_until(Duration::from_secs(20), "group 1's root leading again", || async {
        let health = c.health(g1).await;
        health["role"] == "root" && health["epoch"].as_u64() > before
    })
    .await;
    let out = moving.await.expect("slots move ran");
    assert!(out.status.success(), "{}", text(&out));
    let log = c.log_text(0);
    assert!(log.contains("slots 9: the target lacks part of the copies before; sending it all"), "{log}");
    assert_eq!(slot_map(&c).await.owner(9), 1);
    for key in &keys {
        for at in [g1, 1] {
            let read = c.get(at, key, "").await;
            assert_eq!((read.status, read.text()), (200, key.clone()), "{key} at node {at}");
        }
    }
}

/// An abort that comes while a copy's part is being applied (it passed
/// its checks, then the target was slow: `--fault-import-apply-delay-ms`
/// holds it there) must not overtake it: the part lands first and the
/// abort then drops it. Before, the part landed after the abort's drop
/// and stayed, a copy of a slot the target does not own, in its store and
/// in its log after the drop record (so a restart kept it too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_racing_a_copy_being_applied_leaves_no_copy_behind() {
    use treecache::log::Record;
    use treecache::store::Update;
    let mut c = Cluster::start_opts(Opts { nodes: 1, durable_root: true, ..Opts::default() }).await;
    let g1 = add_group_root(&mut c, "1", "g1", &["--fault-import-apply-delay-ms", "3000"]).await;
    let epoch = c.health(0).await["epoch"].as_u64().expect("group 0's epoch");
    let key = (0..).map(|i| format!("race-{i}")).find(|k| slot_of(k) == 11).expect("a key of slot 11");
    let frame = treecache::replication::frame_of(Record {
        epoch,
        update: Update { key: key.clone(), version: 70, value: Some(bytes::Bytes::from("v")), expires_at: None },
        write_id: None,
    });
    let http = c.peer_http();
    let post = |query: &str, body: Vec<u8>| {
        post_import(http.clone(), format!("{}/internal/import?{query}", c.url(g1)), epoch, body)
    };
    let held = |c: &Cluster| c.log(g1).matches("fault: holding an import part").count();
    let copy = tokio::spawn(post("from=0&slots=11&part=0&round=5", frame));
    // The part passed its checks and is held (3 s) when the abort comes.
    wait_until(Duration::from_secs(20), "the target to hold the part", || {
        let c = &c;
        async move { held(c) == 1 }
    })
    .await;
    let (status, aborted) = post("from=0&slots=11&abort=true&round=5", Vec::new()).await;
    assert_eq!(status, 200, "{aborted}");
    let (status, copied) = copy.await.expect("the copy's request");
    assert_eq!(status, 200, "the part, taken before the abort: {copied}");
    assert_eq!(aborted["dropped"], 1, "the abort waited for the part and dropped what it stored: {aborted}");
    assert!(c.dump_keys(g1).await.is_empty(), "no copy of slot 11 left at group 1 after the abort");
    // Nor in its log: the drop was logged after what it dropped.
    c.restart(g1).await;
    assert!(c.dump_keys(g1).await.is_empty(), "no copy of slot 11 back at group 1 after a restart");
}

/// `POST /internal/import` refuses, storing nothing, what it cannot
/// apply: a tail naming an entry this root does not hold at that
/// version (409 `cannot_resume`: the source then sends the whole copy),
/// a tail entry on the wrong side of `since`, a part out of order, an
/// import from its own group or of a slot it owns, a deposed source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_the_target_cannot_apply_is_refused_and_stores_nothing() {
    use treecache::log::Record;
    use treecache::store::Update;
    let mut c = Cluster::start_opts(Opts { nodes: 1, durable_root: true, ..Opts::default() }).await;
    let g1 = add_group_root(&mut c, "1", "g1", &[]).await;
    let epoch = c.health(0).await["epoch"].as_u64().expect("group 0's epoch");
    let epoch1 = c.health(g1).await["epoch"].as_u64().expect("group 1's epoch");
    let key = (0..).map(|i| format!("imp-{i}")).find(|k| slot_of(k) == 11).expect("a key of slot 11");
    let frame = |version: u64, value: Option<&str>| {
        treecache::replication::frame_of(Record {
            epoch,
            update: Update {
                key: key.clone(),
                version,
                value: value.map(|v| bytes::Bytes::from(v.to_string())),
                expires_at: None,
            },
            write_id: None,
        })
    };
    let http = c.peer_http();
    let post = |at: usize, query: &str, epoch: u64, body: Vec<u8>| {
        post_import(http.clone(), format!("{}/internal/import?{query}", c.url(at)), epoch, body)
    };
    // (at node, query, epoch, entry version, value) -> (status, code, error says)
    type Case<'a> = ((usize, &'a str, u64, u64, Option<&'a str>), (u16, &'a str, &'a str));
    let cases: Vec<Case> = vec![
        ((g1, "from=0&slots=11&last=true&part=0&since=50", epoch, 7, None), (409, "cannot_resume", "not held here")),
        ((g1, "from=0&slots=11&last=true&part=0&since=50", epoch, 7, Some("v")), (400, "bad_request", "comes with")),
        ((g1, "from=0&slots=11&last=true&part=0", epoch, 7, None), (400, "bad_request", "comes without a value")),
        ((g1, "from=0&slots=11&last=true&part=3", epoch, 70, Some("v")), (400, "bad_request", "expected part 0")),
        ((g1, "from=0&slots=12&part=0", epoch, 70, Some("v")), (400, "bad_request", "in none of slots")),
        ((g1, "from=0&slots=11&part=0", 0, 70, Some("v")), (409, "stale_epoch", "")),
        ((g1, "from=1&slots=11&part=0", epoch, 70, Some("v")), (400, "bad_request", "own group")),
        ((0, "from=1&slots=11&part=0", epoch1, 70, Some("v")), (400, "bad_request", "already")),
    ];
    for ((at, query, epoch, version, value), (status, code, says)) in cases {
        let (got, answer) = post(at, query, epoch, frame(version, value)).await;
        assert_eq!((got, answer["code"].as_str()), (status, Some(code)), "{query}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| e.contains(says)), "{query}: {answer}");
    }
    assert!(c.dump_keys(g1).await.is_empty(), "a refused import stores nothing");
    // The same entry, whole, in order, from the leader: stored.
    let (got, answer) = post(g1, "from=0&slots=11&part=0", epoch, frame(70, Some("v"))).await;
    assert_eq!((got, answer["stored"].as_u64()), (200, Some(1)), "{answer}");
    assert_eq!(c.dump_keys(g1).await, vec![key.clone()]);
    // And a tail that names it as held now passes.
    let (got, answer) = post(g1, "from=0&slots=11&last=false&part=0&since=80", epoch, frame(70, None)).await;
    assert_eq!((got, answer["stored"].as_u64()), (200, Some(0)), "{answer}");

    // A tail of the source leader's round 5 of moves.
    let (got, answer) = post(g1, "from=0&slots=11&part=0&since=80&round=5", epoch, frame(70, None)).await;
    assert_eq!(got, 200, "{answer}");

    // The move rolls back: an abort that cannot be taken drops nothing.
    type AbortCase<'a> = ((usize, &'a str, u64, Vec<u8>), (u16, &'a str, &'a str));
    let cases: Vec<AbortCase> = vec![
        ((g1, "from=0&slots=11&abort=true&round=5", epoch, frame(70, Some("v"))), (400, "bad_parameter", "no body")),
        ((g1, "from=0&slots=11&abort=true&round=5", 0, Vec::new()), (409, "stale_epoch", "")),
        ((g1, "from=1&slots=11&abort=true&round=5", epoch, Vec::new()), (400, "bad_request", "own group")),
        ((0, "from=1&slots=11&abort=true&round=5", epoch1, Vec::new()), (400, "bad_request", "is late")),
        ((g1, "from=2&slots=11&abort=true&round=5", epoch, Vec::new()), (400, "bad_request", "not group 2's")),
        ((g1, "from=0&slots=11&abort=true&round=4", epoch, Vec::new()), (400, "bad_request", "a newer move")),
    ];
    for ((at, query, epoch, body), (status, code, says)) in cases {
        let (got, answer) = post(at, query, epoch, body).await;
        assert_eq!((got, answer["code"].as_str()), (status, Some(code)), "{query}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| e.contains(says)), "{query}: {answer}");
    }
    assert_eq!(c.dump_keys(g1).await, vec![key.clone()], "a refused abort drops nothing");
    assert!(c.dump_keys(0).await.is_empty(), "nor does one at the owner");
    // From the source's leader, of its latest round: what the copies
    // brought goes, and what is left of that round's copy is refused.
    let (got, answer) = post(g1, "from=0&slots=11&abort=true&round=5", epoch, Vec::new()).await;
    assert_eq!((got, answer["dropped"].as_u64()), (200, Some(1)), "{answer}");
    assert!(c.dump_keys(g1).await.is_empty(), "the rolled-back copy dropped");
    for round in [4, 5] {
        let (got, answer) =
            post(g1, &format!("from=0&slots=11&part=0&round={round}"), epoch, frame(70, Some("v"))).await;
        assert_eq!((got, answer["code"].as_str()), (400, Some("bad_request")), "round {round}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| e.contains("this root has round 5")), "{answer}");
    }
    assert!(c.dump_keys(g1).await.is_empty(), "an abandoned copy does not land after the abort");
    // A newer move's copy is taken; another group's copy of the slot
    // coming in makes a late abort of group 0's move refused.
    let (got, answer) = post(g1, "from=0&slots=11&part=0&round=6", epoch, frame(70, Some("v"))).await;
    assert_eq!((got, answer["stored"].as_u64()), (200, Some(1)), "{answer}");
    let (got, answer) = post(g1, "from=2&slots=11&part=0&round=1", epoch, frame(71, Some("w"))).await;
    assert_eq!(got, 200, "{answer}");
    let (got, answer) = post(g1, "from=0&slots=11&abort=true&round=6", epoch, Vec::new()).await;
    assert_eq!((got, answer["code"].as_str()), (400, Some("bad_request")), "{answer}");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("group 2 copies slots 11 here")), "{answer}");
    assert_eq!(c.dump_keys(g1).await, vec![key.clone()], "nothing dropped");
}

/// A rollback cut short right after its fence (the source's leader dies
/// with the records `rolling_back`, the slot still frozen) is finished by
/// the standby that takes over: frozen from its log, it finds the records,
/// thaws the slot and deletes them; the slot's writes, waiting meanwhile,
/// commit at the new leader, none acknowledged lost. The target had no
/// standby and stays down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_cut_short_after_its_fence_is_finished_by_the_standby_that_takes_over() {
    let knobs = ["--fault-move-pause-ms", "1000", "--fault-move-rollback-ms", "3000"];
    let mut root_args: Vec<String> = knobs.iter().map(|s| s.to_string()).collect();
    root_args.push("--fault-die-after-rollback-fence".into());
    let mut c = Cluster::start_opts(Opts { nodes: 3, durable_root: true, root_args, ..Opts::default() }).await;
    let g0_standby = add_group_root(&mut c, "0", "g0-b", &knobs).await;
    let g1 = add_group_root(&mut c, "1", "g1", &[]).await;
    wait_in_sync(&c, 0, 2).await;
    let keys: Vec<String> = (0..).map(|i| format!("cut-{i}")).filter(|k| slot_of(k) == 19).take(8).collect();
    let acked: Acked = Arc::default();
    write_round(&c, &keys.iter().collect::<Vec<_>>(), 2, 0, &acked).await;
    let moving = move_until_frozen(&c, "19", "1").await;
    c.kill(g1);
    write_round(&c, &keys.iter().collect::<Vec<_>>(), 2, 1, &acked).await;
    let out = moving.await.expect("slots move ran");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(4), "{said}");
    assert!(said.contains("slots 19 not moved: the move rolled back"), "{said}");
    assert!(c.log_text(0).contains("slots 19: rollback fenced; dying now"), "{}", c.log_text(0));
    let log = c.log_text(g0_standby);
    assert!(log.contains("slots 19: the move to group 1 rolled back"), "{log}");
    assert_eq!(slot_map(&c).await.owner(19), 0);
    write_round(&c, &keys.iter().collect::<Vec<_>>(), 2, 2, &acked).await;
    check_after(&c, &acked, &[(0, g0_standby)], &[1, 2]).await;
}

/// A move record deleted by hand (zkCli) while its slot is frozen ends
/// the move: nothing would ever end the freeze, so the source's leader
/// thaws a frozen slot that no record names and the map gives it, and
/// the slot takes writes again; `slots move` says the move rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_slot_whose_move_record_is_deleted_by_hand_is_thawed() {
    let (c, _g1, key) = frozen_move_setup(3000, 17).await;
    let (status, _) = c.put(0, &key, "before", "?ack=root").await;
    assert_eq!(status, 201);
    let moving = move_until_frozen(&c, "17", "1").await;
    {
        use treecache::tree::zk;
        let secret = treecache::auth::Secret::new(c.secret()).expect("secret");
        let paths = zk::Paths::with_secret(&c.name, &secret);
        let client = zk::connect(&c.zk.addr(), &paths, None).await.expect("ZooKeeper");
        client.delete(&format!("{}/17", paths.moves()), None).await.expect("the record deleted");
    }
    wait_until(Duration::from_secs(30), "slot 17 thawed at its source", || async {
        c.log_text(0).contains("slots 17 were frozen with no move record")
    })
    .await;
    let (status, body) = c.put(0, &key, "after", "?ack=root").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.get(1, &key, "?consistent=true").await.text(), "after");
    assert_eq!(slot_map(&c).await.owner(17), 0);
    let out = moving.await.expect("slots move ran");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("slots 17 not moved: the move rolled back"), "{}", text(&out));
}

/// A move whose target's leader dies once the slot is frozen, with no
/// standby to take over, rolls back after `--fault-move-rollback-ms`
/// (30 s without it): the slot is thawed through the source's log, its
/// move record deleted, `slots move` says so, and the slot's writes
/// (waiting, or answered 503 and tried again) commit at the source,
/// none acknowledged lost. Once the target leads again it is told to drop
/// what the first copy brought it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_target_dies_frozen_rolls_back_and_the_slot_takes_writes_again() {
    let mut c = Cluster::start_opts(Opts {
        nodes: 2,
        durable_root: true,
        root_args: ["--fault-move-pause-ms", "1000", "--fault-move-rollback-ms", "4000"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Opts::default()
    })
    .await;
    let g1 = add_group_root(&mut c, "1", "g1", &[]).await;
    let keys: Vec<String> = (0..).map(|i| format!("rb-{i}")).filter(|k| slot_of(k) == 13).take(10).collect();
    let acked: Acked = Arc::default();
    write_round(&c, &keys.iter().collect::<Vec<_>>(), 1, 0, &acked).await;
    let moving = move_until_frozen(&c, "13", "1").await;
    c.kill(g1);
    // Frozen: the writes wait (503 `slot_moving` after 2 s, tried again)
    // until the move rolls back, then commit at the source.
    write_round(&c, &keys.iter().collect::<Vec<_>>(), 1, 1, &acked).await;
    let out = moving.await.expect("slots move ran");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(4), "{said}");
    assert!(said.contains("slots 13 not moved: the move rolled back"), "{said}");
    assert!(znode(&c, "moves/13").await.is_none(), "the move record is gone");
    assert_eq!(slot_map(&c).await.owner(13), 0);
    let log = c.log_text(0);
    assert!(log.contains("slots 13: the move to group 1 rolled back"), "{log}");
    let out = slots_cmd(&c, &[]).await;
    assert!(!text(&out).contains("slots 13: group 0"), "no move shown: {}", text(&out));

    // Back, group 1's leader is told to drop its copy of slot 13.
    c.restart(g1).await;
    wait_until(Duration::from_secs(30), "group 1 dropped the rolled-back copy", || async {
        c.log_text(g1).contains("slots 13: group 0's move of them here rolled back")
    })
    .await;
    write_round(&c, &keys.iter().collect::<Vec<_>>(), 1, 2, &acked).await;
    check_after(&c, &acked, &[(0, 0), (1, g1)], &[1]).await;
}

/// Through the tree, a frozen slot holds back only its own writes: at a
/// depth-1 node (its parent a root) and at a depth-2 node under it, a
/// write of another slot commits while the slot is still frozen. The
/// frozen slot's write from the depth-1 node's own client gets 503
/// `slot_moving` after its wait, nothing written; the depth-2 node's
/// writes of it (ack=root, and ack=parent, answered at once) are kept and
/// commit at the new owner after the cutover, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_tree_a_frozen_slot_holds_back_only_its_own_writes() {
    let mut c = Cluster::start_opts(Opts {
        nodes: 3,
        fanout: 1,
        durable_root: true,
        root_args: vec!["--fault-move-pause-ms".into(), "8000".into()],
        ..Opts::default()
    })
    .await;
    assert_eq!(c.health(2).await["depth"], 2, "node 2 is under node 1");
    let g1 = add_group_root(&mut c, "1", "g1", &[]).await;
    let keys: Vec<String> = (0..).map(|i| format!("tree-{i}")).filter(|k| slot_of(k) == 7).take(2).collect();
    let (frozen, frozen_parent) = (keys[0].clone(), keys[1].clone());
    let other = (0..).map(|i| format!("tree-{i}")).find(|k| slot_of(k) == 8).expect("a key of slot 8");
    let (status, _) = c.put(0, &frozen, "before", "?ack=root").await;
    assert_eq!(status, 201);
    let moving = move_until_frozen(&c, "7", "1").await;
    let held: Vec<_> = [1, 2]
        .into_iter()
        .map(|at| {
            let (http, url) = (c.http.clone(), format!("{}/kv/{frozen}?ack=root", c.url(at)));
            tokio::spawn(async move {
                let resp = http.put(url).body(format!("during-{at}")).send().await.expect("answered");
                let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
                (resp.status().as_u16(), retry, resp.json::<Value>().await.unwrap_or(Value::Null))
            })
        })
        .collect();
    let (status, body) = c.put(2, &frozen_parent, "kept", "?ack=parent").await;
    assert_eq!((status, body["ack"].as_str()), (200, Some("parent")), "{body}");
    for at in [1, 2] {
        let (status, body) = c.put(at, &other, &format!("from {at}"), "?ack=root").await;
        assert!(status == 200 || status == 201, "another slot's write at node {at}: {status} {body}");
    }
    assert_eq!(
        znode(&c, "moves/7").await.map(|m| m["state"].clone()),
        Some(Value::from("frozen")),
        "the other slot's writes were answered while slot 7 was still frozen"
    );
    let mut held = held.into_iter();
    let (status, retry, body) = held.next().expect("node 1's").await.expect("the frozen slot's write ran");
    assert_eq!((status, retry.as_deref(), body["code"].as_str()), (503, Some("1"), Some("slot_moving")), "{body}");
    let (status, _, body) = held.next().expect("node 2's").await.expect("the frozen slot's write ran");
    assert_eq!(status, 200, "node 2's write of the frozen slot commits at the new owner: {body}");
    let out = moving.await.expect("slots move ran");
    assert!(out.status.success(), "{}", text(&out));
    for at in [0, 1, 2, g1] {
        let read = c.get(at, &frozen, "?consistent=true").await;
        assert_eq!((read.status, read.text()), (200, "during-2".to_string()), "at node {at}");
        assert_eq!(c.get(at, &frozen_parent, "?consistent=true").await.text(), "kept", "at node {at}");
        assert_eq!(c.get(at, &other, "?consistent=true").await.text(), "from 2", "at node {at}");
    }
    let (status, body) = c.put(1, &frozen, "after", "?ack=root").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.get(g1, &frozen, "").await.text(), "after");
}

/// kill -9 of a standby of each group while the slots are frozen: each
/// leader drops its standby from the in-sync set once it stops answering
/// (that rewrites the group's `leader` znode, so a cutover checked against
/// the old one is not made, and a later round makes it with a whole last
/// copy); writes of the frozen slots wait and land; the standbys come
/// back, catch up, and hold what their group owns, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_survives_kill_9_of_a_standby_of_each_group_while_frozen() {
    let (mut c, g0_standby, g1, g1_standby) = two_groups_with_standbys(3).await;
    let keys: Vec<String> = (0..80).map(|i| format!("s-{i}")).collect();
    let acked: Acked = Arc::default();
    write_round(&c, &keys.iter().collect::<Vec<_>>(), 2, 0, &acked).await;
    let moving = move_until_frozen(&c, "0-199", "1").await;
    c.kill(g0_standby);
    c.kill(g1_standby);
    let frozen_keys: Vec<&String> = keys.iter().filter(|k| slot_of(k) < 200).collect();
    assert!(!frozen_keys.is_empty());
    write_round(&c, &frozen_keys, 2, 1, &acked).await;
    let out = moving.await.expect("slots move ran");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(slot_map(&c).await.ranges_of(1), "0-199");
    c.restart(g0_standby).await;
    c.restart(g1_standby).await;
    wait_in_sync(&c, 0, 2).await;
    wait_in_sync(&c, 1, 2).await;
    check_after(&c, &acked, &[(0, 0), (1, g1), (0, g0_standby), (1, g1_standby)], &[1, 2]).await;
}

/// The map epoch node `i` says (in its `live/` znode) it routes by.
async fn routes_by(c: &Cluster, i: usize) -> u64 {
    let id = c.health(i).await["id"].as_u64().expect("a node id");
    znode(c, &format!("live/{id}")).await.and_then(|v| v["map_epoch"].as_u64()).unwrap_or(0)
}

/// Around a cutover, a router and the move's target read the new map at
/// different times (`--fault-routes-delay-ms` at one router and at the
/// target). A router still on the old map sends the moved slot's writes
/// to the source, and a router on the new one sends them to a target that
/// has not read it: each root answers those writes `SlotMoving`, and
/// commits the rest of the router's batch at once (before: the whole
/// batch was refused 409 `wrong_group`, and the router's lane to that
/// group stood until both had the new map). The moved slot's writes wait
/// as a frozen slot's do: 503 `slot_moving` after 2 s, nothing written;
/// once every node has the new map they commit at the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn around_a_cutover_only_the_moved_slot_s_writes_wait_for_the_new_map() {
    const DELAY: &str = "5000";
    let mut c = Cluster::start_opts(Opts { nodes: 1, durable_root: true, ..Opts::default() }).await;
    let stale = c.add_node_with(&["--fault-routes-delay-ms", DELAY]).await;
    let fresh = c.add_node().await;
    let target = add_group_root(&mut c, "1", "g1", &["--fault-routes-delay-ms", DELAY]).await;
    let key_of = |slot: u16, tag: &str| {
        (0..).map(|i| format!("{tag}-{i}")).find(|k| slot_of(k) == slot).expect("a key of the slot")
    };
    let all_route_by = |epoch: u64| {
        let c = &c;
        async move {
            for i in [0, stale, fresh, target] {
                wait_until(Duration::from_secs(30), &format!("node {i} routes by map epoch {epoch}"), || async {
                    routes_by(c, i).await >= epoch
                })
                .await;
            }
        }
    };
    // Group 1 owns slot 8 first: both routers route by slot.
    let out = slots_cmd(&c, &["move", "--slots", "8", "--to", "1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let epoch = slot_map(&c).await.epoch();
    all_route_by(epoch).await;
    let (moved_at_stale, moved_at_fresh) = (key_of(7, "stale"), key_of(7, "fresh"));
    let (status, _) = c.put(0, &moved_at_stale, "before", "?ack=root").await;
    assert_eq!(status, 201);
    let out = slots_cmd(&c, &["move", "--slots", "7", "--to", "1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let moved = slot_map(&c).await.epoch();
    assert!(moved > epoch);
    let put_later = |i: usize, key: &String| {
        let (http, url) = (c.http.clone(), format!("{}/kv/{key}?ack=root", c.url(i)));
        tokio::spawn(async move {
            let resp = http.put(url).body("during").send().await.expect("answered");
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    // A new key's write at node `at` commits while node `behind` still
    // routes by the map before the cutover.
    let commits_while_behind = |at: usize, key: &String, behind: usize| {
        let (c, key) = (&c, key.clone());
        async move {
            let (status, body) = c.put(at, &key, "v", "?ack=root").await;
            assert_eq!(status, 201, "{key} at node {at}: {body}");
            assert!(routes_by(c, behind).await < moved, "{key} committed only once node {behind} read the new map");
        }
    };
    // The stale router still sends slot 7 to the source: that write waits,
    // and the router's write of a slot the source keeps commits meanwhile.
    let waiting_at_stale = put_later(stale, &moved_at_stale);
    let kept = key_of(9, "kept");
    commits_while_behind(stale, &kept, stale).await;
    // The fresh router sends slot 7 to the target, which has not read that
    // it owns it: that write waits, and a write of group 1's slot 8
    // commits meanwhile.
    wait_until(Duration::from_secs(10), "the fresh router routes by the new map", || async {
        routes_by(&c, fresh).await >= moved
    })
    .await;
    let waiting_at_fresh = put_later(fresh, &moved_at_fresh);
    let owned = key_of(8, "owned");
    commits_while_behind(fresh, &owned, target).await;
    // Slot 7's writes waited 2 s for a map that came later: refused,
    // nothing written.
    for (waiting, at) in [(waiting_at_stale, "stale"), (waiting_at_fresh, "fresh")] {
        let (status, body) = waiting.await.expect("the write ran");
        assert_eq!((status, body["code"].as_str()), (503, Some("slot_moving")), "at the {at} router: {body}");
    }
    all_route_by(moved).await;
    assert_eq!(c.get(target, &moved_at_stale, "?consistent=true").await.text(), "before");
    assert_eq!(c.get(target, &moved_at_fresh, "?consistent=true").await.status, 404);
    for (i, key) in [(stale, &moved_at_stale), (fresh, &moved_at_fresh)] {
        let (status, body) = c.put(i, key, "after", "?ack=root").await;
        assert!(status == 200 || status == 201, "node {i}: {status} {body}");
    }
    for i in [0, stale, fresh, target] {
        for (key, value) in [(&moved_at_stale, "after"), (&moved_at_fresh, "after"), (&kept, "v"), (&owned, "v")] {
            assert_eq!(c.get(i, key, "?consistent=true").await.text(), value, "{key} at node {i}");
        }
    }
}

/// Another move's cutover while a slot is frozen changes the slot map the
/// frozen move read before its freeze: its cutover reads the map again
/// and is made in the same round (before: refused, and the next round
/// sent the whole copy again, frozen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_made_while_another_slot_is_frozen_does_not_undo_that_slot_s_move() {
    let (c, g1, key) = frozen_move_setup(3000, 7).await;
    let (status, _) = c.put(0, &key, "before", "?ack=root").await;
    assert_eq!(status, 201);
    // Group 1 owns slot 8 first (group 0's move of it pauses too).
    let out = slots_cmd(&c, &["move", "--slots", "8", "--to", "1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    wait_until(Duration::from_secs(30), "slot 8's move ended", || async { znode(&c, "moves/8").await.is_none() }).await;
    let moving = move_until_frozen(&c, "7", "1").await;
    // While slot 7 is frozen, group 1 hands slot 8 back: the map changes.
    let before = slot_map(&c).await.epoch();
    let out = slots_cmd(&c, &["move", "--slots", "8", "--to", "0"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        znode(&c, "moves/7").await.map(|m| m["state"].clone()),
        Some(Value::from("frozen")),
        "slot 8 went back while slot 7 was frozen"
    );
    let out = moving.await.expect("slots move ran");
    assert!(out.status.success(), "{}", text(&out));
    let map = slot_map(&c).await;
    assert!(map.epoch() >= before + 2, "both cutovers made");
    assert_eq!((map.owner(7), map.owner(8)), (1, 0));
    let log = c.log_text(0);
    assert!(!log.contains("cutover of slots 7 not made"), "{log}");
    assert_eq!(log.matches("slots 7 frozen: pausing").count(), 1, "one round moved slot 7: {log}");
    assert_eq!(c.get(g1, &key, "?consistent=true").await.text(), "before");
    let (status, body) = c.put(1, &key, "after", "?ack=root").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.get(g1, &key, "").await.text(), "after");
}
