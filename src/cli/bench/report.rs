//! What a run found: counts, HDR-histogram latencies, hit ratio, errors by
//! kind; the text a person reads, the JSON a machine reads (`--json`), and
//! the consistency check both pass before they are printed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, up to this (an hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    // 3 significant figures: 0.1% resolution at every scale.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            ms(self.mean_us as u64)
        )
    }
}

/// Microseconds as milliseconds for people.
pub fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

/// One operation kind within a phase (`get`, `put`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpStats {
    pub ok: u64,
    pub latency: Latency,
}

/// One stretch of load: a scenario has one, `miss` one per depth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub targets: Vec<String>,
    /// Requests that completed, well or not: `ok + errors`.
    pub requests: u64,
    pub ok: u64,
    /// Failed requests by kind (`timeout`, `connect`, `not_found`, `http_500`...).
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub throughput_rps: f64,
    /// Latency of the ok requests (open loop: from the scheduled send time).
    pub latency: Latency,
    pub ops: BTreeMap<String, OpStats>,
    /// ok GETs answered `X-Cache: hit` / `miss`.
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses); null when no read saw an `X-Cache` header.
    pub hit_ratio: Option<f64>,
}

impl Phase {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Counts and histograms as workers fill them; merged, then made a [`Phase`].
#[derive(Debug, Clone)]
pub struct Tally {
    pub all: Histogram<u64>,
    pub ops: BTreeMap<&'static str, Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
    pub hits: u64,
    pub misses: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally { all: new_histogram(), ops: BTreeMap::new(), errors: BTreeMap::new(), hits: 0, misses: 0 }
    }
}

impl Tally {
    pub fn ok(&mut self, op: &'static str, latency: Duration) {
        record(&mut self.all, latency);
        record(self.ops.entry(op).or_insert_with(new_histogram), latency);
    }

    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Tally) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.all.add(&other.all);
        for (op, h) in &other.ops {
            let _ = self.ops.entry(op).or_insert_with(new_histogram).add(h);
        }
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        self.hits += other.hits;
        self.misses += other.misses;
    }

    pub fn phase(&self, name: &str, targets: Vec<String>, elapsed: Duration) -> Phase {
        let ok = self.all.len();
        let errors: u64 = self.errors.values().sum();
        let requests = ok + errors;
        let secs = elapsed.as_secs_f64();
        Phase {
            name: name.to_string(),
            targets,
            requests,
            ok,
            errors: self.errors.clone(),
            elapsed_s: (secs * 1000.0).round() / 1000.0,
            throughput_rps: if secs > 0.0 { (requests as f64 / secs * 10.0).round() / 10.0 } else { 0.0 },
            latency: Latency::of(&self.all),
            ops: self
                .ops
                .iter()
                .map(|(k, h)| (k.to_string(), OpStats { ok: h.len(), latency: Latency::of(h) }))
                .collect(),
            hits: self.hits,
            misses: self.misses,
            hit_ratio: hit_ratio(self.hits, self.misses),
        }
    }
}

pub fn hit_ratio(hits: u64, misses: u64) -> Option<f64> {
    (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64)
}

/// The miss scenario at one depth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Level {
    pub depth: u32,
    pub node_id: u64,
    pub url: String,
    pub p50_us: u64,
    pub p99_us: u64,
    /// This depth's latency minus the one above it.
    pub extra_p50_us: Option<i64>,
    pub extra_p99_us: Option<i64>,
    pub hit_ratio: Option<f64>,
}

/// Cost of one extra level on a miss, averaged over the tree's depth:
/// (deepest − root) / depth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelCost {
    pub p50_us: f64,
    pub p99_us: f64,
}

/// The converge scenario: time from a write's send until every holder
/// serves it (polled), and from the root's commit until each node has it
/// (the nodes' own push-lag histograms).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Converge {
    pub writer: String,
    pub holders: usize,
    pub writes: u64,
    /// False with `--no-poll`: the counts and latencies below stay 0.
    #[serde(default = "polled_by_default")]
    pub polled: bool,
    pub converged: u64,
    pub not_converged: u64,
    /// Until the last holder served the new version.
    pub all_holders: Latency,
    /// Until each single holder served it.
    pub per_holder: Latency,
    pub polls: u64,
    /// From `/metrics` of every node before and after the writes; `None`
    /// when no node exported `treecache_push_lag_seconds`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub push_lag: Option<super::lag::PushLag>,
    /// CPU (user + system) the node processes spent per write, in µs,
    /// summed over `processes` nodes: each node's `process_cpu_seconds_total`
    /// from the same scrapes as the push lag; `None` when no node gave it.
    #[serde(default)]
    pub cpu_us_per_write: Option<f64>,
    /// Nodes summed into `cpu_us_per_write`: the ones that gave their CPU
    /// time before and after the writes (fewer than `holders`: the others
    /// did not answer, and a note says so).
    #[serde(default)]
    pub processes: usize,
}

/// Reports from before `--no-poll` always polled.
fn polled_by_default() -> bool {
    true
}

/// The scale scenario: node processes started, registered, and their memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    pub nodes: usize,
    pub registered: usize,
    pub fanout: u32,
    pub max_depth: u32,
    /// From spawning the root until it answered /health.
    pub root_ready_ms: f64,
    /// From spawning the root until every node answered /health.
    pub all_registered_ms: f64,
    pub rss_kib_min: u64,
    pub rss_kib_p50: u64,
    pub rss_kib_max: u64,
    pub rss_kib_mean: u64,
    pub rss_kib_root: u64,
    /// Proportional set size: shared pages (the binary, libc) split among
    /// the processes that map them. What a node really adds.
    #[serde(default)]
    pub pss_kib_p50: u64,
    #[serde(default)]
    pub pss_kib_max: u64,
    /// Pages only this process holds (its heap, stacks, private data).
    #[serde(default)]
    pub private_kib_p50: u64,
    #[serde(default)]
    pub private_kib_max: u64,
}

/// One reading of a process's memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemSample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// `VmRSS` (Redis: `used_memory_rss`), KiB.
    pub rss_kib: u64,
    /// `treecache_entries` (values and tombstones; Redis: DBSIZE).
    pub entries: u64,
    /// `treecache_tombstones` (Redis: 0).
    pub tombstones: u64,
    /// `treecache_bytes` (Redis: `used_memory`).
    pub bytes: u64,
    /// Other gauges of the node's tables, by name without
    /// the `treecache_` prefix (see [`super::churn::TABLE_GAUGES`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, u64>,
}

impl MemSample {
    pub fn live(&self) -> u64 {
        self.entries.saturating_sub(self.tombstones)
    }
}

/// Growth over the last third of a run (from the last sample at or before
/// two thirds of the last sample's time to the last sample), and what
/// memory costs per live entry at the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemSummary {
    pub from_s: f64,
    pub to_s: f64,
    pub rss_kib_from: u64,
    pub rss_kib_to: u64,
    pub rss_growth_pct: f64,
    pub live_from: u64,
    pub live_to: u64,
    pub live_growth_pct: f64,
    pub bytes_from: u64,
    pub bytes_to: u64,
    pub bytes_growth_pct: f64,
    /// RSS over live entries at the end, bytes.
    pub rss_per_live_entry: Option<f64>,
    /// RSS over `bytes` at the end.
    pub rss_per_byte: Option<f64>,
}

fn growth_pct(from: u64, to: u64) -> f64 {
    if from == 0 {
        return 0.0;
    }
    ((to as f64 / from as f64 - 1.0) * 1000.0).round() / 10.0
}

impl MemSummary {
    /// `None` without two samples in time order.
    pub fn of(samples: &[MemSample]) -> Option<MemSummary> {
        let last = samples.last()?;
        let from = samples.iter().rev().find(|s| s.t_s <= last.t_s * 2.0 / 3.0)?;
        if from.t_s >= last.t_s {
            return None;
        }
        let per = |n: u64, d: u64| (d > 0).then(|| ((n as f64 / d as f64) * 100.0).round() / 100.0);
        Some(MemSummary {
            from_s: from.t_s,
            to_s: last.t_s,
            rss_kib_from: from.rss_kib,
            rss_kib_to: last.rss_kib,
            rss_growth_pct: growth_pct(from.rss_kib, last.rss_kib),
            live_from: from.live(),
            live_to: last.live(),
            live_growth_pct: growth_pct(from.live(), last.live()),
            bytes_from: from.bytes,
            bytes_to: last.bytes,
            bytes_growth_pct: growth_pct(from.bytes, last.bytes),
            rss_per_live_entry: per(last.rss_kib * 1024, last.live()).map(f64::round),
            rss_per_byte: per(last.rss_kib * 1024, last.bytes),
        })
    }
}

/// One node of a churn run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChurnNode {
    pub id: u64,
    pub url: String,
    pub depth: u32,
    pub pid: u32,
    pub samples: Vec<MemSample>,
    pub summary: Option<MemSummary>,
}

/// Redis under the same churn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChurnRedis {
    pub addr: String,
    pub ops: u64,
    pub ops_per_s: f64,
    pub samples: Vec<MemSample>,
    pub summary: Option<MemSummary>,
}

/// The churn scenario: memory of every node (and Redis) under churn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    pub seed: u64,
    /// The command that repeats the run.
    pub command: String,
    pub sample_every_s: f64,
    pub writers: usize,
    pub readers: usize,
    pub delete_pct: u32,
    pub nodes: Vec<ChurnNode>,
    pub redis: Option<ChurnRedis>,
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

impl Churn {
    fn text(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "  churn: {} writers ({}% deletes), {} readers, each request at a random node; seed {}",
            self.writers, self.delete_pct, self.readers, self.seed
        );
        let _ = writeln!(out, "  repeat: {}", self.command);
        let _ = writeln!(
            out,
            "  memory over the last third of the run (RSS: VmRSS; live: treecache_entries - treecache_tombstones; \
             bytes: treecache_bytes):"
        );
        let _ = writeln!(
            out,
            "    {:<8} {:>5}  {:<26} {:<22} {:<24} {:>10} {:>9}",
            "node", "depth", "RSS MiB (growth)", "live entries (growth)", "bytes MB (growth)", "RSS/live", "RSS/bytes"
        );
        let row = |out: &mut String, name: &str, depth: &str, s: &MemSummary| {
            let _ = writeln!(
                out,
                "    {:<8} {:>5}  {:<26} {:<22} {:<24} {:>10} {:>9}",
                name,
                depth,
                format!("{} -> {} ({:+.1}%)", mib(s.rss_kib_from), mib(s.rss_kib_to), s.rss_growth_pct),
                format!("{} -> {} ({:+.1}%)", s.live_from, s.live_to, s.live_growth_pct),
                format!(
                    "{:.1} -> {:.1} ({:+.1}%)",
                    s.bytes_from as f64 / 1e6,
                    s.bytes_to as f64 / 1e6,
                    s.bytes_growth_pct
                ),
                s.rss_per_live_entry.map_or("-".into(), |b| format!("{b:.0} B")),
                s.rss_per_byte.map_or("-".into(), |r| format!("{r:.2}x")),
            );
        };
        for n in &self.nodes {
            match &n.summary {
                Some(s) => row(out, &format!("node {}", n.id), &n.depth.to_string(), s),
                None => {
                    let _ = writeln!(out, "    node {}: too few samples", n.id);
                }
            }
        }
        if let Some(r) = &self.redis {
            match &r.summary {
                Some(s) => row(out, "redis", "-", s),
                None => {
                    let _ = writeln!(out, "    redis: too few samples");
                }
            }
            let _ = writeln!(
                out,
                "    (redis: RSS is used_memory_rss, bytes used_memory; {} commands, {:.0}/s)",
                r.ops, r.ops_per_s
            );
            let redis_per = r.summary.as_ref().and_then(|s| s.rss_per_live_entry);
            for n in &self.nodes {
                if let (Some(a), Some(b)) = (n.summary.as_ref().and_then(|s| s.rss_per_live_entry), redis_per) {
                    let _ = writeln!(out, "    node {} RSS per live entry / Redis's: {:.2}x", n.id, a / b);
                }
            }
        }
        for n in &self.nodes {
            if let Some(last) = n.samples.last().filter(|s| !s.tables.is_empty()) {
                let list: Vec<String> = last.tables.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(out, "    node {} at the end: {}", n.id, list.join(", "));
            }
        }
        let _ = writeln!(out, "  RSS MiB by time:");
        let mut header = format!("    {:>7}", "t s");
        for n in &self.nodes {
            let _ = write!(header, " {:>7}", format!("node {}", n.id));
        }
        if self.redis.is_some() {
            let _ = write!(header, " {:>7}", "redis");
        }
        let _ = writeln!(out, "{header}");
        let longest = self.nodes.iter().map(|n| n.samples.len()).max().unwrap_or(0);
        let step = (60.0 / self.sample_every_s.max(1.0)).round().max(1.0) as usize;
        for i in (0..longest).filter(|i| i % step == 0 || i + 1 == longest) {
            let t = self.nodes.iter().find_map(|n| n.samples.get(i)).map_or(0.0, |s| s.t_s);
            let mut line = format!("    {t:>7.0}");
            for n in &self.nodes {
                let _ = write!(line, " {:>7}", n.samples.get(i).map_or("-".into(), |s| mib(s.rss_kib)));
            }
            if let Some(r) = &self.redis {
                let _ = write!(line, " {:>7}", r.samples.get(i).map_or("-".into(), |s| mib(s.rss_kib)));
            }
            let _ = writeln!(out, "{line}");
        }
    }
}

/// Echo of what was asked, so a JSON report stands on its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub connections: usize,
    /// `closed` or `open`.
    pub loop_kind: String,
    pub rate: Option<f64>,
    pub duration_s: Option<f64>,
    pub requests: Option<u64>,
    pub warmup_s: f64,
    pub keys: u64,
    pub popularity: String,
    pub theta: Option<f64>,
    pub value_size: String,
    pub ack: Option<String>,
    pub read_pct: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub settings: Settings,
    /// Every phase merged.
    pub total: Phase,
    pub phases: Vec<Phase>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub levels: Option<Vec<Level>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub per_level: Option<LevelCost>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub converge: Option<Converge>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scale: Option<Scale>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub churn: Option<Churn>,
    pub notes: Vec<String>,
}

impl Report {
    /// Checks that the numbers agree with each other (not that they are
    /// fast): counts add up within and across phases, percentiles are
    /// ordered, hit ratio matches its counts.
    pub fn check(&self) -> Result<(), String> {
        let mut phases: Vec<&Phase> = self.phases.iter().collect();
        phases.push(&self.total);
        for p in phases {
            let at = |what: &str| format!("phase {:?}: {what}", p.name);
            if p.requests != p.ok + p.error_count() {
                return Err(at(&format!("requests {} != ok {} + errors {}", p.requests, p.ok, p.error_count())));
            }
            if p.latency.count != p.ok {
                return Err(at(&format!("latency count {} != ok {}", p.latency.count, p.ok)));
            }
            let op_sum: u64 = p.ops.values().map(|o| o.ok).sum();
            if op_sum != p.ok {
                return Err(at(&format!("ops add up to {op_sum}, ok is {}", p.ok)));
            }
            for o in p.ops.values() {
                if o.ok != o.latency.count {
                    return Err(at("an op's latency count differs from its ok count"));
                }
            }
            let gets = p.ops.get("get").map_or(0, |o| o.ok);
            if p.hits + p.misses > gets {
                return Err(at(&format!("hits {} + misses {} > ok GETs {gets}", p.hits, p.misses)));
            }
            if p.hit_ratio != hit_ratio(p.hits, p.misses) {
                return Err(at("hit ratio does not match hits and misses"));
            }
            let l = &p.latency;
            if l.count > 0
                && !(l.p50_us <= l.p90_us && l.p90_us <= l.p99_us && l.p99_us <= l.p999_us && l.p999_us <= l.max_us)
            {
                return Err(at("percentiles are not ordered"));
            }
        }
        if !self.phases.is_empty() {
            let sum = |f: fn(&Phase) -> u64| self.phases.iter().map(f).sum::<u64>();
            if sum(|p| p.requests) != self.total.requests
                || sum(|p| p.ok) != self.total.ok
                || sum(|p| p.hits) != self.total.hits
                || sum(|p| p.misses) != self.total.misses
                || sum(Phase::error_count) != self.total.error_count()
            {
                return Err("the total is not the sum of the phases".into());
            }
        }
        if let Some(c) = self.converge.as_ref().filter(|c| c.polled) {
            if c.converged + c.not_converged != c.writes {
                return Err(format!(
                    "converge: {} converged + {} not converged != {} writes",
                    c.converged, c.not_converged, c.writes
                ));
            }
            if c.all_holders.count != c.converged {
                return Err("converge: latency count differs from converged writes".into());
            }
        }
        if let Some(c) = &self.converge {
            if c.processes > c.holders {
                return Err(format!("converge: CPU summed over {} processes, {} holders", c.processes, c.holders));
            }
        }
        if let Some(s) = &self.scale {
            if s.registered > s.nodes {
                return Err("scale: more nodes registered than started".into());
            }
        }
        Ok(())
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let _ = write!(out, "treecache bench {}: ", self.scenario);
        if let Some(sc) = &self.scale {
            let _ = write!(out, "{} node processes on loopback", sc.nodes);
        } else {
            let _ = write!(out, "{} connections, {} loop", s.connections, s.loop_kind);
            if let Some(r) = s.rate {
                let _ = write!(out, " at {r} req/s");
            }
            if let Some(d) = s.duration_s {
                let _ = write!(out, ", {d} s");
            }
            if let Some(n) = s.requests {
                let _ = write!(out, ", {n} requests");
            }
            if s.keys > 0 {
                let _ = write!(out, ", {} keys {}", s.keys, s.popularity);
                if let Some(t) = s.theta {
                    let _ = write!(out, " ({t})");
                }
                let _ = write!(out, ", values {}", s.value_size);
            }
            if let Some(a) = &s.ack {
                let _ = write!(out, ", ack={a}");
            }
            if let Some(r) = s.read_pct {
                let _ = write!(out, ", {r}% reads");
            }
        }
        out.push('\n');
        if self.phases.len() > 1 {
            for p in &self.phases {
                phase_text(&mut out, p, "  ");
            }
            let _ = writeln!(out, "  all phases:");
        }
        if self.scale.is_none() {
            phase_text(&mut out, &self.total, "  ");
        }
        if let Some(levels) = &self.levels {
            let _ = writeln!(out, "  miss cost by depth (0 = read at the root, a hit):");
            for l in levels {
                let extra = match (l.extra_p50_us, l.extra_p99_us) {
                    (Some(a), Some(b)) => format!("  extra level: p50 {}  p99 {}", signed_ms(a), signed_ms(b)),
                    _ => String::new(),
                };
                let _ = writeln!(
                    out,
                    "    depth {} (node {}): p50 {}  p99 {}{extra}",
                    l.depth,
                    l.node_id,
                    ms(l.p50_us),
                    ms(l.p99_us)
                );
            }
        }
        if let Some(c) = &self.per_level {
            let _ = writeln!(
                out,
                "  per level (mean over the depth): p50 {}  p99 {}",
                ms(c.p50_us as u64),
                ms(c.p99_us as u64)
            );
        }
        if let Some(c) = &self.converge {
            if c.polled {
                let _ = writeln!(
                    out,
                    "  converge: {} writes at {}, {} holders, {} converged, {} did not ({} polls)",
                    c.writes, c.writer, c.holders, c.converged, c.not_converged, c.polls
                );
                let _ = writeln!(out, "    every holder: {}", c.all_holders.line());
                let _ = writeln!(out, "    each holder:  {}", c.per_holder.line());
            } else {
                let _ = writeln!(
                    out,
                    "  converge: {} writes at {}, {} holders (not polled)",
                    c.writes, c.writer, c.holders
                );
            }
            if let Some(l) = &c.push_lag {
                let _ = writeln!(
                    out,
                    "    push lag, root commit to node (/metrics of {} nodes, {} updates): p50 {}  p90 {}  p99 {}  (mean {})",
                    l.nodes,
                    l.updates,
                    ms(l.p50_us),
                    ms(l.p90_us),
                    ms(l.p99_us),
                    ms(l.mean_us)
                );
            }
            if let Some(us) = c.cpu_us_per_write {
                let missing = match c.holders - c.processes.min(c.holders) {
                    0 => String::new(),
                    n => format!(" ({n} of {} nodes not scraped, not counted)", c.holders),
                };
                let _ = writeln!(out, "    CPU per write, summed over {} processes: {us:.1} µs{missing}", c.processes);
            }
        }
        if let Some(sc) = &self.scale {
            let _ = writeln!(
                out,
                "  {} of {} nodes registered (fanout {}, depth {}): root ready {:.0} ms, all registered {:.0} ms",
                sc.registered, sc.nodes, sc.fanout, sc.max_depth, sc.root_ready_ms, sc.all_registered_ms
            );
            let _ = writeln!(
                out,
                "  idle RSS per node: min {} KiB  p50 {} KiB  mean {} KiB  max {} KiB  (root {} KiB)",
                sc.rss_kib_min, sc.rss_kib_p50, sc.rss_kib_mean, sc.rss_kib_max, sc.rss_kib_root
            );
            let _ = writeln!(
                out,
                "  idle PSS per node: p50 {} KiB  max {} KiB;  private: p50 {} KiB  max {} KiB",
                sc.pss_kib_p50, sc.pss_kib_max, sc.private_kib_p50, sc.private_kib_max
            );
        }
        if let Some(c) = &self.churn {
            c.text(&mut out);
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }
}

fn signed_ms(us: i64) -> String {
    format!("{:+.3} ms", us as f64 / 1000.0)
}

fn phase_text(out: &mut String, p: &Phase, indent: &str) {
    let _ = writeln!(out, "{indent}[{}] {}", p.name, p.targets.join(", "));
    let _ = writeln!(
        out,
        "{indent}  requests   {} in {:.2} s (ok {}, errors {})",
        p.requests,
        p.elapsed_s,
        p.ok,
        p.error_count()
    );
    let _ = writeln!(out, "{indent}  throughput {:.1} req/s", p.throughput_rps);
    let _ = writeln!(out, "{indent}  latency    {}", p.latency.line());
    if p.ops.len() > 1 {
        for (op, o) in &p.ops {
            let _ = writeln!(out, "{indent}    {op:<4} {:>8}  {}", o.ok, o.latency.line());
        }
    }
    if let Some(r) = p.hit_ratio {
        let _ = writeln!(out, "{indent}  hit ratio  {:.2}% (hits {}, misses {})", r * 100.0, p.hits, p.misses);
    }
    if p.errors.is_empty() {
        let _ = writeln!(out, "{indent}  errors     none");
    } else {
        let list: Vec<String> = p.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "{indent}  errors     {}", list.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(ok_get: u64, ok_put: u64, hits: u64, misses: u64, errors: &[(&str, u64)]) -> Tally {
        let mut t = Tally::default();
        for i in 0..ok_get {
            t.ok("get", Duration::from_micros(100 + i));
        }
        for i in 0..ok_put {
            t.ok("put", Duration::from_micros(1000 + i));
        }
        t.hits = hits;
        t.misses = misses;
        for (k, n) in errors {
            for _ in 0..*n {
                t.error(k);
            }
        }
        t
    }

    fn report(tallies: &[Tally]) -> Report {
        let mut total = Tally::default();
        let mut phases = Vec::new();
        for (i, t) in tallies.iter().enumerate() {
            total.merge(t);
            phases.push(t.phase(&format!("p{i}"), vec!["http://127.0.0.1:1".into()], Duration::from_secs(1)));
        }
        Report {
            scenario: "mixed".into(),
            total: total.phase("total", vec![], Duration::from_secs(tallies.len() as u64)),
            phases,
            ..Default::default()
        }
    }

    #[test]
    fn a_tally_becomes_a_consistent_phase() {
        let t = tally(90, 10, 80, 10, &[("timeout", 2), ("http_503", 1)]);
        let p = t.phase("mixed", vec![], Duration::from_secs(2));
        assert_eq!((p.requests, p.ok, p.error_count()), (103, 100, 3));
        assert_eq!(p.throughput_rps, 51.5);
        assert_eq!(p.ops["get"].ok, 90);
        assert_eq!(p.ops["put"].ok, 10);
        assert_eq!(p.hit_ratio, Some(80.0 / 90.0));
        assert!(p.latency.p50_us >= 100 && p.latency.max_us >= 1009);
        assert!(report(&[t]).check().is_ok());
    }

    #[test]
    fn merged_phases_add_up() {
        let r = report(&[tally(10, 0, 10, 0, &[]), tally(5, 5, 0, 5, &[("connect", 1)])]);
        r.check().unwrap();
        assert_eq!(r.total.requests, 21);
        assert_eq!(r.total.hit_ratio, Some(10.0 / 15.0));
        let text = r.text();
        assert!(text.contains("all phases"), "{text}");
        assert!(text.contains("connect 1"), "{text}");
    }

    #[test]
    fn check_catches_counts_that_do_not_add_up() {
        let mut r = report(&[tally(10, 0, 10, 0, &[])]);
        r.phases[0].requests += 1;
        assert!(r.check().unwrap_err().contains("requests"));
        let mut r = report(&[tally(10, 0, 10, 0, &[])]);
        r.total.hits = 11;
        assert!(r.check().is_err());
        let mut r = report(&[tally(10, 0, 10, 0, &[])]);
        r.phases[0].latency.p90_us = r.phases[0].latency.max_us + 1;
        assert!(r.check().unwrap_err().contains("ordered"));
        let mut r = report(&[tally(3, 0, 0, 0, &[])]);
        r.converge = Some(Converge { writes: 3, polled: true, converged: 2, not_converged: 0, ..Default::default() });
        assert!(r.check().unwrap_err().contains("converge"));
        r.converge = Some(Converge { writes: 3, polled: false, ..Default::default() });
        assert!(r.check().is_ok(), "not polled: nothing to add up");
        r.converge = Some(Converge { writes: 3, polled: false, holders: 2, processes: 3, ..Default::default() });
        assert!(r.check().unwrap_err().contains("processes"));
    }

    #[test]
    fn converge_names_the_processes_its_cpu_per_write_sums_and_those_it_lacks() {
        let mut r = report(&[tally(3, 0, 0, 0, &[])]);
        let c =
            Converge { writes: 3, holders: 63, processes: 63, cpu_us_per_write: Some(1887.31), ..Default::default() };
        r.converge = Some(c.clone());
        let text = r.text();
        assert!(text.contains("CPU per write, summed over 63 processes: 1887.3 µs\n"), "{text}");
        r.converge = Some(Converge { processes: 61, ..c });
        let text = r.text();
        assert!(
            text.contains("summed over 61 processes: 1887.3 µs (2 of 63 nodes not scraped, not counted)"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (json["converge"]["cpu_us_per_write"].as_f64(), json["converge"]["processes"].as_u64()),
            (Some(1887.31), Some(61))
        );
    }

    fn sample(t_s: f64, rss_kib: u64, entries: u64, tombstones: u64, bytes: u64) -> MemSample {
        MemSample { t_s, rss_kib, entries, tombstones, bytes, tables: BTreeMap::new() }
    }

    #[test]
    fn memory_growth_is_taken_over_the_last_third() {
        let samples: Vec<MemSample> =
            (0..=12).map(|m| sample(m as f64 * 60.0, 20_000 + m * 1000, 15_000 + m, 1_000, 13_000_000)).collect();
        let s = MemSummary::of(&samples).unwrap();
        // Two thirds of 720 s is 480 s: from the 8th minute's sample to the 12th.
        assert_eq!((s.from_s, s.to_s), (480.0, 720.0));
        assert_eq!((s.rss_kib_from, s.rss_kib_to), (28_000, 32_000));
        assert_eq!(s.rss_growth_pct, 14.3);
        assert_eq!((s.live_from, s.live_to), (14_008, 14_012));
        assert_eq!(s.bytes_growth_pct, 0.0);
        assert_eq!(s.rss_per_live_entry, Some((32_000.0 * 1024.0 / 14_012.0f64).round()));
        assert_eq!(s.rss_per_byte, Some(2.52));
    }

    #[test]
    fn memory_summary_needs_two_samples_and_a_live_entry() {
        assert_eq!(MemSummary::of(&[]), None);
        assert_eq!(MemSummary::of(&[sample(0.0, 1, 1, 0, 1)]), None);
        let empty = MemSummary::of(&[sample(0.0, 100, 0, 0, 0), sample(9.0, 110, 5, 5, 0)]).unwrap();
        assert_eq!((empty.rss_growth_pct, empty.live_growth_pct), (10.0, 0.0));
        assert_eq!((empty.rss_per_live_entry, empty.rss_per_byte), (None, None));
    }

    #[test]
    fn json_round_trips() {
        let r = report(&[tally(4, 4, 4, 0, &[("not_found", 1)])]);
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert!(json.contains("\"p999_us\""));
    }
}
