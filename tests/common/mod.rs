//! The test harness: a real ZooKeeper ([`Zk`], over
//! `treecache::zkserver::LocalZk`) and real `treecache node` processes on
//! loopback, started the way `treecache up` starts them
//! (`treecache::cli::local`). Readiness is polled (`/health`, or any
//! condition through [`wait_until`]), never slept for. Dropping a [`Cluster`]
//! kills and reaps every process; if the test is failing, each node's log
//! tail (and ZooKeeper's) is printed first. The `/kv` probes (`get`, `put`,
//! `del`) go through `treecache::client`, as every caller of the API does;
//! tests of the HTTP API itself send raw requests with [`Cluster::http`].
//!
//! Index `i` is the order nodes were started in: 0 is the root, and since
//! nodes start one at a time, node `i` gets id `i + 1` unless a test
//! restarts or replaces nodes ([`Cluster::node_ids`] has the truth).

#![allow(dead_code)]

pub mod history;
pub mod resp;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::Value;
use treecache::cli::local::{node_args, spawn_node_env, stop, wait_healthy, write_new_secret};
use treecache::client::{self, Ack, Client, PutOptions};
use treecache::process::log_tail;
use treecache::tls::certs::Authority;
use treecache::tls::{ClientAuth, Tls, TlsFiles};
use treecache::zkserver::{free_port, LocalZk};

pub const BIN: &str = env!("CARGO_BIN_EXE_treecache");
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
const LOG_LINES: usize = 40;

/// Polls `probe` every 50 ms until it holds; panics with `what` after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while !probe().await {
        assert!(Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `cmd` (stdin closed) to its end and returns what it printed, killing
/// it and failing the test if it has not exited within `limit`. For commands
/// expected to refuse at once: a flag combination that starts to be accepted
/// would otherwise wait forever (for a ZooKeeper at 127.0.0.1:1) and hang
/// the suite instead of failing one test.
pub fn output_within(cmd: &mut std::process::Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("{cmd:?} still ran after {limit:?} (expected it to exit); its stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// Waits until wall-clock `at` has passed (for bounds that are about time
/// itself, such as ttl mode's max-age). Waiting longer only makes the
/// checked property easier to hold, so this cannot flake.
pub async fn wait_past(at: Instant) {
    wait_until(Duration::from_secs(600), "the clock", || async { Instant::now() >= at }).await;
}

/// A private ZooKeeper for one test. Panics (with the server's log) when it
/// cannot start: a test without ZooKeeper has nothing to say.
pub struct Zk {
    server: LocalZk,
}

impl Zk {
    pub async fn start() -> Zk {
        match LocalZk::start().await {
            Ok(server) => Zk { server },
            Err(e) => panic!("cannot start ZooKeeper: {e}"),
        }
    }

    /// [`Zk::start`] with a secure client port too ([`Zk::secure_addr`])
    /// serving `files`' certificate; clients need one from its CA.
    pub async fn start_tls(files: &TlsFiles) -> Zk {
        match LocalZk::start_tls(files).await {
            Ok(server) => Zk { server },
            Err(e) => panic!("cannot start ZooKeeper with a secure port: {e}"),
        }
    }

    /// `127.0.0.1:PORT` of the secure client port.
    pub fn secure_addr(&self) -> String {
        self.server.secure_addr().expect("ZooKeeper started with start_tls")
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.server.addr()
    }

    /// Kills the server: an outage for every node. Data and port stay.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Brings the server back after [`Zk::stop`], same port, same data.
    pub async fn start_again(&mut self) {
        if let Err(e) = self.server.start_again().await {
            panic!("cannot restart ZooKeeper: {e}");
        }
    }

    /// SIGSTOP: the server hangs (connections stay open, nothing answers),
    /// as in a long GC pause. Sessions time out unless [`Zk::resume`] comes
    /// first. Returns whether a running server was paused.
    pub fn pause(&mut self) -> bool {
        self.server.pid().is_some_and(|pid| send_signal(pid, libc::SIGSTOP))
    }

    /// SIGCONT after [`Zk::pause`].
    pub fn resume(&mut self) -> bool {
        self.server.pid().is_some_and(|pid| send_signal(pid, libc::SIGCONT))
    }

    /// A fresh client session.
    pub async fn client(&self) -> zookeeper_client::Client {
        zookeeper_client::Client::connect(&self.addr()).await.expect("ZooKeeper client session")
    }

    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

/// How to start a cluster. `Opts { nodes: 7, ..Opts::default() }`.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Nodes including the root.
    pub nodes: usize,
    pub fanout: u32,
    /// "push" or "ttl" (the root's flag; nodes take the root's mode).
    pub mode: &'static str,
    /// `--max-age` for ttl mode, e.g. "1s".
    pub max_age: Option<&'static str>,
    /// Extra flags for the root only.
    pub root_args: Vec<String>,
    /// Extra flags for every other node (also those added later).
    pub node_args: Vec<String>,
    /// Give the root `--data-dir` (see [`Cluster::root_data_dir`]): its
    /// commit log survives [`Cluster::restart`].
    pub durable_root: bool,
    /// `RUST_LOG` for every node (default: the test's own, else info).
    pub rust_log: Option<&'static str>,
    /// Every node serves HTTPS with a certificate of its own from a CA
    /// made for the test (see [`Cluster::ca`]); the harness's client
    /// trusts that CA and presents a certificate of it.
    pub tls: bool,
    /// ZooKeeper serves a secure port too and every node uses it
    /// (`--zk-tls`); implies `tls`.
    pub zk_tls: bool,
    /// Every node also speaks RESP (`--resp-listen` on a free port; see
    /// [`Cluster::resp_addr`]).
    pub resp: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            nodes: 1,
            fanout: 2,
            mode: "push",
            max_age: None,
            root_args: Vec::new(),
            node_args: Vec::new(),
            durable_root: false,
            rust_log: None,
            tls: false,
            zk_tls: false,
            resp: false,
        }
    }
}

impl Opts {
    /// The root's flags beyond the common ones. Defaults are left out so a
    /// test may still pass `--mode` or `--fanout` in `root_args`.
    fn root_flags(&self, data_dir: &Path) -> Vec<String> {
        let mut flags = vec!["--root".to_string()];
        if self.durable_root {
            flags.extend(["--data-dir".into(), data_dir.display().to_string()]);
        }
        if self.fanout != 2 {
            flags.extend(["--fanout".into(), self.fanout.to_string()]);
        }
        if self.mode != "push" {
            flags.extend(["--mode".into(), self.mode.into()]);
        }
        if let Some(age) = self.max_age {
            flags.extend(["--max-age".into(), age.into()]);
        }
        flags.extend(self.root_args.iter().cloned());
        flags
    }
}

/// An answer to GET /kv, whatever its status.
#[derive(Debug)]
pub struct Read {
    pub status: u16,
    pub headers: HeaderMap,
    pub version: Option<u64>,
    pub cache: Option<String>,
    pub node: Option<String>,
    pub body: Bytes,
}

impl Read {
    /// The answer as the harness's callers see it: a value, or the node's
    /// error (its message as the body); no answer at all panics.
    fn from(result: Result<client::Found, client::Error>) -> Read {
        let (status, headers, body) = match result {
            Ok(found) => (200, found.headers().clone(), found.value().clone()),
            Err(e) => {
                let reply = e.reply().unwrap_or_else(|| panic!("GET /kv: {e}"));
                (reply.status.as_u16(), reply.headers.clone(), Bytes::from(reply.message.clone()))
            }
        };
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (version, cache, node) =
            (header("x-version").and_then(|v| v.parse().ok()), header("x-cache"), header("x-node"));
        Read { status, headers, version, cache, node, body }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A harness query string (`""`, `"?ack=root&ttl=1"`, `"?consistent=true"`)
/// as client options. Anything else is a test of the HTTP API itself: send
/// it with raw reqwest (`Cluster::http`).
#[derive(Default)]
struct Query {
    put: PutOptions,
    consistent: bool,
}

impl Query {
    fn parse(query: &str) -> Query {
        let mut q = Query::default();
        for pair in query.trim_start_matches('?').split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("ack", "root")) => q.put.ack = Ack::Root,
                Some(("ack", "parent")) => q.put.ack = Ack::Parent,
                Some(("ttl", secs)) => {
                    q.put.ttl = Some(Duration::from_secs(secs.parse().expect("?ttl= in seconds")));
                }
                Some(("consistent", "true")) | Some(("use_cache", "false")) => q.consistent = true,
                _ => panic!("the harness sends ack, ttl and consistent through treecache::client, not {pair:?}"),
            }
        }
        q
    }
}

/// A write's answer as `(status, JSON body)`: the node's own answer, or
/// `{"error","code"}` of its error; no answer at all panics.
fn written(what: &str, result: Result<client::Written, client::Error>) -> (u16, Value) {
    match result {
        Ok(w) => (w.status().as_u16(), serde_json::from_slice(w.body()).unwrap_or(Value::Null)),
        Err(e) => {
            let reply = e.reply().unwrap_or_else(|| panic!("{what} /kv: {e}"));
            (reply.status.as_u16(), serde_json::json!({ "error": reply.message, "code": reply.code }))
        }
    }
}

/// One node process: its flags (to restart it the same way), its log and
/// the id its last healthy /health reported.
struct NodeProc {
    port: u16,
    /// `--resp-listen`'s port, when the cluster speaks RESP.
    resp_port: Option<u16>,
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    id: Option<u64>,
}

pub struct Cluster {
    pub zk: Zk,
    /// The cluster name, unique per test.
    pub name: String,
    pub http: reqwest::Client,
    nodes: Vec<NodeProc>,
    node_args: Vec<String>,
    rust_log: Option<&'static str>,
    resp: bool,
    /// The cluster secret every node gets (`--cluster-secret-file`) unless
    /// a test gives a node its own.
    pub secret_file: PathBuf,
    /// The test's CA when the cluster runs TLS ([`Opts::tls`]).
    pub ca: Option<Authority>,
    zk_tls: bool,
    dir: tempfile::TempDir,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

fn unique_name() -> String {
    format!("t{}-{}", std::process::id(), CLUSTERS.fetch_add(1, Ordering::Relaxed))
}

impl Cluster {
    /// A root plus `n - 1` nodes; `root_args` go to the root only.
    pub async fn start(n: usize, root_args: &[&str]) -> Cluster {
        Self::start_with(n, root_args, &[]).await
    }

    /// [`Cluster::start`] with flags for every non-root node too.
    pub async fn start_with(n: usize, root_args: &[&str], node_args: &[&str]) -> Cluster {
        let owned = |args: &[&str]| args.iter().map(|s| s.to_string()).collect();
        Self::start_opts(Opts { nodes: n, root_args: owned(root_args), node_args: owned(node_args), ..Opts::default() })
            .await
    }

    /// Starts ZooKeeper, the root, then the other nodes one at a time, each
    /// waited for until its /health answers 200.
    pub async fn start_opts(opts: Opts) -> Cluster {
        assert!(opts.nodes >= 1, "a cluster has at least its root");
        let dir = tempfile::Builder::new().prefix("treecache-test-").tempdir().expect("temp dir");
        let secret_file = dir.path().join("cluster-secret");
        write_new_secret(&secret_file).expect("cluster secret");
        let ca = (opts.tls || opts.zk_tls).then(|| Authority::new("treecache test CA").expect("test CA"));
        let zk = match &ca {
            Some(ca) if opts.zk_tls => {
                let files =
                    ca.write_node_files(&dir.path().join("tls/zookeeper"), "zookeeper", LOOPBACK).expect("certs");
                Zk::start_tls(&files).await
            }
            _ => Zk::start().await,
        };
        let http = match &ca {
            Some(ca) => tls_client(&client_files(ca, &dir.path().join("tls/harness"))),
            None => reqwest::Client::new(),
        };
        let mut cluster = Cluster {
            zk,
            name: unique_name(),
            http,
            nodes: Vec::new(),
            node_args: opts.node_args.clone(),
            rust_log: opts.rust_log,
            resp: opts.resp,
            secret_file,
            ca,
            zk_tls: opts.zk_tls,
            dir,
        };
        let flags = opts.root_flags(&cluster.root_data_dir());
        cluster.spawn(flags).await;
        for _ in 1..opts.nodes {
            cluster.add_node().await;
        }
        cluster
    }

    /// Starts one more (non-root) node and waits for it; returns its index.
    pub async fn add_node(&mut self) -> usize {
        let extra = self.node_args.clone();
        self.spawn(extra).await
    }

    /// [`Cluster::add_node`] with flags of its own beside the common ones.
    pub async fn add_node_with(&mut self, flags: &[&str]) -> usize {
        let mut extra = self.node_args.clone();
        extra.extend(flags.iter().map(|f| f.to_string()));
        self.spawn(extra).await
    }

    async fn spawn(&mut self, extra: Vec<String>) -> usize {
        let i = self.spawn_unwaited(extra);
        self.wait_healthy(i).await;
        i
    }

    /// Starts one more non-root node with `extra` flags and does not wait
    /// for it (a node that cannot join); returns its index.
    pub fn add_node_unwaited(&mut self, extra: &[&str]) -> usize {
        let mut args = self.node_args.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn_unwaited(args)
    }

    /// [`Cluster::add_node_unwaited`] without the harness's TLS flags,
    /// whatever the cluster runs (a node that must refuse its flags).
    pub fn add_node_unwaited_plain(&mut self, extra: &[&str]) -> usize {
        let mut args = self.node_args.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn_with(args, false)
    }

    /// Starts a node; `extra` may bring its own cluster secret instead of
    /// the cluster's.
    fn spawn_unwaited(&mut self, extra: Vec<String>) -> usize {
        self.spawn_with(extra, true)
    }

    fn spawn_with(&mut self, extra: Vec<String>, tls: bool) -> usize {
        let port = free_port().expect("free port");
        let zk = if self.zk_tls && tls { self.zk.secure_addr() } else { self.zk.addr() };
        let mut args = node_args(&zk, &self.name, port, &self.secret_file);
        if let Some(ca) = self.ca.as_ref().filter(|_| tls) {
            // A certificate of its own per node; a test's own --tls-* flags win.
            if !extra.iter().any(|a| a.starts_with("--tls-cert")) {
                let dir = self.dir.path().join(format!("tls/node-{}", self.nodes.len()));
                let files = ca.write_node_files(&dir, "node", LOOPBACK).expect("node certificate");
                args.extend(tls_flags(&files));
            }
            if self.zk_tls {
                args.push("--zk-tls".into());
            }
        }
        if extra.iter().any(|a| a.starts_with("--cluster-secret")) {
            if let Some(at) = args.iter().position(|a| a == "--cluster-secret-file") {
                args.drain(at..at + 2);
            }
        }
        let resp_port = self.resp.then(|| free_port().expect("free port"));
        if let Some(p) = resp_port {
            args.extend(["--resp-listen".to_string(), format!("127.0.0.1:{p}")]);
        }
        args.extend(extra);
        let i = self.nodes.len();
        let log = self.dir.path().join(format!("node-{i}.log"));
        let child = self.spawn_process(&args, &log);
        self.nodes.push(NodeProc { port, resp_port, child: Some(child), log, args, id: None });
        i
    }

    fn spawn_process(&self, args: &[String], log: &Path) -> Child {
        spawn_node_env(Path::new(BIN), args, log, &self.node_env()).expect("spawn node")
    }

    /// Environment for a node process beyond the inherited one.
    fn node_env(&self) -> Vec<(&'static str, &'static str)> {
        self.rust_log.iter().map(|v| ("RUST_LOG", *v)).collect()
    }

    /// The cluster secret.
    pub fn secret(&self) -> String {
        std::fs::read_to_string(&self.secret_file).expect("cluster secret file").trim().to_string()
    }

    /// An HTTP client that presents the cluster secret, as a peer node does
    /// (and under TLS a certificate of the cluster's CA).
    pub fn peer_http(&self) -> reqwest::Client {
        let mut headers = HeaderMap::new();
        headers.insert("x-treecache-secret", self.secret().parse().expect("secret header"));
        let builder = reqwest::Client::builder().default_headers(headers);
        let builder = match &self.ca {
            Some(ca) => {
                let files = client_files(ca, &self.dir.path().join("tls/peer"));
                let tls = Tls::load(files, ClientAuth::None, None).expect("peer certificate");
                builder.use_preconfigured_tls((*tls.client_config()).clone())
            }
            None => builder,
        };
        builder.build().expect("HTTP client")
    }

    /// Where the cluster's TLS files live (certificates, keys), under its
    /// temp dir.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// A directory of the test's own under the cluster's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Node `i`'s whole log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Waits for node `i`'s /health 200 and records its id; on failure
    /// prints every log and panics.
    pub async fn wait_healthy(&mut self, i: usize) {
        let url = self.url(i);
        let node = &mut self.nodes[i];
        match wait_healthy(&self.http, &url, HEALTH_TIMEOUT, node.child.as_mut()).await {
            Ok(health) => node.id = health["id"].as_u64(),
            Err(e) => {
                self.print_logs();
                panic!("node {i}: {e}");
            }
        }
    }

    /// How many nodes were started (dead ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn url(&self, i: usize) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Node `i`'s RESP address (the cluster was started with [`Opts::resp`]).
    pub fn resp_addr(&self, i: usize) -> String {
        let port = self.nodes[i].resp_port.unwrap_or_else(|| panic!("node {i} has no --resp-listen (Opts::resp)"));
        format!("127.0.0.1:{port}")
    }

    /// Node `i`'s RESP port.
    pub fn resp_port(&self, i: usize) -> u16 {
        self.nodes[i].resp_port.unwrap_or_else(|| panic!("node {i} has no --resp-listen (Opts::resp)"))
    }

    /// Ids of the running nodes, as their /health said when they came up.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.child.is_some()).filter_map(|n| n.id).collect()
    }

    /// The index of the running node with this id.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.child.is_some() && n.id == Some(id))
    }

    /// Indexes of the running nodes.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].child.is_some()).collect()
    }

    /// SIGKILL: the node dies without leaving.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The node's process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the process freezes (a GC pause, a stuck VM); its ZooKeeper
    /// session expires if this lasts past the session timeout.
    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    /// SIGHUP: a TLS node reloads its certificate, key and CA.
    pub fn signal_hup(&self, i: usize) {
        self.signal(i, libc::SIGHUP);
    }

    fn signal(&self, i: usize, sig: i32) {
        let pid = self.pid(i).unwrap_or_else(|| panic!("node {i} is not running"));
        // SAFETY: kill(2) with a pid we spawned and still own (not reaped).
        let rc = unsafe { libc::kill(pid as i32, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// SIGTERM, then wait for the node to leave cleanly (SIGKILL after 10 s).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            stop(&mut child, STOP_GRACE);
        }
    }

    /// The id node `i` reported when it last came up healthy.
    pub fn id_of(&self, i: usize) -> Option<u64> {
        self.nodes[i].id
    }

    /// [`Cluster::restart`] that reports a node that does not come up
    /// healthy within `timeout` instead of panicking (a fault loop goes on
    /// and the history checker reports it). Returns the node's id.
    pub async fn restart_within(&mut self, i: usize, timeout: Duration) -> Result<u64, String> {
        self.kill(i);
        let node = &self.nodes[i];
        let child = spawn_node_env(Path::new(BIN), &node.args, &node.log, &self.node_env())?;
        self.nodes[i].child = Some(child);
        let url = self.url(i);
        let node = &mut self.nodes[i];
        let health = wait_healthy(&self.http, &url, timeout, node.child.as_mut()).await?;
        node.id = health["id"].as_u64();
        node.id.ok_or_else(|| format!("{url}/health has no id: {health}"))
    }

    /// Starts node `i` again (killing it first if it runs) with the same
    /// flags and address, without waiting for it to become healthy.
    pub fn restart_unwaited(&mut self, i: usize) {
        self.kill(i);
        let node = &self.nodes[i];
        let child = self.spawn_process(&node.args, &node.log);
        self.nodes[i].child = Some(child);
    }

    /// Same as [`Cluster::stop`].
    pub fn term(&mut self, i: usize) {
        self.stop(i);
    }

    /// Starts node `i` again (killing it first if it runs) with the same
    /// flags and address, and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        let node = &self.nodes[i];
        let child = self.spawn_process(&node.args, &node.log);
        self.nodes[i].child = Some(child);
        self.wait_healthy(i).await;
    }

    /// The root's `--data-dir` when started with [`Opts::durable_root`].
    pub fn root_data_dir(&self) -> PathBuf {
        self.dir.path().join("root-data")
    }

    /// Adds flags to node `i`'s command line for its next start.
    pub fn push_args(&mut self, i: usize, args: &[&str]) {
        self.nodes[i].args.extend(args.iter().map(|s| s.to_string()));
    }

    /// Starts node `i` again (killing it first) expecting it to refuse to
    /// start: returns its exit code and its log, once it has exited.
    pub async fn restart_expect_exit(&mut self, i: usize) -> (Option<i32>, String) {
        self.kill(i);
        let node = &self.nodes[i];
        let child = self.spawn_process(&node.args, &node.log);
        self.nodes[i].child = Some(child);
        self.wait_exit(i).await
    }

    /// Waits for node `i`'s process to exit by itself (it refuses to run):
    /// its exit code and its log.
    pub async fn wait_exit(&mut self, i: usize) -> (Option<i32>, String) {
        let mut child = self.nodes[i].child.take().unwrap_or_else(|| panic!("node {i} is not running"));
        let until = Instant::now() + HEALTH_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the node") {
                break status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                self.print_logs();
                panic!("node {i} did not exit within {HEALTH_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        (status.code(), self.log_text(i))
    }

    /// Node `i`'s whole log (every start of it).
    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    pub async fn health(&self, i: usize) -> Value {
        let resp = self.http.get(format!("{}/health", self.url(i))).send().await.expect("GET /health");
        resp.json().await.expect("/health JSON")
    }

    /// The id node `i` reports now.
    pub async fn id(&self, i: usize) -> u64 {
        self.health(i).await["id"].as_u64().expect("id in /health")
    }

    /// A [`Client`] of node `i`, sharing the harness's connections.
    pub fn client(&self, i: usize) -> Client {
        Client::builder(&self.url(i)).http_client(self.http.clone()).build().expect("a client of /kv")
    }

    /// GET /kv/KEY through the client; `query` is "", "?consistent=true"
    /// or "?use_cache=false".
    pub async fn get(&self, i: usize, key: &str, query: &str) -> Read {
        let client = self.client(i);
        if Query::parse(query).consistent {
            Read::from(client.get_consistent(key).await)
        } else {
            Read::from(client.get(key).await)
        }
    }

    /// PUT /kv/KEY through the client (`query`: "", "?ack=root", "?ttl=N",
    /// both); the status and the JSON body (Null when not JSON).
    pub async fn put(&self, i: usize, key: &str, value: &str, query: &str) -> (u16, Value) {
        let options = Query::parse(query).put;
        written("PUT", self.client(i).put_with(key, value.to_string(), options).await)
    }

    /// DELETE /kv/KEY through the client (`query`: "" or "?ack=root"); the
    /// status and the JSON body (Null when not JSON).
    pub async fn del(&self, i: usize, key: &str, query: &str) -> (u16, Value) {
        let ack = Query::parse(query).put.ack;
        written("DELETE", self.client(i).del_with(key, ack).await)
    }

    /// A sample from the node's /metrics (`treecache_NAME VALUE`).
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        let resp = self.http.get(format!("{}/metrics", self.url(i))).send().await.expect("GET /metrics");
        let text = resp.text().await.expect("/metrics body");
        let prefix = format!("treecache_{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
            .unwrap_or_else(|| panic!("metric {name} missing from /metrics of node {i}"))
    }

    /// Keys in the node's /dump.
    pub async fn dump_keys(&self, i: usize) -> Vec<String> {
        let resp = self.http.get(format!("{}/dump?limit=10000", self.url(i))).send().await.expect("GET /dump");
        let text = resp.text().await.expect("/dump body");
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["key"].as_str().map(String::from))
            .collect()
    }

    /// Every znode path under `/treecache/<cluster>/<sub>`, relative to it, sorted.
    pub async fn zk_tree(&self, sub: &str) -> Vec<String> {
        let zk = self.zk.client().await;
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

    /// Each node's log tail, then ZooKeeper's, on stderr.
    pub fn print_logs(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let state = if n.child.is_some() { "running" } else { "stopped" };
            eprintln!("----- node {i} (id {:?}, port {}, {state}) log tail -----", n.id, n.port);
            eprintln!("{}", log_tail(&n.log, LOG_LINES));
        }
        eprintln!("----- zookeeper {} log tail -----\n{}", self.zk.addr(), self.zk.log_tail());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
            // TREECACHE_KEEP_LOGS=DIR keeps every node's whole log there.
            if let Ok(dir) = std::env::var("TREECACHE_KEEP_LOGS") {
                let to = Path::new(&dir).join(&self.name);
                if std::fs::create_dir_all(&to).is_ok() {
                    for (i, n) in self.nodes.iter().enumerate() {
                        let _ = std::fs::copy(&n.log, to.join(format!("node-{i}.log")));
                    }
                    eprintln!("node logs kept in {}", to.display());
                }
            }
        }
        for n in self.nodes.iter_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The names every test certificate carries: nodes listen on loopback.
pub const LOOPBACK: &[&str] = &["127.0.0.1", "localhost"];

/// `--tls-cert F --tls-key F --tls-ca F`.
pub fn tls_flags(files: &TlsFiles) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--tls-cert".into(),
        path(&files.cert),
        "--tls-key".into(),
        path(&files.key),
        "--tls-ca".into(),
        path(&files.ca),
    ]
}

/// A client certificate of `ca` written into `dir`.
pub fn client_files(ca: &Authority, dir: &Path) -> TlsFiles {
    ca.write_node_files(dir, "client", LOOPBACK).expect("client certificate")
}

/// An HTTPS client that trusts `files`' CA and presents its certificate.
pub fn tls_client(files: &TlsFiles) -> reqwest::Client {
    let tls = Tls::load(files.clone(), ClientAuth::None, None).expect("client certificate");
    reqwest::Client::builder().use_preconfigured_tls((*tls.client_config()).clone()).build().expect("HTTPS client")
}

/// A rustls client trusting the CA in `trusted` (PEM) and presenting
/// `identity` (PEM certificate and key) if any: built by hand, so an
/// expired or foreign certificate can be presented (a node's own checks
/// would refuse it).
pub fn client_config(trusted: &str, identity: Option<(&str, &str)>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trusted.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(treecache::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).map(|c| c.expect("cert PEM")).collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM");
            builder.with_client_auth_cert(chain, key).expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    }
}

/// Sends `sig` to a process we started and have not reaped.
fn send_signal(pid: u32, sig: libc::c_int) -> bool {
    match libc::pid_t::try_from(pid) {
        // SAFETY: a plain syscall on a child of ours that has not been reaped.
        Ok(pid) => unsafe { libc::kill(pid, sig) == 0 },
        Err(_) => false,
    }
}

/// Percent-encodes a key for a URL path, as the client does.
pub fn enc(key: &str) -> String {
    client::encode_key(key).to_string()
}
