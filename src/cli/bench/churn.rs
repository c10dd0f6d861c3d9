//! `bench churn`: memory under churn (issue 21). Starts a tree of
//! `--nodes` processes on loopback ([`scale::launch`], as `scale` does),
//! then loads it for `--duration`: `--writers` connections PUT (values of
//! `--value-size`, default 100-2000 B) or, `--delete-pct` of the time
//! (default 30), DELETE, with `--ack`; `--readers` connections GET; every
//! request takes a uniform key of a fixed key space (`--keys`, default
//! 20,000) and a random node. Every `--sample-every` (default 10 s) it
//! reads each node's RSS (`VmRSS` of /proc/<pid>/status) and its `/metrics`
//! `treecache_entries`, `treecache_tombstones` and `treecache_bytes`.
//!
//! The report gives, per node, the growth of RSS, live entries and bytes
//! over the last third of the run, and RSS per live entry at the end.
//! With `--redis HOST:PORT` the same workload (same seed, connections and
//! duration) runs against that Redis (flushed first) at the same time,
//! sampled at the same moments from `INFO memory` (`used_memory_rss`) and
//! DBSIZE. Both share the machine's cores, so their throughputs are not
//! comparable; their memory is.
//!
//! A measurement, not a test: nothing here asserts a figure. The pure
//! parts ([`Mix`], [`MemSummary`]) are unit-tested.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::dist::ValuePool;
use super::load::{self, worker_seed, Connections, Request, Workload};
use super::redis::Redis;
use super::report::{Churn, ChurnNode, ChurnRedis, MemSample, MemSummary, Report};
use super::scale::{launch, rss_kib};
use super::{topo, Plan};
use crate::client::Ack;

/// What one request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
    Delete,
}

/// One drawn request: what, which key, at which of the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draw {
    pub op: Op,
    pub key: u64,
    pub node: usize,
    pub value: Option<Bytes>,
}

/// The churn: workers `0..writers` write (`delete_pct` of their requests
/// delete), the others read; keys uniform over `0..keys`.
#[derive(Debug, Clone)]
pub struct Mix {
    pub keys: u64,
    pub delete_pct: u32,
    pub writers: usize,
    pub values: ValuePool,
}

impl Mix {
    /// `worker`'s next request over `nodes` nodes. The same draws in the
    /// same order for the tree and for Redis, so one seed is one workload.
    pub fn draw<R: Rng>(&self, worker: usize, nodes: usize, rng: &mut R) -> Draw {
        let key = rng.gen_range(0..self.keys);
        let node = rng.gen_range(0..nodes.max(1));
        let op = if worker >= self.writers {
            Op::Get
        } else if rng.gen_range(0..100) < self.delete_pct {
            Op::Delete
        } else {
            Op::Put
        };
        let value = (op == Op::Put).then(|| self.values.value(rng));
        Draw { op, key, node, value }
    }
}

struct ChurnLoad {
    nodes: Vec<String>,
    prefix: String,
    mix: Mix,
    ack: Ack,
}

impl Workload for ChurnLoad {
    fn nodes(&self) -> &[String] {
        &self.nodes
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn request(&self, _n: u64, worker: usize, rng: &mut StdRng) -> Option<Request> {
        let d = self.mix.draw(worker, self.nodes.len(), rng);
        Some(match (d.op, d.value) {
            (Op::Put, Some(v)) => Request::put(d.node, d.key, v, self.ack),
            (Op::Delete, _) => Request::delete(d.node, d.key, self.ack),
            _ => Request::get(d.node, d.key),
        })
    }
}

/// Runs `load` to its end while `probe` samples every `every` (once at
/// the start, once after the end); the samples come back with its output.
async fn sampled<T, P, F, L>(every: Duration, probe: P, load: L) -> (L::Output, Vec<T>)
where
    P: Fn(f64) -> F,
    F: Future<Output = T>,
    L: Future,
{
    let start = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = Vec::new();
    tokio::pin!(load);
    let out = loop {
        tokio::select! {
            out = &mut load => break out,
            _ = tick.tick() => samples.push(probe(start.elapsed().as_secs_f64()).await),
        }
    };
    samples.push(probe(start.elapsed().as_secs_f64()).await);
    (out, samples)
}

/// A gauge's value in `/metrics` text (`name value` on a line of its own).
fn gauge(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).map(|v| v as u64)
}

/// Gauges of a node's bounded tables, read beside its entries and bytes.
pub const TABLE_GAUGES: &[&str] =
    &["holders", "write_ids_remembered", "write_ids_bytes", "write_outcomes", "write_outcomes_bytes", "push_queued"];

/// One node's memory now: RSS of `pid`, gauges from `url/metrics`.
async fn sample_node(http: &reqwest::Client, url: &str, pid: u32, t_s: f64) -> Option<MemSample> {
    let rss_kib = rss_kib(pid)?;
    let text = http.get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()?;
    Some(MemSample {
        t_s: (t_s * 10.0).round() / 10.0,
        rss_kib,
        entries: gauge(&text, "treecache_entries")?,
        tombstones: gauge(&text, "treecache_tombstones").unwrap_or(0),
        bytes: gauge(&text, "treecache_bytes")?,
        tables: TABLE_GAUGES
            .iter()
            .filter_map(|g| Some((g.to_string(), gauge(&text, &format!("treecache_{g}"))?)))
            .collect(),
    })
}

/// Redis's memory now: `used_memory_rss`, DBSIZE, `used_memory`.
fn sample_redis(addr: &str, t_s: f64) -> Result<MemSample, String> {
    let mut r = Redis::connect(addr)?;
    Ok(MemSample {
        t_s: (t_s * 10.0).round() / 10.0,
        rss_kib: r.info_field("memory", "used_memory_rss")? / 1024,
        entries: r.integer(&[b"DBSIZE"])?,
        tombstones: 0,
        bytes: r.info_field("memory", "used_memory")?,
        tables: Default::default(),
    })
}

/// The command line that repeats this run: as given, with `--seed`.
fn command(seed: u64) -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut() {
        *first = "treecache".into();
    }
    if !args.iter().any(|a| a == "--seed" || a.starts_with("--seed=")) {
        args.extend(["--seed".into(), seed.to_string()]);
    }
    args.join(" ")
}

pub async fn run(plan: &Plan) -> Result<Report, String> {
    let seed = plan.load.seed.unwrap_or_else(rand::random);
    let command = command(seed);
    eprintln!("bench churn: seed {seed}; to repeat: {command}");
    let tree = launch(plan.scale_nodes, plan.fanout, plan.zk.as_deref(), plan.ready_timeout).await?;
    if let Some(e) = tree.failures.first() {
        let logs = tree.logs.path().display().to_string();
        return Err(format!("{} nodes did not register: {e} (node logs in {logs})", tree.failures.len()));
    }
    let http = super::load::client_builder(&plan.headers, plan.tls.as_ref())
        .timeout(plan.load.timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let shape = topo::discover(&http, &tree.urls[0]).await?;
    let pids = tree.pids();
    let mix = Mix {
        keys: plan.keys,
        delete_pct: plan.delete_pct,
        writers: plan.writers,
        values: ValuePool::new(plan.sizes, &mut StdRng::seed_from_u64(seed)),
    };
    let workload =
        ChurnLoad { nodes: tree.urls.clone(), prefix: format!("{}-", plan.prefix), mix: mix.clone(), ack: plan.ack };
    let load = load::Load { seed: Some(seed), ..plan.load.clone() };
    let conns = Connections::new(load.connections, load.timeout, &plan.headers, plan.tls.as_ref())?;
    if let Some(addr) = &plan.redis {
        Redis::connect(addr)?.call(&[b"FLUSHALL"])?;
    }
    let probe = |t_s: f64| {
        let (http, urls, pids) = (&http, &tree.urls, &pids);
        async move {
            let each = urls.iter().zip(pids).map(|(u, &p)| sample_node(http, u, p, t_s));
            let redis = async {
                let addr = plan.redis.clone()?;
                tokio::task::spawn_blocking(move || sample_redis(&addr, t_s).ok()).await.ok().flatten()
            };
            futures::future::join(futures::future::join_all(each), redis).await
        }
    };
    let tree_load = load::run("churn", tree.urls.clone(), &load, &conns, Arc::new(workload));
    let redis_load = async {
        match &plan.redis {
            Some(addr) => Some(redis_churn(addr, plan, &mix, seed, shape.len()).await),
            None => None,
        }
    };
    let ((phase, redis_ops), samples) =
        sampled(plan.sample_every, probe, futures::future::join(tree_load, redis_load)).await;
    let (phase, _, _) = phase?;
    let nodes = tree
        .urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let samples: Vec<MemSample> = samples.iter().filter_map(|(s, _)| s[i].clone()).collect();
            let place = shape.iter().find(|n| &n.url == url);
            ChurnNode {
                id: place.map_or(0, |n| n.id),
                depth: place.map_or(0, |n| n.depth),
                url: url.clone(),
                pid: pids[i],
                summary: MemSummary::of(&samples),
                samples,
            }
        })
        .collect();
    drop(tree);
    let redis = match (redis_ops, &plan.redis) {
        (Some(ops), Some(addr)) => {
            let (ops, secs) = ops?;
            let samples: Vec<MemSample> = samples.into_iter().filter_map(|(_, r)| r).collect();
            Some(ChurnRedis {
                addr: addr.clone(),
                ops,
                ops_per_s: (ops as f64 / secs * 10.0).round() / 10.0,
                summary: MemSummary::of(&samples),
                samples,
            })
        }
        _ => None,
    };
    let mut report = Report {
        scenario: "churn".into(),
        settings: plan.settings(),
        total: super::report::Phase { name: "total".into(), ..phase.clone() },
        phases: vec![phase],
        churn: Some(Churn {
            seed,
            command,
            sample_every_s: plan.sample_every.as_secs_f64(),
            writers: plan.writers,
            readers: load.connections - plan.writers,
            delete_pct: plan.delete_pct,
            nodes,
            redis,
        }),
        ..Default::default()
    };
    report.notes.push("not_found errors are reads (and ack=root deletes) of keys deleted or never written".into());
    Ok(report)
}

/// The same workload against Redis, beside the tree's: one blocking
/// connection per worker, the same draws (the node drawn is ignored).
/// Returns the commands sent and the seconds it took.
async fn redis_churn(addr: &str, plan: &Plan, mix: &Mix, seed: u64, nodes: usize) -> Result<(u64, f64), String> {
    let duration = plan.load.duration.unwrap_or(Duration::from_secs(60));
    let until = std::time::Instant::now() + duration;
    let started = Instant::now();
    let workers = (0..plan.load.connections).map(|i| {
        let (addr, mix, prefix) = (addr.to_string(), mix.clone(), format!("{}-", plan.prefix));
        tokio::task::spawn_blocking(move || redis_worker(&addr, i, seed, nodes, &mix, &prefix, until))
    });
    let mut ops = 0;
    for done in futures::future::join_all(workers).await {
        ops += done.map_err(|e| format!("a Redis worker failed: {e}"))??;
    }
    Ok((ops, started.elapsed().as_secs_f64()))
}

/// Worker `index` of the Redis run: the tree's worker `index`'s draws as
/// GET, SET and DEL, until `until`. Returns the commands sent.
fn redis_worker(
    addr: &str,
    index: usize,
    seed: u64,
    nodes: usize,
    mix: &Mix,
    prefix: &str,
    until: std::time::Instant,
) -> Result<u64, String> {
    let mut r = Redis::connect(addr)?;
    let mut rng = StdRng::seed_from_u64(worker_seed(seed, index));
    let mut key = String::new();
    let mut sent = 0;
    while std::time::Instant::now() < until {
        let d = mix.draw(index, nodes, &mut rng);
        key.clear();
        key.push_str(prefix);
        key.push_str(&d.key.to_string());
        let k = key.as_bytes();
        match (d.op, d.value) {
            (Op::Put, Some(v)) => r.call(&[b"SET", k, &v])?,
            (Op::Delete, _) => r.call(&[b"DEL", k])?,
            _ => r.call(&[b"GET", k])?,
        };
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::dist::ValueSizes;

    fn mix() -> Mix {
        let values = ValuePool::new(ValueSizes { min: 100, max: 2000 }, &mut StdRng::seed_from_u64(1));
        Mix { keys: 20_000, delete_pct: 30, writers: 4, values }
    }

    #[test]
    fn writers_put_and_delete_readers_only_read() {
        let m = mix();
        let mut rng = StdRng::seed_from_u64(9);
        let (mut puts, mut deletes) = (0, 0);
        for _ in 0..10_000 {
            let d = m.draw(0, 7, &mut rng);
            assert!(d.key < 20_000 && d.node < 7);
            match d.op {
                Op::Put => {
                    puts += 1;
                    assert!((100..=2000).contains(&d.value.unwrap().len()));
                }
                Op::Delete => deletes += 1,
                Op::Get => panic!("a writer read"),
            }
        }
        assert!((2_700..3_300).contains(&deletes), "{deletes} deletes of 10,000");
        assert_eq!(puts + deletes, 10_000);
        assert!((0..1000).all(|_| m.draw(4, 7, &mut rng).op == Op::Get));
    }

    #[test]
    fn one_seed_draws_one_workload() {
        let m = mix();
        let draws = |seed| {
            let mut rng = StdRng::seed_from_u64(worker_seed(seed, 2));
            (0..100).map(|_| m.draw(2, 7, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draws(5), draws(5));
        assert_ne!(draws(5), draws(6));
    }

    #[test]
    fn reads_gauges_from_metrics_text() {
        let text = "# TYPE treecache_entries gauge\ntreecache_entries 13100\ntreecache_entries_x 1\n\
                    treecache_bytes 13500000\n";
        assert_eq!(gauge(text, "treecache_entries"), Some(13_100));
        assert_eq!(gauge(text, "treecache_bytes"), Some(13_500_000));
        assert_eq!(gauge(text, "treecache_tombstones"), None);
    }
}
