//! Counters a node keeps, rendered as Prometheus text for `GET /metrics`.
//! Plain atomics: incrementing one is the whole cost on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        #[derive(Default)]
        pub struct Metrics { $(pub $name: AtomicU64,)* }

        impl Metrics {
            fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $help, self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    hits: "Reads answered from this node's store.",
    misses: "Reads that went to the parent (or the root for consistent reads).",
    upstream_requests: "Requests sent to the parent: fills, revalidations and writes.",
    revalidations_unchanged: "ttl mode: stale entries the parent confirmed unchanged (no body moved).",
    writes: "Client writes (PUT/POST/DELETE) received.",
    commits: "Writes committed by this node as root.",
    pushes_sent: "Updates pushed to children.",
    push_batches_sent: "Push requests sent to children (one batch each).",
    pushes_received: "Updates received in pushes from the parent.",
    pushes_applied: "Received updates that were newer and applied.",
    pushes_not_held: "Received updates for keys no longer held (the parent forgets us).",
    push_failures: "Push batches that failed and will be retried.",
    fills_served: "Fills answered for children.",
    expired: "Entries removed because their ttl passed.",
    evictions: "Entries evicted under --max-memory.",
    invalidations: "Entries dropped because the parent evicted them (back-invalidation).",
    tombstones_collected: "Tombstones removed past their horizon (docs/architecture.md).",
    bad_requests: "Requests refused for bad input.",
    duplicate_writes: "Writes the root had decided before (a resend or a second path): answered with the first outcome.",
    stale_served: "Reads answered from a stale or unconfirmed entry because the parent was unreachable (--stale-if-error).",
    resets: "Times this node's store was reset (new parent or epoch): entries kept, to be revalidated.",
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text: the counters, then the gauges passed in.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::with_capacity(4096);
        for (name, help, value) in self.counters() {
            write_counter(&mut out, name, help, value);
        }
        for (name, help, value) in gauges {
            write_gauge(&mut out, name, help, *value);
        }
        out
    }
}

/// Appends counter `treecache_{name}_total` in Prometheus text.
pub fn write_counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP treecache_{name}_total {help}");
    let _ = writeln!(out, "# TYPE treecache_{name}_total counter");
    let _ = writeln!(out, "treecache_{name}_total {value}");
}

/// Appends gauge `treecache_{name}` in Prometheus text.
pub fn write_gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP treecache_{name} {help}");
    let _ = writeln!(out, "# TYPE treecache_{name} gauge");
    let _ = writeln!(out, "treecache_{name} {value}");
}

/// Upper bounds (seconds) of [`Histogram`]'s buckets: from a fast SSD's
/// fdatasync (~50 µs) to a slow disk's (~1 s).
const BUCKETS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A Prometheus histogram of seconds: cumulative buckets, count and sum,
/// all plain atomics.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends `treecache_{name}` (a `_seconds` name) in Prometheus text.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP treecache_{name} {help}");
        let _ = writeln!(out, "# TYPE treecache_{name} histogram");
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "treecache_{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "treecache_{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "treecache_{name}_sum {}", self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "treecache_{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        Metrics::inc(&m.hits);
        Metrics::add(&m.pushes_sent, 3);
        let text = m.render(&[("entries", "Entries held.", 2.0)]);
        assert!(text.contains("# TYPE treecache_hits_total counter\ntreecache_hits_total 1\n"));
        assert!(text.contains("treecache_pushes_sent_total 3\n"));
        assert!(text.contains("# TYPE treecache_entries gauge\ntreecache_entries 2\n"));
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(0.0002);
        h.observe(0.003);
        h.observe(10.0);
        let mut text = String::new();
        h.render("fsync_seconds", "Fsync latency.", &mut text);
        assert!(text.contains("# TYPE treecache_fsync_seconds histogram\n"));
        assert!(text.contains("treecache_fsync_seconds_bucket{le=\"0.0001\"} 0\n"));
        assert!(text.contains("treecache_fsync_seconds_bucket{le=\"0.00025\"} 1\n"));
        assert!(text.contains("treecache_fsync_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("treecache_fsync_seconds_bucket{le=\"2.5\"} 2\n"));
        assert!(text.contains("treecache_fsync_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("treecache_fsync_seconds_count 3\n"));
        assert!(text.contains("treecache_fsync_seconds_sum 10.0032"));
    }
}
