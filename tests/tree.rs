//! The tree, end to end: a real ZooKeeper and real node processes.
//! Index i in a cluster is node id i + 1 (nodes start one by one).
//! Seven nodes, fanout 2: 1 is the root; 2 and 3 under it; 4, 5 under 2;
//! 6, 7 under 3.

mod common;

use std::time::{Duration, Instant};

use common::{wait_past, wait_until, Cluster};

const CONVERGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn placement_is_breadth_first_and_zookeeper_records_it() {
    let c = Cluster::start(7, &[]).await;
    let expect = [
        (1, None, 0),
        (2, Some(1), 1),
        (3, Some(1), 1),
        (4, Some(2), 2),
        (5, Some(2), 2),
        (6, Some(3), 2),
        (7, Some(3), 2),
    ];
    for (i, (id, parent, depth)) in expect.iter().enumerate() {
        let h = c.health(i).await;
        assert_eq!(h["status"], "ok");
        assert_eq!(h["id"], *id, "node {i}");
        assert_eq!(h["parent"].as_u64(), *parent, "parent of {id}");
        assert_eq!(h["depth"], *depth, "depth of {id}");
    }
    assert_eq!(c.health(0).await["role"], "root");
    assert_eq!(c.health(1).await["role"], "inner");
    assert_eq!(c.health(1).await["children"], serde_json::json!([4, 5]));
    assert_eq!(c.health(6).await["role"], "leaf");
    wait_until(CONVERGE, "tree znodes", || async {
        c.zk_tree("tree").await == ["1", "1/2", "1/2/4", "1/2/5", "1/3", "1/3/6", "1/3/7"]
    })
    .await;
    assert_eq!(c.zk_tree("live").await, ["1", "2", "3", "4", "5", "6", "7"]);
    // The ZooKeeper CLI shows the same tree.
    let out = std::process::Command::new("/usr/share/zookeeper/bin/zkCli.sh")
        .args(["-server", &c.zk.addr(), "ls", "-R", &format!("/treecache/{}/tree", c.name)])
        .output()
        .expect("zkCli.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("/treecache/{}/tree/1/3/7", c.name)), "zkCli output: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_miss_travels_two_levels_and_fills_every_node_on_the_way() {
    let c = Cluster::start(7, &[]).await;
    let (status, body) = c.put(0, "k", "v1", "?ack=root").await;
    assert_eq!(status, 201);
    let version = body["version"].as_u64().unwrap();
    let up_before = c.metric(3, "upstream_requests_total").await;
    let r = c.get(3, "k", "").await; // node 4, depth 2
    assert_eq!(
        (r.status, r.text(), r.version, r.cache.as_deref(), r.node.as_deref()),
        (200, "v1".into(), Some(version), Some("miss"), Some("4"))
    );
    assert_eq!(c.metric(3, "upstream_requests_total").await - up_before, 1.0);
    // Node 2 on the way was filled: a hit there, and again at 4.
    assert_eq!(c.get(1, "k", "").await.cache.as_deref(), Some("hit"));
    let again = c.get(3, "k", "").await;
    assert_eq!((again.cache.as_deref(), again.version), (Some("hit"), Some(version)));
    // Absent at the root: 404 through every level.
    assert_eq!(c.get(6, "nope", "").await.status, 404);
    // consistent=true (and use_cache=false) read at the root.
    assert_eq!(c.get(4, "k", "?consistent=true").await.cache.as_deref(), Some("miss"));
    assert_eq!(c.get(4, "k", "?use_cache=false").await.text(), "v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_at_one_leaf_is_seen_at_a_leaf_of_the_other_branch() {
    let c = Cluster::start(7, &[]).await;
    let (status, body) = c.put(3, "greeting", "hello", "?ack=root").await;
    assert_eq!(status, 201, "{body}");
    let r = c.get(6, "greeting", "").await;
    assert_eq!((r.status, r.text()), (200, "hello".into()));
    assert_eq!(r.version, body["version"].as_u64());
    // HEAD: the same answer's headers, no body.
    let head = c.http.head(format!("{}/kv/greeting", c.url(6))).send().await.expect("HEAD /kv");
    assert_eq!(head.status(), 200);
    let version = head.headers().get("x-version").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    assert_eq!(version, r.version);
    assert_eq!(head.bytes().await.expect("HEAD body").len(), 0);
    // ack=parent (the default) returns before the root commits; the value
    // arrives everywhere shortly after.
    let (status, _) = c.put(4, "greeting", "world", "").await;
    assert_eq!(status, 200);
    wait_until(CONVERGE, "leaf 7 sees world", || async { c.get(6, "greeting", "").await.text() == "world" }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overwrite_and_delete_reach_every_holder_and_no_non_holder() {
    let c = Cluster::start(7, &[]).await;
    c.put(0, "shared", "v1", "?ack=root").await;
    // Holders: 4 and 7 (and, by inclusion, 2 and 3). Node 6 and 5 never read it.
    for i in [3, 6] {
        assert_eq!(c.get(i, "shared", "").await.text(), "v1");
    }
    let (_, body) = c.put(4, "shared", "v2", "?ack=root").await; // written at 5: 5 holds it too
    let v2 = body["version"].as_u64().unwrap();
    for i in [1, 2, 3, 4, 6] {
        wait_until(CONVERGE, "holders get v2 by push", || async {
            let r = c.get(i, "shared", "").await;
            r.version == Some(v2) && r.cache.as_deref() == Some("hit")
        })
        .await;
    }
    assert!(!c.dump_keys(5).await.contains(&"shared".to_string()), "node 6 holds nothing it never read");
    assert_eq!(c.metric(5, "pushes_received_total").await, 0.0, "no push to a non-holder");
    let (status, _) = c.del(6, "shared", "?ack=root").await;
    assert_eq!(status, 200);
    for i in [0, 1, 2, 3, 4, 6] {
        wait_until(CONVERGE, "holders see the delete", || async { c.get(i, "shared", "").await.status == 404 }).await;
    }
    let (status, body) = c.del(6, "shared", "?ack=root").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(c.metric(5, "pushes_received_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_key_is_gone_at_every_node() {
    let c = Cluster::start(7, &[]).await;
    c.put(3, "session", "data", "?ack=root&ttl=1").await;
    for i in [0, 1, 3, 6] {
        let r = c.get(i, "session", "").await;
        assert!(r.status == 200 || r.status == 404, "{i}: {}", r.status); // may already be gone on a slow box
    }
    for i in 0..7 {
        wait_until(CONVERGE, "expiry everywhere", || async { c.get(i, "session", "").await.status == 404 }).await;
    }
    assert_eq!(c.put(0, "other", "x", "?ttl=0").await.0, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_mode_serves_nothing_older_than_depth_times_max_age() {
    let max_age = Duration::from_millis(1500);
    let c = Cluster::start(7, &["--mode", "ttl", "--max-age", "1500ms"]).await;
    let tree =
        c.http.get(format!("{}/tree", c.url(3))).send().await.unwrap().json::<serde_json::Value>().await.unwrap();
    assert_eq!(tree["mode"], "ttl");
    c.put(0, "k", "v1", "?ack=root").await;
    assert_eq!(c.get(3, "k", "").await.text(), "v1"); // node 4 (depth 2) and 2 hold v1
    let (_, body) = c.put(0, "k", "v2", "?ack=root").await;
    let committed = Instant::now();
    let v2 = body["version"].as_u64().unwrap();
    // No pushes in ttl mode.
    assert_eq!(c.metric(0, "pushes_sent_total").await, 0.0);
    // After depth x max-age nothing older than v2 may be served.
    wait_past(committed + max_age * 2 + Duration::from_millis(50)).await;
    let r = c.get(3, "k", "").await;
    assert_eq!((r.text(), r.version), ("v2".into(), Some(v2)));
    // An unchanged entry is revalidated by version, moving no body.
    let before = c.metric(3, "revalidations_unchanged_total").await;
    let read_at = Instant::now();
    wait_past(read_at + max_age + Duration::from_millis(50)).await;
    assert_eq!(c.get(3, "k", "").await.version, Some(v2));
    assert!(c.metric(3, "revalidations_unchanged_total").await > before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_that_overtakes_a_fill_is_kept_and_the_older_answer_dropped() {
    // The root holds every fill answer for 1.5 s after reading it (and
    // recording the child as holder), so the next write's push reaches the
    // child before the fill's answer does.
    let c = Cluster::start(3, &["--fault-fill-delay-ms", "1500"]).await;
    c.put(0, "race", "old", "?ack=root").await;
    let reader = {
        let http = c.http.clone();
        let url = format!("{}/kv/race", c.url(1));
        tokio::spawn(async move { http.get(url).send().await.unwrap().text().await.unwrap() })
    };
    wait_until(CONVERGE, "the fill reached the root", || async { c.metric(0, "fills_served_total").await >= 1.0 })
        .await;
    let (_, body) = c.put(0, "race", "new", "?ack=root").await;
    let newest = body["version"].as_u64().unwrap();
    assert_eq!(reader.await.unwrap(), "new", "the reader gets the pushed version, not the late fill");
    let r = c.get(1, "race", "").await;
    assert_eq!((r.text(), r.version, r.cache.as_deref()), ("new".into(), Some(newest), Some("hit")));
    // And it stays a holder: the next write reaches it by push.
    let (_, body) = c.put(0, "race", "newer", "?ack=root").await;
    let v = body["version"].as_u64();
    wait_until(CONVERGE, "next push", || async { c.get(1, "race", "").await.version == v }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_for_one_key_make_one_upstream_request() {
    let c = Cluster::start(2, &["--fault-fill-delay-ms", "500"]).await;
    c.put(0, "hot", "v", "?ack=root").await;
    let before = c.metric(1, "upstream_requests_total").await;
    let reads: Vec<_> = (0..20)
        .map(|_| {
            let http = c.http.clone();
            let url = format!("{}/kv/hot", c.url(1));
            tokio::spawn(async move { http.get(url).send().await.unwrap().text().await.unwrap() })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.unwrap(), "v");
    }
    assert_eq!(c.metric(1, "upstream_requests_total").await - before, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_node_s_children_reattach_and_stay_coherent() {
    let mut c = Cluster::start(7, &[]).await;
    c.put(0, "k", "v1", "?ack=root").await;
    assert_eq!(c.get(3, "k", "").await.text(), "v1");
    c.kill(1); // node 2: 4 and 5 are orphaned
    wait_until(Duration::from_secs(40), "4 and 5 re-attach", || async {
        let (a, b) = (c.health(3).await, c.health(4).await);
        a["parent"] != 2 && b["parent"] != 2 && a["parent"].is_u64() && b["parent"].is_u64()
    })
    .await;
    wait_until(CONVERGE, "the znodes follow", || async {
        let tree = c.zk_tree("tree").await;
        !tree.iter().any(|p| p.split('/').any(|s| s == "2")) && tree.len() == 6
    })
    .await;
    assert_eq!(c.zk_tree("live").await, ["1", "3", "4", "5", "6", "7"]);
    let (_, body) = c.put(6, "k", "v2", "?ack=root").await;
    let v2 = body["version"].as_u64();
    for i in [3, 4] {
        wait_until(CONVERGE, "moved nodes see v2", || async { c.get(i, "k", "").await.version == v2 }).await;
    }
    // SIGTERM: a clean leave re-attaches at once.
    c.term(2); // node 3
    wait_until(CONVERGE, "6 and 7 leave 3", || async {
        c.health(5).await["parent"] != 3 && c.health(6).await["parent"] != 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_are_granted_refused_and_never_reused() {
    let mut c = Cluster::start(3, &[]).await;
    let register = |body: serde_json::Value| {
        let http = c.peer_http();
        let url = format!("{}/clients/register", c.url(0));
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Id 2 is held by a live node at another URL: 409 with a JSON error.
    let (status, body) = register(serde_json::json!({"url": "http://127.0.0.1:9", "id": 2})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("id_taken")), "{body}");
    let (status, body) = register(serde_json::json!({"url": "not a url"})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_parameter")));
    let (status, _) = register(serde_json::json!({"url": "http://x", "id": "two"})).await;
    assert_eq!(status, 400);
    // Registration at a non-root node is refused.
    let r = c
        .peer_http()
        .post(format!("{}/clients/register", c.url(1)))
        .json(&serde_json::json!({"url": "http://127.0.0.1:9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    // A killed node's id is not handed to a newcomer.
    c.kill(2);
    let i = c.add_node().await;
    assert_eq!(c.id(i).await, 4);
    // A restarted node without --id gets a fresh id too.
    c.restart(i).await;
    assert_eq!(c.id(i).await, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn random_operations_converge_to_the_root() {
    use rand::{Rng, SeedableRng};
    let c = Cluster::start(7, &[]).await;
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let keys: Vec<String> = (0..16).map(|i| format!("key-{i}")).collect();
    for n in 0..400 {
        let node = rng.gen_range(0..7);
        let key = &keys[rng.gen_range(0..keys.len())];
        let ack = if rng.gen_bool(0.5) { "?ack=root" } else { "" };
        match rng.gen_range(0..10) {
            0..=4 => {
                let r = c.get(node, key, "").await;
                assert!(r.status == 200 || r.status == 404, "get {key} at {node}: {}", r.status);
            }
            5..=8 => {
                let (s, body) = c.put(node, key, &format!("v{n}"), ack).await;
                assert!(s == 200 || s == 201, "put: {s} {body}");
            }
            _ => {
                let (s, body) = c.del(node, key, ack).await;
                assert!(s == 200 || s == 404, "del: {s} {body}");
            }
        }
    }
    // Quiet: every node agrees with the root on every key.
    for key in &keys {
        wait_until(CONVERGE, "convergence", || async {
            let truth = c.get(0, key, "").await;
            for i in 1..7 {
                let r = c.get(i, key, "").await;
                if r.status != truth.status || r.body != truth.body || (r.status == 200 && r.version != truth.version) {
                    return false;
                }
            }
            true
        })
        .await;
    }
}

#[test]
fn flag_combinations_that_cannot_work_are_refused_at_start() {
    // Ttl mode without its max-age, and a group or a replication tail on a
    // node that is not a root, stop the node with a clear error before it
    // serves. (A memory bound on a root is accepted since issue 19: it
    // refuses writes with 507 root_full, tests/bounded.rs.)
    for (flags, says) in [(&["--mode", "ttl"][..], "--max-age"), (&["--group", "1"][..], "--group")] {
        let out = common::output_within(
            std::process::Command::new(common::BIN)
                .args([
                    "node",
                    "--zk",
                    "127.0.0.1:1",
                    "--listen",
                    "127.0.0.1:0",
                    "--cluster-secret",
                    "0123456789abcdef",
                ])
                .args(flags),
            Duration::from_secs(30),
        );
        assert!(!out.status.success(), "{flags:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{flags:?}: {err}");
    }
}
