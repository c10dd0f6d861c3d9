//! Security and abuse limits against real processes (docs/security.md):
//! the cluster secret keeps strangers out of the tree, ZooKeeper's digest
//! ACL keeps them out of the znodes, request ids follow a request through
//! every node it reaches, and no client (half-open connections, huge heads,
//! a burst of misses) stops a node serving the others.
//!
//! Index i in a cluster is node id i + 1 (nodes start one by one, fanout 2).

mod common;

use std::time::Duration;

use common::{wait_until, Cluster, Opts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(30);
const ZKCLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";

async fn health_ok(c: &Cluster, i: usize) -> bool {
    // A fresh client each time: no pooled connection to hide behind.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    http.get(format!("{}/health", c.url(i))).send().await.is_ok_and(|r| r.status() == 200)
}

fn addr(c: &Cluster, i: usize) -> String {
    c.url(i).trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_a_wrong_secret_does_not_join_and_says_why() {
    let mut c = Cluster::start(2, &[]).await;
    let stranger = c.add_node_unwaited(&["--cluster-secret", "not-the-cluster-secret-at-all"]);
    wait_until(PATIENCE, "the stranger to log that the root refused it", || async {
        c.log(stranger).contains("the root") && c.log(stranger).contains("refused our cluster secret")
    })
    .await;
    let resp = c.http.get(format!("{}/health", c.url(stranger))).send().await.expect("GET /health");
    assert_eq!(resp.status(), 503, "the stranger is not registered");
    // The tree did not change: the root has one child, ZooKeeper two nodes.
    assert_eq!(c.health(0).await["children"].as_array().map(Vec::len), Some(1));
    assert_eq!(c.zk_tree("tree").await, ["1", "1/2"]);
    assert_eq!(c.zk_tree("live").await, ["1", "2"]);
    // A member still joins.
    let i = c.add_node().await;
    assert_eq!(c.id(i).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_with_a_wrong_secret_says_the_secret_does_not_match_and_exits() {
    let mut c = Cluster::start(2, &[]).await;
    let stranger = c.add_node_unwaited(&["--root", "--cluster-secret", "not-the-cluster-secret-at-all"]);
    let (code, log) = c.wait_exit(stranger).await;
    assert_eq!(code, Some(78), "exits as a configuration error (EX_CONFIG): {log}");
    let fatal = log.lines().find(|l| l.contains("FATAL")).unwrap_or_else(|| panic!("no FATAL line: {log}"));
    assert!(fatal.contains("does not match") && fatal.contains(&c.name), "{fatal}");
    assert!(fatal.contains("--cluster-secret-file"), "says what to do: {fatal}");
    // Nothing changed.
    assert_eq!(c.zk_tree("tree").await, ["1", "1/2"]);
    assert_eq!(c.health(0).await["role"], "root");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_gets_401_from_every_internal_route_of_a_running_node() {
    let c = Cluster::start(2, &[]).await;
    c.put(0, "k", "v", "?ack=root").await;
    let http = reqwest::Client::new();
    for (method, path) in [
        ("POST", "/clients/register"),
        ("GET", "/internal/fill/k?child=2"),
        ("POST", "/internal/write?child=2&ack=root"),
        ("POST", "/internal/push"),
        ("POST", "/internal/topology"),
        ("POST", "/internal/clear"),
        ("POST", "/internal/leave"),
    ] {
        for i in [0, 1] {
            let req = http.request(method.parse().unwrap(), format!("{}{path}", c.url(i)));
            let req = req.header("x-treecache-secret", "wrong-secret-0123456789").body(r#"{"id": 2}"#);
            let resp = req.send().await.expect("send");
            assert_eq!(resp.status(), 401, "{method} {path} at node {i}");
            let body: serde_json::Value = resp.json().await.expect("JSON error");
            assert_eq!(body["code"], "unauthorized", "{body}");
        }
    }
    // Nothing changed: node 2 is still in place and still reads the value.
    assert_eq!(c.health(0).await["children"].as_array().map(Vec::len), Some(1));
    assert_eq!(c.get(1, "k", "").await.text(), "v");
    // With the secret, the same route works.
    let resp = c.peer_http().get(format!("{}/internal/fill/k?child=2", c.url(0))).send().await.expect("fill");
    assert_eq!(resp.status(), 200);
}

/// Runs zkCli.sh against the cluster's ZooKeeper; its whole output.
async fn zkcli(c: &Cluster, args: &[&str]) -> String {
    let out = tokio::process::Command::new(ZKCLI)
        .arg("-server")
        .arg(c.zk.addr())
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {ZKCLI} (Debian's zookeeper package): {e}"));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn anyone_reads_the_znodes_but_only_nodes_change_them() {
    let c = Cluster::start(2, &[]).await;
    let base = format!("/treecache/{}", c.name);
    wait_until(PATIENCE, "the tree in ZooKeeper", || async { c.zk_tree("tree").await == ["1", "1/2"] }).await;

    // zkCli.sh without credentials: ls -R and get work...
    let ls = zkcli(&c, &["ls", "-R", &format!("{base}/tree")]).await;
    assert!(ls.contains(&format!("{base}/tree/1/2")), "{ls}");
    let get = zkcli(&c, &["get", &format!("{base}/tree/1")]).await;
    assert!(get.contains("\"url\""), "{get}");
    // ...set, create and delete do not.
    for args in [
        vec!["set", &format!("{base}/tree/1") as &str, "hijacked"],
        vec!["create", &format!("{base}/tree/1/99"), "{}"],
        vec!["delete", &format!("{base}/live/2")],
    ] {
        let out = zkcli(&c, &args).await;
        assert!(out.contains("Insufficient permission"), "zkCli {args:?}: {out}");
    }

    // The same through a client library session: NoAuth without the digest,
    // and with a wrong one.
    let anon = c.zk.client().await;
    let wrong = zookeeper_client::Client::connector()
        .with_auth("digest", b"treecache:not-the-cluster-secret")
        .connect(&c.zk.addr())
        .await
        .expect("session");
    for zk in [&anon, &wrong] {
        let (data, _) = zk.get_data(&format!("{base}/tree/1")).await.expect("anyone reads");
        assert!(String::from_utf8_lossy(&data).contains("\"id\""));
        let set = zk.set_data(&format!("{base}/tree/1"), b"x", None).await;
        assert!(matches!(set, Err(zookeeper_client::Error::NoAuth)), "{set:?}");
        let opts = zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
        let create = zk.create(&format!("{base}/tree/1/2/9"), b"{}", &opts).await;
        assert!(matches!(create, Err(zookeeper_client::Error::NoAuth)), "{create:?}");
        for path in [format!("{base}/live/2"), format!("{base}/groups/0/root"), format!("{base}/tree/1/2")] {
            let del = zk.delete(&path, None).await;
            assert!(matches!(del, Err(zookeeper_client::Error::NoAuth)), "delete {path}: {del:?}");
        }
    }
    // Every znode treecache made carries the digest ACL.
    for path in [format!("{base}/tree/1/2"), format!("{base}/live/2"), format!("{base}/groups/0/root"), base.clone()] {
        let (acls, _) = anon.get_acl(&path).await.expect("get acl");
        let schemes: Vec<&str> = acls.iter().map(|a| a.scheme()).collect();
        assert_eq!(schemes, ["world", "digest"], "{path}");
    }
    // And nothing changed.
    assert_eq!(c.zk_tree("tree").await, ["1", "1/2"]);
    assert_eq!(c.zk_tree("live").await, ["1", "2"]);
}

/// The lines of a log that mention `id`.
fn lines_with(log: &str, id: &str) -> Vec<String> {
    log.lines().filter(|l| l.contains(id)).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_miss_carries_its_request_id_through_every_node_it_reaches() {
    // 1 root, 2 and 3 under it, 4 under 2: a miss at 4 goes to 2, then 1.
    // The root logs text, the others JSON.
    let c = Cluster::start_opts(Opts {
        nodes: 4,
        node_args: vec!["--log-format".into(), "json".into()],
        rust_log: Some("info,treecache::access=debug"),
        ..Opts::default()
    })
    .await;
    c.put(0, "traced", "v", "?ack=root").await;
    let id = "trace-me-4711";
    let resp =
        c.http.get(format!("{}/kv/traced", c.url(3))).header("x-request-id", id).send().await.expect("GET at node 4");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some(id));
    assert_eq!(resp.headers().get("x-cache").and_then(|v| v.to_str().ok()), Some("miss"));
    // Node 4 logged the client's GET, node 2 and the root the fills it caused.
    for (i, path) in [(3, "GET /kv/traced"), (1, "GET /internal/fill/traced"), (0, "GET /internal/fill/traced")] {
        wait_until(PATIENCE, &format!("node {} to log {path} with the id", i + 1), || async {
            lines_with(&c.log(i), id).iter().any(|l| l.contains(path))
        })
        .await;
    }
    for line in lines_with(&c.log(3), id).iter().chain(&lines_with(&c.log(1), id)) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["request_id"], id, "{line}");
        for field in ["ts", "level", "target", "msg"] {
            assert!(v[field].is_string(), "{field} in {line}");
        }
    }
    assert!(lines_with(&c.log(0), id).iter().all(|l| l.contains(&format!("req={id}"))), "{}", c.log(0));
    // A request without an id gets one, also in the logs.
    let resp = c.http.get(format!("{}/kv/traced", c.url(2))).send().await.expect("GET at node 3");
    let made = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).expect("an id").to_string();
    wait_until(PATIENCE, "the made id in the root's log", || async { !lines_with(&c.log(0), &made).is_empty() }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_half_open_connections_do_not_stop_health() {
    let c = Cluster::start(2, &[]).await;
    c.put(0, "k", "v", "?ack=root").await;
    let mut held = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(addr(&c, 1)).await.expect("connect");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Half: ").await.expect("half a request");
        held.push(s);
    }
    assert!(health_ok(&c, 1).await, "/health answers beside 1000 half-open connections");
    assert_eq!(c.get(1, "k", "").await.text(), "v");
    // The node hangs up on them (408, then close) without our help.
    let mut first = held.swap_remove(0);
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, first.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the node closes a connection whose head never completes");
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(health_ok(&c, 1).await);
}

/// Sockets the node's process has open.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_max_connections_wait_and_the_node_keeps_serving() {
    let c = Cluster::start(1, &["--max-connections", "20"]).await;
    let pid = c.pid(0).expect("root runs");
    let before = sockets_of(pid);
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(TcpStream::connect(addr(&c, 0)).await.expect("connect (the backlog takes it)"));
    }
    // The node accepts at most 20 of them at a time (10 per worker); the
    // others wait in the backlog. Idle ones are hung up on (no request
    // head within 5 s), so /health gets its turn.
    let peak = std::sync::atomic::AtomicUsize::new(0);
    wait_until(Duration::from_secs(120), "/health beside 200 idle connections", || async {
        let open = sockets_of(pid).saturating_sub(before);
        assert!(open <= 20 + 2, "{open} client sockets open, limit 20");
        peak.fetch_max(open, std::sync::atomic::Ordering::Relaxed);
        health_ok(&c, 0).await
    })
    .await;
    let peak = peak.into_inner();
    assert!(peak >= 10, "the node took connections up to its limit (peak {peak})");
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_and_bodies_are_refused_and_the_node_keeps_serving() {
    let c = Cluster::start(1, &["--max-value-bytes", "1KiB"]).await;
    let mut s = TcpStream::connect(addr(&c, 0)).await.expect("connect");
    let huge = "x".repeat(200 * 1024);
    let head = format!("GET /health HTTP/1.1\r\nHost: h\r\nX-Huge: {huge}\r\n\r\n");
    // The node may hang up before it has read all of it.
    let _ = s.write_all(head.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf)).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 431"), "{}", String::from_utf8_lossy(&buf));
    let (status, body) = c.put(0, "big", &"v".repeat(2048), "").await;
    assert_eq!((status, body["code"].as_str()), (413, Some("value_too_large")));
    assert_eq!(c.get(0, "big", "").await.status, 404, "nothing stored");
    assert!(health_ok(&c, 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn past_max_upstream_requests_a_miss_gets_503_overloaded_and_hits_still_serve() {
    // Every fill the root answers takes 1.5 s; node 2 may have one in flight.
    let c = Cluster::start_opts(Opts {
        nodes: 2,
        root_args: vec!["--fault-fill-delay-ms".into(), "1500".into()],
        node_args: vec!["--max-upstream-requests".into(), "1".into()],
        ..Opts::default()
    })
    .await;
    for k in 0..200 {
        c.put(0, &format!("k{k}"), "v", "?ack=root").await;
    }
    c.put(0, "hot", "h", "?ack=root").await;
    assert_eq!(c.get(1, "hot", "").await.text(), "h");
    let mut next = 0;
    let mut overloaded = None;
    while overloaded.is_none() {
        assert!(next < 200, "no miss was ever refused with one upstream request allowed");
        // Eight misses at once: one takes the permit, the others find none.
        let burst: Vec<_> = (next..next + 8)
            .map(|k| {
                let url = format!("{}/kv/k{k}", c.url(1));
                let http = c.http.clone();
                tokio::spawn(async move {
                    let r = http.get(url).send().await.expect("GET");
                    let retry = r.headers().get("retry-after").is_some();
                    (r.status().as_u16(), retry, r.text().await.unwrap_or_default())
                })
            })
            .collect();
        next += 8;
        // A hit needs no upstream request: served while the fill is out.
        let hit = c.get(1, "hot", "").await;
        assert_eq!((hit.status, hit.cache.as_deref()), (200, Some("hit")));
        for task in burst {
            let (status, retry, body) = task.await.expect("task");
            match status {
                200 => assert_eq!(body, "v"),
                503 => {
                    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
                    assert_eq!(v["code"], "overloaded", "{v}");
                    assert!(retry, "503 carries Retry-After");
                    overloaded = Some(v);
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
    }
    // The permit comes back: a miss after the burst is served.
    assert_eq!(c.get(1, "k199", "").await.text(), "v");
    assert!(health_ok(&c, 1).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_api_token_kv_needs_it_and_the_cli_sends_it() {
    let token = ["--api-token", "s3cret-token"];
    let c = Cluster::start_with(2, &token, &token).await;
    let cli = |args: &[&str], env_token: Option<&str>| {
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.args(args).env_remove("TREECACHE_API_TOKEN");
        if let Some(t) = env_token {
            cmd.env("TREECACHE_API_TOKEN", t);
        }
        cmd.output().expect("run treecache")
    };
    let node = c.url(1);
    let out = cli(&["put", "k", "v", "--ack", "root", "--node", &node], None);
    assert_eq!(out.status.code(), Some(5), "exit 5: the API token was refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&["put", "k", "v", "--ack", "root", "--node", &node, "--api-token", "s3cret-token"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&["get", "k", "--node", &node], Some("s3cret-token"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v", "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&["get", "k", "--node", &node], Some("wrong"));
    assert!(!out.status.success());
    // Without the token: 401 on /kv, /metrics, /dump; /health stays open.
    for path in ["/kv/k", "/metrics", "/dump"] {
        let resp = c.http.get(format!("{node}{path}")).send().await.expect("GET");
        assert_eq!(resp.status(), 401, "{path}");
    }
    assert!(health_ok(&c, 1).await);
    // `treecache tree` says why it cannot count keys, and counts them with
    // the token from the flag or the environment.
    let zk = c.zk.addr();
    let tree = ["tree", "--zk", zk.as_str(), "--cluster", c.name.as_str()];
    let drawn = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let without = drawn(cli(&tree, None));
    assert!(without.contains("? keys (401: --api-token)"), "{without}");
    let with_env = drawn(cli(&tree, Some("s3cret-token")));
    assert!(with_env.contains("alive, depth 0, 1 key"), "{with_env}");
    assert!(!with_env.contains("? keys"), "{with_env}");
    let with_flag = drawn(cli(&[&tree[..], &["--api-token", "s3cret-token"]].concat(), None));
    assert!(!with_flag.contains("? keys"), "{with_flag}");
    // A consistent read at node 2 goes up the fill chain (internal routes:
    // the secret, not the token) and is answered.
    let resp = c
        .http
        .get(format!("{node}/kv/k?consistent=true"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .expect("GET consistent");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "v");
}
