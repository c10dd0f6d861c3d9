//! `/metrics` of live nodes, read by a real parser: the Prometheus
//! project's own OpenMetrics parser (`prometheus_client` on PyPI, installed
//! by scripts/install-test-deps.sh in `.venv-tests/`), which refuses text
//! that is not valid OpenMetrics. Then the histograms move as requests
//! are served: counts, never timings.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_until, Cluster};
use serde::Deserialize;

const PATIENCE: Duration = Duration::from_secs(20);

/// Reads the text with `prometheus_client.openmetrics.parser` and prints
/// every sample as JSON; a parse error is an exception (exit 1).
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "kind": family.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

#[derive(Debug, Deserialize)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug)]
struct Scrape(Vec<Sample>);

impl Scrape {
    /// The sample `name` with exactly `labels`; 0 when absent (a labelled
    /// series appears on its first observation).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map_or(0.0, |s| s.value)
    }

    fn kind(&self, family: &str) -> Option<&str> {
        self.0.iter().find(|s| s.family == family).map(|s| s.kind.as_str())
    }
}

fn python() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-tests/bin/python");
    assert!(bin.exists(), "{} is missing: run scripts/install-test-deps.sh", bin.display());
    bin
}

/// Parses OpenMetrics `text` with the Prometheus project's parser.
fn parse(text: &str) -> Result<Scrape, String> {
    use std::io::Write;
    let mut child = Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to the parser");
    let out = child.wait_with_output().expect("parser output");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(Scrape(serde_json::from_slice(&out.stdout).expect("the parser's JSON")))
}

/// GET /metrics of node `i`, checked for its content type and parsed.
async fn scrape(c: &Cluster, i: usize) -> Scrape {
    let resp = c.http.get(format!("{}/metrics", c.url(i))).send().await.expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let kind = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(kind.starts_with("application/openmetrics-text; version=1.0.0"), "content type {kind}");
    let text = resp.text().await.expect("/metrics body");
    parse(&text).unwrap_or_else(|e| panic!("node {i}'s /metrics is not valid OpenMetrics: {e}\n{text}"))
}

#[test]
fn the_parser_refuses_what_is_not_openmetrics() {
    let counter_without_eof = "# TYPE treecache_hits counter\ntreecache_hits_total 1\n";
    assert!(parse(counter_without_eof).unwrap_err().contains("EOF"));
    let decreasing_buckets =
        "# TYPE h histogram\nh_bucket{le=\"1.0\"} 5\nh_bucket{le=\"+Inf\"} 3\nh_count 3\nh_sum 1.0\n# EOF\n";
    assert!(parse(decreasing_buckets).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn live_metrics_parse_and_their_histograms_count_what_was_served() {
    // 0 root; 1 and 2 under it; 3 under 1: a leaf two hops down.
    let c = Cluster::start(4, &[]).await;
    let leaf = 3;
    assert_eq!(c.health(leaf).await["depth"], 2, "node 4 hangs under node 2");
    c.put(0, "m", "v1", "?ack=root").await;
    let (root_before, leaf_before) = (scrape(&c, 0).await, scrape(&c, leaf).await);

    // A miss at the leaf (one fill at each hop), then hits.
    assert_eq!(c.get(leaf, "m", "").await.cache.as_deref(), Some("miss"));
    for _ in 0..5 {
        assert_eq!(c.get(leaf, "m", "").await.cache.as_deref(), Some("hit"));
    }
    // A new version: the root pushes it down to node 2, node 2 to the leaf.
    let (status, _) = c.put(0, "m", "v2", "?ack=root").await;
    assert_eq!(status, 200);
    wait_until(PATIENCE, "the leaf's push lag to count the push", || async {
        scrape(&c, leaf).await.value("treecache_push_lag_seconds_count", &[]) >= 1.0
    })
    .await;

    let (root, at_leaf) = (scrape(&c, 0).await, scrape(&c, leaf).await);
    let moved = |after: &Scrape, before: &Scrape, name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let requests = "treecache_request_duration_seconds_count";
    let kv_read = |outcome| [("route", "kv_read"), ("outcome", outcome)];
    assert_eq!(moved(&at_leaf, &leaf_before, requests, &kv_read("hit")), 5.0);
    assert_eq!(moved(&at_leaf, &leaf_before, requests, &kv_read("miss")), 1.0);
    assert_eq!(
        moved(
            &at_leaf,
            &leaf_before,
            "treecache_upstream_duration_seconds_count",
            &[("request", "fill"), ("outcome", "ok")]
        ),
        1.0,
        "one fill went up from the leaf"
    );
    assert_eq!(moved(&root, &root_before, requests, &[("route", "kv_write"), ("outcome", "ok")]), 1.0);
    assert!(moved(&root, &root_before, requests, &[("route", "fill"), ("outcome", "ok")]) >= 1.0, "node 2's fill");
    assert_eq!(moved(&root, &root_before, requests, &[("route", "metrics"), ("outcome", "ok")]), 1.0);
    assert_eq!(at_leaf.value("treecache_push_lag_seconds_count", &[]), 1.0, "the one push of v2");
    assert!(scrape(&c, 1).await.value("treecache_push_lag_seconds_count", &[]) >= 1.0, "node 2 had v2 pushed too");

    // A histogram's buckets are cumulative and end at its count.
    let hits = |le: &str| {
        at_leaf
            .value("treecache_request_duration_seconds_bucket", &[("route", "kv_read"), ("outcome", "hit"), ("le", le)])
    };
    assert!(hits("0.00001") <= hits("0.001") && hits("0.001") <= hits("+Inf"));
    assert_eq!(hits("+Inf"), at_leaf.value(requests, &kv_read("hit")));

    // The gauges: state of the node and of its ZooKeeper session.
    assert_eq!(root.kind("treecache_request_duration_seconds"), Some("histogram"));
    assert_eq!(root.kind("treecache_hits"), Some("counter"));
    assert_eq!(root.value("treecache_insync_roots", &[]), 1.0);
    assert_eq!(at_leaf.value("treecache_insync_roots", &[]), 0.0);
    assert_eq!(at_leaf.value("treecache_depth", &[]), 2.0);
    assert_eq!(at_leaf.value("treecache_entries", &[]), 1.0);
    assert_eq!(at_leaf.value("treecache_zk_session_state", &[("state", "sync_connected")]), 1.0);
    assert_eq!(at_leaf.value("treecache_zk_session_state", &[("state", "expired")]), 0.0);
    assert_eq!(at_leaf.value("treecache_hits_total", &[]) - leaf_before.value("treecache_hits_total", &[]), 5.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_or_unrouted_request_is_counted_by_its_route_without_its_path() {
    let c = Cluster::start(1, &[]).await;
    let before = scrape(&c, 0).await;
    let push = c.http.post(format!("{}/internal/push", c.url(0))).body("x").send().await.expect("POST push");
    assert_eq!(push.status(), 401, "no cluster secret");
    let nowhere = c.http.get(format!("{}/no/such/{}", c.url(0), "x".repeat(40))).send().await.expect("GET");
    assert_eq!(nowhere.status(), 404);
    let after = scrape(&c, 0).await;
    let requests = "treecache_request_duration_seconds_count";
    let moved = |labels: &[(&str, &str)]| after.value(requests, labels) - before.value(requests, labels);
    assert_eq!(moved(&[("route", "push"), ("outcome", "client_error")]), 1.0);
    assert_eq!(moved(&[("route", "other"), ("outcome", "not_found")]), 1.0);
    let routes: std::collections::BTreeSet<&str> = after
        .0
        .iter()
        .filter(|s| s.family == "treecache_request_duration_seconds")
        .filter_map(|s| s.labels.get("route").map(String::as_str))
        .collect();
    assert!(routes.iter().all(|r| treecache::metrics::ROUTE_LABELS.contains(r)), "{routes:?}");
}
