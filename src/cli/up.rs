//! `treecache up`: a local tree on loopback, the quick start. Starts a
//! private ZooKeeper from the installed package (unless `--zk`), a root and
//! N-1 nodes as child processes of this binary, each also speaking RESP
//! (`--resp-listen`), prints each node (with its RESP port) and the tree, and on Ctrl-C or SIGTERM stops the nodes (leaves first, then the
//! root), then ZooKeeper. Everything it starts, it stops; its logs stay.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use clap::Args;

use super::local::{self, node_args, spawn_node, stop_all, wait_healthy, zk_connect};
use super::{tree, Failure};
use crate::coherence::Mode;
use crate::config::parse_duration;
use crate::process::log_tail;
use crate::tls::certs::Authority;
use crate::tls::{ClientAuth, Tls, TlsFiles};
use crate::tree::zk::Paths;
use crate::zkserver::{free_port, LocalZk};

const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const ZK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the drawn tree may take to show every node in ZooKeeper.
const TREE_TIMEOUT: Duration = Duration::from_secs(15);
/// SIGTERM, then this long to leave the tree, then SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
const LOG_LINES: usize = 30;

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Number of nodes, the root included.
    #[arg(long, env = "TREECACHE_NODES", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub nodes: u32,
    /// Use this ZooKeeper (HOST:PORT[,..]) instead of starting a private one.
    #[arg(long, env = "TREECACHE_ZK")]
    pub zk: Option<String>,
    /// Cluster name; the znodes live under /treecache/<cluster>.
    #[arg(long, env = "TREECACHE_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Children per node before placement goes one level deeper.
    #[arg(long, env = "TREECACHE_FANOUT", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub fanout: u32,
    /// Coherence mode of the tree.
    #[arg(long, env = "TREECACHE_MODE", value_enum, default_value_t = Mode::Push)]
    pub mode: Mode,
    /// Freshness bound per level in ttl mode, e.g. 2s.
    #[arg(long, env = "TREECACHE_MAX_AGE", value_parser = parse_duration)]
    pub max_age: Option<Duration>,
    /// HTTP port of the root; node k takes base-port + k. 0: free ports.
    #[arg(long, env = "TREECACHE_BASE_PORT", default_value_t = 0)]
    pub base_port: u16,
    /// RESP (Redis protocol) port of the root; node k takes resp-base-port + k.
    /// 0: free ports.
    #[arg(long, env = "TREECACHE_RESP_BASE_PORT", default_value_t = 0)]
    pub resp_base_port: u16,
    /// The cluster secret's file (default: a new secret in the log directory).
    #[arg(long, env = "TREECACHE_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Run the tree over TLS: a throwaway CA (in the log directory) signs a
    /// certificate per node; nodes serve HTTPS and verify each other, and the
    /// private ZooKeeper (without --zk) serves TLS to them too.
    #[arg(long, env = "TREECACHE_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    pub tls: bool,
    /// Root groups: this many groups' leaders, the slots spread evenly over
    /// them (a fresh cluster's map). Each root keeps a --data-dir in the
    /// log directory. The extra roots are beside --nodes.
    #[arg(long, env = "TREECACHE_GROUPS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub groups: u32,
    /// Standby roots per group (each with a --data-dir in the log directory).
    #[arg(long, env = "TREECACHE_STANDBYS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=8))]
    pub standbys: u32,
}

/// What one process `up` starts is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Group 0's first root: the registrar, the top of the tree.
    Registrar,
    /// A root candidate of `group` (its first is its leader).
    Root { group: u32 },
    /// A cache node in the tree.
    Cache,
}

impl UpArgs {
    /// Checks flag combinations before anything is started.
    pub fn validate(&self) -> Result<(), String> {
        match (self.mode, self.max_age) {
            (Mode::Ttl, None) => return Err("--mode ttl needs --max-age (e.g. --max-age 2s)".into()),
            (Mode::Push, Some(_)) => return Err("--max-age only applies to --mode ttl".into()),
            (_, Some(age)) if age.is_zero() => return Err("--max-age must be greater than zero".into()),
            _ => {}
        }
        if self.cluster.is_empty() || self.cluster.contains('/') {
            return Err(format!("--cluster {:?}: must be non-empty and contain no '/'", self.cluster));
        }
        let total = self.processes();
        for (flag, base) in [("--base-port", self.base_port), ("--resp-base-port", self.resp_base_port)] {
            if base != 0 && u32::from(base) + total - 1 > u32::from(u16::MAX) {
                return Err(format!("{flag} {base} leaves no room for {total} nodes"));
            }
        }
        let ranges = |base: u16| u32::from(base)..u32::from(base) + total;
        if self.base_port != 0 && self.resp_base_port != 0 {
            let (http, resp) = (ranges(self.base_port), ranges(self.resp_base_port));
            if http.start < resp.end && resp.start < http.end {
                return Err(format!(
                    "--base-port {} and --resp-base-port {} overlap for {total} nodes",
                    self.base_port, self.resp_base_port
                ));
            }
        }
        Ok(())
    }

    /// Every process `up` starts: --nodes, plus the other groups' leaders
    /// and every group's standbys.
    fn processes(&self) -> u32 {
        self.nodes + (self.groups - 1) + self.groups * self.standbys
    }

    /// Whether the roots keep a commit log (a standby or another group
    /// needs one; a lone root runs in memory as it always did).
    fn durable_roots(&self) -> bool {
        self.groups > 1 || self.standbys > 0
    }

    /// The processes in start order: group 0's root and standbys, each
    /// other group's leader and standbys, then the caches.
    fn roles(&self) -> Vec<Role> {
        let mut roles = vec![Role::Registrar];
        roles.extend((0..self.standbys).map(|_| Role::Root { group: 0 }));
        for group in 1..self.groups {
            roles.extend((0..=self.standbys).map(|_| Role::Root { group }));
        }
        roles.extend((1..self.nodes).map(|_| Role::Cache));
        roles
    }

    /// The HTTP port of node `k` (0 is the root).
    fn port(&self, k: u32) -> Result<u16, String> {
        port_from(self.base_port, k)
    }

    /// The RESP port of node `k`.
    fn resp_port(&self, k: u32) -> Result<u16, String> {
        port_from(self.resp_base_port, k)
    }

    /// The `node` flags of process `k` in `role`: a root also gets the
    /// mode, its group and (see [`UpArgs::durable_roots`]) a data dir in
    /// `logs`.
    #[allow(clippy::too_many_arguments)]
    fn flags(
        &self,
        zk: &str,
        k: u32,
        role: Role,
        port: u16,
        resp_port: u16,
        secret: &Path,
        logs: &Path,
    ) -> Vec<String> {
        let mut flags = node_args(zk, &self.cluster, port, secret);
        if self.tls {
            flags.extend(["--advertise".into(), format!("https://127.0.0.1:{port}")]);
        }
        flags.extend(["--resp-listen".into(), format!("127.0.0.1:{resp_port}")]);
        flags.extend(["--fanout".into(), self.fanout.to_string()]);
        let group = match role {
            Role::Cache => return flags,
            Role::Registrar => 0,
            Role::Root { group } => group,
        };
        flags.extend(["--root".into(), "--mode".into(), self.mode.as_str().into()]);
        if let Some(age) = self.max_age {
            flags.extend(["--max-age".into(), format!("{}ms", age.as_millis())]);
        }
        if group != 0 {
            flags.extend(["--group".into(), group.to_string()]);
        }
        if self.durable_roots() {
            flags.extend(["--data-dir".into(), logs.join(format!("node-{k}-data")).display().to_string()]);
        }
        flags
    }
}

/// `up --tls`: the throwaway CA and where its files go.
struct Certs {
    ca: Authority,
    dir: PathBuf,
}

/// The names every local certificate carries.
const LOOPBACK: &[&str] = &["127.0.0.1", "localhost"];

impl Certs {
    fn new(logs: &Path) -> Result<Certs, String> {
        let ca = Authority::new("treecache up (throwaway CA)")?;
        let dir = logs.join("tls");
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        crate::tls::certs::write_file(&dir.join("ca.pem"), ca.cert_pem(), 0o644)?;
        Ok(Certs { ca, dir })
    }

    /// A certificate for `name`, written under the log directory.
    fn files(&self, name: &str) -> Result<TlsFiles, String> {
        self.ca.write_node_files(&self.dir.join(name), name, LOOPBACK)
    }

    /// `--tls-cert F --tls-key F --tls-ca F` of a new certificate for
    /// node `k`, plus `--zk-tls` when ZooKeeper serves TLS.
    fn node_flags(&self, k: u32, zk_tls: bool) -> Result<Vec<String>, String> {
        let files = self.files(&format!("node-{k}"))?;
        let mut flags = Vec::new();
        for (flag, path) in [("--tls-cert", &files.cert), ("--tls-key", &files.key), ("--tls-ca", &files.ca)] {
            flags.extend([flag.to_string(), path.display().to_string()]);
        }
        if zk_tls {
            flags.push("--zk-tls".into());
        }
        Ok(flags)
    }

    /// The client `up` checks the nodes with: trusts the CA, presents a
    /// certificate of it.
    fn client(&self) -> Result<reqwest::Client, String> {
        let tls = Tls::load(self.files("up")?, ClientAuth::None, None)?;
        reqwest::Client::builder()
            .use_preconfigured_tls((*tls.client_config()).clone())
            .build()
            .map_err(|e| format!("cannot build the HTTPS client: {e}"))
    }
}

/// Port `base + k`, or a free one when `base` is 0.
fn port_from(base: u16, k: u32) -> Result<u16, String> {
    match base {
        0 => free_port(),
        base => u16::try_from(u32::from(base) + k).map_err(|_| format!("port {base} + {k} is out of range")),
    }
}

/// Everything `up` started. Dropped, it stops the nodes (leaves before the
/// root, so they leave cleanly) and then ZooKeeper.
struct Running {
    nodes: Vec<Child>,
    zk: Option<LocalZk>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.nodes.len() > 1 {
            stop_all(&mut self.nodes[1..], STOP_GRACE);
        }
        if let Some(root) = self.nodes.first_mut() {
            local::stop(root, STOP_GRACE);
        }
        if let Some(zk) = self.zk.as_mut() {
            zk.stop();
        }
    }
}

pub async fn run(args: UpArgs) -> Result<(), Failure> {
    args.validate().map_err(Failure::usage)?;
    let bin = std::env::current_exe().map_err(|e| format!("cannot find the treecache binary: {e}"))?;
    let logs = log_dir()?;
    let certs = if args.tls { Some(Certs::new(&logs)?) } else { None };
    let zk = start_or_check_zk(args.zk.as_deref(), certs.as_ref()).await?;
    // Nodes use the secure port of a private ZooKeeper; the tree is drawn
    // through its plain loopback port.
    let zk_addr = args.zk.clone().or_else(|| zk.as_ref().map(LocalZk::addr)).unwrap_or_default();
    let node_zk = zk.as_ref().and_then(LocalZk::secure_addr).unwrap_or_else(|| zk_addr.clone());
    let zk_tls = node_zk != zk_addr;
    let secret = match &args.cluster_secret_file {
        Some(file) => file.clone(),
        None => {
            let file = logs.join("cluster-secret");
            local::write_new_secret(&file)?;
            file
        }
    };
    let mut running = Running { nodes: Vec::new(), zk };
    println!("ZooKeeper  {zk_addr}{}", if args.zk.is_some() { "" } else { " (private, stopped with the tree)" });
    if zk_tls {
        println!("ZooKeeper  {node_zk} (TLS, the nodes' port)");
    }
    let http = match &certs {
        Some(certs) => certs.client()?,
        None => reqwest::Client::new(),
    };
    let scheme = if args.tls { "https" } else { "http" };
    let mut urls = Vec::new();
    let roles = args.roles();
    let progress = Progress::new(roles.len() as u32);
    let mut spread = false;
    for (k, role) in (0u32..).zip(roles) {
        if role == Role::Cache && !spread {
            // Every root is up: spread a fresh cluster's slots over the
            // groups before any cache (the routers) starts.
            spread_slots(&args, &zk_addr, &secret).await?;
            spread = true;
        }
        let port = args.port(k)?;
        let resp_port = args.resp_port(k)?;
        let url = format!("{scheme}://127.0.0.1:{port}");
        let log = logs.join(format!("node-{k}.log"));
        progress.starting(k, &url);
        // Another process answering /health on the port would pass for
        // the node, which meanwhile exits with "Address already in use".
        check_port_free(port, k, args.base_port, "--base-port")?;
        check_port_free(resp_port, k, args.resp_base_port, "--resp-base-port")?;
        let mut flags = args.flags(&node_zk, k, role, port, resp_port, &secret, &logs);
        if let Some(certs) = &certs {
            flags.extend(certs.node_flags(k, zk_tls)?);
        }
        running.nodes.push(spawn_node(&bin, &flags, &log)?);
        let child = running.nodes.last_mut();
        wait_healthy(&http, &url, HEALTH_TIMEOUT, child).await.map_err(|e| with_log(e, &log))?;
        progress.up(k, &url);
        urls.push((url, resp_port));
    }
    progress.finish();
    if !spread {
        spread_slots(&args, &zk_addr, &secret).await?;
    }
    print_nodes(&http, &urls).await;
    if let Some((_, resp)) = urls.last() {
        let tls = match &certs {
            Some(certs) => format!(" --tls --cacert {}", certs.dir.join("ca.pem").display()),
            None => String::new(),
        };
        println!("RESP (Redis protocol) on each node's resp port: redis-cli{tls} -p {resp}");
    }
    print_tree(&zk_addr, &args.cluster, args.nodes as usize).await;
    println!("cluster secret in {}", secret.display());
    if let Some(certs) = &certs {
        let ca = certs.dir.join("ca.pem");
        println!("TLS: nodes serve HTTPS; the throwaway CA is {} (its key was never written)", ca.display());
        println!("  curl --cacert {} {}/health", ca.display(), urls.first().map(|(url, _)| url.as_str()).unwrap_or(""));
    }
    println!("(another node joins with --cluster-secret-file and that file)");
    println!("logs in {}\nCtrl-C stops the tree.", logs.display());
    watch(&mut running.nodes).await;
    eprintln!("stopping {} nodes{}...", running.nodes.len(), if running.zk.is_some() { " and ZooKeeper" } else { "" });
    drop(running);
    eprintln!("stopped.");
    Ok(())
}

/// With `--groups` above 1, spreads the slots evenly over the groups, by a
/// conditional write, if the map is still the one a new cluster starts
/// with (every slot to group 0, epoch 1): its slots hold no keys yet, so
/// nothing needs to move. A cluster that ran before (`--zk`) keeps its map.
async fn spread_slots(args: &UpArgs, zk_addr: &str, secret_file: &Path) -> Result<(), Failure> {
    use crate::slots::SlotMap;
    use crate::tree::zk;
    if args.groups < 2 {
        return Ok(());
    }
    let text = std::fs::read_to_string(secret_file).map_err(|e| format!("{}: {e}", secret_file.display()))?;
    let secret = crate::auth::Secret::new(text.trim().to_string())?;
    let paths = Paths::with_secret(&args.cluster, &secret);
    let client = zk::connect(zk_addr, &paths, None).await.map_err(|e| e.to_string())?;
    let groups: Vec<u32> = (0..args.groups).collect();
    let (map, version) = zk::read_slots(&client, &paths)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "group 0's leader made no slot map".to_string())?;
    if map != SlotMap::single(0) {
        println!("slot map epoch {} kept (the cluster ran before): `treecache slots` shows it", map.epoch());
        return Ok(());
    }
    let even = SlotMap::even(&groups, map.epoch() + 1)?;
    if !zk::write_slots(&client, &paths, &even, version).await.map_err(|e| e.to_string())? {
        return Err("the slot map changed while up spread it; `treecache slots` shows it".to_string().into());
    }
    let ranges: Vec<String> = groups.iter().map(|&g| format!("group {g}: {}", even.ranges_of(g))).collect();
    println!("slots spread over {} groups (map epoch {}): {}", args.groups, even.epoch(), ranges.join(", "));
    Ok(())
}

/// A directory for the nodes' logs that outlives the run.
fn log_dir() -> Result<PathBuf, String> {
    tempfile::Builder::new()
        .prefix("treecache-up-")
        .tempdir()
        .map(tempfile::TempDir::keep)
        .map_err(|e| format!("cannot create a log directory: {e}"))
}

/// With `--zk`, checks that it answers (so a typo fails now, not after 30 s
/// of a root that cannot register); without, starts a private one.
/// With `certs` the private one also serves a secure client port.
async fn start_or_check_zk(zk: Option<&str>, certs: Option<&Certs>) -> Result<Option<LocalZk>, Failure> {
    match (zk, certs) {
        (Some(addr), _) => {
            zk_connect(addr, ZK_TIMEOUT).await.map_err(Failure::unavailable)?;
            Ok(None)
        }
        (None, Some(certs)) => {
            eprintln!("starting a private ZooKeeper with a TLS port...");
            Ok(LocalZk::start_tls(&certs.files("zookeeper")?).await.map(Some)?)
        }
        (None, None) => {
            eprintln!("starting a private ZooKeeper...");
            Ok(LocalZk::start().await.map(Some)?)
        }
    }
}

/// Fails when something already listens on node `k`'s loopback port
/// (`port`, from `base_port` given as `flag`).
fn check_port_free(port: u16, k: u32, base_port: u16, flag: &str) -> Result<(), Failure> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) => {
            let hint =
                if base_port == 0 { String::new() } else { format!(" (node k takes {flag} + k): pick another {flag}") };
            let who = if k == 0 { "the root".to_string() } else { format!("node {k}") };
            let message = format!("cannot start {who} on 127.0.0.1:{port}: {e}{hint}");
            Err(if base_port == 0 { Failure::from(message) } else { Failure::usage(message) })
        }
    }
}

fn with_log(error: String, log: &Path) -> String {
    format!("{error}\nlast lines of {}:\n{}", log.display(), log_tail(log, LOG_LINES))
}

/// One line per node from its /health, read once all have joined (so roles
/// are final): `node ID  URL  ROLE  depth D  parent P  resp PORT`.
async fn print_nodes(http: &reqwest::Client, nodes: &[(String, u16)]) {
    for (url, resp) in nodes {
        match wait_healthy(http, url, HEALTH_TIMEOUT, None).await {
            Ok(h) => println!("{}  resp {resp}", node_line(url, &h)),
            Err(e) => println!("node ?   {url}  {e}"),
        }
    }
}

/// Progress while nodes start, on stderr: a bar on a terminal, one line
/// per node otherwise (a log, a CI run).
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(nodes: u32) -> Progress {
        let bar = indicatif::ProgressBar::new(u64::from(nodes));
        let style = indicatif::ProgressStyle::with_template("{spinner} starting nodes {pos}/{len} [{bar:20}] {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar }
    }

    fn starting(&self, k: u32, url: &str) {
        self.bar.set_message(format!("{} {url}", if k == 0 { "root" } else { "node" }));
    }

    fn up(&self, k: u32, url: &str) {
        self.bar.inc(1);
        if self.bar.is_hidden() {
            eprintln!("started {}/{} {url}", k + 1, self.bar.length().unwrap_or(0));
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Formats a node's /health answer for [`print_nodes`].
pub fn node_line(url: &str, health: &serde_json::Value) -> String {
    let id = health["id"].as_u64().map_or("?".into(), |id| id.to_string());
    let role = health["role"].as_str().unwrap_or("?");
    let depth = health["depth"].as_u64().map_or("?".into(), |d| d.to_string());
    let parent = health["parent"].as_u64().map_or("-".into(), |p| p.to_string());
    format!("node {id:<3} {url:<23} {role:<5}  depth {depth}  parent {parent}")
}

/// Waits until ZooKeeper records all `n` nodes as live, then draws the tree
/// (as it is by then, if that takes longer than [`TREE_TIMEOUT`]).
async fn print_tree(zk: &str, cluster: &str, n: usize) {
    match read_complete_tree(zk, cluster, n).await {
        Ok(s) => println!("\n{}\n{}", tree::header(cluster, &s), tree::draw(&s)),
        Err(e) => eprintln!("cannot draw the tree: {e}"),
    }
}

async fn read_complete_tree(zk: &str, cluster: &str, n: usize) -> Result<tree::Snapshot, String> {
    let client = zk_connect(zk, ZK_TIMEOUT).await?;
    let paths = Paths::new(cluster);
    let deadline = Instant::now() + TREE_TIMEOUT;
    loop {
        let reading = tokio::time::timeout(ZK_TIMEOUT, tree::read_with(&client, &paths));
        let snapshot =
            reading.await.map_err(|_| format!("ZooKeeper at {zk} did not answer within {ZK_TIMEOUT:?}"))??;
        if complete(&snapshot, n) || Instant::now() > deadline {
            return Ok(snapshot);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn complete(s: &tree::Snapshot, n: usize) -> bool {
    s.records.len() == n && s.records.iter().all(|r| s.live.contains(&r.id())) && s.root.is_some()
}

/// Waits for Ctrl-C or SIGTERM; meanwhile reports nodes that exit.
async fn watch(nodes: &mut [Child]) {
    let signal = crate::process::wait_for_signal();
    tokio::pin!(signal);
    let mut reported = vec![false; nodes.len()];
    loop {
        tokio::select! {
            _ = &mut signal => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => report_exits(nodes, &mut reported),
        }
    }
}

fn report_exits(nodes: &mut [Child], reported: &mut [bool]) {
    for (k, child) in nodes.iter_mut().enumerate() {
        if let (false, Ok(Some(status))) = (reported[k], child.try_wait()) {
            eprintln!("node process {k} (pid {}) exited with {status}", child.id());
            reported[k] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    fn up(args: &[&str]) -> Result<UpArgs, String> {
        let cli = Cli::try_parse_from(std::iter::once("up").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        cli.up.validate().map(|_| cli.up)
    }

    #[test]
    fn defaults_are_seven_nodes_push_mode_free_ports() {
        let a = up(&[]).unwrap();
        assert_eq!((a.nodes, a.fanout, a.mode, a.base_port, a.zk, a.tls), (7, 2, Mode::Push, 0, None, false));
        assert_eq!(a.cluster, "default");
    }

    #[test]
    fn bad_combinations_are_refused_before_anything_starts() {
        assert!(up(&["--mode", "ttl"]).unwrap_err().contains("--max-age"));
        assert!(up(&["--max-age", "2s"]).unwrap_err().contains("only applies"));
        assert!(up(&["--mode", "ttl", "--max-age", "0s"]).unwrap_err().contains("greater than zero"));
        assert!(up(&["--cluster", "a/b"]).unwrap_err().contains("no '/'"));
        assert!(up(&["--base-port", "65530", "--nodes", "7"]).unwrap_err().contains("no room"));
        assert!(up(&["--resp-base-port", "65530", "--nodes", "7"]).unwrap_err().contains("--resp-base-port"));
        assert!(up(&["--base-port", "9000", "--resp-base-port", "9006"]).unwrap_err().contains("overlap"));
        assert!(up(&["--base-port", "9000", "--resp-base-port", "9007"]).is_ok());
        assert!(up(&["--nodes", "0"]).is_err());
        assert!(up(&["--base-port", "65529", "--nodes", "7"]).is_ok());
    }

    #[test]
    fn the_root_gets_the_mode_and_nodes_do_not() {
        let a = up(&["--mode", "ttl", "--max-age", "1.5s", "--fanout", "3", "--cluster", "c"]).unwrap();
        assert_eq!(
            a.flags("zk:1", 0, Role::Registrar, 9000, 6379, Path::new("/s"), Path::new("/logs")).join(" "),
            "--zk zk:1 --cluster c --listen 127.0.0.1:9000 --cluster-secret-file /s --resp-listen 127.0.0.1:6379 \
             --fanout 3 --root --mode ttl --max-age 1500ms"
        );
        assert_eq!(
            a.flags("zk:1", 2, Role::Cache, 9002, 6381, Path::new("/s"), Path::new("/logs")).join(" "),
            "--zk zk:1 --cluster c --listen 127.0.0.1:9002 --cluster-secret-file /s --resp-listen 127.0.0.1:6381 \
             --fanout 3"
        );
    }

    #[test]
    fn groups_and_standbys_start_every_root_first_each_with_its_group_and_data_dir() {
        let a = up(&["--nodes", "3", "--groups", "3", "--standbys", "1", "--cluster", "c"]).unwrap();
        let root = |g| Role::Root { group: g };
        assert_eq!(a.roles(), [Role::Registrar, root(0), root(1), root(1), root(2), root(2), Role::Cache, Role::Cache]);
        assert_eq!(a.processes(), 8);
        let flags = a.flags("zk:1", 4, root(2), 9004, 6383, Path::new("/s"), Path::new("/logs")).join(" ");
        assert!(flags.ends_with("--root --mode push --group 2 --data-dir /logs/node-4-data"), "{flags}");
        let flags = a.flags("zk:1", 1, root(0), 9001, 6380, Path::new("/s"), Path::new("/logs")).join(" ");
        assert!(flags.ends_with("--root --mode push --data-dir /logs/node-1-data"), "{flags}");
        // Ports for every process, roots included.
        assert!(up(&["--base-port", "65529", "--nodes", "7", "--standbys", "1"]).unwrap_err().contains("8 nodes"));
        assert!(up(&["--groups", "0"]).is_err());
        assert!(up(&["--groups", "65"]).is_err());
        assert!(up(&["--standbys", "9"]).is_err());
    }

    #[test]
    fn with_tls_every_node_advertises_https() {
        let a = up(&["--tls"]).unwrap();
        let flags = a.flags("zk:1", 1, Role::Cache, 9001, 6380, Path::new("/s"), Path::new("/logs")).join(" ");
        assert!(flags.contains("--advertise https://127.0.0.1:9001"), "{flags}");
    }

    #[test]
    fn ports_count_up_from_the_base_port() {
        let a = up(&["--base-port", "9000", "--resp-base-port", "6379"]).unwrap();
        assert_eq!((a.port(0).unwrap(), a.port(6).unwrap()), (9000, 9006));
        assert_eq!((a.resp_port(0).unwrap(), a.resp_port(6).unwrap()), (6379, 6385));
        let a = up(&["--base-port", "65535", "--nodes", "1"]).unwrap();
        assert!(a.port(1).unwrap_err().contains("out of range"));
        assert_ne!(up(&[]).unwrap().port(0).unwrap(), 0);
    }

    #[test]
    fn node_lines_show_id_role_depth_and_parent() {
        let h = serde_json::json!({"status":"ok","id":5,"role":"leaf","parent":2,"depth":2,"children":[],"epoch":1});
        assert_eq!(node_line("http://127.0.0.1:9004", &h), "node 5   http://127.0.0.1:9004   leaf   depth 2  parent 2");
        let root = serde_json::json!({"id":1,"role":"root","parent":null,"depth":0});
        assert!(node_line("http://r", &root).ends_with("root   depth 0  parent -"));
        assert!(node_line("http://x", &serde_json::json!({})).starts_with("node ?"));
    }

    #[tokio::test]
    async fn an_unreachable_zookeeper_fails_fast() {
        let port = free_port().unwrap();
        let a = up(&["--zk", &format!("127.0.0.1:{port}"), "--nodes", "1"]).unwrap();
        let err = run(a).await.unwrap_err();
        assert_eq!(err.exit, super::super::Exit::Unavailable);
        assert!(err.message.contains("cannot reach ZooKeeper"), "{}", err.message);
    }
}
