//! `bench capacity`: does capacity grow with root groups? For each G of
//! `--groups` (default 1, 2, 4) it starts a private cluster on loopback:
//! G root groups of one leader each, every root held to the same share of
//! the machine (`--group-memory` as its `--max-memory`; `--group-cpu`
//! percent of one core through a cgroup v1 CPU quota where
//! `/sys/fs/cgroup/cpu` is writable, else no CPU bound, and the report
//! says which), the slots spread evenly, and two routers the load goes
//! through. Then, ack=root, `-c` writers:
//!
//! 1. **Keys held**: new keys of `--value-size` until each writer has been
//!    refused 507 `root_full` 20 times in a row.
//! 2. **Writes**: overwrites of the keys held (same size, never refused)
//!    for `--duration` by `-c` writers *per group* (G groups take G times
//!    one group's writers: the offered load grows with the capacity, as
//!    it must for W(G) to measure capacity, not one client's latency);
//!    writes/s, CPU per write summed over the roots and over the routers
//!    (utime + stime from /proc around the phase), and how busy the whole
//!    machine was (/proc/stat): at 100% the machine, not the roots, bounds
//!    W(G).
//! 3. **A move under load** (G ≥ 2, first, while the groups have room): 1,000
//!    keys sharing one slot (a hash tag) are overwritten while `treecache
//!    slots move` hands that slot to another group; each of its writes' latency during
//!    the move (the write pause: p99 and max, beside their p99 in the half
//!    second before), the p99 of writers of other slots meanwhile (during
//!    and before the move), and afterwards each of the slot's keys read
//!    back at the new owner: an acknowledged value that is not there is a
//!    lost acknowledgement.
//!
//! Every process it started, and every cgroup it made, is gone when it
//! returns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use super::scale::Procs;
use crate::cli::local::{node_args, spawn_node, wait_healthy, write_new_secret};
use crate::client::{Ack, Client, PutOptions};
use crate::slots::{slot_of, SlotMap};
use crate::zkserver::{free_port, LocalZk};

/// What `bench capacity` was asked.
#[derive(Debug, Clone)]
pub struct CapacityPlan {
    pub groups: Vec<u32>,
    pub group_memory: u64,
    pub group_cpu_pct: u32,
    pub writers: usize,
    pub duration: Duration,
    pub value_size: usize,
    pub zk: Option<String>,
    pub json: bool,
}

/// One G's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub groups: u32,
    /// How each root was held to its share of CPU.
    pub cpu_bound: String,
    pub keys_held: u64,
    /// Writers in the writes phase (`-c` per group).
    pub writers: usize,
    pub writes_per_s: f64,
    /// CPU (user + system) of every root, per acknowledged write.
    pub root_cpu_us_per_write: f64,
    /// The same of the two routers.
    pub router_cpu_us_per_write: f64,
    /// How busy the machine's CPUs were during the writes phase (percent
    /// of all of them; steal and iowait count as idle).
    pub machine_busy_pct: f64,
    pub moved: Option<Moved>,
}

/// The move of a 1,000-key slot under load.
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    pub slot: u16,
    pub keys: usize,
    pub took_ms: f64,
    /// Writes of the moving slot acknowledged while it moved.
    pub writes: usize,
    pub pause_p99_ms: f64,
    pub pause_max_ms: f64,
    /// The same writers' p99 in the half second before the move began:
    /// what the roots' CPU bound costs them anyway.
    pub before_p99_ms: f64,
    /// Writers of other slots (of every group) meanwhile: their p99 while
    /// the slot moved, and before.
    pub others_p99_ms: f64,
    pub others_before_p99_ms: f64,
    /// Of those, the writers of the source group's slots (the copy costs
    /// its CPU), of the target group's (the copy, then the moved slot's
    /// load), and of the other groups': p99 while the slot moved (0 where
    /// there were none).
    pub others_source_p99_ms: f64,
    pub others_target_p99_ms: f64,
    pub others_other_groups_p99_ms: f64,
    /// Acknowledged values of the slot not found at the new owner after.
    pub lost: usize,
}

/// Keys of the slot that moves: one hash tag.
const HOT_KEYS: usize = 1_000;
/// Refusals in a row that end a writer's fill.
const FULL_AFTER: u32 = 20;

pub async fn run(plan: &CapacityPlan) -> Result<(), String> {
    if plan.groups.is_empty() || plan.groups.iter().any(|&g| g == 0 || g > 16) {
        return Err(format!("bench capacity: --groups {:?}: each 1 to 16", plan.groups));
    }
    // The moving slot's keys must leave room for the rest in a group.
    let slot_bytes = (HOT_KEYS * (plan.value_size + 64)) as u64;
    if plan.groups.iter().any(|&g| g >= 2) && plan.group_memory < 2 * slot_bytes {
        return Err(format!(
            "bench capacity: --group-memory {} cannot hold twice the moving slot ({HOT_KEYS} keys of --value-size {} \
             = {slot_bytes} bytes): give at least {}",
            plan.group_memory,
            plan.value_size,
            2 * slot_bytes
        ));
    }
    let mut rows = Vec::new();
    for &g in &plan.groups {
        eprintln!("bench capacity: {g} group(s)...");
        rows.push(run_one(plan, g).await?);
    }
    if plan.json {
        println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

/// The report as text: one line per G, the ratios to G = 1.
pub fn table(rows: &[Row]) -> String {
    let base = rows.iter().find(|r| r.groups == 1);
    let mut out = format!(
        "{:>6} {:>10} {:>7} {:>8} {:>10} {:>6} {:>11} {:>13} {:>6}  {}\n",
        "groups",
        "keys held",
        "x G=1",
        "writers",
        "writes/s",
        "eff",
        "root us/wr",
        "router us/wr",
        "busy",
        "move of a 1,000-key slot"
    );
    for r in rows {
        let (keys_x, eff) = match base {
            Some(b) if b.keys_held > 0 && b.writes_per_s > 0.0 => (
                format!("{:.2}", r.keys_held as f64 / b.keys_held as f64),
                format!("{:.2}", r.writes_per_s / (r.groups as f64 * b.writes_per_s)),
            ),
            _ => ("-".into(), "-".into()),
        };
        let moved = match &r.moved {
            Some(m) => format!(
                "{:.0} ms, {} writes, pause p99 {:.1} ms max {:.1} ms (before: p99 {:.1} ms), other slots p99 {:.1} ms \
                 (before: {:.1} ms; source group's {:.1}, target group's {:.1}, other groups' {:.1}), {} lost",
                m.took_ms,
                m.writes,
                m.pause_p99_ms,
                m.pause_max_ms,
                m.before_p99_ms,
                m.others_p99_ms,
                m.others_before_p99_ms,
                m.others_source_p99_ms,
                m.others_target_p99_ms,
                m.others_other_groups_p99_ms,
                m.lost
            ),
            None => "-".into(),
        };
        out.push_str(&format!(
            "{:>6} {:>10} {:>7} {:>8} {:>10.0} {:>6} {:>11.1} {:>13.1} {:>5.0}%  {moved}\n",
            r.groups,
            r.keys_held,
            keys_x,
            r.writers,
            r.writes_per_s,
            eff,
            r.root_cpu_us_per_write,
            r.router_cpu_us_per_write,
            r.machine_busy_pct
        ));
    }
    if let Some(r) = rows.first() {
        out.push_str(&format!("cpu bound per root: {}\n", r.cpu_bound));
    }
    out
}

/// The CFS period each root's quota is given in: 10 ms. A root held to
/// 25% runs 2.5 ms of every 10 and waits at most 7.5 ms, as a slower CPU
/// would. With the kernel's default 100 ms period it would wait up to 75
/// ms mid-request, a stall no machine of its own has, and every step of a
/// protocol that crosses two roots (a move's freeze, copy and cutover)
/// would add one.
const CFS_PERIOD_US: u64 = 10_000;

/// The period for a quota of `pct`% of one core: [`CFS_PERIOD_US`], or
/// the kernel's default 100 ms where the quota would be under its 1 ms
/// minimum (below 10%).
fn cfs_period_us(pct: u32) -> u64 {
    match pct as u64 * CFS_PERIOD_US / 100 {
        quota if quota >= 1_000 => CFS_PERIOD_US,
        _ => 100_000,
    }
}

/// A CPU cgroup (v1) holding processes; removed on drop (its processes
/// gone first: a cgroup with tasks cannot be removed).
struct CpuGroup {
    dir: std::path::PathBuf,
}

impl CpuGroup {
    fn make(name: &str, pct: u32) -> Result<CpuGroup, String> {
        let dir = std::path::Path::new("/sys/fs/cgroup/cpu").join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let group = CpuGroup { dir };
        let write = |file: &str, value: String| {
            std::fs::write(group.dir.join(file), value).map_err(|e| format!("{}/{file}: {e}", group.dir.display()))
        };
        let period = cfs_period_us(pct);
        write("cpu.cfs_period_us", period.to_string())?;
        write("cpu.cfs_quota_us", (pct as u64 * period / 100).to_string())?;
        Ok(group)
    }

    fn add(&self, pid: u32) -> Result<(), String> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("{}/cgroup.procs: {e}", self.dir.display()))
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        // A process just reaped may still count in the cgroup for a moment
        // (EBUSY): try again, for a second at most.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench capacity: could not remove {} (rmdir it)", self.dir.display());
    }
}

/// The machine's CPU time so far, from /proc/stat's `cpu` line: (busy,
/// all) in clock ticks. Idle, iowait and steal are not busy.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    ticks_of(stat.lines().next().unwrap_or_default())
}

/// (busy, all) of a /proc/stat `cpu` line: user nice system idle iowait
/// irq softirq steal (guest time is already in user).
fn ticks_of(line: &str) -> (u64, u64) {
    let fields: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|f| f.parse().ok()).collect();
    let all: u64 = fields.iter().sum();
    let idle: u64 = [3, 4, 7].iter().filter_map(|&i| fields.get(i)).sum();
    (all - idle, all)
}

/// Percent of the machine busy between two [`machine_ticks`].
fn busy_pct(before: (u64, u64), after: (u64, u64)) -> f64 {
    let all = after.1.saturating_sub(before.1);
    match all {
        0 => 0.0,
        all => 100.0 * after.0.saturating_sub(before.0) as f64 / all as f64,
    }
}

/// utime + stime of `pid`, in microseconds.
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    crate::process::cpu_ticks(&stat).unwrap_or(0) * 1_000_000 / crate::process::clock_ticks_per_second()
}

async fn run_one(plan: &CapacityPlan, g: u32) -> Result<Row, String> {
    let bin = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let dir = tempfile::Builder::new().prefix("treecache-capacity-").tempdir().map_err(|e| e.to_string())?;
    let private_zk = match &plan.zk {
        Some(_) => None,
        None => Some(LocalZk::start().await?),
    };
    let zk = plan.zk.clone().or_else(|| private_zk.as_ref().map(LocalZk::addr)).unwrap_or_default();
    let cluster = format!("capacity-{}-{g}-{}", std::process::id(), crate::clock::now_ms());
    let secret = dir.path().join("secret");
    write_new_secret(&secret)?;
    let http = reqwest::Client::builder().no_proxy().build().map_err(|e| e.to_string())?;
    // Declared before the processes: dropped after them (a cgroup with
    // processes in it cannot be removed), on every path out.
    let mut cgroups = Vec::new();
    let mut procs = Procs { children: Vec::new() };
    let mut cpu_bound = format!(
        "{}% of one core (cgroup v1 cpu.cfs_quota_us, {} ms period)",
        plan.group_cpu_pct,
        cfs_period_us(plan.group_cpu_pct) / 1000
    );
    let mut root_pids = Vec::new();
    let start = |args: Vec<String>, name: String, procs: &mut Procs| -> Result<String, String> {
        let port = free_port()?;
        let mut flags = node_args(&zk, &cluster, port, &secret);
        flags.extend(args);
        procs.children.push(spawn_node(&bin, &flags, &dir.path().join(format!("{name}.log")))?);
        Ok(format!("http://127.0.0.1:{port}"))
    };
    let mut root_urls = Vec::new();
    for group in 0..g {
        let args = vec![
            "--root".into(),
            "--group".into(),
            group.to_string(),
            "--max-memory".into(),
            plan.group_memory.to_string(),
        ];
        let url = start(args, format!("root-{group}"), &mut procs)?;
        let child = procs.children.last_mut().expect("just started");
        wait_healthy(&http, &url, Duration::from_secs(60), Some(child)).await?;
        let pid = child.id();
        root_pids.push(pid);
        root_urls.push(url);
        let made =
            CpuGroup::make(&format!("treecache-capacity-{}-{g}-{group}", std::process::id()), plan.group_cpu_pct)
                .and_then(|c| c.add(pid).map(|()| c));
        match made {
            Ok(c) => cgroups.push(c),
            Err(e) => cpu_bound = format!("none: {e}"),
        }
    }
    spread(&zk, &cluster, &secret, g).await?;
    let mut routers = Vec::new();
    let mut router_pids = Vec::new();
    for r in 0..2 {
        let url = start(Vec::new(), format!("router-{r}"), &mut procs)?;
        let child = procs.children.last_mut().expect("just started");
        wait_healthy(&http, &url, Duration::from_secs(60), Some(child)).await?;
        router_pids.push(child.id());
        routers.push(url);
    }
    let clients: Vec<Client> = routers
        .iter()
        .map(|u| Client::builder(u).timeout(Duration::from_secs(30)).build().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let clients = Arc::new(clients);
    let value = "v".repeat(plan.value_size);
    let put = PutOptions { ack: Ack::Root, ttl: None };

    // The slot that moves: 1,000 keys under one hash tag, written first.
    let hot: Vec<String> = (0..HOT_KEYS).map(|i| format!("{{capacity-hot}}:{i}")).collect();
    if g >= 2 {
        for (i, key) in hot.iter().enumerate() {
            clients[i % 2].put_with(key, value.clone(), put).await.map_err(|e| format!("writing {key}: {e}"))?;
        }
    }

    // A move of the hot slot under load, while the target has room (a
    // full group takes no slot: its import is refused, and the move waits).
    let moved = match g {
        1 => None,
        _ => Some(move_hot(plan, &bin, &zk, &cluster, &secret, &clients, &hot, &value, g).await?),
    };

    // 1. Fill until every writer is refused FULL_AFTER times in a row.
    let held = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for w in 0..plan.writers {
        let (clients, held, value) = (clients.clone(), held.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let (mut n, mut refused) = (0u64, 0u32);
            while refused < FULL_AFTER {
                let key = format!("capacity-{w}-{n}");
                n += 1;
                match clients[w % 2].put_with(&key, value.clone(), put).await {
                    Ok(_) => {
                        refused = 0;
                        held.lock().push(key);
                    }
                    Err(e) if e.code() == Some("root_full") => refused += 1,
                    Err(e) => return Err(format!("filling: {e}")),
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let held: Vec<String> = held.lock().clone();
    let keys_held = (held.len() + if g >= 2 { HOT_KEYS } else { 0 }) as u64;

    // 2. Overwrites for --duration, by -c writers per group.
    let writers = plan.writers * g as usize;
    let cpu = |pids: &[u32]| -> u64 { pids.iter().map(|&p| cpu_us(p)).sum() };
    let (roots_before, routers_before, machine_before) = (cpu(&root_pids), cpu(&router_pids), machine_ticks());
    let (done, errors) = overwrite(&clients, &held, &value, writers, plan.duration).await;
    let (roots_after, routers_after, machine_after) = (cpu(&root_pids), cpu(&router_pids), machine_ticks());
    if errors > 0 {
        eprintln!("bench capacity: {errors} overwrites failed");
    }
    let writes_per_s = done as f64 / plan.duration.as_secs_f64();
    let per_write = |us: u64| if done > 0 { us as f64 / done as f64 } else { 0.0 };
    let root_cpu_us_per_write = per_write(roots_after - roots_before);
    let router_cpu_us_per_write = per_write(routers_after - routers_before);
    let machine_busy_pct = busy_pct(machine_before, machine_after);

    drop(procs);
    drop(cgroups);
    drop(private_zk);
    keep_logs(dir.path(), g);
    Ok(Row {
        groups: g,
        cpu_bound,
        keys_held,
        writers,
        writes_per_s,
        root_cpu_us_per_write,
        router_cpu_us_per_write,
        machine_busy_pct,
        moved,
    })
}

/// With `TREECACHE_KEEP_LOGS=DIR` (as the tests read it), copies each
/// process's log to `DIR/capacity-G/` (where a move's pause went: the
/// source's "writes paused" line, the routers' retries).
fn keep_logs(from: &std::path::Path, g: u32) {
    let Ok(to) = std::env::var("TREECACHE_KEEP_LOGS") else { return };
    let to = std::path::Path::new(&to).join(format!("capacity-{g}"));
    let copied = std::fs::create_dir_all(&to).and_then(|()| {
        for entry in std::fs::read_dir(from)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "log") {
                std::fs::copy(&path, to.join(path.file_name().expect("a file")))?;
            }
        }
        Ok(())
    });
    match copied {
        Ok(()) => eprintln!("bench capacity: logs of G={g} kept in {}", to.display()),
        Err(e) => eprintln!("bench capacity: keeping logs in {}: {e}", to.display()),
    }
}

/// Spreads the slots evenly over `g` groups, as `treecache up --groups`.
async fn spread(zk_addr: &str, cluster: &str, secret_file: &std::path::Path, g: u32) -> Result<(), String> {
    use crate::tree::zk;
    let text = std::fs::read_to_string(secret_file).map_err(|e| e.to_string())?;
    let secret = crate::auth::Secret::new(text.trim().to_string())?;
    let paths = zk::Paths::with_secret(cluster, &secret);
    let client = zk::connect(zk_addr, &paths, None).await.map_err(|e| e.to_string())?;
    let (map, version) =
        zk::read_slots(&client, &paths).await.map_err(|e| e.to_string())?.ok_or("group 0 made no slot map")?;
    let groups: Vec<u32> = (0..g).collect();
    let even = SlotMap::even(&groups, map.epoch() + 1)?;
    if g > 1 && !zk::write_slots(&client, &paths, &even, version).await.map_err(|e| e.to_string())? {
        return Err("the slot map changed while the bench spread it".into());
    }
    Ok(())
}

/// `writers` overwrite random keys of `keys` for `duration`; how many were
/// acknowledged, and how many failed.
async fn overwrite(
    clients: &Arc<Vec<Client>>,
    keys: &[String],
    value: &str,
    writers: usize,
    duration: Duration,
) -> (u64, u64) {
    let keys = Arc::new(keys.to_vec());
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let until = Instant::now() + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (clients, keys, done, errors, value) =
                (clients.clone(), keys.clone(), done.clone(), errors.clone(), value.to_string());
            tokio::spawn(async move {
                let mut i = w;
                while Instant::now() < until && !keys.is_empty() {
                    let key = &keys[(i * 7919) % keys.len()];
                    i += writers;
                    match clients[w % 2].put_with(key, value.clone(), PutOptions { ack: Ack::Root, ttl: None }).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    (done.load(Ordering::Relaxed), errors.load(Ordering::Relaxed))
}

/// Moves the hot slot to another group while writers overwrite its keys
/// (each writer its own share, values numbered) and other keys.
#[allow(clippy::too_many_arguments)]
async fn move_hot(
    plan: &CapacityPlan,
    bin: &std::path::Path,
    zk: &str,
    cluster: &str,
    secret: &std::path::Path,
    clients: &Arc<Vec<Client>>,
    hot: &[String],
    value: &str,
    g: u32,
) -> Result<Moved, String> {
    let slot = slot_of(&hot[0]);
    let groups: Vec<u32> = (0..g).collect();
    let to = (SlotMap::even(&groups, 1)?.owner(slot) + 1) % g;
    let stop = Arc::new(AtomicBool::new(false));
    // Per writer: (key, last acknowledged value), and write latencies with
    // their start times.
    let acked = Arc::new(Mutex::new(std::collections::HashMap::<String, String>::new()));
    let latencies = Arc::new(Mutex::new(Vec::<(Instant, Duration)>::new()));
    // Other slots' writers: half as many, over 1,000 keys of other slots;
    // each write's latency with its start and its slot's group.
    let others = Arc::new(Mutex::new(Vec::<(Instant, Duration, u32)>::new()));
    let spread = SlotMap::even(&groups, 1)?;
    let from = spread.owner(slot);
    let cold: Vec<String> =
        (0..).map(|i| format!("capacity-other-{i}")).filter(|k| slot_of(k) != slot).take(HOT_KEYS).collect();
    let other_writers = (plan.writers / 2).max(2);
    let mut tasks: Vec<_> = (0..other_writers)
        .map(|w| {
            let (clients, stop, others) = (clients.clone(), stop.clone(), others.clone());
            let mine: Vec<String> = cold.iter().skip(w).step_by(other_writers).cloned().collect();
            let owners: Vec<u32> = mine.iter().map(|k| spread.owner(slot_of(k))).collect();
            let value = value.to_string();
            tokio::spawn(async move {
                let mut round = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = &mine[round % mine.len()];
                    let started = Instant::now();
                    if clients[w % 2]
                        .put_with(key, value.clone(), PutOptions { ack: Ack::Root, ttl: None })
                        .await
                        .is_ok()
                    {
                        others.lock().push((started, started.elapsed(), owners[round % mine.len()]));
                    }
                    round += 1;
                }
            })
        })
        .collect();
    tasks.extend((0..plan.writers).map(|w| {
        let (clients, stop, acked, latencies) = (clients.clone(), stop.clone(), acked.clone(), latencies.clone());
        let mine: Vec<String> = hot.iter().skip(w).step_by(plan.writers).cloned().collect();
        let base = value.to_string();
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) && !mine.is_empty() {
                let key = &mine[(round as usize) % mine.len()];
                let v = format!("{round}-{base}");
                let started = Instant::now();
                if clients[w % 2].put_with(key, v.clone(), PutOptions { ack: Ack::Root, ttl: None }).await.is_ok() {
                    latencies.lock().push((started, started.elapsed()));
                    acked.lock().insert(key.clone(), v);
                }
                round += 1;
            }
        })
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let began = Instant::now();
    let out = tokio::process::Command::new(bin)
        .args([
            "slots",
            "move",
            "--slots",
            &slot.to_string(),
            "--to",
            &to.to_string(),
            "--zk",
            zk,
            "--cluster",
            cluster,
        ])
        .arg("--cluster-secret-file")
        .arg(secret)
        .output()
        .await
        .map_err(|e| format!("slots move: {e}"))?;
    let ended = Instant::now();
    if !out.status.success() {
        stop.store(true, Ordering::Relaxed);
        return Err(format!("slots move: {}", String::from_utf8_lossy(&out.stderr)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // Latencies (sorted) of writes that overlapped the move, and of those
    // done before it began.
    let split = |all: &[(Instant, Duration)]| {
        let mut during: Vec<Duration> =
            all.iter().filter(|(s, d)| *s + *d >= began && *s <= ended).map(|(_, d)| *d).collect();
        let mut before: Vec<Duration> = all.iter().filter(|(s, d)| *s + *d < began).map(|(_, d)| *d).collect();
        during.sort_unstable();
        before.sort_unstable();
        (during, before)
    };
    let (during, before) = split(&latencies.lock());
    let others_of = |keep: &dyn Fn(u32) -> bool| -> Vec<(Instant, Duration)> {
        others.lock().iter().filter(|(_, _, g)| keep(*g)).map(|&(s, d, _)| (s, d)).collect()
    };
    let (others_during, others_before) = split(&others_of(&|_| true));
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let p99_of = |v: &[Duration]| ms(v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1))));
    let p99_during = |keep: &dyn Fn(u32) -> bool| p99_of(&split(&others_of(keep)).0);
    let p99 = p99_of(&during);
    let mut lost = 0;
    let acked = acked.lock().clone();
    for (key, v) in &acked {
        match clients[0].get_consistent(key).await {
            Ok(found) if found.value().as_ref() == v.as_bytes() => {}
            _ => lost += 1,
        }
    }
    // The other slots' keys go: the fill that follows counts keys held
    // from the same start as a run without a move.
    for (i, key) in cold.iter().enumerate() {
        match clients[i % 2].del_with(key, Ack::Root).await {
            Err(e) if e.code() != Some("not_found") => return Err(format!("deleting {key}: {e}")),
            _ => {}
        }
    }
    Ok(Moved {
        slot,
        keys: hot.len(),
        took_ms: (ended - began).as_secs_f64() * 1e3,
        writes: during.len(),
        pause_p99_ms: p99,
        pause_max_ms: ms(during.last()),
        before_p99_ms: p99_of(&before),
        others_p99_ms: p99_of(&others_during),
        others_before_p99_ms: p99_of(&others_before),
        others_source_p99_ms: p99_during(&|g| g == from),
        others_target_p99_ms: p99_during(&|g| g == to),
        others_other_groups_p99_ms: p99_during(&|g| g != from && g != to),
        lost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_each_g_its_ratios_to_one_group() {
        let row = |groups, keys_held, writes_per_s| Row {
            groups,
            cpu_bound: "25% of one core".into(),
            keys_held,
            writers: 16 * groups as usize,
            writes_per_s,
            root_cpu_us_per_write: 40.0,
            router_cpu_us_per_write: 30.0,
            machine_busy_pct: 97.4,
            moved: None,
        };
        let mut two = row(2, 1900, 1800.0);
        two.moved = Some(Moved {
            slot: 5,
            keys: 1000,
            took_ms: 120.0,
            writes: 30,
            pause_p99_ms: 45.5,
            pause_max_ms: 50.0,
            before_p99_ms: 30.25,
            others_p99_ms: 12.0,
            others_before_p99_ms: 10.0,
            others_source_p99_ms: 13.0,
            others_target_p99_ms: 14.0,
            others_other_groups_p99_ms: 11.0,
            lost: 0,
        });
        let text = table(&[row(1, 1000, 1000.0), two]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("1000") && lines[1].contains("1.00"), "{text}");
        assert!(lines[2].contains("1.90") && lines[2].contains("0.90"), "{text}");
        assert!(lines[2].contains(" 32 ") && lines[2].contains("30.0") && lines[2].contains("97%"), "{text}");
        assert!(
            lines[2].contains(
                "pause p99 45.5 ms max 50.0 ms (before: p99 30.2 ms), other slots p99 12.0 ms (before: 10.0 ms; \
             source group's 13.0, target group's 14.0, other groups' 11.0), 0 lost"
            ),
            "{text}"
        );
        assert_eq!(lines[3], "cpu bound per root: 25% of one core");
    }

    #[test]
    fn the_machine_is_busy_for_all_but_idle_iowait_and_steal() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        assert_eq!(ticks_of("cpu  100 5 50 800 20 3 2 20 0 0"), (160, 1000));
        assert_eq!(busy_pct((160, 1000), (660, 2000)), 50.0);
        assert_eq!(busy_pct((160, 1000), (160, 1000)), 0.0, "no time passed");
        let (busy, all) = machine_ticks();
        assert!(all > 0 && busy <= all, "{busy} of {all}");
    }

    #[test]
    fn a_quota_s_period_is_10_ms_unless_the_quota_would_be_under_1_ms() {
        assert_eq!(cfs_period_us(25), 10_000);
        assert_eq!(cfs_period_us(10), 10_000);
        assert_eq!(cfs_period_us(5), 100_000, "0.5 ms is under the kernel's minimum quota");
    }

    #[test]
    fn cpu_time_comes_from_proc() {
        // Busy for a while: more than one clock tick of CPU.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert!(cpu_us(std::process::id()) > 0, "{x}");
        assert_eq!(cpu_us(u32::MAX), 0);
    }
}
