//! Standby roots against real processes (DESIGN.md "Root failover",
//! guarantee 3): a standby syncs from its leader and serves reads; the
//! leader killed under load loses no acknowledged write; a paused leader
//! that wakes up after a standby took over cannot make a write stick; a
//! standby that restarts catches up and rejoins the in-sync set;
//! `--min-insync` refuses ack=root writes while too few roots are in sync;
//! requests, over `/kv` and RESP, are held through a failover
//! (`--failover-wait`) instead of failing.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::resp::{Reply, Resp};
use common::{wait_past, wait_until, Cluster, Opts};
use parking_lot::Mutex;
use serde_json::Value;

/// A durable leader (index 0), with `root_args`, and `nodes - 1` caches.
async fn cluster(nodes: usize, root_args: &[&str]) -> Cluster {
    let root_args = root_args.iter().map(|s| s.to_string()).collect();
    Cluster::start_opts(Opts { nodes, durable_root: true, root_args, ..Opts::default() }).await
}

/// Starts a standby root with its own data directory; waits until it is
/// in sync (its /health answers 200). Returns its index.
async fn add_standby(c: &mut Cluster, dir: &std::path::Path, extra: &[&str]) -> usize {
    let dir = dir.display().to_string();
    let mut flags = vec!["--root", "--data-dir", dir.as_str()];
    flags.extend(extra);
    let i = c.add_node_with(&flags).await;
    assert_eq!(c.health(i).await["role"], "standby", "{}", c.health(i).await);
    i
}

/// The `leader` znode's JSON.
async fn leader_znode(c: &Cluster) -> Value {
    let zk = c.zk.client().await;
    let (data, _) = zk.get_data(&format!("/treecache/{}/groups/0/leader", c.name)).await.expect("the leader znode");
    serde_json::from_slice(&data).expect("leader znode JSON")
}

async fn in_sync(c: &Cluster) -> Vec<u64> {
    let mut ids: Vec<u64> =
        leader_znode(c).await["in_sync"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    ids.sort();
    ids
}

/// PUT ack=root at node `i`: the version, or the status and body it failed with.
async fn put_root(c: &Cluster, i: usize, key: &str, value: &str) -> Result<u64, (u16, Value)> {
    let (status, body) = c.put(i, key, value, "?ack=root").await;
    match (status, body["version"].as_u64()) {
        (200 | 201, Some(v)) => Ok(v),
        _ => Err((status, body)),
    }
}

/// A request with the cluster secret (as a node sends it) to `url`.
async fn internal(c: &Cluster, url: String, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let mut req = c.peer_http().post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("internal request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_syncs_serves_reads_forwards_writes_and_refuses_bad_batches() {
    let mut c = cluster(2, &[]).await;
    for k in 0..50 {
        put_root(&c, 1, &format!("before-{k}"), &format!("v{k}")).await.expect("write before the standby");
    }
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    let (leader_id, standby_id) = (c.id(0).await, c.id(s).await);
    wait_until(Duration::from_secs(20), "the standby in the in-sync set", || async {
        in_sync(&c).await == [leader_id, standby_id]
    })
    .await;
    assert_eq!(c.metric(0, "insync_roots").await, 2.0);
    assert_eq!(leader_znode(&c).await["id"].as_u64(), Some(leader_id));
    // /metrics says what each node is: a healthy standby is registered.
    wait_until(Duration::from_secs(10), "the standby's metrics to say it is in sync", || async {
        c.metric(s, "in_sync").await == 1.0
    })
    .await;
    for (i, role, in_sync) in [(0, "root", 1.0), (s, "standby", 1.0), (1, "leaf", 0.0)] {
        assert_eq!(c.metric(i, &format!("role{{role=\"{role}\"}}")).await, 1.0, "node {i} is a {role}");
        assert_eq!(c.metric(i, "registered").await, 1.0, "node {i}");
        assert_eq!(c.metric(i, "in_sync").await, in_sync, "node {i}");
    }
    assert_eq!(c.metric(s, "role{role=\"leaf\"}").await, 0.0);
    // `treecache tree` lists it under the tree.
    let drawn = treecache::cli::tree::render(&c.zk.addr(), &c.name).await.expect("tree");
    assert!(drawn.contains(&format!("standby roots:\n  {standby_id}  {}  in sync\n", c.url(s))), "{drawn}");
    // What was written before it came is there (from the snapshot) ...
    let r = c.get(s, "before-7", "").await;
    assert_eq!((r.status, r.text().as_str(), r.cache.as_deref()), (200, "v7", Some("hit")));
    assert_eq!(r.node, Some(standby_id.to_string()), "X-Node names the standby that answered");
    // ... and what is written after (from the stream), at once: an
    // acknowledged ack=root write is on every in-sync root.
    let v = put_root(&c, 1, "after", "fresh").await.expect("write with the standby in sync");
    let r = c.get(s, "after", "").await;
    assert_eq!((r.status, r.text().as_str(), r.version), (200, "fresh", Some(v)));
    assert_eq!(c.get(s, "never-written", "").await.status, 404);
    // Writes and consistent reads at the standby go to the leader.
    let v2 = put_root(&c, s, "via-standby", "forwarded").await.expect("a write at the standby");
    let r = c.get(0, "via-standby", "").await;
    assert_eq!((r.text().as_str(), r.version), ("forwarded", Some(v2)));
    let r = c.get(s, "via-standby", "?consistent=true").await;
    assert_eq!((r.status, r.text().as_str()), (200, "forwarded"));
    assert_eq!(c.del(s, "after", "?ack=root").await.0, 200);
    wait_until(Duration::from_secs(10), "the delete to reach the standby", || async {
        c.get(s, "after", "").await.status == 404
    })
    .await;

    // Bad batches change nothing.
    let url = c.url(s);
    let epoch = c.health(0).await["epoch"].as_u64().unwrap().to_string();
    let from = leader_id.to_string();
    let hdrs = [("x-treecache-epoch", epoch.as_str()), ("x-treecache-from", from.as_str())];
    let (status, body) = internal(&c, format!("{url}/internal/replicate?from=0&to=0"), &hdrs, vec![]).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_parameter")), "no session: {body}");
    let (status, body) = internal(&c, format!("{url}/internal/replicate?session=5&from=0&to=0"), &hdrs, vec![]).await;
    assert_eq!(status, 400, "a session the standby does not follow: {body}");
    let (status, body) = internal(&c, format!("{url}/internal/replicate?session=5&from=3&to=1"), &hdrs, vec![]).await;
    assert_eq!(status, 400, "from after to: {body}");
    let old = [("x-treecache-epoch", "0"), ("x-treecache-from", from.as_str())];
    let (status, body) =
        internal(&c, format!("{url}/internal/replicate?session=5&first=true&from=0&to=0"), &old, vec![]).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("stale_epoch")), "{body}");
    let (status, body) = internal(
        &c,
        format!("{url}/internal/replicate?session=5&first=true&from=0&to=0"),
        &hdrs,
        b"not frames at all".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "a damaged batch: {body}");
    // Resuming: only a session's first batch, never with a snapshot, and
    // only from a position the standby holds.
    let (status, body) =
        internal(&c, format!("{url}/internal/replicate?session=5&resume=1&from=1&to=1"), &hdrs, vec![]).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_parameter")), "resume, not first: {body}");
    let snap_resume = format!("{url}/internal/replicate?session=5&first=true&snapshot=true&resume=1&from=0&to=0");
    let (status, body) = internal(&c, snap_resume, &hdrs, vec![]).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_parameter")), "resume with a snapshot: {body}");
    let far = format!("{url}/internal/replicate?session=5&first=true&resume=999999&from=999999&to=999999");
    let (status, body) = internal(&c, far, &hdrs, vec![]).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("cannot_resume")), "{body}");
    // A stream position is the standby's own word: never taken in a batch.
    let position = treecache::log::Position { epoch: epoch.parse().unwrap(), seq: 999_999 };
    let forged = treecache::replication::position_frame(position);
    let (status, body) =
        internal(&c, format!("{url}/internal/replicate?session=5&first=true&from=0&to=0"), &hdrs, forged).await;
    assert_eq!(status, 400, "a position in a batch: {body}");
    // A cache is no standby; a standby is no leader.
    let (status, body) =
        internal(&c, format!("{}/internal/replicate?session=5&first=true&from=0&to=0", c.url(1)), &hdrs, vec![]).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("not_standby")), "{body}");
    let req = serde_json::json!({"id": 99, "url": "http://127.0.0.1:9"}).to_string().into_bytes();
    let (status, body) = internal(&c, format!("{url}/internal/standby"), &hdrs, req.clone()).await;
    assert_eq!(status, 503, "a standby takes no standbys: {body}");
    let (status, body) = internal(&c, format!("{}/internal/standby", c.url(0)), &hdrs, b"{".to_vec()).await;
    assert_eq!(status, 400, "malformed: {body}");
    let bad_url = serde_json::json!({"id": 99, "url": "ftp://x"}).to_string().into_bytes();
    let (status, _) = internal(&c, format!("{}/internal/standby", c.url(0)), &hdrs, bad_url).await;
    assert_eq!(status, 400);
    // Without the secret: 401.
    let resp = c.http.post(format!("{url}/internal/replicate?session=1&from=0&to=0")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Nothing above changed the standby.
    let r = c.get(s, "before-7", "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "v7"));
    assert_eq!(c.health(s).await["role"], "standby");
    assert_eq!(in_sync(&c).await, [leader_id, standby_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_serves_a_write_only_once_every_in_sync_root_holds_it() {
    // Two standbys; the second holds each answer 3 s, so the leader waits
    // for it while the first already has the write. The first used to
    // serve it then: had the second taken over without it, the first
    // would start over from it and the key would go back.
    let mut c = cluster(1, &["--insync-timeout", "10s"]).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let quick = add_standby(&mut c, d1.path(), &[]).await;
    let slow = add_standby(&mut c, d2.path(), &["--fault-replicate-delay-ms", "3000"]).await;
    let mut all = vec![c.id(0).await, c.id(quick).await, c.id(slow).await];
    all.sort();
    wait_until(Duration::from_secs(60), "both standbys in the in-sync set", || async { in_sync(&c).await == all })
        .await;
    let v1 = put_root(&c, 0, "k", "one").await.expect("the first write");
    wait_until(Duration::from_secs(10), "the quick standby to serve the first write", || async {
        c.get(quick, "k", "").await.version == Some(v1)
    })
    .await;
    let started = Instant::now();
    let writer = {
        let (http, url) = (c.http.clone(), c.url(0));
        tokio::spawn(async move {
            let resp = http.put(format!("{url}/kv/k?ack=root")).body("two").send().await.expect("PUT");
            (resp.status().as_u16(), Instant::now())
        })
    };
    let quick_url = c.url(quick);
    let mut reads = 0;
    let first_seen = loop {
        // Each read may wait for the write to become durable: a short
        // client timeout keeps the probe going.
        let read = c.http.get(format!("{quick_url}/kv/k")).timeout(Duration::from_millis(300)).send().await;
        reads += 1;
        if let Ok(resp) = read {
            // The read waits for "two" to be durable, or answers "one":
            // never an error.
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            assert!(status == 200 && (text == "one" || text == "two"), "the quick standby answered {status} {text}");
            if text == "two" {
                break Instant::now();
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the quick standby never served the second write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, acked_at) = writer.await.expect("writer");
    assert_eq!(status, 200, "the second write (an overwrite) is acknowledged");
    let seen_after = first_seen.duration_since(started);
    assert!(
        seen_after >= Duration::from_millis(2500),
        "the quick standby served the write {seen_after:?} after it began, before the slow one held it \
         ({reads} reads; acknowledged after {:?})",
        acked_at.duration_since(started)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_insync_refuses_ack_root_writes_until_a_standby_is_in_sync() {
    let mut c = cluster(2, &["--min-insync", "2", "--insync-timeout", "1s"]).await;
    for i in [0, 1] {
        let (status, body) = c.put(i, "k", "v", "?ack=root").await;
        assert_eq!((status, body["code"].as_str()), (503, Some("insync_below_min")), "node {i}: {body}");
    }
    let resp = c.http.put(format!("{}/kv/k?ack=root", c.url(0))).body("v").send().await.unwrap();
    assert_eq!(resp.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert_eq!(c.get(0, "k", "").await.status, 404, "the refused write was not committed");
    // ack=parent writes are not refused (the parent holds them; the root
    // commits them: only ack=root promises they are on the standbys).
    let (status, _) = c.put(1, "p", "parent-acked", "").await;
    assert!(status == 200 || status == 201);
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    wait_until(Duration::from_secs(20), "two roots in sync", || async { in_sync(&c).await.len() == 2 }).await;
    put_root(&c, 1, "k", "now").await.expect("ack=root with two roots in sync");
    assert_eq!(c.get(s, "k", "").await.text(), "now");
    // The standby stops answering while a write waits for it: after
    // --insync-timeout the leader drops it and the write is committed on
    // the leader alone, fewer roots than --min-insync: the client hears so.
    c.pause(s);
    let (status, body) = c.put(0, "k", "while-leaving", "?ack=root").await;
    c.resume(s);
    assert_eq!((status, body["code"].as_str()), (503, Some("insync_below_min")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("committed at version"), "{body}");
    assert_eq!(c.get(0, "k", "?consistent=true").await.text(), "while-leaving", "committed nonetheless");
    wait_until(Duration::from_secs(30), "the standby back in the in-sync set", || async {
        in_sync(&c).await.len() == 2
    })
    .await;
    // The standby goes: after --insync-timeout the leader drops it from
    // the in-sync set, and ack=root writes are refused again.
    c.kill(s);
    wait_until(Duration::from_secs(20), "the dead standby out of the in-sync set", || async {
        // A write makes the leader notice (or the heartbeat does).
        let _ = c.put(1, "probe", "x", "?ack=root").await;
        in_sync(&c).await.len() == 1
    })
    .await;
    let (status, body) = c.put(1, "k", "refused", "?ack=root").await;
    assert_eq!((status, body["code"].as_str()), (503, Some("insync_below_min")), "{body}");
    assert!(!body["error"].as_str().unwrap().contains("committed at version"), "refused before: {body}");
    assert_eq!(c.get(0, "k", "?consistent=true").await.text(), "while-leaving", "the refused write changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_write() {
    let mut c = cluster(3, &["--fsync", "always"]).await;
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &["--fsync", "always"]).await;
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    let c = Arc::new(tokio::sync::RwLock::new(c));
    let acked: Arc<Mutex<HashMap<String, (u64, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let last_ok = Arc::new(Mutex::new(Instant::now()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (c, acked, stop, last_ok) = (c.clone(), acked.clone(), stop.clone(), last_ok.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w{w}-{n}");
                let value = format!("value {w} {n}");
                // Writers go through the caches (index 1, 2), never the
                // leader that is about to die.
                let at = 1 + (n % 2);
                let result = { put_root(&*c.read().await, at, &key, &value).await };
                if let Ok(version) = result {
                    acked.lock().insert(key, (version, value));
                    *last_ok.lock() = Instant::now();
                }
                n += 1;
            }
        }));
    }
    wait_until(Duration::from_secs(30), "writes before the kill", || async { acked.lock().len() >= 200 }).await;
    let killed_at = Instant::now();
    c.write().await.kill(0);
    let before_kill = acked.lock().len();
    wait_until(Duration::from_secs(60), "writes to resume at the new leader", || async {
        *last_ok.lock() > killed_at + Duration::from_millis(1) && acked.lock().len() > before_kill + 50
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let c = Arc::try_unwrap(c).ok().expect("the writers are done").into_inner();
    // The time from the kill to the first write acknowledged after it.
    let first_after = {
        let acked = acked.lock();
        acked.len()
    };
    eprintln!(
        "failover: {} writes acknowledged in all, {} before the kill; writes resumed {:?} after it",
        first_after,
        before_kill,
        last_ok.lock().saturating_duration_since(killed_at)
    );
    assert_eq!(c.health(s).await["role"], "root", "the standby took over");
    let acked = acked.lock().clone();
    for (key, (version, value)) in &acked {
        let r = c.get(s, key, "").await;
        assert_eq!(
            (r.status, r.text(), r.version),
            (200, value.clone(), Some(*version)),
            "acknowledged write {key} at the new leader"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_that_wakes_after_a_takeover_cannot_make_a_write_stick() {
    let mut c = cluster(2, &["--insync-timeout", "1s"]).await;
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    let old_epoch = leader_znode(&c).await["epoch"].as_u64().unwrap();
    put_root(&c, 0, "k", "before").await.expect("a write before the pause");
    c.pause(0);
    wait_until(Duration::from_secs(40), "the standby to take over", || async {
        let h = c.health(s).await;
        h["role"] == "root" && h["epoch"].as_u64() > Some(old_epoch)
    })
    .await;
    let new_leader = c.id(s).await;
    assert_eq!(leader_znode(&c).await["id"].as_u64(), Some(new_leader));
    c.resume(0);
    // The old leader, awake and not yet told, takes a write: it must not
    // be acknowledged unless the new leader has it.
    let answer = put_root(&c, 0, "k", "from the old leader").await;
    let at_new = c.get(s, "k", "").await;
    match answer {
        Ok(version) => assert_eq!(
            (at_new.text().as_str(), at_new.version),
            ("from the old leader", Some(version)),
            "an acknowledged write must be at the new leader"
        ),
        Err((status, body)) => {
            assert!(status >= 500 || status == 409, "refused: {status} {body}");
            assert_eq!(at_new.text(), "before", "the new leader keeps the last acknowledged value");
        }
    }
    // The old leader steps down and follows the new one.
    wait_until(Duration::from_secs(40), "the old leader to stand by", || async {
        let resp = c.http.get(format!("{}/health", c.url(0))).send().await.unwrap();
        let h: Value = resp.json().await.unwrap_or(Value::Null);
        h["role"] == "standby"
    })
    .await;
    let r = c.get(0, "k", "").await;
    assert_eq!(r.text(), c.get(s, "k", "").await.text(), "the old leader now holds what the new one holds");
    put_root(&c, 1, "after", "v").await.expect("the cache writes through the new leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_standby_catches_up_and_rejoins_the_in_sync_set() {
    let mut c = cluster(2, &["--insync-timeout", "1s"]).await;
    // Written through a cache before the standby comes: its snapshot then
    // carries write outcomes, which its own log must replay at restart.
    for k in 0..10 {
        put_root(&c, 1, &format!("early-{k}"), "e").await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    let (leader, standby) = (c.id(0).await, c.id(s).await);
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    put_root(&c, 1, "a", "1").await.unwrap();
    c.kill(s);
    // Writes go on without it once the leader drops it from in_sync.
    for k in 0..30 {
        put_root(&c, 1, &format!("while-down-{k}"), "x").await.expect("writes go on without the standby");
    }
    assert_eq!(in_sync(&c).await, [leader]);
    c.restart(s).await;
    assert_eq!(c.id(s).await, standby, "the standby keeps its id (kept in its data directory)");
    wait_until(Duration::from_secs(20), "the standby back in the in-sync set", || async {
        in_sync(&c).await == [leader.min(standby), leader.max(standby)]
    })
    .await;
    for k in 0..30 {
        let r = c.get(s, &format!("while-down-{k}"), "").await;
        assert_eq!((r.status, r.text().as_str()), (200, "x"), "while-down-{k} caught up");
    }
    assert_eq!(c.get(s, "a", "").await.text(), "1");
    assert_eq!(c.get(s, "early-3", "").await.text(), "e");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_zookeeper_pause_the_root_znode_says_the_leaders_epoch_and_a_standby_can_join() {
    // Found from outside: ZooKeeper paused 4 s, the leader stood again in
    // the same session and led a new epoch, but left the `root` znode at
    // the old one. A standby then registered with that old epoch and was
    // refused (409 stale_epoch) for good. Since issue 20 the leader keeps
    // its place (and epoch) through such a pause; either way the root
    // znode must say the epoch the leader leads, and a standby must join.
    let mut c = cluster(1, &[]).await;
    let before = c.health(0).await["epoch"].as_u64().unwrap();
    assert!(c.zk.pause());
    wait_past(Instant::now() + Duration::from_secs(4)).await;
    assert!(c.zk.resume());
    wait_until(Duration::from_secs(30), "the leader to answer /health", || async {
        c.http.get(format!("{}/health", c.url(0))).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let epoch = c.health(0).await["epoch"].as_u64().unwrap();
    assert_eq!(epoch, before, "the leader kept its epoch through the pause");
    wait_until(Duration::from_secs(10), "the root znode to say the leader's epoch", || async {
        let zk = c.zk.client().await;
        let root =
            zk.get_data(&format!("/treecache/{}/groups/0/root", c.name)).await.map(|(d, _)| d).unwrap_or_default();
        serde_json::from_slice::<Value>(&root).is_ok_and(|v| v["epoch"].as_u64() == Some(epoch))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    let mut both = vec![c.id(0).await, c.id(s).await];
    both.sort();
    wait_until(Duration::from_secs(20), "the standby in the in-sync set", || async { in_sync(&c).await == both }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_in_sync_root_alive_nobody_takes_over_and_health_says_why() {
    let mut c = cluster(2, &["--insync-timeout", "1s"]).await;
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    let leader = c.id(0).await;
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    put_root(&c, 1, "k", "held").await.unwrap();
    // The standby goes and is dropped from in_sync; then the leader goes.
    c.kill(s);
    put_root(&c, 1, "k", "newer").await.expect("the leader goes on without the standby");
    assert_eq!(in_sync(&c).await, [leader]);
    c.kill(0);
    // The standby comes back: it is not in in_sync, so it may not lead
    // (started without waiting for health: it does not become healthy).
    let log_before = c.log_text(s).len();
    c.restart_unwaited(s);
    wait_until(Duration::from_secs(30), "the candidate to say why it does not lead", || async {
        let resp = c.http.get(format!("{}/health", c.url(s))).send().await;
        match resp {
            Ok(r) if r.status().as_u16() == 503 => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                v["code"] == "no_insync_root"
            }
            _ => false,
        }
    })
    .await;
    assert!(c.log_text(s)[log_before..].contains("not taking over"), "the log says why");
    // The cache still serves what it holds; a write is not acknowledged.
    let r = c.get(1, "k", "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "newer"), "reads of held keys go on");
    assert_eq!(leader_znode(&c).await["id"].as_u64(), Some(leader), "nobody took over");
    // The old leader, with its log, comes back and leads; the standby follows.
    c.restart(0).await;
    wait_until(Duration::from_secs(30), "the standby to follow the returned leader", || async {
        in_sync(&c).await.len() == 2 && c.get(s, "k", "").await.status == 200
    })
    .await;
    let r = c.get(s, "k", "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "newer"), "the returned leader kept its log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_keeps_its_place_through_zookeeper_pauses_inside_its_session() {
    let mut c = cluster(2, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    let before = leader_znode(&c).await;
    let leader = c.id(0).await;
    assert_eq!(before["id"].as_u64(), Some(leader), "{before}");
    // ack=root writes at the cache all along; every one must succeed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (http, url) = (c.http.clone(), c.url(1));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let put = http.put(format!("{url}/kv/k{ok}?ack=root")).body("v").timeout(Duration::from_secs(10));
                match put.send().await {
                    Ok(resp) if resp.status().is_success() => ok += 1,
                    Ok(resp) => failed.push(format!("{} {}", resp.status(), resp.text().await.unwrap_or_default())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    for round in 0..10 {
        assert!(c.zk.pause(), "pause ZooKeeper (round {round})");
        wait_past(Instant::now() + Duration::from_secs(3)).await;
        assert!(c.zk.resume(), "resume ZooKeeper (round {round})");
        wait_past(Instant::now() + Duration::from_secs(3)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = writer.await.unwrap();
    assert!(failed.is_empty(), "writes failed during the pauses: {failed:?}");
    assert!(ok > 10, "writes went on during the pauses: {ok}");
    let after = leader_znode(&c).await;
    assert_eq!((after["id"].as_u64(), after["epoch"].as_u64()), (Some(leader), before["epoch"].as_u64()), "{after}");
    assert_eq!(c.health(0).await["role"], "root");
    assert_eq!(c.health(0).await["epoch"], before["epoch"]);
    assert_eq!(c.health(s).await["role"], "standby");
}

/// Writers and consistent readers at every cache while the leader is
/// killed: each request waits for the new leader (--failover-wait) instead
/// of failing. Returns (requests, failures, latencies of the requests that
/// began within 15 s after the kill).
async fn leader_kill_under_load(failover_wait: &str) -> (usize, Vec<String>, Vec<Duration>) {
    let wait = ["--failover-wait".to_string(), failover_wait.to_string()];
    let mut c = Cluster::start_opts(Opts {
        nodes: 5,
        durable_root: true,
        root_args: wait.to_vec(),
        node_args: wait.to_vec(),
        ..Opts::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    let caches: Vec<String> = (1..5).map(|i| c.url(i)).collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    type Log = Vec<(Instant, Duration, Option<String>)>;
    let log: Arc<Mutex<Log>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (http, caches, stop, done, log) = (http.clone(), caches.clone(), stop.clone(), done.clone(), log.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let node = &caches[(w + n) % caches.len()];
                let key = format!("w{w}-{n}");
                let began = Instant::now();
                let put = http.put(format!("{node}/kv/{key}?ack=root")).body(key.clone()).send().await;
                let failure = match put {
                    Ok(r) if r.status().is_success() => None,
                    Ok(r) => {
                        Some(format!("PUT {key} at {node}: {} {}", r.status(), r.text().await.unwrap_or_default()))
                    }
                    Err(e) => Some(format!("PUT {key} at {node}: {e}")),
                };
                log.lock().push((began, began.elapsed(), failure));
                // A consistent read of it at another cache.
                let other = &caches[(w + n + 1) % caches.len()];
                let began = Instant::now();
                let get = http.get(format!("{other}/kv/{key}?consistent=true")).send().await;
                let failure = match get {
                    Ok(r) if r.status() == 200 => {
                        let body = r.text().await.unwrap_or_default();
                        (body != key).then(|| format!("GET {key} at {other}: read {body:?}"))
                    }
                    Ok(r) => {
                        Some(format!("GET {key} at {other}: {} {}", r.status(), r.text().await.unwrap_or_default()))
                    }
                    Err(e) => Some(format!("GET {key} at {other}: {e}")),
                };
                log.lock().push((began, began.elapsed(), failure));
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    wait_until(Duration::from_secs(60), "requests before the kill", || async {
        done.load(std::sync::atomic::Ordering::Relaxed) >= 200
    })
    .await;
    let killed_at = Instant::now();
    c.kill(0);
    wait_until(Duration::from_secs(60), "the standby to take over", || async { c.health(s).await["role"] == "root" })
        .await;
    let after = done.load(std::sync::atomic::Ordering::Relaxed);
    wait_until(Duration::from_secs(60), "requests after the takeover", || async {
        done.load(std::sync::atomic::Ordering::Relaxed) >= after + 200
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let log = log.lock();
    let failures: Vec<String> = log.iter().filter_map(|(_, _, f)| f.clone()).collect();
    let window = killed_at + Duration::from_secs(15);
    let mut during: Vec<Duration> =
        log.iter().filter(|(began, _, _)| *began >= killed_at && *began <= window).map(|(_, d, _)| *d).collect();
    during.sort();
    (log.len(), failures, during)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_a_leader_kill_wait_for_the_new_leader_instead_of_failing() {
    // 20 s, not the default 10 s: the takeover (a 6 s session, then the
    // caches re-registering) must fit on a loaded CI machine too.
    let (requests, failures, during) = leader_kill_under_load("20s").await;
    let p = |q: f64| during.get(((during.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
    eprintln!(
        "leader kill under load: {requests} requests, {} failed; began within 15 s of the kill: {}, p50 {:?} p99 {:?} max {:?}",
        failures.len(),
        during.len(),
        p(0.5),
        p(0.99),
        during.last().copied().unwrap_or_default()
    );
    assert!(failures.is_empty(), "{} requests failed: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert!(!during.is_empty(), "requests were made during the takeover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_leader_a_held_request_gets_503_once_the_failover_wait_passes() {
    let wait = vec!["--failover-wait".to_string(), "1s".to_string()];
    let mut c = Cluster::start_opts(Opts { nodes: 2, node_args: wait, ..Opts::default() }).await;
    c.put(0, "held", "v", "?ack=root").await;
    assert_eq!(c.get(1, "held", "").await.status, 200);
    c.kill(0);
    // A consistent read and a miss wait for a leader, then give up.
    for (key, query) in [("held", "?consistent=true"), ("never-read", "")] {
        let r = c.get(1, key, query).await;
        assert_eq!(r.status, 503, "{key}{query}: {}", r.text());
        assert!(r.headers.contains_key("retry-after"), "{key}{query}");
    }
    assert!(c.metric(1, "failover_waits_total").await >= 2.0);
    assert!(c.metric(1, "failover_timeouts_total").await >= 2.0);
    // A plain read of a held key never waits: push mode serves it as held.
    let r = c.get(1, "held", "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_by_sigterm_hands_over_without_waiting_for_its_session() {
    let mut c = cluster(3, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    let caches = [c.url(1), c.url(2)];
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    type Acked = Vec<(Instant, String, u64)>;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, caches, stop, acked, failed) =
            (http.clone(), caches.clone(), stop.clone(), acked.clone(), failed.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w{w}-{n}");
                let node = &caches[n % 2];
                match http.put(format!("{node}/kv/{key}?ack=root")).body(key.clone()).send().await {
                    Ok(r) if r.status().is_success() => {
                        let body: Value = r.json().await.unwrap_or_default();
                        acked.lock().push((Instant::now(), key, body["version"].as_u64().unwrap_or(0)));
                    }
                    Ok(r) => {
                        let why = format!("{key}: {} {}", r.status(), r.text().await.unwrap_or_default());
                        failed.lock().push(why);
                    }
                    Err(e) => failed.lock().push(format!("{key}: {e}")),
                }
                n += 1;
            }
        }));
    }
    wait_until(Duration::from_secs(30), "writes before the stop", || async { acked.lock().len() >= 100 }).await;
    let stopped_at = Instant::now();
    tokio::task::block_in_place(|| c.stop(0));
    wait_until(Duration::from_secs(30), "the standby to lead", || async { c.health(s).await["role"] == "root" }).await;
    let after = acked.lock().len();
    wait_until(Duration::from_secs(30), "writes at the new leader", || async { acked.lock().len() >= after + 100 })
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().clone();
    let mut times: Vec<Instant> = acked.iter().map(|(at, _, _)| *at).collect();
    times.sort();
    let pause = times.windows(2).filter(|w| w[1] > stopped_at).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!("SIGTERM handover: the longest gap between acknowledged writes was {pause:?} ({} writes)", acked.len());
    assert!(failed.lock().is_empty(), "writes failed: {:?}", failed.lock());
    // The leader handed over (before, it dropped the standby from in_sync
    // while stopping, and nobody could lead); the pause is reported above,
    // not asserted (docs/failure.md has the measured figure).
    let log = c.log_text(0);
    assert!(log.contains("stopping: handing over to the in-sync standby roots"), "{log}");
    assert!(!log.contains("removed from the in-sync set"), "the standby stayed in sync: {log}");
    for (_, key, version) in &acked {
        let r = c.get(s, key, "").await;
        assert_eq!((r.status, r.text(), r.version), (200, key.clone(), Some(*version)), "acknowledged {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_standby_whose_answer_is_lost_commits_once() {
    // The leader answers its first write batch as if the answer were lost:
    // the standby sends the same write id again and learns the outcome.
    let mut c = cluster(1, &["--fault-lose-write-replies", "1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    let commits = c.metric(0, "commits_total").await;
    let v = put_root(&c, s, "once", "through the standby").await.expect("a write at the standby");
    assert_eq!(c.metric(0, "commits_total").await, commits + 1.0, "committed once");
    assert!(c.metric(0, "duplicate_writes_total").await >= 1.0, "the resend was recognised");
    let r = c.get(0, "once", "").await;
    assert_eq!((r.text().as_str(), r.version), ("through the standby", Some(v)));
    // A delete through the standby, and one of an absent key.
    assert_eq!(c.del(s, "once", "?ack=root").await.0, 200);
    assert_eq!(c.del(s, "never-there", "?ack=root").await.0, 404);
    assert_eq!(c.get(0, "once", "").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_standby_commit_in_the_order_it_took_them() {
    // The leader holds each write answer 1.5 s: B arrives at the standby
    // while A's answer is still on its way, and must not overtake it.
    let mut c = cluster(1, &["--fault-write-delay-ms", "1500"]).await;
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    let writes = c.metric(s, "writes_total").await;
    let put = |value: &'static str| {
        let (http, url) = (c.http.clone(), format!("{}/kv/k?ack=parent", c.url(s)));
        tokio::spawn(async move {
            let r = http.put(url).body(value).send().await.expect("PUT");
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or_default();
            (status, body["version"].as_u64())
        })
    };
    let a = put("A");
    wait_until(Duration::from_secs(10), "the standby to take A", || async {
        c.metric(s, "writes_total").await > writes
    })
    .await;
    let b = put("B");
    let ((sa, va), (sb, vb)) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!((sa, sb), (201, 200), "A created the key, B overwrote it");
    let (va, vb) = (va.expect("A's version"), vb.expect("B's version"));
    assert!(va < vb, "A ({va}) was taken first and committed first (B: {vb})");
    let r = c.get(0, "k", "").await;
    assert_eq!((r.text().as_str(), r.version), ("B", Some(vb)), "the later write wins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_read_of_a_held_key_never_waits_for_a_leader() {
    // ttl mode: the held entry goes stale and needs its parent (the root),
    // which is gone. A plain read answers 503 at once; it is not held.
    let mut c = Cluster::start_opts(Opts {
        nodes: 2,
        mode: "ttl",
        max_age: Some("200ms"),
        node_args: vec!["--failover-wait".into(), "30s".into()],
        ..Opts::default()
    })
    .await;
    c.put(0, "k", "v", "?ack=root").await;
    assert_eq!(c.get(1, "k", "").await.status, 200, "held at the cache");
    c.kill(0);
    wait_past(Instant::now() + Duration::from_millis(300)).await;
    let r = c.get(1, "k", "").await;
    assert_eq!(r.status, 503, "stale, its parent gone: {}", r.text());
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(c.metric(1, "failover_waits_total").await, 0.0, "the read was not held");
}

// ---- a returning standby: the tail it missed, or a snapshot ----

/// `treecache_replication_bytes_total{kind}` at node `i`.
async fn replication_bytes(c: &Cluster, i: usize, kind: &str) -> f64 {
    c.metric(i, &format!("replication_bytes_total{{kind=\"{kind}\"}}")).await
}

/// Writes `keys` at node `i`, 32 at a time; panics on a failure.
async fn put_all(c: &Cluster, i: usize, keys: &[(String, String)]) {
    use futures::StreamExt;
    futures::stream::iter(keys)
        .map(|(k, v)| async move { (k, c.put(i, k, v, "").await) })
        .buffer_unordered(32)
        .for_each(|(k, (status, body))| async move {
            assert!(status == 200 || status == 201, "PUT {k}: {status} {body}");
        })
        .await;
}

/// Every key of `want` (value, or `None`: absent) read at node `i`,
/// 32 at a time: the ones that differ, as (key, got, want).
async fn differing(c: &Cluster, i: usize, want: &HashMap<String, Option<String>>) -> Vec<(String, String, String)> {
    use futures::StreamExt;
    futures::stream::iter(want)
        .map(|(k, v)| async move {
            let r = c.get(i, k, "").await;
            let got = if r.status == 404 { None } else { Some(r.text()) };
            (k.clone(), got, v.clone())
        })
        .buffer_unordered(32)
        .filter_map(|(k, got, want)| async move { (got != want).then(|| (k, format!("{got:?}"), format!("{want:?}"))) })
        .collect()
        .await
}

/// Panics unless node `i` holds `want` (see [`differing`]).
async fn assert_holds(c: &Cluster, i: usize, want: &HashMap<String, Option<String>>) {
    let wrong = differing(c, i, want).await;
    assert!(wrong.is_empty(), "{} keys differ at node {i}, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
}

/// A durable leader with `root_args`, an in-sync standby with its own
/// data directory, and `n` keys written after it joined: the cluster,
/// the standby's index, its directory and what every key holds.
async fn with_standby_and_keys(
    root_args: &[&str],
    n: usize,
) -> (Cluster, usize, tempfile::TempDir, HashMap<String, Option<String>>) {
    let mut c = cluster(1, root_args).await;
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    let keys: Vec<(String, String)> = (0..n).map(|i| (format!("key-{i:05}"), value("first", i))).collect();
    put_all(&c, 0, &keys).await;
    let want = keys.into_iter().map(|(k, v)| (k, Some(v))).collect();
    (c, s, dir, want)
}

/// A value of about 60 bytes for key `i`, generation `g`.
fn value(g: &str, i: usize) -> String {
    format!("{g}-{i:05}-{}", "v".repeat(48))
}

/// The standby down (kill -9) for at least 2 s while the leader writes
/// `while_down` (overwrites, deletes and new keys), then back with its
/// --data-dir and in sync. Returns the leader's replication bytes of each
/// kind sent meanwhile: (snapshot, tail).
async fn stop_standby_and_write(
    c: &mut Cluster,
    s: usize,
    want: &mut HashMap<String, Option<String>>,
    while_down: usize,
) -> (f64, f64) {
    let ids = in_sync(c).await;
    let (snap0, tail0) = (replication_bytes(c, 0, "snapshot").await, replication_bytes(c, 0, "tail").await);
    c.kill(s);
    let back_at = Instant::now() + Duration::from_secs(2);
    let over: Vec<(String, String)> = (0..while_down).map(|i| (format!("key-{i:05}"), value("down", i))).collect();
    put_all(c, 0, &over).await;
    want.extend(over.into_iter().map(|(k, v)| (k, Some(v))));
    for i in while_down..while_down + 20 {
        let key = format!("key-{i:05}");
        let (status, body) = c.del(0, &key, "").await;
        assert_eq!(status, 200, "DELETE {key}: {body}");
        want.insert(key, None);
    }
    let new: Vec<(String, String)> = (0..50).map(|i| (format!("new-{i}"), value("new", i))).collect();
    put_all(c, 0, &new).await;
    want.extend(new.into_iter().map(|(k, v)| (k, Some(v))));
    wait_past(back_at).await;
    c.restart(s).await;
    wait_until(Duration::from_secs(30), "the standby back in the in-sync set", || async { in_sync(c).await == ids })
        .await;
    (replication_bytes(c, 0, "snapshot").await - snap0, replication_bytes(c, 0, "tail").await - tail0)
}

/// Issue 20: a standby stopped for 2 s (kill -9, back with its
/// --data-dir) while 10,000 keys exist takes what it missed from the
/// leader's tail: less than a tenth of the snapshot it joined with, and
/// every key right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_back_from_a_kill_takes_only_the_tail_it_missed() {
    let mut c = cluster(1, &["--insync-timeout", "1s"]).await;
    let keys: Vec<(String, String)> = (0..10_000).map(|i| (format!("key-{i:05}"), value("first", i))).collect();
    put_all(&c, 0, &keys).await;
    let mut want: HashMap<String, Option<String>> = keys.into_iter().map(|(k, v)| (k, Some(v))).collect();
    // It joins with the 10,000 keys there: its snapshot is the yardstick.
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    let snapshot = replication_bytes(&c, 0, "snapshot").await;
    assert!(snapshot > 10_000.0 * 60.0, "a snapshot of 10,000 keys: {snapshot} bytes");
    assert_eq!(replication_bytes(&c, 0, "tail").await, 0.0);

    let (snapshot_again, tail) = stop_standby_and_write(&mut c, s, &mut want, 200).await;
    eprintln!("snapshot of 10,000 keys: {snapshot} bytes; the tail on return: {tail} bytes");
    assert_eq!(snapshot_again, 0.0, "no snapshot on return");
    assert!(tail > 0.0, "what it missed came from the tail");
    assert!(tail < snapshot / 10.0, "tail {tail} bytes, not under a tenth of the snapshot's {snapshot}");
    assert!(c.log_text(0).contains("resuming it from the tail"), "the leader says it resumed");
    assert_holds(&c, s, &want).await;
    // Still following the stream: a write now reaches it too.
    put_root(&c, 0, "after", "a").await.unwrap();
    assert_eq!(c.get(s, "after", "").await.text(), "a");
}

/// A tail smaller than what the standby missed: it takes a snapshot, and
/// every key is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_missed_more_than_the_tail_takes_a_snapshot() {
    let (mut c, s, _dir, mut want) =
        with_standby_and_keys(&["--insync-timeout", "1s", "--replication-tail", "4KiB"], 1_000).await;
    // 300 writes of ~100 bytes each: far more than 4 KiB.
    let (snapshot, tail) = stop_standby_and_write(&mut c, s, &mut want, 230).await;
    assert!(snapshot > 1_000.0 * 60.0, "a whole snapshot: {snapshot} bytes");
    assert_eq!(tail, 0.0, "nothing from the tail");
    assert!(c.log_text(0).contains("which the tail cannot resume"), "the leader says why");
    assert_holds(&c, s, &want).await;
}

/// A root that led an older epoch, and may hold commits the new leader
/// never had, comes back (kill -9, restart with its --data-dir) after
/// another root took over and wrote: it does not resume from its own log
/// (the new leader's stream numbers frames of another epoch), it takes a
/// snapshot, and holds every key as the new leader does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_leader_back_after_a_takeover_takes_a_snapshot_not_its_diverged_log() {
    let (mut c, s, _dir, mut want) = with_standby_and_keys(&["--insync-timeout", "1s"], 500).await;
    let old_epoch = leader_znode(&c).await["epoch"].as_u64().unwrap();
    c.pause(0);
    wait_until(Duration::from_secs(40), "the standby to take over", || async {
        let h = c.health(s).await;
        h["role"] == "root" && h["epoch"].as_u64() > Some(old_epoch)
    })
    .await;
    // The new leader writes: as many frames as the old one numbered, and more.
    let over: Vec<(String, String)> = (0..600).map(|i| (format!("key-{:05}", i % 500), value("new", i))).collect();
    put_all(&c, s, &over).await;
    want.extend(over.into_iter().map(|(k, v)| (k, Some(v))));
    for i in 0..10 {
        let key = format!("key-{i:05}");
        assert_eq!(c.del(s, &key, "").await.0, 200);
        want.insert(key, None);
    }
    // The old leader wakes and, not yet told, takes writes: whatever it
    // commits to its own log is not the new leader's (unless the new one
    // has it: the old one may pass them on once it follows).
    // Measured before the old leader wakes: under load it may find its
    // session expired and follow the new leader in the same process,
    // before the restart below.
    let snap0 = replication_bytes(&c, s, "snapshot").await;
    c.resume(0);
    let touched = ["key-00100", "only-old"];
    for key in touched {
        let _ = c.put(0, key, "from the old leader", "").await;
    }
    c.restart(0).await;
    let (leader, old) = (c.id(s).await, c.id(0).await);
    wait_until(Duration::from_secs(40), "the old leader in sync with the new one", || async {
        in_sync(&c).await == [leader.min(old), leader.max(old)]
    })
    .await;
    for key in touched {
        let r = c.get(s, key, "?consistent=true").await;
        want.insert(key.to_string(), (r.status == 200).then(|| r.text()));
    }
    assert_holds(&c, 0, &want).await;
    assert!(replication_bytes(&c, s, "snapshot").await > snap0, "it took a snapshot");
    // Its first stream from the new leader started from a snapshot, not
    // from its own log (a later restart may resume: its log then holds
    // the new leader's stream).
    let log = c.log_text(0);
    let first = log
        .lines()
        .find(|l| l.contains(&format!("from leader {leader} (epoch")))
        .unwrap_or_else(|| panic!("no stream from leader {leader} in node 0's log"));
    assert!(first.contains("starting over from its snapshot"), "it resumed its diverged log: {first}");
}

/// One RESP writer of [`resp_during_a_leader_kill`]: `SET`s one at a time,
/// pipelined `SET`s or `MSET`s (by `w`) at the caches, each followed by a
/// `GET` of what it wrote at another cache (a miss there: a fill that needs
/// the leader). Records every acknowledged write and every failure.
async fn resp_writer(
    w: usize,
    caches: Vec<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<HashMap<String, String>>>,
    failures: Arc<Mutex<Vec<String>>>,
) {
    let mut conns = Vec::new();
    for addr in &caches {
        conns.push(Resp::connect(addr).await);
    }
    let mut n = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let at = (w + n) % conns.len();
        let keys: Vec<String> = (0..[1, 8, 4][w % 3]).map(|k| format!("r{w}-{n}-{k}")).collect();
        let replies = match w % 3 {
            0 => vec![conns[at].call(&["SET", &keys[0], &keys[0]]).await],
            1 => {
                for k in &keys {
                    conns[at].send(&[b"SET", k.as_bytes(), k.as_bytes()]).await;
                }
                let mut replies = Vec::new();
                for _ in &keys {
                    replies.push(conns[at].read().await.expect("a reply"));
                }
                replies
            }
            _ => {
                let mut args = vec!["MSET"];
                for k in &keys {
                    args.extend([k.as_str(), k.as_str()]);
                }
                vec![conns[at].call(&args).await]
            }
        };
        for reply in &replies {
            if *reply != Reply::ok() {
                failures.lock().push(format!("writer {w} at {}: {reply:?}", caches[at]));
            }
        }
        if replies.iter().all(|r| *r == Reply::ok()) {
            acked.lock().extend(keys.iter().map(|k| (k.clone(), k.clone())));
        }
        let other = (at + 1) % conns.len();
        let read = conns[other].call(&["GET", &keys[0]]).await;
        if read != Reply::bulk(&keys[0]) {
            failures.lock().push(format!("GET {} at {}: {read:?}", keys[0], caches[other]));
        }
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_requests_during_a_leader_kill_wait_for_the_new_leader_and_lose_nothing() {
    // 20 s, as for /kv above: the takeover must fit on a loaded machine.
    let wait = vec!["--failover-wait".to_string(), "20s".to_string()];
    let mut c = Cluster::start_opts(Opts {
        nodes: 4,
        durable_root: true,
        resp: true,
        root_args: wait.clone(),
        node_args: wait,
        ..Opts::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = add_standby(&mut c, dir.path(), &[]).await;
    wait_until(Duration::from_secs(20), "the standby in sync", || async { in_sync(&c).await.len() == 2 }).await;
    // At the standby, a SET is passed on to the leader (with an id of the
    // standby's, as /kv's writes); SET ... GET needs a consistent read the
    // standby does not pass on: -READONLY at once.
    let mut standby = Resp::connect(&c.resp_addr(s)).await;
    assert_eq!(standby.call(&["SET", "via-standby", "v"]).await, Reply::ok());
    assert_eq!(c.get(0, "via-standby", "").await.text(), "v");
    let readonly = standby.call(&["SET", "via-standby", "w", "GET"]).await;
    assert!(readonly.is_error_starting("READONLY this node is a standby root"), "{readonly:?}");

    let caches: Vec<String> = (1..4).map(|i| c.resp_addr(i)).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let writers: Vec<_> = (0..6)
        .map(|w| tokio::spawn(resp_writer(w, caches.clone(), stop.clone(), acked.clone(), failures.clone())))
        .collect();
    wait_until(Duration::from_secs(60), "RESP writes before the kill", || async { acked.lock().len() >= 300 }).await;
    let waits_before: f64 =
        futures::future::join_all((1..4).map(|i| c.metric(i, "failover_waits_total"))).await.into_iter().sum();
    c.kill(0);
    wait_until(Duration::from_secs(60), "the standby to take over", || async { c.health(s).await["role"] == "root" })
        .await;
    let after = acked.lock().len();
    wait_until(Duration::from_secs(60), "RESP writes after the takeover", || async {
        acked.lock().len() >= after + 300
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("a writer ended cleanly");
    }
    let failures = failures.lock().clone();
    let waits: f64 =
        futures::future::join_all((1..4).map(|i| c.metric(i, "failover_waits_total"))).await.into_iter().sum();
    eprintln!(
        "leader kill under RESP load: {} writes acknowledged, {} failures, {} requests held",
        acked.lock().len(),
        failures.len(),
        waits - waits_before
    );
    assert!(failures.is_empty(), "{} RESP requests failed: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert!(waits > waits_before, "some RESP requests were held through the takeover");
    // Every acknowledged write is at the new leader.
    let acked = acked.lock().clone();
    let mut leader = Resp::connect(&c.resp_addr(s)).await;
    for (key, value) in &acked {
        assert_eq!(leader.call(&["GET", key]).await, Reply::bulk(value), "acknowledged write {key} at the new leader");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_leader_a_held_resp_command_gets_tryagain_once_the_failover_wait_passes() {
    let wait = vec!["--failover-wait".to_string(), "1s".to_string()];
    let mut c = Cluster::start_opts(Opts { nodes: 2, resp: true, node_args: wait, ..Opts::default() }).await;
    let mut leaf = Resp::connect(&c.resp_addr(1)).await;
    assert_eq!(leaf.call(&["SET", "held", "v"]).await, Reply::ok());
    c.kill(0);
    let tryagain = |r: &Reply, code: &str| r.is_error_starting("TRYAGAIN") && r.text().ends_with(&format!("({code})"));
    // Reads that need the leader wait for one, then give up.
    for cmd in [
        vec!["GET", "never-read"],
        vec!["MGET", "held", "never-read"],
        vec!["EXISTS", "never-read"],
        vec!["TTL", "never-read"],
        vec!["SET", "held", "w", "GET"],
    ] {
        let r = leaf.call(&cmd).await;
        assert!(tryagain(&r, "parent_unreachable"), "{cmd:?}: {r:?}");
    }
    // A read of a held key never waits.
    assert_eq!(leaf.call(&["GET", "held"]).await, Reply::bulk("v"));
    assert!(c.metric(1, "failover_timeouts_total").await >= 5.0);

    // A node that cannot register (no root) holds writes, then gives up:
    // one at a time, an MSET, a DEL, and a pipeline, whose later SETs wait
    // behind the first and give up in turn, in order.
    let lonely = c.add_node_unwaited(&[]);
    let mut r = wait_for_resp(&c.resp_addr(lonely)).await;
    for cmd in
        [vec!["SET", "k", "v"], vec!["MSET", "a", "1", "b", "2"], vec!["DEL", "a", "b"], vec!["SET", "k", "v", "NX"]]
    {
        let reply = r.call(&cmd).await;
        assert!(tryagain(&reply, "not_registered"), "{cmd:?}: {reply:?}");
    }
    for k in ["p1", "p2", "p3"] {
        r.send(&[b"SET", k.as_bytes(), b"v"]).await;
    }
    for k in ["p1", "p2", "p3"] {
        let reply = r.read().await.expect("a reply");
        assert!(tryagain(&reply, "not_registered"), "pipelined SET {k}: {reply:?}");
    }
    assert!(c.metric(lonely, "failover_timeouts_total").await >= 7.0);
}

/// A RESP connection to `addr` once it listens (a node that is starting).
async fn wait_for_resp(addr: &str) -> Resp {
    wait_until(Duration::from_secs(20), "the RESP port to listen", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    Resp::connect(addr).await
}
