//! A seeded random workload for the history checker: client tasks doing
//! reads, consistent reads, puts and deletes at random live nodes over a
//! small key space, a fault schedule drawn from the same seed, and the
//! quiet final read the convergence check needs.
//!
//! The clients and the final read only know [`Nodes`] (URLs, which are up,
//! incarnations), not how the cluster is made, so another test (standby
//! roots, leader kills) can drive its own faults and reuse them: mark a
//! node down before killing it, [`Nodes::restarted`] once it is back.
//!
//! The seed fixes every client's choices and the fault schedule; timing is
//! the machine's, so a replay reproduces the workload, not the interleaving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use super::history::{Ack, Final, History, Kind, NodeRef, Outcome, FINAL_PROCESS};
use super::Cluster;
use treecache::client::{self as kv, Error, PutOptions};

/// The seed: `TREECACHE_SEED` when set, otherwise random; printed either way.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("TREECACHE_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("TREECACHE_SEED={s:?} is not a u64")),
        Err(_) => rand::random(),
    };
    eprintln!("{test}: seed {seed} (replay: TREECACHE_SEED={seed} cargo test --test history {test})");
    seed
}

#[derive(Debug, Clone)]
struct Slot {
    url: String,
    id: Option<u64>,
    incarnation: u32,
    up: bool,
}

/// The nodes clients may address: URL, id, incarnation, up or not.
#[derive(Clone)]
pub struct Nodes {
    slots: Arc<Mutex<Vec<Slot>>>,
}

impl Nodes {
    /// Every running node of the cluster, up.
    pub fn of(cluster: &Cluster) -> Nodes {
        let alive = cluster.alive();
        let slots = (0..cluster.len())
            .map(|i| Slot { url: cluster.url(i), id: cluster.id_of(i), incarnation: 0, up: alive.contains(&i) })
            .collect();
        Nodes { slots: Arc::new(Mutex::new(slots)) }
    }

    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }

    pub fn node(&self, i: usize) -> (NodeRef, String) {
        let slots = self.slots.lock();
        let s = &slots[i];
        (NodeRef { index: i, id: s.id, incarnation: s.incarnation }, s.url.clone())
    }

    pub fn up(&self) -> Vec<usize> {
        self.slots.lock().iter().enumerate().filter(|(_, s)| s.up).map(|(i, _)| i).collect()
    }

    /// Clients stop sending to node `i` (it is about to be killed).
    pub fn down(&self, i: usize) {
        self.slots.lock()[i].up = false;
    }

    /// Node `i` runs again as a new process (a new incarnation), with `id`.
    pub fn restarted(&self, i: usize, id: Option<u64>) {
        let mut slots = self.slots.lock();
        let s = &mut slots[i];
        s.incarnation += 1;
        s.id = id;
        s.up = true;
    }

    fn pick(&self, rng: &mut StdRng) -> Option<(NodeRef, String)> {
        let up = self.up();
        if up.is_empty() {
            return None;
        }
        Some(self.node(up[rng.gen_range(0..up.len())]))
    }
}

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    /// Keys `k0`..: the first `hot` take half the operations (they collide
    /// all the time); the rest are written rarely, so a lost write there is
    /// seldom hidden behind a later one.
    pub keys: usize,
    pub hot: usize,
    /// Percent of puts that go to a fresh key of their own (`f{process}-{n}`),
    /// written once and never superseded: any loss of one shows at the end.
    pub fresh_percent: u32,
    /// Weights of plain reads, consistent reads, puts and deletes.
    pub mix: [u32; 4],
    /// Percent of writes sent with `ack=root`.
    pub ack_root_percent: u32,
    /// Pause between one client's operations, drawn from this range.
    pub think_ms: (u64, u64),
    /// Every request's timeout.
    pub timeout: Duration,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            clients: 6,
            keys: 24,
            hot: 4,
            fresh_percent: 15,
            mix: [50, 15, 30, 5],
            ack_root_percent: 50,
            think_ms: (5, 30),
            timeout: Duration::from_secs(4),
        }
    }
}

impl Workload {
    pub fn key_names(&self) -> Vec<String> {
        (0..self.keys).map(|k| format!("k{k}")).collect()
    }

    /// Starts the clients; each stops once `stop` is set, or on its own at
    /// `until`, and returns how many operations it made.
    pub fn spawn(
        &self,
        seed: u64,
        nodes: &Nodes,
        history: &History,
        stop: &Arc<AtomicBool>,
        until: Instant,
    ) -> Vec<JoinHandle<usize>> {
        (0..self.clients)
            .map(|p| {
                let rng = StdRng::seed_from_u64(seed ^ (p as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let client = Client {
                    process: p,
                    rng,
                    work: self.clone(),
                    nodes: nodes.clone(),
                    history: history.clone(),
                    http: http_client(self.timeout),
                };
                tokio::spawn(client.run(stop.clone(), until))
            })
            .collect()
    }
}

fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).connect_timeout(Duration::from_secs(1)).build().expect("HTTP client")
}

struct Client {
    process: usize,
    rng: StdRng,
    work: Workload,
    nodes: Nodes,
    history: History,
    http: reqwest::Client,
}

impl Client {
    async fn run(mut self, stop: Arc<AtomicBool>, until: Instant) -> usize {
        let mut n = 0;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            if let Some((node, url)) = self.nodes.pick(&mut self.rng) {
                self.one(n, node, &url).await;
                n += 1;
            }
            let (lo, hi) = self.work.think_ms;
            tokio::time::sleep(Duration::from_millis(self.rng.gen_range(lo..=hi))).await;
        }
        n
    }

    async fn one(&mut self, n: usize, node: NodeRef, url: &str) {
        let hot = self.work.hot.clamp(1, self.work.keys);
        let k = if self.rng.gen_bool(0.5) { self.rng.gen_range(0..hot) } else { self.rng.gen_range(0..self.work.keys) };
        let key = format!("k{k}");
        let total: u32 = self.work.mix.iter().sum();
        let mut roll = self.rng.gen_range(0..total.max(1));
        let mut kind = Kind::Get;
        for (k, w) in [Kind::Get, Kind::GetConsistent, Kind::Put, Kind::Delete].into_iter().zip(self.work.mix) {
            if roll < w {
                kind = k;
                break;
            }
            roll -= w;
        }
        let ack = kind.is_write().then(|| {
            if self.rng.gen_range(0..100) < self.work.ack_root_percent {
                Ack::Root
            } else {
                Ack::Parent
            }
        });
        let value = (kind == Kind::Put).then(|| format!("p{}-{n}", self.process));
        let key = if kind == Kind::Put && self.rng.gen_range(0..100) < self.work.fresh_percent {
            format!("f{}-{n}", self.process)
        } else {
            key
        };
        let id = self.history.invoke(self.process, node, kind, &key, value.clone(), ack);
        let outcome = request(&self.http, url, kind, &key, value, ack).await;
        self.history.complete(id, outcome);
    }
}

/// One request, through the client, and what it says about the cluster.
pub async fn request(
    http: &reqwest::Client,
    url: &str,
    kind: Kind,
    key: &str,
    value: Option<String>,
    ack: Option<Ack>,
) -> Outcome {
    let client = kv::Client::builder(url).http_client(http.clone()).build().expect("a client of /kv");
    let ack = ack.unwrap_or_default();
    let written = match kind {
        Kind::Get | Kind::GetConsistent => {
            let found = match kind {
                Kind::Get => client.get(key).await,
                _ => client.get_consistent(key).await,
            };
            return match found {
                Ok(f) => {
                    Outcome::Ok { version: f.version(), value: Some(String::from_utf8_lossy(f.value()).into_owned()) }
                }
                Err(Error::NotFound { reply, .. }) => Outcome::NotFound { version: header_version(&reply.headers) },
                Err(e) => failed(&e, |status| Outcome::Fail { status }),
            };
        }
        Kind::Put => client.put_with(key, value.unwrap_or_default(), PutOptions { ack, ttl: None }).await,
        Kind::Delete => client.del_with(key, ack).await,
    };
    match written {
        Ok(w) => Outcome::Written { version: w.version() },
        Err(e) if e.is_not_found() && kind == Kind::Delete => Outcome::NotFound { version: None },
        Err(e) => failed(&e, |status| match status {
            400..=499 => Outcome::Fail { status },
            _ => Outcome::Unknown { why: e.to_string() },
        }),
    }
}

/// A failed request: no answer is [`Outcome::Unknown`]; an answer's status
/// goes to `by_status`.
fn failed(e: &Error, by_status: impl FnOnce(u16) -> Outcome) -> Outcome {
    match e {
        Error::Transport { source, .. } => Outcome::Unknown { why: short(source) },
        e => match e.status() {
            Some(status) => by_status(status.as_u16()),
            None => Outcome::Unknown { why: e.to_string() },
        },
    }
}

fn header_version(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers.get("x-version").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

fn short(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        e.to_string()
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// kill -9 a live inner node (children) and start it again.
    KillInner,
    /// kill -9 a live leaf and start it again.
    KillLeaf,
    /// kill -9 the root and start it again (with standby roots, the
    /// leader: the chaos test of issue 11).
    KillRoot,
    /// SIGSTOP the root for this long, then SIGCONT.
    PauseRoot(Duration),
    /// SIGSTOP ZooKeeper for this long, then SIGCONT.
    PauseZk(Duration),
    /// `treecache slots move` of a few slots around a workload key's to
    /// another root group (two groups, 0 and 1), waited for.
    MoveSlots,
    /// kill -9 root group G's leader and start it again (its standby
    /// takes over; it comes back as a standby).
    KillGroupLeader(u32),
    /// SIGSTOP root group G's leader for this long, then SIGCONT.
    PauseGroupLeader(u32, Duration),
}

/// The session timeout of every node (`SESSION_TIMEOUT` in src/tree/zk.rs).
pub const SESSION: Duration = Duration::from_secs(6);

/// A schedule drawn from `seed`: each step once, in a random order, with a
/// random gap (ms) before each. The root pause outlasts the session.
pub fn schedule(seed: u64, steps: &[Step], gap_ms: (u64, u64)) -> Vec<(Duration, Step)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xFA17);
    let mut steps = steps.to_vec();
    for i in (1..steps.len()).rev() {
        steps.swap(i, rng.gen_range(0..=i));
    }
    steps.into_iter().map(|s| (Duration::from_millis(rng.gen_range(gap_ms.0..=gap_ms.1)), s)).collect()
}

/// How long a killed node may take to come back healthy.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the schedule against `cluster`, recording each fault in `history`;
/// stops starting new faults after `until`. Returns the nodes that did not
/// come back healthy (they stay down).
pub async fn run_faults(
    cluster: &mut Cluster,
    nodes: &Nodes,
    history: &History,
    seed: u64,
    plan: &[(Duration, Step)],
    until: Instant,
) -> Vec<(usize, String)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC0FFEE);
    let mut unhealthy = Vec::new();
    for &(gap, step) in plan {
        tokio::time::sleep(gap).await;
        if Instant::now() >= until {
            break;
        }
        match step {
            Step::KillInner | Step::KillLeaf => {
                let want = if matches!(step, Step::KillInner) { "inner" } else { "leaf" };
                let Some(i) = pick_role(cluster, nodes, want, &mut rng).await else { continue };
                let what = format!("kill -9 node {i} ({want}) and restart");
                unhealthy.extend(kill_and_restart(cluster, nodes, history, i, what).await);
            }
            Step::KillRoot => {
                let Some(i) = root_index(cluster, nodes).await else { continue };
                let what = format!("kill -9 root (node {i}) and restart");
                unhealthy.extend(kill_and_restart(cluster, nodes, history, i, what).await);
            }
            Step::PauseRoot(hold) => {
                let Some(i) = root_index(cluster, nodes).await else { continue };
                let f = history.fault(format!("SIGSTOP root (node {i}) for {hold:?}"), Some(i), false);
                cluster.pause(i);
                tokio::time::sleep(hold).await;
                cluster.resume(i);
                history.fault_end(f);
            }
            Step::PauseZk(hold) => {
                let f = history.fault(format!("SIGSTOP ZooKeeper for {hold:?}"), None, false);
                cluster.zk.pause();
                tokio::time::sleep(hold).await;
                cluster.zk.resume();
                history.fault_end(f);
            }
            Step::MoveSlots => {
                let key = format!("k{}", rng.gen_range(0..24));
                let slot = treecache::slots::slot_of(&key);
                let (a, b) = (slot.saturating_sub(rng.gen_range(0..40)), (slot + rng.gen_range(0..40)).min(1023));
                let map = slot_map(cluster).await;
                let to = 1 - map.owner(slot).min(1);
                let f = history.fault(
                    format!("slots move --slots {a}-{b} --to {to} (around {key}'s slot {slot})"),
                    None,
                    false,
                );
                let out = move_slots(cluster, a, b, to).await;
                history.fault_end(f);
                assert!(out.status.success(), "slots move {a}-{b} to {to}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Step::PauseGroupLeader(group, hold) => {
                let Some(i) = group_leader(cluster, nodes, group).await else { continue };
                let f =
                    history.fault(format!("SIGSTOP group {group}'s leader (node {i}) for {hold:?}"), Some(i), false);
                cluster.pause(i);
                tokio::time::sleep(hold).await;
                cluster.resume(i);
                history.fault_end(f);
            }
            Step::KillGroupLeader(group) => {
                let Some(i) = group_leader(cluster, nodes, group).await else { continue };
                let what = format!("kill -9 group {group}'s leader (node {i}) and restart");
                unhealthy.extend(kill_and_restart(cluster, nodes, history, i, what).await);
            }
        }
    }
    unhealthy
}

/// kill -9 node `i` and start it again as a new incarnation; the node and
/// why, when it does not come back healthy (it stays down).
async fn kill_and_restart(
    cluster: &mut Cluster,
    nodes: &Nodes,
    history: &History,
    i: usize,
    what: String,
) -> Option<(usize, String)> {
    nodes.down(i);
    let f = history.fault(what, Some(i), true);
    let result = cluster.restart_within(i, RESTART_TIMEOUT).await;
    history.fault_end(f);
    match result {
        Ok(id) => {
            nodes.restarted(i, Some(id));
            None
        }
        Err(e) => Some((i, e)),
    }
}

/// /health of node `i`, with a short timeout.
/// Every live node is registered in the root's epoch, has handed its
/// parent every write it took and has heard the outcome of each: nothing
/// is still on its way to the root.
async fn tree_settled(http: &reqwest::Client, nodes: &Nodes, root_url: &str) -> bool {
    let Some(epoch) = health(http, root_url).await.and_then(|h| h["epoch"].as_u64()) else { return false };
    for i in nodes.up() {
        let url = nodes.node(i).1;
        let Some(h) = health(http, &url).await else { return false };
        if other_group(&h) {
            // Another group's root: its own epoch line, nothing queued up.
            continue;
        }
        if h["epoch"].as_u64() != Some(epoch) {
            return false;
        }
        let metrics = match http.get(format!("{url}/metrics")).timeout(Duration::from_secs(2)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return false,
        };
        for gauge in ["treecache_uplink_pending ", "treecache_uplink_unconfirmed "] {
            if metrics.lines().find_map(|l| l.strip_prefix(gauge)).map(str::trim) != Some("0") {
                return false;
            }
        }
    }
    true
}

async fn health(http: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let resp = http.get(format!("{url}/health")).timeout(Duration::from_secs(2)).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// A live node whose /health role is `role`, chosen by `rng` (the
/// candidates in index order, so the choice follows the seed when the
/// tree is the same).
async fn pick_role(cluster: &Cluster, nodes: &Nodes, role: &str, rng: &mut StdRng) -> Option<usize> {
    let mut candidates = Vec::new();
    for i in nodes.up() {
        if health(&cluster.http, &cluster.url(i)).await.is_some_and(|h| h["role"] == role) {
            candidates.push(i);
        }
    }
    (!candidates.is_empty()).then(|| candidates[rng.gen_range(0..candidates.len())])
}

/// The root: group 0's leader (the registrar; the tree hangs below it).
async fn root_index(cluster: &Cluster, nodes: &Nodes) -> Option<usize> {
    group_leader(cluster, nodes, 0).await
}

/// The live leader of root group `group`.
async fn group_leader(cluster: &Cluster, nodes: &Nodes, group: u32) -> Option<usize> {
    for i in nodes.up() {
        if health(&cluster.http, &cluster.url(i)).await.is_some_and(|h| is_leader_of(&h, group)) {
            return Some(i);
        }
    }
    None
}

/// A `/health` that says: root of `group` (no `group`: group 0).
fn is_leader_of(h: &serde_json::Value, group: u32) -> bool {
    h["role"] == "root" && h["group"].as_u64().unwrap_or(0) == u64::from(group)
}

/// A root of a group other than 0 (leader or standby): not in the tree
/// below group 0's root, on an epoch of its own.
fn other_group(h: &serde_json::Value) -> bool {
    h["group"].as_u64().unwrap_or(0) != 0
}

async fn slot_map(cluster: &Cluster) -> treecache::slots::SlotMap {
    let zk = cluster.zk.client().await;
    let (data, _) = zk.get_data(&format!("/treecache/{}/slots", cluster.name)).await.expect("the slot map");
    treecache::slots::SlotMap::from_json(&data).expect("a slot map")
}

/// `treecache slots move --slots A-B --to G`, waited for (in a thread).
async fn move_slots(cluster: &Cluster, a: u16, b: u16, to: u32) -> std::process::Output {
    let args: Vec<String> = [
        "slots",
        "move",
        "--slots",
        &format!("{a}-{b}"),
        "--to",
        &to.to_string(),
        "--zk",
        &cluster.zk.addr(),
        "--cluster",
        &cluster.name,
        "--cluster-secret",
        &cluster.secret(),
        "--timeout",
        "90s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    tokio::task::spawn_blocking(move || {
        super::output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_treecache")).args(&args),
            Duration::from_secs(120),
        )
    })
    .await
    .expect("slots move ran")
}

/// One node's `/dump`: (key, version, value or None for a tombstone,
/// current; a node that does not say counts as current).
async fn dump(http: &reqwest::Client, url: &str) -> Option<Vec<(String, u64, Option<String>, bool)>> {
    let resp = http.get(format!("{url}/dump?limit=10000")).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let text = resp.text().await.ok()?;
    let mut out = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let key = v["key"].as_str()?.to_string();
        let version = v["version"].as_u64()?;
        let value = if v["tombstone"] == true { None } else { Some(v["value"].as_str()?.to_string()) };
        out.push((key, version, value, v["current"].as_bool().unwrap_or(true)));
    }
    Some(out)
}

/// Consistent reads of `keys` at node `root` (not recorded).
async fn root_state(http: &reqwest::Client, url: &str, keys: &[String]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for key in keys {
        out.push(request(http, url, Kind::GetConsistent, key, None, None).await);
    }
    out
}

/// After the clients and faults stopped: waits (polling, up to `settle`)
/// until the root's answers for `keys` are stable and, when
/// `compare_dumps`, every live node's `/dump` agrees with them, then
/// `fresh_after` more (ttl mode: depth × max-age, after which guarantee 1
/// holds); then records the final reads in `history` (a consistent read at
/// the root of every key any op touched, a plain read at every live node of
/// each of `keys` and of every key it holds) and returns the [`Final`] for
/// the checker.
pub async fn final_state(
    nodes: &Nodes,
    history: &History,
    keys: &[String],
    compare_dumps: bool,
    settle: Duration,
    fresh_after: Duration,
    unhealthy: Vec<(usize, String)>,
) -> Final {
    let http = http_client(Duration::from_secs(5));
    let deadline = Instant::now() + settle;
    let mut root = None;
    let mut last: Option<Vec<Outcome>> = None;
    while Instant::now() < deadline {
        let mut found = None;
        for i in nodes.up() {
            if health(&http, &nodes.node(i).1).await.is_some_and(|h| is_leader_of(&h, 0)) {
                found = Some(i);
                break;
            }
        }
        root = found;
        if let Some(r) = root {
            if !tree_settled(&http, nodes, &nodes.node(r).1).await {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let url = nodes.node(r).1;
            let now = root_state(&http, &url, keys).await;
            let answered = now.iter().all(|o| matches!(o, Outcome::Ok { .. } | Outcome::NotFound { .. }));
            let stable = answered && last.as_ref() == Some(&now);
            if stable && (!compare_dumps || dumps_agree(&http, nodes, keys, &now).await) {
                break;
            }
            last = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    super::wait_past(Instant::now() + fresh_after).await;
    let mut fin = Final { compare_dumps, unhealthy, ..Final::default() };
    let Some(root) = root else {
        fin.unhealthy.push((usize::MAX, "no live node says it is the root".into()));
        return fin;
    };
    let (root_ref, root_url) = nodes.node(root);
    let mut all: Vec<String> = keys.to_vec();
    all.extend(history.ops().into_iter().map(|o| o.key));
    all.sort();
    all.dedup();
    for key in &all {
        let id = history.invoke(FINAL_PROCESS, root_ref, Kind::GetConsistent, key, None, None);
        history.complete(id, request(&http, &root_url, Kind::GetConsistent, key, None, None).await);
        fin.root.insert(key.clone(), id);
    }
    for i in nodes.up() {
        let (node, url) = nodes.node(i);
        match dump(&http, &url).await {
            Some(entries) => fin.dumps.extend(entries.into_iter().map(|(k, v, val, cur)| (node, k, v, val, cur))),
            None => fin.unhealthy.push((i, "GET /dump failed after quiet".into())),
        }
    }
    for i in nodes.up() {
        let (node, url) = nodes.node(i);
        // The workload's keys, and whatever else this node holds.
        let mut mine: Vec<String> = keys.to_vec();
        mine.extend(fin.dumps.iter().filter(|d| d.0.index == i).map(|d| d.1.clone()));
        mine.sort();
        mine.dedup();
        for key in &mine {
            let id = history.invoke(FINAL_PROCESS, node, Kind::Get, key, None, None);
            history.complete(id, request(&http, &url, Kind::Get, key, None, None).await);
            fin.node_reads.push(id);
        }
    }
    fin
}

/// Every live node's held entries equal the root's answers.
async fn dumps_agree(http: &reqwest::Client, nodes: &Nodes, keys: &[String], root: &[Outcome]) -> bool {
    for i in nodes.up() {
        let Some(entries) = dump(http, &nodes.node(i).1).await else { return false };
        for (key, version, value, _) in entries.into_iter().filter(|e| e.3) {
            let Some(k) = keys.iter().position(|k| *k == key) else { continue };
            let agrees = match &root[k] {
                Outcome::Ok { version: rv, value: rval } => *rv == Some(version) && *rval == value,
                Outcome::NotFound { .. } => value.is_none(),
                _ => false,
            };
            if !agrees {
                return false;
            }
        }
    }
    true
}
