//! The node's metrics: one prometheus-client [`Registry`] per node, every
//! metric declared once, here (the commit log's figures join the same
//! registry as a collector declared in [`crate::log`]), and encoded by the
//! crate as OpenMetrics text for `GET /metrics`.
//!
//! The hot path pays atomics only. Counters are atomics; a latency
//! histogram is an array of atomic buckets; a histogram with labels is
//! reached by index into its fixed label values, its series made on first
//! use, so recording a request neither locks, hashes, formats nor
//! allocates. Gauges that describe state (entries, depth, ...) are set when
//! `/metrics` is scraped, by the handler that renders them.
//!
//! Every name starts `treecache_` but two: `process_cpu_seconds_total` and
//! `process_resident_memory_bytes`, the names every Prometheus client
//! library gives a process's CPU time and memory, which dashboards expect
//! unprefixed. They are read from /proc at each scrape ([`ProcessMetrics`]).

use std::fmt;
use std::iter::once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{text, DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

/// What `GET /metrics` answers with: OpenMetrics 1.0 text, the Prometheus
/// exposition format that Prometheus asks for first.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How a request ended, the `outcome` label of request latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A read answered from this node's store (`X-Cache: hit`).
    Hit,
    /// A read that went to the parent (`X-Cache: miss`).
    Miss,
    /// A read answered from a stale entry (`X-Cache: stale`).
    Stale,
    /// Any other 2xx or 3xx.
    Ok,
    NotFound,
    /// Any other 4xx: bad input, a refused secret or token, a wrong method.
    ClientError,
    /// 5xx.
    Error,
}

const OUTCOMES: &[&str] = &["hit", "miss", "stale", "ok", "not_found", "client_error", "error"];

impl Outcome {
    /// From an answer's status and, for reads, its `X-Cache` header.
    pub fn of(status: u16, cache: Option<&[u8]>) -> Outcome {
        match (status, cache) {
            (200, Some(b"hit")) => Outcome::Hit,
            (200, Some(b"miss")) => Outcome::Miss,
            (200, Some(b"stale")) => Outcome::Stale,
            (404, _) => Outcome::NotFound,
            (500.., _) => Outcome::Error,
            (400.., _) => Outcome::ClientError,
            _ => Outcome::Ok,
        }
    }
}

/// A request a node makes to its parent, the `request` label of upstream latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// `GET /internal/fill/{key}`: a miss, a revalidation or a consistent read.
    Fill,
    /// `POST /internal/write`: a batch from the write uplink.
    Write,
}

const UPSTREAMS: &[&str] = &["fill", "write"];
const UPSTREAM_OUTCOMES: &[&str] = &["ok", "error"];

/// What a node is, the `role` label of `treecache_role` (`none`: neither
/// registered nor following a leader yet).
pub const ROLES: &[&str] = &["none", "root", "standby", "inner", "leaf"];

/// What a replication batch carries, the `kind` label of
/// `treecache_replication_bytes_total`.
pub const REPLICATION_KINDS: &[&str] = &["snapshot", "tail", "stream"];

/// ZooKeeper session states, the `state` label of `treecache_zk_session_state`
/// (`none`: no session yet).
pub const ZK_STATES: &[&str] =
    &["none", "disconnected", "sync_connected", "auth_failed", "connected_read_only", "expired", "closed"];

macro_rules! metrics {
    (
        counters { $($counter:ident: $chelp:literal,)* }
        gauges { $($gauge:ident: $ghelp:literal,)* }
    ) => {
        /// Every metric of a node. Clone-free: the node owns one.
        pub struct Metrics {
            registry: Registry,
            /// Unprefixed: [`ProcessMetrics`].
            process: Registry,
            $(pub $counter: Counter,)*
            $(pub $gauge: Gauge,)*
            /// `treecache_request_duration_seconds{route, outcome}`.
            requests: HistogramGrid<2>,
            /// `treecache_upstream_duration_seconds{request, outcome}`.
            upstream: HistogramGrid<2>,
            /// `treecache_push_lag_seconds`.
            pub push_lag: Histogram,
            zk_session: Family<[(&'static str, &'static str); 1], Gauge>,
            role: Family<[(&'static str, &'static str); 1], Gauge>,
            /// `treecache_replication_bytes_total{kind}`, a series per [`REPLICATION_KINDS`].
            replication_bytes: Family<[(&'static str, &'static str); 1], Counter>,
        }

        impl Metrics {
            /// The metrics and their registry. `route_labels`: the `route`
            /// label's values (a node's: [`ROUTE_LABELS`]).
            pub fn new(route_labels: &'static [&'static str]) -> Metrics {
                let mut registry = Registry::with_prefix("treecache");
                $(
                    let $counter = Counter::default();
                    registry.register(stringify!($counter), $chelp, $counter.clone());
                )*
                $(
                    let $gauge = Gauge::default();
                    registry.register(stringify!($gauge), $ghelp, $gauge.clone());
                )*
                let requests = HistogramGrid::new([("route", route_labels), ("outcome", OUTCOMES)]);
                registry.register_with_unit(
                    "request_duration",
                    "Requests served, from the head read to the answer made, by route (kv_read, kv_write, \
                     kv_delete, or the internal or admin route's name; other: no route; resp_read, resp_write, \
                     resp_delete, resp_other: RESP commands) and outcome (hit, miss, stale, ok, not_found, \
                     client_error, error)",
                    Unit::Seconds,
                    requests.family.clone(),
                );
                let upstream = HistogramGrid::new([("request", UPSTREAMS), ("outcome", UPSTREAM_OUTCOMES)]);
                registry.register_with_unit(
                    "upstream_duration",
                    "Requests to the parent, by request (fill: a miss, revalidation or consistent read; write: a \
                     batch of the write uplink) and outcome (ok, error)",
                    Unit::Seconds,
                    upstream.family.clone(),
                );
                let push_lag = Histogram::default();
                registry.register_with_unit(
                    "push_lag",
                    "From the root's commit of an update to this node having it, observed when its push arrives \
                     (root's wall clock to this node's: across hosts it includes their clock skew)",
                    Unit::Seconds,
                    push_lag.clone(),
                );
                let zk_session = Family::default();
                registry.register(
                    "zk_session_state",
                    "1 for the state this node's ZooKeeper session is in, 0 for the others (none, disconnected, \
                     sync_connected, auth_failed, connected_read_only, expired, closed)",
                    zk_session.clone(),
                );
                let role = Family::default();
                registry.register(
                    "role",
                    "1 for what this node is now, 0 for the others (none, root: the leader, standby: a standby \
                     root, inner, leaf)",
                    role.clone(),
                );
                let replication_bytes = Family::default();
                registry.register(
                    "replication_bytes",
                    "Bytes of replication batches a leader sent its standby roots and they took, by kind \
                     (snapshot: a standby starting over; tail: what a returning standby missed, from \
                     --replication-tail; stream: commits as they come)",
                    replication_bytes.clone(),
                );
                for kind in REPLICATION_KINDS {
                    // Each kind shows (at 0) before its first batch.
                    drop(replication_bytes.get_or_create(&[("kind", *kind)]));
                }
                let mut process = Registry::default();
                process.register_collector(Box::new(ProcessMetrics));
                Metrics {
                    registry,
                    process,
                    $($counter,)*
                    $($gauge,)*
                    requests,
                    upstream,
                    push_lag,
                    zk_session,
                    role,
                    replication_bytes,
                }
            }
        }
    };
}

metrics! {
    counters {
        hits: "Reads answered from this node's store",
        misses: "Reads that went to the parent (or the root for consistent reads)",
        upstream_requests: "Requests sent to the parent: fills, revalidations and writes",
        revalidations_unchanged: "ttl mode: stale entries the parent confirmed unchanged (no body moved)",
        writes: "Client writes (PUT/POST/DELETE) received",
        commits: "Writes committed by this node as root",
        conditions_failed: "Conditional writes (If-Match, If-None-Match, SET NX/XX) this node as root refused: the condition was false, nothing written",
        root_full: "Writes this node as root refused because they would grow its store past --max-memory (507 root_full): nothing written",
        writes_refused_unheard: "Writes of this node's clients that the root refused after the client had its answer (ack=parent) or stopped waiting: nothing written, not retried; each is logged",
        pushes_sent: "Updates pushed to children",
        push_batches_sent: "Push requests sent to children (one batch each)",
        pushes_received: "Updates received in pushes from the parent",
        push_batches_received: "Push requests received from the parent (one batch each)",
        pushes_applied: "Received updates that were newer and applied",
        pushes_not_held: "Received updates for keys no longer held (the parent forgets us)",
        push_failures: "Push batches that failed and will be retried",
        fills_served: "Fills answered for children",
        expired: "Entries removed because their ttl passed",
        evictions: "Entries evicted under --max-memory (docs/operations-memory.md)",
        invalidations: "Entries dropped because the parent evicted them (back-invalidation)",
        tombstones_collected: "Tombstones removed past their horizon (--tombstone-ttl)",
        bad_requests: "Requests refused for bad input",
        duplicate_writes: "Writes the root had decided before (a resend or a second path): answered with the first outcome",
        stale_served: "Reads answered from a stale or unconfirmed entry because the parent was unreachable (--stale-if-error)",
        writes_resent: "Writes sent again, in their order, because the link to the parent changed before their outcome was heard",
        resets: "Times this node's store was reset (new parent or epoch): entries kept, to be revalidated",
        failover_waits: "Client requests held because no leader was reachable (a failover, a re-election), to be tried again (--failover-wait)",
        failover_timeouts: "Held client requests answered 503 because --failover-wait passed without a reachable leader",
    }
    gauges {
        entries: "Entries held (values and tombstones); treecache tree shows it as keys",
        bytes: "Bytes charged against --max-memory: keys, values, per-entry overhead, holder records, the eviction queues and their ghost",
        max_memory_bytes: "The --max-memory bound (0: none)",
        tombstones: "Entries that are tombstones (deleted keys kept until their horizon)",
        holders: "Holder records: (child, key) pairs this node pushes to",
        registered: "1 once the node has its place in the tree, or (a standby root) follows a leader",
        in_sync: "1 on a root that holds every acknowledged write: the leader, and a standby in its in-sync set; 0 elsewhere",
        is_root: "1 on the root",
        depth: "Depth in the tree (root 0)",
        children: "Children attached",
        epoch: "Root epoch this node follows",
        uplink_pending: "Writes this node holds that its parent has not taken yet (queued or in flight)",
        uplink_unconfirmed: "Writes the parent has taken whose outcome this node has not heard yet (sent again, first, to a new parent)",
        write_ids_remembered: "Settled write ids this node remembers, so a resend is answered with its outcome, not queued again (for 60 s, at most 57,344; docs/operations-memory.md)",
        write_ids_bytes: "Bytes the table of treecache_write_ids_remembered takes, estimated (not in treecache_bytes)",
        write_outcomes: "Write outcomes the root remembers per write id, so it commits each id once (a bounded table, docs/operations-memory.md; 0 off the root)",
        write_outcomes_bytes: "Bytes the table of treecache_write_outcomes takes, estimated (not in treecache_bytes; 0 off the root)",
        push_queued: "Updates waiting in this node's push queues, not yet taken into a batch for a child (coalesced by key)",
        insync_roots: "Roots holding every acknowledged write (the leader and its in-sync standbys), at the leader; 0 elsewhere",
    }
}

/// The `route` label of `treecache_request_duration_seconds`: `/kv` by
/// what the request does, every other route by its handler's name, `other`
/// when no route matched. A fixed list: a label never carries a raw path.
/// Declared here with the metric; the HTTP layer maps each of its handlers
/// to one of these (`http::Handler::label`), RESP would map its commands.
pub const ROUTE_LABELS: &[&str] = &[
    "kv_read",
    "kv_write",
    "kv_delete",
    "health",
    "tree",
    "metrics",
    "dump",
    "register",
    "fill",
    "write",
    "push",
    "topology",
    "clear",
    "invalidate",
    "dropped",
    "leave",
    "standby",
    "replicate",
    "import",
    "resp_read",
    "resp_write",
    "resp_delete",
    "resp_other",
    "other",
];

/// The RESP front door's labels in [`ROUTE_LABELS`]: GET, MGET, EXISTS,
/// TTL and PTTL read; SET and MSET write; DEL deletes; every other command
/// is `resp_other`.
pub const RESP_READ_LABEL: usize = 19;
pub const RESP_WRITE_LABEL: usize = 20;
pub const RESP_DELETE_LABEL: usize = 21;
pub const RESP_OTHER_LABEL: usize = 22;
const _: () = assert!(matches!(ROUTE_LABELS[RESP_READ_LABEL].as_bytes(), b"resp_read"));
const _: () = assert!(matches!(ROUTE_LABELS[RESP_OTHER_LABEL].as_bytes(), b"resp_other"));

impl Default for Metrics {
    /// The node's metrics, routes labelled as [`ROUTE_LABELS`].
    fn default() -> Self {
        Metrics::new(ROUTE_LABELS)
    }
}

impl Metrics {
    pub fn inc(counter: &Counter) {
        counter.inc();
    }

    pub fn add(counter: &Counter, n: u64) {
        counter.inc_by(n);
    }

    /// One request served: `route` indexes the `route` label's values.
    pub fn request(&self, route: usize, outcome: Outcome, took: Duration) {
        self.requests.observe([route, outcome as usize], took);
    }

    /// One request to the parent.
    pub fn upstream(&self, request: Upstream, ok: bool, took: Duration) {
        self.upstream.observe([request as usize, usize::from(!ok)], took);
    }

    /// Requests recorded for `route` and `outcome`.
    #[cfg(test)]
    pub fn requests_count(&self, route: usize, outcome: Outcome) -> u64 {
        self.requests.count([route, outcome as usize])
    }

    /// The ZooKeeper session's state, one of [`ZK_STATES`].
    pub fn set_zk_state(&self, state: &'static str) {
        for s in ZK_STATES {
            self.zk_session.get_or_create(&[("state", s)]).set(i64::from(*s == state));
        }
    }

    /// A replication batch of `bytes` taken by a standby; `kind` one of
    /// [`REPLICATION_KINDS`].
    pub fn replication_sent(&self, kind: &'static str, bytes: usize) {
        self.replication_bytes.get_or_create(&[("kind", kind)]).inc_by(bytes as u64);
    }

    /// What this node is now, one of [`ROLES`].
    pub fn set_role(&self, role: &'static str) {
        for r in ROLES {
            self.role.get_or_create(&[("role", r)]).set(i64::from(*r == role));
        }
    }

    /// Adds a collector (the commit log's figures) to the registry.
    pub fn add_collector(&mut self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    /// Every metric as OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = text::encode_registry(&mut out, &self.registry);
        let _ = text::encode_registry(&mut out, &self.process);
        let _ = text::encode_eof(&mut out);
        out
    }

    /// Name (as a sample of it is named: counters with `_total`), type and
    /// help of every metric family, in registry order: docs/operations.md's
    /// table. A family with labels shows only once it has a series, so each
    /// gets one here; `collector` adds the commit log's.
    pub fn catalog(
        route_labels: &'static [&'static str],
        collector: Box<dyn Collector>,
    ) -> Vec<(String, String, String)> {
        let mut m = Metrics::new(route_labels);
        m.add_collector(collector);
        m.request(0, Outcome::Ok, Duration::ZERO);
        m.upstream(Upstream::Fill, true, Duration::ZERO);
        m.set_zk_state("none");
        m.set_role("none");
        families(&m.render())
    }
}

/// `process_cpu_seconds_total` (utime + stime) and
/// `process_resident_memory_bytes` (`VmRSS`) of this process, read from
/// /proc when scraped; a figure /proc does not give is left out.
#[derive(Debug)]
struct ProcessMetrics;

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        if let Some(seconds) = crate::process::own_cpu_seconds() {
            let help = "Total user and system CPU time spent in seconds (utime + stime of /proc/self/stat).";
            encode_one(&mut encoder, "process_cpu", help, Unit::Seconds, &ConstCounter::new(seconds))?;
        }
        if let Some(bytes) = crate::process::own_resident_bytes() {
            let help = "Resident memory size in bytes (VmRSS of /proc/self/status).";
            let bytes = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
            encode_one(&mut encoder, "process_resident_memory", help, Unit::Bytes, &bytes)?;
        }
        Ok(())
    }
}

/// One metric of a collector: its `# HELP`, `# TYPE` and `# UNIT` lines
/// (the unit joins the name) and its sample.
fn encode_one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Unit,
    metric: &impl EncodeMetric,
) -> fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, Some(&unit), metric.metric_type())?)
}

/// Name (as its samples are named: a counter's with `_total`), type and
/// help of each metric family in OpenMetrics `text`, in order.
pub fn families(text: &str) -> Vec<(String, String, String)> {
    let mut help = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name.to_string(), h.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let shown = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            out.push((shown, kind.to_string(), help.remove(name).unwrap_or_default()));
        }
    }
    out
}

/// Upper bounds of every `_seconds` histogram's buckets, in nanoseconds:
/// from 10 µs (a hit, start to answer) to 10 s (a stuck upstream),
/// 2–2.5 apart, and 20 ms besides: the push lag's and convergence's
/// target (docs/benchmarks.md), so whether a p99 meets it is read off a
/// bound instead of guessed inside the 10–25 ms bucket.
const BOUNDS_NS: [u64; 20] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    20_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A histogram of durations: a bucket per bound of [`BOUNDS_NS`] and one
/// past the last, and the sum; all atomics, so observing one takes no
/// lock. Clone shares it (the registry keeps a clone). Encoded by
/// prometheus-client as an OpenMetrics histogram in seconds.
#[derive(Clone, Debug, Default)]
pub struct Histogram(Arc<Cells>);

#[derive(Debug, Default)]
struct Cells {
    /// Not cumulative: bucket `i` counts observations in (bound i-1, bound i].
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        let bounds = BOUNDS_NS.iter().map(|&b| b as f64 / 1e9).chain(once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds.zip(self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed))).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A histogram family over `K` labels, each with a fixed list of values.
/// A series joins the family (and `/metrics`) on its first observation;
/// after that it is found by index, without the family's lock.
#[derive(Debug)]
struct HistogramGrid<const K: usize> {
    family: Family<[(&'static str, &'static str); K], Histogram>,
    labels: [(&'static str, &'static [&'static str]); K],
    series: Box<[OnceLock<Histogram>]>,
}

impl<const K: usize> HistogramGrid<K> {
    fn new(labels: [(&'static str, &'static [&'static str]); K]) -> Self {
        let n = labels.iter().map(|(_, values)| values.len()).product();
        HistogramGrid { family: Family::default(), labels, series: (0..n).map(|_| OnceLock::new()).collect() }
    }

    /// The series at `at` (an index into each label's values), if `at` is in range.
    fn series(&self, at: [usize; K]) -> Option<&Histogram> {
        let mut i = 0;
        for ((_, values), &a) in self.labels.iter().zip(&at) {
            if a >= values.len() {
                return None;
            }
            i = i * values.len() + a;
        }
        let cell = self.series.get(i)?;
        Some(cell.get_or_init(|| {
            let labels = std::array::from_fn(|k| (self.labels[k].0, self.labels[k].1[at[k]]));
            self.family.get_or_create_owned(&labels)
        }))
    }

    fn observe(&self, at: [usize; K], took: Duration) {
        if let Some(h) = self.series(at) {
            h.observe(took);
        }
    }

    #[cfg(test)]
    fn count(&self, at: [usize; K]) -> u64 {
        self.series(at).map_or(0, Histogram::count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &[&str] = &["kv_read", "fill"];

    #[test]
    fn counters_and_gauges_render_as_openmetrics() {
        let m = Metrics::new(ROUTES);
        Metrics::inc(&m.hits);
        Metrics::add(&m.pushes_sent, 3);
        m.entries.set(2);
        let text = m.render();
        assert!(text.contains("# TYPE treecache_hits counter\ntreecache_hits_total 1\n"), "{text}");
        assert!(text.contains("treecache_pushes_sent_total 3\n"));
        assert!(text.contains("# TYPE treecache_entries gauge\ntreecache_entries 2\n"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn histograms_render_cumulative_buckets_in_seconds() {
        let m = Metrics::new(ROUTES);
        m.push_lag.observe(Duration::from_micros(20));
        m.push_lag.observe(Duration::from_millis(3));
        m.push_lag.observe(Duration::from_secs(60));
        let text = m.render();
        assert!(
            text.contains("# TYPE treecache_push_lag_seconds histogram\n# UNIT treecache_push_lag_seconds seconds\n")
        );
        let bucket = |le: &str| {
            let prefix = format!("treecache_push_lag_seconds_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("le={le} in {text}"))
                .to_string()
        };
        assert_eq!(bucket("0.00001"), "0");
        assert_eq!(bucket("0.000025"), "1");
        assert_eq!(bucket("0.005"), "2");
        assert_eq!(bucket("10.0"), "2");
        assert_eq!(bucket("+Inf"), "3");
        assert!(text.contains("treecache_push_lag_seconds_count 3\n"));
        assert!(text.contains("treecache_push_lag_seconds_sum 60.00302\n"), "{text}");
    }

    #[test]
    fn a_labelled_series_appears_on_first_use_and_out_of_range_labels_are_ignored() {
        let m = Metrics::new(ROUTES);
        assert!(!m.render().contains("treecache_request_duration_seconds_count"));
        m.request(0, Outcome::Hit, Duration::from_micros(30));
        m.request(0, Outcome::Hit, Duration::from_micros(40));
        m.request(1, Outcome::Error, Duration::from_millis(2));
        m.request(ROUTES.len(), Outcome::Hit, Duration::from_millis(2));
        m.upstream(Upstream::Write, false, Duration::from_millis(1));
        assert_eq!(m.requests_count(0, Outcome::Hit), 2);
        assert_eq!(m.requests_count(ROUTES.len(), Outcome::Hit), 0);
        let text = m.render();
        let count = |labels: &str, name: &str| {
            let prefix = format!("treecache_{name}_seconds_count{{{labels}}} ");
            text.lines().find_map(|l| l.strip_prefix(&prefix)).map(str::to_string)
        };
        assert_eq!(count("route=\"kv_read\",outcome=\"hit\"", "request_duration").as_deref(), Some("2"), "{text}");
        assert_eq!(count("route=\"fill\",outcome=\"error\"", "request_duration").as_deref(), Some("1"));
        assert_eq!(count("route=\"fill\",outcome=\"hit\"", "request_duration"), None);
        assert_eq!(count("request=\"write\",outcome=\"error\"", "upstream_duration").as_deref(), Some("1"));
    }

    #[test]
    fn outcomes_follow_status_and_cache() {
        assert_eq!(Outcome::of(200, Some(b"hit")), Outcome::Hit);
        assert_eq!(Outcome::of(200, Some(b"miss")), Outcome::Miss);
        assert_eq!(Outcome::of(200, Some(b"stale")), Outcome::Stale);
        assert_eq!(Outcome::of(201, None), Outcome::Ok);
        assert_eq!(Outcome::of(304, None), Outcome::Ok);
        assert_eq!(Outcome::of(404, Some(b"hit")), Outcome::NotFound);
        assert_eq!(Outcome::of(401, None), Outcome::ClientError);
        assert_eq!(Outcome::of(503, None), Outcome::Error);
    }

    #[test]
    fn the_zk_session_state_is_one_gauge_per_state() {
        let m = Metrics::new(ROUTES);
        m.set_zk_state("sync_connected");
        let text = m.render();
        assert!(text.contains("treecache_zk_session_state{state=\"sync_connected\"} 1\n"), "{text}");
        assert!(text.contains("treecache_zk_session_state{state=\"expired\"} 0\n"));
    }

    #[test]
    fn process_cpu_and_memory_render_unprefixed_and_positive() {
        let text = Metrics::new(ROUTES).render();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        assert!(text.contains("# TYPE process_cpu_seconds counter\n# UNIT process_cpu_seconds seconds\n"), "{text}");
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"), "{text}");
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1, "{text}");
    }

    #[test]
    fn the_catalog_names_samples_as_scraped() {
        let log = std::sync::Arc::new(crate::log::Stats::default());
        let c = Metrics::catalog(ROUTES, log.collector());
        let find = |n: &str| c.iter().find(|(name, _, _)| name == n).map(|(_, kind, _)| kind.as_str());
        assert_eq!(find("treecache_hits_total"), Some("counter"));
        assert_eq!(find("treecache_entries"), Some("gauge"));
        assert_eq!(find("treecache_request_duration_seconds"), Some("histogram"));
        assert_eq!(find("treecache_upstream_duration_seconds"), Some("histogram"));
        assert_eq!(find("treecache_zk_session_state"), Some("gauge"));
        assert_eq!(find("treecache_log_fsync_seconds"), Some("histogram"));
        assert_eq!(find("treecache_log_fsyncs_total"), Some("counter"));
        assert_eq!(find("process_cpu_seconds_total"), Some("counter"));
        assert_eq!(find("process_resident_memory_bytes"), Some("gauge"));
        assert!(c.iter().all(|(_, _, help)| !help.is_empty() && !help.ends_with("..")), "{c:?}");
    }
}
