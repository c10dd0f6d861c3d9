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
