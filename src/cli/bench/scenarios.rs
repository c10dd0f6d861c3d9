//! The scenarios that load a running tree (hit, miss, write, mixed,
//! converge) and the `url` baseline: each sets up its keys, runs the load
//! engine and shapes the report.
//!
//! Set-up writes go to the root with `ack=root`, so when the load starts
//! the root has every key; `hit` and `mixed` then read each key once at
//! each target so the targets hold them; `miss` uses keys nobody has read.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::dist::{KeyChooser, ValuePool};
use super::lag::{self, LagHistogram, NodeScrape, PushLag};
use super::load::{self, Answer, Connections, Load, Method, Request, Workload};
use super::report::{self, Converge, Latency, Level, LevelCost, Phase, Report, Tally};
use super::topo::{self, TreeNode};
use super::{Plan, Scenario, Targets};
use crate::client::{Ack, Client};

/// A prefix no earlier run used, for keys that must be cold.
fn fresh_prefix(prefix: &str, what: &str) -> String {
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    format!("{prefix}-{what}-{:x}{:x}-", nonce, std::process::id())
}

/// GETs and PUTs of keys `prefix0..prefix{keys}` spread over `targets`:
/// worker i sticks to target i mod n.
struct Kv {
    targets: Vec<String>,
    prefix: String,
    chooser: KeyChooser,
    values: ValuePool,
    read_pct: u32,
    ack: Ack,
}

impl Workload for Kv {
    fn nodes(&self) -> &[String] {
        &self.targets
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn request(&self, n: u64, worker: usize, rng: &mut StdRng) -> Option<Request> {
        let node = worker % self.targets.len();
        let key = self.chooser.pick(n, rng);
        let read = self.read_pct >= 100 || (self.read_pct > 0 && rng.gen_range(0..100) < self.read_pct);
        Some(if read { Request::get(node, key) } else { Request::put(node, key, self.values.value(rng), self.ack) })
    }
}

/// Writes keys `0..keys` once each through one node (`base`) with `ack=root`.
struct Prefill {
    base: [String; 1],
    prefix: String,
    keys: u64,
    values: ValuePool,
}

impl Workload for Prefill {
    fn nodes(&self) -> &[String] {
        &self.base
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn request(&self, n: u64, _worker: usize, rng: &mut StdRng) -> Option<Request> {
        (n < self.keys).then(|| Request::put(0, n, self.values.value(rng), Ack::Root))
    }
}

/// Reads keys `0..keys` once each at every target.
struct Warm {
    targets: Vec<String>,
    prefix: String,
    keys: u64,
}

impl Workload for Warm {
    fn nodes(&self) -> &[String] {
        &self.targets
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn request(&self, n: u64, _worker: usize, _rng: &mut StdRng) -> Option<Request> {
        let t = self.targets.len() as u64;
        let key = n / t;
        (key < self.keys).then(|| Request::get((n % t) as usize, key))
    }
}

/// Reads each cold key once at one node; runs out after `keys`.
struct ColdReads {
    target: [String; 1],
    prefix: String,
    keys: u64,
}

impl Workload for ColdReads {
    fn nodes(&self) -> &[String] {
        &self.target
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn request(&self, n: u64, _worker: usize, _rng: &mut StdRng) -> Option<Request> {
        (n < self.keys).then(|| Request::get(0, n))
    }
}

/// GET one URL, any server's.
struct Url([String; 1]);

impl Workload for Url {
    fn nodes(&self) -> &[String] {
        &self.0
    }

    fn request(&self, n: u64, _worker: usize, _rng: &mut StdRng) -> Option<Request> {
        Some(Request { method: Method::Url, ..Request::get(0, n) })
    }
}

/// A set-up step: runs `workload` to its end and fails on any error.
async fn setup<W: Workload>(
    what: &str,
    plan: &Plan,
    conns: &Connections,
    workload: W,
    count: u64,
) -> Result<(), String> {
    let load = Load {
        connections: plan.load.connections,
        duration: None,
        requests: Some(count),
        rate: None,
        timeout: plan.load.timeout,
        progress: plan.load.progress,
        seed: None,
    };
    let (phase, _, _) = load::run(what, vec![], &load, conns, Arc::new(workload)).await?;
    if phase.error_count() > 0 {
        return Err(format!(
            "{what}: {} of {} requests failed: {:?}",
            phase.error_count(),
            phase.requests,
            phase.errors
        ));
    }
    Ok(())
}

async fn prefill(plan: &Plan, conns: &Connections, base: &str, prefix: &str, keys: u64) -> Result<(), String> {
    let values = ValuePool::new(plan.sizes, &mut StdRng::from_entropy());
    let w = Prefill { base: [base.to_string()], prefix: prefix.to_string(), keys, values };
    setup("prefill", plan, conns, w, keys).await
}

async fn warm(plan: &Plan, conns: &Connections, targets: &[String], prefix: &str, keys: u64) -> Result<(), String> {
    let w = Warm { targets: targets.to_vec(), prefix: prefix.to_string(), keys };
    setup("warm", plan, conns, w, keys * targets.len() as u64).await
}

/// The tree, if the flags name one; the root URL; the nodes to load.
struct Place {
    tree: Vec<TreeNode>,
    root: String,
    targets: Vec<String>,
}

async fn place(plan: &Plan, http: &reqwest::Client) -> Result<Place, String> {
    let from = plan.root.clone().or_else(|| plan.nodes.first().cloned()).ok_or("no --root or --node")?;
    let tree = topo::discover(http, &from).await?;
    let root = tree.first().map(|n| n.url.clone()).ok_or("the tree has no nodes")?;
    let targets = if !plan.nodes.is_empty() {
        plan.nodes.clone()
    } else {
        match plan.targets {
            Targets::One => topo::deepest(&tree).map(|n| vec![n.url.clone()]).unwrap_or_default(),
            Targets::Leaves => tree.iter().filter(|n| n.is_leaf()).map(|n| n.url.clone()).collect(),
            Targets::All => tree.iter().map(|n| n.url.clone()).collect(),
        }
    };
    Ok(Place { tree, root, targets })
}

fn setup_client(plan: &Plan) -> Result<reqwest::Client, String> {
    super::load::client_builder(&plan.headers, plan.tls.as_ref())
        .timeout(plan.load.timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Runs the warm-up (if asked), then the measured phase.
async fn measure<W: Workload>(
    plan: &Plan,
    name: &str,
    targets: Vec<String>,
    conns: &Connections,
    workload: Arc<W>,
) -> Result<(Phase, Tally, bool), String> {
    if let Some(w) = plan.warmup {
        let warm = Load { duration: Some(w), requests: None, ..plan.load.clone() };
        load::run("warm-up", targets.clone(), &warm, conns, workload.clone()).await?;
    }
    load::run(name, targets, &plan.load, conns, workload).await
}

fn single(plan: &Plan, phase: Phase) -> Report {
    Report {
        scenario: plan.scenario.name().into(),
        settings: plan.settings(),
        total: Phase { name: "total".into(), ..phase.clone() },
        phases: vec![phase],
        ..Default::default()
    }
}

pub async fn run(plan: &Plan) -> Result<Report, String> {
    let conns = Connections::new(plan.load.connections, plan.load.timeout, &plan.headers, plan.tls.as_ref())?;
    match plan.scenario {
        Scenario::Url => {
            let url = plan.url.clone().ok_or("bench url needs --url")?;
            let (phase, _, _) = measure(plan, "url", vec![url.clone()], &conns, Arc::new(Url([url.clone()]))).await?;
            Ok(single(plan, phase))
        }
        Scenario::Hit | Scenario::Write | Scenario::Mixed => kv(plan, &conns).await,
        Scenario::Miss => miss(plan, &conns).await,
        Scenario::Converge => converge(plan, &conns).await,
        Scenario::Policy => Err("bench policy runs in process (bench::policy)".into()),
        Scenario::Churn => Err("churn starts its own tree (bench::churn)".into()),
        Scenario::Scale => Err("scale is not a load scenario".into()),
        Scenario::Capacity => Err("capacity starts its own clusters (bench::capacity)".into()),
    }
}

async fn kv(plan: &Plan, conns: &Connections) -> Result<Report, String> {
    let http = setup_client(plan)?;
    let place = place(plan, &http).await?;
    let prefix = format!("{}-", plan.prefix);
    let reads = plan.scenario != Scenario::Write;
    if reads && plan.prefill {
        prefill(plan, conns, &place.root, &prefix, plan.keys).await?;
    }
    if reads {
        warm(plan, conns, &place.targets, &prefix, plan.keys).await?;
    }
    let mut rng = StdRng::from_entropy();
    let workload = Kv {
        targets: place.targets.clone(),
        prefix,
        chooser: plan.chooser.clone(),
        values: ValuePool::new(plan.sizes, &mut rng),
        read_pct: plan.read_pct,
        ack: plan.ack,
    };
    let (phase, _, _) = measure(plan, plan.scenario.name(), place.targets.clone(), conns, Arc::new(workload)).await?;
    let mut report = single(plan, phase);
    if reads && plan.targets != Targets::One && plan.nodes.is_empty() {
        report.notes.push(format!("connections spread over {} nodes", place.targets.len()));
    }
    report.notes.push(format!("tree: {} nodes, depth {}", place.tree.len(), max_depth(&place.tree)));
    Ok(report)
}

fn max_depth(tree: &[TreeNode]) -> u32 {
    tree.iter().map(|n| n.depth).max().unwrap_or(0)
}

/// Cold reads at one node per depth. Depth 0 is the root, which holds
/// every key: its latency is the floor; each depth below adds one hop.
async fn miss(plan: &Plan, conns: &Connections) -> Result<Report, String> {
    let http = setup_client(plan)?;
    let place = place(plan, &http).await?;
    let mut chosen: Vec<TreeNode> = topo::one_per_depth(&place.tree).into_iter().cloned().collect();
    if let Some(url) = plan.nodes.first() {
        // --node picks the deepest node to read at; the others stay one per depth above it.
        if let Some(n) = place.tree.iter().find(|n| &n.url == url) {
            chosen.retain(|c| c.depth < n.depth);
            chosen.push(n.clone());
        }
    }
    let mut phases = Vec::new();
    let mut total = Tally::default();
    let mut levels: Vec<Level> = Vec::new();
    let mut notes = Vec::new();
    for node in &chosen {
        let prefix = fresh_prefix(&plan.prefix, &format!("miss-d{}", node.depth));
        prefill(plan, conns, &place.root, &prefix, plan.keys).await?;
        let w = ColdReads { target: [node.url.clone()], prefix, keys: plan.keys };
        let name = format!("depth {}", node.depth);
        let (phase, tally, exhausted) =
            load::run(&name, vec![node.url.clone()], &plan.load, conns, Arc::new(w)).await?;
        if exhausted {
            notes.push(format!(
                "depth {}: ran out of cold keys after {} reads (raise --keys for longer runs)",
                node.depth, phase.requests
            ));
        }
        total.merge(&tally);
        let prev = levels.last();
        levels.push(Level {
            depth: node.depth,
            node_id: node.id,
            url: node.url.clone(),
            p50_us: phase.latency.p50_us,
            p99_us: phase.latency.p99_us,
            extra_p50_us: prev.map(|p| phase.latency.p50_us as i64 - p.p50_us as i64),
            extra_p99_us: prev.map(|p| phase.latency.p99_us as i64 - p.p99_us as i64),
            hit_ratio: phase.hit_ratio,
        });
        phases.push(phase);
    }
    let per_level = match (levels.first(), levels.last()) {
        (Some(top), Some(bottom)) if bottom.depth > top.depth => {
            let d = (bottom.depth - top.depth) as f64;
            Some(LevelCost {
                p50_us: (bottom.p50_us as f64 - top.p50_us as f64) / d,
                p99_us: (bottom.p99_us as f64 - top.p99_us as f64) / d,
            })
        }
        _ => {
            notes.push("the tree has one level: no per-level cost".into());
            None
        }
    };
    let elapsed = Duration::from_secs_f64(phases.iter().map(|p| p.elapsed_s).sum());
    let targets = chosen.iter().map(|n| n.url.clone()).collect();
    Ok(Report {
        scenario: "miss".into(),
        settings: plan.settings(),
        total: total.phase("total", targets, elapsed),
        phases,
        levels: Some(levels),
        per_level,
        notes,
        ..Default::default()
    })
}

/// Convergence of one run: the write side records, poll tasks fill in.
struct Tracker {
    holders: Vec<Client>,
    prefix: String,
    poll_interval: Duration,
    timeout: Duration,
    state: Mutex<TrackState>,
}

struct TrackState {
    all: Histogram<u64>,
    each: Histogram<u64>,
    converged: u64,
    not_converged: u64,
    polls: u64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Tracker {
    /// Polls every holder until it serves `version` of `key` or the
    /// deadline passes; records the time from `sent`.
    async fn follow(self: Arc<Self>, key: u64, version: u64, sent: Instant) {
        let deadline = sent + self.timeout;
        let key = format!("{}{key}", self.prefix);
        let waits = self.holders.iter().map(|h| self.until_served(h, &key, version, deadline));
        let results = futures::future::join_all(waits).await;
        let mut state = self.state.lock();
        let mut slowest = Some(Duration::ZERO);
        for (seen_at, polls) in results {
            state.polls += polls;
            match seen_at {
                Some(at) => {
                    let d = at - sent;
                    report::record(&mut state.each, d);
                    slowest = slowest.map(|s| s.max(d));
                }
                None => slowest = None,
            }
        }
        match slowest {
            Some(d) => {
                report::record(&mut state.all, d);
                state.converged += 1;
            }
            None => state.not_converged += 1,
        }
    }

    /// When `holder` first served `key` at `version` or newer, and the polls it took.
    async fn until_served(
        &self,
        holder: &Client,
        key: &str,
        version: u64,
        deadline: Instant,
    ) -> (Option<Instant>, u64) {
        let mut polls = 0;
        loop {
            polls += 1;
            if let Ok(found) = holder.get(key).await {
                if found.version().is_some_and(|v| v >= version) {
                    return (Some(Instant::now()), polls);
                }
            }
            if Instant::now() >= deadline {
                return (None, polls);
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }
}

/// `ack=root` writes at one node; each answered write starts a [`Tracker::follow`].
struct ConvergeWrites {
    writer: [String; 1],
    prefix: String,
    chooser: KeyChooser,
    values: ValuePool,
    /// `None` with `--no-poll`.
    tracker: Option<Arc<Tracker>>,
}

impl Workload for ConvergeWrites {
    fn nodes(&self) -> &[String] {
        &self.writer
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn request(&self, n: u64, _worker: usize, rng: &mut StdRng) -> Option<Request> {
        let key = self.chooser.pick(n, rng);
        Some(Request { want_version: true, ..Request::put(0, key, self.values.value(rng), Ack::Root) })
    }

    fn answered(&self, req: &Request, answer: &Answer) {
        if let (Some(v), Some(tracker)) = (answer.version, &self.tracker) {
            let task = tokio::spawn(tracker.clone().follow(req.key, v, answer.sent));
            tracker.state.lock().tasks.push(task);
        }
    }
}

/// Every node's `/metrics` as converge reads it (`None` for a node that
/// did not answer).
async fn scrape_nodes(http: &reqwest::Client, nodes: &[String]) -> Vec<Option<NodeScrape>> {
    let scrapes = nodes.iter().map(|n| async move {
        let text = http.get(format!("{n}/metrics")).send().await.ok()?.text().await.ok()?;
        Some(NodeScrape::parse(&text))
    });
    futures::future::join_all(scrapes).await
}

fn total_count(scrapes: &[Option<NodeScrape>]) -> u64 {
    scrapes.iter().flatten().filter_map(|s| s.lag.as_ref()).map(LagHistogram::count).sum()
}

/// The scrapes once pushes have stopped arriving: scraped until two
/// scrapes a little apart count the same (or `limit` passes).
async fn settled_scrapes(http: &reqwest::Client, nodes: &[String], limit: Duration) -> Vec<Option<NodeScrape>> {
    let deadline = Instant::now() + limit;
    let mut last = scrape_nodes(http, nodes).await;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = scrape_nodes(http, nodes).await;
        if total_count(&now) == total_count(&last) || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// The run's push lag over every node scraped both before and after.
fn push_lag(before: &[Option<NodeScrape>], after: &[Option<NodeScrape>]) -> Option<PushLag> {
    let lag = |s: &Option<NodeScrape>| s.as_ref().and_then(|s| s.lag.clone());
    let mut total = LagHistogram::default();
    let mut nodes = 0;
    for (b, a) in before.iter().zip(after) {
        if let (Some(b), Some(a)) = (lag(b), lag(a)) {
            total.add(&a.since(&b));
            nodes += 1;
        }
    }
    (nodes > 0).then(|| PushLag::of(&total, nodes))
}

async fn converge(plan: &Plan, conns: &Connections) -> Result<Report, String> {
    let http = setup_client(plan)?;
    let place = place(plan, &http).await?;
    let writer = match plan.nodes.first() {
        Some(n) => n.clone(),
        None => topo::deepest(&place.tree).map(|n| n.url.clone()).ok_or("the tree has no nodes")?,
    };
    let holders: Vec<String> = place.tree.iter().map(|n| n.url.clone()).collect();
    let prefix = fresh_prefix(&plan.prefix, "converge");
    prefill(plan, conns, &place.root, &prefix, plan.keys).await?;
    warm(plan, conns, &holders, &prefix, plan.keys).await?;
    let poll_http = super::load::client_builder(&plan.headers, plan.tls.as_ref())
        .pool_max_idle_per_host(64)
        .timeout(plan.load.timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let tracker = Arc::new(Tracker {
        holders: load::clients(&holders, &poll_http)?,
        prefix: prefix.clone(),
        poll_interval: plan.poll_interval,
        timeout: plan.converge_timeout,
        state: Mutex::new(TrackState {
            all: report::new_histogram(),
            each: report::new_histogram(),
            converged: 0,
            not_converged: 0,
            polls: 0,
            tasks: Vec::new(),
        }),
    });
    let workload = ConvergeWrites {
        writer: [writer.clone()],
        prefix,
        chooser: plan.chooser.clone(),
        values: ValuePool::new(plan.sizes, &mut StdRng::from_entropy()),
        tracker: plan.poll.then(|| tracker.clone()),
    };
    let scrapes_before = scrape_nodes(&poll_http, &holders).await;
    let (phase, _, _) = load::run("writes", vec![writer.clone()], &plan.load, conns, Arc::new(workload)).await?;
    // Every follow ends by its deadline, so this wait is bounded.
    let tasks = std::mem::take(&mut tracker.state.lock().tasks);
    for t in tasks {
        let _ = t.await;
    }
    let scrapes_after = settled_scrapes(&poll_http, &holders, plan.converge_timeout).await;
    let (cpu_seconds, processes) = lag::cpu_spent(&scrapes_before, &scrapes_after);
    let state = tracker.state.lock();
    let converge = Converge {
        writer,
        holders: holders.len(),
        writes: phase.ok,
        polled: plan.poll,
        converged: state.converged,
        not_converged: state.not_converged,
        all_holders: Latency::of(&state.all),
        per_holder: Latency::of(&state.each),
        polls: state.polls,
        push_lag: push_lag(&scrapes_before, &scrapes_after),
        cpu_us_per_write: (processes > 0 && phase.ok > 0).then(|| cpu_seconds * 1e6 / phase.ok as f64),
        processes,
    };
    let mut report = single(plan, phase);
    if converge.not_converged > 0 {
        report.notes.push(format!(
            "{} writes did not reach every holder within {:?}",
            converge.not_converged, plan.converge_timeout
        ));
    }
    if converge.push_lag.is_none() {
        report.notes.push("no node exported treecache_push_lag_seconds: no push lag".into());
    }
    if processes < holders.len() {
        report.notes.push(format!(
            "CPU per write: {} of {} nodes did not answer /metrics with process_cpu_seconds_total before and \
             after the writes; their CPU is not in the sum",
            holders.len() - processes,
            holders.len()
        ));
    }
    report.notes.push(format!("tree: {} nodes, depth {}", place.tree.len(), max_depth(&place.tree)));
    report.converge = Some(converge);
    Ok(report)
}
