//! `bench scale`: start N node processes on loopback (a root, then N-1 at
//! once), time until every one answers `/health` (registered), then read
//! each one's idle RSS from /proc. Uses ZooKeeper from `--zk` or a private
//! one, a cluster name of its own, and the same process helpers as
//! `treecache up` ([`crate::cli::local`]). Every process it started is
//! stopped before it returns, on success or failure.

use std::process::Child;
use std::time::Duration;

use tokio::time::Instant;

use super::report::{Report, Scale};
use super::Plan;
use crate::cli::local::{spawn_node, wait_healthy};
use crate::process::kib_field;
use crate::zkserver::{free_port, LocalZk};

/// The node processes of one run; dropping it stops them all: SIGTERM to
/// every one, then SIGKILL to whatever is left after the grace period.
pub(super) struct Procs {
    pub(super) children: Vec<Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &self.children {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for c in self.children.iter_mut() {
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Resident set size of `pid` in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    kib_field(status, "VmRSS:")
}

/// What a process costs beyond what it shares, from /proc/<pid>/smaps_rollup:
/// (PSS, private) in KiB. RSS counts the binary's text in every process
/// although 63 nodes share one copy in memory; PSS splits shared pages
/// among their users, private is what only this process holds.
pub fn pss_private_kib(pid: u32) -> Option<(u64, u64)> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_rollup(&rollup)
}

fn parse_rollup(rollup: &str) -> Option<(u64, u64)> {
    let pss = kib_field(rollup, "Pss:")?;
    let private = kib_field(rollup, "Private_Clean:")? + kib_field(rollup, "Private_Dirty:")?;
    Some((pss, private))
}

/// p50 and max of `values` (sorted here).
fn p50_max(mut values: Vec<u64>) -> (u64, u64) {
    values.sort_unstable();
    (values.get(values.len() / 2).copied().unwrap_or(0), values.last().copied().unwrap_or(0))
}

/// Pause between the last registration and reading memory.
const IDLE_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Node processes started on loopback under one private cluster, and
/// how long they took. Dropping it stops the nodes, then the private
/// ZooKeeper (fields drop in order).
pub struct LocalTree {
    procs: Procs,
    _zk: Option<LocalZk>,
    /// Node logs; kept on disk when a node failed to register.
    pub logs: tempfile::TempDir,
    /// Base URLs, root first, in the order of [`LocalTree::pids`].
    pub urls: Vec<String>,
    /// From spawning the root until it answered /health.
    pub root_ready: Duration,
    /// From spawning the root until every node answered /health.
    pub all_registered: Duration,
    /// Each registered node's depth, root first.
    pub depths: Vec<u32>,
    /// Why nodes did not register.
    pub failures: Vec<String>,
}

impl LocalTree {
    /// Every node's pid, in the order of [`LocalTree::urls`].
    pub fn pids(&self) -> Vec<u32> {
        self.procs.children.iter().map(|c| c.id()).collect()
    }
}

/// Starts `nodes` node processes (a root, then the rest at once, `fanout`
/// children each) using ZooKeeper `zk` or a private one, and waits up to
/// `ready_timeout` for every one to answer `/health`.
pub async fn launch(nodes: usize, fanout: u32, zk: Option<&str>, ready_timeout: Duration) -> Result<LocalTree, String> {
    let bin = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let logs = tempfile::Builder::new()
        .prefix("treecache-bench-")
        .tempdir()
        .map_err(|e| format!("cannot make a log directory: {e}"))?;
    let private_zk = match zk {
        Some(_) => None,
        None => Some(LocalZk::start().await?),
    };
    let zk = zk.map(str::to_string).or_else(|| private_zk.as_ref().map(LocalZk::addr)).unwrap_or_default();
    let cluster = format!("bench-{}-{}", std::process::id(), crate::clock::now_ms());
    let http =
        reqwest::Client::builder().no_proxy().build().map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let secret = logs.path().join("cluster-secret");
    crate::cli::local::write_new_secret(&secret)?;
    let mut procs = Procs { children: Vec::new() };
    let mut urls = Vec::new();
    let spawn = |i: usize, procs: &mut Procs| -> Result<String, String> {
        let port = free_port()?;
        let mut flags = crate::cli::local::node_args(&zk, &cluster, port, &secret);
        flags.extend(["--fanout".to_string(), fanout.to_string()]);
        if i == 0 {
            flags.push("--root".into());
        }
        let log = logs.path().join(format!("node-{i}.log"));
        procs.children.push(spawn_node(&bin, &flags, &log)?);
        Ok(format!("http://127.0.0.1:{port}"))
    };
    let log_hint = |e: String| format!("{e} (node logs in {})", logs.path().display());

    let start = Instant::now();
    urls.push(spawn(0, &mut procs)?);
    wait_healthy(&http, &urls[0], ready_timeout, procs.children.first_mut()).await.map_err(log_hint)?;
    let root_ready = start.elapsed();
    for i in 1..nodes {
        urls.push(spawn(i, &mut procs)?);
    }
    let deadline = start + ready_timeout;
    let waits = procs.children.iter_mut().zip(&urls).skip(1).map(|(child, url)| {
        let http = http.clone();
        async move {
            let left = deadline.saturating_duration_since(Instant::now());
            wait_healthy(&http, url, left, Some(child)).await
        }
    });
    let results = futures::future::join_all(waits).await;
    let all_registered = start.elapsed();
    let mut depths = vec![0];
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(health) => depths.push(health["depth"].as_u64().unwrap_or(0) as u32),
            Err(e) => failures.push(e),
        }
    }
    Ok(LocalTree { procs, _zk: private_zk, logs, urls, root_ready, all_registered, depths, failures })
}

pub async fn run(plan: &Plan) -> Result<Report, String> {
    let tree = launch(plan.scale_nodes, plan.fanout, plan.zk.as_deref(), plan.ready_timeout).await?;
    // Idle: read once everyone registered and the root's notifications
    // settled, with no load running.
    tokio::time::sleep(IDLE_SETTLE).await;
    let pids = tree.pids();
    let mut rss: Vec<u64> = pids.iter().filter_map(|&p| rss_kib(p)).collect();
    let (pss, private): (Vec<u64>, Vec<u64>) = pids.iter().filter_map(|&p| pss_private_kib(p)).unzip();
    let (pss_kib_p50, pss_kib_max) = p50_max(pss);
    let (private_kib_p50, private_kib_max) = p50_max(private);
    let root_rss = rss.first().copied().unwrap_or(0);
    rss.sort_unstable();
    let mean = if rss.is_empty() { 0 } else { rss.iter().sum::<u64>() / rss.len() as u64 };
    let LocalTree { procs, _zk, logs, root_ready, all_registered, depths, failures, .. } = tree;
    drop(procs);
    drop(_zk);
    let mut notes = Vec::new();
    if !failures.is_empty() {
        notes.push(format!("{} nodes did not register: {}", failures.len(), failures[0]));
        notes.push(format!("node logs in {}", logs.keep().display()));
    }
    let scale = Scale {
        nodes: plan.scale_nodes,
        registered: depths.len(),
        fanout: plan.fanout,
        max_depth: depths.iter().copied().max().unwrap_or(0),
        root_ready_ms: (root_ready.as_secs_f64() * 1e4).round() / 10.0,
        all_registered_ms: (all_registered.as_secs_f64() * 1e4).round() / 10.0,
        rss_kib_min: rss.first().copied().unwrap_or(0),
        rss_kib_p50: rss.get(rss.len() / 2).copied().unwrap_or(0),
        rss_kib_max: rss.last().copied().unwrap_or(0),
        rss_kib_mean: mean,
        rss_kib_root: root_rss,
        pss_kib_p50,
        pss_kib_max,
        private_kib_p50,
        private_kib_max,
    };
    Ok(Report { scenario: "scale".into(), settings: plan.settings(), scale: Some(scale), notes, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pss_and_private_from_smaps_rollup() {
        let rollup = "55a0-7ff [rollup]\nRss:  10324 kB\nPss:   2694 kB\nPss_Dirty: 2564 kB\n\
                      Shared_Clean: 7600 kB\nPrivate_Clean: 60 kB\nPrivate_Dirty: 2564 kB\n";
        assert_eq!(parse_rollup(rollup), Some((2694, 2624)));
        assert_eq!(parse_rollup("Rss: 1 kB\n"), None);
        assert!(pss_private_kib(std::process::id()).is_some_and(|(pss, private)| pss > 0 && private > 0));
        assert_eq!(p50_max(vec![5, 1, 9]), (5, 9));
        assert_eq!(p50_max(vec![]), (0, 0));
    }

    #[test]
    fn reads_vm_rss_from_proc_status() {
        let status = "Name:\ttreecache\nVmPeak:\t  20000 kB\nVmRSS:\t    7312 kB\nThreads:\t5\n";
        assert_eq!(parse_vm_rss(status), Some(7312));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
