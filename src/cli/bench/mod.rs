//! `treecache bench`: a load generator for a treecache tree (and, for
//! baselines, any URL).
//!
//! - [`dist`]: key popularity (uniform, zipfian, sequential) and value sizes.
//! - [`load`]: the engine: connections, closed or open loop, tickets, progress.
//! - [`report`]: HDR-histogram figures, the consistency check, text and JSON.
//! - [`topo`]: finding the tree from one URL.
//! - [`scenarios`]: hit, miss, write, mixed, converge and url.
//! - [`lag`]: `converge`'s reading of the nodes' push-lag histograms.
//! - [`scale`]: start N node processes, time their registration, read their RSS.
//! - [`churn`]: start a tree, churn its keys, follow every node's RSS (and Redis's).
//! - [`capacity`]: 1, 2, 4 root groups on equal shares: keys held, writes, a slot move.
//! - [`redis`]: just enough RESP for the scenarios that put Redis beside a node.
//!
//! Flags are checked here into a [`Plan`] before any request is sent, so a
//! bad flag is a clear error and no load.

pub mod capacity;
pub mod churn;
pub mod dist;
pub mod lag;
pub mod load;
pub mod policy;
pub mod redis;
pub mod report;
pub mod scale;
pub mod scenarios;
pub mod topo;

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::client::Ack;
use crate::config::parse_duration;
use dist::{KeyChooser, Popularity, ValueSizes};
use load::Load;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// GET keys the target already holds (pre-written at the root, pre-read at the target).
    Hit,
    /// GET cold keys at one node per depth; reports the cost of each extra level.
    Miss,
    /// PUT with --ack parent or root.
    Write,
    /// Write at one node (ack=root) and time until every holder in the tree serves it.
    Converge,
    /// Reads and writes, --read-pct reads (YCSB A: --ycsb a, 50%; B: --ycsb b, 95%).
    Mixed,
    /// Start --nodes node processes; time until all registered; idle RSS per node.
    Scale,
    /// GET one --url (a baseline: examples/bare, examples/hop, any server).
    Url,
    /// The store's eviction policy (S3-FIFO) beside an exact LRU and
    /// (--redis) Redis allkeys-lru, in process: hit ratio and throughput
    /// for zipfian and a scan-heavy mix, the cache at --cache-pct of the keys.
    Policy,
    /// Start --nodes node processes (default 7), then --writers PUT and
    /// DELETE (--delete-pct) and --readers GET a fixed key space at random
    /// nodes for --duration (default 12m); every node's RSS, live entries
    /// and bytes every --sample-every; RSS growth over the last third and
    /// RSS per live entry (--redis: the same workload against Redis).
    Churn,
    /// For each G of --groups (1,2,4): start G root groups, each root held
    /// to --group-memory and --group-cpu; ack=root keys held until
    /// root_full, overwrites/s for --duration with root CPU per write, and
    /// (G >= 2) a move of a 1,000-key slot under load: write pause and lost
    /// acknowledgements.
    Capacity,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Hit => "hit",
            Scenario::Miss => "miss",
            Scenario::Write => "write",
            Scenario::Converge => "converge",
            Scenario::Mixed => "mixed",
            Scenario::Scale => "scale",
            Scenario::Url => "url",
            Scenario::Policy => "policy",
            Scenario::Churn => "churn",
            Scenario::Capacity => "capacity",
        }
    }
}

/// When a write is acknowledged (`?ack=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckArg {
    /// Once the parent holds the write.
    Parent,
    /// Once the root has committed it.
    Root,
}

impl From<AckArg> for Ack {
    fn from(ack: AckArg) -> Self {
        match ack {
            AckArg::Parent => Ack::Parent,
            AckArg::Root => Ack::Root,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ycsb {
    /// 50% reads, 50% writes.
    A,
    /// 95% reads, 5% writes.
    B,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Targets {
    /// The deepest node (lowest id): a read there travels the most levels.
    One,
    /// Every leaf, connections spread over them.
    Leaves,
    /// Every node.
    All,
}

/// `treecache bench SCENARIO [flags]`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  treecache bench hit --root http://127.0.0.1:8080 -c 16 -d 10s
  treecache bench mixed --root http://127.0.0.1:8080 --ycsb b --popularity zipfian
  treecache bench write --node http://127.0.0.1:8083 --ack root -c 64
  treecache bench miss --root http://127.0.0.1:8080 -n 2000
  treecache bench converge --root http://127.0.0.1:8080 --rate 100 --value-size 1KiB
  treecache bench scale --nodes 63
  treecache bench churn --duration 12m --redis 127.0.0.1:6379
  treecache bench capacity --groups 1,2,4 --group-memory 4MiB --group-cpu 25
  treecache bench url --url http://127.0.0.1:9000/ -c 16 -d 10s")]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Node(s) to send requests to (repeat or comma-separate). Without
    /// --root, the tree is found from the first one.
    #[arg(long, env = "TREECACHE_BENCH_NODE", value_delimiter = ',')]
    pub node: Vec<String>,
    /// The tree's root (or any node): the tree is discovered from it and
    /// keys are pre-written there.
    #[arg(long, env = "TREECACHE_BENCH_ROOT")]
    pub root: Option<String>,
    /// Which nodes of the discovered tree get the load when --node is not given.
    #[arg(long, env = "TREECACHE_BENCH_TARGETS", value_enum, default_value_t = Targets::One)]
    pub targets: Targets,
    /// The URL for the `url` scenario.
    #[arg(long, env = "TREECACHE_BENCH_URL")]
    pub url: Option<String>,
    /// Concurrent connections (each one keep-alive connection). `capacity`:
    /// writers per group in its writes phase, and writers of the moving
    /// slot.
    #[arg(short = 'c', long, env = "TREECACHE_BENCH_CONNECTIONS", default_value_t = 16)]
    pub connections: usize,
    /// How long to load, e.g. 10s, 500ms (default 10s unless --requests).
    #[arg(short = 'd', long, env = "TREECACHE_BENCH_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests (per depth for `miss`).
    #[arg(short = 'n', long, env = "TREECACHE_BENCH_REQUESTS")]
    pub requests: Option<u64>,
    /// Open loop at this many requests per second in total (default:
    /// closed loop; `converge` defaults to 100).
    #[arg(long, env = "TREECACHE_BENCH_RATE")]
    pub rate: Option<f64>,
    /// Load this long first and discard what it measured.
    #[arg(long, env = "TREECACHE_BENCH_WARMUP", value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Number of distinct keys (default 10000; `converge` 100; `miss`:
    /// cold keys per depth, default --requests or 10000).
    #[arg(long, env = "TREECACHE_BENCH_KEYS")]
    pub keys: Option<u64>,
    /// Key popularity.
    #[arg(long, env = "TREECACHE_BENCH_POPULARITY", value_enum, default_value_t = Popularity::Uniform)]
    pub popularity: Popularity,
    /// Zipfian exponent.
    #[arg(long, env = "TREECACHE_BENCH_THETA", default_value_t = 0.99)]
    pub theta: f64,
    /// Value size, fixed (1KiB) or a range (512-8192) (default 512-8192,
    /// as session data is; `converge` 1KiB).
    #[arg(long, env = "TREECACHE_BENCH_VALUE_SIZE")]
    pub value_size: Option<String>,
    /// When a write returns: once the parent has it, or once the root committed it.
    #[arg(long, env = "TREECACHE_BENCH_ACK", value_enum, default_value_t = AckArg::Parent)]
    pub ack: AckArg,
    /// Percent of reads in `mixed`.
    #[arg(long, env = "TREECACHE_BENCH_READ_PCT", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub read_pct: Option<u32>,
    /// YCSB workload for `mixed`: a (50% reads) or b (95% reads).
    #[arg(long, env = "TREECACHE_BENCH_YCSB", value_enum)]
    pub ycsb: Option<Ycsb>,
    /// Key names start with this.
    #[arg(long, env = "TREECACHE_BENCH_KEY_PREFIX", default_value = "bench")]
    pub key_prefix: String,
    /// Do not pre-write the keys at the root (they are already there).
    #[arg(long, env = "TREECACHE_BENCH_NO_PREFILL", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_prefill: bool,
    /// Per-request timeout.
    #[arg(long, env = "TREECACHE_BENCH_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// `converge`: pause between two polls of one holder.
    #[arg(long, env = "TREECACHE_BENCH_POLL_INTERVAL", value_parser = parse_duration, default_value = "1ms")]
    pub poll_interval: Duration,
    /// `converge`: stop waiting for a write to reach every holder after this long.
    #[arg(long, env = "TREECACHE_BENCH_CONVERGE_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub converge_timeout: Duration,
    /// `converge`: do not poll the holders; read convergence only from
    /// their push-lag histograms (`/metrics`), which costs the tree nothing.
    #[arg(long, env = "TREECACHE_BENCH_NO_POLL", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_poll: bool,
    /// `scale`, `churn`: node processes to start, the root included
    /// (default: scale 15, churn 7).
    #[arg(long, env = "TREECACHE_BENCH_NODES")]
    pub nodes: Option<usize>,
    /// `scale`, `churn`: children per node.
    #[arg(long, env = "TREECACHE_BENCH_FANOUT", default_value_t = 2)]
    pub fanout: u32,
    /// `scale`, `churn`: ZooKeeper to use (default: start a private one).
    #[arg(long, env = "TREECACHE_BENCH_ZK")]
    pub zk: Option<String>,
    /// `scale`: how long to wait for every node to register.
    #[arg(long, env = "TREECACHE_BENCH_READY_TIMEOUT", value_parser = parse_duration, default_value = "120s")]
    pub ready_timeout: Duration,
    /// The nodes' --api-token, sent as `Authorization: Bearer`.
    #[arg(long, env = "TREECACHE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// The CA (PEM) of nodes that serve HTTPS: their certificates are
    /// verified against it (e.g. the one `treecache up --tls` prints).
    #[arg(long, env = "TREECACHE_BENCH_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Print the report as JSON.
    #[arg(long, env = "TREECACHE_BENCH_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
    /// No progress bar (it is drawn only when stdout is a terminal anyway).
    #[arg(short, long, env = "TREECACHE_BENCH_QUIET", value_parser = clap::builder::BoolishValueParser::new())]
    pub quiet: bool,
    /// `policy`: the cache's size as a percentage of the key space.
    #[arg(long, env = "TREECACHE_BENCH_CACHE_PCT", default_value_t = 10.0)]
    pub cache_pct: f64,
    /// `policy`: also replay the trace against this Redis (HOST:PORT), set
    /// to the same byte bound with `maxmemory-policy allkeys-lru`; `churn`:
    /// run the same workload against it afterwards. Its data is flushed.
    #[arg(long, env = "TREECACHE_BENCH_REDIS")]
    pub redis: Option<String>,
    /// `churn`: connections that write (PUT, or DELETE --delete-pct of the time).
    #[arg(long, env = "TREECACHE_BENCH_WRITERS", default_value_t = 4)]
    pub writers: usize,
    /// `churn`: connections that read.
    #[arg(long, env = "TREECACHE_BENCH_READERS", default_value_t = 4)]
    pub readers: usize,
    /// `churn`: percent of the writers' requests that are DELETEs.
    #[arg(long, env = "TREECACHE_BENCH_DELETE_PCT", default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub delete_pct: u32,
    /// `churn`: how often to read every node's memory.
    #[arg(long, env = "TREECACHE_BENCH_SAMPLE_EVERY", value_parser = parse_duration, default_value = "10s")]
    pub sample_every: Duration,
    /// `capacity`: how many root groups to try, one run each.
    #[arg(long, env = "TREECACHE_BENCH_GROUPS", value_delimiter = ',', default_value = "1,2,4")]
    pub groups: Vec<u32>,
    /// `capacity`: each root's --max-memory.
    #[arg(long, env = "TREECACHE_BENCH_GROUP_MEMORY", value_parser = crate::config::parse_bytes, default_value = "4MiB")]
    pub group_memory: u64,
    /// `capacity`: each root's CPU, percent of one core (a cgroup v1 quota
    /// where /sys/fs/cgroup/cpu is writable).
    #[arg(long, env = "TREECACHE_BENCH_GROUP_CPU", default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub group_cpu: u32,
    /// `churn`: seed of every random draw (keys, operations, nodes,
    /// values), so a run can be repeated (default: random, printed).
    #[arg(long, env = "TREECACHE_BENCH_SEED")]
    pub seed: Option<u64>,
}

/// Checked settings: everything a scenario needs, nothing left to parse.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub nodes: Vec<String>,
    pub root: Option<String>,
    pub targets: Targets,
    pub url: Option<String>,
    pub load: Load,
    pub warmup: Option<Duration>,
    pub keys: u64,
    pub chooser: KeyChooser,
    pub popularity: Popularity,
    pub theta: f64,
    pub sizes: ValueSizes,
    pub ack: Ack,
    pub read_pct: u32,
    pub prefix: String,
    pub prefill: bool,
    pub poll_interval: Duration,
    pub converge_timeout: Duration,
    /// `converge`: poll every holder (else read only the push-lag histograms).
    pub poll: bool,
    pub scale_nodes: usize,
    pub fanout: u32,
    pub zk: Option<String>,
    pub ready_timeout: Duration,
    /// Headers every request carries (the API token).
    pub headers: reqwest::header::HeaderMap,
    /// `--tls-ca`: how every client of the run speaks TLS.
    pub tls: Option<rustls::ClientConfig>,
    pub json: bool,
    /// `churn`: the first `writers` connections write.
    pub writers: usize,
    pub delete_pct: u32,
    pub sample_every: Duration,
    pub redis: Option<String>,
}

const MAX_CONNECTIONS: usize = 10_000;
const MAX_SCALE_NODES: usize = 1_000;

fn check_url(flag: &str, url: &str) -> Result<String, String> {
    let u = url.trim().trim_end_matches('/');
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() <= "http://".len() {
        return Err(format!("{flag} {url:?}: not an http:// URL"));
    }
    Ok(u.to_string())
}

impl BenchArgs {
    /// Checks the flags and resolves the scenario's defaults.
    pub fn plan(&self) -> Result<Plan, String> {
        let s = self.scenario;
        let connections = match s {
            Scenario::Churn => self.writers + self.readers,
            _ => self.connections,
        };
        if connections == 0 || connections > MAX_CONNECTIONS {
            return Err(format!("--connections {connections}: must be 1 to {MAX_CONNECTIONS}"));
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be greater than zero".into());
        }
        if self.requests == Some(0) {
            return Err("--requests must be at least 1".into());
        }
        let rate = match (self.rate, s) {
            (Some(r), _) if !(r.is_finite() && r > 0.0 && r <= 10_000_000.0) => {
                return Err(format!("--rate {r}: must be a number of requests per second above 0"));
            }
            (Some(r), _) => Some(r),
            (None, Scenario::Converge) => Some(100.0),
            (None, _) => None,
        };
        let nodes = self.node.iter().map(|u| check_url("--node", u)).collect::<Result<Vec<_>, _>>()?;
        let root = self.root.as_deref().map(|u| check_url("--root", u)).transpose()?;
        let url = self.url.as_deref().map(|u| check_url("--url", u)).transpose()?;
        match s {
            Scenario::Url if url.is_none() => return Err("bench url needs --url URL".into()),
            Scenario::Url | Scenario::Scale | Scenario::Policy | Scenario::Churn | Scenario::Capacity => {}
            _ if nodes.is_empty() && root.is_none() => {
                return Err(format!("bench {} needs --root URL or --node URL", s.name()));
            }
            _ => {}
        }
        if self.url.is_some() && s != Scenario::Url {
            return Err("--url is for the url scenario; use --node or --root".into());
        }
        if (self.read_pct.is_some() || self.ycsb.is_some()) && s != Scenario::Mixed {
            return Err("--read-pct and --ycsb are for the mixed scenario".into());
        }
        let read_pct = match (self.read_pct, self.ycsb) {
            (Some(_), Some(_)) => return Err("give --read-pct or --ycsb, not both".into()),
            (Some(p), None) => p,
            (None, Some(Ycsb::A)) => 50,
            (None, Some(Ycsb::B)) => 95,
            (None, None) => match s {
                Scenario::Hit | Scenario::Miss | Scenario::Url => 100,
                Scenario::Write | Scenario::Converge => 0,
                Scenario::Mixed => 50,
                Scenario::Scale | Scenario::Policy | Scenario::Churn | Scenario::Capacity => 0,
            },
        };
        let keys = match (self.keys, s) {
            (Some(k), _) => k,
            (None, Scenario::Converge) => 100,
            (None, Scenario::Miss) => self.requests.unwrap_or(10_000),
            (None, Scenario::Churn) => 20_000,
            (None, _) => 10_000,
        };
        let chooser = KeyChooser::new(self.popularity, keys, self.theta)?;
        let sizes = ValueSizes::parse(self.value_size.as_deref().unwrap_or(match s {
            Scenario::Converge => "1024",
            Scenario::Churn => "100-2000",
            _ => "512-8192",
        }))?;
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 200
            || !self.key_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(format!("--key-prefix {:?}: 1 to 200 characters of A-Z a-z 0-9 - _ . :", self.key_prefix));
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be greater than zero".into());
        }
        if self.poll_interval > Duration::from_secs(1) {
            return Err("--poll-interval: at most 1s (it bounds how precisely convergence is timed)".into());
        }
        if self.converge_timeout.is_zero() {
            return Err("--converge-timeout must be greater than zero".into());
        }
        let scale_nodes = self.nodes.unwrap_or(if s == Scenario::Churn { 7 } else { 15 });
        if matches!(s, Scenario::Scale | Scenario::Churn) && !(1..=MAX_SCALE_NODES).contains(&scale_nodes) {
            return Err(format!("--nodes {scale_nodes}: must be 1 to {MAX_SCALE_NODES}"));
        }
        if s == Scenario::Churn {
            if self.url.is_some() || !self.node.is_empty() || self.root.is_some() {
                return Err("bench churn starts its own tree: no --root, --node or --url".into());
            }
            if self.sample_every.is_zero() {
                return Err("--sample-every must be greater than zero".into());
            }
        }
        if self.fanout == 0 {
            return Err("--fanout must be at least 1".into());
        }
        let duration = match (self.duration, self.requests) {
            (None, None) if s == Scenario::Churn => Some(Duration::from_secs(12 * 60)),
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        };
        let headers = crate::cli::client::auth_headers(self.api_token.as_deref())?;
        let tls = match &self.tls_ca {
            Some(ca) => Some(crate::tls::client_config_trusting(ca)?),
            None => None,
        };
        Ok(Plan {
            headers,
            tls,
            scenario: s,
            nodes,
            root,
            targets: self.targets,
            url,
            load: Load {
                connections,
                duration,
                requests: self.requests,
                rate,
                timeout: self.timeout,
                progress: load::progress_wanted(self.json, self.quiet),
                seed: self.seed,
            },
            warmup: self.warmup.filter(|w| !w.is_zero()),
            keys,
            chooser,
            popularity: self.popularity,
            theta: self.theta,
            sizes,
            ack: self.ack.into(),
            read_pct,
            prefix: self.key_prefix.clone(),
            prefill: !self.no_prefill,
            poll_interval: self.poll_interval,
            converge_timeout: self.converge_timeout,
            poll: !self.no_poll,
            scale_nodes,
            fanout: self.fanout,
            zk: self.zk.clone(),
            ready_timeout: self.ready_timeout,
            json: self.json,
            writers: self.writers,
            delete_pct: self.delete_pct,
            sample_every: self.sample_every,
            redis: self.redis.clone(),
        })
    }
}

impl Plan {
    pub fn settings(&self) -> report::Settings {
        let uses_keys = !matches!(self.scenario, Scenario::Url | Scenario::Scale);
        report::Settings {
            connections: self.load.connections,
            loop_kind: if self.load.rate.is_some() { "open" } else { "closed" }.into(),
            rate: self.load.rate,
            duration_s: self.load.duration.map(|d| d.as_secs_f64()),
            requests: self.load.requests,
            warmup_s: self.warmup.map_or(0.0, |w| w.as_secs_f64()),
            keys: if uses_keys { self.keys } else { 0 },
            popularity: if self.scenario == Scenario::Miss {
                "cold".into()
            } else {
                format!("{:?}", self.popularity).to_lowercase()
            },
            theta: (self.popularity == Popularity::Zipfian && self.scenario != Scenario::Miss).then_some(self.theta),
            value_size: self.sizes.label(),
            ack: matches!(self.scenario, Scenario::Write | Scenario::Mixed | Scenario::Churn)
                .then(|| self.ack.as_str().to_string()),
            read_pct: (self.scenario == Scenario::Mixed).then_some(self.read_pct),
        }
    }
}

/// `treecache bench`: check the flags, run the scenario, print the report.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    if args.scenario == Scenario::Policy {
        let size = ValueSizes::parse(args.value_size.as_deref().unwrap_or("1KiB"))?;
        return policy::run(
            args.keys.unwrap_or(100_000),
            args.requests.unwrap_or(2_000_000),
            args.theta,
            args.cache_pct,
            size.max,
            args.redis.as_deref(),
        );
    }
    if args.scenario == Scenario::Capacity {
        let size = ValueSizes::parse(args.value_size.as_deref().unwrap_or("1KiB"))?;
        if size.min != size.max {
            return Err("bench capacity: --value-size takes one size (1KiB), not a range".into());
        }
        return capacity::run(&capacity::CapacityPlan {
            groups: args.groups.clone(),
            group_memory: args.group_memory,
            group_cpu_pct: args.group_cpu,
            writers: args.connections,
            duration: args.duration.unwrap_or(Duration::from_secs(10)),
            value_size: size.max,
            zk: args.zk.clone(),
            json: args.json,
        })
        .await;
    }
    let plan = args.plan()?;
    let report = match plan.scenario {
        Scenario::Scale => scale::run(&plan).await?,
        Scenario::Churn => churn::run(&plan).await?,
        _ => scenarios::run(&plan).await?,
    };
    let mut report = report;
    if let Err(e) = report.check() {
        report.notes.push(format!("INCONSISTENT REPORT (a bench bug): {e}"));
    }
    if plan.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| format!("cannot write JSON: {e}"))?;
        println!("{text}");
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map_err(|e| e.to_string())?.bench.plan()
    }

    #[test]
    fn defaults_follow_the_scenario() {
        let p = plan(&["hit", "--root", "http://127.0.0.1:8080/"]).unwrap();
        assert_eq!(p.root.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(p.load.duration, Some(Duration::from_secs(10)));
        assert_eq!(p.load.rate, None);
        assert_eq!((p.keys, p.read_pct), (10_000, 100));
        assert_eq!(p.sizes, ValueSizes { min: 512, max: 8192 });
        let c = plan(&["converge", "--root", "http://127.0.0.1:8080"]).unwrap();
        assert_eq!((c.load.rate, c.keys, c.sizes.max), (Some(100.0), 100, 1024));
        let m = plan(&["mixed", "--node", "http://a:1,http://b:2", "--ycsb", "b", "-n", "50"]).unwrap();
        assert_eq!(m.nodes, ["http://a:1", "http://b:2"]);
        assert_eq!((m.read_pct, m.load.duration, m.load.requests), (95, None, Some(50)));
        let miss = plan(&["miss", "--root", "http://127.0.0.1:1", "-n", "300"]).unwrap();
        assert_eq!(miss.keys, 300);
        assert_eq!(miss.settings().popularity, "cold");
        let churn = plan(&["churn", "--seed", "7"]).unwrap();
        assert_eq!((churn.scale_nodes, churn.load.connections, churn.writers, churn.delete_pct), (7, 8, 4, 30));
        assert_eq!((churn.keys, churn.sizes), (20_000, ValueSizes { min: 100, max: 2000 }));
        assert_eq!((churn.load.duration, churn.load.seed), (Some(Duration::from_secs(720)), Some(7)));
        assert_eq!(churn.settings().ack.as_deref(), Some("parent"));
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let err = |args: &[&str]| plan(args).unwrap_err();
        assert!(err(&["hit"]).contains("needs --root URL or --node URL"));
        assert!(err(&["url"]).contains("needs --url"));
        assert!(err(&["hit", "--root", "localhost:80"]).contains("not an http:// URL"));
        assert!(err(&["hit", "--root", "http://x:1", "-c", "0"]).contains("--connections 0"));
        assert!(err(&["hit", "--root", "http://x:1", "-n", "0"]).contains("--requests"));
        assert!(err(&["hit", "--root", "http://x:1", "-d", "0s"]).contains("--duration"));
        assert!(err(&["hit", "--root", "http://x:1", "--rate=-3"]).contains("--rate"));
        assert!(err(&["hit", "--root", "http://x:1", "--rate", "NaN"]).contains("--rate"));
        assert!(err(&["hit", "--root", "http://x:1", "--keys", "0"]).contains("--keys 0"));
        assert!(err(&["hit", "--root", "http://x:1", "--popularity", "zipfian", "--theta", "1.5"]).contains("--theta"));
        assert!(err(&["hit", "--root", "http://x:1", "--value-size", "9-3"]).contains("empty"));
        assert!(err(&["hit", "--root", "http://x:1", "--read-pct", "50"]).contains("mixed"));
        assert!(err(&["mixed", "--root", "http://x:1", "--read-pct", "50", "--ycsb", "a"]).contains("not both"));
        assert!(err(&["mixed", "--root", "http://x:1", "--read-pct", "101"]).contains("101"));
        assert!(err(&["hit", "--root", "http://x:1", "--key-prefix", "a b"]).contains("--key-prefix"));
        assert!(err(&["scale", "--nodes", "0"]).contains("--nodes 0"));
        assert!(err(&["hit", "--url", "http://x:1", "--root", "http://x:1"]).contains("--url is for"));
        assert!(err(&["sideways"]).contains("invalid value"));
        assert!(err(&["churn", "--root", "http://x:1"]).contains("starts its own tree"));
        assert!(err(&["churn", "--writers", "0", "--readers", "0"]).contains("--connections 0"));
        assert!(err(&["churn", "--delete-pct", "101"]).contains("101"));
    }
}
