//! Root groups as far as they are built (DESIGN.md "Root groups"): each
//! group elects its own leader under `groups/<G>/` with its own in-sync
//! set and standbys, fails over on its own, refuses registrations (only
//! group 0's leader is the registrar); the slot map is made by group 0's
//! first leader and read by `treecache slots` and `treecache tree`.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{wait_until, Cluster, Opts};
use serde_json::Value;
use treecache::client::{Ack, PutOptions};

const BIN: &str = env!("CARGO_BIN_EXE_treecache");

fn treecache(args: &[&str]) -> Output {
    common::output_within(Command::new(BIN).args(args), Duration::from_secs(60))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn znode(c: &Cluster, rel: &str) -> Option<Value> {
    let zk = c.zk.client().await;
    let (data, _) = zk.get_data(&format!("/treecache/{}/{rel}", c.name)).await.ok()?;
    serde_json::from_slice(&data).ok()
}

/// A root candidate of `group` with a data directory of its own.
async fn add_group_root(c: &mut Cluster, group: &str, name: &str) -> usize {
    let dir = c.path(name).display().to_string();
    c.add_node_with(&["--root", "--group", group, "--data-dir", &dir]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_group_elects_fails_over_and_shows_in_slots_and_tree_without_touching_group_0() {
    let mut c = Cluster::start_opts(Opts { nodes: 2, durable_root: true, ..Opts::default() }).await;
    let (status, _) = c.put(1, "k", "v", "?ack=root").await;
    assert_eq!(status, 201);
    let group0 = znode(&c, "groups/0/leader").await.expect("group 0's leader znode");

    // The map group 0's first leader made: every slot to group 0.
    assert_eq!(
        znode(&c, "slots").await.expect("the slot map"),
        serde_json::json!({"epoch": 1, "ranges": [{"slots": "0-1023", "group": 0}]})
    );

    let leader = add_group_root(&mut c, "1", "g1-a").await;
    let standby = add_group_root(&mut c, "1", "g1-b").await;
    assert_eq!(c.health(leader).await["role"], "root");
    assert_eq!(c.health(standby).await["role"], "standby");
    let (leader_id, standby_id) = (c.id(leader).await, c.id(standby).await);
    wait_until(Duration::from_secs(20), "group 1's standby in its in-sync set", || async {
        let rec = znode(&c, "groups/1/leader").await.unwrap_or_default();
        rec["id"] == leader_id && rec["in_sync"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let root1 = znode(&c, "groups/1/root").await.expect("group 1's root znode");
    assert_eq!(root1["id"], leader_id);
    // Group 1 draws its epoch from the cluster's one counter: above group 0's.
    assert!(root1["epoch"].as_u64() > group0["epoch"].as_u64(), "{root1} vs {group0}");

    // Group 1's leader is not the registrar; it names group 0's leader.
    let resp = c
        .peer_http()
        .post(format!("{}/clients/register", c.url(leader)))
        .json(&serde_json::json!({"url": "http://127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "not_root");
    assert!(body["error"].as_str().unwrap().contains(&c.url(0)), "{body}");

    // `slots`: both groups, their leaders, keys; group 1 owns no slot yet.
    let zk = c.zk.addr();
    let out = treecache(&["slots", "--zk", &zk, "--cluster", &c.name]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("cluster {}: slot map epoch 1, 2 groups", c.name));
    let row = |g: &str| lines.iter().find(|l| l.starts_with(g)).map(|l| l.split_whitespace().collect::<Vec<_>>());
    let row0 = row("0 ").expect("group 0's row");
    assert_eq!(
        (row0[1], row0[2], row0[3], row0[4], row0[6]),
        (&*c.id(0).await.to_string(), &*c.url(0), "1024", "1", "0-1023")
    );
    let row1 = row("1 ").expect("group 1's row");
    assert_eq!((row1[1], row1[3], row1[4], row1[6]), (&*leader_id.to_string(), "0", "0", "-"));
    assert_eq!(lines.last(), Some(&"moves in progress: none"));

    // `tree`: the root tier, group 1 with its standby.
    let out = treecache(&["tree", "--zk", &zk, "--cluster", &c.name]);
    let text = stdout(&out);
    assert!(text.contains("root groups (slot map epoch 1):"), "{text}");
    assert!(text.contains(&format!("group 1: leader {leader_id} at {}", c.url(leader))), "{text}");
    assert!(text.contains(&format!("{standby_id}  {}  in sync", c.url(standby))), "{text}");

    // Group 1's leader dies: its standby takes over group 1; group 0 and
    // the tree below it do not notice.
    c.kill(leader);
    wait_until(Duration::from_secs(30), "group 1's standby takes over", || async {
        znode(&c, "groups/1/root").await.is_some_and(|r| r["id"] == standby_id)
    })
    .await;
    assert_eq!(c.health(standby).await["role"], "root");
    assert_eq!(znode(&c, "groups/0/leader").await.unwrap()["epoch"], group0["epoch"]);
    assert_eq!(c.get(1, "k", "?consistent=true").await.text(), "v");
    let (status, _) = c.put(1, "k2", "v2", "?ack=root").await;
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_needs_root_and_slots_needs_a_map() {
    let c = Cluster::start_opts(Opts { nodes: 1, ..Opts::default() }).await;
    let out = treecache(&["node", "--zk", &c.zk.addr(), "--cluster", "x", "--group", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--group applies to root candidates (--root) only"));
    let out = treecache(&["node", "--zk", &c.zk.addr(), "--root", "--group", "1024"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    let out = treecache(&["slots", "--zk", &c.zk.addr(), "--cluster", "nosuch"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster \"nosuch\" has no slot map"));
}

/// Splits the slot map evenly over `groups` by a conditional write, as a
/// node does (with the cluster's digest credential): the step `slots
/// rebalance` will take for an empty cluster.
async fn split_map(c: &Cluster, groups: &[u32]) -> treecache::slots::SlotMap {
    use treecache::tree::zk;
    let secret = treecache::auth::Secret::new(c.secret()).expect("secret");
    let paths = zk::Paths::with_secret(&c.name, &secret);
    let client = zk::connect(&c.zk.addr(), &paths, None).await.expect("ZooKeeper");
    let (map, version) = zk::read_slots(&client, &paths).await.expect("read slots").expect("a slot map");
    let split = treecache::slots::SlotMap::even(groups, map.epoch() + 1).expect("even map");
    assert!(zk::write_slots(&client, &paths, &split, version).await.expect("write slots"), "the map changed meanwhile");
    split
}

/// Keys of each group under `map`, `n` of each, named `prefix-i`.
fn keys_of(map: &treecache::slots::SlotMap, group: u32, prefix: &str, n: usize) -> Vec<String> {
    (0..).map(|i| format!("{prefix}-{i}")).filter(|k| map.owner_of(k) == group).take(n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_slots_split_over_two_groups_every_node_reads_and_writes_every_key_at_its_owner() {
    // Root (group 0) + 2 routers (depth 1) + 2 leaves (depth 2), and group
    // 1's leader.
    let mut c = Cluster::start_opts(Opts { nodes: 5, durable_root: true, ..Opts::default() }).await;
    let dir = c.path("g1-a").display().to_string();
    // Group 1 takes smaller values than the others: its refusals reach
    // clients through the roots that pass them on.
    let g1 = c.add_node_with(&["--root", "--group", "1", "--data-dir", &dir, "--max-value-bytes", "1000"]).await;
    let map = split_map(&c, &[0, 1]).await;
    let routers = [1usize, 2];
    let leaves = [3usize, 4];
    // Group 1's leader takes the routers as its children.
    wait_until(Duration::from_secs(20), "group 1's leader adopts the routers", || async {
        c.health(g1).await["children"].as_array().is_some_and(|a| a.len() == routers.len())
    })
    .await;
    // Every live node says in its live znode that it routes by the new map.
    wait_until(Duration::from_secs(20), "every live node on map epoch 2", || async {
        let out = treecache(&["slots", "--zk", &c.zk.addr(), "--cluster", &c.name]);
        stdout(&out).contains("live nodes on map epoch 2: 6 of 6")
    })
    .await;

    let ones = keys_of(&map, 1, "k", 12);
    let zeros = keys_of(&map, 0, "k", 12);
    // Writes at every non-root node, both acks.
    for (n, key) in ones.iter().chain(&zeros).enumerate() {
        let at = 1 + n % 4;
        let ack = if n % 2 == 0 { "?ack=root" } else { "" };
        let (status, body) = c.put(at, key, &format!("v-{key}"), ack).await;
        assert!(status == 200 || status == 201, "PUT {key} at node {at}: {status} {body}");
    }
    // Each key is at its owner's root alone: a root's dump holds its own
    // group's keys, and a root asked for another group's key answers it
    // from that group's leader (X-Cache: miss), keeping nothing.
    wait_until(Duration::from_secs(10), "every write reached its owner", || async {
        let (d0, d1) = (c.dump_keys(0).await, c.dump_keys(g1).await);
        ones.iter().all(|k| d1.contains(k) && !d0.contains(k))
            && zeros.iter().all(|k| d0.contains(k) && !d1.contains(k))
    })
    .await;
    for (root, key) in ones.iter().map(|k| (0, k)).chain(zeros.iter().map(|k| (g1, k))) {
        let read = c.get(root, key, "").await;
        assert_eq!((read.status, read.text()), (200, format!("v-{key}")), "root {root}, {key}");
        assert_eq!(read.cache.as_deref(), Some("miss"));
    }
    assert!(!c.dump_keys(0).await.iter().any(|k| ones.contains(k)), "group 0's root kept a proxied read");
    // Writes at a root of another group's key go to the owner: every
    // answer as the owner gave it, conditions decided there.
    let (status, _) = c.put(0, &ones[2], "via-root-0", "?ack=root").await;
    assert_eq!(status, 200);
    assert_eq!(c.get(g1, &ones[2], "").await.text(), "via-root-0");
    let put_if_absent = c
        .http
        .put(format!("{}/kv/{}?ack=root", c.url(0), ones[2]))
        .header("if-none-match", "*")
        .body("no")
        .send()
        .await
        .unwrap();
    assert_eq!(put_if_absent.status(), 412, "the owner decides the condition");
    let (status, _) = c.del(g1, &zeros[2], "?ack=root").await;
    assert_eq!(status, 200);
    assert_eq!(c.get(0, &zeros[2], "").await.status, 404);
    let (status, _) = c.del(g1, &zeros[2], "?ack=root").await;
    assert_eq!(status, 404, "a delete of an absent key, through another group's root");
    // The owner's refusal is the client's: 400 naming the owner, not a 503
    // to retry.
    let (status, body) = c.put(0, &ones[3], &"x".repeat(2000), "?ack=root").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("413"), "{body}");
    // A request another root passed on is answered or refused, never
    // passed on again (two roots with different maps would loop).
    let proxied =
        |i: usize, key: &str| c.http.get(format!("{}/kv/{key}", c.url(i))).header("x-treecache-proxied", "1").send();
    let resp = proxied(0, &ones[0]).await.unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "wrong_group");
    assert_eq!(proxied(g1, &ones[0]).await.unwrap().status(), 200);
    // A router takes a reset from a group leader (one that takes it back
    // as its child tells it so), and from no other stranger.
    let leader = znode(&c, "groups/1/root").await.expect("group 1's root znode");
    let clear = |from: u64, epoch: u64| {
        c.peer_http()
            .post(format!("{}/internal/clear", c.url(routers[0])))
            .header("x-treecache-from", from)
            .header("x-treecache-generation", 0)
            .header("x-treecache-epoch", epoch)
            .send()
    };
    let resets = c.metric(routers[0], "resets_total").await;
    let (id, epoch) = (leader["id"].as_u64().unwrap(), leader["epoch"].as_u64().unwrap());
    assert_eq!(clear(id, epoch).await.unwrap().status(), 200);
    assert!(c.metric(routers[0], "resets_total").await > resets);
    assert_eq!(clear(id, epoch - 1).await.unwrap().status(), 409, "an older epoch of group 1");
    assert_eq!(clear(9999, epoch).await.unwrap().status(), 409, "not a leader, not the parent");
    wait_until(Duration::from_secs(10), "the router serves again after its reset", || async {
        c.get(routers[0], &ones[0], "").await.status == 200
    })
    .await;
    // Every non-root node reads every key; consistent reads too.
    for i in 1..5 {
        for key in ones.iter().chain(&zeros).filter(|k| *k != &ones[2] && *k != &zeros[2]) {
            assert_eq!(c.get(i, key, "").await.text(), format!("v-{key}"), "node {i}, {key}");
            assert_eq!(c.get(i, key, "?consistent=true").await.text(), format!("v-{key}"), "node {i}, {key}");
        }
    }
    // An overwrite of a group 1 key at one leaf reaches the other leaf,
    // which holds it, by group 1's push through its router.
    let key = &ones[0];
    let (status, _) = c.put(leaves[0], key, "newer", "?ack=root").await;
    assert_eq!(status, 200);
    wait_until(Duration::from_secs(10), "the push reaches the other leaf", || async {
        c.get(leaves[1], key, "").await.text() == "newer"
    })
    .await;
    assert!(c.metric(g1, "pushes_sent_total").await > 0.0, "group 1 pushed nothing");
    // Writes through one node to one key of group 1 commit in its order.
    for n in 0..20 {
        let (status, _) = c.put(leaves[1], &ones[1], &format!("w{n}"), "").await;
        assert!(status == 200 || status == 201);
    }
    wait_until(Duration::from_secs(10), "the last write wins at group 1", || async {
        c.get(g1, &ones[1], "").await.text() == "w19"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_of_group_1_reroutes_its_slots_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start_opts(Opts { nodes: 5, durable_root: true, ..Opts::default() }).await;
    let leader = add_group_root(&mut c, "1", "g1-a").await;
    let standby = add_group_root(&mut c, "1", "g1-b").await;
    let standby_id = c.id(standby).await;
    wait_until(Duration::from_secs(20), "group 1's standby in sync", || async {
        znode(&c, "groups/1/leader").await.and_then(|r| r["in_sync"].as_array().map(|a| a.len())) == Some(2)
    })
    .await;
    let map = split_map(&c, &[0, 1]).await;
    wait_until(Duration::from_secs(20), "group 1's leader adopts the routers", || async {
        c.health(leader).await["children"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let ones = keys_of(&map, 1, "f", 8);
    for (n, key) in ones.iter().enumerate() {
        let (status, body) = c.put(3 + n % 2, key, "before", "?ack=root").await;
        assert_eq!(status, 201, "{key}: {body}");
    }
    // Leaves hold them (read once), so group 1 pushes to the routers.
    for key in &ones {
        assert_eq!(c.get(3, key, "").await.text(), "before");
        assert_eq!(c.get(4, key, "").await.text(), "before");
    }

    c.kill(leader);
    // A write of group 1 at a router waits for group 1's new leader;
    // meanwhile the same router's writes of group 0 are acknowledged (each
    // group's writes go up in their own lane).
    let router = c.client(1);
    let (first, value) = (ones[0].clone(), "after".to_string());
    let waiting = tokio::spawn(async move {
        router.put_with(&first, value, PutOptions { ack: Ack::Root, ttl: None }).await.map(|w| w.version())
    });
    wait_until(Duration::from_secs(10), "the router holds group 1's write", || async {
        c.metric(1, "uplink_pending").await >= 1.0
    })
    .await;
    for key in keys_of(&map, 0, "during", 3) {
        let (status, body) = c.put(1, &key, "v", "?ack=root").await;
        assert_eq!(status, 201, "{key} of group 0 while group 1 fails over: {body}");
    }
    // The same below a router: a leaf's write of group 1 does not hold
    // back its next writes (one batch in flight to its router): the
    // router answers it in progress once its lane fails, and owes it the
    // outcome.
    let leaf = c.client(3);
    let (second, value) = (ones[1].clone(), "after".to_string());
    let leaf_waiting = tokio::spawn(async move {
        leaf.put_with(&second, value, PutOptions { ack: Ack::Root, ttl: None }).await.map(|w| w.version())
    });
    wait_until(Duration::from_secs(10), "the leaf sent group 1's write", || async {
        c.metric(3, "uplink_pending").await + c.metric(3, "uplink_unconfirmed").await >= 1.0
    })
    .await;
    for key in keys_of(&map, 0, "below", 3) {
        let (status, body) = c.put(3, &key, "v", "?ack=root").await;
        assert_eq!(status, 201, "{key} of group 0 at a leaf while group 1 fails over: {body}");
    }
    let group_1 = znode(&c, "groups/1/root").await;
    assert!(
        group_1.as_ref().is_none_or(|root| root["id"] != standby_id),
        "group 0's writes waited for group 1's failover ({group_1:?})"
    );
    for (at, waiting) in [("router", waiting), ("leaf", leaf_waiting)] {
        let version = waiting.await.expect("the writer").unwrap_or_else(|e| panic!("group 1's write at the {at}: {e}"));
        assert!(version.is_some_and(|v| v > 0), "an ack=root write answers its version");
    }
    // Writes through the leaves wait for group 1's new leader (the
    // failover wait) and are acknowledged there.
    for (n, key) in ones.iter().enumerate() {
        let (status, body) = c.put(3 + n % 2, key, "after", "?ack=root").await;
        assert_eq!(status, 200, "{key} during group 1's failover: {body}");
    }
    assert_eq!(znode(&c, "groups/1/root").await.expect("group 1's root")["id"], standby_id);
    for key in &ones {
        assert_eq!(c.get(standby, key, "").await.text(), "after", "{key} at group 1's new leader");
        for i in 1..5 {
            wait_until(Duration::from_secs(10), "every node serves the acknowledged value", || async {
                c.get(i, key, "").await.text() == "after"
            })
            .await;
        }
    }
}
