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
//!
//! Beside them: S3-FIFO (Yang et al., SOSP '23), a frequency-aware FIFO
//! policy, simulated at the same entry count, to see whether a
//! frequency-aware policy would earn its complexity here; and, with
//! `--redis HOST:PORT`, Redis with `maxmemory` at the store's byte bound
//! and `allkeys-lru`, fed the same trace one request at a time (GET, and
//! SET on a miss).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

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
    s3fifo_hits: f64,
    redis_hits: Option<f64>,
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

/// Hit ratio of S3-FIFO holding `capacity` entries on `trace`: a small
/// FIFO (10%) that new keys enter, a main FIFO, and a ghost FIFO of keys
/// recently evicted from the small one. A key read again while in the
/// small FIFO moves to the main one when it reaches the tail; a ghost
/// that comes back goes straight to main; main gives keys read since
/// their last pass another round.
fn run_s3fifo(trace: &[u64], capacity: usize) -> f64 {
    let small_cap = (capacity / 10).max(1);
    let main_cap = capacity.saturating_sub(small_cap).max(1);
    let mut freq: HashMap<u64, u8> = HashMap::new();
    let (mut small, mut main): (VecDeque<u64>, VecDeque<u64>) = (VecDeque::new(), VecDeque::new());
    let mut ghost: VecDeque<(u64, u64)> = VecDeque::new();
    let mut ghost_at: HashMap<u64, u64> = HashMap::new();
    let mut hits = 0u64;
    for (n, &k) in trace.iter().enumerate() {
        if let Some(f) = freq.get_mut(&k) {
            *f = (*f + 1).min(3);
            hits += 1;
            continue;
        }
        while small.len() + main.len() >= capacity {
            if small.len() >= small_cap || main.is_empty() {
                let Some(t) = small.pop_front() else { break };
                if freq.get(&t).copied().unwrap_or(0) > 1 {
                    main.push_back(t);
                    freq.insert(t, 0);
                    evict_main(&mut main, &mut freq, main_cap);
                } else {
                    freq.remove(&t);
                    ghost.push_back((t, n as u64));
                    ghost_at.insert(t, n as u64);
                    if ghost.len() > main_cap {
                        if let Some((g, at)) = ghost.pop_front() {
                            if ghost_at.get(&g) == Some(&at) {
                                ghost_at.remove(&g);
                            }
                        }
                    }
                }
            } else {
                let keep = main.len() - 1;
                evict_main(&mut main, &mut freq, keep);
            }
        }
        freq.insert(k, 0);
        if ghost_at.remove(&k).is_some() {
            main.push_back(k);
        } else {
            small.push_back(k);
        }
    }
    hits as f64 / trace.len() as f64
}

/// Evicts from S3-FIFO's main queue until it holds at most `keep`.
fn evict_main(main: &mut VecDeque<u64>, freq: &mut HashMap<u64, u8>, keep: usize) {
    while main.len() > keep {
        let Some(t) = main.pop_front() else { return };
        match freq.get_mut(&t) {
            Some(f) if *f > 0 => {
                *f -= 1;
                main.push_back(t);
            }
            _ => {
                freq.remove(&t);
            }
        }
    }
}

/// A Redis connection speaking just enough RESP for this bench.
struct Redis {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    addr: String,
}

impl Redis {
    fn connect(addr: &str) -> Result<Redis, String> {
        let sock: std::net::SocketAddr =
            addr.parse().map_err(|_| format!("--redis {addr:?}: expected HOST:PORT, e.g. 127.0.0.1:6379"))?;
        let writer = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
            .map_err(|e| format!("--redis {addr}: cannot connect: {e}"))?;
        writer.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| format!("--redis {addr}: {e}"))?;
        writer.set_nodelay(true).map_err(|e| format!("--redis {addr}: {e}"))?;
        let reader = BufReader::new(writer.try_clone().map_err(|e| format!("--redis {addr}: {e}"))?);
        Ok(Redis { writer, reader, addr: addr.to_string() })
    }

    /// Sends one command; returns the reply's first line and, for a bulk
    /// string, whether it was present (`$-1` is a miss).
    fn call(&mut self, args: &[&[u8]]) -> Result<String, String> {
        let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            cmd.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            cmd.extend_from_slice(a);
            cmd.extend_from_slice(b"\r\n");
        }
        let fail = |e: std::io::Error| format!("--redis {}: {e}", self.addr);
        self.writer.write_all(&cmd).map_err(fail)?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(fail)?;
        let line = line.trim_end().to_string();
        if let Some(len) = line.strip_prefix('$').and_then(|n| n.parse::<i64>().ok()).filter(|&n| n >= 0) {
            let mut body = vec![0u8; len as usize + 2];
            std::io::Read::read_exact(&mut self.reader, &mut body).map_err(fail)?;
        }
        match line.strip_prefix('-') {
            Some(err) => Err(format!("--redis {}: {err}", self.addr)),
            None if line.is_empty() => Err(format!("--redis {}: the connection closed", self.addr)),
            None => Ok(line),
        }
    }
}

/// Hit ratio of Redis with `maxmemory max` and `allkeys-lru` on `trace`
/// (GET; SET on a miss), and how many keys it held at the end.
fn run_redis(addr: &str, trace: &[u64], value: &Bytes, max: usize) -> Result<(f64, u64), String> {
    let mut r = Redis::connect(addr)?;
    r.call(&[b"FLUSHALL"])?;
    r.call(&[b"CONFIG", b"SET", b"maxmemory-policy", b"allkeys-lru"])?;
    // Redis counts its own baseline (~1 MB) in used_memory: add it, so the
    // entries get the same bytes the store's bound gives them.
    r.call(&[b"CONFIG", b"SET", b"maxmemory", (max + (1 << 20)).to_string().as_bytes()])?;
    let mut hits = 0u64;
    for &i in trace {
        let k = key(i);
        if r.call(&[b"GET", k.as_bytes()])? == "$-1" {
            r.call(&[b"SET", k.as_bytes(), value])?;
        } else {
            hits += 1;
        }
    }
    let size = r.call(&[b"DBSIZE"])?;
    let keys = size.trim_start_matches(':').parse().unwrap_or(0);
    r.call(&[b"CONFIG", b"SET", b"maxmemory", b"0"])?;
    r.call(&[b"FLUSHALL"])?;
    Ok((hits as f64 / trace.len() as f64, keys))
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
pub fn run(
    keys: u64,
    requests: u64,
    theta: f64,
    cache_pct: f64,
    value_bytes: usize,
    redis: Option<&str>,
) -> Result<(), String> {
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
    if let Some(addr) = redis {
        Redis::connect(addr)?.call(&[b"PING"])?;
    }
    let mut rows = Vec::new();
    let mut redis_keys = Vec::new();
    for (name, w) in [("zipfian", Workload::Zipfian), ("scan-mix", Workload::ScanMix)] {
        let trace = trace(w, keys, theta, requests)?;
        let (store_hits, store_ops) = run_store(&trace, &value, max);
        let (lru_hits, lru_ops) = run_lru(&trace, entries as usize);
        let s3fifo_hits = run_s3fifo(&trace, entries as usize);
        let redis_hits = match redis {
            Some(addr) => {
                let (hits, held) = run_redis(addr, &trace, &value, max)?;
                redis_keys.push((name, held));
                Some(hits)
            }
            None => None,
        };
        rows.push(Figures { name, store_hits, lru_hits, s3fifo_hits, redis_hits, store_ops, lru_ops });
    }
    println!(
        "policy: {keys} keys, {requests} requests, values {value_bytes} B, cache {cache_pct}% of the key space \
         ({entries} entries, bound {max} B), zipfian theta {theta}"
    );
    println!(
        "{:<10} {:>16} {:>12} {:>10} {:>14} {:>16} {:>12}",
        "workload", "treecache hit %", "exact LRU %", "S3-FIFO %", "Redis LRU %", "treecache ops/s", "LRU ops/s"
    );
    for r in &rows {
        let redis = r.redis_hits.map_or("-".to_string(), |h| format!("{:.2}", 100.0 * h));
        println!(
            "{:<10} {:>16.2} {:>12.2} {:>10.2} {:>14} {:>16.0} {:>12.0}",
            r.name,
            100.0 * r.store_hits,
            100.0 * r.lru_hits,
            100.0 * r.s3fifo_hits,
            redis,
            r.store_ops,
            r.lru_ops
        );
    }
    for (name, held) in redis_keys {
        println!("Redis held {held} keys at the end of {name} ({entries} for the others)");
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
        assert!(run(1000, 10, 0.99, 0.0, 100, None).unwrap_err().contains("--cache-pct"));
        assert!(run(1000, 10, 0.99, 100.0, 100, None).is_err());
        assert!(run(10, 10, 0.99, 10.0, 100, None).unwrap_err().contains("--keys"));
        assert!(run(1000, 10, 0.99, 10.0, 100, Some("nonsense")).unwrap_err().contains("HOST:PORT"));
        // Nothing listens on the port a just-closed listener had.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = run(1000, 10, 0.99, 10.0, 100, Some(&format!("127.0.0.1:{port}"))).unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[test]
    fn s3fifo_is_a_sane_policy_on_a_small_zipfian_trace() {
        let trace = trace(Workload::Zipfian, 2_000, 0.99, 50_000).unwrap();
        let s3 = run_s3fifo(&trace, 200);
        let lru = run_lru(&trace, 200).0;
        assert!((s3 - lru).abs() < 0.10, "S3-FIFO {s3} vs LRU {lru}");
        // A repeated key hits from its second read on.
        assert!((run_s3fifo(&[7, 7, 7, 7], 1) - 0.75).abs() < 1e-9);
        assert_eq!(run_s3fifo(&[1, 2, 3, 4], 2), 0.0);
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
