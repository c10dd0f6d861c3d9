//! `treecache bench policy`: the eviction policy on a trace, in process.
//!
//! The trace goes through the node's own store, the code a node runs
//! ([`Store::bounded`], S3-FIFO, with [`Store::evict`] run the way the
//! evictor runs it: past the bound, down to 90%), and through an exact LRU
//! holding as many entries as the store's bound was sized for. A miss
//! inserts the key (as a fill would). No network: this measures the
//! policy, not the tree. Workloads: zipfian (--theta, default 0.99) and a
//! scan-heavy mix (half zipfian reads, half a cyclic scan over the whole
//! key space). The cache is --cache-pct of the key space (default 10%).
//! Throughput in process is per second of the thread's CPU time (see
//! [`CpuClock`]), Redis's per wall second.
//!
//! Beside them: a plain simulation of S3-FIFO (Yang et al., SOSP '23) at
//! the LRU's entry count, the reference the store's implementation is
//! checked against (the store runs it per shard, under a byte bound that
//! also pays for its ghost); and, with `--redis HOST:PORT`, Redis with
//! `maxmemory` at the store's byte bound and `allkeys-lru`, fed the same
//! trace one request at a time (GET, and SET on a miss).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};

use super::dist::Zipfian;
use super::redis::Redis;
use crate::clock::Time;
use crate::store::{Store, Update};

/// One workload's figures.
struct Figures {
    name: &'static str,
    store: StoreRun,
    lru_hits: f64,
    lru_ops: f64,
    s3fifo_hits: f64,
    redis: Option<RedisRun>,
}

/// What the node's store did on one trace.
struct StoreRun {
    hits: f64,
    ops: f64,
    /// Entries held at the end of the trace, at the bound.
    held: usize,
    /// Bytes charged per entry held at the end (queues and ghost included).
    charged: f64,
    /// RSS growth per entry held at the end, if /proc says.
    rss: Option<f64>,
}

/// What Redis did on one trace.
struct RedisRun {
    hits: f64,
    ops: f64,
    held: u64,
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

/// The store's policy on `trace`, bounded to `max`.
fn run_store(trace: &[u64], value: &Bytes, max: usize) -> StoreRun {
    let before = rss();
    let store = Store::bounded();
    let low = max / 10 * 9;
    let mut hits = 0u64;
    let started = CpuClock::start();
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
    let secs = started.seconds();
    let held = store.len().max(1);
    StoreRun {
        hits: hits as f64 / trace.len() as f64,
        ops: trace.len() as f64 / secs,
        held,
        charged: store.bytes() as f64 / held as f64,
        rss: rss().zip(before).map(|(a, b)| a.saturating_sub(b) as f64 / held as f64),
    }
}

/// Times in-process runs by this thread's CPU time: the machine is shared,
/// and requests per CPU second vary far less with the neighbours' load
/// than requests per wall second (the runs are single-threaded, so on an
/// idle machine the two agree). Wall time where the clock is unavailable.
struct CpuClock {
    cpu: Option<Duration>,
    wall: Instant,
}

impl CpuClock {
    fn start() -> CpuClock {
        CpuClock { cpu: thread_cpu(), wall: Instant::now() }
    }

    fn seconds(&self) -> f64 {
        let secs = match (self.cpu, thread_cpu()) {
            (Some(start), Some(now)) => now.saturating_sub(start),
            _ => self.wall.elapsed(),
        };
        secs.as_secs_f64().max(1e-9)
    }
}

fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Hit ratio and ops/s of an exact LRU of `capacity` entries on `trace`.
fn run_lru(trace: &[u64], capacity: usize) -> (f64, f64) {
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut order: BTreeMap<u64, u64> = BTreeMap::new();
    let mut hits = 0u64;
    let started = CpuClock::start();
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
    let secs = started.seconds();
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

/// Redis with `maxmemory max` and `allkeys-lru` on `trace` (GET; SET on
/// a miss): hit ratio, requests per second (one at a time, each a
/// loopback round trip: not comparable with the in-process figures), and
/// how many keys it held at the end.
fn run_redis(addr: &str, trace: &[u64], value: &Bytes, max: usize) -> Result<RedisRun, String> {
    let mut r = Redis::connect(addr)?;
    r.call(&[b"FLUSHALL"])?;
    r.call(&[b"CONFIG", b"SET", b"maxmemory-policy", b"allkeys-lru"])?;
    // Redis counts its own baseline (~1 MB) in used_memory: add it, so the
    // entries get the same bytes the store's bound gives them.
    r.call(&[b"CONFIG", b"SET", b"maxmemory", (max + (1 << 20)).to_string().as_bytes()])?;
    let mut hits = 0u64;
    let mut requests = 0u64;
    let started = Instant::now();
    for &i in trace {
        let k = key(i);
        requests += 1;
        if r.call(&[b"GET", k.as_bytes()])? == "$-1" {
            requests += 1;
            r.call(&[b"SET", k.as_bytes(), value])?;
        } else {
            hits += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let size = r.call(&[b"DBSIZE"])?;
    let held = size.trim_start_matches(':').parse().unwrap_or(0);
    r.call(&[b"CONFIG", b"SET", b"maxmemory", b"0"])?;
    r.call(&[b"FLUSHALL"])?;
    Ok(RedisRun { hits: hits as f64 / trace.len() as f64, ops: requests as f64 / secs, held })
}

/// Bytes the store charges per entry, and the process's RSS growth per
/// entry for the same store, filled to `entries` without evicting (so the
/// bound is sized by what an entry really costs).
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

/// The process's resident set, after handing freed heap back to the
/// system (so what an earlier run freed does not hide what this one adds).
fn rss() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; no pointer of
    // ours is touched.
    unsafe {
        libc::malloc_trim(0);
    }
    crate::process::own_resident_bytes()
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
    if let Some(addr) = redis {
        Redis::connect(addr)?.call(&[b"PING"])?;
    }
    let (per_entry, rss_per_entry) = memory_per_entry(entries, &value);
    // The bound holds `entries` entries as filled. The LRU and the
    // simulation get that many; the store holds fewer (it evicts to 90% of
    // the bound, and pays for its ghost from it), Redis what its own
    // accounting allows in the same bytes.
    let max = (per_entry * entries as f64) as usize;
    let mut rows = Vec::new();
    for (name, w) in [("zipfian", Workload::Zipfian), ("scan-mix", Workload::ScanMix)] {
        let trace = trace(w, keys, theta, requests)?;
        let store = run_store(&trace, &value, max);
        let (lru_hits, lru_ops) = run_lru(&trace, entries as usize);
        let s3fifo_hits = run_s3fifo(&trace, entries as usize);
        let redis = redis.map(|addr| run_redis(addr, &trace, &value, max)).transpose()?;
        rows.push(Figures { name, store, lru_hits, lru_ops, s3fifo_hits, redis });
    }
    print!("{}", table(keys, requests, theta, cache_pct, value_bytes, entries, max, &rows));
    let rss = rss_per_entry.map_or("unknown".to_string(), |b| format!("{b:.0} B"));
    println!(
        "memory per entry filled (no eviction): {per_entry:.0} B charged ({value_bytes} B value), RSS growth {rss}"
    );
    Ok(())
}

/// The report: one row per workload, then what each held at the bound.
#[allow(clippy::too_many_arguments)]
fn table(
    keys: u64,
    requests: u64,
    theta: f64,
    cache_pct: f64,
    value_bytes: usize,
    entries: u64,
    max: usize,
    rows: &[Figures],
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy: {keys} keys, {requests} requests, values {value_bytes} B, cache {cache_pct}% of the key space \
         ({entries} entries, bound {max} B), zipfian theta {theta}"
    );
    let _ = writeln!(
        out,
        "{:<10} {:>16} {:>12} {:>14} {:>14} {:>18} {:>14} {:>12}",
        "workload",
        "treecache hit %",
        "exact LRU %",
        "S3-FIFO sim %",
        "Redis LRU %",
        "treecache op/cpu-s",
        "LRU op/cpu-s",
        "Redis ops/s"
    );
    let pct = |h: f64| format!("{:.2}", 100.0 * h);
    for r in rows {
        let _ = writeln!(
            out,
            "{:<10} {:>16} {:>12} {:>14} {:>14} {:>18.0} {:>14.0} {:>12}",
            r.name,
            pct(r.store.hits),
            pct(r.lru_hits),
            pct(r.s3fifo_hits),
            r.redis.as_ref().map_or("-".into(), |x| pct(x.hits)),
            r.store.ops,
            r.lru_ops,
            r.redis.as_ref().map_or("-".into(), |x| format!("{:.0}", x.ops)),
        );
    }
    for r in rows {
        let rss = r.store.rss.map_or("unknown".to_string(), |b| format!("{b:.0} B"));
        let _ = write!(
            out,
            "{}: treecache held {} entries at the bound, {:.0} B charged per entry (queues and ghost included), \
             RSS growth {rss} per entry; exact LRU and S3-FIFO sim {entries}",
            r.name, r.store.held, r.store.charged
        );
        if let Some(x) = &r.redis {
            let _ = write!(out, "; Redis {}", x.held);
        }
        out.push('\n');
    }
    out.push_str(
        "op/cpu-s: trace requests per second of this thread's CPU time, in process; Redis ops/s: its \
         GETs and SETs per wall second, one at a time over loopback\n",
    );
    out
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
    fn the_store_hits_like_the_s3fifo_reference_and_more_than_lru() {
        // 2,000 entries' worth of bytes. The store holds fewer (it evicts
        // down to 90% of the bound, and pays for its ghost from it): it
        // must hit like the reference holding between 85% and all of
        // them, and more than an LRU holding all. Its 64 shards keep 31
        // entries each here, a small queue of three: that costs up to 1.5
        // points against one shard (which lands inside the range).
        let value = Bytes::from(vec![b'v'; 100]);
        let (per_entry, _) = memory_per_entry(2_000, &value);
        for w in [Workload::Zipfian, Workload::ScanMix] {
            let trace = trace(w, 20_000, 0.99, 100_000).unwrap();
            let store = run_store(&trace, &value, (per_entry * 2_000.0) as usize);
            let (lru, _) = run_lru(&trace, 2_000);
            let (low, high) = (run_s3fifo(&trace, 1_700), run_s3fifo(&trace, 2_000));
            let hits = store.hits;
            assert!(low - 0.025 < hits && hits < high + 0.01, "store {hits}, S3-FIFO {low} to {high}");
            assert!(hits > lru, "store {hits} vs LRU {lru}");
            assert!(store.held > 1_600 && store.held <= 2_000, "held {}", store.held);
        }
    }
}
