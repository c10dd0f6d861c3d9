//! `treecache bench policy`: the eviction policy on a trace, in process.
//!
//! The trace goes through the node's own store ([`Store::bounded`] with
//! [`Store::evict`] run the way the evictor runs it: past the bound, down
//! to 90%) and through an exact LRU holding as many entries as the store
//! holds at its bound. A miss inserts the key (as a fill would). No
//! network: this measures the policy, not the tree. Workloads: zipfian
//! (--theta, default 0.99) and a scan-heavy mix (half zipfian reads, half
//! a cyclic scan over the whole key space). The cache is --cache-pct of
//! the key space (default 10%).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::Bytes;
use rand::{Rng, SeedableRng};

use super::dist::Zipfian;
use crate::clock::Time;
use crate::store::{Store, Update};

/// One workload's figures.
struct Figures {
    name: &'static str,
    store_hits: f64,
    lru_hits: f64,
    store_ops: f64,
    lru_ops: f64,
}

/// Which request comes next.
#[derive(Clone, Copy)]
enum Workload {
    Zipfian,
    /// Half zipfian, half the next key of a scan over the key space.
    ScanMix,
}

fn trace(w: Workload, keys: u64, theta: f64, requests: u64) -> Result<Vec<u64>, String> {
    let z = Zipfian::new(keys, theta)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut scan = 0;
    Ok((0..requests)
        .map(|_| match w {
            Workload::ScanMix if rng.gen_bool(0.5) => {
                scan = (scan + 1) % keys;
                scan
            }
            _ => z.sample(rng.gen::<f64>()),
        })
        .collect())
}

fn key(i: u64) -> String {
    format!("user{i:010}")
}

/// Hit ratio and ops/s of the store's policy on `trace`, bounded to `max`.
fn run_store(trace: &[u64], value: &Bytes, max: usize) -> (f64, f64) {
    let store = Store::bounded();
    let low = max / 10 * 9;
    let mut hits = 0u64;
    let started = Instant::now();
    for (n, &i) in trace.iter().enumerate() {
        let k = key(i);
        let t = Time::at(n as u64);
        if store.get(&k, t).version().is_some() {
            hits += 1;
            continue;
        }
        store.apply(&Update { key: k, version: 1, value: Some(value.clone()), expires_at: None }, t);
        if store.bytes() > max {
            let need = store.bytes() - low;
            store.evict(need, t, 4 * store.len() + 64, usize::MAX);
            assert!(store.bytes() <= max, "the bench store stays under its bound");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    (hits as f64 / trace.len() as f64, trace.len() as f64 / secs)
}

/// Hit ratio and ops/s of an exact LRU of `capacity` entries on `trace`.
fn run_lru(trace: &[u64], capacity: usize) -> (f64, f64) {
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut order: BTreeMap<u64, u64> = BTreeMap::new();
    let mut hits = 0u64;
    let started = Instant::now();
    for (tick, &i) in trace.iter().enumerate() {
        let tick = tick as u64;
        if let Some(old) = last.insert(i, tick) {
            order.remove(&old);
            hits += 1;
        } else if last.len() > capacity {
            if let Some((_, victim)) = order.pop_first() {
                last.remove(&victim);
            }
        }
        order.insert(tick, i);
    }
    let secs = started.elapsed().as_secs_f64();
    (hits as f64 / trace.len() as f64, trace.len() as f64 / secs)
}

/// Bytes the store charges per entry at the bound, and the process's RSS
/// growth per entry for the same store, filled to `entries`.
fn memory_per_entry(entries: u64, value: &Bytes) -> (f64, Option<f64>) {
    let before = rss();
    let store = Store::bounded();
    for i in 0..entries {
        store.apply(&Update { key: key(i), version: 1, value: Some(value.clone()), expires_at: None }, Time::at(0));
    }
    let charged = store.bytes() as f64 / entries as f64;
    let grown = rss().zip(before).map(|(a, b)| a.saturating_sub(b) as f64 / entries as f64);
    drop(store);
    (charged, grown)
}

fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib << 10)
}

/// Runs both workloads and prints a table.
pub fn run(keys: u64, requests: u64, theta: f64, cache_pct: f64, value_bytes: usize) -> Result<(), String> {
    if !(cache_pct > 0.0 && cache_pct < 100.0) {
        return Err(format!("--cache-pct {cache_pct}: must be above 0 and below 100"));
    }
    if keys < 100 || requests == 0 {
        return Err("bench policy needs --keys of at least 100 and --requests of at least 1".into());
    }
    let value = Bytes::from(vec![b'v'; value_bytes]);
    let entries = ((keys as f64) * cache_pct / 100.0).max(1.0) as u64;
    let (per_entry, rss_per_entry) = memory_per_entry(entries, &value);
    let max = (per_entry * entries as f64) as usize;
    // The store evicts to 90% of the bound, so on average it holds ~95%:
    // the LRU gets the entries the store holds right at the bound.
    let mut rows = Vec::new();
    for (name, w) in [("zipfian", Workload::Zipfian), ("scan-mix", Workload::ScanMix)] {
        let trace = trace(w, keys, theta, requests)?;
        let (store_hits, store_ops) = run_store(&trace, &value, max);
        let (lru_hits, lru_ops) = run_lru(&trace, entries as usize);
        rows.push(Figures { name, store_hits, lru_hits, store_ops, lru_ops });
    }
    println!(
        "policy: {keys} keys, {requests} requests, values {value_bytes} B, cache {cache_pct}% of the key space \
         ({entries} entries, bound {max} B), zipfian theta {theta}"
    );
    println!(
        "{:<10} {:>18} {:>14} {:>16} {:>14}",
        "workload", "treecache hit %", "exact LRU %", "treecache ops/s", "LRU ops/s"
    );
    for r in &rows {
        println!(
            "{:<10} {:>18.2} {:>14.2} {:>16.0} {:>14.0}",
            r.name,
            100.0 * r.store_hits,
            100.0 * r.lru_hits,
            r.store_ops,
            r.lru_ops
        );
    }
    let rss = rss_per_entry.map_or("unknown".to_string(), |b| format!("{b:.0} B"));
    println!("memory per entry at the bound: {per_entry:.0} B charged ({value_bytes} B value), RSS growth {rss}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_before_any_work() {
        assert!(run(1000, 10, 0.99, 0.0, 100).unwrap_err().contains("--cache-pct"));
        assert!(run(1000, 10, 0.99, 100.0, 100).is_err());
        assert!(run(10, 10, 0.99, 10.0, 100).unwrap_err().contains("--keys"));
    }

    #[test]
    fn the_store_policy_is_close_to_exact_lru_on_a_small_zipfian_trace() {
        let value = Bytes::from(vec![b'v'; 100]);
        let trace = trace(Workload::Zipfian, 2_000, 0.99, 50_000).unwrap();
        let (per_entry, _) = memory_per_entry(200, &value);
        let (store, _) = run_store(&trace, &value, (per_entry * 200.0) as usize);
        let (lru, _) = run_lru(&trace, 200);
        assert!((store - lru).abs() < 0.05, "store {store} vs LRU {lru}");
    }
}
