//! Convergence as the nodes measure it: `treecache_push_lag_seconds`, the
//! time from the root's commit of an update to each node having it (see
//! `node/push.rs`). `converge` scrapes every node's `/metrics` before and
//! after its writes; the difference, summed over the nodes, is the lag of
//! the run's pushes, and its percentiles are read off the buckets as
//! Prometheus's `histogram_quantile` does (linear within a bucket, so
//! they are as coarse as the buckets: 2–2.5× apart). The same scrapes give
//! each node's `process_cpu_seconds_total`: what the tree's processes spent
//! on the run, per write.

use serde::{Deserialize, Serialize};

const BUCKET: &str = "treecache_push_lag_seconds_bucket{le=\"";
const SUM: &str = "treecache_push_lag_seconds_sum ";
const CPU: &str = "process_cpu_seconds_total ";

/// What converge reads from one node's `/metrics`: its push-lag histogram
/// and its CPU time so far (each `None` when the node exports none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeScrape {
    pub lag: Option<LagHistogram>,
    pub cpu_seconds: Option<f64>,
}

impl NodeScrape {
    pub fn parse(text: &str) -> NodeScrape {
        let cpu_seconds = text.lines().find_map(|l| l.strip_prefix(CPU)?.trim().parse().ok());
        NodeScrape { lag: LagHistogram::parse(text), cpu_seconds }
    }
}

/// CPU seconds the nodes spent between two scrapes of each (`None`: the
/// node did not answer), summed over the nodes that gave their CPU time
/// both times; and how many those were.
pub fn cpu_spent(before: &[Option<NodeScrape>], after: &[Option<NodeScrape>]) -> (f64, usize) {
    let cpu = |s: &Option<NodeScrape>| s.as_ref().and_then(|s| s.cpu_seconds);
    let spent: Vec<f64> = before.iter().zip(after).filter_map(|(b, a)| Some((cpu(a)? - cpu(b)?).max(0.0))).collect();
    (spent.iter().sum(), spent.len())
}

/// One node's push-lag histogram: cumulative counts per upper bound
/// (seconds, ascending, the last `+Inf`) and the sum of seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LagHistogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
}

impl LagHistogram {
    /// Reads the histogram out of `/metrics` text; `None` when the node
    /// exports none (a node from before push lag).
    pub fn parse(text: &str) -> Option<LagHistogram> {
        let mut h = LagHistogram::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(BUCKET) {
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                h.buckets.push((le, count.trim().parse().ok()?));
            } else if let Some(sum) = line.strip_prefix(SUM) {
                h.sum = sum.trim().parse().ok()?;
            }
        }
        (!h.buckets.is_empty()).then_some(h)
    }

    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, n)| *n)
    }

    /// What was observed after `before` (the same node, scraped earlier).
    pub fn since(&self, before: &LagHistogram) -> LagHistogram {
        let earlier = |le: f64| before.buckets.iter().find(|(b, _)| *b == le).map_or(0, |(_, n)| *n);
        LagHistogram {
            buckets: self.buckets.iter().map(|&(le, n)| (le, n.saturating_sub(earlier(le)))).collect(),
            sum: (self.sum - before.sum).max(0.0),
        }
    }

    /// The sum of two histograms with the same buckets.
    pub fn add(&mut self, other: &LagHistogram) {
        if self.buckets.is_empty() {
            *self = other.clone();
            return;
        }
        for ((_, n), (_, m)) in self.buckets.iter_mut().zip(&other.buckets) {
            *n += m;
        }
        self.sum += other.sum;
    }

    /// The `q` quantile (0..=1) in seconds: linear within its bucket; the
    /// highest finite bound when it falls past it; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let (mut lower, mut below) = (0.0, 0);
        for &(le, n) in &self.buckets {
            if n as f64 >= rank && n > below {
                if le.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (le - lower) * (rank - below as f64) / (n - below) as f64);
            }
            (lower, below) = (if le.is_finite() { le } else { lower }, n);
        }
        Some(lower)
    }
}

/// The converge run's push lag, from every node's histogram.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushLag {
    /// Nodes whose `/metrics` were read before and after.
    pub nodes: usize,
    /// Updates whose lag was observed (every node that had each write pushed).
    pub updates: u64,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
}

impl PushLag {
    pub fn of(h: &LagHistogram, nodes: usize) -> PushLag {
        let us = |q| h.quantile(q).map_or(0, |s| (s * 1e6).round() as u64);
        let updates = h.count();
        let mean_us = if updates == 0 { 0 } else { (h.sum / updates as f64 * 1e6).round() as u64 };
        PushLag { nodes, updates, mean_us, p50_us: us(0.5), p90_us: us(0.9), p99_us: us(0.99) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(buckets: &[(&str, u64)], sum: f64) -> String {
        let mut t = String::from("# TYPE treecache_push_lag_seconds histogram\n");
        t.push_str(&format!("treecache_push_lag_seconds_sum {sum}\n"));
        for (le, n) in buckets {
            t.push_str(&format!("treecache_push_lag_seconds_bucket{{le=\"{le}\"}} {n}\n"));
        }
        t + "# EOF\n"
    }

    #[test]
    fn a_scrape_parses_and_differences_add_up() {
        let before = LagHistogram::parse(&text(&[("0.001", 1), ("0.01", 2), ("+Inf", 2)], 0.004)).unwrap();
        let after = LagHistogram::parse(&text(&[("0.001", 3), ("0.01", 10), ("+Inf", 11)], 2.5)).unwrap();
        let d = after.since(&before);
        assert_eq!(d.buckets, vec![(0.001, 2), (0.01, 8), (f64::INFINITY, 9)]);
        assert!((d.sum - 2.496).abs() < 1e-9);
        let mut total = LagHistogram::default();
        total.add(&d);
        total.add(&d);
        assert_eq!(total.count(), 18);
        assert_eq!(LagHistogram::parse("treecache_hits_total 3\n# EOF\n"), None);
        assert_eq!(LagHistogram::parse(&text(&[("x", 1)], 0.0)), None, "a bound that is no number");
    }

    #[test]
    fn cpu_is_summed_over_the_nodes_scraped_both_times() {
        let scrape = |cpu: f64| Some(NodeScrape::parse(&format!("process_cpu_seconds_total {cpu}\n# EOF\n")));
        let lagless = scrape(1.5).unwrap();
        assert_eq!((lagless.cpu_seconds, lagless.lag), (Some(1.5), None));
        let with_lag = NodeScrape::parse(&text(&[("+Inf", 2)], 0.1));
        assert!(with_lag.lag.is_some() && with_lag.cpu_seconds.is_none());
        assert_eq!(NodeScrape::parse("process_cpu_seconds_total lots\n").cpu_seconds, None);
        // Node 3 did not answer after, node 4 exports no CPU time: two counted.
        let before = [scrape(1.0), scrape(2.0), scrape(3.0), Some(with_lag.clone())];
        let after = [scrape(1.5), scrape(2.25), None, Some(with_lag)];
        assert_eq!(cpu_spent(&before, &after), (0.75, 2));
        assert_eq!(cpu_spent(&[], &[]), (0.0, 0));
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket_like_prometheus() {
        // 10 observations: 4 in (0, 1 ms], 4 in (1, 2 ms], 2 past 4 ms.
        let h = LagHistogram { buckets: vec![(0.001, 4), (0.002, 8), (0.004, 8), (f64::INFINITY, 10)], sum: 0.1 };
        assert!((h.quantile(0.2).unwrap() - 0.0005).abs() < 1e-12);
        assert!((h.quantile(0.5).unwrap() - 0.00125).abs() < 1e-12);
        assert_eq!(h.quantile(0.99), Some(0.004), "past the last bound: the last bound");
        assert_eq!(LagHistogram::default().quantile(0.5), None);
        let lag = PushLag::of(&h, 3);
        assert_eq!((lag.nodes, lag.updates, lag.p50_us, lag.p99_us, lag.mean_us), (3, 10, 1250, 4000, 10_000));
    }
}
