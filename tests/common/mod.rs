//! The test harness: a real ZooKeeper (`treecache::zkserver::LocalZk`) and
//! real `treecache node` processes on loopback. Readiness is polled
//! (`/health`, or any condition through `wait_until`), never slept for.
//! Dropping a `Cluster` kills and reaps every process; if the test is
//! failing, each node's log tail is printed first.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use treecache::cli::local::{spawn_node, stop, wait_healthy};
use treecache::zkserver::{free_port, LocalZk};

pub const BIN: &str = env!("CARGO_BIN_EXE_treecache");
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `probe` every 50 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until wall-clock `at` has passed (for bounds that are about time
/// itself, such as ttl mode's max-age). Waiting longer only makes the
/// checked property easier to hold, so this cannot flake.
pub async fn wait_past(at: Instant) {
    wait_until(Duration::from_secs(600), "the clock", || async { Instant::now() >= at }).await;
}

/// An answer to GET /kv.
#[derive(Debug)]
pub struct Read {
    pub status: u16,
    pub version: Option<u64>,
    pub cache: Option<String>,
    pub node: Option<String>,
    pub body: Bytes,
}

impl Read {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct NodeProc {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
}

pub struct Cluster {
    pub zk: LocalZk,
    pub name: String,
    nodes: Vec<NodeProc>,
    pub http: reqwest::Client,
    dir: tempfile::TempDir,
    node_args: Vec<String>,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// A root plus `n - 1` nodes, started one by one so ids are 1..=n and
    /// placement is deterministic. `root_args` go to the root only.
    pub async fn start(n: usize, root_args: &[&str]) -> Cluster {
        Self::start_with(n, root_args, &[]).await
    }

    pub async fn start_with(n: usize, root_args: &[&str], node_args: &[&str]) -> Cluster {
        let zk = LocalZk::start().await.expect("start ZooKeeper");
        let name = format!("t{}-{}", std::process::id(), CLUSTERS.fetch_add(1, Ordering::Relaxed));
        let mut cluster = Cluster {
            zk,
            name,
            nodes: Vec::new(),
            http: reqwest::Client::new(),
            dir: tempfile::tempdir().expect("temp dir"),
            node_args: node_args.iter().map(|s| s.to_string()).collect(),
        };
        let mut extra: Vec<String> = vec!["--root".into()];
        extra.extend(root_args.iter().map(|s| s.to_string()));
        cluster.spawn(extra).await;
        for _ in 1..n {
            cluster.add_node().await;
        }
        cluster
    }

    async fn spawn(&mut self, extra: Vec<String>) -> usize {
        let port = free_port().expect("free port");
        let mut args = vec![
            "--zk".to_string(),
            self.zk.addr(),
            "--cluster".into(),
            self.name.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra);
        let i = self.nodes.len();
        let log = self.dir.path().join(format!("node-{i}.log"));
        let child = spawn_node(std::path::Path::new(BIN), &args, &log).expect("spawn node");
        self.nodes.push(NodeProc { port, child: Some(child), log, args });
        self.wait_healthy(i).await;
        i
    }

    /// Starts one more node; returns its index.
    pub async fn add_node(&mut self) -> usize {
        let extra = self.node_args.clone();
        self.spawn(extra).await
    }

    async fn wait_healthy(&mut self, i: usize) {
        let url = self.url(i);
        let node = &mut self.nodes[i];
        if let Err(e) = wait_healthy(&self.http, &url, HEALTH_TIMEOUT, node.child.as_mut()).await {
            self.print_logs();
            panic!("node {i}: {e}");
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    /// SIGKILL: the node dies without leaving.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: the node leaves cleanly.
    pub fn term(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            stop(&mut c, Duration::from_secs(10));
        }
    }

    /// Starts node `i` again with the same flags (same address).
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        let node = &self.nodes[i];
        let child = spawn_node(std::path::Path::new(BIN), &node.args, &node.log).expect("respawn node");
        self.nodes[i].child = Some(child);
        self.wait_healthy(i).await;
    }

    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].child.is_some()).collect()
    }

    pub async fn health(&self, i: usize) -> Value {
        self.http.get(format!("{}/health", self.url(i))).send().await.expect("health").json().await.expect("json")
    }

    pub async fn id(&self, i: usize) -> u64 {
        self.health(i).await["id"].as_u64().expect("id")
    }

    pub async fn get(&self, i: usize, key: &str, query: &str) -> Read {
        let url = format!("{}/kv/{}{query}", self.url(i), enc(key));
        let resp = self.http.get(url).send().await.expect("GET /kv");
        let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (version, cache, node) =
            (header("x-version").and_then(|v| v.parse().ok()), header("x-cache"), header("x-node"));
        let status = resp.status().as_u16();
        Read { status, version, cache, node, body: resp.bytes().await.expect("body") }
    }

    pub async fn put(&self, i: usize, key: &str, value: &str, query: &str) -> (u16, Value) {
        let url = format!("{}/kv/{}{query}", self.url(i), enc(key));
        let resp = self.http.put(url).body(value.to_string()).send().await.expect("PUT /kv");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn del(&self, i: usize, key: &str, query: &str) -> (u16, Value) {
        let url = format!("{}/kv/{}{query}", self.url(i), enc(key));
        let resp = self.http.delete(url).send().await.expect("DELETE /kv");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A counter from the node's /metrics.
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        let text =
            self.http.get(format!("{}/metrics", self.url(i))).send().await.expect("metrics").text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("treecache_{name} ")).and_then(|v| v.parse().ok()))
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// Keys in the node's /dump.
    pub async fn dump_keys(&self, i: usize) -> Vec<String> {
        let text =
            self.http.get(format!("{}/dump?limit=10000", self.url(i))).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["key"].as_str().map(String::from))
            .collect()
    }

    /// Every znode path under `/treecache/<cluster>/<sub>`, relative to it.
    pub async fn zk_tree(&self, sub: &str) -> Vec<String> {
        let zk = zookeeper_client::Client::connect(&self.zk.addr()).await.expect("zk connect");
        let base = format!("/treecache/{}/{sub}", self.name);
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(p) = stack.pop() {
            for c in zk.list_children(&p).await.unwrap_or_default() {
                let full = format!("{p}/{c}");
                out.push(full[base.len() + 1..].to_string());
                stack.push(full);
            }
        }
        out.sort();
        out
    }

    pub fn print_logs(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- node {i} ({}) log tail -----", n.port);
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{l}");
            }
        }
        eprintln!("----- zookeeper log tail -----\n{}", self.zk.log_tail());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for n in self.nodes.iter_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn enc(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
}
