//! The Vagrant deployment without VMs: the machines `vagrant up` starts (zk,
//! root, node1..node4) as network namespaces joined by a bridge, at the
//! addresses of deploy/hosts, each started by its provision script with the
//! environment the Vagrantfile gives that VM. Both come from
//! `ruby deploy/topology.rb json`, the code the Vagrantfile runs.
//!
//! Isolation: the bridge sits in a "switch" namespace of its own with no
//! uplink, no namespace has a default route, and the root namespace never
//! gets an address on the deployment's subnet, so no packet can leave. The
//! test speaks HTTP and ZooKeeper from a "laptop" namespace, at the address
//! VirtualBox gives the host. Namespaces are named `tcnet<pid>-<host>`; a
//! Drop guard kills what the test started and removes them, and those of a
//! run that was killed (its pid gone) are removed at the start of the next.
//!
//! Creating namespaces needs root (CI runs as root); without it the test
//! fails and says so.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_treecache");
const REPO: &str = env!("CARGO_MANIFEST_DIR");
const NS_PREFIX: &str = "tcnet";
/// The switch namespace and the laptop namespace, beside one per VM.
const SWITCH: &str = "sw";
const LAPTOP: &str = "laptop";
/// Generous: a loaded 2-core machine starts a JVM and five nodes.
const START: Duration = Duration::from_secs(90);
/// Healing waits for a ZooKeeper session (6 s) to expire, then re-attaches.
const HEAL: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(30);

#[test]
fn the_vagrant_tree_forms_serves_and_heals_across_hosts() {
    in_lab(&[], |lab| Box::pin(scenario(lab)));
}

/// `TREECACHE_TLS=1 vagrant up`: the zk VM's provisioning makes the CA and
/// serves ZooKeeper's secure port, every other VM makes its certificate;
/// the tree forms over HTTPS and serves across hosts.
#[test]
fn the_vagrant_tree_over_tls_forms_and_serves_across_hosts() {
    in_lab(&[("TREECACHE_TLS", "1")], |lab| Box::pin(tls_scenario(lab)));
}

type Scenario<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// Builds the lab for the plan under `env` and runs `scenario` from the
/// laptop, on a thread of its own: it enters the laptop namespace, and no
/// other test may ever run on it.
fn in_lab(env: &'static [(&'static str, &'static str)], scenario: fn(&Lab) -> Scenario<'_>) {
    // One lab at a time: namespaces are named per process, and two trees
    // with their JVMs at once would crowd a 2-core machine.
    static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _lab = ONE_LAB.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let worker = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            preflight();
            let lab = Lab::build(Plan::load(env));
            lab.enter(LAPTOP);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(scenario(&lab));
        })
        .expect("spawn the test thread");
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn tls_scenario(lab: &Lab) {
    let plan = lab.plan.clone();
    let zk = plan.vm_with_role("zookeeper").clone();
    let secure = zk.env.get("ZOOKEEPER_TLS_LISTEN").expect("the plan gives ZooKeeper a secure port").clone();
    assert!(zk.env["ZOOKEEPER_LISTEN"].starts_with("127.0.0.1:"), "the plain port stays on the zk host's loopback");
    lab.start(&zk, "zookeeper.sh");
    lab.wait(START, "ZooKeeper's secure port", || async { tokio::net::TcpStream::connect(&secure).await.ok() }).await;
    // The CA the zk host's provisioning made (in Vagrant: target/vagrant/tls).
    let web = Web::with_ca(&lab.tls_dir().join("ca.pem"));
    let hosts: Vec<PlanVm> = plan.vms.iter().filter(|v| v.role != "zookeeper").cloned().collect();
    for vm in &hosts {
        assert!(vm.url().starts_with("https://"), "{}: {}", vm.name, vm.url());
        assert_eq!(vm.env["TREECACHE_ZK"], secure, "{} uses ZooKeeper's secure port", vm.name);
        lab.start(vm, "treecache.sh");
        lab.wait(START, &format!("{} to register over HTTPS", vm.name), || web.health(vm)).await;
    }
    let expected = bfs_tree(&hosts, plan.fanout);
    for vm in &hosts {
        let h = web.health(vm).await.expect("health");
        assert_eq!((h["id"].as_u64(), h["parent"].as_u64()), (Some(vm.id()), expected[&vm.id()].0), "{}: {h}", vm.name);
    }
    let want = paths_of(&expected);
    lab.wait(CONVERGE, "zkCli.sh on the zk host to show the tree", || async {
        Some(lab.zkcli_tree(&zk, &plan.cluster).await).filter(|t| *t == want)
    })
    .await;
    // A write at one host, read at a leaf of the other branch, then a
    // write at the root pushed to it.
    let (writer, reader, root) = (&hosts[2], &hosts[hosts.len() - 1], &hosts[0]);
    let (status, body) = web.put(writer, "greeting", "over tls", "?ack=root").await;
    assert!(status == 200 || status == 201, "PUT at {}: {status} {body}", writer.name);
    let r = web.get(reader, "greeting").await.expect("GET");
    assert_eq!((r.status, r.body.as_str()), (200, "over tls"), "{}", reader.name);
    let (status, _) = web.put(root, "greeting", "pushed", "?ack=root").await;
    assert!(status == 200 || status == 201);
    lab.wait(CONVERGE, "the root's write to reach the reader", || async {
        web.get(reader, "greeting").await.filter(|r| r.body == "pushed").map(|_| ())
    })
    .await;
    // Plain HTTP to a node gets nothing.
    let plain = reader.url().replacen("https://", "http://", 1);
    assert!(Web::new().http.get(format!("{plain}/health")).send().await.is_err(), "plain HTTP at {plain}");
    lab.assert_isolated();
}

async fn scenario(lab: &Lab) {
    let plan = lab.plan.clone();
    let web = Web::new();

    // ZooKeeper in its namespace, as `provision/zookeeper.sh` runs it in the zk VM.
    let zk = plan.vm_with_role("zookeeper").clone();
    lab.start(&zk, "zookeeper.sh");
    let zkv = ZkView::new(&zk.env["ZOOKEEPER_LISTEN"], &plan.cluster);
    lab.wait(START, "ZooKeeper to accept sessions from the laptop", || zkv.tree()).await;

    // The root, then the nodes one by one (so placement is deterministic).
    let hosts: Vec<PlanVm> = plan.vms.iter().filter(|v| v.role != "zookeeper").cloned().collect();
    for vm in &hosts {
        lab.start(vm, "treecache.sh");
        lab.wait(START, &format!("{} to register", vm.name), || web.health(vm)).await;
    }

    // The tree formed across hosts: breadth-first, fanout from deploy/hosts.
    let expected = bfs_tree(&hosts, plan.fanout);
    for vm in &hosts {
        let h = web.health(vm).await.expect("health");
        let (parent, depth) = expected.get(&vm.id()).copied().expect("planned");
        assert_eq!(h["status"], "ok", "{}: {h}", vm.name);
        assert_eq!(h["id"], vm.id(), "{}: {h}", vm.name);
        assert_eq!(h["parent"].as_u64(), parent, "{}: {h}", vm.name);
        assert_eq!(h["depth"], depth, "{}: {h}", vm.name);
    }
    let want = paths_of(&expected);
    lab.wait(CONVERGE, "ZooKeeper's tree/ to match the placement", || async {
        zkv.tree().await.filter(|t| *t == want)
    })
    .await;
    // docs/deploy.md's command: `zkCli.sh ls -R /treecache/default/tree` in the zk VM.
    assert_eq!(lab.zkcli_tree(&zk, &plan.cluster).await, want, "zkCli.sh ls -R");
    eprintln!("tree formed across {} hosts: {want:?}", hosts.len());

    // /kv across hosts: a write at one node is read at a leaf of the other branch.
    let (writer, reader) = (&hosts[2], &hosts[hosts.len() - 1]);
    let (status, body) = web.put(writer, "greeting", "hello from node2", "?ack=root").await;
    assert!(status == 200 || status == 201, "PUT at {}: {status} {body}", writer.name);
    let version = body["version"].as_u64().expect("ack=root answers a version");
    let r = web.get(reader, "greeting").await.expect("GET");
    assert_eq!((r.status, r.body.as_str(), r.version), (200, "hello from node2", Some(version)), "{}", reader.name);
    assert_eq!((r.cache.as_deref(), r.node), (Some("miss"), Some(reader.id())), "first read at {}", reader.name);
    let r = web.get(reader, "greeting").await.expect("GET");
    assert_eq!((r.body.as_str(), r.cache.as_deref()), ("hello from node2", Some("hit")), "second read");
    // A write at the root reaches the reader's copy (pushed to holders).
    let root = &hosts[0];
    let (status, body) = web.put(root, "greeting", "v2", "?ack=root").await;
    assert!(status == 200 || status == 201, "PUT at the root: {status} {body}");
    lab.wait(CONVERGE, "the root's write to reach the reader", || async {
        web.get(reader, "greeting").await.filter(|r| r.body == "v2").map(|_| ())
    })
    .await;
    let (status, _) = web.delete(&hosts[1], "greeting", "?ack=root").await;
    assert_eq!(status, 200, "DELETE at {}", hosts[1].name);
    lab.wait(CONVERGE, "the delete to reach the reader", || async {
        web.get(reader, "greeting").await.filter(|r| r.status == 404).map(|_| ())
    })
    .await;

    // Take down the link of the inner node with the most children.
    let cut = inner_with_most_children(&expected, &hosts);
    let orphans: Vec<u64> = expected.iter().filter(|(_, (p, _))| *p == Some(cut.id())).map(|(&id, _)| id).collect();
    assert!(!orphans.is_empty(), "{} has children", cut.name);
    lab.link(&cut.name, false);
    let cut_at = Instant::now();
    eprintln!("link of {} (id {}) down; its children {orphans:?} must re-attach", cut.name, cut.id());
    let survivors: Vec<&PlanVm> = hosts.iter().filter(|v| v.id() != cut.id()).collect();
    let healed = lab
        .wait(HEAL, &format!("the tree to heal around {} (ids {orphans:?} re-attached)", cut.name), || async {
            let tree = zkv.tree().await?;
            let parents = parents_of(&tree)?;
            let ids: BTreeSet<u64> = parents.keys().copied().collect();
            let want_ids: BTreeSet<u64> = survivors.iter().map(|v| v.id()).collect();
            if ids != want_ids {
                return None;
            }
            // Every survivor agrees with ZooKeeper about its parent.
            for vm in &survivors {
                let h = web.health(vm).await?;
                if h["parent"].as_u64() != parents[&vm.id()] {
                    return None;
                }
            }
            Some(tree)
        })
        .await;
    assert_eq!(lab.zkcli_tree(&zk, &plan.cluster).await, healed, "zkCli.sh ls -R after the heal");
    eprintln!("healed in {:?}: {healed:?}", cut_at.elapsed());

    // The healed tree serves: a write at the root is read at every orphan.
    let (status, body) = web.put(root, "after", "the heal", "?ack=root").await;
    assert!(status == 200 || status == 201, "PUT at the root after the heal: {status} {body}");
    for vm in survivors.iter().filter(|v| orphans.contains(&v.id())) {
        lab.wait(CONVERGE, &format!("{} to read through its new parent", vm.name), || async {
            web.get(vm, "after").await.filter(|r| r.status == 200 && r.body == "the heal").map(|_| ())
        })
        .await;
    }

    // The link comes back: the node re-registers and the tree has every host again.
    lab.link(&cut.name, true);
    let back_at = Instant::now();
    lab.wait(HEAL, &format!("{} to re-join", cut.name), || async {
        let tree = zkv.tree().await?;
        let ids: BTreeSet<u64> = parents_of(&tree)?.keys().copied().collect();
        let h = web.health(cut).await?;
        (ids.len() == hosts.len() && h["id"] == cut.id()).then_some(())
    })
    .await;
    eprintln!("{} re-joined in {:?}", cut.name, back_at.elapsed());
    lab.assert_isolated();
}

// ---- the plan: what the Vagrantfile gives each VM ----

#[derive(Debug, Clone)]
struct Plan {
    cluster: String,
    prefix_len: u8,
    laptop: String,
    fanout: usize,
    /// The VMs `vagrant up` starts, in its order.
    vms: Vec<PlanVm>,
}

#[derive(Debug, Clone)]
struct PlanVm {
    name: String,
    ip: String,
    id: Option<u64>,
    role: String,
    env: BTreeMap<String, String>,
}

impl PlanVm {
    fn id(&self) -> u64 {
        self.id.unwrap_or_else(|| panic!("{} has no node id", self.name))
    }
    fn url(&self) -> &str {
        &self.env["TREECACHE_ADVERTISE"]
    }
}

impl Plan {
    /// `ruby deploy/topology.rb json` with Vagrant's defaults (4 nodes, 1
    /// root) and `env` (as an operator sets it for `vagrant up`).
    fn load(env: &[(&str, &str)]) -> Plan {
        let out = Command::new("ruby")
            .args(["deploy/topology.rb", "json"])
            .current_dir(REPO)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("VAGRANT_DOTFILE_PATH", "/nonexistent/treecache-netns-test")
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ruby (the vagrant package brings it): {e}"));
        assert!(out.status.success(), "ruby deploy/topology.rb json: {}", String::from_utf8_lossy(&out.stderr));
        let plan: Value = serde_json::from_slice(&out.stdout).expect("topology JSON");
        let s = &plan["settings"];
        let text = |v: &Value| v.as_str().expect("a string").to_string();
        let subnet = text(&s["subnet"]);
        let prefix_len = subnet.rsplit('/').next().and_then(|p| p.parse().ok()).expect("subnet ADDRESS/LEN");
        let vms = plan["vms"]
            .as_array()
            .expect("vms")
            .iter()
            .filter(|v| v["autostart"] == true)
            .map(|v| PlanVm {
                name: text(&v["name"]),
                ip: text(&v["ip"]),
                id: v["id"].as_u64(),
                role: text(&v["role"]),
                env: v["env"].as_object().expect("env").iter().map(|(k, v)| (k.clone(), text(v))).collect(),
            })
            .collect();
        Plan {
            cluster: text(&s["cluster"]),
            prefix_len,
            laptop: text(&s["laptop"]),
            fanout: text(&s["fanout"]).parse().expect("fanout"),
            vms,
        }
    }

    fn vm_with_role(&self, role: &str) -> &PlanVm {
        self.vms.iter().find(|v| v.role == role).unwrap_or_else(|| panic!("no {role} VM in the plan"))
    }
}

/// Where sequential registration puts each host: id -> (parent, depth).
fn bfs_tree(hosts: &[PlanVm], fanout: usize) -> BTreeMap<u64, (Option<u64>, u64)> {
    let mut tree = BTreeMap::new();
    for (i, vm) in hosts.iter().enumerate() {
        let place = if i == 0 {
            (None, 0)
        } else {
            let parent = hosts[(i - 1) / fanout].id();
            (Some(parent), tree.get(&parent).map(|&(_, d): &(Option<u64>, u64)| d + 1).expect("parent placed"))
        };
        tree.insert(vm.id(), place);
    }
    tree
}

/// The znode paths (`1`, `1/2`, ...) under `tree/` for a placement.
fn paths_of(tree: &BTreeMap<u64, (Option<u64>, u64)>) -> BTreeSet<String> {
    let path = |mut id: u64| {
        let mut parts = vec![id.to_string()];
        while let Some((Some(p), _)) = tree.get(&id) {
            parts.push(p.to_string());
            id = *p;
        }
        parts.reverse();
        parts.join("/")
    };
    tree.keys().map(|&id| path(id)).collect()
}

/// id -> parent from znode paths; `None` unless they form one tree.
fn parents_of(paths: &BTreeSet<String>) -> Option<BTreeMap<u64, Option<u64>>> {
    let mut parents = BTreeMap::new();
    for p in paths {
        let ids: Vec<u64> = p.split('/').map(|s| s.parse().ok()).collect::<Option<_>>()?;
        if ids.len() > 1 && !paths.contains(&p[..p.rfind('/')?]) {
            return None;
        }
        let parent = (ids.len() > 1).then(|| ids[ids.len() - 2]);
        if parents.insert(*ids.last()?, parent).is_some() {
            return None;
        }
    }
    (parents.values().filter(|p| p.is_none()).count() == 1).then_some(parents)
}

fn inner_with_most_children<'a>(tree: &BTreeMap<u64, (Option<u64>, u64)>, hosts: &'a [PlanVm]) -> &'a PlanVm {
    let children = |id: u64| tree.values().filter(|(p, _)| *p == Some(id)).count();
    hosts[1..].iter().max_by_key(|v| (children(v.id()), std::cmp::Reverse(v.id()))).expect("a node")
}

// ---- talking to the hosts, from the laptop namespace ----

struct Web {
    http: reqwest::Client,
}

#[derive(Debug)]
struct Read {
    status: u16,
    body: String,
    version: Option<u64>,
    cache: Option<String>,
    node: Option<u64>,
}

impl Web {
    fn new() -> Web {
        // no_proxy: a proxy from the environment would send requests out.
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().expect("HTTP client");
        Web { http }
    }

    /// An HTTPS client trusting the CA in `ca` (no certificate of its own:
    /// the nodes' default --tls-client-auth none serves it).
    fn with_ca(ca: &Path) -> Web {
        let config = treecache::tls::client_config_trusting(ca).expect("the deployment's CA");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .use_preconfigured_tls(config)
            .build()
            .expect("HTTPS client");
        Web { http }
    }

    /// The node's /health once it is registered (200), else `None`.
    async fn health(&self, vm: &PlanVm) -> Option<Value> {
        let resp = self.http.get(format!("{}/health", vm.url())).send().await.ok()?;
        if resp.status() != 200 {
            return None;
        }
        resp.json().await.ok()
    }

    async fn get(&self, vm: &PlanVm, key: &str) -> Option<Read> {
        let resp = self.http.get(format!("{}/kv/{key}", vm.url())).send().await.ok()?;
        let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (version, cache, node) = (
            header("x-version").and_then(|v| v.parse().ok()),
            header("x-cache"),
            header("x-node").and_then(|v| v.parse().ok()),
        );
        let status = resp.status().as_u16();
        Some(Read { status, body: resp.text().await.ok()?, version, cache, node })
    }

    async fn put(&self, vm: &PlanVm, key: &str, value: &str, query: &str) -> (u16, Value) {
        let url = format!("{}/kv/{key}{query}", vm.url());
        let resp =
            self.http.put(&url).body(value.to_string()).send().await.unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn delete(&self, vm: &PlanVm, key: &str, query: &str) -> (u16, Value) {
        let url = format!("{}/kv/{key}{query}", vm.url());
        let resp = self.http.delete(&url).send().await.unwrap_or_else(|e| panic!("DELETE {url}: {e}"));
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }
}

/// ZooKeeper's `tree/` as the laptop sees it, through one session
/// (opened again if it is lost).
struct ZkView {
    addr: String,
    base: String,
    client: RefCell<Option<zookeeper_client::Client>>,
}

impl ZkView {
    fn new(addr: &str, cluster: &str) -> ZkView {
        ZkView { addr: addr.to_string(), base: format!("/treecache/{cluster}/tree"), client: RefCell::new(None) }
    }

    async fn client(&self) -> Option<zookeeper_client::Client> {
        let cached = self.client.borrow().clone();
        if let Some(c) = cached.filter(|c| !c.state().is_terminated()) {
            return Some(c);
        }
        let connecting =
            zookeeper_client::Client::connector().with_session_timeout(Duration::from_secs(30)).connect(&self.addr);
        let c = tokio::time::timeout(Duration::from_secs(3), connecting).await.ok()?.ok()?;
        *self.client.borrow_mut() = Some(c.clone());
        Some(c)
    }

    /// Every znode under `tree/`, relative to it; `None` while ZooKeeper
    /// does not answer.
    async fn tree(&self) -> Option<BTreeSet<String>> {
        let zk = self.client().await?;
        let mut out = BTreeSet::new();
        let mut stack = vec![self.base.clone()];
        while let Some(p) = stack.pop() {
            let children = match zk.list_children(&p).await {
                Ok(c) => c,
                Err(zookeeper_client::Error::NoNode) => Vec::new(),
                Err(_) => {
                    self.client.borrow_mut().take();
                    return None;
                }
            };
            for c in children {
                let full = format!("{p}/{c}");
                out.insert(full[self.base.len() + 1..].to_string());
                stack.push(full);
            }
        }
        Some(out)
    }
}

// ---- the lab: namespaces, the bridge, processes ----

struct Lab {
    plan: Plan,
    prefix: String,
    /// Namespaces created, removed on drop.
    namespaces: Vec<String>,
    procs: RefCell<Vec<Proc>>,
    dir: tempfile::TempDir,
}

struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Lab {
    /// The switch, the laptop and one namespace per VM, wired to the bridge.
    fn build(plan: Plan) -> Lab {
        remove_stale_namespaces();
        let mut lab = Lab {
            prefix: format!("{NS_PREFIX}{}", std::process::id()),
            namespaces: Vec::new(),
            procs: RefCell::new(Vec::new()),
            dir: tempfile::Builder::new().prefix("treecache-netns-").tempdir().expect("temp dir"),
            plan,
        };
        lab.add_namespace(SWITCH);
        lab.ip(SWITCH, &["link", "add", "br0", "type", "bridge"]);
        lab.ip(SWITCH, &["link", "set", "br0", "up"]);
        let mut hosts: Vec<(String, String)> = vec![(LAPTOP.into(), lab.plan.laptop.clone())];
        hosts.extend(lab.plan.vms.iter().map(|v| (v.name.clone(), v.ip.clone())));
        for (host, ip) in hosts {
            lab.add_namespace(&host);
            let (port, ns) = (format!("p-{host}"), lab.ns(&host));
            // Both ends are made inside namespaces: the root namespace never sees them.
            lab.ip(SWITCH, &["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            lab.ip(SWITCH, &["link", "set", &port, "master", "br0", "up"]);
            lab.ip(&host, &["addr", "add", &format!("{ip}/{}", lab.plan.prefix_len), "dev", "eth0"]);
            lab.ip(&host, &["link", "set", "eth0", "up"]);
        }
        lab.assert_isolated();
        lab
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn add_namespace(&mut self, host: &str) {
        let ns = self.ns(host);
        run_ip(&["netns", "add", &ns]).unwrap_or_else(|e| {
            panic!(
                "cannot create network namespace {ns}: {e}\nthis test needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN"
            )
        });
        self.namespaces.push(ns);
        self.ip(host, &["link", "set", "lo", "up"]);
    }

    /// `ip -n <host's namespace> ARGS`, which must succeed.
    fn ip(&self, host: &str, args: &[&str]) {
        let ns = self.ns(host);
        let mut full = vec!["-n", ns.as_str()];
        full.extend_from_slice(args);
        run_ip(&full).unwrap_or_else(|e| panic!("ip {}: {e}", full.join(" ")));
    }

    /// Output of `ip -n <host's namespace> ARGS`.
    fn ip_out(&self, host: &str, args: &[&str]) -> String {
        let ns = self.ns(host);
        let out = Command::new("ip").arg("-n").arg(&ns).args(args).output().expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Moves the calling thread into a namespace (sockets it opens live there).
    fn enter(&self, host: &str) {
        let path = format!("/run/netns/{}", self.ns(host));
        let f = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
    }

    /// Plugs a host's cable in or pulls it, at the switch.
    fn link(&self, host: &str, up: bool) {
        self.ip(SWITCH, &["link", "set", &format!("p-{host}"), if up { "up" } else { "down" }]);
    }

    /// Nothing routes off the subnet: no default route in any namespace, and
    /// the switch has no port but the hosts'.
    fn assert_isolated(&self) {
        for ns in &self.namespaces {
            let host = &ns[self.prefix.len() + 1..];
            let default = self.ip_out(host, &["route", "show", "default"]);
            assert!(default.trim().is_empty(), "{ns} has a default route: {default}");
        }
        let links = self.ip_out(SWITCH, &["-o", "link", "show"]);
        for line in links.lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim().split('@').next().unwrap_or("");
            assert!(name == "lo" || name == "br0" || name.starts_with("p-"), "unexpected link {name} on the switch");
        }
    }

    /// Starts `provision/SCRIPT foreground` in the VM's namespace with the
    /// VM's environment from the plan (and nothing else from ours).
    fn start(&self, vm: &PlanVm, script: &str) {
        let state = self.dir.path().join(&vm.name);
        std::fs::create_dir_all(&state).expect("state dir");
        let log = self.dir.path().join(format!("{}.log", vm.name));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(&vm.name), "bash"])
            .arg(Path::new(REPO).join("provision").join(script))
            .arg("foreground")
            .current_dir(REPO)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &state)
            .env("LANG", "C.UTF-8")
            .envs(&vm.env)
            .env("TREECACHE_BIN", BIN)
            .env("TREECACHE_STATE_DIR", &state)
            // One secret for every host, made by the first one's provisioning
            // (in Vagrant: target/vagrant/cluster-secret in the synced folder).
            .env("TREECACHE_CLUSTER_SECRET_FILE", self.dir.path().join("cluster-secret"))
            // Likewise the CA under TREECACHE_TLS=1 (target/vagrant/tls).
            .env("TREECACHE_TLS_DIR", self.tls_dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {script} for {}: {e}", vm.name));
        self.procs.borrow_mut().push(Proc { name: vm.name.clone(), child: Some(child), log });
    }

    /// Where the hosts' provisioning keeps the deployment's CA.
    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// Panics if a process the test started has exited.
    fn check_alive(&self) {
        for p in self.procs.borrow_mut().iter_mut() {
            if let Some(status) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                p.child = None;
                panic!("{} exited ({status}); its log is below", p.name);
            }
        }
    }

    /// Polls `probe` every 200 ms until it gives a value; panics after `timeout`.
    async fn wait<T, F, Fut>(&self, timeout: Duration, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive();
            if let Some(v) = probe().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `zkCli.sh ls -R /treecache/<cluster>/tree` run in the zk host with the
    /// CLI wrapper the provision script wrote, as docs/deploy.md runs it.
    async fn zkcli_tree(&self, zk: &PlanVm, cluster: &str) -> BTreeSet<String> {
        let cli = self.dir.path().join(&zk.name).join("bin/zkCli.sh");
        let base = format!("/treecache/{cluster}/tree");
        // Async, so the laptop's ZooKeeper session keeps its heartbeats.
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.ns(&zk.name)])
            .arg(&cli)
            .args(["ls", "-R", &base])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .await
            .expect("run zkCli.sh");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "zkCli.sh: {text}{}", String::from_utf8_lossy(&out.stderr));
        text.lines().filter_map(|l| l.trim().strip_prefix(&base)?.strip_prefix('/').map(str::to_string)).collect()
    }

    fn print_logs(&self) {
        for p in self.procs.borrow().iter() {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {} ({}) log tail -----", p.name, p.log.display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for p in self.procs.get_mut().iter_mut() {
            if let Some(mut child) = p.child.take() {
                // Each started in its own process group: `ip netns exec` ->
                // bash -> exec java or treecache.
                // SAFETY: signalling a process group we created.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// Root, `ip`, ZooKeeper and ruby: say which is missing rather than fail later.
fn preflight() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "tests/netns.rs builds the Vagrant topology from network namespaces, which needs root \
         (CI runs as root), and this runs as uid {euid}: run it as root, sudo -E cargo test --test netns"
    );
    run_ip(&["-V"]).unwrap_or_else(|e| panic!("`ip` (iproute2) is needed: apt-get install iproute2 ({e})"));
    assert!(
        Path::new("/usr/share/java/zookeeper.jar").exists(),
        "ZooKeeper is not installed: run provision/install-zookeeper.sh (scripts/test.sh does)"
    );
}

fn run_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Kills what runs in a namespace of ours and deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = run_ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: these processes live in a namespace this test created.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    if let Err(e) = run_ip(&["netns", "del", ns]) {
        eprintln!("removing network namespace {ns}: {e}");
    }
}

/// Namespaces `tcnet<pid>-*` whose test process is gone (a killed run).
fn remove_stale_namespaces() {
    let Ok(list) = run_ip(&["netns", "list"]) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix(NS_PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing {name}, left by an earlier run (pid {pid} is gone)");
            remove_namespace(name);
        }
    }
}
