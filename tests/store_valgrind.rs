//! The store's entries are one allocation each, laid out by hand with
//! `unsafe` code (src/store/entry.rs). This runs a workload that takes
//! every shape an entry has (tombstones, empty, small, inline-limit and
//! shared values, with and without expiry, short and 250-byte keys) and
//! every change between them, through the store's public API, under
//! Valgrind's memcheck: an invalid read or write, a use after free, or a
//! leaked entry fails the test. The same binary re-runs itself under
//! Valgrind, so what is checked is exactly this code.

use std::process::Command;

use bytes::Bytes;
use treecache::clock::Time;
use treecache::store::{Answer, Applied, Lookup, Store, Update, MAX_KEY_BYTES};

const UNDER_VALGRIND: &str = "TREECACHE_TEST_UNDER_VALGRIND";

fn values() -> Vec<Option<Bytes>> {
    vec![
        None,
        Some(Bytes::new()),
        Some(Bytes::from_static(b"v")),
        Some(Bytes::from(vec![3u8; 100])),
        Some(Bytes::from(vec![4u8; 4096])),
        Some(Bytes::from(vec![5u8; 4097])),
        Some(Bytes::from(vec![6u8; 70_000])),
    ]
}

/// Every value shape after every other, on a short and a long key, with
/// and without expiry; each read back; then expiry, resets, eviction,
/// removal and a wipe free what is left.
fn workload() {
    let keys = ["k".to_string(), "ключ".to_string(), "x".repeat(MAX_KEY_BYTES)];
    for store in [Store::new(), Store::bounded()] {
        let mut version = 0;
        let mut last = Vec::new();
        for key in &keys {
            for from in values() {
                for to in values() {
                    for expires_at in [None, Some(5_000), Some(1)] {
                        for value in [&from, &to] {
                            version += 1;
                            let u = Update { key: key.clone(), version, value: value.clone(), expires_at };
                            assert!(matches!(store.apply(&u, Time::at(10)), Applied::Newer { .. }));
                            store.add_holder(key, version % 3);
                            let read = store.get(key, Time::at(10));
                            match (&read, value) {
                                (Lookup::Value { value: got, .. }, Some(v)) if expires_at != Some(1) => {
                                    assert_eq!(got, v)
                                }
                                (Lookup::Tombstone { .. }, None) if expires_at != Some(1) => {}
                                (Lookup::Absent, _) if expires_at == Some(1) => {}
                                other => panic!("{key:?} v{version}: read {other:?}"),
                            }
                            last.push(read);
                        }
                    }
                }
            }
            // A value read out outlives its entry.
            store.remove(key);
        }
        assert!(last.iter().any(|l| matches!(l, Lookup::Value { value, .. } if value.len() == 70_000)));
        drop(last);
        for (i, key) in keys.iter().enumerate() {
            for n in 0..200u64 {
                version += 1;
                let value = values()[(n as usize + i) % 7].clone();
                let u = Update { key: format!("{key}{n}"), version, value, expires_at: (n % 5 == 0).then_some(20) };
                store.apply(&u, Time::at(10));
                let answer = Answer { sent_in: store.generation(), confirmed: n % 2 == 0 };
                store.apply_answer(&Update { version: version + 1, ..u.clone() }, Time::at(10), answer);
                version += 1;
            }
        }
        assert!(store.sweep_expired(Time::at(30)) > 0);
        store.reset();
        store.collect_tombstones(Time::at(100_000), 1);
        if store.bytes() > 0 {
            store.evict(store.bytes() / 2, Time::at(100_000), 10_000, 10);
        }
        let dumped = store.dump("", None, usize::MAX, 0);
        assert_eq!(dumped.len(), store.len());
        store.wipe();
        assert_eq!(store.len(), 0);
        // Dropped with entries in it: the drop frees them.
        store.apply(
            &Update { key: "left".into(), version: 1, value: Some(Bytes::from(vec![1; 5000])), expires_at: Some(9) },
            Time::at(1),
        );
    }
}

#[test]
fn store_entries_are_sound_under_valgrind() {
    if std::env::var_os(UNDER_VALGRIND).is_some() {
        workload();
        return;
    }
    // Once without Valgrind, so a plain assertion failure reads plainly.
    workload();
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new("valgrind")
        .args(["--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite", "--quiet"])
        .arg(&exe)
        .args(["--exact", "store_entries_are_sound_under_valgrind", "--test-threads=1"])
        .env(UNDER_VALGRIND, "1")
        .output()
        .expect("valgrind runs (scripts/install-test-deps.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "memcheck found errors (exit {:?}):\n{stderr}", out.status.code());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the workload ran under valgrind:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
