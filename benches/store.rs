//! Micro-benchmarks of the hot pure code: the store (get, put, the version
//! check that drops stale pushes, the expiry sweep, a bounded store's
//! eviction), the holder directory, and the push batch codec.
//!
//! `cargo bench --bench store` (all), `cargo bench --bench store -- store/get`
//! (one group). Short settings by default: the machine is shared.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use treecache::store::{Condition, Store, Time, Update};
use treecache::wire::{decode_pushes, encode_pushes, Push};

const NOW: u64 = 1_700_000_000_000;
const T: Time = Time::at(NOW);
const ENTRIES: u64 = 100_000;

fn key(i: u64) -> String {
    format!("session:{i:08}")
}

fn update(i: u64, version: u64, value: &Bytes, expires_at: Option<u64>) -> Update {
    Update { key: key(i), version, value: Some(value.clone()), expires_at }
}

/// A store of `n` entries with `value`-sized values, versions 1..=n.
fn filled(n: u64, value: &Bytes) -> Store {
    let store = Store::new();
    for i in 0..n {
        store.apply(&update(i, i + 1, value, None), T);
    }
    store
}

fn store_reads(c: &mut Criterion) {
    let value = Bytes::from(vec![b'v'; 1024]);
    let store = filled(ENTRIES, &value);
    let mut g = c.benchmark_group("store/get");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("hit", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            black_box(store.get(&key(i), T))
        })
    });
    g.bench_function("absent", |b| b.iter(|| black_box(store.get("session:missing", T))));
    let k = key(42);
    g.bench_function("hit_prebuilt_key", |b| b.iter(|| black_box(store.get(black_box(&k), T))));
    g.finish();
}

fn store_writes(c: &mut Criterion) {
    let value = Bytes::from(vec![b'v'; 1024]);
    let mut g = c.benchmark_group("store/put");
    g.throughput(Throughput::Elements(1));
    let store = filled(ENTRIES, &value);
    // A newer version of an existing key: the common push.
    let mut version = ENTRIES + 1;
    let mut i = 0u64;
    g.bench_function("apply_newer", |b| {
        b.iter(|| {
            version += 1;
            i = (i + 7919) % ENTRIES;
            black_box(store.apply(&update(i, version, &value, None), T))
        })
    });
    // The root's write: next version under the shard lock.
    g.bench_function("commit", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            let mut next = version;
            let change = update(i, 0, &value, None);
            black_box(store.commit(&change, Condition::Always, T, Some(2), None, || {
                next += 1;
                next
            }));
            version = next;
        })
    });
    // Keys the store has never seen (map inserts), 1000 per iteration.
    g.throughput(Throughput::Elements(1000));
    g.bench_function("insert_new/1000", |b| {
        b.iter_batched(
            Store::new,
            |s| {
                for j in 0..1000 {
                    s.apply(&update(j, 1, &value, None), T);
                }
                s
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("store/version_check");
    g.throughput(Throughput::Elements(1));
    // A late or duplicated push: refused by the version check.
    let stale = update(7, 1, &value, None);
    g.bench_function("apply_stale", |b| b.iter(|| black_box(store.apply(black_box(&stale), T))));
    g.bench_function("apply_push_not_held", |b| {
        let u =
            Update { key: "session:nobody".into(), version: u64::MAX, value: Some(value.clone()), expires_at: None };
        b.iter(|| black_box(store.apply_push(black_box(&u), T, store.generation())))
    });
    g.finish();
}

fn store_sweep(c: &mut Criterion) {
    let value = Bytes::from(vec![b'v'; 100]);
    let mut g = c.benchmark_group("store/sweep_expired");
    g.sample_size(20);
    for n in [10_000u64, 100_000] {
        // Nothing due: the cost of the periodic scan itself.
        let store = Store::new();
        for i in 0..n {
            store.apply(&update(i, i + 1, &value, Some(NOW + 60_000)), T);
        }
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("none_due", n), &store, |b, s| b.iter(|| black_box(s.sweep_expired(T))));
    }
    // Half of 10k entries due: scan plus removals (the store is rebuilt per batch).
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("half_due/10000", |b| {
        b.iter_batched(
            || {
                let s = Store::new();
                for i in 0..10_000 {
                    let at = if i % 2 == 0 { NOW - 1 } else { NOW + 60_000 };
                    s.apply(&update(i, i + 1, &value, Some(at)), Time::at(NOW - 10));
                }
                s
            },
            |s| black_box(s.sweep_expired(T)),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn holder_directory(c: &mut Criterion) {
    let value = Bytes::from(vec![b'v'; 1024]);
    let store = filled(ENTRIES, &value);
    for i in 0..ENTRIES {
        store.add_holder(&key(i), 2);
        if i % 2 == 0 {
            store.add_holder(&key(i), 3);
        }
    }
    let mut g = c.benchmark_group("holders");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("get_and_hold", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            black_box(store.get_and_hold(&key(i), 3, T))
        })
    });
    g.bench_function("add_holder", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            black_box(store.add_holder(&key(i), 2))
        })
    });
    g.bench_function("holders_of", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            black_box(store.holders_of(&key(i)))
        })
    });
    g.bench_function("remove_holder", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            store.remove_holder(&key(i), 9, u64::MAX)
        })
    });
    g.finish();
}

fn push_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire/push_batch");
    for (count, size) in [(1usize, 1024usize), (64, 1024), (64, 8192), (1024, 100)] {
        let value = Bytes::from(vec![b'v'; size]);
        // As the root pushes them: each with its commit time.
        let updates: Vec<Push> = (0..count as u64)
            .map(|i| Push {
                update: update(i, i + 1, &value, if i % 4 == 0 { Some(NOW) } else { None }),
                committed_us: Some(NOW * 1000),
            })
            .collect();
        let encoded = encode_pushes(&updates);
        g.throughput(Throughput::Bytes(encoded.len() as u64));
        let label = format!("{count}x{size}B");
        g.bench_with_input(BenchmarkId::new("encode", &label), &updates, |b, u| b.iter(|| black_box(encode_pushes(u))));
        g.bench_with_input(BenchmarkId::new("decode", &label), &encoded, |b, e| {
            b.iter(|| black_box(decode_pushes(e).map(|v| v.len())))
        });
    }
    g.finish();
}

/// A bounded store at its bound (10,000 entries of 1 KiB): a miss stores a
/// new key and, past the bound, evicts down to 90% as the evictor does
/// (S3-FIFO: one pass every thousand misses); a hit only counts a read.
fn store_evict(c: &mut Criterion) {
    let value = Bytes::from(vec![b'v'; 1024]);
    let store = Store::bounded();
    for i in 0..10_000 {
        store.apply(&update(i, 1, &value, None), T);
    }
    let max = store.bytes();
    let mut g = c.benchmark_group("store/evict");
    g.throughput(Throughput::Elements(1));
    let mut i = 10_000u64;
    g.bench_function("miss_at_the_bound", |b| {
        b.iter(|| {
            i += 1;
            store.apply(&update(i, 1, &value, None), T);
            if store.bytes() > max {
                black_box(store.evict(store.bytes() - max / 10 * 9, T, usize::MAX, usize::MAX));
            }
        })
    });
    let held: Vec<String> = store.dump("", None, 1_000, NOW).into_iter().map(|e| e.key).collect();
    let mut n = 0;
    g.bench_function("hit_bounded", |b| {
        b.iter(|| {
            n = (n + 1) % held.len();
            black_box(store.get(&held[n], T))
        })
    });
    g.finish();
}

fn short() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = short();
    targets = store_reads, store_writes, store_sweep, holder_directory, push_codec, store_evict
}
criterion_main!(benches);
