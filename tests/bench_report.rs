//! `treecache bench` against a real tree: every scenario runs for a second
//! or two (or a few hundred requests) and its report must be complete and
//! consistent: counts add up, no errors, the hit ratio the scenario implies.
//! Never a timing assertion: how fast is for docs/benchmarks.md.
//!
//! Seven nodes, fanout 2: 1 is the root; 2, 3 at depth 1; 4..7 at depth 2.
//! `policy` runs in process, beside a private redis-server.

mod common;

use std::time::Duration;

use common::{wait_until, Cluster, BIN};
use treecache::cli::bench::report::Report;

/// Runs `treecache bench ARGS --json` and parses its report. Stdout is a
/// pipe here, so no progress bar may appear on either stream.
async fn bench(args: &[&str]) -> Report {
    let out = tokio::process::Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .await
        .expect("run treecache bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "treecache bench {args:?} failed: {stderr}\n{stdout}");
    assert!(!stderr.contains("req/s"), "a progress bar was drawn without a terminal: {stderr}");
    let report: Report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"));
    report.check().unwrap_or_else(|e| panic!("inconsistent report for {args:?}: {e}\n{stdout}"));
    assert!(!report.notes.iter().any(|n| n.contains("INCONSISTENT")), "{:?}", report.notes);
    report
}

fn no_errors(r: &Report) {
    assert!(r.total.requests > 0, "{}: no requests", r.scenario);
    assert_eq!(r.total.ok, r.total.requests, "{}: errors {:?}", r.scenario, r.total.errors);
    assert!(r.total.errors.is_empty());
    assert!(r.total.throughput_rps > 0.0);
    let l = &r.total.latency;
    assert!(l.count == r.total.ok && l.max_us > 0 && l.p50_us <= l.p999_us);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_load_scenario_reports_complete_consistent_figures() {
    let c = Cluster::start(7, &[]).await;
    let root = c.url(0);
    let leaf = c.url(6); // node 7, depth 2

    // hit: keys written at the root, read once at the leaf, then only hits.
    let hit = bench(&["hit", "--root", &root, "-c", "4", "-d", "1s", "--keys", "200", "--popularity", "zipfian"]).await;
    no_errors(&hit);
    assert_eq!(hit.phases.len(), 1);
    assert_eq!(hit.total.hits, hit.total.ok, "every read is a hit");
    assert_eq!(hit.total.hit_ratio, Some(1.0));
    assert_eq!(hit.total.ops.keys().collect::<Vec<_>>(), ["get"]);
    assert_eq!(hit.phases[0].targets, [c.url(3)], "one target: the deepest node, lowest id");
    assert_eq!(hit.settings.theta, Some(0.99));

    // miss: one node per depth, cold keys; the root answers hits, below it every read misses.
    let miss = bench(&["miss", "--root", &root, "-c", "4", "-n", "150"]).await;
    no_errors(&miss);
    let levels = miss.levels.as_ref().expect("levels");
    assert_eq!(levels.iter().map(|l| (l.depth, l.node_id)).collect::<Vec<_>>(), [(0, 1), (1, 2), (2, 4)]);
    assert_eq!(levels[0].hit_ratio, Some(1.0));
    assert_eq!(levels[1].hit_ratio, Some(0.0));
    assert_eq!(levels[2].hit_ratio, Some(0.0));
    assert!(levels[0].extra_p50_us.is_none() && levels[2].extra_p50_us.is_some());
    assert!(miss.per_level.is_some());
    assert_eq!(miss.phases.len(), 3);
    assert!(miss.phases.iter().all(|p| p.requests == 150 && p.ok == 150));
    assert_eq!((miss.total.hits, miss.total.misses), (150, 300));

    // write, both acks, at a leaf given by --node: PUTs only, no reads.
    for ack in ["parent", "root"] {
        let w = bench(&["write", "--node", &leaf, "--ack", ack, "-c", "4", "-d", "1s", "--keys", "100"]).await;
        no_errors(&w);
        assert_eq!(w.total.ops.keys().collect::<Vec<_>>(), ["put"]);
        assert_eq!(w.total.hit_ratio, None);
        assert_eq!(w.settings.ack.as_deref(), Some(ack));
        assert_eq!(w.phases[0].targets, std::slice::from_ref(&leaf));
    }

    // mixed, YCSB A over every leaf: reads and writes both happen, every read hits.
    let mixed = bench(&[
        "mixed",
        "--root",
        &root,
        "--targets",
        "leaves",
        "--ycsb",
        "a",
        "-c",
        "4",
        "-n",
        "600",
        "--keys",
        "100",
    ])
    .await;
    no_errors(&mixed);
    assert_eq!(mixed.total.requests, 600);
    let gets = mixed.total.ops["get"].ok;
    assert!(gets > 0 && mixed.total.ops["put"].ok > 0, "{:?}", mixed.total.ops);
    assert_eq!(mixed.total.hits + mixed.total.misses, gets);
    assert_eq!(mixed.settings.read_pct, Some(50));
    assert_eq!(mixed.phases[0].targets.len(), 4);

    // converge: writes at the deepest leaf reach all seven holders.
    let conv = bench(&["converge", "--root", &root, "-c", "2", "-d", "1s", "--rate", "40", "--keys", "20"]).await;
    no_errors(&conv);
    let cv = conv.converge.as_ref().expect("converge section");
    assert_eq!(cv.holders, 7);
    assert_eq!(cv.writes, conv.total.ok);
    assert_eq!((cv.converged, cv.not_converged), (cv.writes, 0));
    assert_eq!(cv.per_holder.count, 7 * cv.converged);
    assert_eq!(conv.settings.loop_kind, "open");
    // The same read off the nodes' push-lag histograms: the six below the
    // root had each write pushed (coalescing may merge two of one key).
    let lag = cv.push_lag.as_ref().expect("push lag from every node's /metrics");
    assert_eq!(lag.nodes, 7);
    assert!(lag.updates > 0 && lag.updates <= 6 * cv.writes, "{lag:?} for {} writes", cv.writes);
    assert!(lag.p50_us <= lag.p90_us && lag.p90_us <= lag.p99_us, "{lag:?}");
    // The same scrapes give every node's CPU time: summed over all seven.
    assert_eq!(cv.processes, 7);
    assert!(cv.cpu_us_per_write.is_some_and(|us| us > 0.0), "{cv:?}");
    // Without polling, the histograms alone.
    let quiet = bench(&["converge", "--root", &root, "--no-poll", "-d", "1s", "--rate", "40", "--keys", "20"]).await;
    no_errors(&quiet);
    let qv = quiet.converge.as_ref().expect("converge section");
    assert!(!qv.polled && qv.polls == 0 && qv.converged == 0);
    assert!(qv.push_lag.as_ref().is_some_and(|l| l.updates > 0 && l.updates <= 6 * qv.writes), "{qv:?}");
    assert!(qv.processes == 7 && qv.cpu_us_per_write.is_some_and(|us| us > 0.0), "{qv:?}");

    // url, a baseline: any URL; no cache header, so no hit ratio.
    let url = bench(&["url", "--url", &format!("{root}/health"), "-c", "2", "-n", "100"]).await;
    no_errors(&url);
    assert_eq!((url.total.requests, url.total.hit_ratio), (100, None));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_text_report_has_every_figure() {
    let c = Cluster::start(3, &[]).await;
    let out = tokio::process::Command::new(BIN)
        .args(["bench", "hit", "--root", &c.url(0), "-c", "2", "-n", "300", "--keys", "50"])
        .output()
        .await
        .expect("run treecache bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for want in
        ["requests   300", "throughput", "p50", "p90", "p99 ", "p99.9", "max", "hit ratio  100.00%", "errors     none"]
    {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_starts_registers_measures_and_stops_its_nodes() {
    let zk = treecache::zkserver::LocalZk::start().await.expect("start ZooKeeper");
    let r = bench(&["scale", "--nodes", "5", "--zk", &zk.addr()]).await;
    let s = r.scale.as_ref().expect("scale section");
    assert_eq!((s.nodes, s.registered, s.max_depth), (5, 5, 2), "notes: {:?}", r.notes);
    assert!(s.root_ready_ms > 0.0 && s.all_registered_ms >= s.root_ready_ms);
    assert!(s.rss_kib_min > 0 && s.rss_kib_min <= s.rss_kib_p50 && s.rss_kib_p50 <= s.rss_kib_max);
    // Shared pages count in RSS but only in part in PSS; private is part of both.
    assert!(s.pss_kib_p50 > 0 && s.pss_kib_p50 <= s.pss_kib_max && s.pss_kib_max <= s.rss_kib_max);
    assert!(s.private_kib_p50 > 0 && s.private_kib_p50 <= s.private_kib_max && s.private_kib_max <= s.pss_kib_max);
    // The nodes are gone: none of them is still registered in ZooKeeper.
    let client = zookeeper_client::Client::connect(&zk.addr()).await.expect("zk connect");
    wait_until(Duration::from_secs(30), "the scale nodes to leave ZooKeeper", || async {
        let mut live = Vec::new();
        for cl in client.list_children("/treecache").await.unwrap_or_default() {
            live.extend(client.list_children(&format!("/treecache/{cl}/live")).await.unwrap_or_default());
        }
        live.is_empty()
    })
    .await;
}

/// A private redis-server on a free loopback port, killed on drop.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/install-test-deps.sh installs it)");
        let redis = Redis { child, port };
        wait_until(Duration::from_secs(10), "redis-server to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        redis
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_runs_the_store_beside_lru_the_simulation_and_redis_on_one_trace() {
    let redis = Redis::start().await;
    let addr = format!("127.0.0.1:{}", redis.port);
    let out = tokio::process::Command::new(BIN)
        .args(["bench", "policy", "--keys", "5000", "--requests", "40000", "--redis", &addr])
        .output()
        .await
        .expect("run treecache bench policy");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    // One row per workload: hit ratios of the store, exact LRU, the
    // S3-FIFO simulation and Redis, then throughput of the store, the LRU
    // and Redis.
    for workload in ["zipfian", "scan-mix"] {
        let row: Vec<f64> = text
            .lines()
            .find(|l| l.starts_with(&format!("{workload} ")))
            .unwrap_or_else(|| panic!("no {workload} row: {text}"))
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or_else(|_| panic!("{workload}: {f:?} is not a number: {text}")))
            .collect();
        assert_eq!(row.len(), 7, "{workload}: {text}");
        assert!(row[..4].iter().all(|h| *h > 0.0 && *h < 100.0), "{workload} hit ratios: {text}");
        assert!(row[4..].iter().all(|ops| *ops > 0.0), "{workload} throughput: {text}");
        let held = text.lines().find(|l| l.starts_with(&format!("{workload}: treecache held "))).unwrap_or("");
        assert!(held.contains("B charged per entry") && held.contains("; Redis "), "{workload}: {text}");
    }
    assert!(text.contains("memory per entry filled (no eviction): "), "{text}");
    // The bench flushes what it wrote and lifts the limit it set.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.expect("connect to redis");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"*1\r\n$6\r\nDBSIZE\r\n").await.unwrap();
    let mut reply = [0u8; 16];
    let n = conn.read(&mut reply).await.unwrap();
    assert_eq!(&reply[..n], b":0\r\n");
}

#[tokio::test]
async fn bad_flags_fail_with_a_clear_message_and_send_nothing() {
    for (args, want) in [
        (vec!["hit"], "needs --root URL or --node URL"),
        (vec!["hit", "--root", "http://127.0.0.1:1", "-c", "0"], "--connections 0"),
        (vec!["mixed", "--root", "http://127.0.0.1:1", "--read-pct", "50", "--ycsb", "b"], "not both"),
        (vec!["write", "--node", "127.0.0.1:1"], "not an http:// URL"),
        (vec!["policy", "--cache-pct", "0"], "--cache-pct"),
        (vec!["policy", "--keys", "10"], "--keys of at least 100"),
        (vec!["policy", "--keys", "1000", "--redis", "nonsense"], "HOST:PORT"),
    ] {
        let out = tokio::process::Command::new(BIN).arg("bench").args(&args).output().await.expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
